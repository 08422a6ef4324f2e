//! The outbound spine end to end on real services: post → seen-window hold on RabbitMQ →
//! seen check → handlebars → SMTP (smtp-sink). Rules: SPEC D2–D5, D8; DESIGN idempotency.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;
use support::{Env, REPLY_DOMAIN, SECRET};
use tidings_common::mail::ReplyToken;

const SETTLE: Duration = Duration::from_secs(30);

fn recipient(deliveries: &serde_json::Value, person: i64) -> &serde_json::Value {
    deliveries["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(person))
        .unwrap_or_else(|| panic!("person {person} has no notification in {deliveries}"))
}

fn recipient_ids(deliveries: &serde_json::Value) -> Vec<i64> {
    deliveries["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recipient_id"].as_i64().unwrap())
        .collect()
}

/// D2, D3, D8: an unseen recipient gets exactly one email with the right headers and both
/// parts; the sender gets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn d2_unseen_recipient_gets_exactly_one_email() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer on fire").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, bob).await;

    let message = env
        .post(conv, ann, "The printer is <b>smoking</b> again", false)
        .await;
    let d = env.settled(message, SETTLE).await;

    // D3: the author is not a recipient at all.
    assert_eq!(recipient_ids(&d), vec![bob]);
    let bob_row = recipient(&d, bob);
    assert_eq!(bob_row["email_state"], "sent");
    assert_eq!(bob_row["emailed_to"], "bob@example.com");
    assert!(bob_row["smtp_reply"].as_str().unwrap().starts_with("250"));

    assert!(
        env.mails_to("ann@example.com").is_empty(),
        "the sender got mail"
    );
    let mails = env.mails_to("bob@example.com");
    assert_eq!(mails.len(), 1, "bob should get exactly one email");
    let mail = &mails[0];
    let parsed = mail.parsed();
    assert_eq!(
        parsed.subject(),
        Some(format!("[ticket #{item}] Printer on fire").as_str())
    );
    let to = parsed.to().unwrap().first().unwrap();
    assert_eq!(to.address(), Some("bob@example.com"));
    assert_eq!(to.name(), Some("Bob"));
    let text = parsed.body_text(0).unwrap();
    assert!(
        text.contains("The printer is <b>smoking</b> again"),
        "{text}"
    );
    let html = parsed.body_html(0).unwrap();
    assert!(
        html.contains("The printer is &lt;b&gt;smoking&lt;/b&gt; again"),
        "{html}"
    );

    let message_id = bob_row["email_message_id"].as_str().unwrap();
    assert_eq!(mail.header("Message-ID").as_deref(), Some(message_id));
    assert!(message_id.ends_with(&format!("@{REPLY_DOMAIN}>")));
    assert_eq!(
        mail.header("Auto-Submitted").as_deref(),
        Some("auto-generated")
    );
    assert_eq!(
        mail.header("X-Auto-Response-Suppress").as_deref(),
        Some("All")
    );
    let root = format!("<tidings.c{conv}@{REPLY_DOMAIN}>");
    assert_eq!(mail.header("In-Reply-To").as_deref(), Some(root.as_str()));

    let reply_to = parsed
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    let token = reply_to
        .strip_prefix("reply+")
        .and_then(|r| r.strip_suffix(&format!("@{REPLY_DOMAIN}")))
        .unwrap_or_else(|| panic!("unexpected Reply-To {reply_to}"));
    let token = ReplyToken::decode(token, SECRET.as_bytes()).unwrap();
    assert_eq!((token.conversation_id, token.person_id), (conv, bob));

    // Threading: Bob's next email refers back to the first.
    let second = env.post(conv, ann, "Now it is out.", false).await;
    env.settled(second, SETTLE).await;
    let mails = env.mails_to("bob@example.com");
    assert_eq!(mails.len(), 2);
    let next = mails
        .iter()
        .find(|m| m.header("Message-ID").as_deref() != Some(message_id))
        .unwrap();
    assert_eq!(next.header("In-Reply-To").as_deref(), Some(message_id));
    assert_eq!(
        next.header("References"),
        Some(format!("{root} {message_id}"))
    );
}

/// A claim (pending → sending) changes no value any index of `notifications` reads, so
/// PostgreSQL writes it as a heap-only (HOT) update: no entry in any of the table's indexes.
/// An index that named the state, or the claim time, would make every claim write one entry
/// per index; this counts the heap-only updates to see that it does not.
#[tokio::test(flavor = "multi_thread")]
async fn a_claim_writes_no_index_entry() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, item, conv) = env.ticket("Heap-only claims").await;
    let mut followers = Vec::new();
    for name in ["Bob", "Cat", "Dan", "Eve"] {
        let person = env.user(name).await;
        env.follow_item(item, person).await;
        followers.push(person);
    }
    let message = env
        .post(conv, ann, "Four emails, four claims.", false)
        .await;
    let d = env.settled(message, SETTLE).await;
    for person in &followers {
        assert_eq!(recipient(&d, *person)["email_state"], "sent", "{d}");
    }
    // Each backend reports its statistics within a few seconds of going idle.
    support::wait_for(
        env.root(),
        "four heap-only updates of notifications",
        async || {
            let hot: i64 = env
                .sql(
                    "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'notifications'",
                )
                .parse()
                .unwrap();
            hot >= 4
        },
    )
    .await;
    // The record (→ sent) is the one update that does touch the indexes: the notification
    // leaves the partial index of open ones.
    assert_eq!(
        env.sql("SELECT count(*) FROM notifications WHERE is_open"),
        "0"
    );
}

/// D4: marking the message seen inside the window suppresses the email, and the log says `seen`;
/// so does posting later in the conversation.
#[tokio::test(flavor = "multi_thread")]
async fn d4_seen_inside_the_window_sends_nothing() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let cat = env.user("Cat").await;
    let (_, item, conv) = env.ticket("Seen").await;
    for p in [ann, bob, cat] {
        env.follow_item(item, p).await;
    }
    let message = env.post(conv, ann, "Read me", false).await;
    env.ok(
        "PUT",
        &format!("/conversations/{conv}/seen"),
        Some(json!({"person_id": bob, "message_id": message})),
    )
    .await;
    // Cat answers in the app, which counts as having seen Ann's message.
    let answer = env.post(conv, cat, "On it", false).await;
    let d = env.settled(message, SETTLE).await;
    env.settled(answer, SETTLE).await;

    for person in [bob, cat] {
        let row = recipient(&d, person);
        assert_eq!(row["email_state"], "skipped", "{row}");
        assert_eq!(row["email_reason"], "seen", "{row}");
    }
    assert!(!recipient(&d, bob)["seen_at"].is_null());
    assert!(env.mails_to("cat@example.com").is_empty());
    let log = env
        .ok("GET", &format!("/email-log?message_id={message}"), None)
        .await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(
        log.iter()
            .all(|row| row["status"] == "skipped" && row["reason"] == "seen")
    );
    // Bob has not seen Cat's answer: it is unread in his inbox and emailed to him.
    let inbox = env.ok("GET", &format!("/people/{bob}/inbox"), None).await;
    assert_eq!(inbox["conversations"][0]["unread"], 1, "{inbox}");
    let to_bob = env.mails_to("bob@example.com");
    assert_eq!(to_bob.len(), 1, "only Cat's answer should reach Bob");
    let text = to_bob[0].parsed().body_text(0).unwrap().to_string();
    assert!(
        text.contains("On it") && !text.contains("Read me"),
        "{text}"
    );
}

/// D5: a customer following the conversation gets nothing for an internal message and one
/// email for an external one.
#[tokio::test(flavor = "multi_thread")]
async fn d5_customer_gets_external_messages_only() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let agent = env.user("Agent").await;
    let lead = env.user("Lead").await;
    let customer = env.customer("Cleo").await;
    let (_, item, conv) = env.ticket("Customer ticket").await;
    env.follow_item(item, lead).await;
    env.add_participant(conv, customer).await;

    let internal = env.post(conv, agent, "Internal: she is a VIP", true).await;
    let external = env
        .post(conv, agent, "Hello Cleo, we are on it", false)
        .await;
    let di = env.settled(internal, SETTLE).await;
    let de = env.settled(external, SETTLE).await;

    assert_eq!(
        recipient_ids(&di),
        vec![lead],
        "customer notified of an internal message"
    );
    let mut ext = recipient_ids(&de);
    ext.sort();
    assert_eq!(ext, vec![lead, customer]);
    let to_customer = env.mails_to("cleo@example.com");
    assert_eq!(to_customer.len(), 1);
    let body = to_customer[0].parsed().body_text(0).unwrap().to_string();
    assert!(body.contains("Hello Cleo"), "{body}");
    assert!(!String::from_utf8_lossy(&to_customer[0].raw).contains("VIP"));
    // The lead saw neither. If the second notification existed when the first came due, both
    // arrive in one coalesced email; otherwise (a slow dispatch) in one email each.
    let to_lead = env.mails_to("lead@example.com");
    let coalesced = recipient(&de, lead)["email_reason"] == "coalesced";
    assert_eq!(to_lead.len(), if coalesced { 1 } else { 2 }, "{de}");
    let text: String = to_lead
        .iter()
        .map(|m| m.parsed().body_text(0).unwrap().to_string())
        .collect();
    assert!(
        text.contains("VIP") && text.contains("Hello Cleo"),
        "{text}"
    );
    // A customer cannot post an internal message at all.
    let (status, err) = env
        .call(
            "POST",
            &format!("/conversations/{conv}/messages"),
            Some(json!({"author_id": customer, "body": "x", "internal": true})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["field"], "internal");
}

/// The same due batch delivered several times, to two mailer processes at once, sends each
/// email once (conditional state updates).
#[tokio::test(flavor = "multi_thread")]
async fn duplicate_due_batches_send_each_email_once() {
    let env = Env::new("2s");
    let _front = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    let author = env.user("Author").await;
    let mut readers = Vec::new();
    for name in ["R1", "R2", "R3", "R4"] {
        readers.push(env.user(name).await);
    }
    let (_, item, conv) = env.ticket("Duplicates").await;
    for &r in &readers {
        env.follow_item(item, r).await;
    }
    let message = env.post(conv, author, "Once only", false).await;
    let d = env.dispatched(message).await;
    let ids: Vec<i64> = d["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["notification_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);

    let topology = env.topology();
    let (conn, channel) = env.channel().await;
    let payload =
        serde_json::to_vec(&json!({"message_id": message, "notification_ids": ids})).unwrap();
    for _ in 0..3 {
        channel
            .basic_publish(
                topology.due_exchange().into(),
                "due".into(),
                Default::default(),
                &payload,
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _m1 = env.spawn(&["mailer"]);
    let _m2 = env.spawn(&["mailer", "mailer"]);
    env.settled(message, SETTLE).await;
    // Let the original batch come due too and be processed.
    tokio::time::sleep(env.window + Duration::from_secs(2)).await;
    for name in ["r1", "r2", "r3", "r4"] {
        assert_eq!(
            env.mails_to(&format!("{name}@example.com")).len(),
            1,
            "{name}"
        );
    }
    let log = env
        .ok("GET", &format!("/email-log?message_id={message}"), None)
        .await;
    assert_eq!(log.as_array().unwrap().len(), 4, "{log}");
    let _ = conn.close(200, "bye".into()).await;
}

/// A mailer killed (SIGKILL) after the batch entered the delay and before it was sent: nothing
/// is lost, and after the restart everything is sent once.
#[tokio::test(flavor = "multi_thread")]
async fn mailer_killed_before_sending_sends_once_after_restart() {
    let env = Env::new("2s");
    let _front = env.spawn(&["api", "dispatch"]);
    let mut mailer = env.spawn(&["mailer"]);
    env.wait_for_api().await;
    let author = env.user("Author").await;
    let reader = env.user("Reader").await;
    let (_, item, conv) = env.ticket("Crash").await;
    env.follow_item(item, reader).await;
    let message = env.post(conv, author, "Survive the crash", false).await;
    env.dispatched(message).await;
    mailer.kill9();
    tokio::time::sleep(env.window + Duration::from_secs(1)).await;
    assert!(env.mails().is_empty(), "mail went out with the mailer dead");
    let d = env.deliveries(message).await;
    assert_eq!(recipient(&d, reader)["email_state"], "pending");

    let _mailer = env.spawn(&["mailer"]);
    let d = env.settled(message, SETTLE).await;
    assert_eq!(recipient(&d, reader)["email_state"], "sent");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(env.mails_to("reader@example.com").len(), 1);
}

/// D2: with a 2 s window nothing is sent before 2 s have passed.
#[tokio::test(flavor = "multi_thread")]
async fn d2_nothing_is_sent_before_the_window() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let author = env.user("Author").await;
    let readers = [
        env.user("A1").await,
        env.user("A2").await,
        env.user("A3").await,
    ];
    let (_, item, conv) = env.ticket("Timing").await;
    for r in readers {
        env.follow_item(item, r).await;
    }
    // Compared with the sink files' modification times, which the file system stamps.
    #[allow(clippy::disallowed_methods)]
    let before_post = SystemTime::now();
    let message = env.post(conv, author, "Wait for it", false).await;
    env.settled(message, SETTLE).await;
    let mails = env.mails();
    assert_eq!(mails.len(), 3);
    for mail in mails {
        let waited = mail.received.duration_since(before_post).unwrap();
        assert!(
            waited >= Duration::from_secs(2),
            "sent after only {waited:?}"
        );
    }
}

/// A 4xx from the SMTP server defers the email through a retry tier and it is delivered once
/// the server recovers; a 5xx ends as `failed` with the server's reply and is not retried.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_4xx_is_retried_and_5xx_fails() {
    let mut env = Env::with(
        "1s",
        &[("TIDINGS_RETRY_TIERS", "1s,1s,1s")],
        &["-r", "RCPT"],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let author = env.user("Author").await;
    let reader = env.user("Reader").await;
    let (_, item, conv) = env.ticket("Flaky").await;
    env.follow_item(item, reader).await;
    let message = env.post(conv, author, "Try again", false).await;
    // Wait for at least one deferral, then let the server recover.
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let log = env
            .ok("GET", &format!("/email-log?message_id={message}"), None)
            .await;
        if log
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "deferred")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never deferred: {log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (port, dir) = (env.sink.port, env.sink.dir.clone());
    env.sink.stop();
    env.sink = support::Sink::start(port, &dir, &[]);
    let d = env.settled(message, SETTLE).await;
    assert_eq!(recipient(&d, reader)["email_state"], "sent", "{d}");
    assert!(
        recipient(&d, reader)["smtp_reply"]
            .as_str()
            .unwrap()
            .starts_with("250")
    );
    assert_eq!(env.mails_to("reader@example.com").len(), 1);

    // Now a server that refuses permanently.
    env.sink.stop();
    env.sink = support::Sink::start(port, &dir, &["-f", "RCPT"]);
    let refused = env.post(conv, author, "Refused", false).await;
    let d = env.settled(refused, SETTLE).await;
    let row = recipient(&d, reader);
    assert_eq!(row["email_state"], "failed", "{d}");
    assert!(row["smtp_reply"].as_str().unwrap().contains("500"), "{row}");
    let log = env
        .ok("GET", &format!("/email-log?message_id={refused}"), None)
        .await;
    let statuses: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["failed"], "a 5xx must not be retried");
}

/// D2: the mailer keeps its SMTP connections open between emails; when the server closed an
/// idle one meanwhile (here: restarted), the mailer notices before using it, so the next email
/// goes out at once on a new connection instead of waiting for a retry tier (1 h here).
#[tokio::test(flavor = "multi_thread")]
async fn smtp_server_restart_between_emails_delays_nothing() {
    let mut env = Env::with("1s", &[("TIDINGS_RETRY_TIERS", "1h")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Restart").await;
    env.follow_item(item, bob).await;

    let first = env.post(conv, ann, "before the restart", false).await;
    let d = env.settled(first, SETTLE).await;
    assert_eq!(recipient(&d, bob)["email_state"], "sent");

    let (port, dir) = (env.sink.port, env.sink.dir.clone());
    env.sink.stop();
    env.sink = support::Sink::start(port, &dir, &[]);
    // Longer than the idle time after which a pooled connection is checked before use.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let second = env.post(conv, ann, "after the restart", false).await;
    let d = env.settled(second, SETTLE).await;
    let row = recipient(&d, bob);
    assert_eq!(row["email_state"], "sent", "{d}");
    assert_eq!(env.mails_to("bob@example.com").len(), 2);
}
