//! The data plane end to end with in-memory loopback ports: hubs, peers, link state,
//! several workers, hot removal, and buffer accounting.

use std::time::{Duration, Instant};

use switch::loopback::{loopback, LoopbackHandle};
use switch::{ClientSpec, DropReason, SpecKind, Switch, SwitchConfig};

fn start(workers: usize, poll_us: u32) -> Switch {
    // Rings as deep as the old fixed ones: the floods below burst 3000 frames at once
    // while three threads share two cores.
    Switch::start(&SwitchConfig {
        cores: vec![None; workers],
        pool_size: 16384,
        max_frame: 9216,
        gso_buffers: 0,
        default_poll_us: poll_us,
        ring_size: Some(4096),
    })
    .unwrap()
}

fn add_port(sw: &mut Switch, name: &str) -> LoopbackHandle {
    add_port_of_depth(sw, name, 8192)
}

fn add_port_of_depth(sw: &mut Switch, name: &str, depth: usize) -> LoopbackHandle {
    let (b, h) = loopback(depth);
    sw.add(ClientSpec {
        name: name.into(),
        kind: SpecKind::Port {
            queues: vec![Box::new(b)],
            poll_us: None,
        },
        peer: None,
        nic: false,
    })
    .unwrap();
    h
}

fn add_hubport(sw: &mut Switch, name: &str, hub: i32, peer: &str) {
    sw.add(ClientSpec {
        name: name.into(),
        kind: SpecKind::HubPort { hub, vlan: None },
        peer: Some(peer.into()),
        nic: false,
    })
    .unwrap();
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut f = vec![tag; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, tag]);
    f
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    f()
}

fn collect(h: &LoopbackHandle, want: usize, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match h.take() {
            Some(f) => got.push(f),
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    got
}

fn hub_floods(workers: usize) {
    let mut sw = start(workers, 0);
    let pool = sw.pool().clone();
    let hs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| add_port(&mut sw, n))
        .collect();
    for n in ["a", "b", "c"] {
        add_hubport(&mut sw, &format!("h{n}"), 0, n);
    }
    let d = add_port(&mut sw, "d");
    add_hubport(&mut sw, "hd", 1, "d");
    for len in [14, 60, 1514, 9000, 9216] {
        assert!(hs[0].inject(frame(1, len)));
        for h in &hs[1..] {
            let got = collect(h, 1, Duration::from_secs(2));
            assert_eq!(got, vec![frame(1, len)], "len {len}");
        }
    }
    // Over-size and under-size frames are dropped and counted, never truncated.
    assert!(hs[0].inject(frame(1, 9217)));
    assert!(hs[0].inject(vec![0; 13]));
    let dropped = |why| sw.counters("a").unwrap().unwrap().dropped(why);
    assert!(wait_until(Duration::from_secs(5), || dropped(
        DropReason::Oversize
    ) == 1
        && dropped(DropReason::Undersize) == 1));
    assert!(hs[0].take().is_none(), "never back to the sender");
    assert!(d.take().is_none(), "nothing leaks to another hub");
    // Many frames from all three at once.
    for i in 0..3000usize {
        assert!(hs[i % 3].inject(frame((i % 3) as u8 + 10, 64)));
    }
    for h in &hs {
        assert_eq!(collect(h, 2000, Duration::from_secs(5)).len(), 2000);
    }
    let backends = sw.shutdown().unwrap();
    assert_eq!(backends.len(), 4);
    drop(backends);
    assert_eq!(pool.free_count(), pool.count());
}

#[test]
fn hub_floods_with_one_worker() {
    hub_floods(1);
}

#[test]
fn hub_floods_across_two_workers() {
    hub_floods(2);
}

#[test]
fn buffers_all_return_to_the_pool() {
    let mut sw = start(2, 0);
    let pool = sw.pool().clone();
    let total = pool.count();
    let a = add_port(&mut sw, "a");
    let b = add_port(&mut sw, "b");
    let c = add_port(&mut sw, "c");
    for n in ["a", "b", "c"] {
        add_hubport(&mut sw, &format!("h{n}"), 7, n);
    }
    // Paced in chunks the pool can hold, so no frame is dropped for want of a buffer.
    for chunk in 0..10 {
        for i in 0..500 {
            assert!(a.inject(frame(1, 60 + (chunk * 500 + i) % 1400)));
        }
        let got_b = collect(&b, 500, Duration::from_secs(5));
        let got_c = collect(&c, 500, Duration::from_secs(5));
        assert_eq!((got_b.len(), got_c.len()), (500, 500));
    }
    let ca = sw.counters("a").unwrap().unwrap();
    assert_eq!((ca.rx_packets, ca.total_drops()), (5000, 0));
    assert_eq!(
        pool.free_count(),
        total,
        "every buffer is free after traffic stops"
    );
    drop(sw.shutdown().unwrap());
    assert_eq!(pool.free_count(), total);
}

#[test]
fn link_down_drops_both_ways_and_counts() {
    let mut sw = start(1, 0);
    let a = add_port(&mut sw, "a");
    let b = add_port(&mut sw, "b");
    add_hubport(&mut sw, "ha", 0, "a");
    add_hubport(&mut sw, "hb", 0, "b");
    sw.set_link("b", false).unwrap();
    a.inject(frame(1, 60));
    b.inject(frame(2, 60));
    let link_drops = || {
        sw.counters("b")
            .unwrap()
            .unwrap()
            .dropped(DropReason::LinkDown)
    };
    assert!(
        wait_until(Duration::from_secs(5), || link_drops() == 2),
        "one from b, one to b"
    );
    assert!(a.take().is_none() && b.take().is_none());
    sw.set_link("b", true).unwrap();
    a.inject(frame(1, 60));
    assert_eq!(collect(&b, 1, Duration::from_secs(2)).len(), 1);
    assert!(matches!(
        sw.set_link("zz", true),
        Err(switch::SwitchError::NotFound(_))
    ));
    drop(sw.shutdown().unwrap());
}

#[test]
fn hot_remove_while_frames_flow() {
    let mut sw = start(2, 0);
    let pool = sw.pool().clone();
    let total = pool.count();
    let a = add_port(&mut sw, "a");
    let b = add_port(&mut sw, "b");
    add_hubport(&mut sw, "ha", 0, "a");
    add_hubport(&mut sw, "hb", 0, "b");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let a = a.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..32 {
                    if a.inject(frame(1, 60)) {
                        n += 1;
                    }
                }
                // About 300 kframes/s at most: traffic, not a CPU hog on a 2-core host.
                std::thread::sleep(Duration::from_micros(100));
                while b.take().is_some() {}
            }
            n
        })
    };
    for i in 0..200 {
        let name = format!("x{i}");
        let x = add_port(&mut sw, &name);
        add_hubport(&mut sw, &format!("hx{i}"), 0, &name);
        std::thread::sleep(Duration::from_micros(200));
        drop(sw.remove(&format!("hx{i}")).unwrap());
        drop(sw.remove(&name).unwrap());
        while x.take().is_some() {}
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = feeder.join().unwrap();
    assert!(sent > 0);
    std::thread::sleep(Duration::from_millis(100));
    drop(sw.shutdown().unwrap());
    assert_eq!(
        pool.free_count(),
        total,
        "no buffer lost across 200 add/remove cycles"
    );
}

#[test]
fn every_drop_path_gives_its_buffers_back() {
    // Rings of two slots between the workers, a destination whose queue takes four
    // frames, one whose link is down, and one port connected to nothing.
    let mut sw = Switch::start(&SwitchConfig {
        cores: vec![None; 2],
        pool_size: 4096,
        max_frame: 1514,
        gso_buffers: 0,
        default_poll_us: 0,
        ring_size: Some(2),
    })
    .unwrap();
    let pool = sw.pool().clone();
    // Placement is least-loaded in order: a, c, e on worker 0; b, d on worker 1.
    let a = add_port_of_depth(&mut sw, "a", 8192);
    let b = add_port_of_depth(&mut sw, "b", 8192);
    let c = add_port_of_depth(&mut sw, "c", 4);
    let d = add_port_of_depth(&mut sw, "d", 8192);
    let e = add_port_of_depth(&mut sw, "e", 8192);
    for n in ["a", "b", "c", "d"] {
        add_hubport(&mut sw, &format!("h{n}"), 0, n);
    }
    sw.set_link("hd", false).unwrap();
    sw.set_link("d", false).unwrap();
    for i in 0..3000usize {
        while !a.inject(frame(1, 60 + i % 64)) {
            std::thread::yield_now();
        }
        if i % 500 == 0 {
            assert!(e.inject(frame(5, 60)));
        }
    }
    let drops = |n: &str, why| sw.counters(n).unwrap().unwrap().dropped(why);
    assert!(wait_until(Duration::from_secs(10), || {
        sw.counters("a").unwrap().unwrap().rx_packets == 3000 && drops("e", DropReason::NoDest) == 6
    }));
    // The premise: every path was taken.
    assert!(
        drops("a", DropReason::RingFull) > 0,
        "ring-full at the sender"
    );
    assert!(
        drops("c", DropReason::TxFull) > 0,
        "tx-full at the slow queue"
    );
    assert!(
        drops("d", DropReason::LinkDown) > 0 || sw.counters("d").unwrap().unwrap().tx_packets == 0
    );
    while b.take().is_some() || c.take().is_some() {}
    assert!(d.take().is_none());
    assert!(wait_until(Duration::from_secs(5), || pool.free_count() == pool.count()));
    drop(sw.shutdown().unwrap());
    assert_eq!(
        pool.free_count(),
        pool.count(),
        "every dropped frame's buffer came back"
    );
    assert_eq!(pool.misuse_count(), 0);
}
