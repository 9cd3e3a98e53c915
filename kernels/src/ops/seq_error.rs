//! Errors of the packed variable-length sequence ops (`causal_conv1d`, `ssd_scan`, `attention`).
//!
//! Every variant names the offending argument, what was expected and what was found, so a caller
//! can fix the call without reading this crate. It will be folded into the crate-wide error later.

use thiserror::Error;

/// Why a packed sequence op refused its arguments. Nothing is written to the output on error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeqOpError {
    /// `cu_seqlens` has no entries; it needs `num_seqs + 1` of them, at least one.
    #[error("cu_seqlens: expected at least 1 entry (num_seqs + 1), found 0")]
    CuSeqlensEmpty,
    /// `cu_seqlens[0]` is not 0.
    #[error("cu_seqlens[0]: expected 0, found {found}")]
    CuSeqlensStart {
        /// The value found at index 0.
        found: usize,
    },
    /// `cu_seqlens` decreases at `index`.
    #[error("cu_seqlens[{index}]: expected >= {previous} (non-decreasing), found {found}")]
    CuSeqlensDecreasing {
        /// Index of the first entry smaller than its predecessor.
        index: usize,
        /// The predecessor's value.
        previous: usize,
        /// The value found.
        found: usize,
    },
    /// The last entry of `cu_seqlens` is not the number of tokens in the packed input.
    #[error("cu_seqlens[{index}] (last): expected {expected} (tokens in `{source_arg}`), found {found}")]
    CuSeqlensEnd {
        /// Index of the last entry.
        index: usize,
        /// Token count implied by the input named in `source_arg`.
        expected: usize,
        /// The value found.
        found: usize,
        /// The input the token count was derived from.
        source_arg: &'static str,
    },
    /// A slice has the wrong length.
    #[error("`{arg}`: expected length {expected}, found {found}")]
    Length {
        /// The argument.
        arg: &'static str,
        /// The length it must have.
        expected: usize,
        /// The length it has.
        found: usize,
    },
    /// A packed input's length is not a whole number of rows.
    #[error("`{arg}`: expected a length that is a multiple of the row width {row_width}, found {found}")]
    NotWholeRows {
        /// The argument.
        arg: &'static str,
        /// Elements per token.
        row_width: usize,
        /// The length it has.
        found: usize,
    },
    /// A shape field must divide another one.
    #[error("`{arg}`: expected a multiple of `{divisor_arg}` = {divisor}, found {found}")]
    NotDivisible {
        /// The field that must be a multiple.
        arg: &'static str,
        /// The field that must divide it.
        divisor_arg: &'static str,
        /// Value of `divisor_arg`.
        divisor: usize,
        /// Value of `arg`.
        found: usize,
    },
    /// A shape field is zero where a positive size is required.
    #[error("`{arg}`: expected a positive size, found 0")]
    Zero {
        /// The field.
        arg: &'static str,
    },
    /// A size computed from the arguments does not fit in `usize`.
    #[error("`{arg}`: expected size overflows usize")]
    Overflow {
        /// The argument whose expected size overflowed.
        arg: &'static str,
    },
}
