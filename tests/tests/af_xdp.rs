//! `af-xdp` ports on veths: the daemon in a namespace of its own with one end of a veth
//! pair and a tap, the other ends in two more namespaces, and kernel traffic (ping) and
//! exact frames (AF_PACKET) between them, in every attach mode the kernel has for a
//! veth.
//!
//! ```text
//!  netns A: 10.x.0.1 ── veth pa ══ veth pd ── af-xdp x ─ hubport ┐
//!                                                               ├─ hub 0   (netns D:
//!  netns B: 10.x.0.2 ── tap t (made by the daemon, moved) ─ hubport ┘        the daemon)
//! ```
//!
//! Each test checks that the XDP program is gone from the interface once the port is
//! (deleted or the daemon stopped), and stopping checks a clean exit and a full pool.

mod common;

use std::time::Duration;

use common::{diff, fd_count, mac, ping, port_stats, Args, BCAST, ETH_EXP, QUIET, WAIT};
use serde_json::{json, Value};
use tests::{frame, run_ok, unique, wait_until, Daemon, Netns, QmpClient, RawSock, TempDir};

/// The test bed: namespaces, the veth, the daemon and a QMP client.
struct Bed {
    d: Netns,
    a: Netns,
    b: Netns,
    /// The daemon's end of the veth (in `d`) and the far end (in `a`).
    pd: String,
    pa: String,
    tap: String,
    daemon: Daemon,
    c: QmpClient,
    _dir: TempDir,
}

/// A veth pair with `queues` queues each way: `pd` in `d`, `pa` in `a`, both up.
fn veth(d: &Netns, a: &Netns, queues: u32) -> (String, String) {
    let (pd, pa) = (unique("pxd"), unique("pxa"));
    let q = queues.to_string();
    run_ok(
        "ip",
        &[
            "-n",
            &d.name,
            "link",
            "add",
            &pd,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &pa,
            "netns",
            &a.name,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ],
    );
    run_ok("ip", &["-n", &d.name, "link", "set", "dev", &pd, "up"]);
    run_ok("ip", &["-n", &a.name, "link", "set", "dev", &pa, "up"]);
    (pd, pa)
}

/// The daemon in `d` with `netdevs` (af-xdp `x` and tap `t`, each on hub 0) and QMP.
fn start(d: &Netns, dir: &TempDir, netdevs: &[String]) -> (Daemon, QmpClient) {
    let qmp = dir.join("qmp.sock");
    let mut args = Args::new().opt(
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    );
    for n in netdevs {
        args = args.netdev(n);
    }
    let daemon = args.start_in(d);
    let c = QmpClient::connect_unix_negotiated(&qmp).expect("connect to the daemon's QMP");
    (daemon, c)
}

impl Bed {
    /// `x` = `af-xdp,ifname=<pd>` plus `opts`; a tap `t`; both on hub 0; the tap moved
    /// to `b` with 10.`net`.0.2, `pa` with 10.`net`.0.1.
    fn new(opts: &str, queues: u32, net: u8) -> Bed {
        let (d, a, b) = (Netns::new(), Netns::new(), Netns::new());
        let (pd, pa) = veth(&d, &a, queues);
        let tap = unique("pxt");
        let dir = TempDir::new();
        let (daemon, c) = start(
            &d,
            &dir,
            &[
                format!("af-xdp,id=x,ifname={pd}{opts}"),
                "hubport,id=hx,hubid=0,netdev=x".into(),
                format!("tap,id=t,ifname={tap},script=no,downscript=no"),
                "hubport,id=ht,hubid=0,netdev=t".into(),
            ],
        );
        run_ok(
            "ip",
            &["-n", &d.name, "link", "set", "dev", &tap, "netns", &b.name],
        );
        run_ok(
            "ip",
            &[
                "-n",
                &b.name,
                "addr",
                "add",
                &format!("10.{net}.0.2/24"),
                "dev",
                &tap,
            ],
        );
        run_ok("ip", &["-n", &b.name, "link", "set", "dev", &tap, "up"]);
        run_ok(
            "ip",
            &[
                "-n",
                &a.name,
                "addr",
                "add",
                &format!("10.{net}.0.1/24"),
                "dev",
                &pa,
            ],
        );
        Bed {
            d,
            a,
            b,
            pd,
            pa,
            tap,
            daemon,
            c,
            _dir: dir,
        }
    }

    /// The `af-xdp` entry of port `x` in `x-query-stats`.
    fn xdp_stats(&mut self) -> Value {
        port_stats(&mut self.c, "x")["af-xdp"].clone()
    }

    fn stop(self) {
        let Bed {
            d, pd, daemon, c, ..
        } = self;
        drop(c);
        daemon.stop_clean();
        assert!(
            wait_until(WAIT, || xdp_attached(&d, &pd).is_none()),
            "the XDP program stayed on {pd} after the daemon exited"
        );
    }
}

/// What `ip -d link show` says is attached to `ifname` in `ns`: `xdp` (native),
/// `xdpgeneric` (skb) or `None`.
fn xdp_attached(ns: &Netns, ifname: &str) -> Option<&'static str> {
    let s = ns.exec_ok(&["ip", "-d", "link", "show", "dev", ifname]);
    let line = s.lines().next().unwrap_or_default();
    if line.contains(" xdpgeneric") {
        Some("xdpgeneric")
    } else if line.contains(" xdp") {
        Some("xdp")
    } else {
        None
    }
}

/// Exact frames of several sizes both ways between `pa` (in `a`) and the tap (in `b`).
fn exact_frames(bed: &Bed, what: &str) {
    let ra = RawSock::open_in(&bed.a, &bed.pa);
    let rb = RawSock::open_in(&bed.b, &bed.tap);
    // Frames the kernels sent before (ARP from the pings) are not ours.
    ra.drain(QUIET);
    rb.drain(QUIET);
    for (len, seed) in [(60, 1u8), (61, 2), (128, 3), (1000, 4), (1514, 5)] {
        let f = frame(mac(2), mac(1), ETH_EXP, len, seed);
        ra.send(&f);
        let got = expect_raw(&rb, &f, &format!("{len} bytes veth → tap ({what})"));
        assert_eq!(diff(&got, &f), None, "{len} bytes veth → tap ({what})");
        let g = frame(mac(1), mac(2), ETH_EXP, len, seed.wrapping_add(100));
        rb.send(&g);
        let got = expect_raw(&ra, &g, &format!("{len} bytes tap → veth ({what})"));
        assert_eq!(diff(&got, &g), None, "{len} bytes tap → veth ({what})");
    }
}

/// The next frame on `r` of our EtherType (the namespaces' kernels may send others).
fn expect_raw(r: &RawSock, want: &[u8], what: &str) -> Vec<u8> {
    let deadline = std::time::Instant::now() + WAIT;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match r.recv_timeout(left) {
            Some(f) if f.len() >= 14 && f[12..14] == ETH_EXP.to_be_bytes() => return f,
            Some(_) => continue,
            None => break,
        }
    }
    panic!("{what}: nothing came ({} bytes expected)", want.len())
}

/// Pings both ways, exact frames both ways, and the attach mode `ip` reports and the
/// port says.
fn traffic_flows(opts: &str, net: u8, ip_says: &str, mode: &str) {
    let mut bed = Bed::new(opts, 1, net);
    assert_eq!(
        xdp_attached(&bed.d, &bed.pd),
        Some(ip_says),
        "ip link on {} with {opts:?}",
        bed.pd
    );
    ping(&bed.a, &format!("10.{net}.0.2"), 3, 56);
    ping(&bed.b, &format!("10.{net}.0.1"), 3, 1400);
    exact_frames(&bed, opts);
    let st = bed.xdp_stats();
    assert_eq!(st["mode"], mode, "{st}");
    let q = &st["queues"][0];
    assert_eq!(q["zero-copy"], false, "veth has no zero-copy: {st}");
    assert_eq!(q["bad-descs"], 0, "{st}");
    assert!(q["rx-frames"].as_u64().unwrap() >= 11, "{st}");
    assert!(q["tx-frames"].as_u64().unwrap() >= 11, "{st}");
    let p = port_stats(&mut bed.c, "x");
    assert!(p["rx-packets"].as_u64().unwrap() >= 11, "{p}");
    assert!(p["tx-packets"].as_u64().unwrap() >= 11, "{p}");
    bed.stop();
}

#[test]
fn skb_mode_carries_pings_and_exact_frames_both_ways() {
    traffic_flows(",mode=skb", 61, "xdpgeneric", "skb");
}

#[test]
fn native_mode_with_force_copy_carries_pings_and_exact_frames_both_ways() {
    traffic_flows(",mode=native,force-copy=on", 62, "xdp", "native");
}

#[test]
fn no_mode_is_native_on_a_veth() {
    traffic_flows("", 63, "xdp", "native");
}

/// An Ethernet + IPv4 + UDP frame from 10.64.0.1:`sport` to 10.64.0.2:9 (the kernel
/// hashes it onto a transmit queue by its ports; UDP checksum 0: none).
fn udp_flow(sport: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&mac(2));
    f.extend_from_slice(&mac(1));
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [
        0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 64, 0, 1, 10, 64, 0, 2,
    ];
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    ip[10..12].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&12u16.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.resize(60, 0);
    f
}

#[test]
fn two_queues_each_carry_frames_of_their_flows() {
    let mut bed = Bed::new(",queues=2", 2, 64);
    assert_eq!(bed.xdp_stats()["queues"].as_array().map(Vec::len), Some(2));
    let ra = RawSock::open_in(&bed.a, &bed.pa);
    let rb = RawSock::open_in(&bed.b, &bed.tap);
    rb.drain(QUIET);
    let sent: Vec<Vec<u8>> = (0..64).map(|i| udp_flow(20000 + i * 7)).collect();
    for f in &sent {
        ra.send(f);
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match rb.recv_timeout(WAIT) {
            Some(f) if f.len() >= 14 && f[12..14] == [8, 0] => got.push(f),
            Some(_) => {}
            None => break,
        }
    }
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(
        got, want,
        "every flow's frame reached the tap once, unchanged"
    );
    let st = bed.xdp_stats();
    for q in 0..2 {
        assert_eq!(st["queues"][q]["queue"], q, "{st}");
        assert!(
            st["queues"][q]["rx-frames"].as_u64().unwrap() > 0,
            "queue {q} received none of 64 flows: {st}"
        );
    }
    // And back: the tap's frames go out on the veth.
    let g = frame(mac(1), mac(2), ETH_EXP, 100, 9);
    rb.send(&g);
    let back = expect_raw(&ra, &g, "tap → veth with two queues");
    assert_eq!(diff(&back, &g), None);
    bed.stop();
}

/// `netdev_add` arguments for an af-xdp port `id` on `ifname` with `extra` members.
fn add(c: &mut QmpClient, id: &str, ifname: &str, extra: Value) -> Value {
    let mut args = json!({"type": "af-xdp", "id": id, "ifname": ifname});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    c.execute("netdev_add", args)
}

fn desc(r: &Value) -> String {
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    r["error"]["desc"].as_str().unwrap_or_default().to_string()
}

#[test]
fn wrong_options_are_refused_with_qemus_words() {
    let (d, a) = (Netns::new(), Netns::new());
    let (pd, _pa) = veth(&d, &a, 1);
    let dir = TempDir::new();
    let (daemon, mut c) = start(&d, &dir, &[]);
    let fds = fd_count(daemon.pid());
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "nosuchif0",
            json!({}),
            "failed to get ifindex for 'nosuchif0': No such device".into(),
        ),
        (
            &pd,
            json!({"queues": 0}),
            format!("invalid number of queues (0) for '{pd}'"),
        ),
        (
            &pd,
            json!({"inhibit": true}),
            "'inhibit=on' requires 'sock-fds' and vice versa".into(),
        ),
        (
            &pd,
            json!({"sock-fds": "3"}),
            "'inhibit=on' requires 'sock-fds' and vice versa".into(),
        ),
        (
            &pd,
            json!({"inhibit": true, "sock-fds": "a:b"}),
            "expected 1 socket fds, got 2".into(),
        ),
        (
            &pd,
            json!({"mode": "bogus"}),
            "Parameter 'mode' does not accept value 'bogus'".into(),
        ),
        (
            &pd,
            json!({"queues": 2}),
            format!("x: af-xdp ifname={pd}: queues 0..1 do not exist: {pd} has 1 receive queue"),
        ),
        (
            &pd,
            json!({"start-queue": 1}),
            format!("x: af-xdp ifname={pd}: queues 1..1 do not exist: {pd} has 1 receive queue"),
        ),
        // The loopback device has no native XDP.
        (
            "lo",
            json!({"mode": "native"}),
            "x: af-xdp ifname=lo: attaching the XDP program in native mode: \
             Operation not supported (os error 95)"
                .into(),
        ),
    ];
    for (ifname, extra, want) in cases {
        let r = add(&mut c, "x", ifname, extra.clone());
        assert_eq!(desc(&r), want, "{ifname} {extra}");
        assert_eq!(xdp_attached(&d, &pd), None, "after {extra}");
    }
    // A wrongly typed member is the visitor's error.
    let r = add(&mut c, "x", &pd, json!({"queues": "2"}));
    assert_eq!(
        desc(&r),
        "Invalid parameter type for 'queues', expected: integer"
    );
    // Nothing was left open by the refusals.
    assert_eq!(
        fd_count(daemon.pid()),
        fds,
        "descriptors after the refusals"
    );
    // With no mode, a device without native XDP falls back to skb.
    let r = add(&mut c, "x", "lo", json!({}));
    assert!(r.get("return").is_some(), "{r}");
    assert_eq!(port_stats(&mut c, "x")["af-xdp"]["mode"], "skb");
    assert_eq!(xdp_attached(&d, "lo"), Some("xdpgeneric"));
    c.execute_ok("netdev_del", json!({"id": "x"}));
    assert_eq!(xdp_attached(&d, "lo"), None);
    drop(c);
    daemon.stop_clean();
}

#[test]
fn netdev_del_removes_the_program_and_closes_the_sockets() {
    let (d, a) = (Netns::new(), Netns::new());
    let (pd, _pa) = veth(&d, &a, 2);
    let dir = TempDir::new();
    let (daemon, mut c) = start(&d, &dir, &[]);
    let pid = daemon.pid();
    let fds = fd_count(pid);
    for (opts, ip_says) in [
        (json!({"mode": "skb", "queues": 2}), "xdpgeneric"),
        (json!({"mode": "native", "start-queue": 1}), "xdp"),
    ] {
        let r = add(&mut c, "x", &pd, opts.clone());
        assert!(r.get("return").is_some(), "{opts}: {r}");
        assert_eq!(xdp_attached(&d, &pd), Some(ip_says), "{opts}");
        assert!(fd_count(pid) > fds, "{opts}: the port has descriptors");
        // query-netdev gives back what was configured.
        let q = c.execute_ok("query-netdev", Value::Null);
        let x = q
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == "x")
            .unwrap();
        assert_eq!(x["type"], "af-xdp", "{q}");
        assert_eq!(x["ifname"], pd.as_str(), "{q}");
        c.execute_ok("netdev_del", json!({"id": "x"}));
        assert_eq!(
            xdp_attached(&d, &pd),
            None,
            "{opts}: the program is gone when netdev_del returns"
        );
        assert!(
            wait_until(Duration::from_secs(2), || fd_count(pid) == fds),
            "{opts}: {} descriptors after netdev_del, {fds} before",
            fd_count(pid)
        );
    }
    drop(c);
    daemon.stop_clean();
}

/// `Udp: ... NoPorts ...` of `/proc/net/snmp` in `ns`: datagrams to a closed port.
fn udp_no_ports(ns: &Netns) -> u64 {
    let s = ns.exec_ok(&["cat", "/proc/net/snmp"]);
    let mut udp = s.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "NoPorts")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn frames_of_a_queue_without_a_socket_go_to_the_kernel() {
    // start-queue=1 on a 2-queue veth: queue 1 has the socket; the program passes
    // queue 0's frames to the kernel of the daemon's namespace, which counts each
    // datagram to a closed port. Every frame goes one way or the other, never both.
    // Native mode: in skb mode a veth's frames do not carry the receive queue their
    // sender's transmit queue chose (generic XDP sees them all on one queue).
    let mut bed = Bed::new(",mode=native,start-queue=1", 2, 65);
    run_ok(
        "ip",
        &[
            "-n",
            &bed.d.name,
            "addr",
            "add",
            "10.64.0.2/24",
            "dev",
            &bed.pd,
        ],
    );
    let m = bed
        .d
        .exec_ok(&["cat", &format!("/sys/class/net/{}/address", bed.pd)]);
    let dst: Vec<u8> = m
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let ra = RawSock::open_in(&bed.a, &bed.pa);
    let rb = RawSock::open_in(&bed.b, &bed.tap);
    rb.drain(QUIET);
    let before = udp_no_ports(&bed.d);
    let n = 64u64;
    for i in 0..n {
        let mut f = udp_flow(30000 + i as u16 * 11);
        f[..6].copy_from_slice(&dst);
        ra.send(&f);
    }
    let mut at_tap = 0u64;
    while let Some(f) = rb.recv_timeout(QUIET) {
        if f.len() >= 14 && f[12..14] == [8, 0] {
            at_tap += 1;
        }
    }
    let st = bed.xdp_stats();
    assert_eq!(st["queues"][0]["queue"], 1, "{st}");
    let to_switch = st["queues"][0]["rx-frames"].as_u64().unwrap();
    assert_eq!(
        at_tap, to_switch,
        "what the socket got reached the tap: {st}"
    );
    let to_kernel = udp_no_ports(&bed.d) - before;
    assert_eq!(
        to_switch + to_kernel,
        n,
        "{to_switch} to the switch, {to_kernel} to the kernel"
    );
    assert!(
        to_switch > 0 && to_kernel > 0,
        "64 flows all on one queue? {st}"
    );
    bed.stop();
}

#[test]
fn the_port_is_quiet_when_nothing_moves() {
    let bed = Bed::new(",mode=skb", 1, 67);
    ping(&bed.a, "10.67.0.2", 1, 56);
    let pid = bed.daemon.pid();
    let cpu = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = cpu();
    std::thread::sleep(Duration::from_secs(1));
    let ticks = cpu() - t0;
    assert!(
        ticks < 20,
        "{ticks} clock ticks in 1 s idle with -poll-us 0"
    );
    // And a frame after the sleep still wakes the worker at once.
    ping(&bed.a, "10.67.0.2", 2, 56);
    let _ = (&bed.b, BCAST);
    bed.stop();
}
