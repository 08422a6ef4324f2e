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
