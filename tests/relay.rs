//! End to end through a real MX relay: Postfix on loopback relays the reply domain to the
//! inbound listener. Run by `scripts/relay-test`, which starts that Postfix instance
//! (127.0.0.1:2627 relaying `reply.relay.test` to 127.0.0.1:2626, with
//! `smtp_tls_security_level = encrypt`); ignored otherwise. The listener requires TLS, so
//! every delivery here went over STARTTLS.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::Env;

const RELAY_PORT: u16 = 2627;
const DOMAIN: &str = "reply.relay.test";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the Postfix relay that scripts/relay-test starts"]
async fn replies_through_postfix_are_threaded_and_auto_replies_are_not() {
    let pki_dir = std::env::temp_dir().join(format!("tidings-relay-pki-{}", std::process::id()));
    let pki = support::pki::Pki::new(&pki_dir, "mx");
    let listener = pki.issue("listener", &["localhost"], false);
    let env = Env::with(
        "1s",
        &[
            ("TIDINGS_INBOUND_ADDR", "127.0.0.1:2626"),
            ("TIDINGS_REPLY_DOMAIN", DOMAIN),
            (
                "TIDINGS_INBOUND_TLS_CERT",
                &listener.cert.display().to_string(),
            ),
            (
                "TIDINGS_INBOUND_TLS_KEY",
                &listener.key.display().to_string(),
            ),
            ("TIDINGS_INBOUND_REQUIRE_TLS", "yes"),
        ],
        &[],
    );
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let (_, item, conv) = env.ticket("Relayed").await;
    env.follow_item(item, ann).await;
    env.follow_item(item, bob).await;
    let first = env.post(conv, ann, "Can you reply by email?", false).await;
    env.settled(first, Duration::from_secs(30)).await;
    let mail = &env.mails_to("bob@example.com")[0];
    let reply_to = mail
        .parsed()
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    assert!(reply_to.ends_with(&format!("@{DOMAIN}")), "{reply_to}");
    let message_id = mail.header("Message-ID").unwrap();

    let reply = format!(
        "From: Bob <bob@example.com>\nTo: {reply_to}\nSubject: Re: Relayed\nMessage-ID: <relayed-1@example.com>\n\
         In-Reply-To: {message_id}\n\nReplying through the relay.\n\nOn Mon, Ann wrote:\n> Can you reply by email?\n"
    );
    let answer = support::smtp_to(RELAY_PORT, "bob@example.com", &[&reply_to], &reply).await;
    assert!(
        answer.last().unwrap().starts_with("250"),
        "Postfix refused: {answer:?}"
    );
    let ooo = format!(
        "From: Bob <bob@example.com>\nTo: {reply_to}\nSubject: Out of Office: Relayed\n\
         Message-ID: <relayed-ooo@example.com>\nAuto-Submitted: auto-replied\n\nAway."
    );
    let answer = support::smtp_to(RELAY_PORT, "bob@example.com", &[&reply_to], &ooo).await;
    assert!(
        answer.last().unwrap().starts_with("250"),
        "Postfix refused: {answer:?}"
    );

    let path = format!("/conversations/{conv}");
    let conversation = || env.ok("GET", &path, None);
    support::wait_for(env.root(), "the relayed reply to be posted", async || {
        conversation().await["messages"].as_array().unwrap().len() >= 2
    })
    .await;
    let messages: Vec<Value> = conversation().await["messages"].as_array().unwrap().clone();
    assert_eq!(messages[1]["author_id"], json!(bob));
    assert_eq!(messages[1]["body"], "Replying through the relay.");
    let d = env
        .settled(messages[1]["id"].as_i64().unwrap(), Duration::from_secs(30))
        .await;
    assert!(
        d["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["recipient_id"] == json!(ann)),
        "{d}"
    );
    support::wait_for(env.root(), "the out-of-office to be logged", async || {
        let log = env.ok("GET", "/email-log?limit=100", None).await;
        log.as_array()
            .unwrap()
            .iter()
            .any(|r| r["direction"] == "inbound" && r["status"] == "ignored")
    })
    .await;
    assert_eq!(
        conversation().await["messages"].as_array().unwrap().len(),
        2,
        "the out-of-office was not posted"
    );
    println!(
        "relay: reply threaded as message {}, out-of-office logged and not posted, over STARTTLS",
        messages[1]["id"]
    );
    drop(_tidings);
    drop(env);
    let _ = std::fs::remove_dir_all(&pki_dir);
}
