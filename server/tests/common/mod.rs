//! What the server's integration tests share: the real server (`marc_server::serve::run`) on ephemeral
//! loopback ports, clients, requests, and a bound on every await.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use marc_proto::marc::v1::{
    EmbedRequest, EmbedResponse, Input, TokenIds, embedder_client::EmbedderClient, input::Content,
};
use marc_server::serve::{ServeConfig, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub const LIMIT: Duration = Duration::from_secs(40);

pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// The small model of the benchmark pattern (models/tests/fixtures/bench_shape_small's config) with
/// random bf16 weights written to `dir`: a model the CUDA backend runs (it takes bf16 weights).
pub fn write_bf16_bench_shape_model(dir: &Path, seed: u64) {
    let config = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/fixtures/bench_shape_small/config.json"
    ))
    .unwrap();
    marc_models::synthetic::write_random_checkpoint(&config, dir, marc_models::synthetic::SyntheticDType::BF16, seed)
        .unwrap();
}

pub struct Server {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts the server on the demo model and waits until health says SERVING.
    pub async fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let server = Self::spawn(demo_dir(), tweak).await;
        bounded("health SERVING", server.wait_serving()).await;
        server
    }

    /// Starts the server on `model_dir` without waiting for it to be ready.
    pub async fn spawn(model_dir: PathBuf, tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
        let mut config = ServeConfig::new(model_dir);
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, grpc, Some(metrics), async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            metrics: metrics_addr,
            stop: Some(stop),
            task,
        }
    }

    /// The health status of `marc.v1.Embedder`.
    pub async fn health(&self) -> Result<i32, tonic::Status> {
        let mut health = HealthClient::new(self.channel().await);
        bounded(
            "health",
            health.check(HealthCheckRequest {
                service: "marc.v1.Embedder".into(),
            }),
        )
        .await
        .map(|r| r.into_inner().status)
    }

    pub async fn wait_serving(&self) {
        let mut health = HealthClient::new(self.channel().await);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: "marc.v1.Embedder".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if status.ok() == Some(ServingStatus::Serving as i32) {
                return;
            }
            assert!(!self.task.is_finished(), "the server stopped before it was SERVING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        bounded(
            "connect",
            Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect(),
        )
        .await
        .unwrap()
    }

    pub async fn client(&self) -> EmbedderClient<Channel> {
        EmbedderClient::new(self.channel().await)
    }

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        bounded("server exit", &mut self.task).await.unwrap().unwrap();
    }
}

pub fn ids(id: &str, ids: Vec<u32>) -> Input {
    Input {
        id: id.into(),
        content: Some(Content::TokenIds(TokenIds { ids })),
    }
}

pub fn text(id: &str, t: &str) -> Input {
    Input {
        id: id.into(),
        content: Some(Content::Text(t.into())),
    }
}

pub fn request(inputs: Vec<Input>) -> EmbedRequest {
    EmbedRequest {
        inputs,
        ..Default::default()
    }
}

/// A deterministic sequence of `n` token ids below the demo vocabulary.
pub fn seq(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (seed * 7919 + i * 104_729 + 13) % 4096).collect()
}

pub async fn embed(client: &mut EmbedderClient<Channel>, req: EmbedRequest) -> Result<EmbedResponse, tonic::Status> {
    bounded("embed", client.embed(req)).await.map(|r| r.into_inner())
}

pub async fn embed_err(client: &mut EmbedderClient<Channel>, req: EmbedRequest) -> tonic::Status {
    embed(client, req).await.expect_err("expected an error")
}

pub fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The body of `/metrics`.
pub async fn scrape(addr: SocketAddr) -> String {
    let mut socket = bounded("metrics connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    bounded("metrics read", socket.read_to_string(&mut body)).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    body
}

/// The sum of every sample of `name` whose labels contain each of `labels`.
/// The sum of the samples of `name` whose labels contain every one of `labels`.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts the server with 64-token batches, warms it with one 8-token request, and keeps its engine busy with
/// a request of 192 x 64 tokens (192 batches) in flight: requests sent during the next tens of milliseconds
/// queue behind it.
pub async fn busy_server() -> (
    Server,
    EmbedderClient<Channel>,
    JoinHandle<Result<EmbedResponse, tonic::Status>>,
) {
    let server = Server::start(|c| {
        c.max_batch_tokens = 64;
        c.max_item_tokens = 64;
    })
    .await;
    let mut client = server.client().await;
    embed(&mut client, request(vec![ids("warm", seq(1, 8))])).await.unwrap();
    let mut busy_client = server.client().await;
    let busy = tokio::spawn(async move {
        let inputs = (0..192).map(|i| ids("w", seq(i, 64))).collect();
        embed(&mut busy_client, request(inputs)).await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    (server, client, busy)
}

/// A `marc serve` process (the real binary), the addresses it printed and its stderr lines.
pub struct Process {
    pub child: Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Starts `marc serve` with no flags but `env`, and reads the addresses it bound from its first line.
    pub fn serve(env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_marc"))
            .arg("serve")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // "marc serve: gRPC on 127.0.0.1:P, metrics on http://127.0.0.1:Q/metrics"
        let line = rx.recv_timeout(LIMIT).expect("marc serve printed nothing");
        let addr = |after: &str, until: char| -> SocketAddr {
            let rest = &line[line.find(after).unwrap_or_else(|| panic!("{after:?} not in {line:?}")) + after.len()..];
            rest[..rest.find(until).unwrap_or(rest.len())].parse().unwrap()
        };
        let (grpc, metrics) = (addr("gRPC on ", ','), addr("metrics on http://", '/'));
        Self {
            child,
            grpc,
            metrics,
            lines: rx,
        }
    }

    /// Waits until a line of its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100))
                && line.contains(needle)
            {
                return;
            }
        }
        panic!("marc serve never logged {needle:?}");
    }

    /// Sends SIGTERM and waits for exit code 0.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let started = Instant::now();
        while started.elapsed() < LIMIT {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit status {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("marc serve did not exit after SIGTERM");
    }
}
