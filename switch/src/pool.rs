//! The packet buffer pool: one preallocated memory region carved into fixed-size buffers.
//!
//! ```text
//!  region (memmap2, huge pages when the host has them)
//!  ┌──────────┬──────────┬──────────┬─────┐
//!  │ buf 0    │ buf 1    │ buf 2    │ ... │   each `buf_size` bytes
//!  └──────────┴──────────┴──────────┴─────┘
//!   ▲ HEADROOM ▲ frame bytes ...
//!  free list: lock-free MPMC queue of buffer indices
//!  refcnt:    one atomic per buffer (flooding shares a buffer instead of copying it)
//! ```
//!
//! A [`Pkt`] is the handle of one reference to a buffer: index, data offset and length.
//! It is deliberately not `Clone`: a second reference is made with [`Pool::share`], and
//! every reference goes back exactly once through [`Pool::free`]. The buffer returns to
//! the free list when its last reference is freed. A shared buffer is read-only: backends
//! that need a header in front of a frame (a length prefix, a virtio-net header) send it
//! from a separate iovec instead of writing into the shared headroom.
#![allow(unsafe_code)]

use std::sync::atomic::{fence, AtomicU32, Ordering};

use crossbeam_queue::ArrayQueue;
use memmap2::{MmapMut, MmapOptions};

use crate::error::SwitchError;

/// Bytes kept free in front of every frame, for protocols whose header backends build
/// in place on buffers they own exclusively (and for alignment).
pub const HEADROOM: usize = 64;

/// Smallest frame the switch carries: an Ethernet header.
pub const MIN_FRAME: usize = 14;

/// The largest maximum frame size the switch accepts (QEMU passes up to 65535).
pub const MAX_FRAME_LIMIT: usize = 65535;

/// Default maximum frame size: jumbo frames up to 9216 bytes pass unchanged.
pub const DEFAULT_MAX_FRAME: usize = 9216;

/// One reference to a packet buffer. See the module documentation for ownership.
#[must_use = "a packet must be sent or returned to the pool"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pkt {
    idx: u32,
    off: u32,
    len: u32,
}

impl Pkt {
    /// Index of the buffer in the pool.
    pub fn index(&self) -> u32 {
        self.idx
    }
    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }
    /// Whether the frame is empty (never true for a frame the switch forwards).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Offset of the frame from the start of the buffer.
    pub fn offset(&self) -> usize {
        self.off as usize
    }
    /// Sets where the frame lies in the buffer; the caller keeps it inside the buffer
    /// (checked by [`Pool::bytes`] on use, never out of bounds).
    pub fn set_span(&mut self, off: usize, len: usize) {
        self.off = off as u32;
        self.len = len as u32;
    }
}

/// Whether the region is backed by huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 2 MiB huge pages (MAP_HUGETLB).
    Huge,
    /// Ordinary pages.
    Normal,
}

/// The buffer pool shared by all workers.
pub struct Pool {
    _region: MmapMut,
    base: *mut u8,
    buf_size: usize,
    count: u32,
    max_frame: usize,
    pages: PageKind,
    free: ArrayQueue<u32>,
    refcnt: Box<[AtomicU32]>,
}

// SAFETY: the region is only reached through `base`; a buffer's bytes are written only by
// the single owner of its one reference (or by the kernel on that owner's behalf), and read
// while shared. The free list and reference counts are atomics. The mapping itself is never
// touched after construction except to be dropped.
unsafe impl Send for Pool {}
// SAFETY: as above; all shared mutable state is atomic.
unsafe impl Sync for Pool {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("count", &self.count)
            .field("buf_size", &self.buf_size)
            .field("free", &self.free.len())
            .field("pages", &self.pages)
            .finish()
    }
}

const HUGE_PAGE: usize = 2 << 20;

impl Pool {
    /// Creates a pool of `count` buffers, each large enough for a frame of `max_frame` bytes
    /// plus one byte (so an over-size frame is seen as such instead of being truncated)
    /// plus [`HEADROOM`]. Huge pages are used when the host has enough of them.
    pub fn new(count: u32, max_frame: usize) -> Result<Pool, SwitchError> {
        if count == 0 || count > (1 << 24) {
            return Err(SwitchError::PoolSize(count));
        }
        if !(MIN_FRAME..=MAX_FRAME_LIMIT).contains(&max_frame) {
            return Err(SwitchError::MaxFrame(max_frame));
        }
        let buf_size = (HEADROOM + max_frame + 1).next_multiple_of(64);
        let bytes = buf_size
            .checked_mul(count as usize)
            .ok_or(SwitchError::PoolSize(count))?;
        let huge_bytes = bytes.next_multiple_of(HUGE_PAGE);
        let (mut region, pages) = match MmapOptions::new()
            .len(huge_bytes)
            .huge(Some(21))
            .populate()
            .map_anon()
        {
            Ok(m) => (m, PageKind::Huge),
            Err(_) => (
                MmapOptions::new()
                    .len(bytes)
                    .map_anon()
                    .map_err(SwitchError::PoolMap)?,
                PageKind::Normal,
            ),
        };
        let free = ArrayQueue::new(count as usize);
        for i in 0..count {
            // Cannot fail: the queue holds exactly `count` entries.
            let _ = free.push(i);
        }
        let refcnt = (0..count).map(|_| AtomicU32::new(0)).collect();
        // The mapping does not move when `region` does; the pointer stays valid for the
        // life of the pool, which owns the mapping.
        let base = region.as_mut_ptr();
        Ok(Pool {
            _region: region,
            base,
            buf_size,
            count,
            max_frame,
            pages,
            free,
            refcnt,
        })
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Number of buffers currently free.
    pub fn free_count(&self) -> u32 {
        self.free.len() as u32
    }
    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }
    /// Largest frame the switch forwards; longer frames are dropped and counted.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }
    /// What backs the region.
    pub fn pages(&self) -> PageKind {
        self.pages
    }
    /// Takes a free buffer; the packet starts at [`HEADROOM`] with length 0.
    pub fn alloc(&self) -> Option<Pkt> {
        let idx = self.free.pop()?;
        // Relaxed: the buffer was unreachable; the queue's pop already synchronised with
        // the push that freed it.
        self.refcnt[idx as usize].store(1, Ordering::Relaxed);
        Some(Pkt {
            idx,
            off: HEADROOM as u32,
            len: 0,
        })
    }

    /// Makes another reference to the same frame (flooding without copying).
    pub fn share(&self, p: &Pkt) -> Pkt {
        // Relaxed: the caller holds a reference, so the count cannot reach zero meanwhile
        // (the same argument as Arc::clone).
        self.refcnt[p.idx as usize].fetch_add(1, Ordering::Relaxed);
        Pkt {
            idx: p.idx,
            off: p.off,
            len: p.len,
        }
    }

    /// Adds `n` references at once and returns nothing: the caller builds the `n` handles
    /// with [`Pool::share_unaccounted`]. Used by the flooding loop to pay one atomic per
    /// frame instead of one per destination.
    pub fn add_refs(&self, p: &Pkt, n: u32) {
        if n > 0 {
            // Relaxed: as in `share`.
            self.refcnt[p.idx as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A handle for a reference already counted with [`Pool::add_refs`].
    pub fn share_unaccounted(&self, p: &Pkt) -> Pkt {
        Pkt {
            idx: p.idx,
            off: p.off,
            len: p.len,
        }
    }

    /// Returns one reference; the buffer is free again once its last reference returns.
    pub fn free(&self, p: Pkt) {
        let rc = &self.refcnt[p.idx as usize];
        // Release: our reads/writes of the buffer happen before its reuse. The last owner
        // pairs with it through the Acquire fence below.
        if rc.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            // Cannot fail: at most `count` indices exist.
            let _ = self.free.push(p.idx);
        }
    }

    /// Number of references to a buffer (for assertions and tests).
    pub fn refs(&self, p: &Pkt) -> u32 {
        self.refcnt[p.idx as usize].load(Ordering::Relaxed)
    }

    fn span_ok(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.buf_size)
    }

    /// The frame bytes of a packet. A packet whose span is outside its buffer (a backend
    /// bug) reads as empty rather than out of bounds.
    pub fn bytes(&self, p: &Pkt) -> &[u8] {
        let (off, len) = (p.off as usize, p.len as usize);
        if p.idx >= self.count || !self.span_ok(off, len) {
            return &[];
        }
        // SAFETY: the span is inside buffer `idx` (checked above) which lies inside the
        // region. The caller holds a reference, so the buffer is not reused meanwhile, and
        // nobody writes a buffer that has more than one reference (module rule).
        unsafe {
            std::slice::from_raw_parts(self.base.add(p.idx as usize * self.buf_size + off), len)
        }
    }

    /// The whole buffer of an exclusively owned packet, for filling it.
    // The exclusivity comes from `&mut Pkt`, the only handle of the buffer, not from the
    // pool, which many threads share.
    #[allow(clippy::mut_from_ref)]
    pub fn buf_mut(&self, p: &mut Pkt) -> &mut [u8] {
        debug_assert_eq!(self.refs(p), 1, "writing a shared buffer");
        // SAFETY: `p` is the only reference (one handle, refcount 1), and `&mut Pkt`
        // prevents two simultaneous borrows through it; the span is the whole buffer.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.add(p.idx as usize * self.buf_size),
                self.buf_size,
            )
        }
    }

    /// Start of a buffer, for handing it to the kernel. The caller must own the only
    /// reference and keep it until the kernel is done with the memory.
    pub fn buf_ptr(&self, p: &Pkt) -> *mut u8 {
        // SAFETY: idx < count, so the offset stays inside the region.
        unsafe {
            self.base
                .add(p.idx.min(self.count - 1) as usize * self.buf_size)
        }
    }

    /// Copies `data` into a new packet. Returns `None` when the pool is empty or the data
    /// does not fit the buffer.
    pub fn alloc_copy(&self, data: &[u8]) -> Option<Pkt> {
        if data.len() > self.buf_size - HEADROOM {
            return None;
        }
        let mut p = self.alloc()?;
        self.buf_mut(&mut p)[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        p.set_span(HEADROOM, data.len());
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_returns_every_buffer() {
        let pool = Pool::new(8, 1514).unwrap();
        let mut held: Vec<Pkt> = (0..8).map(|_| pool.alloc().unwrap()).collect();
        assert!(pool.alloc().is_none());
        assert_eq!(pool.free_count(), 0);
        for p in held.drain(..) {
            pool.free(p);
        }
        assert_eq!(pool.free_count(), 8);
    }

    #[test]
    fn shared_buffer_returns_after_last_reference() {
        let pool = Pool::new(2, 1514).unwrap();
        let p = pool.alloc_copy(&[1, 2, 3]).unwrap();
        let q = pool.share(&p);
        pool.add_refs(&p, 2);
        let r = pool.share_unaccounted(&p);
        let s = pool.share_unaccounted(&p);
        assert_eq!(pool.refs(&p), 4);
        assert_eq!(pool.bytes(&s), &[1, 2, 3]);
        for x in [p, q, r] {
            pool.free(x);
        }
        assert_eq!(pool.free_count(), 1);
        pool.free(s);
        assert_eq!(pool.free_count(), 2);
    }

    #[test]
    fn bad_span_reads_empty() {
        let pool = Pool::new(1, 64).unwrap();
        let mut p = pool.alloc().unwrap();
        p.set_span(pool.buf_size() - 2, 10);
        assert!(pool.bytes(&p).is_empty());
        pool.free(p);
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(Pool::new(0, 1514), Err(SwitchError::PoolSize(0))));
        assert!(matches!(Pool::new(4, 70000), Err(SwitchError::MaxFrame(_))));
        let pool = Pool::new(4, 9216).unwrap();
        assert!(pool.buf_size() >= HEADROOM + 9217);
        assert!(pool.alloc_copy(&vec![0u8; 9217]).is_some());
    }
}
