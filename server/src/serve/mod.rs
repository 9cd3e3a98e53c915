//! `marc serve`: the gRPC embedding server.
//!
//! - `engine.rs`: the thread that owns the model and runs batches.
//! - `batching/queue.rs`: token-budget dynamic batching, bounded by tokens, no transport.
//! - `grpc/`: the `marc.v1.Embedder` service (`service.rs`), proto <-> domain (`convert.rs`) and the one
//!   mapping of domain errors to gRPC statuses (`status.rs`).
//! - `metrics.rs`: every metric name and the `/metrics` endpoint; [`shutdown`]: signals.
//!
//! [`run`] serves on listeners the caller bound, so tests can use ephemeral ports.

mod batching;
mod capture;
mod engine;
mod error;
mod grpc;
mod metrics;
pub mod shutdown;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use marc_kernels::{Device, MatmulPrecision};
use marc_models::tokenizer::Tokenizer;
use marc_models::{CompressionHead, LoadOptions, NemotronHConfig, Pooling, QuantMode, default_head, load_heads};
use marc_proto::FILE_DESCRIPTOR_SET;
use marc_proto::marc::v1::embedder_server::EmbedderServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::HeaderName;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

pub use capture::CaptureConfig;

use crate::output::Served;
use crate::quantization::Quantization;
use engine::{BatchSettings, Engine};
use grpc::service::{Context, EmbedderService, REQUEST_ID_HEADER};

/// The largest encoded `EmbedRequest` accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// How long requests answered UNAVAILABLE at the drain timeout get to reach their clients.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// The most requests one `EmbedStream` call may be allowed in flight.
pub const MAX_STREAM_IN_FLIGHT: usize = 4096;

/// Everything `marc serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The model directory (config, weights, optional tokenizer and heads).
    pub model_dir: PathBuf,
    /// Where the model runs (`--device`).
    pub device: Device,
    /// GEMM precision.
    pub precision: MatmulPrecision,
    /// How a quantised checkpoint's NVFP4 layers run (`--quant`); `None`: w4a16, and unquantised
    /// checkpoints are accepted.
    pub quant: Option<QuantMode>,
    /// Tokens per forward pass.
    pub max_batch_tokens: usize,
    /// How long a non-full batch waits for more work.
    pub max_batch_wait: Duration,
    /// Tokens queued before requests are refused with RESOURCE_EXHAUSTED.
    pub max_queue_tokens: usize,
    /// Inputs per request.
    pub max_items_per_request: usize,
    /// Tokens per input.
    pub max_item_tokens: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// Requests one `EmbedStream` call may have in flight.
    pub max_stream_in_flight: usize,
    /// Requests served at once across all calls (validated, tokenized, queued or computed); more are refused
    /// with RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    /// How long a lower-priority request may wait before it is served ahead of higher-priority work.
    pub starvation_limit: Duration,
    /// The deepest hidden state raw requests may ask for; the model is loaded only up to this layer (or
    /// the deepest head's source layer, if deeper). `None`: the whole model.
    pub max_layer: Option<usize>,
    /// Close connections after this long (with a grace period for calls in flight), so clients reconnect and
    /// load spreads over new replicas. `None`: never.
    pub max_connection_age: Option<Duration>,
    /// Record live calls to a trace file (`--capture`). `None`: no capture.
    pub capture: Option<CaptureConfig>,
}

impl ServeConfig {
    /// The defaults for `model_dir`.
    pub fn new(model_dir: PathBuf) -> Self {
        Self {
            model_dir,
            device: Device::Cpu,
            precision: MatmulPrecision::Exact,
            quant: None,
            max_batch_tokens: 8192,
            max_batch_wait: Duration::from_micros(500),
            max_queue_tokens: 262_144,
            max_items_per_request: 256,
            max_item_tokens: 8192,
            drain_timeout: Duration::from_secs(30),
            max_stream_in_flight: 64,
            max_concurrent_requests: 1024,
            starvation_limit: Duration::from_millis(100),
            max_layer: None,
            max_connection_age: None,
            capture: None,
        }
    }
}

/// What validation and `Info` need to know about the model and the limits.
pub(crate) struct ModelFacts {
    name: String,
    architecture: String,
    weight_dtype: String,
    quantization: String,
    num_layers: usize,
    hidden_size: usize,
    vocab_size: usize,
    heads: Arc<Vec<CompressionHead>>,
    default_head: Option<usize>,
    has_tokenizer: bool,
    max_batch_tokens: usize,
    max_item_tokens: usize,
    max_items_per_request: usize,
    max_request_bytes: usize,
    /// The deepest hidden state raw requests may ask for.
    max_raw_layer: usize,
    /// What runs the forward pass, e.g. `cpu (avx512)`.
    backend: String,
}

impl ModelFacts {
    /// What requests may ask for.
    fn served(&self) -> Served<'_> {
        Served {
            heads: &self.heads,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            max_raw_layer: self.max_raw_layer,
            // gRPC's raw default: every token's state.
            raw_pooling: Pooling::None,
        }
    }
}

/// Serves until `shutdown` resolves, then drains: health turns NOT_SERVING, no new calls are accepted,
/// in-flight calls get up to `drain_timeout` to finish. Health is NOT_SERVING until the model has loaded and
/// run one warm-up forward pass. `/metrics` is served on `metrics` when given.
pub async fn run(
    config: ServeConfig,
    grpc: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    ensure!(config.max_batch_tokens > 0, "--max-batch-tokens must be at least 1");
    ensure!(config.max_item_tokens > 0, "--max-item-tokens must be at least 1");
    ensure!(
        config.max_items_per_request > 0,
        "--max-items-per-request must be at least 1"
    );
    ensure!(
        (1..=tokio::sync::Semaphore::MAX_PERMITS).contains(&config.max_concurrent_requests),
        "--max-concurrent-requests must be at least 1"
    );
    ensure!(
        (1..=MAX_STREAM_IN_FLIGHT).contains(&config.max_stream_in_flight),
        "--max-stream-in-flight must be between 1 and {MAX_STREAM_IN_FLIGHT}"
    );
    ensure!(
        config.max_item_tokens <= config.max_batch_tokens,
        "--max-item-tokens ({}) must be at most --max-batch-tokens ({})",
        config.max_item_tokens,
        config.max_batch_tokens
    );
    let handle = metrics::install();
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve(listener, handle));
    }

    let dir = config.model_dir.clone();
    let model_config = NemotronHConfig::from_file(&dir.join("config.json"))?;
    let quantization = Quantization::resolve(&dir, config.quant)?;
    let heads = Arc::new(
        load_heads(
            &dir,
            model_config.hidden_size,
            model_config.num_layers(),
            config.precision,
        )
        .with_context(|| format!("cannot load the compression heads in {}", dir.display()))?,
    );
    let default = default_head(&heads).and_then(|d| heads.iter().position(|h| h.name == d.name));
    let num_layers = model_config.num_layers();
    let max_raw_layer = config.max_layer.unwrap_or(num_layers);
    ensure!(
        max_raw_layer <= num_layers,
        "--max-layer {max_raw_layer}: the model has hidden states 0..={num_layers} (0 = embeddings)"
    );
    // Only blocks some request can reach are loaded: raw layers up to --max-layer, and every head's source.
    let load_depth = heads.iter().map(|h| h.source_layer).fold(max_raw_layer, usize::max);
    let tokenizer = if dir.join(Tokenizer::FILE).is_file() {
        Some(Arc::new(Tokenizer::from_dir(&dir)?))
    } else {
        None
    };
    let described = &model_config.description;
    let facts = ModelFacts {
        name: described.name.clone().unwrap_or_else(|| dir.display().to_string()),
        architecture: described
            .architecture
            .clone()
            .unwrap_or_else(|| "NemotronHForCausalLM".into()),
        weight_dtype: described.dtype.clone().unwrap_or_else(|| "unknown".into()),
        quantization: quantization.describe(config.precision),
        num_layers: model_config.num_layers(),
        hidden_size: model_config.hidden_size,
        vocab_size: model_config.vocab_size,
        default_head: default,
        heads: heads.clone(),
        has_tokenizer: tokenizer.is_some(),
        max_batch_tokens: config.max_batch_tokens,
        max_item_tokens: config.max_item_tokens,
        max_items_per_request: config.max_items_per_request,
        max_request_bytes: MAX_REQUEST_BYTES,
        max_raw_layer,
        backend: match config.device {
            Device::Cpu => format!("cpu-{}", marc_kernels::ops::matmul::matmul_isa()),
            cuda => cuda.to_string(),
        },
    };

    let (capture, capture_writer) = match &config.capture {
        Some(c) => {
            let (capture, writer) = capture::start(c, tokenizer.clone(), config.max_item_tokens)?;
            (Some(capture), Some(writer))
        }
        None => (None, None),
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let precision = config.precision;
    let quant = quantization.mode;
    let load_dir = dir.clone();
    let (device, max_tokens) = (config.device, config.max_batch_tokens);
    let engine = Engine::start(
        BatchSettings {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_wait: config.max_batch_wait,
            max_queue_tokens: config.max_queue_tokens,
            starvation_limit: config.starvation_limit,
        },
        heads,
        move || {
            let options = LoadOptions {
                max_layer: Some(load_depth),
                precision,
                quant,
            };
            // --max-item-tokens <= --max-batch-tokens (checked above): no forward pass is longer.
            crate::model::load(&load_dir, options, device, max_tokens, &mut |_| {})
        },
        ready_tx,
    )?;
    let draining = CancellationToken::new();
    let abort = CancellationToken::new();
    let ctx = Arc::new(Context {
        engine,
        facts,
        tokenizer,
        next_id: AtomicU64::new(0),
        max_stream_in_flight: config.max_stream_in_flight,
        admission: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_requests)),
        max_concurrent_requests: config.max_concurrent_requests,
        draining: draining.clone(),
        abort: abort.clone(),
        capture,
    });

    ::metrics::gauge!(metrics::QUEUE_CAPACITY_TOKENS).set(config.max_queue_tokens as f64);
    ::metrics::gauge!(metrics::CONCURRENCY_LIMIT).set(config.max_concurrent_requests as f64);
    ::metrics::gauge!(metrics::SERVING).set(0.0);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_not_serving::<EmbedderServer<EmbedderService>>().await;
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = EmbedderServer::new(EmbedderService::new(ctx))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(usize::MAX);
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        let draining = draining.clone();
        async move {
            shutdown.await;
            draining.cancel();
            ::metrics::gauge!(metrics::SERVING).set(0.0);
            tracing::info!("draining: health NOT_SERVING, no new calls");
            reporter.set_not_serving::<EmbedderServer<EmbedderService>>().await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            let _ = drain_tx.send(());
        }
    };
    let addr = grpc.local_addr()?;
    let mut server = tokio::spawn(
        Server::builder()
            .max_connection_age(config.max_connection_age.unwrap_or(Duration::MAX))
            // Every call gets an x-request-id (the client's, or a new UUID), echoed in the response headers
            // and used as the request id in the logs when the request carries none of its own.
            .layer(SetRequestIdLayer::new(
                HeaderName::from_static(REQUEST_ID_HEADER),
                MakeRequestUuid,
            ))
            .layer(PropagateRequestIdLayer::new(HeaderName::from_static(REQUEST_ID_HEADER)))
            .add_service(health)
            .add_service(reflection)
            .add_service(service)
            // No Nagle: small responses would otherwise wait ~40 ms for the peer's delayed ACK.
            .serve_with_incoming_shutdown(TcpIncoming::from(grpc).with_nodelay(Some(true)), signal),
    );
    tracing::info!(%addr, "gRPC listening; loading the model");

    let ready = async {
        match ready_rx.await {
            Ok(Ok(load_time)) => {
                ::metrics::gauge!(metrics::MODEL_LOAD_SECONDS).set(load_time.as_secs_f64());
                if !draining.is_cancelled() {
                    ::metrics::gauge!(metrics::SERVING).set(1.0);
                    reporter.set_serving::<EmbedderServer<EmbedderService>>().await;
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                }
                tracing::info!(seconds = load_time.as_secs_f64(), "model loaded and warmed up: SERVING");
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("the engine thread stopped before the model loaded")),
        }
    };
    tokio::select! {
        r = ready => if let Err(e) = r {
            server.abort();
            return Err(e);
        },
        r = &mut server => {
            r??;
            return Ok(());
        }
    }
    let drain_timeout = config.drain_timeout;
    let deadline = async move {
        let _ = drain_rx.await;
        tokio::time::sleep(drain_timeout).await;
    };
    tokio::select! {
        r = &mut server => r??,
        () = deadline => {
            tracing::warn!(
                seconds = drain_timeout.as_secs_f64(),
                "drain timeout: answering the requests still in flight UNAVAILABLE"
            );
            abort.cancel();
            // Give their statuses a moment to be written before the connections go.
            if tokio::time::timeout(ABORT_GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
    }
    if let Some(writer) = capture_writer {
        writer.finish().await;
    }
    tracing::info!("stopped");
    Ok(())
}
