//! The daemon's log: levelled, timestamped lines for every control-plane change, client
//! and peer event and backend error, never one per packet. It goes to stderr, or to the
//! file of `-D FILE`; `-msg timestamp=off` drops the timestamps (QEMU's option, whose
//! default here is on); `POLLSWITCH_LOG` sets the level (`debug` shows announce-self
//! rounds; the syntax is tracing's `EnvFilter`, default `info`).
//!
//! The few lifecycle lines tools wait for (`pollswitch: ready`, the pool line at exit)
//! stay plain lines on stderr, whatever the log does.

use tracing_subscriber::EnvFilter;

use crate::error::CtlError;

/// Where the log goes and how it looks.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// `-D FILE`: append to this file instead of stderr.
    pub file: Option<String>,
    /// `-msg timestamp=on|off`.
    pub timestamps: bool,
}

/// Installs the log for the whole process; call once, early.
pub fn init(cfg: &LogConfig) -> Result<(), CtlError> {
    let filter =
        EnvFilter::try_from_env("POLLSWITCH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(false);
    let done = match (&cfg.file, cfg.timestamps) {
        (Some(f), ts) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(crate::osarg::path(f))
                .map_err(|e| CtlError::Invalid(format!("-D {}: {e}", crate::osarg::display(f))))?;
            let w = std::sync::Mutex::new(file);
            if ts {
                b.with_writer(w).try_init()
            } else {
                b.without_time().with_writer(w).try_init()
            }
        }
        (None, true) => b.with_writer(std::io::stderr).try_init(),
        (None, false) => b.without_time().with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests that build several daemons in one process) keeps the first.
    let _ = done;
    Ok(())
}
