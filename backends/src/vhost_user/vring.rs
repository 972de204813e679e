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
use std::sync::{mpsc, Arc};

use crossbeam_queue::ArrayQueue;
use switch::backend::Waker;
use switch::pool::{HEADROOM, MIN_FRAME};
use switch::{Backend, DropReason, Io, Pkt};
use vm_memory::GuestMemoryMmap;

use super::guest::{
    Desc, DirtyLog, GuestMem, RingAddrs, RingView, Span, DESC_INDIRECT, DESC_NEXT, DESC_WRITE,
};
use crate::nic::NicHandle;
use std::sync::OnceLock;

/// The guest's memory as the frontend shared it.
pub type Memory = GuestMemoryMmap<()>;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the guest polls and wants no call.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// `VRING_USED_F_NO_NOTIFY`: we poll and want no kick.
const USED_F_NO_NOTIFY: u16 = 1;
/// Offset of `num_buffers` in `virtio_net_hdr_mrg_rxbuf`.
const NUM_BUFFERS_AT: usize = 10;
/// How many frames ahead of the one it copies `receive` prefetches a buffer.
const AHEAD: usize = 3;
/// Orders waiting for a pair at once (the device thread waits for each Stop).
const ORDERS: usize = 8;

/// A started split ring: where it is, where we are in it, how to interrupt.
pub struct Ring {
    pub(crate) addrs: RingAddrs,
    pub(crate) next_avail: u16,
    pub(crate) next_used: u16,
    pub(crate) event_idx: bool,
    /// The eventfd that interrupts the guest (none: it polls).
    pub(crate) call: Option<File>,
    /// The used ring's guest address to mark in the dirty log.
    pub(crate) log_used: Option<u64>,
}

/// Why a chain could not be used.
pub(crate) enum Bad {
    /// Its descriptors are malformed (index past the table, a loop, an indirect table
    /// outside memory or inside another).
    Chain,
}

impl Ring {
    fn size(&self) -> u16 {
        self.addrs.size
    }

    /// The ring slot of index `i` (sizes are powers of two: a mask, not a division).
    #[inline]
    fn slot(&self, i: u16) -> usize {
        usize::from(i & self.addrs.size.wrapping_sub(1))
    }

    /// Chains offered and not yet taken (None: the guest's index is impossible).
    #[inline]
    fn pending(&self, v: &RingView<'_>) -> Option<u16> {
        // Acquire: pairs with the guest's publication of the ring entries.
        let idx = v.avail.load_u16(2, Ordering::Acquire);
        let n = idx.wrapping_sub(self.next_avail);
        (n <= self.size()).then_some(n)
    }

    /// The head of the chain offered `ahead` places after the next one (not taken).
    #[inline]
    fn peek_head(&self, v: &RingView<'_>, ahead: u16) -> u16 {
        let slot = self.slot(self.next_avail.wrapping_add(ahead));
        v.avail.load_u16(4 + 2 * slot, Ordering::Relaxed)
    }

    /// The next offered chain's head.
    #[inline]
    fn take_head(&mut self, v: &RingView<'_>) -> u16 {
        let head = self.peek_head(v, 0);
        self.next_avail = self.next_avail.wrapping_add(1);
        head
    }

    /// Writes a used element without publishing it: [`Ring::publish`] makes a whole
    /// burst visible at once, so a frame spread over several chains (mergeable
    /// buffers) is never seen half-used.
    #[inline]
    fn put_used(&mut self, v: &RingView<'_>, head: u16, len: u32) {
        let slot = self.slot(self.next_used);
        v.used.put_used(4 + 8 * slot, u32::from(head), len);
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the used elements written since the used index was `old`, and
    /// interrupts the guest unless it asked not to be.
    fn publish(&mut self, v: &RingView<'_>, old: u16, log: Option<&DirtyLog>) {
        let new = self.next_used;
        if new == old {
            return;
        }
        // Release: the elements (and the frames in the buffers) before the index.
        v.used.store_u16(2, new, Ordering::Release);
        if let (Some(l), Some(at)) = (log, self.log_used) {
            // The whole used ring: a page or two, marked once per burst.
            l.mark(at, v.used.len() as u64);
        }
        let Some(call) = &mut self.call else { return };
        // SeqCst: the used index must be visible before we read what the guest asked
        // for, as the guest publishes that before it reads the used index.
        fence(Ordering::SeqCst);
        let n = usize::from(self.addrs.size);
        let wanted = if self.event_idx {
            // `used_event` follows the available ring's entries; virtio's
            // vring_need_event: did the index pass it?
            let ev = v.avail.load_u16(4 + 2 * n, Ordering::Relaxed);
            new.wrapping_sub(ev).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            v.avail.load_u16(0, Ordering::Relaxed) & AVAIL_F_NO_INTERRUPT == 0
        };
        if wanted {
            let _ = call.write(&1u64.to_ne_bytes());
        }
    }

    /// Asks the guest to kick (`on`) or not; with `on`, whether chains came meanwhile.
    fn notifications(&mut self, v: &RingView<'_>, on: bool) -> bool {
        let n = usize::from(self.addrs.size);
        if self.event_idx {
            if !on {
                // With event indexes the guest kicks once per `avail_event` passed:
                // leaving it behind is how kicks stop.
                return false;
            }
            v.used
                .store_u16(4 + 8 * n, self.next_avail, Ordering::Relaxed);
        } else {
            v.used
                .store_u16(0, if on { 0 } else { USED_F_NO_NOTIFY }, Ordering::Relaxed);
        }
        if !on {
            return false;
        }
        // SeqCst: our flag before the guest's index, as the guest writes its index
        // before it reads our flag.
        fence(Ordering::SeqCst);
        self.pending(v).is_some_and(|p| p > 0)
    }
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum from `csum_start` is the device's to finish.
const HDR_F_NEEDS_CSUM: u8 = 1;

/// What a guest's virtio-net header asks of a frame it sent: a partial checksum is
/// finished here (VIRTIO_NET_F_CSUM is offered; no port downstream is told of partial
/// checksums, so every frame leaves the port complete); a GSO type (never offered) is
/// refused as `offload`; a checksum field outside the frame as `bad-length`.
fn offloads(hdr: &[u8; 12], frame: &mut [u8]) -> Option<DropReason> {
    if hdr[1] != 0 {
        return Some(DropReason::Offload);
    }
    if hdr[0] & HDR_F_NEEDS_CSUM == 0 {
        return None;
    }
    let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    if switch::wire::checksum::complete_partial(frame, start, offset) {
        None
    } else {
        Some(DropReason::BadLength)
    }
}

/// Prefetches the first `lines` cache lines of the first buffer of chain `head`.
#[inline]
fn prefetch_buffer(mem: &GuestMem, v: &RingView<'_>, head: u16, lines: usize) {
    if let Some(d) = v.desc.desc(head) {
        let len = (d.len as usize).min(64 * (lines - 1) + 1);
        if let Some(b) = mem.span(d.addr, len) {
            for l in 0..lines {
                b.prefetch(64 * l);
            }
        }
    }
}

/// Walks the chain at `head` in `table` (`size` entries), following an indirect
/// table, calling `f` for each buffer until it returns false.
#[inline]
pub(crate) fn walk(
    mem: &GuestMem,
    table: Span<'_>,
    size: u16,
    head: u16,
    mut f: impl FnMut(&Desc) -> bool,
) -> Result<(), Bad> {
    let (mut table, mut size) = (table, size);
    let (mut i, mut hops, mut indirect) = (head, 0u32, false);
    loop {
        if i >= size || hops >= u32::from(size) {
            return Err(Bad::Chain);
        }
        let d = table.desc(i).ok_or(Bad::Chain)?;
        hops += 1;
        if d.flags & DESC_INDIRECT != 0 {
            // One level, never chained on (virtio 1.2, 2.7.5.3.1).
            if indirect || d.flags & DESC_NEXT != 0 || d.len == 0 || !d.len.is_multiple_of(16) {
                return Err(Bad::Chain);
            }
            table = mem.span(d.addr, d.len as usize).ok_or(Bad::Chain)?;
            size = (d.len / 16).min(u32::from(u16::MAX)) as u16;
            (i, hops, indirect) = (0, 0, true);
            continue;
        }
        if !f(&d) || d.flags & DESC_NEXT == 0 {
            return Ok(());
        }
        i = d.next;
    }
}

/// What a started pair works with.
pub struct Session {
    pub(crate) mem: GuestMem,
    /// The guest's receive ring (we write frames into it).
    pub(crate) rx: Option<Ring>,
    /// The guest's transmit ring (we read frames from it).
    pub(crate) tx: Option<Ring>,
    /// Bytes of virtio-net header before each frame (10 or 12).
    pub(crate) hdr_len: usize,
    /// Mergeable receive buffers: a frame may span several receive chains.
    pub(crate) mrg: bool,
    /// The dirty-page log, while the frontend migrates the guest.
    pub(crate) log: Option<Arc<DirtyLog>>,
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
pub struct Mailbox {
    orders: ArrayQueue<Order>,
    waker: OnceLock<Waker>,
    live: AtomicBool,
    /// Set by the worker when the guest broke the ring protocol.
    fault: std::sync::Mutex<Option<String>>,
    /// Partial checksums the pair finished (frames the guest sent with NEEDS_CSUM);
    /// written by the pair's worker only.
    checksums: std::sync::atomic::AtomicU64,
}

impl Default for Mailbox {
    fn default() -> Mailbox {
        Mailbox {
            orders: ArrayQueue::new(ORDERS),
            waker: OnceLock::new(),
            live: AtomicBool::new(false),
            fault: std::sync::Mutex::new(None),
            checksums: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Mailbox {
    /// Whether a worker runs the pair now.
    pub(crate) fn live(&self) -> bool {
        // Acquire: pairs with the worker's Release in `start`/`stop`.
        self.live.load(Ordering::Acquire)
    }

    /// Queues an order and wakes the worker; false when the queue is full.
    pub(crate) fn send(&self, o: Order) -> bool {
        let ok = self.orders.push(o).is_ok();
        self.wake();
        ok
    }

    /// Takes back what no worker picked up (the pair is not running).
    pub(crate) fn take_back(&self) -> Option<Order> {
        self.orders.pop()
    }

    /// Partial checksums finished so far.
    pub(crate) fn checksums(&self) -> u64 {
        self.checksums.load(Ordering::Relaxed)
    }

    /// What the worker found broken, once.
    pub(crate) fn take_fault(&self) -> Option<String> {
        self.fault.lock().ok().and_then(|mut f| f.take())
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
    /// The guest broke the ring protocol: the device thread ends the connection.
    broken: Option<String>,
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
            broken: None,
            heads: Vec::with_capacity(switch::backend::BURST),
            used: Vec::with_capacity(switch::backend::BURST),
            done: Vec::with_capacity(switch::backend::BURST),
            _keep: keep,
        }
    }

    /// Carries out the device thread's orders.
    fn orders(&mut self, io: &mut Io<'_>) {
        // `is_empty` first: it only loads, and the queue is empty on almost every call.
        if self.mb.orders.is_empty() {
            return;
        }
        while let Some(o) = self.mb.orders.pop() {
            match o {
                Order::Start(mut s) => {
                    // The guest's receive ring never needs a kick (we do not wait for
                    // its buffers: a frame with none is dropped as tx-full), so the
                    // guest is told once not to make the syscall when it posts some.
                    if let Some(rx) = &mut s.rx {
                        if let Some(v) = s.mem.ring(&rx.addrs) {
                            rx.notifications(&v, false);
                        }
                    }
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

    /// A guest that broke the ring protocol loses its session; the device thread ends
    /// the connection.
    fn check_broken(&mut self, io: &mut Io<'_>) {
        if let Some(why) = self.broken.take() {
            tracing::warn!("vhost-user guest broke the ring protocol: {why}");
            self.s = None;
            io.counters.set_carrier(false);
            if let Ok(mut f) = self.mb.fault.lock() {
                f.get_or_insert(why);
            }
        }
    }

    fn hand_back(&mut self) -> Stopped {
        match self.s.take() {
            Some(s) => Stopped {
                rx: s.rx.as_ref().map(|r| r.next_avail),
                tx: s.tx.as_ref().map(|r| r.next_avail),
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
        match s.mem.ring(&tx.addrs) {
            Some(v) => tx.notifications(&v, on),
            None => false,
        }
    }

    /// Reads up to `max` frames from the guest's transmit ring.
    fn receive(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
        let Some(s) = &mut self.s else { return 0 };
        let Some(tx) = &mut s.tx else { return 0 };
        let Some(v) = s.mem.ring(&tx.addrs) else {
            return 0;
        };
        let Some(pending) = tx.pending(&v) else {
            self.broken = Some("its transmit ring's available index ran past the ring".into());
            return 0;
        };
        let pool = io.pool();
        let room = pool.max_frame();
        let (mut n, mut bytes, mut csums) = (0usize, 0u64, 0u64);
        // First the burst's heads, prefetching their descriptors (another core wrote
        // them), then the frames. (Prefetching the buffers too, or the used entries,
        // measured slower: finding a buffer's address means waiting for its
        // descriptor.)
        self.heads.clear();
        for _ in 0..usize::from(pending).min(max) {
            let head = tx.take_head(&v);
            v.desc.prefetch(16 * usize::from(head));
            self.heads.push(head);
        }
        for &head in self.heads.iter().take(AHEAD) {
            prefetch_buffer(&s.mem, &v, head, 2);
        }
        for (i, &head) in self.heads.iter().enumerate() {
            // The buffer AHEAD frames on: its descriptor was prefetched above and has
            // had that long to arrive (1 and 2 ahead measured slower; before this the
            // header's own line, which the copy never touched, was a miss per frame).
            // The header and the line after it, where a frame pushed behind its header
            // starts.
            if let Some(&next) = self.heads.get(i + AHEAD) {
                prefetch_buffer(&s.mem, &v, next, 2);
            }
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
            let mut hdr = [0u8; 12];
            let mut len = 0usize;
            let mut why = None;
            let walked = walk(&s.mem, v.desc, tx.size(), head, |d| {
                if d.flags & DESC_WRITE != 0 {
                    why = Some(DropReason::BadLength);
                    return false;
                }
                let (mut addr, mut dl) = (d.addr, d.len as usize);
                if skip > 0 {
                    let k = skip.min(dl);
                    // The header is read too: it may ask for a checksum. Usually it
                    // sits whole at the start of the first buffer: ten fixed bytes
                    // (flags, gso type, checksum start and offset) are all we use.
                    let at = s.hdr_len - skip;
                    let whole = (at == 0 && k >= 10)
                        .then(|| s.mem.span(addr, 10).and_then(|sp| sp.read_fixed::<10>(0)))
                        .flatten();
                    if let Some(h10) = whole {
                        hdr[..10].copy_from_slice(&h10);
                    } else if !s.mem.read(addr, &mut hdr[at..at + k]) {
                        why = Some(DropReason::BadLength);
                        return false;
                    }
                    skip -= k;
                    dl -= k;
                    addr = addr.wrapping_add(k as u64);
                }
                if dl == 0 {
                    return true;
                }
                let Some(dst) = buf.get_mut(len..len + dl) else {
                    why = Some(DropReason::Oversize);
                    return false;
                };
                if !s.mem.read(addr, dst) {
                    why = Some(DropReason::BadLength);
                    return false;
                }
                len += dl;
                true
            });
            if walked.is_err() {
                why = Some(DropReason::BadLength);
            }
            if why.is_none() && len >= MIN_FRAME {
                why = offloads(&hdr, &mut buf[..len]);
                csums += u64::from(why.is_none() && hdr[0] & HDR_F_NEEDS_CSUM != 0);
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
        if self.heads.is_empty() {
            return 0;
        }
        let old = tx.next_used;
        for &h in &self.heads {
            tx.put_used(&v, h, 0);
        }
        tx.publish(&v, old, s.log.as_deref());
        io.counters.rx_many(n as u64, bytes);
        if csums > 0 {
            // Relaxed load and store: this worker is the only writer.
            let c = &self.mb.checksums;
            c.store(c.load(Ordering::Relaxed) + csums, Ordering::Relaxed);
        }
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
        let all = pkts.len();
        let Some(s) = &mut self.s else {
            io.drop_all(pkts, DropReason::NotConnected);
            return all;
        };
        let Some(rx) = &mut s.rx else {
            io.drop_all(pkts, DropReason::NotConnected);
            return all;
        };
        let Some(v) = s.mem.ring(&rx.addrs) else {
            io.drop_all(pkts, DropReason::NotConnected);
            return all;
        };
        let Some(mut pending) = rx.pending(&v) else {
            self.broken = Some("its receive ring's available index ran past the ring".into());
            io.drop_all(pkts, DropReason::NotConnected);
            return all;
        };
        let pool = io.pool();
        let (mut taken, mut ok, mut bytes) = (0usize, 0u64, 0u64);
        // num_buffers starts at 1 (mergeable buffers): patched only for a frame that
        // takes more than one chain.
        let mut hdr = [0u8; 12];
        if s.mrg {
            hdr[NUM_BUFFERS_AT] = 1;
        }
        let hdr12 = hdr;
        let hdr10: [u8; 10] = hdr[..10].try_into().unwrap_or([0; 10]);
        let hdr = &hdr[..s.hdr_len];
        let old = rx.next_used;
        'frames: for p in pkts.iter() {
            let data = pool.bytes(p);
            let start = rx.next_avail;
            // A pipeline over the chains to come: the descriptor 2 × AHEAD chains on,
            // the buffer of the one AHEAD chains on, whose descriptor was fetched that
            // long ago.
            if usize::from(pending) > 2 * AHEAD {
                let far = rx.peek_head(&v, 2 * AHEAD as u16);
                v.desc.prefetch(16 * usize::from(far));
            }
            if usize::from(pending) > AHEAD {
                prefetch_buffer(&s.mem, &v, rx.peek_head(&v, AHEAD as u16), 1);
            }
            self.used.clear();
            // The header, then the frame, as one stream over the chains.
            let total = hdr.len() + data.len();
            let mut at = 0usize;
            let mut nb_addr: [Option<u64>; 2] = [None, None];
            let mut bad = false;
            while at < total {
                if pending == 0 {
                    // Maybe the guest posted more since the burst began.
                    pending = rx.pending(&v).unwrap_or(0);
                    if pending == 0 {
                        // No room: the frame and the rest stay with the caller.
                        rx.next_avail = start;
                        break 'frames;
                    }
                }
                pending -= 1;
                let head = rx.take_head(&v);
                let mut wrote = 0u32;
                let walked = walk(&s.mem, v.desc, rx.size(), head, |d| {
                    if d.flags & DESC_WRITE == 0 {
                        bad = true;
                        return false;
                    }
                    let Some(span) = s.mem.span(d.addr, d.len as usize) else {
                        bad = true;
                        return false;
                    };
                    let mut off = 0usize;
                    // The usual case: the whole header at the start of the first buffer,
                    // written with two moves.
                    if at == 0 && span.len() >= hdr.len() {
                        let done = match hdr.len() {
                            12 => span.write_fixed::<12>(0, &hdr12),
                            _ => span.write_fixed::<10>(0, &hdr10),
                        };
                        if done {
                            if s.mrg {
                                nb_addr = [Some(d.addr + 10), Some(d.addr + 11)];
                            }
                            off = hdr.len();
                            at = hdr.len();
                            wrote = at as u32;
                        }
                    }
                    while off < span.len() && at < total {
                        let k;
                        if at < hdr.len() {
                            k = (hdr.len() - at).min(span.len() - off);
                            for (i, slot) in nb_addr.iter_mut().enumerate() {
                                let b = NUM_BUFFERS_AT + i;
                                if s.mrg && (at..at + k).contains(&b) {
                                    *slot = Some(d.addr + (off + b - at) as u64);
                                }
                            }
                            span.write(off, &hdr[at..at + k]);
                        } else {
                            let from = at - hdr.len();
                            k = (total - at).min(span.len() - off);
                            span.write(off, &data[from..from + k]);
                        }
                        off += k;
                        at += k;
                        wrote += k as u32;
                    }
                    if let Some(l) = &s.log {
                        l.mark(d.addr, off as u64);
                    }
                    at < total
                });
                bad |= walked.is_err();
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
                    rx.put_used(&v, h, 0);
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
            if s.mrg && self.used.len() > 1 {
                let nb = (self.used.len() as u16).to_le_bytes();
                for (slot, b) in nb_addr.iter().zip(nb) {
                    if let Some(a) = slot {
                        s.mem.write(*a, &[b]);
                    }
                }
            }
            for &(h, len) in &self.used {
                rx.put_used(&v, h, len);
            }
            ok += 1;
            bytes += data.len() as u64;
        }
        rx.publish(&v, old, s.log.as_deref());
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
        n += self.receive(io, out, max - n);
        self.check_broken(io);
        n
    }

    fn tx_burst(&mut self, io: &mut Io<'_>, pkts: &mut Vec<Pkt>) -> usize {
        self.orders(io);
        let n = self.deliver(io, pkts);
        self.check_broken(io);
        n
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

/// Descriptor chains a guest wrote, whatever they hold, in a guest memory of two
/// regions with a hole between them: the walk ends (at most a ring's worth of direct
/// descriptors, then an indirect table's worth), each buffer it yields is copied only
/// when it lies inside one region — exactly as a model of the layout says — and
/// nothing panics.
pub(crate) fn fuzz_chains(data: &[u8]) {
    use vm_memory::{GuestAddress, GuestMemoryMmap};
    const A: (u64, usize) = (0, 0x1_0000);
    const B: (u64, usize) = (0x2_0000, 0x1_0000);
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(m) =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(A.0), A.1), (GuestAddress(B.0), B.1)])
    else {
        return;
    };
    let mem = GuestMem::new(Arc::new(m));
    // The input is the first region's bytes (descriptor table at 0) and, after it,
    // the second's.
    let (first, second) = rest.split_at(rest.len().min(A.1));
    let _ = mem.write(A.0, first);
    let _ = mem.write(B.0, &second[..second.len().min(B.1)]);
    let size = 1u16 << (sel & 7);
    let head = u16::from(sel >> 3) % (size + 1);
    let Some(table) = mem.span(A.0, 16 * usize::from(size)) else {
        return;
    };
    let inside = |addr: u64, len: u64| {
        [A, B].iter().any(|&(base, n)| {
            addr >= base && addr - base <= n as u64 && len <= n as u64 - (addr - base)
        })
    };
    let mut yielded = 0usize;
    let mut buf = vec![0u8; 4096];
    let r = walk(&mem, table, size, head, |d| {
        yielded += 1;
        let len = (d.len as usize).min(buf.len());
        let copied = mem.read(d.addr, &mut buf[..len]);
        assert_eq!(copied, inside(d.addr, len as u64), "{d:?}");
        true
    });
    // Direct hops are bounded by the ring, an indirect table's by its length.
    assert!(
        yielded <= usize::from(size) + 0x1_0000 / 16,
        "{yielded} buffers"
    );
    if head >= size {
        assert!(r.is_err(), "a head past the ring");
    }
}
