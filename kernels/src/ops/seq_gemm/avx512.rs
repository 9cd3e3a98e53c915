//! AVX-512 register tiles. Accumulators are `__m512` values in fixed-size arrays whose loops
//! unroll to a handful of instructions, so they stay in registers whatever the caller looks like.
//!
//! `_mm512_fmadd_ps(a, b, c)` rounds `a * b + c` once, exactly like `f32::mul_add`, and masked
//! edge loads fill the missing lanes with zeros like the portable edge tile: both kernels give
//! the same bits.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_set1_ps,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

use super::{Mat, MatMut, V, W};

/// Loads the 16 elements at the start of `src`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load(src: &[f32]) -> __m512 {
    let src = &src[..W];
    // SAFETY: `src` has 16 elements (the slice above), and `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(src.as_ptr()) }
}

/// Stores `v` to the first 16 elements of `dst`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store(dst: &mut [f32], v: __m512) {
    let dst = &mut dst[..W];
    // SAFETY: `dst` has 16 writable elements (the slice above); `storeu` needs no alignment.
    unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
}

/// Loads the first `width < 16` elements of `src`, zeros in the other lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_part(src: &[f32], width: usize) -> __m512 {
    let src = &src[..width];
    // SAFETY: lanes at or beyond `width` are masked off, so only the `width` elements `src` has
    // (sliced above) are read; masked-off lanes never fault.
    unsafe { _mm512_maskz_loadu_ps(mask(width), src.as_ptr()) }
}

/// Stores the first `width < 16` lanes of `v` to `dst`.
#[inline]
#[target_feature(enable = "avx512f")]
fn store_part(dst: &mut [f32], v: __m512, width: usize) {
    let dst = &mut dst[..width];
    // SAFETY: only the `width` lanes below the mask are written, and `dst` has that many elements.
    unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask(width), v) }
}

/// The lane mask of the first `width < 16` lanes.
#[inline]
fn mask(width: usize) -> __mmask16 {
    ((1u32 << width) - 1) as __mmask16
}

/// `ROWS` rows of `c` (columns `0..n`) from `ROWS` rows of `a` and `k > 0` rows of `b`.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) fn row_block<const ROWS: usize, const ACC: bool>(
    k: usize,
    n: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    mut c: MatMut<'_>,
) {
    let mut a_rows: [&[f32]; ROWS] = [&[]; ROWS];
    for (r, row) in a_rows.iter_mut().enumerate() {
        *row = &a.data[r * a.ld..r * a.ld + k];
    }
    let mut j = 0;
    while j + V * W <= n {
        tile::<ROWS, V, ACC>(&a_rows, b.at(0, j), c.at(0, j));
        j += V * W;
    }
    while j + W <= n {
        tile::<ROWS, 1, ACC>(&a_rows, b.at(0, j), c.at(0, j));
        j += W;
    }
    if j < n {
        tile_edge::<ROWS, ACC>(&a_rows, n - j, b.at(0, j), c.at(0, j));
    }
}

/// `ROWS` rows by `G * 16` columns.
#[inline]
#[target_feature(enable = "avx512f")]
fn tile<const ROWS: usize, const G: usize, const ACC: bool>(a_rows: &[&[f32]; ROWS], b: Mat<'_>, c: MatMut<'_>) {
    let mut acc = [[_mm512_setzero_ps(); G]; ROWS];
    if ACC {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (g, v) in acc_r.iter_mut().enumerate() {
                *v = load(&c.data[r * c.ld + g * W..]);
            }
        }
    }
    let k = a_rows[0].len();
    for p in 0..k {
        let b_row = &b.data[p * b.ld..p * b.ld + G * W];
        let mut bv = [_mm512_setzero_ps(); G];
        for (g, v) in bv.iter_mut().enumerate() {
            *v = load(&b_row[g * W..]);
        }
        for (acc_r, a_row) in acc.iter_mut().zip(a_rows) {
            let av = _mm512_set1_ps(a_row[p]);
            for (v, &bg) in acc_r.iter_mut().zip(&bv) {
                *v = _mm512_fmadd_ps(av, bg, *v);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (g, &v) in acc_r.iter().enumerate() {
            store(&mut c.data[r * c.ld + g * W..], v);
        }
    }
}

/// `ROWS` rows by `width < 16` columns, through masked loads and stores.
#[inline]
#[target_feature(enable = "avx512f")]
fn tile_edge<const ROWS: usize, const ACC: bool>(a_rows: &[&[f32]; ROWS], width: usize, b: Mat<'_>, c: MatMut<'_>) {
    let mut acc = [_mm512_setzero_ps(); ROWS];
    if ACC {
        for (r, v) in acc.iter_mut().enumerate() {
            *v = load_part(&c.data[r * c.ld..], width);
        }
    }
    let k = a_rows[0].len();
    for p in 0..k {
        let bv = load_part(&b.data[p * b.ld..], width);
        for (v, a_row) in acc.iter_mut().zip(a_rows) {
            *v = _mm512_fmadd_ps(_mm512_set1_ps(a_row[p]), bv, *v);
        }
    }
    for (r, &v) in acc.iter().enumerate() {
        store_part(&mut c.data[r * c.ld..], v, width);
    }
}
