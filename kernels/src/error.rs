//! The error every op returns when its arguments do not fit together.

/// Why an op refused its arguments. Ops validate once, before any work, so a returned error
/// means nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// An argument has the wrong length or shape.
    #[error("{op}: `{arg}` has {found} elements, expected {expected}")]
    Shape {
        /// The op.
        op: &'static str,
        /// The argument.
        arg: &'static str,
        /// The length the other arguments imply.
        expected: usize,
        /// The length passed.
        found: usize,
    },
}

/// Checks one slice length.
pub(crate) fn check_len(op: &'static str, arg: &'static str, found: usize, expected: usize) -> Result<(), KernelError> {
    if found == expected {
        Ok(())
    } else {
        Err(KernelError::Shape { op, arg, expected, found })
    }
}
