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
