//! `pollswitch-perf`: the command line. See `pollswitch-perf help`.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use perf::bench::{self, BenchOpts, SCENARIOS};
use perf::engine::{self, ENGINES};
use perf::error::{chain, PerfError, Result};
use perf::peer::SYSTEMS;
use perf::report::markdown_table;
use perf::svg::num;
use perf::traffic::{self, Outcome, Rate, Roles};

const USAGE: &str = "\
Usage: pollswitch-perf COMMAND [OPTION]...
Traffic generator and sink with latency histograms, and benchmarks of pollswitch side
by side with real peers.

Commands:
  run   --tx SPEC... --rx SPEC...   send and receive in one process (latency, loss)
  gen   --tx SPEC...                send only
  sink  --rx SPEC...                receive only (loss from sequence gaps)
  bench NAME|all                    run a scenario: starts the systems itself
                                    (names and what each measures: list)
  plot FILE.json...                 redraw FILE.svg (and print the table) from a report
  list                              engines, systems and scenarios
  help                              this text

Endpoint SPEC (ENGINE:key=value,...):
  udp:local=ADDR,peer=ADDR     one frame per datagram (QEMU socket,udp=/localaddr=)
  tcp:connect=ADDR | tcp:listen=ADDR   4-byte big-endian length + frame (QEMU stream)
  tap:ifname=NAME[,netns=NS]   AF_PACKET on the kernel side of a tap or veth
  vde:sock=DIR[,port=N]        a vde_switch port

Traffic options (run, gen, sink):
  --rate max|PPS      frames/s over all sending ports, k and M suffixes (default max)
  --size N            frame bytes without FCS, 64..9000 (default 64)
  --duration S        measured seconds (default 5)   --warmup S  uncounted (default 0.5)
  --burst N           frames per send call, 1..64 (default 32)
  --dst MAC           destination MAC (default ff:ff:ff:ff:ff:ff)
  --gen-core N        pin the generator (default: not pinned)
  --sink-core N       receive on a thread of its own on core N (default: same loop)
  --json FILE         write the result as JSON (- for stdout)
  --progress          a progress line each second (on by itself for runs >= 5 s)

Bench options:
  --runs N            rounds, systems alternating A B C A B C (default 5)
  --duration S --warmup S --size N --rate R --burst N    as above (rate default max)
  --latency-rate PPS  rate of the latency scenario (default 20000)
  --gen-core N        generator core (default 0)
  --sink-core N       separate sink thread on this core (default: generator's loop)
  --sut-cores LIST    cores of the system under test, e.g. 1 or 2-5 (default 1)
  --workers N         pollswitch/testpmd forwarding workers (default 1); bench
                      workers measures 1, 2, 4, ... below N and N, each W on the
                      first W of --sut-cores (e.g. --workers 8 --sut-cores 1-8)
  --poll-us N         pollswitch -poll-us (default 1000, the daemon's own default;
                      idle sweeps its own)
  --systems A,B       measure only these systems
  --ports LIST --sizes LIST   scale sweep (default 2,4,8,16,32 and 64,512,1518,9000)
  --pollswitch PATH   daemon binary (default: beside this program, else PATH)
  --pollswitch-args 'A B'  more daemon arguments (e.g. '-pool-size 4096')
  --gen-gso on|off    generator sends UDP bursts as one GSO send (default on; the
                      system's socket still receives one datagram per frame)
  --out DIR           where NAME.json and NAME.svg go (default perf-out)
  --quick             1 run of 0.5 s each, ports 2,8, sizes 64,9000: a smoke test
                      (options given explicitly still apply)
  --allow-fail        exit 0 even when some runs failed

Exit status: 0 success, 1 a run failed or a setup error, 2 usage.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
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

fn dispatch(args: &[String]) -> Result<ExitCode> {
    let Some(cmd) = args.first() else {
        eprint!("{USAGE}");
        return Ok(ExitCode::from(2));
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "run" | "gen" | "sink" => traffic_command(cmd, rest),
        "bench" => bench_command(rest),
        "plot" => plot_command(rest),
        "list" => {
            list();
            Ok(ExitCode::SUCCESS)
        }
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(PerfError::Usage(format!("unknown command {other:?}"))),
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

/// Option parser: `--name value`, `--name=value`, flags.
struct Args<'a> {
    items: &'a [String],
    pos: usize,
}

impl<'a> Args<'a> {
    fn new(items: &'a [String]) -> Args<'a> {
        Args { items, pos: 0 }
    }

    /// The next option name and its inline value, if any.
    fn next(&mut self) -> Option<(String, Option<String>)> {
        let item = self.items.get(self.pos)?;
        self.pos += 1;
        match item.split_once('=') {
            Some((k, v)) if k.starts_with("--") => Some((k.to_string(), Some(v.to_string()))),
            _ => Some((item.clone(), None)),
        }
    }

    fn value(&mut self, name: &str, inline: Option<String>) -> Result<String> {
        if let Some(v) = inline {
            return Ok(v);
        }
        let v = self
            .items
            .get(self.pos)
            .ok_or_else(|| PerfError::Usage(format!("{name} needs a value")))?;
        self.pos += 1;
        Ok(v.clone())
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T> {
    v.parse()
        .map_err(|_| PerfError::Usage(format!("{name} {v:?}: not a number")))
}

fn seconds(name: &str, v: &str) -> Result<Duration> {
    let s: f64 = number(name, v)?;
    if !(0.0..=86_400.0).contains(&s) {
        return Err(PerfError::Usage(format!("{name} {v}: 0 to 86400 seconds")));
    }
    Ok(Duration::from_secs_f64(s))
}

/// A core list: `1`, `0,2`, `1-3,5`.
fn cores(name: &str, v: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in v.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (number(name, a)?, number(name, b)?);
                if a > b {
                    return Err(PerfError::Usage(format!(
                        "{name} {v}: range {a}-{b} is backwards"
                    )));
                }
                out.extend(a..=b);
            }
            None => out.push(number(name, part)?),
        }
    }
    let cpus = perf::sys::core_times().len().max(perf::sys::online_cpus());
    if let Some(bad) = out.iter().find(|&&c| c >= cpus) {
        return Err(PerfError::Usage(format!(
            "{name}: no core {bad} (this machine has {cpus})"
        )));
    }
    Ok(out)
}

fn list_of(name: &str, v: &str) -> Result<Vec<usize>> {
    v.split(',').map(|x| number(name, x)).collect()
}

fn mac(v: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = v.split(':').collect();
    let bad = || PerfError::Usage(format!("--dst {v:?}: expected aa:bb:cc:dd:ee:ff"));
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(m)
}

fn traffic_command(cmd: &str, rest: &[String]) -> Result<ExitCode> {
    let mut cfg = traffic::Config::default();
    let mut tx_specs = Vec::new();
    let mut rx_specs = Vec::new();
    let mut json_out: Option<String> = None;
    let mut a = Args::new(rest);
    while let Some((name, inline)) = a.next() {
        match name.as_str() {
            "--tx" if cmd != "sink" => tx_specs.push(a.value(&name, inline)?),
            "--rx" if cmd != "gen" => rx_specs.push(a.value(&name, inline)?),
            "--rate" => cfg.rate = Rate::parse(&a.value(&name, inline)?)?,
            "--size" => cfg.size = number(&name, &a.value(&name, inline)?)?,
            "--duration" => cfg.duration = seconds(&name, &a.value(&name, inline)?)?,
            "--warmup" => cfg.warmup = seconds(&name, &a.value(&name, inline)?)?,
            "--burst" => cfg.burst = number(&name, &a.value(&name, inline)?)?,
            "--dst" => cfg.dst = mac(&a.value(&name, inline)?)?,
            "--gen-core" => cfg.gen_core = Some(number(&name, &a.value(&name, inline)?)?),
            "--sink-core" => cfg.sink_core = Some(number(&name, &a.value(&name, inline)?)?),
            "--json" => json_out = Some(a.value(&name, inline)?),
            "--progress" => cfg.progress = true,
            other => return Err(PerfError::Usage(format!("{cmd}: unknown option {other:?}"))),
        }
    }
    if cmd != "sink" && tx_specs.is_empty() {
        return Err(PerfError::Usage(format!(
            "{cmd}: give at least one --tx SPEC"
        )));
    }
    if cmd != "gen" && rx_specs.is_empty() {
        return Err(PerfError::Usage(format!(
            "{cmd}: give at least one --rx SPEC"
        )));
    }
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
    if let Some(path) = json_out {
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

fn plot_command(files: &[String]) -> Result<ExitCode> {
    if files.is_empty() {
        return Err(PerfError::Usage("plot: give report JSON files".into()));
    }
    for f in files {
        let path = PathBuf::from(f);
        let report = perf::report::Report::read(&path)?;
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

fn bench_command(rest: &[String]) -> Result<ExitCode> {
    let mut opts = BenchOpts::defaults();
    let mut names = Vec::new();
    let mut quick = false;
    let mut allow_fail = false;
    let mut explicit_duration = None;
    let mut explicit_runs = None;
    let mut explicit_warmup = None;
    let mut explicit_ports = None;
    let mut explicit_sizes = None;
    let mut sut_cores_given = false;
    let mut a = Args::new(rest);
    while let Some((name, inline)) = a.next() {
        match name.as_str() {
            "--runs" => explicit_runs = Some(number(&name, &a.value(&name, inline)?)?),
            "--duration" => explicit_duration = Some(seconds(&name, &a.value(&name, inline)?)?),
            "--warmup" => explicit_warmup = Some(seconds(&name, &a.value(&name, inline)?)?),
            "--size" => opts.size = number(&name, &a.value(&name, inline)?)?,
            "--rate" => opts.rate = Rate::parse(&a.value(&name, inline)?)?,
            "--latency-rate" => opts.latency_rate = number(&name, &a.value(&name, inline)?)?,
            "--burst" => opts.burst = number(&name, &a.value(&name, inline)?)?,
            "--gen-core" => opts.gen_core = number(&name, &a.value(&name, inline)?)?,
            "--sink-core" => opts.sink_core = Some(number(&name, &a.value(&name, inline)?)?),
            "--sut-cores" => {
                opts.sut_cores = cores(&name, &a.value(&name, inline)?)?;
                sut_cores_given = true;
            }
            "--workers" => opts.workers = number(&name, &a.value(&name, inline)?)?,
            "--poll-us" => opts.poll_us = number(&name, &a.value(&name, inline)?)?,
            "--systems" => {
                opts.systems = Some(
                    a.value(&name, inline)?
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--ports" => explicit_ports = Some(list_of(&name, &a.value(&name, inline)?)?),
            "--sizes" => explicit_sizes = Some(list_of(&name, &a.value(&name, inline)?)?),
            "--pollswitch" => opts.pollswitch = PathBuf::from(a.value(&name, inline)?),
            "--pollswitch-args" => {
                opts.pollswitch_args = a
                    .value(&name, inline)?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            "--gen-gso" => {
                opts.gen_gso = match a.value(&name, inline)?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(PerfError::Usage(format!("--gen-gso {v}: on or off"))),
                }
            }
            "--out" => opts.out_dir = PathBuf::from(a.value(&name, inline)?),
            "--quick" => quick = true,
            "--progress" => opts.progress = true,
            "--allow-fail" => allow_fail = true,
            n if !n.starts_with('-') => names.push(n.to_string()),
            other => return Err(PerfError::Usage(format!("bench: unknown option {other:?}"))),
        }
    }
    if quick {
        opts.quick();
    }
    opts.runs = explicit_runs.unwrap_or(opts.runs);
    opts.duration = explicit_duration.unwrap_or(opts.duration);
    opts.warmup = explicit_warmup.unwrap_or(opts.warmup);
    opts.ports = explicit_ports.unwrap_or(opts.ports);
    opts.sizes = explicit_sizes.unwrap_or(opts.sizes);
    if opts.workers == 0 || opts.runs == 0 || opts.duration.is_zero() {
        return Err(PerfError::Usage(
            "--workers, --runs and --duration must be above 0".into(),
        ));
    }
    if !sut_cores_given && opts.workers > 1 {
        // One core per worker after the generator's.
        opts.sut_cores = (1..=opts.workers).collect();
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
    let scenarios: Vec<&bench::Scenario> = match names.as_slice() {
        [] => return Err(PerfError::Usage("bench: name a scenario (or all)".into())),
        [n] if n == "all" => SCENARIOS.iter().collect(),
        list => list.iter().map(|n| bench::find(n)).collect::<Result<_>>()?,
    };
    opts.command_line = format!("pollswitch-perf bench {}", rest.join(" "));
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
    if all_ok || allow_fail {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("pollswitch-perf: some runs failed (see the tables and the JSON)");
        Ok(ExitCode::from(1))
    }
}
