//! `idle`: CPU a switch uses with two UDP ports up and no traffic — pollswitch with
//! `-poll-us` 0, 50 and 1000, and QEMU's hub and vde_switch beside it. CPU time is the
//! sum over the process's threads (`/proc/PID/task/*/schedstat`, nanoseconds).
//!
//! After the idle window a short burst of traffic checks that the switch still
//! forwards: a switch that idles because it is stuck must not pass.
//!
//! Target: under 1 % of a core with poll-us=0.

use std::thread;
use std::time::Duration;

use serde_json::json;

use crate::bench::{rounds, say, target, udp_links, BenchOpts, Scenario};
use crate::engine;
use crate::error::{chain, Result};
use crate::frame;
use crate::peer::{self, Topology};
use crate::report::{Report, Sample, Series};
use crate::svg::{color, Bar, Svg};
use crate::sys;
use crate::traffic::{self, Rate, Roles};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "idle",
    about: "CPU used with no traffic: pollswitch at poll-us 0, 50, 1000; QEMU's hub; vde_switch",
    systems: &["pollswitch", "qemu", "vde"],
    run,
    plot,
};

/// pollswitch's poll-us values measured.
pub const POLL_US: [u32; 3] = [0, 50, 1000];
/// Time between start and the idle window.
const SETTLE: Duration = Duration::from_millis(500);

fn measure_idle(
    sys: &peer::System,
    opts: &BenchOpts,
    poll_us: u32,
    run: usize,
    command: &mut String,
) -> Sample {
    let mut sample = Sample {
        run,
        ..Sample::default()
    };
    let topology = match udp_links(2) {
        Ok(l) => Topology::UdpHub(l),
        Err(e) => {
            sample.error = Some(e.to_string());
            return sample;
        }
    };
    let mut sut = opts.sut(opts.size);
    sut.poll_us = poll_us;
    let mut running = match (sys.start)(&topology, &sut) {
        Ok(r) => r,
        Err(e) => {
            sample.error = Some(format!("start: {}", chain(&e)));
            return sample;
        }
    };
    *command = running.command();
    // The endpoints exist during the idle window too, as they would with a quiet peer.
    let ports: Result<Vec<_>> = running
        .endpoints()
        .iter()
        .map(|s| {
            engine::open(&if opts.gen_gso || !s.starts_with("udp:") {
                s.clone()
            } else {
                format!("{s},gso=off")
            })
        })
        .collect();
    thread::sleep(SETTLE.min(opts.duration));
    let pids = running.pids();
    let cpu = |pids: &[(String, u32)]| -> Option<u64> {
        pids.iter().map(|(_, p)| sys::process_cpu_ns(*p)).sum()
    };
    let (c0, t0) = (cpu(&pids), frame::now_ns());
    thread::sleep(opts.duration);
    let (c1, t1) = (cpu(&pids), frame::now_ns());
    match (c0, c1) {
        (Some(a), Some(b)) => {
            sample.idle_cpu_pct = Some(100.0 * b.saturating_sub(a) as f64 / (t1 - t0) as f64)
        }
        _ => sample.error = Some("the process went away during the idle window".into()),
    }
    // Still forwarding?
    let check = ports.and_then(|ports| {
        let cfg = traffic::Config {
            rate: Rate::Pps(2_000.0),
            duration: Duration::from_millis(200),
            warmup: Duration::from_millis(20),
            gen_core: Some(opts.gen_core),
            dst: frame::mac(1),
            ..traffic::Config::default()
        };
        traffic::run(
            ports,
            &Roles {
                tx: vec![0],
                rx: vec![1],
            },
            &cfg,
        )
    });
    match check {
        Ok(o) if o.received > 0 => sample.diagnostics.push(format!(
            "forwarding check after the idle window: sent {}, received {}",
            o.sent, o.received
        )),
        Ok(o) => {
            sample.error.get_or_insert(format!(
                "forwarded nothing after idling (sent {}, received 0)",
                o.sent
            ));
        }
        Err(e) => {
            sample
                .error
                .get_or_insert(format!("forwarding check: {}", chain(&e)));
        }
    }
    if let Err(e) = running.stop() {
        let text = format!("stop: {}", chain(&e));
        sample.error = Some(match sample.error.take() {
            Some(prev) => format!("{prev}; {text}"),
            None => text,
        });
    }
    sample
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["poll_us_values"] = json!(POLL_US);
    let mut report = opts.report(&SCENARIO, params);
    let mut cases: Vec<(&peer::System, u32, Series)> = Vec::new();
    for sys in systems {
        if sys.name == "pollswitch" {
            for p in POLL_US {
                let label = format!("pollswitch poll-us={p}");
                cases.push((sys, p, Series::new(sys.name, &label, json!({"poll_us": p}))));
            }
        } else {
            cases.push((
                sys,
                opts.poll_us,
                Series::new(sys.name, sys.name, json!({})),
            ));
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.2,
        say,
        |(sys, p, s), run| measure_idle(sys, opts, *p, run, &mut s.command),
    );
    report.series = cases
        .into_iter()
        .map(|(_, _, mut s)| {
            s.summarize();
            s
        })
        .collect();
    if let Some(s) = report.series("pollswitch poll-us=0") {
        let v = s.median(|m| m.idle_cpu_pct);
        report.targets.push(target(
            "idle: pollswitch poll-us=0 < 1 % of a core",
            v,
            1.0,
            true,
        ));
    }
    report.notes.push(format!(
        "CPU over a {:.1} s window starting {:.1} s after start, no traffic; percent of one core",
        opts.duration.as_secs_f64(),
        SETTLE.min(opts.duration).as_secs_f64()
    ));
    Ok(report)
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        900.0,
        470.0,
        "idle: CPU with no traffic",
        &report.machine.line(),
    );
    let bars: Vec<Bar> = report
        .series
        .iter()
        .map(|s| Bar {
            label: s.label.clone(),
            value: s.median(|m| m.idle_cpu_pct),
            range: s.summary.idle_cpu_pct.map(|x| (x.min, x.max)),
            color: color(&s.system).into(),
        })
        .collect();
    svg.bars(
        (0.0, 55.0, 900.0, 390.0),
        "CPU used (median, min–max)",
        "% of one core",
        &bars,
    );
    svg.footer(&report.command);
    svg.finish()
}
