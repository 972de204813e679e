//! `scale`: throughput against the number of ports on one hub (2..32, 64-byte frames)
//! and against frame size (64, 512, 1518, 9000 bytes, two ports), UDP socket ports.
//!
//! Every port sends (round robin, one burst at a time) and every port receives, so a
//! hub of N ports turns each frame in into N-1 frames out: "offered" is what entered
//! the switch, "delivered" what reached the sinks. Both count, because a hub's work
//! grows with the fan-out while a poll-mode switch also pays for every idle port it
//! polls.

use serde_json::json;

use crate::bench::{measure, rounds, say, udp_links, BenchOpts, Job, Scenario};
use crate::error::Result;
use crate::frame;
use crate::peer::{self, Topology};
use crate::report::{Report, Series};
use crate::svg::{color, Line, Svg};
use crate::traffic::Roles;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "scale",
    about: "Mpps against ports on one hub (2..32) and frame size (64..9000), UDP ports",
    systems: &["pollswitch", "qemu", "vde"],
    run,
    plot,
};

/// A point of the sweep.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    ports: usize,
    size: usize,
}

fn points(opts: &BenchOpts) -> Vec<Point> {
    let mut out: Vec<Point> = opts
        .ports
        .iter()
        .map(|&ports| Point { ports, size: 64 })
        .collect();
    for &size in &opts.sizes {
        let p = Point { ports: 2, size };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["ports"] = json!(opts.ports);
    params["sizes"] = json!(opts.sizes);
    params["rate"] = json!(opts.rate.label());
    let mut report = opts.report(&SCENARIO, params);
    let mut cases: Vec<(&peer::System, Point, Series)> = Vec::new();
    for p in points(opts) {
        for sys in systems {
            let label = format!("{} {} ports {} B", sys.name, p.ports, p.size);
            let params = json!({"ports": p.ports, "size": p.size});
            cases.push((sys, p, Series::new(sys.name, &label, params)));
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.2,
        say,
        |(sys, p, s), run| match udp_links(p.ports) {
            Ok(links) => {
                let topology = Topology::UdpHub(links);
                let all: Vec<usize> = (0..p.ports).collect();
                let roles = Roles {
                    tx: all.clone(),
                    rx: all,
                };
                let cfg = opts.traffic(opts.rate, p.size, frame::BROADCAST);
                let job = Job {
                    topology: &topology,
                    roles: &roles,
                    cfg: &cfg,
                    sut: &opts.sut(p.size),
                    gen_gso: opts.gen_gso,
                    ndr: None,
                };
                measure(sys, &job, run, &mut s.command)
            }
            Err(e) => crate::report::Sample {
                run,
                error: Some(e.to_string()),
                ..Default::default()
            },
        },
    );
    report.series = cases
        .into_iter()
        .map(|(_, _, mut s)| {
            s.summarize();
            s
        })
        .collect();
    report.notes.push(
        "every port sends and receives; tx Mpps = frames offered to the switch, rx Mpps = \
         frames delivered (each input frame is due at every other port)"
            .into(),
    );
    Ok(report)
}

/// Lines of `metric` against `x` (a params field) for one fixed other param.
fn lines_of(report: &Report, x: &str, fixed: (&str, u64), metric: fn(&Series) -> f64) -> Vec<Line> {
    let mut systems: Vec<String> = Vec::new();
    for s in &report.series {
        if !systems.contains(&s.system) {
            systems.push(s.system.clone());
        }
    }
    systems
        .iter()
        .map(|sys| Line {
            name: sys.clone(),
            points: report
                .series
                .iter()
                .filter(|s| &s.system == sys && s.params[fixed.0].as_u64() == Some(fixed.1))
                .filter_map(|s| Some((s.params[x].as_f64()?, metric(s))))
                .collect(),
            color: color(sys).into(),
        })
        .collect()
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1200.0,
        470.0,
        "scale: UDP ports on one hub, every port sending and receiving, max rate",
        &report.machine.line(),
    );
    let delivered = |s: &Series| s.median(|m| m.rx_mpps);
    let offered = |s: &Series| s.median(|m| m.tx_mpps);
    let gbps = |s: &Series| s.median(|m| m.rx_gbps);
    let mut by_ports = lines_of(report, "ports", ("size", 64), delivered);
    for l in lines_of(report, "ports", ("size", 64), offered) {
        by_ports.push(Line {
            name: format!("{} offered", l.name),
            color: format!("{}80", l.color),
            ..l
        });
    }
    svg.lines(
        (0.0, 55.0, 420.0, 390.0),
        "64-byte frames: delivered and offered",
        ("ports on the hub", "Mpps"),
        &by_ports,
        true,
    );
    svg.lines(
        (420.0, 55.0, 390.0, 390.0),
        "2 ports: delivered",
        ("frame bytes", "Mpps"),
        &lines_of(report, "size", ("ports", 2), delivered),
        true,
    );
    svg.lines(
        (810.0, 55.0, 390.0, 390.0),
        "2 ports: delivered",
        ("frame bytes", "Gbit/s"),
        &lines_of(report, "size", ("ports", 2), gbps),
        true,
    );
    svg.footer(&report.command);
    svg.finish()
}
