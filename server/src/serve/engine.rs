//! The engine: one dedicated OS thread (not a tokio worker) that owns the model, takes batches from the
//! queue and runs them on the rayon pool, then pools, applies heads and post-processes per request.
//!
//! A batch serves every request in it with one forward pass that stops at the deepest layer any of them
//! needs. Results go back over a oneshot channel per request; a request whose receiver was dropped (its call
//! was cancelled) is skipped in the queue. Every item's vector is bitwise the same whatever else is in the
//! batch, so batching across requests changes no result.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use marc_models::{CompressionHead, PackedBatch};
use tokio::sync::oneshot;

use super::batching::queue::{Entry, Lane, Queue, Slice};
use super::error::ServeError;
use super::metrics as m;
use crate::model::{Encoder, Model};
use crate::output::{self, ItemOutput, OutputSpec};

/// A validated request, ready to queue.
pub(crate) struct Job {
    /// Token ids per item, non-empty, within the item limit.
    pub(crate) sequences: Vec<Vec<u32>>,
    /// What to compute.
    pub(crate) spec: OutputSpec,
    /// Scheduling lane.
    pub(crate) lane: Lane,
    /// Drop the job unstarted after this.
    pub(crate) deadline: Option<Instant>,
    /// When the server received the request.
    pub(crate) received: Instant,
}

/// A finished request.
pub(crate) struct Done {
    /// One output per item, in request order.
    pub(crate) items: Vec<ItemOutput>,
    /// Receipt to the start of the first batch that held one of its items.
    pub(crate) queue: Duration,
    /// Start of the first batch to the end of the last.
    pub(crate) compute: Duration,
}

/// The answer channel of one request.
pub(crate) type Reply = oneshot::Receiver<Result<Done, ServeError>>;

/// Batching limits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchSettings {
    /// Tokens per forward pass (a longer item runs alone).
    pub(crate) max_batch_tokens: usize,
    /// How long to wait for more work when a batch is not full.
    pub(crate) max_batch_wait: Duration,
    /// Tokens the queue holds before refusing requests.
    pub(crate) max_queue_tokens: usize,
    /// How long a lower lane's oldest request may wait before it goes ahead of higher lanes.
    pub(crate) starvation_limit: Duration,
}

/// A queued request's state, shared by the queue's slices and the engine.
struct Pending {
    spec: OutputSpec,
    received: Instant,
    deadline: Option<Instant>,
    results: Mutex<Vec<ItemOutput>>,
    remaining: AtomicUsize,
    started: Mutex<Option<Instant>>,
    reply: Mutex<Option<oneshot::Sender<Result<Done, ServeError>>>>,
}

impl Pending {
    fn is_cancelled(&self) -> bool {
        lock(&self.reply).as_ref().is_none_or(|tx| tx.is_closed())
    }

    fn fail(&self, error: ServeError) {
        if let Some(tx) = lock(&self.reply).take() {
            let _ = tx.send(Err(error));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Shared {
    queue: Mutex<Queue<Arc<Pending>>>,
    wake: Condvar,
    /// Set once the model has loaded and run its warm-up pass.
    ready: AtomicBool,
    stop: AtomicBool,
    settings: BatchSettings,
}

/// Handle to the engine thread; dropping it stops the thread after the queued work.
pub(crate) struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the engine thread: it loads the model with `load`, runs one warm-up forward pass, reports on
    /// `ready` (the model's load time, or the error), then serves the queue.
    pub(crate) fn start(
        settings: BatchSettings,
        heads: Arc<Vec<CompressionHead>>,
        load: impl FnOnce() -> anyhow::Result<Model> + Send + 'static,
        ready: oneshot::Sender<anyhow::Result<Duration>>,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(settings.max_queue_tokens, settings.starvation_limit)),
            wake: Condvar::new(),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            settings,
        });
        let inner = shared.clone();
        // Detached: see `Drop`.
        std::thread::Builder::new().name("marc-engine".into()).spawn(move || {
            let started = Instant::now();
            let model = match load().and_then(|model| {
                model.hidden_states(&PackedBatch::from_sequences(&[[0u32]]), &[model.max_layer()])?;
                Ok(model)
            }) {
                Ok(model) => model,
                Err(e) => {
                    let _ = ready.send(Err(e));
                    inner.stop.store(true, Ordering::SeqCst);
                    return;
                }
            };
            inner.ready.store(true, Ordering::SeqCst);
            let _ = ready.send(Ok(started.elapsed()));
            serve_queue(&inner, model.as_ref(), &heads);
        })?;
        Ok(Self { shared })
    }

    /// Whether the model has loaded and warmed up.
    pub(crate) fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst)
    }

    /// Queues `job`; refuses it at once when the model is not ready yet, the queue is full or the engine has
    /// stopped.
    pub(crate) fn submit(&self, job: Job) -> Result<Reply, ServeError> {
        let (tx, rx) = oneshot::channel();
        let items = job.sequences.len();
        let pending = Arc::new(Pending {
            spec: job.spec,
            received: job.received,
            deadline: job.deadline,
            results: Mutex::new(vec![ItemOutput::default(); items]),
            remaining: AtomicUsize::new(items),
            started: Mutex::new(None),
            reply: Mutex::new(Some(tx)),
        });
        if self.shared.stop.load(Ordering::SeqCst) {
            return Err(ServeError::ShuttingDown);
        }
        if !self.shared.ready.load(Ordering::SeqCst) {
            return Err(ServeError::Loading);
        }
        let mut queue = lock(&self.shared.queue);
        queue
            .push(Entry {
                sequences: job.sequences,
                lane: job.lane,
                deadline: job.deadline,
                received: job.received,
                payload: pending,
            })
            .map_err(|full| {
                ServeError::Overloaded(format!(
                    "the queue is full: {} tokens queued, this request has {}, max_queue_tokens is {}; retry later",
                    full.queued, full.asked, full.capacity
                ))
            })?;
        queue_gauges(&queue);
        drop(queue);
        self.shared.wake.notify_one();
        Ok(rx)
    }
}

impl Drop for Engine {
    /// Stops the engine thread once the batch it runs (if any) is done. It is not joined: the process may be
    /// exiting after a drain timeout, and waiting here would block a tokio worker for a whole forward pass.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_all();
    }
}

fn queue_gauges(queue: &Queue<Arc<Pending>>) {
    metrics::gauge!(m::QUEUE_REQUESTS).set(queue.len() as f64);
    metrics::gauge!(m::QUEUE_TOKENS).set(queue.tokens() as f64);
}

/// The engine loop: wait for work, give a batch that starts an idle period up to `max_batch_wait` to fill,
/// run it.
fn serve_queue(shared: &Shared, model: &dyn Encoder, heads: &[CompressionHead]) {
    let settings = shared.settings;
    loop {
        let mut queue = lock(&shared.queue);
        let was_idle = queue.is_empty();
        while queue.is_empty() {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            queue = shared
                .wake
                .wait_timeout(queue, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        // An idle engine gives the first arrival's batch up to `max_batch_wait` to fill. Work that queued
        // while a batch ran has waited already: it goes at once, so under load batching costs no latency.
        let waited = Instant::now();
        while was_idle && queue.tokens() < settings.max_batch_tokens && waited.elapsed() < settings.max_batch_wait {
            let left = settings.max_batch_wait.saturating_sub(waited.elapsed());
            queue = shared
                .wake
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let popped = queue.pop_batch(settings.max_batch_tokens, Instant::now(), |p| p.is_cancelled());
        queue_gauges(&queue);
        drop(queue);
        // Their callers count these answers (reason `deadline`); a request whose caller stopped waiting at
        // its deadline was answered likewise, so only the others count as `cancelled`.
        let now = Instant::now();
        for p in &popped.expired {
            p.fail(ServeError::DeadlineExceeded);
        }
        let cancelled = popped
            .cancelled
            .iter()
            .filter(|p| p.deadline.is_none_or(|d| d > now))
            .count();
        metrics::counter!(m::REJECTED_TOTAL, "reason" => "cancelled").increment(cancelled as u64);
        if !popped.batch.is_empty() {
            let tokens = popped.tokens();
            run_batch(model, heads, popped.batch, tokens);
        }
    }
}

fn run_batch(model: &dyn Encoder, heads: &[CompressionHead], batch: Vec<Slice<Arc<Pending>>>, tokens: usize) {
    let started = Instant::now();
    for slice in &batch {
        lock(&slice.payload.started).get_or_insert(started);
    }
    let mut layers: Vec<usize> = batch.iter().map(|s| s.payload.spec.layer(heads)).collect();
    layers.sort_unstable();
    layers.dedup();
    let sequences: Vec<&[u32]> = batch
        .iter()
        .flat_map(|s| s.sequences.iter().map(Vec::as_slice))
        .collect();
    let packed = PackedBatch::from_sequences(&sequences);
    metrics::histogram!(m::BATCH_SIZE).record(sequences.len() as f64);
    metrics::histogram!(m::BATCH_TOKENS).record(tokens as f64);
    let states = match model.hidden_states(&packed, &layers) {
        Ok(states) => states,
        Err(e) => {
            tracing::error!(error = %e, "forward pass failed");
            for slice in &batch {
                slice
                    .payload
                    .fail(ServeError::Internal(format!("forward pass failed: {e}")));
            }
            return;
        }
    };
    // Counted before any answer is sent, so a client that has its answer also sees its tokens counted.
    metrics::counter!(m::TOKENS_TOTAL).increment(tokens as u64);
    let hidden = model.hidden_size();
    let mut next = 0;
    for slice in batch {
        let spec = &slice.payload.spec;
        let layer = layers.binary_search(&spec.layer(heads)).expect("layer was asked");
        let ranges: Vec<_> = (next..next + slice.sequences.len()).map(|i| packed.range(i)).collect();
        next += slice.sequences.len();
        let outputs = output::compute(&states[layer], &ranges, hidden, spec, heads)
            .map_err(|e| ServeError::Internal(format!("outputs of a batch: {e}")));
        let label = spec.head_name(heads).unwrap_or("raw").to_owned();
        metrics::counter!(m::ITEMS_TOTAL, "head" => label).increment(ranges.len() as u64);
        match outputs {
            Ok(outputs) => complete(&slice.payload, slice.first, outputs),
            Err(e) => slice.payload.fail(e),
        }
    }
    metrics::histogram!(m::COMPUTE_DURATION).record(started.elapsed().as_secs_f64());
}

/// Stores a slice's outputs; the last slice of a request sends its answer.
fn complete(pending: &Pending, first: usize, outputs: Vec<ItemOutput>) {
    let n = outputs.len();
    {
        let mut results = lock(&pending.results);
        for (slot, out) in results[first..first + n].iter_mut().zip(outputs) {
            *slot = out;
        }
    }
    if pending.remaining.fetch_sub(n, Ordering::SeqCst) == n {
        let now = Instant::now();
        let started = lock(&pending.started).unwrap_or(now);
        let items = std::mem::take(&mut *lock(&pending.results));
        let queue = started.saturating_duration_since(pending.received);
        metrics::histogram!(m::QUEUE_DURATION).record(queue.as_secs_f64());
        if let Some(tx) = lock(&pending.reply).take() {
            let _ = tx.send(Ok(Done {
                items,
                queue,
                compute: now.saturating_duration_since(started),
            }));
        }
    }
}
