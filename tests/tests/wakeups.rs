//! No frame waits for a housekeeping tick: with `-poll-us 0` every worker sleeps as soon
//! as it is idle, so each frame below finds its worker asleep and must wake it. A lost
//! wake-up shows as a frame that takes the worker's longest sleep (250 ms) instead of
//! well under a millisecond. Alone in its file so that no other test loads the two
//! cores while it times frames.
//!
//! The race itself (a producer and a worker going to sleep in the same nanoseconds) is
//! too narrow to hit on purpose from outside: the daemon before the wake-up module
//! passes this test too. The loom model in `switch/src/wake.rs` is what proves the
//! protocol; this test proves the whole path (eventfd armed, kicks from the control
//! thread, rings between workers) wakes a sleeping worker at once.

mod common;

use std::time::{Duration, Instant};

use common::{mac, probe, until_path_works, Args, BCAST, ETH_EXP};
use serde_json::json;
use tests::{frame, QmpClient, TempDir, UdpEnd};

/// Slowest a frame may be: far below a 250 ms sleep timeout, far above a wake-up
/// (p50 ~0.2 ms, max ~3 ms for the debug daemon on a 2-core VM).
const LIMIT: Duration = Duration::from_millis(15);
/// Frames each way.
const FRAMES: usize = 300;
/// Time between frames: every worker is asleep again when the next one comes.
const GAP: Duration = Duration::from_millis(2);

/// Sends FRAMES frames one at a time from `from` and times each to `to`; returns the
/// latencies.
fn time_frames(from: &UdpEnd, to: &UdpEnd, seed: u8) -> Vec<Duration> {
    let mut out = Vec::with_capacity(FRAMES);
    for i in 0..FRAMES {
        let f = frame(BCAST, mac(seed), ETH_EXP, 64, (i % 251) as u8);
        let t0 = Instant::now();
        from.send(&f);
        let got = to
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("frame {i} never arrived"));
        out.push(t0.elapsed());
        assert_eq!(got, f, "frame {i}");
        std::thread::sleep(GAP);
    }
    out
}

fn report(what: &str, lat: &mut [Duration]) {
    lat.sort_unstable();
    let max = *lat.last().unwrap();
    let p50 = lat[lat.len() / 2];
    eprintln!("{what}: {} frames, p50 {p50:?}, max {max:?}", lat.len());
    let slow: Vec<_> = lat.iter().filter(|d| **d > LIMIT).collect();
    assert!(
        slow.is_empty(),
        "{what}: {} of {} frames took longer than {LIMIT:?} (slowest {max:?}): a lost wake-up",
        slow.len(),
        lat.len()
    );
}

#[test]
fn frames_between_two_sleeping_workers_are_never_slept_on() {
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    // Ports are placed on the least loaded worker in order: a on worker 0, b on 1.
    let d = Args::new()
        .opt("-cores", "0,1")
        .opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        )
        .udp("a", 0, &mut a)
        .udp("b", 0, &mut b)
        .netdev("hubport,id=hn,hubid=0")
        .netdev("nic,id=n0,netdev=hn,macaddr=52:54:00:00:00:42")
        .start();
    let mut q = QmpClient::connect_unix_negotiated(&sock).expect("QMP");
    let stats = q.execute_ok("x-query-stats", json!({}));
    let workers = stats["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{stats}");
    assert!(
        workers.iter().all(|w| w["ports"].as_u64() >= Some(1)),
        "both workers own ports, so frames cross between them: {stats}"
    );
    until_path_works(&a, &b, probe, "a to b");
    until_path_works(&b, &a, probe, "b to a");

    let mut ab = time_frames(&a, &b, 1);
    // The premise: the workers did sleep between frames (poll-us 0), so every frame
    // above had to wake one.
    let stats = q.execute_ok("x-query-stats", json!({}));
    for w in stats["workers"].as_array().unwrap() {
        assert!(
            w["idle-ns"].as_u64().unwrap() > 100_000_000,
            "worker never slept: {w}"
        );
    }
    report("a to b across workers", &mut ab);
    let mut ba = time_frames(&b, &a, 2);
    report("b to a across workers", &mut ba);

    // A waker-fed source: the NIC's injected frames (announce-self's RARPs) come from
    // the control thread through a queue the worker finds only by polling.
    let mut rarp = Vec::new();
    for round in 0..30 {
        let t0 = Instant::now();
        q.execute_ok(
            "announce-self",
            json!({"initial": 1, "max": 1, "rounds": 1, "step": 1, "id": format!("r{round}")}),
        );
        let got = a
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or_else(|| panic!("RARP {round} never arrived"));
        rarp.push(t0.elapsed());
        assert_eq!(&got[12..14], &[0x80, 0x35], "a RARP");
        b.recv_timeout(Duration::from_secs(2))
            .expect("RARP at b too");
        std::thread::sleep(GAP * 5);
    }
    report("announce-self RARP from the control thread", &mut rarp);
    drop(q);
    d.stop_clean();
}
