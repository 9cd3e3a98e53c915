//! Every non-AMX ISA path this CPU runs gives the same bits as the scalar path; the AMX path
//! (bf16 weights) against an f64 reference and its own bitwise invariances.

use super::MatmulPrecision;
use super::amx;
use super::cpu::{self, CpuIsa};
use super::packed::{Layout, PackedMatrix};
use crate::dtype::WeightDType;
use crate::quant::{f32_to_e4m3, nvfp4_quantize, nvfp4_tensor_scale};

fn values(len: usize, seed: u32) -> Vec<f32> {
    // A small xorshift: deterministic, no dev-dependency needed in unit tests.
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn packed(dtype: WeightDType, n: usize, k: usize, seed: u32) -> PackedMatrix {
    let v = values(n * k, seed);
    let bytes: Vec<u8> = match dtype {
        WeightDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        WeightDType::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        WeightDType::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
        WeightDType::F8E4M3 => {
            let bytes: Vec<u8> = v.iter().map(|&x| f32_to_e4m3(x * 500.0)).collect();
            return PackedMatrix::from_fp8_e4m3(n, k, &bytes, 0.37).unwrap();
        }
        WeightDType::NVFP4 => {
            let (mut p, mut s) = (vec![0; n * k / 2], vec![0; n * k / 16]);
            // Blocks of very different magnitudes (E4M3 scales from subnormal to large).
            let v: Vec<f32> = v
                .iter()
                .enumerate()
                .map(|(i, x)| x * [1.0, 1e-4, 30.0][i / 16 % 3])
                .collect();
            nvfp4_quantize(&v, nvfp4_tensor_scale(30.0), &mut p, &mut s).unwrap();
            return PackedMatrix::from_nvfp4(n, k, &p, &s, nvfp4_tensor_scale(30.0), Some(0.01)).unwrap();
        }
    };
    PackedMatrix::from_bytes_in(Layout::Panels, dtype, n, k, &bytes).unwrap()
}

#[test]
fn isa_paths_agree_bitwise() {
    let isas: Vec<CpuIsa> = [CpuIsa::Avx2, CpuIsa::Avx512]
        .into_iter()
        .filter(|isa| isa.is_available())
        .collect();
    // Shapes cover every kernel shape of both SIMD paths (1..12 rows, 1, 2 and 4 panels, AVX2
    // half panels), one and many row tiles (weights widened in registers or once per group),
    // and column edges inside a panel and inside a vector.
    for &(m, n, k) in &[
        (1, 130, 70),
        (2, 200, 9),
        (3, 7, 1),
        (5, 64, 17),
        (11, 45, 33),
        (48, 100, 300),
        (61, 97, 530),
        (1, 130, 64),
        (2, 200, 16),
        (5, 64, 48),
        (11, 45, 32),
        (48, 100, 304),
        (61, 97, 528),
    ] {
        let dtypes = [
            WeightDType::F32,
            WeightDType::BF16,
            WeightDType::F16,
            WeightDType::F8E4M3,
            WeightDType::NVFP4,
        ];
        // NVFP4 needs whole 16-blocks along k.
        for dtype in dtypes.into_iter().filter(|&d| d != WeightDType::NVFP4 || k % 16 == 0) {
            let w = packed(dtype, n, k, 3);
            let x = values(m * k, 4);
            let bias = values(n, 5);
            let mut want = vec![0.0; m * n];
            cpu::matmul(
                CpuIsa::Scalar,
                MatmulPrecision::Exact,
                &x,
                m,
                &w,
                Some(&bias),
                &mut want,
            );
            for &isa in &isas {
                let mut got = vec![f32::NAN; m * n];
                cpu::matmul(isa, MatmulPrecision::Exact, &x, m, &w, Some(&bias), &mut got);
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{isa:?} {dtype} m={m} n={n} k={k} at {i}");
                }
                if dtype == WeightDType::NVFP4 {
                    let mut want = vec![0.0; m * n];
                    let w4a4 = MatmulPrecision::Nvfp4Activations;
                    cpu::matmul(CpuIsa::Scalar, w4a4, &x, m, &w, Some(&bias), &mut want);
                    let mut got = vec![f32::NAN; m * n];
                    cpu::matmul(isa, w4a4, &x, m, &w, Some(&bias), &mut got);
                    assert_eq!(
                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{isa:?} W4A4 m={m} n={n} k={k}"
                    );
                }
            }
        }
    }
}

// ---- The AMX path (bf16 weights). Each test prints a note and checks nothing AMX-specific on
// a machine without AMX; the fallback paths are covered by the tests above and in tests/.

/// Whether the AMX path can run here; prints why not otherwise.
fn amx_or_note(test: &str) -> bool {
    let ok = CpuIsa::Amx.is_available();
    if !ok {
        eprintln!("note: {test}: no AMX (or no XTILEDATA permission) on this machine; AMX checks skipped");
    }
    ok
}

/// bf16 weights in the AMX layout and their exact values.
fn amx_weights(n: usize, k: usize, seed: u32) -> (Vec<f32>, PackedMatrix) {
    let h: Vec<half::bf16> = values(n * k, seed).into_iter().map(half::bf16::from_f32).collect();
    let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
    let w = PackedMatrix::from_bytes_in(Layout::AmxBf16, WeightDType::BF16, n, k, &bytes).unwrap();
    (h.iter().map(|v| v.to_f32()).collect(), w)
}

fn amx(precision: MatmulPrecision, x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    let mut y = vec![f32::NAN; m * w.rows()];
    cpu::matmul(CpuIsa::Amx, precision, x, m, w, bias, &mut y);
    y
}

/// Checks y against an f64 reference of `x · wᵀ + bias`: every element within `terms * u *
/// sum |x w|` (f32 accumulation of `terms` exact products, plus the bias), and the relative L2
/// error of the whole output within `rel_l2`. Returns the relative L2 error.
#[allow(clippy::too_many_arguments)]
fn check_f64(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    y: &[f32],
    terms: usize,
    rel_l2: f64,
) -> f64 {
    let u = f64::from(f32::EPSILON) / 2.0;
    let (mut err2, mut ref2) = (0.0f64, 0.0f64);
    for i in 0..m {
        for j in 0..n {
            let (mut sum, mut abs) = (0.0f64, 0.0f64);
            for kk in 0..k {
                let p = f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]);
                sum += p;
                abs += p.abs();
            }
            let b = bias.map_or(0.0, |b| f64::from(b[j]));
            let want = sum + b;
            let got = f64::from(y[i * n + j]);
            let tol = (terms as f64 + 2.0) * u * (abs + b.abs()) * 1.01 + 1e-30;
            assert!(
                (got - want).abs() <= tol,
                "y[{i}, {j}] = {got}, reference {want}, tolerance {tol} (m={m} n={n} k={k})"
            );
            err2 += (got - want) * (got - want);
            ref2 += want * want;
        }
    }
    let rel = (err2 / ref2.max(1e-300)).sqrt();
    assert!(
        rel <= rel_l2,
        "relative L2 error {rel:e} > {rel_l2:e} (m={m} n={n} k={k})"
    );
    rel
}

const AMX_SHAPES: [(usize, usize, usize); 12] = [
    (1, 1, 1),
    (1, 1, 37),
    (1, 33, 1),
    (2, 7, 5),
    (3, 16, 32),
    (16, 32, 64),
    (17, 65, 33),
    (31, 100, 300),
    (33, 45, 257),
    (64, 130, 1000),
    (100, 97, 2100),
    (5, 300, 4097),
];

#[test]
fn amx_exact_matches_f64_reference() {
    if !amx_or_note("amx_exact_matches_f64_reference") {
        return;
    }
    let mut worst = 0.0f64;
    for (s, &(m, n, k)) in AMX_SHAPES.iter().enumerate() {
        let s = s as u32 * 10;
        let (wv, w) = amx_weights(n, k, s + 1);
        // A wide dynamic range in x, so that all three bf16 parts matter.
        let x: Vec<f32> = values(m * k, s + 2)
            .iter()
            .enumerate()
            .map(|(i, v)| v * [1.0, 1e-3, 3e4, 0.7][i % 4])
            .collect();
        let bias = values(n, s + 3);
        for b in [None, Some(&bias[..])] {
            let y = amx(MatmulPrecision::Exact, &x, m, &w, b);
            // 3 exact products per k step summed in f32: the accuracy of an f32 dot product.
            worst = worst.max(check_f64(&x, m, &wv, n, k, b, &y, 3 * k, 1e-6));
        }
    }
    eprintln!("amx exact: worst relative L2 error {worst:e}");
}

#[test]
fn amx_exact_is_close_to_the_avx512_path() {
    if !amx_or_note("amx_exact_is_close_to_the_avx512_path") {
        return;
    }
    let (m, n, k) = (40, 70, 1030);
    let x = values(m * k, 91);
    let (_, w_amx) = amx_weights(n, k, 92);
    let w_pan = packed(WeightDType::BF16, n, k, 92);
    let mut want = vec![0.0; m * n];
    cpu::matmul(CpuIsa::Avx512, MatmulPrecision::Exact, &x, m, &w_pan, None, &mut want);
    let got = amx(MatmulPrecision::Exact, &x, m, &w_amx, None);
    let err: f64 = got.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
    assert!((err / norm).sqrt() < 1e-6, "relative L2 {}", (err / norm).sqrt());
}

#[test]
fn amx_bf16_activations_match_the_reference_of_rounded_inputs() {
    if !amx_or_note("amx_bf16_activations_match_the_reference_of_rounded_inputs") {
        return;
    }
    for (s, &(m, n, k)) in AMX_SHAPES.iter().enumerate() {
        let s = s as u32 * 10;
        let (wv, w) = amx_weights(n, k, s + 1);
        let x = values(m * k, s + 2);
        let bias = values(n, s + 3);
        let y = amx(MatmulPrecision::Bf16Activations, &x, m, &w, Some(&bias));
        // Against the exact product of the bf16-rounded (nearest-even) activations, the only
        // error left is f32 accumulation: k exact products, within (k + 2) u sum |x w| each.
        let xr: Vec<f32> = x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect();
        check_f64(&xr, m, &wv, n, k, Some(&bias), &y, k, 1e-6);
    }
}

#[test]
fn amx_rows_are_bitwise_batch_and_thread_invariant() {
    if !amx_or_note("amx_rows_are_bitwise_batch_and_thread_invariant") {
        return;
    }
    let (n, k, big) = (100, 600, 150);
    let (_, w) = amx_weights(n, k, 31);
    let x = values(big * k, 32);
    let bias = values(n, 33);
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    for precision in [MatmulPrecision::Exact, MatmulPrecision::Bf16Activations] {
        let alone: Vec<Vec<u32>> = (0..big)
            .map(|i| {
                let y = pool(1).install(|| amx(precision, &x[i * k..(i + 1) * k], 1, &w, Some(&bias)));
                y.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let mut windows = vec![(0, big)];
            for len in [2, 15, 16, 17, 32, 33, 48, 100] {
                for start in [0, 1, 7, big - len] {
                    windows.push((start, len));
                }
            }
            for (start, len) in windows {
                let y = pool.install(|| amx(precision, &x[start * k..(start + len) * k], len, &w, Some(&bias)));
                for r in 0..len {
                    let got: Vec<u32> = y[r * n..(r + 1) * n].iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        got,
                        alone[start + r],
                        "{precision:?}: row {} at position {r} of {len} on {threads} threads",
                        start + r
                    );
                }
            }
        }
    }
}

#[test]
fn amx_short_row_tiles_match_full_tiles_bitwise() {
    if !amx_or_note("amx_short_row_tiles_match_full_tiles_bitwise") {
        return;
    }
    // n = 100: a partial last panel; k = 600: a partial last k block.
    let (n, k, big) = (100, 600, 40);
    let (_, w) = amx_weights(n, k, 41);
    let x = values(big * k, 42);
    let bias = values(n, 43);
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    for precision in [MatmulPrecision::Exact, MatmulPrecision::Bf16Activations] {
        // Every row alone, with 16-row tiles (rows past m zero): the reference.
        let alone: Vec<Vec<u32>> = (0..big)
            .map(|i| {
                let mut y = vec![f32::NAN; n];
                pool(1).install(|| amx::run_full_tiles(precision, &x[i * k..(i + 1) * k], 1, &w, Some(&bias), &mut y));
                bits(&y)
            })
            .collect();
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            for m in (1..=17).chain([31, 33, big]) {
                for start in [0, 5, big - m].into_iter().filter(|s| s + m <= big) {
                    let xs = &x[start * k..(start + m) * k];
                    let short = pool.install(|| amx(precision, xs, m, &w, Some(&bias)));
                    let mut full = vec![f32::NAN; m * n];
                    pool.install(|| amx::run_full_tiles(precision, xs, m, &w, Some(&bias), &mut full));
                    assert_eq!(
                        bits(&short),
                        bits(&full),
                        "{precision:?}: m = {m} from row {start}, {threads} threads"
                    );
                    for r in 0..m {
                        assert_eq!(
                            bits(&short[r * n..(r + 1) * n]),
                            alone[start + r],
                            "{precision:?}: row {} at position {r} of {m} on {threads} threads",
                            start + r
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn amx_layout_size_and_default_packing() {
    let bytes = vec![0u8; 40 * 70 * 2];
    if !amx_or_note("amx_layout_size_and_default_packing") {
        return;
    }
    let w = PackedMatrix::from_bytes_in(Layout::AmxBf16, WeightDType::BF16, 40, 70, &bytes).unwrap();
    // Two panels of 32 columns, k padded to 96.
    assert_eq!(w.size_in_bytes(), 64 * 96 * 2);
    let default = PackedMatrix::from_bytes(WeightDType::BF16, 40, 70, &bytes).unwrap();
    let want = if CpuIsa::detected() == CpuIsa::Amx {
        Layout::AmxBf16
    } else {
        Layout::Panels
    };
    assert_eq!(default.layout(), want);
}

#[test]
fn process_wide_precision_round_trips() {
    // The only test that changes the process-wide setting; it restores the default.
    assert_eq!(super::matmul_precision(), MatmulPrecision::Exact);
    super::set_matmul_precision(MatmulPrecision::Bf16Activations);
    assert_eq!(super::matmul_precision(), MatmulPrecision::Bf16Activations);
    super::set_matmul_precision(MatmulPrecision::Exact);
    assert_eq!(super::matmul_precision(), MatmulPrecision::Exact);
}
