//! Who gets notified, exactly: SPEC P1–P5, D5–D9 end to end, coalescing, explain and one-click
//! unsubscribe, on real services.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Env, SECRET};
use tidings_common::mail::{UnsubscribeScope, UnsubscribeToken};
use tidings_common::rules::MessageKind;

const SETTLE: Duration = Duration::from_secs(30);

fn row(deliveries: &Value, person: i64) -> Option<&Value> {
    deliveries["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["recipient_id"] == json!(person))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Emailed,
    Notified,
    Neither,
}

fn outcome(deliveries: &Value, person: i64) -> Outcome {
    match row(deliveries, person) {
        None => Outcome::Neither,
        Some(r) if !r["emailed_to"].is_null() => Outcome::Emailed,
        Some(_) => Outcome::Notified,
    }
}

async fn set_prefs(env: &Env, person: i64, prefs: Value) {
    env.ok(
        "PATCH",
        &format!("/people/{person}/preferences"),
        Some(prefs),
    )
    .await;
}

/// The SPEC's reference configurations (quiet, support lead, support team member) × every
/// message kind (customer message, reply to a customer and internal message, each in a
/// followed and an unfollowed conversation, and a bot message) × both P1 permissions.
/// The conversations live in a project nobody follows, so under "followed projects" P1 must
/// win over every other preference. Nobody reads anything, so every notification is emailed.
#[tokio::test(flavor = "multi_thread")]
async fn reference_configurations_table() {
    use Outcome::*;
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let agent = env.user("Agent").await;
    let cleo = env.customer("Cleo").await;
    let bot = env
        .ok("POST", "/bots", Some(json!({"name": "Autobot"})))
        .await["id"]
        .as_i64()
        .unwrap();
    let project = env
        .ok(
            "POST",
            "/projects",
            Some(json!({"name": "Unfollowed project"})),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let mut convs = Vec::new();
    for title in ["Followed ticket", "Unfollowed ticket"] {
        let item = env
            .ok(
                "POST",
                "/items",
                Some(json!({"project_id": project, "kind": "ticket", "title": title})),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        let conv = env
            .ok(
                "POST",
                "/conversations",
                Some(json!({"subject": title, "item_id": item})),
            )
            .await["id"]
            .as_i64()
            .unwrap();
        env.add_participant(conv, cleo).await;
        convs.push((item, conv));
    }
    let (followed_item, followed) = convs[0];
    let unfollowed = convs[1].1;

    let configs = [
        (
            "quiet",
            json!({"from_customers": "none", "from_users": "none", "followed_internal": false}),
        ),
        (
            "support lead",
            json!({"from_customers": "all", "from_users": "all", "followed_internal": true}),
        ),
        (
            "support team member",
            json!({"from_customers": "mine", "from_users": "followed", "followed_internal": true}),
        ),
    ];
    let mut users = Vec::new();
    for (name, prefs) in &configs {
        for see in ["all_projects", "followed_projects"] {
            let id = env
                .user(&format!("{}{}", name.replace(' ', ""), see.len()))
                .await;
            let mut prefs = prefs.clone();
            prefs["see_conversations"] = json!(see);
            set_prefs(&env, id, prefs).await;
            env.follow_item(followed_item, id).await;
            users.push((*name, see, id));
        }
    }
    let kinds = [
        ("customer message, followed", cleo, followed, false),
        ("customer message, unfollowed", cleo, unfollowed, false),
        ("reply to customer, followed", agent, followed, false),
        ("reply to customer, unfollowed", agent, unfollowed, false),
        ("internal, followed", agent, followed, true),
        ("internal, unfollowed", agent, unfollowed, true),
        ("bot message", bot, followed, false),
    ];
    let mut messages = Vec::new();
    for (kind, author, conv, internal) in kinds {
        messages.push((kind, env.post(conv, author, kind, internal).await));
    }
    // Expected outcome with P1 = all projects, in `kinds` order; with P1 = followed projects
    // every outcome is Neither.
    let expected = [
        ("quiet", [Neither; 7]),
        (
            "support lead",
            [
                Emailed, Emailed, Emailed, Emailed, Emailed, Neither, Emailed,
            ],
        ),
        (
            "support team member",
            [
                Emailed, Neither, Emailed, Neither, Emailed, Neither, Emailed,
            ],
        ),
    ];
    let mut cases = 0;
    for (kind_index, (kind, message)) in messages.iter().enumerate() {
        let d = env.settled(*message, SETTLE).await;
        for (name, see, user) in &users {
            let row = expected.iter().find(|(n, _)| n == name).unwrap().1;
            let want = if *see == "all_projects" {
                row[kind_index]
            } else {
                Neither
            };
            assert_eq!(outcome(&d, *user), want, "{name} / {kind} / {see}: {d}");
            let why = env
                .ok("GET", &format!("/messages/{message}/explain/{user}"), None)
                .await;
            assert_eq!(why["notify_now"]["yes"], json!(want != Neither), "{why}");
            if *see == "followed_projects" {
                assert_eq!(why["notify_now"]["rule"], "P1", "{why}");
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 42);
    // The customer never hears of internal messages, in the app or by email.
    for (kind, message) in &messages {
        let d = env.deliveries(*message).await;
        let want = if kind.starts_with("internal") {
            Neither
        } else {
            Emailed
        };
        assert_eq!(
            outcome(&d, cleo) == Neither,
            want == Neither || kind.starts_with("customer"),
            "{kind}"
        );
    }
    for mail in env.mails_to("cleo@example.com") {
        assert!(
            !String::from_utf8_lossy(&mail.raw).contains("internal,"),
            "internal text reached the customer"
        );
    }
}

/// D9: what changed during the window is respected at send time, and the log says why.
#[tokio::test(flavor = "multi_thread")]
async fn d9_send_time_rechecks() {
    let env = Env::new("2s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let cleo = env.customer("Cleo").await;
    let mut cases = Vec::new();
    for (name, reason, rule) in [
        ("Deleted", "deleted", "D9"),
        ("Edited", "deleted", "D9"),
        ("Lost", "no access", "P1"),
        ("Changed", "preference", "P3"),
        ("Gone", "deactivated", "D9"),
    ] {
        let (project, item, conv) = env.ticket(name).await;
        env.add_participant(conv, cleo).await;
        let user = env.user(name).await;
        env.follow_item(item, user).await;
        if name == "Lost" {
            set_prefs(
                &env,
                user,
                json!({"see_conversations": "followed_projects"}),
            )
            .await;
            env.ok(
                "PUT",
                &format!("/projects/{project}/followers/{user}"),
                None,
            )
            .await;
        }
        let message = env.post(conv, cleo, &format!("for {name}"), false).await;
        env.dispatched(message).await;
        match name {
            "Deleted" => drop(
                env.ok("DELETE", &format!("/messages/{message}"), None)
                    .await,
            ),
            "Edited" => drop(
                env.ok(
                    "PATCH",
                    &format!("/messages/{message}"),
                    Some(json!({"body": " "})),
                )
                .await,
            ),
            "Lost" => drop(
                env.ok(
                    "DELETE",
                    &format!("/projects/{project}/followers/{user}"),
                    None,
                )
                .await,
            ),
            "Changed" => set_prefs(&env, user, json!({"from_customers": "none"})).await,
            "Gone" => drop(
                env.ok(
                    "PATCH",
                    &format!("/people/{user}"),
                    Some(json!({"active": false})),
                )
                .await,
            ),
            _ => unreachable!(),
        }
        cases.push((name, user, message, reason, rule));
    }
    for (name, user, message, reason, rule) in cases {
        let d = env.settled(message, SETTLE).await;
        let r = row(&d, user).unwrap_or_else(|| panic!("{name}: not notified at post time: {d}"));
        assert_eq!(r["email_state"], "skipped", "{name}: {r}");
        assert_eq!(r["email_reason"], reason, "{name}: {r}");
        assert_eq!(r["email_rule"], rule, "{name}: {r}");
        let log = env
            .ok("GET", &format!("/email-log?message_id={message}"), None)
            .await;
        let entry = log
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["rcpt_to"] == json!(format!("{}@example.com", name.to_lowercase())))
            .unwrap_or_else(|| panic!("{name}: no log row in {log}"));
        assert_eq!(
            (entry["status"].as_str(), entry["reason"].as_str()),
            (Some("skipped"), Some(reason))
        );
        assert!(
            env.mails_to(&format!("{}@example.com", name.to_lowercase()))
                .is_empty(),
            "{name}"
        );
    }
}

/// Several unseen messages in one conversation become one email, oldest first, each with its
/// author and time; the others are logged `coalesced`.
#[tokio::test(flavor = "multi_thread")]
async fn coalescing_sends_one_email_with_every_unseen_message() {
    let env = Env::new("3s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let cat = env.user("Cat").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Chatty").await;
    env.follow_item(item, bob).await;
    let first = env
        .post(conv, ann, "First: the printer smokes", false)
        .await;
    let second = env.post(conv, cat, "Second: it is on fire", false).await;
    let third = env.post(conv, ann, "Third: the fire is out", false).await;
    let mut ids = Vec::new();
    for m in [first, second, third] {
        let d = env.settled(m, SETTLE).await;
        ids.push(row(&d, bob).unwrap().clone());
    }
    let mails = env.mails_to("bob@example.com");
    assert_eq!(mails.len(), 1, "three unseen messages must give one email");
    let text = mails[0].parsed().body_text(0).unwrap().to_string();
    let positions: Vec<usize> = [
        "First: the printer smokes",
        "Second: it is on fire",
        "Third: the fire is out",
    ]
    .iter()
    .map(|needle| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing from {text}"))
    })
    .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "not oldest first: {text}"
    );
    assert_eq!(text.matches("Ann wrote on").count(), 2, "{text}");
    assert_eq!(text.matches("Cat wrote on").count(), 1, "{text}");
    assert!(
        text.contains(" UTC:"),
        "each message shows its time: {text}"
    );
    let html = mails[0].parsed().body_html(0).unwrap().to_string();
    assert!(html.contains("Third: the fire is out"), "{html}");

    let carrier = ids
        .iter()
        .find(|r| r["email_state"] == "sent")
        .expect("one notification sent");
    let coalesced: Vec<&Value> = ids
        .iter()
        .filter(|r| r["email_reason"] == "coalesced")
        .collect();
    assert_eq!(coalesced.len(), 2, "{ids:?}");
    for r in &coalesced {
        assert_eq!(r["coalesced_into"], carrier["notification_id"]);
        assert_eq!(r["email_state"], "skipped");
        assert_eq!(r["emailed_to"], "bob@example.com");
    }
    assert_eq!(
        mails[0].header("Message-ID").as_deref(),
        carrier["email_message_id"].as_str()
    );
    let root = format!("<tidings.c{conv}@{}>", support::REPLY_DOMAIN);
    assert_eq!(mails[0].header("In-Reply-To"), Some(root));
    let mut logged = 0;
    for m in [first, second, third] {
        let log = env
            .ok("GET", &format!("/email-log?message_id={m}"), None)
            .await;
        for entry in log.as_array().unwrap() {
            if entry["rcpt_to"] == "bob@example.com" {
                assert!(
                    entry["status"] == "sent" || entry["reason"] == "coalesced",
                    "unexpected log row {entry}"
                );
                logged += 1;
            }
        }
    }
    assert_eq!(logged, 3);
}

fn unsubscribe_url(mail: &support::SunkMail) -> String {
    let header = mail
        .header("List-Unsubscribe")
        .expect("List-Unsubscribe header");
    header
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_string()
}

/// RFC 8058 one-click unsubscribe: a valid link turns that kind of email off and is logged;
/// a tampered or expired link changes nothing; a customer's link mutes the conversation.
#[tokio::test(flavor = "multi_thread")]
async fn one_click_unsubscribe() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let agent = env.user("Agent").await;
    let bob = env.user("Bob").await;
    let cleo = env.customer("Cleo").await;
    let (_, item, conv) = env.ticket("Noisy").await;
    env.follow_item(item, bob).await;
    env.add_participant(conv, cleo).await;
    let m1 = env.post(conv, cleo, "Customer speaking", false).await;
    env.settled(m1, SETTLE).await;
    let m2 = env.post(conv, agent, "Agent replying", false).await;
    env.settled(m2, SETTLE).await;

    let to_bob = env.mails_to("bob@example.com");
    assert_eq!(to_bob.len(), 2);
    let about_customer = to_bob
        .iter()
        .find(|m| String::from_utf8_lossy(&m.raw).contains("Customer speaking"))
        .unwrap();
    assert_eq!(
        about_customer.header("List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    let url = unsubscribe_url(about_customer);
    assert!(url.starts_with(&env.base()), "{url}");
    let http = reqwest::Client::new();
    let prefs_path = format!("/people/{bob}/preferences");
    let prefs = || env.ok("GET", &prefs_path, None);
    let before = prefs().await;

    // Looking at the link changes nothing.
    let page = http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    // A tampered link changes nothing and says why.
    let mut tampered = url.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'a' { 'b' } else { 'a' });
    let resp = http
        .post(&tampered)
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"].as_str().unwrap().contains("signature"),
        "{err}"
    );
    // An expired link (signed correctly) changes nothing either.
    let expired = UnsubscribeToken {
        person_id: bob,
        scope: UnsubscribeScope::UserKind(MessageKind::FromCustomer),
        expires_day: 1,
    }
    .encode(SECRET.as_bytes());
    let resp = http
        .post(format!("{}/unsubscribe/{expired}", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 410);
    assert_eq!(prefs().await, before);

    // The real one-click POST flips exactly that kind of email.
    let resp = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let after = prefs().await;
    assert_eq!(after["email_customer_messages"], false);
    assert_eq!(after["email_replies"], true);

    // Cleo unsubscribes from this conversation with her own link.
    let cleo_mail = env.mails_to("cleo@example.com");
    assert_eq!(cleo_mail.len(), 1);
    let resp = http
        .post(unsubscribe_url(&cleo_mail[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let m3 = env.post(conv, cleo, "Customer again", false).await;
    let d3 = env.settled(m3, SETTLE).await;
    let r = row(&d3, bob).unwrap();
    assert_eq!(
        (r["email_state"].as_str(), r["email_reason"].as_str()),
        (Some("skipped"), Some("unsubscribed"))
    );
    let m4 = env.post(conv, agent, "Agent again", false).await;
    let d4 = env.settled(m4, SETTLE).await;
    assert_eq!(
        row(&d4, bob).unwrap()["email_state"],
        "sent",
        "replies are still on"
    );
    assert_eq!(row(&d4, cleo).unwrap()["email_reason"], "unsubscribed");
    assert_eq!(env.mails_to("cleo@example.com").len(), 1);
}

/// The preferences API: defaults, validation naming the field and the allowed values, P2
/// hiding customer conversations, and `tidings explain`.
#[tokio::test(flavor = "multi_thread")]
async fn preferences_api_p2_and_explain() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    let bob = env.user("Bob").await;
    let cleo = env.customer("Cleo").await;
    let prefs = env
        .ok("GET", &format!("/people/{bob}/preferences"), None)
        .await;
    assert_eq!(
        prefs,
        json!({
            "see_conversations": "all_projects", "show_customer_conversations": true,
            "from_customers": "mine", "from_users": "followed", "followed_internal": true,
            "email_customer_messages": true, "email_replies": true, "email_internal": true,
            "email_assignments": true, "email_project_members": false,
            "accept_all_invitations": true,
        })
    );
    let (status, err) = env
        .call(
            "PATCH",
            &format!("/people/{bob}/preferences"),
            Some(json!({"from_customers": "some"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("from_customers"))
    );
    assert!(
        err["error"].as_str().unwrap().contains("all, mine, none"),
        "{err}"
    );
    let (status, err) = env
        .call(
            "PATCH",
            &format!("/people/{bob}/preferences"),
            Some(json!({"followed_internal": "yes"})),
        )
        .await;
    assert_eq!(
        (status, err["field"].as_str()),
        (400, Some("followed_internal"))
    );
    let (status, err) = env
        .call(
            "PATCH",
            &format!("/people/{bob}/preferences"),
            Some(json!({"loudness": 11})),
        )
        .await;
    assert_eq!((status, err["field"].as_str()), (400, Some("loudness")));
    let (status, _) = env
        .call("GET", &format!("/people/{cleo}/preferences"), None)
        .await;
    assert_eq!(status, 409);
    let (status, _) = env.call("GET", "/people/987654/preferences", None).await;
    assert_eq!(status, 404);
    assert_eq!(
        env.ok("GET", &format!("/people/{bob}/preferences"), None)
            .await,
        prefs,
        "bad updates changed nothing"
    );

    // Bob follows a customer ticket and is notified; then he hides customer conversations.
    let (_, item, conv) = env.ticket("Customer ticket").await;
    env.follow_item(item, bob).await;
    env.add_participant(conv, cleo).await;
    let before = env.post(conv, cleo, "first", false).await;
    env.settled(before, SETTLE).await;
    let inbox = env.ok("GET", &format!("/people/{bob}/inbox"), None).await;
    assert_eq!(inbox["unread"], 1, "{inbox}");
    set_prefs(
        &env,
        bob,
        json!({"show_customer_conversations": false, "from_customers": "all"}),
    )
    .await;
    let hidden = env.post(conv, cleo, "second", false).await;
    let d = env.settled(hidden, SETTLE).await;
    assert!(row(&d, bob).is_none(), "P2 off must not notify: {d}");
    let inbox = env.ok("GET", &format!("/people/{bob}/inbox"), None).await;
    assert_eq!(
        inbox["conversations"],
        json!([]),
        "P2 off hides customer conversations: {inbox}"
    );
    let why = env
        .ok("GET", &format!("/messages/{hidden}/explain/{bob}"), None)
        .await;
    assert_eq!(
        (
            why["notify_now"]["yes"].as_bool(),
            why["notify_now"]["rule"].as_str()
        ),
        (Some(false), Some("P2"))
    );
    assert!(why["notification"].is_null());
    let why = env
        .ok("GET", &format!("/messages/{before}/explain/{bob}"), None)
        .await;
    assert_eq!(why["notification"]["state"], "sent", "{why}");

    let out = env
        .command(&["explain", &hidden.to_string(), &bob.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("not notified [P2]"), "{text}");
    let out = env
        .command(&["explain", &before.to_string(), &cleo.to_string()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("[D3]"));
    let out = env.command(&["explain", "999999", "1"]).output().unwrap();
    assert!(!out.status.success());
    let (status, _) = env
        .call("GET", &format!("/messages/{before}/explain/424242"), None)
        .await;
    assert_eq!(status, 404);
}

/// D1, P1–P5, F1: the audience read for dispatch leaves out only people every rule refuses.
/// In seeded worlds of users with every combination of settings, customers and a bot, with
/// follows of every kind, the people notified from the narrowed audience of each message are
/// exactly those notified when every (message, person) pair is decided.
#[tokio::test]
async fn narrowed_audience_notifies_exactly_whom_every_pair_would() {
    use diesel::prelude::*;
    use std::collections::BTreeSet;
    use tidings_common::{audience, rules};

    let env = Env::new("1s");
    // 36 users (every P1 × P3 × P4 setting, P2 and P5 alternating, every fifth deactivated),
    // 3 customers, 1 bot; a project with an item conversation, a project conversation and a
    // bare customer conversation; follows of every kind spread by a fixed pattern.
    let people: Vec<i64> = env
        .sql(
            "INSERT INTO people (kind, name, email, active)
             SELECT 'user', 'U' || g, 'u' || g || '@world.example', g % 5 <> 0
             FROM generate_series(1, 36) g;
             INSERT INTO user_preferences (person_id, see_conversations, from_customers,
                 from_users, show_customer_conversations, followed_internal)
             SELECT id, (ARRAY['followed_projects', 'all_projects'])[1 + id % 2],
                    (ARRAY['all', 'mine', 'none'])[1 + (id / 2) % 3],
                    (ARRAY['all', 'followed', 'none'])[1 + (id / 6) % 3],
                    id % 4 <> 1, id % 3 <> 2
             FROM people WHERE email LIKE '%@world.example';
             INSERT INTO people (kind, name, email)
             SELECT 'customer', 'C' || g, 'c' || g || '@world.example' FROM generate_series(1, 3) g;
             INSERT INTO people (kind, name) VALUES ('bot', 'B');
             SELECT id FROM people WHERE email LIKE '%@world.example' OR kind = 'bot'
             ORDER BY CASE kind WHEN 'user' THEN 0 WHEN 'customer' THEN 1 ELSE 2 END, id",
        )
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let list = |ids: &[i64]| {
        ids.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let (users, customers, bot) = (&people[..36], &people[36..39], people[39]);
    let project: i64 = env
        .sql("INSERT INTO projects (name) VALUES ('World') RETURNING id")
        .parse()
        .unwrap();
    let item: i64 = env
        .sql(&format!(
            "INSERT INTO items (project_id, kind, title, assignee_id)
             VALUES ({project}, 'ticket', 'T', {}) RETURNING id",
            users[7]
        ))
        .parse()
        .unwrap();
    let conversations: Vec<i64> = env
        .sql(&format!(
            "INSERT INTO conversations (item_id, project_id, subject) VALUES
             ({item}, NULL, 'item'), (NULL, {project}, 'project'), (NULL, NULL, 'bare')
             RETURNING id"
        ))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let followers = |every: usize, from: usize| -> Vec<i64> {
        users.iter().copied().skip(from).step_by(every).collect()
    };
    env.sql(&format!(
        "INSERT INTO item_follows (item_id, person_id) SELECT {item}, unnest(ARRAY[{}]::bigint[]);
         INSERT INTO project_follows (project_id, person_id) SELECT {project}, unnest(ARRAY[{}]::bigint[]);
         INSERT INTO conversation_participants (conversation_id, person_id)
         SELECT c, p FROM unnest(ARRAY[{}]::bigint[]) c, unnest(ARRAY[{}]::bigint[]) p;
         INSERT INTO conversation_participants (conversation_id, person_id)
         VALUES ({}, {}), ({}, {}), ({}, {});",
        list(&followers(3, 0)),
        list(&followers(4, 1)),
        list(&conversations),
        list(&followers(7, 2)),
        conversations[0],
        customers[0],
        conversations[1],
        customers[1],
        conversations[2],
        customers[2],
    ));
    // In each conversation: from a customer, to customers by a user, by the bot, internal,
    // and one deleted.
    let mut messages = Vec::new();
    for (i, conversation) in conversations.iter().enumerate() {
        for (author, internal, deleted) in [
            (customers[i], false, false),
            (users[3], false, false),
            (bot, false, false),
            (users[10], true, false),
            (users[11], false, true),
        ] {
            let deleted_at = if deleted { "now()" } else { "NULL" };
            let id: i64 = env
                .sql(&format!(
                    "INSERT INTO messages (conversation_id, author_id, body, internal, deleted_at)
                     VALUES ({conversation}, {author}, 'hello', {internal}, {deleted_at}) RETURNING id"
                ))
                .parse()
                .unwrap();
            messages.push(id);
        }
    }
    let mut db = PgConnection::establish(env.var("TIDINGS_DATABASE_URL")).unwrap();
    let narrowed: BTreeSet<(i64, i64)> = audience::audiences(&mut db, &messages)
        .unwrap()
        .into_iter()
        .flat_map(|(message, people)| {
            people
                .into_iter()
                .filter(|p| rules::notify(&message, p).yes)
                .map(|p| (message.message_id, p.person_id))
                .collect::<Vec<_>>()
        })
        .collect();
    let every_pair: Vec<(i64, i64)> = messages
        .iter()
        .flat_map(|m| people.iter().map(move |p| (*m, *p)))
        .collect();
    let full = audience::pairs(&mut db, &every_pair).unwrap();
    assert_eq!(full.len(), every_pair.len(), "every pair has its facts");
    let decided: BTreeSet<(i64, i64)> = full
        .iter()
        .filter(|(_, (message, person))| rules::notify(message, person).yes)
        .map(|(key, _)| *key)
        .collect();
    assert_eq!(narrowed, decided);
    // The worlds are not trivial: people are notified through every path, including users
    // who follow nothing but whose P3 or P4 setting is `all`.
    let follows_nothing =
        |person: i64, message: i64| !full[&(message, person)].1.follows_conversation;
    assert!(decided.len() > 40, "{} notified", decided.len());
    assert!(decided.iter().any(|(m, p)| follows_nothing(*p, *m)));
    assert!(decided.iter().any(|(m, p)| !follows_nothing(*p, *m)));
    assert!(decided.iter().any(|(_, p)| customers.contains(p)));
}
