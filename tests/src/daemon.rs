//! The `pollswitch` daemon under test, as a child process.
//!
//! Contract with the daemon: it writes human-readable lines to stderr, and the line
//! containing `pollswitch: ready` appears once its command-line netdevs exist and its QMP
//! sockets accept connections. SIGTERM makes it exit.
//!
//! The child itself is a [`testbed::Process`]: two reader threads copy its stderr and
//! stdout into bounded buffers as they come, so a test can wait for a line, and a failure
//! can show what the daemon said.

use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use testbed::process::{Launch, Process, Signal};

use crate::{bin_path, wait_until, Netns, STARTUP_TIMEOUT};

/// The stderr line that says the daemon is ready.
pub const READY: &str = "pollswitch: ready";

/// How long [`Daemon::stop`] waits after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running daemon, killed on drop if still running.
pub struct Daemon {
    proc: Process,
}

impl Daemon {
    /// Starts `target/<profile>/pollswitch args...` and waits for [`READY`].
    ///
    /// # Panics
    /// When the binary is missing (run `cargo build --workspace`), or it exits or is not
    /// ready within [`STARTUP_TIMEOUT`]; the message has its stderr so far.
    pub fn start(args: &[&str]) -> Daemon {
        Self::launch(Launch::new("pollswitch", bin_path("pollswitch")), args)
    }

    /// Like [`Daemon::start`], with the daemon inside `ns`.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_in(ns: &Netns, args: &[&str]) -> Daemon {
        let launch = Launch::new("pollswitch", bin_path("pollswitch")).netns(Some(&ns.name));
        Self::launch(launch, args)
    }

    /// Starts any `program` under the same contract (waits for [`READY`] on stderr):
    /// for other binaries of ours, and for testing this helper.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_program(program: &Path, args: &[&str]) -> Daemon {
        Self::launch(Launch::new("daemon", program), args)
    }

    fn launch(launch: Launch, args: &[&str]) -> Daemon {
        let proc = launch
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("{}", testbed::chain(&e)));
        let mut d = Daemon { proc };
        if !d.wait_for_stderr(READY, STARTUP_TIMEOUT) {
            // Its pipes close a moment before it can be reaped: give that moment.
            let mut exited = None;
            wait_until(Duration::from_secs(1), || {
                exited = d.proc.try_wait();
                exited.is_some()
            });
            let state = match exited {
                Some(status) => format!("exited early, {status}"),
                None => format!("not ready after {STARTUP_TIMEOUT:?}"),
            };
            panic!(
                "{} {state}; stderr so far:\n{}",
                d.proc.command(),
                d.stderr_text()
            );
        }
        d
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.proc.stderr()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        self.proc.stdout()
    }

    /// Waits until stderr contains `needle` (anywhere, including lines already seen);
    /// false after `timeout`, or at once when stderr closed without it.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.proc.wait_for_stderr(needle, timeout)
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.running()
    }

    /// Sends SIGTERM, waits for the exit, and returns the exit status and all of stderr.
    ///
    /// # Panics
    /// When the daemon is still running [`STOP_TIMEOUT`] after SIGTERM (it is then
    /// killed with SIGKILL, and the message has its stderr).
    pub fn stop(mut self) -> (ExitStatus, String) {
        // Process::stop also waits (2 s at most) for the readers to copy the last bytes:
        // a grandchild holding the pipes open must not hang the test.
        match self.proc.stop(Signal::TERM, STOP_TIMEOUT) {
            Ok(status) => (status, self.stderr_text()),
            Err(_) => panic!(
                "{} still running {STOP_TIMEOUT:?} after SIGTERM (killed); stderr:\n{}",
                self.proc.command(),
                self.stderr_text()
            ),
        }
    }

    /// Stops the daemon like [`Daemon::stop`] and checks that it shut down cleanly:
    /// exit status 0 and the final pool line `pollswitch: pool: F of T buffers free`
    /// with every buffer back (F = T, and T the size announced at start). Returns all of
    /// stderr.
    ///
    /// # Panics
    /// When any of that does not hold; the message has the whole stderr.
    pub fn stop_clean(self) -> String {
        let (status, stderr) = self.stop();
        assert_clean_exit(status, &stderr);
        stderr
    }

    /// Runs `target/<profile>/pollswitch args...` to completion, for arguments that make
    /// it exit by itself (`--help`, a bad option, a netdev that cannot open), and returns
    /// its output. A daemon still running after [`STARTUP_TIMEOUT`] is killed (exit
    /// status 137), so a test expecting an error fails rather than hangs.
    ///
    /// # Panics
    /// When the binary is missing or `timeout` (coreutils) cannot be run.
    pub fn run_to_exit(args: &[&str]) -> Output {
        let bin = bin_path("pollswitch");
        Command::new("timeout")
            .arg("-s")
            .arg("KILL")
            .arg(STARTUP_TIMEOUT.as_secs().to_string())
            .arg(&bin)
            .args(args)
            .stdin(Stdio::null())
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap_or_else(|e| panic!("run timeout {} {args:?}: {e}", bin.display()))
    }
}

/// Checks what a daemon said and did at exit: status 0, and the pool line
/// `pollswitch: pool: F of T buffers free` with F = T = the N of the start line
/// `pollswitch: pool of N buffers`.
///
/// # Panics
/// When the status is not 0, a line is missing, or a buffer leaked.
pub fn assert_clean_exit(status: ExitStatus, stderr: &str) {
    assert_eq!(
        status.code(),
        Some(0),
        "pollswitch did not exit cleanly ({status}); stderr:\n{stderr}"
    );
    let announced = stderr.lines().find_map(|l| {
        l.strip_prefix("pollswitch: pool of ")?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    });
    let last = stderr.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("pollswitch: pool: ")?;
        let mut w = rest.split_whitespace();
        let free = w.next()?.parse::<u64>().ok()?;
        (w.next()? == "of").then_some(())?;
        let total = w.next()?.parse::<u64>().ok()?;
        Some((free, total))
    });
    let gso = stderr.lines().rev().find_map(|l| {
        let rest = l.strip_prefix("pollswitch: GSO buffers: ")?;
        let mut w = rest.split_whitespace();
        let free = w.next()?.parse::<u64>().ok()?;
        (w.next()? == "of").then_some(())?;
        Some((free, w.next()?.parse::<u64>().ok()?))
    });
    if let Some((free, total)) = gso {
        assert_eq!(
            free,
            total,
            "{} GSO buffer(s) leaked; stderr:\n{stderr}",
            total - free
        );
    }
    let Some((free, total)) = last else {
        panic!("no 'pollswitch: pool: F of T buffers free' line at exit; stderr:\n{stderr}");
    };
    assert_eq!(
        free,
        total,
        "{} buffer(s) leaked; stderr:\n{stderr}",
        total - free
    );
    assert_eq!(
        Some(total),
        announced,
        "the pool at exit is not the pool announced at start; stderr:\n{stderr}"
    );
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("command", &self.proc.command())
            .field("pid", &self.proc.pid())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_tool;
    use std::os::unix::process::ExitStatusExt;
    use testbed::process::alive;

    fn sh() -> std::path::PathBuf {
        require_tool("sh")
    }

    #[test]
    fn daemon_waits_for_ready_and_stops_with_sigterm() {
        let d = Daemon::start_program(
            &sh(),
            &[
                "-c",
                "echo starting >&2; echo out; sleep 0.2; echo 'pollswitch: ready' >&2; \
                 echo later >&2; exec sleep 600",
            ],
        );
        assert!(d.stderr_text().contains("starting\n"));
        assert!(d.wait_for_stderr("later", Duration::from_secs(5)));
        assert!(wait_until(Duration::from_secs(5), || d.stdout_text() == "out\n"));
        let (status, stderr) = d.stop();
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status}");
        assert_eq!(stderr, "starting\npollswitch: ready\nlater\n");
    }

    #[test]
    fn stop_returns_the_exit_code_of_a_clean_shutdown() {
        let d = Daemon::start_program(
            &sh(),
            &[
                "-c",
                "trap 'echo bye >&2; exit 0' TERM; echo 'pollswitch: ready' >&2; \
                 while :; do sleep 0.05; done",
            ],
        );
        let (status, stderr) = d.stop();
        assert!(status.success(), "{status}");
        assert!(stderr.ends_with("bye\n"), "{stderr}");
    }

    #[test]
    fn early_exit_panics_with_stderr() {
        let err = std::panic::catch_unwind(|| {
            Daemon::start_program(&sh(), &["-c", "echo 'bad option -x' >&2; exit 2"])
        })
        .expect_err("no ready line");
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("exited early") && msg.contains("bad option -x"),
            "{msg}"
        );
    }

    #[test]
    fn clean_exit_needs_status_zero_and_every_buffer() {
        let ok = ExitStatus::from_raw(0);
        let good = "pollswitch: pool of 64 buffers of 9344 bytes\npollswitch: ready\n\
                    pollswitch: pool: 64 of 64 buffers free\n";
        assert_clean_exit(ok, good);
        let bad = [
            (ok, good.replace("64 of 64", "63 of 64"), "leaked"),
            (
                ok,
                good.replace("pool: 64 of 64", "pool: 32 of 32"),
                "not the pool",
            ),
            (
                ok,
                good.replace("pool: 64 of 64 buffers free", ""),
                "no 'pollswitch",
            ),
            (
                ExitStatus::from_raw(2 << 8),
                good.to_string(),
                "did not exit cleanly",
            ),
        ];
        for (status, stderr, why) in bad {
            let err =
                std::panic::catch_unwind(|| assert_clean_exit(status, &stderr)).expect_err(why);
            let msg = err.downcast_ref::<String>().unwrap();
            assert!(msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn drop_kills_a_running_daemon() {
        let d = Daemon::start_program(
            &sh(),
            &["-c", "echo 'pollswitch: ready' >&2; exec sleep 600"],
        );
        let pid = d.pid();
        drop(d);
        assert!(!alive(pid));
    }
}
