//! Coordinated omission, shown against the real server behind a proxy that stalls for one second: with one call
//! allowed in flight, the calls meant for the stall cannot be sent; measured from their intended send times
//! (corrected) they waited, measured from when they were finally sent (uncorrected) they did not.

mod common;

use std::time::Duration;

use common::{Server, StallingProxy, json, loadtest, serial};

#[test]
fn a_stall_shows_in_the_corrected_p99_and_not_in_the_uncorrected_one() {
    let _serial = serial();
    let server = Server::start(|_| {});
    let proxy = StallingProxy::start(&server.runtime, server.addr);
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("stall.json");
    let stall = proxy.stall.clone();
    // The stall: from 1 s to 2 s into a 3 s run (the tester starts within a few ms of the spawn).
    server.runtime.spawn(async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stall.send_replace(true);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stall.send_replace(false);
    });
    let target = proxy.addr.to_string();
    let out = loadtest(&[
        "rate",
        "--rps",
        "50",
        "--duration",
        "3s",
        "--max-in-flight",
        "1",
        "--connections",
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
    let r = json(&report);
    let corrected = r["latency_ms"]["corrected"]["p99"].as_f64().unwrap();
    let uncorrected = r["latency_ms"]["uncorrected"]["p99"].as_f64().unwrap();
    // About 50 of the 150 calls were meant for the stall; the latest of them waited nearly the whole second.
    assert!(corrected > 500.0, "corrected p99 {corrected} ms");
    assert!(
        corrected > 2.0 * uncorrected,
        "corrected p99 {corrected} ms, uncorrected {uncorrected} ms"
    );
    assert!(r["sends"]["late"].as_u64().unwrap() >= 25, "{}", r["sends"]);
    assert_eq!(r["calls"]["errors"], 0);
    server.stop();
}
