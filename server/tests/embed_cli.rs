//! `marc embed` end to end: the real binary on the demo model, checked against transformers'
//! hidden states for the same texts (models/demo/reference.safetensors).

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
    let run = embed(&text_items(&reference), &[]);
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
    let run = embed(&text_items(&reference), &["--layer", "3", "--pooling", "none"]);
    assert!(run.ok, "{}", run.stderr);
    for (line, (_, states)) in run.lines.iter().zip(&reference) {
        let rows = line["hidden"].as_array().unwrap();
        assert_eq!(rows.len(), states[3].len());
        for (row, expected) in rows.iter().zip(&states[3]) {
            assert!(relative_l2(&floats(row), expected) <= 1e-5);
        }
    }
    let run = embed(&text_items(&reference), &["--layer", "5", "--pooling", "last"]);
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
    let run = embed("{\"id\": 1, \"token_ids\": [1]}\n", &["--layer", "10"]);
    assert!(!run.ok && run.stderr.contains("--layer 10"), "{}", run.stderr);
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
