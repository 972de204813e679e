//! `vde`: a client port of a vde_switch (vde2), spoken to natively (no libvdeplug), with
//! its frames moved by the worker's io_uring through the shared datagram engine.
//!
//! ```text
//!  VdePort ──stream: request_v3{magic,3,port<<8,own dgram path,description}──► DIR/ctl
//!          ◄───────────────────────── sockaddr_un of the new port's data socket
//!  VdePort ◄══ dgram (DgramIo, Recv/Send, connected): one frame per datagram ══► switch
//!
//!  Up ──ctl stream EOF/error──► Closing (cancel ctl recv, DgramIo::stop until done)
//!     ──► Down: frames to it dropped as not-connected; housekeeping re-attaches every
//!         RECONNECT_INTERVAL (same own path, same port request) ──► Up
//! ```
//!
//! The control stream stays open for the port's life (the switch frees the port when it
//! closes); a receive kept posted on it tells us when the switch goes away. Our own
//! datagram socket file lives in the temp dir with the `mode` and `group` QEMU's
//! `mode=`/`group=` ask for, and is removed when the port goes down or is deleted.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use switch::{Backend, DropReason, Io, Pkt};

use crate::error::Error;
use crate::io::{DgramConfig, DgramIo};

/// `struct sockaddr_un` as vde_switch reads and writes it: `sun_family` (native u16)
/// and 108 bytes of NUL-padded path.
pub const SOCKADDR_UN_LEN: usize = 110;
/// First word of a request.
pub const VDE_MAGIC: u32 = 0xfeed_face;
/// The request version spoken here.
pub const VDE_VERSION: u32 = 3;
/// Where libvdeplug looks for a switch when no `sock=` is given, in order.
pub const DEFAULT_SOCKS: [&str; 2] = ["/var/run/vde.ctl", "/tmp/vde.ctl"];
/// Permissions of our own socket without `mode=` (QEMU's default).
pub const DEFAULT_MODE: u32 = 0o700;
/// How long the switch may take to answer a request from the control thread.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long it may take on a reconnect, which blocks the worker (every port of it) for
/// that long at most: a local switch answers in well under a millisecond, so a switch
/// that takes longer is tried again at the next interval rather than waited for.
const RECONNECT_REPLY_TIMEOUT: Duration = Duration::from_millis(5);
/// How often a port whose switch went away tries to attach again.
pub const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// Requests on the control stream carry this bit in their op; the data socket's (the
/// datagram engine's, ops 1..=6) never do.
const CTL_BIT: u8 = 0x40;
const OP_CTL_RECV: u8 = CTL_BIT | 1;
const OP_CTL_CANCEL: u8 = CTL_BIT | 2;

/// `path` as a `struct sockaddr_un` in vde_switch's layout.
pub fn sockaddr_un(path: &Path) -> Option<[u8; SOCKADDR_UN_LEN]> {
    let bytes = path.as_os_str().as_encoded_bytes();
    if bytes.len() >= SOCKADDR_UN_LEN - 2 {
        return None;
    }
    let mut sa = [0u8; SOCKADDR_UN_LEN];
    sa[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
    sa[2..2 + bytes.len()].copy_from_slice(bytes);
    Some(sa)
}

/// The path in a `struct sockaddr_un` of vde_switch's layout; `None` when it is not a
/// unix address or has no path.
pub fn sockaddr_un_path(sa: &[u8; SOCKADDR_UN_LEN]) -> Option<PathBuf> {
    if u16::from_ne_bytes([sa[0], sa[1]]) != libc::AF_UNIX as u16 {
        return None;
    }
    let path = &sa[2..];
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    (end > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&path[..end])))
}

/// A packed `request_v3` for port `port` (0: any free port), answering to the datagram
/// socket whose address is `own`.
pub fn request(port: u16, own: &[u8; SOCKADDR_UN_LEN], description: &str) -> Vec<u8> {
    let mut req = Vec::with_capacity(12 + SOCKADDR_UN_LEN + description.len());
    req.extend_from_slice(&VDE_MAGIC.to_ne_bytes());
    req.extend_from_slice(&VDE_VERSION.to_ne_bytes());
    req.extend_from_slice(&(u32::from(port) << 8).to_ne_bytes());
    req.extend_from_slice(own);
    req.extend_from_slice(description.as_bytes());
    req
}

/// The numeric id of group `name` (a number, or a name in /etc/group).
fn group_id(name: &str) -> Option<u32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// How to attach.
#[derive(Debug, Clone, Default)]
pub struct VdeConfig {
    /// The switch's directory (`sock=`), or its control socket itself; `None`: the
    /// first of [`DEFAULT_SOCKS`] that exists.
    pub sock: Option<PathBuf>,
    /// The port asked for (`port=`; 0: any free port).
    pub port: u16,
    /// Group owner of our own socket (`group=`).
    pub group: Option<String>,
    /// Permissions of our own socket (`mode=`; `None`: [`DEFAULT_MODE`]).
    pub mode: Option<u32>,
    /// What the switch shows for the port in `port/print`.
    pub description: String,
}

/// One attachment to the switch: the control stream and the data socket.
struct Conn {
    ctl: OwnedFd,
    data: DgramIo,
    /// Where the receive on the control stream writes (the switch sends nothing more;
    /// what it does send is ignored).
    buf: Box<[u8; 64]>,
    ctl_posted: bool,
    ctl_inflight: usize,
    cancel_sent: bool,
    closing: bool,
}

/// A port of a vde_switch.
pub struct VdePort {
    cfg: VdeConfig,
    /// The control socket (`DIR/ctl`, or `sock=` itself when it is one).
    ctl_path: PathBuf,
    /// Our own datagram socket's path (unique to this port, reused on reconnect).
    own: PathBuf,
    conn: Option<Conn>,
    stopping: bool,
    next_try: Option<Instant>,
    /// Times the switch went away.
    pub outages: u64,
    /// Times the port attached again after an outage.
    pub reconnects: u64,
}

fn sock_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let addr = path.display().to_string();
    move |source| Error::Socket { what, addr, source }
}

impl VdePort {
    /// Attaches to the switch: fails, like QEMU's "could not open vde", when there is
    /// no switch or it refuses the port.
    pub fn open(cfg: VdeConfig) -> Result<VdePort, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let sock = cfg.sock.clone().unwrap_or_else(|| {
            let found = DEFAULT_SOCKS.iter().find(|p| Path::new(p).exists());
            PathBuf::from(found.unwrap_or(&DEFAULT_SOCKS[1]))
        });
        // A directory holds the control socket; anything else is taken as the control
        // socket itself (both as libvdeplug does).
        let ctl_path = if sock.is_dir() {
            sock.join("ctl")
        } else {
            sock
        };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let own =
            std::env::temp_dir().join(format!("pollswitch-vde.{:05}-{n:05}", std::process::id()));
        if let Some(g) = &cfg.group {
            if group_id(g).is_none() {
                return Err(Error::Config(format!(
                    "could not open vde: group '{g}' does not exist"
                )));
            }
        }
        let mut port = VdePort {
            cfg,
            ctl_path,
            own,
            conn: None,
            stopping: false,
            next_try: None,
            outages: 0,
            reconnects: 0,
        };
        port.conn = Some(port.attach(REPLY_TIMEOUT)?);
        Ok(port)
    }

    /// Our own datagram socket's path.
    pub fn own_path(&self) -> &Path {
        &self.own
    }

    /// Binds our socket, asks the switch for the port and connects to its data socket.
    fn attach(&self, timeout: Duration) -> Result<Conn, Error> {
        let r = self.try_attach(timeout);
        if r.is_err() {
            let _ = std::fs::remove_file(&self.own);
        }
        r
    }

    fn try_attach(&self, timeout: Duration) -> Result<Conn, Error> {
        let (own, ctl_path) = (&self.own, &self.ctl_path);
        let own_sa = sockaddr_un(own).ok_or_else(|| {
            Error::Config(format!(
                "could not open vde: socket path {} is too long",
                own.display()
            ))
        })?;
        // Left over from an earlier attachment of this port (our path is unique to it).
        let _ = std::fs::remove_file(own);
        let data = UnixDatagram::bind(own).map_err(sock_err("could not open vde: bind", own))?;
        let mode = self.cfg.mode.unwrap_or(DEFAULT_MODE);
        std::fs::set_permissions(own, std::fs::Permissions::from_mode(mode))
            .map_err(sock_err("could not open vde: chmod", own))?;
        if let Some(gid) = self.cfg.group.as_deref().and_then(group_id) {
            std::os::unix::fs::chown(own, None, Some(gid))
                .map_err(sock_err("could not open vde: chown", own))?;
        }
        let mut ctl = UnixStream::connect(ctl_path)
            .map_err(sock_err("could not open vde: connect to", ctl_path))?;
        ctl.write_all(&request(self.cfg.port, &own_sa, &self.cfg.description))
            .map_err(sock_err(
                "could not open vde: send the request to",
                ctl_path,
            ))?;
        ctl.set_read_timeout(Some(timeout))
            .map_err(sock_err("could not open vde: set a timeout on", ctl_path))?;
        let mut sa = [0u8; SOCKADDR_UN_LEN];
        ctl.read_exact(&mut sa).map_err(sock_err(
            "could not open vde: the switch refused the port (no reply) at",
            ctl_path,
        ))?;
        ctl.set_read_timeout(None).map_err(sock_err(
            "could not open vde: clear the timeout on",
            ctl_path,
        ))?;
        let remote = sockaddr_un_path(&sa).ok_or_else(|| {
            Error::Config(format!(
                "could not open vde: {} answered with no unix socket address",
                ctl_path.display()
            ))
        })?;
        data.connect(&remote).map_err(sock_err(
            "could not open vde: connect to the data socket",
            &remote,
        ))?;
        let cfg = DgramConfig::connected(false);
        Ok(Conn {
            ctl: ctl.into(),
            data: DgramIo::new(data.into(), cfg),
            buf: Box::new([0; 64]),
            ctl_posted: false,
            ctl_inflight: 0,
            cancel_sent: false,
            closing: false,
        })
    }

    /// Keeps one receive posted on the control stream: its completion with 0 (EOF) or
    /// an error is how we learn that the switch went away.
    fn post_ctl(c: &mut Conn, io: &mut Io<'_>) {
        if c.ctl_posted || c.closing {
            return;
        }
        let len = c.buf.len() as u32;
        let sqe = opcode::Recv::new(types::Fd(c.ctl.as_raw_fd()), c.buf.as_mut_ptr(), len).build();
        // SAFETY: `buf` is boxed and owned by the connection, which is dropped only once
        // no request of its is in flight (`ctl_inflight` is 0 in `drive_close`).
        if unsafe { io.submit(sqe, OP_CTL_RECV, 0) } {
            c.ctl_posted = true;
            c.ctl_inflight += 1;
        }
    }

    fn went_away(&mut self, io: &mut Io<'_>, why: String) {
        let Some(c) = &mut self.conn else { return };
        if c.closing {
            return;
        }
        c.closing = true;
        if !self.stopping {
            self.outages += 1;
            io.counters.set_carrier(false);
            tracing::warn!(
                "vde ({}): switch at {} went away ({why}); frames to the port are dropped \
                 (not-connected) until it is back, retrying every {RECONNECT_INTERVAL:?}",
                self.cfg.description,
                self.ctl_path.display()
            );
        }
        self.drive_close(io);
    }

    /// Continues closing the connection: stops the data engine, cancels the control
    /// receive, and drops both once nothing of theirs is in flight.
    fn drive_close(&mut self, io: &mut Io<'_>) {
        let Some(c) = &mut self.conn else { return };
        if !c.closing {
            return;
        }
        let data_done = c.data.stop(io);
        if c.ctl_inflight > 0
            && !c.cancel_sent
            && io.cancel_all(std::os::fd::AsFd::as_fd(&c.ctl), OP_CTL_CANCEL)
        {
            c.ctl_inflight += 1;
            c.cancel_sent = true;
        }
        if data_done && c.ctl_inflight == 0 {
            // Closing the control stream frees the port on the switch, if it is there.
            self.conn = None;
            let _ = std::fs::remove_file(&self.own);
            self.next_try = Some(io.now + RECONNECT_INTERVAL);
        }
    }

    fn reconnect(&mut self, io: &mut Io<'_>) {
        if self.conn.is_some() || self.stopping {
            return;
        }
        if self.next_try.is_some_and(|t| io.now < t) {
            return;
        }
        match self.attach(RECONNECT_REPLY_TIMEOUT) {
            Ok(mut c) => {
                self.reconnects += 1;
                io.counters.set_carrier(true);
                tracing::info!(
                    "vde ({}): attached to {} again",
                    self.cfg.description,
                    self.ctl_path.display()
                );
                c.data.start(io);
                Self::post_ctl(&mut c, io);
                self.conn = Some(c);
            }
            Err(e) => {
                tracing::debug!("vde ({}): still no switch: {e}", self.cfg.description);
                self.next_try = Some(io.now + RECONNECT_INTERVAL);
            }
        }
    }

    fn up(&mut self) -> Option<&mut Conn> {
        self.conn.as_mut().filter(|c| !c.closing)
    }
}

impl Drop for VdePort {
    fn drop(&mut self) {
        // The descriptors close with their owners; the file is ours to remove.
        let _ = std::fs::remove_file(&self.own);
    }
}

impl Backend for VdePort {
    fn kind(&self) -> &'static str {
        "vde"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        if let Some(c) = self.up() {
            c.data.start(io);
            Self::post_ctl(c, io);
        }
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        match self.up() {
            Some(c) => c.data.rx_burst(io, out, max),
            None => 0,
        }
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        match self.up() {
            Some(c) => c.data.tx_burst(io, pkts),
            None => {
                let n = pkts.len();
                io.drop_all(pkts, DropReason::NotConnected);
                n
            }
        }
    }

    fn complete(&mut self, io: &mut Io<'_>, op: u8, tag: u32, res: i32, flags: u32) {
        let Some(c) = &mut self.conn else { return };
        if op & CTL_BIT == 0 {
            c.data.complete(io, op, tag, res, flags);
        } else if op == OP_CTL_RECV {
            c.ctl_inflight -= 1;
            c.ctl_posted = false;
            if res > 0 {
                Self::post_ctl(c, io);
            } else if !c.closing {
                let why = if res == 0 {
                    "its control connection closed".to_string()
                } else {
                    format!(
                        "control connection: {}",
                        std::io::Error::from_raw_os_error(-res)
                    )
                };
                self.went_away(io, why);
            }
        } else if op == OP_CTL_CANCEL {
            c.ctl_inflight -= 1;
        }
        self.drive_close(io);
    }

    fn housekeeping(&mut self, io: &mut Io<'_>) {
        self.drive_close(io);
        self.reconnect(io);
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.stopping = true;
        if let Some(c) = &mut self.conn {
            c.closing = true;
        }
        self.drive_close(io);
        self.conn.is_none()
    }

    fn max_held(&self, pool: &switch::Pool) -> usize {
        // As the datagram engine holds it (receive budget plus frames in flight); the
        // same for every attachment.
        let (cfg, n) = (DgramConfig::connected(false), pool.count());
        cfg.rx_held(n) + cfg.tx_held(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_packed_like_vde() {
        let sa = sockaddr_un(Path::new("/tmp/x")).unwrap();
        assert_eq!(&sa[..2], &(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(&sa[2..8], b"/tmp/x");
        assert!(sa[8..].iter().all(|&b| b == 0));
        assert_eq!(sockaddr_un_path(&sa).unwrap(), Path::new("/tmp/x"));
        assert!(sockaddr_un(Path::new(&"x".repeat(108))).is_none());
        let req = request(5, &sa, "me");
        assert_eq!(req.len(), 12 + SOCKADDR_UN_LEN + 2);
        assert_eq!(&req[..4], &VDE_MAGIC.to_ne_bytes());
        assert_eq!(&req[4..8], &3u32.to_ne_bytes());
        assert_eq!(&req[8..12], &(5u32 << 8).to_ne_bytes());
        assert_eq!(&req[12..12 + SOCKADDR_UN_LEN], &sa);
        assert_eq!(&req[12 + SOCKADDR_UN_LEN..], b"me");
    }

    #[test]
    fn a_reply_that_is_not_a_unix_address_is_refused() {
        let mut sa = sockaddr_un(Path::new("/tmp/x")).unwrap();
        sa[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        assert!(sockaddr_un_path(&sa).is_none());
        assert!(sockaddr_un_path(&sockaddr_un(Path::new("")).unwrap()).is_none());
    }

    #[test]
    fn groups_by_number_or_name() {
        assert_eq!(group_id("123"), Some(123));
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-pollswitch"), None);
    }

    #[test]
    fn no_switch_is_a_clear_error_naming_the_path() {
        let e = VdePort::open(VdeConfig {
            sock: Some("/nonexistent-vde-dir".into()),
            ..VdeConfig::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("could not open vde") && e.contains("/nonexistent-vde-dir"),
            "{e}"
        );
    }
}
