//! Shared memory of a memif connection: regions mapped from memfds, and bounds-checked
//! views of the rings and buffers inside them. The only module of memif with `unsafe`.
//!
//! The peer writes this memory concurrently and may write anything: every offset and
//! length read from it is checked against the region before use, bytes are only ever
//! copied in or out (no Rust reference into shared memory escapes a call), and ring
//! indices are atomics at their aligned places. A region is sealed against shrinking
//! before it is mapped, so the peer cannot make an access fault (SIGBUS) by truncating
//! the file under us.
//!
//! ```text
//!  Region (Arc): mmap(MAP_SHARED) of a memfd, unmapped on the last drop
//!   └─ RingView { region, offset, log2 }: head / tail / flags atomics, desc[i] copies
//! ```
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use super::wire::{ring_bytes, COOKIE, DESC_SIZE, RING_FLAGS, RING_HEAD, RING_HEADER, RING_TAIL};

/// Longest copy done inline in 64-byte steps.
const SHORT_COPY: usize = 256;

/// A mapped shared memory region.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
    /// Inaccessible address space reserved right after the mapping (only
    /// [`Region::create_fenced`]'s), unmapped with it.
    fence: usize,
}

// SAFETY: the mapping is plain shared memory, reached only through the checked copies
// and atomics below, from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; no method hands out references into the mapping.
unsafe impl Sync for Region {}

fn last_err<T>(what: &str) -> io::Result<T> {
    let e = io::Error::last_os_error();
    Err(io::Error::new(e.kind(), format!("{what}: {e}")))
}

/// Address space beyond a fenced region: further than any offset plus length a
/// descriptor can name (two `u32`s) reaches.
const FENCE: usize = 2 << 32;

impl Region {
    /// Makes a new region of `len` bytes in a sealed memfd (the client side).
    pub fn create(name: &str, len: usize) -> io::Result<Region> {
        let fd = Region::sealed_memfd(name, len)?;
        Region::map_fd(fd, len)
    }

    /// Like [`Region::create`], with `len` a multiple of the page size and the region
    /// followed by inaccessible address space as far as a descriptor can reach: an
    /// access that strayed outside the region faults instead of touching other memory.
    /// For fuzzing the rings (a hostile peer's descriptors).
    pub fn create_fenced(name: &str, len: usize) -> io::Result<Region> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        if len == 0 || !len.is_multiple_of(page) {
            return Err(io::Error::other("a fenced region is whole pages"));
        }
        let fd = Region::sealed_memfd(name, len)?;
        // SAFETY: a new anonymous reservation at an address the kernel picks; no existing
        // memory changes.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len + FENCE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return last_err("mmap reservation");
        }
        // SAFETY: replaces the first `len` bytes of the reservation just made (ours, and
        // nothing refers to it) with the memfd; the rest stays inaccessible.
        let p = unsafe {
            libc::mmap(
                base,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = last_err("mmap");
            // SAFETY: the reservation made above, unmapped once.
            unsafe { libc::munmap(base, len + FENCE) };
            return e;
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Region {
            ptr,
            len,
            fd,
            fence: FENCE,
        })
    }

    /// A memfd of `len` bytes that cannot shrink.
    fn sealed_memfd(name: &str, len: usize) -> io::Result<OwnedFd> {
        let cname = std::ffi::CString::new(name).unwrap_or_default();
        // SAFETY: memfd_create with a valid C string; the result is a new descriptor.
        let raw = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return last_err("memfd_create");
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: plain fcntl/ftruncate on our descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } < 0 {
            return last_err("ftruncate");
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } < 0 {
            return last_err("seal");
        }
        Ok(fd)
    }

    /// Maps a region the peer gave: `fd` must be a file of at least `len` bytes that
    /// cannot shrink (sealed, or sealable by us).
    pub fn map(fd: OwnedFd, len: u64) -> Result<Region, String> {
        let len = usize::try_from(len).map_err(|_| "region too large".to_string())?;
        if len == 0 {
            return Err("empty region".into());
        }
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            // SAFETY: as above.
            let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
            if r < 0 {
                return Err(
                    "region fd cannot be sealed against shrinking (not a sealable memfd)".into(),
                );
            }
        }
        // SAFETY: fstat into a zeroed struct on our descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is valid for writes.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(format!("fstat: {}", io::Error::last_os_error()));
        }
        if (st.st_size as u64) < len as u64 {
            return Err(format!("region of {len} bytes in a file of {}", st.st_size));
        }
        Region::map_fd(fd, len).map_err(|e| e.to_string())
    }

    fn map_fd(fd: OwnedFd, len: usize) -> io::Result<Region> {
        let ptr = crate::sys::map_shared(fd.as_fd(), len)
            .map_err(|e| io::Error::new(e.kind(), format!("mmap: {e}")))?;
        Ok(Region {
            ptr,
            len,
            fd,
            fence: 0,
        })
    }

    /// The region's size.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never: mapping refuses it).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Its file (sent to the peer in ADD_REGION).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn fits(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// Copies `dst.len()` bytes at `off` out of the region; false when out of bounds.
    pub fn read(&self, off: usize, dst: &mut [u8]) -> bool {
        if !self.fits(off, dst.len()) {
            return false;
        }
        // SAFETY: in bounds (checked); a copy out of shared memory the peer may be
        // writing gives stale or torn bytes, never touches memory outside the mapping.
        unsafe { copy_forward(self.ptr.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) };
        true
    }

    /// Copies `src` into the region at `off`; false when out of bounds.
    pub fn write(&self, off: usize, src: &[u8]) -> bool {
        if !self.fits(off, src.len()) {
            return false;
        }
        // SAFETY: in bounds (checked); the mapping is writable and no Rust reference
        // into it exists.
        unsafe { copy_forward(src.as_ptr(), self.ptr.as_ptr().add(off), src.len()) };
        true
    }

    /// Hints the CPU to fetch the cache line at `off` (the peer wrote it on another
    /// core: fetching a burst's lines together overlaps their transfers).
    #[inline]
    pub fn prefetch(&self, off: usize) {
        if !self.fits(off, 1) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is only a hint; the address is inside the mapping.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.ptr.as_ptr().add(off) as *const i8);
        }
    }

    fn u16_atomic(&self, off: usize) -> &AtomicU16 {
        debug_assert!(self.fits(off, 2) && off.is_multiple_of(2));
        // SAFETY: callers pass an in-bounds, 2-aligned offset (RingView checks its ring
        // lies in the region and is 8-aligned); the mapping is page-aligned, lives as
        // long as `self`, and is only ever accessed atomically at these places.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU16) }
    }

    /// `N` bytes at `off` (zeroes when out of bounds): a fixed-size copy the compiler
    /// turns into plain loads, for descriptors and ring words.
    fn read_array<const N: usize>(&self, off: usize) -> [u8; N] {
        if !self.fits(off, N) {
            return [0; N];
        }
        // SAFETY: in bounds (checked); an unaligned read of plain bytes from the mapping
        // (stale or torn when the peer writes meanwhile, never outside it).
        unsafe {
            self.ptr
                .as_ptr()
                .add(off)
                .cast::<[u8; N]>()
                .read_unaligned()
        }
    }

    /// Writes `N` bytes at `off`; nothing when out of bounds.
    fn write_array<const N: usize>(&self, off: usize, b: [u8; N]) {
        if self.fits(off, N) {
            // SAFETY: in bounds (checked); the mapping is writable and no Rust reference
            // into it exists.
            unsafe {
                self.ptr
                    .as_ptr()
                    .add(off)
                    .cast::<[u8; N]>()
                    .write_unaligned(b)
            }
        }
    }

    fn read_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.read_array(off))
    }
}

/// Copies `n` bytes: short frames front to back in 64-byte steps, inline (a call into
/// libc's memcpy costs more than the copy, and it reads the end of a frame first, which
/// meets the miss on memory another core wrote before the prefetched start); long ones
/// with libc's memcpy, whose vector width is chosen for this CPU at run time.
///
/// # Safety
///
/// `src` must be valid for `n` reads and `dst` for `n` writes, not overlapping.
#[inline]
unsafe fn copy_forward(src: *const u8, dst: *mut u8, n: usize) {
    if n > SHORT_COPY {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
        return;
    }
    let mut i = 0;
    while i + 64 <= n {
        // SAFETY: `i + 64 <= n`, within both ranges (the caller's contract).
        unsafe {
            dst.add(i)
                .cast::<[u8; 64]>()
                .write_unaligned(src.add(i).cast::<[u8; 64]>().read_unaligned())
        };
        i += 64;
    }
    if i < n {
        // SAFETY: the last `n - i` (< 64) bytes of both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), n - i) };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in map_fd or create_fenced (with its fence), unmapped
        // once; no reference into it outlives `self` (the atomics borrow `self`).
        unsafe {
            libc::munmap(
                self.ptr.as_ptr() as *mut libc::c_void,
                self.len + self.fence,
            )
        };
    }
}

/// A descriptor, copied out of (or to be written into) a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desc {
    /// [`super::wire::DESC_FLAG_NEXT`] or 0.
    pub flags: u16,
    /// The region of the buffer.
    pub region: u16,
    /// Bytes in it (or, posted empty, its capacity).
    pub length: u32,
    /// Its offset in the region.
    pub offset: u32,
}

/// A ring inside a region.
#[derive(Debug, Clone)]
pub struct RingView {
    region: Arc<Region>,
    off: usize,
    log2: u8,
}

impl RingView {
    /// The ring at `off` in `region` with `1 << log2` slots; `None` when it does not fit
    /// or is misaligned.
    pub fn new(region: Arc<Region>, off: usize, log2: u8) -> Option<RingView> {
        if log2 > super::wire::MAX_LOG2_RING
            || !off.is_multiple_of(8)
            || !region.fits(off, ring_bytes(log2))
        {
            return None;
        }
        Some(RingView { region, off, log2 })
    }

    /// Slots in the ring.
    pub fn size(&self) -> u16 {
        1u16 << self.log2
    }

    /// The ring's cookie word.
    pub fn cookie(&self) -> u32 {
        self.region.read_u32(self.off)
    }

    /// Lays out an empty ring (the client side, before connecting).
    pub fn init(&self, flags: u16) {
        self.region.write_array(self.off, COOKIE.to_ne_bytes());
        self.set_flags(flags);
        self.head().store(0, Ordering::Relaxed);
        self.tail().store(0, Ordering::Relaxed);
    }

    /// `head`: written by the producer of filled slots (c2s) or of empty buffers (s2c).
    pub fn head(&self) -> &AtomicU16 {
        self.region.u16_atomic(self.off + RING_HEAD)
    }

    /// `tail`: written by the other side.
    pub fn tail(&self) -> &AtomicU16 {
        self.region.u16_atomic(self.off + RING_TAIL)
    }

    /// The ring's flags.
    pub fn flags(&self) -> u16 {
        self.region
            .u16_atomic(self.off + RING_FLAGS)
            .load(Ordering::Relaxed)
    }

    /// Sets the ring's flags.
    pub fn set_flags(&self, f: u16) {
        self.region
            .u16_atomic(self.off + RING_FLAGS)
            .store(f, Ordering::Relaxed);
    }

    /// Hints the CPU to fetch the descriptors of slots `from .. from + n` (they share
    /// cache lines four by four): their loads then overlap instead of waiting in turn.
    #[inline]
    pub fn prefetch_descs(&self, from: u16, n: u16) {
        let mut i = 0;
        while i < n {
            self.region.prefetch(self.desc_off(from.wrapping_add(i)));
            i += (64 / DESC_SIZE) as u16;
        }
        if n > 0 {
            self.region
                .prefetch(self.desc_off(from.wrapping_add(n - 1)));
        }
    }

    fn desc_off(&self, slot: u16) -> usize {
        self.off + RING_HEADER + DESC_SIZE * usize::from(slot & (self.size() - 1))
    }

    /// Copies out the descriptor of `slot` (taken modulo the ring size): one read.
    #[inline]
    pub fn desc(&self, slot: u16) -> Desc {
        let b: [u8; 12] = self.region.read_array(self.desc_off(slot));
        Desc {
            flags: u16::from_ne_bytes([b[0], b[1]]),
            region: u16::from_ne_bytes([b[2], b[3]]),
            length: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            offset: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        }
    }

    /// Writes the descriptor of `slot` (its metadata word untouched): one write.
    #[inline]
    pub fn set_desc(&self, slot: u16, d: Desc) {
        let mut b = [0u8; 12];
        b[..2].copy_from_slice(&d.flags.to_ne_bytes());
        b[2..4].copy_from_slice(&d.region.to_ne_bytes());
        b[4..8].copy_from_slice(&d.length.to_ne_bytes());
        b[8..12].copy_from_slice(&d.offset.to_ne_bytes());
        self.region.write_array(self.desc_off(slot), b);
    }

    /// Writes only the flags and length of `slot`'s descriptor.
    #[inline]
    pub fn set_len(&self, slot: u16, flags: u16, length: u32) {
        let o = self.desc_off(slot);
        self.region.write_array(o, flags.to_ne_bytes());
        self.region.write_array(o + 4, length.to_ne_bytes());
    }
}

/// The regions of one connection, by index.
#[derive(Debug, Default, Clone)]
pub struct Regions(pub Vec<Arc<Region>>);

impl Regions {
    /// Hints the CPU to fetch the first lines of the buffer `d` names, as many as it
    /// holds up to `max_lines`.
    #[inline]
    pub fn prefetch(&self, d: &Desc, max_lines: usize) {
        if let Some(r) = self.0.get(usize::from(d.region)) {
            // The first lines of the buffer (the hardware's stream prefetcher takes
            // over from there on long frames).
            let lines = (d.length as usize).div_ceil(64).clamp(1, max_lines);
            for i in 0..lines {
                r.prefetch(d.offset as usize + 64 * i);
            }
        }
    }

    /// Copies the buffer `d` names into `dst` at `at`; false when the descriptor points
    /// outside its region or `dst` has no room.
    pub fn read_buf(&self, d: &Desc, dst: &mut [u8], at: usize) -> bool {
        let len = d.length as usize;
        let Some(r) = self.0.get(usize::from(d.region)) else {
            return false;
        };
        match dst.get_mut(at..at.saturating_add(len)) {
            Some(out) if at.checked_add(len).is_some() => r.read(d.offset as usize, out),
            _ => false,
        }
    }

    /// Copies `src` into the buffer `d` names (its region and offset; its length is the
    /// room); false when it does not fit.
    pub fn write_buf(&self, d: &Desc, src: &[u8]) -> bool {
        let Some(r) = self.0.get(usize::from(d.region)) else {
            return false;
        };
        src.len() <= d.length as usize && r.write(d.offset as usize, src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memif::wire::DESC_FLAG_NEXT;

    #[test]
    fn a_created_region_maps_again_from_its_fd_and_shares_bytes() {
        let a = Region::create("t", 8192).unwrap();
        assert!(a.write(100, b"hello"));
        let fd = a.fd().try_clone_to_owned().unwrap();
        let b = Region::map(fd, 8192).unwrap();
        let mut got = [0u8; 5];
        assert!(b.read(100, &mut got));
        assert_eq!(&got, b"hello");
        // Out of bounds: refused, nothing copied.
        assert!(!b.read(8190, &mut got));
        assert!(!b.write(usize::MAX - 1, b"xx"));
        // A region larger than its file is refused.
        let fd = a.fd().try_clone_to_owned().unwrap();
        assert!(Region::map(fd, 8193)
            .unwrap_err()
            .contains("in a file of 8192"));
    }

    #[test]
    fn a_fenced_region_is_whole_pages_and_checks_bounds_like_any() {
        assert!(Region::create_fenced("t", 4095).is_err());
        let r = Region::create_fenced("t", 8192).unwrap();
        assert!(r.write(8190, b"ab"));
        let mut got = [0u8; 2];
        assert!(r.read(8190, &mut got));
        assert_eq!(&got, b"ab");
        assert!(!r.read(8191, &mut got), "one past the end");
        assert!(!r.write(u32::MAX as usize, b"x"));
        // The fence goes with it: a new one maps where it was, whole.
        drop(r);
        let again = Region::create_fenced("t", 4096).unwrap();
        assert!(again.write(0, &[1u8; 4096]));
    }

    #[test]
    fn an_unsealable_fd_is_refused() {
        // A pipe cannot be sealed (nor mapped).
        let (r, _w) = std::io::pipe().unwrap();
        let err = Region::map(OwnedFd::from(r), 4096).unwrap_err();
        assert!(err.contains("sealed"), "{err}");
    }

    #[test]
    fn rings_check_bounds_and_wrap() {
        let r = Arc::new(Region::create("t", ring_bytes(4) + 64).unwrap());
        assert!(RingView::new(r.clone(), 64, 5).is_none(), "does not fit");
        assert!(RingView::new(r.clone(), 4, 4).is_none(), "misaligned");
        let ring = RingView::new(r.clone(), 64, 4).unwrap();
        ring.init(0);
        assert_eq!(ring.cookie(), COOKIE);
        assert_eq!(ring.size(), 16);
        let d = Desc {
            flags: DESC_FLAG_NEXT,
            region: 0,
            length: 60,
            offset: 4096,
        };
        ring.set_desc(3, d);
        assert_eq!(ring.desc(3), d);
        assert_eq!(ring.desc(3 + 16), d, "slots wrap at the ring size");
        ring.set_len(3, 0, 42);
        assert_eq!(ring.desc(3).length, 42);
        assert_eq!(ring.desc(3).flags, 0);
        ring.head().store(7, Ordering::Release);
        assert_eq!(ring.head().load(Ordering::Acquire), 7);
        assert_eq!(ring.tail().load(Ordering::Acquire), 0);
    }

    #[test]
    fn buffers_are_copied_only_within_their_region() {
        let regions = Regions(vec![Arc::new(Region::create("t", 4096).unwrap())]);
        let d = Desc {
            flags: 0,
            region: 0,
            length: 5,
            offset: 10,
        };
        assert!(regions.write_buf(&d, b"abcde"));
        assert!(!regions.write_buf(&d, b"abcdef"), "longer than the buffer");
        let mut out = [0u8; 8];
        assert!(regions.read_buf(&d, &mut out, 1));
        assert_eq!(&out[1..6], b"abcde");
        assert!(!regions.read_buf(&d, &mut out, 4), "no room left in dst");
        let bad = Desc { region: 1, ..d };
        assert!(!regions.read_buf(&bad, &mut out, 0), "no such region");
        let far = Desc { offset: 4094, ..d };
        assert!(
            !regions.read_buf(&far, &mut out, 0),
            "past the region's end"
        );
    }
}
