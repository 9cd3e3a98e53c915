//! Every metric the server exports, by name, in one place, and the Prometheus exporter behind `/metrics`.
//!
//! Durations are histograms in seconds (buckets 100 us .. 10 s); batch shapes are histograms with their own
//! buckets. The recorder is process-wide (installed once, shared by every server in the process).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counter `{rpc, code}`: finished RPCs (EmbedStream: each request in the stream), by gRPC code name.
pub(crate) const REQUESTS_TOTAL: &str = "marc_requests_total";
/// Histogram: receipt to compute start.
pub(crate) const QUEUE_DURATION: &str = "marc_queue_duration_seconds";
/// Histogram: tokenizing one request's text inputs.
pub(crate) const TOKENIZATION_DURATION: &str = "marc_tokenization_duration_seconds";
/// Histogram: one batch's forward pass, pooling and heads.
pub(crate) const COMPUTE_DURATION: &str = "marc_compute_duration_seconds";
/// Histogram: receipt to response ready.
pub(crate) const REQUEST_DURATION: &str = "marc_request_duration_seconds";
/// Histogram: sequences per batch.
pub(crate) const BATCH_SIZE: &str = "marc_batch_size";
/// Histogram: tokens per batch.
pub(crate) const BATCH_TOKENS: &str = "marc_batch_tokens";
/// Gauge: requests waiting in the queue.
pub(crate) const QUEUE_REQUESTS: &str = "marc_queue_requests";
/// Gauge: tokens waiting in the queue.
pub(crate) const QUEUE_TOKENS: &str = "marc_queue_tokens";
/// Gauge: requests received and not yet answered.
pub(crate) const IN_FLIGHT_REQUESTS: &str = "marc_in_flight_requests";
/// Counter: tokens computed.
pub(crate) const TOKENS_TOTAL: &str = "marc_tokens_total";
/// Counter `{head}`: items embedded, by head (`raw` for raw states).
pub(crate) const ITEMS_TOTAL: &str = "marc_items_total";
/// Counter `{reason}`: requests refused or dropped, one of [`REJECTION_REASONS`].
pub(crate) const REJECTED_TOTAL: &str = "marc_rejected_total";
/// Every `reason` label of [`REJECTED_TOTAL`]. Each starts at 0, so that rates and alerts over them have a
/// series to read before the first rejection (an absent series reads as "no data", not as zero).
pub(crate) const REJECTION_REASONS: [&str; 8] = [
    "invalid",
    "queue_full",
    "concurrency",
    "deadline",
    "loading",
    "shutting_down",
    "drain_timeout",
    "cancelled",
];
/// Gauge: the queue's capacity in tokens (`--max-queue-tokens`), so saturation is `marc_queue_tokens` over it.
pub(crate) const QUEUE_CAPACITY_TOKENS: &str = "marc_queue_capacity_tokens";
/// Gauge: requests the server serves at once (`--max-concurrent-requests`), the ceiling of the in-flight gauge.
pub(crate) const CONCURRENCY_LIMIT: &str = "marc_concurrency_limit";
/// Gauge: 1 while health reports SERVING, 0 while loading or draining.
pub(crate) const SERVING: &str = "marc_serving";
/// Counter: `--capture` records dropped because the capture buffer was full or the file could not be written.
pub(crate) const CAPTURE_DROPPED_TOTAL: &str = "marc_capture_dropped_total";
/// Gauge: seconds the model took to load.
pub(crate) const MODEL_LOAD_SECONDS: &str = "marc_model_load_seconds";
/// Gauge `{version}`: 1.
pub(crate) const BUILD_INFO: &str = "marc_build_info";

const SECONDS_BUCKETS: [f64; 16] = [
    1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_SIZE_BUCKETS: [f64; 11] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
const BATCH_TOKENS_BUCKETS: [f64; 13] = [
    16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
];

/// Installs the process-wide Prometheus recorder on first use and returns its handle.
pub(crate) fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), &BATCH_TOKENS_BUCKETS))
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            for reason in REJECTION_REASONS {
                metrics::counter!(REJECTED_TOTAL, "reason" => reason).absolute(0);
            }
            handle
        })
        .clone()
}

/// The `# HELP` line and unit of every metric, as Prometheus and Grafana show them.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "Finished calls (each request of a stream counts), by rpc and gRPC code."
    );
    describe_histogram!(
        QUEUE_DURATION,
        Unit::Seconds,
        "Receipt to the start of the request's first batch."
    );
    describe_histogram!(
        TOKENIZATION_DURATION,
        Unit::Seconds,
        "Tokenizing one request's text inputs."
    );
    describe_histogram!(
        COMPUTE_DURATION,
        Unit::Seconds,
        "One batch: forward pass, pooling and heads."
    );
    describe_histogram!(REQUEST_DURATION, Unit::Seconds, "Receipt to response ready.");
    describe_histogram!(BATCH_SIZE, Unit::Count, "Sequences per batch.");
    describe_histogram!(BATCH_TOKENS, Unit::Count, "Tokens per batch.");
    describe_gauge!(QUEUE_REQUESTS, Unit::Count, "Requests waiting in the queue.");
    describe_gauge!(QUEUE_TOKENS, Unit::Count, "Tokens waiting in the queue.");
    describe_gauge!(
        QUEUE_CAPACITY_TOKENS,
        Unit::Count,
        "Tokens the queue holds before refusing requests."
    );
    describe_gauge!(
        IN_FLIGHT_REQUESTS,
        Unit::Count,
        "Requests received and not yet answered."
    );
    describe_gauge!(
        CONCURRENCY_LIMIT,
        Unit::Count,
        "Requests served at once before refusing more."
    );
    describe_counter!(TOKENS_TOTAL, Unit::Count, "Tokens computed.");
    describe_counter!(
        ITEMS_TOTAL,
        Unit::Count,
        "Items embedded, by head (raw for raw states)."
    );
    describe_counter!(REJECTED_TOTAL, Unit::Count, "Requests refused or dropped, by reason.");
    describe_counter!(
        CAPTURE_DROPPED_TOTAL,
        Unit::Count,
        "--capture records dropped: the capture buffer was full or the file could not be written."
    );
    describe_gauge!(MODEL_LOAD_SECONDS, Unit::Seconds, "Model load and warm-up time.");
    describe_gauge!(SERVING, "1 while health reports SERVING, 0 while loading or draining.");
    describe_gauge!(BUILD_INFO, "Always 1; the version is a label.");
}

/// How long a scraper may take to send its request head.
const REQUEST_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves `GET /metrics` (Prometheus text format) on `listener`, one short HTTP/1.1 exchange per connection.
pub(crate) async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut n = 0;
            let read_head = async {
                while n < buf.len() {
                    match socket.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            };
            // A client that never finishes its request line must not hold a task and a socket forever.
            if tokio::time::timeout(REQUEST_HEAD_TIMEOUT, read_head).await.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let mut words = head.split_whitespace();
            let (status, body) = match (words.next(), words.next()) {
                (Some("GET"), Some("/metrics")) => ("200 OK", handle.render()),
                _ => ("404 Not Found", "only GET /metrics is served here\n".to_owned()),
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}
