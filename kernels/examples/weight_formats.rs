//! GEMV / GEMM time per weight format (f32, bf16, FP8 E4M3, NVFP4) on the Linear shapes of the
//! 150M benchmark configuration, with the weights streamed from memory: each call uses the next
//! of enough copies of the matrix (`GIB` of weights per format, default 1) that no copy is in
//! cache when its turn comes, as in a forward pass that reads every layer once.
//!
//! `cargo run -p marc-kernels --release --example weight_formats [threads] [reps] [filter]`
//!
//! `M=1,8` limits the batch sizes, `GIB` sets the weight bytes per format.
//!
//! The formats are interleaved call by call (each round: copy 0 of every format, then copy 1 of
//! every format, ..., the order of the formats rotating from call to call), so that a machine
//! whose speed drifts over seconds, as these shared VMs' memory bandwidth does, slows every
//! format alike instead of whichever happened to be swept at a slow moment.
//!
//! Prints, per (shape, m, format): the median µs per call over all `reps` rounds, GB/s of
//! weight bytes read (`PackedMatrix::size_in_bytes`, scales included) and GFLOP/s (2·m·n·k) at
//! that median, the speed-up over bf16 (ratio of the medians), and the lowest and highest
//! speed-up of a single round (each round's median against bf16's in the same round).
//! `PRECISION=w4a4` runs NVFP4 with `MatmulPrecision::Nvfp4Activations`; `CPU_TIME=1` with one
//! thread times on-CPU time instead of wall time (for a machine shared with other work).
//! Compare the GB/s with the read bandwidth of `examples/read_bandwidth.rs`.

use std::time::Instant;

use marc_kernels::{
    MatmulPrecision, PackedMatrix, WeightDType, f32_to_e4m3, matmul_with_precision, nvfp4_quantize, nvfp4_tensor_scale,
};

/// (name, n = out_features, k = in_features) of bench-150m Linear layers.
const SHAPES: [(&str, usize, usize); 3] = [
    ("mamba.in_proj", 4640, 1024),
    ("mlp.up", 2816, 1024),
    ("mlp.down", 1024, 2816),
];
const ROWS: [usize; 4] = [1, 8, 32, 128];
/// bf16 first: it is the baseline of the last column.
const FORMATS: [WeightDType; 4] = [
    WeightDType::BF16,
    WeightDType::F32,
    WeightDType::F8E4M3,
    WeightDType::NVFP4,
];

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or(2, |a| a.parse().expect("threads"));
    let reps: usize = args.next().map_or(5, |a| a.parse().expect("reps"));
    let only: Option<String> = args.next();
    let gib: f64 = std::env::var("GIB").map_or(1.0, |v| v.parse().expect("GIB"));
    let w4a4 = std::env::var("PRECISION").is_ok_and(|p| p == "w4a4");
    let rows_wanted: Option<Vec<usize>> = std::env::var("M")
        .ok()
        .map(|v| v.split(',').map(|m| m.parse().expect("M=1,8,...")).collect());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    println!(
        "{:14} {:>4} {:>8} {:>10} {:>8} {:>9} {:>8} {:>12}",
        "shape", "m", "format", "us/call", "GB/s", "GFLOP/s", "vs bf16", "per round"
    );
    for (name, n, k) in SHAPES {
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let values: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect();
        for m in ROWS
            .into_iter()
            .filter(|m| rows_wanted.as_ref().is_none_or(|w| w.contains(m)))
        {
            let x: Vec<f32> = values.iter().cycle().skip(17).take(m * k).copied().collect();
            let mut y = vec![0.0f32; m * n];
            let formats: Vec<(WeightDType, Vec<PackedMatrix>, MatmulPrecision)> = FORMATS
                .into_iter()
                .map(|dtype| {
                    let w = pack(dtype, n, k, &values);
                    let copies = ((gib * f64::from(1u32 << 30)) / w.size_in_bytes() as f64).ceil() as usize;
                    let precision = if w4a4 && dtype == WeightDType::NVFP4 {
                        MatmulPrecision::Nvfp4Activations
                    } else {
                        MatmulPrecision::Exact
                    };
                    (dtype, vec![w; copies.max(1)], precision)
                })
                .collect();
            let on_cpu = threads == 1 && std::env::var_os("CPU_TIME").is_some();
            // Reading the on-CPU time is a file read (~10 µs): only when asked for, and outside
            // the wall-clock interval.
            let cpu_if_asked = || on_cpu.then(cpu_ns).flatten();
            // Every format's calls of a round use distinct copies, none in cache.
            let calls = formats.iter().map(|(_, all, _)| all.len()).min().unwrap_or(0);
            // seconds[round][format][call]
            let mut seconds = vec![vec![Vec::with_capacity(calls); formats.len()]; reps];
            pool.install(|| {
                for round in &mut seconds {
                    for i in 0..calls {
                        for j in 0..formats.len() {
                            let f = (i + j) % formats.len();
                            let (_, all, precision) = &formats[f];
                            let c = cpu_if_asked();
                            let t = Instant::now();
                            matmul_with_precision(&x, m, &all[i], None, &mut y, *precision).expect("shapes");
                            let wall = t.elapsed().as_secs_f64();
                            let secs = match (c, cpu_if_asked()) {
                                // One thread on a busy machine: its on-CPU time, immune to
                                // time-sharing (but not to sharing caches and memory bandwidth).
                                (Some(a), Some(b)) => (b - a) as f64 * 1e-9,
                                _ => wall,
                            };
                            round[f].push(secs);
                        }
                    }
                }
            });
            let median_of =
                |f: usize, rounds: &[Vec<Vec<f64>>]| median(rounds.iter().flat_map(|r| r[f].iter().copied()));
            // bf16 is FORMATS[0], the baseline of the speed-ups.
            let bf16 = median_of(0, &seconds);
            for (f, (dtype, all, _)) in formats.iter().enumerate() {
                let secs = median_of(f, &seconds);
                let per_round: Vec<f64> = seconds
                    .iter()
                    .map(|r| median(r[0].iter().copied()) / median(r[f].iter().copied()))
                    .collect();
                let lowest = per_round.iter().copied().fold(f64::INFINITY, f64::min);
                let highest = per_round.iter().copied().fold(0.0, f64::max);
                println!(
                    "{name:14} {m:>4} {:>8} {:>10.1} {:>8.1} {:>9.1} {:>7.2}x {lowest:>6.2}-{highest:.2}x",
                    format!("{dtype}").to_lowercase(),
                    secs * 1e6,
                    all[0].size_in_bytes() as f64 / secs / 1e9,
                    2.0 * (m * n * k) as f64 / secs / 1e9,
                    bf16 / secs
                );
            }
        }
    }
}

/// The median of some times (0 if there are none).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Nanoseconds this thread has run on a CPU (Linux), if known.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The weights in `dtype`: floats as a checkpoint stores them; FP8 and NVFP4 quantised with
/// ModelOpt's per-tensor / two-level scales.
fn pack(dtype: WeightDType, n: usize, k: usize, values: &[f32]) -> PackedMatrix {
    let amax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    match dtype {
        WeightDType::F32 => PackedMatrix::from_f32(n, k, values),
        WeightDType::BF16 | WeightDType::F16 => {
            let bytes: Vec<u8> = values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect();
            PackedMatrix::from_bytes(WeightDType::BF16, n, k, &bytes)
        }
        WeightDType::F8E4M3 => {
            let scale = amax / 448.0;
            let bytes: Vec<u8> = values.iter().map(|&v| f32_to_e4m3(v / scale)).collect();
            PackedMatrix::from_fp8_e4m3(n, k, &bytes, scale)
        }
        WeightDType::NVFP4 => {
            let ts = nvfp4_tensor_scale(amax);
            let (mut packed, mut scales) = (vec![0u8; n * k / 2], vec![0u8; n * k / 16]);
            nvfp4_quantize(values, ts, &mut packed, &mut scales).expect("quantise");
            PackedMatrix::from_nvfp4(n, k, &packed, &scales, ts, Some(nvfp4_tensor_scale(1.0)))
        }
    }
    .expect("weights")
}
