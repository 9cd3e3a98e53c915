use super::*;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

const HIDDEN: usize = 8;
const LAYERS: usize = 4;

/// A tensor to write: name, shape, values.
type Tensor = (&'static str, Vec<usize>, Vec<f32>);

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0) as f32
        })
        .collect()
}

/// Writes `heads/NAME/` with the given JSON and f32 (or bf16 when `bf16`) tensors.
fn write_head(model: &Path, name: &str, json: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)], bf16: bool) -> PathBuf {
    let dir = head_dir(model, name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(HEAD_CONFIG), json).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| {
            if bf16 {
                v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        })
        .collect();
    let dtype = if bf16 { Dtype::BF16 } else { Dtype::F32 };
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, shape, _), b)| (n.to_string(), TensorView::new(dtype, shape.clone(), b).unwrap()));
    std::fs::write(
        dir.join(HEAD_WEIGHTS),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
    dir
}

fn json(layers: &[&str], output_dim: usize, normalize: bool) -> String {
    let layers: Vec<Value> = layers.iter().map(|a| serde_json::json!({"activation": a})).collect();
    serde_json::json!({
        "format": FORMAT, "source_layer": 2, "pooling": "mean", "layers": layers,
        "output_dim": output_dim, "normalize": normalize, "description": "test"
    })
    .to_string()
}

/// A two-layer head 8 -> 5 -> 3 with biases.
fn two_layer(activations: [&str; 2], normalize: bool) -> (String, Vec<Tensor>) {
    (
        json(&activations, 3, normalize),
        vec![
            ("layers.0.weight", vec![5, HIDDEN], values(5 * HIDDEN, 1)),
            ("layers.0.bias", vec![5], values(5, 2)),
            ("layers.1.weight", vec![3, 5], values(15, 3)),
            ("layers.1.bias", vec![3], values(3, 4)),
        ],
    )
}

fn load(model: &Path) -> Result<Vec<CompressionHead>, LoadError> {
    load_heads(model, HIDDEN, LAYERS, MatmulPrecision::Exact)
}

/// The head's output in f64, straight from the definition.
fn reference(
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    activations: &[Activation],
    x: &[f32],
    normalize: bool,
) -> Vec<f64> {
    let mut x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    for (i, activation) in activations.iter().enumerate() {
        let find = |n: String| tensors.iter().find(|t| t.0 == n);
        let (_, shape, w) = find(format!("layers.{i}.weight")).unwrap();
        let bias = find(format!("layers.{i}.bias"));
        x = (0..shape[0])
            .map(|r| {
                let mut y: f64 = (0..shape[1]).map(|c| f64::from(w[r * shape[1] + c]) * x[c]).sum();
                y += bias.map_or(0.0, |b| f64::from(b.2[r]));
                match activation {
                    Activation::None => y,
                    Activation::Relu => y.max(0.0),
                    Activation::Tanh => y.tanh(),
                    Activation::Silu => y / (1.0 + (-y).exp()),
                    Activation::Gelu => 0.5 * y * (1.0 + libm::erf(y / std::f64::consts::SQRT_2)),
                }
            })
            .collect();
    }
    if normalize {
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        x.iter_mut().for_each(|v| *v /= norm);
    }
    x
}

#[test]
fn no_heads_folder_means_no_heads() {
    let model = tempfile::tempdir().unwrap();
    assert!(load(model.path()).unwrap().is_empty());
}

#[test]
fn layers_chain_and_apply_matches_an_f64_reference() {
    let all = [
        Activation::None,
        Activation::Relu,
        Activation::Tanh,
        Activation::Silu,
        Activation::Gelu,
    ];
    for first in all {
        for normalize in [false, true] {
            let model = tempfile::tempdir().unwrap();
            let (text, tensors) = two_layer([first.name(), "tanh"], normalize);
            write_head(model.path(), "h", &text, &tensors, false);
            let heads = load(model.path()).unwrap();
            let head = &heads[0];
            assert_eq!(
                (head.name.as_str(), head.source_layer, head.pooling),
                ("h", 2, Pooling::Mean)
            );
            assert_eq!((head.input_dim(), head.output_dim, head.layers.len()), (HIDDEN, 3, 2));
            assert_eq!(head.layers[0].activation, first);
            assert_eq!(head.description, "test");
            let n = 4;
            let x = values(n * HIDDEN, 9);
            let got = head.apply(&x, n).unwrap();
            assert_eq!(got.len(), n * 3);
            for (row, expected) in got.chunks_exact(3).zip(x.chunks_exact(HIDDEN)) {
                let expected = reference(&tensors, &[first, Activation::Tanh], expected, normalize);
                for (g, e) in row.iter().zip(&expected) {
                    assert!((f64::from(*g) - e).abs() < 1e-5, "{first:?}: {g} vs {e}");
                }
            }
        }
    }
}

#[test]
fn bf16_weights_and_missing_bias_load() {
    let model = tempfile::tempdir().unwrap();
    let tensors = vec![("layers.0.weight", vec![6, HIDDEN], values(6 * HIDDEN, 5))];
    write_head(model.path(), "default", &json(&["none"], 6, false), &tensors, true);
    let heads = load(model.path()).unwrap();
    let x = values(HIDDEN, 6);
    let rounded: Vec<Tensor> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                *n,
                s.clone(),
                v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect(),
            )
        })
        .collect();
    let expected = reference(&rounded, &[Activation::None], &x, false);
    for (g, e) in heads[0].apply(&x, 1).unwrap().iter().zip(&expected) {
        assert!((f64::from(*g) - e).abs() < 1e-5);
    }
}

#[test]
fn normalised_outputs_have_unit_norm_and_zero_stays_zero() {
    let model = tempfile::tempdir().unwrap();
    let tensors = vec![("layers.0.weight", vec![4, HIDDEN], values(4 * HIDDEN, 8))];
    write_head(model.path(), "n", &json(&["none"], 4, true), &tensors, false);
    let head = &load(model.path()).unwrap()[0];
    let mut x = values(3 * HIDDEN, 10);
    x[HIDDEN..2 * HIDDEN].fill(0.0);
    let y = head.apply(&x, 3).unwrap();
    for (i, row) in y.chunks_exact(4).enumerate() {
        let norm = row.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        if i == 1 {
            assert!(row.iter().all(|&v| v == 0.0), "a zero vector stays zero: {row:?}");
        } else {
            assert!((norm - 1.0).abs() < 1e-6, "{norm}");
        }
    }
}

#[test]
fn an_item_gets_the_same_bytes_whatever_the_batch() {
    let model = tempfile::tempdir().unwrap();
    // Wider than a GEMM tile in both directions, so batching really changes the blocking.
    let hidden = 40;
    let tensors = vec![
        ("layers.0.weight", vec![33, hidden], values(33 * hidden, 1)),
        ("layers.0.bias", vec![33], values(33, 2)),
        ("layers.1.weight", vec![17, 33], values(17 * 33, 3)),
    ];
    write_head(model.path(), "b", &json(&["gelu", "none"], 17, true), &tensors, false);
    let head = &load_heads(model.path(), hidden, LAYERS, MatmulPrecision::Exact).unwrap()[0];
    let n = 37;
    let x = values(n * hidden, 4);
    let batch = head.apply(&x, n).unwrap();
    for i in [0, 1, 16, 17, 36] {
        let alone = head.apply(&x[i * hidden..(i + 1) * hidden], 1).unwrap();
        let in_batch = &batch[i * 17..(i + 1) * 17];
        assert_eq!(
            alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            in_batch.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "item {i}"
        );
    }
    assert!(head.apply(&x[..5], 1).is_err());
}

/// Loads a head built from `text` and `tensors` and returns the error's message.
fn load_error(text: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> (LoadError, String) {
    let model = tempfile::tempdir().unwrap();
    write_head(model.path(), "bad", text, tensors, false);
    let err = match load(model.path()) {
        Ok(_) => panic!("{text} should not load"),
        Err(e) => e,
    };
    let message = err.to_string();
    (err, message)
}

#[test]
fn broken_heads_are_refused_with_the_file_key_expected_and_found() {
    let (good_json, good) = two_layer(["relu", "none"], true);
    let edit = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut v: Value = serde_json::from_str(&good_json).unwrap();
        f(v.as_object_mut().unwrap());
        v.to_string()
    };
    // (head.json, expected variant check, fragments of the message)
    let cases: Vec<(String, &str, Vec<&str>)> = vec![
        ("{\"format\": ".to_owned(), "json", vec!["head.json", "not valid JSON"]),
        (
            edit(&|o| {
                o.insert("format".into(), "marc-head/2".into());
            }),
            "config",
            vec!["head.json", "`format`", "marc-head/1", "\"marc-head/2\""],
        ),
        (
            edit(&|o| {
                o.insert(
                    "layers".into(),
                    serde_json::json!([{"activation": "relu"}, {"activation": "swish"}]),
                );
            }),
            "config",
            vec!["`layers[1].activation`", "gelu", "\"swish\""],
        ),
        (
            edit(&|o| {
                o.insert("pooling".into(), "none".into());
            }),
            "config",
            vec!["`pooling`", "\"mean\" or \"last\"", "\"none\""],
        ),
        (
            edit(&|o| {
                o.insert("source_layer".into(), 5.into());
            }),
            "config",
            vec!["`source_layer`", "0..=4", "found 5"],
        ),
        (
            edit(&|o| {
                o.insert("normalise".into(), true.into());
            }),
            "config",
            vec!["`normalise`", "unknown key"],
        ),
        (
            edit(&|o| {
                o.remove("output_dim");
            }),
            "config",
            vec!["`output_dim`", "positive integer", "missing"],
        ),
        (
            edit(&|o| {
                o.insert("output_dim".into(), 4.into());
            }),
            "shape",
            vec!["head.safetensors", "`layers.1.weight`", "[4, 5]", "[3, 5]"],
        ),
    ];
    for (text, kind, fragments) in cases {
        let (err, message) = load_error(&text, &good);
        let matches = match kind {
            "json" => matches!(err, LoadError::Json { .. }),
            "config" => matches!(err, LoadError::Config { .. }),
            _ => matches!(err, LoadError::Shape { .. }),
        };
        assert!(matches, "{text}: {err:?}");
        for fragment in fragments {
            assert!(message.contains(fragment), "{message:?} should contain {fragment:?}");
        }
        assert!(message.contains("heads/bad/"), "{message}");
    }

    // Widths that do not chain: layer 1 reads 6 values but layer 0 writes 5.
    let mut chain = good.clone();
    chain[2] = ("layers.1.weight", vec![3, 6], values(18, 3));
    let (err, message) = load_error(&good_json, &chain);
    assert!(matches!(err, LoadError::Shape { .. }), "{err:?}");
    assert!(message.contains("`layers.1.weight`") && message.contains("[3, 5]") && message.contains("[3, 6]"));

    // Layer 0 must read the hidden size.
    let mut first = good.clone();
    first[0] = ("layers.0.weight", vec![5, 7], values(35, 3));
    let (_, message) = load_error(&good_json, &first);
    assert!(message.contains("`layers.0.weight`") && message.contains("[5, 8]") && message.contains("[5, 7]"));

    // A missing weight.
    let missing: Vec<_> = good.iter().filter(|t| t.0 != "layers.1.weight").cloned().collect();
    let (err, message) = load_error(&good_json, &missing);
    assert!(matches!(err, LoadError::MissingTensor { .. }), "{err:?}");
    assert!(
        message.contains("`layers.1.weight` is missing") && message.contains("[3, 5]"),
        "{message}"
    );

    // A bias of the wrong length.
    let mut bias = good.clone();
    bias[1] = ("layers.0.bias", vec![4], values(4, 2));
    let (_, message) = load_error(&good_json, &bias);
    assert!(message.contains("`layers.0.bias`") && message.contains("[5]") && message.contains("[4]"));

    // A tensor the JSON does not account for.
    let mut extra = good.clone();
    extra.push(("layers.2.weight", vec![3, 3], values(9, 1)));
    let (err, message) = load_error(&good_json, &extra);
    assert!(matches!(err, LoadError::Safetensors { .. }), "{err:?}");
    assert!(message.contains("unexpected tensor `layers.2.weight`"), "{message}");

    // A folder without head.json.
    let model = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(head_dir(model.path(), "empty")).unwrap();
    let message = load(model.path()).err().unwrap().to_string();
    assert!(message.contains("empty/head.json"), "{message}");
}

#[test]
fn the_default_head_rule() {
    let model = tempfile::tempdir().unwrap();
    let (text, tensors) = two_layer(["none", "none"], true);
    write_head(model.path(), "b", &text, &tensors, false);
    // Hidden folders (a save in progress) and plain files are not heads.
    std::fs::create_dir_all(model.path().join("heads/.partial")).unwrap();
    std::fs::write(model.path().join("heads/README"), "notes").unwrap();
    let heads = load(model.path()).unwrap();
    assert_eq!(default_head(&heads).map(|h| h.name.as_str()), Some("b"));
    write_head(model.path(), "a", &text, &tensors, false);
    let heads = load(model.path()).unwrap();
    assert_eq!(heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(default_head(&heads).is_none());
    write_head(model.path(), DEFAULT_HEAD, &text, &tensors, false);
    let heads = load(model.path()).unwrap();
    assert_eq!(default_head(&heads).map(|h| h.name.as_str()), Some(DEFAULT_HEAD));
}

#[test]
fn save_head_round_trips_and_refuses_to_overwrite() {
    let model = tempfile::tempdir().unwrap();
    let layer = || LayerWeights {
        weight: values(3 * HIDDEN, 1),
        out: 3,
        input: HIDDEN,
        bias: Some(values(3, 2)),
        activation: Activation::Silu,
    };
    let info = HeadInfo {
        source_layer: 3,
        pooling: Pooling::Last,
        normalize: false,
        description: "saved",
    };
    let dir = save_head(model.path(), "s", &info, &[layer()], false).unwrap();
    assert_eq!(dir, head_dir(model.path(), "s"));
    let head = &load(model.path()).unwrap()[0];
    assert_eq!(
        (head.source_layer, head.pooling, head.normalize),
        (3, Pooling::Last, false)
    );
    assert_eq!((head.output_dim, head.layers[0].activation), (3, Activation::Silu));
    assert_eq!(head.description, "saved");
    let err = save_head(model.path(), "s", &info, &[layer()], false).unwrap_err();
    assert!(
        matches!(err, SaveError::Exists(_)) && err.to_string().contains("--force"),
        "{err}"
    );
    save_head(model.path(), "s", &info, &[layer()], true).unwrap();
    assert!(matches!(
        save_head(model.path(), "../x", &info, &[layer()], false),
        Err(SaveError::Name(_))
    ));
    let mut broken = layer();
    broken.input = 7;
    assert!(matches!(
        save_head(model.path(), "t", &info, &[layer(), broken], false),
        Err(SaveError::Invalid(_))
    ));
    assert_eq!(load(model.path()).unwrap().len(), 1);
}
