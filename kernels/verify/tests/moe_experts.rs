//! kernels/cuda/moe_experts.cu on the CPU through the SIMT emulation: relu2 against
//! `relu2_in_place`, the weighted un-permute against the CPU MoE block's sequence
//! (models/src/blocks/moe.rs: each slot's expert row times its routing weight, then the slots
//! added in order with `add_in_place`). Both kernels do the CPU's operations in the CPU's order,
//! so the results are compared bitwise.

mod common;

use common::*;
use marc_kernels::ops::activation::{add_in_place, relu2_in_place};

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn relu2_is_bitwise_the_cpus() {
    let mut rng = rng(31);
    let mut x = uniform(&mut rng, 1000, -3.0, 3.0);
    x[..5].copy_from_slice(&[0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY]);
    let mut want = x.clone();
    relu2_in_place(&mut want);
    // Fewer threads than elements: the grid-stride loop covers the rest.
    let mut args = Args::new();
    args.output(&mut x).int(1000);
    launch("relu2_f32", [2, 1, 1], [256, 1, 1], 0, &mut args);
    assert_eq!(bits(&x), bits(&want));
}

#[test]
fn unpermute_is_the_cpus_weighted_sum_in_slot_order() {
    // Width not a multiple of the block; top-1 (a copy times the weight) and top-6.
    for (tokens, top_k, width) in [(3usize, 1usize, 70usize), (7, 6, 300)] {
        let mut rng = rng((tokens * top_k * width) as u64);
        let slots = uniform(&mut rng, tokens * top_k * width, -4.0, 4.0);
        let weights = uniform(&mut rng, tokens * top_k, 0.0, 1.5);
        let mut out = vec![f32::NAN; tokens * width];
        let mut args = Args::new();
        args.input(&slots)
            .input(&weights)
            .int(tokens as i32)
            .int(top_k as i32)
            .int(width as i32)
            .output(&mut out);
        launch(
            "moe_unpermute_f32",
            [dim(width.div_ceil(256)), dim(tokens), 1],
            [256, 1, 1],
            0,
            &mut args,
        );
        let mut want = vec![0.0f32; tokens * width];
        for (t, acc) in want.chunks_exact_mut(width).enumerate() {
            for slot in 0..top_k {
                let entry = t * top_k + slot;
                let weighted: Vec<f32> = slots[entry * width..][..width]
                    .iter()
                    .map(|v| v * weights[entry])
                    .collect();
                add_in_place(acc, &weighted);
            }
        }
        assert_eq!(bits(&out), bits(&want), "{tokens} tokens, top-{top_k}, width {width}");
    }
}
