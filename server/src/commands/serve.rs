//! `marc serve`: binds the listeners, sets up logging and runs [`crate::serve::run`] until a signal.

use std::io::IsTerminal;
use std::time::Duration;

use crate::serve::{CaptureConfig, ServeConfig, run as serve, shutdown};
use anyhow::Context;
use marc_kernels::{Device, MatmulPrecision};

use crate::cli::{ServeArgs, default_model_dir};

pub(crate) fn run(args: &ServeArgs, precision: MatmulPrecision, device: Device) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        logs.json().with_current_span(true).init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
    let config = ServeConfig {
        device,
        precision,
        quant: args.quant.quant,
        max_batch_tokens: args.max_batch_tokens,
        max_batch_wait: Duration::from_micros(args.max_batch_wait_us),
        max_queue_tokens: args.max_queue_tokens,
        max_items_per_request: args.max_items_per_request,
        max_item_tokens: args.max_item_tokens,
        drain_timeout: Duration::from_secs(args.drain_timeout_s),
        max_stream_in_flight: args.max_stream_in_flight,
        max_concurrent_requests: args.max_concurrent_requests,
        starvation_limit: Duration::from_millis(args.starvation_limit_ms),
        max_layer: args.max_layer,
        max_connection_age: args.max_connection_age_s.map(Duration::from_secs),
        capture: args.capture.clone().map(|path| CaptureConfig {
            path,
            sample: args.capture_sample,
            token_ids: args.capture_token_ids,
        }),
        ..ServeConfig::new(args.model.clone().unwrap_or_else(default_model_dir))
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("marc-grpc")
        .build()?;
    runtime.block_on(async {
        let grpc = tokio::net::TcpListener::bind(&args.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on --grpc-addr {}", args.grpc_addr))?;
        let metrics = tokio::net::TcpListener::bind(&args.metrics_addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {}", args.metrics_addr))?;
        eprintln!(
            "marc serve: gRPC on {}, metrics on http://{}/metrics",
            grpc.local_addr()?,
            metrics.local_addr()?
        );
        serve(config, grpc, Some(metrics), shutdown::signal()).await
    })
}
