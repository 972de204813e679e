//! The crate's one error type: a variant per step of setting up or tearing down a
//! measurement that can fail. The packet path never returns one (a frame that cannot be
//! sent or parsed is a counter); only setup, peers and reporting do.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can stop a measurement from starting or finishing.
#[derive(Debug, Error)]
pub enum PerfError {
    /// A command-line option or endpoint spec the tool cannot use.
    #[error("{0}")]
    Usage(String),
    /// A program a peer needs is not installed.
    #[error("{program} not found on PATH: {hint}")]
    MissingTool {
        /// The program looked for.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// Opening a socket for an endpoint (socket, bind, connect, setsockopt).
    #[error("{what}")]
    Socket {
        /// The step and the endpoint.
        what: String,
        /// The system error.
        #[source]
        source: io::Error,
    },
    /// A stream endpoint found no peer in time (no connection accepted or made).
    #[error("{0}")]
    Timeout(String),
    /// A step of the test bed: a namespace, a link, a child process, a peer, QMP.
    #[error(transparent)]
    Testbed(#[from] testbed::Error),
    /// A system under test or a peer misbehaved (stopped on its own, refused a
    /// command, measured nothing).
    #[error("{system}: {detail}")]
    Peer {
        /// The system (`pollswitch`, `qemu`, ...).
        system: String,
        /// What went wrong, with what it printed.
        detail: String,
    },
    /// Reading or writing a result file.
    #[error("{}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The system error.
        #[source]
        source: io::Error,
    },
}

impl PerfError {
    /// A [`PerfError::Socket`] for `what`, taking the error from `errno`.
    pub fn socket(what: impl Into<String>) -> PerfError {
        PerfError::Socket {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// A [`PerfError::Peer`].
    pub fn peer(system: &str, detail: impl Into<String>) -> PerfError {
        PerfError::Peer {
            system: system.to_string(),
            detail: detail.into(),
        }
    }
}

/// Shorthand for results in this crate.
pub type Result<T, E = PerfError> = std::result::Result<T, E>;

/// The error and every source under it, joined with `: `, for one-line messages (the
/// testbed's, which the tests use too).
pub use testbed::chain;
