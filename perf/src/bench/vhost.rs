//! `vhost`: a DPDK application's loop through a middle box over vhost-user — pollswitch
//! (two vhost-user ports on one hub, one worker, listening) against dpdk-testpmd doing
//! io forwarding between two `net_vhost` ports, on the shared [`super::dpdk_loop`]
//! harness. The end is one testpmd with two `net_virtio_user` ports (virtio-net drivers
//! without a VM), io forwarding with `--tx-first`.
//!
//! ```text
//!  end testpmd (virtio_user0/1) ══ middle: pollswitch vhost-user na ─ hub 0 ─ vhost-user nb
//!                                      or testpmd net_vhost0/1 (io)
//! ```
//!
//! Frame sizes from `--sizes` (default 64, 1518). Target, 64 B: pollswitch ≥ 1.0× the
//! testpmd middle box (DPDK's own vhost library).

use super::dpdk_loop::{self, Loop};
use crate::bench::{BenchOpts, Scenario};
use crate::error::Result;
use crate::peer;
use crate::report::Report;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "vhost",
    about: "testpmd io loop of two virtio_user ports through a middle box: pollswitch (two \
            vhost-user ports, one worker) vs testpmd io forwarding between two net_vhost ports",
    systems: &["pollswitch", "testpmd"],
    run,
    plot,
};

/// The virtqueues' size on both ends.
const QUEUE: usize = 1024;

const LOOP: Loop = Loop {
    scenario: &SCENARIO,
    name: "vhost-user",
    sizes: &[64, 1518],
    pollswitch_port: |id, sock| {
        vec![
            "-chardev".into(),
            format!("socket,id=c{id},path={},server=on", sock.display()),
            "-netdev".into(),
            format!("vhost-user,id={id},chardev=c{id}"),
        ]
    },
    middle_vdev: |i, sock, _| format!("net_vhost{i},iface={},queues=1", sock.display()),
    end_vdev: |i, sock, _| {
        format!(
            "net_virtio_user{i},path={},queues=1,queue_size={QUEUE}",
            sock.display()
        )
    },
    app_extra: |size| {
        if size > 1518 {
            vec![format!("--max-pkt-len={}", size + 4)]
        } else {
            Vec::new()
        }
    },
    note: "Both middle boxes copy each frame twice (guest TX buffer → own buffer → guest RX \
           buffer, with the virtio-net header); the end testpmd is the same in both.",
};

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    dpdk_loop::run(&LOOP, opts, systems)
}

fn plot(report: &Report) -> String {
    crate::bench::plot_throughput(report, "vhost-user loop through a middle box (Mpps)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn ports_and_vdevs() {
        let p = (LOOP.pollswitch_port)("na", Path::new("/s")).join(" ");
        assert_eq!(
            p,
            "-chardev socket,id=cna,path=/s,server=on -netdev vhost-user,id=na,chardev=cna"
        );
        assert_eq!(
            (LOOP.middle_vdev)(1, Path::new("/s"), 64),
            "net_vhost1,iface=/s,queues=1"
        );
        assert!((LOOP.end_vdev)(0, Path::new("/s"), 64).starts_with("net_virtio_user0,path=/s"));
        assert!((LOOP.app_extra)(9000)[0].contains("9004"));
    }
}
