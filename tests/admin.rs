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

/// How many welcome emails the email log shows as skipped because the switch was off.
async fn welcomes_skipped(env: &Env) -> usize {
    let skipped = env.ok("GET", "/email-log?status=skipped", None).await;
    skipped
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|r| r.contains("user_created is disabled"))
        })
        .count()
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

/// Saves a screenshot for the docs when `TIDINGS_SCREENSHOT_DIR` is set.
async fn picture(view: &support::live::Browser<'_>, name: &str) {
    let shot = view.screenshot(name).await;
    if let Ok(dir) = std::env::var("TIDINGS_SCREENSHOT_DIR") {
        std::fs::copy(
            &shot,
            std::path::Path::new(&dir).join(format!("{name}.png")),
        )
        .unwrap();
    }
}

/// Goes to a section by its link in the section list, and waits for it.
async fn section(view: &support::live::Browser<'_>, name: &str, heading: &str) {
    view.click(&format!("#nav a[data-section=\"{name}\"]"))
        .await;
    view.wait_until(
        &format!("the {name} section"),
        &format!(
            "document.body.dataset.ready === 'yes' && document.querySelector('#view h2') && document.querySelector('#view h2').textContent.startsWith({})",
            json!(heading)
        ),
        LIVE,
    )
    .await;
}

/// The console in Chromium as an admin, by mouse and keyboard: from the messenger's link to
/// the template editor (a live preview; a broken template shows its line and is not saved; a
/// saved one is used by the next notification email; a test send reaches the sink; revert),
/// a system notification disabled and its email skipped, Outgoing with a row opened, a
/// set-aside human email posted anyway into its conversation, a suppression removed, a
/// person's P1 set, Status and History; no serious or critical axe-core violation on any page
/// at 1,024 and 1,920 px; and a non-admin's console says it is for admins.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_chromium() {
    let env = Env::new("1s");
    let _roles = env.spawn(&["api", "dispatch", "mailer", "inbound"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (ann, ann_token) = admin(&env, "Ann").await;
    // Dispatch reads the switch when it handles the event: Ann's and Ben's welcomes must be
    // decided (off, so skipped) before the switch is turned on, or they get one.
    let ben = env.user("Ben").await;
    support::wait_for(
        env.root(),
        "Ann's and Ben's welcome emails skipped",
        async || welcomes_skipped(&env).await == 2,
    )
    .await;
    // The welcome email is off by default: on, for the console to turn it off.
    env.ok(
        "PATCH",
        "/system-notifications/user_created",
        Some(json!({"enabled": true})),
    )
    .await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, ben).await;
    let first = env.post(conv, ben, "Is the printer fixed?", false).await;
    env.settled(first, SETTLE).await;
    let emails_to_ann = || env.mails_to("ann@example.com");
    assert_eq!(emails_to_ann().len(), 1);
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    view.resize(1024, 900).await;
    view.goto(&format!("{}/messenger#token={ann_token}", env.base()))
        .await;
    view.wait_until("messenger", "document.body.dataset.ready === 'yes'", LIVE)
        .await;
    view.click("#admin-link").await;
    view.wait_until(
        "console",
        "location.pathname === '/admin' && document.body.dataset.ready === 'yes' && document.querySelector('#view h2')",
        LIVE,
    )
    .await;
    let mut violations = view.axe().await;

    // The template editor: typing changes the preview.
    section(&view, "templates", "Automated emails").await;
    violations.extend(view.axe().await);
    view.click("a[href=\"#templates/notification\"]").await;
    view.wait_until(
        "editor",
        "document.body.dataset.preview && document.getElementById('p-subject').textContent.startsWith('Subject: ')",
        LIVE,
    )
    .await;
    view.type_into("#t-subject", " (desk)").await;
    view.wait_until(
        "the preview follows",
        "document.getElementById('p-subject').textContent.includes('(desk)')",
        LIVE,
    )
    .await;
    // Broken as typed: the problem with its line, and Save saves nothing.
    view.type_into("#t-html", "{{#if x}}").await;
    view.wait_until(
        "the problem shows",
        "[...document.querySelectorAll('#problems li')].some((li) => /html\\.hbs line \\d+/.test(li.textContent))",
        LIVE,
    )
    .await;
    view.click("#t-save").await;
    view.wait_until(
        "not saved",
        "document.getElementById('status-line').textContent.startsWith('Not saved')",
        LIVE,
    )
    .await;
    assert_eq!(env.sql("SELECT count(*) FROM template_versions"), "0");
    // Fixed with the keyboard (nine backspaces), then saved.
    view.type_into("#t-html", &"\u{E003}".repeat(9)).await;
    view.wait_until(
        "no problem left",
        "document.querySelectorAll('#problems li').length === 0",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    // Wide enough for the parts beside the preview.
    view.resize(1600, 1000).await;
    view.js("window.scrollTo(0, 0);", json!([])).await;
    picture(&view, "admin-templates").await;
    view.resize(1024, 900).await;
    view.click("#t-save").await;
    view.wait_until(
        "saved",
        "document.getElementById('status-line').textContent.startsWith('Saved notification') && document.getElementById('t-serving').textContent.startsWith('Serving version')",
        LIVE,
    )
    .await;
    // The next notification email uses it.
    let second = env.post(conv, ben, "Still broken?", false).await;
    env.settled(second, SETTLE).await;
    let subject = emails_to_ann()[1].header("Subject").unwrap();
    assert!(subject.ends_with("(desk)"), "{subject}");
    // A test to my own address.
    view.click("#t-test").await;
    view.wait_until(
        "test queued",
        "document.getElementById('status-line').textContent.startsWith('Test queued')",
        LIVE,
    )
    .await;
    support::wait_for(env.root(), "the test email", async || {
        emails_to_ann().len() == 3
    })
    .await;
    let subject = emails_to_ann()[2].header("Subject").unwrap();
    assert!(subject.ends_with("(desk)"), "{subject}");
    // Revert: the shipped file serves again.
    view.click("#t-revert").await;
    view.wait_until(
        "reverted",
        "document.getElementById('t-serving').textContent === 'Serving the shipped file.'",
        LIVE,
    )
    .await;

    // Leaving the editor with a preview still to come: nothing of it shows on the next page.
    view.type_into("#t-subject", "!").await;
    section(&view, "system", "System notifications").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let line = view
        .js(
            "return document.getElementById('status-line').textContent;",
            json!([]),
        )
        .await;
    assert!(!line.as_str().unwrap().contains("Preview"), "{line}");

    // A system notification disabled: its email is skipped.
    violations.extend(view.axe().await);
    view.click("tr[data-event=\"user_created\"] input").await;
    view.wait_until(
        "disabled",
        "document.getElementById('status-line').textContent === 'user_created: disabled.'",
        LIVE,
    )
    .await;
    env.user("Dan").await;
    support::wait_for(env.root(), "Dan's welcome email skipped", async || {
        welcomes_skipped(&env).await == 3
    })
    .await;

    // Outgoing: filtered by address, a row opened.
    section(&view, "outgoing", "Outgoing").await;
    view.type_into("input[name=address]", "ann@example.com")
        .await;
    view.click("form.filters button[type=submit]").await;
    view.wait_until(
        "ann's emails",
        "document.querySelectorAll('#log tr.log-row td:nth-child(2) .ok').length === 3",
        LIVE,
    )
    .await;
    view.click("#log tr.log-row button").await;
    view.wait_until(
        "the row's story",
        "[...document.querySelectorAll('dl.story dt')].some((dt) => dt.textContent === 'SMTP reply')",
        LIVE,
    )
    .await;
    view.click("#log tr.detail button").await;
    view.wait_until(
        "the raw email",
        "document.querySelector('#log pre.source') && document.querySelector('#log pre.source').textContent.includes('Message-ID: <tidings.o.')",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    picture(&view, "admin-outgoing").await;

    // A person's reply that looks like bulk mail is set aside; posted anyway, it lands in its
    // conversation, once.
    let mail = &emails_to_ann()[1];
    let reply_to = mail
        .parsed()
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    let message_id = mail.header("Message-ID").unwrap();
    let reply = format!(
        "From: Ann <ann@example.com>\nTo: {reply_to}\nSubject: Re: Printer\n\
         Message-ID: <bulk-looking@example.com>\nPrecedence: bulk\n\
         In-Reply-To: {message_id}\n\nIt prints again after the reboot.\n"
    );
    let replies = env.smtp("ann@example.com", &[&reply_to], &reply).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    section(&view, "set-aside", "Set aside").await;
    view.wait_until(
        "the email set aside",
        "document.querySelector('#view tbody tr')",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    picture(&view, "admin-set-aside").await;
    view.click("#view tbody tr button.primary").await;
    view.click("#view tbody tr button.primary").await;
    view.wait_until(
        "posted",
        "document.getElementById('status-line').textContent.startsWith('Posted: posted message')",
        LIVE,
    )
    .await;
    let messages = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let bodies: Vec<&str> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("It prints again after the reboot.")),
        "{bodies:?}"
    );
    let id = env.sql("SELECT inbound_email_id FROM inbound_raw WHERE set_aside IS NOT NULL");
    let (status, _) = env
        .call("POST", &format!("/inbound-emails/{id}/post"), None)
        .await;
    assert_eq!(status, 409, "posted once");

    // A suppression removed.
    env.sql(
        "INSERT INTO email_suppressions (address, suppressed, hard_bounces, last_status) \
         VALUES ('gone@example.com', true, 1, '5.1.1')",
    );
    section(&view, "suppressions", "Suppressions").await;
    violations.extend(view.axe().await);
    view.click("tr[data-address=\"gone@example.com\"] button")
        .await;
    view.click("tr[data-address=\"gone@example.com\"] button")
        .await;
    view.wait_until(
        "removed",
        "document.getElementById('status-line').textContent === 'Email flows to gone@example.com again.'",
        LIVE,
    )
    .await;
    assert_eq!(env.ok("GET", "/suppressions", None).await, json!([]));

    // People: Ben's P1, set by the admin.
    section(&view, "people", "People").await;
    view.click(&format!("a[href=\"#people/{ben}\"]")).await;
    view.wait_until(
        "Ben's settings",
        "document.getElementById('pref-see_conversations')",
        LIVE,
    )
    .await;
    view.click("#pref-see_conversations option[value=all_projects]")
        .await;
    violations.extend(view.axe().await);
    view.click("#person-settings button[type=submit]").await;
    view.wait_until(
        "saved",
        "document.getElementById('status-line').textContent === \"Ben's settings saved.\"",
        LIVE,
    )
    .await;
    let prefs = env
        .ok("GET", &format!("/people/{ben}/preferences"), None)
        .await;
    assert_eq!(prefs["see_conversations"], "all_projects");

    // Status, and History at 1,920 px.
    section(&view, "status", "Status").await;
    view.wait_until(
        "the report",
        "document.getElementById('status-report')",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    // At 360 px the report stacks each term over its value: no sideways scrolling, and no
    // value squeezed into a sliver that breaks its words letter by letter.
    view.resize(360, 740).await;
    view.wait_until(
        "the report at 360 px",
        "document.documentElement.scrollWidth <= window.innerWidth && [...document.querySelectorAll('#status-report dd')].every((d) => d.getBoundingClientRect().width > 250)",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    view.resize(1920, 1000).await;
    section(&view, "history", "History").await;
    view.wait_until(
        "the changes",
        "[...document.querySelectorAll('#view code')].some((c) => c.textContent === 'PUT /templates/notification')",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    assert!(violations.is_empty(), "{violations:?}");
    // (The broken template's save is answered 422, which the browser reports.)
    let errors: Vec<String> = view
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("/templates/notification - Failed to load resource: the server responded with a status of 422"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
    assert_eq!(
        env.sql(&format!(
            "SELECT count(*) FROM admin_changes WHERE actor_id = {ann}"
        )),
        "8",
        "every change made in the console is recorded"
    );

    // A user who is not an admin: the console says so and shows nothing.
    let other = driver.browser("ben").await;
    other
        .goto(&format!(
            "{}/admin#token={}",
            env.base(),
            env.session(ben).await
        ))
        .await;
    other
        .wait_until(
            "not an admin",
            "document.body.dataset.ready === 'not-admin' && document.getElementById('view').childElementCount === 0",
            LIVE,
        )
        .await;
    other.quit().await;
}

/// A2 from the console, by mouse and keyboard: the organisation's working hours for users set
/// on the People page, then one person's own (one day, three days ahead, so now is outside
/// them, which the page says), then "none" for them; each lands in the API. axe-core clean.
#[tokio::test(flavor = "multi_thread")]
async fn a2_working_hours_from_the_console() {
    use chrono::Datelike;
    let env = Env::new("1s");
    let _roles = env.spawn(&["api"]);
    env.wait_for_api().await;
    let (_, ann_token) = admin(&env, "Ann").await;
    let ben = env.user("Ben").await;
    let driver = Driver::start(&env.root().join("browser")).await;
    let view = driver.browser("ann").await;
    view.resize(1024, 900).await;
    view.goto(&format!("{}/messenger#token={ann_token}", env.base()))
        .await;
    view.wait_until("messenger", "document.body.dataset.ready === 'yes'", LIVE)
        .await;
    view.click("#admin-link").await;
    view.wait_until(
        "console",
        "location.pathname === '/admin' && document.body.dataset.ready === 'yes'",
        LIVE,
    )
    .await;
    section(&view, "people", "People").await;
    view.click("#org-hours-on").await;
    view.clear("#org-hours-zone").await;
    view.type_into("#org-hours-zone", "America/New_York").await;
    view.click("form[aria-labelledby='org-hours-heading'] button[type=submit]")
        .await;
    view.wait_until(
        "saved",
        "document.getElementById('status-line').textContent.startsWith('Working hours for users: mon, tue, wed, thu, fri 09:00')",
        LIVE,
    )
    .await;
    let mut violations = view.axe().await;
    assert_eq!(
        env.ok("GET", "/attention/defaults", None).await["working_hours"],
        json!({"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00",
               "time_zone": "America/New_York"})
    );

    // Ben's own hours: one day, three days from now.
    view.click(&format!("a[href=\"#people/{ben}\"]")).await;
    view.wait_until(
        "Ben's attention",
        "document.getElementById('person-hours-mode')",
        LIVE,
    )
    .await;
    view.click("#person-hours-mode option[value=own]").await;
    let day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][(tidings_common::clock::now()
        + chrono::Duration::days(3))
    .weekday()
    .num_days_from_monday()
        as usize];
    view.tick_only_day(|d| format!("#person-hours-{d}"), day)
        .await;
    view.click("form[aria-labelledby='person-attention-heading'] button[type=submit]")
        .await;
    view.wait_until(
        "outside Ben's hours",
        "document.getElementById('status-line').textContent === \"Ben's attention saved.\" && document.getElementById('person-attention-now').textContent.startsWith('Outside working hours until')",
        LIVE,
    )
    .await;
    violations.extend(view.axe().await);
    let attention = env
        .ok("GET", &format!("/people/{ben}/attention"), None)
        .await;
    assert_eq!(
        attention["working_hours"]["days"],
        json!([day]),
        "{attention}"
    );
    assert!(attention["outside_hours_until"].is_string(), "{attention}");

    // "None", by keyboard.
    view.type_into("#person-hours-mode", "None").await;
    view.click("form[aria-labelledby='person-attention-heading'] button[type=submit]")
        .await;
    view.wait_until(
        "no hours",
        "document.getElementById('person-attention-now').textContent === 'Emails go as they fall due.'",
        LIVE,
    )
    .await;
    let attention = env
        .ok("GET", &format!("/people/{ben}/attention"), None)
        .await;
    assert_eq!(attention["working_hours"], json!("none"), "{attention}");
    assert!(violations.is_empty(), "{violations:?}");
    let errors = view.console_errors().await;
    assert!(errors.is_empty(), "{errors:?}");
    view.quit().await;
}
