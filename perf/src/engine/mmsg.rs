//! `sendmmsg` / `recvmmsg`: one system call per burst of datagrams, for every engine
//! whose socket carries one frame per message (UDP, AF_PACKET, unix datagram).
//!
//! The header arrays are built on the stack for each call and point into buffers the
//! caller owns for the length of the call, so no raw pointer outlives a call.

use std::io;
use std::os::fd::RawFd;

use crate::engine::RX_FRAME_MAX;
use crate::frame;
use crate::tally::Tally;

/// Most frames moved by one call.
pub const MAX_BURST: usize = 64;

/// Real send errors of a socket: how many and the last one.
#[derive(Debug, Default)]
pub struct TxErrors {
    pub count: u64,
    pub last: Option<String>,
}

impl TxErrors {
    pub fn get(&self) -> (u64, Option<String>) {
        (self.count, self.last.clone())
    }
}

/// Sends up to [`MAX_BURST`] of `frames` on connected (or bound) socket `fd` without
/// blocking; returns how many the kernel took. "Try again" and "no buffer space" return
/// 0 quietly (the caller offers the frames again); other errors are counted in `errors`.
pub fn send_burst(fd: RawFd, frames: &[Vec<u8>], errors: &mut TxErrors) -> usize {
    let n = frames.len().min(MAX_BURST);
    if n == 0 {
        return 0;
    }
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
    let mut iov: [libc::iovec; MAX_BURST] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; MAX_BURST] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        iov[i].iov_base = frames[i].as_ptr() as *mut libc::c_void;
        iov[i].iov_len = frames[i].len();
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdr[..n]` points at `iov[..n]`, which point at `frames`, all alive and
    // unmoved for the call; the kernel only reads the frame bytes.
    let rc = unsafe { libc::sendmmsg(fd, hdr.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    if rc >= 0 {
        return rc as usize;
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {}
        _ => {
            errors.count += 1;
            errors.last = Some(err.to_string());
        }
    }
    0
}

/// `UDP_SEGMENT` from <linux/udp.h>: the cmsg giving a send's segment size.
const UDP_SEGMENT: i32 = 103;
/// Most segments the kernel takes in one GSO send (`UDP_MAX_SEGMENTS`, kernels >= 5.x
/// take 128; 64 keeps older ones happy).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most payload bytes of one GSO send (an IPv4 datagram's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;

/// What a GSO send did.
pub enum Gso {
    /// The kernel took this many frames.
    Sent(usize),
    /// The socket or kernel cannot segment (or the frames differ in size): use
    /// [`send_burst`] instead.
    Unsupported,
}

/// Sends up to [`GSO_MAX_SEGMENTS`] equal-sized frames as one UDP GSO datagram: one
/// trip through the stack for the lot, cut into one datagram per frame before it reaches
/// the receiving socket, which sees ordinary datagrams. All or nothing.
pub fn send_gso(fd: RawFd, frames: &[Vec<u8>], errors: &mut TxErrors) -> Gso {
    let Some(seg) = frames.first().map(|f| f.len()) else {
        return Gso::Sent(0);
    };
    let n = frames
        .len()
        .min(GSO_MAX_SEGMENTS)
        .min((GSO_MAX_BYTES / seg.max(1)).max(1));
    if n < 2 || seg > u16::MAX as usize || frames[..n].iter().any(|f| f.len() != seg) {
        return Gso::Unsupported;
    }
    // SAFETY: iovec is a plain C struct for which all-zero is valid.
    let mut iov: [libc::iovec; GSO_MAX_SEGMENTS] = unsafe { std::mem::zeroed() };
    for (v, f) in iov.iter_mut().zip(&frames[..n]) {
        v.iov_base = f.as_ptr() as *mut libc::c_void;
        v.iov_len = f.len();
    }
    // Room for one cmsg carrying a u16, 8-byte aligned as cmsghdr requires.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is a plain C struct for which all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(msg.msg_controllen <= std::mem::size_of_val(&control));
    // SAFETY: `msg` points at `control`, which is large enough for one cmsg with a u16
    // (checked above) and aligned for cmsghdr; CMSG_FIRSTHDR therefore returns a valid,
    // writable header inside it and CMSG_DATA a pointer to its 2 data bytes.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg as u16);
    }
    // SAFETY: `msg` points at `iov[..n]` (which point at live frames) and at `control`,
    // all alive and unmoved for the call; the kernel only reads them.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if rc >= 0 {
        return Gso::Sent(n);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => Gso::Sent(0),
        // The kernel or route cannot segment this: the caller falls back for good.
        Some(libc::EINVAL) | Some(libc::EIO) | Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP) => {
            Gso::Unsupported
        }
        _ => {
            errors.count += 1;
            errors.last = Some(err.to_string());
            Gso::Sent(0)
        }
    }
}

/// Receive buffers for [`recv_burst`]: one per message of a burst.
pub struct RxBufs {
    bufs: Vec<Vec<u8>>,
}

impl RxBufs {
    /// Buffers for `burst` frames of up to [`RX_FRAME_MAX`] bytes.
    pub fn new(burst: usize) -> RxBufs {
        RxBufs {
            bufs: vec![vec![0u8; RX_FRAME_MAX]; burst.clamp(1, MAX_BURST)],
        }
    }
}

/// Reads up to one burst of datagrams from `fd` without blocking, accounts for each in
/// `tally` (all stamped with the time the call returned), and returns how many.
pub fn recv_burst(fd: RawFd, rx: &mut RxBufs, tally: &mut Tally) -> usize {
    recv_each(fd, rx, |d, now| tally.record(d, now))
}

/// Reads up to one burst of datagrams from `fd` without blocking and hands each to
/// `each` with the time the call returned; returns how many.
pub fn recv_each(fd: RawFd, rx: &mut RxBufs, mut each: impl FnMut(&[u8], u64)) -> usize {
    let n = rx.bufs.len();
    // SAFETY: iovec and mmsghdr are plain C structs for which all-zero is valid.
    let mut iov: [libc::iovec; MAX_BURST] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut hdr: [libc::mmsghdr; MAX_BURST] = unsafe { std::mem::zeroed() };
    for (i, buf) in rx.bufs.iter_mut().enumerate() {
        iov[i].iov_base = buf.as_mut_ptr().cast();
        iov[i].iov_len = buf.len();
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `hdr[..n]` points at `iov[..n]`, which point at the `n` buffers of `rx`,
    // each writable for its whole length and alive for the call.
    let rc = unsafe {
        libc::recvmmsg(
            fd,
            hdr.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc <= 0 {
        return 0;
    }
    let now = frame::now_ns();
    let got = rc as usize;
    for (h, buf) in hdr.iter().zip(&rx.bufs).take(got) {
        let len = (h.msg_len as usize).min(RX_FRAME_MAX);
        each(&buf[..len], now);
    }
    got
}
