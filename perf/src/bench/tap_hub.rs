//! `tap-hub`: tap to tap between two namespaces. Each run makes three fresh namespaces
//! (the system's, the generator's, the sink's); the system makes its two tap (or veth)
//! interfaces in its own, and one end goes to each of the others.
//!
//! ```text
//!  netns gen                 netns sut                       netns sink
//!  AF_PACKET ─► tapA ══fd══► pollswitch | QEMU hub | testpmd ══fd══► tapB ─► AF_PACKET
//!  AF_PACKET ─► vethA ══════► Linux bridge (static FDB, RPS) ══════► vethB ─► AF_PACKET
//! ```
//!
//! Targets (64-byte frames): pollswitch ≥ 1.5× dpdk-testpmd (net_tap, io) and ≥ 1.0× the
//! Linux bridge.

use serde_json::json;

use crate::bench::ndr::NdrOpts;
use crate::bench::{
    alternate, measure, plot_throughput, ratios, tap_pair, target, throughput_ratios, BenchOpts,
    Job, Scenario, TapNamespaces,
};
use crate::error::Result;
use crate::frame;
use crate::peer;
use crate::report::{Report, Sample};
use crate::traffic::{Rate, Roles};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "tap-hub",
    about: "tap ↔ tap between two namespaces: pollswitch vs Linux bridge vs dpdk-testpmd vs QEMU",
    systems: &["pollswitch", "bridge", "testpmd", "qemu"],
    run,
    plot,
};

/// One measurement of `system` between two taps at `rate`.
pub fn measure_once(
    system: &peer::System,
    opts: &BenchOpts,
    rate: Rate,
    ndr: Option<&NdrOpts>,
    run: usize,
    command: &mut String,
) -> Sample {
    let ns = match TapNamespaces::for_run(run) {
        Ok(n) => n,
        Err(failed) => return *failed,
    };
    let mtu = if opts.size > 1514 { 9000 } else { 1500 };
    let topology = tap_pair(&ns, mtu);
    let cfg = opts.traffic(rate, opts.size, frame::mac(1));
    let roles = Roles {
        tx: vec![0],
        rx: vec![1],
    };
    // The namespaces (and whatever is left in them) go when `ns` drops, after the stop.
    let job = Job {
        topology: &topology,
        roles: &roles,
        cfg: &cfg,
        sut: &opts.sut(opts.size),
        gen_gso: opts.gen_gso,
        ndr,
    };
    measure(system, &job, run, command)
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["rate"] = json!(opts.rate.label());
    let mut report = opts.report(&SCENARIO, params);
    report.series = alternate(opts, systems, |sys, o, run, cmd| {
        measure_once(sys, o, o.rate, o.ndr.as_ref(), run, cmd)
    });
    report.ratios = ratios(
        &report,
        "pollswitch",
        "received Mpps",
        |s| s.median(|m| m.rx_mpps),
        true,
    );
    throughput_ratios(&mut report);
    if let Some(p) = report.series("pollswitch") {
        let mine = p.median(|m| m.rx_mpps);
        for (peer_name, goal, k) in [
            (
                "testpmd",
                "tap-hub: pollswitch ≥ 1.5× dpdk-testpmd net_tap (received Mpps)",
                1.5,
            ),
            (
                "bridge",
                "tap-hub: pollswitch ≥ 1.0× Linux bridge (received Mpps)",
                1.0,
            ),
        ] {
            if let Some(q) = report.series(peer_name) {
                report
                    .targets
                    .push(target(goal, mine / q.median(|m| m.rx_mpps), k, false));
            }
        }
    }
    report.notes.push(
        "the generator sends through an AF_PACKET socket (qdisc bypassed) on its end of the \
         tap/veth, the sink reads an AF_PACKET socket on the other. A tap whose reader lags \
         refuses further frames (tx_dropped on the generator's interface) and the send call \
         fails, so the generator offers them again: backpressure, not loss. Received Mpps is \
         then the slower of the system and the generator's core"
            .into(),
    );
    Ok(report)
}

fn plot(report: &Report) -> String {
    plot_throughput(
        report,
        &format!(
            "tap-hub: tap ↔ tap between two namespaces, {}-byte frames, rate {}",
            report.params["size"],
            report.params["rate"].as_str().unwrap_or("?")
        ),
    )
}
