//! The contract between the worker and a netdev backend.
//!
//! A backend is one queue of one port: a tap queue, a socket, a memif region. It is built
//! on the control thread (opening devices, binding sockets, where errors are still
//! `Result`s), then handed to one worker, which alone calls it from then on:
//!
//! ```text
//!   worker breath:  complete()* ── rx_burst() ── forward ── tx_burst() ── housekeeping()
//! ```
//!
//! Kernel I/O goes through the worker's io_uring via [`Io::submit`]; each completion comes
//! back to the same backend through [`Backend::complete`]. On the packet path failures
//! are counted in the port's counters, never returned.

#![allow(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use io_uring::squeue;

use crate::bufring::RxRing;
use crate::counters::{DropReason, PortCounters};
use crate::pool::{BufCache, Pkt, Pool};
use crate::uring::{token, Uring, UringStats};
use crate::wake::Bell;

/// Frames moved per I/O call.
pub const BURST: usize = 32;

/// What a backend may use while the worker calls it.
pub struct Io<'a> {
    pool: &'a Pool,
    cache: &'a mut BufCache,
    /// This port's counters.
    pub counters: &'a PortCounters,
    /// When the current breath started.
    pub now: Instant,
    uring: &'a mut Uring,
    stats: &'a UringStats,
    slot: u32,
    bell: &'a Arc<Bell>,
    op_bits: u8,
}

/// Wakes a sleeping worker from another thread: for ports whose frames arrive without a
/// kernel completion (in-memory and shared-memory ports). It goes through the worker's
/// sleep/wake protocol ([`crate::wake`]), so a frame queued before `wake` is never
/// slept on.
#[derive(Clone, Debug)]
pub struct Waker(Arc<Bell>);

impl Waker {
    /// Tells the worker to poll its ports once more, waking it if it sleeps. Call it
    /// after queueing the item.
    pub fn wake(&self) {
        self.0.kick();
    }
}

/// The worker's parts an [`Io`] lends out, gathered so the worker can make one per call.
pub(crate) struct IoParts<'a> {
    pub pool: &'a Pool,
    pub cache: &'a mut BufCache,
    pub uring: &'a mut Uring,
    pub stats: &'a UringStats,
    pub bell: &'a Arc<Bell>,
}

impl<'a> Io<'a> {
    pub(crate) fn new(
        parts: IoParts<'a>,
        counters: &'a PortCounters,
        slot: u32,
        now: Instant,
    ) -> Io<'a> {
        Io {
            pool: parts.pool,
            cache: parts.cache,
            counters,
            now,
            uring: parts.uring,
            stats: parts.stats,
            slot,
            bell: parts.bell,
            op_bits: 0,
        }
    }

    /// The packet pool: read frames with [`Pool::bytes`], fill them with
    /// [`Pool::buf_mut`]. The reference outlives this borrow of `Io`.
    #[inline]
    pub fn pool(&self) -> &'a Pool {
        self.pool
    }

    /// Takes a free buffer from the worker's cache.
    #[inline]
    pub fn alloc(&mut self) -> Option<Pkt> {
        self.cache.alloc()
    }

    /// Copies `data` into a fresh buffer from the worker's cache.
    #[inline]
    pub fn alloc_copy(&mut self, data: &[u8]) -> Option<Pkt> {
        self.cache.alloc_copy(data)
    }

    /// Returns one reference to the worker's cache.
    #[inline]
    pub fn free(&mut self, p: Pkt) {
        self.cache.free(p);
    }

    /// A provided-buffer ring of `entries` (power of two) for multishot receives,
    /// registered with this worker's io_uring; `None` when the kernel cannot (fall back
    /// to one request per buffer).
    pub fn rx_ring(&mut self, entries: u16) -> Option<RxRing> {
        if !crate::uring::features().multishot_recv {
            return None;
        }
        self.uring.rx_ring(entries)
    }

    /// Lends an exclusively owned packet to `ring` (its buffer from `HEADROOM - lead`,
    /// at most `len` bytes); gives it back when it cannot.
    pub fn lend(&mut self, ring: &RxRing, pkt: Pkt, lead: usize, len: u32) -> Result<(), Pkt> {
        self.uring.lend(ring, self.pool, pkt, lead, len)
    }

    /// Makes what was lent to `ring` visible to the kernel.
    pub fn publish(&mut self, ring: &RxRing) {
        self.uring.publish(ring);
    }

    /// The packet the kernel filled, by the buffer id of a completion.
    pub fn take(&mut self, ring: &RxRing, bid: u16) -> Option<Pkt> {
        self.uring.take(ring, bid)
    }

    /// Buffers `ring` lends now.
    pub fn lent(&mut self, ring: &RxRing) -> usize {
        self.uring.lent(ring)
    }

    /// Ends a ring once no request of its group is in flight: it is unregistered and
    /// every buffer it still lent comes back.
    pub fn release_rx_ring(&mut self, ring: RxRing) {
        self.uring.release_rx_ring(ring, self.cache);
    }

    /// Bits OR-ed into the `op` of every request submitted from now on: lets a backend
    /// with several descriptors tell their completions apart while reusing one engine.
    pub fn set_op_bits(&mut self, bits: u8) {
        self.op_bits = bits;
    }

    /// A handle that wakes this port's worker from another thread.
    pub fn waker(&self) -> Waker {
        Waker(self.bell.clone())
    }

    /// Counts a multishot receive that ended for lack of buffers.
    pub fn count_enobufs(&self) {
        UringStats::bump(&self.stats.enobufs);
    }

    /// Counts a completion that reported an unexpected error.
    pub fn count_op_error(&self) {
        UringStats::bump(&self.stats.op_errors);
    }

    /// Queues an io_uring request for this port; its completion comes back to
    /// [`Backend::complete`] with the same `op` and `tag` (24 bits). `false` when the
    /// kernel would not take it (counted in the worker's stats): then nothing was
    /// submitted and the caller keeps what the entry points to.
    ///
    /// # Safety
    /// Every buffer, iovec, msghdr and provided-buffer ring the entry points to must
    /// stay valid and untouched until that request's final completion is delivered.
    #[must_use]
    pub unsafe fn submit(&mut self, sqe: squeue::Entry, op: u8, tag: u32) -> bool {
        let sqe = sqe.user_data(token(self.slot, op | self.op_bits, tag));
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.uring.push(&sqe, self.stats) }
    }

    /// Arms a multishot readiness poll (POLLIN) on `fd` for this port: its completions
    /// come back with `op`, one per wake-up, until one without `IORING_CQE_F_MORE`
    /// ends it. False when the kernel would not take the request.
    pub fn poll_readable(&mut self, fd: std::os::fd::BorrowedFd<'_>, op: u8) -> bool {
        use std::os::fd::AsRawFd;
        let sqe = io_uring::opcode::PollAdd::new(
            io_uring::types::Fd(fd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .multi(true)
        .build();
        // SAFETY: a poll request points to no memory.
        unsafe { self.submit(sqe, op, 0) }
    }

    /// Cancels every request of this port on `fd` (stopping a port); the cancel's own
    /// completion comes back with `op`. False when the kernel would not take it.
    pub fn cancel_all(&mut self, fd: std::os::fd::BorrowedFd<'_>, op: u8) -> bool {
        use std::os::fd::AsRawFd;
        let sqe = io_uring::opcode::AsyncCancel2::new(
            io_uring::types::CancelBuilder::fd(io_uring::types::Fd(fd.as_raw_fd())).all(),
        )
        .build();
        // SAFETY: a cancel request points to no memory.
        unsafe { self.submit(sqe, op, 0) }
    }

    /// Copies a received frame into a new packet and counts it; a frame shorter than an
    /// Ethernet header or longer than the maximum, or one the pool has no buffer for, is
    /// counted as a drop instead and `None` returned.
    pub fn receive_copy(&mut self, frame: &[u8]) -> Option<Pkt> {
        let why = if frame.len() > self.pool.max_frame() {
            DropReason::Oversize
        } else if frame.len() < crate::pool::MIN_FRAME {
            DropReason::Undersize
        } else if let Some(p) = self.cache.alloc_copy(frame) {
            self.counters.rx(frame.len());
            return Some(p);
        } else {
            DropReason::NoBuffer
        };
        self.counters.count_drop(why, 1);
        None
    }

    /// Frees every packet in `pkts` (sent, or never a frame).
    pub fn free_all(&mut self, pkts: &mut Vec<Pkt>) {
        self.cache.free_all(pkts);
    }

    /// Frees every packet in `pkts`, counting them as dropped for `why`.
    pub fn drop_all(&mut self, pkts: &mut Vec<Pkt>, why: DropReason) {
        self.counters.count_drop(why, pkts.len() as u64);
        self.cache.free_all(pkts);
    }

    /// Frees one packet, counting it as dropped for `why`.
    pub fn drop_one(&mut self, p: Pkt, why: DropReason) {
        self.counters.count_drop(why, 1);
        self.cache.free(p);
    }
}

/// One queue of one port, as the worker sees it.
pub trait Backend: Send {
    /// The QAPI netdev type, for logs and reports ("tap", "socket", ...).
    fn kind(&self) -> &'static str;

    /// Called once on the owning worker before anything else: post the first receives.
    fn start(&mut self, _io: &mut Io<'_>) {}

    /// Moves up to `max` received frames to the end of `out`; returns how many.
    /// Every frame is between 14 bytes and the pool's maximum frame size.
    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize;

    /// Takes frames from the front of `pkts` for sending and returns how many it took.
    /// What it did not take stays in `pkts`; the caller counts and frees it.
    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize;

    /// A request this port submitted has completed.
    fn complete(&mut self, _io: &mut Io<'_>, _op: u8, _tag: u32, _res: i32, _flags: u32) {}

    /// Timed work (re-accepting a connection, retrying a stalled queue), called every
    /// few milliseconds while the worker is awake and at least every housekeeping
    /// interval while it sleeps.
    fn housekeeping(&mut self, _io: &mut Io<'_>) {}

    /// Starts or continues shutting down: cancel what is in flight and return every
    /// buffer to the pool. Called repeatedly (completions in between) until it returns
    /// `true`, meaning nothing of this port is in flight any more.
    fn stop(&mut self, io: &mut Io<'_>) -> bool;

    /// The most pool buffers this queue may hold at once between breaths (lent for
    /// receive, ready, in flight on send). The switch reserves this many for the port
    /// so that no port can starve another; the backend must keep to it.
    fn max_held(&self, _pool: &Pool) -> usize {
        0
    }

    /// Whether the port takes frames marked [`Pkt::offload`] (a virtio-net header in
    /// front: GSO super-frames, partial checksums) and sends them on as they are. The
    /// forwarder cuts and finishes frames for a port that says no (the default), once
    /// per frame for all such destinations. Asked once, when the port is added.
    fn offloads(&self) -> bool {
        false
    }

    /// The port's own busy-poll time in microseconds, if it has one.
    fn poll_us(&self) -> Option<u32> {
        None
    }

    /// On the worker's way to sleep, after it raised its sleeping flag: a port whose
    /// peer must be asked to signal (shared-memory rings) asks now and says whether
    /// frames came meanwhile — `false` keeps the worker awake.
    fn idle(&mut self) -> bool {
        true
    }

    /// The longest the worker may sleep while this port exists (a peer whose signal
    /// can be lost in a race it does not fence against); `None`: no limit of its own.
    fn sleep_limit(&self) -> Option<std::time::Duration> {
        None
    }
}
