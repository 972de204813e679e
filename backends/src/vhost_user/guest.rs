//! Guest memory on the packet path: bounds-checked views of the frontend's mapped
//! regions and of a split virtqueue's three parts (the only `unsafe` of vhost-user).
//!
//! ```text
//!  GuestMem (owns an Arc of the mapping)
//!    span(gpa, len) ──► Span<'m>: one host range inside one region, checked once;
//!                       every access below checks its offset against it
//!    ring(cfg)      ──► RingView<'m>: desc table, avail ring, used ring as Spans
//! ```
//!
//! `vm-memory` and `virtio-queue` set up and validate rings on the control side; on the
//! packet path their generic accesses (a region search and a checked access per field,
//! a `DescriptorChain` per frame) cost about a third of the worker's time in the
//! vhost-user loop benchmark, so the worker walks rings through these views instead:
//! one region search per buffer, one per ring part per burst.
//!
//! The memory is shared with another process that writes it while we read: no Rust
//! reference to it is ever made. Ring fields are read and written with volatile or
//! atomic accesses (the index fields with Acquire/Release, as virtio's memory model
//! asks); frame bytes are copied with `copy_nonoverlapping`, as `vm-memory` itself
//! copies bulk data — a guest that rewrites a buffer while we copy it gets torn bytes
//! in its own frame, nothing else.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::vring::Memory;

/// One mapped region: guest address range and where it is mapped here.
#[derive(Clone, Copy)]
struct Region {
    gpa: u64,
    len: u64,
    host: *mut u8,
}

/// The frontend's memory, kept mapped for as long as this lives.
pub struct GuestMem {
    regions: Box<[Region]>,
    // Keeps every `Region::host` mapped (the mapping is unmapped when the last Arc
    // goes).
    mem: Arc<Memory>,
}

// SAFETY: the raw pointers point into mappings owned by `mem` (an Arc, itself Send and
// Sync); nothing here is tied to a thread.
unsafe impl Send for GuestMem {}
// SAFETY: as above; every access through a shared GuestMem is a volatile, atomic or
// bulk copy access to shared memory, which other threads and processes may make too.
unsafe impl Sync for GuestMem {}

impl GuestMem {
    /// Views the mapping's regions.
    pub fn new(mem: Arc<Memory>) -> GuestMem {
        let regions = mem
            .iter()
            .map(|r| Region {
                gpa: r.start_addr().0,
                len: r.len(),
                host: r.as_ptr(),
            })
            .collect();
        GuestMem { regions, mem }
    }

    /// The mapping (for the control side's `virtio-queue` checks).
    pub fn memory(&self) -> &Arc<Memory> {
        &self.mem
    }

    /// The `len` bytes at guest address `gpa`, when they lie inside one region.
    #[inline]
    pub fn span(&self, gpa: u64, len: usize) -> Option<Span<'_>> {
        let len64 = len as u64;
        for r in self.regions.iter() {
            if gpa >= r.gpa {
                let off = gpa - r.gpa;
                if off <= r.len && len64 <= r.len - off {
                    // SAFETY: `off + len <= r.len`, so the range lies inside the
                    // region's mapping, which `self.mem` keeps alive for `'_`.
                    let ptr = unsafe { r.host.add(off as usize) };
                    return Some(Span {
                        ptr,
                        len,
                        _mem: std::marker::PhantomData,
                    });
                }
            }
        }
        None
    }

    /// Copies the `dst.len()` bytes at `gpa` into `dst`; false when they are not all
    /// inside one region.
    #[inline]
    pub fn read(&self, gpa: u64, dst: &mut [u8]) -> bool {
        match self.span(gpa, dst.len()) {
            Some(s) => {
                s.read(0, dst);
                true
            }
            None => false,
        }
    }

    /// Copies `src` to `gpa`; false when the range is not inside one region.
    #[inline]
    pub fn write(&self, gpa: u64, src: &[u8]) -> bool {
        match self.span(gpa, src.len()) {
            Some(s) => {
                s.write(0, src);
                true
            }
            None => false,
        }
    }
}

/// A checked host range of guest memory, valid while its GuestMem is borrowed.
#[derive(Clone, Copy)]
pub struct Span<'m> {
    ptr: *mut u8,
    len: usize,
    _mem: std::marker::PhantomData<&'m GuestMem>,
}

impl Span<'_> {
    /// Its length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn at(&self, off: usize, n: usize) -> Option<*mut u8> {
        if off <= self.len && n <= self.len - off {
            // SAFETY: `off + n <= len`: inside the checked range.
            Some(unsafe { self.ptr.add(off) })
        } else {
            None
        }
    }

    /// Copies `dst.len()` bytes from `off` (short of the span: nothing is copied).
    #[inline]
    pub fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        let Some(p) = self.at(off, dst.len()) else {
            return false;
        };
        // SAFETY: `p..p + dst.len()` is inside the mapping (checked by `at`); `dst` is
        // ours, so the two cannot overlap. See the module doc on concurrent writers.
        unsafe { std::ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` to `off` (short of the span: nothing is copied).
    #[inline]
    pub fn write(&self, off: usize, src: &[u8]) -> bool {
        let Some(p) = self.at(off, src.len()) else {
            return false;
        };
        // SAFETY: as in `read`, the other way round.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) };
        true
    }

    /// The `N` bytes at `off`, read with a copy of fixed size (a few moves, no call).
    #[inline]
    pub fn read_fixed<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let p = self.at(off, N)?;
        // SAFETY: as in `read`; `N` bytes inside the mapping (checked by `at`).
        Some(unsafe { std::ptr::read_unaligned(p as *const [u8; N]) })
    }

    /// Copies the `N` bytes of `src` to `off` with a copy of fixed size (a few moves,
    /// no call: the virtio-net header before each frame).
    #[inline]
    pub fn write_fixed<const N: usize>(&self, off: usize, src: &[u8; N]) -> bool {
        let Some(p) = self.at(off, N) else {
            return false;
        };
        // SAFETY: as in `write`; `N` bytes inside the mapping (checked by `at`).
        unsafe { std::ptr::write_unaligned(p as *mut [u8; N], *src) };
        true
    }

    /// The little-endian u16 at `off` (0 when outside), read with `order` (`off`
    /// must be even: ring fields are).
    #[inline]
    pub fn load_u16(&self, off: usize, order: Ordering) -> u16 {
        match self.at(off, 2) {
            Some(p) if (p as usize).is_multiple_of(2) => {
                // SAFETY: two bytes inside the mapping, 2-aligned (checked); an
                // AtomicU16 has the layout of u16, and atomics are how memory shared
                // with another writer may be read.
                let a = unsafe { &*(p as *const AtomicU16) };
                u16::from_le(a.load(order))
            }
            _ => 0,
        }
    }

    /// Stores the u16 `v` little-endian at `off` with `order` (nothing when outside
    /// or misaligned).
    #[inline]
    pub fn store_u16(&self, off: usize, v: u16, order: Ordering) {
        if let Some(p) = self.at(off, 2) {
            if (p as usize).is_multiple_of(2) {
                // SAFETY: as in `load_u16`.
                let a = unsafe { &*(p as *const AtomicU16) };
                a.store(v.to_le(), order);
            }
        }
    }

    /// Asks the CPU to fetch the cache line at `off` (a hint; nothing when outside).
    #[inline]
    pub fn prefetch(&self, off: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if let Some(p) = self.at(off, 1) {
            // SAFETY: a prefetch is a hint that never faults, and `p` is inside the
            // mapping anyway; SSE, which provides it, is part of every x86_64 CPU.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p as *const i8,
                )
            };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = off;
    }

    /// The 16-byte descriptor `i` of a descriptor table (None when outside).
    #[inline]
    pub fn desc(&self, i: u16) -> Option<Desc> {
        let p = self.at(16 * usize::from(i), 16)?;
        // SAFETY: 16 bytes inside the mapping (checked); read as bytes, so alignment
        // does not matter; volatile because the guest owns the table.
        let b: [u8; 16] = unsafe { std::ptr::read_volatile(p as *const [u8; 16]) };
        Some(Desc {
            addr: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u16::from_le_bytes([b[12], b[13]]),
            next: u16::from_le_bytes([b[14], b[15]]),
        })
    }

    /// Writes the 8-byte used element at `off` (nothing when outside).
    #[inline]
    pub fn put_used(&self, off: usize, id: u32, len: u32) {
        if let Some(p) = self.at(off, 8) {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&id.to_le_bytes());
            b[4..].copy_from_slice(&len.to_le_bytes());
            // SAFETY: 8 bytes inside the mapping (checked), written as bytes.
            unsafe { std::ptr::write_volatile(p as *mut [u8; 8], b) };
        }
    }
}

/// The dirty-page log a frontend shares for live migration (VHOST_USER_SET_LOG_BASE):
/// one bit per 4 KiB page of guest physical memory, set by us for every page we write
/// while the frontend has `VHOST_F_LOG_ALL` on; the frontend reads and clears them
/// (atomically) to know which pages to send again.
pub struct DirtyLog {
    map: vm_memory::MmapRegion<()>,
    /// Pages marked so far (for stats; one count per page per write).
    marked: std::sync::atomic::AtomicU64,
}

// SAFETY: the mapping is owned by `map` (Send + Sync in vm-memory); the log is only
// touched with atomic byte operations.
unsafe impl Send for DirtyLog {}
// SAFETY: as above.
unsafe impl Sync for DirtyLog {}

/// Bytes of guest memory one log bit stands for.
pub const LOG_PAGE: u64 = 4096;

impl DirtyLog {
    /// Maps `size` bytes of `file` from `offset` (the message's mmap_size and
    /// mmap_offset).
    pub fn map(file: std::fs::File, offset: u64, size: u64) -> std::io::Result<DirtyLog> {
        let size = usize::try_from(size).map_err(std::io::Error::other)?;
        let map =
            vm_memory::MmapRegion::<()>::from_file(vm_memory::FileOffset::new(file, offset), size)
                .map_err(std::io::Error::other)?;
        Ok(DirtyLog {
            map,
            marked: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Marks every page of `[gpa, gpa + len)` dirty (pages past the log: ignored).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (first, last) = (gpa / LOG_PAGE, gpa.saturating_add(len - 1) / LOG_PAGE);
        let base = self.map.as_ptr();
        let size = self.map.size() as u64;
        for page in first..=last {
            let byte = page / 8;
            if byte >= size {
                break;
            }
            // SAFETY: `byte < size`: inside the mapping `self.map` owns; AtomicU8 has
            // u8's layout and alignment, and the frontend clears bits atomically too.
            let a = unsafe { &*(base.add(byte as usize) as *const std::sync::atomic::AtomicU8) };
            a.fetch_or(1 << (page % 8), Ordering::Relaxed);
        }
        self.marked.fetch_add(last - first + 1, Ordering::Relaxed);
    }

    /// Pages marked so far.
    pub fn marked(&self) -> u64 {
        self.marked.load(Ordering::Relaxed)
    }
}

/// A split-ring descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest address of the buffer.
    pub addr: u64,
    /// Its length.
    pub len: u32,
    /// NEXT, WRITE, INDIRECT.
    pub flags: u16,
    /// The next descriptor's index (with NEXT).
    pub next: u16,
}

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`.
pub const DESC_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const DESC_INDIRECT: u16 = 4;

/// Where a split ring's parts are (guest addresses) and how big it is.
#[derive(Debug, Clone, Copy)]
pub struct RingAddrs {
    /// Entries (a power of two).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// A split ring's parts as checked spans, for one burst.
pub struct RingView<'m> {
    /// The descriptor table.
    pub desc: Span<'m>,
    /// The available ring (flags, idx, ring[size], used_event).
    pub avail: Span<'m>,
    /// The used ring (flags, idx, ring[size], avail_event).
    pub used: Span<'m>,
}

impl GuestMem {
    /// The views of a ring's parts, when each lies inside one region.
    #[inline]
    pub fn ring(&self, a: &RingAddrs) -> Option<RingView<'_>> {
        let n = usize::from(a.size);
        Some(RingView {
            desc: self.span(a.desc, 16 * n)?,
            avail: self.span(a.avail, 6 + 2 * n)?,
            used: self.span(a.used, 6 + 8 * n)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMem {
        let m: Memory = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10000), 0x2000),
        ])
        .expect("anonymous guest memory");
        GuestMem::new(Arc::new(m))
    }

    #[test]
    fn spans_stay_inside_one_region() {
        let g = mem();
        assert!(g.span(0x1000, 0x1000).is_some());
        assert!(g.span(0x1fff, 1).is_some());
        assert!(g.span(0x1fff, 2).is_none(), "past the region's end");
        assert!(g.span(0x0fff, 2).is_none(), "before the region");
        assert!(g.span(0x2000, 1).is_none(), "in the hole");
        assert!(g.span(0x11000, 0x1000).is_some());
        assert!(g.span(u64::MAX - 1, 4).is_none(), "wrapping");
        assert!(g.span(0x10000, usize::MAX).is_none(), "huge");
    }

    #[test]
    fn reads_writes_and_ring_fields_round_trip() {
        let g = mem();
        assert!(g.write(0x10010, b"hello"));
        let mut b = [0u8; 5];
        assert!(g.read(0x10010, &mut b));
        assert_eq!(&b, b"hello");
        assert!(!g.write(0x11ffe, b"abc"), "straddles the end");
        let s = g.span(0x10000, 64).expect("span");
        s.store_u16(2, 0xbeef, Ordering::Release);
        assert_eq!(s.load_u16(2, Ordering::Acquire), 0xbeef);
        assert_eq!(s.load_u16(63, Ordering::Acquire), 0, "out of the span");
        assert_eq!(s.load_u16(1, Ordering::Acquire), 0, "misaligned");
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&0x1234u64.to_le_bytes());
        d[8..12].copy_from_slice(&60u32.to_le_bytes());
        d[12..14].copy_from_slice(&(DESC_NEXT | DESC_WRITE).to_le_bytes());
        d[14..].copy_from_slice(&7u16.to_le_bytes());
        assert!(s.write(16, &d));
        assert_eq!(
            s.desc(1),
            Some(Desc {
                addr: 0x1234,
                len: 60,
                flags: DESC_NEXT | DESC_WRITE,
                next: 7
            })
        );
        assert_eq!(s.desc(4), None, "past the span");
        s.put_used(8, 3, 99);
        let mut u = [0u8; 8];
        assert!(s.read(8, &mut u));
        assert_eq!(u, [3, 0, 0, 0, 99, 0, 0, 0]);
    }

    #[test]
    fn the_dirty_log_marks_each_page_touched() {
        let f = tempfile_of(64);
        let log = DirtyLog::map(f.try_clone().expect("clone"), 0, 64).expect("map");
        log.mark(0, 1);
        log.mark(LOG_PAGE * 9 + 100, LOG_PAGE); // pages 9 and 10
        log.mark(LOG_PAGE * 10_000, 1); // past the log: ignored
        let mut b = [0u8; 64];
        use std::os::unix::fs::FileExt;
        f.read_exact_at(&mut b, 0).expect("read the log back");
        assert_eq!(b[0], 0b1);
        assert_eq!(b[1], 0b110);
        assert!(b[2..].iter().all(|&x| x == 0));
        assert_eq!(log.marked(), 1 + 2 + 1);
    }

    fn tempfile_of(len: u64) -> std::fs::File {
        let p = std::env::temp_dir().join(format!("pollswitch-log-{}", std::process::id()));
        let f = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("temp file");
        let _ = std::fs::remove_file(&p);
        f.set_len(len).expect("size");
        f
    }

    #[test]
    fn rings_must_fit_whole() {
        let g = mem();
        let ok = RingAddrs {
            size: 64,
            desc: 0x10000,
            avail: 0x10400,
            used: 0x10500,
        };
        assert!(g.ring(&ok).is_some());
        let bad = RingAddrs {
            used: 0x11f00,
            ..ok
        };
        assert!(g.ring(&bad).is_none(), "used ring past the end");
    }
}
