//! The admin console (SPEC M1–M6, L1, L3, P1): who is an admin, what an admin's session may
//! do, template versions across a fleet, recovering mail set aside, and the console itself in
//! a real browser (Debian's Chromium, headless), by mouse and keyboard, checked with axe-core.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::Env;
use support::live::Driver;

const SETTLE: Duration = Duration::from_secs(30);
const LIVE: Duration = Duration::from_secs(10);

/// Every path parameter replaced by something of the right shape.
fn concrete(path: &str, id: i64) -> String {
    path.split('/')
        .map(|part| match part {
            "{address}" => "a@example.com".to_string(),
            "{name}" => "notification".to_string(),
            "{event}" => "user_created".to_string(),
            p if p.starts_with('{') => id.to_string(),
            p => p.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A user who is an admin (made so with the API token), and the session the host application
/// mints for them.
async fn admin(env: &Env, name: &str) -> (i64, String) {
    let id = env.user(name).await;
    let person = env
        .ok(
            "PATCH",
            &format!("/people/{id}"),
            Some(json!({"admin": true})),
        )
        .await;
    assert_eq!(person["admin"], true, "{person}");
    (id, env.session(id).await)
}

/// A non-admin user's session and a customer's are refused (403) on every admin operation of
/// the OpenAPI document; an admin's session is let through, but may not mint a session for
/// someone else or make someone an admin; a write with an admin's cookie from another origin
/// is refused; and every change an admin makes is recorded with who made it.
#[tokio::test(flavor = "multi_thread")]
async fn only_an_admins_session_reaches_the_admin_routes() {
    let env = Env::new("1s");
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ben = env.user("Ben").await;
    let cat = env.customer("Cat").await;
    let (ann, ann_token) = admin(&env, "Ann").await;
    let tokens = [env.session(ben).await, env.session(cat).await];
    let doc = env.ok("GET", "/openapi.json", None).await;
    let mut tried = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let bearer = op["security"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s.get("bearer").is_some());
            if !bearer {
                continue;
            }
            let url = concrete(path, ben);
            for token in &tokens {
                let (status, answer) = env
                    .call_as(token, &method.to_uppercase(), &url, Some(json!({})))
                    .await;
                assert_eq!(status, 403, "{method} {url}: {answer}");
                assert!(
                    answer["error"].as_str().unwrap().contains("admin"),
                    "{answer}"
                );
            }
            tried += 1;
        }
    }
    assert!(tried > 50, "admin operations tried: {tried}");
    // An admin's session reads and changes what the API token does.
    let (status, list) = env
        .call_as(&ann_token, "GET", "/people?kind=user", None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let (status, answer) = env
        .call_as(
            &ann_token,
            "PATCH",
            &format!("/people/{ben}/preferences"),
            Some(json!({"see_conversations": "all_projects"})),
        )
        .await;
    assert_eq!(status, 200, "P1 is set by an admin: {answer}");
    // Not the host application's powers.
    let (status, answer) = env
        .call_as(&ann_token, "POST", &format!("/people/{ben}/sessions"), None)
        .await;
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = env
        .call_as(
            &ann_token,
            "PATCH",
            &format!("/people/{ben}"),
            Some(json!({"admin": true})),
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    // The cookie: a write from another origin is refused; from the console's own, it works.
    let cookie = format!("tidings_session={ann_token}");
    let write = |origin: String| {
        reqwest::Client::new()
            .patch(format!("{}/system-notifications/user_created", env.base()))
            .header("Cookie", cookie.clone())
            .header("Origin", origin)
            .json(&json!({"enabled": false}))
            .send()
    };
    let port = support::free_port();
    let refused = write(format!("http://127.0.0.1:{port}")).await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let done = write(env.base()).await.unwrap();
    assert_eq!(
        done.status().as_u16(),
        200,
        "{}",
        done.text().await.unwrap()
    );
    // Recorded: who, what, the answer and the body.
    let changes = env.ok("GET", "/admin-changes", None).await;
    let changes = changes.as_array().unwrap();
    assert_eq!(changes.len(), 4, "{changes:?}");
    let last = &changes[0];
    assert_eq!(last["actor_id"], ann);
    assert_eq!(last["actor"], "Ann");
    assert_eq!(last["path"], "/system-notifications/user_created");
    assert_eq!(last["status"], 200);
    assert_eq!(last["body"], json!({"enabled": false}));
    assert_eq!(
        changes[1]["status"], 403,
        "the refused attempts are recorded too"
    );
    // The API token's changes are the host application's own: not an admin's.
    env.ok(
        "PATCH",
        "/system-notifications/user_created",
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(
        env.ok("GET", "/admin-changes", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

/// M5 in a fleet: a template version saved through the api is used by two mailer processes
/// within seconds (announced on the broker; their periodic look is set to a minute here, so
/// only the announcement can be it), a broken one is refused with its line and column and
/// nothing is saved, a revert goes back to the files, and `tidings templates export` writes the
/// versions out.
#[tokio::test(flavor = "multi_thread")]
async fn m5_a_saved_version_reaches_every_process_in_seconds() {
    let env = Env::with("1s", &[("TIDINGS_TEMPLATES_RELOAD", "60s")], &[]);
    let _api = env.spawn(&["api", "dispatch"]);
    let _one = env.spawn_named("mailer-one", &["mailer"], &[]);
    let _two = env.spawn_named("mailer-two", &["mailer"], &[]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let current = env.ok("GET", "/templates/notification", None).await;
    assert_eq!(current["version"], Value::Null, "{current}");
    assert_eq!(current["shipped"], true);
    // Broken: an unclosed block. Refused with where it is; nothing saved.
    let broken = json!({
        "subject": current["subject"],
        "text": current["text"],
        "html": "<p>{{#if message}}\n<b>{{message.body}}</b>\n",
    });
    let (status, answer) = env
        .call("PUT", "/templates/notification", Some(broken.clone()))
        .await;
    assert_eq!(status, 422, "{answer}");
    let problem = &answer["problems"][0];
    assert!(
        problem["file"]
            .as_str()
            .unwrap()
            .ends_with("notification/html.hbs"),
        "{answer}"
    );
    assert!(problem["line"].as_u64().is_some(), "{answer}");
    assert_eq!(env.sql("SELECT count(*) FROM template_versions"), "0");
    let preview = env
        .ok("POST", "/templates/notification/preview", Some(broken))
        .await;
    assert!(preview["previews"].as_array().unwrap().is_empty());
    assert!(!preview["problems"].as_array().unwrap().is_empty());
    // Good: every process serves it within seconds.
    let subject = format!("[Desk] {}", current["subject"].as_str().unwrap());
    let good = json!({"subject": subject, "text": current["text"], "html": current["html"]});
    let preview = env
        .ok(
            "POST",
            "/templates/notification/preview",
            Some(good.clone()),
        )
        .await;
    assert!(
        preview["previews"][0]["subject"]
            .as_str()
            .unwrap()
            .starts_with("[Desk] "),
        "{preview}"
    );
    let saved_at = Instant::now();
    let saved = env.ok("PUT", "/templates/notification", Some(good)).await;
    assert!(saved["version"].as_i64().is_some(), "{saved}");
    for mailer in ["mailer-one", "mailer-two"] {
        support::wait_for(env.root(), &format!("{mailer} to load it"), async || {
            std::fs::read_to_string(env.root().join(format!("{mailer}.log")))
                .unwrap_or_default()
                .contains("template versions loaded")
        })
        .await;
    }
    let loaded_in = saved_at.elapsed();
    assert!(loaded_in < Duration::from_secs(10), "{loaded_in:?}");
    // The next notification emails use it, whichever mailer sends them.
    let ann = env.user("Ann").await;
    let ben = env.user("Ben").await;
    let mut sent = Vec::new();
    for n in 0..4 {
        let (_, item, conv) = env.ticket(&format!("Printer {n}")).await;
        env.follow_item(item, ann).await;
        sent.push(env.post(conv, ben, "Is it fixed?", false).await);
    }
    for m in sent {
        env.settled(m, SETTLE).await;
    }
    let mails = env.mails_to("ann@example.com");
    assert_eq!(mails.len(), 4);
    for mail in &mails {
        let subject = mail.header("Subject").unwrap();
        assert!(subject.starts_with("[Desk] "), "{subject}");
    }
    // Export writes the versions out as files.
    let out = env.root().join("exported");
    let status = env
        .command(&["templates", "export", out.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let exported = std::fs::read_to_string(out.join("en/notification/subject.hbs")).unwrap();
    assert!(exported.starts_with("[Desk] "), "{exported}");
    // Revert: back to the files, in every process.
    let reverted = env.ok("POST", "/templates/notification/revert", None).await;
    assert_eq!(reverted["version"], Value::Null, "{reverted}");
    let history = env
        .ok("GET", "/templates/notification/versions", None)
        .await;
    assert_eq!(history.as_array().unwrap().len(), 2);
    assert_eq!(history[0]["revert"], true);
}
