//! The device codecs (kernels/cuda/include/quant.cuh, through src/quant_probe.cu) against the CPU
//! codecs of `marc_kernels::quant`, bitwise: every E4M3 code decoded, every E2M1 x E4M3 product
//! packed into a bf16 fragment word (which is only right if the product is exact in bf16, as the
//! GEMMs assume), and the encoders on every rounding boundary of both formats.

mod common;

use common::*;
use marc_kernels::{E2M1_VALUES, e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3};

#[test]
fn decoding_is_bitwise_the_cpus_and_exact_in_bf16() {
    let mut e4m3 = vec![0.0f32; 256];
    let mut words = vec![0u32; 256 * 16];
    let mut args = Args::new();
    args.output(&mut e4m3).output(&mut words);
    launch("quant_probe_decode", [1, 1, 1], [256, 1, 1], 0, &mut args);
    for code in 0..=255u8 {
        let want = e4m3_to_f32(code);
        let got = e4m3[usize::from(code)];
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "E4M3 {code:#04x}: {got} vs {want}"
        );
        if want.is_nan() {
            continue;
        }
        for nibble in 0..16u8 {
            let product = e2m1_to_f32(nibble) * want;
            let bf16 = half::bf16::from_f32(product);
            assert_eq!(bf16.to_f32(), product, "{product} is not exact in bf16");
            let word = words[usize::from(code) * 16 + usize::from(nibble)];
            let bits = u32::from(bf16.to_bits());
            assert_eq!(word, bits | bits << 16, "E2M1 {nibble:#x} x E4M3 {code:#04x}");
        }
    }
}

/// Every E4M3 and E2M1 value, the midpoints between neighbours (the ties) and the values one ulp
/// either side of them, both signs, zeros, values past the largest, infinities and NaN.
fn boundary_values() -> Vec<f32> {
    let mut magnitudes: Vec<f32> = (0..0x7Fu8).map(e4m3_to_f32).collect();
    magnitudes.extend(E2M1_VALUES[..8].iter());
    magnitudes.sort_by(f32::total_cmp);
    magnitudes.dedup();
    let mut values = Vec::new();
    for pair in magnitudes.windows(2) {
        let mid = (pair[0] + pair[1]) / 2.0;
        values.extend([pair[0], mid, mid.next_down(), mid.next_up()]);
    }
    values.extend([448.0, 464.0, 500.0, 1e6, 6.0, 7.0, f32::INFINITY, 1e-30, 0.0]);
    let negated: Vec<f32> = values.iter().map(|v| -v).collect();
    values.extend(negated);
    values.push(f32::NAN);
    values
}

#[test]
fn encoding_is_bitwise_the_cpus_on_every_boundary() {
    let x = boundary_values();
    let (mut e4m3, mut e2m1) = (vec![0u32; x.len()], vec![0u32; x.len()]);
    let mut args = Args::new();
    args.input(&x).int(x.len() as i32).output(&mut e4m3).output(&mut e2m1);
    launch("quant_probe_encode", [2, 1, 1], [256, 1, 1], 0, &mut args);
    for (i, &v) in x.iter().enumerate() {
        assert_eq!(e4m3[i], u32::from(f32_to_e4m3(v)), "E4M3 of {v:e}");
        assert_eq!(e2m1[i], u32::from(f32_to_e2m1(v)), "E2M1 of {v:e}");
    }
}
