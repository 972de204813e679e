//! A bounded single-producer single-consumer ring, the link between two workers.
//!
//! ```text
//!          head (consumer)          tail (producer)
//!             ▼                        ▼
//!   [ . . . . x x x x x x x x x x x x . . . . ]   capacity = power of two
//!             └──── items in flight ───┘
//! ```
//!
//! `head` and `tail` count forever (wrapping `usize`); the slot of a position is
//! `pos & mask`. Each side keeps a private copy of the other side's index and re-reads the
//! shared one only when its copy says the ring is full (producer) or empty (consumer), so
//! a burst costs two shared-cache-line touches, not two per item. Head and tail sit on
//! separate cache lines.
//!
//! Verbs follow DPDK: `_burst` moves as many as fit and returns the count.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// One slot: std's `UnsafeCell`, or loom's under the model checker (which then checks
/// every access against the happens-before order the atomics give).
struct Slot<T> {
    #[cfg(not(loom))]
    cell: std::cell::UnsafeCell<MaybeUninit<T>>,
    #[cfg(loom)]
    cell: loom::cell::UnsafeCell<MaybeUninit<T>>,
}

impl<T> Slot<T> {
    fn new() -> Slot<T> {
        Slot {
            #[cfg(not(loom))]
            cell: std::cell::UnsafeCell::new(MaybeUninit::uninit()),
            #[cfg(loom)]
            cell: loom::cell::UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// # Safety
    /// The caller is the only one touching the slot now, and it holds no item.
    unsafe fn put(&self, item: T) {
        #[cfg(not(loom))]
        // SAFETY: forwarded from the caller's contract.
        unsafe {
            (*self.cell.get()).write(item);
        }
        #[cfg(loom)]
        self.cell.with_mut(|p| {
            // SAFETY: forwarded from the caller's contract.
            unsafe { (*p).write(item) };
        });
    }

    /// # Safety
    /// The caller is the only one touching the slot now, and it holds an item, which
    /// it takes (the slot is empty afterwards).
    unsafe fn take(&self) -> T {
        #[cfg(not(loom))]
        // SAFETY: forwarded from the caller's contract.
        return unsafe { (*self.cell.get()).assume_init_read() };
        #[cfg(loom)]
        // SAFETY: forwarded from the caller's contract.
        return self.cell.with(|p| unsafe { (*p).assume_init_read() });
    }
}

/// Aligns a value to its own cache line (128 bytes covers adjacent-line prefetch).
#[repr(align(128))]
struct Line<T>(T);

struct Shared<T> {
    slots: Box<[Slot<T>]>,
    mask: usize,
    /// Next position the consumer reads. Written by the consumer only.
    head: Line<AtomicUsize>,
    /// Next position the producer writes. Written by the producer only.
    tail: Line<AtomicUsize>,
}

// SAFETY: a slot is written by the producer only while it is outside [head, tail) and read
// by the consumer only while inside; the Release/Acquire pairs on head and tail hand each
// slot over. `T: Send` because items move between threads.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Shared<T> {}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self` means both ends are gone; nothing races.
        let mut h = self.head.0.load(Ordering::Relaxed);
        let t = self.tail.0.load(Ordering::Relaxed);
        while h != t {
            // SAFETY: slots in [head, tail) hold initialised items; we own the ring now.
            drop(unsafe { self.slots[h & self.mask].take() });
            h = h.wrapping_add(1);
        }
    }
}

/// The writing end of a ring.
pub struct Producer<T> {
    ring: Arc<Shared<T>>,
    tail: usize,
    head_cache: usize,
}

/// The reading end of a ring.
pub struct Consumer<T> {
    ring: Arc<Shared<T>>,
    head: usize,
    tail_cache: usize,
}

/// Makes a ring of at least `capacity` slots (rounded up to a power of two).
pub fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let cap = capacity.max(2).next_power_of_two();
    let slots = (0..cap).map(|_| Slot::new()).collect();
    let shared = Arc::new(Shared {
        slots,
        mask: cap - 1,
        head: Line(AtomicUsize::new(0)),
        tail: Line(AtomicUsize::new(0)),
    });
    (
        Producer {
            ring: shared.clone(),
            tail: 0,
            head_cache: 0,
        },
        Consumer {
            ring: shared,
            head: 0,
            tail_cache: 0,
        },
    )
}

impl<T> Producer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    fn room(&mut self) -> usize {
        let cap = self.capacity();
        let mut room = cap - self.tail.wrapping_sub(self.head_cache);
        if room == 0 {
            // Acquire: pairs with the consumer's Release store of head, so the slots it
            // freed are no longer being read when we overwrite them.
            self.head_cache = self.ring.head.0.load(Ordering::Acquire);
            room = cap - self.tail.wrapping_sub(self.head_cache);
        }
        room
    }

    /// Enqueues one item; gives it back when the ring is full.
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.room() == 0 {
            return Err(item);
        }
        self.write(item);
        self.publish();
        Ok(())
    }

    fn write(&mut self, item: T) {
        let slot = &self.ring.slots[self.tail & self.ring.mask];
        // SAFETY: the slot is outside [head, tail) (room() > 0), so the consumer does not
        // read it, and only this producer writes.
        unsafe { slot.put(item) };
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // Release: pairs with the consumer's Acquire load of tail; the items written
        // above are visible before the new tail is.
        self.ring.tail.0.store(self.tail, Ordering::Release);
    }

    /// Moves as many items as fit from the front of `items`; returns how many moved.
    /// The rest stay in `items`.
    pub fn push_burst(&mut self, items: &mut Vec<T>) -> usize {
        let mut room = self.room();
        if room < items.len() {
            // One refresh of head may free more room.
            self.head_cache = self.ring.head.0.load(Ordering::Acquire);
            room = self.capacity() - self.tail.wrapping_sub(self.head_cache);
        }
        let n = room.min(items.len());
        for item in items.drain(..n) {
            self.write(item);
        }
        if n > 0 {
            self.publish();
        }
        n
    }

    /// Whether the consumer has items waiting (as far as this side can tell).
    pub fn is_empty(&self) -> bool {
        self.ring.head.0.load(Ordering::Acquire) == self.tail
    }
}

impl<T> Consumer<T> {
    /// Slots in the ring.
    pub fn capacity(&self) -> usize {
        self.ring.mask + 1
    }

    fn available(&mut self) -> usize {
        let mut n = self.tail_cache.wrapping_sub(self.head);
        if n == 0 {
            // Acquire: pairs with the producer's Release store of tail; the items are
            // fully written before we read them.
            self.tail_cache = self.ring.tail.0.load(Ordering::Acquire);
            n = self.tail_cache.wrapping_sub(self.head);
        }
        n
    }

    /// Dequeues one item.
    pub fn pop(&mut self) -> Option<T> {
        if self.available() == 0 {
            return None;
        }
        let item = self.read();
        self.release();
        Some(item)
    }

    fn read(&mut self) -> T {
        let slot = &self.ring.slots[self.head & self.ring.mask];
        // SAFETY: the slot is inside [head, tail): initialised by the producer, published
        // by its Release of tail (observed by our Acquire), and read exactly once here.
        let item = unsafe { slot.take() };
        self.head = self.head.wrapping_add(1);
        item
    }

    fn release(&self) {
        // Release: pairs with the producer's Acquire load of head; our reads of the slots
        // are done before the producer may overwrite them.
        self.ring.head.0.store(self.head, Ordering::Release);
    }

    /// Moves up to `max` items into `out`; returns how many moved.
    pub fn pop_burst(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let n = self.available().min(max);
        for _ in 0..n {
            let item = self.read();
            out.push(item);
        }
        if n > 0 {
            self.release();
        }
        n
    }

    /// Whether nothing is waiting, re-reading the producer's index.
    pub fn is_empty(&self) -> bool {
        self.ring.tail.0.load(Ordering::Acquire) == self.head
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn empty_ring_yields_nothing() {
        let (_p, mut c) = ring::<u32>(4);
        assert!(c.is_empty());
        assert_eq!(c.pop(), None);
        let mut out = Vec::new();
        assert_eq!(c.pop_burst(&mut out, 32), 0);
    }

    #[test]
    fn exactly_full_then_refuses() {
        let (mut p, mut c) = ring::<u32>(4);
        assert_eq!(p.capacity(), 4);
        let mut items = vec![1, 2, 3, 4, 5, 6];
        assert_eq!(p.push_burst(&mut items), 4);
        assert_eq!(items, vec![5, 6]);
        assert_eq!(p.push(9), Err(9));
        let mut out = Vec::new();
        assert_eq!(c.pop_burst(&mut out, 32), 4);
        assert_eq!(out, vec![1, 2, 3, 4]);
        assert!(p.push(5).is_ok());
        assert_eq!(c.pop(), Some(5));
    }

    #[test]
    fn wraps_around_many_times_in_order() {
        let (mut p, mut c) = ring::<u64>(8);
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        let mut out = Vec::new();
        for round in 0..1000usize {
            let mut items: Vec<u64> = (0..(round % 7 + 1) as u64).map(|i| next_in + i).collect();
            let want = items.len();
            let moved = p.push_burst(&mut items);
            next_in += moved as u64;
            assert!(moved <= want);
            out.clear();
            c.pop_burst(&mut out, round % 5 + 1);
            for v in &out {
                assert_eq!(*v, next_out);
                next_out += 1;
            }
        }
        out.clear();
        c.pop_burst(&mut out, 100);
        next_out += out.len() as u64;
        assert_eq!(next_in, next_out);
    }

    #[test]
    fn index_wrap_of_usize_is_harmless() {
        let (mut p, mut c) = ring::<u32>(4);
        // Start both sides near usize::MAX to cross the integer wrap.
        let start = usize::MAX - 2;
        p.tail = start;
        p.head_cache = start;
        p.ring.tail.0.store(start, Ordering::Relaxed);
        p.ring.head.0.store(start, Ordering::Relaxed);
        c.head = start;
        c.tail_cache = start;
        for i in 0..20 {
            assert!(p.push(i).is_ok());
            assert!(p.push(i + 100).is_ok());
            assert_eq!(c.pop(), Some(i));
            assert_eq!(c.pop(), Some(i + 100));
        }
    }

    #[test]
    fn leftover_items_are_dropped_with_the_ring() {
        let marker = Arc::new(());
        let (mut p, c) = ring::<Arc<()>>(4);
        assert!(p.push(marker.clone()).is_ok());
        assert!(p.push(marker.clone()).is_ok());
        assert_eq!(Arc::strong_count(&marker), 3);
        drop(p);
        drop(c);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    #[test]
    fn two_threads_move_a_million_items_in_order() {
        let (mut p, mut c) = ring::<u64>(64);
        const N: u64 = if cfg!(miri) { 2_000 } else { 1_000_000 };
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                if p.push(i).is_ok() {
                    i += 1;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        let mut expect = 0;
        let mut out = Vec::with_capacity(32);
        while expect < N {
            out.clear();
            c.pop_burst(&mut out, 32);
            for v in &out {
                assert_eq!(*v, expect);
                expect += 1;
            }
        }
        t.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" cargo test -p switch --release --lib ring::loom_tests`:
    //! every interleaving and memory order of one producer and one consumer; loom also
    //! checks that no slot is touched by both at once.
    use super::ring;
    use loom::thread;

    #[test]
    fn items_cross_in_order_through_a_wrapping_ring() {
        loom::model(|| {
            let (mut p, mut c) = ring::<u32>(2);
            let t = thread::spawn(move || {
                let mut next = 0u32;
                let mut batch = Vec::new();
                while next < 3 {
                    batch.clear();
                    batch.extend(next..3);
                    let n = p.push_burst(&mut batch);
                    next += n as u32;
                    if n == 0 {
                        thread::yield_now();
                    }
                }
            });
            let mut got = Vec::new();
            let mut out = Vec::new();
            while got.len() < 3 {
                out.clear();
                if c.pop_burst(&mut out, 2) == 0 {
                    thread::yield_now();
                }
                got.extend_from_slice(&out);
            }
            t.join().unwrap();
            assert_eq!(got, vec![0, 1, 2]);
        });
    }

    #[test]
    fn items_left_in_the_ring_are_dropped_once() {
        loom::model(|| {
            let marker = loom::sync::Arc::new(());
            let (mut p, mut c) = ring::<loom::sync::Arc<()>>(2);
            let m = marker.clone();
            let t = thread::spawn(move || {
                let _ = p.push(m.clone());
                let _ = p.push(m);
            });
            let first = c.pop();
            t.join().unwrap();
            drop(first);
            drop(c);
            assert_eq!(loom::sync::Arc::strong_count(&marker), 1);
        });
    }
}
