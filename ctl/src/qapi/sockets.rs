//! The socket address types of QEMU's `qapi/sockets.json`, as `-netdev stream` and
//! `-netdev dgram` take them: `SocketAddress` is a flat union on `type`.
//!
//! ```text
//! SocketAddress { type: inet  → InetSocketAddress  { host, port, *numeric, *to, ... }
//!                       unix  → UnixSocketAddress  { path, *abstract, *tight }
//!                       vsock → VsockSocketAddress { cid, port }
//!                       fd    → String             { str } }
//! ```

use serde_json::{Map, Value};

use super::define::qapi_struct;
use super::error::QapiError;
use super::input::{Input, QapiStruct};

qapi_struct! {
    /// Captures a socket address or address range in the Internet namespace.
    pub struct InetSocketAddress {
        /// host part of the address
        host: req str = "host",
        /// port part of the address (a string: a number or a service name)
        port: req str = "port",
        /// true if the host/port are guaranteed to be numeric
        numeric: opt bool = "numeric",
        /// if present, this is range of possible addresses, with port between `port`
        /// and `to`
        to: opt uint16 = "to",
        /// whether to accept IPv4 addresses, default try both IPv4 and IPv6
        ipv4: opt bool = "ipv4",
        /// whether to accept IPv6 addresses, default try both IPv4 and IPv6
        ipv6: opt bool = "ipv6",
        /// enable keep-alive when connecting to/listening on this socket
        keep_alive: opt bool = "keep-alive",
        /// enable multi-path TCP
        mptcp: opt bool = "mptcp",
    }
}

qapi_struct! {
    /// Captures a socket address in the local ("Unix socket") namespace.
    pub struct UnixSocketAddress {
        /// filesystem path to use
        path: req str = "path",
        /// if true, this is a Linux abstract socket address
        abstract_: opt bool = "abstract",
        /// pass a socket address length confined to the minimum length of the abstract
        /// string, rather than the full sockaddr_un (default true)
        tight: opt bool = "tight",
    }
}

qapi_struct! {
    /// Captures a socket address in the vsock namespace.
    pub struct VsockSocketAddress {
        /// unique host identifier
        cid: req str = "cid",
        /// port
        port: req str = "port",
    }
}

qapi_struct! {
    /// A fat type wrapping 'str', to be embedded in lists (QAPI's `String`); as a
    /// `SocketAddress` branch, the name of a file descriptor.
    pub struct StringBox {
        /// the string
        str: req str = "str",
    }
}

/// Captures the address of a socket, which could also be a socket file descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketAddress {
    /// `inet`
    Inet(InetSocketAddress),
    /// `unix`
    Unix(UnixSocketAddress),
    /// `vsock`
    Vsock(VsockSocketAddress),
    /// `fd`: the name of a descriptor passed with `getfd`, or a number
    Fd(StringBox),
}

impl Default for SocketAddress {
    fn default() -> Self {
        SocketAddress::Fd(StringBox::default())
    }
}

impl SocketAddress {
    /// The discriminator value (`SocketAddressType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            SocketAddress::Inet(_) => "inet",
            SocketAddress::Unix(_) => "unix",
            SocketAddress::Vsock(_) => "vsock",
            SocketAddress::Fd(_) => "fd",
        }
    }
}

impl QapiStruct for SocketAddress {
    fn read_members<I: Input + ?Sized>(input: &mut I) -> Result<Self, QapiError> {
        let t = input.take_str("type")?;
        Ok(match t.as_str() {
            "inet" => SocketAddress::Inet(QapiStruct::read_members(input)?),
            "unix" => SocketAddress::Unix(QapiStruct::read_members(input)?),
            "vsock" => SocketAddress::Vsock(QapiStruct::read_members(input)?),
            "fd" => SocketAddress::Fd(QapiStruct::read_members(input)?),
            // QEMU names the member without its parent here (`type`, not `addr.type`).
            _ => {
                return Err(QapiError::BadEnumValue {
                    name: "type".into(),
                    value: t,
                })
            }
        })
    }

    fn write_members(&self, out: &mut Map<String, Value>) {
        out.insert("type".into(), Value::from(self.type_name()));
        match self {
            SocketAddress::Inet(a) => a.write_members(out),
            SocketAddress::Unix(a) => a.write_members(out),
            SocketAddress::Vsock(a) => a.write_members(out),
            SocketAddress::Fd(a) => a.write_members(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qapi::KeyvalInput;
    use serde_json::json;

    #[test]
    fn union_from_json_and_back() {
        let v = json!({"type": "inet", "host": "::1", "port": "80", "to": 90,
                       "keep-alive": true});
        let a = SocketAddress::from_qmp(v.as_object().unwrap()).unwrap();
        assert_eq!(
            a,
            SocketAddress::Inet(InetSocketAddress {
                host: "::1".into(),
                port: "80".into(),
                to: Some(90),
                keep_alive: Some(true),
                ..Default::default()
            })
        );
        assert_eq!(Value::Object(a.to_qmp()), v);
        let u = json!({"type": "unix", "path": "/p", "abstract": true, "tight": false});
        let a = SocketAddress::from_qmp(u.as_object().unwrap()).unwrap();
        assert_eq!(Value::Object(a.to_qmp()), u);
    }

    #[test]
    fn union_errors() {
        let e = |v: Value| {
            SocketAddress::from_qmp(v.as_object().unwrap())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(e(json!({})), "Parameter 'type' is missing");
        assert_eq!(
            e(json!({"type": "ip"})),
            "Parameter 'type' does not accept value 'ip'"
        );
        assert_eq!(
            e(json!({"type": "inet", "host": "h", "port": 1})),
            "Invalid parameter type for 'port', expected: string"
        );
        assert_eq!(
            e(json!({"type": "fd", "str": "3", "path": "/p"})),
            "Parameter 'path' is unexpected"
        );
        let pairs = [("type", "unix"), ("path", "/p"), ("tight", "off")]
            .map(|(k, v)| (k.to_string(), v.to_string()));
        let mut k = KeyvalInput::new(&pairs);
        let a = SocketAddress::read_members(&mut k).unwrap();
        assert_eq!(
            a,
            SocketAddress::Unix(UnixSocketAddress {
                path: "/p".into(),
                tight: Some(false),
                ..Default::default()
            })
        );
    }
}
