//! CPU implementation of [`super::causal_attention`].
//!
//! A unit of work is (sequence, key/value head, block of the query heads that read it). It packs
//! the key head once, transposed into contiguous `[D, 64]` panels, and the value head into a
//! contiguous `[L, D]`, for all of its query heads. Per query head it then walks the queries in
//! blocks of [`Q_BLOCK`] rows: scores `S = Q K^T` on the causal band only, an exact two-pass
//! softmax per row (maximum, then `exp` and sum), and `O = P V` reading only keys `<= i`, so future
//! tokens are never touched. Both products are register-tiled broadcast-FMA (see `seq_gemm`),
//! vectorised across keys and channels; scratch is `O(L * D)` per unit, never `L x L`.

use rayon::prelude::*;

use super::AttentionShape;
use crate::ops::seq_gemm::{Mat, MatMut, gemm_lower_k, gemm_lower_n};
use crate::ops::seq_math::{exp_in_place_sum, max, simd_fn};
use crate::ops::varlen::{DisjointOut, carve, heads_per_unit, sequences_longest_first, with_scratch};

/// Query rows per block: the score scratch is `Q_BLOCK x L`, 512 KiB at 4096 tokens, which stays in
/// L2 while the block's softmax and `P V` reread it.
const Q_BLOCK: usize = 32;
/// Keys per packed panel of `K^T` (a multiple of 16, so score tiles need no edge handling).
const PANEL: usize = 64;

/// Validated operands shared by all units.
struct Ctx<'a> {
    shape: AttentionShape,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    scale: f32,
}

/// One unit of work: query heads `first_head..first_head + heads`, which all read key/value head
/// `kv_head`, over the sequence at `start..start + len`.
#[derive(Clone, Copy)]
struct Unit {
    start: usize,
    len: usize,
    kv_head: usize,
    first_head: usize,
    heads: usize,
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
    let per_kv = shape.num_heads / shape.num_kv_heads;
    let seqs = sequences_longest_first(cu_seqlens);
    let block = heads_per_unit(seqs.len() * shape.num_kv_heads, per_kv);
    let mut units = Vec::with_capacity(seqs.len() * shape.num_heads.div_ceil(block));
    for &(start, len) in &seqs {
        for kv_head in 0..shape.num_kv_heads {
            for offset in (0..per_kv).step_by(block) {
                let heads = block.min(per_kv - offset);
                units.push(Unit {
                    start,
                    len,
                    kv_head,
                    first_head: kv_head * per_kv + offset,
                    heads,
                });
            }
        }
    }
    // head_dim^-0.5 rounded once to f32, as a Python float scale becomes in PyTorch.
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

/// Scratch of one unit (`L` its length, `Lp` that rounded up to [`PANEL`]).
struct Scratch<'a> {
    /// The key head, transposed and cut into panels of [`PANEL`] keys: panel `p` is the
    /// contiguous `[D, PANEL]` block `k_panels[p * D * PANEL..]`, zero past the last key.
    k_panels: &'a mut [f32],
    /// The value head packed to a contiguous `[L, D]`.
    values: &'a mut [f32],
    /// Scores, then probabilities, of a block of queries: `[Q_BLOCK, Lp]`.
    scores: &'a mut [f32],
    /// `P V` of a block of queries: `[Q_BLOCK, D]`.
    acc: &'a mut [f32],
}

/// Computes one unit's query heads and writes their columns of `out`.
fn attend(ctx: &Ctx<'_>, unit: &Unit, out: DisjointOut<'_>) {
    let d = ctx.shape.head_dim;
    let padded = unit.len.next_multiple_of(PANEL);
    let block = Q_BLOCK.min(unit.len);
    with_scratch(d * padded + unit.len * d + block * padded + block * d, |mut buf| {
        let s = Scratch {
            k_panels: carve(&mut buf, d * padded),
            values: carve(&mut buf, unit.len * d),
            scores: carve(&mut buf, block * padded),
            acc: buf,
        };
        attend_heads(ctx, unit, out, s);
    });
}

simd_fn! {
    /// The body of [`attend`] on its scratch.
    fn attend_heads(ctx: &Ctx<'_>, unit: &Unit, out: DisjointOut<'_>, s: Scratch<'_>) {
        let AttentionShape { num_heads, num_kv_heads, head_dim: d } = ctx.shape;
        let (len, start) = (unit.len, unit.start);
        let (q_width, kv_width) = (num_heads * d, num_kv_heads * d);
        let kv_off = unit.kv_head * d;
        let padded = len.next_multiple_of(PANEL);

        // Packing makes the tiles read contiguous 16 KiB panels: at the packed batch's row strides
        // (1-8 KiB) the rows of one tile fall into a few L1 sets and evict each other. Each key row
        // is read once, contiguously, and scattered into its panel, which stays in L1.
        for (p, panel) in s.k_panels.chunks_exact_mut(d * PANEL).enumerate() {
            let keys = (len - p * PANEL).min(PANEL);
            for j in 0..keys {
                let key = &ctx.k[(start + p * PANEL + j) * kv_width + kv_off..][..d];
                for (c, &kv) in key.iter().enumerate() {
                    panel[c * PANEL + j] = kv;
                }
            }
            if keys < PANEL {
                for row in panel.chunks_exact_mut(PANEL) {
                    row[keys..].fill(0.0);
                }
            }
        }
        for (j, row) in s.values.chunks_exact_mut(d).enumerate() {
            row.copy_from_slice(&ctx.v[(start + j) * kv_width + kv_off..][..d]);
        }
        let values = Mat { data: s.values, ld: d };
        let block = Q_BLOCK.min(len);
        let mut sums = [0.0f32; Q_BLOCK];

        for head in unit.first_head..unit.first_head + unit.heads {
            let q_off = head * d;
            for q0 in (0..len).step_by(block) {
                let rows = block.min(len - q0);
                // Row r is query q0 + r and needs keys 0..=q0 + r, panel by panel. A panel that
                // starts past q0 is needed only from row `first` on, with its own diagonal.
                for p in 0..(q0 + rows).div_ceil(PANEL) {
                    let first = (p * PANEL).saturating_sub(q0);
                    let q_at = (start + q0 + first) * q_width + q_off;
                    let queries = Mat { data: &ctx.q[q_at..], ld: q_width };
                    let panel = &s.k_panels[p * d * PANEL..(p + 1) * d * PANEL];
                    let keys = Mat { data: panel, ld: PANEL };
                    let at = first * padded + p * PANEL;
                    let dst = MatMut { data: &mut s.scores[at..], ld: padded };
                    let diag = q0 + first - p * PANEL;
                    gemm_lower_n::<false>(rows - first, PANEL, d, diag, queries, keys, dst);
                }
                for (r, sum) in sums[..rows].iter_mut().enumerate() {
                    let row = &mut s.scores[r * padded..r * padded + q0 + r + 1];
                    let top = max(row);
                    *sum = exp_in_place_sum(row, ctx.scale, -(top * ctx.scale));
                }
                let probs = Mat { data: s.scores, ld: padded };
                gemm_lower_k::<false>(rows, d, q0, probs, values, MatMut { data: s.acc, ld: d });
                for (r, &sum) in sums[..rows].iter().enumerate() {
                    // SAFETY: this unit is the only one writing this head's columns of the
                    // sequence's rows, and this is the only live slice it holds.
                    let dst = unsafe { out.range((start + q0 + r) * q_width + q_off, d) };
                    // One division per row, not per channel (vdivps is slow).
                    let inv = 1.0 / sum;
                    for (o, &a) in dst.iter_mut().zip(&s.acc[r * d..(r + 1) * d]) {
                        *o = a * inv;
                    }
                }
            }
        }
    }
}
