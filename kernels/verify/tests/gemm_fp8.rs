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

#[test]
fn fp8_gemm_matches_the_cpu_op_on_bf16_activations() {
    // (m, n, k, bias): a single element; M = 1 with K not a multiple of 16; ragged M, N and K
    // against the 64 x 64 x 32 tile; one exact tile.
    for (m, n, k, with_bias) in [
        (1, 1, 1, false),
        (1, 70, 40, true),
        (5, 24, 80, false),
        (64, 64, 32, false),
        (70, 72, 100, true),
    ] {
        let case = format!("FP8 {m}x{n}x{k}");
        let mut rng = rng((m * 1000 + n * 10 + k) as u64);
        let x = uniform(&mut rng, m * k, -2.0, 2.0);
        // Every E4M3 code but the two NaNs (0x7F, 0xFF): subnormals, both signs, up to +-448.
        let w: Vec<u8> = (0..n * k)
            .map(|_| {
                let code = rng.random_range(0u8..0xFE);
                if code >= 0x7F { code + 1 } else { code }
            })
            .collect();
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
