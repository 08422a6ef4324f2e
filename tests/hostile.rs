//! Hostile and malformed input, on real services: each test is a probe that once did harm
//! (a stalled batch, a lost mail, an aborted process) and must now get a clear error naming
//! what was wrong, with nothing lost and the neighbours untouched.

mod support;

use std::time::Duration;

use serde_json::json;
use support::Env;

const SETTLE: Duration = Duration::from_secs(30);

/// A fresh environment with every role running and the broker topology declared.
async fn running(window: &str) -> (Env, support::Process) {
    let env = Env::new(window);
    let tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    (env, tidings)
}

/// Ann posts in a ticket Bob follows and Bob is emailed; returns (ann, bob, conversation,
/// message, Bob's reply address).
async fn emailed(env: &Env) -> (i64, i64, i64, i64, String) {
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    let message = env.post(conversation, ann, "Is it fixed?", false).await;
    env.settled(message, SETTLE).await;
    let reply_to = env.mails_to("bob@example.com")[0]
        .parsed()
        .reply_to()
        .and_then(|r| r.first())
        .and_then(|r| r.address())
        .unwrap()
        .to_string();
    (ann, bob, conversation, message, reply_to)
}

/// Sends like a relay: a temporary refusal (451 while the listener's broker connection comes
/// up) is tried again, for a bounded time.
async fn deliver(env: &Env, from: &str, to: &str, mail: &str) -> Vec<String> {
    for _ in 0..50 {
        let replies = env.smtp(from, &[to], mail).await;
        if !replies.last().is_some_and(|r| r.starts_with('4')) {
            return replies;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{to} refused the mail temporarily for 10 s")
}

/// The posted messages of a conversation.
async fn messages(env: &Env, conversation: i64) -> Vec<serde_json::Value> {
    env.ok("GET", &format!("/conversations/{conversation}"), None)
        .await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

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
        // Invisible and direction-changing characters let one name pass for another.
        (
            "POST",
            "/users".to_string(),
            json!({"name": "Ann\u{202E}nimda", "email": "rlo@example.com"}),
            "name",
        ),
        (
            "POST",
            "/customers".to_string(),
            json!({"name": "Support\u{200B}Team", "email": "zw@example.com"}),
            "name",
        ),
        (
            "PATCH",
            format!("/people/{person}"),
            json!({"name": "\u{FEFF}Ann"}),
            "name",
        ),
        (
            "POST",
            "/projects".to_string(),
            json!({"name": "P\u{2066}Q"}),
            "name",
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

/// A template whose partials include each other is refused with its file, line and reason,
/// wherever it comes from (an automation body, a template file, a row written before the
/// check); no render overflows the stack, and every role keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn recursive_partials_are_refused_and_abort_nothing() {
    let templates =
        std::env::temp_dir().join(format!("tidings-hostile-templates-{}", std::process::id()));
    let copied = std::process::Command::new("cp")
        .arg("-r")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/templates"))
        .arg(&templates)
        .status()
        .unwrap();
    assert!(copied.success());
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_TEMPLATES_DIR", templates.to_str().unwrap()),
            ("TIDINGS_TEMPLATES_RELOAD", "200ms"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;

    let recursive = r#"{{#*inline "p"}}x{{> p}}{{/inline}}{{> p}}"#;
    let (status, answer) = env
        .call("POST", "/automations", Some(json!({"name": "Loop", "trigger": "message_posted", "action": "post_message", "body": recursive})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "body");
    assert!(
        answer["error"].as_str().unwrap().contains("p > p"),
        "{answer}"
    );
    // Blocks nested thousands deep would overflow the stack while parsing: refused first.
    let deep = "{{#if a}}".repeat(5000) + &"{{/if}}".repeat(5000);
    let (status, answer) = env
        .call("POST", "/automations", Some(json!({"name": "Deep", "trigger": "message_posted", "action": "post_message", "body": deep})))
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("deeper than 64"),
        "{answer}"
    );

    // A row that skipped the check (written before it existed) is refused when it would run.
    let a = env
        .ok("POST", "/automations", Some(json!({"name": "Echo", "trigger": "message_posted", "action": "post_message", "body": "ok"})))
        .await;
    env.sql(&format!(
        "UPDATE automations SET body = '{recursive}' WHERE id = {}",
        a["id"]
    ));

    // Two partial files including each other: the running process rejects the edit and
    // keeps the last good set; `templates check` names the file and exits 1.
    std::fs::write(templates.join("partials/loop_a.hbs"), "a {{> loop_b}}").unwrap();
    std::fs::write(templates.join("partials/loop_b.hbs"), "b\n{{> loop_a}}").unwrap();
    let check = env
        .command(&["templates", "check", "--dir", templates.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).to_string()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{out}");
    assert!(
        out.contains("partials/loop_") && out.contains("include each other"),
        "{out}"
    );
    support::wait_for(env.root(), "the edit to be rejected", async || {
        env.log_of(&["all"]).contains("template change rejected")
    })
    .await;

    // Everything still runs: a message is dispatched past the bad automation and emailed.
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    let message = env.post(conversation, ann, "Still there?", false).await;
    let d = env.settled(message, SETTLE).await;
    assert_eq!(d["recipients"][0]["email_state"], "sent", "{d}");
    let log = env.log_of(&["all"]);
    assert!(
        log.lines()
            .any(|l| l.contains("automation message body does not render") && l.contains("p > p")),
        "{log}"
    );
    std::fs::remove_dir_all(&templates).unwrap();
}

/// A forged bounce silences nobody: mail that looks like a bounce (X-Failed-Recipients, a
/// MAILER-DAEMON sender, an empty Return-Path, multipart/report) but was not sent back to an
/// email's signed bounce address and cites no Message-ID we sent is logged and ignored; a
/// forged signed address is refused in the dialogue.
#[tokio::test(flavor = "multi_thread")]
async fn forged_bounces_suppress_nobody() {
    let (env, _tidings) = running("1s").await;
    let (ann, _, conversation, first, reply_to) = emailed(&env).await;
    let domain = support::REPLY_DOMAIN;
    let report = |to: &str, extra: &str| {
        format!(
            "From: Mail Delivery System <MAILER-DAEMON@mx.evil.test>\nTo: {to}\n{extra}\
             Subject: Undelivered Mail Returned to Sender\nMessage-ID: <forged-{}@evil.test>\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
             --b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.evil.test\n\n\
             Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 5.1.1\n\n\
             --b\nContent-Type: text/rfc822-headers\n\n{}\n\n--b--\n",
            to.len() + extra.len(),
            if extra.contains("X-Cites: nothing") {
                String::new()
            } else {
                format!("Message-ID: <tidings.m1.p2.guess@{domain}>")
            }
        )
    };
    let forgeries = [
        (
            format!("bounces@{domain}"),
            "X-Failed-Recipients: bob@example.com\n",
        ),
        (
            format!("support@{domain}"),
            "Return-Path: <>\nX-Cites: nothing\n",
        ),
        (
            reply_to.clone(),
            "X-Failed-Recipients: bob@example.com, ann@example.com\n",
        ),
    ];
    for (to, extra) in &forgeries {
        let replies = env.smtp("", &[to], &report(to, extra)).await;
        assert!(
            replies.last().unwrap().starts_with("250"),
            "{to}: {replies:?}"
        );
    }
    // A signed bounce address with a forged signature is refused at RCPT.
    let forged = format!("bounces+n{first}-aaaaaaaaaaaaaaaaaaaaaaaaaa@{domain}");
    let replies = env.smtp("", &[&forged], &report(&forged, "")).await;
    assert!(replies.iter().any(|r| r.starts_with("550")), "{replies:?}");

    support::wait_for(env.root(), "the forged bounces to be logged", async || {
        let log = env
            .ok("GET", "/email-log?direction=in&limit=50", None)
            .await;
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("nobody suppressed"))
            })
            .count()
            == forgeries.len()
    })
    .await;
    assert_eq!(env.ok("GET", "/suppressions", None).await, json!([]));
    let next = env.post(conversation, ann, "Still there?", false).await;
    let d = env.settled(next, SETTLE).await;
    assert_eq!(d["recipients"][0]["email_state"], "sent", "{d}");
    assert_eq!(env.mails_to("bob@example.com").len(), 2);
}

/// I4: the sender cannot override the relay's verdict. Only the relay's topmost
/// `Authentication-Results` (with its authserv-id) is read, so a `dkim=pass` of the sender's
/// own below the relay's `dkim=fail` does not get the mail posted as the reply address's
/// owner; and a mail with two From headers is rejected.
#[tokio::test(flavor = "multi_thread")]
async fn the_relays_verdict_stands_and_two_froms_are_rejected() {
    let env = Env::with(
        "1s",
        &[("TIDINGS_INBOUND_AUTHSERV_ID", "mx.relay.test")],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, conversation, _, reply_to) = emailed(&env).await;
    let mail = |headers: &str, n: usize| {
        format!(
            "{headers}To: {reply_to}\nSubject: Re: Printer\nMessage-ID: <forged-{n}@evil.test>\n\n\
             Approve the refund to account 666.\n"
        )
    };
    let forged = [
        "Authentication-Results: mx.relay.test; dkim=fail header.d=example.com\n\
         Authentication-Results: mx.relay.test; dkim=pass header.d=example.com\n\
         From: bob@example.com\n",
        "Authentication-Results: other.test; dkim=pass\n\
         Authentication-Results: mx.relay.test; dmarc=fail header.from=example.com\n\
         From: bob@example.com\n",
        "From: eve@evil.test\nFrom: bob@example.com\n",
    ];
    for (n, headers) in forged.iter().enumerate() {
        let replies = env
            .smtp("bob@example.com", &[&reply_to], &mail(headers, n))
            .await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    support::wait_for(env.root(), "the forged mail to be rejected", async || {
        let log = env
            .ok("GET", "/email-log?direction=in&limit=50", None)
            .await;
        log.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "rejected")
            .count()
            == forged.len()
    })
    .await;
    let log = env
        .ok("GET", "/email-log?direction=in&limit=50", None)
        .await;
    let reasons: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("dkim=fail")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("dmarc=fail")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("2 From headers")),
        "{reasons:?}"
    );
    assert_eq!(
        messages(&env, conversation).await.len(),
        1,
        "nothing was posted"
    );
}

/// SPEC D5: a user's emailed answer to a notification about an internal message stays
/// internal (the customer is neither notified nor emailed); a customer's reply is external;
/// a user's reply that answers none of our emails is internal.
#[tokio::test(flavor = "multi_thread")]
async fn d5_a_staff_reply_to_an_internal_note_stays_internal() {
    let (env, _tidings) = running("1s").await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let carol = env.customer("Carol").await;
    let (_, item, conversation) = env.ticket("Refund").await;
    env.follow_item(item, bob).await;
    env.add_participant(conversation, carol).await;
    let note = env
        .post(conversation, ann, "Internal: do not refund yet", true)
        .await;
    env.settled(note, SETTLE).await;
    let mail = &env.mails_to("bob@example.com")[0];
    let reply_to = mail
        .parsed()
        .reply_to()
        .and_then(|r| r.first())
        .and_then(|r| r.address())
        .unwrap()
        .to_string();
    let answered = mail.header("Message-ID").unwrap();
    let reply = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Refund\nMessage-ID: <bob-1@example.com>\n\
         In-Reply-To: {answered}\nReferences: {answered}\n\nAgreed, the customer is lying.\n"
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &reply).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    // The same answer without any header naming what it answers is internal too.
    let bare = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Refund\nMessage-ID: <bob-2@example.com>\n\n\
         Second thought: still no refund.\n"
    );
    env.smtp("bob@example.com", &[&reply_to], &bare).await;
    support::wait_for(env.root(), "both replies to be posted", async || {
        messages(&env, conversation).await.len() == 3
    })
    .await;
    let posted = messages(&env, conversation).await;
    for m in &posted[1..] {
        assert_eq!(m["author_id"], json!(bob));
        assert_eq!(m["internal"], json!(true), "{m}");
        let d = env.dispatched(m["id"].as_i64().unwrap()).await;
        assert!(
            !d["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["recipient_id"] == json!(carol)),
            "the customer was notified of staff discussion: {d}"
        );
    }
    assert!(env.mails_to("carol@example.com").is_empty());
}

/// A deactivated person's old reply address no longer posts anything.
#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_person_cannot_post_by_email() {
    let (env, _tidings) = running("1s").await;
    let (_, bob, conversation, _, reply_to) = emailed(&env).await;
    env.ok(
        "PATCH",
        &format!("/people/{bob}"),
        Some(json!({"active": false})),
    )
    .await;
    let reply = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <late@example.com>\n\n\
         I left the company, but here is my opinion anyway.\n"
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &reply).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the reply to be rejected", async || {
        let log = env
            .ok("GET", "/email-log?direction=in&limit=10", None)
            .await;
        log.as_array().unwrap().iter().any(|r| {
            r["status"] == "rejected"
                && r["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("deactivated"))
        })
    })
    .await;
    assert_eq!(messages(&env, conversation).await.len(), 1);
}

/// Mail with NUL bytes (raw, or quoted-printable `=00`) is never lost: it is posted with each
/// NUL replaced, and logged. The api refuses `\u0000` in any JSON string with 400 naming the
/// field.
#[tokio::test(flavor = "multi_thread")]
async fn nul_bytes_lose_no_mail_and_are_refused_by_the_api() {
    let (env, _tidings) = running("1s").await;
    let (ann, _, conversation, _, reply_to) = emailed(&env).await;
    let raw = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\0 =?utf-8?q?x=00y?=\n\
         Message-ID: <nul-1@example.com>\nContent-Type: text/plain; charset=utf-8\n\
         Content-Transfer-Encoding: quoted-printable\n\nIt works=00 now,\0 thanks.\n"
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &raw).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the reply to be posted", async || {
        messages(&env, conversation).await.len() == 2
    })
    .await;
    let body = messages(&env, conversation).await[1]["body"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(body, "It works\u{FFFD} now,\u{FFFD} thanks.");
    let log = env
        .ok("GET", "/email-log?direction=in&limit=10", None)
        .await;
    assert_eq!(log[0]["status"], "threaded", "{log}");

    for (path, body, field) in [
        (
            format!("/conversations/{conversation}/messages"),
            json!({"author_id": ann, "body": "a\u{0}b", "internal": false}),
            "body",
        ),
        (
            "/automations".to_string(),
            json!({"name": "n", "trigger": "message_posted", "action": "post_message", "body": "ok", "condition": {"status\u{0}": "x"}}),
            "condition.status\\u0000",
        ),
    ] {
        let (status, answer) = env.call("POST", &path, Some(body)).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    // A body over the size limit is 413, as JSON.
    let (status, answer) = env
        .call(
            "POST",
            "/users",
            Some(json!({"name": "x".repeat(3 << 20), "email": "x@example.com"})),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
}

/// Two senders using the same Message-ID are two emails; only a redelivery from the same
/// sender is a duplicate.
#[tokio::test(flavor = "multi_thread")]
async fn a_reused_message_id_from_another_sender_is_not_a_duplicate() {
    let (env, _tidings) = running("1s").await;
    let support = format!("support@{}", support::REPLY_DOMAIN);
    for from in ["carol@example.com", "dave@example.com", "carol@example.com"] {
        let mail = format!(
            "From: {from}\nTo: {support}\nSubject: Help\nMessage-ID: <same@example.com>\n\nMy printer is broken.\n"
        );
        let replies = deliver(&env, from, &support, &mail).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    support::wait_for(env.root(), "all three to be logged", async || {
        env.ok("GET", "/email-log?direction=in&limit=10", None)
            .await
            .as_array()
            .unwrap()
            .len()
            == 3
    })
    .await;
    let log = env
        .ok("GET", "/email-log?direction=in&limit=10", None)
        .await;
    let statuses: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "created").count(),
        2,
        "{log}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "ignored").count(),
        1,
        "{log}"
    );
}

/// With a development secret, no listener starts beyond loopback unless explicitly allowed;
/// an empty or one-character token is refused, naming the variable.
#[tokio::test(flavor = "multi_thread")]
async fn development_secrets_refuse_to_listen_beyond_loopback() {
    let env = Env::new("1s");
    let run = |vars: &[(&str, &str)], remove: &[&str]| {
        let mut command = env.command(&["run", "api"]);
        command.env("TIDINGS_HTTP_ADDR", "0.0.0.0:0");
        for name in remove {
            command.env_remove(name);
        }
        for (name, value) in vars {
            command.env(name, value);
        }
        let out = command.stdin(std::process::Stdio::null()).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&[], &["TIDINGS_API_TOKEN"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("refusing to listen on 0.0.0.0:0"), "{err}");
    for token in ["", "x"] {
        let (code, err) = run(&[("TIDINGS_API_TOKEN", token)], &[]);
        assert_eq!(code, Some(2), "a configuration error: {err}");
        assert!(err.contains("TIDINGS_API_TOKEN"), "{err}");
    }
}

/// Reads one SMTP reply (all its lines) from `stream`.
async fn smtp_reply(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line))
            .await
            .expect("an SMTP reply within 10 s")
            .unwrap();
        reply.push_str(&line);
        if read == 0 || line.as_bytes().get(3) != Some(&b'-') {
            return reply;
        }
    }
}

async fn smtp_open(env: &Env) -> tokio::io::BufReader<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", env.inbound_port))
        .await
        .unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    assert!(smtp_reply(&mut stream).await.starts_with("220"));
    stream
}

async fn smtp_say(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>, line: &[u8]) -> String {
    use tokio::io::AsyncWriteExt;
    stream.get_mut().write_all(line).await.unwrap();
    smtp_reply(stream).await
}

/// The SMTP listener's bounds: sessions past the cap get 421 at once; a session past its time
/// limit is closed with 421; messages being received at once share a memory budget (452 past
/// it, and the next try succeeds); an over-long command line is refused whole, never run in
/// pieces.
#[tokio::test(flavor = "multi_thread")]
async fn the_smtp_listener_bounds_sessions_time_memory_and_lines() {
    use tokio::io::AsyncWriteExt;
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_INBOUND_MAX_SESSIONS", "3"),
            ("TIDINGS_INBOUND_SESSION_TIMEOUT", "3s"),
            ("TIDINGS_INBOUND_MAX_BYTES", "900000"),
            ("TIDINGS_INBOUND_MEMORY", "1048576"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let support = format!("support@{}", support::REPLY_DOMAIN);

    // Line splitting: the rest of an over-long line is not a command.
    let mut s = smtp_open(&env).await;
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'A', 16379));
    long.extend(b"QUIT\r\n");
    assert!(smtp_say(&mut s, &long).await.starts_with("500"));
    assert!(
        smtp_say(&mut s, b"NOOP\r\n").await.starts_with("250"),
        "the session goes on"
    );

    // Memory: one message holds 700 kB of the 1 MiB budget, so a second one of that size
    // waits its turn (452); once the first is done, the second goes through.
    let mut first = smtp_open(&env).await;
    for line in [
        "EHLO a\r\n".to_string(),
        "MAIL FROM:<carol@example.com>\r\n".into(),
        format!("RCPT TO:<{support}>\r\n"),
    ] {
        assert!(
            smtp_say(&mut first, line.as_bytes()).await.starts_with('2'),
            "{line}"
        );
    }
    assert!(smtp_say(&mut first, b"DATA\r\n").await.starts_with("354"));
    let body = "x".repeat(999) + "\r\n";
    let big: String = format!("From: carol@example.com\r\nTo: {support}\r\nSubject: big\r\n\r\n")
        + &body.repeat(700);
    first.get_mut().write_all(big.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = smtp_open(&env).await;
    for line in [
        "EHLO b\r\n".to_string(),
        "MAIL FROM:<dave@example.com>\r\n".into(),
        format!("RCPT TO:<{support}>\r\n"),
    ] {
        assert!(
            smtp_say(&mut second, line.as_bytes())
                .await
                .starts_with('2'),
            "{line}"
        );
    }
    assert!(smtp_say(&mut second, b"DATA\r\n").await.starts_with("354"));
    let refused = smtp_say(
        &mut second,
        (big.replace("carol", "dave") + "\r\n.\r\n").as_bytes(),
    )
    .await;
    assert!(refused.starts_with("452"), "{refused}");
    let accepted = smtp_say(&mut first, b"\r\n.\r\n").await;
    assert!(accepted.starts_with("250"), "{accepted}");
    drop(first);
    assert!(
        smtp_say(&mut second, b"MAIL FROM:<dave@example.com>\r\n")
            .await
            .starts_with("250")
    );

    // Sessions: three are open (s, second, and this one); a fourth is refused at once.
    // (The first session ends once the listener reads its close: that may take a moment.)
    let mut third = None;
    for _ in 0..50 {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", env.inbound_port))
            .await
            .unwrap();
        let mut stream = tokio::io::BufReader::new(stream);
        if smtp_reply(&mut stream).await.starts_with("220") {
            third = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _third = third.expect("a third session once the first has ended");
    let fourth = tokio::net::TcpStream::connect(("127.0.0.1", env.inbound_port))
        .await
        .unwrap();
    let mut fourth = tokio::io::BufReader::new(fourth);
    assert!(smtp_reply(&mut fourth).await.starts_with("421"));

    // Time: a client dripping a command is closed once its session is over the limit.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if s.get_mut().write_all(b"N").await.is_err() {
                return String::new();
            }
            let mut peek = [0u8; 64];
            match tokio::time::timeout(
                Duration::from_millis(300),
                tokio::io::AsyncReadExt::read(s.get_mut(), &mut peek),
            )
            .await
            {
                Ok(Ok(n)) => return String::from_utf8_lossy(&peek[..n]).to_string(),
                _ => continue,
            }
        }
    })
    .await
    .expect("the session was closed within 10 s");
    assert!(closed.is_empty() || closed.starts_with("421"), "{closed}");
}

/// The HTTP listener's bounds: a client dripping its headers, or idling on a keep-alive
/// connection, is closed after the header timeout; connections over the cap wait for a free
/// slot; path and method errors are JSON; a `since` too large is 400, not a panic.
#[tokio::test(flavor = "multi_thread")]
async fn the_http_listener_bounds_slow_clients_and_answers_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_HTTP_HEADER_TIMEOUT", "1s"),
            ("TIDINGS_HTTP_MAX_CONNECTIONS", "2"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["api"]);
    env.wait_for_api().await;

    for (path, status) in [
        ("/people/abc", 400),
        ("/email-log?since=100000000d", 400),
        ("/email-log?since=213503982334602d", 400),
    ] {
        let (got, answer) = env.call("GET", path, None).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{path}: {answer}");
    }
    let (got, answer) = env.call("PUT", "/openapi.json", None).await;
    assert_eq!(got, 405, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");

    // A header drip and an idle connection are both closed after about a second.
    let mut drip = tokio::net::TcpStream::connect(("127.0.0.1", env.http_port))
        .await
        .unwrap();
    drip.write_all(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let idle = tokio::net::TcpStream::connect(("127.0.0.1", env.http_port))
        .await
        .unwrap();
    // Both slots are taken: a third request waits (here: past its 300 ms client timeout).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        quick
            .get(env.base() + "/openapi.json")
            .send()
            .await
            .is_err(),
        "served over the cap"
    );
    let started = std::time::Instant::now();
    for mut stream in [drip, idle] {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 1024];
            loop {
                let _ = stream.write_all(b"X").await;
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow client was never cut off");
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    // With the slots free again, requests are served.
    let (status, _) = env.call("GET", "/openapi.json", None).await;
    assert_eq!(status, 200);
}

/// Process logs never hold a full email address: not when an email is sent, not in a bounce's
/// disposition, not in an inbound reply's.
#[tokio::test(flavor = "multi_thread")]
async fn process_logs_mask_every_address() {
    let (env, _tidings) = running("1s").await;
    let (_, _, conversation, _, reply_to) = emailed(&env).await;
    let sent = &env.mails_to("bob@example.com")[0];
    let return_path = sent.return_path();
    let message_id = sent.header("Message-ID").unwrap();
    let dsn = format!(
        "From: MAILER-DAEMON@mx.example.com\nTo: {return_path}\nSubject: failure\n\
         Message-ID: <dsn@mx.example.com>\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\n\n\
         --b\nContent-Type: message/delivery-status\n\n\
         Final-Recipient: rfc822; bob@example.com\nAction: failed\nStatus: 5.1.1\n\n\
         --b\nContent-Type: text/rfc822-headers\n\nMessage-ID: {message_id}\n\n--b--\n"
    );
    assert!(
        env.smtp("", &[&return_path], &dsn)
            .await
            .last()
            .unwrap()
            .starts_with("250")
    );
    let reply = format!(
        "From: bob@example.com\nTo: {reply_to}\nSubject: Re: Printer\nMessage-ID: <r@example.com>\n\nThanks\n"
    );
    assert!(
        env.smtp("bob@example.com", &[&reply_to], &reply)
            .await
            .last()
            .unwrap()
            .starts_with("250")
    );
    support::wait_for(env.root(), "the bounce and the reply", async || {
        !env.ok("GET", "/suppressions", None)
            .await
            .as_array()
            .unwrap()
            .is_empty()
            && messages(&env, conversation).await.len() == 2
    })
    .await;
    let log = env.log_of(&["all"]);
    assert!(log.contains("b***@example.com"), "{log}");
    for address in ["bob@example.com", "ann@example.com"] {
        assert!(!log.contains(address), "{address} in the log:\n{log}");
    }
}

/// SPEC L1: every log row names its recipient, a system email skipped because it is switched
/// off included.
#[tokio::test(flavor = "multi_thread")]
async fn l1_a_skipped_system_email_names_its_recipient() {
    let (env, _tidings) = running("1s").await;
    // The welcome email is switched off in every test environment.
    env.user("Ann").await;
    support::wait_for(
        env.root(),
        "the skipped welcome email to be logged",
        async || {
            let log = env
                .ok("GET", "/email-log?direction=out&status=skipped", None)
                .await;
            !log.as_array().unwrap().is_empty()
        },
    )
    .await;
    let log = env
        .ok("GET", "/email-log?direction=out&status=skipped", None)
        .await;
    assert_eq!(log[0]["rcpt_to"], "ann@example.com", "{log}");
    assert!(
        log[0]["mail_from"]
            .as_str()
            .is_some_and(|f| f.contains('@')),
        "{log}"
    );
    assert!(log[0]["reason"].is_string(), "{log}");
}

/// A password reset link verifies once, through the api call the host application's reset
/// page makes; a second use, a forged token or another purpose's token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_password_reset_link_verifies_once() {
    let (env, _tidings) = running("1s").await;
    let ann = env.user("Ann").await;
    env.ok("POST", &format!("/people/{ann}/password-reset"), None)
        .await;
    support::wait_for(env.root(), "the reset email", async || {
        !env.mails_to("ann@example.com").is_empty()
    })
    .await;
    let mail = &env.mails_to("ann@example.com")[0];
    let text = mail.parsed().body_text(0).unwrap().to_string();
    let token = text
        .split("/password-reset/")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    let verify = |token: String| {
        let env = &env;
        async move {
            env.call(
                "POST",
                "/password-resets/verify",
                Some(json!({"token": token})),
            )
            .await
        }
    };
    let (status, answer) = verify(token.clone()).await;
    assert_eq!(
        (status, answer["person_id"].as_i64()),
        (200, Some(ann)),
        "{answer}"
    );
    let (status, answer) = verify(token.clone()).await;
    assert_eq!(status, 410, "a second use: {answer}");
    assert_eq!(answer["field"], "token");
    let forged = token.replacen(|c: char| c.is_ascii_digit(), "9", 1);
    let (status, answer) = verify(forged).await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = verify("not a token".into()).await;
    assert_eq!(status, 400);
}

/// A row whose processing stops its worker every time (still `sending` under a lapsed lease,
/// claimed again and again) is given up as failed, with a log row, instead of being retried
/// by every sweep for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_never_finishes_is_given_up() {
    let (env, _tidings) = running("1s").await;
    let (_, bob, _, message, _) = emailed(&env).await;
    env.sql(&format!(
        "UPDATE notifications SET state = 'sending', attempts = 10, \
         claimed_at = now() - interval '1 hour', due_at = now() - interval '1 hour' \
         WHERE message_id = {message} AND recipient_id = {bob}"
    ));
    support::wait_for(env.root(), "the row to be given up", async || {
        let d = env.deliveries(message).await;
        d["recipients"][0]["email_state"] == "failed"
    })
    .await;
    let d = env.deliveries(message).await;
    assert!(
        d["recipients"][0]["email_reason"]
            .as_str()
            .unwrap()
            .contains("gave up after 10 claims"),
        "{d}"
    );
    let log = env
        .ok("GET", "/email-log?direction=out&status=failed", None)
        .await;
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
    assert_eq!(env.mails_to("bob@example.com").len(), 1, "not sent again");
}

/// SPEC L1: an email waiting out its seen window is in the log as `queued` (id 0, read from
/// its notification), and once decided it is there as what it became.
#[tokio::test(flavor = "multi_thread")]
async fn l1_a_waiting_email_is_queued_in_the_log() {
    let env = Env::new("4s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    let message = env.post(conversation, ann, "Is it fixed?", false).await;
    env.dispatched(message).await;
    let log = env.ok("GET", "/email-log?status=queued", None).await;
    let queued = log.as_array().unwrap();
    assert_eq!(queued.len(), 1, "{log}");
    assert_eq!(queued[0]["id"], 0);
    assert_eq!(queued[0]["rcpt_to"], "bob@example.com");
    assert_eq!(queued[0]["message_id"], json!(message));
    assert!(
        queued[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("queued, due at"),
        "{log}"
    );
    // Listed with the rest, newest first; inbound-only lists leave it out.
    let all = env.ok("GET", "/email-log", None).await;
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "queued"),
        "{all}"
    );
    let inbound = env.ok("GET", "/email-log?direction=in", None).await;
    assert_eq!(inbound, json!([]));
    env.settled(message, SETTLE).await;
    let log = env.ok("GET", "/email-log?direction=out", None).await;
    let statuses: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(!statuses.contains(&"queued"), "{log}");
    assert!(statuses.contains(&"sent"), "{log}");
}

// ---- Trust at the web edges (T6) ----

/// One request with exactly these headers and body; returns the status, headers and JSON.
async fn raw(
    env: &Env,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = reqwest::Client::new().request(method, env.base() + path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if let Some(body) = body {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.expect("api reachable");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

/// The messenger's cookie for `person`, as `POST /session` sets it from the messenger page.
async fn cookie_of(env: &Env, person: i64) -> String {
    let token = env.session(person).await;
    let body = json!({ "token": token }).to_string();
    let origin = env.base();
    let (status, headers, answer) = raw(
        env,
        "POST",
        "/session",
        &[("Content-Type", "application/json"), ("Origin", &origin)],
        Some(&body),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
    let set = headers["set-cookie"].to_str().unwrap().to_string();
    set.split(';').next().unwrap().to_string()
}

/// T6: a JSON route takes JSON only. `text/plain`, a form type or no type at all (what any
/// page may send without a preflight) is refused with 415 naming the expected type, on the
/// `/me` writes, the session exchange and the admin routes alike.
#[tokio::test(flavor = "multi_thread")]
async fn t6_json_routes_refuse_every_other_content_type() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    let token = env.session(ann).await;
    let bearer = format!("Bearer {token}");
    let admin = format!("Bearer {}", support::TOKEN);
    let post = format!("/me/conversations/{conversation}/messages");
    let body = r#"{"body":"Posted by a page that is not ours"}"#;
    // (A message may also come as multipart/form-data with files; its routes take that too,
    // and the Origin rule, not the type, keeps other pages from sending it with the cookie.)
    for kind in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("text/json"),
        None,
    ] {
        let mut headers = vec![("Authorization", bearer.as_str())];
        headers.extend(kind.map(|k| ("Content-Type", k)));
        let (status, _, answer) = raw(&env, "POST", &post, &headers, Some(body)).await;
        assert_eq!(status, 415, "{kind:?}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("Content-Type: application/json"),
            "{answer}"
        );
        let mut headers = vec![("Authorization", admin.as_str())];
        headers.extend(kind.map(|k| ("Content-Type", k)));
        let (status, _, answer) =
            raw(&env, "POST", "/projects", &headers, Some(r#"{"name":"X"}"#)).await;
        assert_eq!(status, 415, "admin route, {kind:?}: {answer}");
    }
    let (status, _, answer) = raw(
        &env,
        "POST",
        "/projects",
        &[
            ("Authorization", &admin),
            ("Content-Type", "multipart/form-data; boundary=x"),
        ],
        Some("--x--"),
    )
    .await;
    assert_eq!(status, 415, "multipart to a JSON-only route: {answer}");
    let signin = json!({ "token": token }).to_string();
    let origin = env.base();
    let (status, _, answer) = raw(
        &env,
        "POST",
        "/session",
        &[("Content-Type", "text/plain"), ("Origin", &origin)],
        Some(&signin),
    )
    .await;
    assert_eq!(status, 415, "{answer}");
    // JSON with parameters, or a +json type, is JSON.
    for kind in [
        "application/json; charset=utf-8",
        "application/merge-patch+json",
    ] {
        let (status, _, answer) = raw(
            &env,
            "POST",
            &post,
            &[("Authorization", &bearer), ("Content-Type", kind)],
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{kind}: {answer}");
    }
}

/// T6: a write carried by the session cookie is taken only from the product's own pages.
/// `Origin` must be the public origin; without it, `Sec-Fetch-Site` must say same-origin;
/// with neither, the write is refused. Another port of the same host is another origin.
/// `POST /session` follows the same rule, and a bearer token (an API client, never sent by
/// a browser on its own) needs neither.
#[tokio::test(flavor = "multi_thread")]
async fn t6_cookie_writes_come_only_from_the_public_origin() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    let cookie = cookie_of(&env, ann).await;
    assert!(cookie.starts_with("tidings_session="), "{cookie}");
    let post = format!("/me/conversations/{conversation}/messages");
    let body = r#"{"body":"Hello"}"#;
    let json = ("Content-Type", "application/json");
    let other_port = format!("http://127.0.0.1:{}", env.http_port + 1);
    let refused: &[&[(&str, &str)]] = &[
        &[("Origin", &other_port)],
        &[("Origin", "http://evil.example")],
        &[("Origin", "null")],
        &[("Sec-Fetch-Site", "same-site")],
        &[("Sec-Fetch-Site", "cross-site")],
        &[],
    ];
    for extra in refused {
        let mut headers = vec![("Cookie", cookie.as_str()), json];
        headers.extend_from_slice(extra);
        let (status, _, answer) = raw(&env, "POST", &post, &headers, Some(body)).await;
        assert_eq!(status, 403, "{extra:?}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(
            error.contains("refused") || error.contains("must come from"),
            "{error}"
        );
        // The other cookie writes too.
        let mut headers = vec![("Cookie", cookie.as_str()), json];
        headers.extend_from_slice(extra);
        let (status, _, _) = raw(
            &env,
            "PATCH",
            "/me/preferences",
            &headers,
            Some(r#"{"followed_internal":false}"#),
        )
        .await;
        assert_eq!(status, 403, "preferences, {extra:?}");
    }
    let origin = env.base();
    let (status, _, answer) = raw(
        &env,
        "POST",
        &post,
        &[("Cookie", &cookie), json, ("Origin", &origin)],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "from the public origin: {answer}");
    let (status, _, answer) = raw(
        &env,
        "POST",
        &post,
        &[("Cookie", &cookie), json, ("Sec-Fetch-Site", "same-origin")],
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "same-origin, no Origin header: {answer}");
    // Reads by cookie need no Origin (the EventSource and page loads send none).
    let (status, _, _) = raw(&env, "GET", "/me", &[("Cookie", &cookie)], None).await;
    assert_eq!(status, 200);
    // No other page may sign this browser in as someone else.
    let bob = env.user("Bob").await;
    let signin = json!({ "token": env.session(bob).await }).to_string();
    for extra in refused {
        let mut headers = vec![json];
        headers.extend_from_slice(extra);
        let (status, headers, answer) =
            raw(&env, "POST", "/session", &headers, Some(&signin)).await;
        assert_eq!(status, 403, "{extra:?}: {answer}");
        assert!(headers.get("set-cookie").is_none());
    }
    // Messages posted: the two from the public origin only.
    assert_eq!(messages(&env, conversation).await.len(), 2);
}

/// T6: under an https public URL the cookie is `__Host-` prefixed and `Secure`, and the plain
/// development name is not read, so a sibling subdomain cannot plant a session.
#[tokio::test(flavor = "multi_thread")]
async fn t6_the_cookie_is_host_prefixed_over_https() {
    // Behind a TLS proxy: browsers reach https://127.0.0.1, the api listens on plain HTTP.
    let public = "https://127.0.0.1";
    let env = Env::with("2s", &[("TIDINGS_PUBLIC_URL", public)], &[]);
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let token = env.session(ann).await;
    let signin = json!({ "token": token }).to_string();
    let (status, headers, answer) = raw(
        &env,
        "POST",
        "/session",
        &[("Content-Type", "application/json"), ("Origin", public)],
        Some(&signin),
    )
    .await;
    assert_eq!(status, 204, "{answer}");
    let set = headers["set-cookie"].to_str().unwrap();
    assert!(set.starts_with("__Host-tidings_session="), "{set}");
    assert!(
        set.contains("; Secure") && set.contains("Path=/") && !set.contains("Domain"),
        "{set}"
    );
    let host = set.split(';').next().unwrap();
    assert_eq!(
        raw(&env, "GET", "/me", &[("Cookie", host)], None).await.0,
        200
    );
    let plain = format!("tidings_session={token}");
    assert_eq!(
        raw(&env, "GET", "/me", &[("Cookie", &plain)], None).await.0,
        401
    );
}

/// P1 is a permission: a person reads it through `/me` but cannot change it (403 naming the
/// field), so a user limited to followed projects cannot lift the limit; an admin can.
#[tokio::test(flavor = "multi_thread")]
async fn p1_a_person_cannot_grant_themselves_more_projects() {
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, _, other) = env.ticket("Payroll").await;
    env.ok(
        "PATCH",
        &format!("/people/{ann}/preferences"),
        Some(json!({"see_conversations": "followed_projects"})),
    )
    .await;
    let token = env.session(ann).await;
    assert_eq!(
        env.call_as(&token, "GET", &format!("/me/conversations/{other}"), None)
            .await
            .0,
        403
    );
    for patch in [
        json!({"see_conversations": "all_projects"}),
        json!({"see_conversations": "followed_projects", "followed_internal": false}),
    ] {
        let (status, answer) = env
            .call_as(&token, "PATCH", "/me/preferences", Some(patch.clone()))
            .await;
        assert_eq!(status, 403, "{patch}: {answer}");
        assert_eq!(answer["field"], "see_conversations", "{answer}");
    }
    let (status, prefs) = env.call_as(&token, "GET", "/me/preferences", None).await;
    assert_eq!(
        (
            status,
            prefs["see_conversations"].clone(),
            prefs["followed_internal"].clone()
        ),
        (200, json!("followed_projects"), json!(true)),
        "nothing changed: {prefs}"
    );
    let (status, _) = env
        .call_as(
            &token,
            "POST",
            &format!("/me/conversations/{other}/messages"),
            Some(json!({"body": "hi"})),
        )
        .await;
    assert_eq!(status, 403);
    // Every other preference stays the person's own.
    let (status, answer) = env
        .call_as(
            &token,
            "PATCH",
            "/me/preferences",
            Some(json!({"followed_internal": false})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    env.ok(
        "PATCH",
        &format!("/people/{ann}/preferences"),
        Some(json!({"see_conversations": "all_projects"})),
    )
    .await;
    assert_eq!(
        env.call_as(&token, "GET", &format!("/me/conversations/{other}"), None)
            .await
            .0,
        200
    );
}

/// T6: the inbox applies the conversation routes' visibility. A customer removed from an item
/// and a user narrowed to followed projects no longer see the conversation's subject,
/// excerpt or unread count anywhere, their messenger's inbox and the admin's view of it alike.
#[tokio::test(flavor = "multi_thread")]
async fn t6_the_inbox_forgets_what_a_person_may_no_longer_see() {
    let (env, _tidings) = running("30s").await;
    let ben = env.user("Ben").await;
    let ann = env.user("Ann").await;
    let cora = env.customer("Cora").await;
    let (_, item, conversation) = env.ticket("Refund").await;
    env.follow_item(item, cora).await;
    env.follow_item(item, ann).await;
    let public = env
        .post(conversation, ben, "Your refund is 4,200 EUR", false)
        .await;
    let note = env
        .post(conversation, ben, "Internal: fraud risk", true)
        .await;
    env.dispatched(public).await;
    env.dispatched(note).await;
    let (cora_token, ann_token) = (env.session(cora).await, env.session(ann).await);
    let listed = |inbox: &serde_json::Value| inbox["conversations"].as_array().unwrap().len();
    let (_, inbox) = env.call_as(&cora_token, "GET", "/me/inbox", None).await;
    assert_eq!(listed(&inbox), 1, "{inbox}");
    let (_, inbox) = env.call_as(&ann_token, "GET", "/me/inbox", None).await;
    assert_eq!(listed(&inbox), 1, "{inbox}");
    assert!(inbox.to_string().contains("fraud risk"), "{inbox}");
    // Replaying Cora's stream from the start gives her notification.
    let replayed = |token: String| {
        let base = env.base();
        async move {
            let mut stream = support::live::Sse::open(&base, &token, Some(0)).await;
            stream
                .drain(Duration::from_secs(1))
                .await
                .into_iter()
                .filter(|e| e.kind == "notification")
                .count()
        }
    };
    assert_eq!(replayed(cora_token.clone()).await, 1);

    // Cora is removed from the item; Ann is narrowed to projects she follows.
    env.ok("DELETE", &format!("/items/{item}/followers/{cora}"), None)
        .await;
    env.ok(
        "PATCH",
        &format!("/people/{ann}/preferences"),
        Some(json!({"see_conversations": "followed_projects"})),
    )
    .await;
    env.ok("DELETE", &format!("/items/{item}/followers/{ann}"), None)
        .await;
    for (token, person) in [(&cora_token, cora), (&ann_token, ann)] {
        let (status, inbox) = env.call_as(token, "GET", "/me/inbox", None).await;
        assert_eq!(status, 200);
        assert_eq!(listed(&inbox), 0, "{inbox}");
        assert_eq!(inbox["unread"], 0, "{inbox}");
        let (_, me) = env.call_as(token, "GET", "/me", None).await;
        assert_eq!(me["unread"], 0, "{me}");
        let admin_view = env
            .ok("GET", &format!("/people/{person}/inbox"), None)
            .await;
        assert_eq!(listed(&admin_view), 0, "{admin_view}");
        let (status, _) = env
            .call_as(
                token,
                "GET",
                &format!("/me/conversations/{conversation}"),
                None,
            )
            .await;
        assert_eq!(status, 403);
        let (status, _) = env
            .call_as(
                token,
                "GET",
                &format!("/me/messages/{public}/deliveries"),
                None,
            )
            .await;
        assert_eq!(status, 403);
    }
    // Nor does her stream replay what she can no longer see.
    assert_eq!(replayed(cora_token.clone()).await, 0);
}

/// T6: one person can post at most `TIDINGS_POST_RATE` messages in its window, through `/me`
/// and through the API on their behalf alike; beyond it, 429 with `Retry-After`, and other
/// people post on.
#[tokio::test(flavor = "multi_thread")]
async fn t6_posting_is_bounded_per_person() {
    let env = Env::with("2s", &[("TIDINGS_POST_RATE", "5/1m")], &[]);
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let cora = env.customer("Cora").await;
    let ben = env.user("Ben").await;
    let (_, item, conversation) = env.ticket("Printer").await;
    env.follow_item(item, cora).await;
    let token = env.session(cora).await;
    let path = format!("/me/conversations/{conversation}/messages");
    for n in 0..3 {
        let (status, answer) = env
            .call_as(
                &token,
                "POST",
                &path,
                Some(json!({"body": format!("me {n}")})),
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    for n in 0..2 {
        env.post(conversation, cora, &format!("api {n}"), false)
            .await;
    }
    let (status, headers, answer) = raw(
        &env,
        "POST",
        &path,
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"body":"one too many"}"#),
    )
    .await;
    assert_eq!(status, 429, "{answer}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("TIDINGS_POST_RATE"),
        "{answer}"
    );
    let (status, _) = env
        .call(
            "POST",
            &format!("/conversations/{conversation}/messages"),
            Some(json!({"author_id": cora, "body": "on her behalf", "internal": false})),
        )
        .await;
    assert_eq!(status, 429);
    // Someone else is not held up.
    env.post(conversation, ben, "Ben answers", false).await;
    assert_eq!(messages(&env, conversation).await.len(), 6);
}

/// T6: a conversation read is paged (newest first, a `before` cursor) and bounded in bytes:
/// long bodies come cut with `truncated` and their whole `length`, and are read whole one at
/// a time. Walking every page gives every message exactly once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn t6_conversation_reads_are_paged_and_bounded_in_bytes() {
    let env = Env::with(
        "2s",
        &[
            ("TIDINGS_READ_BUDGET", "65536"),
            ("TIDINGS_POST_RATE", "1000/1m"),
        ],
        &[],
    );
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let cora = env.customer("Cora").await;
    let (_, item, conversation) = env.ticket("Logs").await;
    env.follow_item(item, cora).await;
    let mut posted = Vec::new();
    for n in 0..10 {
        // 20,000 characters, 3 bytes each: cut at 16,384 characters (49,152 bytes).
        let body = format!("{n:02}{}", "€".repeat(19_998));
        posted.push(env.post(conversation, cora, &body, false).await);
    }
    for n in 0..5 {
        posted.push(
            env.post(conversation, cora, &format!("short {n}"), false)
                .await,
        );
    }
    let token = env.session(cora).await;
    let mut seen = Vec::new();
    let mut before: Option<i64> = None;
    let mut pages = 0;
    loop {
        let path = match before {
            Some(b) => format!("/me/conversations/{conversation}?before={b}"),
            None => format!("/me/conversations/{conversation}"),
        };
        let (status, page) = env.call_as(&token, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let text_bytes: usize = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().len())
            .sum();
        let count = page["messages"].as_array().unwrap().len();
        assert!(count >= 1);
        assert!(
            count == 1 || text_bytes <= 65_536,
            "page over the budget: {text_bytes}"
        );
        for m in page["messages"].as_array().unwrap() {
            if m["body"].as_str().unwrap().starts_with("short") {
                assert_eq!(m["truncated"], false);
            } else {
                assert_eq!(m["truncated"], true, "{}", m["id"]);
                assert_eq!(m["length"], 2 + 19_998 * 3);
                assert_eq!(m["body"].as_str().unwrap().chars().count(), 16_384);
            }
        }
        let ids: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect();
        seen.splice(0..0, ids);
        pages += 1;
        assert!(pages <= 15, "the pages never end");
        match page["older"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    assert_eq!(seen, posted, "every message once, oldest first");
    assert!(
        pages >= 4,
        "a 64 KiB budget holds one long body per page: {pages} pages"
    );
    // A limit bounds the count; a bad cursor or limit is named.
    let (_, page) = env
        .call_as(
            &token,
            "GET",
            &format!("/me/conversations/{conversation}?limit=2"),
            None,
        )
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 2);
    for (query, field) in [
        ("before=0", "before"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=x", "limit"),
    ] {
        let (status, answer) = env
            .call_as(
                &token,
                "GET",
                &format!("/me/conversations/{conversation}?{query}"),
                None,
            )
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (400, Some(field)),
            "{query}: {answer}"
        );
    }
    // A long body, read whole.
    let (status, whole) = env
        .call_as(&token, "GET", &format!("/me/messages/{}", posted[3]), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(whole["body"].as_str().unwrap().chars().count(), 20_000);
    assert_eq!(whole["truncated"], false);
    // The admin API pages the same way.
    let page = env
        .ok("GET", &format!("/conversations/{conversation}"), None)
        .await;
    assert!(page["older"].as_i64().is_some(), "{}", page["older"]);
    let whole = env
        .ok("GET", &format!("/messages/{}", posted[3]), None)
        .await;
    assert_eq!(whole["body"].as_str().unwrap().chars().count(), 20_000);
}

/// T6: revocation bites everywhere. Deactivating a person, signing out, and an admin's
/// revoke each end the person's open event streams at once (a `signed_out` event, then the
/// end) and refuse the token from then on; a new session after a sign-out works.
#[tokio::test(flavor = "multi_thread")]
async fn t6_revocation_ends_open_streams_and_tokens() {
    use support::live::Sse;
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let within = Duration::from_secs(5);

    // Signing out (the bearer form; the messenger uses the cookie) revokes the token.
    let token = env.session(ann).await;
    let mut stream = Sse::open(&env.base(), &token, None).await;
    assert_eq!(stream.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = raw(
        &env,
        "DELETE",
        "/session",
        &[("Authorization", &format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(status, 204);
    let event = stream.next_of("signed_out", within).await;
    assert!(event.is_some(), "no signed_out event after signing out");
    assert!(
        stream.next(within).await.is_none() && stream.ended,
        "the stream stays open"
    );
    let (status, answer) = env.call_as(&token, "GET", "/me", None).await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("revoked"),
        "{answer}"
    );

    // An admin's revoke.
    let token = env.session(ann).await;
    assert_eq!(env.call_as(&token, "GET", "/me", None).await.0, 200);
    let mut stream = Sse::open(&env.base(), &token, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.ok("DELETE", &format!("/people/{ann}/sessions"), None)
        .await;
    assert!(stream.next_of("signed_out", within).await.is_some());
    assert_eq!(env.call_as(&token, "GET", "/me", None).await.0, 401);

    // Deactivation. (Each stream is given a moment to reach its wait: ending it then, well
    // within the 15 s keep-alive, needs the wake-up.)
    let token = env.session(ann).await;
    let mut stream = Sse::open(&env.base(), &token, None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    env.ok(
        "PATCH",
        &format!("/people/{ann}"),
        Some(json!({"active": false})),
    )
    .await;
    assert!(
        stream.next_of("signed_out", within).await.is_some(),
        "a deactivated person's stream keeps delivering"
    );
    assert_eq!(env.call_as(&token, "GET", "/me", None).await.0, 403);
}

/// A `Last-Event-ID` that is not an id this service sent is answered like a client too far
/// behind: a `reset` event first, so the client reads its inbox again.
#[tokio::test(flavor = "multi_thread")]
async fn t6_a_malformed_last_event_id_gets_a_reset() {
    use support::live::Sse;
    let env = Env::new("2s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let token = env.session(ann).await;
    for id in ["abc", "-5", "1e9", "99999999999999999999"] {
        let mut stream = Sse::open_raw(&env.base(), &token, Some(id)).await;
        assert_eq!(stream.status, 200);
        let first = stream.next(Duration::from_secs(5)).await;
        assert_eq!(first.map(|e| e.kind), Some("reset".to_string()), "{id}");
    }
}

/// No password reset for the deactivated: a request is refused naming why, and a link issued
/// before the deactivation stops verifying.
#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_person_gets_no_password_reset() {
    let (env, _tidings) = running("1s").await;
    let ann = env.user("Ann").await;
    env.ok("POST", &format!("/people/{ann}/password-reset"), None)
        .await;
    support::wait_for(env.root(), "the reset email", async || {
        !env.mails_to("ann@example.com").is_empty()
    })
    .await;
    let text = env.mails_to("ann@example.com")[0]
        .parsed()
        .body_text(0)
        .unwrap()
        .to_string();
    let token = text
        .split("/password-reset/")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    env.ok(
        "PATCH",
        &format!("/people/{ann}"),
        Some(json!({"active": false})),
    )
    .await;
    let (status, answer) = env
        .call(
            "POST",
            "/password-resets/verify",
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(status, 410, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("deactivated"),
        "{answer}"
    );
    let (status, answer) = env
        .call("POST", &format!("/people/{ann}/password-reset"), None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("deactivated"),
        "{answer}"
    );
}

/// The metrics listener has the api's bounds: a header dripped slowly is cut off after the
/// header timeout, idle connections are closed, and `/readyz` works through it.
#[tokio::test(flavor = "multi_thread")]
async fn t6_the_metrics_listener_cuts_slow_and_idle_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let metrics = support::free_port();
    let env = Env::with(
        "2s",
        &[
            ("TIDINGS_METRICS_ADDR", &format!("127.0.0.1:{metrics}")),
            ("TIDINGS_HTTP_HEADER_TIMEOUT", "1s"),
        ],
        &[],
    );
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let addr = format!("127.0.0.1:{metrics}");
    let livez = reqwest::get(format!("http://{addr}/livez")).await.unwrap();
    assert_eq!(livez.status().as_u16(), 200);
    // Dripped headers: one line a second is cut off well before 10 s.
    let mut drip = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    drip.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let mut closed = false;
    for n in 0..10 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if drip
            .write_all(format!("X-Drip-{n}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(read)) =
            tokio::time::timeout(Duration::from_millis(50), drip.read(&mut buf)).await
        {
            closed = true;
            let _ = read;
            break;
        }
    }
    assert!(closed, "a dripped header stayed open");
    assert!(started.elapsed() < Duration::from_secs(6));
    // An idle connection is closed too.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(_)) | Ok(Err(_))),
        "an idle connection stayed open for 5 s"
    );
}

/// The signed-link pages carry a policy: no script, no framing.
#[tokio::test(flavor = "multi_thread")]
async fn t6_signed_link_pages_forbid_scripts_and_frames() {
    let (env, _tidings) = running("1s").await;
    let (_, _, _, _, _) = emailed(&env).await;
    let mail = &env.mails_to("bob@example.com")[0];
    let link = mail
        .header("List-Unsubscribe")
        .unwrap()
        .split(['<', '>'])
        .find(|part| part.starts_with("http"))
        .unwrap()
        .to_string();
    let resp = reqwest::get(&link).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{link}");
    let policy = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("<html lang=\"en\">") && html.contains("<title>"),
        "{html}"
    );
}
