//! The marc gRPC API, package `marc.v1` (`marc/v1/embedder.proto` in this crate): the prost messages and the
//! tonic client ([`marc::v1::embedder_client::EmbedderClient`]) and server
//! ([`marc::v1::embedder_server::EmbedderServer`]) for the `marc.v1.Embedder` service, generated at build time
//! from the `.proto` by `build.rs` (protox, no system `protoc`).
//!
//! The generated code is held to the workspace lints like hand-written code: a message, field, enum value or
//! method without a comment in the `.proto` fails `missing_docs`.

/// Generated code, one module per protobuf package.
pub mod marc {
    /// Package `marc.v1`: the `Embedder` service and its messages.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/marc.v1.rs"));
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of `marc/v1/embedder.proto`, comments included, for gRPC
/// server reflection (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/marc_descriptor.bin"));

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, ...), as the server's metric labels
/// and the load tester's reports name it.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
