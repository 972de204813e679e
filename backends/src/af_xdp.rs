//! The `af-xdp` netdev (QEMU 8.2+): one AF_XDP socket per queue of a kernel interface,
//! fed by an XDP program that redirects the interface's frames into it.
//!
//! ```text
//!   interface ifname, rx queue q ── XDP program ── XSKMAP[q] ─┐   (XDP_PASS when
//!                                                              │    no socket)
//!   socket of queue q:   fill ring ──► kernel fills UMEM frame ─┴► rx ring ──► copy
//!                        tx ring ◄── copy ◄── pool buffer             into a pool buffer
//!                        completion ring: frames the kernel sent, back to the free list
//!
//!   UMEM (one per queue, our own mmap): frames 0..RX_FRAMES lent for receive,
//!   RX_FRAMES..FRAMES for sending, FRAME_SIZE bytes each (aligned mode)
//! ```
//!
//! The XDP program is six instructions written here as bytecode (see [`program`]):
//! `bpf_redirect_map(&xskmap, ctx->rx_queue_index, XDP_PASS)`. It is loaded with
//! `BPF_PROG_LOAD`, its map made with `BPF_MAP_CREATE` (`BPF_MAP_TYPE_XSKMAP`), each
//! bound socket put in with `BPF_MAP_UPDATE_ELEM`, and it is attached with
//! `BPF_LINK_CREATE`: the attachment is owned by a descriptor ([`Attachment`]), so it
//! goes away when the last queue of the port is dropped, whatever happens to the
//! daemon. Every constant and struct layout below is from the kernel's uapi headers
//! (`linux/bpf.h`, `linux/if_xdp.h`, `linux/if_link.h`, `linux/ethtool.h`) and checked
//! against them with compile-time asserts where a layout is ours. Hand-written rather
//! than `libxdp`/`libbpf-rs`/`xsk-rs`: those need C libraries, and `clang` to build a
//! BPF object, at build time; six instructions do not justify that, and the socket side
//! is rustix's (`rustix::net::xdp`, sockopts, bind).
//!
//! Frames are copied between UMEM frames and pool buffers in both directions: a pool
//! buffer is larger than a page (it holds `-max-frame`, 9216 bytes by default, plus
//! headroom), and an aligned-mode UMEM chunk is at most a page, so the pool cannot be
//! the UMEM; and pool buffers outlive a ring slot (other ports hold them for as long
//! as their sends take). Rings ([`Producer`], [`Consumer`]) and frames ([`Frame`],
//! [`Frames`]) are safe types: a frame is reached only through the one [`Frame`] token
//! of its index, which moves into a ring when the frame is lent to the kernel and is
//! made again only from an address the kernel hands back that was lent and not yet
//! returned; anything else the kernel writes is counted and ignored.
//!
//! The worker is woken, as for taps and netmap, by a multishot io_uring poll (POLLIN)
//! on the socket; it does every ring operation and every `sendto`/`recvfrom` kick
//! itself.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::mem::{align_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::net::xdp::{
    SocketAddrXdp, SocketAddrXdpFlags, XdpDesc, XdpDescOptions, XdpOptionsFlags, XdpRingOffset,
    XdpUmemReg, XdpUmemRegFlags, XDP_PGOFF_RX_RING, XDP_PGOFF_TX_RING,
    XDP_UMEM_PGOFF_COMPLETION_RING, XDP_UMEM_PGOFF_FILL_RING,
};
use switch::{Backend, DropReason, Io, Pkt};

use crate::error::Error;
use crate::readiness::Readiness;

/// Bytes of one UMEM frame (a page: the most aligned mode allows on x86-64), as QEMU's
/// `XSK_UMEM__DEFAULT_FRAME_SIZE`.
pub const FRAME_SIZE: usize = 4096;
/// Entries of each of the four rings (fill, completion, rx, tx).
pub const RING_SIZE: u32 = 1024;
/// Frames lent to the kernel for receive.
pub const RX_FRAMES: u32 = RING_SIZE;
/// Frames for sending.
pub const TX_FRAMES: u32 = RING_SIZE;
/// Frames in a queue's UMEM.
pub const FRAMES: u32 = RX_FRAMES + TX_FRAMES;
/// What the kernel reserves in front of a received frame in copy mode
/// (`XDP_PACKET_HEADROOM`): the largest frame a queue can receive is the rest.
pub const XDP_PACKET_HEADROOM: usize = 256;
/// How often the kernel's `XDP_STATISTICS` are read into [`QueueStats`].
const STATS_EVERY: Duration = Duration::from_millis(250);
/// `sendto` kicks per `tx_burst` at most (a copy-mode kick sends 32 frames,
/// `TX_BATCH_SIZE`, and says `EAGAIN` when more wait).
const MAX_KICKS: usize = 8;

// linux/bpf.h
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `enum bpf_attach_type` `BPF_XDP`.
const BPF_XDP: u32 = 37;
/// `BPF_FUNC_redirect_map`.
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `XDP_PASS` of `enum xdp_action`.
const XDP_PASS: i32 = 2;
/// `offsetof(struct xdp_md, rx_queue_index)`.
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;
// linux/if_link.h
/// `XDP_FLAGS_SKB_MODE`: generic XDP, in the kernel's receive path.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP, in the driver.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_PROG_ID: u16 = 4;
// linux/ethtool.h, linux/sockios.h
const ETHTOOL_GCHANNELS: u32 = 0x3c;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// One BPF instruction, `struct bpf_insn` (registers: dst in the low nibble).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// `dst_reg | src_reg << 4`.
    pub regs: u8,
    /// Offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}
const _: () = assert!(size_of::<Insn>() == 8);

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// The XDP program, with the XSKMAP's descriptor in its one map load:
///
/// ```text
///  r2 = *(u32 *)(r1 + 16)     ctx->rx_queue_index     BPF_LDX|BPF_MEM|BPF_W    0x61
///  r1 = map fd (2 slots)      BPF_PSEUDO_MAP_FD       BPF_LD|BPF_IMM|BPF_DW    0x18
///  r3 = XDP_PASS              the action on a miss    BPF_ALU64|BPF_MOV|BPF_K  0xb7
///  call bpf_redirect_map      helper 51               BPF_JMP|BPF_CALL         0x85
///  exit                       r0: XDP_REDIRECT or r3  BPF_JMP|BPF_EXIT         0x95
/// ```
pub fn program(map_fd: i32) -> [Insn; 6] {
    [
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0),
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, XDP_PASS),
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP),
        insn(0x95, 0, 0, 0, 0),
    ]
}

/// The `BPF_MAP_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}
const _: () = assert!(std::mem::offset_of!(MapCreateAttr, map_name) == 28);

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}
const _: () = assert!(std::mem::offset_of!(MapElemAttr, key) == 8);
const _: () = assert!(std::mem::offset_of!(MapElemAttr, flags) == 24);

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}
const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, log_buf) == 32);
const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, prog_name) == 48);
const _: () = assert!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type) == 68);

/// The `BPF_LINK_CREATE` part of `union bpf_attr`, up to `flags`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
const _: () = assert!(size_of::<LinkCreateAttr>() == 16);

/// `bpf(cmd, attr, sizeof *attr)`: a new descriptor for the commands that make one.
///
/// # Safety
/// `attr` must be the part of `union bpf_attr` that `cmd` reads, and every pointer in
/// it must point to live memory of the size the fields next to it give.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: the caller guarantees `attr` is what `cmd` reads; the size is its own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a descriptor the bpf syscall just created for us, owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// An XSKMAP with `entries` slots (keys are rx queue indices).
fn xskmap(entries: u32) -> std::io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        ..Default::default()
    };
    attr.map_name[..7].copy_from_slice(b"ps_xsks");
    // SAFETY: BPF_MAP_CREATE reads this struct, which holds no pointers.
    unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.map(owned)
}

/// `map[queue] = sock` (the socket must be bound).
fn xskmap_set(map: BorrowedFd<'_>, queue: u32, sock: BorrowedFd<'_>) -> std::io::Result<()> {
    let key = queue;
    let value = sock.as_raw_fd() as u32;
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    // SAFETY: key and value point to live u32s, the map's key and value sizes.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
}

/// Loads [`program`] for `map`; on failure, the verifier's last line says why.
fn load_program(map: BorrowedFd<'_>) -> Result<OwnedFd, String> {
    let insns = program(map.as_raw_fd());
    let license = c"Dual MIT/GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..Default::default()
    };
    attr.prog_name[..9].copy_from_slice(b"ps_redir\0");
    // SAFETY: insns and license point to live memory of the count and NUL-terminated
    // string given; no log buffer.
    if let Ok(fd) = unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        return Ok(owned(fd));
    }
    let first = std::io::Error::last_os_error();
    // Again, with the verifier's log.
    let mut log = vec![0u8; 16 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    // SAFETY: as above, and log_buf points to log_size writable bytes.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr) } {
        Ok(fd) => Ok(owned(fd)),
        Err(_) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            match text.lines().rev().find(|l| !l.trim().is_empty()) {
                Some(line) => Err(format!("{first} (verifier: {})", line.trim())),
                None => Err(first.to_string()),
            }
        }
    }
}

/// Attaches `prog` to interface `ifindex` in mode `flags` through a link: the
/// attachment lasts as long as the returned descriptor.
fn attach(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> std::io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    // SAFETY: BPF_LINK_CREATE reads this struct, which holds no pointers.
    unsafe { bpf(BPF_LINK_CREATE, &mut attr) }.map(owned)
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// Generic XDP in the kernel's receive path (`XDP_FLAGS_SKB_MODE`).
    Skb,
}

impl XdpMode {
    /// The QAPI name (`AFXDPMode`).
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }

    /// The QAPI value `name`.
    pub fn from_name(name: &str) -> Option<XdpMode> {
        match name {
            "native" => Some(XdpMode::Native),
            "skb" => Some(XdpMode::Skb),
            _ => None,
        }
    }

    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Skb => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// The program, its map and its attachment, shared by the queues of one port; the
/// interface loses the program when the last queue is dropped.
#[derive(Debug)]
pub struct Attachment {
    // Declared first: dropped first, so the program leaves the interface before the
    // map and program descriptors go.
    _link: OwnedFd,
    _prog: OwnedFd,
    _map: OwnedFd,
}

/// The interface index of `ifname` in this network namespace.
pub fn ifindex(ifname: &str) -> std::io::Result<u32> {
    let name = CString::new(ifname).map_err(|_| std::io::Error::from_raw_os_error(libc::ENODEV))?;
    // SAFETY: a NUL-terminated string that lives for the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}
const _: () = assert!(size_of::<EthtoolChannels>() == 36);

/// `struct ifreq` with `ifr_data` pointing to an ethtool request.
#[repr(C)]
struct IfReqPtr {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}
const _: () = assert!(size_of::<IfReqPtr>() == 40);

/// The receive queues `ifname` has: ETHTOOL_GCHANNELS (rx + combined channels), else
/// the `queues/rx-*` entries in sysfs; `None` when neither says.
pub fn rx_queues(ifname: &str) -> Option<u32> {
    if let Ok(sock) = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    ) {
        let mut ch = EthtoolChannels {
            cmd: ETHTOOL_GCHANNELS,
            ..Default::default()
        };
        let mut ifr = IfReqPtr {
            name: [0; libc::IFNAMSIZ],
            data: &mut ch as *mut EthtoolChannels as *mut libc::c_void,
            _pad: [0; 16],
        };
        let n = ifname.len().min(libc::IFNAMSIZ - 1);
        ifr.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
        // SAFETY: SIOCETHTOOL reads the ifreq and, for ETHTOOL_GCHANNELS, writes the
        // 36-byte ethtool_channels its data points to; both live for the call.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
        let n = ch.rx_count + ch.combined_count;
        if r == 0 && n > 0 {
            return Some(n);
        }
    }
    let dir = std::fs::read_dir(format!("/sys/class/net/{ifname}/queues")).ok()?;
    let n = dir
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (n > 0).then_some(n as u32)
}

/// The id of the XDP program attached to `ifindex` (any mode), from an RTM_GETLINK
/// request over rtnetlink; `Ok(None)` when there is none.
pub fn attached_prog_id(ifindex: u32) -> std::io::Result<Option<u32>> {
    use rustix::net::{AddressFamily, SocketType};
    // Protocol 0 is NETLINK_ROUTE.
    let sock = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    // nlmsghdr (16) + ifinfomsg (16).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&(libc::RTM_GETLINK).to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    rustix::net::send(&sock, &req, rustix::net::SendFlags::empty())?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = rustix::net::recv(&sock, &mut buf[..], rustix::net::RecvFlags::empty())?;
    parse_link_reply(&buf[..n])
}

fn rd16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn rd32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The program id in an RTM_NEWLINK reply (`IFLA_XDP` nested `IFLA_XDP_PROG_ID`).
fn parse_link_reply(msg: &[u8]) -> std::io::Result<Option<u32>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad rtnetlink reply");
    let len = rd32(msg, 0).ok_or_else(bad)? as usize;
    let ty = rd16(msg, 4).ok_or_else(bad)?;
    let msg = msg.get(..len).ok_or_else(bad)?;
    if ty == libc::NLMSG_ERROR as u16 {
        let err = rd32(msg, 16).ok_or_else(bad)? as i32;
        return Err(std::io::Error::from_raw_os_error(-err));
    }
    if ty != libc::RTM_NEWLINK {
        return Err(bad());
    }
    let mut at = 32;
    while let (Some(alen), Some(aty)) = (rd16(msg, at), rd16(msg, at + 2)) {
        let alen = alen as usize;
        if alen < 4 || at + alen > msg.len() {
            break;
        }
        if aty & 0x3fff == IFLA_XDP {
            let mut n = at + 4;
            while let (Some(nlen), Some(nty)) = (rd16(msg, n), rd16(msg, n + 2)) {
                let nlen = nlen as usize;
                if nlen < 4 || n + nlen > at + alen {
                    break;
                }
                if nty & 0x3fff == IFLA_XDP_PROG_ID {
                    return Ok(rd32(msg, n + 4).filter(|&id| id != 0));
                }
                n += (nlen + 3) & !3;
            }
            return Ok(None);
        }
        at += (alen + 3) & !3;
    }
    Ok(None)
}

/// A private anonymous mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a new mapping at an address the kernel picks; no existing memory
        // changes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        Self::made(p, len)
    }

    /// A ring of socket `fd` at page offset `pgoff`.
    fn ring(fd: BorrowedFd<'_>, len: usize, pgoff: u64) -> std::io::Result<Mapping> {
        // SAFETY: a new mapping of the socket's ring at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        Self::made(p, len)
    }

    fn made(p: *mut libc::c_void, len: usize) -> std::io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap: null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: made by mmap with this address and length; every pointer into it
        // belongs to the struct that owns this mapping and goes with it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The right to one UMEM frame: at most one exists per frame index, held by us while
/// the kernel does not have the frame. Neither `Clone` nor `Copy`.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame(u32);

/// Which frames the kernel has (lent through the fill or tx ring, not yet back).
pub struct Frames {
    lent: Vec<bool>,
}

impl Frames {
    /// `n` frames, all ours; their tokens.
    pub fn new(n: u32) -> (Frames, Vec<Frame>) {
        (
            Frames {
                lent: vec![false; n as usize],
            },
            (0..n).map(Frame).collect(),
        )
    }

    /// Gives `f` to the kernel: its UMEM address.
    pub fn lend(&mut self, f: Frame) -> u64 {
        self.lent[f.0 as usize] = true;
        u64::from(f.0) * FRAME_SIZE as u64
    }

    /// The frame holding UMEM address `addr`, if the kernel has it: it is ours again.
    /// `None` for an address outside the UMEM or of a frame the kernel does not have.
    pub fn reclaim(&mut self, addr: u64) -> Option<Frame> {
        let i = usize::try_from(addr / FRAME_SIZE as u64).ok()?;
        let lent = self.lent.get_mut(i)?;
        if !*lent {
            return None;
        }
        *lent = false;
        Some(Frame(i as u32))
    }

    /// Frames the kernel has now.
    pub fn lent(&self) -> usize {
        self.lent.iter().filter(|&&l| l).count()
    }
}

/// A queue's UMEM: [`FRAMES`] frames of [`FRAME_SIZE`] bytes.
struct Umem {
    map: Mapping,
}

impl Umem {
    fn new() -> std::io::Result<Umem> {
        Ok(Umem {
            map: Mapping::anonymous(FRAMES as usize * FRAME_SIZE)?,
        })
    }

    /// The bytes of the frame `f` gives the right to.
    fn frame(&self, f: &Frame) -> &[u8] {
        let i = (f.0 as usize).min(FRAMES as usize - 1);
        // SAFETY: inside the mapping (i < FRAMES); the kernel touches a frame only
        // while it has it, and then no `Frame` for it exists, so no slice of it either.
        unsafe { std::slice::from_raw_parts(self.map.ptr.as_ptr().add(i * FRAME_SIZE), FRAME_SIZE) }
    }

    /// The frame, writable: the one `Frame` of it is borrowed mutably.
    fn frame_mut(&mut self, f: &mut Frame) -> &mut [u8] {
        let i = (f.0 as usize).min(FRAMES as usize - 1);
        // SAFETY: as `frame`; `&mut self` and `&mut Frame` make this the only slice.
        unsafe {
            std::slice::from_raw_parts_mut(self.map.ptr.as_ptr().add(i * FRAME_SIZE), FRAME_SIZE)
        }
    }
}

/// The shared indices and entries of one mapped ring.
struct RingPtrs<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
}

impl<T> RingPtrs<T> {
    /// Finds the parts of a ring of `size` entries at `base`, `len` bytes, from the
    /// kernel's offsets, checking that each lies inside and is aligned.
    ///
    /// # Safety
    /// `base..base + len` must be mapped, readable and writable, for as long as the
    /// returned pointers are used, and hold a ring laid out as `off` says.
    unsafe fn new(
        base: NonNull<u8>,
        len: usize,
        off: &XdpRingOffset,
        size: u32,
    ) -> Result<RingPtrs<T>, String> {
        if !size.is_power_of_two() {
            return Err(format!("ring size {size} is not a power of two"));
        }
        let within = |o: u64, n: usize, align: usize| -> Result<usize, String> {
            let o = usize::try_from(o).map_err(|_| "ring offset too large".to_string())?;
            match o.checked_add(n) {
                Some(end) if end <= len && o % align == 0 => Ok(o),
                _ => Err(format!("ring offset {o} is outside the {len}-byte mapping")),
            }
        };
        let p = within(off.producer, 4, 4)?;
        let c = within(off.consumer, 4, 4)?;
        let f = within(off.flags.ok_or("the kernel has no ring flags")?, 4, 4)?;
        let d = within(off.desc, size as usize * size_of::<T>(), align_of::<T>())?;
        let at = |o: usize| {
            // SAFETY: o + its size is inside the mapping (checked above).
            unsafe { NonNull::new_unchecked(base.as_ptr().add(o)) }
        };
        Ok(RingPtrs {
            producer: at(p).cast(),
            consumer: at(c).cast(),
            flags: at(f).cast(),
            descs: at(d).cast(),
            mask: size - 1,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: inside the live mapping, 4-aligned (checked in `new`); shared with
        // the kernel only through atomic accesses.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as `producer`.
        let flags = unsafe { self.flags.as_ref() };
        // Relaxed: a hint; the kernel sets it before it stops looking at the ring and
        // a kick it did not need costs one syscall.
        flags.load(Ordering::Relaxed) & rustix::net::xdp::XdpRingFlags::XDP_RING_NEED_WAKEUP.bits()
            != 0
    }
}

/// Our end of a ring we produce into (fill: addresses; tx: descriptors).
pub struct Producer<T: Copy> {
    ptrs: RingPtrs<T>,
    /// Entries written, published or not.
    prod: u32,
    /// The kernel's consumer index plus the ring size, as last read.
    cons_end: u32,
}

impl<T: Copy> Producer<T> {
    fn new(ptrs: RingPtrs<T>) -> Producer<T> {
        // Relaxed: nothing of the ring is read before the first `free`, which acquires.
        let prod = ptrs.producer().load(Ordering::Relaxed);
        let cons = ptrs.consumer().load(Ordering::Relaxed);
        let size = ptrs.mask + 1;
        Producer {
            ptrs,
            prod,
            cons_end: cons.wrapping_add(size),
        }
    }

    /// Free entries (reading the kernel's consumer index only when the last reading
    /// shows none).
    pub fn free(&mut self) -> u32 {
        let free = self.cons_end.wrapping_sub(self.prod);
        if free > 0 {
            return free;
        }
        // Acquire: pairs with the kernel's release of consumer after it read the
        // entries, so we do not overwrite one it is still reading.
        let cons = self.ptrs.consumer().load(Ordering::Acquire);
        self.cons_end = cons.wrapping_add(self.ptrs.mask + 1);
        self.cons_end.wrapping_sub(self.prod)
    }

    /// Writes `v` into the next entry; false (nothing written) when the ring is full.
    /// The kernel sees it after [`Producer::submit`].
    pub fn push(&mut self, v: T) -> bool {
        if self.free() == 0 {
            return false;
        }
        let i = (self.prod & self.ptrs.mask) as usize;
        // SAFETY: i <= mask, inside the descriptor array (checked in RingPtrs::new);
        // the entry is between the kernel's consumer and our producer plus size: the
        // kernel does not read it until we publish it.
        unsafe { self.ptrs.descs.as_ptr().add(i).write(v) };
        self.prod = self.prod.wrapping_add(1);
        true
    }

    /// Publishes the entries written.
    pub fn submit(&self) {
        // Release: pairs with the kernel's acquire of producer; the entries written
        // before are visible to it first.
        self.ptrs.producer().store(self.prod, Ordering::Release);
    }

    /// Entries published that the kernel has not consumed yet.
    pub fn outstanding(&self) -> u32 {
        // Acquire: as in `free`.
        let cons = self.ptrs.consumer().load(Ordering::Acquire);
        self.prod.wrapping_sub(cons)
    }

    /// Whether the kernel asked to be kicked (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        self.ptrs.needs_wakeup()
    }
}

/// Our end of a ring the kernel produces into (rx: descriptors; completion:
/// addresses).
pub struct Consumer<T: Copy> {
    ptrs: RingPtrs<T>,
    /// Entries read.
    cons: u32,
    /// The kernel's producer index, as last read.
    prod: u32,
}

impl<T: Copy> Consumer<T> {
    fn new(ptrs: RingPtrs<T>) -> Consumer<T> {
        // Relaxed: entries are read only after `available` acquires producer.
        let cons = ptrs.consumer().load(Ordering::Relaxed);
        Consumer {
            ptrs,
            cons,
            prod: cons,
        }
    }

    /// Entries ready (reading the kernel's producer index when the last reading shows
    /// none).
    pub fn available(&mut self) -> u32 {
        let n = self.prod.wrapping_sub(self.cons);
        if n > 0 {
            return n;
        }
        // Acquire: pairs with the kernel's release of producer after it wrote the
        // entries.
        self.prod = self.ptrs.producer().load(Ordering::Acquire);
        let n = self.prod.wrapping_sub(self.cons);
        if n > self.ptrs.mask + 1 {
            // A producer index no ring can have: take nothing.
            self.prod = self.cons;
            return 0;
        }
        n
    }

    /// The next entry, if one is ready. The kernel may reuse it after
    /// [`Consumer::release`].
    pub fn pop(&mut self) -> Option<T> {
        if self.available() == 0 {
            return None;
        }
        let i = (self.cons & self.ptrs.mask) as usize;
        // SAFETY: i <= mask, inside the descriptor array; the entry is between our
        // consumer and the kernel's producer, which it published (acquired above) and
        // will not write again until we release it.
        let v = unsafe { self.ptrs.descs.as_ptr().add(i).read() };
        self.cons = self.cons.wrapping_add(1);
        Some(v)
    }

    /// Gives the entries read back to the kernel.
    pub fn release(&self) {
        // Release: pairs with the kernel's acquire of consumer; our reads of the
        // entries happen before it may overwrite them.
        self.ptrs.consumer().store(self.cons, Ordering::Release);
    }
}

/// What the kernel counted for one socket (`XDP_STATISTICS`), and what the queue did,
/// readable by the control thread.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// The interface queue the socket is bound to.
    pub queue: AtomicU32,
    /// Bound in zero-copy mode.
    pub zero_copy: AtomicBool,
    /// Frames received on this queue.
    pub rx_frames: AtomicU64,
    /// Frames sent on this queue.
    pub tx_frames: AtomicU64,
    /// Descriptors the kernel gave back that were not ours (ignored).
    pub bad_descs: AtomicU64,
    /// `rx_dropped`.
    pub rx_dropped: AtomicU64,
    /// `rx_invalid_descs`.
    pub rx_invalid_descs: AtomicU64,
    /// `tx_invalid_descs`.
    pub tx_invalid_descs: AtomicU64,
    /// `rx_ring_full`.
    pub rx_ring_full: AtomicU64,
    /// `rx_fill_ring_empty_descs`.
    pub rx_fill_ring_empty_descs: AtomicU64,
    /// `tx_ring_empty_descs`.
    pub tx_ring_empty_descs: AtomicU64,
}

/// What an af-xdp port reports in `x-query-stats`.
#[derive(Debug)]
pub struct AfXdpStats {
    /// How the program is attached; `None` with `inhibit` (someone else's program).
    pub mode: Option<XdpMode>,
    /// Each queue's figures.
    pub queues: Vec<QueueStats>,
}

/// An af-xdp netdev's settings, checked by the control plane as QEMU checks them.
#[derive(Debug, Default)]
pub struct AfXdpConfig {
    /// The interface.
    pub ifname: String,
    /// Attach mode; `None`: native, and skb if native fails.
    pub mode: Option<XdpMode>,
    /// Bind with `XDP_COPY` (else the kernel tries zero-copy first).
    pub force_copy: bool,
    /// Sockets (queues) to make.
    pub queues: u32,
    /// The interface queue of the first socket.
    pub start_queue: u32,
    /// Already created, unbound AF_XDP sockets (one per queue) that someone else's
    /// program redirects to: no program is loaded (`inhibit=on`).
    pub sock_fds: Option<Vec<OwnedFd>>,
}

/// One queue of an af-xdp port: a socket, its UMEM and its four rings.
pub struct AfXdpQueue {
    // Drop order: rings (munmap) first, then the socket, then the UMEM, then the
    // attachment the last queue holds.
    fill: Producer<u64>,
    comp: Consumer<u64>,
    rx: Consumer<XdpDesc>,
    tx: Producer<XdpDesc>,
    _maps: [Mapping; 4],
    fd: OwnedFd,
    umem: Umem,
    frames: Frames,
    /// Receive frames that did not fit the fill ring (retried on the next burst).
    rx_spare: Vec<Frame>,
    /// Send frames that are ours.
    tx_free: Vec<Frame>,
    ifname: String,
    wake: Readiness,
    stats: Arc<AfXdpStats>,
    index: usize,
    last_stats: Option<Instant>,
    _attachment: Option<Arc<Attachment>>,
}

// SAFETY: the mappings and the pointers into them are owned by the queue alone;
// whichever single thread owns the queue is the only one that touches them.
unsafe impl Send for AfXdpQueue {}

fn step(ifname: &str, what: String) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::AfXdp {
        ifname: ifname.to_string(),
        what,
        source,
    }
}

fn ring_err(ifname: &str, what: &str, e: String) -> Error {
    Error::Config(format!("af-xdp ifname={ifname}: {what}: {e}"))
}

impl AfXdpQueue {
    /// Registers a UMEM on socket `fd`, makes and maps its rings, lends every receive
    /// frame to the fill ring and binds it to `queue` of `ifindex`. Errors name the
    /// step as QEMU's do (`failed to create umem`, `failed to create AF_XDP socket`).
    fn create(
        fd: OwnedFd,
        cfg: &AfXdpConfig,
        ifindex: u32,
        index: usize,
        queue: u32,
        stats: Arc<AfXdpStats>,
    ) -> Result<AfXdpQueue, Error> {
        use rustix::net::sockopt;
        let ifname = cfg.ifname.as_str();
        let umem_step = || format!("failed to create umem for {ifname} queue_index: {index}");
        let umem = Umem::new().map_err(step(ifname, umem_step()))?;
        sockopt::set_xdp_umem_reg(
            &fd,
            XdpUmemReg {
                addr: umem.map.ptr.as_ptr() as u64,
                len: umem.map.len as u64,
                chunk_size: FRAME_SIZE as u32,
                headroom: 0,
                flags: XdpUmemRegFlags::empty(),
                tx_metadata_len: 0,
            },
        )
        .map_err(|e| step(ifname, umem_step())(e.into()))?;
        let sized = (|| {
            sockopt::set_xdp_umem_fill_ring_size(&fd, RING_SIZE)?;
            sockopt::set_xdp_umem_completion_ring_size(&fd, RING_SIZE)?;
            sockopt::set_xdp_rx_ring_size(&fd, RING_SIZE)?;
            sockopt::set_xdp_tx_ring_size(&fd, RING_SIZE)
        })();
        sized.map_err(|e| step(ifname, umem_step())(e.into()))?;
        let off =
            sockopt::xdp_mmap_offsets(&fd).map_err(|e| step(ifname, umem_step())(e.into()))?;
        let map = |o: &XdpRingOffset, entry: usize, pgoff: u64| {
            let len = o.desc as usize + RING_SIZE as usize * entry;
            Mapping::ring(fd.as_fd(), len, pgoff)
        };
        let mapping = (|| {
            Ok::<_, std::io::Error>([
                map(&off.fr, 8, XDP_UMEM_PGOFF_FILL_RING)?,
                map(&off.cr, 8, XDP_UMEM_PGOFF_COMPLETION_RING)?,
                map(&off.rx, size_of::<XdpDesc>(), XDP_PGOFF_RX_RING)?,
                map(&off.tx, size_of::<XdpDesc>(), XDP_PGOFF_TX_RING)?,
            ])
        })();
        let maps = mapping.map_err(step(ifname, umem_step()))?;
        let what = "mapping the rings";
        // SAFETY: each mapping is the ring its offsets describe, and lives in `maps`,
        // which the queue keeps until after the rings' pointers are gone.
        let (fill, comp, rx, tx) = unsafe {
            (
                RingPtrs::new(maps[0].ptr, maps[0].len, &off.fr, RING_SIZE),
                RingPtrs::new(maps[1].ptr, maps[1].len, &off.cr, RING_SIZE),
                RingPtrs::new(maps[2].ptr, maps[2].len, &off.rx, RING_SIZE),
                RingPtrs::new(maps[3].ptr, maps[3].len, &off.tx, RING_SIZE),
            )
        };
        let mut fill = Producer::new(fill.map_err(|e| ring_err(ifname, what, e))?);
        let comp = Consumer::new(comp.map_err(|e| ring_err(ifname, what, e))?);
        let rx = Consumer::new(rx.map_err(|e| ring_err(ifname, what, e))?);
        let tx = Producer::new(tx.map_err(|e| ring_err(ifname, what, e))?);
        let (mut frames, mut all) = Frames::new(FRAMES);
        let tx_free = all.split_off(RX_FRAMES as usize);
        let mut rx_spare = Vec::new();
        for f in all {
            if fill.free() == 0 {
                rx_spare.push(f);
            } else {
                fill.push(frames.lend(f));
            }
        }
        fill.submit();
        let mut flags = SocketAddrXdpFlags::XDP_USE_NEED_WAKEUP;
        if cfg.force_copy {
            flags |= SocketAddrXdpFlags::XDP_COPY;
        }
        rustix::net::bind(&fd, &SocketAddrXdp::new(flags, ifindex, queue)).map_err(|e| {
            step(
                ifname,
                format!("failed to create AF_XDP socket for {ifname} queue_id: {queue}"),
            )(e.into())
        })?;
        let zc = sockopt::xdp_options(&fd)
            .map(|o| o.contains(XdpOptionsFlags::XDP_OPTIONS_ZEROCOPY))
            .unwrap_or(false);
        stats.queues[index].zero_copy.store(zc, Ordering::Relaxed);
        stats.queues[index].queue.store(queue, Ordering::Relaxed);
        Ok(AfXdpQueue {
            fill,
            comp,
            rx,
            tx,
            _maps: maps,
            fd,
            umem,
            frames,
            rx_spare,
            tx_free,
            ifname: ifname.to_string(),
            wake: Readiness::default(),
            stats,
            index,
            last_stats: None,
            _attachment: None,
        })
    }

    /// The interface.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn qstats(&self) -> &QueueStats {
        &self.stats.queues[self.index]
    }

    /// Takes back the frames the kernel has sent.
    fn reclaim_tx(&mut self) {
        let mut bad = 0;
        while let Some(addr) = self.comp.pop() {
            match self.frames.reclaim(addr) {
                Some(f) => self.tx_free.push(f),
                None => bad += 1,
            }
        }
        self.comp.release();
        if bad > 0 {
            self.qstats().bad_descs.fetch_add(bad, Ordering::Relaxed);
        }
    }

    /// `sendto(MSG_DONTWAIT)` while the kernel asks for it and frames wait in the tx
    /// ring (copy mode sends a batch per call).
    fn kick_tx(&mut self, io: &Io<'_>) {
        for _ in 0..MAX_KICKS {
            if self.tx.outstanding() == 0 || !self.tx.needs_wakeup() {
                return;
            }
            // SAFETY: a zero-length send with no buffer and no address.
            let r = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if r >= 0 {
                // Copy mode sent all it could; zero-copy: the driver is awake.
                return;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                // More waits (or the completion ring is full): take back what was
                // sent and go on.
                Some(libc::EAGAIN) => self.reclaim_tx(),
                // The interface is busy, out of memory or down: the frames wait.
                Some(libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::ENXIO) => return,
                Some(libc::EINTR) => {}
                _ => {
                    io.count_op_error();
                    return;
                }
            }
        }
    }

    /// Asks the kernel to look at the fill ring when it said it stopped.
    fn kick_fill(&self) {
        if self.fill.needs_wakeup() {
            // SAFETY: a zero-length receive with no buffer and no address.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
    }

    /// Reads the kernel's counters into [`QueueStats`] at most every [`STATS_EVERY`].
    fn refresh_stats(&mut self, now: Instant) {
        if self
            .last_stats
            .is_some_and(|t| now.duration_since(t) < STATS_EVERY)
        {
            return;
        }
        self.last_stats = Some(now);
        let Ok(s) = rustix::net::sockopt::xdp_statistics(&self.fd) else {
            return;
        };
        let q = self.qstats();
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&q.rx_dropped, s.rx_dropped);
        set(&q.rx_invalid_descs, s.rx_invalid_descs);
        set(&q.tx_invalid_descs, s.tx_invalid_descs);
        set(&q.rx_ring_full, s.rx_ring_full.unwrap_or(0));
        set(
            &q.rx_fill_ring_empty_descs,
            s.rx_fill_ring_empty_descs.unwrap_or(0),
        );
        set(&q.tx_ring_empty_descs, s.tx_ring_empty_descs.unwrap_or(0));
    }

    /// Gives a receive frame back to the fill ring (or keeps it for the next burst).
    fn refill(&mut self, f: Frame) {
        if self.fill.free() == 0 {
            self.rx_spare.push(f);
        } else {
            let addr = self.frames.lend(f);
            self.fill.push(addr);
        }
    }
}

/// Where a received descriptor's frame lies in its UMEM frame, if it does.
pub fn rx_span(desc: &XdpDesc) -> Option<(u64, std::ops::Range<usize>)> {
    let chunk = desc.addr & !(FRAME_SIZE as u64 - 1);
    let off = (desc.addr - chunk) as usize;
    let end = off.checked_add(desc.len as usize)?;
    (end <= FRAME_SIZE).then_some((chunk, off..end))
}

impl Backend for AfXdpQueue {
    fn kind(&self) -> &'static str {
        "af-xdp"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.wake.arm(io, self.fd.as_fd());
        self.kick_fill();
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if self.wake.stopping() {
            return 0;
        }
        self.wake.arm(io, self.fd.as_fd());
        while let Some(f) = self.rx_spare.pop() {
            if self.fill.free() == 0 {
                self.rx_spare.push(f);
                break;
            }
            let addr = self.frames.lend(f);
            self.fill.push(addr);
        }
        let mut n = 0;
        let mut bad = 0;
        while n < max {
            let Some(desc) = self.rx.pop() else { break };
            let Some((chunk, span)) = rx_span(&desc) else {
                // The frame it names stays lent: the kernel said nothing we can trust
                // about which one it is done with.
                bad += 1;
                continue;
            };
            let Some(f) = self.frames.reclaim(chunk) else {
                bad += 1;
                continue;
            };
            if let Some(p) = io.receive_copy(&self.umem.frame(&f)[span]) {
                out.push(p);
                n += 1;
            }
            self.refill(f);
        }
        self.rx.release();
        self.fill.submit();
        self.kick_fill();
        if bad > 0 {
            io.counters.count_drop(DropReason::BadLength, bad);
            self.qstats().bad_descs.fetch_add(bad, Ordering::Relaxed);
        }
        if n > 0 {
            self.qstats()
                .rx_frames
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.wake.stopping() || pkts.is_empty() {
            return 0;
        }
        self.reclaim_tx();
        let pool = io.pool();
        let mut taken = 0;
        let mut sent = 0u64;
        let mut bytes = 0u64;
        for p in pkts.iter() {
            let frame = pool.bytes(p);
            if frame.len() > FRAME_SIZE {
                io.counters.count_drop(DropReason::Oversize, 1);
                taken += 1;
                continue;
            }
            if self.tx.free() == 0 {
                break;
            }
            let Some(mut f) = self.tx_free.pop() else {
                break;
            };
            self.umem.frame_mut(&mut f)[..frame.len()].copy_from_slice(frame);
            let addr = self.frames.lend(f);
            self.tx.push(XdpDesc {
                addr,
                len: frame.len() as u32,
                options: XdpDescOptions::empty(),
            });
            taken += 1;
            sent += 1;
            bytes += frame.len() as u64;
        }
        self.tx.submit();
        self.kick_tx(io);
        io.counters.tx(sent, bytes);
        self.qstats().tx_frames.fetch_add(sent, Ordering::Relaxed);
        for p in pkts.drain(..taken) {
            io.free(p);
        }
        taken
    }

    fn complete(&mut self, _io: &mut Io<'_>, op: u8, _tag: u32, _res: i32, flags: u32) {
        // The poll only wakes the worker; rx_burst reads the ring whether or not.
        self.wake.complete(op, flags);
    }

    fn housekeeping(&mut self, io: &mut Io<'_>) {
        if self.wake.stopping() {
            return;
        }
        self.reclaim_tx();
        self.kick_tx(io);
        self.refresh_stats(io.now);
    }

    fn idle(&mut self) -> bool {
        // Frames that came after the last burst keep the worker awake.
        self.rx.available() == 0
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        self.wake.stop(io, self.fd.as_fd())
    }

    /// Received frames are copied into pool buffers handed on in the same `rx_burst`;
    /// frames to send are copied into UMEM frames and freed within one `tx_burst`.
    fn max_held(&self, _pool: &switch::Pool) -> usize {
        0
    }
}

/// A new AF_XDP socket.
fn xsk_socket() -> std::io::Result<OwnedFd> {
    rustix::net::socket_with(
        rustix::net::AddressFamily::XDP,
        rustix::net::SocketType::RAW,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(Into::into)
}

/// Opens an af-xdp port: one queue per socket, bound to interface queues
/// `start_queue..start_queue + queues`, with (unless `sock_fds` are given) our XDP
/// program attached in the mode asked for (none: native, then skb).
pub fn open(cfg: AfXdpConfig, ifindex: u32) -> Result<(Vec<AfXdpQueue>, Arc<AfXdpStats>), Error> {
    let ifname = cfg.ifname.clone();
    let ifname = ifname.as_str();
    if let Some(n) = rx_queues(ifname) {
        let last = u64::from(cfg.start_queue) + u64::from(cfg.queues);
        if last > u64::from(n) {
            return Err(Error::Config(format!(
                "af-xdp ifname={ifname}: queues {}..{} do not exist: {ifname} has {n} receive queue{}",
                cfg.start_queue,
                last - 1,
                if n == 1 { "" } else { "s" }
            )));
        }
    }
    let inhibit = cfg.sock_fds.is_some();
    let mut cfg = cfg;
    let given = cfg.sock_fds.take();
    let mut socks = Vec::new();
    match given {
        Some(fds) => {
            for fd in fds {
                let domain = rustix::net::sockopt::socket_domain(&fd);
                if domain != Ok(rustix::net::AddressFamily::XDP) {
                    return Err(Error::BadFd {
                        fd: fd.as_raw_fd(),
                        why: "is not an AF_XDP socket".into(),
                    });
                }
                socks.push(fd);
            }
        }
        None => {
            for i in 0..cfg.queues {
                socks.push(xsk_socket().map_err(step(
                    ifname,
                    format!(
                        "failed to create AF_XDP socket for {ifname} queue_id: {}",
                        cfg.start_queue + i
                    ),
                ))?);
            }
        }
    }
    let mut stats = AfXdpStats {
        mode: None,
        queues: (0..cfg.queues).map(|_| QueueStats::default()).collect(),
    };
    // The program and map come first, so that the mode is known before the queues
    // share the stats.
    let prepared = if inhibit {
        None
    } else {
        let entries = rx_queues(ifname)
            .unwrap_or(0)
            .max(cfg.start_queue + cfg.queues);
        let map = xskmap(entries).map_err(step(ifname, "creating the XSKMAP".into()))?;
        let prog = load_program(map.as_fd()).map_err(|e| {
            Error::Config(format!(
                "af-xdp ifname={ifname}: loading the XDP program: {e}"
            ))
        })?;
        Some((map, prog))
    };
    let mut link = None;
    if let Some((_, prog)) = &prepared {
        let modes = match cfg.mode {
            Some(m) => vec![m],
            None => vec![XdpMode::Native, XdpMode::Skb],
        };
        let mut last = None;
        for m in modes {
            match attach(prog.as_fd(), ifindex, m.flags()) {
                Ok(l) => {
                    link = Some(l);
                    stats.mode = Some(m);
                    break;
                }
                Err(e) => last = Some((m, e)),
            }
        }
        if link.is_none() {
            let (m, e) = last.expect("one mode tried");
            return Err(Error::AfXdp {
                ifname: ifname.to_string(),
                what: format!("attaching the XDP program in {} mode", m.as_str()),
                source: e,
            });
        }
    }
    let stats = Arc::new(stats);
    let mut queues = Vec::new();
    for (i, fd) in socks.into_iter().enumerate() {
        let q = cfg.start_queue + i as u32;
        queues.push(AfXdpQueue::create(fd, &cfg, ifindex, i, q, stats.clone())?);
    }
    match (prepared, link) {
        (Some((map, prog)), Some(link)) => {
            for q in &queues {
                let queue = q.qstats().queue.load(Ordering::Relaxed);
                xskmap_set(map.as_fd(), queue, q.fd.as_fd()).map_err(step(
                    ifname,
                    format!("adding the socket of queue {queue} to the XSKMAP"),
                ))?;
            }
            let a = Arc::new(Attachment {
                _link: link,
                _prog: prog,
                _map: map,
            });
            for q in &mut queues {
                q._attachment = Some(a.clone());
            }
        }
        _ => {
            // As QEMU: with inhibit=on someone else's program must be there.
            if !matches!(attached_prog_id(ifindex), Ok(Some(_))) {
                return Err(Error::Config(format!(
                    "no XDP program loaded on '{ifname}', ifindex: {ifindex}"
                )));
            }
        }
    }
    Ok((queues, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring laid out as the kernel lays one out (producer, consumer, flags, then the
    /// entries), in memory reached only through one raw pointer: the test plays the
    /// kernel.
    struct FakeRing {
        mem: *mut u64,
        words: usize,
    }

    const N: u32 = 8;
    const OFF: XdpRingOffset = XdpRingOffset {
        producer: 0,
        consumer: 64,
        desc: 192,
        flags: Some(128),
    };

    impl FakeRing {
        fn new() -> FakeRing {
            let words = (192 + N as usize * 16) / 8;
            let mem = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<u64>();
            FakeRing { mem, words }
        }
        fn base(&self) -> NonNull<u8> {
            NonNull::new(self.mem.cast()).unwrap()
        }
        fn len(&self) -> usize {
            self.words * 8
        }
        fn ptrs<T>(&self) -> RingPtrs<T> {
            // SAFETY: the memory lives until the FakeRing drops, after the rings.
            unsafe { RingPtrs::new(self.base(), self.len(), &OFF, N) }.unwrap()
        }
        fn word(&self, at: usize) -> u32 {
            // SAFETY: an aligned word inside the allocation.
            unsafe { (*self.mem.cast::<u8>().add(at).cast::<AtomicU32>()).load(Ordering::SeqCst) }
        }
        fn set_word(&self, at: usize, v: u32) {
            // SAFETY: as `word`.
            unsafe {
                (*self.mem.cast::<u8>().add(at).cast::<AtomicU32>()).store(v, Ordering::SeqCst)
            }
        }
        fn entry(&self, i: u32) -> u64 {
            // SAFETY: an entry inside the allocation.
            unsafe { self.mem.add(192 / 8 + (i & (N - 1)) as usize).read() }
        }
        fn set_entry(&self, i: u32, v: u64) {
            // SAFETY: as `entry`.
            unsafe { self.mem.add(192 / 8 + (i & (N - 1)) as usize).write(v) }
        }
    }

    impl Drop for FakeRing {
        fn drop(&mut self) {
            let slice = std::ptr::slice_from_raw_parts_mut(self.mem, self.words);
            // SAFETY: made by Box::into_raw of a boxed slice of this length.
            drop(unsafe { Box::from_raw(slice) });
        }
    }

    #[test]
    fn producer_fills_exactly_and_wraps() {
        let r = FakeRing::new();
        let mut p = Producer::<u64>::new(r.ptrs());
        for i in 0..N {
            assert!(p.push(100 + u64::from(i)));
        }
        // Exactly full: the next is refused and nothing is written.
        assert!(!p.push(999));
        assert_eq!(r.word(0), 0, "nothing published before submit");
        p.submit();
        assert_eq!(r.word(0), N);
        assert_eq!(p.outstanding(), N);
        // The kernel consumes 3: three more fit, at the wrapped slots.
        r.set_word(64, 3);
        for i in 0..3 {
            assert!(p.push(200 + i));
        }
        assert!(!p.push(999));
        p.submit();
        assert_eq!(r.entry(N), 200);
        assert_eq!(r.entry(N + 2), 202);
        assert_eq!(r.entry(3), 103);
        // The wakeup flag is read from the flags word.
        assert!(!p.needs_wakeup());
        r.set_word(128, 1);
        assert!(p.needs_wakeup());
    }

    #[test]
    fn consumer_takes_what_was_published_and_wraps() {
        let r = FakeRing::new();
        let mut c = Consumer::<u64>::new(r.ptrs());
        assert_eq!(c.pop(), None, "empty");
        // Indices near u32::MAX wrap correctly too.
        r.set_word(64, u32::MAX - 1);
        r.set_word(0, u32::MAX - 1);
        let mut c = Consumer::<u64>::new(r.ptrs());
        for i in 0..4u32 {
            r.set_entry((u32::MAX - 1).wrapping_add(i), 10 + u64::from(i));
        }
        r.set_word(0, (u32::MAX - 1).wrapping_add(4));
        assert_eq!(c.available(), 4);
        let got: Vec<u64> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(got, vec![10, 11, 12, 13]);
        assert_eq!(r.word(64), u32::MAX - 1, "not released yet");
        c.release();
        assert_eq!(r.word(64), (u32::MAX - 1).wrapping_add(4));
        // A producer index further ahead than the ring is long is not believed.
        r.set_word(0, r.word(64).wrapping_add(N + 1));
        assert_eq!(c.available(), 0);
        assert_eq!(c.pop(), None);
    }

    #[test]
    fn ring_offsets_outside_the_mapping_are_refused() {
        let r = FakeRing::new();
        let (base, len) = (r.base(), r.len());
        let mut bad = OFF;
        bad.desc = len as u64 - 8;
        // SAFETY: the Vec lives for the call.
        assert!(unsafe { RingPtrs::<u64>::new(base, len, &bad, N) }.is_err());
        let mut bad = OFF;
        bad.consumer = 2;
        // SAFETY: as above.
        assert!(unsafe { RingPtrs::<u64>::new(base, len, &bad, N) }.is_err());
        // SAFETY: as above.
        assert!(unsafe { RingPtrs::<u64>::new(base, len, &OFF, 6) }.is_err());
    }

    #[test]
    fn a_frame_comes_back_only_once_and_only_if_lent() {
        let (mut frames, mut all) = Frames::new(4);
        let f2 = all.remove(2);
        let addr = frames.lend(f2);
        assert_eq!(addr, 2 * FRAME_SIZE as u64);
        assert_eq!(frames.lent(), 1);
        // Frame 1 was never lent; 9 is outside.
        assert_eq!(frames.reclaim(FRAME_SIZE as u64), None);
        assert_eq!(frames.reclaim(9 * FRAME_SIZE as u64), None);
        assert_eq!(frames.reclaim(u64::MAX), None);
        assert_eq!(frames.reclaim(addr), Some(Frame(2)));
        assert_eq!(frames.reclaim(addr), None, "a second return is refused");
        assert_eq!(frames.lent(), 0);
    }

    #[test]
    fn rx_spans_stay_inside_their_frame() {
        let d = |addr, len| XdpDesc {
            addr,
            len,
            options: XdpDescOptions::empty(),
        };
        assert_eq!(rx_span(&d(4096 + 256, 60)), Some((4096, 256..316)));
        assert_eq!(rx_span(&d(8192, 4096)), Some((8192, 0..4096)));
        assert_eq!(rx_span(&d(8192 + 1, 4096)), None);
        assert_eq!(rx_span(&d(u64::MAX, u32::MAX)), None);
    }

    #[test]
    fn the_program_is_the_six_documented_instructions() {
        let p = program(7);
        let bytes: Vec<u8> = p
            .iter()
            .flat_map(|i| {
                let mut b = vec![i.code, i.regs];
                b.extend_from_slice(&i.off.to_le_bytes());
                b.extend_from_slice(&i.imm.to_le_bytes());
                b
            })
            .collect();
        #[rustfmt::skip]
        let want: [u8; 48] = [
            0x61, 0x12, 16, 0, 0, 0, 0, 0,   // r2 = *(u32 *)(r1 + 16)
            0x18, 0x11, 0, 0, 7, 0, 0, 0,    // r1 = map fd 7 (pseudo map fd)
            0, 0, 0, 0, 0, 0, 0, 0,          //   (upper half)
            0xb7, 0x03, 0, 0, 2, 0, 0, 0,    // r3 = XDP_PASS
            0x85, 0x00, 0, 0, 51, 0, 0, 0,   // call bpf_redirect_map
            0x95, 0, 0, 0, 0, 0, 0, 0,       // exit
        ];
        assert_eq!(bytes, want);
    }

    #[test]
    fn a_link_reply_gives_the_program_id() {
        // nlmsghdr, ifinfomsg, IFLA_MTU, then IFLA_XDP (nested) {ATTACHED, PROG_ID}.
        let mut m = vec![0u8; 32];
        m[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        let attr = |ty: u16, payload: &[u8]| {
            let mut a = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
            a.extend_from_slice(&ty.to_ne_bytes());
            a.extend_from_slice(payload);
            while a.len() & 3 != 0 {
                a.push(0);
            }
            a
        };
        m.extend(attr(4, &1500u32.to_ne_bytes()));
        let mut nested = attr(2, &[1]);
        nested.extend(attr(IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()));
        m.extend(attr(IFLA_XDP | 0x8000, &nested));
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        assert_eq!(parse_link_reply(&m).unwrap(), Some(42));
        // No IFLA_XDP: none.
        let mut short = m[..40].to_vec();
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        assert_eq!(parse_link_reply(&short).unwrap(), None);
        // An error reply carries errno.
        let mut e = vec![0u8; 36];
        e[0..4].copy_from_slice(&36u32.to_ne_bytes());
        e[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        e[16..20].copy_from_slice(&(-libc::ENODEV).to_ne_bytes());
        assert_eq!(
            parse_link_reply(&e).unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        assert!(parse_link_reply(&[1, 2]).is_err());
    }
}
