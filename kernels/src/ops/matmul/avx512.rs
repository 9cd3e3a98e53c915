//! AVX-512F micro-kernels: up to 12 rows x 32 columns (24 zmm accumulators) per call.
//!
//! Per k-step a kernel loads each 16-lane weight vector once (widened exactly: bf16 by
//! zero-extension and a 16-bit shift, f16 by `vcvtph2ps`, FP8 E4M3 through f16), broadcasts each row's x value from
//! the packed tile, and issues one FMA per (row, vector). Each accumulator lane is one output
//! element's FMA chain; on this layout a 12 x 32 tile runs at ~88% of the FMA peak from L1.

use std::arch::x86_64::*;

use super::cpu::{Isa, PREFETCH_BYTES, Tile, Weight};
use super::packed::NR;
use crate::dtype::WeightDType;

/// Lanes per vector.
const L: usize = 16;

/// The AVX-512F code path.
pub(super) struct Avx512;

impl Isa for Avx512 {
    const MR: usize = 12;

    unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
        // SAFETY: forwarded from the caller (ISA available, pointers valid).
        unsafe { tile::<W>(rows, panels, t) }
    }

    unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
        // SAFETY: forwarded from the caller.
        unsafe { widen::<W>(src, len, dst) }
    }
}

/// Loads 16 weights and widens them to f32.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load<W: Weight>(p: *const W) -> __m512 {
    // SAFETY: the caller guarantees 16 readable elements at p; loads are unaligned-safe.
    unsafe {
        match W::DTYPE {
            WeightDType::F32 => _mm512_loadu_ps(p.cast()),
            WeightDType::BF16 => {
                let h = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            WeightDType::F16 => _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            WeightDType::F8E4M3 => {
                // Sign-extended to 16 bits and shifted left by 7, an E4M3 byte `s eeee mmm`
                // becomes the f16 `s s eeee mmm 0000000`; clearing bit 14 leaves the f16 of
                // value * 2^-8 (subnormals included), which widens and rescales exactly.
                let h = _mm256_slli_epi16::<7>(_mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast())));
                let h = _mm256_and_si256(h, _mm256_set1_epi16(0xBFFFu16 as i16));
                _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0))
            }
            WeightDType::NVFP4 => unreachable!("NVFP4 panels are decoded before the kernels"),
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn widen<W: Weight>(src: *const W, len: usize, dst: *mut f32) {
    for i in (0..len).step_by(L) {
        // SAFETY: i + 16 <= len (len is a multiple of 32); both buffers hold len elements.
        unsafe { _mm512_storeu_ps(dst.add(i), load(src.add(i))) };
    }
}

/// Splits a call into kernels the register file holds: 2 zmm per row per panel, at most 24
/// accumulators, preferring more panels for few rows (more independent FMA chains, which is
/// what hides the 4-cycle FMA latency when m is 1..3).
#[target_feature(enable = "avx512f")]
unsafe fn tile<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
    let mut t = *t;
    let mut left = panels;
    while left > 0 {
        let max_panels = match rows {
            1..=3 => 4,
            4..=6 => 2,
            _ => 1,
        };
        let p = if left >= 4 && max_panels >= 4 {
            4
        } else if left >= 2 && max_panels >= 2 {
            2
        } else {
            1
        };
        // SAFETY: forwarded; (rows, p) is one of the instantiated shapes below.
        unsafe { by_shape(rows, p, &t) };
        left -= p;
        t.w = t.w.wrapping_add(p * t.panel_stride);
        t.y = t.y.wrapping_add(p * NR);
        t.cols = t.cols.saturating_sub(p * NR);
        if !t.bias.is_null() {
            t.bias = t.bias.wrapping_add(p * NR);
        }
    }
}

#[target_feature(enable = "avx512f")]
unsafe fn by_shape<W: Weight>(rows: usize, panels: usize, t: &Tile<W>) {
    macro_rules! shapes {
        ($( ($r:literal, $p:literal) ),* $(,)?) => {
            match (rows, panels) {
                // SAFETY: forwarded from the caller.
                $( ($r, $p) => unsafe { kernel::<W, $r, { 2 * $p }>(t) }, )*
                _ => unreachable!("no kernel for {rows} rows x {panels} panels"),
            }
        };
    }
    shapes!(
        (1, 1),
        (2, 1),
        (3, 1),
        (4, 1),
        (5, 1),
        (6, 1),
        (7, 1),
        (8, 1),
        (9, 1),
        (10, 1),
        (11, 1),
        (12, 1),
        (1, 2),
        (2, 2),
        (3, 2),
        (4, 2),
        (5, 2),
        (6, 2),
        (1, 4),
        (2, 4),
        (3, 4),
    )
}

/// Mask of the lanes of vector `v` that fall inside the first `cols` columns.
#[inline]
fn lane_mask(cols: usize, v: usize) -> __mmask16 {
    let valid = cols.saturating_sub(v * L).min(L);
    ((1u32 << valid) - 1) as __mmask16
}

/// `R` rows x `V` vectors of 16 columns (`V / 2` panels), all `kc` k-steps.
// Index loops over the register tile read more plainly than zipped iterators here.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
unsafe fn kernel<W: Weight, const R: usize, const V: usize>(t: &Tile<W>) {
    let mut mask = [0 as __mmask16; V];
    let mut wp = [t.w; V];
    for v in 0..V {
        mask[v] = lane_mask(t.cols, v);
        wp[v] = t.w.wrapping_add((v / 2) * t.panel_stride + (v % 2) * L);
    }
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    // SAFETY: per the `Tile` contract: x holds kc * x_stride values, each weight vector
    // pointer is followed by kc lines of NR elements, and y / bias are accessed only in the
    // lanes `mask` enables (masked-off lanes are never touched, so pointers past the end of
    // y are fine).
    unsafe {
        let mut x = t.x;
        let ahead = PREFETCH_BYTES / size_of::<W>();
        for kk in 0..t.kc {
            let mut wv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                wv[v] = load(wp[v].add(kk * NR));
                // One prefetch per cache line of the weight stream (a 16-lane vector is a
                // whole line of f32, half a line of bf16 / f16).
                if (v * L * size_of::<W>()).is_multiple_of(64) {
                    _mm_prefetch::<_MM_HINT_T0>(wp[v].wrapping_add(kk * NR + ahead).cast());
                }
            }
            for r in 0..R {
                let xb = _mm512_set1_ps(*x.add(r));
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(xb, wv[v], acc[r][v]);
                }
            }
            x = x.add(t.x_stride);
        }
        let scale = _mm512_set1_ps(t.scale);
        for v in 0..V {
            if mask[v] == 0 {
                continue;
            }
            let b = if t.bias.is_null() {
                None
            } else {
                Some(_mm512_maskz_loadu_ps(mask[v], t.bias.wrapping_add(v * L)))
            };
            for r in 0..R {
                let scaled = _mm512_mul_ps(acc[r][v], scale);
                let out = match b {
                    Some(b) => _mm512_add_ps(scaled, b),
                    None => scaled,
                };
                _mm512_mask_storeu_ps(t.y.wrapping_add(r * t.ldy + v * L), mask[v], out);
            }
        }
    }
}
