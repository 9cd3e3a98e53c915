//! `marc serve` end to end: the real server (`marc_server::serve::run`) on ephemeral loopback ports with the
//! demo model, driven by the generated tonic client; FLOAT32 results compared bitwise with the `marc embed`
//! binary; health, reflection, every error code, concurrency, overload, deadlines, /metrics, streams, drain,
//! and SIGTERM on the real binary. Every await is bounded.

mod common;

use common::*;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use marc_proto::marc::v1::{
    EmbedRequest, EmbedResponse, Encoding, InfoRequest, Input, Pooling, Priority, Truncation,
    embedder_client::EmbedderClient,
};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// Runs `marc embed` on `lines` with `args`; returns each line's `embedding` (or flattened `hidden`).
fn marc_embed(lines: &[serde_json::Value], args: &[&str]) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&input, body).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_marc"))
        .args(["embed", "--model"])
        .arg(demo_dir())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "marc embed {args:?} failed");
    std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let parse = |x: &serde_json::Value| serde_json::from_value::<Vec<f32>>(x.clone()).unwrap();
            match (v.get("embedding"), v.get("hidden")) {
                (Some(e), _) => parse(e),
                (_, Some(h)) => h.as_array().unwrap().iter().flat_map(parse).collect(),
                _ => panic!("no embedding in {line}"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_info() {
    let server = Server::start(|_| {}).await;
    let mut health = HealthClient::new(server.channel().await);
    let status = bounded("health", health.check(HealthCheckRequest { service: "".into() }))
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = bounded(
        "reflection",
        reflection.server_reflection_info(tokio_stream::iter([ask])),
    )
    .await
    .unwrap()
    .into_inner();
    let answer = bounded("reflection answer", answers.message()).await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"marc.v1.Embedder"), "{names:?}");

    let mut client = server.client().await;
    let info = bounded("info", client.info(InfoRequest {})).await.unwrap().into_inner();
    let model = info.model.unwrap();
    assert_eq!((model.num_layers, model.hidden_size, model.vocab_size), (9, 256, 4096));
    assert_eq!(model.architecture, "NemotronHForCausalLM");
    assert_eq!(info.heads.len(), 1);
    let head = &info.heads[0];
    assert_eq!(
        (head.name.as_str(), head.source_layer, head.output_dim),
        ("default", 5, 64)
    );
    assert!(head.normalize && head.is_default);
    assert_eq!(head.pooling, Pooling::Mean as i32);
    let limits = info.limits.unwrap();
    assert_eq!((limits.max_batch_tokens, limits.max_item_tokens), (8192, 8192));
    assert_eq!(limits.max_layer, 9);
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float32_bytes_equal_marc_embed() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let texts = [
        "marc turns text into embeddings.",
        "Hello, world!",
        "the same vector for the same item",
    ];
    let id_seqs = [seq(1, 5), seq(2, 40), seq(3, 1)];
    let mut lines = Vec::new();
    let mut inputs = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        lines.push(serde_json::json!({"id": i, "text": t}));
        inputs.push(text(&i.to_string(), t));
    }
    for (i, s) in id_seqs.iter().enumerate() {
        lines.push(serde_json::json!({"id": 10 + i, "token_ids": s}));
        inputs.push(ids(&(10 + i).to_string(), s.clone()));
    }
    // (marc embed arguments, the same request over gRPC)
    let cases: Vec<(Vec<&str>, EmbedRequest)> = vec![
        (vec![], request(inputs.clone())),
        (
            vec!["--no-head", "--layer", "3", "--pooling", "last"],
            EmbedRequest {
                raw: true,
                layer: Some(3),
                pooling: Pooling::Last.into(),
                ..request(inputs.clone())
            },
        ),
        (
            vec!["--no-head"],
            EmbedRequest {
                raw: true,
                pooling: Pooling::Mean.into(),
                ..request(inputs.clone())
            },
        ),
        (
            vec!["--dimensions", "16"],
            EmbedRequest {
                dimensions: Some(16),
                ..request(inputs.clone())
            },
        ),
        (
            vec!["--no-head", "--layer", "4", "--dimensions", "32", "--normalize"],
            EmbedRequest {
                raw: true,
                layer: Some(4),
                pooling: Pooling::Mean.into(),
                dimensions: Some(32),
                normalize: Some(true),
                ..request(inputs.clone())
            },
        ),
        (
            vec!["--no-normalize"],
            EmbedRequest {
                normalize: Some(false),
                ..request(inputs.clone())
            },
        ),
        (
            vec!["--no-head", "--layer", "0", "--pooling", "none"],
            EmbedRequest {
                raw: true,
                layer: Some(0),
                ..request(inputs.clone())
            },
        ),
    ];
    for (args, req) in cases {
        let want = marc_embed(&lines, &args);
        let got = embed(&mut client, req).await.unwrap();
        assert_eq!(got.embeddings.len(), want.len());
        for (e, w) in got.embeddings.iter().zip(&want) {
            assert_eq!(e.encoding, Encoding::Float32 as i32);
            assert_eq!(bits(&e.values), bits(w), "{args:?}, input {}", e.id);
        }
        if args.is_empty() {
            assert_eq!(got.head, "default");
            assert_eq!(got.embeddings[0].shape, [64]);
        }
        if args.contains(&"none") {
            assert_eq!(got.embeddings[3].shape, [5, 256]);
        }
        let usage = got.usage.unwrap();
        assert_eq!(usage.tokens, got.embeddings.iter().map(|e| e.tokens).sum::<u32>());
        assert!(usage.total_us >= usage.queue_us);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_dimensions_and_normalize() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let inputs = vec![ids("a", seq(4, 12)), ids("b", seq(5, 3))];
    let base = embed(&mut client, request(inputs.clone())).await.unwrap();
    let with = |encoding: Encoding| EmbedRequest {
        encoding: encoding.into(),
        ..request(inputs.clone())
    };
    let f16 = embed(&mut client, with(Encoding::Float16)).await.unwrap();
    let i8 = embed(&mut client, with(Encoding::Int8)).await.unwrap();
    let bin = embed(&mut client, with(Encoding::Binary)).await.unwrap();
    for (k, e) in base.embeddings.iter().enumerate() {
        let v = &e.values;
        let h: Vec<u8> = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        assert_eq!(f16.embeddings[k].data, h);
        assert!(f16.embeddings[k].values.is_empty());
        let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let s = max / 127.0;
        assert_eq!(i8.embeddings[k].scales, [s]);
        let q: Vec<u8> = v.iter().map(|&x| (x / s).round() as i8 as u8).collect();
        assert_eq!(i8.embeddings[k].data, q);
        let mut b = vec![0u8; v.len().div_ceil(8)];
        for (i, &x) in v.iter().enumerate() {
            if x > 0.0 {
                b[i / 8] |= 1 << (i % 8);
            }
        }
        assert_eq!(bin.embeddings[k].data, b);
        assert_eq!(bin.embeddings[k].encoding, Encoding::Binary as i32);
    }

    // Matryoshka: the first 16 components, re-normalised.
    let small = embed(
        &mut client,
        EmbedRequest {
            dimensions: Some(16),
            ..request(inputs.clone())
        },
    )
    .await
    .unwrap();
    for (s, full) in small.embeddings.iter().zip(&base.embeddings) {
        assert_eq!(s.shape, [16]);
        let norm = full.values[..16].iter().map(|x| x * x).sum::<f32>().sqrt();
        for (a, b) in s.values.iter().zip(&full.values[..16]) {
            assert!((a - b / norm).abs() < 1e-5);
        }
    }
    // normalize=false returns the head's plain projection: the same direction, not unit length.
    let plain = embed(
        &mut client,
        EmbedRequest {
            normalize: Some(false),
            ..request(inputs.clone())
        },
    )
    .await
    .unwrap();
    let p = &plain.embeddings[0].values;
    let norm = p.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "norm {norm}");
    for (a, b) in p.iter().zip(&base.embeddings[0].values) {
        assert!((a / norm - b).abs() < 1e-5);
    }
    // Raw, per token, normalised per token, int8 with one scale per token.
    let raw = embed(
        &mut client,
        EmbedRequest {
            raw: true,
            layer: Some(2),
            normalize: Some(true),
            encoding: Encoding::Int8.into(),
            priority: Priority::High.into(),
            ..request(vec![ids("t", seq(6, 7))])
        },
    )
    .await
    .unwrap();
    assert_eq!(raw.embeddings[0].shape, [7, 256]);
    assert_eq!(raw.embeddings[0].scales.len(), 7);
    assert_eq!(raw.embeddings[0].data.len(), 7 * 256);
    assert_eq!(raw.head, "");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_name_the_field_and_the_limit() {
    let server = Server::start(|c| {
        c.max_items_per_request = 4;
        c.max_item_tokens = 16;
    })
    .await;
    let mut client = server.client().await;
    let one = || vec![ids("x", seq(7, 4))];
    let cases: Vec<(EmbedRequest, &[&str])> = vec![
        (request(vec![]), &["inputs", "at least one"]),
        (
            request(vec![ids("x", vec![1]); 5]),
            &["inputs", "max_items_per_request (4)"],
        ),
        (
            EmbedRequest {
                head: "nope".into(),
                ..request(one())
            },
            &["head", "nope", "default"],
        ),
        (
            EmbedRequest {
                raw: true,
                layer: Some(10),
                ..request(one())
            },
            &["layer", "10", "0..=9"],
        ),
        (
            EmbedRequest {
                raw: true,
                head: "default".into(),
                ..request(one())
            },
            &["head", "raw"],
        ),
        (
            EmbedRequest {
                layer: Some(3),
                ..request(one())
            },
            &["layer", "raw"],
        ),
        (
            request(vec![ids("x", vec![1, 5000])]),
            &["inputs[0].token_ids", "5000", "4096"],
        ),
        (request(vec![ids("x", vec![])]), &["inputs[0].token_ids", "empty"]),
        (
            request(vec![Input {
                id: "x".into(),
                content: None,
            }]),
            &["inputs[0]", "text or token_ids"],
        ),
        (request(vec![text("x", "")]), &["inputs[0].text", "empty"]),
        (
            request(vec![ids("x", seq(8, 17))]),
            &["inputs[0]", "17 tokens", "max_item_tokens (16)"],
        ),
        (
            EmbedRequest {
                dimensions: Some(0),
                ..request(one())
            },
            &["dimensions", "64"],
        ),
        (
            EmbedRequest {
                dimensions: Some(65),
                ..request(one())
            },
            &["dimensions", "64"],
        ),
        (
            EmbedRequest {
                pooling: Pooling::Last.into(),
                ..request(one())
            },
            &["pooling", "mean"],
        ),
        (
            EmbedRequest {
                pooling: Pooling::None.into(),
                ..request(one())
            },
            &["pooling", "raw"],
        ),
        (
            EmbedRequest {
                request_id: "r".repeat(300),
                ..request(one())
            },
            &["request_id", "256"],
        ),
    ];
    for (req, words) in cases {
        let status = embed_err(&mut client, req).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{words:?}: {status:?}");
        for w in words {
            assert!(status.message().contains(w), "{w:?} not in {:?}", status.message());
        }
    }

    // Truncation keeps the start or the end, and marks the embedding.
    let long = seq(9, 20);
    let cut = |t: Truncation| EmbedRequest {
        truncation: t.into(),
        ..request(vec![ids("l", long.clone())])
    };
    let start = embed(&mut client, cut(Truncation::KeepStart)).await.unwrap();
    let end = embed(&mut client, cut(Truncation::KeepEnd)).await.unwrap();
    let first = embed(&mut client, request(vec![ids("l", long[..16].to_vec())]))
        .await
        .unwrap();
    let last = embed(&mut client, request(vec![ids("l", long[4..].to_vec())]))
        .await
        .unwrap();
    assert!(start.embeddings[0].truncated && end.embeddings[0].truncated);
    assert!(!first.embeddings[0].truncated);
    assert_eq!(start.embeddings[0].tokens, 16);
    assert_eq!(bits(&start.embeddings[0].values), bits(&first.embeddings[0].values));
    assert_eq!(bits(&end.embeddings[0].values), bits(&last.embeddings[0].values));
    server.stop().await;
}

/// A mixed request for client `c`: 1-3 items of 1-60 tokens, head or raw states.
fn mixed(c: u32) -> EmbedRequest {
    let n = 1 + (c % 3) as usize;
    let inputs = (0..n)
        .map(|k| {
            ids(
                &format!("{c}-{k}"),
                seq(c * 10 + k as u32, 1 + ((c as usize * 17 + k * 29) % 60)),
            )
        })
        .collect();
    if c.is_multiple_of(2) {
        request(inputs)
    } else {
        EmbedRequest {
            raw: true,
            layer: Some(1 + c % 9),
            pooling: Pooling::Mean.into(),
            ..request(inputs)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_the_bytes_of_single_requests() {
    let server = Server::start(|c| {
        c.max_batch_tokens = 256;
        c.max_item_tokens = 256;
        c.max_batch_wait = Duration::from_millis(2);
    })
    .await;
    let clients = 64;
    // Alone: one item per request, one request at a time.
    let mut client = server.client().await;
    let mut alone: HashMap<String, Vec<u32>> = HashMap::new();
    for c in 0..clients {
        let req = mixed(c);
        for input in &req.inputs {
            let single = EmbedRequest {
                inputs: vec![input.clone()],
                ..req.clone()
            };
            let got = embed(&mut client, single).await.unwrap();
            alone.insert(input.id.clone(), bits(&got.embeddings[0].values));
        }
    }
    // Together: every client at once, on separate connections, so batches mix requests.
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move { embed(&mut client, mixed(c)).await }));
    }
    for task in tasks {
        let got: EmbedResponse = bounded("client", task).await.unwrap().unwrap();
        for e in &got.embeddings {
            assert_eq!(bits(&e.values), alone[&e.id], "item {}", e.id);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_at_once_then_served_again() {
    let server = Server::start(|c| {
        c.max_queue_tokens = 64;
        c.max_item_tokens = 128;
        c.max_batch_tokens = 128;
    })
    .await;
    let mut client = server.client().await;
    let status = embed_err(&mut client, request(vec![ids("big", seq(1, 100))])).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("max_queue_tokens is 64"),
        "{}",
        status.message()
    );
    // A burst: every request is answered, either with embeddings or RESOURCE_EXHAUSTED.
    let mut tasks = Vec::new();
    for c in 0..24u32 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            embed(&mut client, request(vec![ids("b", seq(c, 40))])).await
        }));
    }
    for task in tasks {
        match bounded("burst", task).await.unwrap() {
            Ok(r) => assert_eq!(r.embeddings.len(), 1),
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted),
        }
    }
    // The same over a stream: the refused request gets an error response, the stream goes on.
    let reqs = vec![
        EmbedRequest {
            request_id: "big".into(),
            ..request(vec![ids("big", seq(1, 100))])
        },
        EmbedRequest {
            request_id: "small".into(),
            ..request(vec![ids("s", seq(2, 10))])
        },
    ];
    let responses = stream_all(&mut client, reqs).await;
    assert_eq!(
        responses["big"].error.as_ref().unwrap().code,
        Code::ResourceExhausted as i32
    );
    assert!(responses["small"].error.is_none());
    assert_eq!(responses["small"].embeddings.len(), 1);
    let ok = embed(&mut client, request(vec![ids("small", seq(3, 10))]))
        .await
        .unwrap();
    assert_eq!(ok.embeddings.len(), 1);
    server.stop().await;
}

async fn stream_all(client: &mut EmbedderClient<Channel>, reqs: Vec<EmbedRequest>) -> HashMap<String, EmbedResponse> {
    let n = reqs.len();
    let mut inbound = bounded("stream", client.embed_stream(tokio_stream::iter(reqs)))
        .await
        .unwrap()
        .into_inner();
    let mut out = HashMap::new();
    while let Some(r) = bounded("stream message", inbound.message()).await.unwrap() {
        out.insert(r.request_id.clone(), r);
    }
    assert_eq!(out.len(), n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_stream_answers_every_request() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let mut reqs: Vec<EmbedRequest> = (0..6)
        .map(|i| EmbedRequest {
            request_id: format!("r{i}"),
            ..request(vec![ids("x", seq(i, 3 + i as usize * 10))])
        })
        .collect();
    reqs[3].head = "missing".into();
    let single = embed(&mut client, reqs[2].clone()).await.unwrap();
    let got = stream_all(&mut client, reqs).await;
    let err = got["r3"].error.as_ref().unwrap();
    assert_eq!(err.code, Code::InvalidArgument as i32);
    assert!(err.message.contains("missing"));
    assert!(got["r3"].embeddings.is_empty());
    assert_eq!(
        bits(&got["r2"].embeddings[0].values),
        bits(&single.embeddings[0].values)
    );
    for i in [0, 1, 2, 4, 5] {
        assert!(got[&format!("r{i}")].error.is_none());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_passes_while_queued_and_metrics_show_it() {
    let (server, mut client, busy) = busy_server().await;
    let mut late = Request::new(request(vec![ids("late", seq(2, 8))]));
    late.set_timeout(Duration::from_millis(30));
    let status = bounded("late", client.embed(late)).await.unwrap_err();
    // The server answers DEADLINE_EXCEEDED just before the deadline; the client's own timer for the same
    // deadline may still win the race and report CANCELLED ("Timeout expired"). The server's side is checked
    // in the metrics below.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    let done = bounded("busy", busy).await.unwrap().unwrap();
    assert_eq!(done.embeddings.len(), 192);
    // The next request is served after the skipped one.
    embed(&mut client, request(vec![ids("after", seq(3, 8))]))
        .await
        .unwrap();

    let text = scrape(server.metrics).await;
    for name in [
        "marc_requests_total",
        "marc_queue_duration_seconds_bucket",
        "marc_compute_duration_seconds_bucket",
        "marc_request_duration_seconds_bucket",
        "marc_batch_size_bucket",
        "marc_batch_tokens_bucket",
        "marc_queue_requests",
        "marc_queue_tokens",
        "marc_in_flight_requests",
        "marc_tokens_total",
        "marc_items_total",
        "marc_rejected_total",
        "marc_model_load_seconds",
        "marc_build_info",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing from\n{text}");
    }
    assert!(sample(&text, "marc_requests_total", &["rpc=\"Embed\"", "code=\"OK\""]) >= 3.0);
    assert!(sample(&text, "marc_requests_total", &["code=\"DEADLINE_EXCEEDED\""]) >= 1.0);
    assert!(sample(&text, "marc_rejected_total", &["reason=\"deadline\""]) >= 1.0);
    assert!(sample(&text, "marc_tokens_total", &[]) >= 192.0 * 64.0);
    assert!(sample(&text, "marc_items_total", &["head=\"default\""]) >= 194.0);
    assert!(sample(&text, "marc_batch_tokens_count", &[]) >= 192.0);
    assert!(sample(&text, "marc_model_load_seconds", &[]) > 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests() {
    let server = Server::start(|c| {
        c.max_batch_tokens = 64;
        c.max_item_tokens = 64;
    })
    .await;
    let mut client = server.client().await;
    let inflight = tokio::spawn(async move {
        let inputs = (0..64).map(|i| ids("w", seq(i, 64))).collect();
        embed(&mut client, request(inputs)).await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.stop().await;
    let done = bounded("in flight", inflight).await.unwrap().unwrap();
    assert_eq!(done.embeddings.len(), 64);
}

#[test]
fn the_binary_exits_0_on_sigterm() {
    let server = Process::serve(&[("MARC_GRPC_ADDR", "127.0.0.1:0"), ("MARC_METRICS_ADDR", "127.0.0.1:0")]);
    server.wait_for_log("SERVING");
    server.terminate();
}

/// Without TCP_NODELAY on the server a small response waits for the client's delayed ACK (~40 ms); the
/// median of small requests must stay far below that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_requests_are_not_held_by_nagle() {
    let server = Server::start(|_| {}).await;
    let mut client = server.client().await;
    let mut micros = Vec::new();
    for k in 0..21 {
        let started = std::time::Instant::now();
        embed(&mut client, request(vec![ids("x", seq(k, 8))])).await.unwrap();
        micros.push(started.elapsed().as_micros());
    }
    micros.sort_unstable();
    assert!(micros[10] < 20_000, "median {} us", micros[10]);
    server.stop().await;
}

/// Not a check: prints single-request latency percentiles and the throughput of 16 concurrent clients on
/// the demo model (`cargo test --release -p marc-server --test serve_grpc -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn measure_latency_and_throughput() {
    let server = Server::start(|c| c.max_batch_wait = Duration::from_micros(200)).await;
    let mut client = server.client().await;
    let one = || request(vec![ids("x", seq(11, 32))]);
    for _ in 0..20 {
        embed(&mut client, one()).await.unwrap();
    }
    let mut micros: Vec<u128> = Vec::new();
    for _ in 0..300 {
        let started = std::time::Instant::now();
        embed(&mut client, one()).await.unwrap();
        micros.push(started.elapsed().as_micros());
    }
    micros.sort_unstable();
    let p = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "single Embed, 1 item x 32 tokens, default head: p50 {} us, p90 {} us, p99 {} us",
        p(0.5),
        p(0.9),
        p(0.99)
    );
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..16u32 {
        let mut client = server.client().await;
        tasks.push(tokio::spawn(async move {
            for k in 0..50 {
                embed(&mut client, request(vec![ids("x", seq(c * 100 + k, 32))]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        bounded("client", t).await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "16 clients x 50 Embed of 32 tokens: {:.0} requests/s, {:.0} tokens/s",
        800.0 / seconds,
        800.0 * 32.0 / seconds
    );
    server.stop().await;
}
