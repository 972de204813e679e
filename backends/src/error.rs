//! The backends' error type: one variant per setup step that can fail. The `Display`
//! text is what a QMP client or the command line shows, so it names the thing that
//! failed the way a person would look for it.

use std::io;

/// Errors from creating a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address could not be parsed or resolved.
    #[error("invalid address '{addr}': {why}")]
    Address {
        /// What was given.
        addr: String,
        /// Why it is not usable.
        why: String,
    },
    /// A socket could not be made or configured.
    #[error("{what} {addr}: {source}")]
    Socket {
        /// The step (bind, connect, listen, join multicast group ...).
        what: &'static str,
        /// The address involved.
        addr: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Options that make no sense together or are missing.
    #[error("{0}")]
    Config(String),
    /// /dev/net/tun could not be opened.
    #[error("could not open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// A TUN/TAP ioctl failed.
    #[error("could not configure tap '{ifname}' ({what}): {source}")]
    TapIoctl {
        /// The interface.
        ifname: String,
        /// Which ioctl.
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A network script failed.
    #[error("network script {script} failed with status {status}")]
    Script {
        /// The script.
        script: String,
        /// Its exit status (or -1 when it could not run or was killed).
        status: i32,
    },
    /// A file descriptor passed in is not what the netdev needs.
    #[error("file descriptor {fd} {why}")]
    BadFd {
        /// The descriptor.
        fd: i32,
        /// What is wrong with it.
        why: String,
    },
    /// A step of setting up an AF_XDP socket or its XDP program failed.
    #[error("af-xdp ifname={ifname}: {what}: {source}")]
    AfXdp {
        /// The interface.
        ifname: String,
        /// The step, as a person would name it.
        what: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The host lacks what the option needs; the text says what and why.
    #[error("{0}")]
    Unsupported(String),
}
