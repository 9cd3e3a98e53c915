//! The CUDA side of the kernels: their sources (`kernels/cuda/*.cu`, embedded in the binary), NVRTC
//! compilation for the device's architecture, an on-disk PTX cache so a server compiles each
//! kernel file once per source version and architecture, and the CUDA backend: its device memory
//! plan ([`plan`], [`arena`]) and its host side ([`backend`]).
//!
//! The kernels are verified without a GPU by the `marc-kernels-verify` crate (`kernels/verify`):
//! the same [`sources`] compile for `sm_90a` / `sm_100a` with no spills, and run on the CPU through
//! the SIMT emulation against the CPU ops. The host side has not run on a GPU (none here); see
//! docs/gpu.md for what is done and which kernels it still waits for.

pub mod arena;
pub mod backend;
pub mod nvrtc;
pub mod plan;
pub mod ptx_cache;
pub mod sources;
