//! The weight formats the CUDA GEMMs take (f32, bf16, f16, FP8 E4M3, NVFP4), and for the bf16
//! kernels the activations staged to bf16 (three exact parts, or one rounded) around each call.

use cudarc::driver::{CudaFunction, PushKernelArg};

use super::Cuda;
use super::launch::int;
use super::memory::CudaTensor;
use crate::backend::{WeightData, WeightSource};
use crate::dtype::FloatType;
use crate::error::{KernelError, check_len};
use crate::ops::matmul::MatmulPrecision;
use crate::quant::nvfp4::NVFP4_BLOCK;

/// `weight`'s data as the CUDA GEMMs read it (each takes its format as stored: bf16 rows for
/// `gemm_bf16_f32`, f32 and f16 rows for `gemm_f32_f32` / `gemm_f16_f32`, E4M3 rows for
/// `gemm_fp8_f32`, NVFP4 nibbles and block scales for the NVFP4 GEMMs), its sizes checked. A
/// layer runs W4A4, as on the CPU, when its precision asks for NVFP4 activations and the
/// checkpoint holds an input scale: the input scale is kept only then.
pub(super) fn gemm_weight<'a>(
    weight: &WeightSource<'a>,
    precision: MatmulPrecision,
) -> Result<WeightData<'a>, KernelError> {
    const OP: &str = "cuda linear";
    let (rows, cols) = (weight.rows, weight.cols);
    match weight.data {
        WeightData::Float { dtype, bytes } => {
            check_len(OP, "weight bytes", bytes.len(), rows * cols * dtype.size_in_bytes()).map(|()| weight.data)
        }
        WeightData::Fp8 { bytes, .. } => {
            check_len(OP, "FP8 weight bytes", bytes.len(), rows * cols).map(|()| weight.data)
        }
        WeightData::Nvfp4 {
            packed,
            block_scales,
            tensor_scale,
            input_scale,
        } => {
            if !cols.is_multiple_of(NVFP4_BLOCK) {
                return Err(KernelError::InvalidShape {
                    op: OP,
                    reason: format!("an NVFP4 weight of {cols} columns (a multiple of {NVFP4_BLOCK} is needed)"),
                });
            }
            check_len(OP, "NVFP4 nibble bytes", packed.len(), rows * cols / 2)?;
            check_len(OP, "NVFP4 block scales", block_scales.len(), rows * cols / NVFP4_BLOCK)?;
            Ok(WeightData::Nvfp4 {
                packed,
                block_scales,
                tensor_scale,
                input_scale: input_scale.filter(|_| precision == MatmulPrecision::Nvfp4Activations),
            })
        }
    }
}

/// What a GEMM kernel reads as its activations.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Activations {
    /// bf16 rows (`gemm_bf16_f32`): x is staged to bf16 before the call.
    Bf16,
    /// f32 rows, rounded to bf16 (nearest even) as the kernel stages them (`gemm_fp8_f32`,
    /// `gemm_nvfp4_w4a16_f32`).
    F32,
    /// f32 rows multiplied in f32 (`gemm_f32_f32`, `gemm_f16_f32`): one call at every precision,
    /// as the CPU runs float weights other than bf16 exactly whatever the precision.
    F32Exact,
}

impl Cuda {
    /// The GEMM for `dtype` weights (the routed experts' grouped one when `grouped`) and what it
    /// reads: bf16 on the tensor cores, f32 and f16 in f32 on the CUDA cores (gemm_float.cu).
    pub(super) fn float_gemm(&self, dtype: FloatType, grouped: bool) -> (&CudaFunction, Activations) {
        let k = &self.kernels;
        match (dtype, grouped) {
            (FloatType::BF16, false) => (&k.gemm_bf16_f32, Activations::Bf16),
            (FloatType::BF16, true) => (&k.grouped_gemm_bf16_f32, Activations::Bf16),
            (FloatType::F16, false) => (&k.gemm_f16_f32, Activations::F32Exact),
            (FloatType::F16, true) => (&k.grouped_gemm_f16_f32, Activations::F32Exact),
            (FloatType::F32, false) => (&k.gemm_f32_f32, Activations::F32Exact),
            (FloatType::F32, true) => (&k.grouped_gemm_f32_f32, Activations::F32Exact),
        }
    }

    /// Runs `gemm(a, with_bias, out)` — a GEMM reading `reads` rows from `a` — on `x` (f32 at
    /// `x_ptr`, `x_len` values) into `out` per `precision`: on x rounded to bf16 (one call), or,
    /// exact, on each of its three bf16 parts (`hi + mid + lo == x`; each part times a bf16-exact
    /// weight is exact in f32), summing `hi·W (+ bias)`, then `+ mid·W`, then `+ lo·W`. A kernel
    /// that reads f32 gets the parts as f32, which its bf16 staging leaves unchanged.
    pub(super) fn staged_gemm(
        &self,
        op: &'static str,
        (x_ptr, x_len): (u64, usize),
        out: &CudaTensor,
        precision: MatmulPrecision,
        reads: Activations,
        gemm: impl Fn(u64, bool, u64) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let n: i32 = int(op, "x", x_len)?;
        match (precision, reads) {
            (_, Activations::F32Exact) => gemm(x_ptr, true, out.ptr()),
            (MatmulPrecision::Bf16Activations, Activations::F32) => gemm(x_ptr, true, out.ptr()),
            (MatmulPrecision::Bf16Activations, Activations::Bf16) => {
                let staged = self.scratch(op, x_len * 2)?;
                self.launch(op, &self.kernels.round_bf16_f32, self.elementwise(x_len)?, |a| {
                    a.arg(&x_ptr).arg(&n).arg(&staged.ptr);
                })?;
                gemm(staged.ptr, true, out.ptr())
            }
            // No float weight has an NVFP4-activation GEMM: as on the CPU, they run exact in a W4A4 model.
            (MatmulPrecision::Exact | MatmulPrecision::Nvfp4Activations, Activations::Bf16) => {
                let parts = self.scratch(op, x_len * 2 * 3)?;
                let part = |i: u64| parts.ptr + i * x_len as u64 * 2;
                let (hi, mid, lo) = (part(0), part(1), part(2));
                self.launch(op, &self.kernels.split_bf16x3_f32, self.elementwise(x_len)?, |a| {
                    a.arg(&x_ptr).arg(&n).arg(&hi).arg(&mid).arg(&lo);
                })?;
                let partials = self.tensor(op, out.len * 2)?;
                let second = partials.ptr() + out.len as u64 * 4;
                gemm(hi, true, out.ptr())?;
                gemm(mid, false, partials.ptr())?;
                gemm(lo, false, second)?;
                self.add_raw(out.ptr(), partials.ptr(), out.len)?;
                self.add_raw(out.ptr(), second, out.len)
            }
            // One f32 part at a time: a quarter of the staging memory of three.
            (MatmulPrecision::Exact | MatmulPrecision::Nvfp4Activations, Activations::F32) => {
                let part = self.scratch(op, x_len * 4)?;
                let partial = self.tensor(op, out.len)?;
                for i in 0..3i32 {
                    self.launch(op, &self.kernels.bf16_part_f32, self.elementwise(x_len)?, |a| {
                        a.arg(&x_ptr).arg(&n).arg(&i).arg(&part.ptr);
                    })?;
                    if i == 0 {
                        gemm(part.ptr, true, out.ptr())?;
                    } else {
                        gemm(part.ptr, false, partial.ptr())?;
                        self.add_raw(out.ptr(), partial.ptr(), out.len)?;
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(rows: usize, cols: usize, data: WeightData<'_>) -> WeightSource<'_> {
        WeightSource { rows, cols, data }
    }

    #[test]
    fn float_fp8_and_nvfp4_weights_are_taken_as_stored() {
        let bytes = [0x80, 0x3f, 0x00, 0xc0];
        for (dtype, cols) in [(FloatType::BF16, 2), (FloatType::F16, 2), (FloatType::F32, 1)] {
            let float = WeightData::Float { dtype, bytes: &bytes };
            assert_eq!(
                gemm_weight(&source(1, cols, float), MatmulPrecision::Exact).unwrap(),
                float
            );
        }
        let fp8 = WeightData::Fp8 {
            bytes: &bytes,
            scale: 0.5,
        };
        assert_eq!(gemm_weight(&source(2, 2, fp8), MatmulPrecision::Exact).unwrap(), fp8);
        let (packed, scales) = ([0x21u8; 16], [0x38u8; 2]);
        let nvfp4 = WeightData::Nvfp4 {
            packed: &packed,
            block_scales: &scales,
            tensor_scale: 0.25,
            input_scale: Some(0.125),
        };
        // W4A4 only when the precision asks for it; the input scale is dropped otherwise.
        for (precision, input_scale) in [
            (MatmulPrecision::Nvfp4Activations, Some(0.125)),
            (MatmulPrecision::Exact, None),
        ] {
            assert_eq!(
                gemm_weight(&source(2, 16, nvfp4), precision).unwrap(),
                WeightData::Nvfp4 {
                    packed: &packed,
                    block_scales: &scales,
                    tensor_scale: 0.25,
                    input_scale,
                }
            );
        }
    }

    #[test]
    fn wrong_sizes_are_refused() {
        let bytes = [0u8; 4];
        // 4 bytes: 2 bf16 or f16 values, 1 f32.
        for (dtype, cols) in [(FloatType::BF16, 3), (FloatType::F16, 3), (FloatType::F32, 2)] {
            let short = WeightData::Float { dtype, bytes: &bytes };
            assert!(matches!(
                gemm_weight(&source(1, cols, short), MatmulPrecision::Exact),
                Err(KernelError::LengthMismatch { .. })
            ));
        }
        let fp8 = WeightData::Fp8 {
            bytes: &bytes,
            scale: 1.0,
        };
        assert!(matches!(
            gemm_weight(&source(1, 3, fp8), MatmulPrecision::Exact),
            Err(KernelError::LengthMismatch { .. })
        ));
        let (packed, scales) = ([0u8; 16], [0x38u8; 2]);
        let nvfp4 = |block_scales| WeightData::Nvfp4 {
            packed: &packed,
            block_scales,
            tensor_scale: 1.0,
            input_scale: None,
        };
        assert!(matches!(
            gemm_weight(&source(2, 16, nvfp4(&scales[..1])), MatmulPrecision::Exact),
            Err(KernelError::LengthMismatch { .. })
        ));
        let err = gemm_weight(&source(4, 8, nvfp4(&scales)), MatmulPrecision::Exact).unwrap_err();
        assert!(err.to_string().contains("a multiple of 16"), "{err}");
    }
}
