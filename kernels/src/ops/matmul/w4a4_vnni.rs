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

use super::avx512::{Nvfp4Vectors, for_each_nvfp4_call, store};
use super::cpu::Tile;
use super::nvfp4::chunk_at;
use super::packed::NVFP4_RECORD;
use crate::quant::e4m3::e4m3_to_f32;
use crate::quant::nvfp4::{NVFP4_BLOCK, block_scale_of_amax};

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

/// Quantises one row of activations (`row.len()` a multiple of 16) with the layer's input scale
/// into one record per block: bitwise the records of `quantize_blocks`' codes (see the test)
/// (the same f32 division per element, the same nearest-even E2M1 rounding as compares against the
/// midpoints), 16 elements per vector instead of one at a time.
///
/// # Safety
/// [`available`] returned true; `out` holds `row.len() / 16` records.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantise_row(row: &[f32], input_scale: f32, out: &mut [RowBlock]) {
    // Midpoints between neighbouring E2M1 magnitudes; at 0.75, 1.75 and 3.5 a tie goes up, to
    // the even code (see `quant::e2m1::f32_to_e2m1`).
    const MIDPOINTS: [f32; 7] = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
    const TIES_UP: [f32; 3] = [0.75, 1.75, 3.5];
    let twice: [i32; 16] = std::array::from_fn(|c| i32::from(TWICE_E2M1[c]));
    // SAFETY: 16 i32 / 16 lane indices.
    let (twice, chunk_order) = unsafe {
        (
            _mm512_loadu_si512(twice.as_ptr().cast()),
            _mm512_loadu_si512(
                [0i32, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]
                    .as_ptr()
                    .cast(),
            ),
        )
    };
    let one = _mm512_set1_epi32(1);
    for (block, record) in row.chunks_exact(NVFP4_BLOCK).zip(out) {
        // SAFETY: a block is 16 f32.
        let x = unsafe { _mm512_loadu_ps(block.as_ptr()) };
        let magnitude = _mm512_abs_ps(x);
        let has_nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x) != 0;
        let amax = if has_nan {
            f32::NAN
        } else {
            _mm512_reduce_max_ps(magnitude)
        };
        let scale_code = block_scale_of_amax(amax, input_scale);
        let scale = e4m3_to_f32(scale_code);
        let q = _mm512_div_ps(x, _mm512_set1_ps(scale * input_scale));
        let a = _mm512_abs_ps(q);
        let mut code = _mm512_setzero_si512();
        for m in MIDPOINTS {
            let above = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_set1_ps(m), a);
            code = _mm512_mask_add_epi32(code, above, code, one);
        }
        for m in TIES_UP {
            let tie = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a, _mm512_set1_ps(m));
            code = _mm512_mask_add_epi32(code, tie, code, one);
        }
        let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(q, _mm512_setzero_ps());
        code = _mm512_mask_or_epi32(code, negative, code, _mm512_set1_epi32(8));
        let values = _mm512_permutexvar_epi32(code, twice);
        let lanes = _mm512_cvtepi32_epi8(_mm512_permutexvar_epi32(chunk_order, values));
        let mut even_odd = [0i32; 4];
        // SAFETY: 16 bytes into 16 bytes.
        unsafe { _mm_storeu_si128(even_odd.as_mut_ptr().cast(), lanes) };
        *record = RowBlock {
            even_odd,
            start: -12 * _mm512_reduce_add_epi32(values),
            quarter_scale: scale * 0.25,
        };
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
    for_each_nvfp4_call(rows, panels, t, |t, p| {
        // SAFETY: forwarded from the caller.
        unsafe {
            match (rows, p) {
                (1, 4) => kernel::<1, 8>(t, xq),
                (1, 2) => kernel::<1, 4>(t, xq),
                (2, 2) => kernel::<2, 4>(t, xq),
                (3, 2) => kernel::<3, 4>(t, xq),
                (1, _) => kernel::<1, 2>(t, xq),
                (2, _) => kernel::<2, 2>(t, xq),
                (3, _) => kernel::<3, 2>(t, xq),
                (4, _) => kernel::<4, 2>(t, xq),
                (5, _) => kernel::<5, 2>(t, xq),
                (6, _) => kernel::<6, 2>(t, xq),
                _ => unreachable!("W4A4 VNNI tiles have at most {MR} rows, got {rows}"),
            }
        }
    });
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
    vectors.prefetch_start();
    // SAFETY: the table has 16 bytes.
    let table = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(WEIGHT_PLUS_12.as_ptr().cast()) });
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the caller: xq holds kc / 16 * R records, each panel kc / 16 block records;
    // every chunk read is inside its record.
    unsafe {
        for b in 0..t.kc / NVFP4_BLOCK {
            let record = b * NVFP4_RECORD;
            let xb = xq.add(b * R);
            vectors.prefetch(record);
            for v in 0..V {
                // One chunk (two registers of weights) at a time, every row's integer sum kept
                // in a register across the two: few enough live registers for 6 rows.
                let mut dots: [__m512i; R] = std::array::from_fn(|r| _mm512_set1_epi32((*xb.add(r)).start));
                for quad in 0..2 {
                    let chunk = vectors.panel[v].add(record + chunk_at(quad, vectors.half[v]));
                    let (even, odd) = decode_chunk(chunk, table);
                    for r in 0..R {
                        let x = &*xb.add(r);
                        dots[r] = _mm512_dpbusd_epi32(dots[r], even, _mm512_set1_epi32(x.even_odd[2 * quad]));
                        dots[r] = _mm512_dpbusd_epi32(dots[r], odd, _mm512_set1_epi32(x.even_odd[2 * quad + 1]));
                    }
                }
                let ws = vectors.scales(v, record);
                for r in 0..R {
                    let scale = _mm512_mul_ps(_mm512_set1_ps((*xb.add(r)).quarter_scale), ws);
                    acc[r][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[r]), scale, acc[r][v]);
                }
            }
        }
        store(&acc, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::nvfp4::quantize_blocks;

    /// The record of one block from the scalar quantiser's output: its 8 bytes of E2M1 codes
    /// (element `2i` in the low nibble of byte `i`) and the f32 value of its E4M3 scale.
    fn record(codes: &[u8], scale: f32) -> RowBlock {
        let twice = |t: usize| TWICE_E2M1[usize::from((codes[t / 2] >> (4 * (t % 2))) & 0xF)];
        let lane = |first: usize| i32::from_le_bytes(std::array::from_fn(|i| twice(first + 2 * i) as u8));
        let sum: i32 = (0..NVFP4_BLOCK).map(|t| i32::from(twice(t))).sum();
        RowBlock {
            even_odd: [lane(0), lane(1), lane(8), lane(9)],
            start: -12 * sum,
            quarter_scale: scale * 0.25,
        }
    }

    /// The vector quantiser against the scalar one (`quantize_blocks`, the reference of the
    /// portable path) on blocks that hit every rounding case: exact midpoints and ties, zeros of
    /// both signs, saturation past 6 and past the E4M3 range, tiny blocks, NaN and infinities.
    #[test]
    fn quantise_row_is_bitwise_the_scalar_quantiser() {
        if !available() {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        // With input scale 1/64, a block whose largest magnitude is 3 gets the E4M3 scale 32 and
        // the divisor 1/2 exactly, so `x = e / 2` lands on `e` in E2M1 units: every midpoint, tie
        // and neighbour below is hit exactly.
        let input_scale = 1.0f32 / 64.0;
        let mut special = Vec::new();
        for e in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.0] {
            for d in [-1e-6f32, 0.0, 1e-6] {
                special.push((e + d) / 2.0);
                special.push(-(e + d) / 2.0);
            }
        }
        special.push(-0.0);
        let mut row: Vec<f32> = Vec::new();
        for chunk in special.chunks(15) {
            row.push(3.0);
            row.extend_from_slice(chunk);
            row.resize(row.len().next_multiple_of(16), 0.0);
        }
        let mut seed = 0x2545_f491_u32;
        for i in 0..16 * 200 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let v = (seed as f32 / u32::MAX as f32 - 0.5) * [1.0, 1e-6, 30.0, 1e4][i / 16 % 4];
            row.push(v);
        }
        row.extend([f32::NAN, 1.0, f32::INFINITY, -2.0].iter().cycle().take(16));
        row.extend([f32::NEG_INFINITY; 16]);
        let blocks = row.len() / 16;
        let mut want = vec![RowBlock::default(); blocks];
        let (mut codes, mut scales) = (vec![0u8; row.len() / 2], vec![0u8; blocks]);
        quantize_blocks(&row, input_scale, &mut codes, &mut scales);
        for (b, w) in want.iter_mut().enumerate() {
            *w = record(&codes[b * 8..(b + 1) * 8], e4m3_to_f32(scales[b]));
        }
        let mut got = vec![RowBlock::default(); blocks];
        // SAFETY: available() checked above; `got` holds one record per block.
        unsafe { quantise_row(&row, input_scale, &mut got) };
        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                (g.even_odd, g.start, g.quarter_scale.to_bits()),
                (w.even_odd, w.start, w.quarter_scale.to_bits()),
                "block {b}: {:?}",
                &row[b * 16..(b + 1) * 16]
            );
        }
    }
}
