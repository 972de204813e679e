//! vhost-user ports against a real frontend: dpdk-testpmd's `net_virtio_user` (a
//! virtio-net driver without a VM, talking vhost-user over a unix socket), with
//! pollswitch as the backend in both socket roles.
//!
//! ```text
//!  UdpEnd a ─udp─ a ─ hub 0 ─ vhost-user vA ══ virtio_user0 ┐ testpmd io forwarding
//!  UdpEnd b ─udp─ b ─ hub 1 ─ vhost-user vB ══ virtio_user1 ┘ 0 ↔ 1
//!
//!  ns: tap ─ hub 0 ─ vhost-user vA ══ virtio_user0 (testpmd macswap: back with the MACs swapped)
//! ```
//!
//! testpmd gets two lcores on core 0 (pollswitch's worker has core 1); the tests hold
//! [`testpmd::lock`] so that two busy-polling testpmds never share that core.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    diff, expect_frame, fd_count, mac, map_count, pool_free, port_stats, probe, total_drops,
    until_path_works, Args, BCAST, ETH_EXP, WAIT,
};
use serde_json::{json, Value};
use tests::testbed::move_link_into;
use tests::testbed::testpmd::{self, totals, Testpmd};
use tests::{frame, unique, wait_until, Netns, QmpClient, RawSock, TempDir, UdpEnd};

/// Frame sizes through the virtqueues: minimum, mid, standard, and two that take a
/// chain of testpmd's 2048-byte mbufs (several descriptors, mergeable buffers).
const SIZES: [usize; 5] = [60, 1000, 1514, 3000, 9000];

/// How long testpmd may take to start and attach (EAL init with 512 MiB, no huge pages).
const ATTACH: Duration = Duration::from_secs(20);

/// testpmd's options for jumbo frames through virtio_user.
const JUMBO: &[&str] = &["--max-pkt-len=9600", "--mbuf-size=2176", "--enable-scatter"];

/// `net_virtio_userI,path=SOCK,...`; `server`: testpmd listens (pollswitch connects).
fn virtio_vdev(i: usize, sock: &Path, server: bool) -> String {
    virtio_vdev_queues(i, sock, server, 1)
}

fn virtio_vdev_queues(i: usize, sock: &Path, server: bool, queues: u16) -> String {
    format!(
        "net_virtio_user{i},path={},queues={queues},queue_size=256{}",
        sock.display(),
        if server { ",server=1" } else { "" }
    )
}

/// `-chardev socket,id=ID,path=SOCK,...` and `-netdev vhost-user,id=NAME,chardev=ID`.
fn vhost_port(
    args: Args,
    name: &str,
    sock: &Path,
    chardev_extra: &str,
    netdev_extra: &str,
) -> Args {
    let cid = format!("c-{name}");
    args.opt(
        "-chardev",
        &format!("socket,id={cid},path={}{chardev_extra}", sock.display()),
    )
    .netdev(&format!("vhost-user,id={name},chardev={cid}{netdev_extra}"))
}

fn carrier(c: &mut QmpClient, name: &str) -> bool {
    port_stats(c, name)["carrier"] == true
}

/// Waits until every port in `names` has its carrier `up`.
fn wait_carrier(
    c: &mut QmpClient,
    names: &[&str],
    up: bool,
    within: Duration,
    said: impl Fn() -> String,
) {
    let t = Instant::now();
    for n in names {
        let left = within.saturating_sub(t.elapsed());
        assert!(
            wait_until(left, || carrier(c, n) == up),
            "{n}: carrier not {up} within {within:?}: {}\ntestpmd said:\n{}",
            port_stats(c, n),
            said()
        );
    }
}

/// Frames of every size both ways between `a` and `b`, byte for byte.
fn sizes_both_ways(a: &UdpEnd, b: &UdpEnd, what: &str) {
    for (k, &len) in SIZES.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(b, &f, &format!("{what}: {len} bytes a → b"));
        let g = frame(BCAST, mac(2), ETH_EXP, len, 100 + k as u8);
        b.send(&g);
        expect_frame(a, &g, &format!("{what}: {len} bytes b → a"));
    }
}

/// Two vhost-user ports on two hubs, each hub with a UDP port.
fn two_ports(
    dir: &TempDir,
    chardev_extra: &str,
    netdev_extra: &str,
) -> (
    tests::Daemon,
    QmpClient,
    [std::path::PathBuf; 2],
    [UdpEnd; 2],
) {
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let (mut a, mut b) = (UdpEnd::new(), UdpEnd::new());
    let args = Args::new().opt("-pool-size", "4096");
    let args = vhost_port(args, "vA", &sa, chardev_extra, netdev_extra).on_hub("vA", 0);
    let args = vhost_port(args, "vB", &sb, chardev_extra, netdev_extra).on_hub("vB", 1);
    let args = args.udp("a", 0, &mut a).udp("b", 1, &mut b);
    let (d, c) = args.start_with_qmp(dir);
    (d, c, [sa, sb], [a, b])
}

#[test]
fn testpmd_frontend_forwards_frames_both_ways() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    // Two queue pairs each (MQ): the frontend enables both; frames cross either.
    let (d, mut c, [sa, sb], [a, b]) = two_ports(&dir, ",server=on", ",queues=2");
    assert!(sa.exists() && sb.exists(), "both sockets listen");
    let free0 = pool_free(&mut c);
    let mut extra = JUMBO.to_vec();
    extra.extend(["--rxq=2", "--txq=2"]);
    let mut tp = Testpmd::start(
        &[
            virtio_vdev_queues(0, &sa, false, 2),
            virtio_vdev_queues(1, &sb, false, 2),
        ],
        "io",
        &extra,
    );
    wait_carrier(&mut c, &["vA", "vB"], true, ATTACH, || tp.said());
    until_path_works(&a, &b, probe, "a → testpmd → b");
    until_path_works(&b, &a, probe, "b → testpmd → a");
    // Probes sent before testpmd had posted receive buffers were dropped (tx-full);
    // from here on nothing may be.
    let drops0 = total_drops(&port_stats(&mut c, "vA"));
    sizes_both_ways(&a, &b, "through testpmd");

    let p = port_stats(&mut c, "vA");
    let v = &p["vhost-user"];
    assert_eq!(v["connected"], true, "{p}");
    assert_eq!(v["connects"], 1, "{p}");
    assert_eq!(v["queues-running"], 2, "{p}");
    let feats: Vec<&str> = v["features"]
        .as_array()
        .unwrap_or_else(|| panic!("features: {p}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in ["version-1", "mrg-rxbuf", "mq"] {
        assert!(feats.contains(&f), "{f} negotiated: {p}");
    }
    assert_eq!(total_drops(&p), drops0, "{p}");
    // The guest's address is the source of the first frame it sent: testpmd forwards
    // our frames as they are, and the first was a probe.
    let rf = c.execute_ok("query-rx-filter", json!({"name": "vA"}));
    assert_eq!(rf[0]["main-mac"], "02:50:53:00:00:ee", "{rf}");
    assert_eq!(p["vhost-user"]["guest-mac"], "02:50:53:00:00:ee", "{p}");

    let out = tp.interrupt();
    let (rx, tx, tx_dropped) = totals(&out);
    assert!(rx >= 2 * SIZES.len() as u64, "testpmd rx {rx}:\n{out}");
    assert_eq!(rx, tx + tx_dropped, "testpmd forwards or drops each frame");
    wait_carrier(&mut c, &["vA", "vB"], false, WAIT, String::new);
    let p = port_stats(&mut c, "vA");
    assert_eq!(p["vhost-user"]["connected"], false, "{p}");
    assert!(
        wait_until(WAIT, || pool_free(&mut c) == free0),
        "pool free {} after the frontend left, {free0} before",
        pool_free(&mut c)
    );
    d.stop_clean();
    assert!(!sa.exists() && !sb.exists(), "sockets removed at exit");
}

#[test]
fn pollswitch_as_client_reconnects_to_a_restarted_testpmd() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let s = dir.join("s.sock");
    let mut a = UdpEnd::new();
    let args = vhost_port(Args::new(), "vA", &s, ",server=off,reconnect=1", "").on_hub("vA", 0);
    let (d, mut c) = args.udp("a", 0, &mut a).start_with_qmp(&dir);
    // No frontend yet: the port keeps trying, frames for it are dropped and counted.
    std::thread::sleep(Duration::from_millis(1200));
    let p = port_stats(&mut c, "vA");
    assert_eq!(p["carrier"], false, "{p}");
    assert_eq!(p["vhost-user"]["connects"], 0, "{p}");
    assert!(
        p["vhost-user"]["last-error"]
            .as_str()
            .is_some_and(|e| e.contains("connect")),
        "{p}"
    );

    let mut counts = Vec::new();
    for round in 0..3 {
        // testpmd's server does not replace a socket file left by a killed one.
        let _ = std::fs::remove_file(&s);
        let mut tp = Testpmd::start(&[virtio_vdev(0, &s, true)], "macswap", JUMBO);
        wait_carrier(
            &mut c,
            &["vA"],
            true,
            ATTACH + Duration::from_secs(2),
            || tp.said(),
        );
        // testpmd sends each frame back with its addresses swapped.
        for (k, &len) in SIZES.iter().enumerate() {
            let f = frame(mac(9), mac(1), ETH_EXP, len, k as u8);
            let mut want = f.clone();
            want[..6].copy_from_slice(&f[6..12]);
            want[6..12].copy_from_slice(&f[..6]);
            let got = wait_for_frame(&a, &f, len);
            if let Some(dif) = diff(&got, &want) {
                panic!("round {round}: {len} bytes back from testpmd: {dif}");
            }
        }
        let p = port_stats(&mut c, "vA");
        assert_eq!(p["vhost-user"]["connects"], round + 1, "{p}");
        // Killed mid-traffic: no goodbye on the socket.
        tp.crash();
        wait_carrier(&mut c, &["vA"], false, WAIT, String::new);
        std::thread::sleep(Duration::from_millis(200));
        counts.push((fd_count(d.pid()), map_count(d.pid())));
    }
    // Descriptors and mappings (guest memory, eventfds) come back after each round.
    assert_eq!(
        counts[1], counts[2],
        "fds and maps after rounds 2 and 3: {counts:?}"
    );
    drop(c);
    d.stop_clean();
}

/// Sends `f` from `a` (again every 200 ms, while testpmd's port comes up) until a frame
/// of `len` bytes comes back; returns it.
fn wait_for_frame(a: &UdpEnd, f: &[u8], len: usize) -> Vec<u8> {
    let t = Instant::now();
    while t.elapsed() < WAIT {
        a.send(f);
        if let Some(g) = a.recv_timeout(Duration::from_millis(200)) {
            if g.len() == len {
                return g;
            }
        }
    }
    panic!("no {len}-byte frame came back within {WAIT:?}");
}

#[test]
fn a_tap_in_a_namespace_through_testpmd() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let s = dir.join("t.sock");
    let ifname = unique("vut");
    let args = vhost_port(Args::new(), "vA", &s, ",server=on", "")
        .on_hub("vA", 0)
        .netdev(&format!(
            "tap,id=t0,ifname={ifname},script=no,downscript=no"
        ))
        .on_hub("t0", 0);
    let (d, mut c) = args.start_with_qmp(&dir);
    let ns = Netns::new();
    move_link_into(&ifname, &ns, "");
    ns.exec_ok(&["ip", "link", "set", "dev", &ifname, "mtu", "9000"]);
    let raw = RawSock::open_in(&ns, &ifname);
    let mut tp = Testpmd::start(&[virtio_vdev(0, &s, false)], "macswap", JUMBO);
    wait_carrier(&mut c, &["vA"], true, ATTACH, || tp.said());
    for (k, &len) in [60usize, 1514, 9000].iter().enumerate() {
        let f = frame(mac(9), mac(1), ETH_EXP, len, k as u8);
        let mut want = f.clone();
        want[..6].copy_from_slice(&f[6..12]);
        want[6..12].copy_from_slice(&f[..6]);
        let t = Instant::now();
        let got = loop {
            assert!(
                t.elapsed() < WAIT,
                "{len} bytes: nothing came back:\n{}",
                tp.said()
            );
            raw.send(&f);
            // What comes back on the tap: our own frame is not looped, so only
            // testpmd's answer has src mac(9).
            match raw.recv_timeout(Duration::from_millis(200)) {
                Some(g) if g.len() == len && g[6..12] == mac(9) => break g,
                _ => {}
            }
        };
        if let Some(dif) = diff(&got, &want) {
            panic!("{len} bytes back through the tap: {dif}");
        }
    }
    let out = tp.interrupt();
    let (rx, tx, _) = totals(&out);
    assert!(rx >= 3 && tx >= 3, "testpmd rx {rx} tx {tx}");
    drop(c);
    d.stop_clean();
}

#[test]
fn wrong_options_are_refused() {
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .opt(
            "-chardev",
            &format!("socket,id=c0,path={}", dir.join("x.sock").display()),
        )
        .opt("-chardev", "socket,id=t0,host=127.0.0.1,port=1")
        .start_with_qmp(&dir);
    let err = |c: &mut QmpClient, args: Value| -> String {
        let r = c.execute("netdev_add", args);
        r["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("an error: {r}"))
            .to_string()
    };
    let e = err(
        &mut c,
        json!({"type": "vhost-user", "id": "v", "chardev": "nope"}),
    );
    assert!(e.contains("chardev \"nope\" not found"), "{e}");
    let e = err(
        &mut c,
        json!({"type": "vhost-user", "id": "v", "chardev": "t0"}),
    );
    assert!(e.contains("not a unix socket"), "{e}");
    let e = err(
        &mut c,
        json!({"type": "vhost-user", "id": "v", "chardev": "c0", "queues": 0}),
    );
    assert!(e.contains("queues=0"), "{e}");
    // A client chardev with nobody listening and no reconnect fails at once, as in QEMU.
    let e = err(
        &mut c,
        json!({"type": "vhost-user", "id": "v", "chardev": "c0"}),
    );
    assert!(e.contains("connect"), "{e}");
    let e = err(
        &mut c,
        json!({"type": "vhost-vdpa", "id": "vd", "vhostdev": "/dev/vhost-vdpa-0"}),
    );
    assert!(e.contains("vhost-vdpa"), "{e}");
    drop(c);
    d.stop_clean();
}

#[test]
fn chardevs_and_vhost_user_ports_over_qmp() {
    let _one = testpmd::lock();
    let dir = TempDir::new();
    let s = dir.join("q.sock");
    let mut a = UdpEnd::new();
    let (d, mut c) = Args::new().udp("a", 0, &mut a).start_with_qmp(&dir);
    let add = json!({"id": "cq", "backend": {"type": "socket", "data": {
        "addr": {"type": "unix", "data": {"path": s.display().to_string()}},
        "server": true, "wait": false}}});
    assert_eq!(c.execute_ok("chardev-add", add.clone()), json!({}));
    let r = c.execute("chardev-add", add);
    assert!(
        r["error"]["desc"]
            .as_str()
            .is_some_and(|e| e.contains("duplicate")),
        "{r}"
    );
    let q = c.execute_ok("query-chardev", Value::Null);
    assert_eq!(
        q,
        json!([{"label": "cq", "filename": format!("unix:{},server=on", s.display()), "frontend-open": false}])
    );
    c.execute_ok(
        "netdev_add",
        json!({"type": "vhost-user", "id": "vq", "chardev": "cq"}),
    );
    c.execute_ok(
        "netdev_add",
        json!({"type": "hubport", "id": "hq", "hubid": 0, "netdev": "vq"}),
    );
    assert!(s.exists(), "the port listens on {}", s.display());
    let q = c.execute_ok("query-chardev", Value::Null);
    assert_eq!(q[0]["frontend-open"], true, "{q}");
    let r = c.execute("chardev-remove", json!({"id": "cq"}));
    assert_eq!(r["error"]["desc"], "Chardev 'cq' is busy", "{r}");
    let r = c.execute(
        "netdev_add",
        json!({"type": "vhost-user", "id": "v2", "chardev": "cq"}),
    );
    assert!(
        r["error"]["desc"]
            .as_str()
            .is_some_and(|e| e.contains("already in use")),
        "{r}"
    );
    let nd = c.execute_ok("query-netdev", Value::Null);
    assert!(nd.to_string().contains("\"chardev\":\"cq\""), "{nd}");

    // A frontend on the port made over QMP: frames both ways through testpmd's macswap.
    let tp = Testpmd::start(&[virtio_vdev(0, &s, false)], "macswap", &[]);
    wait_carrier(&mut c, &["vq"], true, ATTACH, || tp.said());
    let f = frame(mac(9), mac(1), ETH_EXP, 200, 1);
    let got = wait_for_frame(&a, &f, 200);
    assert_eq!(&got[..6], &f[6..12], "{got:?}");
    drop(tp);

    c.execute_ok("netdev_del", json!({"id": "hq"}));
    c.execute_ok("netdev_del", json!({"id": "vq"}));
    assert!(
        wait_until(WAIT, || !s.exists()),
        "the socket goes with the port"
    );
    assert_eq!(
        c.execute_ok("chardev-remove", json!({"id": "cq"})),
        json!({})
    );
    assert_eq!(c.execute_ok("query-chardev", Value::Null), json!([]));
    let r = c.execute("chardev-remove", json!({"id": "cq"}));
    assert_eq!(r["error"]["desc"], "Chardev 'cq' not found", "{r}");
    drop(c);
    d.stop_clean();
}
