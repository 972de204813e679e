//! The `vde` netdev against a real vde_switch (hub mode, `-x`):
//!
//! ```text
//!  UdpEnd u ──udp── socket u ─ hubport ┐
//!                                      ├─ hub 0
//!            vde v ─────────── hubport ┘
//!              ║ dgram, ctl stream
//!          vde_switch -x -s DIR ══ VdePort (the test's own client)
//! ```
//!
//! Frames go both ways; then the switch is killed under traffic and started again on the
//! same directory, and frames flow again once the port has re-attached. QMP adds and
//! deletes a second vde port (mode= applied, its socket file removed, no fd left) and a
//! port on a missing switch is refused with a message naming the path.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{expect_frame, mac, Args, BCAST, ETH_EXP, WAIT};
use serde_json::{json, Value};
use tests::testbed::cleanup::read_pid;
use tests::testbed::process::{alive, signal, Signal};
use tests::{frame, require_tool, wait_until, QmpClient, TempDir, UdpEnd, VdePort};

/// A vde_switch on a directory of the test's choosing, so that it can be started again
/// on the same one; killed on drop.
struct Switch {
    dir: PathBuf,
    pidfile: PathBuf,
    pid: u32,
}

impl Switch {
    fn start(dir: &Path, pidfile: &Path) -> Switch {
        let bin = require_tool("vde_switch");
        let out = Command::new(&bin)
            .arg("-x")
            .arg("-s")
            .arg(dir)
            .arg("-d")
            .arg("-p")
            .arg(pidfile)
            .output()
            .expect("run vde_switch");
        assert!(
            out.status.success(),
            "vde_switch -x -s {} -d failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pid = None;
        assert!(
            wait_until(WAIT, || {
                pid = read_pid(pidfile).filter(|&p| alive(p));
                pid.is_some() && dir.join("ctl").exists()
            }),
            "vde_switch on {} did not come up",
            dir.display()
        );
        Switch {
            dir: dir.to_path_buf(),
            pidfile: pidfile.to_path_buf(),
            pid: pid.unwrap(),
        }
    }

    fn kill(&mut self) {
        if self.pid != 0 && alive(self.pid) {
            signal(self.pid, Signal::TERM);
            if !wait_until(Duration::from_secs(5), || !alive(self.pid)) {
                signal(self.pid, Signal::KILL);
                wait_until(Duration::from_secs(2), || !alive(self.pid));
            }
        }
        self.pid = 0;
        let _ = std::fs::remove_file(&self.pidfile);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Our own socket files of daemon `pid` (`$TMPDIR/pollswitch-vde.<pid>-<n>`).
fn own_sockets(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("pollswitch-vde.{pid:05}-");
    let mut v: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Waits for a frame at `port` equal to `want`, skipping others (late probes).
fn expect_at_vde(port: &VdePort, want: &[u8], what: &str) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if port.recv_timeout(Duration::from_millis(100)).as_deref() == Some(want) {
            return;
        }
    }
    panic!("{what}: the frame did not arrive at the vde client within {WAIT:?}");
}

#[test]
fn frames_cross_a_vde_switch_and_flow_again_after_it_restarts() {
    require_tool("vde_switch");
    let dir = TempDir::new();
    let (swdir, pidfile, qmp) = (dir.join("sw"), dir.join("pid"), dir.join("qmp.sock"));
    let mut sw = Switch::start(&swdir, &pidfile);
    let mut u = UdpEnd::new();
    let qmp_spec = format!("unix:{},server=on,wait=off", qmp.display());
    let d = Args::new()
        .opt("-qmp", &qmp_spec)
        .udp("u", 0, &mut u)
        .netdev(&format!("vde,id=v,sock={}", swdir.display()))
        .on_hub("v", 0)
        .start();
    let own = own_sockets(d.pid());
    assert_eq!(own.len(), 1, "one own socket: {own:?}");
    assert_eq!(mode_of(&own[0]), 0o700, "QEMU's default mode");

    let b = VdePort::connect_to(&sw.dir, 0, "test b");
    // vde_switch itself carries at most a standard frame (its packet buffer is 1514
    // bytes plus a VLAN tag), so no jumbo frame here.
    for (i, len) in [14usize, 60, 1514].into_iter().enumerate() {
        let f = frame(BCAST, mac(1), ETH_EXP, len, i as u8);
        u.send(&f);
        expect_at_vde(&b, &f, &format!("{len}-byte frame udp → vde"));
        let back = frame(mac(1), mac(2), ETH_EXP, len, 100 + i as u8);
        b.send(&back);
        expect_frame(&u, &back, &format!("{len}-byte frame vde → udp"));
    }

    // The switch goes away under traffic and comes back on the same directory; the
    // port's carrier (x-query-stats) follows.
    let mut c = QmpClient::connect_unix_negotiated(&qmp).expect("connect to QMP");
    let carrier = |c: &mut QmpClient| common::port_stats(c, "v")["carrier"].clone();
    assert_eq!(carrier(&mut c), json!(true), "attached at start");
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) {
                u.send(&frame(BCAST, mac(1), ETH_EXP, 60, i));
                i = i.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        sw.kill();
        drop(b);
        assert!(
            d.wait_for_stderr("went away", WAIT),
            "no warning that the switch went away:\n{}",
            d.stderr_text()
        );
        assert_eq!(
            carrier(&mut c),
            json!(false),
            "no carrier while the switch is gone"
        );
        std::thread::sleep(Duration::from_millis(100));
        sw = Switch::start(&swdir, &pidfile);
        assert!(
            d.wait_for_stderr("attached to", WAIT),
            "the port did not re-attach:\n{}",
            d.stderr_text()
        );
        assert_eq!(carrier(&mut c), json!(true), "carrier back with the switch");
        let b2 = VdePort::connect_to(&sw.dir, 0, "test b2");
        assert!(
            b2.recv_timeout(WAIT).is_some(),
            "no frame of the running traffic reached the new switch"
        );
        stop.store(true, Ordering::Relaxed);
        let _ = b2.drain(Duration::from_millis(200));
        let f = frame(BCAST, mac(1), ETH_EXP, 1514, 7);
        u.send(&f);
        expect_at_vde(&b2, &f, "udp → vde after the restart");
        let back = frame(mac(1), mac(3), ETH_EXP, 1514, 8);
        b2.send(&back);
        expect_frame(&u, &back, "vde → udp after the restart");
    });

    // netdev_add / query-netdev / netdev_del over QMP.
    let before_fds = fds(d.pid());
    c.execute_ok(
        "netdev_add",
        json!({"id": "v2", "type": "vde", "sock": swdir.display().to_string(), "mode": 0o640}),
    );
    let own2 = own_sockets(d.pid());
    assert_eq!(own2.len(), 2, "{own2:?}");
    let new = own2.iter().find(|p| !own.contains(p)).unwrap();
    assert_eq!(mode_of(new), 0o640, "mode= applies to our own socket");
    let list = c.execute_ok("query-netdev", Value::Null);
    let v = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "v")
        .unwrap_or_else(|| panic!("{list}"));
    assert_eq!(v["type"], "vde", "{list}");
    c.execute_ok("netdev_del", json!({"id": "v2"}));
    assert!(
        wait_until(WAIT, || !new.exists() && fds(d.pid()) == before_fds),
        "after netdev_del: socket file left: {}, fds {} (before {before_fds})",
        new.exists(),
        fds(d.pid())
    );

    // No switch there: refused, naming the path.
    let r = c.execute(
        "netdev_add",
        json!({"id": "v3", "type": "vde", "sock": "/nonexistent-vde-dir"}),
    );
    let desc = r["error"]["desc"].as_str().unwrap_or_default().to_string();
    assert!(
        desc.contains("could not open vde") && desc.contains("/nonexistent-vde-dir"),
        "{r}"
    );
    drop(c);
    let pid = d.pid();
    d.stop_clean();
    assert!(own_sockets(pid).is_empty(), "{:?}", own_sockets(pid));
    drop(sw);
}
