//! CPU implementation of [`super::causal_conv1d_silu`]: vectorised across channels, parallel over
//! blocks of tokens.

use rayon::prelude::*;

use crate::ops::seq_math::{silu, simd_fn};

/// Tokens per rayon task: a few rows of `C` channels amortise the task overhead, and even a single
/// 32-token sequence still splits over several threads.
const ROWS_PER_TASK: usize = 4;

/// Validated arguments shared by all tasks.
struct Ctx<'a> {
    x: &'a [f32],
    cu_seqlens: &'a [usize],
    /// The weight transposed to `[K, C]`, so each tap is a contiguous row across channels.
    weight_t: &'a [f32],
    bias: Option<&'a [f32]>,
    kernel_size: usize,
    channels: usize,
}

/// Arguments as validated by [`super::causal_conv1d_silu`]; `channels > 0`, `kernel_size > 0`.
pub(super) fn causal_conv1d_silu(
    x: &[f32],
    cu_seqlens: &[usize],
    weight: &[f32],
    bias: Option<&[f32]>,
    kernel_size: usize,
    channels: usize,
    out: &mut [f32],
) {
    let mut weight_t = vec![0.0f32; weight.len()];
    for (c, taps) in weight.chunks_exact(kernel_size).enumerate() {
        for (j, &w) in taps.iter().enumerate() {
            weight_t[j * channels + c] = w;
        }
    }
    let ctx = Ctx {
        x,
        cu_seqlens,
        weight_t: &weight_t,
        bias,
        kernel_size,
        channels,
    };
    // Every output element is computed independently of the others, so any split of the rows
    // gives the same bits.
    out.par_chunks_mut(ROWS_PER_TASK * channels)
        .enumerate()
        .for_each(|(task, rows)| conv_rows(&ctx, task * ROWS_PER_TASK, rows));
}

simd_fn! {
    /// Computes the output rows `first..` that `rows` holds.
    fn conv_rows(ctx: &Ctx<'_>, first: usize, rows: &mut [f32]) {
        let (ch, k) = (ctx.channels, ctx.kernel_size);
        for (i, row) in rows.chunks_exact_mut(ch).enumerate() {
            let t = first + i;
            // The sequence holding t is the last one starting at or before it (cu_seqlens[0] = 0).
            let start = ctx.cu_seqlens[ctx.cu_seqlens.partition_point(|&s| s <= t) - 1];
            // Taps j with t - (k - 1) + j >= start; the earlier ones read the zero history.
            let first_tap = (k - 1) - (t - start).min(k - 1);
            match ctx.bias {
                Some(bias) => row.copy_from_slice(bias),
                None => row.fill(0.0),
            }
            for j in first_tap..k {
                let src = t + j + 1 - k;
                let x_row = &ctx.x[src * ch..][..ch];
                let w_row = &ctx.weight_t[j * ch..][..ch];
                for ((o, &w), &xv) in row.iter_mut().zip(w_row).zip(x_row) {
                    *o = w.mul_add(xv, *o);
                }
            }
            for o in row.iter_mut() {
                *o = silu(*o);
            }
        }
    }
}
