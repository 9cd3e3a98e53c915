//! `--slo "p99<20ms,errors<0.1%"`: objectives checked at the end of a run; a broken one makes the exit code
//! non-zero, so a CI job fails.
//!
//! An objective is `METRIC OP VALUE`, objectives separated by commas:
//!
//! | metric | value | measures |
//! | --- | --- | --- |
//! | `pN` (`p50`, `p99`, `p99.9`, any N in 0..=100) | duration: `us`, `ms`, `s` | corrected latency at percentile N |
//! | `mean`, `max` | duration | corrected latency |
//! | `errors` | `N%` or a count | failed calls, percent of sent or number |
//! | `late` | `N%` or a count | sends later than `--late-threshold` |
//! | `rps` | calls per second | OK answers per second |
//!
//! `OP` is `<`, `<=`, `>` or `>=`.

use std::str::FromStr;

use super::{Report, SloVerdict};
use crate::record::Measurements;

/// A malformed objective.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--slo `{objective}`: {why}")]
pub struct SloError {
    objective: String,
    why: String,
}

/// What an objective measures.
#[derive(Clone, Debug, PartialEq)]
pub enum Metric {
    /// Corrected latency at this percentile.
    Percentile(f64),
    /// Mean corrected latency.
    Mean,
    /// Largest corrected latency.
    Max,
    /// Errors.
    Errors,
    /// Late sends.
    Late,
    /// OK answers per second.
    Rps,
}

/// A comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// One objective.
#[derive(Clone, Debug, PartialEq)]
pub struct Objective {
    /// As written.
    pub text: String,
    /// What it measures.
    pub metric: Metric,
    /// The comparison.
    pub op: Op,
    /// The bound: milliseconds for latencies, percent when `percent`, else a count or a rate.
    pub bound: f64,
    /// Errors and late sends: the bound is a percentage of the calls sent.
    pub percent: bool,
}

/// A list of objectives.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo(pub Vec<Objective>);

impl FromStr for Slo {
    type Err = SloError;

    fn from_str(s: &str) -> Result<Self, SloError> {
        s.split(',')
            .map(str::trim)
            .map(parse_objective)
            .collect::<Result<_, _>>()
            .map(Slo)
    }
}

fn parse_objective(text: &str) -> Result<Objective, SloError> {
    let err = |why: &str| SloError {
        objective: text.to_owned(),
        why: why.to_owned(),
    };
    let at = text
        .find(['<', '>'])
        .ok_or_else(|| err("expected METRIC<VALUE, METRIC<=VALUE, METRIC>VALUE or METRIC>=VALUE"))?;
    let (name, rest) = text.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else {
        (Op::Gt, &rest[1..])
    };
    let (name, value) = (name.trim(), value.trim());
    let metric = match name {
        "mean" => Metric::Mean,
        "max" => Metric::Max,
        "errors" => Metric::Errors,
        "late" => Metric::Late,
        "rps" => Metric::Rps,
        _ => match name.strip_prefix('p').map(str::parse::<f64>) {
            Some(Ok(p)) if (0.0..=100.0).contains(&p) => Metric::Percentile(p),
            _ => {
                return Err(err(
                    "unknown metric; expected pN (N in 0..=100), mean, max, errors, late or rps",
                ));
            }
        },
    };
    let number = |v: &str| v.trim().parse::<f64>().ok().filter(|x| x.is_finite() && *x >= 0.0);
    let (bound, percent) = match metric {
        Metric::Percentile(_) | Metric::Mean | Metric::Max => {
            let split = value.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(value.len());
            let (n, unit) = value.split_at(split);
            let scale = match unit {
                "us" => 1e-3,
                "ms" => 1.0,
                "s" => 1e3,
                _ => return Err(err("a latency needs a unit: us, ms or s")),
            };
            (
                number(n).ok_or_else(|| err("not a non-negative number"))? * scale,
                false,
            )
        }
        Metric::Errors | Metric::Late => match value.strip_suffix('%') {
            Some(p) => (number(p).ok_or_else(|| err("not a non-negative percentage"))?, true),
            None => (number(value).ok_or_else(|| err("not a non-negative count"))?, false),
        },
        Metric::Rps => (number(value).ok_or_else(|| err("not a non-negative rate"))?, false),
    };
    Ok(Objective {
        text: text.to_owned(),
        metric,
        op,
        bound,
        percent,
    })
}

impl Objective {
    /// The measured value in the objective's unit.
    pub fn actual(&self, m: &Measurements, r: &Report) -> f64 {
        let share = |n: u64| {
            if self.percent {
                100.0 * n as f64 / m.sent.max(1) as f64
            } else {
                n as f64
            }
        };
        match self.metric {
            Metric::Percentile(_) if m.corrected.is_empty() => 0.0,
            Metric::Percentile(p) => m.corrected.value_at_percentile(p) as f64 / 1000.0,
            Metric::Mean => r.latency_ms.corrected.mean,
            Metric::Max => r.latency_ms.corrected.max,
            Metric::Errors => share(r.calls.errors),
            Metric::Late => share(m.late),
            Metric::Rps => r.throughput.ok_per_s,
        }
    }

    /// Whether `actual` meets the objective.
    pub fn holds(&self, actual: f64) -> bool {
        match self.op {
            Op::Lt => actual < self.bound,
            Op::Le => actual <= self.bound,
            Op::Gt => actual > self.bound,
            Op::Ge => actual >= self.bound,
        }
    }
}

/// Checks every objective, storing the verdicts in the report; true when all hold.
pub fn check(slo: &Slo, m: &Measurements, report: &mut Report) -> bool {
    report.slo = slo
        .0
        .iter()
        .map(|o| {
            let actual = o.actual(m, report);
            SloVerdict {
                objective: o.text.clone(),
                actual,
                passed: o.holds(actual),
            }
        })
        .collect();
    report.slo.iter().all(|v| v.passed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_parse_with_units_and_operators() {
        let Slo(o) = "p99<20ms, errors<0.1%, p99.9<=1s, mean<500us, rps>=100, late<5, max>0ms"
            .parse()
            .unwrap();
        let got: Vec<_> = o.iter().map(|o| (o.metric.clone(), o.op, o.bound, o.percent)).collect();
        assert_eq!(
            got,
            [
                (Metric::Percentile(99.0), Op::Lt, 20.0, false),
                (Metric::Errors, Op::Lt, 0.1, true),
                (Metric::Percentile(99.9), Op::Le, 1000.0, false),
                (Metric::Mean, Op::Lt, 0.5, false),
                (Metric::Rps, Op::Ge, 100.0, false),
                (Metric::Late, Op::Lt, 5.0, false),
                (Metric::Max, Op::Gt, 0.0, false),
            ]
        );
    }

    #[test]
    fn malformed_objectives_name_themselves() {
        for (bad, why) in [
            ("p99=20ms", "expected METRIC<VALUE"),
            ("p101<1ms", "unknown metric"),
            ("q99<1ms", "unknown metric"),
            ("p99<20", "needs a unit"),
            ("p99<20min", "needs a unit"),
            ("errors<-1%", "percentage"),
            ("errors<x", "count"),
            ("rps>fast", "rate"),
            ("", "expected METRIC"),
        ] {
            let err = bad.parse::<Slo>().unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("--slo `{bad}`")) && err.contains(why),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn comparisons_are_strict_or_not_as_written() {
        let Slo(o) = "p99<20ms,p99<=20ms,rps>10,rps>=10".parse().unwrap();
        assert_eq!(
            o.iter().map(|o| o.holds(20.0)).collect::<Vec<_>>(),
            [false, true, true, true]
        );
        assert_eq!(
            o.iter().map(|o| o.holds(10.0)).collect::<Vec<_>>(),
            [true, true, false, true]
        );
    }
}
