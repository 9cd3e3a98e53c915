//! Activation calibration (`marc quantize --calibrate`): the input amax a model loaded with
//! `NemotronH::load_observed` records for each Linear, against transformers' reference states.
//!
//! Every block's mixer reads `RMSNorm(h_L) * norm.weight`, where `h_L` is transformers'
//! `hidden_states[L]` for the same tokens (the fixture). So the Linears that read a block's input
//! (Mamba's `in_proj`, attention's `q/k/v_proj`, the MLP's `up_proj`, the MoE's shared expert and
//! latent projection) must report the amax of that, computed here in f64 from the reference.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::read_reference;
use marc_models::checkpoint::Checkpoint;
use marc_models::quant::ActivationAmax;
use marc_models::{LoadOptions, NemotronH, PackedBatch};

#[test]
fn observed_amax_of_block_inputs_matches_the_reference_states() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nvfp4/base_bf16");
    let amax = Arc::new(ActivationAmax::default());
    let model = NemotronH::load_observed(&dir, LoadOptions::default(), amax.clone()).unwrap();
    let config = model.config().clone();
    let layers = config.num_layers();
    let reference = read_reference(&dir, layers + 1);
    for (ids, _) in &reference {
        model
            .hidden_state(&PackedBatch::from_sequences(&[ids]), layers)
            .unwrap();
    }
    let observed = amax.snapshot();

    let checkpoint = Checkpoint::open(&dir).unwrap();
    let hidden = config.hidden_size;
    let mut checked = 0;
    for layer in 0..layers {
        let norm = checkpoint.get(&format!("layers.{layer}.norm.weight")).unwrap().unwrap();
        let weight: Vec<f64> = norm
            .bytes
            .chunks_exact(2)
            .map(|b| f64::from(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
            .collect();
        // amax over every token of every sequence of RMSNorm(h) * w, in f64.
        let mut want = 0.0f64;
        for (_, states) in &reference {
            for token in states[layer].chunks_exact(hidden) {
                let ms = token.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / hidden as f64;
                let inv = 1.0 / (ms + f64::from(config.norm_eps)).sqrt();
                for (&v, w) in token.iter().zip(&weight) {
                    want = want.max((f64::from(v) * inv * w).abs());
                }
            }
        }
        let readers = block_input_readers(&observed, layer);
        assert!(
            !readers.is_empty(),
            "layer {layer}: no Linear reads the block input ({observed:?})"
        );
        for (module, got) in readers {
            let err = (f64::from(got) - want).abs() / want;
            assert!(err <= 1e-5, "{module}: amax {got} against {want} (relative {err:.2e})");
            checked += 1;
        }
    }
    assert!(checked >= layers, "only {checked} Linears checked");
}

/// The observed modules of block `layer` that read the block's (normed) input.
fn block_input_readers(observed: &HashMap<String, f32>, layer: usize) -> Vec<(String, f32)> {
    let prefix = format!("layers.{layer}.mixer.");
    let readers = [
        "in_proj",
        "q_proj",
        "k_proj",
        "v_proj",
        "up_proj",
        "shared_experts.up_proj",
        "fc1_latent_proj",
    ];
    observed
        .iter()
        .filter(|(name, _)| name.strip_prefix(&prefix).is_some_and(|rest| readers.contains(&rest)))
        .map(|(name, &v)| (name.clone(), v))
        .collect()
}
