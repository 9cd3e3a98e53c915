//! Broken checkpoints and inputs fail with one clear message naming the file, the key or tensor,
//! what was expected and what was found; never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use marc_models::synthetic::{SyntheticDType, write_random_checkpoint};
use marc_models::{ForwardError, LoadError, LoadOptions, NemotronH, PackedBatch, QuantMode};
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

// ---- Quantised checkpoints: ModelOpt's own NVFP4 export (fixtures/nvfp4/modelopt_nvfp4), broken one way each.

fn nvfp4_checkpoint(case: &str) -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nvfp4")
        .join(case);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

const OUT_PROJ: &str = "backbone.layers.0.mixer.out_proj";

fn f32_scalar(value: f32) -> (Dtype, Vec<usize>, Vec<u8>) {
    (Dtype::F32, vec![], value.to_le_bytes().to_vec())
}

#[test]
fn nvfp4_fixtures_load() {
    for case in ["modelopt_nvfp4", "modelopt_mixed", "compressed_tensors_nvfp4"] {
        let dir = nvfp4_checkpoint(case);
        NemotronH::load(dir.path(), LoadOptions::default()).unwrap_or_else(|e| panic!("{case}: {e}"));
    }
}

#[test]
fn nvfp4_wrong_packed_shape() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.get_mut(&format!("{OUT_PROJ}.weight")).unwrap().1 = vec![32, 96]; // same bytes, [64, 48] expected
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_mentions(
        &err,
        &[
            "model.safetensors",
            &format!("{OUT_PROJ}.weight`"),
            "[64, 48]",
            "[32, 96]",
        ],
    );
}

#[test]
fn nvfp4_wrong_block_scale_shape() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.get_mut(&format!("{OUT_PROJ}.weight_scale")).unwrap().1 = vec![32, 12];
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_mentions(&err, &[&format!("{OUT_PROJ}.weight_scale`"), "[64, 6]", "[32, 12]"]);
}

#[test]
fn nvfp4_wrong_block_scale_dtype() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.get_mut(&format!("{OUT_PROJ}.weight_scale")).unwrap().0 = Dtype::U8;
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::DType { .. }), "{err}");
    assert_mentions(&err, &[&format!("{OUT_PROJ}.weight_scale`"), "F8_E4M3", "U8"]);
}

#[test]
fn nvfp4_missing_tensor_scale() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.remove(&format!("{OUT_PROJ}.weight_scale_2"));
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err}");
    assert_mentions(&err, &[&format!("{OUT_PROJ}.weight_scale_2"), "F32 scalar"]);

    let dir = nvfp4_checkpoint("compressed_tensors_nvfp4");
    rewrite(dir.path(), |t| {
        t.remove(&format!("{OUT_PROJ}.weight_global_scale"));
    });
    assert_mentions(&load_err(dir.path()), &[&format!("{OUT_PROJ}.weight_global_scale")]);
}

#[test]
fn nvfp4_non_finite_or_negative_tensor_scales() {
    for (value, shown) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf"), (-0.25, "-0.25"), (0.0, "0")] {
        let dir = nvfp4_checkpoint("modelopt_nvfp4");
        rewrite(dir.path(), |t| {
            t.insert(format!("{OUT_PROJ}.weight_scale_2"), f32_scalar(value));
        });
        let err = load_err(dir.path());
        assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
        assert_mentions(
            &err,
            &[&format!("{OUT_PROJ}.weight_scale_2`"), "positive finite", shown],
        );
    }
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.insert(format!("{OUT_PROJ}.input_scale"), f32_scalar(f32::NAN));
    });
    assert_mentions(&load_err(dir.path()), &[&format!("{OUT_PROJ}.input_scale`"), "NaN"]);
}

#[test]
fn nvfp4_nan_or_negative_block_scales() {
    for (byte, what) in [(0x7f_u8, "NaN"), (0xb8, "negative")] {
        let dir = nvfp4_checkpoint("modelopt_nvfp4");
        rewrite(dir.path(), |t| {
            t.get_mut(&format!("{OUT_PROJ}.weight_scale")).unwrap().2[7] = byte;
        });
        let err = load_err(dir.path());
        assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
        assert_mentions(&err, &[&format!("{OUT_PROJ}.weight_scale`"), what, "element 7"]);
    }
}

#[test]
fn nvfp4_scale_of_wrong_shape() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.insert(format!("{OUT_PROJ}.weight_scale_2"), (Dtype::F32, vec![2], vec![0; 8]));
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert_mentions(&err, &[&format!("{OUT_PROJ}.weight_scale_2`"), "[2]"]);
}

/// An NVFP4 Linear whose `in_features` (40) is not a multiple of the block size.
#[test]
fn nvfp4_in_features_not_a_multiple_of_16() {
    let dir = tempfile::tempdir().unwrap();
    let config = CONFIG.replace("\"intermediate_size\": 48", "\"intermediate_size\": 40");
    write_random_checkpoint(&config, dir.path(), SyntheticDType::BF16, 1).unwrap();
    let name = "backbone.layers.3.mixer.down_proj";
    rewrite(dir.path(), |t| {
        t.insert(format!("{name}.weight"), (Dtype::U8, vec![32, 20], vec![0; 32 * 20]));
        t.insert(
            format!("{name}.weight_scale"),
            (Dtype::F8_E4M3, vec![32, 2], vec![0x38; 64]),
        );
        t.insert(format!("{name}.weight_scale_2"), f32_scalar(1.0));
    });
    let err = load_err(dir.path());
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert_mentions(&err, &[&format!("{name}.weight`"), "multiple of 16", "in_features 40"]);
}

#[test]
fn w4a4_needs_an_input_scale() {
    let dir = nvfp4_checkpoint("modelopt_nvfp4");
    rewrite(dir.path(), |t| {
        t.remove(&format!("{OUT_PROJ}.input_scale"));
    });
    // W4A16 does not need it ...
    NemotronH::load(dir.path(), LoadOptions::default()).unwrap();
    // ... W4A4 does, and says which layer lacks it.
    let options = LoadOptions {
        quant: QuantMode::W4A4,
        ..Default::default()
    };
    let err = NemotronH::load(dir.path(), options).err().unwrap();
    assert!(matches!(err, LoadError::Unsupported { .. }), "{err}");
    assert_mentions(&err, &[&format!("{OUT_PROJ}.weight`"), "input_scale", "--quant w4a16"]);
}
