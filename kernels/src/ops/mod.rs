//! Ops, one folder each: `mod.rs` validates the arguments once and dispatches to `cpu.rs`.
//!
//! The packed variable-length sequence ops take a batch as its sequences' tokens concatenated, with
//! `cu_seqlens` marking where each one starts.

pub mod causal_conv1d;
pub mod seq_error;
#[allow(dead_code)] // Used by the sequence ops that follow.
mod seq_gemm;
#[allow(dead_code)] // Used by the sequence ops that follow.
mod seq_math;
#[allow(dead_code)] // Used by the sequence ops that follow.
mod varlen;

pub use causal_conv1d::causal_conv1d_silu;
pub use seq_error::SeqOpError;
