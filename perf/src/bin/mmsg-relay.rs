//! `mmsg-relay`: the baseline pollswitch's io_uring UDP path must beat — a plain
//! busy-polling `recvmmsg`/`sendmmsg` loop between UDP ports, with the semantics of
//! pollswitch `socket,udp=REMOTE,localaddr=LOCAL` ports on one hub (every datagram to
//! every other port, never back).
//!
//! ```text
//! mmsg-relay [-core N] LOCAL=REMOTE LOCAL=REMOTE ...
//! ```
//!
//! It prints `mmsg-relay: ready` on stderr once bound and the number of datagrams it
//! relayed when stopped with SIGINT/SIGTERM.
#![allow(unsafe_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

const BURST: usize = 32;
const BUF: usize = 9300;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(_) => {
            eprintln!("mmsg-relay: IPv6 is not supported");
            std::process::exit(2);
        }
    };
    (ss, len as libc::socklen_t)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "-core") {
        let core: usize = args
            .get(i + 1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| {
                eprintln!("mmsg-relay: -core needs a number");
                std::process::exit(2)
            });
        args.drain(i..i + 2);
        if let Err(e) = testbed::cpu::pin_current_thread(&[core]) {
            eprintln!("mmsg-relay: pin to core {core}: {e}");
            std::process::exit(1);
        }
    }
    if args.len() < 2 {
        eprintln!("usage: mmsg-relay [-core N] LOCAL=REMOTE LOCAL=REMOTE ...");
        std::process::exit(2);
    }
    let mut ports = Vec::new();
    for a in &args {
        let Some((l, r)) = a.split_once('=') else {
            eprintln!("mmsg-relay: '{a}': expected LOCAL=REMOTE");
            std::process::exit(2);
        };
        let (Ok(l), Ok(r)) = (l.parse::<SocketAddr>(), r.parse::<SocketAddr>()) else {
            eprintln!("mmsg-relay: '{a}': bad address");
            std::process::exit(2);
        };
        let s = UdpSocket::bind(l).unwrap_or_else(|e| {
            eprintln!("mmsg-relay: bind {l}: {e}");
            std::process::exit(1)
        });
        s.set_nonblocking(true).expect("non-blocking socket");
        ports.push((s, sockaddr(&r)));
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    eprintln!("mmsg-relay: ready ({} ports)", ports.len());
    let mut bufs = vec![[0u8; BUF]; BURST];
    // SAFETY: iovec and mmsghdr are plain data; all-zero values are valid.
    let mut iov: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BURST];
    // SAFETY: as above.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BURST];
    let mut relayed: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        for src in 0..ports.len() {
            for i in 0..BURST {
                iov[i] = libc::iovec {
                    iov_base: bufs[i].as_mut_ptr().cast(),
                    iov_len: BUF,
                };
                // SAFETY: plain data reset.
                msgs[i] = unsafe { std::mem::zeroed() };
                msgs[i].msg_hdr.msg_iov = &mut iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            // SAFETY: the headers point at live iovecs and buffers of the stated sizes.
            let n = unsafe {
                libc::recvmmsg(
                    ports[src].0.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    BURST as u32,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            for (i, m) in msgs.iter().take(n).enumerate() {
                iov[i].iov_len = m.msg_len as usize;
            }
            for (dst, (sock, (addr, alen))) in ports.iter().enumerate() {
                if dst == src {
                    continue;
                }
                for m in msgs.iter_mut().take(n) {
                    m.msg_hdr.msg_name = (addr as *const libc::sockaddr_storage).cast_mut().cast();
                    m.msg_hdr.msg_namelen = *alen;
                }
                // SAFETY: the headers point at live iovecs (lengths set to the received
                // sizes) and a live destination address.
                let k = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
                if k > 0 {
                    relayed += k as u64;
                }
            }
        }
    }
    eprintln!("mmsg-relay: relayed {relayed} datagrams");
}
