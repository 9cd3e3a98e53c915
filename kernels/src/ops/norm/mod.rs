//! RMS normalisation: the pre-norm of every block and `norm_f`, and Mamba's gated group norm.

mod cpu;

use crate::error::{KernelError, check_len};

/// Checks that `len` is whole rows of a non-empty `width`.
fn check_rows(op: &'static str, what: &str, len: usize, width: usize) -> Result<(), KernelError> {
    if width == 0 || !len.is_multiple_of(width) {
        return Err(KernelError::InvalidShape {
            op,
            reason: format!("`{what}` has {len} elements, not a whole number of rows of width {width}"),
        });
    }
    Ok(())
}

/// `out[r] = x[r] * rsqrt(mean(x[r]²) + eps) * weight` for every row `r` of `x` `[rows, width]`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    check_rows("rms_norm", "x", x.len(), weight.len())?;
    check_len("rms_norm", "out", out.len(), x.len())?;
    cpu::rms_norm(x, weight, eps, out);
    Ok(())
}

/// Mamba-2's gated norm, in place: `y = y * silu(z)`, then RMS-normalised over each group of
/// `group_size` channels, times `weight`. `y`, `z`: `[rows, width]`, `weight`: `[width]`.
pub fn gated_group_rms_norm(
    y: &mut [f32],
    z: &[f32],
    weight: &[f32],
    group_size: usize,
    eps: f32,
) -> Result<(), KernelError> {
    const OP: &str = "gated_group_rms_norm";
    check_rows(OP, "weight", weight.len(), group_size)?;
    check_rows(OP, "y", y.len(), weight.len())?;
    check_len(OP, "z", z.len(), y.len())?;
    cpu::gated_group_rms_norm(y, z, weight, group_size, eps);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let ms = x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / x.len() as f64;
        let scale = 1.0 / (ms + f64::from(eps)).sqrt();
        x.iter()
            .zip(w)
            .map(|(v, w)| (f64::from(*v) * scale * f64::from(*w)) as f32)
            .collect()
    }

    #[test]
    fn rms_norm_matches_f64() {
        let width = 37;
        let x: Vec<f32> = (0..width * 3).map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0).collect();
        let w: Vec<f32> = (0..width).map(|i| 1.0 + i as f32 / 100.0).collect();
        let mut out = vec![0.0; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out).unwrap();
        for (row, got) in x.chunks(width).zip(out.chunks(width)) {
            for (g, e) in got.iter().zip(reference(row, &w, 1e-5)) {
                assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
            }
        }
        assert!(rms_norm(&x[..width + 1], &w, 1e-5, &mut out[..width + 1]).is_err());
    }

    #[test]
    fn gated_norm_normalises_each_group_after_gating() {
        let (width, group) = (8, 4);
        let y: Vec<f32> = (0..width).map(|i| i as f32 - 3.0).collect();
        let z: Vec<f32> = (0..width).map(|i| (i as f32) / 4.0 - 1.0).collect();
        let w = vec![0.5f32; width];
        let mut got = y.clone();
        gated_group_rms_norm(&mut got, &z, &w, group, 1e-6).unwrap();
        let gated: Vec<f32> = y.iter().zip(&z).map(|(y, z)| y * z / (1.0 + (-z).exp())).collect();
        let expected: Vec<f32> = gated
            .chunks(group)
            .flat_map(|g| reference(g, &w[..group], 1e-6))
            .collect();
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() <= 1e-5 * e.abs().max(1.0), "{g} vs {e}");
        }
        assert!(gated_group_rms_norm(&mut got, &z, &w, 3, 1e-6).is_err());
    }
}
