//! Phases 1 and 2, the baselines: raw AMQP through the delay topology, and smtp-sink's own
//! acceptance rate.

use super::*;

/// Publishes `count` payloads with up to [`CONFIRM_WINDOW`] confirms in flight; fails on any nack.
pub(crate) async fn publish_pipelined(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    payloads: impl Iterator<Item = Vec<u8>>,
) -> anyhow::Result<()> {
    let mut pending = VecDeque::new();
    for payload in payloads {
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= CONFIRM_WINDOW {
            let confirmation = pending.pop_front().expect("non-empty").await?;
            if !confirmation.is_ack() {
                bail!("broker nacked a publish");
            }
        }
    }
    for confirm in pending {
        if !confirm.await?.is_ack() {
            bail!("broker nacked a publish");
        }
    }
    Ok(())
}

/// Phase 1: raw AMQP through the delay topology, no application work.
pub(crate) async fn baseline(
    conn: &Connection,
    topology: &Topology,
    count: u64,
) -> anyhow::Result<f64> {
    let publisher = Publisher::open(conn).await?;
    topology.declare(publisher.channel()).await?;
    let consumer_channel = conn.create_channel().await?;
    consumer_channel
        .basic_qos(1000, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            topology.due_queue().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let started = Instant::now();
    let consume = tokio::spawn(async move {
        let mut seen = 0u64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while seen < count {
            let next = tokio::time::timeout(Duration::from_secs(30), consumer.next()).await;
            let Ok(Some(Ok(delivery))) = next else {
                bail!("baseline consumer stalled after {seen} of {count}");
            };
            delivery.ack(BasicAckOptions::default()).await?;
            seen += 1;
            if Instant::now() > deadline {
                bail!("baseline did not finish in time");
            }
        }
        Ok::<_, anyhow::Error>(Instant::now())
    });
    let payload = serde_json::to_vec(&json!({"message_id": 1, "notification_ids": [1]}))?;
    publish_pipelined(
        publisher.channel(),
        &topology.delay_exchange(),
        &topology.delay_routing_key(),
        (0..count).map(|_| payload.clone()),
    )
    .await?;
    let finished = consume.await??;
    let elapsed =
        finished.duration_since(started).as_secs_f64() - topology.seen_window.as_secs_f64();
    topology.delete(publisher.channel()).await?;
    Ok(count as f64 / elapsed)
}

/// Phase 2: how fast smtp-sink accepts mail from smtp-source, Postfix's load client.
pub(crate) fn smtp_sink_rate(port: u16, count: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new(system::program("smtp-source"))
        .args([
            "-s",
            "16",
            "-m",
            &count.to_string(),
            "-l",
            "2048",
            "-f",
            "bench@127.0.0.1",
        ])
        .args(["-t", "sink@127.0.0.1"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .context("smtp-source (Debian package postfix)")?;
    if !status.success() {
        bail!("smtp-source failed: {status}");
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
