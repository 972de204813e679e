//! `x-vxlan` against the Linux kernel's own `vxlan` device: a namespace behind a
//! pollswitch tap and a namespace behind a kernel VXLAN device form one L2 segment over
//! a veth underlay between two namespaces the test makes; ping and iperf3 both ways,
//! with a unicast remote and with a multicast group (remote VTEPs learned both sides).
//!
//! ```text
//!  netns A: 10.88.0.1 ─ tap ─ hub 0 ─ x-vxlan ┐ (pollswitch runs in netns U1)
//!                                             │ UDP 4789, veth 10.99.0.1 ↔ 10.99.0.2
//!  netns B: 10.88.0.2 ─ vx0 (kernel vxlan, its socket in netns U2) ┘
//! ```

mod common;

use common::{ping, port_stats, Args};
use tests::{require_tool, testbed::VethPair, unique, Netns, QmpClient, TempDir};

const VNI: u32 = 4242;
const GROUP: &str = "239.1.1.42";

/// The two underlay namespaces, joined by a veth (MTU 1600, so a 1500-byte frame and
/// its 50 bytes of VXLAN, UDP and IP fit), and the two hosts.
struct Net {
    u1: Netns,
    u2: Netns,
    a: Netns,
    b: Netns,
    veth: VethPair,
}

fn underlay() -> Net {
    let (u1, u2, a, b) = (Netns::new(), Netns::new(), Netns::new(), Netns::new());
    let veth = VethPair::create("vxu", "vxk").expect("veth pair");
    veth.move_ends(&u1, &u2, 1600)
        .expect("veth ends into U1, U2");
    u1.exec_ok(&["ip", "addr", "add", "10.99.0.1/24", "dev", &veth.a]);
    u2.exec_ok(&["ip", "addr", "add", "10.99.0.2/24", "dev", &veth.b]);
    for (ns, dev) in [(&u1, &veth.a), (&u2, &veth.b)] {
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        // Multicast goes onto the veth between the test's own namespaces, nowhere else.
        ns.exec_ok(&["ip", "route", "add", "224.0.0.0/4", "dev", dev]);
    }
    Net { u1, u2, a, b, veth }
}

/// The kernel's end: `vx0` made in U2 (its socket stays there) and moved into B.
fn kernel_vtep(n: &Net, how: &[&str]) {
    let vx = unique("vx");
    let vni = VNI.to_string();
    let mut cmd = vec![
        "ip", "link", "add", &vx, "type", "vxlan", "id", &vni, "dstport", "4789",
    ];
    cmd.extend_from_slice(how);
    n.u2.exec_ok(&cmd);
    n.u2.exec_ok(&["ip", "link", "set", &vx, "netns", &n.b.name]);
    n.b.exec_ok(&["ip", "addr", "add", "10.88.0.2/24", "dev", &vx]);
    n.b.exec_ok(&["ip", "link", "set", &vx, "up"]);
    // The kernel leaves the inner TCP/UDP checksum of what B sends to the "hardware"
    // (vx0, then veth, advertise checksum offload), and a veth never computes it: the
    // datagram would reach pollswitch's socket with the checksum unfilled. A real NIC
    // under the underlay fills it; here B's stack must.
    n.b.exec_ok(&["ethtool", "-K", &vx, "tx", "off"]);
}

/// pollswitch in U1: a tap (moved into A) and `x-vxlan` with `vxlan` options on hub 0.
fn switch_vtep(n: &Net, vxlan: &str, dir: &TempDir) -> (tests::Daemon, QmpClient) {
    let tap = unique("vxt");
    let qmp = dir.join("qmp.sock");
    let d = Args::new()
        .netdev(&format!("tap,id=t,ifname={tap},script=no,downscript=no"))
        .on_hub("t", 0)
        .netdev(&format!("x-vxlan,id=vx,vni={VNI},{vxlan}"))
        .on_hub("vx", 0)
        .opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", qmp.display()),
        )
        .start_in(&n.u1);
    let c = QmpClient::connect_unix_negotiated(&qmp).expect("QMP");
    // The tap was made in U1, where the daemon runs.
    n.u1.exec_ok(&["ip", "link", "set", "dev", &tap, "netns", &n.a.name]);
    n.a.exec_ok(&["ip", "addr", "add", "10.88.0.1/24", "dev", &tap]);
    n.a.exec_ok(&["ip", "link", "set", "dev", &tap, "up"]);
    (d, c)
}

/// iperf3 for `secs` seconds from A to B (`reverse`: B to A); the receiver's Gbit/s.
fn iperf(n: &Net, reverse: bool, secs: u32) -> f64 {
    let t = secs.to_string();
    let mut args = vec!["-t", t.as_str()];
    if reverse {
        args.push("-R");
    }
    tests::testbed::iperf::tcp(&n.b, "10.88.0.2", &n.a, &args)
        .unwrap_or_else(|e| panic!("iperf3 A → B: {e}"))
        .gbps
}

fn check_both_ways(n: &Net, c: &mut QmpClient) {
    ping(&n.a, "10.88.0.2", 5, 56);
    ping(&n.b, "10.88.0.1", 5, 1400);
    let there = iperf(n, false, 2);
    let back = iperf(n, true, 2);
    eprintln!("iperf3 through x-vxlan: A→B {there:.2} Gbit/s, B→A {back:.2} Gbit/s");
    assert!(there > 0.01 && back > 0.01, "{there} {back}");
    let st = port_stats(c, "vx");
    assert!(st["tx-packets"].as_u64().unwrap() > 1000, "{st}");
    assert!(st["rx-packets"].as_u64().unwrap() > 1000, "{st}");
}

#[test]
fn a_namespace_behind_a_tap_reaches_one_behind_a_kernel_vxlan_device() {
    require_tool("iperf3");
    require_tool("busybox");
    require_tool("ethtool");
    let n = underlay();
    kernel_vtep(&n, &["local", "10.99.0.2", "remote", "10.99.0.1"]);
    let dir = TempDir::new();
    let (d, mut c) = switch_vtep(&n, "remote=10.99.0.2,local=10.99.0.1", &dir);
    check_both_ways(&n, &mut c);
    // Another VNI's datagrams are not ours: a second kernel device on VNI+1 is not
    // heard (counted as filtered).
    let before = port_stats(&mut c, "vx")["drops"]["filtered"]
        .as_u64()
        .unwrap();
    let vx2 = unique("vy");
    let other = (VNI + 1).to_string();
    n.u2.exec_ok(&[
        "ip",
        "link",
        "add",
        &vx2,
        "type",
        "vxlan",
        "id",
        &other,
        "dstport",
        "4789",
        "local",
        "10.99.0.2",
        "remote",
        "10.99.0.1",
    ]);
    n.u2.exec_ok(&["ip", "addr", "add", "10.87.0.2/24", "dev", &vx2]);
    n.u2.exec_ok(&["ip", "link", "set", &vx2, "up"]);
    let _ =
        n.u2.exec(&["busybox", "ping", "-c", "2", "-w", "2", "10.87.0.1"]);
    let after = port_stats(&mut c, "vx")["drops"]["filtered"]
        .as_u64()
        .unwrap();
    assert!(
        after > before,
        "VNI {other}'s frames filtered: {before} → {after}"
    );
    drop(c);
    d.stop_clean();
    drop(n.veth);
}

#[test]
fn over_a_multicast_group_both_ends_learn_each_other() {
    require_tool("iperf3");
    require_tool("busybox");
    require_tool("ethtool");
    let n = underlay();
    let dev = n.veth.b.clone();
    kernel_vtep(
        &n,
        &[
            "local",
            "10.99.0.2",
            "group",
            GROUP,
            "dev",
            &dev,
            "ttl",
            "1",
        ],
    );
    let dir = TempDir::new();
    let (d, mut c) = switch_vtep(&n, &format!("group={GROUP},local=10.99.0.1"), &dir);
    check_both_ways(&n, &mut c);
    let st = port_stats(&mut c, "vx");
    let v = &st["vxlan"];
    assert!(v["vteps"].as_u64().unwrap() >= 1, "B's MAC learned: {st}");
    assert!(
        v["to-vtep"].as_u64().unwrap() > 1000,
        "unicast went to the learned VTEP, not the group: {st}"
    );
    // The kernel learned A's MAC at our address too.
    let fdb = n.b.exec_ok(&["bridge", "fdb", "show"]);
    assert!(
        fdb.lines().any(|l| l.contains("dst 10.99.0.1")),
        "kernel fdb: {fdb}"
    );
    drop(c);
    d.stop_clean();
    drop(n.veth);
}

#[test]
fn bad_vxlan_options_are_refused_saying_why() {
    let dir = TempDir::new();
    let (d, mut c) = Args::new().start_with_qmp(&dir);
    for (args, says) in [
        (serde_json::json!({"vni": 1}), "exactly one of remote= "),
        (
            serde_json::json!({"vni": 1, "remote": "127.0.0.1", "group": "239.1.1.1"}),
            "exactly one of remote= ",
        ),
        (
            serde_json::json!({"vni": 1, "group": "239.1.1.1"}),
            "needs local=",
        ),
        (
            serde_json::json!({"vni": 1, "group": "10.0.0.1", "local": "127.0.0.1"}),
            "not a multicast address",
        ),
        (
            serde_json::json!({"vni": 1 << 24, "remote": "127.0.0.1"}),
            "24 bits",
        ),
        (
            serde_json::json!({"vni": 1, "remote": "nowhere"}),
            "not an IP address",
        ),
        (
            serde_json::json!({"vni": 1, "group": "ff02::1"}),
            "IPv6 multicast",
        ),
    ] {
        let mut a = args.clone();
        a["id"] = "vx".into();
        a["type"] = "x-vxlan".into();
        let r = c.execute("netdev_add", a);
        let desc = r["error"]["desc"].as_str().unwrap_or_default().to_string();
        assert!(desc.contains(says), "{args}: {r}");
    }
    // A good one is listed by query-netdev as given.
    c.execute_ok(
        "netdev_add",
        serde_json::json!({"id": "vx", "type": "x-vxlan", "vni": 7, "remote": "127.0.0.1",
                           "port": tests::free_udp_port()}),
    );
    let nd = c.execute_ok("query-netdev", serde_json::Value::Null);
    assert_eq!(nd[0]["type"], "x-vxlan", "{nd}");
    assert_eq!(nd[0]["vni"], 7, "{nd}");
    drop(c);
    d.stop_clean();
}
