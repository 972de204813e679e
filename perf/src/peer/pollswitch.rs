//! pollswitch, the system under test: the daemon started with exactly the `-netdev`
//! arguments QEMU gets, its workers pinned with `-cores`, the whole process confined to
//! the same cores as every peer.
//!
//! Contract: a stderr line containing `pollswitch: ready` once every port is up; SIGTERM
//! makes it exit with status 0.

use std::time::Duration;

use testbed::process::{alive, Signal};

use crate::error::Result;
use crate::peer::{
    self, hub_netdevs, move_taps_out, Process, Running, SutOptions, System, Topology,
};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "pollswitch",
    about: "pollswitch daemon, QEMU's -netdev syntax, workers pinned with -cores",
    needs: &["taskset"],
    start,
};

/// The daemon's readiness line.
pub const READY: &str = "pollswitch: ready";
/// How long it may take to start.
const START: Duration = Duration::from_secs(10);
/// How long it may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);

struct Pollswitch {
    proc: Process,
    endpoints: Vec<String>,
    notes: Vec<String>,
}

/// What the daemon says when it counts the CPUs it may use instead of naming them.
const REFUSES_TASKSET: &str = "does not exist on this host";

/// The daemon's arguments for `topology`: QEMU's `-netdev` arguments, each tap's with
/// `opts.pollswitch_tap_opts` appended.
pub fn args(topology: &Topology, opts: &SutOptions) -> Vec<String> {
    let mut a = hub_netdevs(topology);
    let extra = opts.pollswitch_tap_opts.trim_matches(',');
    if !extra.is_empty() {
        for arg in a.iter_mut().filter(|x| x.starts_with("tap,")) {
            arg.push(',');
            arg.push_str(extra);
        }
    }
    with_netdevs(a, opts)
}

/// The daemon's arguments: `netdevs` (`-netdev SPEC` pairs), then cores, poll-us,
/// max-frame and the extra arguments.
pub fn with_netdevs(netdevs: Vec<String>, opts: &SutOptions) -> Vec<String> {
    let mut a = netdevs;
    a.extend([
        "-cores".to_string(),
        testbed::cpu::list(&opts.worker_cores()),
        "-poll-us".to_string(),
        opts.poll_us.to_string(),
        "-max-frame".to_string(),
        opts.max_frame.max(1518).to_string(),
    ]);
    a.extend(opts.pollswitch_args.iter().cloned());
    a
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    launch(topology, opts, args(topology, opts))
}

/// Starts the daemon with `argv` for `topology` (inside its namespace, confined to the
/// cores) and, once it is ready, moves its tap-topology interfaces out to the tool.
pub fn launch(
    topology: &Topology,
    opts: &SutOptions,
    argv: Vec<String>,
) -> Result<Box<dyn Running>> {
    let bin = crate::peer::require(&opts.pollswitch.to_string_lossy())?;
    let netns = match topology {
        Topology::TapHub { sut_netns, .. } => Some(sut_netns.as_str()),
        Topology::UdpHub(_) => None,
    };
    let mut notes = Vec::new();
    let mut proc = peer::spawn("pollswitch", &bin, &argv, netns, &opts.cores)?;
    if let Err(e) = proc.wait_for(READY, START) {
        if !e.to_string().contains(REFUSES_TASKSET) {
            return Err(e.into());
        }
        // The daemon checks -cores against the number of CPUs it may run on, so under
        // `taskset -c 1` core 1 "does not exist". Run it unconfined: -cores still pins
        // its workers; only its control thread may then run on other cores.
        notes.push(format!(
            "pollswitch refused to start under taskset ({REFUSES_TASKSET}): started \
             on every CPU, workers pinned by -cores {}",
            testbed::cpu::list(&opts.worker_cores())
        ));
        drop(proc);
        let every_cpu: Vec<usize> = (0..crate::sys::core_times().len().max(1)).collect();
        proc = peer::spawn("pollswitch", &bin, &argv, netns, &every_cpu)?;
        proc.wait_for(READY, START)?;
    }
    let pid = proc.pid();
    move_taps_out("pollswitch", topology, || alive(pid))
        .map_err(|e| proc.failed(&crate::error::chain(&e)))?;
    Ok(Box::new(Pollswitch {
        proc,
        endpoints: topology.endpoints(),
        notes,
    }))
}

impl Running for Pollswitch {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("pollswitch".into(), self.proc.pid())]
    }

    fn command(&self) -> String {
        self.proc.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        peer::stop(&mut self.proc, Signal::TERM, STOP, false)?;
        Ok(self.notes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::UdpLink;
    use std::path::PathBuf;

    #[test]
    fn arguments_are_qemus_plus_cores() {
        let t = Topology::UdpHub(vec![
            UdpLink {
                own: "127.0.0.1:1".parse().unwrap(),
                gen: "127.0.0.1:2".parse().unwrap(),
            },
            UdpLink {
                own: "127.0.0.1:3".parse().unwrap(),
                gen: "127.0.0.1:4".parse().unwrap(),
            },
        ]);
        let o = SutOptions {
            cores: vec![1],
            workers: 1,
            poll_us: 0,
            max_frame: 64,
            pollswitch: PathBuf::from("x"),
            pollswitch_args: Vec::new(),
            pollswitch_tap_opts: String::new(),
        };
        let a = args(&t, &o).join(" ");
        assert_eq!(
            a,
            "-netdev socket,id=p0,udp=127.0.0.1:2,localaddr=127.0.0.1:1 \
             -netdev hubport,id=h0,hubid=0,netdev=p0 \
             -netdev socket,id=p1,udp=127.0.0.1:4,localaddr=127.0.0.1:3 \
             -netdev hubport,id=h1,hubid=0,netdev=p1 \
             -cores 1 -poll-us 0 -max-frame 1518"
        );
        let taps = Topology::TapHub {
            sut_netns: "s".into(),
            ports: vec![crate::peer::TapLink {
                ifname: "ta".into(),
                netns: "g".into(),
                mac: [2, 0, 0, 0, 0, 1],
            }],
            mtu: 1500,
        };
        let o = SutOptions {
            pollswitch_tap_opts: "vnet_hdr=on".into(),
            ..o
        };
        assert_eq!(
            args(&taps, &o)[..2],
            [
                "-netdev",
                "tap,id=p0,ifname=ta,script=no,downscript=no,vnet_hdr=on"
            ]
        );
    }
}
