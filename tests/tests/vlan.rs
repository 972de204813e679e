//! VLANs on a hub (`x-vlan`, `x-trunks` on hubports; `x-set-vlan`): access and trunk
//! ports, tags pushed and popped byte for byte, 802.1ad frames passed through, the
//! learning table keyed by (VLAN, MAC), and Linux VLAN sub-interfaces talking through
//! it.
//!
//! ```text
//!  UDP ends (frames of our making):     a: access 10   b: access 10   c: access 20
//!                                        t: trunk 10:20 (no native)   d: no settings
//!  kernel (taps in namespaces):          n1: trunk 10:20 (a raw socket, or sub-interfaces
//!                                            .10 and .20 where the kernel has 802.1Q)
//!                                        n2, n3: access 10 (or 10 and 20)
//!                                        n4: access 20 with an address of VLAN 10's subnet
//! ```

mod common;

use common::{
    expect_frame, expect_nothing, mac, ping, ping_replies, port_stats, udp_spec, Args, BCAST,
    ETH_EXP, QUIET,
};
use serde_json::json;
use tests::{frame, move_link_into, require_tool, unique, Netns, TempDir, UdpEnd};

/// `f` with an 802.1Q tag (TPID 0x8100, `tci`) after its addresses.
fn tagged(f: &[u8], tci: u16) -> Vec<u8> {
    let mut t = f[..12].to_vec();
    t.extend_from_slice(&0x8100u16.to_be_bytes());
    t.extend_from_slice(&tci.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

fn vlan_drops(c: &mut tests::QmpClient, port: &str) -> u64 {
    port_stats(c, port)["drops"]["vlan"]
        .as_u64()
        .unwrap_or_else(|| panic!("a vlan drop count for {port}"))
}

fn hubport(id: &str, extra: &str) -> String {
    format!("hubport,id=hp-{id},hubid=0,netdev={id}{extra}")
}

#[test]
fn access_and_trunk_ports_push_and_pop_tags_byte_for_byte() {
    let mut ends: Vec<UdpEnd> = (0..5).map(|_| UdpEnd::new()).collect();
    let dir = TempDir::new();
    let names = ["a", "b", "c", "t", "d"];
    let extras = [
        ",x-vlan=10",
        ",x-vlan=10",
        ",x-vlan=20",
        ",x-trunks=10:20",
        "",
    ];
    let mut args = Args::new();
    for ((n, e), end) in names.iter().zip(extras).zip(ends.iter_mut()) {
        args = args.netdev(&udp_spec(n, end)).netdev(&hubport(n, e));
    }
    let (d, mut c) = args.start_with_qmp(&dir);
    let [a, b, cc, t, dd] = &ends[..] else {
        unreachable!()
    };

    // Untagged from an access port: as it is to its VLAN's access port, tagged to the
    // trunk and to the port without settings, not at all to the other VLAN.
    let f = frame(BCAST, mac(0xa), ETH_EXP, 60, 1);
    a.send(&f);
    expect_frame(b, &f, "a → b (both access 10), untouched");
    expect_frame(t, &tagged(&f, 10), "a → trunk, tag 10 pushed");
    expect_frame(
        dd,
        &tagged(&f, 10),
        "a → d (every VLAN tagged), tag 10 pushed",
    );
    expect_nothing(cc, "c (access 20): a frame of VLAN 10");

    // Tagged from the trunk: popped for VLAN 20's access port; the PCP and DEI bits the
    // frame came with stay on the tagged copies.
    let g = frame(BCAST, mac(0x7), ETH_EXP, 1000, 2);
    let g20 = tagged(&g, 0xb000 | 20);
    t.send(&g20);
    expect_frame(cc, &g, "trunk → c, tag 20 popped");
    expect_frame(dd, &g20, "trunk → d, tag 20 with its PCP kept");
    expect_nothing(a, "a (access 10): a frame of VLAN 20");
    expect_nothing(b, "b (access 10): a frame of VLAN 20");

    // Refused: tagged into an access port, untagged into a trunk without a native VLAN,
    // tagged with a VLAN the trunk does not carry. Each counted at its port.
    let before = (vlan_drops(&mut c, "a"), vlan_drops(&mut c, "t"));
    a.send(&tagged(&frame(BCAST, mac(0xa), ETH_EXP, 60, 3), 10));
    t.send(&frame(BCAST, mac(0x7), ETH_EXP, 60, 4));
    t.send(&tagged(&frame(BCAST, mac(0x7), ETH_EXP, 60, 5), 30));
    for (e, n) in [(b, "b"), (cc, "c"), (dd, "d"), (t, "t"), (a, "a")] {
        expect_nothing(e, &format!("{n}: a refused frame"));
    }
    assert_eq!(vlan_drops(&mut c, "a"), before.0 + 1);
    assert_eq!(vlan_drops(&mut c, "t"), before.1 + 2);

    // 802.1ad (0x88a8) outer tags are not VLAN tags here: such a frame is its access
    // port's VLAN's, passed through, and a trunk gets the 802.1Q tag outside it.
    let qinq = frame(BCAST, mac(0xa), 0x88a8, 80, 6);
    a.send(&qinq);
    expect_frame(b, &qinq, "802.1ad frame a → b, untouched");
    expect_frame(
        t,
        &tagged(&qinq, 10),
        "802.1ad frame a → trunk, 802.1Q tag outside",
    );
    let _ = dd.drain(QUIET);

    // A port without settings sends tagged frames into their VLANs, untagged ones
    // into VLAN 0 (which only such ports carry).
    let h = frame(BCAST, mac(0xd), ETH_EXP, 64, 7);
    dd.send(&tagged(&h, 20));
    expect_frame(cc, &h, "d's VLAN-20 frame → c, popped");
    expect_frame(t, &tagged(&h, 20), "d's VLAN-20 frame → trunk, tagged");
    dd.send(&h);
    for (e, n) in [(a, "a"), (b, "b"), (cc, "c"), (t, "t")] {
        expect_nothing(e, &format!("{n}: d's untagged (VLAN 0) frame"));
    }

    // Moved to VLAN 10 while running: c now gets a's frames, untagged.
    c.execute_ok("x-set-vlan", json!({"name": "hp-c", "vlan": 10}));
    let k = frame(BCAST, mac(0xa), ETH_EXP, 60, 8);
    a.send(&k);
    expect_frame(cc, &k, "a → c after c moved to VLAN 10");
    expect_frame(b, &k, "a → b");
    let _ = (t.drain(QUIET), dd.drain(QUIET));
    let e = c.execute("x-set-vlan", json!({"name": "hp-c", "trunks": "10:5000"}));
    assert!(e["error"]["desc"].as_str().unwrap().contains("5000"), "{e}");
    let e = c.execute("x-set-vlan", json!({"name": "c", "vlan": 10}));
    assert!(
        e["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("not a hubport"),
        "{e}"
    );
    drop(c);
    d.stop_clean();
}

#[test]
fn a_learning_hub_keys_its_table_by_vlan_and_mac() {
    let (mut a, mut t, mut x) = (UdpEnd::new(), UdpEnd::new(), UdpEnd::new());
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .netdev(&udp_spec("a", &mut a))
        .netdev(&hubport("a", ",x-learning=on,x-vlan=10"))
        .netdev(&udp_spec("t", &mut t))
        .netdev(&hubport("t", ",x-trunks=10:20"))
        .netdev(&udp_spec("x", &mut x))
        .netdev(&hubport("x", ",x-vlan=20"))
        .start_with_qmp(&dir);
    let m = mac(0x42);
    // The same address speaks on VLAN 10 (through a) and on VLAN 20 (through the trunk).
    a.send(&frame(BCAST, m, ETH_EXP, 60, 1));
    expect_frame(
        &t,
        &tagged(&frame(BCAST, m, ETH_EXP, 60, 1), 10),
        "a → trunk",
    );
    t.send(&tagged(&frame(BCAST, m, ETH_EXP, 60, 2), 20));
    expect_frame(&x, &frame(BCAST, m, ETH_EXP, 60, 2), "trunk → x");
    let r = c.execute_ok("x-query-fdb", json!({"hubid": 0}));
    let mut e: Vec<(u64, String)> = r[0]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| {
            (
                e["vlan"].as_u64().unwrap(),
                e["port"].as_str().unwrap().into(),
            )
        })
        .collect();
    e.sort();
    assert_eq!(e, vec![(10, "a".into()), (20, "t".into())], "{r}");
    assert_eq!(r[0]["moves"], 0, "not a move: two VLANs");
    // Unicast to it on VLAN 20 goes to the trunk only, tagged; on VLAN 10 to a only.
    let u = frame(m, mac(0x9), ETH_EXP, 60, 3);
    x.send(&u);
    expect_frame(
        &t,
        &tagged(&u, 20),
        "x → the address on VLAN 20, at the trunk",
    );
    expect_nothing(&a, "a: VLAN 20's unicast");
    let v = frame(m, mac(0x8), ETH_EXP, 60, 4);
    t.send(&tagged(&v, 10));
    expect_frame(&a, &v, "trunk's VLAN-10 unicast → a, popped");
    expect_nothing(&x, "x: VLAN 10's unicast");
    drop(c);
    d.stop_clean();
}

/// A tap on hub 0 for each `(id, hubport settings, address)` (address `""`: none),
/// each moved into a namespace of its own, added to `args`: the daemon, its QMP client,
/// the namespaces and the taps' names.
fn kernel_hosts(
    args: Args,
    hosts: &[(&str, &str, &str)],
    dir: &TempDir,
) -> (tests::Daemon, tests::QmpClient, Vec<Netns>, Vec<String>) {
    let taps: Vec<String> = hosts
        .iter()
        .map(|(id, _, _)| unique(&format!("v{id}")))
        .collect();
    let mut args = args;
    for (tap, (id, e, _)) in taps.iter().zip(hosts) {
        args = args
            .netdev(&format!("tap,id={id},ifname={tap},script=no,downscript=no"))
            .netdev(&hubport(id, e));
    }
    let (d, c) = args.start_with_qmp(dir);
    let ns: Vec<Netns> = taps.iter().map(|_| Netns::new()).collect();
    for ((tap, n), (_, _, cidr)) in taps.iter().zip(&ns).zip(hosts) {
        move_link_into(tap, n, cidr);
    }
    (d, c, ns, taps)
}

/// An ARP request (Ethernet/IPv4) from `mac`/`ip` for `target`, tagged with `vid`.
fn tagged_arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4], vid: u16) -> Vec<u8> {
    let mut f = frame(BCAST, mac, 0x0806, 14, 0);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    tagged(&f, vid)
}

#[test]
fn kernel_hosts_on_access_ports_talk_within_their_vlan_and_the_trunk_sees_tags() {
    require_tool("busybox");
    let dir = TempDir::new();
    // The trunk is a UDP end, so the test sees the tags exactly as the switch wrote them
    // (a packet socket on a tap would get them stripped into metadata by the kernel).
    let mut t = UdpEnd::new();
    let args = Args::new()
        .netdev(&udp_spec("t", &mut t))
        .netdev(&hubport("t", ",x-trunks=10:20"));
    let (d, mut c, ns, _taps) = kernel_hosts(
        args,
        // n4 is in VLAN 20 with an address of VLAN 10's subnet: only a leak reaches it.
        &[
            ("n2", ",x-vlan=10", "10.77.10.2/24"),
            ("n3", ",x-vlan=10", "10.77.10.3/24"),
            ("n4", ",x-vlan=20", "10.77.10.4/24"),
        ],
        &dir,
    );
    ping(&ns[0], "10.77.10.3", 5, 1400);
    let (got, text) = ping_replies(&ns[0], "10.77.10.4", 2, 56, 2);
    assert_eq!(got, 0, "VLAN 10 reached a host of VLAN 20: {text}");
    // The trunk saw the kernel's ARP requests, each tagged with its sender's VLAN.
    let is_arp_from = |f: &[u8], ip: [u8; 4], vid: u8| {
        f.len() >= 46
            && f[12..16] == [0x81, 0x00, 0x00, vid]
            && f[16..18] == [0x08, 0x06]
            && f[18 + 14..18 + 18] == ip
    };
    let seen = t.drain(QUIET);
    assert!(
        seen.iter().any(|f| is_arp_from(f, [10, 77, 10, 2], 10)),
        "n2's ARP tagged 10 at the trunk: {} frames",
        seen.len()
    );
    // n4 asks too: its ARP goes out in VLAN 20.
    let (got, _) = ping_replies(&ns[2], "10.77.10.2", 1, 56, 1);
    assert_eq!(got, 0, "VLAN 20 reached a host of VLAN 10");
    let seen = t.drain(QUIET);
    assert!(
        seen.iter().any(|f| is_arp_from(f, [10, 77, 10, 4], 20)),
        "n4's ARP tagged 20 at the trunk: {} frames",
        seen.len()
    );
    // A tagged request from the trunk reaches VLAN 10's kernels popped, and n3's answer
    // comes back tagged.
    let me = mac(0x77);
    t.send(&tagged_arp_request(
        me,
        [10, 77, 10, 9],
        [10, 77, 10, 3],
        10,
    ));
    let reply = t
        .drain(QUIET)
        .into_iter()
        .find(|f| f.len() >= 46 && f[..6] == me)
        .expect("n3's ARP reply at the trunk");
    assert!(is_arp_from(&reply, [10, 77, 10, 3], 10), "{reply:02x?}");
    assert_eq!(vlan_drops(&mut c, "t"), 0);
    drop(c);
    d.stop_clean();
}

/// `ifname` in `ns` gets VLAN sub-interface `ifname.VID` with address `cidr`.
fn sub_interface(ns: &Netns, ifname: &str, vid: u16, cidr: &str) {
    let sub = format!("{ifname}.{vid}");
    ns.exec_ok(&[
        "ip",
        "link",
        "add",
        "link",
        ifname,
        "name",
        &sub,
        "type",
        "vlan",
        "id",
        &vid.to_string(),
    ]);
    ns.exec_ok(&["ip", "addr", "add", cidr, "dev", &sub]);
    ns.exec_ok(&["ip", "link", "set", &sub, "up"]);
}

// Needs a kernel with 802.1Q VLAN devices (CONFIG_VLAN_8021Q): these machines' kernel
// answers `ip link add ... type vlan` with "Unknown device type" (and bridge
// vlan_filtering with EOPNOTSUPP), so CI cannot run it. Run it with `--ignored` on such
// a host.
#[test]
#[ignore = "needs kernel 802.1Q VLAN devices (CONFIG_VLAN_8021Q), absent on these machines"]
fn linux_vlan_sub_interfaces_reach_access_ports_and_vlans_stay_apart() {
    require_tool("busybox");
    let dir = TempDir::new();
    let (d, mut c, ns, taps) = kernel_hosts(
        Args::new(),
        &[
            ("n1", ",x-trunks=10:20", ""),
            ("n2", ",x-vlan=10", "10.77.10.2/24"),
            ("n3", ",x-vlan=20", "10.77.20.2/24"),
            ("n4", ",x-vlan=20", "10.77.10.4/24"),
        ],
        &dir,
    );
    sub_interface(&ns[0], &taps[0], 10, "10.77.10.1/24");
    sub_interface(&ns[0], &taps[0], 20, "10.77.20.1/24");
    ping(&ns[0], "10.77.10.2", 5, 56);
    ping(&ns[0], "10.77.20.2", 5, 56);
    ping(&ns[1], "10.77.10.1", 3, 1400);
    ping(&ns[2], "10.77.20.1", 3, 1400);
    let (got, text) = ping_replies(&ns[1], "10.77.10.4", 3, 56, 2);
    assert_eq!(got, 0, "VLAN 10 reached a host of VLAN 20: {text}");
    assert_eq!(vlan_drops(&mut c, "n1"), 0);
    drop(c);
    d.stop_clean();
}

#[test]
fn a_nics_vlan_table_is_enforced_on_delivery() {
    let mut t = UdpEnd::new();
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .netdev(&udp_spec("t", &mut t))
        .netdev(&hubport("t", ",x-trunks=10:20"))
        .netdev("hubport,id=hp-n,hubid=0")
        .netdev("nic,id=n,netdev=hp-n,macaddr=52:54:00:12:34:56")
        .start_with_qmp(&dir);
    c.execute_ok(
        "x-set-rx-filter",
        // Out of promiscuous mode: as in virtio-net, a promiscuous NIC takes every VLAN.
        json!({"name": "n", "promiscuous": false, "vlan": "normal", "vlan-table": [10]}),
    );
    let r = c.execute_ok("query-rx-filter", json!({"name": "n"}));
    assert_eq!(r[0]["vlan-table"], json!([10]), "{r}");
    let counts = |c: &mut tests::QmpClient| {
        let st = port_stats(c, "n");
        (
            st["tx-packets"].as_u64().unwrap(),
            st["drops"]["filtered"].as_u64().unwrap(),
        )
    };
    let (tx0, filtered0) = counts(&mut c);
    // The NIC carries every VLAN tagged (its hubport has no settings); its guest's
    // filter takes VLAN 10 only.
    t.send(&tagged(&frame(BCAST, mac(1), ETH_EXP, 60, 1), 10));
    t.send(&tagged(&frame(BCAST, mac(1), ETH_EXP, 60, 2), 20));
    let arrived = tests::wait_until(std::time::Duration::from_secs(5), || {
        counts(&mut c) == (tx0 + 1, filtered0 + 1)
    });
    assert!(
        arrived,
        "VLAN 10 delivered, VLAN 20 filtered: {:?}",
        counts(&mut c)
    );
    drop(c);
    d.stop_clean();
}
