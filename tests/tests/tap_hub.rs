//! `tap` ports: taps the daemon creates (in its own namespace), moved into namespaces the
//! test makes, with real kernel traffic (ping, UDP, TCP) and exact frames put on and
//! taken off the link with a raw socket.
//!
//! ```text
//!  netns A: 10.x.0.1 ── tap ta ─ hubport ┐
//!                                        ├─ hub 0 ── socket,udp= ── UdpEnd (the test)
//!  netns B: 10.x.0.2 ── tap tb ─ hubport ┘
//! ```
//!
//! Every test that stops a daemon checks exit status 0 and a full pool, and that the taps
//! the daemon created are gone afterwards.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{
    diff, expect_frame, expect_nothing, mac, ns_with, ping, tap_spec, Args, BCAST, ETH_EXP, QUIET,
    WAIT,
};
use tests::{
    bin_path, frame, require_tool, run, run_ok, unique, wait_until, Daemon, Netns, RawSock,
    TempDir, UdpEnd,
};

/// How long a tap may stay around after the daemon closed it (io_uring teardown).
const GONE: Duration = Duration::from_secs(10);

/// Whether link `ifname` exists in `ns` (`None`: this process's namespace).
fn link_exists(ns: Option<&Netns>, ifname: &str) -> bool {
    match ns {
        Some(ns) => ns
            .exec(&["ip", "link", "show", "dev", ifname])
            .status
            .success(),
        None => run("ip", &["link", "show", "dev", ifname]).status.success(),
    }
}

fn assert_gone(ns: Option<&Netns>, ifname: &str) {
    assert!(
        wait_until(GONE, || !link_exists(ns, ifname)),
        "tap {ifname} still exists {GONE:?} after the daemon exited"
    );
}

/// `IFF_VNET_HDR` and `IFF_MULTI_QUEUE` from `<linux/if_tun.h>`.
const IFF_VNET_HDR: u32 = 0x4000;
const IFF_MULTI_QUEUE: u32 = 0x0100;

/// The TUN/TAP flags of tap `ifname` inside `ns` (sysfs `tun_flags`).
fn tun_flags(ns: &Netns, ifname: &str) -> u32 {
    let s = ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/tun_flags")]);
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).expect("hex tun_flags")
}

/// The MAC address of `ifname` inside `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> [u8; 6] {
    let s = ns.exec_ok(&["cat", &format!("/sys/class/net/{ifname}/address")]);
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex MAC"))
        .collect();
    v.try_into().expect("6-byte MAC")
}

/// Internet checksum of `data` (ones' complement of the ones' complement sum).
fn inet_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP pseudo-header sum for IPv4.
fn pseudo_sum(src: Ipv4Addr, dst: Ipv4Addr, udp_len: usize) -> u32 {
    let (s, d) = (src.octets(), dst.octets());
    [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        17,
        udp_len as u16,
    ]
    .iter()
    .map(|&w| u32::from(w))
    .sum()
}

/// Source, destination and payload of a UDP datagram.
type UdpDatagram = (SocketAddrV4, SocketAddrV4, Vec<u8>);

/// An Ethernet/IPv4/UDP frame with correct checksums.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.ip().octets());
    ip.extend_from_slice(&dst.ip().octets());
    let c = inet_sum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = inet_sum(&udp, pseudo_sum(*src.ip(), *dst.ip(), udp_len));
    udp[6..8].copy_from_slice(&(if c == 0 { 0xffff } else { c }).to_be_bytes());
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// A UDP datagram inside an Ethernet frame, checked: IPv4 without options, header
/// checksum right, UDP checksum right (or absent). Returns (src, dst, payload).
fn parse_udp(f: &[u8]) -> Option<UdpDatagram> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 {
        return None;
    }
    let ip = &f[14..34];
    assert_eq!(
        inet_sum(ip, 0),
        0,
        "IPv4 header checksum of a frame from the tap"
    );
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &f[34..14 + total];
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    assert_eq!(udp_len, udp.len(), "UDP length");
    if udp[6..8] != [0, 0] {
        assert_eq!(
            inet_sum(udp, pseudo_sum(src_ip, dst_ip, udp_len)),
            0,
            "UDP checksum of a frame from the tap (a partial checksum left for an offload \
             the switch does not do?)"
        );
    }
    let sp = u16::from_be_bytes([udp[0], udp[1]]);
    let dp = u16::from_be_bytes([udp[2], udp[3]]);
    Some((
        SocketAddrV4::new(src_ip, sp),
        SocketAddrV4::new(dst_ip, dp),
        udp[8..].to_vec(),
    ))
}

/// The next IPv4/UDP frame at `end` (skipping ARP and anything else), or `None`.
fn next_udp_frame(end: &UdpEnd) -> Option<(Vec<u8>, UdpDatagram)> {
    loop {
        let f = end.recv_timeout(WAIT)?;
        if let Some(p) = parse_udp(&f) {
            return Some((f, p));
        }
    }
}

fn write_script(dir: &TempDir, name: &str, body: &str) -> String {
    let path = dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn read_or_empty(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn two_taps_in_two_namespaces_talk_and_another_hub_hears_nothing() {
    let (ta, tb) = (unique("pta"), unique("ptb"));
    let mut x = UdpEnd::new();
    let d = Args::new()
        .netdev(&tap_spec("ta", &ta, ""))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ""))
        .on_hub("tb", 0)
        .udp("x", 1, &mut x)
        .start();
    let a = ns_with(&ta, "10.77.0.1/24");
    let b = ns_with(&tb, "10.77.0.2/24");
    ping(&a, "10.77.0.2", 3, 56);
    ping(&b, "10.77.0.1", 3, 1400);
    // Jumbo frames: 8000 bytes of ICMP data, one frame each way.
    for (ns, l) in [(&a, &ta), (&b, &tb)] {
        run_ok(
            "ip",
            &["-n", &ns.name, "link", "set", "dev", l, "mtu", "9000"],
        );
    }
    ping(&a, "10.77.0.2", 2, 8000);
    expect_nothing(&x, "a UDP port on hub 1 while the taps on hub 0 talk");
    // Frames from hub 1 do not reach the taps either.
    let rb = RawSock::open_in(&b, &tb);
    x.send(&frame(BCAST, mac(9), ETH_EXP, 60, 1));
    assert!(
        rb.recv_timeout(QUIET).is_none(),
        "a frame from hub 1 reached a tap on hub 0"
    );
    d.stop_clean();
    assert_gone(Some(&a), &ta);
    assert_gone(Some(&b), &tb);
}

#[test]
fn a_udp_port_on_the_same_hub_hears_both_taps() {
    let (ta, tb) = (unique("pta"), unique("ptb"));
    let mut x = UdpEnd::new();
    let d = Args::new()
        .netdev(&tap_spec("ta", &ta, ""))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ""))
        .on_hub("tb", 0)
        .udp("x", 0, &mut x)
        .start();
    let a = ns_with(&ta, "10.78.0.1/24");
    let b = ns_with(&tb, "10.78.0.2/24");
    let (ma, mb) = (mac_of(&a, &ta), mac_of(&b, &tb));
    ping(&a, "10.78.0.2", 2, 56);
    // The UDP port saw the ARP request from A, and ICMP echo requests (A to B) and
    // replies (B to A), exactly as the kernel sent them.
    let seen = x.drain(QUIET);
    let arp_from_a = seen
        .iter()
        .any(|f| f.len() >= 42 && f[..6] == BCAST && f[6..12] == ma && f[12..14] == [8, 6]);
    let icmp = |f: &Vec<u8>, src: [u8; 6], dst: [u8; 6], ty: u8| {
        f.len() >= 42
            && f[..6] == dst
            && f[6..12] == src
            && f[12..14] == [8, 0]
            && f[23] == 1
            && f[34] == ty
    };
    assert!(
        arp_from_a,
        "no ARP request from {ma:02x?} among {} frames",
        seen.len()
    );
    assert!(
        seen.iter().any(|f| icmp(f, ma, mb, 8)),
        "no echo request A to B among {} frames",
        seen.len()
    );
    assert!(
        seen.iter().any(|f| icmp(f, mb, ma, 0)),
        "no echo reply B to A among {} frames",
        seen.len()
    );
    // And a frame from the UDP port reaches both taps unchanged.
    let (ra, rb) = (RawSock::open_in(&a, &ta), RawSock::open_in(&b, &tb));
    let f = frame(BCAST, mac(9), ETH_EXP, 1514, 3);
    x.send(&f);
    for (name, r) in [("A", &ra), ("B", &rb)] {
        let got = r
            .recv_timeout(WAIT)
            .unwrap_or_else(|| panic!("nothing at tap {name}"));
        assert_eq!(
            diff(&got, &f),
            None,
            "frame from the UDP port at tap {name}"
        );
    }
    d.stop_clean();
    assert_gone(Some(&a), &ta);
    assert_gone(Some(&b), &tb);
}

/// Exact frames both ways between a tap (with `extra` options) and a UDP port: every
/// size, the limit, and an oversize frame that must be dropped whole.
fn exact_frames_between_tap_and_udp(extra: &str) {
    let t = unique("ptx");
    let mut x = UdpEnd::new();
    let d = Args::new()
        .netdev(&tap_spec("t", &t, extra))
        .on_hub("t", 0)
        .udp("x", 0, &mut x)
        .start();
    // No address: the kernel in the namespace stays silent on the link.
    let ns = ns_with(&t, "");
    run_ok(
        "ip",
        &["-n", &ns.name, "link", "set", "dev", &t, "mtu", "9300"],
    );
    let flags = tun_flags(&ns, &t);
    assert_eq!(
        flags & IFF_VNET_HDR != 0,
        !extra.contains("vnet_hdr=off"),
        "IFF_VNET_HDR in the tap's flags {flags:#x} with {extra:?}"
    );
    let raw = RawSock::open_in(&ns, &t);
    for (len, seed) in [(14, 1u8), (60, 2), (1514, 3), (9000, 4), (9216, 5)] {
        let f = frame(BCAST, mac(1), ETH_EXP, len, seed);
        raw.send(&f);
        expect_frame(
            &x,
            &f,
            &format!("{len} bytes from the tap ({extra}) to UDP"),
        );
        let g = frame(mac(1), mac(2), ETH_EXP, len, seed.wrapping_add(100));
        x.send(&g);
        let got = raw
            .recv_timeout(WAIT)
            .unwrap_or_else(|| panic!("{len} bytes from UDP never reached the tap ({extra})"));
        assert_eq!(
            diff(&got, &g),
            None,
            "{len} bytes from UDP to the tap ({extra})"
        );
    }
    // Over the default maximum of 9216: dropped whole, in both directions.
    raw.send(&frame(BCAST, mac(1), ETH_EXP, 9217, 6));
    let ok = frame(BCAST, mac(1), ETH_EXP, 60, 7);
    raw.send(&ok);
    expect_frame(
        &x,
        &ok,
        "the 60-byte frame after a 9217-byte one from the tap",
    );
    x.send(&frame(BCAST, mac(2), ETH_EXP, 9217, 8));
    let ok = frame(BCAST, mac(2), ETH_EXP, 60, 9);
    x.send(&ok);
    let got = raw
        .recv_timeout(WAIT)
        .expect("the 60-byte frame after a 9217-byte one");
    assert_eq!(
        diff(&got, &ok),
        None,
        "first frame at the tap after an oversize one"
    );
    assert!(raw.recv_timeout(QUIET).is_none(), "tap: nothing else");
    expect_nothing(&x, "UDP: nothing else");
    d.stop_clean();
    assert_gone(Some(&ns), &t);
}

#[test]
fn plain_tap_carries_exact_frames_both_ways() {
    exact_frames_between_tap_and_udp(",vnet_hdr=off,poll-us=20,sndbuf=1048576");
}

#[test]
fn vnet_hdr_tap_carries_exact_frames_both_ways() {
    exact_frames_between_tap_and_udp(",vnet_hdr=on");
}

#[test]
fn vnet_hdr_tap_passes_kernel_udp_with_valid_checksums() {
    // The kernel's own UDP through a vnet_hdr tap: the switch must hand on complete,
    // checksummed frames (no offload left half done), and frames it writes must be
    // accepted by the kernel's checksum validation.
    let t = unique("ptv");
    let mut x = UdpEnd::new();
    let d = Args::new()
        .netdev(&tap_spec("t", &t, ",vnet_hdr=on"))
        .on_hub("t", 0)
        .udp("x", 0, &mut x)
        .start();
    let ns = ns_with(&t, "10.79.0.1/24");
    let me = mac(0x42);
    let me_str = "02:50:53:00:00:42";
    run_ok(
        "ip",
        &[
            "-n",
            &ns.name,
            "neigh",
            "add",
            "10.79.0.2",
            "lladdr",
            me_str,
            "dev",
            &t,
            "nud",
            "permanent",
        ],
    );
    let tap_mac = mac_of(&ns, &t);
    assert_ne!(tun_flags(&ns, &t) & IFF_VNET_HDR, 0, "vnet_hdr=on");
    let inside = ns.enter(|| UdpSocket::bind("10.79.0.1:0").unwrap());
    let inside_addr = match inside.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        a => panic!("{a}"),
    };
    let far = SocketAddrV4::new(Ipv4Addr::new(10, 79, 0, 2), 9999);
    for len in [1usize, 100, 1472] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        inside.send_to(&payload, far).unwrap();
        let (f, (src, dst, got)) = next_udp_frame(&x)
            .unwrap_or_else(|| panic!("no UDP frame of {len} bytes from the tap"));
        assert_eq!((&f[..6], &f[6..12]), (&me[..], &tap_mac[..]), "MACs");
        assert_eq!((src, dst), (inside_addr, far));
        assert_eq!(got, payload, "payload of {len} bytes");
    }
    // The other way: a UDP datagram the test builds reaches the socket in the namespace.
    inside.set_read_timeout(Some(WAIT)).unwrap();
    for len in [1usize, 1000, 1472] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 3 + 1) as u8).collect();
        x.send(&udp_frame(tap_mac, me, far, inside_addr, &payload));
        let mut buf = vec![0u8; 2000];
        let (n, from) = inside
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{len}-byte datagram into the namespace: {e}"));
        assert_eq!((&buf[..n], from), (&payload[..], far.into()));
    }
    d.stop_clean();
    assert_gone(Some(&ns), &t);
}

#[test]
fn tcp_crosses_between_a_vnet_hdr_tap_and_a_plain_tap() {
    // 4 MiB over TCP from a namespace behind a vnet_hdr tap to one behind a plain tap.
    let (ta, tb) = (unique("ptv"), unique("ptp"));
    let d = Args::new()
        .opt("-pool-size", "2048")
        .netdev(&tap_spec("ta", &ta, ",vnet_hdr=on"))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ",vnet_hdr=off"))
        .on_hub("tb", 0)
        .start();
    let a = ns_with(&ta, "10.80.0.1/24");
    let b = ns_with(&tb, "10.80.0.2/24");
    let listener = b.enter(|| TcpListener::bind("10.80.0.2:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i ^ (i >> 9)) as u8).collect();
    let got = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).map(|_| got)
        });
        let mut c = a
            .enter(|| TcpStream::connect_timeout(&(Ipv4Addr::new(10, 80, 0, 2), port).into(), WAIT))
            .expect("TCP connect across the switch");
        c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(&data).expect("TCP send across the switch");
        drop(c);
        rx.join().unwrap()
    })
    .expect("TCP receive across the switch");
    assert_eq!(got.len(), data.len(), "bytes received over TCP");
    assert!(got == data, "TCP data corrupted");
    d.stop_clean();
    assert_gone(Some(&a), &ta);
    assert_gone(Some(&b), &tb);
}

#[test]
fn multiqueue_tap_carries_every_flow_on_both_queues() {
    let t = unique("ptq");
    let mut x = UdpEnd::new();
    let d = Args::new()
        .netdev(&tap_spec("t", &t, ",queues=2"))
        .on_hub("t", 0)
        .udp("x", 0, &mut x)
        .start();
    let ns = ns_with(&t, "10.81.0.1/24");
    let queues = ns.exec_ok(&["ls", &format!("/sys/class/net/{t}/queues")]);
    for q in ["rx-0", "rx-1", "tx-0", "tx-1"] {
        assert!(
            queues.split_whitespace().any(|w| w == q),
            "{t} has no {q}: {queues}"
        );
    }
    let flags = tun_flags(&ns, &t);
    assert_ne!(
        flags & IFF_MULTI_QUEUE,
        0,
        "IFF_MULTI_QUEUE not set: {flags:#x}"
    );
    run_ok(
        "ip",
        &[
            "-n",
            &ns.name,
            "neigh",
            "add",
            "10.81.0.2",
            "lladdr",
            "02:50:53:00:00:42",
            "dev",
            &t,
            "nud",
            "permanent",
        ],
    );
    // 64 flows (source ports): the kernel spreads them over both queues by hash, so a
    // switch reading only one queue would miss about half.
    const FLOWS: usize = 64;
    let socks: Vec<UdpSocket> = ns.enter(|| {
        (0..FLOWS)
            .map(|_| UdpSocket::bind("10.81.0.1:0").unwrap())
            .collect()
    });
    let mut seen = [false; FLOWS];
    for (i, s) in socks.iter().enumerate() {
        s.send_to(&[i as u8; 32], "10.81.0.2:9").unwrap();
    }
    while let Some((_, (_, _, payload))) = next_udp_frame(&x) {
        seen[payload[0] as usize] = true;
        if seen.iter().all(|&s| s) {
            break;
        }
    }
    let missing: Vec<usize> = (0..FLOWS).filter(|&i| !seen[i]).collect();
    assert!(
        missing.is_empty(),
        "flows lost through a 2-queue tap: {missing:?}"
    );
    // The other way: 64 different frames all reach the tap.
    let raw = RawSock::open_in(&ns, &t);
    let sent: Vec<Vec<u8>> = (0..FLOWS as u8)
        .map(|i| frame(mac(i), mac(100 + i), ETH_EXP, 60 + i as usize, i))
        .collect();
    for f in &sent {
        x.send(f);
    }
    let mut got: Vec<Vec<u8>> = std::iter::from_fn(|| raw.recv_timeout(WAIT))
        .filter(|f| f[12..14] == ETH_EXP.to_be_bytes())
        .take(FLOWS)
        .collect();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(got.len(), FLOWS, "frames from UDP reaching a 2-queue tap");
    assert!(got == want, "frames changed on the way to a 2-queue tap");
    d.stop_clean();
    assert_gone(Some(&ns), &t);
}

#[test]
fn script_and_downscript_run_with_the_ifname() {
    let dir = TempDir::new();
    let (up_log, down_log) = (dir.join("up.log"), dir.join("down.log"));
    // The up script also proves the link exists when it runs.
    let up = write_script(
        &dir,
        "up.sh",
        &format!(
            "ip link show dev \"$1\" >/dev/null && echo \"$1\" >> {}",
            up_log.display()
        ),
    );
    let down = write_script(
        &dir,
        "down.sh",
        &format!("echo \"$1\" >> {}", down_log.display()),
    );
    let t = unique("pts");
    let d = Args::new()
        .netdev(&format!(
            "tap,id=t0,ifname={t},script={up},downscript={down}"
        ))
        .on_hub("t0", 0)
        .start();
    assert_eq!(
        read_or_empty(&up_log),
        format!("{t}\n"),
        "script= ran once with the ifname"
    );
    assert!(
        !down_log.exists(),
        "downscript= ran before the port went away"
    );
    assert!(link_exists(None, &t), "tap {t} made by the daemon");
    let tun_flags = run_ok("cat", &[&format!("/sys/class/net/{t}/tun_flags")]);
    assert!(!tun_flags.trim().is_empty());
    d.stop_clean();
    assert_eq!(
        read_or_empty(&down_log),
        format!("{t}\n"),
        "downscript= ran once at exit"
    );
    assert_eq!(
        read_or_empty(&up_log),
        format!("{t}\n"),
        "script= ran only once"
    );
    assert_gone(None, &t);
}

#[test]
fn kernel_chosen_tap_name_is_passed_to_the_script() {
    let dir = TempDir::new();
    let log = dir.join("up.log");
    let up = write_script(&dir, "up.sh", &format!("echo \"$1\" >> {}", log.display()));
    let d = Args::new()
        .netdev(&format!("tap,id=t0,script={up},downscript=no"))
        .on_hub("t0", 0)
        .start();
    let name = read_or_empty(&log).trim().to_string();
    assert!(!name.is_empty(), "script= ran with a name");
    assert!(
        Path::new(&format!("/sys/class/net/{name}/tun_flags")).exists(),
        "{name:?} (given to the script) is not a tap"
    );
    d.stop_clean();
    assert_gone(None, &name);
}

#[test]
fn script_no_runs_nothing() {
    // A program called `no` first on PATH, writing a marker: `script=no` and
    // `downscript=no` must not run it (nor anything else).
    let dir = TempDir::new();
    let marker = dir.join("ran");
    write_script(&dir, "no", &format!("echo \"$@\" >> {}", marker.display()));
    let path = format!(
        "PATH={}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let t = unique("ptn");
    let bin = bin_path("pollswitch");
    let args = Args::new()
        .netdev(&format!("tap,id=t0,ifname={t},script=no,downscript=no"))
        .on_hub("t0", 0);
    let mut argv = vec![path.as_str(), bin.to_str().unwrap()];
    argv.extend(args.strs());
    let d = Daemon::start_program(&require_tool("env"), &argv);
    assert!(link_exists(None, &t));
    d.stop_clean();
    assert_gone(None, &t);
    assert!(
        !marker.exists(),
        "script=no ran {:?}",
        read_or_empty(&marker)
    );
}

#[test]
fn failing_script_fails_the_netdev_and_leaves_no_tap() {
    let dir = TempDir::new();
    let up = write_script(&dir, "fail.sh", "exit 3");
    let t = unique("ptf");
    let out = Daemon::run_to_exit(
        &Args::new()
            .netdev(&format!(
                "tap,id=tfail,ifname={t},script={up},downscript=no"
            ))
            .on_hub("tfail", 0)
            .strs(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{err}");
    assert!(err.contains("tfail"), "the message names the netdev: {err}");
    assert!(
        err.contains("fail.sh"),
        "the message names the script: {err}"
    );
    assert!(!err.contains(tests::READY), "never ready: {err}");
    assert_gone(None, &t);
}

#[test]
fn taps_made_by_the_daemon_disappear_when_it_exits() {
    // One tap left where the daemon made it, one moved into a namespace.
    let (here, moved) = (unique("pth"), unique("ptm"));
    let d = Args::new()
        .netdev(&tap_spec("h", &here, ""))
        .on_hub("h", 0)
        .netdev(&tap_spec("m", &moved, ""))
        .on_hub("m", 0)
        .start();
    let ns = ns_with(&moved, "");
    assert!(link_exists(None, &here));
    assert!(link_exists(Some(&ns), &moved));
    assert!(!link_exists(None, &moved));
    d.stop_clean();
    assert_gone(None, &here);
    assert_gone(Some(&ns), &moved);
}

#[test]
fn existing_persistent_tap_is_used_and_left_in_place() {
    // A persistent tap made with `ip tuntap` inside a namespace, and the daemon running
    // there: it attaches to the tap by name, and leaves it behind at exit (it did not
    // create it), as QEMU does.
    let ns = Netns::new();
    let t = unique("ptp");
    ns.exec_ok(&["ip", "tuntap", "add", "mode", "tap", "name", &t]);
    ns.exec_ok(&["ip", "link", "set", "dev", &t, "up"]);
    let mut x = ns.enter(UdpEnd::new);
    let d = Args::new()
        .netdev(&tap_spec("t", &t, ""))
        .on_hub("t", 0)
        .udp("x", 0, &mut x)
        .start_in(&ns);
    let raw = RawSock::open_in(&ns, &t);
    let f = frame(BCAST, mac(1), ETH_EXP, 1000, 1);
    raw.send(&f);
    expect_frame(&x, &f, "persistent tap to UDP");
    let g = frame(BCAST, mac(2), ETH_EXP, 1000, 2);
    x.send(&g);
    assert_eq!(
        raw.recv_timeout(WAIT).as_deref(),
        Some(&g[..]),
        "UDP to persistent tap"
    );
    d.stop_clean();
    std::thread::sleep(QUIET);
    assert!(
        link_exists(Some(&ns), &t),
        "the daemon deleted a tap it did not create"
    );
}

#[test]
fn tap_fd_inherited_from_the_parent() {
    // `fd=N`: a tap opened by the parent (python3, as a stand-in for libvirt) and
    // inherited by the daemon.
    let python = require_tool("python3");
    let t = unique("ptd");
    let mut x = UdpEnd::new();
    let args = Args::new()
        .netdev("tap,id=t,fd=FD")
        .on_hub("t", 0)
        .udp("x", 0, &mut x);
    let script = format!(
        "import fcntl, os, struct, sys\n\
         fd = os.open('/dev/net/tun', os.O_RDWR)\n\
         fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'{t}', 0x0002 | 0x1000))\n\
         os.set_inheritable(fd, True)\n\
         argv = [a.replace('fd=FD', 'fd=%d' % fd) for a in sys.argv[1:]]\n\
         os.execv(argv[0], argv)\n"
    );
    let bin = bin_path("pollswitch");
    let mut argv = vec!["-c", script.as_str(), bin.to_str().unwrap()];
    argv.extend(args.strs());
    let d = Daemon::start_program(&python, &argv);
    let ns = ns_with(&t, "");
    let raw = RawSock::open_in(&ns, &t);
    let f = frame(BCAST, mac(1), ETH_EXP, 1514, 1);
    raw.send(&f);
    expect_frame(&x, &f, "tap fd= to UDP");
    let g = frame(BCAST, mac(2), ETH_EXP, 60, 2);
    x.send(&g);
    assert_eq!(
        raw.recv_timeout(WAIT).as_deref(),
        Some(&g[..]),
        "UDP to tap fd="
    );
    d.stop_clean();
    assert_gone(Some(&ns), &t);
}

#[test]
fn a_burst_through_a_tap_keeps_its_order() {
    // 1600 frames each way between a tap and a UDP port, 32 at a time: one flow, so
    // nothing may be lost or reordered.
    let t = unique("pto");
    let mut x = UdpEnd::new();
    let d = Args::new()
        .opt("-poll-us", "20")
        .netdev(&tap_spec("t", &t, ""))
        .on_hub("t", 0)
        .udp("x", 0, &mut x)
        .start();
    let ns = ns_with(&t, "");
    let raw = RawSock::open_in(&ns, &t);
    const WINDOW: usize = 32;
    const TOTAL: usize = 1600;
    let make = |i: usize| {
        let mut f = frame(BCAST, mac(1), ETH_EXP, [60, 1514, 200][i % 3], i as u8);
        f[14..16].copy_from_slice(&(i as u16).to_be_bytes());
        f
    };
    let index = |f: &Vec<u8>| u16::from_be_bytes([f[14], f[15]]) as usize;
    for n in (0..TOTAL).step_by(WINDOW) {
        let want: Vec<usize> = (n..n + WINDOW).collect();
        for i in n..n + WINDOW {
            raw.send(&make(i));
        }
        let got: Vec<usize> = std::iter::from_fn(|| x.recv_timeout(WAIT))
            .take(WINDOW)
            .map(|f| index(&f))
            .collect();
        assert_eq!(got, want, "tap to UDP, frames {n}..{}", n + WINDOW);
        for i in n..n + WINDOW {
            x.send(&make(i));
        }
        let got: Vec<usize> = std::iter::from_fn(|| raw.recv_timeout(WAIT))
            .take(WINDOW)
            .map(|f| index(&f))
            .collect();
        assert_eq!(got, want, "UDP to tap, frames {n}..{}", n + WINDOW);
    }
    d.stop_clean();
    assert_gone(Some(&ns), &t);
}

#[test]
fn a_tap_deleted_from_outside_leaves_the_daemon_and_the_other_ports_running() {
    let tap = unique("tdel");
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .netdev(&tap_spec("t", &tap, ""))
        .on_hub("t", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start_with_qmp(&dir);
    let ns = ns_with(&tap, "10.93.0.1/24");
    // Traffic flows everywhere before (the tap's kernel side sends its own frames too).
    let f = frame(BCAST, mac(1), ETH_EXP, 60, 1);
    a.send(&f);
    expect_frame(&b, &f, "a → b before the tap goes");
    ns.exec_ok(&["ip", "link", "del", &tap]);
    assert!(!link_exists(Some(&ns), &tap), "the tap is gone");
    std::thread::sleep(Duration::from_millis(300));
    // The daemon runs on, its worker does not spin on the dead descriptor, the others
    // forward, and frames for the tap are dropped and counted at it.
    let pid = d.pid();
    let cpu = |pid: u32| -> u64 {
        let s = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = common::port_stats(&mut c, "t");
    let t0 = cpu(pid);
    for i in 0..20u8 {
        let g = frame(BCAST, mac(1), ETH_EXP, 60, i);
        a.send(&g);
        expect_frame(&b, &g, "a → b after the tap went");
    }
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu(pid) - t0;
    assert!(
        ticks < 50,
        "the daemon used {ticks} clock ticks in ~1.2 s: spinning?"
    );
    let after = common::port_stats(&mut c, "t");
    let dropped = common::total_drops(&after) - common::total_drops(&before);
    let sent = after["tx-packets"].as_u64().unwrap() - before["tx-packets"].as_u64().unwrap();
    assert_eq!(
        dropped + sent,
        20,
        "every frame for the dead tap counted: {after}"
    );
    assert_eq!(
        after["carrier"], false,
        "the port says its device is gone: {after}"
    );
    c.execute_ok("netdev_del", serde_json::json!({"id": "hp-t"}));
    c.execute_ok("netdev_del", serde_json::json!({"id": "t"}));
    drop(c);
    d.stop_clean();
}
