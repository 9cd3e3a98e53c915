//! Compute ops for marc.
//!
//! Every op validates its arguments once in `ops/<op>/mod.rs` and then runs its CPU implementation
//! (`cpu.rs`). The model's forward pass is written against [`backend::Backend`], the op interface
//! both backends implement: [`backend::cpu`] on these ops, [`cuda::backend`] on the kernels of
//! `kernels/cuda/` (its memory planned by [`cuda::plan`]).
//! Activations are `f32`; weights may be `f32`, `bf16` or `f16` and are widened in registers,
//! or FP8 E4M3 / NVFP4 (the codecs are in [`quant`]) and are decoded inside the GEMM.
//! All reductions run in a fixed order per output element, so results are bitwise identical
//! whatever the batch composition and the number of threads.

pub mod backend;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod quant;

pub use device::Device;
pub use dtype::{FloatType, WeightDType};
pub use error::KernelError;
pub use ops::matmul::{
    MatmulPrecision, PackedMatrix, matmul, matmul_precision, matmul_with_precision, set_matmul_precision,
};
pub use quant::{
    E2M1_VALUES, E4M3_MAX, NVFP4_BLOCK, e2m1_to_f32, e4m3_to_f32, f32_to_e2m1, f32_to_e4m3, nvfp4_decode,
    nvfp4_quantize, nvfp4_tensor_scale,
};
