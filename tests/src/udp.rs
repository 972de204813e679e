//! One end of a UDP datagram link on loopback: the far side of a `socket,udp=` netdev
//! (QEMU's or pollswitch's), where each datagram carries one bare Ethernet frame.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use testbed::{drain, DrainLimit};

/// Largest datagram [`UdpEnd::recv_timeout`] returns whole (larger ones are cut).
pub const MAX_DATAGRAM: usize = 65536;

/// A UDP socket bound to 127.0.0.1 on an ephemeral port, with an optional default
/// target for [`UdpEnd::send`].
#[derive(Debug)]
pub struct UdpEnd {
    /// The socket, for anything the helpers do not cover.
    pub sock: UdpSocket,
    target: Option<SocketAddr>,
}

impl UdpEnd {
    /// Binds 127.0.0.1:0, with no target yet (give the switch [`UdpEnd::local_addr`]
    /// first, then [`UdpEnd::set_target`] once its port is known).
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub fn new() -> UdpEnd {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        UdpEnd { sock, target: None }
    }

    /// Binds 127.0.0.1:0 and sends to `target`.
    ///
    /// # Panics
    /// When the socket cannot be bound.
    pub fn to(target: SocketAddr) -> UdpEnd {
        let mut end = UdpEnd::new();
        end.set_target(target);
        end
    }

    /// Where [`UdpEnd::send`] sends.
    pub fn set_target(&mut self, target: SocketAddr) {
        self.target = Some(target);
    }

    /// The bound address, 127.0.0.1:port.
    pub fn local_addr(&self) -> SocketAddr {
        self.sock
            .local_addr()
            .expect("local_addr of a bound socket")
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Sends `data` as one datagram to the target.
    ///
    /// # Panics
    /// When no target is set or the send fails or is short.
    pub fn send(&self, data: &[u8]) {
        let target = self
            .target
            .expect("UdpEnd::send without a target: call set_target");
        self.send_to(data, target);
    }

    /// Sends `data` as one datagram to `to`.
    ///
    /// # Panics
    /// When the send fails or is short.
    pub fn send_to(&self, data: &[u8], to: SocketAddr) {
        let n = self
            .sock
            .send_to(data, to)
            .unwrap_or_else(|e| panic!("UDP send of {} bytes to {to}: {e}", data.len()));
        assert_eq!(n, data.len(), "short UDP send to {to}");
    }

    /// The next datagram and its sender, or `None` when nothing arrives within `timeout`.
    ///
    /// # Panics
    /// On socket errors other than the timeout (e.g. ICMP port unreachable from an
    /// earlier send shows up here as `ConnectionRefused`).
    pub fn recv_from_timeout(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock
                .set_read_timeout(Some(left))
                .expect("set UDP read timeout");
            match self.sock.recv_from(&mut buf) {
                // An exact copy: a kept datagram must not hold a 64 KiB buffer.
                Ok((n, from)) => return Some((buf[..n].to_vec(), from)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("UDP recv on {}: {e}", self.local_addr()),
            }
        }
    }

    /// The next datagram, or `None` when nothing arrives within `timeout`.
    ///
    /// # Panics
    /// See [`UdpEnd::recv_from_timeout`].
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_from_timeout(timeout).map(|(d, _)| d)
    }

    /// Every datagram that arrives until none has come for `quiet`, in order.
    ///
    /// # Panics
    /// See [`UdpEnd::recv_from_timeout`]; and when more than [`DrainLimit::DEFAULT`]
    /// datagrams arrive, or they still arrive after its time: a peer that keeps sending
    /// (a hub flooding back to its sender) fails the test instead of filling memory.
    pub fn drain(&self, quiet: Duration) -> Vec<Vec<u8>> {
        self.drain_limited(quiet, DrainLimit::DEFAULT)
    }

    /// Like [`UdpEnd::drain`], with bounds of the caller's.
    ///
    /// # Panics
    /// As [`UdpEnd::drain`], with `limit`.
    pub fn drain_limited(&self, quiet: Duration, limit: DrainLimit) -> Vec<Vec<u8>> {
        drain(
            || format!("UdpEnd {}", self.local_addr()),
            quiet,
            limit,
            |t| self.recv_timeout(t),
        )
    }
}

impl Default for UdpEnd {
    fn default() -> Self {
        UdpEnd::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_ends_exchange_datagrams() {
        let mut a = UdpEnd::new();
        let b = UdpEnd::to(a.local_addr());
        a.set_target(b.local_addr());
        assert!(a.recv_timeout(Duration::from_millis(20)).is_none());
        b.send(b"hello");
        let (d, from) = a.recv_from_timeout(Duration::from_secs(1)).unwrap();
        assert_eq!((d.as_slice(), from), (&b"hello"[..], b.local_addr()));
        for i in 0..5u8 {
            a.send(&[i; 60]);
        }
        let got = b.drain(Duration::from_millis(100));
        assert_eq!(got, (0..5u8).map(|i| vec![i; 60]).collect::<Vec<_>>());
        assert!(b.drain(Duration::from_millis(10)).is_empty());
        let big = vec![7u8; 65000];
        a.send(&big);
        assert_eq!(b.recv_timeout(Duration::from_secs(1)), Some(big));
    }

    #[test]
    fn a_drain_that_never_goes_quiet_fails_loudly() {
        let a = UdpEnd::new();
        let b = UdpEnd::to(a.local_addr());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                // Bounded too: at most 5 s of sending.
                let until = Instant::now() + Duration::from_secs(5);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < until {
                    b.send(&[1; 60]);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let limit = DrainLimit {
            frames: 100,
            time: Duration::from_secs(3),
        };
        let err = std::panic::catch_unwind(|| a.drain_limited(Duration::from_millis(50), limit))
            .expect_err("a flood");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.join().unwrap();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains(&a.local_addr().to_string()) && msg.contains("still arriving"),
            "{msg}"
        );
    }

    #[test]
    #[should_panic(expected = "without a target")]
    fn send_without_target_panics() {
        UdpEnd::new().send(b"x");
    }
}
