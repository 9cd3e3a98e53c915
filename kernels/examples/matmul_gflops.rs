//! Best-of-N GFLOP/s of `matmul` on the bench shapes: a quick, noise-robust check while tuning
//! on a shared machine (criterion's `benches/matmul.rs` is the reference measurement).
//!
//! `cargo run -p marc-kernels --release --example matmul_gflops [threads] [reps] [name filter]`
//!
//! `SHAPE=m,k,n` runs one shape; `PRECISION=bf16` selects `MatmulPrecision::Bf16Activations`
//! (AMX path only); `MARC_MATMUL_ISA=avx512` forces the AVX-512 path.

use std::time::Instant;

use marc_kernels::{MatmulPrecision, PackedMatrix, WeightDType, matmul, set_matmul_precision};

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |a| a.parse().expect("threads"));
    let reps: usize = args.next().map_or(20, |a| a.parse().expect("reps"));
    let only: Option<String> = args.next();
    if std::env::var("PRECISION").is_ok_and(|p| p == "bf16") {
        set_matmul_precision(MatmulPrecision::Bf16Activations);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let custom: Option<(usize, usize, usize)> = std::env::var("SHAPE").ok().map(|v| {
        let d: Vec<usize> = v.split(',').map(|x| x.parse().expect("SHAPE=m,k,n")).collect();
        (d[0], d[1], d[2])
    });
    let default_shapes = [
        (1, 1024, 1024),
        (4, 512, 512),
        (32, 1024, 4640),
        (2048, 1024, 2816),
        (2048, 2816, 1024),
        (512, 512, 512),
    ];
    let shapes: Vec<(usize, usize, usize)> = custom.map_or(default_shapes.to_vec(), |c| vec![c]);
    for dtype in [WeightDType::BF16, WeightDType::F32, WeightDType::F16] {
        for &(m, k, n) in &shapes {
            let name = format!("{}/m{m}_k{k}_n{n}", dtype.name().to_lowercase());
            if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
                continue;
            }
            let v: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect();
            let bytes: Vec<u8> = match dtype {
                WeightDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                WeightDType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                WeightDType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                other => panic!("not a float dtype: {other}"),
            };
            let w = PackedMatrix::from_bytes(dtype, n, k, &bytes).expect("weights");
            let x: Vec<f32> = v.iter().cycle().take(m * k).copied().collect();
            let mut y = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            // Enough calls per rep for ~10 ms, so timer resolution does not matter.
            let inner = ((std::env::var("REP_FLOP")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2e8)
                / flops) as usize)
                .clamp(1, 10_000);
            let mut best = f64::INFINITY;
            let mut cpu = (0u64, 0usize);
            pool.install(|| {
                for _ in 0..reps {
                    let (t, c) = (Instant::now(), cpu_ns());
                    for _ in 0..inner {
                        matmul(&x, m, &w, None, &mut y).expect("shapes");
                    }
                    best = best.min(t.elapsed().as_secs_f64() / inner as f64);
                    if let (Some(a), Some(b)) = (c, cpu_ns()) {
                        cpu = (cpu.0 + b - a, cpu.1 + inner);
                    }
                }
            });
            if threads == 1 && cpu.1 > 0 && std::env::var_os("CPU_TIME").is_some() {
                // One thread: the mean on-CPU time of the worker (tick-granular, so summed over
                // all calls) is immune to time-sharing with other processes on a busy machine.
                best = cpu.0 as f64 * 1e-9 / cpu.1 as f64;
            }
            let peak = pool.install(peak_gflops);
            println!(
                "{name:28} {:8.1} GFLOP/s {:10.1} us  ({:.0}% of {:.0} GFLOP/s FMA peak x {threads})",
                flops / best / 1e9,
                best * 1e6,
                100.0 * flops / best / 1e9 / (peak * threads as f64),
                peak
            );
        }
    }
}

/// Nanoseconds this thread has run on a CPU (Linux), if known.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Single-thread f32 FMA peak measured now (AVX-512 if present, else AVX2), to read results
/// against on a machine shared with other work.
fn peak_gflops() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        fn run512(iters: usize) -> f32 {
            let a0 = _mm512_set1_ps(std::hint::black_box(0.5));
            let b = _mm512_set1_ps(std::hint::black_box(0.999));
            let c = _mm512_set1_ps(std::hint::black_box(1e-4));
            let (mut a1, mut a2, mut a3, mut a4, mut a5, mut a6) = (a0, a0, a0, a0, a0, a0);
            let (mut a7, mut a8, mut a9, mut a10, mut a11, mut a12) = (a0, a0, a0, a0, a0, a0);
            for _ in 0..iters {
                a1 = _mm512_fmadd_ps(a1, b, c);
                a2 = _mm512_fmadd_ps(a2, b, c);
                a3 = _mm512_fmadd_ps(a3, b, c);
                a4 = _mm512_fmadd_ps(a4, b, c);
                a5 = _mm512_fmadd_ps(a5, b, c);
                a6 = _mm512_fmadd_ps(a6, b, c);
                a7 = _mm512_fmadd_ps(a7, b, c);
                a8 = _mm512_fmadd_ps(a8, b, c);
                a9 = _mm512_fmadd_ps(a9, b, c);
                a10 = _mm512_fmadd_ps(a10, b, c);
                a11 = _mm512_fmadd_ps(a11, b, c);
                a12 = _mm512_fmadd_ps(a12, b, c);
            }
            let a = [a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12];
            a.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
        }
        if is_x86_feature_detected!("avx512f") {
            let iters = 2_000_000;
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = Instant::now();
                // SAFETY: AVX-512F was detected.
                std::hint::black_box(unsafe { run512(iters) });
                best = best.min(t.elapsed().as_secs_f64());
            }
            return (iters * 12 * 32) as f64 / best / 1e9;
        }
    }
    f64::NAN
}
