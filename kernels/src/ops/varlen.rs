//! Shared pieces of the packed variable-length convention.
//!
//! A batch is several sequences' tokens concatenated along the token axis; `cu_seqlens` holds
//! `num_seqs + 1` cumulative offsets starting at 0, non-decreasing, the last one equal to the total
//! number of tokens `T`. This module validates that convention and the slice lengths derived from
//! it, and gives the CPU kernels a way to write disjoint parts of one output from several threads.

use std::marker::PhantomData;

use super::seq_error::SeqOpError;

/// Returns `a * b`, or an `Overflow` error naming `arg`.
pub(crate) fn mul(arg: &'static str, a: usize, b: usize) -> Result<usize, SeqOpError> {
    a.checked_mul(b).ok_or(SeqOpError::Overflow { arg })
}

/// Errors unless `value` is positive.
pub(crate) fn nonzero(arg: &'static str, value: usize) -> Result<usize, SeqOpError> {
    if value == 0 {
        Err(SeqOpError::Zero { arg })
    } else {
        Ok(value)
    }
}

/// Errors unless `divisor_arg` (`divisor`, positive) divides `arg` (`value`); returns the quotient.
pub(crate) fn divide(
    arg: &'static str,
    value: usize,
    divisor_arg: &'static str,
    divisor: usize,
) -> Result<usize, SeqOpError> {
    if value.is_multiple_of(divisor) {
        Ok(value / divisor)
    } else {
        Err(SeqOpError::NotDivisible {
            arg,
            divisor_arg,
            divisor,
            found: value,
        })
    }
}

/// Errors unless `data.len() == expected`.
pub(crate) fn check_len(arg: &'static str, data: &[f32], expected: usize) -> Result<(), SeqOpError> {
    if data.len() == expected {
        Ok(())
    } else {
        Err(SeqOpError::Length {
            arg,
            expected,
            found: data.len(),
        })
    }
}

/// Number of tokens in a packed `[T, row_width]` input (`row_width` must be positive).
pub(crate) fn token_count(arg: &'static str, data: &[f32], row_width: usize) -> Result<usize, SeqOpError> {
    if data.len().is_multiple_of(row_width) {
        Ok(data.len() / row_width)
    } else {
        Err(SeqOpError::NotWholeRows {
            arg,
            row_width,
            found: data.len(),
        })
    }
}

/// Checks `cu_seqlens` against the token count `total` found in the input named `source_arg`.
pub(crate) fn check_cu_seqlens(cu_seqlens: &[usize], total: usize, source_arg: &'static str) -> Result<(), SeqOpError> {
    let (&first, _) = cu_seqlens.split_first().ok_or(SeqOpError::CuSeqlensEmpty)?;
    if first != 0 {
        return Err(SeqOpError::CuSeqlensStart { found: first });
    }
    for (index, pair) in cu_seqlens.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(SeqOpError::CuSeqlensDecreasing {
                index: index + 1,
                previous: pair[0],
                found: pair[1],
            });
        }
    }
    let index = cu_seqlens.len() - 1;
    let found = cu_seqlens[index];
    if found != total {
        return Err(SeqOpError::CuSeqlensEnd {
            index,
            expected: total,
            found,
            source_arg,
        });
    }
    Ok(())
}

/// The non-empty sequences of a validated `cu_seqlens` as `(start, len)`, longest first.
///
/// Longest first only helps rayon balance the work; no result depends on this order.
pub(crate) fn sequences_longest_first(cu_seqlens: &[usize]) -> Vec<(usize, usize)> {
    let mut seqs: Vec<(usize, usize)> = cu_seqlens
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .filter(|&(_, len)| len > 0)
        .collect();
    seqs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    seqs
}

/// Units of work to aim for per pool thread, so rayon can even out unequal sequence lengths.
const UNITS_PER_THREAD: usize = 4;

/// How many heads of one group (the heads sharing B/C, or one key/value head) a unit of work takes,
/// given `pairs` (sequence, group) pairs of `per_group` heads each.
///
/// A whole group shares its per-group work (`C B^T`, the transposed keys), so groups are split only
/// when the pairs alone cannot keep the current pool busy. Callers compute every head the same way
/// whatever unit it lands in, so this choice (and the thread count behind it) changes no bit.
pub(crate) fn heads_per_unit(pairs: usize, per_group: usize) -> usize {
    let wanted = UNITS_PER_THREAD * rayon::current_num_threads();
    let splits = wanted.div_ceil(pairs.max(1)).clamp(1, per_group.max(1));
    per_group.div_ceil(splits)
}

thread_local! {
    /// Per-thread scratch reused by [`with_scratch`].
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on a scratch slice of `len` elements with unspecified contents, reusing this thread's
/// buffer from earlier calls.
///
/// Units of work need up to a few hundred KiB; allocating that per unit goes through `mmap` and
/// page faults, which serialise threads in the kernel. The buffer is taken out of the thread-local
/// while `f` runs, so a nested call (should `f` ever re-enter) just allocates its own.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.take();
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    SCRATCH.set(buf);
    result
}

/// Splits the first `len` elements off `buf` (for carving one scratch slice into several).
pub(crate) fn carve<'a>(buf: &mut &'a mut [f32], len: usize) -> &'a mut [f32] {
    let (head, tail) = std::mem::take(buf).split_at_mut(len);
    *buf = tail;
    head
}

/// An output buffer that parallel units of work write through, each into its own disjoint ranges.
///
/// The packed layout interleaves heads inside each token row, so a (sequence, head) unit owns a
/// strided set of ranges that safe slice splitting cannot express.
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [f32]>,
}

// SAFETY: `DisjointOut` is a `&mut [f32]` whose users promise (see `range`) never to create
// overlapping ranges at the same time, so handing it to other threads cannot cause a data race.
unsafe impl Send for DisjointOut<'_> {}
// SAFETY: as above; shared use only ever produces disjoint `&mut` ranges.
unsafe impl Sync for DisjointOut<'_> {}

impl<'a> DisjointOut<'a> {
    /// Wraps `out`, borrowed mutably for as long as the wrapper lives.
    pub(crate) fn new(out: &'a mut [f32]) -> Self {
        Self {
            ptr: out.as_mut_ptr(),
            len: out.len(),
            _borrow: PhantomData,
        }
    }

    /// The range `start..start + len` of the output. Panics if it is out of bounds.
    ///
    /// # Safety
    /// While the returned slice lives, no other slice obtained from this wrapper (on any thread)
    /// may overlap it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, start: usize, len: usize) -> &mut [f32] {
        assert!(
            start <= self.len && len <= self.len - start,
            "DisjointOut range out of bounds"
        );
        // SAFETY: the range is in bounds of the wrapped slice (checked above), which stays mutably
        // borrowed for 'a; the caller guarantees no overlapping slice is alive at the same time.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cu_seqlens_rules() {
        assert_eq!(check_cu_seqlens(&[0, 2, 2, 5], 5, "x"), Ok(()));
        assert_eq!(check_cu_seqlens(&[0], 0, "x"), Ok(()));
        assert_eq!(check_cu_seqlens(&[], 0, "x"), Err(SeqOpError::CuSeqlensEmpty));
        assert_eq!(
            check_cu_seqlens(&[1, 5], 5, "x"),
            Err(SeqOpError::CuSeqlensStart { found: 1 })
        );
        assert_eq!(
            check_cu_seqlens(&[0, 3, 2, 5], 5, "x"),
            Err(SeqOpError::CuSeqlensDecreasing {
                index: 2,
                previous: 3,
                found: 2
            })
        );
        assert_eq!(
            check_cu_seqlens(&[0, 3, 4], 5, "x"),
            Err(SeqOpError::CuSeqlensEnd {
                index: 2,
                expected: 5,
                found: 4,
                source_arg: "x"
            })
        );
    }

    #[test]
    fn longest_first_skips_empty() {
        assert_eq!(sequences_longest_first(&[0, 2, 2, 7, 8]), vec![(2, 5), (0, 2), (7, 1)]);
    }
}
