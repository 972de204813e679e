//! Engines: one per transport a switch port can use, each in its own file, all behind
//! the [`Port`] trait and listed in [`ENGINES`].
//!
//! ```text
//!  spec "udp:local=127.0.0.1:5000,peer=127.0.0.1:6000"
//!        │ Spec::parse          ENGINES["udp"].open
//!        ▼                      ▼
//!      Spec ───────────────► Box<dyn Port> ── tx_burst(frames) -> taken
//!                                          └─ rx_burst(tally)  -> read
//! ```
//!
//! A spec is the engine's name, a colon, and QEMU-style `key=value` pairs separated by
//! commas. `tx_burst` follows DPDK's meaning of "burst": as many as the transport takes
//! now, returning the count; what it did not take stays with the caller, who offers the
//! same frames again. `rx_burst` reads at most one burst without blocking and accounts
//! for every frame in the caller's [`Tally`].

use std::fmt;
use std::time::Duration;

use crate::error::{PerfError, Result};
use crate::tally::Tally;

pub mod memif;
#[allow(unsafe_code)]
mod mmsg;
#[allow(unsafe_code)]
pub mod tap;
pub mod tcp;
pub mod udp;
pub mod udp_app;
pub mod vde;

pub use mmsg::MAX_BURST;

/// Largest frame any engine receives whole; longer ones arrive cut and count as foreign.
pub const RX_FRAME_MAX: usize = 9216;

/// One end of a link into the system under test, as the generator and sink drive it.
pub trait Port: Send {
    /// Sends as many of `frames` as the transport accepts without blocking; returns how
    /// many. Refusals other than "try again" are counted in [`Port::tx_errors`].
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize;

    /// Reads at most one burst of frames that have arrived, without blocking, into
    /// `tally`; returns how many frames were read.
    fn rx_burst(&mut self, tally: &mut Tally) -> usize;

    /// Waits up to `timeout` until the port can carry traffic: a stream connection made
    /// or accepted. Datagram ports are ready at once.
    fn connect(&mut self, _timeout: Duration) -> Result<()> {
        Ok(())
    }

    /// Pushes out what the port still buffers (streams); true once nothing is left.
    fn flush(&mut self) -> bool {
        true
    }

    /// Sends that failed with a real error (not "try again"), and the last such error.
    fn tx_errors(&self) -> (u64, Option<String>) {
        (0, None)
    }

    /// Frames the kernel dropped because this endpoint's receive queue was full: the
    /// tool's own loss, to tell apart from the system's.
    fn rx_drops(&self) -> Option<u64> {
        None
    }

    /// A second handle on the same port, so that one thread receives while another
    /// sends.
    fn try_clone(&self) -> Result<Box<dyn Port>> {
        Err(PerfError::Usage(format!(
            "{}: this engine cannot be shared between threads",
            self.describe()
        )))
    }

    /// The spec it was opened with, for messages and results.
    fn describe(&self) -> String;
}

/// An engine's entry in the registry.
pub struct Engine {
    /// The spec's prefix.
    pub name: &'static str,
    /// One line for `pollswitch-perf engines`.
    pub about: &'static str,
    /// The keys its spec takes.
    pub keys: &'static [&'static str],
    /// Opens a port from a spec already checked against `keys`.
    pub open: fn(&Spec) -> Result<Box<dyn Port>>,
}

/// Every engine, by spec prefix.
pub const ENGINES: &[Engine] = &[
    udp::ENGINE,
    udp_app::ENGINE,
    tcp::ENGINE,
    tap::ENGINE,
    vde::ENGINE,
    memif::ENGINE,
];

/// A parsed endpoint spec: `engine:key=value,key=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The engine's name.
    pub engine: String,
    /// The pairs in the order written.
    pub pairs: Vec<(String, String)>,
}

impl Spec {
    /// Parses `text`, checking the engine exists and takes every key given.
    pub fn parse(text: &str) -> Result<Spec> {
        let (engine, rest) = text.split_once(':').unwrap_or((text, ""));
        let e = find(engine)?;
        let mut pairs = Vec::new();
        for item in rest.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                PerfError::Usage(format!("{text}: expected key=value, got {item:?}"))
            })?;
            if !e.keys.contains(&k) {
                return Err(PerfError::Usage(format!(
                    "{text}: engine {engine} takes {}, not {k:?}",
                    e.keys.join(", ")
                )));
            }
            if pairs.iter().any(|(have, _)| have == k) {
                return Err(PerfError::Usage(format!("{text}: {k} given twice")));
            }
            pairs.push((k.to_string(), v.to_string()));
        }
        Ok(Spec {
            engine: engine.to_string(),
            pairs,
        })
    }

    /// The value of `key`, if given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or a usage error naming it.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| PerfError::Usage(format!("{self}: {key}= is required")))
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.engine)?;
        for (i, (k, v)) in self.pairs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// The engine called `name`.
pub fn find(name: &str) -> Result<&'static Engine> {
    ENGINES.iter().find(|e| e.name == name).ok_or_else(|| {
        let names: Vec<_> = ENGINES.iter().map(|e| e.name).collect();
        PerfError::Usage(format!(
            "no engine {name:?}: one of {} (spec: ENGINE:key=value,...)",
            names.join(", ")
        ))
    })
}

/// Opens the port `text` describes.
pub fn open(text: &str) -> Result<Box<dyn Port>> {
    let spec = Spec::parse(text)?;
    (find(&spec.engine)?.open)(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        let s = Spec::parse("udp:local=127.0.0.1:1,peer=127.0.0.1:2").unwrap();
        assert_eq!(s.engine, "udp");
        assert_eq!(s.get("peer"), Some("127.0.0.1:2"));
        assert_eq!(s.get("nope"), None);
        assert_eq!(s.to_string(), "udp:local=127.0.0.1:1,peer=127.0.0.1:2");
        assert_eq!(Spec::parse("tap:ifname=x").unwrap().pairs.len(), 1);
    }

    #[test]
    fn bad_specs_say_why() {
        let err = |t: &str| Spec::parse(t).unwrap_err().to_string();
        assert!(err("carrier-pigeon:x=1").contains("no engine"));
        assert!(err("udp:bogus=1").contains("not \"bogus\""));
        assert!(err("udp:local").contains("expected key=value"));
        assert!(err("udp:local=a,local=b").contains("given twice"));
        assert!(Spec::parse("tcp:").unwrap().require("connect").is_err());
    }

    #[test]
    fn every_engine_is_registered_once() {
        for e in ENGINES {
            assert_eq!(ENGINES.iter().filter(|o| o.name == e.name).count(), 1);
            assert!(!e.keys.is_empty() && !e.about.is_empty());
        }
    }
}
