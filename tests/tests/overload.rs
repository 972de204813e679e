//! Overload and isolation against the real daemon: one port offered ten times what it
//! can take while two other flows forward at their rate on the same worker. The slow
//! port is a `nic` whose memif application reads its ring at a fixed pace (the
//! capacity); its sender offers ten times that. The two other flows lose nothing,
//! and every frame the slow port could not take is dropped and counted there, under
//! `tx-full`, and nowhere else.
//!
//! ```text
//!  UdpEnd a ─udp─ a ─ hub 0 ─ b ─udp─ UdpEnd b      1 000 frames/s, numbered
//!  UdpEnd c ─udp─ c ─ hub 1 ─ d ─udp─ UdpEnd d      1 000 frames/s, numbered
//!  UdpEnd s ─udp─ s ─ hub 2 ─ nic x ══memif══ App   5 000 frames/s offered, the app
//!                                                   reads 500 a second (64 slots)
//! ```
//!
//! The figures it prints are RELIABILITY.md's ("Overload and isolation"):
//! `cargo test -p tests --test overload -- --nocapture`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backends::memif::{App, MemifConfig, Role};
use common::{mac, port_stats, probe, total_drops, until_path_works, Args, BCAST, ETH_EXP, WAIT};
use serde_json::Value;
use tests::{frame, TempDir, UdpEnd};

/// How long the three flows run.
const RUN: Duration = Duration::from_secs(5);
/// Frames per second of each healthy flow.
const FLOW_RATE: u64 = 1000;
/// Frames per second the memif application takes: the slow port's capacity.
const CAPACITY: u64 = 500;
/// Frames per second offered to the slow port: ten times its capacity.
const OFFERED: u64 = 10 * CAPACITY;

/// Sets its flag when dropped, so that the scope's loops end even when the test panics.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A 60-byte broadcast from `src` carrying `n` (big-endian) at byte 14.
fn numbered(src: u8, n: u64) -> Vec<u8> {
    let mut f = frame(BCAST, mac(src), ETH_EXP, 60, src);
    f[14..22].copy_from_slice(&n.to_be_bytes());
    f
}

fn number(f: &[u8]) -> Option<u64> {
    let n = f.get(14..22)?;
    (f[12..14] == ETH_EXP.to_be_bytes()).then(|| u64::from_be_bytes(n.try_into().unwrap()))
}

/// Every millisecond or so, calls `step` with how many are due for `rate` a second
/// since the start (at most a hundredth of a second's worth at once), until `stop`.
/// `step` returns how many it did; what it did not do stays due.
fn paced(rate: u64, stop: &AtomicBool, mut step: impl FnMut(u64) -> u64) -> u64 {
    let t0 = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (t0.elapsed().as_micros() as u64 * rate / 1_000_000).saturating_sub(done);
        if due > 0 {
            done += step(due.min(rate / 100 + 1));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    done
}

/// Sends numbered frames from `src` on `end` at `rate` until `stop`; how many.
fn send_at(end: &UdpEnd, src: u8, rate: u64, stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    paced(rate, stop, |k| {
        for _ in 0..k {
            end.send(&numbered(src, n));
            n += 1;
        }
        k
    })
}

/// The numbers of the frames `end` receives until `stop` is set and nothing has come
/// for half a second.
fn receive_all(end: &UdpEnd, stop: &AtomicBool) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match end.recv_timeout(Duration::from_millis(500)) {
            Some(f) => got.extend(number(&f)),
            None if stop.load(Ordering::Relaxed) => return got,
            None => {}
        }
    }
}

/// Asserts that `got` is exactly 0..sent, in order.
fn assert_whole(got: &[u64], sent: u64, what: &str) {
    let unique: HashSet<_> = got.iter().collect();
    let missing = sent.saturating_sub(unique.len() as u64);
    assert_eq!(
        got.len() as u64,
        sent,
        "{what}: {} received of {sent} sent ({missing} lost, {} duplicates)",
        got.len(),
        got.len() - unique.len()
    );
    assert!(
        got.iter().copied().eq(0..sent),
        "{what}: every frame, but out of order"
    );
}

fn drops(p: &Value, reason: &str) -> u64 {
    p["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason}: {p}"))
}

/// The local UDP ports of the switch's socket netdevs `ids` (`query-netdev`).
fn switch_ports(q: &mut tests::QmpClient, ids: &[&str]) -> Vec<u16> {
    let nd = q.execute_ok("query-netdev", Value::Null);
    ids.iter()
        .map(|id| {
            nd.as_array()
                .and_then(|a| a.iter().find(|n| n["id"] == *id))
                .and_then(|n| n["localaddr"].as_str())
                .and_then(|a| a.rsplit_once(':')?.1.parse().ok())
                .unwrap_or_else(|| panic!("no localaddr for {id} in {nd}"))
        })
        .collect()
}

fn count(p: &Value, key: &str) -> u64 {
    p[key].as_u64().unwrap_or_else(|| panic!("no {key}: {p}"))
}

#[test]
fn a_port_offered_ten_times_its_capacity_drops_at_itself_and_two_other_flows_lose_nothing() {
    let dir = TempDir::new();
    let sock = dir.join("memif.sock");
    let (mut a, mut b, mut c, mut d, mut s) = (
        UdpEnd::new(),
        UdpEnd::new(),
        UdpEnd::new(),
        UdpEnd::new(),
        UdpEnd::new(),
    );
    let args = Args::new()
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .udp("c", 1, &mut c)
        .udp("d", 1, &mut d)
        .udp("s", 2, &mut s)
        .netdev(&format!("nic,id=x,x-memif={}", sock.display()))
        .on_hub("x", 2);
    let (daemon, mut q) = args.start_with_qmp(&dir);
    let mut app = App::open(
        MemifConfig {
            socket: sock.clone(),
            role: Role::Client,
            id: 0,
            secret: None,
            log2_ring: 6,
            buffer_size: 2048,
            name: "slow".into(),
            zero_copy: None,
        },
        WAIT,
    )
    .unwrap_or_else(|e| panic!("memif app: {}", tests::testbed::chain(&e)));
    until_path_works(&a, &b, probe, "a to b");
    until_path_works(&c, &d, probe, "c to d");
    let deadline = Instant::now() + WAIT;
    while app.recv(64).is_empty() {
        assert!(Instant::now() < deadline, "no probe from s reached the app");
        s.send(&probe(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    app.recv(1024);
    let before: Vec<Value> = ["a", "b", "c", "d", "s", "x"]
        .iter()
        .map(|n| port_stats(&mut q, n))
        .collect();
    // What the kernel drops at the switch's own sockets (its receive queue full while
    // the worker had no CPU) never reaches a port: counted by the kernel, read here.
    let ports = switch_ports(&mut q, &["a", "c", "s"]);
    let kernel = || -> Vec<u64> {
        ports
            .iter()
            .map(|&p| tests::testbed::udp_socket_drops(p).map_or(0, |(d, _)| d))
            .collect()
    };
    let kernel_before = kernel();

    let (sending, receiving) = (AtomicBool::new(false), AtomicBool::new(false));
    let t0 = Instant::now();
    let (sent_a, sent_c, sent_s, got_b, got_d, taken, elapsed) = std::thread::scope(|sc| {
        let _stop = (SetOnDrop(&sending), SetOnDrop(&receiving));
        let rb = sc.spawn(|| receive_all(&b, &receiving));
        let rd = sc.spawn(|| receive_all(&d, &receiving));
        let ta = sc.spawn(|| send_at(&a, 1, FLOW_RATE, &sending));
        let tc = sc.spawn(|| send_at(&c, 3, FLOW_RATE, &sending));
        let ts = sc.spawn(|| send_at(&s, 5, OFFERED, &sending));
        // The app takes CAPACITY frames a second, never more: a step it finds fewer
        // waiting is not made up later.
        let mut taken = 0u64;
        let stop_at = Instant::now() + RUN;
        let reading = AtomicBool::new(false);
        paced(CAPACITY, &reading, |k| {
            taken += app.recv_with(k as usize, |f| assert!(number(f).is_some())) as u64;
            if Instant::now() >= stop_at {
                reading.store(true, Ordering::Relaxed);
            }
            k
        });
        let elapsed = t0.elapsed();
        sending.store(true, Ordering::Relaxed);
        let (sent_a, sent_c, sent_s) = (ta.join().unwrap(), tc.join().unwrap(), ts.join().unwrap());
        receiving.store(true, Ordering::Relaxed);
        let (got_b, got_d) = (rb.join().unwrap(), rd.join().unwrap());
        (sent_a, sent_c, sent_s, got_b, got_d, taken, elapsed)
    });
    // What is still in the app's ring was taken by the port: read it all now.
    let mut late = 0u64;
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(500) {
        late += app.recv_with(1024, |_| {}) as u64;
        std::thread::sleep(Duration::from_millis(5));
    }
    let after: Vec<Value> = ["a", "b", "c", "d", "s", "x"]
        .iter()
        .map(|n| port_stats(&mut q, n))
        .collect();
    let kernel_lost: Vec<u64> = kernel()
        .iter()
        .zip(&kernel_before)
        .map(|(a, b)| a - b)
        .collect();
    let delta = |i: usize, key: &str| count(&after[i], key) - count(&before[i], key);
    let delta_drop = |i: usize, reason: &str| drops(&after[i], reason) - drops(&before[i], reason);
    let (xs, secs) = (&after[5], elapsed.as_secs_f64());
    let x_tx = delta(5, "tx-packets");
    let x_full = delta_drop(5, "tx-full");
    eprintln!(
        "overload: {secs:.2} s; s offered {sent_s} ({:.0}/s) to x, whose app took {} \
         ({:.0}/s: {:.1}x over capacity); x: tx {x_tx}, dropped tx-full {x_full} \
         ({:.1} % of offered); a→b {sent_a} sent, {} received; c→d {sent_c} sent, {} \
         received; dropped by the kernel at the switch's sockets before it read them: \
         a {}, c {}, s {}",
        sent_s as f64 / secs,
        taken + late,
        (taken + late) as f64 / secs,
        sent_s as f64 / (taken + late) as f64,
        100.0 * x_full as f64 / sent_s as f64,
        got_b.len(),
        got_d.len(),
        kernel_lost[0],
        kernel_lost[1],
        kernel_lost[2],
    );

    // The two healthy flows: everything, in order.
    assert_whole(&got_b, sent_a, "a to b beside the overloaded port");
    assert_whole(&got_d, sent_c, "c to d beside the overloaded port");
    // The premise: x really was offered about ten times what it could take.
    assert!(
        sent_s as f64 >= 8.0 * (taken + late) as f64,
        "x was not overloaded: offered {sent_s}, taken {}",
        taken + late
    );
    // Every frame offered reached the switch (or was dropped by the kernel, counted
    // there, before the switch could read it) and went to x, which delivered it into
    // the ring or dropped and counted it, as tx-full, at itself.
    let s_rx = delta(4, "rx-packets");
    assert_eq!(
        s_rx + kernel_lost[2],
        sent_s,
        "s: sent {sent_s}, the switch read {s_rx}, the kernel dropped {}: {}",
        kernel_lost[2],
        after[4]
    );
    assert!(
        kernel_lost[2] <= sent_s / 100,
        "the kernel dropped {} of s's {sent_s} frames: the machine is too busy for the \
         figure to mean anything",
        kernel_lost[2]
    );
    assert_eq!(
        x_tx,
        taken + late,
        "x: what it put in the ring is what the app read"
    );
    assert_eq!(
        x_tx + x_full,
        s_rx,
        "x: every frame from s either delivered or dropped as tx-full: {xs}"
    );
    assert!(
        x_full >= s_rx * 8 / 10,
        "x dropped only {x_full} of {s_rx}: {xs}"
    );
    // Only x drops, and only for that reason.
    for (i, name) in ["a", "b", "c", "d", "s"].iter().enumerate() {
        let n = total_drops(&after[i]) - total_drops(&before[i]);
        assert_eq!(n, 0, "{name} dropped {n}: {}", after[i]);
    }
    assert_eq!(
        total_drops(xs) - total_drops(&before[5]),
        x_full,
        "x's drops are all tx-full: {xs}"
    );
    drop(q);
    drop(app);
    daemon.stop_clean();
}
