//! `marc serve --capture FILE`: records live calls as a marc trace (the `marc-trace` format) for
//! `marc-loadtest replay`.
//!
//! Capture must never slow or fail a request. A call is only looked at when it is sampled; it then takes a slot
//! in a bounded channel without waiting (a full channel drops the record and counts it in
//! `marc_capture_dropped_total`) and is cloned. Everything else (conversion, tokenization for
//! `--capture-token-ids`, JSON, the file) happens on a dedicated thread, which flushes whenever it has caught
//! up, so the file is complete up to the last few milliseconds even if the process is killed.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use marc_models::tokenizer::Tokenizer;
use marc_proto::marc::v1 as pb;
use marc_trace::{Record, Request, Rpc};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use super::grpc::convert;
use super::metrics as m;

/// Records buffered between the request path and the writer thread; more are dropped.
const BUFFER: usize = 4096;

/// How long shutdown waits for the writer to write what is buffered.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What `--capture`, `--capture-sample` and `--capture-token-ids` ask for.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The trace file, created or truncated.
    pub path: PathBuf,
    /// The fraction of calls recorded, in (0, 1]: exactly every 1/rate-th call, so runs are reproducible.
    pub sample: f64,
    /// Record text inputs as the token ids the model saw (after truncation) instead of the text.
    pub token_ids: bool,
}

enum Message {
    Call {
        rpc: Rpc,
        received: Instant,
        request: pb::EmbedRequest,
    },
    Stop,
}

/// The request path's handle: samples calls and hands them to the writer.
pub(crate) struct Capture {
    tx: mpsc::Sender<Message>,
    sample: f64,
    seen: AtomicU64,
}

/// The writer thread, joined at shutdown.
pub(crate) struct CaptureWriter {
    tx: mpsc::Sender<Message>,
    thread: JoinHandle<()>,
}

/// Opens the file and starts the writer. Offsets in the trace count from now.
pub(crate) fn start(
    config: &CaptureConfig,
    tokenizer: Option<Arc<Tokenizer>>,
    max_item_tokens: usize,
) -> anyhow::Result<(Capture, CaptureWriter)> {
    ensure!(
        config.sample > 0.0 && config.sample <= 1.0,
        "--capture-sample {}: must be in (0, 1]",
        config.sample
    );
    let file = File::create(&config.path)
        .with_context(|| format!("--capture {}: cannot create the trace file", config.path.display()))?;
    let tokenizer = if config.token_ids { tokenizer } else { None };
    let (tx, rx) = mpsc::channel(BUFFER);
    let start = Instant::now();
    let path = config.path.clone();
    let thread = std::thread::Builder::new()
        .name("marc-capture".into())
        .spawn(move || write_loop(rx, BufWriter::new(file), start, tokenizer, max_item_tokens, path))
        .context("cannot start the capture thread")?;
    metrics::counter!(m::CAPTURE_DROPPED_TOTAL).absolute(0);
    Ok((
        Capture {
            tx: tx.clone(),
            sample: config.sample,
            seen: AtomicU64::new(0),
        },
        CaptureWriter { tx, thread },
    ))
}

impl Capture {
    /// Offers one call for recording; returns at once whatever happens.
    pub(crate) fn offer(&self, rpc: &'static str, received: Instant, request: &pb::EmbedRequest) {
        // Call n is kept when floor((n + 1) * rate) > floor(n * rate): exactly `rate` of the calls, evenly spread.
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        if ((n + 1.0) * self.sample).floor() <= (n * self.sample).floor() {
            return;
        }
        let rpc = if rpc == "EmbedStream" {
            Rpc::EmbedStream
        } else {
            Rpc::Embed
        };
        match self.tx.try_reserve() {
            Ok(slot) => slot.send(Message::Call {
                rpc,
                received,
                request: request.clone(),
            }),
            Err(_) => metrics::counter!(m::CAPTURE_DROPPED_TOTAL).increment(1),
        }
    }
}

impl CaptureWriter {
    /// Writes what is buffered and closes the file (bounded by [`FINISH_TIMEOUT`]).
    pub(crate) async fn finish(self) {
        let stopped = async {
            if self.tx.send(Message::Stop).await.is_ok() {
                let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
            }
        };
        if tokio::time::timeout(FINISH_TIMEOUT, stopped).await.is_err() {
            tracing::warn!("capture: the trace writer did not finish in time; the file may lack its last calls");
        }
    }
}

fn write_loop(
    mut rx: mpsc::Receiver<Message>,
    mut out: BufWriter<File>,
    start: Instant,
    tokenizer: Option<Arc<Tokenizer>>,
    max_item_tokens: usize,
    path: PathBuf,
) {
    let mut failed = false;
    loop {
        let message = match rx.try_recv() {
            Ok(message) => message,
            Err(TryRecvError::Empty) => {
                // Caught up: make what was written visible before waiting.
                failed |= out.flush().is_err();
                match rx.blocking_recv() {
                    Some(message) => message,
                    None => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        let Message::Call { rpc, received, request } = message else {
            break;
        };
        let mut trace_request = Request::from(&request);
        if let Some(tokenizer) = &tokenizer {
            to_token_ids(&mut trace_request, &request, tokenizer, max_item_tokens);
        }
        let record = Record {
            offset_ns: received.saturating_duration_since(start).as_nanos() as u64,
            rpc,
            request: trace_request,
            metadata: Default::default(),
        };
        if failed || out.write_all(record.to_line().as_bytes()).is_err() {
            if !failed {
                tracing::error!(file = %path.display(), "capture: cannot write the trace file; dropping records");
            }
            failed = true;
            metrics::counter!(m::CAPTURE_DROPPED_TOTAL).increment(1);
        }
    }
    if out.flush().is_err() && !failed {
        tracing::error!(file = %path.display(), "capture: cannot write the trace file");
    }
}

/// Replaces every text input by the ids the model saw for it: tokenized with the special tokens and truncated as
/// the request asks. Inputs the server refused (untokenizable, too long) keep their text, so a replay is
/// refused the same way.
fn to_token_ids(trace: &mut Request, request: &pb::EmbedRequest, tokenizer: &Tokenizer, max_item_tokens: usize) {
    let truncation = pb::Truncation::try_from(request.truncation).unwrap_or(pb::Truncation::Unspecified);
    for (i, input) in trace.inputs.iter_mut().enumerate() {
        let Some(text) = &input.text else { continue };
        let Ok((ids, lead, trail)) = tokenizer.encode_with_specials(text) else {
            continue;
        };
        if let Ok((ids, _)) = convert::truncate(i, ids, lead, trail, max_item_tokens, truncation) {
            input.text = None;
            input.token_ids = Some(ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(sample: f64, buffer: usize) -> (Capture, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(buffer);
        let capture = Capture {
            tx,
            sample,
            seen: AtomicU64::new(0),
        };
        (capture, rx)
    }

    fn kept(rx: &mut mpsc::Receiver<Message>) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(Message::Call { request, .. }) = rx.try_recv() {
            ids.push(request.request_id);
        }
        ids
    }

    fn request(n: usize) -> pb::EmbedRequest {
        pb::EmbedRequest {
            request_id: n.to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn sampling_keeps_exactly_the_rate_evenly_spread() {
        let (c, mut rx) = capture(0.25, 100);
        for n in 0..12 {
            c.offer("Embed", Instant::now(), &request(n));
        }
        assert_eq!(kept(&mut rx), ["3", "7", "11"]);
        let (c, mut rx) = capture(1.0, 100);
        for n in 0..3 {
            c.offer("Embed", Instant::now(), &request(n));
        }
        assert_eq!(kept(&mut rx), ["0", "1", "2"]);
    }

    #[test]
    fn a_full_buffer_drops_records_without_waiting() {
        let (c, mut rx) = capture(1.0, 2);
        // No reader: the third and fourth offers find the buffer full and return at once.
        for n in 0..4 {
            c.offer("EmbedStream", Instant::now(), &request(n));
        }
        assert_eq!(kept(&mut rx), ["0", "1"]);
    }
}
