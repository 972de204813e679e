//! Test-support library for pollswitch's integration tests (`tests/tests/*.rs`).
//!
//! Every helper drives a *real* part of the machine — network namespaces, tap and veth
//! links, QEMU, vde_switch, the `pollswitch` daemon itself — and removes what it made when
//! it is dropped, even when the test panics halfway. Nothing here skips: a test that needs
//! something the machine lacks fails loudly, naming the fix (usually
//! `scripts/setup-host`, or `cargo build --workspace` for our own binaries).
//!
//! ```text
//!  test ──► Daemon (pollswitch, stderr captured) ──QMP──► QmpClient
//!    │          │ taps / sockets
//!    │          ▼
//!    ├──► Netns (ip netns, lo up, IPv6 off) ◄── move_link_into(tap)
//!    │      └── Netns::enter: sockets made inside it (UdpEnd, RawSock on a tap)
//!    ├──► QemuPeer (qemu-system-x86_64 -M none, netdevs on a hub, QMP)
//!    ├──► VdeSwitch (vde_switch -d) ◄── VdePort (raw request_v3 client)
//!    └──► UdpEnd (127.0.0.1 datagrams, one Ethernet frame each)
//! ```
//!
//! The machine-facing parts (namespaces, raw sockets, child processes, QEMU, vde_switch,
//! QMP) live in the `testbed` crate, which pollswitch-perf shares, and are re-exported
//! here under the names the tests have always used. What is the tests' own stays here:
//! finding (and refusing stale) workspace binaries, the pollswitch daemon's contract
//! ([`Daemon`]), test frames and UDP ends.
//!
//! Panics: these are test helpers, so a failed setup step panics with the command, its
//! exit status and its stderr, rather than returning an error every test would unwrap.
//! Each function's `# Panics` section says when. Functions returning `Option` or `bool`
//! (timeouts) never panic for the condition they report. Every receive helper is bounded
//! in count and time: a drain that never goes quiet fails the test with a message.
//!
//! Traffic stays on this machine: loopback, or addresses inside namespaces a test made.

use std::env;
use std::ffi::OsStr;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;

mod daemon;
mod udp;

pub use daemon::{assert_clean_exit, Daemon, READY, STOP_TIMEOUT};
pub use testbed;
pub use testbed::{
    move_link_into, require_tool, run_ok, unique, wait_until, DrainLimit, Netns, QemuPeer,
    QmpClient, RawSock, TempDir, VdePort, VdeSwitch, IFNAME_MAX, QMP_TIMEOUT, STARTUP_TIMEOUT,
};
pub use udp::{UdpEnd, MAX_DATAGRAM};

/// Path of the workspace binary `name` (e.g. `"pollswitch"`), in the same target profile
/// directory as the running test executable.
///
/// A test executable lives in `target/<profile>/deps/<test>-<hash>` (or, with newer
/// nightly cargo's build-directory layout, `target/<profile>/build/tests/<hash>/out/`);
/// the workspace's binaries live in `target/<profile>/`: the nearest directory above the
/// executable that holds the binary.
///
/// # Panics
/// When the binary is absent, telling to run `cargo build --workspace` first (cargo test
/// builds only the binaries of the package under test, not the workspace's).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = env::current_exe().expect("current_exe() of the test binary");
    let parent = exe
        .parent()
        .expect("test executable has a parent directory");
    let mut dir = parent.to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
    }
    // The new layout: target/<profile>/build/<package>/<hash>/out/<test>.
    let up: Vec<&Path> = parent.ancestors().take(5).collect();
    if up.len() == 5
        && up[0].file_name() == Some(OsStr::new("out"))
        && up[3].file_name() == Some(OsStr::new("build"))
    {
        dir = up[4].to_path_buf();
    }
    let path = dir.join(name);
    if !path.is_file() {
        panic!(
            "workspace binary {name:?} not found at {}: run `cargo build --workspace` \
             (scripts/test does) before the integration tests",
            path.display()
        );
    }
    assert_fresh(&path);
    path
}

/// Panics when a source file that goes into the binary `bin` (of the `ctl` crate) is
/// newer than it: a plain `cargo test` after an edit would otherwise test the daemon as
/// it was before the edit. Files of the other binaries in `ctl/src/bin/` do not count.
fn assert_fresh(bin: &std::path::Path) {
    type Newest = Option<(std::time::SystemTime, PathBuf)>;
    fn newest(dir: &std::path::Path, bin_name: &str, best: &mut Newest) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let other_bin = dir.ends_with("src/bin")
                && p.file_stem().is_some_and(|s| s != OsStr::new(bin_name));
            if other_bin {
                continue;
            }
            if p.is_dir() {
                newest(&p, bin_name, best);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                    if best.as_ref().is_none_or(|(b, _)| t > *b) {
                        *best = Some((t, p));
                    }
                }
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let name = bin.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let mut best = None;
    for krate in ["switch", "backends", "ctl"] {
        newest(&root.join(krate).join("src"), name, &mut best);
    }
    let built = std::fs::metadata(bin).and_then(|m| m.modified());
    if let (Some((src_time, src)), Ok(bin_time)) = (best, built) {
        assert!(
            src_time <= bin_time,
            "{} is older than {}: it would test the code as it was before that edit. \
             Run `cargo build --workspace` (scripts/test does) before the integration tests",
            bin.display(),
            src.display()
        );
    }
}

/// Whether the binaries under test were built with a sanitizer: `scripts/asan` sets
/// `POLLSWITCH_SANITIZER`. Their allocator keeps freed memory in quarantine and adds
/// redzones and shadow memory, so bounds on a daemon's resident memory say nothing
/// there; the leak check at the daemon's exit says more.
pub fn under_sanitizer() -> bool {
    env::var_os("POLLSWITCH_SANITIZER").is_some()
}

/// An Ethernet frame of exactly `len` bytes: `dst`, `src`, `ethertype`, then a payload
/// whose byte `i` is `seed + i` (wrapping), so two frames with different seeds differ and a
/// receiver can check every byte. `len` may be 14 (header only).
///
/// # Panics
/// When `len < 14`.
pub fn frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, len: usize, seed: u8) -> Vec<u8> {
    assert!(
        len >= 14,
        "an Ethernet frame has at least 14 bytes, asked for {len}"
    );
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..len - 14).map(|i| seed.wrapping_add(i as u8)));
    f
}

/// A UDP port on 127.0.0.1 that was free a moment ago (see [`pick_port`]).
///
/// # Panics
/// When no port can be bound.
pub fn free_udp_port() -> u16 {
    pick_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A TCP port on 127.0.0.1 that was free a moment ago (see [`pick_port`]).
///
/// # Panics
/// When no port can be bound.
pub fn free_tcp_port() -> u16 {
    pick_port(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// The lowest port the kernel hands out to sockets bound to port 0.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Lowest port [`pick_port`] hands out.
const PICK_LOW: u16 = 10000;

/// A port that `bindable` could bind a moment ago, for a peer told to bind it later.
/// It lies below the kernel's ephemeral range, so that no socket bound to port 0 in the
/// meantime (this test's, a parallel test's, a peer's) can take it, and no two calls of
/// one test process return the same one.
///
/// # Panics
/// When no port from 10000 up to the ephemeral range can be bound.
fn pick_port(bindable: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = ephemeral_low();
    assert!(
        low > PICK_LOW + 1000,
        "ephemeral ports start at {low}: no room below them for test ports"
    );
    let span = u32::from(low - PICK_LOW);
    // Processes start at different places, so that test binaries run one after another
    // do not retry the same ports.
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let off = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = PICK_LOW + off as u16;
        if bindable(port) {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 from {PICK_LOW} to {low}")
}

/// Runs `program args...` to completion and returns its output, whatever its status.
///
/// # Panics
/// When it cannot be started at all.
pub fn run(program: &str, args: &[&str]) -> Output {
    testbed::cmd::output(program, args).unwrap_or_else(|e| panic!("{}", testbed::chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_exact_length_and_pattern() {
        let dst = [0xff; 6];
        let src = [0x52, 0x54, 0, 0, 0, 1];
        let f = frame(dst, src, 0x88b5, 14, 7);
        assert_eq!(f, [&dst[..], &src[..], &[0x88, 0xb5]].concat());
        let f = frame(dst, src, 0x0800, 1518, 250);
        assert_eq!(f.len(), 1518);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 250);
        assert_eq!(f[20], 0); // 250 + 6 wraps
        assert_ne!(f, frame(dst, src, 0x0800, 1518, 251));
    }

    #[test]
    #[should_panic(expected = "at least 14")]
    fn frame_refuses_short_length() {
        frame([0; 6], [0; 6], 0, 13, 0);
    }

    #[test]
    fn free_ports_are_bindable() {
        let p = free_udp_port();
        UdpSocket::bind(("127.0.0.1", p)).expect("free UDP port binds");
        let q = free_tcp_port();
        TcpListener::bind(("127.0.0.1", q)).expect("free TCP port binds");
        // Out of the kernel's reach for port-0 binds, and not handed out twice.
        assert!(p < ephemeral_low() && q < ephemeral_low(), "{p} {q}");
        assert_ne!(free_udp_port(), p);
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace")]
    fn bin_path_names_the_fix() {
        bin_path("no-such-pollswitch-binary");
    }

    #[test]
    fn run_returns_output_whatever_the_status() {
        let out = run("sh", &["-c", "echo out; echo err >&2; exit 3"]);
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(std::panic::catch_unwind(|| run("no-such-program-pollswitch", &[])).is_err());
    }
}
