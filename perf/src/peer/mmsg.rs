//! `mmsg-relay` (this crate's `src/bin/mmsg-relay.rs`) as a system: a busy-polling
//! `recvmmsg`/`sendmmsg` loop with the semantics of a hub of UDP socket ports. It is the
//! baseline the issue sets for pollswitch's io_uring UDP path ("ours must not lose to
//! such a loop"), run with the same ports, cores and generator.

use std::path::PathBuf;
use std::time::Duration;

use testbed::process::Signal;

use crate::error::Result;
use crate::peer::{self, Process, Running, SutOptions, System, Topology};

/// Registry entry.
pub const SYSTEM: System = System {
    name: "mmsg",
    about: "recvmmsg/sendmmsg busy-poll relay (the io_uring baseline), UDP hub only",
    needs: &["taskset"],
    start,
};

const READY: &str = "mmsg-relay: ready";
const START: Duration = Duration::from_secs(10);
const STOP: Duration = Duration::from_secs(5);

struct Relay {
    proc: Process,
    endpoints: Vec<String>,
}

fn start(topology: &Topology, opts: &SutOptions) -> Result<Box<dyn Running>> {
    let Topology::UdpHub(links) = topology else {
        return Err(crate::error::PerfError::Usage(
            "mmsg: only the socket hub topology (udp-hub, latency over udp) is measured".into(),
        ));
    };
    // Beside the pollswitch binary (both are built into the same target directory).
    let bin: PathBuf = opts.pollswitch.with_file_name("mmsg-relay");
    let bin = crate::peer::require(&bin.to_string_lossy())?;
    let mut argv = vec!["-core".to_string(), opts.worker_cores()[0].to_string()];
    argv.extend(links.iter().map(|l| format!("{}={}", l.own, l.gen)));
    let mut proc = peer::spawn("mmsg", &bin, &argv, None, &opts.cores)?;
    proc.wait_for(READY, START)?;
    Ok(Box::new(Relay {
        proc,
        endpoints: topology.endpoints(),
    }))
}

impl Running for Relay {
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        vec![("mmsg-relay".into(), self.proc.pid())]
    }

    fn command(&self) -> String {
        self.proc.command().to_string()
    }

    fn stop(&mut self) -> Result<Vec<String>> {
        peer::stop(&mut self.proc, Signal::TERM, STOP, false)?;
        Ok(Vec::new())
    }
}
