//! Every mode against the real server, each a couple of seconds: they stop by themselves, `--slo` sets the exit
//! code both ways, the JSON report validates against the committed schema, the SVG plots are well-formed XML with
//! their text, the CSV has one row per second, and `compare` flags a regression.

mod common;

use std::path::Path;

use common::{Server, json, loadtest_exit, serial};

fn schema() -> jsonschema::Validator {
    let schema = json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("report.schema.json"));
    jsonschema::draft202012::new(&schema).expect("the committed schema is a valid JSON Schema")
}

fn assert_valid(report: &Path) -> serde_json::Value {
    let value = json(report);
    let validator = schema();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{}: {errors:#?}", report.display());
    value
}

/// Runs a load-generating command against `target` with `--quiet --json DIR/NAME`, expecting exit `code`, and
/// returns its report, validated against the schema.
fn run_with_report(args: &[&str], target: &str, dir: &Path, name: &str, code: i32) -> serde_json::Value {
    let report = dir.join(name);
    let mut all = args.to_vec();
    all.extend(["--target", target, "--quiet", "--json", report.to_str().unwrap()]);
    loadtest_exit(&all, code);
    assert_valid(&report)
}

#[test]
fn rate_mode_writes_every_report_and_slo_sets_the_exit_code_both_ways() {
    let _serial = serial();
    let server = Server::start(|_| {});
    let target = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (report, csv, plots) = (
        dir.path().join("a.json"),
        dir.path().join("a.csv"),
        dir.path().join("plots"),
    );
    // A 2-second step profile with Poisson arrivals and a few streamed calls; the SLO is loose enough to hold.
    let out = loadtest_exit(
        &[
            "rate",
            "--rps",
            "20:1s,40:1s",
            "--arrival",
            "poisson",
            "--duration",
            "2s",
            "--target",
            &target,
            "--stream-fraction",
            "0.3",
            "--quiet",
            "--slo",
            "p99<5s,errors<1%,rps>1",
            "--json",
            report.to_str().unwrap(),
            "--csv",
            csv.to_str().unwrap(),
            "--plot",
            plots.to_str().unwrap(),
        ],
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrected") && text.contains("p99.99"), "{text}");
    let r = assert_valid(&report);
    let sent = r["calls"]["sent"].as_u64().unwrap();
    // 60 calls expected (20 + 40); Poisson's standard deviation is about 8.
    assert!((30..=90).contains(&sent), "{sent}");
    assert_eq!(r["calls"]["ok"].as_u64().unwrap(), sent);
    assert!(r["slo"].as_array().unwrap().iter().all(|v| v["passed"] == true));

    let csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "second,sent,ok,errors,p50_ms,p90_ms,p99_ms,max_ms");
    assert_eq!(rows.len() - 1, r["timeseries"].as_array().unwrap().len());
    let sent_by_second: u64 = rows[1..]
        .iter()
        .map(|r| r.split(',').nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(sent_by_second, sent);

    for (file, words) in [
        ("latency.svg", &["Latency over time", "p99", "seconds"][..]),
        (
            "spectrum.svg",
            &["Latency by percentile", "99%", "corrected (from intended send)"][..],
        ),
        ("throughput.svg", &["Throughput", "sent", "errors"][..]),
    ] {
        let svg = std::fs::read_to_string(plots.join(file)).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<String> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
            .collect();
        for w in words {
            assert!(
                texts.iter().any(|t| t.contains(w)),
                "{file}: no text {w:?} in {texts:?}"
            );
        }
        assert!(
            doc.descendants().any(|n| n.has_tag_name("polyline")),
            "{file}: no lines"
        );
    }

    // The same run with an objective no server meets: exit code 3, the verdict in the report.
    let broken = run_with_report(
        &["rate", "--rps", "20", "--duration", "1s", "--slo", "p50<1us,errors<1%"],
        &target,
        dir.path(),
        "broken.json",
        3,
    );
    let verdicts = &broken["slo"];
    assert_eq!(verdicts[0]["passed"], false);
    assert_eq!(verdicts[1]["passed"], true);

    // compare: a report against itself is no regression; against a report with a p50 of 1 us, everything is.
    loadtest_exit(&["compare", report.to_str().unwrap(), report.to_str().unwrap()], 0);
    let mut fast = json(&report);
    for k in ["p50", "p90", "p99", "p99_9", "max"] {
        fast["latency_ms"]["corrected"][k] = serde_json::json!(0.001);
    }
    let fast_path = dir.path().join("fast.json");
    std::fs::write(&fast_path, fast.to_string()).unwrap();
    let out = loadtest_exit(&["compare", fast_path.to_str().unwrap(), report.to_str().unwrap()], 4);
    assert!(String::from_utf8_lossy(&out.stdout).contains("REGRESSION"));
    server.stop();
}

#[test]
fn closed_and_replay_modes_stop_by_themselves() {
    let _serial = serial();
    let server = Server::start(|_| {});
    let target = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();

    // Closed loop, 4 workers, bounded by duration.
    let r = run_with_report(
        &["closed", "--concurrency", "4", "--duration", "1s"],
        &target,
        dir.path(),
        "closed.json",
        0,
    );
    assert!(r["calls"]["ok"].as_u64().unwrap() > 4);
    assert_eq!(r["run"]["mode"], "closed");
    // No schedule, so nothing can be late and the two histograms agree.
    assert_eq!(r["latency_ms"]["corrected"], r["latency_ms"]["uncorrected"]);

    // Progress: without a terminal, one plain line per interval on stderr.
    let out = loadtest_exit(
        &[
            "closed",
            "--concurrency",
            "2",
            "--duration",
            "1s",
            "--progress-interval",
            "200ms",
            "--target",
            &target,
        ],
        0,
    );
    let progress = String::from_utf8_lossy(&out.stderr);
    let lines = progress
        .lines()
        .filter(|l| l.contains("in flight") && l.contains("p99"))
        .count();
    assert!((2..=8).contains(&lines), "{progress}");

    // Closed loop bounded by count.
    let args = ["closed", "--concurrency", "3", "--max-calls", "25", "--duration", "30s"];
    let r = run_with_report(&args, &target, dir.path(), "count.json", 0);
    assert_eq!(r["calls"]["sent"], 25);

    // Replay with --loop, bounded by --max-calls: a 5-call trace sent three times over, and one more.
    let trace = dir.path().join("t.jsonl");
    let trace = trace.to_str().unwrap();
    loadtest_exit(
        &[
            "gen",
            "--out",
            trace,
            "--calls",
            "5",
            "--rps",
            "100",
            "--arrival",
            "constant",
        ],
        0,
    );
    let args = ["replay", trace, "--loop", "--duration", "10s", "--max-calls", "16"];
    let r = run_with_report(&args, &target, dir.path(), "loop.json", 0);
    assert_eq!(r["calls"]["ok"], 16);
    // 16 calls 10 ms apart: sent in about 0.15 s, far from the 10 s bound.
    assert!(r["duration_s"].as_f64().unwrap() < 5.0, "{}", r["duration_s"]);
    server.stop();
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("bad.jsonl");
    std::fs::write(
        &trace,
        "{\"offset_ns\":0,\"rpc\":\"Embed\",\"request\":{\"inputs\":[]}}\n{\"offset_ns\":1}\n",
    )
    .unwrap();
    let out = loadtest_exit(&["replay", trace.to_str().unwrap(), "--target", "127.0.0.1:1"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.jsonl") && err.contains("line 2: missing field `rpc`"),
        "{err}"
    );
    let out = loadtest_exit(&["rate", "--rps", "10", "--slo", "p99<fast"], 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--slo `p99<fast`"));
}
