//! The human summary printed at the end of a run.

use std::fmt::Write as _;

use super::{Latency, Report, human_ms};

/// The summary, several lines.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.calls;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{} against {}: {} calls in {:.2}s over {} connection(s)",
        r.run.mode, r.run.target, c.sent, r.duration_s, r.run.connections
    );
    let _ = writeln!(
        out,
        "  throughput  {:.1} ok/s (sent {:.1}/s)",
        r.throughput.ok_per_s, r.throughput.sent_per_s
    );
    let _ = writeln!(
        out,
        "  latency     {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    let row = |name: &str, l: &Latency| {
        format!(
            "  {name:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            human_ms(l.p50),
            human_ms(l.p90),
            human_ms(l.p99),
            human_ms(l.p99_9),
            human_ms(l.p99_99),
            human_ms(l.max)
        )
    };
    out.push_str(&row("corrected", &r.latency_ms.corrected));
    out.push_str(&row("uncorrected", &r.latency_ms.uncorrected));
    let _ = writeln!(
        out,
        "  sends       {} later than {} (lateness p99 {}, max {})",
        r.sends.late,
        human_ms(r.sends.late_threshold_ms),
        human_ms(r.sends.lateness_ms.p99),
        human_ms(r.sends.lateness_ms.max)
    );
    let _ = write!(
        out,
        "  calls       {} ok, {} errors ({:.3}%)",
        c.ok, c.errors, r.error_percent
    );
    if !r.errors_by_code.is_empty() {
        let codes: Vec<String> = r.errors_by_code.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = write!(out, ": {}", codes.join(", "));
    }
    out.push('\n');
    for v in &r.slo {
        let _ = writeln!(
            out,
            "  slo         {:<24} {} (actual {:.3})",
            v.objective,
            if v.passed { "ok" } else { "BROKEN" },
            v.actual
        );
    }
    out
}
