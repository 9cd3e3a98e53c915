//! kernels/cuda/gemm_nvfp4.cu on the CPU through the SIMT emulation, against the CPU op
//! (`marc_kernels::matmul` on `PackedMatrix::from_nvfp4`) and an f64 product.
//!
//! Tolerances: W4A16 stages the f32 activations as bf16 for the tensor cores, so it is compared
//! with the CPU op and an f64 product fed the same bf16-rounded activations; the weights decode
//! exactly (e2m1 x E4M3 fits bf16) and bf16 x bf16 products are exact in f32, so the only error
//! left is f32 accumulation in another order: the fixture tolerance, 1e-5 relative L2. W4A4
//! quantises the activations exactly as the CPU does (its codes are compared bitwise), then every
//! product is exact on both sides: 1e-5 against the CPU's W4A4 on the raw f32 input.

mod common;

use common::*;
use marc_kernels::{MatmulPrecision, PackedMatrix, matmul_with_precision, nvfp4_quantize, nvfp4_tensor_scale};

/// (m, n, k, bias): M = 1; K a multiple of 16 but not of the 32-deep tile; M and N ragged
/// against the 64 x 64 tile, several blocks each way; one exact tile.
const SHAPES: [(usize, usize, usize, bool); 5] = [
    (1, 1, 16, false),
    (1, 70, 48, true),
    (5, 24, 80, false),
    (64, 64, 32, false),
    (70, 72, 144, true),
];

#[test]
fn w4a16_matches_the_cpu_op_on_bf16_activations() {
    for (m, n, k, with_bias) in SHAPES {
        let case = format!("W4A16 {m}x{n}x{k}");
        let mut rng = rng((m * 1000 + n * 10 + k) as u64);
        let x = uniform(&mut rng, m * k, -2.0, 2.0);
        let w = Nvfp4Data::random(&mut rng, n, k);
        let tensor_scale = 0.013f32;
        let bias = with_bias.then(|| uniform(&mut rng, n, -1.0, 1.0));

        let mut y = vec![f32::NAN; m * n];
        let mut args = Args::new();
        args.input(&x).input(&w.packed).input(&w.scales).float(tensor_scale);
        gemm_tail(&mut args, bias.as_deref(), (m, n, k), &mut y);
        launch_gemm("gemm_nvfp4_w4a16_f32", m, n, &mut args);

        let (x_bf16, x64) = bf16_rounded(&x);
        let weights = PackedMatrix::from_nvfp4(n, k, &w.packed, &w.scales, tensor_scale, None).unwrap();
        let mut cpu = vec![0.0f32; m * n];
        matmul_with_precision(&x_bf16, m, &weights, bias.as_deref(), &mut cpu, MatmulPrecision::Exact).unwrap();
        assert_close(&format!("{case} vs the CPU op"), &y, &cpu, F32_REL_L2);
        let exact = scaled_product(&x64, &w.values, f64::from(tensor_scale), bias.as_deref(), m, n, k);
        assert_close(&format!("{case} vs f64"), &y, &exact, F32_REL_L2);
    }
}

/// Every E2M1 rounding tie, both signs, with 6 as the block's largest magnitude: times
/// [`TIE_INPUT_SCALE`], the block's scale is exactly 1.0 and each element divides back to its tie.
const TIES: [f32; 16] = [
    6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -6.0, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0,
];
const TIE_INPUT_SCALE: f32 = 0.25;

/// Activations whose 16-blocks span what the quantiser must handle: ordinary values, tiny
/// blocks (scale clamped to 2^-9), all-zero blocks (scale 1.0), quarter steps, exact E2M1 ties
/// (with [`TIE_INPUT_SCALE`]), and blocks far past the calibrated range (scale saturating at
/// 448, codes at 6).
fn activations(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<f32> {
    uniform(rng, len, -1.0, 1.0)
        .into_iter()
        .enumerate()
        .map(|(i, v)| match (i / 16) % 7 {
            0 | 1 => v,
            2 => v * 1e-7,
            3 => 0.0,
            4 => (v * 8.0).round() * 0.25,
            5 => TIES[i % 16] * TIE_INPUT_SCALE,
            _ => v * 5e4,
        })
        .collect()
}

/// Runs nvfp4_quantize_f32 on `x` ([rows, k]): (packed, scales).
fn quantise_emulated(x: &[f32], rows: usize, k: usize, input_scale: f32) -> Nvfp4Data {
    let mut packed = vec![0xAAu8; rows * k / 2];
    let mut scales = vec![0xAAu8; rows * k / 16];
    let mut args = Args::new();
    args.input(x)
        .int(rows as i32)
        .int(k as i32)
        .float(input_scale)
        .output(&mut packed)
        .output(&mut scales);
    launch(
        "nvfp4_quantize_f32",
        [dim((rows * k / 16).div_ceil(256)), 1, 1],
        [256, 1, 1],
        0,
        &mut args,
    );
    Nvfp4Data::new(packed, scales)
}

#[test]
fn activation_quantiser_is_bitwise_the_cpus() {
    for (rows, k) in [(1, 16), (3, 48), (40, 160)] {
        let mut rng = rng((rows * 100 + k) as u64);
        let x = activations(&mut rng, rows * k);
        for input_scale in [nvfp4_tensor_scale(1.0), 0.37, 1e-5, TIE_INPUT_SCALE] {
            let got = quantise_emulated(&x, rows, k, input_scale);
            let (mut packed, mut scales) = (vec![0u8; rows * k / 2], vec![0u8; rows * k / 16]);
            nvfp4_quantize(&x, input_scale, &mut packed, &mut scales).unwrap();
            assert_eq!(got.scales, scales, "{rows}x{k} input_scale {input_scale}: block scales");
            assert_eq!(got.packed, packed, "{rows}x{k} input_scale {input_scale}: codes");
        }
    }
}

#[test]
fn w4a4_matches_the_cpu_block_scaled_product() {
    for (m, n, k, with_bias) in SHAPES {
        let case = format!("W4A4 {m}x{n}x{k}");
        let mut rng = rng((m * 1000 + n * 10 + k + 1) as u64);
        let x = activations(&mut rng, m * k);
        let w = Nvfp4Data::random(&mut rng, n, k);
        let (tensor_scale, input_scale) = (0.013f32, nvfp4_tensor_scale(1.5));
        let bias = with_bias.then(|| uniform(&mut rng, n, -1.0, 1.0));

        let q = quantise_emulated(&x, m, k, input_scale);
        let mut y = vec![f32::NAN; m * n];
        let mut args = Args::new();
        args.input(&q.packed)
            .input(&q.scales)
            .float(input_scale)
            .input(&w.packed)
            .input(&w.scales)
            .float(tensor_scale);
        gemm_tail(&mut args, bias.as_deref(), (m, n, k), &mut y);
        launch_gemm("gemm_nvfp4_w4a4_f32", m, n, &mut args);

        let weights = PackedMatrix::from_nvfp4(n, k, &w.packed, &w.scales, tensor_scale, Some(input_scale)).unwrap();
        let mut cpu = vec![0.0f32; m * n];
        matmul_with_precision(
            &x,
            m,
            &weights,
            bias.as_deref(),
            &mut cpu,
            MatmulPrecision::Nvfp4Activations,
        )
        .unwrap();
        assert_close(&format!("{case} vs the CPU op"), &y, &cpu, F32_REL_L2);
        let scale = f64::from(input_scale * tensor_scale);
        let exact = scaled_product(&q.values, &w.values, scale, bias.as_deref(), m, n, k);
        assert_close(&format!("{case} vs f64"), &y, &exact, F32_REL_L2);
    }
}

/// The grouped NVFP4 GEMMs: 5 experts (some unused), 9 tokens, top-2, segments padded to the
/// 64-row tile; N ragged and K a multiple of 16 but not of 32. The up projection (relu2 fused)
/// and a down projection (none), against the CPU expert: its Linear on the token's row (bf16
/// rounded for W4A16, as the kernel stages it; raw for W4A4, quantised with the expert's own
/// input scale by both), then `relu2_in_place` (Mlp::forward).
fn check_grouped(kernel: &str, precision: MatmulPrecision) {
    let (num_experts, tokens, top_k, n, k) = (5usize, 9usize, 2usize, 40usize, 48usize);
    let mut rng = rng(19);
    let experts: Vec<i32> = (0..tokens * top_k).map(|i| [3, 0, 3, 1][i % 4]).collect();
    let (offsets, sorted) = permutation_reference(&experts, num_experts, 64);
    let x = activations(&mut rng, tokens * k);
    let w = Nvfp4Data::random(&mut rng, num_experts * n, k);
    let tensor_scales: Vec<f32> = (0..num_experts).map(|e| 0.01 * (e + 1) as f32).collect();
    let input_scales: Vec<f32> = (0..num_experts).map(|e| nvfp4_tensor_scale(0.5 + e as f32)).collect();
    let w4a4 = precision == MatmulPrecision::Nvfp4Activations;
    let cpu_x = if w4a4 { x.clone() } else { bf16_rounded(&x).0 };
    for relu2 in [true, false] {
        let mut out = vec![f32::NAN; tokens * top_k * n];
        let mut args = Args::new();
        args.input(&x)
            .input(&sorted)
            .input(&offsets)
            .int(num_experts as i32)
            .int(top_k as i32)
            .input(&w.packed)
            .input(&w.scales)
            .input(&tensor_scales);
        if w4a4 {
            args.input(&input_scales);
        }
        args.int(n as i32).int(k as i32).int(i32::from(relu2)).output(&mut out);
        launch_grouped_gemm(kernel, n, &offsets, &mut args);
        let want: Vec<f32> = experts
            .iter()
            .enumerate()
            .flat_map(|(i, &e)| {
                let e = e as usize;
                let weights = PackedMatrix::from_nvfp4(
                    n,
                    k,
                    &w.packed[e * n * k / 2..][..n * k / 2],
                    &w.scales[e * n * k / 16..][..n * k / 16],
                    tensor_scales[e],
                    Some(input_scales[e]),
                )
                .unwrap();
                let mut row = vec![0.0f32; n];
                let t = i / top_k;
                matmul_with_precision(&cpu_x[t * k..][..k], 1, &weights, None, &mut row, precision).unwrap();
                if relu2 {
                    marc_kernels::ops::activation::relu2_in_place(&mut row);
                }
                row
            })
            .collect();
        assert_close(&format!("{kernel}, relu2 {relu2}"), &out, &want, F32_REL_L2);
    }
}

#[test]
fn grouped_w4a16_with_fused_relu2_matches_the_cpu_experts() {
    check_grouped("grouped_gemm_nvfp4_w4a16_f32", MatmulPrecision::Exact);
}

#[test]
fn grouped_w4a4_quantises_per_expert_and_matches_the_cpu_experts() {
    check_grouped("grouped_gemm_nvfp4_w4a4_f32", MatmulPrecision::Nvfp4Activations);
}
