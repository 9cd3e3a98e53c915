//! CPU implementation of [`super::ssd_scan`] in the chunked SSD form.
//!
//! A sequence is cut into chunks of `Q = chunk_size` tokens from its own start (the last one may be
//! shorter). With `a_t = dt_t A` and, inside a chunk, `cum[t] = a_0 + ... + a_t` and
//! `seg[t, s] = a_{s+1} + ... + a_t` (Mamba-2's `segsum`), a chunk computes, per head:
//!
//! * `Y = exp(cum) * (C S_in) + M X` with `M[t, s] = (C B^T)[t, s] exp(seg[t, s]) dt_s` for
//!   `s <= t`: the carried state's contribution plus the intra-chunk one as a masked, decayed
//!   matrix;
//! * `S_out = exp(cum[Q-1]) S_in + B^T (w * X)` with `w_s = exp(seg[Q-1, s]) dt_s`: the state
//!   carried to the next chunk, kept as `[N, P]` per head;
//! * `y = D x + Y`.
//!
//! Decays are `exp` of segment sums, never a product `exp(cum[t]) * exp(-cum[s])` (which
//! overflows). `seg` is accumulated as running sums from each `s`, as Mamba-2's stable `segsum`
//! does (a cumsum of the masked `a`), rather than as the difference `cum[t] - cum[s]` of its
//! `segsum_unstable`: each exponent is a sum of non-positive terms, without the cancellation
//! between two large cumulative sums that costs precision under strong decay.
//!
//! `C B^T` depends only on the group, so a unit of work is (sequence, group, block of that group's
//! heads) and computes it once per chunk. Each head's arithmetic is the same in any unit.

use rayon::prelude::*;

use super::SsdShape;
use crate::ops::seq_gemm::{Mat, MatMut, gemm, gemm_lower_k, gemm_lower_n};
use crate::ops::seq_math::{exp, simd_fn};
use crate::ops::varlen::{DisjointOut, carve, heads_per_unit, sequences_longest_first, with_scratch};

/// Validated operands shared by all units.
struct Ctx<'a> {
    shape: SsdShape,
    /// Row `t` of x starts at `x[t * x_stride]`.
    x: &'a [f32],
    x_stride: usize,
    /// Row `t` of B (and of C) starts at `b[t * bc_stride]` (`c[t * bc_stride]`).
    bc_stride: usize,
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

/// Arguments as validated by [`super::ssd_scan`]; x, B and C rows are `x_stride` and
/// `bc_stride` floats apart.
#[allow(clippy::too_many_arguments)]
pub(super) fn ssd_scan(
    shape: &SsdShape,
    cu_seqlens: &[usize],
    (x, x_stride): (&[f32], usize),
    bc_stride: usize,
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
        x_stride,
        bc_stride,
        dt,
        a,
        b,
        c,
        d,
    };
    let y = DisjointOut::new(y);
    units.par_iter().for_each(|unit| scan_unit(&ctx, unit, y));
}

/// Scratch of one unit, sized by the chunk and the unit's heads, never by the sequence.
struct Scratch<'a> {
    /// The chunk's B transposed to `[N, Q]` (padded to `qp` columns).
    b_t: &'a mut [f32],
    /// `C B^T`, `[Q, qp]`, lower triangle.
    cb: &'a mut [f32],
    /// The masked, decayed, dt-scaled `M`, `[Q, qp]`, lower triangle.
    m: &'a mut [f32],
    /// Per head `[N, P]` carried state.
    states: &'a mut [f32],
    /// The head's x over the chunk, packed to `[Q, P]`: the packed rows are 8 KiB apart at the
    /// bench shape, which maps a whole chunk onto a few L1 sets.
    x: &'a mut [f32],
    /// The chunk's `Y`, `[Q, P]`.
    y: &'a mut [f32],
    /// `w * X`, `[Q, P]`.
    wx: &'a mut [f32],
    /// The head's dt over the chunk (`qp` long, like the three below).
    dt: &'a mut [f32],
    /// `cum[t]`.
    cum: &'a mut [f32],
    /// `seg[t, s]` for the current row `t`.
    seg: &'a mut [f32],
    /// Per-token factors: `exp(cum[t])`, then `w_t`.
    f: &'a mut [f32],
}

/// Scans one unit's heads over its sequence, chunk by chunk, writing their columns of `y`.
fn scan_unit(ctx: &Ctx<'_>, unit: &Unit, y: DisjointOut<'_>) {
    let SsdShape {
        head_dim: p,
        state_size: n,
        chunk_size,
        ..
    } = ctx.shape;
    let q = chunk_size.min(unit.len);
    let qp = q.next_multiple_of(16);
    let len = n * qp + 2 * q * qp + unit.heads * n * p + 3 * q * p + 4 * qp;
    with_scratch(len, |mut buf| {
        let s = Scratch {
            b_t: carve(&mut buf, n * qp),
            cb: carve(&mut buf, q * qp),
            m: carve(&mut buf, q * qp),
            states: carve(&mut buf, unit.heads * n * p),
            x: carve(&mut buf, q * p),
            y: carve(&mut buf, q * p),
            wx: carve(&mut buf, q * p),
            dt: carve(&mut buf, qp),
            cum: carve(&mut buf, qp),
            seg: carve(&mut buf, qp),
            f: carve(&mut buf, qp),
        };
        // Everything is written before it is read (the state by the first chunk's update), except
        // scratch that feeds only results nobody reads (columns l.. of b_t, M above the diagonal).
        scan_chunks(ctx, unit, y, s);
    });
}

simd_fn! {
    /// The body of [`scan_unit`] on its scratch.
    fn scan_chunks(ctx: &Ctx<'_>, unit: &Unit, y: DisjointOut<'_>, s: Scratch<'_>) {
        let SsdShape { num_heads, head_dim: p, n_groups, state_size: n, chunk_size } = ctx.shape;
        let q = chunk_size.min(unit.len);
        let qp = q.next_multiple_of(16);
        let (gn, hp) = (ctx.bc_stride, num_heads * p);
        debug_assert!(gn >= n_groups * n);
        let g_off = unit.group * n;
        for c0 in (0..unit.len).step_by(q) {
            let l = q.min(unit.len - c0);
            let t0 = unit.start + c0;
            let has_state = c0 > 0;
            let carries = c0 + l < unit.len;
            // Token by token: each B row is read once, contiguously, and scattered into b_t, which
            // stays in L1 (reading down a column would walk the 1 KiB-strided rows N times).
            for t in 0..l {
                for (k, &v) in ctx.b[(t0 + t) * gn + g_off..][..n].iter().enumerate() {
                    s.b_t[k * qp + t] = v;
                }
            }
            let c_chunk = Mat { data: &ctx.c[t0 * gn + g_off..], ld: gn };
            let b_t = Mat { data: s.b_t, ld: qp };
            // Columns l.. of b_t hold zeros or the previous chunk's values: computed, never read.
            gemm_lower_n::<false>(l, qp, n, 0, c_chunk, b_t, MatMut { data: s.cb, ld: qp });

            for i in 0..unit.heads {
                let h = unit.first_head + i;
                let a_h = ctx.a[h];
                for (t, v) in s.dt[..l].iter_mut().enumerate() {
                    *v = ctx.dt[(t0 + t) * num_heads + h];
                }
                // Row t of M from seg[t, .], updated in place from row t - 1: seg[t, s] =
                // seg[t - 1, s] + a_t for s < t, and seg[t, t] = 0. Rows run to whole vectors
                // (`w`): the entries past t are scratch that nothing reads (seg[s] for s > t is
                // reset at step s), and it spares a scalar tail of `exp` on every row.
                let mut cum = 0.0f32;
                for t in 0..l {
                    let a_t = s.dt[t] * a_h;
                    cum += a_t;
                    s.cum[t] = cum;
                    let w = (t + 1).next_multiple_of(16);
                    for v in &mut s.seg[..w] {
                        *v += a_t;
                    }
                    s.seg[t] = 0.0;
                    let row = &mut s.m[t * qp..t * qp + w];
                    let cb_row = &s.cb[t * qp..t * qp + w];
                    let terms = cb_row.iter().zip(s.seg.iter()).zip(s.dt.iter());
                    for (mv, ((&cbv, &sv), &dtv)) in row.iter_mut().zip(terms) {
                        *mv = cbv * exp(sv) * dtv;
                    }
                }

                let state = &mut s.states[i * n * p..(i + 1) * n * p];
                for (t, row) in s.x[..l * p].chunks_exact_mut(p).enumerate() {
                    row.copy_from_slice(&ctx.x[(t0 + t) * ctx.x_stride + h * p..][..p]);
                }
                let x_head = Mat { data: s.x, ld: p };
                let m = Mat { data: s.m, ld: qp };
                if has_state {
                    let state_m = Mat { data: state, ld: p };
                    gemm::<false>(l, p, n, c_chunk, state_m, MatMut { data: s.y, ld: p });
                    for (f, &cv) in s.f.iter_mut().zip(s.cum.iter()) {
                        *f = exp(cv);
                    }
                    for (row, &decay) in s.y[..l * p].chunks_exact_mut(p).zip(s.f.iter()) {
                        for v in row {
                            *v *= decay;
                        }
                    }
                    gemm_lower_k::<true>(l, p, 0, m, x_head, MatMut { data: s.y, ld: p });
                } else {
                    gemm_lower_k::<false>(l, p, 0, m, x_head, MatMut { data: s.y, ld: p });
                }

                let d_h = ctx.d[h];
                for t in 0..l {
                    let at = (t0 + t) * hp + h * p;
                    // SAFETY: this unit is the only one writing head h's columns of the sequence's
                    // rows, and this is the only live slice it holds.
                    let out = unsafe { y.range(at, p) };
                    let x_row = &s.x[t * p..(t + 1) * p];
                    for ((o, &xv), &yv) in out.iter_mut().zip(x_row).zip(&s.y[t * p..(t + 1) * p]) {
                        *o = d_h.mul_add(xv, yv);
                    }
                }

                if carries {
                    // seg now holds seg[l - 1, .]: the decay from each token to the chunk's end.
                    for ((f, &sv), &dtv) in s.f.iter_mut().zip(s.seg.iter()).zip(s.dt.iter()) {
                        *f = exp(sv) * dtv;
                    }
                    for ((wx_row, x_row), &w) in
                        s.wx[..l * p].chunks_exact_mut(p).zip(s.x.chunks_exact(p)).zip(s.f.iter())
                    {
                        for (o, &xv) in wx_row.iter_mut().zip(x_row) {
                            *o = w * xv;
                        }
                    }
                    let wx = Mat { data: s.wx, ld: p };
                    if has_state {
                        let decay = exp(s.cum[l - 1]);
                        for v in state.iter_mut() {
                            *v *= decay;
                        }
                        gemm::<true>(n, p, l, b_t, wx, MatMut { data: state, ld: p });
                    } else {
                        // The first chunk starts from the zero state: chains start from +0.
                        gemm::<false>(n, p, l, b_t, wx, MatMut { data: state, ld: p });
                    }
                }
            }
        }
    }
}
