//! `-x-metrics [tcp:][HOST:]PORT` (a pollswitch extension): the counters in Prometheus'
//! text format over HTTP, where VM hosts' monitoring looks for them.
//!
//! ```text
//!  scraper ──GET /metrics──► metrics thread ──Msg::Metrics──► control loop
//!          ◄── 200 text ────────────────────── rendered from the same data as
//!                                               x-query-stats (reply channel)
//! ```
//!
//! The endpoint listens on loopback unless a host is given. The control loop renders
//! the text, so the data plane is read exactly as `x-query-stats` reads it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use crate::error::CtlError;
use crate::qmp::server::{Control, Msg};

/// Where the endpoint listens: `PORT` and `tcp::PORT` mean 127.0.0.1.
pub fn parse(spec: &str) -> Result<String, CtlError> {
    let rest = spec.strip_prefix("tcp:").unwrap_or(spec);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (if h.is_empty() { "127.0.0.1" } else { h }, p),
        None => ("127.0.0.1", rest),
    };
    if port.parse::<u16>().is_err() {
        return Err(CtlError::Invalid(format!(
            "-x-metrics {spec}: expected [tcp:][HOST:]PORT"
        )));
    }
    Ok(format!("{host}:{port}"))
}

/// Binds the endpoint and serves it in the background.
pub fn serve(addr: &str, ctl: Sender<Msg>) -> Result<(), CtlError> {
    let l = TcpListener::bind(addr)
        .map_err(|e| CtlError::Invalid(format!("-x-metrics {addr}: cannot listen: {e}")))?;
    tracing::info!("metrics on http://{addr}/metrics");
    if l.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "the metrics endpoint listens on {addr}, beyond loopback: every port's name and \
             counters are readable from other hosts"
        );
    }
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let ctl = ctl.clone();
            std::thread::spawn(move || answer(s, &ctl));
        }
    });
    Ok(())
}

fn answer(s: TcpStream, ctl: &Sender<Msg>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let Ok(w) = s.try_clone() else { return };
    // The request head is read up to 16 KiB, no more.
    let mut r = BufReader::new(std::io::Read::take(s, 16 << 10));
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    // The rest of the request head.
    let mut h = String::new();
    while r.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method != "GET" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path != "/metrics" && !path.starts_with("/metrics?") {
        ("404 Not Found", "the metrics are at /metrics\n".to_string())
    } else {
        let (tx, rx) = channel();
        if ctl.send(Msg::Metrics(tx)).is_err() {
            return;
        }
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(text) => ("200 OK", text),
            Err(_) => (
                "503 Service Unavailable",
                "the daemon is busy\n".to_string(),
            ),
        }
    };
    let mut w = w;
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.out, "{name} {v}");
        } else {
            let _ = writeln!(self.out, "{name}{{{}}} {v}", l.join(","));
        }
    }
}

/// The metrics text, from the control loop's view of the daemon.
pub fn render(ctl: &Control) -> String {
    let sw = ctl.daemon.switch();
    let pool = sw.pool();
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    f.head(
        "pollswitch_pool_buffers",
        "gauge",
        "Packet buffers in the pool.",
    );
    f.sample("pollswitch_pool_buffers", &[], pool.count());
    f.head(
        "pollswitch_pool_free_buffers",
        "gauge",
        "Packet buffers free now.",
    );
    f.sample("pollswitch_pool_free_buffers", &[], pool.free_count());
    f.head(
        "pollswitch_pool_reserved_buffers",
        "gauge",
        "Packet buffers spoken for by ports, worker rings and caches.",
    );
    f.sample("pollswitch_pool_reserved_buffers", &[], pool.reserved());
    f.head("pollswitch_qmp_clients", "gauge", "QMP clients connected.");
    f.sample("pollswitch_qmp_clients", &[], ctl.clients.len());

    let workers = sw.workers();
    f.head(
        "pollswitch_worker_ports",
        "gauge",
        "Port queues a worker owns.",
    );
    for w in &workers {
        let id = w.id.to_string();
        f.sample("pollswitch_worker_ports", &[("worker", &id)], w.ports);
    }
    type Ns = fn(&switch::switch::WorkerInfo) -> u64;
    let times: [(&str, &str, Ns); 2] = [
        (
            "pollswitch_worker_busy_seconds_total",
            "Time a worker spent working.",
            |w| w.busy_ns,
        ),
        (
            "pollswitch_worker_idle_seconds_total",
            "Time a worker slept.",
            |w| w.idle_ns,
        ),
    ];
    for (name, help, ns) in times {
        f.head(name, "counter", help);
        for w in &workers {
            let id = w.id.to_string();
            f.sample(name, &[("worker", &id)], ns(w) as f64 / 1e9);
        }
    }
    f.head(
        "pollswitch_worker_io_uring_events_total",
        "counter",
        "io_uring trouble of a worker, by kind.",
    );
    for w in &workers {
        let id = w.id.to_string();
        for (k, n) in w.uring {
            f.sample(
                "pollswitch_worker_io_uring_events_total",
                &[("worker", &id), ("event", k)],
                n,
            );
        }
    }

    let mut ports = Vec::new();
    for e in ctl.daemon.netdevs() {
        if let Ok(Some(c)) = sw.counters(&e.config.id) {
            let up = sw.graph().get(&e.config.id).is_some_and(|c| c.link_up);
            ports.push((e.config.id.clone(), e.config.opts.type_name(), up, c));
        }
    }
    type Get = fn(&switch::CounterSnapshot) -> u64;
    let counters: [(&str, &str, Get); 4] = [
        (
            "pollswitch_port_rx_packets_total",
            "Frames received from the port.",
            |c| c.rx_packets,
        ),
        (
            "pollswitch_port_rx_bytes_total",
            "Bytes received from the port.",
            |c| c.rx_bytes,
        ),
        (
            "pollswitch_port_tx_packets_total",
            "Frames sent to the port.",
            |c| c.tx_packets,
        ),
        (
            "pollswitch_port_tx_bytes_total",
            "Bytes sent to the port.",
            |c| c.tx_bytes,
        ),
    ];
    for (name, help, get) in counters {
        f.head(name, "counter", help);
        for (id, ty, _, c) in &ports {
            f.sample(name, &[("port", id), ("type", ty)], get(c));
        }
    }
    f.head(
        "pollswitch_port_drops_total",
        "counter",
        "Frames dropped at the port, by reason.",
    );
    for (id, ty, _, c) in &ports {
        for d in switch::DropReason::ALL {
            f.sample(
                "pollswitch_port_drops_total",
                &[("port", id), ("type", ty), ("reason", d.name())],
                c.dropped(d),
            );
        }
    }
    f.head(
        "pollswitch_port_link_up",
        "gauge",
        "1 when the port's link is up.",
    );
    for (id, ty, up, _) in &ports {
        f.sample(
            "pollswitch_port_link_up",
            &[("port", id), ("type", ty)],
            u8::from(*up),
        );
    }
    f.head(
        "pollswitch_port_carrier",
        "gauge",
        "1 while the backend has its peer (0: a vde_switch gone, a stream unconnected).",
    );
    for (id, ty, _, c) in &ports {
        f.sample(
            "pollswitch_port_carrier",
            &[("port", id), ("type", ty)],
            u8::from(c.carrier),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse("9100").unwrap(), "127.0.0.1:9100");
        assert_eq!(parse("tcp::9100").unwrap(), "127.0.0.1:9100");
        assert_eq!(parse("tcp:0.0.0.0:9100").unwrap(), "0.0.0.0:9100");
        assert!(parse("tcp:x").is_err());
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
