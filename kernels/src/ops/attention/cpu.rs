//! CPU implementation of [`super::causal_attention`].
//!
//! A unit of work is one (sequence, query head). It transposes its key head to `[D, L]` once, then
//! walks the queries in blocks of [`Q_BLOCK`] rows: scores `S = Q K^T` for the causal band only,
//! an exact two-pass softmax per row (maximum, then `exp` and sum), and `O = P V` reading only
//! `k <= i` so future tokens are never touched. Both products are register-tiled broadcast-FMA
//! (see `seq_gemm`), so the work is matrix-like and vectorised across keys and channels.

use rayon::prelude::*;

use super::AttentionShape;
use crate::ops::seq_gemm::{Mat, MatMut, gemm_lower_k, gemm_lower_n};
use crate::ops::seq_math::{exp_in_place_sum, max, simd_fn};
use crate::ops::varlen::{DisjointOut, sequences_longest_first};

/// Query rows per block: the score scratch is `Q_BLOCK x L`, 512 KiB at 4096 tokens, which stays in
/// L2 while the block's softmax and `P V` reread it.
const Q_BLOCK: usize = 32;

/// Validated operands shared by all units.
struct Ctx<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
}

/// One unit of work: query head `head` of the sequence at `start..start + len`.
#[derive(Clone, Copy)]
struct Unit {
    start: usize,
    len: usize,
    head: usize,
}

/// Arguments as validated by [`super::causal_attention`].
pub(super) fn causal_attention(
    shape: &AttentionShape,
    cu_seqlens: &[usize],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    let units: Vec<Unit> = sequences_longest_first(cu_seqlens)
        .into_iter()
        .flat_map(|(start, len)| (0..shape.num_heads).map(move |head| Unit { start, len, head }))
        .collect();
    // PyTorch computes head_dim ** -0.5 in double and multiplies in f32.
    let scale = (1.0 / (shape.head_dim as f64).sqrt()) as f32;
    let ctx = Ctx {
        shape: *shape,
        q,
        k,
        v,
        scale,
    };
    let out = DisjointOut::new(out);
    units.par_iter().for_each(|unit| attend(&ctx, unit, out));
}

simd_fn! {
    /// Computes one (sequence, query head) and writes its columns of `out`.
    fn attend(ctx: &Ctx<'_>, unit: &Unit, out: DisjointOut<'_>) {
        let AttentionShape { num_heads, num_kv_heads, head_dim: d } = ctx.shape;
        let (len, start) = (unit.len, unit.start);
        let (q_width, kv_width) = (num_heads * d, num_kv_heads * d);
        let kv_off = (unit.head / (num_heads / num_kv_heads)) * d;
        let q_off = unit.head * d;

        let mut k_t = vec![0.0f32; d * len];
        for j in 0..len {
            for (c, &kv) in ctx.k[(start + j) * kv_width + kv_off..][..d].iter().enumerate() {
                k_t[c * len + j] = kv;
            }
        }
        let block = Q_BLOCK.min(len);
        let mut scores = vec![0.0f32; block * len];
        let mut acc = vec![0.0f32; block * d];
        let mut sums = [0.0f32; Q_BLOCK];
        let values = Mat { data: &ctx.v[start * kv_width + kv_off..], ld: kv_width };

        for q0 in (0..len).step_by(block) {
            let rows = block.min(len - q0);
            let queries = Mat { data: &ctx.q[(start + q0) * q_width + q_off..], ld: q_width };
            // Row r is query q0 + r and needs keys 0..=q0 + r.
            let keys = Mat { data: &k_t, ld: len };
            gemm_lower_n::<false>(rows, q0 + rows, d, q0, queries, keys, MatMut { data: &mut scores, ld: len });
            for (r, sum) in sums[..rows].iter_mut().enumerate() {
                let row = &mut scores[r * len..r * len + q0 + r + 1];
                let top = max(row);
                *sum = exp_in_place_sum(row, ctx.scale, -(top * ctx.scale));
            }
            let probs = Mat { data: &scores, ld: len };
            gemm_lower_k::<false>(rows, d, q0, probs, values, MatMut { data: &mut acc, ld: d });
            for (r, &sum) in sums[..rows].iter().enumerate() {
                // SAFETY: this unit is the only one writing this head's columns of the sequence's
                // rows, and this is the only live slice it holds.
                let dst = unsafe { out.range((start + q0 + r) * q_width + q_off, d) };
                for (o, &a) in dst.iter_mut().zip(&acc[r * d..(r + 1) * d]) {
                    *o = a / sum;
                }
            }
        }
    }
}
