//! Multi-queue taps over two workers: the queues of each tap are spread over the
//! workers, every flow stays on one queue end to end, and none is reordered under load.
//!
//! ```text
//!  netns A: 32 UDP flows ─► tap ta (queues=2) ─ q0 (worker 0) ─► tb q0 ─┐
//!                                           └─ q1 (worker 1) ─► tb q1 ─┴─► tap tb (queues=2) ─► netns B: one socket
//! ```

mod common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::{ns_with, port_stats, tap_spec, Args};
use serde_json::Value;
use tests::{unique, TempDir};

const FLOWS: u16 = 32;
const PER_FLOW: u32 = 3000;

fn queue_counts(p: &Value, key: &str) -> Vec<u64> {
    p["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("no per-queue counters: {p}"))
        .iter()
        .map(|q| q[key].as_u64().unwrap())
        .collect()
}

#[test]
fn flows_through_two_multiqueue_taps_on_two_workers_keep_their_order() {
    let (ta, tb) = (unique("pma"), unique("pmb"));
    let dir = TempDir::new();
    let (d, mut q) = Args::new()
        .opt("-cores", "0,1")
        .opt("-poll-us", "20")
        .opt("-pool-size", "4096")
        .netdev(&tap_spec("ta", &ta, ",queues=2"))
        .on_hub("ta", 0)
        .netdev(&tap_spec("tb", &tb, ",queues=2"))
        .on_hub("tb", 0)
        .start_with_qmp(&dir);
    let a = ns_with(&ta, "10.90.0.1/24");
    let b = ns_with(&tb, "10.90.0.2/24");
    let workers = |p: &Value| -> Vec<u64> {
        p["queues"]
            .as_array()
            .map(|qs| qs.iter().map(|q| q["worker"].as_u64().unwrap()).collect())
            .unwrap_or_default()
    };
    let pa = port_stats(&mut q, "ta");
    assert_eq!(workers(&pa), [0, 1], "ta's queues on both workers: {pa}");
    let rx = b.enter(|| UdpSocket::bind("10.90.0.2:7000").unwrap());
    let big: libc::c_int = 16 << 20;
    // SAFETY: a valid socket and a pointer to an int of the stated size.
    unsafe {
        libc::setsockopt(
            rx.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let senders: Vec<UdpSocket> = a.enter(|| {
        (0..FLOWS)
            .map(|i| {
                let s = UdpSocket::bind(("10.90.0.1", 20000 + i)).unwrap();
                s.connect("10.90.0.2:7000").unwrap();
                s
            })
            .collect()
    });
    // ARP, and the first datagram of every flow, before the load.
    for s in &senders {
        s.send(&u32::MAX.to_be_bytes()).unwrap();
    }
    let mut buf = [0u8; 64];
    for _ in 0..FLOWS {
        rx.recv(&mut buf).expect("a first datagram of each flow");
    }
    let reader = std::thread::spawn(move || {
        let mut last: HashMap<u16, u32> = HashMap::new();
        let (mut got, mut reordered) = (0u64, Vec::new());
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Ok((n, from)) = rx.recv_from(&mut buf) {
            if n < 4 || Instant::now() > deadline {
                break;
            }
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            if let Some(prev) = last.insert(from.port(), seq) {
                if seq <= prev {
                    reordered.push((from.port(), prev, seq));
                }
            }
            got += 1;
        }
        (got, reordered, last.len())
    });
    // Every flow as fast as the sender can, interleaved.
    for seq in 0..PER_FLOW {
        for s in &senders {
            // A full socket buffer on the way is a loss, not an error of the test.
            let _ = s.send(&seq.to_be_bytes());
        }
    }
    let (got, reordered, flows_seen) = reader.join().unwrap();
    let sent = u64::from(FLOWS) * u64::from(PER_FLOW);
    assert!(
        got > sent / 4,
        "premise: load crossed the switch ({got} of {sent} datagrams)"
    );
    assert_eq!(flows_seen, usize::from(FLOWS), "every flow arrived");
    assert!(
        reordered.is_empty(),
        "{} datagrams out of order within their flow, e.g. {:?}",
        reordered.len(),
        &reordered[..reordered.len().min(5)]
    );
    let pa = port_stats(&mut q, "ta");
    let pb = port_stats(&mut q, "tb");
    let (a_rx, b_tx) = (
        queue_counts(&pa, "rx-packets"),
        queue_counts(&pb, "tx-packets"),
    );
    assert!(
        a_rx.iter().all(|&n| n > 100),
        "the kernel spread the flows over both of ta's queues: {a_rx:?}"
    );
    assert!(
        b_tx.iter().all(|&n| n > 100),
        "both of tb's queues (one per worker) carried frames: {b_tx:?}"
    );
    drop(q);
    d.stop_clean();
}
