//! Portable register tiles for CPUs without AVX-512. They rely on LLVM unrolling the fixed-size
//! loops and keeping `acc` in registers, which it does in a function this small but not reliably
//! once inlined into a large caller; hence `row_block` is a call of its own (an AVX2 + FMA clone or
//! the baseline one).

use super::{Mat, MatMut, V, W};

/// `ROWS` rows of `c` (columns `0..n`) from `ROWS` rows of `a` and `k > 0` rows of `b`.
#[inline(never)]
pub(super) fn row_block<const ROWS: usize, const ACC: bool>(k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, c: MatMut<'_>) {
    #[cfg(target_arch = "x86_64")]
    if crate::ops::seq_math::has_avx2() {
        // SAFETY: the CPU has the features `row_block_avx2` is compiled for (checked above).
        unsafe { row_block_avx2::<ROWS, ACC>(k, n, a, b, c) };
        return;
    }
    row_block_body::<ROWS, ACC>(k, n, a, b, c);
}

/// [`row_block_body`] compiled for AVX2 + FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_block_avx2<const ROWS: usize, const ACC: bool>(k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, c: MatMut<'_>) {
    row_block_body::<ROWS, ACC>(k, n, a, b, c);
}

#[inline(always)]
fn row_block_body<const ROWS: usize, const ACC: bool>(k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, mut c: MatMut<'_>) {
    let mut j = 0;
    while j + V * W <= n {
        tile::<ROWS, V, ACC>(k, a, b.at(0, j), c.at(0, j));
        j += V * W;
    }
    while j + W <= n {
        tile::<ROWS, 1, ACC>(k, a, b.at(0, j), c.at(0, j));
        j += W;
    }
    if j < n {
        tile_edge::<ROWS, ACC>(k, n - j, a, b.at(0, j), c.at(0, j));
    }
}

/// The `ROWS` rows of `a` that a tile reads, each `k` long.
///
/// Written as a loop rather than `array::from_fn`, which LLVM does not always inline, and an
/// out-of-line call would push the tile's accumulators out of registers.
#[inline(always)]
fn rows_of<'a, const ROWS: usize>(a: Mat<'a>, k: usize) -> [&'a [f32]; ROWS] {
    let mut rows: [&[f32]; ROWS] = [&[]; ROWS];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = &a.data[r * a.ld..r * a.ld + k];
    }
    rows
}

// The full tile uses index loops over fixed-size arrays and no `copy_from_slice`: after full
// unrolling every accumulator is a register, whereas a memcpy into `acc` would pin it to the stack.
// (The rarely used edge tile does not mind.)

/// `ROWS` rows by `G * W` columns: the register tile.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // See above.
fn tile<const ROWS: usize, const G: usize, const ACC: bool>(k: usize, a: Mat<'_>, b: Mat<'_>, c: MatMut<'_>) {
    let mut acc = [[[0.0f32; W]; G]; ROWS];
    if ACC {
        for r in 0..ROWS {
            let c_row = &c.data[r * c.ld..r * c.ld + G * W];
            for g in 0..G {
                for l in 0..W {
                    acc[r][g][l] = c_row[g * W + l];
                }
            }
        }
    }
    let a_rows = rows_of::<ROWS>(a, k);
    for p in 0..k {
        let b_row = &b.data[p * b.ld..p * b.ld + G * W];
        for r in 0..ROWS {
            let av = a_rows[r][p];
            for g in 0..G {
                for l in 0..W {
                    acc[r][g][l] = av.mul_add(b_row[g * W + l], acc[r][g][l]);
                }
            }
        }
    }
    for r in 0..ROWS {
        let c_row = &mut c.data[r * c.ld..r * c.ld + G * W];
        for g in 0..G {
            for l in 0..W {
                c_row[g * W + l] = acc[r][g][l];
            }
        }
    }
}

/// `ROWS` rows by `width < W` columns: the right edge, through a zero-padded copy of each `b` row.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // See above.
fn tile_edge<const ROWS: usize, const ACC: bool>(k: usize, width: usize, a: Mat<'_>, b: Mat<'_>, c: MatMut<'_>) {
    let width = width.min(W);
    let mut acc = [[0.0f32; W]; ROWS];
    if ACC {
        for r in 0..ROWS {
            let c_row = &c.data[r * c.ld..r * c.ld + width];
            for l in 0..W {
                acc[r][l] = if l < width { c_row[l] } else { 0.0 };
            }
        }
    }
    let a_rows = rows_of::<ROWS>(a, k);
    for p in 0..k {
        let src = &b.data[p * b.ld..p * b.ld + width];
        let mut b_row = [0.0f32; W];
        for l in 0..W {
            b_row[l] = if l < width { src[l] } else { 0.0 };
        }
        for r in 0..ROWS {
            let av = a_rows[r][p];
            for l in 0..W {
                acc[r][l] = av.mul_add(b_row[l], acc[r][l]);
            }
        }
    }
    for r in 0..ROWS {
        let c_row = &mut c.data[r * c.ld..r * c.ld + width];
        c_row.copy_from_slice(&acc[r][..width]);
    }
}
