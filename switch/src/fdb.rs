//! The forwarding database of a learning hub: which port a MAC address was last seen
//! on, shared by every worker that forwards for the hub, without locks.
//!
//! ```text
//!  open addressing, linear probing (at most PROBES slots), a slot of 16 bytes (four
//!  to a cache line, so a lookup costs one line, not one per field):
//!   key     AtomicU64   VALID | VLAN << 48 | MAC   (0 = never used; never removed)
//!   member  AtomicU32   the netdev it was seen on (its first queue's port id)
//!   stamp   AtomicU32   ms since the table's epoch of its last frame (0 = flushed)
//! ```
//!
//! An entry is live while its stamp is younger than the ageing time; a dead slot is
//! reused by the next address that probes past it (so chains never break and deletion
//! is a store of stamp 0). A writer changing a slot's address or port claims it first
//! (CAS of its key to key | BUSY: one writer at a time, readers pass it by), writes
//! member and stamp, and publishes the key (Release). A reader loads key (Acquire),
//! stamp, member, and the key again: a slot claimed or handed to another address
//! meanwhile reads as not found — at worst one frame floods, never goes to another
//! address's port (the model in `loom_tests` found the race without the claim). Stamps are refreshed at most every
//! [`REFRESH_MS`], so a steady flow does not write a shared cache line per frame.

#[cfg(loom)]
use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::topology::PortId;
use crate::wire::Mac;

/// Slots looked at per lookup or insertion.
pub const PROBES: usize = 16;
/// Default ageing time (IEEE 802.1D's 300 s).
pub const DEFAULT_AGEING: Duration = Duration::from_secs(300);
/// Default bound on entries.
pub const DEFAULT_SIZE: usize = 8192;
/// Largest bound on entries.
pub const MAX_SIZE: usize = 1 << 20;
/// Tables larger than this many bytes have a burst's slots prefetched.
pub const PREFETCH_ABOVE: usize = 512 << 10;
/// How stale a stamp may get before a frame rewrites it.
pub const REFRESH_MS: u32 = 100;

const VALID: u64 = 1 << 63;
/// A writer is changing the slot (its member and stamp): readers pass it by, other
/// writers leave it alone.
const BUSY: u64 = 1 << 62;

/// One live entry, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The address.
    pub mac: Mac,
    /// Its VLAN (0 on a hub without VLANs).
    pub vlan: u16,
    /// Where it was seen (the netdev's first queue).
    pub member: PortId,
    /// Since its last frame.
    pub age: Duration,
}

/// One entry's place: its fields together, so that one cache line holds them.
#[derive(Debug)]
#[repr(C, align(16))]
struct Slot {
    key: AtomicU64,
    member: AtomicU32,
    stamp: AtomicU32,
}

/// A learning hub's table.
#[derive(Debug)]
pub struct Fdb {
    slots: Box<[Slot]>,
    mask: usize,
    size: usize,
    ageing_ms: u32,
    epoch: Instant,
    overflow: AtomicU64,
    moves: AtomicU64,
}

/// The key of `mac` on VLAN `vid` (0 on a hub without VLANs).
fn key(mac: &Mac, vid: u16) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(mac);
    u64::from_be_bytes(b) | (u64::from(vid & 0x0fff) << 48) | VALID
}

fn slot_hash(k: u64) -> usize {
    // Fibonacci hashing: the high bits of a multiply spread sequential MACs well.
    (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize
}

impl Fdb {
    /// A table holding up to about `size` addresses (its slots: twice that, rounded up
    /// to a power of two), entries living `ageing` after their last frame.
    pub fn new(size: usize, ageing: Duration) -> Fdb {
        let size = size.clamp(1, MAX_SIZE);
        Fdb::with_slots(size, (2 * size).next_power_of_two().max(64), ageing)
    }

    /// A table of exactly `slots` (a power of two) slots.
    fn with_slots(size: usize, slots: usize, ageing: Duration) -> Fdb {
        Fdb {
            slots: (0..slots)
                .map(|_| Slot {
                    key: AtomicU64::new(0),
                    member: AtomicU32::new(0),
                    stamp: AtomicU32::new(0),
                })
                .collect(),
            mask: slots - 1,
            size,
            // Ages above half the clock's range read as "after now" (see `age`).
            ageing_ms: u32::try_from(ageing.as_millis())
                .unwrap_or(u32::MAX)
                .clamp(1, u32::MAX / 2),
            epoch: Instant::now(),
            overflow: AtomicU64::new(0),
            moves: AtomicU64::new(0),
        }
    }

    /// The entry bound it was made with.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Its ageing time.
    pub fn ageing(&self) -> Duration {
        Duration::from_millis(u64::from(self.ageing_ms))
    }

    /// `now` in the table's clock (never 0, which means "flushed").
    #[inline]
    pub fn stamp(&self, now: Instant) -> u32 {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        (ms as u32).max(1)
    }

    /// How long ago `stamp` was at `now`: 0 for a stamp after `now` (another worker's
    /// clock read a little later than ours, or a refresh while a report reads).
    #[inline]
    fn age(stamp: u32, now: u32) -> u32 {
        let d = now.wrapping_sub(stamp);
        if d > u32::MAX / 2 {
            0
        } else {
            d
        }
    }

    #[inline]
    fn live(&self, stamp: u32, now: u32) -> bool {
        stamp != 0 && Self::age(stamp, now) < self.ageing_ms
    }

    /// Whether the table is too large for a core's private caches, so that a burst's
    /// slots are worth prefetching ([`Fdb::prefetch`]); a small one is there already.
    #[inline]
    pub fn prefetches(&self) -> bool {
        self.slots.len() * std::mem::size_of::<Slot>() > PREFETCH_ABOVE
    }

    /// Asks the CPU to bring the first slot `mac` on VLAN `vid` probes into cache: a
    /// burst's lookups, prefetched before any of them runs, wait for memory together
    /// instead of one after another (a large table does not fit the caches).
    #[inline]
    #[allow(unsafe_code)]
    pub fn prefetch(&self, mac: &Mac, vid: u16) {
        let i = slot_hash(key(mac, vid)) & self.mask;
        #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
        {
            let p: *const Slot = &self.slots[i];
            // SAFETY: a prefetch is a hint: it reads nothing into the program, cannot
            // fault, and `p` points into our own live slots anyway; SSE (which provides
            // it) is part of every x86_64 CPU.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
            };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
        let _ = i;
    }

    /// Where `mac` lives on VLAN `vid`, if it was seen within the ageing time.
    #[inline]
    pub fn lookup(&self, mac: &Mac, vid: u16, now: u32) -> Option<PortId> {
        let k = key(mac, vid);
        let mut i = slot_hash(k) & self.mask;
        for _ in 0..PROBES {
            // Acquire: pairs with the Release store of the key's stamp below.
            let cur = self.slots[i].key.load(Ordering::Acquire);
            if cur == k {
                let st = self.slots[i].stamp.load(Ordering::Acquire);
                if !self.live(st, now) {
                    return None;
                }
                let m = self.slots[i].member.load(Ordering::Relaxed);
                // Still ours? A slot handed over after our key load has a new key by
                // now (its CAS comes before the stamp we acquired).
                return (self.slots[i].key.load(Ordering::Acquire) == k).then_some(m);
            }
            if cur == 0 {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Notes that a frame from `mac` on VLAN `vid` came in on `member`.
    #[inline]
    pub fn learn(&self, mac: &Mac, vid: u16, member: PortId, now: u32) {
        let k = key(mac, vid);
        let mut i = slot_hash(k) & self.mask;
        let mut reuse = None;
        for _ in 0..PROBES {
            let cur = self.slots[i].key.load(Ordering::Acquire);
            if cur == k {
                let st = self.slots[i].stamp.load(Ordering::Relaxed);
                if self.slots[i].member.load(Ordering::Relaxed) != member {
                    // Moved (or came back after ageing out elsewhere).
                    if self.claim(i, k) {
                        self.release(i, k, member, now);
                        self.moves.fetch_add(1, Ordering::Relaxed);
                    }
                } else if !self.live(st, now) || now.wrapping_sub(st) >= REFRESH_MS {
                    // Only the time: a lost race here costs a stamp, never a port.
                    self.slots[i].stamp.store(now, Ordering::Release);
                }
                return;
            }
            if cur == k | BUSY {
                // Another worker is updating this very address: its frame decides.
                return;
            }
            if cur == 0 {
                reuse.get_or_insert((i, 0));
                break;
            }
            if reuse.is_none()
                && cur & BUSY == 0
                && !self.live(self.slots[i].stamp.load(Ordering::Relaxed), now)
            {
                reuse = Some((i, cur));
            }
            i = (i + 1) & self.mask;
        }
        let Some((slot, old)) = reuse else {
            self.overflow.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.claim(slot, old) {
            self.release(slot, k, member, now);
        }
        // Lost the race: another worker took the slot; the next frame learns again.
    }

    /// Takes slot `i` from key `old` for writing: one writer at a time, and no reader
    /// answers from it meanwhile.
    fn claim(&self, i: usize, old: u64) -> bool {
        self.slots[i]
            .key
            .compare_exchange(old, old | BUSY, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Fills a claimed slot and publishes it under key `k`.
    fn release(&self, i: usize, k: u64, member: PortId, now: u32) {
        self.slots[i].member.store(member, Ordering::Relaxed);
        self.slots[i].stamp.store(now, Ordering::Relaxed);
        // Release: member and stamp are written before a reader sees the key.
        self.slots[i].key.store(k, Ordering::Release);
    }

    /// Forgets every address seen on `member` (its port went down or away).
    pub fn flush_member(&self, member: PortId) {
        for i in 0..=self.mask {
            if self.slots[i].member.load(Ordering::Relaxed) == member {
                self.slots[i].stamp.store(0, Ordering::Release);
            }
        }
    }

    /// Forgets everything.
    pub fn flush(&self) {
        for s in self.slots.iter() {
            s.stamp.store(0, Ordering::Release);
        }
    }

    /// The live entries.
    pub fn entries(&self, now: Instant) -> Vec<Entry> {
        let now_ms = self.stamp(now);
        let mut out = Vec::new();
        for i in 0..=self.mask {
            let k = self.slots[i].key.load(Ordering::Acquire);
            let st = self.slots[i].stamp.load(Ordering::Acquire);
            if k == 0 || k & BUSY != 0 || !self.live(st, now_ms) {
                continue;
            }
            let b = k.to_be_bytes();
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&b[2..]);
            out.push(Entry {
                mac,
                vlan: u16::from_be_bytes([b[0], b[1]]) & 0x0fff,
                member: self.slots[i].member.load(Ordering::Relaxed),
                age: Duration::from_millis(u64::from(Self::age(st, now_ms))),
            });
        }
        out
    }

    /// Addresses that found no slot (the table was full around their hash).
    pub fn overflow(&self) -> u64 {
        self.overflow.load(Ordering::Relaxed)
    }

    /// Addresses that moved to another port.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }
}

#[cfg(loom)]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" cargo test -p switch --release --lib fdb::loom_tests`
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const A: Mac = [2, 0, 0, 0, 0, 0xa];
    const B: Mac = [2, 0, 0, 0, 0, 0xb];
    const C: Mac = [2, 0, 0, 0, 0, 0xc];

    /// One slot, so every address collides: A's dead entry is taken over by B and by C
    /// at once while a reader looks both up. A lookup answers its own address's port or
    /// nothing, never another's.
    #[test]
    fn a_slot_changing_hands_never_answers_for_another_address() {
        loom::model(|| {
            let f = Arc::new(Fdb::with_slots(1, 1, Duration::from_millis(100)));
            f.learn(&A, 0, 1, 1);
            f.flush_member(1);
            let (f1, f2) = (f.clone(), f.clone());
            let tb = thread::spawn(move || f1.learn(&B, 0, 2, 5));
            let tc = thread::spawn(move || f2.learn(&C, 0, 3, 5));
            let b = f.lookup(&B, 0, 6);
            let c = f.lookup(&C, 0, 6);
            assert!(b.is_none() || b == Some(2), "B answered {b:?}");
            assert!(c.is_none() || c == Some(3), "C answered {c:?}");
            tb.join().unwrap();
            tc.join().unwrap();
            let (b, c) = (f.lookup(&B, 0, 7), f.lookup(&C, 0, 7));
            assert!(b.is_none() || b == Some(2), "B answered {b:?} after");
            assert!(c.is_none() || c == Some(3), "C answered {c:?} after");
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn mac(n: u32) -> Mac {
        let b = n.to_be_bytes();
        [0x02, 0, b[0], b[1], b[2], b[3]]
    }

    #[test]
    fn learns_moves_and_ages() {
        let f = Fdb::new(100, Duration::from_millis(1000));
        assert_eq!(f.lookup(&mac(1), 0, 10), None);
        f.learn(&mac(1), 0, 7, 10);
        assert_eq!(f.lookup(&mac(1), 0, 20), Some(7));
        f.learn(&mac(1), 0, 9, 30);
        assert_eq!(
            f.lookup(&mac(1), 0, 40),
            Some(9),
            "moved on its first frame"
        );
        assert_eq!(f.moves(), 1);
        assert_eq!(f.lookup(&mac(1), 0, 30 + 999), Some(9));
        assert_eq!(f.lookup(&mac(1), 0, 30 + 1000), None, "aged out");
        // A frame brings it back.
        f.learn(&mac(1), 0, 9, 2000);
        assert_eq!(f.lookup(&mac(1), 0, 2001), Some(9));
    }

    #[test]
    fn a_stamp_a_little_after_now_is_young_not_dead() {
        // Worker B stamps at 1000 while worker A's breath began at 990: for A the entry
        // is live (and its slot never handed to another address).
        let f = Fdb::new(100, Duration::from_millis(500));
        f.learn(&mac(1), 0, 7, 1000);
        assert_eq!(f.lookup(&mac(1), 0, 990), Some(7));
        f.learn(&mac(2), 0, 8, 990);
        assert_eq!(f.lookup(&mac(1), 0, 991), Some(7), "not overwritten");
        let e = f.entries(f.epoch + Duration::from_millis(995));
        assert_eq!(
            e.len(),
            2,
            "a report reading while stamps move counts every one"
        );
        assert!(e.iter().all(|e| e.age <= Duration::from_millis(5)));
    }

    #[test]
    fn one_address_on_two_vlans_is_two_entries() {
        let f = Fdb::new(100, DEFAULT_AGEING);
        f.learn(&mac(1), 10, 3, 5);
        f.learn(&mac(1), 20, 4, 5);
        assert_eq!(f.lookup(&mac(1), 10, 6), Some(3));
        assert_eq!(f.lookup(&mac(1), 20, 6), Some(4));
        assert_eq!(f.lookup(&mac(1), 0, 6), None);
        assert_eq!(f.moves(), 0, "not a move: another VLAN");
        let mut e: Vec<(u16, PortId)> = f
            .entries(f.epoch + Duration::from_millis(6))
            .into_iter()
            .map(|e| (e.vlan, e.member))
            .collect();
        e.sort_unstable();
        assert_eq!(e, vec![(10, 3), (20, 4)]);
    }

    #[test]
    fn flushes_by_member_or_all() {
        let f = Fdb::new(100, DEFAULT_AGEING);
        for n in 0..10 {
            f.learn(&mac(n), 0, n % 2, 5);
        }
        f.flush_member(1);
        for n in 0..10 {
            assert_eq!(f.lookup(&mac(n), 0, 6), (n % 2 == 0).then_some(0), "{n}");
        }
        assert_eq!(f.entries(f.epoch + Duration::from_millis(6)).len(), 5);
        f.flush();
        assert!(f.entries(f.epoch + Duration::from_millis(6)).is_empty());
        // Flushed slots are reused; the chains still find what follows them.
        for n in 0..10 {
            f.learn(&mac(n), 0, 3, 7);
        }
        assert!((0..10).all(|n| f.lookup(&mac(n), 0, 8) == Some(3)));
    }

    #[test]
    #[cfg_attr(miri, ignore = "too slow under Miri (safe code: atomics only)")]
    fn a_full_table_counts_what_it_cannot_hold() {
        // 64 slots: at most 64 addresses, fewer where probes run out.
        let f = Fdb::new(1, DEFAULT_AGEING);
        for n in 0..1000 {
            f.learn(&mac(n), 0, 1, 5);
        }
        let held = f.entries(f.epoch + Duration::from_millis(5)).len() as u64;
        assert!(held <= 64 && held > 0, "{held}");
        assert_eq!(held + f.overflow(), 1000);
        // Everything held is found.
        let found = (0..1000)
            .filter(|&n| f.lookup(&mac(n), 0, 6).is_some())
            .count() as u64;
        assert_eq!(found, held);
    }

    #[test]
    #[cfg_attr(miri, ignore = "too slow under Miri (safe code: atomics only)")]
    fn a_hundred_thousand_addresses_fit_a_table_sized_for_them() {
        let f = Fdb::new(100_000, DEFAULT_AGEING);
        for n in 0..100_000 {
            f.learn(&mac(n), 0, n % 32, 5);
        }
        assert_eq!(f.overflow(), 0);
        assert!((0..100_000).all(|n| f.lookup(&mac(n), 0, 6) == Some(n % 32)));
    }

    #[test]
    #[cfg_attr(miri, ignore = "too slow under Miri (safe code: atomics only)")]
    fn workers_learning_at_once_agree() {
        let f = std::sync::Arc::new(Fdb::new(4096, DEFAULT_AGEING));
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for round in 0..50u32 {
                        for n in 0..1000 {
                            // Each thread owns a quarter of the addresses; all look up all.
                            if n % 4 == t {
                                f.learn(&mac(n), 0, t, 10 + round);
                            }
                            let _ = f.lookup(&mac(n), 0, 10 + round);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(f.overflow(), 0);
        assert!((0..1000).all(|n| f.lookup(&mac(n), 0, 100) == Some(n % 4)));
    }
}
