//! `socket` ports against the reference implementation: QEMU itself (`-M none`, netdevs
//! on a hub, no guest), in both roles, plus raw TCP clients that break the framing.
//!
//! ```text
//!  UdpEnd a ─udp─ pollswitch [ a ─ hub 0 ─ l ] ══tcp/udp══ QEMU [ c ─ hub 0 ─ q ] ─udp─ UdpEnd q
//! ```
//!
//! Stream framing (both sides): 4-byte big-endian length, then the frame.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{
    expect_frame, expect_nothing, mac, qemu_with, read_framed, wait_closed, write_framed, Args,
    BCAST, ETH_EXP, WAIT,
};
use tests::{frame, free_tcp_port, free_udp_port, UdpEnd};

const SIZES: [usize; 5] = [14, 60, 1514, 9000, 9216];

/// [`common::exchange`] with this file's frame sizes.
fn exchange(a: &UdpEnd, q: &UdpEnd, what: &str) {
    common::exchange(a, q, &SIZES, what);
}

#[test]
fn pollswitch_listen_with_qemu_connect() {
    let port = free_tcp_port();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .start();
    let connect = format!("socket,id=p,connect=127.0.0.1:{port}");
    let qemu = qemu_with(&connect, &mut q);
    exchange(&a, &q, "pollswitch listen, QEMU connect");
    // The peer goes away; the listening port accepts the next one.
    drop(qemu);
    let _qemu = qemu_with(&connect, &mut q);
    exchange(&a, &q, "pollswitch listen, second QEMU connect");
    d.stop_clean();
}

#[test]
fn qemu_listen_with_pollswitch_connect() {
    let port = free_tcp_port();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let _qemu = qemu_with(&format!("socket,id=p,listen=127.0.0.1:{port}"), &mut q);
    let d = Args::new()
        .netdev(&format!("socket,id=c,connect=127.0.0.1:{port}"))
        .on_hub("c", 0)
        .udp("a", 0, &mut a)
        .start();
    exchange(&a, &q, "QEMU listen, pollswitch connect");
    d.stop_clean();
}

#[test]
fn pollswitch_listen_with_qemu_stream_client() {
    // QEMU's newer `stream` netdev speaks the same framing.
    let port = free_tcp_port();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .start();
    let _qemu = qemu_with(
        &format!("stream,id=p,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        &mut q,
    );
    exchange(&a, &q, "pollswitch listen, QEMU stream client");
    d.stop_clean();
}

#[test]
fn udp_ports_of_pollswitch_and_qemu_talk() {
    let (pp, qp) = (free_udp_port(), free_udp_port());
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!(
            "socket,id=u,udp=127.0.0.1:{qp},localaddr=127.0.0.1:{pp}"
        ))
        .on_hub("u", 0)
        .udp("a", 0, &mut a)
        .start();
    let _qemu = qemu_with(
        &format!("socket,id=p,udp=127.0.0.1:{pp},localaddr=127.0.0.1:{qp}"),
        &mut q,
    );
    exchange(&a, &q, "pollswitch udp, QEMU udp");
    d.stop_clean();
}

#[test]
fn udp_port_of_pollswitch_and_qemu_dgram() {
    let (pp, qp) = (free_udp_port(), free_udp_port());
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!(
            "socket,id=u,udp=127.0.0.1:{qp},localaddr=127.0.0.1:{pp}"
        ))
        .on_hub("u", 0)
        .udp("a", 0, &mut a)
        .start();
    let _qemu = qemu_with(
        &format!(
            "dgram,id=p,local.type=inet,local.host=127.0.0.1,local.port={qp},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={pp}"
        ),
        &mut q,
    );
    exchange(&a, &q, "pollswitch udp, QEMU dgram");
    d.stop_clean();
}

/// A raw TCP client of a pollswitch listen port, connected and proven to be served:
/// one frame each way between it and `a`.
fn served_client(port: u16, a: &UdpEnd, b: &UdpEnd, tag: u8) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the listen port");
    s.set_nodelay(true).unwrap();
    // Frames written before the switch accepts wait in the socket: the first arrives.
    let f = frame(BCAST, mac(tag), ETH_EXP, 100, tag);
    write_framed(&mut s, &f);
    expect_frame(a, &f, &format!("client {tag} to a"));
    expect_frame(b, &f, &format!("client {tag} to b"));
    // It has been accepted now, so frames to it are delivered.
    let g = frame(mac(tag), mac(1), ETH_EXP, 1514, tag);
    a.send(&g);
    assert_eq!(
        read_framed(&mut s, WAIT).as_deref(),
        Some(&g[..]),
        "a to client {tag}"
    );
    expect_frame(b, &g, &format!("a to b while client {tag} is connected"));
    s
}

/// A frame from a to b, and b to a: the rest of the switch works.
fn others_still_work(a: &UdpEnd, b: &UdpEnd, seed: u8) {
    let f = frame(BCAST, mac(1), ETH_EXP, 60, seed);
    a.send(&f);
    expect_frame(b, &f, "a to b");
    let g = frame(BCAST, mac(2), ETH_EXP, 60, seed.wrapping_add(1));
    b.send(&g);
    expect_frame(a, &g, "b to a");
}

#[test]
fn a_frame_too_long_is_one_frame_only_a_length_that_cannot_be_a_frame_closes() {
    let port = free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let mut s = served_client(port, &a, &b, 10);
    // Frames the switch does not carry, whose length is known: each skipped and counted
    // (undersize, oversize), the stream kept; the good frame after each one arrives.
    for (k, len) in [0usize, 9217, 65536].into_iter().enumerate() {
        let mut bytes = (len as u32).to_be_bytes().to_vec();
        bytes.resize(4 + len, 0xab);
        let good = frame(BCAST, mac(20), ETH_EXP, 60, k as u8);
        bytes.extend_from_slice(&(good.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&good);
        s.write_all(&bytes).unwrap();
        expect_frame(&a, &good, &format!("the good frame after a {len}-byte one"));
        expect_frame(&b, &good, &format!("the good frame after a {len}-byte one"));
    }
    expect_nothing(&a, "nothing of the skipped frames");
    // A length that cannot be a frame at all: the stream is out of step; that connection
    // (only) ends, after the good frame written before it.
    let good = frame(BCAST, mac(21), ETH_EXP, 60, 200);
    let mut bytes = (good.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&good);
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    bytes.extend_from_slice(&[0xab; 64]);
    s.write_all(&bytes).unwrap();
    expect_frame(&a, &good, "the good frame before a 0xffffffff prefix");
    expect_frame(&b, &good, "the good frame before a 0xffffffff prefix");
    assert!(
        wait_closed(&mut s, WAIT),
        "a 0xffffffff length prefix did not close the connection"
    );
    expect_nothing(&a, "after a 0xffffffff prefix");
    others_still_work(&a, &b, 30);
    // A new connection after all that is served.
    let _s = served_client(port, &a, &b, 99);
    d.stop_clean();
}

#[test]
fn listen_port_takes_the_next_connection_after_the_peer_leaves() {
    let port = free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    for tag in 1..=3u8 {
        let mut s = served_client(port, &a, &b, tag);
        // A frame immediately followed by the close is still delivered.
        let last = frame(BCAST, mac(tag), ETH_EXP, 9000, tag);
        write_framed(&mut s, &last);
        drop(s);
        expect_frame(&a, &last, &format!("last frame of client {tag}"));
        expect_frame(&b, &last, &format!("last frame of client {tag}"));
    }
    d.stop_clean();
}

#[test]
fn stream_frames_are_reassembled_however_they_are_cut() {
    let port = free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let mut s = served_client(port, &a, &b, 1);
    // 50 frames in one write (two of them jumbo; not more, so that the test's own
    // UDP receive buffers hold them all until read).
    let frames: Vec<Vec<u8>> = (0..50u8)
        .map(|i| {
            let len = match i {
                20 | 40 => 9000,
                _ => [14, 60, 1514, 333, 700][i as usize % 5],
            };
            frame(BCAST, mac(2), ETH_EXP, len, i)
        })
        .collect();
    let mut bytes = Vec::new();
    for f in &frames {
        bytes.extend_from_slice(&(f.len() as u32).to_be_bytes());
        bytes.extend_from_slice(f);
    }
    s.write_all(&bytes).unwrap();
    for (i, f) in frames.iter().enumerate() {
        expect_frame(&a, f, &format!("frame {i} of 50 written at once, at a"));
    }
    for (i, f) in frames.iter().enumerate() {
        expect_frame(&b, f, &format!("frame {i} of 50 written at once, at b"));
    }
    // One frame dribbled a few bytes at a time, the prefix split too.
    let f = frame(BCAST, mac(3), ETH_EXP, 1514, 77);
    let mut bytes = (f.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&f);
    for chunk in bytes.chunks(3).take(10) {
        s.write_all(chunk).unwrap();
        s.flush().unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    s.write_all(&bytes[30..]).unwrap();
    expect_frame(&a, &f, "a frame written in pieces");
    expect_frame(&b, &f, "a frame written in pieces");
    // Runts inside the stream (lengths 1..13) are dropped, the stream goes on.
    let mut bytes = Vec::new();
    for n in [1usize, 13] {
        bytes.extend_from_slice(&(n as u32).to_be_bytes());
        bytes.extend_from_slice(&vec![0xcd; n]);
    }
    let ok = frame(BCAST, mac(3), ETH_EXP, 14, 78);
    bytes.extend_from_slice(&(ok.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&ok);
    s.write_all(&bytes).unwrap();
    expect_frame(&a, &ok, "the 14-byte frame after runts in the stream");
    expect_frame(&b, &ok, "the 14-byte frame after runts in the stream");
    // Many frames from a to the client arrive framed and in order.
    let back: Vec<Vec<u8>> = (0..50u8)
        .map(|i| frame(mac(2), mac(1), ETH_EXP, 60 + i as usize * 30, i))
        .collect();
    for (i, f) in back.iter().enumerate() {
        a.send(f);
        if i % 16 == 15 {
            // Keep the UDP receive side of the switch from overflowing.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    for (i, f) in back.iter().enumerate() {
        let got = read_framed(&mut s, WAIT).unwrap_or_else(|| panic!("frame {i} to the client"));
        assert_eq!(common::diff(&got, f), None, "frame {i} to the client");
        expect_frame(&b, f, &format!("frame {i} from a at b"));
    }
    expect_nothing(&a, "a");
    expect_nothing(&b, "b");
    d.stop_clean();
}

#[test]
fn max_frame_applies_to_stream_lengths() {
    let port = free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-max-frame", "1514")
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let mut s = served_client(port, &a, &b, 1);
    let max = frame(BCAST, mac(2), ETH_EXP, 1514, 2);
    write_framed(&mut s, &max);
    expect_frame(&a, &max, "1514 bytes with -max-frame 1514");
    expect_frame(&b, &max, "1514 bytes with -max-frame 1514");
    // One byte over: that frame is dropped and counted, the connection stays.
    write_framed(&mut s, &frame(BCAST, mac(2), ETH_EXP, 1515, 3));
    let next = frame(BCAST, mac(2), ETH_EXP, 60, 4);
    write_framed(&mut s, &next);
    expect_frame(
        &a,
        &next,
        "the frame after the 1515-byte one, same connection",
    );
    expect_frame(
        &b,
        &next,
        "the frame after the 1515-byte one, same connection",
    );
    expect_nothing(&a, "nothing of the 1515-byte frame");
    drop(s);
    d.stop_clean();
}

#[test]
fn connect_port_whose_peer_left_drops_frames_and_shuts_down_cleanly() {
    // pollswitch connects to a listener of the test, which then goes away: frames to
    // the port are dropped (not queued forever), the rest works, nothing leaks.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=c,connect=127.0.0.1:{port}"))
        .on_hub("c", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let (mut s, _) = listener.accept().unwrap();
    let f = frame(BCAST, mac(1), ETH_EXP, 60, 1);
    a.send(&f);
    assert_eq!(read_framed(&mut s, WAIT).as_deref(), Some(&f[..]));
    expect_frame(&b, &f, "a to b");
    drop(s);
    drop(listener);
    // Give the switch time to notice, while frames keep coming.
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut i = 0u8;
    while Instant::now() < deadline {
        a.send(&frame(BCAST, mac(1), ETH_EXP, 1514, i));
        expect_frame(&b, &frame(BCAST, mac(1), ETH_EXP, 1514, i), "a to b");
        i = i.wrapping_add(1);
    }
    d.stop_clean();
}

#[test]
fn a_second_client_is_served_once_the_first_leaves() {
    // One connection at a time, as QEMU's listen= does: a second client waits (in the
    // kernel's backlog) until the first goes, then is served, frames it sent meanwhile
    // included.
    let port = free_tcp_port();
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .netdev(&format!("socket,id=l,listen=127.0.0.1:{port}"))
        .on_hub("l", 0)
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    let first = served_client(port, &a, &b, 1);
    let mut second = TcpStream::connect(("127.0.0.1", port)).expect("second client connects");
    let early = frame(BCAST, mac(2), ETH_EXP, 300, 2);
    write_framed(&mut second, &early);
    expect_nothing(&a, "a frame from a client waiting behind another");
    // Frames from a go to the first client only.
    let mut first = first;
    let f = frame(mac(1), mac(3), ETH_EXP, 60, 3);
    a.send(&f);
    assert_eq!(read_framed(&mut first, WAIT).as_deref(), Some(&f[..]));
    expect_frame(&b, &f, "a to b");
    drop(first);
    expect_frame(&a, &early, "the waiting client's frame once the first left");
    expect_frame(&b, &early, "the waiting client's frame once the first left");
    let g = frame(mac(2), mac(3), ETH_EXP, 1514, 4);
    a.send(&g);
    assert_eq!(
        read_framed(&mut second, WAIT).as_deref(),
        Some(&g[..]),
        "a to the second client"
    );
    expect_frame(&b, &g, "a to b");
    d.stop_clean();
}
