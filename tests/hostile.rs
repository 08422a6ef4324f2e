//! Hostile and malformed input, on real services: each test is a probe that once did harm
//! (a stalled batch, a lost mail, an aborted process) and must now get a clear error naming
//! what was wrong, with nothing lost and the neighbours untouched.

mod support;

use std::time::Duration;

use serde_json::json;
use support::Env;

const SETTLE: Duration = Duration::from_secs(30);

/// Names, subjects and titles with CR, LF, NUL or other control characters, or over their
/// length cap, are refused at the api with 400 naming the field.
#[tokio::test(flavor = "multi_thread")]
async fn control_characters_and_overlong_names_are_refused_naming_the_field() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["api"]);
    env.wait_for_api().await;
    let person = env.user("Ann").await;
    let (project, item, conversation) = env.ticket("Printer").await;
    let long = "x".repeat(201);
    let cases = [
        (
            "POST",
            "/users".to_string(),
            json!({"name": "Eve\r\nBcc: x@evil.test", "email": "eve@example.com"}),
            "name",
        ),
        (
            "POST",
            "/customers".to_string(),
            json!({"name": "Eve\u{0}", "email": "eve@example.com"}),
            "name",
        ),
        (
            "POST",
            "/users".to_string(),
            json!({"name": long, "email": "eve@example.com"}),
            "name",
        ),
        (
            "PATCH",
            format!("/people/{person}"),
            json!({"name": "Ann\u{2028}Bcc"}),
            "name",
        ),
        (
            "POST",
            "/projects".to_string(),
            json!({"name": "P\nQ"}),
            "name",
        ),
        (
            "POST",
            "/teams".to_string(),
            json!({"name": "T\tX"}),
            "name",
        ),
        (
            "POST",
            "/items".to_string(),
            json!({"project_id": project, "kind": "ticket", "title": "a\rb"}),
            "title",
        ),
        (
            "POST",
            "/conversations".to_string(),
            json!({"subject": "Hi\r\nBcc: x@evil.test", "item_id": item}),
            "subject",
        ),
        (
            "POST",
            "/conversations".to_string(),
            json!({"subject": "s".repeat(301), "item_id": item}),
            "subject",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, answer) = env.call(method, &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {answer}");
        assert_eq!(answer["field"], field, "{method} {path}: {answer}");
    }
    // The cap counts characters, not bytes: 200 of them in a non-Latin script pass.
    let (status, answer) = env
        .call(
            "POST",
            "/users",
            Some(json!({"name": "ü".repeat(200), "email": "u@example.com"})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
    let (status, answer) = env
        .call(
            "POST",
            &format!("/conversations/{conversation}/messages"),
            Some(json!({"author_id": person, "body": "line one\nline two", "internal": false})),
        )
        .await;
    assert_eq!(status, 201, "a message body may span lines: {answer}");
}

/// A name that reached the database by another path than the api (an import, an inbound
/// display name) with CR/LF in it is sent on one header line; it fails nobody, and the
/// neighbours batched with it get their email.
#[tokio::test(flavor = "multi_thread")]
async fn a_name_with_line_breaks_in_the_database_fails_no_email_of_its_batch() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    let mut followers = Vec::new();
    for name in ["Bob", "Eve", "Cat"] {
        let id = env.user(name).await;
        env.follow_item(item, id).await;
        followers.push(id);
    }
    env.sql("UPDATE people SET name = E'Eve\\r\\nBcc: victim@evil.test\\u0007' WHERE email = 'eve@example.com'");
    let message = env.post(conversation, ann, "Is it fixed?", false).await;
    let d = env.settled(message, SETTLE).await;
    for r in d["recipients"].as_array().unwrap() {
        assert_eq!(r["email_state"], "sent", "{d}");
    }
    let eve = env.mails_to("eve@example.com");
    assert_eq!(eve.len(), 1);
    let parsed = eve[0].parsed();
    let to = parsed.to().and_then(|to| to.first()).unwrap();
    assert_eq!(to.name(), Some("Eve Bcc: victim@evil.test"));
    assert_eq!(to.address(), Some("eve@example.com"));
    assert_eq!(eve[0].header("Bcc"), None);
    assert!(env.mails_to("victim@evil.test").is_empty());
    assert_eq!(env.mails_to("bob@example.com").len(), 1);
    assert_eq!(env.mails_to("cat@example.com").len(), 1);
}
