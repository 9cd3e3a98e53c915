//! AVX2 + FMA + F16C micro-kernels: 6 rows x 16 columns for the blocked path (12 ymm
//! accumulators of the 16 registers), wider and shorter shapes for 1..3 rows.
//!
//! The FMA chains are the same as on the AVX-512 path (a lane is one output element, k runs in
//! order), so both paths give the same bits.

use std::arch::x86_64::*;

use super::cpu::{E4m3, Isa, PREFETCH_BYTES, PREFETCH_L2_BYTES, Tile, Weight};
use super::nvfp4::{SCALES_AT, chunk_at};
use super::packed::{NR, NVFP4_RECORD};
use crate::dtype::WeightDType;
use crate::quant::e2m1::E2M1_VALUES;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// Lanes per vector.
const L: usize = 8;

/// The AVX2 code path.
pub(super) struct Avx2;

impl Isa for Avx2 {
    const MR: usize = 6;

    unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
        // SAFETY: forwarded from the caller (ISA available, pointers valid).
        unsafe { tile::<W>(rows, panels, t) }
    }

    unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
        // SAFETY: forwarded from the caller.
        unsafe { widen::<W>(src, len, dst) }
    }

    unsafe fn tile_nvfp4(rows: usize, panels: usize, t: &Tile<u8>) {
        // SAFETY: forwarded from the caller (ISA available, pointers valid).
        unsafe { tile_nvfp4(rows, panels, t) }
    }
}

/// Loads 8 weights and widens them to f32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load<W: Weight>(p: *const W) -> __m256 {
    // SAFETY: the caller guarantees 8 readable elements at p; loads are unaligned-safe.
    unsafe {
        match W::DTYPE {
            WeightDType::F32 => _mm256_loadu_ps(p.cast()),
            WeightDType::BF16 => {
                let h = _mm_loadu_si128(p.cast());
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            }
            WeightDType::F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
            WeightDType::F8E4M3 => {
                // As on AVX-512: E4M3 through f16 (see `avx512::load`).
                let h = _mm_slli_epi16::<7>(_mm_cvtepi8_epi16(_mm_loadl_epi64(p.cast())));
                let h = _mm_and_si128(h, _mm_set1_epi16(0xBFFFu16 as i16));
                _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0))
            }
            WeightDType::NVFP4 => unreachable!("NVFP4 panels are decoded before the kernels"),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
    for i in (0..len).step_by(L) {
        // SAFETY: i + 8 <= len (len is a multiple of 32); both buffers hold len elements.
        unsafe { _mm256_storeu_ps(dst.add(i), load(src.add(i))) };
    }
}

/// Splits a call into register-sized kernels: one row takes two panels (8 chains), two or three
/// rows one panel, four to six rows half a panel at a time.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
    let mut t = *t;
    let mut left = panels;
    while left > 0 {
        let p = if rows == 1 && left >= 2 { 2 } else { 1 };
        // SAFETY: forwarded from the caller; each half-panel view stays inside the panel.
        unsafe {
            match (rows, p) {
                (1, 2) => kernel::<W, 1, 8>(&t),
                (1, _) => kernel::<W, 1, 4>(&t),
                (2, _) => kernel::<W, 2, 4>(&t),
                (3, _) => kernel::<W, 3, 4>(&t),
                _ => {
                    for half in 0..2 {
                        let h = t.at_column(half * 2 * L);
                        match rows {
                            4 => kernel::<W, 4, 2>(&h),
                            5 => kernel::<W, 5, 2>(&h),
                            6 => kernel::<W, 6, 2>(&h),
                            _ => unreachable!("AVX2 tiles have at most 6 rows, got {rows}"),
                        }
                    }
                }
            }
        }
        left -= p;
        t.advance(p);
    }
}

/// Lane mask (all bits set = enabled) for vector `v` within the first `cols` columns, and the
/// number of enabled lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn lane_mask(cols: usize, v: usize) -> (__m256i, usize) {
    let valid = cols.saturating_sub(v * L).min(L);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    (_mm256_cmpgt_epi32(_mm256_set1_epi32(valid as i32), lanes), valid)
}

/// `R` rows x `V` vectors of 8 columns, the vectors running on across panels (4 per panel).
// Index loops over the register tile read more plainly than zipped iterators here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel<W: Weight, const R: usize, const V: usize>(t: &Tile<W>) {
    let mut wp = [t.w; V];
    for v in 0..V {
        wp[v] = t.w.wrapping_add((v / 4) * t.panel_stride + (v % 4) * L);
    }
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    // SAFETY: per the `Tile` contract: x holds kc * x_stride values, each weight vector pointer
    // is followed by kc lines of NR elements, and y / bias are accessed only in enabled lanes
    // (masked loads and stores never touch disabled lanes).
    unsafe {
        let mut x = t.x;
        let ahead = PREFETCH_BYTES / size_of::<W>();
        for kk in 0..t.kc {
            let mut wv = [_mm256_setzero_ps(); V];
            for v in 0..V {
                wv[v] = load(wp[v].add(kk * NR));
                // One prefetch per cache line of the weight stream.
                if (v * L * size_of::<W>()).is_multiple_of(64) {
                    _mm_prefetch::<_MM_HINT_T0>(wp[v].wrapping_add(kk * NR + ahead).cast());
                }
            }
            for r in 0..R {
                let xb = _mm256_broadcast_ss(&*x.add(r));
                for v in 0..V {
                    acc[r][v] = _mm256_fmadd_ps(xb, wv[v], acc[r][v]);
                }
            }
            x = x.add(t.x_stride);
        }
        store(&acc, t);
    }
}

/// The epilogue of a tile: `acc * t.scale (+ bias)` into the first `t.cols` columns of y.
///
/// # Safety
/// As for `Isa::tile`: y holds rows `0..R` (`t.ldy` apart) and bias the columns written; only
/// enabled lanes are touched (masked loads and stores).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store<W, const R: usize, const V: usize>(acc: &[[__m256; V]; R], t: &Tile<W>) {
    let scale = _mm256_set1_ps(t.scale);
    for v in 0..V {
        let (mask, valid) = lane_mask(t.cols, v);
        if valid == 0 {
            continue;
        }
        // SAFETY: per the caller; masked accesses touch enabled lanes only.
        unsafe {
            let b = if t.bias.is_null() {
                None
            } else {
                Some(_mm256_maskload_ps(t.bias.wrapping_add(v * L), mask))
            };
            for (r, acc) in acc.iter().enumerate() {
                let scaled = _mm256_mul_ps(acc[v], scale);
                let out = match b {
                    Some(b) => _mm256_add_ps(scaled, b),
                    None => scaled,
                };
                _mm256_maskstore_ps(t.y.wrapping_add(r * t.ldy + v * L), mask, out);
            }
        }
    }
}

/// NVFP4 tiles (see `nvfp4.rs` for the order of operations): a row needs two accumulators
/// per vector, so with 16 registers: 1 row x 1 panel, 2-3 rows x half a panel, 4-6 rows x a
/// quarter, each kernel told which 8-column vector of the panel it starts at.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_nvfp4(rows: usize, panels: usize, t: &Tile<u8>) {
    let width = match rows {
        1 => 4,
        2..=3 => 2,
        _ => 1,
    } * L;
    for q in 0..panels {
        for c0 in (0..NR).step_by(width) {
            let mut v = *t;
            v.advance(q);
            let v = v.columns_from_view(c0);
            if v.cols == 0 {
                return;
            }
            let first = c0 / L;
            // SAFETY: forwarded from the caller; the vectors stay inside panel q.
            unsafe {
                match rows {
                    1 => kernel_nvfp4::<1, 4>(&v, first),
                    2 => kernel_nvfp4::<2, 2>(&v, first),
                    3 => kernel_nvfp4::<3, 2>(&v, first),
                    4 => kernel_nvfp4::<4, 1>(&v, first),
                    5 => kernel_nvfp4::<5, 1>(&v, first),
                    6 => kernel_nvfp4::<6, 1>(&v, first),
                    _ => unreachable!("AVX2 tiles have at most 6 rows, got {rows}"),
                }
            }
        }
    }
}

/// The 32 bytes at `p` (`j` bytes into 8 columns of a chunk, see `nvfp4::nibble_byte`)
/// decoded to the E2M1 values of pair `j` of those columns: the magnitude from an 8-entry
/// `vpermps` table (which reads the low 3 bits of each lane), the sign (bit 3) moved to bit 31.
///
/// # Safety
/// 32 bytes are readable at `p`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn decode_pair_e2m1(p: *const u8, magnitudes: __m256) -> (__m256, __m256) {
    // SAFETY: per the caller.
    let idx = unsafe { _mm256_loadu_si256(p.cast()) };
    let sign_bit = _mm256_set1_epi32(i32::MIN);
    let decode = |i: __m256i| {
        let sign = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32::<28>(i), sign_bit));
        _mm256_xor_ps(_mm256_permutevar8x32_ps(magnitudes, i), sign)
    };
    (decode(idx), decode(_mm256_srli_epi32::<4>(idx)))
}

/// `R` rows x `V` vectors of 8 columns of one NVFP4 panel, from its vector `first` (of 4) on,
/// in the order of `nvfp4.rs`.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_nvfp4<const R: usize, const V: usize>(t: &Tile<u8>, first: usize) {
    // SAFETY: the table has at least 8 f32 (the non-negative magnitudes come first).
    let magnitudes = unsafe { _mm256_loadu_ps(E2M1_VALUES.as_ptr()) };
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    // SAFETY: per the `Tile` contract: x holds kc * x_stride values and the panel kc / 16 block
    // records; the V vectors stay inside it; prefetches may point anywhere.
    unsafe {
        let mut x = t.x;
        for b in 0..t.kc / NVFP4_BLOCK {
            let record = t.w.add(b * NVFP4_RECORD);
            for line in (0..NVFP4_RECORD).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(record.wrapping_add(PREFETCH_BYTES + line).cast());
                _mm_prefetch::<_MM_HINT_T1>(record.wrapping_add(PREFETCH_L2_BYTES + line).cast());
            }
            let mut dot = [[_mm256_setzero_ps(); V]; R];
            for pair in 0..NVFP4_BLOCK / 2 {
                for v in 0..V {
                    // Vector u is the (u % 2)-th 8 columns of its half (u / 2) of the panel.
                    let u = first + v;
                    let at = chunk_at(pair / 4, u / 2) + (u % 2) * 4 * L + pair % 4;
                    let (even, odd) = decode_pair_e2m1(record.add(at), magnitudes);
                    for r in 0..R {
                        dot[r][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*x.add(r)), even, dot[r][v]);
                        dot[r][v] = _mm256_fmadd_ps(_mm256_broadcast_ss(&*x.add(t.x_stride + r)), odd, dot[r][v]);
                    }
                }
                x = x.add(2 * t.x_stride);
            }
            for v in 0..V {
                let s = load(record.add(SCALES_AT + (first + v) * L).cast::<E4m3>());
                for r in 0..R {
                    acc[r][v] = _mm256_fmadd_ps(dot[r][v], s, acc[r][v]);
                }
            }
        }
        store(&acc, t);
    }
}
