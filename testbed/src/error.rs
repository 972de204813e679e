//! The crate's one error type: a variant per step of building or tearing down a test
//! bed that can fail, each carrying what a person needs to fix it.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop a part of the test bed from coming up or going away.
#[derive(Debug, Error)]
pub enum Error {
    /// A program is not installed.
    #[error("{program} not found on PATH: {hint}")]
    MissingTool {
        /// The program looked for.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// A setup command (`ip`, `sysctl`, `vde_switch -d`, ...) could not run or failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it could not start.
        detail: String,
    },
    /// A child process could not be started.
    #[error("start `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A child process did not do what it must (get ready, keep running, stop in time);
    /// the text has its command line and the tail of its output.
    #[error("{name}: {detail}")]
    Process {
        /// Which process (`qemu`, `pollswitch`, ...).
        name: String,
        /// What went wrong, its command and its output.
        detail: String,
    },
    /// Opening or entering a network namespace.
    #[error("enter netns {name}")]
    Netns {
        /// The namespace.
        name: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A socket call (socket, bind, setsockopt, connect).
    #[error("{what}")]
    Socket {
        /// The step and the endpoint.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A QMP exchange: connect, greeting, a reply.
    #[error("QMP {what}")]
    Qmp {
        /// The step, with the socket.
        what: String,
        /// The failure (a timeout, a closed connection, bad JSON, an error reply).
        #[source]
        source: io::Error,
    },
    /// Creating or reading a file or directory.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// The test guest's kernel or initramfs is not where [`crate::guest::GuestImage`]
    /// looks.
    #[error("guest image {} missing: run scripts/guest-image as root (scripts/setup-host runs it), or point POLLSWITCH_GUEST_DIR at a directory it built", path.display())]
    MissingGuestImage {
        /// The file looked for.
        path: PathBuf,
    },
    /// A test guest did not finish as it must (no marker in time, QEMU exited before it,
    /// no power-off after the script); the text has the whole console so far.
    #[error(
        "guest: {what}\n  command: {command}\n  qemu stderr:\n{stderr}\n  console:\n{console}"
    )]
    Guest {
        /// What went wrong.
        what: String,
        /// QEMU's command line.
        command: String,
        /// What QEMU wrote to stderr.
        stderr: String,
        /// The guest's serial console, carriage returns and terminal escapes removed.
        console: String,
    },
    /// libvirt did not do what it must: a daemon did not come up, a domain did not
    /// start; the text has the log that says why (the daemon's, or the domain's QEMU
    /// log).
    #[error("libvirt: {what}\n  log:\n{log}")]
    Libvirt {
        /// What went wrong.
        what: String,
        /// The end of the log.
        log: String,
    },
    /// A value a caller passed that cannot work (a name too long, an empty command).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Socket`] for `what`.
    pub fn socket(what: impl Into<String>, source: io::Error) -> Error {
        Error::Socket {
            what: what.into(),
            source,
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and every source under it, joined with `: `, for one-line messages.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
