//! The control thread's handle on the data plane.
//!
//! [`Switch`] owns the pool, the workers and the client graph. Every change is applied
//! by message: the new forwarding table goes to every worker, and each acknowledges it
//! before the change counts as done. Removing a port runs in two steps so that no frame
//! ever touches a port that is gone:
//!
//! ```text
//!  netdev_del x:  1. table without x ──► every worker acks (no one sends to x any more)
//!                 2. RemovePort ──► owner cancels x's I/O, frees its buffers,
//!                    hands the backend back ──► dropped here (fds closed)
//! ```

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backend::{Backend, BURST};
use crate::counters::{CounterSnapshot, PortCounters};
use crate::error::SwitchError;
use crate::pool::{PageKind, Pool, CACHE_MAX};
use crate::ring::ring;
use crate::topology::{ClientKind, Graph, PortId, QueueRef};
use crate::worker::{Cmd, Hop, Worker, WorkerSetup, WorkerShared, XRING_MAX};

/// How long the control thread waits for a worker to answer.
pub const WORKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the data plane.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// One worker per entry, pinned to that core (`None`: not pinned).
    pub cores: Vec<Option<usize>>,
    /// Buffers in the pool.
    pub pool_size: u32,
    /// Largest frame forwarded.
    pub max_frame: usize,
    /// Buffers for GSO super-frames (see [`crate::pool::GSO_FRAME`]); 0 turns offloads
    /// off for every port.
    pub gso_buffers: u32,
    /// Busy-poll time of ports that do not set their own, in microseconds.
    pub default_poll_us: u32,
    /// Slots of each ring between two workers (`None`: sized to the pool by
    /// [`ring_size`]).
    pub ring_size: Option<usize>,
}

/// The default size of each ring between two workers: together the rings hold at most
/// a quarter of the pool, each between 64 and [`XRING_MAX`] slots (a power of two).
pub fn ring_size(pool: u32, workers: usize) -> usize {
    let pairs = workers * workers.saturating_sub(1);
    if pairs == 0 {
        return 0;
    }
    let share = (pool as usize / 4 / pairs).max(1);
    let pow2 = if share.is_power_of_two() {
        share
    } else {
        share.next_power_of_two() / 2
    };
    pow2.clamp(64, XRING_MAX)
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            cores: vec![None],
            pool_size: 16384,
            max_frame: crate::pool::DEFAULT_MAX_FRAME,
            gso_buffers: crate::pool::DEFAULT_GSO_BUFFERS,
            default_poll_us: 1000,
            ring_size: None,
        }
    }
}

/// A client to add: a port (with one backend per queue) or a hubport.
pub struct ClientSpec {
    /// Unique name (the netdev id).
    pub name: String,
    /// What it is.
    pub kind: SpecKind,
    /// The client to peer with.
    pub peer: Option<String>,
    /// Whether the client is NIC-like (see [`crate::topology::Client::nic`]).
    pub nic: bool,
}

/// A queue's worker and counters.
type QueueCounters<'a> = (u16, &'a Arc<PortCounters>);

/// The two kinds of client.
pub enum SpecKind {
    /// A port with its queues' backends and an optional busy-poll time.
    Port {
        /// One backend per queue.
        queues: Vec<Box<dyn Backend>>,
        /// Busy-poll time in microseconds (`None`: the switch default).
        poll_us: Option<u32>,
    },
    /// A hubport on hub `hub`.
    HubPort {
        /// Hub id.
        hub: i32,
        /// Its VLAN settings, if any (see [`crate::vlan`]).
        vlan: Option<crate::vlan::VlanPort>,
    },
}

struct WorkerHandle {
    shared: Arc<WorkerShared>,
    cmds: Sender<Cmd>,
    thread: Option<JoinHandle<()>>,
    ports: usize,
}

/// Facts about a started worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Index.
    pub id: u16,
    /// Pinned core.
    pub core: Option<usize>,
    /// Ports it owns.
    pub ports: usize,
    /// Nanoseconds busy.
    pub busy_ns: u64,
    /// Nanoseconds asleep.
    pub idle_ns: u64,
    /// Frames for ports removed while in flight.
    pub gone_drops: u64,
    /// io_uring trouble: enter errors, queue-full flushes, refused requests, CQ
    /// overflows, dropped completions, multishot ENOBUFS, failed operations.
    pub uring: [(&'static str, u64); 7],
}

/// Facts about the data plane, for logs.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// Pool pages.
    pub pages: PageKind,
    /// Whether every worker's ring defers completions (DEFER_TASKRUN).
    pub deferred: bool,
    /// Whether the kernel has multishot receive over provided-buffer rings.
    pub multishot: bool,
    /// Slots of each ring between two workers.
    pub ring_size: usize,
    /// Buffers reserved for rings and worker caches at start.
    pub reserved: u64,
}

/// The running data plane.
pub struct Switch {
    pool: Arc<Pool>,
    workers: Vec<WorkerHandle>,
    graph: Graph,
    counters: std::collections::HashMap<PortId, Arc<PortCounters>>,
    /// Buffers reserved for each port queue (see [`Backend::max_held`]).
    held: std::collections::HashMap<PortId, u64>,
    next_port: PortId,
    default_poll_us: u32,
    info: StartInfo,
}

/// The default worker placement: one worker on the last core this process may run on,
/// leaving the others to the kernel, the control thread and the rest of the host.
pub fn default_cores() -> Vec<Option<usize>> {
    let last = core_affinity::get_core_ids()
        .and_then(|ids| ids.iter().map(|c| c.id).max())
        .unwrap_or(0);
    vec![Some(last)]
}

/// CPUs the host has, whatever this process's affinity mask allows (a daemon started
/// under `taskset` may still be told to pin workers elsewhere; the kernel then decides).
fn host_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let last = s.trim().rsplit([',', '-']).next()?.parse::<usize>().ok()?;
            Some(last + 1)
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn recv<T>(rx: &Receiver<T>, worker: usize) -> Result<T, SwitchError> {
    rx.recv_timeout(WORKER_TIMEOUT)
        .map_err(|_| SwitchError::WorkerGone(worker))
}

impl Switch {
    /// Maps the pool and starts the workers.
    pub fn start(cfg: &SwitchConfig) -> Result<Switch, SwitchError> {
        if cfg.cores.is_empty() {
            return Err(SwitchError::NoWorkers);
        }
        let ncores = host_cpus();
        for c in cfg.cores.iter().flatten() {
            if *c >= ncores {
                return Err(SwitchError::NoSuchCore(*c, ncores));
            }
        }
        let pool = Arc::new(Pool::with_gso(
            cfg.pool_size,
            cfg.max_frame,
            cfg.gso_buffers,
        )?);
        let n = cfg.cores.len();
        let rsize = match cfg.ring_size {
            Some(r) => r.max(2).next_power_of_two(),
            None => ring_size(cfg.pool_size, n),
        };
        // What the data plane itself may hold: a full ring between every two workers
        // and, with several workers, a full cache each (one worker's cache serves only
        // its own ports, which are all there are).
        let caches = if n > 1 {
            n as u64 * u64::from(CACHE_MAX)
        } else {
            0
        };
        let fixed = (n * n.saturating_sub(1) * rsize) as u64 + caches;
        pool.reserve(fixed)?;
        let shared: Vec<Arc<WorkerShared>> = cfg
            .cores
            .iter()
            .enumerate()
            .map(|(i, c)| WorkerShared::new(i as u16, *c).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(SwitchError::EventFd)?;
        // rings[from][to]
        let mut producers: Vec<Vec<Option<crate::ring::Producer<Hop>>>> =
            (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
        let mut consumers: Vec<Vec<crate::ring::Consumer<Hop>>> =
            (0..n).map(|_| Vec::new()).collect();
        for (from, row) in producers.iter_mut().enumerate() {
            for (to, slot) in row.iter_mut().enumerate() {
                if from != to {
                    let (p, c) = ring(rsize);
                    *slot = Some(p);
                    consumers[to].push(c);
                }
            }
        }
        let mut workers = Vec::with_capacity(n);
        let mut info = StartInfo {
            pages: pool.pages(),
            deferred: true,
            multishot: crate::uring::features().multishot_recv,
            ring_size: rsize,
            reserved: fixed,
        };
        for (i, (outbound, inbound)) in producers.into_iter().zip(consumers).enumerate() {
            let (tx, rx) = channel();
            let setup = WorkerSetup {
                shared: shared[i].clone(),
                peers: shared.clone(),
                pool: pool.clone(),
                cmds: rx,
                inbound,
                outbound,
            };
            let (stx, srx) = channel();
            let thread = std::thread::Builder::new()
                .name(format!("pollswitch-w{i}"))
                .spawn(move || Worker::run(setup, stx))
                .map_err(SwitchError::Spawn)?;
            let started =
                recv(&srx, i)?.map_err(|source| SwitchError::Uring { worker: i, source })?;
            info.deferred &= started.deferred;
            workers.push(WorkerHandle {
                shared: shared[i].clone(),
                cmds: tx,
                thread: Some(thread),
                ports: 0,
            });
        }
        Ok(Switch {
            pool,
            workers,
            graph: Graph::default(),
            counters: Default::default(),
            held: Default::default(),
            next_port: 0,
            default_poll_us: cfg.default_poll_us,
            info,
        })
    }

    /// Facts for the start-up log.
    pub fn info(&self) -> &StartInfo {
        &self.info
    }

    /// The packet pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The client graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn send(&self, w: usize, cmd: Cmd) -> Result<(), SwitchError> {
        self.workers[w]
            .cmds
            .send(cmd)
            .map_err(|_| SwitchError::WorkerGone(w))?;
        self.workers[w].shared.bell.kick();
        Ok(())
    }

    fn publish(&self) -> Result<(), SwitchError> {
        let topo = Arc::new(self.graph.topology());
        let mut replies = Vec::new();
        for w in 0..self.workers.len() {
            let (tx, rx) = channel();
            self.send(
                w,
                Cmd::Topology {
                    topo: topo.clone(),
                    reply: tx,
                },
            )?;
            replies.push(rx);
        }
        for (w, rx) in replies.iter().enumerate() {
            recv(rx, w)?;
        }
        Ok(())
    }

    /// Adds a client; its queues are spread over the least loaded workers.
    pub fn add(&mut self, spec: ClientSpec) -> Result<(), SwitchError> {
        self.graph.check_add(&spec.name, spec.peer.as_deref())?;
        let mut vlan = None;
        let mut offloads = false;
        let kind = match spec.kind {
            SpecKind::HubPort { hub, vlan: v } => {
                vlan = v;
                ClientKind::HubPort { hub }
            }
            SpecKind::Port { queues, poll_us } => {
                offloads = queues.first().is_some_and(|b| b.offloads());
                let mut refs = Vec::with_capacity(queues.len());
                let mut waits = Vec::new();
                // Every queue's worst case is spoken for before any starts: one that the
                // pool cannot also serve is refused, never added silent.
                let need: Vec<u64> = queues
                    .iter()
                    .map(|b| (BURST + b.max_held(&self.pool)) as u64)
                    .collect();
                let total: u64 = need.iter().sum();
                self.pool.reserve(total)?;
                for (backend, need) in queues.into_iter().zip(need) {
                    let w = (0..self.workers.len())
                        .min_by_key(|&w| self.workers[w].ports)
                        .unwrap_or(0);
                    let id = self.next_port;
                    self.next_port += 1;
                    let counters = Arc::new(PortCounters::default());
                    self.counters.insert(id, counters.clone());
                    self.held.insert(id, need);
                    let (tx, rx) = channel();
                    self.send(
                        w,
                        Cmd::AddPort {
                            id,
                            backend,
                            counters,
                            poll_us: poll_us.unwrap_or(self.default_poll_us),
                            reply: tx,
                        },
                    )?;
                    self.workers[w].ports += 1;
                    waits.push((w, rx));
                    refs.push(QueueRef {
                        worker: w as u16,
                        port: id,
                    });
                }
                for (w, rx) in waits {
                    recv(&rx, w)?;
                }
                ClientKind::Port { queues: refs }
            }
        };
        self.graph.add(&spec.name, kind, spec.peer.as_deref())?;
        if spec.nic {
            self.graph.set_nic(&spec.name);
        }
        if offloads {
            self.graph.set_offloads(&spec.name);
        }
        if vlan.is_some() {
            self.graph.set_vlan(&spec.name, vlan)?;
        }
        self.publish()
    }

    /// Removes a client while traffic flows. Returns its backends, every one of them
    /// quiesced, for the caller to drop (closing files, running down-scripts).
    pub fn remove(&mut self, name: &str) -> Result<Vec<Box<dyn Backend>>, SwitchError> {
        let learned = self.graph.learned_member(name);
        let client = self.graph.remove(name)?;
        if let ClientKind::HubPort { hub } = client.kind {
            // The last hubport of a learning hub takes its table with it.
            if self.graph.hub_members(hub).is_empty() {
                self.graph.set_learning(hub, None);
            }
        }
        self.publish()?;
        // Its addresses are forgotten at once (not after the ageing time).
        if let Some((fdb, member)) = learned {
            fdb.flush_member(member);
        }
        let mut out = Vec::new();
        if let ClientKind::Port { queues } = client.kind {
            let mut waits = Vec::new();
            for q in &queues {
                let (tx, rx) = channel();
                let w = q.worker as usize;
                self.send(
                    w,
                    Cmd::RemovePort {
                        id: q.port,
                        reply: tx,
                    },
                )?;
                waits.push((w, rx));
            }
            for ((w, rx), q) in waits.into_iter().zip(&queues) {
                out.push(recv(&rx, w)?);
                self.workers[w].ports -= 1;
                self.counters.remove(&q.port);
                if let Some(n) = self.held.remove(&q.port) {
                    self.pool.unreserve(n);
                }
            }
        }
        Ok(out)
    }

    /// Sets the link state of a client as QEMU's set_link does for that client itself.
    pub fn set_link(&mut self, name: &str, up: bool) -> Result<(), SwitchError> {
        self.graph.set_link(name, up)?;
        self.publish()?;
        if !up {
            if let Some((fdb, member)) = self.graph.learned_member(name) {
                fdb.flush_member(member);
            }
        }
        Ok(())
    }

    /// Starts (`Some`) or stops capturing client `name`'s frames (every queue of it).
    pub fn set_capture(
        &mut self,
        name: &str,
        sink: Option<Arc<crate::capture::Sink>>,
    ) -> Result<(), SwitchError> {
        let c = self
            .graph
            .get(name)
            .ok_or_else(|| SwitchError::NotFound(name.to_string()))?;
        let ClientKind::Port { queues } = &c.kind else {
            return Err(SwitchError::NotFound(name.to_string()));
        };
        let mut waits = Vec::new();
        for q in queues.clone() {
            let (tx, rx) = channel();
            let w = q.worker as usize;
            self.send(
                w,
                Cmd::SetCapture {
                    id: q.port,
                    sink: sink.clone(),
                    reply: tx,
                },
            )?;
            waits.push((w, rx));
        }
        for (w, rx) in waits {
            recv(&rx, w)?;
        }
        Ok(())
    }

    /// Changes hubport `name`'s VLAN settings while traffic flows (`None`: none). The
    /// addresses its port's hub learned are forgotten: they may sit on other VLANs now.
    pub fn set_vlan(
        &mut self,
        name: &str,
        vlan: Option<crate::vlan::VlanPort>,
    ) -> Result<(), SwitchError> {
        self.graph.set_vlan(name, vlan)?;
        self.publish()?;
        if let Some((fdb, member)) = self.graph.learned_member(name) {
            fdb.flush_member(member);
        }
        Ok(())
    }

    /// Makes hub `hub` learn MAC addresses into `fdb` (`None`: flood again).
    pub fn set_learning(
        &mut self,
        hub: i32,
        fdb: Option<Arc<crate::fdb::Fdb>>,
    ) -> Result<(), SwitchError> {
        self.graph.set_learning(hub, fdb);
        self.publish()
    }

    /// Each queue of a client with its worker and counters, in queue order (`None` for
    /// hubports).
    fn queue_counters(&self, name: &str) -> Result<Option<Vec<QueueCounters<'_>>>, SwitchError> {
        let c = self
            .graph
            .get(name)
            .ok_or_else(|| SwitchError::NotFound(name.to_string()))?;
        let ClientKind::Port { queues } = &c.kind else {
            return Ok(None);
        };
        Ok(Some(
            queues
                .iter()
                .filter_map(|q| Some((q.worker, self.counters.get(&q.port)?)))
                .collect(),
        ))
    }

    /// Sampled time in the switch of frames sent to a client, over its queues (`None`
    /// for hubports).
    pub fn latency(
        &self,
        name: &str,
    ) -> Result<Option<crate::counters::LatencySummary>, SwitchError> {
        let Some(qs) = self.queue_counters(name)? else {
            return Ok(None);
        };
        let mut h = crate::counters::empty_histogram();
        for (_, c) in qs {
            c.latency_into(&mut h);
        }
        Ok(Some(crate::counters::LatencySummary::of(&h)))
    }

    /// Each queue's worker and counters, in queue order (`None` for hubports).
    pub fn per_queue(
        &self,
        name: &str,
    ) -> Result<Option<Vec<(u16, CounterSnapshot)>>, SwitchError> {
        Ok(self
            .queue_counters(name)?
            .map(|qs| qs.into_iter().map(|(w, c)| (w, c.snapshot())).collect()))
    }

    /// Counters of a client, summed over its queues (`None` for hubports).
    pub fn counters(&self, name: &str) -> Result<Option<CounterSnapshot>, SwitchError> {
        let Some(qs) = self.queue_counters(name)? else {
            return Ok(None);
        };
        let mut sum = CounterSnapshot::default();
        for (_, c) in qs {
            sum.add(&c.snapshot());
        }
        Ok(Some(sum))
    }

    /// Per-worker facts.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        self.workers
            .iter()
            .map(|w| WorkerInfo {
                id: w.shared.id,
                core: w.shared.core,
                ports: w.ports,
                busy_ns: w.shared.busy_ns.load(Relaxed),
                idle_ns: w.shared.idle_ns.load(Relaxed),
                gone_drops: w.shared.gone_drops.load(Relaxed),
                uring: {
                    let u = &w.shared.uring;
                    [
                        ("enter-errors", u.enter_errors.load(Relaxed)),
                        ("sq-full", u.sq_full.load(Relaxed)),
                        ("sq-refused", u.sq_refused.load(Relaxed)),
                        ("cq-overflow", u.cq_overflow.load(Relaxed)),
                        ("cq-dropped", u.cq_dropped.load(Relaxed)),
                        ("enobufs", u.enobufs.load(Relaxed)),
                        ("op-errors", u.op_errors.load(Relaxed)),
                    ]
                },
            })
            .collect()
    }

    /// Removes every client (hubports last), stops the workers, and returns the
    /// backends for the caller to drop.
    pub fn shutdown(mut self) -> Result<Vec<Box<dyn Backend>>, SwitchError> {
        let mut out = Vec::new();
        let names: Vec<String> = self.graph.names().map(str::to_string).collect();
        let (ports, hubports): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| {
            matches!(
                self.graph.get(n).map(|c| &c.kind),
                Some(ClientKind::Port { .. })
            )
        });
        for n in ports.iter().chain(hubports.iter()) {
            out.extend(self.remove(n)?);
        }
        self.stop_workers();
        Ok(out)
    }

    fn stop_workers(&mut self) {
        for w in &self.workers {
            let _ = w.cmds.send(Cmd::Exit);
            w.shared.bell.ring();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop_workers();
    }
}
