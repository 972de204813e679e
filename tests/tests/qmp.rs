//! QMP conformance: the daemon driven over a real unix socket, command by command, with
//! QEMU's texts and classes, events, descriptor passing, and several clients at once.

mod common;

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::fd_count;
use serde_json::{json, Value};
use tests::{frame, wait_until, Daemon, QmpClient, TempDir, UdpEnd};

struct Sut {
    d: Daemon,
    sock: PathBuf,
    _dir: TempDir,
}

fn start(extra: &[&str]) -> Sut {
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let spec = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec![
        "-cores",
        "0",
        "-poll-us",
        "0",
        "-pool-size",
        "2048",
        "-qmp",
        spec.as_str(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::start(&args);
    Sut { d, sock, _dir: dir }
}

impl Sut {
    fn client(&self) -> QmpClient {
        QmpClient::connect_unix_negotiated(&self.sock).expect("connect to QMP")
    }
}

fn err(r: &Value) -> (String, String) {
    let e = r
        .get("error")
        .unwrap_or_else(|| panic!("expected an error, got {r}"));
    (
        e["class"].as_str().unwrap_or_default().to_string(),
        e["desc"].as_str().unwrap_or_default().to_string(),
    )
}

fn generic(r: &Value, desc: &str) {
    assert_eq!(
        err(r),
        ("GenericError".to_string(), desc.to_string()),
        "{r}"
    );
}

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0xa];
const BCAST: [u8; 6] = [0xff; 6];

/// A UDP socket port `id` on hub `hub`, wired to a fresh local UdpEnd.
fn udp_port(c: &mut QmpClient, id: &str, hub: i32) -> UdpEnd {
    let mut end = UdpEnd::new();
    let local = tests::free_udp_port();
    c.execute_ok(
        "netdev_add",
        json!({"type": "socket", "id": id, "udp": end.local_addr().to_string(),
               "localaddr": format!("127.0.0.1:{local}")}),
    );
    c.execute_ok(
        "netdev_add",
        json!({"type": "hubport", "id": format!("h{id}"), "hubid": hub, "netdev": id}),
    );
    end.set_target(format!("127.0.0.1:{local}").parse().unwrap());
    end
}

/// A NIC `id` with address `mac`, peered with a new hubport `hp` on hub `hub`.
fn nic_on_hub(c: &mut QmpClient, id: &str, hp: &str, hub: i32, mac: &str) {
    c.execute_ok(
        "netdev_add",
        json!({"id": hp, "type": "hubport", "hubid": hub}),
    );
    c.execute_ok(
        "netdev_add",
        json!({"id": id, "type": "nic", "netdev": hp, "macaddr": mac}),
    );
}

fn stats(c: &mut QmpClient) -> Value {
    c.execute_ok("x-query-stats", Value::Null)
}

fn port_stat(c: &mut QmpClient, name: &str) -> Value {
    let s = stats(c);
    s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {s}"))
        .clone()
}

#[test]
fn greeting_negotiation_and_request_checks() {
    let sut = start(&[]);
    let mode = std::fs::metadata(&sut.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "QMP socket must be private");
    let mut c = QmpClient::connect_unix(&sut.sock).unwrap();
    let v = &c.greeting["QMP"]["version"];
    for k in ["major", "minor", "micro"] {
        assert!(
            v["qemu"][k].is_u64(),
            "greeting lacks version.qemu.{k}: {}",
            c.greeting
        );
    }
    assert!(v["package"].as_str().unwrap().starts_with("pollswitch "));
    assert!(c.greeting["QMP"]["capabilities"].is_array());
    let r = c.execute("query-version", Value::Null);
    assert_eq!(
        err(&r),
        (
            "CommandNotFound".into(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".into()
        )
    );
    c.negotiate();
    let r = c.execute("qmp_capabilities", Value::Null);
    assert_eq!(
        err(&r),
        (
            "CommandNotFound".into(),
            "Capabilities negotiation is already complete, command ignored".into()
        )
    );
    // id of any JSON type comes back unchanged, on success and on error.
    for id in [
        json!(1),
        json!("x"),
        json!({"a": [1, 2]}),
        json!([null, true]),
        json!(2.5),
    ] {
        c.send_line(&json!({"execute": "query-version", "id": id}).to_string());
        let r = c.reply();
        assert_eq!(r["id"], id);
        assert!(r["return"]["qemu"].is_object());
        c.send_line(&json!({"execute": "nope", "id": id}).to_string());
        let r = c.reply();
        assert_eq!(r["id"], id);
        assert_eq!(err(&r).0, "CommandNotFound");
    }
    let cases = [
        ("foo", "JSON parse error, invalid keyword 'foo'"),
        ("[1, 2]", "QMP input must be a JSON object"),
        ("{\"arguments\": {}}", "QMP input lacks member 'execute'"),
        (
            "{\"execute\": 1}",
            "QMP input member 'execute' must be a string",
        ),
        (
            "{\"execute\": \"query-version\", \"arguments\": 3}",
            "QMP input member 'arguments' must be an object",
        ),
        (
            "{\"execute\": \"query-version\", \"bogus\": 1}",
            "QMP input member 'bogus' is unexpected",
        ),
        (
            "{\"execute\": \"query-version\", \"arguments\": {\"x\": 1}}",
            "Parameter 'x' is unexpected",
        ),
    ];
    for (raw, desc) in cases {
        c.send_line(raw);
        generic(&c.reply(), desc);
    }
    let r = c.execute("no-such-command", Value::Null);
    assert_eq!(
        err(&r),
        (
            "CommandNotFound".into(),
            "The command no-such-command has not been found".into()
        )
    );
    // query-commands lists every net.json command we implement.
    let cmds = c.execute_ok("query-commands", Value::Null);
    let names: Vec<&str> = cmds
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    for n in [
        "netdev_add",
        "netdev_del",
        "set_link",
        "query-netdev",
        "query-rx-filter",
        "announce-self",
        "getfd",
        "closefd",
        "human-monitor-command",
        "x-query-stats",
        "quit",
    ] {
        assert!(names.contains(&n), "query-commands lacks {n}");
    }
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn netdev_add_checks_like_qemu() {
    let sut = start(&[]);
    let mut c = sut.client();
    let cases = [
        (
            json!({"type": "hubport", "hubid": 0}),
            "Parameter 'id' is missing",
        ),
        (json!({"id": "h"}), "Parameter 'type' is missing"),
        (
            json!({"id": "h", "type": "hubport"}),
            "Parameter 'hubid' is missing",
        ),
        (
            json!({"id": "h", "type": "hubport", "hubid": 0, "bogus": 1}),
            "Parameter 'bogus' is unexpected",
        ),
        (
            json!({"id": "h", "type": "hubport", "hubid": "0"}),
            "Invalid parameter type for 'hubid', expected: integer",
        ),
        (
            json!({"id": "h", "type": "bogus"}),
            "Parameter 'type' does not accept value 'bogus'",
        ),
        (
            json!({"id": "1h", "type": "hubport", "hubid": 0}),
            "Parameter 'id' expects an identifier",
        ),
        (
            json!({"id": "h", "type": "hubport", "hubid": 0, "netdev": "nope"}),
            "netdev 'nope' not found",
        ),
        (
            json!({"id": "t", "type": "tap", "queues": 4294967296u64}),
            "Parameter 'queues' expects uint32_t",
        ),
    ];
    for (args, desc) in cases {
        generic(&c.execute("netdev_add", args.clone()), desc);
    }
    c.execute_ok(
        "netdev_add",
        json!({"id": "h0", "type": "hubport", "hubid": 0}),
    );
    generic(
        &c.execute(
            "netdev_add",
            json!({"id": "h0", "type": "hubport", "hubid": 1}),
        ),
        "Duplicate ID 'h0'",
    );
    // A hubport whose netdev already has a peer: QEMU aborts here; we refuse.
    let _u = udp_port(&mut c, "s0", 0);
    let (class, desc) = err(&c.execute(
        "netdev_add",
        json!({"id": "hx", "type": "hubport", "hubid": 0, "netdev": "s0"}),
    ));
    assert_eq!(class, "GenericError");
    assert!(desc.contains("s0") && desc.contains("in use"), "{desc}");
    // Types this host cannot run, or that lack what they name, say why (bridge, user and
    // vhost-user are built: tests/tests/bridge.rs, user.rs and vhost_user.rs test them).
    for ty in ["netmap", "vhost-user", "vhost-vdpa"] {
        let mut a = json!({"id": "x", "type": ty});
        match ty {
            "netmap" => a["ifname"] = json!("vale0:1"),
            "vhost-user" => a["chardev"] = json!("c0"),
            _ => {}
        }
        let (class, desc) = err(&c.execute("netdev_add", a));
        assert_eq!(class, "GenericError");
        if ty == "netmap" {
            // netmap is built: it fails opening the device, naming it.
            if !std::path::Path::new("/dev/netmap").exists() {
                assert!(
                    desc.contains(
                        "netmap: /dev/netmap not found (is the netmap kernel module loaded?)"
                    ),
                    "{ty}: {desc}"
                );
            }
            continue;
        }
        let why = match ty {
            "vhost-user" => "chardev \"c0\" not found",
            _ => "vhost-vdpa: /dev/vhost-vdpa-0 does not exist",
        };
        assert!(desc.contains(why), "{ty}: {desc}");
    }
    let (_, desc) = err(&c.execute(
        "netdev_add",
        json!({"id": "t", "type": "tap", "vhost": true}),
    ));
    assert!(desc.contains("vhost"), "{desc}");
    generic(
        &c.execute("netdev_add", json!({"id": "n", "type": "none"})),
        "network backend 'none' is not compiled into this binary",
    );
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn netdev_del_set_link_and_counters() {
    let sut = start(&[]);
    let mut c = sut.client();
    let a = udp_port(&mut c, "a", 0);
    let b = udp_port(&mut c, "b", 0);
    let f = frame(BCAST, MAC_A, 0x0800, 60, 1);
    a.send(&f);
    assert_eq!(b.recv_timeout(Duration::from_secs(5)), Some(f.clone()));
    // Link down: frames from and to the port are dropped and counted.
    c.execute_ok("set_link", json!({"name": "b", "up": false}));
    a.send(&f);
    b.send(&f);
    assert!(wait_until(Duration::from_secs(5), || port_stat(
        &mut c, "b"
    )["drops"]["link-down"]
        == 2));
    assert_eq!(b.recv_timeout(Duration::from_millis(200)), None);
    assert_eq!(a.recv_timeout(Duration::from_millis(100)), None);
    c.execute_ok("set_link", json!({"name": "b", "up": true}));
    a.send(&f);
    assert_eq!(b.recv_timeout(Duration::from_secs(5)), Some(f.clone()));
    let (class, desc) = err(&c.execute("set_link", json!({"name": "zz", "up": true})));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("DeviceNotFound", "Device 'zz' not found")
    );
    generic(
        &c.execute("set_link", json!({"name": "b", "up": "yes"})),
        "Invalid parameter type for 'up', expected: boolean",
    );
    let st = port_stat(&mut c, "a");
    assert!(st["rx-packets"].as_u64().unwrap() >= 3, "{st}");
    let st = port_stat(&mut c, "b");
    assert!(
        st["rx-packets"].as_u64().unwrap() >= 1 && st["tx-packets"].as_u64().unwrap() >= 2,
        "{st}"
    );
    // netdev_del: unknown id, then a real one while the other port still works.
    let (class, desc) = err(&c.execute("netdev_del", json!({"id": "nope"})));
    assert_eq!(
        (class.as_str(), desc.as_str()),
        ("DeviceNotFound", "Device 'nope' not found")
    );
    c.execute_ok("netdev_del", json!({"id": "hb"}));
    c.execute_ok("netdev_del", json!({"id": "b"}));
    let ids: Vec<Value> = c
        .execute_ok("query-netdev", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!("a")]);
    generic(
        &c.execute("netdev_del", json!({})),
        "Parameter 'id' is missing",
    );
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn query_netdev_output_recreates_the_netdev() {
    let sut = start(&[]);
    let mut c = sut.client();
    let _a = udp_port(&mut c, "a", 3);
    let port = tests::free_tcp_port();
    c.execute_ok(
        "netdev_add",
        json!({"id": "l0", "type": "socket", "listen": format!("127.0.0.1:{port}")}),
    );
    let before = c.execute_ok("query-netdev", Value::Null);
    let list = before.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{before}");
    let a = list.iter().find(|n| n["id"] == "a").unwrap();
    assert_eq!(a["type"], "socket");
    assert_eq!(a["peer-id"], "ha");
    assert!(list
        .iter()
        .find(|n| n["id"] == "l0")
        .unwrap()
        .get("peer-id")
        .is_none());
    c.execute_ok("netdev_del", json!({"id": "ha"}));
    for n in &list {
        let id = n["id"].as_str().unwrap();
        c.execute_ok("netdev_del", json!({"id": id}));
        let mut args = n.as_object().unwrap().clone();
        args.remove("peer-id");
        c.execute_ok("netdev_add", Value::Object(args));
    }
    c.execute_ok(
        "netdev_add",
        json!({"id": "ha", "type": "hubport", "hubid": 3, "netdev": "a"}),
    );
    let after = c.execute_ok("query-netdev", Value::Null);
    let mut b: Vec<Value> = before.as_array().unwrap().clone();
    let mut a: Vec<Value> = after.as_array().unwrap().clone();
    b.sort_by_key(|v| v["id"].to_string());
    a.sort_by_key(|v| v["id"].to_string());
    assert_eq!(a, b);
    let info = c.execute_ok(
        "human-monitor-command",
        json!({"command-line": "info network"}),
    );
    let info = info.as_str().unwrap();
    assert!(
        info.contains("hub 3\r\n \\ ha: a: index=0,type=socket,"),
        "{info}"
    );
    assert!(
        info.contains("l0: index=0,type=socket,listen=127.0.0.1:"),
        "{info}"
    );
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn nic_rx_filter_query_and_event() {
    let sut = start(&[]);
    let mut c = sut.client();
    let s = udp_port(&mut c, "s", 0);
    nic_on_hub(&mut c, "n0", "hn", 0, "52:54:00:00:00:0a");
    generic(
        &c.execute("query-rx-filter", json!({"name": "s"})),
        "net client(s) isn't a NIC",
    );
    generic(
        &c.execute("query-rx-filter", json!({"name": "nosuch"})),
        "invalid net client name: nosuch",
    );
    let r = c.execute_ok("query-rx-filter", json!({"name": "n0"}));
    let f = &r[0];
    assert_eq!(f["name"], "n0");
    assert_eq!(f["main-mac"], "52:54:00:00:00:0a");
    for k in [
        "promiscuous",
        "multicast",
        "unicast",
        "vlan",
        "broadcast-allowed",
        "multicast-overflow",
        "unicast-overflow",
        "vlan-table",
        "unicast-table",
        "multicast-table",
    ] {
        assert!(f.get(k).is_some(), "RxFilterInfo lacks {k}: {f}");
    }
    // Promiscuous: every frame is delivered (counted as tx towards the application).
    s.send(&frame([2, 0, 0, 0, 0, 9], MAC_A, 0x0800, 60, 1));
    assert!(wait_until(Duration::from_secs(5), || port_stat(
        &mut c, "n0"
    )["tx-packets"]
        == 1));
    // The filter changes: one event, then none until query-rx-filter re-arms it.
    c.take_events();
    c.execute_ok(
        "x-set-rx-filter",
        json!({"name": "n0", "promiscuous": false}),
    );
    c.execute_ok(
        "x-set-rx-filter",
        json!({"name": "n0", "broadcast-allowed": false}),
    );
    let ev = c
        .next_event(Duration::from_secs(2))
        .expect("NIC_RX_FILTER_CHANGED");
    assert_eq!(ev["event"], "NIC_RX_FILTER_CHANGED");
    assert_eq!(ev["data"]["name"], "n0");
    assert!(ev["data"]["path"].is_string());
    assert!(ev["timestamp"]["seconds"].is_u64() && ev["timestamp"]["microseconds"].is_u64());
    assert!(
        c.next_event(Duration::from_millis(300)).is_none(),
        "only one event until queried"
    );
    c.execute_ok("query-rx-filter", Value::Null);
    c.execute_ok("x-set-rx-filter", json!({"name": "n0", "multicast": "all"}));
    assert!(
        c.next_event(Duration::from_secs(2)).is_some(),
        "re-armed by query-rx-filter"
    );
    // Filtering: to our MAC passes, to another unicast MAC and broadcast do not.
    s.send(&frame([0x52, 0x54, 0, 0, 0, 0xa], MAC_A, 0x0800, 60, 2));
    s.send(&frame([2, 0, 0, 0, 0, 9], MAC_A, 0x0800, 60, 3));
    s.send(&frame(BCAST, MAC_A, 0x0800, 60, 4));
    assert!(wait_until(Duration::from_secs(5), || {
        let p = port_stat(&mut c, "n0");
        p["tx-packets"] == 2 && p["drops"]["filtered"] == 2
    }));
    let r = c.execute_ok("query-rx-filter", json!({"name": "n0"}));
    assert_eq!(r[0]["promiscuous"], false);
    assert_eq!(r[0]["multicast"], "all");
    generic(
        &c.execute("x-set-rx-filter", json!({"name": "n0", "unicast": "some"})),
        "Parameter 'unicast' does not accept value 'some'",
    );
    // set_link on the NIC's backend peer also takes the NIC down (QEMU's rule).
    c.execute_ok("set_link", json!({"name": "hn", "up": false}));
    let p = port_stat(&mut c, "n0");
    assert_eq!(p["link-up"], false, "{p}");
    drop(c);
    sut.d.stop_clean();
}

/// Reads RARP frames arriving at `end` for `within`, with their arrival times.
fn rarps(end: &UdpEnd, within: Duration) -> Vec<(Duration, Vec<u8>)> {
    let t0 = Instant::now();
    let mut out = Vec::new();
    while t0.elapsed() < within {
        if let Some(f) = end.recv_timeout(Duration::from_millis(20)) {
            if f.len() >= 14 && f[12..14] == [0x80, 0x35] {
                out.push((t0.elapsed(), f));
            }
        }
    }
    out
}

#[test]
fn announce_self_sends_qemu_rarp_on_schedule_and_ids_replace() {
    let sut = start(&[]);
    let mut c = sut.client();
    let s = udp_port(&mut c, "s", 0);
    nic_on_hub(&mut c, "n0", "hn", 0, "52:54:00:12:34:56");
    nic_on_hub(&mut c, "n1", "hm", 0, "52:54:00:12:34:57");
    let t0 = Instant::now();
    c.execute_ok(
        "announce-self",
        json!({"initial": 50, "max": 550, "rounds": 3, "step": 50, "interfaces": ["n0"]}),
    );
    let got = rarps(&s, Duration::from_millis(600));
    let _ = t0;
    assert_eq!(
        got.len(),
        3,
        "three rounds for n0 only: {:?}",
        got.iter().map(|g| g.0).collect::<Vec<_>>()
    );
    let mut expect = vec![0xffu8; 6];
    expect.extend_from_slice(&[
        0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x80, 0x35, 0, 1, 8, 0, 6, 4, 0, 3,
    ]);
    expect.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0, 0, 0]);
    expect.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0, 0, 0, 0]);
    expect.resize(60, 0);
    for (_, f) in &got {
        assert_eq!(f, &expect, "QEMU's 60-byte RARP");
    }
    // Gaps of initial (50) then initial+step (100) ms, with slack for a loaded host.
    let gap1 = got[1].0 - got[0].0;
    let gap2 = got[2].0 - got[1].0;
    assert!(
        gap1 >= Duration::from_millis(40) && gap1 < Duration::from_millis(150),
        "{gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(90) && gap2 < Duration::from_millis(200),
        "{gap2:?}"
    );
    // A second call with the same id replaces the running timer.
    c.execute_ok(
        "announce-self",
        json!({"initial": 300, "max": 300, "rounds": 10, "step": 0, "id": "t1"}),
    );
    c.execute_ok(
        "announce-self",
        json!({"initial": 0, "max": 0, "rounds": 1, "step": 0, "id": "t1"}),
    );
    let got = rarps(&s, Duration::from_millis(900));
    // Two NICs: one round from the first call and one from the second, nothing after.
    assert_eq!(
        got.len(),
        4,
        "{:?}",
        got.iter().map(|g| g.0).collect::<Vec<_>>()
    );
    assert!(stats(&mut c)["announce-timers"]
        .as_array()
        .unwrap()
        .is_empty());
    generic(
        &c.execute(
            "announce-self",
            json!({"initial": 0, "max": 0, "rounds": 1}),
        ),
        "Parameter 'step' is missing",
    );
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn getfd_passes_a_socket_for_netdev_add() {
    let sut = start(&[]);
    let mut c = sut.client();
    let b = udp_port(&mut c, "b", 0);
    // A connected UDP socket pair: one end goes to the daemon as socket fd=NAME.
    let ours = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let theirs = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    ours.connect(theirs.local_addr().unwrap()).unwrap();
    theirs.connect(ours.local_addr().unwrap()).unwrap();
    generic(
        &c.execute("getfd", json!({"fdname": "f1"})),
        "No file descriptor supplied via SCM_RIGHTS",
    );
    let raw = UnixStream::connect(&sut.sock).unwrap();
    let mut r = std::io::BufReader::new(raw.try_clone().unwrap());
    let mut line = String::new();
    use std::io::BufRead;
    r.read_line(&mut line).unwrap();
    ctl::qmp::scm::send_with_fds(raw.as_fd(), b"{\"execute\":\"qmp_capabilities\"}\n", &[])
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    ctl::qmp::scm::send_with_fds(
        raw.as_fd(),
        b"{\"execute\":\"getfd\",\"arguments\":{\"fdname\":\"f1\"}}\n",
        &[theirs.as_fd()],
    )
    .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "{\"return\":{}}");
    drop(theirs);
    let mut send = |cmd: &str| {
        ctl::qmp::scm::send_with_fds(raw.as_fd(), format!("{cmd}\n").as_bytes(), &[]).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    };
    assert_eq!(
        send(r#"{"execute":"netdev_add","arguments":{"type":"socket","id":"fdp","fd":"f1"}}"#),
        "{\"return\":{}}"
    );
    assert_eq!(
        send(
            r#"{"execute":"netdev_add","arguments":{"type":"hubport","id":"hf","hubid":0,"netdev":"fdp"}}"#
        ),
        "{\"return\":{}}"
    );
    assert!(send(r#"{"execute":"closefd","arguments":{"fdname":"f1"}}"#)
        .contains("File descriptor named 'f1' not found"));
    let f = frame(BCAST, MAC_A, 0x0800, 100, 7);
    ours.send(&f).unwrap();
    assert_eq!(b.recv_timeout(Duration::from_secs(5)), Some(f.clone()));
    b.send(&f);
    ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let n = ours.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &f[..]);
    assert!(send(r#"{"execute":"getfd","arguments":{"fdname":"9x"}}"#)
        .contains("expects a name not starting with a digit"));
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn many_clients_events_and_misbehaving_clients() {
    let sut = start(&[]);
    let mut a = sut.client();
    let mut b = sut.client();
    let pa = udp_port(&mut a, "pa", 0);
    let pb = udp_port(&mut a, "pb", 0);
    use std::io::Write;
    // Deeply nested garbage is a parse error, not a crash ...
    let mut deep = QmpClient::connect_unix(&sut.sock).unwrap();
    deep.send_line(&"[".repeat(100_000));
    assert_eq!(err(&deep.reply()).0, "GenericError");
    // ... a client that sends a request that never ends gets one error at the cap (QEMU's
    // text) and is served again once the token ends ...
    let mut bad = UnixStream::connect(&sut.sock).unwrap();
    let mut junk = b"{\"execute\": \"".to_vec();
    junk.resize(2 << 20, b'a');
    bad.write_all(&junk).unwrap();
    bad.write_all(b"\"}\n{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(bad.try_clone().unwrap()));
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert!(next().get("QMP").is_some(), "greeting");
    assert_eq!(
        err(&next()),
        (
            "GenericError".into(),
            "JSON token size limit exceeded".into()
        )
    );
    // What was left of the huge token is skipped up to the next structural character.
    assert_eq!(err(&next()).1, "JSON parse error, expecting value");
    assert_eq!(
        next(),
        json!({"return": {}}),
        "the same client, served again"
    );
    drop(bad);
    // ... one that disconnects mid-command changes nothing ...
    let mut half = UnixStream::connect(&sut.sock).unwrap();
    half.write_all(b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"netdev_add\", \"argu")
        .unwrap();
    drop(half);
    // ... and the others and the data plane carry on.
    let f = frame(BCAST, MAC_A, 0x0800, 60, 9);
    pa.send(&f);
    assert_eq!(pb.recv_timeout(Duration::from_secs(5)), Some(f));
    assert!(b
        .execute("query-version", Value::Null)
        .get("return")
        .is_some());
    // Events go to every client in command mode.
    a.take_events();
    b.take_events();
    b.execute_ok(
        "netdev_add",
        json!({"id": "hn", "type": "hubport", "hubid": 1}),
    );
    b.execute_ok(
        "netdev_add",
        json!({"id": "n0", "type": "nic", "netdev": "hn"}),
    );
    b.execute_ok(
        "x-set-rx-filter",
        json!({"name": "n0", "promiscuous": false}),
    );
    for cl in [&mut a, &mut b] {
        let ev = cl
            .next_event(Duration::from_secs(2))
            .expect("event reaches every client");
        assert_eq!(ev["event"], "NIC_RX_FILTER_CHANGED");
    }
    // quit: reply, SHUTDOWN to everyone, clean exit.
    let r = a.execute("quit", Value::Null);
    assert_eq!(r, json!({"return": {}}));
    let ev = b.next_event(Duration::from_secs(5)).expect("SHUTDOWN");
    assert_eq!(ev["event"], "SHUTDOWN");
    assert_eq!(
        ev["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    let mut d = sut.d;
    assert!(wait_until(Duration::from_secs(10), || !d.is_running()));
    let (status, stderr) = d.stop();
    tests::assert_clean_exit(status, &stderr);
}

/// Add/delete cycles of the churn test.
const CHURN_CYCLES: usize = 10_000;

#[test]
fn ten_thousand_add_del_cycles_of_every_type_under_traffic() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let sut = start(&[]);
    let mut c = sut.client();
    let a = udp_port(&mut c, "a", 0);
    let b = udp_port(&mut c, "b", 0);
    let sink = UdpEnd::new();
    let free0 = stats(&mut c)["pool"]["free"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Relaxed) {
                let mut f = frame(BCAST, MAC_A, 0x0800, 64, 0);
                f[20..28].copy_from_slice(&n.to_be_bytes());
                a.send(&f);
                n += 1;
                // About 2 kframes/s: steady traffic well inside what the sockets buffer.
                std::thread::sleep(Duration::from_micros(500));
            }
            n
        })
    };
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut quiet_since = None;
            loop {
                match b.recv_timeout(Duration::from_millis(50)) {
                    Some(_) => {
                        received.fetch_add(1, Relaxed);
                        quiet_since = None;
                    }
                    None if stop.load(Relaxed) => {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_millis(500) {
                            return;
                        }
                    }
                    None => {}
                }
            }
        })
    };
    let draining = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                let _ = sink.recv_timeout(Duration::from_millis(50));
            }
        })
    };
    // Every type this host can make without an outside peer, in turn, each with the
    // ports and names it needs (the same ones every time: a deleted port's socket is
    // closed before netdev_del answers, so the next cycle can bind it again).
    let (u1, u2, t1) = (
        tests::free_udp_port(),
        tests::free_udp_port(),
        tests::free_tcp_port(),
    );
    let tap = tests::unique("churn");
    // vhost-user listens on a chardev made once; each port binds and removes the socket
    // and starts and ends its device thread.
    let vsock = std::env::temp_dir().join(format!("{}.vhost.sock", tests::unique("churn")));
    c.execute_ok(
        "chardev-add",
        json!({"id": "cx", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": vsock.display().to_string()}},
            "server": true}}}),
    );
    let kinds: Vec<Vec<Value>> = vec![
        vec![json!({"type": "vhost-user", "id": "x", "chardev": "cx"})],
        vec![json!({"type": "socket", "id": "x", "udp": "127.0.0.1:9",
                    "localaddr": format!("127.0.0.1:{u1}")})],
        vec![
            json!({"type": "hubport", "id": "x", "hubid": 7}),
            json!({"type": "nic", "id": "x2", "netdev": "x"}),
        ],
        vec![json!({"type": "dgram", "id": "x",
                    "local": {"type": "inet", "host": "127.0.0.1", "port": u1.to_string()},
                    "remote": {"type": "inet", "host": "127.0.0.1", "port": "9"}})],
        vec![
            json!({"type": "l2tpv3", "id": "x", "src": "127.0.0.1", "dst": "127.0.0.1",
                    "udp": true, "srcport": u1.to_string(), "dstport": u2.to_string(),
                    "txsession": 1, "rxsession": 1}),
        ],
        vec![json!({"type": "stream", "id": "x", "server": true,
                    "addr": {"type": "inet", "host": "127.0.0.1", "port": t1.to_string()}})],
        // Bound to 127.0.0.1, sending to 127.0.0.2: not to itself (a loop).
        vec![
            json!({"type": "x-vxlan", "id": "x", "vni": 5, "local": "127.0.0.1",
                    "remote": "127.0.0.2", "port": u2}),
        ],
        vec![json!({"type": "x-null", "id": "x"})],
        vec![
            json!({"type": "tap", "id": "x", "ifname": tap, "script": "no",
                    "downscript": "no"}),
        ],
        vec![json!({"type": "user", "id": "x", "restrict": true})],
    ];
    let cycle = |c: &mut QmpClient, k: usize| {
        let specs = &kinds[k % kinds.len()];
        let first = specs[0]["type"].as_str().unwrap_or("?").to_string();
        for s in specs {
            c.execute_ok("netdev_add", s.clone());
        }
        if first != "hubport" {
            c.execute_ok(
                "netdev_add",
                json!({"type": "hubport", "id": "hx", "hubid": 0, "netdev": "x"}),
            );
            c.execute_ok("netdev_del", json!({"id": "hx"}));
        }
        for s in specs.iter().rev() {
            c.execute_ok("netdev_del", json!({"id": s["id"]}));
        }
    };
    // Allocator arenas and caches settle in the first cycles: RSS is measured after.
    for k in 0..kinds.len() * 10 {
        cycle(&mut c, k);
    }
    let rss0 = rss_kib(sut.d.pid());
    let fds0 = fd_count(sut.d.pid());
    let t0 = Instant::now();
    for k in 0..CHURN_CYCLES {
        cycle(&mut c, k);
    }
    let took = t0.elapsed();
    stop.store(true, Relaxed);
    let sent = sender.join().unwrap();
    receiver.join().unwrap();
    draining.join().unwrap();
    let pa = port_stat(&mut c, "a");
    let pb = port_stat(&mut c, "b");
    assert_eq!(
        pa["rx-packets"].as_u64().unwrap(),
        sent,
        "port a took every frame: {pa}"
    );
    assert_eq!(
        pb["tx-packets"].as_u64().unwrap(),
        sent,
        "port b sent every frame: {pb}"
    );
    assert_eq!(received.load(Relaxed), sent, "the other port lost nothing");
    for p in [&pa, &pb] {
        let drops: u64 = common::total_drops(p);
        assert_eq!(drops, 0, "{p}");
    }
    assert!(wait_until(Duration::from_secs(5), || stats(&mut c)["pool"]
        ["free"]
        .as_u64()
        .unwrap()
        == free0));
    assert_eq!(fd_count(sut.d.pid()), fds0, "no descriptor left open");
    let rss1 = rss_kib(sut.d.pid());
    eprintln!(
        "{CHURN_CYCLES} add/del cycles of {} kinds in {took:?}; {sent} frames through the \
         other ports, none lost; RSS {rss0} → {rss1} KiB",
        kinds.len()
    );
    assert_rss(
        rss1 < rss0 + 4096,
        format_args!("RSS grew from {rss0} to {rss1} KiB over {CHURN_CYCLES} cycles"),
    );
    assert!(
        took < Duration::from_secs(300),
        "{CHURN_CYCLES} add/del cycles took {took:?}"
    );
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn qemu_qmp_python_library_drives_the_daemon() {
    let sut = start(&[]);
    let script = r#"
import asyncio, sys
from qemu.qmp import QMPClient, ExecuteError

async def main(path):
    c = QMPClient('pollswitch-test')
    await c.connect(path)
    v = await c.execute('query-version')
    assert v['package'].startswith('pollswitch'), v
    await c.execute('netdev_add', {'type': 'hubport', 'id': 'h0', 'hubid': 0})
    await c.execute('netdev_add', {'type': 'nic', 'id': 'n0', 'netdev': 'h0'})
    nets = await c.execute('query-rx-filter')
    assert nets[0]['name'] == 'n0', nets
    try:
        await c.execute('set_link', {'name': 'zz', 'up': False})
        raise SystemExit('set_link on an unknown name must fail')
    except ExecuteError as e:
        assert e.error_class == 'DeviceNotFound', e.error
    with c.listener() as listener:
        await c.execute('x-set-rx-filter', {'name': 'n0', 'promiscuous': False})
        ev = await asyncio.wait_for(listener.get(), 5)
        assert ev['event'] == 'NIC_RX_FILTER_CHANGED', ev
    await c.execute('netdev_del', {'id': 'n0'})
    print('qemu.qmp OK')
    await c.disconnect()

asyncio.run(main(sys.argv[1]))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&sut.sock)
        .output()
        .expect("python3 (installed by scripts/setup-host with qemu.qmp)");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("qemu.qmp OK"),
        "qemu.qmp client failed (scripts/setup-host installs qemu.qmp):\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    sut.d.stop_clean();
}

#[test]
fn qmp_over_tcp_and_unix_at_once() {
    let port = tests::free_tcp_port();
    let tcp = format!("tcp:127.0.0.1:{port},server=on,wait=off");
    let sut = start(&["-qmp", tcp.as_str()]);
    let mut t = QmpClient::connect_tcp(("127.0.0.1", port)).expect("QMP over TCP");
    t.negotiate();
    let mut u = sut.client();
    t.execute_ok(
        "netdev_add",
        json!({"id": "h0", "type": "hubport", "hubid": 0}),
    );
    t.execute_ok(
        "netdev_add",
        json!({"id": "n0", "type": "nic", "netdev": "h0"}),
    );
    // What one client did, the other sees; events reach both transports.
    let r = u.execute_ok("query-rx-filter", json!({"name": "n0"}));
    assert_eq!(r[0]["name"], "n0");
    u.execute_ok(
        "x-set-rx-filter",
        json!({"name": "n0", "promiscuous": false}),
    );
    for c in [&mut t, &mut u] {
        let ev = c
            .next_event(Duration::from_secs(2))
            .expect("event on both sockets");
        assert_eq!(ev["event"], "NIC_RX_FILTER_CHANGED");
    }
    drop((t, u));
    sut.d.stop_clean();
}

#[test]
fn bad_qmp_options_fail_at_start() {
    for (spec, needle) in [
        ("unix:/tmp/x.sock", "server=on"),
        ("unix:/tmp/x.sock,server=on", "wait=off"),
        ("stdio,server=on,wait=off", "unix:PATH or tcp:HOST:PORT"),
        (
            "unix:/tmp/x.sock,server=on,wait=off,bogus=1",
            "unknown option 'bogus=1'",
        ),
    ] {
        let out = Daemon::run_to_exit(&["-cores", "0", "-qmp", spec]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{spec}: {err}");
        assert!(err.contains(needle), "{spec}: {err}");
    }
}

#[test]
fn legacy_tcp_spelling_and_the_unix_socket_goes_at_exit() {
    // `-qmp tcp::PORT,server,nowait`: what most QEMU how-tos print (no host: every
    // address, as QEMU does).
    let port = tests::free_tcp_port();
    let tcp = format!("tcp::{port},server,nowait");
    let sut = start(&["-qmp", tcp.as_str()]);
    let mut t = QmpClient::connect_tcp(("127.0.0.1", port)).expect("QMP over tcp::PORT");
    t.negotiate();
    assert!(t.execute_ok("query-version", json!({}))["qemu"].is_object());
    drop(t);
    assert!(sut.sock.exists());
    let sock = sut.sock.clone();
    sut.d.stop_clean();
    assert!(!sock.exists(), "the QMP unix socket is removed at exit");
}

/// Resident memory of a process, in KiB.
/// Asserts a bound on the daemon's resident memory, except under a sanitizer (see
/// [`tests::under_sanitizer`]), where it only says what it saw.
fn assert_rss(ok: bool, what: std::fmt::Arguments<'_>) {
    if tests::under_sanitizer() {
        eprintln!("not checked under a sanitizer: {what}");
    } else {
        assert!(ok, "{what}");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_client_that_never_reads_is_not_read_either() {
    use std::io::Write;
    let sut = start(&[]);
    let pid = sut.d.pid();
    let mut slow = UnixStream::connect(&sut.sock).unwrap();
    slow.write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
        .unwrap();
    let rss0 = rss_kib(pid);
    // Write requests without reading a single reply, until the daemon stops taking
    // them: the write blocks (timeout) once the socket buffers are full.
    slow.set_write_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let req = b"{\"execute\": \"query-netdev\"}\n".repeat(1024);
    let t0 = Instant::now();
    let mut written = 0usize;
    while t0.elapsed() < Duration::from_secs(20) {
        match slow.write(&req) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the daemon kept reading {written} bytes of requests whose replies nobody read"
    );
    // The premise: it did read and answer a good many before it stopped.
    assert!(written > 100_000, "only {written} bytes taken");
    let grown = rss_kib(pid).saturating_sub(rss0);
    assert_rss(
        grown < 64 * 1024,
        format_args!("memory grew by {grown} KiB"),
    );
    // Everybody else is served meanwhile.
    let mut other = sut.client();
    let t1 = Instant::now();
    other.execute_ok("query-version", json!({}));
    assert!(t1.elapsed() < Duration::from_secs(2));
    // Reading the replies lets the daemon go on with the queued requests.
    let mut r = std::io::BufReader::new(slow.try_clone().unwrap());
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    let mut replies = 0;
    while replies < 2000 {
        line.clear();
        if std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) == 0 {
            break;
        }
        replies += 1;
    }
    assert_eq!(replies, 2000, "the backlog is answered once read");
    drop((r, slow, other));
    sut.d.stop_clean();
}

#[test]
fn query_netdev_names_taps_as_the_kernel_made_them() {
    // The daemon in a namespace of its own, so its taps are born there.
    let ns = tests::Netns::new();
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let spec = format!("unix:{},server=on,wait=off", sock.display());
    let d = Daemon::start_in(
        &ns,
        &[
            "-cores",
            "0",
            "-poll-us",
            "0",
            "-pool-size",
            "1024",
            "-qmp",
            &spec,
        ],
    );
    let mut c = QmpClient::connect_unix_negotiated(&sock).expect("QMP");
    // A name longer than the kernel's 15 bytes, and no name at all.
    let long = "pstapnamelongerthan15";
    c.execute_ok(
        "netdev_add",
        json!({"id": "t0", "type": "tap", "ifname": long, "script": "no", "downscript": "no"}),
    );
    c.execute_ok(
        "netdev_add",
        json!({"id": "t1", "type": "tap", "script": "no", "downscript": "no"}),
    );
    let nds = c.execute_ok("query-netdev", json!({}));
    let name = |id: &str| {
        nds.as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {nds}"))["ifname"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} has an ifname: {nds}"))
            .to_string()
    };
    assert_eq!(name("t0"), &long[..15]);
    let t1 = name("t1");
    assert!(t1.starts_with("tap"), "{t1}");
    for n in [name("t0"), t1] {
        assert!(
            ns.exec(&["ip", "link", "show", "dev", &n]).status.success(),
            "query-netdev names {n}, which exists"
        );
    }
    drop(c);
    d.stop_clean();
}

/// Sends `input` then a sentinel request, and returns every reply before the
/// sentinel's (its `CommandNotFound` ends the case; 3 s bound if it never comes).
fn replies_to(s: &mut UnixStream, pending: &mut Vec<u8>, input: &[u8], n: usize) -> Vec<Value> {
    use std::io::{Read, Write};
    let sentinel = format!("x-sentinel-{n}");
    s.write_all(input).unwrap();
    s.write_all(format!("\n{{\"execute\": \"{sentinel}\"}}\n").as_bytes())
        .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while Instant::now() < deadline {
        while let Some(i) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            let v: Value = serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"));
            if v.get("event").is_some() {
                continue;
            }
            if v["error"]["desc"]
                .as_str()
                .is_some_and(|d| d.contains(&sentinel))
            {
                return out;
            }
            out.push(v);
        }
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => pending.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
    }
    out.push(json!({"no-sentinel-reply": true}));
    out
}

fn negotiated_raw(path: &std::path::Path) -> (UnixStream, Vec<u8>) {
    let mut s = UnixStream::connect(path).unwrap();
    let mut pending = Vec::new();
    // Greeting and the reply to qmp_capabilities (the sentinel's reply ends it).
    let r = replies_to(
        &mut s,
        &mut pending,
        b"{\"execute\": \"qmp_capabilities\"}",
        0,
    );
    assert_eq!(r.len(), 2, "greeting and capabilities: {r:?}");
    assert_eq!(r[1], json!({"return": {}}));
    (s, pending)
}

#[test]
fn qmp_input_is_read_as_qemu_10_reads_it() {
    // Every case goes to a real QEMU and to pollswitch; the replies must be the same,
    // reply for reply. Only inputs whose answers do not depend on what the commands do.
    let cases: &[&[u8]] = &[
        b"{\"execute\": foo}",
        b"{\"execute\":\n foo}",
        b"foo bar",
        b"}",
        b"]]",
        b"{\"execute\":\"x-a\"}}",
        b"{'execute':'x-a', 'id': 'single'}",
        b"{\"execute\":\"x-a\"} garbage",
        b"\x01",
        b"@@@",
        b"@ {\"execute\":\"x-a\"}",
        b"{\"execute\": @, \"x\": 1}",
        b"{\"a\":1,}",
        b"[1,2\n]",
        b"{\"a\" 1}",
        b"{1:2}",
        b"{\"a\":1 \"b\":2}",
        b"[1 2]",
        b"{\"a\":1]",
        b"{\"a\":1,\"a\":2}",
        b"{\"a\":tru}",
        b"TRUE",
        b"\"str\"",
        b"123",
        b"[]",
        b"{}",
        b"{\"a\": \"\\x\"}",
        b"{\"a\": \"\xff\"}",
        b"\"\\u00zz\"",
        b"\"\\uDE00\"",
        b"{\"execute\":\"x-a\",\"id\":\"\\uD83D\\uDE00\"}",
        b"{\"execute\":\"x-a\",\"id\":\"tab\there\"}",
        b"{\"execute\":\"x-a\",\"id\":1.}",
        b"{\"execute\":\"x-a\",\"id\":01}",
        b"{\"execute\":\"x-a\",\"id\":-0}",
        b"{\"execute\":\"x-a\",\"id\":[true,false,null]}",
        b"{\"execute\":\"x-a\",\"id\":18446744073709551615}",
        b"{\"execute\":\"x-a\"}{\"execute\":\"x-b\"}",
        b"'unterminated",
    ];
    // A second monitor of our own: the helper keeps the first one.
    let dir = TempDir::new();
    let second = dir.join("second.sock");
    let qemu = tests::QemuPeer::start_args(
        None,
        &[
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", second.display()),
        ],
    );
    let sut = start(&[]);
    let (mut q, mut qp) = negotiated_raw(&second);
    let (mut p, mut pp) = negotiated_raw(&sut.sock);
    let mut differ = Vec::new();
    for (n, input) in cases.iter().enumerate() {
        let want = replies_to(&mut q, &mut qp, input, n + 1);
        let got = replies_to(&mut p, &mut pp, input, n + 1);
        assert!(
            !want.is_empty(),
            "QEMU answered {:?} with nothing",
            String::from_utf8_lossy(input)
        );
        if got != want {
            differ.push(format!(
                "{:?}\n   QEMU:       {want:?}\n   pollswitch: {got:?}",
                String::from_utf8_lossy(input)
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "replies differ from QEMU's:\n{}",
        differ.join("\n")
    );
    drop((q, qemu, dir));
    sut.d.stop_clean();
}

#[test]
fn a_client_that_gates_on_the_version_and_probes_the_schema() {
    // As libvirt does: refuse a QEMU older than 6.2, then learn from query-qmp-schema
    // which commands and netdev types exist before using them.
    let sut = start(&[]);
    let mut c = sut.client();
    let v = &c.greeting["QMP"]["version"]["qemu"];
    let triple = (v["major"].as_u64().unwrap(), v["minor"].as_u64().unwrap());
    assert!(triple >= (6, 2), "a version libvirt accepts: {v}");
    let schema = c.execute_ok("query-qmp-schema", json!({}));
    let by: std::collections::HashMap<&str, &Value> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    // Every command the daemon lists is described, and nothing it lacks.
    let cmds = c.execute_ok("query-commands", json!({}));
    let listed: Vec<&str> = cmds
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    for name in &listed {
        assert_eq!(
            by.get(name).map(|e| &e["meta-type"]),
            Some(&json!("command")),
            "{name}"
        );
    }
    let described: Vec<&str> = by
        .values()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in &described {
        assert!(
            listed.contains(name),
            "schema describes {name}, which does not exist"
        );
    }
    // netdev_add's argument is the Netdev union: its cases are the netdev types.
    let arg = by[by["netdev_add"]["arg-type"].as_str().unwrap()];
    let cases: Vec<&str> = arg["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["case"].as_str().unwrap())
        .collect();
    for t in ["tap", "socket", "hubport", "nic", "vhost-user", "x-null"] {
        assert!(cases.contains(&t), "{t} in {cases:?}");
    }
    // A member seen through the schema is accepted by the command.
    let tap = by[arg["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["case"] == "hubport")
        .unwrap()["type"]
        .as_str()
        .unwrap()];
    assert!(tap["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "hubid"));
    c.execute_ok(
        "netdev_add",
        json!({"id": "h0", "type": "hubport", "hubid": 0}),
    );
    assert!(by.contains_key("NIC_RX_FILTER_CHANGED") && by.contains_key("SHUTDOWN"));
    drop(c);
    sut.d.stop_clean();
}

#[test]
fn qmp_shell_drives_the_daemon() {
    // QEMU's own interactive client (from the qemu.qmp package), fed on stdin.
    use std::io::Write;
    let sut = start(&[]);
    let shell = tests::require_tool("qmp-shell");
    let mut child = std::process::Command::new(shell)
        .arg(&sut.sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"netdev_add type=x-null id=z7 size=128\nquery-netdev\nnetdev_del id=nosuch\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // The netdev it added, with the integer it typed, and QEMU's error for a bad id.
    assert!(
        text.contains("\"id\": \"z7\"") && text.contains("\"size\": 128"),
        "{text}"
    );
    assert!(text.contains("Device 'nosuch' not found"), "{text}");
    sut.d.stop_clean();
}

#[test]
fn two_hundred_clients_at_once_and_ten_mib_lines() {
    use std::io::{BufRead, BufReader, Write};
    let sut = start(&[]);
    let mut c = sut.client();
    let a = udp_port(&mut c, "a", 0);
    let b = udp_port(&mut c, "b", 0);
    let pid = sut.d.pid();
    let (fds0, rss0) = (fd_count(pid), rss_kib(pid));
    // 200 clients connected together, every one negotiated and answered.
    let mut many: Vec<QmpClient> = (0..200).map(|_| sut.client()).collect();
    for (i, cl) in many.iter_mut().enumerate() {
        let r = cl.execute("query-version", json!(null));
        assert!(r.get("return").is_some(), "client {i}: {r}");
    }
    assert!(fd_count(pid) >= fds0 + 200, "200 connections open at once");
    // A 10 MiB line, twice: one string token (over the token cap: one error, the rest of
    // the token skipped), then 10 MiB of blanks before a request, which is answered.
    let s = UnixStream::connect(&sut.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut lines = BufReader::new(s.try_clone().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert!(next().get("QMP").is_some(), "greeting");
    // Written by a thread of its own while this one reads the replies (the daemon stops
    // reading a client whose replies it cannot write).
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut huge = b"{\"execute\": \"qmp_capabilities\", \"arguments\": {\"x\": \"".to_vec();
        huge.resize(10 << 20, b'a');
        huge.extend_from_slice(b"\"}}\n");
        w.write_all(&huge).unwrap();
        // 10 MiB of blanks between two requests: no token, nothing to answer.
        let mut blanks = vec![b' '; 10 << 20];
        blanks.extend_from_slice(b"\n{\"execute\": \"qmp_capabilities\"}\n");
        w.write_all(&blanks).unwrap();
    });
    let mut errors = Vec::new();
    let served = loop {
        let v = next();
        if v.get("return").is_some() {
            break v;
        }
        errors.push(err(&v).1);
        assert!(
            errors.len() <= 8,
            "a few errors, not one per token: {:?}",
            &errors[..8]
        );
    };
    writer.join().unwrap();
    assert_eq!(
        served,
        json!({"return": {}}),
        "the request after the blanks: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e == "JSON token size limit exceeded"),
        "{errors:?}"
    );
    // Everything closes; the daemon holds no more than it did, and still forwards.
    drop(many);
    drop(lines);
    drop(s);
    assert!(
        wait_until(Duration::from_secs(5), || fd_count(pid) == fds0),
        "descriptors back to {fds0}: {}",
        fd_count(pid)
    );
    let rss1 = rss_kib(pid);
    assert_rss(
        rss1 < rss0 + 32 * 1024,
        format_args!("RSS {rss0} → {rss1} KiB"),
    );
    let f = frame(BCAST, MAC_A, 0x0800, 60, 3);
    a.send(&f);
    assert_eq!(b.recv_timeout(Duration::from_secs(5)), Some(f));
    drop(c);
    sut.d.stop_clean();
}
