//! When each call is meant to be sent: the intended send times of the open-loop modes, as offsets from the start
//! of the run. Latency is measured from these times, so a call that could not be sent on time still counts its
//! wait (no coordinated omission).
//!
//! - [`Replay`]: a trace's recorded offsets divided by the speed, optionally looped.
//! - [`RateSchedule`]: arrivals of a rate profile ([`RateProfile`]: constant, steps, ramps), evenly spaced or
//!   Poisson. Both are done by inverting the cumulative rate: the k-th call is sent when the expected number of
//!   calls so far reaches k (constant) or a sum of k exponential draws (Poisson).

use std::str::FromStr;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1};

/// A malformed schedule argument.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(String);

/// One planned call: when, and which request (an index into the request source).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Planned {
    /// The intended send time, from the start of the run.
    pub at: Duration,
    /// The request's index in the source.
    pub request: usize,
}

/// A trace's offsets replayed at a speed.
pub struct Replay {
    offsets_ns: Vec<u64>,
    speed: f64,
    period_ns: u64,
    looping: bool,
    next: usize,
}

impl Replay {
    /// `offsets_ns` sorted ascending; the first call goes at once, later ones at their distance from the first
    /// divided by `speed`. With `looping`, the trace starts again one mean gap after its last call.
    pub fn new(offsets_ns: &[u64], speed: f64, looping: bool) -> Result<Self, ScheduleError> {
        if !(speed > 0.0 && speed.is_finite()) {
            return Err(ScheduleError(format!("--speed {speed}: must be a positive number")));
        }
        let first = offsets_ns.first().copied().unwrap_or(0);
        let offsets_ns: Vec<u64> = offsets_ns.iter().map(|o| o - first).collect();
        let span = offsets_ns.last().copied().unwrap_or(0);
        let mean_gap = match offsets_ns.len() {
            0 | 1 => 1_000_000_000,
            n => (span / (n as u64 - 1)).max(1),
        };
        Ok(Self {
            offsets_ns,
            speed,
            period_ns: span + mean_gap,
            looping,
            next: 0,
        })
    }

    /// The time the trace takes once, at this speed (its span plus one mean gap).
    pub fn period(&self) -> Duration {
        Duration::from_secs_f64(self.period_ns as f64 / 1e9 / self.speed)
    }
}

impl Iterator for Replay {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        let n = self.offsets_ns.len();
        if n == 0 || (!self.looping && self.next >= n) {
            return None;
        }
        let (round, i) = (self.next / n, self.next % n);
        self.next += 1;
        let at_ns = round as f64 * self.period_ns as f64 + self.offsets_ns[i] as f64;
        Some(Planned {
            at: Duration::from_secs_f64(at_ns / 1e9 / self.speed),
            request: i,
        })
    }
}

/// A piece of a rate profile: the rate goes linearly from `from_rps` to `to_rps` over `secs`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Segment {
    /// Calls per second at the start.
    pub from_rps: f64,
    /// Calls per second at the end.
    pub to_rps: f64,
    /// Seconds; the last segment's rate then holds forever.
    pub secs: f64,
}

/// Calls per second over time. Syntax (`--rps`): `R` (constant), `R1:T1,R2:T2,...` (steps: R1 for T1, then R2
/// for T2, ...), `ramp:FROM..TO:T` (linear from FROM to TO over T); durations like `5s`, `500ms`, `2m`. After
/// the last piece its final rate holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RateProfile {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

/// Parses `5s`, `250ms`, `2m`, `1.5s`, `100us`.
pub fn parse_duration(s: &str) -> Result<Duration, ScheduleError> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        ScheduleError(format!(
            "duration `{s}`: expected a number and a unit (us, ms, s, m, h)"
        ))
    })?;
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(ScheduleError(format!("duration `{s}`: unit must be us, ms, s, m or h"))),
    };
    Duration::try_from_secs_f64(value * scale)
        .map_err(|_| ScheduleError(format!("duration `{s}`: must be non-negative and finite")))
}

fn parse_rate(s: &str) -> Result<f64, ScheduleError> {
    match s.trim().parse::<f64>() {
        Ok(r) if r >= 0.0 && r.is_finite() => Ok(r),
        _ => Err(ScheduleError(format!(
            "rate `{s}`: expected calls per second, a number >= 0"
        ))),
    }
}

impl FromStr for RateProfile {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        let segments = if let Some(rest) = s.strip_prefix("ramp:") {
            let bad = || ScheduleError(format!("--rps `{s}`: expected ramp:FROM..TO:DURATION"));
            let (rates, secs) = rest.rsplit_once(':').ok_or_else(bad)?;
            let (from, to) = rates.split_once("..").ok_or_else(bad)?;
            vec![Segment {
                from_rps: parse_rate(from)?,
                to_rps: parse_rate(to)?,
                secs: parse_duration(secs)?.as_secs_f64(),
            }]
        } else if s.contains(':') {
            s.split(',')
                .map(|step| {
                    let (rate, secs) = step
                        .split_once(':')
                        .ok_or_else(|| ScheduleError(format!("--rps step `{step}`: expected RATE:DURATION")))?;
                    let rate = parse_rate(rate)?;
                    Ok(Segment {
                        from_rps: rate,
                        to_rps: rate,
                        secs: parse_duration(secs)?.as_secs_f64(),
                    })
                })
                .collect::<Result<_, ScheduleError>>()?
        } else {
            let rate = parse_rate(s)?;
            vec![Segment {
                from_rps: rate,
                to_rps: rate,
                secs: 0.0,
            }]
        };
        if segments.iter().all(|g| g.from_rps == 0.0 && g.to_rps == 0.0) {
            return Err(ScheduleError(format!("--rps `{s}`: the rate is zero throughout")));
        }
        Ok(Self { segments })
    }
}

impl RateProfile {
    /// The time at which the expected number of calls since the start reaches `count`, or `None` if it never
    /// does (the rate ends at zero first).
    pub fn time_of(&self, count: f64) -> Option<f64> {
        let mut left = count;
        let mut start = 0.0;
        for (i, g) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            let slope = if g.secs > 0.0 {
                (g.to_rps - g.from_rps) / g.secs
            } else {
                0.0
            };
            let in_segment = g.from_rps * g.secs + slope * g.secs * g.secs / 2.0;
            if left <= in_segment {
                return Some(start + solve(g.from_rps, slope, left));
            }
            left -= in_segment;
            start += g.secs;
            if last {
                // The final rate holds beyond the profile.
                return (g.to_rps > 0.0).then(|| start + left / g.to_rps);
            }
        }
        None
    }
}

/// The t >= 0 at which a + b t integrated from 0 reaches `count`: a t + b t^2 / 2 = count.
fn solve(a: f64, b: f64, count: f64) -> f64 {
    if count <= 0.0 {
        return 0.0;
    }
    if b.abs() < 1e-12 {
        return count / a;
    }
    // The root of b/2 t^2 + a t - count = 0 that is the first crossing, in a form that is stable as b -> 0.
    2.0 * count / (a + (a * a + 2.0 * b * count).sqrt())
}

/// The arrivals of a rate profile, over `requests` requests in turn.
pub struct RateSchedule {
    profile: RateProfile,
    poisson: Option<ChaCha8Rng>,
    count: f64,
    next: usize,
    requests: usize,
}

impl RateSchedule {
    /// Constant arrivals (`poisson_seed` `None`) or Poisson ones seeded with it; the first call goes at once
    /// with constant arrivals. Requests are taken in order, cycling over `requests`.
    pub fn new(profile: RateProfile, poisson_seed: Option<u64>, requests: usize) -> Self {
        Self {
            profile,
            poisson: poisson_seed.map(ChaCha8Rng::seed_from_u64),
            count: 0.0,
            next: 0,
            requests: requests.max(1),
        }
    }
}

impl Iterator for RateSchedule {
    type Item = Planned;

    fn next(&mut self) -> Option<Planned> {
        if let Some(rng) = &mut self.poisson {
            let draw: f64 = Exp1.sample(rng);
            self.count += draw;
        }
        let at = self.profile.time_of(self.count)?;
        if self.poisson.is_none() {
            self.count += 1.0;
        }
        let planned = Planned {
            at: Duration::try_from_secs_f64(at).ok()?,
            request: self.next % self.requests,
        };
        self.next += 1;
        Some(planned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(planned: impl Iterator<Item = Planned>) -> Vec<f64> {
        planned.map(|p| (p.at.as_secs_f64() * 1e6).round() / 1e6).collect()
    }

    #[test]
    fn replay_divides_gaps_by_the_speed_and_loops_after_a_mean_gap() {
        let offsets = [5_000_000_000, 5_100_000_000, 5_400_000_000];
        assert_eq!(secs(Replay::new(&offsets, 1.0, false).unwrap()), [0.0, 0.1, 0.4]);
        assert_eq!(secs(Replay::new(&offsets, 2.0, false).unwrap()), [0.0, 0.05, 0.2]);
        // Span 0.4 s, mean gap 0.2 s: the second round starts at 0.6 s.
        let looped: Vec<_> = Replay::new(&offsets, 1.0, true).unwrap().take(5).collect();
        assert_eq!(secs(looped.iter().copied()), [0.0, 0.1, 0.4, 0.6, 0.7]);
        assert_eq!(looped.iter().map(|p| p.request).collect::<Vec<_>>(), [0, 1, 2, 0, 1]);
        assert!(Replay::new(&offsets, 0.0, false).is_err());
        assert_eq!(Replay::new(&[], 1.0, true).unwrap().next(), None);
    }

    #[test]
    fn constant_rate_sends_evenly_from_time_zero() {
        let profile: RateProfile = "4".parse().unwrap();
        assert_eq!(
            secs(RateSchedule::new(profile, None, 3).take(5)),
            [0.0, 0.25, 0.5, 0.75, 1.0]
        );
        let requests: Vec<_> = RateSchedule::new("4".parse().unwrap(), None, 3)
            .take(5)
            .map(|p| p.request)
            .collect();
        assert_eq!(requests, [0, 1, 2, 0, 1]);
    }

    #[test]
    fn steps_change_the_rate_at_their_boundaries() {
        // 2/s for 1 s (calls at 0, 0.5), then 10/s for 1 s (at 1.0, 1.1, ...), then 10/s holds.
        let profile: RateProfile = "2:1s,10:1s".parse().unwrap();
        let got = secs(RateSchedule::new(profile, None, 1).take(14));
        assert_eq!(got[..4], [0.0, 0.5, 1.0, 1.1]);
        assert_eq!(got[13], 2.1);
        // A zero-rate step is a pause.
        let got = secs(RateSchedule::new("1:2.5s,0:3s,1:1s".parse().unwrap(), None, 1).take(4));
        assert_eq!(got, [0.0, 1.0, 2.0, 6.0]);
    }

    #[test]
    fn a_ramp_matches_the_integral_of_its_rate() {
        // Rate 0 -> 10 over 2 s: N(t) = 2.5 t^2, so the k-th call (count k) is at sqrt(k / 2.5).
        let profile: RateProfile = "ramp:0..10:2s".parse().unwrap();
        let got = secs(RateSchedule::new(profile, None, 1).take(12));
        for (k, t) in got.iter().enumerate() {
            let want = if k <= 10 {
                (k as f64 / 2.5).sqrt()
            } else {
                2.0 + (k as f64 - 10.0) / 10.0
            };
            assert!((t - want).abs() < 1e-6, "call {k}: {t} vs {want}");
        }
    }

    #[test]
    fn poisson_arrivals_have_the_rate_on_average() {
        let got: Vec<_> = RateSchedule::new("100".parse().unwrap(), Some(1), 1)
            .take(10_000)
            .collect();
        let span = got.last().unwrap().at.as_secs_f64();
        // 10,000 exponential gaps of mean 10 ms: the sum's standard error is 1%.
        assert!((span - 100.0).abs() < 5.0, "{span}");
        assert!(got.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[test]
    fn a_profile_that_ends_at_zero_ends_the_schedule() {
        let got = secs(RateSchedule::new("2:1s,0:1s".parse().unwrap(), None, 1));
        assert_eq!(got, [0.0, 0.5, 1.0]);
    }

    #[test]
    fn bad_profiles_and_durations_are_errors() {
        for bad in ["", "-1", "x", "0", "ramp:1..2", "5:1q", "ramp:0..0:1s", "nan"] {
            assert!(bad.parse::<RateProfile>().is_err(), "{bad}");
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3").is_err());
    }
}
