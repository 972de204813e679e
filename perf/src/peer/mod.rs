//! Systems under test: pollswitch and its peers, one per file, all listed in [`SYSTEMS`].
//!
//! ```text
//!  scenario ── Topology (what to build) + SutOptions (cores, poll-us, ...) ──► System::start
//!           ◄── Box<dyn Running>: endpoint specs the generator opens, pids to watch,
//!               the command line used, stop() that says whether it exited cleanly
//! ```
//!
//! A system builds the topology itself and hands back one endpoint spec per port, in
//! the topology's order. Every process runs under `taskset` on the cores given, so each
//! system gets the same CPUs; systems that make interfaces run inside the topology's
//! namespace and move the generator's ends out to theirs. Processes, namespaces, QEMU
//! and vde_switch are the test bed's ([`testbed`]): what a system started is tracked, and
//! removed by the signal handler when a run is interrupted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testbed::process::{Launch, Signal};
use testbed::{wait_until, Netns};

use crate::error::{PerfError, Result};

pub mod bridge;
pub mod mmsg;
pub mod pollswitch;
pub mod pollswitch_af_xdp;
pub mod qemu;
pub mod testpmd;
pub mod vde;

pub use testbed::Process;

/// One UDP socket port of a hub: the system listens on `own` and sends to `gen`
/// (where the generator or sink has its socket).
#[derive(Debug, Clone, Copy)]
pub struct UdpLink {
    /// The system's socket (QEMU's `localaddr=`).
    pub own: SocketAddr,
    /// The tool's socket (QEMU's `udp=`).
    pub gen: SocketAddr,
}

/// One tap-like port: made by the system in the system's namespace as `ifname`, then
/// moved into namespace `netns`, where the tool reaches it.
#[derive(Debug, Clone)]
pub struct TapLink {
    /// Interface name (unique on the machine).
    pub ifname: String,
    /// The namespace the tool's end lives in.
    pub netns: String,
    /// A MAC address that lives behind this port (a learning switch may be told so).
    pub mac: [u8; 6],
}

/// What to build.
#[derive(Debug, Clone)]
pub enum Topology {
    /// UDP socket ports, all on hub 0.
    UdpHub(Vec<UdpLink>),
    /// Tap (or veth) ports, all on one hub or bridge, the system inside `sut_netns`.
    TapHub {
        /// The system's own namespace.
        sut_netns: String,
        /// The ports.
        ports: Vec<TapLink>,
        /// MTU of every interface.
        mtu: u32,
    },
}

impl Topology {
    /// Number of ports.
    pub fn len(&self) -> usize {
        match self {
            Topology::UdpHub(p) => p.len(),
            Topology::TapHub { ports, .. } => ports.len(),
        }
    }

    /// True when there are no ports.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The generator's endpoint specs for systems that use the links as they are.
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Topology::UdpHub(links) => links
                .iter()
                .map(|l| format!("udp:local={},peer={}", l.gen, l.own))
                .collect(),
            Topology::TapHub { ports, .. } => ports
                .iter()
                .map(|p| format!("tap:ifname={},netns={}", p.ifname, p.netns))
                .collect(),
        }
    }
}

/// How every system is run.
#[derive(Debug, Clone)]
pub struct SutOptions {
    /// CPUs the system may use (all its processes are confined to them).
    pub cores: Vec<usize>,
    /// Forwarding threads, for systems that have a choice (pollswitch, testpmd).
    pub workers: usize,
    /// pollswitch's `-poll-us`.
    pub poll_us: u32,
    /// Largest frame that will be sent (pollswitch `-max-frame`).
    pub max_frame: usize,
    /// The pollswitch binary.
    pub pollswitch: PathBuf,
    /// More arguments for the pollswitch daemon (`-pool-size 4096`, ...).
    pub pollswitch_args: Vec<String>,
    /// Options appended to each of pollswitch's tap netdevs (`vnet_hdr=on`); empty:
    /// none. QEMU's tap netdevs never get them.
    pub pollswitch_tap_opts: String,
}

impl SutOptions {
    /// The cores the workers are pinned to: the first `workers` of `cores`.
    pub fn worker_cores(&self) -> Vec<usize> {
        self.cores
            .iter()
            .copied()
            .take(self.workers.max(1))
            .collect()
    }
}

/// A started system.
pub trait Running {
    /// One endpoint spec per port of the topology, in order.
    fn endpoints(&self) -> Vec<String>;
    /// Processes whose CPU use counts as the system's.
    fn pids(&self) -> Vec<(String, u32)>;
    /// The command line(s) that started it, for the report.
    fn command(&self) -> String;
    /// Stops it; an error when it did not exit cleanly (or had died before). Returns
    /// anything worth reporting it printed (counters at exit).
    fn stop(&mut self) -> Result<Vec<String>>;
}

/// A system's entry in the registry.
pub struct System {
    /// Name used on the command line and in results.
    pub name: &'static str,
    /// One line for `pollswitch-perf systems`.
    pub about: &'static str,
    /// Programs it needs on PATH (checked before any measurement starts).
    pub needs: &'static [&'static str],
    /// Starts it.
    pub start: fn(&Topology, &SutOptions) -> Result<Box<dyn Running>>,
}

/// Every system, pollswitch first.
pub const SYSTEMS: &[System] = &[
    pollswitch::SYSTEM,
    pollswitch_af_xdp::SYSTEM,
    qemu::SYSTEM,
    vde::SYSTEM,
    bridge::SYSTEM,
    testpmd::SYSTEM,
    mmsg::SYSTEM,
];

/// The system called `name`.
pub fn find(name: &str) -> Result<&'static System> {
    SYSTEMS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<_> = SYSTEMS.iter().map(|s| s.name).collect();
        PerfError::Usage(format!("no system {name:?}: one of {}", names.join(", ")))
    })
}

/// Where `program` is on PATH, or an error saying how to install it; a path (the
/// pollswitch daemon, mmsg-relay) must exist, or the error says how to build it.
pub fn require(program: &str) -> Result<PathBuf> {
    if program.contains('/') && !Path::new(program).is_file() {
        return Err(PerfError::MissingTool {
            program: program.into(),
            hint: "build it: cargo build --release -p ctl".into(),
        });
    }
    Ok(testbed::require(program)?)
}

/// Starts `program args` as system `system`'s process, confined to `cores` (none when
/// empty), inside namespace `netns` if given.
pub fn spawn(
    system: &str,
    program: &Path,
    args: &[String],
    netns: Option<&str>,
    cores: &[usize],
) -> Result<Process> {
    Ok(Launch::new(system, program)
        .args(args)
        .netns(netns)
        .cores(cores)
        .spawn()?)
}

/// Stops a system's process with `sig`: an error when it had exited before the stop
/// (it died during the measurement), when it does not exit within `timeout` (it is then
/// killed), or when it exits unsuccessfully unless `any_status`.
pub fn stop(proc: &mut Process, sig: Signal, timeout: Duration, any_status: bool) -> Result<()> {
    if let Some(status) = proc.try_wait() {
        return Err(proc
            .failed(&format!("had already exited ({status}) before the stop"))
            .into());
    }
    let status = proc.stop(sig, timeout)?;
    if status.success() || any_status {
        Ok(())
    } else {
        Err(proc
            .failed(&format!("exited with {status} when stopped"))
            .into())
    }
}

/// Frame bytes as `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `-netdev` arguments QEMU and pollswitch both take for a topology: each port's
/// netdev plus a hubport on hub 0.
pub fn hub_netdevs(topology: &Topology) -> Vec<String> {
    let mut args = Vec::new();
    let mut add = |i: usize, spec: String| {
        args.push("-netdev".to_string());
        args.push(spec);
        args.push("-netdev".to_string());
        args.push(format!("hubport,id=h{i},hubid=0,netdev=p{i}"));
    };
    match topology {
        Topology::UdpHub(links) => {
            for (i, l) in links.iter().enumerate() {
                add(
                    i,
                    format!("socket,id=p{i},udp={},localaddr={}", l.gen, l.own),
                );
            }
        }
        Topology::TapHub { ports, .. } => {
            for (i, p) in ports.iter().enumerate() {
                add(
                    i,
                    format!("tap,id=p{i},ifname={},script=no,downscript=no", p.ifname),
                );
            }
        }
    }
    args
}

/// For a tap topology: waits until the system has made every interface in its
/// namespace, then moves each into the tool's namespace for it.
pub fn move_taps_out(
    system: &str,
    topology: &Topology,
    proc_alive: impl Fn() -> bool,
) -> Result<()> {
    let Topology::TapHub {
        sut_netns,
        ports,
        mtu,
    } = topology
    else {
        return Ok(());
    };
    let sut = Netns::borrow(sut_netns);
    let names: Vec<String> = ports.iter().map(|p| p.ifname.clone()).collect();
    let made = wait_until(Duration::from_secs(10), || {
        names.iter().all(|n| sut.has_link(n)) || !proc_alive()
    });
    if !made || !names.iter().all(|n| sut.has_link(n)) {
        return Err(PerfError::peer(
            system,
            format!(
                "made no interfaces {} in netns {sut_netns}",
                names.join(", ")
            ),
        ));
    }
    for p in ports {
        sut.move_link(&p.ifname, &Netns::borrow(&p.netns), *mtu)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_netdevs_match_qemu_syntax() {
        let t = Topology::UdpHub(vec![UdpLink {
            own: "127.0.0.1:7000".parse().unwrap(),
            gen: "127.0.0.1:8000".parse().unwrap(),
        }]);
        assert_eq!(
            hub_netdevs(&t),
            [
                "-netdev",
                "socket,id=p0,udp=127.0.0.1:8000,localaddr=127.0.0.1:7000",
                "-netdev",
                "hubport,id=h0,hubid=0,netdev=p0"
            ]
        );
        assert_eq!(
            t.endpoints(),
            ["udp:local=127.0.0.1:8000,peer=127.0.0.1:7000"]
        );
        assert_eq!(mac_text([2, 0x70, 0x73, 0, 0, 0xff]), "02:70:73:00:00:ff");
    }

    #[test]
    fn workers_take_the_first_cores() {
        let o = SutOptions {
            cores: vec![3, 5, 7],
            workers: 2,
            poll_us: 50,
            max_frame: 9216,
            pollswitch: PathBuf::from("pollswitch"),
            pollswitch_args: Vec::new(),
            pollswitch_tap_opts: String::new(),
        };
        assert_eq!(o.worker_cores(), [3, 5]);
    }

    #[test]
    fn missing_programs_say_how_to_install() {
        let err = require("dpdk-testpmd-nonexistent").unwrap_err().to_string();
        assert!(err.contains("not found"), "{err}");
        let err = require("/nonexistent/pollswitch").unwrap_err().to_string();
        assert!(err.contains("cargo build --release -p ctl"), "{err}");
        assert!(require("sh").is_ok());
        assert!(find("pollswitch").is_ok() && find("nope").is_err());
    }

    #[test]
    fn stop_says_whether_it_exited_cleanly() {
        let sh = require("sh").unwrap();
        let script = |s: &str| vec!["-c".to_string(), s.to_string()];
        let mut p = spawn(
            "t",
            &sh,
            &script("trap 'exit 0' TERM; echo up; while :; do sleep 0.05; done"),
            None,
            &[0],
        )
        .unwrap();
        p.wait_for("up", Duration::from_secs(5)).unwrap();
        stop(&mut p, Signal::TERM, Duration::from_secs(5), false).unwrap();
        let err = stop(&mut p, Signal::TERM, Duration::from_secs(1), false).unwrap_err();
        assert!(err.to_string().contains("already exited"), "{err}");
        let mut p = spawn("t", &sh, &script("echo up; exec sleep 30"), None, &[]).unwrap();
        p.wait_for("up", Duration::from_secs(5)).unwrap();
        // sleep dies of SIGTERM: not a success unless any status is fine.
        assert!(stop(&mut p, Signal::TERM, Duration::from_secs(5), false).is_err());
        let mut p = spawn("t", &sh, &script("echo up; exec sleep 30"), None, &[]).unwrap();
        p.wait_for("up", Duration::from_secs(5)).unwrap();
        stop(&mut p, Signal::TERM, Duration::from_secs(5), true).unwrap();
    }
}
