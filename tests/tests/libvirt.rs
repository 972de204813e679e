//! A guest wired the way VM hosts wire it: libvirtd (started by the test bed when it is
//! not running) defines and starts a TCG domain whose `<interface type='vhostuser'>`
//! connects to a pollswitch vhost-user port, on a hub with a tap moved into a namespace;
//! the guest pings the namespace through pollswitch.
//!
//! ```text
//!  virsh define/start ─► libvirtd ─► QEMU (libvirt-qemu:kvm, memfd memory shared)
//!  guest (TCG): eth0 10.79.2.2 ─ virtio-net ─ vhost-user chardev (client)
//!                                                   ║ unix socket, chowned to QEMU's user
//!  pollswitch:              vhost-user server g ─ hub 0 ─ tap t
//!                                                           │ moved
//!  netns: 10.79.2.1 ────────────────────────────────────────┘
//! ```
//!
//! pollswitch listens and QEMU connects (`<source ... mode='client'/>`): the backend's
//! socket exists before the domain starts, as with OVS-DPDK's `dpdkvhostuser` ports.
//! The guest boots in about 5 to 7 s. A libvirtd that cannot be started, or a missing
//! guest image, fails the test (run scripts/setup-host); nothing here skips.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{port_stats, Args};
use tests::testbed::libvirt::{grant_qemu, xml_escape, GuestDomain, Libvirt};
use tests::testbed::GuestImage;
use tests::{move_link_into, unique, wait_until, Daemon, Netns, QmpClient, TempDir};

/// Longest a domain may take to boot and run its script (a loaded 2-core machine).
const GUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The guest's eth0 MAC.
const GUEST_MAC: &str = "02:50:53:00:00:46";
/// The namespace's address (on the tap).
const NS_ADDR: &str = "10.79.2.1";

/// pollswitch with tap `tap` (port `t`) and a vhost-user port `g` listening at `sock`,
/// both on hub 0; QMP on a socket in `dir`.
fn pollswitch(tap: &str, sock: &Path, dir: &TempDir) -> (Daemon, QmpClient) {
    Args::new()
        .netdev(&format!("tap,id=t,ifname={tap},script=no,downscript=no"))
        .on_hub("t", 0)
        .opt(
            "-chardev",
            &format!("socket,id=cg,path={},server=on", sock.display()),
        )
        .netdev("vhost-user,id=g,chardev=cg")
        .on_hub("g", 0)
        .start_with_qmp(dir)
}

/// The guest's eth0 as libvirt describes it: virtio on a vhost-user chardev that
/// connects to `sock`, no option ROM (the guest boots from its kernel).
fn vhost_user_interface(sock: &Path) -> String {
    format!(
        "    <interface type='vhostuser'>
      <mac address='{GUEST_MAC}'/>
      <source type='unix' path='{}' mode='client'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>",
        xml_escape(&sock.to_string_lossy())
    )
}

#[test]
fn a_libvirt_domain_on_vhost_user_pings_a_namespace() {
    let lv = Libvirt::ensure().unwrap_or_else(|e| panic!("{e}"));
    let image = GuestImage::find().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new();
    let sock = dir.join("vhost.sock");
    let tap = unique("pgt");
    let (d, mut c) = pollswitch(&tap, &sock, &dir);
    // QEMU runs as libvirt-qemu and must be allowed to connect to root's socket.
    grant_qemu(&sock).unwrap_or_else(|e| panic!("{e}"));
    let ns = Netns::new();
    move_link_into(&tap, &ns, &format!("{NS_ADDR}/24"));

    let script = format!(
        "set -e
ip -o link show eth0
ip addr add 10.79.2.2/24 dev eth0
ip link set eth0 up
ping -c 3 -w 20 {NS_ADDR}
"
    );
    let name = unique("pslv");
    let mut guest = GuestDomain::start(&lv, &image, &name, &script, &vhost_user_interface(&sock))
        .unwrap_or_else(|e| panic!("{e}"));
    let run = guest
        .finish(GUEST_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "domain {name}: booted in {:.1?}, done in {:.1?}",
        run.boot, run.elapsed
    );
    let out = run.output();
    assert!(
        out.contains("eth0:") && out.contains(GUEST_MAC),
        "the guest has no virtio-net eth0 with MAC {GUEST_MAC}:\n{}",
        run.console
    );
    assert!(
        out.contains("3 packets transmitted, 3 packets received"),
        "the guest's pings did not all come back:\n{}",
        run.console
    );
    assert_eq!(run.exit_code, 0, "{}", run.console);

    // The premise: libvirt gave QEMU shared memory and a vhost-user netdev on our
    // socket, and the echoes crossed pollswitch's vhost-user port and the tap.
    let log = guest.domain().qemu_log();
    for want in [
        "memory-backend-memfd",
        "vhost-user",
        &sock.to_string_lossy(),
    ] {
        assert!(log.contains(want), "no {want:?} in QEMU's command:\n{log}");
    }
    for port in ["g", "t"] {
        let st = port_stats(&mut c, port);
        let (rx, tx) = (st["rx-packets"].as_u64(), st["tx-packets"].as_u64());
        assert!(
            rx >= Some(4) && tx >= Some(4),
            "port {port} moved fewer than 4 frames (ARP, 3 echoes) each way: {st}"
        );
    }
    let (rx, _, tx, _) = ns
        .link_counters(&tap)
        .unwrap_or_else(|| panic!("no counters for {tap} in netns {}", ns.name));
    assert!(rx >= 4 && tx >= 4, "tap {tap} carried rx {rx} / tx {tx}");
    let st = port_stats(&mut c, "g");
    let v = &st["vhost-user"];
    assert!(v["connects"].as_u64() >= Some(1), "{st}");
    let feats = v["features"].to_string();
    for f in ["version-1", "mrg-rxbuf", "event-idx"] {
        assert!(feats.contains(f), "{f} not negotiated: {st}");
    }
    assert_eq!(v["guest-mac"], GUEST_MAC, "{st}");

    // Dropping the guest destroys and undefines the domain; pollswitch sees QEMU go.
    let log_path = guest.domain().qemu_log_path();
    drop(guest);
    let listed = lv
        .virsh(&["list", "--all", "--name"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !listed.lines().any(|l| l.trim() == name),
        "domain {name} still defined:\n{listed}"
    );
    assert!(!log_path.exists(), "{} left behind", log_path.display());
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
