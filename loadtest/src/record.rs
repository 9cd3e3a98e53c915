//! What a run measures. Every successful call's latency goes into two HdrHistograms:
//!
//! - **corrected** (the headline): from the *intended* send time to the answer. When the load tester could not
//!   send on time (all `--max-in-flight` slots busy, its own scheduler late), the wait counts, as it would for a
//!   real client that had the request at that moment: this is what removes coordinated omission.
//! - **uncorrected**: from the *actual* send to the answer: what the server took once it had the request.
//!
//! Also: how late sends were (a histogram, and the count later than `late_threshold`), errors by gRPC code, and a
//! per-second series (calls sent by intended second, answers and latency by completion second). Latencies are
//! recorded in microseconds from 1 us to 1 hour with 3 significant digits; failed calls count as errors and not
//! in the latency histograms (a fast rejection must not look like a fast answer).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// The largest latency recorded, in microseconds (one hour); longer ones are recorded as this.
const MAX_US: u64 = 3_600_000_000;

/// A histogram of microseconds, 1 us .. 1 h, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static bounds are valid")
}

fn micros(d: Duration) -> u64 {
    (d.as_micros().min(MAX_US as u128) as u64).max(1)
}

/// How one call ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered OK.
    Ok,
    /// Failed with this gRPC code name (e.g. `RESOURCE_EXHAUSTED`); streamed requests use their `error.code`.
    Error(&'static str),
}

/// One finished call, with times from the start of the run.
#[derive(Clone, Debug)]
pub struct Call {
    /// When it should have been sent.
    pub intended: Duration,
    /// When it was sent.
    pub sent: Duration,
    /// When its answer arrived.
    pub done: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Second {
    /// Calls whose intended send time fell in this second.
    pub sent: u64,
    /// Answers (OK) that arrived in this second.
    pub ok: u64,
    /// Errors that arrived in this second.
    pub errors: u64,
    /// Corrected latency of the OK answers of this second, microseconds: p50, p90, p99, max (0 with no answers).
    pub p50_us: u64,
    /// See `p50_us`.
    pub p90_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// See `p50_us`.
    pub max_us: u64,
}

/// Everything measured, once the run is over.
#[derive(Clone, Debug)]
pub struct Measurements {
    /// Corrected latency (from intended send), OK calls.
    pub corrected: Histogram<u64>,
    /// Uncorrected latency (from actual send), OK calls.
    pub uncorrected: Histogram<u64>,
    /// Actual send minus intended send, every call sent.
    pub lateness: Histogram<u64>,
    /// Sends later than the threshold.
    pub late: u64,
    /// The lateness threshold.
    pub late_threshold: Duration,
    /// Calls sent.
    pub sent: u64,
    /// OK answers.
    pub ok: u64,
    /// Errors, by gRPC code name.
    pub errors: BTreeMap<&'static str, u64>,
    /// Calls sent whose answer never came before the run ended (counted as errors too, as `UNFINISHED`).
    pub unfinished: u64,
    /// Per second, from the start.
    pub seconds: Vec<Second>,
    /// From the start of the run to the last answer.
    pub elapsed: Duration,
}

struct State {
    m: Measurements,
    /// The latency histogram of the second being filled (answers arrive in time order: `done` is taken under the
    /// lock), summarised into `m.seconds` when the next second starts.
    current: Histogram<u64>,
    current_second: usize,
    /// Corrected latencies since the last [`Recorder::take_window`], for live progress.
    window: Histogram<u64>,
}

/// Collects calls from every task of a run.
pub struct Recorder {
    start: Instant,
    state: Mutex<State>,
    in_flight: AtomicU64,
}

/// A snapshot for the progress line.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Seconds since the start.
    pub elapsed: Duration,
    /// Calls sent so far.
    pub sent: u64,
    /// OK answers so far.
    pub ok: u64,
    /// Errors so far.
    pub errors: u64,
    /// Calls in flight now.
    pub in_flight: u64,
    /// Corrected p99 since the previous snapshot, if any call finished.
    pub p99: Option<Duration>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new(late_threshold: Duration) -> Self {
        Self {
            start: Instant::now(),
            state: Mutex::new(State {
                m: Measurements {
                    corrected: histogram(),
                    uncorrected: histogram(),
                    lateness: histogram(),
                    late: 0,
                    late_threshold,
                    sent: 0,
                    ok: 0,
                    errors: BTreeMap::new(),
                    unfinished: 0,
                    seconds: Vec::new(),
                    elapsed: Duration::ZERO,
                },
                current: histogram(),
                current_second: 0,
                window: histogram(),
            }),
            in_flight: AtomicU64::new(0),
        }
    }

    /// The run's start.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain counters behind: still worth reporting.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a send: intended at `intended`, actually now. Returns the actual send time.
    pub fn sending(&self, intended: Duration) -> Duration {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        let sent = self.now().max(intended);
        let late = sent - intended;
        let m = &mut s.m;
        m.sent += 1;
        m.lateness.saturating_record(micros(late));
        if late > m.late_threshold {
            m.late += 1;
        }
        let second = intended.as_secs() as usize;
        grow(&mut m.seconds, second).sent += 1;
        sent
    }

    /// Records an answer that arrived now.
    pub fn finished(&self, intended: Duration, sent: Duration, outcome: Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.lock();
        let done = self.now().max(sent);
        s.add(Call {
            intended,
            sent,
            done,
            outcome,
        });
    }

    /// Records a call that was sent and never answered before the run ended.
    pub fn unfinished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.m.unfinished += 1;
        *s.m.errors.entry("UNFINISHED").or_default() += 1;
    }

    /// A snapshot for progress; resets the live p99 window.
    pub fn take_window(&self) -> Live {
        let elapsed = self.now();
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let mut s = self.lock();
        let p99 = (!s.window.is_empty()).then(|| Duration::from_micros(s.window.value_at_quantile(0.99)));
        s.window.reset();
        Live {
            elapsed,
            sent: s.m.sent,
            ok: s.m.ok,
            errors: s.m.errors.values().sum(),
            in_flight,
            p99,
        }
    }

    /// Everything measured.
    pub fn finish(self) -> Measurements {
        let mut s = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        s.close_second();
        s.m
    }
}

fn grow(seconds: &mut Vec<Second>, i: usize) -> &mut Second {
    if seconds.len() <= i {
        seconds.resize(i + 1, Second::default());
    }
    &mut seconds[i]
}

impl State {
    fn add(&mut self, call: Call) {
        let second = call.done.as_secs() as usize;
        if second != self.current_second {
            self.close_second();
            self.current_second = second;
        }
        let m = &mut self.m;
        m.elapsed = m.elapsed.max(call.done);
        let row = grow(&mut m.seconds, second);
        match call.outcome {
            Outcome::Ok => {
                row.ok += 1;
                m.ok += 1;
                let corrected = micros(call.done - call.intended);
                m.corrected.saturating_record(corrected);
                m.uncorrected.saturating_record(micros(call.done - call.sent));
                self.current.saturating_record(corrected);
                self.window.saturating_record(corrected);
            }
            Outcome::Error(code) => {
                row.errors += 1;
                *m.errors.entry(code).or_default() += 1;
            }
        }
    }

    /// Writes the current second's latency percentiles into its row.
    fn close_second(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let h = &self.current;
        let row = grow(&mut self.m.seconds, self.current_second);
        row.p50_us = h.value_at_quantile(0.5);
        row.p90_us = h.value_at_quantile(0.9);
        row.p99_us = h.value_at_quantile(0.99);
        row.max_us = h.max();
        self.current.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A recorder fed calls directly, with times of our choosing.
    fn fed(calls: &[(u64, u64, u64, Outcome)]) -> Measurements {
        let r = Recorder::new(ms(1));
        {
            let mut s = r.lock();
            for (intended, sent, done, outcome) in calls {
                s.m.sent += 1;
                let late = micros(ms(sent - intended));
                s.m.lateness.saturating_record(late);
                if ms(sent - intended) > s.m.late_threshold {
                    s.m.late += 1;
                }
                s.add(Call {
                    intended: ms(*intended),
                    sent: ms(*sent),
                    done: ms(*done),
                    outcome: outcome.clone(),
                });
            }
        }
        r.finish()
    }

    #[test]
    fn a_stall_is_counted_from_the_intended_send_time() {
        // A 10 ms schedule; the server stalls for 1 s at t = 0, and with one call allowed in flight the
        // 100 calls meant for 10, 20, ... 990 ms go out only when it answers, at 1000 ms, and take 1 ms each.
        let mut calls = vec![(0, 0, 1000, Outcome::Ok)];
        for k in 1..100u64 {
            calls.push((k * 10, 1000 + k - 1, 1000 + k, Outcome::Ok));
        }
        let m = fed(&calls);
        // Uncorrected: 99 calls of 1 ms and one of 1 s: p50 and p90 1 ms, the stall only at the max.
        assert_eq!(m.uncorrected.value_at_quantile(0.9) / 1000, 1);
        assert!((999..=1000).contains(&(m.uncorrected.max() / 1000)));
        // Corrected: call k waited from k * 10 ms to 1000 + k ms, 1000 - 9 k ms: the values 109, 118, ... 991
        // and 1000, whose median is about 550 ms.
        let p50 = m.corrected.value_at_quantile(0.5) as f64 / 1000.0;
        assert!((545.0..=560.0).contains(&p50), "{p50}");
        assert!(m.corrected.value_at_quantile(0.99) > 100 * m.uncorrected.value_at_quantile(0.9));
        assert_eq!(m.late, 99);
    }

    #[test]
    fn on_time_sends_make_both_histograms_equal() {
        let calls: Vec<_> = (0..50u64)
            .map(|k| (k * 10, k * 10, k * 10 + 3 + k % 4, Outcome::Ok))
            .collect();
        let m = fed(&calls);
        assert_eq!(m.corrected, m.uncorrected);
        assert_eq!(m.late, 0);
    }

    #[test]
    fn errors_are_counted_by_code_and_kept_out_of_latency() {
        let m = fed(&[
            (0, 0, 5, Outcome::Ok),
            (10, 10, 11, Outcome::Error("RESOURCE_EXHAUSTED")),
            (20, 20, 21, Outcome::Error("RESOURCE_EXHAUSTED")),
            (30, 30, 40, Outcome::Error("UNAVAILABLE")),
        ]);
        assert_eq!(m.ok, 1);
        assert_eq!(m.corrected.len(), 1);
        assert_eq!(m.errors.get("RESOURCE_EXHAUSTED"), Some(&2));
        assert_eq!(m.errors.get("UNAVAILABLE"), Some(&1));
    }

    #[test]
    fn seconds_hold_answers_by_completion_and_latency_percentiles() {
        let m = fed(&[
            (0, 0, 100, Outcome::Ok),
            (500, 500, 700, Outcome::Ok),
            (900, 900, 1_300, Outcome::Ok),
            (1_000, 1_000, 1_010, Outcome::Error("INTERNAL")),
            (2_500, 2_500, 2_520, Outcome::Ok),
        ]);
        let rows: Vec<_> = m.seconds.iter().map(|s| (s.ok, s.errors, s.max_us / 1000)).collect();
        assert_eq!(rows, [(2, 0, 200), (1, 1, 400), (1, 0, 20)]);
        assert_eq!(m.elapsed, ms(2_520));
    }
}
