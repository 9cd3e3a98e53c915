//! The one place a [`ServeError`] becomes a `tonic::Status`, and gRPC codes become metric labels.

use tonic::{Code, Status};

use crate::serve::error::ServeError;

/// The status a client sees for `error`; internal details stay in the log.
pub(crate) fn to_status(error: &ServeError) -> Status {
    match error {
        ServeError::InvalidArgument(m) => Status::invalid_argument(m.clone()),
        ServeError::Overloaded(m) | ServeError::TooManyRequests(m) => Status::resource_exhausted(m.clone()),
        ServeError::DeadlineExceeded => Status::deadline_exceeded(error.to_string()),
        ServeError::Loading | ServeError::ShuttingDown | ServeError::DrainTimeout => {
            Status::unavailable(error.to_string())
        }
        ServeError::Internal(m) => {
            tracing::error!(error = %m, "internal error");
            Status::internal("internal error; the server log has the details")
        }
    }
}

/// The `reason` label of `marc_rejected_total` for `error`, if it counts as a rejection.
pub(crate) fn rejection_reason(error: &ServeError) -> Option<&'static str> {
    match error {
        ServeError::InvalidArgument(_) => Some("invalid"),
        ServeError::Overloaded(_) => Some("queue_full"),
        ServeError::TooManyRequests(_) => Some("concurrency"),
        ServeError::DeadlineExceeded => Some("deadline"),
        ServeError::Loading => Some("loading"),
        ServeError::ShuttingDown => Some("shutting_down"),
        ServeError::DrainTimeout => Some("drain_timeout"),
        ServeError::Internal(_) => None,
    }
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...), as used in metric labels.
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
