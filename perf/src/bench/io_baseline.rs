//! `io-baseline`: pollswitch's io_uring UDP path against a plain busy-polling
//! `recvmmsg`/`sendmmsg` loop (`mmsg-relay`), both as a two-port UDP hub with the same
//! generator, cores and frames. The bar: io_uring must not lose to such a loop.

use serde_json::json;

use super::{alternate, plot_throughput, ratios, target, udp_hub, BenchOpts, Scenario};
use crate::error::Result;
use crate::peer;
use crate::report::Report;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "io-baseline",
    about: "two UDP ports on one hub: pollswitch (io_uring) vs a recvmmsg/sendmmsg loop",
    systems: &["pollswitch", "mmsg"],
    run,
    plot,
};

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["rate"] = json!(opts.rate.label());
    let mut report = opts.report(&SCENARIO, params);
    report.series = alternate(opts, systems, |sys, o, run, cmd| {
        udp_hub::measure_once(sys, o, o.rate, None, run, cmd)
    });
    report.ratios = ratios(
        &report,
        "pollswitch",
        "received Mpps",
        |s| s.median(|m| m.rx_mpps),
        true,
    );
    if let (Some(p), Some(m)) = (report.series("pollswitch"), report.series("mmsg")) {
        let r = p.median(|x| x.rx_mpps) / m.median(|x| x.rx_mpps);
        report.targets.push(target(
            "io-baseline: pollswitch (io_uring) ≥ 1.0× a recvmmsg/sendmmsg loop (received Mpps)",
            r,
            1.0,
            false,
        ));
    }
    report.notes.push(
        "pollswitch: one multishot recv over a provided-buffer ring per port, runs of \
         equal-length frames sent as one UDP GSO sendmsg; mmsg-relay: recvmmsg of up to 32, \
         sendmmsg of the same to the other port, busy-polling non-blocking sockets"
            .into(),
    );
    Ok(report)
}

fn plot(report: &Report) -> String {
    plot_throughput(
        report,
        &format!(
            "io-baseline: io_uring vs recvmmsg/sendmmsg, {}-byte frames, rate {}",
            report.params["size"],
            report.params["rate"].as_str().unwrap_or("?")
        ),
    )
}
