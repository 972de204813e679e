//! Shared by the integration test files (`mod common;`): the daemon's command line for
//! tests, UDP ports wired to hubs, and frame assertions that print a useful difference
//! instead of two 9000-byte vectors.
#![allow(dead_code)] // each test file uses a different part

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    frame, free_udp_port, move_link_into, Daemon, Netns, QemuPeer, QmpClient, TempDir, UdpEnd,
};

/// How long a frame that must arrive may take (a loaded 2-core machine).
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to listen for a frame that must not arrive. Frames that do arrive take well
/// under a millisecond here; this is long enough to catch a wrong delivery.
pub const QUIET: Duration = Duration::from_millis(300);

/// A locally administered unicast MAC ending in `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0x50, 0x53, 0x00, 0x00, n]
}

/// The broadcast MAC.
pub const BCAST: [u8; 6] = [0xff; 6];
/// An ethertype no kernel stack acts on (IEEE local experimental).
pub const ETH_EXP: u16 = 0x88b5;
/// The ethertype of probe frames ([`probe`]): not the one real frames use.
pub const ETH_PROBE: u16 = 0x88b6;

/// All drops of a port as `x-query-stats` reports it (every reason summed).
pub fn total_drops(port: &serde_json::Value) -> u64 {
    port["drops"]
        .as_object()
        .unwrap_or_else(|| panic!("a port with drops: {port}"))
        .values()
        .map(|v| v.as_u64().unwrap_or_else(|| panic!("a drop count: {v}")))
        .sum()
}

/// The `i`-th probe frame for [`until_path_works`]: broadcast, [`ETH_PROBE`], 60 bytes.
pub fn probe(i: u8) -> Vec<u8> {
    frame(BCAST, mac(0xee), ETH_PROBE, 60, i)
}

/// A QEMU hub with netdev `spec` and a `socket,udp=` netdev `q` talking to `end`.
pub fn qemu_with(spec: &str, end: &mut UdpEnd) -> QemuPeer {
    let q = udp_spec("q", end);
    QemuPeer::hub(None, &[spec, &q])
}

/// Frames of each of `sizes` both ways between `a` (behind pollswitch) and `q`
/// (behind a peer), once the path works each way, and nothing back to a sender.
pub fn exchange(a: &UdpEnd, q: &UdpEnd, sizes: &[usize], what: &str) {
    until_path_works(a, q, probe, &format!("{what}: pollswitch to QEMU"));
    until_path_works(q, a, probe, &format!("{what}: QEMU to pollswitch"));
    for (k, &len) in sizes.iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, k as u8);
        a.send(&f);
        expect_frame(q, &f, &format!("{what}: {len} bytes pollswitch to QEMU"));
        let g = frame(mac(1), mac(2), ETH_EXP, len, 100 + k as u8);
        q.send(&g);
        expect_frame(a, &g, &format!("{what}: {len} bytes QEMU to pollswitch"));
    }
    expect_nothing(a, &format!("{what}: pollswitch side"));
    expect_nothing(q, &format!("{what}: QEMU side"));
}

/// The daemon's command line, built up netdev by netdev.
///
/// Starts with what every test needs on a 2-core machine: one worker (`-cores 1`), no
/// busy polling (`-poll-us 0`) and a small pool, unless a test overrides them.
#[derive(Debug, Clone)]
pub struct Args(Vec<String>);

impl Args {
    /// `-cores 1 -poll-us 0 -pool-size 1024`.
    pub fn new() -> Args {
        Args::bare()
            .opt("-cores", "1")
            .opt("-poll-us", "0")
            .opt("-pool-size", "1024")
    }

    /// No options at all.
    pub fn bare() -> Args {
        Args(Vec::new())
    }

    /// Adds `key value` (a later one overrides an earlier one in the daemon).
    pub fn opt(mut self, key: &str, value: &str) -> Args {
        self.0.push(key.to_string());
        self.0.push(value.to_string());
        self
    }

    /// Adds `-netdev spec`.
    pub fn netdev(self, spec: &str) -> Args {
        self.opt("-netdev", spec)
    }

    /// Puts netdev `id` on hub `hub` (a hubport named `hp-<id>` peered with it).
    pub fn on_hub(self, id: &str, hub: u32) -> Args {
        self.netdev(&format!("hubport,id=hp-{id},hubid={hub},netdev={id}"))
    }

    /// Adds a `socket,udp=` port `id` talking to `end` on hub `hub`, and points `end`
    /// at it.
    pub fn udp(self, id: &str, hub: u32, end: &mut UdpEnd) -> Args {
        self.netdev(&udp_spec(id, end)).on_hub(id, hub)
    }

    /// The arguments.
    pub fn strs(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }

    /// Starts the daemon and waits until it is ready.
    pub fn start(&self) -> Daemon {
        Daemon::start(&self.strs())
    }

    /// Starts the daemon inside `ns`.
    pub fn start_in(&self, ns: &Netns) -> Daemon {
        Daemon::start_in(ns, &self.strs())
    }

    /// Starts the daemon with QMP on a socket in `dir`; with it, a negotiated client.
    pub fn start_with_qmp(self, dir: &TempDir) -> (Daemon, QmpClient) {
        let qmp = dir.join("qmp.sock");
        let spec = format!("unix:{},server=on,wait=off", qmp.display());
        let d = self.opt("-qmp", &spec).start();
        let c = QmpClient::connect_unix_negotiated(&qmp).expect("connect to the daemon's QMP");
        (d, c)
    }
}

/// Runs busybox ping (`count` echoes of `size` bytes, for at most `wait_s` seconds)
/// inside `ns`; the replies that came back, and ping's output.
pub fn ping_replies(ns: &Netns, to: &str, count: u32, size: u32, wait_s: u32) -> (u32, String) {
    let out = ns.exec(&[
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-s",
        &size.to_string(),
        "-A",
        "-w",
        &wait_s.to_string(),
        to,
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = text
        .split_once(" packets received")
        .and_then(|(a, _)| a.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (got, text)
}

/// Runs busybox ping inside `ns` and asserts that every echo got its reply.
pub fn ping(ns: &Netns, to: &str, count: u32, size: u32) {
    let (got, text) = ping_replies(ns, to, count, size, 10);
    assert_eq!(
        got, count,
        "ping -s {size} {to} from netns {}: {text}",
        ns.name
    );
}

/// `tap,id=ID,ifname=IFNAME,script=no,downscript=no` plus `extra` (`",vnet_hdr=on"`).
pub fn tap_spec(id: &str, ifname: &str, extra: &str) -> String {
    format!("tap,id={id},ifname={ifname},script=no,downscript=no{extra}")
}

/// A new namespace holding `ifname` (moved in from this one) with `cidr` (or none) and
/// the link up.
pub fn ns_with(ifname: &str, cidr: &str) -> Netns {
    let ns = Netns::new();
    move_link_into(ifname, &ns, cidr);
    ns
}

/// Makes `sock` send every datagram as UDP GSO segments of `seg` bytes
/// (`UDP_SEGMENT`, `<linux/udp.h>`), as a QUIC stack sends.
pub fn set_udp_segment(sock: &std::net::UdpSocket, seg: usize) {
    use std::os::fd::AsRawFd;
    const UDP_SEGMENT: libc::c_int = 103;
    let v = seg as libc::c_int;
    // SAFETY: a valid socket and a pointer to an int of the stated size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            UDP_SEGMENT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
}

/// Port `name` of `x-query-stats`.
pub fn port_stats(c: &mut QmpClient, name: &str) -> Value {
    let st = c.execute_ok("x-query-stats", Value::Null);
    st["ports"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no port {name} in x-query-stats: {st}"))
}

/// `socket,id=ID,udp=<end>,localaddr=127.0.0.1:<free port>`, with `end` now sending to
/// that local address.
pub fn udp_spec(id: &str, end: &mut UdpEnd) -> String {
    let port = free_udp_port();
    end.set_target(SocketAddr::from(([127, 0, 0, 1], port)));
    format!(
        "socket,id={id},udp={},localaddr=127.0.0.1:{port}",
        end.local_addr()
    )
}

/// Where `got` and `want` differ, in words (`None` when equal).
pub fn diff(got: &[u8], want: &[u8]) -> Option<String> {
    if got == want {
        return None;
    }
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    Some(match first {
        Some(i) => format!(
            "{} bytes, expected {}; first difference at byte {i}: {:#04x} instead of {:#04x}",
            got.len(),
            want.len(),
            got[i],
            want[i]
        ),
        None => format!(
            "{} bytes, expected {} (one is a prefix of the other)",
            got.len(),
            want.len()
        ),
    })
}

/// Asserts that the next datagram at `end` is exactly `want`.
pub fn expect_frame(end: &UdpEnd, want: &[u8], what: &str) {
    match end.recv_timeout(WAIT) {
        None => panic!(
            "{what}: nothing arrived at {} within {WAIT:?} (expected {} bytes)",
            end.local_addr(),
            want.len()
        ),
        Some(got) => {
            if let Some(d) = diff(&got, want) {
                panic!("{what}: wrong frame at {}: {d}", end.local_addr());
            }
        }
    }
}

/// Asserts that nothing arrives at `end` for [`QUIET`].
pub fn expect_nothing(end: &UdpEnd, what: &str) {
    let got = end.drain(QUIET);
    assert!(
        got.is_empty(),
        "{what}: {} unexpected frame(s) at {}, lengths {:?}",
        got.len(),
        end.local_addr(),
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

/// Sends `probe`-style frames from `from` until one arrives at `to` (a connection being
/// accepted, a group being joined: things a test cannot see happen), then drains
/// the receiving end of every probe still under way. `make(i)` builds the i-th probe.
///
/// # Panics
/// When none arrives within [`WAIT`] x 2.
pub fn until_path_works(from: &UdpEnd, to: &UdpEnd, make: impl Fn(u8) -> Vec<u8>, what: &str) {
    let deadline = Instant::now() + WAIT * 2;
    let mut i = 0u8;
    loop {
        from.send(&make(i));
        i = i.wrapping_add(1);
        if to.recv_timeout(Duration::from_millis(100)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no probe got through within {:?}",
            WAIT * 2
        );
    }
    // Late copies of earlier probes.
    to.drain(QUIET);
}

/// Writes `frame` with QEMU's stream framing (4-byte big-endian length, then the frame).
pub fn write_framed(s: &mut TcpStream, frame: &[u8]) {
    let mut b = (frame.len() as u32).to_be_bytes().to_vec();
    b.extend_from_slice(frame);
    s.write_all(&b)
        .expect("write a framed frame to the TCP peer");
}

/// Reads one frame in QEMU's stream framing, or `None` on timeout. EOF and errors
/// panic (use [`wait_closed`] where the connection is expected to go).
pub fn read_framed(s: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut len = [0u8; 4];
    if !read_exact_until(s, &mut len, deadline) {
        return None;
    }
    let n = u32::from_be_bytes(len) as usize;
    let mut f = vec![0u8; n];
    assert!(
        read_exact_until(s, &mut f, deadline + WAIT),
        "a {n}-byte frame was cut short"
    );
    Some(f)
}

fn read_exact_until(s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> bool {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            assert_eq!(got, 0, "only {got} of {} bytes arrived", buf.len());
            return false;
        }
        s.set_read_timeout(Some(left))
            .expect("set TCP read timeout");
        match s.read(&mut buf[got..]) {
            Ok(0) => panic!("the TCP connection was closed by the switch"),
            Ok(n) => got += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("TCP read: {e}"),
        }
    }
    true
}

/// Whether the switch closes `s` within `timeout` (EOF or reset), discarding anything
/// it sends before that.
pub fn wait_closed(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left))
            .expect("set TCP read timeout");
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The pool's free buffers (`x-query-stats`).
pub fn pool_free(c: &mut QmpClient) -> u64 {
    let st = c.execute_ok("x-query-stats", Value::Null);
    st["pool"]["free"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pool.free: {st}"))
}

/// Open descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Memory mappings of process `pid`.
pub fn map_count(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .expect("read /proc/PID/maps")
        .lines()
        .count()
}
