//! QEMU as a protocol peer: `qemu-system-x86_64 -M none` with no guest, only netdevs.
//!
//! ```text
//!  UdpEnd ──udp──► netdev a ─┐
//!                            ├─ hub 0 (floods to every other port, never back)
//!  UdpEnd ◄──udp── netdev b ─┘
//! ```
//!
//! QEMU starts in about 30 ms this way and relays frames of 14..65000 bytes unchanged
//! between every netdev on a hub, which makes it the reference implementation tests
//! compare pollswitch with. Run it inside a [`Netns`] when its netdevs make taps.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{require_tool, wait_until, Netns, QmpClient, TempDir, STARTUP_TIMEOUT};

/// A running `qemu-system-x86_64 -M none`, killed on drop with its temp files removed.
pub struct QemuPeer {
    child: Child,
    dir: TempDir,
    qmp: Option<QmpClient>,
}

impl QemuPeer {
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

    /// Starts a hub relay: each spec in `netdevs` (which must carry `id=`) is added with a
    /// `hubport` on hub 0, named `hub-<id>`, so every frame one netdev receives leaves
    /// through all the others.
    ///
    /// # Panics
    /// When a spec lacks `id=`; otherwise see [`QemuPeer::start_args`].
    pub fn hub(ns: Option<&Netns>, netdevs: &[&str]) -> QemuPeer {
        let mut specs = Vec::new();
        for spec in netdevs {
            let id = spec
                .split(',')
                .find_map(|kv| kv.strip_prefix("id="))
                .unwrap_or_else(|| panic!("netdev spec without id=: {spec:?}"));
            specs.push(spec.to_string());
            specs.push(format!("hubport,id=hub-{id},hubid=0,netdev={id}"));
        }
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        Self::start_args(ns, &netdev_args(&specs))
    }

    /// Starts `qemu-system-x86_64 -M none -nodefaults -display none -qmp unix:...`
    /// followed by `args` as given, inside `ns` when there is one, and waits until QMP
    /// capabilities are negotiated: from then on every netdev exists and relays.
    ///
    /// # Panics
    /// When qemu-system-x86_64 is not installed (run scripts/setup-host), or it exits or
    /// does not answer on QMP within [`STARTUP_TIMEOUT`]; the message has its stderr.
    pub fn start_args<S: AsRef<OsStr> + fmt::Debug>(ns: Option<&Netns>, args: &[S]) -> QemuPeer {
        let qemu = require_tool("qemu-system-x86_64");
        let dir = TempDir::new();
        let sock = dir.join("qmp.sock");
        let log = dir.join("qemu.log");
        let mut cmd = match ns {
            Some(ns) => ns.command(&[qemu.to_str().expect("utf-8 path to qemu")]),
            None => Command::new(&qemu),
        };
        cmd.args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create qemu log file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", qemu.display()));
        let mut peer = QemuPeer {
            child,
            dir,
            qmp: None,
        };
        // The socket file appears before QEMU listens on it (connections are refused
        // meanwhile) and before the netdevs exist; the reply to qmp_capabilities comes
        // from the main loop, so once it arrives every netdev is set up.
        let mut outcome: Option<io::Result<QmpClient>> = None;
        wait_until(STARTUP_TIMEOUT, || {
            if let Ok(Some(status)) = peer.child.try_wait() {
                outcome = Some(Err(io::Error::other(format!("exited, {status}"))));
                return true;
            }
            match QmpClient::connect_unix(&sock) {
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    false
                }
                r => {
                    outcome = Some(r);
                    true
                }
            }
        });
        let negotiated = match outcome {
            Some(Ok(mut c)) => c
                .try_execute("qmp_capabilities", Value::Null)
                .and_then(|r| match r.get("return") {
                    Some(_) => Ok(c),
                    None => Err(io::Error::other(format!("qmp_capabilities refused: {r}"))),
                }),
            Some(Err(e)) => Err(e),
            None => Err(io::Error::other(format!(
                "QMP socket not accepting after {STARTUP_TIMEOUT:?}"
            ))),
        };
        match negotiated {
            Ok(c) => peer.qmp = Some(c),
            Err(e) => {
                // Give an exiting QEMU a moment to finish its log and be reaped.
                wait_until(Duration::from_secs(1), || {
                    matches!(peer.child.try_wait(), Ok(Some(_)))
                });
                panic!(
                    "qemu-system-x86_64 {args:?} did not come up ({e}): {}",
                    peer.log()
                );
            }
        }
        peer
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
        self.child.id()
    }

    /// A temp directory removed with the peer: a place for sockets the netdevs use.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What QEMU wrote to stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }
}

impl fmt::Debug for QemuPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QemuPeer")
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for QemuPeer {
    fn drop(&mut self) {
        self.qmp = None;
        // SIGKILL: QEMU holds nothing that needs an orderly shutdown here. Errors mean
        // it is gone already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn netdev_args(netdevs: &[&str]) -> Vec<String> {
    netdevs
        .iter()
        .flat_map(|spec| ["-netdev".to_string(), spec.to_string()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame, free_udp_port, unique, UdpEnd};
    use serde_json::json;

    const WAIT: Duration = Duration::from_secs(2);

    /// A QEMU socket netdev talking to `end`: QEMU binds `localaddr`, sends to `end`.
    fn udp_spec(id: &str, end: &UdpEnd, local_port: u16) -> String {
        format!(
            "socket,id={id},udp={},localaddr=127.0.0.1:{local_port}",
            end.local_addr()
        )
    }

    #[test]
    fn qemu_hub_relays_frames_between_udp_sockets() {
        let (mut a, b) = (UdpEnd::new(), UdpEnd::new());
        let (pa, pb) = (free_udp_port(), free_udp_port());
        let (sa, sb) = (udp_spec("a", &a, pa), udp_spec("b", &b, pb));
        let mut q = QemuPeer::start(&[
            &sa,
            "hubport,id=ha,hubid=0,netdev=a",
            &sb,
            "hubport,id=hb,hubid=0,netdev=b",
        ]);
        a.set_target(([127, 0, 0, 1], pa).into());
        for (len, seed) in [(14, 0), (60, 1), (1518, 2), (9000, 3)] {
            let f = frame([0xff; 6], [0x52, 0x54, 0, 0, 0, 0xa], 0x88b5, len, seed);
            a.send(&f);
            assert_eq!(b.recv_timeout(WAIT).as_deref(), Some(&f[..]), "len {len}");
        }
        // A hub never sends a frame back to its sender.
        assert!(a.recv_timeout(Duration::from_millis(100)).is_none());

        let status = q.qmp("query-status", Value::Null);
        assert!(status["return"]["status"].is_string(), "{status}");
        let err = q.qmp("netdev_del", json!({ "id": "nosuch" }));
        assert_eq!(err["error"]["class"], "DeviceNotFound", "{err}");
        let info = q.qmp(
            "human-monitor-command",
            json!({ "command-line": "info network" }),
        );
        assert!(info["return"].as_str().unwrap().contains("hub 0"), "{info}");
    }

    #[test]
    fn hub_helper_adds_hubports() {
        let (mut a, b, c) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
        let ports = [free_udp_port(), free_udp_port(), free_udp_port()];
        let specs = [
            udp_spec("a", &a, ports[0]),
            udp_spec("b", &b, ports[1]),
            udp_spec("c", &c, ports[2]),
        ];
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        let _q = QemuPeer::hub(None, &specs);
        a.set_target(([127, 0, 0, 1], ports[0]).into());
        let f = frame([0xff; 6], [2, 0, 0, 0, 0, 1], 0x0800, 100, 9);
        a.send(&f);
        assert_eq!(b.recv_timeout(WAIT), Some(f.clone()));
        assert_eq!(c.recv_timeout(WAIT), Some(f));
    }

    #[test]
    fn qemu_in_netns_makes_its_tap_there() {
        let ns = Netns::new();
        let tap = unique("qt");
        let spec = format!("tap,id=t0,ifname={tap},script=no,downscript=no");
        let q = QemuPeer::start_in(&ns, &[&spec]);
        let links = ns.exec_ok(&["ip", "-o", "link", "show", "dev", &tap]);
        assert!(links.contains(&tap), "{links}");
        let pid = q.pid();
        drop(q);
        assert!(!crate::pid_alive(pid));
    }

    #[test]
    fn qmp_client_negotiates_reports_errors_and_events() {
        let port = crate::free_tcp_port();
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

        assert!(c.next_event(Duration::from_millis(50)).is_none());
        assert_eq!(q.qmp("quit", Value::Null), json!({ "return": {} }));
        for client in [&mut c, q.qmp_client()] {
            let ev = client.next_event(Duration::from_secs(5)).expect("SHUTDOWN");
            assert_eq!(ev["event"], "SHUTDOWN", "{ev}");
            assert!(ev["timestamp"]["seconds"].is_u64(), "{ev}");
        }
    }

    #[test]
    fn qemu_failure_panics_with_its_stderr() {
        let err = std::panic::catch_unwind(|| QemuPeer::start(&["bogus,id=x"]))
            .expect_err("a bad netdev makes QEMU exit");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("did not come up") && msg.contains("bogus"),
            "{msg}"
        );
    }
}
