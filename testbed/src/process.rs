//! Child processes: a daemon under test or a peer, started confined to cores
//! (`taskset`) and inside a namespace (`ip netns exec`) when asked, its stdout and stderr
//! copied by two reader threads into bounded buffers (so a chatty child never blocks on
//! a full pipe and never fills memory), waited on for a line, stopped with a signal and a
//! deadline, killed on drop, and tracked for the signal handler ([`crate::cleanup`]).
//!
//! ```text
//!  Launch::new("qemu", program).args(..).netns(Some(ns)).cores(&[1]).spawn()
//!    taskset -c 1 ip netns exec NS program args...     each execs the next: one pid
//!       stdout ─► reader ─┐
//!       stderr ─► reader ─┴─► Captured { head + … + tail } ─► wait_for, output, failed
//! ```

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

use crate::cleanup::{self, Guard};
use crate::error::{Error, Result};
use crate::{cpu, wait_until};

/// Bytes of the start of each stream kept once it grows past the limit (start-up lines
/// say what the process was asked to do).
const HEAD: usize = 64 << 10;
/// Bytes of the end of each stream kept (the latest lines say what went wrong).
const TAIL: usize = 1 << 20;
/// Lines of each stream an error message shows.
const SHOWN_LINES: usize = 40;

/// Sends `sig` to process `pid`; false when there is no such process.
pub fn signal(pid: u32, sig: Signal) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    kill_process(pid, sig).is_ok()
}

/// The fields of `/proc/PID/stat` after the command name: state is `[0]`, the parent
/// `[1]`, the start time `[19]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; it ends at the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// When process `pid` started (clock ticks after boot): with the pid, it names one
/// process for good.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

/// Every live process below `pid` (children, their children, ...), found by parent
/// links in `/proc`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out: Vec<u32> = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for &(child, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            if !out.contains(&child) && alive(child) {
                out.push(child);
                frontier.push(child);
            }
        }
    }
    out
}

/// One output stream: everything while it is short, else its first [`HEAD`] bytes and
/// its last [`TAIL`] bytes with a marker between.
#[derive(Debug, Default)]
struct Stream {
    head: String,
    tail: String,
    cut: u64,
}

impl Stream {
    fn push(&mut self, text: &str) {
        // The head fills first; everything after it goes to the tail.
        let mut at = HEAD.saturating_sub(self.head.len()).min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        self.head.push_str(&text[..at]);
        self.tail.push_str(&text[at..]);
        if self.tail.len() > TAIL {
            let mut cut = self.tail.len() - TAIL / 2;
            while !self.tail.is_char_boundary(cut) {
                cut += 1;
            }
            self.tail.drain(..cut);
            self.cut += cut as u64;
        }
    }

    fn text(&self) -> String {
        if self.cut == 0 {
            return format!("{}{}", self.head, self.tail);
        }
        format!(
            "{}\n[... {} bytes left out ...]\n{}",
            self.head, self.cut, self.tail
        )
    }
}

#[derive(Debug, Default)]
struct Captured {
    stdout: Stream,
    stderr: Stream,
    /// Reader threads that have seen EOF.
    closed: u8,
}

type Shared = Arc<(Mutex<Captured>, Condvar)>;

fn lock(shared: &Shared) -> MutexGuard<'_, Captured> {
    // A reader cannot panic while holding the lock; stay usable if one did.
    shared.0.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies `pipe` into the stream `field` picks as bytes come, waking waiters after each
/// read, and counts itself closed at EOF. Reads in chunks, so a line without end cannot
/// grow a buffer; a UTF-8 sequence cut by a chunk waits for its rest.
fn spawn_reader(
    mut pipe: impl Read + Send + 'static,
    shared: Shared,
    field: fn(&mut Captured) -> &mut Stream,
) {
    thread::spawn(move || {
        let mut buf = vec![0u8; 8192];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            // A read error ends the capture like EOF does.
            let n = pipe.read(&mut buf).unwrap_or(0);
            let mut c = lock(&shared);
            if n == 0 {
                if !pending.is_empty() {
                    field(&mut c).push(&String::from_utf8_lossy(&pending));
                }
                c.closed += 1;
                shared.1.notify_all();
                return;
            }
            pending.extend_from_slice(&buf[..n]);
            let keep = match std::str::from_utf8(&pending) {
                Ok(_) => 0,
                // An incomplete sequence at the very end: keep it for the next read.
                Err(e) if e.error_len().is_none() => pending.len() - e.valid_up_to(),
                Err(_) => 0,
            };
            let done = pending.len() - keep;
            field(&mut c).push(&String::from_utf8_lossy(&pending[..done]));
            pending.drain(..done);
            shared.1.notify_all();
        }
    });
}

/// How to start a child.
#[derive(Debug, Clone)]
pub struct Launch {
    name: String,
    program: OsString,
    args: Vec<OsString>,
    netns: Option<String>,
    cores: Vec<usize>,
    env: Vec<(OsString, OsString)>,
}

impl Launch {
    /// `program` with no arguments, called `name` in messages.
    pub fn new(name: &str, program: impl AsRef<OsStr>) -> Launch {
        Launch {
            name: name.to_string(),
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            netns: None,
            cores: Vec::new(),
            env: Vec::new(),
        }
    }

    /// One more argument.
    pub fn arg(mut self, a: impl AsRef<OsStr>) -> Launch {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    /// More arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Runs it inside namespace `netns` (`ip netns exec`), if given.
    pub fn netns(mut self, netns: Option<&str>) -> Launch {
        self.netns = netns.map(str::to_string);
        self
    }

    /// Confines it, and every thread and child it makes, to `cores` (`taskset -c`);
    /// empty: not confined.
    pub fn cores(mut self, cores: &[usize]) -> Launch {
        self.cores = cores.to_vec();
        self
    }

    /// Sets an environment variable for it.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Launch {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// The whole command: taskset and ip netns exec first, when they apply.
    fn words(&self) -> Result<Vec<OsString>> {
        let mut words: Vec<OsString> = cpu::taskset(&self.cores)?
            .into_iter()
            .map(OsString::from)
            .collect();
        if let Some(ns) = &self.netns {
            words.extend(["ip", "netns", "exec", ns].map(OsString::from));
        }
        words.push(self.program.clone());
        words.extend(self.args.iter().cloned());
        Ok(words)
    }

    /// Starts it, stdin from /dev/null, stdout and stderr captured.
    pub fn spawn(self) -> Result<Process> {
        let words = self.words()?;
        let command = words
            .iter()
            .map(|w| w.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let (mut child, guard) = cleanup::spawn(&mut cmd).map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        let shared: Shared = Arc::default();
        if let Some(out) = child.stdout.take() {
            spawn_reader(out, shared.clone(), |c| &mut c.stdout);
        }
        if let Some(err) = child.stderr.take() {
            spawn_reader(err, shared.clone(), |c| &mut c.stderr);
        }
        Ok(Process {
            child,
            name: self.name,
            command,
            shared,
            _guard: guard,
        })
    }
}

/// A running child, killed on drop if still running.
pub struct Process {
    child: Child,
    name: String,
    command: String,
    shared: Shared,
    _guard: Guard,
}

impl Process {
    /// Its pid (taskset and `ip netns exec` exec the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it is called in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command line it was started with.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.shared).stderr.text()
    }

    /// What it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        lock(&self.shared).stdout.text()
    }

    /// Stdout, then stderr.
    pub fn output(&self) -> String {
        let c = lock(&self.shared);
        format!("{}{}", c.stdout.text(), c.stderr.text())
    }

    /// Waits until stderr contains `needle` (anywhere, including what came before);
    /// false after `timeout`, or at once when both pipes closed without it.
    pub fn wait_for_stderr(&self, needle: &str, timeout: Duration) -> bool {
        self.wait_text(timeout, |c| c.stderr.text().contains(needle))
    }

    fn wait_text(&self, timeout: Duration, found: impl Fn(&Captured) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (_, cv) = &*self.shared;
        let mut c = lock(&self.shared);
        loop {
            if found(&c) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // Both readers closed: the child (and anything holding its pipes) is gone.
            if left.is_zero() || c.closed == 2 {
                return false;
            }
            c = cv
                .wait_timeout(c, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until its stdout or stderr contains `needle`; an error with its output when
    /// it exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let found = self.wait_text(timeout, |c| {
            c.stdout.text().contains(needle) || c.stderr.text().contains(needle)
        });
        if found {
            return Ok(());
        }
        // Its pipes close a moment before it can be reaped: give that moment.
        let mut status = None;
        wait_until(Duration::from_secs(1), || {
            status = self.try_wait();
            status.is_some()
        });
        Err(match status {
            Some(s) => self.failed(&format!("exited ({s}) before {needle:?}")),
            None => self.failed(&format!("no {needle:?} within {timeout:?}")),
        })
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Sends `sig` (unless it has exited already) and waits up to `timeout` for it to
    /// exit; its status, whatever it is. An error when it does not exit in time (it is
    /// then killed).
    pub fn stop(&mut self, sig: Signal, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait() {
            return Ok(status);
        }
        signal(self.pid(), sig);
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        match status {
            Some(s) => {
                self.wait_closed(Duration::from_secs(2));
                Ok(s)
            }
            None => {
                self.kill();
                Err(self.failed(&format!(
                    "still running {timeout:?} after signal {}; killed",
                    sig.as_raw()
                )))
            }
        }
    }

    /// Waits up to `timeout` for both output pipes to close, so that the last lines are
    /// in; false when something (a grandchild) still holds them open.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let (_, cv) = &*self.shared;
        let c = lock(&self.shared);
        let c = cv
            .wait_timeout_while(c, timeout, |c| c.closed < 2)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        c.closed == 2
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        // Errors mean it has exited already.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// An error naming it, saying `what` happened, with its command and the end of its
    /// output.
    pub fn failed(&self, what: &str) -> Error {
        let c = lock(&self.shared);
        Error::Process {
            name: self.name.clone(),
            detail: format!(
                "{what}\n  command: {}\n  stderr:\n{}\n  stdout:\n{}",
                self.command,
                last_lines(&c.stderr.text()),
                last_lines(&c.stdout.text())
            ),
        }
    }
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last [`SHOWN_LINES`] lines of `text`, indented.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(SHOWN_LINES)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    fn sh(script: &str) -> Launch {
        Launch::new("test", "sh").args(["-c", script])
    }

    #[test]
    fn output_is_captured_and_stop_reports_status() {
        let mut p = sh("echo hello; echo err >&2; exec sleep 30")
            .cores(&[0])
            .spawn()
            .unwrap();
        assert!(p.command().contains("-c 0 sh -c"), "{}", p.command());
        p.wait_for("hello", Duration::from_secs(5)).unwrap();
        assert!(p.wait_for_stderr("err", Duration::from_secs(5)));
        assert!(p.running());
        assert!(cleanup::tracked()
            .iter()
            .any(|i| matches!(i, cleanup::Item::Process { pid, .. } if *pid == p.pid())));
        let status = p.stop(Signal::TERM, Duration::from_secs(5)).unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert_eq!((p.stdout(), p.stderr()), ("hello\n".into(), "err\n".into()));
        // Already gone: the same status again.
        assert_eq!(
            p.stop(Signal::TERM, Duration::from_secs(1)).unwrap(),
            status
        );
    }

    #[test]
    fn early_exit_is_an_error_with_output() {
        let mut p = sh("echo boom >&2; exit 3").spawn().unwrap();
        let err = p
            .wait_for("ready", Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("boom") && err.contains("exited"), "{err}");
        assert!(!p.wait_for_stderr("ready", Duration::from_secs(5)));
    }

    #[test]
    fn a_process_that_ignores_the_signal_is_killed() {
        let mut p = sh("trap '' TERM; echo up; while :; do sleep 0.05; done")
            .spawn()
            .unwrap();
        p.wait_for("up", Duration::from_secs(5)).unwrap();
        let err = p
            .stop(Signal::TERM, Duration::from_millis(300))
            .unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
        assert!(!alive(p.pid()));
    }

    #[test]
    fn output_is_bounded_and_keeps_both_ends() {
        let mut s = Stream::default();
        s.push("first line\n");
        for _ in 0..(3 * TAIL / 1000) {
            s.push(&"x".repeat(999));
            s.push("\n");
        }
        s.push("last line\n");
        let t = s.text();
        assert!(t.len() < HEAD + TAIL + 100, "{}", t.len());
        assert!(t.starts_with("first line\n") && t.ends_with("last line\n"));
        assert!(t.contains("bytes left out"));
        let mut p = sh("head -c 5000000 /dev/zero | tr '\\0' y; echo; echo done >&2")
            .spawn()
            .unwrap();
        assert!(p.wait_for_stderr("done", Duration::from_secs(20)));
        assert!(p.wait_closed(Duration::from_secs(5)));
        assert!(p.stdout().len() < HEAD + TAIL + 100);
        p.stop(Signal::KILL, Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn drop_kills_and_descendants_are_found() {
        let p = Launch::new("test", "sleep").arg("600").spawn().unwrap();
        let pid = p.pid();
        assert!(descendants(std::process::id()).contains(&pid));
        assert!(start_time(pid).is_some());
        drop(p);
        assert!(!alive(pid));
        assert!(!descendants(std::process::id()).contains(&pid));
        assert!(!signal(u32::MAX, Signal::TERM));
    }
}
