//! The `x-null` netdev (a pollswitch extension): an in-memory source and sink, so the
//! switch core can be measured without any kernel or peer in the path (DPDK's
//! `net_null` is the model).
//!
//! ```text
//!  mode=source|both: rx_burst makes frames in pool buffers (size bytes, a sequence
//!                    number at byte 14), as fast as the worker polls or at `rate`
//!  mode=sink|both:   tx_burst counts and frees what it is given
//!  stall=on:         the sink keeps what it is given, up to STALL_HOLD frames, and
//!                    takes nothing more (a peer that stopped reading its ring): the
//!                    switch drops and counts at this port; the frames come back when
//!                    the port is deleted
//! ```
//!
//! A source port keeps its worker polling (it always has frames to give), so it is for
//! benchmarks, not for an idle host.

use std::time::Instant;

use switch::pool::HEADROOM;
use switch::{Backend, Io, Pkt, Pool};

/// Frames a stalled sink keeps before it refuses more.
pub const STALL_HOLD: usize = 256;

/// What the port does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullMode {
    /// Makes frames; frames sent to it are freed.
    Source,
    /// Takes frames.
    Sink,
    /// Both.
    Both,
}

impl NullMode {
    /// Parses the member's value.
    pub fn from_name(s: &str) -> Option<NullMode> {
        match s {
            "source" => Some(NullMode::Source),
            "sink" => Some(NullMode::Sink),
            "both" => Some(NullMode::Both),
            _ => None,
        }
    }
    fn makes(self) -> bool {
        self != NullMode::Sink
    }
}

/// Settings of an `x-null` port.
#[derive(Debug, Clone)]
pub struct NullConfig {
    /// Source, sink or both.
    pub mode: NullMode,
    /// Frame size in bytes (14 ..= the maximum frame).
    pub size: usize,
    /// Frames per second a source makes; 0: as many as the worker can.
    pub rate: u64,
    /// Frames a source makes in all; 0: no limit.
    pub count: u64,
    /// Whether the sink stops taking frames.
    pub stall: bool,
    /// Busy-poll time.
    pub poll_us: Option<u32>,
    /// The frames' source address (default: one of the port's own).
    pub src: Option<switch::wire::Mac>,
    /// The frames' destination address (default 02:00:00:00:00:02).
    pub dst: Option<switch::wire::Mac>,
    /// Address pairs a source cycles through (frame k: `src + k % flows`, `dst +
    /// k % flows`, counted in the addresses' last three bytes); 1: one pair.
    pub flows: u32,
}

/// An `x-null` port.
pub struct NullPort {
    cfg: NullConfig,
    template: Vec<u8>,
    seq: u64,
    /// Frames a rate-limited source may make now (token bucket, at most a burst).
    tokens: f64,
    last: Option<Instant>,
    held: Vec<Pkt>,
}

impl NullPort {
    /// Makes the port; `id` goes into the frames' source address so that the frames of
    /// two sources differ.
    pub fn new(cfg: NullConfig, id: u32) -> NullPort {
        let mut t = vec![0u8; cfg.size.max(14)];
        t[..6].copy_from_slice(&cfg.dst.unwrap_or([0x02, 0, 0, 0, 0, 0x02]));
        t[6..8].copy_from_slice(&[0x02, 0]);
        t[8..12].copy_from_slice(&id.to_be_bytes());
        if let Some(src) = cfg.src {
            t[6..12].copy_from_slice(&src);
        }
        // IEEE 802 local experimental ethertype.
        t[12..14].copy_from_slice(&[0x88, 0xb5]);
        NullPort {
            cfg,
            template: t,
            seq: 0,
            tokens: 0.0,
            last: None,
            held: Vec::new(),
        }
    }

    fn allowed(&mut self, now: Instant, max: usize) -> usize {
        let mut n = max;
        if self.cfg.count > 0 {
            n = n.min(self.cfg.count.saturating_sub(self.seq) as usize);
        }
        if self.cfg.rate > 0 {
            let dt = self
                .last
                .map_or(0.0, |l| now.duration_since(l).as_secs_f64());
            self.last = Some(now);
            self.tokens = (self.tokens + dt * self.cfg.rate as f64).min(max as f64);
            n = n.min(self.tokens as usize);
        }
        n
    }
}

/// `out` = address `base` with `k` added to its last three bytes (wrapping there).
fn add_low24(out: &mut [u8], base: &[u8], k: u32) {
    let low = u32::from_be_bytes([0, base[3], base[4], base[5]]).wrapping_add(k);
    out[3..6].copy_from_slice(&low.to_be_bytes()[1..]);
}

impl Backend for NullPort {
    fn kind(&self) -> &'static str {
        "x-null"
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if !self.cfg.mode.makes() {
            return 0;
        }
        let want = self.allowed(io.now, max);
        let len = self.template.len();
        let pool = io.pool();
        let mut n = 0;
        while n < want {
            let Some(mut p) = io.alloc() else {
                io.counters.count_drop(switch::DropReason::NoBuffer, 1);
                break;
            };
            let Some(buf) = pool.buf_mut(&mut p) else {
                io.free(p);
                break;
            };
            let f = &mut buf[HEADROOM..HEADROOM + len];
            f.copy_from_slice(&self.template);
            if len >= 22 {
                f[14..22].copy_from_slice(&self.seq.to_be_bytes());
            }
            if self.cfg.flows > 1 {
                let k = (self.seq % u64::from(self.cfg.flows)) as u32;
                add_low24(&mut f[..6], &self.template[..6], k);
                add_low24(&mut f[6..12], &self.template[6..12], k);
            }
            p.set_span(HEADROOM, len);
            self.seq += 1;
            io.counters.rx(len);
            out.push(p);
            n += 1;
        }
        self.tokens -= n as f64;
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let pool = io.pool();
        if self.cfg.stall {
            let take = pkts.len().min(STALL_HOLD - self.held.len());
            self.held.extend(pkts.drain(..take));
            return take;
        }
        let n = pkts.len();
        let bytes: u64 = pkts.iter().map(|p| pool.bytes(p).len() as u64).sum();
        io.free_all(pkts);
        io.counters.tx(n as u64, bytes);
        n
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        io.free_all(&mut self.held);
        true
    }

    fn max_held(&self, _pool: &Pool) -> usize {
        if self.cfg.stall {
            STALL_HOLD
        } else {
            0
        }
    }

    fn poll_us(&self) -> Option<u32> {
        if self.cfg.mode.makes() {
            // Always has frames to give: never let the worker sleep.
            Some(u32::MAX)
        } else {
            self.cfg.poll_us
        }
    }
}

#[cfg(test)]
mod tests {
    use super::add_low24;

    #[test]
    fn flows_count_in_the_last_three_bytes_and_wrap_there() {
        let mut out = [0u8; 6];
        add_low24(&mut out, &[2, 0, 0, 1, 0, 0xff], 1);
        assert_eq!(out[3..], [1, 1, 0]);
        add_low24(&mut out, &[2, 0, 0, 0xff, 0xff, 0xff], 2);
        assert_eq!(out[3..], [0, 0, 1], "wraps within 24 bits");
    }
}
