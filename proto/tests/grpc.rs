//! End to end over a real socket: the generated server (with a stub `Embedder`) and the generated client, served
//! next to the `grpc.health.v1` and `grpc.reflection.v1` services from `tonic-health` and `tonic-reflection`.

use std::{net::SocketAddr, pin::Pin};

use marc_proto::{
    FILE_DESCRIPTOR_SET,
    marc::v1::{
        EmbedRequest, EmbedResponse, Embedding, Encoding, HeadInfo, InfoRequest, InfoResponse, Input, Limits,
        ModelInfo, Pooling, Usage,
        embedder_client::EmbedderClient,
        embedder_server::{Embedder, EmbedderServer},
        input::Content,
    },
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::{Stream, StreamExt};
use tonic::{
    Request, Response, Status, Streaming,
    transport::{Channel, Server, server::TcpIncoming},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

/// Answers `Info` with fixed values and `Embed`/`EmbedStream` with one zero vector per input.
struct Stub;

fn info() -> InfoResponse {
    InfoResponse {
        model: Some(ModelInfo {
            name: "stub".into(),
            architecture: "Qwen3ForCausalLM".into(),
            num_layers: 28,
            hidden_size: 1024,
            vocab_size: 151_669,
            weight_dtype: "bfloat16".into(),
        }),
        heads: vec![HeadInfo {
            name: "default".into(),
            source_layer: 28,
            pooling: Pooling::Last.into(),
            output_dim: 256,
            normalize: true,
            is_default: true,
        }],
        limits: Some(Limits {
            max_batch_tokens: 16_384,
            max_item_tokens: 8_192,
            max_items_per_request: 256,
            max_request_bytes: 4 << 20,
            max_layer: 24,
        }),
        quantization: "none".into(),
        backend: "cpu-amx".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

fn answer(req: EmbedRequest) -> EmbedResponse {
    let embeddings: Vec<_> = req
        .inputs
        .into_iter()
        .map(|input| {
            let tokens = match input.content {
                Some(Content::Text(t)) => t.split_whitespace().count() as u32,
                Some(Content::TokenIds(ids)) => ids.ids.len() as u32,
                None => 0,
            };
            Embedding {
                id: input.id,
                shape: vec![4],
                values: vec![0.0; 4],
                encoding: Encoding::Float32.into(),
                tokens,
                ..Default::default()
            }
        })
        .collect();
    let tokens = embeddings.iter().map(|e| e.tokens).sum();
    EmbedResponse {
        embeddings,
        usage: Some(Usage {
            tokens,
            ..Default::default()
        }),
        request_id: req.request_id,
        error: None,
        head: "default".into(),
    }
}

#[tonic::async_trait]
impl Embedder for Stub {
    async fn embed(&self, request: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        Ok(Response::new(answer(request.into_inner())))
    }

    type EmbedStreamStream = Pin<Box<dyn Stream<Item = Result<EmbedResponse, Status>> + Send>>;

    async fn embed_stream(
        &self,
        request: Request<Streaming<EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        Ok(Response::new(Box::pin(request.into_inner().map(|r| r.map(answer)))))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(info()))
    }
}

/// A running server on an ephemeral port; dropping `shutdown` stops it.
struct Running {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve() -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<EmbedderServer<Stub>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(EmbedderServer::new(Stub));
    let task = tokio::spawn(router.serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
        let _ = stop.await;
    }));
    Running { addr, shutdown, task }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn info_over_the_generated_client() {
    let server = serve().await;
    let mut client = EmbedderClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let got = client.info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(got, info());
    server.stop().await;
}

#[tokio::test]
async fn embed_and_embed_stream() {
    let server = serve().await;
    let mut client = EmbedderClient::new(channel(server.addr).await);
    let request = |n: u32| EmbedRequest {
        inputs: vec![
            Input {
                id: "t".into(),
                content: Some(Content::Text("one two three".into())),
            },
            Input {
                id: "ids".into(),
                content: Some(Content::TokenIds(marc_proto::marc::v1::TokenIds { ids: vec![n; 5] })),
            },
        ],
        request_id: format!("r{n}"),
        ..Default::default()
    };

    let got = client.embed(request(0)).await.unwrap().into_inner();
    assert_eq!(got.request_id, "r0");
    let ids: Vec<_> = got.embeddings.iter().map(|e| (e.id.as_str(), e.tokens)).collect();
    assert_eq!(ids, [("t", 3), ("ids", 5)]);
    assert_eq!(got.usage.unwrap().tokens, 8);

    let outbound = tokio_stream::iter((1..=3).map(request));
    let mut inbound = client.embed_stream(outbound).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(resp) = inbound.next().await {
        let resp = resp.unwrap();
        assert_eq!(resp.embeddings.len(), 2);
        ids.push(resp.request_id);
    }
    ids.sort();
    assert_eq!(ids, ["r1", "r2", "r3"]);
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_serve_next_to_embedder() {
    let server = serve().await;
    let channel = channel(server.addr).await;

    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "marc.v1.Embedder".into(),
        })
        .await
        .unwrap();
    assert_eq!(status.into_inner().status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(services)) = answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = services.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"marc.v1.Embedder"), "{names:?}");
    server.stop().await;
}
