//! QEMU's hub as a peer: `qemu-system-x86_64 -M none -nodefaults -display none` with
//! the very `-netdev` arguments pollswitch gets and no guest, so the only work it does
//! is its network layer's: read a frame from one netdev, hand it to every other port of
//! the hub. Its main loop is one thread; it is confined to the same cores as pollswitch.
//!
//! Ready when its QMP socket greets (QEMU accepts monitor connections only once its main
//! loop runs, after every netdev exists).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::{PerfError, Result};
use crate::peer::{
    hub_netdevs, move_taps_out, require, Process, Running, SutOptions, System, Topology,
};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "qemu",
    about: "QEMU 10 hub (qemu-system-x86_64 -M none), same -netdev arguments, no guest",
    needs: &["qemu-system-x86_64", "taskset"],
    start,
};

const START: Duration = Duration::from_secs(10);
const STOP: Duration = Duration::from_secs(5);

struct Qemu {
    proc: Process,
    dir: PathBuf,
    endpoints: Vec<String>,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let bin = require("qemu-system-x86_64")?;
    let dir = std::env::temp_dir().join(format!(
        "pollswitch-perf-qemu-{}",
        crate::netns::unique("q")
    ));
    std::fs::create_dir_all(&dir).map_err(|source| PerfError::File {
        path: dir.clone(),
        source,
    })?;
    let qmp = dir.join("qmp.sock");
    let mut args: Vec<String> = ["-M", "none", "-nodefaults", "-display", "none", "-qmp"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(format!("unix:{},server=on,wait=off", qmp.display()));
    args.extend(hub_netdevs(topology));
    let netns = match topology {
        Topology::TapHub { sut_netns, .. } => Some(sut_netns.as_str()),
        Topology::UdpHub(_) => None,
    };
    let proc = Process::spawn("qemu", &bin, &args, netns, &opts.cores)?;
    let mut q = Qemu {
        proc,
        dir,
        endpoints: topology.endpoints(),
    };
    q.wait_greeting(&qmp)?;
    let pid = q.proc.pid();
    move_taps_out("qemu", topology, || crate::sys::alive(pid))
        .map_err(|e| q.proc.failed(&e.to_string()))?;
    Ok(Box::new(q))
}

impl Qemu {
    fn wait_greeting(&mut self, qmp: &PathBuf) -> Result<()> {
        let deadline = Instant::now() + START;
        loop {
            if let Ok(mut s) = UnixStream::connect(qmp) {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut buf = [0u8; 512];
                if let Ok(n) = s.read(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains("\"QMP\"") {
                        return Ok(());
                    }
                }
            }
            if !self.proc.running() {
                return Err(self.proc.failed("exited during start-up"));
            }
            if Instant::now() >= deadline {
                return Err(self.proc.failed("no QMP greeting"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Running for Qemu {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("qemu".into(), self.proc.pid())]
    }

    fn command(&self) -> String {
        self.proc.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        self.proc.stop(libc::SIGTERM, STOP, false)?;
        Ok(Vec::new())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
