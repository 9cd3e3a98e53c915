//! CPU implementation of [`super::ssd_scan`] in the chunked SSD form.
//!
//! A sequence is cut into chunks of `Q = chunk_size` tokens from its own start (the last one may be
//! shorter). With `a_t = dt_t A` and, inside a chunk, `cum[t] = a_0 + ... + a_t` and
//! `seg[t, s] = a_{s+1} + ... + a_t` (Mamba-2's `segsum`), a chunk computes, per head:
//!
//! * `Y = exp(cum) * (C S_in) + M X` with `M[t, s] = (C B^T)[t, s] exp(seg[t, s]) dt_s` for `s <= t`:
//!   the carried state's contribution plus the intra-chunk one as a masked, decayed matrix;
//! * `S_out = exp(cum[Q-1]) S_in + B^T (w * X)` with `w_s = exp(seg[Q-1, s]) dt_s`: the state carried
//!   to the next chunk, kept as `[N, P]` per head;
//! * `y = D x + Y`.
//!
//! `seg` is accumulated as running sums from each `s`, not as `cum[t] - cum[s]`: every exponent is a
//! sum of non-positive terms (no overflow) and suffers no cancellation between two large cumulative
//! sums, which would cost precision under strong decay. `C B^T` depends only on the group, so a unit of
//! work is (sequence, group, block of that group's heads) and computes it once per chunk.

use rayon::prelude::*;

use super::SsdShape;
use crate::ops::seq_gemm::{Mat, MatMut, gemm, gemm_lower_k, gemm_lower_n};
use crate::ops::seq_math::{exp, simd_fn};
use crate::ops::varlen::{DisjointOut, heads_per_unit, sequences_longest_first};

/// Validated operands shared by all units.
struct Ctx<'a> {
    shape: SsdShape,
    x: &'a [f32],
    dt: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
    d: &'a [f32],
}

/// One unit of work: heads `first_head..first_head + heads` (all in `group`) of one sequence.
#[derive(Clone, Copy)]
struct Unit {
    start: usize,
    len: usize,
    group: usize,
    first_head: usize,
    heads: usize,
}

/// Arguments as validated by [`super::ssd_scan`].
#[allow(clippy::too_many_arguments)]
pub(super) fn ssd_scan(
    shape: &SsdShape,
    cu_seqlens: &[usize],
    x: &[f32],
    dt: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    d: &[f32],
    y: &mut [f32],
) {
    let per_group = shape.num_heads / shape.n_groups;
    let seqs = sequences_longest_first(cu_seqlens);
    let block = heads_per_unit(seqs.len() * shape.n_groups, per_group);
    let mut units = Vec::with_capacity(seqs.len() * shape.num_heads.div_ceil(block));
    for &(start, len) in &seqs {
        for group in 0..shape.n_groups {
            for offset in (0..per_group).step_by(block) {
                let heads = block.min(per_group - offset);
                units.push(Unit {
                    start,
                    len,
                    group,
                    first_head: group * per_group + offset,
                    heads,
                });
            }
        }
    }
    let ctx = Ctx {
        shape: *shape,
        x,
        dt,
        a,
        b,
        c,
        d,
    };
    let y = DisjointOut::new(y);
    units.par_iter().for_each(|unit| scan_unit(&ctx, unit, y));
}

/// Scratch of one unit, sized by the chunk, never by the sequence.
struct Scratch {
    /// The chunk's B transposed to `[N, Q]`.
    b_t: Vec<f32>,
    /// `C B^T`, `[Q, Q]`, lower triangle.
    cb: Vec<f32>,
    /// The masked, decayed, dt-scaled `M`, `[Q, Q]`, lower triangle.
    m: Vec<f32>,
    /// Per head `[N, P]` carried state.
    states: Vec<f32>,
    /// The chunk's `Y`, `[Q, P]`.
    y: Vec<f32>,
    /// `w * X`, `[Q, P]`.
    wx: Vec<f32>,
    /// The head's dt over the chunk.
    dt: Vec<f32>,
    /// `cum[t]`.
    cum: Vec<f32>,
    /// `seg[t, s]` for the current row `t`.
    seg: Vec<f32>,
}

simd_fn! {
    /// Scans one unit's heads over its sequence, chunk by chunk, writing their columns of `y`.
    fn scan_unit(ctx: &Ctx<'_>, unit: &Unit, y: DisjointOut<'_>) {
        let SsdShape { num_heads, head_dim: p, n_groups, state_size: n, chunk_size } = ctx.shape;
        let q = chunk_size.min(unit.len);
        // Columns of B^T and C B^T padded to whole vector groups, so their tiles need no edges.
        let qp = q.next_multiple_of(16);
        let (gn, hp) = (n_groups * n, num_heads * p);
        let mut s = Scratch {
            b_t: vec![0.0; n * qp],
            cb: vec![0.0; q * qp],
            m: vec![0.0; q * q],
            states: vec![0.0; unit.heads * n * p],
            y: vec![0.0; q * p],
            wx: vec![0.0; q * p],
            dt: vec![0.0; q],
            cum: vec![0.0; q],
            seg: vec![0.0; q],
        };
        let g_off = unit.group * n;
        for c0 in (0..unit.len).step_by(q) {
            let l = q.min(unit.len - c0);
            let t0 = unit.start + c0;
            let has_state = c0 > 0;
            let carries = c0 + l < unit.len;
            for t in 0..l {
                for (k, &v) in ctx.b[(t0 + t) * gn + g_off..][..n].iter().enumerate() {
                    s.b_t[k * qp + t] = v;
                }
            }
            let c_chunk = Mat { data: &ctx.c[t0 * gn + g_off..], ld: gn };
            let b_t = Mat { data: &s.b_t, ld: qp };
            // Columns l.. of b_t hold zeros or the previous chunk's values: computed, never read.
            gemm_lower_n::<false>(l, qp, n, 0, c_chunk, b_t, MatMut { data: &mut s.cb, ld: qp });

            for i in 0..unit.heads {
                let h = unit.first_head + i;
                let a_h = ctx.a[h];
                for (t, v) in s.dt[..l].iter_mut().enumerate() {
                    *v = ctx.dt[(t0 + t) * num_heads + h];
                }
                // Row t of M from seg[t, .], updated in place from row t - 1: seg[t, s] =
                // seg[t - 1, s] + a_t for s < t, and seg[t, t] = 0.
                let mut cum = 0.0f32;
                for t in 0..l {
                    let a_t = s.dt[t] * a_h;
                    cum += a_t;
                    s.cum[t] = cum;
                    for v in &mut s.seg[..t] {
                        *v += a_t;
                    }
                    s.seg[t] = 0.0;
                    let row = &mut s.m[t * q..t * q + t + 1];
                    let cb_row = &s.cb[t * qp..t * qp + t + 1];
                    for (((mv, &cbv), &sv), &dtv) in row.iter_mut().zip(cb_row).zip(&s.seg).zip(&s.dt) {
                        *mv = cbv * exp(sv) * dtv;
                    }
                }

                let state = &mut s.states[i * n * p..(i + 1) * n * p];
                let x_head = Mat { data: &ctx.x[t0 * hp + h * p..], ld: hp };
                let m = Mat { data: &s.m, ld: q };
                if has_state {
                    let state_m = Mat { data: state, ld: p };
                    gemm::<false>(l, p, n, c_chunk, state_m, MatMut { data: &mut s.y, ld: p });
                    for (row, &cv) in s.y.chunks_exact_mut(p).zip(&s.cum[..l]) {
                        let decay = exp(cv);
                        for v in row {
                            *v *= decay;
                        }
                    }
                    gemm_lower_k::<true>(l, p, 0, m, x_head, MatMut { data: &mut s.y, ld: p });
                } else {
                    gemm_lower_k::<false>(l, p, 0, m, x_head, MatMut { data: &mut s.y, ld: p });
                }

                let d_h = ctx.d[h];
                for t in 0..l {
                    let at = (t0 + t) * hp + h * p;
                    // SAFETY: this unit is the only one writing head h's columns of the sequence's
                    // rows, and this is the only live slice it holds.
                    let out = unsafe { y.range(at, p) };
                    let x_row = &ctx.x[at..at + p];
                    for ((o, &xv), &yv) in out.iter_mut().zip(x_row).zip(&s.y[t * p..(t + 1) * p]) {
                        *o = d_h.mul_add(xv, yv);
                    }
                }

                if carries {
                    // seg now holds seg[l - 1, .]: the decay from each token to the chunk's end.
                    for t in 0..l {
                        let w = exp(s.seg[t]) * s.dt[t];
                        let x_row = &ctx.x[(t0 + t) * hp + h * p..][..p];
                        for (o, &xv) in s.wx[t * p..(t + 1) * p].iter_mut().zip(x_row) {
                            *o = w * xv;
                        }
                    }
                    let decay = exp(s.cum[l - 1]);
                    for v in state.iter_mut() {
                        *v *= decay;
                    }
                    let wx = Mat { data: &s.wx, ld: p };
                    gemm::<true>(n, p, l, b_t, wx, MatMut { data: state, ld: p });
                }
            }
        }
    }
}
