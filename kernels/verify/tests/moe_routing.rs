//! kernels/cuda/moe_routing.cu on the CPU through the SIMT emulation: routing against
//! `marc_models::route` (the CPU model's router), the permutation against a plain per-expert scan.

mod common;

use common::*;
use marc_kernels::ops::activation::sigmoid;
use marc_models::config::MoeConfig;
use marc_models::route;

const ROUTE_THREADS: usize = 128;

fn config(num_experts: usize, n_group: usize, topk_group: usize, top_k: usize, norm: bool, scale: f32) -> MoeConfig {
    MoeConfig {
        num_experts,
        top_k,
        expert_intermediate_size: 8,
        shared_intermediate_size: 8,
        latent_size: None,
        n_group,
        topk_group,
        norm_topk_prob: norm,
        routed_scaling_factor: scale,
        bias: false,
    }
}

/// Routes every row of `logits` with the emulated kernel; returns (experts, weights).
fn route_emulated(logits: &[f32], bias: &[f32], cfg: &MoeConfig) -> (Vec<i32>, Vec<f32>) {
    let tokens = logits.len() / cfg.num_experts;
    let mut experts = vec![-7i32; tokens * cfg.top_k];
    let mut weights = vec![f32::NAN; tokens * cfg.top_k];
    let mut args = Args::new();
    args.input(logits)
        .input(bias)
        .int(tokens as i32)
        .int(cfg.num_experts as i32)
        .int(cfg.n_group as i32)
        .int(cfg.topk_group as i32)
        .int(cfg.top_k as i32)
        .int(i32::from(cfg.norm_topk_prob))
        .float(cfg.routed_scaling_factor)
        .output(&mut experts)
        .output(&mut weights);
    let blocks = (tokens * 32).div_ceil(ROUTE_THREADS);
    launch(
        "moe_route_f32",
        [dim(blocks), 1, 1],
        [dim(ROUTE_THREADS), 1, 1],
        0,
        &mut args,
    );
    (experts, weights)
}

fn check(case: &str, logits: &[f32], bias: &[f32], cfg: &MoeConfig) -> Vec<i32> {
    let (experts, weights) = route_emulated(logits, bias, cfg);
    for (t, row) in logits.chunks_exact(cfg.num_experts).enumerate() {
        let scores: Vec<f32> = row.iter().map(|&v| sigmoid(v)).collect();
        let want = route(&scores, bias, cfg);
        let got_experts: Vec<usize> = experts[t * cfg.top_k..][..cfg.top_k]
            .iter()
            .map(|&e| e as usize)
            .collect();
        assert_eq!(got_experts, want.experts, "{case}: token {t} experts");
        let got_weights = &weights[t * cfg.top_k..][..cfg.top_k];
        for (g, w) in got_weights.iter().zip(&want.weights) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1e-6),
                "{case}: token {t} weights {got_weights:?} vs {:?}",
                want.weights
            );
        }
    }
    experts
}

#[test]
fn bench_router_one_group() {
    // The benchmark config: 32 experts, top-4, one group; five tokens (not a multiple of the four
    // warps per block).
    let cfg = config(32, 1, 1, 4, true, 1.0);
    let mut rng = rng(1);
    let logits = uniform(&mut rng, 5 * 32, -3.0, 3.0);
    let bias = uniform(&mut rng, 32, -0.2, 0.2);
    check("bench", &logits, &bias, &cfg);
}

#[test]
fn group_limited_routing_with_awkward_sizes() {
    let mut rng = rng(2);
    // 40 experts (two slots per lane, the second partly empty), 4 groups of 10, keep 2, top-6.
    let cfg = config(40, 4, 2, 6, true, 2.5);
    let logits = uniform(&mut rng, 9 * 40, -4.0, 4.0);
    let bias = uniform(&mut rng, 40, -0.5, 0.5);
    check("40 experts", &logits, &bias, &cfg);
    // Nemotron 3 Super's router: 512 experts, top-22; 8 groups, keep 4; unnormalised.
    let cfg = config(512, 8, 4, 22, false, 1.5);
    let logits = uniform(&mut rng, 3 * 512, -4.0, 4.0);
    let bias = uniform(&mut rng, 512, -0.5, 0.5);
    check("512 experts", &logits, &bias, &cfg);
}

#[test]
fn ties_go_to_the_lower_index() {
    // Equal logits and bias: every comparison ties; groups of two, and top_k larger than the kept
    // groups hold, so the rest come from the masked (-inf) experts by index, as the CPU does.
    let cfg = config(8, 4, 1, 3, true, 1.0);
    let logits = vec![0.5f32; 2 * 8];
    let bias = vec![0.0f32; 8];
    check("all tied", &logits, &bias, &cfg);
    let mut logits = vec![0.0f32; 8];
    logits[3] = 1.0;
    logits[6] = 1.0;
    check("two tied winners", &logits, &bias, &config(8, 1, 1, 2, false, 1.0));
}

#[test]
fn permutation_groups_tokens_by_expert_padded_to_the_tile() {
    let cfg = config(40, 4, 2, 6, true, 1.0);
    let mut rng = rng(3);
    let logits = uniform(&mut rng, 37 * 40, -4.0, 4.0);
    let bias = vec![0.0f32; 40];
    let experts = check("permutation input", &logits, &bias, &cfg);
    let pairs = experts.len();
    let tile = 16;

    let mut counts = vec![-1i32; cfg.num_experts];
    let mut args = Args::new();
    args.input(&experts).int(pairs as i32).output(&mut counts);
    launch(
        "moe_count_by_expert",
        [dim(cfg.num_experts), 1, 1],
        [32, 1, 1],
        0,
        &mut args,
    );

    let mut offsets = vec![-1i32; cfg.num_experts + 1];
    let mut args = Args::new();
    args.input(&counts)
        .int(cfg.num_experts as i32)
        .int(tile)
        .output(&mut offsets);
    launch("moe_align_offsets", [1, 1, 1], [32, 1, 1], 0, &mut args);

    let (want_offsets, want_sorted) = permutation_reference(&experts, cfg.num_experts, tile as usize);
    assert_eq!(offsets, want_offsets);
    let mut sorted = vec![-7i32; *offsets.last().unwrap() as usize];
    let mut args = Args::new();
    args.input(&experts)
        .int(pairs as i32)
        .input(&offsets)
        .output(&mut sorted);
    launch(
        "moe_scatter_by_expert",
        [dim(cfg.num_experts), 1, 1],
        [32, 1, 1],
        0,
        &mut args,
    );
    assert_eq!(sorted, want_sorted);
}

#[test]
fn grouped_gemm_multiplies_each_entry_by_its_experts_weight() {
    // The shared routing: some experts get no token, segments of 64 padded rows; N and K ragged
    // against the 64 x 32 tile.
    let routed = Routed::new();
    let (n, k) = (24usize, 40usize);
    let mut rng = rng(9);
    let (a, a64) = bf16_values(&mut rng, routed.tokens * k);
    let (w, w64) = bf16_values(&mut rng, routed.num_experts * n * k);
    let mut out = vec![f32::NAN; routed.tokens * routed.top_k * n];
    let mut args = Args::new();
    args.input(&a)
        .input(&routed.sorted)
        .input(&routed.offsets)
        .int(routed.num_experts as i32)
        .int(routed.top_k as i32)
        .input(&w)
        .int(n as i32)
        .int(k as i32)
        .output(&mut out);
    launch_grouped_gemm("grouped_gemm_bf16_f32", n, &routed.offsets, &mut args);
    let want = routed.per_entry(|e, t| bf16_product(&a64[t * k..][..k], &w64[e * n * k..][..n * k], None, 1, n, k));
    assert_close("grouped GEMM", &out, &want, F32_REL_L2);
}
