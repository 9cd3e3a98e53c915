//! Benchmarks of the packed sequence ops at the bench-150m configuration: Mamba-2 with H = 32,
//! P = 64, G = 4, N = 64, chunk 64 (conv channels 2048 + 2 * 4 * 64 = 2560, K = 4) and attention
//! with 16 query / 4 key-value heads of 64. Batches of 1 x 32, 16 x 128 and 1 x 2048 tokens, on
//! rayon's global pool (all cores unless `RAYON_NUM_THREADS` says otherwise).
//!
//! `cargo bench -p marc-kernels --bench seq_ops`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use marc_kernels::ops::{AttentionShape, SsdShape, causal_attention, causal_conv1d_silu, ssd_scan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// (sequences, tokens per sequence).
const BATCHES: [(usize, usize); 3] = [(1, 32), (16, 128), (1, 2048)];

fn uniform(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn cu_seqlens(seqs: usize, len: usize) -> Vec<usize> {
    (0..=seqs).map(|i| i * len).collect()
}

fn bench_conv(c: &mut Criterion) {
    let (channels, k) = (2560, 4);
    let mut rng = StdRng::seed_from_u64(1);
    let weight = uniform(&mut rng, channels * k, -0.5, 0.5);
    let bias = uniform(&mut rng, channels, -0.5, 0.5);
    let mut group = c.benchmark_group("causal_conv1d_silu");
    for (seqs, len) in BATCHES {
        let t = seqs * len;
        let x = uniform(&mut rng, t * channels, -2.0, 2.0);
        let cu = cu_seqlens(seqs, len);
        let mut out = vec![0.0; x.len()];
        group.throughput(Throughput::Elements(t as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{seqs}x{len}")), |bench| {
            bench.iter(|| causal_conv1d_silu(black_box(&x), &cu, &weight, Some(&bias), k, &mut out).unwrap())
        });
    }
    group.finish();
}

fn bench_ssd(c: &mut Criterion) {
    let shape = SsdShape {
        num_heads: 32,
        head_dim: 64,
        n_groups: 4,
        state_size: 64,
        chunk_size: 64,
    };
    let (h, gn) = (shape.num_heads, shape.n_groups * shape.state_size);
    let mut rng = StdRng::seed_from_u64(2);
    let a: Vec<f32> = uniform(&mut rng, h, 1.0, 16.0).iter().map(|v| -v).collect();
    let d = uniform(&mut rng, h, -1.0, 1.0);
    let mut group = c.benchmark_group("ssd_scan");
    for (seqs, len) in BATCHES {
        let t = seqs * len;
        let x = uniform(&mut rng, t * h * shape.head_dim, -1.0, 1.0);
        let dt = uniform(&mut rng, t * h, 0.001, 0.1);
        let b = uniform(&mut rng, t * gn, -1.0, 1.0);
        let cm = uniform(&mut rng, t * gn, -1.0, 1.0);
        let cu = cu_seqlens(seqs, len);
        let mut y = vec![0.0; x.len()];
        group.throughput(Throughput::Elements(t as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{seqs}x{len}")), |bench| {
            bench.iter(|| ssd_scan(&shape, &cu, black_box(&x), &dt, &a, &b, &cm, &d, &mut y).unwrap())
        });
    }
    group.finish();
}

fn bench_attention(c: &mut Criterion) {
    let shape = AttentionShape {
        num_heads: 16,
        num_kv_heads: 4,
        head_dim: 64,
    };
    let (qw, kvw) = (shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim);
    let mut rng = StdRng::seed_from_u64(3);
    let mut group = c.benchmark_group("causal_attention");
    for (seqs, len) in BATCHES {
        let t = seqs * len;
        let q = uniform(&mut rng, t * qw, -1.0, 1.0);
        let k = uniform(&mut rng, t * kvw, -1.0, 1.0);
        let v = uniform(&mut rng, t * kvw, -1.0, 1.0);
        let cu = cu_seqlens(seqs, len);
        let mut out = vec![0.0; q.len()];
        group.throughput(Throughput::Elements(t as u64));
        group.bench_function(BenchmarkId::from_parameter(format!("{seqs}x{len}")), |bench| {
            bench.iter(|| causal_attention(&shape, &cu, black_box(&q), &k, &v, &mut out).unwrap())
        });
    }
    group.finish();
}

// By hand rather than `criterion_main!`, whose generated functions carry no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_conv(&mut c);
    bench_ssd(&mut c);
    bench_attention(&mut c);
    c.final_summary();
}
