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
mod engine;
mod error;
mod grpc;
mod metrics;
pub mod shutdown;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use marc_kernels::MatmulPrecision;
use marc_models::tokenizer::Tokenizer;
use marc_models::{CompressionHead, LoadOptions, NemotronH, NemotronHConfig, Pooling, default_head, load_heads};
use marc_proto::FILE_DESCRIPTOR_SET;
use marc_proto::marc::v1::embedder_server::EmbedderServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::output::Served;
use engine::{BatchSettings, Engine};
use grpc::service::{Context, EmbedderService};

/// The largest encoded `EmbedRequest` accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 16 << 20;

/// Everything `marc serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The model directory (config, weights, optional tokenizer and heads).
    pub model_dir: PathBuf,
    /// GEMM precision.
    pub precision: MatmulPrecision,
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
}

impl ServeConfig {
    /// The defaults for `model_dir`.
    pub fn new(model_dir: PathBuf) -> Self {
        Self {
            model_dir,
            precision: MatmulPrecision::Exact,
            max_batch_tokens: 8192,
            max_batch_wait: Duration::from_micros(500),
            max_queue_tokens: 262_144,
            max_items_per_request: 256,
            max_item_tokens: 8192,
            drain_timeout: Duration::from_secs(30),
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
}

impl ModelFacts {
    /// What requests may ask for.
    fn served(&self) -> Served<'_> {
        Served {
            heads: &self.heads,
            hidden_size: self.hidden_size,
            num_layers: self.num_layers,
            max_raw_layer: self.num_layers,
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
        quantization: match config.precision {
            MatmulPrecision::Exact => "none".into(),
            _ => "bf16".into(),
        },
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
    };

    let (ready_tx, ready_rx) = oneshot::channel();
    let precision = config.precision;
    let load_dir = dir.clone();
    // Raw requests may ask for any layer, so the whole model is loaded.
    let engine = Engine::start(
        BatchSettings {
            max_batch_tokens: config.max_batch_tokens,
            max_batch_wait: config.max_batch_wait,
            max_queue_tokens: config.max_queue_tokens,
        },
        heads,
        move || {
            NemotronH::load(
                &load_dir,
                LoadOptions {
                    max_layer: None,
                    precision,
                },
            )
            .with_context(|| format!("cannot load the model in {}", load_dir.display()))
        },
        ready_tx,
    )?;
    let ctx = Arc::new(Context {
        engine,
        facts,
        tokenizer,
        next_id: AtomicU64::new(0),
    });

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
    let draining = Arc::new(AtomicBool::new(false));
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let signal = {
        let reporter = reporter.clone();
        let draining = draining.clone();
        async move {
            shutdown.await;
            draining.store(true, Ordering::SeqCst);
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
                if !draining.load(Ordering::SeqCst) {
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
            tracing::warn!(seconds = drain_timeout.as_secs_f64(), "drain timeout: dropping the calls still in flight");
            server.abort();
        }
    }
    tracing::info!("stopped");
    Ok(())
}
