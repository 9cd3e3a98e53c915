//! What a run reports, built once from the [`Measurements`] and written in several forms:
//!
//! - [`summary`]: the human summary on stdout;
//! - `--json FILE`: the [`Report`] itself, with the schema `loadtest/report.schema.json` (version
//!   [`SCHEMA_VERSION`]: fields are only added within a version; a removal or change of meaning bumps it);
//! - [`csv`]: the per-second series; [`plot`]: SVG plots; [`slo`]: objectives that set the exit code.

pub mod csv;
pub mod plot;
pub mod slo;
pub mod summary;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::record::Measurements;

/// The version of the JSON report's schema.
pub const SCHEMA_VERSION: u32 = 1;

/// The largest report `compare` reads (a day-long run's per-second series is a few MiB).
const MAX_REPORT_BYTES: u64 = 256 << 20;

/// The percentiles of the spectrum: 0, 50, 75, 87.5, ... (halving the distance to 100 each step) down to
/// 99.9990234375, then 100.
pub fn spectrum_percentiles() -> Vec<f64> {
    let mut p: Vec<f64> = (0..18).map(|k| 100.0 * (1.0 - 0.5f64.powi(k))).collect();
    p.push(100.0);
    p
}

/// A latency distribution, in milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Calls measured.
    pub count: u64,
    /// Smallest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// 50th percentile.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99.99th percentile.
    pub p99_99: f64,
    /// Largest.
    pub max: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let q = |q: f64| if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(q)) };
        Self {
            count: h.len(),
            min: if h.is_empty() { 0.0 } else { ms(h.min()) },
            mean: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: if h.is_empty() { 0.0 } else { ms(h.max()) },
        }
    }
}

/// Call counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calls {
    /// Sent.
    pub sent: u64,
    /// Answered OK.
    pub ok: u64,
    /// Failed (any code, unfinished included).
    pub errors: u64,
    /// Sent but not answered before the run ended.
    pub unfinished: u64,
}

/// Rates over the whole run, per second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Throughput {
    /// OK answers per second.
    pub ok_per_s: f64,
    /// Calls sent per second.
    pub sent_per_s: f64,
}

/// How sends kept to the schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sends {
    /// A send later than this (ms) counts as late.
    pub late_threshold_ms: f64,
    /// Sends later than the threshold.
    pub late: u64,
    /// Actual minus intended send time, every call.
    pub lateness_ms: Latency,
}

/// Both latency histograms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latencies {
    /// From the intended send time: the headline, corrected for coordinated omission.
    pub corrected: Latency,
    /// From the actual send.
    pub uncorrected: Latency,
}

/// One point of the percentile spectrum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    /// The percentile, 0..=100.
    pub percentile: f64,
    /// Corrected latency at it, ms.
    pub corrected_ms: f64,
    /// Uncorrected latency at it, ms.
    pub uncorrected_ms: f64,
}

/// One second of the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecondRow {
    /// Seconds from the start (this row covers `second..second + 1`).
    pub second: u64,
    /// Calls meant to be sent in it.
    pub sent: u64,
    /// OK answers that arrived in it.
    pub ok: u64,
    /// Errors that arrived in it.
    pub errors: u64,
    /// Corrected latency of its OK answers, ms (0 without answers).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p90_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub max_ms: f64,
}

/// One objective's verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SloVerdict {
    /// The objective as written, e.g. `p99<20ms`.
    pub objective: String,
    /// The measured value, in the objective's unit (ms, %, calls or calls per second).
    pub actual: f64,
    /// Whether it held.
    pub passed: bool,
}

/// Facts about the run that are not measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `replay`, `rate` or `closed`.
    pub mode: String,
    /// The server, `host:port`.
    pub target: String,
    /// The command line, for the record.
    pub command: String,
    /// Start of the run, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// HTTP/2 connections used.
    pub connections: usize,
}

/// The whole report, as `--json` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `marc-loadtest VERSION`.
    pub tool: String,
    /// The run.
    pub run: RunInfo,
    /// From the start to the last answer, seconds.
    pub duration_s: f64,
    /// Call counts.
    pub calls: Calls,
    /// Rates.
    pub throughput: Throughput,
    /// Errors / sent, percent.
    pub error_percent: f64,
    /// Errors by gRPC code name (`UNFINISHED` for calls never answered).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Latency of OK calls, ms.
    pub latency_ms: Latencies,
    /// Lateness of sends.
    pub sends: Sends,
    /// The percentile spectrum.
    pub spectrum: Vec<SpectrumPoint>,
    /// Per second.
    pub timeseries: Vec<SecondRow>,
    /// `--slo` verdicts (empty without `--slo`).
    pub slo: Vec<SloVerdict>,
}

impl Report {
    /// Builds the report; `slo` verdicts are added by [`slo::check`].
    pub fn new(run: RunInfo, m: &Measurements) -> Self {
        let secs = m.elapsed.as_secs_f64();
        let errors: u64 = m.errors.values().sum();
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let at = |h: &Histogram<u64>, p: f64| {
            if h.is_empty() {
                0.0
            } else {
                ms(h.value_at_percentile(p))
            }
        };
        Self {
            schema_version: SCHEMA_VERSION,
            tool: format!("marc-loadtest {}", env!("CARGO_PKG_VERSION")),
            run,
            duration_s: secs,
            calls: Calls {
                sent: m.sent,
                ok: m.ok,
                errors,
                unfinished: m.unfinished,
            },
            throughput: Throughput {
                ok_per_s: per_s(m.ok),
                sent_per_s: per_s(m.sent),
            },
            error_percent: if m.sent > 0 {
                100.0 * errors as f64 / m.sent as f64
            } else {
                0.0
            },
            errors_by_code: m.errors.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            latency_ms: Latencies {
                corrected: Latency::of(&m.corrected),
                uncorrected: Latency::of(&m.uncorrected),
            },
            sends: Sends {
                late_threshold_ms: m.late_threshold.as_secs_f64() * 1000.0,
                late: m.late,
                lateness_ms: Latency::of(&m.lateness),
            },
            spectrum: spectrum_percentiles()
                .into_iter()
                .map(|p| SpectrumPoint {
                    percentile: p,
                    corrected_ms: at(&m.corrected, p),
                    uncorrected_ms: at(&m.uncorrected, p),
                })
                .collect(),
            timeseries: m
                .seconds
                .iter()
                .enumerate()
                .map(|(i, s)| SecondRow {
                    second: i as u64,
                    sent: s.sent,
                    ok: s.ok,
                    errors: s.errors,
                    p50_ms: ms(s.p50_us),
                    p90_ms: ms(s.p90_us),
                    p99_ms: ms(s.p99_us),
                    max_ms: ms(s.max_us),
                })
                .collect(),
            slo: Vec::new(),
        }
    }

    /// Writes the report as pretty JSON.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(self).context("cannot serialize the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}: cannot write", path.display()))
    }

    /// Reads a report written by [`Report::write_json`], checking its schema version.
    pub fn read_json(path: &Path) -> anyhow::Result<Self> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= MAX_REPORT_BYTES,
            "{}: {size} bytes, more than a report's {MAX_REPORT_BYTES}",
            path.display()
        );
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let version = value.get("schema_version").and_then(serde_json::Value::as_u64);
        anyhow::ensure!(
            version == Some(u64::from(SCHEMA_VERSION)),
            "{}: schema_version {version:?}, this marc-loadtest reads version {SCHEMA_VERSION}",
            path.display()
        );
        serde_json::from_value(value).with_context(|| format!("{}: not a marc-loadtest report", path.display()))
    }
}

/// Formats a duration in ms for humans: `812us`, `12.3ms`, `1.25s`.
pub fn human_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0}us", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.2}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// A duration as `human_ms` shows it.
pub fn human(d: Duration) -> String {
    human_ms(d.as_secs_f64() * 1000.0)
}
