//! The packet buffer pool: one preallocated shared-memory region carved into fixed-size
//! buffers, handles that own them, and the per-worker caches that hand them out.
//!
//! ```text
//!  region: memfd (huge pages when the host has them), mapped shared, fixed for the
//!  pool's life — a memif or vhost-user peer can be given the descriptor
//!  ┌──────────┬──────────┬──────────┬─────┐
//!  │ buf 0    │ buf 1    │ buf 2    │ ... │   each `buf_size` bytes
//!  └──────────┴──────────┴──────────┴─────┘
//!   ▲ HEADROOM ▲ frame bytes ...
//!
//!  free buffers:  worker ── BufCache (two magazines of MAG indices, no atomics)
//!                              │ full / empty magazine, one queue op per MAG buffers
//!                 depot ───────┴── lock-free queue of magazines
//!                 loose ────────── frees from threads without a cache
//!  refcnt: one atomic per buffer, touched only for frames with several owners
//! ```
//!
//! A [`Pkt`] is the handle of one reference to a buffer. It is not `Clone`, its fields are
//! private, and it carries the tag of the pool that made it, so safe code can neither
//! forge one nor use one with the wrong pool. A freshly allocated handle is *exclusive*:
//! it is the buffer's only reference and no atomic counts it. [`Pool::fanout`] turns one
//! handle into several *shared* ones, counted in `refcnt`. Bytes are reached by borrowing
//! the handle: [`Pool::bytes`] reads through `&Pkt`, [`Pool::bytes_mut`] writes through
//! `&mut Pkt` and only while the handle is the sole owner, so no two `&mut` to one buffer
//! and no read after free can be written in safe code. Every handle goes back exactly once
//! ([`Pool::free`] or [`BufCache::free`]), which consumes it; a handle that is dropped
//! instead leaks its buffer (visible in [`Pool::free_count`]) but never corrupts one.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;

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

/// Length of `struct virtio_net_hdr`, the offload metadata of a frame marked
/// [`Pkt::offload`].
pub const VNET_HDR_LEN: usize = 10;

/// Largest frame a GSO buffer holds: a 64 KiB super-frame (the kernel's GSO limit for
/// a tap) with its Ethernet and VLAN headers.
pub const GSO_FRAME: usize = 65536 + 64;

/// Default number of GSO buffers (`-gso-buffers`).
pub const DEFAULT_GSO_BUFFERS: u32 = 256;

/// Buffers in one magazine: the unit moved between a worker's cache and the depot.
pub const MAG: usize = 64;

/// Most free buffers one [`BufCache`] keeps to itself (two magazines).
pub const CACHE_MAX: u32 = 2 * MAG as u32;

/// One reference to a packet buffer. See the module documentation for ownership.
#[must_use = "a packet must be sent or returned to the pool"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pkt {
    idx: u32,
    off: u32,
    len: u32,
    pool: u16,
    shared: bool,
    offload: bool,
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
    /// Whether other handles to the same buffer may exist.
    pub fn is_shared(&self) -> bool {
        self.shared
    }
    /// Whether a virtio-net header ([`VNET_HDR_LEN`] bytes, right in front of the frame
    /// in its buffer) says what the frame still needs: a GSO super-frame to be cut, a
    /// checksum to be finished (see [`crate::wire::gso`]). Only ports that take offloads
    /// ([`crate::Backend::offloads`]) are given such a frame; the forwarder cuts or
    /// finishes it for the others.
    pub fn offload(&self) -> bool {
        self.offload
    }
    /// Marks (or unmarks) the bytes in front of the frame as its virtio-net header.
    /// The frame's offset must leave room for it ([`HEADROOM`] does).
    pub fn set_offload(&mut self, on: bool) {
        self.offload = on && self.off as usize >= VNET_HDR_LEN;
    }
    /// Sets where the frame lies in the buffer. A span outside the buffer is not an
    /// error here; it reads as empty (see [`Pool::bytes`]), so it can never reach
    /// outside the buffer.
    pub fn set_span(&mut self, off: usize, len: usize) {
        self.off = u32::try_from(off).unwrap_or(u32::MAX);
        self.len = u32::try_from(len).unwrap_or(u32::MAX);
    }
}

/// What backs the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 2 MiB huge pages (a hugetlb memfd).
    Huge,
    /// Ordinary pages (a memfd).
    Normal,
    /// Private heap memory (Miri, where no memfd exists): no peer can map it.
    Heap,
}

impl PageKind {
    /// The name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            PageKind::Huge => "huge (2 MiB)",
            PageKind::Normal => "normal",
            PageKind::Heap => "private heap",
        }
    }
}

enum Region {
    Shared {
        map: memmap2::MmapMut,
        fd: OwnedFd,
    },
    #[cfg_attr(not(miri), allow(dead_code))]
    Heap {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    },
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Heap { ptr, layout } = self {
            // SAFETY: allocated in `Region::new` (the Miri build) with this layout, freed
            // once here.
            unsafe { std::alloc::dealloc(*ptr, *layout) };
        }
    }
}

const HUGE_PAGE: usize = 2 << 20;

impl Region {
    /// A memfd of `bytes`, huge pages first.
    #[cfg(not(miri))]
    fn new(bytes: usize) -> Result<(Region, PageKind), SwitchError> {
        let huge = bytes.next_multiple_of(HUGE_PAGE);
        let flags = libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
        if let Ok(r) = Region::memfd(huge, flags, true) {
            return Ok((r, PageKind::Huge));
        }
        let r = Region::memfd(bytes, libc::MFD_CLOEXEC, false).map_err(SwitchError::PoolMap)?;
        Ok((r, PageKind::Normal))
    }

    #[cfg(miri)]
    fn new(bytes: usize) -> Result<(Region, PageKind), SwitchError> {
        let layout = std::alloc::Layout::from_size_align(bytes, 4096)
            .map_err(|_| SwitchError::PoolMap(std::io::Error::other("layout")))?;
        // SAFETY: the layout has a non-zero size (count >= 1, buf_size >= 64).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(SwitchError::PoolMap(std::io::Error::other("out of memory")));
        }
        Ok((Region::Heap { ptr, layout }, PageKind::Heap))
    }

    #[cfg(not(miri))]
    fn memfd(bytes: usize, flags: libc::c_uint, populate: bool) -> std::io::Result<Region> {
        // SAFETY: the name is a NUL-terminated static string; a negative return is checked.
        let raw = unsafe { libc::memfd_create(c"pollswitch-pool".as_ptr(), flags) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(bytes as u64)?;
        let mut opts = memmap2::MmapOptions::new();
        opts.len(bytes);
        if populate {
            // Huge pages are reserved at mmap time; populating faults them all in now,
            // so a host short of them fails here rather than with SIGBUS later.
            opts.populate();
        }
        // SAFETY: the file is ours alone (an anonymous memfd nobody else has yet) and is
        // never truncated while mapped; the mapping is shared so a peer given the
        // descriptor sees the same bytes.
        let map = unsafe { opts.map_mut(&file) }?;
        Ok(Region::Shared {
            map,
            fd: file.into(),
        })
    }

    fn base(&mut self) -> *mut u8 {
        match self {
            Region::Shared { map, .. } => map.as_mut_ptr(),
            Region::Heap { ptr, .. } => *ptr,
        }
    }
}

/// The GSO class: a few buffers of [`GSO_FRAME`] bytes, in a region of their own that
/// no peer is given. Their handles have indices from the pool's `count` up. They are
/// not cached per worker: a super-frame costs a system call and tens of microseconds of
/// copying anyway, so one lock-free pop per buffer is noise.
struct Big {
    /// Owns the mapping `base` points into (unmapped when the pool drops).
    _region: Option<Region>,
    base: *mut u8,
    size: usize,
    count: u32,
    free: ArrayQueue<u32>,
}

impl Big {
    fn new(first: u32, count: u32) -> Result<Big, SwitchError> {
        let size = (HEADROOM + GSO_FRAME + 1).next_multiple_of(4096);
        let free = ArrayQueue::new(count.max(1) as usize);
        if count == 0 {
            return Ok(Big {
                _region: None,
                base: std::ptr::null_mut(),
                size,
                count,
                free,
            });
        }
        let (mut region, _) = Region::new(size * count as usize)?;
        let base = region.base();
        for i in 0..count {
            // Cannot fail: the queue has room for every buffer.
            let _ = free.push(first + i);
        }
        Ok(Big {
            _region: Some(region),
            base,
            size,
            count,
            free,
        })
    }
}

/// A worker cache's published number of free buffers, read by [`Pool::free_count`].
#[derive(Debug, Default)]
#[repr(align(128))]
struct CacheStat {
    free: AtomicU32,
}

/// Tags of live pools, so a handle of one pool is refused by another.
static NEXT_TAG: AtomicU16 = AtomicU16::new(1);

/// The buffer pool shared by all workers.
pub struct Pool {
    region: Region,
    base: *mut u8,
    buf_size: usize,
    count: u32,
    max_frame: usize,
    pages: PageKind,
    tag: u16,
    depot: ArrayQueue<Vec<u32>>,
    depot_bufs: AtomicUsize,
    empties: ArrayQueue<Vec<u32>>,
    loose: ArrayQueue<u32>,
    refcnt: Box<[AtomicU32]>,
    big: Big,
    caches: Mutex<Vec<Arc<CacheStat>>>,
    reserved: AtomicU64,
    misuse: AtomicU64,
}

// SAFETY: the region is reached only through `base`; a buffer's bytes are written only
// through an exclusive handle (or by the kernel on its owner's behalf, under the contract
// of an unsafe submission), and read through handles, which keep the buffer allocated.
// The free lists, reference counts and statistics are atomics or lock-free queues. The
// mapping is never changed after construction except to be dropped.
unsafe impl Send for Pool {}
// SAFETY: as above; all shared mutable state is atomic.
unsafe impl Sync for Pool {}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("count", &self.count)
            .field("buf_size", &self.buf_size)
            .field("free", &self.free_count())
            .field("pages", &self.pages)
            .finish()
    }
}

impl Pool {
    /// Creates a pool of `count` buffers, each large enough for a frame of `max_frame` bytes
    /// plus one byte (so an over-size frame is seen as such instead of being truncated)
    /// plus [`HEADROOM`]. Huge pages are used when the host has enough of them.
    pub fn new(count: u32, max_frame: usize) -> Result<Pool, SwitchError> {
        Pool::with_gso(count, max_frame, 0)
    }

    /// As [`Pool::new`], with `gso` buffers of [`GSO_FRAME`] bytes besides (0: none, and
    /// no port takes offloads).
    pub fn with_gso(count: u32, max_frame: usize, gso: u32) -> Result<Pool, SwitchError> {
        if count == 0 || count > (1 << 24) || gso > (1 << 16) {
            return Err(SwitchError::PoolSize(count));
        }
        if !(MIN_FRAME..=MAX_FRAME_LIMIT).contains(&max_frame) {
            return Err(SwitchError::MaxFrame(max_frame));
        }
        let buf_size = (HEADROOM + max_frame + 1).next_multiple_of(64);
        let bytes = buf_size
            .checked_mul(count as usize)
            .ok_or(SwitchError::PoolSize(count))?;
        let (mut region, pages) = Region::new(bytes)?;
        let base = region.base();
        let mags = (count as usize).div_ceil(MAG);
        // Room for every magazine there can be: the initial ones plus partial ones that
        // caches give back when flushed (a push that still fails spills to `loose`).
        let depot = ArrayQueue::new(mags + 64);
        let empties = ArrayQueue::new(mags + 64);
        let mut next = 0u32;
        while next < count {
            let end = (next + MAG as u32).min(count);
            let mut m = Vec::with_capacity(MAG);
            m.extend((next..end).rev());
            next = end;
            // Cannot fail: the depot has room for `mags` magazines.
            let _ = depot.push(m);
        }
        let big = Big::new(count, gso)?;
        let tag = NEXT_TAG.fetch_add(1, Ordering::Relaxed).max(1);
        Ok(Pool {
            region,
            base,
            buf_size,
            count,
            max_frame,
            pages,
            tag,
            depot,
            depot_bufs: AtomicUsize::new(count as usize),
            empties,
            loose: ArrayQueue::new(count as usize),
            refcnt: (0..count + gso).map(|_| AtomicU32::new(0)).collect(),
            big,
            caches: Mutex::new(Vec::new()),
            reserved: AtomicU64::new(0),
            misuse: AtomicU64::new(0),
        })
    }

    /// Number of buffers in the pool.
    pub fn count(&self) -> u32 {
        self.count
    }
    /// Number of buffers currently free (in the depot, loose, or in a worker's cache).
    /// Exact when no worker is moving buffers; a few magazines off while traffic flows.
    pub fn free_count(&self) -> u32 {
        let caches: u64 = self
            .caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|c| u64::from(c.free.load(Ordering::Relaxed)))
            .sum();
        let n = self.loose.len() as u64 + self.depot_bufs.load(Ordering::Relaxed) as u64 + caches;
        n.min(u64::from(self.count)) as u32
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
    /// The region's descriptor, for giving the pool to a peer (memif, vhost-user):
    /// `None` when it is private heap memory. Buffer `i` starts at `i * buf_size`.
    pub fn region_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.region {
            Region::Shared { fd, .. } => Some(fd.as_fd()),
            Region::Heap { .. } => None,
        }
    }
    /// Bytes of the region (at least `count * buf_size`).
    pub fn region_len(&self) -> usize {
        match &self.region {
            Region::Shared { map, .. } => map.len(),
            Region::Heap { layout, .. } => layout.size(),
        }
    }
    /// Handles given to the wrong pool or with a bad index, which were refused (a bug
    /// in a caller; the buffer involved is leaked rather than corrupted).
    pub fn misuse_count(&self) -> u64 {
        self.misuse.load(Ordering::Relaxed)
    }

    /// Buffers spoken for by [`Pool::reserve`].
    pub fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Relaxed)
    }

    /// Speaks for `n` buffers, which the caller promises to hold at most: refused when
    /// the pool cannot also serve everything already spoken for. The ledger is the
    /// control plane's admission check; nothing on the packet path reads it.
    pub fn reserve(&self, n: u64) -> Result<(), SwitchError> {
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            let next = cur.saturating_add(n);
            if next > u64::from(self.count) {
                return Err(SwitchError::PoolSpokenFor {
                    need: n,
                    reserved: cur,
                    count: self.count,
                });
            }
            match self.reserved.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => cur = v,
            }
        }
    }

    /// Gives back what [`Pool::reserve`] spoke for.
    pub fn unreserve(&self, n: u64) {
        let _ = self
            .reserved
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    fn handle(&self, idx: u32) -> Pkt {
        Pkt {
            idx,
            off: HEADROOM as u32,
            len: 0,
            pool: self.tag,
            shared: false,
            offload: false,
        }
    }

    /// Whether `p` is a live-looking handle of this pool.
    #[inline]
    fn mine(&self, p: &Pkt) -> bool {
        p.pool == self.tag && p.idx < self.count + self.big.count
    }

    /// Where buffer `idx` (a valid index) starts, and its size.
    #[inline]
    fn buffer(&self, idx: u32) -> (*mut u8, usize) {
        if idx < self.count {
            // SAFETY: idx < count, so the offset stays inside the region.
            (
                unsafe { self.base.add(idx as usize * self.buf_size) },
                self.buf_size,
            )
        } else {
            let j = (idx - self.count) as usize;
            // SAFETY: idx < count + big.count (callers checked `mine`), so buffer j lies
            // inside the GSO region, which is big.count * big.size bytes.
            (
                unsafe { self.big.base.add(j * self.big.size) },
                self.big.size,
            )
        }
    }

    /// Whether `p` is a GSO buffer (see [`Pool::alloc_gso`]).
    #[inline]
    pub fn is_gso(&self, p: &Pkt) -> bool {
        p.idx >= self.count
    }

    /// Size of the buffer behind `p`: [`Pool::buf_size`] or [`Pool::gso_buf_size`] (0
    /// for a handle of another pool).
    #[inline]
    pub fn capacity(&self, p: &Pkt) -> usize {
        match self.mine(p) {
            true => self.buffer(p.idx).1,
            false => 0,
        }
    }

    /// Number of GSO buffers ([`GSO_FRAME`] bytes each); 0 when offloads are off.
    pub fn gso_count(&self) -> u32 {
        self.big.count
    }

    /// GSO buffers free now.
    pub fn gso_free_count(&self) -> u32 {
        self.big.free.len() as u32
    }

    /// Size of a GSO buffer in bytes (0 when there are none).
    pub fn gso_buf_size(&self) -> usize {
        if self.big.count == 0 {
            0
        } else {
            self.big.size
        }
    }

    /// Takes a free GSO buffer, for a frame that may be up to [`GSO_FRAME`] bytes; the
    /// packet starts at [`HEADROOM`] with length 0. Freed like any other.
    pub fn alloc_gso(&self) -> Option<Pkt> {
        self.big.free.pop().map(|i| self.handle(i))
    }

    /// Puts a buffer whose last reference is gone back where its class keeps them;
    /// false for an ordinary buffer (the caller keeps it).
    #[inline]
    fn return_gso(&self, idx: u32) -> bool {
        if idx < self.count {
            return false;
        }
        // Cannot fail: the queue has room for every GSO buffer.
        let _ = self.big.free.push(idx);
        true
    }

    /// Takes a free buffer without a cache (control thread, tests); the packet starts at
    /// [`HEADROOM`] with length 0. Workers use their [`BufCache`].
    pub fn alloc(&self) -> Option<Pkt> {
        if let Some(idx) = self.loose.pop() {
            return Some(self.handle(idx));
        }
        let mut m = self.depot.pop()?;
        self.depot_bufs.fetch_sub(m.len(), Ordering::Relaxed);
        let idx = m.pop();
        self.put_magazine(m);
        idx.map(|i| self.handle(i))
    }

    /// Returns a magazine to the depot (or, when empty, to the spare magazines).
    fn put_magazine(&self, m: Vec<u32>) {
        if m.is_empty() {
            let _ = self.empties.push(m);
            return;
        }
        let n = m.len();
        self.depot_bufs.fetch_add(n, Ordering::Relaxed);
        if let Err(m) = self.depot.push(m) {
            self.depot_bufs.fetch_sub(n, Ordering::Relaxed);
            for idx in m {
                // Cannot fail: `loose` has room for every buffer.
                let _ = self.loose.push(idx);
            }
        }
    }

    /// Takes a non-empty magazine from the depot, or builds one from loose buffers.
    fn get_magazine(&self, empty: Vec<u32>) -> Result<Vec<u32>, Vec<u32>> {
        if let Some(m) = self.depot.pop() {
            self.depot_bufs.fetch_sub(m.len(), Ordering::Relaxed);
            let _ = self.empties.push(empty);
            return Ok(m);
        }
        let mut m = empty;
        while m.len() < MAG {
            match self.loose.pop() {
                Some(i) => m.push(i),
                None => break,
            }
        }
        if m.is_empty() {
            Err(m)
        } else {
            Ok(m)
        }
    }

    /// Makes `n` handles (n >= 1) of the frame `p` is a handle of, paying one atomic for
    /// all of them (flooding without copying). Every handle comes out shared when n > 1.
    /// Handles the iterator does not yield before it is dropped are returned.
    pub fn fanout(&self, mut p: Pkt, n: u32) -> Fanout<'_> {
        let mut n = n;
        if n > 1 && !self.mine(&p) {
            // Copies of a foreign handle would be uncounted owners: yield it once.
            self.misuse.fetch_add(1, Ordering::Relaxed);
            n = 1;
        }
        if n > 1 {
            let rc = &self.refcnt[p.idx as usize];
            if p.shared {
                // Relaxed: we hold a reference, so the count cannot reach zero meanwhile
                // (the argument of Arc::clone).
                rc.fetch_add(n - 1, Ordering::Relaxed);
            } else {
                // Relaxed: an exclusive handle is the only reference, so no other thread
                // reads this count until a handle reaches it through a ring or queue,
                // whose Release/Acquire publishes this store too.
                rc.store(n, Ordering::Relaxed);
                p.shared = true;
            }
        }
        Fanout {
            pool: self,
            proto: Some(p),
            left: n,
        }
    }

    /// Drops one reference's claim: true when it was the last, so the buffer is free.
    #[inline]
    fn release(&self, p: &Pkt) -> bool {
        if !p.shared {
            return true;
        }
        let rc = &self.refcnt[p.idx as usize];
        // Acquire: pairs with the Release decrements of the other owners, whose reads of
        // the buffer happen before its reuse. A count of 1 is our own reference, and
        // nobody else can change it: the sole-owner fast path without a locked op.
        if rc.load(Ordering::Acquire) == 1 {
            rc.store(0, Ordering::Relaxed);
            return true;
        }
        // Release: our reads of the buffer happen before its reuse; the last owner pairs
        // with it through the Acquire fence.
        if rc.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            return true;
        }
        false
    }

    /// Returns one reference without a cache; the buffer is free again once its last
    /// reference returns. A handle of another pool is refused and counted (leaked).
    pub fn free(&self, p: Pkt) {
        if !self.mine(&p) {
            self.misuse.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.release(&p) && !self.return_gso(p.idx) {
            // Cannot fail: `loose` has room for every buffer.
            let _ = self.loose.push(p.idx);
        }
    }

    /// Number of references to a buffer (for assertions and tests).
    pub fn refs(&self, p: &Pkt) -> u32 {
        if !self.mine(p) {
            return 0;
        }
        if p.shared {
            self.refcnt[p.idx as usize].load(Ordering::Acquire)
        } else {
            1
        }
    }

    /// Where a handle's span lies in the region, when it is inside its buffer.
    #[inline]
    fn span(&self, p: &Pkt) -> Option<(usize, usize)> {
        let (off, len) = (p.off as usize, p.len as usize);
        if !self.mine(p) {
            return None;
        }
        let size = if p.idx < self.count {
            self.buf_size
        } else {
            self.big.size
        };
        if off.checked_add(len).is_none_or(|end| end > size) {
            return None;
        }
        Some((off, len))
    }

    /// Where a packet's frame lies in the region (offset, length), for a peer that
    /// maps the region ([`Pool::region_fd`]); `None` for a foreign or broken handle,
    /// and for a GSO buffer (which lies outside that region).
    #[inline]
    pub fn frame_in_region(&self, p: &Pkt) -> Option<(usize, usize)> {
        if self.is_gso(p) {
            return None;
        }
        self.span(p)
            .map(|(off, len)| (p.idx as usize * self.buf_size + off, len))
    }

    /// Where a packet's whole buffer starts in the region (`None` for a GSO buffer).
    #[inline]
    pub fn buffer_in_region(&self, p: &Pkt) -> Option<usize> {
        (self.mine(p) && !self.is_gso(p)).then(|| p.idx as usize * self.buf_size)
    }

    /// The virtio-net header in front of a frame marked [`Pkt::offload`]; `None` for any
    /// other frame.
    #[inline]
    pub fn vnet_hdr<'a>(&'a self, p: &'a Pkt) -> Option<&'a [u8; VNET_HDR_LEN]> {
        if !p.offload {
            return None;
        }
        let (off, len) = self.span(p)?;
        let start = off.checked_sub(VNET_HDR_LEN)?;
        let (base, _) = self.buffer(p.idx);
        debug_assert!(start + VNET_HDR_LEN + len <= self.buffer(p.idx).1);
        // SAFETY: the header lies inside the handle's buffer, in front of its span (both
        // checked); it is read like the frame (see `bytes`).
        Some(unsafe { &*base.add(start).cast::<[u8; VNET_HDR_LEN]>() })
    }

    /// The frame bytes of a packet, borrowed for as long as its handle is. A handle of
    /// another pool, or whose span is outside its buffer, reads as empty.
    #[inline]
    pub fn bytes<'a>(&'a self, p: &'a Pkt) -> &'a [u8] {
        let Some((off, len)) = self.span(p) else {
            return &[];
        };
        let (base, _) = self.buffer(p.idx);
        // SAFETY: the span lies inside buffer `idx` (checked above), inside its region.
        // The handle keeps the buffer allocated while it is borrowed (it must be moved to
        // be freed), and a buffer is written only through an exclusive handle, which is
        // then the only one: no writer exists while this slice lives.
        unsafe { std::slice::from_raw_parts(base.add(off), len) }
    }

    /// The whole buffer of a packet whose handle is its only reference, for filling it;
    /// `None` for a buffer others still read. A shared handle whose peers are all gone
    /// becomes exclusive again here.
    #[inline]
    pub fn buf_mut<'a>(&'a self, p: &'a mut Pkt) -> Option<&'a mut [u8]> {
        if !self.exclusive(p) {
            return None;
        }
        let (base, size) = self.buffer(p.idx);
        // SAFETY: `p` is the only reference to buffer `idx` (checked above), and the
        // `&mut` borrow of it prevents a second slice through it while this one lives;
        // the span is exactly the buffer, inside its region.
        Some(unsafe { std::slice::from_raw_parts_mut(base, size) })
    }

    /// The frame bytes of an exclusively owned packet, for changing them in place.
    #[inline]
    pub fn bytes_mut<'a>(&'a self, p: &'a mut Pkt) -> Option<&'a mut [u8]> {
        let (off, len) = (p.off as usize, p.len as usize);
        let buf = self.buf_mut(p)?;
        buf.get_mut(off..off.checked_add(len)?)
    }

    /// Whether `p` is the only reference to its buffer, making it exclusive if so.
    fn exclusive(&self, p: &mut Pkt) -> bool {
        if !self.mine(p) {
            return false;
        }
        if p.shared {
            let rc = &self.refcnt[p.idx as usize];
            // Acquire: pairs with the Release decrements of the owners that left, whose
            // reads finish before our writes.
            if rc.load(Ordering::Acquire) != 1 {
                return false;
            }
            rc.store(0, Ordering::Relaxed);
            p.shared = false;
        }
        true
    }

    /// Start of the buffer of an exclusively owned packet, for handing it to the kernel
    /// (`None` when shared or not of this pool). Writing through it needs `unsafe` and
    /// the handle must be kept, untouched, until the kernel is done with the memory.
    pub fn buf_ptr(&self, p: &mut Pkt) -> Option<*mut u8> {
        if !self.exclusive(p) {
            return None;
        }
        Some(self.buffer(p.idx).0)
    }

    /// Copies `data` into a new packet (without a cache). `None` when the pool is empty
    /// or the data does not fit a buffer.
    pub fn alloc_copy(&self, data: &[u8]) -> Option<Pkt> {
        fill(self, self.alloc()?, data)
            .map_err(|p| self.free(p))
            .ok()
    }

    /// A cache of free buffers for one worker thread.
    pub fn cache(self: &Arc<Self>) -> BufCache {
        let stat = Arc::new(CacheStat::default());
        self.caches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stat.clone());
        BufCache {
            pool: self.clone(),
            loaded: Vec::with_capacity(MAG),
            spare: Vec::with_capacity(MAG),
            stat,
        }
    }
}

/// Copies `data` behind the headroom of an exclusive packet, or gives the packet back.
fn fill(pool: &Pool, mut p: Pkt, data: &[u8]) -> Result<Pkt, Pkt> {
    match pool.buf_mut(&mut p) {
        Some(buf) if data.len() <= buf.len() - HEADROOM => {
            buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
        }
        _ => return Err(p),
    }
    p.set_span(HEADROOM, data.len());
    Ok(p)
}

/// The handles made by [`Pool::fanout`]; the original comes out last.
pub struct Fanout<'a> {
    pool: &'a Pool,
    proto: Option<Pkt>,
    left: u32,
}

impl Iterator for Fanout<'_> {
    type Item = Pkt;

    fn next(&mut self) -> Option<Pkt> {
        match self.left {
            0 => None,
            1 => {
                self.left = 0;
                self.proto.take()
            }
            _ => {
                self.left -= 1;
                let p = self.proto.as_ref()?;
                // The reference this handle stands for was counted by `fanout`.
                Some(Pkt {
                    idx: p.idx,
                    off: p.off,
                    len: p.len,
                    pool: p.pool,
                    shared: p.shared,
                    offload: p.offload,
                })
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Fanout<'_> {}

impl Drop for Fanout<'_> {
    fn drop(&mut self) {
        let pool = self.pool;
        for p in self.by_ref() {
            pool.free(p);
        }
        // A fan-out to nobody still owns the original.
        if let Some(p) = self.proto.take() {
            self.pool.free(p);
        }
    }
}

/// A worker's private stock of free buffers: allocation and free touch no shared memory
/// except once per [`MAG`] buffers, when a magazine moves to or from the depot (DPDK's
/// mempool cache, in Bonwick's magazine form). Not `Sync`: one thread uses it. Dropping
/// it gives every buffer back.
pub struct BufCache {
    pool: Arc<Pool>,
    loaded: Vec<u32>,
    spare: Vec<u32>,
    stat: Arc<CacheStat>,
}

impl std::fmt::Debug for BufCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufCache")
            .field("free", &(self.loaded.len() + self.spare.len()))
            .finish()
    }
}

impl BufCache {
    /// The pool this cache serves.
    #[inline]
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    #[inline]
    fn publish(&self) {
        // Relaxed, single writer: free_count tolerates a value a moment old.
        self.stat.free.store(
            (self.loaded.len() + self.spare.len()) as u32,
            Ordering::Relaxed,
        );
    }

    /// Takes a free buffer; the packet starts at [`HEADROOM`] with length 0.
    #[inline]
    pub fn alloc(&mut self) -> Option<Pkt> {
        if self.loaded.is_empty() && !self.refill() {
            return None;
        }
        let idx = self.loaded.pop()?;
        self.publish();
        Some(self.pool.handle(idx))
    }

    #[cold]
    fn refill(&mut self) -> bool {
        if !self.spare.is_empty() {
            std::mem::swap(&mut self.loaded, &mut self.spare);
            return true;
        }
        let empty = std::mem::take(&mut self.loaded);
        match self.pool.get_magazine(empty) {
            Ok(m) => {
                self.loaded = m;
                true
            }
            Err(empty) => {
                self.loaded = empty;
                false
            }
        }
    }

    /// Moves up to `n` fresh packets to the end of `out`; returns how many.
    pub fn alloc_bulk(&mut self, out: &mut Vec<Pkt>, n: usize) -> usize {
        let mut got = 0;
        while got < n {
            match self.alloc() {
                Some(p) => out.push(p),
                None => break,
            }
            got += 1;
        }
        got
    }

    /// Copies `data` into a new packet. `None` when no buffer is free or the data does not
    /// fit a buffer.
    pub fn alloc_copy(&mut self, data: &[u8]) -> Option<Pkt> {
        let p = self.alloc()?;
        match fill(&self.pool, p, data) {
            Ok(p) => Some(p),
            Err(p) => {
                self.free(p);
                None
            }
        }
    }

    /// Returns one reference; its buffer comes to this cache once its last reference is
    /// back. A handle of another pool is refused and counted (leaked).
    #[inline]
    pub fn free(&mut self, p: Pkt) {
        if !self.pool.mine(&p) {
            self.pool.misuse.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.pool.release(&p) || self.pool.return_gso(p.idx) {
            return;
        }
        if self.loaded.len() >= MAG {
            self.spill();
        }
        self.loaded.push(p.idx);
        self.publish();
    }

    #[cold]
    fn spill(&mut self) {
        if self.spare.is_empty() {
            std::mem::swap(&mut self.loaded, &mut self.spare);
            return;
        }
        let fresh = self
            .pool
            .empties
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAG));
        let full = std::mem::replace(&mut self.spare, std::mem::replace(&mut self.loaded, fresh));
        self.pool.put_magazine(full);
    }

    /// Frees every packet in `pkts`.
    pub fn free_all(&mut self, pkts: &mut Vec<Pkt>) {
        for p in pkts.drain(..) {
            self.free(p);
        }
    }

    /// Gives every cached buffer back to the depot.
    pub fn flush(&mut self) {
        let a = std::mem::take(&mut self.loaded);
        let b = std::mem::take(&mut self.spare);
        self.pool.put_magazine(a);
        self.pool.put_magazine(b);
        self.loaded = self.pool.empties.pop().unwrap_or_default();
        self.spare = self.pool.empties.pop().unwrap_or_default();
        self.publish();
    }
}

impl Drop for BufCache {
    fn drop(&mut self) {
        self.flush();
        let mut caches = self.pool.caches.lock().unwrap_or_else(|p| p.into_inner());
        caches.retain(|c| !Arc::ptr_eq(c, &self.stat));
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
    fn gso_buffers_are_a_class_of_their_own() {
        let pool = Arc::new(Pool::with_gso(4, 1514, 2).unwrap());
        assert_eq!((pool.gso_count(), pool.gso_free_count()), (2, 2));
        let mut big = pool.alloc_gso().unwrap();
        assert!(pool.is_gso(&big));
        assert!(pool.gso_buf_size() >= HEADROOM + GSO_FRAME);
        // A whole super-frame fits, and reads back.
        let buf = pool.buf_mut(&mut big).unwrap();
        buf[HEADROOM..HEADROOM + GSO_FRAME].fill(0xa5);
        buf[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
        big.set_span(HEADROOM, GSO_FRAME);
        assert!(pool.vnet_hdr(&big).is_none(), "not marked yet");
        big.set_offload(true);
        assert_eq!(pool.vnet_hdr(&big).unwrap()[1], 4);
        assert!(pool.bytes(&big).iter().all(|&b| b == 0xa5));
        // Not in the region a peer maps.
        assert_eq!(pool.frame_in_region(&big), None);
        assert_eq!(pool.buffer_in_region(&big), None);
        // Shared handles keep the flag; the last one back returns it to its class,
        // through a worker's cache as well.
        let mut cache = pool.cache();
        let hs: Vec<Pkt> = pool.fanout(big, 3).collect();
        assert!(hs.iter().all(|h| h.offload() && h.is_shared()));
        assert_eq!(pool.gso_free_count(), 1);
        for h in hs {
            cache.free(h);
        }
        assert_eq!(pool.gso_free_count(), 2);
        assert_eq!(
            pool.free_count(),
            4,
            "no ordinary buffer was taken or added"
        );
        let (a, b) = (pool.alloc_gso().unwrap(), pool.alloc_gso().unwrap());
        assert!(pool.alloc_gso().is_none());
        pool.free(a);
        cache.free(b);
        assert_eq!(pool.gso_free_count(), 2);
        // A pool without GSO buffers has none to give.
        let plain = Pool::new(2, 1514).unwrap();
        assert!(plain.alloc_gso().is_none());
        assert_eq!(plain.gso_buf_size(), 0);
    }

    #[test]
    fn fanout_counts_once_and_frees_after_the_last() {
        let pool = Pool::new(2, 1514).unwrap();
        let p = pool.alloc_copy(&[1, 2, 3]).unwrap();
        assert!(!p.is_shared());
        assert_eq!(pool.refs(&p), 1);
        let mut hs: Vec<Pkt> = pool.fanout(p, 4).collect();
        assert_eq!(hs.len(), 4);
        assert!(hs.iter().all(Pkt::is_shared));
        assert_eq!(pool.refs(&hs[0]), 4);
        assert_eq!(pool.bytes(&hs[3]), &[1, 2, 3]);
        // A fan-out of a shared handle adds to the count.
        let more: Vec<Pkt> = pool.fanout(hs.pop().unwrap(), 2).collect();
        hs.extend(more);
        assert_eq!(pool.refs(&hs[0]), 5);
        let last = hs.pop().unwrap();
        for x in hs.drain(..) {
            pool.free(x);
        }
        assert_eq!(pool.free_count(), 1);
        assert_eq!(pool.refs(&last), 1);
        pool.free(last);
        assert_eq!(pool.free_count(), 2);
    }

    #[test]
    fn unconsumed_fanout_handles_are_returned() {
        let pool = Pool::new(1, 64).unwrap();
        let p = pool.alloc().unwrap();
        let mut it = pool.fanout(p, 5);
        let first = it.next().unwrap();
        drop(it);
        assert_eq!(pool.refs(&first), 1);
        pool.free(first);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn only_a_sole_owner_writes() {
        let pool = Pool::new(1, 64).unwrap();
        let mut p = pool.alloc_copy(&[7; 20]).unwrap();
        assert!(pool.bytes_mut(&mut p).is_some());
        let mut hs: Vec<Pkt> = pool.fanout(p, 2).collect();
        assert!(pool.buf_mut(&mut hs[0]).is_none(), "shared: read-only");
        assert!(pool.buf_ptr(&mut hs[1]).is_none());
        let mut last = hs.pop().unwrap();
        pool.free(hs.pop().unwrap());
        // The other owner left: the remaining handle may write again.
        pool.bytes_mut(&mut last).unwrap()[0] = 9;
        assert!(!last.is_shared());
        assert_eq!(pool.bytes(&last)[0], 9);
        pool.free(last);
        assert_eq!(pool.free_count(), 1);
    }

    #[test]
    fn bad_span_reads_empty() {
        let pool = Pool::new(1, 64).unwrap();
        let mut p = pool.alloc().unwrap();
        p.set_span(pool.buf_size() - 2, 10);
        assert!(pool.bytes(&p).is_empty());
        assert!(pool.bytes_mut(&mut p).is_none());
        p.set_span(usize::MAX, usize::MAX);
        assert!(pool.bytes(&p).is_empty());
        pool.free(p);
    }

    #[test]
    fn a_handle_of_another_pool_is_refused() {
        let a = Pool::new(2, 64).unwrap();
        let b = Pool::new(2, 64).unwrap();
        let mut p = a.alloc_copy(&[1; 14]).unwrap();
        assert!(b.bytes(&p).is_empty());
        assert!(b.buf_mut(&mut p).is_none());
        let before = b.free_count();
        b.free(p);
        assert_eq!(b.free_count(), before, "not added to the wrong pool");
        assert_eq!(b.misuse_count(), 1);
        assert_eq!(a.free_count(), 1, "leaked in its own pool, never aliased");
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(Pool::new(0, 1514), Err(SwitchError::PoolSize(0))));
        assert!(matches!(Pool::new(4, 70000), Err(SwitchError::MaxFrame(_))));
        let pool = Pool::new(4, 9216).unwrap();
        assert!(pool.buf_size() >= HEADROOM + 9217);
        let p = pool.alloc_copy(&vec![0u8; 9217]).unwrap();
        pool.free(p);
        assert!(pool.alloc_copy(&vec![0u8; pool.buf_size()]).is_none());
        assert_eq!(
            pool.free_count(),
            4,
            "a copy that did not fit gave its buffer back"
        );
    }

    #[test]
    fn cache_moves_magazines_and_gives_back_on_drop() {
        let pool = Arc::new(Pool::new(300, 64).unwrap());
        let mut c = pool.cache();
        let mut held = Vec::new();
        assert_eq!(c.alloc_bulk(&mut held, 1000), 300);
        assert_eq!(pool.free_count(), 0);
        assert!(c.alloc().is_none());
        c.free_all(&mut held);
        assert_eq!(pool.free_count(), 300);
        // At most CACHE_MAX stay in the cache; the rest went back to the depot.
        let mut other = pool.cache();
        assert!(other.alloc_bulk(&mut held, 1000) >= 300 - CACHE_MAX as usize);
        other.free_all(&mut held);
        drop(c);
        drop(other);
        assert_eq!(pool.free_count(), 300);
        let all: Vec<Pkt> = (0..300).filter_map(|_| pool.alloc()).collect();
        let mut seen: Vec<u32> = all.iter().map(Pkt::index).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 300, "every buffer exactly once");
        for p in all {
            pool.free(p);
        }
    }

    #[test]
    fn frees_from_other_threads_reach_the_allocator() {
        let pool = Arc::new(Pool::new(200, 64).unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<Vec<Pkt>>();
        let (ack_tx, ack) = std::sync::mpsc::channel::<()>();
        let p2 = pool.clone();
        let t = std::thread::spawn(move || {
            let mut c = p2.cache();
            for mut batch in rx {
                c.free_all(&mut batch);
                let _ = ack_tx.send(());
            }
        });
        let mut c = pool.cache();
        let rounds = if cfg!(miri) { 20 } else { 2000 };
        for _ in 0..rounds {
            let mut batch = Vec::new();
            c.alloc_bulk(&mut batch, 32);
            assert!(!batch.is_empty(), "buffers come back from the other thread");
            let shared: Vec<Pkt> = batch
                .drain(..)
                .flat_map(|p| pool.fanout(p, 2).collect::<Vec<_>>())
                .collect();
            let (mine, theirs): (Vec<_>, Vec<_>) = shared
                .into_iter()
                .enumerate()
                .partition(|(i, _)| i % 2 == 0);
            for (_, p) in mine {
                c.free(p);
            }
            tx.send(theirs.into_iter().map(|(_, p)| p).collect())
                .unwrap();
            // The other cache keeps at most CACHE_MAX; the rest reaches us through the
            // depot.
            ack.recv().unwrap();
        }
        drop(tx);
        t.join().unwrap();
        drop(c);
        assert_eq!(pool.free_count(), 200);
    }

    #[test]
    fn reservations_are_bounded_by_the_pool() {
        let pool = Pool::new(100, 64).unwrap();
        pool.reserve(60).unwrap();
        let e = pool.reserve(50).unwrap_err();
        assert!(e.to_string().contains("60 of 100"), "{e}");
        pool.reserve(40).unwrap();
        pool.unreserve(100);
        assert_eq!(pool.reserved(), 0);
    }

    #[cfg(not(miri))]
    #[test]
    fn the_region_is_a_shareable_memfd() {
        use std::os::fd::AsRawFd;
        let pool = Pool::new(4, 1514).unwrap();
        let fd = pool.region_fd().expect("a memfd");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().contains("pollswitch-pool"),
            "{link:?}"
        );
        assert!(pool.region_len() >= 4 * pool.buf_size());
        // What we write through a handle, a second mapping of the descriptor sees.
        let p = pool.alloc_copy(&[0xab; 20]).unwrap();
        let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        // SAFETY: a read-only view of our own memfd, dropped before the pool.
        let view = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let at = p.index() as usize * pool.buf_size() + HEADROOM;
        assert_eq!(&view[at..at + 20], &[0xab; 20]);
        pool.free(p);
    }
}
