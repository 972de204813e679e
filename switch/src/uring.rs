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
use std::time::Duration;

use io_uring::{squeue, types, IoUring};

use crate::bufring::BufRing;

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

/// The worker's ring.
pub struct Uring {
    ring: IoUring,
    deferred: bool,
    free_bgids: Vec<u16>,
    next_bgid: u16,
}

const SQ_ENTRIES: u32 = 1024;
const CQ_ENTRIES: u32 = 8192;

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
            deferred,
            free_bgids: Vec::new(),
            next_bgid: 0,
        })
    }

    /// Makes and registers a provided-buffer ring of `entries` buffers. `None` when the
    /// kernel refuses (the caller falls back to one request per buffer).
    pub fn buf_ring(&mut self, entries: u16) -> Option<BufRing> {
        let bgid = self.free_bgids.pop().unwrap_or_else(|| {
            self.next_bgid += 1;
            self.next_bgid
        });
        let r = BufRing::new(entries, bgid)?;
        // SAFETY: the memory is owned by `r`, which the caller keeps until it hands it
        // back to `drop_buf_ring` (after which the kernel no longer reads it).
        let ok = unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(r.addr(), entries, bgid, 0)
        };
        match ok {
            Ok(()) => Some(r),
            Err(_) => {
                self.free_bgids.push(bgid);
                None
            }
        }
    }

    /// Unregisters a buffer ring; call once no request uses its group any more.
    pub fn drop_buf_ring(&mut self, r: BufRing) {
        let _ = self.ring.submitter().unregister_buf_ring(r.bgid());
        self.free_bgids.push(r.bgid());
        drop(r);
    }

    /// Whether completions are deferred to our own enter calls (DEFER_TASKRUN).
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// Queues a request; when the submission queue is full it is first flushed to the
    /// kernel.
    ///
    /// # Safety
    /// Every buffer, iovec and msghdr the entry points to must stay valid and untouched
    /// until its completion has been reaped.
    pub unsafe fn push(&mut self, sqe: &squeue::Entry) {
        loop {
            // SAFETY: forwarded from the caller's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return;
            }
            // The queue is full: hand it to the kernel and retry. EBUSY means the
            // completion queue is backed up; the kernel still takes what it can.
            let _ = self.ring.submit();
        }
    }

    /// Submits what is queued and collects completed work without blocking. Makes a
    /// system call only when there is something to submit or the kernel has work for us.
    pub fn poll(&mut self) {
        let pending = !self.ring.submission().is_empty();
        let kernel_work = {
            let sq = self.ring.submission();
            sq.taskrun() || sq.cq_overflow()
        };
        if pending || kernel_work || !self.deferred {
            let _ = self.ring.submit();
        }
    }

    /// Submits and sleeps until at least one completion arrives or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        // ETIME (timeout) and EINTR are normal ways to wake.
        let _ = self.ring.submitter().submit_with_args(1, &args);
    }

    /// Moves completions into `out` (appending); returns how many.
    pub fn reap(&mut self, out: &mut Vec<Completion>) -> usize {
        let cq = self.ring.completion();
        let before = out.len();
        out.extend(cq.map(|c| Completion {
            token: c.user_data(),
            res: c.result(),
            flags: c.flags(),
        }));
        out.len() - before
    }

    /// Whether nothing is queued for submission.
    pub fn sq_empty(&mut self) -> bool {
        self.ring.submission().is_empty()
    }
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
    fn nop_completes_with_its_token() {
        let mut u = Uring::new().unwrap();
        let e = io_uring::opcode::Nop::new()
            .build()
            .user_data(token(3, 1, 99));
        // SAFETY: a nop references no memory.
        unsafe { u.push(&e) };
        let mut out = Vec::new();
        for _ in 0..100 {
            u.poll();
            if u.reap(&mut out) > 0 {
                break;
            }
            u.wait(Duration::from_millis(10));
        }
        assert_eq!(out.len(), 1);
        assert_eq!(untoken(out[0].token), (3, 1, 99));
        assert_eq!(out[0].res, 0);
    }
}
