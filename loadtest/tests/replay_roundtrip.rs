//! Capture -> replay round trip against the real server: a trace replayed into `marc serve --capture` comes back
//! with the same calls (requests field for field, RPCs) and the same spacing, within scheduling jitter; replayed
//! at 3x, with the gaps divided by 3. `--capture-token-ids` records exactly the ids the model's tokenizer gives.

mod common;

use std::collections::HashMap;

use common::{Server, loadtest_exit, serial, trace};
use marc_server::serve::CaptureConfig;
use marc_trace::{Record, Rpc};

/// How far a replayed call's offset may be from its intended one, relative to the first call.
const JITTER_MS: f64 = 40.0;

/// Matches captured calls to the trace's by their first input's id (gen makes them unique).
fn by_id(records: &[Record]) -> HashMap<String, &Record> {
    records.iter().map(|r| (r.request.inputs[0].id.clone(), r)).collect()
}

/// Replays `trace_path` at `speed` into a capturing server and returns the captured trace.
fn replay_captured(
    dir: &std::path::Path,
    trace_path: &std::path::Path,
    speed: &str,
    name: &str,
    token_ids: bool,
) -> Vec<Record> {
    let capture = dir.join(name);
    let server = Server::start(|c| {
        c.capture = Some(CaptureConfig {
            path: capture.clone(),
            sample: 1.0,
            token_ids,
        });
    });
    let target = server.addr.to_string();
    loadtest_exit(
        &[
            "replay",
            trace_path.to_str().unwrap(),
            "--speed",
            speed,
            "--target",
            &target,
            "--quiet",
        ],
        0,
    );
    server.stop();
    // The server's readiness probe is the first captured call; the replayed ones carry gen's input ids.
    trace(&capture)
        .into_iter()
        .filter(|r| r.request.inputs[0].id.contains('.'))
        .collect()
}

fn assert_same_calls_and_spacing(sent: &[Record], captured: &[Record], speed: f64) {
    assert_eq!(captured.len(), sent.len(), "every call arrives once");
    let captured = by_id(captured);
    let (sent0, captured0) = (
        sent[0].offset_ns as f64,
        captured[&sent[0].request.inputs[0].id].offset_ns as f64,
    );
    let mut worst: f64 = 0.0;
    for s in sent {
        let c = captured[&s.request.inputs[0].id];
        assert_eq!(c.rpc, s.rpc);
        let mut request = c.request.clone();
        if c.rpc == Rpc::EmbedStream {
            // The load tester tags streamed requests with its own ids to match answers.
            assert!(request.request_id.starts_with("lt"), "{}", request.request_id);
            request.request_id = s.request.request_id.clone();
        }
        assert_eq!(request, s.request);
        let want_ms = (s.offset_ns as f64 - sent0) / speed / 1e6;
        let got_ms = (c.offset_ns as f64 - captured0) / 1e6;
        worst = worst.max((got_ms - want_ms).abs());
    }
    assert!(worst < JITTER_MS, "a call arrived {worst:.1} ms off its replayed time");
}

#[test]
fn replay_keeps_the_calls_and_their_spacing_at_1x_and_3x() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.jsonl");
    // 40 calls, Poisson at 20/s (about 2 s), text and ids, a mix of options, a third on EmbedStream.
    loadtest_exit(
        &[
            "gen",
            "--out",
            original.to_str().unwrap(),
            "--calls",
            "40",
            "--rps",
            "20",
            "--arrival",
            "poisson",
            "--items",
            "1-3",
            "--tokens",
            "4-24",
            "--content",
            "text",
            "--stream-fraction",
            "0.3",
            "--options",
            "2:",
            "--options",
            "1:encoding=int8,dimensions=8,priority=high",
            "--options",
            "1:raw=true,layer=2,pooling=mean,encoding=binary",
            "--seed",
            "11",
        ],
        0,
    );
    let sent = trace(&original);
    assert!(sent.iter().any(|r| r.rpc == Rpc::EmbedStream) && sent.iter().any(|r| r.rpc == Rpc::Embed));

    let captured = replay_captured(dir.path(), &original, "1", "captured-1x.jsonl", false);
    assert_same_calls_and_spacing(&sent, &captured, 1.0);

    // The captured trace is itself replayable: at 3x its gaps shrink threefold.
    let mut recaptured_from = captured.clone();
    recaptured_from.sort_by_key(|r| r.offset_ns);
    let captured_path = dir.path().join("captured-1x.jsonl");
    let recaptured = replay_captured(dir.path(), &captured_path, "3", "captured-3x.jsonl", false);
    assert_same_calls_and_spacing(&recaptured_from, &recaptured, 3.0);
}

#[test]
fn capture_token_ids_records_what_the_tokenizer_gives() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("text.jsonl");
    loadtest_exit(
        &[
            "gen",
            "--out",
            original.to_str().unwrap(),
            "--calls",
            "10",
            "--rps",
            "50",
            "--arrival",
            "constant",
            "--items",
            "2",
            "--tokens",
            "3-12",
            "--content",
            "text",
            "--seed",
            "5",
        ],
        0,
    );
    let sent = trace(&original);
    let captured = replay_captured(dir.path(), &original, "1", "ids.jsonl", true);
    let tokenizer = tokenizers::Tokenizer::from_file(common::demo_dir().join("tokenizer.json")).unwrap();
    let captured = by_id(&captured);
    for s in &sent {
        let c = captured[&s.request.inputs[0].id];
        for (si, ci) in s.request.inputs.iter().zip(&c.request.inputs) {
            let want = tokenizer
                .encode(si.text.as_deref().unwrap(), true)
                .unwrap()
                .get_ids()
                .to_vec();
            assert_eq!(ci.text, None);
            assert_eq!(ci.token_ids.as_ref(), Some(&want), "{:?}", si.text);
        }
    }
}
