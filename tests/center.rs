//! The messaging center end to end on real services: templates (M5), system notifications
//! (M4), automations (M1–M3), email preferences (E1–E3), the email log (L1) and the
//! scheduler.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Env, SunkMail};

/// Waits until `address` has received `count` emails; returns them, oldest first.
async fn mails(env: &Env, address: &str, count: usize) -> Vec<SunkMail> {
    support::wait_for(
        env.root(),
        &format!("{count} email(s) to {address}"),
        async || env.mails_to(address).len() >= count,
    )
    .await;
    env.mails_to(address)
}

fn subject(mail: &SunkMail) -> String {
    mail.parsed().subject().unwrap_or_default().to_string()
}

fn text(mail: &SunkMail) -> String {
    mail.parsed()
        .body_text(0)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn started(env: &Env, roles: &[&str]) -> support::Process {
    let process = env.spawn(roles);
    env.wait_for_api().await;
    process
}

async fn user_with(env: &Env, name: &str, body: Value) -> i64 {
    let mut body = body;
    body["name"] = json!(name);
    body["email"] = json!(format!("{}@example.com", name.to_lowercase()));
    env.ok("POST", "/users", Some(body)).await["id"]
        .as_i64()
        .unwrap()
}

async fn set_preference(env: &Env, person: i64, field: &str, value: Value) {
    env.ok(
        "PATCH",
        &format!("/people/{person}/preferences"),
        Some(json!({ field: value })),
    )
    .await;
}

async fn project(env: &Env, name: &str) -> i64 {
    env.ok("POST", "/projects", Some(json!({"name": name})))
        .await["id"]
        .as_i64()
        .unwrap()
}

async fn invite(env: &Env, project: i64, person: i64) -> Value {
    env.ok(
        "POST",
        &format!("/projects/{project}/invitations"),
        Some(json!({ "person_id": person })),
    )
    .await
}

/// A copy of the shipped templates, for tests that edit them.
fn own_templates() -> std::path::PathBuf {
    let to = std::env::temp_dir().join(format!(
        "tidings-test-templates-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&from)
        .arg(&to)
        .status()
        .unwrap();
    assert!(status.success());
    to
}

// ---- templates (M5) ----

#[tokio::test]
async fn m5_templates_check_names_each_broken_file() {
    let env = Env::new("2s");
    let dir = own_templates();
    let dir_arg = dir.to_str().unwrap();
    let good = env
        .command(&["templates", "check", "--dir", dir_arg])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}");
    assert!(
        out.contains("sv: ") && out.contains("password_reset"),
        "{out}"
    );

    std::fs::write(dir.join("sv/welcome/text.hbs"), "Hej\n{{#if recipient}}\n").unwrap();
    std::fs::write(
        dir.join("en/assignment/subject.hbs"),
        "Assigned: {{item.titel}}",
    )
    .unwrap();
    let bad = env
        .command(&["templates", "check", "--dir", dir_arg])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{out}");
    assert!(out.contains("sv/welcome/text.hbs line"), "{out}");
    // A syntax error stops the render pass; fixing it reveals the strict-mode error.
    std::fs::write(dir.join("sv/welcome/text.hbs"), "Hej {{recipient.name}}\n").unwrap();
    let bad = env
        .command(&["templates", "check", "--dir", dir_arg])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(!bad.status.success(), "{out}");
    assert!(out.contains("en/assignment/subject.hbs"), "{out}");
    assert!(out.contains("titel"), "{out}");

    // Preview renders one template in a locale, with fallback.
    let preview = env
        .command(&[
            "templates",
            "preview",
            "password_reset",
            "--locale",
            "sv-FI",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&preview.stdout);
    assert!(preview.status.success(), "{out}");
    assert!(
        out.contains("Subject: Återställ") && out.contains("Locale: sv"),
        "{out}"
    );
    let html = env.root().join("preview.html");
    let preview = env
        .command(&[
            "templates",
            "preview",
            "welcome",
            "--html",
            html.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(preview.status.success());
    assert!(std::fs::read_to_string(html).unwrap().contains("<html>"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn m5_a_broken_edit_keeps_the_last_good_template_serving() {
    let dir = own_templates();
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_TEMPLATES_DIR", dir.to_str().unwrap()),
            ("TIDINGS_TEMPLATES_RELOAD", "200ms"),
        ],
        &[],
    );
    let _all = started(&env, &["all"]).await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;

    // A good edit takes effect without a restart.
    std::fs::write(
        dir.join("en/notification/subject.hbs"),
        "Edited: {{conversation.subject}}",
    )
    .unwrap();
    support::wait_for(env.root(), "the edit to be picked up", async || {
        env.log_of(&["all"]).contains("templates reloaded")
    })
    .await;
    let m = env.post(conv, ann, "first", false).await;
    env.settled(m, Duration::from_secs(30)).await;
    assert_eq!(
        subject(&mails(&env, "bob@example.com", 1).await[0]),
        "Edited: Printer"
    );

    // A broken edit is reported with file, line and reason; the last good version serves on.
    std::fs::write(
        dir.join("en/notification/html.hbs"),
        "{{#> layout}}\n<p>{{#each messages}}</p>\n{{/layout}}",
    )
    .unwrap();
    support::wait_for(env.root(), "the broken edit to be rejected", async || {
        env.log_of(&["all"]).contains("template change rejected")
    })
    .await;
    let log = env.log_of(&["all"]);
    let line = log
        .lines()
        .find(|l| l.contains("template change rejected"))
        .unwrap();
    assert!(line.contains("en/notification/html.hbs"), "{line}");
    assert!(line.contains("line="), "{line}");
    let m = env.post(conv, ann, "second", false).await;
    env.settled(m, Duration::from_secs(30)).await;
    let got = mails(&env, "bob@example.com", 2).await;
    assert_eq!(subject(&got[1]), "Edited: Printer");
    assert!(text(&got[1]).contains("second"));
    std::fs::remove_dir_all(dir).unwrap();
}

// ---- system notifications (M4) and locales ----

#[tokio::test]
async fn m4_system_notifications_password_reset_cannot_be_disabled() {
    let env = Env::new("2s");
    let _all = started(&env, &["all"]).await;

    let (status, body) = env
        .call(
            "PATCH",
            "/system-notifications/password_reset_requested",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be disabled"),
        "{body}"
    );
    let list = env.ok("GET", "/system-notifications", None).await;
    let reset = list
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["event"] == "password_reset_requested")
        .unwrap();
    assert_eq!(reset["enabled"], true);
    assert!(reset["warning"].as_str().is_some(), "{reset}");
    let (status, _) = env
        .call(
            "PATCH",
            "/system-notifications/no_such_event",
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 404);

    // Welcome emails on: a Swedish user gets the Swedish template, an unknown locale falls
    // back to English.
    env.ok(
        "PATCH",
        "/system-notifications/user_created",
        Some(json!({"enabled": true})),
    )
    .await;
    let sven = user_with(&env, "Sven", json!({"locale": "sv"})).await;
    user_with(&env, "Dora", json!({"locale": "de"})).await;
    let sv = mails(&env, "sven@example.com", 1).await;
    assert_eq!(subject(&sv[0]), "Välkommen till Tidings, Sven");
    let de = mails(&env, "dora@example.com", 1).await;
    assert_eq!(subject(&de[0]), "Welcome to Tidings, Dora");

    // Disabled: no email, and the log says why.
    env.ok(
        "PATCH",
        "/system-notifications/user_created",
        Some(json!({"enabled": false})),
    )
    .await;
    user_with(&env, "Quiet", json!({})).await;
    support::wait_for(env.root(), "the skipped welcome to be logged", async || {
        env.ok("GET", "/email-log?status=skipped", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|r| {
                r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("user_created is disabled"))
            })
    })
    .await;

    // Password reset always goes, with a link.
    env.ok("POST", &format!("/people/{sven}/password-reset"), None)
        .await;
    let got = mails(&env, "sven@example.com", 2).await;
    assert!(
        subject(&got[1]).starts_with("Återställ"),
        "{}",
        subject(&got[1])
    );
    assert!(
        text(&got[1]).contains("/password-reset/"),
        "{}",
        text(&got[1])
    );
    assert!(env.mails_to("quiet@example.com").is_empty());
    let (status, _) = env
        .call("POST", "/people/999999/password-reset", None)
        .await;
    assert_eq!(status, 404);
}

// ---- automations (M1–M3) ----

async fn critical(env: &Env) -> Value {
    env.ok("GET", "/automations", None)
        .await
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["critical"] == true)
        .cloned()
        .expect("the critical automation exists from the first migration")
}

#[tokio::test]
async fn m2_the_critical_automation_cannot_be_disabled_or_deleted() {
    let env = Env::new("2s");
    let _api = started(&env, &["api"]).await;
    let c = critical(&env).await;
    assert_eq!(c["trigger"], "message_posted");
    assert_eq!(c["template"], "notification");
    let id = c["id"].as_i64().unwrap();
    let path = format!("/automations/{id}");

    let (status, body) = env
        .call("PATCH", &path, Some(json!({"enabled": false})))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be disabled")
    );
    let (status, body) = env.call("DELETE", &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("cannot be deleted")
    );
    let (status, _) = env
        .call("PATCH", &path, Some(json!({"trigger": "item_created"})))
        .await;
    assert_eq!(status, 409);
    let renamed = env
        .ok("PATCH", &path, Some(json!({"name": "Notify followers"})))
        .await;
    assert_eq!(renamed["name"], "Notify followers");
    assert_eq!(critical(&env).await["enabled"], true);
    assert_eq!(
        env.sql("SELECT count(*) FROM automations WHERE critical AND enabled"),
        "1"
    );
    // Templates list the critical automation as the sender of the notification template.
    let templates = env.ok("GET", "/templates", None).await;
    let notification = templates["templates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "notification")
        .unwrap()
        .clone();
    assert_eq!(notification["automations"][0]["id"], json!(id));
    assert_eq!(notification["locales"], json!(["en", "sv"]));

    // Bad input is named.
    let (status, body) = env
        .call(
            "POST",
            "/automations",
            Some(
                json!({"name": "x", "trigger": "item_created", "action": "send_email",
                        "template": "no_such_template", "audience": "followers"}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("template")),
        "{body}"
    );
    let (status, body) = env
        .call(
            "POST",
            "/automations",
            Some(
                json!({"name": "x", "trigger": "whenever", "action": "post_message", "body": "hi"}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("trigger")),
        "{body}"
    );
    let (status, _) = env.call("DELETE", "/automations/424242", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn m1_an_automation_message_notifies_followers() {
    let env = Env::new("1s");
    let _all = started(&env, &["all"]).await;
    let a = env
        .ok(
            "POST",
            "/automations",
            Some(json!({"name": "Closing note", "trigger": "status_changed",
                        "condition": {"status": "closed"}, "action": "post_message",
                        "body": "This {{item.kind}} is now {{item.status}}. Reply to reopen it."})),
        )
        .await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;

    // A status change the condition does not match posts nothing.
    env.ok(
        "PATCH",
        &format!("/items/{item}"),
        Some(json!({"status": "pending"})),
    )
    .await;
    env.ok(
        "PATCH",
        &format!("/items/{item}"),
        Some(json!({"status": "closed"})),
    )
    .await;
    let conversation = format!("/conversations/{conv}");
    support::wait_for(env.root(), "the automation's message", async || {
        env.ok("GET", &conversation, None).await["messages"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    })
    .await;
    let messages = env.ok("GET", &conversation, None).await["messages"].clone();
    let posted = &messages[0];
    assert_eq!(
        posted["body"],
        "This ticket is now closed. Reply to reopen it."
    );
    let message = posted["id"].as_i64().unwrap();
    let d = env.settled(message, Duration::from_secs(30)).await;
    assert!(
        d["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["recipient_id"] == json!(bob) && r["email_state"] == "sent"),
        "{d}"
    );
    let got = mails(&env, "bob@example.com", 1).await;
    assert!(text(&got[0]).contains("This ticket is now closed."));
    assert!(
        text(&got[0]).contains("Tidings automations wrote"),
        "{}",
        text(&got[0])
    );
    let listed = env
        .ok("GET", &format!("/automations/{}", a["id"]), None)
        .await;
    assert_eq!(listed["recent_messages"], json!([message]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.ok("GET", &format!("/conversations/{conv}"), None).await["messages"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "the pending status change must not have posted"
    );
}

#[tokio::test]
async fn m1_an_automation_loop_is_capped() {
    let env = Env::with("1s", &[("TIDINGS_AUTOMATION_LIMITS", "3/10m,5/24h")], &[]);
    let _all = started(&env, &["all"]).await;
    // Every new message (its own included) triggers another: a loop.
    let a = env
        .ok(
            "POST",
            "/automations",
            Some(
                json!({"name": "Echo", "trigger": "message_posted", "action": "post_message",
                        "body": "Thanks, we got your message about {{item.title}}."}),
            ),
        )
        .await;
    let ann = env.user("Ann").await;
    let (_, _, conv) = env.ticket("Printer").await;
    env.post(conv, ann, "Hello?", false).await;
    let path = format!("/automations/{}", a["id"]);
    support::wait_for(env.root(), "the cap to bite", async || {
        env.ok("GET", &path, None).await["recent_capped_runs"] == json!(1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let messages = env.ok("GET", &format!("/conversations/{conv}"), None).await["messages"].clone();
    let bot_messages = messages
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["author_id"] != json!(ann))
        .count();
    assert_eq!(bot_messages, 3, "{messages}");
    assert_eq!(
        env.ok("GET", &path, None).await["recent_capped_runs"],
        json!(1)
    );
    assert!(env.log_of(&["all"]).contains("automation loop cap reached"));
}

#[tokio::test]
async fn m3_an_automation_emails_the_requester_until_disabled() {
    let env = Env::new("1s");
    let _all = started(&env, &["all"]).await;
    let a = env
        .ok(
            "POST",
            "/automations",
            Some(json!({"name": "Tell the requester", "trigger": "item_closed",
                        "action": "send_email", "template": "item_update", "audience": "requester"})),
        )
        .await;
    let cid = env.customer("Carol").await;
    let p = project(&env, "Support").await;
    let item = |title: &str| json!({"project_id": p, "kind": "ticket", "title": title, "requester_id": cid});
    let first = env.ok("POST", "/items", Some(item("Broken lamp"))).await["id"].clone();
    env.ok(
        "PATCH",
        &format!("/items/{first}"),
        Some(json!({"status": "closed"})),
    )
    .await;
    let got = mails(&env, "carol@example.com", 1).await;
    assert_eq!(
        subject(&got[0]),
        format!("[ticket #{first}] Broken lamp is now closed")
    );
    assert!(text(&got[0]).contains("Tell the requester"));
    let log = env
        .ok("GET", "/email-log?direction=out&status=sent", None)
        .await;
    let row = log
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["rcpt_to"] == "carol@example.com")
        .unwrap()
        .clone();
    assert_eq!(row["rule"], format!("automation:{}", a["id"]));

    env.ok(
        "PATCH",
        &format!("/automations/{}", a["id"]),
        Some(json!({"enabled": false})),
    )
    .await;
    let second = env.ok("POST", "/items", Some(item("Broken chair"))).await["id"].clone();
    env.ok(
        "PATCH",
        &format!("/items/{second}"),
        Some(json!({"status": "closed"})),
    )
    .await;
    support::wait_for(env.root(), "the second close to be handled", async || {
        env.sql("SELECT count(*) FROM domain_events WHERE handled_at IS NULL") == "0"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.mails_to("carol@example.com").len(), 1);
}

// ---- email preferences (E1–E3) ----

#[tokio::test]
async fn e1_assignment_and_unassignment_emails() {
    let env = Env::new("1s");
    let _all = started(&env, &["all"]).await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    set_preference(&env, bob, "email_assignments", json!(false)).await;
    let p = project(&env, "Support").await;
    let item = env
        .ok(
            "POST",
            "/items",
            Some(json!({"project_id": p, "kind": "task", "title": "Order toner", "assignee_id": ann})),
        )
        .await["id"]
        .clone();
    let got = mails(&env, "ann@example.com", 1).await;
    assert_eq!(
        subject(&got[0]),
        format!("Assigned to you: [task #{item}] Order toner")
    );

    env.ok(
        "PATCH",
        &format!("/items/{item}"),
        Some(json!({"assignee_id": bob})),
    )
    .await;
    let got = mails(&env, "ann@example.com", 2).await;
    assert_eq!(
        subject(&got[1]),
        format!("No longer assigned to you: [task #{item}] Order toner")
    );
    support::wait_for(env.root(), "the events to be handled", async || {
        env.sql("SELECT count(*) FROM domain_events WHERE handled_at IS NULL") == "0"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        env.mails_to("bob@example.com").is_empty(),
        "Bob turned E1 off"
    );

    let (status, body) = env
        .call(
            "PATCH",
            &format!("/items/{item}"),
            Some(json!({"assignee_id": 987654})),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = env
        .call(
            "PATCH",
            &format!("/items/{item}"),
            Some(json!({"status": "done-ish"})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("status")),
        "{body}"
    );
}

#[tokio::test]
async fn e2_e3_project_members_and_invitations() {
    let env = Env::new("1s");
    let _all = started(&env, &["all"]).await;
    let p = project(&env, "Billing").await;
    let ann = env.user("Ann").await; // E2 off (the default)
    let bob = env.user("Bob").await; // E2 on
    for who in [ann, bob] {
        env.ok("PUT", &format!("/projects/{p}/followers/{who}"), None)
            .await;
    }
    set_preference(&env, bob, "email_project_members", json!(true)).await;
    let prefs = env
        .ok("GET", &format!("/people/{ann}/preferences"), None)
        .await;
    assert_eq!(prefs["email_project_members"], false);
    assert_eq!(prefs["accept_all_invitations"], true);

    // E3 on (the default): accepted at once, logged, and the project's E2 followers hear of it.
    let dee = env.user("Dee").await;
    let inv = invite(&env, p, dee).await;
    assert_eq!(inv["status"], "accepted_automatically");
    let got = mails(&env, "bob@example.com", 1).await;
    assert_eq!(subject(&got[0]), "Dee joined Billing");
    assert!(
        env.log_of(&["all"])
            .contains("invitation accepted automatically")
    );
    assert!(env.mails_to("dee@example.com").is_empty());

    // E3 off: an invitation email with a signed accept link.
    let eve = env.user("Eve").await;
    set_preference(&env, eve, "accept_all_invitations", json!(false)).await;
    let inv = invite(&env, p, eve).await;
    assert_eq!(inv["status"], "pending");
    let got = mails(&env, "eve@example.com", 1).await;
    assert_eq!(subject(&got[0]), "You are invited to the project Billing");
    let body = text(&got[0]);
    let link = body
        .split_whitespace()
        .find(|w| w.contains("/invitations/"))
        .unwrap()
        .to_string();
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM project_follows WHERE person_id = {eve}"
        )),
        "0"
    );
    let client = reqwest::Client::new();
    let forged = format!("{}x", link);
    assert_eq!(
        client.post(&forged).send().await.unwrap().status().as_u16(),
        400
    );
    // GET only shows a page (mail scanners follow links); POST accepts.
    assert_eq!(
        client.get(&link).send().await.unwrap().status().as_u16(),
        200
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM project_follows WHERE person_id = {eve}"
        )),
        "0"
    );
    let accepted: Value = client
        .post(&link)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(accepted["status"], "accepted");
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM project_follows WHERE person_id = {eve}"
        )),
        "1"
    );
    let got = mails(&env, "bob@example.com", 2).await;
    assert_eq!(subject(&got[1]), "Eve joined Billing");
    assert!(env.mails_to("ann@example.com").is_empty(), "Ann has E2 off");
    // A team joining counts too: one email about the team, none to its members.
    let fay = env.user("Fay").await;
    set_preference(&env, fay, "email_project_members", json!(true)).await;
    let team = env
        .ok("POST", "/teams", Some(json!({"name": "Night shift"})))
        .await["id"]
        .as_i64()
        .unwrap();
    env.ok("PUT", &format!("/teams/{team}/members/{fay}"), None)
        .await;
    env.ok("PUT", &format!("/projects/{p}/teams/{team}"), None)
        .await;
    let got = mails(&env, "bob@example.com", 3).await;
    assert_eq!(subject(&got[2]), "Night shift joined Billing");
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM project_follows WHERE person_id = {fay} AND project_id = {p}"
        )),
        "1"
    );
    assert!(env.mails_to("fay@example.com").is_empty());
    let (status, _) = env
        .call("PUT", &format!("/projects/{p}/teams/777"), None)
        .await;
    assert_eq!(status, 404);

    let (status, _) = env
        .call(
            "POST",
            &format!("/projects/{p}/invitations"),
            Some(json!({"person_id": eve})),
        )
        .await;
    assert_eq!(status, 409);
}

// ---- the email log (L1) and the scheduler ----

#[tokio::test]
async fn l1_log_purge_keeps_threading_data() {
    let env = Env::new("1s");
    let _all = started(&env, &["all"]).await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    let m = env.post(conv, ann, "Is the printer fixed?", false).await;
    env.settled(m, Duration::from_secs(30)).await;
    let mail = mails(&env, "bob@example.com", 1).await.remove(0);
    let message_id = mail.header("Message-ID").unwrap();

    // The admin log shows full addresses; process logs mask them.
    let out = env
        .command(&["log", "--direction", "out"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("bob@example.com") && table.contains("sent"),
        "{table}"
    );
    assert!(!env.log_of(&["all"]).contains("bob@example.com"));

    // Age everything past the 72 hours, then purge.
    env.sql("UPDATE email_log SET created_at = now() - interval '80 hours'");
    env.sql("UPDATE notifications SET created_at = now() - interval '80 hours'");
    let out = env.command(&["schedule", "purge_log"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("email log rows"));
    assert_eq!(env.sql("SELECT count(*) FROM email_log"), "0");
    // Threading data stays: the notification's Message-ID, so a reply still threads.
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM notifications WHERE email_message_id = '{message_id}'"
        )),
        "1"
    );
    let reply = format!(
        "From: Bob <bob@example.com>\r\nTo: support@{}\r\nSubject: Re: Printer\r\nMessage-ID: <reply-1@example.com>\r\nIn-Reply-To: {message_id}\r\nReferences: {message_id}\r\n\r\nYes, it works again.\r\n",
        support::REPLY_DOMAIN
    );
    let replies = env
        .smtp(
            "bob@example.com",
            &[&format!("support@{}", support::REPLY_DOMAIN)],
            &reply,
        )
        .await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the reply to be threaded", async || {
        env.ok("GET", "/email-log?direction=in", None)
            .await
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["status"] == "threaded")
    })
    .await;
    let out = env
        .command(&["log", "--direction", "in", "--since", "1h"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("into conversation {conv}")),
        "{table}"
    );
    let (status, body) = env.call("GET", "/email-log?direction=sideways", None).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("direction")));
}

#[tokio::test]
async fn two_schedulers_run_each_tick_once() {
    let env = Env::with(
        "2s",
        &[
            ("TIDINGS_SCHEDULE_PURGE_LOG", "* * * * * *"),
            ("TIDINGS_SCHEDULE_SWEEP", "*/2 * * * * *"),
        ],
        &[],
    );
    let a = env.spawn(&["scheduler"]);
    let b = env.spawn(&["scheduler", "scheduler"]);
    support::wait_for(env.root(), "six purge ticks", async || {
        env.sql("SELECT count(*) FROM scheduler_runs WHERE job = 'purge_log' AND finished_at IS NOT NULL")
            .parse::<i64>()
            .unwrap_or(0)
            >= 6
    })
    .await;
    drop((a, b));
    let rows: i64 = env
        .sql("SELECT count(*) FROM scheduler_runs")
        .parse()
        .unwrap();
    let logs = env.log_of(&["scheduler"]) + &env.log_of(&["scheduler", "scheduler"]);
    let ran = logs.matches("job ran").count() + logs.matches("job failed").count();
    assert!(env.log_of(&["scheduler"]).contains("scheduler starting"));
    assert!(
        env.log_of(&["scheduler", "scheduler"])
            .contains("scheduler starting")
    );
    // Every run is one row (one per job and tick), never one per process.
    assert!(
        ran as i64 <= rows && rows <= ran as i64 + 2,
        "{ran} runs logged, {rows} rows"
    );
    let runners: i64 = env
        .sql("SELECT count(DISTINCT runner) FROM scheduler_runs")
        .parse()
        .unwrap();
    assert!(runners >= 1);
    let ticks =
        env.sql("SELECT count(*) FROM (SELECT tick FROM scheduler_runs WHERE job = 'purge_log') t");
    assert_eq!(
        ticks,
        env.sql("SELECT count(DISTINCT tick) FROM scheduler_runs WHERE job = 'purge_log'")
    );
}

#[tokio::test]
async fn l1_old_reply_addresses_and_threading_data_expire() {
    let env = Env::with("1s", &[("TIDINGS_THREADING_RETENTION", "30d")], &[]);
    let _all = started(&env, &["all"]).await;
    let bob = env.user("Bob").await;
    let (_, _, conv) = env.ticket("Printer").await;
    let today = tidings_common::mail::epoch_day(tidings_common::clock::now());
    let address = |issued_day| {
        tidings_common::mail::ReplyToken {
            conversation_id: conv,
            person_id: bob,
            issued_day,
        }
        .address(support::SECRET.as_bytes(), support::REPLY_DOMAIN)
    };
    for (n, to) in [(1, address(today - 31)), (2, address(today - 1))] {
        let mail = format!(
            "From: Bob <bob@example.com>\r\nTo: {to}\r\nSubject: Re: Printer\r\nMessage-ID: <old-{n}@example.com>\r\n\r\nReply number {n}.\r\n"
        );
        // A relay retries a 4xx; so does this test while the listener connects to the broker.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let replies = env.smtp("bob@example.com", &[&to], &mail).await;
            if replies.last().unwrap().starts_with("250") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{replies:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    support::wait_for(env.root(), "both replies to be logged", async || {
        env.ok("GET", "/email-log?direction=in", None)
            .await
            .as_array()
            .unwrap()
            .len()
            == 2
    })
    .await;
    let log = env.ok("GET", "/email-log?direction=in", None).await;
    // The two are processed concurrently, so each row is found by its Message-ID.
    let row = |n: usize| {
        log.as_array()
            .unwrap()
            .iter()
            .find(|r| r["message_id_header"] == json!(format!("<old-{n}@example.com>")))
            .unwrap_or_else(|| panic!("no row for reply {n}: {log}"))
    };
    // The fresh address threads, the 31-day-old one is refused.
    assert_eq!(row(2)["status"], "threaded", "{log}");
    assert_eq!(row(1)["status"], "rejected", "{log}");
    assert!(
        row(1)["reason"].as_str().unwrap().contains("expired"),
        "{log}"
    );

    // Threading data past its lifetime goes; the conversation stays.
    env.sql("UPDATE inbound_emails SET received_at = now() - interval '40 days' WHERE message_id_header = '<old-1@example.com>'");
    let out = env
        .command(&["schedule", "expire_threading"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("expired 1 received Message-IDs"), "{said}");
    assert_eq!(env.sql("SELECT count(*) FROM inbound_emails"), "1");
    let messages = env.ok("GET", &format!("/conversations/{conv}"), None).await["messages"].clone();
    assert_eq!(messages.as_array().unwrap().len(), 1, "{messages}");
}
