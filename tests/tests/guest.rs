//! A real guest behind pollswitch: the test guest (`scripts/guest-image`, booted under
//! QEMU TCG by `testbed::guest`) with a virtio-net eth0 on a QEMU `stream` netdev that
//! connects to a pollswitch `stream` server port, on a hub with a tap moved into a
//! namespace. The guest's kernel and the namespace's kernel ping each other across it.
//!
//! ```text
//!  guest (TCG): eth0 10.79.0.2 ─ virtio-net ─ QEMU stream client
//!                                                   ║ unix socket
//!  pollswitch:                   stream server g ─ hub 0 ─ tap t
//!                                                            │ moved
//!  netns: 10.79.0.1 ─────────────────────────────────────────┘
//! ```
//!
//! The same with the guest's NIC on a pollswitch **vhost-user** port (the way VM hosts
//! wire it): QEMU maps its memory to pollswitch, which reads and fills the guest's
//! virtqueues itself; once with pollswitch listening, once with QEMU listening and
//! pollswitch reconnecting to it after a restart (the mode OVS-DPDK recommends).
//!
//! Each guest boots in about 5 to 7 s. A missing guest image fails the test (run
//! scripts/setup-host); nothing here skips.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ping, port_stats, Args};
use tests::testbed::guest::{shared_memory_args, virtio_net_args, Console, Guest, GuestRun};
use tests::{free_tcp_port, move_link_into, unique, wait_until, Daemon, Netns, QmpClient, TempDir};

/// Longest a guest may take to boot and run its script (a loaded 2-core machine).
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The guest's eth0 MAC.
const GUEST_MAC: &str = "02:50:53:00:00:42";
/// The namespace's address (on the tap) and the guest's.
const NS_ADDR: &str = "10.79.0.1";
const GUEST_ADDR: &str = "10.79.0.2";

/// Guest script lines that configure eth0 and show it (`set -e`: a missing eth0 fails).
const CONFIGURE: &str = "set -e
ip -o link show eth0
ip addr add 10.79.0.2/24 dev eth0
ip link set eth0 up
";

/// How the guest's NIC reaches pollswitch.
#[derive(Clone, Copy)]
enum Attach {
    /// A QEMU stream client of a pollswitch stream server.
    Stream,
    /// A pollswitch vhost-user port listening, QEMU's chardev connecting.
    VhostServer,
    /// QEMU's chardev listening, the pollswitch port connecting (and reconnecting).
    VhostClient,
}

/// pollswitch with tap `tap` (port `t`) and the guest's port `g` at `sock` on hub 0,
/// QMP on a socket in `dir`.
fn pollswitch(tap: &str, sock: &Path, dir: &TempDir) -> (Daemon, QmpClient) {
    pollswitch_for(Attach::Stream, tap, sock, dir)
}

fn pollswitch_for(how: Attach, tap: &str, sock: &Path, dir: &TempDir) -> (Daemon, QmpClient) {
    let args = Args::new()
        .netdev(&format!("tap,id=t,ifname={tap},script=no,downscript=no"))
        .on_hub("t", 0);
    let args = match how {
        Attach::Stream => args.netdev(&format!(
            "stream,id=g,server=on,addr.type=unix,addr.path={}",
            sock.display()
        )),
        Attach::VhostServer | Attach::VhostClient => {
            let mode = match how {
                Attach::VhostServer => "server=on",
                _ => "server=off,reconnect=1",
            };
            args.opt(
                "-chardev",
                &format!("socket,id=cg,path={},{mode}", sock.display()),
            )
            .netdev("vhost-user,id=g,chardev=cg")
        }
    };
    args.on_hub("g", 0).start_with_qmp(dir)
}

/// The guest's arguments for `how`: its memory shared (vhost-user needs it) and eth0
/// on a vhost-user netdev whose chardev connects to `sock`, or listens there.
fn vhost_guest_args(how: Attach, sock: &Path) -> Vec<String> {
    let mut a = shared_memory_args();
    let listen = match how {
        Attach::VhostClient => ",server=on,wait=off",
        _ => "",
    };
    a.push("-chardev".into());
    a.push(format!("socket,id=vu0,path={}{listen}", sock.display()));
    a.extend(virtio_net_args("vhost-user,id=n0,chardev=vu0", GUEST_MAC).expect("id= given"));
    a
}

/// The guest's arguments: eth0 on a QEMU stream client of `sock`, reconnecting every
/// 200 ms when the server goes away.
fn guest_args(sock: &Path) -> Vec<String> {
    let spec = format!(
        "stream,id=n0,server=off,addr.type=unix,addr.path={},reconnect-ms=200",
        sock.display()
    );
    virtio_net_args(&spec, GUEST_MAC).expect("a netdev spec with id=")
}

/// Asserts that the guest's script saw its virtio-net eth0 (the `ip -o link` line).
fn assert_eth0(text: &str) {
    assert!(
        text.contains("eth0:") && text.contains(GUEST_MAC),
        "the guest has no virtio-net eth0 with MAC {GUEST_MAC}:\n{text}"
    );
}

/// Asserts that port `name` moved at least `n` frames each way.
fn assert_port_traffic(c: &mut QmpClient, name: &str, n: u64) {
    let st = port_stats(c, name);
    let (rx, tx) = (st["rx-packets"].as_u64(), st["tx-packets"].as_u64());
    assert!(
        rx >= Some(n) && tx >= Some(n),
        "port {name} moved fewer than {n} frames each way: {st}"
    );
}

/// Asserts that the tap in `ns` carried at least `n` frames each way.
fn assert_tap_traffic(ns: &Netns, tap: &str, n: u64) {
    let (rx, _, tx, _) = ns
        .link_counters(tap)
        .unwrap_or_else(|| panic!("no counters for {tap} in netns {}", ns.name));
    assert!(
        rx >= n && tx >= n,
        "tap {tap} carried rx {rx} / tx {tx} frames, fewer than {n} each way"
    );
}

/// Asserts that the guest's script saw eth0, got its three echoes back and ended well,
/// and the premise: the echoes crossed pollswitch and the tap (ARP and three echoes each
/// way at least), not some other path.
fn assert_pinged_through(run: &GuestRun, c: &mut QmpClient, ns: &Netns, tap: &str) {
    let out = run.output();
    assert_eth0(out);
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "the guest's pings did not all come back:\n{}",
        run.console
    );
    assert_eq!(run.exit_code, 0, "{}", run.console);
    assert_port_traffic(c, "g", 4);
    assert_port_traffic(c, "t", 4);
    assert_tap_traffic(ns, tap, 4);
}

fn finished(run: Result<GuestRun, tests::testbed::Error>) -> GuestRun {
    let run = run.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "guest: booted in {:.1?}, done in {:.1?}",
        run.boot, run.elapsed
    );
    run
}

#[test]
fn a_guest_pings_a_namespace_through_pollswitch() {
    let dir = TempDir::new();
    let sock = dir.join("guest.sock");
    let tap = unique("pgt");
    let (d, mut c) = pollswitch(&tap, &sock, &dir);
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));

    let script = format!("{CONFIGURE}ping -c 3 -w 20 {NS_ADDR}\n");
    let run = finished(Guest::run(None, &guest_args(&sock), &script, GUEST_TIMEOUT));
    assert_pinged_through(&run, &mut c, &ns, &tap);
    d.stop_clean();
}

/// The guest's script for the test below: eth0 up, then wait (at most 60 s) until its
/// kernel has answered `n` echo requests (`OutEchoReps` in /proc/net/snmp), saying how
/// many.
fn answer_script(n: u32) -> String {
    format!(
        r#"{CONFIGURE}replies() {{
    awk '/^Icmp:/ {{ if (!c) {{ for (i = 1; i <= NF; i++) if ($i == "OutEchoReps") c = i }} else print $c }}' /proc/net/snmp
}}
echo GUEST-UP
i=0
while [ "$(replies)" -lt {n} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done
echo "GUEST-ANSWERED $(replies)"
[ "$(replies)" -ge {n} ]
"#
    )
}

/// The end of a restart test, once the guest answers ARP through the new switch: three
/// more echoes, then the guest's script ends having answered six in all, and the new
/// port and tap carried them.
fn answered_across_the_restart(guest: Guest, c: &mut QmpClient, ns: &Netns, tap: &str) {
    ping(ns, GUEST_ADDR, 3, 56);
    let run = finished(guest.finish(GUEST_TIMEOUT));
    let answered = run
        .output()
        .split_once("GUEST-ANSWERED ")
        .and_then(|(_, n)| n.lines().next()?.trim().parse::<u32>().ok());
    assert_eq!(
        answered,
        Some(6),
        "the guest's count of echoes answered:\n{}",
        run.console
    );
    assert_eq!(run.exit_code, 0, "{}", run.console);
    assert_port_traffic(c, "g", 4);
    assert_tap_traffic(ns, tap, 4);
}

#[test]
fn a_running_guest_answers_pings_across_a_switch_restart() {
    let dir = TempDir::new();
    let sock = dir.join("guest.sock");
    let tap = unique("pgt");
    let (d, mut c) = pollswitch(&tap, &sock, &dir);
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));

    let mut guest =
        Guest::spawn(None, &guest_args(&sock), &answer_script(6)).unwrap_or_else(|e| panic!("{e}"));
    guest
        .wait_for("GUEST-UP", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eth0(&guest.console());
    ping(&ns, GUEST_ADDR, 3, 56);
    assert_port_traffic(&mut c, "g", 4);
    drop(c);
    d.stop_clean();

    // A new switch on the same socket with a new tap (the old name may stay busy for a
    // moment): the guest's QEMU reconnects within 200 ms and the guest, still running,
    // answers again. ARP probes (which the guest's echo count ignores) show when the
    // path is back, so that exactly three more echoes end the guest's script.
    let tap2 = unique("pgt");
    let (d, mut c) = pollswitch(&tap2, &sock, &dir);
    move_link_into(&tap2, &ns, &format!("{NS_ADDR}/24"));
    let arping = [
        "busybox", "arping", "-f", "-q", "-c", "1", "-w", "1", "-I", &tap2, GUEST_ADDR,
    ];
    assert!(
        wait_until(Duration::from_secs(20), || ns
            .exec(&arping)
            .status
            .success()),
        "the guest did not answer ARP within 20 s of the switch's restart:\n{}",
        guest.console()
    );
    answered_across_the_restart(guest, &mut c, &ns, &tap2);
    d.stop_clean();
}

#[test]
fn a_guest_on_vhost_user_pings_a_namespace() {
    let dir = TempDir::new();
    let sock = dir.join("vhost.sock");
    let tap = unique("pgt");
    let (d, mut c) = pollswitch_for(Attach::VhostServer, &tap, &sock, &dir);
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));

    // Then a TCP connection from the guest: with checksum offload negotiated the guest
    // leaves its TCP checksums partial, pollswitch finishes them, and the namespace's
    // kernel, which checks them, accepts the connection and its bytes.
    let listener = ns.spawn(&["busybox", "nc", "-l", "-p", "7777"]);
    let script = format!(
        "{CONFIGURE}ping -c 3 -w 20 {NS_ADDR}\necho hello-from-the-guest | nc -w 5 {NS_ADDR} 7777\n"
    );
    let args = vhost_guest_args(Attach::VhostServer, &sock);
    let run = finished(Guest::run(None, &args, &script, GUEST_TIMEOUT));
    let heard = listener.wait_with_output().expect("nc in the namespace");
    assert_eq!(
        String::from_utf8_lossy(&heard.stdout).trim(),
        "hello-from-the-guest",
        "the guest's TCP bytes at the namespace ({}):\n{}",
        String::from_utf8_lossy(&heard.stderr),
        run.console
    );
    assert_pinged_through(&run, &mut c, &ns, &tap);
    // What the guest's QEMU negotiated, and the guest's address as the port saw it.
    let st = port_stats(&mut c, "g");
    let v = &st["vhost-user"];
    assert_eq!(v["connects"], 1, "{st}");
    let feats = v["features"].to_string();
    for f in ["version-1", "mrg-rxbuf", "event-idx", "csum"] {
        assert!(feats.contains(f), "{f} not negotiated: {st}");
    }
    eprintln!("negotiated with the guest's QEMU: {}", v["features"]);
    // The premise of the TCP check: the guest did leave checksums to the port.
    assert!(
        v["checksums-completed"].as_u64().is_some_and(|n| n >= 2),
        "no partial checksums finished: {st}"
    );
    assert_eq!(v["guest-mac"], GUEST_MAC, "{st}");
    // QEMU quit with the guest: the port is down again and holds no guest memory.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let st = port_stats(&mut c, "g");
            st["carrier"] == false && st["vhost-user"]["memory-regions"] == 0
        }),
        "{}",
        port_stats(&mut c, "g")
    );
    d.stop_clean();
}

#[test]
fn a_running_guest_on_vhost_user_answers_across_a_switch_restart() {
    let dir = TempDir::new();
    let sock = dir.join("vhost.sock");
    let tap = unique("pgt");
    // QEMU listens (server=on,wait=off): the guest boots before any switch is there.
    let args = vhost_guest_args(Attach::VhostClient, &sock);
    let mut guest = Guest::spawn(None, &args, &answer_script(6)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wait_until(Duration::from_secs(20), || sock.exists()),
        "QEMU did not listen on {}:\n{}",
        sock.display(),
        guest.console()
    );
    let (d, mut c) = pollswitch_for(Attach::VhostClient, &tap, &sock, &dir);
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));
    guest
        .wait_for("GUEST-UP", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eth0(&guest.console());
    let arping = |t: &str| {
        let a = [
            "busybox", "arping", "-f", "-q", "-c", "1", "-w", "1", "-I", t, GUEST_ADDR,
        ];
        wait_until(Duration::from_secs(20), || ns.exec(&a).status.success())
    };
    assert!(
        arping(&tap),
        "no ARP answer from the guest:\n{}",
        guest.console()
    );
    ping(&ns, GUEST_ADDR, 3, 56);
    assert_port_traffic(&mut c, "g", 4);
    drop(c);
    d.stop_clean();

    // A new switch connects to the same QEMU; the guest, still running, answers again.
    let tap2 = unique("pgt");
    let (d, mut c) = pollswitch_for(Attach::VhostClient, &tap2, &sock, &dir);
    move_link_into(&tap2, &ns, &format!("{NS_ADDR}/24"));
    assert!(
        arping(&tap2),
        "the guest did not answer ARP within 20 s of the switch's restart:\n{}",
        guest.console()
    );
    answered_across_the_restart(guest, &mut c, &ns, &tap2);
    d.stop_clean();
}

#[test]
fn a_guest_on_vhost_user_migrates_live_between_two_qemus() {
    // Two vhost-user ports on the hub, one per QEMU; the guest moves from the first
    // QEMU to the second (live migration over TCP on this host) while the namespace
    // pings it. The dirty-page log tells the source QEMU which pages pollswitch wrote
    // (frames into the guest, used rings) so they are sent again.
    let dir = TempDir::new();
    let (sa, sb) = (dir.join("a.sock"), dir.join("b.sock"));
    let tap = unique("pgt");
    let (d, mut c) = Args::new()
        .netdev(&format!("tap,id=t,ifname={tap},script=no,downscript=no"))
        .on_hub("t", 0)
        .opt(
            "-chardev",
            &format!("socket,id=ca,path={},server=on", sa.display()),
        )
        .netdev("vhost-user,id=ga,chardev=ca")
        .on_hub("ga", 0)
        .opt(
            "-chardev",
            &format!("socket,id=cb,path={},server=on", sb.display()),
        )
        .netdev("vhost-user,id=gb,chardev=cb")
        .on_hub("gb", 0)
        .start_with_qmp(&dir);
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));

    // The guest answers for as long as the test runs (it is killed at the end).
    let script = answer_script(1_000_000);
    let qmp = |name: &str| dir.join(name);
    let mut a_args = vhost_guest_args(Attach::VhostServer, &sa);
    a_args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp("qa").display()),
    ]);
    let mut guest_a = Guest::spawn(None, &a_args, &script).unwrap_or_else(|e| panic!("{e}"));
    guest_a
        .wait_for("GUEST-UP", GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    ping(&ns, GUEST_ADDR, 3, 56);

    let port = free_tcp_port();
    let mut b_args = vhost_guest_args(Attach::VhostServer, &sb);
    b_args.extend([
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp("qb").display()),
    ]);
    b_args.extend(["-incoming".into(), format!("tcp:127.0.0.1:{port}")]);
    let mut guest_b = Guest::spawn(None, &b_args, &script).unwrap_or_else(|e| panic!("{e}"));
    guest_b.migrated_in();
    let mut qa = QmpClient::connect_unix_waiting(&qmp("qa"), Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("QMP of the source QEMU: {e}"));
    assert!(
        wait_until(Duration::from_secs(20), || port_stats(&mut c, "gb")
            ["vhost-user"]["connects"]
            == 1),
        "the destination QEMU did not connect: {}",
        port_stats(&mut c, "gb")
    );

    // Pings all through the migration, from the namespace (0.1 s apart).
    let pinger_started = std::time::Instant::now();
    let pinger = ns.spawn(&[
        "busybox", "ping", "-c", "60", "-i", "0.1", "-w", "20", GUEST_ADDR,
    ]);
    std::thread::sleep(Duration::from_millis(500));
    qa.execute_ok(
        "migrate",
        serde_json::json!({"uri": format!("tcp:127.0.0.1:{port}")}),
    );
    let t = std::time::Instant::now();
    let t_migrate = pinger_started.elapsed();
    let status = loop {
        let st = qa.execute_ok("query-migrate", serde_json::Value::Null);
        let s = st["status"].as_str().unwrap_or("").to_string();
        if matches!(s.as_str(), "completed" | "failed" | "cancelled")
            || t.elapsed() > Duration::from_secs(60)
        {
            break st;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status["status"],
        "completed",
        "migration: {status}\nsource console:\n{}",
        guest_a.console()
    );
    eprintln!(
        "migration: from {t_migrate:.1?} into the pings, {} ms in all, downtime {} ms, {} MiB \
         sent",
        status["total-time"],
        status["downtime"],
        status["ram"]["transferred"].as_u64().unwrap_or(0) >> 20
    );
    // The premise: the source QEMU logged with us, and pollswitch marked pages.
    let pa = port_stats(&mut c, "ga");
    let logged = pa["vhost-user"]["dirty-pages-logged"].as_u64();
    assert!(
        logged.is_some_and(|n| n > 0),
        "no dirty pages logged by ga: {pa}"
    );
    assert!(
        pa["vhost-user"]["features"].to_string().contains("log-all"),
        "{pa}"
    );

    let out = pinger.wait_with_output().expect("ping");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seqs: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("seq=")?.1.split_whitespace().next())
        .collect();
    eprintln!(
        "echoes answered (seq): {} | {}",
        seqs.join(","),
        text.lines().rev().take(2).collect::<Vec<_>>().join(" | ")
    );
    let received: u32 = text
        .split_once(" packets received")
        .and_then(|(a, _)| a.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    // The switch-over takes milliseconds (QEMU's downtime); an echo or two may fall
    // into it.
    assert!(
        received >= 54,
        "only {received} of 60 echoes came back across the migration:\n{text}"
    );
    // After the move the guest answers through the second port only.
    let gb0 = port_stats(&mut c, "gb")["tx-packets"].as_u64().unwrap_or(0);
    ping(&ns, GUEST_ADDR, 3, 56);
    let gb1 = port_stats(&mut c, "gb")["tx-packets"].as_u64().unwrap_or(0);
    assert!(
        gb1 >= gb0 + 3,
        "the echoes did not go through gb: {gb0} → {gb1}"
    );
    drop(qa);
    guest_a.kill();
    assert!(
        guest_b.running(),
        "the destination QEMU died:\n{}",
        guest_b.console()
    );
    guest_b.kill();
    d.stop_clean();
}
