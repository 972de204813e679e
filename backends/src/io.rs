//! The engine shared by every datagram-like port (a UDP socket, a tap queue): one frame
//! per datagram or read.
//!
//! ```text
//!  sockets, rx: one multishot recv/recvmsg over a ring of lent pool buffers (the kernel
//!      picks a buffer per frame; one request, one wait-queue entry on the socket,
//!      frames in arrival order) or, where the kernel cannot, single recvs each into
//!      its own buffer (several in flight: a burst may then complete out of order)
//!      completion → checks (size, source) → ready queue → rx_burst
//!                 → the buffer is replaced by a fresh one
//!  sockets, tx: runs of equal-length frames as one UDP GSO sendmsg, other frames one
//!      send each; each request owns its buffers until its completion; what does not
//!      fit in the slots stays with the caller
//!  taps (ReadSync/WriteSync): the worker reads until empty and writes with writev
//!      itself; a multishot io_uring poll wakes it
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
use switch::bufring::RxRing;
use switch::pool::{GSO_FRAME, HEADROOM, VNET_HDR_LEN};
use switch::wire::gso::{VnetHdr, GSO_NONE};
use switch::{DropReason, Io, Pkt};

use crate::sys::RawAddr;

/// Reads kept posted per port queue when multishot receive is not available (at most).
pub const RX_SLOTS: usize = 64;
/// Buffers lent to the kernel per port queue for multishot receive (at most).
pub const RX_RING: u16 = 128;

/// How many receive buffers one port queue may hold: at most 1/32 of the pool (so that
/// a small pool still serves many ports and leaves room for frames in flight), at least
/// 8, a power of two, capped at `max`.
pub fn rx_budget(pool_buffers: u32, max: usize) -> usize {
    let share = (pool_buffers / 32).max(8) as usize;
    let pow2 = if share.is_power_of_two() {
        share
    } else {
        share.next_power_of_two() / 2
    };
    pow2.min(max)
}
/// Single sends in flight per port queue (at most).
pub const TX_SLOTS: usize = 256;
/// Frames in flight on send per port queue, single and GSO sends together (at most).
pub const TX_MAX: usize = 256;

/// Frames one port queue may have in flight on send, which is what a stalled socket can
/// hold of the pool: 1/32 of the pool, between two bursts and [`TX_MAX`] (a breath can
/// hand a port a burst from each of several sources, or a burst and the segments of a
/// super-frame cut for it: up to 128 of them).
pub fn tx_budget(pool_buffers: u32) -> usize {
    ((pool_buffers / 32) as usize).clamp(2 * switch::BURST, TX_MAX)
}

const OP_RX: u8 = 1;
const OP_TX: u8 = 2;
const OP_CANCEL: u8 = 3;
const OP_RX_MULTI: u8 = 4;
const OP_TX_GSO: u8 = 5;
const OP_POLL: u8 = 6;

/// Frames of one UDP GSO send (the kernel's UDP_MAX_SEGMENTS is at least 64).
const GSO_MAX: usize = 64;
/// GSO sends in flight per port queue (with GSO_MAX, bounds the frames in flight).
const GSO_SLOTS: usize = 16;
/// Largest payload of one GSO send.
const GSO_BYTES: usize = 65000;
const SOL_UDP: libc::c_int = 17;
const UDP_SEGMENT: libc::c_int = 103;

/// How a frame is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// `recv(2)`: sockets whose sender does not matter.
    Recv,
    /// `recvmsg(2)` with the source address: sockets that must ignore one sender.
    RecvMsg,
    /// Non-blocking `read(2)` by the worker, woken by a multishot io_uring poll: for
    /// devices whose driver cannot read without blocking as io_uring asks (taps), where
    /// io_uring would hand reads to kernel worker threads that run them in parallel,
    /// out of order.
    ReadSync,
}

/// How a frame is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxMode {
    /// `send(2)` of the frame, to the fixed destination when one is set.
    Send,
    /// `writev(2)` straight from the worker, for devices whose driver cannot write
    /// without blocking as io_uring asks (taps): io_uring would hand each write to a
    /// kernel worker thread, costing a thread hop and, with several, the frames' order.
    WriteSync,
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
    /// Send runs of equal-length frames as one UDP GSO send (UDP sockets only).
    pub gso: bool,
    /// With a virtio-net header (taps): the device has its offloads on, so frames may
    /// be GSO super-frames (read into the pool's GSO buffers) and carry partial
    /// checksums, and offload frames are written with their own header
    /// ([`switch::Pkt::offload`]).
    pub offload: bool,
    /// Receive with UDP GRO (`Recv` sockets, where the pool has GSO buffers): a burst a
    /// peer sent with UDP GSO arrives as one receive, cut into frames here.
    pub gro: bool,
}

impl DgramConfig {
    /// A connected datagram socket: `recv` and `send` to its peer, no header, no source
    /// to ignore; `gso` for runs of equal frames (UDP only).
    pub fn connected(gso: bool) -> DgramConfig {
        DgramConfig {
            rx: RxMode::Recv,
            tx: TxMode::Send,
            vnet_hdr_len: 0,
            dest: None,
            ignore_src: None,
            gso,
            offload: false,
            gro: gso,
        }
    }

    /// The most pool buffers a queue of this kind holds at once on receive: lent plus
    /// ready.
    pub fn rx_held(&self, pool_buffers: u32) -> usize {
        match self.rx {
            // Read into a fresh buffer and handed on in the same breath.
            RxMode::ReadSync => 0,
            _ => {
                rx_budget(pool_buffers, usize::from(RX_RING)).max(rx_budget(pool_buffers, RX_SLOTS))
            }
        }
    }

    /// The most pool buffers a queue of this kind holds at once on send: frames in
    /// flight.
    pub fn tx_held(&self, pool_buffers: u32) -> usize {
        match self.tx {
            // Written and freed in the same breath.
            TxMode::WriteSync => 0,
            TxMode::Send => tx_budget(pool_buffers),
        }
    }
}

struct RxSlot {
    pkt: Option<Pkt>,
    iov: libc::iovec,
    name: RawAddr,
    msg: libc::msghdr,
}

/// Bytes in front of the payload in a multishot recvmsg buffer: the kernel's
/// `io_uring_recvmsg_out` (16 bytes), then room for the source address as large as the
/// template's `msg_namelen` (a sockaddr_in6), no control data.
const RECVMSG_NAME: usize = std::mem::size_of::<libc::sockaddr_in6>();
const RECVMSG_LEAD: usize = 16 + RECVMSG_NAME;

/// Multishot receive state: the ring that lends the buffers.
struct MultiRx {
    /// For recvmsg: the header template (name length, no control) the kernel reads.
    tmpl: Box<libc::msghdr>,
    ring: RxRing,
    /// Most buffers lent plus ready frames (the port's receive budget).
    budget: usize,
    armed: bool,
    /// Frames received through it, to tell "unsupported" from a later failure.
    frames: u64,
}

/// One UDP GSO send: a run of equal-length frames, each its own iovec, segmented by
/// the kernel at `UDP_SEGMENT` bytes (so every frame leaves as its own datagram).
struct GsoSlot {
    pkts: Vec<Pkt>,
    iov: Box<[libc::iovec; GSO_MAX]>,
    msg: libc::msghdr,
    cmsg: [u64; 4],
    bytes: usize,
}

struct TxSlot {
    pkt: Option<Pkt>,
    len: usize,
}

/// Whether a datagram from `src` is our own, sent from `own`. The kernel may report a
/// looped-back multicast datagram with source address 0.0.0.0 (no address of the
/// outgoing interface qualifies), and a socket bound to any address does not know its
/// source address; the port, unique to our send socket on this host, decides then.
fn is_own(src: Option<SocketAddr>, own: Option<SocketAddr>) -> bool {
    match (src, own) {
        (Some(s), Some(o)) => {
            s.port() == o.port()
                && (s.ip() == o.ip() || s.ip().is_unspecified() || o.ip().is_unspecified())
        }
        _ => false,
    }
}

/// Whether the kernel segments UDP GSO sends (`UDP_SEGMENT`), probed once with a real
/// two-segment send over loopback: a kernel without it would otherwise cost the first
/// run of frames sent before GSO is turned off.
pub fn udp_gso_supported() -> bool {
    static GSO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GSO.get_or_init(|| probe_udp_gso().unwrap_or(false))
}

fn probe_udp_gso() -> std::io::Result<bool> {
    use std::net::UdpSocket;
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(std::time::Duration::from_millis(200)))?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    tx.connect(rx.local_addr()?)?;
    let data = [7u8; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; 4];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_* compute offsets inside `cmsg` (32 bytes, room for CMSG_SPACE(2) =
    // 24) and write only there; sendmsg reads the header, iovec and data, all live.
    let sent = unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(2) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
        libc::CMSG_DATA(c).cast::<u16>().write_unaligned(32);
        libc::sendmsg(std::os::fd::AsRawFd::as_raw_fd(&tx), &msg, 0)
    };
    if sent != 64 {
        return Ok(false);
    }
    let mut buf = [0u8; 128];
    let a = rx.recv(&mut buf)?;
    let b = rx.recv(&mut buf)?;
    Ok(a == 32 && b == 32)
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
    /// Frames in single and GSO sends in flight (at most `tx_cap`).
    tx_frames: usize,
    tx_cap: usize,
    /// Frames of a GSO send the path refused, to go again one by one.
    retry: Vec<Pkt>,
    /// Slots of the single sends queued in one `tx_singles` call, in frame order.
    tx_order: Vec<u32>,
    stopping: bool,
    cancel_sent: bool,
    multi: Option<MultiRx>,
    poll_armed: bool,
    gso: Box<[GsoSlot]>,
    gso_free: Vec<u32>,
    gso_on: bool,
    /// The device behind the descriptor is gone (a tap deleted from outside: EBADFD).
    device_gone: bool,
    /// The GSO buffer a tap with offloads reads into when a frame outgrows an ordinary
    /// buffer (kept from read to read until a super-frame takes it).
    spare_gso: Option<Pkt>,
    /// Receiving with UDP GRO into GSO buffers (see [`DgramConfig::gro`]).
    gro_on: bool,
    /// The last frame read was a super-frame: read the next one straight into a GSO
    /// buffer.
    expect_big: bool,
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
            .map(|_| TxSlot { pkt: None, len: 0 })
            .collect();
        let cfg_gso =
            cfg.gso && cfg.tx == TxMode::Send && cfg.vnet_hdr_len == 0 && udp_gso_supported();
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
            tx_frames: 0,
            tx_cap: 16,
            retry: Vec::new(),
            tx_order: Vec::with_capacity(TX_SLOTS),
            stopping: false,
            cancel_sent: false,
            multi: None,
            poll_armed: false,
            device_gone: false,
            spare_gso: None,
            gro_on: false,
            expect_big: false,
            gso: (0..if cfg_gso { GSO_SLOTS } else { 0 })
                .map(|_| GsoSlot {
                    pkts: Vec::with_capacity(GSO_MAX),
                    iov: Box::new([empty_iov; GSO_MAX]),
                    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                    msg: unsafe { std::mem::zeroed() },
                    cmsg: [0; 4],
                    bytes: 0,
                })
                .collect(),
            gso_free: if cfg_gso {
                (0..GSO_SLOTS as u32).rev().collect()
            } else {
                Vec::new()
            },
            gso_on: cfg_gso,
        }
    }

    /// Starts receiving: multishot over a buffer ring when the mode and the kernel
    /// allow, one request per buffer otherwise.
    pub fn start(&mut self, io: &mut Io<'_>) {
        self.tx_cap = tx_budget(io.pool().count());
        let slots = rx_budget(io.pool().count(), RX_SLOTS);
        self.rx_free.retain(|&i| (i as usize) < slots);
        if self.cfg.rx == RxMode::ReadSync {
            // Reads happen in rx_burst; never block the worker in one.
            let _ = crate::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&self.fd));
            self.arm_poll(io);
            return;
        }
        {
            let n = rx_budget(io.pool().count(), usize::from(RX_RING)) as u16;
            if let Some(ring) = io.rx_ring(n) {
                // SAFETY: msghdr is plain data; all-zero is a valid empty header.
                let mut tmpl: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
                tmpl.msg_namelen = RECVMSG_NAME as libc::socklen_t;
                if self.cfg.gro
                    && self.cfg.rx == RxMode::Recv
                    && io.pool().gso_count() > 0
                    && set_udp_gro(&self.fd, true).is_ok()
                {
                    // No name; room for the UDP_GRO message with the segment size.
                    self.gro_on = true;
                    grow_rcvbuf(&self.fd);
                    tmpl.msg_namelen = 0;
                    tmpl.msg_controllen = GRO_CTRL;
                }
                self.multi = Some(MultiRx {
                    tmpl,
                    ring,
                    budget: usize::from(n),
                    armed: false,
                    frames: 0,
                });
            }
        }
        self.post_rx(io);
    }

    /// Lends fresh buffers for the ids the kernel consumed, and (re)arms the multishot
    /// request if it ended.
    /// Bytes the kernel writes in front of a frame: the virtio-net header of a tap, the
    /// recvmsg header and source address of a socket that needs the sender.
    fn lead(&self) -> usize {
        if self.gro_on {
            return GRO_LEAD;
        }
        match self.cfg.rx {
            RxMode::RecvMsg => RECVMSG_LEAD,
            _ => self.cfg.vnet_hdr_len,
        }
    }

    fn post_multi(&mut self, io: &mut Io<'_>) {
        let hdr = self.lead();
        let gro = self.gro_on;
        let want = if gro {
            (io.pool().gso_buf_size() - (HEADROOM - hdr)) as u32
        } else {
            (hdr + io.pool().max_frame() + 1) as u32
        };
        let fd = types::Fd(self.fd.as_raw_fd());
        let rx = if gro { RxMode::RecvMsg } else { self.cfg.rx };
        let Some(m) = &mut self.multi else { return };
        let mut lent = io.lent(&m.ring);
        let mut added = false;
        // Lent plus ready buffers stay within the budget: when rx_burst falls behind, the
        // backlog waits in the kernel's socket queue (and overflows there, counted by the
        // kernel) instead of growing inside the switch to the size of the pool. With
        // GRO a few GSO buffers are lent, each for a whole burst.
        while lent + self.ready.len() < m.budget && (!gro || lent < GRO_LENT) {
            let fresh = if gro {
                io.pool().alloc_gso()
            } else {
                io.alloc()
            };
            let Some(pkt) = fresh else { break };
            if let Err(pkt) = io.lend(&m.ring, pkt, hdr, want) {
                io.free(pkt);
                break;
            }
            lent += 1;
            added = true;
        }
        if added {
            io.publish(&m.ring);
        }
        if m.armed || self.stopping || lent == 0 {
            return;
        }
        let bgid = m.ring.bgid();
        let sqe = match rx {
            RxMode::RecvMsg => opcode::RecvMsgMulti::new(fd, &*m.tmpl, bgid).build(),
            // ReadSync never posts requests (start returns before).
            RxMode::Recv | RxMode::ReadSync => opcode::RecvMulti::new(fd, bgid).build(),
        };
        // SAFETY: the request writes only into buffers lent through the ring, which stays
        // registered (and owns them) until `stop` releases it after the request's final
        // completion; the template is boxed and lives as long.
        if unsafe { io.submit(sqe, OP_RX_MULTI, 0) } {
            m.armed = true;
            self.inflight += 1;
        }
    }

    fn complete_multi(&mut self, io: &mut Io<'_>, res: i32, flags: u32) {
        let more = io_uring::cqueue::more(flags);
        let bid = io_uring::cqueue::buffer_select(flags);
        let Some(m) = &mut self.multi else { return };
        if !more {
            m.armed = false;
            self.inflight = self.inflight.saturating_sub(1);
        }
        if let Some(bid) = bid {
            if let Some(mut pkt) = io.take(&m.ring, bid) {
                m.frames += 1;
                if res >= 0 && self.gro_on {
                    self.accept_gro(io, pkt, res as usize);
                    if !self.stopping {
                        self.post_rx(io);
                    }
                    return;
                }
                if res >= 0 && self.cfg.rx == RxMode::RecvMsg {
                    self.accept_recvmsg(io, &mut pkt, res as usize);
                } else if res >= 0 {
                    self.accept_rx(io, &mut pkt, res as usize, false);
                } else {
                    pkt.set_span(HEADROOM, 0);
                }
                if pkt.is_empty() {
                    io.free(pkt);
                } else {
                    self.ready.push_back(pkt);
                }
            }
        } else if res < 0 && !more {
            let never_worked = m.frames == 0 && (res == -libc::EINVAL || res == -libc::EOPNOTSUPP);
            if never_worked {
                // The kernel cannot do multishot on this descriptor: lend nothing more,
                // return the buffers, and post single reads instead (without GRO, whose
                // bursts would not fit an ordinary buffer).
                if let Some(m) = self.multi.take() {
                    io.release_rx_ring(m.ring);
                }
                if self.gro_on {
                    self.gro_on = false;
                    let _ = set_udp_gro(&self.fd, false);
                }
            } else if res == -libc::ENOBUFS {
                // Every lent buffer was in use: re-armed below once some are back.
                io.count_enobufs();
            } else if res != -libc::ECANCELED && !self.stopping {
                io.counters.count_drop(DropReason::IoError, 1);
                io.count_op_error();
            }
        }
        if !self.stopping {
            self.post_rx(io);
        }
    }

    /// The most pool buffers this queue holds at once on receive: lent plus ready.
    pub fn rx_held(&self, pool_buffers: u32) -> usize {
        self.cfg.rx_held(pool_buffers)
    }

    /// The most pool buffers this queue holds at once on send: frames in flight.
    pub fn tx_held(&self, pool_buffers: u32) -> usize {
        self.cfg.tx_held(pool_buffers)
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
        if self.multi.is_some() {
            self.post_multi(io);
            return;
        }
        let hdr = self.cfg.vnet_hdr_len;
        let want = hdr + io.pool().max_frame() + 1;
        while let Some(&i) = self.rx_free.last() {
            let Some(mut pkt) = io.alloc() else {
                // Retried on the next rx_burst; not a drop, nothing was lost yet.
                break;
            };
            let Some(start) = io.pool().buf_ptr(&mut pkt) else {
                io.free(pkt);
                break;
            };
            // SAFETY: HEADROOM >= the largest header (12), so the start stays inside the
            // buffer, and `want` bytes from there fit (buf_size >= HEADROOM + max + 1).
            let base = unsafe { start.add(HEADROOM - hdr) };
            let fd = types::Fd(self.fd.as_raw_fd());
            let slot = &mut self.rx[i as usize];
            let sqe = match self.cfg.rx {
                // ReadSync never posts requests (start returns before).
                RxMode::Recv | RxMode::ReadSync => opcode::Recv::new(fd, base, want as u32).build(),
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
            // SAFETY: the buffer is owned by the slot until the completion (the handle
            // is stored below and untouched until then), and the slot's msghdr/iovec
            // live in a boxed array that is never reallocated.
            if !unsafe { io.submit(sqe, OP_RX, i) } {
                io.free(pkt);
                break;
            }
            self.rx_free.pop();
            self.rx[i as usize].pkt = Some(pkt);
            self.inflight += 1;
        }
    }

    /// Moves up to `max` ready frames to `out`.
    /// Arms the multishot readiness poll that wakes the worker for ReadSync.
    fn arm_poll(&mut self, io: &mut Io<'_>) {
        if self.stopping || self.poll_armed {
            return;
        }
        if io.poll_readable(std::os::fd::AsFd::as_fd(&self.fd), OP_POLL) {
            self.poll_armed = true;
            self.inflight += 1;
        }
    }

    /// The device went away under the descriptor (EBADFD: a tap deleted with `ip link
    /// del`): carrier down and one log line; frames for it keep being counted as
    /// `io-error` until the netdev is deleted.
    fn lost_device(&mut self, io: &mut Io<'_>) {
        if !self.device_gone {
            self.device_gone = true;
            io.counters.set_carrier(false);
            tracing::warn!(
                "a port's device is gone (deleted from outside?): carrier down; frames for \
                 it are dropped as io-error until its netdev is deleted"
            );
        }
    }

    /// Reads ready frames straight from the descriptor until it has none or `max`.
    ///
    /// With offloads each read also offers a GSO buffer: `readv` into the ordinary
    /// buffer and on into the GSO buffer behind the same offset, so a frame that fits
    /// (nearly all) costs nothing more, and a super-frame's head is copied across once.
    /// After a super-frame the next read goes straight into the GSO buffer (a stream of
    /// super-frames is then never copied twice); a frame that turns out small there is
    /// copied down into an ordinary buffer.
    fn read_sync(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        let (mut n, mut wire) = (0, 0);
        while n < max {
            if self.cfg.offload && self.spare_gso.is_none() {
                self.spare_gso = io.pool().alloc_gso();
                if self.spare_gso.is_none() {
                    // Every GSO buffer is on its way somewhere: read again once one is
                    // back rather than cut a super-frame short.
                    break;
                }
            }
            let read = if self.cfg.offload && self.expect_big {
                self.read_direct(io)
            } else {
                self.read_split(io)
            };
            let (mut pkt, r, total) = match read {
                Ok(x) => x,
                Err(e) => {
                    if e == Some(libc::EBADFD) {
                        // Not a frame lost: the device is gone. Said once, as carrier down.
                        self.lost_device(io);
                    } else if e != Some(libc::EAGAIN) && e != Some(libc::EINTR) {
                        io.counters.count_drop(DropReason::IoError, 1);
                    }
                    break;
                }
            };
            self.accept_rx(io, &mut pkt, r, r >= total && self.cfg.offload);
            if pkt.is_empty() {
                io.free(pkt);
            } else {
                wire += wire_count(io.pool(), &pkt);
                out.push(pkt);
                n += 1;
                if wire >= max {
                    // Enough for one breath: a super-frame may become a hundred frames
                    // for a port without offloads, whose sends in flight are bounded.
                    break;
                }
            }
        }
        n
    }

    /// Bytes an ordinary buffer takes from where a read starts (header included), and
    /// that start (`HEADROOM` less the header).
    fn small_read(&self, pool: &switch::Pool) -> (usize, usize) {
        let hdr = self.cfg.vnet_hdr_len;
        let lead = HEADROOM - hdr;
        if self.cfg.offload {
            (pool.buf_size() - lead, lead)
        } else {
            (hdr + pool.max_frame() + 1, lead)
        }
    }

    /// One read into an ordinary buffer, and on into the spare GSO buffer (when there is
    /// one). Returns the packet, the bytes read and the most the read could take, or the
    /// error (`None`: no buffer).
    fn read_split(&mut self, io: &mut Io<'_>) -> Result<(Pkt, usize, usize), Option<i32>> {
        let (small, lead) = self.small_read(io.pool());
        let Some(mut pkt) = io.alloc() else {
            io.counters.count_drop(DropReason::NoBuffer, 1);
            return Err(None);
        };
        let Some(start) = io.pool().buf_ptr(&mut pkt) else {
            io.free(pkt);
            return Err(None);
        };
        let big = match self.spare_gso.as_mut() {
            Some(g) => io.pool().buf_ptr(g),
            None => None,
        };
        let big_len = io.pool().gso_buf_size().saturating_sub(lead + small);
        // SAFETY: `start + lead` has `small` bytes of its buffer behind it, and
        // `big + lead + small` has `big_len` bytes of its GSO buffer behind it; both
        // buffers are ours alone (`buf_ptr` checked) for the call.
        let iov = unsafe {
            [
                libc::iovec {
                    iov_base: start.add(lead).cast(),
                    iov_len: small,
                },
                libc::iovec {
                    iov_base: big.map_or(std::ptr::null_mut(), |b| b.add(lead + small).cast()),
                    iov_len: big_len,
                },
            ]
        };
        let cnt = if big.is_some() && big_len > 0 { 2 } else { 1 };
        // SAFETY: the iovecs describe memory we own exclusively, as said above.
        let r = unsafe { libc::readv(self.fd.as_raw_fd(), iov.as_ptr(), cnt) };
        if r < 0 {
            io.free(pkt);
            return Err(std::io::Error::last_os_error().raw_os_error());
        }
        let r = r as usize;
        let total = if cnt == 2 { small + big_len } else { small };
        self.expect_big = r > small;
        if r > small {
            // A super-frame: its head moves over to the GSO buffer, which becomes the
            // packet.
            let Some(mut g) = self.spare_gso.take() else {
                io.free(pkt);
                return Err(None);
            };
            let moved = copy_across(io.pool(), &mut pkt, &mut g, lead..lead + small);
            io.free(pkt);
            if !moved {
                io.counters.count_drop(DropReason::NoBuffer, 1);
                self.spare_gso = Some(g);
                return Err(None);
            }
            return Ok((g, r, total));
        }
        Ok((pkt, r, total))
    }

    /// One read straight into the spare GSO buffer; a frame that fits an ordinary buffer
    /// is copied into one (and the GSO buffer stays spare).
    fn read_direct(&mut self, io: &mut Io<'_>) -> Result<(Pkt, usize, usize), Option<i32>> {
        let (small, lead) = self.small_read(io.pool());
        let pool = io.pool();
        let total = pool.gso_buf_size().saturating_sub(lead);
        let Some(g) = self.spare_gso.as_mut() else {
            return Err(None);
        };
        let Some(start) = pool.buf_ptr(g) else {
            return Err(None);
        };
        // SAFETY: `total` bytes from `start + lead` lie inside the GSO buffer, which is
        // ours alone (`buf_ptr` checked) for the call.
        let r = unsafe { libc::read(self.fd.as_raw_fd(), start.add(lead).cast(), total) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error());
        }
        let r = r as usize;
        if r > small {
            let g = self.spare_gso.take().ok_or(None)?;
            return Ok((g, r, total));
        }
        self.expect_big = false;
        let Some(mut pkt) = io.alloc() else {
            io.counters.count_drop(DropReason::NoBuffer, 1);
            return Err(None);
        };
        let copied = self
            .spare_gso
            .as_mut()
            .is_some_and(|g| copy_across(pool, g, &mut pkt, lead..lead + r));
        if !copied {
            io.free(pkt);
            return Err(None);
        }
        Ok((pkt, r, total))
    }

    pub fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if self.cfg.rx == RxMode::ReadSync {
            if self.stopping {
                return 0;
            }
            self.arm_poll(io);
            return self.read_sync(io, out, max);
        }
        // Buffers are replaced on completion; one stays missing only when the pool ran
        // dry, and a multishot request ends when the kernel ran out of buffers.
        let want_more = match &mut self.multi {
            Some(m) => !m.armed || io.lent(&m.ring) + self.ready.len() < m.budget,
            None => !self.rx_free.is_empty(),
        };
        if want_more {
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
        if !self.retry.is_empty() {
            // Frames of a refused GSO send go first, one send each, in order.
            let mut retry = std::mem::take(&mut self.retry);
            self.tx_singles(io, &mut retry, usize::MAX);
            if !retry.is_empty() {
                io.drop_all(&mut retry, DropReason::TxFull);
            }
        }
        if self.gso_on {
            return self.tx_burst_gso(io, pkts);
        }
        if self.cfg.tx == TxMode::WriteSync {
            return self.tx_sync(io, pkts);
        }
        self.tx_singles(io, pkts, usize::MAX)
    }

    /// Writes each frame with one `writev` (header iovec first when there is one).
    fn tx_sync(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let hdr = self.cfg.vnet_hdr_len;
        let (mut ok, mut bytes) = (0u64, 0u64);
        let n = pkts.len();
        let pool = io.pool();
        for p in pkts.drain(..) {
            let d = pool.bytes(&p);
            // An offload frame brings its own header (it sits right in front of it).
            let h = match self.cfg.offload {
                true => pool
                    .vnet_hdr(&p)
                    .map_or(ZERO_VNET_HDR.as_ptr(), |h| h.as_ptr()),
                false => ZERO_VNET_HDR.as_ptr(),
            };
            let iov = [
                libc::iovec {
                    iov_base: h as *mut libc::c_void,
                    iov_len: hdr,
                },
                libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                },
            ];
            let (first, cnt) = if hdr > 0 { (0, 2) } else { (1, 1) };
            // SAFETY: both iovecs point at live memory of the stated lengths (a static
            // header or the frame's own, in its buffer, and the frame, whose reference
            // we hold until after the call).
            let r = unsafe { libc::writev(self.fd.as_raw_fd(), iov[first..].as_ptr(), cnt) };
            if r >= 0 {
                ok += 1;
                bytes += d.len() as u64;
            } else {
                let e = std::io::Error::last_os_error().raw_os_error();
                let why = if e == Some(libc::EAGAIN) {
                    DropReason::TxFull
                } else {
                    DropReason::IoError
                };
                if e == Some(libc::EBADFD) {
                    self.lost_device(io);
                }
                io.counters.count_drop(why, 1);
            }
            io.free(p);
        }
        io.counters.tx(ok, bytes);
        n
    }

    /// Groups runs of equal-length frames into GSO sends; a frame without an equal
    /// neighbour goes alone.
    fn tx_burst_gso(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let mut sent = 0;
        let pool = io.pool();
        while !pkts.is_empty() {
            let len = pool.bytes(&pkts[0]).len();
            let room = self.tx_cap.saturating_sub(self.tx_frames);
            let max_run = GSO_MAX.min(GSO_BYTES / len.max(1)).min(room);
            let run = pkts
                .iter()
                .take(max_run)
                .take_while(|p| pool.bytes(p).len() == len)
                .count();
            if run < 2 {
                if self.tx_singles(io, pkts, 1) == 0 {
                    break;
                }
                sent += 1;
                continue;
            }
            let Some(i) = self.gso_free.pop() else { break };
            let slot = &mut self.gso[i as usize];
            slot.pkts.clear();
            slot.pkts.extend(pkts.drain(..run));
            for (v, p) in slot.iov.iter_mut().zip(&slot.pkts) {
                let d = pool.bytes(p);
                *v = libc::iovec {
                    iov_base: d.as_ptr() as *mut libc::c_void,
                    iov_len: d.len(),
                };
            }
            slot.bytes = run * len;
            slot.cmsg = [0; 4];
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            slot.msg = unsafe { std::mem::zeroed() };
            slot.msg.msg_iov = slot.iov.as_mut_ptr();
            slot.msg.msg_iovlen = run;
            if self.cfg.dest.is_some() {
                slot.msg.msg_name = (&mut self.dest.storage as *mut libc::sockaddr_storage).cast();
                slot.msg.msg_namelen = self.dest.len;
            }
            slot.msg.msg_control = slot.cmsg.as_mut_ptr().cast();
            // SAFETY: CMSG_* compute offsets inside `cmsg` (32 bytes, room for one header
            // and a u16, which is CMSG_SPACE(2) = 24 bytes) and write only there.
            unsafe {
                slot.msg.msg_controllen = libc::CMSG_SPACE(2) as usize;
                let c = libc::CMSG_FIRSTHDR(&slot.msg);
                (*c).cmsg_level = SOL_UDP;
                (*c).cmsg_type = UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                libc::CMSG_DATA(c).cast::<u16>().write_unaligned(len as u16);
            }
            let sqe = opcode::SendMsg::new(types::Fd(self.fd.as_raw_fd()), &slot.msg).build();
            // SAFETY: the slot owns the frames' references and its msghdr, iovecs and
            // control data (boxed slots, never reallocated) until the completion; the
            // destination is boxed too.
            if !unsafe { io.submit(sqe, OP_TX_GSO, i) } {
                // Not queued: the frames go back to the caller, in order.
                let slot = &mut self.gso[i as usize];
                for (k, p) in slot.pkts.drain(..).enumerate() {
                    pkts.insert(k, p);
                }
                self.gso_free.push(i);
                break;
            }
            self.inflight += 1;
            self.tx_frames += run;
            sent += run;
        }
        sent
    }

    /// One send per frame, for at most `limit` frames.
    fn tx_singles(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>, limit: usize) -> usize {
        let n = pkts
            .len()
            .min(self.tx_free.len())
            .min(limit)
            .min(self.tx_cap.saturating_sub(self.tx_frames));
        let fd = types::Fd(self.fd.as_raw_fd());
        let pool = io.pool();
        let mut sent = 0;
        while sent < n {
            let Some(&i) = self.tx_free.last() else { break };
            let data = pool.bytes(&pkts[sent]);
            let (ptr, len) = (data.as_ptr(), data.len() as u32);
            let sqe = match self.cfg.dest {
                Some(_) => opcode::Send::new(fd, ptr, len)
                    .dest_addr((&self.dest.storage as *const libc::sockaddr_storage).cast())
                    .dest_addr_len(self.dest.len)
                    .build(),
                None => opcode::Send::new(fd, ptr, len).build(),
            };
            // SAFETY: slot `i` takes the frame's reference below, in this call and so
            // before any completion is handled, and keeps it until the completion; the
            // destination lives in boxed storage that does not move.
            if !unsafe { io.submit(sqe, OP_TX, i) } {
                break;
            }
            self.tx_free.pop();
            self.tx[i as usize].len = len as usize;
            self.tx_order.push(i);
            sent += 1;
        }
        for (i, pkt) in self.tx_order.drain(..).zip(pkts.drain(..sent)) {
            self.tx[i as usize].pkt = Some(pkt);
        }
        self.inflight += sent;
        self.tx_frames += sent;
        sent
    }

    /// Handles a completion of one of our requests.
    pub fn complete(&mut self, io: &mut Io<'_>, op: u8, tag: u32, res: i32, flags: u32) {
        if op == OP_RX_MULTI {
            self.complete_multi(io, res, flags);
            return;
        }
        if op == OP_POLL {
            if !io_uring::cqueue::more(flags) {
                self.poll_armed = false;
                self.inflight = self.inflight.saturating_sub(1);
            }
            return;
        }
        if op == OP_TX_GSO {
            self.inflight = self.inflight.saturating_sub(1);
            let Some(slot) = self.gso.get_mut(tag as usize) else {
                return;
            };
            let n = slot.pkts.len() as u64;
            self.tx_frames = self.tx_frames.saturating_sub(slot.pkts.len());
            if res >= 0 {
                io.counters.tx(n, slot.bytes as u64);
                io.free_all(&mut slot.pkts);
            } else if res == -libc::ECANCELED || self.stopping {
                io.drop_all(&mut slot.pkts, DropReason::TxFull);
            } else {
                // The path cannot segment this run (an MTU below the frame size): the
                // frames go again one send each, and so do later ones.
                self.gso_on = false;
                io.count_op_error();
                self.retry.append(&mut slot.pkts);
            }
            self.gso_free.push(tag);
            return;
        }
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
                    && is_own(
                        RawAddr {
                            storage: slot.name.storage,
                            len: slot.msg.msg_namelen,
                        }
                        .to_std(),
                        self.cfg.ignore_src,
                    );
                self.rx_free.push(tag);
                if res < 0 {
                    if res != -libc::ECANCELED && !self.stopping {
                        io.counters.count_drop(DropReason::IoError, 1);
                        io.count_op_error();
                    }
                    io.free(pkt);
                } else if from_self {
                    io.free(pkt);
                } else {
                    self.accept_rx(io, &mut pkt, res as usize, truncated);
                    match pkt.is_empty() {
                        true => io.free(pkt),
                        false => self.ready.push_back(pkt),
                    }
                }
                if !self.stopping {
                    self.post_rx(io);
                }
            }
            OP_TX => {
                let Some(slot) = self.tx.get_mut(tag as usize) else {
                    return;
                };
                if let Some(pkt) = slot.pkt.take() {
                    self.tx_frames = self.tx_frames.saturating_sub(1);
                    if res >= 0 {
                        io.counters.tx(1, slot.len as u64);
                    } else if res != -libc::ECANCELED {
                        io.counters.count_drop(DropReason::IoError, 1);
                        io.count_op_error();
                    } else {
                        io.counters.count_drop(DropReason::TxFull, 1);
                    }
                    io.free(pkt);
                }
                self.tx_free.push(tag);
            }
            _ => {}
        }
    }

    /// Unpacks a multishot recvmsg buffer of a GRO socket (`io_uring_recvmsg_out`, the
    /// `UDP_GRO` control message, payload): a burst of large frames is cut into frames
    /// that share the GSO buffer, each with its own span; small frames (under
    /// [`GRO_SHARE_MIN`]) and a lone datagram are copied into ordinary buffers and the
    /// GSO buffer goes back at once.
    fn accept_gro(&mut self, io: &mut Io<'_>, mut pkt: Pkt, n: usize) {
        let pool = io.pool();
        let Some(buf) = pool.buf_mut(&mut pkt) else {
            io.free(pkt);
            return;
        };
        let out = &buf[HEADROOM - GRO_LEAD..HEADROOM];
        let word = |i: usize| u32::from_ne_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
        let (ctrl_len, flags) = (word(4) as usize, word(12) as i32);
        let mut seg = 0;
        if ctrl_len >= 20 {
            // cmsghdr { len: usize, level: i32, type: i32 } then the segment size (int).
            let c = &out[16..16 + GRO_CTRL];
            let int = |i: usize| i32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            if int(8) == SOL_UDP && int(12) == UDP_GRO {
                seg = usize::try_from(int(16)).unwrap_or(0);
            }
        }
        let payload = n.saturating_sub(GRO_LEAD);
        let max = pool.max_frame();
        if flags & libc::MSG_TRUNC != 0 {
            io.counters.count_drop(DropReason::Oversize, 1);
            io.free(pkt);
            return;
        }
        if seg == 0 || payload <= seg {
            let frame = &buf[HEADROOM..HEADROOM + payload.min(buf.len() - HEADROOM)];
            if payload > max {
                io.counters.count_drop(DropReason::Oversize, 1);
            } else if payload < switch::pool::MIN_FRAME {
                io.counters.count_drop(DropReason::Undersize, 1);
            } else if let Some(copy) = io.alloc_copy(frame) {
                io.counters.rx(payload);
                self.ready.push_back(copy);
            } else {
                io.counters.count_drop(DropReason::NoBuffer, 1);
            }
            io.free(pkt);
            return;
        }
        let count = payload.div_ceil(seg);
        if seg > max {
            io.counters.count_drop(DropReason::Oversize, count as u64);
            io.free(pkt);
            return;
        }
        io.counters.gro(count as u64);
        // Every segment is `seg` bytes but the last; one shorter than a frame is a runt.
        let spans = (0..count).map(|i| (HEADROOM + i * seg, seg.min(payload - i * seg)));
        let frames = spans
            .clone()
            .filter(|&(_, len)| len >= switch::pool::MIN_FRAME);
        let runts = count - frames.clone().count();
        if runts > 0 {
            io.counters.count_drop(DropReason::Undersize, runts as u64);
        }
        if seg < GRO_SHARE_MIN {
            // Small frames are copied out, and the GSO buffer goes back to the kernel
            // at once: a few lent buffers then keep up with any rate.
            for (at, len) in frames {
                match io.alloc_copy(&buf[at..at + len]) {
                    Some(f) => {
                        io.counters.rx(len);
                        self.ready.push_back(f);
                    }
                    None => io.counters.count_drop(DropReason::NoBuffer, 1),
                }
            }
            io.free(pkt);
            return;
        }
        let shared = pool.fanout(pkt, (count - runts) as u32);
        for (mut h, (at, len)) in shared.zip(frames) {
            h.set_span(at, len);
            io.counters.rx(len);
            self.ready.push_back(h);
        }
    }

    /// Unpacks a multishot recvmsg buffer (`io_uring_recvmsg_out`, source address,
    /// payload), ignores our own datagrams, then checks the frame.
    fn accept_recvmsg(&self, io: &mut Io<'_>, pkt: &mut Pkt, n: usize) {
        let pool = io.pool();
        let Some(buf) = pool.buf_mut(pkt) else {
            pkt.set_span(HEADROOM, 0);
            return;
        };
        let out = &buf[HEADROOM - RECVMSG_LEAD..HEADROOM];
        let word = |i: usize| u32::from_ne_bytes([out[i], out[i + 1], out[i + 2], out[i + 3]]);
        let (namelen, flags) = (word(0) as usize, word(12) as i32);
        let mut name = RawAddr::empty();
        let nl = namelen.min(RECVMSG_NAME);
        // SAFETY: copies at most RECVMSG_NAME bytes into a sockaddr_storage (128 bytes)
        // from the name area of the buffer, which is RECVMSG_NAME bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(
                out[16..16 + nl].as_ptr(),
                (&mut name.storage as *mut libc::sockaddr_storage).cast::<u8>(),
                nl,
            )
        };
        name.len = nl as libc::socklen_t;
        if is_own(name.to_std(), self.cfg.ignore_src) {
            pkt.set_span(HEADROOM, 0);
            return;
        }
        let payload = n.saturating_sub(RECVMSG_LEAD);
        self.accept_rx(io, pkt, payload, flags & libc::MSG_TRUNC != 0);
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
        let mut limit = io.pool().max_frame();
        if hdr > 0 {
            // virtio_net_hdr: flags (u8), gso_type (u8), ... Without offloads a frame
            // that asks for one is not one we can pass on unchanged.
            let h = io
                .pool()
                .buf_mut(pkt)
                .and_then(|b| b.get(HEADROOM - hdr..HEADROOM - hdr + VNET_HDR_LEN))
                .and_then(|b| <&[u8; VNET_HDR_LEN]>::try_from(b).ok())
                .map(VnetHdr::parse);
            match h {
                Some(h) if self.cfg.offload => {
                    if h.needs_work() {
                        pkt.set_offload(true);
                    }
                    if h.gso() != GSO_NONE {
                        limit = GSO_FRAME;
                    }
                }
                Some(h) if h.gso() == GSO_NONE => {}
                _ => {
                    io.counters.count_drop(DropReason::Offload, 1);
                    return;
                }
            }
        }
        let len = n - hdr;
        if truncated || len > limit {
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
        if let Some(g) = self.spare_gso.take() {
            io.free(g);
        }
        for p in self.ready.drain(..) {
            io.free(p);
        }
        io.free_all(&mut self.retry);
        if self.inflight == 0 {
            if let Some(m) = self.multi.take() {
                // No request of the group is in flight any more.
                io.release_rx_ring(m.ring);
            }
            return true;
        }
        if !self.cancel_sent && io.cancel_all(std::os::fd::AsFd::as_fd(&self.fd), OP_CANCEL) {
            self.inflight += 1;
            self.cancel_sent = true;
        }
        false
    }
}

/// Copies bytes `range` of `from`'s buffer to the same place in `to`'s, two buffers
/// the caller holds alone; false (nothing copied) when either is shared or too short.
fn copy_across(
    pool: &switch::Pool,
    from: &mut Pkt,
    to: &mut Pkt,
    range: std::ops::Range<usize>,
) -> bool {
    match (pool.buf_mut(from), pool.buf_mut(to)) {
        (Some(a), Some(b)) if range.end <= a.len().min(b.len()) => {
            b[range.clone()].copy_from_slice(&a[range]);
            true
        }
        _ => false,
    }
}

/// How many wire frames `p` stands for: the segments of a GSO super-frame, else one.
fn wire_count(pool: &switch::Pool, p: &Pkt) -> usize {
    let Some(h) = pool.vnet_hdr(p).map(VnetHdr::parse) else {
        return 1;
    };
    if h.gso() == GSO_NONE || h.gso_size == 0 {
        return 1;
    }
    p.len()
        .saturating_sub(usize::from(h.hdr_len))
        .div_ceil(usize::from(h.gso_size))
        .max(1)
}

/// `UDP_GRO` from `<linux/udp.h>`: receive GSO bursts whole, with their segment size.
const UDP_GRO: libc::c_int = 104;
/// Control bytes a GRO receive is given: `CMSG_SPACE(sizeof(int))`.
const GRO_CTRL: usize = 24;
/// What the kernel writes in front of a GRO socket's payload: the multishot recvmsg
/// header and the control message (no name).
const GRO_LEAD: usize = 16 + GRO_CTRL;
/// GSO buffers a GRO socket lends the kernel at once.
const GRO_LENT: usize = 16;
/// Segments of at least this size share their GSO buffer; smaller ones are copied.
const GRO_SHARE_MIN: usize = 2048;

/// Receive buffer of a GRO socket: its queue holds whole bursts.
const GRO_RCVBUF: usize = 4 << 20;

/// Gives a GRO socket a receive buffer of [`GRO_RCVBUF`] (`SO_RCVBUFFORCE` with
/// CAP_NET_ADMIN, else as much of it as `rmem_max` allows); best effort.
fn grow_rcvbuf(fd: &OwnedFd) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(fd, GRO_RCVBUF).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(fd, GRO_RCVBUF);
    }
}

/// Turns UDP GRO on or off for a socket (rustix has no `UDP_GRO` option).
fn set_udp_gro(fd: &OwnedFd, on: bool) -> std::io::Result<()> {
    let v: libc::c_int = on.into();
    // SAFETY: a valid socket and a pointer to an int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_UDP,
            UDP_GRO,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A port that is one datagram engine and nothing more, holding what must live as long
/// as the port (`keep`: a tap device whose last queue runs the down-script, a user
/// network's stack thread).
pub struct DgramPort<K> {
    kind: &'static str,
    io: DgramIo,
    poll_us: Option<u32>,
    keep: K,
}

impl<K> DgramPort<K> {
    /// A port of QAPI type `kind` moving frames through `io`.
    pub fn new(kind: &'static str, io: DgramIo, poll_us: Option<u32>, keep: K) -> DgramPort<K> {
        DgramPort {
            kind,
            io,
            poll_us,
            keep,
        }
    }

    /// What the port keeps alive.
    pub fn keep(&self) -> &K {
        &self.keep
    }

    /// The engine (its descriptor, for tests).
    pub fn io(&self) -> &DgramIo {
        &self.io
    }
}

impl<K: Send> switch::Backend for DgramPort<K> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.io.start(io);
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        self.io.rx_burst(io, out, max)
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        self.io.tx_burst(io, pkts)
    }

    fn complete(&mut self, io: &mut Io<'_>, op: u8, tag: u32, res: i32, flags: u32) {
        self.io.complete(io, op, tag, res, flags);
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.io.stop(io)
    }

    fn max_held(&self, pool: &switch::Pool) -> usize {
        self.io.rx_held(pool.count()) + self.io.tx_held(pool.count())
    }

    fn poll_us(&self) -> Option<u32> {
        self.poll_us
    }

    fn offloads(&self) -> bool {
        self.io.cfg.offload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_gso_is_probed_for_real() {
        // Linux 4.18+ has UDP GSO; the probe must see two datagrams from one send.
        assert!(udp_gso_supported());
        assert!(probe_udp_gso().unwrap());
    }

    #[test]
    fn receive_budget_scales_with_the_pool() {
        assert_eq!(rx_budget(64, 128), 8);
        assert_eq!(rx_budget(2048, 128), 64);
        assert_eq!(rx_budget(3000, 128), 64);
        assert_eq!(rx_budget(16384, 128), 128);
        assert_eq!(rx_budget(16384, 64), 64);
        assert_eq!(rx_budget(1 << 20, 128), 128);
    }

    #[test]
    fn own_multicast_datagrams_are_recognised() {
        let own: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let bound: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        for (src, o, want) in [
            ("0.0.0.0:4000", own, true),
            ("127.0.0.1:4000", own, true),
            ("127.0.0.1:4001", own, false),
            ("10.0.0.1:4000", bound, true),
            ("10.0.0.2:4000", bound, false),
            ("0.0.0.0:4000", bound, true),
        ] {
            assert_eq!(
                is_own(Some(src.parse().unwrap()), Some(o)),
                want,
                "{src} vs {o}"
            );
        }
        assert!(!is_own(None, Some(own)));
        assert!(!is_own(Some(own), None));
    }
}
