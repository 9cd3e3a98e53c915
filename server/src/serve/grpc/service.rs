//! The tonic `Embedder` implementation: validate, tokenize (off the batching path), queue, await, encode.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use marc_models::Pooling;
use marc_models::tokenizer::Tokenizer;
use marc_proto::marc::v1 as pb;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::convert::{self, Content};
use super::status::{code_name, rejection_reason, to_status};
use crate::serve::ModelFacts;
use crate::serve::capture::Capture;
use crate::serve::engine::{Engine, Job};
use crate::serve::error::ServeError;
use crate::serve::metrics as m;

/// How much earlier than the client's deadline the server answers DEADLINE_EXCEEDED, so that its own status
/// (not the transport's CANCELLED "Timeout expired", which tonic's server and client both raise at the
/// deadline itself) has time to reach the client.
const DEADLINE_MARGIN: Duration = Duration::from_millis(3);

/// What every call shares.
pub(crate) struct Context {
    /// The engine thread.
    pub(crate) engine: Engine,
    /// The model, heads and limits.
    pub(crate) facts: ModelFacts,
    /// The model's tokenizer, if it has one.
    pub(crate) tokenizer: Option<Arc<Tokenizer>>,
    /// Source of server-side request ids for the log.
    pub(crate) next_id: AtomicU64,
    /// Requests one `EmbedStream` call may have in flight; the stream is not read further until one ends.
    pub(crate) max_stream_in_flight: usize,
    /// One permit per request being served (validated, tokenized, queued or computed), across all calls:
    /// bounds the memory that requests not yet in the token-bounded queue can hold.
    pub(crate) admission: Arc<Semaphore>,
    /// The number of permits of `admission`, for the error message.
    pub(crate) max_concurrent_requests: usize,
    /// Cancelled on SIGTERM/SIGINT: new requests are refused, streams close once their requests are answered.
    pub(crate) draining: CancellationToken,
    /// Cancelled when the drain timeout passes: every request still waiting is answered UNAVAILABLE.
    pub(crate) abort: CancellationToken,
    /// `--capture`: records sampled calls to a trace file.
    pub(crate) capture: Option<Capture>,
}

/// The `marc.v1.Embedder` service.
#[derive(Clone)]
pub(crate) struct EmbedderService {
    ctx: Arc<Context>,
}

impl EmbedderService {
    /// A service over `ctx`.
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }
}

/// Counts a request in flight and, when dropped, records its code and duration (CANCELLED if it never finished).
struct CallRecord {
    rpc: &'static str,
    received: Instant,
    code: Option<tonic::Code>,
}

impl CallRecord {
    fn new(rpc: &'static str, received: Instant) -> Self {
        metrics::gauge!(m::IN_FLIGHT_REQUESTS).increment(1.0);
        Self {
            rpc,
            received,
            code: None,
        }
    }

    fn finish<T>(&mut self, result: &Result<T, ServeError>) {
        self.code = Some(match result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => {
                if let Some(reason) = rejection_reason(e) {
                    metrics::counter!(m::REJECTED_TOTAL, "reason" => reason).increment(1);
                }
                to_status(e).code()
            }
        });
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        metrics::gauge!(m::IN_FLIGHT_REQUESTS).decrement(1.0);
        let code = self.code.unwrap_or(tonic::Code::Cancelled);
        metrics::counter!(m::REQUESTS_TOTAL, "rpc" => self.rpc, "code" => code_name(code)).increment(1);
        metrics::histogram!(m::REQUEST_DURATION).record(self.received.elapsed().as_secs_f64());
    }
}

fn deadline_of<T>(request: &Request<T>, received: Instant) -> Option<Instant> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let timeout = convert::grpc_timeout(value)?;
    Some(received + timeout.saturating_sub(DEADLINE_MARGIN))
}

/// Tokenizes and truncates every input; text goes to a blocking thread so tokio workers stay free.
async fn sequences(
    ctx: &Arc<Context>,
    contents: Vec<Content>,
    truncation: pb::Truncation,
) -> Result<(Vec<Vec<u32>>, Vec<bool>, Duration), ServeError> {
    let max = ctx.facts.max_item_tokens;
    let started = Instant::now();
    let has_text = contents.iter().any(|c| matches!(c, Content::Text(_)));
    let work = {
        let tokenizer = ctx.tokenizer.clone();
        move || -> Result<(Vec<Vec<u32>>, Vec<bool>), ServeError> {
            let mut seqs = Vec::with_capacity(contents.len());
            let mut cut = Vec::with_capacity(contents.len());
            for (i, content) in contents.into_iter().enumerate() {
                let (ids, lead, trail) = match content {
                    Content::Ids(ids) => (ids, 0, 0),
                    Content::Text(text) => {
                        let tokenizer = tokenizer.as_ref().ok_or_else(|| {
                            ServeError::InvalidArgument(format!("inputs[{i}].text: the model has no tokenizer"))
                        })?;
                        tokenizer
                            .encode_with_specials(&text)
                            .map_err(|e| ServeError::InvalidArgument(format!("inputs[{i}].text: {e}")))?
                    }
                };
                if ids.is_empty() {
                    return Err(ServeError::InvalidArgument(format!(
                        "inputs[{i}]: the input has no tokens"
                    )));
                }
                let (ids, truncated) = convert::truncate(i, ids, lead, trail, max, truncation)?;
                seqs.push(ids);
                cut.push(truncated);
            }
            Ok((seqs, cut))
        }
    };
    let (seqs, cut) = if has_text {
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| ServeError::Internal(format!("tokenizer task: {e}")))??;
        metrics::histogram!(m::TOKENIZATION_DURATION).record(started.elapsed().as_secs_f64());
        out
    } else {
        work()?
    };
    Ok((seqs, cut, started.elapsed()))
}

/// Serves one `EmbedRequest` from receipt to response.
async fn handle(
    ctx: Arc<Context>,
    req: pb::EmbedRequest,
    received: Instant,
    deadline: Option<Instant>,
) -> Result<pb::EmbedResponse, ServeError> {
    if ctx.draining.is_cancelled() {
        return Err(ServeError::ShuttingDown);
    }
    if !ctx.engine.is_ready() {
        return Err(ServeError::Loading);
    }
    let _admitted = ctx.admission.clone().try_acquire_owned().map_err(|_| {
        ServeError::TooManyRequests(format!(
            "max_concurrent_requests ({}) requests are being served; retry later",
            ctx.max_concurrent_requests
        ))
    })?;
    let request_id = req.request_id.clone();
    let parsed = convert::parse(req, &ctx.facts)?;
    let (seqs, truncated, tokenize_time) = sequences(&ctx, parsed.contents, parsed.truncation).await?;
    let per_token = parsed.spec.pooling == Pooling::None;
    let reply = ctx.engine.submit(Job {
        sequences: seqs,
        spec: parsed.spec,
        lane: parsed.lane,
        deadline,
        received,
    })?;
    let waiting = async {
        match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), reply)
                .await
                .map_err(|_| ServeError::DeadlineExceeded),
            None => Ok(reply.await),
        }
    };
    let answer = tokio::select! {
        answer = waiting => answer?,
        () = ctx.abort.cancelled() => return Err(ServeError::DrainTimeout),
    };
    let done = answer.map_err(|_| ServeError::ShuttingDown)??;
    let tokens: usize = done.items.iter().map(|i| i.tokens).sum();
    let embeddings = parsed
        .ids
        .into_iter()
        .zip(done.items)
        .zip(truncated)
        .map(|((id, out), cut)| convert::embedding(id, out, per_token, parsed.encoding, cut))
        .collect();
    Ok(pb::EmbedResponse {
        embeddings,
        usage: Some(pb::Usage {
            tokens: tokens as u32,
            queue_us: done.queue.as_micros() as u64,
            compute_us: (done.compute + tokenize_time).as_micros() as u64,
            total_us: received.elapsed().as_micros() as u64,
        }),
        request_id,
        error: None,
        head: parsed.head,
    })
}

/// `handle` with logging and metrics, in a span carrying the request id: the request's own `request_id`,
/// else the `x-request-id` header (set by the client or by the server's request-id layer), else a serial.
async fn handle_recorded(
    ctx: Arc<Context>,
    req: pb::EmbedRequest,
    call: Call,
) -> Result<pb::EmbedResponse, ServeError> {
    let mut record = CallRecord::new(call.rpc, call.received);
    if let Some(capture) = &ctx.capture {
        capture.offer(call.rpc, call.received, &req);
    }
    let request_id = if !req.request_id.is_empty() {
        req.request_id.clone()
    } else if let Some(id) = &call.header_id {
        id.clone()
    } else {
        format!("s{}", ctx.next_id.fetch_add(1, Ordering::Relaxed))
    };
    let span = tracing::info_span!("request", rpc = call.rpc, request_id = %request_id);
    let inputs = req.inputs.len();
    let result = handle(ctx, req, call.received, call.deadline)
        .instrument(span.clone())
        .await;
    record.finish(&result);
    let _entered = span.enter();
    match &result {
        Ok(r) => tracing::debug!(inputs, tokens = r.usage.as_ref().map_or(0, |u| u.tokens), "ok"),
        Err(e) => tracing::info!(inputs, error = %e, "failed"),
    }
    result
}

/// Facts of one call from its transport.
#[derive(Clone)]
struct Call {
    rpc: &'static str,
    received: Instant,
    deadline: Option<Instant>,
    header_id: Option<String>,
}

impl Call {
    fn new<T>(rpc: &'static str, request: &Request<T>) -> Self {
        let received = Instant::now();
        Self {
            rpc,
            received,
            deadline: deadline_of(request, received),
            header_id: request
                .metadata()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= convert::MAX_REQUEST_ID_BYTES)
                .map(str::to_owned),
        }
    }
}

/// The header carrying a request id (set by the client, or by the server's request-id layer).
pub(crate) const REQUEST_ID_HEADER: &str = "x-request-id";

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::EmbedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::embedder_server::Embedder for EmbedderService {
    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let call = Call::new("Embed", &request);
        handle_recorded(self.ctx.clone(), request.into_inner(), call)
            .await
            .map(Response::new)
            .map_err(|e| to_status(&e))
    }

    type EmbedStreamStream = ResponseStream;

    /// Each message is a request of its own, answered by one response (in completion order). At most
    /// `max_stream_in_flight` are in flight per stream: the stream is not read further until one ends, so a
    /// fast writer is held back by HTTP/2 flow control instead of growing the server's memory. When the
    /// server drains, the stream stops reading, answers what it holds, and ends with UNAVAILABLE so the
    /// client reconnects elsewhere.
    async fn embed_stream(
        &self,
        request: Request<Streaming<pb::EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let call = Call::new("EmbedStream", &request);
        let mut inbound = request.into_inner();
        let ctx = self.ctx.clone();
        let (tx, rx) = mpsc::channel::<Result<pb::EmbedResponse, Status>>(ctx.max_stream_in_flight);
        let permits = Arc::new(Semaphore::new(ctx.max_stream_in_flight));
        tokio::spawn(async move {
            loop {
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                    () = ctx.draining.cancelled() => break,
                    () = tx.closed() => return,
                };
                let message = tokio::select! {
                    message = inbound.next() => message,
                    () = ctx.draining.cancelled() => break,
                    () = tx.closed() => return,
                };
                let req = match message {
                    Some(Ok(req)) => req,
                    Some(Err(status)) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    None => return,
                };
                let (tx, ctx) = (tx.clone(), ctx.clone());
                let call = Call {
                    received: Instant::now(),
                    ..call.clone()
                };
                tokio::spawn(async move {
                    let _permit = permit;
                    let request_id = req.request_id.clone();
                    // A caller that went away stops waiting, which drops the queued work.
                    let result = tokio::select! {
                        r = handle_recorded(ctx, req, call) => r,
                        () = tx.closed() => return,
                    };
                    let response = result.unwrap_or_else(|e| {
                        let status = to_status(&e);
                        pb::EmbedResponse {
                            request_id,
                            error: Some(pb::RequestError {
                                code: status.code() as i32,
                                message: status.message().to_owned(),
                            }),
                            ..Default::default()
                        }
                    });
                    let _ = tx.send(Ok(response)).await;
                });
            }
            // Draining: once every request read from this stream is answered, end it.
            let all = u32::try_from(ctx.max_stream_in_flight).unwrap_or(u32::MAX);
            let _ = permits.acquire_many(all).await;
            let _ = tx.send(Err(to_status(&ServeError::ShuttingDown))).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn info(&self, _: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let mut record = CallRecord::new("Info", Instant::now());
        record.finish::<()>(&Ok(()));
        Ok(Response::new(convert::info(&self.ctx.facts)))
    }
}
