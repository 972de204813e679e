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

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use testbed::process::Signal;
use testbed::QmpClient;

use crate::bench::{not_measured, rounds, target, BenchOpts, Scenario};
use crate::error::{chain, PerfError, Result};
use crate::frame;
use crate::peer::{self, pollswitch::READY};
use crate::report::{Cores, Ratio, Report, Sample, Series};
use crate::svg::{color, Bar, Svg};
use crate::sys;
use crate::traffic::{CpuUse, Outcome, Rate};

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
/// How long the daemon may take to start.
const START: Duration = Duration::from_secs(10);
/// How long it may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);
/// How long a QMP connect or reply may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// One port's counters in an `x-query-stats` reply.
#[derive(Debug, Clone, Default, PartialEq)]
struct PortCount {
    rx: u64,
    tx: u64,
    drops: BTreeMap<String, u64>,
}

/// One worker in an `x-query-stats` reply.
#[derive(Debug, Clone, PartialEq)]
struct WorkerInfo {
    core: Option<u64>,
    ports: u64,
}

/// What `x-query-stats` said.
#[derive(Debug, Clone, Default)]
struct Stats {
    ports: BTreeMap<String, PortCount>,
    workers: Vec<WorkerInfo>,
}

impl Stats {
    fn parse(v: &Value) -> Result<Stats> {
        let bad = |what: &str| {
            PerfError::peer(
                "pollswitch",
                format!("x-query-stats reply without {what}: {v}"),
            )
        };
        let mut out = Stats::default();
        for p in v["ports"].as_array().ok_or_else(|| bad("ports"))? {
            let name = p["name"].as_str().ok_or_else(|| bad("a port name"))?;
            let drops = p["drops"]
                .as_object()
                .map(|d| {
                    d.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default();
            out.ports.insert(
                name.to_string(),
                PortCount {
                    rx: p["rx-packets"].as_u64().ok_or_else(|| bad("rx-packets"))?,
                    tx: p["tx-packets"].as_u64().ok_or_else(|| bad("tx-packets"))?,
                    drops,
                },
            );
        }
        for w in v["workers"].as_array().ok_or_else(|| bad("workers"))? {
            out.workers.push(WorkerInfo {
                core: w["core"].as_u64(),
                ports: w["ports"].as_u64().unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Counters of `port` from `before` to `self`.
    fn delta(&self, before: &Stats, port: &str) -> Result<PortCount> {
        let (Some(a), Some(b)) = (before.ports.get(port), self.ports.get(port)) else {
            return Err(PerfError::peer(
                "pollswitch",
                format!("port {port} missing from x-query-stats"),
            ));
        };
        let mut drops = BTreeMap::new();
        for (k, n) in &b.drops {
            drops.insert(
                k.clone(),
                n.saturating_sub(a.drops.get(k).copied().unwrap_or(0)),
            );
        }
        Ok(PortCount {
            rx: b.rx.saturating_sub(a.rx),
            tx: b.tx.saturating_sub(a.tx),
            drops,
        })
    }
}

/// One read of the counters and when it happened.
struct Reading {
    stats: Stats,
    /// Midpoint of the query, monotonic nanoseconds.
    at_ns: u64,
    /// How long the query took.
    took_ns: u64,
}

fn read_stats(qmp: &mut QmpClient) -> Result<Reading> {
    let t0 = frame::now_ns();
    let v = qmp
        .try_execute_ok("x-query-stats", Value::Null)
        .map_err(|e| PerfError::peer("pollswitch", format!("QMP x-query-stats: {e}")))?;
    let t1 = frame::now_ns();
    Ok(Reading {
        stats: Stats::parse(&v)?,
        at_ns: t0 + (t1 - t0) / 2,
        took_ns: t1 - t0,
    })
}

/// One (layout, worker count) case.
struct Case {
    layout: Layout,
    workers: usize,
    cores: Vec<usize>,
    series: Series,
}

/// A fresh socket path for one daemon.
fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "pollswitch-perf-workers-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The daemon's whole command line (after the program) for `case`.
fn daemon_args(opts: &BenchOpts, case: &Case, sock: &Path) -> Vec<String> {
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
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    a.extend(opts.pollswitch_args.iter().cloned());
    a
}

/// What one window measured.
struct Window {
    outcome: Outcome,
    drops: u64,
    detail: Value,
    diagnostics: Vec<String>,
    sut_cpu_pct: f64,
}

/// Warm-up, then the window between two reads of the counters.
fn window(qmp: &mut QmpClient, opts: &BenchOpts, case: &Case, pid: u32) -> Result<Window> {
    let w = case.workers;
    let first = read_stats(qmp)?;
    let placed: Vec<u64> = first.stats.workers.iter().map(|x| x.ports).collect();
    if placed != vec![2; w] {
        return Err(PerfError::peer(
            "pollswitch",
            format!(
                "ports per worker {placed:?}, not one source and one sink on each of {w} \
                 worker(s): the daemon no longer places ports as this scenario expects"
            ),
        ));
    }
    thread::sleep(opts.warmup);
    let a = read_stats(qmp)?;
    let (cpu0, tool0, cores0, t0) = (
        sys::process_cpu_ns(pid),
        sys::self_cpu_ns(),
        sys::core_times(),
        frame::now_ns(),
    );
    thread::sleep(opts.duration);
    let b = read_stats(qmp)?;
    let (cpu1, tool1, cores1, t1) = (
        sys::process_cpu_ns(pid),
        sys::self_cpu_ns(),
        sys::core_times(),
        frame::now_ns(),
    );
    let elapsed = b.at_ns.saturating_sub(a.at_ns).max(1) as f64 / 1e9;
    let wall = t1.saturating_sub(t0).max(1) as f64;
    let sut_cpu_pct = match (cpu0, cpu1) {
        (Some(x), Some(y)) => 100.0 * y.saturating_sub(x) as f64 / wall,
        _ => return Err(PerfError::peer("pollswitch", "exited during the window")),
    };
    let tool_pct = 100.0 * tool1.saturating_sub(tool0) as f64 / wall;
    let cores_busy_pct = sys::core_busy_pct(&cores0, &cores1);
    let other_pct = (cores_busy_pct.iter().sum::<f64>() - tool_pct - sut_cpu_pct).max(0.0);

    let sources: Vec<String> = (0..w).map(|i| format!("s{i}")).collect();
    let sinks: Vec<String> = (0..w).map(|i| format!("k{i}")).collect();
    let mut made = 0u64;
    for s in &sources {
        made += b.stats.delta(&a.stats, s)?.rx;
    }
    let mut per_sink = Vec::new();
    for k in &sinks {
        per_sink.push(b.stats.delta(&a.stats, k)?.tx);
    }
    let delivered: u64 = per_sink.iter().sum();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for name in b.stats.ports.keys() {
        for (k, n) in b.stats.delta(&a.stats, name)?.drops {
            *by_reason.entry(k).or_default() += n;
        }
    }
    by_reason.retain(|_, n| *n > 0);
    let drops: u64 = by_reason.values().sum();

    let mut diagnostics = Vec::new();
    let mut per_worker = Vec::new();
    for (i, &n) in per_sink.iter().enumerate() {
        let src = case.layout.source_of(i, w);
        let core = b.stats.workers.get(i).and_then(|x| x.core);
        let mpps = n as f64 / elapsed / 1e6;
        let share = if delivered > 0 {
            100.0 * n as f64 / delivered as f64
        } else {
            0.0
        };
        diagnostics.push(format!(
            "worker {i} (core {}): sink k{i} took {mpps:.3} Mpps ({share:.1} % of all), fed by \
             source s{src} on worker {src}",
            core.map_or("?".to_string(), |c| c.to_string())
        ));
        per_worker.push(json!({
            "worker": i, "core": core, "sink": format!("k{i}"), "source": format!("s{src}"),
            "delivered": n, "mpps": mpps, "share_pct": share,
        }));
    }
    diagnostics.push(if by_reason.is_empty() {
        "switch drops in the window: none".to_string()
    } else {
        format!(
            "switch drops in the window: {}",
            by_reason
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    diagnostics.push(format!(
        "x-query-stats took {:.2} ms and {:.2} ms (the window runs between their midpoints)",
        a.took_ns as f64 / 1e6,
        b.took_ns as f64 / 1e6
    ));
    let size = opts.size;
    let rx_pps = delivered as f64 / elapsed;
    let lost = made.saturating_sub(delivered);
    let outcome = Outcome {
        size,
        rate: opts.rate.label(),
        duration_s: elapsed,
        tx_ports: sources,
        rx_ports: sinks,
        sent: made,
        expected: made,
        received: delivered,
        lost,
        loss_pct: if made > 0 {
            100.0 * lost as f64 / made as f64
        } else {
            0.0
        },
        tx_pps: made as f64 / elapsed,
        rx_pps,
        rx_gbps: rx_pps * size as f64 * 8.0 / 1e9,
        cpu: CpuUse {
            tool_pct,
            cores_busy_pct,
            watched_pct: vec![("pollswitch".into(), sut_cpu_pct)],
            other_pct,
        },
        ..Outcome::default()
    };
    let detail = json!({
        "layout": case.layout.name(),
        "workers": w,
        "cores": case.cores,
        "per_worker": per_worker,
        "drops_by_reason": by_reason,
        "qmp_query_ms": [a.took_ns as f64 / 1e6, b.took_ns as f64 / 1e6],
    });
    if delivered == 0 {
        return Err(PerfError::peer(
            "pollswitch",
            format!("the sinks took no frames in the window (sources made {made})"),
        ));
    }
    Ok(Window {
        outcome,
        drops,
        detail,
        diagnostics,
        sut_cpu_pct,
    })
}

/// Starts the daemon for `case`, measures one window, stops it.
fn measure_once(
    opts: &BenchOpts,
    bin: &Path,
    case: &Case,
    run: usize,
    command: &mut String,
) -> Sample {
    let mut sample = Sample {
        run,
        ..Sample::default()
    };
    let sock = socket_path();
    let _ = fs::remove_file(&sock);
    let argv = daemon_args(opts, case, &sock);
    let mut proc = match peer::spawn("pollswitch", bin, &argv, None, &case.cores) {
        Ok(p) => p,
        Err(e) => {
            sample.error = Some(format!("start: {}", chain(&e)));
            return sample;
        }
    };
    *command = proc.command().to_string();
    let measured = (|| -> Result<Window> {
        proc.wait_for(READY, START)?;
        let mut qmp = QmpClient::connect_unix_waiting(&sock, QMP_TIMEOUT)
            .map_err(|e| proc.failed(&format!("QMP at {}: {e}", sock.display())))?;
        window(&mut qmp, opts, case, proc.pid())
            .map_err(|e| proc.failed(&format!("measure: {}", chain(&e))).into())
    })();
    match measured {
        Ok(w) => {
            sample.outcome = Some(w.outcome);
            sample.switch_drops = Some(w.drops);
            sample.detail = Some(w.detail);
            sample.diagnostics = w.diagnostics;
            sample.sut_cpu_pct = Some(w.sut_cpu_pct);
        }
        Err(e) => sample.error = Some(chain(&e)),
    }
    if proc.running() {
        if let Err(e) = peer::stop(&mut proc, Signal::TERM, STOP, false) {
            let text = format!("stop: {}", chain(&e));
            sample.error = Some(match sample.error.take() {
                Some(prev) => format!("{prev}; {text}"),
                None => text,
            });
        }
    } else if sample.error.is_none() {
        sample.error = Some(chain(&proc.failed("exited before it was stopped")));
    }
    sample.diagnostics.extend(
        proc.output()
            .lines()
            .filter(|l| l.contains("pool:") || l.contains("not returned"))
            .map(str::to_string),
    );
    let _ = fs::remove_file(&sock);
    sample
}

fn say(label: &str, s: &Sample) {
    match (&s.outcome, &s.error) {
        (_, Some(e)) => eprintln!(
            "  run {} {label}: FAILED: {}",
            s.run,
            e.lines().next().unwrap_or("")
        ),
        (Some(o), None) => eprintln!(
            "  run {} {label}: {:.3} Mpps through the sinks ({:.3} Mpps made), switch drops \
             {}, system CPU {:.0} %",
            s.run,
            o.rx_pps / 1e6,
            o.tx_pps / 1e6,
            s.switch_drops.unwrap_or(0),
            s.sut_cpu_pct.unwrap_or(f64::NAN)
        ),
        (None, None) => {}
    }
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
        say,
        |case, run| {
            let mut command = String::new();
            let sample = measure_once(opts, &bin, case, run, &mut command);
            case.series.command = command;
            sample
        },
    );
    report.series = cases
        .into_iter()
        .map(|mut c| {
            c.series.summarize();
            c.series
        })
        .collect();

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
    fn stats_deltas() {
        let reply = |rx: u64, tx: u64, drop: u64| {
            json!({
                "pool": {},
                "workers": [{"id": 0, "core": 3, "ports": 2}],
                "ports": [
                    {"name": "s0", "rx-packets": rx, "tx-packets": 0,
                     "drops": {"no-dest": drop, "ring-full": 0}},
                    {"name": "k0", "rx-packets": 0, "tx-packets": tx, "drops": {}},
                ],
            })
        };
        let a = Stats::parse(&reply(100, 90, 7)).unwrap();
        let b = Stats::parse(&reply(1100, 1080, 9)).unwrap();
        assert_eq!(
            b.workers,
            [WorkerInfo {
                core: Some(3),
                ports: 2
            }]
        );
        let d = b.delta(&a, "s0").unwrap();
        assert_eq!(
            (d.rx, d.drops["no-dest"], d.drops["ring-full"]),
            (1000, 2, 0)
        );
        assert_eq!(b.delta(&a, "k0").unwrap().tx, 990);
        assert!(b.delta(&a, "k1").is_err());
        assert!(Stats::parse(&json!({"ports": 3})).is_err());
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
