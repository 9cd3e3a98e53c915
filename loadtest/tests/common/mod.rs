//! What the load tester's integration tests share: the real server (`marc_server::serve::run`, the demo model) on
//! an ephemeral loopback port in its own runtime, a TCP proxy that can stall on purpose, and the
//! `marc-loadtest` binary run as a subprocess with a bound on its time.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use marc_proto::marc::v1::{EmbedRequest, Input, TokenIds, embedder_client::EmbedderClient, input::Content};
use marc_server::serve::{ServeConfig, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The longest any step may take.
pub const LIMIT: Duration = Duration::from_secs(60);

/// Tests that measure time run one at a time, so they do not compete for the cores.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// The real server on the demo model, in a runtime of its own.
pub struct Server {
    pub addr: SocketAddr,
    pub runtime: tokio::runtime::Runtime,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    /// Starts the server and waits until it answers an Embed call.
    pub fn start(tweak: impl FnOnce(&mut ServeConfig)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = ServeConfig::new(demo_dir());
        tweak(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, task) = runtime.block_on(async {
            let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = grpc.local_addr().unwrap();
            let task = tokio::spawn(run(config, grpc, None, async {
                let _ = stopped.await;
            }));
            (addr, task)
        });
        let server = Self {
            addr,
            runtime,
            stop: Some(stop),
            task: Some(task),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let started = Instant::now();
        self.runtime.block_on(async {
            loop {
                assert!(started.elapsed() < LIMIT, "the server did not become ready");
                if let Ok(mut client) = EmbedderClient::connect(format!("http://{}", self.addr)).await {
                    let request = EmbedRequest {
                        inputs: vec![Input {
                            id: String::new(),
                            content: Some(Content::TokenIds(TokenIds { ids: vec![1, 2, 3] })),
                        }],
                        ..Default::default()
                    };
                    if client.embed(request).await.is_ok() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    /// Stops the server and waits for it (and its capture writer) to finish.
    pub fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        self.runtime
            .block_on(async { tokio::time::timeout(LIMIT, task).await })
            .expect("the server did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A TCP proxy to `upstream` that forwards nothing, either way, while its switch is on.
pub struct StallingProxy {
    pub addr: SocketAddr,
    pub stall: watch::Sender<bool>,
}

impl StallingProxy {
    pub fn start(runtime: &tokio::runtime::Runtime, upstream: SocketAddr) -> Self {
        let (stall, stalled) = watch::channel(false);
        let addr = start_proxy(runtime, upstream, stalled, None);
        Self { addr, stall }
    }
}

/// A TCP proxy to `upstream` that cuts every connection `lifetime` after it opened, as a restarting
/// server or a load balancer's connection limit does.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    /// Never switched on; held so that the proxy's stall switch stays off (not closed).
    _never_stalls: watch::Sender<bool>,
}

impl CuttingProxy {
    pub fn start(runtime: &tokio::runtime::Runtime, upstream: SocketAddr, lifetime: Duration) -> Self {
        let (never_stalls, stalled) = watch::channel(false);
        let addr = start_proxy(runtime, upstream, stalled, Some(lifetime));
        Self {
            addr,
            _never_stalls: never_stalls,
        }
    }
}

/// Listens on an ephemeral port and forwards each connection to `upstream`, both ways, pausing while
/// `stalled` is on and dropping (so closing) both sockets `lifetime` after the connection opened.
fn start_proxy(
    runtime: &tokio::runtime::Runtime,
    upstream: SocketAddr,
    stalled: watch::Receiver<bool>,
    lifetime: Option<Duration>,
) -> SocketAddr {
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let (up, down) = (stalled.clone(), stalled.clone());
                let both = async move {
                    tokio::join!(
                        forward(client_read, server_write, up),
                        forward(server_read, client_write, down)
                    )
                };
                match lifetime {
                    Some(lifetime) => drop(tokio::spawn(tokio::time::timeout(lifetime, both))),
                    None => drop(tokio::spawn(both)),
                }
            }
        });
        addr
    })
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Runs `marc-loadtest` with `args`, killed if it runs past [`LIMIT`].
pub fn loadtest(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_marc-loadtest"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("marc-loadtest {args:?} ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Like [`loadtest`], asserting the exit code and showing the output when it differs.
pub fn loadtest_exit(args: &[&str], code: i32) -> Output {
    let out = loadtest(args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "marc-loadtest {args:?}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Reads a JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Reads a trace.
pub fn trace(path: &Path) -> Vec<marc_trace::Record> {
    marc_trace::read(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
}
