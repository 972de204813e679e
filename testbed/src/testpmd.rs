//! dpdk-testpmd as a test peer: its DPDK vdevs (net_memif, net_virtio_user, net_vhost)
//! speak the shared-memory protocols pollswitch serves, so it is the reference frontend
//! and backend the integration tests check pollswitch against.
//!
//! ```text
//!  Testpmd::start(["net_memif0,role=client,socket=S", ...], "io")
//!    taskset core 0: lcores 0 (main) and 1 (forwarding), both on core 0
//!    --no-huge -m 512 --no-pci --file-prefix=UNIQUE, /var/run/dpdk/UNIQUE removed after
//!  interrupt(): SIGINT → totals printed → Totals::parse
//! ```
//!
//! Both lcores sit on core 0, leaving core 1 to pollswitch's worker; callers that run
//! several tests at once hold [`lock`] so that two busy-polling testpmds never share it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::cleanup::{self, Item};
use crate::process::{Launch, Process, Signal};
use crate::{chain, require_tool, unique};

/// One testpmd at a time: each keeps core 0 busy with two polling lcores.
static LOCK: Mutex<()> = Mutex::new(());

/// Holds core 0 for one testpmd.
pub fn lock() -> MutexGuard<'static, ()> {
    // A failed test poisons it; the next one may still run.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A dpdk-testpmd with some vdevs and a forwarding mode: killed (SIGKILL) and reaped on
/// drop if still running, its runtime directory (`/var/run/dpdk/<file-prefix>`)
/// removed then, and both also by the signal handler.
pub struct Testpmd {
    proc: Process,
    runtime: PathBuf,
    _runtime: cleanup::Guard,
}

impl Testpmd {
    /// Starts testpmd with `vdevs` (whole `--vdev` values, `net_memif0,role=...`),
    /// forwarding in `mode` (io, macswap, rxonly, txonly...) from the start, and
    /// `extra` application options (`--max-pkt-len=9600`).
    ///
    /// # Panics
    /// When dpdk-testpmd is not installed or cannot be started.
    pub fn start(vdevs: &[String], mode: &str, extra: &[&str]) -> Testpmd {
        let bin = require_tool("dpdk-testpmd");
        let prefix = unique("tpmd");
        let runtime = Path::new("/var/run/dpdk").join(&prefix);
        let guard = cleanup::track(Item::Dir(runtime.clone()));
        let mut l = Launch::new("testpmd", bin)
            .cores(&[0])
            .args(["--lcores", "0@0,1@0", "--main-lcore", "0"])
            .args(["--no-huge", "-m", "512", "--no-pci"])
            .arg(format!("--file-prefix={prefix}"));
        for v in vdevs {
            l = l.arg("--vdev").arg(v);
        }
        // Without --stats-period testpmd reads stdin (/dev/null) and exits at once.
        let proc = l
            .args(["--", "--total-num-mbufs=16384"])
            .arg(format!("--forward-mode={mode}"))
            .args(["--stats-period=1", "--auto-start"])
            .args(extra)
            .spawn()
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        Testpmd {
            proc,
            runtime,
            _runtime: guard,
        }
    }

    /// Stops it with SIGINT (it prints its totals then) and returns all its output.
    ///
    /// # Panics
    /// When it does not exit within 10 s or exits with a failure.
    pub fn interrupt(&mut self) -> String {
        let status = self
            .proc
            .stop(Signal::INT, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}", chain(&e)));
        let out = self.proc.output();
        assert!(status.success(), "testpmd exited with {status}:\n{out}");
        out
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it.
    pub fn crash(&mut self) {
        self.proc.kill();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// What it said so far (the end of it), for failure messages.
    pub fn said(&self) -> String {
        let out = self.proc.output();
        let tail: Vec<&str> = out.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

/// testpmd's accumulated totals at exit: (RX-packets, TX-packets, TX-dropped).
///
/// # Panics
/// When `out` holds no accumulated statistics.
pub fn totals(out: &str) -> (u64, u64, u64) {
    let acc = out
        .rsplit_once("Accumulated forward statistics")
        .unwrap_or_else(|| panic!("no accumulated statistics in testpmd's output:\n{out}"))
        .1;
    let field = |name: &str| -> u64 {
        let at = acc
            .find(name)
            .unwrap_or_else(|| panic!("no {name} in testpmd's totals:\n{acc}"));
        acc[at + name.len()..]
            .split_whitespace()
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("{name} is not a number in:\n{acc}"))
    };
    (
        field("RX-packets:"),
        field("TX-packets:"),
        field("TX-dropped:"),
    )
}
