//! `EmbedStream` load through a proxy that cuts each connection 400 ms after it opened (a restarting
//! server, a load balancer's connection limit): the tester opens a new stream when one ends, instead of
//! failing every later streamed call.

mod common;

use std::time::Duration;

use common::{CuttingProxy, Server, json, loadtest, serial};

#[test]
fn a_stream_the_server_ends_is_reopened() {
    let _serial = serial();
    let server = Server::start(|_| {});
    let proxy = CuttingProxy::start(&server.runtime, server.addr, Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("reopen.json");
    let target = proxy.addr.to_string();
    let out = loadtest(&[
        "rate",
        "--rps",
        "50",
        "--duration",
        "2s",
        "--connections",
        "1",
        "--stream-fraction",
        "1",
        "--target",
        &target,
        "--tokens",
        "8",
        "--quiet",
        "--json",
        report.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calls = &json(&report)["calls"];
    let (sent, ok) = (calls["sent"].as_u64().unwrap(), calls["ok"].as_u64().unwrap());
    // The connection is cut about five times; only calls caught in flight by a cut may fail (a few per
    // cut at 50 calls/s), where a tester that never reopens fails every call after the first cut (~80%).
    assert!(sent >= 90, "{calls}");
    assert!(ok * 10 >= sent * 9, "{calls}");
    server.stop();
}
