//! vde_switch (vde2) as a peer, and a native client of its port protocol (no `vde_plug`
//! in between).
//!
//! ```text
//!  VdePort ──stream: request_v3{magic,3,port<<8,our dgram path,description}──► DIR/ctl
//!          ◄──────────────────────── sockaddr_un of the new port's data socket
//!  VdePort ◄══ dgram: one Ethernet frame per datagram, both ways ══► vde_switch
//! ```
//!
//! The control stream stays open for the port's life (closing it frees the port); our
//! datagram socket lives in a temp dir removed with the port. The switch runs daemonized
//! (`-d`) in a temp dir with its pid file and management socket beside it, confined to
//! cores when asked; SIGTERM makes it remove its sockets and exit. Its pid file is tracked
//! before it starts, so a signal handler finds the daemon that forked away from us.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cleanup::{self, read_pid, Guard, Item};
use crate::cmd::{check, output_of, require, TempDir};
use crate::error::{chain, Error, Result};
use crate::process::{alive, signal, Signal};
use crate::{cpu, drain, wait_until, DrainLimit, STARTUP_TIMEOUT};

/// `struct sockaddr_un` as vde_switch reads and writes it: `sun_family` (native u16)
/// and 108 bytes of NUL-padded path.
pub const SOCKADDR_UN_LEN: usize = 110;
/// First word of a request.
pub const VDE_MAGIC: u32 = 0xfeed_face;
/// The request version spoken here.
pub const VDE_VERSION: u32 = 3;
/// Largest frame a port receives whole.
pub const MAX_FRAME: usize = 65536;
/// Most bytes one management reply may have.
const MGMT_MAX: usize = 1 << 20;
/// Longest a management command may take.
const MGMT_TIMEOUT: Duration = Duration::from_secs(5);

/// `path` as a `struct sockaddr_un` in vde_switch's layout.
pub fn sockaddr_un(path: &Path) -> Result<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= SOCKADDR_UN_LEN - 2 {
        return Err(Error::Invalid(format!(
            "unix socket path too long: {}",
            path.display()
        )));
    }
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    sa[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    sa[2..2 + bytes.len()].copy_from_slice(bytes);
    Ok(sa)
}

/// The path in a `struct sockaddr_un` of vde_switch's layout (up to the first NUL).
pub fn sockaddr_un_path(sa: &[u8; SOCKADDR_UN_LEN]) -> PathBuf {
    let path = &sa[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    PathBuf::from(String::from_utf8_lossy(&path[..end]).into_owned())
}

/// A `request_v3` for port `port` (0: any free port), answering to the datagram socket
/// at `own`, described as `description`.
pub fn request(port: u32, own: &Path, description: &str) -> Result<Vec<u8>> {
    let mut req = Vec::with_capacity(12 + SOCKADDR_UN_LEN + description.len());
    req.extend_from_slice(&VDE_MAGIC.to_ne_bytes());
    req.extend_from_slice(&VDE_VERSION.to_ne_bytes());
    req.extend_from_slice(&(port << 8).to_ne_bytes());
    req.extend_from_slice(&sockaddr_un(own)?);
    req.extend_from_slice(description.as_bytes());
    Ok(req)
}

/// How to run a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VdeOptions {
    /// Hub mode (`-x`): flood every frame, as QEMU's hub and pollswitch's do.
    pub hub: bool,
    /// Number of ports (`-n`); `None`: vde_switch's default.
    pub ports: Option<usize>,
    /// Cores it is confined to (`taskset -c`); empty: not confined.
    pub cores: Vec<usize>,
}

/// A running `vde_switch`, stopped on drop.
#[derive(Debug)]
pub struct VdeSwitch {
    dir: TempDir,
    pid: u32,
    command: String,
    _guard: Guard,
}

impl VdeSwitch {
    /// Starts `vde_switch -s DIR/sw -M DIR/mgmt -d -p DIR/pid` (plus `-x`, `-n` as
    /// `opts` says) and waits until its control and management sockets exist.
    pub fn launch(opts: &VdeOptions) -> Result<VdeSwitch> {
        let bin = require("vde_switch")?;
        let dir = TempDir::create("pollswitch-vde")?;
        let (sw, mgmt, pidfile) = (dir.join("sw"), dir.join("mgmt"), dir.join("pid"));
        // Tracked before it exists: the daemon forks away from the process started here.
        let guard = cleanup::track(Item::PidFile(pidfile.clone()));
        let mut words = cpu::taskset(&opts.cores)?;
        words.push(bin.display().to_string());
        if opts.hub {
            words.push("-x".into());
        }
        if let Some(n) = opts.ports {
            words.extend(["-n".to_string(), n.to_string()]);
        }
        for (flag, path) in [("-s", &sw), ("-M", &mgmt)] {
            words.extend([flag.to_string(), path.display().to_string()]);
        }
        words.extend(["-d".to_string(), "-p".into(), pidfile.display().to_string()]);
        let command = words.join(" ");
        // With -d the process started here forks the daemon and exits.
        check(
            &command,
            output_of(Command::new(&words[0]).args(&words[1..]))?,
        )?;
        let mut pid = None;
        let up = wait_until(STARTUP_TIMEOUT, || {
            pid = read_pid(&pidfile);
            pid.is_some() && sw.join("ctl").exists() && mgmt.exists()
        });
        let switch = VdeSwitch {
            dir,
            pid: pid.unwrap_or(0),
            command,
            _guard: guard,
        };
        if !up {
            return Err(Error::Process {
                name: "vde_switch".into(),
                detail: format!(
                    "no pid file and control socket within {STARTUP_TIMEOUT:?}\n  command: {}",
                    switch.command
                ),
            });
        }
        Ok(switch)
    }

    /// Starts a switch with vde_switch's defaults.
    ///
    /// # Panics
    /// When vde_switch is not installed (run scripts/setup-host), fails to start, or has
    /// no control socket within [`STARTUP_TIMEOUT`].
    pub fn start() -> VdeSwitch {
        VdeSwitch::launch(&VdeOptions::default()).unwrap_or_else(|e| panic!("{}", chain(&e)))
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

    /// The command line that started it.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Stops it with SIGTERM; an error when it had exited before, or did not exit
    /// within `timeout` (it is then killed).
    pub fn stop(&mut self, timeout: Duration) -> Result<()> {
        let failed = |detail: &str| Error::Process {
            name: "vde_switch".into(),
            detail: detail.into(),
        };
        if self.pid == 0 || !alive(self.pid) {
            return Err(failed("had already exited before the stop"));
        }
        signal(self.pid, Signal::TERM);
        let exited = wait_until(timeout, || !alive(self.pid));
        if !exited {
            signal(self.pid, Signal::KILL);
            wait_until(Duration::from_secs(2), || !alive(self.pid));
        }
        self.pid = 0;
        if exited {
            Ok(())
        } else {
            Err(failed(&format!(
                "did not exit within {timeout:?} of SIGTERM; killed"
            )))
        }
    }

    /// Runs one management command (e.g. `"port/print"`) and returns its data lines
    /// (empty for commands without data).
    pub fn try_mgmt(&self, cmd: &str) -> Result<String> {
        const PROMPT: &str = "vde$ ";
        let io = |what: &str| {
            let what = format!("vde_switch management: {what}");
            move |e| Error::socket(what, e)
        };
        let mut s = UnixStream::connect(self.mgmt_path()).map_err(io("connect"))?;
        let deadline = Instant::now() + MGMT_TIMEOUT;
        read_until(&mut s, PROMPT, deadline)?; // banner
        s.write_all(format!("{cmd}\n").as_bytes())
            .map_err(io("write"))?;
        let reply = read_until(&mut s, PROMPT, deadline)?;
        let reply = reply.trim_end_matches(PROMPT).trim_end();
        // "0000 DATA END WITH '.'\n<data>\n.\n1000 Success" or just "1000 Success".
        let (body, status) = reply.rsplit_once('\n').unwrap_or(("", reply));
        if !status.starts_with("1000") {
            return Err(Error::Command {
                command: format!("vde mgmt {cmd}"),
                detail: reply.to_string(),
            });
        }
        Ok(match body.split_once('\n') {
            Some((head, data)) if head.starts_with("0000 DATA") => {
                data.strip_suffix("\n.").unwrap_or(data).to_string()
            }
            _ => String::new(),
        })
    }

    /// Like [`VdeSwitch::try_mgmt`].
    ///
    /// # Panics
    /// When the socket fails or the command does not end in `1000 Success`.
    pub fn mgmt(&self, cmd: &str) -> String {
        self.try_mgmt(cmd)
            .unwrap_or_else(|e| panic!("{}", chain(&e)))
    }
}

impl Drop for VdeSwitch {
    fn drop(&mut self) {
        if self.pid != 0 && alive(self.pid) {
            signal(self.pid, Signal::TERM);
            if !wait_until(Duration::from_secs(5), || !alive(self.pid)) {
                signal(self.pid, Signal::KILL);
                wait_until(Duration::from_secs(2), || !alive(self.pid));
            }
        }
        // TempDir removes what it left behind.
    }
}

/// Reads from `s` until the text read ends with `end`: at most [`MGMT_MAX`] bytes, until
/// `deadline`.
fn read_until(s: &mut UnixStream, end: &str, deadline: Instant) -> Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let fail = |what: String| Error::Command {
        command: "vde mgmt".into(),
        detail: what,
    };
    while !got.ends_with(end.as_bytes()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || got.len() > MGMT_MAX {
            return Err(fail(format!(
                "no {end:?} within {MGMT_TIMEOUT:?} and {MGMT_MAX} bytes: {}",
                String::from_utf8_lossy(&got[got.len().saturating_sub(200)..])
            )));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| Error::socket("vde mgmt: read timeout", e))?;
        match s.read(&mut buf) {
            Ok(0) => {
                return Err(fail(format!(
                    "closed before {end:?}: {}",
                    String::from_utf8_lossy(&got)
                )))
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(Error::socket("vde mgmt: read", e)),
        }
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

/// A port on a vde_switch: one frame per datagram. Dropping it closes the control
/// connection, which frees the port, and removes its socket's directory.
#[derive(Debug)]
pub struct VdePort {
    _ctl: UnixStream,
    data: UnixDatagram,
    _dir: TempDir,
}

impl VdePort {
    /// Asks the switch whose directory is `sock_dir` for port `port` (0: any free
    /// port), described as `description`.
    pub fn attach(sock_dir: &Path, port: u32, description: &str) -> Result<VdePort> {
        let dir = TempDir::create("pollswitch-vdeport")?;
        let own = dir.join("port.sock");
        let sock = |what: String| move |e| Error::socket(what, e);
        let data = UnixDatagram::bind(&own).map_err(sock(format!("bind {}", own.display())))?;
        let ctl_path = sock_dir.join("ctl");
        let mut ctl = UnixStream::connect(&ctl_path)
            .map_err(sock(format!("connect {}", ctl_path.display())))?;
        ctl.write_all(&request(port, &own, description)?)
            .map_err(sock("send the vde request".into()))?;
        ctl.set_read_timeout(Some(STARTUP_TIMEOUT))
            .map_err(sock("read timeout".into()))?;
        let mut sa = [0u8; SOCKADDR_UN_LEN];
        ctl.read_exact(&mut sa).map_err(sock(format!(
            "vde_switch at {} refused the port (no sockaddr_un reply)",
            sock_dir.display()
        )))?;
        let remote = sockaddr_un_path(&sa);
        data.connect(&remote).map_err(sock(format!(
            "connect vde data socket {}",
            remote.display()
        )))?;
        Ok(VdePort {
            _ctl: ctl,
            data,
            _dir: dir,
        })
    }

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
        VdePort::attach(sock_dir, port, description).unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// The data socket: one frame per datagram, connected to the switch.
    pub fn data(&self) -> &UnixDatagram {
        &self.data
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
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.data
                .set_read_timeout(Some(left))
                .expect("set read timeout");
            match self.data.recv(&mut buf) {
                // An exact copy: a kept frame does not hold the whole buffer.
                Ok(n) => return Some(buf[..n].to_vec()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("vde recv: {e}"),
            }
        }
    }

    /// Every frame that arrives until none has come for `quiet`, in order.
    ///
    /// # Panics
    /// See [`VdePort::recv_timeout`]; and as [`drain`] says, when more than
    /// [`DrainLimit::DEFAULT`] arrive.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        drain(
            || "vde port".to_string(),
            quiet,
            DrainLimit::DEFAULT,
            |t| self.recv_timeout(t),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
        let mut f = [&dst[..], &src[..], &[0x88, 0xb5]].concat();
        f.extend((0..len - 14).map(|i| seed.wrapping_add(i as u8)));
        f
    }

    #[test]
    fn request_is_packed_like_vde() {
        let sa = sockaddr_un(Path::new("/tmp/x")).unwrap();
        assert_eq!(&sa[..2], &(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(&sa[2..8], b"/tmp/x");
        assert!(sa[8..].iter().all(|&b| b == 0));
        assert_eq!(sockaddr_un_path(&sa), Path::new("/tmp/x"));
        assert!(sockaddr_un(Path::new(&"x".repeat(108))).is_err());
        let req = request(5, Path::new("/tmp/x"), "me").unwrap();
        assert_eq!(req.len(), 12 + SOCKADDR_UN_LEN + 2);
        assert_eq!(&req[..4], &VDE_MAGIC.to_ne_bytes());
        assert_eq!(&req[4..8], &3u32.to_ne_bytes());
        assert_eq!(&req[8..12], &(5u32 << 8).to_ne_bytes());
        assert_eq!(&req[12..12 + SOCKADDR_UN_LEN], &sa);
        assert_eq!(&req[12 + SOCKADDR_UN_LEN..], b"me");
    }

    #[test]
    fn vde_switch_starts_switches_and_stops() {
        let sw = VdeSwitch::start();
        let (pid, dir) = (sw.pid(), sw.sock_dir());
        assert!(alive(pid));
        let a = VdePort::connect(&sw, "test a");
        let b = VdePort::connect(&sw, "test b");
        let ports = sw.mgmt("port/print");
        assert!(
            ports.contains("test a") && ports.contains("test b"),
            "{ports}"
        );
        assert!(sw.try_mgmt("no/such/command").is_err());

        // Broadcast floods; vde_switch then learns a's MAC and unicasts to it.
        let mac_a = [2, 0, 0, 0, 0, 0xa];
        let f = frame([0xff; 6], mac_a, 60, 1);
        a.send(&f);
        assert_eq!(b.recv_timeout(Duration::from_secs(2)), Some(f));
        let back = frame(mac_a, [2, 0, 0, 0, 0, 0xb], 1500, 2);
        b.send(&back);
        assert_eq!(a.recv_timeout(Duration::from_secs(2)), Some(back));
        assert!(b.drain(Duration::from_millis(100)).is_empty());

        drop((a, b));
        drop(sw);
        assert!(!alive(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn a_hub_on_cores_floods_and_stops_cleanly() {
        let mut sw = VdeSwitch::launch(&VdeOptions {
            hub: true,
            ports: Some(8),
            cores: vec![0],
        })
        .unwrap();
        assert!(sw.command().contains("taskset") && sw.command().contains(" -x "));
        let (a, b) = (
            VdePort::attach(&sw.sock_dir(), 0, "a").unwrap(),
            VdePort::attach(&sw.sock_dir(), 0, "b").unwrap(),
        );
        let mac_b = [2, 0, 0, 0, 0, 0xb];
        // A hub floods even known unicast: b's MAC learnt, c still hears it.
        b.send(&frame([0xff; 6], mac_b, 60, 0));
        a.drain(Duration::from_millis(100));
        let c = VdePort::attach(&sw.sock_dir(), 0, "c").unwrap();
        let f = frame(mac_b, [2, 0, 0, 0, 0, 0xa], 60, 1);
        a.send(&f);
        assert_eq!(c.recv_timeout(Duration::from_secs(2)), Some(f));
        let pid = sw.pid();
        sw.stop(Duration::from_secs(5)).unwrap();
        assert!(!alive(pid));
        assert!(sw.stop(Duration::from_secs(1)).is_err(), "already stopped");
        assert!(VdePort::attach(Path::new("/nonexistent-vde-dir"), 0, "x")
            .unwrap_err()
            .to_string()
            .contains("/nonexistent-vde-dir/ctl"));
    }
}
