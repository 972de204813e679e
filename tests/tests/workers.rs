//! Two workers and the pool's isolation, against the real daemon: hubs whose ports live
//! on different workers (order per flow, nothing lost at a moderate rate), a stalled
//! egress port that holds what it may and no more while the others forward on, and
//! ports added until the pool is spoken for. Every daemon is stopped with the check
//! that every packet buffer came back.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{mac, probe, udp_spec, until_path_works, Args, BCAST, ETH_EXP};
use serde_json::{json, Value};
use tests::{frame, wait_until, Daemon, QmpClient, TempDir, UdpEnd};

struct Sut {
    d: Daemon,
    q: QmpClient,
    _dir: TempDir,
}

fn start(args: Args) -> Sut {
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let d = args
        .opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        )
        .start();
    let q = QmpClient::connect_unix_negotiated(&sock).expect("QMP");
    Sut { d, q, _dir: dir }
}

impl Sut {
    fn stats(&mut self) -> Value {
        self.q.execute_ok("x-query-stats", json!({}))
    }

    fn port(&mut self, name: &str) -> Value {
        let s = self.stats();
        s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no port {name} in {s}"))
            .clone()
    }

    fn stop(self) {
        drop(self.q);
        self.d.stop_clean();
    }
}

/// Sends `total` frames of flow 1 from `a` at ~40 kpps while a thread counts what `b`
/// receives (a socket's queue holds only a few hundred frames); returns the count.
fn send_while_receiving(a: &UdpEnd, b: &UdpEnd, total: u32) -> u32 {
    std::thread::scope(|sc| {
        let rx = sc.spawn(|| {
            let mut got = 0u32;
            while got < total && b.recv_timeout(Duration::from_secs(2)).is_some() {
                got += 1;
            }
            got
        });
        for seq in 0..total {
            a.send(&seq_frame(1, seq));
            if seq % 16 == 15 {
                std::thread::sleep(Duration::from_micros(400));
            }
        }
        rx.join().unwrap()
    })
}

/// A frame of flow `src` with sequence number `seq` in its payload.
fn seq_frame(src: u8, seq: u32) -> Vec<u8> {
    let mut f = frame(BCAST, mac(src), ETH_EXP, 64, src);
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

#[test]
fn a_hub_across_two_workers_keeps_every_flow_whole_and_in_order() {
    const N: u32 = 600;
    let mut ends: Vec<UdpEnd> = (0..4).map(|_| UdpEnd::new()).collect();
    let mut args = Args::new().opt("-cores", "0,1").opt("-pool-size", "4096");
    for (i, e) in ends.iter_mut().enumerate() {
        args = args.udp(&format!("p{i}"), 0, e);
    }
    let mut sut = start(args);
    let stats = sut.stats();
    let per_worker: Vec<u64> = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["ports"].as_u64().unwrap())
        .collect();
    assert_eq!(
        per_worker,
        vec![2, 2],
        "the hub spans both workers: {stats}"
    );
    for i in 1..4 {
        until_path_works(&ends[0], &ends[i], probe, &format!("p0 to p{i}"));
    }
    for e in &ends {
        e.drain(Duration::from_millis(200));
    }
    // Every end sends its flow in turn, a few frames at a time (~8 kpps in all), while
    // a thread per end receives (a socket's queue holds only a few hundred frames).
    let results: Vec<(usize, usize)> = std::thread::scope(|sc| {
        let receivers: Vec<_> = ends
            .iter()
            .enumerate()
            .map(|(i, e)| {
                sc.spawn(move || {
                    let mut next: HashMap<u8, u32> = HashMap::new();
                    let want = 3 * N as usize;
                    let mut got = 0;
                    let deadline = Instant::now() + Duration::from_secs(15);
                    while got < want && Instant::now() < deadline {
                        let Some(f) = e.recv_timeout(Duration::from_millis(500)) else {
                            continue;
                        };
                        let src = f[11];
                        assert_ne!(src, i as u8 + 1, "p{i} got its own frame back");
                        let seq = u32::from_be_bytes([f[14], f[15], f[16], f[17]]);
                        let expect = next.entry(src).or_insert(0);
                        assert_eq!(seq, *expect, "p{i}: flow {src} out of order or lost");
                        *expect += 1;
                        got += 1;
                    }
                    (got, want)
                })
            })
            .collect();
        for seq in 0..N {
            for (i, e) in ends.iter().enumerate() {
                e.send(&seq_frame(i as u8 + 1, seq));
            }
            if seq % 8 == 7 {
                std::thread::sleep(Duration::from_millis(4));
            }
        }
        receivers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (i, (got, want)) in results.into_iter().enumerate() {
        assert_eq!(got, want, "p{i} received {got} of {want} frames");
    }
    let stats = sut.stats();
    for p in stats["ports"].as_array().unwrap() {
        let drops: u64 = common::total_drops(p);
        assert_eq!(drops, 0, "{p}");
    }
    sut.stop();
}

#[test]
fn a_stalled_egress_port_holds_its_share_and_the_others_forward_on() {
    // A small pool: before the isolation, what the stalled port held came out of
    // everybody's receive buffers.
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let args = Args::new()
        .opt("-pool-size", "1024")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .netdev("x-null,id=s,stall=on")
        .on_hub("s", 0);
    let mut sut = start(args);
    until_path_works(&a, &b, probe, "a to b");
    b.drain(Duration::from_millis(200));
    let total = 3000u32;
    let got = send_while_receiving(&a, &b, total);
    assert_eq!(
        got, total,
        "b received {got} of {total} while s was stalled"
    );
    let s = sut.port("s");
    let tx_full = s["drops"]["tx-full"].as_u64().unwrap();
    // The stalled port keeps its share (256 frames, STALL_HOLD) and drops the rest.
    assert!(
        tx_full >= u64::from(total) - 256,
        "the stalled port must drop and count at itself: {s}"
    );
    let a_drops: u64 = common::total_drops(&sut.port("a"));
    assert_eq!(a_drops, 0, "nothing dropped at the receiving port");
    let pool = sut.stats()["pool"].clone();
    let (free, count) = (
        pool["free"].as_u64().unwrap(),
        pool["buffers"].as_u64().unwrap(),
    );
    assert!(free < count - 200, "the stalled port holds buffers: {pool}");
    // Deleting the stalled port gives them back (the rest of what is not free is lent
    // to the kernel for the two UDP ports' receives; the exit check counts those too).
    sut.q.execute_ok("netdev_del", json!({"id": "s"}));
    let mut freed = || {
        sut.stats()["pool"]["free"]
            .as_u64()
            .unwrap()
            .saturating_sub(free)
    };
    assert!(
        wait_until(Duration::from_secs(5), || freed() >= 256),
        "the stalled port's 256 buffers back after netdev_del: {}",
        sut.stats()["pool"]
    );
    sut.stop();
}

#[test]
fn ports_are_refused_once_the_pool_is_spoken_for() {
    let mut sut = start(Args::new().opt("-pool-size", "1024"));
    let mut ends = Vec::new();
    let mut refused = None;
    for i in 0..64 {
        let mut e = UdpEnd::new();
        let spec = udp_spec(&format!("u{i}"), &mut e);
        let mut args = json!({"type": "socket", "id": format!("u{i}")});
        for kv in spec.split(',').skip(2) {
            let (k, v) = kv.split_once('=').unwrap();
            args[k] = json!(v);
        }
        let r = sut.q.execute("netdev_add", args);
        if let Some(e) = r.get("error") {
            refused = Some((i, e.clone()));
            break;
        }
        sut.q.execute_ok(
            "netdev_add",
            json!({"type": "hubport", "id": format!("h{i}"), "hubid": 0, "netdev": format!("u{i}")}),
        );
        ends.push(e);
    }
    let (n, e) = refused.expect("a pool of 1024 cannot serve 64 UDP ports");
    assert!(n >= 2, "at least two ports fit: refused the {n}th");
    let desc = e["desc"].as_str().unwrap();
    assert_eq!(e["class"], "GenericError", "{e}");
    assert!(
        desc.contains("packet pool is spoken for") && desc.contains("-pool-size"),
        "the refusal says why and what to do: {desc}"
    );
    // The refused port does not exist; the last accepted one is fully served.
    let nd = sut.q.execute_ok("query-netdev", json!({}));
    assert!(!nd.to_string().contains(&format!("\"u{n}\"")), "{nd}");
    let last = ends.len() - 1;
    until_path_works(&ends[0], &ends[last], probe, "first to last accepted port");
    // Deleting one port makes room for another.
    sut.q
        .execute_ok("netdev_del", json!({"id": format!("h{last}")}));
    sut.q
        .execute_ok("netdev_del", json!({"id": format!("u{last}")}));
    let mut e = UdpEnd::new();
    let spec = udp_spec("again", &mut e);
    let mut args = json!({"type": "socket", "id": "again"});
    for kv in spec.split(',').skip(2) {
        let (k, v) = kv.split_once('=').unwrap();
        args[k] = json!(v);
    }
    sut.q.execute_ok("netdev_add", args);
    sut.stop();
}

#[test]
fn a_tap_whose_far_side_takes_nothing_drops_at_itself_while_others_forward() {
    // The tap's interface sits down in a namespace of its own: nothing there reads
    // what the switch writes. Two UDP ports on the same hub keep forwarding.
    let ifname = tests::unique("pst");
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let args = Args::new()
        .opt("-pool-size", "1024")
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .netdev(&format!("tap,id=t,ifname={ifname},script=no,downscript=no"))
        .on_hub("t", 0);
    let mut sut = start(args);
    let ns = tests::Netns::new();
    tests::move_link_into(&ifname, &ns, "");
    ns.exec_ok(&["ip", "link", "set", "dev", &ifname, "down"]);
    until_path_works(&a, &b, probe, "a to b");
    b.drain(Duration::from_millis(200));
    let before = sut.port("t");
    let total = 3000u32;
    let got = send_while_receiving(&a, &b, total);
    assert_eq!(
        got, total,
        "b received {got} of {total} beside the stuck tap"
    );
    // Every frame flooded to the tap is accounted for there: sent into the kernel or
    // dropped and counted at the tap itself.
    let count = |p: &Value| p["tx-packets"].as_u64().unwrap() + common::total_drops(p);
    assert!(
        wait_until(Duration::from_secs(5), || count(&sut.port("t"))
            - count(&before)
            == u64::from(total)),
        "tap: before {before}, after {}",
        sut.port("t")
    );
    let a_drops: u64 = common::total_drops(&sut.port("a"));
    assert_eq!(a_drops, 0, "nothing dropped at the receiving port");
    eprintln!("tap after: {}", sut.port("t"));
    sut.stop();
    drop(ns);
}
