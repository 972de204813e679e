//! From a QAPI [`Netdev`] to a port of the switch: the one code path that both
//! `-netdev` on the command line and `netdev_add` over QMP use.
//!
//! Each branch checks its options the way QEMU does, opens its backend, and returns a
//! [`ClientSpec`] for [`switch::Switch::add`]. Options that cannot work in a userspace
//! switch (vhost-net) or on this host are refused with a message saying why.

use std::os::fd::OwnedFd;

use backends::nic::{nic, NicHandle};
use backends::socket::stream::StreamPort;
use backends::socket::udp::UdpPort;
use backends::socket::{parse_host_port, SocketMode};
use backends::tap::{self, TapConfig};
use switch::wire::ethernet::is_group;
use switch::wire::{mac_to_string, parse_mac, Mac};
use switch::{Backend, ClientSpec, SpecKind};

use crate::error::CtlError;
use crate::qapi::{
    Netdev, NetdevHubPortOptions, NetdevOpts, NetdevSocketOptions, NetdevTapOptions,
    NetdevXNullOptions,
};

/// Where `fd=NAME` descriptors come from: names passed with QMP `getfd`, or (on the
/// command line) numbers of descriptors the daemon inherited.
pub trait FdSource {
    /// Takes the descriptor called `name`.
    fn take(&mut self, name: &str) -> Result<OwnedFd, CtlError>;
}

/// Resolves only numeric descriptors (the command line).
pub struct InheritedFds;

/// Takes a private copy of inherited descriptor number `name`.
pub fn inherited_fd(name: &str) -> Result<OwnedFd, CtlError> {
    let n: i32 = name
        .parse()
        .map_err(|_| CtlError::Invalid(format!("No file descriptor named {name} found")))?;
    backends::sys::dup_fd(n).map_err(|e| CtlError::Invalid(format!("file descriptor {n}: {e}")))
}

impl FdSource for InheritedFds {
    fn take(&mut self, name: &str) -> Result<OwnedFd, CtlError> {
        inherited_fd(name)
    }
}

/// What building a netdev needs from the daemon.
pub struct BuildEnv<'a> {
    /// Largest frame.
    pub max_frame: usize,
    /// The packet pool (a zero-copy memif NIC gives it to its peer).
    pub pool: &'a switch::Pool,
    /// Descriptor names.
    pub fds: &'a mut dyn FdSource,
    /// Socket chardevs by id (vhost-user's `chardev=`).
    pub chardevs: &'a std::collections::HashMap<String, crate::chardev::Chardev>,
    /// Where a vhost-user port's events go.
    pub events: Option<backends::vhost_user::Events>,
}

fn backend_err(id: &str) -> impl FnOnce(backends::Error) -> CtlError + '_ {
    move |source| CtlError::Backend {
        id: id.to_string(),
        source,
    }
}

/// A netdev ready to be added to the switch.
pub struct Built {
    /// The client.
    pub spec: ClientSpec,
    /// The configuration as created, for `query-netdev`: the given one, with what the
    /// kernel decided filled in (a tap's interface name as it really is).
    pub config: Netdev,
    /// For a NIC: its control handle and address.
    pub nic: Option<(NicHandle, Mac)>,
    /// For a user network: its stack's control handle.
    pub user: Option<backends::user::UserHandle>,
    /// For a VXLAN port: what it counts.
    pub vxlan: Option<std::sync::Arc<backends::vxlan::VxlanStats>>,
    /// For a vhost-user port: its state.
    pub vhost: Option<backends::vhost_user::VhostHandle>,
    /// For an af-xdp port: its mode and the kernel's counters per queue.
    pub af_xdp: Option<std::sync::Arc<backends::af_xdp::AfXdpStats>>,
}

/// Builds the switch client for a netdev. `mac` is the address a NIC without
/// `macaddr=` gets.
pub fn build(nd: &Netdev, env: &mut BuildEnv<'_>, mac: Mac) -> Result<Built, CtlError> {
    let mut nic_out = None;
    let mut user_out = None;
    let mut vxlan_out = None;
    let mut vhost_out = None;
    let mut af_xdp_out = None;
    let mut config = nd.clone();
    let (kind, peer) = match &nd.opts {
        NetdevOpts::Hubport(o) => hubport(o)?,
        NetdevOpts::Tap(o) => {
            let (kind, ifname) = tap(&nd.id, o, env)?;
            if let (NetdevOpts::Tap(c), Some(name)) = (&mut config.opts, ifname) {
                c.ifname = Some(name);
            }
            (kind, None)
        }
        NetdevOpts::Socket(o) => (socket(&nd.id, o, env)?, None),
        NetdevOpts::Stream(o) => (stream(&nd.id, o, env)?, None),
        NetdevOpts::Dgram(o) => (dgram(&nd.id, o, env)?, None),
        NetdevOpts::L2tpv3(o) => (l2tpv3(&nd.id, o)?, None),
        NetdevOpts::XNull(o) => (null(o, env)?, None),
        NetdevOpts::XVxlan(o) => {
            let (kind, stats) = vxlan(&nd.id, o)?;
            vxlan_out = Some(stats);
            (kind, None)
        }
        NetdevOpts::Vde(o) => (vde(&nd.id, o)?, None),
        NetdevOpts::VhostVdpa(o) => {
            let dev = o
                .vhostdev
                .as_deref()
                .unwrap_or(backends::vhost_vdpa::DEFAULT_DEVICE);
            let e = backends::vhost_vdpa::open(
                std::path::Path::new(dev),
                &backends::vhost_vdpa::Host::default(),
            );
            return Err(CtlError::Unsupported(e.to_string()));
        }
        NetdevOpts::VhostUser(o) => {
            let (kind, handle) = vhost_user(&nd.id, o, env)?;
            nic_out = Some((handle.nic(), mac));
            vhost_out = Some(handle);
            (kind, None)
        }
        NetdevOpts::Bridge(o) => (bridge(&nd.id, o)?, None),
        NetdevOpts::Netmap(o) => (netmap(&nd.id, o)?, None),
        NetdevOpts::AfXdp(o) => {
            let (kind, stats) = af_xdp(&nd.id, o, env)?;
            af_xdp_out = Some(stats);
            (kind, None)
        }
        NetdevOpts::User(o) => {
            let (kind, handle) = user(&nd.id, o)?;
            user_out = Some(handle);
            (kind, None)
        }
        NetdevOpts::Nic(o) => {
            let mac = match &o.macaddr {
                Some(m) => parse_mac(m)
                    .ok_or_else(|| CtlError::Invalid(format!("invalid macaddr '{m}'")))?,
                None => mac,
            };
            if is_group(&mac) {
                return Err(CtlError::Invalid(format!(
                    "macaddr {} is a multicast address",
                    mac_to_string(&mac)
                )));
            }
            let (port, handle) = match memif_config(&nd.id, o, env.pool)? {
                Some(cfg) => backends::nic::nic_memif(mac, cfg).map_err(backend_err(&nd.id))?,
                None => nic(mac),
            };
            nic_out = Some((handle, mac));
            (
                SpecKind::Port {
                    queues: vec![Box::new(port)],
                    poll_us: None,
                },
                o.netdev.clone(),
            )
        }
    };
    Ok(Built {
        config,
        spec: ClientSpec {
            name: nd.id.clone(),
            kind,
            peer,
            nic: nic_out.is_some(),
        },
        nic: nic_out,
        user: user_out,
        vxlan: vxlan_out,
        vhost: vhost_out,
        af_xdp: af_xdp_out,
    })
}

/// `vhost-user`: pollswitch serves one VM NIC over the socket chardev `chardev`.
fn vhost_user(
    id: &str,
    o: &crate::qapi::NetdevVhostUserOptions,
    env: &BuildEnv<'_>,
) -> Result<(SpecKind, backends::vhost_user::VhostHandle), CtlError> {
    use crate::chardev::ChardevAddr;
    use backends::vhost_user::{VhostUserConfig, MAX_QUEUES};
    let c = env
        .chardevs
        .get(&o.chardev)
        .ok_or_else(|| CtlError::Invalid(format!("chardev \"{}\" not found", o.chardev)))?;
    let path = match &c.addr {
        ChardevAddr::Unix(p) => p.clone(),
        _ => {
            return Err(CtlError::Invalid(format!(
                "chardev \"{}\" is not a unix socket (vhost-user needs path=)",
                o.chardev
            )))
        }
    };
    let queues = o.queues.unwrap_or(1);
    if !(1..=i64::from(MAX_QUEUES)).contains(&queues) {
        return Err(CtlError::Invalid(format!(
            "vhost-user queues={queues} is outside 1..={MAX_QUEUES}"
        )));
    }
    let (pairs, handle) = backends::vhost_user::open(
        VhostUserConfig {
            socket: path.into(),
            server: c.server,
            reconnect: (c.reconnect_ms > 0)
                .then(|| std::time::Duration::from_millis(c.reconnect_ms)),
            queues: queues as u16,
            name: id.to_string(),
            max_frame: env.max_frame,
        },
        env.events.clone(),
    )
    .map_err(backend_err(id))?;
    Ok((
        SpecKind::Port {
            queues: pairs
                .into_iter()
                .map(|q| Box::new(q) as Box<dyn Backend>)
                .collect(),
            poll_us: None,
        },
        handle,
    ))
}

/// The `x-vxlan` extension: its options checked and its socket opened.
fn vxlan(
    id: &str,
    o: &crate::qapi::NetdevXVxlanOptions,
) -> Result<(SpecKind, std::sync::Arc<backends::vxlan::VxlanStats>), CtlError> {
    use backends::vxlan::{Remote, VxlanConfig, DEFAULT_AGEING, DEFAULT_FDB_SIZE, PORT};
    use std::net::IpAddr;
    let ip = |what: &str, v: &str| -> Result<IpAddr, CtlError> {
        v.parse()
            .map_err(|_| CtlError::Invalid(format!("x-vxlan {what} '{v}' is not an IP address")))
    };
    let remote = match (&o.remote, &o.group) {
        (Some(r), None) => Remote::Unicast(ip("remote", r)?),
        (None, Some(g)) => match ip("group", g)? {
            IpAddr::V4(g) => Remote::Group(g),
            IpAddr::V6(g) => {
                return Err(CtlError::Unsupported(format!(
                    "x-vxlan group {g}: IPv6 multicast groups are not supported yet (use an \
                     IPv4 group, or remote= for an IPv6 VTEP)"
                )))
            }
        },
        _ => {
            return Err(CtlError::Invalid(
                "x-vxlan needs exactly one of remote= (one VTEP) and group= (a multicast \
                 group)"
                    .into(),
            ))
        }
    };
    if o.ageing_ms == Some(0) || o.fdb_size == Some(0) {
        return Err(CtlError::Invalid(
            "x-vxlan ageing-ms and fdb-size must be at least 1".into(),
        ));
    }
    let cfg = VxlanConfig {
        vni: o.vni,
        remote,
        local: o.local.as_deref().map(|l| ip("local", l)).transpose()?,
        port: o.port.unwrap_or(PORT),
        ttl: o.ttl,
        fdb_size: o.fdb_size.map_or(DEFAULT_FDB_SIZE, |n| n as usize),
        ageing: o.ageing_ms.map_or(DEFAULT_AGEING, |ms| {
            std::time::Duration::from_millis(u64::from(ms))
        }),
    };
    let (port, stats) = backends::vxlan::open(cfg).map_err(backend_err(id))?;
    Ok((
        SpecKind::Port {
            queues: vec![Box::new(port)],
            poll_us: None,
        },
        stats,
    ))
}

/// A NIC's memif settings (`x-memif*`), checked; `None` without `x-memif`.
fn memif_config(
    id: &str,
    o: &crate::qapi::NetLegacyNicOptions,
    pool: &switch::Pool,
) -> Result<Option<backends::memif::MemifConfig>, CtlError> {
    use backends::memif::wire::{secret_field, MAX_LOG2_RING, SECRET_SIZE};
    use backends::memif::{MemifConfig, PoolShare, Role};
    let Some(sock) = &o.x_memif else {
        let given = o.x_memif_role.is_some()
            || o.x_memif_id.is_some()
            || o.x_memif_ring_size.is_some()
            || o.x_memif_buffer_size.is_some()
            || o.x_memif_secret.is_some()
            || o.x_memif_zero_copy.is_some();
        if given {
            return Err(CtlError::Invalid(
                "x-memif-role, x-memif-id, x-memif-ring-size, x-memif-buffer-size, \
                 x-memif-secret and x-memif-zero-copy need x-memif (the socket)"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let role = match o.x_memif_role.as_deref() {
        None | Some("server") => Role::Server,
        Some("client") => Role::Client,
        Some(r) => {
            return Err(CtlError::Invalid(format!(
                "Parameter 'x-memif-role' does not accept value '{r}' (server or client)"
            )))
        }
    };
    let ring = o.x_memif_ring_size.unwrap_or(1024);
    let max_ring = 1u32 << MAX_LOG2_RING;
    if !ring.is_power_of_two() || !(2..=max_ring).contains(&ring) {
        return Err(CtlError::Invalid(format!(
            "x-memif-ring-size {ring} is not a power of two between 2 and {max_ring}"
        )));
    }
    let bsize = o.x_memif_buffer_size.unwrap_or(2048);
    if !(64..=65535).contains(&bsize) {
        return Err(CtlError::Invalid(format!(
            "x-memif-buffer-size {bsize} is outside 64..=65535"
        )));
    }
    let secret = match &o.x_memif_secret {
        None => None,
        Some(s) => Some(secret_field(s).ok_or_else(|| {
            CtlError::Invalid(format!(
                "x-memif-secret is longer than {SECRET_SIZE} bytes (or holds a NUL)"
            ))
        })?),
    };
    let path = std::path::PathBuf::from(sock);
    if path.as_os_str().len() >= 108 {
        return Err(CtlError::Invalid(format!(
            "x-memif socket path '{sock}' is too long for a unix socket"
        )));
    }
    let zero_copy = match o.x_memif_zero_copy {
        Some(true) if role == Role::Server => {
            return Err(CtlError::Invalid(
                "x-memif-zero-copy needs x-memif-role=client: a server works in the \
                 client's memory"
                    .into(),
            ))
        }
        Some(true) => {
            let fd = pool.region_fd().ok_or_else(|| {
                CtlError::Unsupported(
                    "x-memif-zero-copy: the packet pool is not in shared memory".into(),
                )
            })?;
            let fd = fd.try_clone_to_owned().map_err(|e| {
                CtlError::Invalid(format!("x-memif-zero-copy: a copy of the pool's fd: {e}"))
            })?;
            Some(PoolShare {
                fd: std::sync::Arc::new(fd),
                len: pool.region_len(),
            })
        }
        _ => None,
    };
    Ok(Some(MemifConfig {
        socket: path,
        role,
        id: o.x_memif_id.unwrap_or(0),
        secret,
        log2_ring: ring.trailing_zeros() as u8,
        buffer_size: bsize,
        name: id.to_string(),
        zero_copy,
    }))
}

/// `user`: QEMU's user-mode network through libslirp, on a thread of its own.
fn user(
    id: &str,
    o: &crate::qapi::NetdevUserOptions,
) -> Result<(SpecKind, backends::user::UserHandle), CtlError> {
    use backends::user::{UserArgs, UserConfig};
    let args = UserArgs {
        hostname: o.hostname.clone(),
        restrict: o.restrict,
        ipv4: o.ipv4,
        ipv6: o.ipv6,
        ip: o.ip.clone(),
        net: o.net.clone(),
        host: o.host.clone(),
        tftp: o.tftp.clone(),
        bootfile: o.bootfile.clone(),
        dhcpstart: o.dhcpstart.clone(),
        dns: o.dns.clone(),
        dnssearch: o.dnssearch.clone().unwrap_or_default(),
        domainname: o.domainname.clone(),
        ipv6_prefix: o.ipv6_prefix.clone(),
        ipv6_prefixlen: o.ipv6_prefixlen,
        ipv6_host: o.ipv6_host.clone(),
        ipv6_dns: o.ipv6_dns.clone(),
        smb: o.smb.clone(),
        smbserver: o.smbserver.clone(),
        hostfwd: o.hostfwd.clone().unwrap_or_default(),
        guestfwd: o.guestfwd.clone().unwrap_or_default(),
        tftp_server_name: o.tftp_server_name.clone(),
    };
    // QEMU's texts as they are: a configuration error is not prefixed with the id.
    let plain = |e: backends::Error| match e {
        backends::Error::Config(m) => CtlError::Invalid(m),
        other => backend_err(id)(other),
    };
    let cfg = UserConfig::parse(&args).map_err(plain)?;
    let (port, handle) = backends::user::open(id, cfg).map_err(plain)?;
    Ok((
        SpecKind::Port {
            queues: vec![Box::new(port)],
            poll_us: None,
        },
        handle,
    ))
}

/// `vde`: a client port of a vde_switch; our own socket gets `mode=` (default 0700, as
/// in QEMU) and `group=`.
fn vde(id: &str, o: &crate::qapi::NetdevVdeOptions) -> Result<SpecKind, CtlError> {
    use backends::vde::{VdeConfig, VdePort};
    let port = VdePort::open(VdeConfig {
        sock: o.sock.as_ref().map(std::path::PathBuf::from),
        port: o.port.unwrap_or(0),
        group: o.group.clone(),
        mode: o.mode.map(u32::from),
        description: format!("pollswitch {id}"),
    })
    .map_err(backend_err(id))?;
    Ok(SpecKind::Port {
        queues: vec![Box::new(port)],
        poll_us: None,
    })
}

/// `bridge`: a tap attached to bridge `br` (default br0), by `helper` when one is given
/// (as QEMU runs qemu-bridge-helper), else by pollswitch itself (QEMU would run its
/// default helper).
fn bridge(id: &str, o: &crate::qapi::NetdevBridgeOptions) -> Result<SpecKind, CtlError> {
    use backends::bridge::BridgeConfig;
    let (queues, _ifname) = backends::bridge::open(&BridgeConfig {
        br: o.br.clone(),
        helper: o.helper.clone(),
    })
    .map_err(backend_err(id))?;
    Ok(SpecKind::Port {
        queues: queues
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn Backend>)
            .collect(),
        poll_us: None,
    })
}

/// `netmap`: a port of a netmap NIC or of a VALE switch (`valeX:Y`), through
/// `devname` (default /dev/netmap).
fn netmap(id: &str, o: &crate::qapi::NetdevNetmapOptions) -> Result<SpecKind, CtlError> {
    use backends::netmap::{NetmapConfig, NetmapPort};
    let port = NetmapPort::open(&NetmapConfig {
        ifname: o.ifname.clone(),
        devname: o.devname.clone(),
    })
    .map_err(backend_err(id))?;
    Ok(SpecKind::Port {
        queues: vec![Box::new(port)],
        poll_us: None,
    })
}

/// An OS error as C's `strerror` words it (what QEMU's `error_setg_errno` appends).
fn strerror(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `af-xdp`: AF_XDP sockets on queues of interface `ifname`, checked in the order and
/// with the texts of QEMU's `net_init_af_xdp`.
fn af_xdp(
    id: &str,
    o: &crate::qapi::NetdevAFXDPOptions,
    env: &mut BuildEnv<'_>,
) -> Result<(SpecKind, std::sync::Arc<backends::af_xdp::AfXdpStats>), CtlError> {
    use backends::af_xdp::{self, AfXdpConfig, XdpMode};
    // The schema's enum, checked as QEMU's visitor checks it.
    let mode = o
        .mode
        .as_deref()
        .map(|m| {
            XdpMode::from_name(m).ok_or_else(|| crate::qapi::QapiError::BadEnumValue {
                name: "mode".into(),
                value: m.into(),
            })
        })
        .transpose()?;
    let ifindex = af_xdp::ifindex(&o.ifname).map_err(|e| {
        CtlError::Invalid(format!(
            "failed to get ifindex for '{}': {}",
            o.ifname,
            strerror(&e)
        ))
    })?;
    let queues = o.queues.unwrap_or(1);
    if queues < 1 {
        return Err(CtlError::Invalid(format!(
            "invalid number of queues ({queues}) for '{}'",
            o.ifname
        )));
    }
    let inhibit = o.inhibit.unwrap_or(false);
    if inhibit != o.sock_fds.is_some() {
        return Err(CtlError::Invalid(
            "'inhibit=on' requires 'sock-fds' and vice versa".into(),
        ));
    }
    // As QEMU: a negative start-queue counts as 0.
    let start_queue = o.start_queue.unwrap_or(0).max(0);
    let (Ok(queues), Ok(start_queue)) = (u32::try_from(queues), u32::try_from(start_queue)) else {
        return Err(CtlError::Invalid(format!(
            "af-xdp ifname={}: queues and start-queue must be below 2^32",
            o.ifname
        )));
    };
    let sock_fds = match &o.sock_fds {
        Some(list) => {
            let names: Vec<&str> = list.split(':').collect();
            if names.len() != queues as usize {
                return Err(CtlError::Invalid(format!(
                    "expected {queues} socket fds, got {}",
                    names.len()
                )));
            }
            let mut fds = Vec::new();
            for n in names {
                fds.push(env.fds.take(n)?);
            }
            Some(fds)
        }
        None => None,
    };
    let (ports, stats) = af_xdp::open(
        AfXdpConfig {
            ifname: o.ifname.clone(),
            mode,
            force_copy: o.force_copy.unwrap_or(false),
            queues,
            start_queue,
            sock_fds,
        },
        ifindex,
    )
    .map_err(backend_err(id))?;
    Ok((
        SpecKind::Port {
            queues: ports
                .into_iter()
                .map(|q| Box::new(q) as Box<dyn Backend>)
                .collect(),
            poll_us: None,
        },
        stats,
    ))
}

/// An `x-null` address member, parsed.
fn null_mac(what: &str, v: Option<&str>) -> Result<Option<Mac>, CtlError> {
    v.map(|m| {
        parse_mac(m)
            .ok_or_else(|| CtlError::Invalid(format!("x-null {what} '{m}' is not a MAC address")))
    })
    .transpose()
}

/// The `x-null` extension: an in-memory source/sink.
fn null(o: &NetdevXNullOptions, env: &BuildEnv<'_>) -> Result<SpecKind, CtlError> {
    use backends::null::{NullConfig, NullMode, NullPort};
    let mode = match o.mode.as_deref() {
        None => NullMode::Sink,
        Some(m) => NullMode::from_name(m).ok_or_else(|| {
            CtlError::Invalid(format!(
                "Parameter 'mode' does not accept value '{m}' (source, sink or both)"
            ))
        })?,
    };
    let size = o.size.unwrap_or(64) as usize;
    if !(switch::pool::MIN_FRAME..=env.max_frame).contains(&size) {
        return Err(CtlError::Invalid(format!(
            "x-null size {size} is outside 14..={} (the maximum frame)",
            env.max_frame
        )));
    }
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let port = NullPort::new(
        NullConfig {
            mode,
            size,
            rate: o.rate.unwrap_or(0),
            count: o.count.unwrap_or(0),
            stall: o.stall.unwrap_or(false),
            poll_us: o.poll_us,
            src: null_mac("src", o.src.as_deref())?,
            dst: null_mac("dst", o.dst.as_deref())?,
            flows: match o.flows {
                Some(0) => return Err(CtlError::Invalid("x-null flows must be at least 1".into())),
                Some(n) if n > 1 << 24 => {
                    return Err(CtlError::Invalid(
                        "x-null flows is at most 16777216 (the addresses' last 3 bytes)".into(),
                    ))
                }
                n => n.unwrap_or(1),
            },
        },
        id,
    );
    Ok(SpecKind::Port {
        queues: vec![Box::new(port)],
        poll_us: o.poll_us,
    })
}

fn hubport(o: &NetdevHubPortOptions) -> Result<(SpecKind, Option<String>), CtlError> {
    let vlan = hubport_vlan(o.x_vlan, o.x_trunks.as_deref())?;
    Ok((SpecKind::HubPort { hub: o.hubid, vlan }, o.netdev.clone()))
}

/// A hubport's VLAN settings from its `x-vlan` and `x-trunks`.
pub fn hubport_vlan(
    vlan: Option<u16>,
    trunks: Option<&str>,
) -> Result<Option<switch::vlan::VlanPort>, CtlError> {
    use switch::vlan::{VidSet, VlanPort, MAX_VID};
    if let Some(v) = vlan.filter(|v| !(1..=MAX_VID).contains(v)) {
        return Err(CtlError::Invalid(format!(
            "x-vlan={v} is not a VLAN id (1..={MAX_VID})"
        )));
    }
    let trunks = trunks
        .map(|t| VidSet::parse(t).map_err(|e| CtlError::Invalid(format!("x-trunks: {e}"))))
        .transpose()?;
    Ok(match (vlan, trunks) {
        (None, None) => None,
        (Some(v), None) => Some(VlanPort::access(v)),
        (native, Some(t)) => Some(VlanPort::trunk(t, native)),
    })
}

/// Opens a tap; with it, the interface name the kernel gave it when it was opened by
/// name (the kernel cuts names to 15 bytes and picks one when none is given).
fn tap(
    id: &str,
    o: &NetdevTapOptions,
    env: &mut BuildEnv<'_>,
) -> Result<(SpecKind, Option<String>), CtlError> {
    if o.vhost == Some(true)
        || o.vhostfd.is_some()
        || o.vhostfds.is_some()
        || o.vhostforce == Some(true)
    {
        return Err(CtlError::Unsupported(
            "vhost=on, vhostfd, vhostfds and vhostforce are not supported: pollswitch moves frames \
             in userspace and has no vhost-net (the kernel's virtio-net accelerator) to hand them to"
                .into(),
        ));
    }
    if o.fd.is_some()
        && (o.ifname.is_some()
            || o.helper.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.queues.is_some()
            || o.fds.is_some())
    {
        return Err(CtlError::Invalid(
            "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, fds=, and vhostfds= are invalid with fd="
                .into(),
        ));
    }
    if o.fds.is_some()
        && (o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.helper.is_some())
    {
        return Err(CtlError::Invalid(
            "ifname=, script=, downscript=, vnet_hdr=, helper=, queues=, and vhostfd= are invalid with fds=".into(),
        ));
    }
    // As QEMU: helper= runs the bridge helper for br= (default br0); br= without
    // helper= is ignored.
    if o.helper.is_some()
        && (o.ifname.is_some()
            || o.script.is_some()
            || o.downscript.is_some()
            || o.vnet_hdr.is_some()
            || o.queues.is_some())
    {
        return Err(CtlError::Invalid(
            "ifname=, script=, downscript=, vnet_hdr=, queues=, and vhostfds= are invalid with helper="
                .into(),
        ));
    }
    if o.queues == Some(0) {
        return Err(CtlError::Invalid("queues must be at least 1".into()));
    }
    let mut fds = Vec::new();
    if let Some(f) = &o.fd {
        fds.push(env.fds.take(f)?);
    }
    if let Some(list) = &o.fds {
        for f in list.split(':') {
            fds.push(env.fds.take(f)?);
        }
    }
    if let Some(h) = &o.helper {
        let br = o.br.as_deref().unwrap_or(backends::bridge::DEFAULT_BRIDGE);
        fds.push(backends::bridge::run_helper(h, br).map_err(backend_err(id))?);
    }
    let cfg = TapConfig {
        ifname: o.ifname.clone(),
        fds,
        script: o.script.clone(),
        downscript: o.downscript.clone(),
        sndbuf: o.sndbuf,
        vnet_hdr: o.vnet_hdr,
        offloads: env.pool.gso_count() > 0,
        queues: o.queues.unwrap_or(1),
        poll_us: o.poll_us,
    };
    let by_name = cfg.fds.is_empty();
    let (queues, ifname) = tap::open(cfg).map_err(backend_err(id))?;
    let kind = SpecKind::Port {
        queues: queues
            .into_iter()
            .map(|q| Box::new(q) as Box<dyn Backend>)
            .collect(),
        poll_us: o.poll_us,
    };
    Ok((kind, by_name.then_some(ifname)))
}

fn socket_mode(o: &NetdevSocketOptions, env: &mut BuildEnv<'_>) -> Result<SocketMode, CtlError> {
    let given = [&o.fd, &o.listen, &o.connect, &o.mcast, &o.udp]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given != 1 {
        return Err(CtlError::Invalid(
            "exactly one of listen=, connect=, mcast= or udp= is required".into(),
        ));
    }
    if o.localaddr.is_some() && o.mcast.is_none() && o.udp.is_none() {
        return Err(CtlError::Invalid(
            "localaddr= is only valid with mcast= or udp=".into(),
        ));
    }
    let addr = |s: &str| parse_host_port(s).map_err(|e| CtlError::Invalid(e.to_string()));
    Ok(if let Some(f) = &o.fd {
        SocketMode::Fd {
            fd: env.fds.take(f)?,
        }
    } else if let Some(l) = &o.listen {
        SocketMode::Listen { addr: addr(l)? }
    } else if let Some(c) = &o.connect {
        SocketMode::Connect { addr: addr(c)? }
    } else if let Some(m) = &o.mcast {
        let local = match &o.localaddr {
            Some(l) => Some(l.parse().map_err(|_| {
                CtlError::Invalid(format!("localaddr '{l}' is not an IPv4 address"))
            })?),
            None => None,
        };
        SocketMode::Mcast {
            group: addr(m)?,
            local,
        }
    } else {
        let remote = addr(o.udp.as_deref().unwrap_or_default())?;
        let local = o
            .localaddr
            .as_deref()
            .ok_or_else(|| CtlError::Invalid("localaddr= is mandatory with udp=".into()))?;
        SocketMode::Udp {
            remote,
            local: addr(local)?,
        }
    })
}

fn socket(id: &str, o: &NetdevSocketOptions, env: &mut BuildEnv<'_>) -> Result<SpecKind, CtlError> {
    let mode = socket_mode(o, env)?;
    let mf = env.max_frame;
    let b: Box<dyn Backend> = match mode {
        SocketMode::Udp { remote, local } => {
            Box::new(UdpPort::udp(remote, local, None).map_err(backend_err(id))?)
        }
        SocketMode::Mcast { group, local } => {
            Box::new(UdpPort::mcast(group, local, None).map_err(backend_err(id))?)
        }
        SocketMode::Listen { addr } => {
            Box::new(StreamPort::listen(addr, mf, None).map_err(backend_err(id))?)
        }
        SocketMode::Connect { addr } => {
            Box::new(StreamPort::connect(addr, mf, None).map_err(backend_err(id))?)
        }
        SocketMode::Fd { fd } => match backends::sys::socket_type(std::os::fd::AsFd::as_fd(&fd)) {
            Some(libc::SOCK_DGRAM) => {
                Box::new(UdpPort::from_fd(fd, None).map_err(backend_err(id))?)
            }
            Some(libc::SOCK_STREAM) => {
                Box::new(StreamPort::from_fd(fd, mf, None).map_err(backend_err(id))?)
            }
            _ => {
                return Err(CtlError::Invalid(format!(
                    "{id}: file descriptor is not a stream or datagram socket"
                )))
            }
        },
    };
    Ok(SpecKind::Port {
        queues: vec![b],
        poll_us: None,
    })
}

/// An inet `SocketAddress` resolved to one address: IPv4 preferred unless only
/// `ipv6=on` is given; an empty host is the wildcard address.
fn inet_addr(a: &crate::qapi::InetSocketAddress) -> Result<std::net::SocketAddr, CtlError> {
    use std::net::ToSocketAddrs;
    let port: u16 = a
        .port
        .parse()
        .map_err(|_| CtlError::Invalid(format!("invalid port '{}'", a.port)))?;
    let want_v6 = a.ipv6 == Some(true) && a.ipv4 != Some(true);
    let host = match a.host.as_str() {
        "" if want_v6 => "::",
        "" => "0.0.0.0",
        h => h.trim_start_matches('[').trim_end_matches(']'),
    };
    let addrs: Vec<std::net::SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            CtlError::Invalid(format!(
                "address resolution failed for {}:{}: {e}",
                a.host, a.port
            ))
        })?
        .filter(|x| !(a.ipv4 == Some(false) && x.is_ipv4()))
        .filter(|x| !(a.ipv6 == Some(false) && x.is_ipv6()))
        .collect();
    addrs
        .iter()
        .find(|x| x.is_ipv6() == want_v6)
        .or(addrs.first())
        .copied()
        .ok_or_else(|| {
            CtlError::Invalid(format!(
                "address resolution failed for {}:{}",
                a.host, a.port
            ))
        })
}

/// A unix `SocketAddress`: a path, or with `abstract=on` a name in Linux's abstract
/// namespace (always of the name's own length, `tight=on`).
fn unix_addr(a: &crate::qapi::UnixSocketAddress) -> Result<socket2::SockAddr, CtlError> {
    let path = if a.abstract_ == Some(true) {
        if a.tight == Some(false) {
            return Err(CtlError::Invalid(
                "abstract unix sockets with tight=off are not supported by pollswitch".into(),
            ));
        }
        format!("\0{}", a.path)
    } else {
        a.path.clone()
    };
    socket2::SockAddr::unix(&path)
        .map_err(|e| CtlError::Invalid(format!("unix socket path '{}': {e}", a.path)))
}

/// `stream`: a server (`server=on`, one client at a time) or a client that, with
/// `reconnect`/`reconnect-ms`, reconnects whenever its connection is gone.
fn stream(
    id: &str,
    o: &crate::qapi::NetdevStreamOptions,
    env: &mut BuildEnv<'_>,
) -> Result<SpecKind, CtlError> {
    use crate::qapi::SocketAddress;
    use std::time::Duration;
    let server = o.server == Some(true);
    if server && (o.reconnect.is_some() || o.reconnect_ms.is_some()) {
        return Err(CtlError::Invalid(
            "'reconnect' and 'reconnect-ms' options are incompatible with socket in server mode"
                .into(),
        ));
    }
    if o.reconnect.is_some() && o.reconnect_ms.is_some() {
        return Err(CtlError::Invalid(
            "'reconnect' and 'reconnect-ms' are mutually exclusive".into(),
        ));
    }
    // A delay of 0 (or less) means no reconnecting, as in QEMU.
    let reconnect = match (o.reconnect, o.reconnect_ms) {
        (Some(s), _) if s > 0 => Some(Duration::from_secs(s as u64)),
        (_, Some(ms)) if ms > 0 => Some(Duration::from_millis(ms as u64)),
        _ => None,
    };
    let mf = env.max_frame;
    let addr: socket2::SockAddr = match &o.addr {
        SocketAddress::Inet(a) => inet_addr(a)?.into(),
        SocketAddress::Unix(a) => unix_addr(a)?,
        SocketAddress::Fd(f) => {
            let fd = env.fds.take(&f.str)?;
            let port = if server {
                StreamPort::from_listener_fd(fd, mf, None)
            } else {
                StreamPort::from_fd(fd, mf, None)
            };
            return Ok(SpecKind::Port {
                queues: vec![Box::new(port.map_err(backend_err(id))?)],
                poll_us: None,
            });
        }
        SocketAddress::Vsock(_) => {
            return Err(CtlError::Unsupported(
                "stream: vsock addresses are not supported by pollswitch".into(),
            ))
        }
    };
    let port = if server {
        StreamPort::listen_at(&addr, mf, None)
    } else {
        StreamPort::connect_to(addr, reconnect, mf, None)
    }
    .map_err(backend_err(id))?;
    Ok(SpecKind::Port {
        queues: vec![Box::new(port)],
        poll_us: None,
    })
}

/// `dgram`: one frame per datagram between `local` and `remote` (both inet or both
/// unix), to a multicast group (`remote` inet multicast, `local` optional), or on a
/// datagram socket passed in (`local.type=fd`, no `remote`). Checked in QEMU's order,
/// with its messages.
fn dgram(
    id: &str,
    o: &crate::qapi::NetdevDgramOptions,
    env: &mut BuildEnv<'_>,
) -> Result<SpecKind, CtlError> {
    use crate::qapi::SocketAddress;
    let invalid = |m: &str| CtlError::Invalid(m.to_string());
    let port_of = |b: UdpPort| SpecKind::Port {
        queues: vec![Box::new(b)],
        poll_us: None,
    };
    if let Some(SocketAddress::Inet(r)) = &o.remote {
        let group = inet_addr(r)?;
        if group.ip().is_multicast() {
            let local = match &o.local {
                None => None,
                Some(SocketAddress::Inet(l)) => match inet_addr(l)? {
                    std::net::SocketAddr::V4(v) => Some(*v.ip()),
                    _ => return Err(invalid("multicast requires an IPv4 local address")),
                },
                Some(_) => return Err(invalid("multicast only supports inet type for local")),
            };
            return Ok(port_of(
                UdpPort::mcast(group, local, None).map_err(backend_err(id))?,
            ));
        }
    }
    let Some(local) = &o.local else {
        return Err(invalid("dgram requires local= parameter"));
    };
    match &o.remote {
        Some(remote) => {
            if matches!(local, SocketAddress::Fd(_)) {
                return Err(invalid("don't set remote with local.fd"));
            }
            if remote.type_name() != local.type_name() {
                return Err(invalid("remote and local types must be the same"));
            }
        }
        None => {
            if !matches!(local, SocketAddress::Fd(_)) {
                return Err(invalid("type=inet or type=unix requires remote parameter"));
            }
        }
    }
    let b = match (local, &o.remote) {
        (SocketAddress::Inet(l), Some(SocketAddress::Inet(r))) => {
            UdpPort::udp(inet_addr(r)?, inet_addr(l)?, None)
        }
        (SocketAddress::Unix(l), Some(SocketAddress::Unix(r))) => {
            UdpPort::unix(&unix_addr(l)?, &unix_addr(r)?, None)
        }
        (SocketAddress::Fd(f), None) => UdpPort::from_fd(env.fds.take(&f.str)?, None),
        _ => return Err(invalid("only support inet or fd type for local")),
    }
    .map_err(backend_err(id))?;
    Ok(port_of(b))
}

/// `l2tpv3`: checks the options in QEMU's order and with its messages, resolves the
/// addresses (the family from `ipv6=`, or from the addresses when it is not given),
/// and opens the session's socket.
fn l2tpv3(id: &str, o: &crate::qapi::NetdevL2TPv3Options) -> Result<SpecKind, CtlError> {
    use backends::l2tpv3::{L2tpv3Config, Layout};
    use std::net::{SocketAddr, ToSocketAddrs};
    if o.offset.is_some_and(|n| n > 256) {
        return Err(CtlError::Invalid(
            "offset must be less than 256 bytes".into(),
        ));
    }
    if o.rxcookie.is_some() != o.txcookie.is_some() {
        return Err(CtlError::Invalid(
            "require both 'rxcookie' and 'txcookie' or neither".into(),
        ));
    }
    let udp = o.udp == Some(true);
    if udp && (o.srcport.is_none() || o.dstport.is_none()) {
        return Err(CtlError::Invalid(
            "need both src and dst port for udp".into(),
        ));
    }
    // As in QEMU 10: a 64-bit cookie whenever cookie64 is given at all.
    let cookie_len = match (o.txcookie.is_some(), o.cookie64.is_some()) {
        (false, _) => 0,
        (true, true) => 8,
        (true, false) => 4,
    };
    if cookie_len == 4 {
        for (name, v) in [("txcookie", o.txcookie), ("rxcookie", o.rxcookie)] {
            if let Some(v) = v.filter(|&v| v > u64::from(u32::MAX)) {
                return Err(CtlError::Invalid(format!(
                    "{name} {v:#x} does not fit in a 32-bit cookie (add cookie64=on)"
                )));
            }
        }
    }
    let resolve = |what: &str,
                   host: &str,
                   port: Option<&str>,
                   want_v6: Option<bool>|
     -> Result<SocketAddr, CtlError> {
        let port: u16 = match (udp, port) {
            (true, Some(p)) => p.parse().map_err(|_| {
                CtlError::Invalid(format!("could not resolve {what}, invalid port '{p}'"))
            })?,
            _ => 0,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| CtlError::Invalid(format!("could not resolve {what}, error = {e}")))?
            .collect();
        addrs
            .iter()
            .find(|a| want_v6.map_or(a.is_ipv4(), |v6| a.is_ipv6() == v6))
            .or_else(|| addrs.iter().find(|_| want_v6.is_none()))
            .copied()
            .ok_or_else(|| {
                CtlError::Invalid(format!(
                    "could not resolve {what}, no {} address for '{host}'",
                    if want_v6 == Some(true) {
                        "IPv6"
                    } else {
                        "IPv4"
                    }
                ))
            })
    };
    let src = resolve("src", &o.src, o.srcport.as_deref(), o.ipv6)?;
    // Without ipv6=, the destination is looked up in the family the source has.
    let dst = resolve(
        "dst",
        &o.dst,
        o.dstport.as_deref(),
        Some(o.ipv6.unwrap_or(src.is_ipv6())),
    )?;
    let cfg = L2tpv3Config {
        src,
        dst,
        layout: Layout {
            udp,
            cookie_len,
            // pincounter implies a counter (QEMU sets it but forgets its 4 bytes).
            counter: o.counter == Some(true) || o.pincounter == Some(true),
            offset: o.offset.unwrap_or(0) as usize,
        },
        txsession: o.txsession,
        rxsession: o.rxsession.unwrap_or(o.txsession),
        txcookie: o.txcookie.unwrap_or(0),
        rxcookie: o.rxcookie.unwrap_or(0),
        pincounter: o.pincounter == Some(true),
    };
    let port = backends::l2tpv3::open(cfg).map_err(backend_err(id))?;
    Ok(SpecKind::Port {
        queues: vec![Box::new(port)],
        poll_us: None,
    })
}
