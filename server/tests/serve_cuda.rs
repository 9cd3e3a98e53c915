//! `marc serve --device cuda` against `marc serve` on the CPU: the same requests, every hidden state
//! (raw, every token's) within the fixtures' tolerance, and `Info` naming the GPU. Runs only where a CUDA
//! driver is; elsewhere it says why it is skipped, so CI shows it.

use marc_kernels::Device;
use marc_proto::marc::v1::{EmbedRequest, InfoRequest, Pooling};

mod common;
use common::{Server, bounded, embed, ids, request, seq, write_bf16_bench_shape_model};

/// The fixtures' contract (models/tests/reference.rs).
const TOLERANCE: f64 = 1e-5;

fn relative_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (g, w) in got.iter().zip(want) {
        diff += (f64::from(*g) - f64::from(*w)).powi(2);
        norm += f64::from(*w).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_on_cuda_answers_as_the_cpu_does() {
    if !marc_kernels::device::cuda_driver_present() {
        eprintln!("SKIPPED: no CUDA driver on this machine; marc serve --device cuda is checked where one is");
        return;
    }
    let model = tempfile::tempdir().unwrap();
    write_bf16_bench_shape_model(model.path(), 11);

    let cpu = Server::spawn(model.path().to_owned(), |c| c.max_batch_tokens = 256).await;
    let cuda = Server::spawn(model.path().to_owned(), |c| {
        c.max_batch_tokens = 256;
        c.device = Device::Cuda(0);
    })
    .await;
    bounded("CPU server SERVING", cpu.wait_serving()).await;
    bounded("CUDA server SERVING", cuda.wait_serving()).await;

    let info = bounded("Info", cuda.client().await.info(InfoRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.backend, "cuda:0");

    // Sequences of 1, 17 and 40 tokens in one request: the varlen kernels see sequence starts.
    let inputs = vec![ids("a", seq(1, 1)), ids("b", seq(2, 17)), ids("c", seq(3, 40))];
    for layer in [1, 3] {
        let req = EmbedRequest {
            raw: true,
            layer: Some(layer),
            pooling: Pooling::None as i32,
            ..request(inputs.clone())
        };
        let want = embed(&mut cpu.client().await, req.clone()).await.unwrap();
        let got = embed(&mut cuda.client().await, req).await.unwrap();
        for (g, w) in got.embeddings.iter().zip(&want.embeddings) {
            let error = relative_l2(&g.values, &w.values);
            assert!(
                error <= TOLERANCE,
                "layer {layer}, input {}: relative L2 {error:.2e}",
                g.id
            );
        }
    }
    cpu.stop().await;
    cuda.stop().await;
}
