//! UDP GRO on `socket,udp=` ports: a burst a peer sends with UDP GSO (one `sendmsg`,
//! `UDP_SEGMENT`: how QUIC stacks and another pollswitch send) costs the switch one
//! receive, cut back into its frames.
//!
//! ```text
//!  GSO sender (the test) ──one sendmsg, N frames── socket u ─ hub 0 ─ socket x ── UdpEnd x
//!  UdpEnd a ── pollswitch A (sends runs with UDP GSO) ──udp── pollswitch B (GRO) ── UdpEnd b
//! ```

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{expect_frame, expect_nothing, mac, port_stats, Args, BCAST, ETH_EXP};
use serde_json::Value;
use tests::{frame, free_udp_port, TempDir, UdpEnd};

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or_else(|| panic!("no {path:?} in {v}"))
}

/// A UDP socket that sends every datagram as GSO segments of `seg` bytes.
fn gso_sender(seg: usize, to: std::net::SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(to).unwrap();
    common::set_udp_segment(&s, seg);
    s
}

#[test]
fn a_gso_burst_from_a_peer_is_one_receive_cut_into_its_frames() {
    let dir = TempDir::new();
    let mut x = UdpEnd::new();
    let (u_port, peer_port) = (free_udp_port(), free_udp_port());
    let (d, mut q) = Args::new()
        .netdev(&format!(
            "socket,id=u,udp=127.0.0.1:{peer_port},localaddr=127.0.0.1:{u_port}"
        ))
        .on_hub("u", 0)
        .udp("x", 0, &mut x)
        .start_with_qmp(&dir);
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], u_port));
    // Small frames are copied out of the burst; 4000-byte ones share its buffer.
    for (seg, count, last) in [
        (100usize, 20usize, 60usize),
        (1514, 40, 1514),
        (60, 64, 14),
        (4000, 16, 3000),
    ] {
        let before = port_stats(&mut q, "u");
        let frames: Vec<Vec<u8>> = (0..count)
            .map(|i| {
                let len = if i + 1 == count { last } else { seg };
                frame(BCAST, mac(1), ETH_EXP, len, (i * 7) as u8)
            })
            .collect();
        let burst: Vec<u8> = frames.concat();
        gso_sender(seg, to).send(&burst).expect("one GSO send");
        for (i, f) in frames.iter().enumerate() {
            expect_frame(&x, f, &format!("frame {i} of a {count} × {seg} burst"));
        }
        expect_nothing(&x, "nothing more than the burst's frames");
        let after = port_stats(&mut q, "u");
        let d = |k: &[&str]| num(&after, k) - num(&before, k);
        assert_eq!(d(&["rx-packets"]), count as u64, "{after}");
        assert_eq!(
            (
                d(&["offloads", "gro-batches"]),
                d(&["offloads", "gro-segments"])
            ),
            (1, count as u64),
            "one receive brought the whole burst: {after}"
        );
    }
    // A lone datagram, and one too short for a frame inside a burst, are dealt with too.
    let lone = frame(BCAST, mac(2), ETH_EXP, 60, 9);
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(&lone, to)
        .unwrap();
    expect_frame(&x, &lone, "a datagram without GSO");
    let mut short = frame(BCAST, mac(3), ETH_EXP, 100, 1);
    short.extend_from_slice(&[0u8; 10]);
    gso_sender(100, to).send(&short).unwrap();
    expect_frame(
        &x,
        &short[..100],
        "the whole frame of a burst with a runt tail",
    );
    expect_nothing(&x, "the 10-byte tail is not a frame");
    assert!(num(&port_stats(&mut q, "u"), &["drops", "undersize"]) >= 1);
    drop(q);
    d.stop_clean();
}

#[test]
fn one_pollswitch_sends_bursts_another_receives_them_whole() {
    let (dir_a, dir_b) = (TempDir::new(), TempDir::new());
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let (da, _qa) = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!(
            "socket,id=l,udp=127.0.0.1:{pb},localaddr=127.0.0.1:{pa}"
        ))
        .on_hub("l", 0)
        .start_with_qmp(&dir_a);
    let (db, mut qb) = Args::new()
        .netdev(&format!(
            "socket,id=l,udp=127.0.0.1:{pa},localaddr=127.0.0.1:{pb}"
        ))
        .on_hub("l", 0)
        .udp("b", 0, &mut b)
        .start_with_qmp(&dir_b);
    // Bursts of equal frames into A: it sends each run it reads at once as one GSO send.
    const N: usize = 4000;
    for i in 0..N {
        a.send(&frame(BCAST, mac(1), ETH_EXP, 200, i as u8));
        if i % 256 == 255 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let got = b.drain(Duration::from_millis(500)).len();
    let l = port_stats(&mut qb, "l");
    assert!(
        num(&l, &["rx-packets"]) > N as u64 / 2 && got > 0,
        "premise: frames crossed from A to B ({l}, {got} at b)"
    );
    assert!(
        num(&l, &["offloads", "gro-batches"]) > 0,
        "B received A's GSO runs as bursts: {l}"
    );
    drop(qb);
    db.stop_clean();
    da.stop_clean();
}
