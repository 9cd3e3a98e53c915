//! `marc serve`'s life cycle and limits, end to end on loopback: NOT_SERVING (and UNAVAILABLE) until the model
//! has loaded, the drain timeout answering what is still in flight, streams closing when the server drains,
//! the per-stream in-flight cap, `--max-layer`, request ids in headers, and the backend in `Info`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use marc_proto::marc::v1::{EmbedRequest, InfoRequest};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// A copy of the demo model whose weights sit behind a sharded index naming a FIFO: the engine's first read
/// blocks until the test writes to the FIFO, so the server is deterministically still loading.
fn model_behind_a_fifo() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let demo = demo_dir();
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(demo.join(file), dir.path().join(file)).unwrap();
    }
    let bytes = std::fs::read(demo.join("model.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let shard = "model-00001-of-00001.safetensors";
    let weight_map: serde_json::Map<String, serde_json::Value> = header
        .tensors()
        .keys()
        .map(|name| (name.clone(), shard.into()))
        .collect();
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.path().join("model.safetensors.index.json"), index.to_string()).unwrap();
    let fifo = dir.path().join(shard);
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    (dir, fifo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_serving_and_unavailable_until_the_model_has_loaded() {
    let (dir, fifo) = model_behind_a_fifo();
    let mut server = Server::spawn(dir.path().to_owned(), |_| {}).await;
    // The port is open while the model loads: health answers NOT_SERVING, Embed UNAVAILABLE, Info works.
    assert_eq!(server.health().await.unwrap(), ServingStatus::NotServing as i32);
    let mut client = server.client().await;
    let status = embed_err(&mut client, request(vec![ids("a", seq(1, 4))])).await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("loading"), "{}", status.message());
    let info = bounded("info", client.info(InfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.model.unwrap().num_layers, 9);
    assert_eq!(server.health().await.unwrap(), ServingStatus::NotServing as i32);
    // Feed the FIFO something that is not a safetensors file: the load fails and the server stops with an
    // error naming the file. The loader may give up (and close its end) before the write completes, which
    // the writer sees as a broken pipe: that is the failure under test, not a test error.
    match std::fs::write(&fifo, b"not a checkpoint") {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => panic!("cannot write the FIFO: {e}"),
    }
    let result = bounded("server exit", &mut server.task).await.unwrap();
    let error = format!("{:#}", result.expect_err("the load must fail"));
    assert!(error.contains("model-00001-of-00001.safetensors"), "{error}");
}

/// A request big enough to be in flight for a while on the demo model (128 x 512 tokens).
fn heavy(id: &str) -> EmbedRequest {
    EmbedRequest {
        request_id: id.into(),
        ..request((0..128).map(|i| ids("h", seq(i, 512))).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_timeout_answers_what_is_still_in_flight_unavailable() {
    let server = Server::start(|c| {
        c.drain_timeout = Duration::ZERO;
        c.max_batch_tokens = 512;
        c.max_item_tokens = 512;
    })
    .await;
    let mut client = server.client().await;
    let inflight = tokio::spawn(async move { client.embed(heavy("h")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = Instant::now();
    server.stop().await;
    let status = bounded("in flight", inflight)
        .await
        .unwrap()
        .expect_err("the request cannot finish within a zero drain timeout");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("drain timeout"), "{}", status.message());
    // The server did not wait for the forward passes (128 x 512 tokens) to finish.
    assert!(stopping.elapsed() < Duration::from_secs(5), "{:?}", stopping.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_unavailable_when_the_server_drains() {
    let server = Server::start(|c| c.drain_timeout = Duration::from_secs(60)).await;
    let mut client = server.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut inbound = bounded(
        "stream",
        client.embed_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .unwrap()
    .into_inner();
    tx.send(EmbedRequest {
        request_id: "first".into(),
        ..request(vec![ids("a", seq(1, 8))])
    })
    .await
    .unwrap();
    let first = bounded("first answer", inbound.message()).await.unwrap().unwrap();
    assert_eq!(first.request_id, "first");
    assert!(first.error.is_none());
    // The client keeps its stream open; the server must still stop long before its 60 s drain timeout.
    let stopping = Instant::now();
    let stop = tokio::spawn(server.stop());
    let end = bounded("stream end", inbound.message())
        .await
        .expect_err("the stream ends with a status");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    bounded("server exit", stop).await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(20), "{:?}", stopping.elapsed());
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_in_flight_per_stream_keeps_answers_in_order() {
    // With a cap of 1 the stream is read one request at a time, so small requests cannot overtake the
    // large one before them (with a larger cap they are batched beside it and answered first).
    let server = Server::start(|c| {
        c.max_stream_in_flight = 1;
        c.max_batch_tokens = 512;
        c.max_item_tokens = 512;
    })
    .await;
    let mut client = server.client().await;
    let mut reqs = vec![EmbedRequest {
        request_id: "big".into(),
        ..request((0..16).map(|i| ids("b", seq(i, 512))).collect())
    }];
    reqs.extend((0..8).map(|i| EmbedRequest {
        request_id: format!("small{i}"),
        ..request(vec![ids("s", seq(i, 4))])
    }));
    let want: Vec<String> = reqs.iter().map(|r| r.request_id.clone()).collect();
    let mut inbound = bounded("stream", client.embed_stream(tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(r) = bounded("stream message", inbound.message()).await.unwrap() {
        assert!(r.error.is_none(), "{:?}", r.error);
        got.push(r.request_id);
    }
    assert_eq!(got, want);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_layer_bounds_raw_requests() {
    let server = Server::start(|c| c.max_layer = Some(3)).await;
    let mut client = server.client().await;
    let raw = |layer: Option<u32>| EmbedRequest {
        raw: true,
        layer,
        ..request(vec![ids("a", seq(5, 6))])
    };
    let status = embed_err(&mut client, raw(Some(4))).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("layer: 4") && status.message().contains("--max-layer"),
        "{}",
        status.message()
    );
    // Unset = the deepest served layer; the head (layer 5, deeper than --max-layer) still works.
    let deepest = embed(&mut client, raw(None)).await.unwrap();
    let three = embed(&mut client, raw(Some(3))).await.unwrap();
    assert_eq!(bits(&deepest.embeddings[0].values), bits(&three.embeddings[0].values));
    let headed = embed(&mut client, request(vec![ids("a", seq(5, 6))])).await.unwrap();
    assert_eq!(headed.embeddings[0].shape, [64]);
    let info = bounded("info", client.info(InfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.limits.unwrap().max_layer, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_in_headers_and_the_backend_in_info() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let mut req = tonic::Request::new(request(vec![ids("a", seq(2, 3))]));
    req.metadata_mut().insert("x-request-id", "trace-42".parse().unwrap());
    let answer = bounded("embed", client.embed(req)).await.unwrap();
    assert_eq!(answer.metadata().get("x-request-id").unwrap(), "trace-42");
    // Without one, the server makes one up (a UUID) and echoes it.
    let answer = bounded("embed", client.embed(request(vec![ids("a", seq(2, 3))])))
        .await
        .unwrap();
    let made = answer.metadata().get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(made.len(), 36, "{made}");
    let info = bounded("info", client.info(InfoRequest {})).await.unwrap().into_inner();
    let isa = info
        .backend
        .strip_prefix("cpu-")
        .unwrap_or_else(|| panic!("{}", info.backend));
    assert!(["amx", "avx512", "avx2", "scalar"].contains(&isa), "{}", info.backend);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_concurrent_requests_are_refused_at_once() {
    let server = Server::start(|c| {
        c.max_concurrent_requests = 1;
        c.max_batch_tokens = 512;
        c.max_item_tokens = 512;
    })
    .await;
    let mut busy_client = server.client().await;
    let busy = tokio::spawn(async move { busy_client.embed(heavy("busy")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = server.client().await;
    let status = embed_err(&mut client, request(vec![ids("a", seq(1, 4))])).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max_concurrent_requests (1)"),
        "{}",
        status.message()
    );
    bounded("busy", busy).await.unwrap().unwrap();
    embed(&mut client, request(vec![ids("a", seq(1, 4))])).await.unwrap();
    server.stop().await;
}
