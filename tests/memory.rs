//! Memory that must not grow with the work a process has done (a role runs for months; the
//! bench's soak checks its RSS slope over an hour). Alone in its own test binary, so the
//! process's RSS is this test's.

mod support;

use lapin::options::{ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tidings_common::amqp::{self, Publisher};

/// Resident memory of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// A wake-up call (`publish_transient`, whose confirm nobody waits for) leaves nothing behind
/// in the client: 200,000 of them grow the process by less than 8 MiB. A publish on a confirm
/// channel whose confirm is dropped unresolved is kept by the client until the channel closes,
/// which here is about 30 MiB and on a role's long-lived channel grew without end.
#[tokio::test(flavor = "multi_thread")]
async fn transient_publishes_leave_nothing_behind() {
    let conn = amqp::connect(support::AMQP_URL, "memory-test")
        .await
        .expect("broker");
    let publisher = Publisher::open(&conn).await.expect("publisher");
    let exchange = format!("memory_test_{}", std::process::id());
    let setup = conn.create_channel().await.expect("channel");
    setup
        .exchange_declare(
            exchange.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    // Nothing is bound: the broker drops every message, as it does a wake-up call nobody is
    // listening for.
    let publish = |n: usize| {
        let (publisher, exchange) = (publisher.clone(), exchange.clone());
        async move {
            for i in 0..n {
                publisher
                    .publish_transient(&exchange, "poke", &json!({ "person": i }))
                    .await
                    .expect("transient publish");
            }
        }
    };
    // Buffers and the runtime's threads reach their working size first.
    publish(20_000).await;
    let before = rss_kib();
    publish(200_000).await;
    let grown = rss_kib().saturating_sub(before);
    setup
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
    let _ = conn.close(200, "bye".into()).await;
    assert!(
        grown < 8 * 1024,
        "200,000 transient publishes grew the process by {grown} KiB"
    );
}
