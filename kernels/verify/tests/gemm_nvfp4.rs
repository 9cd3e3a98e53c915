//! kernels/cuda/gemm_nvfp4.cu on the CPU through the SIMT emulation, against the CPU op
//! (`marc_kernels::matmul` on `PackedMatrix::from_nvfp4`) and an f64 product.
//!
//! Tolerances: W4A16 stages the f32 activations as bf16 for the tensor cores, so it is compared
//! with the CPU op and an f64 product fed the same bf16-rounded activations; the weights decode
//! exactly (e2m1 x E4M3 fits bf16) and bf16 x bf16 products are exact in f32, so the only error
//! left is f32 accumulation in another order: the fixture tolerance, 1e-5 relative L2. W4A4
//! quantises the activations exactly as the CPU does (its codes are compared bitwise), then every
//! product is exact on both sides: 1e-5 against the CPU's W4A4 on the raw f32 input. The
//! Blackwell W4A4 kernel (tcgen05, run here through the CPU model of its instructions in
//! include/tcgen05.cuh) computes the same products: the same 1e-5. Its one-MMA probe sums exact
//! products in f64 on both sides: 1e-6.

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

/// Runs a dense W4A4 kernel (gemm_nvfp4_w4a4_f32's parameters) on `shapes` through `launch`,
/// against the CPU's W4A4 on the raw f32 input and an f64 product of the quantised operands.
fn check_w4a4(kernel: &str, shapes: &[(usize, usize, usize, bool)], launch: impl Fn(usize, usize, &mut Args)) {
    for &(m, n, k, with_bias) in shapes {
        let case = format!("{kernel} {m}x{n}x{k}");
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
        launch(m, n, &mut args);

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

#[test]
fn w4a4_matches_the_cpu_block_scaled_product() {
    check_w4a4("gemm_nvfp4_w4a4_f32", &SHAPES, |m, n, args| {
        launch_gemm("gemm_nvfp4_w4a4_f32", m, n, args)
    });
}

/// gemm_nvfp4_w4a4_tcgen05_f32's tile (`TC_BM` x `TC_BN`), its dynamic shared memory
/// (`TC_SHARED_BYTES`) and its K per stage (`TC_BK`), as gemm_nvfp4.cu defines them.
const TC_TILE: (usize, usize) = (128, 64);
const TC_SHARED_BYTES: usize = 24 * 1024;
const TC_BK: usize = 256;

/// (m, n, k, bias) against the 128 x 64 tile and 256-deep stages: M = 1 with K = 16 (one
/// partial MMA); K a multiple of 16 but not of 64; one exact tile and stage; M and N ragged with
/// K one block past a stage; several tiles each way with a second stage that ends inside its
/// second MMA.
const TCGEN05_SHAPES: [(usize, usize, usize, bool); 6] = [
    (1, 1, 16, false),
    (1, 70, 48, true),
    (5, 24, 80, false),
    (128, 64, TC_BK, false),
    (130, 72, TC_BK + 16, true),
    (200, 130, TC_BK + 80, false),
];

#[test]
fn w4a4_on_tcgen05_matches_the_cpu_block_scaled_product() {
    check_w4a4("gemm_nvfp4_w4a4_tcgen05_f32", &TCGEN05_SHAPES, |m, n, args| {
        launch(
            "gemm_nvfp4_w4a4_tcgen05_f32",
            [dim(n.div_ceil(TC_TILE.1)), dim(m.div_ceil(TC_TILE.0)), 1],
            [128, 1, 1],
            TC_SHARED_BYTES,
            args,
        )
    });
}

/// One tcgen05.mma block-scaled MMA (tcgen05_mxf4nvf4_probe: M = 128, N = n, K = 64) through the
/// CPU model of the instruction (include/tcgen05.cuh), against a plain f64 block-scaled product:
/// the shared-memory descriptors, the instruction descriptor's N, the scale_vec::4X scale layout
/// in tensor memory and the accumulator's lanes and columns all have to be right. Two deliberate
/// mistakes show the check discriminates: each row's four block scales of B in reverse order,
/// and descriptors with the leading and stride byte offsets swapped.
#[test]
fn tcgen05_probe_follows_the_descriptor_scale_and_tensor_memory_layouts() {
    for n in [16usize, 48] {
        let mut rng = rng(300 + n as u64);
        let a = Nvfp4Data::random(&mut rng, 128, 64);
        let b = Nvfp4Data::random(&mut rng, n, 64);
        let run = |b_scales: &[u8], flags: i32| {
            let mut d = vec![f32::NAN; 128 * n];
            let mut args = Args::new();
            args.input(&a.packed)
                .input(&a.scales)
                .input(&b.packed)
                .input(b_scales)
                .int(n as i32)
                .int(flags)
                .output(&mut d);
            launch(
                "tcgen05_mxf4nvf4_probe",
                [1, 1, 1],
                [128, 1, 1],
                (128 + n) * 32,
                &mut args,
            );
            d
        };
        // Products of exact values summed in f64, one f32 rounding on each side.
        let want = scaled_product(&a.values, &b.values, 1.0, None, 128, n, 64);
        assert_close(&format!("probe N = {n}"), &run(&b.scales, 0), &want, 1e-6);

        let reversed: Vec<u8> = b.scales.chunks(4).flat_map(|s| s.iter().rev().copied()).collect();
        let err = rel_l2(&run(&reversed, 0), &want);
        assert!(err > 1e-2, "N = {n}: reversed scales went unnoticed (error {err:.1e})");
        let err = rel_l2(&run(&b.scales, 1), &want);
        assert!(
            err > 1e-2,
            "N = {n}: swapped LBO / SBO went unnoticed (error {err:.1e})"
        );
    }
}

/// The grouped NVFP4 GEMMs: 5 experts (some unused), 9 tokens, top-2, segments padded to the
/// 64-row tile, on each (n, k) of `shapes`, launched by `launch(n, args)`. The up projection
/// (relu2 fused) and a down projection (none), against the CPU expert: its Linear on the token's
/// row (bf16 rounded for W4A16, as the kernel stages it; raw for W4A4, quantised with the
/// expert's own input scale by both), then `relu2_in_place` (Mlp::forward).
fn check_grouped(
    kernel: &str,
    precision: MatmulPrecision,
    shapes: &[(usize, usize)],
    launch: impl Fn(usize, &[i32], &mut Args),
) {
    let routed = Routed::new();
    let num_experts = routed.num_experts;
    for &(n, k) in shapes {
        let mut rng = rng(19 + (n * 1000 + k) as u64);
        let x = activations(&mut rng, routed.tokens * k);
        let w = Nvfp4Data::random(&mut rng, num_experts * n, k);
        let tensor_scales: Vec<f32> = (0..num_experts).map(|e| 0.01 * (e + 1) as f32).collect();
        let input_scales: Vec<f32> = (0..num_experts).map(|e| nvfp4_tensor_scale(0.5 + e as f32)).collect();
        let w4a4 = precision == MatmulPrecision::Nvfp4Activations;
        let cpu_x = if w4a4 { x.clone() } else { bf16_rounded(&x).0 };
        for relu2 in [true, false] {
            let mut out = vec![f32::NAN; routed.tokens * routed.top_k * n];
            let mut args = Args::new();
            routed.push_routing(&mut args, &x);
            args.input(&w.packed).input(&w.scales).input(&tensor_scales);
            if w4a4 {
                args.input(&input_scales);
            }
            args.int(n as i32).int(k as i32).int(i32::from(relu2)).output(&mut out);
            launch(n, &routed.offsets, &mut args);
            let want = routed.per_entry(|e, t| {
                let weights = PackedMatrix::from_nvfp4(
                    n,
                    k,
                    &w.packed[e * n * k / 2..][..n * k / 2],
                    &w.scales[e * n * k / 16..][..n * k / 16],
                    tensor_scales[e],
                    Some(input_scales[e]),
                )
                .unwrap();
                cpu_expert(&cpu_x[t * k..][..k], &weights, precision, relu2)
            });
            assert_close(&format!("{kernel} {n}x{k}, relu2 {relu2}"), &out, &want, F32_REL_L2);
        }
    }
}

/// N ragged against the 64-column tile, K a multiple of 16 but not of 32.
const GROUPED_SHAPES: [(usize, usize); 1] = [(40, 48)];

#[test]
fn grouped_w4a16_with_fused_relu2_matches_the_cpu_experts() {
    check_grouped(
        "grouped_gemm_nvfp4_w4a16_f32",
        MatmulPrecision::Exact,
        &GROUPED_SHAPES,
        |n, offsets, args| launch_grouped_gemm("grouped_gemm_nvfp4_w4a16_f32", n, offsets, args),
    );
}

#[test]
fn grouped_w4a4_quantises_per_expert_and_matches_the_cpu_experts() {
    check_grouped(
        "grouped_gemm_nvfp4_w4a4_f32",
        MatmulPrecision::Nvfp4Activations,
        &GROUPED_SHAPES,
        |n, offsets, args| launch_grouped_gemm("grouped_gemm_nvfp4_w4a4_f32", n, offsets, args),
    );
}

/// (n, k) against the tcgen05 kernel's 64 output columns and 256-deep stages of 64-deep MMAs: K
/// not a multiple of 64 (one partial MMA); three column tiles, the last ragged, with a second
/// stage that ends inside its second MMA.
const TCGEN05_GROUPED_SHAPES: [(usize, usize); 2] = [(40, 48), (130, TC_BK + 80)];

#[test]
fn grouped_w4a4_on_tcgen05_quantises_per_expert_and_matches_the_cpu_experts() {
    check_grouped(
        "grouped_gemm_nvfp4_w4a4_tcgen05_f32",
        MatmulPrecision::Nvfp4Activations,
        &TCGEN05_GROUPED_SHAPES,
        |n, offsets, args| {
            // The portable kernel's grid (one 64-row routing tile per block), the dense tcgen05
            // kernel's threads and dynamic shared memory.
            let row_tiles = *offsets.last().unwrap() as usize / 64;
            launch(
                "grouped_gemm_nvfp4_w4a4_tcgen05_f32",
                [dim(n.div_ceil(TC_TILE.1)), dim(row_tiles), 1],
                [128, 1, 1],
                TC_SHARED_BYTES,
                args,
            )
        },
    );
}
