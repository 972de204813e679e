//! The sleep/wake protocol of a worker: the one place that decides whether a worker may
//! sleep and whether a producer must wake it.
//!
//! ```text
//!  producer (another worker, a waker-fed port, the control thread)
//!     publish the item (ring tail Release / queue push)
//!     [kick: kicked = true]                 ← only sources the sleeper cannot re-check
//!     fence(SeqCst) ─────────────┐
//!     sleeping? → write eventfd  │ the two fences are totally ordered: either the
//!                                │ producer sees `sleeping`, or the sleeper sees the
//!  worker about to sleep          │ item (or `kicked`) when it re-checks
//!     sleeping = true            │
//!     fence(SeqCst) ─────────────┘
//!     kicked? any inbound ring non-empty? → stay awake
//!     otherwise wait in io_uring (the eventfd read is armed)
//!     sleeping = false
//! ```
//!
//! A Release store followed by a load of the other flag is not enough: the store may
//! still sit in the store buffer when the load runs (store→load reordering, which x86
//! allows), so both sides can miss each other and a frame waits for the sleep timeout.
//! The SeqCst fences forbid exactly that. Producers pay one fence per burst, not per
//! packet; a busy worker pays nothing (it never raises `sleeping`).
//!
//! Sources fall in two kinds. Inbound rings the sleeper re-checks itself, so their
//! producers only [`Bell::notify`]. Queues fed from outside that the worker only finds
//! by polling its ports (in-memory and shared-memory ports, commands) [`Bell::kick`]:
//! the flag tells the sleeper "poll everything once more". The worker clears it with
//! [`Bell::take_kick`] before it polls, so a kick after that is seen on the way to sleep.
#![allow(unsafe_code)]

#[cfg(loom)]
use loom::sync::atomic::{fence, AtomicBool, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{fence, AtomicBool, Ordering};

/// The flags of the protocol, without the descriptor (so a model test can check them).
#[derive(Debug)]
pub struct Flags {
    sleeping: AtomicBool,
    kicked: AtomicBool,
}

impl Default for Flags {
    fn default() -> Flags {
        Flags {
            sleeping: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
        }
    }
}

impl Flags {
    /// Producer side, after publishing an item the sleeper re-checks itself: whether
    /// the sleeper must be woken.
    #[inline]
    pub fn notify(&self) -> bool {
        // SeqCst fence: pairs with the one in `prepare_sleep` (see the module diagram).
        fence(Ordering::SeqCst);
        self.sleeping.load(Ordering::Relaxed)
    }

    /// Producer side, after publishing an item the sleeper finds only by polling its
    /// ports: whether the sleeper must be woken.
    #[inline]
    pub fn kick(&self) -> bool {
        // Release: pairs with the Acquire swap in `take_kick`, so a worker that clears
        // this kick also sees the item queued before it (a Relaxed store here lets the
        // worker clear the kick, miss the item, and sleep: the model test found it).
        // Ordered before the load in `notify` by its SeqCst fence.
        self.kicked.store(true, Ordering::Release);
        self.notify()
    }

    /// Worker side, before polling its ports: clears a kick; true when there was one.
    #[inline]
    pub fn take_kick(&self) -> bool {
        // Cheap when nothing was kicked: a load of a line that stays shared.
        // Acquire: the queue item the kicker published before its kick is visible to
        // the polling that follows.
        self.kicked.load(Ordering::Relaxed) && self.kicked.swap(false, Ordering::Acquire)
    }

    /// Worker side: announces the sleep, then re-checks every source. Returns true when
    /// the worker may sleep (then it must call [`Flags::woke`] afterwards either way).
    #[inline]
    pub fn prepare_sleep(&self, rings_empty: impl FnOnce() -> bool) -> bool {
        self.sleeping.store(true, Ordering::Relaxed);
        // SeqCst fence: pairs with the producers' (see the module diagram).
        fence(Ordering::SeqCst);
        !self.kicked.load(Ordering::Relaxed) && rings_empty()
    }

    /// Worker side: awake again.
    #[inline]
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }
}

/// A worker's doorbell: the flags and the eventfd its sleep waits on.
#[derive(Debug)]
pub struct Bell {
    flags: Flags,
    fd: std::os::fd::OwnedFd,
}

impl Bell {
    /// Makes the eventfd.
    pub fn new() -> std::io::Result<Bell> {
        use std::os::fd::FromRawFd;
        // Blocking on purpose: io_uring completes a read of a non-blocking file with
        // EAGAIN at once instead of waiting for it to become readable.
        // SAFETY: eventfd takes no pointers; a negative return is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Bell {
            flags: Flags::default(),
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The protocol's flags (worker side).
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// The eventfd, for the worker's armed read.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// After pushing into a ring the worker re-checks before sleeping.
    #[inline]
    pub fn notify(&self) {
        if self.flags.notify() {
            self.ring();
        }
    }

    /// After feeding anything else the worker finds only by polling (a port's queue,
    /// a command).
    #[inline]
    pub fn kick(&self) {
        if self.flags.kick() {
            self.ring();
        }
    }

    /// Writes the eventfd unconditionally (shutdown, and the wake-read retirement).
    pub fn ring(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full counter
        // (EAGAIN) already means "awake", so the result is ignored.
        let _ = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    //! The same protocol on real threads (and under Miri, whose weak-memory emulation
    //! reorders what the hardware may): a sleeper that goes to sleep without the item
    //! must have been rung.
    use super::Flags;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn no_item_is_slept_on_without_a_ring() {
        let rounds = if cfg!(miri) { 50 } else { 20_000 };
        for _ in 0..rounds {
            let flags = Arc::new(Flags::default());
            let tail = Arc::new(AtomicUsize::new(0));
            let (f, t) = (flags.clone(), tail.clone());
            let producer = std::thread::spawn(move || {
                t.store(1, Ordering::Release);
                f.kick()
            });
            flags.take_kick();
            let slept = flags.prepare_sleep(|| tail.load(Ordering::Acquire) == 0);
            let rang = producer.join().unwrap();
            flags.woke();
            assert!(
                !slept || rang,
                "item published, sleeper asleep, nobody rang"
            );
        }
    }

    #[test]
    fn the_bell_rings_its_eventfd() {
        let bell = super::Bell::new().unwrap();
        bell.ring();
        let mut v = 0u64;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&bell.fd());
        // SAFETY: reads 8 bytes into a live u64 from our own eventfd (counter is 1).
        let n = unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" cargo test -p switch --release --lib wake::loom_tests`
    use super::Flags;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::sync::Arc;
    use loom::thread;

    /// A ring producer and a sleeper: if the sleeper goes to sleep without the item,
    /// the producer must have decided to ring the bell.
    #[test]
    fn a_ring_item_is_never_slept_on() {
        loom::model(|| {
            let flags = Arc::new(Flags::default());
            let tail = Arc::new(AtomicUsize::new(0));
            let (f, t) = (flags.clone(), tail.clone());
            let producer = thread::spawn(move || {
                t.store(1, Ordering::Release);
                f.notify()
            });
            let slept = flags.prepare_sleep(|| tail.load(Ordering::Acquire) == 0);
            // Asleep, the worker stays asleep until rung (or its timeout): it wakes only
            // after the producer is done.
            let rang = producer.join().unwrap();
            flags.woke();
            assert!(
                !slept || rang,
                "frame published, sleeper asleep, nobody rang"
            );
        });
    }

    /// A waker-fed queue: the sleeper polls (take_kick, then the queue), then sleeps.
    #[test]
    fn a_kicked_item_is_never_slept_on() {
        loom::model(|| {
            let flags = Arc::new(Flags::default());
            let queue = Arc::new(AtomicUsize::new(0));
            let (f, q) = (flags.clone(), queue.clone());
            let producer = thread::spawn(move || {
                q.store(1, Ordering::Release);
                f.kick()
            });
            flags.take_kick();
            let seen = queue.load(Ordering::Acquire) == 1;
            // The worker re-checks only its rings (none here), not the port's queue.
            let slept = flags.prepare_sleep(|| true);
            let rang = producer.join().unwrap();
            flags.woke();
            assert!(
                seen || !slept || rang,
                "item queued, sleeper asleep, nobody rang"
            );
        });
    }

    /// Two producers into two rings, one sleeper.
    #[test]
    fn two_producers_two_rings() {
        loom::model(|| {
            let flags = Arc::new(Flags::default());
            let a = Arc::new(AtomicUsize::new(0));
            let b = Arc::new(AtomicUsize::new(0));
            let spawn = |ring: Arc<AtomicUsize>| {
                let f = flags.clone();
                thread::spawn(move || {
                    ring.store(1, Ordering::Release);
                    f.notify()
                })
            };
            let pa = spawn(a.clone());
            let pb = spawn(b.clone());
            let slept = flags
                .prepare_sleep(|| a.load(Ordering::Acquire) == 0 && b.load(Ordering::Acquire) == 0);
            let (ra, rb) = (pa.join().unwrap(), pb.join().unwrap());
            flags.woke();
            // Asleep means neither item was seen, so each producer must ring.
            assert!(!slept || (ra && rb));
        });
    }

    /// The handshake this module replaced (Release store of the tail, then a load of
    /// `sleeping`; the sleeper's store then its re-check, no fences): the model finds
    /// the lost wake-up, which is what keeps the fences above honest.
    #[test]
    #[should_panic(expected = "nobody rang")]
    fn the_fenceless_handshake_loses_a_wakeup() {
        use loom::sync::atomic::AtomicBool;
        loom::model(|| {
            let sleeping = Arc::new(AtomicBool::new(false));
            let tail = Arc::new(AtomicUsize::new(0));
            let (s, t) = (sleeping.clone(), tail.clone());
            let producer = thread::spawn(move || {
                t.store(1, Ordering::Release);
                s.load(Ordering::SeqCst)
            });
            sleeping.store(true, Ordering::SeqCst);
            let slept = tail.load(Ordering::Acquire) == 0;
            let rang = producer.join().unwrap();
            assert!(
                !slept || rang,
                "frame published, sleeper asleep, nobody rang"
            );
        });
    }
}
