//! The io_uring engine shared by every datagram-like port (a tap queue, a UDP socket):
//! one frame per read or write.
//!
//! ```text
//!  rx: RX_SLOTS reads always posted, each into its own pool buffer
//!      completion → checks (size, virtio-net header, source) → ready queue → rx_burst
//!                 → the slot is posted again with a fresh buffer
//!  tx: tx_burst turns each frame into a write/send that owns the buffer until its
//!      completion; at most TX_SLOTS in flight, the rest stays with the caller
//!  stop: one cancel for everything on the fd, then wait until no request is in flight
//! ```
//!
//! Every msghdr and iovec a request points to lives in a slot of a boxed array that is
//! never reallocated, so its address is stable while the kernel holds it.
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use io_uring::{opcode, types};
use switch::pool::HEADROOM;
use switch::{DropReason, Io, Pkt};

use crate::sys::RawAddr;

/// Reads kept posted per port queue.
pub const RX_SLOTS: usize = 64;
/// Writes in flight per port queue.
pub const TX_SLOTS: usize = 256;

const OP_RX: u8 = 1;
const OP_TX: u8 = 2;
const OP_CANCEL: u8 = 3;

/// How a frame is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// `read(2)` (ReadFixed into the registered pool when available): taps.
    Read,
    /// `recv(2)`: sockets whose sender does not matter.
    Recv,
    /// `recvmsg(2)` with the source address: sockets that must ignore one sender.
    RecvMsg,
}

/// How a frame is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// `write(2)` of the frame (WriteFixed when the pool is registered).
    Write,
    /// `send(2)` of the frame, to the fixed destination when one is set.
    Send,
}

/// Settings of a [`DgramIo`].
#[derive(Debug, Clone)]
pub struct DgramConfig {
    /// How frames are read.
    pub rx: RxMode,
    /// How frames are written.
    pub tx: TxMode,
    /// Length of a virtio-net header in front of every frame (0: none).
    pub vnet_hdr_len: usize,
    /// Where sends go (unconnected datagram sockets).
    pub dest: Option<SocketAddr>,
    /// Datagrams from this source are ignored (our own multicast send socket).
    pub ignore_src: Option<SocketAddr>,
}

struct RxSlot {
    pkt: Option<Pkt>,
    iov: libc::iovec,
    name: RawAddr,
    msg: libc::msghdr,
}

struct TxSlot {
    pkt: Option<Pkt>,
    len: usize,
    iov: [libc::iovec; 2],
}

/// Zeros: the virtio-net header of a frame without offloads.
static ZERO_VNET_HDR: [u8; 12] = [0; 12];

/// A datagram-like port queue driven through the worker's io_uring.
pub struct DgramIo {
    fd: OwnedFd,
    cfg: DgramConfig,
    dest: Box<RawAddr>,
    rx: Box<[RxSlot]>,
    rx_free: Vec<u32>,
    ready: VecDeque<Pkt>,
    tx: Box<[TxSlot]>,
    tx_free: Vec<u32>,
    inflight: usize,
    stopping: bool,
    cancel_sent: bool,
}

// SAFETY: the raw pointers inside the slots (iovecs, msghdrs) point only into this
// struct's own boxed arrays or into pool buffers it owns; moving the struct to the worker
// thread moves that ownership with it, and only that thread touches it afterwards.
unsafe impl Send for DgramIo {}

impl DgramIo {
    /// Wraps an open descriptor (blocking mode: io_uring waits for readiness itself).
    pub fn new(fd: OwnedFd, cfg: DgramConfig) -> DgramIo {
        let empty_iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        let rx = (0..RX_SLOTS)
            .map(|_| RxSlot {
                pkt: None,
                iov: empty_iov,
                name: RawAddr::empty(),
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                msg: unsafe { std::mem::zeroed() },
            })
            .collect();
        let tx = (0..TX_SLOTS)
            .map(|_| TxSlot {
                pkt: None,
                len: 0,
                iov: [empty_iov; 2],
            })
            .collect();
        let dest = Box::new(
            cfg.dest
                .as_ref()
                .map_or(RawAddr::empty(), RawAddr::from_std),
        );
        DgramIo {
            fd,
            cfg,
            dest,
            rx,
            rx_free: (0..RX_SLOTS as u32).rev().collect(),
            ready: VecDeque::with_capacity(RX_SLOTS),
            tx,
            tx_free: (0..TX_SLOTS as u32).rev().collect(),
            inflight: 0,
            stopping: false,
            cancel_sent: false,
        }
    }

    /// The descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Posts reads on every free slot (as far as the pool has buffers).
    pub fn post_rx(&mut self, io: &mut Io<'_>) {
        if self.stopping {
            return;
        }
        let hdr = self.cfg.vnet_hdr_len;
        let want = hdr + io.pool.max_frame() + 1;
        while let Some(&i) = self.rx_free.last() {
            let Some(pkt) = io.pool.alloc() else {
                // Retried on the next rx_burst; not a drop, nothing was lost yet.
                break;
            };
            self.rx_free.pop();
            // SAFETY: HEADROOM >= the largest header (12), so the start stays inside the
            // buffer, and `want` bytes from there fit (buf_size >= HEADROOM + max + 1).
            let base = unsafe { io.pool.buf_ptr(&pkt).add(HEADROOM - hdr) };
            let fd = types::Fd(self.fd.as_raw_fd());
            let slot = &mut self.rx[i as usize];
            let sqe = match self.cfg.rx {
                RxMode::Read if io.fixed_buffers() => {
                    opcode::ReadFixed::new(fd, base, want as u32, 0)
                        .offset(u64::MAX)
                        .build()
                }
                RxMode::Read => opcode::Read::new(fd, base, want as u32)
                    .offset(u64::MAX)
                    .build(),
                RxMode::Recv => opcode::Recv::new(fd, base, want as u32).build(),
                RxMode::RecvMsg => {
                    slot.iov = libc::iovec {
                        iov_base: base.cast(),
                        iov_len: want,
                    };
                    slot.name = RawAddr::empty();
                    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                    slot.msg = unsafe { std::mem::zeroed() };
                    slot.msg.msg_name =
                        (&mut slot.name.storage as *mut libc::sockaddr_storage).cast();
                    slot.msg.msg_namelen = slot.name.len;
                    slot.msg.msg_iov = &mut slot.iov;
                    slot.msg.msg_iovlen = 1;
                    opcode::RecvMsg::new(fd, &mut slot.msg).build()
                }
            };
            slot.pkt = Some(pkt);
            // SAFETY: the buffer is owned by the slot until the completion, and the
            // slot's msghdr/iovec live in a boxed array that is never reallocated.
            unsafe { io.submit(sqe, OP_RX, i) };
            self.inflight += 1;
        }
    }

    /// Moves up to `max` ready frames to `out`.
    pub fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        // Slots are reposted on completion; one stays free only when the pool ran dry.
        if !self.rx_free.is_empty() {
            self.post_rx(io);
        }
        let n = max.min(self.ready.len());
        out.extend(self.ready.drain(..n));
        n
    }

    /// Queues writes for as many frames as there are free slots.
    pub fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.stopping {
            return 0;
        }
        let n = pkts.len().min(self.tx_free.len());
        let fd = types::Fd(self.fd.as_raw_fd());
        let hdr = self.cfg.vnet_hdr_len;
        for pkt in pkts.drain(..n) {
            let i = self.tx_free.pop().expect("counted above");
            let data = io.pool.bytes(&pkt);
            let (ptr, len) = (data.as_ptr(), data.len());
            let slot = &mut self.tx[i as usize];
            let sqe = if hdr > 0 {
                slot.iov = [
                    libc::iovec {
                        iov_base: ZERO_VNET_HDR.as_ptr() as *mut libc::c_void,
                        iov_len: hdr,
                    },
                    libc::iovec {
                        iov_base: ptr as *mut libc::c_void,
                        iov_len: len,
                    },
                ];
                opcode::Writev::new(fd, slot.iov.as_ptr(), 2)
                    .offset(u64::MAX)
                    .build()
            } else {
                match self.cfg.tx {
                    TxMode::Write if io.fixed_buffers() => {
                        opcode::WriteFixed::new(fd, ptr, len as u32, 0)
                            .offset(u64::MAX)
                            .build()
                    }
                    TxMode::Write => opcode::Write::new(fd, ptr, len as u32)
                        .offset(u64::MAX)
                        .build(),
                    TxMode::Send if self.cfg.dest.is_some() => {
                        opcode::Send::new(fd, ptr, len as u32)
                            .dest_addr((&self.dest.storage as *const libc::sockaddr_storage).cast())
                            .dest_addr_len(self.dest.len)
                            .build()
                    }
                    TxMode::Send => opcode::Send::new(fd, ptr, len as u32).build(),
                }
            };
            slot.pkt = Some(pkt);
            slot.len = len;
            // SAFETY: the slot owns a reference to the buffer until the completion; the
            // iovecs and the destination live in boxed storage that does not move; the
            // header is a static.
            unsafe { io.submit(sqe, OP_TX, i) };
            self.inflight += 1;
        }
        n
    }

    /// Handles a completion of one of our requests.
    pub fn complete(&mut self, io: &mut Io<'_>, op: u8, tag: u32, res: i32) {
        self.inflight = self.inflight.saturating_sub(1);
        match op {
            OP_RX => {
                let slot = &mut self.rx[tag as usize];
                let Some(mut pkt) = slot.pkt.take() else {
                    return;
                };
                let truncated =
                    self.cfg.rx == RxMode::RecvMsg && slot.msg.msg_flags & libc::MSG_TRUNC != 0;
                let from_self = self.cfg.rx == RxMode::RecvMsg
                    && self.cfg.ignore_src.is_some()
                    && RawAddr {
                        storage: slot.name.storage,
                        len: slot.msg.msg_namelen,
                    }
                    .to_std()
                        == self.cfg.ignore_src;
                self.rx_free.push(tag);
                if res < 0 {
                    if res != -libc::ECANCELED && !self.stopping {
                        io.counters.count_drop(DropReason::IoError, 1);
                    }
                    io.pool.free(pkt);
                } else if from_self {
                    io.pool.free(pkt);
                } else {
                    self.accept_rx(io, &mut pkt, res as usize, truncated);
                    match pkt.is_empty() {
                        true => io.pool.free(pkt),
                        false => self.ready.push_back(pkt),
                    }
                }
                if !self.stopping {
                    self.post_rx(io);
                }
            }
            OP_TX => {
                let slot = &mut self.tx[tag as usize];
                if let Some(pkt) = slot.pkt.take() {
                    if res >= 0 {
                        io.counters.tx(1, slot.len as u64);
                    } else if res != -libc::ECANCELED {
                        io.counters.count_drop(DropReason::IoError, 1);
                    } else {
                        io.counters.count_drop(DropReason::TxFull, 1);
                    }
                    io.pool.free(pkt);
                }
                self.tx_free.push(tag);
            }
            _ => {}
        }
    }

    /// Checks a received frame of `n` bytes (header included) and sets its span, or
    /// counts why not and leaves it empty.
    fn accept_rx(&self, io: &mut Io<'_>, pkt: &mut Pkt, n: usize, truncated: bool) {
        let hdr = self.cfg.vnet_hdr_len;
        pkt.set_span(HEADROOM, 0);
        if n < hdr {
            io.counters.count_drop(DropReason::Undersize, 1);
            return;
        }
        if hdr > 0 {
            // virtio_net_hdr: flags (u8), gso_type (u8), ... We turned offloads off, so
            // a GSO frame here is not one we can pass on unchanged.
            let gso_type = io.pool.buf_mut(pkt)[HEADROOM - hdr + 1];
            if gso_type != 0 {
                io.counters.count_drop(DropReason::Offload, 1);
                return;
            }
        }
        let len = n - hdr;
        if truncated || len > io.pool.max_frame() {
            io.counters.count_drop(DropReason::Oversize, 1);
        } else if len < switch::pool::MIN_FRAME {
            io.counters.count_drop(DropReason::Undersize, 1);
        } else {
            pkt.set_span(HEADROOM, len);
            io.counters.rx(len);
        }
    }

    /// Shuts the queue down; true once nothing is in flight and every buffer is back.
    pub fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.stopping = true;
        for p in self.ready.drain(..) {
            io.pool.free(p);
        }
        if self.inflight == 0 {
            return true;
        }
        if !self.cancel_sent {
            let sqe = opcode::AsyncCancel2::new(
                types::CancelBuilder::fd(types::Fd(self.fd.as_raw_fd())).all(),
            )
            .build();
            // SAFETY: a cancel request points to no memory of ours.
            unsafe { io.submit(sqe, OP_CANCEL, 0) };
            self.inflight += 1;
            self.cancel_sent = true;
        }
        false
    }
}
