//! The Mamba-2 selective state-space scan in its chunked SSD form, over packed variable-length
//! sequences.
//!
//! Per head `h` (reading group `g = h / (H / G)`), channel `p` and state `n`, with the state zero
//! at every sequence start:
//!
//! * `s_t[p, n] = exp(dt_t[h] A[h]) s_{t-1}[p, n] + dt_t[h] B_t[g, n] x_t[h, p]`
//! * `y_t[h, p] = sum_n C_t[g, n] s_t[p, n] + D[h] x_t[h, p]`
//!
//! See `cpu.rs` for how the chunked form evaluates it.

mod cpu;

use super::seq_error::SeqOpError;
use super::varlen;

/// Sizes of one Mamba-2 scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SsdShape {
    /// Number of heads `H` (`mamba_num_heads`).
    pub num_heads: usize,
    /// Channels per head `P` (`mamba_head_dim`).
    pub head_dim: usize,
    /// Number of B/C groups `G` (`n_groups`); must divide `num_heads`.
    pub n_groups: usize,
    /// State size `N` per group (`ssm_state_size`).
    pub state_size: usize,
    /// Tokens per chunk of the SSD form (`chunk_size`). It changes rounding only, not the math.
    pub chunk_size: usize,
}

/// Runs the scan over packed sequences.
///
/// * `x`: `[T, H * P]`; `dt`: `[T, H]`, already softplus'd and clamped; `a`: `[H]`, the negative
///   `-exp(A_log)`; `b`, `c`: `[T, G * N]`; `d`: `[H]`; `y`: `[T, H * P]`, overwritten.
/// * `cu_seqlens`: `num_seqs + 1` offsets into the token axis, from 0 to `T`, non-decreasing.
///
/// Every head of every sequence is computed by one fixed sequence of operations that depends only
/// on that sequence's own tokens (chunks start at the sequence start), so results are bitwise
/// independent of batching and of the rayon thread count. Runs on the current rayon pool.
#[allow(clippy::too_many_arguments)] // The op's operands, as the model names them.
pub fn ssd_scan(
    shape: &SsdShape,
    cu_seqlens: &[usize],
    x: &[f32],
    dt: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    y: &mut [f32],
) -> Result<(), SeqOpError> {
    let heads = varlen::nonzero("num_heads", shape.num_heads)?;
    let head_dim = varlen::nonzero("head_dim", shape.head_dim)?;
    let groups = varlen::nonzero("n_groups", shape.n_groups)?;
    let state = varlen::nonzero("state_size", shape.state_size)?;
    varlen::nonzero("chunk_size", shape.chunk_size)?;
    varlen::divide("num_heads", heads, "n_groups", groups)?;

    let x_width = varlen::mul("x", heads, head_dim)?;
    let tokens = varlen::token_count("x", x, x_width)?;
    varlen::check_cu_seqlens(cu_seqlens, tokens, "x")?;
    varlen::check_len("dt", dt, varlen::mul("dt", tokens, heads)?)?;
    varlen::check_len("a", a, heads)?;
    let bc_len = varlen::mul("b", tokens, varlen::mul("b", groups, state)?)?;
    varlen::check_len("b", b, bc_len)?;
    varlen::check_len("c", c, bc_len)?;
    varlen::check_len("d", d, heads)?;
    varlen::check_len("y", y, x.len())?;
    let bc_stride = groups * state;
    cpu::ssd_scan(shape, cu_seqlens, (x, x_width), bc_stride, dt, a, b, c, d, y);
    Ok(())
}

/// [`ssd_scan`] reading x, B and C straight from the causal convolution's output, as Mamba-2 lays
/// it out: `xbc` is `[T, H * P + 2 * G * N]`, each row `[x | B | C]`. Saves splitting the
/// convolution output into three arrays; the results are the same bits as [`ssd_scan`]'s.
pub fn ssd_scan_xbc(
    shape: &SsdShape,
    cu_seqlens: &[usize],
    xbc: &[f32],
    dt: &[f32],
    a: &[f32],
    d: &[f32],
    y: &mut [f32],
) -> Result<(), SeqOpError> {
    let heads = varlen::nonzero("num_heads", shape.num_heads)?;
    let head_dim = varlen::nonzero("head_dim", shape.head_dim)?;
    let groups = varlen::nonzero("n_groups", shape.n_groups)?;
    let state = varlen::nonzero("state_size", shape.state_size)?;
    varlen::nonzero("chunk_size", shape.chunk_size)?;
    varlen::divide("num_heads", heads, "n_groups", groups)?;

    let x_width = varlen::mul("x", heads, head_dim)?;
    let bc_width = varlen::mul("b", groups, state)?;
    let row = varlen::mul("xbc", bc_width, 2)?
        .checked_add(x_width)
        .ok_or(SeqOpError::Overflow { arg: "xbc" })?;
    let tokens = varlen::token_count("xbc", xbc, row)?;
    varlen::check_cu_seqlens(cu_seqlens, tokens, "xbc")?;
    varlen::check_len("dt", dt, varlen::mul("dt", tokens, heads)?)?;
    varlen::check_len("a", a, heads)?;
    varlen::check_len("d", d, heads)?;
    varlen::check_len("y", y, varlen::mul("y", tokens, x_width)?)?;
    // Empty when there are no tokens.
    let b = xbc.get(x_width..).unwrap_or_default();
    let c = xbc.get(x_width + bc_width..).unwrap_or_default();
    cpu::ssd_scan(shape, cu_seqlens, (xbc, row), row, dt, a, b, c, d, y);
    Ok(())
}
