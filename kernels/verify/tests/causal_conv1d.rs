//! kernels/cuda/causal_conv1d.cu on the CPU through the SIMT emulation, against
//! `marc_kernels::ops::causal_conv1d_silu`.

mod common;

use common::*;
use marc_kernels::ops::causal_conv1d_silu;

const THREADS: usize = 128;

fn check(case: &str, lens: &[usize], channels: usize, kernel_size: usize, with_bias: bool) {
    let cu = cu_of(lens);
    let tokens = *cu.last().unwrap();
    let mut rng = rng((tokens * 131 + channels * 7 + kernel_size) as u64);
    let x = uniform(&mut rng, tokens * channels, -2.0, 2.0);
    let w = uniform(&mut rng, channels * kernel_size, -1.0, 1.0);
    let bias = with_bias.then(|| uniform(&mut rng, channels, -0.5, 0.5));
    let mut want = vec![0.0; x.len()];
    causal_conv1d_silu(&x, &cu, &w, bias.as_deref(), kernel_size, &mut want).unwrap();

    let mut got = vec![f32::NAN; x.len()];
    let cu32 = cu_i32(&cu);
    let mut args = Args::new();
    args.input(&x).input(&cu32).int(lens.len() as i32).input(&w);
    match &bias {
        Some(b) => args.input(b),
        None => args.null(),
    };
    args.int(kernel_size as i32).int(channels as i32).output(&mut got);
    launch(
        "causal_conv1d_silu_f32",
        [dim(channels.div_ceil(THREADS)), dim(tokens), 1],
        [dim(THREADS), 1, 1],
        0,
        &mut args,
    );
    assert_close(case, &got, &want, F32_REL_L2);
}

#[test]
fn single_sequences_of_length_one_and_longer_than_the_kernel() {
    check("one token", &[1], 5, 4, true);
    check("seven tokens", &[7], 37, 4, true);
}

#[test]
fn packed_sequences_reset_the_history_at_each_start() {
    // Lengths below, at and above K - 1, an empty sequence, and channels across two blocks.
    check("packed", &[1, 3, 0, 4, 9], 200, 4, true);
    check("packed, no bias", &[2, 5, 1], 33, 4, false);
    check("kernel of one", &[3, 2], 16, 1, true);
}
