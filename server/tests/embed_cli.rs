//! `marc embed` end to end: the real binary on the demo model, checked against transformers'
//! hidden states for the same texts (models/demo/reference.safetensors) with `--no-head`, and
//! against the library's `CompressionHead::apply` through the demo's default head; and
//! `marc head init` on a copy of the demo model.

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::SafeTensors;
use serde_json::Value;

fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo")
}

/// The reference texts and, per text, its states `[layers+1][tokens][hidden]`.
fn reference() -> Vec<(String, Vec<Vec<Vec<f32>>>)> {
    let bytes = std::fs::read(demo_dir().join("reference.safetensors")).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let texts: Vec<String> = serde_json::from_str(&metadata.metadata().as_ref().unwrap()["texts"]).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let t = tensors.tensor(&format!("hidden_states.{i}")).unwrap();
            let (layers, tokens, hidden) = (t.shape()[0], t.shape()[1], t.shape()[2]);
            let values: Vec<f32> = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            let states = (0..layers)
                .map(|l| {
                    (0..tokens)
                        .map(|r| values[(l * tokens + r) * hidden..][..hidden].to_vec())
                        .collect()
                })
                .collect();
            (text, states)
        })
        .collect()
}

fn relative_l2(got: &[f32], expected: &[f32]) -> f64 {
    assert_eq!(got.len(), expected.len());
    let diff: f64 = got
        .iter()
        .zip(expected)
        .map(|(g, e)| (f64::from(*g) - f64::from(*e)).powi(2))
        .sum();
    let norm: f64 = expected.iter().map(|e| f64::from(*e).powi(2)).sum();
    (diff / norm).sqrt()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

struct Run {
    ok: bool,
    stderr: String,
    lines: Vec<Value>,
}

fn embed(input: &str, extra: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (input_path, output_path) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(&input_path, input).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_marc"))
        .args(["embed", "--input"])
        .arg(&input_path)
        .arg("--output")
        .arg(&output_path)
        .args(extra)
        .output()
        .unwrap();
    let lines = std::fs::read_to_string(&output_path)
        .map(|text| text.lines().map(|l| serde_json::from_str(l).unwrap()).collect())
        .unwrap_or_default();
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if !out.status.success() {
        assert_eq!(
            leftovers.len(),
            1,
            "a failed run must leave no output behind: {leftovers:?}"
        );
    }
    Run {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        lines,
    }
}

fn text_items(reference: &[(String, Vec<Vec<Vec<f32>>>)]) -> String {
    reference
        .iter()
        .enumerate()
        .map(|(i, (text, _))| format!("{}\n", serde_json::json!({"id": format!("t{i}"), "text": text})))
        .collect()
}

#[test]
fn mean_pooled_last_layer_matches_reference() {
    let reference = reference();
    let run = embed(&text_items(&reference), &["--no-head"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("tokens/s"),
        "throughput line missing: {}",
        run.stderr
    );
    assert_eq!(run.lines.len(), reference.len());
    for (i, (line, (_, states))) in run.lines.iter().zip(&reference).enumerate() {
        assert_eq!(line["id"], format!("t{i}"));
        let last = states.last().unwrap();
        let hidden = last[0].len();
        let mean: Vec<f32> = (0..hidden)
            .map(|c| (last.iter().map(|row| f64::from(row[c])).sum::<f64>() / last.len() as f64) as f32)
            .collect();
        let err = relative_l2(&floats(&line["embedding"]), &mean);
        assert!(err <= 1e-5, "item {i}: relative L2 {err:e}");
    }
}

#[test]
fn unpooled_middle_layer_and_last_token_match_reference() {
    let reference = reference();
    let run = embed(
        &text_items(&reference),
        &["--no-head", "--layer", "3", "--pooling", "none"],
    );
    assert!(run.ok, "{}", run.stderr);
    for (line, (_, states)) in run.lines.iter().zip(&reference) {
        let rows = line["hidden"].as_array().unwrap();
        assert_eq!(rows.len(), states[3].len());
        for (row, expected) in rows.iter().zip(&states[3]) {
            assert!(relative_l2(&floats(row), expected) <= 1e-5);
        }
    }
    let run = embed(
        &text_items(&reference),
        &["--no-head", "--layer", "5", "--pooling", "last"],
    );
    assert!(run.ok, "{}", run.stderr);
    for (line, (_, states)) in run.lines.iter().zip(&reference) {
        assert!(relative_l2(&floats(&line["embedding"]), states[5].last().unwrap()) <= 1e-5);
    }
}

#[test]
fn token_ids_and_text_give_the_same_vector() {
    let reference = reference();
    let (text, _) = &reference[1];
    let with_text = embed(&format!("{}\n", serde_json::json!({"id": 1, "text": text})), &[]);
    let ids = marc_models::tokenizer::Tokenizer::from_dir(&demo_dir())
        .unwrap()
        .encode(text)
        .unwrap();
    let with_ids = embed(&format!("{}\n", serde_json::json!({"id": 1, "token_ids": ids})), &[]);
    assert!(with_text.ok && with_ids.ok);
    assert_eq!(with_text.lines, with_ids.lines);
}

#[test]
fn bad_input_names_the_line_and_writes_nothing() {
    let cases = [
        (
            "{\"id\": 1, \"token_ids\": [1, 2]}\n{\"id\": 2, \"token_ids\": [1, 4096]}\n",
            "line 2: token id 4096",
        ),
        (
            "{\"id\": 1, \"token_ids\": [1]}\n\n{\"id\": 3, \"tokens\": [1]}\n",
            "line 3",
        ),
        ("{\"id\": 1, \"token_ids\": []}\n", "line 1: the item has no tokens"),
        ("{\"id\": 1}\n", "line 1: needs `token_ids` or `text`"),
        ("not json\n", "line 1"),
    ];
    for (input, expected) in cases {
        let run = embed(input, &[]);
        assert!(!run.ok, "{input:?} should fail");
        assert!(
            run.stderr.contains(expected),
            "{input:?}: {:?} should contain {expected:?}",
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    }
    let run = embed("{\"id\": 1, \"token_ids\": [1]}\n", &["--no-head", "--layer", "10"]);
    assert!(
        !run.ok && run.stderr.contains("--layer: 10 is out of range"),
        "{}",
        run.stderr
    );
}

#[test]
fn text_without_a_tokenizer_is_a_clear_error() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tests/fixtures/latent_moe_f32");
    let run = embed(
        "{\"id\": 1, \"text\": \"hello\"}\n",
        &["--model", model.to_str().unwrap()],
    );
    assert!(!run.ok);
    assert!(
        run.stderr.contains("line 1") && run.stderr.contains("tokenizer.json"),
        "{}",
        run.stderr
    );
}

/// The demo's items file, and the same vectors computed through the library: the model's states at
/// the head's layer for all items in one batch (as the CLI packs them), pooled, through the head.
#[test]
fn the_default_head_compresses_and_matches_the_library() {
    let input = std::fs::read_to_string(demo_dir().join("items.jsonl")).unwrap();
    let run = embed(&input, &[]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stderr.contains("through head `default` (64 dims)"),
        "{}",
        run.stderr
    );
    let explicit = embed(&input, &["--head", "default"]);
    assert!(explicit.ok, "{}", explicit.stderr);
    assert_eq!(run.lines, explicit.lines);

    let config = marc_models::NemotronHConfig::from_file(&demo_dir().join("config.json")).unwrap();
    let heads = marc_models::load_heads(
        &demo_dir(),
        config.hidden_size,
        config.num_layers(),
        marc_kernels::MatmulPrecision::Exact,
    )
    .unwrap();
    let head = marc_models::default_head(&heads).unwrap();
    assert_eq!(
        (head.name.as_str(), head.source_layer, head.output_dim),
        ("default", 5, 64)
    );
    let tokenizer = marc_models::tokenizer::Tokenizer::from_dir(&demo_dir()).unwrap();
    let tokens: Vec<Vec<u32>> = input
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            match v.get("text") {
                Some(text) => tokenizer.encode(text.as_str().unwrap()).unwrap(),
                None => v["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect(),
            }
        })
        .collect();
    let options = marc_models::LoadOptions {
        max_layer: Some(head.source_layer),
        ..Default::default()
    };
    let model = marc_models::NemotronH::load(&demo_dir(), options).unwrap();
    let batch = marc_models::PackedBatch::from_sequences(&tokens.iter().map(|t| &t[..]).collect::<Vec<_>>());
    let states = model.hidden_state(&batch, head.source_layer).unwrap();
    let hidden = model.hidden_size();
    let pooled: Vec<f32> = (0..tokens.len())
        .flat_map(|i| {
            let rows = &states[batch.range(i).start * hidden..batch.range(i).end * hidden];
            marc_models::pooling::pool(rows, hidden, head.pooling).unwrap()
        })
        .collect();
    let expected = head.apply(&pooled, tokens.len()).unwrap();

    assert_eq!(run.lines.len(), tokens.len());
    for (i, line) in run.lines.iter().enumerate() {
        let got = floats(&line["embedding"]);
        assert_eq!(got.len(), 64);
        let norm = got.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "item {i}: norm {norm}");
        assert_eq!(got, expected[i * 64..(i + 1) * 64], "item {i}");
    }
}

#[test]
fn head_misuse_is_a_clear_error() {
    let input = "{\"id\": 1, \"token_ids\": [1, 2, 3]}\n";
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["--head", "nope"],
            &["--head: unknown head `nope`", "available heads: default"],
        ),
        (
            &["--layer", "3"],
            &["--layer: 3", "head `default` reads layer 5", "--no-head"],
        ),
        (&["--head", "default", "--layer", "3"], &["--layer: 3", "--no-head"]),
        (&["--pooling", "none"], &["--pooling: none", "--no-head"]),
        (&["--head", "default", "--no-head"], &["cannot be used with"]),
    ];
    for (args, fragments) in cases {
        let run = embed(input, args);
        assert!(!run.ok, "{args:?} should fail");
        for fragment in fragments {
            assert!(
                run.stderr.contains(fragment),
                "{args:?}: {:?} should contain {fragment:?}",
                run.stderr
            );
        }
    }
    // The head's own pooling may be named.
    assert!(embed(input, &["--pooling", "mean"]).ok);
}

/// A model directory that shares the demo's files but has no heads of its own.
fn demo_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(demo_dir().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn head_init(model: &Path, extra: &[&str]) -> (bool, String) {
    head_init_on(model, &demo_dir().join("corpus.jsonl"), extra)
}

fn head_init_on(model: &Path, corpus: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_marc"))
        .args(["head", "init", "--model"])
        .arg(model)
        .arg("--corpus")
        .arg(corpus)
        .args(extra)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn head_init_fits_a_head_that_embed_uses() {
    let model = demo_copy();
    let corpus_items = std::fs::read_to_string(demo_dir().join("corpus.jsonl"))
        .unwrap()
        .lines()
        .count();
    assert!((200..=400).contains(&corpus_items));
    let base = ["--layer", "3", "--dim", "16", "--name", "pca16", "--pooling", "last"];
    let (ok, stderr) = head_init(model.path(), &base);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("{corpus_items} items")) && stderr.contains("explained variance 0."),
        "{stderr}"
    );
    let (ok, stderr) = head_init(model.path(), &base);
    assert!(
        !ok && stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    let (ok, stderr) = head_init(model.path(), &[&base[..], &["--force", "--no-normalize"]].concat());
    assert!(ok, "{stderr}");

    let small = model.path().join("small.jsonl");
    std::fs::write(
        &small,
        "{\"id\": 1, \"text\": \"one\"}\n{\"id\": 2, \"text\": \"two more\"}\n",
    )
    .unwrap();
    let (ok, stderr) = head_init_on(model.path(), &small, &["--layer", "3", "--dim", "2", "--name", "x"]);
    assert!(
        !ok && stderr.contains("2 items") && stderr.contains("items - 1"),
        "{stderr}"
    );
    let (ok, stderr) = head_init(model.path(), &["--layer", "3", "--dim", "257", "--name", "x"]);
    assert!(!ok && stderr.contains("hidden size 256"), "{stderr}");
    let (ok, stderr) = head_init(model.path(), &["--layer", "10", "--dim", "4", "--name", "x"]);
    assert!(!ok && stderr.contains("--layer 10"), "{stderr}");
    assert!(!model.path().join("heads/x").exists());

    // The only head is the default; --no-normalize was kept.
    let run = embed(
        "{\"id\": \"a\", \"text\": \"hello world\"}\n",
        &["--model", model.path().to_str().unwrap()],
    );
    assert!(run.ok, "{}", run.stderr);
    assert!(run.stderr.contains("head `pca16` (16 dims)"), "{}", run.stderr);
    let v = floats(&run.lines[0]["embedding"]);
    assert_eq!(v.len(), 16);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(model.path().join("heads/pca16/head.json")).unwrap()).unwrap();
    assert_eq!(json["normalize"], false);
    assert_eq!(json["pooling"], "last");
    assert_eq!(json["source_layer"], 3);
}
