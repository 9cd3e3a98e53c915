//! Wire round trips of the generated messages.

use marc_proto::marc::v1::{
    EmbedRequest, EmbedResponse, Embedding, Encoding, Input, Pooling, Priority, RequestError, TokenIds, Truncation,
    Usage, input::Content,
};
use prost::Message;

/// A request with every field set to a non-default value, both `Input.content` variants included.
fn full_request() -> EmbedRequest {
    EmbedRequest {
        inputs: vec![
            Input {
                id: "a".into(),
                content: Some(Content::Text("héllo wörld".into())),
            },
            Input {
                id: "b".into(),
                content: Some(Content::TokenIds(TokenIds {
                    ids: vec![0, 1, 151_643, u32::MAX],
                })),
            },
        ],
        head: "matryoshka-256".into(),
        raw: true,
        layer: Some(0),
        pooling: Pooling::Last.into(),
        dimensions: Some(64),
        normalize: Some(false),
        encoding: Encoding::Binary.into(),
        truncation: Truncation::KeepEnd.into(),
        priority: Priority::High.into(),
        request_id: "req-42".into(),
    }
}

#[test]
fn embed_request_round_trips_with_every_field_set() {
    let req = full_request();
    let bytes = req.encode_to_vec();
    let back = EmbedRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, req);
    assert_eq!(back.pooling(), Pooling::Last);
    assert_eq!(back.encoding(), Encoding::Binary);
    assert_eq!(back.truncation(), Truncation::KeepEnd);
    assert_eq!(back.priority(), Priority::High);
    // Explicit presence: `Some(0)` and `Some(false)` survive the trip and differ from unset.
    assert_eq!(back.layer, Some(0));
    assert_eq!(back.normalize, Some(false));
}

#[test]
fn defaults_are_unspecified_and_unset() {
    let req = EmbedRequest::decode(&[][..]).unwrap();
    assert_eq!(req, EmbedRequest::default());
    assert!(req.inputs.is_empty() && req.head.is_empty() && !req.raw && req.request_id.is_empty());
    assert_eq!((req.layer, req.dimensions, req.normalize), (None, None, None));
    assert_eq!(req.pooling(), Pooling::Unspecified);
    assert_eq!(req.encoding(), Encoding::Unspecified);
    assert_eq!(req.truncation(), Truncation::Unspecified);
    assert_eq!(req.priority(), Priority::Unspecified);
    assert_eq!(Pooling::Unspecified.as_str_name(), "POOLING_UNSPECIFIED");
    assert_eq!(Encoding::from_str_name("ENCODING_INT8"), Some(Encoding::Int8));
}

#[test]
fn unknown_enum_values_are_kept_and_read_as_unspecified() {
    // A newer client may send an enum value this build does not know: proto3 keeps the number.
    let req = EmbedRequest {
        encoding: 99,
        ..Default::default()
    };
    let back = EmbedRequest::decode(req.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.encoding, 99);
    assert_eq!(back.encoding(), Encoding::Unspecified);
    assert!(Encoding::try_from(99).is_err());
}

#[test]
fn embed_response_round_trips() {
    let resp = EmbedResponse {
        embeddings: vec![
            Embedding {
                id: "a".into(),
                shape: vec![3],
                values: vec![0.5, -1.0, 0.25],
                encoding: Encoding::Float32.into(),
                tokens: 7,
                ..Default::default()
            },
            Embedding {
                id: "b".into(),
                shape: vec![2, 3],
                data: vec![127, 0x81, 0, 1, 2, 3],
                scales: vec![0.01, 0.02],
                encoding: Encoding::Int8.into(),
                tokens: 2,
                truncated: true,
                ..Default::default()
            },
        ],
        usage: Some(Usage {
            tokens: 9,
            queue_us: 12,
            compute_us: 3_400,
            total_us: 3_500,
        }),
        request_id: "req-42".into(),
        error: Some(RequestError {
            code: 3,
            message: "input 1 is empty".into(),
        }),
        head: "default".into(),
    };
    let back = EmbedResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back, resp);
}
