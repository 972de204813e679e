//! The `netmap` netdev: a port of a netmap-enabled NIC, or of a VALE switch
//! (`valeX:Y`, created on the fly by the kernel module), driven through netmap's
//! shared-memory rings.
//!
//! ABI: netmap API 14 (`NETMAP_API` and `NETMAP_MIN_API` are both 14 in
//! luigirizzo/netmap `sys/net/netmap.h`), registered with `NIOCCTRL` and a
//! `NETMAP_REQ_REGISTER` request (not the legacy `struct nmreq`/`NIOCREGIF`, which only
//! a kernel module built with legacy support takes):
//!
//! ```text
//!  open devname (/dev/netmap)
//!  NIOCCTRL   _IOWR('i', 151, struct nmreq_header) = 0xc0586997
//!     nmreq_header   {nr_version 14, nr_reqtype NETMAP_REQ_REGISTER (1), nr_name ifname,
//!                     nr_body = &nmreq_register}                           (88 bytes)
//!     nmreq_register {nr_mode NR_REG_ALL_NIC (1)} -> nr_offset, nr_memsize, rings, slots
//!                                                                          (56 bytes)
//!  mmap(nr_memsize, MAP_SHARED, fd, 0)
//!  netmap_if   at region + nr_offset (56 bytes, then ssize_t ring_ofs[]):
//!     ring_ofs[i]                                   NIC tx ring i, from the netmap_if
//!     ring_ofs[ni_tx_rings + ni_host_tx_rings + i]  NIC rx ring i
//!  netmap_ring (256 bytes, then num_slots x netmap_slot {buf_idx u32, len u16,
//!     flags u16, ptr u64}): buf_ofs i64 @0, num_slots @8, nr_buf_size @12, head @20,
//!     cur @24, tail @28; buffer of a slot at ring + buf_ofs + buf_idx * nr_buf_size
//!  ... the worker owns slots [head, tail) of every ring between its own syscalls:
//!     rx: copies each frame out, then head = cur = past it; NIOCRXSYNC _IO('i', 149)
//!     tx: copies frames into [head, tail), head = cur = past them; NIOCTXSYNC
//!         _IO('i', 148) sends them and gives back the slots the NIC is done with
//!     a multishot io_uring POLL_ADD (POLLIN) on the fd wakes the worker, as for taps;
//!     the sync ioctls are done by the worker itself, never by io_uring
//!  munmap, close                                    when the port goes away
//! ```
//!
//! Frames are copied between netmap buffers and pool buffers on both paths, not
//! zero-copy: the pool's buffers are ours (other ports hold them for as long as their
//! sends take), while netmap's belong to the ring and must go back at the next sync.
//! Swapping buffers between the two would need the pool to live inside netmap's
//! region, which it does not. A frame spread over several slots (`NS_MOREFRAG`, used
//! by VALE for frames larger than one buffer) is gathered on receive; on send a frame
//! must fit one buffer (others count as oversize).
//!
//! The ring code ([`Ring`]) works on a plain `&mut [u8]` holding the region and checks
//! every offset, index and length the kernel wrote before it uses it, so the unit tests
//! run it on a region built in memory; only [`NetmapPort`] opens, registers, maps and
//! syncs.
#![allow(unsafe_code)]

use std::fs::OpenOptions;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::readiness::Readiness;
use switch::{Backend, DropReason, Io, Pkt};

use crate::error::Error;
use crate::sys;

/// The netmap API version we speak (`NETMAP_API`).
pub const NETMAP_API: u16 = 14;
/// `NIOCCTRL`: `_IOWR('i', 151, struct nmreq_header)`.
pub const NIOCCTRL: libc::c_ulong = 0xc058_6997;
/// `NIOCTXSYNC`: `_IO('i', 148)`.
pub const NIOCTXSYNC: libc::c_ulong = 0x6994;
/// `NIOCRXSYNC`: `_IO('i', 149)`.
pub const NIOCRXSYNC: libc::c_ulong = 0x6995;
/// `NETMAP_REQ_REGISTER`.
pub const NETMAP_REQ_REGISTER: u16 = 1;
/// `NR_REG_ALL_NIC`: every hardware ring pair of the port.
pub const NR_REG_ALL_NIC: u32 = 1;
/// `NETMAP_REQ_IFNAMSIZ`.
pub const NETMAP_REQ_IFNAMSIZ: usize = 64;
/// `NS_MOREFRAG`: the frame goes on in the next slot.
pub const NS_MOREFRAG: u16 = 0x0020;
/// The default control device.
pub const DEFAULT_DEVNAME: &str = "/dev/netmap";

/// `struct nmreq_header`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NmreqHeader {
    /// API version.
    pub nr_version: u16,
    /// Request type (`NETMAP_REQ_*`).
    pub nr_reqtype: u16,
    /// Must be zero.
    pub nr_reserved: u32,
    /// Port name, NUL-terminated.
    pub nr_name: [u8; NETMAP_REQ_IFNAMSIZ],
    /// Options (a pointer to a list; 0: none).
    pub nr_options: u64,
    /// Pointer to the request body.
    pub nr_body: u64,
}

/// `struct nmreq_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NmreqRegister {
    /// Offset of the netmap_if in the shared region.
    pub nr_offset: u64,
    /// Size of the shared region.
    pub nr_memsize: u64,
    /// Slots in tx rings.
    pub nr_tx_slots: u32,
    /// Slots in rx rings.
    pub nr_rx_slots: u32,
    /// Number of tx rings.
    pub nr_tx_rings: u16,
    /// Number of rx rings.
    pub nr_rx_rings: u16,
    /// Number of host tx rings.
    pub nr_host_tx_rings: u16,
    /// Number of host rx rings.
    pub nr_host_rx_rings: u16,
    /// Memory allocator id.
    pub nr_mem_id: u16,
    /// Ring(s) we care about.
    pub nr_ringid: u16,
    /// `NR_REG_*`.
    pub nr_mode: u32,
    /// Extra buffers requested.
    pub nr_extra_bufs: u32,
    /// `NR_*` flags.
    pub nr_flags: u64,
}

/// `struct netmap_slot`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetmapSlot {
    /// Buffer index.
    pub buf_idx: u32,
    /// Frame (fragment) length.
    pub len: u16,
    /// `NS_*` flags.
    pub flags: u16,
    /// Indirect buffer pointer / offset.
    pub ptr: u64,
}

/// `struct netmap_if`, without its trailing `ssize_t ring_ofs[]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetmapIf {
    /// Interface name.
    pub ni_name: [u8; 16],
    /// API version.
    pub ni_version: u32,
    /// Properties.
    pub ni_flags: u32,
    /// Hardware tx rings.
    pub ni_tx_rings: u32,
    /// Hardware rx rings.
    pub ni_rx_rings: u32,
    /// Head of the extra buffers.
    pub ni_bufs_head: u32,
    /// Host tx rings.
    pub ni_host_tx_rings: u32,
    /// Host rx rings.
    pub ni_host_rx_rings: u32,
    /// Spare.
    pub ni_spare1: [u32; 3],
}

/// The 128-byte, cache-aligned `sem` of `struct netmap_ring` (`NM_CACHE_ALIGN` 128).
#[repr(C, align(128))]
#[derive(Clone, Copy, Debug)]
pub struct RingSem(pub [u8; 128]);

/// `struct netmap_ring`, without its trailing `struct netmap_slot slot[]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetmapRing {
    /// Offset of the buffer area from the ring.
    pub buf_ofs: i64,
    /// Number of slots.
    pub num_slots: u32,
    /// Size of each buffer.
    pub nr_buf_size: u32,
    /// Ring id.
    pub ringid: u16,
    /// 0: tx, 1: rx.
    pub dir: u16,
    /// First user slot.
    pub head: u32,
    /// Wakeup point.
    pub cur: u32,
    /// First kernel slot.
    pub tail: u32,
    /// `NR_*` ring flags.
    pub flags: u32,
    /// Time of the last sync.
    pub ts: libc::timeval,
    /// Mask of the offset bits of `slot.ptr` (0 without NETMAP_REQ_OPT_OFFSETS).
    pub offset_mask: u64,
    /// Packet alignment in buffers.
    pub buf_align: u64,
    /// Opaque room.
    pub sem: RingSem,
}

// The layouts of sys/net/netmap.h (API 14, LP64).
const _: () = assert!(size_of::<NmreqHeader>() == 88);
const _: () = assert!(offset_of!(NmreqHeader, nr_name) == 8);
const _: () = assert!(offset_of!(NmreqHeader, nr_options) == 72);
const _: () = assert!(offset_of!(NmreqHeader, nr_body) == 80);
const _: () = assert!(size_of::<NmreqRegister>() == 56);
const _: () = assert!(offset_of!(NmreqRegister, nr_tx_slots) == 16);
const _: () = assert!(offset_of!(NmreqRegister, nr_host_rx_rings) == 30);
const _: () = assert!(offset_of!(NmreqRegister, nr_mode) == 36);
const _: () = assert!(offset_of!(NmreqRegister, nr_flags) == 48);
const _: () = assert!(size_of::<NetmapSlot>() == 16);
const _: () = assert!(offset_of!(NetmapSlot, len) == 4);
const _: () = assert!(offset_of!(NetmapSlot, flags) == 6);
const _: () = assert!(size_of::<NetmapIf>() == 56);
const _: () = assert!(offset_of!(NetmapIf, ni_tx_rings) == 24);
const _: () = assert!(offset_of!(NetmapIf, ni_host_tx_rings) == 36);
const _: () = assert!(offset_of!(NetmapIf, ni_host_rx_rings) == 40);
const _: () = assert!(size_of::<NetmapRing>() == 256);
const _: () = assert!(offset_of!(NetmapRing, num_slots) == 8);
const _: () = assert!(offset_of!(NetmapRing, nr_buf_size) == 12);
const _: () = assert!(offset_of!(NetmapRing, head) == 20);
const _: () = assert!(offset_of!(NetmapRing, cur) == 24);
const _: () = assert!(offset_of!(NetmapRing, tail) == 28);
const _: () = assert!(offset_of!(NetmapRing, ts) == 40);
const _: () = assert!(offset_of!(NetmapRing, offset_mask) == 56);
const _: () = assert!(offset_of!(NetmapRing, sem) == 128);
const _: () = assert!(size_of::<libc::ssize_t>() == 8);
// Rx multi-slot frames are gathered in a Vec the ring code reads into; hence usize math.
const _: () = assert!(size_of::<usize>() == 8);

const IF_SIZE: usize = size_of::<NetmapIf>();
const RING_SIZE: usize = size_of::<NetmapRing>();
const SLOT_SIZE: usize = size_of::<NetmapSlot>();
const R_BUF_OFS: usize = offset_of!(NetmapRing, buf_ofs);
const R_NUM_SLOTS: usize = offset_of!(NetmapRing, num_slots);
const R_BUF_SIZE: usize = offset_of!(NetmapRing, nr_buf_size);
const R_HEAD: usize = offset_of!(NetmapRing, head);
const R_CUR: usize = offset_of!(NetmapRing, cur);
const R_TAIL: usize = offset_of!(NetmapRing, tail);
const S_LEN: usize = offset_of!(NetmapSlot, len);
const S_FLAGS: usize = offset_of!(NetmapSlot, flags);

fn rd_u16(r: &[u8], off: usize) -> u16 {
    u16::from_ne_bytes([r[off], r[off + 1]])
}
fn rd_u32(r: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(r[off..off + 4].try_into().expect("4 bytes"))
}
fn rd_i64(r: &[u8], off: usize) -> i64 {
    i64::from_ne_bytes(r[off..off + 8].try_into().expect("8 bytes"))
}
fn wr_u16(r: &mut [u8], off: usize, v: u16) {
    r[off..off + 2].copy_from_slice(&v.to_ne_bytes());
}
fn wr_u32(r: &mut [u8], off: usize, v: u32) {
    r[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// One ring of a mapped region: where it is and its constant geometry, checked
/// against the region once. Head, cur, tail and the slots are read from the region on
/// every call (the kernel moves them).
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    off: usize,
    slots: u32,
    buf_size: usize,
    bufs: usize,
}

/// What one [`Ring::rx`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxDone {
    /// Frames handed to the callback.
    pub frames: usize,
    /// Frames skipped for a bad slot (buffer index or length out of bounds).
    pub bad: usize,
    /// Head or tail were out of range: nothing was touched.
    pub corrupt: bool,
}

/// What [`Ring::tx_push`] did with one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPush {
    /// Copied into a slot; head and cur moved past it.
    Sent,
    /// No free slot (or the ring's head/tail are out of range): nothing taken.
    Full,
    /// The frame does not fit one buffer: nothing written.
    TooBig,
}

impl Ring {
    /// Checks the ring at `off` in `region`: the header, its slots and the start of its
    /// buffer area must lie inside the region.
    pub fn at(region: &[u8], off: usize) -> Result<Ring, String> {
        let end = off.checked_add(RING_SIZE).filter(|&e| e <= region.len());
        if end.is_none() {
            return Err(format!("ring at {off} is outside the region"));
        }
        let slots = rd_u32(region, off + R_NUM_SLOTS);
        let buf_size = rd_u32(region, off + R_BUF_SIZE) as usize;
        let slots_end = (slots as usize)
            .checked_mul(SLOT_SIZE)
            .and_then(|s| s.checked_add(off + RING_SIZE));
        if slots == 0 || slots_end.filter(|&e| e <= region.len()).is_none() {
            return Err(format!(
                "ring at {off}: {slots} slots do not fit the region"
            ));
        }
        let bufs = (off as i64)
            .checked_add(rd_i64(region, off + R_BUF_OFS))
            .filter(|&b| b >= 0 && b as u64 <= region.len() as u64);
        let Some(bufs) = bufs else {
            return Err(format!("ring at {off}: buffer area outside the region"));
        };
        if buf_size == 0 {
            return Err(format!("ring at {off}: zero buffer size"));
        }
        Ok(Ring {
            off,
            slots,
            buf_size,
            bufs: bufs as usize,
        })
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Size of each buffer: the largest frame one slot holds.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    fn next(&self, i: u32) -> u32 {
        if i + 1 == self.slots {
            0
        } else {
            i + 1
        }
    }

    fn slot(&self, i: u32) -> usize {
        self.off + RING_SIZE + i as usize * SLOT_SIZE
    }

    /// Head and tail, if both are slot numbers.
    fn head_tail(&self, region: &[u8]) -> Option<(u32, u32)> {
        let head = rd_u32(region, self.off + R_HEAD);
        let tail = rd_u32(region, self.off + R_TAIL);
        (head < self.slots && tail < self.slots).then_some((head, tail))
    }

    fn set_head(&self, region: &mut [u8], i: u32) {
        wr_u32(region, self.off + R_HEAD, i);
        wr_u32(region, self.off + R_CUR, i);
    }

    /// The bytes of buffer `idx` that `len` covers, if all of them are in the region.
    fn buf(&self, region_len: usize, idx: u32, len: usize) -> Option<std::ops::Range<usize>> {
        if len > self.buf_size {
            return None;
        }
        let start = (idx as usize)
            .checked_mul(self.buf_size)?
            .checked_add(self.bufs)?;
        let end = start.checked_add(self.buf_size)?;
        (end <= region_len).then_some(start..start + len)
    }

    /// Slots the user side owns now: received frames on rx, free slots on tx.
    pub fn space(&self, region: &[u8]) -> u32 {
        match self.head_tail(region) {
            Some((h, t)) if t >= h => t - h,
            Some((h, t)) => t + self.slots - h,
            None => 0,
        }
    }

    /// Takes up to `max` frames from slots [head, tail), handing each to `deliver`
    /// (a frame spread over `NS_MOREFRAG` slots gathered in `scratch`, cut at `cap + 1`
    /// bytes so an oversize frame stays recognisable), then moves head and cur past
    /// every slot consumed. A slot whose buffer index or length is out of bounds is
    /// skipped (its frame counted in `bad`), never read. A frame whose last fragment
    /// has not arrived yet is left for the next call, unless it fills the ring.
    pub fn rx(
        &self,
        region: &mut [u8],
        max: usize,
        cap: usize,
        scratch: &mut Vec<u8>,
        mut deliver: impl FnMut(&[u8]),
    ) -> RxDone {
        let mut done = RxDone::default();
        let Some((head, tail)) = self.head_tail(region) else {
            done.corrupt = true;
            return done;
        };
        let rlen = region.len();
        let mut i = head;
        while i != tail && done.frames + done.bad < max {
            let s = self.slot(i);
            let idx = rd_u32(region, s);
            let len = usize::from(rd_u16(region, s + S_LEN));
            let flags = rd_u16(region, s + S_FLAGS);
            if flags & NS_MOREFRAG == 0 {
                match self.buf(rlen, idx, len) {
                    Some(r) => {
                        deliver(&region[r]);
                        done.frames += 1;
                    }
                    None => done.bad += 1,
                }
                i = self.next(i);
                continue;
            }
            // A multi-slot frame: gather up to its last fragment.
            scratch.clear();
            let mut ok = true;
            let mut j = i;
            let complete = loop {
                let s = self.slot(j);
                let idx = rd_u32(region, s);
                let len = usize::from(rd_u16(region, s + S_LEN));
                let flags = rd_u16(region, s + S_FLAGS);
                match self.buf(rlen, idx, len) {
                    Some(r) if ok => {
                        let room = (cap + 1).saturating_sub(scratch.len());
                        let r = r.start..r.end.min(r.start + room);
                        scratch.extend_from_slice(&region[r]);
                    }
                    Some(_) => {}
                    None => ok = false,
                }
                j = self.next(j);
                if flags & NS_MOREFRAG == 0 {
                    break true;
                }
                if j == tail {
                    break false;
                }
            };
            let fills_ring = i == head && self.next(tail) == head;
            if !(complete || fills_ring) {
                // The rest comes with the next sync.
                break;
            }
            if ok && complete {
                deliver(scratch);
                done.frames += 1;
            } else {
                done.bad += 1;
            }
            i = j;
        }
        self.set_head(region, i);
        done
    }

    /// Copies `frame` into the slot at head (length set, flags cleared) and moves head
    /// and cur past it. A slot whose buffer index is out of bounds is skipped (sent
    /// with length 0, counted in `bad`) and the next one tried.
    pub fn tx_push(&self, region: &mut [u8], frame: &[u8], bad: &mut usize) -> TxPush {
        if frame.len() > self.buf_size || frame.len() > usize::from(u16::MAX) {
            return TxPush::TooBig;
        }
        let rlen = region.len();
        let Some((mut head, tail)) = self.head_tail(region) else {
            return TxPush::Full;
        };
        while head != tail {
            let s = self.slot(head);
            let idx = rd_u32(region, s);
            let next = self.next(head);
            match self.buf(rlen, idx, frame.len()) {
                Some(r) => {
                    region[r].copy_from_slice(frame);
                    wr_u16(region, s + S_LEN, frame.len() as u16);
                    wr_u16(region, s + S_FLAGS, 0);
                    self.set_head(region, next);
                    return TxPush::Sent;
                }
                None => {
                    *bad += 1;
                    wr_u16(region, s + S_LEN, 0);
                    wr_u16(region, s + S_FLAGS, 0);
                    self.set_head(region, next);
                    head = next;
                }
            }
        }
        TxPush::Full
    }
}

/// The NIC rings of a registered port, found from its netmap_if.
#[derive(Clone, Debug)]
pub struct Rings {
    /// Tx rings.
    pub tx: Vec<Ring>,
    /// Rx rings.
    pub rx: Vec<Ring>,
}

/// Finds the rings of the netmap_if at `nifp` in `region` (the kernel's `nr_offset`),
/// checking every offset.
pub fn find_rings(region: &[u8], nifp: usize) -> Result<Rings, String> {
    if nifp
        .checked_add(IF_SIZE)
        .filter(|&e| e <= region.len())
        .is_none()
    {
        return Err(format!("netmap_if at {nifp} is outside the region"));
    }
    let field = |off: usize| rd_u32(region, nifp + off) as usize;
    let tx = field(offset_of!(NetmapIf, ni_tx_rings));
    let rx = field(offset_of!(NetmapIf, ni_rx_rings));
    let host_tx = field(offset_of!(NetmapIf, ni_host_tx_rings));
    let host_rx = field(offset_of!(NetmapIf, ni_host_rx_rings));
    let total = tx + host_tx + rx + host_rx;
    if total > 4096 || nifp + IF_SIZE + total * 8 > region.len() {
        return Err(format!(
            "netmap_if at {nifp}: {total} ring offsets do not fit"
        ));
    }
    let ring = |n: usize| -> Result<Ring, String> {
        let ofs = rd_i64(region, nifp + IF_SIZE + n * 8);
        let off = (nifp as i64)
            .checked_add(ofs)
            .filter(|&o| o >= 0)
            .ok_or_else(|| format!("ring {n} at a negative offset"))?;
        Ring::at(region, off as usize)
    };
    Ok(Rings {
        tx: (0..tx).map(ring).collect::<Result<_, _>>()?,
        rx: (0..rx)
            .map(|i| ring(tx + host_tx + i))
            .collect::<Result<_, _>>()?,
    })
}

/// A netmap netdev's settings.
#[derive(Clone, Debug, Default)]
pub struct NetmapConfig {
    /// A netmap-capable interface, or `valeX:Y`.
    pub ifname: String,
    /// The control device; `None`: /dev/netmap.
    pub devname: Option<String>,
}

/// The shared region, mapped.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// The region as bytes. No slice may be alive across a netmap syscall on the fd
    /// (sync ioctls, and the io_uring poll, which syncs in our thread's own syscall),
    /// the only times the kernel touches the rings and buffers we own.
    fn region(&mut self) -> &mut [u8] {
        // SAFETY: `ptr`/`len` come from a successful mmap that lives until `drop`;
        // `&mut self` makes this the only slice of it, and the kernel writes the region
        // only during our own syscalls on the fd, when no slice is alive (see above).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by mmap with this address and length, and no
        // slice of it outlives `region`'s borrow.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One registered netmap port: all of its NIC ring pairs, served by one worker.
pub struct NetmapPort {
    map: Mapping,
    rings: Rings,
    fd: OwnedFd,
    ifname: String,
    scratch: Vec<u8>,
    next_rx: usize,
    next_tx: usize,
    wake: Readiness,
}

// SAFETY: the mapping is owned by the port alone; whichever single thread owns the
// port is the only one that reads or writes it.
unsafe impl Send for NetmapPort {}

fn register(fd: &OwnedFd, ifname: &str) -> std::io::Result<NmreqRegister> {
    let mut reg = NmreqRegister {
        nr_mode: NR_REG_ALL_NIC,
        ..Default::default()
    };
    let mut hdr = NmreqHeader {
        nr_version: NETMAP_API,
        nr_reqtype: NETMAP_REQ_REGISTER,
        nr_reserved: 0,
        nr_name: [0; NETMAP_REQ_IFNAMSIZ],
        nr_options: 0,
        nr_body: &mut reg as *mut NmreqRegister as u64,
    };
    hdr.nr_name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: NIOCCTRL reads and writes the 88-byte header and, for
    // NETMAP_REQ_REGISTER, the 56-byte body it points to; both are live locals of
    // exactly those layouts (asserted above) for the whole call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), NIOCCTRL as _, &mut hdr as *mut NmreqHeader) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(reg)
}

impl NetmapPort {
    /// Opens the control device, registers `ifname` on it and maps its rings.
    pub fn open(cfg: &NetmapConfig) -> Result<NetmapPort, Error> {
        let ifname = cfg.ifname.as_str();
        if ifname.is_empty() || ifname.len() >= NETMAP_REQ_IFNAMSIZ || ifname.contains('\0') {
            return Err(Error::Config(format!(
                "netmap: ifname '{ifname}' must be 1 to {} bytes",
                NETMAP_REQ_IFNAMSIZ - 1
            )));
        }
        let dev = cfg.devname.as_deref().unwrap_or(DEFAULT_DEVNAME);
        let fd: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Unsupported(format!(
                        "netmap: {dev} not found (is the netmap kernel module loaded?)"
                    ))
                } else {
                    Error::Unsupported(format!("netmap: could not open {dev}: {e}"))
                }
            })?
            .into();
        let reg = register(&fd, ifname).map_err(|e| {
            Error::Config(format!(
                "netmap: could not register '{ifname}' on {dev}: {e}"
            ))
        })?;
        let len = usize::try_from(reg.nr_memsize).unwrap_or(0);
        if len == 0 {
            return Err(Error::Config(format!(
                "netmap: {dev} gave '{ifname}' an empty region"
            )));
        }
        // The region the kernel just sized for this fd.
        let ptr = crate::sys::map_shared(std::os::fd::AsFd::as_fd(&fd), len).map_err(|e| {
            Error::Config(format!(
                "netmap: could not map the rings of '{ifname}': {e}"
            ))
        })?;
        let mut map = Mapping {
            ptr: ptr.as_ptr(),
            len,
        };
        let nifp = usize::try_from(reg.nr_offset).unwrap_or(usize::MAX);
        let rings = find_rings(map.region(), nifp)
            .map_err(|e| Error::Config(format!("netmap: '{ifname}': {e}")))?;
        if rings.tx.is_empty() || rings.rx.is_empty() {
            return Err(Error::Config(format!(
                "netmap: '{ifname}' has no tx or no rx ring"
            )));
        }
        Ok(NetmapPort {
            map,
            rings,
            fd,
            ifname: ifname.to_string(),
            scratch: Vec::new(),
            next_rx: 0,
            next_tx: 0,
            wake: Readiness::default(),
        })
    }

    /// The port's name, as registered.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// NIOCRXSYNC / NIOCTXSYNC, done by the worker itself: no slice of the region is
    /// alive (they are only made inside the ring loops).
    fn sync(&self, io: &Io<'_>, req: libc::c_ulong) {
        if let Err(e) = sys::ioctl_val(self.fd.as_fd(), req, 0) {
            if e.raw_os_error() != Some(libc::EINTR) {
                io.count_op_error();
            }
        }
    }

    /// Takes frames from the rx rings, round robin; true when some ring still has some.
    fn take_rx(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize, n: &mut usize) -> bool {
        let cap = io.pool().max_frame();
        let nr = self.rings.rx.len();
        let region = self.map.region();
        let mut left = false;
        for k in 0..nr {
            let ring = self.rings.rx[(self.next_rx + k) % nr];
            if *n < max {
                let done = ring.rx(region, max - *n, cap, &mut self.scratch, |f| {
                    if let Some(p) = io.receive_copy(f) {
                        out.push(p);
                        *n += 1;
                    }
                });
                // Frames `receive_copy` refused are counted there; bad slots here.
                io.counters
                    .count_drop(DropReason::BadLength, done.bad as u64);
                if done.corrupt {
                    io.counters.count_drop(DropReason::IoError, 1);
                }
            }
            left |= ring.space(region) > 0;
        }
        self.next_rx = (self.next_rx + 1) % nr;
        left
    }

    /// Copies frames from the front of `pkts` into the tx rings; returns how many it
    /// took (sent, or dropped as too big for a buffer).
    fn push_tx(&mut self, io: &mut Io<'_>, pkts: &[Pkt], from: usize) -> (usize, usize) {
        let pool = io.pool();
        let nt = self.rings.tx.len();
        let region = self.map.region();
        let mut i = from;
        let mut sent = 0;
        let mut bytes = 0u64;
        let mut bad = 0;
        let mut full = 0;
        while i < pkts.len() && full < nt {
            let ring = self.rings.tx[self.next_tx];
            let frame = pool.bytes(&pkts[i]);
            match ring.tx_push(region, frame, &mut bad) {
                TxPush::Sent => {
                    bytes += frame.len() as u64;
                    sent += 1;
                    i += 1;
                    full = 0;
                }
                TxPush::TooBig => {
                    io.counters.count_drop(DropReason::Oversize, 1);
                    i += 1;
                }
                TxPush::Full => {
                    full += 1;
                    self.next_tx = (self.next_tx + 1) % nt;
                }
            }
        }
        io.counters.tx(sent as u64, bytes);
        io.counters.count_drop(DropReason::BadLength, bad as u64);
        (i - from, sent)
    }
}

impl Backend for NetmapPort {
    fn kind(&self) -> &'static str {
        "netmap"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.wake.arm(io, self.fd.as_fd());
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        self.wake.arm(io, self.fd.as_fd());
        let mut n = 0;
        // Frames left from the last sync, then a sync (giving back what we consumed and
        // fetching new frames), then those, as far as `max` goes.
        for _ in 0..2 {
            self.take_rx(io, out, max, &mut n);
            if n >= max {
                break;
            }
            self.sync(io, NIOCRXSYNC);
        }
        if n < max {
            self.take_rx(io, out, max, &mut n);
        }
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.wake.stopping() || pkts.is_empty() {
            return 0;
        }
        let (mut taken, sent) = self.push_tx(io, pkts, 0);
        if taken < pkts.len() || sent > 0 {
            // Sends what was queued and gives back the slots the port is done with.
            self.sync(io, NIOCTXSYNC);
            if taken < pkts.len() {
                let (more, sent) = self.push_tx(io, pkts, taken);
                taken += more;
                if sent > 0 {
                    self.sync(io, NIOCTXSYNC);
                }
            }
        }
        for p in pkts.drain(..taken) {
            io.free(p);
        }
        taken
    }

    fn complete(&mut self, _io: &mut Io<'_>, op: u8, _tag: u32, _res: i32, flags: u32) {
        // The poll only wakes the worker; rx_burst syncs and reads whether or not.
        self.wake.complete(op, flags);
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.wake.stop(io, self.fd.as_fd())
    }

    /// Received frames are copied into pool buffers handed on in the same `rx_burst`;
    /// frames to send are copied out and freed within one `tx_burst`.
    fn max_held(&self, _pool: &switch::Pool) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: u32 = 8;
    const BUF: usize = 2048;
    const NIFP: usize = 0;
    const TX_RING: usize = 4096;
    const RX_RING: usize = 8192;
    const BUFS: usize = 12288;
    // netmap reserves buffers 0 and 1; the rings use 2.. .
    const NBUFS: usize = 2 + 2 * N as usize;

    fn w64(r: &mut [u8], off: usize, v: i64) {
        r[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }

    /// A region laid out as the kernel does for a port with one ring pair: the
    /// netmap_if at 0 (ring_ofs relative to it: tx ring, then rx ring, no host rings),
    /// two rings, then the buffer pool (buf_ofs relative to each ring).
    fn region() -> Vec<u8> {
        let mut r = vec![0u8; BUFS + NBUFS * BUF];
        r[NIFP..NIFP + 4].copy_from_slice(b"vale");
        wr_u32(&mut r, NIFP + offset_of!(NetmapIf, ni_version), 14);
        wr_u32(&mut r, NIFP + offset_of!(NetmapIf, ni_tx_rings), 1);
        wr_u32(&mut r, NIFP + offset_of!(NetmapIf, ni_rx_rings), 1);
        w64(&mut r, NIFP + IF_SIZE, (TX_RING - NIFP) as i64);
        w64(&mut r, NIFP + IF_SIZE + 8, (RX_RING - NIFP) as i64);
        for (ring, dir, first) in [(TX_RING, 0u16, 2u32), (RX_RING, 1, 2 + N)] {
            w64(&mut r, ring + R_BUF_OFS, BUFS as i64 - ring as i64);
            wr_u32(&mut r, ring + R_NUM_SLOTS, N);
            wr_u32(&mut r, ring + R_BUF_SIZE, BUF as u32);
            wr_u16(&mut r, ring + offset_of!(NetmapRing, dir), dir);
            for i in 0..N {
                wr_u32(&mut r, ring + RING_SIZE + i as usize * SLOT_SIZE, first + i);
            }
        }
        // tx: all free but the one slot the kernel keeps (tail = head - 1).
        wr_u32(&mut r, TX_RING + R_TAIL, N - 1);
        r
    }

    fn set_htc(r: &mut [u8], ring: usize, head: u32, tail: u32) {
        wr_u32(r, ring + R_HEAD, head);
        wr_u32(r, ring + R_CUR, head);
        wr_u32(r, ring + R_TAIL, tail);
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
    }

    /// The kernel side of rx: puts `f` in slot `i`.
    fn kernel_rx(r: &mut [u8], ring: &Ring, i: u32, f: &[u8], flags: u16) {
        let s = ring.slot(i);
        let idx = rd_u32(r, s);
        let start = ring.bufs + idx as usize * BUF;
        r[start..start + f.len()].copy_from_slice(f);
        wr_u16(r, s + S_LEN, f.len() as u16);
        wr_u16(r, s + S_FLAGS, flags);
    }

    fn tx_slot(r: &[u8], ring: &Ring, i: u32) -> Vec<u8> {
        let s = ring.slot(i);
        let idx = rd_u32(r, s) as usize;
        let len = usize::from(rd_u16(r, s + S_LEN));
        r[ring.bufs + idx * BUF..][..len].to_vec()
    }

    fn rx_all(r: &mut [u8], ring: &Ring, max: usize) -> (Vec<Vec<u8>>, RxDone) {
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        let done = ring.rx(r, max, 9216, &mut scratch, |f| got.push(f.to_vec()));
        (got, done)
    }

    #[test]
    fn rings_are_found_from_the_netmap_if() {
        let r = region();
        let rings = find_rings(&r, NIFP).unwrap();
        assert_eq!((rings.tx.len(), rings.rx.len()), (1, 1));
        assert_eq!(rings.tx[0].off, TX_RING);
        assert_eq!(rings.rx[0].off, RX_RING);
        assert_eq!(rings.rx[0].slots(), N);
        assert_eq!(rings.rx[0].buf_size(), BUF);
        assert_eq!(rings.rx[0].bufs, BUFS);
        assert_eq!(rings.tx[0].space(&r), N - 1);
        // Offsets pointing outside are refused, not followed.
        let mut bad = region();
        w64(&mut bad, NIFP + IF_SIZE + 8, 1 << 40);
        assert!(find_rings(&bad, NIFP).is_err());
        let mut bad = region();
        wr_u32(&mut bad, RX_RING + R_NUM_SLOTS, 1 << 20);
        assert!(find_rings(&bad, NIFP).is_err());
        assert!(find_rings(&r, r.len() - 8).is_err());
    }

    #[test]
    fn rx_takes_frames_between_head_and_tail() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().rx[0];
        let fs: Vec<_> = (0..3).map(|i| frame(i * 10, 60 + i as usize)).collect();
        for (i, f) in fs.iter().enumerate() {
            kernel_rx(&mut r, &ring, i as u32, f, 0);
        }
        // A frame beyond tail is not ours yet.
        kernel_rx(&mut r, &ring, 3, &frame(99, 64), 0);
        set_htc(&mut r, RX_RING, 0, 3);
        let (got, done) = rx_all(&mut r, &ring, 32);
        assert_eq!(got, fs);
        assert_eq!(
            done,
            RxDone {
                frames: 3,
                bad: 0,
                corrupt: false
            }
        );
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 3);
        assert_eq!(rd_u32(&r, RX_RING + R_CUR), 3);
        // Nothing more until the kernel moves tail.
        assert_eq!(rx_all(&mut r, &ring, 32).1.frames, 0);
        // `max` is kept to.
        set_htc(&mut r, RX_RING, 0, 3);
        let (got, _) = rx_all(&mut r, &ring, 2);
        assert_eq!(got.len(), 2);
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 2);
    }

    #[test]
    fn rx_wraps_at_the_ring_end() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().rx[0];
        let slots = [N - 2, N - 1, 0, 1];
        let fs: Vec<_> = slots.iter().map(|&i| frame(i as u8, 100)).collect();
        for (&i, f) in slots.iter().zip(&fs) {
            kernel_rx(&mut r, &ring, i, f, 0);
        }
        set_htc(&mut r, RX_RING, N - 2, 2);
        assert_eq!(ring.space(&r), 4);
        let (got, done) = rx_all(&mut r, &ring, 32);
        assert_eq!(got, fs);
        assert_eq!(done.frames, 4);
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 2);
    }

    #[test]
    fn rx_gathers_fragments_and_waits_for_the_last() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().rx[0];
        let (a, b) = (frame(1, BUF), frame(7, 500));
        kernel_rx(&mut r, &ring, 0, &a, NS_MOREFRAG);
        kernel_rx(&mut r, &ring, 1, &b, 0);
        // Only the first fragment is ours: the frame waits.
        set_htc(&mut r, RX_RING, 0, 1);
        assert_eq!(rx_all(&mut r, &ring, 32).1.frames, 0);
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 0);
        set_htc(&mut r, RX_RING, 0, 2);
        let (got, done) = rx_all(&mut r, &ring, 32);
        assert_eq!(done.frames, 1);
        assert_eq!(got[0], [a, b].concat());
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 2);
    }

    #[test]
    fn rx_skips_bad_slots_without_reading_out_of_bounds() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().rx[0];
        let good = frame(3, 64);
        for i in 0..4 {
            kernel_rx(&mut r, &ring, i, &good, 0);
        }
        // Slot 0: a buffer index past the region; slot 2: longer than a buffer;
        // slot 3: the last buffer that ends exactly at the region's end.
        wr_u32(&mut r, ring.slot(0), u32::MAX);
        wr_u16(&mut r, ring.slot(2) + S_LEN, (BUF + 1) as u16);
        wr_u32(&mut r, ring.slot(3), (NBUFS - 1) as u32);
        let last = r.len() - BUF;
        r[last..last + 64].copy_from_slice(&good);
        set_htc(&mut r, RX_RING, 0, 4);
        let (got, done) = rx_all(&mut r, &ring, 32);
        assert_eq!(
            done,
            RxDone {
                frames: 2,
                bad: 2,
                corrupt: false
            }
        );
        assert_eq!(got, vec![good.clone(), good]);
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 4);
        // A buffer index just past the pool is bad too.
        set_htc(&mut r, RX_RING, 4, 5);
        wr_u32(&mut r, ring.slot(4), NBUFS as u32);
        assert_eq!(rx_all(&mut r, &ring, 32).1.bad, 1);
        // Head or tail out of range: nothing is touched.
        set_htc(&mut r, RX_RING, 0, N + 3);
        assert!(rx_all(&mut r, &ring, 32).1.corrupt);
        assert_eq!(rd_u32(&r, RX_RING + R_HEAD), 0);
    }

    #[test]
    fn tx_fills_slots_and_moves_head() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().tx[0];
        let mut bad = 0;
        let fs: Vec<_> = (0..3).map(|i| frame(i, 60 + 100 * i as usize)).collect();
        for f in &fs {
            assert_eq!(ring.tx_push(&mut r, f, &mut bad), TxPush::Sent);
        }
        for (i, f) in fs.iter().enumerate() {
            assert_eq!(tx_slot(&r, &ring, i as u32), *f);
        }
        assert_eq!(rd_u32(&r, TX_RING + R_HEAD), 3);
        assert_eq!(rd_u32(&r, TX_RING + R_CUR), 3);
        assert_eq!(ring.space(&r), N - 4);
        assert_eq!(
            ring.tx_push(&mut r, &frame(0, BUF + 1), &mut bad),
            TxPush::TooBig
        );
        assert_eq!(rd_u32(&r, TX_RING + R_HEAD), 3);
        assert_eq!(bad, 0);
    }

    #[test]
    fn tx_wraps_and_a_full_ring_takes_nothing() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().tx[0];
        let mut bad = 0;
        // The kernel sent everything up to N - 2; free slots: N-2, N-1, 0 (tail 1).
        set_htc(&mut r, TX_RING, N - 2, 1);
        let fs: Vec<_> = (0..3).map(|i| frame(40 + i, 80)).collect();
        for f in &fs {
            assert_eq!(ring.tx_push(&mut r, f, &mut bad), TxPush::Sent);
        }
        assert_eq!(tx_slot(&r, &ring, N - 2), fs[0]);
        assert_eq!(tx_slot(&r, &ring, N - 1), fs[1]);
        assert_eq!(tx_slot(&r, &ring, 0), fs[2]);
        assert_eq!(rd_u32(&r, TX_RING + R_HEAD), 1);
        // head == tail: full.
        let before = r.clone();
        assert_eq!(ring.tx_push(&mut r, &frame(9, 80), &mut bad), TxPush::Full);
        assert_eq!(r, before);
    }

    #[test]
    fn tx_skips_a_slot_with_a_bad_buffer() {
        let mut r = region();
        let ring = find_rings(&r, NIFP).unwrap().tx[0];
        let mut bad = 0;
        wr_u32(&mut r, ring.slot(0), u32::MAX / 2);
        let f = frame(5, 90);
        assert_eq!(ring.tx_push(&mut r, &f, &mut bad), TxPush::Sent);
        assert_eq!(bad, 1);
        assert_eq!(rd_u16(&r, ring.slot(0) + S_LEN), 0);
        assert_eq!(tx_slot(&r, &ring, 1), f);
        assert_eq!(rd_u32(&r, TX_RING + R_HEAD), 2);
    }

    #[test]
    fn a_missing_device_is_named() {
        let e = NetmapPort::open(&NetmapConfig {
            ifname: "vale0:1".into(),
            devname: Some("/nonexistent/netmap".into()),
        })
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "netmap: /nonexistent/netmap not found (is the netmap kernel module loaded?)"
        );
    }
}
