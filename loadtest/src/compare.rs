//! `marc-loadtest compare A.json B.json`: how run B differs from run A (the baseline), metric by metric, with
//! regressions flagged: a latency higher or a throughput lower by more than the threshold (percent of A), or an
//! error percentage higher by more than the error threshold (percentage points).

use std::fmt::Write as _;

use crate::report::Report;

/// Which way is worse for a metric.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Worse {
    Higher,
    Lower,
}

/// One compared metric.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The metric's name.
    pub metric: &'static str,
    /// Its value in A.
    pub a: f64,
    /// Its value in B.
    pub b: f64,
    /// Whether B is worse than A beyond the threshold.
    pub regression: bool,
}

/// The thresholds that make a difference a regression.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Percent of A, for latencies and throughput.
    pub relative_percent: f64,
    /// Percentage points, for the error percentage.
    pub error_points: f64,
}

/// Compares B against A.
pub fn compare(a: &Report, b: &Report, t: Thresholds) -> Vec<Row> {
    let (ca, cb) = (&a.latency_ms.corrected, &b.latency_ms.corrected);
    let relative = [
        ("corrected p50 (ms)", ca.p50, cb.p50, Worse::Higher),
        ("corrected p90 (ms)", ca.p90, cb.p90, Worse::Higher),
        ("corrected p99 (ms)", ca.p99, cb.p99, Worse::Higher),
        ("corrected p99.9 (ms)", ca.p99_9, cb.p99_9, Worse::Higher),
        ("corrected max (ms)", ca.max, cb.max, Worse::Higher),
        (
            "uncorrected p99 (ms)",
            a.latency_ms.uncorrected.p99,
            b.latency_ms.uncorrected.p99,
            Worse::Higher,
        ),
        (
            "throughput (ok/s)",
            a.throughput.ok_per_s,
            b.throughput.ok_per_s,
            Worse::Lower,
        ),
    ];
    let mut rows: Vec<Row> = relative
        .into_iter()
        .map(|(metric, a, b, worse)| {
            let change = if a > 0.0 {
                100.0 * (b - a) / a
            } else if b > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            let regression = match worse {
                Worse::Higher => change > t.relative_percent,
                Worse::Lower => change < -t.relative_percent,
            };
            Row {
                metric,
                a,
                b,
                regression,
            }
        })
        .collect();
    rows.push(Row {
        metric: "errors (%)",
        a: a.error_percent,
        b: b.error_percent,
        regression: b.error_percent - a.error_percent > t.error_points,
    });
    rows
}

/// The comparison as a table.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!("{:<22} {:>12} {:>12} {:>9}\n", "metric", "A", "B", "change");
    for r in rows {
        let change = if r.a != 0.0 {
            format!("{:+.1}%", 100.0 * (r.b - r.a) / r.a)
        } else {
            "-".to_owned()
        };
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "{:<22} {:>12.3} {:>12.3} {:>9}{}",
            r.metric,
            r.a,
            r.b,
            change,
            if r.regression { "  REGRESSION" } else { "" }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use crate::report::RunInfo;

    fn report(p99_ms: u64, ok_per_s: f64, error_percent: f64) -> Report {
        let recorder = Recorder::new(std::time::Duration::from_millis(1));
        let mut r = Report::new(
            RunInfo {
                mode: "rate".into(),
                target: "127.0.0.1:1".into(),
                command: String::new(),
                started_unix_ms: 0,
                connections: 1,
            },
            &recorder.finish(),
        );
        r.latency_ms.corrected.p99 = p99_ms as f64;
        r.throughput.ok_per_s = ok_per_s;
        r.error_percent = error_percent;
        r
    }

    fn flagged(a: &Report, b: &Report) -> Vec<&'static str> {
        let t = Thresholds {
            relative_percent: 10.0,
            error_points: 0.5,
        };
        compare(a, b, t)
            .into_iter()
            .filter(|r| r.regression)
            .map(|r| r.metric)
            .collect()
    }

    #[test]
    fn regressions_beyond_the_thresholds_are_flagged_and_improvements_are_not() {
        let base = report(20, 100.0, 0.0);
        assert!(flagged(&base, &report(21, 95.0, 0.4)).is_empty());
        assert_eq!(flagged(&base, &report(23, 100.0, 0.0)), ["corrected p99 (ms)"]);
        assert_eq!(flagged(&base, &report(20, 85.0, 0.0)), ["throughput (ok/s)"]);
        assert_eq!(flagged(&base, &report(20, 100.0, 1.0)), ["errors (%)"]);
        assert!(flagged(&report(30, 50.0, 5.0), &base).is_empty());
    }
}
