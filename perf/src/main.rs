//! `pollswitch-perf`: the command line. Every subcommand and option is declared once
//! below (clap); `pollswitch-perf help` and `pollswitch-perf COMMAND --help` are made from
//! those declarations.
//!
//! Ctrl-C, SIGTERM or SIGHUP during a run removes every namespace, veth, temp dir and
//! process the run started (QEMU, vde_switch, testpmd, pollswitch daemons) and exits
//! with status 130 (the test bed's signal handler, `testbed::cleanup`).

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};

use perf::bench::{self, BenchOpts, SCENARIOS};
use perf::engine::{self, ENGINES};
use perf::error::{chain, PerfError, Result};
use perf::peer::SYSTEMS;
use perf::report::markdown_table;
use perf::svg::num;
use perf::traffic::{self, Outcome, Rate, Roles};

const SPECS: &str = "\
Endpoint SPEC (ENGINE:key=value,...):
  udp:local=ADDR,peer=ADDR[,gso=on|off]   one frame per datagram (QEMU socket,udp=/localaddr=)
  tcp:connect=ADDR | tcp:listen=ADDR      4-byte big-endian length + frame (QEMU stream)
  tap:ifname=NAME[,netns=NS]              AF_PACKET on the kernel side of a tap or veth
  vde:sock=DIR[,port=N]                   a vde_switch port
  memif:socket=PATH[,role=client|server][,id=N][,secret=S][,ring=N][,buffer=N]
                                          a memif application (a nic's x-memif)";

const EXIT_STATUS: &str = "\
Exit status: 0 success, 1 a run failed or a setup error, 2 usage, 130 interrupted
(SIGINT, SIGTERM or SIGHUP: everything the run started is removed first).";

/// Traffic generator and sink with latency histograms, and benchmarks of pollswitch side
/// by side with real peers.
#[derive(Debug, Parser)]
#[command(
    name = "pollswitch-perf",
    version,
    arg_required_else_help = true,
    after_help = EXIT_STATUS
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send and receive in one process (latency, loss)
    #[command(after_help = SPECS)]
    Run {
        /// Sending endpoint (repeat for more)
        #[arg(long, value_name = "SPEC", required = true)]
        tx: Vec<String>,
        /// Receiving endpoint (repeat for more)
        #[arg(long, value_name = "SPEC", required = true)]
        rx: Vec<String>,
        #[command(flatten)]
        traffic: TrafficArgs,
    },
    /// Send only
    #[command(after_help = SPECS)]
    Gen {
        /// Sending endpoint (repeat for more)
        #[arg(long, value_name = "SPEC", required = true)]
        tx: Vec<String>,
        #[command(flatten)]
        traffic: TrafficArgs,
    },
    /// Receive only (loss from sequence gaps)
    #[command(after_help = SPECS)]
    Sink {
        /// Receiving endpoint (repeat for more)
        #[arg(long, value_name = "SPEC", required = true)]
        rx: Vec<String>,
        #[command(flatten)]
        traffic: TrafficArgs,
    },
    /// Run scenarios: each starts the systems it measures itself (see list)
    Bench(Box<BenchArgs>),
    /// Redraw FILE.svg (and print the table) from a report
    Plot {
        /// Reports written by bench
        #[arg(value_name = "FILE.json", required = true)]
        files: Vec<PathBuf>,
    },
    /// Engines, systems and scenarios
    List,
}

/// Options of run, gen and sink.
#[derive(Debug, Args)]
struct TrafficArgs {
    /// Frames/s over all sending ports: max, or a number with k or M
    #[arg(long, value_name = "max|PPS", default_value = "max", value_parser = rate)]
    rate: Rate,
    /// Frame bytes without FCS, 64..9000
    #[arg(long, value_name = "N", default_value_t = 64)]
    size: usize,
    /// Measured seconds
    #[arg(long, value_name = "S", default_value = "5", value_parser = seconds)]
    duration: Duration,
    /// Seconds of traffic before the window, not counted
    #[arg(long, value_name = "S", default_value = "0.5", value_parser = seconds)]
    warmup: Duration,
    /// Frames per send call, 1..64
    #[arg(long, value_name = "N", default_value_t = 32)]
    burst: usize,
    /// Destination MAC of every frame
    #[arg(long, value_name = "MAC", default_value = "ff:ff:ff:ff:ff:ff", value_parser = mac)]
    dst: [u8; 6],
    /// Pin the generator to this core (default: not pinned)
    #[arg(long, value_name = "N")]
    gen_core: Option<usize>,
    /// Receive on a thread of its own on this core (default: in the generator's loop)
    #[arg(long, value_name = "N")]
    sink_core: Option<usize>,
    /// Write the result as JSON to FILE (- for stdout)
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// A progress line each second (on by itself for runs of 5 s or more)
    #[arg(long)]
    progress: bool,
}

/// Options of bench.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Scenarios to run, or all
    #[arg(value_name = "NAME", required = true, value_parser = scenario_names())]
    names: Vec<String>,
    /// Rounds, systems alternating A B C A B C [default: 5]
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Measured seconds of each run (idle: of each CPU sample) [default: 5]
    #[arg(long, value_name = "S", value_parser = seconds)]
    duration: Option<Duration>,
    /// Seconds of traffic before each window [default: 0.5]
    #[arg(long, value_name = "S", value_parser = seconds)]
    warmup: Option<Duration>,
    /// Frame bytes without FCS (udp-hub, tap-hub, latency, workers), 64..9000
    #[arg(long, value_name = "N", default_value_t = 64)]
    size: usize,
    /// Rate of the throughput scenarios: max, or frames/s with k or M
    #[arg(long, value_name = "max|PPS", default_value = "max", value_parser = rate)]
    rate: Rate,
    /// Frames/s of the latency scenario
    #[arg(long, value_name = "PPS", default_value_t = 20_000.0)]
    latency_rate: f64,
    /// Frames per send call, 1..64
    #[arg(long, value_name = "N", default_value_t = 32)]
    burst: usize,
    /// Core of the generator
    #[arg(long, value_name = "N", default_value_t = 0)]
    gen_core: usize,
    /// A separate sink thread on this core (default: in the generator's loop)
    #[arg(long, value_name = "N")]
    sink_core: Option<usize>,
    /// Cores of the system under test, e.g. 1 or 2-5 [default: 1, or 1..=N for --workers N]
    #[arg(long, value_name = "LIST", value_parser = core_list)]
    sut_cores: Option<CoreList>,
    /// Forwarding workers of pollswitch and testpmd (workers: the most measured)
    #[arg(long, value_name = "N", default_value_t = 1)]
    workers: usize,
    /// pollswitch -poll-us (idle sweeps its own)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    poll_us: u32,
    /// Measure only these systems (comma separated)
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// Port counts of the scale sweep [default: 2,4,8,16,32]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    ports: Option<Vec<usize>>,
    /// Frame sizes of the scale sweep [default: 64,512,1518,9000]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Learned-address counts of the learning sweep [default: 10,100,1000,10000,100000]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    macs: Option<Vec<usize>>,
    /// The daemon binary [default: beside this program, else on PATH]
    #[arg(long, value_name = "PATH")]
    pollswitch: Option<PathBuf>,
    /// More daemon arguments, one string (e.g. '-pool-size 4096')
    #[arg(long, value_name = "'A B'", allow_hyphen_values = true)]
    pollswitch_args: Option<String>,
    /// Generator sends UDP bursts as one GSO send (the system still gets one datagram per frame)
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    gen_gso: bool,
    /// Options appended to pollswitch's tap netdevs (e.g. vnet_hdr=on); QEMU's keep theirs
    #[arg(long, value_name = "OPTS")]
    pollswitch_tap_opts: Option<String>,
    /// After each max-rate run, search NDR/PDR on the same system (udp-hub, tap-hub, tap-udp-gso)
    #[arg(long)]
    ndr: bool,
    /// Loss ratios searched: 0 is NDR, 0.005 PDR [default: 0,0.005]
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "ndr")]
    ndr_loss: Option<Vec<f64>>,
    /// Stop when failing and passing rates are within this fraction [default: 0.02]
    #[arg(long, value_name = "F", requires = "ndr")]
    ndr_precision: Option<f64>,
    /// Most trials per loss ratio [default: 10; --quick: 3]
    #[arg(long, value_name = "N", requires = "ndr")]
    ndr_steps: Option<usize>,
    /// Measured seconds of each trial [default: --duration]
    #[arg(long, value_name = "S", value_parser = seconds, requires = "ndr")]
    ndr_trial: Option<Duration>,
    /// Lowest rate tried, frames/s with k or M (0: bisect towards 0) [default: 0]
    #[arg(long, value_name = "PPS", value_parser = rate_or_zero, requires = "ndr")]
    ndr_lower: Option<f64>,
    /// Where NAME.json and NAME.svg go
    #[arg(long, value_name = "DIR", default_value = "perf-out")]
    out: PathBuf,
    /// Smoke test: 1 run of 0.5 s, ports 2,8, sizes 64,9000 (explicit options still apply)
    #[arg(long)]
    quick: bool,
    /// Progress lines during each run
    #[arg(long)]
    progress: bool,
    /// Exit 0 even when some runs failed
    #[arg(long)]
    allow_fail: bool,
}

fn scenario_names() -> PossibleValuesParser {
    let mut names: Vec<&'static str> = SCENARIOS.iter().map(|s| s.name).collect();
    names.push("all");
    PossibleValuesParser::new(names)
}

fn rate(v: &str) -> Result<Rate, String> {
    Rate::parse(v).map_err(|e| e.to_string())
}

fn rate_or_zero(v: &str) -> Result<f64, String> {
    match v {
        "0" => Ok(0.0),
        _ => match Rate::parse(v) {
            Ok(Rate::Pps(p)) => Ok(p),
            Ok(Rate::Max) => Err("max: give frames per second".into()),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn seconds(v: &str) -> Result<Duration, String> {
    let s: f64 = v.parse().map_err(|_| format!("{v:?}: not a number"))?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(format!("{v}: 0 to 86400 seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

/// Cores, as one option value.
#[derive(Debug, Clone)]
struct CoreList(Vec<usize>);

/// A core list (`1`, `0,2`, `1-3,5`) of cores this machine has.
fn core_list(v: &str) -> Result<CoreList, String> {
    let cores = testbed::cpu::parse_list(v)?;
    let cpus = perf::sys::core_times().len().max(testbed::cpu::online());
    match cores.iter().find(|&&c| c >= cpus) {
        Some(bad) => Err(format!("no core {bad} (this machine has {cpus})")),
        None => Ok(CoreList(cores)),
    }
}

fn mac(v: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = v.split(':').collect();
    let bad = || format!("{v:?}: expected aa:bb:cc:dd:ee:ff");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(m)
}

fn on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{v}: on or off")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = testbed::cleanup::exit_on_signal("pollswitch-perf") {
        eprintln!("pollswitch-perf: warning: {e}: an interrupted run may leave namespaces behind");
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e @ PerfError::Usage(_)) => {
            eprintln!(
                "pollswitch-perf: {}\nTry `pollswitch-perf help`.",
                chain(&e)
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("pollswitch-perf: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { tx, rx, traffic } => traffic_command("run", tx, rx, traffic),
        Command::Gen { tx, traffic } => traffic_command("gen", tx, Vec::new(), traffic),
        Command::Sink { rx, traffic } => traffic_command("sink", Vec::new(), rx, traffic),
        Command::Bench(args) => bench_command(*args),
        Command::Plot { files } => plot_command(&files),
        Command::List => {
            list();
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list() {
    println!("engines:");
    for e in ENGINES {
        println!("  {:10} {} (keys: {})", e.name, e.about, e.keys.join(", "));
    }
    println!("systems:");
    for s in SYSTEMS {
        println!(
            "  {:10} {} (needs: {})",
            s.name,
            s.about,
            s.needs.join(", ")
        );
    }
    println!("scenarios:");
    for s in SCENARIOS {
        println!("  {:10} {} [{}]", s.name, s.about, s.systems.join(", "));
    }
}

fn traffic_command(
    cmd: &str,
    tx_specs: Vec<String>,
    rx_specs: Vec<String>,
    a: TrafficArgs,
) -> Result<ExitCode> {
    let mut cfg = traffic::Config {
        rate: a.rate,
        size: a.size,
        duration: a.duration,
        warmup: a.warmup,
        burst: a.burst,
        dst: a.dst,
        gen_core: a.gen_core,
        sink_core: a.sink_core,
        progress: a.progress,
        ..traffic::Config::default()
    };
    cfg.check()?;
    cfg.progress |= cfg.warmup + cfg.duration >= traffic::PROGRESS_FROM;
    let mut ports = Vec::new();
    let mut roles = Roles::default();
    for s in &tx_specs {
        roles.tx.push(ports.len());
        ports.push(engine::open(s)?);
    }
    for s in &rx_specs {
        roles.rx.push(ports.len());
        ports.push(engine::open(s)?);
    }
    let o = traffic::run(ports, &roles, &cfg)?;
    print_outcome(cmd, &o);
    if let Some(path) = a.json {
        let text = serde_json::to_string_pretty(&o).expect("an outcome always serializes");
        if path == "-" {
            println!("{text}");
        } else {
            std::fs::write(&path, text + "\n").map_err(|source| PerfError::File {
                path: PathBuf::from(&path),
                source,
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_outcome(cmd: &str, o: &Outcome) {
    let mut rows = vec![vec!["".to_string(), "value".to_string()]];
    let mut row = |k: &str, v: String| rows.push(vec![k.to_string(), v]);
    row("window s", num(o.duration_s));
    if cmd != "sink" {
        row("sent", o.sent.to_string());
        row("sent Mpps", num(o.tx_pps / 1e6));
    }
    if cmd != "gen" {
        row("received", o.received.to_string());
        row("received Mpps", num(o.rx_pps / 1e6));
        row("received Gbit/s", num(o.rx_gbps));
        row("lost", format!("{} ({} %)", o.lost, num(o.loss_pct)));
        row("reordered", o.reordered.to_string());
        row("duplicates", o.duplicates.to_string());
        let l = &o.latency_us;
        row(
            "latency µs p50/p90/p99/p99.9/max",
            format!(
                "{} / {} / {} / {} / {}",
                num(l.p50),
                num(l.p90),
                num(l.p99),
                num(l.p999),
                num(l.max)
            ),
        );
    }
    if o.tx_errors > 0 {
        row(
            "send errors",
            format!(
                "{} (last: {})",
                o.tx_errors,
                o.last_tx_error.clone().unwrap_or_default()
            ),
        );
    }
    row("tool CPU %", num(o.cpu.tool_pct));
    println!("{}", markdown_table(&rows));
}

fn plot_command(files: &[PathBuf]) -> Result<ExitCode> {
    for path in files {
        let report = perf::report::Report::read(path)?;
        let scenario = bench::find(&report.scenario)?;
        let svg_path = path.with_extension("svg");
        std::fs::write(&svg_path, (scenario.plot)(&report)).map_err(|source| PerfError::File {
            path: svg_path.clone(),
            source,
        })?;
        println!("## {}\n\n{}", report.scenario, report.table());
        println!("machine: {}", report.machine.line());
        println!("cores: {}", report.cores.note);
        println!("plot: {}\n", svg_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The scenario options `a` gives, over this machine's defaults.
fn bench_opts(a: &BenchArgs) -> Result<BenchOpts> {
    let mut opts = BenchOpts::defaults();
    opts.size = a.size;
    opts.rate = a.rate;
    opts.latency_rate = a.latency_rate;
    opts.burst = a.burst;
    opts.gen_core = a.gen_core;
    opts.sink_core = a.sink_core;
    opts.workers = a.workers;
    opts.poll_us = a.poll_us;
    opts.systems = a.systems.clone();
    if let Some(p) = &a.pollswitch {
        opts.pollswitch = p.clone();
    }
    if let Some(extra) = &a.pollswitch_args {
        opts.pollswitch_args = extra.split_whitespace().map(str::to_string).collect();
    }
    opts.gen_gso = a.gen_gso;
    opts.out_dir = a.out.clone();
    opts.progress = a.progress;
    if let Some(t) = &a.pollswitch_tap_opts {
        opts.pollswitch_tap_opts = t.clone();
    }
    if a.ndr {
        opts.ndr = Some(bench::ndr::NdrOpts::default());
    }
    if a.quick {
        opts.quick();
    }
    if let Some(n) = opts.ndr.as_mut() {
        n.losses = a.ndr_loss.clone().unwrap_or(n.losses.clone());
        n.precision = a.ndr_precision.unwrap_or(n.precision);
        n.steps = a.ndr_steps.unwrap_or(n.steps);
        n.trial = a.ndr_trial.or(n.trial);
        n.lower_pps = a.ndr_lower.unwrap_or(n.lower_pps);
        n.check()?;
    }
    // Given explicitly, they win over --quick.
    opts.runs = a.runs.unwrap_or(opts.runs);
    opts.duration = a.duration.unwrap_or(opts.duration);
    opts.warmup = a.warmup.unwrap_or(opts.warmup);
    opts.ports = a.ports.clone().unwrap_or(opts.ports);
    opts.sizes = a.sizes.clone().unwrap_or(opts.sizes);
    opts.macs = a.macs.clone().unwrap_or(opts.macs);
    match &a.sut_cores {
        Some(c) => opts.sut_cores = c.0.clone(),
        // One core per worker after the generator's.
        None if opts.workers > 1 => opts.sut_cores = (1..=opts.workers).collect(),
        None => {}
    }
    if opts.workers == 0 || opts.runs == 0 || opts.duration.is_zero() {
        return Err(PerfError::Usage(
            "--workers, --runs and --duration must be above 0".into(),
        ));
    }
    if opts.sut_cores.len() < opts.workers {
        return Err(PerfError::Usage(format!(
            "--workers {} needs at least that many --sut-cores",
            opts.workers
        )));
    }
    for s in opts.sizes.iter().chain([&opts.size]) {
        if !(perf::frame::MIN_SIZE..=perf::frame::MAX_SIZE).contains(s) {
            return Err(PerfError::Usage(format!(
                "frame size {s} outside 64..=9000"
            )));
        }
    }
    if opts.ports.iter().any(|&p| !(2..=256).contains(&p)) {
        return Err(PerfError::Usage("--ports: 2 to 256 each".into()));
    }
    if opts.macs.iter().any(|&m| !(2..=1 << 20).contains(&m)) {
        return Err(PerfError::Usage("--macs: 2 to 1048576 each".into()));
    }
    opts.command_line = std::iter::once("pollswitch-perf".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(opts)
}

fn bench_command(a: BenchArgs) -> Result<ExitCode> {
    let opts = bench_opts(&a)?;
    let scenarios: Vec<&bench::Scenario> = if a.names.iter().any(|n| n == "all") {
        SCENARIOS.iter().collect()
    } else {
        a.names
            .iter()
            .map(|n| bench::find(n))
            .collect::<Result<_>>()?
    };
    // Every peer of every scenario must be installed before anything runs.
    let mut plans = Vec::new();
    for sc in &scenarios {
        let systems = opts.systems_for(sc)?;
        plans.push((sc, systems));
    }
    eprintln!("pollswitch-perf: {}", opts.cores().note);
    let mut all_ok = true;
    for (sc, systems) in plans {
        eprintln!(
            "== {} ({} run(s) of {:.1} s, systems: {})",
            sc.name,
            opts.runs,
            opts.duration.as_secs_f64(),
            systems
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let report = (sc.run)(&opts, &systems)?;
        let svg = (sc.plot)(&report);
        let (json, plot) = report.write(&opts.out_dir, &svg)?;
        println!("## {}\n\n{}", sc.name, report.table());
        println!("machine: {}", report.machine.line());
        let busy = &report.machine.busy_before_pct;
        if busy.iter().any(|&b| b > 20.0) {
            println!(
                "WARNING: the machine was not idle before this scenario (cores busy {busy:?} %): \
                 other work competed with the systems measured"
            );
        }
        println!("cores: {}", report.cores.note);
        println!("results: {} and {}\n", json.display(), plot.display());
        all_ok &= report.all_ok();
    }
    if all_ok || a.allow_fail {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("pollswitch-perf: some runs failed (see the tables and the JSON)");
        Ok(ExitCode::from(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pollswitch-perf").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_and_option_has_one_line_of_help() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            assert!(sub.get_about().is_some(), "{name} has no help");
            let help = sub.render_help().to_string();
            for arg in sub.get_arguments() {
                let Some(text) = arg.get_help() else {
                    assert!(
                        arg.get_id() == "help",
                        "{name}: --{} has no help",
                        arg.get_id()
                    );
                    continue;
                };
                let text = text.to_string();
                assert!(!text.contains('\n'), "{name}: {} spans lines", arg.get_id());
                let line = help
                    .lines()
                    .find(|l| l.contains(&text))
                    .unwrap_or_else(|| panic!("{name}: no line for {}:\n{help}", arg.get_id()));
                if let Some(long) = arg.get_long() {
                    assert!(
                        line.contains(&format!("--{long}")),
                        "{name}: --{long} and its help are not on one line:\n{help}"
                    );
                }
            }
        }
    }

    /// Every command line BENCHMARKS.md shows still parses: the figures there can be
    /// measured again as written.
    #[test]
    fn the_documented_command_lines_parse() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS.md");
        let text = std::fs::read_to_string(path).expect("BENCHMARKS.md");
        let mut seen = 0;
        for line in text.lines() {
            let line = line.trim().trim_start_matches('(').trim_start_matches('`');
            let words: Vec<&str> = line.split_whitespace().collect();
            let start = match words.first() {
                Some(w) if w.ends_with("pollswitch-perf") || *w == "$T" => 1,
                _ => continue,
            };
            let args: Vec<&str> = words[start..]
                .iter()
                .map(|w| w.trim_end_matches(['`', ')', ',']))
                .collect();
            if !matches!(
                args.first(),
                Some(&("bench" | "run" | "gen" | "sink" | "plot" | "list"))
            ) {
                continue;
            }
            if let Err(e) = parse(&args) {
                panic!("BENCHMARKS.md: {line}\n{e}");
            }
            seen += 1;
        }
        assert!(seen >= 10, "only {seen} command lines found");
    }

    #[test]
    fn traffic_defaults_are_the_generators() {
        let Cli {
            command: Command::Run { tx, rx, traffic: t },
        } = parse(&[
            "run",
            "--tx",
            "udp:peer=127.0.0.1:1",
            "--rx",
            "udp:local=127.0.0.1:1",
        ])
        .unwrap()
        else {
            panic!("not run")
        };
        assert_eq!((tx.len(), rx.len()), (1, 1));
        let d = traffic::Config::default();
        assert_eq!(t.rate, d.rate);
        assert_eq!((t.size, t.burst, t.dst), (d.size, d.burst, d.dst));
        assert_eq!((t.duration, t.warmup), (d.duration, d.warmup));
        assert_eq!((t.gen_core, t.sink_core, t.progress), (None, None, false));
        assert!(parse(&["run", "--tx", "x"]).is_err(), "run needs --rx");
        assert!(parse(&["gen", "--rx", "x"]).is_err(), "gen has no --rx");
        assert!(parse(&[
            "sink",
            "--rx",
            "x",
            "--rate=10k",
            "--dst",
            "02:00:00:00:00:01"
        ])
        .is_ok());
        assert!(parse(&["run", "--tx", "a", "--rx", "b", "--dst", "nope"]).is_err());
        assert!(parse(&["run", "--tx", "a", "--rx", "b", "--duration", "-1"]).is_err());
    }

    #[test]
    fn bench_options_keep_their_names_and_defaults() {
        let Cli {
            command: Command::Bench(a),
        } = parse(&[
            "bench",
            "udp-hub",
            "tap-hub",
            "--runs=3",
            "--duration",
            "0.2",
            "--systems",
            "pollswitch,qemu",
            "--pollswitch",
            "/x/pollswitch",
            "--pollswitch-args",
            "-pool-size 4096",
            "--workers",
            "2",
            "--sut-cores",
            "0-1",
            "--quick",
            "--gen-gso",
            "off",
            "--ports",
            "2,4",
            "--out",
            "/tmp/o",
        ])
        .unwrap()
        else {
            panic!("not bench")
        };
        let o = bench_opts(&a).unwrap();
        assert_eq!(a.names, ["udp-hub", "tap-hub"]);
        // Explicit options win over --quick; the rest is --quick's.
        assert_eq!((o.runs, o.duration), (3, Duration::from_millis(200)));
        assert_eq!(
            (o.warmup, o.sizes.clone()),
            (Duration::from_millis(100), vec![64, 9000])
        );
        assert_eq!(o.ports, [2, 4]);
        assert_eq!(o.systems, Some(vec!["pollswitch".into(), "qemu".into()]));
        assert_eq!(o.pollswitch, PathBuf::from("/x/pollswitch"));
        assert_eq!(o.pollswitch_args, ["-pool-size", "4096"]);
        assert_eq!((o.workers, o.sut_cores.clone()), (2, vec![0, 1]));
        assert!(!o.gen_gso);
        assert_eq!(o.out_dir, PathBuf::from("/tmp/o"));

        let Cli {
            command: Command::Bench(a),
        } = parse(&["bench", "all"]).unwrap()
        else {
            panic!("not bench")
        };
        let (o, d) = (bench_opts(&a).unwrap(), BenchOpts::defaults());
        assert_eq!(
            (o.runs, o.duration, o.warmup),
            (d.runs, d.duration, d.warmup)
        );
        assert_eq!(
            (o.size, o.burst, o.gen_core, o.workers),
            (d.size, d.burst, d.gen_core, d.workers)
        );
        assert_eq!(
            (o.poll_us, o.latency_rate, o.rate),
            (d.poll_us, d.latency_rate, d.rate)
        );
        assert_eq!(
            (o.sut_cores.clone(), o.ports.clone(), o.sizes.clone()),
            (d.sut_cores, d.ports, d.sizes)
        );
        assert_eq!((o.gen_gso, o.out_dir.clone()), (d.gen_gso, d.out_dir));

        assert!(parse(&["bench"]).is_err(), "a scenario is required");
        assert!(parse(&["bench", "no-such-scenario"]).is_err());
        assert!(parse(&["bench", "idle", "--sut-cores", "3-1"]).is_err());
        assert!(parse(&["bench", "idle", "--gen-gso", "maybe"]).is_err());
        assert!(o.ndr.is_none() && o.pollswitch_tap_opts.is_empty());
        assert!(
            parse(&["bench", "udp-hub", "--ndr-steps", "3"]).is_err(),
            "needs --ndr"
        );
        let Cli {
            command: Command::Bench(a),
        } = parse(&[
            "bench",
            "tap-hub",
            "--ndr",
            "--quick",
            "--ndr-loss",
            "0.01,0",
            "--ndr-lower",
            "10k",
            "--pollswitch-tap-opts",
            "vnet_hdr=on",
        ])
        .unwrap()
        else {
            panic!("not bench")
        };
        let o = bench_opts(&a).unwrap();
        let n = o.ndr.expect("--ndr");
        assert_eq!(n.losses, [0.0, 0.01]);
        assert_eq!((n.steps, n.precision, n.lower_pps), (3, 0.02, 10_000.0));
        assert_eq!(n.trial, None);
        assert_eq!(o.pollswitch_tap_opts, "vnet_hdr=on");
        let Cli {
            command: Command::Bench(a),
        } = parse(&["bench", "tap-hub", "--ndr", "--ndr-loss", "2"]).unwrap()
        else {
            panic!("not bench")
        };
        assert!(bench_opts(&a).is_err(), "a loss ratio of 2");
        let Cli {
            command: Command::Bench(a),
        } = parse(&["bench", "workers", "--workers", "4", "--sut-cores", "1"]).unwrap()
        else {
            panic!("not bench")
        };
        assert!(bench_opts(&a).is_err(), "4 workers on one core");
    }
}
