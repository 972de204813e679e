//! Hub semantics and frame sizes over `socket,udp=` ports, the simplest real port:
//!
//! ```text
//!  UdpEnd a ──udp── socket a ─ hubport ┐
//!  UdpEnd b ──udp── socket b ─ hubport ├─ hub 0: every frame to every other port
//!  UdpEnd c ──udp── socket c ─ hubport ┘         on the hub, never back
//! ```
//!
//! Every test stops the daemon with SIGTERM and checks that it exits 0 with every pool
//! buffer free.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{expect_frame, expect_nothing, mac, Args, BCAST, ETH_EXP, WAIT};
use tests::{bin_path, frame, free_udp_port, require_tool, Daemon, UdpEnd};

/// The frame sizes every path must carry unchanged: the smallest (header only), the
/// smallest Ethernet frame without FCS, a full standard frame, a jumbo frame.
const SIZES: [usize; 4] = [14, 60, 1514, 9000];

#[test]
fn frame_from_one_port_reaches_the_two_others_never_itself() {
    let mut ends = [UdpEnd::new(), UdpEnd::new(), UdpEnd::new()];
    let [a, b, c] = &mut ends;
    let d = Args::new()
        .udp("a", 0, a)
        .udp("b", 0, b)
        .udp("c", 0, c)
        .start();
    let mut seed = 0u8;
    for from in 0..3 {
        for len in SIZES {
            seed = seed.wrapping_add(1);
            let f = frame(BCAST, mac(from as u8), ETH_EXP, len, seed);
            ends[from].send(&f);
            for to in (0..3).filter(|&to| to != from) {
                expect_frame(
                    &ends[to],
                    &f,
                    &format!("{len}-byte frame from port {from} to port {to}"),
                );
            }
        }
    }
    for (i, end) in ends.iter().enumerate() {
        expect_nothing(end, &format!("port {i}: no frame comes back to its sender"));
    }
    d.stop_clean();
}

#[test]
fn oversize_frames_are_dropped_whole_and_traffic_goes_on() {
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new().udp("a", 0, &mut a).udp("b", 0, &mut b).start();
    // The default maximum is 9216 bytes: exactly that passes.
    let max = frame(BCAST, mac(1), ETH_EXP, 9216, 1);
    a.send(&max);
    expect_frame(&b, &max, "a frame of exactly the default maximum (9216)");
    for (n, len) in [9217usize, 9300, 65507].into_iter().enumerate() {
        a.send(&frame(BCAST, mac(1), ETH_EXP, len, 2));
        // The next frame is what arrives first: the long one was neither delivered nor
        // cut down to the maximum.
        let ok = frame(BCAST, mac(1), ETH_EXP, 60, 10 + n as u8);
        a.send(&ok);
        expect_frame(
            &b,
            &ok,
            &format!("the 60-byte frame after a {len}-byte one"),
        );
    }
    // Both directions still work.
    let back = frame(mac(1), mac(2), ETH_EXP, 1514, 3);
    b.send(&back);
    expect_frame(&a, &back, "b to a after the drops");
    expect_nothing(&a, "a");
    expect_nothing(&b, "b");
    d.stop_clean();
}

#[test]
fn max_frame_option_sets_the_limit() {
    // -max-frame 1514: a standard frame passes, one byte more does not.
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-max-frame", "1514")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    for (len, delivered) in [(1514, true), (1515, false), (9000, false), (60, true)] {
        let f = frame(BCAST, mac(1), ETH_EXP, len, len as u8);
        a.send(&f);
        if delivered {
            expect_frame(&b, &f, &format!("{len} bytes with -max-frame 1514"));
        }
    }
    expect_nothing(&b, "1515 and 9000 bytes with -max-frame 1514");
    d.stop_clean();

    // -max-frame 65535: the largest datagram UDP over IPv4 can carry passes unchanged.
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-max-frame", "65535")
        .opt("-pool-size", "256")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .start();
    for len in [14, 9217, 32768, 65507] {
        let f = frame(BCAST, mac(2), ETH_EXP, len, 7);
        b.send(&f);
        expect_frame(&a, &f, &format!("{len} bytes with -max-frame 65535"));
    }
    d.stop_clean();
}

#[test]
fn datagrams_shorter_than_an_ethernet_header_are_dropped() {
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new().udp("a", 0, &mut a).udp("b", 0, &mut b).start();
    for len in [0usize, 1, 13] {
        a.send(&vec![0xee; len]);
    }
    let ok = frame(BCAST, mac(1), ETH_EXP, 14, 1);
    a.send(&ok);
    expect_frame(
        &b,
        &ok,
        "the 14-byte frame after runts of 0, 1 and 13 bytes",
    );
    expect_nothing(&b, "b");
    d.stop_clean();
}

#[test]
fn hubs_do_not_leak_into_each_other() {
    let mut e: Vec<UdpEnd> = (0..4).map(|_| UdpEnd::new()).collect();
    let [a, b, c, x] = &mut e[..] else {
        unreachable!()
    };
    let d = Args::new()
        .udp("a", 0, a)
        .udp("b", 0, b)
        .udp("c", 7, c)
        .udp("x", 7, x)
        .start();
    let f0 = frame(BCAST, mac(1), ETH_EXP, 100, 1);
    e[0].send(&f0);
    expect_frame(&e[1], &f0, "hub 0: a to b");
    let f7 = frame(BCAST, mac(3), ETH_EXP, 100, 2);
    e[2].send(&f7);
    expect_frame(&e[3], &f7, "hub 7: c to x");
    let f7b = frame(BCAST, mac(4), ETH_EXP, 1514, 3);
    e[3].send(&f7b);
    expect_frame(&e[2], &f7b, "hub 7: x to c");
    for (i, end) in e.iter().enumerate() {
        expect_nothing(end, &format!("port {i}: nothing from the other hub"));
    }
    d.stop_clean();
}

#[test]
fn port_without_a_peer_goes_nowhere() {
    // `lone` is on no hub (no peer): its frames are dropped, and it receives nothing.
    // A hubport alone on its hub (hub 5) leads nowhere either.
    let (mut a, mut b, mut lone) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .netdev(&common::udp_spec("lone", &mut lone))
        .netdev("hubport,id=solo,hubid=5")
        .start();
    for i in 0..20u8 {
        lone.send(&frame(BCAST, mac(9), ETH_EXP, 60, i));
    }
    let f = frame(BCAST, mac(1), ETH_EXP, 60, 99);
    a.send(&f);
    expect_frame(&b, &f, "a to b");
    expect_nothing(&a, "a: nothing from the lone port");
    expect_nothing(&b, "b: nothing from the lone port");
    expect_nothing(&lone, "the lone port gets nothing from hub 0");
    d.stop_clean();
}

#[test]
fn a_burst_arrives_whole_and_in_order_at_every_other_port() {
    // 2400 frames of mixed sizes from one port, sent 32 at a time (so that no kernel
    // socket buffer can overflow), with -poll-us 20: the busy-polling path. One sender,
    // one flow: a switch must neither lose nor reorder them.
    let (mut a, mut b, mut c) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let d = Args::new()
        .opt("-poll-us", "20")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .udp("c", 0, &mut c)
        .start();
    const WINDOW: usize = 32;
    const TOTAL: usize = 2400;
    let sizes = [60usize, 1514, 16, 600, 9000, 128];
    // Frame i carries i in its first two payload bytes.
    let index = |f: &Vec<u8>| u16::from_be_bytes([f[14], f[15]]) as usize;
    for n in (0..TOTAL).step_by(WINDOW) {
        let batch: Vec<Vec<u8>> = (n..n + WINDOW)
            .map(|i| {
                let mut f = frame(BCAST, mac(1), ETH_EXP, sizes[i % sizes.len()], i as u8);
                f[14..16].copy_from_slice(&(i as u16).to_be_bytes());
                f
            })
            .collect();
        for f in &batch {
            a.send(f);
        }
        let got: Vec<Vec<Vec<u8>>> = [&b, &c]
            .iter()
            .map(|end| {
                std::iter::from_fn(|| end.recv_timeout(WAIT))
                    .take(WINDOW)
                    .collect()
            })
            .collect();
        let order: Vec<Vec<usize>> = got.iter().map(|g| g.iter().map(index).collect()).collect();
        let want: Vec<usize> = (n..n + WINDOW).collect();
        for (name, (g, o)) in ["b", "c"].into_iter().zip(got.iter().zip(&order)) {
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                want,
                "frames {n}..{} at {name}: some lost; arrived: {o:?}",
                n + WINDOW
            );
            assert_eq!(
                o,
                &want,
                "frames {n}..{} arrived out of order at {name} (b: {:?}, c: {:?})",
                n + WINDOW,
                order[0],
                order[1]
            );
            for (g, want) in g.iter().zip(&batch) {
                assert_eq!(
                    common::diff(g, want),
                    None,
                    "frame {} at {name}",
                    index(want)
                );
            }
        }
    }
    expect_nothing(&a, "the sender of the burst");
    expect_nothing(&b, "b after the burst");
    d.stop_clean();
}

#[test]
fn socket_fd_ports_inherited_from_the_parent() {
    // `fd=N`: descriptors the daemon inherits. bash opens them (`/dev/udp`, `/dev/tcp`)
    // and execs the daemon, so the daemon's pid is bash's.
    let bash = require_tool("bash");
    let mut a = UdpEnd::new();
    let dgram_peer = UdpEnd::new();
    let tcp_peer = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let args = Args::new()
        .udp("a", 0, &mut a)
        .netdev("socket,id=fu,fd=3")
        .on_hub("fu", 0)
        .netdev("socket,id=ft,fd=4")
        .on_hub("ft", 0);
    let script = format!(
        "exec 3<>/dev/udp/127.0.0.1/{} 4<>/dev/tcp/127.0.0.1/{} && exec {} \"$@\"",
        dgram_peer.port(),
        tcp_peer.local_addr().unwrap().port(),
        bin_path("pollswitch").display()
    );
    let mut argv = vec!["-c", &script, "pollswitch"];
    argv.extend(args.strs());
    let d = Daemon::start_program(&bash, &argv);
    let (mut tcp, _) = tcp_peer.accept().expect("the daemon's fd=4 connected here");

    // From the UDP port a to both descriptor ports.
    let f = frame(BCAST, mac(1), ETH_EXP, 1514, 1);
    a.send(&f);
    let (got, dgram_src) = dgram_peer
        .recv_from_timeout(WAIT)
        .expect("frame out of the datagram fd port");
    assert_eq!(common::diff(&got, &f), None, "datagram fd port");
    assert_eq!(
        common::read_framed(&mut tcp, WAIT).as_deref(),
        Some(&f[..]),
        "stream fd port"
    );
    // Into the datagram fd port (it is connected: reply to where it sends from).
    let g = frame(BCAST, mac(2), ETH_EXP, 60, 2);
    dgram_peer.send_to(&g, dgram_src);
    expect_frame(&a, &g, "datagram fd port to a");
    assert_eq!(common::read_framed(&mut tcp, WAIT).as_deref(), Some(&g[..]));
    // Into the stream fd port.
    let h = frame(BCAST, mac(3), ETH_EXP, 9000, 3);
    common::write_framed(&mut tcp, &h);
    expect_frame(&a, &h, "stream fd port to a");
    assert_eq!(dgram_peer.recv_timeout(WAIT).as_deref(), Some(&h[..]));
    expect_nothing(&a, "a");
    d.stop_clean();
}

#[test]
fn json_netdev_syntax_makes_the_same_ports() {
    let (a, b) = (UdpEnd::new(), UdpEnd::new());
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let ja = format!(
        r#"{{"type": "socket", "id": "a", "udp": "{}", "localaddr": "127.0.0.1:{pa}"}}"#,
        a.local_addr()
    );
    let jb = format!(
        r#"{{"type": "socket", "id": "b", "udp": "{}", "localaddr": "127.0.0.1:{pb}"}}"#,
        b.local_addr()
    );
    let d = Args::new()
        .netdev(&ja)
        .netdev(r#"{"type": "hubport", "id": "ha", "hubid": 0, "netdev": "a"}"#)
        .netdev(&jb)
        .on_hub("b", 0)
        .start();
    let f = frame(BCAST, mac(1), ETH_EXP, 200, 1);
    a.send_to(&f, ([127, 0, 0, 1], pa).into());
    expect_frame(&b, &f, "JSON-configured a to b");
    d.stop_clean();
}

#[test]
fn daemon_stays_idle_without_traffic() {
    // With -poll-us 0 an idle worker sleeps in the kernel: over a second of no traffic
    // the daemon uses only a small fraction of a core.
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let d = Args::new().udp("a", 0, &mut a).udp("b", 0, &mut b).start();
    let f = frame(BCAST, mac(1), ETH_EXP, 60, 1);
    a.send(&f);
    expect_frame(&b, &f, "a to b before idling");
    let ticks = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit_once(')').unwrap().1;
        let v: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime: fields 14 and 15 of stat, 12 and 13 after "pid (comm)".
        v[11].parse::<u64>().unwrap() + v[12].parse::<u64>().unwrap()
    };
    let hz: u64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let before = ticks(d.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks(d.pid()) - before;
    assert!(
        used * 100 / hz <= 20,
        "an idle daemon with -poll-us 0 used {used} ticks ({hz}/s) of CPU in one second"
    );
    a.send(&f);
    expect_frame(&b, &f, "a to b after idling");
    d.stop_clean();
}

#[test]
fn a_pool_smaller_than_the_ports_want_is_refused_or_still_forwards() {
    // Each UDP port keeps up to 64 receives posted, each holding a pool buffer: a pool
    // of 64 cannot fill even one port. The daemon may refuse such a configuration (exit
    // status 1, saying the pool is too small) or serve it; a port that silently never
    // receives is wrong.
    let (mut a, mut b, mut c) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let args = Args::new()
        .opt("-pool-size", "64")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .udp("c", 0, &mut c);
    let d = match std::panic::catch_unwind(|| args.start()) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains("exited early") && msg.contains("pool"),
                "a refused configuration must say why (the pool): {msg}"
            );
            return;
        }
    };
    let ends = [&a, &b, &c];
    for i in 0..150usize {
        let from = i % 3;
        let f = frame(BCAST, mac(from as u8), ETH_EXP, 60 + i * 50, i as u8);
        ends[from].send(&f);
        for to in (0..3).filter(|&t| t != from) {
            expect_frame(
                ends[to],
                &f,
                &format!("frame {i} from port {from} to port {to}, pool of 64"),
            );
        }
    }
    for (i, end) in ends.iter().enumerate() {
        expect_nothing(end, &format!("port {i}"));
    }
    d.stop_clean();
}
