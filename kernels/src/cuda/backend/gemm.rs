//! GEMMs on the bf16 kernels: the weight format they take, and activations staged to bf16 (three
//! exact parts, or one rounded) around each call.

use cudarc::driver::PushKernelArg;

use super::Cuda;
use super::launch::int;
use super::memory::CudaTensor;
use crate::backend::{WeightData, WeightSource};
use crate::dtype::FloatType;
use crate::error::{KernelError, check_len};
use crate::ops::matmul::MatmulPrecision;

/// A GEMM weight as `gemm_bf16_f32` reads it: bf16 bits, row-major. Other stored formats have no
/// CUDA GEMM yet and are refused, naming the format.
pub(super) fn gemm_weight_bits(weight: &WeightSource<'_>) -> Result<Vec<u16>, KernelError> {
    const OP: &str = "cuda linear";
    let WeightData::Float {
        dtype: FloatType::BF16,
        bytes,
    } = weight.data
    else {
        return Err(KernelError::Unsupported {
            op: OP,
            reason: format!(
                "a {} weight has no CUDA GEMM yet (gemm_bf16_f32 takes BF16 weights); run this model with \
                 --device cpu",
                weight.data.dtype()
            ),
        });
    };
    check_len(OP, "weight bytes", bytes.len(), weight.rows * weight.cols * 2)?;
    Ok(bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect())
}

impl Cuda {
    /// Runs `gemm(a, with_bias, out)` — a GEMM reading bf16 rows from `a` — on `x` (`rows x cols`
    /// f32 at `x_ptr`) into `out` (`out_len` floats) per `precision`: on x rounded to bf16, or,
    /// exact, on each of its three bf16 parts, summing the three products.
    pub(super) fn staged_gemm(
        &self,
        op: &'static str,
        x_ptr: u64,
        x_len: usize,
        out: &CudaTensor,
        precision: MatmulPrecision,
        gemm: impl Fn(u64, bool, u64) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let n: i32 = int(op, "x", x_len)?;
        match precision {
            MatmulPrecision::Bf16Activations => {
                let staged = self.scratch(op, x_len * 2)?;
                self.launch(op, &self.kernels.round_bf16_f32, self.elementwise(x_len)?, |a| {
                    a.arg(&x_ptr).arg(&n).arg(&staged.ptr);
                })?;
                gemm(staged.ptr, true, out.ptr())
            }
            MatmulPrecision::Exact => {
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
            MatmulPrecision::Nvfp4Activations => Err(KernelError::Unsupported {
                op,
                reason: "NVFP4 activations (W4A4) have no CUDA GEMM yet".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_weights_must_be_bf16_and_others_are_refused_by_format() {
        let bytes = [0x80, 0x3f, 0x00, 0xc0];
        let bf16 = WeightSource {
            rows: 1,
            cols: 2,
            data: WeightData::Float {
                dtype: FloatType::BF16,
                bytes: &bytes,
            },
        };
        assert_eq!(gemm_weight_bits(&bf16).unwrap(), vec![0x3f80, 0xc000]);
        let short = WeightSource { cols: 3, ..bf16 };
        assert!(matches!(
            gemm_weight_bits(&short),
            Err(KernelError::LengthMismatch { .. })
        ));
        let scales = [0x38u8];
        for (data, name) in [
            (
                WeightData::Float {
                    dtype: FloatType::F32,
                    bytes: &bytes,
                },
                "F32",
            ),
            (
                WeightData::Fp8 {
                    bytes: &bytes,
                    scale: 1.0,
                },
                "F8_E4M3",
            ),
            (
                WeightData::Nvfp4 {
                    packed: &bytes,
                    block_scales: &scales,
                    tensor_scale: 1.0,
                    input_scale: None,
                },
                "NVFP4",
            ),
        ] {
            let err = gemm_weight_bits(&WeightSource { data, ..bf16 })
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("a {name} weight has no CUDA GEMM")), "{err}");
        }
    }
}
