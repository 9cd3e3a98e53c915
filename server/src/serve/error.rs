//! The server's domain error: what can go wrong with a request, independent of the transport.
//! `grpc/status.rs` is the one place it becomes a gRPC status.

/// Why a request got no embeddings.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// The request breaks a documented rule; the message names the field and the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The queue is full; retry later.
    #[error("{0}")]
    Overloaded(String),
    /// As many requests as `--max-concurrent-requests` are being served; retry later.
    #[error("{0}")]
    TooManyRequests(String),
    /// The request's deadline passed before its compute started.
    #[error("the deadline passed while the request was queued")]
    DeadlineExceeded,
    /// The model is still loading and warming up (health says NOT_SERVING).
    #[error("the model is still loading; health reports SERVING once it is ready")]
    Loading,
    /// The server is draining after a shutdown signal: it takes no new work.
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown,
    /// The drain timeout passed before this request finished.
    #[error("the server's drain timeout passed before the request finished; retry on another replica")]
    DrainTimeout,
    /// A bug or a broken model: details go to the log, not to the client.
    #[error("internal error: {0}")]
    Internal(String),
}
