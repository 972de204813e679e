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
//! Each guest boots in about 5 to 7 s. A missing guest image fails the test (run
//! scripts/setup-host); nothing here skips.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{ping, port_stats, Args};
use tests::testbed::guest::{virtio_net_args, Guest, GuestRun};
use tests::{move_link_into, unique, wait_until, Daemon, Netns, QmpClient, TempDir};

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

/// pollswitch with tap `tap` (port `t`) and a unix stream server at `sock` (port `g`)
/// on hub 0, QMP on a socket in `dir`.
fn pollswitch(tap: &str, sock: &Path, dir: &TempDir) -> (Daemon, QmpClient) {
    Args::new()
        .netdev(&format!("tap,id=t,ifname={tap},script=no,downscript=no"))
        .on_hub("t", 0)
        .netdev(&format!(
            "stream,id=g,server=on,addr.type=unix,addr.path={}",
            sock.display()
        ))
        .on_hub("g", 0)
        .start_with_qmp(dir)
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
    let out = run.output();
    assert_eth0(out);
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "the guest's pings did not all come back:\n{}",
        run.console
    );
    assert_eq!(run.exit_code, 0, "{}", run.console);
    // The premise: the echoes crossed pollswitch and the tap (ARP and three echoes each
    // way at least), not some other path.
    assert_port_traffic(&mut c, "g", 4);
    assert_port_traffic(&mut c, "t", 4);
    assert_tap_traffic(&ns, &tap, 4);
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
    ping(&ns, GUEST_ADDR, 3, 56);
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
    assert_port_traffic(&mut c, "g", 4);
    assert_tap_traffic(&ns, &tap2, 4);
    d.stop_clean();
}
