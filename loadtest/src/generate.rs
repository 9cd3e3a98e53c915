//! Synthetic traces (`marc-loadtest gen`, and the request source of `rate` and `closed` without `--trace`):
//! an arrival process, items per call and tokens per item drawn from distributions, and a weighted mix of request
//! options. Seeded with ChaCha8, whose output is fixed by its specification, so a seed gives the same trace on
//! every machine and build.

use std::str::FromStr;

use marc_trace::{Input, Record, Request, Rpc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp1, LogNormal};

/// The most items one generated call may have.
pub const MAX_ITEMS: u64 = 1 << 16;
/// The most tokens (or words) one generated item may have.
pub const MAX_TOKENS: u64 = 1 << 20;
/// The most tokens a generated trace may hold in total (about 4 GiB of JSON at most).
pub const MAX_TRACE_TOKENS: u64 = 1 << 30;

/// A malformed generator argument.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GenError(String);

/// A distribution of positive integers.
#[derive(Clone, Debug, PartialEq)]
pub enum Dist {
    /// Always `n`: `N`.
    Fixed(u64),
    /// Uniform over `lo..=hi`: `LO-HI`.
    Uniform(u64, u64),
    /// Log-normal with this median and sigma (of the log), rounded and clamped to at least 1:
    /// `lognormal:MEDIAN,SIGMA`.
    LogNormal {
        /// The median.
        median: f64,
        /// The standard deviation of the logarithm.
        sigma: f64,
    },
}

impl FromStr for Dist {
    type Err = GenError;

    fn from_str(s: &str) -> Result<Self, GenError> {
        let bad = |why: &str| GenError(format!("`{s}`: {why}; expected N, LO-HI or lognormal:MEDIAN,SIGMA"));
        let int = |t: &str| t.trim().parse::<u64>().map_err(|_| bad("not a whole number"));
        let dist = if let Some(rest) = s.strip_prefix("lognormal:") {
            let (median, sigma) = rest.split_once(',').ok_or_else(|| bad("missing `,SIGMA`"))?;
            let median: f64 = median.trim().parse().map_err(|_| bad("the median is not a number"))?;
            let sigma: f64 = sigma.trim().parse().map_err(|_| bad("sigma is not a number"))?;
            if !(median >= 1.0 && median.is_finite() && sigma >= 0.0 && sigma.is_finite()) {
                return Err(bad("the median must be at least 1 and sigma at least 0"));
            }
            Dist::LogNormal { median, sigma }
        } else if let Some((lo, hi)) = s.split_once('-') {
            let (lo, hi) = (int(lo)?, int(hi)?);
            if lo == 0 || lo > hi {
                return Err(bad("need 1 <= LO <= HI"));
            }
            Dist::Uniform(lo, hi)
        } else {
            let n = int(s)?;
            if n == 0 {
                return Err(bad("must be at least 1"));
            }
            Dist::Fixed(n)
        };
        Ok(dist)
    }
}

impl Dist {
    /// One draw, clamped to `1..=max`.
    pub fn sample(&self, rng: &mut impl Rng, max: u64) -> u64 {
        let n = match *self {
            Dist::Fixed(n) => n,
            Dist::Uniform(lo, hi) => rng.random_range(lo..=hi),
            Dist::LogNormal { median, sigma } => {
                // Parameters were checked when parsed: mu is finite, sigma finite and >= 0.
                let d = LogNormal::new(median.ln(), sigma).expect("valid log-normal parameters");
                d.sample(rng).round() as u64
            }
        };
        n.clamp(1, max)
    }
}

/// When calls arrive.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrival {
    /// Evenly spaced: `constant`.
    Constant,
    /// A Poisson process (exponential gaps): `poisson`.
    Poisson,
    /// `size` calls at once, groups evenly spaced so the mean rate is the requested one: `bursts:SIZE`.
    Bursts(u64),
}

impl FromStr for Arrival {
    type Err = GenError;

    fn from_str(s: &str) -> Result<Self, GenError> {
        match s {
            "constant" => Ok(Arrival::Constant),
            "poisson" => Ok(Arrival::Poisson),
            _ => match s.strip_prefix("bursts:").map(str::parse::<u64>) {
                Some(Ok(size)) if size >= 1 => Ok(Arrival::Bursts(size)),
                _ => Err(GenError(format!(
                    "arrival `{s}`: expected constant, poisson or bursts:SIZE (SIZE >= 1)"
                ))),
            },
        }
    }
}

/// Request options with a weight: `WEIGHT:key=value,key=value` with the trace's field names (`head`, `raw`,
/// `layer`, `pooling`, `dimensions`, `normalize`, `encoding`, `truncation`, `priority`); `WEIGHT:` alone is the
/// server's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightedOptions {
    /// The relative weight.
    pub weight: f64,
    /// The options (its `inputs` are empty).
    pub options: Request,
}

impl FromStr for WeightedOptions {
    type Err = GenError;

    fn from_str(s: &str) -> Result<Self, GenError> {
        let bad = |why: String| GenError(format!("options `{s}`: {why}"));
        let (weight, pairs) = s.split_once(':').unwrap_or(("1", s));
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| bad("the weight is not a number".into()))?;
        if !(weight > 0.0 && weight.is_finite()) {
            return Err(bad("the weight must be positive".into()));
        }
        // The options are read as a trace request, so names, values and errors are the trace's own.
        let mut object = serde_json::Map::new();
        object.insert("inputs".into(), serde_json::Value::Array(Vec::new()));
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` is not key=value")))?;
            let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.into()));
            object.insert(key.trim().into(), value);
        }
        let options: Request =
            serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| bad(e.to_string()))?;
        Ok(Self { weight, options })
    }
}

/// What text a generated input holds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Content {
    /// Random token ids below `vocab`.
    TokenIds {
        /// The vocabulary size.
        vocab: u32,
    },
    /// Random words from a fixed list (the tokenizer decides the token count; about one token per word).
    Text,
}

/// Everything a synthetic trace is made from.
#[derive(Clone, Debug)]
pub struct GenSpec {
    /// The number of calls.
    pub calls: usize,
    /// Mean calls per second.
    pub rps: f64,
    /// The arrival process.
    pub arrival: Arrival,
    /// Inputs per call.
    pub items: Dist,
    /// Tokens (or words) per input.
    pub tokens: Dist,
    /// Token ids or text.
    pub content: Content,
    /// The fraction of calls sent on EmbedStream, in [0, 1].
    pub stream_fraction: f64,
    /// The options mix; empty means the server's defaults for every call.
    pub options: Vec<WeightedOptions>,
    /// The random seed.
    pub seed: u64,
}

/// Short English words for text inputs.
const WORDS: &[&str] = &[
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "search", "rank", "item", "user", "query", "model",
    "vector", "fast", "slow", "red", "green", "blue", "music", "video", "news", "sport", "price", "shoe", "book",
    "film", "travel", "city", "river", "light",
];

/// Generates the trace `spec` describes.
pub fn generate(spec: &GenSpec) -> Result<Vec<Record>, GenError> {
    if !(spec.rps > 0.0 && spec.rps.is_finite()) {
        return Err(GenError(format!("--rps {}: must be a positive number", spec.rps)));
    }
    if !(0.0..=1.0).contains(&spec.stream_fraction) {
        return Err(GenError(format!(
            "--stream-fraction {}: must be in [0, 1]",
            spec.stream_fraction
        )));
    }
    if spec.calls > marc_trace::MAX_RECORDS {
        return Err(GenError(format!(
            "--calls {}: at most {}",
            spec.calls,
            marc_trace::MAX_RECORDS
        )));
    }
    if let Content::TokenIds { vocab: 0 } = spec.content {
        return Err(GenError("--vocab must be at least 1".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let total_weight: f64 = spec.options.iter().map(|o| o.weight).sum();
    let gap = 1.0 / spec.rps;
    let mut t = 0.0_f64;
    let mut tokens_so_far = 0_u64;
    let mut records = Vec::with_capacity(spec.calls);
    for n in 0..spec.calls {
        if n > 0 {
            t += match spec.arrival {
                Arrival::Constant => gap,
                Arrival::Poisson => {
                    let draw: f64 = Exp1.sample(&mut rng);
                    gap * draw
                }
                Arrival::Bursts(size) => {
                    if (n as u64).is_multiple_of(size) {
                        gap * size as f64
                    } else {
                        0.0
                    }
                }
            };
        }
        let mut request = pick_options(&spec.options, total_weight, &mut rng);
        let items = spec.items.sample(&mut rng, MAX_ITEMS);
        for i in 0..items {
            let len = spec.tokens.sample(&mut rng, MAX_TOKENS);
            tokens_so_far += len;
            if tokens_so_far > MAX_TRACE_TOKENS {
                return Err(GenError(format!(
                    "the trace would hold more than {MAX_TRACE_TOKENS} tokens; ask for fewer calls, items or tokens"
                )));
            }
            request
                .inputs
                .push(input(format!("{n}.{i}"), len, spec.content, &mut rng));
        }
        let rpc = if rng.random_bool(spec.stream_fraction) {
            Rpc::EmbedStream
        } else {
            Rpc::Embed
        };
        records.push(Record {
            offset_ns: (t * 1e9).round() as u64,
            rpc,
            request,
            metadata: Default::default(),
        });
    }
    Ok(records)
}

fn pick_options(options: &[WeightedOptions], total_weight: f64, rng: &mut impl Rng) -> Request {
    if options.is_empty() {
        return Request::default();
    }
    let mut x = rng.random_range(0.0..total_weight);
    for o in options {
        if x < o.weight {
            return o.options.clone();
        }
        x -= o.weight;
    }
    options[options.len() - 1].options.clone()
}

fn input(id: String, len: u64, content: Content, rng: &mut impl Rng) -> Input {
    match content {
        Content::TokenIds { vocab } => Input {
            id,
            text: None,
            token_ids: Some((0..len).map(|_| rng.random_range(0..vocab)).collect()),
        },
        Content::Text => {
            let words: Vec<&str> = (0..len).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
            Input {
                id,
                text: Some(words.join(" ")),
                token_ids: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GenSpec {
        GenSpec {
            calls: 20_000,
            rps: 100.0,
            arrival: Arrival::Constant,
            items: Dist::Fixed(1),
            tokens: Dist::Fixed(4),
            content: Content::TokenIds { vocab: 4096 },
            stream_fraction: 0.0,
            options: Vec::new(),
            seed: 7,
        }
    }

    fn gaps_s(records: &[Record]) -> Vec<f64> {
        records
            .windows(2)
            .map(|w| (w[1].offset_ns - w[0].offset_ns) as f64 / 1e9)
            .collect()
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    #[test]
    fn distributions_parse_and_reject_nonsense() {
        assert_eq!("8".parse::<Dist>().unwrap(), Dist::Fixed(8));
        assert_eq!("2-9".parse::<Dist>().unwrap(), Dist::Uniform(2, 9));
        assert_eq!(
            "lognormal:64,0.5".parse::<Dist>().unwrap(),
            Dist::LogNormal {
                median: 64.0,
                sigma: 0.5
            }
        );
        for bad in [
            "0",
            "9-2",
            "x",
            "lognormal:64",
            "lognormal:0,1",
            "lognormal:5,-1",
            "0-3",
        ] {
            assert!(bad.parse::<Dist>().is_err(), "{bad}");
        }
        assert_eq!("bursts:5".parse::<Arrival>().unwrap(), Arrival::Bursts(5));
        assert!("bursts:0".parse::<Arrival>().is_err());
    }

    #[test]
    fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
        let a = generate(&GenSpec { calls: 50, ..spec() }).unwrap();
        let b = generate(&GenSpec { calls: 50, ..spec() }).unwrap();
        let c = generate(&GenSpec {
            calls: 50,
            seed: 8,
            ..spec()
        })
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn constant_arrivals_are_evenly_spaced_at_the_rate() {
        let gaps = gaps_s(&generate(&GenSpec { calls: 100, ..spec() }).unwrap());
        assert!(gaps.iter().all(|g| (g - 0.01).abs() < 1e-9), "{gaps:?}");
    }

    #[test]
    fn poisson_gaps_are_exponential_with_the_rate() {
        let gaps = gaps_s(
            &generate(&GenSpec {
                arrival: Arrival::Poisson,
                ..spec()
            })
            .unwrap(),
        );
        // Exponential with mean 10 ms: mean and standard deviation both 10 ms, P(gap > mean) = 1/e.
        // 20,000 draws: the sample mean's standard error is 0.7%, so 5% bounds are > 7 sigma.
        let m = mean(&gaps);
        let sd = (gaps.iter().map(|g| (g - m).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        let above = gaps.iter().filter(|g| **g > 0.01).count() as f64 / gaps.len() as f64;
        assert!((m - 0.01).abs() < 0.0005, "mean {m}");
        assert!((sd - 0.01).abs() < 0.0005, "sd {sd}");
        assert!((above - (-1.0_f64).exp()).abs() < 0.02, "P(gap > mean) {above}");
    }

    #[test]
    fn bursts_come_in_groups_at_the_mean_rate() {
        let records = generate(&GenSpec {
            calls: 12,
            arrival: Arrival::Bursts(4),
            ..spec()
        })
        .unwrap();
        let offsets: Vec<u64> = records.iter().map(|r| r.offset_ns / 1_000_000).collect();
        assert_eq!(offsets, [0, 0, 0, 0, 40, 40, 40, 40, 80, 80, 80, 80]);
    }

    #[test]
    fn items_and_tokens_follow_their_distributions() {
        let records = generate(&GenSpec {
            calls: 5_000,
            items: Dist::Uniform(1, 4),
            tokens: "lognormal:32,0.5".parse().unwrap(),
            ..spec()
        })
        .unwrap();
        let mut per_items = [0usize; 5];
        let mut lens = Vec::new();
        for r in &records {
            per_items[r.request.inputs.len()] += 1;
            for i in &r.request.inputs {
                let ids = i.token_ids.as_ref().unwrap();
                assert!(ids.iter().all(|&id| id < 4096));
                lens.push(ids.len() as f64);
            }
        }
        // Uniform 1..=4: each about 1250 of 5000 (standard deviation ~31).
        assert_eq!(per_items[0], 0);
        assert!(
            per_items[1..].iter().all(|&n| (1100..1400).contains(&n)),
            "{per_items:?}"
        );
        // Log-normal: the median of the draws is the median asked for, and the mean of ln is ln(32).
        lens.sort_by(f64::total_cmp);
        let median = lens[lens.len() / 2];
        let mean_ln = mean(&lens.iter().map(|l| l.ln()).collect::<Vec<_>>());
        assert!((30.0..=34.0).contains(&median), "median {median}");
        assert!((mean_ln - 32f64.ln()).abs() < 0.03, "mean ln {mean_ln}");
    }

    #[test]
    fn options_and_rpcs_follow_the_mix() {
        let records = generate(&GenSpec {
            calls: 4_000,
            stream_fraction: 0.25,
            options: vec![
                "3:".parse().unwrap(),
                "1:encoding=int8,dimensions=16,priority=high".parse().unwrap(),
            ],
            ..spec()
        })
        .unwrap();
        let int8: Vec<_> = records.iter().filter(|r| r.request.encoding.is_some()).collect();
        assert!(
            int8.iter()
                .all(|r| r.request.dimensions == Some(16) && r.request.priority == Some(marc_trace::Priority::High))
        );
        let streams = records.iter().filter(|r| r.rpc == Rpc::EmbedStream).count();
        // 1000 and 1000 expected; standard deviations ~27.
        assert!((880..1120).contains(&int8.len()), "{}", int8.len());
        assert!((880..1120).contains(&streams), "{streams}");
    }

    #[test]
    fn bad_options_name_the_field() {
        let err = "1:encodng=int8".parse::<WeightedOptions>().unwrap_err().to_string();
        assert!(err.contains("unknown field `encodng`"), "{err}");
        let err = "1:encoding=int9".parse::<WeightedOptions>().unwrap_err().to_string();
        assert!(err.contains("unknown variant `int9`"), "{err}");
        assert!("0:".parse::<WeightedOptions>().is_err());
    }

    #[test]
    fn text_inputs_have_the_requested_word_count() {
        let records = generate(&GenSpec {
            calls: 3,
            content: Content::Text,
            tokens: Dist::Fixed(5),
            ..spec()
        })
        .unwrap();
        for r in records {
            assert_eq!(r.request.inputs[0].text.as_ref().unwrap().split(' ').count(), 5);
        }
    }
}
