//! announce-self timers: RARP frames from NIC addresses towards their peers, sent at
//! once and then after `initial + k*step` ms (capped at `max`), `rounds` times in all.
//! Timers live in the control loop, which sleeps until the next deadline; a call with
//! an `id` replaces the running timer of that id (no id is its own id).

use std::time::{Duration, Instant};

use switch::wire::arp::rarp_announce;

use crate::daemon::Daemon;
use crate::qapi::commands::AnnounceParameters;

struct Timer {
    id: String,
    params: AnnounceParameters,
    sent: i64,
    next: Instant,
}

/// The running timers.
#[derive(Default)]
pub struct Announcer {
    timers: Vec<Timer>,
}

fn delay_after(p: &AnnounceParameters, sent: i64) -> Duration {
    let ms = p
        .initial
        .saturating_add(p.step.saturating_mul(sent - 1))
        .min(p.max)
        .max(0);
    Duration::from_millis(ms as u64)
}

/// Sends one round: a RARP from each selected NIC. Returns how many frames went out.
pub fn announce_once(d: &Daemon, p: &AnnounceParameters) -> usize {
    let mut n = 0;
    for e in d.netdevs() {
        let Some(nic) = &e.nic else { continue };
        if let Some(list) = &p.interfaces {
            if !list.contains(&e.config.id) {
                continue;
            }
        }
        if nic.handle.inject(rarp_announce(&nic.mac()).to_vec()) {
            n += 1;
        }
    }
    n
}

impl Announcer {
    /// Starts (or restarts) the timer of `p.id`, sending the first round now.
    pub fn start(&mut self, d: &Daemon, p: AnnounceParameters, now: Instant) {
        let id = p.id.clone().unwrap_or_default();
        self.timers.retain(|t| t.id != id);
        if p.rounds < 1 {
            return;
        }
        tracing::info!(
            "announce-self{}: {} round(s), first now",
            if id.is_empty() {
                String::new()
            } else {
                format!(" {id}")
            },
            p.rounds
        );
        tracing::debug!(
            "announce-self{} round 1",
            if id.is_empty() {
                String::new()
            } else {
                format!(" {id}")
            }
        );
        announce_once(d, &p);
        if p.rounds > 1 {
            let next = now + delay_after(&p, 1);
            self.timers.push(Timer {
                id,
                params: p,
                sent: 1,
                next,
            });
        }
    }

    /// The earliest deadline, if any timer runs.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.iter().map(|t| t.next).min()
    }

    /// Sends the rounds that are due and drops finished timers.
    pub fn fire_due(&mut self, d: &Daemon, now: Instant) {
        for t in &mut self.timers {
            if t.next <= now {
                tracing::debug!("announce-self {} round {}", t.id, t.sent + 1);
                announce_once(d, &t.params);
                t.sent += 1;
                t.next += delay_after(&t.params, t.sent);
            }
        }
        self.timers.retain(|t| t.sent < t.params.rounds);
    }

    /// Ids of running timers (for tests and reports).
    pub fn running(&self) -> Vec<String> {
        self.timers.iter().map(|t| t.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_qemu() {
        let p = AnnounceParameters {
            initial: 50,
            max: 550,
            rounds: 5,
            step: 100,
            interfaces: None,
            id: None,
        };
        let d: Vec<u64> = (1..5)
            .map(|k| delay_after(&p, k).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![50, 150, 250, 350]);
        let capped = AnnounceParameters { max: 200, ..p };
        assert_eq!(delay_after(&capped, 4).as_millis(), 200);
    }
}
