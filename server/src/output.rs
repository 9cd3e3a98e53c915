//! What a caller asks for, and how it is computed from hidden states: the one home of the rules that
//! `marc embed` and `marc serve` share (head or raw states, layer, pooling, Matryoshka truncation,
//! normalisation), so the server's bytes equal `marc embed`'s by construction, not by parallel code.
//!
//! [`plan`] turns a request into an [`OutputSpec`] or a [`PlanError`] naming the offending [`Field`]; each
//! surface renders the field its own way (`--head` on the command line, `head` in gRPC). [`compute`] turns
//! a batch's hidden states into one [`ItemOutput`] per item.

use std::ops::Range;

use marc_models::{CompressionHead, ForwardError, Pooling, default_head, pooling};

/// Which head a request asked for.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HeadChoice<'a> {
    /// The model's default head; an error when it has none.
    Default,
    /// The model's default head, or raw states when it has none (`marc embed`'s friendly default).
    DefaultOrRaw,
    /// The head of this name.
    Named(&'a str),
    /// No head: raw hidden states.
    Raw,
}

/// A request's output options, before validation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutputRequest<'a> {
    /// Head or raw states.
    pub(crate) head: HeadChoice<'a>,
    /// Layer of raw states (transformers' numbering); `None` = the deepest served.
    pub(crate) layer: Option<usize>,
    /// Pooling; `None` = the head's, or `raw_pooling` for raw states.
    pub(crate) pooling: Option<Pooling>,
    /// Keep the first `dimensions` components (Matryoshka).
    pub(crate) dimensions: Option<usize>,
    /// L2-normalise; `None` = the head's setting (raw states: no).
    pub(crate) normalize: Option<bool>,
}

/// What the model can serve.
#[derive(Clone, Copy)]
pub(crate) struct Served<'a> {
    /// The compression heads.
    pub(crate) heads: &'a [CompressionHead],
    /// The model's hidden size.
    pub(crate) hidden_size: usize,
    /// The model's number of blocks (hidden states 0..=num_layers).
    pub(crate) num_layers: usize,
    /// The deepest hidden state raw requests may ask for (at most `num_layers`).
    pub(crate) max_raw_layer: usize,
    /// Pooling of raw states when the request names none.
    pub(crate) raw_pooling: Pooling,
}

/// Where an output vector comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The head at this index of the served heads.
    Head(usize),
    /// Raw hidden states at this layer (transformers' numbering).
    Raw(usize),
}

/// What to compute for every item of a request (validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutputSpec {
    /// Head or raw layer.
    pub(crate) source: Source,
    /// Pooling (never [`Pooling::None`] with a head).
    pub(crate) pooling: Pooling,
    /// Keep the first `dimensions` components (Matryoshka); `None` keeps all.
    pub(crate) dimensions: Option<usize>,
    /// L2-normalise each output vector after truncation.
    pub(crate) normalize: bool,
}

impl OutputSpec {
    /// The hidden state the spec reads.
    pub(crate) fn layer(&self, heads: &[CompressionHead]) -> usize {
        match self.source {
            Source::Head(i) => heads[i].source_layer,
            Source::Raw(layer) => layer,
        }
    }

    /// The head's name, if a head is used.
    pub(crate) fn head_name<'h>(&self, heads: &'h [CompressionHead]) -> Option<&'h str> {
        match self.source {
            Source::Head(i) => Some(&heads[i].name),
            Source::Raw(_) => None,
        }
    }
}

/// The request option a [`PlanError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// The head name (or raw).
    Head,
    /// The raw layer.
    Layer,
    /// The pooling.
    Pooling,
    /// The Matryoshka dimensions.
    Dimensions,
}

/// A request's options do not fit the model or each other.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct PlanError {
    /// The option at fault.
    pub(crate) field: Field,
    /// What is wrong, with the limit or the choices (no field name: the caller prefixes its own).
    pub(crate) message: String,
}

fn fail<T>(field: Field, message: String) -> Result<T, PlanError> {
    Err(PlanError { field, message })
}

/// `mean`, `last` or `none`.
pub(crate) fn pooling_name(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::None => "none",
        Pooling::Mean => "mean",
        Pooling::Last => "last",
    }
}

fn head_names(heads: &[CompressionHead]) -> String {
    if heads.is_empty() {
        return "there are none".into();
    }
    heads.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Validates `req` against what is served.
pub(crate) fn plan(req: &OutputRequest<'_>, served: &Served<'_>) -> Result<OutputSpec, PlanError> {
    let heads = served.heads;
    let index = match req.head {
        HeadChoice::Raw => None,
        HeadChoice::Named(name) => match heads.iter().position(|h| h.name == name) {
            Some(i) => Some(i),
            None => {
                return fail(
                    Field::Head,
                    format!("unknown head `{name}`; available heads: {}", head_names(heads)),
                );
            }
        },
        HeadChoice::Default | HeadChoice::DefaultOrRaw => {
            let default = default_head(heads).and_then(|d| heads.iter().position(|h| h.name == d.name));
            if default.is_none() && matches!(req.head, HeadChoice::Default) {
                return fail(
                    Field::Head,
                    format!(
                        "no default head (heads: {}); name one, or ask for raw states",
                        head_names(heads)
                    ),
                );
            }
            default
        }
    };
    let (source, pooling, width, head_normalize) = match index {
        Some(i) => {
            let head = &heads[i];
            if let Some(layer) = req.layer {
                return fail(
                    Field::Layer,
                    format!(
                        "{layer} cannot be chosen with a head: head `{}` reads layer {}; ask for raw states to choose a layer",
                        head.name, head.source_layer
                    ),
                );
            }
            match req.pooling {
                Some(Pooling::None) => {
                    return fail(
                        Field::Pooling,
                        format!(
                            "none cannot be used with head `{}`, which pools with {}; ask for raw states to get token states",
                            head.name,
                            pooling_name(head.pooling)
                        ),
                    );
                }
                Some(p) if p != head.pooling => {
                    return fail(
                        Field::Pooling,
                        format!(
                            "head `{}` was fitted with {} pooling, not {}",
                            head.name,
                            pooling_name(head.pooling),
                            pooling_name(p)
                        ),
                    );
                }
                _ => {}
            }
            (Source::Head(i), head.pooling, head.output_dim, head.normalize)
        }
        None => {
            let layer = req.layer.unwrap_or(served.max_raw_layer);
            if layer > served.max_raw_layer {
                let why = if served.max_raw_layer < served.num_layers {
                    format!(
                        "this server serves hidden states 0..={} of the model's 0..={} (its --max-layer)",
                        served.max_raw_layer, served.num_layers
                    )
                } else {
                    format!("the model has hidden states 0..={} (0 = embeddings)", served.num_layers)
                };
                return fail(Field::Layer, format!("{layer} is out of range: {why}"));
            }
            (
                Source::Raw(layer),
                req.pooling.unwrap_or(served.raw_pooling),
                served.hidden_size,
                false,
            )
        }
    };
    if let Some(d) = req.dimensions
        && (d == 0 || d > width)
    {
        return fail(
            Field::Dimensions,
            format!("{d} is out of range: it must be between 1 and the output width {width}"),
        );
    }
    Ok(OutputSpec {
        source,
        pooling,
        dimensions: req.dimensions,
        normalize: req.normalize.unwrap_or(head_normalize),
    })
}

/// One item's output: `rows` vectors of `width` values (rows = 1 when pooled).
#[derive(Clone, Debug, Default)]
pub(crate) struct ItemOutput {
    /// Vectors, row-major.
    pub(crate) values: Vec<f32>,
    /// Number of vectors: tokens with no pooling, else 1.
    pub(crate) rows: usize,
    /// Values per vector.
    pub(crate) width: usize,
    /// Tokens the model processed for the item.
    pub(crate) tokens: usize,
}

/// Pools each token range of `states` (`[tokens, hidden]`) into `[ranges, hidden]`.
pub(crate) fn pool_ranges(states: &[f32], ranges: &[Range<usize>], hidden: usize, pooling: Pooling) -> Vec<f32> {
    let mut pooled = Vec::with_capacity(ranges.len() * hidden);
    for r in ranges {
        let rows = &states[r.start * hidden..r.end * hidden];
        pooled.extend(pooling::pool(rows, hidden, pooling).unwrap_or_else(|| vec![0.0; hidden]));
    }
    pooled
}

/// The outputs of the items whose token rows of `states` (the spec's layer, `[tokens, hidden]`) are
/// `ranges`: pooled, through the head, truncated, normalised. Each item's bytes depend only on its own rows.
pub(crate) fn compute(
    states: &[f32],
    ranges: &[Range<usize>],
    hidden: usize,
    spec: &OutputSpec,
    heads: &[CompressionHead],
) -> Result<Vec<ItemOutput>, ForwardError> {
    let mut outputs: Vec<ItemOutput> = if spec.pooling == Pooling::None {
        ranges
            .iter()
            .map(|r| ItemOutput {
                values: states[r.start * hidden..r.end * hidden].to_vec(),
                rows: r.len(),
                width: hidden,
                tokens: r.len(),
            })
            .collect()
    } else {
        let pooled = pool_ranges(states, ranges, hidden, spec.pooling);
        let (vectors, width) = match spec.source {
            Source::Head(i) => (heads[i].project(&pooled, ranges.len())?, heads[i].output_dim),
            Source::Raw(_) => (pooled, hidden),
        };
        ranges
            .iter()
            .zip(vectors.chunks_exact(width))
            .map(|(r, v)| ItemOutput {
                values: v.to_vec(),
                rows: 1,
                width,
                tokens: r.len(),
            })
            .collect()
    };
    for out in &mut outputs {
        finish(out, spec.dimensions, spec.normalize);
    }
    Ok(outputs)
}

/// Matryoshka truncation to `dimensions`, then L2 normalisation of each row when `normalize` (the same
/// arithmetic as a head's own normalisation).
fn finish(out: &mut ItemOutput, dimensions: Option<usize>, normalize: bool) {
    let width = out.width;
    if let Some(d) = dimensions.filter(|&d| d < width) {
        out.values = out
            .values
            .chunks_exact(width)
            .flat_map(|row| row[..d].iter().copied())
            .collect();
        out.width = d;
    }
    if normalize {
        pooling::l2_normalize_rows(&mut out.values, out.width);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(heads: &[CompressionHead]) -> Served<'_> {
        Served {
            heads,
            hidden_size: 8,
            num_layers: 6,
            max_raw_layer: 6,
            raw_pooling: Pooling::Mean,
        }
    }

    fn raw(layer: Option<usize>) -> OutputRequest<'static> {
        OutputRequest {
            head: HeadChoice::Raw,
            layer,
            pooling: None,
            dimensions: None,
            normalize: None,
        }
    }

    #[test]
    fn truncates_then_renormalises() {
        let mut out = ItemOutput {
            values: vec![3.0, 4.0, 12.0, 0.0, 0.0, 5.0],
            rows: 2,
            width: 3,
            tokens: 2,
        };
        finish(&mut out, Some(2), true);
        assert_eq!(out.width, 2);
        assert_eq!(out.values, [0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn raw_defaults_to_the_deepest_served_layer_and_the_surface_pooling() {
        let spec = plan(&raw(None), &served(&[])).unwrap();
        assert_eq!(spec.source, Source::Raw(6));
        assert_eq!(spec.pooling, Pooling::Mean);
        assert!(!spec.normalize);
    }

    #[test]
    fn raw_layers_beyond_the_served_depth_name_the_limit() {
        let mut s = served(&[]);
        let e = plan(&raw(Some(7)), &s).unwrap_err();
        assert_eq!(e.field, Field::Layer);
        assert!(e.message.contains("0..=6"), "{e}");
        s.max_raw_layer = 3;
        let e = plan(&raw(Some(4)), &s).unwrap_err();
        assert!(e.message.contains("0..=3") && e.message.contains("--max-layer"), "{e}");
        assert_eq!(plan(&raw(None), &s).unwrap().source, Source::Raw(3));
    }

    #[test]
    fn head_choices_without_heads() {
        let s = served(&[]);
        let mut req = raw(None);
        req.head = HeadChoice::Default;
        assert_eq!(plan(&req, &s).unwrap_err().field, Field::Head);
        req.head = HeadChoice::DefaultOrRaw;
        assert_eq!(plan(&req, &s).unwrap().source, Source::Raw(6));
        req.head = HeadChoice::Named("x");
        let e = plan(&req, &s).unwrap_err();
        assert!(e.message.contains("unknown head `x`"), "{e}");
    }

    #[test]
    fn dimensions_must_fit_the_width() {
        let mut req = raw(None);
        req.dimensions = Some(9);
        assert_eq!(plan(&req, &served(&[])).unwrap_err().field, Field::Dimensions);
        req.dimensions = Some(0);
        assert_eq!(plan(&req, &served(&[])).unwrap_err().field, Field::Dimensions);
        req.dimensions = Some(8);
        assert_eq!(plan(&req, &served(&[])).unwrap().dimensions, Some(8));
    }
}
