//! Inbound email end to end on real services, speaking SMTP to the listener as the MX relay
//! does: SPEC I1–I6 and L2.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::{Env, REPLY_DOMAIN};

const SETTLE: Duration = Duration::from_secs(30);

async fn conversation(env: &Env, id: i64) -> Value {
    env.ok("GET", &format!("/conversations/{id}"), None).await
}

async fn inbound_log(env: &Env) -> Vec<Value> {
    let log = env.ok("GET", "/email-log?limit=1000", None).await;
    log.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["direction"] == "inbound")
        .cloned()
        .collect()
}

/// A conversation where Bob has been emailed once; returns (ann, bob, conversation, the
/// reply address and Message-ID of Bob's email).
async fn emailed_conversation(env: &Env) -> (i64, i64, i64, String, String) {
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    env.follow_item(item, ann).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.settled(m, SETTLE).await;
    let mail = &env.mails_to("bob@example.com")[0];
    let parsed = mail.parsed();
    let reply_to = parsed
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    let message_id = mail.header("Message-ID").unwrap();
    (ann, bob, conv, reply_to, message_id)
}

/// Runs `cmd` with `email` on its standard input (as a pipe transport does); its exit code.
fn piped(mut cmd: std::process::Command, email: &str) -> Option<i32> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(email.as_bytes())
        .unwrap();
    child.wait().unwrap().code()
}

/// I1: foreign domains, unknown mailboxes and forged tokens are refused during the dialogue;
/// oversized mail gets 552.
#[tokio::test(flavor = "multi_thread")]
async fn i1_refuses_what_is_not_ours() {
    let env = Env::with("1s", &[("TIDINGS_INBOUND_MAX_BYTES", "2048")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, _, reply_to, _) = emailed_conversation(&env).await;
    let forged = reply_to.replacen("reply+", "reply+9", 1);
    let replies = env
        .smtp(
            "x@example.com",
            &[
                "someone@elsewhere.example",
                &format!("nobody@{REPLY_DOMAIN}"),
                &forged,
                "reply+1-2-3@x",
            ],
            "Subject: x\n\nhello",
        )
        .await;
    for (i, r) in replies[3..7].iter().enumerate() {
        assert!(r.starts_with("550"), "recipient {i}: {r}");
    }
    assert!(
        replies[7].starts_with("503"),
        "DATA without a recipient: {}",
        replies[7]
    );
    let big = format!("Subject: big\n\n{}", "x".repeat(4000));
    let replies = env.smtp("bob@example.com", &[&reply_to], &big).await;
    assert!(replies[3].starts_with("250"), "{replies:?}");
    assert!(replies.last().unwrap().starts_with("552"), "{replies:?}");
}

/// I2, I3, I4, I6: a reply from the right person lands in the conversation without its quoted
/// history and notifies the followers; the same email again is posted once; the right address
/// from the wrong sender is not posted as that person.
#[tokio::test(flavor = "multi_thread")]
async fn i2_reply_is_threaded_once_and_only_from_its_owner() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, bob, conv, reply_to, message_id) = emailed_conversation(&env).await;
    let email = format!(
        "From: Bob <bob@example.com>\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <reply-1@example.com>\n\
         In-Reply-To: {message_id}\nReferences: {message_id}\n\n\
         Yes, it prints again.\n\nOn Tue, 1 Jan 2030 at 10:00, Tidings <n@example.com> wrote:\n> Is the printer fixed?\n"
    );
    for _ in 0..2 {
        let replies = env.smtp("bob@example.com", &[&reply_to], &email).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    support::wait_for(env.root(), "the reply to be posted", async || {
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = conversation(&env, conv).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 2, "posted once: {messages:?}");
    assert_eq!(messages[1]["author_id"], json!(bob));
    assert_eq!(messages[1]["body"], "Yes, it prints again.");
    // The posted reply notifies Ann like any other message.
    let d = env
        .settled(messages[1]["id"].as_i64().unwrap(), SETTLE)
        .await;
    assert!(
        d["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["recipient_id"] == json!(ann)),
        "{d}"
    );

    // The right reply address from someone else is not posted as Bob.
    let spoof = email
        .replace("bob@example.com", "mallory@example.com")
        .replace("reply-1@", "reply-2@");
    let replies = env.smtp("mallory@example.com", &[&reply_to], &spoof).await;
    assert!(replies.last().unwrap().starts_with("250"));
    support::wait_for(env.root(), "the spoof to be logged", async || {
        inbound_log(&env)
            .await
            .iter()
            .any(|r| r["status"] == "rejected")
    })
    .await;
    let log = inbound_log(&env).await;
    let rejected = log.iter().find(|r| r["status"] == "rejected").unwrap();
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap()
            .contains("not the person"),
        "{rejected}"
    );
    assert!(
        log.iter().any(|r| r["reason"]
            .as_str()
            .is_some_and(|r| r.contains("duplicate"))),
        "{log:?}"
    );
    assert_eq!(
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// L2 and I5: an out-of-office is logged and never posted; a customer's fresh email to the
/// support mailbox starts a conversation.
#[tokio::test(flavor = "multi_thread")]
async fn l2_auto_replies_are_logged_and_i5_new_mail_starts_a_conversation() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conv, reply_to, _) = emailed_conversation(&env).await;
    // Sam hears of every customer message (P3 `all`), so of the new ticket too.
    let sam = env.user("Sam").await;
    env.ok(
        "PATCH",
        &format!("/people/{sam}/preferences"),
        Some(serde_json::json!({"from_customers": "all"})),
    )
    .await;
    let ooo = format!(
        "From: Bob <bob@example.com>\nTo: {reply_to}\nSubject: Automatic reply: Printer\n\
         Auto-Submitted: auto-replied\nMessage-ID: <ooo-1@example.com>\n\nI am away until Monday."
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &ooo).await;
    assert!(replies.last().unwrap().starts_with("250"));
    let support = format!("support@{REPLY_DOMAIN}");
    let fresh = format!(
        "From: Dana Customer <dana@customer.example>\nTo: {support}\nSubject: My invoice is wrong\n\
         Message-ID: <fresh-1@customer.example>\n\nPlease check invoice 42."
    );
    let replies = env.smtp("dana@customer.example", &[&support], &fresh).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "both emails to be processed", async || {
        inbound_log(&env).await.len() >= 2
    })
    .await;
    let log = inbound_log(&env).await;
    let ignored = log
        .iter()
        .find(|r| r["status"] == "ignored")
        .expect("the out-of-office is logged");
    assert!(
        ignored["reason"]
            .as_str()
            .unwrap()
            .starts_with("auto_reply"),
        "{ignored}"
    );
    assert_eq!(
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let created = log
        .iter()
        .find(|r| r["status"] == "created")
        .expect("a conversation was created");
    let new_conv = conversation(&env, created["conversation_id"].as_i64().unwrap()).await;
    assert_eq!(new_conv["conversation"]["subject"], "My invoice is wrong");
    assert_eq!(new_conv["messages"][0]["body"], "Please check invoice 42.");
    // I5: the conversation is a ticket in the inbound project, the customer its requester and
    // follower, and it notifies like any new customer message.
    let new_id = created["conversation_id"].as_i64().unwrap();
    let ticket = env.sql(&format!(
        "SELECT i.kind || '|' || i.title || '|' || p.name || '|' || r.email || '|' ||
                EXISTS (SELECT 1 FROM item_follows f WHERE f.item_id = i.id AND f.person_id = r.id)
         FROM conversations c JOIN items i ON i.id = c.item_id JOIN projects p ON p.id = i.project_id
         JOIN people r ON r.id = i.requester_id WHERE c.id = {new_id}"
    ));
    assert_eq!(
        ticket,
        "ticket|My invoice is wrong|Support|dana@customer.example|true"
    );
    let message = new_conv["messages"][0]["id"].as_i64().unwrap();
    let deliveries = env.dispatched(message).await;
    assert!(
        deliveries["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["recipient_id"] == sam),
        "{deliveries}"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM domain_events WHERE kind = 'item_created'"),
        "2",
        "the test's own ticket and the inbound one"
    );
}

/// A human reply in which extraction finds no new text is posted whole, never dropped, and what
/// extraction removed is readable beside the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_reply_without_new_text_is_posted_whole_and_its_removed_text_is_kept() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conv, reply_to, message_id) = emailed_conversation(&env).await;
    let quote_only = format!(
        "From: Bob <bob@example.com>\nTo: {reply_to}\nSubject: Re: Printer\n\
         In-Reply-To: {message_id}\nMessage-ID: <quote-only-1@example.com>\n\n\
         On Tue, Dec 1, 2026 at 10:00 AM Ann <ann@example.com> wrote:\n> Is the printer fixed?\n"
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &quote_only).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the reply to be posted", async || {
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let posted = &conversation(&env, conv).await["messages"][1];
    assert!(
        posted["body"]
            .as_str()
            .unwrap()
            .contains("> Is the printer fixed?"),
        "{posted}"
    );
    let email = env
        .ok(
            "GET",
            &format!("/messages/{}/email", posted["id"].as_i64().unwrap()),
            None,
        )
        .await;
    assert_eq!(email["message_id_header"], "<quote-only-1@example.com>");
    assert!(
        email["note"].as_str().unwrap().contains("whole text"),
        "{email}"
    );
    assert!(
        email["removed_text"]
            .as_str()
            .unwrap()
            .contains("Is the printer fixed?"),
        "{email}"
    );
    // A message not posted by email has no email.
    let first = conversation(&env, conv).await["messages"][0]["id"]
        .as_i64()
        .unwrap();
    let (status, body) = env
        .call("GET", &format!("/messages/{first}/email"), None)
        .await;
    assert_eq!(status, 404, "{body}");
}

/// I1: with the broker unreachable, DATA is answered 451 so the relay keeps the mail; the
/// relay's retry, once the broker is back, is posted once.
#[tokio::test(flavor = "multi_thread")]
async fn i1_broker_down_during_data_gives_451_and_the_retry_is_posted() {
    let env = Env::new("1s");
    let _front = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, bob, conv, reply_to, message_id) = emailed_conversation(&env).await;
    let mut broken = env.command(&["run", "inbound"]);
    broken
        .env("TIDINGS_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut broken = broken.spawn().unwrap();
    let email = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <retry-1@example.com>\n\
         In-Reply-To: {message_id}\n\nPosted after the retry."
    );
    let mut replies = Vec::new();
    for _ in 0..50 {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", env.inbound_port)),
        )
        .await
        {
            replies = env.smtp("bob@example.com", &[&reply_to], &email).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        replies.last().is_some_and(|r| r.starts_with("451")),
        "{replies:?}"
    );
    let _ = broken.kill();
    let _ = broken.wait();
    let _inbound = env.spawn(&["inbound"]);
    let mut accepted = false;
    for _ in 0..100 {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(("127.0.0.1", env.inbound_port)),
        )
        .await
        {
            let replies = env.smtp("bob@example.com", &[&reply_to], &email).await;
            if replies.last().is_some_and(|r| r.starts_with("250")) {
                accepted = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(accepted, "the retry was not accepted");
    support::wait_for(env.root(), "the retry to be posted", async || {
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    })
    .await;
    let messages = conversation(&env, conv).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1]["author_id"], json!(bob));
    assert_eq!(messages[1]["body"], "Posted after the retry.");
}

/// The pipe mode for relays that deliver through a command: 0 once queued (and the reply is
/// posted), 67 for a recipient that is not ours, 75 when the broker is unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn pipe_mode_queues_or_asks_the_relay_to_retry() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, bob, conv, reply_to, message_id) = emailed_conversation(&env).await;
    let email = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <pipe-1@example.com>\n\
         In-Reply-To: {message_id}\n\nSent through a pipe."
    );
    let run = |args: &[&str], amqp: Option<&str>| {
        let mut cmd = env.command(args);
        if let Some(url) = amqp {
            cmd.env("TIDINGS_AMQP_URL", url);
        }
        piped(cmd, &email)
    };
    let forged = reply_to.replacen("reply+", "reply+7", 1);
    assert_eq!(
        run(
            &["inbound", "enqueue", "--from", "bob@example.com", &forged],
            None
        ),
        Some(67)
    );
    let down = Some("amqp://guest:guest@127.0.0.1:1/%2f");
    assert_eq!(
        run(
            &["inbound", "enqueue", "--from", "bob@example.com", &reply_to],
            down
        ),
        Some(75)
    );
    assert_eq!(
        run(
            &["inbound", "enqueue", "--from", "bob@example.com", &reply_to],
            None
        ),
        Some(0)
    );
    support::wait_for(env.root(), "the piped reply to be posted", async || {
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    })
    .await;
    let messages = conversation(&env, conv).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages[1]["author_id"], json!(bob));
    assert_eq!(messages[1]["body"], "Sent through a pipe.");
}

/// Bounces: the DSN comes back to the email's signed bounce address (its envelope sender), marks the email it
/// reports as `bounced` with the DSN status (and tells the author's messenger live, D8), and a
/// hard bounce suppresses further email to the address until it is reset.
#[tokio::test(flavor = "multi_thread")]
async fn hard_bounce_marks_the_email_and_suppresses_the_address() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, bob, conv, _, message_id) = emailed_conversation(&env).await;
    let sent = &env.mails_to("bob@example.com")[0];
    let return_path = sent.return_path();
    assert!(
        return_path.starts_with("bounces+n") && return_path.ends_with(&format!("@{REPLY_DOMAIN}")),
        "bounces come back to us, to this email's own signed address: {return_path}"
    );
    let dsn = format!(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\nTo: {return_path}\n\
         Subject: Undelivered Mail Returned to Sender\nMessage-ID: <dsn-1@mx.example.com>\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
         --b\nContent-Type: text/plain\n\nThe mail could not be delivered.\n\n\
         --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n\
         Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 5.1.1\n\n\
         --b\nContent-Type: text/rfc822-headers\n\nMessage-ID: {message_id}\nTo: bob@example.com\n\n--b--\n"
    );
    // D8: Ann, the author, has her messenger open and sees the bounce live.
    let mut ann_stream = support::live::Sse::open(&env.base(), &env.session(ann).await, None).await;
    let replies = env.smtp("", &[&return_path], &dsn).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let bounce_event = loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("a live bounce event for Ann");
        let event = ann_stream
            .next_of("delivery", left)
            .await
            .expect("a delivery event");
        if event.data["status"] == "bounced" {
            break event;
        }
    };
    assert_eq!(bounce_event.data["person_id"], json!(bob));
    assert_eq!(bounce_event.data["conversation_id"], json!(conv));
    support::wait_for(env.root(), "the bounce to be recorded", async || {
        env.ok("GET", "/suppressions", None)
            .await
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    let log = env.ok("GET", "/email-log?limit=100", None).await;
    let bounced = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["message_id_header"] == json!(message_id) && r["direction"] == "outbound")
        .unwrap();
    assert_eq!(
        (bounced["status"].as_str(), bounced["smtp_reply"].as_str()),
        (Some("bounced"), Some("DSN 5.1.1"))
    );
    let suppressions = env.ok("GET", "/suppressions", None).await;
    assert_eq!(suppressions[0]["address"], "bob@example.com");
    assert_eq!(suppressions[0]["suppressed"], true);

    let next = env.post(conv, ann, "Anyone there?", false).await;
    let d = env.settled(next, SETTLE).await;
    let row = d["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(bob))
        .unwrap();
    assert_eq!(
        (row["email_state"].as_str(), row["email_reason"].as_str()),
        (Some("skipped"), Some("suppressed"))
    );
    assert_eq!(env.mails_to("bob@example.com").len(), 1);

    env.ok("DELETE", "/suppressions/bob@example.com", None)
        .await;
    let again = env.post(conv, ann, "Back again?", false).await;
    let d = env.settled(again, SETTLE).await;
    let row = d["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(bob))
        .unwrap();
    assert_eq!(row["email_state"], "sent", "{row}");
}

/// L2: a runaway sender is stopped by the per-sender rate limit, and the log says so.
#[tokio::test(flavor = "multi_thread")]
async fn l2_rate_limit_stops_a_runaway_sender() {
    let env = Env::with("1s", &[("TIDINGS_INBOUND_RATE", "2/10m")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conv, reply_to, message_id) = emailed_conversation(&env).await;
    for i in 0..3 {
        let email = format!(
            "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <loop-{i}@example.com>\n\
             In-Reply-To: {message_id}\n\nReply number {i}."
        );
        let replies = env.smtp("bob@example.com", &[&reply_to], &email).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    support::wait_for(env.root(), "all three to be processed", async || {
        inbound_log(&env).await.len() >= 3
    })
    .await;
    let log = inbound_log(&env).await;
    let limited: Vec<&Value> = log.iter().filter(|r| r["status"] == "rejected").collect();
    assert_eq!(limited.len(), 1, "{log:?}");
    assert!(
        limited[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("rate limit"),
        "{log:?}"
    );
    assert_eq!(
        conversation(&env, conv).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

/// Soft bounces (4.x.x) suppress the address only after the third.
#[tokio::test(flavor = "multi_thread")]
async fn third_soft_bounce_suppresses_the_address() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, _, _, message_id) = emailed_conversation(&env).await;
    let bounces = format!("bounces@{REPLY_DOMAIN}");
    for i in 1..=3 {
        let dsn = format!(
            "From: MAILER-DAEMON@mx.example.com\nTo: {bounces}\nSubject: Mailbox full\n\
             Message-ID: <soft-{i}@mx.example.com>\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
             --b\nContent-Type: message/delivery-status\n\n\
             Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 4.2.2\n\n\
             --b\nContent-Type: text/rfc822-headers\n\nMessage-ID: {message_id}\n\n--b--\n"
        );
        let replies = env.smtp("", &[&bounces], &dsn).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
        support::wait_for(env.root(), "the soft bounce to be counted", async || {
            let rows = env.ok("GET", "/suppressions", None).await;
            rows.as_array()
                .and_then(|a| a.first().cloned())
                .is_some_and(|r| r["soft_bounces"] == json!(i))
        })
        .await;
        let rows = env.ok("GET", "/suppressions", None).await;
        assert_eq!(
            rows[0]["suppressed"],
            json!(i >= 3),
            "after {i} soft bounces: {rows}"
        );
        assert_eq!(rows[0]["last_status"], "4.2.2");
    }
}

/// I2, L2: a backlog of replies is processed as sets. Within a set the rate limit is exact,
/// a duplicate delivery is posted once, and every email gets its own log entry.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_is_processed_as_sets_with_exact_limits_and_duplicates_once() {
    let env = Env::with("1s", &[("TIDINGS_INBOUND_RATE", "5/10m")], &[]);
    let _outbound = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conv, reply_to, message_id) = emailed_conversation(&env).await;
    // Queued while no consumer runs, so they wait for it together.
    let enqueue = |n: usize| {
        let email = format!(
            "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <set-{n}@example.com>\n\
             In-Reply-To: {message_id}\n\nBacklog reply {n}.\n\nOn Tue, Ann wrote:\n> Is the printer fixed?\n"
        );
        let cmd = env.command(&["inbound", "enqueue", "--from", "bob@example.com", &reply_to]);
        assert_eq!(piped(cmd, &email), Some(0), "enqueue {n}");
    };
    for n in 0..8 {
        enqueue(n);
    }
    enqueue(0);
    let _inbound = env.spawn(&["inbound"]);
    support::wait_for(env.root(), "the backlog to be processed", async || {
        inbound_log(&env).await.len() >= 9
    })
    .await;
    let log = inbound_log(&env).await;
    let count = |status: &str, reason: &str| {
        log.iter()
            .filter(|r| {
                r["status"] == status && r["reason"].as_str().unwrap_or("").starts_with(reason)
            })
            .count()
    };
    assert_eq!(count("threaded", ""), 5, "{log:#?}");
    assert_eq!(count("rejected", "rate limit"), 3, "{log:#?}");
    assert_eq!(count("ignored", "duplicate delivery"), 1, "{log:#?}");
    let messages = conversation(&env, conv).await["messages"].clone();
    let bodies: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies.len(), 6, "{bodies:?}");
    // Each posted once, with only its new text.
    let mut posted: Vec<&str> = bodies[1..].to_vec();
    posted.sort_unstable();
    posted.dedup();
    assert_eq!(posted.len(), 5, "{bodies:?}");
    assert!(
        posted
            .iter()
            .all(|b| b.starts_with("Backlog reply ") && b.ends_with('.') && b.len() < 20),
        "{bodies:?}"
    );
}

/// I1: when one email of a set cannot be stored (here a constraint the database enforces on
/// message bodies), the set's transaction fails and each email is processed on its own: the
/// others are posted, and the one that fails is dead-lettered whole, with the database's
/// reason, rather than lost or retried forever.
#[tokio::test(flavor = "multi_thread")]
async fn one_email_that_cannot_be_stored_never_holds_up_its_set() {
    let env = Env::new("1s");
    let _outbound = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conv, reply_to, message_id) = emailed_conversation(&env).await;
    env.sql(
        "ALTER TABLE messages ADD CONSTRAINT body_is_not_refused CHECK (body NOT LIKE '%refused-by-the-database%')",
    );
    for (n, text) in [
        "First good reply.",
        "This one is refused-by-the-database.",
        "Second good reply.",
    ]
    .iter()
    .enumerate()
    {
        let email = format!(
            "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <fallback-{n}@example.com>\n\
             In-Reply-To: {message_id}\n\n{text}\n"
        );
        let cmd = env.command(&["inbound", "enqueue", "--from", "bob@example.com", &reply_to]);
        assert_eq!(piped(cmd, &email), Some(0), "enqueue {n}");
    }
    let _inbound = env.spawn(&["inbound"]);
    let topology = env.topology();
    let (_conn, channel) = env.channel().await;
    let mut consumer = channel
        .basic_consume(
            topology.dead_queue().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let dead = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("the refused email is dead-lettered")
        .unwrap()
        .unwrap();
    let reason = dead
        .properties
        .headers()
        .clone()
        .unwrap()
        .inner()
        .get(&lapin::types::ShortString::from("x-tidings-reason"))
        .and_then(|v| match v {
            lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(reason.contains("body_is_not_refused"), "{reason}");
    assert!(
        String::from_utf8_lossy(&dead.data).contains("refused-by-the-database"),
        "the dead letter holds the whole email"
    );
    dead.ack(Default::default()).await.unwrap();
    support::wait_for(env.root(), "the two good replies", async || {
        inbound_log(&env)
            .await
            .iter()
            .filter(|r| r["status"] == "threaded")
            .count()
            >= 2
    })
    .await;
    let messages = conversation(&env, conv).await["messages"].clone();
    let bodies: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies[1..],
        ["First good reply.", "Second good reply."],
        "{bodies:?}"
    );
    assert!(
        env.log_of(&["inbound"])
            .contains("processing the set failed; processing each email on its own"),
        "the three emails were one set"
    );
}

/// I10: the envelope counts. A delivery report sent with a null reverse-path to an email's
/// signed bounce address is one, even with `From: MAILER-DAEMON <>` and a plain-text body
/// (no RFC 3464 part): the email is marked bounced and the address suppressed. A report that
/// says `delivered` (or `delayed`) changes nothing and is logged as what it is.
#[tokio::test(flavor = "multi_thread")]
async fn i10_the_envelope_makes_a_delivery_report_and_delivered_suppresses_nobody() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, _bob, conv, _, _) = emailed_conversation(&env).await;
    let return_path = env.mails_to("bob@example.com")[0].return_path();
    // "delivered" and "delayed" reports first: nothing may change.
    for (n, (action, status)) in [("delivered", "2.0.0"), ("delayed", "4.4.7")]
        .iter()
        .enumerate()
    {
        let report = format!(
            "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\nTo: {return_path}\n\
             Subject: Delivery Status Notification\nMessage-ID: <ok-{n}@mx.example.com>\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
             --b\nContent-Type: text/plain\n\nReport.\n\n\
             --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n\
             Final-Recipient: rfc822; bob@example.com\nAction: {action}\nStatus: {status}\n\n--b--\n"
        );
        let replies = env.smtp("", &[&return_path], &report).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    support::wait_for(env.root(), "both reports to be logged", async || {
        inbound_log(&env)
            .await
            .iter()
            .filter(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("a delivery report saying"))
            })
            .count()
            == 2
    })
    .await;
    assert!(
        env.ok("GET", "/suppressions", None)
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A plain-text failure notice with an empty sender name and address in From.
    let notice = format!(
        "From: MAILER-DAEMON <>\nTo: {return_path}\nSubject: failure notice\n\
         Message-ID: <fail-1@mx.example.com>\n\n\
         Hi. This is the qmail-send program at mx.example.com.\n\
         I'm afraid I wasn't able to deliver your message to the following addresses.\n\
         This is a permanent error; I've given up. Sorry it didn't work out.\n\n\
         <bob@example.com>:\nSorry, no mailbox here by that name. (#5.1.1)\n"
    );
    let replies = env.smtp("", &[&return_path], &notice).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the failure to suppress Bob", async || {
        env.ok("GET", "/suppressions", None)
            .await
            .as_array()
            .is_some_and(|a| {
                a.iter()
                    .any(|s| s["address"] == "bob@example.com" && s["suppressed"] == true)
            })
    })
    .await;
    // Nothing of it was posted as a message.
    let messages = conversation(&env, conv).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let _ = ann;
}

/// T5: a complaint report that proves it concerns one of our emails (here the Message-ID of
/// the email it quotes) stops that kind of email to the person who complained, as their
/// unsubscribe link would, and is logged with its reason; one that proves nothing changes
/// nothing. Neither opens a conversation. I10: a person's mail that a rule forwarded is posted.
#[tokio::test]
async fn t5_a_proven_complaint_stops_that_kind_of_email_and_opens_nothing() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_ann, bob, _conv, _, message_id) = emailed_conversation(&env).await;
    let conversations = || env.sql("SELECT count(*) FROM conversations");
    let before = conversations();
    // Feedback loops are registered to the bounce mailbox.
    let fbl = format!("bounces@{REPLY_DOMAIN}");
    let arf = |id: &str, n: u32| {
        format!(
            "From: Feedback Loop <fbl@isp.example.net>\nTo: {fbl}\nSubject: Complaint about message\n\
             Message-ID: <arf-{n}@isp.example.net>\nMIME-Version: 1.0\n\
             Content-Type: multipart/report; report-type=feedback-report; boundary=\"arf\"\n\n\
             --arf\nContent-Type: text/plain\n\nThis is an email abuse report.\n\n\
             --arf\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nVersion: 1\n\
             Original-Rcpt-To: <bob@example.com>\n\n\
             --arf\nContent-Type: text/rfc822-headers\n\nMessage-ID: {id}\nTo: bob@example.com\n\
             Subject: New message\n\n--arf--\n"
        )
    };
    // Unproven: a Message-ID that is not ours.
    let replies = env
        .smtp(
            "fbl@isp.example.net",
            &[&fbl],
            &arf("<someone@else.example>", 1),
        )
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(
        env.root(),
        "the unproven complaint to be logged",
        async || {
            inbound_log(&env).await.iter().any(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("proves nothing about our mail"))
            })
        },
    )
    .await;
    let preferences = env
        .ok("GET", &format!("/people/{bob}/preferences"), None)
        .await;
    assert_eq!(preferences["email_replies"], true, "{preferences}");

    // Proven: it quotes the Message-ID of the email Bob was sent.
    let replies = env
        .smtp("fbl@isp.example.net", &[&fbl], &arf(&message_id, 2))
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(
        env.root(),
        "the complaint to stop Bob's emails",
        async || {
            env.ok("GET", &format!("/people/{bob}/preferences"), None)
                .await["email_replies"]
                == false
        },
    )
    .await;
    let log = inbound_log(&env).await;
    let logged = log
        .iter()
        .find(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("complaint (abuse), proven by the Message-ID"))
        })
        .expect("the complaint is logged with its reason");
    assert_eq!(logged["status"], "ignored", "{logged}");
    assert!(
        logged["reason"]
            .as_str()
            .unwrap()
            .contains("emails about replies to customers"),
        "{logged}"
    );
    let source = env.sql(&format!(
        "SELECT source FROM preference_changes WHERE person_id = {bob} ORDER BY id DESC LIMIT 1"
    ));
    assert_eq!(source, "complaint");
    assert_eq!(
        conversations(),
        before,
        "a complaint never opens a conversation"
    );

    // I10: a person's mail a rule forwarded is that person's: posted as a new conversation.
    let support_address = format!("support@{REPLY_DOMAIN}");
    let forwarded = format!(
        "From: Dana Customer <dana@customer.example>\nTo: {support_address}\n\
         Subject: Printer smoking\nAuto-Submitted: auto-forwarded\nX-Loop: dana@customer.example\n\
         Message-ID: <fwd-1@customer.example>\n\nIt is smoking again."
    );
    let replies = env
        .smtp("dana@customer.example", &[&support_address], &forwarded)
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the forwarded mail to be posted", async || {
        inbound_log(&env)
            .await
            .iter()
            .any(|r| r["status"] == "created")
    })
    .await;
    let body = env.sql(
        "SELECT m.body FROM messages m JOIN conversations c ON c.id = m.conversation_id \
         WHERE c.subject = 'Printer smoking'",
    );
    assert_eq!(body, "It is smoking again.");
}
