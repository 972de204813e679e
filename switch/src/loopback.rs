//! An in-memory port: frames injected by a test come out of `rx_burst`, frames the
//! switch sends are captured for the test to read. It makes the data plane testable
//! without the kernel, and moves frames through lock-free queues only.

use std::sync::{Arc, OnceLock};

use crossbeam_queue::ArrayQueue;

use crate::backend::{Backend, Io, Waker};
use crate::pool::Pkt;

/// The test's side of a loopback port.
#[derive(Clone)]
pub struct LoopbackHandle {
    inject: Arc<ArrayQueue<Vec<u8>>>,
    captured: Arc<ArrayQueue<Vec<u8>>>,
    waker: Arc<OnceLock<Waker>>,
}

impl LoopbackHandle {
    /// Queues a frame to be received by the switch; false when the queue is full.
    pub fn inject(&self, frame: Vec<u8>) -> bool {
        let ok = self.inject.push(frame).is_ok();
        if let Some(w) = self.waker.get() {
            w.wake();
        }
        ok
    }
    /// Takes the next frame the switch sent to this port.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.captured.pop()
    }
    /// Frames waiting to be received by the switch.
    pub fn backlog(&self) -> usize {
        self.inject.len()
    }
}

/// The switch's side of a loopback port.
pub struct Loopback {
    h: LoopbackHandle,
}

/// Makes a loopback port whose queues hold `depth` frames each way.
pub fn loopback(depth: usize) -> (Loopback, LoopbackHandle) {
    let h = LoopbackHandle {
        inject: Arc::new(ArrayQueue::new(depth)),
        captured: Arc::new(ArrayQueue::new(depth)),
        waker: Arc::new(OnceLock::new()),
    };
    (Loopback { h: h.clone() }, h)
}

impl Backend for Loopback {
    fn kind(&self) -> &'static str {
        "loopback"
    }

    fn start(&mut self, io: &mut Io<'_>) {
        let _ = self.h.waker.set(io.waker());
    }

    fn rx_burst(&mut self, io: &mut Io<'_>, out: &mut Vec<Pkt>, max: usize) -> usize {
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
        let mut n = 0;
        let mut bytes = 0;
        let pool = io.pool();
        for p in pkts.iter() {
            if self.h.captured.is_full() {
                break;
            }
            let f = pool.bytes(p).to_vec();
            bytes += f.len() as u64;
            let _ = self.h.captured.push(f);
            n += 1;
        }
        for p in pkts.drain(..n) {
            io.free(p);
        }
        io.counters.tx(n as u64, bytes);
        n
    }

    fn stop(&mut self, _io: &mut Io<'_>) -> bool {
        true
    }
}
