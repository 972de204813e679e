//! `pollswitch-ctl`: a small QMP client for pollswitch (and QEMU).
//!
//! ```text
//! pollswitch-ctl -s SOCK COMMAND [key=value ...]   run one command, print the result
//! pollswitch-ctl -s SOCK events                     print events as they come
//! pollswitch-ctl -s SOCK query-netdev | x-query-stats   tables (--json for raw)
//! ```
//!
//! Values are typed the way a person means them: integers become JSON numbers,
//! `true`/`false` booleans, anything else a string; `key:=JSON` gives a raw JSON value.
//! `-s` takes a unix socket path or `tcp:HOST:PORT`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Map, Value};

const USAGE: &str = "\
usage: pollswitch-ctl -s SOCKET [--json] COMMAND [key=value | key:=json ...]
       pollswitch-ctl -s SOCKET events

SOCKET is a unix socket path or tcp:HOST:PORT (the daemon's -qmp endpoint).
COMMAND is any QMP command, e.g.:
  pollswitch-ctl -s /run/ps.sock netdev_add type=tap id=t0 ifname=tap0
  pollswitch-ctl -s /run/ps.sock set_link name=t0 up=false
  pollswitch-ctl -s /run/ps.sock query-netdev
  pollswitch-ctl -s /run/ps.sock x-query-stats
  pollswitch-ctl -s /run/ps.sock announce-self initial=50 max=550 rounds=5 step=100
  pollswitch-ctl -s /run/ps.sock announce-self interfaces:='[\"n0\"]' initial=0 max=0 rounds=1 step=0
query-netdev and x-query-stats print tables unless --json is given.
";

trait Conn: std::io::Read + Write {}
impl<T: std::io::Read + Write> Conn for T {}

struct Client {
    r: BufReader<Box<dyn Conn>>,
}

impl Client {
    fn connect(sock: &str) -> std::io::Result<Client> {
        let c: Box<dyn Conn> = match sock.strip_prefix("tcp:") {
            Some(a) => Box::new(TcpStream::connect(a)?),
            None => Box::new(UnixStream::connect(sock)?),
        };
        let mut c = Client {
            r: BufReader::new(c),
        };
        c.read()?; // greeting
        let r = c.call("qmp_capabilities", Map::new())?;
        if r.get("error").is_some() {
            return Err(std::io::Error::other(format!("negotiation failed: {r}")));
        }
        Ok(c)
    }

    fn read(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    /// Runs a command; events that arrive before the reply are printed to stderr.
    fn call(&mut self, cmd: &str, args: Map<String, Value>) -> std::io::Result<Value> {
        let mut req = json!({"execute": cmd});
        if !args.is_empty() {
            req["arguments"] = Value::Object(args);
        }
        let w = self.r.get_mut();
        w.write_all(format!("{req}\r\n").as_bytes())?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                eprintln!("{v}");
                continue;
            }
            return Ok(v);
        }
    }
}

fn typed(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return json!(i);
    }
    match v {
        "true" => json!(true),
        "false" => json!(false),
        _ => json!(v),
    }
}

fn parse_args(kv: &[String]) -> Result<Map<String, Value>, String> {
    let mut m = Map::new();
    for a in kv {
        if let Some((k, raw)) = a.split_once(":=") {
            let v = serde_json::from_str(raw).map_err(|e| format!("{k}: invalid JSON: {e}"))?;
            m.insert(k.to_string(), v);
        } else if let Some((k, v)) = a.split_once('=') {
            m.insert(k.to_string(), typed(v));
        } else {
            return Err(format!("'{a}': expected key=value or key:=json"));
        }
    }
    Ok(m)
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    let fmt = |cells: Vec<String>| {
        let mut line = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect::<Vec<_>>()
            .join("  ");
        line.truncate(line.trim_end().len());
        line + "\n"
    };
    out.push_str(&fmt(headers.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        out.push_str(&fmt(r));
    }
    out
}

fn netdev_table(v: &Value) -> String {
    let rows = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let o = n.as_object().cloned().unwrap_or_default();
            let opts = o
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "id" | "type" | "peer-id"))
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(",");
            let s = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            vec![s("id"), s("type"), s("peer-id"), opts]
        })
        .collect();
    table(&["ID", "TYPE", "PEER", "OPTIONS"], rows)
}

fn stats_table(v: &Value) -> String {
    let p = &v["pool"];
    let mut out = format!(
        "pool: {} of {} buffers free, {} reserved, {} bytes each, max frame {}, huge pages: {}\n\n",
        p["free"], p["buffers"], p["reserved"], p["buffer-size"], p["max-frame"], p["huge-pages"]
    );
    let workers = v["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            let busy = w["busy-ns"].as_u64().unwrap_or(0) as f64;
            let idle = w["idle-ns"].as_u64().unwrap_or(0) as f64;
            let pct = if busy + idle > 0.0 {
                100.0 * busy / (busy + idle)
            } else {
                0.0
            };
            // Only the io_uring counters that moved, as "name=n".
            let trouble: Vec<String> = w["io-uring"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            vec![
                w["id"].to_string(),
                w["core"].to_string(),
                w["ports"].to_string(),
                format!("{pct:.1}%"),
                if trouble.is_empty() {
                    "-".to_string()
                } else {
                    trouble.join(",")
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["WORKER", "CORE", "PORTS", "BUSY", "IO-URING"],
        workers,
    ));
    out.push('\n');
    let ports = v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let drops = p["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                p["name"].as_str().unwrap_or("").to_string(),
                p["type"].as_str().unwrap_or("").to_string(),
                if p["link-up"].as_bool().unwrap_or(false) {
                    "up"
                } else {
                    "down"
                }
                .to_string(),
                p["rx-packets"].to_string(),
                p["rx-bytes"].to_string(),
                p["tx-packets"].to_string(),
                p["tx-bytes"].to_string(),
                if drops.is_empty() { "-".into() } else { drops },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PORT", "TYPE", "LINK", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS",
        ],
        ports,
    ));
    out
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut sock = None;
    let mut raw = false;
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-s" | "--socket" => sock = Some(it.next().ok_or("-s needs a socket path")?),
            "--json" => raw = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            _ => rest.push(a),
        }
    }
    let sock = sock.ok_or("-s SOCKET is required (see --help)")?;
    let Some((cmd, kv)) = rest.split_first() else {
        return Err("a command is required (see --help)".into());
    };
    let mut c = Client::connect(&sock).map_err(|e| format!("{sock}: {e}"))?;
    if cmd == "events" {
        loop {
            let v = c.read().map_err(|e| e.to_string())?;
            println!("{v}");
        }
    }
    let reply = c.call(cmd, parse_args(kv)?).map_err(|e| e.to_string())?;
    if let Some(e) = reply.get("error") {
        eprintln!(
            "{}: {}",
            e["class"].as_str().unwrap_or("Error"),
            e["desc"].as_str().unwrap_or("")
        );
        return Ok(ExitCode::from(1));
    }
    let r = &reply["return"];
    match (cmd.as_str(), raw) {
        ("query-netdev", false) => print!("{}", netdev_table(r)),
        ("x-query-stats", false) => print!("{}", stats_table(r)),
        (_, _) if r.is_string() => print!("{}", r.as_str().unwrap_or("").replace("\r\n", "\n")),
        _ if r == &json!({}) => {}
        _ => println!("{}", serde_json::to_string_pretty(r).unwrap_or_default()),
    }
    // Give a trailing event (e.g. SHUTDOWN after quit) a moment to be printed.
    if cmd == "quit" {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pollswitch-ctl: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed() {
        let m = parse_args(&[
            "id=t0".into(),
            "hubid=0".into(),
            "up=false".into(),
            "interfaces:=[\"a\"]".into(),
        ])
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"id": "t0", "hubid": 0, "up": false, "interfaces": ["a"]})
        );
        assert!(parse_args(&["novalue".into()]).is_err());
        assert!(parse_args(&["x:={".into()]).is_err());
    }

    #[test]
    fn tables_align() {
        let t = netdev_table(
            &json!([{"id": "s0", "type": "socket", "peer-id": "h0", "udp": "1.2.3.4:5"}]),
        );
        assert_eq!(
            t,
            "ID  TYPE    PEER  OPTIONS\ns0  socket  h0    udp=1.2.3.4:5\n"
        );
    }
}
