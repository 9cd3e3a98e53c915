//! The one place a [`ServeError`] becomes a `tonic::Status`, and gRPC codes become metric labels.

use tonic::Status;

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
pub(crate) use marc_proto::code_name;
