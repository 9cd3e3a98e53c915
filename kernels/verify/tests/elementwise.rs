//! kernels/cuda/elementwise.cu on the CPU through the SIMT emulation, against the CPU's operations:
//! the exact three-part bf16 split (the truncations the CPU AMX path makes; they sum back to x
//! exactly down to bf16's subnormal range), bf16 rounding (nearest even), the residual add and Mamba's step sizes. Each does
//! the CPU's operations in the CPU's order, so the results are compared bitwise (softplus through the
//! host's libm here; a GPU's expf / log1pf may differ by a few ulp).

mod common;

use common::*;
use marc_kernels::ops::activation::{add_in_place, softplus};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Values over the whole f32 range: random magnitudes from 2^-130 (subnormal) to 2^127, both
/// signs, plus zeros, the extremes and values whose low half decides a rounding tie.
fn awkward(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = rng(seed);
    let unit = uniform(&mut rng, len, -1.0, 1.0);
    let exponents = uniform(&mut rng, len, -130.0, 127.0);
    let mut x: Vec<f32> = unit.iter().zip(&exponents).map(|(u, e)| u * e.exp2()).collect();
    x[..8].copy_from_slice(&[
        0.0,
        -0.0,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(0x3f80_8000), // exactly halfway between two bf16, even below
        f32::from_bits(0x3f81_8000), // halfway, odd below: rounds up
        f32::from_bits(1),           // the smallest subnormal
    ]);
    x
}

fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// `split_bf16x3_f32` on `x`: its (hi, mid, lo) bf16 bits.
fn split_emulated(x: &[f32]) -> [Vec<u16>; 3] {
    let n = x.len();
    let (mut hi, mut mid, mut lo) = (vec![0u16; n], vec![0u16; n], vec![0u16; n]);
    let mut args = Args::new();
    args.input(x)
        .int(n as i32)
        .output(&mut hi)
        .output(&mut mid)
        .output(&mut lo);
    // Fewer threads than elements: the grid-stride loop covers the rest.
    launch("split_bf16x3_f32", [2, 1, 1], [256, 1, 1], 0, &mut args);
    [hi, mid, lo]
}

#[test]
fn split_parts_are_the_truncations_and_sum_to_x_exactly() {
    let n = 1000;
    let x = awkward(n, 5);
    let [hi, mid, lo] = split_emulated(&x);
    for i in 0..n {
        let v = x[i];
        let (h, m, l) = (bf16_to_f32(hi[i]), bf16_to_f32(mid[i]), bf16_to_f32(lo[i]));
        // The CPU's split (amx.rs): truncate, subtract (exact), truncate, subtract.
        let want_h = f32::from_bits(v.to_bits() & 0xFFFF_0000);
        let rest = v - want_h;
        let want_m = f32::from_bits(rest.to_bits() & 0xFFFF_0000);
        let want_l = f32::from_bits((rest - want_m).to_bits() & 0xFFFF_0000);
        assert_eq!(
            [h, m, l].map(f32::to_bits),
            [want_h, want_m, want_l].map(f32::to_bits),
            "x = {v:e}"
        );
        // Exact wherever x's lowest bits lie above bf16's smallest subnormal (2^-133); the
        // 1000 values reach down to 2^-130, where up to 2^-133 may be lost.
        let sum = f64::from(h) + f64::from(m) + f64::from(l);
        if v.abs() >= 2f32.powi(-110) {
            assert_eq!(sum, f64::from(v), "x = {v:e} not exact");
        } else {
            assert!((sum - f64::from(v)).abs() < 2f64.powi(-133), "x = {v:e}: {sum:e}");
        }
    }
}

/// `bf16_part_f32` gives `split_bf16x3_f32`'s parts one at a time, as f32: bitwise the same values.
#[test]
fn one_part_at_a_time_is_the_split_as_f32() {
    let n = 1000;
    let x = awkward(n, 7);
    for (part, want) in split_emulated(&x).iter().enumerate() {
        let mut got = vec![f32::NAN; n];
        let mut args = Args::new();
        args.input(&x).int(n as i32).int(part as i32).output(&mut got);
        launch("bf16_part_f32", [2, 1, 1], [256, 1, 1], 0, &mut args);
        for i in 0..n {
            assert_eq!(
                got[i].to_bits(),
                bf16_to_f32(want[i]).to_bits(),
                "part {part}, x = {:e}",
                x[i]
            );
        }
    }
}

#[test]
fn rounding_to_bf16_is_nearest_even() {
    let n = 1000;
    let mut x = awkward(n, 6);
    x[8..12].copy_from_slice(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7f7f_ffff)]);
    let mut out = vec![0u16; n];
    let mut args = Args::new();
    args.input(&x).int(n as i32).output(&mut out);
    launch(
        "round_bf16_f32",
        [dim(n.div_ceil(256)), 1, 1],
        [256, 1, 1],
        0,
        &mut args,
    );
    for (v, &got) in x.iter().zip(&out) {
        // The reference: `half`'s nearest-even conversion, independent of both kernels.
        let want = half::bf16::from_f32(*v);
        if v.is_nan() {
            assert!(bf16_to_f32(got).is_nan(), "NaN became {got:#06x}");
        } else {
            assert_eq!(got, want.to_bits(), "x = {v:e}");
        }
    }
}

#[test]
fn residual_add_is_the_cpus() {
    let n = 777;
    let mut rng = rng(8);
    let mut acc = uniform(&mut rng, n, -10.0, 10.0);
    let x = uniform(&mut rng, n, -10.0, 10.0);
    let mut want = acc.clone();
    add_in_place(&mut want, &x);
    let mut args = Args::new();
    args.output(&mut acc).input(&x).int(n as i32);
    launch("add_f32", [dim(n.div_ceil(256)), 1, 1], [256, 1, 1], 0, &mut args);
    assert_eq!(bits(&acc), bits(&want));
}

#[test]
fn step_sizes_are_the_cpus_softplus_clamped_below() {
    // 5 tokens x 24 heads: the bias index wraps every row; values across softplus' threshold (20),
    // large negatives (softplus underflows below dt_min) and a NaN (clamped to dt_min, as f32::max).
    let (tokens, heads) = (5usize, 24usize);
    let mut rng = rng(9);
    let mut dt = uniform(&mut rng, tokens * heads, -30.0, 30.0);
    dt[..4].copy_from_slice(&[19.999, 20.0, 20.001, f32::NAN]);
    let bias = uniform(&mut rng, heads, -1.0, 1.0);
    let dt_min = 1e-4f32;
    let want: Vec<f32> = dt
        .iter()
        .enumerate()
        .map(|(i, &v)| softplus(v + bias[i % heads]).max(dt_min))
        .collect();
    let mut args = Args::new();
    args.output(&mut dt)
        .input(&bias)
        .int(heads as i32)
        .int((tokens * heads) as i32)
        .float(dt_min);
    launch("softplus_dt_f32", [1, 1, 1], [64, 1, 1], 0, &mut args);
    assert_eq!(bits(&dt), bits(&want));
}
