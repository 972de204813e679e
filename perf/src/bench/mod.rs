//! Scenarios: one per file, all listed in [`SCENARIOS`]. Each starts the system under
//! test and its peers itself, measures them alternately (A B C A B C …, so that a drift
//! of the machine hits every system alike), and reports medians, ratios and the targets
//! of the issue.
//!
//! ```text
//!  for run in 0..runs:
//!    for case in cases:                       (a system, maybe with a parameter)
//!      start system ─► open endpoints ─► traffic::run ─► kernel drop counters ─► stop
//!  summarize ─► ratios, targets ─► Report ─► JSON + table + SVG
//! ```
//!
//! Before each measurement a line `run k of N, ETA mm:ss` goes to stderr ([`Progress`]),
//! the time left estimated from the measurements done so far.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use testbed::Netns;

use crate::engine;
use crate::error::{chain, PerfError, Result};
use crate::peer::{self, Running, SutOptions, Topology, UdpLink};
use crate::report::{Cores, Machine, Report, Sample, Series};
use crate::traffic::{self, Rate, Roles};

pub mod af_xdp;
pub mod dpdk_loop;
pub mod idle;
pub mod io_baseline;
pub mod latency;
pub mod learning;
pub mod memif;
pub mod ndr;
pub mod scale;
pub mod soak;
pub mod tap_hub;
pub mod tap_udp_gso;
pub mod tcp_taps;
pub mod udp_hub;
pub mod vhost;
pub mod vxlan;
pub mod workers;
pub mod xnull;

/// A scenario's entry in the registry.
pub struct Scenario {
    /// `pollswitch-perf bench NAME`.
    pub name: &'static str,
    /// One line for `pollswitch-perf list`.
    pub about: &'static str,
    /// The systems it measures unless `--systems` says otherwise.
    pub systems: &'static [&'static str],
    /// Measures and reports.
    pub run: fn(&BenchOpts, &[&'static peer::System]) -> Result<Report>,
    /// Draws the report.
    pub plot: fn(&Report) -> String,
}

/// Every scenario, in the order `bench all` runs them.
pub const SCENARIOS: &[Scenario] = &[
    udp_hub::SCENARIO,
    tap_hub::SCENARIO,
    af_xdp::SCENARIO,
    latency::SCENARIO,
    idle::SCENARIO,
    scale::SCENARIO,
    io_baseline::SCENARIO,
    workers::SCENARIO,
    learning::SCENARIO,
    memif::SCENARIO,
    vhost::SCENARIO,
    vxlan::SCENARIO,
    tcp_taps::SCENARIO,
    tap_udp_gso::SCENARIO,
    soak::SCENARIO,
];

/// The scenario called `name`.
pub fn find(name: &str) -> Result<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        PerfError::Usage(format!(
            "no scenario {name:?}: one of {}, or all",
            names.join(", ")
        ))
    })
}

/// Options every scenario takes.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Rounds of the alternation.
    pub runs: usize,
    /// Measured window of each traffic run (idle: of each CPU sample).
    pub duration: Duration,
    /// Traffic before each window.
    pub warmup: Duration,
    /// Frame size (udp-hub, tap-hub, latency).
    pub size: usize,
    /// Rate for the throughput scenarios (default: max).
    pub rate: Rate,
    /// Rate of the latency scenario.
    pub latency_rate: f64,
    /// Frames per send call.
    pub burst: usize,
    /// Core of the generator.
    pub gen_core: usize,
    /// Core of a separate sink thread (default: the generator's loop receives).
    pub sink_core: Option<usize>,
    /// Cores of the system under test.
    pub sut_cores: Vec<usize>,
    /// Forwarding workers of pollswitch and testpmd.
    pub workers: usize,
    /// pollswitch `-poll-us` (idle sets its own).
    pub poll_us: u32,
    /// Systems to measure instead of the scenario's list.
    pub systems: Option<Vec<String>>,
    /// Port counts (scale).
    pub ports: Vec<usize>,
    /// Frame sizes (scale).
    pub sizes: Vec<usize>,
    /// Learned-address counts (learning).
    pub macs: Vec<usize>,
    /// The pollswitch binary.
    pub pollswitch: PathBuf,
    /// More arguments for the pollswitch daemon.
    pub pollswitch_args: Vec<String>,
    /// Whether the generator sends UDP bursts as one GSO send (see `engine::udp`).
    pub gen_gso: bool,
    /// Where JSON and SVG go.
    pub out_dir: PathBuf,
    /// The command line, for the report.
    pub command_line: String,
    /// Progress lines during each run.
    pub progress: bool,
    /// With `--ndr`: search each system's NDR/PDR after its max-rate run (udp-hub,
    /// tap-hub, tap-udp-gso).
    pub ndr: Option<ndr::NdrOpts>,
    /// Options appended to every tap netdev pollswitch gets (`vnet_hdr=on`).
    pub pollswitch_tap_opts: String,
}

impl BenchOpts {
    /// Defaults for this machine: generator on core 0, system on core 1, 5 runs of 5 s.
    pub fn defaults() -> BenchOpts {
        let online = testbed::cpu::online();
        BenchOpts {
            runs: 5,
            duration: Duration::from_secs(5),
            warmup: Duration::from_millis(500),
            size: crate::frame::MIN_SIZE,
            rate: Rate::Max,
            latency_rate: 20_000.0,
            burst: 32,
            gen_core: 0,
            sink_core: None,
            sut_cores: vec![if online > 1 { 1 } else { 0 }],
            workers: 1,
            poll_us: 1000,
            systems: None,
            ports: vec![2, 4, 8, 16, 32],
            sizes: vec![64, 512, 1518, 9000],
            macs: vec![10, 100, 1000, 10_000, 100_000],
            pollswitch: default_pollswitch(),
            pollswitch_args: Vec::new(),
            gen_gso: true,
            out_dir: PathBuf::from("perf-out"),
            command_line: String::new(),
            progress: false,
            ndr: None,
            pollswitch_tap_opts: String::new(),
        }
    }

    /// Shrinks everything for a smoke run of a few seconds.
    pub fn quick(&mut self) {
        self.runs = 1;
        self.duration = Duration::from_millis(500);
        self.warmup = Duration::from_millis(100);
        self.ports = vec![2, 8];
        self.sizes = vec![64, 9000];
        self.macs = vec![10, 100_000];
        if let Some(n) = self.ndr.as_mut() {
            n.steps = n.steps.min(3);
        }
    }

    /// The systems to measure for `scenario`, checked to exist and to have their
    /// programs installed (a missing peer is an error, never a skip).
    pub fn systems_for(&self, scenario: &Scenario) -> Result<Vec<&'static peer::System>> {
        let names: Vec<String> = match &self.systems {
            Some(list) => list.clone(),
            None => scenario.systems.iter().map(|s| s.to_string()).collect(),
        };
        let mut out = Vec::new();
        for n in &names {
            let sys = peer::find(n)?;
            if !scenario.systems.contains(&sys.name) {
                return Err(PerfError::Usage(format!(
                    "scenario {} measures {}, not {n}",
                    scenario.name,
                    scenario.systems.join(", ")
                )));
            }
            for program in sys.needs {
                peer::require(program)?;
            }
            if sys.name == "pollswitch" {
                peer::require(&self.pollswitch.to_string_lossy())?;
            }
            out.push(sys);
        }
        Ok(out)
    }

    /// How every system is run.
    pub fn sut(&self, max_frame: usize) -> SutOptions {
        SutOptions {
            cores: self.sut_cores.clone(),
            workers: self.workers,
            poll_us: self.poll_us,
            max_frame,
            pollswitch: self.pollswitch.clone(),
            pollswitch_args: self.pollswitch_args.clone(),
            pollswitch_tap_opts: self.pollswitch_tap_opts.clone(),
        }
    }

    /// The traffic configuration for one run.
    pub fn traffic(&self, rate: Rate, size: usize, dst: [u8; 6]) -> traffic::Config {
        traffic::Config {
            rate,
            size,
            duration: self.duration,
            warmup: self.warmup,
            burst: self.burst,
            dst,
            gen_core: Some(self.gen_core),
            sink_core: self.sink_core,
            progress: self.progress,
            ..traffic::Config::default()
        }
    }

    /// How cores were used, for the report.
    pub fn cores(&self) -> Cores {
        let mut used: Vec<usize> = self.sut_cores.clone();
        used.push(self.gen_core);
        used.extend(self.sink_core);
        used.sort_unstable();
        used.dedup();
        let sink = match self.sink_core {
            Some(c) => format!("sink thread on core {c}"),
            None => "sink in the generator's loop (one thread)".into(),
        };
        Cores {
            generator: Some(self.gen_core),
            sink: self.sink_core,
            system_under_test: self.sut_cores.clone(),
            workers: self.workers,
            used: used.len(),
            online: testbed::cpu::online(),
            note: format!(
                "generator on core {}, {sink}; every system under test confined (taskset) to \
                 core(s) {} with {} forwarding worker(s); {} of {} online cores used",
                self.gen_core,
                testbed::cpu::list(&self.sut_cores),
                self.workers,
                used.len(),
                testbed::cpu::online()
            ),
        }
    }

    /// A report skeleton for `scenario`.
    pub fn report(&self, scenario: &Scenario, params: serde_json::Value) -> Report {
        let mut machine = Machine::probe();
        machine.note_pollswitch(&self.pollswitch);
        let mut notes = Vec::new();
        if machine.busy_before_pct.iter().any(|&b| b > 20.0) {
            notes.push(format!(
                "the machine was not idle before this scenario (cores busy {:?} %)",
                machine.busy_before_pct
            ));
        }
        Report {
            scenario: scenario.name.into(),
            about: scenario.about.into(),
            tool: format!("pollswitch-perf {}", env!("CARGO_PKG_VERSION")),
            command: self.command_line.clone(),
            started_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            machine,
            cores: self.cores(),
            params,
            series: Vec::new(),
            ratios: Vec::new(),
            targets: Vec::new(),
            notes,
        }
    }

    /// Common parameters for the report.
    pub fn params(&self) -> serde_json::Value {
        json!({
            "runs": self.runs,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "burst": self.burst,
            "poll_us": self.poll_us,
            "pollswitch_args": self.pollswitch_args,
            "generator_udp_gso": self.gen_gso,
            "frame_bytes_note": "frame sizes count the Ethernet frame without FCS",
            "ndr": self.ndr,
            "pollswitch_tap_opts": self.pollswitch_tap_opts,
        })
    }
}

/// `pollswitch` beside this executable (target/<profile>/), else on PATH.
pub fn default_pollswitch() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let p = dir.join("pollswitch");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("pollswitch")
}

/// A loopback address with a port free right now.
pub fn free_udp() -> Result<SocketAddr> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|source| PerfError::Socket {
        what: "bind 127.0.0.1:0".into(),
        source,
    })?;
    s.local_addr().map_err(|source| PerfError::Socket {
        what: "local_addr".into(),
        source,
    })
}

/// `n` UDP hub links on fresh loopback ports.
pub fn udp_links(n: usize) -> Result<Vec<UdpLink>> {
    // Hold every socket until all are chosen, so no two links get the same port.
    let mut held = Vec::new();
    let mut addr = || -> Result<SocketAddr> {
        let s = UdpSocket::bind("127.0.0.1:0").map_err(|source| PerfError::Socket {
            what: "bind 127.0.0.1:0".into(),
            source,
        })?;
        let a = s.local_addr().map_err(|source| PerfError::Socket {
            what: "local_addr".into(),
            source,
        })?;
        held.push(s);
        Ok(a)
    };
    let mut links = Vec::new();
    for _ in 0..n {
        links.push(UdpLink {
            own: addr()?,
            gen: addr()?,
        });
    }
    Ok(links)
}

use testbed::udp_socket_drops;

/// Where the kernel dropped frames around a system: the sockets or interfaces at both
/// ends of every port. Read while the system still runs.
pub fn kernel_drops(topology: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    match topology {
        Topology::UdpHub(links) => {
            for (i, l) in links.iter().enumerate() {
                if let Some((d, _)) = udp_socket_drops(l.own.port()) {
                    out.push(format!("port {i}: system's socket {} dropped {d}", l.own));
                }
                if let Some((d, _)) = udp_socket_drops(l.gen.port()) {
                    out.push(format!("port {i}: tool's socket {} dropped {d}", l.gen));
                }
            }
        }
        Topology::TapHub { ports, .. } => {
            for (i, p) in ports.iter().enumerate() {
                if let Some((rx, rxd, tx, txd)) = Netns::borrow(&p.netns).link_counters(&p.ifname) {
                    out.push(format!(
                        "port {i}: {} (tool side) tx {tx} tx_dropped {txd} rx {rx} rx_dropped {rxd}",
                        p.ifname
                    ));
                }
            }
        }
    }
    out
}

/// What one traffic measurement needs besides the system.
pub struct Job<'a> {
    /// What the system builds.
    pub topology: &'a Topology,
    /// Which of its ports send and receive.
    pub roles: &'a Roles,
    /// The traffic.
    pub cfg: &'a traffic::Config,
    /// How the system runs.
    pub sut: &'a SutOptions,
    /// Whether UDP endpoints send with GSO.
    pub gen_gso: bool,
    /// A throughput search after the max-rate run, on the same running system.
    pub ndr: Option<&'a ndr::NdrOpts>,
}

/// Starts `system` on `topology`, runs `body` against it, reads the kernel's drop
/// counters, stops the system, and returns the sample: `body`'s outcome (with the
/// system's CPU use) or the first error. `command` receives the command line that
/// started the system.
pub fn with_system(
    system: &peer::System,
    topology: &Topology,
    sut: &SutOptions,
    run: usize,
    command: &mut String,
    body: impl FnOnce(&dyn Running, &mut Sample) -> Result<traffic::Outcome>,
) -> Sample {
    let mut sample = Sample {
        run,
        ..Sample::default()
    };
    let mut running: Box<dyn Running> = match (system.start)(topology, sut) {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(format!("start: {}", chain(&e)));
            return sample;
        }
    };
    *command = running.command();
    let result = body(&*running, &mut sample);
    sample.diagnostics.extend(kernel_drops(topology));
    match result {
        Ok(o) => {
            let watched: Vec<f64> = o.cpu.watched_pct.iter().map(|(_, p)| *p).collect();
            if !watched.is_empty() {
                sample.sut_cpu_pct = Some(watched.iter().sum());
            }
            sample.outcome = Some(o);
        }
        Err(e) => sample.error = Some(format!("traffic: {}", chain(&e))),
    }
    match running.stop() {
        Ok(notes) => sample.diagnostics.extend(notes),
        Err(e) => {
            let text = format!("stop: {}", chain(&e));
            sample.error = Some(match sample.error.take() {
                Some(prev) => format!("{prev}; {text}"),
                None => text,
            });
        }
    }
    sample
}

/// One traffic measurement: start `system` on the job's topology, run its traffic
/// (and, with `job.ndr`, the throughput search), read the kernel's drop counters, stop
/// the system. `command` receives the command line that started it.
pub fn measure(system: &peer::System, job: &Job<'_>, run: usize, command: &mut String) -> Sample {
    let gen_gso = job.gen_gso;
    with_system(
        system,
        job.topology,
        job.sut,
        run,
        command,
        |running, sample| {
            let specs: Vec<String> = running
                .endpoints()
                .into_iter()
                .map(|spec| match (spec.starts_with("udp:"), gen_gso) {
                    (true, false) => format!("{spec},gso=off"),
                    _ => spec,
                })
                .collect();
            let mut cfg = job.cfg.clone();
            cfg.watch = running.pids();
            let open = || specs.iter().map(|s| engine::open(s)).collect();
            ndr::measure(job.ndr, system.name, &cfg, job.roles, &open, sample)
        },
    )
}

/// Says before each measurement which one of how many it is and when all will be done:
/// `run k of N, ETA mm:ss`, the time left being the mean of the measurements done so far
/// times those left (`--:--` before the first is done).
#[derive(Debug)]
pub struct Progress {
    total: usize,
    done: usize,
    started: Option<Instant>,
    spent: Duration,
}

impl Progress {
    /// For `total` measurements.
    pub fn new(total: usize) -> Progress {
        Progress {
            total,
            done: 0,
            started: None,
            spent: Duration::ZERO,
        }
    }

    /// The line for the measurement about to start, counting the previous one done.
    pub fn next(&mut self, now: Instant) -> String {
        if let Some(t) = self.started.replace(now) {
            self.spent += now.saturating_duration_since(t);
            self.done += 1;
        }
        let k = self.done + 1;
        let eta = match self.done {
            0 => "--:--".to_string(),
            d => {
                let left = self.total.saturating_sub(d);
                let s = (self.spent.as_secs_f64() / d as f64 * left as f64).round() as u64;
                format!("{:02}:{:02}", s / 60, s % 60)
            }
        };
        format!("run {k} of {}, ETA {eta}", self.total)
    }
}

/// Measures every case `opts.runs` times, alternating (A B C A B C ..., so that a drift
/// of the machine hits every case alike): `measure(case, run)` for each, then `say` and
/// the sample into the case's series (`series_of`). A progress line goes to stderr
/// before each measurement.
pub fn rounds<C>(
    opts: &BenchOpts,
    cases: &mut [C],
    series_of: fn(&mut C) -> &mut Series,
    say: fn(&str, &Sample),
    mut measure: impl FnMut(&mut C, usize) -> Sample,
) {
    let mut progress = Progress::new(opts.runs * cases.len());
    for run in 0..opts.runs {
        for case in cases.iter_mut() {
            eprintln!(
                "  {} ({})",
                progress.next(Instant::now()),
                series_of(case).label
            );
            let sample = measure(case, run);
            let s = series_of(case);
            say(&s.label, &sample);
            s.samples.push(sample);
        }
    }
}

/// The series of a scenario's cases, each summarized (medians of its samples).
pub fn summarized(series: impl Iterator<Item = Series>) -> Vec<Series> {
    series
        .map(|mut s| {
            s.summarize();
            s
        })
        .collect()
}

/// Measures every system `opts.runs` times, alternating (A B C A B C ...), each with
/// `measure_once(system, opts, run, command)`, and returns one summarized series per
/// system (two-port scenarios: the series' params say so).
pub fn alternate(
    opts: &BenchOpts,
    systems: &[&'static peer::System],
    measure_once: impl Fn(&peer::System, &BenchOpts, usize, &mut String) -> Sample,
) -> Vec<Series> {
    let mut cases: Vec<(&peer::System, Series)> = systems
        .iter()
        .map(|s| {
            let params = json!({"ports": 2, "size": opts.size});
            (*s, Series::new(s.name, s.name, params))
        })
        .collect();
    rounds(
        opts,
        &mut cases,
        |c| &mut c.1,
        say,
        |(sys, s), run| measure_once(sys, opts, run, &mut s.command),
    );
    cases
        .into_iter()
        .map(|(_, mut s)| {
            s.summarize();
            s
        })
        .collect()
}

/// Prints one line about a finished sample.
pub fn say(label: &str, s: &Sample) {
    match (&s.outcome, &s.error) {
        (_, Some(e)) => eprintln!(
            "  run {} {label}: FAILED: {}",
            s.run,
            e.lines().next().unwrap_or("")
        ),
        (Some(o), None) => eprintln!(
            "  run {} {label}: sent {:.3} Mpps, received {:.3} Mpps, loss {:.2} %, p50 {:.1} µs, p99 {:.1} µs{}{}",
            s.run,
            o.tx_pps / 1e6,
            o.rx_pps / 1e6,
            o.loss_pct,
            o.latency_us.p50,
            o.latency_us.p99,
            s.sut_cpu_pct
                .map(|c| format!(", system CPU {c:.0} %"))
                .unwrap_or_default(),
            match (o.tool_rx_drops, o.bad_length) {
                (0, 0) => String::new(),
                (d, 0) => format!(", SINK DROPPED {d}"),
                (d, b) => format!(", SINK DROPPED {d}, WRONG LENGTH {b}"),
            } + &if o.cpu.other_pct > 10.0 {
                format!(", other load {:.0} % of a core", o.cpu.other_pct)
            } else {
                String::new()
            }
        ),
        (None, None) => eprintln!(
            "  run {} {label}: idle CPU {:.3} % of a core",
            s.run,
            s.idle_cpu_pct.unwrap_or(f64::NAN)
        ),
    }
}

/// Ratios of pollswitch's median of `metric` to every other series' (`higher_better`:
/// pollswitch ÷ peer; otherwise peer ÷ pollswitch, "times lower").
pub fn ratios(
    report: &Report,
    ours: &str,
    metric: &str,
    f: impl Fn(&Series) -> f64,
    higher_better: bool,
) -> Vec<crate::report::Ratio> {
    let Some(p) = report.series(ours) else {
        return Vec::new();
    };
    let mine = f(p);
    report
        .series
        .iter()
        .filter(|s| s.label != ours && s.system != "pollswitch")
        .map(|s| {
            let theirs = f(s);
            let (value, what) = if higher_better {
                (mine / theirs, format!("{ours} ÷ {} ({metric})", s.label))
            } else {
                (
                    theirs / mine,
                    format!("{} ÷ {ours} ({metric}: times lower)", s.label),
                )
            };
            crate::report::Ratio { what, value }
        })
        .collect()
}

/// With `--ndr`: pollswitch ÷ every other system for each loss ratio searched (NDR,
/// PDR), appended to the report's ratios.
pub fn throughput_ratios(report: &mut Report) {
    let mut searched: Vec<(f64, String)> = Vec::new();
    for t in report.series.iter().flat_map(|s| &s.summary.throughput) {
        if !searched.iter().any(|(r, _)| *r == t.loss_ratio) {
            searched.push((t.loss_ratio, t.name.clone()));
        }
    }
    if !searched.is_empty() {
        report.notes.push(format!(
            "throughput search (--ndr): after each system's max-rate run, on the same running \
             system, a bisection of paced trials between the lower bound and the rate the \
             max-rate run offered; a trial passes a loss ratio when 1 − received ÷ sent is \
             at most that ratio (counted after the sink drained) and the generator sent \
             within {} % of the offered rate (a tap's backpressure fails it). NDR/PDR = the \
             highest passing offered rate, 0 when none passed; each run's trials are in \
             samples[].detail.ndr_trials",
            ndr::MAX_SHORTFALL * 100.0
        ));
    }
    for (ratio, name) in searched {
        let more = ratios(
            report,
            "pollswitch",
            &format!("{name} Mpps"),
            |s| s.throughput_mpps(ratio),
            true,
        );
        report.ratios.extend(more);
    }
}

/// A target met when `value >= goal` (or `<=` when `at_most`); a missing value misses it.
pub fn target(goal: &str, value: f64, threshold: f64, at_most: bool) -> crate::report::Target {
    let met = value.is_finite()
        && if at_most {
            value <= threshold
        } else {
            value >= threshold
        };
    crate::report::Target {
        goal: goal.into(),
        value,
        met,
        not_measured: None,
    }
}

/// A target this run could not measure, and why (never met).
pub fn not_measured(goal: &str, why: &str) -> crate::report::Target {
    crate::report::Target {
        goal: goal.into(),
        value: f64::NAN,
        met: false,
        not_measured: Some(why.into()),
    }
}

/// Three namespaces for a tap run: the system's, the generator's, the sink's.
pub struct TapNamespaces {
    pub sut: Netns,
    pub gen: Netns,
    pub sink: Netns,
}

impl TapNamespaces {
    pub fn create() -> Result<TapNamespaces> {
        Ok(TapNamespaces {
            sut: Netns::create("pps")?,
            gen: Netns::create("ppg")?,
            sink: Netns::create("ppk")?,
        })
    }

    /// [`TapNamespaces::create`] for run `run` of a scenario: the failure as that run's
    /// sample.
    pub fn for_run(run: usize) -> std::result::Result<TapNamespaces, Box<Sample>> {
        TapNamespaces::create().map_err(|e| {
            Box::new(Sample {
                run,
                error: Some(e.to_string()),
                ..Sample::default()
            })
        })
    }
}

/// For a tap topology whose ends the tool uses as hosts (TCP, UDP sockets): gives each
/// port's tool-side interface the port's MAC (the address a bridge's static FDB names),
/// the address `{prefix}.{k}/24` (k = 1, 2, ...), and a permanent neighbour entry for
/// every other port's address and MAC, so that no ARP is needed. Returns the addresses.
pub fn address_ends(topology: &Topology, prefix: &str) -> Result<Vec<String>> {
    let Topology::TapHub { ports, .. } = topology else {
        return Err(PerfError::Usage(
            "addresses: only for the tap topology".into(),
        ));
    };
    let addrs: Vec<String> = (1..=ports.len()).map(|k| format!("{prefix}.{k}")).collect();
    for (i, p) in ports.iter().enumerate() {
        let ns = Netns::borrow(&p.netns);
        let mac = peer::mac_text(p.mac);
        ns.ip(&["link", "set", "dev", &p.ifname, "address", &mac])?;
        ns.ip(&["addr", "add", &format!("{}/24", addrs[i]), "dev", &p.ifname])?;
        for (j, q) in ports.iter().enumerate().filter(|(j, _)| *j != i) {
            ns.ip(&[
                "neigh",
                "replace",
                &addrs[j],
                "lladdr",
                &peer::mac_text(q.mac),
                "dev",
                &p.ifname,
                "nud",
                "permanent",
            ])?;
        }
    }
    Ok(addrs)
}

/// A two-port tap topology across fresh namespaces: port 0's end in the generator's,
/// port 1's in the sink's, MACs `frame::mac(0)` and `frame::mac(1)`.
pub fn tap_pair(ns: &TapNamespaces, mtu: u32) -> Topology {
    Topology::TapHub {
        sut_netns: ns.sut.name.clone(),
        ports: vec![
            peer::TapLink {
                ifname: testbed::unique("pta"),
                netns: ns.gen.name.clone(),
                mac: crate::frame::mac(0),
            },
            peer::TapLink {
                ifname: testbed::unique("ptb"),
                netns: ns.sink.name.clone(),
                mac: crate::frame::mac(1),
            },
        ],
        mtu,
    }
}

/// The standard plot of a throughput scenario: received Mpps, loss, latency percentiles.
pub fn plot_throughput(report: &Report, title: &str) -> String {
    use crate::svg::{color, Bar, Svg};
    let searched: Vec<(f64, String)> = report
        .series
        .iter()
        .flat_map(|s| &s.summary.throughput)
        .fold(Vec::new(), |mut v, t| {
            if !v.iter().any(|(r, _)| *r == t.loss_ratio) {
                v.push((t.loss_ratio, t.name.clone()));
            }
            v
        });
    let width = if searched.is_empty() { 1200.0 } else { 1650.0 };
    let mut svg = Svg::new(width, 470.0, title, &report.machine.line());
    let bar =
        |s: &Series, f: &dyn Fn(&crate::report::Summary) -> Option<crate::report::Stat>| Bar {
            label: s.label.clone(),
            value: f(&s.summary).map_or(f64::NAN, |x| x.median),
            range: f(&s.summary).map(|x| (x.min, x.max)),
            color: color(&s.system).into(),
        };
    let rx: Vec<Bar> = report
        .series
        .iter()
        .map(|s| bar(s, &|m| m.rx_mpps))
        .collect();
    let loss: Vec<Bar> = report
        .series
        .iter()
        .map(|s| bar(s, &|m| m.loss_pct))
        .collect();
    svg.bars(
        (0.0, 55.0, 420.0, 390.0),
        "received (median, min–max)",
        "Mpps",
        &rx,
    );
    svg.bars(
        (420.0, 55.0, 300.0, 390.0),
        "loss",
        "% of frames sent",
        &loss,
    );
    let groups: Vec<(String, Vec<f64>)> = report
        .series
        .iter()
        .map(|s| {
            let m = |f: fn(&crate::report::Summary) -> Option<crate::report::Stat>| {
                f(&s.summary).map_or(f64::NAN, |x| x.median)
            };
            (
                s.label.clone(),
                vec![
                    m(|x| x.p50_us),
                    m(|x| x.p90_us),
                    m(|x| x.p99_us),
                    m(|x| x.p999_us),
                ],
            )
        })
        .collect();
    svg.grouped(
        (720.0, 55.0, 480.0, 390.0),
        "one-way latency (median of runs)",
        "µs (log)",
        &["p50", "p90", "p99", "p99.9"],
        &groups,
    );
    if !searched.is_empty() {
        let names: Vec<&str> = searched.iter().map(|(_, n)| n.as_str()).collect();
        let groups: Vec<(String, Vec<f64>)> = report
            .series
            .iter()
            .map(|s| {
                let v = searched
                    .iter()
                    .map(|(r, _)| s.throughput_mpps(*r))
                    .collect();
                (s.label.clone(), v)
            })
            .collect();
        svg.grouped(
            (1200.0, 55.0, 450.0, 390.0),
            "throughput search (median of runs)",
            "Mpps (log)",
            &names,
            &groups,
        );
    }
    svg.footer(&report.command);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_get_distinct_ports() {
        let links = udp_links(8).unwrap();
        let mut ports: Vec<u16> = links
            .iter()
            .flat_map(|l| [l.own.port(), l.gen.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 16);
    }

    #[test]
    fn scenarios_are_registered_once_and_know_their_systems() {
        for s in SCENARIOS {
            assert_eq!(SCENARIOS.iter().filter(|o| o.name == s.name).count(), 1);
            for sys in s.systems {
                assert!(peer::find(sys).is_ok(), "{} lists unknown {sys}", s.name);
            }
        }
        assert!(find("udp-hub").is_ok() && find("nope").is_err());
    }

    #[test]
    fn progress_counts_runs_and_estimates_from_those_done() {
        let t0 = Instant::now();
        let mut p = Progress::new(4);
        assert_eq!(p.next(t0), "run 1 of 4, ETA --:--");
        assert_eq!(
            p.next(t0 + Duration::from_secs(30)),
            "run 2 of 4, ETA 01:30"
        );
        // 30 s then 50 s: 40 s each, two left.
        assert_eq!(
            p.next(t0 + Duration::from_secs(80)),
            "run 3 of 4, ETA 01:20"
        );
        assert_eq!(
            p.next(t0 + Duration::from_secs(120)),
            "run 4 of 4, ETA 00:40"
        );
        let mut long = Progress::new(1000);
        long.next(t0);
        assert_eq!(
            long.next(t0 + Duration::from_secs(10)),
            "run 2 of 1000, ETA 166:30"
        );
    }

    #[test]
    fn targets_and_missing_values() {
        assert!(target("x", 3.5, 3.0, false).met);
        assert!(!target("x", 2.5, 3.0, false).met);
        assert!(target("x", 0.5, 1.0, true).met);
        assert!(!target("x", f64::NAN, 1.0, true).met);
    }
}
