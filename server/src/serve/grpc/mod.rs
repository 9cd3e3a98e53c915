//! The gRPC face: the `marc.v1.Embedder` service, proto <-> domain conversion and the status mapping.

pub(crate) mod convert;
pub(crate) mod service;
pub(crate) mod status;
