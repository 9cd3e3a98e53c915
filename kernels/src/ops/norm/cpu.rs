//! CPU RMS norms. Sums of squares use fixed 16-lane partial sums combined in a fixed order, so a
//! row's result never depends on its neighbours and the loops vectorise.

use rayon::prelude::*;

use crate::ops::activation::silu;

/// Rows per parallel task: enough work to amortise the hand-off.
const ROWS_PER_TASK: usize = 16;

/// Sum of squares with a fixed association order (16 lanes, then a fixed tree).
#[inline]
pub(crate) fn sum_of_squares(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane += v * v;
        }
    }
    for (lane, v) in lanes.iter_mut().zip(chunks.remainder()) {
        *lane += v * v;
    }
    let mut width = 16;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            lanes[i] += lanes[i + width];
        }
    }
    lanes[0]
}

#[inline]
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_of_squares(x) / x.len() as f32 + eps).sqrt()
}

pub(super) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(x.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(out, x)| {
            for (out, x) in out.chunks_exact_mut(width).zip(x.chunks_exact(width)) {
                let scale = inverse_rms(x, eps);
                for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
                    *o = w * (v * scale);
                }
            }
        });
}

pub(super) fn gated_group_rms_norm(y: &mut [f32], z: &[f32], weight: &[f32], group_size: usize, eps: f32) {
    let width = weight.len();
    y.par_chunks_mut(width * ROWS_PER_TASK)
        .zip(z.par_chunks(width * ROWS_PER_TASK))
        .for_each(|(y, z)| {
            for (y, z) in y.chunks_exact_mut(width).zip(z.chunks_exact(width)) {
                for (v, g) in y.iter_mut().zip(z) {
                    *v *= silu(*g);
                }
                for (y, w) in y.chunks_exact_mut(group_size).zip(weight.chunks_exact(group_size)) {
                    let scale = inverse_rms(y, eps);
                    for (v, w) in y.iter_mut().zip(w) {
                        *v = w * (*v * scale);
                    }
                }
            }
        });
}
