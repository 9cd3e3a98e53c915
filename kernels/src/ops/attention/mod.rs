//! Causal grouped-query attention over packed variable-length sequences, without positional
//! embedding (NemotronH's attention blocks).
//!
//! Query head `h` reads key/value head `h / (Hq / Hkv)` (PyTorch `repeat_kv` order); each token
//! attends to itself and the earlier tokens of its own sequence; scores are scaled by
//! `head_dim^-0.5` and normalised by a softmax with the row maximum subtracted.

mod cpu;

use super::seq_error::SeqOpError;
use super::varlen;

/// Head layout of one attention call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads `Hq`.
    pub num_heads: usize,
    /// Key/value heads `Hkv`; must divide `num_heads` (equal: MHA, 1: MQA).
    pub num_kv_heads: usize,
    /// Channels per head `D` (any positive size).
    pub head_dim: usize,
}

/// Causal attention over packed sequences.
///
/// * `q`: `[T, Hq * D]`; `k`, `v`: `[T, Hkv * D]`; `out`: `[T, Hq * D]`, overwritten.
/// * `cu_seqlens`: `num_seqs + 1` offsets into the token axis, from 0 to `T`, non-decreasing.
///
/// Each (sequence, query head) is computed by one fixed sequence of operations that depends only on
/// that sequence's tokens, so results are bitwise independent of batching and of the rayon thread
/// count. Scratch per (sequence, head) is `O(L * D)`, never `L x L`. Runs on the current rayon
/// pool.
pub fn causal_attention(
    shape: &AttentionShape,
    cu_seqlens: &[usize],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) -> Result<(), SeqOpError> {
    let heads = varlen::nonzero("num_heads", shape.num_heads)?;
    let kv_heads = varlen::nonzero("num_kv_heads", shape.num_kv_heads)?;
    let head_dim = varlen::nonzero("head_dim", shape.head_dim)?;
    varlen::divide("num_heads", heads, "num_kv_heads", kv_heads)?;
    let tokens = varlen::token_count("q", q, varlen::mul("q", heads, head_dim)?)?;
    varlen::check_cu_seqlens(cu_seqlens, tokens, "q")?;
    let kv_len = varlen::mul("k", tokens, varlen::mul("k", kv_heads, head_dim)?)?;
    varlen::check_len("k", k, kv_len)?;
    varlen::check_len("v", v, kv_len)?;
    varlen::check_len("out", out, q.len())?;
    cpu::causal_attention(shape, cu_seqlens, q, k, v, out);
    Ok(())
}
