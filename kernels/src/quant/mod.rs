//! Low-precision number formats: the codecs of NVIDIA's FP8 and NVFP4 checkpoints.
//!
//! - [`e4m3`]: FP8 E4M3 (`float8_e4m3fn`), the element type of FP8 weights and the block scale
//!   of NVFP4.
//! - [`e2m1`]: FP4 E2M1, the element type of NVFP4.
//! - [`nvfp4`]: the two-level NVFP4 block quantiser (16-element blocks, E4M3 block scales, one
//!   f32 tensor scale) with ModelOpt's rules, for weights (`marc quantize`) and for activations
//!   (the W4A4 matmul), and its decoder.
//!
//! The matmul kernels decode these formats themselves, inside the GEMM (see
//! `ops/matmul/nvfp4.rs`); the functions here are the reference definitions they are tested
//! against, and what code outside the kernels (loading, quantising) uses.

pub mod e2m1;
pub mod e4m3;
pub mod nvfp4;

pub use e2m1::{E2M1_VALUES, e2m1_to_f32, f32_to_e2m1};
pub use e4m3::{E4M3_MAX, e4m3_is_nan, e4m3_to_f32, f32_to_e4m3};
pub use nvfp4::{NVFP4_BLOCK, nvfp4_decode, nvfp4_quantize, nvfp4_tensor_scale};
