//! Results of a scenario: every run of every system, medians across runs, ratios,
//! targets, and the machine they came from — as JSON (the record) and as a table (for
//! people). Only measured values appear; a run that failed is kept with its error and
//! left out of the medians.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{PerfError, Result};
use crate::traffic::Outcome;

/// [`Outcome::rate`] of a TCP run, which measures Gbit/s only.
pub const TCP: &str = "TCP";

/// One measurement of one system.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Which round of the alternation (0-based).
    pub run: usize,
    /// What the traffic run measured (absent for idle samples and failures).
    pub outcome: Option<Outcome>,
    /// CPU the system used with no traffic, percent of one core (idle scenario).
    pub idle_cpu_pct: Option<f64>,
    /// The system's own CPU use while traffic ran, percent of one core (summed over its
    /// processes; absent for the kernel bridge, which has none).
    pub sut_cpu_pct: Option<f64>,
    /// Where frames were dropped, as the kernel counts it, and what the system printed.
    pub diagnostics: Vec<String>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
    /// Frames the switch itself counted as dropped in the window, every reason and port
    /// together (scenarios that read the daemon's counters: workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_drops: Option<u64>,
    /// Scenario-specific detail of the run (workers: each worker's share, drops by
    /// reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    /// The highest rates with loss at most each ratio searched (`--ndr`: NDR, PDR);
    /// empty when no search ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throughput: Vec<Throughput>,
}

/// The answer of one throughput search (RFC 2544 "throughput", FD.io CSIT's NDR and
/// PDR) for one loss ratio: between the highest offered rate that passed and the lowest
/// that failed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    /// Most frames lost, as a fraction of those sent, for a trial to pass (0: NDR).
    pub loss_ratio: f64,
    /// Highest offered rate that passed, frames/s; 0 when no trial passed.
    pub pps: f64,
    /// Lowest offered rate that failed, frames/s; absent when the upper bound passed.
    pub failed_pps: Option<f64>,
    /// Trials this ratio's search ran (trials an earlier ratio ran are reused).
    pub trials: usize,
}

impl Throughput {
    /// `NDR` for a loss ratio of 0, `PDR 0.5 %` and so on for the others.
    pub fn name(loss_ratio: f64) -> String {
        if loss_ratio == 0.0 {
            "NDR".into()
        } else {
            let pct = format!("{:.4}", loss_ratio * 100.0);
            format!("PDR {} %", pct.trim_end_matches('0').trim_end_matches('.'))
        }
    }
}

/// The medians of one loss ratio's searches over the runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ThroughputStat {
    pub loss_ratio: f64,
    /// `NDR`, `PDR 0.5 %`, ...
    pub name: String,
    /// Highest passing offered rate, Mpps.
    pub mpps: Stat,
}

/// Median, minimum and maximum over the successful runs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// Of `values` (NaNs ignored); `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Medians of one series.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub runs: usize,
    pub runs_ok: usize,
    pub tx_mpps: Option<Stat>,
    pub rx_mpps: Option<Stat>,
    pub rx_gbps: Option<Stat>,
    pub loss_pct: Option<Stat>,
    pub p50_us: Option<Stat>,
    pub p90_us: Option<Stat>,
    pub p99_us: Option<Stat>,
    pub p999_us: Option<Stat>,
    pub max_us: Option<Stat>,
    pub sut_cpu_pct: Option<Stat>,
    /// CPU of all cores not used by the tool or the system's processes (other work on
    /// the machine, and softirq work such as the Linux bridge's), percent of one core.
    pub other_cpu_pct: Option<Stat>,
    pub idle_cpu_pct: Option<Stat>,
    /// Frames dropped at the tool's own receiving sockets; absent when none were.
    pub tool_rx_drops: Option<Stat>,
    /// Frames that arrived late; absent when none did.
    pub reordered: Option<Stat>,
    /// Duplicated, echoed to their sender, or of the wrong length; absent when none were.
    pub bad_frames: Option<Stat>,
    /// Frames the switch counted as dropped (see [`Sample::switch_drops`]); absent
    /// where the scenario does not read the switch's counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch_drops: Option<Stat>,
    /// NDR / PDR over the runs, one per loss ratio searched; empty without `--ndr`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub throughput: Vec<ThroughputStat>,
}

/// All runs of one system in one configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Series {
    /// The system (`pollswitch`, `qemu`, ...).
    pub system: String,
    /// How the row is labelled (`pollswitch`, `pollswitch poll-us=0`, ...).
    pub label: String,
    /// The configuration (ports, frame size, rate, ...).
    pub params: Value,
    /// How the system was started (last run).
    pub command: String,
    pub samples: Vec<Sample>,
    pub summary: Summary,
}

impl Series {
    /// A series with no samples yet.
    pub fn new(system: &str, label: &str, params: Value) -> Series {
        Series {
            system: system.into(),
            label: label.into(),
            params,
            ..Series::default()
        }
    }

    /// Works out the summary from the samples.
    pub fn summarize(&mut self) {
        let ok: Vec<&Sample> = self.samples.iter().filter(|s| s.error.is_none()).collect();
        let out = |f: &dyn Fn(&Outcome) -> f64| {
            Stat::of(ok.iter().filter_map(|s| s.outcome.as_ref()).map(f))
        };
        // Frame counts only where frames were counted: a TCP run (iperf3) has a rate
        // in Gbit/s and nothing else.
        let frames = |f: &dyn Fn(&Outcome) -> f64| {
            Stat::of(
                ok.iter()
                    .filter_map(|s| s.outcome.as_ref())
                    .filter(|o| o.rate != TCP)
                    .map(f),
            )
        };
        self.summary = Summary {
            runs: self.samples.len(),
            runs_ok: ok.len(),
            tx_mpps: frames(&|o| o.tx_pps / 1e6),
            rx_mpps: frames(&|o| o.rx_pps / 1e6),
            rx_gbps: out(&|o| o.rx_gbps),
            loss_pct: frames(&|o| o.loss_pct),
            p50_us: out(&|o| lat(o, o.latency_us.p50)),
            p90_us: out(&|o| lat(o, o.latency_us.p90)),
            p99_us: out(&|o| lat(o, o.latency_us.p99)),
            p999_us: out(&|o| lat(o, o.latency_us.p999)),
            max_us: out(&|o| lat(o, o.latency_us.max)),
            sut_cpu_pct: Stat::of(ok.iter().filter_map(|s| s.sut_cpu_pct)),
            other_cpu_pct: frames(&|o| o.cpu.other_pct),
            idle_cpu_pct: Stat::of(ok.iter().filter_map(|s| s.idle_cpu_pct)),
            tool_rx_drops: frames(&|o| o.tool_rx_drops as f64).filter(|s| s.max > 0.0),
            reordered: frames(&|o| o.reordered as f64).filter(|s| s.max > 0.0),
            bad_frames: frames(&|o| (o.duplicates + o.echoed + o.bad_length) as f64)
                .filter(|s| s.max > 0.0),
            switch_drops: Stat::of(ok.iter().filter_map(|s| s.switch_drops.map(|d| d as f64))),
            throughput: throughput_stats(&ok),
        };
    }

    /// Median NDR/PDR (Mpps) for `loss_ratio`, NaN when not searched.
    pub fn throughput_mpps(&self, loss_ratio: f64) -> f64 {
        self.summary
            .throughput
            .iter()
            .find(|t| t.loss_ratio == loss_ratio)
            .map_or(f64::NAN, |t| t.mpps.median)
    }

    /// Median of a summary field, NaN when absent.
    pub fn median(&self, f: impl Fn(&Summary) -> Option<Stat>) -> f64 {
        f(&self.summary).map_or(f64::NAN, |s| s.median)
    }
}

/// One [`ThroughputStat`] per loss ratio any of `ok` searched, in the order searched.
fn throughput_stats(ok: &[&Sample]) -> Vec<ThroughputStat> {
    let mut ratios: Vec<f64> = Vec::new();
    for t in ok.iter().flat_map(|s| &s.throughput) {
        if !ratios.contains(&t.loss_ratio) {
            ratios.push(t.loss_ratio);
        }
    }
    ratios
        .into_iter()
        .filter_map(|r| {
            let mpps = Stat::of(
                ok.iter()
                    .flat_map(|s| &s.throughput)
                    .filter(|t| t.loss_ratio == r)
                    .map(|t| t.pps / 1e6),
            )?;
            Some(ThroughputStat {
                loss_ratio: r,
                name: Throughput::name(r),
                mpps,
            })
        })
        .collect()
}

/// A latency only when something was received to measure it.
fn lat(o: &Outcome, v: f64) -> f64 {
    if o.latency_us.count == 0 {
        f64::NAN
    } else {
        v
    }
}

/// A ratio between two systems' medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    /// What is divided by what, in words.
    pub what: String,
    /// NaN (written as null) when a median is missing.
    #[serde(deserialize_with = "null_is_nan")]
    pub value: f64,
}

/// A target from the issue, checked against the medians.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// The goal in words.
    pub goal: String,
    /// The measured value the goal is about (NaN, written as null, when missing).
    #[serde(deserialize_with = "null_is_nan")]
    pub value: f64,
    /// Whether it was met (false when a value is missing).
    pub met: bool,
    /// Why it could not be measured here (then `met` is false and `value` NaN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_measured: Option<String>,
}

/// A number that JSON may hold as null: serde_json writes NaN so, and the report must
/// read back what it wrote.
fn null_is_nan<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The machine a report came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub os: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus_online: usize,
    pub virtualized: bool,
    pub memory_gib: f64,
    /// `/proc/loadavg` when the scenario started: other work on the machine.
    pub load_average: String,
    /// How busy each core was (percent) over half a second just before the scenario
    /// started, while the tool itself was idle: other work on the machine.
    pub busy_before_pct: Vec<f64>,
    pub versions: Vec<(String, String)>,
}

impl Machine {
    /// Reads what `/proc` and the peers' `--version` say.
    pub fn probe() -> Machine {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let mut versions = Vec::new();
        for (name, args) in [
            ("qemu-system-x86_64", &["--version"][..]),
            // testpmd has no version option; the package that ships it says.
            (
                "dpkg-query",
                &["-W", "dpdk-dev", "vde2", "qemu-system-x86"][..],
            ),
            ("vde_switch", &["-v"][..]),
        ] {
            if let Ok(out) = std::process::Command::new(name)
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
            {
                let text = String::from_utf8_lossy(&out.stdout).to_string()
                    + &String::from_utf8_lossy(&out.stderr);
                let line = if name == "dpkg-query" {
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                } else {
                    text.lines()
                        .find(|l| l.contains("version") || l.contains("VDE"))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                };
                versions.push((name.to_string(), line));
            }
        }
        Machine {
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
            os,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            cpu_model: field("model name"),
            cpus_online: testbed::cpu::online(),
            virtualized: field("flags").split_whitespace().any(|f| f == "hypervisor"),
            memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            load_average: read("/proc/loadavg").trim().to_string(),
            busy_before_pct: {
                let a = crate::sys::core_times();
                std::thread::sleep(std::time::Duration::from_millis(500));
                crate::sys::core_busy_pct(&a, &crate::sys::core_times())
                    .iter()
                    .map(|v| (v * 10.0).round() / 10.0)
                    .collect()
            },
            versions,
        }
    }

    /// Adds the pollswitch binary measured: its path, size and modification time, which
    /// name the build.
    pub fn note_pollswitch(&mut self, bin: &Path) {
        let desc = match fs::metadata(bin) {
            Ok(m) => {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                format!(
                    "{} ({} bytes, modified {mtime} s after the epoch)",
                    bin.display(),
                    m.len()
                )
            }
            Err(e) => format!("{}: {e}", bin.display()),
        };
        self.versions.push(("pollswitch".into(), desc));
    }

    /// One line for tables and plots.
    pub fn line(&self) -> String {
        format!(
            "{} · {} · kernel {} · {} CPUs ({}){} · {} GiB",
            self.hostname,
            self.os,
            self.kernel,
            self.cpus_online,
            self.cpu_model,
            if self.virtualized { ", VM" } else { "" },
            self.memory_gib
        )
    }
}

/// How the tool used the machine's cores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cores {
    pub generator: Option<usize>,
    /// `None`: the generator's loop also receives.
    pub sink: Option<usize>,
    pub system_under_test: Vec<usize>,
    pub workers: usize,
    /// Cores used in all.
    pub used: usize,
    pub online: usize,
    pub note: String,
}

/// Everything a scenario produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub about: String,
    pub tool: String,
    /// The command line that reproduces it.
    pub command: String,
    pub started_unix_s: u64,
    pub machine: Machine,
    pub cores: Cores,
    pub params: Value,
    pub series: Vec<Series>,
    pub ratios: Vec<Ratio>,
    pub targets: Vec<Target>,
    pub notes: Vec<String>,
}

impl Report {
    /// Whether every run of every series succeeded.
    pub fn all_ok(&self) -> bool {
        self.series
            .iter()
            .all(|s| s.samples.iter().all(|x| x.error.is_none()))
    }

    /// The series labelled `label`.
    pub fn series(&self, label: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.label == label)
    }

    /// The JSON record.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// The table for people: one row per series, only columns that have values.
    pub fn table(&self) -> String {
        type Col = (&'static str, fn(&Summary) -> Option<Stat>, bool);
        let cols: [Col; 15] = [
            ("tx Mpps", |s| s.tx_mpps, false),
            ("rx Mpps", |s| s.rx_mpps, true),
            ("rx Gbit/s", |s| s.rx_gbps, false),
            ("loss %", |s| s.loss_pct, false),
            ("p50 µs", |s| s.p50_us, false),
            ("p90 µs", |s| s.p90_us, false),
            ("p99 µs", |s| s.p99_us, false),
            ("p99.9 µs", |s| s.p999_us, false),
            ("SUT CPU %", |s| s.sut_cpu_pct, false),
            ("other CPU %", |s| s.other_cpu_pct, false),
            ("idle CPU %", |s| s.idle_cpu_pct, true),
            ("sink drops", |s| s.tool_rx_drops, false),
            ("reordered", |s| s.reordered, false),
            ("bad frames", |s| s.bad_frames, false),
            ("switch drops", |s| s.switch_drops, false),
        ];
        let used: Vec<&Col> = cols
            .iter()
            .filter(|(_, f, _)| self.series.iter().any(|s| f(&s.summary).is_some()))
            .collect();
        // NDR / PDR columns, one per loss ratio any series searched.
        let mut searched: Vec<(f64, String)> = Vec::new();
        for t in self.series.iter().flat_map(|s| &s.summary.throughput) {
            if !searched.iter().any(|(r, _)| *r == t.loss_ratio) {
                searched.push((t.loss_ratio, t.name.clone()));
            }
        }
        let cell = |st: Option<Stat>, range: bool, runs_ok: usize| match st {
            None => "–".to_string(),
            Some(st) if range && runs_ok > 1 => format!(
                "{} ({}–{})",
                crate::svg::num(st.median),
                crate::svg::num(st.min),
                crate::svg::num(st.max)
            ),
            Some(st) => crate::svg::num(st.median),
        };
        let mut head = vec!["system".to_string(), "runs ok".to_string()];
        head.extend(used.iter().map(|c| c.0.to_string()));
        head.extend(searched.iter().map(|(_, n)| format!("{n} Mpps")));
        let mut rows = vec![head];
        for s in &self.series {
            let mut r = vec![
                s.label.clone(),
                format!("{}/{}", s.summary.runs_ok, s.summary.runs),
            ];
            for (_, f, range) in &used {
                r.push(cell(f(&s.summary), *range, s.summary.runs_ok));
            }
            for (ratio, _) in &searched {
                let st = s
                    .summary
                    .throughput
                    .iter()
                    .find(|t| t.loss_ratio == *ratio)
                    .map(|t| t.mpps);
                r.push(cell(st, true, s.summary.runs_ok));
            }
            rows.push(r);
        }
        let mut out = markdown_table(&rows);
        if !self.ratios.is_empty() {
            out.push('\n');
            for r in &self.ratios {
                out.push_str(&format!(
                    "- {}: **{}×**\n",
                    r.what,
                    crate::svg::num(r.value)
                ));
            }
        }
        if !self.targets.is_empty() {
            out.push('\n');
            for t in &self.targets {
                out.push_str(&match &t.not_measured {
                    Some(why) => format!("- target {}: not measured — {why}\n", t.goal),
                    None => format!(
                        "- target {}: measured {} — {}\n",
                        t.goal,
                        crate::svg::num(t.value),
                        if t.met { "met" } else { "**missed**" }
                    ),
                });
            }
        }
        let failed: Vec<String> = self
            .series
            .iter()
            .flat_map(|s| {
                s.samples
                    .iter()
                    .filter_map(move |x| x.error.as_ref().map(|e| (s.label.clone(), x.run, e)))
            })
            .map(|(l, run, e)| {
                format!("- {l} run {run} failed: {}", e.lines().next().unwrap_or(""))
            })
            .collect();
        if !failed.is_empty() {
            out.push('\n');
            out.push_str(&failed.join("\n"));
            out.push('\n');
        }
        out
    }

    /// Reads a report back from its JSON.
    pub fn read(path: &Path) -> Result<Report> {
        let text = fs::read_to_string(path).map_err(|source| PerfError::File {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            PerfError::Usage(format!(
                "{}: not a pollswitch-perf report: {e}",
                path.display()
            ))
        })
    }

    /// Writes `DIR/NAME.json` and `DIR/NAME.svg`; returns their paths.
    pub fn write(&self, dir: &Path, svg: &str) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(dir).map_err(|source| PerfError::File {
            path: dir.to_path_buf(),
            source,
        })?;
        let json = dir.join(format!("{}.json", self.scenario));
        let plot = dir.join(format!("{}.svg", self.scenario));
        for (path, text) in [(&json, self.to_json()), (&plot, svg.to_string())] {
            fs::write(path, text).map_err(|source| PerfError::File {
                path: path.clone(),
                source,
            })?;
        }
        Ok((json, plot))
    }
}

/// Rows (the first is the header) as a Markdown table with aligned columns.
pub fn markdown_table(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
            .max()
            .unwrap_or(0)
            .max(3)
    };
    let widths: Vec<usize> = (0..n).map(width).collect();
    let line = |r: &Vec<String>| {
        let cells: Vec<String> = (0..n)
            .map(|c| {
                let v = r.get(c).cloned().unwrap_or_default();
                let pad = widths[c] - v.chars().count();
                if c == 0 {
                    format!("{v}{}", " ".repeat(pad))
                } else {
                    format!("{}{v}", " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |\n", cells.join(" | "))
    };
    let mut out = String::new();
    if let Some(head) = rows.first() {
        out.push_str(&line(head));
        let sep: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(c, w)| {
                if c == 0 {
                    "-".repeat(*w)
                } else {
                    format!("{}:", "-".repeat(w - 1))
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", sep.join(" | ")));
        for r in &rows[1..] {
            out.push_str(&line(r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_take_medians_of_finite_values() {
        assert_eq!(
            Stat::of([3.0, 1.0, 2.0]).unwrap(),
            Stat {
                median: 2.0,
                min: 1.0,
                max: 3.0
            }
        );
        assert_eq!(
            Stat::of([4.0, 1.0, f64::NAN, 2.0, 3.0]).unwrap().median,
            2.5
        );
        assert!(Stat::of([f64::NAN]).is_none());
        assert!(Stat::of(Vec::<f64>::new()).is_none());
    }

    #[test]
    fn failed_runs_stay_out_of_the_medians() {
        let mut s = Series::new("qemu", "qemu", Value::Null);
        for (run, pps) in [(0, 1e6), (1, 3e6)] {
            s.samples.push(Sample {
                run,
                outcome: Some(Outcome {
                    rx_pps: pps,
                    ..Outcome::default()
                }),
                ..Sample::default()
            });
        }
        s.samples.push(Sample {
            run: 2,
            outcome: Some(Outcome {
                rx_pps: 100e6,
                ..Outcome::default()
            }),
            error: Some("crashed".into()),
            ..Sample::default()
        });
        s.summarize();
        assert_eq!((s.summary.runs, s.summary.runs_ok), (3, 2));
        assert_eq!(s.summary.rx_mpps.unwrap().median, 2.0);
        assert!(s.summary.p50_us.is_none(), "nothing received: no latency");
        assert!(s.summary.idle_cpu_pct.is_none());
    }

    #[test]
    fn tables_align() {
        let t = markdown_table(&[
            vec!["system".into(), "Mpps".into()],
            vec!["pollswitch".into(), "1.5".into()],
        ]);
        assert_eq!(
            t,
            "| system     | Mpps |\n| ---------- | ---: |\n| pollswitch |  1.5 |\n"
        );
    }
}
