//! `matmul` on FP8 E4M3 and NVFP4 weights (W4A16 and W4A4) against references computed here,
//! their bitwise invariances, and the checks on what `PackedMatrix` accepts.

use marc_kernels::{
    KernelError, MatmulPrecision, PackedMatrix, WeightDType, e4m3_to_f32, matmul_with_precision, nvfp4_decode,
    nvfp4_quantize, nvfp4_tensor_scale,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Activations with a wide range across blocks (so that block scales differ a lot), some
/// all-zero blocks, and some blocks far above the calibrated range (clamped scales in W4A4).
fn activations(len: usize, seed: u64) -> Vec<f32> {
    random(len, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, 0.01, 0.0, 30.0, 1e-5, 3.0][(i / 16 + i / 700) % 6])
        .collect()
}

/// NVFP4 weights as ModelOpt exports them (ModelOpt's weight rules, through the crate's
/// quantiser, whose rules are tested against a transcription in `quant/nvfp4.rs`): packed
/// bytes, block scales, tensor scale, and the decoded values `e2m1 * block_scale * tensor_scale`.
struct Nvfp4Weights {
    packed: Vec<u8>,
    scales: Vec<u8>,
    tensor_scale: f32,
    decoded: Vec<f32>,
}

fn nvfp4_weights(n: usize, k: usize, seed: u64) -> Nvfp4Weights {
    // Rows of different magnitudes so that block scales use much of the E4M3 range.
    let raw: Vec<f32> = random(n * k, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, 0.05, 4.0, 0.001][(i / k) % 4])
        .collect();
    let amax = raw.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tensor_scale = nvfp4_tensor_scale(amax);
    let (mut packed, mut scales) = (vec![0u8; n * k / 2], vec![0u8; n * k / 16]);
    nvfp4_quantize(&raw, tensor_scale, &mut packed, &mut scales).unwrap();
    let mut decoded = vec![0.0; n * k];
    nvfp4_decode(&packed, &scales, tensor_scale, &mut decoded).unwrap();
    Nvfp4Weights {
        packed,
        scales,
        tensor_scale,
        decoded,
    }
}

fn packed_nvfp4(n: usize, k: usize, w: &Nvfp4Weights, input_scale: Option<f32>) -> PackedMatrix {
    PackedMatrix::from_nvfp4(n, k, &w.packed, &w.scales, w.tensor_scale, input_scale).unwrap()
}

/// Random FP8 bytes (no NaN codes) and their values times `scale`.
fn fp8_weights(n: usize, k: usize, seed: u64, scale: f32) -> (Vec<u8>, Vec<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let bytes: Vec<u8> = (0..n * k)
        .map(|_| {
            loop {
                let b: u8 = rng.random();
                if b & 0x7F != 0x7F {
                    break b;
                }
            }
        })
        .collect();
    let decoded = bytes.iter().map(|&b| e4m3_to_f32(b) * scale).collect();
    (bytes, decoded)
}

fn run(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, precision: MatmulPrecision) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * w.rows()];
    matmul_with_precision(x, m, w, bias, &mut y, precision).expect("valid shapes");
    y
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

/// Relative L2 distance of y from the f64 product of x and the decoded weights (plus bias).
fn rel_l2_vs_f64(x: &[f32], m: usize, w: &[f32], n: usize, k: usize, bias: Option<&[f32]>, y: &[f32]) -> f64 {
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for i in 0..m {
        for j in 0..n {
            let dot: f64 = (0..k)
                .map(|kk| f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]))
                .sum();
            let want = dot + bias.map_or(0.0, |b| f64::from(b[j]));
            let got = f64::from(y[i * n + j]);
            err2 += (got - want).powi(2);
            ref2 += want.powi(2);
        }
    }
    (err2 / ref2.max(1e-300)).sqrt()
}

/// (m, n, k): ones, non-multiples of the tile sizes (12 / 6 rows, 32 columns), one and many
/// row tiles and panel groups; k a multiple of 16 for NVFP4.
const SHAPES: [(usize, usize, usize); 8] = [
    (1, 1, 16),
    (1, 33, 32),
    (2, 7, 48),
    (5, 100, 64),
    (13, 65, 304),
    (47, 31, 256),
    (130, 70, 128),
    (20, 300, 2112),
];

#[test]
fn w4a16_matches_f64_on_the_decoded_weights() {
    let mut worst = 0.0f64;
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let seed = s as u64 * 10;
        let w = nvfp4_weights(n, k, seed + 1);
        let packed = packed_nvfp4(n, k, &w, Some(0.02));
        let x = activations(m * k, seed + 2);
        let bias = random(n, seed + 3);
        for b in [None, Some(&bias[..])] {
            // The input scale is ignored in the default (W4A16) precision.
            let y = run(&x, m, &packed, b, MatmulPrecision::Exact);
            let rel = rel_l2_vs_f64(&x, m, &w.decoded, n, k, b, &y);
            assert!(rel <= 1e-6, "relative L2 {rel:e} (m={m} n={n} k={k})");
            worst = worst.max(rel);
        }
    }
    eprintln!("w4a16: worst relative L2 error {worst:e}");
}

#[test]
fn fp8_matches_f64_on_the_decoded_weights() {
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let seed = s as u64 * 10;
        let scale = 0.0123;
        let (bytes, decoded) = fp8_weights(n, k, seed + 1, scale);
        let w = PackedMatrix::from_fp8_e4m3(n, k, &bytes, scale).unwrap();
        let x = random(m * k, seed + 2);
        let bias = random(n, seed + 3);
        for b in [None, Some(&bias[..])] {
            let y = run(&x, m, &w, b, MatmulPrecision::Exact);
            let rel = rel_l2_vs_f64(&x, m, &decoded, n, k, b, &y);
            assert!(rel <= 1e-6, "relative L2 {rel:e} (m={m} n={n} k={k})");
        }
    }
}

// ---- W4A4: a reference written from the format's definition, independently of the crate's
// quantiser (nearest values found by search over the value sets, not by bit manipulation).

/// The 127 non-negative finite E4M3 values, by code.
fn e4m3_values() -> Vec<f64> {
    (0..0x7Fu8)
        .map(|c| {
            let (e, m) = (i32::from(c >> 3), f64::from(c & 7));
            if e == 0 {
                m / 8.0 * 2f64.powi(-6)
            } else {
                (1.0 + m / 8.0) * 2f64.powi(e - 7)
            }
        })
        .collect()
}

/// The nearest of `values` (ascending) to `v >= 0`, ties to the even index; beyond the last,
/// the last.
fn nearest(values: &[f64], v: f64) -> usize {
    let mut best = 0;
    for (i, &c) in values.iter().enumerate() {
        let (d, db) = ((v - c).abs(), (v - values[best]).abs());
        if d < db || (d == db && i % 2 == 0) {
            best = i;
        }
    }
    best
}

/// One activation row quantised with ModelOpt's activation rule: E2M1 values and f32 block
/// scales.
fn reference_quantise(row: &[f32], input_scale: f32) -> (Vec<f32>, Vec<f32>) {
    let e4m3 = e4m3_values();
    let e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    let (mut values, mut scales) = (Vec::new(), Vec::new());
    for block in row.chunks(16) {
        let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let mut s = amax / (6.0 * input_scale);
        if s == 0.0 {
            s = 1.0;
        }
        let s = s.clamp(2f32.powi(-9), 448.0);
        let bs = e4m3[nearest(&e4m3, f64::from(s))] as f32;
        scales.push(bs);
        for &v in block {
            let q = v / (bs * input_scale);
            let mag = e2m1[nearest(&e2m1, f64::from(q.abs()))] as f32;
            values.push(if q < 0.0 { -mag } else { mag });
        }
    }
    (values, scales)
}

/// The documented W4A4 product: per block the exact dot product of E2M1 values times both
/// block scales, accumulated in f32 in block order, then times `input_scale * tensor_scale`.
fn reference_w4a4(x: &[f32], m: usize, w: &Nvfp4Weights, n: usize, k: usize, input_scale: f32) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        let (xv, xs) = reference_quantise(&x[i * k..(i + 1) * k], input_scale);
        for j in 0..n {
            let mut acc = 0.0f32;
            for (b, &xsb) in xs.iter().enumerate() {
                let ws = e4m3_to_f32(w.scales[j * k / 16 + b]);
                let mut dot = 0.0f64;
                for t in 0..16 {
                    let kk = b * 16 + t;
                    // The weight's E2M1 value: decoded / (block scale * tensor scale), exact.
                    let byte = w.packed[(j * k + kk) / 2];
                    let nib = if kk % 2 == 0 { byte & 0xF } else { byte >> 4 };
                    let we = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0][usize::from(nib & 7)];
                    let we = if nib & 8 != 0 { -we } else { we };
                    dot += f64::from(xv[kk]) * we;
                }
                let term = dot * f64::from(xsb) * f64::from(ws);
                assert_eq!(f64::from(term as f32), term, "a block term is exact in f32");
                acc = (dot as f32).mul_add(xsb * ws, acc);
            }
            y[i * n + j] = acc * (input_scale * w.tensor_scale);
        }
    }
    y
}

#[test]
fn w4a4_matches_the_reference_bitwise() {
    for (s, &(m, n, k)) in SHAPES.iter().enumerate() {
        let seed = s as u64 * 10;
        let w = nvfp4_weights(n, k, seed + 1);
        let x = activations(m * k, seed + 2);
        // Calibrated for |x| <= 1: the x30 blocks exceed it (clamped scales, saturated values).
        let input_scale = nvfp4_tensor_scale(1.0);
        let packed = packed_nvfp4(n, k, &w, Some(input_scale));
        let want = reference_w4a4(&x, m, &w, n, k, input_scale);
        let y = run(&x, m, &packed, None, MatmulPrecision::Nvfp4Activations);
        assert_eq!(bits(&y), bits(&want), "m={m} n={n} k={k}");
        let bias = random(n, seed + 3);
        let yb = run(&x, m, &packed, Some(&bias), MatmulPrecision::Nvfp4Activations);
        let want_b: Vec<f32> = want.iter().enumerate().map(|(i, v)| v + bias[i % n]).collect();
        assert_eq!(bits(&yb), bits(&want_b), "with bias: m={m} n={n} k={k}");
    }
}

#[test]
fn w4a4_is_close_to_w4a16() {
    // Quantising activations costs accuracy, not correctness: on activations inside the
    // calibrated range the outputs stay within a few percent of W4A16.
    let (m, n, k) = (8, 64, 512);
    let w = nvfp4_weights(n, k, 71);
    let x = random(m * k, 72);
    let packed = packed_nvfp4(n, k, &w, Some(nvfp4_tensor_scale(1.0)));
    let a4 = run(&x, m, &packed, None, MatmulPrecision::Nvfp4Activations);
    let rel = rel_l2_vs_f64(&x, m, &w.decoded, n, k, None, &a4);
    assert!(rel > 1e-4 && rel < 0.15, "relative L2 of W4A4 vs exact {rel}");
}

#[test]
fn a_nan_activation_gives_nan_outputs_in_its_row_only() {
    let (m, n, k) = (3, 40, 64);
    let w = nvfp4_weights(n, k, 61);
    let packed = packed_nvfp4(n, k, &w, Some(nvfp4_tensor_scale(1.0)));
    let mut x = random(m * k, 62);
    for precision in [MatmulPrecision::Exact, MatmulPrecision::Nvfp4Activations] {
        let clean = run(&x, m, &packed, None, precision);
        x[k + 20] = f32::NAN;
        let y = run(&x, m, &packed, None, precision);
        x[k + 20] = 0.5;
        assert!(y[n..2 * n].iter().all(|v| v.is_nan()), "{precision:?}: row 1 is NaN");
        assert_eq!(bits(&y[..n]), bits(&clean[..n]), "{precision:?}: row 0 unaffected");
        assert_eq!(
            bits(&y[2 * n..]),
            bits(&clean[2 * n..]),
            "{precision:?}: row 2 unaffected"
        );
    }
}

#[test]
fn nvfp4_activations_leave_other_weights_exact() {
    let (m, n, k) = (3, 40, 64);
    let x = random(m * k, 81);
    let w = nvfp4_weights(n, k, 82);
    let without_input_scale = packed_nvfp4(n, k, &w, None);
    let (bytes, _) = fp8_weights(n, k, 83, 0.5);
    let fp8 = PackedMatrix::from_fp8_e4m3(n, k, &bytes, 0.5).unwrap();
    let f32w = PackedMatrix::from_f32(n, k, &random(n * k, 84)).unwrap();
    for w in [&without_input_scale, &fp8, &f32w] {
        assert_eq!(
            bits(&run(&x, m, w, None, MatmulPrecision::Nvfp4Activations)),
            bits(&run(&x, m, w, None, MatmulPrecision::Exact)),
            "{}",
            w.dtype()
        );
    }
}

/// Each row computed alone must have the same bytes as inside batches of any size, at any
/// position, on 1, 2 or 3 threads: NVFP4 (W4A16 and W4A4) and FP8.
#[test]
fn rows_are_bitwise_batch_and_thread_invariant() {
    let (n, k, big) = (100, 608, 70);
    let x = activations(big * k, 91);
    let bias = random(n, 92);
    let nv = nvfp4_weights(n, k, 93);
    let nvfp4 = packed_nvfp4(n, k, &nv, Some(nvfp4_tensor_scale(1.0)));
    let (bytes, _) = fp8_weights(n, k, 94, 0.01);
    let fp8 = PackedMatrix::from_fp8_e4m3(n, k, &bytes, 0.01).unwrap();
    let cases = [
        (&nvfp4, MatmulPrecision::Exact),
        (&nvfp4, MatmulPrecision::Nvfp4Activations),
        (&fp8, MatmulPrecision::Exact),
    ];
    for (w, precision) in cases {
        let alone: Vec<Vec<u32>> = (0..big)
            .map(|i| bits(&pool(1).install(|| run(&x[i * k..(i + 1) * k], 1, w, Some(&bias), precision))))
            .collect();
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            for len in (1..=17).chain([31, 33, big]) {
                for start in [0, 5, big - len].into_iter().filter(|s| s + len <= big) {
                    let xs = &x[start * k..(start + len) * k];
                    let y = pool.install(|| run(xs, len, w, Some(&bias), precision));
                    for r in 0..len {
                        assert_eq!(
                            bits(&y[r * n..(r + 1) * n]),
                            alone[start + r],
                            "{} {precision:?}: row {} at position {r} of {len} on {threads} threads",
                            w.dtype(),
                            start + r
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn dtype_and_size_report_the_compressed_formats() {
    let (n, k) = (64, 256);
    let w = nvfp4_weights(n, k, 1);
    let p = packed_nvfp4(n, k, &w, None);
    assert_eq!(p.dtype(), WeightDType::NVFP4);
    assert_eq!(
        (p.rows(), p.cols(), p.scale(), p.input_scale()),
        (n, k, w.tensor_scale, None)
    );
    // 4 bits per weight plus one byte per 16: 4.5 bits.
    assert_eq!(p.size_in_bytes(), n * k * 9 / 16);
    let (bytes, _) = fp8_weights(n, k, 2, 1.0);
    let f = PackedMatrix::from_fp8_e4m3(n, k, &bytes, 1.0).unwrap();
    assert_eq!((f.dtype(), f.size_in_bytes()), (WeightDType::F8E4M3, n * k));
    assert_eq!((WeightDType::NVFP4.bits(), WeightDType::F8E4M3.size_in_bytes()), (4, 1));
    assert_eq!(WeightDType::F8E4M3.name(), "F8_E4M3");
}

#[test]
fn malformed_nvfp4_and_fp8_weights_are_errors() {
    let (n, k) = (4, 32);
    let w = nvfp4_weights(n, k, 5);
    let (p, s, ts) = (&w.packed[..], &w.scales[..], w.tensor_scale);
    let err = |r: Result<PackedMatrix, KernelError>| r.unwrap_err().to_string();
    assert!(err(PackedMatrix::from_nvfp4(n, k, &p[1..], s, ts, None)).contains("expected 64 bytes, found 63"));
    assert!(err(PackedMatrix::from_nvfp4(n, k, p, &s[1..], ts, None)).contains("block_scales"));
    assert!(err(PackedMatrix::from_nvfp4(n, 24, &p[..48], &s[..6], ts, None)).contains("multiple of 16"));
    assert!(PackedMatrix::from_nvfp4(0, k, &[], &[], ts, None).is_err());
    for bad in [f32::NAN, f32::INFINITY, -1.0, 0.0] {
        assert!(err(PackedMatrix::from_nvfp4(n, k, p, s, bad, None)).contains("tensor_scale"));
        assert!(err(PackedMatrix::from_nvfp4(n, k, p, s, ts, Some(bad))).contains("input_scale"));
    }
    for bad_code in [0x7Fu8, 0xFF, 0xB8] {
        let mut s2 = s.to_vec();
        s2[3] = bad_code;
        let e = err(PackedMatrix::from_nvfp4(n, k, p, &s2, ts, None));
        assert!(e.contains("block scale 3"), "{e}");
    }
    let (bytes, _) = fp8_weights(n, k, 6, 1.0);
    assert!(err(PackedMatrix::from_fp8_e4m3(n, k, &bytes[1..], 1.0)).contains("found 127"));
    assert!(err(PackedMatrix::from_fp8_e4m3(n, k, &bytes, f32::NAN)).contains("scale"));
    let mut nan = bytes.clone();
    nan[k + 2] = 0xFF;
    assert!(err(PackedMatrix::from_fp8_e4m3(n, k, &nan, 1.0)).contains("element [1, 2]"));
    assert!(err(PackedMatrix::from_bytes(WeightDType::NVFP4, n, k, p)).contains("from_nvfp4"));
}
