//! `pollswitch-ctl` end to end: the binary itself against a real daemon (or a socket that
//! never speaks), for what its command line promises: the socket from `POLLSWITCH_QMP`,
//! `--version`, bounded waits (exit status 2), `events` ending with the daemon's SHUTDOWN,
//! `key:=JSON` sending a string that looks like a number, and `top` showing the rates
//! of traffic that flows, on a pipe and on a terminal.
//!
//! Every run of the binary is bounded: one still running past its limit is killed and
//! the test fails with what it printed.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{mac, until_path_works, Args, BCAST, ETH_EXP};
use tests::{bin_path, frame, free_tcp_port, require_tool, wait_until, Daemon, TempDir, UdpEnd};

/// The variable `pollswitch-ctl` reads the socket from.
const ENV: &str = "POLLSWITCH_QMP";
/// Longest any one run of the binary may take here.
const LIMIT: Duration = Duration::from_secs(10);
/// The ANSI sequence `top` clears a terminal with.
const CLEAR: &str = "\x1b[2J";

/// `pollswitch-ctl`, with no socket from this process's environment and no stdin.
fn ctl() -> Command {
    let mut c = Command::new(bin_path("pollswitch-ctl"));
    c.env_remove(ENV).stdin(Stdio::null());
    c
}

/// `pollswitch-ctl args...`, as [`ctl`].
fn ctl_with(args: &[&str]) -> Command {
    let mut c = ctl();
    c.args(args);
    c
}

/// What a finished run printed.
#[derive(Debug)]
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// A running `pollswitch-ctl` (or `script`), its output copied as it comes; killed on
/// drop.
struct Running {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    /// Both copies reached EOF.
    closed: [Arc<AtomicBool>; 2],
    start: Instant,
    what: String,
}

/// Copies `pipe` into `to` as it comes; sets `closed` at EOF.
fn copy_into(
    mut pipe: impl Read + Send + 'static,
    to: Arc<Mutex<String>>,
    closed: Arc<AtomicBool>,
) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // A read error ends the copy like EOF does.
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            to.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        closed.store(true, Ordering::Release);
    });
}

impl Running {
    fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let what = format!("{cmd:?}");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = Arc::<Mutex<String>>::default();
        let err = Arc::<Mutex<String>>::default();
        let closed: [Arc<AtomicBool>; 2] = Default::default();
        let stdout = child.stdout.take().expect("piped stdout");
        copy_into(stdout, out.clone(), closed[0].clone());
        let stderr = child.stderr.take().expect("piped stderr");
        copy_into(stderr, err.clone(), closed[1].clone());
        Running {
            child,
            out,
            err,
            closed,
            start: Instant::now(),
            what,
        }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for the exit, at most `limit` from the start (then kills it and panics).
    fn wait(mut self, limit: Duration) -> Ran {
        let mut status = None;
        let left = limit.saturating_sub(self.start.elapsed());
        wait_until(left, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        let took = self.start.elapsed();
        let Some(status) = status else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "{} still running after {limit:?} (killed); stdout:\n{}\nstderr:\n{}",
                self.what,
                self.stdout(),
                self.stderr()
            );
        };
        // The copies reach EOF a moment after the exit (bounded: a grandchild holding
        // the pipes must not hang the test).
        wait_until(Duration::from_secs(2), || {
            self.closed.iter().all(|c| c.load(Ordering::Acquire))
        });
        Ran {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
            took,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Errors mean it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: Command) -> Ran {
    Running::spawn(cmd).wait(LIMIT)
}

/// `run`, and the run must exit with `code`.
fn run_code(cmd: Command, code: i32) -> Ran {
    let what = format!("{cmd:?}");
    let r = run(cmd);
    assert_eq!(r.status.code(), Some(code), "{what}: {r:?}");
    r
}

/// A daemon with a QMP unix socket in a temp dir.
struct Sut {
    d: Daemon,
    sock: String,
    _dir: TempDir,
}

fn start(args: Args) -> Sut {
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock").display().to_string();
    let d = args
        .opt("-qmp", &format!("unix:{sock},server=on,wait=off"))
        .start();
    Sut { d, sock, _dir: dir }
}

impl Sut {
    /// `pollswitch-ctl -s SOCK args...`
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = ctl();
        c.arg("-s").arg(&self.sock).args(args);
        c
    }
}

#[test]
fn version_help_and_no_socket() {
    let r = run_code(ctl_with(&["--version"]), 0);
    assert_eq!(
        r.stdout,
        format!("pollswitch-ctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    let r = run_code(ctl_with(&["--help"]), 0);
    for needle in ["key:=JSON", "command-line:='\"123\"'", ENV, "-t, --timeout"] {
        assert!(
            r.stdout.contains(needle),
            "--help lacks {needle:?}:\n{}",
            r.stdout
        );
    }
    // Neither -s nor the environment: a clear error, status 2.
    let r = run_code(ctl_with(&["query-version"]), 2);
    assert!(
        r.stderr.contains("-s SOCKET") && r.stderr.contains(ENV),
        "{}",
        r.stderr
    );
}

#[test]
fn socket_from_the_environment() {
    let port = free_tcp_port();
    let sut = start(Args::new().opt("-qmp", &format!("tcp:127.0.0.1:{port},server=on,wait=off")));
    let tcp = format!("tcp:127.0.0.1:{port}");
    let unix = format!("unix:{}", sut.sock);
    for env in [sut.sock.as_str(), unix.as_str(), tcp.as_str()] {
        let mut c = ctl();
        c.env(ENV, env).args(["--json", "query-version"]);
        let r = run_code(c, 0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{ENV}={env}: not JSON ({e}): {}", r.stdout));
        assert!(
            v["package"]
                .as_str()
                .unwrap_or("")
                .starts_with("pollswitch"),
            "{ENV}={env}: {v}"
        );
    }
    // -s wins over the environment.
    let mut c = sut.ctl(&["query-netdev"]);
    c.env(ENV, "/nonexistent/qmp.sock");
    run_code(c, 0);
    // And a socket that is not there is an error naming it.
    let mut c = ctl();
    c.env(ENV, "/nonexistent/qmp.sock").arg("query-netdev");
    let r = run_code(c, 2);
    assert!(r.stderr.contains("/nonexistent/qmp.sock"), "{}", r.stderr);
    sut.d.stop_clean();
}

/// A unix socket that accepts one connection, writes `hello` on it, then says nothing
/// more until the returned sender is dropped.
fn silent_server(dir: &TempDir, name: &str, hello: &'static str) -> (String, mpsc::Sender<()>) {
    let path = dir.join(name);
    let l = UnixListener::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    let (tx, rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let _ = s.write_all(hello.as_bytes());
            let _ = rx.recv();
        }
    });
    (path.display().to_string(), tx)
}

#[test]
fn a_silent_server_times_out_with_status_2() {
    let dir = TempDir::new();
    // Accepts, never greets.
    let (sock, _hold) = silent_server(&dir, "mute.sock", "");
    let mut c = ctl();
    c.args(["-s", &sock, "-t", "1", "query-version"]);
    let r = run_code(c, 2);
    assert!(
        r.stderr
            .contains("timed out after 1s waiting for the QMP greeting"),
        "{}",
        r.stderr
    );
    assert!(
        r.took >= Duration::from_millis(900) && r.took < Duration::from_secs(5),
        "took {:?}",
        r.took
    );
    // Greets, never answers: the reply's wait is bounded too (--timeout, fractions).
    let (sock, _hold2) = silent_server(
        &dir,
        "greets.sock",
        "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n",
    );
    let mut c = ctl();
    c.env(ENV, &sock)
        .args(["--timeout", "0.5", "query-version"]);
    let r = run_code(c, 2);
    assert!(
        r.stderr
            .contains("timed out after 0.5s waiting for the reply to 'qmp_capabilities'"),
        "{}",
        r.stderr
    );
    assert!(r.took < Duration::from_secs(5), "took {:?}", r.took);
}

#[test]
fn events_end_with_status_0_at_shutdown() {
    let sut = start(
        Args::new()
            .netdev("hubport,id=h0,hubid=0")
            .netdev("nic,id=n0,netdev=h0"),
    );
    let ev = Running::spawn(sut.ctl(&["events"]));
    // Make events until one reaches it: then it has negotiated, and will get SHUTDOWN.
    let mut promiscuous = true;
    let seen = wait_until(Duration::from_secs(5), || {
        promiscuous = !promiscuous;
        // query-rx-filter re-arms the event, x-set-rx-filter fires it.
        run_code(sut.ctl(&["query-rx-filter", "name=n0"]), 0);
        run_code(
            sut.ctl(&[
                "x-set-rx-filter",
                "name=n0",
                &format!("promiscuous={promiscuous}"),
            ]),
            0,
        );
        ev.stdout().contains("NIC_RX_FILTER_CHANGED")
    });
    assert!(
        seen,
        "events printed no NIC_RX_FILTER_CHANGED; stdout:\n{}\nstderr:\n{}",
        ev.stdout(),
        ev.stderr()
    );
    sut.d.stop_clean();
    let r = ev.wait(LIMIT);
    // Status 2 with "without a SHUTDOWN event": the daemon closed the connection
    // before its SHUTDOWN reached the client.
    assert_eq!(r.status.code(), Some(0), "events after SIGTERM: {r:?}");
    let last = r.stdout.lines().last().unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("last line not JSON ({e}): {last}"));
    assert_eq!(v["event"], "SHUTDOWN", "{}", r.stdout);
}

#[test]
fn a_string_that_looks_like_a_number() {
    let sut = start(Args::new());
    // key=value: 123 is sent as a number, which the command refuses.
    let r = run_code(sut.ctl(&["human-monitor-command", "command-line=123"]), 1);
    assert_eq!(
        r.stderr,
        "GenericError: Invalid parameter type for 'command-line', expected: string\n"
    );
    // key:=JSON with a JSON string: the daemon gets "123" and runs it as HMP would.
    let r = run_code(
        sut.ctl(&["human-monitor-command", "command-line:=\"123\""]),
        0,
    );
    assert_eq!(r.stdout, "unknown command: '123'\n");
    // Same for a boolean-looking string.
    let r = run_code(
        sut.ctl(&["human-monitor-command", "command-line:=\"true\""]),
        0,
    );
    assert_eq!(r.stdout, "unknown command: 'true'\n");
    sut.d.stop_clean();
}

/// A rate as `top` prints it (`950`, `0.5`, `12.3k`, `1.50M`).
fn parse_rate(s: &str) -> f64 {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k')) => (&s[..i], 1e3),
        Some((i, 'M')) => (&s[..i], 1e6),
        Some((i, 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>()
        .unwrap_or_else(|e| panic!("rate {s:?}: {e}"))
        * mult
}

/// The tables `top` printed (blank-line separated), each as rows keyed by column.
fn tables(out: &str) -> Vec<Vec<HashMap<String, String>>> {
    out.split("\n\n")
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            let mut lines = t.lines().filter(|l| !l.trim().is_empty());
            let header: Vec<&str> = lines
                .next()
                .map(|h| h.split_whitespace().collect())
                .unwrap_or_default();
            lines
                .map(|l| {
                    header
                        .iter()
                        .map(|h| h.to_string())
                        .zip(l.split_whitespace().map(str::to_string))
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// The row of port `name` in `table`.
fn row<'a>(table: &'a [HashMap<String, String>], name: &str) -> &'a HashMap<String, String> {
    table
        .iter()
        .find(|r| r.get("PORT").map(String::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no row for port {name} in {table:?}"))
}

/// Two UDP ports `a` and `b` on hub 0, with frames flowing from `a`'s far end to `b`'s
/// (proven), and a thread that keeps sending about 500 a second until dropped.
struct Traffic {
    sut: Sut,
    flow: Flow,
}

/// The sending and receiving threads; they stop when this is dropped.
struct Flow {
    stop: Arc<AtomicBool>,
    _ends: (Arc<UdpEnd>, Arc<UdpEnd>),
}

fn traffic() -> Traffic {
    let mut ea = UdpEnd::new();
    let mut eb = UdpEnd::new();
    let sut = start(Args::new().udp("a", 0, &mut ea).udp("b", 0, &mut eb));
    until_path_works(
        &ea,
        &eb,
        |i| frame(BCAST, mac(1), ETH_EXP, 60, i),
        "a to b through hub 0",
    );
    let (ea, eb) = (Arc::new(ea), Arc::new(eb));
    let stop = Arc::new(AtomicBool::new(false));
    let (s, tx) = (stop.clone(), ea.clone());
    thread::spawn(move || {
        let mut i = 0u8;
        while !s.load(Ordering::Relaxed) {
            tx.send(&frame(BCAST, mac(1), ETH_EXP, 60, i));
            i = i.wrapping_add(1);
            thread::sleep(Duration::from_millis(2));
        }
    });
    // The far end of b takes what arrives, so its socket never fills.
    let (s, rx) = (stop.clone(), eb.clone());
    thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            rx.recv_timeout(Duration::from_millis(50));
        }
    });
    Traffic {
        sut,
        flow: Flow {
            stop,
            _ends: (ea, eb),
        },
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn top_shows_the_rates_of_flowing_traffic() {
    let t = traffic();
    let r = run_code(t.sut.ctl(&["top", "-n", "2"]), 0);
    assert!(!r.stdout.contains(CLEAR), "not a terminal, no clearing");
    let got = tables(&r.stdout);
    assert_eq!(got.len(), 2, "two refreshes, two tables:\n{}", r.stdout);
    for table in &got {
        let a = row(table, "a");
        let b = row(table, "b");
        assert!(
            parse_rate(&a["RX-PPS"]) > 0.0,
            "port a receives:\n{}",
            r.stdout
        );
        assert!(parse_rate(&a["RX-BIT/S"]) > 0.0, "{}", r.stdout);
        assert!(
            parse_rate(&b["TX-PPS"]) > 0.0,
            "port b sends:\n{}",
            r.stdout
        );
        assert_eq!(a["LINK"], "up");
        assert_eq!(a["DROPS/S"], "0", "{}", r.stdout);
    }
    // Two samples one second apart per refresh, the first reused: about 2 s, bounded.
    assert!(
        r.took >= Duration::from_millis(1900) && r.took < Duration::from_secs(6),
        "took {:?}",
        r.took
    );
    // Without -n it runs until the daemon shuts down, then exits 0.
    let top = Running::spawn(t.sut.ctl(&["top"]));
    assert!(
        wait_until(Duration::from_secs(5), || top.stdout().contains("RX-PPS")),
        "no table from top; stderr:\n{}",
        top.stderr()
    );
    drop(t.flow);
    t.sut.d.stop_clean();
    let r = top.wait(LIMIT);
    assert_eq!(r.status.code(), Some(0), "top after SIGTERM: {r:?}");
}

#[test]
fn top_clears_a_terminal() {
    let script = require_tool("script");
    let t = traffic();
    let line = format!(
        "'{}' top -n 2",
        bin_path("pollswitch-ctl")
            .display()
            .to_string()
            .replace('\'', "'\\''")
    );
    let mut c = Command::new(script);
    c.args(["-qec", &line, "/dev/null"])
        .env(ENV, &t.sut.sock)
        .stdin(Stdio::null());
    let r = run_code(c, 0);
    assert_eq!(
        r.stdout.matches(CLEAR).count(),
        2,
        "one clear per refresh: {:?}",
        r.stdout
    );
    // Each screen: the clear, a title, then the table with a's receive rate.
    let last = r
        .stdout
        .rsplit(CLEAR)
        .next()
        .unwrap_or("")
        .replace("\r\n", "\n");
    let table: Vec<_> = tables(&last).into_iter().flatten().collect();
    assert!(parse_rate(&row(&table, "a")["RX-PPS"]) > 0.0, "{last}");
    drop(t.flow);
    t.sut.d.stop_clean();
}
