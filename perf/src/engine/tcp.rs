//! TCP stream engine: QEMU's `-netdev socket,listen=` / `connect=` (and `stream`)
//! framing, a 4-byte big-endian length and then the frame, back to back.
//!
//! ```text
//!  out: [len|frame][len|frame]... ─write─► switch      (pending bytes kept in `out`)
//!  in:  ◄─read─ [len|frame][len|fr ... ]               (partial frame kept in `inbuf`)
//! ```
//!
//! `connect=ADDR` connects to a switch that listens; `listen=ADDR` binds at open and
//! accepts the switch's connection in [`Port::connect`]. A stream never drops, so the
//! generator's rate is what the switch lets through (the kernel's flow control); frames
//! handed to `tx_burst` are committed to the stream and counted as sent.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::engine::{Engine, Port, Spec, RX_FRAME_MAX};
use crate::error::{PerfError, Result};
use crate::frame;
use crate::tally::Tally;

/// Registry entry.
pub const ENGINE: Engine = Engine {
    name: "tcp",
    about: "TCP stream, 4-byte big-endian length then the frame (QEMU socket,listen=/connect=)",
    keys: &["connect", "listen"],
    open,
};

/// Bytes of unsent stream above which `tx_burst` takes nothing new.
const OUT_HIGH_WATER: usize = 256 << 10;
/// Size of the receive buffer: many frames per read.
const IN_BUF: usize = 512 << 10;
/// Length prefix.
const PREFIX: usize = 4;

enum State {
    Listening(TcpListener),
    ToConnect(SocketAddr),
    Connected(TcpStream),
    /// The stream broke (closed, reset, or a length no frame can have).
    Broken(String),
}

/// One TCP connection to a switch port.
pub struct TcpPort {
    state: State,
    out: Vec<u8>,
    out_start: usize,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    errors: u64,
    last_error: Option<String>,
    spec: String,
}

fn open(spec: &Spec) -> Result<Box<dyn Port>> {
    let parse = |key: &str, v: &str| -> Result<SocketAddr> {
        v.parse()
            .map_err(|e| PerfError::Usage(format!("{spec}: {key}={v}: {e}")))
    };
    let state = match (spec.get("connect"), spec.get("listen")) {
        (Some(c), None) => State::ToConnect(parse("connect", c)?),
        (None, Some(l)) => {
            let addr = parse("listen", l)?;
            let listener = TcpListener::bind(addr).map_err(|source| PerfError::Socket {
                what: format!("{spec}: listen {addr}"),
                source,
            })?;
            State::Listening(listener)
        }
        _ => {
            return Err(PerfError::Usage(format!(
                "{spec}: give exactly one of connect= and listen="
            )))
        }
    };
    Ok(Box::new(TcpPort {
        state,
        out: Vec::with_capacity(OUT_HIGH_WATER * 2),
        out_start: 0,
        inbuf: vec![0; IN_BUF],
        in_start: 0,
        in_end: 0,
        errors: 0,
        last_error: None,
        spec: spec.to_string(),
    }))
}

impl TcpPort {
    fn broken(&mut self, why: String) {
        self.errors += 1;
        self.last_error = Some(why.clone());
        self.state = State::Broken(why);
    }

    /// Writes pending bytes until the kernel would block.
    fn push(&mut self) {
        let State::Connected(s) = &mut self.state else {
            return;
        };
        while self.out_start < self.out.len() {
            match s.write(&self.out[self.out_start..]) {
                Ok(0) => {
                    self.broken("connection closed".into());
                    return;
                }
                Ok(n) => self.out_start += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.broken(e.to_string());
                    return;
                }
            }
        }
        if self.out_start == self.out.len() {
            self.out.clear();
            self.out_start = 0;
        } else if self.out_start > OUT_HIGH_WATER {
            self.out.drain(..self.out_start);
            self.out_start = 0;
        }
    }
}

impl Port for TcpPort {
    fn connect(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            let attempt = match &self.state {
                State::Connected(_) => return Ok(()),
                State::Broken(why) => {
                    return Err(PerfError::Timeout(format!("{}: {why}", self.spec)))
                }
                State::Listening(l) => {
                    l.set_nonblocking(true).ok();
                    l.accept().map(|(s, _)| s)
                }
                State::ToConnect(addr) => {
                    TcpStream::connect_timeout(addr, Duration::from_millis(200))
                }
            };
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(PerfError::Timeout(format!(
                        "{}: no connection in {timeout:?} ({e})",
                        self.spec
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        };
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .map_err(|source| PerfError::Socket {
                what: format!("{}: nonblocking", self.spec),
                source,
            })?;
        self.state = State::Connected(stream);
        Ok(())
    }

    fn tx_burst(&mut self, frames: &[Vec<u8>]) -> usize {
        if !matches!(self.state, State::Connected(_)) {
            return 0;
        }
        self.push();
        if self.out.len() - self.out_start > OUT_HIGH_WATER {
            return 0;
        }
        for f in frames {
            self.out.extend_from_slice(&(f.len() as u32).to_be_bytes());
            self.out.extend_from_slice(f);
        }
        self.push();
        frames.len()
    }

    fn rx_burst(&mut self, tally: &mut Tally) -> usize {
        let State::Connected(s) = &mut self.state else {
            return 0;
        };
        if self.in_end == self.inbuf.len() {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        match s.read(&mut self.inbuf[self.in_end..]) {
            Ok(0) => {
                self.broken("connection closed by the switch".into());
                return 0;
            }
            Ok(n) => self.in_end += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return 0
            }
            Err(e) => {
                self.broken(e.to_string());
                return 0;
            }
        }
        let now = frame::now_ns();
        let mut got = 0;
        while self.in_end - self.in_start >= PREFIX {
            let p = self.in_start;
            let len = u32::from_be_bytes([
                self.inbuf[p],
                self.inbuf[p + 1],
                self.inbuf[p + 2],
                self.inbuf[p + 3],
            ]) as usize;
            if len > RX_FRAME_MAX.max(IN_BUF / 2) {
                self.broken(format!("frame length {len} in the stream: framing lost"));
                return got;
            }
            if self.in_end - p < PREFIX + len {
                break;
            }
            tally.record(&self.inbuf[p + PREFIX..p + PREFIX + len], now);
            self.in_start = p + PREFIX + len;
            got += 1;
        }
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
        got
    }

    fn flush(&mut self) -> bool {
        self.push();
        self.out_start == self.out.len() || matches!(self.state, State::Broken(_))
    }

    fn tx_errors(&self) -> (u64, Option<String>) {
        (self.errors, self.last_error.clone())
    }

    fn describe(&self) -> String {
        self.spec.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::open as open_spec;
    use crate::frame::{emit, Frame, BROADCAST};

    #[test]
    fn frames_cross_a_stream_whole_and_in_order() {
        // A free port, and the listener on it: another test may take a port between
        // our probe and the engine's bind, so a taken one is tried again.
        let (port, mut a) = (0..20)
            .find_map(|_| {
                let port = {
                    let l = TcpListener::bind("127.0.0.1:0").unwrap();
                    l.local_addr().unwrap().port()
                };
                open_spec(&format!("tcp:listen=127.0.0.1:{port}"))
                    .ok()
                    .map(|a| (port, a))
            })
            .expect("a free TCP port within 20 tries");
        let mut b = open_spec(&format!("tcp:connect=127.0.0.1:{port}")).unwrap();
        let t = thread::spawn(move || {
            b.connect(Duration::from_secs(5)).unwrap();
            b
        });
        a.connect(Duration::from_secs(5)).unwrap();
        let mut b = t.join().unwrap();
        // Sizes that straddle reads: 64 .. 9000.
        let mut frames = Vec::new();
        for (seq, size) in [64usize, 9000, 1518, 64, 9000, 512]
            .iter()
            .cycle()
            .take(300)
            .enumerate()
        {
            let mut f = emit(*size, BROADCAST, 4);
            Frame::new_unchecked(&mut f[..]).set_seq(seq as u64);
            frames.push(f);
        }
        let mut sent = 0;
        let mut tally = Tally::new(None);
        let deadline = Instant::now() + Duration::from_secs(5);
        while tally.received < 300 && Instant::now() < deadline {
            if sent < 300 {
                sent += a.tx_burst(&frames[sent..(sent + 7).min(300)]);
            }
            a.flush();
            b.rx_burst(&mut tally);
        }
        assert_eq!(tally.received, 300);
        assert_eq!(
            (tally.reordered, tally.duplicates, tally.foreign),
            (0, 0, 0)
        );
        assert_eq!(a.tx_errors().0, 0);
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.tx_errors().0 == 0 && Instant::now() < deadline {
            b.rx_burst(&mut tally);
        }
        assert!(b.tx_errors().1.unwrap().contains("closed"));
    }

    #[test]
    fn spec_needs_one_direction() {
        assert!(open_spec("tcp:").is_err());
        assert!(open_spec("tcp:connect=127.0.0.1:1,listen=127.0.0.1:2").is_err());
    }
}
