//! Ops, one folder each: `mod.rs` validates arguments and dispatches to a backend file.

pub mod activation;
pub mod matmul;
pub mod norm;
