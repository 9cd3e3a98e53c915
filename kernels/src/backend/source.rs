//! Weights as a checkpoint stores them, borrowed from it, for a backend to take in its own layout.

use std::sync::Arc;

use super::InputObserver;
use crate::dtype::{FloatType, WeightDType};
use crate::error::KernelError;
use crate::ops::matmul::{MatmulPrecision, PackedMatrix};

/// The bytes of a weight matrix in one of the stored formats (little-endian, row-major).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightData<'a> {
    /// F32, BF16 or F16 elements.
    Float {
        /// The element type.
        dtype: FloatType,
        /// `rows * cols` elements.
        bytes: &'a [u8],
    },
    /// FP8 E4M3 with one f32 scale per tensor.
    Fp8 {
        /// `rows * cols` E4M3 codes.
        bytes: &'a [u8],
        /// The tensor scale.
        scale: f32,
    },
    /// NVFP4: E2M1 nibbles, E4M3 block scales per 16 inputs and an f32 tensor scale.
    Nvfp4 {
        /// `[rows, cols / 2]`, element `2i` of a row in the low nibble of byte `i`.
        packed: &'a [u8],
        /// `[rows, cols / 16]` E4M3 codes.
        block_scales: &'a [u8],
        /// ModelOpt's `weight_scale_2`.
        tensor_scale: f32,
        /// The static activation scale W4A4 quantises with, kept only when that mode is asked.
        input_scale: Option<f32>,
    },
}

impl WeightData<'_> {
    /// The element type, as the kernels name it.
    pub fn dtype(&self) -> WeightDType {
        match self {
            Self::Float { dtype, .. } => dtype.weight_dtype(),
            Self::Fp8 { .. } => WeightDType::F8E4M3,
            Self::Nvfp4 { .. } => WeightDType::NVFP4,
        }
    }
}

/// A weight matrix `[rows, cols]` as stored.
#[derive(Clone, Copy, Debug)]
pub struct WeightSource<'a> {
    /// Rows (`out_features`, or the vocabulary of an embedding).
    pub rows: usize,
    /// Columns (`in_features`, or the hidden size).
    pub cols: usize,
    /// The stored bytes.
    pub data: WeightData<'a>,
}

impl WeightSource<'_> {
    /// Packs the weight for the CPU GEMM, in its own format.
    pub fn pack(&self) -> Result<PackedMatrix, KernelError> {
        let (rows, cols) = (self.rows, self.cols);
        match self.data {
            WeightData::Float { dtype, bytes } => PackedMatrix::from_bytes(dtype.weight_dtype(), rows, cols, bytes),
            WeightData::Fp8 { bytes, scale } => PackedMatrix::from_fp8_e4m3(rows, cols, bytes, scale),
            WeightData::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                input_scale,
            } => PackedMatrix::from_nvfp4(rows, cols, packed, block_scales, tensor_scale, input_scale),
        }
    }
}

/// A Linear layer as stored: its weight, its bias, how its GEMM treats activations, and who
/// watches its inputs.
#[derive(Clone, Debug)]
pub struct LinearSource<'a> {
    /// `[out, in]`.
    pub weight: WeightSource<'a>,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
    /// The GEMM's precision.
    pub precision: MatmulPrecision,
    /// Where its inputs are reported, in a model loaded for calibration.
    pub observer: Option<Arc<dyn InputObserver>>,
}
