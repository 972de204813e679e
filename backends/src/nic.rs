//! The `nic` netdev: a NIC-like port with a MAC address and a receive filter, peered
//! with another netdev. Its far side is a local application (attached over memif in a
//! later step); with nothing attached it counts what it would have delivered.
//!
//! ```text
//!  peer ──frames──► filter (promiscuous / unicast / multicast / broadcast / vlan)
//!                     ├─ accepted: delivered to the application (tx counters)
//!                     └─ rejected: dropped, counted as `filtered`
//!  control thread ──inject (announce-self RARP)──► out towards the peer (rx counters)
//! ```
//!
//! The control thread keeps the authoritative filter (query-rx-filter reads it) and hands
//! each new version to the port through a one-slot lock-free queue.

use std::sync::{Arc, OnceLock};

use crossbeam_queue::ArrayQueue;
use switch::wire::ethernet::{is_group, Frame, BROADCAST};
use switch::wire::Mac;
use switch::{Backend, DropReason, Io, Pkt};

/// QAPI's RxState: how a class of addresses is filtered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// By the table (and, for unicast, the main MAC).
    Normal,
    /// Nothing of the class passes.
    None,
    /// Everything of the class passes.
    All,
}

impl RxState {
    /// The QAPI name.
    pub fn as_str(self) -> &'static str {
        match self {
            RxState::Normal => "normal",
            RxState::None => "none",
            RxState::All => "all",
        }
    }

    /// Parses the QAPI name.
    pub fn from_name(s: &str) -> Option<RxState> {
        match s {
            "normal" => Some(RxState::Normal),
            "none" => Some(RxState::None),
            "all" => Some(RxState::All),
            _ => None,
        }
    }
}

/// The receive filter of a NIC-like port (the members of QAPI's RxFilterInfo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    /// Everything passes.
    pub promiscuous: bool,
    /// Multicast filtering.
    pub multicast: RxState,
    /// Unicast filtering.
    pub unicast: RxState,
    /// VLAN filtering.
    pub vlan: RxState,
    /// Broadcast frames pass.
    pub broadcast_allowed: bool,
    /// The multicast table overflowed: all multicast passes.
    pub multicast_overflow: bool,
    /// The unicast table overflowed: all unicast passes.
    pub unicast_overflow: bool,
    /// The NIC's own address.
    pub main_mac: Mac,
    /// VLAN ids accepted when `vlan` is normal.
    pub vlan_table: Vec<u16>,
    /// Extra unicast addresses accepted.
    pub unicast_table: Vec<Mac>,
    /// Multicast addresses accepted.
    pub multicast_table: Vec<Mac>,
}

impl RxFilter {
    /// The state of a freshly reset virtio-net device: promiscuous, everything else at
    /// its normal setting, all VLANs.
    pub fn new(mac: Mac) -> RxFilter {
        RxFilter {
            promiscuous: true,
            multicast: RxState::Normal,
            unicast: RxState::Normal,
            vlan: RxState::All,
            broadcast_allowed: true,
            multicast_overflow: false,
            unicast_overflow: false,
            main_mac: mac,
            vlan_table: Vec::new(),
            unicast_table: Vec::new(),
            multicast_table: Vec::new(),
        }
    }

    /// Whether the NIC accepts this frame (virtio-net's receive filter rules).
    pub fn accepts(&self, frame: &[u8]) -> bool {
        if self.promiscuous {
            return true;
        }
        let Some(f) = Frame::new_checked(frame) else {
            return false;
        };
        if let Some(vid) = f.vlan_id() {
            match self.vlan {
                RxState::All => {}
                RxState::None => return false,
                RxState::Normal if self.vlan_table.contains(&vid) => {}
                RxState::Normal => return false,
            }
        }
        let dst = f.dst();
        if dst == BROADCAST {
            return self.broadcast_allowed;
        }
        if is_group(&dst) {
            return match self.multicast {
                RxState::None => false,
                RxState::All => true,
                RxState::Normal => self.multicast_overflow || self.multicast_table.contains(&dst),
            };
        }
        match self.unicast {
            RxState::None => false,
            RxState::All => true,
            RxState::Normal => {
                self.unicast_overflow || dst == self.main_mac || self.unicast_table.contains(&dst)
            }
        }
    }
}

/// The control thread's side of a NIC port.
#[derive(Clone)]
pub struct NicHandle {
    inject: Arc<ArrayQueue<Vec<u8>>>,
    filter: Arc<ArrayQueue<RxFilter>>,
    waker: Arc<OnceLock<switch::backend::Waker>>,
}

impl NicHandle {
    /// Sends a frame out of the NIC towards its peer (as if its application sent it);
    /// false when the queue is full.
    pub fn inject(&self, frame: Vec<u8>) -> bool {
        let ok = self.inject.push(frame).is_ok();
        self.wake();
        ok
    }

    /// Installs a new filter (replacing one not yet picked up).
    pub fn set_filter(&self, f: RxFilter) {
        self.filter.force_push(f);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }
}

/// Frames queued by the control thread for sending out of a NIC.
const INJECT_DEPTH: usize = 256;

/// The worker's side of a NIC port.
pub struct NicPort {
    filter: RxFilter,
    h: NicHandle,
}

/// Makes a NIC port with the reset filter for `mac`.
pub fn nic(mac: Mac) -> (NicPort, NicHandle) {
    let h = NicHandle {
        inject: Arc::new(ArrayQueue::new(INJECT_DEPTH)),
        filter: Arc::new(ArrayQueue::new(1)),
        waker: Arc::new(OnceLock::new()),
    };
    (
        NicPort {
            filter: RxFilter::new(mac),
            h: h.clone(),
        },
        h,
    )
}

impl Backend for NicPort {
    fn kind(&self) -> &'static str {
        "nic"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        let _ = self.h.waker.set(io.waker());
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if let Some(f) = self.h.filter.pop() {
            self.filter = f;
        }
        let mut n = 0;
        while n < max {
            let Some(f) = self.h.inject.pop() else { break };
            if let Some(p) = io.receive_copy(&f) {
                out.push(p);
                n += 1;
            }
        }
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let n = pkts.len();
        let (mut ok, mut bytes) = (0u64, 0u64);
        let pool = io.pool();
        for p in pkts.drain(..) {
            let data = pool.bytes(&p);
            if self.filter.accepts(data) {
                ok += 1;
                bytes += data.len() as u64;
            } else {
                io.counters.count_drop(DropReason::Filtered, 1);
            }
            io.free(p);
        }
        io.counters.tx(ok, bytes);
        n
    }

    fn stop(&mut self, _io: &mut Io<'_>) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Mac = [0x52, 0x54, 0, 0, 0, 1];

    fn frame(dst: Mac, vlan: Option<u16>) -> Vec<u8> {
        let mut f = dst.to_vec();
        f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&v.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn promiscuous_takes_everything() {
        let f = RxFilter::new(ME);
        assert!(f.accepts(&frame([2, 0, 0, 0, 0, 5], None)));
    }

    #[test]
    fn normal_unicast_multicast_broadcast_and_vlan() {
        let mut f = RxFilter::new(ME);
        f.promiscuous = false;
        let other = [2, 0, 0, 0, 0, 5];
        let group = [1, 0, 0x5e, 0, 0, 1];
        assert!(f.accepts(&frame(ME, None)));
        assert!(!f.accepts(&frame(other, None)));
        f.unicast_table.push(other);
        assert!(f.accepts(&frame(other, None)));
        assert!(!f.accepts(&frame(group, None)));
        f.multicast_table.push(group);
        assert!(f.accepts(&frame(group, None)));
        f.multicast = RxState::None;
        assert!(!f.accepts(&frame(group, None)));
        assert!(f.accepts(&frame(BROADCAST, None)));
        f.broadcast_allowed = false;
        assert!(!f.accepts(&frame(BROADCAST, None)));
        f.vlan = RxState::Normal;
        assert!(!f.accepts(&frame(ME, Some(7))));
        f.vlan_table.push(7);
        assert!(f.accepts(&frame(ME, Some(7))));
        f.unicast = RxState::None;
        assert!(!f.accepts(&frame(ME, None)));
        assert!(!f.accepts(&[0u8; 10]));
    }
}
