//! RMS normalisation: the pre-norm of every block and `norm_f`, and Mamba's gated group norm.

mod cpu;

use crate::error::{KernelError, check_len};

/// `out[r] = x[r] * rsqrt(mean(x[r]²) + eps) * weight` for every row `r` of `x` `[rows, width]`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let width = weight.len();
    if width == 0 || x.len() % width != 0 {
        return Err(KernelError::LengthMismatch { op: "rms_norm", what: "x", expected: width.max(1) * (x.len() / width.max(1)), found: x.len() });
    }
    check_len("rms_norm", "out", out.len(), x.len())?;
    cpu::rms_norm(x, weight, eps, out);
    Ok(())
}

/// Mamba-2's gated norm, in place: `y = y * silu(z)`, then RMS-normalised over each group of
/// `group_size` channels, times `weight`. `y`, `z`: `[rows, width]`, `weight`: `[width]`.
pub fn gated_group_rms_norm(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) -> Result<(), KernelError> {
    let width = weight.len();
    if width == 0 || group_size == 0 || width % group_size != 0 {
        return Err(KernelError::LengthMismatch { op: "gated_group_rms_norm", what: "weight", expected: group_size.max(1) * (width / group_size.max(1)).max(1), found: width });
    }
    if y.len() % width != 0 {
        return Err(KernelError::LengthMismatch { op: "gated_group_rms_norm", what: "y", expected: width * (y.len() / width), found: y.len() });
    }
    check_len("gated_group_rms_norm", "z", z.len(), y.len())?;
    cpu::gated_group_rms_norm(y, z, weight, group_size, eps);
    Ok(())
}
