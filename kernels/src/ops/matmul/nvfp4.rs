//! NVFP4 weights with f32 activations (W4A16): the order of operations, and its portable kernel.
//!
//! The micro-kernels read the block records of `packed.rs` (their byte order is defined here,
//! [`nibble_byte`]) and decode the nibbles where they use them (on AVX-512 one `vpermps` over the
//! 16 E2M1 values per 16 weights); no decoded copy of the weights exists, not even of a panel.
//! Every output element is, in this order:
//! 1. per block of 16 k-steps, `dot = fma(x[kk], e2m1[kk], dot)` from `+0.0`, kk increasing;
//! 2. `acc = fma(dot, f32(block_scale), acc)` from `+0.0`, blocks increasing;
//! 3. `y = acc * tensor_scale`, then `+ bias` (`Tile::scale`).
//!
//! Scaling per block rather than per weight saves one multiply per 16 weights and vector, the
//! largest part of the decoding cost at batch 1 (where the GEMV is bound by the decoding, not by
//! memory). Every product and sum is an f32 operation on exact inputs (`e2m1 * block_scale` is
//! exact), so the result is within f32 rounding of an f32 matmul on the decoded weights; the
//! sequence is the same on every ISA and for every tile shape, which keeps rows bitwise batch-
//! and thread-invariant and the ISA paths bitwise equal.

use super::cpu::Tile;
use super::packed::{NR, NVFP4_RECORD};
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::e4m3::e4m3_to_f32;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Bytes of nibbles in a block record, before its scales.
pub(super) const SCALES_AT: usize = NVFP4_BLOCK / 2 * NR;

/// Bytes of one chunk of a block record: 4 k-step pairs of 16 columns.
pub(super) const CHUNK: usize = 64;

/// Where a block record keeps the byte of column `c` (`< NR`) for k-steps `2 pair` (low nibble)
/// and `2 pair + 1` (high nibble) of its block (`pair < 8`).
///
/// The nibbles sit in four 64-byte chunks, one per (half of the k-steps, half of the columns):
/// chunk [`chunk_at`]`(pair / 4, c / 16)`, byte `4 (c % 16) + pair % 4`. So the 32-bit lane `c`
/// of the 64 bytes read `j` bytes into a chunk has, as its lowest byte, pair `j` of column `c`:
/// a SIMD kernel reads four overlapping vectors per chunk and never shifts a nibble into place
/// other than the high one (one shift per 16 weights fewer than bytes widened to lanes, which is
/// what bounds the decoding at batch 1). The last chunk's reads end 3 bytes into the scales, so
/// every read stays inside the record.
pub(super) const fn nibble_byte(c: usize, pair: usize) -> usize {
    chunk_at(pair / 4, c / 16) + 4 * (c % 16) + pair % 4
}

/// Offset in a block record of the chunk of pairs `4 quad .. 4 quad + 4` of columns
/// `16 half .. 16 half + 16`.
pub(super) const fn chunk_at(quad: usize, half: usize) -> usize {
    (2 * quad + half) * CHUNK
}

/// The portable `Isa::tile_nvfp4`, the reference for the SIMD kernels: per output, per block,
/// an FMA chain of x times the E2M1 values, then `acc = fma(dot, block_scale, acc)`.
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
                let x = |kk: usize| *t.x.add(kk * t.x_stride + r);
                for c in 0..cols {
                    let mut acc = 0.0f32;
                    for (b, record) in panel.chunks_exact(NVFP4_RECORD).enumerate() {
                        let mut dot = 0.0f32;
                        for i in 0..NVFP4_BLOCK / 2 {
                            let byte = record[nibble_byte(c, i)];
                            let kk = b * NVFP4_BLOCK + 2 * i;
                            dot = x(kk).mul_add(E2M1_VALUES[usize::from(byte & 0xF)], dot);
                            dot = x(kk + 1).mul_add(E2M1_VALUES[usize::from(byte >> 4)], dot);
                        }
                        acc = dot.mul_add(e4m3_to_f32(record[SCALES_AT + c]), acc);
                    }
                    let v = acc * t.scale;
                    *t.y.add(r * t.ldy + c0 + c) = if t.bias.is_null() { v } else { v + *t.bias.add(c0 + c) };
                }
            }
        }
    }
}
