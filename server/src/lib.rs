//! The library side of the `marc` binary: the gRPC embedding server behind `marc serve` ([`serve::run`]), a
//! library target so integration tests can start it in process on an ephemeral port.

pub mod serve;
