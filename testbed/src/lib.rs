//! The test bed that pollswitch's integration tests (`tests/`) and its benchmark tool
//! (`perf/`) share: every part of the machine either of them builds around a switch
//! under test, written once, removed when dropped, and removed by a signal handler when
//! the program is stopped halfway.
//!
//! ```text
//!  netns ─── Netns (ip netns, lo up, IPv6 off), VethPair, move_link_into
//!   │          └── Netns::enter: sockets made inside it (RawSock, UDP)
//!  raw ───── RawSock: AF_PACKET on one link, exact frames in and out
//!  process ─ Process: a child under taskset / ip netns exec, output captured (bounded)
//!  qemu ──── QemuPeer: qemu-system-x86_64 -M none, netdevs only, QMP negotiated
//!  guest ─── Guest: a Debian kernel + busybox under QEMU TCG runs a script (virtio-net)
//!  libvirt ─ Libvirt (virtlogd + libvirtd up), Domain, GuestDomain: the guest via libvirt
//!  vde ───── VdeSwitch (vde_switch -d) and VdePort (a request_v3 client)
//!  testpmd ─ Testpmd: dpdk-testpmd with memif / virtio_user / vhost vdevs, its totals
//!  qmp ───── QmpClient: greeting, replies and events kept apart
//!  cpu ───── core lists, pinning, taskset, RPS masks
//!  cmd ───── setup commands (ip, sysctl, ...), programs on PATH, temp dirs
//!  cleanup ─ what is alive now; on SIGINT/SIGTERM/SIGHUP: remove all of it, exit 130
//! ```
//!
//! Two ways to fail, chosen by the caller. Each step has a function that returns
//! [`Result`] (`create`, `launch`, `run`, `try_*`): the benchmark tool reports the error
//! and goes on with the next system. The helpers the integration tests call keep the
//! names they have always had and panic instead, with the command, its status and its
//! output; their `# Panics` sections say when. Functions that answer with `Option` or
//! `bool` (timeouts) never panic for the condition they report.
//!
//! Every receive helper is bounded in count and in time ([`drain`]): a peer that never
//! stops sending makes it fail loudly instead of growing without end.
//!
//! Traffic stays on this machine: loopback, or links inside namespaces made here.
//!
//! Unsafe code is fenced: only [`raw`] (binding an `AF_PACKET` socket, packet socket
//! options) may use it.

#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

pub mod cleanup;
pub mod cmd;
pub mod cpu;
mod error;
pub mod guest;
pub mod iperf;
pub mod libvirt;
pub mod netns;
pub mod process;
pub mod qemu;
pub mod qmp;
#[allow(unsafe_code)]
pub mod raw;
pub mod testpmd;
pub mod vde;

pub use cmd::{require, require_tool, run, run_ok, TempDir};
pub use error::{chain, Error, Result};
pub use guest::{Guest, GuestImage, GuestRun};
pub use libvirt::{Domain, GuestDomain, Libvirt};
pub use netns::{move_link_into, Netns, VethPair};
pub use process::{Launch, Process};
pub use qemu::QemuPeer;
pub use qmp::{QmpClient, QMP_TIMEOUT};
pub use raw::RawSock;
pub use vde::{VdePort, VdeSwitch};

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// How long helpers wait for a process to come up before they give up.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A short name unique on this machine for the lifetime of this process: `prefix`, the
/// process id in hex, `x`, and a per-process counter in hex (`ps1a2b3x0`). Hex digits
/// never contain `x`, so names of different processes cannot collide, and every name a
/// process made holds `<pid in hex>x`, which is how what a run left behind is found.
///
/// Usable for interface names: keep `prefix` to at most 4 characters.
///
/// # Panics
/// When the result would be longer than [`IFNAME_MAX`] (15) characters.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n:x}", pid_marker(std::process::id()));
    assert!(
        name.len() <= IFNAME_MAX,
        "unique({prefix:?}) gave {name:?}, longer than {IFNAME_MAX} characters: use a shorter prefix"
    );
    name
}

/// The part every [`unique`] name of process `pid` holds: the pid in hex and `x`.
pub fn pid_marker(pid: u32) -> String {
    format!("{pid:x}x")
}

/// Polls `cond` until it returns true (then returns true) or `timeout` passes (then
/// returns false). `cond` is always called at least once; the pause between calls grows
/// from 1 ms to 20 ms.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// How much a drain may take besides the quiet gap that ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainLimit {
    /// Most frames (or datagrams) it collects.
    pub frames: usize,
    /// Longest it may go on while things keep arriving.
    pub time: Duration,
}

impl DrainLimit {
    /// What the drain helpers use: far above what any test sends on purpose, far below
    /// what fills memory.
    pub const DEFAULT: DrainLimit = DrainLimit {
        frames: 10_000,
        time: Duration::from_secs(10),
    };
}

/// Collects what `next(quiet)` returns until it returns `None` (nothing arrived for
/// `quiet`), in order.
///
/// # Panics
/// When more than `limit.frames` arrive, or things still arrive after `limit.time`: a
/// peer that keeps sending (a hub flooding back to its sender, a loop) must fail the test
/// with a message, not fill the machine's memory. `what` names the receiver for it.
pub fn drain<T>(
    what: impl Fn() -> String,
    quiet: Duration,
    limit: DrainLimit,
    mut next: impl FnMut(Duration) -> Option<T>,
) -> Vec<T> {
    let start = Instant::now();
    let mut got = Vec::new();
    while let Some(item) = next(quiet) {
        got.push(item);
        let elapsed = start.elapsed();
        if got.len() > limit.frames || elapsed > limit.time {
            panic!(
                "{}: drain gave up after {} frames in {elapsed:.1?} with frames still \
                 arriving (limit {} frames, {:?}): something keeps sending, e.g. a hub \
                 flooding back to its sender or a loop between two ports",
                what(),
                got.len(),
                limit.frames,
                limit.time
            );
        }
    }
    got
}

/// Drops the kernel counted on the UDP socket bound to `port` (`/proc/net/udp`), and
/// bytes queued to it.
pub fn udp_socket_drops(port: u16) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/udp").ok()?;
    udp_drops_from(&text, port)
}

fn udp_drops_from(text: &str, port: u16) -> Option<(u64, u64)> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 13 {
            continue;
        }
        let local_port = f[1]
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
        if local_port == Some(port) {
            let rxq = f[4]
                .split_once(':')
                .and_then(|(_, r)| u64::from_str_radix(r, 16).ok())
                .unwrap_or(0);
            return Some((f[f.len() - 1].parse().ok()?, rxq));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_udp_drops_parse() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
  12: 0100007F:A0F5 00000000:0000 07 00000000:00000200 00:00000000 00000000     0        0 1234 2 0000000000000000 77\n";
        assert_eq!(udp_drops_from(text, 0xa0f5), Some((77, 0x200)));
        assert_eq!(udp_drops_from(text, 1), None);
    }
    use std::collections::HashSet;

    #[test]
    fn unique_names_are_short_distinct_and_marked() {
        let names: HashSet<String> = (0..1000).map(|_| unique("ps")).collect();
        assert_eq!(names.len(), 1000);
        let marker = pid_marker(std::process::id());
        assert!(names
            .iter()
            .all(|n| n.len() <= IFNAME_MAX && n.starts_with("ps") && n.contains(&marker)));
    }

    #[test]
    #[should_panic(expected = "longer than 15")]
    fn unique_refuses_long_names() {
        unique("averyverylongprefix");
    }

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), || {
            n += 1;
            n == 3
        }));
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn drain_stops_when_quiet() {
        let mut left = 5;
        let got = drain(String::new, Duration::ZERO, DrainLimit::DEFAULT, |_| {
            left -= 1;
            (left >= 0).then_some(left)
        });
        assert_eq!(got, [4, 3, 2, 1, 0]);
    }

    #[test]
    fn drain_fails_loudly_on_a_flood() {
        let limit = DrainLimit {
            frames: 100,
            time: Duration::from_secs(10),
        };
        let err = std::panic::catch_unwind(|| {
            drain(|| "end x".into(), Duration::ZERO, limit, |_| Some(0u8))
        })
        .expect_err("an endless sender");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(msg.contains("end x") && msg.contains("101 frames"), "{msg}");
        let limit = DrainLimit {
            frames: usize::MAX,
            time: Duration::from_millis(30),
        };
        let err = std::panic::catch_unwind(|| {
            drain(String::new, Duration::ZERO, limit, |_| {
                thread::sleep(Duration::from_millis(1));
                Some(0u8)
            })
        })
        .expect_err("a slow endless sender");
        assert!(err
            .downcast_ref::<String>()
            .unwrap()
            .contains("still arriving"));
    }
}
