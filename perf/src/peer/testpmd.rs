//! dpdk-testpmd as a peer: two `net_tap` ports forwarded to each other in `io` mode (the
//! cheapest forwarding testpmd has: no header is read), no PCI, no huge pages. Its lcores
//! are mapped onto the system's cores (the main lcore, which only prints statistics, on
//! the first of them), so it uses exactly the CPUs every other system gets.
//!
//! Ready when it prints that forwarding started; stopped with SIGINT, after which it
//! prints its accumulated counters, which the report keeps.

use std::time::Duration;

use testbed::cleanup::{self, Guard, Item};
use testbed::process::{alive, Signal};
use testbed::unique;

use crate::error::{PerfError, Result};
use crate::peer::{self, move_taps_out, require, Process, Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "testpmd",
    about: "dpdk-testpmd 22.11, net_tap ports, io forwarding, lcores on the system's cores",
    needs: &["dpdk-testpmd", "taskset"],
    start,
};

const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(10);
/// Printed once forwarding runs.
const READY: &str = "packet forwarding - ports=";

struct Testpmd {
    proc: Process,
    endpoints: Vec<String>,
    /// DPDK's runtime directory for `--file-prefix`, removed on drop.
    runtime_dir: std::path::PathBuf,
    _runtime_dir_tracked: Guard,
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        // Best effort: the directory only holds the stopped process's sockets.
        let _ = std::fs::remove_dir_all(&self.runtime_dir);
    }
}

/// testpmd's arguments: EAL, then `--`, then the application's.
pub fn args(ifnames: &[String], opts: &SutOptions, prefix: &str) -> Vec<String> {
    let workers = opts.workers.max(1);
    let cores = if opts.cores.is_empty() {
        vec![0]
    } else {
        opts.cores.clone()
    };
    // lcore 0 (main) and lcores 1..=workers (forwarding), each on a core of ours.
    let mut map = vec![format!("0@{}", cores[0])];
    for k in 1..=workers {
        map.push(format!("{k}@{}", cores[(k - 1) % cores.len()]));
    }
    let mut a = vec![
        "--lcores".to_string(),
        map.join(","),
        "--main-lcore".into(),
        "0".into(),
        "--no-huge".into(),
        "-m".into(),
        "512".into(),
        "--no-pci".into(),
        format!("--file-prefix={prefix}"),
    ];
    for (i, ifname) in ifnames.iter().enumerate() {
        a.push(format!("--vdev=net_tap{i},iface={ifname}"));
    }
    a.extend(
        [
            "--",
            "--forward-mode=io",
            "--total-num-mbufs=16384",
            "--stats-period=10",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a.push(format!("--nb-cores={workers}"));
    a
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::TapHub {
        sut_netns, ports, ..
    } = topology
    else {
        return Err(PerfError::Usage(
            "testpmd: only the tap topology (tap-hub) is measured".into(),
        ));
    };
    if ports.len() != 2 {
        return Err(PerfError::Usage(
            "testpmd: io forwarding pairs exactly two ports".into(),
        ));
    }
    let bin = require("dpdk-testpmd")?;
    let ifnames: Vec<String> = ports.iter().map(|p| p.ifname.clone()).collect();
    let prefix = unique("pmd");
    let runtime_dir = std::path::Path::new("/var/run/dpdk").join(&prefix);
    // Tracked before DPDK makes it: an interrupted run removes it too.
    let tracked = cleanup::track(Item::Dir(runtime_dir.clone()));
    let proc = peer::spawn(
        "testpmd",
        &bin,
        &args(&ifnames, opts, &prefix),
        Some(sut_netns),
        &opts.cores,
    )?;
    // From here the value (and its Drop) owns the process and DPDK's runtime dir.
    let mut t = Testpmd {
        proc,
        endpoints: topology.endpoints(),
        runtime_dir,
        _runtime_dir_tracked: tracked,
    };
    t.proc.wait_for(READY, START)?;
    let pid = t.proc.pid();
    move_taps_out("testpmd", topology, || alive(pid))
        .map_err(|e| t.proc.failed(&crate::error::chain(&e)))?;
    Ok(Box::new(t))
}

/// The lines of testpmd's final statistics worth keeping.
fn totals(output: &str) -> Vec<String> {
    let Some(at) = output.rfind("Accumulated forward statistics") else {
        return Vec::new();
    };
    output[at..]
        .lines()
        .filter(|l| l.contains("-packets") || l.contains("-dropped") || l.contains("-total"))
        .map(|l| l.trim().to_string())
        .collect()
}

impl Running for Testpmd {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("testpmd".into(), self.proc.pid())]
    }

    fn command(&self) -> String {
        self.proc.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        // testpmd re-raises the signal after cleaning up, so its status is "killed by
        // SIGINT"; what matters is that it exits.
        peer::stop(&mut self.proc, Signal::INT, STOP, true)?;
        Ok(totals(&self.proc.output()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn lcores_map_onto_our_cores() {
        let o = SutOptions {
            cores: vec![1],
            workers: 1,
            poll_us: 50,
            max_frame: 1518,
            pollswitch: PathBuf::from("x"),
            pollswitch_args: Vec::new(),
            pollswitch_tap_opts: String::new(),
        };
        let a = args(&["ta".into(), "tb".into()], &o, "pfx").join(" ");
        assert!(
            a.starts_with("--lcores 0@1,1@1 --main-lcore 0 --no-huge"),
            "{a}"
        );
        assert!(
            a.contains("--vdev=net_tap0,iface=ta --vdev=net_tap1,iface=tb -- --forward-mode=io")
        );
        assert!(a.ends_with("--nb-cores=1"));
    }

    #[test]
    fn totals_are_picked_from_the_exit_report() {
        let out = "junk\n  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++\n  RX-packets: 10             RX-dropped: 0             RX-total: 10\n  TX-packets: 9              TX-dropped: 1             TX-total: 10\nDone.\n";
        let t = totals(out);
        assert_eq!(t.len(), 2);
        assert!(t[1].starts_with("TX-packets: 9"));
    }
}
