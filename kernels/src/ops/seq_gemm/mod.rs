//! Small dense matrix products for the sequence ops, with the two causal (triangular) shapes that
//! attention and the SSD scan need.
//!
//! All three compute `c[i][j] (+)= sum_k a[i][k] * b[k][j]` as one `mul_add` chain per element with
//! `k` ascending, starting from `c[i][j]` (when accumulating) or from +0. The chain of an element
//! never depends on the tiling, so tile sizes, edges and the split into calls cannot change a bit.
//!
//! The layout favours broadcast-FMA: `b` rows are contiguous, so a tile of `R` rows by 64 columns
//! keeps `4 R` vector accumulators in registers and reads one row of `b` per step of `k`. The tiles
//! exist twice: AVX-512 intrinsics (`avx512.rs`), whose registers do not depend on how LLVM unrolls
//! and scalar-replaces arrays inside a large caller, and portable Rust for other CPUs
//! (`portable.rs`), chosen per row block at run time.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

/// Columns per vector group (one AVX-512 register of `f32`).
const W: usize = 16;
/// Vector groups per full tile: 4 x 16 = 64 columns.
const V: usize = 4;
/// Rows per full tile. 4 rows x 4 groups = 16 accumulators, half the AVX-512 register file.
const R: usize = 4;
/// Rows of `b` per panel in [`gemm_lower_k`]: 64 rows of 64 floats is 16 KiB, a third of L1.
const KC: usize = 64;

/// A row-major matrix read with leading dimension `ld`: element (i, j) is `data[i * ld + j]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    /// The elements.
    pub(crate) data: &'a [f32],
    /// Distance between consecutive rows.
    pub(crate) ld: usize,
}

impl<'a> Mat<'a> {
    /// The submatrix whose (0, 0) is this one's (i, j).
    #[inline(always)]
    pub(super) fn at(self, i: usize, j: usize) -> Mat<'a> {
        Mat {
            data: &self.data[i * self.ld + j..],
            ld: self.ld,
        }
    }
}

/// A row-major matrix written with leading dimension `ld`.
pub(crate) struct MatMut<'a> {
    /// The elements.
    pub(crate) data: &'a mut [f32],
    /// Distance between consecutive rows.
    pub(crate) ld: usize,
}

impl MatMut<'_> {
    /// The submatrix whose (0, 0) is this one's (i, j), reborrowed.
    #[inline(always)]
    pub(super) fn at(&mut self, i: usize, j: usize) -> MatMut<'_> {
        MatMut {
            data: &mut self.data[i * self.ld + j..],
            ld: self.ld,
        }
    }
}

/// `ROWS` rows of `c` (columns `0..n`) from `ROWS` rows of `a` and `k` rows of `b`, on the best
/// kernel for this CPU (the two give identical bits: both are fused multiply-add chains).
#[inline(always)]
fn row_block<const ROWS: usize, const ACC: bool>(k: usize, n: usize, a: Mat<'_>, b: Mat<'_>, c: MatMut<'_>) {
    if k == 0 {
        // An empty chain: the start value. Also keeps the kernels' slicing away from an empty `b`.
        if !ACC {
            for r in 0..ROWS {
                c.data[r * c.ld..r * c.ld + n].fill(0.0);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::ops::seq_math::has_avx512() {
        // SAFETY: the CPU has the features `avx512::row_block` is compiled for (checked above).
        unsafe { avx512::row_block::<ROWS, ACC>(k, n, a, b, c) };
        return;
    }
    portable::row_block::<ROWS, ACC>(k, n, a, b, c);
}

/// `c[i][j] (+)= sum_{k < kk} a[i][k] * b[k][j]` for `i < m`, `j < n`.
#[inline(always)]
pub(crate) fn gemm<const ACC: bool>(m: usize, n: usize, kk: usize, a: Mat<'_>, b: Mat<'_>, mut c: MatMut<'_>) {
    let mut i = 0;
    while i + R <= m {
        row_block::<R, ACC>(kk, n, a.at(i, 0), b, c.at(i, 0));
        i += R;
    }
    while i < m {
        row_block::<1, ACC>(kk, n, a.at(i, 0), b, c.at(i, 0));
        i += 1;
    }
}

/// Like [`gemm`], but only `c[i][j]` with `j <= i + diag` is guaranteed (a lower-triangular result,
/// e.g. causal attention scores); some entries above that band are computed too, some are not.
///
/// A row block's column count is rounded up to whole vector groups (within `n`), so callers that
/// can afford the extra columns should pass `n` padded to a multiple of 16 and avoid edge tiles.
#[inline(always)]
pub(crate) fn gemm_lower_n<const ACC: bool>(
    m: usize,
    n: usize,
    kk: usize,
    diag: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    mut c: MatMut<'_>,
) {
    let mut i = 0;
    while i + R <= m {
        row_block::<R, ACC>(kk, n.min((i + R + diag).next_multiple_of(W)), a.at(i, 0), b, c.at(i, 0));
        i += R;
    }
    while i < m {
        row_block::<1, ACC>(kk, n.min((i + 1 + diag).next_multiple_of(W)), a.at(i, 0), b, c.at(i, 0));
        i += 1;
    }
}

/// `c[i][j] (+)= sum_{k <= i + diag} a[i][k] * b[k][j]`: a lower-triangular `a` (e.g. causal
/// attention probabilities) whose entries above the band are never read, nor are the rows of `b`
/// they would multiply, so values there (even NaN) cannot leak into the result.
///
/// `k` runs in panels of [`KC`] rows of `b`, each applied to every row of `c` before the next, so
/// a panel stays in L1 while all row tiles reuse it (`k` can be thousands of keys). Each element's
/// chain still runs over `k` ascending, just paused at panel edges.
#[inline(always)]
pub(crate) fn gemm_lower_k<const ACC: bool>(
    m: usize,
    n: usize,
    diag: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    mut c: MatMut<'_>,
) {
    if m == 0 {
        return;
    }
    // Row i reads k < end(i).
    let end = |i: usize| i + diag + 1;
    let mut k0 = 0;
    while k0 < end(m - 1) {
        let k1 = (k0 + KC).min(end(m - 1));
        // The first panel starts the chains (from c, or from zero); later ones continue them.
        let fresh = k0 == 0 && !ACC;
        let mut i = 0;
        while i < m {
            let rows = if i + R <= m { R } else { 1 };
            // Every row of the tile reads k < end(i); row i + r then reads r more.
            let shared = end(i).min(k1);
            if shared > k0 {
                let (a, b, c) = (a.at(i, k0), b.at(k0, 0), c.at(i, 0));
                match (rows == R, fresh) {
                    (true, true) => row_block::<R, false>(shared - k0, n, a, b, c),
                    (true, false) => row_block::<R, true>(shared - k0, n, a, b, c),
                    (false, true) => row_block::<1, false>(shared - k0, n, a, b, c),
                    (false, false) => row_block::<1, true>(shared - k0, n, a, b, c),
                }
            }
            for r in 1..rows {
                let (from, to) = (shared.max(k0), end(i + r).min(k1));
                if to > from {
                    row_block::<1, true>(to - from, n, a.at(i + r, from), b.at(from, 0), c.at(i + r, 0));
                }
            }
            i += rows;
        }
        k0 = k1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        let hash = |i: usize| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 20;
        (0..len).map(|i| hash(i) as f32 / 4096.0 - 0.5).collect()
    }

    /// The same chain, one element at a time.
    fn naive(i: usize, j: usize, k1: usize, a: Mat<'_>, b: Mat<'_>, start: f32) -> f32 {
        (0..k1).fold(start, |acc, p| a.data[i * a.ld + p].mul_add(b.data[p * b.ld + j], acc))
    }

    fn mat(data: &[f32], ld: usize) -> Mat<'_> {
        Mat { data, ld }
    }

    fn out(data: &mut [f32], ld: usize) -> MatMut<'_> {
        MatMut { data, ld }
    }

    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (4, 64, 8),
        (7, 83, 13),
        (9, 16, 0),
        (13, 130, 70),
        (3, 5, 2),
        (150, 70, 3),
    ];

    #[test]
    fn gemm_and_lower_n_match_the_naive_chain_bitwise() {
        for (m, n, k) in SHAPES {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let (a, b, c0) = (fill(m * lda, 1), fill(k.max(1) * ldb, 2), fill(m * ldc, 3));
            let (am, bm) = (mat(&a, lda), mat(&b, ldb));
            let (mut c, mut z) = (c0.clone(), c0.clone());
            gemm::<true>(m, n, k, am, bm, out(&mut c, ldc));
            gemm::<false>(m, n, k, am, bm, out(&mut z, ldc));
            for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                let at = i * ldc + j;
                assert_eq!(c[at].to_bits(), naive(i, j, k, am, bm, c0[at]).to_bits());
                assert_eq!(z[at].to_bits(), naive(i, j, k, am, bm, 0.0).to_bits());
            }
            for diag in [0, 2] {
                let mut c = c0.clone();
                gemm_lower_n::<false>(m, n, k, diag, am, bm, out(&mut c, ldc));
                for (i, j) in (0..m).flat_map(|i| (0..n.min(i + diag + 1)).map(move |j| (i, j))) {
                    assert_eq!(c[i * ldc + j].to_bits(), naive(i, j, k, am, bm, 0.0).to_bits());
                }
            }
        }
    }

    #[test]
    fn lower_k_matches_the_naive_chain_bitwise() {
        // m up to 150 with diag 2 runs k over three panels of KC.
        for (m, n, _) in SHAPES {
            for diag in [0, 2] {
                let (kk, ldc) = (m + diag, n + 2);
                let (a, b, c0) = (fill(m * (kk + 1), 4), fill(kk * n, 5), fill(m * ldc, 6));
                let (am, bm) = (mat(&a, kk + 1), mat(&b, n));
                // Entries above the band are never read: poison them.
                let mut a_nan = a.clone();
                for i in 0..m {
                    a_nan[i * (kk + 1) + i + diag + 1..(i + 1) * (kk + 1)].fill(f32::NAN);
                }
                let (mut c, mut z) = (c0.clone(), c0.clone());
                gemm_lower_k::<true>(m, n, diag, mat(&a_nan, kk + 1), bm, out(&mut c, ldc));
                gemm_lower_k::<false>(m, n, diag, am, bm, out(&mut z, ldc));
                for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                    let at = i * ldc + j;
                    assert_eq!(c[at].to_bits(), naive(i, j, i + diag + 1, am, bm, c0[at]).to_bits());
                    assert_eq!(z[at].to_bits(), naive(i, j, i + diag + 1, am, bm, 0.0).to_bits());
                }
            }
        }
    }

    /// The portable kernel (what CPUs without AVX-512 run) against the naive chain, whatever this
    /// machine dispatches to.
    #[test]
    fn portable_kernel_matches_the_naive_chain_bitwise() {
        for (m, n, k) in [(4, 83, 13), (1, 130, 70), (4, 16, 1)] {
            let (lda, ldb, ldc) = (k + 1, n + 3, n + 1);
            let (a, b, c0) = (fill(m * lda, 7), fill(k * ldb, 8), fill(m * ldc, 9));
            let (am, bm) = (mat(&a, lda), mat(&b, ldb));
            let mut c = c0.clone();
            if m == 4 {
                portable::row_block::<4, true>(k, n, am, bm, out(&mut c, ldc));
            } else {
                portable::row_block::<1, true>(k, n, am, bm, out(&mut c, ldc));
            }
            for (i, j) in (0..m).flat_map(|i| (0..n).map(move |j| (i, j))) {
                let at = i * ldc + j;
                assert_eq!(c[at].to_bits(), naive(i, j, k, am, bm, c0[at]).to_bits());
            }
        }
    }
}
