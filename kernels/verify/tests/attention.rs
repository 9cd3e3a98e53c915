//! kernels/cuda/attention.cu on the CPU through the SIMT emulation, against
//! `marc_kernels::ops::causal_attention`.

mod common;

use common::*;
use marc_kernels::ops::{AttentionShape, causal_attention};

/// Query rows per block (ATTN_BQ) and threads per block (ATTN_THREADS).
const BQ: usize = 32;
const THREADS: u32 = 128;

fn check(case: &str, num_heads: usize, num_kv_heads: usize, head_dim: usize, lens: &[usize]) {
    let shape = AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    let cu = cu_of(lens);
    let tokens = *cu.last().unwrap();
    let mut rng = rng((tokens * 17 + num_heads * 5 + head_dim) as u64);
    let q = uniform(&mut rng, tokens * num_heads * head_dim, -2.0, 2.0);
    let k = uniform(&mut rng, tokens * num_kv_heads * head_dim, -2.0, 2.0);
    let v = uniform(&mut rng, tokens * num_kv_heads * head_dim, -1.0, 1.0);
    let mut want = vec![0.0; q.len()];
    causal_attention(&shape, &cu, &q, &k, &v, &mut want).unwrap();

    let mut got = vec![f32::NAN; q.len()];
    let cu32 = cu_i32(&cu);
    let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
    let mut args = Args::new();
    args.input(&q)
        .input(&k)
        .input(&v)
        .input(&cu32)
        .int(num_heads as i32)
        .int(num_kv_heads as i32)
        .float(scale)
        .output(&mut got);
    let max_len = lens.iter().copied().max().unwrap_or(0).max(1);
    launch(
        &format!("causal_attention_f32_d{head_dim}"),
        [dim(max_len.div_ceil(BQ)), dim(num_heads), dim(lens.len())],
        [THREADS, 1, 1],
        0,
        &mut args,
    );
    assert_close(case, &got, &want, F32_REL_L2);
}

#[test]
fn gqa_over_packed_sequences_across_tile_boundaries() {
    // Lengths 1, just below, at and above a tile, two tiles and a bit, and an empty sequence.
    check("GQA 4/2, d64", 4, 2, 64, &[1, 31, 32, 0, 33, 70]);
}

#[test]
fn mha_and_mqa() {
    check("MHA 2/2, d64", 2, 2, 64, &[5, 40]);
    check("MQA 3/1, d64", 3, 1, 64, &[17]);
}

#[test]
fn head_dim_128() {
    check("GQA 2/1, d128", 2, 1, 128, &[3, 34]);
}

/// The test models' widths (the fixtures use 8, 16, 24 and 32), across a tile boundary.
#[test]
fn small_head_dims() {
    check("GQA 4/2, d8", 4, 2, 8, &[1, 33]);
    check("MQA 3/1, d16", 3, 1, 16, &[40, 2]);
    check("GQA 2/1, d24", 2, 1, 24, &[31, 32]);
    check("MHA 2/2, d32", 2, 2, 32, &[70]);
}
