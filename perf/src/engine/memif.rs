//! memif engine: an application's memif interface (pollswitch's own Rust memif client,
//! `backends::memif::App`), so the generator and sink can stand where a DPDK or VPP
//! application would, on a pollswitch `nic` with `x-memif`.
//!
//! ```text
//!  memif:socket=PATH[,role=client|server][,id=N][,secret=S][,ring=1024][,buffer=2048]
//!  client (default): connects to the NIC's socket; server: listens for a client NIC
//! ```

use std::path::PathBuf;
use std::time::Duration;

use backends::memif::{App, MemifConfig, Role};

use crate::engine::{Engine, Port, Spec, MAX_BURST};
use crate::error::{PerfError, Result};
use crate::frame;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "memif",
    about: "a memif application (role=client connects to a nic's x-memif socket; role=server \
            listens)",
    keys: &["socket", "role", "id", "secret", "ring", "buffer"],
    open,
};

/// How long opening waits for the other side.
const CONNECT: Duration = Duration::from_secs(10);

/// One memif interface.
pub struct MemifPort {
    app: App,
    spec: String,
}

fn number<T: std::str::FromStr>(spec: &Spec, key: &str, default: T) -> Result<T> {
    match spec.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| PerfError::Usage(format!("{spec}: {key}={v}: not a number"))),
    }
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let role = match spec.get("role") {
        None | Some("client") => Role::Client,
        Some("server") => Role::Server,
        Some(r) => {
            return Err(PerfError::Usage(format!(
                "{spec}: role={r}: client or server"
            )))
        }
    };
    let ring: u32 = number(spec, "ring", 1024)?;
    if !ring.is_power_of_two() || ring < 2 {
        return Err(PerfError::Usage(format!(
            "{spec}: ring={ring}: a power of two"
        )));
    }
    let secret = match spec.get("secret") {
        None => None,
        Some(s) => Some(
            backends::memif::wire::secret_field(s)
                .ok_or_else(|| PerfError::Usage(format!("{spec}: secret: at most 24 bytes")))?,
        ),
    };
    let cfg = MemifConfig {
        socket: PathBuf::from(spec.require("socket")?),
        role,
        id: number(spec, "id", 0)?,
        secret,
        log2_ring: ring.trailing_zeros() as u8,
        buffer_size: number(spec, "buffer", 2048)?,
        name: "pollswitch-perf".into(),
        zero_copy: None,
    };
    let app = App::open(cfg, CONNECT).map_err(|e| PerfError::Usage(format!("{spec}: {e}")))?;
    Ok(Box::new(MemifPort {
        app,
        spec: spec.to_string(),
    }))
}

impl Port for MemifPort {
    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        self.app.send(frames)
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        let now = frame::now_ns();
        self.app.recv_with(MAX_BURST, |f| tally.record(f, now))
    }

    fn describe(&self) -> String {
        self.spec.clone()
    }
}
