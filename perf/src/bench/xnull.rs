//! Runs of the daemon whose ports are its own in-memory `x-null` netdevs (the switch core
//! alone: no kernel, no socket, no peer), measured from its counters over QMP: shared by
//! the `workers` and `learning` scenarios.
//!
//! ```text
//!  spawn (confined to the cores) ─► READY ─► QMP ─► x-query-stats ─► premise check
//!   ─► warm-up ─► x-query-stats ─► window ─► x-query-stats ─► SIGTERM
//!  Mpps = Σ over sinks of Δ tx-packets ÷ elapsed (between the two replies' midpoints)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use testbed::process::Signal;
use testbed::QmpClient;

use crate::bench::BenchOpts;
use crate::error::{chain, PerfError, Result};
use crate::frame;
use crate::peer::{self, pollswitch::READY};
use crate::report::Sample;
use crate::sys;
use crate::traffic::{CpuUse, Outcome};

/// How long the daemon may take to start.
const START: Duration = Duration::from_secs(10);
/// How long it may take to exit after SIGTERM.
const STOP: Duration = Duration::from_secs(5);
/// How long a QMP connect or reply may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// One port's counters in an `x-query-stats` reply.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PortCount {
    pub rx: u64,
    pub tx: u64,
    pub drops: BTreeMap<String, u64>,
}

/// One worker in an `x-query-stats` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub core: Option<u64>,
    pub ports: u64,
}

/// What `x-query-stats` said.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub ports: BTreeMap<String, PortCount>,
    pub workers: Vec<WorkerInfo>,
}

impl Stats {
    pub fn parse(v: &Value) -> Result<Stats> {
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
    pub fn delta(&self, before: &Stats, port: &str) -> Result<PortCount> {
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
pub struct Reading {
    pub stats: Stats,
    /// Midpoint of the query, monotonic nanoseconds.
    pub at_ns: u64,
    /// How long the query took.
    pub took_ns: u64,
}

pub fn read_stats(qmp: &mut QmpClient) -> Result<Reading> {
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

/// A fresh socket path for one daemon.
fn socket_path() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "pollswitch-perf-xnull-{}-{}.sock",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// What one window measured.
pub struct Window {
    /// Frames and rates: sent = what the sources made, received = what the sinks took.
    pub outcome: Outcome,
    /// Every port's drops in the window, by reason (none left out).
    pub by_reason: BTreeMap<String, u64>,
    /// What each sink took in the window.
    pub per_sink: Vec<(String, u64)>,
    /// The two readings around the window.
    pub before: Reading,
    /// The second.
    pub after: Reading,
    /// The daemon's CPU use, percent of one core.
    pub sut_cpu_pct: f64,
}

impl Window {
    /// Seconds between the readings.
    pub fn elapsed(&self) -> f64 {
        self.after.at_ns.saturating_sub(self.before.at_ns).max(1) as f64 / 1e9
    }

    /// Drops in the window, every reason together.
    pub fn drops(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// The lines every run reports: drops and how long the queries took.
    pub fn diagnostics(&self) -> Vec<String> {
        vec![
            if self.by_reason.is_empty() {
                "switch drops in the window: none".to_string()
            } else {
                format!(
                    "switch drops in the window: {}",
                    self.by_reason
                        .iter()
                        .map(|(k, n)| format!("{k} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
            format!(
                "x-query-stats took {:.2} ms and {:.2} ms (the window runs between their \
                 midpoints)",
                self.before.took_ns as f64 / 1e6,
                self.after.took_ns as f64 / 1e6
            ),
        ]
    }
}

/// After `premise` accepted the first reading, a warm-up, then the window between two
/// reads of the counters: what `sources` made and `sinks` took.
pub fn window(
    qmp: &mut QmpClient,
    opts: &BenchOpts,
    pid: u32,
    sources: &[String],
    sinks: &[String],
    premise: &mut dyn FnMut(&mut QmpClient, &Stats) -> Result<()>,
) -> Result<Window> {
    let first = read_stats(qmp)?;
    premise(qmp, &first.stats)?;
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
    let mut made = 0u64;
    for s in sources {
        made += b.stats.delta(&a.stats, s)?.rx;
    }
    let mut per_sink = Vec::new();
    for k in sinks {
        per_sink.push((k.clone(), b.stats.delta(&a.stats, k)?.tx));
    }
    let delivered: u64 = per_sink.iter().map(|(_, n)| n).sum();
    let mut by_reason: BTreeMap<String, u64> = BTreeMap::new();
    for name in b.stats.ports.keys() {
        for (k, n) in b.stats.delta(&a.stats, name)?.drops {
            *by_reason.entry(k).or_default() += n;
        }
    }
    by_reason.retain(|_, n| *n > 0);
    if delivered == 0 {
        return Err(PerfError::peer(
            "pollswitch",
            format!("the sinks took no frames in the window (sources made {made})"),
        ));
    }
    let size = opts.size;
    let rx_pps = delivered as f64 / elapsed;
    let lost = made.saturating_sub(delivered);
    let outcome = Outcome {
        size,
        rate: opts.rate.label(),
        duration_s: elapsed,
        tx_ports: sources.to_vec(),
        rx_ports: sinks.to_vec(),
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
    Ok(Window {
        outcome,
        by_reason,
        per_sink,
        before: a,
        after: b,
        sut_cpu_pct,
    })
}

/// Starts the daemon (`bin` with `args`, then `-qmp` on a fresh socket) confined to
/// `cores`, has `measure` fill one sample from it, and stops it.
pub fn measure_once(
    bin: &Path,
    args: &[String],
    cores: &[usize],
    run: usize,
    command: &mut String,
    measure: &mut dyn FnMut(&mut QmpClient, u32, &mut Sample) -> Result<()>,
) -> Sample {
    let mut sample = Sample {
        run,
        ..Sample::default()
    };
    let sock = socket_path();
    let _ = fs::remove_file(&sock);
    let mut argv = args.to_vec();
    argv.extend([
        "-qmp".to_string(),
        format!("unix:{},server=on,wait=off", sock.display()),
    ]);
    let mut proc = match peer::spawn("pollswitch", bin, &argv, None, cores) {
        Ok(p) => p,
        Err(e) => {
            sample.error = Some(format!("start: {}", chain(&e)));
            return sample;
        }
    };
    *command = proc.command().to_string();
    let measured = (|| -> Result<()> {
        proc.wait_for(READY, START)?;
        let mut qmp = QmpClient::connect_unix_waiting(&sock, QMP_TIMEOUT)
            .map_err(|e| proc.failed(&format!("QMP at {}: {e}", sock.display())))?;
        measure(&mut qmp, proc.pid(), &mut sample)
            .map_err(|e| proc.failed(&format!("measure: {}", chain(&e))).into())
    })();
    if let Err(e) = measured {
        sample.outcome = None;
        sample.error = Some(chain(&e));
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

/// Prints one run's line.
pub fn say(label: &str, s: &Sample) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
