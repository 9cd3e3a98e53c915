//! The promise to ranking services: an item's hidden states do not depend on its neighbours in
//! the batch, on its position there, or on the number of threads. Compared as bytes.

use marc_models::synthetic::{SyntheticDType, write_random_checkpoint};
use marc_models::{LoadOptions, NemotronH, PackedBatch};

/// Every block type, MoE with groups and a latent width, GQA, Mamba groups, a small chunk so
/// sequences span several chunks.
const CONFIG: &str = r#"{
  "model_type": "nemotron_h", "vocab_size": 300, "hidden_size": 64,
  "hybrid_override_pattern": "ME*M-E",
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 24,
  "intermediate_size": 96, "ssm_state_size": 16, "mamba_num_heads": 8, "mamba_head_dim": 16,
  "n_groups": 2, "conv_kernel": 4, "chunk_size": 8,
  "n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
  "moe_shared_expert_intermediate_size": 48, "moe_latent_size": 40, "n_group": 4, "topk_group": 2,
  "routed_scaling_factor": 2.5, "layer_norm_epsilon": 1e-5, "time_step_limit": [0.0, Infinity]
}"#;

fn sequences() -> Vec<Vec<u32>> {
    [1usize, 7, 8, 9, 23, 40]
        .iter()
        .enumerate()
        .map(|(s, &len)| (0..len).map(|t| ((s * 37 + t * 11 + 5) % 300) as u32).collect())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn check(dtype: SyntheticDType) {
    let dir = tempfile::tempdir().unwrap();
    write_random_checkpoint(CONFIG, dir.path(), dtype, 7).unwrap();
    let model = NemotronH::load(dir.path(), LoadOptions::default()).unwrap();
    let layers: Vec<usize> = (0..=model.config().num_layers()).collect();
    let hidden = model.hidden_size();
    let seqs = sequences();

    let alone: Vec<Vec<Vec<u32>>> = seqs
        .iter()
        .map(|s| {
            let states = model
                .hidden_states(&PackedBatch::from_sequences(&[s]), &layers)
                .unwrap();
            states.iter().map(|l| bits(l)).collect()
        })
        .collect();

    // Orders put each sequence first, last and in the middle, among different neighbours.
    let orders: [&[usize]; 4] = [&[0, 1, 2, 3, 4, 5], &[5, 4, 3, 2, 1, 0], &[2, 5, 0, 3], &[4, 1, 1, 4]];
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for order in orders {
                let batch = PackedBatch::from_sequences(&order.iter().map(|&i| &seqs[i]).collect::<Vec<_>>());
                let states = model.hidden_states(&batch, &layers).unwrap();
                for (pos, &i) in order.iter().enumerate() {
                    let range = batch.range(pos);
                    for (layer, state) in states.iter().enumerate() {
                        let got = bits(&state[range.start * hidden..range.end * hidden]);
                        assert!(
                            got == alone[i][layer],
                            "{dtype:?}: sequence {i} at position {pos} of {order:?}, {threads} threads: layer {layer} differs"
                        );
                    }
                }
            }
        });
    }
    // And from run to run.
    let again = model
        .hidden_states(&PackedBatch::from_sequences(&[&seqs[4]]), &layers)
        .unwrap();
    assert!(again.iter().map(|l| bits(l)).eq(alone[4].iter().cloned()));
}

#[test]
fn bitwise_invariant_f32_weights() {
    check(SyntheticDType::F32);
}

#[test]
fn bitwise_invariant_bf16_weights() {
    check(SyntheticDType::BF16);
}
