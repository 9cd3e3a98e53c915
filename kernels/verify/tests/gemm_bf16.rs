//! kernels/cuda/gemm_bf16.cu on the CPU through the SIMT emulation: the mma.sync fallback (which
//! follows the PTX ISA fragment layout) and the tiled GEMM built on it, against a plain f64 matrix
//! product of the same bf16 inputs.
//!
//! Tolerance: products of bf16 values are exact in f32, so the only error is f32 accumulation;
//! 1e-6 relative L2 for one 16-deep mma, the f32 fixture tolerance 1e-5 for whole GEMMs.

mod common;

use common::*;

#[test]
fn mma_fallback_follows_the_fragment_layout() {
    for seed in 0..3 {
        let mut rng = rng(100 + seed);
        let (a, a64) = bf16_values(&mut rng, 16 * 16);
        let (b_t, b64) = bf16_values(&mut rng, 8 * 16);
        let mut d = vec![f32::NAN; 16 * 8];
        let mut args = Args::new();
        args.input(&a).input(&b_t).output(&mut d);
        launch("mma_m16n8k16_probe", [1, 1, 1], [32, 1, 1], 0, &mut args);
        assert_close("m16n8k16", &d, &bf16_product(&a64, &b64, None, 16, 8, 16), 1e-6);
    }
}

#[test]
fn gemm_matches_a_plain_product_on_awkward_shapes() {
    // (m, n, k): a single element; K not a multiple of the 32-deep tile and below one mma; one
    // exact tile; several blocks with ragged edges in every dimension.
    for (m, n, k, with_bias) in [
        (1, 1, 1, false),
        (5, 70, 40, true),
        (64, 64, 32, false),
        (70, 72, 40, true),
    ] {
        let mut rng = rng((m * 1000 + n * 10 + k) as u64);
        let (a, a64) = bf16_values(&mut rng, m * k);
        let (w, w64) = bf16_values(&mut rng, n * k);
        let bias = with_bias.then(|| uniform(&mut rng, n, -1.0, 1.0));
        let mut c = vec![f32::NAN; m * n];
        let mut args = Args::new();
        args.input(&a).input(&w);
        gemm_tail(&mut args, bias.as_deref(), (m, n, k), &mut c);
        launch_gemm("gemm_bf16_f32", m, n, &mut args);
        let want = bf16_product(&a64, &w64, bias.as_deref(), m, n, k);
        assert_close(&format!("gemm {m}x{n}x{k}"), &c, &want, F32_REL_L2);
    }
}
