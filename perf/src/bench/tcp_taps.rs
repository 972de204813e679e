//! `tcp-taps`: iperf3 TCP between two namespaces through two taps on one hub, 1 and 4
//! streams, Gbit/s. The tap-hub layout (three fresh namespaces per run), the tool's
//! ends made hosts: addresses in one /24, permanent neighbour entries, MTU 1500.
//!
//! ```text
//!  netns gen                      netns sut                          netns sink
//!  iperf3 -c 10.77.0.2 ─► tapA ══► pollswitch | QEMU hub ══► tapB ─► iperf3 -s (10.77.0.2)
//!  iperf3 -c 10.77.0.2 ─► vethA ═► Linux bridge (static FDB, RPS) ═► vethB ─► iperf3 -s
//! ```
//!
//! Offloads are each system's own: the bridge's veths keep their defaults (TSO on: 64 KiB
//! segments cross the bridge whole), QEMU turns a hub tap's offloads off, and pollswitch's
//! taps get whatever its tap netdevs are given — today's defaults, or what
//! `--pollswitch-tap-opts` appends (`vnet_hdr=on`). Client and server are pinned to the
//! generator's core (`iperf3 -A`), each system confined to its cores as in tap-hub.
//! Target: pollswitch ≥ 1.0× the Linux bridge.

use std::time::Instant;

use serde_json::json;

use crate::bench::{
    address_ends, rounds, say, summarized, tap_pair, target, with_system, BenchOpts, Scenario,
    TapNamespaces,
};
use crate::error::{PerfError, Result};
use crate::peer;
use crate::report::{Ratio, Report, Sample, Series};
use crate::svg::{color, Bar, Svg};
use crate::sys;
use crate::traffic::{CpuUse, Outcome};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "tcp-taps",
    about: "iperf3 TCP (1 and 4 streams) between namespaces through two taps on one hub: \
            pollswitch vs Linux bridge vs QEMU",
    systems: &["pollswitch", "bridge", "qemu", "pollswitch-af-xdp"],
    run,
    plot,
};

/// The /24 of the tool's ends.
const NET: &str = "10.77.0";
/// Stream counts measured.
const STREAMS: [usize; 2] = [1, 4];

fn label(system: &str, streams: usize) -> String {
    match streams {
        1 => format!("{system} 1 stream"),
        n => format!("{system} {n} streams"),
    }
}

/// Prints one run's line.
fn say_run(label: &str, s: &Sample) {
    match (&s.outcome, &s.error) {
        (Some(o), None) => eprintln!(
            "  run {} {label}: {:.2} Gbit/s received{}",
            s.run,
            o.rx_gbps,
            s.sut_cpu_pct
                .map(|c| format!(", system CPU {c:.0} %"))
                .unwrap_or_default()
        ),
        _ => say(label, s),
    }
}

/// One iperf3 run of `streams` streams through `system`.
fn measure_once(
    system: &peer::System,
    opts: &BenchOpts,
    streams: usize,
    run: usize,
    command: &mut String,
) -> Sample {
    let ns = match TapNamespaces::for_run(run) {
        Ok(n) => n,
        Err(failed) => return *failed,
    };
    let topology = tap_pair(&ns, 1500);
    with_system(
        system,
        &topology,
        &opts.sut(1518),
        run,
        command,
        |running, _| {
            let addrs = address_ends(&topology, NET)?;
            let secs = format!("{:.1}", opts.duration.as_secs_f64().max(1.0));
            let omit = format!("{:.0}", opts.warmup.as_secs_f64().ceil());
            let p = streams.to_string();
            let core = opts.gen_core.to_string();
            let affinity = format!("{core},{core}");
            let pids = running.pids();
            let before: Vec<Option<u64>> =
                pids.iter().map(|(_, p)| sys::process_cpu_ns(*p)).collect();
            let t0 = Instant::now();
            let t = testbed::iperf::tcp(
                &ns.sink,
                &addrs[1],
                &ns.gen,
                &["-t", &secs, "-O", &omit, "-P", &p, "-A", &affinity],
            )?;
            let wall = t0.elapsed().as_nanos().max(1) as f64;
            // The premise: data crossed the switch.
            if t.gbps.is_nan() || t.gbps <= 0.0 {
                return Err(PerfError::peer(
                    system.name,
                    format!("iperf3 received nothing ({} Gbit/s)", t.gbps),
                ));
            }
            let watched_pct = pids
                .iter()
                .zip(before)
                .map(|((name, pid), b)| {
                    let v = match (b, sys::process_cpu_ns(*pid)) {
                        (Some(b), Some(a)) => 100.0 * a.saturating_sub(b) as f64 / wall,
                        _ => f64::NAN,
                    };
                    (name.clone(), v)
                })
                .collect();
            Ok(Outcome {
                size: 1500,
                rate: crate::report::TCP.into(),
                duration_s: t.seconds,
                rx_gbps: t.gbps,
                cpu: CpuUse {
                    watched_pct,
                    ..CpuUse::default()
                },
                ..Outcome::default()
            })
        },
    )
}

struct Case {
    system: &'static peer::System,
    streams: usize,
    series: Series,
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    for tool in ["iperf3", "ss"] {
        peer::require(tool)?;
    }
    let mut params = opts.params();
    params["streams"] = json!(STREAMS);
    params["mtu"] = json!(1500);
    params["iperf3"] = json!(format!(
        "-t {:.1} -O {:.0} -P N -A {g},{g}",
        opts.duration.as_secs_f64().max(1.0),
        opts.warmup.as_secs_f64().ceil(),
        g = opts.gen_core
    ));
    let mut report = opts.report(&SCENARIO, params);
    let mut cases = Vec::new();
    for streams in STREAMS {
        for sys in systems {
            let p = json!({"ports": 2, "streams": streams});
            cases.push(Case {
                system: sys,
                streams,
                series: Series::new(sys.name, &label(sys.name, streams), p),
            });
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.series,
        say_run,
        |c, run| measure_once(c.system, opts, c.streams, run, &mut c.series.command),
    );
    report.series = summarized(cases.into_iter().map(|c| c.series));
    let gbps = |r: &Report, l: &str| r.series(l).map_or(f64::NAN, |s| s.median(|m| m.rx_gbps));
    for streams in STREAMS {
        let mine = label("pollswitch", streams);
        if report.series(&mine).is_none() {
            continue;
        }
        for other in systems.iter().filter(|s| s.name != "pollswitch") {
            let theirs = label(other.name, streams);
            if report.series(&theirs).is_none() {
                continue;
            }
            let value = gbps(&report, &mine) / gbps(&report, &theirs);
            report.ratios.push(Ratio {
                what: format!("{mine} ÷ {theirs} (Gbit/s)"),
                value,
            });
            if other.name == "bridge" {
                report.targets.push(target(
                    &format!(
                        "tcp-taps: pollswitch ≥ 1.0× Linux bridge, {streams} stream(s) (Gbit/s)"
                    ),
                    value,
                    1.0,
                    false,
                ));
            }
        }
    }
    report.notes.push(format!(
        "iperf3 client in the generator's namespace, one-shot server in the sink's, both \
         pinned to core {} (-A); Gbit/s is the receiver's (sum_received), the first \
         warm-up seconds omitted (-O); system CPU is over the whole iperf3 run",
        opts.gen_core
    ));
    report.notes.push(format!(
        "offloads: the bridge's veths keep theirs (TSO on), QEMU's hub turns a tap's off, \
         pollswitch's taps: {}",
        if opts.pollswitch_tap_opts.is_empty() {
            "the tap netdev's defaults (no --pollswitch-tap-opts)".to_string()
        } else {
            format!("tap netdev options {}", opts.pollswitch_tap_opts)
        }
    ));
    Ok(report)
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1000.0,
        470.0,
        "tcp-taps: iperf3 TCP through two taps on one hub, MTU 1500",
        &report.machine.line(),
    );
    let bars = |streams: &str| -> Vec<Bar> {
        report
            .series
            .iter()
            .filter(|s| s.label.ends_with(streams))
            .map(|s| Bar {
                label: s.label.clone(),
                value: s.median(|m| m.rx_gbps),
                range: s.summary.rx_gbps.map(|x| (x.min, x.max)),
                color: color(&s.system).into(),
            })
            .collect()
    };
    svg.bars(
        (0.0, 55.0, 500.0, 390.0),
        "1 stream (median, min–max)",
        "Gbit/s",
        &bars(" 1 stream"),
    );
    svg.bars(
        (500.0, 55.0, 500.0, 390.0),
        "4 streams (median, min–max)",
        "Gbit/s",
        &bars(" 4 streams"),
    );
    svg.footer(&report.command);
    svg.finish()
}
