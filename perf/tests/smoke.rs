//! CI smoke of pollswitch-perf: every scenario for real (`--quick`: one run of half a
//! second per system), against the real peers and the real daemon, and the JSON it
//! writes parsed and checked field by field. Nothing here skips: a missing peer, a
//! daemon that is not built, a run that fails or a daemon that does not stop cleanly
//! fails the test with the tool's own message.
//!
//! Needs root (namespaces, taps), the peers `scripts/setup-host` installs plus
//! dpdk-testpmd, and `cargo build --workspace` first (the daemon binary lives beside
//! this test's pollswitch-perf).

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use testbed::{Launch, TempDir};

const TOOL: &str = env!("CARGO_BIN_EXE_pollswitch-perf");

/// The smoke tests measure traffic: two at once on a 2-core machine starve each other's
/// generators (a run then sends too little to judge). Each takes this lock first.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tool(args: &[&str]) -> Output {
    Command::new(TOOL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run pollswitch-perf")
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"))
}

/// Runs `bench NAME --quick` and returns its parsed JSON, after checking the fields
/// every report has.
fn bench(name: &str, extra: &[&str]) -> Value {
    let out = TempDir::create(&format!("pollswitch-perf-smoke-{name}")).expect("scratch dir");
    let dir = out.path().to_str().expect("utf-8 temp dir").to_string();
    let mut args = vec!["bench", name, "--quick", "--out", &dir];
    args.extend_from_slice(extra);
    let o = tool(&args);
    assert!(o.status.success(), "bench {name} failed:\n{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("| system"),
        "no table printed:\n{}",
        text(&o)
    );
    let json_path = out.join(&format!("{name}.json"));
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .unwrap_or_else(|e| panic!("{}: {e}", json_path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: not JSON: {e}", json_path.display()));
    let svg = std::fs::read_to_string(out.join(&format!("{name}.svg"))).expect("svg written");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "svg: {svg:.200}"
    );
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());

    // The report reads back and redraws.
    std::fs::remove_file(out.join(&format!("{name}.svg"))).unwrap();
    let replot = tool(&["plot", json_path.to_str().unwrap()]);
    assert!(replot.status.success(), "plot {name}:\n{}", text(&replot));
    let again = std::fs::read_to_string(out.join(&format!("{name}.svg"))).expect("svg redrawn");
    assert_eq!(again, svg, "the plot is a function of the JSON alone");

    assert_eq!(report["scenario"], name);
    assert!(report["command"].as_str().unwrap().contains("--quick"));
    for key in ["kernel", "os", "cpu_model", "load_average"] {
        assert!(
            !report["machine"][key].as_str().unwrap_or("").is_empty(),
            "machine.{key} missing: {}",
            report["machine"]
        );
    }
    assert!(num(&report["machine"]["cpus_online"], "cpus_online") >= 1.0);
    let cores = &report["cores"];
    assert!(num(&cores["used"], "cores.used") >= 1.0);
    assert!(cores["note"].as_str().unwrap().contains("core"));
    assert!(report["targets"].is_array() && report["ratios"].is_array());
    for t in report["targets"].as_array().unwrap() {
        assert!(t["goal"].is_string() && t["met"].is_boolean(), "target {t}");
    }
    let series = report["series"].as_array().expect("series");
    assert!(!series.is_empty());
    for s in series {
        let samples = s["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 1, "one quick run: {s}");
        for x in samples {
            assert!(
                x["error"].is_null(),
                "{} failed: {}",
                s["label"],
                x["error"]
            );
        }
        assert_eq!(s["summary"]["runs_ok"], 1);
    }
    report
}

/// Checks a traffic sample's outcome: frames went through and were measured.
fn check_traffic(report: &Value) {
    for s in report["series"].as_array().unwrap() {
        let label = s["label"].as_str().unwrap();
        let o = &s["samples"][0]["outcome"];
        let sent = num(&o["sent"], "sent");
        let received = num(&o["received"], "received");
        assert!(sent > 0.0, "{label}: nothing sent: {o}");
        assert!(received > 0.0, "{label}: nothing received: {o}");
        assert!(received <= num(&o["expected"], "expected"), "{label}: {o}");
        let loss = num(&o["loss_pct"], "loss_pct");
        assert!((0.0..=100.0).contains(&loss));
        let l = &o["latency_us"];
        let p: Vec<f64> = ["min", "p50", "p90", "p99", "p999", "max"]
            .iter()
            .map(|k| num(&l[*k], k))
            .collect();
        assert!(
            p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
            "{label}: percentiles {l}"
        );
        assert_eq!(num(&l["count"], "count"), received);
        assert!(num(&o["rx_pps"], "rx_pps") > 0.0);
        assert!(o["cpu"]["cores_busy_pct"]
            .as_array()
            .is_some_and(|c| !c.is_empty()));
        assert!(s["summary"]["rx_mpps"]["median"].is_number());
    }
}

/// The series' labels, in order.
fn labels(report: &Value) -> Vec<&str> {
    report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect()
}

fn systems(report: &Value) -> Vec<String> {
    report["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["system"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn udp_hub() {
    let _serial = serial();
    let r = bench("udp-hub", &[]);
    assert_eq!(systems(&r), ["pollswitch", "qemu", "vde"]);
    check_traffic(&r);
    assert_eq!(r["ratios"].as_array().unwrap().len(), 2, "{}", r["ratios"]);
    assert_eq!(r["targets"].as_array().unwrap().len(), 2);
}

#[test]
fn tap_hub() {
    let _serial = serial();
    let r = bench("tap-hub", &[]);
    assert_eq!(systems(&r), ["pollswitch", "bridge", "testpmd", "qemu"]);
    check_traffic(&r);
    assert_eq!(r["targets"].as_array().unwrap().len(), 2);
}

/// The throughput search: NDR and PDR per system, each from trials that moved traffic,
/// next to the max-rate figures, with their ratios.
#[test]
fn udp_hub_ndr() {
    let _serial = serial();
    let r = bench(
        "udp-hub",
        &["--systems", "pollswitch,qemu", "--ndr", "--ndr-steps", "2"],
    );
    assert_eq!(systems(&r), ["pollswitch", "qemu"]);
    check_traffic(&r);
    for s in r["series"].as_array().unwrap() {
        let label = s["label"].as_str().unwrap();
        let x = &s["samples"][0];
        let found = x["throughput"].as_array().expect("throughput");
        let ratios: Vec<f64> = found
            .iter()
            .map(|t| num(&t["loss_ratio"], "ratio"))
            .collect();
        assert_eq!(ratios, [0.0, 0.005], "{label}");
        let upper = num(&x["detail"]["ndr_upper_pps"], "upper");
        for t in found {
            let pps = num(&t["pps"], "pps");
            assert!((0.0..=upper).contains(&pps), "{label}: {t}");
            assert!(num(&t["trials"], "trials") <= 2.0, "{label}: {t}");
        }
        let trials = x["detail"]["ndr_trials"].as_array().expect("trials");
        assert!(!trials.is_empty() && trials.len() <= 4, "{label}");
        assert_eq!(num(&trials[0]["offered_pps"], "offered"), upper);
        for t in trials {
            assert!(num(&t["sent"], "sent") > 0.0, "{label}: {t}");
        }
        let names: Vec<&str> = s["summary"]["throughput"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["NDR", "PDR 0.5 %"]);
    }
    let ratios: Vec<&str> = r["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["what"].as_str().unwrap())
        .collect();
    assert_eq!(ratios.len(), 3, "{ratios:?}");
    assert!(ratios[1].contains("NDR") && ratios[2].contains("PDR"));
}

/// UDP GSO datagrams from a socket through the taps to a socket, every system.
#[test]
fn tap_udp_gso() {
    let _serial = serial();
    let r = bench("tap-udp-gso", &[]);
    assert_eq!(systems(&r), ["pollswitch", "bridge", "qemu"]);
    check_traffic(&r);
    assert_eq!(r["params"]["udp_payload_bytes"], 18);
    for s in r["series"].as_array().unwrap() {
        let o = &s["samples"][0]["outcome"];
        assert!(o["tx_ports"][0].as_str().unwrap().starts_with("udp-app:"));
        assert_eq!(o["bad_length"], 0, "{}", s["label"]);
    }
    assert_eq!(r["ratios"].as_array().unwrap().len(), 2);
    assert_eq!(r["targets"].as_array().unwrap().len(), 2);
}

/// iperf3 through the taps, 1 and 4 streams, every system; pollswitch's taps with the
/// options given.
#[test]
fn tcp_taps() {
    let _serial = serial();
    let r = bench(
        "tcp-taps",
        &["--duration", "1", "--pollswitch-tap-opts", "vnet_hdr=on"],
    );
    let mut want = Vec::new();
    for n in ["1 stream", "4 streams"] {
        for sys in ["pollswitch", "bridge", "qemu", "pollswitch-af-xdp"] {
            want.push(format!("{sys} {n}"));
        }
    }
    assert_eq!(labels(&r), want);
    for s in r["series"].as_array().unwrap() {
        let gbps = num(&s["samples"][0]["outcome"]["rx_gbps"], "rx_gbps");
        assert!(gbps > 0.0, "{}", s["label"]);
        assert!(s["summary"]["rx_mpps"].is_null(), "no frame counts for TCP");
        if s["system"] == "pollswitch" {
            assert!(
                s["command"].as_str().unwrap().contains("vnet_hdr=on"),
                "{}",
                s["command"]
            );
        }
    }
    // pollswitch against the bridge, QEMU and its own af-xdp ports, per stream count.
    assert_eq!(r["ratios"].as_array().unwrap().len(), 6);
    assert_eq!(r["targets"].as_array().unwrap().len(), 2);
}

#[test]
fn latency() {
    let _serial = serial();
    let r = bench("latency", &["--latency-rate", "5000"]);
    check_traffic(&r);
    let labels = labels(&r);
    assert_eq!(
        labels,
        [
            "pollswitch (udp)",
            "qemu (udp)",
            "vde (udp)",
            "pollswitch (tap)",
            "bridge (tap)",
            "testpmd (tap)",
            "qemu (tap)"
        ]
    );
    for s in r["series"].as_array().unwrap() {
        let sent = num(&s["samples"][0]["outcome"]["sent"], "sent");
        // 5000 frames/s for 0.5 s, give or take the pacing's edges.
        assert!(
            (1500.0..=3500.0).contains(&sent),
            "{}: sent {sent}",
            s["label"]
        );
    }
}

#[test]
fn idle() {
    let _serial = serial();
    let r = bench("idle", &[]);
    let series = r["series"].as_array().unwrap();
    assert_eq!(series.len(), 5, "3 poll-us values, qemu, vde");
    for s in series {
        let cpu = num(&s["samples"][0]["idle_cpu_pct"], "idle_cpu_pct");
        assert!((0.0..=200.0).contains(&cpu), "{}: {cpu}", s["label"]);
        let diag = s["samples"][0]["diagnostics"].to_string();
        assert!(
            diag.contains("forwarding check after the idle window"),
            "{diag}"
        );
    }
    assert_eq!(
        r["targets"][0]["goal"]
            .as_str()
            .map(|g| g.contains("poll-us=0")),
        Some(true)
    );
}

#[test]
fn scale() {
    let _serial = serial();
    let r = bench("scale", &["--systems", "pollswitch,qemu"]);
    let series = r["series"].as_array().unwrap();
    // ports 2 and 8 at 64 bytes, then 9000 bytes at 2 ports; two systems each.
    assert_eq!(series.len(), 6);
    check_traffic(&r);
    for s in series {
        let ports = num(&s["params"]["ports"], "ports");
        let o = &s["samples"][0]["outcome"];
        assert_eq!(o["tx_ports"].as_array().unwrap().len() as f64, ports);
        // Every port sends, and each frame is due at every other port.
        let (sent, expected) = (num(&o["sent"], "sent"), num(&o["expected"], "expected"));
        assert_eq!(expected, sent * (ports - 1.0), "{}", s["label"]);
        assert_eq!(num(&o["size"], "size"), num(&s["params"]["size"], "size"));
    }
}

/// The switch core alone: in-memory ports, one and two workers on the two cores, both
/// layouts, counters read over QMP.
#[test]
fn workers() {
    let _serial = serial();
    let r = bench("workers", &["--workers", "2", "--sut-cores", "0,1"]);
    let series = r["series"].as_array().unwrap();
    let labels: Vec<&str> = series
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        ["local 1 worker", "local 2 workers", "cross 2 workers"]
    );
    assert_eq!(systems(&r), ["pollswitch"; 3]);
    for s in series {
        let label = s["label"].as_str().unwrap();
        let workers = num(&s["params"]["workers"], "workers");
        let mpps = num(&s["summary"]["rx_mpps"]["median"], "rx_mpps median");
        assert!(mpps > 0.0, "{label}: {mpps} Mpps");
        let x = &s["samples"][0];
        let o = &x["outcome"];
        assert!(num(&o["received"], "received") > 0.0, "{label}: {o}");
        assert!(num(&o["sent"], "sent") >= num(&o["received"], "received") * 0.99);
        assert!(num(&x["switch_drops"], "switch_drops") >= 0.0);
        let per_worker = x["detail"]["per_worker"].as_array().expect("per_worker");
        assert_eq!(per_worker.len() as f64, workers, "{label}");
        let share: f64 = per_worker
            .iter()
            .map(|w| num(&w["share_pct"], "share_pct"))
            .sum();
        assert!(
            (share - 100.0).abs() < 1e-6,
            "{label}: shares add up to {share}"
        );
        assert!(
            s["command"]
                .as_str()
                .unwrap()
                .contains("x-null,id=s0,mode=source"),
            "{}",
            s["command"]
        );
    }
    assert_eq!(r["ratios"].as_array().unwrap().len(), 2, "{}", r["ratios"]);
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert!(targets[0]["goal"].as_str().unwrap().contains("20 Mpps"));
    assert!(num(&targets[0]["value"], "one-worker Mpps") > 0.0);
    // Two workers measured: the 1 -> 8 target says why it was not judged.
    assert!(
        targets[1]["not_measured"]
            .as_str()
            .is_some_and(|w| w.contains("core")),
        "{}",
        targets[1]
    );
}

/// learning: flood against learn at 2 and 8 ports, and tables of 10 and 100 000
/// addresses; each learn run checked its own premise (every address in the table).
#[test]
fn learning() {
    let _serial = serial();
    let r = bench("learning", &["--sut-cores", "1"]);
    assert_eq!(
        labels(&r),
        [
            "flood 2 ports",
            "learn 2 ports",
            "flood 8 ports",
            "learn 8 ports",
            "learn 2 ports 10 MACs",
            "learn 2 ports 100000 MACs"
        ]
    );
    for s in r["series"].as_array().unwrap() {
        let x = &s["samples"][0];
        let ports = num(&s["params"]["ports"], "ports");
        let fan_out = num(&x["detail"]["fan_out"], "fan_out");
        let want = if s["params"]["mode"] == "flood" {
            ports - 1.0
        } else {
            1.0
        };
        assert!(
            (fan_out - want).abs() < 0.02 * want,
            "{}: {fan_out}",
            s["label"]
        );
        if s["params"]["mode"] == "learn" {
            let macs = num(&s["params"]["macs"], "macs");
            assert_eq!(
                num(&x["detail"]["table_entries"], "entries"),
                macs,
                "{}",
                s["label"]
            );
        }
    }
    let targets = r["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 2);
    for t in targets {
        assert!(num(&t["value"], "target value") > 0.0, "measured: {t}");
    }
    assert_eq!(r["ratios"].as_array().unwrap().len(), 4, "{}", r["ratios"]);
}

/// vxlan: x-vxlan and the kernel's vxlan as the sending VTEP, frames and TCP.
#[test]
fn vxlan() {
    let _serial = serial();
    let r = bench("vxlan", &["--duration", "1"]);
    assert_eq!(
        labels(&r),
        [
            "pollswitch 64 B frames",
            "kernel-vxlan 64 B frames",
            "pollswitch TCP",
            "kernel-vxlan TCP"
        ]
    );
    for s in r["series"].as_array().unwrap() {
        let o = &s["samples"][0]["outcome"];
        if s["label"].as_str().unwrap().contains("TCP") {
            assert!(num(&o["rx_gbps"], "rx_gbps") > 0.0, "{}", s["label"]);
        } else {
            assert!(num(&o["received"], "received") > 0.0, "{}", s["label"]);
        }
    }
    assert_eq!(r["ratios"].as_array().unwrap().len(), 2);
}

/// soak: a short one; the readings are there and the pool is whole at the end.
#[test]
fn soak() {
    let _serial = serial();
    let r = bench("soak", &["--duration", "3"]);
    let x = &r["series"][0]["samples"][0];
    let readings = x["detail"]["readings"].as_array().expect("readings");
    assert!(readings.len() >= 3, "{}", readings.len());
    let (first, last) = (&readings[0], &readings[readings.len() - 1]);
    assert_eq!(first["pool_free"], last["pool_free"], "{first} {last}");
    assert!(num(&x["detail"]["churn_cycles"], "churn cycles") > 0.0);
    assert!(num(&x["outcome"]["received"], "received") > 0.0);
}

/// memif: pollswitch and testpmd as middle boxes of a testpmd loop, 64 and 9000 bytes.
/// A DPDK-loop scenario (`memif`, `vhost`): pollswitch and testpmd as the middle box
/// at 64 and 9000 bytes, traffic through each, both ratios and the 64-byte target.
fn dpdk_loop(name: &str) {
    let _serial = serial();
    let r = bench(name, &[]);
    let labels = labels(&r);
    assert_eq!(
        labels,
        [
            "pollswitch 64B",
            "testpmd 64B",
            "pollswitch 9000B",
            "testpmd 9000B"
        ]
    );
    for s in r["series"].as_array().unwrap() {
        let o = &s["samples"][0]["outcome"];
        assert!(num(&o["rx_pps"], "rx_pps") > 0.0, "{}: {o}", s["label"]);
    }
    assert_eq!(r["ratios"].as_array().unwrap().len(), 2, "{}", r["ratios"]);
    assert_eq!(
        r["targets"].as_array().unwrap().len(),
        1,
        "{}",
        r["targets"]
    );
}

#[test]
fn memif() {
    dpdk_loop("memif");
}

#[test]
fn vhost() {
    dpdk_loop("vhost");
}

#[test]
fn missing_peer_fails_loudly() {
    let _serial = serial();
    let o = Command::new(TOOL)
        .args(["bench", "udp-hub", "--quick", "--systems", "qemu"])
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not found on PATH"), "{err}");
    let o = tool(&[
        "bench",
        "udp-hub",
        "--quick",
        "--pollswitch",
        "/nonexistent/pollswitch",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cargo build --release -p ctl"));
    let o = tool(&["bench", "no-such-scenario"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

fn free_udp() -> String {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

/// The generator and sink straight into each other: the JSON on stdout and the
/// counts it holds.
#[test]
fn run_prints_json_with_every_field() {
    let _serial = serial();
    let sink = free_udp();
    let o = tool(&[
        "run",
        "--tx",
        &format!("udp:peer={sink}"),
        "--rx",
        &format!("udp:local={sink}"),
        "--rate",
        "10k",
        "--duration",
        "0.3",
        "--warmup",
        "0.05",
        "--json",
        "-",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let json = &stdout[stdout.find('{').expect("JSON on stdout")..];
    let v: Value = serde_json::from_str(json).expect("valid JSON");
    for key in [
        "sent",
        "received",
        "lost",
        "loss_pct",
        "reordered",
        "duplicates",
        "tx_pps",
        "rx_pps",
        "rx_gbps",
        "latency_us",
        "cpu",
        "tool_rx_drops",
        "bad_length",
    ] {
        assert!(!v[key].is_null(), "{key} missing in {v}");
    }
    assert_eq!(v["sent"], v["received"]);
    assert_eq!(v["lost"], 0);
    let sent = num(&v["sent"], "sent");
    assert!((2000.0..=4000.0).contains(&sent), "10k/s for 0.3 s: {sent}");
}

/// The TCP engine against QEMU's stream netdevs on a hub: both directions of the
/// 4-byte length framing, through a real peer.
#[test]
fn tcp_engine_through_qemu_hub() {
    let _serial = serial();
    let port = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let (a, b) = (port(), port());
    // Killed on drop.
    let _qemu = Launch::new("qemu", testbed::require_tool("qemu-system-x86_64"))
        .args(["-M", "none", "-nodefaults", "-display", "none"])
        .args(["-netdev", &format!("socket,id=a,listen={a}")])
        .args(["-netdev", "hubport,id=ha,hubid=0,netdev=a"])
        .args(["-netdev", &format!("socket,id=b,listen={b}")])
        .args(["-netdev", "hubport,id=hb,hubid=0,netdev=b"])
        .spawn()
        .expect("start qemu-system-x86_64");
    // QEMU accepts one connection per listening netdev: no probing. The tool retries
    // its connects until QEMU listens.
    let o = tool(&[
        "run",
        "--tx",
        &format!("tcp:connect={a}"),
        "--rx",
        &format!("tcp:connect={b}"),
        "--size",
        "1518",
        "--rate",
        "20k",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--json",
        "-",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let v: Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let (sent, received) = (num(&v["sent"], "sent"), num(&v["received"], "received"));
    assert!(sent > 5000.0, "{v}");
    // A stream does not lose: everything sent arrives, whole and in order.
    assert_eq!(sent, received, "{v}");
    assert_eq!(
        (v["reordered"].clone(), v["bad_length"].clone()),
        (0.into(), 0.into())
    );
    let gbps = num(&v["rx_pps"], "rx_pps") * 1518.0 * 8.0 / 1e9;
    assert!((num(&v["rx_gbps"], "rx_gbps") - gbps).abs() < 1e-9, "{v}");
}
