//! The `bridge` netdev: a tap attached to a Linux bridge, either by us or by a bridge
//! helper (QEMU's `qemu-bridge-helper` protocol). Also what `tap,helper=` runs.
//!
//! ```text
//!  no helper:  SIOCGIFMTU br (the bridge must exist) ─ open tap (kernel-chosen name,
//!              IFF_VNET_HDR) ─ MTU := bridge's ─ MAC fe:.. ─ SIOCBRADDIF br ─ IFF_UP
//!  helper=H:   socketpair(AF_UNIX, SOCK_STREAM)
//!              H --use-vnet --fd=N --br=BR        (a helper with a space in it is a
//!                 │ creates + attaches the tap     command line: sh -c "H --use-vnet
//!                 └─ sendmsg(1 byte, SCM_RIGHTS) ─► --fd=N [--br=BR]")
//!              recv_fd (bounded) ─ wait for H (bounded) ─ exit status 0 ─ the fd is the tap
//! ```
//!
//! Either way the result is an ordinary [`TapQueue`]; closing it removes the tap, which
//! the kernel takes off the bridge. The MAC's first byte is 0xfe, as the helper sets
//! it: a bridge takes the lowest MAC of its ports as its own, and a random tap MAC
//! must not become it.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::error::Error;
use crate::sys::{self, IfReqData};
use crate::tap::{self, TapConfig, TapQueue};

/// The bridge `-netdev bridge` and `tap,helper=` use without `br=` (QEMU's
/// DEFAULT_BRIDGE_INTERFACE).
pub const DEFAULT_BRIDGE: &str = "br0";

/// How long a helper may take to send the descriptor, and then to exit.
pub const HELPER_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a helper that sent its descriptor is checked for having exited.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// A bridge netdev's settings.
#[derive(Debug, Clone, Default)]
pub struct BridgeConfig {
    /// The bridge (`br=`, default [`DEFAULT_BRIDGE`]).
    pub br: Option<String>,
    /// The helper (`helper=`); none: we create and attach the tap ourselves.
    pub helper: Option<String>,
}

/// Opens a tap attached to the bridge; returns its queue and its interface name.
pub fn open(cfg: &BridgeConfig) -> Result<(Vec<TapQueue>, String), Error> {
    let br = cfg.br.as_deref().unwrap_or(DEFAULT_BRIDGE);
    match &cfg.helper {
        Some(helper) => {
            let fd = run_helper(helper, br)?;
            tap::open(TapConfig {
                fds: vec![fd],
                queues: 1,
                ..TapConfig::default()
            })
        }
        None => attach_new(br),
    }
}

/// A socket for the interface ioctls.
fn ctl_socket() -> Result<Socket, Error> {
    Socket::new(Domain::IPV4, Type::DGRAM, None).map_err(|source| Error::Socket {
        what: "socket(AF_INET) for bridge ioctls",
        addr: String::new(),
        source,
    })
}

fn ioctl(s: &Socket, req: libc::c_ulong, ifr: &mut IfReqData) -> io::Result<()> {
    sys::ioctl_ifreq_data(s.as_fd(), req, ifr)
}

/// What qemu-bridge-helper does, done here (messages as the helper words them).
fn attach_new(br: &str) -> Result<(Vec<TapQueue>, String), Error> {
    let s = ctl_socket()?;
    let mut b = IfReqData::new(br);
    ioctl(&s, sys::SIOCGIFMTU, &mut b)
        .map_err(|e| Error::Config(format!("failed to get mtu of bridge `{br}': {e}")))?;
    let mtu = b.int();
    let (queues, ifname) = tap::open(TapConfig {
        vnet_hdr: Some(true),
        queues: 1,
        ..TapConfig::default()
    })?;
    // From here a failure drops `queues`, which removes the tap again.
    let mut t = IfReqData::new(&ifname);
    t.set_int(mtu);
    ioctl(&s, sys::SIOCSIFMTU, &mut t).map_err(|e| {
        Error::Config(format!(
            "failed to set mtu of device `{ifname}' to {mtu}: {e}"
        ))
    })?;
    let mut t = IfReqData::new(&ifname);
    ioctl(&s, sys::SIOCGIFHWADDR, &mut t)
        .and_then(|()| {
            // sockaddr: 2 bytes of family, then the address.
            t.data[2] = 0xfe;
            ioctl(&s, sys::SIOCSIFHWADDR, &mut t)
        })
        .map_err(|e| {
            Error::Config(format!(
                "failed to set mac address of interface `{ifname}': {e}"
            ))
        })?;
    let mut t = IfReqData::new(&ifname);
    ioctl(&s, sys::SIOCGIFINDEX, &mut t)
        .map_err(|e| Error::Config(format!("failed to get index of interface `{ifname}': {e}")))?;
    let mut b = IfReqData::new(br);
    b.set_int(t.int());
    ioctl(&s, sys::SIOCBRADDIF, &mut b).map_err(|e| {
        Error::Config(format!(
            "failed to add interface `{ifname}' to bridge `{br}': {e}"
        ))
    })?;
    let mut t = IfReqData::new(&ifname);
    ioctl(&s, sys::SIOCGIFFLAGS, &mut t)
        .map_err(|e| Error::Config(format!("failed to get interface flags for `{ifname}': {e}")))?;
    t.set_short(t.short() | libc::IFF_UP as libc::c_short);
    ioctl(&s, sys::SIOCSIFFLAGS, &mut t)
        .map_err(|e| Error::Config(format!("failed to bring up interface `{ifname}': {e}")))?;
    Ok((queues, ifname))
}

/// Runs a bridge helper as QEMU's `net_bridge_run_helper` does and returns the tap
/// descriptor it sent. Unlike QEMU, both waits are bounded ([`HELPER_TIMEOUT`]; a
/// helper past it is killed) and the helper's stderr goes into the error.
pub fn run_helper(helper: &str, br: &str) -> Result<OwnedFd, Error> {
    let fail = |why: String| Error::Config(format!("bridge helper failed: {why}"));
    let (ours, theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None)
        .map_err(|e| fail(format!("socketpair: {e}")))?;
    // The helper's end must survive exec. Another thread spawning meanwhile would
    // inherit it too; the control thread is the only one here that spawns.
    theirs
        .set_cloexec(false)
        .map_err(|e| fail(format!("socketpair: {e}")))?;
    let fd_arg = format!("--fd={}", theirs.as_raw_fd());
    let mut cmd = if helper.contains([' ', '\t']) {
        // A command line: QEMU adds --br= only when it has none.
        let mut line = format!("{helper} --use-vnet {fd_arg}");
        if !helper.contains("--br=") {
            line.push_str(&format!(" --br={br}"));
        }
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(line);
        c
    } else {
        let mut c = Command::new(helper);
        c.arg("--use-vnet").arg(&fd_arg).arg(format!("--br={br}"));
        c
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not run {helper}: {e}")))?;
    drop(theirs);
    let got = ours
        .set_read_timeout(Some(HELPER_TIMEOUT))
        .and_then(|()| sys::recv_fd(ours.as_fd()));
    drop(ours);
    if got.is_err() {
        // Nothing came in time (or the socket broke): the helper is not going to help.
        let _ = child.kill();
    }
    let status = wait_bounded(&mut child);
    let stderr = stderr_of(&mut child);
    let got = got.map_err(|e| {
        let e = if e.kind() == io::ErrorKind::WouldBlock {
            format!("none within {HELPER_TIMEOUT:?}, helper killed")
        } else {
            e.to_string()
        };
        Error::Config(format!(
            "failed to recv file descriptor from {helper}: {e}{stderr}"
        ))
    })?;
    let status = status.map_err(|e| fail(format!("{helper}: {e}{stderr}")))?;
    if !status.success() {
        return Err(fail(format!("{helper} exited with {status}{stderr}")));
    }
    got.ok_or_else(|| {
        Error::Config(format!(
            "failed to recv file descriptor: {helper} exited without sending one{stderr}"
        ))
    })
}

/// Waits for the helper to exit, killing it after [`HELPER_TIMEOUT`].
fn wait_bounded(child: &mut Child) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + HELPER_TIMEOUT;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("did not exit within {HELPER_TIMEOUT:?}, killed"),
            ));
        }
        std::thread::sleep(EXIT_POLL);
    }
}

/// What the (exited) helper wrote to stderr, as `": text"`, without waiting for
/// anything that still holds the pipe open.
fn stderr_of(child: &mut Child) -> String {
    let Some(mut err) = child.stderr.take() else {
        return String::new();
    };
    if sys::set_nonblocking(err.as_fd()).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while buf.len() < 4096 {
        match err.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.replace('\n', "; "))
    }
}
