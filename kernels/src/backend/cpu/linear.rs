//! The CPU backend's Linear layer and embedding table: weights kept in their stored format.

use std::sync::Arc;

use super::scratch::{self, Buffer};
use crate::backend::{InputObserver, Resident};
use crate::dtype::FloatType;
use crate::error::KernelError;
use crate::ops::matmul::{MatmulPrecision, PackedMatrix, matmul_with_precision};

/// A Linear layer: packed weight and optional bias.
pub struct Linear {
    /// `[out, in]`.
    pub weight: PackedMatrix,
    /// `[out]`.
    pub bias: Option<Vec<f32>>,
    /// How the GEMM treats activations: exact f32, the opt-in bf16 mode, or NVFP4 quantisation
    /// of the activations (W4A4, on NVFP4 weights with an input scale).
    pub precision: MatmulPrecision,
    /// Where the inputs are reported, in a model loaded for calibration.
    pub observer: Option<Arc<dyn InputObserver>>,
}

impl Linear {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    /// `y[m, out] = x[m, in] · Wᵀ + b`.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32]) -> Result<(), KernelError> {
        if let Some(observer) = &self.observer {
            observer.observe(x);
        }
        matmul_with_precision(x, m, &self.weight, self.bias.as_deref(), y, self.precision)
    }

    /// Like [`Linear::forward`], into a pooled buffer.
    pub fn apply(&self, x: &[f32], m: usize) -> Result<Buffer, KernelError> {
        let mut y = scratch::take(m * self.out_features());
        self.forward(x, m, &mut y)?;
        Ok(y)
    }
}

impl Resident for Linear {
    fn size_in_bytes(&self) -> usize {
        self.weight.size_in_bytes() + self.bias.as_ref().map_or(0, |b| b.len() * 4)
    }
}

/// An embedding table kept in the checkpoint's dtype; rows are widened when looked up.
pub struct EmbeddingTable {
    dtype: FloatType,
    width: usize,
    bytes: Vec<u8>,
}

impl EmbeddingTable {
    /// A table of rows of `width` elements of `dtype`, from their little-endian bytes.
    pub fn new(dtype: FloatType, width: usize, bytes: Vec<u8>) -> Result<Self, KernelError> {
        let row_bytes = width * dtype.size_in_bytes();
        if row_bytes == 0 || !bytes.len().is_multiple_of(row_bytes) {
            return Err(KernelError::InvalidShape {
                op: "embedding",
                reason: format!("{} bytes are not whole rows of {width} {dtype:?} values", bytes.len()),
            });
        }
        Ok(Self { dtype, width, bytes })
    }

    /// Number of rows (the vocabulary size).
    pub fn rows(&self) -> usize {
        self.bytes.len() / (self.width * self.dtype.size_in_bytes())
    }

    /// Width of a row.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Writes row `row` as f32 into `out` (`width` values). `row` must be `< rows()`.
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let size = self.dtype.size_in_bytes();
        let bytes = &self.bytes[row * self.width * size..(row + 1) * self.width * size];
        self.dtype.widen_into(bytes, out);
    }
}

impl Resident for EmbeddingTable {
    fn size_in_bytes(&self) -> usize {
        self.bytes.len()
    }
}
