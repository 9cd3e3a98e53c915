//! Every layer's hidden states against transformers' reference outputs.
//!
//! `fixtures/make_fixtures.py` built each case's random checkpoint with transformers'
//! `nemotron_h`, saved it in NVIDIA's layout (one case in transformers' in-memory names, one
//! sharded, some bf16, some with legacy config keys) and ran it in f32 eager mode, one sequence at
//! a time. The contract: relative L2 error <= 1e-5 at every layer of every input.

use std::path::{Path, PathBuf};

use common::{check_layers, parse_reference, read_reference, relative_l2};
use marc_models::{LoadOptions, NemotronH, PackedBatch};
use safetensors::SafeTensors;

mod common;

const TOLERANCE: f64 = 1e-5;

fn fixture_cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", root.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("reference.safetensors").is_file())
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_layer_matches_transformers() {
    let cases = fixture_cases();
    assert!(
        cases.len() >= 4,
        "expected at least four fixture cases, found {cases:?}"
    );
    let mut report = Vec::new();
    for case in &cases {
        let model = NemotronH::load(case, LoadOptions::default()).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let reference = read_reference(case, model.config().num_layers() + 1);
        assert!(!reference.is_empty(), "{}: no inputs", case.display());
        let worst = check_layers(&case.display().to_string(), &model, &reference, TOLERANCE);
        report.push(format!(
            "{}: worst relative L2 {worst:.2e}",
            case.file_name().unwrap().to_string_lossy()
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// The demo model, from text: our tokenizer gives the reference's ids and the model its states.
#[test]
fn demo_model_matches_transformers_from_text() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let model = NemotronH::load(&dir, LoadOptions::default()).unwrap();
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let texts: Vec<String> = serde_json::from_str(&metadata.metadata().as_ref().unwrap()["texts"]).unwrap();
    let reference = parse_reference(
        &SafeTensors::deserialize(&bytes).unwrap(),
        model.config().num_layers() + 1,
    );
    assert_eq!(texts.len(), reference.len());
    let tokenizer = marc_models::tokenizer::Tokenizer::from_dir(&dir).unwrap();
    for (text, (ids, _)) in texts.iter().zip(&reference) {
        assert_eq!(&tokenizer.encode(text).unwrap(), ids, "{text:?}");
    }
    check_layers("demo", &model, &reference, TOLERANCE);
}

/// A model loaded only up to a middle layer computes the same states as the full model there.
#[test]
fn truncated_load_matches_full_model() {
    let case = &fixture_cases()[0];
    let full = NemotronH::load(case, LoadOptions::default()).unwrap();
    let middle = full.config().num_layers() / 2;
    let cut = NemotronH::load(
        case,
        LoadOptions {
            max_layer: Some(middle),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(cut.max_layer(), middle);
    assert!(cut.weight_bytes() < full.weight_bytes());
    let batch = PackedBatch::from_sequences(&[vec![1u32, 2, 3, 4, 5]]);
    assert_eq!(
        cut.hidden_state(&batch, middle).unwrap(),
        full.hidden_state(&batch, middle).unwrap()
    );
    assert!(cut.hidden_state(&batch, middle + 1).is_err());
}

/// A model cut at a middle layer never opens the shards that hold only deeper layers: here the
/// last shard is replaced by garbage and the cut model still loads and matches the reference.
#[test]
fn truncated_load_never_reads_deeper_shards() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/moe_bf16_legacy");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.path().join("model-00003-of-00003.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    // Shard 2 holds layers 2..=5 (block indices), shard 3 layers 5..; hidden state 4 = output of block 3.
    let cut = NemotronH::load(
        dir.path(),
        LoadOptions {
            max_layer: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    let reference = read_reference(&source, cut.config().num_layers() + 1);
    let (ids, expected) = &reference[1];
    let got = cut.hidden_state(&PackedBatch::from_sequences(&[ids]), 4).unwrap();
    assert!(relative_l2(&got, &expected[4]) <= TOLERANCE);
    // Asking for the full depth reaches the broken shard and names it.
    let err = NemotronH::load(dir.path(), LoadOptions::default()).err().unwrap();
    assert!(err.to_string().contains("model-00003-of-00003.safetensors"), "{err}");
}

/// bf16 weights stay bf16 in memory: the loaded model is no larger than its checkpoint.
#[test]
fn bf16_weights_are_not_widened_in_memory() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let model = NemotronH::load(&case, LoadOptions::default()).unwrap();
    let on_disk = std::fs::metadata(case.join("model.safetensors")).unwrap().len() as usize;
    // The checkpoint also holds lm_head ([vocab, hidden] bf16), which the engine never loads.
    let lm_head = model.config().vocab_size * model.hidden_size() * 2;
    let loaded = model.weight_bytes();
    assert!(
        loaded as f64 <= (on_disk - lm_head) as f64 * 1.1,
        "{loaded} bytes in memory for {} bytes of bf16 weights",
        on_disk - lm_head
    );
}
