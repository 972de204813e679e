//! QMP, the QEMU Machine Protocol, as QEMU speaks it: greeting, capabilities
//! negotiation, `execute`/`arguments`/`id` requests, `return`/`error` replies and
//! timestamped events, over unix and TCP sockets, to many clients at once.
//!
//! [`server`] owns sockets and the control loop, [`wire`] the byte-level format,
//! [`commands`] the dispatch table, [`announce`] the announce-self timers, and [`scm`]
//! descriptor passing for `getfd`.

pub mod announce;
pub mod commands;
pub mod json;
pub mod schema;
pub mod scm;
pub mod server;
pub mod wire;
