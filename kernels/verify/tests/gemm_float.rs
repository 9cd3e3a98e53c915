//! kernels/cuda/gemm_float.cu on the CPU through the SIMT emulation: the f32- and f16-weight
//! GEMMs, dense and grouped, against the CPU op (`marc_kernels::matmul` on
//! `PackedMatrix::from_bytes`) and an f64 product.
//!
//! Tolerance: both sides multiply f32 activations by exactly widened weights in f32 and differ
//! only in the order of the sums: the fixture tolerance, 1e-5 relative L2.

mod common;

use common::*;
use marc_kernels::{MatmulPrecision, PackedMatrix, WeightDType, matmul_with_precision};

/// A weight format of gemm_float.cu: the kernels' suffix, the checkpoint dtype.
#[derive(Clone, Copy)]
enum Float {
    F32,
    F16,
}

/// Random weights `[len]` of `format`: (little-endian bytes as the checkpoint stores them, and
/// the exact values). f16 draws include subnormals and both zeros.
fn weights(rng: &mut rand::rngs::StdRng, format: Float, len: usize) -> (Vec<u8>, Vec<f64>) {
    let values = uniform(rng, len, -2.0, 2.0);
    match format {
        Float::F32 => (
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            values.iter().map(|&v| f64::from(v)).collect(),
        ),
        Float::F16 => {
            let halves: Vec<half::f16> = values
                .iter()
                .enumerate()
                .map(|(i, &v)| match i % 13 {
                    0 => half::f16::from_f32(v * 1e-5), // subnormal in f16
                    1 => half::f16::from_f32(-0.0),
                    _ => half::f16::from_f32(v),
                })
                .collect();
            (
                halves.iter().flat_map(|h| h.to_bits().to_le_bytes()).collect(),
                halves.iter().map(|h| f64::from(h.to_f32())).collect(),
            )
        }
    }
}

impl Float {
    fn name(self) -> &'static str {
        match self {
            Float::F32 => "f32",
            Float::F16 => "f16",
        }
    }

    fn dtype(self) -> WeightDType {
        match self {
            Float::F32 => WeightDType::F32,
            Float::F16 => WeightDType::F16,
        }
    }

    /// The CPU op on `x [m, k]` with weights `bytes` `[n, k]`.
    fn cpu(self, x: &[f32], m: usize, bytes: &[u8], n: usize, k: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let w = PackedMatrix::from_bytes(self.dtype(), n, k, bytes).unwrap();
        let mut y = vec![0.0f32; m * n];
        matmul_with_precision(x, m, &w, bias, &mut y, MatmulPrecision::Exact).unwrap();
        y
    }
}

#[test]
fn float_gemms_match_the_cpu_op() {
    for format in [Float::F32, Float::F16] {
        for (m, n, k, with_bias) in RAGGED_GEMM_SHAPES {
            let case = format!("{} {m}x{n}x{k}", format.name());
            let mut rng = rng((m * 1000 + n * 10 + k) as u64);
            let x = uniform(&mut rng, m * k, -2.0, 2.0);
            let (w, w64) = weights(&mut rng, format, n * k);
            let bias = with_bias.then(|| uniform(&mut rng, n, -1.0, 1.0));

            let mut y = vec![f32::NAN; m * n];
            let (w32, w16) = (as_f32s(&w), as_u16s(&w));
            let mut args = Args::new();
            args.input(&x);
            match format {
                Float::F32 => args.input(&w32),
                Float::F16 => args.input(&w16),
            };
            gemm_tail(&mut args, bias.as_deref(), (m, n, k), &mut y);
            launch_gemm(&format!("gemm_{}_f32", format.name()), m, n, &mut args);

            let cpu = format.cpu(&x, m, &w, n, k, bias.as_deref());
            assert_close(&format!("{case} vs the CPU op"), &y, &cpu, F32_REL_L2);
            let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let exact = scaled_product(&x64, &w64, 1.0, bias.as_deref(), m, n, k);
            assert_close(&format!("{case} vs f64"), &y, &exact, F32_REL_L2);
        }
    }
}

/// The grouped float GEMMs on the shared routing (`Routed`), N and K ragged against the tile,
/// against each entry's CPU expert Linear on its token's row.
#[test]
fn grouped_float_gemms_match_the_cpu_experts() {
    let routed = Routed::new();
    let (n, k) = (70usize, 40usize);
    for format in [Float::F32, Float::F16] {
        let mut rng = rng(29);
        let x = uniform(&mut rng, routed.tokens * k, -2.0, 2.0);
        let (w, _) = weights(&mut rng, format, routed.num_experts * n * k);
        let mut out = vec![f32::NAN; routed.tokens * routed.top_k * n];
        let (w32, w16) = (as_f32s(&w), as_u16s(&w));
        let mut args = Args::new();
        routed.push_routing(&mut args, &x);
        match format {
            Float::F32 => args.input(&w32),
            Float::F16 => args.input(&w16),
        };
        args.int(n as i32).int(k as i32).output(&mut out);
        launch_grouped_gemm(
            &format!("grouped_gemm_{}_f32", format.name()),
            n,
            &routed.offsets,
            &mut args,
        );
        let bytes_per_expert = w.len() / routed.num_experts;
        let want = routed.per_entry(|e, t| {
            format.cpu(
                &x[t * k..][..k],
                1,
                &w[e * bytes_per_expert..][..bytes_per_expert],
                n,
                k,
                None,
            )
        });
        assert_close(&format!("grouped {}", format.name()), &out, &want, F32_REL_L2);
    }
}

/// The kernels' typed view of little-endian weight bytes (kept alive by the caller while `Args`
/// points at it).
fn as_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// As [`as_f32s`], for f16 bit patterns.
fn as_u16s(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
