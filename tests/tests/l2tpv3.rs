//! `l2tpv3` ports against QEMU's own `-netdev l2tpv3` (`-M none`, netdevs on a hub, no
//! guest), in UDP and IP mode, with 32- and 64-bit cookies, with and without the
//! counter; plus raw sockets that check our header byte by byte and send foreign
//! sessions and cookies, which must be dropped and counted.
//!
//! ```text
//!  UdpEnd a ─udp─ pollswitch [ a ─ hub 0 ─ l ] ══l2tpv3══ QEMU [ p ─ hub 0 ─ q ] ─udp─ UdpEnd q
//! ```

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use common::{expect_frame, expect_nothing, mac, Args, BCAST, ETH_EXP, WAIT};
use serde_json::{json, Value};
use tests::{frame, free_udp_port, wait_until, Daemon, QemuPeer, QmpClient, TempDir, UdpEnd};

const SIZES: [usize; 4] = [14, 60, 1514, 9000];

/// pollswitch with l2tpv3 port `l` (spec without the type and id) and a UDP end `a`
/// on hub 0, and a QMP socket.
struct Sut {
    d: Daemon,
    a: UdpEnd,
    sock: PathBuf,
    _dir: TempDir,
}

impl Sut {
    fn start(l2tpv3: Option<&str>) -> Sut {
        let dir = TempDir::new();
        let sock = dir.join("qmp.sock");
        let mut a = UdpEnd::new();
        let mut args = Args::new().opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        );
        if let Some(spec) = l2tpv3 {
            args = args.netdev(&format!("l2tpv3,id=l,{spec}")).on_hub("l", 0);
        }
        let d = args.udp("a", 0, &mut a).start();
        Sut {
            d,
            a,
            sock,
            _dir: dir,
        }
    }

    fn qmp(&self) -> QmpClient {
        QmpClient::connect_unix_negotiated(&self.sock).expect("connect to pollswitch's QMP")
    }
}

fn port_stat(c: &mut QmpClient, name: &str) -> Value {
    let s = c.execute_ok("x-query-stats", Value::Null);
    s["ports"]
        .as_array()
        .expect("ports in x-query-stats")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name} in {s}"))
        .clone()
}

/// QEMU with l2tpv3 `p` (spec without type and id) and a `socket,udp=` `q` to `end`.
fn qemu_with(spec: &str, end: &mut UdpEnd) -> QemuPeer {
    let q = common::udp_spec("q", end);
    QemuPeer::hub(None, &[&format!("l2tpv3,id=p,{spec}"), &q])
}

/// Frames of several sizes both ways, nothing back to a sender, no drops on `l`.
fn exchange(sut: &Sut, q: &UdpEnd, what: &str) {
    let a = &sut.a;
    common::exchange(a, q, &SIZES, what);
    let p = port_stat(&mut sut.qmp(), "l");
    let drops = common::total_drops(&p);
    assert_eq!(drops, 0, "{what}: drops on the l2tpv3 port: {p}");
}

/// Runs pollswitch with `ours` and QEMU with `theirs` (the `{P}` and `{Q}` in both are
/// pollswitch's and QEMU's UDP ports) and exchanges frames.
fn interop(ours: &str, theirs: &str, what: &str) {
    let (pp, qp) = (free_udp_port().to_string(), free_udp_port().to_string());
    let fill = |s: &str| s.replace("{P}", &pp).replace("{Q}", &qp);
    let sut = Sut::start(Some(&fill(ours)));
    let mut q = UdpEnd::new();
    let _qemu = qemu_with(&fill(theirs), &mut q);
    exchange(&sut, &q, what);
    sut.d.stop_clean();
}

#[test]
fn udp_mode_with_32_bit_cookies_and_no_counter() {
    interop(
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={P},dstport={Q},\
         txsession=0x11,rxsession=0x22,txcookie=0x01020304,rxcookie=0x0a0b0c0d",
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={Q},dstport={P},\
         txsession=0x22,rxsession=0x11,txcookie=0x0a0b0c0d,rxcookie=0x01020304",
        "udp, 32-bit cookies",
    );
}

#[test]
fn udp_mode_with_64_bit_cookies_counter_and_offset() {
    interop(
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={P},dstport={Q},cookie64=on,counter=on,\
         offset=6,txsession=7,rxsession=8,txcookie=0x0102030405060708,rxcookie=0x1112131415161718",
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={Q},dstport={P},cookie64=on,counter=on,\
         offset=6,txsession=8,rxsession=7,txcookie=0x1112131415161718,rxcookie=0x0102030405060708",
        "udp, 64-bit cookies, counter, offset",
    );
}

#[test]
fn cookie64_off_still_means_a_64_bit_cookie_as_in_qemu() {
    interop(
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={P},dstport={Q},cookie64=off,\
         txsession=9,txcookie=0x1122334455667788,rxcookie=0x8877665544332211",
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={Q},dstport={P},cookie64=off,\
         txsession=9,txcookie=0x8877665544332211,rxcookie=0x1122334455667788",
        "udp, cookie64=off",
    );
}

#[test]
fn udp_mode_over_ipv6_without_cookies_with_counter() {
    // ipv6 is inferred from the addresses on our side; QEMU needs ipv6=on.
    interop(
        "src=::1,dst=::1,udp=on,srcport={P},dstport={Q},txsession=5,counter=on",
        "src=::1,dst=::1,ipv6=on,udp=on,srcport={Q},dstport={P},txsession=5,counter=on",
        "udp over IPv6, no cookie, counter",
    );
}

#[test]
fn ip_mode_protocol_115_on_loopback() {
    // Two loopback addresses: a raw socket gets every protocol-115 datagram to the
    // address it is bound to, so each side only sees the other's.
    interop(
        "src=127.0.0.1,dst=127.0.0.2,txsession=0x301,rxsession=0x302,\
         txcookie=0xdeadbeef,rxcookie=0xfeedf00d,counter=on",
        "src=127.0.0.2,dst=127.0.0.1,txsession=0x302,rxsession=0x301,\
         txcookie=0xfeedf00d,rxcookie=0xdeadbeef,counter=on",
        "IP mode, 32-bit cookies, counter",
    );
}

/// Our header on the wire, byte by byte, and foreign sessions and cookies dropped and
/// counted as `filtered`, never delivered.
#[test]
fn header_on_the_wire_and_foreign_sessions_are_dropped() {
    let far = UdpSocket::bind("127.0.0.1:0").expect("bind the far end");
    far.set_read_timeout(Some(WAIT)).unwrap();
    let pp = free_udp_port();
    let sut = Sut::start(Some(&format!(
        "src=127.0.0.1,dst=127.0.0.1,udp=on,srcport={pp},dstport={},\
         txsession=0x01020304,rxsession=0x0a0b0c0d,txcookie=0x11223344,rxcookie=0x55667788,\
         counter=on",
        far.local_addr().unwrap().port()
    )));
    let to: SocketAddr = ([127, 0, 0, 1], pp).into();
    let mut buf = vec![0u8; 65536];
    for k in 1..=3u32 {
        let f = frame(BCAST, mac(3), ETH_EXP, 60, k as u8);
        sut.a.send(&f);
        let (n, from) = far.recv_from(&mut buf).expect("our l2tpv3 datagram");
        assert_eq!(from, to, "sent from srcport");
        let mut want = vec![0, 3, 0, 0, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44];
        want.extend_from_slice(&k.to_be_bytes());
        want.extend_from_slice(&f);
        assert_eq!(
            &buf[..n],
            &want[..],
            "datagram {k}: header, counter from 1, frame"
        );
    }
    let g = frame(mac(4), mac(5), ETH_EXP, 60, 9);
    let dgram = |session: u32, cookie: u32| {
        let mut d = vec![0, 3, 0, 0];
        d.extend_from_slice(&session.to_be_bytes());
        d.extend_from_slice(&cookie.to_be_bytes());
        d.extend_from_slice(&[0xff; 4]); // the counter is not checked
        d.extend_from_slice(&g);
        d
    };
    far.send_to(&dgram(0x0a0b0c0e, 0x55667788), to).unwrap();
    far.send_to(&dgram(0x0a0b0c0d, 0x55667789), to).unwrap();
    far.send_to(&dgram(0x0a0b0c0d, 0x55667788)[..10], to)
        .unwrap();
    far.send_to(&dgram(0x0a0b0c0d, 0x55667788), to).unwrap();
    expect_frame(&sut.a, &g, "the datagram with our session and cookie");
    expect_nothing(&sut.a, "foreign session, foreign cookie, short header");
    let mut c = sut.qmp();
    assert!(
        wait_until(Duration::from_secs(5), || {
            let p = port_stat(&mut c, "l");
            p["drops"]["filtered"] == 2 && p["drops"]["undersize"] == 1 && p["rx-packets"] == 1
        }),
        "counters: {}",
        port_stat(&mut c, "l")
    );
    drop(c);
    sut.d.stop_clean();
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the daemon's fds")
        .count()
}

/// netdev_add checks like QEMU, query-netdev gives back what netdev_add takes, and
/// netdev_del closes the socket (the same port binds again) and leaks nothing.
#[test]
fn netdev_add_query_and_del() {
    let sut = Sut::start(None);
    let mut c = sut.qmp();
    let pp = free_udp_port();
    for (args, want) in [
        (
            json!({"id": "l", "type": "l2tpv3", "src": "127.0.0.1", "dst": "127.0.0.1",
                   "udp": true, "dstport": "1", "txsession": 1}),
            "need both src and dst port for udp",
        ),
        (
            json!({"id": "l", "type": "l2tpv3", "src": "127.0.0.1", "dst": "127.0.0.1",
                   "txsession": 1, "txcookie": 5}),
            "require both 'rxcookie' and 'txcookie' or neither",
        ),
        (
            json!({"id": "l", "type": "l2tpv3", "src": "127.0.0.1", "dst": "127.0.0.1",
                   "txsession": 1, "offset": 257}),
            "offset must be less than 256 bytes",
        ),
        (
            json!({"id": "l", "type": "l2tpv3", "src": "127.0.0.1", "dst": "127.0.0.1",
                   "txsession": 1, "txcookie": 4294967296u64, "rxcookie": 1}),
            "does not fit in a 32-bit cookie",
        ),
        (
            json!({"id": "l", "type": "l2tpv3", "src": "::1", "dst": "127.0.0.1",
                   "txsession": 1}),
            "could not resolve dst",
        ),
    ] {
        let r = c.execute("netdev_add", args.clone());
        let desc = r["error"]["desc"].as_str().unwrap_or_default().to_string();
        assert!(desc.contains(want), "{args}: {r}");
    }
    let before = open_fds(sut.d.pid());
    let add = json!({"id": "l", "type": "l2tpv3", "src": "127.0.0.1", "dst": "127.0.0.1",
                     "udp": true, "srcport": pp.to_string(), "dstport": "9",
                     "txsession": 3, "cookie64": false, "txcookie": 1, "rxcookie": 2});
    for round in 0..3 {
        c.execute_ok("netdev_add", add.clone());
        let list = c.execute_ok("query-netdev", Value::Null);
        let me = list
            .as_array()
            .and_then(|l| l.iter().find(|n| n["id"] == "l"))
            .unwrap_or_else(|| panic!("round {round}: l not in {list}"))
            .clone();
        assert_eq!(me["type"], "l2tpv3", "{me}");
        assert_eq!(me["srcport"], pp.to_string(), "{me}");
        c.execute_ok("netdev_del", json!({"id": "l"}));
        // What query-netdev listed, netdev_add takes back (the same port binds again).
        c.execute_ok("netdev_add", me);
        c.execute_ok("netdev_del", json!({"id": "l"}));
    }
    assert!(
        wait_until(Duration::from_secs(5), || open_fds(sut.d.pid()) == before),
        "fds: {} before, {} after",
        before,
        open_fds(sut.d.pid())
    );
    drop(c);
    sut.d.stop_clean();
}
