//! One iperf3 TCP measurement between two namespaces: a one-shot server in one, the
//! client in the other, the receiver's rate read from iperf3's JSON.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::{wait_until, Netns};

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tcp {
    /// The receiver's rate, Gbit/s.
    pub gbps: f64,
    /// Seconds it measured.
    pub seconds: f64,
}

fn failed(detail: String) -> Error {
    Error::Process {
        name: "iperf3".into(),
        detail,
    }
}

/// Runs `iperf3 -c server_addr -J` with `client_args` in `client` against a one-shot
/// server bound to `server_addr` in `server` (started here, gone when this returns).
pub fn tcp(server: &Netns, server_addr: &str, client: &Netns, client_args: &[&str]) -> Result<Tcp> {
    let mut srv = server.spawn(&["iperf3", "-s", "-1", "-B", server_addr]);
    let listening = wait_until(Duration::from_secs(5), || {
        server
            .run(&["ss", "-Hltn", "sport", "=", ":5201"])
            .is_ok_and(|s| s.contains("5201"))
    });
    if !listening {
        let _ = srv.kill();
        let _ = srv.wait();
        return Err(failed(format!(
            "the server in netns {} did not listen",
            server.name
        )));
    }
    let mut args = vec!["iperf3", "-c", server_addr, "-J"];
    args.extend_from_slice(client_args);
    let out = client.exec(&args);
    let _ = srv.kill();
    let _ = srv.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| failed(format!("its JSON ({e}): {text}")))?;
    let end = &v["end"]["sum_received"];
    let bps = end["bits_per_second"]
        .as_f64()
        .ok_or_else(|| failed(format!("no result: {}", v["error"])))?;
    Ok(Tcp {
        gbps: bps / 1e9,
        seconds: end["seconds"].as_f64().unwrap_or(0.0),
    })
}
