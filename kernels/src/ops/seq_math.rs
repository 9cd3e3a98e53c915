//! Vector-friendly scalar math for the sequence ops: run-time instruction-set dispatch, `exp`,
//! `silu` and lane-wise reductions.
//!
//! Everything here is plain Rust written so that LLVM vectorises it when it is inlined into a
//! function compiled for AVX-512 or AVX2 (see [`simd_fn!`]). No function reorders floating-point
//! operations by vector width: lane `l` of a reduction always holds the elements with index
//! `l mod 16` of its slice, and lanes are combined in one fixed tree. So a result depends only on the data
//! of its slice, never on where the slice sits in a batch, which keeps the ops batch-invariant.

/// Elements per vector group in the reductions (one AVX-512 register of `f32`).
pub(crate) const LANES: usize = 16;

/// Whether the CPU runs the AVX-512 clone of [`simd_fn!`] functions.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx512() -> bool {
    // std caches the detection; each check is an atomic load.
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
}

/// Whether the CPU runs the AVX2 clone of [`simd_fn!`] functions.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Defines a function whose body is compiled three times (AVX-512, AVX2 + FMA, baseline) and picks
/// the best clone for the running CPU on every call.
///
/// The body and everything it calls that is `#[inline(always)]` get inlined into each clone, so the
/// vectoriser sees the wider registers. The clones compute bit-identical results: the code avoids
/// any reassociation, and `f32::mul_add` is a correctly rounded fused multiply-add everywhere (an
/// instruction with FMA, a libm call without). Arguments must be plain `name: Type` pairs.
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body

            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if $crate::ops::seq_math::has_avx512() {
                    // SAFETY: `avx512` needs exactly the features `has_avx512` just detected.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::ops::seq_math::has_avx2() {
                    // SAFETY: `avx2` needs exactly the features `has_avx2` just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// `e^x` to about 2 ulp, branch-free so that loops over it vectorise.
///
/// libm's `expf` is a call LLVM cannot vectorise; this is the Cephes polynomial with the argument
/// reduced by `ln 2`. It returns 0 below -104 (where `e^x` rounds to 0), infinity above the `f32`
/// range and NaN for NaN. Subnormal results are exact to rounding because `2^n` is applied in two
/// halves that are each a normal number.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits.
    const LN2_HI: f32 = 0.693_359_4; // ln 2 split so that n * LN2_HI is exact for |n| <= 256.
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Comparisons rather than `clamp`: NaN fails both and flows on to a NaN result.
    let xc = if x < -104.0 { -104.0 } else { x };
    let xc = if xc > 88.8 { 88.8 } else { xc };
    let t = xc.mul_add(std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = n.mul_add(-LN2_HI, xc);
    let r = n.mul_add(-LN2_LO, r);
    let mut p: f32 = 1.987_569_1e-4;
    p = p.mul_add(r, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // n as an integer in [-150, 128]: the low mantissa bits of t. Split so both halves are normal.
    let ni = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) as u32) << 23);
    let s2 = f32::from_bits((n2.wrapping_add(127) as u32) << 23);
    let e = y * s1 * s2;
    if x < -104.0 { 0.0 } else { e }
}

/// `x * sigmoid(x)`, as `x / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Combines the 16 lanes in one fixed tree: (l, l + 8), then (l, l + 4), (l, l + 2), (l, l + 1).
#[inline(always)]
fn tree(mut acc: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] = op(acc[l], acc[l + width]);
        }
        width /= 2;
    }
    acc[0]
}

/// Largest element of `x` (NaNs are skipped); `-inf` for an empty slice.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let pick = |a: f32, b: f32| if b > a { b } else { a };
    let mut acc = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = x.as_chunks::<LANES>();
    for chunk in chunks {
        for l in 0..LANES {
            acc[l] = pick(acc[l], chunk[l]);
        }
    }
    // The tail as one padded vector (`-inf` never wins) rather than a scalar loop.
    let mut tail = [f32::NEG_INFINITY; LANES];
    tail[..rest.len()].copy_from_slice(rest);
    for l in 0..LANES {
        acc[l] = pick(acc[l], tail[l]);
    }
    tree(acc, pick)
}

/// Replaces each `x[j]` by `e^(x[j] * scale + shift)` and returns the sum of the new values.
#[inline(always)]
pub(crate) fn exp_in_place_sum(x: &mut [f32], scale: f32, shift: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (chunks, rest) = x.as_chunks_mut::<LANES>();
    for chunk in chunks {
        for l in 0..LANES {
            chunk[l] = exp(chunk[l].mul_add(scale, shift));
            acc[l] += chunk[l];
        }
    }
    // The tail as one padded vector rather than a scalar loop of `exp`. Padding lanes add +0 to
    // sums of positive terms (which start at +0), so the sum's bits are as if they were skipped.
    let len = rest.len();
    let mut tail = [0.0f32; LANES];
    tail[..len].copy_from_slice(rest);
    for l in 0..LANES {
        let e = exp(tail[l].mul_add(scale, shift));
        tail[l] = e;
        acc[l] += if l < len { e } else { 0.0 };
    }
    rest.copy_from_slice(&tail[..len]);
    tree(acc, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        if a == b32 {
            return 0.0;
        }
        ((a as f64 - b) / (b32.abs() as f64 * f32::EPSILON as f64)).abs()
    }

    #[test]
    fn exp_is_accurate_over_the_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.001_37;
        }
        assert!(worst < 2.5, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        // Subnormal results.
        let sub = exp(-90.0);
        assert!(((sub as f64) / (-90f64).exp() - 1.0).abs() < 1e-5);
        let tiny = exp(-100.0) as f64;
        assert!((tiny - (-100f64).exp()).abs() <= f32::from_bits(1) as f64);
        assert!(exp(88.72) < f32::INFINITY);
    }

    #[test]
    fn silu_matches_f64() {
        for &v in &[-30.0f32, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.7, 2.0, 15.0, 90.0] {
            let want = v as f64 / (1.0 + (-(v as f64)).exp());
            assert!((silu(v) as f64 - want).abs() <= 1e-6 * want.abs().max(1e-30), "{v}");
        }
    }

    #[test]
    fn reductions() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        assert_eq!(max(&x), 7.0);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let mut y = x.clone();
        let s = exp_in_place_sum(&mut y, 0.5, -1.0);
        let want: f64 = x.iter().map(|&v| (v as f64 * 0.5 - 1.0).exp()).sum();
        assert!((s as f64 / want - 1.0).abs() < 1e-6);
    }
}
