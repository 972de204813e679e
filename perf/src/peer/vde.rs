//! vde_switch (vde2) as a peer: in hub mode (`-x`, flood every frame like QEMU's hub and
//! pollswitch's), daemonized, confined to the same cores. The generator and sink attach
//! as two native VDE ports (`vde:sock=DIR`), one frame per unix datagram; the UDP
//! addresses of the topology are not used. The test bed's [`VdeSwitch`] runs it.

use std::time::Duration;

use testbed::vde::{VdeOptions, VdeSwitch};

use crate::error::{PerfError, Result};
use crate::peer::{Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "vde",
    about: "vde_switch -x (hub mode), ports attached natively over its unix sockets",
    needs: &["vde_switch", "taskset"],
    start,
};

const STOP: Duration = Duration::from_secs(5);

struct Vde {
    switch: VdeSwitch,
    ports: usize,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::UdpHub(links) = topology else {
        return Err(PerfError::Usage(
            "vde: only the socket hub topology (udp-hub, scale) is measured".into(),
        ));
    };
    let switch = VdeSwitch::launch(&VdeOptions {
        hub: true,
        ports: Some((links.len() + 1).max(32)),
        cores: opts.cores.clone(),
    })?;
    Ok(Box::new(Vde {
        switch,
        ports: links.len(),
    }))
}

impl Running for Vde {
    fn endpoints(&self) -> Vec<String> {
        let sw = self.switch.sock_dir();
        (0..self.ports)
            .map(|_| format!("vde:sock={}", sw.display()))
            .collect()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("vde_switch".into(), self.switch.pid())]
    }

    fn command(&self) -> String {
        self.switch.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        self.switch.stop(STOP)?;
        Ok(Vec::new())
    }
}
