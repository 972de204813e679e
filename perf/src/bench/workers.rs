//! `workers`: the switch core alone, with no kernel and no peer in the path, against
//! its number of workers. Every port is one of the daemon's in-memory `x-null`
//! netdevs: a source makes frames in `rx_burst` as fast as its worker polls, a sink
//! frees what it is given and counts it as tx-packets. Throughput comes from the
//! daemon's own counters, read over QMP (`x-query-stats`) at both edges of the window.
//!
//! ```text
//!  W workers on -cores c0..c{W-1}. Ports go to the least-loaded worker in order of
//!  creation: s0..s{W-1} land on workers 0..W-1, then k0..k{W-1} the same way.
//!
//!  local:  hub i = { s{i}, k{i} }          worker i ──────────► worker i  (shared nothing)
//!  cross:  hub i = { s{(i+1)%W}, k{i} }    worker (i+1)%W ─ring─► worker i
//!
//!  start ─► warm-up ─► x-query-stats ─► window ─► x-query-stats ─► SIGTERM
//!  Mpps = Σ over sinks of Δ tx-packets ÷ elapsed (between the two replies' midpoints)
//! ```
//!
//! `--workers N` sets the largest count: W = 1, 2, 4, … below N, and N, each on the
//! first W of `--sut-cores`. Both layouts are measured for every W above 1 (for one
//! worker they are the same). Runs alternate over every (layout, W) case.
//!
//! Targets: one worker with two in-memory ports, 64 B: at least 20 Mpps; 8 workers
//! (local layout) at least 0.85 × 8 × the one-worker median, judged only where 8
//! workers were measured.

use serde_json::json;
use testbed::QmpClient;

use crate::bench::xnull::{self, Stats};
use crate::bench::{not_measured, rounds, summarized, target, BenchOpts, Scenario};
use crate::error::{PerfError, Result};
use crate::peer;
use crate::report::{Cores, Ratio, Report, Sample, Series};
use crate::svg::{color, Bar, Svg};
use crate::traffic::Rate;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "workers",
    about: "switch core alone (in-memory x-null ports, read over QMP): Mpps against 1, 2, 4 \
            .. --workers N workers, pairs local to a worker and crossing workers",
    systems: &["pollswitch"],
    run,
    plot,
};

/// Packet buffers of the daemon (`-pool-size`).
pub const POOL_SIZE: usize = 16384;
/// The one-worker target, Mpps.
pub const ONE_WORKER_MPPS: f64 = 20.0;
/// Worker count of the scaling target.
pub const SCALING_WORKERS: usize = 8;
/// The scaling target: this fraction of linear.
pub const SCALING_GOAL: f64 = 0.85;
const ONE_WORKER_GOAL: &str = "one worker, two in-memory ports, 64 B: ≥ 20 Mpps";
const SCALING_TARGET: &str = "Workers 1 → 8: ≥ 0.85 × linear";

/// Where each sink's frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Sink i shares hub i with source i: both on worker i.
    Local,
    /// Sink i shares hub i with source (i+1) % W: every frame crosses a worker ring.
    Cross,
}

impl Layout {
    /// As written in labels and params.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Local => "local",
            Layout::Cross => "cross",
        }
    }

    /// The source that feeds sink `i` of `workers`.
    pub fn source_of(self, i: usize, workers: usize) -> usize {
        match self {
            Layout::Local => i,
            Layout::Cross => (i + 1) % workers,
        }
    }
}

/// Worker counts measured for `--workers n`: 1, 2, 4, … below `n`, and `n`.
pub fn worker_counts(n: usize) -> Vec<usize> {
    let n = n.max(1);
    let mut out = Vec::new();
    let mut w = 1;
    while w < n {
        out.push(w);
        w *= 2;
    }
    out.push(n);
    out
}

/// The series label of one case.
pub fn label(layout: Layout, workers: usize) -> String {
    format!(
        "{} {workers} worker{}",
        layout.name(),
        if workers == 1 { "" } else { "s" }
    )
}

/// Frames per second each source makes for `rate` over all of them (0: as fast as it
/// can).
fn per_source_rate(rate: Rate, workers: usize) -> u64 {
    match rate {
        Rate::Max => 0,
        Rate::Pps(p) => ((p / workers.max(1) as f64).round() as u64).max(1),
    }
}

/// The daemon's `-netdev` arguments for `workers` source/sink pairs: every source, then
/// every sink (so that source i and sink i both land on worker i), then the hubports.
pub fn netdevs(layout: Layout, workers: usize, size: usize, rate: u64) -> Vec<String> {
    let mut specs = Vec::new();
    for i in 0..workers {
        specs.push(format!(
            "x-null,id=s{i},mode=source,size={size},rate={rate}"
        ));
    }
    for i in 0..workers {
        specs.push(format!("x-null,id=k{i},mode=sink"));
    }
    for i in 0..workers {
        let s = layout.source_of(i, workers);
        specs.push(format!("hubport,id=hs{s},hubid={i},netdev=s{s}"));
        specs.push(format!("hubport,id=hk{i},hubid={i},netdev=k{i}"));
    }
    specs
        .into_iter()
        .flat_map(|s| ["-netdev".to_string(), s])
        .collect()
}

/// One (layout, worker count) case.
struct Case {
    layout: Layout,
    workers: usize,
    cores: Vec<usize>,
    series: Series,
}

/// The daemon's whole command line (after the program) for `case`.
fn daemon_args(opts: &BenchOpts, case: &Case) -> Vec<String> {
    let mut a = netdevs(
        case.layout,
        case.workers,
        opts.size,
        per_source_rate(opts.rate, case.workers),
    );
    a.extend([
        "-cores".to_string(),
        testbed::cpu::list(&case.cores),
        "-poll-us".to_string(),
        "0".to_string(),
        "-pool-size".to_string(),
        POOL_SIZE.to_string(),
        "-max-frame".to_string(),
        opts.size.max(1518).to_string(),
    ]);
    a.extend(opts.pollswitch_args.iter().cloned());
    a
}

/// The generic window, with this scenario's premise (one source and one sink on each
/// worker) and its per-worker report.
fn window(
    qmp: &mut QmpClient,
    opts: &BenchOpts,
    case: &Case,
    pid: u32,
    sample: &mut Sample,
) -> Result<()> {
    let w = case.workers;
    let sources: Vec<String> = (0..w).map(|i| format!("s{i}")).collect();
    let sinks: Vec<String> = (0..w).map(|i| format!("k{i}")).collect();
    let mut placed_as_expected = |_: &mut QmpClient, first: &Stats| -> Result<()> {
        let placed: Vec<u64> = first.workers.iter().map(|x| x.ports).collect();
        if placed == vec![2; w] {
            return Ok(());
        }
        Err(PerfError::peer(
            "pollswitch",
            format!(
                "ports per worker {placed:?}, not one source and one sink on each of {w} \
                 worker(s): the daemon no longer places ports as this scenario expects"
            ),
        ))
    };
    let m = xnull::window(qmp, opts, pid, &sources, &sinks, &mut placed_as_expected)?;
    let elapsed = m.elapsed();
    let delivered = m.outcome.received;
    let mut diagnostics = Vec::new();
    let mut per_worker = Vec::new();
    for (i, (sink, n)) in m.per_sink.iter().enumerate() {
        let src = case.layout.source_of(i, w);
        let core = m.after.stats.workers.get(i).and_then(|x| x.core);
        let mpps = *n as f64 / elapsed / 1e6;
        let share = if delivered > 0 {
            100.0 * *n as f64 / delivered as f64
        } else {
            0.0
        };
        diagnostics.push(format!(
            "worker {i} (core {}): sink {sink} took {mpps:.3} Mpps ({share:.1} % of all), fed \
             by source s{src} on worker {src}",
            core.map_or("?".to_string(), |c| c.to_string())
        ));
        per_worker.push(json!({
            "worker": i, "core": core, "sink": sink, "source": format!("s{src}"),
            "delivered": n, "mpps": mpps, "share_pct": share,
        }));
    }
    diagnostics.extend(m.diagnostics());
    sample.detail = Some(json!({
        "layout": case.layout.name(),
        "workers": w,
        "cores": case.cores,
        "per_worker": per_worker,
        "drops_by_reason": m.by_reason,
        "qmp_query_ms": [m.before.took_ns as f64 / 1e6, m.after.took_ns as f64 / 1e6],
    }));
    sample.switch_drops = Some(m.drops());
    sample.sut_cpu_pct = Some(m.sut_cpu_pct);
    sample.diagnostics = diagnostics;
    sample.outcome = Some(m.outcome);
    Ok(())
}

/// The layout and worker count a series measured (from its params).
fn case_of(s: &Series) -> Option<(Layout, usize)> {
    let layout = match s.params["layout"].as_str()? {
        "local" => Layout::Local,
        "cross" => Layout::Cross,
        _ => return None,
    };
    Some((layout, s.params["workers"].as_u64()? as usize))
}

/// A series' median ÷ (W × the one-worker local median): 1 is linear.
fn efficiency(report: &Report, s: &Series) -> f64 {
    let base = report
        .series(&label(Layout::Local, 1))
        .map_or(f64::NAN, |b| b.median(|m| m.rx_mpps));
    match case_of(s) {
        Some((_, w)) => s.median(|m| m.rx_mpps) / (w as f64 * base),
        None => f64::NAN,
    }
}

fn run(opts: &BenchOpts, _systems: &[&'static peer::System]) -> Result<Report> {
    let bin = peer::require(&opts.pollswitch.to_string_lossy())?;
    let counts = worker_counts(opts.workers);
    // The daemon refuses a core listed twice in -cores, so W workers need W cores.
    let (measured, skipped): (Vec<usize>, Vec<usize>) =
        counts.into_iter().partition(|&w| w <= opts.sut_cores.len());
    let mut params = opts.params();
    if let Some(p) = params.as_object_mut() {
        // No generator here: its settings do not apply.
        p.remove("burst");
        p.remove("generator_udp_gso");
    }
    params["poll_us"] = json!(0);
    params["pool_size"] = json!(POOL_SIZE);
    params["size"] = json!(opts.size);
    params["rate"] = json!(opts.rate.label());
    params["max_workers"] = json!(opts.workers);
    params["worker_counts"] = json!(measured);
    params["layouts"] = json!(["local", "cross"]);
    let mut report = opts.report(&SCENARIO, params);
    report.cores = cores(opts, &measured);

    let mut cases = Vec::new();
    for &w in &measured {
        for layout in [Layout::Local, Layout::Cross] {
            if layout == Layout::Cross && w == 1 {
                continue;
            }
            let cores: Vec<usize> = opts.sut_cores[..w].to_vec();
            let params = json!({
                "layout": layout.name(), "workers": w, "cores": cores, "size": opts.size,
                "ports": 2 * w,
            });
            cases.push(Case {
                layout,
                workers: w,
                cores,
                series: Series::new("pollswitch", &label(layout, w), params),
            });
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.series,
        xnull::say,
        |case, run| {
            let mut command = String::new();
            let args = daemon_args(opts, case);
            let sample = xnull::measure_once(
                &bin,
                &args,
                &case.cores,
                run,
                &mut command,
                &mut |qmp, pid, sample| window(qmp, opts, case, pid, sample),
            );
            case.series.command = command;
            sample
        },
    );
    report.series = summarized(cases.into_iter().map(|c| c.series));

    for s in &report.series {
        if let Some((layout, w)) = case_of(s).filter(|c| c.1 > 1) {
            report.ratios.push(Ratio {
                what: format!(
                    "{} ÷ ({w} × {}) (scaling efficiency, Mpps through the sinks)",
                    label(layout, w),
                    label(Layout::Local, 1)
                ),
                value: efficiency(&report, s),
            });
        }
    }

    let one = report
        .series(&label(Layout::Local, 1))
        .map_or(f64::NAN, |s| s.median(|m| m.rx_mpps));
    report.targets.push(if opts.size == 64 {
        target(ONE_WORKER_GOAL, one, ONE_WORKER_MPPS, false)
    } else {
        not_measured(
            ONE_WORKER_GOAL,
            &format!("frames of {} B were measured, not 64 B", opts.size),
        )
    });
    let eight = report
        .series(&label(Layout::Local, SCALING_WORKERS))
        .map(|s| efficiency(&report, s));
    report.targets.push(match eight {
        Some(e) => target(SCALING_TARGET, e, SCALING_GOAL, false),
        None => not_measured(
            SCALING_TARGET,
            &format!(
                "8 workers were not measured on this machine: {} online core(s), {} given \
                 to the switch (--sut-cores {}), --workers {}; e.g. --workers 8 \
                 --sut-cores 1-8 on a machine with 9 or more cores",
                testbed::cpu::online(),
                opts.sut_cores.len(),
                testbed::cpu::list(&opts.sut_cores),
                opts.workers
            ),
        ),
    });

    report.notes.push(format!(
        "the switch core alone: every port is an in-memory x-null netdev of the daemon \
         ({} B frames made by each source's rx_burst as fast as its worker polls{}), no \
         kernel, no socket, no peer; W sources s0.. and W sinks k0.. each land on worker \
         i in order of creation; Mpps = frames the sinks took in the window (QMP \
         x-query-stats before and after) ÷ elapsed; tx Mpps = frames the sources made",
        opts.size,
        match opts.rate {
            Rate::Max => String::new(),
            Rate::Pps(p) => format!(", paced to {p} frames/s over all sources"),
        }
    ));
    report.notes.push(
        "local: hub i joins source s{i} and sink k{i}, both on worker i (shared nothing); \
         cross: hub i joins sink k{i} with source s{(i+1)%W}, so every frame crosses \
         another worker's ring (for one worker the two are the same: cross is not run)"
            .into(),
    );
    report.notes.push(
        "scaling efficiency = a series' median ÷ (W × the one-worker local median); 1 is \
         linear"
            .into(),
    );
    if !skipped.is_empty() {
        report.notes.push(format!(
            "worker count(s) {skipped:?} not measured: only {} core(s) given (--sut-cores \
             {}) and the daemon's -cores refuses a core listed twice, so workers cannot \
             share a core round-robin",
            opts.sut_cores.len(),
            testbed::cpu::list(&opts.sut_cores)
        ));
    }
    if let Some(&most) = measured.iter().max() {
        if most >= testbed::cpu::online() {
            report.notes.push(format!(
                "with {most} workers every online core busy-polls: this tool's QMP reads, \
                 the daemon's control thread and the rest of the machine share the workers' \
                 cores"
            ));
        }
    }
    Ok(report)
}

/// How the scenario used the machine's cores.
fn cores(opts: &BenchOpts, measured: &[usize]) -> Cores {
    let most = measured.iter().copied().max().unwrap_or(1);
    let used: Vec<usize> = opts.sut_cores.iter().copied().take(most).collect();
    let online = testbed::cpu::online();
    Cores {
        generator: None,
        sink: None,
        system_under_test: used.clone(),
        workers: most,
        used: used.len(),
        online,
        note: format!(
            "no generator or sink thread (the ports are the daemon's own x-null netdevs); \
             W workers pinned with -cores to the first W of core(s) {}, the daemon confined \
             (taskset) to those W cores; this tool only reads QMP; up to {} of {online} \
             online cores used",
            testbed::cpu::list(&opts.sut_cores),
            used.len()
        ),
    }
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1200.0,
        470.0,
        "workers: the switch core alone (in-memory x-null ports), 1..N workers",
        &report.machine.line(),
    );
    let colour = |s: &Series| match case_of(s) {
        Some((Layout::Cross, _)) => format!("{}80", color(&s.system)),
        _ => color(&s.system).to_string(),
    };
    let mpps: Vec<Bar> = report
        .series
        .iter()
        .map(|s| Bar {
            label: s.label.clone(),
            value: s.median(|m| m.rx_mpps),
            range: s.summary.rx_mpps.map(|x| (x.min, x.max)),
            color: colour(s),
        })
        .collect();
    let eff: Vec<Bar> = report
        .series
        .iter()
        .filter(|s| case_of(s).is_some_and(|c| c.1 > 1))
        .map(|s| Bar {
            label: s.label.clone(),
            value: efficiency(report, s),
            range: None,
            color: colour(s),
        })
        .collect();
    let drops: Vec<Bar> = report
        .series
        .iter()
        .map(|s| Bar {
            label: s.label.clone(),
            value: s.median(|m| m.switch_drops),
            range: s.summary.switch_drops.map(|x| (x.min, x.max)),
            color: colour(s),
        })
        .collect();
    svg.bars(
        (0.0, 55.0, 500.0, 390.0),
        "through the sinks (median, min–max)",
        "Mpps",
        &mpps,
    );
    svg.bars(
        (500.0, 55.0, 400.0, 390.0),
        "scaling efficiency (1 = linear)",
        "÷ (W × one worker)",
        &eff,
    );
    svg.bars(
        (900.0, 55.0, 300.0, 390.0),
        "switch drops in the window",
        "frames",
        &drops,
    );
    svg.footer(&report.command);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Outcome;

    #[test]
    fn counts_double_up_to_n() {
        assert_eq!(worker_counts(1), [1]);
        assert_eq!(worker_counts(2), [1, 2]);
        assert_eq!(worker_counts(6), [1, 2, 4, 6]);
        assert_eq!(worker_counts(8), [1, 2, 4, 8]);
        assert_eq!(worker_counts(0), [1]);
    }

    #[test]
    fn sources_then_sinks_then_hubports() {
        let a = netdevs(Layout::Local, 2, 64, 0).join(" ");
        assert_eq!(
            a,
            "-netdev x-null,id=s0,mode=source,size=64,rate=0 \
             -netdev x-null,id=s1,mode=source,size=64,rate=0 \
             -netdev x-null,id=k0,mode=sink -netdev x-null,id=k1,mode=sink \
             -netdev hubport,id=hs0,hubid=0,netdev=s0 -netdev hubport,id=hk0,hubid=0,netdev=k0 \
             -netdev hubport,id=hs1,hubid=1,netdev=s1 -netdev hubport,id=hk1,hubid=1,netdev=k1"
        );
        let c = netdevs(Layout::Cross, 3, 64, 5).join(" ");
        assert!(c.contains("hubport,id=hs1,hubid=0,netdev=s1"), "{c}");
        assert!(c.contains("hubport,id=hs2,hubid=1,netdev=s2"), "{c}");
        assert!(c.contains("hubport,id=hs0,hubid=2,netdev=s0"), "{c}");
        assert!(c.contains("rate=5"));
        assert_eq!(per_source_rate(Rate::Pps(1e6), 4), 250_000);
        assert_eq!(per_source_rate(Rate::Max, 4), 0);
        assert_eq!(label(Layout::Local, 1), "local 1 worker");
        assert_eq!(label(Layout::Cross, 4), "cross 4 workers");
    }

    #[test]
    fn efficiency_is_against_one_local_worker() {
        let mut opts = BenchOpts::defaults();
        opts.runs = 1;
        let series = |layout: Layout, w: usize, mpps: f64| {
            let mut s = Series::new(
                "pollswitch",
                &label(layout, w),
                json!({"layout": layout.name(), "workers": w}),
            );
            s.samples.push(Sample {
                outcome: Some(Outcome {
                    rx_pps: mpps * 1e6,
                    ..Outcome::default()
                }),
                ..Sample::default()
            });
            s.summarize();
            s
        };
        let mut r = Report {
            scenario: "workers".into(),
            about: String::new(),
            tool: String::new(),
            command: String::new(),
            started_unix_s: 0,
            machine: crate::report::Machine {
                hostname: String::new(),
                os: String::new(),
                kernel: String::new(),
                cpu_model: String::new(),
                cpus_online: 1,
                virtualized: false,
                memory_gib: 0.0,
                load_average: String::new(),
                busy_before_pct: Vec::new(),
                versions: Vec::new(),
            },
            cores: cores(&opts, &[1]),
            params: json!({}),
            series: vec![
                series(Layout::Local, 1, 20.0),
                series(Layout::Local, 2, 36.0),
                series(Layout::Cross, 2, 10.0),
            ],
            ratios: Vec::new(),
            targets: vec![not_measured(SCALING_TARGET, "no 8 cores")],
            notes: Vec::new(),
        };
        assert!((efficiency(&r, &r.series[1]) - 0.9).abs() < 1e-12);
        assert!((efficiency(&r, &r.series[2]) - 0.25).abs() < 1e-12);
        assert!((efficiency(&r, &r.series[0]) - 1.0).abs() < 1e-12);
        // A not-measured target (NaN) survives the JSON round trip, and says why.
        let back: Report = serde_json::from_str(&r.to_json()).unwrap();
        assert!(back.targets[0].value.is_nan() && !back.targets[0].met);
        assert!(r.table().contains("not measured — no 8 cores"));
        let svg = plot(&back);
        assert!(svg.starts_with("<svg") && svg.contains("cross 2 workers"));
        // Without the one-worker series there is nothing to scale against.
        r.series.remove(0);
        assert!(efficiency(&r, &r.series[0]).is_nan());
    }
}
