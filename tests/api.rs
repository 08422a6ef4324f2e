//! The api's contract for bad input, the binary's commands, and the workers' handling of
//! poison messages, on real services.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use support::{Env, TOKEN};

/// Every endpoint needs the bearer token; unknown ids get 404 and bad bodies 400 naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn api_rejects_bad_requests_clearly() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let http = reqwest::Client::new();

    for (method, path) in [
        ("GET", "/people/1"),
        ("POST", "/users"),
        ("GET", "/email-log"),
    ] {
        let req = http.request(method.parse().unwrap(), env.base() + path);
        let resp = req.try_clone().unwrap().send().await.unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} without a token");
        let resp = req.bearer_auth("wrong").send().await.unwrap();
        assert_eq!(resp.status(), 401, "{method} {path} with a wrong token");
    }
    let ok = http
        .get(env.base() + "/email-log")
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let (status, err) = env.call("GET", "/people/999999", None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("person 999999 not found"))
    );
    let (status, err) = env.call("GET", "/messages/424242/deliveries", None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("message 424242 not found"))
    );
    let (status, _) = env.call("PUT", "/items/77/followers/1", None).await;
    assert_eq!(status, 404);

    let (status, err) = env
        .call("POST", "/users", Some(json!({"name": "Ann"})))
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("email")),
        "{err}"
    );
    let (status, err) = env
        .call(
            "POST",
            "/users",
            Some(json!({"name": "Ann", "email": "not-an-address"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("email")),
        "{err}"
    );
    let ann = env.user("Ann").await;
    let (status, err) = env
        .call(
            "POST",
            "/users",
            Some(json!({"name": "Ann 2", "email": "ann@example.com"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (409, Some("email")),
        "{err}"
    );
    let (status, err) = env
        .call("POST", "/conversations", Some(json!({"subject": 5})))
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("subject")),
        "{err}"
    );
    let (status, err) = env
        .call(
            "POST",
            "/items",
            Some(json!({"project_id": 1, "kind": "epic", "title": "x"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("kind")),
        "{err}"
    );
    let (_, _, conv) = env.ticket("Errors").await;
    let (status, err) = env
        .call(
            "POST",
            &format!("/conversations/{conv}/messages"),
            Some(json!({"author_id": ann, "body": "hi"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("internal")),
        "{err}"
    );
    let (status, err) = env
        .call(
            "POST",
            &format!("/conversations/{conv}/messages"),
            Some(json!({"author_id": 31337, "body": "hi", "internal": false})),
        )
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("person 31337 not found"))
    );
    let (status, err) = env
        .call(
            "PUT",
            &format!("/conversations/{conv}/seen"),
            Some(json!({"person_id": ann, "message_id": 5555})),
        )
        .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("message 5555 not found"))
    );
    let resp = http
        .post(env.base() + "/projects")
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

/// A malformed event or batch goes to the dead-letter queue with the reason in a header, and
/// the workers keep consuming.
#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_and_workers_keep_going() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let topology = env.topology();
    let (conn, channel) = env.channel().await;
    for (exchange, key, payload) in [
        (
            topology.events_exchange(),
            "message.posted",
            &b"{\"message_id\": \"seven\"}"[..],
        ),
        (
            topology.events_exchange(),
            "message.posted.now",
            &b"[1, 2"[..],
        ),
        (
            topology.events_exchange(),
            "message.posted",
            &b"{\"message_id\": 987654}"[..],
        ),
        (topology.due_exchange(), "due", &b"\xff\xfe garbage"[..]),
        (
            topology.events_exchange(),
            "domain.user_created",
            &b"{\"event_id\": 987654}"[..],
        ),
        (
            topology.events_exchange(),
            "domain.item_assigned",
            &b"not json"[..],
        ),
        (
            topology.events_exchange(),
            "email.queued",
            &b"{\"outbox_ids\": \"all\"}"[..],
        ),
    ] {
        channel
            .basic_publish(
                exchange.into(),
                key.into(),
                Default::default(),
                payload,
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut consumer = channel
        .basic_consume(
            topology.dead_queue().into(),
            "".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 7 {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("dead letters arrive")
            .unwrap()
            .unwrap();
        let headers = delivery.properties.headers().clone().unwrap();
        let reason = headers
            .inner()
            .get(&lapin::types::ShortString::from("x-tidings-reason"))
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            })
            .expect("reason header is a string");
        reasons.push(reason);
        delivery.ack(Default::default()).await.unwrap();
    }
    reasons.sort();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("message 987654 does not exist")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("domain event 987654 does not exist")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.contains("malformed payload"))
            .count(),
        5,
        "{reasons:?}"
    );

    // Still working.
    let a = env.user("Ann").await;
    let b = env.user("Bob").await;
    let (_, item, conv) = env.ticket("After poison").await;
    env.follow_item(item, b).await;
    let message = env.post(conv, a, "still alive", false).await;
    env.settled(message, Duration::from_secs(30)).await;
    assert_eq!(env.mails_to("bob@example.com").len(), 1);
    let _ = conn.close(200, "bye".into()).await;
}

/// D1 "at once": bulk work in other processes (the mailer) hears every post a person makes,
/// on a private queue of its own, so it can step aside while people post; an email or an
/// inbound reply is not a post and is not heard.
#[tokio::test(flavor = "multi_thread")]
async fn d1_bulk_work_hears_the_posts_people_make() {
    use std::sync::Arc;
    use tidings_common::people_first::{self, PeopleFirst};
    let env = Env::new("60s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let people = Arc::new(PeopleFirst::new());
    let stop = tokio_util::sync::CancellationToken::new();
    let (listener_conn, _) = env.channel().await;
    let hearing = {
        let (people, stop, topology) = (people.clone(), stop.clone(), env.topology());
        tokio::spawn(
            async move { people_first::hear(&people, &listener_conn, &topology, &stop).await },
        )
    };
    let (_item, conv, _) = env.ticket("Printer").await;
    let agent = env.user("Ann").await;
    // The listener binds its queue in the background: post until it is heard (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while people.since_last().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no post heard in 20 s{}",
            support::log_tails(env.root(), 30)
        );
        env.post(conv, agent, "On my way", false).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(people.since_last().unwrap() < Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!people.active(), "still active 300 ms after the last post");
    // Bulk work (an emailed reply, on the bulk lane) is not heard.
    let (conn, channel) = env.channel().await;
    channel
        .basic_publish(
            env.topology().events_exchange().into(),
            "message.posted".into(),
            Default::default(),
            format!("{{\"message_id\": {}}}", i64::MAX).as_bytes(),
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        people.since_last().unwrap() >= Duration::from_millis(450),
        "bulk work was heard as a person's post"
    );
    // Every later post is heard.
    env.post(conv, agent, "Fixed it", false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while people.since_last().unwrap() >= Duration::from_millis(250) {
        assert!(
            std::time::Instant::now() < deadline,
            "a later post was not heard"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.cancel();
    hearing
        .await
        .expect("listener task")
        .expect("the listener ends cleanly when stopped");
    let _ = conn.close(200, "bye".into()).await;
}

/// D1 "at once": a message a person posts is dispatched on the interactive lane, ahead of a
/// backlog of bulk work (here 20,000 messages queued as inbound email would queue them, before
/// dispatch started): its notification is written while most of the backlog still waits.
#[tokio::test(flavor = "multi_thread")]
async fn d1_a_persons_post_is_dispatched_ahead_of_a_bulk_backlog() {
    const BULK: usize = 20_000;
    let env = Env::new("60s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let ben = env.user("Ben").await;
    let cat = env.customer("Cat").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    env.sql(&format!(
        "INSERT INTO messages (conversation_id, author_id, body, internal)
         SELECT {conv}, {cat}, 'Bulk ' || g, false FROM generate_series(1, {BULK}) g"
    ));
    let ids: Vec<i64> = env
        .sql(&format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM messages WHERE conversation_id = {conv}"
        ))
        .split(',')
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(ids.len(), BULK);
    let topology = env.topology();
    let (conn, channel) = env.channel().await;
    channel.confirm_select(Default::default()).await.unwrap();
    let mut confirms = Vec::with_capacity(BULK);
    for id in &ids {
        confirms.push(
            channel
                .basic_publish(
                    topology.events_exchange().into(),
                    "message.posted".into(),
                    Default::default(),
                    format!("{{\"message_id\": {id}}}").as_bytes(),
                    Default::default(),
                )
                .await
                .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _dispatch = env.spawn(&["dispatch"]);
    // Both lanes are consumed before the person posts.
    support::wait_for(env.root(), "dispatch consuming both lanes", async || {
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut attached = 0;
        for queue in [topology.dispatch_queue(), topology.dispatch_now_queue()] {
            if let Ok(q) = channel
                .queue_declare(queue.as_str().into(), passive, Default::default())
                .await
            {
                attached += usize::from(q.consumer_count() > 0);
            }
        }
        attached == 2
    })
    .await;
    let mine = env.post(conv, ben, "Is the printer fixed?", false).await;
    support::wait_for(env.root(), "the person's post dispatched", async || {
        env.sql(&format!(
            "SELECT count(*) FROM notifications WHERE message_id = {mine}"
        )) == "1"
    })
    .await;
    let waiting: usize = env
        .sql("SELECT count(*) FROM messages WHERE dispatched_at IS NULL")
        .parse()
        .unwrap();
    assert!(
        waiting > BULK / 2,
        "the post waited for the backlog: {waiting} of {BULK} bulk messages left"
    );
    // The backlog is then dispatched in full (Ann follows the item; Ben, a participant since
    // his post, is notified of the bulk messages dispatched after it).
    support::wait_for(env.root(), "the backlog dispatched", async || {
        env.sql("SELECT count(*) FROM messages WHERE dispatched_at IS NULL") == "0"
    })
    .await;
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM notifications WHERE conversation_id = {conv} AND recipient_id = {ann}"
        )),
        (BULK + 1).to_string()
    );
    let _ = conn.close(200, "bye".into()).await;
}

/// `tidings migrate` twice is a no-op (and creates the inbound project once); a bad configuration value stops the start naming the
/// variable; SIGTERM stops the roles cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn commands_migrate_config_errors_and_sigterm() {
    let env = Env::new("2s");
    let out = env.command(&["migrate"]).output().unwrap();
    assert!(out.status.success());
    // Again: the schema is current and the inbound project already exists (not a second one).
    let project = env.sql("SELECT id FROM projects WHERE name = 'Support'");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "database schema is up to date\nnew customer email becomes a ticket in project {project} (\"Support\")"
        )
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM projects WHERE name = 'Support'"),
        "1"
    );

    for (variable, value) in [
        ("TIDINGS_SEEN_WINDOW", "sixty"),
        ("TIDINGS_QUEUE_TYPE", "lazy"),
        ("TIDINGS_HTTP_ADDR", "everywhere"),
    ] {
        let out = env
            .command(&["run", "all"])
            .env(variable, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(variable), "{stderr}");
    }
    let out = env
        .command(&["run", "mailer"])
        .env("TIDINGS_TEMPLATES_DIR", "/nonexistent/templates")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/templates"));

    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["migrate", "--help"],
        &["demo", "--help"],
    ] {
        let out = env.command(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
    }

    let mut tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let status = tidings.terminate();
    assert!(
        status.success(),
        "tidings exited with {status} after SIGTERM"
    );
}

/// `/openapi.json` is an OpenAPI 3.1 document served without a token. Every path and method
/// it lists is routed, and what each answers to an unknown id or an empty body is one of the
/// responses it documents; every schema it refers to is defined.
#[tokio::test(flavor = "multi_thread")]
async fn openapi_document_describes_every_route() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let doc: serde_json::Value = reqwest::get(env.base() + "/openapi.json")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 35, "only {} paths documented", paths.len());
    let mut calls = 0;
    for (path, operations) in paths {
        let concrete: String = path
            .split('/')
            .map(|part| {
                if part.starts_with('{') {
                    "999999"
                } else {
                    part
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, operation) in operations.as_object().unwrap() {
            let documented: Vec<u16> = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let (status, body) = env.call(&method.to_uppercase(), &concrete, None).await;
            assert_ne!(
                body["error"], "no such endpoint",
                "{method} {path} is documented but not routed"
            );
            assert!(
                documented.contains(&status),
                "{method} {concrete} answered {status} ({body}); documented: {documented:?}"
            );
            calls += 1;
        }
    }
    assert!(calls >= 45, "only {calls} operations documented");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let text = doc.to_string();
    for reference in text.split("\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            schemas.contains_key(name),
            "schema {name} is referred to but not defined"
        );
    }
}

/// `GET /conversations` lists conversations newest first, narrowed by item, within a limit.
#[tokio::test(flavor = "multi_thread")]
async fn conversations_are_listed_newest_first() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let (_, item, first) = env.ticket("First").await;
    let (_, _, second) = env.ticket("Second").await;
    let all = env.ok("GET", "/conversations", None).await;
    let ids: Vec<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![second, first]);
    let one = env
        .ok("GET", &format!("/conversations?item_id={item}"), None)
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["id"], first);
    let (status, err) = env.call("GET", "/conversations?limit=0", None).await;
    assert_eq!((status, err["field"].as_str()), (400, Some("limit")));
    // A query string that does not parse gets the same JSON error, naming the parameter.
    let (status, err) = env.call("GET", "/conversations?item_id=abc", None).await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("item_id")),
        "{err}"
    );
}
