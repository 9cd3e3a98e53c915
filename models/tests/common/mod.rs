//! Reading the reference fixtures and comparing hidden states against them, shared by the
//! reference tests of unquantised and quantised checkpoints.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;

use marc_models::{NemotronH, PackedBatch};
use safetensors::{Dtype, SafeTensors};

/// Reference inputs and per-layer states of one case: `(token ids, [layers+1][tokens*hidden])`.
pub(crate) type Reference = Vec<(Vec<u32>, Vec<Vec<f32>>)>;

/// `hidden_states.{i}` of a case's `reference.safetensors`.
pub(crate) fn read_reference(case: &Path, num_states: usize) -> Reference {
    read_states(case, num_states, "hidden_states")
}

/// The states stored under `{key}.{i}` with their `input_ids.{i}`.
pub(crate) fn read_states(case: &Path, num_states: usize, key: &str) -> Reference {
    let bytes = std::fs::read(case.join("reference.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    parse_states(&tensors, num_states, key)
}

/// `hidden_states.{i}` from an opened reference file.
pub(crate) fn parse_reference(tensors: &SafeTensors<'_>, num_states: usize) -> Reference {
    parse_states(tensors, num_states, "hidden_states")
}

fn parse_states(tensors: &SafeTensors<'_>, num_states: usize, key: &str) -> Reference {
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(ids) = tensors.tensor(&format!("input_ids.{i}")) else {
            break;
        };
        assert_eq!(ids.dtype(), Dtype::I64);
        let ids: Vec<u32> = ids
            .data()
            .chunks_exact(8)
            .map(|b| u32::try_from(i64::from_le_bytes(b.try_into().unwrap())).unwrap())
            .collect();
        let states = tensors.tensor(&format!("{key}.{i}")).unwrap();
        assert_eq!(states.shape()[0], num_states);
        assert_eq!(states.shape()[1], ids.len());
        let values = f32_values(&states);
        let per_layer = values.len() / num_states;
        out.push((ids, values.chunks_exact(per_layer).map(<[f32]>::to_vec).collect()));
    }
    out
}

/// The values of an F32 tensor.
pub(crate) fn f32_values(t: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    assert_eq!(t.dtype(), Dtype::F32);
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// `||got - expected|| / ||expected||`, in f64.
pub(crate) fn relative_l2(got: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(got.len(), expected.len());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (g, e) in got.iter().zip(expected) {
        diff += (f64::from(*g) - f64::from(*e)).powi(2);
        norm += f64::from(*e).powi(2);
    }
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

/// Compares every layer of every reference input at `tolerance`; returns the worst error.
pub(crate) fn check_layers(name: &str, model: &NemotronH, reference: &Reference, tolerance: f64) -> f64 {
    let layers: Vec<usize> = (0..=model.config().num_layers()).collect();
    let mut worst = 0.0f64;
    for (input, (ids, expected)) in reference.iter().enumerate() {
        let got = model
            .hidden_states(&PackedBatch::from_sequences(&[ids]), &layers)
            .unwrap();
        for (layer, (g, e)) in got.iter().zip(expected).enumerate() {
            let err = relative_l2(g, e);
            assert!(
                err <= tolerance,
                "{name} input {input} ({} tokens) layer {layer}: relative L2 error {err:.3e} > {tolerance:e}",
                ids.len(),
            );
            worst = worst.max(err);
        }
    }
    worst
}
