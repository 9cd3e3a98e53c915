//! The `marc` binary as a container runs it: `marc serve` configured only through `MARC_*` environment
//! variables (what the Kubernetes ConfigMap carries), `marc health` as the container's health check, and the
//! `/metrics` page Prometheus scrapes (a HELP line for every family, the saturation gauges).

mod common;

use common::*;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use marc_proto::marc::v1::InfoRequest;
use marc_proto::marc::v1::embedder_client::EmbedderClient;
use tonic::transport::Channel;

/// `marc health` as the CUDA image runs it: with `MARC_DEVICE=cuda` in its environment, which a
/// client of the server has no use for (and which this machine, with no CUDA driver, could not open).
fn health(addr: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_marc"))
        .args(["health", "--addr", addr, "--timeout-ms", "1000"])
        .env("MARC_DEVICE", "cuda")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_its_flags_from_the_environment_and_health_reports_serving() {
    let server = Process::serve(&[
        ("MARC_GRPC_ADDR", "127.0.0.1:0"),
        ("MARC_METRICS_ADDR", "127.0.0.1:0"),
        ("MARC_MAX_ITEMS_PER_REQUEST", "3"),
        ("MARC_MAX_QUEUE_TOKENS", "5000"),
        ("MARC_MAX_CONCURRENT_REQUESTS", "7"),
        ("MARC_THREADS", "1"),
    ]);
    let started = Instant::now();
    let serving = loop {
        let out = health(&server.grpc.to_string());
        if out.status.success() {
            break out;
        }
        assert!(
            started.elapsed() < LIMIT,
            "never SERVING: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(String::from_utf8_lossy(&serving.stdout).trim(), "SERVING");

    let channel = bounded(
        "connect",
        Channel::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect(),
    )
    .await
    .unwrap();
    let info = bounded("info", EmbedderClient::new(channel).info(InfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.limits.unwrap().max_items_per_request, 3);

    let text = scrape(server.metrics).await;
    assert_eq!(sample(&text, "marc_queue_capacity_tokens", &[]), 5000.0);
    assert_eq!(sample(&text, "marc_concurrency_limit", &[]), 7.0);
    assert_eq!(sample(&text, "marc_serving", &[]), 1.0);
    // Every reason is exported before the first rejection, so rates over it read 0, not "no data".
    for reason in ["invalid", "queue_full", "concurrency", "deadline", "cancelled"] {
        let label = format!("reason=\"{reason}\"");
        assert!(
            text.lines()
                .any(|l| l.starts_with("marc_rejected_total") && l.contains(&label)),
            "{reason} missing"
        );
    }
    // Every metric family has its HELP text.
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(families.len() >= 8, "{text}");
    for family in families {
        assert!(text.contains(&format!("# HELP {family} ")), "no HELP for {family}");
    }
    server.terminate();
}

#[test]
fn health_fails_clearly_when_nothing_listens() {
    // A port that was just free: bind, read it, close.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = health(&addr.to_string());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("cannot connect to http://{addr}")), "{stderr}");
}
