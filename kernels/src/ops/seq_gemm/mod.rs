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
fn row_block<const ROWS: usize, const ACC: bool>(
    k: usize,
    n: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    c: MatMut<'_>,
) {
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
pub(crate) fn gemm<const ACC: bool>(
    m: usize,
    n: usize,
    kk: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    mut c: MatMut<'_>,
) {
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
        row_block::<R, ACC>(
            kk,
            n.min((i + R + diag).next_multiple_of(W)),
            a.at(i, 0),
            b,
            c.at(i, 0),
        );
        i += R;
    }
    while i < m {
        row_block::<1, ACC>(
            kk,
            n.min((i + 1 + diag).next_multiple_of(W)),
            a.at(i, 0),
            b,
            c.at(i, 0),
        );
        i += 1;
    }
}

/// `c[i][j] (+)= sum_{k <= i + diag} a[i][k] * b[k][j]`: a lower-triangular `a` (e.g. causal
/// attention probabilities) whose entries above the band are never read, nor are the rows of `b`
/// they would multiply, so values there (even NaN) cannot leak into the result.
#[inline(always)]
pub(crate) fn gemm_lower_k<const ACC: bool>(
    m: usize,
    n: usize,
    diag: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    mut c: MatMut<'_>,
) {
    let mut i = 0;
    while i + R <= m {
        // Every row of the block reads k < i + diag + 1; row i + r then reads r more.
        let shared = i + diag + 1;
        row_block::<R, ACC>(shared, n, a.at(i, 0), b, c.at(i, 0));
        for r in 1..R {
            row_block::<1, true>(r, n, a.at(i + r, shared), b.at(shared, 0), c.at(i + r, 0));
        }
        i += R;
    }
    while i < m {
        row_block::<1, ACC>(i + diag + 1, n, a.at(i, 0), b, c.at(i, 0));
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 20) as f32 / 4096.0
                    - 0.5
            })
            .collect()
    }

    /// The same chain, one element at a time.
    fn naive(i: usize, j: usize, k0: usize, k1: usize, a: Mat<'_>, b: Mat<'_>, start: f32) -> f32 {
        (k0..k1).fold(start, |acc, p| {
            a.data[i * a.ld + p].mul_add(b.data[p * b.ld + j], acc)
        })
    }

    #[test]
    fn all_shapes_match_the_naive_chain_bitwise() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (4, 64, 8),
            (7, 83, 13),
            (9, 16, 0),
            (13, 130, 70),
            (3, 5, 2),
        ] {
            let (lda, ldb, ldc) = (k + 3, n + 5, n + 2);
            let a = fill(m * lda, 1);
            let b = fill(k.max(1) * ldb, 2);
            let c0 = fill(m * ldc, 3);
            let (am, bm) = (Mat { data: &a, ld: lda }, Mat { data: &b, ld: ldb });

            let mut c = c0.clone();
            gemm::<true>(
                m,
                n,
                k,
                am,
                bm,
                MatMut {
                    data: &mut c,
                    ld: ldc,
                },
            );
            let mut z = c0.clone();
            gemm::<false>(
                m,
                n,
                k,
                am,
                bm,
                MatMut {
                    data: &mut z,
                    ld: ldc,
                },
            );
            for i in 0..m {
                for j in 0..n {
                    assert_eq!(
                        c[i * ldc + j].to_bits(),
                        naive(i, j, 0, k, am, bm, c0[i * ldc + j]).to_bits()
                    );
                    assert_eq!(
                        z[i * ldc + j].to_bits(),
                        naive(i, j, 0, k, am, bm, 0.0).to_bits()
                    );
                }
            }

            for diag in [0, 2] {
                let mut c = c0.clone();
                gemm_lower_n::<false>(
                    m,
                    n,
                    k,
                    diag,
                    am,
                    bm,
                    MatMut {
                        data: &mut c,
                        ld: ldc,
                    },
                );
                for i in 0..m {
                    for j in 0..n.min(i + diag + 1) {
                        assert_eq!(
                            c[i * ldc + j].to_bits(),
                            naive(i, j, 0, k, am, bm, 0.0).to_bits()
                        );
                    }
                }
                // Lower in k: `a` is m x (m + diag), `b` is (m + diag) x n.
                let kk = m + diag;
                let a = fill(m * (kk + 1), 4);
                let b = fill(kk * n, 5);
                let (am, bm) = (
                    Mat {
                        data: &a,
                        ld: kk + 1,
                    },
                    Mat { data: &b, ld: n },
                );
                let mut c = c0.clone();
                gemm_lower_k::<true>(
                    m,
                    n,
                    diag,
                    am,
                    bm,
                    MatMut {
                        data: &mut c,
                        ld: ldc,
                    },
                );
                for i in 0..m {
                    for j in 0..n {
                        let want = naive(i, j, 0, i + diag + 1, am, bm, c0[i * ldc + j]);
                        assert_eq!(c[i * ldc + j].to_bits(), want.to_bits());
                    }
                }
            }
        }
    }
}
