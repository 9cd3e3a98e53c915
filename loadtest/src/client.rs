//! A pool of HTTP/2 connections to the server, used in turn (round robin) so that no single connection's flow
//! control or stream limit caps the load. Unary `Embed` calls go on any connection; `EmbedStream` requests go on
//! one long-lived stream per connection, opened on first use (and again when the server ends it), each request
//! tagged with a request id unique to the pool so its answer (which may come out of order) finds its caller.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use marc_proto::code_name;
use marc_proto::marc::v1::{EmbedRequest, EmbedResponse, embedder_client::EmbedderClient};
use marc_trace::Rpc;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::record::Outcome;

/// Requests buffered for one stream before senders wait.
const STREAM_BUFFER: usize = 1024;

/// One request of the run, ready to send.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The RPC.
    pub rpc: Rpc,
    /// The message.
    pub request: EmbedRequest,
    /// gRPC headers (unary calls only; a stream's requests share the stream's headers).
    pub metadata: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
}

impl Prepared {
    /// Converts a trace record, checking its metadata values are valid header values.
    pub fn from_record(record: &marc_trace::Record) -> anyhow::Result<Self> {
        let metadata = record
            .metadata
            .iter()
            .map(|(k, v)| {
                let key = MetadataKey::from_bytes(k.as_bytes()).with_context(|| format!("metadata key `{k}`"))?;
                let value = v
                    .parse()
                    .with_context(|| format!("metadata `{k}`: value `{v}` is not ASCII"))?;
                Ok((key, value))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            rpc: record.rpc,
            request: record.request.to_proto(),
            metadata,
        })
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Result<EmbedResponse, Status>>>>>;

/// One open `EmbedStream` call.
struct Stream {
    tx: mpsc::Sender<EmbedRequest>,
    pending: Pending,
    /// Set once the server has ended the call (or it failed): requests then go on a new one.
    ended: Arc<AtomicBool>,
}

struct Connection {
    client: EmbedderClient<Channel>,
    /// The connection's current stream, opened on first use and again after the server ends one
    /// (a server with `--max-connection-age`, a restart behind a load balancer).
    stream: tokio::sync::Mutex<Option<Arc<Stream>>>,
}

impl Connection {
    /// The open stream, or a new one if there is none or the last has ended.
    async fn open_stream(&self) -> Result<Arc<Stream>, Status> {
        let mut current = self.stream.lock().await;
        if let Some(stream) = current.as_ref().filter(|s| !s.ended.load(Ordering::Acquire)) {
            return Ok(stream.clone());
        }
        let stream = Arc::new(open_stream(self.client.clone()).await?);
        *current = Some(stream.clone());
        Ok(stream)
    }
}

/// The connection pool.
pub struct Pool {
    connections: Vec<Connection>,
    next: AtomicUsize,
    next_id: AtomicU64,
    timeout: Duration,
}

impl Pool {
    /// Opens `connections` HTTP/2 connections to `target` (`host:port`); every call gets `timeout`.
    pub async fn connect(target: &str, connections: usize, timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(connections >= 1, "--connections must be at least 1");
        let endpoint = Endpoint::from_shared(format!("http://{target}"))
            .with_context(|| format!("--target {target}: not host:port"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let mut pool = Vec::with_capacity(connections);
        for _ in 0..connections {
            // Each connected Channel is its own HTTP/2 connection.
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {target}"))?;
            pool.push(Connection {
                client: EmbedderClient::new(channel).max_decoding_message_size(usize::MAX),
                stream: tokio::sync::Mutex::new(None),
            });
        }
        Ok(Self {
            connections: pool,
            next: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            timeout,
        })
    }

    /// Sends one request and waits for its answer (at most the timeout).
    pub async fn call(&self, prepared: &Prepared) -> Outcome {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len();
        let connection = &self.connections[i];
        let answer = match prepared.rpc {
            Rpc::Embed => self.unary(connection, prepared).await,
            Rpc::EmbedStream => self.streamed(connection, prepared.request.clone()).await,
        };
        match answer {
            Ok(response) => match response.error {
                Some(e) => Outcome::Error(code_name(Code::from_i32(e.code))),
                None => Outcome::Ok,
            },
            Err(status) => Outcome::Error(code_name(status.code())),
        }
    }

    async fn unary(&self, connection: &Connection, prepared: &Prepared) -> Result<EmbedResponse, Status> {
        let mut request = tonic::Request::new(prepared.request.clone());
        request.set_timeout(self.timeout);
        for (k, v) in &prepared.metadata {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        let mut client = connection.client.clone();
        // tonic enforces the timeout on the client too; this bound also covers a connection that hangs.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), client.embed(request)).await {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("no answer within --timeout")),
        }
    }

    async fn streamed(&self, connection: &Connection, mut request: EmbedRequest) -> Result<EmbedResponse, Status> {
        let stream = connection.open_stream().await?;
        request.request_id = format!("lt{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&stream.pending).insert(request.request_id.clone(), tx);
        let id = request.request_id.clone();
        // The stream may have ended between opening and registering: its reader drained the
        // waiters before this one came, so nobody would answer it.
        if stream.ended.load(Ordering::Acquire) {
            lock(&stream.pending).remove(&id);
            return Err(Status::unavailable("the stream has closed"));
        }
        let waited = tokio::time::timeout(self.timeout, async {
            stream
                .tx
                .send(request)
                .await
                .map_err(|_| Status::unavailable("the stream has closed"))?;
            rx.await
                .unwrap_or_else(|_| Err(Status::unavailable("the stream has closed")))
        })
        .await;
        match waited {
            Ok(answer) => answer,
            Err(_) => {
                lock(&stream.pending).remove(&id);
                Err(Status::deadline_exceeded("no answer within --timeout"))
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens an `EmbedStream` call and starts the task that hands each answer to its caller.
async fn open_stream(mut client: EmbedderClient<Channel>) -> Result<Stream, Status> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let mut inbound = client.embed_stream(ReceiverStream::new(rx)).await?.into_inner();
    let pending: Pending = Arc::default();
    let answers = pending.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let mark_ended = ended.clone();
    tokio::spawn(async move {
        let end = loop {
            match inbound.message().await {
                Ok(Some(response)) => {
                    if let Some(caller) = lock(&answers).remove(&response.request_id) {
                        let _ = caller.send(Ok(response));
                    }
                }
                Ok(None) => break Status::unavailable("the server ended the stream"),
                Err(status) => break status,
            }
        };
        // New requests go on a new stream; whoever still waits gets this one's end.
        mark_ended.store(true, Ordering::Release);
        for (_, caller) in lock(&answers).drain() {
            let _ = caller.send(Err(end.clone()));
        }
    });
    Ok(Stream { tx, pending, ended })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(metadata: &[(&str, &str)]) -> marc_trace::Record {
        marc_trace::Record {
            offset_ns: 0,
            rpc: Rpc::Embed,
            request: marc_trace::Request::default(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn metadata_becomes_headers_and_bad_values_name_their_key() {
        let prepared = Prepared::from_record(&record(&[("x-tenant", "a1"), ("grpc-timeout", "5S")])).unwrap();
        let headers: Vec<_> = prepared
            .metadata
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(headers, [("grpc-timeout", "5S"), ("x-tenant", "a1")]);
        let err = Prepared::from_record(&record(&[("x-tenant", "a\nb")])).unwrap_err();
        assert!(format!("{err:#}").contains("metadata `x-tenant`"), "{err:#}");
    }
}
