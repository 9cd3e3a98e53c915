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

impl SsdShape {
    /// A shape from its five sizes, in the order of the fields.
    pub const fn new(num_heads: usize, head_dim: usize, n_groups: usize, state_size: usize, chunk_size: usize) -> Self {
        Self {
            num_heads,
            head_dim,
            n_groups,
            state_size,
            chunk_size,
        }
    }
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
    let widths = Widths::of(shape)?;
    let tokens = varlen::token_count("x", x, widths.x)?;
    widths.check_common(cu_seqlens, tokens, "x", dt, a, d, y)?;
    let bc_len = varlen::mul("b", tokens, widths.bc)?;
    varlen::check_len("b", b, bc_len)?;
    varlen::check_len("c", c, bc_len)?;
    cpu::ssd_scan(shape, cu_seqlens, (x, widths.x), widths.bc, dt, a, b, c, d, y);
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
    let widths = Widths::of(shape)?;
    let row = varlen::mul("xbc", widths.bc, 2)?
        .checked_add(widths.x)
        .ok_or(SeqOpError::Overflow { arg: "xbc" })?;
    let tokens = varlen::token_count("xbc", xbc, row)?;
    widths.check_common(cu_seqlens, tokens, "xbc", dt, a, d, y)?;
    // Empty when there are no tokens.
    let b = xbc.get(widths.x..).unwrap_or_default();
    let c = xbc.get(widths.x + widths.bc..).unwrap_or_default();
    cpu::ssd_scan(shape, cu_seqlens, (xbc, row), row, dt, a, b, c, d, y);
    Ok(())
}

/// Row widths implied by a validated shape.
struct Widths {
    heads: usize,
    /// `H * P`: x and y.
    x: usize,
    /// `G * N`: B and C.
    bc: usize,
}

impl Widths {
    fn of(shape: &SsdShape) -> Result<Self, SeqOpError> {
        let heads = varlen::nonzero("num_heads", shape.num_heads)?;
        let head_dim = varlen::nonzero("head_dim", shape.head_dim)?;
        let groups = varlen::nonzero("n_groups", shape.n_groups)?;
        let state = varlen::nonzero("state_size", shape.state_size)?;
        varlen::nonzero("chunk_size", shape.chunk_size)?;
        varlen::divide("num_heads", heads, "n_groups", groups)?;
        Ok(Self {
            heads,
            x: varlen::mul("x", heads, head_dim)?,
            bc: varlen::mul("b", groups, state)?,
        })
    }

    /// The checks both entry points share, once the token count is known from `source`.
    #[allow(clippy::too_many_arguments)]
    fn check_common(
        &self,
        cu_seqlens: &[usize],
        tokens: usize,
        source: &'static str,
        dt: &[f32],
        a: &[f32],
        d: &[f32],
        y: &[f32],
    ) -> Result<(), SeqOpError> {
        varlen::check_cu_seqlens(cu_seqlens, tokens, source)?;
        varlen::check_len("dt", dt, varlen::mul("dt", tokens, self.heads)?)?;
        varlen::check_len("a", a, self.heads)?;
        varlen::check_len("d", d, self.heads)?;
        varlen::check_len("y", y, varlen::mul("y", tokens, self.x)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reading x, B and C out of the conv output gives exactly the bits of the split arrays.
    #[test]
    fn xbc_layout_matches_split_arrays_bitwise() {
        let shape = SsdShape {
            num_heads: 4,
            head_dim: 8,
            n_groups: 2,
            state_size: 4,
            chunk_size: 5,
        };
        let (x_w, bc_w) = (32, 8);
        let row = x_w + 2 * bc_w;
        let cu = [0, 7, 19];
        let tokens = 19;
        let value = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let xbc: Vec<f32> = (0..tokens * row).map(value).collect();
        let dt: Vec<f32> = (0..tokens * 4).map(|i| 0.01 + (i % 7) as f32 / 50.0).collect();
        let (a, d) = ([-0.5, -1.0, -2.0, -0.1], [1.0, 0.5, -0.5, 2.0]);
        let split = |from: usize, width: usize| -> Vec<f32> {
            xbc.chunks_exact(row)
                .flat_map(|r| r[from..from + width].to_vec())
                .collect()
        };
        let (x, b, c) = (split(0, x_w), split(x_w, bc_w), split(x_w + bc_w, bc_w));
        let mut y_split = vec![0.0; tokens * x_w];
        ssd_scan(&shape, &cu, &x, &dt, &a, &b, &c, &d, &mut y_split).unwrap();
        let mut y_xbc = vec![0.0; tokens * x_w];
        ssd_scan_xbc(&shape, &cu, &xbc, &dt, &a, &d, &mut y_xbc).unwrap();
        assert!(y_split.iter().zip(&y_xbc).all(|(p, q)| p.to_bits() == q.to_bits()));
        assert!(ssd_scan_xbc(&shape, &cu, &xbc[..row * 18], &dt, &a, &d, &mut y_xbc).is_err());
    }
}
