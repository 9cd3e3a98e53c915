//! `y = x · wᵀ + bias`: the Linear layer.
//!
//! Activations `x` and outputs `y` are f32; weights are a [`PackedMatrix`] of f32, bf16 or f16
//! widened exactly in registers, or FP8 E4M3 / NVFP4 decoded exactly inside the GEMM (their
//! tensor scale multiplies each output once its sum is complete); accumulation is f32. [`matmul`] checks shapes once here and
//! hands over to the CPU implementation (`cpu.rs`, with one micro-kernel file per ISA).
//!
//! Results are bitwise reproducible: row `i` of `y` depends only on row `i` of `x`, never on
//! `m`, on where the row sits in the batch or on the thread count (see `cpu.rs` and `amx.rs`
//! for how). The AVX-512, AVX2 and scalar paths also give each other's bits; the AMX path
//! (bf16 weights on CPUs with AMX, the default there) sums in its own fixed order.
//!
//! Layout of the CPU implementation:
//! - `packed.rs`: [`PackedMatrix`], weights in 32-column k-major panels, in their own dtype.
//! - `xpack.rs`: x packed into k-major tiles of `MR` rows.
//! - `cpu.rs`: ISA choice (runtime detection; `MARC_MATMUL_ISA=avx512|avx2|scalar` forces a
//!   slower path), cache blocking and the rayon split.
//! - `amx.rs`: the AMX path for bf16 weights (own packing of x and weights, own split).
//! - `avx512.rs` (12 x 32 register tile), `avx2.rs` (6 x 16), `scalar.rs` (`f32::mul_add`).
//! - `nvfp4.rs`: NVFP4 weights with f32 activations (W4A16): the order of operations and the
//!   portable kernel; the SIMD ones sit with their ISA.
//! - `w4a4.rs`: NVFP4 weights times NVFP4-quantised activations
//!   ([`MatmulPrecision::Nvfp4Activations`]); `w4a4_vnni.rs`: its block products in 8-bit
//!   integers on AVX-512 VNNI.
//!
//! There is deliberately no bf16-activation mode built on `vdpbf16ps`: on the Sapphire Rapids
//! machines this was written on, `vdpbf16ps zmm` issues one per ~2 cycles (measured: ~110
//! GFLOP/s per core against ~240 for f32 `vfmadd231ps`), so it would be slower than the exact
//! f32 path it was meant to speed up. The opt-in bf16 mode ([`MatmulPrecision`]) is AMX only.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod cpu;
mod nvfp4;
mod packed;
mod scalar;
#[cfg(test)]
mod tests;
mod w4a4;
#[cfg(target_arch = "x86_64")]
mod w4a4_vnni;
mod xpack;

pub use packed::PackedMatrix;

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::KernelError;

/// What happens to the f32 activations before they meet the weights.
///
/// Each variant applies to some weights only; every other matrix runs as [`Self::Exact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// Activations stay f32 and every product is exact (weights of every type are decoded
    /// exactly): the accuracy of an f32 dot product. On the AMX path (bf16 weights) each
    /// activation is split exactly into three bf16 parts. The default; for NVFP4 weights this
    /// is W4A16.
    #[default]
    Exact,
    /// bf16 weights on the AMX path: activations rounded to bf16 (nearest-even) before
    /// multiplying: 3x fewer AMX tile multiplies, relative error about 2^-9 per activation.
    /// Opt-in only.
    Bf16Activations,
    /// NVFP4 weights that carry an `input_scale` (W4A4): each activation row is quantised to
    /// NVFP4 with that static scale and multiplied as Blackwell's block-scaled FP4 tensor cores
    /// do (see `ops/matmul/w4a4.rs` for the exact order of operations).
    Nvfp4Activations,
}

/// The process-wide precision used by [`matmul`] (the discriminant of a [`MatmulPrecision`]).
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets the precision [`matmul`] uses from now on, in every thread (default
/// [`MatmulPrecision::Exact`]). Rows stay bitwise batch- and thread-invariant within one
/// precision; switching it changes results.
pub fn set_matmul_precision(precision: MatmulPrecision) {
    PRECISION.store(precision as u8, Ordering::Relaxed);
}

/// The instruction set the CPU matmul runs on this machine (`amx`, `avx512`, `avx2` or `scalar`), after
/// `MARC_MATMUL_ISA`; for logs and the server's `Info`.
pub fn matmul_isa() -> &'static str {
    match cpu::CpuIsa::detected() {
        cpu::CpuIsa::Amx => "amx",
        cpu::CpuIsa::Avx512 => "avx512",
        cpu::CpuIsa::Avx2 => "avx2",
        cpu::CpuIsa::Scalar => "scalar",
    }
}

/// The precision [`matmul`] currently uses.
pub fn matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::Exact,
        1 => MatmulPrecision::Bf16Activations,
        _ => MatmulPrecision::Nvfp4Activations,
    }
}

/// `y[m, n] = x[m, k] · wᵀ (+ bias[n])`.
///
/// `x` is row-major f32 `[m, k]`, `y` row-major f32 `[m, n]` (overwritten), `w` holds the
/// `[n, k]` weights and `bias`, if any, `n` values. `m` may be 0. Runs on the current rayon
/// pool (call it inside `pool.install` to choose the threads). Each output element is the
/// fused multiply-add chain over `k` in increasing order from `+0.0`, then `+ bias`, so a row's
/// result is bit-identical whatever the batch around it and the number of threads.
///
/// On the AMX path (bf16 weights on a CPU with AMX) the sum runs in another fixed order, see
/// `amx.rs`; the same invariances hold, with the precision set by [`set_matmul_precision`].
/// FP8 weights run the same chain on their decoded E4M3 values, times the tensor scale before
/// the bias; NVFP4 weights sum per 16-block and scale each block (`nvfp4.rs`), or, under
/// [`MatmulPrecision::Nvfp4Activations`], quantise x too (`w4a4.rs`).
pub fn matmul(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &mut [f32]) -> Result<(), KernelError> {
    matmul_with_precision(x, m, w, bias, y, matmul_precision())
}

/// [`matmul`] with an explicit [`MatmulPrecision`] for this call.
pub fn matmul_with_precision(
    x: &[f32],
    m: usize,
    w: &PackedMatrix,
    bias: Option<&[f32]>,
    y: &mut [f32],
    precision: MatmulPrecision,
) -> Result<(), KernelError> {
    validate(x, m, w, bias, y)?;
    cpu::matmul(cpu::CpuIsa::detected(), precision, x, m, w, bias, y);
    Ok(())
}

/// Checks every length against `m` and the weights' `[n, k]`.
fn validate(x: &[f32], m: usize, w: &PackedMatrix, bias: Option<&[f32]>, y: &[f32]) -> Result<(), KernelError> {
    const OP: &str = "matmul";
    let (n, k) = (w.rows(), w.cols());
    let check = |what, expected: Option<usize>, found| match expected {
        Some(expected) if expected == found => Ok(()),
        Some(expected) => Err(KernelError::LengthMismatch {
            op: OP,
            what,
            expected,
            found,
        }),
        None => Err(KernelError::InvalidShape {
            op: OP,
            reason: format!("{what} of {m} rows overflows usize"),
        }),
    };
    check("x", m.checked_mul(k), x.len())?;
    check("y", m.checked_mul(n), y.len())?;
    if let Some(bias) = bias {
        check("bias", Some(n), bias.len())?;
    }
    Ok(())
}
