//! Every ISA path this CPU runs gives the same bits as the scalar path.

use super::MatmulPrecision;
use super::cpu::{self, CpuIsa};
use super::packed::{Layout, PackedMatrix};
use crate::dtype::WeightDType;

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
    ] {
        for dtype in [WeightDType::F32, WeightDType::BF16, WeightDType::F16] {
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
            }
        }
    }
}
