//! `soak`: a long run at 80 % of measured capacity through a hub of 8 UDP ports, with
//! QMP churn alongside, watching what must stay flat: the daemon's RSS, its open
//! descriptors and the pool's free buffers, sampled 30 times over the run.
//!
//! ```text
//!  1. capacity: 3 s at the generator's max rate; capacity = frames delivered ÷ 7
//!     (each frame in goes to the 7 other ports)
//!  2. soak (--duration seconds, 1800 for 30 min): 0.8 × capacity offered, every port sending and
//!     receiving; meanwhile a QMP client adds and deletes a UDP port on hub 1 (not the
//!     measured hub) every 100 ms, and another reads x-query-stats and /proc 30 times
//! ```
//!
//! Every drop must be counted: frames lost = the switch's drops (x-query-stats, every
//! reason) + the kernel's at the switch's sockets (their `drops` in /proc/net/udp) +
//! the tool's own socket drops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testbed::QmpClient;

use crate::bench::{say, udp_links, BenchOpts, Scenario};
use crate::engine;
use crate::error::{chain, PerfError, Result};
use crate::frame;
use crate::peer::{self, Running, Topology};
use crate::report::{Report, Sample, Series};
use crate::svg::{color, Line, Svg};
use crate::traffic::{self, Rate, Roles};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "soak",
    about: "long run at 80 % of capacity, 8 UDP ports on a hub, QMP churn alongside: RSS, \
            descriptors and pool flat (--duration 1800 for 30 minutes)",
    systems: &["pollswitch"],
    run,
    plot,
};

const PORTS: usize = 8;
const SAMPLES: u32 = 30;
const LOAD: f64 = 0.8;

/// One reading of what must stay flat.
fn reading(qmp: &mut QmpClient, pid: u32, t0: Instant) -> Result<Value> {
    let st = qmp
        .try_execute_ok("x-query-stats", Value::Null)
        .map_err(|e| PerfError::peer("pollswitch", format!("QMP x-query-stats: {e}")))?;
    let drops: u64 = st["ports"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .flat_map(|p| p["drops"].as_object().into_iter().flatten())
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    Ok(json!({
        "t_s": t0.elapsed().as_secs_f64(), "rss_kib": rss_kib, "fds": fds,
        "pool_free": st["pool"]["free"], "pool_buffers": st["pool"]["buffers"],
        "switch_drops": drops,
    }))
}

fn open_ports(running: &dyn Running) -> Result<Vec<Box<dyn engine::Port>>> {
    running
        .endpoints()
        .iter()
        .map(|s| engine::open(s))
        .collect()
}

fn run(opts: &BenchOpts, _systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["ports"] = json!(PORTS);
    params["load"] = json!(LOAD);
    params["samples"] = json!(SAMPLES);
    let mut report = opts.report(&SCENARIO, params);
    let mut series = Series::new(
        "pollswitch",
        "pollswitch soak",
        json!({"ports": PORTS, "size": opts.size}),
    );
    let mut sample = Sample::default();
    match soak(opts, &mut sample, &mut series.command) {
        Ok(()) => {}
        Err(e) => sample.error = Some(chain(&e)),
    }
    say(&series.label, &sample);
    series.samples.push(sample);
    series.summarize();
    report.series.push(series);
    report.notes.push(format!(
        "{PORTS} UDP ports on hub 0, every one sending (round robin) and receiving; offered \
         {:.0} % of the capacity measured at the start; QMP churn on hub 1 every 100 ms; {SAMPLES} \
         readings of RSS, descriptors, pool free buffers and switch drops",
        LOAD * 100.0
    ));
    Ok(report)
}

fn soak(opts: &BenchOpts, sample: &mut Sample, command: &mut String) -> Result<()> {
    let sock: PathBuf =
        std::env::temp_dir().join(format!("pollswitch-perf-soak-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let topology = Topology::UdpHub(udp_links(PORTS)?);
    let mut sut = opts.sut(opts.size.max(1518));
    sut.pollswitch_args.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let system = peer::find("pollswitch")?;
    let mut running = (system.start)(&topology, &sut)?;
    *command = running.command();
    let pid = running
        .pids()
        .first()
        .map(|p| p.1)
        .ok_or_else(|| PerfError::peer("pollswitch", "no process"))?;
    let all: Vec<usize> = (0..PORTS).collect();
    let roles = Roles {
        tx: all.clone(),
        rx: all,
    };
    let result = (|| -> Result<()> {
        // 1. Capacity.
        let mut cfg = opts.traffic(Rate::Max, opts.size, frame::BROADCAST);
        cfg.duration = Duration::from_secs(3);
        let max = traffic::run(open_ports(running.as_ref())?, &roles, &cfg)?;
        let capacity = max.rx_pps / (PORTS - 1) as f64;
        let rate = LOAD * capacity;
        eprintln!(
            "  capacity {:.3} Mpps in ({:.3} Mpps delivered at max rate); soaking at {:.3} Mpps \
             for {:?}",
            capacity / 1e6,
            max.rx_pps / 1e6,
            rate / 1e6,
            opts.duration
        );
        // 2. Soak, with churn and readings alongside. The kernel's socket counters are
        // cumulative: read at the start too.
        sample.diagnostics.extend(
            crate::bench::kernel_drops(&topology)
                .into_iter()
                .map(|l| format!("before the soak: {l}")),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let cycles = Arc::new(AtomicU64::new(0));
        // The first reading is taken before the churn and the soak's traffic start (the
        // capacity run has drained), the last after both ended: both of an idle switch.
        let (first_taken, taken) = std::sync::mpsc::channel::<()>();
        let readings = {
            let (stop, sock) = (stop.clone(), sock.clone());
            let every = opts.duration / SAMPLES;
            thread::spawn(move || -> Result<Vec<Value>> {
                let mut q = QmpClient::connect_unix_negotiated(&sock)
                    .map_err(|e| PerfError::peer("pollswitch", format!("QMP: {e}")))?;
                let t0 = Instant::now();
                let first = reading(&mut q, pid, t0);
                drop(first_taken);
                let mut out = vec![first?];
                let mut next = t0 + every;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        out.push(reading(&mut q, pid, t0)?);
                        next += every;
                    }
                    thread::sleep(Duration::from_millis(100));
                }
                out.push(reading(&mut q, pid, t0)?);
                Ok(out)
            })
        };
        // Dropped (or gone with a failed thread) once the first reading is in.
        let _ = taken.recv();
        let churn = {
            let (stop, cycles, sock) = (stop.clone(), cycles.clone(), sock.clone());
            thread::spawn(move || -> Result<()> {
                let mut q = QmpClient::connect_unix_negotiated(&sock)
                    .map_err(|e| PerfError::peer("pollswitch", format!("QMP: {e}")))?;
                let port = std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.local_addr())
                    .map(|a| a.port())
                    .unwrap_or(40999);
                while !stop.load(Ordering::Relaxed) {
                    for (cmd, args) in [
                        (
                            "netdev_add",
                            json!({"type": "socket", "id": "churn",
                            "udp": "127.0.0.1:9", "localaddr": format!("127.0.0.1:{port}")}),
                        ),
                        (
                            "netdev_add",
                            json!({"type": "hubport", "id": "hchurn",
                            "hubid": 1, "netdev": "churn"}),
                        ),
                        ("netdev_del", json!({"id": "hchurn"})),
                        ("netdev_del", json!({"id": "churn"})),
                    ] {
                        q.try_execute_ok(cmd, args).map_err(|e| {
                            PerfError::peer("pollswitch", format!("churn {cmd}: {e}"))
                        })?;
                    }
                    cycles.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            })
        };
        let mut cfg = opts.traffic(Rate::Pps(rate), opts.size, frame::BROADCAST);
        cfg.watch = running.pids();
        let outcome = traffic::run(open_ports(running.as_ref())?, &roles, &cfg);
        stop.store(true, Ordering::Relaxed);
        let churned = churn
            .join()
            .map_err(|_| PerfError::Usage("the churn thread panicked".into()))?;
        let points = readings
            .join()
            .map_err(|_| PerfError::Usage("the reading thread panicked".into()))??;
        churned?;
        let outcome = outcome?;
        let first = &points[1.min(points.len() - 1)];
        let last = &points[points.len() - 1];
        let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
        let rss: Vec<u64> = points.iter().skip(1).map(|p| n(p, "rss_kib")).collect();
        let fds: Vec<u64> = points.iter().skip(1).map(|p| n(p, "fds")).collect();
        sample.diagnostics.push(format!(
            "RSS {}..{} KiB (first reading after warm-up {}, last {}); descriptors {}..{}; \
             pool free {} → {} of {}; switch drops {} → {}; {} churn cycles",
            rss.iter().min().unwrap_or(&0),
            rss.iter().max().unwrap_or(&0),
            n(first, "rss_kib"),
            n(last, "rss_kib"),
            fds.iter().min().unwrap_or(&0),
            fds.iter().max().unwrap_or(&0),
            n(first, "pool_free"),
            n(last, "pool_free"),
            n(last, "pool_buffers"),
            n(&points[0], "switch_drops"),
            n(last, "switch_drops"),
            cycles.load(Ordering::Relaxed)
        ));
        sample.detail = Some(json!({
            "capacity_pps": capacity, "offered_pps": rate, "readings": points,
            "churn_cycles": cycles.load(Ordering::Relaxed),
            "capacity_run": {"tx_pps": max.tx_pps, "rx_pps": max.rx_pps, "loss_pct": max.loss_pct},
        }));
        sample.sut_cpu_pct = outcome.cpu.watched_pct.first().map(|w| w.1);
        sample.outcome = Some(outcome);
        Ok(())
    })();
    sample.diagnostics.extend(
        crate::bench::kernel_drops(&topology)
            .into_iter()
            .map(|l| format!("after the soak: {l}")),
    );
    match running.stop() {
        Ok(notes) => sample.diagnostics.extend(notes),
        Err(e) => sample.diagnostics.push(format!("stop: {}", chain(&e))),
    }
    let _ = std::fs::remove_file(&sock);
    result
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1200.0,
        470.0,
        "soak: 8 UDP ports at 80 % of capacity with QMP churn",
        &report.machine.line(),
    );
    let readings: Vec<Value> = report
        .series
        .first()
        .and_then(|s| s.samples.first())
        .and_then(|x| x.detail.as_ref())
        .and_then(|d| d["readings"].as_array().cloned())
        .unwrap_or_default();
    let line = |k: &str, scale: f64, c: &str| Line {
        name: k.to_string(),
        points: readings
            .iter()
            .map(|r| {
                (
                    r["t_s"].as_f64().unwrap_or(0.0) / 60.0,
                    r[k].as_f64().unwrap_or(f64::NAN) * scale,
                )
            })
            .collect(),
        color: c.to_string(),
    };
    svg.lines(
        (0.0, 55.0, 400.0, 390.0),
        "RSS",
        ("minutes", "MiB"),
        &[line("rss_kib", 1.0 / 1024.0, color("pollswitch"))],
        false,
    );
    svg.lines(
        (400.0, 55.0, 400.0, 390.0),
        "open descriptors",
        ("minutes", "fds"),
        &[line("fds", 1.0, color("pollswitch"))],
        false,
    );
    svg.lines(
        (800.0, 55.0, 400.0, 390.0),
        "free pool buffers",
        ("minutes", "buffers"),
        &[line("pool_free", 1.0, color("pollswitch"))],
        false,
    );
    svg.footer(&report.command);
    svg.finish()
}
