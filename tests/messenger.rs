//! In-app first (SPEC D1, D4, D5, D8, P1): person sessions, the live event feed and the
//! messenger page, on real services and in a real browser (Debian's Chromium, headless).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::live::{Driver, Sse};
use support::{Env, SECRET, TOKEN};

const SETTLE: Duration = Duration::from_secs(30);
const LIVE: Duration = Duration::from_secs(10);

/// Ann and Ben follow a ticket's conversation; returns (ann, ben, item, conversation).
async fn team(env: &Env) -> (i64, i64, i64, i64) {
    let ann = env.user("Ann").await;
    let ben = env.user("Ben").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, ben).await;
    (ann, ben, item, conv)
}

/// Opens the messenger in `view` signed in as `person`, and waits until it is live.
async fn sign_in(view: &support::live::Browser<'_>, env: &Env, person: i64) {
    view.goto(&format!(
        "{}/messenger#token={}",
        env.base(),
        env.session(person).await
    ))
    .await;
    view.wait_until(
        "ready",
        "document.body.dataset.ready === 'yes' && document.body.dataset.live === 'on'",
        LIVE,
    )
    .await;
}

/// Every path parameter replaced by `id`.
fn concrete(path: &str, id: i64) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with('{') {
                if part == "{address}" {
                    "a@example.com".to_string()
                } else if part == "{token}" || part == "{file}" || part == "{event}" {
                    "x".to_string()
                } else {
                    id.to_string()
                }
            } else {
                part.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every documented operation is tried with the other kind of token: a person token on each
/// admin route, the API token on each `/me` route. Both are refused with 403 before the
/// route runs, so nothing is read or changed.
#[tokio::test(flavor = "multi_thread")]
async fn each_kind_of_token_is_refused_on_every_route_of_the_other() {
    let env = Env::new("1s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let (ann, ben, _, conv) = team(&env).await;
    let token = env.session(ann).await;
    let doc = env.ok("GET", "/openapi.json", None).await;
    let (mut admin, mut person) = (0, 0);
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let schemes: Vec<&str> = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_object())
                .flat_map(|s| s.keys().map(String::as_str))
                .collect();
            let url = concrete(path, ben);
            let body = Some(json!({}));
            if schemes.contains(&"bearer") {
                let (status, answer) = env
                    .call_as(&token, &method.to_uppercase(), &url, body)
                    .await;
                assert_eq!(status, 403, "{method} {url} with a person token: {answer}");
                assert!(answer["error"].as_str().unwrap().contains("person token"));
                admin += 1;
            } else if schemes.contains(&"person") {
                let (status, answer) = env.call(&method.to_uppercase(), &url, body).await;
                assert_eq!(status, 403, "{method} {url} with the API token: {answer}");
                person += 1;
            }
        }
    }
    assert!(admin > 40, "admin operations tried: {admin}");
    assert!(person >= 9, "/me operations tried: {person}");
    // Nothing was changed on Ben's behalf.
    let conversation = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    assert_eq!(conversation["messages"].as_array().unwrap().len(), 0);
    // No token, a forged one, one for another purpose, an expired one: 401, saying why.
    let (status, _) = env.call_as("", "GET", "/me", None).await;
    assert_eq!(status, 401);
    let forged = format!("{ann}.9999999999.aaaaaaaaaaaaaaaaaaaaaaaaaa");
    let (status, answer) = env.call_as(&forged, "GET", "/me", None).await;
    assert_eq!(status, 401, "{answer}");
    let other_purpose =
        tidings_common::mail::sign_link(SECRET.as_bytes(), "reset", ann, 9_999_999_999);
    assert_eq!(env.call_as(&other_purpose, "GET", "/me", None).await.0, 401);
    let expired = tidings_common::mail::sign_link(SECRET.as_bytes(), "session.0", ann, 1_000);
    let (status, answer) = env.call_as(&expired, "GET", "/me", None).await;
    assert_eq!(status, 401);
    assert!(
        answer["error"].as_str().unwrap().contains("expired"),
        "{answer}"
    );
    // The API token is never read from a cookie.
    let resp = reqwest::Client::new()
        .get(env.base() + "/people/1")
        .header("Cookie", format!("tidings_session={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// P1, D5 and F1 through the `/me` routes: a person token reads only what its person may
/// see, posts only as them, and the messenger's cookie carries the same session.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_token_reaches_only_what_its_person_may_see() {
    let env = Env::new("1s");
    let _api = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    let (ann, ben, item, conv) = team(&env).await;
    let cora = env.customer("Cora").await;
    env.follow_item(item, cora).await;
    // Another project's conversation that Ann may not see once she sees followed projects only.
    let dave = env.user("Dave").await;
    let (_, _, other) = env.ticket("Payroll").await;
    env.add_participant(other, dave).await;
    env.ok(
        "PATCH",
        &format!("/people/{ann}/preferences"),
        Some(json!({"see_conversations": "followed_projects"})),
    )
    .await;
    let internal = env.post(conv, ben, "Internal note", true).await;
    let external = env.post(conv, ben, "Hello Cora", false).await;
    let (ann_token, cora_token) = (env.session(ann).await, env.session(cora).await);

    let (status, answer) = env
        .call_as(
            &ann_token,
            "GET",
            &format!("/me/conversations/{other}"),
            None,
        )
        .await;
    assert_eq!(status, 403, "P1: {answer}");
    assert!(answer["error"].as_str().unwrap().contains("may not see"));
    let (status, _) = env
        .call_as(&ann_token, "GET", "/me/conversations/987654", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = env
        .call_as(
            &ann_token,
            "POST",
            &format!("/me/conversations/{other}/messages"),
            Some(json!({"body": "sneaky"})),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = env
        .call_as(
            &ann_token,
            "PUT",
            &format!("/me/conversations/{other}/seen"),
            Some(json!({"message_id": external})),
        )
        .await;
    assert_eq!(status, 403);

    // D5: Cora sees the external message only; the internal one is not even found.
    let (status, view) = env
        .call_as(
            &cora_token,
            "GET",
            &format!("/me/conversations/{conv}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{view}");
    let bodies: Vec<&str> = view["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["Hello Cora"]);
    let (status, _) = env
        .call_as(
            &cora_token,
            "GET",
            &format!("/me/messages/{internal}/deliveries"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, answer) = env
        .call_as(
            &cora_token,
            "POST",
            &format!("/me/conversations/{conv}/messages"),
            Some(json!({"body": "hi", "internal": true})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(answer["field"], "internal");
    let (status, _) = env
        .call_as(
            &cora_token,
            "GET",
            &format!("/me/conversations/{other}"),
            None,
        )
        .await;
    assert_eq!(
        status, 403,
        "F1: a customer sees only conversations they follow"
    );
    let (status, posted) = env
        .call_as(
            &cora_token,
            "POST",
            &format!("/me/conversations/{conv}/messages"),
            Some(json!({"body": "Thanks!"})),
        )
        .await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(posted["author_id"], cora, "posted as herself");
    assert_eq!(posted["internal"], false);

    // Ann's preferences through /me; Cora has none to edit.
    let (status, prefs) = env
        .call_as(
            &ann_token,
            "PATCH",
            "/me/preferences",
            Some(json!({"from_customers": "all"})),
        )
        .await;
    assert_eq!(
        (status, prefs["from_customers"].clone()),
        (200, json!("all"))
    );
    let (status, _) = env
        .call_as(
            &cora_token,
            "PATCH",
            "/me/preferences",
            Some(json!({"from_customers": "all"})),
        )
        .await;
    assert_eq!(status, 403);

    // The cookie: HttpOnly and SameSite=Strict, and it works on the /me routes only.
    let client = reqwest::Client::new();
    let resp = client
        .post(env.base() + "/session")
        .header("Origin", env.base())
        .json(&json!({"token": ann_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let me: Value = client
        .get(env.base() + "/me")
        .header("Cookie", &pair)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], ann);
    let admin = client
        .get(env.base() + &format!("/people/{ann}"))
        .header("Cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status().as_u16(), 403);
    let resp = client
        .post(env.base() + "/session")
        .header("Origin", env.base())
        .json(&json!({"token": "1.2.3"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// D1 pushed, D8 live, and resumption: a notification reaches the recipient's stream (with
/// a ping and the unread counts) and the author's as a conversation event (no ping); a seen
/// report reaches the reader's other streams and the author as "seen by"; an event caused
/// through one api process reaches a stream held by another; `Last-Event-ID` replays exactly
/// the missed events, and a client too far behind gets `reset`.
#[tokio::test(flavor = "multi_thread")]
async fn live_events_reach_every_stream_and_resume_exactly() {
    let env = Env::new("30s");
    let _roles = env.spawn(&["api", "dispatch"]);
    let second_port = support::free_port();
    let second_addr = format!("127.0.0.1:{second_port}");
    let mut second_api = env.spawn_named("api2", &["api"], &[("TIDINGS_HTTP_ADDR", &second_addr)]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let second = format!("http://127.0.0.1:{second_port}");
    let (ann, ben, _, conv) = team(&env).await;
    let (ann_token, ben_token) = (env.session(ann).await, env.session(ben).await);
    // Ann's stream is held by the second api; Ben's by the first.
    let mut ann_stream = loop {
        let s = Sse::open(&second, &ann_token, None).await;
        if s.status == 200 {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ann_stream.headers["content-type"], "text/event-stream");
    assert_eq!(ann_stream.headers["x-accel-buffering"], "no");
    let mut ben_stream = Sse::open(&env.base(), &ben_token, None).await;
    // The second api's listener binds shortly after it starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let m1 = env.post(conv, ben, "Is the printer fixed?", false).await;
    let n = ann_stream
        .next_of("notification", LIVE)
        .await
        .expect("Ann is notified live");
    assert_eq!(n.data["message_id"], m1);
    assert_eq!(n.data["conversation_id"], conv);
    assert_eq!(n.data["author"], "Ben");
    assert_eq!(n.data["ping"], true);
    assert_eq!(n.data["excerpt"], "Is the printer fixed?");
    assert_eq!(n.data["unread"], json!({"conversation": 1, "total": 1}));
    let own = ben_stream
        .next_of("conversation", LIVE)
        .await
        .expect("Ben's conversation moves up");
    assert_eq!(own.data["message_id"], m1);
    assert_eq!(
        own.data["ping"], false,
        "D3: never a ping for your own message"
    );
    assert_eq!(own.data["unread"]["total"], 0, "D4: posting is seeing");

    // Seen through the first api reaches Ann's stream on the second, and Ben as "seen by".
    let (status, _) = env
        .call_as(
            &ann_token,
            "PUT",
            &format!("/me/conversations/{conv}/seen"),
            Some(json!({"message_id": m1})),
        )
        .await;
    assert_eq!(status, 204);
    let seen = ann_stream.next_of("seen", LIVE).await.expect("seen event");
    assert_eq!(seen.data["unread"], json!({"conversation": 0, "total": 0}));
    let seen_by = ben_stream
        .next_of("delivery", LIVE)
        .await
        .expect("Ben sees Ann saw it");
    assert_eq!(seen_by.data["status"], "seen");
    assert_eq!(seen_by.data["person"], "Ann");
    assert!(seen.id.unwrap() > n.id.unwrap(), "ids increase per person");

    // Resumption: Ann misses two messages while disconnected.
    let resume_after = seen.id.unwrap();
    drop(ann_stream);
    let m2 = env.post(conv, ben, "Second", false).await;
    let m3 = env.post(conv, ben, "Third", false).await;
    env.dispatched(m3).await;
    let mut resumed = Sse::open(&env.base(), &ann_token, Some(resume_after)).await;
    let replayed = resumed.drain(Duration::from_secs(2)).await;
    let messages: Vec<Value> = replayed
        .iter()
        .filter(|e| e.kind == "notification")
        .map(|e| e.data["message_id"].clone())
        .collect();
    assert_eq!(messages, [json!(m2), json!(m3)], "{replayed:?}");
    assert_eq!(replayed.len(), 2, "exactly the missed events: {replayed:?}");
    assert!(replayed.iter().all(|e| e.id.unwrap() > resume_after));
    assert_eq!(replayed[1].data["unread"]["total"], 2);
    // A new stream starts from now: nothing is replayed.
    let mut fresh = Sse::open(&env.base(), &ann_token, None).await;
    assert!(fresh.drain(Duration::from_millis(800)).await.is_empty());

    // Far behind: more than the replay limit missed.
    env.sql(&format!(
        "INSERT INTO live_events (person_id, kind, payload)
         SELECT {ann}, 'seen', '{{}}'::jsonb FROM generate_series(1, 1001)"
    ));
    let mut behind = Sse::open(&env.base(), &ann_token, Some(resume_after)).await;
    let reset = behind.next(LIVE).await.expect("an event");
    assert_eq!(reset.kind, "reset", "{reset:?}");
    assert!(behind.drain(Duration::from_millis(500)).await.is_empty());
    // Its id resumes after everything there is.
    let mut after_reset = Sse::open(&env.base(), &ann_token, reset.id).await;
    assert!(
        after_reset
            .drain(Duration::from_millis(500))
            .await
            .is_empty()
    );
    // One person cannot take every connection of a server: past 16 streams, 429.
    let mut held_streams = Vec::new();
    for _ in 0..16 {
        let s = Sse::open(&env.base(), &ben_token, None).await;
        if s.status == 429 {
            break;
        }
        held_streams.push(s);
    }
    // Ben's own stream from the start of the test is one of the 16.
    assert_eq!(held_streams.len(), 15);
    assert_eq!(Sse::open(&env.base(), &ben_token, None).await.status, 429);
    drop(held_streams);
    // SIGTERM ends the streams an api holds, cleanly, and the process exits at once.
    let mut held = Sse::open(&second, &ben_token, None).await;
    assert_eq!(held.status, 200);
    let stopping = Instant::now();
    let status = tokio::task::spawn_blocking(move || second_api.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(held.next(Duration::from_secs(5)).await.is_none());
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the stream ended with the process: {:?}",
        stopping.elapsed()
    );
    // A stream of a person who no longer may use the messenger is refused.
    env.sql(&format!(
        "UPDATE people SET active = false WHERE id = {ann}"
    ));
    assert_eq!(Sse::open(&env.base(), &ann_token, None).await.status, 403);
}

/// The messenger page in a real browser: seen in time (badge, ping, conversation on top;
/// opening it suppresses the email; Ben's view says "Seen by Ann"), two tabs (opening the
/// conversation in one clears the badge in the other), keyboard use, the narrow screen and
/// no console errors.
#[tokio::test(flavor = "multi_thread")]
async fn messenger_seen_in_time_sends_no_email() {
    let env = Env::new("4s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, conv) = team(&env).await;
    let (_, _, older) = env.ticket("Older").await;
    env.add_participant(older, ann).await;
    let first = env.post(older, ben, "An older conversation", false).await;
    env.settled(first, SETTLE).await;
    env.ok(
        "PUT",
        &format!("/conversations/{older}/seen"),
        Some(json!({"person_id": ann, "message_id": first})),
    )
    .await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let ann_view = driver.browser("ann").await;
    let url = |token: &str| format!("{}/messenger#token={token}", env.base());
    ann_view.goto(&url(&env.session(ann).await)).await;
    ann_view
        .wait_until(
            "ready",
            "document.body.dataset.ready === 'yes' && document.body.dataset.live === 'on'",
            LIVE,
        )
        .await;
    ann_view
        .wait_until(
            "older listed",
            "document.querySelectorAll('#team .conversation').length === 1",
            LIVE,
        )
        .await;
    let badge_before: i64 = ann_view
        .js("return window.tidings.unread;", json!([]))
        .await
        .as_i64()
        .unwrap();
    // A second tab of Ann's, on the same session cookie.
    let (first_tab, second_tab) = ann_view.new_tab().await;
    ann_view.goto(&format!("{}/messenger", env.base())).await;
    ann_view
        .wait_until(
            "second tab ready",
            "document.body.dataset.live === 'on'",
            LIVE,
        )
        .await;
    ann_view.switch_to(&first_tab).await;

    let posted = Instant::now();
    let m = env.post(conv, ben, "Is the printer fixed?", false).await;
    ann_view
        .wait_until(
            "badge",
            &format!("document.getElementById('badge').textContent === '{}' && !document.getElementById('badge').hidden", badge_before + 1),
            Duration::from_secs(1),
        )
        .await;
    ann_view
        .wait_until("ping", "window.tidings.pings === 1", Duration::from_secs(1))
        .await;
    ann_view
        .wait_until(
            "on top",
            &format!("document.querySelector('#team .conversation').dataset.id === '{conv}'"),
            Duration::from_secs(1),
        )
        .await;
    let live_latency = posted.elapsed();
    let title = ann_view.js("return document.title;", json!([])).await;
    assert!(title.as_str().unwrap().starts_with('('), "{title}");
    // The other tab got it too.
    ann_view.switch_to(&second_tab).await;
    ann_view
        .wait_until(
            "badge in the other tab",
            "!document.getElementById('badge').hidden",
            LIVE,
        )
        .await;
    ann_view.switch_to(&first_tab).await;

    // Opened by keyboard: focus the conversation and press Enter.
    ann_view
        .js(
            &format!("document.querySelector('#team .conversation[data-id=\"{conv}\"]').focus();"),
            json!([]),
        )
        .await;
    ann_view
        .type_into(
            &format!("#team .conversation[data-id=\"{conv}\"]"),
            "\u{E007}",
        )
        .await;
    ann_view
        .wait_until(
            "opened",
            "document.querySelectorAll('#messages .message').length === 1",
            LIVE,
        )
        .await;
    ann_view
        .wait_until(
            "badge cleared",
            "document.getElementById('badge').hidden",
            LIVE,
        )
        .await;
    ann_view.switch_to(&second_tab).await;
    ann_view
        .wait_until(
            "badge cleared in the other tab",
            "document.getElementById('badge').hidden && document.title === 'Messenger'",
            LIVE,
        )
        .await;
    ann_view.switch_to(&first_tab).await;

    // D4: seen within the window, so no email after it.
    let settled = env.settled(m, SETTLE).await;
    let ann_row = settled["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == ann)
        .cloned()
        .unwrap();
    assert_eq!(ann_row["email_state"], "skipped", "{ann_row}");
    assert!(
        env.mails_to("ann@example.com")
            .iter()
            .all(|mail| !String::from_utf8_lossy(&mail.raw).contains("printer fixed")),
        "Ann was emailed about a message she saw"
    );

    // Ben's view of his message: seen by Ann.
    let ben_view = driver.browser("ben").await;
    ben_view.goto(&url(&env.session(ben).await)).await;
    ben_view
        .wait_until("ben ready", "document.body.dataset.live === 'on'", LIVE)
        .await;
    ben_view
        .click(&format!("#team .conversation[data-id=\"{conv}\"]"))
        .await;
    ben_view
        .wait_until(
            "seen by Ann",
            "[...document.querySelectorAll('.delivery.seen')].some(e => e.textContent.includes('Seen by Ann'))",
            LIVE,
        )
        .await;
    // Ann answers from the composer; Ben's open view shows it live, with no ping for Ann.
    ann_view
        .type_into("#body", "Yes, fixed this morning.")
        .await;
    ann_view.click("#send").await;
    ben_view
        .wait_until(
            "answer arrives",
            "[...document.querySelectorAll('.message .body')].some(e => e.textContent === 'Yes, fixed this morning.')",
            LIVE,
        )
        .await;
    assert_eq!(
        ann_view.js("return window.tidings.pings;", json!([])).await,
        json!(1)
    );
    // 360 px wide: the list gives way to the open conversation, nothing overflows.
    ben_view.resize(360, 720).await;
    ben_view
        .wait_until(
            "narrow",
            "document.documentElement.scrollWidth <= window.innerWidth",
            LIVE,
        )
        .await;
    let shot = ben_view.screenshot("narrow").await;
    assert!(std::fs::metadata(shot).unwrap().len() > 1000);
    // A message in another conversation while this one is open: badge and ping, and Ann's
    // own answer shows Ben has seen it.
    env.post(older, ben, "The toner is low as well", false)
        .await;
    ann_view
        .wait_until(
            "badge for the other conversation",
            "document.getElementById('badge').textContent === '1' && window.tidings.pings === 2",
            LIVE,
        )
        .await;
    ann_view
        .wait_until(
            "seen by Ben",
            "[...document.querySelectorAll('.delivery.seen')].some(e => e.textContent.includes('Seen by Ben'))",
            LIVE,
        )
        .await;
    let shot = ann_view.screenshot("messenger").await;
    // The README's picture of the messenger is this screenshot.
    if let Ok(dir) = std::env::var("TIDINGS_SCREENSHOT_DIR") {
        std::fs::copy(&shot, std::path::Path::new(&dir).join("messenger.png")).unwrap();
    }
    for view in [&ann_view, &ben_view] {
        let errors = view.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }
    println!("post to badge, ping and reorder in the browser: {live_latency:?}");
    ann_view.quit().await;
    ben_view.quit().await;
}

/// Not opened: Ann's email goes out after the window, and Ben's view says "Emailed to Ann".
/// The customer view (chat widget) shows external messages only, and posts external only.
#[tokio::test(flavor = "multi_thread")]
async fn messenger_not_opened_is_emailed_and_customers_see_external_only() {
    let env = Env::new("2s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, item, conv) = team(&env).await;
    let cora = env.customer("Cora").await;
    env.follow_item(item, cora).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let url = |token: &str| format!("{}/messenger#token={token}", env.base());
    let ben_view = driver.browser("ben").await;
    let seed = env.post(conv, ann, "Opening the ticket", false).await;
    env.settled(seed, SETTLE).await;
    ben_view.goto(&url(&env.session(ben).await)).await;
    ben_view
        .wait_until("ben ready", "document.body.dataset.live === 'on'", LIVE)
        .await;
    ben_view
        .click(&format!(".conversation[data-id=\"{conv}\"]"))
        .await;
    ben_view
        .wait_until(
            "opened",
            "document.querySelectorAll('#messages .message').length === 1",
            LIVE,
        )
        .await;
    // Ben writes an internal note, then an external answer, from the composer.
    ben_view
        .click("input[name=visibility][value=internal]")
        .await;
    ben_view
        .type_into("#body", "Internal: check the toner")
        .await;
    ben_view.click("#send").await;
    ben_view
        .wait_until(
            "note shown",
            "document.querySelectorAll('#messages .message.internal').length === 1",
            LIVE,
        )
        .await;
    ben_view
        .click("input[name=visibility][value=external]")
        .await;
    ben_view.type_into("#body", "We are on it").await;
    ben_view.click("#send").await;
    ben_view
        .wait_until(
            "answer shown",
            "document.querySelectorAll('#messages .message').length === 3",
            LIVE,
        )
        .await;
    // Ann never opens it: after the window she is emailed, and Ben's open view says so.
    ben_view
        .wait_until(
            "emailed to Ann",
            "[...document.querySelectorAll('.delivery.emailed')].some(e => e.textContent.includes('Emailed to Ann'))",
            SETTLE,
        )
        .await;
    assert!(!env.mails_to("ann@example.com").is_empty());

    // Cora's chat widget: the external messages only, no internal choice, posts external.
    let cora_view = driver.browser("cora").await;
    cora_view.goto(&url(&env.session(cora).await)).await;
    cora_view
        .wait_until("cora ready", "document.body.dataset.live === 'on'", LIVE)
        .await;
    cora_view
        .wait_until(
            "cora's list",
            "document.querySelectorAll('.conversation').length === 1",
            LIVE,
        )
        .await;
    cora_view.click(".conversation").await;
    cora_view
        .wait_until(
            "cora opened",
            "document.querySelectorAll('#messages .message').length === 2",
            LIVE,
        )
        .await;
    let texts = cora_view
        .js(
            "return document.getElementById('conversation').innerText;",
            json!([]),
        )
        .await;
    let texts = texts.as_str().unwrap();
    assert!(
        !texts.contains("toner") && !texts.contains("Internal"),
        "{texts}"
    );
    assert_eq!(
        cora_view
            .js("return document.getElementById('visibility').hidden && document.getElementById('prefs-open').hidden;", json!([]))
            .await,
        json!(true)
    );
    cora_view.type_into("#body", "Thank you!").await;
    cora_view.click("#send").await;
    ben_view
        .wait_until(
            "Cora's reply reaches Ben",
            "[...document.querySelectorAll('.message .body')].some(e => e.textContent === 'Thank you!')",
            LIVE,
        )
        .await;
    // Ben's view marks Cora's message as a customer's; Cora's own view marks nobody.
    ben_view
        .wait_until(
            "customer marked",
            "[...document.querySelectorAll('.message')].some(m => m.querySelector('.body').textContent === 'Thank you!' && m.querySelector('.tag.customer'))",
            LIVE,
        )
        .await;
    assert_eq!(
        cora_view
            .js(
                "return document.querySelectorAll('.tag.customer').length;",
                json!([])
            )
            .await,
        json!(0)
    );
    let from_cora = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let last = from_cora["messages"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        (last["author_id"].clone(), last["internal"].clone()),
        (json!(cora), json!(false))
    );
    for view in [&ben_view, &cora_view] {
        let errors = view.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }
    ben_view.quit().await;
    cora_view.quit().await;
}

/// Serves `html` to every request on a port of its own: a page of another origin on the same
/// host (the same *site*, so the browser sends the SameSite=Strict cookie along).
async fn attacker_page(html: String) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        for _ in 0..20 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 8192];
            let _ = tokio::time::timeout(Duration::from_secs(2), socket.read(&mut buf)).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (port, task)
}

/// T6 in the browser: while Ann is signed in to the messenger, a page on another port of the
/// same host tries to post as her, with a `no-cors` fetch of `text/plain` JSON and with an
/// auto-submitted `<form enctype="text/plain">`. Chromium sends her cookie with both; neither
/// posts anything, and the form's answer names why.
#[tokio::test(flavor = "multi_thread")]
async fn t6_a_page_on_another_port_cannot_post_as_the_signed_in_person() {
    let env = Env::new("2s");
    let _roles = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, conv) = team(&env).await;
    let seed = env.post(conv, ben, "Hello Ann", false).await;
    env.dispatched(seed).await;
    let target = format!("{}/me/conversations/{conv}/messages", env.base());
    let html = format!(
        r#"<!doctype html><html lang="en"><head><title>A page of another origin</title></head><body>
<form id="f" method="post" enctype="text/plain" action="{target}">
<input type="hidden" name='{{"internal":false,"body":"forged by a form' value='"}}'>
</form>
<script>
fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}}, body: JSON.stringify({{body: "forged by fetch"}})}})
  .catch(() => null)
  .finally(() => {{ document.title = "fetched"; document.getElementById("f").submit(); }});
</script></body></html>"#
    );
    let (port, server) = attacker_page(html).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let ann_view = driver.browser("ann").await;
    ann_view
        .goto(&format!(
            "{}/messenger#token={}",
            env.base(),
            env.session(ann).await
        ))
        .await;
    ann_view
        .wait_until("signed in", "document.body.dataset.ready === 'yes'", LIVE)
        .await;
    ann_view.goto(&format!("http://127.0.0.1:{port}/")).await;
    // The form navigates the tab to the api's answer.
    ann_view
        .wait_until(
            "the form's answer",
            &format!("location.port !== '{port}' && document.body.innerText.includes('error')"),
            LIVE,
        )
        .await;
    let answer = ann_view
        .js("return document.body.innerText;", json!([]))
        .await;
    let answer = answer.as_str().unwrap();
    // Refused for where it came from: the cookie was sent, and did not suffice.
    assert!(answer.contains("cross-origin request refused"), "{answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let conversation = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let bodies: Vec<&str> = conversation["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["Hello Ann"], "a forged post got through");
    // Her session is intact: back on the messenger, she posts from the composer.
    ann_view.goto(&format!("{}/messenger", env.base())).await;
    ann_view
        .wait_until("back", "document.body.dataset.ready === 'yes'", LIVE)
        .await;
    ann_view
        .click(&format!(".conversation[data-id=\"{conv}\"]"))
        .await;
    ann_view
        .wait_until(
            "opened",
            "document.querySelectorAll('#messages .message').length === 1",
            LIVE,
        )
        .await;
    ann_view.type_into("#body", "Posted by Ann herself").await;
    ann_view.click("#send").await;
    ann_view
        .wait_until(
            "posted",
            "document.querySelectorAll('#messages .message').length === 2",
            LIVE,
        )
        .await;
    ann_view.quit().await;
    server.abort();
}

/// I9 in the browser: Cora attaches a screenshot and a PDF by picking them in the composer;
/// Ann's open page shows the thumbnail and the PDF under the new message live, and the
/// files download with the types their bytes have. Ann then sends two files by dropping one
/// on the composer and pasting the other, and they reach Cora's page.
#[tokio::test(flavor = "multi_thread")]
async fn i9_files_attached_in_the_messenger_reach_the_other_page_live() {
    let env = Env::new("30s");
    let _roles = env.spawn(&["api", "dispatch"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, _, item, conv) = team(&env).await;
    let cora = env.customer("Cora").await;
    env.follow_item(item, cora).await;
    let seed = env
        .post(
            conv,
            ann,
            "Could you send a screenshot of the error?",
            false,
        )
        .await;
    env.dispatched(seed).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let url = |token: &str| format!("{}/messenger#token={token}", env.base());
    let open = async |view: &support::live::Browser<'_>, token: String| {
        view.goto(&url(&token)).await;
        view.wait_until("ready", "document.body.dataset.live === 'on'", LIVE)
            .await;
        view.click(&format!(".conversation[data-id=\"{conv}\"]"))
            .await;
        view.wait_until(
            "opened",
            "document.querySelectorAll('#messages .message').length === 1",
            LIVE,
        )
        .await;
    };
    let ann_view = driver.browser("ann").await;
    open(&ann_view, env.session(ann).await).await;
    let cora_view = driver.browser("cora").await;
    open(&cora_view, env.session(cora).await).await;
    // A real screenshot, and a PDF, picked with the file chooser.
    let screenshot = cora_view.screenshot("the-error").await;
    let pdf = env.root().join("report.pdf");
    std::fs::write(
        &pdf,
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    )
    .unwrap();
    cora_view
        .type_into("#attach", screenshot.to_str().unwrap())
        .await;
    cora_view.type_into("#attach", pdf.to_str().unwrap()).await;
    cora_view
        .wait_until(
            "two files pending",
            "document.querySelectorAll('#pending li').length === 2",
            LIVE,
        )
        .await;
    cora_view.type_into("#body", "Here is the error").await;
    cora_view.click("#send").await;
    cora_view
        .wait_until(
            "sent",
            "document.querySelectorAll('#messages .message').length === 2 && document.querySelectorAll('#pending li').length === 0",
            LIVE,
        )
        .await;
    // Ann's page, live: the thumbnail (loaded) and the PDF under Cora's message.
    ann_view
        .wait_until(
            "files shown",
            "[...document.querySelectorAll('.message')].some(m => { const img = m.querySelector('img.thumb'); return img && img.complete && img.naturalWidth > 100 && [...m.querySelectorAll('.file-name')].some(n => n.textContent === 'report.pdf'); })",
            LIVE,
        )
        .await;
    let fetched = ann_view
        .js(
            "return [...document.querySelectorAll('a.file')].map(a => { const x = new XMLHttpRequest(); x.open('GET', a.href, false); x.send(); return x.status + ' ' + x.getResponseHeader('content-type') + ' ' + x.getResponseHeader('content-disposition').split(';')[0]; });",
            json!([]),
        )
        .await;
    let mut fetched: Vec<String> = serde_json::from_value(fetched).unwrap();
    fetched.sort();
    assert_eq!(
        fetched,
        ["200 application/pdf attachment", "200 image/png inline"],
        "downloads"
    );
    // Dropping a file on the composer and pasting one into the text box add them too.
    ann_view
        .js(
            "const drop = new DataTransfer(); drop.items.add(new File(['dropped text'], 'dropped.txt', {type: 'text/plain'})); document.getElementById('composer').dispatchEvent(new DragEvent('drop', {dataTransfer: drop, bubbles: true, cancelable: true})); const paste = new DataTransfer(); paste.items.add(new File(['pasted text'], 'pasted.txt', {type: 'text/plain'})); document.getElementById('body').dispatchEvent(new ClipboardEvent('paste', {clipboardData: paste, bubbles: true, cancelable: true})); return true;",
            json!([]),
        )
        .await;
    ann_view
        .wait_until(
            "dropped and pasted files pending",
            "[...document.querySelectorAll('#pending li')].map(l => l.textContent).join() .includes('dropped.txt') && document.querySelectorAll('#pending li').length === 2",
            LIVE,
        )
        .await;
    ann_view.click("#send").await;
    cora_view
        .wait_until(
            "the dropped and pasted files reach Cora",
            "['dropped.txt', 'pasted.txt'].every(n => [...document.querySelectorAll('.file-name')].some(e => e.textContent === n))",
            LIVE,
        )
        .await;
    let shot = ann_view.screenshot("files-in-a-conversation").await;
    assert!(std::fs::metadata(shot).unwrap().len() > 0);
    for view in [&ann_view, &cora_view] {
        let errors = view.console_errors().await;
        assert!(errors.is_empty(), "console errors: {errors:?}");
    }
    ann_view.quit().await;
    cora_view.quit().await;
}

/// D4 in the browser: the page reports a message seen only while the person could be reading
/// it. With Preferences open over the conversation, or after a long idle, a new
/// message is not seen, so it is emailed; closing the panel (by Escape) shows the conversation
/// again and reads it; input after idling reads it. And the event stream follows the page's
/// life: six visits away and back through the back/forward cache each come back live.
#[tokio::test(flavor = "multi_thread")]
async fn d4_seen_only_while_read_and_the_stream_follows_the_page() {
    let metrics = format!("127.0.0.1:{}", support::free_port());
    let env = Env::with("2s", &[("TIDINGS_METRICS_ADDR", &metrics)], &[]);
    // The api's open event streams, from its metrics.
    let open_streams = || async {
        let text = reqwest::get(format!("http://{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("tidings_live_streams "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, conv) = team(&env).await;
    let first = env.post(conv, ben, "First", false).await;
    env.settled(first, SETTLE).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    sign_in(&view, &env, ann).await;
    view.click(&format!("#team .conversation[data-id=\"{conv}\"]"))
        .await;
    view.wait_until(
        "opened and read",
        "document.querySelectorAll('#messages .message').length === 1 && document.getElementById('badge').hidden",
        LIVE,
    )
    .await;
    let emails_to_ann = || env.mails_to("ann@example.com").len();
    let before = emails_to_ann();

    // Covered: Preferences over the conversation. The message is not seen; it is emailed.
    view.click("#prefs-open").await;
    view.wait_until(
        "panel open",
        "!document.getElementById('prefs').hidden",
        LIVE,
    )
    .await;
    let covered = env.post(conv, ben, "Covered by the panel", false).await;
    view.wait_until("badge", "!document.getElementById('badge').hidden", LIVE)
        .await;
    env.settled(covered, SETTLE).await;
    assert_eq!(emails_to_ann(), before + 1, "a covered message is emailed");
    // Escape closes the panel: the conversation is back (not a blank pane) and read.
    view.type_into("#prefs-form select", "\u{E00C}").await;
    view.wait_until(
        "conversation back and read",
        "document.getElementById('prefs').hidden && !document.getElementById('conversation').hidden && document.querySelectorAll('#messages .message').length === 2 && document.getElementById('badge').hidden",
        LIVE,
    )
    .await;

    // Idle: no input for longer than the idle limit (the page's own clock set back).
    view.js(
        "window.tidings.lastInput = Date.now() - 6 * 60 * 1000;",
        json!([]),
    )
    .await;
    let idle = env.post(conv, ben, "Sent while idle", false).await;
    view.wait_until(
        "shown while idle",
        "document.querySelectorAll('#messages .message').length === 3",
        LIVE,
    )
    .await;
    env.settled(idle, SETTLE).await;
    assert_eq!(
        emails_to_ann(),
        before + 2,
        "a message shown to an idle page is emailed"
    );
    assert_eq!(
        view.js("return document.getElementById('badge').hidden;", json!([]))
            .await,
        json!(false)
    );
    // A key press brings the person back: read.
    view.type_into("#body", "x").await;
    view.wait_until(
        "read on return",
        "document.getElementById('badge').hidden",
        LIVE,
    )
    .await;

    // Away and back six times: each visit comes back with a live stream.
    let (port, _away) = attacker_page("<p>Elsewhere</p>".into()).await;
    let mut restored = 0;
    for visit in 1..=6 {
        // A mark on the page: it survives only if the page itself comes back from the cache.
        view.js("window.kept = true;", json!([])).await;
        view.goto(&format!("http://127.0.0.1:{port}/away{visit}"))
            .await;
        view.wait_until(
            "away",
            "document.body.textContent.includes('Elsewhere')",
            LIVE,
        )
        .await;
        view.js("history.back();", json!([])).await;
        view.wait_until(
            &format!("live again after visit {visit}"),
            "document.body && document.body.dataset.live === 'on'",
            LIVE,
        )
        .await;
        if view.js("return window.kept === true;", json!([])).await == json!(true) {
            restored += 1;
        }
    }
    // One stream is open, however many visits: the pages in the cache hold none.
    let started = Instant::now();
    while open_streams().await != 1.0 && started.elapsed() < LIVE {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open_streams().await, 1.0, "streams open after six visits");
    // The browser kept the page in its back/forward cache (the case that piled up streams).
    assert!(
        restored >= 5,
        "restored from the cache {restored} times of 6"
    );
    // And it still hears new messages.
    let last = env.post(conv, ben, "After the visits", false).await;
    view.wait_until(
        "the last message arrives",
        "document.querySelectorAll('#messages .message').length === 4",
        LIVE,
    )
    .await;
    env.settled(last, SETTLE).await;
    // For everyone: Arabic laid out right to left, a green unread bubble, one h1, labels in
    // words (no rule ids), and no count on a read conversation.
    let arabic = env.post(conv, ben, "هل تم إصلاح الطابعة؟", false).await;
    view.wait_until(
        "right to left",
        "[...document.querySelectorAll('#messages .message .body')].some((b) => b.dir === 'auto' && b.matches(':dir(rtl)'))",
        LIVE,
    )
    .await;
    env.settled(arabic, SETTLE).await;
    let page = view
        .js(
            "document.getElementById('prefs-open').click();              const badge = document.getElementById('badge'); badge.hidden = false;              return { green: getComputedStyle(badge).backgroundColor,                       h1: document.querySelectorAll('h1').length,                       ids: /\\b[PE][1-5] /.test(document.getElementById('prefs-form').textContent) };",
            json!([]),
        )
        .await;
    assert_eq!(page["green"], "rgb(19, 115, 51)", "{page}");
    assert_eq!(page["h1"], 1, "{page}");
    assert_eq!(page["ids"], false, "{page}");
    // Back to the list (the Messenger button): focus lands on the conversation just left.
    view.click("#prefs-close").await;
    view.click("#home").await;
    view.wait_until(
        "focus on the conversation left",
        &format!("document.activeElement && document.activeElement.dataset.id === '{conv}' && !document.getElementById('empty').hidden"),
        LIVE,
    )
    .await;
    // Sign out: the page is cleared and the session no longer works.
    view.click("#sign-out").await;
    view.wait_until(
        "signed out",
        "document.body.dataset.ready === 'signed-out' && document.querySelectorAll('#team .conversation').length === 0",
        LIVE,
    )
    .await;
    let after = view
        .js(
            "return fetch('/me', { credentials: 'same-origin' }).then((r) => r.status);",
            json!([]),
        )
        .await;
    assert_ne!(
        after,
        json!(200),
        "the session still works after signing out"
    );
    // (The other page's favicon request is reported against this page after going back, and
    // the test's own request after signing out is answered 401.)
    let errors: Vec<String> = view
        .console_errors()
        .await
        .into_iter()
        .filter(|e| {
            !e.contains("favicon.ico")
                && !e.contains(
                    "/me - Failed to load resource: the server responded with a status of 401",
                )
        })
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}

/// D4, the ways of not reading a conversation that is open on the screen: a hidden tab, a
/// minimized window and a visible window without focus (another window in front, as on a
/// second screen) each leave the message unseen and it is emailed; coming back reads it.
/// Delivery lines keep their order (emailed, then seen) with the full time on hover; the
/// inbox is read once per load; Preferences open and close at 360 px; and axe-core finds no
/// serious or critical violation in the list, the conversation or the panel.
#[tokio::test(flavor = "multi_thread")]
async fn d4_hidden_minimized_or_unfocused_pages_see_nothing() {
    let env = Env::new("2s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, conv) = team(&env).await;
    let first = env.post(conv, ben, "First", false).await;
    env.settled(first, SETTLE).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    sign_in(&view, &env, ann).await;
    let inbox_reads = view
        .js(
            "return performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/me/inbox')).length;",
            json!([]),
        )
        .await;
    assert_eq!(inbox_reads, json!(1), "the inbox is read once per load");
    let violations = view.axe().await;
    assert!(violations.is_empty(), "the list: {violations:?}");
    view.click(&format!("#team .conversation[data-id=\"{conv}\"]"))
        .await;
    view.wait_until(
        "opened and read",
        "document.querySelectorAll('#messages .message').length === 1 && document.getElementById('badge').hidden",
        LIVE,
    )
    .await;
    let violations = view.axe().await;
    assert!(violations.is_empty(), "the conversation: {violations:?}");
    let emails_to_ann = || env.mails_to("ann@example.com").len();
    let mut emailed = emails_to_ann();
    let mut shown = 1;

    // Each way away, then back: the message is emailed while away, and read on return.
    let (page, _blank) = view.new_tab().await;
    for way in ["hidden tab", "minimized window", "unfocused window"] {
        match way {
            // A new tab in front of the messenger's.
            "hidden tab" => {}
            "minimized window" => {
                view.switch_to(&page).await;
                view.minimize().await;
            }
            // Headless Chromium gives every window focus of its own, so another window in
            // front is what the page is told: it loses focus and stays visible.
            _ => {
                view.js(
                    "document.hasFocus = () => false; window.dispatchEvent(new Event('blur'));",
                    json!([]),
                )
                .await;
            }
        }
        let message = env
            .post(conv, ben, &format!("Sent to a {way}"), false)
            .await;
        env.settled(message, SETTLE).await;
        emailed += 1;
        shown += 1;
        assert_eq!(emails_to_ann(), emailed, "{way}: the message is emailed");
        match way {
            "hidden tab" => view.switch_to(&page).await,
            "minimized window" => view.resize(1000, 800).await,
            _ => {
                assert_eq!(
                    view.js(
                        "return document.visibilityState === 'visible' && !document.getElementById('badge').hidden;",
                        json!([])
                    )
                    .await,
                    json!(true),
                    "{way}: visible, and the message is unread"
                );
                view.js(
                    "delete document.hasFocus; window.dispatchEvent(new Event('focus'));",
                    json!([]),
                )
                .await;
            }
        }
        view.wait_until(
            &format!("{way}: read on return"),
            &format!(
                "document.querySelectorAll('#messages .message').length === {shown} && document.getElementById('badge').hidden && window.tidings.unread === 0"
            ),
            LIVE,
        )
        .await;
    }

    // The first message sent away was emailed, then seen on return: in that order, each with
    // its full time (to the second) on hover.
    let line = view
        .js(
            "const item = [...document.querySelectorAll('#messages .message')][1];              const line = [...item.querySelectorAll('.deliveries li')].find((l) => l.textContent.includes('Ann'));              return [...line.querySelectorAll('.delivery')].map((s) => [s.className, s.title]);",
            json!([]),
        )
        .await;
    let classes: Vec<&str> = line
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        ["delivery notified", "delivery emailed", "delivery seen"],
        "{line}"
    );
    for step in line.as_array().unwrap() {
        let title = step[1].as_str().unwrap();
        assert!(
            title.matches(':').count() == 2,
            "the full time to the second: {title}"
        );
    }

    // At 360 px: Preferences over the conversation, then closed, bring the conversation back.
    view.resize(360, 740).await;
    view.click("#prefs-open").await;
    view.wait_until(
        "panel at 360 px",
        "!document.getElementById('prefs').hidden && document.getElementById('conversation').hidden",
        LIVE,
    )
    .await;
    let violations = view.axe().await;
    assert!(violations.is_empty(), "Preferences: {violations:?}");
    view.click("#prefs-close").await;
    view.wait_until(
        "conversation back at 360 px",
        "!document.getElementById('conversation').hidden && document.getElementById('conversation').getBoundingClientRect().height > 200 && getComputedStyle(document.getElementById('list')).display === 'none' && document.activeElement === document.getElementById('body')",
        LIVE,
    )
    .await;
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}

/// D10 and the ping: two tabs of one person give one ping per message; with both hidden, a
/// desktop notification (permission granted in the browser, turned on from its button, never
/// asked on load) comes from one tab only, one per conversation, replaced by the next; a
/// click opens its conversation. A message in another conversation is announced to screen
/// readers; Arabic is laid out right to left; a browser that blocks audio says so on the
/// sound button until one click allows it.
#[tokio::test(flavor = "multi_thread")]
async fn d10_one_ping_and_one_desktop_notification_per_conversation() {
    let env = Env::new("30s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, printer) = team(&env).await;
    let (_, item, invoice) = env.ticket("Invoice").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, ben).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    let token = env.session(ann).await;
    view.goto(&format!("{}/messenger#token={token}", env.base()))
        .await;
    let ready = "document.body.dataset.ready === 'yes' && document.body.dataset.live === 'on'";
    view.wait_until("ready", ready, LIVE).await;
    // Never asked on load: the button offers it.
    let asked = view
        .js(
            "return [Notification.permission, document.getElementById('desktop').textContent.trim()];",
            json!([]),
        )
        .await;
    assert_eq!(
        asked,
        json!(["default", "Turn on desktop notifications"]),
        "{asked}"
    );
    // The person allows notifications for the site, then turns them on here.
    view.set_permission("notifications", "granted").await;
    view.wait_until(
        "allowed, not yet on",
        "document.body.dataset.desktop === 'off'",
        LIVE,
    )
    .await;
    view.click("#desktop").await;
    view.wait_until(
        "desktop notifications on",
        "document.body.dataset.desktop === 'on' && document.getElementById('desktop').getAttribute('aria-pressed') === 'true'",
        LIVE,
    )
    .await;

    // A second tab of the same person, in front of the first.
    let (first, second) = view.new_tab().await;
    view.goto(&format!("{}/messenger", env.base())).await;
    view.wait_until("second tab ready", ready, LIVE).await;
    let tabs = [first.clone(), second.clone()];
    // Each tab's pings and desktop notifications, once it has counted `unread` messages.
    let counts = async |unread: i64| {
        let mut counts = vec![];
        for tab in &tabs {
            view.switch_to(tab).await;
            view.wait_until(
                &format!("{unread} unread"),
                &format!("window.tidings.unread === {unread}"),
                LIVE,
            )
            .await;
            let c = view
                .js(
                    "return [Number(document.body.dataset.pings || 0), window.tidings.notices.size];",
                    json!([]),
                )
                .await;
            counts.push((c[0].as_i64().unwrap(), c[1].as_i64().unwrap()));
        }
        counts
    };
    env.post(printer, ben, "Is the printer fixed?", false).await;
    let after_one = counts(1).await;
    assert_eq!(
        after_one.iter().map(|c| c.0).sum::<i64>(),
        1,
        "one ping across two tabs: {after_one:?}"
    );
    assert_eq!(
        after_one.iter().map(|c| c.1).sum::<i64>(),
        0,
        "a tab in front: no desktop notification: {after_one:?}"
    );

    // Both tabs out of sight: three messages in two conversations.
    view.switch_to(&second).await;
    view.minimize().await;
    env.post(printer, ben, "Still broken?", false).await;
    env.post(invoice, ben, "The invoice is attached", false)
        .await;
    env.post(printer, ben, "Paper tray 2 is jammed", false)
        .await;
    // (Reading the tabs brings the window back, after every message has arrived.)
    view.switch_to(&second).await;
    view.wait_until("all arrived", "window.tidings.unread === 4", LIVE)
        .await;
    // The count can run ahead of the events: the list read for a conversation new to it
    // already counts the messages posted after, whose events (and pings) are still on
    // their way. So the pings are awaited too, and then counted exactly.
    let deadline = Instant::now() + LIVE;
    let after_four = loop {
        let counted = counts(4).await;
        if counted.iter().map(|c| c.0).sum::<i64>() >= 4 || Instant::now() > deadline {
            break counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        after_four.iter().map(|c| c.0).sum::<i64>(),
        4,
        "one ping per message: {after_four:?}"
    );
    let leader = after_four
        .iter()
        .position(|c| c.1 > 0)
        .expect("a desktop notification was raised");
    assert_eq!(
        after_four.iter().map(|c| c.1).collect::<Vec<_>>(),
        if leader == 0 { vec![2, 0] } else { vec![0, 2] },
        "one notification per conversation, from one tab: {after_four:?}"
    );
    view.switch_to(&tabs[leader]).await;
    let shown = view
        .js(
            "return [...window.tidings.notices.entries()].map(([id, n]) => [id, n.tag, n.title, n.body]).sort((a, b) => a[0] - b[0]);",
            json!([]),
        )
        .await;
    assert_eq!(
        shown,
        json!([
            [
                printer,
                format!("tidings-conversation-{printer}"),
                "Printer",
                "Ben: Paper tray 2 is jammed"
            ],
            [
                invoice,
                format!("tidings-conversation-{invoice}"),
                "Invoice",
                "Ben: The invoice is attached"
            ],
        ]),
        "the newest message of each conversation, replacing the one before"
    );
    // A click on the notification opens its conversation (the person is back at the screen).
    view.resize(1000, 800).await;
    view.switch_to(&tabs[leader]).await;
    view.to_front().await;
    view.js(
        &format!("window.tidings.notices.get({invoice}).dispatchEvent(new Event('click'));"),
        json!([]),
    )
    .await;
    view.wait_until(
        "the notification opened its conversation",
        &format!(
            "window.tidings.open === {invoice} && document.getElementById('subject').textContent === 'Invoice' && !window.tidings.notices.has({invoice}) && window.tidings.conversations.find((c) => c.conversation_id === {invoice}).unread === 0"
        ),
        LIVE,
    )
    .await;

    // A message in the other conversation is announced politely; Arabic reads right to left.
    env.post(printer, ben, "هل تم إصلاح الطابعة؟", false).await;
    view.wait_until(
        "announced",
        "document.getElementById('announce').getAttribute('aria-live') === 'polite' && document.getElementById('announce').textContent === 'New message from Ben in Printer: هل تم إصلاح الطابعة؟'",
        LIVE,
    )
    .await;
    view.wait_until(
        "the excerpt right to left",
        &format!(
            "document.querySelector('#team .conversation[data-id=\"{printer}\"] .excerpt').matches(':dir(rtl)')"
        ),
        LIVE,
    )
    .await;
    env.post(invoice, ben, "הקבלה מצורפת, תודה רבה", false)
        .await;
    view.wait_until(
        "Hebrew right to left in the open conversation",
        "[...document.querySelectorAll('#messages .message .body')].some((b) => b.matches(':dir(rtl)'))",
        LIVE,
    )
    .await;
    let shot = view.screenshot("desktop-notifications").await;
    // The help page's picture of the header's controls and a right-to-left message.
    if let Ok(dir) = std::env::var("TIDINGS_SCREENSHOT_DIR") {
        std::fs::copy(
            &shot,
            std::path::Path::new(&dir).join("messenger-controls.png"),
        )
        .unwrap();
    }
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;

    // A browser that blocks sound until the person clicks: the button says so, and one click
    // allows it.
    let strict = driver
        .browser_args(
            "ann-strict",
            &[support::live::AUTOPLAY],
            &[support::live::BLOCK_AUTOPLAY],
        )
        .await;
    // Chromium lets the first page a fresh browser opens play sound (most of the time: it
    // depends on when the renderer starts), so the messenger is the second page here.
    strict.goto("about:blank").await;
    strict
        .goto(&format!(
            "{}/messenger#token={}",
            env.base(),
            env.session(ann).await
        ))
        .await;
    strict.wait_until("ready", ready, LIVE).await;
    strict
        .wait_until(
            "sound blocked",
            "document.body.dataset.sound === 'blocked' && document.getElementById('mute-label').textContent === 'Sound blocked by the browser: click to allow'",
            LIVE,
        )
        .await;
    strict.click("#mute").await;
    strict
        .wait_until(
            "sound allowed",
            "document.body.dataset.sound === 'on' && document.getElementById('mute-label').textContent === 'Sound on' && document.getElementById('mute').getAttribute('aria-pressed') === 'false'",
            LIVE,
        )
        .await;
    strict.quit().await;
}

/// A4: a person mutes a conversation from the messenger, by mouse, and unmutes it by
/// keyboard. Muted, its messages still count as unread but ping nobody and email nobody
/// (the status under the message says so to its author); the other conversations ping as
/// before; unmuted, it pings again.
#[tokio::test(flavor = "multi_thread")]
async fn a4_a_muted_conversation_pings_and_emails_nobody() {
    let env = Env::new("1s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, printer) = team(&env).await;
    let (_, item, invoice) = env.ticket("Invoice").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, ben).await;
    env.post(printer, ben, "Is the printer fixed?", false).await;
    env.post(invoice, ben, "The invoice is attached", false)
        .await;

    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    sign_in(&view, &env, ann).await;
    let pings = async || {
        view.js(
            "return Number(document.body.dataset.pings || 0);",
            json!([]),
        )
        .await
        .as_i64()
        .unwrap()
    };
    view.click(&format!("#team .conversation[data-id=\"{printer}\"]"))
        .await;
    view.wait_until(
        "printer open",
        "document.getElementById('subject').textContent === 'Printer' && document.getElementById('conversation-mute').getAttribute('aria-pressed') === 'false'",
        LIVE,
    )
    .await;
    view.click("#conversation-mute").await;
    view.wait_until(
        "muted",
        &format!(
            "document.getElementById('conversation-mute').getAttribute('aria-pressed') === 'true' && document.querySelector('#team .conversation[data-id=\"{printer}\"] .tag.muted') !== null"
        ),
        LIVE,
    )
    .await;
    let violations = view.axe().await;
    assert!(violations.is_empty(), "{violations:?}");
    // Reading the invoice now: the printer's new message is neither seen nor pinged.
    view.click(&format!("#team .conversation[data-id=\"{invoice}\"]"))
        .await;
    view.wait_until(
        "invoice open",
        "document.getElementById('subject').textContent === 'Invoice'",
        LIVE,
    )
    .await;
    let before = pings().await;
    let quiet = env
        .post(printer, ben, "Paper tray 2 is jammed", false)
        .await;
    view.wait_until(
        "counted as unread",
        &format!(
            "window.tidings.conversations.find((c) => c.conversation_id === {printer}).unread === 1"
        ),
        LIVE,
    )
    .await;
    // The event that counted it is the one that would have pinged (before the count).
    assert_eq!(pings().await, before, "the muted conversation pinged");
    let d = env.settled(quiet, SETTLE).await;
    let row = d["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(ann))
        .cloned()
        .unwrap();
    assert_eq!(
        (
            &row["email_state"],
            &row["email_reason"],
            &row["email_rule"]
        ),
        (&json!("skipped"), &json!("muted"), &json!("A4")),
        "{d}"
    );
    // (The two messages posted before Ann opened the messenger were emailed to her.)
    assert!(
        env.mails_to("ann@example.com").iter().all(|m| !m
            .parsed()
            .body_text(0)
            .unwrap_or_default()
            .contains("Paper tray")),
        "the muted conversation's message was emailed"
    );
    // Another conversation still pings.
    env.post(invoice, ben, "Paid, thanks", false).await;
    view.wait_until(
        "the invoice pinged",
        &format!(
            "Number(document.body.dataset.pings || 0) === {}",
            before + 1
        ),
        LIVE,
    )
    .await;
    assert_eq!(
        pings().await,
        before + 1,
        "the muted conversation did not ping"
    );

    // Ben sees why Ann got no email, under his message.
    let ben_view = driver.browser("ben").await;
    sign_in(&ben_view, &env, ben).await;
    ben_view
        .click(&format!("#team .conversation[data-id=\"{printer}\"]"))
        .await;
    ben_view
        .wait_until(
            "the status says muted",
            "[...document.querySelectorAll('.delivery.muted')].some((s) => s.textContent.includes('Not emailed: Ann muted the conversation'))",
            LIVE,
        )
        .await;
    ben_view.quit().await;

    // Unmuted by keyboard: it pings again, and emails again.
    view.click(&format!("#team .conversation[data-id=\"{printer}\"]"))
        .await;
    view.wait_until(
        "printer open again",
        "document.getElementById('subject').textContent === 'Printer' && document.getElementById('conversation-mute').getAttribute('aria-pressed') === 'true'",
        LIVE,
    )
    .await;
    view.type_into("#conversation-mute", "\u{E007}").await;
    view.wait_until(
        "unmuted",
        &format!(
            "document.getElementById('conversation-mute').getAttribute('aria-pressed') === 'false' && document.querySelector('#team .conversation[data-id=\"{printer}\"] .tag.muted') === null"
        ),
        LIVE,
    )
    .await;
    view.click(&format!("#team .conversation[data-id=\"{invoice}\"]"))
        .await;
    view.wait_until(
        "invoice open again",
        "document.getElementById('subject').textContent === 'Invoice'",
        LIVE,
    )
    .await;
    let before = pings().await;
    let loud = env.post(printer, ben, "Fixed now", false).await;
    view.wait_until(
        "the printer pinged",
        &format!(
            "Number(document.body.dataset.pings || 0) === {}",
            before + 1
        ),
        LIVE,
    )
    .await;
    let d = env.settled(loud, SETTLE).await;
    assert!(
        d["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["recipient_id"] == json!(ann) && r["email_state"] == "sent"),
        "{d}"
    );
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}

/// A1 from the messenger: Ann pauses for an hour by choosing it in the header. A message for
/// her then counts as unread but does not ping, its email is held, and the status under the
/// message says so to its author; ending the pause sends the held email.
#[tokio::test(flavor = "multi_thread")]
async fn a1_a_pause_set_in_the_messenger_holds_the_email_and_says_so() {
    let env = Env::new("1s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, printer) = team(&env).await;
    env.post(printer, ben, "Is the printer fixed?", false).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    sign_in(&view, &env, ann).await;
    view.wait_until("not paused", "document.body.dataset.dnd === 'off'", LIVE)
        .await;
    view.click("#dnd").await;
    view.click("#dnd option[value='1h']").await;
    view.wait_until(
        "paused",
        "document.body.dataset.dnd === 'on' && document.getElementById('dnd-status').textContent.startsWith('Paused until')",
        LIVE,
    )
    .await;
    let violations = view.axe().await;
    assert!(violations.is_empty(), "{violations:?}");
    let pings = view
        .js(
            "return Number(document.body.dataset.pings || 0);",
            json!([]),
        )
        .await;
    let message = env
        .post(printer, ben, "Paper tray 2 is jammed", false)
        .await;
    view.wait_until("counted as unread", "window.tidings.unread === 2", LIVE)
        .await;
    assert_eq!(
        view.js(
            "return Number(document.body.dataset.pings || 0);",
            json!([])
        )
        .await,
        pings,
        "no ping while paused"
    );
    // Ben sees why Ann has no email yet, under his message.
    let ben_view = driver.browser("ben").await;
    sign_in(&ben_view, &env, ben).await;
    ben_view
        .click(&format!("#team .conversation[data-id=\"{printer}\"]"))
        .await;
    ben_view
        .wait_until(
            "the status says held",
            "[...document.querySelectorAll('.delivery.held')].some((s) => s.textContent.includes('Email to Ann held: do not disturb until'))",
            SETTLE,
        )
        .await;
    ben_view.quit().await;
    assert!(
        env.mails_to("ann@example.com").iter().all(|m| !m
            .parsed()
            .body_text(0)
            .unwrap_or_default()
            .contains("Paper tray")),
        "emailed during the pause"
    );
    // Ending the pause by keyboard sends what she still has not seen.
    view.type_into("#dnd", "Off\u{E007}").await;
    view.wait_until("not paused", "document.body.dataset.dnd === 'off'", LIVE)
        .await;
    env.settled(message, SETTLE).await;
    assert!(
        env.mails_to("ann@example.com").iter().any(|m| m
            .parsed()
            .body_text(0)
            .unwrap_or_default()
            .contains("Paper tray")),
        "the held email went out when the pause ended"
    );
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}

/// A2 from the messenger: Ann chooses working hours of her own in the preferences (by mouse
/// and keyboard) that do not include now. The header then says she is outside them, a message
/// for her counts as unread without a ping, its email is held and the status under the message
/// says so to its author; choosing no working hours sends it.
#[tokio::test(flavor = "multi_thread")]
async fn a2_working_hours_set_in_the_messenger_hold_the_email_and_say_so() {
    use chrono::Datelike;
    let env = Env::new("1s");
    let _roles = env.spawn(&["api", "dispatch", "mailer"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ben, _, printer) = team(&env).await;
    env.post(printer, ben, "Is the printer fixed?", false).await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    sign_in(&view, &env, ann).await;
    view.click("#prefs-open").await;
    view.wait_until(
        "the panel shows the hours",
        "!document.getElementById('prefs').hidden && document.getElementById('hours_mode').value === 'default'",
        LIVE,
    )
    .await;
    view.click("#hours_mode").await;
    view.click("#hours_mode option[value='own']").await;
    view.wait_until(
        "own hours shown",
        "!document.getElementById('hours_own').hidden",
        LIVE,
    )
    .await;
    // One working day, three days from now (in any zone, neither today nor yesterday).
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(tidings_common::clock::now()
        + chrono::Duration::days(3))
    .weekday()
    .num_days_from_monday()
        as usize];
    view.tick_only_day(|d| format!("#hours_own [data-day='{d}']"), day)
        .await;
    view.clear("#hours_zone").await;
    view.type_into("#hours_zone", "Europe/Berlin").await;
    view.click("#prefs-form button[type='submit']").await;
    view.wait_until(
        "outside working hours",
        "document.getElementById('hours_status').textContent.startsWith('Now outside working hours, until')
         && document.getElementById('dnd-status').textContent.startsWith('Outside working hours until')
         && document.body.dataset.hours === 'outside'",
        LIVE,
    )
    .await;
    let violations = view.axe().await;
    assert!(violations.is_empty(), "{violations:?}");
    let (_, attention) = env
        .call("GET", &format!("/people/{ann}/attention"), None)
        .await;
    assert_eq!(
        attention["working_hours"],
        json!({"days": [day], "start": "09:00", "end": "17:00", "time_zone": "Europe/Berlin"}),
        "{attention}"
    );
    view.click("#prefs-close").await;
    let pings = view
        .js(
            "return Number(document.body.dataset.pings || 0);",
            json!([]),
        )
        .await;
    let message = env
        .post(printer, ben, "Paper tray 2 is jammed", false)
        .await;
    view.wait_until("counted as unread", "window.tidings.unread === 2", LIVE)
        .await;
    assert_eq!(
        view.js(
            "return Number(document.body.dataset.pings || 0);",
            json!([])
        )
        .await,
        pings,
        "no ping outside working hours"
    );
    let ben_view = driver.browser("ben").await;
    sign_in(&ben_view, &env, ben).await;
    ben_view
        .click(&format!("#team .conversation[data-id=\"{printer}\"]"))
        .await;
    ben_view
        .wait_until(
            "the status says held",
            "[...document.querySelectorAll('.delivery.held')].some((s) => s.textContent.includes('Email to Ann held: outside working hours until'))",
            SETTLE,
        )
        .await;
    ben_view.quit().await;
    assert!(
        env.mails_to("ann@example.com").iter().all(|m| !m
            .parsed()
            .body_text(0)
            .unwrap_or_default()
            .contains("Paper tray")),
        "emailed outside working hours"
    );
    // No working hours, chosen by keyboard: the held email goes.
    view.click("#prefs-open").await;
    view.wait_until(
        "own hours loaded",
        "document.getElementById('hours_mode').value === 'own'",
        LIVE,
    )
    .await;
    view.type_into("#hours_mode", "None").await;
    view.wait_until(
        "none chosen",
        "document.getElementById('hours_mode').value === 'none' && document.getElementById('hours_own').hidden",
        LIVE,
    )
    .await;
    view.click("#prefs-form button[type='submit']").await;
    view.wait_until(
        "inside again",
        "document.body.dataset.hours === 'inside' && document.getElementById('dnd-status').textContent === ''",
        LIVE,
    )
    .await;
    env.settled(message, SETTLE).await;
    assert!(
        env.mails_to("ann@example.com").iter().any(|m| m
            .parsed()
            .body_text(0)
            .unwrap_or_default()
            .contains("Paper tray")),
        "the held email went out once Ann had no working hours"
    );
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}
