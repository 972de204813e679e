//! vde_switch (vde2) as a peer: in hub mode (`-x`, flood every frame like QEMU's hub and
//! pollswitch's), daemonized, confined to the same cores. The generator and sink attach
//! as two native VDE ports (`vde:sock=DIR`), one frame per unix datagram; the UDP
//! addresses of the topology are not used.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::error::{PerfError, Result};
use crate::netns::wait_until;
use crate::peer::{require, Running, SutOptions, System, Topology};
use crate::sys;

/// Registry entry.
pub const SYSTEM: System = System {
    name: "vde",
    about: "vde_switch -x (hub mode), ports attached natively over its unix sockets",
    needs: &["vde_switch", "taskset"],
    start,
};

const START: Duration = Duration::from_secs(10);
const STOP: Duration = Duration::from_secs(5);

struct Vde {
    pid: u32,
    dir: PathBuf,
    ports: usize,
    command: String,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::UdpHub(links) = topology else {
        return Err(PerfError::Usage(
            "vde: only the socket hub topology (udp-hub, scale) is measured".into(),
        ));
    };
    let bin = require("vde_switch")?;
    let taskset = require("taskset")?;
    let dir =
        std::env::temp_dir().join(format!("pollswitch-perf-vde-{}", crate::netns::unique("v")));
    std::fs::create_dir_all(&dir).map_err(|source| PerfError::File {
        path: dir.clone(),
        source,
    })?;
    let (sw, mgmt, pidfile) = (dir.join("sw"), dir.join("mgmt"), dir.join("pid"));
    let cores = SutOptions::core_list(&opts.cores);
    let numports = (links.len() + 1).max(32).to_string();
    let args: Vec<String> = vec![
        "-c".into(),
        cores.clone(),
        bin.display().to_string(),
        "-x".into(),
        "-n".into(),
        numports,
        "-s".into(),
        sw.display().to_string(),
        "-M".into(),
        mgmt.display().to_string(),
        "-d".into(),
        "-p".into(),
        pidfile.display().to_string(),
    ];
    let command = format!("taskset {}", args.join(" "));
    // With -d the process started here forks the switch and exits.
    let out = Command::new(&taskset)
        .args(&args)
        .output()
        .map_err(|e| PerfError::peer("vde", format!("spawn `{command}`: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(PerfError::peer(
            "vde",
            format!(
                "`{command}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    }
    let mut pid = None;
    let up = wait_until(START, || {
        pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        pid.is_some() && sw.join("ctl").exists()
    });
    let vde = Vde {
        pid: pid.unwrap_or(0),
        dir,
        ports: links.len(),
        command,
    };
    if !up {
        return Err(PerfError::peer(
            "vde",
            format!("no pid file or control socket within {START:?}"),
        ));
    }
    Ok(Box::new(vde))
}

impl Running for Vde {
    fn endpoints(&self) -> Vec<String> {
        let sw = self.dir.join("sw");
        (0..self.ports)
            .map(|_| format!("vde:sock={}", sw.display()))
            .collect()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("vde_switch".into(), self.pid)]
    }

    fn command(&self) -> String {
        self.command.clone()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        if self.pid == 0 || !sys::alive(self.pid) {
            return Err(PerfError::peer("vde", "had already exited before the stop"));
        }
        sys::signal(self.pid, libc::SIGTERM);
        if !wait_until(STOP, || !sys::alive(self.pid)) {
            sys::signal(self.pid, libc::SIGKILL);
            return Err(PerfError::peer("vde", "did not exit on SIGTERM; killed"));
        }
        self.pid = 0;
        Ok(Vec::new())
    }
}

impl Drop for Vde {
    fn drop(&mut self) {
        if self.pid != 0 && sys::alive(self.pid) {
            sys::signal(self.pid, libc::SIGKILL);
            wait_until(Duration::from_secs(2), || !sys::alive(self.pid));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
