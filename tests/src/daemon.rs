//! The `pollswitch` daemon under test, as a child process.
//!
//! Contract with the daemon: it writes human-readable lines to stderr, and the line
//! containing `pollswitch: ready` appears once its command-line netdevs exist and its QMP
//! sockets accept connections. SIGTERM makes it exit.
//!
//! Two reader threads copy its stderr and stdout into shared buffers as they come, so a
//! test can wait for a line, and a failure can show everything the daemon said.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::{bin_path, signal, wait_until, Netns, STARTUP_TIMEOUT};

/// The stderr line that says the daemon is ready.
pub const READY: &str = "pollswitch: ready";

/// How long [`Daemon::stop`] waits after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Captured {
    stderr: String,
    stdout: String,
    /// Reader threads that have seen EOF.
    closed: u8,
}

type Shared = Arc<(Mutex<Captured>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Captured> {
    // A reader thread cannot panic while holding the lock, but stay usable if one did.
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running daemon, killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    shared: Shared,
    what: String,
}

impl Daemon {
    /// Starts `target/<profile>/pollswitch args...` and waits for [`READY`].
    ///
    /// # Panics
    /// When the binary is missing (run `cargo build --workspace`), or it exits or is not
    /// ready within [`STARTUP_TIMEOUT`]; the message has its stderr so far.
    pub fn start(args: &[&str]) -> Daemon {
        let bin = bin_path("pollswitch");
        Self::start_command(Command::new(bin), args)
    }

    /// Like [`Daemon::start`], with the daemon inside `ns`.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_in(ns: &Netns, args: &[&str]) -> Daemon {
        let bin = bin_path("pollswitch");
        let cmd = ns.command(&[bin.to_str().expect("utf-8 path to pollswitch")]);
        Self::start_command(cmd, args)
    }

    /// Starts any `program` under the same contract (waits for [`READY`] on stderr):
    /// for other binaries of ours, and for testing this helper.
    ///
    /// # Panics
    /// As [`Daemon::start`].
    pub fn start_program(program: &Path, args: &[&str]) -> Daemon {
        Self::start_command(Command::new(program), args)
    }

    fn start_command(mut cmd: Command, args: &[&str]) -> Daemon {
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "1");
        let what = format!("{:?}", cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let shared: Shared = Arc::default();
        let err = child.stderr.take().expect("piped stderr");
        let out = child.stdout.take().expect("piped stdout");
        spawn_reader(err, shared.clone(), |c| &mut c.stderr);
        spawn_reader(out, shared.clone(), |c| &mut c.stdout);
        let mut d = Daemon {
            child: Some(child),
            shared,
            what,
        };
        if !d.wait_for_stderr(READY, STARTUP_TIMEOUT) {
            // Its pipes close a moment before it can be reaped: give that moment.
            let mut exited = None;
            wait_until(Duration::from_secs(1), || {
                exited = d.child_mut().try_wait().ok().flatten();
                exited.is_some()
            });
            let state = match exited {
                Some(status) => format!("exited early, {status}"),
                None => format!("not ready after {STARTUP_TIMEOUT:?}"),
            };
            panic!("{} {state}; stderr so far:\n{}", d.what, d.stderr_text());
        }
        d
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("daemon child present until stop")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon child present").id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        lock(&self.shared).stderr.clone()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout_text(&self) -> String {
        lock(&self.shared).stdout.clone()
    }

    /// Waits until stderr contains `needle` (anywhere, including lines already seen);
    /// false after `timeout`, or at once when stderr closed without it.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (_, cv) = &*self.shared;
        let mut c = lock(&self.shared);
        loop {
            if c.stderr.contains(needle) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Both readers closed means the daemon (and anything holding its pipes) is
            // gone: nothing more will come.
            if left.is_zero() || c.closed == 2 {
                return false;
            }
            c = cv
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child_mut().try_wait(), Ok(None))
    }

    /// Sends SIGTERM, waits for the exit, and returns the exit status and all of stderr.
    ///
    /// # Panics
    /// When the daemon is still running [`STOP_TIMEOUT`] after SIGTERM (it is then
    /// killed with SIGKILL, and the message has its stderr).
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("daemon child present");
        signal(child.id(), "TERM");
        let mut status = None;
        wait_until(STOP_TIMEOUT, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} still running {STOP_TIMEOUT:?} after SIGTERM (killed); stderr:\n{}",
                self.what,
                self.stderr_text()
            );
        };
        // Let the readers copy the last bytes; a grandchild holding the pipes open must
        // not hang the test, hence the bound.
        let (_, cv) = &*self.shared;
        let c = lock(&self.shared);
        let c = cv
            .wait_timeout_while(c, Duration::from_secs(2), |c| c.closed < 2)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        (status, c.stderr.clone())
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
            .field("command", &self.what)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it has exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Copies `pipe` line by line into the field `field` picks, waking waiters after each
/// line, and counts itself closed at EOF.
fn spawn_reader(
    pipe: impl Read + Send + 'static,
    shared: Shared,
    field: fn(&mut Captured) -> &mut String,
) {
    thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            // A read error ends the capture like EOF does.
            let n = r.read_until(b'\n', &mut line).unwrap_or(0);
            let mut c = lock(&shared);
            if n == 0 {
                c.closed += 1;
                shared.1.notify_all();
                return;
            }
            field(&mut c).push_str(&String::from_utf8_lossy(&line));
            shared.1.notify_all();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require_tool;
    use std::os::unix::process::ExitStatusExt;

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
        assert!(!crate::pid_alive(pid));
    }
}
