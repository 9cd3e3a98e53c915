//! The error type of every op in this crate.

use crate::dtype::WeightDType;

/// Why an op refused its arguments.
///
/// Ops check shapes once, up front, and report what they expected next to what they were given,
/// so that a caller can tell from the message alone which tensor is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer's length does not match the shape it was passed with.
    #[error("{op}: `{what}` has {found} elements, expected {expected}")]
    LengthMismatch {
        /// The op that checked.
        op: &'static str,
        /// Which argument (e.g. `"x"`, `"y"`, `"bias"`).
        what: &'static str,
        /// The length the shape implies.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// Raw weight bytes do not have the length that `[rows, cols]` of `dtype` needs.
    #[error("weights of shape [{rows}, {cols}] in {dtype}: expected {expected} bytes, found {found}")]
    WeightByteLength {
        /// Rows (`out_features`).
        rows: usize,
        /// Columns (`in_features`).
        cols: usize,
        /// The element type the bytes were said to hold.
        dtype: WeightDType,
        /// `rows * cols * dtype.size_in_bytes()`.
        expected: usize,
        /// The number of bytes given.
        found: usize,
    },
    /// A shape that the op cannot work with (a zero dimension, or a size that overflows).
    #[error("{op}: invalid shape: {reason}")]
    InvalidShape {
        /// The op that checked.
        op: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A value that the op cannot work with (a non-finite or negative scale, a NaN code).
    #[error("{op}: invalid `{what}`: {reason}")]
    InvalidValue {
        /// The op that checked.
        op: &'static str,
        /// Which argument (e.g. `"tensor_scale"`, `"block_scales"`).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A packed sequence op refused its arguments.
    #[error(transparent)]
    Sequence(#[from] crate::ops::SeqOpError),
    /// The device failed the op (a driver error, or device memory the plan did not provide).
    #[error("{op}: the device failed: {reason}")]
    Device {
        /// The op that ran.
        op: &'static str,
        /// The driver's or the arena's message.
        reason: String,
    },
    /// The op does not support this combination of arguments.
    #[error("{op}: unsupported: {reason}")]
    Unsupported {
        /// The op that checked.
        op: &'static str,
        /// What is not supported.
        reason: String,
    },
}

/// Checks one slice length for `op`.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if found == expected {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch {
            op,
            what,
            expected,
            found,
        })
    }
}
