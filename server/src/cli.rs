//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use marc_kernels::{Device, MatmulPrecision};
use marc_models::{Pooling, QuantMode};

/// marc: compressed middle-layer representations of Nemotron-H models.
#[derive(Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    /// Compute threads (default: all cores).
    #[arg(long, global = true, env = "MARC_THREADS")]
    pub(crate) threads: Option<usize>,
    /// GEMM activations: `exact` f32 (default), or `bf16`, rounded to bf16 for ~3x faster AMX
    /// matrix multiplies (relative error ~1e-2 in the hidden states; other CPUs run exact anyway).
    #[arg(long, global = true, env = "MARC_PRECISION", default_value = "exact", value_parser = parse_precision)]
    pub(crate) precision: MatmulPrecision,
    /// Where the model runs: `cpu` (default), or `cuda` / `cuda:N` for `marc serve`, `marc embed`,
    /// `marc head init` and `marc bench` (fails with the reason when the machine has no CUDA driver,
    /// or when the CUDA backend cannot run the model, e.g. attention heads it has no kernel for;
    /// see docs/gpu.md). `marc quantize` runs on the CPU and refuses `cuda`.
    #[arg(long, global = true, env = "MARC_DEVICE", default_value = "cpu")]
    pub(crate) device: Device,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Embed a JSONL file of items offline, with the engine the server uses.
    Embed(EmbedArgs),
    /// Measure latency and throughput of the forward pass.
    Bench(BenchArgs),
    /// Manage a model's compression heads.
    #[command(subcommand)]
    Head(HeadCommand),
    /// Serve embeddings over gRPC (marc.v1.Embedder), with health, reflection and Prometheus metrics.
    Serve(ServeArgs),
    /// Ask a running server whether it is SERVING (grpc.health.v1); exit 0 if so, for container health checks.
    Health(HealthArgs),
    /// Write an NVFP4 checkpoint (ModelOpt or compressed-tensors layout) from an unquantised one.
    Quantize(QuantizeArgs),
}

impl Command {
    /// Whether the command runs the model on `--device` (so the device is opened, and refused with
    /// its reason, before anything else). `marc health` is a client of a running server: the CUDA
    /// image sets `MARC_DEVICE=cuda` for every command, its health check included.
    pub(crate) fn runs_a_model(&self) -> bool {
        !matches!(self, Command::Health(_))
    }
}

/// `--quant` (shared by `marc embed`, `marc serve` and `marc bench`).
#[derive(Args)]
pub(crate) struct QuantArgs {
    /// How the NVFP4 layers of a quantised checkpoint (ModelOpt, compressed-tensors) run: `w4a16`
    /// (the default: weights decoded in the kernel, f32 activations) or `w4a4` (activations quantised
    /// to NVFP4 with each layer's static input scale, as Blackwell tensor cores do). Refused for a
    /// checkpoint without NVFP4 layers, whose weights always run as stored.
    #[arg(long, env = "MARC_QUANT", value_parser = parse_quant)]
    pub(crate) quant: Option<QuantMode>,
}

#[derive(Args)]
pub(crate) struct QuantizeArgs {
    /// The unquantised model directory (config.json + safetensors [+ tokenizer files] [+ heads/]).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Where to write the NVFP4 checkpoint (tokenizer files and heads are copied along).
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// The layout: `modelopt` (NVIDIA ModelOpt's export, with hf_quant_config.json) or
    /// `compressed-tensors` (`nvfp4-pack-quantized`, as llm-compressor writes).
    #[arg(long, default_value = "modelopt", value_parser = ["modelopt", "compressed-tensors"])]
    pub(crate) format: String,
    /// Module-name patterns (`*` wildcards, e.g. `*.out_proj`) to leave unquantised, besides what
    /// ModelOpt leaves: embeddings, lm_head, the MoE router gate, conv1d, norms, SSM parameters.
    #[arg(long, num_args = 1..)]
    pub(crate) exclude: Vec<String>,
    /// Replace an output directory that already holds a model.
    #[arg(long)]
    pub(crate) force: bool,
    /// Calibrate the activations on this corpus (`marc embed`'s input format) and write each NVFP4
    /// layer's static input scale, so the checkpoint also runs `--quant w4a4`; without it the
    /// checkpoint is weight-only (W4A16).
    #[arg(long, value_name = "CORPUS")]
    pub(crate) calibrate: Option<PathBuf>,
    /// Tokens per forward pass while calibrating.
    #[arg(long, default_value_t = 4096, requires = "calibrate")]
    pub(crate) calibration_batch_tokens: usize,
}

#[derive(Args)]
pub(crate) struct HealthArgs {
    /// The server's gRPC address.
    #[arg(long, env = "MARC_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    pub(crate) addr: String,
    /// The service to ask about: empty for the whole server, or `marc.v1.Embedder`.
    #[arg(long, default_value = "")]
    pub(crate) service: String,
    /// Milliseconds to wait for the connection and for the answer.
    #[arg(long, default_value_t = 2000)]
    pub(crate) timeout_ms: u64,
}

/// Every flag can also be set by an environment variable, `MARC_` and the flag's name in capitals
/// (`--max-batch-tokens` = `MARC_MAX_BATCH_TOKENS`), so a Kubernetes ConfigMap can carry them; a flag on the
/// command line wins over the variable.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Model directory (config.json + safetensors [+ tokenizer.json] [+ heads/]); default: the demo model.
    #[arg(long, env = "MARC_MODEL")]
    pub(crate) model: Option<PathBuf>,
    /// Address for gRPC (port 0 picks a free port; the address is logged).
    #[arg(long, env = "MARC_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub(crate) grpc_addr: String,
    /// Address for Prometheus metrics at /metrics.
    #[arg(long, env = "MARC_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub(crate) metrics_addr: String,
    /// Tokens per forward pass (sequences are packed without padding; a longer item runs alone).
    #[arg(long, env = "MARC_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub(crate) max_batch_tokens: usize,
    /// Microseconds a batch that is not full waits for more requests.
    #[arg(long, env = "MARC_MAX_BATCH_WAIT_US", default_value_t = 500)]
    pub(crate) max_batch_wait_us: u64,
    /// Tokens the queue holds; requests beyond it get RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "MARC_MAX_QUEUE_TOKENS", default_value_t = 262_144)]
    pub(crate) max_queue_tokens: usize,
    /// Inputs one request may carry.
    #[arg(long, env = "MARC_MAX_ITEMS_PER_REQUEST", default_value_t = 256)]
    pub(crate) max_items_per_request: usize,
    /// Tokens one input may have (after tokenization); longer inputs follow the request's truncation.
    #[arg(long, env = "MARC_MAX_ITEM_TOKENS", default_value_t = 8192)]
    pub(crate) max_item_tokens: usize,
    /// Seconds in-flight requests get to finish after SIGTERM/SIGINT; those still running then get UNAVAILABLE.
    #[arg(long, env = "MARC_DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub(crate) drain_timeout_s: u64,
    /// Requests served at once across all calls (validated, tokenized, queued or computed); more get
    /// RESOURCE_EXHAUSTED at once. Bounds the memory of requests not yet in the token-bounded queue.
    #[arg(long, env = "MARC_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub(crate) max_concurrent_requests: usize,
    /// Milliseconds a lower-priority request may wait before it is served ahead of higher-priority work.
    #[arg(long, env = "MARC_STARVATION_LIMIT_MS", default_value_t = 100)]
    pub(crate) starvation_limit_ms: u64,
    /// Requests one EmbedStream call may have in flight; the stream is not read further until one ends.
    #[arg(long, env = "MARC_MAX_STREAM_IN_FLIGHT", default_value_t = 64)]
    pub(crate) max_stream_in_flight: usize,
    /// The deepest hidden state raw requests may ask for (0 = embeddings); blocks past it and past every
    /// head's source layer are not loaded. Default: the whole model.
    #[arg(long, env = "MARC_MAX_LAYER")]
    pub(crate) max_layer: Option<usize>,
    /// Close each connection after this many seconds (calls in flight get a grace period), so clients
    /// reconnect and spread over replicas. Default: never.
    #[arg(long, env = "MARC_MAX_CONNECTION_AGE_S")]
    pub(crate) max_connection_age_s: Option<u64>,
    /// Log format on stderr: `text`, or `json` (one object per line, for log pipelines). Filter with RUST_LOG.
    #[arg(long, env = "MARC_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    /// Record live calls to FILE as a marc trace (JSON lines) for `marc-loadtest replay`. Recording never
    /// slows or fails a request: when its buffer is full a record is dropped (`marc_capture_dropped_total`).
    #[arg(long, env = "MARC_CAPTURE", value_name = "FILE")]
    pub(crate) capture: Option<PathBuf>,
    /// The fraction of calls --capture records, in (0, 1] (exactly every 1/RATE-th call).
    #[arg(
        long,
        env = "MARC_CAPTURE_SAMPLE",
        value_name = "RATE",
        default_value_t = 1.0,
        requires = "capture"
    )]
    pub(crate) capture_sample: f64,
    /// Record text inputs as the token ids the model saw (after truncation) instead of the text.
    #[arg(long, env = "MARC_CAPTURE_TOKEN_IDS", requires = "capture")]
    pub(crate) capture_token_ids: bool,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
}

#[derive(Subcommand)]
pub(crate) enum HeadCommand {
    /// Fit a PCA head on a corpus so the model gives compact vectors without a trained head.
    Init(HeadInitArgs),
}

#[derive(Args)]
pub(crate) struct HeadInitArgs {
    /// Model directory; the head is written to DIR/heads/NAME/.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The corpus, in `marc embed`'s input format (JSONL of `token_ids` or `text` items).
    #[arg(long)]
    pub(crate) corpus: PathBuf,
    /// The hidden state the head reads (transformers' `hidden_states[L]`, 0 = embeddings).
    #[arg(long)]
    pub(crate) layer: usize,
    /// Output dimension: the number of principal components kept.
    #[arg(long)]
    pub(crate) dim: usize,
    /// The head's name (its folder under DIR/heads/); `default` makes it the default head.
    #[arg(long)]
    pub(crate) name: String,
    /// How token states are pooled before the head.
    #[arg(long, default_value = "mean", value_parser = ["mean", "last"])]
    pub(crate) pooling: String,
    /// Do not L2-normalise the head's output.
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// Replace an existing head of the same name.
    #[arg(long)]
    pub(crate) force: bool,
    /// Tokens per forward pass while embedding the corpus.
    #[arg(long, default_value_t = 8192)]
    pub(crate) max_batch_tokens: usize,
}

/// The built-in demo model, used when no `--model` is given.
pub(crate) fn default_model_dir() -> PathBuf {
    std::env::var_os("MARC_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/demo")))
}

#[derive(Args)]
pub(crate) struct EmbedArgs {
    /// Model directory (config.json + safetensors [+ tokenizer.json]); default: the demo model.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Input: one `{"id": ..., "token_ids": [...]}` or `{"id": ..., "text": "..."}` per line.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Output: one `{"id": ..., "embedding": [...]}` (or `"hidden"` with --pooling none) per input line, in order.
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// transformers' `hidden_states[L]`: 0 = embeddings, L = output of block L (the last with norm_f).
    /// Raw states only (with a head, the head's source layer is used). Default: the last layer.
    #[arg(long)]
    pub(crate) layer: Option<usize>,
    /// How token states become one vector: none, mean (default) or last. With a head, the head's.
    #[arg(long, value_parser = parse_pooling)]
    pub(crate) pooling: Option<Pooling>,
    /// Compress with this head (DIR/heads/NAME/). Default: the model's default head, if any.
    #[arg(long, conflicts_with = "no_head")]
    pub(crate) head: Option<String>,
    /// Return raw hidden states even if the model directory has a compression head.
    #[arg(long)]
    pub(crate) no_head: bool,
    /// Keep only the first N components of each vector (Matryoshka truncation; before normalising).
    #[arg(long)]
    pub(crate) dimensions: Option<usize>,
    /// L2-normalise each output vector (default: the head's setting; raw states are not normalised).
    #[arg(long, conflicts_with = "no_normalize")]
    pub(crate) normalize: bool,
    /// Do not L2-normalise, even if the head does.
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// Tokens per forward pass (items are packed without padding up to this budget).
    #[arg(long, default_value_t = 8192)]
    pub(crate) max_batch_tokens: usize,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
}

impl EmbedArgs {
    /// `--normalize` / `--no-normalize`, or neither.
    pub(crate) fn normalize(&self) -> Option<bool> {
        match (self.normalize, self.no_normalize) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

fn parse_pooling(s: &str) -> Result<Pooling, String> {
    s.parse()
}

fn parse_quant(s: &str) -> Result<QuantMode, String> {
    s.parse()
}

fn parse_precision(s: &str) -> Result<MatmulPrecision, String> {
    match s {
        "exact" => Ok(MatmulPrecision::Exact),
        "bf16" => Ok(MatmulPrecision::Bf16Activations),
        other => Err(format!("unknown precision {other:?}: expected exact or bf16")),
    }
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Model directory to benchmark; default: random weights for `--config`.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Config for random weights (default: the 150M benchmark configuration).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/configs/bench-150m.json"))]
    pub(crate) config: PathBuf,
    /// Keep the random checkpoint in this directory (e.g. to `marc serve` it) instead of a temporary one.
    #[arg(long, conflicts_with = "model")]
    pub(crate) save_model: Option<PathBuf>,
    /// Weight dtype of the random checkpoint.
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    pub(crate) dtype: String,
    /// Batch shapes as SEQUENCESxTOKENS.
    #[arg(long, value_delimiter = ',', default_value = "1x32,16x128")]
    pub(crate) shapes: Vec<String>,
    /// Timed iterations per shape (after warm-up).
    #[arg(long, default_value_t = 20)]
    pub(crate) iterations: usize,
    /// Also print the time spent per block kind.
    #[arg(long)]
    pub(crate) profile: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) quant: QuantArgs,
}

/// Builds the global compute pool.
pub(crate) fn init_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        builder = builder.num_threads(n);
    }
    builder.build_global()?;
    Ok(())
}
