//! NVFP4: E2M1 elements in blocks of [`NVFP4_BLOCK`] consecutive values along a row, one E4M3
//! scale per block, one f32 scale per tensor: `value = e2m1 * f32(block_scale) * tensor_scale`.
//! Two elements per byte, element `2i` in the low nibble and `2i + 1` in the high one.
//!
//! The quantiser follows NVIDIA ModelOpt (`NVFP4QTensor`), step by step in f32:
//! 1. `block_scale = block_amax / (6 * tensor_scale)`; a zero scale becomes 1.0; then it is clamped to
//!    `[2^-9, 448]` (ModelOpt's `_cast_per_block_scale_to_fp8`, for weights and activations alike);
//! 2. cast to E4M3, round to nearest even ([`f32_to_e4m3`]);
//! 3. each element `x / (f32(block_scale) * tensor_scale)` is rounded to E2M1
//!    ([`f32_to_e2m1`]: nearest, ties to the even code, saturating at 6).
//!
//! Weights take their tensor scale from [`nvfp4_tensor_scale`] (`amax / (6 * 448)`), which bounds
//! their block scales by 448, so for them the clamp only lifts tiny non-zero blocks to 2^-9 (with
//! zero codes, as ModelOpt 0.47 writes them); activations use a static `input_scale` from
//! calibration, which a block can exceed, and saturate at 448.

use super::e2m1::{e2m1_to_f32, f32_to_e2m1};
use super::e4m3::{E4M3_MAX, e4m3_is_nan, e4m3_to_f32, f32_to_e4m3};
use crate::error::KernelError;

/// Elements per block sharing one E4M3 scale.
pub const NVFP4_BLOCK: usize = 16;

/// The smallest block scale: the smallest E4M3 subnormal.
const BLOCK_SCALE_MIN: f32 = 1.0 / 512.0;

/// ModelOpt's per-tensor weight scale (`weight_scale_2`): `amax / (6 * 448)` in f32, where
/// `amax` is the largest magnitude in the tensor.
pub fn nvfp4_tensor_scale(amax: f32) -> f32 {
    amax / (6.0 * E4M3_MAX)
}

/// Quantises `values` (one or more whole rows; its length a multiple of [`NVFP4_BLOCK`]) to
/// NVFP4 with the given tensor scale, writing `values.len() / 2` packed
/// bytes and `values.len() / 16` E4M3 block scales.
///
/// Fails if the lengths do not fit, if `tensor_scale` is not finite and positive, or if a value
/// is not finite.
pub fn nvfp4_quantize(
    values: &[f32],
    tensor_scale: f32,
    packed: &mut [u8],
    block_scales: &mut [u8],
) -> Result<(), KernelError> {
    const OP: &str = "nvfp4_quantize";
    if !values.len().is_multiple_of(NVFP4_BLOCK) {
        return Err(KernelError::InvalidShape {
            op: OP,
            reason: format!(
                "{} values is not a multiple of the block size {NVFP4_BLOCK}",
                values.len()
            ),
        });
    }
    crate::error::check_len(OP, "packed", packed.len(), values.len() / 2)?;
    crate::error::check_len(OP, "block_scales", block_scales.len(), values.len() / NVFP4_BLOCK)?;
    check_scale(OP, "tensor_scale", tensor_scale)?;
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(KernelError::InvalidValue {
            op: OP,
            what: "values",
            reason: format!("element {at} is {}", values[at]),
        });
    }
    quantize_blocks(values, tensor_scale, packed, block_scales);
    Ok(())
}

/// [`nvfp4_quantize`] without the checks: lengths are whole blocks and match. Non-finite inputs
/// give some codes and never panic (the W4A4 matmul quantises activations with this).
pub(crate) fn quantize_blocks(values: &[f32], tensor_scale: f32, packed: &mut [u8], block_scales: &mut [u8]) {
    for ((block, out), scale) in values
        .chunks_exact(NVFP4_BLOCK)
        .zip(packed.chunks_exact_mut(NVFP4_BLOCK / 2))
        .zip(block_scales.iter_mut())
    {
        *scale = block_scale(block, tensor_scale);
        let divisor = e4m3_to_f32(*scale) * tensor_scale;
        for (byte, pair) in out.iter_mut().zip(block.chunks_exact(2)) {
            *byte = f32_to_e2m1(pair[0] / divisor) | (f32_to_e2m1(pair[1] / divisor) << 4);
        }
    }
}

/// The E4M3 scale of one block (steps 1 and 2 of the module docs).
pub(crate) fn block_scale(block: &[f32], tensor_scale: f32) -> u8 {
    // NaN propagates into the scale (as torch's `amax` does), so that a NaN activation makes
    // its block's scale NaN and the W4A4 outputs it feeds NaN, rather than quietly zero.
    let amax = block
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
    block_scale_of_amax(amax, tensor_scale)
}

/// [`block_scale`] from the block's amax (NaN if the block holds a NaN).
pub(crate) fn block_scale_of_amax(amax: f32, tensor_scale: f32) -> u8 {
    let mut scale = amax / (6.0 * tensor_scale);
    if scale == 0.0 {
        scale = 1.0;
    }
    f32_to_e4m3(scale.clamp(BLOCK_SCALE_MIN, E4M3_MAX))
}

/// Decodes NVFP4 data (`packed.len() * 2` values; `block_scales` one per 16 of them) to f32:
/// `e2m1 * f32(block_scale) * tensor_scale`, the two products rounded in that order (the first
/// is exact).
pub fn nvfp4_decode(packed: &[u8], block_scales: &[u8], tensor_scale: f32, out: &mut [f32]) -> Result<(), KernelError> {
    const OP: &str = "nvfp4_decode";
    crate::error::check_len(OP, "out", out.len(), packed.len() * 2)?;
    crate::error::check_len(OP, "block_scales", block_scales.len() * NVFP4_BLOCK, out.len())?;
    for ((block, bytes), &scale) in out
        .chunks_exact_mut(NVFP4_BLOCK)
        .zip(packed.chunks_exact(NVFP4_BLOCK / 2))
        .zip(block_scales)
    {
        let s = e4m3_to_f32(scale);
        for (pair, &byte) in block.chunks_exact_mut(2).zip(bytes) {
            pair[0] = e2m1_to_f32(byte) * s * tensor_scale;
            pair[1] = e2m1_to_f32(byte >> 4) * s * tensor_scale;
        }
    }
    Ok(())
}

/// Checks that a tensor-level scale is finite and positive.
pub(crate) fn check_scale(op: &'static str, what: &'static str, scale: f32) -> Result<(), KernelError> {
    if scale.is_finite() && scale > 0.0 {
        Ok(())
    } else {
        Err(KernelError::InvalidValue {
            op,
            what,
            reason: format!("{scale} is not a finite positive scale"),
        })
    }
}

/// Checks that E4M3 block scales are not NaN and not negative (zero is allowed: ModelOpt
/// writes it where a block underflows, and the block then decodes to zeros).
pub(crate) fn check_block_scales(op: &'static str, block_scales: &[u8]) -> Result<(), KernelError> {
    match block_scales
        .iter()
        .position(|&s| e4m3_is_nan(s) || (s & 0x80 != 0 && s != 0x80))
    {
        None => Ok(()),
        Some(at) => Err(KernelError::InvalidValue {
            op,
            what: "block_scales",
            reason: format!(
                "block scale {at} is E4M3 {:#04x} ({}): scales must be finite and non-negative",
                block_scales[at],
                e4m3_to_f32(block_scales[at])
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A straightforward transcription of ModelOpt's steps, in f64 where that is exact, to
    /// compare the quantiser with.
    fn reference(values: &[f32], ts: f32) -> (Vec<u8>, Vec<u8>) {
        let mut codes = Vec::new();
        let mut scales = Vec::new();
        for block in values.chunks(16) {
            let amax = block.iter().map(|v| v.abs()).fold(0.0, f32::max);
            let mut s = amax / (6.0f32 * ts);
            if s == 0.0 {
                s = 1.0;
            }
            let sc = f32_to_e4m3(s.clamp(2f32.powi(-9), 448.0));
            scales.push(sc);
            let d = e4m3_to_f32(sc) * ts;
            for &v in block {
                // Nearest E2M1 by distance, ties to the even code; beyond 6 (including the
                // infinities of a block whose scale underflowed to zero), 6.
                let q = v / d;
                let mags = [0.0f32, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
                let mut best = 0usize;
                for (i, &m) in mags.iter().enumerate().filter(|_| q.abs() <= 6.0) {
                    let (dm, db) = ((q.abs() - m).abs(), (q.abs() - mags[best]).abs());
                    if dm < db || (dm == db && i % 2 == 0) {
                        best = i;
                    }
                }
                if q.abs() > 6.0 {
                    best = 7;
                }
                codes.push(best as u8 | if q < 0.0 { 8 } else { 0 });
            }
        }
        let packed = codes.chunks(2).map(|p| p[0] | (p[1] << 4)).collect();
        (packed, scales)
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Blocks of very different magnitudes, some all zero, some with exact ties.
                let v = (s as f32 / u32::MAX as f32) * 2.0 - 1.0;
                match (i / 16) % 5 {
                    0 => v,
                    1 => v * 1e-4,
                    2 => 0.0,
                    3 => (v * 8.0).round() * 0.25,
                    _ => v * 300.0,
                }
            })
            .collect()
    }

    #[test]
    fn quantiser_matches_a_transcription_of_modelopt() {
        let v = values(16 * 60, 7);
        for ts in [nvfp4_tensor_scale(300.0), 0.01, 1e-6] {
            let (mut p, mut s) = (vec![0; v.len() / 2], vec![0; v.len() / 16]);
            nvfp4_quantize(&v, ts, &mut p, &mut s).unwrap();
            let (wp, ws) = reference(&v, ts);
            assert_eq!(s, ws, "ts={ts}");
            assert_eq!(p, wp, "ts={ts}");
        }
    }

    #[test]
    fn block_scales_are_clamped_to_the_e4m3_range() {
        // A block 1000x the calibrated amax (an activation past its input_scale): saturates at 448.
        let ts = nvfp4_tensor_scale(1.0);
        let mut block = [0.0f32; 16];
        block[3] = 1000.0;
        let (mut p, mut s) = ([0u8; 8], [0u8; 1]);
        nvfp4_quantize(&block, ts, &mut p, &mut s).unwrap();
        assert_eq!(s[0], 0x7E);
        assert_eq!(p[1] & 0xF0, 0x70, "saturates at 6");
        // A tiny non-zero block: its scale is lifted to 2^-9 (byte 0x01) with zero codes, as ModelOpt 0.47
        // writes it for weights and activations alike (not an E4M3 zero scale with saturated codes).
        block[3] = 1e-12;
        nvfp4_quantize(&block, ts, &mut p, &mut s).unwrap();
        assert_eq!((s[0], p), (0x01, [0u8; 8]));
        // All zeros: scale 1.0.
        let zeros = [0.0f32; 16];
        nvfp4_quantize(&zeros, ts, &mut p, &mut s).unwrap();
        assert_eq!((e4m3_to_f32(s[0]), p), (1.0, [0u8; 8]));
    }

    #[test]
    fn decode_inverts_exactly_representable_values() {
        // Every E2M1 value times a block scale that fits: quantise then decode is the identity.
        let ts = 0.5f32;
        let v: Vec<f32> = (0..32).map(|i| e2m1_to_f32(i as u8 % 16) * 3.0 * 0.5).collect();
        let (mut p, mut s) = (vec![0; 16], vec![0; 2]);
        nvfp4_quantize(&v, ts, &mut p, &mut s).unwrap();
        assert_eq!(s.iter().map(|&c| e4m3_to_f32(c)).collect::<Vec<_>>(), [3.0; 2]);
        let mut out = vec![0.0; 32];
        nvfp4_decode(&p, &s, ts, &mut out).unwrap();
        assert_eq!(out, v);
    }

    #[test]
    fn bad_arguments_are_errors() {
        let v = [1.0f32; 32];
        let (mut p, mut s) = (vec![0; 16], vec![0; 2]);
        assert!(nvfp4_quantize(&v[..31], 1.0, &mut p, &mut s).is_err());
        assert!(nvfp4_quantize(&v, 1.0, &mut p[..15], &mut s).is_err());
        assert!(nvfp4_quantize(&v, 1.0, &mut p, &mut s[..1]).is_err());
        for ts in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            assert!(nvfp4_quantize(&v, ts, &mut p, &mut s).is_err(), "{ts}");
        }
        let mut bad = v;
        bad[5] = f32::NAN;
        let err = nvfp4_quantize(&bad, 1.0, &mut p, &mut s).unwrap_err();
        assert!(err.to_string().contains("element 5"), "{err}");
        assert!(check_block_scales("t", &[0x00, 0x38, 0x80]).is_ok());
        assert!(check_block_scales("t", &[0x38, 0x7F]).is_err());
        assert!(check_block_scales("t", &[0xB8]).is_err());
    }
}
