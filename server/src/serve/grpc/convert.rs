//! Proto <-> domain: request validation into an [`OutputSpec`], truncation, output encodings, `Info`.

use marc_models::Pooling;
use marc_proto::marc::v1 as pb;

use crate::output::{Field, HeadChoice, ItemOutput, OutputRequest, OutputSpec, plan};
use crate::serve::ModelFacts;
use crate::serve::batching::queue::Lane;
use crate::serve::error::ServeError;

/// Longest accepted `EmbedRequest.request_id`, in bytes.
pub(crate) const MAX_REQUEST_ID_BYTES: usize = 256;

/// One input's content, before tokenization.
pub(crate) enum Content {
    /// Text for the tokenizer.
    Text(String),
    /// Token ids, used as given.
    Ids(Vec<u32>),
}

/// A validated request.
pub(crate) struct Parsed {
    /// `Input.id` per input.
    pub(crate) ids: Vec<String>,
    /// Content per input.
    pub(crate) contents: Vec<Content>,
    /// What to compute.
    pub(crate) spec: OutputSpec,
    /// The output encoding (never unspecified).
    pub(crate) encoding: pb::Encoding,
    /// What to do with inputs over the item limit.
    pub(crate) truncation: pb::Truncation,
    /// Scheduling lane.
    pub(crate) lane: Lane,
    /// The resolved head's name, empty with `raw`.
    pub(crate) head: String,
}

fn invalid(message: String) -> ServeError {
    ServeError::InvalidArgument(message)
}

fn to_proto_pooling(p: Pooling) -> pb::Pooling {
    match p {
        Pooling::None => pb::Pooling::None,
        Pooling::Mean => pb::Pooling::Mean,
        Pooling::Last => pb::Pooling::Last,
    }
}

/// Checks every rule of `EmbedRequest` that does not need the tokenizer; the messages name the field and limit.
pub(crate) fn parse(req: pb::EmbedRequest, facts: &ModelFacts) -> Result<Parsed, ServeError> {
    if req.inputs.is_empty() {
        return Err(invalid("inputs: at least one input is required".into()));
    }
    if req.inputs.len() > facts.max_items_per_request {
        return Err(invalid(format!(
            "inputs: {} inputs, more than max_items_per_request ({})",
            req.inputs.len(),
            facts.max_items_per_request
        )));
    }
    if req.request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(invalid(format!(
            "request_id: {} bytes, more than the limit of {MAX_REQUEST_ID_BYTES}",
            req.request_id.len()
        )));
    }
    let pooling =
        pb::Pooling::try_from(req.pooling).map_err(|_| invalid(format!("pooling: unknown value {}", req.pooling)))?;
    let encoding = match pb::Encoding::try_from(req.encoding) {
        Ok(pb::Encoding::Unspecified) => pb::Encoding::Float32,
        Ok(e) => e,
        Err(_) => return Err(invalid(format!("encoding: unknown value {}", req.encoding))),
    };
    let truncation = match pb::Truncation::try_from(req.truncation) {
        Ok(pb::Truncation::Unspecified) => pb::Truncation::Reject,
        Ok(t) => t,
        Err(_) => return Err(invalid(format!("truncation: unknown value {}", req.truncation))),
    };
    let lane = match pb::Priority::try_from(req.priority) {
        Ok(pb::Priority::Low) => Lane::Low,
        Ok(pb::Priority::High) => Lane::High,
        Ok(_) => Lane::Normal,
        Err(_) => return Err(invalid(format!("priority: unknown value {}", req.priority))),
    };
    if req.raw && !req.head.is_empty() {
        return Err(invalid(format!(
            "head: must be empty when raw is set (got `{}`)",
            req.head
        )));
    }
    let request = OutputRequest {
        head: match (req.raw, req.head.as_str()) {
            (true, _) => HeadChoice::Raw,
            (false, "") => HeadChoice::Default,
            (false, name) => HeadChoice::Named(name),
        },
        layer: req.layer.map(|l| l as usize),
        pooling: match pooling {
            pb::Pooling::Unspecified => None,
            pb::Pooling::None => Some(Pooling::None),
            pb::Pooling::Mean => Some(Pooling::Mean),
            pb::Pooling::Last => Some(Pooling::Last),
        },
        dimensions: req.dimensions.map(|d| d as usize),
        normalize: req.normalize,
    };
    let spec = plan(&request, &facts.served()).map_err(|e| {
        let field = match e.field {
            Field::Head => "head",
            Field::Layer => "layer",
            Field::Pooling => "pooling",
            Field::Dimensions => "dimensions",
        };
        invalid(format!("{field}: {e}"))
    })?;
    let head = spec.head_name(&facts.heads).unwrap_or_default().to_owned();
    let mut ids = Vec::with_capacity(req.inputs.len());
    let mut contents = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        let content = match input.content {
            None => return Err(invalid(format!("inputs[{i}]: set text or token_ids"))),
            Some(pb::input::Content::Text(t)) if t.is_empty() => {
                return Err(invalid(format!("inputs[{i}].text: must not be empty")));
            }
            Some(pb::input::Content::Text(t)) => {
                if !facts.has_tokenizer {
                    return Err(invalid(format!(
                        "inputs[{i}].text: the model has no tokenizer.json; send token_ids"
                    )));
                }
                Content::Text(t)
            }
            Some(pb::input::Content::TokenIds(t)) => {
                if t.ids.is_empty() {
                    return Err(invalid(format!("inputs[{i}].token_ids: must not be empty")));
                }
                if let Some(&id) = t.ids.iter().find(|&&id| id as usize >= facts.vocab_size) {
                    return Err(invalid(format!(
                        "inputs[{i}].token_ids: token id {id} is out of range: vocab_size is {}",
                        facts.vocab_size
                    )));
                }
                Content::Ids(t.ids)
            }
        };
        ids.push(input.id);
        contents.push(content);
    }
    Ok(Parsed {
        ids,
        contents,
        spec,
        encoding,
        truncation,
        lane,
        head,
    })
}

/// Applies the item limit to input `index`: `lead` and `trail` special tokens at either end are kept.
/// Returns the ids and whether they were cut.
pub(crate) fn truncate(
    index: usize,
    ids: Vec<u32>,
    lead: usize,
    trail: usize,
    max: usize,
    truncation: pb::Truncation,
) -> Result<(Vec<u32>, bool), ServeError> {
    if ids.len() <= max {
        return Ok((ids, false));
    }
    let keep_end = match truncation {
        pb::Truncation::KeepStart => false,
        pb::Truncation::KeepEnd => true,
        _ => {
            return Err(invalid(format!(
                "inputs[{index}]: {} tokens, more than max_item_tokens ({max}); set truncation to keep the start or the end",
                ids.len()
            )));
        }
    };
    let n = ids.len();
    if lead + trail >= max {
        let cut = if keep_end {
            ids[n - max..].to_vec()
        } else {
            ids[..max].to_vec()
        };
        return Ok((cut, true));
    }
    let body = &ids[lead..n - trail];
    let keep = max - lead - trail;
    let body = if keep_end {
        &body[body.len() - keep..]
    } else {
        &body[..keep]
    };
    let mut out = Vec::with_capacity(max);
    out.extend_from_slice(&ids[..lead]);
    out.extend_from_slice(body);
    out.extend_from_slice(&ids[n - trail..]);
    Ok((out, true))
}

/// Encodes one item's output as an `Embedding`.
pub(crate) fn embedding(
    id: String,
    out: ItemOutput,
    per_token: bool,
    encoding: pb::Encoding,
    truncated: bool,
) -> pb::Embedding {
    let shape = if per_token {
        vec![out.rows as u32, out.width as u32]
    } else {
        vec![out.width as u32]
    };
    let mut e = pb::Embedding {
        id,
        shape,
        encoding: encoding.into(),
        tokens: out.tokens as u32,
        truncated,
        ..Default::default()
    };
    let width = out.width.max(1);
    match encoding {
        pb::Encoding::Float16 => {
            e.data = out
                .values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect();
        }
        pb::Encoding::Int8 => {
            let (data, scales) = int8(&out.values, width);
            e.data = data;
            e.scales = scales;
        }
        pb::Encoding::Binary => e.data = binary(&out.values, width),
        _ => e.values = out.values,
    }
    e
}

/// Symmetric int8 per vector: s = max|v| / 127 (0 for a zero vector), q = round(v / s).
pub(crate) fn int8(values: &[f32], width: usize) -> (Vec<u8>, Vec<f32>) {
    let mut data = Vec::with_capacity(values.len());
    let mut scales = Vec::new();
    for row in values.chunks_exact(width) {
        let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        scales.push(scale);
        data.extend(row.iter().map(|&v| {
            let q = if scale > 0.0 {
                (v / scale).round().clamp(-127.0, 127.0)
            } else {
                0.0
            };
            (q as i8) as u8
        }));
    }
    (data, scales)
}

/// Sign bits per vector, LSB first, each vector starting on a byte boundary.
pub(crate) fn binary(values: &[f32], width: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(values.len().div_ceil(8));
    for row in values.chunks_exact(width) {
        let mut bytes = vec![0u8; width.div_ceil(8)];
        for (i, &v) in row.iter().enumerate() {
            if v > 0.0 {
                bytes[i / 8] |= 1 << (i % 8);
            }
        }
        data.extend(bytes);
    }
    data
}

/// The `Info` answer.
pub(crate) fn info(facts: &ModelFacts) -> pb::InfoResponse {
    pb::InfoResponse {
        model: Some(pb::ModelInfo {
            name: facts.name.clone(),
            architecture: facts.architecture.clone(),
            num_layers: facts.num_layers as u32,
            hidden_size: facts.hidden_size as u32,
            vocab_size: facts.vocab_size as u32,
            weight_dtype: facts.weight_dtype.clone(),
        }),
        heads: facts
            .heads
            .iter()
            .enumerate()
            .map(|(i, h)| pb::HeadInfo {
                name: h.name.clone(),
                source_layer: h.source_layer as u32,
                pooling: to_proto_pooling(h.pooling).into(),
                output_dim: h.output_dim as u32,
                normalize: h.normalize,
                is_default: facts.default_head == Some(i),
            })
            .collect(),
        limits: Some(pb::Limits {
            max_batch_tokens: facts.max_batch_tokens as u32,
            max_item_tokens: facts.max_item_tokens as u32,
            max_items_per_request: facts.max_items_per_request as u32,
            max_request_bytes: facts.max_request_bytes as u64,
            max_layer: facts.max_raw_layer as u32,
        }),
        quantization: facts.quantization.clone(),
        backend: facts.backend.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Parses a `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`).
pub(crate) fn grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_layout_is_lsb_first_per_vector() {
        let v = [
            1.0, -1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        ];
        // Two vectors of 9: [1,0,0,1,0,0,0,0,1] and [1,0,0,0,0,0,0,0,0].
        assert_eq!(binary(&v, 9), [0b0000_1001, 0b1, 0b1, 0]);
    }

    #[test]
    fn int8_scales_per_vector() {
        let (q, s) = int8(&[1.0, -0.5, 0.0, 0.0], 2);
        assert_eq!(s, [1.0 / 127.0, 0.0]);
        assert_eq!(q, [127u8, (-64i8) as u8, 0, 0]);
    }

    #[test]
    fn truncation_keeps_special_tokens() {
        let ids = vec![100, 1, 2, 3, 4, 5, 200];
        let start = truncate(0, ids.clone(), 1, 1, 4, pb::Truncation::KeepStart).unwrap();
        assert_eq!(start, (vec![100, 1, 2, 200], true));
        let end = truncate(0, ids.clone(), 1, 1, 4, pb::Truncation::KeepEnd).unwrap();
        assert_eq!(end, (vec![100, 4, 5, 200], true));
        assert!(truncate(0, ids.clone(), 1, 1, 4, pb::Truncation::Reject).is_err());
        assert!(!truncate(0, ids, 0, 0, 7, pb::Truncation::Reject).unwrap().1);
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(grpc_timeout("100m"), Some(std::time::Duration::from_millis(100)));
        assert_eq!(grpc_timeout("5S"), Some(std::time::Duration::from_secs(5)));
        assert_eq!(grpc_timeout("x"), None);
        assert_eq!(grpc_timeout(""), None);
    }
}
