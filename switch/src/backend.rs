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

use crate::counters::{DropReason, PortCounters};
use crate::pool::{Pkt, Pool};
use crate::uring::{token, Uring};
use crate::worker::WorkerShared;

/// Frames moved per I/O call.
pub const BURST: usize = 32;

/// What a backend may use while the worker calls it.
pub struct Io<'a> {
    /// The packet pool.
    pub pool: &'a Arc<Pool>,
    /// This port's counters.
    pub counters: &'a PortCounters,
    /// When the current breath started.
    pub now: Instant,
    uring: &'a mut Uring,
    slot: u32,
    waker: &'a Arc<WorkerShared>,
    op_bits: u8,
}

/// Wakes a sleeping worker from another thread: for ports whose frames arrive without a
/// kernel completion (in-memory and shared-memory ports).
#[derive(Clone, Debug)]
pub struct Waker(Arc<WorkerShared>);

impl Waker {
    /// Wakes the worker if it is asleep.
    pub fn wake(&self) {
        self.0.wake_if_sleeping();
    }
}

impl<'a> Io<'a> {
    pub(crate) fn new(
        pool: &'a Arc<Pool>,
        counters: &'a PortCounters,
        uring: &'a mut Uring,
        slot: u32,
        now: Instant,
        waker: &'a Arc<WorkerShared>,
    ) -> Io<'a> {
        Io {
            pool,
            counters,
            now,
            uring,
            slot,
            waker,
            op_bits: 0,
        }
    }

    /// A registered provided-buffer ring of `entries` (power of two) for multishot
    /// receives; `None` when the kernel cannot (fall back to one request per buffer).
    pub fn buf_ring(&mut self, entries: u16) -> Option<crate::bufring::BufRing> {
        self.uring.buf_ring(entries)
    }

    /// Unregisters a buffer ring once no request of its group is in flight.
    pub fn drop_buf_ring(&mut self, r: crate::bufring::BufRing) {
        self.uring.drop_buf_ring(r);
    }

    /// Bits OR-ed into the `op` of every request submitted from now on: lets a backend
    /// with several descriptors tell their completions apart while reusing one engine.
    pub fn set_op_bits(&mut self, bits: u8) {
        self.op_bits = bits;
    }

    /// A handle that wakes this port's worker from another thread.
    pub fn waker(&self) -> Waker {
        Waker(self.waker.clone())
    }

    /// Queues an io_uring request for this port; its completion comes back to
    /// [`Backend::complete`] with the same `op` and `tag` (24 bits).
    ///
    /// # Safety
    /// Every buffer, iovec and msghdr the entry points to must stay valid and untouched
    /// until that completion is delivered.
    pub unsafe fn submit(&mut self, sqe: squeue::Entry, op: u8, tag: u32) {
        let sqe = sqe.user_data(token(self.slot, op | self.op_bits, tag));
        // SAFETY: forwarded from the caller's contract.
        unsafe { self.uring.push(&sqe) };
    }

    /// Copies a received frame into a new packet and counts it; a frame shorter than an
    /// Ethernet header or longer than the maximum, or one the pool has no buffer for, is
    /// counted as a drop instead and `None` returned.
    pub fn receive_copy(&self, frame: &[u8]) -> Option<Pkt> {
        let why = if frame.len() > self.pool.max_frame() {
            DropReason::Oversize
        } else if frame.len() < crate::pool::MIN_FRAME {
            DropReason::Undersize
        } else if let Some(p) = self.pool.alloc_copy(frame) {
            self.counters.rx(frame.len());
            return Some(p);
        } else {
            DropReason::NoBuffer
        };
        self.counters.count_drop(why, 1);
        None
    }

    /// Frees every packet in `pkts`, counting them as dropped for `why`.
    pub fn drop_all(&self, pkts: &mut Vec<Pkt>, why: DropReason) {
        self.counters.count_drop(why, pkts.len() as u64);
        for p in pkts.drain(..) {
            self.pool.free(p);
        }
    }

    /// Frees one packet, counting it as dropped for `why`.
    pub fn drop_one(&self, p: Pkt, why: DropReason) {
        self.counters.count_drop(why, 1);
        self.pool.free(p);
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

    /// The port's own busy-poll time in microseconds, if it has one.
    fn poll_us(&self) -> Option<u32> {
        None
    }
}
