//! `socket,mcast=` ports: every port in a multicast group sees every other's frames, one
//! bare Ethernet frame per datagram, and never its own.
//!
//! Everything runs inside a namespace of its own where only `lo` exists and the whole
//! multicast range is routed to it (`ip route add 224.0.0.0/4 dev lo`), so groups are
//! private to the test and nothing depends on the host's interfaces. The daemons run
//! there too, and the test's UDP ends are made there ([`Netns::enter`]).
//!
//! ```text
//!  UdpEnd a ─ udp ─ [ a ─ hub 0 ─ m0 ]─┐
//!                                      ├── group 239.x.y.z:port on lo
//!  UdpEnd b ─ udp ─ [ b ─ hub 1 ─ m1 ]─┘
//! ```

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::FromRawFd;

use common::{diff, expect_frame, expect_nothing, mac, Args, BCAST, ETH_EXP, QUIET, WAIT};
use tests::{frame, free_udp_port, run_ok, unique, Netns, QemuPeer, UdpEnd};

const SIZES: [usize; 4] = [14, 60, 1514, 9000];

/// A namespace with only `lo`, up, and the multicast range routed to it.
fn mcast_ns() -> Netns {
    let ns = Netns::new();
    run_ok(
        "ip",
        &["-n", &ns.name, "route", "add", "224.0.0.0/4", "dev", "lo"],
    );
    ns
}

/// A group address unique to this test run (the namespace keeps it private anyway) and
/// a port free inside `ns`.
fn group(ns: &Netns) -> (Ipv4Addr, u16) {
    let n = unique("g");
    let h = n
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()));
    let ip = Ipv4Addr::new(239, 77, (h >> 8) as u8, h as u8 | 1);
    (ip, ns.enter(free_udp_port))
}

/// A UDP socket on `port` (sharing it with the daemons' group sockets, as they do with
/// each other: SO_REUSEADDR) that has joined group `g`, in the calling thread's namespace.
fn group_member(g: Ipv4Addr, port: u16) -> UdpSocket {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a live c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_REUSEADDR: {}", std::io::Error::last_os_error());
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a live sockaddr_in and the length given is its size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind 0.0.0.0:{port}: {}",
        std::io::Error::last_os_error()
    );
    sock.join_multicast_v4(&g, &Ipv4Addr::UNSPECIFIED)
        .expect("join the group");
    sock.set_read_timeout(Some(WAIT)).unwrap();
    sock
}

/// Frames of every size from `from` arrive unchanged at each of `to`.
fn crosses(from: &UdpEnd, to: &[&UdpEnd], seed: u8, what: &str) {
    for (k, len) in SIZES.into_iter().enumerate() {
        let f = frame(BCAST, mac(seed), ETH_EXP, len, seed.wrapping_add(k as u8));
        from.send(&f);
        for (i, end) in to.iter().enumerate() {
            expect_frame(end, &f, &format!("{what}: {len} bytes to receiver {i}"));
        }
    }
}

#[test]
fn two_mcast_ports_exchange_frames_but_never_get_their_own() {
    let ns = mcast_ns();
    let (g, port) = group(&ns);
    let spec = format!("mcast={g}:{port}");
    let (mut a, mut b) = (ns.enter(UdpEnd::new), ns.enter(UdpEnd::new));
    let d = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!("socket,id=m0,{spec}"))
        .on_hub("m0", 0)
        .udp("b", 1, &mut b)
        .netdev(&format!("socket,id=m1,{spec}"))
        .on_hub("m1", 1)
        .start_in(&ns);
    crosses(&a, &[&b], 1, "a to b through the group");
    // Had m0 taken its own datagrams back, hub 0 would have handed them to a.
    expect_nothing(&a, "a: its own frames do not come back through the group");
    crosses(&b, &[&a], 2, "b to a through the group");
    expect_nothing(&b, "b: its own frames do not come back through the group");
    expect_nothing(&a, "a");
    d.stop_clean();
}

#[test]
fn mcast_ports_of_two_daemons_carry_bare_frames() {
    // Two daemons in one group, and the test itself as a third member: each datagram on
    // the group is exactly one frame, both ways.
    let ns = mcast_ns();
    let (g, port) = group(&ns);
    let spec = format!("socket,id=m,mcast={g}:{port}");
    let (mut a, mut b) = (ns.enter(UdpEnd::new), ns.enter(UdpEnd::new));
    let d1 = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&spec)
        .on_hub("m", 0)
        .start_in(&ns);
    let d2 = Args::new()
        .udp("b", 0, &mut b)
        .netdev(&spec)
        .on_hub("m", 0)
        .start_in(&ns);
    let member = ns.enter(|| group_member(g, port));
    let mut buf = vec![0u8; 65536];
    for (k, len) in SIZES.into_iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(&b, &f, &format!("{len} bytes from daemon 1 to daemon 2"));
        let (n, _) = member
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{len} bytes on the group: {e}"));
        assert_eq!(
            diff(&buf[..n], &f),
            None,
            "datagram on the group for {len} bytes"
        );
        // The member's own datagram is a frame for both daemons.
        let h = frame(mac(2), mac(3), ETH_EXP, len, 50 + k as u8);
        member.send_to(&h, (g, port)).unwrap();
        expect_frame(&a, &h, &format!("{len} bytes from the group to daemon 1"));
        expect_frame(&b, &h, &format!("{len} bytes from the group to daemon 2"));
        // The member hears its own datagram (loop), nothing else.
        let (n, _) = member.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &h[..]);
    }
    crosses(&b, &[&a], 9, "daemon 2 to daemon 1");
    member.set_read_timeout(Some(QUIET)).unwrap();
    let mut extra = 0;
    while member.recv_from(&mut buf).is_ok() {
        extra += 1;
    }
    assert_eq!(extra, SIZES.len(), "datagrams on the group for b's frames");
    expect_nothing(&a, "daemon 1");
    expect_nothing(&b, "daemon 2");
    d1.stop_clean();
    d2.stop_clean();
}

#[test]
fn mcast_interoperates_with_qemu() {
    let ns = mcast_ns();
    let (g, port) = group(&ns);
    let (mut a, mut q) = (ns.enter(UdpEnd::new), ns.enter(UdpEnd::new));
    let d = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!("socket,id=m,mcast={g}:{port}"))
        .on_hub("m", 0)
        .start_in(&ns);
    let qp = ns.enter(free_udp_port);
    q.set_target(SocketAddr::from(([127, 0, 0, 1], qp)));
    let _qemu = QemuPeer::hub(
        Some(&ns),
        &[
            &format!("socket,id=m,mcast={g}:{port}"),
            &format!(
                "socket,id=q,udp={},localaddr=127.0.0.1:{qp}",
                q.local_addr()
            ),
        ],
    );
    for (k, len) in SIZES.into_iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(
            &q,
            &f,
            &format!("{len} bytes pollswitch to QEMU over mcast"),
        );
        let h = frame(BCAST, mac(2), ETH_EXP, len, 100 + k as u8);
        q.send(&h);
        // QEMU hears its own multicast datagrams (loop on) and relays them back to q;
        // that is QEMU's business. pollswitch must deliver h to a, once.
        expect_frame(
            &a,
            &h,
            &format!("{len} bytes QEMU to pollswitch over mcast"),
        );
        let echoes: Vec<Vec<u8>> = q.drain(QUIET);
        assert!(
            echoes.iter().all(|e| *e == h),
            "q got something other than QEMU's echo of its own frame"
        );
    }
    expect_nothing(&a, "a: exactly one copy of each frame");
    d.stop_clean();
}

#[test]
fn different_groups_on_the_same_port_do_not_hear_each_other() {
    let ns = mcast_ns();
    let (g, port) = group(&ns);
    let g2 = Ipv4Addr::from(u32::from(g) ^ 0x0000_0100);
    let (mut a, mut b, mut c) = (
        ns.enter(UdpEnd::new),
        ns.enter(UdpEnd::new),
        ns.enter(UdpEnd::new),
    );
    // m0 and m1 in group g, m2 in group g2, all on the same UDP port.
    let d = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!("socket,id=m0,mcast={g}:{port}"))
        .on_hub("m0", 0)
        .udp("b", 1, &mut b)
        .netdev(&format!("socket,id=m1,mcast={g}:{port}"))
        .on_hub("m1", 1)
        .udp("c", 2, &mut c)
        .netdev(&format!("socket,id=m2,mcast={g2}:{port}"))
        .on_hub("m2", 2)
        .start_in(&ns);
    let f = frame(BCAST, mac(1), ETH_EXP, 100, 1);
    a.send(&f);
    expect_frame(&b, &f, &format!("a to b in group {g}"));
    expect_nothing(&c, &format!("c, in group {g2}: nothing from group {g}"));
    let h = frame(BCAST, mac(3), ETH_EXP, 100, 2);
    c.send(&h);
    expect_nothing(&a, &format!("a, in group {g}: nothing from group {g2}"));
    expect_nothing(&b, &format!("b, in group {g}: nothing from group {g2}"));
    d.stop_clean();
}

#[test]
fn mcast_with_localaddr() {
    let ns = mcast_ns();
    let (g, port) = group(&ns);
    let spec = format!("mcast={g}:{port},localaddr=127.0.0.1");
    let (mut a, mut b) = (ns.enter(UdpEnd::new), ns.enter(UdpEnd::new));
    let d = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!("socket,id=m0,{spec}"))
        .on_hub("m0", 0)
        .udp("b", 1, &mut b)
        .netdev(&format!("socket,id=m1,{spec}"))
        .on_hub("m1", 1)
        .start_in(&ns);
    crosses(&a, &[&b], 1, "a to b, localaddr=127.0.0.1");
    crosses(&b, &[&a], 2, "b to a, localaddr=127.0.0.1");
    expect_nothing(&a, "a");
    expect_nothing(&b, "b");
    d.stop_clean();
}
