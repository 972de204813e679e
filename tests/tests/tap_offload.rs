//! Tap offloads: the kernel's TCP (TSO) and UDP (USO) super-frames cross the switch whole
//! between taps that take them, and are cut — once — with correct checksums for ports
//! that do not (a tap with `vnet_hdr=off`, a UDP socket port).
//!
//! ```text
//!  netns A: 10.x.0.1 ── tap ta (offloads on) ─ hubport ┐
//!                                                      ├─ hub 0 ─┬─ tap tb (offloads on | off) ── netns B: 10.x.0.2
//!                                                      │         └─ socket,udp= ── UdpEnd (the test)
//! ```
//!
//! Each test first proves its premise from the switch's own counters — super-frames
//! were received (mean frame size far above the 1500-byte MTU) — before it judges what
//! came out.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{ns_with, port_stats, tap_spec, Args, WAIT};
use serde_json::Value;
use tests::{require_tool, unique, Netns, TempDir, UdpEnd};

/// `key: on|off` of `ethtool -k` for `ifname` inside `ns`.
fn feature(ns: &Netns, ifname: &str, key: &str) -> bool {
    let out = ns.exec_ok(&["ethtool", "-k", ifname]);
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in ethtool -k {ifname}: {out}"));
    line.trim().starts_with("on")
}

/// Sends `bytes` over one TCP connection from `a` to `b` (listening on `b_addr`) and
/// checks they arrive intact.
fn tcp_transfer(a: &Netns, b: &Netns, b_addr: Ipv4Addr, bytes: usize) {
    let listener = b.enter(|| TcpListener::bind((b_addr, 0)).unwrap());
    let port = listener.local_addr().unwrap().port();
    let data: Vec<u8> = (0..bytes as u32).map(|i| (i ^ (i >> 11)) as u8).collect();
    let got = std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let (mut c, _) = listener.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).map(|_| got)
        });
        let mut c = a
            .enter(|| TcpStream::connect_timeout(&(b_addr, port).into(), WAIT))
            .expect("TCP connect across the switch");
        c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(&data).expect("TCP send across the switch");
        drop(c);
        rx.join().unwrap()
    })
    .expect("TCP receive across the switch");
    assert_eq!(got.len(), data.len(), "bytes received over TCP");
    assert!(got == data, "TCP data corrupted on the way");
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

/// Mean size of the frames port `p` received.
fn mean_rx(p: &Value) -> u64 {
    num(p, &["rx-bytes"]) / num(p, &["rx-packets"]).max(1)
}

/// The ones' complement sum of `data` added to `sum`.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// For an Ethernet/IPv4 frame carrying TCP or UDP: (protocol, IP header checksum ok, L4
/// checksum ok, L4 payload length). `None` for anything else.
fn check_ipv4(f: &[u8]) -> Option<(u8, bool, bool, usize)> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(f[14] & 0xf) * 4;
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let ip = f.get(14..14 + ihl)?;
    let ip_ok = fold(sum16(ip, 0)) == 0xffff;
    let l4 = f.get(14 + ihl..14 + tot)?;
    let proto = f[23];
    let mut s = sum16(&f[26..34], 0);
    s += u32::from(proto) + l4.len() as u32;
    let l4_ok = fold(sum16(l4, s)) == 0xffff;
    let hdr = match proto {
        6 => usize::from(l4.get(12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    Some((proto, ip_ok, l4_ok, l4.len().saturating_sub(hdr)))
}

/// Taps `ta` (offloads on) and `tb` (`tb_extra` options) in namespaces with
/// 10.`net`.0.1 and .2, and a UDP port `x`, on hub 0 with hubport options `hub_extra`.
struct Rig {
    d: tests::Daemon,
    q: tests::QmpClient,
    a: Netns,
    b: Netns,
    x: UdpEnd,
    _dir: TempDir,
}

fn rig(tb_extra: &str, hub_extra: &str, net: u8) -> Rig {
    let (ta, tb) = (unique("poc"), unique("pod"));
    let dir = TempDir::new();
    let mut x = UdpEnd::new();
    let hub = |id: &str| format!("hubport,id=hp-{id},hubid=0,netdev={id}{hub_extra}");
    // A pool the size of a small real one: a UDP port's sends in flight scale with it.
    let (d, q) = Args::new()
        .opt("-pool-size", "4096")
        .netdev(&tap_spec("ta", &ta, ""))
        .netdev(&hub("ta"))
        .netdev(&tap_spec("tb", &tb, tb_extra))
        .netdev(&hub("tb"))
        .netdev(&common::udp_spec("x", &mut x))
        .netdev(&hub("x"))
        .start_with_qmp(&dir);
    let a = ns_with(&ta, &format!("10.{net}.0.1/24"));
    let b = ns_with(&tb, &format!("10.{net}.0.2/24"));
    Rig {
        d,
        q,
        a,
        b,
        x,
        _dir: dir,
    }
}

#[test]
fn tcp_super_frames_cross_whole_between_two_taps() {
    require_tool("ethtool");
    let (ta, tb) = (unique("poa"), unique("pob"));
    let dir = TempDir::new();
    let (d, mut q) = Args::new()
        .netdev(&tap_spec("ta", &ta, ""))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ""))
        .on_hub("tb", 0)
        .start_with_qmp(&dir);
    let a = ns_with(&ta, "10.84.0.1/24");
    let b = ns_with(&tb, "10.84.0.2/24");
    for (ns, t) in [(&a, &ta), (&b, &tb)] {
        assert!(
            feature(ns, t, "tcp-segmentation-offload"),
            "TSO is off on {t}"
        );
        assert!(
            feature(ns, t, "tx-checksumming"),
            "checksum offload off on {t}"
        );
    }
    tcp_transfer(&a, &b, Ipv4Addr::new(10, 84, 0, 2), 32 << 20);
    let pa = port_stats(&mut q, "ta");
    let pb = port_stats(&mut q, "tb");
    // The premise: the sender's kernel handed the switch super-frames.
    assert!(
        mean_rx(&pa) > 9000,
        "TCP frames from ta average {} bytes: no super-frames reached the switch ({pa})",
        mean_rx(&pa)
    );
    // And they went on whole: nothing was cut, nothing dropped.
    assert_eq!(num(&pa, &["offloads", "gso-cut"]), 0, "{pa}");
    assert_eq!(
        num(&pb, &["tx-packets"]),
        num(&pa, &["rx-packets"]),
        "every frame from ta reached tb as one frame: {pa} {pb}"
    );
    assert_eq!(common::total_drops(&pa) + common::total_drops(&pb), 0);
    let st = q.execute_ok("x-query-stats", Value::Null);
    assert!(num(&st, &["pool", "gso-buffers"]) > 0, "{st}");
    drop(q);
    d.stop_clean();
}

#[test]
fn super_frames_are_cut_once_for_a_plain_tap_and_a_udp_port() {
    let Rig {
        d, mut q, a, b, x, ..
    } = rig(",vnet_hdr=off", "", 85);
    // B's kernel checks every checksum: a wrong segment would stall the transfer.
    tcp_transfer(&a, &b, Ipv4Addr::new(10, 85, 0, 2), 8 << 20);
    let pa = port_stats(&mut q, "ta");
    let cut = num(&pa, &["offloads", "gso-cut"]);
    let segs = num(&pa, &["offloads", "gso-segments"]);
    assert!(
        cut > 0 && mean_rx(&pa) > 3000,
        "premise: super-frames from ta were cut ({pa})"
    );
    // Once per frame for both plain destinations, not once each.
    assert!(
        cut <= num(&pa, &["rx-packets"]),
        "{cut} cuts for {} frames received: cut per destination? {pa}",
        num(&pa, &["rx-packets"])
    );
    for port in ["tb", "x"] {
        let p = port_stats(&mut q, port);
        assert!(
            num(&p, &["tx-packets"]) + common::total_drops(&p) >= segs,
            "{port} was given every segment: {p} {pa}"
        );
    }
    // What the UDP port got (as much as its socket buffer kept): wire-sized TCP
    // segments with correct checksums.
    let frames = x.drain(Duration::from_millis(300));
    let tcp: Vec<(bool, bool, usize, usize)> = frames
        .iter()
        .filter_map(|f| {
            check_ipv4(f)
                .filter(|c| c.0 == 6)
                .map(|c| (c.1, c.2, c.3, f.len()))
        })
        .collect();
    assert!(
        tcp.iter().filter(|c| c.2 > 0).count() > 20,
        "the UDP port saw {} TCP segments with data of {} frames",
        tcp.iter().filter(|c| c.2 > 0).count(),
        frames.len()
    );
    for (ip_ok, l4_ok, _, len) in &tcp {
        assert!(*ip_ok && *l4_ok, "a {len}-byte segment with a bad checksum");
        assert!(
            *len <= 1514,
            "a {len}-byte frame to a port without offloads"
        );
    }
    drop(q);
    d.stop_clean();
}

#[test]
fn a_udp_gso_sender_reaches_offload_and_plain_receivers_datagram_for_datagram() {
    // 64-byte frames (18 bytes of payload) sent 40 to a system call with UDP GSO, as a
    // QUIC stack sends: the tap takes the burst as one USO super-frame.
    const PAYLOAD: usize = 18;
    const PER_SEND: usize = 40;
    const SENDS: usize = 50;
    let Rig {
        d, mut q, a, b, x, ..
    } = rig("", "", 86);
    let rx = b.enter(|| UdpSocket::bind("10.86.0.2:7000").unwrap());
    rx.set_read_timeout(Some(WAIT)).unwrap();
    let tx = a.enter(|| UdpSocket::bind("10.86.0.1:0").unwrap());
    tx.connect("10.86.0.2:7000").unwrap();
    common::set_udp_segment(&tx, PAYLOAD);
    // ARP first, so that the first burst is not held back.
    tx.send(&[0xff; PAYLOAD]).unwrap();
    let mut buf = [0u8; 2048];
    assert_eq!(rx.recv(&mut buf).expect("the first datagram"), PAYLOAD);
    let before = port_stats(&mut q, "ta");
    let x_before = port_stats(&mut q, "x");
    let total = (SENDS * PER_SEND) as u32;
    // The receiver reads while the sender sends: its socket buffer holds a few hundred.
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut seqs = Vec::with_capacity(total as usize);
        while seqs.len() < total as usize {
            match rx.recv(&mut buf) {
                Ok(len) => seqs.push((len, u32::from_be_bytes(buf[..4].try_into().unwrap()))),
                Err(e) => return Err(format!("after {} of {total} datagrams: {e}", seqs.len())),
            }
        }
        Ok(seqs)
    });
    let mut n = 0u32;
    for _ in 0..SENDS {
        let mut burst = Vec::with_capacity(PAYLOAD * PER_SEND);
        for _ in 0..PER_SEND {
            let mut p = [0u8; PAYLOAD];
            p[..4].copy_from_slice(&n.to_be_bytes());
            burst.extend_from_slice(&p);
            n += 1;
        }
        tx.send(&burst).expect("a GSO send");
        // Paced, so that no socket buffer on the way overflows.
        std::thread::sleep(Duration::from_millis(2));
    }
    // Every datagram, in order, as its own datagram.
    let seqs = reader
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("receiver in B: {e}"));
    for (want, (len, got)) in seqs.into_iter().enumerate() {
        assert_eq!(len, PAYLOAD, "datagram {want}: {len} bytes");
        assert_eq!(got, want as u32, "datagrams out of order");
    }
    let pa = port_stats(&mut q, "ta");
    let frames_in = num(&pa, &["rx-packets"]) - num(&before, &["rx-packets"]);
    assert!(
        frames_in < u64::from(n) / 4,
        "premise: {n} datagrams came to the switch in {frames_in} frames (USO super-frames)"
    );
    // The UDP port was given them cut: 60-byte frames (64 on a wire, with the FCS),
    // good sums (as many as its socket buffer kept).
    let px = port_stats(&mut q, "x");
    assert!(
        num(&px, &["tx-packets"]) - num(&x_before, &["tx-packets"]) >= u64::from(n),
        "the UDP port was given every datagram: {px}"
    );
    let got: Vec<Vec<u8>> = x
        .drain(Duration::from_millis(300))
        .into_iter()
        .filter(|f| check_ipv4(f).is_some_and(|c| c.0 == 17))
        .collect();
    assert!(got.len() > 20, "the UDP port got {} datagrams", got.len());
    for f in &got {
        let (_, ip_ok, l4_ok, plen) = check_ipv4(f).unwrap();
        assert!(ip_ok && l4_ok, "a datagram with a bad checksum");
        assert_eq!((f.len(), plen), (14 + 20 + 8 + PAYLOAD, PAYLOAD));
    }
    assert!(num(&pa, &["offloads", "gso-cut"]) > 0, "{pa}");
    drop(q);
    d.stop_clean();
}

#[test]
fn gso_buffers_0_or_vnet_hdr_off_turn_the_offloads_off() {
    require_tool("ethtool");
    let (ta, tb) = (unique("pog"), unique("poh"));
    let dir = TempDir::new();
    let (d, mut q) = Args::new()
        .opt("-gso-buffers", "0")
        .netdev(&tap_spec("ta", &ta, ""))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ",vnet_hdr=off"))
        .on_hub("tb", 0)
        .start_with_qmp(&dir);
    let a = ns_with(&ta, "10.87.0.1/24");
    let b = ns_with(&tb, "10.87.0.2/24");
    assert!(
        !feature(&a, &ta, "tcp-segmentation-offload"),
        "-gso-buffers 0: TSO on"
    );
    assert!(
        !feature(&b, &tb, "tcp-segmentation-offload"),
        "vnet_hdr=off: TSO on"
    );
    tcp_transfer(&a, &b, Ipv4Addr::new(10, 87, 0, 2), 4 << 20);
    let pa = port_stats(&mut q, "ta");
    assert!(mean_rx(&pa) <= 1514, "wire-sized frames only: {pa}");
    assert_eq!(num(&pa, &["offloads", "gso-cut"]), 0);
    let st = q.execute_ok("x-query-stats", Value::Null);
    assert_eq!(num(&st, &["pool", "gso-buffers"]), 0, "{st}");
    drop(q);
    d.stop_clean();
}

/// Two offload taps and a UDP port on hub 0 with hubport options `extra` (VLAN,
/// learning): TCP from A to B, then the taps' and the UDP port's counters.
fn tcp_on_a_hub(extra: &str, net: u8) -> (Value, Value, Value) {
    let Rig { d, mut q, a, b, .. } = rig("", extra, net);
    tcp_transfer(&a, &b, Ipv4Addr::new(10, net, 0, 2), 8 << 20);
    let stats = (
        port_stats(&mut q, "ta"),
        port_stats(&mut q, "tb"),
        port_stats(&mut q, "x"),
    );
    drop(q);
    d.stop_clean();
    stats
}

#[test]
fn on_a_vlan_hub_super_frames_are_cut_for_everyone() {
    // Tags may be pushed or popped on the way, which would move the header in front of
    // a super-frame: a VLAN-aware hub with a port without offloads cuts first.
    let (pa, pb, px) = tcp_on_a_hub(",x-vlan=10", 88);
    assert!(mean_rx(&pa) > 3000, "premise: super-frames from ta: {pa}");
    assert!(num(&pa, &["offloads", "gso-cut"]) > 0, "{pa}");
    assert!(
        mean_rx(&pb) < 1600 && num(&pb, &["tx-packets"]) > 0,
        "tb got segments: {pb}"
    );
    assert!(num(&px, &["tx-packets"]) > 0, "{px}");
}

#[test]
fn on_a_learning_hub_a_known_tap_gets_super_frames_whole() {
    let (pa, pb, px) = tcp_on_a_hub(",x-learning=on", 89);
    assert!(mean_rx(&pa) > 3000, "premise: super-frames from ta: {pa}");
    // Once both addresses are learned, ta's frames go to tb alone, whole; the UDP port
    // hears only what was flooded before (ARP, the first frames).
    let whole = num(&pb, &["tx-bytes"]) / num(&pb, &["tx-packets"]).max(1);
    assert!(whole > 3000, "tb got super-frames: {pb}");
    assert!(
        num(&px, &["tx-packets"]) < num(&pa, &["rx-packets"]) / 10,
        "the UDP port heard more than the floods: {px} {pa}"
    );
}
