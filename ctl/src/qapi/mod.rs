//! QAPI types and input visitors for the network part of QEMU's schema (`qapi/net.json`).
//!
//! The schema's `Netdev` union is described once, in [`netdev`], and read from two
//! sources that must agree on the value they produce and on the errors they report:
//!
//! ```text
//!  QMP netdev_add arguments ── JsonInput  ─┐
//!  (strict JSON types, like QEMU's         │   Input trait: take_str / take_bool /
//!   QObject input visitor)                 ├─► take_u32 / ... / finish  ──► Netdev
//!  -netdev tap,id=t0,...    ── KeyvalInput ─┘
//!  (every value a string, like QEMU's
//!   opts visitor)
//! ```
//!
//! Each options struct is declared once with the crate-internal `qapi_struct!` macro
//! (see `define.rs`), which also serves for other commands' argument structs.
//!
//! Error texts are QEMU's, word for word, so that tools written against QEMU see the
//! same `desc` from pollswitch. Every error here has QMP class `GenericError`.

pub mod commands;
mod define;
mod error;
mod input;
pub mod netdev;
mod scalar;
pub mod sockets;

pub use error::QapiError;
pub use input::{take_struct, Input, JsonInput, KeyvalInput, Nested, QapiStruct};
pub use netdev::{
    NetClientDriver, NetLegacyNicOptions, Netdev, NetdevAFXDPOptions, NetdevBridgeOptions,
    NetdevDgramOptions, NetdevHubPortOptions, NetdevL2TPv3Options, NetdevNetmapOptions, NetdevOpts,
    NetdevSocketOptions, NetdevStreamOptions, NetdevTapOptions, NetdevUserOptions,
    NetdevVdeOptions, NetdevVhostUserOptions, NetdevVhostVDPAOptions, NetdevXNullOptions,
    NetdevXVxlanOptions,
};
pub use scalar::{id_wellformed, parse_bool, parse_size};
pub use sockets::{
    InetSocketAddress, SocketAddress, StringBox, UnixSocketAddress, VsockSocketAddress,
};
