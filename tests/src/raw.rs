//! Raw Ethernet frames on a link: an `AF_PACKET` socket bound to one interface.
//!
//! ```text
//!  RawSock::send(frame) ──► link (a tap: the switch reads it from its queue)
//!  RawSock::recv_timeout ◄── link (a tap: what the switch wrote to it)
//! ```
//!
//! This is how a test puts exact bytes on a tap the switch owns, and sees exactly what the
//! switch wrote to it, without the kernel's IP stack in between. Frames the socket
//! would see going *out* of the link (its own, or the kernel's) are ignored, so only what
//! arrives from the far side (the switch) is returned. Open it inside the namespace that
//! holds the link with [`RawSock::open_in`].

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::Netns;

/// `PACKET_OUTGOING` from `<linux/if_packet.h>`: `sll_pkttype` of a frame leaving the host.
const PACKET_OUTGOING: u8 = 4;
/// `PACKET_IGNORE_OUTGOING` socket option (Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// Largest frame received whole.
const MAX_FRAME: usize = 65536;

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface, all ethertypes.
#[derive(Debug)]
pub struct RawSock {
    fd: OwnedFd,
    /// The interface it is bound to.
    pub ifname: String,
}

impl RawSock {
    /// Opens a raw socket on `ifname` in the calling thread's network namespace (use
    /// [`RawSock::open_in`] for a link inside a [`Netns`]). The link should be up.
    ///
    /// # Panics
    /// When the interface does not exist there, or a socket call fails (not root).
    pub fn open(ifname: &str) -> RawSock {
        let cname = CString::new(ifname).expect("interface name without NUL");
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            panic!(
                "raw socket: no interface {ifname:?} here: {}",
                io::Error::last_os_error()
            );
        }
        // Protocol 0: nothing is queued before bind() chooses the interface and
        // ETH_P_ALL, so frames of other links never get in.
        // SAFETY: plain socket(2) call with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            panic!("socket(AF_PACKET): {}", io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let on: libc::c_int = 1;
        // SAFETY: the option value points to a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            panic!(
                "setsockopt(PACKET_IGNORE_OUTGOING): {}",
                io::Error::last_os_error()
            );
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a live sockaddr_ll and the length given is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            panic!("bind AF_PACKET to {ifname}: {}", io::Error::last_os_error());
        }
        RawSock {
            fd,
            ifname: ifname.to_string(),
        }
    }

    /// Opens a raw socket on `ifname` inside `ns`.
    ///
    /// # Panics
    /// As [`RawSock::open`].
    pub fn open_in(ns: &Netns, ifname: &str) -> RawSock {
        ns.enter(|| RawSock::open(ifname))
    }

    /// Sends `frame` (destination MAC first, no FCS) out of the link.
    ///
    /// # Panics
    /// When the send fails or is short (e.g. a frame longer than the link's MTU + 14).
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a live slice of the length given.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            panic!(
                "raw send of {} bytes on {}: {}",
                frame.len(),
                self.ifname,
                io::Error::last_os_error()
            );
        }
        assert_eq!(n as usize, frame.len(), "short raw send on {}", self.ifname);
    }

    /// The next frame that arrived on the link, or `None` when none comes within
    /// `timeout`.
    ///
    /// # Panics
    /// On socket errors, or when a frame is longer than 65536 bytes.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
            // SAFETY: one live pollfd, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll on raw socket {}: {e}", self.ifname);
            }
            if rc == 0 {
                if left.is_zero() {
                    return None;
                }
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are live and at least as long as the lengths given;
            // MSG_TRUNC makes the kernel return the full length of a longer frame.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    continue;
                }
                panic!("raw recv on {}: {e}", self.ifname);
            }
            let n = n as usize;
            assert!(
                n <= buf.len(),
                "raw recv on {}: a {n}-byte frame",
                self.ifname
            );
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            buf.truncate(n);
            return Some(buf);
        }
    }

    /// Every frame that arrives until none has come for `quiet`, in order.
    ///
    /// # Panics
    /// See [`RawSock::recv_timeout`].
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv_timeout(quiet)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{frame, run_ok, unique};

    #[test]
    fn raw_sockets_on_a_veth_pair_exchange_exact_frames() {
        let ns = Netns::new();
        let (a, b) = (unique("ra"), unique("rb"));
        ns.exec_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        for l in [&a, &b] {
            run_ok("ip", &["-n", &ns.name, "link", "set", "dev", l, "up"]);
        }
        let (ra, rb) = (RawSock::open_in(&ns, &a), RawSock::open_in(&ns, &b));
        for (len, seed) in [(14, 0u8), (60, 1), (1514, 2)] {
            let f = frame(
                [0x02, 0, 0, 0, 0, 2],
                [0x02, 0, 0, 0, 0, 1],
                0x88b5,
                len,
                seed,
            );
            ra.send(&f);
            assert_eq!(
                rb.recv_timeout(Duration::from_secs(2)),
                Some(f),
                "len {len}"
            );
        }
        // The sender's own frames are not reported back to it.
        assert!(ra.recv_timeout(Duration::from_millis(100)).is_none());
        let f = frame([0xff; 6], [0x02, 0, 0, 0, 0, 2], 0x88b5, 100, 7);
        rb.send(&f);
        assert_eq!(ra.drain(Duration::from_millis(200)), vec![f]);
    }

    #[test]
    #[should_panic(expected = "no interface")]
    fn missing_interface_panics() {
        let ns = Netns::new();
        RawSock::open_in(&ns, "nosuchlink0");
    }
}
