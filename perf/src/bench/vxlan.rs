//! `vxlan`: pollswitch's `x-vxlan` port as the sending VTEP against the kernel's own
//! `vxlan` device, into the same receiving kernel VTEP, in the same run: 64-byte Mpps
//! and one TCP stream's Gbit/s.
//!
//! ```text
//!  pollswitch:  netns A: AF_PACKET / iperf3 ─► tap ─► pollswitch (netns U1, x-vxlan) ─┐
//!  kernel:      netns A: AF_PACKET / iperf3 ─► vxlan device (socket in U1) ───────────┤
//!                 UDP 4789 over a veth, 10.99.0.1 (U1) → 10.99.0.2 (U2), MTU 1600    │
//!  both:        netns B: AF_PACKET sink / iperf3 -s ◄─ vxlan device (socket in U2) ◄─┘
//! ```
//!
//! Every run makes fresh namespaces. The generator and sink run on `--gen-core`;
//! pollswitch's worker on the first `--sut-cores` core. The kernel's VTEP has no
//! process: its work runs in the generator's system calls and in softirq, wherever the
//! kernel puts it. The kernel devices keep their offloads (the kernel VTEP sends
//! TSO super-frames through the tunnel), except that B's device checksums in software
//! (`ethtool -K tx off`): on a veth nothing else fills in an inner checksum left to
//! "hardware", and pollswitch would forward it unfilled.

use std::time::Duration;

use serde_json::json;
use testbed::process::{Process, Signal};
use testbed::{unique, Netns, VethPair};

use crate::bench::{rounds, say, summarized, BenchOpts, Scenario};

/// Prints one run's line: a TCP run's rate in Gbit/s, a frames run as every scenario.
fn say_run(label: &str, s: &Sample) {
    match (&s.outcome, &s.error) {
        (Some(o), None) if o.rate == "TCP" => {
            eprintln!("  run {} {label}: {:.2} Gbit/s received", s.run, o.rx_gbps)
        }
        _ => say(label, s),
    }
}
use crate::engine;
use crate::error::{chain, Result};
use crate::frame;
use crate::peer::{self, pollswitch::READY};
use crate::report::{Ratio, Report, Sample, Series};
use crate::svg::{color, Bar, Svg};
use crate::traffic::{self, Outcome, Roles};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "vxlan",
    about: "x-vxlan port against the kernel's vxlan device as the sending VTEP: 64 B Mpps and \
            TCP Gbit/s (iperf3) into a kernel VTEP",
    systems: &["pollswitch"],
    run,
    plot,
};

const VNI: &str = "4242";

/// The sending VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vtep {
    Pollswitch,
    Kernel,
}

impl Vtep {
    fn name(self) -> &'static str {
        match self {
            Vtep::Pollswitch => "pollswitch",
            Vtep::Kernel => "kernel-vxlan",
        }
    }
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Frames,
    Tcp,
}

struct Case {
    vtep: Vtep,
    measure: Measure,
    series: Series,
}

/// One run's network: the underlay namespaces, the hosts, the sending interface in A
/// and the receiving one in B, and the daemon when pollswitch sends.
struct Net {
    a: Netns,
    b: Netns,
    _u1: Netns,
    _u2: Netns,
    _veth: VethPair,
    sender: String,
    receiver: String,
    daemon: Option<Process>,
}

fn ip(ns: &Netns, args: &[&str]) -> Result<()> {
    ns.ip(args)?;
    Ok(())
}

/// A kernel VTEP `name` made in `under` (its socket stays there), moved into `host`
/// with address `cidr`.
fn kernel_vtep(
    under: &Netns,
    host: &Netns,
    name: &str,
    local: &str,
    remote: &str,
    cidr: &str,
) -> Result<()> {
    ip(
        under,
        &[
            "link", "add", name, "type", "vxlan", "id", VNI, "dstport", "4789", "local", local,
            "remote", remote,
        ],
    )?;
    ip(under, &["link", "set", name, "netns", &host.name])?;
    ip(host, &["addr", "add", cidr, "dev", name])?;
    ip(host, &["link", "set", name, "up"])
}

fn build(opts: &BenchOpts, vtep: Vtep) -> Result<Net> {
    let (u1, u2) = (Netns::create("pvu")?, Netns::create("pvk")?);
    let (a, b) = (Netns::create("pva")?, Netns::create("pvb")?);
    let veth = VethPair::create("pvx", "pvy")?;
    veth.move_ends(&u1, &u2, 1600)?;
    ip(&u1, &["addr", "add", "10.99.0.1/24", "dev", &veth.a])?;
    ip(&u2, &["addr", "add", "10.99.0.2/24", "dev", &veth.b])?;
    let receiver = unique("pvr");
    kernel_vtep(&u2, &b, &receiver, "10.99.0.2", "10.99.0.1", "10.88.0.2/24")?;
    b.run(&["ethtool", "-K", &receiver, "tx", "off"])?;
    let sender = unique("pvs");
    let daemon = match vtep {
        Vtep::Kernel => {
            kernel_vtep(&u1, &a, &sender, "10.99.0.1", "10.99.0.2", "10.88.0.1/24")?;
            None
        }
        Vtep::Pollswitch => {
            let bin = peer::require(&opts.pollswitch.to_string_lossy())?;
            let mut args: Vec<String> = [
                "-netdev".to_string(),
                format!("tap,id=t,ifname={sender},script=no,downscript=no"),
                "-netdev".into(),
                "hubport,id=ht,hubid=0,netdev=t".into(),
                "-netdev".into(),
                format!("x-vxlan,id=vx,vni={VNI},remote=10.99.0.2,local=10.99.0.1"),
                "-netdev".into(),
                "hubport,id=hv,hubid=0,netdev=vx".into(),
                "-cores".into(),
                opts.sut_cores[0].to_string(),
                "-poll-us".into(),
                opts.poll_us.to_string(),
            ]
            .to_vec();
            args.extend(opts.pollswitch_args.iter().cloned());
            let mut p = peer::spawn(
                "pollswitch",
                &bin,
                &args,
                Some(&u1.name),
                &opts.sut_cores[..1],
            )?;
            p.wait_for(READY, Duration::from_secs(10))?;
            ip(&u1, &["link", "set", "dev", &sender, "netns", &a.name])?;
            ip(&a, &["addr", "add", "10.88.0.1/24", "dev", &sender])?;
            ip(&a, &["link", "set", "dev", &sender, "up"])?;
            Some(p)
        }
    };
    Ok(Net {
        a,
        b,
        _u1: u1,
        _u2: u2,
        _veth: veth,
        sender,
        receiver,
        daemon,
    })
}

/// 64-byte (or `--size`) frames from A's interface to B's, as fast as they go.
fn frames(opts: &BenchOpts, net: &Net) -> Result<Outcome> {
    let tx = engine::open(&format!("tap:ifname={},netns={}", net.sender, net.a.name))?;
    let rx = engine::open(&format!("tap:ifname={},netns={}", net.receiver, net.b.name))?;
    let mut cfg = opts.traffic(opts.rate, opts.size, frame::BROADCAST);
    if let Some(p) = &net.daemon {
        cfg.watch = vec![("pollswitch".into(), p.pid())];
    }
    traffic::run(
        vec![tx, rx],
        &Roles {
            tx: vec![0],
            rx: vec![1],
        },
        &cfg,
    )
}

/// One iperf3 TCP stream from A to B for the window; the receiver's rate.
fn tcp(opts: &BenchOpts, net: &Net) -> Result<Outcome> {
    let secs = format!("{:.1}", opts.duration.as_secs_f64().max(1.0));
    let omit = format!("{:.0}", opts.warmup.as_secs_f64().ceil());
    let t = testbed::iperf::tcp(&net.b, "10.88.0.2", &net.a, &["-t", &secs, "-O", &omit])?;
    Ok(Outcome {
        size: 1500,
        rate: "TCP".into(),
        duration_s: t.seconds,
        rx_gbps: t.gbps,
        ..Outcome::default()
    })
}

fn measure_once(opts: &BenchOpts, case: &Case, run: usize, command: &mut String) -> Sample {
    let mut sample = Sample {
        run,
        ..Sample::default()
    };
    let result = build(opts, case.vtep).and_then(|mut net| {
        if let Some(p) = &net.daemon {
            *command = p.command().to_string();
        }
        let r = match case.measure {
            Measure::Frames => frames(opts, &net),
            Measure::Tcp => tcp(opts, &net),
        };
        if let Some(mut p) = net.daemon.take() {
            sample.sut_cpu_pct = r
                .as_ref()
                .ok()
                .and_then(|o| o.cpu.watched_pct.first().map(|w| w.1));
            if let Err(e) = peer::stop(&mut p, Signal::TERM, Duration::from_secs(5), false) {
                sample.diagnostics.push(format!("stop: {}", chain(&e)));
            }
        }
        r
    });
    match result {
        Ok(o) => sample.outcome = Some(o),
        Err(e) => sample.error = Some(chain(&e)),
    }
    sample
}

fn label(vtep: Vtep, measure: Measure, size: usize) -> String {
    match measure {
        Measure::Frames => format!("{} {size} B frames", vtep.name()),
        Measure::Tcp => format!("{} TCP", vtep.name()),
    }
}

fn run(opts: &BenchOpts, _systems: &[&'static peer::System]) -> Result<Report> {
    for tool in ["iperf3", "ethtool", "ss"] {
        peer::require(tool)?;
    }
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["vni"] = json!(VNI);
    params["underlay_mtu"] = json!(1600);
    let mut report = opts.report(&SCENARIO, params);
    let mut cases = Vec::new();
    for measure in [Measure::Frames, Measure::Tcp] {
        for vtep in [Vtep::Pollswitch, Vtep::Kernel] {
            let lbl = label(vtep, measure, opts.size);
            let p = json!({"vtep": vtep.name(), "measure": format!("{measure:?}")});
            cases.push(Case {
                vtep,
                measure,
                series: Series::new(vtep.name(), &lbl, p),
            });
        }
    }
    rounds(
        opts,
        &mut cases,
        |c| &mut c.series,
        say_run,
        |c, run| {
            let mut command = String::new();
            let s = measure_once(opts, c, run, &mut command);
            if !command.is_empty() {
                c.series.command = command;
            }
            s
        },
    );
    report.series = summarized(cases.into_iter().map(|c| c.series));
    let med =
        |r: &Report, l: &str, f: fn(&crate::report::Summary) -> Option<crate::report::Stat>| {
            r.series(l).map_or(f64::NAN, |s| s.median(f))
        };
    let (pf, kf) = (
        label(Vtep::Pollswitch, Measure::Frames, opts.size),
        label(Vtep::Kernel, Measure::Frames, opts.size),
    );
    let (pt, kt) = (
        label(Vtep::Pollswitch, Measure::Tcp, opts.size),
        label(Vtep::Kernel, Measure::Tcp, opts.size),
    );
    report.ratios.push(Ratio {
        what: format!("{pf} ÷ {kf} (Mpps received)"),
        value: med(&report, &pf, |m| m.rx_mpps) / med(&report, &kf, |m| m.rx_mpps),
    });
    report.ratios.push(Ratio {
        what: format!("{pt} ÷ {kt} (Gbit/s, one stream)"),
        value: med(&report, &pt, |m| m.rx_gbps) / med(&report, &kt, |m| m.rx_gbps),
    });
    report.notes.push(
        "the sending VTEP differs, the receiving one (a kernel vxlan device in netns B, its \
         socket in U2) is the same; frames: the tool's AF_PACKET generator on A's interface \
         (pollswitch's tap, or the kernel vxlan device), its sink on B's device; TCP: one \
         iperf3 stream A → B, the first warm-up seconds omitted (-O)"
            .into(),
    );
    report.notes.push(
        "the kernel VTEP encapsulates TSO super-frames (GSO through the tunnel), pollswitch \
         gets 1500-byte frames from its tap (no offloads on the tap yet: issue 11)"
            .into(),
    );
    Ok(report)
}

fn plot(report: &Report) -> String {
    let mut svg = Svg::new(
        1000.0,
        470.0,
        "vxlan: x-vxlan vs the kernel's vxlan device as the sending VTEP",
        &report.machine.line(),
    );
    let bar = |s: &Series, f: fn(&crate::report::Summary) -> Option<crate::report::Stat>| Bar {
        label: s.label.clone(),
        value: f(&s.summary).map_or(f64::NAN, |x| x.median),
        range: f(&s.summary).map(|x| (x.min, x.max)),
        color: color(&s.system).into(),
    };
    let mpps: Vec<Bar> = report
        .series
        .iter()
        .filter(|s| s.label.contains("frames"))
        .map(|s| bar(s, |m| m.rx_mpps))
        .collect();
    let gbps: Vec<Bar> = report
        .series
        .iter()
        .filter(|s| s.label.contains("TCP"))
        .map(|s| bar(s, |m| m.rx_gbps))
        .collect();
    svg.bars(
        (0.0, 55.0, 500.0, 390.0),
        "frames received (median, min–max)",
        "Mpps",
        &mpps,
    );
    svg.bars(
        (500.0, 55.0, 500.0, 390.0),
        "one TCP stream",
        "Gbit/s",
        &gbps,
    );
    svg.footer(&report.command);
    svg.finish()
}
