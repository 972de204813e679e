//! `stream` and `dgram` netdevs (QEMU 7.2+, QEMU 10's members and dotted keys) against
//! QEMU's own: TCP and unix streams in both roles, inet and unix datagrams, and a
//! client that reconnects when the QEMU server it talks to is killed and restarted.
//!
//! ```text
//!  UdpEnd a ─udp─ pollswitch [ a ─ hub 0 ─ s ] ══stream/dgram══ QEMU [ p ─ hub 0 ─ q ] ─udp─ UdpEnd q
//! ```

mod common;

use std::time::Duration;

use common::{qemu_with, Args};
use tests::{free_tcp_port, free_udp_port, TempDir, UdpEnd};

const SIZES: [usize; 3] = [14, 60, 1514];

/// [`common::exchange`] with this file's frame sizes.
fn exchange(a: &UdpEnd, q: &UdpEnd, what: &str) {
    common::exchange(a, q, &SIZES, what);
}

/// pollswitch with netdev `s` from `spec` and a UDP port `a` on hub 0.
fn pollswitch(spec: &str, a: &mut UdpEnd) -> tests::Daemon {
    Args::new()
        .netdev(spec)
        .on_hub("s", 0)
        .udp("a", 0, a)
        .start()
}

#[test]
fn stream_server_with_qemu_stream_client_inet() {
    let port = free_tcp_port();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = pollswitch(
        &format!("stream,id=s,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}"),
        &mut a,
    );
    let client = format!("stream,id=p,addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    let qemu = qemu_with(&client, &mut q);
    exchange(&a, &q, "stream server, QEMU stream client");
    // That client goes; the server accepts the next one.
    drop(qemu);
    let _qemu = qemu_with(&client, &mut q);
    exchange(&a, &q, "stream server, second QEMU stream client");
    d.stop_clean();
}

#[test]
fn stream_server_with_qemu_stream_client_unix() {
    let dir = TempDir::new();
    let path = dir.path().join("s.sock");
    let path = path.display();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = pollswitch(
        &format!("stream,id=s,server=on,addr.type=unix,addr.path={path}"),
        &mut a,
    );
    let _qemu = qemu_with(
        &format!("stream,id=p,server=off,addr.type=unix,addr.path={path}"),
        &mut q,
    );
    exchange(&a, &q, "unix stream server, QEMU stream client");
    d.stop_clean();
}

#[test]
fn stream_server_with_qemu_stream_client_abstract_unix() {
    let name = tests::unique("psab");
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = pollswitch(
        &format!("stream,id=s,server=on,addr.type=unix,addr.path={name},addr.abstract=on"),
        &mut a,
    );
    let _qemu = qemu_with(
        &format!("stream,id=p,addr.type=unix,addr.path={name},addr.abstract=on"),
        &mut q,
    );
    exchange(&a, &q, "abstract unix stream server, QEMU stream client");
    d.stop_clean();
}

#[test]
fn stream_client_with_qemu_stream_server_unix() {
    let dir = TempDir::new();
    let path = dir.path().join("q.sock");
    let path = path.display();
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let _qemu = qemu_with(
        &format!("stream,id=p,server=on,addr.type=unix,addr.path={path}"),
        &mut q,
    );
    let d = pollswitch(
        &format!("stream,id=s,addr.type=unix,addr.path={path}"),
        &mut a,
    );
    exchange(&a, &q, "unix stream client, QEMU stream server");
    d.stop_clean();
}

#[test]
fn dgram_with_qemu_dgram_inet() {
    let (pp, qp) = (free_udp_port(), free_udp_port());
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let d = pollswitch(
        &format!(
            "dgram,id=s,local.type=inet,local.host=127.0.0.1,local.port={pp},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={qp}"
        ),
        &mut a,
    );
    let _qemu = qemu_with(
        &format!(
            "dgram,id=p,local.type=inet,local.host=127.0.0.1,local.port={qp},\
             remote.type=inet,remote.host=127.0.0.1,remote.port={pp}"
        ),
        &mut q,
    );
    exchange(&a, &q, "dgram inet, QEMU dgram inet");
    d.stop_clean();
}

#[test]
fn dgram_with_qemu_dgram_unix() {
    let dir = TempDir::new();
    let (pp, qp) = (dir.path().join("p.sock"), dir.path().join("q.sock"));
    let (pp, qp) = (pp.display(), qp.display());
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    // QEMU first: pollswitch's unix dgram socket is connected to QEMU's at creation.
    let _qemu = qemu_with(
        &format!("dgram,id=p,local.type=unix,local.path={qp},remote.type=unix,remote.path={pp}"),
        &mut q,
    );
    let d = pollswitch(
        &format!("dgram,id=s,local.type=unix,local.path={pp},remote.type=unix,remote.path={qp}"),
        &mut a,
    );
    exchange(&a, &q, "dgram unix, QEMU dgram unix");
    d.stop_clean();
}

#[test]
fn stream_client_reconnects_when_the_qemu_server_restarts() {
    let port = free_tcp_port();
    let server =
        format!("stream,id=p,server=on,addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    let (mut a, mut q) = (UdpEnd::new(), UdpEnd::new());
    let qemu = qemu_with(&server, &mut q);
    let dir = TempDir::new();
    let (d, mut c) = Args::new()
        .netdev(&format!(
            "stream,id=s,addr.type=inet,addr.host=127.0.0.1,addr.port={port},reconnect=1"
        ))
        .on_hub("s", 0)
        .udp("a", 0, &mut a)
        .start_with_qmp(&dir);
    let carrier = |c: &mut tests::QmpClient| common::port_stats(c, "s")["carrier"].clone();
    exchange(&a, &q, "stream client, first QEMU server");
    assert_eq!(carrier(&mut c), serde_json::json!(true), "connected");
    // The server dies without a word.
    let pid = qemu.pid().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("run kill");
    assert!(killed.success(), "kill -KILL {pid}");
    drop(qemu);
    assert!(
        d.wait_for_stderr("peer disconnected", Duration::from_secs(5)),
        "{}",
        d.stderr_text()
    );
    assert_eq!(
        carrier(&mut c),
        serde_json::json!(false),
        "no carrier without the server"
    );
    std::thread::sleep(Duration::from_millis(200));
    // A new one on the same address: the client finds it again within its delay.
    let _qemu = qemu_with(&server, &mut q);
    exchange(&a, &q, "stream client, restarted QEMU server");
    assert_eq!(carrier(&mut c), serde_json::json!(true), "connected again");
    d.stop_clean();
}

/// Over QMP: nested `addr`/`local`/`remote` objects in, the same out of `query-netdev`
/// (which `netdev_add` takes back), and QEMU's texts for what QEMU refuses.
#[test]
fn qmp_nested_addresses_round_trip_and_qemu_errors() {
    use serde_json::{json, Value};
    let dir = TempDir::new();
    let (d, mut c) = Args::new().start_with_qmp(&dir);
    let port = free_tcp_port();
    let (lp, rp) = (free_udp_port(), free_udp_port());
    let stream = json!({"id": "s0", "type": "stream", "server": true,
        "addr": {"type": "inet", "host": "127.0.0.1", "port": port.to_string()}});
    let dgram = json!({"id": "d0", "type": "dgram",
        "local": {"type": "inet", "host": "127.0.0.1", "port": lp.to_string()},
        "remote": {"type": "inet", "host": "127.0.0.1", "port": rp.to_string()}});
    c.execute_ok("netdev_add", stream.clone());
    c.execute_ok("netdev_add", dgram.clone());
    let list = c.execute_ok("query-netdev", Value::Null);
    let find = |id: &str| {
        let mut n = list
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("{id} in {list}"))
            .clone();
        n.as_object_mut().unwrap().remove("peer-id");
        n
    };
    assert_eq!(find("s0"), stream);
    assert_eq!(find("d0"), dgram);
    for n in [find("s0"), find("d0")] {
        c.execute_ok("netdev_del", json!({"id": n["id"]}));
        c.execute_ok("netdev_add", n);
    }
    let desc = |c: &mut tests::QmpClient, args: Value| {
        let r = c.execute("netdev_add", args);
        r["error"]["desc"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(
        desc(&mut c, json!({"id": "x", "type": "stream"})),
        "Parameter 'addr' is missing"
    );
    assert_eq!(
        desc(
            &mut c,
            json!({"id": "x", "type": "stream", "addr": {"type": "inet", "host": "h"}})
        ),
        "Parameter 'addr.port' is missing"
    );
    assert_eq!(
        desc(
            &mut c,
            json!({"id": "x", "type": "stream",
                   "addr": {"type": "inet", "host": "h", "port": 1}})
        ),
        "Invalid parameter type for 'addr.port', expected: string"
    );
    assert_eq!(
        desc(
            &mut c,
            json!({"id": "x", "type": "stream", "server": true, "reconnect-ms": 5,
                   "addr": {"type": "unix", "path": "/nonexistent/x"}})
        ),
        "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode"
    );
    assert_eq!(
        desc(&mut c, json!({"id": "x", "type": "dgram"})),
        "dgram requires local= parameter"
    );
    assert_eq!(
        desc(
            &mut c,
            json!({"id": "x", "type": "dgram",
                   "local": {"type": "unix", "path": "/tmp/x"},
                   "remote": {"type": "inet", "host": "127.0.0.1", "port": "1"}})
        ),
        "remote and local types must be the same"
    );
    // query-qmp-schema describes both, SocketAddress as a union on `type`.
    let schema = c.execute_ok("query-qmp-schema", Value::Null);
    let by: std::collections::HashMap<&str, &Value> = schema
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let nd = by[by["netdev_add"]["arg-type"].as_str().unwrap()];
    let branch = |case: &str| {
        let v = nd["variants"].as_array().unwrap();
        let t = v.iter().find(|v| v["case"] == case).unwrap()["type"].clone();
        by[t.as_str().unwrap()]
    };
    let member = |obj: &Value, name: &str| {
        let m = obj["members"].as_array().unwrap();
        by[m.iter().find(|m| m["name"] == name).unwrap()["type"]
            .as_str()
            .unwrap()]
    };
    let addr = member(branch("stream"), "addr");
    assert_eq!(addr["tag"], "type", "{addr}");
    let cases: Vec<&str> = addr["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases, ["inet", "unix", "vsock", "fd"]);
    assert_eq!(member(branch("dgram"), "local")["tag"], "type");
    drop(c);
    d.stop_clean();
}
