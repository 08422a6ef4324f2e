//! Attention (SPEC A1–A3): a person's pause and their working hours hold their emails in the
//! database, not the broker, and what is still unseen when the hold ends goes out, one email
//! per conversation. On real services, with short windows; the working-hours tests move the
//! application clock (`TIDINGS_CLOCK_OFFSET`) to a daylight-saving change.

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
    held_by(env, message, person, "A1").await
}

/// Waits until `person`'s email of `message` is pending under `rule`.
async fn held_by(env: &Env, message: i64, person: i64, rule: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let row = row_of(env, message, person).await;
        if row["email_state"] == "pending" && row["email_rule"] == rule {
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

/// A2: when the next working period starts, as `tidings_next_work_start` computes it in the
/// database, for hours across midnight, weekends and daylight-saving changes both ways.
#[tokio::test(flavor = "multi_thread")]
async fn a2_the_next_start_across_midnight_weekends_and_daylight_saving() {
    let env = Env::new("1s");
    let weekdays = 0b001_1111;
    let every_day = 0b111_1111;
    let wednesday = 0b000_0100;
    // (days, start, end, zone, at, the next start or "" when inside)
    let cases = [
        (
            weekdays,
            "09:00",
            "17:00",
            "Europe/Berlin",
            "2026-12-08 10:00Z",
            "",
        ),
        (
            weekdays,
            "09:00",
            "17:00",
            "Europe/Berlin",
            "2026-12-08 16:59:59Z",
            "2026-12-09 08:00:00+00",
        ),
        // Friday night: Monday morning.
        (
            weekdays,
            "09:00",
            "17:00",
            "Europe/Berlin",
            "2026-12-11 22:59Z",
            "2026-12-14 08:00:00+00",
        ),
        // Hours starting at midnight: Tuesday 23:59 local, Wednesday's start is a minute away.
        (
            wednesday,
            "00:00",
            "08:00",
            "Asia/Tokyo",
            "2026-12-08 14:59Z",
            "2026-12-08 15:00:00+00",
        ),
        // A night shift over midnight: inside after midnight, and before it starts.
        (
            every_day,
            "22:00",
            "06:00",
            "Europe/Berlin",
            "2026-12-08 02:00Z",
            "",
        ),
        (
            every_day,
            "22:00",
            "06:00",
            "Europe/Berlin",
            "2026-12-08 12:00Z",
            "2026-12-08 21:00:00+00",
        ),
        // Spring forward (Berlin, 2027-03-28, 02:00 CET → 03:00 CEST): 03:00 is 01:00 UTC, an
        // hour earlier in UTC than the day before; a start in the skipped hour comes after it.
        (
            every_day,
            "03:00",
            "12:00",
            "Europe/Berlin",
            "2027-03-28 00:59:59Z",
            "2027-03-28 01:00:00+00",
        ),
        (
            every_day,
            "03:00",
            "12:00",
            "Europe/Berlin",
            "2027-03-27 12:00Z",
            "2027-03-28 01:00:00+00",
        ),
        (
            every_day,
            "02:30",
            "12:00",
            "Europe/Berlin",
            "2027-03-28 00:00Z",
            "2027-03-28 01:30:00+00",
        ),
        // The night shift of that night lasts an hour less: it still ends at 06:00 local.
        (
            every_day,
            "22:00",
            "06:00",
            "Europe/Berlin",
            "2027-03-28 03:59Z",
            "",
        ),
        (
            every_day,
            "22:00",
            "06:00",
            "Europe/Berlin",
            "2027-03-28 04:00Z",
            "2027-03-28 20:00:00+00",
        ),
        // Fall back (Berlin, 2026-10-25): 09:00 CET is 08:00 UTC, after 07:00 UTC the day before.
        (
            every_day,
            "09:00",
            "17:00",
            "Europe/Berlin",
            "2026-10-24 16:00Z",
            "2026-10-25 08:00:00+00",
        ),
        (
            every_day,
            "22:00",
            "06:00",
            "Europe/Berlin",
            "2026-10-25 04:59Z",
            "",
        ),
        // New York springs forward on another date (2027-03-14).
        (
            every_day,
            "09:00",
            "17:00",
            "America/New_York",
            "2027-03-14 06:00Z",
            "2027-03-14 13:00:00+00",
        ),
        (
            every_day,
            "09:00",
            "17:00",
            "America/New_York",
            "2027-03-13 06:00Z",
            "2027-03-13 14:00:00+00",
        ),
    ];
    for (days, start, end, zone, at, expected) in cases {
        let got = env.sql(&format!(
            "SET TIME ZONE 'UTC'; SELECT tidings_next_work_start({days}::smallint, '{start}', \
             '{end}', '{zone}', '{at}')"
        ));
        assert_eq!(
            got, expected,
            "days {days:07b} {start}-{end} {zone} at {at}"
        );
    }
}

/// A2 through the API: the organisation's default applies to users who did not choose (not to
/// customers), a person's own hours or "none" win, and bad hours are refused naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn a2_defaults_own_hours_and_bad_input() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let carol = env.customer("Carol").await;
    // Working hours that never include now: every day from 12 hours ahead for one hour.
    let from = tidings_common::clock::now() + chrono::Duration::hours(12);
    let hours = |zone: &str| {
        json!({
            "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
            "start": from.format("%H:%M").to_string(),
            "end": (from + chrono::Duration::hours(1)).format("%H:%M").to_string(),
            "time_zone": zone,
        })
    };
    let (status, body) = env
        .call(
            "PUT",
            "/attention/defaults",
            Some(json!({"working_hours": hours("utc")})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["working_hours"]["time_zone"], "UTC",
        "spelled as the zone data spells it"
    );
    let attention = |person: i64| {
        let env = &env;
        async move {
            let (status, body) = env
                .call("GET", &format!("/people/{person}/attention"), None)
                .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let a = attention(ann).await;
    assert_eq!(a["working_hours"], Value::Null, "{a}");
    assert_eq!(a["working_hours_in_effect"]["time_zone"], "UTC", "{a}");
    assert!(a["outside_hours_until"].is_string(), "{a}");
    let c = attention(carol).await;
    assert_eq!(
        (&c["working_hours_in_effect"], &c["outside_hours_until"]),
        (&Value::Null, &Value::Null),
        "customers have no working hours by default: {c}"
    );
    // The default at work: a message from Dora to Ann (a user without hours of her own) and
    // Carol (a customer) is held for Ann, without a ping, and sent to Carol.
    let dora = env.user("Dora").await;
    let (_, item, conv) = env.ticket("Printer").await;
    for person in [ann, carol] {
        env.follow_item(item, person).await;
    }
    let message = env.post(conv, dora, "Your printer is fixed", false).await;
    let row = held_by(&env, message, ann, "A2").await;
    let (_, explained) = env
        .call("GET", &format!("/messages/{message}/explain/{ann}"), None)
        .await;
    assert!(
        explained
            .to_string()
            .contains("held: outside working hours until"),
        "{explained}"
    );
    assert!(
        row["email_reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("held: outside working hours until "),
        "{row}"
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT payload FROM live_events WHERE person_id = {ann} AND message_id = {message}"
        )),
        r#"{"quiet": true}"#
    );
    let deadline = Instant::now() + SETTLE;
    while row_of(&env, message, carol).await["email_state"] != "sent" {
        assert!(Instant::now() < deadline, "Carol's email did not go");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, b) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"working_hours": "none"})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        (&b["working_hours"], &b["outside_hours_until"]),
        (&json!("none"), &Value::Null),
        "{b}"
    );
    let (status, b) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"working_hours": hours("europe/berlin")})),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["working_hours"]["time_zone"], "Europe/Berlin", "{b}");
    assert!(
        b["outside_hours_until_local"]
            .as_str()
            .unwrap_or_default()
            .ends_with("Europe/Berlin"),
        "{b}"
    );

    let bad = [
        (json!("always"), "expected null"),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00"}),
            "time_zone is missing",
        ),
        (
            json!({"days": ["funday"], "start": "09:00", "end": "17:00", "time_zone": "UTC"}),
            "is not one of",
        ),
        (
            json!({"days": [], "start": "09:00", "end": "17:00", "time_zone": "UTC"}),
            "at least one day",
        ),
        (
            json!({"days": ["mon", "mon"], "start": "09:00", "end": "17:00", "time_zone": "UTC"}),
            "listed twice",
        ),
        (
            json!({"days": ["mon"], "start": "9:00", "end": "17:00", "time_zone": "UTC"}),
            "not a time of day",
        ),
        (
            json!({"days": ["mon"], "start": "25:00", "end": "17:00", "time_zone": "UTC"}),
            "not a time of day",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "09:00", "time_zone": "UTC"}),
            "the same as start",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00", "time_zone": "Mars/Olympus"}),
            "not an IANA time zone",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00", "time_zone": "UTC\u{0}; DROP TABLE people"}),
            "NUL",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00", "time_zone": "Europe/\u{7}Berlin"}),
            "not a time zone name",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00", "time_zone": "<+03>-3"}),
            "not an IANA time zone",
        ),
        (
            json!({"days": ["mon"], "start": "09:00", "end": "17:00", "time_zone": "UTC", "lunch": "12:00"}),
            "unknown field",
        ),
    ];
    for (hours, says) in bad {
        let (status, body) = env
            .call(
                "PUT",
                &format!("/people/{bob}/attention"),
                Some(json!({"working_hours": hours})),
            )
            .await;
        assert_eq!(status, 400, "{hours}: {body}");
        assert!(
            body["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("working_hours")),
            "{hours}: {body}"
        );
        assert!(
            body["error"].as_str().unwrap_or_default().contains(says)
                || body.to_string().contains(says),
            "{hours}: {body} should say {says}"
        );
    }
    let (status, body) = env
        .call(
            "PUT",
            "/attention/defaults",
            Some(json!({"working_hours": "none"})),
        )
        .await;
    assert_eq!(
        (status, &body["field"]),
        (400, &json!("working_hours")),
        "{body}"
    );
    let (status, body) = env
        .call(
            "PUT",
            "/attention/defaults",
            Some(json!({"working_hour": null})),
        )
        .await;
    assert_eq!(status, 400, "a misspelt field is refused: {body}");
    // Removing the default: Ann has no hours any more; Bob keeps his own.
    let (status, body) = env
        .call(
            "PUT",
            "/attention/defaults",
            Some(json!({"working_hours": null})),
        )
        .await;
    assert_eq!(
        (status, &body["working_hours"]),
        (200, &Value::Null),
        "{body}"
    );
    let a = attention(ann).await;
    assert_eq!(a["outside_hours_until"], Value::Null, "{a}");
    assert!(attention(bob).await["outside_hours_until"].is_string());

    // A pause of Bob's, past the start of his hours (his own, in Berlin): held under A1, its
    // end said in Berlin time too.
    env.follow_item(item, bob).await;
    let (status, body) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"dnd_until": in_a(47 * 60)})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let later = env.post(conv, dora, "And the scanner too", false).await;
    let row = held_by(&env, later, bob, "A1").await;
    let reason = row["email_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("held: do not disturb until ")
            && reason.contains(" Europe/Berlin (")
            && reason.ends_with(" UTC)"),
        "{row}"
    );
}

/// A2 end to end, across a daylight-saving change: the application clock is moved to a few
/// seconds before Berlin springs forward (2027-03-28 01:00 UTC), and Bob and Cy work every day
/// from 03:00 Berlin time. Ann's messages then are held for both (no ping, rule A2, the status
/// says until when). Bob gives up working hours: his held emails are judged again at once and
/// go. Cy's go at 03:00 CEST, which is 01:00 UTC: an hour earlier in UTC than the day before,
/// and than a fixed offset would make it.
#[tokio::test(flavor = "multi_thread")]
async fn a2_held_outside_working_hours_and_sent_when_they_start_across_a_dst_change() {
    const LEAD: i64 = 30;
    let env = Env::with("1s", &[("TIDINGS_SEND_LEASE", "2s")], &[]);
    let (ann, bob, cy, convs) = {
        let mut setup = env.spawn_named("setup", &["all"], &[]);
        env.wait_for_api().await;
        let (ann, bob, cy) = (
            env.user("Ann").await,
            env.user("Bob").await,
            env.user("Cy").await,
        );
        let mut convs = Vec::new();
        for subject in ["Printer", "Scanner"] {
            let (_, item, conv) = env.ticket(subject).await;
            for person in [ann, bob, cy] {
                env.follow_item(item, person).await;
            }
            convs.push(conv);
        }
        for person in [bob, cy] {
            let (status, body) = env
                .call(
                    "PUT",
                    &format!("/people/{person}/attention"),
                    Some(json!({"working_hours": {
                        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        "start": "03:00", "end": "12:00", "time_zone": "Europe/Berlin"}})),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        setup.kill9();
        (ann, bob, cy, convs)
    };
    let change: chrono::DateTime<chrono::Utc> = "2027-03-28T01:00:00Z".parse().unwrap();
    let offset =
        (change - chrono::Duration::seconds(LEAD) - tidings_common::clock::now()).num_seconds();
    let shifted_now = || tidings_common::clock::now() + chrono::Duration::seconds(offset);
    let _tidings = env.spawn_named(
        "shifted",
        &["all"],
        &[("TIDINGS_CLOCK_OFFSET", &offset.to_string())],
    );
    env.wait_for_api().await;
    let (_, c) = env
        .call("GET", &format!("/people/{cy}/attention"), None)
        .await;
    assert_eq!(
        (&c["outside_hours_until"], &c["outside_hours_until_local"]),
        (
            &json!("2027-03-28T01:00:00Z"),
            &json!("Sun 2027-03-28 03:00 Europe/Berlin")
        ),
        "{c}"
    );
    let first = env
        .post(convs[0], ann, "Before the clocks change", false)
        .await;
    let second = env.post(convs[1], ann, "Scanner is fine", false).await;
    for (message, person) in [(first, bob), (second, bob), (first, cy), (second, cy)] {
        let row = held_by(&env, message, person, "A2").await;
        assert_eq!(
            row["email_reason"],
            "held: outside working hours until Sun 2027-03-28 03:00 Europe/Berlin \
             (2027-03-28 01:00 UTC)",
            "{row}"
        );
    }
    assert!(
        shifted_now() < change,
        "held only after 03:00 Berlin time: the test's lead of {LEAD} s was too short"
    );
    let quiet = env.sql(&format!(
        "SELECT DISTINCT payload FROM live_events WHERE person_id IN ({bob}, {cy}) \
         AND kind = 'notification'"
    ));
    assert_eq!(quiet, r#"{"quiet": true}"#, "no ping outside working hours");

    // Bob gives up working hours: both his held emails go now, one per conversation.
    let (status, _) = env
        .call(
            "PUT",
            &format!("/people/{bob}/attention"),
            Some(json!({"working_hours": "none"})),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + SETTLE;
    while env.mails_to("bob@example.com").len() < 2 {
        assert!(
            Instant::now() < deadline,
            "Bob's released emails did not go{}",
            support::log_tails(env.root(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        shifted_now() < change,
        "Bob's emails went before 03:00, when he had no working hours"
    );
    assert!(env.mails_to("cy@example.com").is_empty());

    // Cy's go at 03:00 Berlin time.
    for message in [first, second] {
        let d = env
            .settled(message, SETTLE + Duration::from_secs(LEAD as u64))
            .await;
        let row = row_of(&env, message, cy).await;
        assert_eq!(row["email_state"], "sent", "{d}");
        let sent_at: chrono::DateTime<chrono::Utc> =
            row["emailed_at"].as_str().unwrap().parse().unwrap();
        assert!(
            sent_at >= change && sent_at < change + chrono::Duration::seconds(30),
            "sent at {sent_at}: at 03:00 Berlin time (01:00 UTC), not an hour later"
        );
    }
    assert_eq!(env.mails_to("cy@example.com").len(), 2);
}
