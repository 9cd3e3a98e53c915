//! What the CUDA backend holds: weights in their own device allocations (made once, at load) and
//! activations carved from the workspace arena (never allocated per request).

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchArgs, PushKernelArg};

use crate::backend::Resident;
use crate::cuda::arena::{ArenaFull, StackArena};
use crate::dtype::FloatType;
use crate::ops::matmul::MatmulPrecision;

/// A device allocation made at load, with its address resolved once.
pub struct DeviceVec<T> {
    /// Keeps the memory alive; freed when the weight is dropped.
    _slice: CudaSlice<T>,
    /// Its device address.
    pub(super) ptr: u64,
    /// Elements.
    pub(super) len: usize,
}

impl<T: DeviceRepr> DeviceVec<T> {
    /// Copies `values` to the device.
    pub(super) fn upload(stream: &Arc<CudaStream>, values: &[T]) -> Result<Self, cudarc::driver::DriverError> {
        Ok(Self::from_slice(stream, stream.clone_htod(values)?))
    }

    /// Holds `slice`, an allocation made on `stream`.
    pub(super) fn from_slice(stream: &Arc<CudaStream>, slice: CudaSlice<T>) -> Self {
        // Event tracking is off (one stream), so the guard records nothing.
        let ptr = slice.device_ptr(stream).0;
        Self {
            len: slice.len(),
            _slice: slice,
            ptr,
        }
    }
}

impl<T> Resident for DeviceVec<T> {
    fn size_in_bytes(&self) -> usize {
        self.len * size_of::<T>()
    }
}

/// An f32 parameter on the device.
pub type CudaVector = DeviceVec<f32>;

/// A Linear layer's weight on the device, in the format the checkpoint stores it (checked by
/// `gemm::gemm_weight`).
pub(super) enum CudaWeight {
    /// Float values (bf16, f16 or f32), row-major, as little-endian bytes.
    Float { dtype: FloatType, values: DeviceVec<u8> },
    /// E4M3 codes, row-major, and the tensor scale.
    Fp8 { codes: DeviceVec<u8>, scale: f32 },
    /// NVFP4 nibbles and E4M3 block scales as stored, the tensor scale, and the input scale of a
    /// layer that runs W4A4.
    Nvfp4 {
        packed: DeviceVec<u8>,
        block_scales: DeviceVec<u8>,
        tensor_scale: f32,
        input_scale: Option<f32>,
    },
}

impl CudaWeight {
    /// Pushes the weight's arguments of its GEMM kernel (the float GEMMs: the values;
    /// `gemm_fp8_f32`: codes and scale; the NVFP4 GEMMs: nibbles, block scales and tensor scale).
    pub(super) fn push_gemm_args<'a>(&'a self, a: &mut LaunchArgs<'a>) {
        match self {
            CudaWeight::Float { values, .. } => {
                a.arg(&values.ptr);
            }
            CudaWeight::Fp8 { codes, scale } => {
                a.arg(&codes.ptr).arg(scale);
            }
            CudaWeight::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                ..
            } => {
                a.arg(&packed.ptr).arg(&block_scales.ptr).arg(tensor_scale);
            }
        }
    }
}

impl Resident for CudaWeight {
    fn size_in_bytes(&self) -> usize {
        match self {
            CudaWeight::Float { values, .. } => values.size_in_bytes(),
            CudaWeight::Fp8 { codes, .. } => codes.size_in_bytes(),
            CudaWeight::Nvfp4 {
                packed, block_scales, ..
            } => packed.size_in_bytes() + block_scales.size_in_bytes(),
        }
    }
}

/// A Linear layer on the device: its weight `[rows, cols]`, optional f32 bias.
pub struct CudaLinear {
    pub(super) weight: CudaWeight,
    pub(super) bias: Option<CudaVector>,
    pub(super) rows: usize,
    pub(super) cols: usize,
    pub(super) precision: MatmulPrecision,
}

impl Resident for CudaLinear {
    fn size_in_bytes(&self) -> usize {
        self.weight.size_in_bytes() + self.bias.as_ref().map_or(0, Resident::size_in_bytes)
    }
}

/// The embedding table on the device, bf16 or f32.
pub struct CudaEmbedding {
    pub(super) table: DeviceVec<u8>,
    pub(super) bf16: bool,
    pub(super) rows: usize,
    pub(super) width: usize,
}

impl Resident for CudaEmbedding {
    fn size_in_bytes(&self) -> usize {
        self.table.size_in_bytes()
    }
}

/// One projection of every routed expert of an MoE block, stacked `[experts, n, k]` for the
/// grouped GEMM, in the format the checkpoint stores the experts in.
// Two per MoE block, made once at load and never moved on a hot path: the size gap costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum StackedExperts {
    /// Float values (`grouped_gemm_bf16_f32`, `_f16_f32`, `_f32_f32`).
    Float { dtype: FloatType, values: DeviceVec<u8> },
    /// E4M3 codes (`grouped_gemm_fp8_f32`) and one weight scale per expert.
    Fp8 { codes: DeviceVec<u8>, scales: CudaVector },
    /// NVFP4 (`grouped_gemm_nvfp4_w4a16_f32`, or `_w4a4_f32` when every expert has an input
    /// scale): nibbles `[E, n, k / 2]`, block scales `[E, n, k / 16]`, one tensor scale (and input
    /// scale) per expert.
    Nvfp4 {
        packed: DeviceVec<u8>,
        block_scales: DeviceVec<u8>,
        tensor_scales: CudaVector,
        input_scales: Option<CudaVector>,
    },
}

impl Resident for StackedExperts {
    fn size_in_bytes(&self) -> usize {
        match self {
            StackedExperts::Float { values, .. } => values.size_in_bytes(),
            StackedExperts::Fp8 { codes, scales } => codes.size_in_bytes() + scales.size_in_bytes(),
            StackedExperts::Nvfp4 {
                packed,
                block_scales,
                tensor_scales,
                input_scales,
            } => {
                packed.size_in_bytes()
                    + block_scales.size_in_bytes()
                    + tensor_scales.size_in_bytes()
                    + input_scales.as_ref().map_or(0, Resident::size_in_bytes)
            }
        }
    }
}

/// The routed experts of an MoE block, stacked for the grouped GEMMs: up `[experts, inter, width]`,
/// down `[experts, width, inter]`.
pub struct CudaExperts {
    pub(super) up: StackedExperts,
    pub(super) down: StackedExperts,
    pub(super) experts: usize,
    pub(super) inter: usize,
    pub(super) width: usize,
    pub(super) precision: MatmulPrecision,
}

impl Resident for CudaExperts {
    fn size_in_bytes(&self) -> usize {
        self.up.size_in_bytes() + self.down.size_in_bytes()
    }
}

/// A range of the workspace arena, returned to it when dropped.
pub(super) struct ArenaBuf {
    arena: Arc<Mutex<StackArena>>,
    offset: usize,
    /// Its device address.
    pub(super) ptr: u64,
}

impl ArenaBuf {
    /// Carves `bytes` from the arena whose device memory starts at `base`.
    pub(super) fn take(arena: &Arc<Mutex<StackArena>>, base: u64, bytes: usize) -> Result<Self, ArenaFull> {
        let offset = arena.lock().unwrap_or_else(PoisonError::into_inner).alloc(bytes)?;
        Ok(Self {
            arena: Arc::clone(arena),
            offset,
            ptr: base + offset as u64,
        })
    }
}

impl Drop for ArenaBuf {
    fn drop(&mut self) {
        self.arena
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .free(self.offset);
    }
}

/// Activations: `len` f32s in the arena.
pub struct CudaTensor {
    pub(super) buf: ArenaBuf,
    pub(super) len: usize,
}

impl CudaTensor {
    /// Its device address.
    pub(super) fn ptr(&self) -> u64 {
        self.buf.ptr
    }
}

/// A packed batch on the device: token ids and `cu_seqlens` as i32, and the sizes launches need.
pub struct CudaBatch {
    pub(super) ids: ArenaBuf,
    pub(super) cu_seqlens: ArenaBuf,
    pub(super) tokens: usize,
    pub(super) sequences: usize,
    /// The longest sequence (attention's grid).
    pub(super) max_len: usize,
}
