//! Datagram socket ports: `udp=`/`localaddr=`, `mcast=`, and datagram `fd=`.
//! One Ethernet frame per datagram, both ways.
//!
//! A multicast port receives on a socket bound to the group's port and sends from a
//! second socket bound to an ephemeral port: with multicast loop on (so that several
//! switches and VMs on one host see each other, as QEMU does), the receiving side can
//! then recognise and ignore its own frames by their source address.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};
use switch::{Backend, Io, Pkt};

use crate::error::Error;
use crate::io::{DgramConfig, DgramIo, RxMode, TxMode};
use crate::sys::set_blocking;

/// A datagram port queue.
pub struct UdpPort {
    rx: DgramIo,
    /// The multicast send socket; `None` when `rx` also sends.
    tx: Option<DgramIo>,
    poll_us: Option<u32>,
}

fn sock_err(
    what: &'static str,
    addr: impl std::fmt::Display,
) -> impl FnOnce(std::io::Error) -> Error {
    let addr = addr.to_string();
    move |source| Error::Socket { what, addr, source }
}

fn udp_socket(domain_of: &SocketAddr) -> Result<Socket, Error> {
    Socket::new(
        Domain::for_address(*domain_of),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(sock_err("socket", domain_of))
}

impl UdpPort {
    /// `udp=remote,localaddr=local`.
    pub fn udp(
        remote: SocketAddr,
        local: SocketAddr,
        poll_us: Option<u32>,
    ) -> Result<UdpPort, Error> {
        let s = udp_socket(&local)?;
        s.set_reuse_address(true)
            .map_err(sock_err("set SO_REUSEADDR on", local))?;
        s.bind(&local.into()).map_err(sock_err("bind", local))?;
        let cfg = DgramConfig {
            rx: RxMode::Recv,
            tx: TxMode::Send,
            vnet_hdr_len: 0,
            dest: Some(remote),
            ignore_src: None,
            gso: true,
            offload: false,
            gro: true,
        };
        Ok(UdpPort {
            rx: DgramIo::new(s.into(), cfg),
            tx: None,
            poll_us,
        })
    }

    /// `mcast=group:port[,localaddr=ifaddr]`.
    pub fn mcast(
        group: SocketAddr,
        local: Option<Ipv4Addr>,
        poll_us: Option<u32>,
    ) -> Result<UdpPort, Error> {
        let SocketAddr::V4(g) = group else {
            return Err(Error::Config(format!("mcast address {group} is not IPv4")));
        };
        if !g.ip().is_multicast() {
            return Err(Error::Config(format!(
                "specified mcastaddr {} (0x{:08x}) does not contain a multicast address",
                g.ip(),
                u32::from(*g.ip())
            )));
        }
        let iface = local.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let r = udp_socket(&group)?;
        r.set_reuse_address(true)
            .map_err(sock_err("set SO_REUSEADDR on", group))?;
        // Bound to the group itself (as QEMU does), so datagrams of other groups that
        // other sockets joined on the same port are not delivered here.
        let bind = group;
        r.bind(&bind.into()).map_err(sock_err("bind", bind))?;
        r.join_multicast_v4(g.ip(), &iface)
            .map_err(sock_err("join multicast group", group))?;
        let t = udp_socket(&group)?;
        let src = SocketAddr::V4(SocketAddrV4::new(iface, 0));
        t.bind(&src.into()).map_err(sock_err("bind", src))?;
        t.set_multicast_loop_v4(true)
            .map_err(sock_err("set IP_MULTICAST_LOOP on", group))?;
        t.set_multicast_ttl_v4(1)
            .map_err(sock_err("set IP_MULTICAST_TTL on", group))?;
        if local.is_some() {
            t.set_multicast_if_v4(&iface)
                .map_err(sock_err("set IP_MULTICAST_IF", iface))?;
        }
        let own = t
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| match (a, local) {
                // Bound to any: the kernel uses the outgoing interface's address, which
                // for a loopback-routed group is the loopback address.
                (SocketAddr::V4(v), None) => {
                    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, v.port()))
                }
                (a, _) => a,
            });
        let rx = DgramIo::new(
            r.into(),
            DgramConfig {
                rx: RxMode::RecvMsg,
                tx: TxMode::Send,
                vnet_hdr_len: 0,
                dest: None,
                ignore_src: own,
                gso: false,
                offload: false,
                gro: false,
            },
        );
        let tx = DgramIo::new(
            t.into(),
            DgramConfig {
                rx: RxMode::Recv,
                tx: TxMode::Send,
                vnet_hdr_len: 0,
                dest: Some(group),
                ignore_src: None,
                gso: true,
                offload: false,
                gro: false,
            },
        );
        Ok(UdpPort {
            rx,
            tx: Some(tx),
            poll_us,
        })
    }

    /// `-netdev dgram` on unix sockets: binds `local` (a stale socket file is
    /// replaced, as QEMU does) and sends every frame to `remote`, which must exist
    /// already (the socket is connected to it).
    pub fn unix(
        local: &socket2::SockAddr,
        remote: &socket2::SockAddr,
        poll_us: Option<u32>,
    ) -> Result<UdpPort, Error> {
        use crate::socket::stream::describe;
        let s = Socket::new(Domain::UNIX, Type::DGRAM.cloexec(), None)
            .map_err(sock_err("socket", describe(local)))?;
        if let Some(p) = local.as_pathname() {
            let _ = std::fs::remove_file(p);
        }
        s.bind(local).map_err(sock_err("bind", describe(local)))?;
        s.connect(remote)
            .map_err(sock_err("connect to", describe(remote)))?;
        Ok(UdpPort {
            rx: DgramIo::new(s.into(), DgramConfig::connected(false)),
            tx: None,
            poll_us,
        })
    }

    /// A datagram socket passed in. Frames go to its connected peer.
    pub fn from_fd(fd: OwnedFd, poll_us: Option<u32>) -> Result<UdpPort, Error> {
        set_blocking(std::os::fd::AsFd::as_fd(&fd)).map_err(sock_err("make blocking", "fd"))?;
        Ok(UdpPort {
            rx: DgramIo::new(fd, DgramConfig::connected(true)),
            tx: None,
            poll_us,
        })
    }

    fn sender(&mut self) -> &mut DgramIo {
        self.tx.as_mut().unwrap_or(&mut self.rx)
    }
}

const TX_SIDE: u8 = 0x80;

impl Backend for UdpPort {
    fn kind(&self) -> &'static str {
        "socket"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        self.rx.start(io);
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        self.rx.rx_burst(io, out, max)
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        if self.tx.is_some() {
            // The send socket's requests are told apart by the TX_SIDE bit of the op.
            let mut side = SideIo { io, bit: TX_SIDE };
            return self.sender().tx_burst(side.io(), pkts);
        }
        self.rx.tx_burst(io, pkts)
    }

    fn complete(&mut self, io: &mut Io<'_>, op: u8, tag: u32, res: i32, flags: u32) {
        if op & TX_SIDE != 0 {
            if let Some(t) = &mut self.tx {
                t.complete(io, op & !TX_SIDE, tag, res, flags);
            }
        } else {
            self.rx.complete(io, op, tag, res, flags);
        }
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        let a = self.rx.stop(io);
        let b = match &mut self.tx {
            Some(t) => {
                let mut side = SideIo { io, bit: TX_SIDE };
                t.stop(side.io())
            }
            None => true,
        };
        a && b
    }

    fn max_held(&self, pool: &switch::Pool) -> usize {
        let n = pool.count();
        // With a separate send socket (multicast) the first one only receives.
        match &self.tx {
            Some(t) => self.rx.rx_held(n) + t.tx_held(n),
            None => self.rx.rx_held(n) + self.rx.tx_held(n),
        }
    }

    fn poll_us(&self) -> Option<u32> {
        self.poll_us
    }
}

/// Marks the requests of a second descriptor of the same port.
struct SideIo<'a, 'b> {
    io: &'a mut Io<'b>,
    bit: u8,
}

impl<'a, 'b> SideIo<'a, 'b> {
    fn io(&mut self) -> &mut Io<'b> {
        self.io.set_op_bits(self.bit);
        self.io
    }
}

impl Drop for SideIo<'_, '_> {
    fn drop(&mut self) {
        self.io.set_op_bits(0);
    }
}
