//! The embedded descriptor set describes the `marc.v1` API.

use marc_proto::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::FileDescriptorSet;

fn file() -> prost_types::FileDescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    assert_eq!(set.file.len(), 1, "embedder.proto imports nothing");
    set.file.into_iter().next().unwrap()
}

#[test]
fn names_the_embedder_service_and_its_three_methods() {
    let file = file();
    assert_eq!(file.name(), "marc/v1/embedder.proto");
    assert_eq!(file.package(), "marc.v1");
    assert_eq!(file.syntax(), "proto3");
    let [service] = file.service.as_slice() else {
        panic!("one service expected: {:?}", file.service)
    };
    assert_eq!(format!("{}.{}", file.package(), service.name()), "marc.v1.Embedder");

    let methods: Vec<_> = service
        .method
        .iter()
        .map(|m| {
            (
                m.name(),
                m.input_type(),
                m.output_type(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect();
    assert_eq!(
        methods,
        [
            ("Embed", ".marc.v1.EmbedRequest", ".marc.v1.EmbedResponse", false, false),
            (
                "EmbedStream",
                ".marc.v1.EmbedRequest",
                ".marc.v1.EmbedResponse",
                true,
                true
            ),
            ("Info", ".marc.v1.InfoRequest", ".marc.v1.InfoResponse", false, false),
        ]
    );
}

#[test]
fn keeps_comments_for_reflection_clients() {
    let info = file().source_code_info.expect("source info kept");
    let documented = info.location.iter().filter(|l| l.leading_comments.is_some()).count();
    assert!(documented > 50, "only {documented} documented elements");
}

#[test]
fn enums_follow_proto3_style() {
    for e in &file().enum_type {
        let zero = &e.value[0];
        assert_eq!(zero.number(), 0);
        let prefix = e.name().chars().fold(String::new(), |mut s, c| {
            if c.is_uppercase() && !s.is_empty() {
                s.push('_');
            }
            s.push(c.to_ascii_uppercase());
            s
        });
        assert_eq!(zero.name(), format!("{prefix}_UNSPECIFIED"));
        assert!(
            e.value.iter().all(|v| v.name().starts_with(&format!("{prefix}_"))),
            "{e:?}"
        );
    }
}
