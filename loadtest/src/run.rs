//! The driver: sends the calls of a mode and records them, bounded by count, duration and in-flight calls, and
//! stops by itself.
//!
//! - Open loop ([`Drive::Open`]: `replay`, `rate`): each call is sent at its intended time whatever the earlier
//!   calls do; at most `max_in_flight` are outstanding, and a call that finds no free slot waits for one (its
//!   lateness is recorded and counts in the corrected latency).
//! - Closed loop ([`Drive::Closed`]: `closed`): `concurrency` workers each send their next call when the previous
//!   one is answered. A closed loop has no schedule, so its corrected and uncorrected latencies are the same
//!   and it cannot see coordinated omission: use it to find the capacity, an open mode to measure latency.
//!
//! After the last send, calls still in flight get `drain` to finish; any left are counted as unfinished.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until};

use crate::client::{Pool, Prepared};
use crate::record::Recorder;
use crate::schedule::Planned;

/// How calls are paced.
pub enum Drive {
    /// Intended send times from a schedule.
    Open(Box<dyn Iterator<Item = Planned> + Send>),
    /// This many workers, each one call at a time.
    Closed {
        /// The number of workers.
        concurrency: usize,
    },
}

/// What bounds a run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// No call is sent (or intended) this long after the start.
    pub duration: Duration,
    /// At most this many calls are sent.
    pub max_calls: u64,
    /// Open loop: at most this many calls outstanding.
    pub max_in_flight: usize,
    /// How long calls in flight at the end get to finish.
    pub drain: Duration,
}

/// Runs `drive` against `pool` with `requests` until a limit is reached or `stop` resolves (e.g. Ctrl-C), then
/// drains. Every call is recorded in `recorder`, whose clock is the run's.
pub async fn run(
    pool: Arc<Pool>,
    requests: Arc<Vec<Prepared>>,
    drive: Drive,
    limits: Limits,
    recorder: Arc<Recorder>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let stopped = Arc::new(AtomicBool::new(false));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let watcher = {
        let stopped = stopped.clone();
        tokio::spawn(async move {
            stop.await;
            stopped.store(true, Ordering::Relaxed);
            let _ = stop_tx.send(true);
        })
    };
    let mut tasks = JoinSet::new();
    let start = Instant::from_std(recorder.start());
    let end = start + limits.duration;
    // Open loop: the drain starts after the last send; closed loop: when the workers stop sending.
    let drain_from = match drive {
        Drive::Open(schedule) => {
            let slots = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
            for (n, planned) in schedule.enumerate() {
                if n as u64 >= limits.max_calls || planned.at >= limits.duration {
                    break;
                }
                let permit = tokio::select! {
                    permit = async {
                        sleep_until(start + planned.at).await;
                        slots.clone().acquire_owned().await
                    } => permit.expect("the semaphore is never closed"),
                    () = sleep_until(end) => break,
                    _ = stop_rx.wait_for(|s| *s) => break,
                };
                let sent = recorder.sending(planned.at);
                let (pool, requests, recorder) = (pool.clone(), requests.clone(), recorder.clone());
                tasks.spawn(async move {
                    let outcome = pool.call(&requests[planned.request]).await;
                    recorder.finished(planned.at, sent, outcome);
                    drop(permit);
                });
                // Keep the set from growing with finished tasks.
                while tasks.try_join_next().is_some() {}
            }
            Instant::now()
        }
        Drive::Closed { concurrency } => {
            let count = Arc::new(AtomicU64::new(0));
            for _ in 0..concurrency.max(1) {
                let (pool, requests, recorder) = (pool.clone(), requests.clone(), recorder.clone());
                let (count, stopped) = (count.clone(), stopped.clone());
                tasks.spawn(async move {
                    while !stopped.load(Ordering::Relaxed) && Instant::now() < end {
                        let n = count.fetch_add(1, Ordering::Relaxed);
                        if n >= limits.max_calls {
                            break;
                        }
                        // No schedule: a call is meant to go when it goes.
                        let sent = recorder.sending(recorder.now());
                        let outcome = pool.call(&requests[n as usize % requests.len()]).await;
                        recorder.finished(sent, sent, outcome);
                    }
                });
            }
            end
        }
    };
    drain(&mut tasks, drain_from + limits.drain, &recorder).await;
    watcher.abort();
}

/// Waits for the calls in flight; counts those still unanswered at `deadline` as unfinished.
async fn drain(tasks: &mut JoinSet<()>, deadline: Instant, recorder: &Recorder) {
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all).await.is_ok() {
        return;
    }
    tasks.abort_all();
    while let Some(joined) = tasks.join_next().await {
        if joined.is_err_and(|e| e.is_cancelled()) {
            recorder.unfinished();
        }
    }
}
