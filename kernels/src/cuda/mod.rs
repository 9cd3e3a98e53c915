//! The CUDA side of the kernels: their sources (`kernels/cuda/*.cu`, embedded in the binary), NVRTC
//! compilation for the device's architecture, and an on-disk PTX cache so a server compiles each
//! kernel file once per source version and architecture.
//!
//! The kernels are verified without a GPU by the `marc-kernels-verify` crate (`kernels/verify`):
//! the same [`sources`] compile for `sm_90a` / `sm_100a` with no spills, and run on the CPU through
//! the SIMT emulation against the CPU ops. Loading the PTX into a CUDA context and launching it
//! (cudarc's `load_module` / `launch_builder`) is the next step; see docs/gpu.md for what is done.

pub mod arena;
pub mod backend;
pub mod nvrtc;
pub mod plan;
pub mod ptx_cache;
pub mod sources;
