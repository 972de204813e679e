//! `memif`: a DPDK application's loop through a middle box over memif — pollswitch
//! (two memif NICs on one hub, one worker) against dpdk-testpmd doing io forwarding
//! between two memif server ports, on the shared [`super::dpdk_loop`] harness.
//!
//! ```text
//!  end testpmd (memif clients A B) ══ middle: pollswitch nic nA(x-memif=A) ─ hub 0 ─ nic nB
//!                                          or testpmd net_memif0/1 (role=server)
//! ```
//!
//! Frame sizes from `--sizes` (default 64, 1518, 9000). Target, 64 B: pollswitch ≥ 1.0×
//! the testpmd middle box.

use std::path::Path;

use super::dpdk_loop::{self, Loop};
use crate::bench::{BenchOpts, Scenario};
use crate::error::Result;
use crate::peer;
use crate::report::Report;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "memif",
    about: "testpmd io loop over memif through a middle box: pollswitch (two memif NICs, one \
            worker) vs testpmd io forwarding between two memif server ports",
    systems: &["pollswitch", "testpmd"],
    run,
    plot,
};

fn memif_vdev(i: usize, role: &str, sock: &Path, size: usize) -> String {
    // One memif buffer holds a whole frame: no chaining on either side.
    format!(
        "net_memif{i},role={role},socket={},socket-abstract=no,bsize={}",
        sock.display(),
        size.max(2048)
    )
}

const LOOP: Loop = Loop {
    scenario: &SCENARIO,
    name: "memif",
    sizes: &[64, 1518, 9000],
    pollswitch_port: |id, sock| {
        vec![
            "-netdev".into(),
            format!("nic,id={id},x-memif={}", sock.display()),
        ]
    },
    middle_vdev: |i, sock, size| memif_vdev(i, "server", sock, size),
    end_vdev: |i, sock, size| memif_vdev(i, "client", sock, size),
    // (No --max-pkt-len: net_memif reports 1518 as its limit and refuses more, yet
    // carries whatever fits its buffers.)
    app_extra: |_| Vec::new(),
    note: "Both middle boxes copy each frame once per crossing (peer buffer ↔ own buffer); \
           the end testpmd is the same in both, io forwarding with --tx-first on --gen-core.",
};

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    dpdk_loop::run(&LOOP, opts, systems)
}

fn plot(report: &Report) -> String {
    crate::bench::plot_throughput(report, "memif loop through a middle box (Mpps)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_frames_get_big_buffers() {
        assert!(memif_vdev(0, "client", Path::new("/s"), 9000).ends_with("bsize=9000"));
        assert!(memif_vdev(1, "server", Path::new("/s"), 64).contains("role=server"));
    }
}
