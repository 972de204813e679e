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
//! Panics: these are test helpers, so a failed setup step panics with the command, its
//! exit status and its stderr, rather than returning an error every test would unwrap.
//! Each function's `# Panics` section says when. Functions returning `Option` or `bool`
//! (timeouts) never panic for the condition they report.
//!
//! Traffic stays on this machine: loopback, or addresses inside namespaces a test made.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

mod daemon;
mod netns;
mod qemu;
mod qmp;
mod raw;
mod udp;
mod vde;

pub use daemon::{assert_clean_exit, Daemon, READY, STOP_TIMEOUT};
pub use netns::{move_link_into, Netns};
pub use qemu::QemuPeer;
pub use qmp::{QmpClient, QMP_TIMEOUT};
pub use raw::RawSock;
pub use udp::{UdpEnd, MAX_DATAGRAM};
pub use vde::{VdePort, VdeSwitch};

/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
pub const IFNAME_MAX: usize = 15;

/// How long helpers wait for a process to come up or go away before they panic.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the workspace binary `name` (e.g. `"pollswitch"`), in the same target profile
/// directory as the running test executable.
///
/// A test executable lives in `target/<profile>/deps/<test>-<hash>`; the workspace's
/// binaries live in `target/<profile>/`.
///
/// # Panics
/// When the binary is absent, telling to run `cargo build --workspace` first (cargo test
/// builds only the binaries of the package under test, not the workspace's).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = env::current_exe().expect("current_exe() of the test binary");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent directory")
        .to_path_buf();
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir.pop();
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

/// A short name unique on this machine for the lifetime of this process: `prefix`, the
/// process id in hex, `x`, and a per-process counter in hex (`ps1a2b3x0`). Hex digits never
/// contain `x`, so names of different processes cannot collide.
///
/// Usable for interface names: keep `prefix` to at most 4 characters.
///
/// # Panics
/// When the result would be longer than [`IFNAME_MAX`] (15) characters.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}x{n:x}", std::process::id());
    assert!(
        name.len() <= IFNAME_MAX,
        "unique({prefix:?}) gave {name:?}, longer than {IFNAME_MAX} characters: use a shorter prefix"
    );
    name
}

/// Polls `cond` every few milliseconds until it returns true (then returns true) or
/// `timeout` passes (then returns false). `cond` is always called at least once.
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

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, read, released).
///
/// # Panics
/// When no port can be bound.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP socket on 127.0.0.1:0")
        .port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, read, released).
///
/// # Panics
/// When no port can be bound.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a TCP listener on 127.0.0.1:0")
        .port()
}

/// Full path of the program `name` found on `PATH`.
///
/// # Panics
/// When it is not there, telling to run `scripts/setup-host` (as root), which installs
/// every peer the tests use. Tests never skip for a missing tool.
pub fn require_tool(name: &str) -> PathBuf {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found on PATH: run scripts/setup-host as root to install the test peers")
        })
}

/// Runs `program args...` to completion and returns its stdout as text.
///
/// # Panics
/// When it cannot be started or exits non-zero; the message has the command line, the
/// status and stderr.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    check_output(&format!("{program} {}", args.join(" ")), out)
}

/// Runs `program args...` to completion and returns its output, whatever its status.
///
/// # Panics
/// When it cannot be started at all.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Stdout of `out` as text, or a panic naming `what` when it failed.
fn check_output(what: &str, out: Output) -> String {
    if !out.status.success() {
        panic!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends signal `sig` (a name such as `"TERM"`, `"KILL"`) to `pid` with procps' `kill`,
/// which needs no `unsafe`. Returns whether the signal was delivered.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether a process with this id exists (and is not a zombie).
fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the ")" closing the command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A directory under the system temp dir, unique to this process, removed with its
/// contents on drop. Paths inside stay short enough for unix sockets (108 bytes).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/pollswitch-<unique>`.
    ///
    /// # Panics
    /// When the directory cannot be created.
    pub fn new() -> TempDir {
        let path = env::temp_dir().join(format!("pollswitch-{}", unique("t")));
        fs::create_dir(&path).unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is not worth a panic during unwinding.
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn unique_names_are_short_and_distinct() {
        let names: HashSet<String> = (0..1000).map(|_| unique("ps")).collect();
        assert_eq!(names.len(), 1000);
        assert!(names
            .iter()
            .all(|n| n.len() <= IFNAME_MAX && n.starts_with("ps")));
    }

    #[test]
    #[should_panic(expected = "longer than 15")]
    fn unique_refuses_long_names() {
        unique("averyverylongprefix");
    }

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
    fn free_ports_are_bindable() {
        let p = free_udp_port();
        UdpSocket::bind(("127.0.0.1", p)).expect("free UDP port binds");
        let p = free_tcp_port();
        TcpListener::bind(("127.0.0.1", p)).expect("free TCP port binds");
    }

    #[test]
    #[should_panic(expected = "cargo build --workspace")]
    fn bin_path_names_the_fix() {
        bin_path("no-such-pollswitch-binary");
    }

    #[test]
    #[should_panic(expected = "scripts/setup-host")]
    fn require_tool_names_the_fix() {
        require_tool("no-such-tool-pollswitch");
    }

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new();
        let path = dir.path().to_path_buf();
        fs::write(dir.join("f"), b"x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn run_ok_reports_failure_with_stderr() {
        assert_eq!(run_ok("echo", &["hi"]), "hi\n");
        let err = std::panic::catch_unwind(|| run_ok("sh", &["-c", "echo oops >&2; exit 3"]))
            .expect_err("non-zero exit panics");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("oops") && msg.contains("exit status: 3"),
            "{msg}"
        );
    }

    #[test]
    fn pid_alive_tracks_a_process() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        assert!(pid_alive(child.id()));
        assert!(signal(child.id(), "KILL"));
        child.wait().unwrap();
        assert!(!pid_alive(child.id()));
    }
}
