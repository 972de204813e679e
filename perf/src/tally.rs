//! Receive-side accounting: which frames arrived, in what order, and how late.
//!
//! One [`Tally`] per receiving endpoint. Each frame is classified once, in constant time
//! on the common path:
//!
//! ```text
//!  not ours (EtherType, magic)     -> foreign
//!  warm-up bit set                 -> warmup (not counted further)
//!  not the length sent             -> bad_length (cut or padded on the way: not received)
//!  sent by this very port          -> echoed (a hub must never send a frame back)
//!  seq >= next expected            -> received, latency recorded; a gap is not yet loss
//!  seq <  next, not seen in window -> received and reordered (it came late)
//!  seq <  next, seen in window     -> duplicate
//! ```
//!
//! Loss is worked out at the end from what the generator sent: sent minus received.
//! The window of [`WINDOW`] sequence numbers behind the newest bounds duplicate detection.

use hdrhistogram::Histogram;

use crate::frame::{Frame, WARMUP_BIT};

/// Sequence numbers behind the newest whose arrival is remembered, per stream.
pub const WINDOW: u64 = 4096;
/// Streams a tally tracks; frames claiming a higher stream id are counted as foreign.
pub const MAX_STREAMS: usize = 4096;
/// Highest latency the histogram holds (60 s); later frames are recorded as this.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// What happened to one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    InOrder,
    Late,
    Duplicate,
}

/// Per-stream state: the next sequence number expected and a bitmap of the last
/// [`WINDOW`] numbers, indexed by `seq % WINDOW`.
#[derive(Debug, Clone)]
struct Seen {
    first: u64,
    next: u64,
    received: u64,
    bits: Vec<u64>,
}

impl Seen {
    fn new(first: u64) -> Seen {
        Seen {
            first,
            next: first,
            received: 0,
            bits: vec![0; (WINDOW / 64) as usize],
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            // Forget the numbers the window slides past (a gap's numbers among them,
            // so that their late arrival reads as late, not as duplicate).
            if seq - self.next >= WINDOW {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.next..seq {
                    let (w, m) = Self::bit(s);
                    self.bits[w] &= !m;
                }
            }
            let (w, m) = Self::bit(seq);
            self.bits[w] |= m;
            self.next = seq + 1;
            self.received += 1;
            return Arrival::InOrder;
        }
        if self.next - seq > WINDOW {
            self.received += 1;
            return Arrival::Late;
        }
        let (w, m) = Self::bit(seq);
        if self.bits[w] & m != 0 {
            Arrival::Duplicate
        } else {
            self.bits[w] |= m;
            self.received += 1;
            Arrival::Late
        }
    }
}

/// Counters and the latency histogram of one receiving endpoint.
#[derive(Debug, Clone)]
pub struct Tally {
    /// One-way latency of every counted frame, nanoseconds.
    pub hist: Histogram<u64>,
    streams: Vec<Option<Seen>>,
    /// Our frames counted (each sequence number once).
    pub received: u64,
    /// Bytes of the counted frames.
    pub bytes: u64,
    /// Counted frames that arrived after a higher sequence number of their stream.
    pub reordered: u64,
    /// Frames whose sequence number had already arrived.
    pub duplicates: u64,
    /// Frames that are not ours (another EtherType, a host's own traffic).
    pub foreign: u64,
    /// Our frames sent during warm-up.
    pub warmup: u64,
    /// Our frames that came back to the port that sent them.
    pub echoed: u64,
    /// Our frames whose length was not the length sent (truncated or padded).
    pub bad_length: u64,
    /// The stream this endpoint itself sends, if any.
    own_stream: Option<u32>,
    /// The length every frame was sent with, when known.
    expect_len: Option<usize>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new(None)
    }
}

impl Tally {
    /// An empty tally for an endpoint that itself sends stream `own_stream`.
    pub fn new(own_stream: Option<u32>) -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("constant histogram bounds are valid"),
            streams: Vec::new(),
            received: 0,
            bytes: 0,
            reordered: 0,
            duplicates: 0,
            foreign: 0,
            warmup: 0,
            echoed: 0,
            bad_length: 0,
            own_stream,
            expect_len: None,
        }
    }

    /// Counts frames of any other length as `bad_length` instead of received.
    pub fn expect_len(mut self, len: usize) -> Tally {
        self.expect_len = Some(len);
        self
    }

    /// Accounts for one received frame, `now_ns` being when it was read.
    #[inline]
    pub fn record(&mut self, frame: &[u8], now_ns: u64) {
        let Some(f) = Frame::new_checked(frame) else {
            self.foreign += 1;
            return;
        };
        let stream = f.stream();
        if stream & WARMUP_BIT != 0 {
            self.warmup += 1;
            return;
        }
        if Some(stream) == self.own_stream {
            self.echoed += 1;
            return;
        }
        if self.expect_len.is_some_and(|l| l != f.len()) {
            self.bad_length += 1;
            return;
        }
        let idx = stream as usize;
        if idx >= MAX_STREAMS {
            self.foreign += 1;
            return;
        }
        if idx >= self.streams.len() {
            self.streams.resize(idx + 1, None);
        }
        let seq = f.seq();
        let seen = self.streams[idx].get_or_insert_with(|| Seen::new(seq));
        match seen.observe(seq) {
            Arrival::Duplicate => {
                self.duplicates += 1;
                return;
            }
            Arrival::Late => self.reordered += 1,
            Arrival::InOrder => {}
        }
        self.received += 1;
        self.bytes += f.len() as u64;
        let ns = now_ns.saturating_sub(f.stamp_ns()).clamp(1, MAX_LATENCY_NS);
        self.hist.saturating_record(ns);
    }

    /// Frames of `stream` counted here.
    pub fn received_from(&self, stream: u32) -> u64 {
        self.streams
            .get(stream as usize)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.received)
    }

    /// Highest sequence number seen of `stream` plus one (0 when none arrived).
    pub fn next_of(&self, stream: u32) -> u64 {
        self.streams
            .get(stream as usize)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.next)
    }

    /// Sequence numbers from the first seen of `stream` to the highest: what a sink that
    /// does not know the sender's count takes as sent (a frame older than the first one
    /// seen counts as late, and is not in the span).
    pub fn span_of(&self, stream: u32) -> u64 {
        self.streams
            .get(stream as usize)
            .and_then(|s| s.as_ref())
            .map_or(0, |s| s.next.saturating_sub(s.first))
    }

    /// Stream ids that sent at least one counted frame.
    pub fn streams(&self) -> Vec<u32> {
        (0..self.streams.len() as u32)
            .filter(|&s| self.streams[s as usize].is_some())
            .collect()
    }

    /// Adds `other`'s counters and histogram into this one (per-stream state is not
    /// merged: merge only for the totals).
    pub fn absorb(&mut self, other: &Tally) {
        self.received += other.received;
        self.bytes += other.bytes;
        self.reordered += other.reordered;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        self.warmup += other.warmup;
        self.echoed += other.echoed;
        self.bad_length += other.bad_length;
        // Same bounds on both sides: adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{emit, mac, Frame, BROADCAST};

    fn frame(stream: u32, seq: u64, stamp: u64) -> Vec<u8> {
        let mut b = emit(64, BROADCAST, stream);
        let mut f = Frame::new_unchecked(&mut b[..]);
        f.set_seq(seq);
        f.set_stamp_ns(stamp);
        b
    }

    #[test]
    fn in_order_stream_counts_and_measures() {
        let mut t = Tally::new(None);
        for seq in 0..100 {
            t.record(&frame(3, seq, 1_000), 1_000 + 5_000);
        }
        assert_eq!(t.received, 100);
        assert_eq!(t.bytes, 6400);
        assert_eq!((t.reordered, t.duplicates, t.foreign), (0, 0, 0));
        assert_eq!(t.received_from(3), 100);
        assert_eq!(t.next_of(3), 100);
        assert_eq!(t.span_of(3), 100);
        assert_eq!(t.span_of(4), 0);
        assert_eq!(t.hist.len(), 100);
        let p50 = t.hist.value_at_quantile(0.5);
        assert!((4_990..=5_010).contains(&p50), "{p50}");
    }

    #[test]
    fn gap_then_late_arrival_is_reordered_not_lost() {
        let mut t = Tally::new(None);
        for seq in [0, 1, 3, 4, 2] {
            t.record(&frame(0, seq, 0), 10);
        }
        assert_eq!(t.received, 5);
        assert_eq!(t.reordered, 1);
        assert_eq!(t.duplicates, 0);
    }

    #[test]
    fn a_sink_that_starts_late_counts_from_the_first_frame_it_sees() {
        let mut t = Tally::new(None);
        for seq in [1000, 1001, 1003] {
            t.record(&frame(0, seq, 0), 1);
        }
        assert_eq!((t.span_of(0), t.received), (4, 3));
    }

    #[test]
    fn duplicates_inside_the_window_are_caught() {
        let mut t = Tally::new(None);
        for seq in [0, 1, 1, 2, 0] {
            t.record(&frame(0, seq, 0), 10);
        }
        assert_eq!(t.received, 3);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.reordered, 0);
    }

    #[test]
    fn window_boundaries() {
        let mut t = Tally::new(None);
        t.record(&frame(0, 0, 0), 1);
        // A jump of exactly the window clears every bit; the old number is then
        // beyond the window and counts as late, not as a duplicate.
        t.record(&frame(0, WINDOW + 1, 0), 1);
        t.record(&frame(0, 0, 0), 1);
        assert_eq!((t.received, t.reordered, t.duplicates), (3, 1, 0));
        // Exactly WINDOW behind the newest is still remembered.
        let mut u = Tally::new(None);
        for seq in 0..=WINDOW {
            u.record(&frame(0, seq, 0), 1);
        }
        u.record(&frame(0, 1, 0), 1);
        assert_eq!(u.duplicates, 1);
        // Wrap-around of the bitmap: a number one window later is a new frame.
        let mut w = Tally::new(None);
        w.record(&frame(0, 5, 0), 1);
        w.record(&frame(0, 5 + WINDOW, 0), 1);
        assert_eq!((w.received, w.duplicates), (2, 0));
    }

    #[test]
    fn foreign_warmup_and_echo_are_set_aside() {
        let mut t = Tally::new(Some(2));
        t.record(&[0u8; 60], 1);
        t.record(&frame(1 | WARMUP_BIT, 0, 0), 1);
        t.record(&frame(2, 0, 0), 1);
        t.record(&frame(MAX_STREAMS as u32, 0, 0), 1);
        t.record(&frame(1, 0, 0), 1);
        assert_eq!((t.foreign, t.warmup, t.echoed, t.received), (2, 1, 1, 1));
        assert_eq!(t.streams(), vec![1]);
        let mut cut = Tally::new(None).expect_len(128);
        cut.record(&frame(1, 0, 0), 1);
        assert_eq!((cut.bad_length, cut.received), (1, 0));
        assert_eq!(mac(1)[5], 1);
    }

    #[test]
    fn absorb_adds_counters_and_histograms() {
        let mut a = Tally::new(None);
        let mut b = Tally::new(None);
        a.record(&frame(0, 0, 0), 1_000);
        b.record(&frame(1, 0, 0), 3_000);
        b.record(&frame(1, 0, 0), 3_000);
        a.absorb(&b);
        assert_eq!((a.received, a.duplicates, a.hist.len()), (2, 1, 2));
    }
}
