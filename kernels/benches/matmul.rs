//! `matmul` throughput on the shapes the model runs, for f32 and bf16 weights.
//!
//! Throughput is counted as 2·m·n·k elements per call, so criterion's `elem/s` reads as FLOP/s.
//! Threads: the global rayon pool, `RAYON_NUM_THREADS` (default: one per CPU), with the bench
//! thread as one of its workers, as the model's calls run inside `pool.install`: from outside
//! the pool every call would also pay for handing the job over and waking the caller (~10 us,
//! which dominates m = 1).

// criterion's macros generate undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use marc_kernels::{PackedMatrix, WeightDType, matmul};

/// (m, k, n)
const SHAPES: [(usize, usize, usize); 5] = [
    (1, 1024, 1024),
    (32, 1024, 4432),
    (2048, 1024, 2816),
    (2048, 2816, 1024),
    (512, 512, 512),
];

fn values(len: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect()
}

fn weights(dtype: WeightDType, n: usize, k: usize) -> PackedMatrix {
    let v = values(n * k);
    let bytes: Vec<u8> = match dtype {
        WeightDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        WeightDType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        WeightDType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        other => panic!("not a float dtype: {other}"),
    };
    PackedMatrix::from_bytes(dtype, n, k, &bytes).expect("weights")
}

fn bench(c: &mut Criterion) {
    rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global()
        .expect("global thread pool");
    for dtype in [WeightDType::BF16, WeightDType::F32] {
        let mut group = c.benchmark_group(format!("matmul_{}", dtype.name().to_lowercase()));
        group.sample_size(20).warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(2));
        for (m, k, n) in SHAPES {
            let w = weights(dtype, n, k);
            let x = values(m * k);
            let mut y = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements((2 * m * n * k) as u64));
            group.bench_function(BenchmarkId::from_parameter(format!("m{m}_k{k}_n{n}")), |b| {
                b.iter(|| matmul(black_box(&x), m, &w, None, black_box(&mut y)).expect("shapes"))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
