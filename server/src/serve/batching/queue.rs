//! The request queue: bounded by tokens, three priority lanes, packed into batches by a token budget.
//!
//! Higher lanes go first, but a lane whose oldest request has waited longer than the starvation limit goes
//! before all lanes that have not: a flood of high-priority work delays low-priority work by at most about
//! the limit plus one batch, instead of forever.
//!
//! Sequences are packed back to back without padding (the model takes cumulative sequence lengths), so a
//! batch costs the tokens it holds. A request may be split across batches: its sequences are taken in order
//! and the rest stays at the head of its lane. A batch takes whole sequences only; a sequence longer than the
//! budget runs alone. Before a request's first sequence is taken, the queue drops it if its deadline has
//! passed or its caller has gone (`is_cancelled`), so no compute is spent on an answer nobody waits for.
//!
//! This module knows nothing of gRPC or threads: the engine holds it under a mutex.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Scheduling lane; higher lanes are served first, FIFO within a lane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) enum Lane {
    /// Background work.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Latency-sensitive work.
    High,
}

/// A request to queue: its sequences (token ids), lane, deadline and the caller's payload.
pub(crate) struct Entry<T> {
    /// The sequences, in request order; none may be empty.
    pub(crate) sequences: Vec<Vec<u32>>,
    /// Scheduling lane.
    pub(crate) lane: Lane,
    /// Drop the request unstarted once this has passed.
    pub(crate) deadline: Option<Instant>,
    /// When the request arrived (its wait counts from here for starvation).
    pub(crate) received: Instant,
    /// Handed back with every slice of the request.
    pub(crate) payload: T,
}

/// The queue is full: `asked` more tokens do not fit next to `queued` under `capacity`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Full {
    /// Tokens already queued.
    pub(crate) queued: usize,
    /// Tokens the refused request holds.
    pub(crate) asked: usize,
    /// The queue's capacity in tokens.
    pub(crate) capacity: usize,
}

/// Consecutive sequences of one request taken into a batch.
pub(crate) struct Slice<T> {
    /// The request's payload.
    pub(crate) payload: T,
    /// Index of the first sequence in the request.
    pub(crate) first: usize,
    /// The sequences taken.
    pub(crate) sequences: Vec<Vec<u32>>,
}

/// What [`Queue::pop_batch`] took out.
pub(crate) struct Popped<T> {
    /// The batch, in packing order.
    pub(crate) batch: Vec<Slice<T>>,
    /// Requests dropped unstarted because their deadline had passed.
    pub(crate) expired: Vec<T>,
    /// Requests dropped because their caller had gone.
    pub(crate) cancelled: Vec<T>,
}

impl<T> Popped<T> {
    /// Tokens in the batch.
    pub(crate) fn tokens(&self) -> usize {
        self.batch.iter().flat_map(|s| &s.sequences).map(Vec::len).sum()
    }
}

struct Queued<T> {
    sequences: VecDeque<Vec<u32>>,
    next: usize,
    tokens: usize,
    deadline: Option<Instant>,
    received: Instant,
    payload: T,
}

/// The queue; see the module docs.
pub(crate) struct Queue<T> {
    lanes: [VecDeque<Queued<T>>; 3],
    tokens: usize,
    capacity: usize,
    starvation_limit: Duration,
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}

impl<T: Clone> Queue<T> {
    /// An empty queue that holds at most `capacity` tokens; a lane whose oldest request has waited
    /// `starvation_limit` is served before the lanes above it.
    pub(crate) fn new(capacity: usize, starvation_limit: Duration) -> Self {
        Self {
            lanes: Default::default(),
            tokens: 0,
            capacity,
            starvation_limit,
        }
    }

    /// Lane indices in serving order at `now`: starved lanes first, then by priority.
    fn lane_order(&self, now: Instant) -> [usize; 3] {
        let starved = |i: usize| {
            self.lanes[i]
                .front()
                .is_some_and(|q| now.saturating_duration_since(q.received) >= self.starvation_limit)
        };
        let mut order = [0, 1, 2];
        order.sort_by_key(|&i| (!starved(i), i));
        order
    }

    /// Tokens queued (not yet taken into a batch).
    pub(crate) fn tokens(&self) -> usize {
        self.tokens
    }

    /// Requests with sequences still queued.
    pub(crate) fn len(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `entry`, or refuses it at once when its tokens do not fit.
    pub(crate) fn push(&mut self, entry: Entry<T>) -> Result<(), Full> {
        let asked: usize = entry.sequences.iter().map(Vec::len).sum();
        if self.tokens + asked > self.capacity {
            return Err(Full {
                queued: self.tokens,
                asked,
                capacity: self.capacity,
            });
        }
        self.tokens += asked;
        self.lanes[lane_index(entry.lane)].push_back(Queued {
            sequences: entry.sequences.into(),
            next: 0,
            tokens: asked,
            deadline: entry.deadline,
            received: entry.received,
            payload: entry.payload,
        });
        Ok(())
    }

    /// Takes the next batch of at most `max_tokens` tokens (one longer sequence alone), starved lanes first,
    /// then highest lane first, dropping expired (at `now`) and cancelled requests it meets on the way.
    pub(crate) fn pop_batch(
        &mut self,
        max_tokens: usize,
        now: Instant,
        is_cancelled: impl Fn(&T) -> bool,
    ) -> Popped<T> {
        let mut popped = Popped {
            batch: Vec::new(),
            expired: Vec::new(),
            cancelled: Vec::new(),
        };
        let mut taken = 0;
        for index in self.lane_order(now) {
            let lane = &mut self.lanes[index];
            while let Some(front) = lane.front_mut() {
                if is_cancelled(&front.payload) || (front.next == 0 && front.deadline.is_some_and(|d| d <= now)) {
                    let gone = lane.pop_front().expect("front exists");
                    self.tokens -= gone.tokens;
                    if is_cancelled(&gone.payload) {
                        popped.cancelled.push(gone.payload);
                    } else {
                        popped.expired.push(gone.payload);
                    }
                    continue;
                }
                let mut slice = Slice {
                    payload: front.payload.clone(),
                    first: front.next,
                    sequences: Vec::new(),
                };
                while let Some(seq) = front.sequences.front() {
                    if taken > 0 && taken + seq.len() > max_tokens {
                        break;
                    }
                    let seq = front.sequences.pop_front().expect("front exists");
                    taken += seq.len();
                    front.tokens -= seq.len();
                    self.tokens -= seq.len();
                    front.next += 1;
                    slice.sequences.push(seq);
                }
                let done = front.sequences.is_empty();
                if !slice.sequences.is_empty() {
                    popped.batch.push(slice);
                }
                if !done {
                    return popped;
                }
                lane.pop_front();
            }
        }
        popped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEVER: Duration = Duration::MAX;

    fn entry(lens: &[usize], lane: Lane, payload: u32) -> Entry<u32> {
        Entry {
            sequences: lens.iter().map(|&n| vec![payload; n]).collect(),
            lane,
            deadline: None,
            received: Instant::now(),
            payload,
        }
    }

    fn shape(p: &Popped<u32>) -> Vec<(u32, usize, Vec<usize>)> {
        p.batch
            .iter()
            .map(|s| (s.payload, s.first, s.sequences.iter().map(Vec::len).collect()))
            .collect()
    }

    #[test]
    fn packs_requests_to_the_budget_and_splits_long_ones() {
        let mut q = Queue::new(1000, NEVER);
        q.push(entry(&[3, 4], Lane::Normal, 1)).unwrap();
        q.push(entry(&[5, 5, 5], Lane::Normal, 2)).unwrap();
        assert_eq!(q.tokens(), 22);
        let now = Instant::now();
        let p = q.pop_batch(12, now, |_| false);
        assert_eq!(shape(&p), [(1, 0, vec![3, 4]), (2, 0, vec![5])]);
        assert_eq!(p.tokens(), 12);
        assert_eq!(q.tokens(), 10);
        let p = q.pop_batch(12, now, |_| false);
        assert_eq!(shape(&p), [(2, 1, vec![5, 5])]);
        assert!(q.is_empty());
        assert_eq!(q.tokens(), 0);
    }

    #[test]
    fn a_sequence_over_the_budget_runs_alone() {
        let mut q = Queue::new(1000, NEVER);
        q.push(entry(&[50], Lane::Normal, 1)).unwrap();
        q.push(entry(&[2], Lane::Normal, 2)).unwrap();
        let p = q.pop_batch(8, Instant::now(), |_| false);
        assert_eq!(shape(&p), [(1, 0, vec![50])]);
        let p = q.pop_batch(8, Instant::now(), |_| false);
        assert_eq!(shape(&p), [(2, 0, vec![2])]);
    }

    #[test]
    fn refuses_what_does_not_fit_and_accepts_again_after_a_pop() {
        let mut q = Queue::new(10, NEVER);
        q.push(entry(&[6], Lane::Normal, 1)).unwrap();
        assert_eq!(
            q.push(entry(&[5], Lane::Normal, 2)),
            Err(Full {
                queued: 6,
                asked: 5,
                capacity: 10
            })
        );
        q.pop_batch(100, Instant::now(), |_| false);
        q.push(entry(&[5], Lane::Normal, 2)).unwrap();
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn higher_lanes_first() {
        let mut q = Queue::new(1000, NEVER);
        q.push(entry(&[1], Lane::Low, 1)).unwrap();
        q.push(entry(&[1], Lane::Normal, 2)).unwrap();
        q.push(entry(&[1], Lane::High, 3)).unwrap();
        let p = q.pop_batch(2, Instant::now(), |_| false);
        assert_eq!(shape(&p), [(3, 0, vec![1]), (2, 0, vec![1])]);
        let p = q.pop_batch(2, Instant::now(), |_| false);
        assert_eq!(shape(&p), [(1, 0, vec![1])]);
    }

    #[test]
    fn drops_expired_and_cancelled_requests_before_compute() {
        let now = Instant::now();
        let mut q = Queue::new(1000, NEVER);
        let mut late = entry(&[4], Lane::Normal, 1);
        late.deadline = Some(now - Duration::from_millis(1));
        q.push(late).unwrap();
        q.push(entry(&[4], Lane::Normal, 2)).unwrap();
        let mut fine = entry(&[4], Lane::Normal, 3);
        fine.deadline = Some(now + Duration::from_secs(60));
        q.push(fine).unwrap();
        let p = q.pop_batch(100, now, |&id| id == 2);
        assert_eq!(p.expired, [1]);
        assert_eq!(p.cancelled, [2]);
        assert_eq!(shape(&p), [(3, 0, vec![4])]);
        assert_eq!(q.tokens(), 0);
    }

    #[test]
    fn a_started_request_is_finished_even_past_its_deadline() {
        let now = Instant::now();
        let mut q = Queue::new(1000, NEVER);
        let mut e = entry(&[4, 4], Lane::Normal, 1);
        e.deadline = Some(now + Duration::from_millis(5));
        q.push(e).unwrap();
        assert_eq!(shape(&q.pop_batch(4, now, |_| false)), [(1, 0, vec![4])]);
        let later = now + Duration::from_secs(1);
        let p = q.pop_batch(4, later, |_| false);
        assert_eq!(shape(&p), [(1, 1, vec![4])]);
        assert!(p.expired.is_empty());
    }

    #[test]
    fn a_starved_low_lane_goes_before_fresh_high_work() {
        let t0 = Instant::now();
        let mut q = Queue::new(1000, Duration::from_millis(100));
        let mut low = entry(&[2], Lane::Low, 1);
        low.received = t0;
        q.push(low).unwrap();
        for id in 2..5 {
            let mut high = entry(&[2], Lane::High, id);
            high.received = t0 + Duration::from_millis(50);
            q.push(high).unwrap();
        }
        // Not starved yet: priority order.
        let p = q.pop_batch(2, t0 + Duration::from_millis(60), |_| false);
        assert_eq!(shape(&p), [(2, 0, vec![2])]);
        // Waited past the limit: the low request goes first, the rest of the batch follows priority.
        let p = q.pop_batch(4, t0 + Duration::from_millis(120), |_| false);
        assert_eq!(shape(&p), [(1, 0, vec![2]), (3, 0, vec![2])]);
        let p = q.pop_batch(4, t0 + Duration::from_millis(130), |_| false);
        assert_eq!(shape(&p), [(4, 0, vec![2])]);
    }
}
