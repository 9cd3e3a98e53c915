//! The packed sequence ops against plain f64 references, and their batch invariance by bytes.
//!
//! References are written the obvious way (per token, per element, f64 accumulation) so that they
//! share nothing with the optimised code but the math.

use marc_kernels::ops::{AttentionShape, SsdShape, causal_attention, causal_conv1d_silu, ssd_scan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn uniform(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn cu_of(lens: &[usize]) -> Vec<usize> {
    std::iter::once(0)
        .chain(lens.iter().scan(0, |acc, &l| {
            *acc += l;
            Some(*acc)
        }))
        .collect()
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// An op on a packed batch: `(cu_seqlens, packed inputs) -> packed output`.
type PackedOp<'a> = dyn Fn(&[usize], &[Vec<f32>]) -> Vec<f32> + Sync + 'a;

/// One sequence's per-token inputs, each `[len, width]` row-major.
#[derive(Clone)]
struct Seq {
    len: usize,
    parts: Vec<Vec<f32>>,
}

/// Packs `seqs`, runs `op(cu_seqlens, packed parts)` -> packed `[T, out_width]`, splits per sequence.
fn run_packed(seqs: &[&Seq], out_width: usize, op: &PackedOp) -> Vec<Vec<f32>> {
    let cu = cu_of(&seqs.iter().map(|s| s.len).collect::<Vec<_>>());
    let packed: Vec<Vec<f32>> = (0..seqs[0].parts.len())
        .map(|i| seqs.iter().flat_map(|s| s.parts[i].iter().copied()).collect())
        .collect();
    let out = op(&cu, &packed);
    cu.windows(2)
        .map(|w| out[w[0] * out_width..w[1] * out_width].to_vec())
        .collect()
}

/// Each sequence alone (one thread) must match, bit for bit, every packing below on 1, 2 and 3
/// threads: in order, reversed, rotated, and with other sequences repeated around it.
fn assert_batch_invariant(seqs: &[Seq], out_width: usize, op: &PackedOp) {
    let run = |batch: &[&Seq]| run_packed(batch, out_width, op);
    let alone: Vec<Vec<f32>> = seqs.iter().map(|s| in_pool(1, || run(&[s]).remove(0))).collect();
    let n = seqs.len();
    let mut orders: Vec<Vec<usize>> = vec![(0..n).collect(), (0..n).rev().collect()];
    orders.push((0..n).map(|i| (i + 1) % n).collect());
    orders.push((0..n).flat_map(|i| [i, (i + n / 2) % n]).collect());
    for threads in [1, 2, 3] {
        for order in &orders {
            let batch: Vec<&Seq> = order.iter().map(|&i| &seqs[i]).collect();
            let outs = in_pool(threads, || run(&batch));
            for (&i, got) in order.iter().zip(&outs) {
                let same =
                    got.len() == alone[i].len() && got.iter().zip(&alone[i]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "sequence {i} (len {}) differs packed as {order:?} on {threads} threads",
                    seqs[i].len
                );
            }
        }
    }
}

// ---------------------------------------------------------------- causal_conv1d_silu

fn conv_reference(x: &[f32], cu: &[usize], w: &[f32], bias: Option<&[f32]>, k: usize) -> Vec<f64> {
    let ch = w.len() / k;
    let mut out = vec![0.0f64; x.len()];
    for seq in cu.windows(2) {
        for t in seq[0]..seq[1] {
            for c in 0..ch {
                let mut acc = bias.map_or(0.0, |b| b[c] as f64);
                for j in 0..k {
                    let src = t as isize - (k as isize - 1) + j as isize;
                    if src >= seq[0] as isize {
                        acc += w[c * k + j] as f64 * x[src as usize * ch + c] as f64;
                    }
                }
                out[t * ch + c] = acc / (1.0 + (-acc).exp());
            }
        }
    }
    out
}

#[test]
fn conv_matches_reference() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(ch, k, with_bias) in &[
        (37, 4, true),
        (64, 4, false),
        (2560, 4, true),
        (5, 1, true),
        (19, 3, true),
        (16, 7, false),
    ] {
        let lens = [1, 2, 0, 3, 9, 17];
        let cu = cu_of(&lens);
        let t = cu[cu.len() - 1];
        let x = uniform(&mut rng, t * ch, -2.0, 2.0);
        let w = uniform(&mut rng, ch * k, -1.0, 1.0);
        let bias = uniform(&mut rng, ch, -0.5, 0.5);
        let bias = with_bias.then_some(&bias[..]);
        let mut out = vec![f32::NAN; x.len()];
        causal_conv1d_silu(&x, &cu, &w, bias, k, &mut out).unwrap();
        let err = rel_l2(&out, &conv_reference(&x, &cu, &w, bias, k));
        assert!(err <= 1e-6, "C={ch} K={k}: rel L2 {err}");
    }
}

#[test]
fn conv_kernel_longer_than_sequences() {
    let mut rng = StdRng::seed_from_u64(7);
    let (ch, k) = (3, 9);
    let cu = cu_of(&[1, 4, 2]);
    let x = uniform(&mut rng, 7 * ch, -2.0, 2.0);
    let w = uniform(&mut rng, ch * k, -1.0, 1.0);
    let mut out = vec![f32::NAN; x.len()];
    causal_conv1d_silu(&x, &cu, &w, None, k, &mut out).unwrap();
    assert!(rel_l2(&out, &conv_reference(&x, &cu, &w, None, k)) <= 1e-6);
}

#[test]
fn conv_is_batch_invariant() {
    let (ch, k) = (2560 + 21, 4);
    let mut rng = StdRng::seed_from_u64(2);
    let w = uniform(&mut rng, ch * k, -1.0, 1.0);
    let bias = uniform(&mut rng, ch, -0.5, 0.5);
    let seqs: Vec<Seq> = [5, 1, 0, 3, 37]
        .iter()
        .map(|&len| Seq {
            len,
            parts: vec![uniform(&mut rng, len * ch, -2.0, 2.0)],
        })
        .collect();
    assert_batch_invariant(&seqs, ch, &|cu, parts| {
        let mut out = vec![0.0; parts[0].len()];
        causal_conv1d_silu(&parts[0], cu, &w, Some(&bias), k, &mut out).unwrap();
        out
    });
}

// ---------------------------------------------------------------- ssd_scan

struct SsdCase {
    shape: SsdShape,
    a: Vec<f32>,
    d: Vec<f32>,
}

impl SsdCase {
    fn new(rng: &mut StdRng, shape: SsdShape, a_range: (f32, f32)) -> Self {
        let a = uniform(rng, shape.num_heads, a_range.0, a_range.1)
            .iter()
            .map(|v| -v)
            .collect();
        // D small so that the skip term `D x` does not hide errors in the scan itself.
        Self {
            shape,
            a,
            d: uniform(rng, shape.num_heads, -0.1, 0.1),
        }
    }

    /// Per-token parts `[x, dt, b, c]` of one random sequence.
    fn seq(&self, rng: &mut StdRng, len: usize, dt_range: (f32, f32)) -> Seq {
        let s = &self.shape;
        let gn = s.n_groups * s.state_size;
        let parts = vec![
            uniform(rng, len * s.num_heads * s.head_dim, -1.0, 1.0),
            uniform(rng, len * s.num_heads, dt_range.0, dt_range.1),
            uniform(rng, len * gn, -1.0, 1.0),
            uniform(rng, len * gn, -1.0, 1.0),
        ];
        Seq { len, parts }
    }

    fn run(&self, cu: &[usize], p: &[Vec<f32>]) -> Vec<f32> {
        let mut y = vec![f32::NAN; p[0].len()];
        ssd_scan(&self.shape, cu, &p[0], &p[1], &self.a, &p[2], &p[3], &self.d, &mut y).unwrap();
        y
    }

    /// The per-token recurrence in f64.
    fn reference(&self, cu: &[usize], p: &[Vec<f32>]) -> Vec<f64> {
        let SsdShape {
            num_heads: hh,
            head_dim: pp,
            n_groups: gg,
            state_size: nn,
            ..
        } = self.shape;
        let (x, dt, b, c) = (&p[0], &p[1], &p[2], &p[3]);
        let mut y = vec![0.0f64; x.len()];
        for seq in cu.windows(2) {
            let mut s = vec![0.0f64; hh * pp * nn];
            for t in seq[0]..seq[1] {
                for h in 0..hh {
                    let g = h / (hh / gg);
                    let dt_h = dt[t * hh + h] as f64;
                    let decay = (dt_h * self.a[h] as f64).exp();
                    for ch in 0..pp {
                        let xv = x[t * hh * pp + h * pp + ch] as f64;
                        let mut acc = self.d[h] as f64 * xv;
                        for n in 0..nn {
                            let st = &mut s[(h * pp + ch) * nn + n];
                            *st = decay * *st + dt_h * b[t * gg * nn + g * nn + n] as f64 * xv;
                            acc += c[t * gg * nn + g * nn + n] as f64 * *st;
                        }
                        y[t * hh * pp + h * pp + ch] = acc;
                    }
                }
            }
        }
        y
    }
}

#[test]
fn ssd_matches_recurrence() {
    let mut rng = StdRng::seed_from_u64(3);
    // (shape, -A range, dt range): typical, strong decay (dt*A down to -20), tiny decay (dt*A ~ -1e-6).
    let cases = [
        (SsdShape::new(4, 16, 1, 8, 16), (1.0, 16.0), (0.001, 0.1)),
        (SsdShape::new(6, 5, 2, 7, 8), (1.0, 16.0), (0.001, 0.5)),
        (SsdShape::new(8, 24, 2, 16, 16), (5.0, 10.0), (0.5, 2.0)),
        (SsdShape::new(4, 16, 4, 16, 16), (1e-6, 2e-6), (0.5, 1.0)),
        (SsdShape::new(8, 64, 2, 64, 64), (1.0, 16.0), (0.001, 0.1)),
    ];
    for (shape, a_range, dt_range) in cases {
        let case = SsdCase::new(&mut rng, shape, a_range);
        let q = shape.chunk_size;
        for lens in [
            vec![1],
            vec![q - 1],
            vec![q],
            vec![q + 1],
            vec![3 * q + 5],
            vec![q + 1, 0, 3 * q + 5, 2, q],
        ] {
            let seqs: Vec<Seq> = lens.iter().map(|&l| case.seq(&mut rng, l, dt_range)).collect();
            let cu = cu_of(&lens);
            let parts: Vec<Vec<f32>> = (0..4)
                .map(|i| seqs.iter().flat_map(|s| s.parts[i].clone()).collect())
                .collect();
            let err = rel_l2(&case.run(&cu, &parts), &case.reference(&cu, &parts));
            assert!(err <= 1e-5, "{shape:?} lens {lens:?}: rel L2 {err}");
        }
    }
}

#[test]
fn ssd_degenerate_shapes() {
    let mut rng = StdRng::seed_from_u64(8);
    // One of everything, chunk 1 (every token its own chunk), and a chunk longer than the sequence.
    for shape in [
        SsdShape::new(1, 1, 1, 1, 1),
        SsdShape::new(2, 3, 1, 2, 1),
        SsdShape::new(3, 2, 3, 1, 1000),
    ] {
        let case = SsdCase::new(&mut rng, shape, (0.5, 4.0));
        let lens = [5, 1, 0, 17];
        let seqs: Vec<Seq> = lens.iter().map(|&l| case.seq(&mut rng, l, (0.01, 0.5))).collect();
        let parts: Vec<Vec<f32>> = (0..4)
            .map(|i| seqs.iter().flat_map(|s| s.parts[i].clone()).collect())
            .collect();
        let cu = cu_of(&lens);
        let err = rel_l2(&case.run(&cu, &parts), &case.reference(&cu, &parts));
        assert!(err <= 1e-5, "{shape:?}: rel L2 {err}");
    }
}

#[test]
fn ssd_is_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(4);
    // A small shape, and the bench shape (full 64-wide tiles, chunk 64).
    for (shape, lens) in [
        (SsdShape::new(8, 16, 2, 16, 16), [33, 1, 0, 16, 70]),
        (SsdShape::new(32, 64, 4, 64, 64), [130, 1, 0, 64, 65]),
    ] {
        let case = SsdCase::new(&mut rng, shape, (1.0, 8.0));
        let seqs: Vec<Seq> = lens.iter().map(|&l| case.seq(&mut rng, l, (0.01, 0.3))).collect();
        assert_batch_invariant(&seqs, shape.num_heads * shape.head_dim, &|cu, parts| {
            case.run(cu, parts)
        });
    }
}

// ---------------------------------------------------------------- causal_attention

fn attention_reference(shape: &AttentionShape, cu: &[usize], q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
    let AttentionShape {
        num_heads: hq,
        num_kv_heads: hkv,
        head_dim: d,
    } = *shape;
    let scale = 1.0 / (d as f64).sqrt();
    let mut out = vec![0.0f64; q.len()];
    for seq in cu.windows(2) {
        for i in seq[0]..seq[1] {
            for h in 0..hq {
                let g = h / (hq / hkv);
                let dot = |j: usize| {
                    (0..d)
                        .map(|c| q[i * hq * d + h * d + c] as f64 * k[j * hkv * d + g * d + c] as f64)
                        .sum::<f64>()
                        * scale
                };
                let top = (seq[0]..=i).map(dot).fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = (seq[0]..=i).map(|j| (dot(j) - top).exp()).collect();
                let sum: f64 = p.iter().sum();
                for c in 0..d {
                    let acc: f64 = (seq[0]..=i)
                        .zip(&p)
                        .map(|(j, &pj)| pj * v[j * hkv * d + g * d + c] as f64)
                        .sum();
                    out[i * hq * d + h * d + c] = acc / sum;
                }
            }
        }
    }
    out
}

fn attention_seq(rng: &mut StdRng, shape: &AttentionShape, len: usize) -> Seq {
    let (qw, kvw) = (shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim);
    // Wide enough that the softmax is far from uniform.
    let parts = vec![
        uniform(rng, len * qw, -2.0, 2.0),
        uniform(rng, len * kvw, -2.0, 2.0),
        uniform(rng, len * kvw, -1.0, 1.0),
    ];
    Seq { len, parts }
}

fn run_attention(shape: &AttentionShape, cu: &[usize], p: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![f32::NAN; p[0].len()];
    causal_attention(shape, cu, &p[0], &p[1], &p[2], &mut out).unwrap();
    out
}

#[test]
fn attention_matches_reference() {
    let mut rng = StdRng::seed_from_u64(5);
    let shapes = [
        AttentionShape {
            num_heads: 4,
            num_kv_heads: 4,
            head_dim: 32,
        }, // MHA
        AttentionShape {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
        }, // GQA, ratio 4
        AttentionShape {
            num_heads: 4,
            num_kv_heads: 1,
            head_dim: 16,
        }, // MQA
        AttentionShape {
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 20,
        }, // head_dim % 16 != 0
        AttentionShape {
            num_heads: 3,
            num_kv_heads: 3,
            head_dim: 72,
        },
    ];
    for shape in &shapes {
        for lens in [vec![1], vec![7], vec![33], vec![5, 0, 1, 64, 31], vec![130]] {
            let seqs: Vec<Seq> = lens.iter().map(|&l| attention_seq(&mut rng, shape, l)).collect();
            let parts: Vec<Vec<f32>> = (0..3)
                .map(|i| seqs.iter().flat_map(|s| s.parts[i].clone()).collect())
                .collect();
            let cu = cu_of(&lens);
            let got = run_attention(shape, &cu, &parts);
            let err = rel_l2(&got, &attention_reference(shape, &cu, &parts[0], &parts[1], &parts[2]));
            assert!(err <= 1e-5, "{shape:?} lens {lens:?}: rel L2 {err}");
        }
    }
}

#[test]
fn attention_is_batch_invariant() {
    let mut rng = StdRng::seed_from_u64(6);
    let shapes = [
        (
            AttentionShape {
                num_heads: 8,
                num_kv_heads: 2,
                head_dim: 24,
            },
            [40, 1, 0, 33, 97],
        ),
        (
            AttentionShape {
                num_heads: 16,
                num_kv_heads: 4,
                head_dim: 64,
            },
            [150, 1, 0, 64, 65],
        ),
    ];
    for (shape, lens) in shapes {
        let seqs: Vec<Seq> = lens.iter().map(|&l| attention_seq(&mut rng, &shape, l)).collect();
        let width = shape.num_heads * shape.head_dim;
        assert_batch_invariant(&seqs, width, &|cu, parts| run_attention(&shape, cu, parts));
    }
}
