//! The Prometheus endpoint (`-x-metrics`), scraped over HTTP and read by a real parser of
//! the text format (the `prometheus_client` Python package), while traffic flows.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{mac, until_path_works, Args, BCAST};
use serde_json::Value;
use tests::{frame, UdpEnd};

fn scrape(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// Parses `text` with prometheus_client and returns {family: {type, samples: [[name,
/// labels, value]]}}.
fn parse_with_prometheus_client(text: &str) -> Value {
    let py = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    out[fam.name] = {"type": fam.type,
                     "samples": [[s.name, s.labels, s.value] for s in fam.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", py])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn value(fams: &Value, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    fams[family]["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no family {family} in {fams}"))
        .iter()
        .find(|s| s[0] == sample && labels.iter().all(|(k, v)| s[1][*k] == *v))
        .unwrap_or_else(|| panic!("no {sample} {labels:?} in {}", fams[family]))[2]
        .as_f64()
        .unwrap()
}

#[test]
fn prometheus_endpoint_reads_as_the_format_says() {
    let port = tests::free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-x-metrics", &format!("tcp::{port}"))
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    until_path_works(&a, &b, common::probe, "a to b");
    for i in 0..100u8 {
        a.send(&frame(BCAST, mac(1), 0x88b5, 100, i));
    }
    assert_eq!(
        b.drain(Duration::from_millis(300)).len(),
        100,
        "the premise: traffic flowed"
    );
    let (head, body) = scrape(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let fams = parse_with_prometheus_client(&body);
    // Counter families lose their _total suffix in the parser; samples keep it.
    assert_eq!(fams["pollswitch_port_rx_packets"]["type"], "counter");
    let rx_a = value(
        &fams,
        "pollswitch_port_rx_packets",
        "pollswitch_port_rx_packets_total",
        &[("port", "a"), ("type", "socket")],
    );
    let tx_b = value(
        &fams,
        "pollswitch_port_tx_packets",
        "pollswitch_port_tx_packets_total",
        &[("port", "b")],
    );
    assert!(rx_a >= 100.0 && tx_b >= 100.0, "rx a {rx_a}, tx b {tx_b}");
    assert_eq!(
        value(
            &fams,
            "pollswitch_port_drops",
            "pollswitch_port_drops_total",
            &[("port", "a"), ("reason", "tx-full")]
        ),
        0.0
    );
    assert_eq!(
        value(
            &fams,
            "pollswitch_port_link_up",
            "pollswitch_port_link_up",
            &[("port", "b")]
        ),
        1.0
    );
    assert_eq!(fams["pollswitch_pool_buffers"]["type"], "gauge");
    assert_eq!(
        value(
            &fams,
            "pollswitch_pool_buffers",
            "pollswitch_pool_buffers",
            &[]
        ),
        1024.0
    );
    assert!(
        value(
            &fams,
            "pollswitch_worker_idle_seconds",
            "pollswitch_worker_idle_seconds_total",
            &[("worker", "0")]
        ) > 0.0
    );
    // The counters move with the traffic.
    for i in 0..50u8 {
        a.send(&frame(BCAST, mac(1), 0x88b5, 100, i));
    }
    assert_eq!(b.drain(Duration::from_millis(300)).len(), 50);
    let fams2 = parse_with_prometheus_client(&scrape(port, "/metrics").1);
    let rx_a2 = value(
        &fams2,
        "pollswitch_port_rx_packets",
        "pollswitch_port_rx_packets_total",
        &[("port", "a")],
    );
    assert_eq!(rx_a2 - rx_a, 50.0);
    // Anything but GET /metrics is refused.
    assert!(scrape(port, "/").0.starts_with("HTTP/1.1 404"));
    d.stop_clean();
}
