//! The marc traffic trace: one JSON object per line, one line per call.
//!
//! `marc serve --capture FILE` writes it and `marc-loadtest` reads it (`replay`, and as the request source of
//! `rate` and `closed`) and writes it (`gen`). The format lives in this small crate, apart from both, so that the
//! server depends only on serde and the generated messages, not on the load tester's histograms and plots.
//!
//! A line:
//!
//! ```json
//! {"offset_ns":1500000,"rpc":"Embed","request":{"inputs":[{"id":"a","text":"hello"}],"encoding":"int8"}}
//! ```
//!
//! - `offset_ns` (required): nanoseconds from the start of the trace to when the call was received (capture) or
//!   is to be sent (replay). Lines need not be in order; readers sort them by offset.
//! - `rpc` (required): `"Embed"` (a unary call) or `"EmbedStream"` (one request sent on a stream).
//! - `request` (required): the `marc.v1.EmbedRequest`, field for field, with the names of the `.proto`:
//!   `inputs` (each `{"id", "text"}` or `{"id", "token_ids": [..]}`; an input with neither is kept as sent),
//!   `head`, `raw`, `layer`, `pooling` (`none`, `mean`, `last`), `dimensions`, `normalize`, `encoding`
//!   (`float32`, `float16`, `int8`, `binary`), `truncation` (`reject`, `keep_start`, `keep_end`), `priority`
//!   (`low`, `normal`, `high`), `request_id`. A field at its proto default is left out; unknown fields are an
//!   error, so a typo never silently changes the traffic.
//! - `metadata` (optional): gRPC request headers to send with the call, name to value (ASCII).
//!
//! Reading is bounded: a line is at most [`MAX_LINE_BYTES`], a trace at most [`MAX_RECORDS`] calls, and every
//! error names the line.

use std::collections::BTreeMap;
use std::io::{BufRead, Read as _};

use marc_proto::marc::v1 as pb;
use serde::{Deserialize, Serialize};

/// The longest line a reader accepts, in bytes: room for a request at the server's 16 MiB message limit,
/// whose token ids take up to about three times as many bytes in JSON as in protobuf.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The most calls a reader accepts from one trace.
pub const MAX_RECORDS: usize = 10_000_000;

/// Why a trace could not be read. Line numbers start at 1.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Reading failed.
    #[error("line {line}: {source}")]
    Io {
        /// The line being read.
        line: usize,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line}: longer than {max} bytes")]
    LineTooLong {
        /// The line.
        line: usize,
        /// The limit.
        max: usize,
    },
    /// A line is not a valid record.
    #[error("line {line}: {message}")]
    Invalid {
        /// The line.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The trace has more than [`MAX_RECORDS`] calls.
    #[error("more than {max} calls")]
    TooManyRecords {
        /// The limit.
        max: usize,
    },
}

/// Which RPC a call used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Rpc {
    /// `marc.v1.Embedder/Embed`, unary.
    Embed,
    /// One request sent on a `marc.v1.Embedder/EmbedStream` call.
    EmbedStream,
}

impl Rpc {
    /// The method name, as in the `.proto`.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Embed => "Embed",
            Rpc::EmbedStream => "EmbedStream",
        }
    }
}

/// One call of a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Nanoseconds from the start of the trace.
    pub offset_ns: u64,
    /// The RPC.
    pub rpc: Rpc,
    /// The request.
    pub request: Request,
    /// gRPC request headers, name to value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl Record {
    /// The record as one line of JSON, newline included.
    pub fn to_line(&self) -> String {
        // Serializing plain structs of strings and numbers into a String cannot fail.
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// `marc.v1.EmbedRequest` in the trace's JSON form; see the crate documentation for the field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The inputs.
    pub inputs: Vec<Input>,
    /// The head; empty for the default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub head: String,
    /// Raw hidden states instead of a head.
    #[serde(default, skip_serializing_if = "is_false")]
    pub raw: bool,
    /// The raw layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer: Option<u32>,
    /// The pooling; `None` is unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Matryoshka dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    /// L2 normalisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<bool>,
    /// The output encoding; `None` is unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Truncation of long inputs; `None` is unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<Truncation>,
    /// Scheduling priority; `None` is unspecified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The client's request id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One input: `text` or `token_ids` (at most one; neither is an input the server will refuse, kept as sent).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The client's id for the input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Text to tokenize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Token ids, used as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
}

/// `marc.v1.Pooling`, without its unspecified value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// POOLING_NONE.
    None,
    /// POOLING_MEAN.
    Mean,
    /// POOLING_LAST.
    Last,
}

/// `marc.v1.Encoding`, without its unspecified value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// ENCODING_FLOAT32.
    Float32,
    /// ENCODING_FLOAT16.
    Float16,
    /// ENCODING_INT8.
    Int8,
    /// ENCODING_BINARY.
    Binary,
}

/// `marc.v1.Truncation`, without its unspecified value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// TRUNCATION_REJECT.
    Reject,
    /// TRUNCATION_KEEP_START.
    KeepStart,
    /// TRUNCATION_KEEP_END.
    KeepEnd,
}

/// `marc.v1.Priority`, without its unspecified value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// PRIORITY_LOW.
    Low,
    /// PRIORITY_NORMAL.
    Normal,
    /// PRIORITY_HIGH.
    High,
}

/// The mapping between a trace enum (`None` = unspecified) and its generated proto enum, one table per enum.
macro_rules! proto_enum {
    ($trace:ident, $proto:ident, $($variant:ident),+) => {
        impl $trace {
            fn from_proto(value: i32) -> Option<Self> {
                match pb::$proto::try_from(value) {
                    $(Ok(pb::$proto::$variant) => Some($trace::$variant),)+
                    // Unspecified, or a value from a newer .proto: the server treats both as unspecified.
                    _ => None,
                }
            }

            fn to_proto(value: Option<Self>) -> i32 {
                match value {
                    $(Some($trace::$variant) => pb::$proto::$variant as i32,)+
                    None => 0,
                }
            }
        }
    };
}

proto_enum!(Pooling, Pooling, None, Mean, Last);
proto_enum!(Encoding, Encoding, Float32, Float16, Int8, Binary);
proto_enum!(Truncation, Truncation, Reject, KeepStart, KeepEnd);
proto_enum!(Priority, Priority, Low, Normal, High);

impl From<&pb::EmbedRequest> for Request {
    fn from(r: &pb::EmbedRequest) -> Self {
        Self {
            inputs: r
                .inputs
                .iter()
                .map(|i| {
                    let (text, token_ids) = match &i.content {
                        Some(pb::input::Content::Text(t)) => (Some(t.clone()), None),
                        Some(pb::input::Content::TokenIds(t)) => (None, Some(t.ids.clone())),
                        None => (None, None),
                    };
                    Input {
                        id: i.id.clone(),
                        text,
                        token_ids,
                    }
                })
                .collect(),
            head: r.head.clone(),
            raw: r.raw,
            layer: r.layer,
            pooling: Pooling::from_proto(r.pooling),
            dimensions: r.dimensions,
            normalize: r.normalize,
            encoding: Encoding::from_proto(r.encoding),
            truncation: Truncation::from_proto(r.truncation),
            priority: Priority::from_proto(r.priority),
            request_id: r.request_id.clone(),
        }
    }
}

impl Request {
    /// The request as the generated proto message.
    pub fn to_proto(&self) -> pb::EmbedRequest {
        pb::EmbedRequest {
            inputs: self
                .inputs
                .iter()
                .map(|i| pb::Input {
                    id: i.id.clone(),
                    content: match (&i.text, &i.token_ids) {
                        (Some(t), _) => Some(pb::input::Content::Text(t.clone())),
                        (None, Some(ids)) => Some(pb::input::Content::TokenIds(pb::TokenIds { ids: ids.clone() })),
                        (None, None) => None,
                    },
                })
                .collect(),
            head: self.head.clone(),
            raw: self.raw,
            layer: self.layer,
            pooling: Pooling::to_proto(self.pooling),
            dimensions: self.dimensions,
            normalize: self.normalize,
            encoding: Encoding::to_proto(self.encoding),
            truncation: Truncation::to_proto(self.truncation),
            priority: Priority::to_proto(self.priority),
            request_id: self.request_id.clone(),
        }
    }
}

/// Parses one line (without its newline) as a record; `line` is its number, for errors.
pub fn parse_line(text: &str, line: usize) -> Result<Record, TraceError> {
    let record: Record = serde_json::from_str(text).map_err(|e| TraceError::Invalid {
        line,
        message: e.to_string(),
    })?;
    for (i, input) in record.request.inputs.iter().enumerate() {
        if input.text.is_some() && input.token_ids.is_some() {
            return Err(TraceError::Invalid {
                line,
                message: format!("request.inputs[{i}]: both `text` and `token_ids` are set; at most one may be"),
            });
        }
    }
    for (name, value) in &record.metadata {
        if !value.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t') {
            return Err(TraceError::Invalid {
                line,
                message: format!("metadata `{name}`: the value must be printable ASCII"),
            });
        }
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid || name.ends_with("-bin") {
            return Err(TraceError::Invalid {
                line,
                message: format!("metadata: `{name}` is not an ASCII gRPC header name (lowercase, digits, `-_.`)"),
            });
        }
    }
    Ok(record)
}

/// Reads a whole trace, skipping blank lines, and sorts it by offset (stable: calls at the same offset keep
/// their order).
pub fn read(mut reader: impl BufRead) -> Result<Vec<Record>, TraceError> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    for line in 1.. {
        buf.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|source| TraceError::Io { line, source })?;
        if n == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            return Err(TraceError::LineTooLong {
                line,
                max: MAX_LINE_BYTES,
            });
        }
        let text = std::str::from_utf8(&buf).map_err(|e| TraceError::Invalid {
            line,
            message: format!("not UTF-8: {e}"),
        })?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        if records.len() == MAX_RECORDS {
            return Err(TraceError::TooManyRecords { max: MAX_RECORDS });
        }
        records.push(parse_line(text, line)?);
    }
    records.sort_by_key(|r| r.offset_ns);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full_request() -> pb::EmbedRequest {
        pb::EmbedRequest {
            inputs: vec![
                pb::Input {
                    id: "a".into(),
                    content: Some(pb::input::Content::Text("hello".into())),
                },
                pb::Input {
                    id: "b".into(),
                    content: Some(pb::input::Content::TokenIds(pb::TokenIds { ids: vec![1, 2, 3] })),
                },
                pb::Input {
                    id: "c".into(),
                    content: None,
                },
            ],
            head: "default".into(),
            raw: false,
            layer: Some(2),
            pooling: pb::Pooling::Last as i32,
            dimensions: Some(16),
            normalize: Some(false),
            encoding: pb::Encoding::Int8 as i32,
            truncation: pb::Truncation::KeepEnd as i32,
            priority: pb::Priority::High as i32,
            request_id: "r1".into(),
        }
    }

    #[test]
    fn every_proto_field_survives_a_round_trip_through_a_line() {
        let record = Record {
            offset_ns: 42,
            rpc: Rpc::EmbedStream,
            request: Request::from(&full_request()),
            metadata: [("grpc-timeout".to_owned(), "5S".to_owned())].into(),
        };
        let line = record.to_line();
        let back = read(line.as_bytes()).unwrap();
        assert_eq!(back, vec![record]);
        assert_eq!(back[0].request.to_proto(), full_request());
    }

    #[test]
    fn defaults_are_left_out_and_read_back_as_unspecified() {
        let request = pb::EmbedRequest {
            inputs: vec![pb::Input {
                id: String::new(),
                content: Some(pb::input::Content::Text("x".into())),
            }],
            ..Default::default()
        };
        let line = Record {
            offset_ns: 0,
            rpc: Rpc::Embed,
            request: Request::from(&request),
            metadata: BTreeMap::new(),
        }
        .to_line();
        assert_eq!(
            line,
            "{\"offset_ns\":0,\"rpc\":\"Embed\",\"request\":{\"inputs\":[{\"text\":\"x\"}]}}\n"
        );
        assert_eq!(read(line.as_bytes()).unwrap()[0].request.to_proto(), request);
    }

    #[test]
    fn records_are_sorted_by_offset_and_blank_lines_skipped() {
        let trace = "{\"offset_ns\":20,\"rpc\":\"Embed\",\"request\":{\"inputs\":[],\"request_id\":\"late\"}}\n\n\
                     {\"offset_ns\":10,\"rpc\":\"Embed\",\"request\":{\"inputs\":[],\"request_id\":\"early\"}}\n";
        let ids: Vec<_> = read(trace.as_bytes())
            .unwrap()
            .into_iter()
            .map(|r| r.request.request_id)
            .collect();
        assert_eq!(ids, ["early", "late"]);
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let ok = "{\"offset_ns\":0,\"rpc\":\"Embed\",\"request\":{\"inputs\":[]}}";
        let cases = [
            (format!("{ok}\n{{\"offset_ns\":1}}"), "line 2: missing field `rpc`"),
            (
                format!("{ok}\n{ok}\n{}", ok.replace("\"inputs\"", "\"input\"")),
                "line 3: unknown field `input`",
            ),
            (ok.replace("Embed", "Info"), "line 1: unknown variant `Info`"),
            (
                ok.replace("[]", "[{\"text\":\"a\",\"token_ids\":[1]}]"),
                "line 1: request.inputs[0]: both `text` and `token_ids`",
            ),
            (
                ok.replace("}}", "},\"metadata\":{\"X Y\":\"1\"}}"),
                "line 1: metadata: `X Y`",
            ),
            (
                ok.replace("}}", "},\"metadata\":{\"x-a\":\"caf\\u00e9\"}}"),
                "line 1: metadata `x-a`: the value must be printable ASCII",
            ),
            ("not json".to_owned(), "line 1: expected"),
        ];
        for (trace, want) in cases {
            let err = read(trace.as_bytes()).unwrap_err().to_string();
            assert!(err.starts_with(want), "{trace:?}: got {err:?}, want {want:?}");
        }
    }
}
