//! Broken checkpoints and inputs fail with one clear message naming the file, the key or tensor,
//! what was expected and what was found; never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use marc_models::synthetic::{SyntheticDType, write_random_checkpoint};
use marc_models::{ForwardError, LoadError, LoadOptions, NemotronH, PackedBatch};
use safetensors::{Dtype, SafeTensors};

const CONFIG: &str = r#"{
  "model_type": "nemotron_h", "vocab_size": 50, "hidden_size": 32,
  "hybrid_override_pattern": "M*E-",
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
  "intermediate_size": 48, "ssm_state_size": 8, "mamba_num_heads": 4, "mamba_head_dim": 8,
  "n_groups": 2, "chunk_size": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
  "moe_intermediate_size": 16, "moe_shared_expert_intermediate_size": 16, "n_group": 2, "topk_group": 1
}"#;

fn valid_checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_random_checkpoint(CONFIG, dir.path(), SyntheticDType::BF16, 1).unwrap();
    dir
}

fn load_err(dir: &Path) -> LoadError {
    match NemotronH::load(dir, LoadOptions::default()) {
        Ok(_) => panic!("loading {} should have failed", dir.display()),
        Err(e) => e,
    }
}

/// Rewrites `model.safetensors` after `edit` changes its tensors (name -> (dtype, shape, bytes)).
fn rewrite(dir: &Path, edit: impl FnOnce(&mut BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let mut tensors: BTreeMap<_, _> = SafeTensors::deserialize(&bytes)
        .unwrap()
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, (view.dtype(), view.shape().to_vec(), view.data().to_vec())))
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(name, (dtype, shape, data))| {
            (
                name.clone(),
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
}

fn set_config(dir: &Path, from: &str, to: &str) {
    assert!(CONFIG.contains(from), "{from}");
    std::fs::write(dir.join("config.json"), CONFIG.replace(from, to)).unwrap();
}

fn assert_mentions(err: &LoadError, needles: &[&str]) {
    let message = err.to_string();
    for needle in needles {
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
    }
}

#[test]
fn valid_checkpoint_loads() {
    let dir = valid_checkpoint();
    NemotronH::load(dir.path(), LoadOptions::default()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let dir = valid_checkpoint();
    rewrite(dir.path(), |t| {
        t.remove("backbone.layers.1.mixer.k_proj.weight");
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert_mentions(&err, &["backbone.layers.1.mixer.k_proj.weight", "[16, 32]"]);
}

#[test]
fn missing_expert_is_named() {
    let dir = valid_checkpoint();
    rewrite(dir.path(), |t| {
        t.remove("backbone.layers.2.mixer.experts.3.down_proj.weight");
    });
    assert_mentions(
        &load_err(dir.path()),
        &["backbone.layers.2.mixer.experts.3.down_proj.weight"],
    );
}

#[test]
fn wrong_shape_names_expected_and_found() {
    let dir = valid_checkpoint();
    rewrite(dir.path(), |t| {
        let entry = t.get_mut("backbone.layers.0.mixer.out_proj.weight").unwrap();
        entry.1 = vec![16, 64]; // same bytes, transposed-looking shape
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "model.safetensors",
            "backbone.layers.0.mixer.out_proj.weight",
            "[32, 32]",
            "[16, 64]",
        ],
    );
}

#[test]
fn wrong_dtype_names_expected_and_found() {
    let dir = valid_checkpoint();
    rewrite(dir.path(), |t| {
        let entry = t.get_mut("backbone.layers.3.mixer.up_proj.weight").unwrap();
        entry.0 = Dtype::I16;
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::DType { .. }), "{err}");
    assert_mentions(&err, &["backbone.layers.3.mixer.up_proj.weight", "BF16", "I16"]);
}

#[test]
fn truncated_file_is_named() {
    let dir = valid_checkpoint();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Safetensors { .. }), "{err}");
    assert_mentions(&err, &["model.safetensors"]);
}

#[test]
fn corrupt_header_is_named() {
    let dir = valid_checkpoint();
    let path = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..16].copy_from_slice(b"{\"oops\"!");
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(load_err(dir.path()), LoadError::Safetensors { .. }));
    // A file too short to hold even the header length.
    std::fs::write(&path, b"abc").unwrap();
    assert_mentions(&load_err(dir.path()), &["model.safetensors"]);
}

#[test]
fn unknown_layer_type_is_named() {
    let dir = valid_checkpoint();
    set_config(dir.path(), "\"M*E-\"", "\"M*X-\"");
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Config { .. }), "{err}");
    assert_mentions(&err, &["config.json", "hybrid_override_pattern", "'X'"]);
}

#[test]
fn unknown_activation_is_named() {
    let dir = valid_checkpoint();
    set_config(
        dir.path(),
        "\"intermediate_size\": 48,",
        "\"intermediate_size\": 48, \"mlp_hidden_act\": \"swiglu\",",
    );
    assert_mentions(&load_err(dir.path()), &["mlp_hidden_act", "relu2", "swiglu"]);
}

#[test]
fn heads_not_divisible_by_groups() {
    let dir = valid_checkpoint();
    set_config(dir.path(), "\"n_groups\": 2", "\"n_groups\": 3");
    assert_mentions(&load_err(dir.path()), &["n_groups", "mamba_num_heads", "3"]);
}

#[test]
fn experts_not_divisible_by_n_group() {
    let dir = valid_checkpoint();
    set_config(dir.path(), "\"n_group\": 2", "\"n_group\": 3");
    assert_mentions(&load_err(dir.path()), &["n_group", "n_routed_experts"]);
}

#[test]
fn config_changes_that_disagree_with_tensors_fail_on_the_tensor() {
    let dir = valid_checkpoint();
    set_config(dir.path(), "\"hidden_size\": 32", "\"hidden_size\": 40");
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_mentions(&err, &["backbone.embeddings.weight", "[50, 40]", "[50, 32]"]);
}

#[test]
fn bad_json_and_missing_files_are_named() {
    let dir = valid_checkpoint();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 32,,}").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Json { .. }), "{err}");
    assert_mentions(&err, &["config.json"]);

    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    assert_mentions(&load_err(dir.path()), &["config.json"]);

    let dir = valid_checkpoint();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors", "model.safetensors.index.json"],
    );
}

#[test]
fn shard_index_naming_a_missing_file() {
    let dir = valid_checkpoint();
    let index = r#"{"metadata": {}, "weight_map": {"backbone.embeddings.weight": "model-00001-of-00002.safetensors"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
    assert_mentions(&load_err(dir.path()), &["model-00001-of-00002.safetensors"]);
    let escaping = r#"{"weight_map": {"backbone.embeddings.weight": "../../etc/passwd"}}"#;
    std::fs::write(dir.path().join("model.safetensors.index.json"), escaping).unwrap();
    assert_mentions(
        &load_err(dir.path()),
        &["model.safetensors.index.json", "../../etc/passwd"],
    );
}

#[test]
fn token_out_of_range_names_id_and_vocabulary() {
    let dir = valid_checkpoint();
    let model = NemotronH::load(dir.path(), LoadOptions::default()).unwrap();
    let err = model
        .hidden_state(&PackedBatch::from_sequences(&[vec![1u32, 50]]), 1)
        .unwrap_err();
    assert!(
        matches!(
            err,
            ForwardError::TokenOutOfRange {
                id: 50,
                vocab_size: 50,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("50"));
}

#[test]
fn layer_beyond_the_model_is_refused() {
    let dir = valid_checkpoint();
    let err = NemotronH::load(
        dir.path(),
        LoadOptions {
            max_layer: Some(5),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert_mentions(&err, &["layer 5", "0..=4"]);
}
