//! The worker's io_uring: the one place that submits and reaps.
//!
//! Every submission carries a `user_data` token that says where its completion goes:
//!
//! ```text
//!  63            32 31      24 23               0
//!  ┌──────────────┬──────────┬──────────────────┐
//!  │ port slot    │ op       │ tag (buffer, ...) │
//!  └──────────────┴──────────┴──────────────────┘
//! ```
//!
//! The slot is the worker-local index of the port (or [`WORKER_SLOT`] for the worker's own
//! wake-up read); `op` and `tag` belong to the backend. A slot is reused only after its
//! backend reported that nothing of it is in flight, so a completion always reaches the
//! port that submitted it.
//!
//! The ring is made on the worker thread with SINGLE_ISSUER and DEFER_TASKRUN when the
//! kernel has them: completions are produced only when the worker asks, in one
//! `io_uring_enter` per breath that both submits the breath's new requests and collects
//! what finished.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use io_uring::{squeue, types, IoUring};

use crate::bufring::{BufRing, RxRing};
use crate::pool::{BufCache, Pkt};

/// Slot value of requests that belong to the worker itself.
pub const WORKER_SLOT: u32 = u32::MAX;

/// Builds a token.
#[inline]
pub fn token(slot: u32, op: u8, tag: u32) -> u64 {
    (u64::from(slot) << 32) | (u64::from(op) << 24) | u64::from(tag & 0x00ff_ffff)
}

/// Splits a token into slot, op and tag.
#[inline]
pub fn untoken(t: u64) -> (u32, u8, u32) {
    ((t >> 32) as u32, (t >> 24) as u8, (t & 0x00ff_ffff) as u32)
}

/// A completion, copied out of the ring.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The request's token.
    pub token: u64,
    /// The result (bytes, or a negative errno).
    pub res: i32,
    /// The completion flags (IORING_CQE_F_*).
    pub flags: u32,
}

/// What went wrong in a worker's io_uring, for `x-query-stats`. Written by the worker
/// only (relaxed, single writer), read by anyone.
#[derive(Debug, Default)]
pub struct UringStats {
    /// `io_uring_enter` calls that failed with something other than EINTR/ETIME/EBUSY.
    pub enter_errors: AtomicU64,
    /// Times the submission queue was full and had to be flushed mid-breath.
    pub sq_full: AtomicU64,
    /// Requests that could not be queued at all (the kernel took none for a while);
    /// the backend got them back and counted its frames.
    pub sq_refused: AtomicU64,
    /// Times the kernel reported its completion queue overflowing (held back CQEs).
    pub cq_overflow: AtomicU64,
    /// Completions the kernel dropped (kernels without IORING_FEAT_NODROP).
    pub cq_dropped: AtomicU64,
    /// Multishot receives that ended because every lent buffer was in use.
    pub enobufs: AtomicU64,
    /// Completions that reported another error.
    pub op_errors: AtomicU64,
}

impl UringStats {
    #[inline]
    pub(crate) fn bump(c: &AtomicU64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
    }
}

/// The worker's ring.
pub struct Uring {
    // First field: closing the ring (the kernel lets go of every request and buffer
    // ring) happens before the ring memories below are freed.
    ring: IoUring,
    rings: Vec<Option<BufRing>>,
    deferred: bool,
    free_bgids: Vec<u16>,
    next_bgid: u16,
    /// Completions reaped while making room to submit, handed out by the next `reap`.
    backlog: Vec<Completion>,
}

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;
/// Flushes tried for one request before it is refused: the kernel takes what it can on
/// each, so more than a few means it is taking nothing.
const PUSH_TRIES: usize = 4;

impl Uring {
    /// Makes the ring on the calling (worker) thread.
    pub fn new() -> io::Result<Uring> {
        let fast = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .build(SQ_ENTRIES);
        let (ring, deferred) = match fast {
            Ok(r) => (r, true),
            Err(_) => (
                IoUring::builder()
                    .setup_cqsize(CQ_ENTRIES)
                    .build(SQ_ENTRIES)?,
                false,
            ),
        };
        Ok(Uring {
            ring,
            rings: Vec::new(),
            deferred,
            free_bgids: Vec::new(),
            next_bgid: 0,
            backlog: Vec::new(),
        })
    }

    /// Makes and registers a provided-buffer ring of `entries` buffers. `None` when the
    /// kernel refuses (the caller falls back to one request per buffer).
    pub fn rx_ring(&mut self, entries: u16) -> Option<RxRing> {
        let bgid = self.free_bgids.pop().unwrap_or_else(|| {
            self.next_bgid += 1;
            self.next_bgid
        });
        let Some(r) = BufRing::new(entries, bgid) else {
            self.free_bgids.push(bgid);
            return None;
        };
        // SAFETY: the memory is owned by `r`, which stays in `self.rings` until
        // `release_rx_ring` unregisters it, or until the io_uring itself is closed.
        let ok = unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(r.addr(), entries, bgid, 0)
        };
        if ok.is_err() {
            self.free_bgids.push(bgid);
            return None;
        }
        let slot = match self.rings.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                self.rings.push(None);
                self.rings.len() - 1
            }
        };
        self.rings[slot] = Some(r);
        Some(RxRing {
            slot,
            bgid,
            entries,
        })
    }

    fn ring_mut(&mut self, r: &RxRing) -> Option<&mut BufRing> {
        self.rings
            .get_mut(r.slot)
            .and_then(Option::as_mut)
            .filter(|b| b.bgid() == r.bgid)
    }

    /// Lends a packet's buffer through `r` (see [`BufRing`]); gives it back when it
    /// cannot.
    pub fn lend(
        &mut self,
        r: &RxRing,
        pool: &crate::pool::Pool,
        pkt: Pkt,
        lead: usize,
        len: u32,
    ) -> Result<(), Pkt> {
        match self.ring_mut(r) {
            Some(b) => b.lend(pool, pkt, lead, len),
            None => Err(pkt),
        }
    }

    /// Makes what was lent through `r` visible to the kernel.
    pub fn publish(&mut self, r: &RxRing) {
        if let Some(b) = self.ring_mut(r) {
            b.publish();
        }
    }

    /// The packet of buffer id `bid` of `r`, filled by the kernel.
    pub fn take(&mut self, r: &RxRing, bid: u16) -> Option<Pkt> {
        self.ring_mut(r)?.take(bid)
    }

    /// Buffers `r` lends now.
    pub fn lent(&mut self, r: &RxRing) -> usize {
        self.ring_mut(r).map_or(0, |b| b.lent())
    }

    /// Unregisters `r` and returns every buffer it still lent. Its owner calls it once
    /// no request of the group is in flight (the contract of the submission that used
    /// the group).
    pub fn release_rx_ring(&mut self, r: RxRing, cache: &mut BufCache) {
        let Some(mut b) = self.rings.get_mut(r.slot).and_then(Option::take) else {
            return;
        };
        let _ = self.ring.submitter().unregister_buf_ring(b.bgid());
        for p in b.drain() {
            cache.free(p);
        }
        self.free_bgids.push(b.bgid());
    }

    /// Whether completions are deferred to our own enter calls (DEFER_TASKRUN).
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// Queues a request; when the submission queue is full it is first flushed to the
    /// kernel (completions that are ready then are kept for the next `reap`). Gives
    /// `false` when the kernel takes nothing after a few flushes: the request was not
    /// queued, and the caller still owns everything it points to.
    ///
    /// # Safety
    /// Every buffer, iovec, msghdr and provided-buffer ring the entry points to must stay
    /// valid and untouched until its final completion has been reaped.
    #[must_use]
    pub unsafe fn push(&mut self, sqe: &squeue::Entry, stats: &UringStats) -> bool {
        for _ in 0..PUSH_TRIES {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return true;
            }
            UringStats::bump(&stats.sq_full);
            // Full: hand the queue to the kernel. EBUSY means the completion queue is
            // backed up: reap it into the backlog so the kernel can post again.
            self.enter(stats);
            Self::collect(&mut self.ring, &mut self.backlog);
        }
        UringStats::bump(&stats.sq_refused);
        false
    }

    /// Moves the completions the kernel posted into `out`.
    fn collect(ring: &mut IoUring, out: &mut Vec<Completion>) {
        out.extend(ring.completion().map(|c| Completion {
            token: c.user_data(),
            res: c.result(),
            flags: c.flags(),
        }));
    }

    fn enter(&mut self, stats: &UringStats) {
        match self.ring.submit() {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) => {}
            Err(_) => UringStats::bump(&stats.enter_errors),
        }
    }

    /// Submits what is queued and collects completed work without blocking. Makes a
    /// system call only when there is something to submit or the kernel has work for us.
    pub fn poll(&mut self, stats: &UringStats) {
        let pending = !self.ring.submission().is_empty();
        let (taskrun, overflow) = {
            let sq = self.ring.submission();
            (sq.taskrun(), sq.cq_overflow())
        };
        if overflow {
            UringStats::bump(&stats.cq_overflow);
        }
        if pending || taskrun || overflow || !self.deferred {
            self.enter(stats);
        }
    }

    /// Submits and sleeps until at least one completion arrives or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration, stats: &UringStats) {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            // ETIME (timeout), EINTR and EBUSY (completions to reap first) are normal.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(_) => UringStats::bump(&stats.enter_errors),
        }
    }

    /// Moves completions into `out` (appending); returns how many.
    pub fn reap(&mut self, out: &mut Vec<Completion>, stats: &UringStats) -> usize {
        let before = out.len();
        let dropped = u64::from(self.ring.completion().overflow());
        if dropped != stats.cq_dropped.load(Ordering::Relaxed) {
            stats.cq_dropped.store(dropped, Ordering::Relaxed);
        }
        // What a full submission queue made us reap first, then the rest, straight into
        // `out` (no copy through the backlog on the common path).
        out.append(&mut self.backlog);
        Self::collect(&mut self.ring, out);
        out.len() - before
    }

    /// Whether nothing is queued for submission.
    pub fn sq_empty(&mut self) -> bool {
        self.ring.submission().is_empty()
    }
}

/// What the kernel's io_uring can do, probed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Provided-buffer rings and multishot receive (Linux 6.0+).
    pub multishot_recv: bool,
}

/// Probes the kernel once (a throwaway ring and socket pair): the result is cached.
pub fn features() -> Features {
    static F: std::sync::OnceLock<Features> = std::sync::OnceLock::new();
    *F.get_or_init(|| Features {
        multishot_recv: probe_multishot().unwrap_or(false),
    })
}

fn probe_multishot() -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
    let pool = std::sync::Arc::new(crate::pool::Pool::new(4, 64).map_err(io::Error::other)?);
    let mut cache = pool.cache();
    let stats = UringStats::default();
    let mut u = Uring::new()?;
    let Some(r) = u.rx_ring(4) else {
        return Ok(false);
    };
    for _ in 0..4 {
        if let Some(p) = cache.alloc() {
            if let Err(p) = u.lend(&r, &pool, p, 0, 32) {
                cache.free(p);
            }
        }
    }
    u.publish(&r);
    let sqe = io_uring::opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), r.bgid())
        .build()
        .user_data(1);
    // SAFETY: the request writes only into the ring's lent buffers, which stay lent
    // until the ring is released below, after the request was cancelled and reaped.
    if !unsafe { u.push(&sqe, &stats) } {
        u.release_rx_ring(r, &mut cache);
        return Ok(false);
    }
    b.send(&[0u8; 16])?;
    let mut out = Vec::new();
    let mut ok = false;
    for _ in 0..50 {
        u.wait(Duration::from_millis(10), &stats);
        u.reap(&mut out, &stats);
        if let Some(c) = out.iter().find(|c| c.token == 1) {
            ok = c.res == 16 && io_uring::cqueue::more(c.flags);
            break;
        }
    }
    // End the request before the ring goes: cancel and wait for its last completion.
    let cancel = io_uring::opcode::AsyncCancel::new(1).build().user_data(2);
    // SAFETY: a cancel points to no memory.
    let _ = unsafe { u.push(&cancel, &stats) };
    let mut ended = !ok;
    for _ in 0..50 {
        if ended {
            break;
        }
        u.wait(Duration::from_millis(10), &stats);
        out.clear();
        u.reap(&mut out, &stats);
        ended = out
            .iter()
            .any(|c| c.token == 1 && !io_uring::cqueue::more(c.flags));
    }
    if ended {
        for p in (0..4).filter_map(|bid| u.take(&r, bid)) {
            cache.free(p);
        }
        u.release_rx_ring(r, &mut cache);
    }
    // Not ended: the ring stays registered and lent until `u` closes, then is freed.
    Ok(ok && ended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (s, o, t) in [(0, 0, 0), (7, 3, 0x00ff_ffff), (WORKER_SLOT, 255, 12345)] {
            assert_eq!(untoken(token(s, o, t)), (s, o, t));
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "io_uring system calls, which Miri cannot run")]
    fn nop_completes_with_its_token() {
        let mut u = Uring::new().unwrap();
        let e = io_uring::opcode::Nop::new()
            .build()
            .user_data(token(3, 1, 99));
        let stats = UringStats::default();
        // SAFETY: a nop references no memory.
        assert!(unsafe { u.push(&e, &stats) });
        let mut out = Vec::new();
        for _ in 0..100 {
            u.poll(&stats);
            if u.reap(&mut out, &stats) > 0 {
                break;
            }
            u.wait(Duration::from_millis(10), &stats);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(untoken(out[0].token), (3, 1, 99));
        assert_eq!(out[0].res, 0);
    }

    #[test]
    #[cfg_attr(miri, ignore = "io_uring system calls, which Miri cannot run")]
    fn a_full_queue_is_flushed_not_spun_on() {
        let mut u = Uring::new().unwrap();
        let stats = UringStats::default();
        let n = SQ_ENTRIES as usize * 3;
        for i in 0..n {
            let e = io_uring::opcode::Nop::new().build().user_data(i as u64);
            // SAFETY: a nop references no memory.
            assert!(unsafe { u.push(&e, &stats) });
        }
        assert!(stats.sq_full.load(Ordering::Relaxed) >= 2);
        let mut out = Vec::new();
        for _ in 0..100 {
            u.poll(&stats);
            u.reap(&mut out, &stats);
            if out.len() == n {
                break;
            }
            u.wait(Duration::from_millis(5), &stats);
        }
        assert_eq!(
            out.len(),
            n,
            "every completion, including those reaped while pushing"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "io_uring system calls, which Miri cannot run")]
    fn multishot_probe_answers() {
        // Linux 6.0+ (this project's CI kernels) has it; the probe must say so, and
        // must not leave anything behind when asked twice.
        assert!(features().multishot_recv);
        assert!(probe_multishot().unwrap());
    }
}
