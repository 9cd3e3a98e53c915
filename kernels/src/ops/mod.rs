//! Ops, one folder each: `mod.rs` validates arguments and dispatches to a backend file.

pub mod matmul;
