//! NVFP4 weights for the float kernels (W4A16): block records decoded to f32 panels.
//!
//! Each weight is decoded to `e2m1 * f32(block_scale)`, which is exact in f32 (2 significant
//! bits times 4), so the kernels run the same FMA chain as on f32 weights holding those
//! values; the tensor scale multiplies each output once its sum is complete (`Tile::scale`).
//! The result is thus `tensor_scale * (x · decoded)` with the f32 rounding of one FMA chain,
//! within f32 rounding of an f32 matmul on the fully decoded weights.
//!
//! A task decodes only its own group of panels, into a per-thread buffer sized to stay in L2;
//! the whole dequantised matrix never exists.

use super::cpu::Tile;
use super::packed::{NR, NVFP4_RECORD};
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::e4m3::e4m3_to_f32;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Bytes of nibbles in a block record, before its scales.
pub(super) const SCALES_AT: usize = NVFP4_BLOCK / 2 * NR;

/// Decodes one panel of `k` k-steps (portable code; the reference for the SIMD decoders).
///
/// # Safety
/// `src` holds `k / 16` block records; `dst` is valid for `k * NR` writes.
pub(super) unsafe fn decode_panel(src: *const u8, k: usize, dst: *mut f32) {
    // SAFETY: per the caller, the panel is k / 16 records of NVFP4_RECORD bytes and dst holds
    // k * NR f32.
    let (panel, out) = unsafe {
        (
            std::slice::from_raw_parts(src, k / NVFP4_BLOCK * NVFP4_RECORD),
            std::slice::from_raw_parts_mut(dst, k * NR),
        )
    };
    for (record, out) in panel
        .chunks_exact(NVFP4_RECORD)
        .zip(out.chunks_exact_mut(NVFP4_BLOCK * NR))
    {
        let scales = &record[SCALES_AT..];
        for (line, pair) in record[..SCALES_AT].chunks_exact(NR).zip(out.chunks_exact_mut(2 * NR)) {
            let (even, odd) = pair.split_at_mut(NR);
            for c in 0..NR {
                let s = e4m3_to_f32(scales[c]);
                even[c] = E2M1_VALUES[usize::from(line[c] & 0xF)] * s;
                odd[c] = E2M1_VALUES[usize::from(line[c] >> 4)] * s;
            }
        }
    }
}

/// The portable `Isa::tile_nvfp4`: each output's FMA chain over k, weights decoded on the fly.
///
/// # Safety
/// As for `Isa::tile` (see `Tile`), with the panels as block records `t.panel_stride` bytes
/// apart.
pub(super) unsafe fn tile_portable(rows: usize, panels: usize, t: &Tile<u8>) {
    for q in 0..panels {
        let c0 = q * NR;
        let cols = t.cols.saturating_sub(c0).min(NR);
        // SAFETY: per the contract, panel q holds kc / 16 records; x, y and bias are valid for
        // the rows and the first `cols` columns accessed here.
        unsafe {
            let panel = std::slice::from_raw_parts(t.w.add(q * t.panel_stride), t.kc / NVFP4_BLOCK * NVFP4_RECORD);
            for r in 0..rows {
                for c in 0..cols {
                    let mut acc = 0.0f32;
                    for (b, record) in panel.chunks_exact(NVFP4_RECORD).enumerate() {
                        let s = e4m3_to_f32(record[SCALES_AT + c]);
                        for (i, &byte) in record[..SCALES_AT].iter().skip(c).step_by(NR).enumerate() {
                            let kk = b * NVFP4_BLOCK + 2 * i;
                            let (even, odd) = (
                                E2M1_VALUES[usize::from(byte & 0xF)],
                                E2M1_VALUES[usize::from(byte >> 4)],
                            );
                            acc = (*t.x.add(kk * t.x_stride + r)).mul_add(even * s, acc);
                            acc = (*t.x.add((kk + 1) * t.x_stride + r)).mul_add(odd * s, acc);
                        }
                    }
                    let v = acc * t.scale;
                    *t.y.add(r * t.ldy + c0 + c) = if t.bias.is_null() { v } else { v + *t.bias.add(c0 + c) };
                }
            }
        }
    }
}
