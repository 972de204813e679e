//! The `socket` netdev: Ethernet frames over UDP datagrams (`udp=`, `mcast=`) or over a
//! TCP stream with a 4-byte big-endian length prefix (`listen=`, `connect=`), or over a
//! socket passed in (`fd=`), as QEMU's `-netdev socket` speaks them.

pub mod framing;
pub mod stream;
pub mod udp;

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::OwnedFd;

use crate::error::Error;

/// What a socket port does, with its addresses resolved.
#[derive(Debug)]
pub enum SocketMode {
    /// Bind `local`, send each frame as a datagram to `remote`.
    Udp {
        /// Where frames go.
        remote: SocketAddr,
        /// Where we receive.
        local: SocketAddr,
    },
    /// Join multicast group `group` (its port too), on the interface with address
    /// `local` if given.
    Mcast {
        /// Group and port.
        group: SocketAddr,
        /// Local interface address.
        local: Option<std::net::Ipv4Addr>,
    },
    /// Accept one TCP connection at a time on `addr`.
    Listen {
        /// Where to listen.
        addr: SocketAddr,
    },
    /// Connect to `addr` once at creation.
    Connect {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// A socket passed in: datagram or stream, told by its type.
    Fd {
        /// The socket.
        fd: OwnedFd,
    },
}

/// Parses QEMU's `host:port` (host may be empty, meaning any address) to one address,
/// IPv4 preferred.
pub fn parse_host_port(s: &str) -> Result<SocketAddr, Error> {
    let bad = |why: &str| Error::Address {
        addr: s.to_string(),
        why: why.to_string(),
    };
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| bad("expected host:port"))?;
    let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("host has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:1234").unwrap(),
            "127.0.0.1:1234".parse().unwrap()
        );
        assert_eq!(
            parse_host_port(":99").unwrap(),
            "0.0.0.0:99".parse().unwrap()
        );
        assert_eq!(parse_host_port("localhost:7").unwrap().port(), 7);
        assert_eq!(
            parse_host_port("[::1]:8").unwrap(),
            "[::1]:8".parse().unwrap()
        );
        for bad in [
            "1234",
            "127.0.0.1:x",
            "127.0.0.1:70000",
            "no.such.host.invalid:1",
        ] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
}
