//! The throughput search (RFC 2544 §26.1 "throughput", as FD.io CSIT reports it): for
//! each loss ratio, the highest offered rate at which a fixed-rate trial loses at most
//! that fraction of the frames sent — NDR for 0, PDR for 0.5 % — found by bisection
//! between a lower bound and the system's own maximum rate measured just before.
//!
//! ```text
//!  max-rate run ──► upper U = frames/s the generator offered there
//!  for ratio in losses (ascending; every earlier trial is reused):
//!     lo = highest passing rate below hi (or the lower bound), hi = lowest failing rate
//!     U untested ─► trial at U; passes ─► answer U
//!     until hi − lo ≤ precision × hi, or `steps` trials: trial at (lo + hi) / 2
//!  answer: lo (0 when nothing passed: a system that loses at every rate is reported
//!          as NDR 0, not as an error)
//! ```
//!
//! A trial is one [`traffic::run`](crate::traffic::run) at a paced rate, which drains
//! the sink (until 100 ms pass with nothing arriving) before it counts, so frames still
//! in flight are not called lost. It passes a ratio when `1 − received ÷ sent` is at
//! most that ratio *and* the generator sent what it offered, to within
//! [`MAX_SHORTFALL`]: a tap whose reader lags refuses frames (backpressure, not loss),
//! and a rate the system only accepts by slowing the sender down is not a rate it
//! forwards.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::engine::Port;
use crate::error::{PerfError, Result};
use crate::report::{Sample, Throughput};
use crate::traffic::{self, Outcome, Rate, Roles};

/// A trial sending less than this fraction under what it offered fails, whatever it
/// lost: the system pushed back on the generator (or the generator could not keep up).
pub const MAX_SHORTFALL: f64 = 0.01;

/// How the search runs (`--ndr` and its options).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NdrOpts {
    /// Loss ratios, each 0 ≤ r < 1 (0: NDR, 0.005: CSIT's PDR).
    pub losses: Vec<f64>,
    /// Stop a ratio's search when the failing and passing rates are this close
    /// (relative to the failing one).
    pub precision: f64,
    /// Most trials per loss ratio (the upper and lower bounds' included).
    pub steps: usize,
    /// Measured window of each trial; `None`: the scenario's `--duration`. Written to
    /// reports as seconds (`trial_s`).
    #[serde(rename = "trial_s", serialize_with = "seconds")]
    pub trial: Option<Duration>,
    /// Lowest rate tried, frames/s; 0: bisect down towards 0.
    pub lower_pps: f64,
}

fn seconds<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

impl Default for NdrOpts {
    fn default() -> Self {
        NdrOpts {
            losses: vec![0.0, 0.005],
            precision: 0.02,
            steps: 10,
            trial: None,
            lower_pps: 0.0,
        }
    }
}

impl NdrOpts {
    /// Checks the numbers a person typed and sorts the ratios.
    pub fn check(&mut self) -> Result<()> {
        if self.losses.is_empty() || self.losses.iter().any(|r| !(0.0..1.0).contains(r)) {
            return Err(PerfError::Usage(
                "--ndr-loss: one or more loss ratios, each 0 <= r < 1 (0.005 is 0.5 %)".into(),
            ));
        }
        self.losses.sort_by(|a, b| a.total_cmp(b));
        self.losses.dedup();
        if !(self.precision > 0.0 && self.precision < 1.0) {
            return Err(PerfError::Usage(
                "--ndr-precision: a fraction above 0 and below 1".into(),
            ));
        }
        if self.steps == 0 {
            return Err(PerfError::Usage("--ndr-steps must be above 0".into()));
        }
        if !(self.lower_pps >= 0.0 && self.lower_pps.is_finite()) {
            return Err(PerfError::Usage("--ndr-lower: frames/s, 0 or more".into()));
        }
        Ok(())
    }
}

/// What one fixed-rate trial measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trial {
    /// The rate asked for, frames/s.
    pub offered_pps: f64,
    /// Seconds of measured window.
    pub window_s: f64,
    /// Frames the generator got out in the window.
    pub sent: u64,
    /// Frames due at the receivers (a 2-port hub: `sent`).
    pub expected: u64,
    /// Frames of the window the sink counted, after the drain.
    pub received: u64,
}

impl Trial {
    /// The trial `o` measured at `offered_pps`.
    pub fn of(offered_pps: f64, o: &Outcome) -> Trial {
        Trial {
            offered_pps,
            window_s: o.duration_s,
            sent: o.sent,
            expected: o.expected,
            received: o.received,
        }
    }

    /// `1 − received ÷ expected`; 1 when nothing was sent.
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 1.0;
        }
        self.expected.saturating_sub(self.received) as f64 / self.expected as f64
    }

    /// How far the generator fell short of the offered rate, as a fraction of it.
    pub fn shortfall(&self) -> f64 {
        let due = self.offered_pps * self.window_s;
        if due <= 0.0 {
            return 0.0;
        }
        (1.0 - self.sent as f64 / due).max(0.0)
    }

    /// Whether it passes loss ratio `ratio` (see the module's notes).
    pub fn passes(&self, ratio: f64) -> bool {
        self.sent > 0 && self.loss() <= ratio + 1e-12 && self.shortfall() <= MAX_SHORTFALL
    }
}

/// Whether `a` and `b` are the same rate (a trial already run).
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The lowest failing and the highest passing rate (below that failing one) for
/// `ratio` among `trials`.
fn bounds(trials: &[Trial], ratio: f64) -> (Option<f64>, Option<f64>) {
    let hi = trials
        .iter()
        .filter(|t| !t.passes(ratio))
        .map(|t| t.offered_pps)
        .min_by(|a, b| a.total_cmp(b));
    let lo = trials
        .iter()
        .filter(|t| t.passes(ratio) && hi.is_none_or(|h| t.offered_pps < h))
        .map(|t| t.offered_pps)
        .max_by(|a, b| a.total_cmp(b));
    (hi, lo)
}

/// Searches every loss ratio of `opts` between its lower bound and `upper` frames/s,
/// running `trial(rate)` for each rate it tries. Returns one [`Throughput`] per ratio,
/// in ascending order, and every trial in the order run.
pub fn search(
    opts: &NdrOpts,
    upper: f64,
    mut trial: impl FnMut(f64) -> Result<Trial>,
) -> Result<(Vec<Throughput>, Vec<Trial>)> {
    if !(upper > 0.0 && upper.is_finite()) {
        return Err(PerfError::Usage(format!(
            "throughput search: no upper bound (the max-rate run offered {upper} frames/s)"
        )));
    }
    let floor = opts.lower_pps.min(upper);
    let mut done: Vec<Trial> = Vec::new();
    let mut out = Vec::new();
    let mut ratios = opts.losses.clone();
    ratios.sort_by(|a, b| a.total_cmp(b));
    for ratio in ratios {
        let mut ran = 0;
        let mut run = |rate: f64, done: &mut Vec<Trial>, ran: &mut usize| -> Result<()> {
            done.push(trial(rate)?);
            *ran += 1;
            Ok(())
        };
        if !done.iter().any(|t| same(t.offered_pps, upper)) {
            run(upper, &mut done, &mut ran)?;
        }
        loop {
            let (hi, lo) = bounds(&done, ratio);
            let Some(hi) = hi else { break };
            if ran >= opts.steps {
                break;
            }
            let lo = match lo {
                Some(lo) => lo,
                // Nothing passed yet: the lower bound is the next to try, if there is
                // one and it has not failed already.
                None if floor > 0.0 => {
                    if hi <= floor || done.iter().any(|t| same(t.offered_pps, floor)) {
                        break;
                    }
                    run(floor, &mut done, &mut ran)?;
                    continue;
                }
                None => 0.0,
            };
            if hi - lo <= opts.precision * hi {
                break;
            }
            run((lo + hi) / 2.0, &mut done, &mut ran)?;
        }
        let (hi, lo) = bounds(&done, ratio);
        out.push(Throughput {
            loss_ratio: ratio,
            pps: lo.unwrap_or(0.0),
            failed_pps: hi,
            trials: ran,
        });
    }
    Ok((out, done))
}

/// The max-rate measurement of a throughput scenario and, with `--ndr`, the search after
/// it on the same running system: `open` gives a fresh set of ports for each run.
/// The search's answers go into `sample.throughput`, its trials into
/// `sample.detail["ndr_trials"]`; the max-rate outcome is returned.
pub fn measure(
    ndr: Option<&NdrOpts>,
    label: &str,
    cfg: &traffic::Config,
    roles: &Roles,
    open: &dyn Fn() -> Result<Vec<Box<dyn Port>>>,
    sample: &mut Sample,
) -> Result<Outcome> {
    let max = traffic::run(open()?, roles, cfg)?;
    let Some(ndr) = ndr else {
        return Ok(max);
    };
    // The search's premise: the max-rate run moved traffic.
    if max.received == 0 {
        return Err(PerfError::peer(
            label,
            format!(
                "nothing arrived at the max rate (sent {}): no search",
                max.sent
            ),
        ));
    }
    let upper = max.tx_pps;
    let mut trial_cfg = cfg.clone();
    trial_cfg.duration = ndr.trial.unwrap_or(cfg.duration);
    trial_cfg.progress = false;
    let mut k = 0;
    let (found, trials) = search(ndr, upper, |rate| {
        k += 1;
        let mut c = trial_cfg.clone();
        c.rate = Rate::Pps(rate);
        let o = traffic::run(open()?, roles, &c)?;
        let t = Trial::of(rate, &o);
        eprintln!(
            "    {label} trial {k}: offered {:.4} Mpps, sent {:.4}, loss {:.3} %{}",
            rate / 1e6,
            o.tx_pps / 1e6,
            100.0 * t.loss(),
            if t.shortfall() > MAX_SHORTFALL {
                format!(", {:.1} % short of the rate", 100.0 * t.shortfall())
            } else {
                String::new()
            }
        );
        Ok(t)
    })?;
    for t in &found {
        eprintln!(
            "    {label} {}: {:.4} Mpps ({} trials{})",
            Throughput::name(t.loss_ratio),
            t.pps / 1e6,
            t.trials,
            match t.failed_pps {
                Some(f) => format!(", failed at {:.4}", f / 1e6),
                None => ", the upper bound passed".into(),
            }
        );
    }
    let mut detail = sample.detail.take().unwrap_or_else(|| json!({}));
    detail["ndr_upper_pps"] = json!(upper);
    detail["ndr_trials"] = json!(trials);
    sample.detail = Some(detail);
    sample.throughput = found;
    Ok(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake system: at `rate` it forwards `forward(rate)` of every second's frames
    /// and lets the generator send `accept(rate)` of them.
    fn fake(
        forward: impl Fn(f64) -> f64,
        accept: impl Fn(f64) -> f64,
    ) -> impl FnMut(f64) -> Result<Trial> {
        move |rate| {
            let sent = accept(rate).min(rate).round() as u64;
            let received = (forward(rate).min(1.0) * sent as f64).floor() as u64;
            Ok(Trial {
                offered_pps: rate,
                window_s: 1.0,
                sent,
                expected: sent,
                received,
            })
        }
    }

    /// Forwards at most `cap` frames/s, losing the rest.
    fn capped(cap: f64) -> impl FnMut(f64) -> Result<Trial> {
        fake(move |r| (cap / r).min(1.0), |r| r)
    }

    fn within(found: f64, truth: f64, precision: f64) {
        assert!(
            found <= truth * (1.0 + 1e-9) && found >= truth * (1.0 - precision),
            "found {found}, truth {truth}"
        );
    }

    #[test]
    fn converges_to_the_known_ndr_and_pdr() {
        let opts = NdrOpts::default();
        for cap in [150_000.0, 400_000.0, 777_777.0, 990_000.0] {
            let (found, trials) = search(&opts, 1_000_000.0, capped(cap)).unwrap();
            assert_eq!(found.len(), 2);
            // 1 − cap/r ≤ ratio  ⇔  r ≤ cap / (1 − ratio).
            within(found[0].pps, cap, opts.precision);
            within(found[1].pps, cap / 0.995, opts.precision);
            assert_eq!(found[0].loss_ratio, 0.0);
            assert_eq!(found[1].loss_ratio, 0.005);
            for f in &found {
                let hi = f.failed_pps.expect("the upper bound loses");
                assert!(hi - f.pps <= opts.precision * hi, "{f:?}");
                assert!(f.trials <= opts.steps);
            }
            // PDR starts from NDR's trials: the upper bound is not tried twice.
            assert_eq!(
                trials
                    .iter()
                    .filter(|t| same(t.offered_pps, 1_000_000.0))
                    .count(),
                1
            );
            assert_eq!(trials.len(), found[0].trials + found[1].trials);
        }
    }

    #[test]
    fn a_system_that_loses_at_every_rate_has_ndr_zero() {
        let opts = NdrOpts::default();
        let (found, trials) = search(&opts, 1e6, fake(|_| 0.9, |r| r)).unwrap();
        for f in &found {
            assert_eq!(f.pps, 0.0, "{f:?}");
            assert!(f.failed_pps.is_some_and(|h| h < 1e6));
            assert_eq!(f.trials, opts.steps);
        }
        assert!(trials.iter().all(|t| t.received > 0));
        // With a lower bound, that is the last rate tried.
        let opts = NdrOpts {
            lower_pps: 10_000.0,
            ..NdrOpts::default()
        };
        let (found, trials) = search(&opts, 1e6, fake(|_| 0.9, |r| r)).unwrap();
        assert_eq!(trials.len(), 2, "the upper and the lower bound: {trials:?}");
        assert_eq!(found[0].failed_pps, Some(10_000.0));
        assert_eq!((found[0].pps, found[1].pps), (0.0, 0.0));
        assert_eq!(found[1].trials, 0, "nothing left to try");
    }

    #[test]
    fn a_system_that_never_loses_reaches_the_upper_bound() {
        let opts = NdrOpts::default();
        let (found, trials) = search(&opts, 800_000.0, capped(1e9)).unwrap();
        assert_eq!(trials.len(), 1);
        for f in &found {
            assert_eq!((f.pps, f.failed_pps), (800_000.0, None));
        }
        assert_eq!((found[0].trials, found[1].trials), (1, 0));
    }

    #[test]
    fn backpressure_fails_a_trial_that_loses_nothing() {
        // A tap: the system takes at most 300 kpps from the sender and loses none.
        let opts = NdrOpts::default();
        let (found, _) = search(&opts, 1e6, fake(|_| 1.0, |_| 300_000.0)).unwrap();
        // Within 1 % short of the rate still passes.
        within(
            found[0].pps,
            300_000.0 / (1.0 - MAX_SHORTFALL),
            opts.precision,
        );
        assert_eq!(found[0].pps, found[1].pps);
    }

    #[test]
    fn steps_bound_the_trials_and_errors_pass_through() {
        let opts = NdrOpts {
            steps: 3,
            precision: 1e-6,
            ..NdrOpts::default()
        };
        let (found, trials) = search(&opts, 1e6, capped(123_456.0)).unwrap();
        assert_eq!(trials.len(), 6);
        assert!(found.iter().all(|f| f.trials == 3));
        let err = search(&opts, 1e6, |_| Err(PerfError::Timeout("stalled".into())));
        assert!(err.is_err());
        assert!(search(&opts, 0.0, capped(1.0)).is_err(), "no upper bound");
    }

    #[test]
    fn options_are_checked_and_sorted() {
        let mut o = NdrOpts {
            losses: vec![0.005, 0.0, 0.005],
            ..NdrOpts::default()
        };
        o.check().unwrap();
        assert_eq!(o.losses, [0.0, 0.005]);
        for bad in [
            NdrOpts {
                losses: vec![1.0],
                ..NdrOpts::default()
            },
            NdrOpts {
                losses: vec![],
                ..NdrOpts::default()
            },
            NdrOpts {
                precision: 0.0,
                ..NdrOpts::default()
            },
            NdrOpts {
                steps: 0,
                ..NdrOpts::default()
            },
        ] {
            assert!(bad.clone().check().is_err(), "{bad:?}");
        }
        let o = NdrOpts {
            trial: Some(Duration::from_millis(1500)),
            ..NdrOpts::default()
        };
        assert_eq!(serde_json::to_value(&o).unwrap()["trial_s"], 1.5);
        assert_eq!(Throughput::name(0.0), "NDR");
        assert_eq!(Throughput::name(0.005), "PDR 0.5 %");
        let t = Trial {
            offered_pps: 1000.0,
            window_s: 1.0,
            sent: 1000,
            expected: 1000,
            received: 995,
        };
        assert!(!t.passes(0.0) && t.passes(0.005));
        assert!((t.loss() - 0.005).abs() < 1e-12 && t.shortfall() == 0.0);
    }
}
