//! A cancelled call's queued work is never computed: checked through the server's own token counter, so this
//! test has a process (and a metrics registry, which is process-wide) of its own.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_is_never_computed() {
    // Keep the engine busy, queue a request behind it, then give up on that call.
    let (server, mut client, busy) = busy_server().await;
    let mut quitter = server.client().await;
    let quit = tokio::spawn(async move {
        let inputs = (0..10).map(|i| ids("q", seq(1000 + i, 61))).collect();
        quitter.embed(request(inputs)).await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    quit.abort();
    assert!(bounded("abort", quit).await.unwrap_err().is_cancelled());
    assert_eq!(bounded("busy", busy).await.unwrap().unwrap().embeddings.len(), 192);
    embed(&mut client, request(vec![ids("after", seq(3, 8))]))
        .await
        .unwrap();
    let text = scrape(server.metrics).await;
    // Every token computed belongs to the warm-up, the busy and the last request: none of the cancelled 610.
    assert_eq!(sample(&text, "marc_tokens_total", &[]), 8.0 + 192.0 * 64.0 + 8.0);
    assert_eq!(sample(&text, "marc_rejected_total", &["reason=\"cancelled\""]), 1.0);
    assert_eq!(sample(&text, "marc_requests_total", &["code=\"CANCELLED\""]), 1.0);
    server.stop().await;
}
