//! The engine of tunnel ports: Ethernet frames behind a protocol header in datagrams
//! (L2TPv3, VXLAN), moved by the worker itself with `recvmmsg`/`sendmmsg`, a burst per
//! call, woken by a multishot io_uring poll.
//!
//! ```text
//!  receive:  datagram ──► iov[0] header scratch (rx_lead bytes) ─► Tunnel::accept(hdr,
//!                         iov[1] pool buffer at HEADROOM ─────────►   from, frame)
//!  send:     Tunnel::emit(hdr, frame) → destination; iov[0] header scratch,
//!                                                     iov[1] the frame where it lies
//! ```
//!
//! Neither direction copies a frame. What differs between protocols (the header, which
//! datagrams are ours, where a frame goes) is a [`Tunnel`]; this module owns the
//! buffers, the system calls and the unsafe code around them.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use switch::pool::{HEADROOM, MIN_FRAME};
use switch::{Backend, DropReason, Io, Pkt, BURST};

use crate::readiness::Readiness;
use crate::sys::RawAddr;

/// What one tunnel protocol decides for each datagram.
pub trait Tunnel: Send {
    /// The port's type name in reports.
    fn kind(&self) -> &'static str;
    /// Bytes in front of the frame in a received datagram.
    fn rx_lead(&self) -> usize;
    /// Bytes in front of the frame in a sent datagram.
    fn tx_lead(&self) -> usize;
    /// Whether the protocol wants to know where received datagrams came from.
    fn wants_source(&self) -> bool {
        false
    }
    /// Whether a received datagram is ours: `hdr` its first [`Tunnel::rx_lead`] bytes,
    /// `from` its source (when [`Tunnel::wants_source`]), `frame` the frame after them.
    /// `None`: accepted; else why it is dropped.
    fn accept(&mut self, hdr: &[u8], from: Option<SocketAddr>, frame: &[u8]) -> Option<DropReason>;
    /// Writes the header (exactly [`Tunnel::tx_lead`] bytes) of `frame`, the `seq`-th
    /// frame this port sends (from 1), and puts where it goes into `to`.
    fn emit(&mut self, hdr: &mut [u8], frame: &[u8], seq: u32, to: &mut RawAddr);
    /// Timed work (ageing tables), from the worker's housekeeping.
    fn housekeeping(&mut self) {}
}

/// A tunnel port: one socket, one [`Tunnel`].
pub struct TunnelPort<T: Tunnel> {
    fd: OwnedFd,
    tunnel: T,
    rx_lead: usize,
    tx_lead: usize,
    /// Received headers, `rx_lead` bytes per datagram of a burst.
    rx_hdr: Vec<u8>,
    /// Headers to send, `tx_lead` bytes per frame of a burst.
    tx_hdr: Vec<u8>,
    /// Sources of received datagrams, destinations of sent ones.
    addrs: Vec<RawAddr>,
    /// Fresh buffers for the next receive burst (at most [`BURST`], kept between calls
    /// so that an empty socket costs no allocation).
    spare: Vec<Pkt>,
    /// The socket may have datagrams waiting: set by the poll's completions and when a
    /// burst ended at its budget, cleared before reading until the kernel has none.
    readable: bool,
    /// Frames sent so far.
    sent: u32,
    wake: Readiness,
}

impl<T: Tunnel> TunnelPort<T> {
    /// A port on bound socket `fd`.
    pub fn new(fd: OwnedFd, tunnel: T) -> TunnelPort<T> {
        let (rx_lead, tx_lead) = (tunnel.rx_lead(), tunnel.tx_lead());
        TunnelPort {
            fd,
            tunnel,
            rx_lead,
            tx_lead,
            rx_hdr: vec![0; rx_lead * BURST],
            tx_hdr: vec![0; tx_lead * BURST],
            addrs: (0..BURST).map(|_| RawAddr::empty()).collect(),
            spare: Vec::with_capacity(BURST),
            readable: true,
            sent: 0,
            wake: Readiness::default(),
        }
    }

    /// The protocol's state.
    pub fn tunnel(&self) -> &T {
        &self.tunnel
    }

    /// One `recvmmsg` of up to `want` datagrams; the accepted frames go to `out`.
    /// Returns how many datagrams the kernel gave (0: none waiting, or an error).
    fn recv_some(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, want: usize) -> usize {
        let pool = io.pool();
        let lead = self.rx_lead;
        let cap = pool.max_frame() + 1;
        let named = self.tunnel.wants_source();
        // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid empty value.
        let mut iov: [[libc::iovec; 2]; BURST] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        while self.spare.len() < want.min(BURST) {
            let Some(p) = io.alloc() else { break };
            self.spare.push(p);
        }
        let mut k = 0;
        for (i, p) in self.spare.iter_mut().take(want).enumerate() {
            let Some(base) = pool.buf_ptr(p) else { break };
            iov[i] = [
                libc::iovec {
                    iov_base: self.rx_hdr[i * lead..].as_mut_ptr().cast(),
                    iov_len: lead,
                },
                libc::iovec {
                    // SAFETY: buf_size >= HEADROOM + max_frame + 1, so the frame area
                    // of `cap` bytes lies inside the buffer.
                    iov_base: unsafe { base.add(HEADROOM) }.cast(),
                    iov_len: cap,
                },
            ];
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
            if named {
                let a = &mut self.addrs[i];
                *a = RawAddr::empty();
                msgs[i].msg_hdr.msg_name = (&mut a.storage as *mut libc::sockaddr_storage).cast();
                msgs[i].msg_hdr.msg_namelen = a.len;
            }
            k = i + 1;
        }
        if k == 0 {
            return 0;
        }
        // SAFETY: every iovec points into this port's header scratch (`lead` bytes per
        // datagram) or into an exclusively owned pool buffer (`spare`, untouched during
        // the call), every name into this port's address slots; the call is
        // synchronous, so nothing outlives it.
        let r = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                k as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                io.counters.count_drop(DropReason::IoError, 1);
                io.count_op_error();
            }
            return 0;
        }
        let r = r as usize;
        for (i, mut pkt) in self.spare.drain(..r).enumerate() {
            let n = msgs[i].msg_len as usize;
            let truncated = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let h = &self.rx_hdr[i * lead..(i + 1) * lead];
            let why = if n < lead {
                Some(DropReason::Undersize)
            } else if truncated || n - lead > pool.max_frame() {
                Some(DropReason::Oversize)
            } else if n - lead < MIN_FRAME {
                Some(DropReason::Undersize)
            } else {
                let from = if named {
                    self.addrs[i].len = msgs[i].msg_hdr.msg_namelen;
                    self.addrs[i].to_std()
                } else {
                    None
                };
                pkt.set_span(HEADROOM, n - lead);
                self.tunnel.accept(h, from, pool.bytes(&pkt))
            };
            match why {
                Some(w) => io.drop_one(pkt, w),
                None => {
                    io.counters.rx(n - lead);
                    out.push(pkt);
                }
            }
        }
        r
    }

    /// One `sendmmsg` of the front of `pkts`; returns how many it took (sent or, when
    /// the kernel refused the first one for a reason other than a full queue, dropped).
    fn send_some(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let pool = io.pool();
        let hl = self.tx_lead;
        let n = pkts.len().min(BURST);
        // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid empty value.
        let mut iov: [[libc::iovec; 2]; BURST] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        let mut bytes = [0usize; BURST];
        for (i, p) in pkts.iter().take(n).enumerate() {
            let h = &mut self.tx_hdr[i * hl..(i + 1) * hl];
            let d = pool.bytes(p);
            let to = &mut self.addrs[i];
            self.tunnel
                .emit(h, d, self.sent.wrapping_add(i as u32 + 1), to);
            bytes[i] = d.len();
            iov[i] = [
                libc::iovec {
                    iov_base: h.as_mut_ptr().cast(),
                    iov_len: hl,
                },
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                },
            ];
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
            msgs[i].msg_hdr.msg_name = (&mut to.storage as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = to.len;
        }
        // SAFETY: the iovecs point at this port's header scratch and at frames whose
        // references `pkts` holds through the call; the destinations are this port's.
        // The call is synchronous: the kernel keeps no pointer after it returns.
        let r = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EAGAIN) || e == Some(libc::ENOBUFS) {
                // The socket's queue is full: the rest stays with the caller.
                return 0;
            }
            // An error of this datagram (an ICMP error reported late, an unreachable
            // destination): it is dropped, the others go on.
            self.sent = self.sent.wrapping_add(1);
            let p = pkts.remove(0);
            io.drop_one(p, DropReason::IoError);
            return 1;
        }
        let r = r as usize;
        self.sent = self.sent.wrapping_add(r as u32);
        io.counters
            .tx(r as u64, bytes[..r].iter().sum::<usize>() as u64);
        for p in pkts.drain(..r) {
            io.free(p);
        }
        r
    }
}

impl<T: Tunnel> Backend for TunnelPort<T> {
    fn kind(&self) -> &'static str {
        self.tunnel.kind()
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.wake.arm(io, self.fd.as_fd());
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        self.wake.arm(io, self.fd.as_fd());
        // Without a poll armed nothing would tell us of new datagrams: read every time.
        if !self.readable && self.wake.armed() {
            return 0;
        }
        // Cleared before reading: a datagram queued after the read that finds the
        // socket empty wakes the poll, whose completion sets it again.
        self.readable = false;
        let mut got = 0;
        while got < max {
            let before = out.len();
            let want = (max - got).min(BURST);
            let r = self.recv_some(io, out, want);
            got += out.len() - before;
            if r < want {
                break;
            }
        }
        if got >= max || self.spare.is_empty() {
            // The budget (or the pool) ended the burst, not the socket: more may wait.
            self.readable = true;
        }
        got
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        let mut taken = 0;
        while !pkts.is_empty() {
            let r = self.send_some(io, pkts);
            if r == 0 {
                break;
            }
            taken += r;
        }
        taken
    }

    fn complete(&mut self, _io: &mut Io<'_>, op: u8, _tag: u32, _res: i32, flags: u32) {
        if self.wake.complete(op, flags) {
            self.readable = true;
        }
    }

    fn housekeeping(&mut self, _io: &mut Io<'_>) {
        self.tunnel.housekeeping();
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        let mut spare = std::mem::take(&mut self.spare);
        io.free_all(&mut spare);
        self.wake.stop(io, self.fd.as_fd())
    }

    /// The spare receive buffers: received frames are handed on within the same
    /// `rx_burst`, and frames to send are sent and freed within one `tx_burst`.
    fn max_held(&self, _pool: &switch::Pool) -> usize {
        BURST
    }
}
