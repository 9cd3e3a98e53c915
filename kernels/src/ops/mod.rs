//! The ops. Each folder is one op: `mod.rs` validates and dispatches, `cpu.rs` computes.

pub mod activation;
pub mod norm;
