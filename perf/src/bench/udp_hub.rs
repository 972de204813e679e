//! `udp-hub`: two UDP socket ports on one hub, frames from the generator's socket into
//! port 0 and out of port 1 into the sink's socket.
//!
//! ```text
//!  generator ─udp─► [p0 ── hub ── p1] ─udp─► sink       pollswitch / QEMU: the same
//!  generator ─vde─► [vde_switch -x   ] ─vde─► sink       -netdev arguments; vde_switch:
//!                                                        two native VDE ports
//! ```
//!
//! Targets (64-byte frames, at the generator's max rate): pollswitch forwards at least
//! 3× what QEMU's hub does, with under 1 % loss.

use serde_json::json;

use crate::bench::ndr::NdrOpts;
use crate::bench::{
    alternate, measure, plot_throughput, ratios, target, throughput_ratios, udp_links, BenchOpts,
    Job, Scenario,
};
use crate::error::Result;
use crate::frame;
use crate::peer::{self, Topology};
use crate::report::{Report, Sample};
use crate::traffic::{Rate, Roles};

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "udp-hub",
    about: "two UDP socket ports on one hub: pollswitch vs QEMU's hub vs vde_switch",
    systems: &["pollswitch", "qemu", "vde"],
    run,
    plot,
};

/// One measurement of `system` as a two-port UDP hub at `rate`.
pub fn measure_once(
    system: &peer::System,
    opts: &BenchOpts,
    rate: Rate,
    ndr: Option<&NdrOpts>,
    run: usize,
    command: &mut String,
) -> Sample {
    let links = match udp_links(2) {
        Ok(l) => l,
        Err(e) => {
            return Sample {
                run,
                error: Some(e.to_string()),
                ..Sample::default()
            }
        }
    };
    let topology = Topology::UdpHub(links);
    let cfg = opts.traffic(rate, opts.size, frame::mac(1));
    let roles = Roles {
        tx: vec![0],
        rx: vec![1],
    };
    let job = Job {
        topology: &topology,
        roles: &roles,
        cfg: &cfg,
        sut: &opts.sut(opts.size),
        gen_gso: opts.gen_gso,
        ndr,
    };
    measure(system, &job, run, command)
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["rate"] = json!(opts.rate.label());
    let mut report = opts.report(&SCENARIO, params);
    report.series = alternate(opts, systems, |sys, o, run, cmd| {
        measure_once(sys, o, o.rate, o.ndr.as_ref(), run, cmd)
    });
    report.ratios = ratios(
        &report,
        "pollswitch",
        "received Mpps",
        |s| s.median(|m| m.rx_mpps),
        true,
    );
    throughput_ratios(&mut report);
    if let Some(p) = report.series("pollswitch") {
        let mine = p.median(|m| m.rx_mpps);
        let loss = p.median(|m| m.loss_pct);
        if let Some(q) = report.series("qemu") {
            let ratio = mine / q.median(|m| m.rx_mpps);
            report.targets.push(target(
                "udp-hub: pollswitch ≥ 3× QEMU's hub (received Mpps, generator's max rate)",
                ratio,
                3.0,
                false,
            ));
        }
        report.targets.push(target(
            "udp-hub: pollswitch loss < 1 % at the generator's max rate",
            loss,
            1.0,
            true,
        ));
    }
    report.notes.push(
        "received Mpps = frames of the measured window that reached the sink, per second of \
         window; at the generator's max rate it is bounded by the slower of the switch and \
         the generator/sink core"
            .into(),
    );
    Ok(report)
}

fn plot(report: &Report) -> String {
    plot_throughput(
        report,
        &format!(
            "udp-hub: 2 UDP ports on one hub, {}-byte frames, rate {}",
            report.params["size"],
            report.params["rate"].as_str().unwrap_or("?")
        ),
    )
}
