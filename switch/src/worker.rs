//! A worker: one pinned thread that owns some port queues and busy-polls them.
//!
//! ```text
//!  loop {                                   one breath
//!    uring.poll(); completions → backend.complete()
//!    commands (add/remove port, new topology) applied between breaths
//!    for each port: rx_burst → forward: dests from the Topology;
//!          local dest → its pending batch;  remote dest → ring to that worker
//!    inbound rings from other workers → pending batches
//!    for each port with pending frames: tx_burst (leftovers: tx-full drops)
//!    housekeeping every HOUSEKEEPING_EVERY
//!    idle longer than every port's poll-us → sleep in io_uring until a completion,
//!          a command or a frame from another worker wakes us (eventfd)
//!  }
//! ```
//!
//! Shared nothing: only this thread calls its backends. Other threads reach it through
//! its command queue, its inbound rings, and its eventfd.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use crate::backend::{Backend, Io, IoParts, BURST};
use crate::counters::{DropReason, PortCounters};
use crate::pool::{BufCache, Pkt, Pool};
use crate::ring::{Consumer, Producer};
use crate::topology::{DestGroup, PortId, Topology};
use crate::uring::{untoken, Completion, Uring, UringStats, WORKER_SLOT};
use crate::vlan::{Form, VlanPort};
use crate::wake::Bell;

/// How often timed work runs while awake.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(5);
/// One breath in this many that received frames measures their time in the switch.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;
/// Longest sleep: even an idle worker wakes this often for timed work.
pub const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Largest ring between two workers; the switch sizes them to the pool (see
/// [`crate::switch::ring_size`]).
pub const XRING_MAX: usize = 4096;

const OP_WAKE: u8 = 1;

/// A frame travelling to a port owned by another worker.
pub type Hop = (PortId, Pkt);

/// Requests from the control thread. Each carries its reply channel.
pub enum Cmd {
    /// Install a port queue.
    AddPort {
        /// Its id.
        id: PortId,
        /// The backend.
        backend: Box<dyn Backend>,
        /// Its counters (shared with the control thread for reading).
        counters: Arc<PortCounters>,
        /// Busy-poll time for this port in microseconds.
        poll_us: u32,
        /// Answered once the backend started.
        reply: Sender<()>,
    },
    /// Remove a port queue; the reply carries the backend back once nothing of it is in
    /// flight, to be dropped (closing its files) on the control thread.
    RemovePort {
        /// Its id.
        id: PortId,
        /// Where the backend goes.
        reply: Sender<Box<dyn Backend>>,
    },
    /// Forward by a new table from now on.
    Topology {
        /// The table.
        topo: Arc<Topology>,
        /// Answered once the worker uses it.
        reply: Sender<()>,
    },
    /// Start (`Some`) or stop capturing a port queue's frames.
    SetCapture {
        /// The queue.
        id: PortId,
        /// Where its frames go.
        sink: Option<Arc<crate::capture::Sink>>,
        /// Answered once the worker uses it.
        reply: Sender<()>,
    },
    /// Stop the worker thread (after every port has been removed).
    Exit,
}

/// What other threads see of a worker.
#[derive(Debug)]
pub struct WorkerShared {
    /// Index of the worker.
    pub id: u16,
    /// The core it is pinned to, if any.
    pub core: Option<usize>,
    /// Its doorbell: every producer wakes it through this (see [`crate::wake`]).
    pub bell: Arc<Bell>,
    /// Nanoseconds spent doing work.
    pub busy_ns: AtomicU64,
    /// Nanoseconds spent asleep in the kernel.
    pub idle_ns: AtomicU64,
    /// Frames that arrived for a port that had been removed meanwhile.
    pub gone_drops: AtomicU64,
    /// What went wrong in its io_uring.
    pub uring: UringStats,
}

impl WorkerShared {
    pub(crate) fn new(id: u16, core: Option<usize>) -> std::io::Result<WorkerShared> {
        Ok(WorkerShared {
            id,
            core,
            bell: Arc::new(Bell::new()?),
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            gone_drops: AtomicU64::new(0),
            uring: UringStats::default(),
        })
    }
}

struct Slot {
    id: PortId,
    backend: Box<dyn Backend>,
    counters: Arc<PortCounters>,
    poll: Duration,
    last_rx: Instant,
    pending: Vec<Pkt>,
    stopping: Option<Sender<Box<dyn Backend>>>,
    /// A capture of this queue's frames, if one runs.
    capture: Option<Arc<crate::capture::Sink>>,
    /// In a sampled breath: when the frames now pending for this queue were received.
    sampled: Option<Instant>,
}

/// What every backend call borrows: pool, buffer cache, io_uring, doorbell.
struct Engine {
    // First field: the ring is dropped (closed) before the memory its requests use.
    uring: Uring,
    pool: Arc<Pool>,
    cache: BufCache,
    shared: Arc<WorkerShared>,
}

impl Engine {
    #[inline]
    fn parts(&mut self) -> IoParts<'_> {
        IoParts {
            pool: &self.pool,
            cache: &mut self.cache,
            uring: &mut self.uring,
            stats: &self.shared.uring,
            bell: &self.shared.bell,
        }
    }
}

/// The worker's state, owned by its thread.
pub struct Worker {
    // First field: the ring is closed before `wake_buf`, which its armed read writes.
    eng: Engine,
    peers: Vec<Arc<WorkerShared>>,
    cmds: Receiver<Cmd>,
    topo: Arc<Topology>,
    slots: Vec<Option<Slot>>,
    /// Port id → slot index (u32::MAX when not here).
    slot_of: Vec<u32>,
    inbound: Vec<Consumer<Hop>>,
    outbound: Vec<Option<Producer<Hop>>>,
    /// Frames for each other worker, gathered during one burst and pushed at once.
    outq: Vec<Vec<Hop>>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    completions: Vec<Completion>,
    rx: Vec<Pkt>,
    /// Wire frames made from offload frames (see [`crate::offload`]).
    cut: Vec<Pkt>,
    hops: Vec<Hop>,
    last_housekeeping: Instant,
    /// Breaths that received frames (for sampling latency).
    breaths_with_rx: u64,
}

/// Everything a worker needs to start, made by the switch before spawning.
pub(crate) struct WorkerSetup {
    pub shared: Arc<WorkerShared>,
    pub peers: Vec<Arc<WorkerShared>>,
    pub pool: Arc<Pool>,
    pub cmds: Receiver<Cmd>,
    pub inbound: Vec<Consumer<Hop>>,
    pub outbound: Vec<Option<Producer<Hop>>>,
}

/// What a worker reports when it has started.
pub(crate) struct Started {
    pub deferred: bool,
}

impl Worker {
    /// Runs on the worker thread: pins, builds the ring, reports, then breathes until
    /// told to exit.
    pub(crate) fn run(setup: WorkerSetup, started: Sender<std::io::Result<Started>>) {
        if let Some(core) = setup.shared.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let uring = match Uring::new() {
            Ok(u) => u,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let _ = started.send(Ok(Started {
            deferred: uring.deferred(),
        }));
        let npeers = setup.peers.len();
        let mut w = Worker {
            eng: Engine {
                uring,
                cache: setup.pool.cache(),
                pool: setup.pool,
                shared: setup.shared,
            },
            peers: setup.peers,
            cmds: setup.cmds,
            topo: Arc::new(Topology::default()),
            slots: Vec::new(),
            slot_of: Vec::new(),
            inbound: setup.inbound,
            outbound: setup.outbound,
            outq: (0..npeers).map(|_| Vec::with_capacity(BURST)).collect(),
            wake_buf: Box::new(0),
            wake_armed: false,
            completions: Vec::with_capacity(1024),
            rx: Vec::with_capacity(BURST),
            cut: Vec::new(),
            hops: Vec::with_capacity(BURST * 4),
            last_housekeeping: Instant::now(),
            breaths_with_rx: 0,
        };
        w.breathe_forever();
        // Frames other workers left for us after the last topology change.
        w.drain_inbound_after_exit();
        w.retire_wake_read();
        w.eng.cache.flush();
    }

    /// Completes our own eventfd read before the ring closes, so the kernel never
    /// writes into `wake_buf` after it is freed.
    fn retire_wake_read(&mut self) {
        for _ in 0..100 {
            if !self.wake_armed {
                return;
            }
            self.eng.shared.bell.ring();
            self.eng
                .uring
                .wait(Duration::from_millis(10), &self.eng.shared.uring);
            self.completions.clear();
            self.eng
                .uring
                .reap(&mut self.completions, &self.eng.shared.uring);
            if self
                .completions
                .iter()
                .any(|c| untoken(c.token) == (WORKER_SLOT, OP_WAKE, 0))
            {
                self.wake_armed = false;
            }
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let e = opcode::Read::new(
            types::Fd(self.eng.shared.bell.fd().as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(crate::uring::token(WORKER_SLOT, OP_WAKE, 0));
        // SAFETY: `wake_buf` is boxed (stable address) and owned by the worker, which
        // outlives the ring's requests: the ring is dropped (closed) before it, and the
        // read is retired before the worker ends.
        self.wake_armed = unsafe { self.eng.uring.push(&e, &self.eng.shared.uring) };
    }

    fn breathe_forever(&mut self) {
        let mut awake_since = Instant::now();
        loop {
            let now = Instant::now();
            self.arm_wake();
            self.eng.uring.poll(&self.eng.shared.uring);
            self.dispatch_completions(now);
            // Cleared before polling: a kick from now on is seen on the way to sleep.
            self.eng.shared.bell.flags().take_kick();
            match self.commands(now) {
                Ok(()) => {}
                Err(()) => return,
            }
            let mut work = self.rx_all(now);
            if work > 0 {
                self.breaths_with_rx = self.breaths_with_rx.wrapping_add(1);
                if self.breaths_with_rx.is_multiple_of(LATENCY_SAMPLE_EVERY) {
                    // What is pending now was received in this breath (`now`).
                    for s in self.slots.iter_mut().flatten() {
                        if !s.pending.is_empty() {
                            s.sampled = Some(now);
                        }
                    }
                }
            }
            work += self.drain_inbound();
            self.tx_all(now);
            if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
                self.housekeeping(now);
            }
            if now.duration_since(awake_since) >= MAX_SLEEP {
                // A worker that never sleeps still reports its busy time.
                self.account_busy(awake_since, now);
                awake_since = now;
            }
            if work > 0 {
                continue;
            }
            if self.may_sleep(now) {
                self.account_busy(awake_since, now);
                self.sleep();
                awake_since = Instant::now();
            }
        }
    }

    fn account_busy(&self, since: Instant, now: Instant) {
        let ns = now.duration_since(since).as_nanos() as u64;
        self.eng.shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn may_sleep(&self, now: Instant) -> bool {
        self.slots
            .iter()
            .flatten()
            .all(|s| now.duration_since(s.last_rx) >= s.poll && s.stopping.is_none())
    }

    fn sleep(&mut self) {
        // The read may have completed in this very breath; without it armed, a wake-up
        // would go unnoticed until the sleep times out.
        self.arm_wake();
        let shared = self.eng.shared.clone();
        let flags = shared.bell.flags();
        let inbound = &self.inbound;
        let slots = &mut self.slots;
        let limit = slots
            .iter()
            .flatten()
            .filter_map(|s| s.backend.sleep_limit())
            .fold(MAX_SLEEP, Duration::min);
        // Every source is re-checked after `sleeping` is raised (crate::wake): inbound
        // rings and ports that must arm their peer's signal here, waker-fed ports and
        // commands through the kick flag.
        if flags.prepare_sleep(|| {
            inbound.iter().all(Consumer::is_empty)
                && slots.iter_mut().flatten().all(|s| s.backend.idle())
        }) {
            let t0 = Instant::now();
            self.eng.uring.wait(limit, &shared.uring);
            let slept = t0.elapsed();
            shared
                .idle_ns
                .fetch_add(slept.as_nanos() as u64, Ordering::Relaxed);
        }
        flags.woke();
    }

    fn dispatch_completions(&mut self, now: Instant) {
        self.completions.clear();
        self.eng
            .uring
            .reap(&mut self.completions, &self.eng.shared.uring);
        for i in 0..self.completions.len() {
            let c = self.completions[i];
            let (slot, op, tag) = untoken(c.token);
            if slot == WORKER_SLOT {
                if op == OP_WAKE {
                    self.wake_armed = false;
                }
                continue;
            }
            if let Some(Some(s)) = self.slots.get_mut(slot as usize) {
                let mut io = Io::new(self.eng.parts(), &s.counters, slot, now);
                s.backend.complete(&mut io, op, tag, c.res, c.flags);
            }
        }
    }

    fn commands(&mut self, now: Instant) -> Result<(), ()> {
        loop {
            match self.cmds.try_recv() {
                Ok(Cmd::AddPort {
                    id,
                    backend,
                    counters,
                    poll_us,
                    reply,
                }) => {
                    let idx = match self.slots.iter().position(Option::is_none) {
                        Some(i) => i,
                        None => {
                            self.slots.push(None);
                            self.slots.len() - 1
                        }
                    };
                    let poll =
                        Duration::from_micros(u64::from(backend.poll_us().unwrap_or(poll_us)));
                    let mut slot = Slot {
                        id,
                        backend,
                        counters,
                        poll,
                        last_rx: now,
                        pending: Vec::with_capacity(BURST * 2),
                        stopping: None,
                        capture: None,
                        sampled: None,
                    };
                    {
                        let mut io = Io::new(self.eng.parts(), &slot.counters, idx as u32, now);
                        slot.backend.start(&mut io);
                    }
                    self.slots[idx] = Some(slot);
                    if self.slot_of.len() <= id as usize {
                        self.slot_of.resize(id as usize + 1, u32::MAX);
                    }
                    self.slot_of[id as usize] = idx as u32;
                    let _ = reply.send(());
                }
                Ok(Cmd::SetCapture { id, sink, reply }) => {
                    if let Some(&idx) = self.slot_of.get(id as usize) {
                        if let Some(Some(s)) = self.slots.get_mut(idx as usize) {
                            s.capture = sink;
                        }
                    }
                    let _ = reply.send(());
                }
                Ok(Cmd::RemovePort { id, reply }) => {
                    if let Some(&idx) = self.slot_of.get(id as usize) {
                        if let Some(Some(s)) = self.slots.get_mut(idx as usize) {
                            self.eng.cache.free_all(&mut s.pending);
                            s.stopping = Some(reply);
                            self.slot_of[id as usize] = u32::MAX;
                        }
                    }
                    self.progress_stops(now);
                }
                Ok(Cmd::Topology { topo, reply }) => {
                    self.topo = topo;
                    let _ = reply.send(());
                }
                Ok(Cmd::Exit) | Err(TryRecvError::Disconnected) => return Err(()),
                Err(TryRecvError::Empty) => return Ok(()),
            }
        }
    }

    fn progress_stops(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            let done = match &mut self.slots[idx] {
                Some(s) if s.stopping.is_some() => {
                    let mut io = Io::new(self.eng.parts(), &s.counters, idx as u32, now);
                    s.backend.stop(&mut io)
                }
                _ => false,
            };
            if done {
                if let Some(s) = self.slots[idx].take() {
                    if let Some(reply) = s.stopping {
                        let _ = reply.send(s.backend);
                    }
                }
            }
        }
    }

    fn rx_all(&mut self, now: Instant) -> usize {
        let mut total = 0;
        for idx in 0..self.slots.len() {
            let Some(s) = &mut self.slots[idx] else {
                continue;
            };
            if s.stopping.is_some() {
                continue;
            }
            self.rx.clear();
            let n = {
                let mut io = Io::new(self.eng.parts(), &s.counters, idx as u32, now);
                s.backend.rx_burst(&mut io, &mut self.rx, BURST)
            };
            if n == 0 {
                continue;
            }
            s.last_rx = now;
            total += n;
            if let Some(c) = s.capture.as_ref().filter(|c| c.direction().rx()) {
                for p in &self.rx {
                    c.capture(self.eng.pool.bytes(p), true);
                }
            }
            let src = s.id;
            self.forward(src, idx, now);
        }
        total
    }

    /// Sends the frames in `self.rx`, received on port `src` (slot `src_idx`), to their
    /// destinations: local ones onto their pending batches, remote ones gathered per
    /// worker and pushed with one ring publish (and at most one wake-up) per worker.
    fn forward(&mut self, src: PortId, src_idx: usize, now: Instant) {
        let Worker {
            eng,
            topo,
            slots,
            slot_of,
            outbound,
            outq,
            peers,
            rx,
            cut,
            ..
        } = self;
        let topo: &Topology = topo;
        let me = eng.shared.id;
        // Drops at the source, counted once per burst on its counters at the end.
        let (mut no_dest, mut ring_full) = (0u64, 0u64);
        let entry = match topo.get(src) {
            Some(e) if e.link_up && !e.dests.is_empty() => e,
            other => {
                let why = match other {
                    Some(e) if !e.link_up => DropReason::LinkDown,
                    _ => DropReason::NoDest,
                };
                if let Some(Some(s)) = slots.get(src_idx) {
                    s.counters.count_drop(why, rx.len() as u64);
                }
                eng.cache.free_all(rx);
                return;
            }
        };
        let ndest = entry.dests.len() as u32;
        // Offload frames for destinations that take none: cut (or finished) once. Up
        // front for the whole burst when no destination takes them or on a VLAN-aware
        // hub (whose tag changes would move the header); else per frame below.
        let src_counters = if entry.plain > 0 && rx.iter().any(Pkt::offload) {
            slots
                .get(src_idx)
                .and_then(Option::as_ref)
                .map(|s| s.counters.clone())
        } else {
            None
        };
        if let Some(c) = src_counters.as_deref() {
            if entry.plain == ndest || entry.vlans.is_some() {
                for p in rx.drain(..) {
                    if p.offload() {
                        crate::offload::into_wire_frames(&eng.pool, &mut eng.cache, p, cut, c);
                    } else {
                        cut.push(p);
                    }
                }
                std::mem::swap(rx, cut);
            }
        }
        // A flow hash only when some destination has several queues to choose from.
        let spread = entry.dests.iter().any(|g| g.queues.len() > 1);
        if let ([g], false, None, None) = (&entry.dests[..], spread, &entry.learn, &entry.vlans) {
            // One destination queue (a port and its peer, a two-port hub): the whole
            // burst goes as one, decided once.
            let q = g.queues[0];
            if q.worker == me {
                deliver_burst(
                    &mut eng.cache,
                    topo,
                    slots,
                    slot_of,
                    q.port,
                    rx,
                    &eng.shared,
                );
                return;
            }
        }
        let stamp = entry.learn.as_ref().map(|l| l.fdb.stamp(now));
        let pool = &eng.pool;
        let mut fwd = Fwd {
            pool,
            cache: &mut eng.cache,
            shared: &eng.shared,
            topo,
            slots,
            slot_of,
            outq,
            no_dest: 0,
            vlan: 0,
        };
        if let Some(l) = entry.learn.as_ref().filter(|l| l.fdb.prefetches()) {
            // A large table: the whole burst's slots are fetched at once.
            for p in rx.iter() {
                let f = pool.bytes(p);
                let (Some(dst), Some(src)) = (f.first_chunk::<6>(), f.get(6..12)) else {
                    continue;
                };
                let vid = match &entry.vlans {
                    Some(v) => v.me.ingress(f).map_or(0, |x| x.0),
                    None => 0,
                };
                l.fdb.prefetch(dst, vid);
                if let Ok(src) = src.try_into() {
                    l.fdb.prefetch(src, vid);
                }
            }
        }
        for pkt in rx.drain(..) {
            let f = pool.bytes(&pkt);
            let hash = if spread { frame_hash(f) } else { 0 };
            // On a VLAN-aware hub: the frame's VLAN, and the form it came in.
            let (vid, form) = match &entry.vlans {
                None => (0, Form::Untagged),
                Some(v) => match v.me.ingress(f) {
                    Some(x) => x,
                    None => {
                        fwd.vlan += 1;
                        fwd.cache.free(pkt);
                        continue;
                    }
                },
            };
            // A learning hub: learn the source, send a known unicast to its one port.
            if let (Some(l), Some(stamp), Some(h)) = (
                &entry.learn,
                stamp,
                crate::wire::ethernet::Frame::new_checked(f),
            ) {
                let (dst, srcm) = (h.dst(), h.src());
                if !crate::wire::ethernet::is_group(&srcm) {
                    l.fdb.learn(&srcm, vid, l.me, stamp);
                }
                let known = if crate::wire::ethernet::is_group(&dst) {
                    None
                } else {
                    l.fdb.lookup(&dst, vid, stamp)
                };
                match known.map(|m| (m, l.dest_of(m))) {
                    Some((m, _)) if m == l.me => {
                        // Its own segment's address: a bridge keeps it there.
                        fwd.no_dest += 1;
                        fwd.cache.free(pkt);
                        continue;
                    }
                    Some((_, Some(i))) => {
                        let g = &entry.dests[i];
                        if let (true, false, Some(c)) = (pkt.offload(), g.offloads, &src_counters) {
                            // (Not on a VLAN-aware hub: cut up front there.)
                            crate::offload::wire_frames(pool, fwd.cache, &pkt, cut, c);
                            fwd.cache.free(pkt);
                            for s in cut.drain(..) {
                                fwd.send_known(g, None, s, hash);
                            }
                            continue;
                        }
                        let vl = entry.vlans.as_ref().map(|v| (&v.dests[i], vid, form));
                        fwd.send_known(g, vl, pkt, hash);
                        continue;
                    }
                    _ => {}
                }
            }
            let cut_for_plain = src_counters.as_deref().filter(|_| pkt.offload());
            match (&entry.vlans, cut_for_plain) {
                (None, Some(c)) => {
                    // Some destinations take it whole, the others share its wire frames.
                    crate::offload::wire_frames(pool, fwd.cache, &pkt, cut, c);
                    let whole = entry.dests.iter().filter(|g| g.offloads);
                    for (g, p) in whole.zip(pool.fanout(pkt, ndest - entry.plain)) {
                        fwd.route(g, p, hash);
                    }
                    for s in cut.drain(..) {
                        let plain = entry.dests.iter().filter(|g| !g.offloads);
                        for (g, p) in plain.zip(pool.fanout(s, entry.plain)) {
                            fwd.route(g, p, hash);
                        }
                    }
                }
                (None, None) => {
                    let copies = pool.fanout(pkt, ndest);
                    for (g, p) in entry.dests.iter().zip(copies) {
                        fwd.route(g, p, hash);
                    }
                }
                (Some(v), _) => fwd.flood_vlan(&entry.dests, &v.dests, pkt, vid, form, hash),
            }
        }
        let Fwd {
            no_dest: nd,
            vlan: vlan_drops,
            ..
        } = fwd;
        no_dest += nd;
        for (w, q) in outq.iter_mut().enumerate() {
            if q.is_empty() {
                continue;
            }
            let pushed = match outbound.get_mut(w).and_then(Option::as_mut) {
                Some(prod) => prod.push_burst(q),
                None => 0,
            };
            if !q.is_empty() {
                ring_full += q.len() as u64;
                for (_, p) in q.drain(..) {
                    eng.cache.free(p);
                }
            }
            if pushed > 0 {
                peers[w].bell.notify();
            }
        }
        if no_dest + ring_full + vlan_drops > 0 {
            if let Some(Some(s)) = slots.get(src_idx) {
                s.counters.count_drop(DropReason::NoDest, no_dest);
                s.counters.count_drop(DropReason::RingFull, ring_full);
                s.counters.count_drop(DropReason::Vlan, vlan_drops);
            }
        }
    }

    fn drain_inbound(&mut self) -> usize {
        let mut total = 0;
        let Worker {
            eng,
            topo,
            slots,
            slot_of,
            inbound,
            hops,
            ..
        } = self;
        for r in inbound.iter_mut() {
            hops.clear();
            let n = r.pop_burst(hops, BURST * 4);
            total += n;
            for (port, p) in hops.drain(..) {
                deliver_local(&mut eng.cache, topo, slots, slot_of, port, p, &eng.shared);
            }
        }
        total
    }

    fn drain_inbound_after_exit(&mut self) {
        let mut hops = Vec::new();
        for r in &mut self.inbound {
            while r.pop_burst(&mut hops, 1024) > 0 {
                for (_, p) in hops.drain(..) {
                    self.eng.cache.free(p);
                    self.eng.shared.gone_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn tx_all(&mut self, now: Instant) {
        for idx in 0..self.slots.len() {
            let Some(s) = &mut self.slots[idx] else {
                continue;
            };
            if s.pending.is_empty() {
                continue;
            }
            // A capture records what the port takes: copies made before, kept after.
            let offered = s.pending.len();
            let copies: Option<Vec<Vec<u8>>> =
                s.capture.as_ref().filter(|c| c.direction().tx()).map(|_| {
                    s.pending
                        .iter()
                        .map(|p| self.eng.pool.bytes(p).to_vec())
                        .collect()
                });
            let mut io = Io::new(self.eng.parts(), &s.counters, idx as u32, now);
            s.backend.tx_burst(&mut io, &mut s.pending);
            let taken = offered - s.pending.len();
            if let Some(t0) = s.sampled.take() {
                if taken > 0 {
                    s.counters.record_latency(t0.elapsed().as_nanos() as u64);
                }
            }
            if !s.pending.is_empty() {
                io.drop_all(&mut s.pending, DropReason::TxFull);
            }
            if let (Some(c), Some(copies)) = (&s.capture, copies) {
                for f in copies.iter().take(taken) {
                    c.capture(f, false);
                }
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.last_housekeeping = now;
        for idx in 0..self.slots.len() {
            if let Some(s) = &mut self.slots[idx] {
                if s.stopping.is_none() {
                    let mut io = Io::new(self.eng.parts(), &s.counters, idx as u32, now);
                    s.backend.housekeeping(&mut io);
                }
            }
        }
        self.progress_stops(now);
    }
}

/// What forwarding one burst borrows from its worker, with the drops it counts on the
/// way (charged to the source port at the end of the burst).
struct Fwd<'a> {
    pool: &'a Pool,
    cache: &'a mut BufCache,
    shared: &'a WorkerShared,
    topo: &'a Topology,
    slots: &'a mut [Option<Slot>],
    slot_of: &'a [u32],
    outq: &'a mut [Vec<Hop>],
    /// Frames with nowhere to go.
    no_dest: u64,
    /// Frames a VLAN rule refused (at the source, or no buffer for a retagged copy).
    vlan: u64,
}

impl Fwd<'_> {
    /// Sends `p` to one queue of destination `g`: onto a local port's pending batch, or
    /// into the batch for another worker's ring.
    #[inline]
    fn route(&mut self, g: &DestGroup, p: Pkt, hash: u32) {
        let me = self.shared.id;
        let q = g.pick(me, hash);
        if q.worker == me {
            deliver_local(
                self.cache,
                self.topo,
                self.slots,
                self.slot_of,
                q.port,
                p,
                self.shared,
            );
        } else if let Some(v) = self.outq.get_mut(q.worker as usize) {
            v.push((q.port, p));
        } else {
            self.no_dest += 1;
            self.cache.free(p);
        }
    }

    /// Sends a known unicast to its one destination; on a VLAN-aware hub (`vl`: the
    /// destination's membership, the frame's VLAN and form) in the form it takes.
    #[inline]
    fn send_known(&mut self, g: &DestGroup, vl: Option<(&VlanPort, u16, Form)>, p: Pkt, hash: u32) {
        let p = match vl {
            None => p,
            Some((dv, vid, form)) => match dv.egress(vid) {
                Some(want) if want == form => p,
                Some(_) => match crate::vlan::reform_pkt(self.pool, self.cache, p, vid) {
                    Some(p) => p,
                    None => {
                        self.vlan += 1;
                        return;
                    }
                },
                None => {
                    // Learned on this VLAN at a port that has left it since.
                    self.no_dest += 1;
                    self.cache.free(p);
                    return;
                }
            },
        };
        self.route(g, p, hash);
    }

    /// Floods frame `p` of VLAN `vid` (come in as `form`) to the destinations that are
    /// members of the VLAN: those that take it as it came share it, the others share
    /// one retagged copy (or the frame itself, retagged in place, when nobody takes it
    /// as it came).
    fn flood_vlan(
        &mut self,
        dests: &[DestGroup],
        dvl: &[VlanPort],
        p: Pkt,
        vid: u16,
        form: Form,
        hash: u32,
    ) {
        let (mut same, mut other) = (0u32, 0u32);
        for v in dvl {
            match v.egress(vid) {
                Some(f) if f == form => same += 1,
                Some(_) => other += 1,
                None => {}
            }
        }
        let (orig, alt) = match (same, other) {
            (0, 0) => {
                self.no_dest += 1;
                self.cache.free(p);
                return;
            }
            (_, 0) => (Some(p), None),
            (0, _) => (None, crate::vlan::reform_pkt(self.pool, self.cache, p, vid)),
            _ => {
                let alt = crate::vlan::reformed_copy(self.pool, self.cache, &p, vid);
                (Some(p), alt)
            }
        };
        if other > 0 && alt.is_none() {
            self.vlan += u64::from(other);
        }
        let pool = self.pool;
        let mut as_came = orig.map(|p| pool.fanout(p, same));
        let mut retagged = alt.map(|p| pool.fanout(p, other));
        for (g, v) in dests.iter().zip(dvl) {
            let p = match v.egress(vid) {
                Some(f) if f == form => as_came.as_mut().and_then(Iterator::next),
                Some(_) => retagged.as_mut().and_then(Iterator::next),
                None => None,
            };
            if let Some(p) = p {
                self.route(g, p, hash);
            }
        }
    }
}

/// Where frames for local port `port` stand.
enum LocalDest<'a> {
    /// Its slot, link up: frames go onto its pending batch.
    Up(&'a mut Slot),
    /// Its link is down: frames are dropped and counted at it.
    Down(&'a mut Slot),
    /// No such port here any more (deleted meanwhile).
    Gone,
}

fn local_dest<'a>(
    topo: &Topology,
    slots: &'a mut [Option<Slot>],
    slot_of: &[u32],
    port: PortId,
) -> LocalDest<'a> {
    let slot = slot_of
        .get(port as usize)
        .and_then(|&i| slots.get_mut(i as usize))
        .and_then(Option::as_mut);
    match (slot, topo.get(port)) {
        (None, _) => LocalDest::Gone,
        (Some(s), Some(e)) if e.link_up => LocalDest::Up(s),
        (Some(s), _) => LocalDest::Down(s),
    }
}

/// Puts a frame on the pending batch of local port `port`, or drops it when the port is
/// gone or its link is down.
fn deliver_local(
    cache: &mut BufCache,
    topo: &Topology,
    slots: &mut [Option<Slot>],
    slot_of: &[u32],
    port: PortId,
    p: Pkt,
    me: &WorkerShared,
) {
    match local_dest(topo, slots, slot_of, port) {
        LocalDest::Up(s) => s.pending.push(p),
        LocalDest::Down(s) => {
            s.counters.count_drop(DropReason::LinkDown, 1);
            cache.free(p);
        }
        LocalDest::Gone => {
            cache.free(p);
            me.gone_drops.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// [`deliver_local`] for a whole burst to one port, decided once.
fn deliver_burst(
    cache: &mut BufCache,
    topo: &Topology,
    slots: &mut [Option<Slot>],
    slot_of: &[u32],
    port: PortId,
    pkts: &mut Vec<Pkt>,
    me: &WorkerShared,
) {
    match local_dest(topo, slots, slot_of, port) {
        LocalDest::Up(s) => s.pending.append(pkts),
        LocalDest::Down(s) => {
            s.counters
                .count_drop(DropReason::LinkDown, pkts.len() as u64);
            cache.free_all(pkts);
        }
        LocalDest::Gone => {
            me.gone_drops
                .fetch_add(pkts.len() as u64, Ordering::Relaxed);
            cache.free_all(pkts);
        }
    }
}

/// A cheap hash of a frame's flow, to spread frames over a multi-queue destination
/// while keeping each flow on one queue (so never reordered): IPv4 or IPv6 addresses,
/// protocol and, for an unfragmented TCP or UDP packet, its ports; the MAC pair for
/// anything else. Up to two VLAN tags are looked through.
#[inline]
fn frame_hash(f: &[u8]) -> u32 {
    #[inline]
    fn fnv(h: u32, bytes: &[u8]) -> u32 {
        bytes
            .iter()
            .fold(h, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
    }
    const SEED: u32 = 0x811c_9dc5;
    let Some(macs) = f.get(..12) else {
        return 0;
    };
    let Some((l3, et)) = crate::wire::ethernet::payload_of(f) else {
        return fnv(SEED, macs);
    };
    let (addrs, proto, l4) = match et {
        crate::wire::ethernet::ETHERTYPE_IPV4 => {
            let Some(ip) = f.get(l3..l3 + 20) else {
                return fnv(SEED, macs);
            };
            let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
            let l4 = (!fragment).then_some(l3 + usize::from(ip[0] & 0xf) * 4);
            (&ip[12..20], ip[9], l4)
        }
        crate::wire::ethernet::ETHERTYPE_IPV6 => {
            let Some(ip) = f.get(l3..l3 + 40) else {
                return fnv(SEED, macs);
            };
            (&ip[8..40], ip[6], Some(l3 + 40))
        }
        _ => return fnv(SEED, macs),
    };
    let h = fnv(fnv(SEED, addrs), &[proto]);
    match (proto, l4.and_then(|o| f.get(o..o + 4))) {
        (6 | 17, Some(ports)) => fnv(h, ports),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::frame_hash;

    fn udp4(sport: u16, payload: u8, frag: bool) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8 + 4];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        if frag {
            f[20] = 0x20; // more fragments
        }
        f[23] = 17;
        f[26..30].copy_from_slice(&[10, 0, 0, 1]);
        f[30..34].copy_from_slice(&[10, 0, 0, 2]);
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[36..38].copy_from_slice(&9u16.to_be_bytes());
        f[42..].fill(payload);
        f
    }

    #[test]
    fn a_flow_hashes_alike_and_flows_between_two_hosts_spread() {
        assert_eq!(
            frame_hash(&udp4(1000, 1, false)),
            frame_hash(&udp4(1000, 2, false))
        );
        let mut odd = 0;
        for p in 1000..1064 {
            odd += frame_hash(&udp4(p, 0, false)) % 2;
        }
        assert!(
            (16..=48).contains(&odd),
            "64 flows over 2 queues: {odd} on one"
        );
        // A fragment has no ports to read: its flow is its addresses.
        assert_eq!(frame_hash(&udp4(1, 0, true)), frame_hash(&udp4(2, 0, true)));
        // Through one VLAN tag.
        let mut t = udp4(1000, 0, false);
        t.splice(12..12, [0x81, 0x00, 0x00, 0x0a]);
        assert_eq!(frame_hash(&t), frame_hash(&udp4(1000, 0, false)));
        // Short or unknown frames do not panic.
        for n in 0..40 {
            let _ = frame_hash(&udp4(1000, 0, false)[..n]);
        }
    }
}
