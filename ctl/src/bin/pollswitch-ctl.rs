//! `pollswitch-ctl`: a small QMP client for pollswitch (and QEMU).
//!
//! ```text
//! pollswitch-ctl -s SOCK COMMAND [key=value ...]   run one command, print the result
//! pollswitch-ctl -s SOCK events                     print events until SHUTDOWN
//! pollswitch-ctl -s SOCK query-netdev | x-query-stats   tables (--json for raw)
//! pollswitch-ctl -s SOCK top [-n COUNT]             per-port rates, refreshed each second
//! ```
//!
//! Values are typed the way a person means them: integers become JSON numbers,
//! `true`/`false` booleans, anything else a string; `key:=JSON` gives a raw JSON value
//! (the way to send a string such as `"123"` or `"true"`).
//! `-s` takes a unix socket path (`unix:PATH` too) or `tcp:HOST:PORT`; without it the
//! socket comes from `$POLLSWITCH_QMP`.
//!
//! Every wait is bounded by `-t SECONDS` (default 10): connecting, the greeting, and each
//! reply; `events` waits for events without a bound once connected. Exit status: 0 done,
//! 1 the daemon answered with an error, 2 anything else (usage, connection, timeout,
//! connection lost).

use std::ffi::OsString;
use std::io::{self, ErrorKind, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

const USAGE: &str = "\
usage: pollswitch-ctl [-s SOCKET] [-t SECONDS] [--json] COMMAND [ARG ...]
       pollswitch-ctl [-s SOCKET] [-t SECONDS] events
       pollswitch-ctl [-s SOCKET] [-t SECONDS] [--json] top [-n COUNT]
       pollswitch-ctl --help | --version

Options:
  -s, --socket SOCKET    the daemon's -qmp endpoint: a unix socket path (or
                         unix:PATH) or tcp:HOST:PORT; without -s, the value of
                         the environment variable POLLSWITCH_QMP
  -t, --timeout SECONDS  how long to wait for the connection and for each reply
                         (default 10; fractions such as 0.5 allowed); when it runs
                         out: a message saying what it waited for, exit status 2
      --json             raw JSON instead of the tables of query-netdev,
                         x-query-stats and top
  -n COUNT               top: stop after COUNT refreshes
  -h, --help             this text
      --version          print pollswitch-ctl's version

COMMAND is any QMP command, e.g.:
  pollswitch-ctl -s /run/ps.sock netdev_add type=tap id=t0 ifname=tap0
  pollswitch-ctl -s /run/ps.sock set_link name=t0 up=false
  pollswitch-ctl -s /run/ps.sock query-netdev
  pollswitch-ctl -s /run/ps.sock x-query-stats
  pollswitch-ctl -s /run/ps.sock announce-self initial=50 max=550 rounds=5 step=100
  pollswitch-ctl -s /run/ps.sock announce-self interfaces:='[\"n0\"]' initial=0 max=0 rounds=1 step=0
  POLLSWITCH_QMP=tcp:127.0.0.1:4444 pollswitch-ctl query-version
query-netdev and x-query-stats print tables unless --json is given.

Arguments (ARG) become the command's \"arguments\" object:
  key=value    value is sent as a JSON integer when all of it is a decimal
               integer that fits in 64 signed bits (42, -7, +7, 007 = 7), as a
               JSON boolean when it is exactly true or false, and as a JSON
               string otherwise (t0, 1.5, 0x10, True, an empty value).
  key:=JSON    value is parsed as JSON and sent as written. This is how to send
               a string that looks like a number or a boolean: quote it as
               JSON, and protect the quotes from the shell:
                 pollswitch-ctl human-monitor-command command-line:='\"123\"'
               sends {\"command-line\": \"123\"} (command-line=123 would send
               the number 123). Also for arrays, objects and null:
                 interfaces:='[\"n0\",\"n1\"]'
  The key ends at the first '=' (a ':' right before it means key:=JSON), so a
  value may itself contain '=' or ':='. A repeated key: the last one counts.

events prints each event as one JSON line as it comes. It exits with status 0
after printing the daemon's SHUTDOWN event, and with status 2 when the
connection ends without one.

top shows, for each port, packets and bits per second received (RX) and sent
(TX), drops per second (all reasons together) and the link state, computed from
two successive x-query-stats samples one second apart. On a terminal it clears
the screen before each refresh; otherwise it prints one table per refresh, the
tables separated by a blank line (with --json: one JSON object per line). It
exits with status 0 after -n COUNT refreshes or when the daemon shuts down.

Exit status: 0 done; 1 the daemon answered with an error (printed as
CLASS: DESC); 2 anything else (bad usage, no connection, a timeout, the
connection lost).
";

/// Where the socket comes from when `-s` is absent.
const SOCKET_ENV: &str = "POLLSWITCH_QMP";
/// `-t` when not given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `top` samples.
const TOP_INTERVAL: Duration = Duration::from_secs(1);
/// The longest line accepted from the server (a line without end is an error).
const MAX_LINE: usize = 16 << 20;
/// Home the cursor and clear the screen (ANSI), before each `top` refresh on a terminal.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Cli {
    Help,
    Version,
    Run(Opts),
}

#[derive(Debug, PartialEq)]
struct Opts {
    sock: Option<String>,
    json: bool,
    timeout: Duration,
    count: Option<u64>,
    /// The command and its arguments.
    rest: Vec<String>,
}

/// The value of option `opt`: the rest of `--opt=value`, or the next argument.
fn value_of(
    opt: &str,
    inline: Option<String>,
    it: &mut impl Iterator<Item = String>,
    what: &str,
) -> Result<String, String> {
    inline
        .or_else(|| it.next())
        .ok_or_else(|| format!("{opt} needs {what}"))
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("-t {s}: expected a positive number of seconds, e.g. 10 or 0.5");
    let secs: f64 = s.parse().map_err(|_| bad())?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(bad());
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

fn parse_cli(args: Vec<String>) -> Result<Cli, String> {
    let mut o = Opts {
        sock: None,
        json: false,
        timeout: DEFAULT_TIMEOUT,
        count: None,
        rest: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        // `--long=value` as well as `--long value`.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        match name.as_str() {
            "-s" | "--socket" => {
                let s = value_of(&name, inline, &mut it, "a socket path or tcp:HOST:PORT")?;
                o.sock = Some(s);
            }
            "-t" | "--timeout" => {
                let s = value_of(&name, inline, &mut it, "a number of seconds")?;
                o.timeout = parse_timeout(&s)?;
            }
            "-n" => {
                let s = value_of(&name, inline, &mut it, "a count")?;
                match s.parse::<u64>() {
                    Ok(n) if n > 0 => o.count = Some(n),
                    _ => return Err(format!("-n {s}: expected a count of at least 1")),
                }
            }
            "--json" if inline.is_none() => o.json = true,
            "-h" | "--help" if inline.is_none() => return Ok(Cli::Help),
            "--version" if inline.is_none() => return Ok(Cli::Version),
            _ if a.starts_with('-') && a.len() > 1 => {
                return Err(format!("unknown option '{a}' (see --help)"))
            }
            _ => o.rest.push(a),
        }
    }
    Ok(Cli::Run(o))
}

/// `-s` if given, else the environment's value (`env`, unset or empty: none).
fn pick_socket(arg: Option<String>, env: Option<OsString>) -> Result<String, String> {
    if let Some(s) = arg {
        return Ok(s);
    }
    match env.filter(|v| !v.is_empty()).map(OsString::into_string) {
        Some(Ok(s)) => Ok(s),
        Some(Err(raw)) => Err(format!(
            "{SOCKET_ENV}={}: not valid UTF-8",
            raw.to_string_lossy()
        )),
        None => Err(format!(
            "no QMP socket: give -s SOCKET or set {SOCKET_ENV} (see --help)"
        )),
    }
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq)]
enum Endpoint {
    Unix(String),
    /// `HOST:PORT`, as `TcpStream::connect` takes it.
    Tcp(String),
}

fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    if let Some(a) = s.strip_prefix("tcp:") {
        let bad = || format!("{s}: expected tcp:HOST:PORT");
        let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        let host = if host.is_empty() { "localhost" } else { host };
        return Ok(Endpoint::Tcp(format!("{host}:{port}")));
    }
    let path = s.strip_prefix("unix:").unwrap_or(s);
    if path.is_empty() {
        return Err("the socket path is empty".into());
    }
    Ok(Endpoint::Unix(path.to_string()))
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn open(ep: &Endpoint) -> io::Result<Stream> {
        Ok(match ep {
            Endpoint::Unix(p) => Stream::Unix(UnixStream::connect(p)?),
            Endpoint::Tcp(a) => Stream::Tcp(TcpStream::connect(a.as_str())?),
        })
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
            Stream::Tcp(s) => {
                s.set_read_timeout(read)?;
                s.set_write_timeout(write)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.flush(),
            Stream::Tcp(s) => s.flush(),
        }
    }
}

/// `10s`, `0.5s`.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

fn timed_out(t: Duration, what: &str) -> io::Error {
    io::Error::new(
        ErrorKind::TimedOut,
        format!("timed out after {} waiting for {what}", secs(t)),
    )
}

/// Connects within `t`. The connect runs on its own thread (a unix connect to a full
/// backlog, or a name lookup, may block without a bound); one that is still blocked
/// when `t` runs out is abandoned, and goes with the process.
fn connect(ep: &Endpoint, t: Duration) -> io::Result<Stream> {
    let (tx, rx) = mpsc::channel();
    let ep2 = ep.clone();
    std::thread::spawn(move || {
        let _ = tx.send(Stream::open(&ep2));
    });
    match rx.recv_timeout(t) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(timed_out(t, "the connection")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(io::Error::other(
            "the connecting thread ended without a result",
        )),
    }
}

struct Client {
    s: Stream,
    /// Bytes received and not yet returned as a line.
    buf: Vec<u8>,
    timeout: Duration,
    /// A SHUTDOWN event has been read.
    shutdown: bool,
}

impl Client {
    fn connect(ep: &Endpoint, timeout: Duration) -> io::Result<Client> {
        let s = connect(ep, timeout)?;
        s.set_timeouts(None, Some(timeout))?;
        let mut c = Client {
            s,
            buf: Vec::new(),
            timeout,
            shutdown: false,
        };
        let greeting = c.next_within("the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(io::Error::other(format!(
                "not a QMP server: it greeted with {greeting}"
            )));
        }
        let r = c.call("qmp_capabilities", Map::new())?;
        if r.get("error").is_some() {
            return Err(io::Error::other(format!("negotiation failed: {r}")));
        }
        Ok(c)
    }

    /// The next JSON line, or `None` once `deadline` passes (never without one).
    fn next(&mut self, deadline: Option<Instant>) -> io::Result<Option<Value>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&text).map_err(|e| {
                    io::Error::new(
                        ErrorKind::InvalidData,
                        format!("the server sent invalid JSON ({e}): {}", text.trim_end()),
                    )
                })?;
                if v.get("event").and_then(Value::as_str) == Some("SHUTDOWN") {
                    self.shutdown = true;
                }
                return Ok(Some(v));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    ErrorKind::InvalidData,
                    format!("the server sent a line longer than {MAX_LINE} bytes"),
                ));
            }
            let wait = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    Some(left)
                }
            };
            self.s.set_timeouts(wait, Some(self.timeout))?;
            let mut chunk = [0u8; 8192];
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "connection closed",
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                // The loop looks at the deadline again.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next JSON line within the timeout; `what` names it in the timeout's message.
    fn next_within(&mut self, what: &str) -> io::Result<Value> {
        let deadline = Instant::now() + self.timeout;
        self.next(Some(deadline))?
            .ok_or_else(|| timed_out(self.timeout, what))
    }

    /// Runs a command; events that arrive before the reply are printed to stderr.
    fn call(&mut self, cmd: &str, args: Map<String, Value>) -> io::Result<Value> {
        let mut req = json!({"execute": cmd});
        if !args.is_empty() {
            req["arguments"] = Value::Object(args);
        }
        let what = format!("the reply to '{cmd}'");
        self.s
            .write_all(format!("{req}\r\n").as_bytes())
            .map_err(|e| match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    timed_out(self.timeout, &format!("the server to take '{cmd}'"))
                }
                _ => e,
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let Some(v) = self.next(Some(deadline))? else {
                return Err(timed_out(self.timeout, &what));
            };
            if v.get("event").is_some() {
                eprintln!("{v}");
                continue;
            }
            return Ok(v);
        }
    }

    /// Reads until `deadline`, printing events to stderr; false when the daemon shut
    /// down (SHUTDOWN seen, or the connection closed after it).
    fn idle_until(&mut self, deadline: Instant) -> io::Result<bool> {
        loop {
            match self.next(Some(deadline)) {
                Ok(None) => return Ok(true),
                Ok(Some(v)) => {
                    if v.get("event").is_some() {
                        eprintln!("{v}");
                    }
                    if self.shutdown {
                        return Ok(false);
                    }
                }
                Err(_) if self.shutdown => return Ok(false),
                Err(e) => return Err(e),
            }
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
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!("'{a}': expected key=value or key:=json"));
        };
        let (k, v) = match k.strip_suffix(':') {
            Some(k) => (
                k,
                serde_json::from_str(v).map_err(|e| format!("{k}: invalid JSON: {e}"))?,
            ),
            None => (k, typed(v)),
        };
        if k.is_empty() {
            return Err(format!("'{a}': the key is empty"));
        }
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

/// `CLASS: DESC` of an error reply.
fn error_text(e: &Value) -> String {
    format!(
        "{}: {}",
        e["class"].as_str().unwrap_or("Error"),
        e["desc"].as_str().unwrap_or("")
    )
}

/// Writes `s` to stdout now; a closed stdout (`| head`) is an error, not a panic.
fn emit(s: &str) -> Result<(), String> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
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

fn link(up: bool) -> String {
    let s = if up { "up" } else { "down" };
    s.to_string()
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
                link(p["link-up"].as_bool().unwrap_or(false)),
                p["rx-packets"].to_string(),
                p["rx-bytes"].to_string(),
                p["tx-packets"].to_string(),
                p["tx-bytes"].to_string(),
                latency(&p["latency-ns"]),
                if drops.is_empty() { "-".into() } else { drops },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "PORT",
            "TYPE",
            "LINK",
            "RX-PKTS",
            "RX-BYTES",
            "TX-PKTS",
            "TX-BYTES",
            "LAT P50/P99",
            "DROPS",
        ],
        ports,
    ));
    out
}

/// A port's sampled time in the switch as `p50/p99` in µs, `-` before any sample.
fn latency(l: &Value) -> String {
    match (l["samples"].as_u64(), l["p50"].as_u64(), l["p99"].as_u64()) {
        (Some(n), Some(a), Some(b)) if n > 0 => {
            format!("{:.1}/{:.1}µs", a as f64 / 1000.0, b as f64 / 1000.0)
        }
        _ => "-".into(),
    }
}

/// One port's counters in an x-query-stats sample.
#[derive(Debug, Clone, PartialEq)]
struct PortCounters {
    name: String,
    kind: String,
    link_up: bool,
    rx_packets: u64,
    rx_bytes: u64,
    tx_packets: u64,
    tx_bytes: u64,
    /// All drop reasons together.
    drops: u64,
}

/// An x-query-stats sample and when it was taken.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    ports: Vec<PortCounters>,
}

fn port_counters(v: &Value) -> Vec<PortCounters> {
    let n = |p: &Value, k: &str| p[k].as_u64().unwrap_or(0);
    v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| PortCounters {
            name: p["name"].as_str().unwrap_or("").to_string(),
            kind: p["type"].as_str().unwrap_or("").to_string(),
            link_up: p["link-up"].as_bool().unwrap_or(false),
            rx_packets: n(p, "rx-packets"),
            rx_bytes: n(p, "rx-bytes"),
            tx_packets: n(p, "tx-packets"),
            tx_bytes: n(p, "tx-bytes"),
            drops: p["drops"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, d)| d.as_u64().unwrap_or(0))
                .fold(0u64, u64::saturating_add),
        })
        .collect()
}

/// A port's rates between two samples, per second.
#[derive(Debug, Clone, PartialEq)]
struct PortRates {
    name: String,
    kind: String,
    link_up: bool,
    rx_pps: f64,
    rx_bps: f64,
    tx_pps: f64,
    tx_bps: f64,
    drops_ps: f64,
}

/// Rates of each port of `cur` since `prev`. A port new since `prev`, or whose counter
/// went back (deleted and added again), counts from zero.
fn rates(prev: &Sample, cur: &Sample) -> Vec<PortRates> {
    let dt = cur
        .at
        .saturating_duration_since(prev.at)
        .as_secs_f64()
        .max(1e-6);
    let per_s = |now: u64, before: Option<u64>| {
        let d = match before {
            Some(b) if b <= now => now - b,
            _ => now,
        };
        d as f64 / dt
    };
    cur.ports
        .iter()
        .map(|p| {
            let old = prev.ports.iter().find(|o| o.name == p.name);
            let f = |get: fn(&PortCounters) -> u64| per_s(get(p), old.map(get));
            PortRates {
                name: p.name.clone(),
                kind: p.kind.clone(),
                link_up: p.link_up,
                rx_pps: f(|c| c.rx_packets),
                rx_bps: 8.0 * f(|c| c.rx_bytes),
                tx_pps: f(|c| c.tx_packets),
                tx_bps: 8.0 * f(|c| c.tx_bytes),
                drops_ps: f(|c| c.drops),
            }
        })
        .collect()
}

/// A rate with an SI prefix and about three significant digits: `0`, `0.5`, `950`,
/// `12.3k`, `1.50M`.
fn si(x: f64) -> String {
    if !x.is_finite() || x < 0.05 {
        return "0".into();
    }
    if x < 10.0 {
        return format!("{x:.1}");
    }
    const UNITS: [&str; 6] = ["", "k", "M", "G", "T", "P"];
    let (mut v, mut u) = (x, 0);
    while v >= 999.5 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    let unit = UNITS[u];
    match v {
        _ if u == 0 => format!("{v:.0}"),
        v if v < 9.995 => format!("{v:.2}{unit}"),
        v if v < 99.95 => format!("{v:.1}{unit}"),
        v => format!("{v:.0}{unit}"),
    }
}

fn rates_table(r: &[PortRates]) -> String {
    let rows = r
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.kind.clone(),
                link(p.link_up),
                si(p.rx_pps),
                si(p.rx_bps),
                si(p.tx_pps),
                si(p.tx_bps),
                si(p.drops_ps),
            ]
        })
        .collect();
    table(
        &[
            "PORT", "TYPE", "LINK", "RX-PPS", "RX-BIT/S", "TX-PPS", "TX-BIT/S", "DROPS/S",
        ],
        rows,
    )
}

fn rates_json(r: &[PortRates], interval: Duration) -> String {
    let ports: Vec<Value> = r
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "type": p.kind, "link-up": p.link_up,
                "rx-pps": p.rx_pps, "rx-bps": p.rx_bps,
                "tx-pps": p.tx_pps, "tx-bps": p.tx_bps,
                "drops-per-s": p.drops_ps,
            })
        })
        .collect();
    json!({"interval-s": interval.as_secs_f64(), "ports": ports}).to_string() + "\n"
}

/// What a `top` step ends with.
enum Step<T> {
    Go(T),
    /// The daemon shut down.
    Shutdown,
    /// The daemon refused x-query-stats (the message is printed).
    Refused,
}

/// One x-query-stats sample, timed at the middle of its round trip.
fn sample(c: &mut Client) -> Result<Step<Sample>, String> {
    let sent = Instant::now();
    let reply = match c.call("x-query-stats", Map::new()) {
        Ok(r) => r,
        Err(_) if c.shutdown => return Ok(Step::Shutdown),
        Err(e) => return Err(e.to_string()),
    };
    if let Some(e) = reply.get("error") {
        eprintln!("x-query-stats: {}", error_text(e));
        return Ok(Step::Refused);
    }
    let at = sent + sent.elapsed() / 2;
    Ok(Step::Go(Sample {
        at,
        ports: port_counters(&reply["return"]),
    }))
}

fn top(c: &mut Client, sock: &str, count: Option<u64>, raw: bool) -> Result<ExitCode, String> {
    let tty = io::stdout().is_terminal();
    let at = |e: String| format!("{sock}: {e}");
    let mut prev = match sample(c).map_err(at)? {
        Step::Go(s) => s,
        Step::Shutdown => return Ok(ExitCode::SUCCESS),
        Step::Refused => return Ok(ExitCode::from(1)),
    };
    let mut shown = 0u64;
    loop {
        // Wait out the interval, watching for the daemon going away.
        if !c
            .idle_until(prev.at + TOP_INTERVAL)
            .map_err(|e| at(e.to_string()))?
        {
            return Ok(ExitCode::SUCCESS);
        }
        let cur = match sample(c).map_err(at)? {
            Step::Go(s) => s,
            Step::Shutdown => return Ok(ExitCode::SUCCESS),
            Step::Refused => return Ok(ExitCode::from(1)),
        };
        let r = rates(&prev, &cur);
        let interval = cur.at.saturating_duration_since(prev.at);
        let text = if raw {
            rates_json(&r, interval)
        } else if tty {
            format!(
                "{CLEAR}pollswitch-ctl top: {sock}, refresh {}, rates over {:.2}s\n\n{}",
                shown + 1,
                interval.as_secs_f64(),
                rates_table(&r)
            )
        } else if shown > 0 {
            format!("\n{}", rates_table(&r))
        } else {
            rates_table(&r)
        };
        emit(&text)?;
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        prev = cur;
    }
}

fn events(c: &mut Client, sock: &str) -> Result<ExitCode, String> {
    loop {
        match c.next(None) {
            Ok(Some(v)) => {
                emit(&format!("{v}\n"))?;
                if c.shutdown {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Ok(None) => {}
            Err(e) => return Err(format!("{sock}: {e}, without a SHUTDOWN event")),
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let o = match parse_cli(args)? {
        Cli::Help => {
            emit(USAGE)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cli::Version => {
            emit(&format!("pollswitch-ctl {}\n", env!("CARGO_PKG_VERSION")))?;
            return Ok(ExitCode::SUCCESS);
        }
        Cli::Run(o) => o,
    };
    let Some((cmd, kv)) = o.rest.split_first() else {
        return Err("a command is required (see --help)".into());
    };
    let cmd = cmd.as_str();
    if matches!(cmd, "events" | "top") && !kv.is_empty() {
        return Err(format!("{cmd} takes no arguments (see --help)"));
    }
    if o.count.is_some() && cmd != "top" {
        return Err("-n COUNT is for top only".into());
    }
    let args = parse_args(kv)?;
    let sock = pick_socket(o.sock, std::env::var_os(SOCKET_ENV))?;
    let ep = parse_endpoint(&sock)?;
    let mut c = Client::connect(&ep, o.timeout).map_err(|e| format!("{sock}: {e}"))?;
    match cmd {
        "events" => return events(&mut c, &sock),
        "top" => return top(&mut c, &sock, o.count, o.json),
        _ => {}
    }
    let reply = c.call(cmd, args).map_err(|e| format!("{sock}: {e}"))?;
    if let Some(e) = reply.get("error") {
        eprintln!("{}", error_text(e));
        return Ok(ExitCode::from(1));
    }
    let r = &reply["return"];
    match (cmd, o.json) {
        ("query-netdev", false) => emit(&netdev_table(r))?,
        ("x-query-stats", false) => emit(&stats_table(r))?,
        (_, _) if r.is_string() => emit(&r.as_str().unwrap_or("").replace("\r\n", "\n"))?,
        _ if r == &json!({}) => {}
        _ => emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(r).unwrap_or_default()
        ))?,
    }
    // The SHUTDOWN event follows quit's reply: print it (to stderr, as events before a
    // reply are) if it comes soon.
    if cmd == "quit" {
        let deadline = Instant::now() + o.timeout.min(Duration::from_secs(1));
        while !c.shutdown {
            match c.next(Some(deadline)) {
                Ok(Some(v)) if v.get("event").is_some() => eprintln!("{v}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Arguments as the OS gives them: one that is not UTF-8 is an error, not a panic.
    let mut argv = Vec::new();
    for (i, a) in std::env::args_os().skip(1).enumerate() {
        match a.into_string() {
            Ok(s) => argv.push(s),
            Err(raw) => {
                eprintln!(
                    "pollswitch-ctl: argument {} is not valid UTF-8 ({})",
                    i + 1,
                    raw.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    match run(argv) {
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

    fn strs(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

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
    fn value_syntax_is_as_the_help_says() {
        let m = parse_args(&strs(&[
            "a=-7",
            "b=+7",
            "c=007",
            "d=1.5",
            "e=0x10",
            "f=True",
            "g=",
            "h=99999999999999999999",
            "i:=\"123\"",
            "j:=\"true\"",
            "k:=null",
            "cmd=info a=b:=c",
            "l=1",
            "l=2",
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(m),
            json!({"a": -7, "b": 7, "c": 7, "d": "1.5", "e": "0x10", "f": "True", "g": "",
                   "h": "99999999999999999999", "i": "123", "j": "true", "k": null,
                   "cmd": "info a=b:=c", "l": 2})
        );
        assert!(parse_args(&strs(&["=1"])).is_err());
        assert!(parse_args(&strs(&[":=1"])).is_err());
        assert!(parse_args(&strs(&["i:=123abc"])).is_err());
        assert!(USAGE.contains("command-line:='\"123\"'"));
    }

    #[test]
    fn options() {
        let run = |a: &[&str]| match parse_cli(strs(a)) {
            Ok(Cli::Run(o)) => o,
            other => panic!("{a:?}: {other:?}"),
        };
        let o = run(&["-s", "x.sock", "--json", "query-netdev"]);
        assert_eq!(o.sock.as_deref(), Some("x.sock"));
        assert!(o.json);
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
        assert_eq!(o.rest, strs(&["query-netdev"]));
        let o = run(&["top", "-n", "3", "--timeout=0.5", "--socket=tcp:h:1"]);
        assert_eq!(o.count, Some(3));
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.sock.as_deref(), Some("tcp:h:1"));
        assert_eq!(run(&["-t", "2", "x"]).timeout, Duration::from_secs(2));
        assert_eq!(parse_cli(strs(&["x", "--help"])), Ok(Cli::Help));
        assert_eq!(parse_cli(strs(&["--version"])), Ok(Cli::Version));
        for bad in [
            &["-t"][..],
            &["-t", "0"],
            &["-t", "-1"],
            &["-t", "nan"],
            &["-t", "inf"],
            &["-t", "1e30"],
            &["-t", "ten"],
            &["-n", "0"],
            &["-n", "x"],
            &["-s"],
            &["--bogus"],
            &["--json=1"],
        ] {
            assert!(parse_cli(strs(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn socket_from_option_or_environment() {
        assert_eq!(
            pick_socket(Some("a".into()), Some("b".into())),
            Ok("a".into())
        );
        assert_eq!(pick_socket(None, Some("b".into())), Ok("b".into()));
        let e = pick_socket(None, None).unwrap_err();
        assert!(e.contains("-s SOCKET") && e.contains(SOCKET_ENV), "{e}");
        assert!(pick_socket(None, Some("".into())).is_err());
        assert_eq!(
            parse_endpoint("tcp:127.0.0.1:4444"),
            Ok(Endpoint::Tcp("127.0.0.1:4444".into()))
        );
        assert_eq!(
            parse_endpoint("tcp::4444"),
            Ok(Endpoint::Tcp("localhost:4444".into()))
        );
        assert_eq!(
            parse_endpoint("tcp:[::1]:4444"),
            Ok(Endpoint::Tcp("[::1]:4444".into()))
        );
        assert_eq!(
            parse_endpoint("unix:/run/a"),
            Ok(Endpoint::Unix("/run/a".into()))
        );
        assert_eq!(
            parse_endpoint("/run/a"),
            Ok(Endpoint::Unix("/run/a".into()))
        );
        for bad in ["tcp:host", "tcp:host:99999", "tcp:host:", "", "unix:"] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?}");
        }
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

    #[test]
    fn rates_from_two_samples() {
        let port = |name: &str, rx: u64, drops: u64| {
            json!({"name": name, "type": "socket", "link-up": true,
                   "rx-packets": rx, "rx-bytes": rx * 100, "tx-packets": 0, "tx-bytes": 0,
                   "drops": {"a": drops, "b": 1}})
        };
        let t0 = Instant::now();
        let prev = Sample {
            at: t0,
            ports: port_counters(&json!({"ports": [port("a", 100, 0), port("b", 50, 0)]})),
        };
        let cur = Sample {
            at: t0 + Duration::from_secs(2),
            ports: port_counters(&json!({"ports": [
                port("a", 300, 4), port("b", 10, 0), port("c", 8, 0)
            ]})),
        };
        assert_eq!(prev.ports[0].drops, 1);
        let r = rates(&prev, &cur);
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].rx_pps, r[0].rx_bps, r[0].drops_ps),
            (100.0, 80000.0, 2.0)
        );
        // Went back (re-added): counts from zero; new port: from zero.
        assert_eq!((r[1].rx_pps, r[2].rx_pps), (5.0, 4.0));
        assert_eq!(
            rates_table(&r[..1]),
            "PORT  TYPE    LINK  RX-PPS  RX-BIT/S  TX-PPS  TX-BIT/S  DROPS/S\n\
             a     socket  up    100     80.0k     0       0         2.0\n"
        );
        let j: Value = serde_json::from_str(&rates_json(&r, Duration::from_secs(2))).unwrap();
        assert_eq!(j["ports"][0]["rx-pps"], json!(100.0));
        assert_eq!(j["interval-s"], json!(2.0));
    }

    #[test]
    fn si_prefixes() {
        let cases = [
            (0.0, "0"),
            (0.01, "0"),
            (0.5, "0.5"),
            (9.94, "9.9"),
            (10.0, "10"),
            (999.0, "999"),
            (999.7, "1.00k"),
            (1234.0, "1.23k"),
            (12345.0, "12.3k"),
            (123456.0, "123k"),
            (1.5e6, "1.50M"),
            (9.9e9, "9.90G"),
            (f64::NAN, "0"),
            (-3.0, "0"),
            (1e30, "1000000000000000P"),
        ];
        for (x, want) in cases {
            assert_eq!(si(x), want, "{x}");
        }
    }
}
