//! `latency`: one-way latency at a fixed moderate rate (default 20 kpps, 64-byte
//! frames) through every system of `udp-hub` and of `tap-hub`, so that queueing from
//! overload plays no part. Paced frames go one per send call when the rate allows.
//!
//! Target: pollswitch's p99 over UDP at 20 kpps is at most one third of QEMU's.

use serde_json::json;

use crate::bench::{ratios, rounds, say, tap_hub, target, udp_hub, BenchOpts, Scenario};
use crate::error::Result;
use crate::peer;
use crate::report::{Report, Series};
use crate::svg::Svg;
use crate::traffic::Rate;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "latency",
    about: "p50/p90/p99/p99.9 at a fixed moderate rate through every udp-hub and tap-hub system",
    systems: &["pollswitch", "qemu", "vde", "bridge", "testpmd"],
    run,
    plot,
};

/// Which transport a case uses.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    Udp,
    Tap,
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let rate = Rate::Pps(opts.latency_rate);
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["rate_pps"] = json!(opts.latency_rate);
    let mut report = opts.report(&SCENARIO, params);
    let mut cases: Vec<(&peer::System, Via, Series)> = Vec::new();
    for (via, list, tag) in [
        (Via::Udp, udp_hub::SCENARIO.systems, "udp"),
        (Via::Tap, tap_hub::SCENARIO.systems, "tap"),
    ] {
        // In the order of udp-hub and tap-hub, so the rows line up with theirs.
        for sys in list
            .iter()
            .filter_map(|n| systems.iter().find(|s| s.name == *n))
        {
            let label = format!("{} ({tag})", sys.name);
            let params = json!({"via": tag, "size": opts.size, "rate_pps": opts.latency_rate});
            cases.push((sys, via, Series::new(sys.name, &label, params)));
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.2,
        say,
        |(sys, via, s), run| match via {
            Via::Udp => udp_hub::measure_once(sys, opts, rate, None, run, &mut s.command),
            Via::Tap => tap_hub::measure_once(sys, opts, rate, None, run, &mut s.command),
        },
    );
    report.series = cases
        .into_iter()
        .map(|(_, _, mut s)| {
            s.summarize();
            s
        })
        .collect();
    for ours in ["pollswitch (udp)", "pollswitch (tap)"] {
        let mut r = ratios(&report, ours, "p99", |s| s.median(|m| m.p99_us), false);
        let via = ours.split_once(' ').map_or("", |x| x.1);
        // Compare like with like: UDP systems with pollswitch over UDP, taps with taps.
        r.retain(|x| x.what.split(" ÷ ").next().is_some_and(|l| l.ends_with(via)));
        report.ratios.extend(r);
    }
    let p99 = |label: &str| report.series(label).map(|s| s.median(|m| m.p99_us));
    if let (Some(mine), Some(theirs)) = (p99("pollswitch (udp)"), p99("qemu (udp)")) {
        report.targets.push(target(
            &format!(
                "latency: pollswitch p99 ≤ ⅓ of QEMU's over UDP at {} pps (QEMU p99 ÷ pollswitch p99)",
                opts.latency_rate
            ),
            theirs / mine,
            3.0,
            false,
        ));
    }
    let lossy: Vec<String> = report
        .series
        .iter()
        .filter(|s| s.median(|m| m.loss_pct) > 1.0)
        .map(|s| s.label.clone())
        .collect();
    for label in lossy {
        report.notes.push(format!(
            "{label} lost over 1 % at this rate: its percentiles are of the frames that arrived"
        ));
    }
    Ok(report)
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1200.0,
        470.0,
        &format!(
            "latency: one-way, {}-byte frames at {} frames/s",
            report.params["size"],
            crate::svg::num(report.params["rate_pps"].as_f64().unwrap_or(f64::NAN))
        ),
        &report.machine.line(),
    );
    let groups: Vec<(String, Vec<f64>)> = report
        .series
        .iter()
        .map(|s| {
            (
                s.label.clone(),
                vec![
                    s.median(|m| m.p50_us),
                    s.median(|m| m.p90_us),
                    s.median(|m| m.p99_us),
                    s.median(|m| m.p999_us),
                ],
            )
        })
        .collect();
    svg.grouped(
        (0.0, 55.0, 1200.0, 390.0),
        "percentiles (median of runs)",
        "µs (log)",
        &["p50", "p90", "p99", "p99.9"],
        &groups,
    );
    svg.footer(&report.command);
    svg.finish()
}
