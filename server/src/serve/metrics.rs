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
/// Counter `{reason}`: requests refused or dropped: `invalid`, `queue_full`, `deadline`, `cancelled`.
pub(crate) const REJECTED_TOTAL: &str = "marc_rejected_total";
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
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

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
            while n < buf.len() {
                match socket.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
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
