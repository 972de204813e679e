//! `tap-udp-gso`: small UDP datagrams from an application's socket, sent the way QUIC
//! stacks send them (one `UDP_SEGMENT` GSO send per burst), through a tap into the
//! switch and out of the other tap to an application's socket — counted per datagram.
//! The tap-hub layout (three fresh namespaces per run), but the tool's ends are hosts:
//! addresses in one /24 and permanent neighbour entries, so no ARP runs.
//!
//! ```text
//!  netns gen                               netns sut                  netns sink
//!  UDP socket 10.78.0.1 ─GSO─► IP ─► tapA ══► pollswitch | QEMU hub ══► tapB ─► IP ─► UDP socket 10.78.0.2
//!  UDP socket 10.78.0.1 ─GSO─► IP ─► vethA ═► Linux bridge ══════════► vethB ─► IP ─► UDP socket 10.78.0.2
//! ```
//!
//! `--size` counts the frame as on a wire, FCS included (the issue's "64-byte frames":
//! 18-byte datagrams, 60 bytes in the taps; see `engine::udp_app`). The kernel cuts the
//! GSO send into frames before the tap when the tap takes no offloads (today's
//! pollswitch and QEMU's hub), while a veth takes the GSO frame whole and the receiving
//! stack cuts it, so the bridge forwards one frame per burst: that is the comparison
//! the issue asks for. Targets: pollswitch ≥ 1.0× the Linux bridge and ≥ 3× QEMU's hub
//! (datagrams received per second).

use serde_json::json;

use crate::bench::{
    address_ends, alternate, ndr, plot_throughput, ratios, tap_pair, target, throughput_ratios,
    with_system, BenchOpts, Scenario, TapNamespaces,
};
use crate::engine::{self, udp_app};
use crate::error::{PerfError, Result};
use crate::frame;
use crate::peer;
use crate::report::{Report, Sample};
use crate::traffic::Roles;

/// Registry entry.
pub const SCENARIO: Scenario = Scenario {
    name: "tap-udp-gso",
    about: "UDP socket → tap → switch → tap → UDP socket, 64 B frames sent with UDP GSO: \
            pollswitch vs Linux bridge vs QEMU",
    systems: &["pollswitch", "bridge", "qemu"],
    run,
    plot,
};

/// The /24 of the tool's ends.
const NET: &str = "10.78.0";
const SRC_PORT: u16 = 40_000;
const DST_PORT: u16 = 40_001;

/// One measurement (and, with `--ndr`, the search) of `system`.
pub fn measure_once(
    system: &peer::System,
    opts: &BenchOpts,
    run: usize,
    command: &mut String,
) -> Sample {
    let ns = match TapNamespaces::for_run(run) {
        Ok(n) => n,
        Err(failed) => return *failed,
    };
    let topology = tap_pair(&ns, 1500);
    let cfg = opts.traffic(opts.rate, opts.size, frame::BROADCAST);
    let roles = Roles {
        tx: vec![0],
        rx: vec![1],
    };
    let gso = if opts.gen_gso { "on" } else { "off" };
    with_system(
        system,
        &topology,
        &opts.sut(1518),
        run,
        command,
        |running, sample| {
            let addrs = address_ends(&topology, NET)?;
            let specs = [
                format!(
                    "udp-app:netns={},local={}:{SRC_PORT},peer={}:{DST_PORT},gso={gso}",
                    ns.gen.name, addrs[0], addrs[1]
                ),
                format!(
                    "udp-app:netns={},local={}:{DST_PORT}",
                    ns.sink.name, addrs[1]
                ),
            ];
            let mut cfg = cfg.clone();
            cfg.watch = running.pids();
            let open = || specs.iter().map(|s| engine::open(s)).collect();
            ndr::measure(opts.ndr.as_ref(), system.name, &cfg, &roles, &open, sample)
        },
    )
}

fn run(opts: &BenchOpts, systems: &[&'static peer::System]) -> Result<Report> {
    if opts.size > 1518 {
        return Err(PerfError::Usage(format!(
            "tap-udp-gso: --size {} does not fit one 1500-byte MTU datagram (at most 1518)",
            opts.size
        )));
    }
    let mut params = opts.params();
    params["size"] = json!(opts.size);
    params["udp_payload_bytes"] = json!(opts.size - udp_app::OVERHEAD);
    params["frame_bytes_in_tap"] = json!(opts.size - 4);
    params["rate"] = json!(opts.rate.label());
    params["mtu"] = json!(1500);
    params["frame_bytes_note"] = json!(
        "here --size counts the frame on a wire with its FCS: the datagram is size − 46 bytes, \
         the frame in the tap size − 4"
    );
    let mut report = opts.report(&SCENARIO, params);
    report.series = alternate(opts, systems, |sys, o, run, cmd| {
        measure_once(sys, o, run, cmd)
    });
    report.ratios = ratios(
        &report,
        "pollswitch",
        "datagrams received per second",
        |s| s.median(|m| m.rx_mpps),
        true,
    );
    throughput_ratios(&mut report);
    if let Some(p) = report.series("pollswitch") {
        let mine = p.median(|m| m.rx_mpps);
        for (peer_name, goal, k) in [
            (
                "bridge",
                "tap-udp-gso: pollswitch ≥ 1.0× Linux bridge (datagrams received per second)",
                1.0,
            ),
            (
                "qemu",
                "tap-udp-gso: pollswitch ≥ 3× QEMU's hub (datagrams received per second)",
                3.0,
            ),
        ] {
            if let Some(q) = report.series(peer_name) {
                report
                    .targets
                    .push(target(goal, mine / q.median(|m| m.rx_mpps), k, false));
            }
        }
    }
    report.notes.push(format!(
        "the generator is a UDP socket in the generator's namespace ({NET}.1:{SRC_PORT}), \
         sending each burst of {} datagrams of {} bytes as one UDP_SEGMENT send (--gen-gso \
         {gso}); the sink a UDP socket in the sink's ({NET}.2:{DST_PORT}) reading with \
         recvmmsg. Static neighbour entries, interface MACs set to the ports' (the bridge's \
         static FDB). Loss counts datagrams sent minus received; drops in the sink's socket \
         queue are the tool's (sink drops)",
        opts.burst,
        opts.size - udp_app::OVERHEAD,
        gso = if opts.gen_gso { "on" } else { "off" },
    ));
    Ok(report)
}

fn plot(report: &Report) -> String {
    plot_throughput(
        report,
        &format!(
            "tap-udp-gso: UDP socket → tap → switch → tap → UDP socket, {}-byte frames \
             (UDP GSO), rate {}",
            report.params["size"],
            report.params["rate"].as_str().unwrap_or("?")
        ),
    )
}
