//! vde_switch (vde2) as a peer, and a raw client of its port protocol.
//!
//! ```text
//!  VdePort ──stream: request_v3──► DIR/ctl          (kept open: closing it frees the port)
//!          ◄──────── sockaddr_un ── data socket of the new port
//!  VdePort ◄══ dgram: one frame per datagram ══► vde_switch ◄══► other ports
//! ```
//!
//! The switch runs daemonized (`-d`) in a temp dir with its pid file and management
//! socket beside it; SIGTERM makes it remove its sockets and exit.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{pid_alive, require_tool, signal, wait_until, TempDir, STARTUP_TIMEOUT};

/// A running `vde_switch`, stopped on drop.
#[derive(Debug)]
pub struct VdeSwitch {
    dir: TempDir,
    pid: u32,
}

impl VdeSwitch {
    /// Starts `vde_switch -s DIR/sw -M DIR/mgmt -d -p DIR/pid` and waits until its
    /// control socket exists.
    ///
    /// # Panics
    /// When vde_switch is not installed (run scripts/setup-host), fails to start, or has
    /// no control socket within [`STARTUP_TIMEOUT`].
    pub fn start() -> VdeSwitch {
        let bin = require_tool("vde_switch");
        let dir = TempDir::new();
        let (sw, mgmt, pidfile) = (dir.join("sw"), dir.join("mgmt"), dir.join("pid"));
        // With -d the process we start forks the daemon and exits.
        let out = Command::new(&bin)
            .arg("-s")
            .arg(&sw)
            .arg("-M")
            .arg(&mgmt)
            .arg("-d")
            .arg("-p")
            .arg(&pidfile)
            .output()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        assert!(
            out.status.success(),
            "vde_switch failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pid = None;
        let up = wait_until(STARTUP_TIMEOUT, || {
            pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            pid.is_some() && sw.join("ctl").exists() && mgmt.exists()
        });
        match pid {
            Some(pid) if up => VdeSwitch { dir, pid },
            Some(pid) => {
                signal(pid, "KILL");
                panic!("vde_switch (pid {pid}) made no control socket in {STARTUP_TIMEOUT:?}")
            }
            None => panic!("vde_switch wrote no pid file in {STARTUP_TIMEOUT:?}"),
        }
    }

    /// The switch directory (`-s`), as QEMU's `vde,sock=` and pollswitch's take it.
    pub fn sock_dir(&self) -> PathBuf {
        self.dir.join("sw")
    }

    /// The management socket (`-M`).
    pub fn mgmt_path(&self) -> PathBuf {
        self.dir.join("mgmt")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Runs one management command (e.g. `"port/print"`) and returns its data lines
    /// (empty for commands without data).
    ///
    /// # Panics
    /// When the socket fails or the command does not end in `1000 Success`.
    pub fn mgmt(&self, cmd: &str) -> String {
        const PROMPT: &str = "vde$ ";
        let mut s = UnixStream::connect(self.mgmt_path())
            .unwrap_or_else(|e| panic!("connect vde_switch management socket: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set read timeout");
        read_until(&mut s, PROMPT); // banner
        s.write_all(format!("{cmd}\n").as_bytes())
            .unwrap_or_else(|e| panic!("vde mgmt write: {e}"));
        let reply = read_until(&mut s, PROMPT);
        let reply = reply.trim_end_matches(PROMPT).trim_end();
        // "0000 DATA END WITH '.'\n<data>\n.\n1000 Success" or just "1000 Success".
        let (body, status) = reply.rsplit_once('\n').unwrap_or(("", reply));
        assert!(
            status.starts_with("1000"),
            "vde mgmt {cmd:?} failed: {reply}"
        );
        match body.split_once('\n') {
            Some((head, data)) if head.starts_with("0000 DATA") => {
                data.strip_suffix("\n.").unwrap_or(data).to_string()
            }
            _ => String::new(),
        }
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        signal(self.pid, "TERM");
        if !wait_until(Duration::from_secs(5), || !pid_alive(self.pid)) {
            signal(self.pid, "KILL");
            wait_until(Duration::from_secs(2), || !pid_alive(self.pid));
        }
        // TempDir removes what it left behind.
    }
}

/// Reads from `s` until the text read ends with `end`.
fn read_until(s: &mut UnixStream, end: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end.as_bytes()) {
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "vde mgmt closed before {end:?}: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("vde mgmt read: {e}; got {}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// `struct sockaddr_un` as vde_switch reads and writes it: `sun_family` (native u16) and
/// 108 bytes of NUL-padded path.
const SOCKADDR_UN_LEN: usize = 110;
const VDE_MAGIC: u32 = 0xfeed_face;
const VDE_VERSION: u32 = 3;

fn sockaddr_un(path: &Path) -> [u8; SOCKADDR_UN_LEN] {
    let bytes = path.as_os_str().as_encoded_bytes();
    assert!(
        bytes.len() < 108,
        "unix socket path too long: {}",
        path.display()
    );
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    sa[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    sa[2..2 + bytes.len()].copy_from_slice(bytes);
    sa
}

/// A port on a [`VdeSwitch`], driven by the raw vde protocol: one frame per datagram.
/// Dropping it closes the control connection, which frees the port.
#[derive(Debug)]
pub struct VdePort {
    _ctl: UnixStream,
    data: UnixDatagram,
    _dir: TempDir,
}

impl VdePort {
    /// Connects to any free port of `switch`, described as `description`.
    ///
    /// # Panics
    /// When the switch refuses or the sockets fail.
    pub fn connect(switch: &VdeSwitch, description: &str) -> VdePort {
        Self::connect_to(&switch.sock_dir(), 0, description)
    }

    /// Connects to the switch whose directory is `sock_dir`, asking for port `port`
    /// (0: any free port).
    ///
    /// # Panics
    /// When the switch refuses or the sockets fail.
    pub fn connect_to(sock_dir: &Path, port: u32, description: &str) -> VdePort {
        let dir = TempDir::new();
        let own = dir.join("port.sock");
        let data =
            UnixDatagram::bind(&own).unwrap_or_else(|e| panic!("bind {}: {e}", own.display()));
        let mut ctl = UnixStream::connect(sock_dir.join("ctl"))
            .unwrap_or_else(|e| panic!("connect {}/ctl: {e}", sock_dir.display()));
        let mut req = Vec::new();
        req.extend_from_slice(&VDE_MAGIC.to_ne_bytes());
        req.extend_from_slice(&VDE_VERSION.to_ne_bytes());
        req.extend_from_slice(&(port << 8).to_ne_bytes());
        req.extend_from_slice(&sockaddr_un(&own));
        req.extend_from_slice(description.as_bytes());
        ctl.write_all(&req)
            .unwrap_or_else(|e| panic!("send vde request: {e}"));
        ctl.set_read_timeout(Some(STARTUP_TIMEOUT))
            .expect("set read timeout");
        let mut sa = [0u8; SOCKADDR_UN_LEN];
        ctl.read_exact(&mut sa)
            .unwrap_or_else(|e| panic!("vde_switch refused the port (no sockaddr_un reply): {e}"));
        let path = &sa[2..];
        let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
        let remote = Path::new(std::str::from_utf8(&path[..end]).expect("utf-8 vde data path"));
        data.connect(remote)
            .unwrap_or_else(|e| panic!("connect vde data socket {}: {e}", remote.display()));
        VdePort {
            _ctl: ctl,
            data,
            _dir: dir,
        }
    }

    /// Sends one frame.
    ///
    /// # Panics
    /// When the send fails.
    pub fn send(&self, frame: &[u8]) {
        let n = self
            .data
            .send(frame)
            .unwrap_or_else(|e| panic!("vde send of {} bytes: {e}", frame.len()));
        assert_eq!(n, frame.len(), "short vde send");
    }

    /// The next frame, or `None` when none arrives within `timeout`.
    ///
    /// # Panics
    /// On socket errors other than the timeout.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.data
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            match self.data.recv(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    return Some(buf);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("vde recv: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn vde_switch_starts_switches_and_stops() {
        let sw = VdeSwitch::start();
        let (pid, dir) = (sw.pid(), sw.sock_dir());
        assert!(pid_alive(pid));
        let a = VdePort::connect(&sw, "test a");
        let b = VdePort::connect(&sw, "test b");
        let ports = sw.mgmt("port/print");
        assert!(
            ports.contains("test a") && ports.contains("test b"),
            "{ports}"
        );

        // Broadcast floods; vde_switch then learns a's MAC and unicasts to it.
        let mac_a = [2, 0, 0, 0, 0, 0xa];
        let f = frame([0xff; 6], mac_a, 0x88b5, 60, 1);
        a.send(&f);
        assert_eq!(b.recv_timeout(Duration::from_secs(2)), Some(f));
        let back = frame(mac_a, [2, 0, 0, 0, 0, 0xb], 0x88b5, 1500, 2);
        b.send(&back);
        assert_eq!(a.recv_timeout(Duration::from_secs(2)), Some(back));
        assert!(b.recv_timeout(Duration::from_millis(100)).is_none());

        drop((a, b));
        drop(sw);
        assert!(!pid_alive(pid));
        assert!(!dir.exists());
    }
}
