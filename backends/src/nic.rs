//! The `nic` netdev: a NIC-like port with a MAC address and a receive filter, peered
//! with another netdev. Its far side is a local application attached over memif
//! ([`crate::memif`]); a NIC without memif counts what it would have delivered.
//!
//! ```text
//!  peer ──frames──► filter (promiscuous / unicast / multicast / broadcast / vlan)
//!                     ├─ accepted: copied into the application's memif ring (tx counters)
//!                     └─ rejected: dropped, counted as `filtered`
//!  application ──memif ring──► copied into pool buffers, out towards the peer (rx)
//!  control thread ──inject (announce-self RARP)──► out towards the peer (rx counters)
//! ```
//!
//! With memif and no application attached, the carrier is down and frames for the
//! application are dropped as `not-connected`.
//!
//! The control thread keeps the authoritative filter (query-rx-filter reads it) and hands
//! each new version to the port through a one-slot lock-free queue.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use switch::pool::HEADROOM;
use switch::wire::ethernet::{is_group, Frame, BROADCAST};
use switch::wire::Mac;
use switch::{Backend, DropReason, Io, Pkt};

use crate::memif::queue::{Push, Taken};
use crate::memif::zc::{ZcRx, ZcTx};
use crate::memif::{Conn, Link, MemifConfig, Registration};

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
    memif: Option<Arc<Link>>,
    /// The address the port saw its far side send from (vhost-user guests), as
    /// `u64` with bit 63 set once known.
    learned: Arc<AtomicU64>,
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

    /// The address the far side sends from, once the port has seen a frame from it
    /// (a vhost-user guest's MAC).
    pub fn learned_mac(&self) -> Option<Mac> {
        // Relaxed: a lone value, read for reports.
        let v = self.learned.load(Ordering::Relaxed);
        (v & LEARNED != 0).then(|| {
            let b = v.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// Records the far side's address.
    pub(crate) fn learn(&self, mac: Mac) {
        let mut b = [0u8; 8];
        b[2..].copy_from_slice(&mac);
        self.learned
            .store(u64::from_be_bytes(b) | LEARNED, Ordering::Relaxed);
    }

    /// Makes `w` the waker of whatever injects and filters go to.
    pub(crate) fn set_waker(&self, w: switch::backend::Waker) {
        let _ = self.waker.set(w);
    }

    /// A handle whose injected frames and filters a port other than [`NicPort`]
    /// picks up (a vhost-user port).
    pub(crate) fn detached() -> NicHandle {
        NicHandle {
            inject: Arc::new(ArrayQueue::new(INJECT_DEPTH)),
            filter: Arc::new(ArrayQueue::new(1)),
            waker: Arc::new(OnceLock::new()),
            memif: None,
            learned: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Moves up to `max` injected frames into `out` as received frames.
    pub(crate) fn take_injected(&self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            // `is_empty` first: an empty `pop` fences (SeqCst), `is_empty` only loads,
            // and this queue is empty on almost every call.
            if self.inject.is_empty() {
                break;
            }
            let Some(f) = self.inject.pop() else { break };
            if let Some(p) = io.receive_copy(&f) {
                out.push(p);
                n += 1;
            }
        }
        n
    }

    /// The memif link's state and counters, for a memif NIC.
    pub fn memif(&self) -> Option<crate::memif::LinkInfo> {
        self.memif.as_ref().map(|l| l.info())
    }
}

/// Bit 63 of [`NicHandle::learned`]: an address is there.
const LEARNED: u64 = 1 << 63;

/// Frames queued by the control thread for sending out of a NIC.
const INJECT_DEPTH: usize = 256;

/// The longest a worker with a connected memif NIC sleeps: DPDK and VPP publish a ring
/// index and then read the interrupt flag without a fence between, so a signal can be
/// lost in the instant the worker arms it; this bounds what that loss costs.
const MEMIF_SLEEP_LIMIT: Duration = Duration::from_millis(1);

/// The worker's side of a NIC port.
pub struct NicPort {
    filter: RxFilter,
    h: NicHandle,
    memif: Option<MemifSide>,
}

struct MemifSide {
    link: Arc<Link>,
    conn: Option<Conn>,
    /// Zero copy: the connection's rings with the pool buffers lent on them.
    zc: Option<(ZcRx, ZcTx)>,
    /// Buffers a zero-copy connection may hold (both rings full), reserved.
    zc_held: usize,
    /// Sent frames on their way back to the pool (kept to reuse its allocation).
    done: Vec<Pkt>,
    _reg: Registration,
}

/// Makes a NIC port with the reset filter for `mac`.
pub fn nic(mac: Mac) -> (NicPort, NicHandle) {
    let h = NicHandle::detached();
    (
        NicPort {
            filter: RxFilter::new(mac),
            h: h.clone(),
            memif: None,
        },
        h,
    )
}

/// Makes a NIC port whose application attaches over memif as `cfg` says: a server
/// NIC's socket listens when this returns, a client NIC starts connecting.
pub fn nic_memif(mac: Mac, cfg: MemifConfig) -> Result<(NicPort, NicHandle), crate::Error> {
    let zc_held = match cfg.zero_copy {
        Some(_) => 2usize << cfg.log2_ring,
        None => 0,
    };
    let link = Link::new();
    let reg = crate::memif::register(cfg, link.clone())?;
    let (mut port, mut h) = nic(mac);
    h.memif = Some(link.clone());
    port.h.memif = Some(link.clone());
    port.memif = Some(MemifSide {
        link,
        conn: None,
        zc: None,
        zc_held,
        done: Vec::with_capacity(switch::backend::BURST),
        _reg: reg,
    });
    Ok((port, h))
}

impl MemifSide {
    /// Picks up a new connection, lets go of an ended one; the carrier follows.
    fn refresh(&mut self, io: &mut Io<'_>) {
        if self.conn.as_ref().is_some_and(|c| !c.life.alive()) {
            self.drop_conn(io);
            io.counters.set_carrier(false);
        }
        if let Some(mut c) = self.link.take() {
            self.drop_conn(io);
            if let Some((rx, tx)) = c.zc.take() {
                let mut zrx = ZcRx::new(rx);
                zrx.refill(io);
                self.zc = Some((zrx, ZcTx::new(tx)));
            }
            self.conn = Some(c);
            io.counters.set_carrier(true);
        }
    }

    /// Lets go of the connection, taking back every pool buffer lent on it.
    fn drop_conn(&mut self, io: &mut Io<'_>) {
        if let Some((mut rx, mut tx)) = self.zc.take() {
            rx.drain(io);
            tx.drain(io);
        }
        self.conn = None;
    }

    fn fail(&mut self, io: &mut Io<'_>, why: String) {
        if let Some(c) = &self.conn {
            tracing::warn!("memif peer {} broke the protocol: {why}", c.peer);
            c.fail(why);
        }
        self.drop_conn(io);
        io.counters.set_carrier(false);
    }

    fn signal(&mut self) {
        if let Some(f) = self.conn.as_mut().and_then(|c| c.tx_irq.first_mut()) {
            let _ = f.write(&1u64.to_ne_bytes());
        }
    }

    fn rx(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        if let Some((zrx, _)) = &mut self.zc {
            return match zrx.receive(io, out, max) {
                Ok(n) => n,
                Err(f) => {
                    self.fail(io, f.0);
                    0
                }
            };
        }
        let Some(c) = &mut self.conn else { return 0 };
        let pool = io.pool();
        let room = pool.max_frame();
        let mut n = 0;
        let mut bytes = 0u64;
        let mut fault = None;
        for q in &mut c.rx {
            q.disarm();
            match q.begin() {
                Ok(0) => continue,
                Ok(_) => {}
                Err(f) => {
                    fault = Some(f.0);
                    break;
                }
            }
            q.prefetch(&c.regions, (max - n).min(usize::from(u16::MAX)) as u16);
            while n < max {
                let Some(mut p) = io.alloc() else {
                    io.counters.count_drop(DropReason::NoBuffer, 1);
                    break;
                };
                let Some(buf) = pool.buf_mut(&mut p) else {
                    io.free(p);
                    break;
                };
                let Some(dst) = buf.get_mut(HEADROOM..HEADROOM + room) else {
                    io.free(p);
                    break;
                };
                match q.next_frame(&c.regions, dst) {
                    Ok(Some(Taken::Frame(len))) if len >= switch::pool::MIN_FRAME => {
                        p.set_span(HEADROOM, len);
                        bytes += len as u64;
                        out.push(p);
                        n += 1;
                    }
                    Ok(Some(Taken::Frame(_))) => io.drop_one(p, DropReason::Undersize),
                    Ok(Some(Taken::TooLong)) => io.drop_one(p, DropReason::Oversize),
                    Ok(Some(Taken::BadDesc)) => io.drop_one(p, DropReason::BadLength),
                    Ok(None) => {
                        io.free(p);
                        break;
                    }
                    Err(f) => {
                        io.free(p);
                        fault = Some(f.0);
                        break;
                    }
                }
            }
            q.finish();
            if fault.is_some() || n >= max {
                break;
            }
        }
        io.counters.rx_many(n as u64, bytes);
        if let Some(why) = fault {
            self.fail(io, why);
        }
        n
    }

    fn tx(&mut self, io: &mut Io<'_>, filter: &RxFilter, pkts: &mut Vec<Pkt>) {
        if let Some((_, ztx)) = &mut self.zc {
            match ztx.send(io, pkts, |f| filter.promiscuous || filter.accepts(f)) {
                Ok(true) => self.signal(),
                Ok(false) => {}
                Err(f) => {
                    io.drop_all(pkts, DropReason::NotConnected);
                    self.fail(io, f.0);
                }
            }
            return;
        }
        let Some(c) = &mut self.conn else {
            io.drop_all(pkts, DropReason::NotConnected);
            return;
        };
        let Some(q) = c.tx.first_mut() else {
            io.drop_all(pkts, DropReason::NotConnected);
            return;
        };
        if let Err(f) = q.begin() {
            io.drop_all(pkts, DropReason::NotConnected);
            return self.fail(io, f.0);
        }
        q.prefetch(&c.regions, pkts.len().min(usize::from(u16::MAX)) as u16);
        let pool = io.pool();
        let (mut ok, mut bytes) = (0u64, 0u64);
        let mut bad = None;
        let mut sent = 0;
        for p in pkts.iter() {
            let data = pool.bytes(p);
            if !filter.promiscuous && !filter.accepts(data) {
                io.counters.count_drop(DropReason::Filtered, 1);
                sent += 1;
                continue;
            }
            match q.push(&c.regions, data) {
                Push::Sent => {
                    ok += 1;
                    bytes += data.len() as u64;
                    sent += 1;
                }
                Push::Full => break,
                Push::BadBuffer => {
                    bad = Some("posted a buffer outside its region".to_string());
                    break;
                }
            }
        }
        if ok > 0 && q.commit() {
            // The peer sleeps on its eventfd: one signal per batch.
            if let Some(f) = c.tx_irq.first_mut() {
                let _ = f.write(&1u64.to_ne_bytes());
            }
        }
        io.counters.tx(ok, bytes);
        self.done.extend(pkts.drain(..sent));
        io.free_all(&mut self.done);
        if let Some(why) = bad {
            io.drop_all(pkts, DropReason::NotConnected);
            self.fail(io, why);
        }
    }
}

impl Backend for NicPort {
    fn kind(&self) -> &'static str {
        "nic"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        let _ = self.h.waker.set(io.waker());
        if let Some(m) = &mut self.memif {
            m.link.set_waker(io.waker());
            io.counters.set_carrier(false);
            m.refresh(io);
        }
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        // `is_empty` first: an empty `pop` fences (SeqCst), `is_empty` only loads, and
        // these queues are empty on almost every call.
        if !self.h.filter.is_empty() {
            if let Some(f) = self.h.filter.pop() {
                self.filter = f;
            }
        }
        let mut n = self.h.take_injected(io, out, max);
        if let Some(m) = &mut self.memif {
            m.refresh(io);
            n += m.rx(io, out, max - n);
        }
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let n = pkts.len();
        if let Some(m) = &mut self.memif {
            m.tx(io, &self.filter, pkts);
            // What the ring had no room for stays with the caller (counted tx-full).
            return n - pkts.len();
        }
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

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        if let Some(m) = &mut self.memif {
            m.drop_conn(io);
        }
        true
    }

    fn idle(&mut self) -> bool {
        if let Some((zrx, _)) = self.memif.as_mut().and_then(|m| m.zc.as_mut()) {
            return !zrx.arm();
        }
        let Some(c) = self.memif.as_mut().and_then(|m| m.conn.as_mut()) else {
            return true;
        };
        // Arm every ring (no short cut): the peer must signal whichever it fills.
        let mut quiet = true;
        for q in &mut c.rx {
            quiet &= !q.arm();
        }
        quiet
    }

    fn max_held(&self, _pool: &switch::Pool) -> usize {
        self.memif.as_ref().map_or(0, |m| m.zc_held)
    }

    fn sleep_limit(&self) -> Option<Duration> {
        self.memif
            .as_ref()
            .and_then(|m| m.conn.as_ref())
            .map(|_| MEMIF_SLEEP_LIMIT)
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
