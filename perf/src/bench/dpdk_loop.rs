//! A DPDK application's loop through a middle box, the harness the `memif` and
//! `vhost` scenarios share: pollswitch (two ports of the protocol on one hub, one
//! worker) against dpdk-testpmd doing io forwarding between two ports of the same
//! protocol (DPDK itself as the middle box), same run, alternating.
//!
//! ```text
//!  end testpmd (io, --tx-first, ports A B) ══ A ══ middle box ══ B ══ end testpmd
//!   middle: pollswitch  port na(A) ─ hub 0 ─ port nb(B)
//!       or  testpmd     vdev 0 (A) ⇄ io ⇄ vdev 1 (B)
//!  Mpps = Σ over the end's two ports of testpmd's Rx-pps, median of the window's seconds
//! ```
//!
//! The end testpmd runs on `--gen-core`, the middle box on the first of `--sut-cores`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::cleanup::{self, Item};
use testbed::process::{Process, Signal};
use testbed::{unique, TempDir};

use crate::bench::{rounds, say, target, BenchOpts, Scenario};
use crate::error::{PerfError, Result};
use crate::peer::{self, pollswitch::READY};
use crate::report::{Report, Sample, Series};
use crate::traffic::Outcome;

const START: Duration = Duration::from_secs(20);
const STOP: Duration = Duration::from_secs(10);
/// testpmd prints this once forwarding runs.
const FORWARDING: &str = "packet forwarding - ports=";

/// One protocol's loop: how each side's ports are made.
pub struct Loop {
    /// The scenario (its report's header).
    pub scenario: &'static Scenario,
    /// The protocol's name (errors, log lines kept as diagnostics).
    pub name: &'static str,
    /// Sizes measured when `--sizes` is left at the default.
    pub sizes: &'static [usize],
    /// pollswitch's options for port `id` on socket `sock` (`-netdev ...`, ...).
    pub pollswitch_port: fn(id: &str, sock: &Path) -> Vec<String>,
    /// The middle testpmd's vdev `i` on `sock` for frames of `size` bytes.
    pub middle_vdev: fn(i: usize, sock: &Path, size: usize) -> String,
    /// The end testpmd's vdev `i` on `sock`.
    pub end_vdev: fn(i: usize, sock: &Path, size: usize) -> String,
    /// Application options both testpmds need for `size`.
    pub app_extra: fn(size: usize) -> Vec<String>,
    /// A note for the report.
    pub note: &'static str,
}

/// testpmd's EAL arguments on one core, with its memif ports.
fn eal(core: usize, prefix: &str, vdevs: &[String]) -> Vec<String> {
    let mut a = vec![
        "--lcores".to_string(),
        format!("0@{core},1@{core}"),
        "--main-lcore".into(),
        "0".into(),
        "--no-huge".into(),
        "-m".into(),
        "1024".into(),
        "--no-pci".into(),
        format!("--file-prefix={prefix}"),
    ];
    a.extend(vdevs.iter().map(|v| format!("--vdev={v}")));
    a
}

/// The application's arguments: io forwarding, frames of `size` bytes, big enough
/// mbufs for them.
pub(crate) fn app(size: usize, tx_first: bool, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--",
        "--forward-mode=io",
        "--total-num-mbufs=32768",
        "--stats-period=1",
        "--auto-start",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(format!("--mbuf-size={}", (size + 256).max(2176)));
    a.extend(extra.iter().cloned());
    if tx_first {
        a.push("--tx-first".into());
        a.push(format!("--txpkts={size}"));
    }
    a
}

/// The per-second `Rx-pps` of each port, summed per period.
pub fn rx_pps_per_period(output: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut current: Option<(usize, f64)> = None;
    for line in output.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("######################## NIC statistics for port ") {
            let port: usize = rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if port == 0 {
                if let Some((_, sum)) = current.take() {
                    out.push(sum);
                }
                current = Some((0, 0.0));
            }
        } else if let Some(rest) = l.strip_prefix("Rx-pps:") {
            let pps: f64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            if let Some((_, sum)) = &mut current {
                *sum += pps;
            }
        }
    }
    out.extend(current.map(|(_, s)| s));
    out
}

struct Dpdk {
    proc: Process,
    runtime: std::path::PathBuf,
}

impl Drop for Dpdk {
    fn drop(&mut self) {
        let _ = self.proc.stop(Signal::INT, STOP);
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

fn testpmd(
    bin: &Path,
    core: usize,
    vdevs: &[String],
    size: usize,
    tx_first: bool,
    extra: &[String],
) -> Result<Dpdk> {
    let prefix = unique("pmdm");
    let runtime = Path::new("/var/run/dpdk").join(&prefix);
    let _tracked = cleanup::track(Item::Dir(runtime.clone()));
    let mut args = eal(core, &prefix, vdevs);
    args.extend(app(size, tx_first, extra));
    let mut proc = peer::spawn("testpmd", bin, &args, None, &[])?;
    proc.wait_for(FORWARDING, START)?;
    Ok(Dpdk { proc, runtime })
}

fn measure_once(
    lp: &Loop,
    system: &str,
    size: usize,
    opts: &BenchOpts,
    run: usize,
    command: &mut String,
) -> Sample {
    let mut s = Sample {
        run,
        ..Sample::default()
    };
    match try_measure(lp, system, size, opts, command) {
        Ok((outcome, diag)) => {
            s.outcome = Some(outcome);
            s.diagnostics = diag;
        }
        Err(e) => s.error = Some(crate::error::chain(&e)),
    }
    s
}

fn try_measure(
    lp: &Loop,
    system: &str,
    size: usize,
    opts: &BenchOpts,
    command: &mut String,
) -> Result<(Outcome, Vec<String>)> {
    let pmd = peer::require("dpdk-testpmd")?;
    let dir = TempDir::create("psloop")?;
    let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
    let sut_core = opts.sut_cores.first().copied().unwrap_or(1);
    // The middle box first: it listens on both sockets.
    let mut middle_ps = None;
    let mut middle_pmd = None;
    match system {
        "pollswitch" => {
            let bin = peer::require(&opts.pollswitch.to_string_lossy())?;
            let mut argv = vec![
                "-cores".to_string(),
                sut_core.to_string(),
                "-poll-us".into(),
                opts.poll_us.to_string(),
                "-max-frame".into(),
                size.max(1518).to_string(),
            ];
            for (n, sock) in [("na", &a), ("nb", &b)] {
                argv.extend((lp.pollswitch_port)(n, sock));
                argv.push("-netdev".into());
                argv.push(format!("hubport,id=h{n},hubid=0,netdev={n}"));
            }
            argv.extend(opts.pollswitch_args.iter().cloned());
            let mut p = peer::spawn("pollswitch", &bin, &argv, None, &[])?;
            p.wait_for(READY, START)?;
            *command = p.command().to_string();
            middle_ps = Some(p);
        }
        "testpmd" => {
            let vdevs = [(lp.middle_vdev)(0, &a, size), (lp.middle_vdev)(1, &b, size)];
            let d = testpmd(&pmd, sut_core, &vdevs, size, false, &(lp.app_extra)(size))?;
            *command = d.proc.command().to_string();
            middle_pmd = Some(d);
        }
        other => {
            return Err(PerfError::Usage(format!(
                "{}: no system {other:?} (pollswitch or testpmd)",
                lp.name
            )))
        }
    }
    let vdevs = [(lp.end_vdev)(0, &a, size), (lp.end_vdev)(1, &b, size)];
    let mut end = testpmd(
        &pmd,
        opts.gen_core,
        &vdevs,
        size,
        true,
        &(lp.app_extra)(size),
    )?;
    let started = Instant::now();
    let window = opts.warmup + opts.duration;
    while started.elapsed() < window + Duration::from_millis(1200) {
        if let Some(st) = end.proc.try_wait() {
            return Err(PerfError::Usage(format!(
                "the end testpmd exited early ({st})"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = end.proc.stop(Signal::INT, STOP);
    let out = end.proc.output();
    let periods = rx_pps_per_period(&out);
    // The first periods are the warm-up (and the start); at least one stays.
    let skip = (opts.warmup.as_secs_f64().ceil() as usize + 1).min(periods.len().saturating_sub(1));
    let window: Vec<f64> = periods.iter().skip(skip).copied().collect();
    let Some(stat) = crate::report::Stat::of(window.iter().copied()) else {
        return Err(PerfError::Usage(format!(
            "{}: no statistics from the end testpmd ({} periods)",
            lp.name,
            periods.len()
        )));
    };
    let mut diag = vec![format!(
        "end testpmd Rx-pps per second: {}",
        window
            .iter()
            .map(|v| format!("{:.2}M", v / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    )];
    if let Some(p) = &mut middle_ps {
        let _ = peer::stop(p, Signal::TERM, STOP, false);
        diag.extend(
            p.stderr()
                .lines()
                .filter(|l| l.contains(lp.name))
                .take(4)
                .map(str::to_string),
        );
    }
    drop(middle_pmd);
    let pps = stat.median;
    Ok((
        Outcome {
            size,
            rate: "loop".into(),
            duration_s: window.len() as f64,
            tx_pps: pps,
            rx_pps: pps,
            rx_gbps: pps * size as f64 * 8.0 / 1e9,
            ..Outcome::default()
        },
        diag,
    ))
}

/// Runs loop `lp` for every size and system, alternating, and reports the ratios.
pub fn run(lp: &Loop, opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let sizes: Vec<usize> = if opts.sizes == crate::bench::BenchOpts::defaults().sizes {
        lp.sizes.to_vec()
    } else {
        opts.sizes.clone()
    };
    let names: Vec<&str> = systems.iter().map(|s| s.name).collect();
    let mut params = opts.params();
    params["sizes"] = json!(sizes);
    let mut report = opts.report(lp.scenario, params);
    let mut cases: Vec<(String, usize, Series)> = Vec::new();
    for &size in &sizes {
        for n in &names {
            let label = format!("{n} {size}B");
            cases.push((
                n.to_string(),
                size,
                Series::new(n, &label, json!({"size": size})),
            ));
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.2,
        say,
        |(sys, size, s), run| measure_once(lp, sys, *size, opts, run, &mut s.command),
    );
    for (_, _, s) in &mut cases {
        s.summarize();
    }
    for &size in &sizes {
        let med = |sys: &str| {
            cases
                .iter()
                .find(|c| c.0 == sys && c.1 == size)
                .map(|c| c.2.median(|m| m.rx_mpps))
        };
        if let (Some(p), Some(t)) = (med("pollswitch"), med("testpmd")) {
            report.ratios.push(crate::report::Ratio {
                what: format!("pollswitch ÷ testpmd middle box, {size} B (loop Mpps)"),
                value: p / t,
            });
            if size == 64 {
                report.targets.push(target(
                    &format!(
                        "{}: pollswitch ≥ 1.0× the testpmd middle box, 64 B (loop Mpps)",
                        lp.name
                    ),
                    p / t,
                    1.0,
                    false,
                ));
            }
        }
    }
    report.series = cases.into_iter().map(|c| c.2).collect();
    report.notes.push(lp.note.into());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_pps_is_summed_over_ports_per_period() {
        let out = "\
  ######################## NIC statistics for port 0  ########################
  Throughput (since last show)
  Rx-pps:      5647699          Rx-bps:   2891622256
  ######################## NIC statistics for port 1  ########################
  Rx-pps:      2825801          Rx-bps:   1446810352
  ######################## NIC statistics for port 0  ########################
  Rx-pps:      10          Rx-bps:   1
  ######################## NIC statistics for port 1  ########################
  Rx-pps:      5          Rx-bps:   1
";
        assert_eq!(rx_pps_per_period(out), vec![8473500.0, 15.0]);
    }

    #[test]
    fn big_frames_get_big_mbufs() {
        let a = app(9000, true, &["--x".to_string()]).join(" ");
        assert!(
            a.contains("--mbuf-size=9256") && a.contains("--txpkts=9000") && a.contains("--x"),
            "{a}"
        );
    }
}
