//! Raw Ethernet frames on one link: an `AF_PACKET`/`SOCK_RAW` socket bound to one
//! interface and one EtherType (or all of them).
//!
//! ```text
//!  RawSock::send(frame) ──► link (a tap: the switch reads it from its queue)
//!  RawSock::recv_timeout ◄── link (a tap: what the switch wrote to it)
//!  perf's tap engine: the same socket, its fd driven with sendmmsg / recvmmsg
//! ```
//!
//! This is how a test puts exact bytes on a tap the switch owns and sees exactly what the
//! switch wrote to it, without the kernel's IP stack in between, and how the benchmark
//! tool's generator and sink sit on the kernel side of a tap or veth. Frames the socket
//! would see going *out* of the link (its own, or the kernel's) are ignored
//! (`PACKET_IGNORE_OUTGOING`, Linux 4.20), so only what arrives from the far side is read.
//! The socket is made with protocol 0, which queues nothing, and only `bind` chooses the
//! interface and the EtherType: no frame of another link ever gets in. It never blocks
//! (the waits here poll).
//!
//! Unsafe code: `bind` with a `sockaddr_ll` and the two packet socket options, which
//! neither rustix nor socket2 wraps.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::net::netdevice::name_to_index;
use rustix::net::{
    recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
};

use crate::error::{chain, Error, Result};
use crate::{drain, DrainLimit, Netns};

/// Every EtherType (`ETH_P_ALL`).
pub const ETH_P_ALL: u16 = 0x0003;
/// Largest frame received whole.
pub const MAX_FRAME: usize = 65536;
/// How long [`RawSock::send`] waits for room in the socket's queue.
const SEND_WAIT: Duration = Duration::from_secs(1);

// From <linux/if_packet.h>.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// How to open a [`RawSock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawOptions {
    /// The EtherType to receive (host order); [`ETH_P_ALL`] for every frame.
    pub protocol: u16,
    /// Send straight to the driver, past the qdisc (a generator's socket).
    pub qdisc_bypass: bool,
}

impl Default for RawOptions {
    fn default() -> Self {
        RawOptions {
            protocol: ETH_P_ALL,
            qdisc_bypass: false,
        }
    }
}

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface, non-blocking.
#[derive(Debug)]
pub struct RawSock {
    fd: OwnedFd,
    /// The interface it is bound to.
    pub ifname: String,
}

fn set_packet_option(fd: BorrowedFd<'_>, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value points to a live c_int whose size is passed with it; the
    // kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn bind_link(fd: BorrowedFd<'_>, ifindex: u32, protocol: u16) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value before the fields
    // are set.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a live sockaddr_ll and the length given is its size; the kernel
    // only reads it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl RawSock {
    /// Opens a socket on `ifname` in the calling thread's network namespace (see
    /// [`RawSock::bind_in`] for a link inside a [`Netns`]).
    pub fn bind(ifname: &str, opts: &RawOptions) -> Result<RawSock> {
        let err = |what: &str| {
            let what = format!("raw socket on {ifname}: {what}");
            move |e: rustix::io::Errno| Error::socket(what, e.into())
        };
        let io_err = |what: &str| {
            let what = format!("raw socket on {ifname}: {what}");
            move |e: io::Error| Error::socket(what, e)
        };
        // Protocol 0: nothing is queued before bind() names the interface and protocol.
        let fd = socket_with(
            AddressFamily::PACKET,
            SocketType::RAW,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        )
        .map_err(err("socket(AF_PACKET)"))?;
        let ifindex =
            name_to_index(&fd, ifname).map_err(err(&format!("no interface {ifname} here")))?;
        set_packet_option(fd.as_fd(), PACKET_IGNORE_OUTGOING, 1)
            .map_err(io_err("PACKET_IGNORE_OUTGOING"))?;
        if opts.qdisc_bypass {
            set_packet_option(fd.as_fd(), PACKET_QDISC_BYPASS, 1)
                .map_err(io_err("PACKET_QDISC_BYPASS"))?;
        }
        bind_link(fd.as_fd(), ifindex, opts.protocol).map_err(io_err("bind"))?;
        Ok(RawSock {
            fd,
            ifname: ifname.to_string(),
        })
    }

    /// Opens a socket on `ifname` inside `ns`.
    pub fn bind_in(ns: &Netns, ifname: &str, opts: &RawOptions) -> Result<RawSock> {
        ns.try_enter(|| RawSock::bind(ifname, opts))?
    }

    /// Opens a socket on `ifname` (every EtherType) in the calling thread's namespace;
    /// use [`RawSock::open_in`] for a link inside a [`Netns`]. The link should be up.
    ///
    /// # Panics
    /// When the interface does not exist there, or a socket call fails (not root).
    pub fn open(ifname: &str) -> RawSock {
        RawSock::bind(ifname, &RawOptions::default()).unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// Opens a socket on `ifname` (every EtherType) inside `ns`.
    ///
    /// # Panics
    /// As [`RawSock::open`].
    pub fn open_in(ns: &Netns, ifname: &str) -> RawSock {
        RawSock::bind_in(ns, ifname, &RawOptions::default())
            .unwrap_or_else(|e| panic!("{}", chain(&e)))
    }

    /// A second handle on the same socket.
    pub fn try_clone(&self) -> io::Result<RawSock> {
        Ok(RawSock {
            fd: self.fd.try_clone()?,
            ifname: self.ifname.clone(),
        })
    }

    /// Waits up to `timeout` for `flags` on the socket; whether they came.
    fn wait(&self, flags: PollFlags, timeout: Duration) -> io::Result<bool> {
        let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(&self.fd, flags)];
        loop {
            match poll(&mut fds, Some(&ts)) {
                Ok(n) => return Ok(n > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends `frame` (destination MAC first, no FCS) out of the link, waiting up to a
    /// second for room in the socket's queue.
    ///
    /// # Panics
    /// When the send fails or is short (e.g. a frame longer than the link's MTU + 14).
    pub fn send(&self, frame: &[u8]) {
        let deadline = Instant::now() + SEND_WAIT;
        loop {
            match send(&self.fd, frame, SendFlags::DONTWAIT) {
                Ok(n) => {
                    assert_eq!(n, frame.len(), "short raw send on {}", self.ifname);
                    return;
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::NOBUFS)
                    if Instant::now() < deadline =>
                {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = self.wait(PollFlags::OUT, left.min(Duration::from_millis(10)));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!(
                    "raw send of {} bytes on {}: {}",
                    frame.len(),
                    self.ifname,
                    io::Error::from(e)
                ),
            }
        }
    }

    /// The next frame that arrived on the link, or `None` when none comes within
    /// `timeout`.
    ///
    /// # Panics
    /// On socket errors, or when a frame is longer than [`MAX_FRAME`] bytes.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(PollFlags::IN, left) {
                Ok(true) => {}
                Ok(false) if left.is_zero() => return None,
                Ok(false) => continue,
                Err(e) => panic!("poll on raw socket {}: {e}", self.ifname),
            }
            // TRUNC: the kernel says how long a frame was even when the buffer is
            // shorter.
            match recv(
                &self.fd,
                &mut buf[..],
                RecvFlags::DONTWAIT | RecvFlags::TRUNC,
            ) {
                Ok((n, full)) => {
                    assert!(
                        full <= buf.len(),
                        "raw recv on {}: a {full}-byte frame",
                        self.ifname
                    );
                    // An exact copy: a kept frame does not hold the whole buffer.
                    return Some(buf[..n].to_vec());
                }
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(e) => panic!("raw recv on {}: {}", self.ifname, io::Error::from(e)),
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Every frame that arrives until none has come for `quiet`, in order.
    ///
    /// # Panics
    /// See [`RawSock::recv_timeout`]; and as [`drain`] says, when more than
    /// [`DrainLimit::DEFAULT`] arrive.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        self.drain_limited(quiet, DrainLimit::DEFAULT)
    }

    /// Like [`RawSock::drain`], with bounds of the caller's.
    ///
    /// # Panics
    /// As [`RawSock::drain`].
    pub fn drain_limited(&self, quiet: Duration, limit: DrainLimit) -> Vec<Vec<u8>> {
        drain(
            || format!("raw socket on {}", self.ifname),
            quiet,
            limit,
            |t| self.recv_timeout(t),
        )
    }
}

impl AsFd for RawSock {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for RawSock {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_ok, unique};

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5];
        f.extend((0..len - 14).map(|i| seed.wrapping_add(i as u8)));
        f
    }

    /// A fresh namespace with an up veth pair in it, the second end's name and a raw
    /// socket on each end.
    fn veth_in_netns() -> (Netns, String, RawSock, RawSock) {
        let ns = Netns::new();
        let (a, b) = (unique("ra"), unique("rb"));
        ns.exec_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        for l in [&a, &b] {
            run_ok("ip", &["-n", &ns.name, "link", "set", "dev", l, "up"]);
        }
        // Until the kernel's link watch has activated both ends (it may lag a second on a
        // loaded machine), frames sent on the pair are dropped.
        for l in [&a, &b] {
            let path = format!("/sys/class/net/{l}/operstate");
            let up = crate::wait_until(Duration::from_secs(5), || {
                ns.run(&["cat", &path]).is_ok_and(|s| s.trim() == "up")
            });
            assert!(up, "{l} did not come up");
        }
        let (ra, rb) = (RawSock::open_in(&ns, &a), RawSock::open_in(&ns, &b));
        (ns, b, ra, rb)
    }

    #[test]
    fn raw_sockets_on_a_veth_pair_exchange_exact_frames() {
        let (ns, b, ra, rb) = veth_in_netns();
        for (len, seed) in [(14, 0u8), (60, 1), (1514, 2)] {
            let f = frame(len, seed);
            ra.send(&f);
            assert_eq!(
                rb.recv_timeout(Duration::from_secs(2)),
                Some(f),
                "len {len}"
            );
        }
        // The sender's own frames are not reported back to it.
        assert!(ra.recv_timeout(Duration::from_millis(100)).is_none());
        let f = frame(100, 7);
        rb.send(&f);
        assert_eq!(ra.drain(Duration::from_millis(200)), vec![f]);

        // Bound to one EtherType, a socket sees only that one.
        let only = RawOptions {
            protocol: 0x88b6,
            qdisc_bypass: true,
        };
        let rc = RawSock::bind_in(&ns, &b, &only).unwrap();
        ra.send(&frame(60, 3));
        let mut other = frame(60, 4);
        other[12..14].copy_from_slice(&[0x88, 0xb6]);
        ra.send(&other);
        assert_eq!(rc.recv_timeout(Duration::from_secs(2)), Some(other));
        assert!(rc.recv_timeout(Duration::from_millis(100)).is_none());
        let clone = rc.try_clone().unwrap();
        assert!(clone.as_raw_fd() != rc.as_raw_fd());
    }

    #[test]
    fn a_flood_makes_drain_fail_loudly() {
        let (_ns, b, ra, rb) = veth_in_netns();
        for i in 0..50 {
            ra.send(&frame(60, i));
        }
        let limit = DrainLimit {
            frames: 20,
            time: Duration::from_secs(10),
        };
        let err = std::panic::catch_unwind(|| rb.drain_limited(Duration::from_secs(1), limit))
            .expect_err("more than the limit");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains(&b) && msg.contains("21 frames"), "{msg}");
    }

    #[test]
    fn missing_interface_is_an_error() {
        let ns = Netns::new();
        let err = RawSock::bind_in(&ns, "nosuchlink0", &RawOptions::default()).unwrap_err();
        assert!(
            chain(&err).contains("no interface nosuchlink0"),
            "{}",
            chain(&err)
        );
        let err = std::panic::catch_unwind(|| RawSock::open_in(&ns, "nosuchlink0"))
            .expect_err("open panics");
        assert!(err
            .downcast_ref::<String>()
            .unwrap()
            .contains("no interface"));
    }
}
