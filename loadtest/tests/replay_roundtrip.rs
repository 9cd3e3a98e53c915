//! Capture -> replay round trip against the real server: a trace replayed into `marc serve --capture` comes back
//! with the same calls (requests field for field, RPCs) and the same spacing, within scheduling jitter; replayed
//! at 3x, with the gaps divided by 3. `--capture-token-ids` records exactly the ids the model's tokenizer gives.

mod common;

use std::collections::HashMap;

use common::{Server, loadtest_exit, serial, trace};
use marc_server::serve::CaptureConfig;
use marc_trace::{Record, Rpc};

/// How far a replayed call's arrival may be from its replayed time (relative to the run's start): most calls
/// ([`ON_TIME_SHARE`]) within [`JITTER_MS`], and the median within [`MEDIAN_JITTER_MS`]. Not every call: on a
/// shared 2-core machine a process can be descheduled for a few hundred ms now and then.
const JITTER_MS: f64 = 40.0;
const ON_TIME_SHARE: f64 = 0.9;
const MEDIAN_JITTER_MS: f64 = 10.0;

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
    let mut offsets_ms = Vec::new();
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
        // Where the call arrived against where the replay meant it, in the server's and the trace's clocks.
        offsets_ms.push(c.offset_ns as f64 / 1e6 - s.offset_ns as f64 / speed / 1e6);
    }
    // The clocks differ by a constant: the median offset, which one late call cannot move.
    let median = |xs: &mut Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        xs[xs.len() / 2]
    };
    let shift = median(&mut offsets_ms.clone());
    let mut errors: Vec<f64> = offsets_ms.iter().map(|o| (o - shift).abs()).collect();
    let on_time = errors.iter().filter(|e| **e < JITTER_MS).count() as f64 / errors.len() as f64;
    let median_error = median(&mut errors);
    assert!(
        on_time >= ON_TIME_SHARE && median_error < MEDIAN_JITTER_MS,
        "{:.0}% of the calls within {JITTER_MS} ms of their replayed time, median error {median_error:.1} ms; errors: {errors:.1?}",
        on_time * 100.0
    );
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
