//! The `Netdev` union of `qapi/net.json` and its branches.
//!
//! ```text
//! Netdev { id, opts }            base: 'id': 'str', 'type': 'NetClientDriver'
//!          opts: NetdevOpts      one variant per union branch, picked by 'type'
//! ```
//!
//! One [`Netdev`] value comes from either source — [`Netdev::from_qmp`] for
//! `netdev_add` arguments, [`Netdev::from_keyval`] for `-netdev` pairs — and goes
//! back out through [`Netdev::to_qmp`] (`query-netdev`). Members are visited in schema
//! order (`id`, `type`, then the branch's members) so that, when several are wrong,
//! the one reported is the one QEMU reports.

use serde_json::{Map, Value};

use super::define::qapi_struct;
use super::error::QapiError;
use super::input::{Input, JsonInput, KeyvalInput, QapiStruct};
use super::scalar::{id_wellformed, parse_strtoul10};
use super::sockets::SocketAddress;

qapi_struct! {
    /// Create a new Network Interface Card.
    ///
    /// In pollswitch a NIC-like port with a MAC address and an rx-filter whose far side
    /// is a local application attached over memif, peered with `netdev`.
    pub struct NetLegacyNicOptions {
        /// id of -netdev to connect to
        netdev: opt str = "netdev",
        /// MAC address
        macaddr: opt str = "macaddr",
        /// device model (e1000, rtl8139, virtio etc.)
        model: opt str = "model",
        /// PCI device address
        addr: opt str = "addr",
        /// number of MSI-x vectors, 0 to disable MSI-X
        vectors: opt uint32 = "vectors",
        /// pollswitch: the memif control socket the NIC's application attaches on
        x_memif: opt str = "x-memif",
        /// pollswitch: memif role, server (default: the application connects) or client
        x_memif_role: opt str = "x-memif-role",
        /// pollswitch: memif interface id (default 0)
        x_memif_id: opt uint32 = "x-memif-id",
        /// pollswitch: ring slots as a client (power of two, default 1024)
        x_memif_ring_size: opt uint32 = "x-memif-ring-size",
        /// pollswitch: buffer size as a client (default 2048)
        x_memif_buffer_size: opt uint32 = "x-memif-buffer-size",
        /// pollswitch: secret the application must give (server) or that we give
        x_memif_secret: opt str = "x-memif-secret",
        /// pollswitch: client only, frames cross in the pool's own buffers (the
        /// application can then read and write the whole pool)
        x_memif_zero_copy: opt bool = "x-memif-zero-copy",
    }
}

qapi_struct! {
    /// Use the user mode network stack which requires no administrator privilege to run.
    pub struct NetdevUserOptions {
        /// client hostname reported by the builtin DHCP server
        hostname: opt str = "hostname",
        /// isolate the guest from the host
        restrict: opt bool = "restrict",
        /// whether to support IPv4, default true for enabled
        ipv4: opt bool = "ipv4",
        /// whether to support IPv6, default true for enabled
        ipv6: opt bool = "ipv6",
        /// legacy parameter, use net= instead
        ip: opt str = "ip",
        /// IP network address that the guest will see, in the form addr[/netmask]
        net: opt str = "net",
        /// guest-visible address of the host
        host: opt str = "host",
        /// root directory of the built-in TFTP server
        tftp: opt str = "tftp",
        /// BOOTP filename, for use with tftp=
        bootfile: opt str = "bootfile",
        /// the first of the 16 IPs the built-in DHCP server can assign
        dhcpstart: opt str = "dhcpstart",
        /// guest-visible address of the virtual nameserver
        dns: opt str = "dns",
        /// list of DNS suffixes to search, passed as DHCP option to the guest
        dnssearch: opt StringList = "dnssearch",
        /// guest-visible domain name of the virtual nameserver
        domainname: opt str = "domainname",
        /// IPv6 network prefix (default is fec0::)
        ipv6_prefix: opt str = "ipv6-prefix",
        /// IPv6 network prefix length (default is 64)
        ipv6_prefixlen: opt int = "ipv6-prefixlen",
        /// guest-visible IPv6 address of the host
        ipv6_host: opt str = "ipv6-host",
        /// guest-visible IPv6 address of the virtual nameserver
        ipv6_dns: opt str = "ipv6-dns",
        /// root directory of the built-in SMB server
        smb: opt str = "smb",
        /// IP address of the built-in SMB server
        smbserver: opt str = "smbserver",
        /// redirect incoming TCP or UDP host connections to guest endpoints
        hostfwd: opt StringList = "hostfwd",
        /// forward guest TCP connections
        guestfwd: opt StringList = "guestfwd",
        /// RFC2132 "TFTP server name" string
        tftp_server_name: opt str = "tftp-server-name",
    }
}

qapi_struct! {
    /// Used to configure a host TAP network interface backend.
    pub struct NetdevTapOptions {
        /// interface name
        ifname: opt str = "ifname",
        /// file descriptor of an already opened tap
        fd: opt str = "fd",
        /// multiple file descriptors of already opened multiqueue capable tap
        fds: opt str = "fds",
        /// script to initialize the interface
        script: opt str = "script",
        /// script to shut down the interface
        downscript: opt str = "downscript",
        /// bridge name
        br: opt str = "br",
        /// command to execute to configure bridge
        helper: opt str = "helper",
        /// send buffer limit. Understands `[TGMKkb]` suffixes.
        sndbuf: opt size = "sndbuf",
        /// enable the IFF_VNET_HDR flag on the tap interface
        vnet_hdr: opt bool = "vnet_hdr",
        /// enable vhost-net network accelerator
        vhost: opt bool = "vhost",
        /// file descriptor of an already opened vhost net device
        vhostfd: opt str = "vhostfd",
        /// file descriptors of multiple already opened vhost net devices
        vhostfds: opt str = "vhostfds",
        /// vhost on for non-MSIX virtio guests
        vhostforce: opt bool = "vhostforce",
        /// number of queues to be created for multiqueue capable tap
        queues: opt uint32 = "queues",
        /// maximum number of microseconds that could be spent on busy polling for tap
        poll_us: opt uint32 = "poll-us",
    }
}

qapi_struct! {
    /// Configure an Ethernet over L2TPv3 tunnel.
    pub struct NetdevL2TPv3Options {
        /// source address
        src: req str = "src",
        /// destination address
        dst: req str = "dst",
        /// source port - mandatory for udp, optional for ip
        srcport: opt str = "srcport",
        /// destination port - mandatory for udp, optional for ip
        dstport: opt str = "dstport",
        /// force the use of ipv6
        ipv6: opt bool = "ipv6",
        /// use the udp version of l2tpv3 encapsulation
        udp: opt bool = "udp",
        /// use 64 bit cookies
        cookie64: opt bool = "cookie64",
        /// have sequence counter
        counter: opt bool = "counter",
        /// pin sequence counter to zero
        pincounter: opt bool = "pincounter",
        /// 32 or 64 bit transmit cookie
        txcookie: opt uint64 = "txcookie",
        /// 32 or 64 bit receive cookie
        rxcookie: opt uint64 = "rxcookie",
        /// 32 bit transmit session
        txsession: req uint32 = "txsession",
        /// 32 bit receive session - if not specified set to the same value as transmit
        rxsession: opt uint32 = "rxsession",
        /// additional offset before the packet payload
        offset: opt uint32 = "offset",
    }
}

qapi_struct! {
    /// Socket netdevs are used to establish a network connection to another QEMU
    /// virtual machine via a TCP socket.
    pub struct NetdevSocketOptions {
        /// file descriptor of an already opened socket
        fd: opt str = "fd",
        /// port number, and optional hostname, to listen on
        listen: opt str = "listen",
        /// port number, and optional hostname, to connect to
        connect: opt str = "connect",
        /// UDP multicast address and port number
        mcast: opt str = "mcast",
        /// source address and port for multicast and udp packets
        localaddr: opt str = "localaddr",
        /// UDP unicast address and port number
        udp: opt str = "udp",
    }
}

qapi_struct! {
    /// Configuration info for stream socket netdev.
    ///
    /// Only SocketAddress types 'unix', 'inet' and 'fd' are supported.
    pub struct NetdevStreamOptions {
        /// socket address to listen on (server=true) or connect to (server=false)
        addr: req (SocketAddress) = "addr",
        /// create server socket (default: false)
        server: opt bool = "server",
        /// for a client socket, if a socket is disconnected, then attempt a reconnect
        /// after the given number of seconds (deprecated: use reconnect-ms)
        reconnect: opt int = "reconnect",
        /// for a client socket, if a socket is disconnected, then attempt a reconnect
        /// after the given number of milliseconds (since QEMU 9.2)
        reconnect_ms: opt int = "reconnect-ms",
    }
}

qapi_struct! {
    /// Configuration info for datagram socket netdev.
    ///
    /// Only SocketAddress types 'unix', 'inet' and 'fd' are supported. If remote
    /// address is present and it's a multicast address, local address is optional.
    /// Otherwise local address is required and remote address is optional.
    pub struct NetdevDgramOptions {
        /// local address
        local: opt (SocketAddress) = "local",
        /// remote address
        remote: opt (SocketAddress) = "remote",
    }
}

qapi_struct! {
    /// Connect to a vde switch running on the host.
    pub struct NetdevVdeOptions {
        /// socket path
        sock: opt str = "sock",
        /// port number
        port: opt uint16 = "port",
        /// group owner of socket
        group: opt str = "group",
        /// permissions for socket
        mode: opt uint16 = "mode",
    }
}

qapi_struct! {
    /// Connect a host TAP network interface to a host bridge device.
    pub struct NetdevBridgeOptions {
        /// bridge name
        br: opt str = "br",
        /// command to execute to configure bridge
        helper: opt str = "helper",
    }
}

qapi_struct! {
    /// Connect two or more net clients through a software hub.
    pub struct NetdevHubPortOptions {
        /// hub identifier number
        hubid: req int32 = "hubid",
        /// used to connect hub to a netdev instead of a device
        netdev: opt str = "netdev",
        /// pollswitch: the hub learns MAC addresses and sends known unicast to one port
        x_learning: opt bool = "x-learning",
        /// pollswitch: how long a learned address lives after its last frame (ms)
        x_fdb_ageing_ms: opt uint32 = "x-fdb-ageing-ms",
        /// pollswitch: the most addresses the hub's table holds
        x_fdb_size: opt uint32 = "x-fdb-size",
        /// pollswitch: the port's access VLAN (with x-trunks: its native VLAN)
        x_vlan: opt uint16 = "x-vlan",
        /// pollswitch: the VLANs the port carries tagged, such as 10:20-29
        x_trunks: opt str = "x-trunks",
    }
}

qapi_struct! {
    /// Connect a client to a netmap-enabled NIC or to a VALE switch port.
    pub struct NetdevNetmapOptions {
        /// Either the name of an existing network interface supported by netmap, or
        /// the name of a VALE port (`valeXXX:YYY`, created on the fly).
        ifname: req str = "ifname",
        /// path of the netmap device (default: '/dev/netmap')
        devname: opt str = "devname",
    }
}

qapi_struct! {
    /// Vhost-user network backend.
    pub struct NetdevVhostUserOptions {
        /// name of a unix socket chardev
        chardev: req str = "chardev",
        /// vhost on for non-MSIX virtio guests (default: false)
        vhostforce: opt bool = "vhostforce",
        /// number of queues to be created for multiqueue vhost-user (default: 1)
        queues: opt int = "queues",
    }
}

qapi_struct! {
    /// Vhost-vdpa network backend.
    pub struct NetdevVhostVDPAOptions {
        /// path of vhost-vdpa device (default:'/dev/vhost-vdpa-0')
        vhostdev: opt str = "vhostdev",
        /// number of queues to be created for multiqueue vhost-vdpa (default: 1)
        queues: opt int = "queues",
    }
}

qapi_struct! {
    /// AF_XDP network backend (QEMU 8.2+).
    pub struct NetdevAFXDPOptions {
        /// The name of an existing network interface.
        ifname: req str = "ifname",
        /// Attach mode for a default XDP program (`AFXDPMode`: native or skb). If not
        /// specified, then 'native' will be tried first, then 'skb'.
        mode: opt str = "mode",
        /// Force XDP copy mode even if device supports zero-copy. (default: false)
        force_copy: opt bool = "force-copy",
        /// number of queues to be used for multiqueue interfaces (default: 1).
        queues: opt int = "queues",
        /// Use @queues starting from this queue number (default: 0).
        start_queue: opt int = "start-queue",
        /// Don't load a default XDP program, use one already loaded to the interface
        /// (default: false). Requires @sock-fds.
        inhibit: opt bool = "inhibit",
        /// A colon (:) separated list of file descriptors for already open but not
        /// bound AF_XDP sockets in the queue order. One fd per queue. These descriptors
        /// should already be added into XDP socket map for corresponding queues.
        /// Requires @inhibit.
        sock_fds: opt str = "sock-fds",
    }
}

qapi_struct! {
    /// pollswitch extension: an in-memory source and sink port (see
    /// `backends/src/null.rs`), to measure the switch without a kernel or peer.
    pub struct NetdevXNullOptions {
        /// source, sink or both (default sink)
        mode: opt str = "mode",
        /// frame size in bytes (default 64)
        size: opt uint32 = "size",
        /// frames per second a source makes, 0 for as many as it can (default 0)
        rate: opt uint64 = "rate",
        /// frames a source makes in all, 0 for no limit (default 0)
        count: opt uint64 = "count",
        /// the sink stops taking frames (a stalled peer)
        stall: opt bool = "stall",
        /// busy-poll time of a sink
        poll_us: opt uint32 = "poll-us",
        /// a source's frames' source MAC
        src: opt str = "src",
        /// a source's frames' destination MAC
        dst: opt str = "dst",
        /// address pairs a source cycles through, counting in their last 3 bytes
        flows: opt uint32 = "flows",
    }
}

qapi_struct! {
    /// pollswitch extension: Ethernet in VXLAN (RFC 7348) over UDP, to other hosts'
    /// switches and the kernel's `vxlan` devices (see `backends/src/vxlan.rs`).
    pub struct NetdevXVxlanOptions {
        /// the segment's VXLAN network identifier (0..16777215)
        vni: req uint32 = "vni",
        /// the one remote VTEP (IPv4 or IPv6 address)
        remote: opt str = "remote",
        /// a multicast group (IPv4) for floods; remote VTEPs are learned per MAC
        group: opt str = "group",
        /// local address (with a group: of the interface that joins it)
        local: opt str = "local",
        /// UDP port, local and remote (default 4789)
        port: opt uint16 = "port",
        /// TTL of sent datagrams (default 1 to a group)
        ttl: opt uint32 = "ttl",
        /// most remote MACs learned (default 4096)
        fdb_size: opt uint32 = "fdb-size",
        /// life of a learned MAC after its last frame, ms (default 300000)
        ageing_ms: opt uint32 = "ageing-ms",
    }
}

/// The schema's `NetClientDriver` enum: every value `type` may take, plus our `x-`
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetClientDriver {
    /// `none`: valid in the enum, but no netdev backend (refused by `netdev_add`).
    None,
    /// `nic`
    Nic,
    /// `user`
    User,
    /// `tap`
    Tap,
    /// `l2tpv3`
    L2tpv3,
    /// `socket`
    Socket,
    /// `stream` (QEMU 7.2+)
    Stream,
    /// `dgram` (QEMU 7.2+)
    Dgram,
    /// `vde`
    Vde,
    /// `bridge`
    Bridge,
    /// `hubport`
    Hubport,
    /// `netmap`
    Netmap,
    /// `vhost-user`
    VhostUser,
    /// `vhost-vdpa`
    VhostVdpa,
    /// `af-xdp` (QEMU 8.2+)
    AfXdp,
    /// `x-null` (extension)
    XNull,
    /// `x-vxlan` (extension)
    XVxlan,
}

impl NetClientDriver {
    /// Every value, in schema order, extensions last.
    pub const ALL: [NetClientDriver; 17] = [
        NetClientDriver::None,
        NetClientDriver::Nic,
        NetClientDriver::User,
        NetClientDriver::Tap,
        NetClientDriver::L2tpv3,
        NetClientDriver::Socket,
        NetClientDriver::Stream,
        NetClientDriver::Dgram,
        NetClientDriver::Vde,
        NetClientDriver::Bridge,
        NetClientDriver::Hubport,
        NetClientDriver::Netmap,
        NetClientDriver::VhostUser,
        NetClientDriver::VhostVdpa,
        NetClientDriver::AfXdp,
        NetClientDriver::XNull,
        NetClientDriver::XVxlan,
    ];

    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            NetClientDriver::None => "none",
            NetClientDriver::Nic => "nic",
            NetClientDriver::User => "user",
            NetClientDriver::Tap => "tap",
            NetClientDriver::L2tpv3 => "l2tpv3",
            NetClientDriver::Socket => "socket",
            NetClientDriver::Stream => "stream",
            NetClientDriver::Dgram => "dgram",
            NetClientDriver::Vde => "vde",
            NetClientDriver::Bridge => "bridge",
            NetClientDriver::Hubport => "hubport",
            NetClientDriver::Netmap => "netmap",
            NetClientDriver::VhostUser => "vhost-user",
            NetClientDriver::VhostVdpa => "vhost-vdpa",
            NetClientDriver::AfXdp => "af-xdp",
            NetClientDriver::XNull => "x-null",
            NetClientDriver::XVxlan => "x-vxlan",
        }
    }

    /// The value whose QAPI name is exactly `name`.
    pub fn from_name(name: &str) -> Option<NetClientDriver> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// The branch of the `Netdev` union: the options of one backend type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetdevOpts {
    /// `nic`
    Nic(NetLegacyNicOptions),
    /// `user`
    User(NetdevUserOptions),
    /// `tap`
    Tap(NetdevTapOptions),
    /// `l2tpv3`
    L2tpv3(NetdevL2TPv3Options),
    /// `socket`
    Socket(NetdevSocketOptions),
    /// `stream`
    Stream(NetdevStreamOptions),
    /// `dgram`
    Dgram(NetdevDgramOptions),
    /// `vde`
    Vde(NetdevVdeOptions),
    /// `bridge`
    Bridge(NetdevBridgeOptions),
    /// `hubport`
    Hubport(NetdevHubPortOptions),
    /// `netmap`
    Netmap(NetdevNetmapOptions),
    /// `vhost-user`
    VhostUser(NetdevVhostUserOptions),
    /// `vhost-vdpa`
    VhostVdpa(NetdevVhostVDPAOptions),
    /// `af-xdp`
    AfXdp(NetdevAFXDPOptions),
    /// `x-null`
    XNull(NetdevXNullOptions),
    /// `x-vxlan`
    XVxlan(NetdevXVxlanOptions),
}

impl NetdevOpts {
    /// The discriminator value.
    pub fn driver(&self) -> NetClientDriver {
        match self {
            NetdevOpts::Nic(_) => NetClientDriver::Nic,
            NetdevOpts::User(_) => NetClientDriver::User,
            NetdevOpts::Tap(_) => NetClientDriver::Tap,
            NetdevOpts::L2tpv3(_) => NetClientDriver::L2tpv3,
            NetdevOpts::Socket(_) => NetClientDriver::Socket,
            NetdevOpts::Stream(_) => NetClientDriver::Stream,
            NetdevOpts::Dgram(_) => NetClientDriver::Dgram,
            NetdevOpts::Vde(_) => NetClientDriver::Vde,
            NetdevOpts::Bridge(_) => NetClientDriver::Bridge,
            NetdevOpts::Hubport(_) => NetClientDriver::Hubport,
            NetdevOpts::Netmap(_) => NetClientDriver::Netmap,
            NetdevOpts::VhostUser(_) => NetClientDriver::VhostUser,
            NetdevOpts::VhostVdpa(_) => NetClientDriver::VhostVdpa,
            NetdevOpts::AfXdp(_) => NetClientDriver::AfXdp,
            NetdevOpts::XNull(_) => NetClientDriver::XNull,
            NetdevOpts::XVxlan(_) => NetClientDriver::XVxlan,
        }
    }

    /// The QAPI name of the type (`"tap"`, `"vhost-user"`, ...).
    pub fn type_name(&self) -> &'static str {
        self.driver().as_str()
    }

    /// Reads the branch members for `driver`; `None` for `none`, which has no branch.
    fn read<I: Input + ?Sized>(
        driver: NetClientDriver,
        input: &mut I,
    ) -> Result<Option<NetdevOpts>, QapiError> {
        Ok(Some(match driver {
            NetClientDriver::None => return Ok(None),
            NetClientDriver::Nic => NetdevOpts::Nic(QapiStruct::read_members(input)?),
            NetClientDriver::User => NetdevOpts::User(QapiStruct::read_members(input)?),
            NetClientDriver::Tap => NetdevOpts::Tap(QapiStruct::read_members(input)?),
            NetClientDriver::L2tpv3 => NetdevOpts::L2tpv3(QapiStruct::read_members(input)?),
            NetClientDriver::Socket => NetdevOpts::Socket(QapiStruct::read_members(input)?),
            NetClientDriver::Stream => NetdevOpts::Stream(QapiStruct::read_members(input)?),
            NetClientDriver::Dgram => NetdevOpts::Dgram(QapiStruct::read_members(input)?),
            NetClientDriver::Vde => NetdevOpts::Vde(QapiStruct::read_members(input)?),
            NetClientDriver::Bridge => NetdevOpts::Bridge(QapiStruct::read_members(input)?),
            NetClientDriver::Hubport => NetdevOpts::Hubport(QapiStruct::read_members(input)?),
            NetClientDriver::Netmap => NetdevOpts::Netmap(QapiStruct::read_members(input)?),
            NetClientDriver::VhostUser => NetdevOpts::VhostUser(QapiStruct::read_members(input)?),
            NetClientDriver::VhostVdpa => NetdevOpts::VhostVdpa(QapiStruct::read_members(input)?),
            NetClientDriver::AfXdp => NetdevOpts::AfXdp(QapiStruct::read_members(input)?),
            NetClientDriver::XNull => NetdevOpts::XNull(QapiStruct::read_members(input)?),
            NetClientDriver::XVxlan => NetdevOpts::XVxlan(QapiStruct::read_members(input)?),
        }))
    }

    /// Appends the branch members that are set.
    fn write_members(&self, out: &mut Map<String, Value>) {
        match self {
            NetdevOpts::Nic(o) => o.write_members(out),
            NetdevOpts::User(o) => o.write_members(out),
            NetdevOpts::Tap(o) => o.write_members(out),
            NetdevOpts::L2tpv3(o) => o.write_members(out),
            NetdevOpts::Socket(o) => o.write_members(out),
            NetdevOpts::Stream(o) => o.write_members(out),
            NetdevOpts::Dgram(o) => o.write_members(out),
            NetdevOpts::Vde(o) => o.write_members(out),
            NetdevOpts::Bridge(o) => o.write_members(out),
            NetdevOpts::Hubport(o) => o.write_members(out),
            NetdevOpts::Netmap(o) => o.write_members(out),
            NetdevOpts::VhostUser(o) => o.write_members(out),
            NetdevOpts::VhostVdpa(o) => o.write_members(out),
            NetdevOpts::AfXdp(o) => o.write_members(out),
            NetdevOpts::XNull(o) => o.write_members(out),
            NetdevOpts::XVxlan(o) => o.write_members(out),
        }
    }
}

/// The configuration of a network device: QAPI's `Netdev` union.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netdev {
    /// Identifier for monitor commands; always well-formed (see [`id_wellformed`]).
    pub id: String,
    /// The backend type and its options.
    pub opts: NetdevOpts,
}

/// Result of visiting the union: the id and the branch, `None` for type `none`.
type Visited = (String, Option<NetdevOpts>);

impl Netdev {
    /// Visits base and branch members in schema order, then refuses leftovers.
    fn visit<I: Input + ?Sized>(input: &mut I) -> Result<Visited, QapiError> {
        let id = input.take_str("id")?;
        let type_name = input.take_str("type")?;
        let driver =
            NetClientDriver::from_name(&type_name).ok_or_else(|| QapiError::BadEnumValue {
                name: "type".to_string(),
                value: type_name,
            })?;
        let opts = NetdevOpts::read(driver, input)?;
        input.finish()?;
        Ok((id, opts))
    }

    /// What `net_client_init1` refuses after a successful visit: type `none`.
    fn backend(id: String, opts: Option<NetdevOpts>) -> Result<Netdev, QapiError> {
        match opts {
            Some(opts) => Ok(Netdev { id, opts }),
            None => Err(QapiError::NoBackend(
                NetClientDriver::None.as_str().to_string(),
            )),
        }
    }

    /// Reads `netdev_add` arguments as strictly as QEMU: JSON types must match the
    /// schema, a `['String']` list is an array of `{"str": ...}` objects, members the
    /// chosen type does not have are refused, and the `id` must be an identifier.
    pub fn from_qmp(args: &Map<String, Value>) -> Result<Netdev, QapiError> {
        let (id, opts) = Self::visit(&mut JsonInput::new(args))?;
        if !id_wellformed(&id) {
            return Err(QapiError::BadId);
        }
        Self::backend(id, opts)
    }

    /// Reads the `key=value` pairs of a `-netdev` option the way QEMU's QemuOpts and
    /// opts visitor do: every value is a string parsed per the member's type (bools
    /// `on`/`yes`/`true`/`y` and `off`/`no`/`false`/`n`; integers in C syntax,
    /// `0x` hex and `0` octal included; sizes with `k`/`M`/`G`/`T`/`P`/`E` suffixes),
    /// a list member is its key repeated, a repeated scalar takes its last value,
    /// and the first `id` is the one used (later ones are ignored, as QemuOpts does).
    /// The convenience key `ipv6-net=PREFIX[/LEN]` sets `ipv6-prefix` and
    /// `ipv6-prefixlen`.
    pub fn from_keyval(pairs: &[(String, String)]) -> Result<Netdev, QapiError> {
        // QemuOpts checks the id when it creates the option group, before anything else.
        let id = pairs
            .iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v.clone());
        if let Some(id) = &id {
            if !id_wellformed(id) {
                return Err(QapiError::BadId);
            }
        }
        let mut pairs: Vec<(String, String)> =
            pairs.iter().filter(|(k, _)| k != "id").cloned().collect();
        expand_ipv6_net(&mut pairs)?;
        if let Some(id) = id {
            pairs.push(("id".to_string(), id));
        }
        let (id, opts) = Self::visit(&mut KeyvalInput::new(&pairs))?;
        Self::backend(id, opts)
    }

    /// The members that are set, as a QMP object: `id`, `type`, then the branch
    /// members in schema order. [`Netdev::from_qmp`] reads it back to the same value.
    pub fn to_qmp(&self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("id".to_string(), Value::String(self.id.clone()));
        out.insert(
            "type".to_string(),
            Value::String(self.opts.type_name().to_string()),
        );
        self.opts.write_members(&mut out);
        out
    }

    /// The QAPI name of the backend type.
    pub fn type_name(&self) -> &'static str {
        self.opts.type_name()
    }
}

/// QEMU's `ipv6-net=fec0::/64` convenience: the last `ipv6-net` (and only that one,
/// as `qemu_opt_unset` removes) becomes `ipv6-prefix` and `ipv6-prefixlen` (64 when
/// no length is given), appended so that they override earlier ones.
fn expand_ipv6_net(pairs: &mut Vec<(String, String)>) -> Result<(), QapiError> {
    let Some(pos) = pairs.iter().rposition(|(k, _)| k == "ipv6-net") else {
        return Ok(());
    };
    let (_, value) = pairs.remove(pos);
    if value.is_empty() {
        return Err(QapiError::invalid_value("ipv6-net", "a valid IPv6 prefix"));
    }
    let (prefix, len) = match value.split_once('/') {
        Some((prefix, len)) => {
            let len = parse_strtoul10(len)
                .ok_or_else(|| QapiError::invalid_value("ipv6-prefixlen", "a number"))?;
            (prefix.to_string(), len)
        }
        None => (value, 64),
    };
    pairs.push(("ipv6-prefix".to_string(), prefix));
    // qemu_opt_set_number prints the value as a signed 64-bit number.
    pairs.push(("ipv6-prefixlen".to_string(), (len as i64).to_string()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sockets::{InetSocketAddress, UnixSocketAddress};
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn qmp(v: Value) -> Result<Netdev, String> {
        Netdev::from_qmp(&obj(v)).map_err(|e| e.to_string())
    }

    fn kv(pairs: &[(&str, &str)]) -> Result<Netdev, String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Netdev::from_keyval(&owned).map_err(|e| e.to_string())
    }

    /// `k=v,k=v` (no escapes in these fixtures) read as `-netdev` pairs.
    fn kv_line(line: &str) -> Result<Netdev, String> {
        let pairs: Vec<(String, String)> = line
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("k=v");
                (k.to_string(), v.to_string())
            })
            .collect();
        Netdev::from_keyval(&pairs).map_err(|e| e.to_string())
    }

    /// A QMP argument object, the same as `-netdev` pairs (`k=v,k=v`), and the value
    /// both must produce.
    type Case = (Value, &'static str, Netdev);

    /// Every union member, once from each source.
    fn every_member() -> Vec<Case> {
        let nd = |id: &str, opts| Netdev {
            id: id.to_string(),
            opts,
        };
        vec![
            (
                json!({"id": "n0", "type": "nic", "netdev": "h0", "macaddr": "52:54:00:12:34:56",
                       "model": "memif", "addr": "3", "vectors": 4,
                       "x-memif": "/run/n0.sock", "x-memif-role": "client", "x-memif-id": 2,
                       "x-memif-ring-size": 512, "x-memif-buffer-size": 4096,
                       "x-memif-secret": "s"}),
                concat!(
                    "type=nic,id=n0,netdev=h0,macaddr=52:54:00:12:34:56,model=memif,addr=3,",
                    "vectors=4,x-memif=/run/n0.sock,x-memif-role=client,x-memif-id=2,",
                    "x-memif-ring-size=512,x-memif-buffer-size=4096,x-memif-secret=s",
                ),
                nd(
                    "n0",
                    NetdevOpts::Nic(NetLegacyNicOptions {
                        netdev: Some("h0".into()),
                        macaddr: Some("52:54:00:12:34:56".into()),
                        model: Some("memif".into()),
                        addr: Some("3".into()),
                        vectors: Some(4),
                        x_memif: Some("/run/n0.sock".into()),
                        x_memif_role: Some("client".into()),
                        x_memif_id: Some(2),
                        x_memif_ring_size: Some(512),
                        x_memif_buffer_size: Some(4096),
                        x_memif_secret: Some("s".into()),
                        x_memif_zero_copy: None,
                    }),
                ),
            ),
            (
                json!({"id": "u0", "type": "user", "restrict": false, "ipv6": true,
                       "net": "10.0.2.0/24", "dnssearch": [{"str": "example.org"}],
                       "ipv6-prefix": "fec0::", "ipv6-prefixlen": 64,
                       "hostfwd": [{"str": "tcp::2222-:22"}, {"str": "udp::53-:53"}],
                       "tftp-server-name": "tftp"}),
                concat!(
                    "type=user,id=u0,restrict=off,ipv6=on,net=10.0.2.0/24,",
                    "dnssearch=example.org,ipv6-prefix=fec0::,ipv6-prefixlen=64,",
                    "hostfwd=tcp::2222-:22,hostfwd=udp::53-:53,tftp-server-name=tftp",
                ),
                nd(
                    "u0",
                    NetdevOpts::User(NetdevUserOptions {
                        restrict: Some(false),
                        ipv6: Some(true),
                        net: Some("10.0.2.0/24".into()),
                        dnssearch: Some(vec!["example.org".into()]),
                        ipv6_prefix: Some("fec0::".into()),
                        ipv6_prefixlen: Some(64),
                        hostfwd: Some(vec!["tcp::2222-:22".into(), "udp::53-:53".into()]),
                        tftp_server_name: Some("tftp".into()),
                        ..Default::default()
                    }),
                ),
            ),
            (
                json!({"id": "t0", "type": "tap", "ifname": "tap0", "script": "no",
                       "sndbuf": 1048576, "vnet_hdr": true, "vhost": false, "queues": 2,
                       "poll-us": 50}),
                concat!(
                    "type=tap,id=t0,ifname=tap0,script=no,sndbuf=1M,vnet_hdr=on,vhost=off,",
                    "queues=2,poll-us=50",
                ),
                nd(
                    "t0",
                    NetdevOpts::Tap(NetdevTapOptions {
                        ifname: Some("tap0".into()),
                        script: Some("no".into()),
                        sndbuf: Some(1 << 20),
                        vnet_hdr: Some(true),
                        vhost: Some(false),
                        queues: Some(2),
                        poll_us: Some(50),
                        ..Default::default()
                    }),
                ),
            ),
            (
                json!({"id": "l0", "type": "l2tpv3", "src": "10.0.0.1", "dst": "10.0.0.2",
                       "srcport": "1701", "dstport": "1702", "udp": true, "cookie64": true,
                       "txcookie": 18446744073709551615u64, "rxcookie": 7, "txsession": 1,
                       "rxsession": 2, "offset": 0, "counter": false, "pincounter": true,
                       "ipv6": false}),
                concat!(
                    "type=l2tpv3,id=l0,src=10.0.0.1,dst=10.0.0.2,srcport=1701,dstport=1702,",
                    "udp=yes,cookie64=y,txcookie=0xffffffffffffffff,rxcookie=7,txsession=1,",
                    "rxsession=2,offset=0,counter=n,pincounter=true,ipv6=false",
                ),
                nd(
                    "l0",
                    NetdevOpts::L2tpv3(NetdevL2TPv3Options {
                        src: "10.0.0.1".into(),
                        dst: "10.0.0.2".into(),
                        srcport: Some("1701".into()),
                        dstport: Some("1702".into()),
                        ipv6: Some(false),
                        udp: Some(true),
                        cookie64: Some(true),
                        counter: Some(false),
                        pincounter: Some(true),
                        txcookie: Some(u64::MAX),
                        rxcookie: Some(7),
                        txsession: 1,
                        rxsession: Some(2),
                        offset: Some(0),
                    }),
                ),
            ),
            (
                json!({"id": "s0", "type": "socket", "udp": "127.0.0.1:5000",
                       "localaddr": "127.0.0.1:5001"}),
                "type=socket,id=s0,udp=127.0.0.1:5000,localaddr=127.0.0.1:5001",
                nd(
                    "s0",
                    NetdevOpts::Socket(NetdevSocketOptions {
                        udp: Some("127.0.0.1:5000".into()),
                        localaddr: Some("127.0.0.1:5001".into()),
                        ..Default::default()
                    }),
                ),
            ),
            (
                json!({"id": "st0", "type": "stream", "server": true,
                       "addr": {"type": "inet", "host": "127.0.0.1", "port": "1234",
                                "numeric": true, "to": 1240, "ipv4": true,
                                "keep-alive": false},
                       "reconnect-ms": 500}),
                concat!(
                    "type=stream,id=st0,server=on,addr.type=inet,addr.host=127.0.0.1,",
                    "addr.port=1234,addr.numeric=on,addr.to=1240,addr.ipv4=on,",
                    "addr.keep-alive=off,reconnect-ms=500",
                ),
                nd(
                    "st0",
                    NetdevOpts::Stream(NetdevStreamOptions {
                        addr: SocketAddress::Inet(InetSocketAddress {
                            host: "127.0.0.1".into(),
                            port: "1234".into(),
                            numeric: Some(true),
                            to: Some(1240),
                            ipv4: Some(true),
                            keep_alive: Some(false),
                            ..Default::default()
                        }),
                        server: Some(true),
                        reconnect_ms: Some(500),
                        ..Default::default()
                    }),
                ),
            ),
            (
                json!({"id": "dg0", "type": "dgram",
                       "local": {"type": "unix", "path": "/tmp/a", "abstract": false},
                       "remote": {"type": "unix", "path": "/tmp/b"}}),
                concat!(
                    "type=dgram,id=dg0,local.type=unix,local.path=/tmp/a,",
                    "local.abstract=off,remote.type=unix,remote.path=/tmp/b",
                ),
                nd(
                    "dg0",
                    NetdevOpts::Dgram(NetdevDgramOptions {
                        local: Some(SocketAddress::Unix(UnixSocketAddress {
                            path: "/tmp/a".into(),
                            abstract_: Some(false),
                            tight: None,
                        })),
                        remote: Some(SocketAddress::Unix(UnixSocketAddress {
                            path: "/tmp/b".into(),
                            ..Default::default()
                        })),
                    }),
                ),
            ),
            (
                json!({"id": "v0", "type": "vde", "sock": "/tmp/vde", "port": 3,
                       "group": "kvm", "mode": 448}),
                "type=vde,id=v0,sock=/tmp/vde,port=3,group=kvm,mode=0700",
                nd(
                    "v0",
                    NetdevOpts::Vde(NetdevVdeOptions {
                        sock: Some("/tmp/vde".into()),
                        port: Some(3),
                        group: Some("kvm".into()),
                        mode: Some(0o700),
                    }),
                ),
            ),
            (
                json!({"id": "b0", "type": "bridge", "br": "br0",
                       "helper": "/usr/lib/qemu/qemu-bridge-helper"}),
                "type=bridge,id=b0,br=br0,helper=/usr/lib/qemu/qemu-bridge-helper",
                nd(
                    "b0",
                    NetdevOpts::Bridge(NetdevBridgeOptions {
                        br: Some("br0".into()),
                        helper: Some("/usr/lib/qemu/qemu-bridge-helper".into()),
                    }),
                ),
            ),
            (
                json!({"id": "h0", "type": "hubport", "hubid": -1, "netdev": "t0"}),
                "type=hubport,id=h0,hubid=-1,netdev=t0",
                nd(
                    "h0",
                    NetdevOpts::Hubport(NetdevHubPortOptions {
                        hubid: -1,
                        netdev: Some("t0".into()),
                        x_learning: None,
                        x_fdb_ageing_ms: None,
                        x_fdb_size: None,
                        x_vlan: None,
                        x_trunks: None,
                    }),
                ),
            ),
            (
                json!({"id": "m0", "type": "netmap", "ifname": "vale0:1",
                       "devname": "/dev/netmap"}),
                "type=netmap,id=m0,ifname=vale0:1,devname=/dev/netmap",
                nd(
                    "m0",
                    NetdevOpts::Netmap(NetdevNetmapOptions {
                        ifname: "vale0:1".into(),
                        devname: Some("/dev/netmap".into()),
                    }),
                ),
            ),
            (
                json!({"id": "vu0", "type": "vhost-user", "chardev": "c0", "vhostforce": true,
                       "queues": 4}),
                "type=vhost-user,id=vu0,chardev=c0,vhostforce=on,queues=4",
                nd(
                    "vu0",
                    NetdevOpts::VhostUser(NetdevVhostUserOptions {
                        chardev: "c0".into(),
                        vhostforce: Some(true),
                        queues: Some(4),
                    }),
                ),
            ),
            (
                json!({"id": "vx0", "type": "x-vxlan", "vni": 42, "group": "239.1.1.1",
                       "local": "10.0.0.1", "port": 4790, "ttl": 2, "fdb-size": 100,
                       "ageing-ms": 1000}),
                "type=x-vxlan,id=vx0,vni=42,group=239.1.1.1,local=10.0.0.1,port=4790,ttl=2,\
                 fdb-size=100,ageing-ms=1000",
                nd(
                    "vx0",
                    NetdevOpts::XVxlan(NetdevXVxlanOptions {
                        vni: 42,
                        remote: None,
                        group: Some("239.1.1.1".into()),
                        local: Some("10.0.0.1".into()),
                        port: Some(4790),
                        ttl: Some(2),
                        fdb_size: Some(100),
                        ageing_ms: Some(1000),
                    }),
                ),
            ),
            (
                json!({"id": "vd0", "type": "vhost-vdpa", "vhostdev": "/dev/vhost-vdpa-0",
                       "queues": 1}),
                "type=vhost-vdpa,id=vd0,vhostdev=/dev/vhost-vdpa-0,queues=1",
                nd(
                    "vd0",
                    NetdevOpts::VhostVdpa(NetdevVhostVDPAOptions {
                        vhostdev: Some("/dev/vhost-vdpa-0".into()),
                        queues: Some(1),
                    }),
                ),
            ),
            (
                json!({"id": "xd0", "type": "af-xdp", "ifname": "veth0", "mode": "native",
                       "force-copy": true, "queues": 2, "start-queue": 1, "inhibit": true,
                       "sock-fds": "a:b"}),
                concat!(
                    "type=af-xdp,id=xd0,ifname=veth0,mode=native,force-copy=on,queues=2,",
                    "start-queue=1,inhibit=on,sock-fds=a:b",
                ),
                nd(
                    "xd0",
                    NetdevOpts::AfXdp(NetdevAFXDPOptions {
                        ifname: "veth0".into(),
                        mode: Some("native".into()),
                        force_copy: Some(true),
                        queues: Some(2),
                        start_queue: Some(1),
                        inhibit: Some(true),
                        sock_fds: Some("a:b".into()),
                    }),
                ),
            ),
            (
                json!({"id": "z0", "type": "x-null", "mode": "both", "size": 128,
                       "rate": 1000, "count": 5, "stall": true, "poll-us": 7,
                       "src": "02:00:00:01:00:00", "dst": "02:00:00:02:00:00", "flows": 9}),
                "type=x-null,id=z0,mode=both,size=128,rate=1000,count=5,stall=on,poll-us=7,\
                 src=02:00:00:01:00:00,dst=02:00:00:02:00:00,flows=9",
                nd(
                    "z0",
                    NetdevOpts::XNull(NetdevXNullOptions {
                        mode: Some("both".into()),
                        size: Some(128),
                        rate: Some(1000),
                        count: Some(5),
                        stall: Some(true),
                        poll_us: Some(7),
                        src: Some("02:00:00:01:00:00".into()),
                        dst: Some("02:00:00:02:00:00".into()),
                        flows: Some(9),
                    }),
                ),
            ),
        ]
    }

    #[test]
    fn every_union_member_from_both_sources() {
        let cases = every_member();
        let mut seen: Vec<NetClientDriver> = Vec::new();
        for (json, line, want) in cases {
            assert_eq!(qmp(json.clone()).as_ref(), Ok(&want), "qmp {json}");
            assert_eq!(kv_line(line).as_ref(), Ok(&want), "keyval {line}");
            // to_qmp gives back exactly the members that were set, in schema order.
            let back = Value::Object(want.to_qmp());
            assert_eq!(
                Netdev::from_qmp(back.as_object().unwrap()).as_ref(),
                Ok(&want)
            );
            let mut sent: Vec<&String> = json.as_object().unwrap().keys().collect();
            let mut got: Vec<&String> = back.as_object().unwrap().keys().collect();
            sent.sort();
            got.sort();
            assert_eq!(sent, got);
            assert_eq!(want.type_name(), want.opts.driver().as_str());
            seen.push(want.opts.driver());
        }
        for d in NetClientDriver::ALL {
            assert!(d == NetClientDriver::None || seen.contains(&d), "{d:?}");
        }
    }

    #[test]
    fn to_qmp_order_and_minimal() {
        let nd = Netdev {
            id: "t0".into(),
            opts: NetdevOpts::Tap(NetdevTapOptions {
                poll_us: Some(0),
                ifname: Some("tap0".into()),
                ..Default::default()
            }),
        };
        let keys: Vec<String> = nd.to_qmp().keys().cloned().collect();
        assert_eq!(keys, ["id", "type", "ifname", "poll-us"]);
        let nd = Netdev {
            id: "s".into(),
            opts: NetdevOpts::Socket(NetdevSocketOptions::default()),
        };
        assert_eq!(
            Value::Object(nd.to_qmp()),
            json!({"id": "s", "type": "socket"})
        );
    }

    #[test]
    fn type_names() {
        for d in NetClientDriver::ALL {
            assert_eq!(NetClientDriver::from_name(d.as_str()), Some(d));
        }
        assert_eq!(NetClientDriver::from_name("Tap"), None);
        assert_eq!(NetClientDriver::VhostUser.as_str(), "vhost-user");
    }

    #[test]
    fn qmp_missing_and_order() {
        assert_eq!(
            qmp(json!({"type": "tap"})),
            Err("Parameter 'id' is missing".into())
        );
        assert_eq!(qmp(json!({})), Err("Parameter 'id' is missing".into()));
        assert_eq!(
            qmp(json!({"id": "x"})),
            Err("Parameter 'type' is missing".into())
        );
        // id, then type, then branch members in schema order, then leftovers.
        assert_eq!(
            qmp(json!({"id": 1, "type": "bogus"})),
            Err("Invalid parameter type for 'id', expected: string".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": 7})),
            Err("Invalid parameter type for 'type', expected: string".into())
        );
        assert_eq!(
            qmp(json!({"bogus": 1, "id": "x", "type": "bogus"})),
            Err("Parameter 'type' does not accept value 'bogus'".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": "tap", "poll-us": "1", "ifname": 3, "bogus": 1})),
            Err("Invalid parameter type for 'ifname', expected: string".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": "tap", "poll-us": "1", "bogus": 1})),
            Err("Parameter 'poll-us' expects uint64".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": "tap", "bogus": 1, "ifname": "t"})),
            Err("Parameter 'bogus' is unexpected".into())
        );
        // A member of another branch is unexpected too.
        assert_eq!(
            qmp(json!({"id": "x", "type": "socket", "ifname": "t"})),
            Err("Parameter 'ifname' is unexpected".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": "l2tpv3", "src": "a", "txsession": 1})),
            Err("Parameter 'dst' is missing".into())
        );
        assert_eq!(
            qmp(json!({"id": "x", "type": "hubport"})),
            Err("Parameter 'hubid' is missing".into())
        );
    }

    #[test]
    fn qmp_wrong_types() {
        let cases = [
            (
                json!({"vnet_hdr": "on"}),
                "Invalid parameter type for 'vnet_hdr', expected: boolean",
            ),
            (
                json!({"vnet_hdr": null}),
                "Invalid parameter type for 'vnet_hdr', expected: boolean",
            ),
            (
                json!({"ifname": null}),
                "Invalid parameter type for 'ifname', expected: string",
            ),
            (json!({"queues": 1.5}), "Parameter 'queues' expects uint64"),
            (json!({"queues": -1}), "Parameter 'queues' expects uint32_t"),
            (
                json!({"queues": 4294967296u64}),
                "Parameter 'queues' expects uint32_t",
            ),
            (json!({"sndbuf": "1M"}), "Parameter 'sndbuf' expects uint64"),
            (
                json!({"poll-us": true}),
                "Parameter 'poll-us' expects uint64",
            ),
        ];
        for (extra, want) in cases {
            let mut args = obj(json!({"id": "t0", "type": "tap"}));
            args.extend(obj(extra));
            assert_eq!(Netdev::from_qmp(&args).unwrap_err().to_string(), want);
        }
        assert_eq!(
            qmp(json!({"id": "h", "type": "hubport", "hubid": 2147483648u64})),
            Err("Parameter 'hubid' expects int32_t".into())
        );
        assert_eq!(
            qmp(json!({"id": "h", "type": "hubport", "hubid": 1.0})),
            Err("Invalid parameter type for 'hubid', expected: integer".into())
        );
        assert_eq!(
            qmp(json!({"id": "v", "type": "vde", "port": 65536})),
            Err("Parameter 'port' expects uint16_t".into())
        );
        assert_eq!(
            qmp(json!({"id": "v", "type": "vhost-user", "chardev": "c", "queues": "2"})),
            Err("Invalid parameter type for 'queues', expected: integer".into())
        );
        // Negative uint64 values wrap, as in QEMU.
        let l2 = qmp(json!({"id": "l", "type": "l2tpv3", "src": "a", "dst": "b",
                            "txsession": 1, "txcookie": -1}))
        .unwrap();
        match l2.opts {
            NetdevOpts::L2tpv3(o) => assert_eq!(o.txcookie, Some(u64::MAX)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn qmp_lists() {
        assert_eq!(
            qmp(json!({"id": "u", "type": "user", "hostfwd": "tcp::1-:1"})),
            Err("Invalid parameter type for 'hostfwd', expected: array".into())
        );
        assert_eq!(
            qmp(json!({"id": "u", "type": "user", "hostfwd": ["tcp::1-:1"]})),
            Err("Invalid parameter type for 'hostfwd[0]', expected: object".into())
        );
        assert_eq!(
            qmp(json!({"id": "u", "type": "user", "guestfwd": [{"str": "a"}, {}]})),
            Err("Parameter 'guestfwd[1].str' is missing".into())
        );
        let u = qmp(json!({"id": "u", "type": "user", "dnssearch": []})).unwrap();
        match &u.opts {
            NetdevOpts::User(o) => assert_eq!(o.dnssearch, Some(vec![])),
            other => panic!("{other:?}"),
        }
        assert_eq!(Netdev::from_qmp(&u.to_qmp()), Ok(u));
    }

    #[test]
    fn bad_id_and_none() {
        for bad in ["1x", "", "a b", "-x", "x/y"] {
            assert_eq!(
                qmp(json!({"id": bad, "type": "tap"})),
                Err("Parameter 'id' expects an identifier".into()),
                "{bad:?}"
            );
            assert_eq!(
                kv(&[("type", "tap"), ("id", bad)]),
                Err("Parameter 'id' expects an identifier".into()),
                "{bad:?}"
            );
        }
        // QMP: the visit comes first, then the id check.
        assert_eq!(
            qmp(json!({"id": "1x", "type": "tap", "bogus": 1})),
            Err("Parameter 'bogus' is unexpected".into())
        );
        // -netdev: QemuOpts checks the id before anything else.
        assert_eq!(
            kv(&[("type", "bogus"), ("id", "1x")]),
            Err("Parameter 'id' expects an identifier".into())
        );
        let none = "network backend 'none' is not compiled into this binary";
        assert_eq!(qmp(json!({"id": "n", "type": "none"})), Err(none.into()));
        assert_eq!(kv(&[("type", "none"), ("id", "n")]), Err(none.into()));
        assert_eq!(
            qmp(json!({"id": "n", "type": "none", "ifname": "x"})),
            Err("Parameter 'ifname' is unexpected".into())
        );
        assert_eq!(
            qmp(json!({"id": "1n", "type": "none"})),
            Err("Parameter 'id' expects an identifier".into())
        );
    }

    #[test]
    fn keyval_errors() {
        assert_eq!(
            kv(&[("type", "tap")]),
            Err("Parameter 'id' is missing".into())
        );
        assert_eq!(
            kv(&[("id", "t")]),
            Err("Parameter 'type' is missing".into())
        );
        assert_eq!(
            kv(&[("type", "bogus"), ("id", "t")]),
            Err("Parameter 'type' does not accept value 'bogus'".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("bogus", "1")]),
            Err("Invalid parameter 'bogus'".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("queues", "x")]),
            Err("Parameter 'queues' expects a uint64 value".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("queues", "4294967296")]),
            Err("Parameter 'queues' expects uint32_t".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("vhost", "1")]),
            Err("Parameter 'vhost' expects 'on' or 'off'".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("sndbuf", "1Q")]),
            Err("Parameter 'sndbuf' expects a size value".into())
        );
        assert_eq!(
            kv(&[("type", "hubport"), ("id", "h"), ("hubid", "x")]),
            Err("Parameter 'hubid' expects an int64 value".into())
        );
        assert_eq!(
            kv(&[("type", "hubport"), ("id", "h"), ("hubid", "2147483648")]),
            Err("Parameter 'hubid' expects int32_t".into())
        );
        assert_eq!(
            kv(&[("type", "vde"), ("id", "v"), ("port", "70000")]),
            Err("Parameter 'port' expects uint16_t".into())
        );
        // Schema order: the first wrong member of the branch is the one reported.
        assert_eq!(
            kv(&[
                ("type", "tap"),
                ("id", "t"),
                ("poll-us", "x"),
                ("vhost", "x")
            ]),
            Err("Parameter 'vhost' expects 'on' or 'off'".into())
        );
    }

    #[test]
    fn nested_socket_addresses_as_qemu_reports_them() {
        // The texts QEMU 10 prints for these -netdev stream lines.
        assert_eq!(
            kv_line("type=stream,id=s"),
            Err("Parameter 'addr' is missing".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr.type=inet,addr.host=127.0.0.1"),
            Err("Parameter 'addr.port' is missing".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr.host=1,addr.port=2"),
            Err("Parameter 'addr.type' is missing".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr.type=bogus"),
            Err("Parameter 'type' does not accept value 'bogus'".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr.type=inet,addr.host=a,addr.port=1,addr.bogus=1"),
            Err("Parameter 'addr.bogus' is unexpected".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr=x"),
            Err("Invalid parameter type for 'addr', expected: object".into())
        );
        assert_eq!(
            kv_line("type=stream,id=s,addr.type=inet,addr.host=a,addr.port=1,server=maybe"),
            Err("Parameter 'server' expects 'on' or 'off'".into())
        );
        // The same members over QMP name the member in full too.
        assert_eq!(
            qmp(json!({"id": "s", "type": "stream", "addr": {"type": "unix"}})),
            Err("Parameter 'addr.path' is missing".into())
        );
        assert_eq!(
            qmp(json!({"id": "s", "type": "stream", "addr": "x"})),
            Err("Invalid parameter type for 'addr', expected: object".into())
        );
        assert_eq!(
            qmp(json!({"id": "d", "type": "dgram",
                       "local": {"type": "fd", "str": "3", "x": 1}})),
            Err("Parameter 'local.x' is unexpected".into())
        );
        // dgram with neither address is a valid visit (net_init_dgram refuses it).
        let d = kv_line("type=dgram,id=d").unwrap();
        assert_eq!(
            d.opts,
            NetdevOpts::Dgram(NetdevDgramOptions {
                local: None,
                remote: None
            })
        );
    }

    #[test]
    fn keyval_repeats() {
        // Last scalar wins; the first id wins (QemuOpts ignores later ones).
        let nd = kv(&[
            ("type", "tap"),
            ("id", "t0"),
            ("queues", "1"),
            ("id", "t1"),
            ("queues", "0x8"),
        ])
        .unwrap();
        assert_eq!(nd.id, "t0");
        match nd.opts {
            NetdevOpts::Tap(o) => assert_eq!(o.queues, Some(8)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn keyval_sizes() {
        for (s, v) in [
            ("4096", 4096u64),
            ("64k", 65536),
            ("1.5M", 1572864),
            ("2G", 1 << 31),
        ] {
            let nd = kv(&[("type", "tap"), ("id", "t"), ("sndbuf", s)]).unwrap();
            match nd.opts {
                NetdevOpts::Tap(o) => assert_eq!(o.sndbuf, Some(v), "{s}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn keyval_ipv6_net() {
        let user = |nd: Netdev| match nd.opts {
            NetdevOpts::User(o) => (o.ipv6_prefix, o.ipv6_prefixlen),
            other => panic!("{other:?}"),
        };
        let nd = kv(&[("type", "user"), ("id", "u"), ("ipv6-net", "fd00::/48")]).unwrap();
        assert_eq!(user(nd), (Some("fd00::".into()), Some(48)));
        let nd = kv(&[("type", "user"), ("id", "u"), ("ipv6-net", "fd00::")]).unwrap();
        assert_eq!(user(nd), (Some("fd00::".into()), Some(64)));
        assert_eq!(
            kv(&[("type", "user"), ("id", "u"), ("ipv6-net", "fd00::/x")]),
            Err("Parameter 'ipv6-prefixlen' expects a number".into())
        );
        assert_eq!(
            kv(&[("type", "user"), ("id", "u"), ("ipv6-net", "")]),
            Err("Parameter 'ipv6-net' expects a valid IPv6 prefix".into())
        );
        assert_eq!(
            kv(&[("type", "tap"), ("id", "t"), ("ipv6-net", "fd00::/64")]),
            Err("Invalid parameter 'ipv6-prefix'".into())
        );
    }

    fn opt_str() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(".{0,12}")
    }

    fn tap() -> impl Strategy<Value = NetdevOpts> {
        (
            (opt_str(), opt_str(), opt_str(), opt_str(), opt_str()),
            (
                opt_str(),
                opt_str(),
                any::<Option<u64>>(),
                any::<Option<bool>>(),
            ),
            (
                any::<Option<bool>>(),
                opt_str(),
                opt_str(),
                any::<Option<bool>>(),
            ),
            (any::<Option<u32>>(), any::<Option<u32>>()),
        )
            .prop_map(
                |(
                    (ifname, fd, fds, script, downscript),
                    (br, helper, sndbuf, vnet_hdr),
                    (vhost, vhostfd, vhostfds, vhostforce),
                    (queues, poll_us),
                )| {
                    NetdevOpts::Tap(NetdevTapOptions {
                        ifname,
                        fd,
                        fds,
                        script,
                        downscript,
                        br,
                        helper,
                        sndbuf,
                        vnet_hdr,
                        vhost,
                        vhostfd,
                        vhostfds,
                        vhostforce,
                        queues,
                        poll_us,
                    })
                },
            )
    }

    fn socket() -> impl Strategy<Value = NetdevOpts> {
        (
            opt_str(),
            opt_str(),
            opt_str(),
            opt_str(),
            opt_str(),
            opt_str(),
        )
            .prop_map(|(fd, listen, connect, mcast, localaddr, udp)| {
                NetdevOpts::Socket(NetdevSocketOptions {
                    fd,
                    listen,
                    connect,
                    mcast,
                    localaddr,
                    udp,
                })
            })
    }

    fn hubport() -> impl Strategy<Value = NetdevOpts> {
        (any::<i32>(), opt_str(), proptest::option::of(any::<bool>())).prop_map(
            |(hubid, netdev, x_learning)| {
                NetdevOpts::Hubport(NetdevHubPortOptions {
                    hubid,
                    netdev,
                    x_learning,
                    x_fdb_ageing_ms: None,
                    x_fdb_size: None,
                    x_vlan: None,
                    x_trunks: None,
                })
            },
        )
    }

    fn netdev() -> impl Strategy<Value = Netdev> {
        (
            "[a-zA-Z][a-zA-Z0-9._-]{0,10}",
            prop_oneof![tap(), socket(), hubport()],
        )
            .prop_map(|(id, opts)| Netdev { id, opts })
    }

    /// Keys QEMU's schema knows (so random objects often get past the first member).
    const KEYS: &[&str] = &[
        "id",
        "type",
        "ifname",
        "queues",
        "poll-us",
        "sndbuf",
        "vnet_hdr",
        "hubid",
        "netdev",
        "hostfwd",
        "dnssearch",
        "src",
        "dst",
        "txsession",
        "txcookie",
        "port",
        "chardev",
        "str",
        "bogus",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let type_names: Vec<Value> = NetClientDriver::ALL
            .iter()
            .map(|d| Value::from(d.as_str()))
            .chain([Value::from("bogus")])
            .collect();
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)),
            ".{0,8}".prop_map(Value::from),
            proptest::sample::select(type_names),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(
                    (proptest::sample::select(KEYS).prop_map(String::from), inner),
                    0..4
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Map<String, Value>> {
        proptest::collection::vec(
            (
                prop_oneof![
                    3 => proptest::sample::select(KEYS).prop_map(String::from),
                    1 => ".{0,6}",
                ],
                json_value(),
            ),
            0..8,
        )
        .prop_map(|kv| kv.into_iter().collect())
    }

    proptest! {
        #[test]
        fn from_qmp_to_qmp_round_trips(nd in netdev()) {
            prop_assert_eq!(Netdev::from_qmp(&nd.to_qmp()), Ok(nd));
        }

        #[test]
        fn from_qmp_never_panics(args in json_object()) {
            if let Ok(nd) = Netdev::from_qmp(&args) {
                prop_assert_eq!(Netdev::from_qmp(&nd.to_qmp()), Ok(nd));
            }
        }

        #[test]
        fn from_keyval_never_panics(
            pairs in proptest::collection::vec(
                (proptest::sample::select(KEYS).prop_map(String::from), ".{0,8}"),
                0..8,
            )
        ) {
            if let Ok(nd) = Netdev::from_keyval(&pairs) {
                prop_assert_eq!(Netdev::from_qmp(&nd.to_qmp()), Ok(nd));
            }
        }
    }
}
