//! Depthwise causal 1-D convolution followed by SiLU, over packed variable-length sequences.
//!
//! This is the Mamba-2 mixer's `conv1d` on `xBC`: per channel `c` and token `t` of a sequence that
//! starts at token `s`,
//! `out[t, c] = silu(bias[c] + sum_{j < K, t - (K-1) + j >= s} weight[c, j] * x[t - (K-1) + j, c])`,
//! i.e. PyTorch `Conv1d(groups = C, padding = K - 1)` truncated to the first `T` outputs, with zero
//! history at every sequence start.

mod cpu;

use super::seq_error::SeqOpError;
use super::varlen;

/// Depthwise causal conv1d + SiLU over packed sequences.
///
/// * `x`: `[T, C]` row-major, the sequences' tokens concatenated.
/// * `cu_seqlens`: `num_seqs + 1` offsets into the token axis, from 0 to `T`, non-decreasing.
/// * `weight`: `[C, K]` (the checkpoint's `[C, 1, K]` squeezed); `C` is `weight.len() / K`.
/// * `bias`: `[C]`, or `None` for no bias.
/// * `kernel_size`: `K`.
/// * `out`: `[T, C]`, overwritten.
///
/// Each output element is one fixed `mul_add` chain over `j` ascending (skipping the taps before
/// its sequence start), so results are bitwise independent of batching and of the rayon thread
/// count. Runs on the current rayon pool.
pub fn causal_conv1d_silu(
    x: &[f32],
    cu_seqlens: &[usize],
    weight: &[f32],
    bias: Option<&[f32]>,
    kernel_size: usize,
    out: &mut [f32],
) -> Result<(), SeqOpError> {
    varlen::nonzero("kernel_size", kernel_size)?;
    if !weight.len().is_multiple_of(kernel_size) {
        return Err(SeqOpError::NotWholeRows {
            arg: "weight",
            row_width: kernel_size,
            found: weight.len(),
        });
    }
    let channels = varlen::nonzero("weight", weight.len() / kernel_size)?;
    let tokens = varlen::token_count("x", x, channels)?;
    varlen::check_cu_seqlens(cu_seqlens, tokens, "x")?;
    if let Some(bias) = bias {
        varlen::check_len("bias", bias, channels)?;
    }
    varlen::check_len("out", out, x.len())?;
    cpu::causal_conv1d_silu(x, cu_seqlens, weight, bias, kernel_size, channels, out);
    Ok(())
}
