//! kernels/cuda/gemm_fp8.cu on the CPU through the SIMT emulation, against the CPU op
//! (`marc_kernels::matmul` on `PackedMatrix::from_fp8_e4m3`) and an f64 product.
//!
//! Tolerance: the kernel stages the f32 activations as bf16 for the tensor cores, so both
//! references get the same bf16-rounded activations; E4M3 weights decode exactly in bf16 and
//! bf16 x bf16 products are exact in f32, so what remains is f32 accumulation in another order:
//! the fixture tolerance, 1e-5 relative L2.

mod common;

use common::*;
use marc_kernels::{MatmulPrecision, PackedMatrix, e4m3_to_f32, matmul_with_precision};
use rand::Rng;

/// `len` random E4M3 codes: every code but the two NaNs (0x7F, 0xFF): subnormals, both signs, up
/// to +-448.
fn e4m3_codes(rng: &mut rand::rngs::StdRng, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            let code = rng.random_range(0u8..0xFE);
            if code >= 0x7F { code + 1 } else { code }
        })
        .collect()
}

#[test]
fn fp8_gemm_matches_the_cpu_op_on_bf16_activations() {
    for (m, n, k, with_bias) in RAGGED_GEMM_SHAPES {
        let case = format!("FP8 {m}x{n}x{k}");
        let mut rng = rng((m * 1000 + n * 10 + k) as u64);
        let x = uniform(&mut rng, m * k, -2.0, 2.0);
        let w = e4m3_codes(&mut rng, n * k);
        let weight_scale = 0.0021f32;
        let bias = with_bias.then(|| uniform(&mut rng, n, -1.0, 1.0));

        let mut y = vec![f32::NAN; m * n];
        let mut args = Args::new();
        args.input(&x).input(&w).float(weight_scale);
        gemm_tail(&mut args, bias.as_deref(), (m, n, k), &mut y);
        launch_gemm("gemm_fp8_f32", m, n, &mut args);

        let (x_bf16, x64) = bf16_rounded(&x);
        let weights = PackedMatrix::from_fp8_e4m3(n, k, &w, weight_scale).unwrap();
        let mut cpu = vec![0.0f32; m * n];
        matmul_with_precision(&x_bf16, m, &weights, bias.as_deref(), &mut cpu, MatmulPrecision::Exact).unwrap();
        assert_close(&format!("{case} vs the CPU op"), &y, &cpu, F32_REL_L2);
        let w64: Vec<f64> = w.iter().map(|&c| f64::from(e4m3_to_f32(c))).collect();
        let exact = scaled_product(&x64, &w64, f64::from(weight_scale), bias.as_deref(), m, n, k);
        assert_close(&format!("{case} vs f64"), &y, &exact, F32_REL_L2);
    }
}

/// The grouped FP8 GEMM on the shared routing (`Routed`), N and K ragged against the 64 x 32
/// tile, each expert its own weight scale. With relu2 fused (the up projection) and without
/// (down), against the CPU expert: its FP8 Linear on the token's bf16-rounded row (as the kernel
/// stages it), then `relu2_in_place` (Mlp::forward).
#[test]
fn grouped_fp8_gemm_matches_the_cpu_experts() {
    let routed = Routed::new();
    let (n, k) = (70usize, 40usize);
    let mut rng = rng(23);
    let x = uniform(&mut rng, routed.tokens * k, -2.0, 2.0);
    let w = e4m3_codes(&mut rng, routed.num_experts * n * k);
    let weight_scales: Vec<f32> = (0..routed.num_experts).map(|e| 0.002 * (e + 1) as f32).collect();
    let (x_bf16, _) = bf16_rounded(&x);
    for relu2 in [true, false] {
        let mut out = vec![f32::NAN; routed.tokens * routed.top_k * n];
        let mut args = Args::new();
        routed.push_routing(&mut args, &x);
        args.input(&w)
            .input(&weight_scales)
            .int(n as i32)
            .int(k as i32)
            .int(i32::from(relu2))
            .output(&mut out);
        launch_grouped_gemm("grouped_gemm_fp8_f32", n, &routed.offsets, &mut args);
        let want = routed.per_entry(|e, t| {
            let weights = PackedMatrix::from_fp8_e4m3(n, k, &w[e * n * k..][..n * k], weight_scales[e]).unwrap();
            cpu_expert(&x_bf16[t * k..][..k], &weights, MatmulPrecision::Exact, relu2)
        });
        assert_close(&format!("grouped FP8, relu2 {relu2}"), &out, &want, F32_REL_L2);
    }
}
