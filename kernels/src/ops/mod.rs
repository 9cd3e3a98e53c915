//! Ops, one folder each: `mod.rs` validates the arguments once and dispatches to `cpu.rs`.
//!
//! The packed variable-length sequence ops ([`mod@causal_conv1d`], [`mod@ssd_scan`],
//! [`mod@attention`]) take a batch as its sequences' tokens concatenated, with `cu_seqlens` marking
//! where each one starts.

pub mod activation;
pub mod attention;
pub mod causal_conv1d;
pub mod matmul;
pub mod moe_route;
pub mod norm;
pub mod seq_error;
mod seq_gemm;
mod seq_math;
pub mod ssd_scan;
mod varlen;

pub use attention::{AttentionShape, causal_attention};
pub use causal_conv1d::causal_conv1d_silu;
pub use seq_error::SeqOpError;
pub use ssd_scan::{SsdShape, ssd_scan, ssd_scan_xbc};
