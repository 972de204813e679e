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

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use crate::backend::{Backend, Io, BURST};
use crate::counters::{DropReason, PortCounters};
use crate::pool::{Pkt, Pool};
use crate::ring::{Consumer, Producer};
use crate::topology::{PortId, Topology};
use crate::uring::{untoken, Completion, Uring, WORKER_SLOT};

/// How often timed work runs while awake.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(5);
/// Longest sleep: even an idle worker wakes this often for timed work.
pub const MAX_SLEEP: Duration = Duration::from_millis(250);
/// Frames in flight between two workers.
pub const XRING_SIZE: usize = 4096;

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
    sleeping: AtomicBool,
    wake_fd: OwnedFd,
    /// Nanoseconds spent doing work.
    pub busy_ns: AtomicU64,
    /// Nanoseconds spent asleep in the kernel.
    pub idle_ns: AtomicU64,
    /// Frames that arrived for a port that had been removed meanwhile.
    pub gone_drops: AtomicU64,
}

impl WorkerShared {
    pub(crate) fn new(id: u16, core: Option<usize>) -> std::io::Result<WorkerShared> {
        // Blocking on purpose: io_uring completes a read of a non-blocking file with
        // EAGAIN at once instead of waiting for it to become readable.
        // SAFETY: eventfd takes no pointers; a negative return is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(WorkerShared {
            id,
            core,
            sleeping: AtomicBool::new(false),
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            wake_fd: unsafe { OwnedFd::from_raw_fd(fd) },
            busy_ns: AtomicU64::new(0),
            idle_ns: AtomicU64::new(0),
            gone_drops: AtomicU64::new(0),
        })
    }

    /// Wakes the worker if it sleeps (or is about to).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full counter
        // (EAGAIN) already means "awake", so the result is ignored.
        let _ = unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Wakes the worker only if it announced it is going to sleep: the cheap path for
    /// frames handed over between busy workers.
    #[inline]
    pub fn wake_if_sleeping(&self) {
        // SeqCst: pairs with the SeqCst store in `Worker::sleep`; either we see the flag,
        // or the worker sees our ring item when it re-checks after raising it.
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
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
}

/// The worker's state, owned by its thread.
pub struct Worker {
    // First field: the ring is dropped (closed) before the memory its requests use.
    uring: Uring,
    shared: Arc<WorkerShared>,
    peers: Vec<Arc<WorkerShared>>,
    pool: Arc<Pool>,
    cmds: Receiver<Cmd>,
    topo: Arc<Topology>,
    slots: Vec<Option<Slot>>,
    /// Port id → slot index (u32::MAX when not here).
    slot_of: Vec<u32>,
    inbound: Vec<Consumer<Hop>>,
    outbound: Vec<Option<Producer<Hop>>>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    completions: Vec<Completion>,
    rx: Vec<Pkt>,
    hops: Vec<Hop>,
    last_housekeeping: Instant,
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
        let mut w = Worker {
            shared: setup.shared,
            peers: setup.peers,
            pool: setup.pool,
            uring,
            cmds: setup.cmds,
            topo: Arc::new(Topology::default()),
            slots: Vec::new(),
            slot_of: Vec::new(),
            inbound: setup.inbound,
            outbound: setup.outbound,
            wake_buf: Box::new(0),
            wake_armed: false,
            completions: Vec::with_capacity(1024),
            rx: Vec::with_capacity(BURST),
            hops: Vec::with_capacity(BURST),
            last_housekeeping: Instant::now(),
        };
        w.breathe_forever();
        // Frames other workers left for us after the last topology change.
        w.drain_inbound_after_exit();
        w.retire_wake_read();
    }

    /// Completes our own eventfd read before the ring closes, so the kernel never
    /// writes into `wake_buf` after it is freed.
    fn retire_wake_read(&mut self) {
        for _ in 0..100 {
            if !self.wake_armed {
                return;
            }
            self.shared.wake();
            self.uring.wait(Duration::from_millis(10));
            self.completions.clear();
            self.uring.reap(&mut self.completions);
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
            types::Fd(self.shared.wake_fd.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(crate::uring::token(WORKER_SLOT, OP_WAKE, 0));
        // SAFETY: `wake_buf` is boxed (stable address) and owned by the worker, which
        // outlives the ring's requests: the ring is dropped with the worker.
        unsafe { self.uring.push(&e) };
        self.wake_armed = true;
    }

    fn breathe_forever(&mut self) {
        let mut awake_since = Instant::now();
        loop {
            let now = Instant::now();
            self.arm_wake();
            self.uring.poll();
            self.dispatch_completions(now);
            match self.commands(now) {
                Ok(()) => {}
                Err(()) => return,
            }
            let mut work = self.rx_all(now);
            work += self.drain_inbound();
            self.tx_all(now);
            if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING_EVERY {
                self.housekeeping(now);
            }
            if work > 0 {
                continue;
            }
            if self.may_sleep(now) {
                self.account_busy(awake_since, now);
                self.sleep();
                awake_since = Instant::now();
            } else if now.duration_since(awake_since) >= MAX_SLEEP {
                // A worker that never sleeps still reports its busy time.
                self.account_busy(awake_since, now);
                awake_since = now;
            }
        }
    }

    fn account_busy(&self, since: Instant, now: Instant) {
        let ns = now.duration_since(since).as_nanos() as u64;
        self.shared.busy_ns.fetch_add(ns, Ordering::Relaxed);
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
        // SeqCst: pairs with `wake_if_sleeping`'s SeqCst load (Dekker): after raising the
        // flag we re-check the rings, so a frame pushed before the producer saw the flag
        // is not left waiting.
        self.shared.sleeping.store(true, Ordering::SeqCst);
        let ready = self.inbound.iter().any(|c| !c.is_empty());
        if !ready {
            let t0 = Instant::now();
            self.uring.wait(MAX_SLEEP);
            let slept = t0.elapsed();
            self.shared
                .idle_ns
                .fetch_add(slept.as_nanos() as u64, Ordering::Relaxed);
        }
        self.shared.sleeping.store(false, Ordering::SeqCst);
    }

    fn dispatch_completions(&mut self, now: Instant) {
        self.completions.clear();
        self.uring.reap(&mut self.completions);
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
                let mut io = Io::new(
                    &self.pool,
                    &s.counters,
                    &mut self.uring,
                    slot,
                    now,
                    &self.shared,
                );
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
                    };
                    {
                        let mut io = Io::new(
                            &self.pool,
                            &slot.counters,
                            &mut self.uring,
                            idx as u32,
                            now,
                            &self.shared,
                        );
                        slot.backend.start(&mut io);
                    }
                    self.slots[idx] = Some(slot);
                    if self.slot_of.len() <= id as usize {
                        self.slot_of.resize(id as usize + 1, u32::MAX);
                    }
                    self.slot_of[id as usize] = idx as u32;
                    let _ = reply.send(());
                }
                Ok(Cmd::RemovePort { id, reply }) => {
                    if let Some(&idx) = self.slot_of.get(id as usize) {
                        if let Some(Some(s)) = self.slots.get_mut(idx as usize) {
                            let pending = std::mem::take(&mut s.pending);
                            for p in pending {
                                self.pool.free(p);
                            }
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
                    let mut io = Io::new(
                        &self.pool,
                        &s.counters,
                        &mut self.uring,
                        idx as u32,
                        now,
                        &self.shared,
                    );
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
                let mut io = Io::new(
                    &self.pool,
                    &s.counters,
                    &mut self.uring,
                    idx as u32,
                    now,
                    &self.shared,
                );
                s.backend.rx_burst(&mut io, &mut self.rx, BURST)
            };
            if n == 0 {
                continue;
            }
            s.last_rx = now;
            total += n;
            let src = s.id;
            self.forward(src, idx);
        }
        total
    }

    /// Sends the frames in `self.rx`, received on port `src` (slot `src_idx`), to their
    /// destinations.
    fn forward(&mut self, src: PortId, src_idx: usize) {
        let topo = self.topo.clone();
        let me = self.shared.id;
        let Some(Some(src_slot)) = self.slots.get(src_idx) else {
            return;
        };
        let src_counters = src_slot.counters.clone();
        let entry = match topo.get(src) {
            Some(e) if e.link_up && !e.dests.is_empty() => e,
            Some(e) => {
                let why = if e.link_up {
                    DropReason::NoDest
                } else {
                    DropReason::LinkDown
                };
                src_counters.count_drop(why, self.rx.len() as u64);
                for p in self.rx.drain(..) {
                    self.pool.free(p);
                }
                return;
            }
            None => {
                src_counters.count_drop(DropReason::NoDest, self.rx.len() as u64);
                for p in self.rx.drain(..) {
                    self.pool.free(p);
                }
                return;
            }
        };
        let ndest = entry.dests.len();
        for pkt in self.rx.drain(..) {
            let hash = frame_hash(self.pool.bytes(&pkt));
            self.pool.add_refs(&pkt, ndest as u32 - 1);
            let mut last = Some(pkt);
            for (i, g) in entry.dests.iter().enumerate() {
                let p = if i + 1 == ndest {
                    last.take().expect("last destination takes the original")
                } else {
                    self.pool
                        .share_unaccounted(last.as_ref().expect("original kept until last"))
                };
                let q = g.pick(me, hash);
                if q.worker == me {
                    deliver_local(
                        &self.pool,
                        &topo,
                        &mut self.slots,
                        &self.slot_of,
                        q.port,
                        p,
                        &self.shared,
                    );
                } else {
                    let w = q.worker as usize;
                    match self.outbound.get_mut(w).and_then(Option::as_mut) {
                        Some(prod) => {
                            if let Err((_, p)) = prod.push((q.port, p)) {
                                src_counters.count_drop(DropReason::RingFull, 1);
                                self.pool.free(p);
                            }
                        }
                        None => {
                            src_counters.count_drop(DropReason::NoDest, 1);
                            self.pool.free(p);
                        }
                    }
                }
            }
        }
        for (w, prod) in self.outbound.iter().enumerate() {
            if let Some(prod) = prod {
                if !prod.is_empty() {
                    self.peers[w].wake_if_sleeping();
                }
            }
        }
    }

    fn drain_inbound(&mut self) -> usize {
        let mut total = 0;
        let topo = self.topo.clone();
        for r in 0..self.inbound.len() {
            self.hops.clear();
            let n = self.inbound[r].pop_burst(&mut self.hops, BURST * 4);
            total += n;
            for (port, p) in self.hops.drain(..) {
                deliver_local(
                    &self.pool,
                    &topo,
                    &mut self.slots,
                    &self.slot_of,
                    port,
                    p,
                    &self.shared,
                );
            }
        }
        total
    }

    fn drain_inbound_after_exit(&mut self) {
        let mut hops = Vec::new();
        for r in &mut self.inbound {
            while r.pop_burst(&mut hops, 1024) > 0 {
                for (_, p) in hops.drain(..) {
                    self.pool.free(p);
                    self.shared.gone_drops.fetch_add(1, Ordering::Relaxed);
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
            let mut io = Io::new(
                &self.pool,
                &s.counters,
                &mut self.uring,
                idx as u32,
                now,
                &self.shared,
            );
            s.backend.tx_burst(&mut io, &mut s.pending);
            if !s.pending.is_empty() {
                io.drop_all(&mut s.pending, DropReason::TxFull);
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        self.last_housekeeping = now;
        for idx in 0..self.slots.len() {
            if let Some(s) = &mut self.slots[idx] {
                if s.stopping.is_none() {
                    let mut io = Io::new(
                        &self.pool,
                        &s.counters,
                        &mut self.uring,
                        idx as u32,
                        now,
                        &self.shared,
                    );
                    s.backend.housekeeping(&mut io);
                }
            }
        }
        self.progress_stops(now);
    }
}

/// Puts a frame on the pending batch of local port `port`, or drops it when the port is
/// gone or its link is down.
fn deliver_local(
    pool: &Pool,
    topo: &Topology,
    slots: &mut [Option<Slot>],
    slot_of: &[u32],
    port: PortId,
    p: Pkt,
    me: &WorkerShared,
) {
    let slot = slot_of
        .get(port as usize)
        .and_then(|&i| slots.get_mut(i as usize))
        .and_then(Option::as_mut);
    let Some(s) = slot else {
        pool.free(p);
        me.gone_drops.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match topo.get(port) {
        Some(e) if e.link_up => s.pending.push(p),
        _ => {
            s.counters.count_drop(DropReason::LinkDown, 1);
            pool.free(p);
        }
    }
}

/// A cheap hash of a frame's addresses, to spread frames over a multi-queue destination
/// while keeping each flow (MAC pair) on one queue.
#[inline]
fn frame_hash(f: &[u8]) -> u32 {
    if f.len() < 12 {
        return 0;
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in &f[..12] {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h
}
