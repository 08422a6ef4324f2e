//! `tidings demo`: drives a running api role through a short help-desk story and reports what
//! the pipeline did with each notification.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tidings_common::Config;

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the api at {}", self.base))?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, body).await
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_default()
}

pub async fn run(base: &str, config: &Config) -> anyhow::Result<()> {
    let api = Api {
        base: base.trim_end_matches('/').to_string(),
        token: config.api_token.expose().clone(),
        http: reqwest::Client::new(),
    };
    let run = tidings_common::clock::now().format("%H%M%S").to_string();
    let person = |kind: &str, name: &str, local: &str| {
        let email = format!("{local}+{run}@example.com");
        (format!("/{kind}"), json!({ "name": name, "email": email }))
    };
    println!("Seeding a tiny organisation…");
    let (path, body) = person("users", "Ada Lead", "ada");
    let ada = api.post(&path, body).await?;
    // Ada is the demo's admin: her messenger links to the admin console.
    api.call(
        reqwest::Method::PATCH,
        &format!("/people/{}", id(&ada)),
        Some(json!({ "admin": true })),
    )
    .await?;
    let (path, body) = person("users", "Ben Agent", "ben");
    let ben = api.post(&path, body).await?;
    let (path, body) = person("customers", "Cleo Customer", "cleo");
    let cleo = api.post(&path, body).await?;
    let project = api.post("/projects", json!({ "name": "Support" })).await?;
    let item = api
        .post(
            "/items",
            json!({ "project_id": id(&project), "kind": "ticket", "title": "Printer on fire", "assignee_id": id(&ben) }),
        )
        .await?;
    api.put(
        &format!("/items/{}/followers/{}", id(&item), id(&ada)),
        None,
    )
    .await?;
    let conversation = api
        .post(
            "/conversations",
            json!({ "subject": "Printer on fire", "item_id": id(&item) }),
        )
        .await?;
    let conv = id(&conversation);
    api.put(
        &format!("/conversations/{conv}/participants/{}", id(&cleo)),
        None,
    )
    .await?;
    println!(
        "  users Ada (person {}, an admin, follows the ticket) and Ben (person {}, assigned), customer Cleo (person {}, opened it); conversation {conv}",
        id(&ada),
        id(&ben),
        id(&cleo)
    );

    let names = [(id(&ada), "Ada"), (id(&ben), "Ben"), (id(&cleo), "Cleo")];
    let name_of = |pid: i64| {
        names
            .iter()
            .find(|(i, _)| *i == pid)
            .map_or("?", |(_, n)| *n)
    };
    let mut posted = Vec::new();
    let mut post = async |author: &Value, body: &str, internal: bool| -> anyhow::Result<i64> {
        let m = api
            .post(
                &format!("/conversations/{conv}/messages"),
                json!({ "author_id": id(author), "body": body, "internal": internal }),
            )
            .await?;
        let kind = if internal { "internal" } else { "external" };
        println!(
            "  message {} ({kind}) from {}: {body}",
            id(&m),
            name_of(id(author))
        );
        posted.push(id(&m));
        Ok(id(&m))
    };
    println!("Posting…");
    post(&cleo, "Hi, my printer is on fire. Help?", false).await?;
    post(&ben, "Has anyone seen this model burn before?", true).await?;
    let reply = post(&ada, "We are sending a technician this afternoon.", false).await?;
    api.put(
        &format!("/conversations/{conv}/seen"),
        Some(json!({ "person_id": id(&cleo), "message_id": reply })),
    )
    .await?;
    println!("  Cleo reads message {reply} in the customer chat");
    post(&cleo, "Thank you! It is only smoking now.", false).await?;

    println!(
        "Waiting for the seen window ({:?}) and the mailer…",
        config.seen_window
    );
    let reports = settle(&api, &posted, config.seen_window).await?;
    let (sent, skipped) = print_report(&reports);
    println!();
    println!("{sent} emails sent, {skipped} notifications skipped.");
    println!("- Cleo, a customer, was never notified of the internal message (D5).");
    println!(
        "- Nobody is notified of their own message (D3); posting counts as seeing what came before (D4)."
    );
    println!("- Unseen messages in one conversation go out together in one email (coalesced).");
    let inbox = api.get(&format!("/people/{}/inbox", id(&ada))).await?;
    println!("Ada's inbox: {} unread", inbox["unread"]);
    if let Some(&last) = posted.last() {
        println!(
            "Why was someone emailed or not? `tidings explain MESSAGE PERSON`, e.g. `tidings explain {last} {}`.",
            id(&ben)
        );
    }
    print_system_emails(&api, &run).await?;
    println!();
    println!("Messenger links (each signs in as that person, valid 12 h by default):");
    for (person, name) in names {
        let session = api
            .post(&format!("/people/{person}/sessions"), json!({}))
            .await?;
        println!(
            "  {name:<5} {}",
            session["messenger_url"].as_str().unwrap_or_default()
        );
    }
    println!(
        "Open Ada's and Ben's links side by side, post as Ben: Ada's badge and ping come at once; \
         open the conversation as Ada within the seen window and no email goes out to her."
    );
    println!(
        "Ada is an admin: her messenger links to the admin console ({}/admin).",
        api.base
    );
    Ok(())
}

/// Waits until every posted message is dispatched and each of its notifications has ended;
/// returns each message's recipients.
async fn settle(
    api: &Api,
    posted: &[i64],
    window: Duration,
) -> anyhow::Result<Vec<(i64, Vec<Value>)>> {
    let deadline = Instant::now() + window + Duration::from_secs(30);
    let mut reports = Vec::new();
    for &message in posted {
        loop {
            let status = api.get(&format!("/messages/{message}/deliveries")).await?;
            let recipients = status["recipients"].as_array().cloned().unwrap_or_default();
            let settled = status["dispatched"].as_bool() == Some(true)
                && recipients.iter().all(|r| {
                    matches!(
                        r["email_state"].as_str(),
                        Some("sent" | "skipped" | "failed")
                    )
                });
            if settled {
                reports.push((message, recipients));
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "message {message} still has notifications in flight; is the mailer running and the SMTP server up?"
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(reports)
}

/// Prints one line per recipient of each message; returns (sent, skipped).
fn print_report(reports: &[(i64, Vec<Value>)]) -> (usize, usize) {
    println!();
    println!(
        "{:<8} {:<12} {:<9} {:<18} detail",
        "message", "recipient", "email", "reason"
    );
    let (mut sent, mut skipped) = (0, 0);
    for (message, recipients) in reports {
        if recipients.is_empty() {
            println!("{message:<8} -            -         -                  nobody to notify");
        }
        for r in recipients {
            let state = r["email_state"].as_str().unwrap_or("?");
            match state {
                "sent" => sent += 1,
                "skipped" => skipped += 1,
                _ => {}
            }
            let detail = match state {
                "sent" => format!(
                    "to {} ({})",
                    r["emailed_to"].as_str().unwrap_or("?"),
                    r["smtp_reply"].as_str().unwrap_or("")
                ),
                _ if !r["coalesced_into"].is_null() => format!(
                    "went out in one email with their other unseen message, to {}",
                    r["emailed_to"].as_str().unwrap_or("?")
                ),
                _ => r["smtp_reply"].as_str().unwrap_or("").to_string(),
            };
            let name = r["recipient_name"]
                .as_str()
                .unwrap_or("?")
                .split(' ')
                .next()
                .unwrap_or("?");
            let recipient = format!("{name} ({})", r["recipient_id"]);
            println!(
                "{message:<8} {recipient:<12} {state:<9} {:<18} {detail}",
                r["email_reason"].as_str().unwrap_or("-"),
            );
        }
    }
    (sent, skipped)
}

/// Prints the system emails this run of the demo caused.
async fn print_system_emails(api: &Api, run: &str) -> anyhow::Result<()> {
    let log = api.get("/email-log?direction=out&limit=1000").await?;
    let system: Vec<&Value> = log
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["rule"].as_str().is_some_and(|s| s.starts_with("system:")))
                .filter(|r| {
                    r["rcpt_to"]
                        .as_str()
                        .is_some_and(|to| to.contains(&format!("+{run}@")))
                })
                .collect()
        })
        .unwrap_or_default();
    if !system.is_empty() {
        println!();
        println!("System emails (messaging center; see `tidings log`):");
        for r in system.iter().rev() {
            println!(
                "  {:<8} {:<30} {}",
                r["status"].as_str().unwrap_or("?"),
                r["rcpt_to"].as_str().unwrap_or("-"),
                r["subject"]
                    .as_str()
                    .or(r["reason"].as_str())
                    .unwrap_or("-")
            );
        }
    }
    Ok(())
}
