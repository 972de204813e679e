//! Per-port counters: packets and bytes each way, and drops by reason.
//!
//! Each port's counters are written by the one worker that owns the port and read by
//! anyone at any time without stopping traffic. A single writer means an add is a relaxed
//! load and store, with no locked instruction on the packet path.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Why a frame was dropped. The order is the order of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// The port's link is down (frames to or from it).
    LinkDown,
    /// Longer than the switch's maximum frame size.
    Oversize,
    /// Shorter than an Ethernet header.
    Undersize,
    /// The backend could not take the frame (kernel or ring full).
    TxFull,
    /// The port is connected to nothing that accepts frames.
    NoDest,
    /// The ring to another worker was full.
    RingFull,
    /// The pool had no free buffer.
    NoBuffer,
    /// A stream length prefix was 0 or over the maximum frame size.
    BadLength,
    /// A virtio-net header announced an offload the switch does not do.
    Offload,
    /// The receive filter of a NIC-like port rejected the frame.
    Filtered,
    /// A connection-oriented port had no connection.
    NotConnected,
    /// The kernel reported an error for the operation.
    IoError,
    /// A VLAN rule refused it: tagged with a VLAN the port does not carry, untagged on
    /// a port without a native VLAN (or no buffer for its retagged copy).
    Vlan,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 13] = [
        DropReason::LinkDown,
        DropReason::Oversize,
        DropReason::Undersize,
        DropReason::TxFull,
        DropReason::NoDest,
        DropReason::RingFull,
        DropReason::NoBuffer,
        DropReason::BadLength,
        DropReason::Offload,
        DropReason::Filtered,
        DropReason::NotConnected,
        DropReason::IoError,
        DropReason::Vlan,
    ];

    /// The reason's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::LinkDown => "link-down",
            DropReason::Oversize => "oversize",
            DropReason::Undersize => "undersize",
            DropReason::TxFull => "tx-full",
            DropReason::NoDest => "no-dest",
            DropReason::RingFull => "ring-full",
            DropReason::NoBuffer => "no-buffer",
            DropReason::BadLength => "bad-length",
            DropReason::Offload => "offload",
            DropReason::Filtered => "filtered",
            DropReason::NotConnected => "not-connected",
            DropReason::IoError => "io-error",
            DropReason::Vlan => "vlan",
        }
    }
}

const NREASONS: usize = DropReason::ALL.len();

/// Live counters of one port.
#[derive(Debug, Default)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; NREASONS],
    /// Offloads done for destinations that take none (see [`crate::wire::gso`]).
    gso_cut: AtomicU64,
    gso_segments: AtomicU64,
    csum_finished: AtomicU64,
    gro_batches: AtomicU64,
    gro_segments: AtomicU64,
    /// The backend has lost its peer (a vde_switch gone, a stream without connection):
    /// "no carrier", the reverse so that the default is up.
    no_carrier: AtomicBool,
    /// Sampled time frames spent in the switch before being sent to this port.
    latency: Latency,
}

/// Largest latency recorded (longer ones are counted at this value).
const LATENCY_MAX_NS: u64 = 10_000_000_000;

/// A histogram of nanoseconds, written by the owning worker and read by anyone: the
/// worker only tries the lock (a sample is skipped while a reader holds it), so a
/// reader never stalls the packet path.
#[derive(Debug)]
struct Latency(Mutex<Histogram<u64>>);

/// An empty latency histogram: 1 ns .. 10 s, two significant digits (1 % resolution).
pub fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, 2)
        .unwrap_or_else(|_| Histogram::new(2).expect("a histogram with default bounds"))
}

impl Default for Latency {
    fn default() -> Latency {
        Latency(Mutex::new(empty_histogram()))
    }
}

impl LatencySummary {
    /// Of a histogram.
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Percentiles of a port's sampled latency, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th.
    pub p99: u64,
    /// 99.9th.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

#[inline]
fn bump(c: &AtomicU64, n: u64) {
    // Relaxed load and store: only the owning worker writes (module rule); readers
    // tolerate a value that is a few packets old.
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl PortCounters {
    /// Counts one received frame of `bytes` bytes.
    #[inline]
    pub fn rx(&self, bytes: usize) {
        bump(&self.rx_packets, 1);
        bump(&self.rx_bytes, bytes as u64);
    }
    /// Counts `n` received frames of `bytes` bytes in all (a burst at once).
    #[inline]
    pub fn rx_many(&self, n: u64, bytes: u64) {
        bump(&self.rx_packets, n);
        bump(&self.rx_bytes, bytes);
    }
    /// Counts `n` transmitted frames of `bytes` bytes in all.
    #[inline]
    pub fn tx(&self, n: u64, bytes: u64) {
        bump(&self.tx_packets, n);
        bump(&self.tx_bytes, bytes);
    }
    /// Counts `n` dropped frames.
    #[inline]
    pub fn count_drop(&self, why: DropReason, n: u64) {
        bump(&self.drops[why as usize], n);
    }
    /// Counts one GSO super-frame received here and cut into `segments` frames.
    #[inline]
    pub fn gso_cut(&self, segments: u64) {
        bump(&self.gso_cut, 1);
        bump(&self.gso_segments, segments);
    }
    /// Counts a partial checksum of a frame received here, finished by the switch.
    #[inline]
    pub fn csum_finished(&self) {
        bump(&self.csum_finished, 1);
    }
    /// Counts one receive that brought `segments` frames (UDP GRO).
    #[inline]
    pub fn gro(&self, segments: u64) {
        bump(&self.gro_batches, 1);
        bump(&self.gro_segments, segments);
    }
    /// Records one sampled time in the switch, for frames sent to this port (only the
    /// owning worker calls it; skipped while a reader holds the histogram).
    #[inline]
    pub fn record_latency(&self, ns: u64) {
        if let Ok(mut h) = self.latency.0.try_lock() {
            let _ = h.record(ns.clamp(1, LATENCY_MAX_NS));
        }
    }

    /// The sampled latency so far.
    pub fn latency(&self) -> LatencySummary {
        let mut h = empty_histogram();
        self.latency_into(&mut h);
        LatencySummary::of(&h)
    }

    /// Adds this port's samples into `h` (the queues of one netdev together).
    pub fn latency_into(&self, h: &mut Histogram<u64>) {
        let mine = match self.latency.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let _ = h.add(&*mine);
    }

    /// Says whether the backend has its peer (carrier); only the owning worker calls it.
    #[inline]
    pub fn set_carrier(&self, up: bool) {
        self.no_carrier.store(!up, Ordering::Relaxed);
    }
    /// A copy of the current values.
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            rx_packets: r(&self.rx_packets),
            rx_bytes: r(&self.rx_bytes),
            tx_packets: r(&self.tx_packets),
            tx_bytes: r(&self.tx_bytes),
            drops: std::array::from_fn(|i| r(&self.drops[i])),
            gso_cut: r(&self.gso_cut),
            gso_segments: r(&self.gso_segments),
            csum_finished: r(&self.csum_finished),
            gro_batches: r(&self.gro_batches),
            gro_segments: r(&self.gro_segments),
            carrier: !self.no_carrier.load(Ordering::Relaxed),
        }
    }
}

/// Counter values at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Frames received from the backend.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames handed to the backend for sending.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [u64; NREASONS],
    /// GSO super-frames received here that the switch cut for a destination without
    /// offloads.
    pub gso_cut: u64,
    /// The frames they were cut into.
    pub gso_segments: u64,
    /// Partial checksums of frames received here that the switch finished.
    pub csum_finished: u64,
    /// Receives that brought several frames at once (UDP GRO batches).
    pub gro_batches: u64,
    /// The frames they brought.
    pub gro_segments: u64,
    /// Whether the backend has its peer (every queue, for several).
    pub carrier: bool,
}

impl Default for CounterSnapshot {
    fn default() -> CounterSnapshot {
        CounterSnapshot {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: [0; NREASONS],
            gso_cut: 0,
            gso_segments: 0,
            csum_finished: 0,
            gro_batches: 0,
            gro_segments: 0,
            carrier: true,
        }
    }
}

impl CounterSnapshot {
    /// Drops for one reason.
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.drops[why as usize]
    }
    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
    /// Adds another snapshot (queues of one netdev).
    pub fn add(&mut self, o: &CounterSnapshot) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
        self.gso_cut += o.gso_cut;
        self.gso_segments += o.gso_segments;
        self.csum_finished += o.csum_finished;
        self.gro_batches += o.gro_batches;
        self.gro_segments += o.gro_segments;
        self.carrier &= o.carrier;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_snapshots() {
        let c = PortCounters::default();
        c.rx(60);
        c.rx(1514);
        c.tx(2, 120);
        c.count_drop(DropReason::Oversize, 3);
        let s = c.snapshot();
        assert_eq!((s.rx_packets, s.rx_bytes), (2, 1574));
        assert_eq!((s.tx_packets, s.tx_bytes), (2, 120));
        assert_eq!(s.dropped(DropReason::Oversize), 3);
        assert_eq!(s.total_drops(), 3);
        assert!(s.carrier, "up until a backend says otherwise");
        c.set_carrier(false);
        let mut sum = CounterSnapshot::default();
        sum.add(&c.snapshot());
        assert!(
            !sum.carrier,
            "one queue without its peer takes the sum down"
        );
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, d) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*d as usize, i);
        }
    }
}
