//! QEMU's hub as a peer: `qemu-system-x86_64 -M none -nodefaults -display none` with
//! the very `-netdev` arguments pollswitch gets and no guest, so the only work it does
//! is its network layer's: read a frame from one netdev, hand it to every other port of
//! the hub. Its main loop is one thread; it is confined to the same cores as pollswitch.
//!
//! The test bed's [`QemuPeer`] starts it: ready once QMP capabilities are negotiated
//! (QEMU answers from its main loop, which runs only after every netdev exists).

use std::time::Duration;

use testbed::process::alive;
use testbed::QemuPeer;

use crate::error::Result;
use crate::peer::{hub_netdevs, move_taps_out, Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "qemu",
    about: "QEMU 10 hub (qemu-system-x86_64 -M none), same -netdev arguments, no guest",
    needs: &["qemu-system-x86_64", "taskset"],
    start,
};

const STOP: Duration = Duration::from_secs(5);

struct Qemu {
    peer: QemuPeer,
    endpoints: Vec<String>,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let netns = match topology {
        Topology::TapHub { sut_netns, .. } => Some(sut_netns.as_str()),
        Topology::UdpHub(_) => None,
    };
    let peer = QemuPeer::launch(netns, &opts.cores, &hub_netdevs(topology))?;
    let pid = peer.pid();
    move_taps_out("qemu", topology, || alive(pid))
        .map_err(|e| peer.failed(&crate::error::chain(&e)))?;
    Ok(Box::new(Qemu {
        peer,
        endpoints: topology.endpoints(),
    }))
}

impl Running for Qemu {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("qemu".into(), self.peer.pid())]
    }

    fn command(&self) -> String {
        self.peer.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        self.peer.stop(STOP)?;
        Ok(Vec::new())
    }
}
