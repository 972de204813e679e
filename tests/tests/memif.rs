//! `nic` netdevs with memif (`x-memif=SOCKET`) against real memif peers: DPDK's
//! dpdk-testpmd (its net_memif PMD, as client and as server) and the Rust memif
//! application of the backends crate (`backends::memif::App`).
//!
//! ```text
//!  UdpEnd a ─udp─ a ─ hub 0 ─ nic nA ══memif══ testpmd port 0 ┐ io forwarding,
//!  UdpEnd b ─udp─ b ─ hub 1 ─ nic nB ══memif══ testpmd port 1 ┘ 0 ↔ 1
//!
//!  UdpEnd a ─udp─ a ─ hub 0 ─ nic nA (client) ══memif══ testpmd server (port 0 → port 0)
//!
//!  App A ══memif══ nic nA ─┐
//!  App B ══memif══ nic nB ─┼─ hub 0     (rx filter on nB, announce-self)
//!  UdpEnd u ─udp─ u ───────┘
//! ```
//!
//! Each test first shows that frames flow, then what it is about: frame sizes that need
//! buffer chains, a client NIC that waits for its server, an application killed under
//! traffic and started again, the NIC's rx filter and RARP announcements, attach and
//! detach cycles that leave no fd, mapping or buffer behind, and several interface ids
//! (one with a secret) on one socket.
//!
//! testpmd gets two lcores on core 0 (pollswitch's worker has core 1) and the tests that
//! run one take a lock, so that two busy-polling testpmds never share that core.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backends::memif::wire::secret_field;
use backends::memif::{App, MemifConfig, Role};
use common::{
    diff, expect_frame, expect_nothing, fd_count, mac, map_count, pool_free, port_stats, probe,
    total_drops, until_path_works, Args, BCAST, ETH_EXP, QUIET, WAIT,
};
use serde_json::{json, Value};
use tests::testbed::testpmd::{self, totals, Testpmd};
use tests::testbed::{chain, drain};
use tests::UdpEnd;
use tests::{frame, wait_until, Daemon, DrainLimit, QmpClient, TempDir};

/// Frame sizes through the memif rings: minimum, mid, standard, and two that need a
/// chain of 2048-byte memif buffers (testpmd's mbufs hold 2048 bytes of data).
const SIZES: [usize; 5] = [60, 1000, 1514, 3000, 9000];

/// The NICs' MACs.
const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

/// The RARP ethertype (announce-self).
const ETH_RARP: u16 = 0x8035;

/// How long testpmd may take to start and attach (EAL init with 512 MiB, no huge pages).
const ATTACH: Duration = Duration::from_secs(20);

/// Attach and detach cycles in [`attach_detach_cycles_leak_nothing`], and the time they
/// may take at most (fewer cycles are run, and said, past it).
const CYCLES: u64 = 1000;
/// Cycles before the mapping count is taken as the baseline (see the test).
const WARM_CYCLES: u64 = 10;
const CYCLES_TIME: Duration = Duration::from_secs(60);

/// Sets its flag when dropped: threads of a scope that loop until the flag is set end
/// even when the test panics (a scope joins its threads before the panic goes on).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A test frame of `len` bytes from `src` to `dst` whose payload starts with `n`
/// (big-endian), so that a receiver can tell which one it got.
fn numbered(dst: [u8; 6], src: [u8; 6], len: usize, seed: u8, n: u64) -> Vec<u8> {
    let mut f = frame(dst, src, ETH_EXP, len, seed);
    f[14..22].copy_from_slice(&n.to_be_bytes());
    f
}

/// Sends numbered broadcasts of `len` bytes from `src` on `to`, about 1000 a second,
/// until `stop` is set; returns how many it sent.
fn send_numbered(to: &UdpEnd, src: [u8; 6], len: usize, stop: &AtomicBool) -> u64 {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        to.send(&numbered(BCAST, src, len, 0, n));
        n += 1;
        std::thread::sleep(Duration::from_millis(1));
    }
    n
}

/// testpmd in io forwarding mode with one `net_memifN` vdev for each of `vdevs` (its
/// options, e.g. `role=client,socket=PATH`; `socket-abstract=no` is added unless they
/// say: DPDK 22.11 defaults to the abstract namespace).
fn memif_testpmd(vdevs: &[String]) -> Testpmd {
    let vdevs: Vec<String> = vdevs
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let ns = if v.contains("socket-abstract=") {
                ""
            } else {
                ",socket-abstract=no"
            };
            format!("net_memif{i},{v}{ns}")
        })
        .collect();
    Testpmd::start(&vdevs, "io", &[])
}

/// `role=client,socket=PATH` for [`memif_testpmd`].
fn client_vdev(sock: &Path) -> String {
    format!("role=client,socket={}", sock.display())
}

/// `nic,id=ID,x-memif=SOCK` and `extra` (`",x-memif-role=client"`, ...).
fn memif_nic(id: &str, sock: &Path, extra: &str) -> String {
    format!("nic,id={id},x-memif={}{extra}", sock.display())
}

/// Whether NIC `name` is attached as far as both the worker (carrier) and the memif
/// thread (memif.connected) can tell, or detached as far as both can.
fn attached_is(c: &mut QmpClient, name: &str, up: bool) -> bool {
    let p = port_stats(c, name);
    p["carrier"] == up && p["memif"]["connected"] == up
}

/// Waits until every NIC of `names` is attached (`up`) or detached; panics after
/// `timeout` with their stats and `context()` (what the peer said).
fn wait_attached(
    c: &mut QmpClient,
    names: &[&str],
    up: bool,
    timeout: Duration,
    context: impl Fn() -> String,
) {
    let ok = wait_until(timeout, || names.iter().all(|n| attached_is(c, n, up)));
    if !ok {
        let ports: Vec<Value> = names.iter().map(|n| port_stats(c, n)).collect();
        panic!(
            "NICs {names:?} not {} within {timeout:?}: {ports:?}\n{}",
            if up { "attached" } else { "detached" },
            context()
        );
    }
}

/// A drop count of port `p` (`x-query-stats` drops.`reason`).
fn drops(p: &Value, reason: &str) -> u64 {
    p["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no drops.{reason}: {p}"))
}

/// A memif counter of port `p` (`x-query-stats` memif.`key`).
fn memif_count(p: &Value, key: &str) -> u64 {
    p["memif"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no memif.{key}: {p}"))
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// A client App's settings for interface `id` on `sock`.
fn app_cfg(sock: &Path, id: u32, secret: Option<&str>) -> MemifConfig {
    MemifConfig {
        socket: sock.to_path_buf(),
        role: Role::Client,
        id,
        secret: secret.map(|s| secret_field(s).expect("a secret of at most 24 bytes")),
        log2_ring: 10,
        buffer_size: 2048,
        name: "app".into(),
        zero_copy: None,
    }
}

/// A client App connected to interface `id` on `sock`.
fn open_app(sock: &Path, id: u32, secret: Option<&str>) -> App {
    App::open(app_cfg(sock, id, secret), WAIT).unwrap_or_else(|e| {
        panic!(
            "memif app on {} id {id} did not connect: {}",
            sock.display(),
            chain(&e)
        )
    })
}

/// Why an App for interface `id` on `sock` is refused (it must be).
fn refused_app(sock: &Path, id: u32, secret: Option<&str>) -> String {
    match App::open(app_cfg(sock, id, secret), Duration::from_millis(1500)) {
        Ok(a) => panic!(
            "memif app on {} id {id} was let in: {:?}",
            sock.display(),
            a.info().peer
        ),
        Err(e) => chain(&e),
    }
}

/// Sends `f` from `app`, waiting while its ring is full.
fn app_send(app: &mut App, f: &[u8], what: &str) {
    assert!(
        wait_until(WAIT, || app.send(&[f]) == 1),
        "{what}: the app's ring took no frame within {WAIT:?} (connected: {})",
        app.connected()
    );
}

/// Asserts that the next frame at `app` is exactly `want`.
fn expect_at_app(app: &mut App, want: &[u8], what: &str) {
    match app.recv_one(WAIT) {
        None => panic!(
            "{what}: nothing arrived at the app within {WAIT:?} (expected {} bytes; {:?})",
            want.len(),
            app.info()
        ),
        Some(got) => {
            if let Some(d) = diff(&got, want) {
                panic!("{what}: wrong frame at the app: {d}");
            }
        }
    }
}

/// Every frame that arrives at `app` until none has come for `quiet` (bounded).
fn drain_app(app: &mut App, quiet: Duration) -> Vec<Vec<u8>> {
    drain(
        || "memif app".to_string(),
        quiet,
        DrainLimit::DEFAULT,
        |t| app.recv_one(t),
    )
}

/// Probes from `from` until one arrives at `to`, then drains `to`.
fn until_apps_path_works(from: &mut App, to: &mut App, what: &str) {
    let deadline = Instant::now() + WAIT * 2;
    let mut i = 0u8;
    loop {
        from.send(&[probe(i)]);
        i = i.wrapping_add(1);
        if to.recv_one(Duration::from_millis(100)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no probe got through within {:?}",
            WAIT * 2
        );
    }
    drain_app(to, QUIET);
}

/// The RARP frames among `frames`, by source MAC.
fn rarps_from(frames: &[Vec<u8>], src: [u8; 6]) -> Vec<&Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.len() >= 14 && f[12..14] == ETH_RARP.to_be_bytes() && f[6..12] == src)
        .collect()
}

/// Checks one RARP frame as QEMU's announce-self makes it for `mac`.
fn assert_rarp(f: &[u8], mac: [u8; 6]) {
    assert_eq!(f.len(), 60, "a RARP frame is padded to 60 bytes: {f:02x?}");
    assert_eq!(f[..6], BCAST, "to broadcast: {f:02x?}");
    // htype 1, ptype IPv4, hlen 6, plen 4, op 3 (reverse request).
    assert_eq!(f[14..22], [0, 1, 8, 0, 6, 4, 0, 3], "{f:02x?}");
    assert_eq!(f[22..28], mac, "sender MAC: {f:02x?}");
    assert_eq!(f[32..38], mac, "target MAC: {f:02x?}");
}

/// Frames of every size of [`SIZES`] from `a` to `b` and back, each byte-identical.
fn sizes_both_ways(a: &UdpEnd, b: &UdpEnd, what: &str) {
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(b, &f, &format!("{what}: {len} bytes forth"));
        let g = frame(mac(1), mac(2), ETH_EXP, len, 100 + k as u8);
        b.send(&g);
        expect_frame(a, &g, &format!("{what}: {len} bytes back"));
    }
}

/// Two server NICs on two hubs, each with a UDP port: the topology of the testpmd io
/// tests. Returns the daemon, QMP, the sockets of nA and nB, and the UDP ends a and b.
fn two_server_nics(dir: &TempDir) -> (Daemon, QmpClient, [PathBuf; 2], [UdpEnd; 2]) {
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let args = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&memif_nic("nA", &sa, ""))
        .on_hub("nA", 0)
        .netdev(&memif_nic("nB", &sb, ""))
        .on_hub("nB", 1)
        .udp("b", 1, &mut b);
    let (d, c) = args.start_with_qmp(dir);
    (d, c, [sa, sb], [a, b])
}

#[test]
fn testpmd_io_forwards_between_two_server_nics() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let (d, mut c, [sa, sb], [a, b]) = two_server_nics(&dir);
    for s in [&sa, &sb] {
        assert_eq!(mode_of(s), 0o600, "a server NIC's socket {}", s.display());
    }
    for n in ["nA", "nB"] {
        assert!(attached_is(&mut c, n, false), "{}", port_stats(&mut c, n));
    }

    let t0 = Instant::now();
    let mut tp = memif_testpmd(&[client_vdev(&sa), client_vdev(&sb)]);
    wait_attached(&mut c, &["nA", "nB"], true, ATTACH, || tp.said());
    eprintln!(
        "testpmd attached both NICs {:.1?} after its start",
        t0.elapsed()
    );
    for (n, vdev) in [("nA", "net_memif0"), ("nB", "net_memif1")] {
        let p = port_stats(&mut c, n);
        let peer = p["memif"]["peer"].as_str().unwrap_or_default();
        assert!(peer.contains("DPDK") && peer.contains(vdev), "{n}: {p}");
        assert_eq!(memif_count(&p, "connects"), 1, "{n}: {p}");
        assert_eq!(memif_count(&p, "disconnects"), 0, "{n}: {p}");
    }

    until_path_works(&a, &b, probe, "a → nA → testpmd → nB → b");
    until_path_works(&b, &a, probe, "b → nB → testpmd → nA → a");
    // A probe may meet a ring testpmd has not filled with free buffers yet (tx-full):
    // that is what probing is for. Once frames pass, none is dropped.
    let names = ["a", "nA", "nB", "b"];
    let before: Vec<u64> = names
        .iter()
        .map(|n| total_drops(&port_stats(&mut c, n)))
        .collect();
    sizes_both_ways(&a, &b, "through testpmd");
    expect_nothing(&a, "a after the exchange");
    expect_nothing(&b, "b after the exchange");
    for (n, d0) in names.iter().zip(before) {
        let p = port_stats(&mut c, n);
        assert_eq!(total_drops(&p), d0, "{n}: {p}");
    }

    // A burst one way, as fast as one thread sends: what arrives, and how fast.
    const BURST: u64 = 20_000;
    let done = AtomicBool::new(false);
    let t = Instant::now();
    let (got, elapsed) = std::thread::scope(|s| {
        let _stop = SetOnDrop(&done);
        let receiver = s.spawn(|| {
            let (mut n, mut last) = (0u64, t);
            // Until the sender is done and nothing came for 50 ms.
            loop {
                if b.recv_timeout(Duration::from_millis(50)).is_some() {
                    n += 1;
                    last = Instant::now();
                } else if done.load(Ordering::Relaxed) {
                    break;
                }
            }
            (n, last - t)
        });
        let f = frame(BCAST, mac(1), ETH_EXP, 60, 0);
        for _ in 0..BURST {
            a.send(&f);
        }
        done.store(true, Ordering::Relaxed);
        receiver.join().expect("receiver thread")
    });
    let (pa, pb, ub) = (
        port_stats(&mut c, "nA"),
        port_stats(&mut c, "nB"),
        port_stats(&mut c, "b"),
    );
    eprintln!(
        "burst of {BURST} 60-byte frames a → testpmd → b: {got} arrived in {elapsed:.2?} \
         ({:.0} frames/s); nA tx-packets {} drops {}; nB rx-packets {} drops {}; \
         b tx-packets {} drops {}",
        got as f64 / elapsed.as_secs_f64(),
        pa["tx-packets"],
        pa["drops"],
        pb["rx-packets"],
        pb["drops"],
        ub["tx-packets"],
        ub["drops"]
    );
    assert!(got > 0, "nothing of the burst arrived");
    // What the memif NIC took from testpmd, b sent or counted as dropped: the sender
    // outruns the switch and the receiver here (their socket buffers overflow, which
    // no switch counter sees), never the path in between.
    let took = pb["rx-packets"].as_u64().unwrap();
    let sent = ub["tx-packets"].as_u64().unwrap();
    assert_eq!(took, sent + total_drops(&ub), "nB: {pb}\nb: {ub}");
    assert!(got <= sent, "{got} arrived, b sent {sent}");

    let out = tp.interrupt();
    let (rx, tx, tx_dropped) = totals(&out);
    eprintln!("testpmd totals: rx {rx}, tx {tx}, tx-dropped {tx_dropped}");
    assert!(rx >= got + 2 * SIZES.len() as u64, "testpmd rx {rx}");
    assert_eq!(rx, tx + tx_dropped, "testpmd forwards or drops each frame");
    wait_attached(&mut c, &["nA", "nB"], false, WAIT, || tp.said());
    for n in ["nA", "nB"] {
        let p = port_stats(&mut c, n);
        assert_eq!(memif_count(&p, "disconnects"), 1, "{n}: {p}");
        assert_ne!(p["memif"]["last-reason"], "", "{n}: {p}");
    }
    d.stop_clean();
    assert!(!sa.exists() && !sb.exists(), "sockets removed at exit");
}

#[test]
fn pollswitch_as_client_of_a_testpmd_server() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let s = dir.join("s.sock");
    let mut a = UdpEnd::new();
    let args = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&memif_nic("nA", &s, ",x-memif-role=client"))
        .on_hub("nA", 0);
    let (mut d, mut c) = args.start_with_qmp(&dir);

    // No server yet: the NIC keeps trying (every 500 ms), frames for it are dropped.
    std::thread::sleep(Duration::from_millis(1200));
    assert!(d.is_running(), "{}", d.stderr_text());
    let p = port_stats(&mut c, "nA");
    assert_eq!(p["carrier"], false, "{p}");
    assert_eq!(memif_count(&p, "connects"), 0, "{p}");
    a.send(&frame(BCAST, mac(1), ETH_EXP, 60, 0));
    assert!(
        wait_until(WAIT, || drops(&port_stats(&mut c, "nA"), "not-connected")
            == 1),
        "{}",
        port_stats(&mut c, "nA")
    );

    let t0 = Instant::now();
    let mut tp = memif_testpmd(&[format!("role=server,socket={}", s.display())]);
    wait_attached(&mut c, &["nA"], true, ATTACH, || tp.said());
    eprintln!(
        "the client NIC attached to testpmd's server {:.1?} after its start",
        t0.elapsed()
    );
    let p = port_stats(&mut c, "nA");
    assert_eq!(memif_count(&p, "connects"), 1, "{p}");
    assert!(
        p["memif"]["peer"]
            .as_str()
            .is_some_and(|s| s.contains("DPDK")),
        "{p}"
    );

    // testpmd's one port is paired with itself: what nA sends comes back to nA, and the
    // hub gives it to a (the only other port).
    until_path_works(&a, &a, probe, "a → nA → testpmd → nA → a");
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(&a, &f, &format!("{len} bytes reflected by testpmd"));
    }
    expect_nothing(&a, "a after the reflections");

    let out = tp.interrupt();
    let (rx, tx, _) = totals(&out);
    eprintln!("testpmd server totals: rx {rx}, tx {tx}");
    assert!(tx >= SIZES.len() as u64, "testpmd sent {tx}");
    wait_attached(&mut c, &["nA"], false, WAIT, || tp.said());
    assert_eq!(memif_count(&port_stats(&mut c, "nA"), "disconnects"), 1);

    // The server comes back (testpmd removed its socket at exit; a new one listens on
    // the same path): the client NIC connects again by itself.
    let mut tp = memif_testpmd(&[format!("role=server,socket={}", s.display())]);
    wait_attached(&mut c, &["nA"], true, ATTACH, || tp.said());
    assert_eq!(memif_count(&port_stats(&mut c, "nA"), "connects"), 2);
    until_path_works(&a, &a, probe, "a → nA → second testpmd → nA → a");
    let f = frame(BCAST, mac(1), ETH_EXP, 3000, 77);
    a.send(&f);
    expect_frame(&a, &f, "3000 bytes reflected by the second testpmd");
    tp.interrupt();
    wait_attached(&mut c, &["nA"], false, WAIT, || tp.said());
    drop(c);
    d.stop_clean();
}

/// Zero copy (client role): region 1 is the switch's pool, testpmd's server copies into
/// and out of pool buffers; frames come back intact, and every buffer lent on the rings
/// is back in the pool once testpmd leaves.
#[test]
fn zero_copy_client_of_a_testpmd_server() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let s = dir.join("s.sock");
    let mut a = UdpEnd::new();
    let args = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&memif_nic(
            "nA",
            &s,
            ",x-memif-role=client,x-memif-zero-copy=on,x-memif-ring-size=256",
        ))
        .on_hub("nA", 0);
    let (d, mut c) = args.start_with_qmp(&dir);
    let free_before = pool_free(&mut c);
    let mut tp = memif_testpmd(&[format!("role=server,socket={}", s.display())]);
    wait_attached(&mut c, &["nA"], true, ATTACH, || tp.said());
    // The receive ring holds 256 pool buffers lent to testpmd.
    assert!(
        wait_until(WAIT, || pool_free(&mut c) <= free_before - 256),
        "{} free, {free_before} before",
        pool_free(&mut c)
    );
    until_path_works(&a, &a, probe, "a → nA (zero copy) → testpmd → nA → a");
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(&a, &f, &format!("{len} bytes reflected, zero copy"));
    }
    expect_nothing(&a, "a after the reflections");
    let p = port_stats(&mut c, "nA");
    assert_eq!(
        p["drops"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| *v != 0)
            .count(),
        0,
        "{p}"
    );
    tp.interrupt();
    wait_attached(&mut c, &["nA"], false, WAIT, || tp.said());
    assert!(
        wait_until(WAIT, || pool_free(&mut c) == free_before),
        "{} free after testpmd left, {free_before} before",
        pool_free(&mut c)
    );
    // A server NIC cannot be zero-copy: it works in the client's memory.
    let r = c.execute(
        "netdev_add",
        serde_json::json!({"id": "z", "type": "nic",
                           "x-memif": dir.join("z.sock").display().to_string(),
                           "x-memif-zero-copy": true}),
    );
    let desc = r["error"]["desc"].as_str().unwrap_or_default();
    assert!(desc.contains("x-memif-role=client"), "{r}");
    drop(c);
    d.stop_clean();
}

/// DPDK 22.11's default socket, the abstract namespace: `x-memif=@NAME`, both roles,
/// testpmd given nothing but `socket=NAME`; no file is made.
#[test]
fn abstract_sockets_as_dpdk_makes_them_by_default() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let (s0, s1) = (dir.join("abs0.sock"), dir.join("abs1.sock"));
    let mut a = UdpEnd::new();
    let args = Args::new()
        .udp("a", 0, &mut a)
        .netdev(&format!("nic,id=nA,x-memif=@{}", s0.display()))
        .on_hub("nA", 0)
        .netdev(&format!(
            "nic,id=nB,x-memif=@{},x-memif-role=client",
            s1.display()
        ))
        .on_hub("nB", 1);
    let (d, mut c) = args.start_with_qmp(&dir);
    assert!(!s0.exists(), "an abstract socket makes no file");
    let mut tp = memif_testpmd(&[
        format!("role=client,socket={},socket-abstract=yes", s0.display()),
        format!("role=server,socket={},socket-abstract=yes", s1.display()),
    ]);
    wait_attached(&mut c, &["nA", "nB"], true, ATTACH, || tp.said());
    // testpmd forwards nA's frames to nB (hub 1, where nothing else is). Sent until one
    // arrives: right after attach testpmd may not have posted its buffers yet.
    let f = frame(BCAST, mac(1), ETH_EXP, 1000, 3);
    assert!(
        wait_until(WAIT, || {
            a.send(&f);
            std::thread::sleep(Duration::from_millis(20));
            port_stats(&mut c, "nB")["rx-packets"] != 0
        }),
        "nothing came back through testpmd: {}",
        port_stats(&mut c, "nB")
    );
    tp.interrupt();
    wait_attached(&mut c, &["nA", "nB"], false, WAIT, || tp.said());
    drop(c);
    d.stop_clean();
}

/// pollswitch-perf's memif engine (our Rust App) as generator and sink through two
/// server NICs on one hub: every frame it sent arrives, none lost.
#[test]
fn perf_drives_memif_nics_through_the_switch() {
    let dir = TempDir::new();
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let args = Args::new()
        .netdev(&memif_nic("nA", &sa, ""))
        .on_hub("nA", 0)
        .netdev(&memif_nic("nB", &sb, ""))
        .on_hub("nB", 0);
    let (d, c) = args.start_with_qmp(&dir);
    let out = std::process::Command::new(tests::bin_path("pollswitch-perf"))
        .args(["run", "--tx", &format!("memif:socket={}", sa.display())])
        .args(["--rx", &format!("memif:socket={}", sb.display())])
        .args(["--rate", "20k", "--duration", "1", "--json", "-"])
        .output()
        .expect("run pollswitch-perf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pollswitch-perf: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text.find('{').expect("JSON");
    let r: Value = serde_json::from_str(&text[start..]).expect("JSON result");
    let (sent, received) = (r["sent"].as_u64().unwrap(), r["received"].as_u64().unwrap());
    assert!(sent >= 10_000, "sent {sent}: {r}");
    assert_eq!(received, sent, "{r}");
    drop(c);
    d.stop_clean();
}

#[test]
fn app_killed_mid_traffic_and_restarted() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let (d, mut c, [sa, sb], [a, b]) = two_server_nics(&dir);
    let vdevs = [client_vdev(&sa), client_vdev(&sb)];
    let mut tp = memif_testpmd(&vdevs);
    wait_attached(&mut c, &["nA", "nB"], true, ATTACH, || tp.said());
    until_path_works(&a, &b, probe, "a → testpmd → b");

    let received = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = SetOnDrop(&stop);
        let sender = s.spawn(|| send_numbered(&a, mac(1), 100, &stop));
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if b.recv_timeout(Duration::from_millis(50)).is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let count = || received.load(Ordering::Relaxed);
        assert!(
            wait_until(WAIT, || count() >= 200),
            "traffic does not flow: {} frames",
            count()
        );

        let nc0 = drops(&port_stats(&mut c, "nA"), "not-connected");
        tp.crash();
        let t_kill = Instant::now();
        wait_attached(&mut c, &["nA", "nB"], false, WAIT, String::new);
        eprintln!("carrier lost {:.1?} after SIGKILL", t_kill.elapsed());
        for n in ["nA", "nB"] {
            let p = port_stats(&mut c, n);
            assert_eq!(memif_count(&p, "disconnects"), 1, "{n}: {p}");
        }
        // The sender goes on; frames for nA are now dropped, and none reach b.
        assert!(
            wait_until(WAIT, || drops(&port_stats(&mut c, "nA"), "not-connected")
                > nc0 + 50),
            "{}",
            port_stats(&mut c, "nA")
        );
        let stalled = count();
        std::thread::sleep(QUIET);
        assert_eq!(count(), stalled, "frames reached b with testpmd dead");

        let mut tp2 = memif_testpmd(&vdevs);
        let t_restart = Instant::now();
        wait_attached(&mut c, &["nA", "nB"], true, ATTACH, || tp2.said());
        for n in ["nA", "nB"] {
            let p = port_stats(&mut c, n);
            assert_eq!(memif_count(&p, "connects"), 2, "{n}: {p}");
        }
        assert!(
            wait_until(WAIT, || count() >= stalled + 200),
            "traffic did not resume: {} frames since the restart",
            count() - stalled
        );
        eprintln!(
            "traffic resumed {:.1?} after the second testpmd started; {} frames before the kill",
            t_restart.elapsed(),
            stalled
        );
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("sender thread");
        eprintln!("sent {sent}, received {}", count());
        let out = tp2.interrupt();
        let (rx, tx, _) = totals(&out);
        assert!(rx >= 200 && tx >= 200, "second testpmd: rx {rx}, tx {tx}");
    });
    d.stop_clean();
}

#[test]
fn rust_app_rx_filter_and_announce() {
    let dir = TempDir::new();
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let mut u = UdpEnd::new();
    let args = Args::new()
        .netdev(&memif_nic("nA", &sa, ",macaddr=52:54:00:00:00:01"))
        .on_hub("nA", 0)
        .netdev(&memif_nic("nB", &sb, ",macaddr=52:54:00:00:00:02"))
        .on_hub("nB", 0)
        .udp("u", 0, &mut u);
    let (d, mut c) = args.start_with_qmp(&dir);
    let mut aa = open_app(&sa, 0, None);
    let mut ab = open_app(&sb, 0, None);
    wait_attached(&mut c, &["nA", "nB"], true, WAIT, String::new);
    until_apps_path_works(&mut aa, &mut ab, "app A → nA → nB → app B");
    until_apps_path_works(&mut ab, &mut aa, "app B → nB → nA → app A");
    u.drain(QUIET);
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        app_send(&mut aa, &f, "app A");
        expect_at_app(&mut ab, &f, &format!("{len} bytes app A → app B"));
        expect_frame(&u, &f, &format!("{len} bytes app A → u"));
        let g = frame(MAC_A, mac(2), ETH_EXP, len, 100 + k as u8);
        app_send(&mut ab, &g, "app B");
        expect_at_app(&mut aa, &g, &format!("{len} bytes app B → app A"));
        expect_frame(&u, &g, &format!("{len} bytes app B → u"));
    }

    // nB's application takes nB out of promiscuous mode: its own MAC and broadcast only.
    c.execute_ok(
        "x-set-rx-filter",
        json!({"name": "nB", "promiscuous": false, "main-mac": "52:54:00:00:00:02"}),
    );
    let r = c.execute_ok("query-rx-filter", json!({"name": "nB"}));
    assert_eq!(r[0]["promiscuous"], false, "{r}");
    assert_eq!(r[0]["main-mac"], "52:54:00:00:00:02", "{r}");
    // A broadcast still arrives; once it has, the worker has the new filter (it picks it
    // up before the next breath's transmits).
    let f = frame(BCAST, mac(1), ETH_EXP, 60, 1);
    app_send(&mut aa, &f, "app A");
    expect_at_app(&mut ab, &f, "broadcast with nB's filter");
    expect_frame(&u, &f, "broadcast at u");
    let filtered0 = drops(&port_stats(&mut c, "nB"), "filtered");
    let other = frame(mac(9), mac(1), ETH_EXP, 60, 2);
    app_send(&mut aa, &other, "app A");
    expect_frame(&u, &other, "unicast to another MAC reaches u");
    assert!(
        wait_until(WAIT, || drops(&port_stats(&mut c, "nB"), "filtered")
            == filtered0 + 1),
        "nB did not count the filtered frame: {}",
        port_stats(&mut c, "nB")
    );
    let to_b = frame(MAC_B, mac(1), ETH_EXP, 1514, 3);
    app_send(&mut aa, &to_b, "app A");
    expect_at_app(&mut ab, &to_b, "unicast to nB's MAC");
    expect_frame(&u, &to_b, "unicast to nB's MAC at u");
    let late = drain_app(&mut ab, QUIET);
    assert!(
        late.is_empty(),
        "app B got {} frame(s) its filter refuses: {:?}",
        late.len(),
        late.iter().map(|f| f[..6].to_vec()).collect::<Vec<_>>()
    );

    // announce-self: each NIC's RARP goes towards its peer (the hub), so an app receives
    // the other NIC's announcement and never its own; u receives both.
    drain_app(&mut aa, QUIET);
    c.execute_ok(
        "announce-self",
        json!({"initial": 50, "max": 100, "rounds": 2, "step": 50}),
    );
    let at_b = drain_app(&mut ab, Duration::from_millis(500));
    let at_a = drain_app(&mut aa, Duration::from_millis(500));
    let at_u = u.drain(Duration::from_millis(500));
    let b_from_a = rarps_from(&at_b, MAC_A);
    assert_eq!(b_from_a.len(), 2, "app B: {at_b:02x?}");
    for r in b_from_a {
        assert_rarp(r, MAC_A);
    }
    assert!(
        rarps_from(&at_b, MAC_B).is_empty(),
        "app B got its own RARP"
    );
    let a_from_b = rarps_from(&at_a, MAC_B);
    assert_eq!(a_from_b.len(), 2, "app A: {at_a:02x?}");
    for r in a_from_b {
        assert_rarp(r, MAC_B);
    }
    assert!(
        rarps_from(&at_a, MAC_A).is_empty(),
        "app A got its own RARP"
    );
    assert_eq!(rarps_from(&at_u, MAC_A).len(), 2, "u from nA");
    assert_eq!(rarps_from(&at_u, MAC_B).len(), 2, "u from nB");

    drop((aa, ab));
    wait_attached(&mut c, &["nA", "nB"], false, WAIT, String::new);
    let p = port_stats(&mut c, "nA");
    assert!(
        p["memif"]["last-reason"]
            .as_str()
            .is_some_and(|r| r.contains("interface deleted")),
        "{p}"
    );
    d.stop_clean();
}

#[test]
fn attach_detach_cycles_leak_nothing() {
    let dir = TempDir::new();
    let s = dir.join("n0.sock");
    let (mut u, mut x, mut y) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let args = Args::new()
        .netdev(&memif_nic("n0", &s, ""))
        .on_hub("n0", 0)
        .udp("u", 0, &mut u)
        .udp("x", 1, &mut x)
        .udp("y", 1, &mut y);
    let (d, mut c) = args.start_with_qmp(&dir);
    let pid = d.pid();
    let (fds0, maps0, free0) = (fd_count(pid), map_count(pid), pool_free(&mut c));

    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let (cycles, spent, warm_maps) = std::thread::scope(|sc| {
        let _stop = SetOnDrop(&stop);
        // The other flow: x → hub 1 → y, about 1000 frames/s, every one counted.
        let sender = sc.spawn(|| send_numbered(&x, mac(5), 200, &stop));
        sc.spawn(|| {
            // Until the sender has stopped and nothing came for 50 ms.
            loop {
                if y.recv_timeout(Duration::from_millis(50)).is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                } else if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        });
        assert!(
            wait_until(WAIT, || received.load(Ordering::Relaxed) >= 100),
            "the x → y flow does not flow"
        );

        let t0 = Instant::now();
        let mut done = 0u64;
        let mut warm_maps = None;
        while done < CYCLES && t0.elapsed() < CYCLES_TIME {
            let i = done;
            let mut app = open_app(&s, 0, None);
            assert!(
                wait_until(WAIT, || attached_is(&mut c, "n0", true)),
                "cycle {i}: {}",
                port_stats(&mut c, "n0")
            );
            if i == 0 {
                // The counts below do see a connection (its socket, eventfds, regions).
                let (fds, maps) = (fd_count(pid), map_count(pid));
                eprintln!("attached: fds {fds0} → {fds}, maps {maps0} → {maps}");
                assert!(fds > fds0 && maps > maps0, "fds {fds}, maps {maps}");
            }
            let f = numbered(BCAST, mac(3), 60 + (i as usize * 7) % 1455, i as u8, i);
            app_send(&mut app, &f, &format!("cycle {i}"));
            expect_frame(&u, &f, &format!("cycle {i}: app → u"));
            let g = numbered(mac(3), mac(4), 1514 - (i as usize * 7) % 1455, !i as u8, i);
            u.send(&g);
            expect_at_app(&mut app, &g, &format!("cycle {i}: u → app"));
            drop(app);
            assert!(
                wait_until(WAIT, || {
                    let p = port_stats(&mut c, "n0");
                    p["carrier"] == false && memif_count(&p, "disconnects") == i + 1
                }),
                "cycle {i}: {}",
                port_stats(&mut c, "n0")
            );
            done += 1;
            if done == WARM_CYCLES {
                // glibc makes a malloc arena for a thread the first time it allocates
                // much (the memif thread's first connections): mappings that appear
                // once, not per cycle. Later cycles are measured against this count.
                warm_maps = Some(map_count(pid));
            }
        }
        let spent = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let sent = sender.join().expect("sender thread");
        assert!(
            wait_until(WAIT, || received.load(Ordering::Relaxed) == sent),
            "the x → y flow lost frames: sent {sent}, received {}",
            received.load(Ordering::Relaxed)
        );
        eprintln!("x → y flow: {sent} frames sent, all received");
        (done, spent, warm_maps)
    });
    eprintln!(
        "{cycles} attach/detach cycles in {spent:.1?} ({:.1} ms each){}",
        spent.as_secs_f64() * 1000.0 / cycles as f64,
        if cycles < CYCLES {
            format!(" — stopped short of {CYCLES} at {CYCLES_TIME:?}")
        } else {
            String::new()
        }
    );
    assert!(cycles >= 100, "only {cycles} cycles in {CYCLES_TIME:?}");
    for n in ["x", "y", "u"] {
        let p = port_stats(&mut c, n);
        assert_eq!(total_drops(&p), 0, "{n}: {p}");
    }
    let p = port_stats(&mut c, "n0");
    assert_eq!(memif_count(&p, "connects"), cycles, "{p}");
    assert_eq!(total_drops(&p), 0, "{p}");

    let warm = warm_maps.expect("the warm-up cycles ran");
    assert!(
        warm <= maps0 + 8,
        "{warm} mappings after {WARM_CYCLES} cycles, {maps0} before: more than a few arenas"
    );
    let now = |c: &mut QmpClient| (fd_count(pid), map_count(pid), pool_free(c));
    let settled = wait_until(WAIT, || now(&mut c) == (fds0, warm, free0));
    assert!(
        settled,
        "after {cycles} cycles: (fds, maps, pool free) = {:?}; before: fds {fds0}, pool free \
         {free0}, maps {maps0} ({warm} after {WARM_CYCLES} cycles)",
        now(&mut c),
    );
    drop(c);
    d.stop_clean();
}

#[test]
fn several_ids_on_one_socket_and_secret() {
    let dir = TempDir::new();
    let s = dir.join("shared.sock");
    let mut u = UdpEnd::new();
    let args = Args::new()
        .udp("u", 0, &mut u)
        .netdev(&memif_nic(
            "n1",
            &s,
            ",x-memif-id=1,macaddr=52:54:00:00:00:01",
        ))
        .on_hub("n1", 0)
        .netdev(&memif_nic(
            "n2",
            &s,
            ",x-memif-id=2,x-memif-secret=s3cret,macaddr=52:54:00:00:00:02",
        ))
        .on_hub("n2", 0);
    let (d, mut c) = args.start_with_qmp(&dir);
    assert_eq!(mode_of(&s), 0o600);

    let err = refused_app(&s, 2, Some("wrong"));
    assert!(err.contains("Incorrect secret"), "wrong secret: {err}");
    // No secret at all: refused too (pollswitch says "Secret required", as libmemif).
    let err = refused_app(&s, 2, None);
    assert!(err.contains("Secret required"), "no secret: {err}");
    let err = refused_app(&s, 7, None);
    assert!(err.contains("ID not found"), "id 7: {err}");
    for n in ["n1", "n2"] {
        let p = port_stats(&mut c, n);
        assert_eq!(memif_count(&p, "connects"), 0, "{n}: {p}");
        assert_eq!(p["carrier"], false, "{n}: {p}");
    }

    let mut a1 = open_app(&s, 1, None);
    let mut a2 = open_app(&s, 2, Some("s3cret"));
    wait_attached(&mut c, &["n1", "n2"], true, WAIT, String::new);
    until_apps_path_works(&mut a1, &mut a2, "id 1 → id 2");
    until_apps_path_works(&mut a2, &mut a1, "id 2 → id 1");
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(MAC_B, MAC_A, ETH_EXP, len, k as u8);
        app_send(&mut a1, &f, "app 1");
        expect_at_app(&mut a2, &f, &format!("{len} bytes id 1 → id 2"));
        let g = frame(MAC_A, MAC_B, ETH_EXP, len, 50 + k as u8);
        app_send(&mut a2, &g, "app 2");
        expect_at_app(&mut a1, &g, &format!("{len} bytes id 2 → id 1"));
    }

    // The first NIC goes: its app is disconnected, the socket stays for the other.
    c.execute_ok("netdev_del", json!({"id": "hp-n1"}));
    c.execute_ok("netdev_del", json!({"id": "n1"}));
    assert!(a1.wait_disconnected(WAIT), "app 1 still connected");
    assert!(s.exists(), "the socket went with the first of its NICs");
    assert!(a2.connected(), "app 2 lost its link with n1");
    u.drain(QUIET);
    let f = frame(BCAST, MAC_B, ETH_EXP, 60, 9);
    app_send(&mut a2, &f, "app 2");
    expect_frame(&u, &f, "app 2 → u after n1 went");

    c.execute_ok("netdev_del", json!({"id": "hp-n2"}));
    c.execute_ok("netdev_del", json!({"id": "n2"}));
    assert!(a2.wait_disconnected(WAIT), "app 2 still connected");
    assert!(
        wait_until(WAIT, || !s.exists()),
        "the socket outlived its last NIC"
    );
    drop((a1, a2, c));
    d.stop_clean();
}
