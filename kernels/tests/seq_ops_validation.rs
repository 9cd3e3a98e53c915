//! The packed sequence ops refuse bad arguments with errors that name the argument, the expected
//! and the found value, and leave the output untouched.

use marc_kernels::ops::{AttentionShape, SeqOpError, SsdShape, causal_attention, causal_conv1d_silu, ssd_scan};

/// Asserts the error's message mentions every one of `needles`.
fn assert_mentions(err: SeqOpError, needles: &[&str]) {
    let msg = err.to_string();
    for needle in needles {
        assert!(msg.contains(needle), "`{msg}` does not mention `{needle}`");
    }
}

const SENTINEL: f32 = 7.5;

fn conv(x_len: usize, cu: &[usize], w_len: usize, bias_len: Option<usize>, k: usize, out_len: usize) -> SeqOpError {
    let bias = bias_len.map(|n| vec![0.0; n]);
    let mut out = vec![SENTINEL; out_len];
    let err = causal_conv1d_silu(&vec![1.0; x_len], cu, &vec![1.0; w_len], bias.as_deref(), k, &mut out).unwrap_err();
    assert!(out.iter().all(|&v| v == SENTINEL), "output written on error");
    err
}

#[test]
fn cu_seqlens_errors() {
    // C = 2 (weight 8 / K 4), T = 3 (x 6 / C 2).
    assert_mentions(conv(6, &[], 8, None, 4, 6), &["cu_seqlens", "1", "0"]);
    assert_mentions(
        conv(6, &[1, 3], 8, None, 4, 6),
        &["cu_seqlens[0]", "expected 0", "found 1"],
    );
    assert_mentions(
        conv(6, &[0, 2, 1, 3], 8, None, 4, 6),
        &["cu_seqlens[2]", ">= 2", "found 1"],
    );
    assert_mentions(
        conv(6, &[0, 2], 8, None, 4, 6),
        &["cu_seqlens[1]", "expected 3", "found 2", "`x`"],
    );
}

#[test]
fn conv_errors() {
    assert_mentions(
        conv(6, &[0, 3], 8, Some(3), 4, 6),
        &["`bias`", "expected length 2", "found 3"],
    );
    assert_mentions(
        conv(6, &[0, 3], 8, None, 4, 5),
        &["`out`", "expected length 6", "found 5"],
    );
    assert_mentions(
        conv(7, &[0, 3], 8, None, 4, 7),
        &["`x`", "multiple of the row width 2", "found 7"],
    );
    assert_mentions(conv(6, &[0, 3], 9, None, 4, 6), &["`weight`", "row width 4", "found 9"]);
    assert_mentions(
        conv(6, &[0, 3], 8, None, 0, 6),
        &["`kernel_size`", "positive", "found 0"],
    );
    assert_mentions(conv(0, &[0], 0, None, 4, 0), &["`weight`", "positive", "found 0"]);
}

/// H = 4, P = 2, G = 2, N = 3 unless `shape` says otherwise; T = 2. `lens` overrides the lengths of
/// [x, dt, a, b, c, d, y].
fn ssd(shape: SsdShape, cu: &[usize], lens: [usize; 7]) -> SeqOpError {
    let v: Vec<Vec<f32>> = lens[..6].iter().map(|&n| vec![0.5; n]).collect();
    let mut y = vec![SENTINEL; lens[6]];
    let err = ssd_scan(&shape, cu, &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &mut y).unwrap_err();
    assert!(y.iter().all(|&x| x == SENTINEL), "output written on error");
    err
}

#[test]
fn ssd_errors() {
    let shape = SsdShape {
        num_heads: 4,
        head_dim: 2,
        n_groups: 2,
        state_size: 3,
        chunk_size: 8,
    };
    let ok = [16, 8, 4, 12, 12, 4, 16];
    let with = |i: usize, n: usize| {
        let mut lens = ok;
        lens[i] = n;
        lens
    };
    assert_mentions(ssd(shape, &[0, 1], ok), &["cu_seqlens[1]", "expected 2", "found 1"]);
    assert_mentions(
        ssd(shape, &[0, 2], with(1, 7)),
        &["`dt`", "expected length 8", "found 7"],
    );
    assert_mentions(
        ssd(shape, &[0, 2], with(2, 3)),
        &["`a`", "expected length 4", "found 3"],
    );
    assert_mentions(
        ssd(shape, &[0, 2], with(3, 13)),
        &["`b`", "expected length 12", "found 13"],
    );
    assert_mentions(
        ssd(shape, &[0, 2], with(4, 6)),
        &["`c`", "expected length 12", "found 6"],
    );
    assert_mentions(
        ssd(shape, &[0, 2], with(5, 5)),
        &["`d`", "expected length 4", "found 5"],
    );
    assert_mentions(
        ssd(shape, &[0, 2], with(6, 15)),
        &["`y`", "expected length 16", "found 15"],
    );
    assert_mentions(ssd(shape, &[0, 2], with(0, 15)), &["`x`", "row width 8", "found 15"]);
    let bad_groups = SsdShape { n_groups: 3, ..shape };
    assert_mentions(
        ssd(bad_groups, &[0, 2], ok),
        &["`num_heads`", "multiple of `n_groups` = 3", "found 4"],
    );
    let no_chunk = SsdShape { chunk_size: 0, ..shape };
    assert_mentions(ssd(no_chunk, &[0, 2], ok), &["`chunk_size`", "found 0"]);
}

/// Hq = 4, Hkv = 2, D = 3 unless `shape` says otherwise; T = 2. `lens` are those of [q, k, v, out].
fn attention(shape: AttentionShape, cu: &[usize], lens: [usize; 4]) -> SeqOpError {
    let v: Vec<Vec<f32>> = lens[..3].iter().map(|&n| vec![0.5; n]).collect();
    let mut out = vec![SENTINEL; lens[3]];
    let err = causal_attention(&shape, cu, &v[0], &v[1], &v[2], &mut out).unwrap_err();
    assert!(out.iter().all(|&x| x == SENTINEL), "output written on error");
    err
}

#[test]
fn attention_errors() {
    let shape = AttentionShape {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 3,
    };
    assert_mentions(
        attention(shape, &[0, 3], [24, 12, 12, 24]),
        &["cu_seqlens[1]", "expected 2", "found 3", "`q`"],
    );
    assert_mentions(
        attention(shape, &[0, 2], [24, 11, 12, 24]),
        &["`k`", "expected length 12", "found 11"],
    );
    assert_mentions(
        attention(shape, &[0, 2], [24, 12, 13, 24]),
        &["`v`", "expected length 12", "found 13"],
    );
    assert_mentions(
        attention(shape, &[0, 2], [24, 12, 12, 25]),
        &["`out`", "expected length 24", "found 25"],
    );
    assert_mentions(
        attention(shape, &[0, 2], [23, 12, 12, 23]),
        &["`q`", "row width 12", "found 23"],
    );
    let bad_kv = AttentionShape {
        num_kv_heads: 3,
        ..shape
    };
    assert_mentions(
        attention(bad_kv, &[0, 2], [24, 18, 18, 24]),
        &["`num_heads`", "`num_kv_heads` = 3", "found 4"],
    );
    let no_dim = AttentionShape { head_dim: 0, ..shape };
    assert_mentions(attention(no_dim, &[0], [0, 0, 0, 0]), &["`head_dim`", "found 0"]);
}

#[test]
fn empty_batches_are_fine() {
    let mut out: Vec<f32> = vec![];
    causal_conv1d_silu(&[], &[0], &[1.0; 8], None, 4, &mut out).unwrap();
    causal_conv1d_silu(&[], &[0, 0, 0], &[1.0; 8], None, 4, &mut out).unwrap();
    let shape = SsdShape {
        num_heads: 4,
        head_dim: 2,
        n_groups: 2,
        state_size: 3,
        chunk_size: 8,
    };
    ssd_scan(&shape, &[0, 0], &[], &[], &[0.0; 4], &[], &[], &[0.0; 4], &mut out).unwrap();
    let shape = AttentionShape {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 3,
    };
    causal_attention(&shape, &[0], &[], &[], &[], &mut out).unwrap();
}
