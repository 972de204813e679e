//! `-chardev` and `-mon`, as QEMU reads them: the way libvirt hands QEMU its monitor
//! (`-chardev socket,id=charmonitor,fd=N,server=on,wait=off -mon
//! chardev=charmonitor,id=monitor,mode=control`), and the socket chardevs other
//! backends will name (vhost-user's `chardev=`).
//!
//! ```text
//!  -chardev socket,id=ID,(path=P | host=H,port=N | fd=N)[,server=on|off][,wait=on|off]
//!                 [,reconnect=SECONDS | ,reconnect-ms=MS]
//!  -mon chardev=ID[,mode=control][,pretty=on|off][,id=NAME]
//!  -qmp SPEC / -qmp-pretty SPEC     the same as a chardev plus a control monitor
//! ```
//!
//! pollswitch serves monitors only as a listening socket (`server=on,wait=off`); a
//! chardev that would connect out (`server=off`) is accepted for the backends that need
//! one, and refused for a monitor with the reason.

use std::collections::HashMap;

use crate::cli::split_commas;
use crate::error::CtlError;

/// Where a socket chardev is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevAddr {
    /// `path=P`: a unix socket.
    Unix(String),
    /// `host=H,port=N` (`host` empty: every address).
    Tcp(String),
    /// `fd=N`: a socket the daemon inherited (or, over QMP, one passed with getfd).
    Fd(String),
}

/// A parsed `-chardev socket,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    /// Its id.
    pub id: String,
    /// Where.
    pub addr: ChardevAddr,
    /// `server=on`: listen (else connect).
    pub server: bool,
    /// `wait=on`: with server=on, wait for a client before starting.
    pub wait: bool,
    /// `reconnect=N` (seconds) or `reconnect-ms=N`: a client chardev reconnects after
    /// this many milliseconds (0: never).
    pub reconnect_ms: u64,
}

/// A parsed `-mon`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    /// The chardev it serves on.
    pub chardev: String,
    /// Pretty-printed replies.
    pub pretty: bool,
}

fn flag(option: &str, key: &str, v: &str) -> Result<bool, CtlError> {
    crate::qapi::parse_bool(v).ok_or_else(|| {
        CtlError::Invalid(format!("{option}: Parameter '{key}' expects 'on' or 'off'"))
    })
}

/// Reads one `-chardev` value.
pub fn parse_chardev(spec: &str) -> Result<Chardev, CtlError> {
    let option = format!("-chardev {spec}");
    let mut parts = split_commas(spec).into_iter();
    let backend = parts.next().unwrap_or_default();
    if backend != "socket" {
        return Err(CtlError::Invalid(format!(
            "{option}: chardev backend '{backend}' is not supported by pollswitch (only socket)"
        )));
    }
    let mut kv: HashMap<String, String> = HashMap::new();
    for p in parts {
        // QEMU's old spellings: `server`, `nowait`.
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None if p == "nowait" => ("wait".into(), "off".into()),
            None if p == "nodelay" => ("nodelay".into(), "on".into()),
            None => (p.clone(), "on".into()),
        };
        match k.as_str() {
            "id" | "path" | "host" | "port" | "fd" | "server" | "wait" | "reconnect"
            | "reconnect-ms" | "nodelay" | "to" | "ipv4" | "ipv6" | "logfile" | "logappend" => {}
            other => {
                return Err(CtlError::Invalid(format!(
                    "{option}: Invalid parameter '{other}'"
                )))
            }
        }
        kv.insert(k, v);
    }
    for (k, v) in &kv {
        if k != "path" {
            crate::osarg::check_utf8(&format!("-chardev ... {k}="), v)?;
        }
    }
    let id = kv
        .get("id")
        .cloned()
        .ok_or_else(|| CtlError::Invalid(format!("{option}: Parameter 'id' is missing")))?;
    let given = ["path", "host", "fd"]
        .iter()
        .filter(|k| kv.contains_key(**k))
        .count();
    let addr = match (kv.get("path"), kv.get("host"), kv.get("port"), kv.get("fd")) {
        (Some(p), None, None, None) => ChardevAddr::Unix(p.clone()),
        (None, h, Some(port), None) => {
            let host = h.map_or("", String::as_str);
            let host = if host.is_empty() { "0.0.0.0" } else { host };
            ChardevAddr::Tcp(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            })
        }
        (None, None, None, Some(fd)) => ChardevAddr::Fd(fd.clone()),
        _ if given == 0 && !kv.contains_key("port") => {
            return Err(CtlError::Invalid(format!(
                "{option}: chardev: socket: no address given (path=, host=/port= or fd=)"
            )))
        }
        _ => {
            return Err(CtlError::Invalid(format!(
                "{option}: chardev: socket: give exactly one of path=, host=/port=, fd="
            )))
        }
    };
    let server = kv
        .get("server")
        .map(|v| flag(&option, "server", v))
        .transpose()?
        .unwrap_or(false);
    let wait = kv
        .get("wait")
        .map(|v| flag(&option, "wait", v))
        .transpose()?
        .unwrap_or(true);
    let number = |key: &str, unit: &str| -> Result<u64, CtlError> {
        match kv.get(key) {
            None => Ok(0),
            Some(v) => v.parse().map_err(|_| {
                CtlError::Invalid(format!(
                    "{option}: Parameter '{key}' expects a number of {unit}"
                ))
            }),
        }
    };
    if kv.contains_key("reconnect") && kv.contains_key("reconnect-ms") {
        return Err(CtlError::Invalid(format!(
            "{option}: 'reconnect' and 'reconnect-ms' are mutually exclusive"
        )));
    }
    let reconnect_ms = number("reconnect", "seconds")?.saturating_mul(1000)
        + number("reconnect-ms", "milliseconds")?;
    if server && reconnect_ms > 0 {
        return Err(CtlError::Invalid(format!(
            "{option}: 'reconnect' option is incompatible with socket in server listen mode"
        )));
    }
    Ok(Chardev {
        id,
        addr,
        server,
        wait,
        reconnect_ms,
    })
}

/// Reads one `-mon` value.
pub fn parse_mon(spec: &str) -> Result<Monitor, CtlError> {
    let option = format!("-mon {spec}");
    let mut chardev = None;
    let mut pretty = false;
    for p in split_commas(spec) {
        let (k, v) = p.split_once('=').unwrap_or((p.as_str(), "on"));
        match k {
            "chardev" => chardev = Some(v.to_string()),
            "mode" if v == "control" => {}
            "mode" if v == "readline" => {
                return Err(CtlError::Invalid(format!(
                    "{option}: pollswitch serves only QMP monitors (mode=control), not the \
                     human monitor (mode=readline)"
                )))
            }
            "mode" => {
                return Err(CtlError::Invalid(format!(
                    "{option}: Parameter 'mode' does not accept value '{v}'"
                )))
            }
            "pretty" => pretty = flag(&option, "pretty", v)?,
            "id" => {}
            other => {
                return Err(CtlError::Invalid(format!(
                    "{option}: Invalid parameter '{other}'"
                )))
            }
        }
    }
    let chardev = chardev
        .ok_or_else(|| CtlError::Invalid(format!("{option}: Parameter 'chardev' is missing")))?;
    Ok(Monitor { chardev, pretty })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirts_monitor_and_the_usual_forms() {
        let c = parse_chardev("socket,id=charmonitor,fd=23,server=on,wait=off").unwrap();
        assert_eq!(
            c,
            Chardev {
                id: "charmonitor".into(),
                addr: ChardevAddr::Fd("23".into()),
                server: true,
                wait: false,
                reconnect_ms: 0
            }
        );
        let m = parse_mon("chardev=charmonitor,id=monitor,mode=control").unwrap();
        assert_eq!(
            m,
            Monitor {
                chardev: "charmonitor".into(),
                pretty: false
            }
        );
        let c = parse_chardev("socket,id=q,host=,port=4444,server,nowait").unwrap();
        assert_eq!(c.addr, ChardevAddr::Tcp("0.0.0.0:4444".into()));
        assert!(c.server && !c.wait);
        let c = parse_chardev("socket,id=v,path=/run/v.sock,reconnect=1").unwrap();
        assert_eq!((c.server, c.reconnect_ms), (false, 1000));
        assert!(parse_mon("chardev=x,pretty=on").unwrap().pretty);
    }

    #[test]
    fn refusals_say_why() {
        for (spec, needle) in [
            ("pty,id=p", "backend 'pty' is not supported"),
            ("socket,path=/x", "'id' is missing"),
            ("socket,id=a", "no address given"),
            ("socket,id=a,path=/x,fd=3", "exactly one of"),
            ("socket,id=a,path=/x,server=maybe", "'server' expects"),
            ("socket,id=a,path=/x,server=on,reconnect=1", "incompatible"),
            ("socket,id=a,path=/x,bogus=1", "Invalid parameter 'bogus'"),
        ] {
            let e = parse_chardev(spec).unwrap_err().to_string();
            assert!(e.contains(needle), "{spec}: {e}");
        }
        assert!(parse_mon("chardev=a,mode=readline")
            .unwrap_err()
            .to_string()
            .contains("only QMP"));
        assert!(parse_mon("mode=control")
            .unwrap_err()
            .to_string()
            .contains("'chardev' is missing"));
    }
}
