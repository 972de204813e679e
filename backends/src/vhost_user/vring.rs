//! The worker side of one vhost-user queue pair: the guest's transmit ring (vring
//! 2i+1, which we read) and its receive ring (vring 2i, which we fill).
//!
//! ```text
//!  device thread ──Order::Start(Session)──► Mailbox ──► QueuePair (worker)
//!                ◄──Stopped {next avail}── Order::Stop ◄──┘
//!  rx_burst: pop TX chains → skip the virtio-net header → copy into pool buffers
//!            → used (len 0) → call the guest if it asked
//!  tx_burst: pop RX chains (several per frame with mergeable buffers) → header
//!            (num_buffers) + frame → used (bytes written) → call the guest if it asked
//! ```
//!
//! A session is the pair's whole view of the guest: its memory and its rings. The pair
//! alone touches the rings while it holds one; the device thread changes a ring only
//! after the pair has handed its session back (so its positions), never under it.
//!
//! Everything the guest wrote is untrusted: descriptor addresses and lengths go through
//! `vm-memory`'s checked accesses, so a descriptor outside the memory table is a counted
//! bad frame and the walk stops; a chain longer than the ring is cut by `virtio-queue`.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use crossbeam_queue::ArrayQueue;
use switch::backend::Waker;
use switch::pool::{HEADROOM, MIN_FRAME};
use switch::{Backend, DropReason, Io, Pkt};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::nic::NicHandle;

/// The guest's memory as the frontend shared it.
pub type Memory = GuestMemoryMmap<()>;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the guest polls and wants no call.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Offset of `num_buffers` in `virtio_net_hdr_mrg_rxbuf`.
const NUM_BUFFERS_AT: usize = 10;
/// Offset of the used ring's entries (after `flags` and `idx`), and one entry's size.
const USED_RING_AT: u64 = 4;
const USED_ELEM: u64 = 8;
/// Orders waiting for a pair at once (the device thread waits for each Stop).
const ORDERS: usize = 8;

/// A started vring.
pub struct Ring {
    pub(crate) q: Queue,
    /// The eventfd that interrupts the guest (none: it polls).
    pub(crate) call: Option<File>,
}

impl Ring {
    /// Writes a used element for chain `head` (`len` bytes written into it) without
    /// publishing it: [`Ring::publish`] makes a whole burst visible at once, so a
    /// frame spread over several chains (mergeable buffers) never shows half-used.
    fn put_used(&mut self, mem: &Memory, head: u16, len: u32) {
        let at = self.q.next_used();
        let slot = u64::from(at % self.q.size());
        let addr = GuestAddress(self.q.used_ring() + USED_RING_AT + USED_ELEM * slot);
        let mut elem = [0u8; 8];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        // Checked by `Queue::is_valid` when the ring started: the used ring lies in
        // guest memory; a failure here only means the guest tore its memory down.
        let _ = mem.write_slice(&elem, addr);
        self.q.set_next_used(at.wrapping_add(1));
    }

    /// Publishes the used elements written since the used index was `old`, and
    /// interrupts the guest unless it asked not to be.
    fn publish(&mut self, mem: &Memory, old: u16) {
        let new = self.q.next_used();
        if new == old {
            return;
        }
        // Release: the elements (and the frames in the buffers) before the index.
        let _ = mem.store(
            new.to_le(),
            GuestAddress(self.q.used_ring() + 2),
            Ordering::Release,
        );
        let Some(call) = &mut self.call else { return };
        // SeqCst: the used index store must be visible before we read what the guest
        // asked for, as the guest publishes that before it reads the used index.
        fence(Ordering::SeqCst);
        let wanted = if self.q.event_idx_enabled() {
            // `used_event` sits after the available ring's entries.
            let at = self.q.avail_ring() + 4 + 2 * u64::from(self.q.size());
            let ev = u16::from_le(mem.load(GuestAddress(at), Ordering::Relaxed).unwrap_or(0));
            // virtio's vring_need_event: did the index pass `used_event`?
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = mem
                .load(GuestAddress(self.q.avail_ring()), Ordering::Relaxed)
                .unwrap_or(0);
            u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0
        };
        if wanted {
            let _ = call.write(&1u64.to_ne_bytes());
        }
    }
}

/// What a started pair works with.
pub struct Session {
    pub(crate) mem: Arc<Memory>,
    /// The guest's receive ring (we write frames into it).
    pub(crate) rx: Option<Ring>,
    /// The guest's transmit ring (we read frames from it).
    pub(crate) tx: Option<Ring>,
    /// Bytes of virtio-net header before each frame (10 or 12).
    pub(crate) hdr_len: usize,
    /// Mergeable receive buffers: a frame may span several receive chains.
    pub(crate) mrg: bool,
}

/// Where a stopped pair's rings were: the next available index of each started ring.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stopped {
    /// The receive ring's.
    pub rx: Option<u16>,
    /// The transmit ring's.
    pub tx: Option<u16>,
}

pub(crate) enum Order {
    Start(Box<Session>),
    Stop(mpsc::SyncSender<Stopped>),
}

/// The device thread's line to one pair's worker.
#[derive(Default)]
pub struct Mailbox {
    orders: OnceLock<ArrayQueue<Order>>,
    waker: OnceLock<Waker>,
    live: AtomicBool,
}

impl Mailbox {
    fn orders(&self) -> &ArrayQueue<Order> {
        self.orders.get_or_init(|| ArrayQueue::new(ORDERS))
    }

    /// Whether a worker runs the pair now.
    pub(crate) fn live(&self) -> bool {
        // Acquire: pairs with the worker's Release in `start`/`stop`.
        self.live.load(Ordering::Acquire)
    }

    /// Queues an order and wakes the worker; false when the queue is full.
    pub(crate) fn send(&self, o: Order) -> bool {
        let ok = self.orders().push(o).is_ok();
        self.wake();
        ok
    }

    /// Takes back what no worker picked up (the pair is not running).
    pub(crate) fn take_back(&self) -> Option<Order> {
        self.orders().pop()
    }

    /// Wakes the pair's worker (a guest kick).
    pub(crate) fn wake(&self) {
        if let Some(w) = self.waker.get() {
            w.wake();
        }
    }
}

/// One queue pair of a vhost-user port, as a switch queue.
pub struct QueuePair {
    mb: Arc<Mailbox>,
    s: Option<Box<Session>>,
    /// The port's NIC side: pair 0 sends what the control thread injects
    /// (announce-self); every pair reports the guest's address.
    nic: NicHandle,
    injects: bool,
    learned: bool,
    /// The guest kicks its transmit ring (we are about to sleep).
    kicks_on: bool,
    heads: Vec<u16>,
    used: Vec<(u16, u32)>,
    /// Delivered frames on their way back to the pool (kept for its allocation).
    done: Vec<Pkt>,
    /// Keeps the device thread for as long as a pair exists.
    _keep: Arc<super::device::Guard>,
}

impl QueuePair {
    pub(crate) fn new(
        mb: Arc<Mailbox>,
        nic: NicHandle,
        injects: bool,
        keep: Arc<super::device::Guard>,
    ) -> QueuePair {
        QueuePair {
            mb,
            s: None,
            nic,
            injects,
            learned: false,
            kicks_on: false,
            heads: Vec::with_capacity(switch::backend::BURST),
            used: Vec::with_capacity(switch::backend::BURST),
            done: Vec::with_capacity(switch::backend::BURST),
            _keep: keep,
        }
    }

    /// Carries out the device thread's orders.
    fn orders(&mut self, io: &mut Io<'_>) {
        // `is_empty` first: it only loads, and the queue is empty on almost every call.
        let mb = self.mb.clone();
        let q = mb.orders();
        if q.is_empty() {
            return;
        }
        while let Some(o) = q.pop() {
            match o {
                Order::Start(s) => {
                    self.s = Some(s);
                    // Busy polling from now on: the guest need not kick.
                    self.kicks(false);
                    io.counters.set_carrier(true);
                }
                Order::Stop(reply) => {
                    let st = self.hand_back();
                    let _ = reply.send(st);
                    io.counters.set_carrier(false);
                }
            }
        }
    }

    fn hand_back(&mut self) -> Stopped {
        match self.s.take() {
            Some(s) => Stopped {
                rx: s.rx.as_ref().map(|r| r.q.next_avail()),
                tx: s.tx.as_ref().map(|r| r.q.next_avail()),
            },
            None => Stopped::default(),
        }
    }

    /// Turns the guest's kicks on the transmit ring on or off; with `on`, whether
    /// frames came meanwhile.
    fn kicks(&mut self, on: bool) -> bool {
        let Some(s) = &mut self.s else { return false };
        let Some(tx) = &mut s.tx else { return false };
        self.kicks_on = on;
        if on {
            tx.q.enable_notification(&*s.mem).unwrap_or(false)
        } else {
            let _ = tx.q.disable_notification(&*s.mem);
            false
        }
    }

    /// Reads up to `max` frames from the guest's transmit ring.
    fn receive(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        let Some(s) = &mut self.s else { return 0 };
        let Some(tx) = &mut s.tx else { return 0 };
        let mem: &Memory = &s.mem;
        let pool = io.pool();
        let room = pool.max_frame();
        let (mut n, mut bytes) = (0usize, 0u64);
        self.heads.clear();
        if let Ok(mut chains) = tx.q.iter(mem) {
            while n < max {
                let Some(chain) = chains.next() else { break };
                self.heads.push(chain.head_index());
                let Some(mut p) = io.alloc() else {
                    io.counters.count_drop(DropReason::NoBuffer, 1);
                    continue;
                };
                let Some(buf) = pool
                    .buf_mut(&mut p)
                    .and_then(|b| b.get_mut(HEADROOM..HEADROOM + room))
                else {
                    io.free(p);
                    continue;
                };
                let mut skip = s.hdr_len;
                let mut len = 0usize;
                let mut why = None;
                for d in chain {
                    if d.is_write_only() {
                        why = Some(DropReason::BadLength);
                        break;
                    }
                    let mut addr = d.addr();
                    let mut dl = d.len() as usize;
                    if skip > 0 {
                        let k = skip.min(dl);
                        skip -= k;
                        dl -= k;
                        addr = addr.unchecked_add(k as u64);
                    }
                    if dl == 0 {
                        continue;
                    }
                    let Some(dst) = buf.get_mut(len..len + dl) else {
                        why = Some(DropReason::Oversize);
                        break;
                    };
                    if mem.read_slice(dst, addr).is_err() {
                        why = Some(DropReason::BadLength);
                        break;
                    }
                    len += dl;
                }
                match why {
                    None if len >= MIN_FRAME => {
                        p.set_span(HEADROOM, len);
                        bytes += len as u64;
                        out.push(p);
                        n += 1;
                    }
                    None => io.drop_one(p, DropReason::Undersize),
                    Some(w) => io.drop_one(p, w),
                }
            }
        }
        if self.heads.is_empty() {
            return 0;
        }
        let old = tx.q.next_used();
        for &h in &self.heads {
            tx.put_used(mem, h, 0);
        }
        tx.publish(mem, old);
        io.counters.rx_many(n as u64, bytes);
        if !self.learned {
            if let Some(p) = out.last() {
                let f = pool.bytes(p);
                let src: [u8; 6] = f[6..12].try_into().unwrap_or([0; 6]);
                if src[0] & 1 == 0 && src != [0; 6] {
                    self.nic.learn(src);
                    self.learned = true;
                }
            }
        }
        n
    }

    /// Writes frames from the front of `pkts` into the guest's receive ring; returns
    /// how many it took (sent or dropped).
    fn deliver(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        let Some(s) = &mut self.s else {
            let n = pkts.len();
            io.drop_all(pkts, DropReason::NotConnected);
            return n;
        };
        let Some(rx) = &mut s.rx else {
            let n = pkts.len();
            io.drop_all(pkts, DropReason::NotConnected);
            return n;
        };
        let mem: &Memory = &s.mem;
        let pool = io.pool();
        let (mut taken, mut ok, mut bytes) = (0usize, 0u64, 0u64);
        let mut hdr = [0u8; 12];
        let hdr = &mut hdr[..s.hdr_len];
        let old = rx.q.next_used();
        'frames: for p in pkts.iter() {
            let data = pool.bytes(p);
            let start = rx.q.next_avail();
            self.used.clear();
            // The header, then the frame, as one stream over the chains.
            let total = hdr.len() + data.len();
            let mut at = 0usize;
            let mut nb_addr: [Option<GuestAddress>; 2] = [None, None];
            let mut bad = false;
            while at < total {
                let Some(chain) = rx.q.pop_descriptor_chain(mem) else {
                    // No room: the frame and the rest stay with the caller.
                    rx.q.set_next_avail(start);
                    break 'frames;
                };
                let head = chain.head_index();
                let mut wrote = 0u32;
                for d in chain {
                    if !d.is_write_only() {
                        bad = true;
                        break;
                    }
                    let (addr, dl) = (d.addr(), d.len() as usize);
                    let mut off = 0usize;
                    while off < dl && at < total {
                        let (src, k) = if at < hdr.len() {
                            let k = (hdr.len() - at).min(dl - off);
                            for (i, slot) in nb_addr.iter_mut().enumerate() {
                                let b = NUM_BUFFERS_AT + i;
                                if s.mrg && (at..at + k).contains(&b) {
                                    *slot = Some(addr.unchecked_add((off + b - at) as u64));
                                }
                            }
                            (&hdr[at..at + k], k)
                        } else {
                            let from = at - hdr.len();
                            let k = (total - at).min(dl - off);
                            (&data[from..from + k], k)
                        };
                        if mem
                            .write_slice(src, addr.unchecked_add(off as u64))
                            .is_err()
                        {
                            bad = true;
                            break;
                        }
                        off += k;
                        at += k;
                        wrote += k as u32;
                    }
                    if bad || at >= total {
                        break;
                    }
                }
                self.used.push((head, wrote));
                if bad || (!s.mrg && at < total) {
                    break;
                }
            }
            taken += 1;
            if bad || at < total {
                // A chain that is not writable or lies outside memory, or (without
                // mergeable buffers) one too small: the frame is dropped, the chains
                // go back to the guest unwritten.
                for &(h, _) in &self.used {
                    rx.put_used(mem, h, 0);
                }
                io.counters.count_drop(
                    if bad {
                        DropReason::BadLength
                    } else {
                        DropReason::Oversize
                    },
                    1,
                );
                continue;
            }
            if s.mrg {
                let nb = (self.used.len() as u16).to_le_bytes();
                for (slot, b) in nb_addr.iter().zip(nb) {
                    if let Some(a) = slot {
                        let _ = mem.write_slice(&[b], *a);
                    }
                }
            }
            for &(h, len) in &self.used {
                rx.put_used(mem, h, len);
            }
            ok += 1;
            bytes += data.len() as u64;
        }
        rx.publish(mem, old);
        io.counters.tx(ok, bytes);
        self.done.extend(pkts.drain(..taken));
        io.free_all(&mut self.done);
        taken
    }
}

impl Backend for QueuePair {
    fn kind(&self) -> &'static str {
        "vhost-user"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        let _ = self.mb.waker.set(io.waker());
        if self.injects {
            self.nic.set_waker(io.waker());
        }
        // Release: pairs with the device thread's Acquire in `Mailbox::live`.
        self.mb.live.store(true, Ordering::Release);
        io.counters.set_carrier(false);
        self.orders(io);
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        self.orders(io);
        let mut n = 0;
        if self.injects {
            n += self.nic.take_injected(io, out, max);
        }
        if self.kicks_on {
            self.kicks(false);
        }
        n + self.receive(io, out, max - n)
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        self.orders(io);
        self.deliver(io, pkts)
    }

    fn stop(&mut self, io: &mut Io<'_>) -> bool {
        // Release: pairs with the device thread's Acquire in `Mailbox::live`.
        self.mb.live.store(false, Ordering::Release);
        self.orders(io);
        self.s = None;
        io.counters.set_carrier(false);
        true
    }

    fn idle(&mut self) -> bool {
        !self.kicks(true)
    }
}
