//! QEMU as a peer: `qemu-system-x86_64 -M none -nodefaults -display none` with no
//! guest, only netdevs, so the only work it does is its network layer's.
//!
//! ```text
//!  UdpEnd ──udp──► netdev a ─┐
//!                            ├─ hub 0 (floods to every other port, never back)
//!  UdpEnd ◄──udp── netdev b ─┘
//! ```
//!
//! QEMU starts in about 30 ms this way and relays frames of 14..65000 bytes unchanged
//! between every netdev on a hub, which makes it the reference the integration tests
//! compare pollswitch with and a system the benchmarks measure beside it. Run it inside a
//! namespace when its netdevs make taps, and confined to cores when it is measured.
//!
//! Ready once QMP capabilities are negotiated: QEMU answers `qmp_capabilities` from its
//! main loop, which runs only after every netdev exists.

use std::ffi::OsStr;
use std::fmt;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd::{require, TempDir};
use crate::error::{chain, Error, Result};
use crate::process::{Launch, Process, Signal};
use crate::{Netns, QmpClient, STARTUP_TIMEOUT};

/// The `-netdev SPEC` arguments for `netdevs`.
pub fn netdev_args(netdevs: &[&str]) -> Vec<String> {
    netdevs
        .iter()
        .flat_map(|spec| ["-netdev".to_string(), spec.to_string()])
        .collect()
}

/// The `-netdev` arguments of a hub: each spec in `netdevs` (which must carry `id=`)
/// followed by a `hubport` on hub 0 named `hub-<id>`, so every frame one netdev receives
/// leaves through all the others.
pub fn hub_args(netdevs: &[&str]) -> Result<Vec<String>> {
    let mut specs = Vec::new();
    for spec in netdevs {
        let id = spec
            .split(',')
            .find_map(|kv| kv.strip_prefix("id="))
            .ok_or_else(|| Error::Invalid(format!("netdev spec without id=: {spec:?}")))?;
        specs.push(spec.to_string());
        specs.push(format!("hubport,id=hub-{id},hubid=0,netdev={id}"));
    }
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    Ok(netdev_args(&specs))
}

/// A running `qemu-system-x86_64 -M none`, killed on drop with its temp files removed.
pub struct QemuPeer {
    // Dropped in this order: the connection, the process, then its directory.
    qmp: Option<QmpClient>,
    proc: Process,
    dir: TempDir,
}

impl QemuPeer {
    /// Starts `qemu-system-x86_64 -M none -nodefaults -display none -qmp unix:...`
    /// followed by `args` as given, inside namespace `netns` when given, confined to
    /// `cores` when not empty, and waits until QMP capabilities are negotiated: from then
    /// on every netdev exists and relays.
    pub fn launch<S: AsRef<OsStr>>(
        netns: Option<&str>,
        cores: &[usize],
        args: &[S],
    ) -> Result<QemuPeer> {
        let qemu = require("qemu-system-x86_64")?;
        let dir = TempDir::create("pollswitch-qemu")?;
        let sock = dir.join("qmp.sock");
        let proc = Launch::new("qemu", &qemu)
            .args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(args)
            .netns(netns)
            .cores(cores)
            .spawn()?;
        let mut peer = QemuPeer {
            qmp: None,
            proc,
            dir,
        };
        // The socket file appears before QEMU listens on it (connections are refused
        // meanwhile) and before the netdevs exist.
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let client = loop {
            if let Some(status) = peer.proc.try_wait() {
                peer.proc.wait_closed(Duration::from_secs(1));
                return Err(peer.failed(&format!("exited during start-up ({status})")));
            }
            match QmpClient::connect_unix(&sock) {
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(peer.failed(&format!("no QMP greeting: {e}"))),
                Ok(c) => break c,
            }
        };
        let mut client = client;
        if let Err(e) = client.try_negotiate() {
            // Give an exiting QEMU a moment to finish its output and be reaped.
            crate::wait_until(Duration::from_secs(1), || !peer.proc.running());
            return Err(peer.failed(&format!("QMP negotiation: {e}")));
        }
        peer.qmp = Some(client);
        Ok(peer)
    }

    /// Starts QEMU with one `-netdev SPEC` per entry of `netdevs`, in this namespace.
    ///
    /// # Panics
    /// See [`QemuPeer::start_args`].
    pub fn start(netdevs: &[&str]) -> QemuPeer {
        Self::start_args(None, &netdev_args(netdevs))
    }

    /// Starts QEMU with one `-netdev SPEC` per entry of `netdevs`, inside `ns`.
    ///
    /// # Panics
    /// See [`QemuPeer::start_args`].
    pub fn start_in(ns: &Netns, netdevs: &[&str]) -> QemuPeer {
        Self::start_args(Some(ns), &netdev_args(netdevs))
    }

    /// Starts a hub relay of `netdevs` (see [`hub_args`]).
    ///
    /// # Panics
    /// When a spec lacks `id=`; otherwise see [`QemuPeer::start_args`].
    pub fn hub(ns: Option<&Netns>, netdevs: &[&str]) -> QemuPeer {
        let args = hub_args(netdevs).unwrap_or_else(|e| panic!("{e}"));
        Self::start_args(ns, &args)
    }

    /// Like [`QemuPeer::launch`], inside `ns` when there is one, not confined.
    ///
    /// # Panics
    /// When qemu-system-x86_64 is not installed (run scripts/setup-host), or it exits or
    /// does not answer on QMP within [`STARTUP_TIMEOUT`]; the message has its stderr.
    pub fn start_args<S: AsRef<OsStr> + fmt::Debug>(ns: Option<&Netns>, args: &[S]) -> QemuPeer {
        QemuPeer::launch(ns.map(|n| n.name.as_str()), &[], args).unwrap_or_else(|e| {
            panic!("qemu-system-x86_64 {args:?} did not come up: {}", chain(&e))
        })
    }

    /// Sends a QMP command and returns the whole reply (`{"return": ...}` or
    /// `{"error": ...}`), on the connection negotiated at start. `args` may be
    /// `Value::Null`. Events met on the way are kept: see [`QemuPeer::qmp_client`].
    ///
    /// # Panics
    /// When the QMP connection fails; the message has QEMU's stderr.
    pub fn qmp(&mut self, cmd: &str, args: Value) -> Value {
        let r = self.qmp_client().try_execute(cmd, args);
        r.unwrap_or_else(|e| panic!("QEMU QMP {cmd}: {e}; stderr: {}", self.log()))
    }

    /// The QMP connection made at start (already negotiated), for events and raw lines.
    pub fn qmp_client(&mut self) -> &mut QmpClient {
        self.qmp.as_mut().expect("QMP connection made at start")
    }

    /// The QMP socket. QEMU serves one client per QMP socket at a time and the peer
    /// keeps its connection open, so for a client of your own pass another
    /// `-qmp tcp:...` or `-qmp unix:...` to [`QemuPeer::start_args`].
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The command line that started it.
    pub fn command(&self) -> &str {
        self.proc.command()
    }

    /// A temp directory removed with the peer: a place for sockets the netdevs use.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What QEMU wrote to stderr so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.proc.running()
    }

    /// Stops it with SIGTERM (QEMU then exits with status 0); an error when it had
    /// exited before, exits unsuccessfully, or is still running after `timeout` (it is
    /// then killed).
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if !self.proc.running() {
            return Err(self.failed("had already exited before the stop"));
        }
        self.qmp = None;
        let status = self.proc.stop(Signal::TERM, timeout)?;
        if !status.success() {
            return Err(self.failed(&format!("exited with {status} when stopped")));
        }
        Ok(status)
    }

    /// An error saying `what` happened, with QEMU's command and output.
    pub fn failed(&self, what: &str) -> Error {
        self.proc.failed(what)
    }
}

impl fmt::Debug for QemuPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QemuPeer")
            .field("pid", &self.proc.pid())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::alive;
    use crate::unique;
    use serde_json::json;
    use std::net::UdpSocket;

    const WAIT: Duration = Duration::from_secs(2);

    fn free_port() -> u16 {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn qemu_hub_relays_frames_between_udp_sockets() {
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let (pa, pb) = (free_port(), free_port());
        let spec = |id: &str, s: &UdpSocket, port: u16| {
            format!(
                "socket,id={id},udp={},localaddr=127.0.0.1:{port}",
                s.local_addr().unwrap()
            )
        };
        let (sa, sb) = (spec("a", &a, pa), spec("b", &b, pb));
        let mut q = QemuPeer::hub(None, &[&sa, &sb]);
        b.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 9100];
        for len in [14usize, 60, 1518, 9000] {
            let f: Vec<u8> = (0..len).map(|i| i as u8).collect();
            a.send_to(&f, ("127.0.0.1", pa)).unwrap();
            let n = b.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], &f[..], "len {len}");
        }
        let status = q.qmp("query-status", Value::Null);
        assert!(status["return"]["status"].is_string(), "{status}");
        let err = q.qmp("netdev_del", json!({ "id": "nosuch" }));
        assert_eq!(err["error"]["class"], "DeviceNotFound", "{err}");
        let pid = q.pid();
        q.stop(Duration::from_secs(5)).unwrap();
        assert!(!alive(pid));
        assert!(q.stop(Duration::from_secs(1)).is_err(), "already stopped");
    }

    #[test]
    fn qemu_in_netns_on_a_core_makes_its_tap_there() {
        let ns = Netns::new();
        let tap = unique("qt");
        let spec = format!("tap,id=t0,ifname={tap},script=no,downscript=no");
        let q = QemuPeer::launch(Some(&ns.name), &[0], &netdev_args(&[&spec])).unwrap();
        assert!(q.command().contains("taskset") && q.command().contains(&ns.name));
        assert!(ns.has_link(&tap));
        let pid = q.pid();
        drop(q);
        assert!(!alive(pid));
    }

    #[test]
    fn qmp_client_negotiates_reports_errors_and_events() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tcp = format!("tcp:127.0.0.1:{port},server=on,wait=off");
        let mut q = QemuPeer::start_args(None, &["-qmp", &tcp]);
        // QEMU serves one client per QMP socket; the peer holds the unix one.
        let mut c = QmpClient::connect_tcp(("127.0.0.1", port)).unwrap();
        assert_eq!(c.greeting["QMP"]["version"]["qemu"]["major"], 10);
        let r = c.execute("query-status", Value::Null);
        assert_eq!(r["error"]["class"], "CommandNotFound", "{r}");
        c.negotiate();
        c.send_line(r#"{"execute": "query-status", "id": [1, "x"]}"#);
        let r = c.reply();
        assert_eq!(r["id"], json!([1, "x"]), "{r}");
        assert!(r["return"]["status"].is_string(), "{r}");
        c.send_line("[]");
        assert_eq!(c.reply()["error"]["class"], "GenericError");
        assert!(c.execute_ok("query-status", Value::Null)["status"].is_string());

        // QEMU may announce RESUME at any time after negotiation: only SHUTDOWN counts.
        let early: Vec<Value> = c.take_events();
        assert!(early.iter().all(|e| e["event"] != "SHUTDOWN"), "{early:?}");
        assert_eq!(q.qmp("quit", Value::Null), json!({ "return": {} }));
        for client in [&mut c, q.qmp_client()] {
            let ev = client
                .wait_event("SHUTDOWN", Duration::from_secs(5))
                .expect("SHUTDOWN");
            assert!(ev["timestamp"]["seconds"].is_u64(), "{ev}");
        }
    }

    #[test]
    fn qemu_failure_says_why_with_its_stderr() {
        let err = std::panic::catch_unwind(|| QemuPeer::start(&["bogus,id=x"]))
            .expect_err("a bad netdev makes QEMU exit");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("did not come up") && msg.contains("bogus"),
            "{msg}"
        );
        assert!(hub_args(&["socket,udp=x"]).is_err());
    }
}
