//! The daemon's command line, in QEMU's style.
//!
//! ```text
//! pollswitch -netdev tap,id=t0,ifname=tap0,poll-us=50 \
//!            -netdev hubport,id=h0,hubid=0,netdev=t0  \
//!            -cores 1-3 -qmp unix:/run/pollswitch.sock,server=on,wait=off
//! ```
//!
//! Options take one or two leading dashes and their value as the next argument or
//! after `=` (`--netdev=tap,id=t0`). A `-netdev` value is QEMU's comma syntax
//! ([`parse_keyval`]: `type` implied by the first element, `,,` for a literal comma)
//! read into a [`Netdev`] by the same QAPI code that reads `netdev_add`, so the
//! command line and QMP agree on every value and every error text. Each error names
//! the option it is about.

use thiserror::Error;

use crate::qapi::{Netdev, QapiError};

/// Default for `-poll-us`: microseconds a worker busy-polls before sleeping.
pub const DEFAULT_POLL_US: u32 = 1000;
/// Default for `-pool-size`: packet buffers preallocated.
pub const DEFAULT_POOL_SIZE: u32 = 16384;
/// Default for `-max-frame`: the largest frame, in bytes.
pub const DEFAULT_MAX_FRAME: u32 = 9216;
/// Smallest `-max-frame`: a minimum Ethernet frame.
pub const MIN_MAX_FRAME: u32 = 64;
/// Largest `-max-frame`.
pub const MAX_MAX_FRAME: u32 = 65535;
/// Largest core number `-cores` accepts.
pub const MAX_CORE: usize = 8191;

/// Help text for `-h`.
pub const USAGE: &str = "\
Usage: pollswitch [OPTION]...
A poll-mode userspace Ethernet switch, controlled over QMP like QEMU's network layer.

Options take one or two leading dashes; a value follows as the next argument or
after '=' (-netdev=tap,id=t0).

  -netdev TYPE,id=ID[,KEY=VALUE]...
                   Add a port, as QEMU's -netdev does (repeatable). TYPE is one of
                   tap, socket, stream, dgram, hubport, nic, l2tpv3, vde, bridge,
                   user (libslirp NAT), vhost-user, netmap (where the host has it), af-xdp
                   (AF_XDP sockets on a kernel interface), x-vxlan (VXLAN to other
                   hosts), or x-null (an in-memory source/sink for benchmarks); the
                   keys are that
                   type's members in qapi/net.json (tap: ifname, queues, poll-us,
                   sndbuf, ...; nested ones dotted: addr.type=inet,addr.port=5000).
                   vhost-user serves a VM's virtio-net (chardev=ID of a -chardev
                   socket); vhost-vdpa is refused, saying what the host lacks.
                   Write ',,' for a comma inside a value; repeat a key for a list
                   (hostfwd=A,hostfwd=B). Booleans: on/off, yes/no, true/false, y/n.
                   Sizes take k, M, G, T suffixes. A JSON object
                   ('{\"type\": \"tap\", \"id\": \"t0\"}') is accepted too.
  -cores LIST      One worker pinned to each of these CPU cores, e.g. 1 or 0,2 or
                   1-3,5 (default: one worker on the last core this process may use).
  -poll-us N       Microseconds a worker busy-polls idle ports before sleeping,
                   for ports without their own poll-us; 0 never busy-polls
                   (default 1000: a worker keeps its core while traffic flows and
                   sleeps after 1 ms without a frame).
  -pool-size N     Packet buffers to preallocate (default 16384).
  -max-frame N     Largest frame in bytes, 64 to 65535 (default 9216).
  -gso-buffers N   Buffers of 64 KiB for GSO super-frames, 0 to 65536 (default 256):
                   taps keep their offloads (TSO, checksum) and pass whole
                   super-frames; 0 turns offloads off, as QEMU does on a hub.
  -qmp SPEC        Serve QMP on SPEC, as QEMU's -qmp: unix:PATH,server=on,wait=off
                   or tcp:[HOST]:PORT,server=on,wait=off (also QEMU's old spelling
                   tcp::PORT,server,nowait; no HOST: every address) (repeatable).
  -qmp-pretty SPEC The same, with pretty-printed replies.
  -chardev socket,id=ID,path=P|host=H,port=N|fd=N[,server=on|off][,wait=on|off]
           [,reconnect=S|,reconnect-ms=MS]
                   A socket chardev, as QEMU's (repeatable); fd=N is a descriptor
                   the daemon inherited (libvirt passes its monitor that way). A
                   vhost-user port listens on a server=on one (never waiting for its
                   frontend) or connects to a server=off one, again every reconnect.
  -mon chardev=ID[,mode=control][,pretty=on|off]
                   Serve QMP on chardev ID (which must listen: server=on,wait=off).
  -name NAME       A name for this switch (also guest=NAME); query-name returns it.
  -daemonize       Detach once ready: the command returns when every port and
                   monitor is up (status 0) or failed (status 1, with the reason).
  -pidfile FILE    Write the process id to FILE (removed at exit).
  -D FILE          Write the log to FILE instead of stderr.
  -x-metrics [tcp:][HOST:]PORT
                   Serve the counters in Prometheus' text format at
                   http://HOST:PORT/metrics (HOST default 127.0.0.1).
  -msg timestamp=on|off
                   Timestamps on log lines (default on). POLLSWITCH_LOG=debug for
                   more (tracing's filter syntax).
  -h, -help        Print this help and exit.
  -V, -version     Print the version and exit.
";

/// A command line the daemon cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CliError {
    /// Comma syntax: an element after the first without `=`.
    #[error("Expected '=' after parameter '{0}'")]
    ExpectedEquals(String),
    /// Comma syntax: an element with an empty key (the text of the element).
    #[error("Expected parameter name before '{0}'")]
    EmptyKey(String),
    /// A `-netdev` whose comma syntax is wrong.
    #[error("{option} {arg}: {source}")]
    NetdevSyntax {
        /// The option as written (`-netdev`, `--netdev`).
        option: String,
        /// Its argument.
        arg: String,
        /// What is wrong with it.
        source: Box<CliError>,
    },
    /// A `-netdev` given as JSON that does not parse as a JSON object.
    #[error("{option} {arg}: {reason}")]
    NetdevJson {
        /// The option as written.
        option: String,
        /// Its argument.
        arg: String,
        /// The JSON parser's complaint.
        reason: String,
    },
    /// A `-netdev` whose members the QAPI schema refuses.
    #[error("{option} {arg}: {source}")]
    Netdev {
        /// The option as written.
        option: String,
        /// Its argument.
        arg: String,
        /// QEMU's text for the problem.
        source: QapiError,
    },
    /// Two `-netdev` with the same id (QemuOpts' text).
    #[error("{option} {arg}: Duplicate ID '{id}' for netdev")]
    DuplicateId {
        /// The option as written.
        option: String,
        /// Its argument.
        arg: String,
        /// The id given twice.
        id: String,
    },
    /// An option this program does not have.
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    /// An argument that is not an option.
    #[error("unexpected argument '{0}'")]
    UnexpectedArgument(String),
    /// A chardev, monitor, name or log option that is wrong; the text says how.
    #[error("{0}")]
    Other(String),
    /// An option that needs a value, last on the line.
    #[error("{0}: missing argument")]
    MissingArgument(String),
    /// A flag given a value (`-help=yes`).
    #[error("{0}: takes no argument")]
    UnexpectedValue(String),
    /// A `-cores` list that does not parse.
    #[error("{option}: invalid core list '{value}'")]
    InvalidCoreList {
        /// The option as written.
        option: String,
        /// The list given.
        value: String,
    },
    /// A core named twice in `-cores`.
    #[error("{option}: core {core} listed twice")]
    DuplicateCore {
        /// The option as written.
        option: String,
        /// The core named twice.
        core: usize,
    },
    /// A core number above [`MAX_CORE`].
    #[error("{option}: core {core} is above the maximum {max}")]
    CoreTooLarge {
        /// The option as written.
        option: String,
        /// The core number given.
        core: usize,
        /// The largest accepted.
        max: usize,
    },
    /// A numeric option whose value is not a decimal number.
    #[error("{option}: invalid number '{value}'")]
    InvalidNumber {
        /// The option as written.
        option: String,
        /// The value given.
        value: String,
    },
    /// A numeric option out of its range.
    #[error("{option}: {value} is out of range ({min} to {max})")]
    OutOfRange {
        /// The option as written.
        option: String,
        /// The value given.
        value: String,
        /// The smallest accepted.
        min: u64,
        /// The largest accepted.
        max: u64,
    },
}

/// Index just past the element starting at `start`: the next `,` that is not
/// part of a `,,` escape, or the end.
fn element_end(b: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < b.len() {
        if b[i] == b',' {
            if b.get(i + 1) == Some(&b',') {
                i += 2;
                continue;
            }
            return i;
        }
        i += 1;
    }
    b.len()
}

/// The value starting at `start`, with `,,` turned into `,`, and where the next
/// element starts.
fn read_value(s: &str, start: usize) -> (String, usize) {
    let end = element_end(s.as_bytes(), start);
    (s[start..end].replace(",,", ","), end + 1)
}

/// Splits at single commas, turning `,,` into `,` (for options such as `-qmp` whose
/// elements need not be `key=value`).
pub fn split_commas(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < s.len() {
        let (v, next) = read_value(s, pos);
        out.push(v);
        pos = next;
    }
    out
}

/// Splits QEMU's comma syntax into `(key, value)` pairs, in order, repeats kept.
///
/// `tap,id=t0,ifname=tap0` with `implied_key` `Some("type")` gives
/// `[("type", "tap"), ("id", "t0"), ("ifname", "tap0")]`: only the first element may
/// omit `key=`, and then only when there is an implied key. `,,` is a literal comma
/// inside a value (`script=/a,,b` is `/a,b`); a trailing comma is ignored. An element
/// without `=` after the first, or with an empty key, is an error naming it.
pub fn parse_keyval(s: &str, implied_key: Option<&str>) -> Result<Vec<(String, String)>, CliError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let key_end = b[pos..]
            .iter()
            .position(|&c| c == b'=' || c == b',')
            .map_or(b.len(), |n| pos + n);
        let key = &s[pos..key_end];
        if key.is_empty() {
            let element = &s[pos..element_end(b, pos).max(pos + 1)];
            return Err(CliError::EmptyKey(element.to_string()));
        }
        if b.get(key_end) == Some(&b'=') {
            let (value, next) = read_value(s, key_end + 1);
            out.push((key.to_string(), value));
            pos = next;
        } else if let (0, Some(implied)) = (pos, implied_key) {
            let (value, next) = read_value(s, pos);
            out.push((implied.to_string(), value));
            pos = next;
        } else {
            return Err(CliError::ExpectedEquals(key.to_string()));
        }
    }
    Ok(out)
}

/// What the daemon was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    /// Ports to create at start, in command-line order (`-netdev`).
    pub netdevs: Vec<Netdev>,
    /// Cores to pin workers to, in the order given (`-cores`); `None`: not pinned.
    pub cores: Option<Vec<usize>>,
    /// Default busy-poll time in microseconds (`-poll-us`).
    pub poll_us: u32,
    /// Packet buffers to preallocate (`-pool-size`).
    pub pool_size: u32,
    /// Largest frame in bytes, 64..=65535 (`-max-frame`).
    pub max_frame: u32,
    /// Buffers for GSO super-frames (`-gso-buffers`).
    pub gso_buffers: u32,
    /// Raw `-qmp` specs, in order, for the QMP server to parse.
    pub qmp: Vec<String>,
    /// Raw `-qmp-pretty` specs.
    pub qmp_pretty: Vec<String>,
    /// `-chardev` specs.
    pub chardevs: Vec<crate::chardev::Chardev>,
    /// `-mon` specs.
    pub mons: Vec<crate::chardev::Monitor>,
    /// `-name`.
    pub name: Option<String>,
    /// `-daemonize`.
    pub daemonize: bool,
    /// `-pidfile`.
    pub pidfile: Option<String>,
    /// `-D`.
    pub log_file: Option<String>,
    /// `-msg timestamp=`.
    pub timestamps: bool,
    /// `-x-metrics`: where the Prometheus endpoint listens.
    pub metrics: Option<String>,
    /// `-h`/`-help` was given.
    pub help: bool,
    /// `-V`/`-version` was given.
    pub version: bool,
}

impl Default for DaemonArgs {
    fn default() -> Self {
        DaemonArgs {
            netdevs: Vec::new(),
            cores: None,
            poll_us: DEFAULT_POLL_US,
            pool_size: DEFAULT_POOL_SIZE,
            max_frame: DEFAULT_MAX_FRAME,
            gso_buffers: switch::pool::DEFAULT_GSO_BUFFERS,
            qmp: Vec::new(),
            qmp_pretty: Vec::new(),
            chardevs: Vec::new(),
            mons: Vec::new(),
            name: None,
            daemonize: false,
            pidfile: None,
            log_file: None,
            timestamps: true,
            metrics: None,
            help: false,
            version: false,
        }
    }
}

impl DaemonArgs {
    /// Parses the arguments after the program name (`std::env::args().skip(1)`).
    ///
    /// Scalar options given twice take the last value, as in QEMU; `-netdev` and
    /// `-qmp` accumulate. The first error stops the parse.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<DaemonArgs, CliError> {
        let mut out = DaemonArgs::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                return Err(CliError::UnexpectedArgument(arg));
            };
            let (name, inline) = match body.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (body, None),
            };
            // The option as the user spelled it, for error messages.
            let option = arg[..arg.len() - body.len() + name.len()].to_string();
            match name {
                "h" | "help" | "V" | "version" => {
                    if inline.is_some() {
                        return Err(CliError::UnexpectedValue(option));
                    }
                    if name.starts_with('h') {
                        out.help = true;
                    } else {
                        out.version = true;
                    }
                    continue;
                }
                "daemonize" => {
                    if inline.is_some() {
                        return Err(CliError::UnexpectedValue(option));
                    }
                    out.daemonize = true;
                    continue;
                }
                "netdev" | "cores" | "poll-us" | "pool-size" | "max-frame" | "gso-buffers"
                | "qmp" | "qmp-pretty" | "chardev" | "mon" | "name" | "pidfile" | "D" | "msg"
                | "x-metrics" => {}
                _ if name.is_empty() => return Err(CliError::UnexpectedArgument(arg)),
                _ => return Err(CliError::UnknownOption(option)),
            }
            let value = match inline.or_else(|| args.next()) {
                Some(value) => value,
                None => return Err(CliError::MissingArgument(option)),
            };
            // Only paths may hold bytes that are not UTF-8 (crate::osarg); the parsers
            // of -qmp and -chardev check the other parts of their values.
            if !matches!(name, "pidfile" | "D" | "qmp" | "qmp-pretty" | "chardev") {
                crate::osarg::check_utf8(&option, &value)
                    .map_err(|e| CliError::Other(e.to_string()))?;
            }
            match name {
                "netdev" => {
                    let netdev = parse_netdev(&option, &value)?;
                    if out.netdevs.iter().any(|n| n.id == netdev.id) {
                        return Err(CliError::DuplicateId {
                            option,
                            arg: value,
                            id: netdev.id,
                        });
                    }
                    out.netdevs.push(netdev);
                }
                "cores" => out.cores = Some(parse_cores(&option, &value)?),
                "poll-us" => out.poll_us = parse_number(&option, &value, 0, u32::MAX)?,
                "pool-size" => out.pool_size = parse_number(&option, &value, 1, u32::MAX)?,
                "max-frame" => {
                    out.max_frame = parse_number(&option, &value, MIN_MAX_FRAME, MAX_MAX_FRAME)?
                }
                "gso-buffers" => out.gso_buffers = parse_number(&option, &value, 0, 1 << 16)?,
                "qmp" => out.qmp.push(value),
                "qmp-pretty" => out.qmp_pretty.push(value),
                "chardev" => {
                    let c = crate::chardev::parse_chardev(&value)
                        .map_err(|e| CliError::Other(e.to_string()))?;
                    if out.chardevs.iter().any(|x| x.id == c.id) {
                        return Err(CliError::Other(format!(
                            "{option} {value}: Duplicate chardev ID '{}'",
                            c.id
                        )));
                    }
                    out.chardevs.push(c);
                }
                "mon" => out.mons.push(
                    crate::chardev::parse_mon(&value)
                        .map_err(|e| CliError::Other(e.to_string()))?,
                ),
                "name" => {
                    // QEMU: `-name NAME` or `-name guest=NAME[,...]`.
                    let parts = split_commas(&value);
                    let mut name = None;
                    for (i, p) in parts.iter().enumerate() {
                        match p.split_once('=') {
                            Some(("guest", v)) => name = Some(v.to_string()),
                            // libvirt's other keys: the process and thread names QEMU
                            // sets; the daemon's threads are named already.
                            Some(("process" | "debug-threads", _)) => {}
                            Some((k, _)) => {
                                return Err(CliError::Other(format!(
                                    "{option} {value}: Invalid parameter '{k}'"
                                )))
                            }
                            None if i == 0 => name = Some(p.clone()),
                            None => {
                                return Err(CliError::Other(format!(
                                    "{option} {value}: Expected '=' after parameter '{p}'"
                                )))
                            }
                        }
                    }
                    out.name = name;
                }
                "pidfile" => out.pidfile = Some(value),
                "x-metrics" => {
                    out.metrics = Some(
                        crate::metrics::parse(&value)
                            .map_err(|e| CliError::Other(e.to_string()))?,
                    )
                }
                "D" => out.log_file = Some(value),
                _ => {
                    // -msg timestamp=on|off (QEMU also has guest-name=; not here).
                    let mut ts = None;
                    for p in split_commas(&value) {
                        match p.split_once('=') {
                            Some(("timestamp", v)) => {
                                ts = crate::qapi::parse_bool(v);
                                if ts.is_none() {
                                    return Err(CliError::Other(format!(
                                        "{option} {value}: Parameter 'timestamp' expects 'on' or 'off'"
                                    )));
                                }
                            }
                            _ => {
                                return Err(CliError::Other(format!(
                                    "{option} {value}: Invalid parameter '{p}'"
                                )))
                            }
                        }
                    }
                    if let Some(ts) = ts {
                        out.timestamps = ts;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One `-netdev` value: comma syntax, or a JSON object as QEMU also accepts.
fn parse_netdev(option: &str, arg: &str) -> Result<Netdev, CliError> {
    let qapi_error = |source| CliError::Netdev {
        option: option.to_string(),
        arg: arg.to_string(),
        source,
    };
    if arg.starts_with('{') {
        let args: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(arg).map_err(|e| CliError::NetdevJson {
                option: option.to_string(),
                arg: arg.to_string(),
                reason: e.to_string(),
            })?;
        return Netdev::from_qmp(&args).map_err(qapi_error);
    }
    let pairs = parse_keyval(arg, Some("type")).map_err(|e| CliError::NetdevSyntax {
        option: option.to_string(),
        arg: arg.to_string(),
        source: Box::new(e),
    })?;
    Netdev::from_keyval(&pairs).map_err(qapi_error)
}

/// A `-cores` list: comma-separated core numbers and inclusive ranges `a-b`.
fn parse_cores(option: &str, value: &str) -> Result<Vec<usize>, CliError> {
    let invalid = || CliError::InvalidCoreList {
        option: option.to_string(),
        value: value.to_string(),
    };
    let number = |s: &str| -> Result<usize, CliError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let core = s.parse::<usize>().map_err(|_| invalid())?;
        if core > MAX_CORE {
            return Err(CliError::CoreTooLarge {
                option: option.to_string(),
                core,
                max: MAX_CORE,
            });
        }
        Ok(core)
    };
    let mut cores = Vec::new();
    for part in value.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => {
                let n = number(part)?;
                (n, n)
            }
        };
        if first > last {
            return Err(invalid());
        }
        for core in first..=last {
            if cores.contains(&core) {
                return Err(CliError::DuplicateCore {
                    option: option.to_string(),
                    core,
                });
            }
            cores.push(core);
        }
    }
    Ok(cores)
}

/// A decimal number in `min..=max`.
fn parse_number(option: &str, value: &str, min: u32, max: u32) -> Result<u32, CliError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CliError::InvalidNumber {
            option: option.to_string(),
            value: value.to_string(),
        });
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| CliError::OutOfRange {
            option: option.to_string(),
            value: value.to_string(),
            min: u64::from(min),
            max: u64::from(max),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qapi::{NetdevHubPortOptions, NetdevOpts, NetdevTapOptions};
    use proptest::prelude::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(args: &[&str]) -> Result<DaemonArgs, String> {
        DaemonArgs::parse(args.iter().map(|s| s.to_string())).map_err(|e| e.to_string())
    }

    #[test]
    fn keyval_basic() {
        assert_eq!(
            parse_keyval("tap,id=t0,ifname=tap0", Some("type")),
            Ok(pairs(&[("type", "tap"), ("id", "t0"), ("ifname", "tap0")]))
        );
        assert_eq!(
            parse_keyval("type=tap,id=t0", Some("type")),
            Ok(pairs(&[("type", "tap"), ("id", "t0")]))
        );
        assert_eq!(
            parse_keyval("a=1,b=", None),
            Ok(pairs(&[("a", "1"), ("b", "")]))
        );
        assert_eq!(parse_keyval("a=1,", None), Ok(pairs(&[("a", "1")])));
        assert_eq!(parse_keyval("", Some("type")), Ok(vec![]));
        assert_eq!(parse_keyval("a=x=y", None), Ok(pairs(&[("a", "x=y")])));
        assert_eq!(
            parse_keyval("h=1,h=2", None),
            Ok(pairs(&[("h", "1"), ("h", "2")]))
        );
    }

    #[test]
    fn keyval_escaped_commas() {
        assert_eq!(
            parse_keyval("tap,script=/a,,b,id=t", Some("type")),
            Ok(pairs(&[("type", "tap"), ("script", "/a,b"), ("id", "t")]))
        );
        assert_eq!(parse_keyval("a=,,", None), Ok(pairs(&[("a", ",")])));
        assert_eq!(
            parse_keyval("a=1,,,b=2", None),
            Ok(pairs(&[("a", "1,"), ("b", "2")]))
        );
        assert_eq!(parse_keyval("a=,,,,", None), Ok(pairs(&[("a", ",,")])));
        assert_eq!(
            parse_keyval("x,,y,id=i", Some("type")),
            Ok(pairs(&[("type", "x,y"), ("id", "i")]))
        );
    }

    #[test]
    fn keyval_errors() {
        let err = |s: &str, k: Option<&str>| parse_keyval(s, k).unwrap_err().to_string();
        assert_eq!(
            err("tap,id=t,vhost", Some("type")),
            "Expected '=' after parameter 'vhost'"
        );
        assert_eq!(err("tap", None), "Expected '=' after parameter 'tap'");
        assert_eq!(err("a=1,x,,y=2", None), "Expected '=' after parameter 'x'");
        assert_eq!(err("a=1,=2", None), "Expected parameter name before '=2'");
        assert_eq!(
            err("=tap", Some("type")),
            "Expected parameter name before '=tap'"
        );
        assert_eq!(
            err(",a=1", Some("type")),
            "Expected parameter name before ','"
        );
        assert_eq!(err(",", None), "Expected parameter name before ','");
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a, DaemonArgs::default());
        assert_eq!(a.poll_us, 1000);
        assert_eq!(a.pool_size, 16384);
        assert_eq!(a.max_frame, 9216);
        assert!(a.netdevs.is_empty() && a.qmp.is_empty() && a.cores.is_none());
        assert!(!a.help && !a.version);
    }

    #[test]
    fn full_command_line() {
        let a = parse(&[
            "-netdev",
            "tap,id=t0,ifname=tap0,poll-us=20",
            "--netdev=hubport,id=h0,hubid=1,netdev=t0",
            "-cores",
            "1-3,5",
            "--poll-us",
            "0",
            "-pool-size=4096",
            "-max-frame",
            "1518",
            "-qmp",
            "unix:/tmp/q.sock,server=on,wait=off",
            "--qmp=tcp:127.0.0.1:4444,server=on,wait=off",
            "-h",
            "--version",
        ])
        .unwrap();
        assert_eq!(
            a.netdevs,
            [
                Netdev {
                    id: "t0".into(),
                    opts: NetdevOpts::Tap(NetdevTapOptions {
                        ifname: Some("tap0".into()),
                        poll_us: Some(20),
                        ..Default::default()
                    }),
                },
                Netdev {
                    id: "h0".into(),
                    opts: NetdevOpts::Hubport(NetdevHubPortOptions {
                        hubid: 1,
                        netdev: Some("t0".into()),
                        x_learning: None,
                        x_fdb_ageing_ms: None,
                        x_fdb_size: None,
                        x_vlan: None,
                        x_trunks: None,
                    }),
                },
            ]
        );
        assert_eq!(a.cores, Some(vec![1, 2, 3, 5]));
        assert_eq!(a.poll_us, 0);
        assert_eq!(a.pool_size, 4096);
        assert_eq!(a.max_frame, 1518);
        assert_eq!(
            a.qmp,
            [
                "unix:/tmp/q.sock,server=on,wait=off",
                "tcp:127.0.0.1:4444,server=on,wait=off"
            ]
        );
        assert!(a.help && a.version);
        assert!(parse(&["-V"]).unwrap().version);
        assert!(parse(&["-help"]).unwrap().help);
        assert!(parse(&["--h"]).unwrap().help);
    }

    #[test]
    fn netdev_json_form() {
        let a = parse(&["-netdev", r#"{"type": "hubport", "id": "h", "hubid": 3}"#]).unwrap();
        assert_eq!(a.netdevs[0].id, "h");
        let spec = r#"{"type": "hubport", "id": "h", "hubid": "3"}"#;
        assert_eq!(
            parse(&["-netdev", spec]).unwrap_err(),
            format!("-netdev {spec}: Invalid parameter type for 'hubid', expected: integer")
        );
        assert!(parse(&["-netdev", "{nope"])
            .unwrap_err()
            .starts_with("-netdev {nope: "));
    }

    #[test]
    fn netdev_errors_name_the_option() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["-netdev", "tap,id=1x"],
                "-netdev tap,id=1x: Parameter 'id' expects an identifier",
            ),
            (
                &["--netdev", "tap"],
                "--netdev tap: Parameter 'id' is missing",
            ),
            (
                &["-netdev", "tap,id=t,bogus=1"],
                "-netdev tap,id=t,bogus=1: Invalid parameter 'bogus'",
            ),
            (
                &["-netdev", "bogus,id=t"],
                "-netdev bogus,id=t: Parameter 'type' does not accept value 'bogus'",
            ),
            (
                &["-netdev", "none,id=t"],
                "-netdev none,id=t: network backend 'none' is not compiled into this binary",
            ),
            (
                &["-netdev", "tap,id=t,queues=x"],
                "-netdev tap,id=t,queues=x: Parameter 'queues' expects a uint64 value",
            ),
            (
                &["-netdev", "tap,id=t,vhost"],
                "-netdev tap,id=t,vhost: Expected '=' after parameter 'vhost'",
            ),
            (
                &["-netdev=tap,id=t,=1"],
                "-netdev tap,id=t,=1: Expected parameter name before '=1'",
            ),
            (
                &["-netdev", "hubport,id=h,hubid=0", "-netdev", "tap,id=h"],
                "-netdev tap,id=h: Duplicate ID 'h' for netdev",
            ),
            (&["-netdev"], "-netdev: missing argument"),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args).unwrap_err(), *want, "{args:?}");
        }
    }

    #[test]
    fn option_errors() {
        let cases: &[(&[&str], &str)] = &[
            (&["-foo"], "unknown option '-foo'"),
            (&["--foo=1"], "unknown option '--foo'"),
            (&["foo"], "unexpected argument 'foo'"),
            (&["-"], "unexpected argument '-'"),
            (&["--"], "unexpected argument '--'"),
            (&["-h=1"], "-h: takes no argument"),
            (&["-cores", "x"], "-cores: invalid core list 'x'"),
            (&["-cores", ""], "-cores: invalid core list ''"),
            (&["-cores", "1,"], "-cores: invalid core list '1,'"),
            (&["-cores", "3-1"], "-cores: invalid core list '3-1'"),
            (&["-cores", "1-"], "-cores: invalid core list '1-'"),
            (&["-cores", "-1"], "-cores: invalid core list '-1'"),
            (&["-cores", "1-2-3"], "-cores: invalid core list '1-2-3'"),
            (&["-cores", "1-3,2"], "-cores: core 2 listed twice"),
            (
                &["-cores", "0-99999999999"],
                "-cores: core 99999999999 is above the maximum 8191",
            ),
            (&["-poll-us", "-1"], "-poll-us: invalid number '-1'"),
            (&["-poll-us", "+1"], "-poll-us: invalid number '+1'"),
            (
                &["-poll-us", "4294967296"],
                "-poll-us: 4294967296 is out of range (0 to 4294967295)",
            ),
            (
                &["-pool-size", "0"],
                "-pool-size: 0 is out of range (1 to 4294967295)",
            ),
            (
                &["-max-frame", "63"],
                "-max-frame: 63 is out of range (64 to 65535)",
            ),
            (
                &["-max-frame", "65536"],
                "-max-frame: 65536 is out of range (64 to 65535)",
            ),
            (&["-max-frame", "1k"], "-max-frame: invalid number '1k'"),
            (&["-qmp"], "-qmp: missing argument"),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args).unwrap_err(), *want, "{args:?}");
        }
    }

    #[test]
    fn max_frame_bounds_and_last_wins() {
        assert_eq!(parse(&["-max-frame", "64"]).unwrap().max_frame, 64);
        assert_eq!(parse(&["-max-frame", "65535"]).unwrap().max_frame, 65535);
        assert_eq!(
            parse(&["-max-frame", "1518", "-max-frame=9000"])
                .unwrap()
                .max_frame,
            9000
        );
    }

    #[test]
    fn core_lists() {
        let cores = |s: &str| parse(&["-cores", s]).unwrap().cores.unwrap();
        assert_eq!(cores("1"), [1]);
        assert_eq!(cores("0,2"), [0, 2]);
        assert_eq!(cores("1-3,5"), [1, 2, 3, 5]);
        assert_eq!(cores("5,1-2"), [5, 1, 2]);
        assert_eq!(cores("4-4"), [4]);
        assert_eq!(cores("8191"), [8191]);
    }

    #[test]
    fn usage_mentions_every_option() {
        for opt in [
            "-netdev",
            "-cores",
            "-poll-us",
            "-pool-size",
            "-max-frame",
            "-qmp",
            "-h",
            "-V",
        ] {
            assert!(USAGE.contains(opt), "{opt}");
        }
    }

    proptest! {
        #[test]
        fn parse_keyval_never_panics(s in any::<String>(), implied in any::<bool>()) {
            let _ = parse_keyval(&s, implied.then_some("type"));
        }

        #[test]
        fn comma_syntax_never_panics(s in "[a-z=,.0-9-]{0,24}") {
            if let Ok(pairs) = parse_keyval(&s, Some("type")) {
                let _ = Netdev::from_keyval(&pairs);
            }
        }

        #[test]
        fn escaped_values_round_trip(
            kv in proptest::collection::vec(("[a-z][a-z0-9-]{0,6}", "[^\u{0}]{0,10}"), 1..5)
        ) {
            let line = kv
                .iter()
                .map(|(k, v)| format!("{k}={}", v.replace(',', ",,")))
                .collect::<Vec<_>>()
                .join(",");
            prop_assert_eq!(parse_keyval(&line, None), Ok(kv));
        }
    }
}
