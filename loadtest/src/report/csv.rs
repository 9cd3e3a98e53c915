//! `--csv FILE`: the per-second series, one row per second of the run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;

use super::Report;

/// The CSV header; the columns are [`super::SecondRow`]'s fields.
pub const HEADER: &str = "second,sent,ok,errors,p50_ms,p90_ms,p99_ms,max_ms";

/// The series as CSV text.
pub fn render(r: &Report) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for s in &r.timeseries {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{},{},{},{},{:.3},{:.3},{:.3},{:.3}",
            s.second, s.sent, s.ok, s.errors, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
        );
    }
    out
}

/// Writes the series to `path`.
pub fn write(r: &Report, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, render(r)).with_context(|| format!("--csv {}: cannot write", path.display()))
}
