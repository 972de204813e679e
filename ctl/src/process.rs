//! `-daemonize` and `-pidfile`: the daemon's place among the host's processes.
//!
//! ```text
//!  pollswitch -daemonize ...
//!    fork ─┬─ parent: waits on a pipe ── one byte: exit 0 ── EOF: exit 1 (the child's
//!          │                                                   errors went to stderr)
//!          └─ child: setsid, starts everything; once ready writes the byte and moves
//!             its stdio to /dev/null
//! ```
//!
//! The fork happens before any thread exists (the arguments are checked first, the pool
//! and workers come after), so the child is a plain copy of a single-threaded process.
#![allow(unsafe_code)]

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::CtlError;

/// The child's end of the pipe to the waiting parent.
#[derive(Debug)]
pub struct Detached {
    notify: Option<OwnedFd>,
}

fn os_err(what: &str) -> CtlError {
    CtlError::Invalid(format!(
        "-daemonize: {what}: {}",
        std::io::Error::last_os_error()
    ))
}

/// Forks; returns only in the child (the parent exits with the child's verdict).
/// Must be called while the process has one thread.
pub fn daemonize() -> Result<Detached, CtlError> {
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a live array of two ints, which pipe2 fills on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_err("pipe"));
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the process has a single thread here (the caller's contract, kept by
    // main), so the child is a consistent copy; both sides only use async-signal-safe
    // calls and std's plain file I/O afterwards.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid > 0 {
        drop(w);
        let mut byte = [0u8; 1];
        let mut f = std::fs::File::from(r);
        let got = std::io::Read::read(&mut f, &mut byte).unwrap_or(0);
        if got == 1 {
            std::process::exit(0);
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a live int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status).max(1)
        } else {
            1
        };
        std::process::exit(code);
    }
    drop(r);
    // SAFETY: setsid takes no arguments; it fails only if we lead a group already.
    unsafe { libc::setsid() };
    Ok(Detached { notify: Some(w) })
}

impl Detached {
    /// Tells the parent that everything is up, and lets go of the terminal: stdin,
    /// stdout and stderr become /dev/null (the log goes to `-D FILE` from now on).
    pub fn ready(&mut self) {
        if let Some(w) = self.notify.take() {
            let _ = std::fs::File::from(w).write_all(&[1]);
        }
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for target in 0..3 {
                // SAFETY: dup2 onto the standard descriptors, which stay open (now on
                // /dev/null); `null` is a live descriptor.
                unsafe { libc::dup2(null.as_raw_fd(), target) };
            }
        }
    }
}

/// A `-pidfile`: written at start, removed when dropped (at exit).
#[derive(Debug)]
pub struct PidFile {
    path: std::path::PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`.
    pub fn create(path: &str) -> Result<PidFile, CtlError> {
        let p = crate::osarg::path(path);
        std::fs::write(&p, format!("{}\n", std::process::id())).map_err(|e| {
            CtlError::Invalid(format!("-pidfile {}: {e}", crate::osarg::display(path)))
        })?;
        Ok(PidFile { path: p })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
