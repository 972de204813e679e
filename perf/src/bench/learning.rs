//! `learning`: a learning hub against a flooding one, the switch core alone (in-memory
//! `x-null` ports, one worker), against the number of ports and the number of
//! addresses the table holds.
//!
//! ```text
//!  P ports p0..p{P-1} on hub 0, every one a source and a sink (x-null mode=both).
//!  Port k sends from 02:00:kk:00:00:00 + i to 02:00:(k+1)%P:00:00:00 + i, i cycling
//!  over M/P flows: its destinations are exactly port k+1's sources.
//!
//!  flood:  a plain hub: every frame to the P-1 other ports (one buffer, P-1 references)
//!  learn:  x-learning=on: once each address was seen, every frame to one port
//! ```
//!
//! Ports sweep (`--ports`): M = P (one address per port), flood and learn. Table sweep
//! (`--macs`): learn, 2 ports, M addresses in a table sized for them (`x-fdb-size=M`).
//! The measure is the frames the switch took in per second (what the sources made while
//! the one worker kept up): it is what the worker's forwarding costs, whatever the
//! fan-out. Each learn run proves its premise: after the window the table holds exactly
//! M addresses (none overflowed), and the sinks took one frame per frame made.
//!
//! Targets (issue 14): learning costs less than flooding from 3 ports up (learn ÷ flood
//! ≥ 1 at every P ≥ 3); a 100 000-address table costs under 10 % against a 10-address
//! one (Mpps ratio ≥ 0.9).

use serde_json::{json, Value};
use testbed::QmpClient;

use crate::bench::workers::POOL_SIZE;
use crate::bench::xnull::{self, Stats};
use crate::bench::{not_measured, rounds, summarized, target, BenchOpts, Scenario};
use crate::error::{PerfError, Result};
use crate::peer;
use crate::report::{Cores, Ratio, Report, Sample, Series};
use crate::svg::{color, Bar, Svg};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "learning",
    about: "learning hub against flooding hub, switch core alone (x-null ports, one worker): \
            Mpps against ports (--ports) and learned addresses (--macs)",
    systems: &["pollswitch"],
    run,
    plot,
};

const PORTS_TARGET: &str = "learning costs less than flooding from 3 ports up";
const TABLE_TARGET: &str = "a 100 000-address table costs < 10 % against a 10-address one";
/// Port count of the table sweep.
const TABLE_PORTS: usize = 2;

/// A plain hub or a learning one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Flood,
    Learn,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Flood => "flood",
            Mode::Learn => "learn",
        }
    }
}

struct Case {
    mode: Mode,
    ports: usize,
    macs: usize,
    series: Series,
}

fn label(mode: Mode, ports: usize, macs: Option<usize>) -> String {
    match macs {
        Some(m) => format!("{} {ports} ports {m} MACs", mode.name()),
        None => format!("{} {ports} ports", mode.name()),
    }
}

/// The daemon's `-netdev` arguments for one case.
fn netdevs(mode: Mode, ports: usize, macs: usize, size: usize) -> Vec<String> {
    let flows = (macs / ports).max(1);
    let mut specs = Vec::new();
    for k in 0..ports {
        specs.push(format!(
            "x-null,id=p{k},mode=both,size={size},src=02:00:{k:02x}:00:00:00,\
             dst=02:00:{:02x}:00:00:00,flows={flows}",
            (k + 1) % ports
        ));
    }
    for k in 0..ports {
        let learn = match (mode, k) {
            (Mode::Learn, 0) => format!(",x-learning=on,x-fdb-size={}", macs.max(16)),
            _ => String::new(),
        };
        specs.push(format!("hubport,id=h{k},hubid=0,netdev=p{k}{learn}"));
    }
    specs
        .into_iter()
        .flat_map(|s| ["-netdev".to_string(), s])
        .collect()
}

fn daemon_args(opts: &BenchOpts, case: &Case) -> Vec<String> {
    let mut a = netdevs(case.mode, case.ports, case.macs, opts.size);
    a.extend([
        "-cores".to_string(),
        opts.sut_cores[0].to_string(),
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

/// What `x-query-fdb` says of hub 0: entries and overflow.
fn table(qmp: &mut QmpClient) -> Result<(usize, u64)> {
    let v = qmp
        .try_execute_ok("x-query-fdb", json!({"hubid": 0}))
        .map_err(|e| PerfError::peer("pollswitch", format!("QMP x-query-fdb: {e}")))?;
    let hub = &v[0];
    let entries = hub["entries"].as_array().map(Vec::len);
    match (entries, hub["overflow"].as_u64()) {
        (Some(n), Some(o)) => Ok((n, o)),
        _ => Err(PerfError::peer(
            "pollswitch",
            format!("x-query-fdb reply without entries: {v}"),
        )),
    }
}

fn window(
    qmp: &mut QmpClient,
    opts: &BenchOpts,
    case: &Case,
    pid: u32,
    sample: &mut Sample,
) -> Result<()> {
    let names: Vec<String> = (0..case.ports).map(|k| format!("p{k}")).collect();
    let p = case.ports;
    let mut one_worker = |_: &mut QmpClient, first: &Stats| -> Result<()> {
        let placed: Vec<u64> = first.workers.iter().map(|x| x.ports).collect();
        if placed == vec![p as u64] {
            return Ok(());
        }
        Err(PerfError::peer(
            "pollswitch",
            format!("ports per worker {placed:?}, not all {p} on one worker"),
        ))
    };
    let m = xnull::window(qmp, opts, pid, &names, &names, &mut one_worker)?;
    let fan_out = m.outcome.received as f64 / m.outcome.sent.max(1) as f64;
    let mut diagnostics = vec![format!(
        "{:.3} Mpps taken in, {:.3} Mpps delivered: {fan_out:.2} frames out per frame in",
        m.outcome.tx_pps / 1e6,
        m.outcome.rx_pps / 1e6
    )];
    let mut detail = json!({
        "mode": case.mode.name(), "ports": p, "macs": case.macs, "fan_out": fan_out,
        "drops_by_reason": m.by_reason,
    });
    // The premise: flooding copies to every other port, learning to one, with every
    // address in the table.
    let expected_fan_out = match case.mode {
        Mode::Flood => (p - 1) as f64,
        Mode::Learn => 1.0,
    };
    if (fan_out - expected_fan_out).abs() > 0.01 * expected_fan_out {
        return Err(PerfError::peer(
            "pollswitch",
            format!(
                "{} frames out per frame in, not {expected_fan_out}: the hub did not {} as \
                 this case needs",
                fan_out,
                case.mode.name()
            ),
        ));
    }
    if case.mode == Mode::Learn {
        let want = (case.macs / p).max(1) * p;
        let (held, overflow) = table(qmp)?;
        diagnostics.push(format!(
            "table: {held} addresses (of {want} sent from), {overflow} overflowed"
        ));
        detail["table_entries"] = json!(held);
        if held != want || overflow != 0 {
            return Err(PerfError::peer(
                "pollswitch",
                format!("the table holds {held} addresses ({overflow} overflowed), not {want}"),
            ));
        }
    }
    diagnostics.extend(m.diagnostics());
    sample.detail = Some(detail);
    sample.switch_drops = Some(m.drops());
    sample.sut_cpu_pct = Some(m.sut_cpu_pct);
    sample.diagnostics = diagnostics;
    sample.outcome = Some(m.outcome);
    Ok(())
}

/// The median frames taken in, Mpps, of series `label`.
fn taken_in(report: &Report, label: &str) -> f64 {
    report
        .series(label)
        .map_or(f64::NAN, |s| s.median(|m| m.tx_mpps))
}

fn run(opts: &BenchOpts, _systems: &[&'static peer::System]) -> Result<Report> {
    let bin = peer::require(&opts.pollswitch.to_string_lossy())?;
    let mut params = opts.params();
    if let Some(p) = params.as_object_mut() {
        p.remove("burst");
        p.remove("generator_udp_gso");
    }
    params["ports"] = json!(opts.ports);
    params["macs"] = json!(opts.macs);
    params["table_ports"] = json!(TABLE_PORTS);
    params["poll_us"] = json!(0);
    params["pool_size"] = json!(POOL_SIZE);
    params["size"] = json!(opts.size);
    let mut report = opts.report(&SCENARIO, params);
    let core = opts.sut_cores[0];
    report.cores = Cores {
        generator: None,
        sink: None,
        system_under_test: vec![core],
        workers: 1,
        used: 1,
        online: testbed::cpu::online(),
        note: format!(
            "no generator or sink thread (the ports are the daemon's own x-null netdevs); one \
             worker pinned with -cores to core {core}, the daemon confined (taskset) to it"
        ),
    };
    let mut cases = Vec::new();
    let case = |mode, ports, macs, lbl: String| Case {
        mode,
        ports,
        macs,
        series: Series::new(
            "pollswitch",
            &lbl,
            json!({"mode": mode.name(), "ports": ports, "macs": macs, "size": opts.size}),
        ),
    };
    for &p in &opts.ports {
        for mode in [Mode::Flood, Mode::Learn] {
            cases.push(case(mode, p, p, label(mode, p, None)));
        }
    }
    for &m in &opts.macs {
        let lbl = label(Mode::Learn, TABLE_PORTS, Some(m));
        cases.push(case(Mode::Learn, TABLE_PORTS, m, lbl));
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.series,
        xnull::say,
        |c, run| {
            let mut command = String::new();
            let args = daemon_args(opts, c);
            let sample = xnull::measure_once(
                &bin,
                &args,
                &[core],
                run,
                &mut command,
                &mut |qmp, pid, sample| window(qmp, opts, c, pid, sample),
            );
            c.series.command = command;
            sample
        },
    );
    report.series = summarized(cases.into_iter().map(|c| c.series));

    let mut from_three = Vec::new();
    for &p in &opts.ports {
        let r = taken_in(&report, &label(Mode::Learn, p, None))
            / taken_in(&report, &label(Mode::Flood, p, None));
        report.ratios.push(Ratio {
            what: format!("learn ÷ flood, {p} ports (frames taken in per second)"),
            value: r,
        });
        if p >= 3 {
            from_three.push(r);
        }
    }
    // The worst ratio decides; a missing one (NaN) fails the target.
    let worst = from_three.iter().copied().reduce(|a, b| {
        if a.is_nan() || b.is_nan() {
            f64::NAN
        } else {
            a.min(b)
        }
    });
    report.targets.push(match worst {
        Some(w) => target(PORTS_TARGET, w, 1.0, false),
        None => not_measured(PORTS_TARGET, "no port count of 3 or more was measured"),
    });
    let small = label(Mode::Learn, TABLE_PORTS, Some(10));
    let big = label(Mode::Learn, TABLE_PORTS, Some(100_000));
    for &m in &opts.macs {
        report.ratios.push(Ratio {
            what: format!("{} ÷ {small}", label(Mode::Learn, TABLE_PORTS, Some(m))),
            value: taken_in(&report, &label(Mode::Learn, TABLE_PORTS, Some(m)))
                / taken_in(&report, &small),
        });
    }
    report.targets.push(
        if report.series(&small).is_some() && report.series(&big).is_some() {
            target(
                TABLE_TARGET,
                taken_in(&report, &big) / taken_in(&report, &small),
                0.9,
                false,
            )
        } else {
            not_measured(TABLE_TARGET, "--macs did not include both 10 and 100000")
        },
    );
    report.notes.push(format!(
        "the switch core alone: every port is an in-memory x-null netdev (mode=both) of the \
         daemon, {} B frames, one worker; Mpps taken in = frames the sources made in the \
         window (QMP x-query-stats before and after) ÷ elapsed, which the worker's \
         forwarding bounds; rx Mpps = frames the sinks took (P-1 per frame when flooding)",
        opts.size
    ));
    report.notes.push(
        "port k sends from 02:00:kk:00:00:00 + i to port k+1's addresses (i over M/P flows), \
         so once the table is warm every frame of a learning hub is a known unicast; each \
         learn run checks after its window that the table holds all M addresses and that \
         one frame went out per frame in"
            .into(),
    );
    Ok(report)
}

fn params_of(s: &Series) -> (String, usize, usize) {
    let v: &Value = &s.params;
    (
        v["mode"].as_str().unwrap_or("").to_string(),
        v["ports"].as_u64().unwrap_or(0) as usize,
        v["macs"].as_u64().unwrap_or(0) as usize,
    )
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1200.0,
        470.0,
        "learning: learning hub vs flooding hub, switch core alone (x-null ports, 1 worker)",
        &report.machine.line(),
    );
    let bar = |s: &Series| {
        let (mode, _, _) = params_of(s);
        Bar {
            label: s.label.clone(),
            value: s.median(|m| m.tx_mpps),
            range: s.summary.tx_mpps.map(|x| (x.min, x.max)),
            color: if mode == "flood" {
                format!("{}80", color(&s.system))
            } else {
                color(&s.system).to_string()
            },
        }
    };
    let by_ports: Vec<Bar> = report
        .series
        .iter()
        .filter(|s| !s.label.contains("MACs"))
        .map(bar)
        .collect();
    let by_macs: Vec<Bar> = report
        .series
        .iter()
        .filter(|s| s.label.contains("MACs"))
        .map(bar)
        .collect();
    svg.bars(
        (0.0, 55.0, 700.0, 390.0),
        "frames taken in against ports (median, min–max)",
        "Mpps",
        &by_ports,
    );
    svg.bars(
        (700.0, 55.0, 500.0, 390.0),
        "learning, 2 ports, against addresses in the table",
        "Mpps",
        &by_macs,
    );
    svg.footer(&report.command);
    svg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_port_sends_to_the_next_ports_addresses() {
        let a = netdevs(Mode::Learn, 3, 300, 64).join(" ");
        assert!(a.contains(
            "x-null,id=p0,mode=both,size=64,src=02:00:00:00:00:00,dst=02:00:01:00:00:00,\
             flows=100"
        ));
        assert!(a.contains("id=p2,mode=both,size=64,src=02:00:02:00:00:00,dst=02:00:00:"));
        assert!(a.contains("hubport,id=h0,hubid=0,netdev=p0,x-learning=on,x-fdb-size=300"));
        assert!(a.contains("hubport,id=h1,hubid=0,netdev=p1 "));
        let f = netdevs(Mode::Flood, 2, 2, 64).join(" ");
        assert!(!f.contains("x-learning") && f.contains("flows=1"));
        assert_eq!(label(Mode::Flood, 4, None), "flood 4 ports");
        assert_eq!(label(Mode::Learn, 2, Some(10)), "learn 2 ports 10 MACs");
    }
}
