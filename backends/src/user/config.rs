//! `-netdev user` options as QEMU reads them: the guest network and its well-known
//! addresses derived from `net=`, the IPv6 prefix, and the `hostfwd=`/`guestfwd=` rules,
//! each checked with QEMU's rules and refused with QEMU's words.
//!
//! Nothing here touches libslirp: the result is a [`UserConfig`] the stack thread turns
//! into a `SlirpConfig`, so every check is unit-tested without a stack.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::PathBuf;

use crate::error::Error;

/// Where QEMU looks for the SMB server `smb=` runs (its `CONFIG_SMBD_COMMAND` default).
pub const SMBD: &str = "/usr/sbin/smbd";
/// Longest `domainname`, `hostname` and `tftp-server-name` (a DHCP option's length byte).
const MAX_NAME: usize = 255;

/// The members of `NetdevUserOptions`, as given (strings still unparsed).
#[derive(Debug, Clone, Default)]
pub struct UserArgs {
    /// `hostname`: the client name the DHCP server reports.
    pub hostname: Option<String>,
    /// `restrict`: isolate the guest from the host.
    pub restrict: Option<bool>,
    /// `ipv4`.
    pub ipv4: Option<bool>,
    /// `ipv6`.
    pub ipv6: Option<bool>,
    /// `ip`: legacy, the network as `ADDR` (taken as `ADDR/24`).
    pub ip: Option<String>,
    /// `net`: `ADDR[/MASK]`, MASK a length or a dotted mask.
    pub net: Option<String>,
    /// `host`: the guest-visible address of the host.
    pub host: Option<String>,
    /// `tftp`: root of the built-in TFTP server.
    pub tftp: Option<String>,
    /// `bootfile`: BOOTP file name.
    pub bootfile: Option<String>,
    /// `dhcpstart`: first of the 16 addresses the DHCP server hands out.
    pub dhcpstart: Option<String>,
    /// `dns`: the guest-visible name server.
    pub dns: Option<String>,
    /// `dnssearch`: DNS search suffixes.
    pub dnssearch: Vec<String>,
    /// `domainname`.
    pub domainname: Option<String>,
    /// `ipv6-prefix`.
    pub ipv6_prefix: Option<String>,
    /// `ipv6-prefixlen`.
    pub ipv6_prefixlen: Option<i64>,
    /// `ipv6-host`.
    pub ipv6_host: Option<String>,
    /// `ipv6-dns`.
    pub ipv6_dns: Option<String>,
    /// `smb`: directory to share over SMB.
    pub smb: Option<String>,
    /// `smbserver`: the SMB server's guest-visible address.
    pub smbserver: Option<String>,
    /// `hostfwd` rules.
    pub hostfwd: Vec<String>,
    /// `guestfwd` rules.
    pub guestfwd: Vec<String>,
    /// `tftp-server-name`.
    pub tftp_server_name: Option<String>,
}

/// A checked user network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConfig {
    /// `restrict=on`.
    pub restricted: bool,
    /// IPv4 on.
    pub ipv4: bool,
    /// The network (masked).
    pub net: Ipv4Addr,
    /// Its mask.
    pub mask: Ipv4Addr,
    /// The host's address in it.
    pub host: Ipv4Addr,
    /// First DHCP address.
    pub dhcp: Ipv4Addr,
    /// Name server.
    pub dns: Ipv4Addr,
    /// IPv6 on.
    pub ipv6: bool,
    /// IPv6 prefix and its length.
    pub prefix6: Ipv6Addr,
    /// Prefix length (1..=126).
    pub prefix6_len: u8,
    /// The host's IPv6 address.
    pub host6: Ipv6Addr,
    /// IPv6 name server.
    pub dns6: Ipv6Addr,
    /// DHCP client host name.
    pub hostname: Option<String>,
    /// TFTP root.
    pub tftp: Option<PathBuf>,
    /// BOOTP file.
    pub bootfile: Option<String>,
    /// TFTP server name option.
    pub tftp_server_name: Option<String>,
    /// DNS search list.
    pub dnssearch: Vec<String>,
    /// Domain name.
    pub domainname: Option<String>,
    /// Directory shared by SMB and the server's address (0.0.0.0: libslirp's x.x.x.4).
    pub smb: Option<(PathBuf, Ipv4Addr)>,
    /// Host forwarding rules, with the text each came from.
    pub hostfwd: Vec<(String, HostFwd)>,
    /// Guest forwarding rules.
    pub guestfwd: Vec<GuestFwd>,
}

/// Where a host forwarding rule listens on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSide {
    /// An IPv4 address and port (0.0.0.0: every address).
    Inet(SocketAddrV4),
    /// A unix socket path (created, replacing a stale socket there).
    Unix(PathBuf),
}

/// One `hostfwd=` rule: connections to `host` go to `guest` inside the user network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFwd {
    /// UDP rather than TCP.
    pub udp: bool,
    /// The listening side.
    pub host: HostSide,
    /// The guest's address (0.0.0.0: the first DHCP address) and port.
    pub guest: SocketAddrV4,
}

/// One `guestfwd=` rule: guest connections to `server:port` reach a host command or
/// socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFwd {
    /// The rule as given.
    pub rule: String,
    /// The virtual server address (0.0.0.0: libslirp picks one).
    pub server: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// Where connections go.
    pub target: GuestTarget,
}

/// What a guest forwarding rule reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestTarget {
    /// `cmd:COMMAND`: a shell command per connection, its stdin/stdout the connection.
    Cmd(String),
    /// `tcp:HOST:PORT`: one TCP connection made when the netdev is created.
    Tcp(String),
    /// `unix:PATH`: one unix stream connection made when the netdev is created.
    Unix(PathBuf),
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::Config(msg.into())
}

/// Splits `s` at the first `sep`, as QEMU's `get_str_sep` does: `None` without one.
fn split_sep(s: &str, sep: char) -> Option<(&str, &str)> {
    s.split_once(sep)
}

/// `inet_aton`'s dotted quad (the forms people write; not its octal/short forms).
fn dotted(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// `strtol` with base 0 over the longest numeric prefix (`0x` hex, leading-0 octal),
/// as `qemu_strtoi(.., &end, 0, ..)` reads a port: `None` without a digit.
fn c_int_prefix(s: &str) -> Option<i64> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (radix, digits) = if let Some(h) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (16, h)
    } else if s.len() > 1 && s.starts_with('0') {
        (8, &s[1..])
    } else {
        (10, s)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        // "0" alone, or "0x" with nothing after it, still reads as 0.
        return (radix != 10).then_some(0);
    }
    let v = i64::from_str_radix(&digits[..end], radix).ok()?;
    Some(if neg { -v } else { v })
}

/// The classful mask QEMU gives `net=ADDR` without a length.
fn classful_mask(addr: u32) -> u32 {
    if addr & 0x8000_0000 == 0 {
        0xff00_0000
    } else if addr & 0xfff0_0000 == 0xac10_0000 {
        0xfff0_0000
    } else if addr & 0xc000_0000 == 0x8000_0000 || addr & 0xffff_0000 == 0xc0a8_0000 {
        // Class B, and the private 192.168.0.0/16.
        0xffff_0000
    } else if addr & 0xffff_0000 == 0xc612_0000 {
        0xfffe_0000
    } else if addr & 0xe000_0000 == 0xe000_0000 {
        0xffff_ff00
    } else {
        0xffff_fff0
    }
}

/// Whether `a` and `b` share their first `len` bits.
fn same_net6(a: &Ipv6Addr, b: &Ipv6Addr, len: u8) -> bool {
    let (a, b) = (u128::from(*a), u128::from(*b));
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    a & mask == b & mask
}

impl UserConfig {
    /// Checks `args` the way QEMU's `net_init_slirp` does, in the same order and with
    /// the same messages.
    pub fn parse(args: &UserArgs) -> Result<UserConfig, Error> {
        // Naming only one family turns the other off; turning one off keeps the other.
        let ipv4 = !(args.ipv6 == Some(true) && args.ipv4.is_none() || args.ipv4 == Some(false));
        let ipv6 = !(args.ipv4 == Some(true) && args.ipv6.is_none() || args.ipv6 == Some(false));
        let vnet = match (&args.net, &args.ip) {
            (Some(n), _) => Some(n.clone()),
            (None, Some(ip)) => Some(format!("{ip}/24")),
            (None, None) => None,
        };
        if !ipv4 && (vnet.is_some() || args.host.is_some() || args.dns.is_some()) {
            return Err(invalid("IPv4 disabled but netmask/host/dns provided"));
        }
        if !ipv6
            && (args.ipv6_prefix.is_some() || args.ipv6_host.is_some() || args.ipv6_dns.is_some())
        {
            return Err(invalid("IPv6 disabled but prefix/host6/dns6 provided"));
        }
        if !ipv4 && !ipv6 {
            return Err(invalid("IPv4 and IPv6 disabled"));
        }
        let restricted = args.restrict.unwrap_or(false);

        let mut net = 0x0a00_0200u32;
        let mut mask = 0xffff_ff00u32;
        let mut host = 0x0a00_0202u32;
        let mut dhcp = 0x0a00_020fu32;
        let mut dns = 0x0a00_0203u32;
        if let Some(v) = &vnet {
            match split_sep(v, '/') {
                None => {
                    net = dotted(v)
                        .ok_or_else(|| invalid("Failed to parse netmask"))?
                        .into();
                    mask = classful_mask(net);
                }
                Some((addr, m)) => {
                    net = dotted(addr)
                        .ok_or_else(|| invalid("Failed to parse netmask"))?
                        .into();
                    mask = match m.parse::<i64>() {
                        Ok(shift) if (4..=32).contains(&shift) => u32::MAX << (32 - shift),
                        Ok(_) => {
                            return Err(invalid("Invalid netmask provided (must be in range 4-32)"))
                        }
                        Err(_) => dotted(m)
                            .ok_or_else(|| invalid("Failed to parse netmask (trailing chars)"))?
                            .into(),
                    };
                }
            }
            net &= mask;
            host = net | (0x0202 & !mask);
            dhcp = net | (0x020f & !mask);
            dns = net | (0x0203 & !mask);
        }
        if let Some(h) = &args.host {
            host = dotted(h)
                .ok_or_else(|| invalid("Failed to parse host"))?
                .into();
        }
        if host & mask != net {
            return Err(invalid("Host doesn't belong to network"));
        }
        if let Some(d) = &args.dns {
            dns = dotted(d)
                .ok_or_else(|| invalid("Failed to parse DNS"))?
                .into();
        }
        if restricted && dns & mask != net {
            return Err(invalid("DNS doesn't belong to network"));
        }
        if dns == host {
            return Err(invalid("DNS must be different from host"));
        }
        if let Some(d) = &args.dhcpstart {
            dhcp = dotted(d)
                .ok_or_else(|| invalid("Failed to parse DHCP start address"))?
                .into();
        }
        if dhcp & mask != net {
            return Err(invalid("DHCP doesn't belong to network"));
        }
        if dhcp == host || dhcp == dns {
            return Err(invalid("DHCP must be different from host and DNS"));
        }
        let smbserver = match &args.smbserver {
            Some(s) => dotted(s).ok_or_else(|| invalid("Failed to parse SMB address"))?,
            None => Ipv4Addr::UNSPECIFIED,
        };

        let prefix6: Ipv6Addr = args
            .ipv6_prefix
            .as_deref()
            .unwrap_or("fec0::")
            .parse()
            .map_err(|_| invalid("Failed to parse IPv6 prefix"))?;
        let prefix6_len =
            match args.ipv6_prefixlen.unwrap_or(0) {
                0 => 64,
                n @ 1..=126 => n as u8,
                _ => return Err(invalid(
                    "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
                )),
            };
        let with_low = |low: u8| {
            let mut o = prefix6.octets();
            o[15] |= low;
            Ipv6Addr::from(o)
        };
        let host6 = match &args.ipv6_host {
            Some(h) => {
                let a: Ipv6Addr = h
                    .parse()
                    .map_err(|_| invalid("Failed to parse IPv6 host"))?;
                if !same_net6(&prefix6, &a, prefix6_len) {
                    return Err(invalid("IPv6 Host doesn't belong to network"));
                }
                a
            }
            None => with_low(2),
        };
        let dns6 = match &args.ipv6_dns {
            Some(d) => {
                let a: Ipv6Addr = d.parse().map_err(|_| invalid("Failed to parse IPv6 DNS"))?;
                if restricted && !same_net6(&prefix6, &a, prefix6_len) {
                    return Err(invalid("IPv6 DNS doesn't belong to network"));
                }
                a
            }
            None => with_low(3),
        };
        match &args.domainname {
            Some(d) if d.is_empty() => {
                return Err(invalid("'domainname' parameter cannot be empty"))
            }
            Some(d) if d.len() > MAX_NAME => {
                return Err(invalid("'domainname' parameter cannot exceed 255 bytes"))
            }
            _ => {}
        }
        if args.hostname.as_ref().is_some_and(|h| h.len() > MAX_NAME) {
            return Err(invalid("'vhostname' parameter cannot exceed 255 bytes"));
        }
        if args
            .tftp_server_name
            .as_ref()
            .is_some_and(|t| t.len() > MAX_NAME)
        {
            return Err(invalid(
                "'tftp-server-name' parameter cannot exceed 255 bytes",
            ));
        }
        let hostfwd = args
            .hostfwd
            .iter()
            .map(|r| HostFwd::parse(r).map(|f| (r.clone(), f)))
            .collect::<Result<Vec<_>, _>>()?;
        let guestfwd = args
            .guestfwd
            .iter()
            .map(|r| GuestFwd::parse(r))
            .collect::<Result<Vec<_>, _>>()?;
        let smb = match &args.smb {
            None => None,
            Some(dir) => {
                if !std::path::Path::new(SMBD).exists() {
                    return Err(Error::Unsupported(format!(
                        "Could not find '{SMBD}', please install it (smb= runs it to share {dir})"
                    )));
                }
                Some((PathBuf::from(dir), smbserver))
            }
        };
        Ok(UserConfig {
            restricted,
            ipv4,
            net: net.into(),
            mask: mask.into(),
            host: host.into(),
            dhcp: dhcp.into(),
            dns: dns.into(),
            ipv6,
            prefix6,
            prefix6_len,
            host6,
            dns6,
            hostname: args.hostname.clone(),
            tftp: args.tftp.as_ref().map(PathBuf::from),
            bootfile: args.bootfile.clone(),
            tftp_server_name: args.tftp_server_name.clone(),
            dnssearch: args.dnssearch.clone(),
            domainname: args.domainname.clone(),
            smb,
            hostfwd,
            guestfwd,
        })
    }

    /// QEMU's one-line description of the stack (`info network`).
    pub fn info(&self) -> String {
        format!(
            "net={},restrict={}",
            self.net,
            if self.restricted { "on" } else { "off" }
        )
    }
}

impl HostFwd {
    /// Parses `[tcp|udp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT` or
    /// `unix:PATH-[GUESTADDR]:GUESTPORT`, failing with QEMU's reason.
    pub fn parse(rule: &str) -> Result<HostFwd, Error> {
        let fail = |why: &str| invalid(format!("Invalid host forwarding rule '{rule}' ({why})"));
        let (proto, rest) = split_sep(rule, ':').ok_or_else(|| fail("No : separators"))?;
        let (udp, unix) = match proto {
            "" | "tcp" => (false, false),
            "udp" => (true, false),
            "unix" => (false, true),
            _ => return Err(fail("Bad protocol name")),
        };
        let (host, rest) = if unix {
            let (path, rest) = split_sep(rest, '-').ok_or_else(|| fail("Missing - separator"))?;
            if path.is_empty() {
                return Err(fail("Missing unix socket path"));
            }
            if !path.starts_with('/') {
                return Err(fail("unix socket path must be absolute"));
            }
            if path.len() > 107 {
                return Err(fail("Unix socket path is too long"));
            }
            (HostSide::Unix(PathBuf::from(path)), rest)
        } else {
            let (addr, rest) = split_sep(rest, ':').ok_or_else(|| fail("Missing : separator"))?;
            let addr = match addr {
                "" => Ipv4Addr::UNSPECIFIED,
                a => dotted(a).ok_or_else(|| fail("Bad host address"))?,
            };
            let (port, rest) =
                split_sep(rest, '-').ok_or_else(|| fail("Bad host port separator"))?;
            let port = c_int_prefix(port)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| fail("Bad host port"))?;
            (HostSide::Inet(SocketAddrV4::new(addr, port)), rest)
        };
        let (gaddr, gport) = split_sep(rest, ':').ok_or_else(|| fail("Missing guest address"))?;
        let gaddr = match gaddr {
            "" => Ipv4Addr::UNSPECIFIED,
            a => dotted(a).ok_or_else(|| fail("Bad guest address"))?,
        };
        let gport = c_int_prefix(gport)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p >= 1)
            .ok_or_else(|| fail("Bad guest port"))?;
        Ok(HostFwd {
            udp,
            host,
            guest: SocketAddrV4::new(gaddr, gport),
        })
    }
}

/// The listening side named by `hostfwd_remove`'s `[tcp|udp]:[HOSTADDR]:HOSTPORT`:
/// `None` for anything QEMU calls an invalid format.
pub fn parse_hostfwd_remove(spec: &str) -> Option<(bool, SocketAddrV4)> {
    let (proto, rest) = split_sep(spec, ':')?;
    let udp = match proto {
        "" | "tcp" => false,
        "udp" => true,
        _ => return None,
    };
    let (addr, port) = split_sep(rest, ':')?;
    let addr = match addr {
        "" => Ipv4Addr::UNSPECIFIED,
        a => dotted(a)?,
    };
    // Decimal, the whole rest, within int: the port is then taken modulo 2^16, as
    // QEMU's htons of an int does.
    let port: i32 = port.parse().ok()?;
    Some((udp, SocketAddrV4::new(addr, port as u16)))
}

impl GuestFwd {
    /// Parses `[tcp]:[SERVER]:PORT-cmd:COMMAND`, `...-tcp:HOST:PORT` or
    /// `...-unix:PATH`.
    pub fn parse(rule: &str) -> Result<GuestFwd, Error> {
        let fail = || invalid(format!("Invalid guest forwarding rule '{rule}'"));
        let (proto, rest) = split_sep(rule, ':').ok_or_else(fail)?;
        if !proto.is_empty() && proto != "tcp" {
            return Err(fail());
        }
        let (server, rest) = split_sep(rest, ':').ok_or_else(fail)?;
        let server = match server {
            "" => Ipv4Addr::UNSPECIFIED,
            s => dotted(s).ok_or_else(fail)?,
        };
        let (port, target) = split_sep(rest, '-').ok_or_else(fail)?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p >= 1)
            .ok_or_else(fail)?;
        let target = if let Some(cmd) = target.strip_prefix("cmd:") {
            GuestTarget::Cmd(cmd.to_string())
        } else if let Some(addr) = target.strip_prefix("tcp:") {
            GuestTarget::Tcp(addr.to_string())
        } else if let Some(path) = target.strip_prefix("unix:") {
            GuestTarget::Unix(PathBuf::from(path))
        } else {
            return Err(Error::Unsupported(format!(
                "Could not open guest forwarding device 'guestfwd.tcp.{port}': pollswitch \
                 forwards to cmd:COMMAND, tcp:HOST:PORT or unix:PATH, not '{target}'"
            )));
        };
        Ok(GuestFwd {
            rule: rule.to_string(),
            server,
            port,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(f: impl FnOnce(&mut UserArgs)) -> Result<UserConfig, String> {
        let mut a = UserArgs::default();
        f(&mut a);
        UserConfig::parse(&a).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_qemus() {
        let c = parse(|_| {}).unwrap();
        assert_eq!(c.net, Ipv4Addr::new(10, 0, 2, 0));
        assert_eq!(c.mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.host, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(c.dhcp, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert!(c.ipv4 && c.ipv6 && !c.restricted);
        assert_eq!(c.prefix6, "fec0::".parse::<Ipv6Addr>().unwrap());
        assert_eq!(c.prefix6_len, 64);
        assert_eq!(c.host6, "fec0::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(c.dns6, "fec0::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(c.info(), "net=10.0.2.0,restrict=off");
    }

    #[test]
    fn net_derives_host_dhcp_and_dns() {
        let c = parse(|a| a.net = Some("192.168.76.0/24".into())).unwrap();
        assert_eq!(c.host, Ipv4Addr::new(192, 168, 76, 2));
        assert_eq!(c.dhcp, Ipv4Addr::new(192, 168, 76, 15));
        assert_eq!(c.dns, Ipv4Addr::new(192, 168, 76, 3));
        let c = parse(|a| a.net = Some("10.1.2.3/255.255.0.0".into())).unwrap();
        assert_eq!(c.net, Ipv4Addr::new(10, 1, 0, 0));
        assert_eq!(c.host, Ipv4Addr::new(10, 1, 2, 2));
        // Without a length: the address's class, as QEMU decides it.
        let c = parse(|a| a.net = Some("172.20.0.0".into())).unwrap();
        assert_eq!(c.mask, Ipv4Addr::new(255, 240, 0, 0));
        let c = parse(|a| a.ip = Some("10.9.9.0".into())).unwrap();
        assert_eq!(c.mask, Ipv4Addr::new(255, 255, 255, 0));
    }

    #[test]
    fn bad_networks_say_what_qemu_says() {
        type Case = (fn(&mut UserArgs), &'static str);
        let cases: [Case; 12] = [
            (|a| a.net = Some("x".into()), "Failed to parse netmask"),
            (
                |a| a.net = Some("10.0.0.0/3".into()),
                "Invalid netmask provided (must be in range 4-32)",
            ),
            (
                |a| a.net = Some("10.0.0.0/24x".into()),
                "Failed to parse netmask (trailing chars)",
            ),
            (
                |a| a.host = Some("10.0.3.2".into()),
                "Host doesn't belong to network",
            ),
            (
                |a| a.dns = Some("10.0.2.2".into()),
                "DNS must be different from host",
            ),
            (
                |a| {
                    a.restrict = Some(true);
                    a.dns = Some("8.8.8.8".into())
                },
                "DNS doesn't belong to network",
            ),
            (
                |a| a.dhcpstart = Some("10.0.2.3".into()),
                "DHCP must be different from host and DNS",
            ),
            (
                |a| {
                    a.ipv4 = Some(false);
                    a.net = Some("10.0.0.0/8".into())
                },
                "IPv4 disabled but netmask/host/dns provided",
            ),
            (
                |a| {
                    a.ipv4 = Some(false);
                    a.ipv6 = Some(false)
                },
                "IPv4 and IPv6 disabled",
            ),
            (
                |a| a.ipv6_prefixlen = Some(127),
                "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)",
            ),
            (
                |a| a.ipv6_host = Some("fec1::2".into()),
                "IPv6 Host doesn't belong to network",
            ),
            (
                |a| a.domainname = Some(String::new()),
                "'domainname' parameter cannot be empty",
            ),
        ];
        for (set, want) in cases {
            assert_eq!(parse(set).unwrap_err(), want);
        }
    }

    #[test]
    fn one_family_named_turns_the_other_off() {
        let c = parse(|a| a.ipv6 = Some(true)).unwrap();
        assert!(c.ipv6 && !c.ipv4);
        let c = parse(|a| a.ipv4 = Some(false)).unwrap();
        assert!(c.ipv6 && !c.ipv4);
        let c = parse(|a| {
            a.ipv4 = Some(true);
            a.ipv6 = Some(true)
        })
        .unwrap();
        assert!(c.ipv6 && c.ipv4);
    }

    #[test]
    fn hostfwd_rules() {
        let f = HostFwd::parse("tcp:127.0.0.1:2222-:22").unwrap();
        assert_eq!(
            f,
            HostFwd {
                udp: false,
                host: HostSide::Inet("127.0.0.1:2222".parse().unwrap()),
                guest: "0.0.0.0:22".parse().unwrap(),
            }
        );
        let f = HostFwd::parse("udp::0x35-10.0.2.9:53").unwrap();
        assert!(f.udp);
        assert_eq!(f.host, HostSide::Inet("0.0.0.0:53".parse().unwrap()));
        assert_eq!(f.guest, "10.0.2.9:53".parse().unwrap());
        let f = HostFwd::parse("unix:/run/x.sock-:22").unwrap();
        assert_eq!(f.host, HostSide::Unix("/run/x.sock".into()));
        for (rule, why) in [
            ("tcp", "No : separators"),
            ("sctp::1-:1", "Bad protocol name"),
            ("tcp:1", "Missing : separator"),
            ("tcp:300.0.0.1:1-:1", "Bad host address"),
            ("tcp::1", "Bad host port separator"),
            ("tcp::70000-:1", "Bad host port"),
            ("tcp::1-", "Missing guest address"),
            ("tcp::1-x:1", "Bad guest address"),
            ("tcp::1-:0", "Bad guest port"),
            ("unix:rel-:1", "unix socket path must be absolute"),
            ("unix:-:1", "Missing unix socket path"),
        ] {
            assert_eq!(
                HostFwd::parse(rule).unwrap_err().to_string(),
                format!("Invalid host forwarding rule '{rule}' ({why})")
            );
        }
    }

    #[test]
    fn hostfwd_remove_specs() {
        assert_eq!(
            parse_hostfwd_remove("tcp:127.0.0.1:2222"),
            Some((false, "127.0.0.1:2222".parse().unwrap()))
        );
        assert_eq!(
            parse_hostfwd_remove("udp::53"),
            Some((true, "0.0.0.0:53".parse().unwrap()))
        );
        assert_eq!(parse_hostfwd_remove("tcp::22x"), None);
        assert_eq!(parse_hostfwd_remove("icmp::1"), None);
        assert_eq!(parse_hostfwd_remove("tcp:1"), None);
    }

    #[test]
    fn guestfwd_rules() {
        let g = GuestFwd::parse("tcp:10.0.2.100:1234-cmd:cat").unwrap();
        assert_eq!(g.server, Ipv4Addr::new(10, 0, 2, 100));
        assert_eq!(g.port, 1234);
        assert_eq!(g.target, GuestTarget::Cmd("cat".into()));
        let g = GuestFwd::parse(":10.0.2.100:80-tcp:127.0.0.1:8080").unwrap();
        assert_eq!(g.target, GuestTarget::Tcp("127.0.0.1:8080".into()));
        for bad in [
            "udp:1.2.3.4:1-cmd:x",
            "tcp:1.2.3.4:0-cmd:x",
            "tcp:x:1-cmd:y",
            "tcp:1",
        ] {
            assert_eq!(
                GuestFwd::parse(bad).unwrap_err().to_string(),
                format!("Invalid guest forwarding rule '{bad}'")
            );
        }
        assert!(GuestFwd::parse("tcp:1.2.3.4:1-stdio")
            .unwrap_err()
            .to_string()
            .starts_with("Could not open guest forwarding device 'guestfwd.tcp.1'"));
    }

    #[test]
    fn int_prefixes_read_as_c_does() {
        assert_eq!(c_int_prefix("22"), Some(22));
        assert_eq!(c_int_prefix("0x16"), Some(22));
        assert_eq!(c_int_prefix("026"), Some(22));
        assert_eq!(c_int_prefix("22abc"), Some(22));
        assert_eq!(c_int_prefix("0"), Some(0));
        assert_eq!(c_int_prefix("-1"), Some(-1));
        assert_eq!(c_int_prefix("x"), None);
        assert_eq!(c_int_prefix(""), None);
    }
}
