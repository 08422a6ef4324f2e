//! Attention (SPEC A1): a person's pause holds their emails in the database, not the broker,
//! and what is still unseen when it ends goes out, one email per conversation. On real
//! services, with short windows.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Env;
use support::live::Sse;

const SETTLE: Duration = Duration::from_secs(30);

/// Ann and Bob follow a ticket; returns (ann, bob, conversation).
async fn pair(env: &Env) -> (i64, i64, i64) {
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, bob).await;
    (ann, bob, conv)
}

fn in_a(minutes: i64) -> String {
    (tidings_common::clock::now() + chrono::Duration::minutes(minutes)).to_rfc3339()
}

/// `person`'s row in the deliveries of `message`.
async fn row_of(env: &Env, message: i64, person: i64) -> Value {
    env.deliveries(message).await["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(person))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `person`'s email of `message` is held (pending under rule A1).
async fn held(env: &Env, message: i64, person: i64) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let row = row_of(env, message, person).await;
        if row["email_state"] == "pending" && row["email_rule"] == "A1" {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "message {message} not held for {person}: {row}{}",
            support::log_tails(env.root(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a1_held_during_a_pause_then_released_as_one_email() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let (ann, bob, conv) = pair(&env).await;
    // Bob pauses himself from the messenger's API; an admin could as well.
    let token = env.session(bob).await;
    let (status, body) = env
        .call_as(
            &token,
            "PUT",
            "/me/attention",
            Some(json!({"dnd_until": in_a(60)})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["dnd_until"].is_string(), "{body}");
    let mut stream = Sse::open(&env.base(), &token, None).await;

    let first = env.post(conv, ann, "Is the printer fixed?", false).await;
    let second = env.post(conv, ann, "Paper tray 2 is jammed", false).await;
    let third = env.post(conv, ann, "Never mind, fixed", false).await;
    let event = stream
        .next_of("notification", Duration::from_secs(10))
        .await
        .expect("the notification still reaches the app");
    assert_eq!(event.data["ping"], false, "no ping while paused: {event:?}");
    for message in [first, second, third] {
        let row = held(&env, message, bob).await;
        assert!(
            row["email_reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("held: do not disturb until ")),
            "{row}"
        );
    }
    // The badge still counts them; the email log lists them as queued, due at the pause's end.
    let (_, inbox) = env.call_as(&token, "GET", "/me/inbox", None).await;
    assert_eq!(inbox["unread"], 3, "{inbox}");
    let log = env
        .ok("GET", &format!("/email-log?message_id={second}"), None)
        .await;
    let queued = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rcpt_to"] == "bob@example.com")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(queued["status"], "queued", "{log}");
    // Ann was not paused: she got nothing (her own messages), Bob nothing yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(env.mails_to("bob@example.com").is_empty());
    let (_, explained) = env
        .call("GET", &format!("/messages/{first}/explain/{bob}"), None)
        .await;
    println!("explain while paused: {explained}");
    assert!(
        explained.to_string().contains("held: do not disturb until"),
        "{explained}"
    );

    // The pause ends: one email with the three messages.
    let (status, body) = env
        .call_as(
            &token,
            "PUT",
            "/me/attention",
            Some(json!({"dnd_until": null})),
        )
        .await;
    assert_eq!((status, &body["dnd_until"]), (200, &Value::Null), "{body}");
    for message in [first, second, third] {
        env.settled(message, SETTLE).await;
    }
    let mails = env.mails_to("bob@example.com");
    assert_eq!(mails.len(), 1, "one email for the conversation");
    let text = mails[0].parsed().body_text(0).unwrap().to_string();
    for said in [
        "Is the printer fixed?",
        "Paper tray 2 is jammed",
        "Never mind, fixed",
    ] {
        assert!(text.contains(said), "{said} missing from {text}");
    }

    // A pause too far ahead, or not a time, is refused naming the field.
    let (status, body) = env
        .call_as(
            &token,
            "PUT",
            "/me/attention",
            Some(json!({"dnd_until": in_a(60 * 24 * 31)})),
        )
        .await;
    assert_eq!(
        (status, &body["field"]),
        (400, &json!("dnd_until")),
        "{body}"
    );
    let (status, body) = env
        .call_as(
            &token,
            "PUT",
            "/me/attention",
            Some(json!({"dnd_until": "tomorrow"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = env
        .call(
            "PUT",
            "/people/999999/attention",
            Some(json!({"dnd_until": null})),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a1_seen_or_deleted_during_a_pause_is_never_emailed() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let (ann, bob, conv) = pair(&env).await;
    let (status, _) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"dnd_until": in_a(60)})),
        )
        .await;
    assert_eq!(status, 200);
    let seen = env.post(conv, ann, "Read this one", false).await;
    let deleted = env.post(conv, ann, "Taken back", false).await;
    held(&env, seen, bob).await;
    held(&env, deleted, bob).await;
    let token = env.session(bob).await;
    let (status, _) = env
        .call_as(
            &token,
            "PUT",
            &format!("/me/conversations/{conv}/seen"),
            Some(json!({"message_id": seen})),
        )
        .await;
    assert_eq!(status, 204);
    env.ok("DELETE", &format!("/messages/{deleted}"), None)
        .await;
    let (status, _) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"dnd_until": null})),
        )
        .await;
    assert_eq!(status, 200);
    env.settled(seen, SETTLE).await;
    env.settled(deleted, SETTLE).await;
    assert_eq!(row_of(&env, seen, bob).await["email_reason"], "seen");
    assert_eq!(row_of(&env, deleted, bob).await["email_reason"], "deleted");
    assert!(env.mails_to("bob@example.com").is_empty());
}

/// Every role killed and started again while an email is held; the pause then ends by itself
/// and the sweep releases the email.
#[tokio::test(flavor = "multi_thread")]
async fn a1_a_hold_survives_every_role_restarting_and_ends_by_itself() {
    let env = Env::with("1s", &[("TIDINGS_SEND_LEASE", "2s")], &[]);
    let mut tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let (ann, bob, conv) = pair(&env).await;
    let until = tidings_common::clock::now() + chrono::Duration::seconds(8);
    let (status, _) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"dnd_until": until.to_rfc3339()})),
        )
        .await;
    assert_eq!(status, 200);
    let message = env.post(conv, ann, "Held across a restart", false).await;
    held(&env, message, bob).await;
    tidings.kill9();
    let _again = env.spawn_named("all-again", &["all"], &[]);
    env.wait_for_api().await;
    assert!(env.mails_to("bob@example.com").is_empty());
    let d = env.settled(message, SETTLE).await;
    let row = row_of(&env, message, bob).await;
    assert_eq!(row["email_state"], "sent", "{d}");
    let sent_at: chrono::DateTime<chrono::Utc> =
        row["emailed_at"].as_str().unwrap().parse().unwrap();
    assert!(
        sent_at >= until,
        "sent at {sent_at}, before the pause ended at {until}"
    );
    assert_eq!(env.mails_to("bob@example.com").len(), 1);
}

/// A3: Bob chose to wait for quiet. A chat of ten messages gives him one email, once the
/// conversation has been quiet for the window; meanwhile the status says why it waits.
#[tokio::test(flavor = "multi_thread")]
async fn a3_a_chat_of_ten_messages_gives_one_email() {
    let env = Env::with("1s", &[("TIDINGS_QUIET_MAX", "60s")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let (ann, bob, conv) = pair(&env).await;
    let token = env.session(bob).await;
    let (status, body) = env
        .call_as(
            &token,
            "PUT",
            "/me/attention",
            Some(json!({"wait_for_quiet": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["wait_for_quiet"],
            &body["waits_for_quiet"],
            &body["dnd_until"]
        ),
        (&json!(true), &json!(true), &Value::Null),
        "{body}"
    );
    let mut messages = Vec::new();
    let mut saw_waiting = false;
    for n in 0..10 {
        messages.push(env.post(conv, ann, &format!("Chat line {n}"), false).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let row = row_of(&env, messages[0], bob).await;
        if row["email_rule"] == "A3" && row["email_state"] == "pending" {
            saw_waiting = true;
            assert_eq!(
                row["email_reason"]
                    .as_str()
                    .unwrap_or_default()
                    .split(" (")
                    .next(),
                Some("waiting for the conversation to go quiet"),
                "{row}"
            );
        }
    }
    assert!(saw_waiting, "the first email never waited for quiet");
    for m in &messages {
        env.settled(*m, SETTLE).await;
    }
    let mails = env.mails_to("bob@example.com");
    assert_eq!(mails.len(), 1, "one email for the whole chat");
    let text = mails[0].parsed().body_text(0).unwrap().to_string();
    for n in 0..10 {
        assert!(
            text.contains(&format!("Chat line {n}")),
            "line {n} missing: {text}"
        );
    }
}

/// A3 as the organisation's default: a chat that does not stop is emailed at the maximum
/// delay, while it goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a3_a_chat_that_never_ends_is_emailed_at_the_maximum_delay() {
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_WAIT_FOR_QUIET", "yes"),
            ("TIDINGS_QUIET_MAX", "3s"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let (ann, bob, conv) = pair(&env).await;
    let token = env.session(bob).await;
    let (_, body) = env.call_as(&token, "GET", "/me/attention", None).await;
    assert_eq!(
        (&body["wait_for_quiet"], &body["waits_for_quiet"]),
        (&Value::Null, &json!(true)),
        "{body}"
    );
    let started = Instant::now();
    let mut first_mail = None;
    let mut n = 0;
    // Bounded: at most 60 messages, 400 ms apart, for at most 24 s.
    while n < 60 && started.elapsed() < Duration::from_secs(24) {
        env.post(conv, ann, &format!("Still talking {n}"), false)
            .await;
        n += 1;
        if first_mail.is_none() && !env.mails_to("bob@example.com").is_empty() {
            first_mail = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let first = first_mail.expect("no email while the chat went on");
    println!("first email after {first:?}, {n} messages into the chat");
    // Not before the first message's window plus the maximum (the clock guarantees it).
    assert!(first >= Duration::from_secs(4), "emailed after {first:?}");
}
