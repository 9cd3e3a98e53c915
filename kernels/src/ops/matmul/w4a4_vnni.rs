//! W4A4 on AVX-512 VNNI: the block dot products of `w4a4.rs` in 8-bit integers.
//!
//! Twice an E2M1 value is an integer in [-12, 12], so a block's dot product
//! `sum_t xe[t] * we[t]` is a quarter of `sum_t (2 xe[t]) (2 we[t])`, an integer below 2^12 that
//! `vpdpbusd` (64 byte products summed into 16 i32 lanes per instruction, twice the multiplies of
//! an f32 FMA) computes exactly. `vpdpbusd` wants one unsigned operand, so the weights are looked
//! up as `2 we + 12` (0..=24) and the excess `12 sum_t 2 xe[t]`, known per row and block from the
//! quantised activations, starts each sum negated. Then, exactly as in `w4a4.rs`:
//! `acc = fma(dot, xs * ws, acc)` with `dot * (xs * ws)` computed as `(4 dot) * (xs / 4 * ws)`,
//! the same exact product (`xs / 4 * ws` has at most 8 significant bits and stays normal), so each
//! step rounds once, as before, and the results are bitwise those of the portable W4A4 tile.
//!
//! Operand layout: a chunk of a block record (`nvfp4::nibble_byte`) holds, in 32-bit lane `c`,
//! the bytes of pairs 0..3 of column `c`: its low nibbles are k-steps 0, 2, 4, 6 and its high
//! nibbles 1, 3, 5, 7 of the chunk. One `vpshufb` per nibble half turns them into four weights per
//! lane, and each row's activations are arranged to match ([`RowBlock::even_odd`]): the
//! products pair up without moving a weight.

use std::arch::x86_64::*;

use super::avx512::{Nvfp4Vectors, store};
use super::cpu::{PREFETCH_BYTES, PREFETCH_L2_BYTES, Tile};
use super::nvfp4::chunk_at;
use super::packed::NVFP4_RECORD;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Rows per tile (the register tile is at most 6 rows x 2 vectors, or fewer rows x wider).
pub(super) const MR: usize = 6;

/// `2 * e2m1 + 12` for each E2M1 code: the weights as `vpshufb` looks them up (unsigned).
const WEIGHT_PLUS_12: [i8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

/// `2 * e2m1` for each E2M1 code: the activations as `vpdpbusd` multiplies them (signed).
pub(super) const TWICE_E2M1: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// One row's quantised activations for one block, as the kernel broadcasts them.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct RowBlock {
    /// `2 xe` of the block's k-steps in the lane order of a chunk: [k 0, 2, 4, 6], [1, 3, 5, 7],
    /// [8, 10, 12, 14], [9, 11, 13, 15], four bytes per i32.
    pub(super) even_odd: [i32; 4],
    /// `-12 * sum_t 2 xe[t]`: where each lane's sum starts.
    pub(super) start: i32,
    /// The activation block scale divided by 4.
    pub(super) quarter_scale: f32,
}

impl RowBlock {
    /// The record of one block: its 8 bytes of E2M1 codes (element `2i` in the low nibble of
    /// byte `i`) and the f32 value of its E4M3 scale.
    pub(super) fn new(codes: &[u8], scale: f32) -> RowBlock {
        let twice = |t: usize| TWICE_E2M1[usize::from((codes[t / 2] >> (4 * (t % 2))) & 0xF)];
        let lane = |first: usize| i32::from_le_bytes(std::array::from_fn(|i| twice(first + 2 * i) as u8));
        let sum: i32 = (0..NVFP4_BLOCK).map(|t| i32::from(twice(t))).sum();
        RowBlock {
            even_odd: [lane(0), lane(1), lane(8), lane(9)],
            start: -12 * sum,
            quarter_scale: scale * 0.25,
        }
    }
}

/// Whether this CPU runs this path.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// `rows` (1..=[`MR`]) rows of quantised activations (`xq`: `[kc / 16][rows]` records) against
/// `panels` NVFP4 panels (`t.w`, `t.panel_stride` bytes apart); `t.scale` is
/// `input_scale * tensor_scale`. `t.x` is unused.
///
/// # Safety
/// [`available`] returned true; the pointers are valid as described (and on `Tile`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn tile(rows: usize, panels: usize, t: &Tile<u8>, xq: *const RowBlock) {
    let mut t = *t;
    let mut left = panels;
    while left > 0 {
        let p = match rows {
            1 if left >= 4 => 4,
            1..=3 if left >= 2 => 2,
            _ => 1,
        };
        // SAFETY: forwarded from the caller.
        unsafe {
            match (rows, p) {
                (1, 4) => kernel::<1, 8>(&t, xq),
                (1, 2) => kernel::<1, 4>(&t, xq),
                (2, 2) => kernel::<2, 4>(&t, xq),
                (3, 2) => kernel::<3, 4>(&t, xq),
                (1, _) => kernel::<1, 2>(&t, xq),
                (2, _) => kernel::<2, 2>(&t, xq),
                (3, _) => kernel::<3, 2>(&t, xq),
                (4, _) => kernel::<4, 2>(&t, xq),
                (5, _) => kernel::<5, 2>(&t, xq),
                (6, _) => kernel::<6, 2>(&t, xq),
                _ => unreachable!("W4A4 VNNI tiles have at most {MR} rows, got {rows}"),
            }
        }
        left -= p;
        t.advance(p);
    }
}

/// One chunk's 128 weights as `2 we + 12` bytes: (k-steps 0, 2, 4, 6 per lane, k-steps 1, 3,
/// 5, 7).
///
/// # Safety
/// 64 bytes are readable at `p`.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn decode_chunk(p: *const u8, table: __m512i) -> (__m512i, __m512i) {
    let nibble = _mm512_set1_epi8(0x0F);
    // SAFETY: per the caller.
    let bytes = unsafe { _mm512_loadu_si512(p.cast()) };
    let low = _mm512_and_si512(bytes, nibble);
    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(bytes), nibble);
    (_mm512_shuffle_epi8(table, low), _mm512_shuffle_epi8(table, high))
}

/// `R` rows x `V` vectors of 16 columns: per block, the integer dot products, then
/// `acc = fma(dot, xs * ws, acc)`; then the common epilogue.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn kernel<const R: usize, const V: usize>(t: &Tile<u8>, xq: *const RowBlock) {
    let vectors = Nvfp4Vectors::<V>::new(t.w, t.panel_stride, 0);
    // SAFETY: the table has 16 bytes.
    let table = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(WEIGHT_PLUS_12.as_ptr().cast()) });
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the caller: xq holds kc / 16 * R records, each panel kc / 16 block records;
    // every chunk read is inside its record; prefetches may point anywhere.
    unsafe {
        for b in 0..t.kc / NVFP4_BLOCK {
            let record = b * NVFP4_RECORD;
            let xb = xq.add(b * R);
            for v in 0..V {
                if v == 0 || vectors.half[v] == 0 {
                    for line in (0..NVFP4_RECORD).step_by(64) {
                        let at = vectors.panel[v].wrapping_add(record + line);
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES).cast());
                        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(PREFETCH_L2_BYTES).cast());
                    }
                }
            }
            for v in 0..V {
                let chunk = |quad| vectors.panel[v].add(record + chunk_at(quad, vectors.half[v]));
                let (even0, odd0) = decode_chunk(chunk(0), table);
                let (even1, odd1) = decode_chunk(chunk(1), table);
                let ws = vectors.scales(v, record);
                for r in 0..R {
                    let x = &*xb.add(r);
                    let mut dot = _mm512_set1_epi32(x.start);
                    dot = _mm512_dpbusd_epi32(dot, even0, _mm512_set1_epi32(x.even_odd[0]));
                    dot = _mm512_dpbusd_epi32(dot, odd0, _mm512_set1_epi32(x.even_odd[1]));
                    dot = _mm512_dpbusd_epi32(dot, even1, _mm512_set1_epi32(x.even_odd[2]));
                    dot = _mm512_dpbusd_epi32(dot, odd1, _mm512_set1_epi32(x.even_odd[3]));
                    let scale = _mm512_mul_ps(_mm512_set1_ps(x.quarter_scale), ws);
                    acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[r][v]);
                }
            }
        }
        store(&acc, t);
    }
}
