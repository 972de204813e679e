//! The wake-up of a descriptor the worker reads and writes itself (the tap path): one
//! multishot io_uring readiness poll while the port runs, and one cancel when it stops.
//!
//! ```text
//!  start / rx_burst ── arm(): POLL_ADD (POLLIN, multishot) unless one is armed
//!  complete(op)     ── a poll completion: readable; one without F_MORE: re-arm later
//!  stop()           ── cancel everything on the fd once, true when nothing is in flight
//! ```
//!
//! For ports whose only io_uring requests are that poll and that cancel (l2tpv3,
//! netmap); the datagram engine keeps its own count, as it has reads and sends in flight
//! too.

use std::os::fd::BorrowedFd;

use switch::Io;

/// The `op` of the poll's completions.
pub const OP_POLL: u8 = 1;
/// The `op` of the cancel's completion.
pub const OP_CANCEL: u8 = 2;

/// The poll and cancel state of one port.
#[derive(Debug, Default)]
pub struct Readiness {
    armed: bool,
    inflight: u32,
    cancel_sent: bool,
    stopping: bool,
}

impl Readiness {
    /// Whether the port is stopping (it reads and sends nothing more).
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Whether a poll is armed (it will tell of new data).
    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Arms the poll on `fd` unless one is armed or the port is stopping.
    pub fn arm(&mut self, io: &mut Io<'_>, fd: BorrowedFd<'_>) {
        if !self.stopping && !self.armed && io.poll_readable(fd, OP_POLL) {
            self.armed = true;
            self.inflight += 1;
        }
    }

    /// A completion of this port; true when it was the poll (the descriptor has
    /// something to read).
    pub fn complete(&mut self, op: u8, flags: u32) -> bool {
        match op {
            OP_POLL => {
                if !io_uring::cqueue::more(flags) {
                    self.armed = false;
                    self.inflight = self.inflight.saturating_sub(1);
                }
                true
            }
            OP_CANCEL => {
                self.inflight = self.inflight.saturating_sub(1);
                false
            }
            _ => false,
        }
    }

    /// Starts or continues stopping: true once nothing of the port is in flight.
    pub fn stop(&mut self, io: &mut Io<'_>, fd: BorrowedFd<'_>) -> bool {
        self.stopping = true;
        if self.inflight == 0 {
            return true;
        }
        if !self.cancel_sent && io.cancel_all(fd, OP_CANCEL) {
            self.inflight += 1;
            self.cancel_sent = true;
        }
        false
    }
}
