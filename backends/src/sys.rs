//! The few raw system interfaces the backends need beyond `std` and `socket2`:
//! TUN/TAP ioctls and sockaddr conversion. Every `unsafe` block in the crate's setup
//! code lives here.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// TUNSETIFF: `_IOW('T', 202, int)`.
pub const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// TUNGETIFF: `_IOR('T', 210, unsigned int)`.
pub const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
/// TUNSETOFFLOAD flags (linux/if_tun.h): checksum, TSO over IPv4 / IPv6, TSO with ECN,
/// USO over IPv4 / IPv6 (Linux 6.2+).
pub const TUN_F_CSUM: libc::c_ulong = 0x01;
/// See [`TUN_F_CSUM`].
pub const TUN_F_TSO4: libc::c_ulong = 0x02;
/// See [`TUN_F_CSUM`].
pub const TUN_F_TSO6: libc::c_ulong = 0x04;
/// See [`TUN_F_CSUM`].
pub const TUN_F_TSO_ECN: libc::c_ulong = 0x08;
/// See [`TUN_F_CSUM`].
pub const TUN_F_USO4: libc::c_ulong = 0x20;
/// See [`TUN_F_CSUM`].
pub const TUN_F_USO6: libc::c_ulong = 0x40;
/// TUNSETOFFLOAD: `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// TUNSETSNDBUF: `_IOW('T', 212, int)`.
pub const TUNSETSNDBUF: libc::c_ulong = 0x4004_54d4;
/// TUNSETVNETHDRSZ: `_IOW('T', 216, int)`.
pub const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// TUNGETFEATURES: `_IOR('T', 207, unsigned int)`.
pub const TUNGETFEATURES: libc::c_ulong = 0x8004_54cf;

/// Ethernet frames, no packet-information prefix.
pub const IFF_TAP: libc::c_short = 0x0002;
/// No `struct tun_pi` in front of frames.
pub const IFF_NO_PI: libc::c_short = 0x1000;
/// A `virtio_net_hdr` in front of frames.
pub const IFF_VNET_HDR: libc::c_short = 0x4000;
/// One of several queues of the device.
pub const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

/// `struct ifreq` restricted to what TUN/TAP uses: the name and the flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfReq {
    /// Interface name, NUL-terminated.
    pub name: [u8; libc::IFNAMSIZ],
    /// IFF_* flags.
    pub flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    /// An ifreq for `name` (empty: let the kernel choose) and `flags`.
    pub fn new(name: &str, flags: libc::c_short) -> IfReq {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags,
            _pad: [0; 22],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        r
    }

    /// The interface name as the kernel wrote it.
    pub fn name(&self) -> String {
        CStr::from_bytes_until_nul(&self.name)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// `ioctl(fd, req, &mut IfReq)`.
pub fn ioctl_ifreq(fd: BorrowedFd<'_>, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: `ifr` is a live, writable struct of the size the TUN ioctls read and write
    // (struct ifreq is 40 bytes on Linux, as IfReq is).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, ifr as *mut IfReq) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, &mut int)` for the TUN ioctls that take an int.
pub fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong, val: &mut libc::c_int) -> io::Result<()> {
    // SAFETY: `val` is a live int, which is what these ioctls read or write.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, val as *mut libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `ioctl(fd, req, value)` for the TUN ioctls that take an unsigned value directly.
pub fn ioctl_val(fd: BorrowedFd<'_>, req: libc::c_ulong, val: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the request takes its argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, val) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// SIOCGIFMTU / SIOCSIFMTU: an interface's MTU (an int in the ifreq union).
pub const SIOCGIFMTU: libc::c_ulong = 0x8921;
/// Sets an interface's MTU.
pub const SIOCSIFMTU: libc::c_ulong = 0x8922;
/// SIOCGIFHWADDR / SIOCSIFHWADDR: an interface's MAC (a sockaddr in the union).
pub const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
/// Sets an interface's MAC.
pub const SIOCSIFHWADDR: libc::c_ulong = 0x8924;
/// SIOCGIFFLAGS / SIOCSIFFLAGS: an interface's IFF_* flags (a short in the union).
pub const SIOCGIFFLAGS: libc::c_ulong = 0x8913;
/// Sets an interface's flags.
pub const SIOCSIFFLAGS: libc::c_ulong = 0x8914;
/// SIOCGIFINDEX: an interface's index (an int in the union).
pub const SIOCGIFINDEX: libc::c_ulong = 0x8933;
/// SIOCBRADDIF: adds the interface whose index is in the union to the named bridge.
pub const SIOCBRADDIF: libc::c_ulong = 0x89a2;

/// `struct ifreq` with its union as bytes, for the socket ioctls that keep an int
/// (MTU, ifindex), a short (flags) or a sockaddr (MAC) there.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IfReqData {
    /// Interface name, NUL-terminated.
    pub name: [u8; libc::IFNAMSIZ],
    /// The union, in the kernel's byte order (native).
    pub data: [u8; 24],
}

impl IfReqData {
    /// An ifreq for interface `name` with an all-zero union.
    pub fn new(name: &str) -> IfReqData {
        IfReqData {
            name: IfReq::new(name, 0).name,
            data: [0; 24],
        }
    }

    /// The union's first int (MTU, ifindex).
    pub fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    /// Sets the union's first int.
    pub fn set_int(&mut self, v: libc::c_int) {
        self.data[..4].copy_from_slice(&v.to_ne_bytes());
    }

    /// The union's first short (flags).
    pub fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    /// Sets the union's first short.
    pub fn set_short(&mut self, v: libc::c_short) {
        self.data[..2].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `ioctl(fd, req, &mut IfReqData)`, for the SIOC* requests above on any socket.
pub fn ioctl_ifreq_data(
    fd: BorrowedFd<'_>,
    req: libc::c_ulong,
    ifr: &mut IfReqData,
) -> io::Result<()> {
    // SAFETY: `ifr` is a live, writable 40-byte struct ifreq (name and union), which is
    // all these requests read or write.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, ifr as *mut IfReqData) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Receives one descriptor sent with SCM_RIGHTS along with at least one byte of data
/// (the bridge helper's protocol). `Ok(None)`: the peer closed without sending one.
/// Received descriptors are close-on-exec; any extra ones are closed.
pub fn recv_fd(sock: BorrowedFd<'_>) -> io::Result<Option<std::os::fd::OwnedFd>> {
    let mut byte = [0u8; 1];
    let (n, fd) = recv_with_fd(sock, &mut byte, 0)?;
    if n == 0 && fd.is_none() {
        return Ok(None);
    }
    Ok(fd)
}

/// Most descriptors one message carries: more given to [`send_with_fds`] are not sent,
/// more received by [`recv_with_fds`] than its buffer holds are truncated by the kernel
/// (MSG_CTRUNC) and never reach our table.
pub const MAX_FDS: usize = 16;

/// Receives one message into `buf` with the first descriptor that came with it
/// (SCM_RIGHTS; close-on-exec; any others are closed). Returns the bytes read (0: the
/// peer closed) and the descriptor. `flags` as for recvmsg(2) (`MSG_DONTWAIT`).
pub fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Option<std::os::fd::OwnedFd>)> {
    let (n, fds) = recv_with_fds(sock, buf, flags)?;
    Ok((n, fds.into_iter().next()))
}

/// Receives one message into `buf` with every descriptor that came with it (SCM_RIGHTS,
/// close-on-exec, up to [`MAX_FDS`]). Returns the bytes read (0: the peer closed) and
/// the descriptors. `flags` as for recvmsg(2) (`MSG_DONTWAIT`).
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::FromRawFd;
    // Room for MAX_FDS descriptors and then some (headers, a second cmsg), 8-aligned.
    let mut cbuf = [0u64; 16 + MAX_FDS / 2];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (the caller's live buffer) and `cbuf` (a live,
        // 8-aligned buffer of the length given), both outliving the call.
        let n =
            unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
    // `msg_controllen`; each SCM_RIGHTS payload holds `(cmsg_len - CMSG_LEN(0)) / 4`
    // descriptors, which are now ours (read unaligned: CMSG_DATA need not be aligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                for i in 0..count {
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(
                        data.add(i).read_unaligned(),
                    ));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n, fds))
}

/// Sends `buf` as one message, with `fds` attached (SCM_RIGHTS) when there are any
/// (the first [`MAX_FDS`] of them).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    let mut cbuf = [0u64; 2 + MAX_FDS / 2];
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let fds = &fds[..fds.len().min(MAX_FDS)];
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: the control buffer (80 bytes, 8-aligned) holds one cmsghdr with up to
        // MAX_FDS ints (CMSG_SPACE(64) = 80 bytes); CMSG_FIRSTHDR points at its start.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (the caller's buffer) and `cbuf`, both live.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A new non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// A private copy (close-on-exec) of descriptor number `fd`, which the caller names but
/// does not own: the original stays as it was.
pub fn dup_fd(fd: RawFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; a negative result is
    // checked before the new descriptor is wrapped.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `n` is a descriptor that was just created for us and nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(n) })
}

/// The socket type (SOCK_STREAM, SOCK_DGRAM) of a descriptor, or None if not a socket.
pub fn socket_type(fd: BorrowedFd<'_>) -> Option<i32> {
    socket2::SockRef::from(&fd).r#type().ok().map(i32::from)
}

/// Clears O_NONBLOCK: io_uring completes requests on non-blocking files with EAGAIN at
/// once instead of waiting for readiness.
pub fn set_blocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL take an int and touch only the file's status flags.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets O_NONBLOCK, for descriptors the worker reads and writes itself.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL take an int and touch only the file's status flags.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl < 0 || libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A socket address in the kernel's layout, with its length.
#[derive(Clone, Copy)]
pub struct RawAddr {
    /// The address.
    pub storage: libc::sockaddr_storage,
    /// Its length.
    pub len: libc::socklen_t,
}

impl RawAddr {
    /// Converts a std address.
    pub fn from_std(a: &SocketAddr) -> RawAddr {
        let s = socket2::SockAddr::from(*a);
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = s.len() as usize;
        // SAFETY: both are sockaddr_storage-sized plain data and `len` fits in both.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.as_ptr().cast::<u8>(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                len,
            )
        };
        RawAddr {
            storage,
            len: len as libc::socklen_t,
        }
    }

    /// Converts back to a std address (IPv4 or IPv6).
    pub fn to_std(&self) -> Option<SocketAddr> {
        match i32::from(self.storage.ss_family) {
            libc::AF_INET => {
                // SAFETY: the family says the storage holds a sockaddr_in.
                let a: &libc::sockaddr_in =
                    unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in) };
                Some(SocketAddr::V4(SocketAddrV4::new(
                    u32::from_be(a.sin_addr.s_addr).into(),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                // SAFETY: the family says the storage holds a sockaddr_in6.
                let a: &libc::sockaddr_in6 =
                    unsafe { &*(&self.storage as *const _ as *const libc::sockaddr_in6) };
                Some(SocketAddr::V6(SocketAddrV6::new(
                    a.sin6_addr.s6_addr.into(),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }

    /// An empty address buffer for the kernel to fill.
    pub fn empty() -> RawAddr {
        RawAddr {
            // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
            storage: unsafe { std::mem::zeroed() },
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }
}

/// Runs `f` with the process's file-creation mask set to `mask`, then restores it: for
/// creating a file (a unix socket) that is never accessible to others, not even between
/// its creation and a chmod. The mask is process-wide; the caller makes sure no other
/// thread creates files meanwhile (pollswitch's workers never do).
pub fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask only swaps the process's file-creation mask; it touches no memory.
    let old = unsafe { libc::umask(mask) };
    let out = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    out
}

/// Maps `len` bytes of `fd` from its start, shared and writable: the start of a new
/// mapping, which the caller owns (and must `munmap` once, with `len`).
pub fn map_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<std::ptr::NonNull<u8>> {
    // SAFETY: a new mapping at an address the kernel picks; no existing memory changes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    std::ptr::NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// poll(2) over `fds` for at most `timeout_ms` (negative: no limit); returns how many
/// have events (their `revents` set). An interrupted wait returns 0.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of pollfd of the length given.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// Copies up to `buf.len()` bytes waiting on stream socket `fd` without taking them
/// (`MSG_PEEK`) or waiting (`MSG_DONTWAIT`).
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is writable for its whole length; `fd` is a socket the caller holds.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size_and_names_round_trip() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        assert_eq!(IfReq::new("tap7", 0).name(), "tap7");
        assert_eq!(IfReq::new("a-very-long-interface-name", 0).name().len(), 15);
    }

    #[test]
    fn raw_addresses_round_trip() {
        for s in ["127.0.0.1:5555", "[::1]:80", "0.0.0.0:0"] {
            let a: SocketAddr = s.parse().unwrap();
            assert_eq!(RawAddr::from_std(&a).to_std(), Some(a));
        }
    }
}
