//! `af-xdp`: the tap-hub path (generator and sink in namespaces of their own) with the
//! switch's ports as AF_XDP sockets on veths against the same switch with taps.
//!
//! ```text
//!  netns gen                 netns sut                              netns sink
//!  AF_PACKET ─► vethA ══════ af-xdp ─ pollswitch ─ af-xdp ══════ vethB ─► AF_PACKET
//!  AF_PACKET ─► tapA  ══fd══ tap    ─ pollswitch ─ tap    ══fd══ tapB  ─► AF_PACKET
//! ```
//!
//! Reported: received Mpps at the frame size given (64 bytes by default), and the
//! ratio af-xdp / tap.

use serde_json::json;

use crate::bench::{alternate, plot_throughput, ratios, tap_hub, BenchOpts, Scenario};
use crate::error::Result;
use crate::peer;
use crate::report::Report;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "af-xdp",
    about: "veth ↔ veth through pollswitch's af-xdp ports vs tap ↔ tap through its taps",
    systems: &["pollswitch-af-xdp", "pollswitch"],
    run,
    plot,
};

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["rate"] = json!(opts.rate.label());
    let mut report = opts.report(&SCENARIO, params);
    report.series = alternate(opts, systems, |sys, o, run, cmd| {
        tap_hub::measure_once(sys, o, o.rate, None, run, cmd)
    });
    report.ratios = ratios(
        &report,
        "pollswitch-af-xdp",
        "received Mpps",
        |s| s.median(|m| m.rx_mpps),
        true,
    );
    report.notes.push(
        "both systems are the same daemon with the same -cores and -poll-us; only the \
         ports differ: AF_XDP sockets (copy mode: veth has no zero-copy; the XDP program \
         attached natively) on the daemon's ends of two veth pairs, or two taps. The \
         generator and sink are AF_PACKET sockets on the other ends in both cases"
            .into(),
    );
    Ok(report)
}

fn plot(report: &Report) -> String {
    plot_throughput(
        report,
        &format!(
            "af-xdp: veth ↔ veth through af-xdp ports vs taps, {}-byte frames, rate {}",
            report.params["size"],
            report.params["rate"].as_str().unwrap_or("?")
        ),
    )
}
