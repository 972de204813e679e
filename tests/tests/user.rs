//! `user` netdevs (QEMU's user-mode NAT, libslirp): a tap the daemon makes, moved into a
//! namespace the test makes, is the guest. The kernel in that namespace gets its lease
//! by DHCP, reaches the host's loopback through the NAT, fetches a file by TFTP, and is
//! reached from the host through `hostfwd` rules given at start, added and removed with
//! HMP, and made by `netdev_add`.
//!
//! ```text
//!  this namespace                    daemon                         netns (the test's)
//!  127.0.0.1:PORT (listener) ◄── user,id=u0 ─ hub 0 ─ tap ══════ tap: 10.0.2.15/24
//!  127.0.0.1:HP ──hostfwd──────►  (10.0.2.2)                        :8080 (listener)
//!  tftp dir ─────────────────────►  tftp                            busybox tftp
//! ```
//!
//! Only loopback and the namespace's own link carry traffic: the guest's connections to
//! 10.0.2.2 end on this namespace's 127.0.0.1, and no rule binds anything but 127.0.0.1.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Args, WAIT};
use serde_json::{json, Value};
use tests::{free_tcp_port, unique, wait_until, Daemon, Netns, QmpClient, TempDir};

/// How long a tap may stay around after the daemon closed it (io_uring teardown).
const GONE: Duration = Duration::from_secs(10);

/// The guest's address (`dhcpstart`), the host's (`host`) and the DNS's (`dns`) in
/// QEMU's default `net=10.0.2.0/24`.
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// The guest port the start-up `hostfwd` rule forwards to.
const GUEST_PORT: u16 = 8080;

/// Most bytes read from one connection: far above any payload here.
const MAX_READ: usize = 16 << 20;

/// The daemon with a user netdev `u0` (plus `user_extra` options) and a tap on hub 0,
/// the tap moved into a namespace of its own, and a QMP client.
struct Lan {
    d: Daemon,
    qmp: QmpClient,
    ns: Netns,
    tap: String,
    dir: TempDir,
}

/// Starts a [`Lan`]. `user_extra` is appended to `user,id=u0` (`",hostfwd=..."`), and
/// `cidr` is the tap's address inside the namespace (`""`: none, for DHCP).
fn lan(user_extra: &str, cidr: &str) -> Lan {
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let tap = unique("pus");
    let d = Args::new()
        .opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        )
        .netdev(&format!("user,id=u0{user_extra}"))
        .on_hub("u0", 0)
        .netdev(&format!("tap,id=t0,ifname={tap},script=no,downscript=no"))
        .on_hub("t0", 0)
        .start();
    let qmp = QmpClient::connect_unix_negotiated(&sock).expect("connect to QMP");
    let ns = Netns::new();
    tests::move_link_into(&tap, &ns, cidr);
    // The premise of every "through the NAT" below: the namespace has no other way out.
    let links = ns.exec_ok(&["ip", "-o", "link"]);
    assert_eq!(
        links.lines().count(),
        2,
        "only lo and the tap in the namespace: {links}"
    );
    Lan {
        d,
        qmp,
        ns,
        tap,
        dir,
    }
}

impl Lan {
    /// `human-monitor-command` with `line`; its text.
    fn hmp(&mut self, line: &str) -> String {
        let r = self
            .qmp
            .execute_ok("human-monitor-command", json!({"command-line": line}));
        r.as_str()
            .unwrap_or_else(|| panic!("{line}: a string reply, got {r}"))
            .to_string()
    }

    /// The IPv4 addresses on the tap inside the namespace (`ip -o -4 addr` lines).
    fn tap_addrs(&self) -> String {
        self.ns
            .exec_ok(&["ip", "-o", "-4", "addr", "show", "dev", &self.tap])
    }

    /// Stops the daemon cleanly (status 0, every buffer back) and checks that the tap
    /// went with it.
    fn stop(self) {
        let Lan {
            d,
            qmp,
            ns,
            tap,
            dir,
        } = self;
        drop(qmp);
        d.stop_clean();
        assert!(
            wait_until(GONE, || !ns.has_link(&tap)),
            "tap {tap} still exists {GONE:?} after the daemon exited"
        );
        drop(dir);
    }
}

/// What `udhcpc` was given, as its script saw it.
#[derive(Debug, PartialEq, Eq)]
struct Lease {
    ip: Ipv4Addr,
    mask: u8,
    router: Ipv4Addr,
    dns: Ipv4Addr,
}

/// Runs `busybox udhcpc` on the tap (at most 5 discovers a second apart), with a script
/// that applies the lease (address, default route) and prints it; the lease.
///
/// # Panics
/// When no lease comes, with udhcpc's output and the daemon's stderr.
fn dhcp(lan: &Lan) -> Lease {
    let script = lan.dir.join("udhcpc.sh");
    fs::write(
        &script,
        "#!/bin/sh\n\
         case \"$1\" in\n\
         bound|renew)\n\
         \tip addr add \"$ip/$mask\" dev \"$interface\" || exit 1\n\
         \tip route add default via \"$router\" dev \"$interface\" || exit 1\n\
         \techo \"lease $ip $mask $router $dns\"\n\
         \t;;\n\
         esac\n",
    )
    .expect("write the udhcpc script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let out = lan.ns.exec(&[
        "timeout",
        "20",
        "busybox",
        "udhcpc",
        "-i",
        &lan.tap,
        "-f",
        "-q",
        "-n",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        script.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let what = || {
        format!(
            "udhcpc ({}): stdout:\n{stdout}\nstderr:\n{}\ndaemon stderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            lan.d.stderr_text()
        )
    };
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lease "))
        .unwrap_or_else(|| panic!("no lease: {}", what()));
    let w: Vec<&str> = line.split_whitespace().collect();
    let parse = |i: usize| -> Ipv4Addr {
        w.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("field {i} of lease {line:?}: {}", what()))
    };
    let mask = w
        .get(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("mask of lease {line:?}: {}", what()));
    assert!(out.status.success(), "{}", what());
    Lease {
        ip: parse(0),
        mask,
        router: parse(2),
        dns: parse(3),
    }
}

/// `n` bytes that differ from run to run (xorshift seeded by the clock and `salt`).
fn random_bytes(n: usize, salt: u64) -> Vec<u8> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = t ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The next connection on `l`, waiting at most [`WAIT`]; blocking, with timeouts.
fn accept_within(l: &TcpListener, what: &str) -> (TcpStream, SocketAddr) {
    l.set_nonblocking(true).expect("non-blocking listener");
    let mut got = None;
    let ok = wait_until(WAIT, || match l.accept() {
        Ok(c) => {
            got = Some(c);
            true
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("{what}: accept: {e}"),
    });
    assert!(ok, "{what}: no connection within {WAIT:?}");
    let (s, peer) = got.unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    (s, peer)
}

/// A connection to `to`, within [`WAIT`], with timeouts set.
fn connect(to: SocketAddr, what: &str) -> TcpStream {
    let s = TcpStream::connect_timeout(&to, WAIT)
        .unwrap_or_else(|e| panic!("{what}: connect to {to}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s
}

/// Everything `s` sends until it shuts down its side, within [`WAIT`] of the last byte.
fn read_to_eof(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                assert!(got.len() <= MAX_READ, "{what}: more than {MAX_READ} bytes");
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "{what}: read after {} bytes: {e} (no end of stream within {WAIT:?})",
                got.len()
            ),
        }
    }
}

/// `data` from `from` to `to` (written on a thread of its own, then `from` shuts down
/// writing), checked byte for byte.
fn send_and_check(from: &mut TcpStream, to: &mut TcpStream, data: &[u8], what: &str) {
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            from.write_all(data)
                .unwrap_or_else(|e| panic!("{what}: write: {e}"));
            from.shutdown(Shutdown::Write).unwrap();
        });
        let got = read_to_eof(to, what);
        w.join().unwrap();
        assert_eq!(
            common::diff(&got, data),
            None,
            "{what}: the bytes that arrived"
        );
    });
}

/// A request and a reply of `len` random bytes each over a connection `client` opened
/// and `server` accepted, each side ending its part with a shutdown.
fn request_reply(client: &mut TcpStream, server: &mut TcpStream, len: usize, what: &str) {
    let req = random_bytes(len, 1);
    send_and_check(client, server, &req, &format!("{what}: request"));
    let rep = random_bytes(len, 2);
    send_and_check(server, client, &rep, &format!("{what}: reply"));
}

/// Whether a TCP connection to 127.0.0.1:`port` is refused (nothing listens).
fn refused(port: u16) -> bool {
    match TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), WAIT) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// The number of open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Fetches `name` from the TFTP server at 10.0.2.2 into `out`, from inside `ns`; the
/// output of busybox tftp.
fn tftp_get(ns: &Netns, name: &str, out: &Path) -> std::process::Output {
    ns.exec(&[
        "timeout",
        "20",
        "busybox",
        "tftp",
        "-g",
        "-r",
        name,
        "-l",
        out.to_str().unwrap(),
        &HOST.to_string(),
    ])
}

#[test]
fn dhcp_nat_hostfwd_tftp() {
    let hp = free_tcp_port();
    let dir = TempDir::new();
    let tftp_dir = dir.join("tftp");
    fs::create_dir(&tftp_dir).unwrap();
    let extra = format!(
        ",hostfwd=tcp:127.0.0.1:{hp}-:{GUEST_PORT},tftp={}",
        tftp_dir.display()
    );
    let lan = lan(&extra, "");

    // DHCP: the kernel inside has no address until the lease, and then QEMU's.
    assert_eq!(lan.tap_addrs(), "", "no address before DHCP");
    let lease = dhcp(&lan);
    assert_eq!(
        lease,
        Lease {
            ip: GUEST,
            mask: 24,
            router: HOST,
            dns: DNS
        }
    );
    let addrs = lan.tap_addrs();
    assert!(addrs.contains("10.0.2.15/24"), "the lease applied: {addrs}");

    // NAT, TCP: the guest's connection to 10.0.2.2 ends on this namespace's loopback.
    let host_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host_l.local_addr().unwrap().port();
    let to = SocketAddr::from((HOST, port));
    let mut c = lan.ns.enter(|| connect(to, "guest to 10.0.2.2"));
    let (mut s, peer) = accept_within(&host_l, "the guest's connection through the NAT");
    assert_eq!(
        peer.ip(),
        Ipv4Addr::LOCALHOST,
        "the NAT connects from the loopback"
    );
    request_reply(&mut c, &mut s, 300_000, "TCP guest to host through the NAT");
    drop((c, s));

    // NAT, UDP: a datagram to 10.0.2.2 arrives from the loopback; the answer comes
    // back from 10.0.2.2.
    let host_u = UdpSocket::bind("127.0.0.1:0").unwrap();
    host_u.set_read_timeout(Some(WAIT)).unwrap();
    let uport = host_u.local_addr().unwrap().port();
    let guest_u = lan.ns.enter(|| UdpSocket::bind("0.0.0.0:0").unwrap());
    guest_u.set_read_timeout(Some(WAIT)).unwrap();
    let ping = random_bytes(1200, 3);
    guest_u.send_to(&ping, (HOST, uport)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = host_u
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("the guest's datagram through the NAT: {e}"));
    assert_eq!(common::diff(&buf[..n], &ping), None, "UDP guest to host");
    assert_eq!(from.ip(), Ipv4Addr::LOCALHOST, "{from}");
    let pong = random_bytes(1400, 4);
    host_u.send_to(&pong, from).unwrap();
    let (n, from) = guest_u
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("the answer through the NAT: {e}"));
    assert_eq!(common::diff(&buf[..n], &pong), None, "UDP host to guest");
    assert_eq!(from, SocketAddr::from((HOST, uport)));

    // hostfwd: 127.0.0.1:HP here is GUEST_PORT on the guest, which sees 10.0.2.2.
    let guest_l = lan
        .ns
        .enter(|| TcpListener::bind(("0.0.0.0", GUEST_PORT)).unwrap());
    let mut c = connect(
        SocketAddr::from(([127, 0, 0, 1], hp)),
        "to the hostfwd port",
    );
    let (mut s, peer) = accept_within(&guest_l, "the forwarded connection at the guest");
    assert_eq!(peer.ip(), HOST, "the guest sees the host's address: {peer}");
    request_reply(&mut c, &mut s, 300_000, "TCP through hostfwd");
    drop((c, s, guest_l));

    // TFTP: a file of random bytes, several hundred blocks, arrives whole.
    let data = random_bytes(300_000, 5);
    fs::write(tftp_dir.join("boot.bin"), &data).unwrap();
    let out = dir.join("got.bin");
    let r = tftp_get(&lan.ns, "boot.bin", &out);
    assert!(
        r.status.success(),
        "tftp: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    let got = fs::read(&out).unwrap();
    assert_eq!(common::diff(&got, &data), None, "the file fetched by TFTP");
    // Nothing outside the directory is served: the premise, a file next to it, exists.
    let secret = random_bytes(1000, 6);
    fs::write(dir.join("secret"), &secret).unwrap();
    let out2 = dir.join("got2.bin");
    let r = tftp_get(&lan.ns, "../secret", &out2);
    assert!(!r.status.success(), "tftp ../secret was served");
    assert!(
        fs::read(&out2).unwrap_or_default().is_empty(),
        "bytes of ../secret arrived"
    );
    let r = tftp_get(&lan.ns, "nosuch.bin", &dir.join("got3.bin"));
    assert!(!r.status.success(), "tftp of a missing file succeeded");
    lan.stop();
}

#[test]
fn hostfwd_hmp() {
    let mut lan = lan("", "10.0.2.15/24");
    // The guest and the NAT know each other (an answered ping teaches both the MACs).
    let out = lan
        .ns
        .exec(&["busybox", "ping", "-c", "1", "-w", "5", &HOST.to_string()]);
    assert!(
        out.status.success(),
        "ping 10.0.2.2: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let hp = free_tcp_port();
    let rule = format!("tcp:127.0.0.1:{hp}");
    assert!(refused(hp), "nothing on {hp} before the rule");
    assert_eq!(lan.hmp(&format!("hostfwd_add u0 {rule}-:8081")), "");
    let info = lan.hmp("info usernet");
    assert!(
        info.contains("(u0)"),
        "info usernet names the netdev: {info}"
    );
    assert!(
        info.lines().any(|l| l.contains("HOST_FORWARD")
            && l.contains(&format!(" {hp} "))
            && l.contains(" 8081 ")),
        "info usernet lists the rule: {info}"
    );
    let guest_l = lan.ns.enter(|| TcpListener::bind("0.0.0.0:8081").unwrap());
    let mut c = connect(SocketAddr::from(([127, 0, 0, 1], hp)), "to the added rule");
    let (mut s, _) = accept_within(&guest_l, "the connection of the added rule");
    request_reply(&mut c, &mut s, 20_000, "TCP through the added rule");
    drop((c, s));

    assert_eq!(
        lan.hmp(&format!("hostfwd_remove u0 {rule}")),
        format!("host forwarding rule for {rule} removed\r\n")
    );
    assert!(
        refused(hp),
        "a connection to {hp} after the rule was removed"
    );
    let info = lan.hmp("info usernet");
    assert!(
        !info
            .lines()
            .any(|l| l.contains("HOST_FORWARD") && l.contains(&format!(" {hp} "))),
        "the rule is gone from info usernet: {info}"
    );
    assert_eq!(
        lan.hmp(&format!("hostfwd_remove u0 {rule}")),
        format!("host forwarding rule for {rule} not found\r\n")
    );
    assert_eq!(
        lan.hmp("hostfwd_add u0 foo:127.0.0.1:1-:2"),
        "Invalid host forwarding rule 'foo:127.0.0.1:1-:2' (Bad protocol name)\r\n"
    );
    lan.stop();
}

/// The `query-netdev` entry of `id`.
fn netdev_entry(c: &mut QmpClient, id: &str) -> Value {
    let list = c.execute_ok("query-netdev", Value::Null);
    list.as_array()
        .unwrap_or_else(|| panic!("query-netdev: {list}"))
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in query-netdev: {list}"))
        .clone()
}

/// Whether binding 127.0.0.1:`port` here fails because it is in use.
fn in_use(port: u16) -> bool {
    match TcpListener::bind(("127.0.0.1", port)) {
        Err(e) => e.kind() == ErrorKind::AddrInUse,
        Ok(_) => false,
    }
}

#[test]
fn netdev_add_del() {
    let dir = TempDir::new();
    let (d, mut c) = Args::new().start_with_qmp(&dir);
    let hp = free_tcp_port();
    let rule = format!("tcp:127.0.0.1:{hp}-:22");
    assert!(refused(hp) && !in_use(hp), "{hp} free before the add");
    let before = fds(d.pid());

    c.execute_ok(
        "netdev_add",
        json!({"id": "u1", "type": "user", "hostfwd": [{"str": rule}]}),
    );
    let entry = netdev_entry(&mut c, "u1");
    assert_eq!(entry["type"], "user", "{entry}");
    assert_eq!(entry["hostfwd"], json!([{"str": rule}]), "{entry}");
    assert!(in_use(hp), "the rule's port is bound after netdev_add");
    drop(connect(
        SocketAddr::from(([127, 0, 0, 1], hp)),
        "to the rule of the added netdev",
    ));

    // What query-netdev says is what netdev_add takes back, and gives the same netdev.
    c.execute_ok("netdev_del", json!({"id": "u1"}));
    assert!(
        wait_until(WAIT, || refused(hp)),
        "{hp} still accepts after netdev_del"
    );
    let mut args = entry.as_object().unwrap().clone();
    args.remove("peer-id");
    c.execute_ok("netdev_add", Value::Object(args));
    assert_eq!(netdev_entry(&mut c, "u1"), entry, "the netdev re-added");
    assert!(in_use(hp), "the rule's port is bound again");

    c.execute_ok("netdev_del", json!({"id": "u1"}));
    let list = c.execute_ok("query-netdev", Value::Null);
    assert!(
        !list.as_array().unwrap().iter().any(|n| n["id"] == "u1"),
        "{list}"
    );
    assert!(
        wait_until(WAIT, || refused(hp) && !in_use(hp)),
        "{hp} still bound after netdev_del"
    );
    assert!(
        wait_until(WAIT, || fds(d.pid()) == before),
        "descriptors after netdev_del: {}, before netdev_add: {before}",
        fds(d.pid())
    );
    drop(c);
    d.stop_clean();
}

/// The `desc` of the error `r`, which must be a GenericError.
fn generic_desc(r: &Value) -> String {
    assert_eq!(r["error"]["class"], "GenericError", "{r}");
    r["error"]["desc"].as_str().unwrap_or_default().to_string()
}

#[test]
fn errors() {
    const SMBD: &str = "/usr/sbin/smbd";
    assert!(
        !Path::new(SMBD).exists(),
        "this test needs a machine without {SMBD}"
    );
    let dir = TempDir::new();
    let (d, mut c) = Args::new().start_with_qmp(&dir);
    let before = fds(d.pid());
    let tmp: PathBuf = std::env::temp_dir();
    let r = c.execute(
        "netdev_add",
        json!({"id": "s", "type": "user", "smb": tmp.to_str().unwrap()}),
    );
    let desc = generic_desc(&r);
    assert!(desc.contains("smbd"), "{r}");
    let r = c.execute(
        "netdev_add",
        json!({"id": "s", "type": "user", "host": "10.0.2.2", "dns": "10.0.2.2"}),
    );
    assert_eq!(generic_desc(&r), "DNS must be different from host");
    let r = c.execute(
        "netdev_add",
        json!({"id": "s", "type": "user", "ipv4": false, "net": "10.0.3.0/24"}),
    );
    assert_eq!(
        generic_desc(&r),
        "IPv4 disabled but netmask/host/dns provided"
    );
    // Nothing of the refused netdevs is left.
    let list = c.execute_ok("query-netdev", Value::Null);
    assert!(
        !list.as_array().unwrap().iter().any(|n| n["id"] == "s"),
        "{list}"
    );
    assert_eq!(fds(d.pid()), before, "descriptors after the refused adds");
    drop(c);
    d.stop_clean();

    // The same refusal on the command line stops the daemon before it is ready.
    let out = Daemon::run_to_exit(&[
        "-cores",
        "0",
        "-netdev",
        &format!("user,id=u9,smb={}", tmp.display()),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("smbd"), "{err}");
}
