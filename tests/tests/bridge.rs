//! `bridge` netdevs and `tap,helper=`: a tap on a real Linux bridge, attached by the
//! daemon itself, by QEMU's own `qemu-bridge-helper`, or by a helper the test writes,
//! with exact frames both ways between a veth end on the bridge and the switch.
//!
//! ```text
//!  netns (the test's): RawSock ── ve ═ vb ── brX ── tap (attached by daemon/helper)
//!                                                    │
//!                      daemon: bridge,id=b0 ─ hub 0 ─ socket,udp= ── UdpEnd (in netns)
//! ```

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{diff, mac, udp_spec, Args, BCAST, ETH_EXP, WAIT};
use serde_json::{json, Value};
use tests::{
    bin_path, frame, unique, wait_until, Daemon, Netns, QmpClient, RawSock, TempDir, UdpEnd,
};

/// How long a tap may stay around after the daemon closed it (io_uring teardown).
const GONE: Duration = Duration::from_secs(10);

/// QEMU's bridge helper as Debian installs it, and the ACL it reads.
const QEMU_HELPER: &str = "/usr/lib/qemu/qemu-bridge-helper";
const ACL_DIR: &str = "/etc/qemu";
const ACL: &str = "/etc/qemu/bridge.conf";

/// `IFF_VNET_HDR` from `<linux/if_tun.h>`.
const IFF_VNET_HDR: u32 = 0x4000;

/// One test at a time touches /etc/qemu.
static ACL_LOCK: Mutex<()> = Mutex::new(());

/// A namespace with bridge `br` (up) and a veth pair `vb` (on the bridge) / `ve`
/// (10.91.0.1/24), plus a raw socket on `ve`.
struct Lan {
    ns: Netns,
    br: String,
    raw: RawSock,
}

fn lan() -> Lan {
    let ns = Netns::new();
    let br = unique("pbr");
    let ip = |args: &[&str]| {
        ns.ip(args)
            .unwrap_or_else(|e| panic!("ip -n {} {args:?}: {e}", ns.name))
    };
    ip(&["link", "add", "name", &br, "type", "bridge"]);
    ip(&["link", "set", &br, "up"]);
    ip(&["link", "add", "vb", "type", "veth", "peer", "name", "ve"]);
    ip(&["link", "set", "vb", "master", &br, "up"]);
    ip(&["addr", "add", "10.91.0.1/24", "dev", "ve"]);
    ip(&["link", "set", "ve", "up"]);
    let raw = RawSock::open_in(&ns, "ve");
    Lan { ns, br, raw }
}

impl Lan {
    /// The links enslaved to the bridge, other than `vb`.
    fn taps(&self) -> Vec<String> {
        let out = self
            .ns
            .exec_ok(&["ip", "-o", "link", "show", "master", &self.br]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n != "vb")
            .collect()
    }

    /// Waits until exactly one tap is on the bridge and returns its name.
    fn the_tap(&self) -> String {
        let mut taps = Vec::new();
        wait_until(WAIT, || {
            taps = self.taps();
            taps.len() == 1
        });
        assert_eq!(taps.len(), 1, "links on {} besides vb: {taps:?}", self.br);
        taps.remove(0)
    }

    fn tun_flags(&self, ifname: &str) -> u32 {
        let s = self
            .ns
            .exec_ok(&["cat", &format!("/sys/class/net/{ifname}/tun_flags")]);
        u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).expect("hex tun_flags")
    }

    /// The next frame on `ve` from `src` with our ethertype.
    fn recv_from(&self, src: [u8; 6]) -> Option<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        while let Some(f) = self
            .raw
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if f.len() >= 14 && f[6..12] == src && f[12..14] == ETH_EXP.to_be_bytes() {
                return Some(f);
            }
        }
        None
    }

    /// Frames of several sizes both ways between `ve` and `end` (through the bridge,
    /// the tap and the switch's hub).
    fn both_ways(&self, end: &UdpEnd, what: &str) {
        for (i, len) in [60usize, 14, 1514].into_iter().enumerate() {
            let seed = i as u8;
            let out = frame(BCAST, mac(1), ETH_EXP, len, seed);
            self.raw.send(&out);
            expect_ours(end, &out, &format!("{what}: ve -> switch, {len} bytes"));
            let back = frame(BCAST, mac(2), ETH_EXP, len, seed + 100);
            end.send(&back);
            match self.recv_from(mac(2)) {
                None => panic!("{what}: switch -> ve, {len} bytes: nothing within {WAIT:?}"),
                Some(got) => {
                    if let Some(d) = diff(&got, &back) {
                        panic!("{what}: switch -> ve, {len} bytes: {d}");
                    }
                }
            }
        }
    }
}

/// Asserts that the next frame at `end` with `want`'s source and ethertype is exactly
/// `want`. Others are skipped and shown on stderr: the kernel's own, such as the IGMPv3
/// report (224.0.0.22, for 224.0.0.106) seen now and then when the links come up.
fn expect_ours(end: &UdpEnd, want: &[u8], what: &str) {
    let deadline = Instant::now() + WAIT;
    while let Some(got) = end.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if got.len() >= 14 && got[6..14] == want[6..14] {
            if let Some(d) = diff(&got, want) {
                panic!("{what}: wrong frame at {}: {d}", end.local_addr());
            }
            return;
        }
        eprintln!(
            "{what}: skipped a frame not ours: {:02x?}",
            &got[..got.len().min(64)]
        );
    }
    panic!(
        "{what}: nothing arrived at {} within {WAIT:?}",
        end.local_addr()
    );
}

/// A daemon in `lan`'s namespace with `spec` (id b0) on hub 0 with a UDP port to a
/// `UdpEnd` in the namespace, and QMP on a unix socket.
fn start(lan: &Lan, spec: &str) -> (Daemon, UdpEnd, QmpClient, TempDir) {
    let mut end = lan.ns.enter(UdpEnd::new);
    let dir = TempDir::new();
    let sock = dir.join("qmp.sock");
    let d = Args::new()
        .opt(
            "-qmp",
            &format!("unix:{},server=on,wait=off", sock.display()),
        )
        .netdev(spec)
        .on_hub("b0", 0)
        .netdev(&udp_spec("u0", &mut end))
        .on_hub("u0", 0)
        .start_in(&lan.ns);
    let c = QmpClient::connect_unix_negotiated(&sock).expect("connect to QMP");
    (d, end, c, dir)
}

fn error_desc(r: &Value) -> String {
    r.get("error")
        .unwrap_or_else(|| panic!("expected an error, got {r}"))["desc"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// netdev_del of b0 (and its hubport) removes the tap from the bridge and the system.
fn del_and_check_gone(lan: &Lan, c: &mut QmpClient, tap: &str) {
    c.execute_ok("netdev_del", json!({"id": "hp-b0"}));
    c.execute_ok("netdev_del", json!({"id": "b0"}));
    assert!(
        wait_until(GONE, || lan.taps().is_empty() && !lan.ns.has_link(tap)),
        "tap {tap} still there {GONE:?} after netdev_del: {:?}",
        lan.taps()
    );
}

#[test]
fn bridge_without_helper_attaches_a_tap_that_passes_frames_and_goes_with_netdev_del() {
    let lan = lan();
    let (d, end, mut c, _dir) = start(&lan, &format!("bridge,id=b0,br={}", lan.br));
    let tap = lan.the_tap();
    let show = lan.ns.exec_ok(&["ip", "link", "show", "dev", &tap]);
    assert!(show.contains(",UP"), "tap {tap} is not up: {show}");
    assert!(
        lan.tun_flags(&tap) & IFF_VNET_HDR != 0,
        "a bridge tap carries a vnet header, as QEMU's"
    );
    let addr = lan
        .ns
        .exec_ok(&["cat", &format!("/sys/class/net/{tap}/address")]);
    assert!(addr.starts_with("fe:"), "tap MAC {addr} should start fe:");
    lan.both_ways(&end, "bridge (no helper)");
    del_and_check_gone(&lan, &mut c, &tap);

    // A missing bridge: refused, naming it, and no tap is left behind.
    let r = c.execute(
        "netdev_add",
        json!({"id": "b1", "type": "bridge", "br": "nosuchbr"}),
    );
    let desc = error_desc(&r);
    assert!(
        desc.contains("failed to get mtu of bridge `nosuchbr'") && desc.contains("No such device"),
        "{desc}"
    );
    // Not a bridge: the kernel's refusal of SIOCBRADDIF, and the tap goes again.
    let r = c.execute(
        "netdev_add",
        json!({"id": "b1", "type": "bridge", "br": "ve"}),
    );
    let desc = error_desc(&r);
    assert!(desc.contains("to bridge `ve'"), "{desc}");
    assert!(wait_until(GONE, || lan
        .ns
        .exec_ok(&["ip", "-o", "link", "show", "type", "tun"])
        .trim()
        .is_empty()));
    drop(c);
    d.stop_clean();
}

#[test]
fn a_missing_bridge_on_the_command_line_is_refused() {
    let ns = Netns::new();
    let br = unique("pnb");
    let bin = bin_path("pollswitch").display().to_string();
    let spec = format!("bridge,id=b0,br={br}");
    let d = ns.exec(&["timeout", "-s", "KILL", "10", &bin, "-netdev", &spec]);
    let text = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success(), "{text}");
    assert!(
        text.contains(&format!("failed to get mtu of bridge `{br}'")),
        "{text}"
    );
}

/// Creates /etc/qemu/bridge.conf allowing `brs` when it does not exist, and removes
/// exactly what it made on drop.
struct AclFile {
    made_dir: bool,
}

impl AclFile {
    fn create(brs: &[&str]) -> Option<AclFile> {
        if Path::new(ACL).exists() {
            return None;
        }
        let made_dir = !Path::new(ACL_DIR).exists();
        if made_dir {
            fs::create_dir(ACL_DIR).expect("mkdir /etc/qemu");
        }
        let text: String = brs.iter().map(|b| format!("allow {b}\n")).collect();
        fs::write(ACL, text).expect("write /etc/qemu/bridge.conf");
        Some(AclFile { made_dir })
    }
}

impl Drop for AclFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(ACL);
        if self.made_dir {
            let _ = fs::remove_dir(ACL_DIR);
        }
    }
}

/// A helper of the test's own in Python: the qemu-bridge-helper protocol (tap with
/// IFF_VNET_HDR, attached with `ip`, sent back with SCM_RIGHTS and one byte).
const PY_HELPER: &str = r#"#!/usr/bin/python3
import fcntl, os, socket, struct, subprocess, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if "=" in a)
assert "--use-vnet" in sys.argv, sys.argv
fd, br = int(args["fd"]), args["br"]
t = os.open("/dev/net/tun", os.O_RDWR)
ifr = fcntl.ioctl(t, 0x400454ca, struct.pack("16sH22x", b"", 0x0002 | 0x1000 | 0x4000))
name = ifr[:16].rstrip(b"\0").decode()
subprocess.run(["ip", "link", "set", "dev", name, "master", br, "up"], check=True)
socket.send_fds(socket.socket(fileno=fd), [b"x"], [t])
"#;

fn write_script(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.join(name);
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

#[test]
fn helpers_of_our_own_speak_the_protocol_and_their_failures_are_reported() {
    let lan = lan();
    let dir = TempDir::new();
    let py = write_script(&dir, "helper.py", PY_HELPER);
    for spec in [
        format!("bridge,id=b0,br={},helper={py}", lan.br),
        format!("tap,id=b0,helper={py},br={}", lan.br),
    ] {
        let (d, end, mut c, _qdir) = start(&lan, &spec);
        let tap = lan.the_tap();
        assert!(lan.tun_flags(&tap) & IFF_VNET_HDR != 0, "{spec}");
        lan.both_ways(&end, &spec);
        del_and_check_gone(&lan, &mut c, &tap);

        // A failing helper: QEMU's words, its exit status and what it said.
        let bad = write_script(
            &dir,
            "bad.sh",
            "#!/bin/sh\necho \"no way to $3\" >&2\nexit 3\n",
        );
        let desc = error_desc(&c.execute(
            "netdev_add",
            json!({"id": "b1", "type": "bridge", "br": lan.br, "helper": bad}),
        ));
        assert!(
            desc.contains("bridge helper failed")
                && desc.contains("exit status: 3")
                && desc.contains(&format!("no way to --br={}", lan.br)),
            "{desc}"
        );
        // A helper that exits 0 without sending a descriptor.
        let mute = write_script(&dir, "mute.sh", "#!/bin/sh\nexit 0\n");
        let desc = error_desc(&c.execute(
            "netdev_add",
            json!({"id": "b1", "type": "tap", "helper": mute}),
        ));
        assert!(desc.contains("failed to recv file descriptor"), "{desc}");
        // A helper that is not there.
        let desc = error_desc(&c.execute(
            "netdev_add",
            json!({"id": "b1", "type": "bridge", "helper": "/nonexistent/helper"}),
        ));
        assert!(
            desc.contains("bridge helper failed") && desc.contains("/nonexistent/helper"),
            "{desc}"
        );
        // tap options QEMU refuses with helper=.
        let desc = error_desc(&c.execute(
            "netdev_add",
            json!({"id": "b1", "type": "tap", "helper": py, "ifname": "x"}),
        ));
        assert!(desc.contains("are invalid with helper="), "{desc}");
        assert!(lan.taps().is_empty(), "{:?}", lan.taps());
        drop(c);
        d.stop_clean();
    }
}

#[test]
fn qemu_bridge_helper_attaches_the_tap_it_sends_and_enforces_its_acl() {
    assert!(
        Path::new(QEMU_HELPER).exists(),
        "{QEMU_HELPER} is missing: install qemu-system-common (scripts/setup-host)"
    );
    let _lock = ACL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let lan = lan();
    let Some(_acl) = AclFile::create(&[&lan.br]) else {
        // An ACL file of the machine's own: not ours to edit; the helpers of our own
        // (the test above) cover the protocol.
        eprintln!("{ACL} exists: not testing {QEMU_HELPER}");
        return;
    };
    for spec in [
        format!("bridge,id=b0,br={},helper={QEMU_HELPER}", lan.br),
        // A command line: QEMU passes it to sh and keeps its own --br=.
        format!("tap,id=b0,helper={QEMU_HELPER} --br={}", lan.br),
    ] {
        let (d, end, mut c, _qdir) = start(&lan, &spec);
        let tap = lan.the_tap();
        assert!(lan.tun_flags(&tap) & IFF_VNET_HDR != 0, "{spec}");
        lan.both_ways(&end, &spec);
        del_and_check_gone(&lan, &mut c, &tap);
        // A bridge the ACL does not allow: the helper's own words.
        let desc = error_desc(&c.execute(
            "netdev_add",
            json!({"id": "b1", "type": "bridge", "br": "ve", "helper": QEMU_HELPER}),
        ));
        assert!(
            desc.contains("bridge helper failed") && desc.contains("access denied by acl file"),
            "{desc}"
        );
        drop(c);
        d.stop_clean();
    }
}
