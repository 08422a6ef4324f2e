//! Files travel with messages (SPEC I9), on real services: inbound mail written the way
//! common clients write it, uploads and downloads through both token kinds, the limits, the
//! hostile names and types, deduplication and the scheduler's clean-up.

mod support;

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::{Env, REPLY_DOMAIN, TOKEN};

const SETTLE: Duration = Duration::from_secs(30);

/// A 1×1 PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99=\x1d\x00\x00\x00\x00IEND\xaeB`\x82";

fn pdf(n: usize) -> Vec<u8> {
    let mut data = b"%PDF-1.7\n".to_vec();
    data.extend((0..n).map(|i| b'a' + (i % 26) as u8));
    data
}

/// Base64 in 76-character lines, as mail clients write it.
fn b64(data: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(data);
    text.as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn conversation(env: &Env, id: i64) -> Value {
    env.ok("GET", &format!("/conversations/{id}"), None).await
}

/// Waits until conversation `id` has `n` messages; returns them.
async fn messages(env: &Env, id: i64, n: usize) -> Vec<Value> {
    support::wait_for(env.root(), "the mail to be posted", async || {
        conversation(env, id).await["messages"]
            .as_array()
            .unwrap()
            .len()
            >= n
    })
    .await;
    conversation(env, id).await["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Ann posts in a ticket Bob and Cora (a customer) follow, and Bob is emailed; returns
/// (ann, bob, cora, conversation, Bob's reply address).
async fn emailed(env: &Env) -> (i64, i64, i64, i64, String) {
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let cora = env.customer("Cora").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    env.follow_item(item, cora).await;
    let m = env
        .post(conv, ann, "Send me the error, please", false)
        .await;
    env.settled(m, SETTLE).await;
    let reply_to = env.mails_to("bob@example.com")[0]
        .parsed()
        .reply_to()
        .unwrap()
        .first()
        .unwrap()
        .address()
        .unwrap()
        .to_string();
    (ann, bob, cora, conv, reply_to)
}

async fn download(env: &Env, token: &str, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .get(env.base() + path)
        .bearer_auth(token);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().await.unwrap()
}

/// I9: a reply as Outlook writes one (an HTML body showing an image by `cid:`, a PDF whose
/// name is RFC 2231 encoded) and one as Gmail writes one (plain and HTML alternatives, an
/// image attached with an RFC 2047 name) keep every file with the posted message: name,
/// type, size, inline or not, downloadable whole and by range.
#[tokio::test(flavor = "multi_thread")]
async fn i9_replies_keep_their_inline_images_and_files() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, bob, _, conv, reply_to) = emailed(&env).await;
    let document = pdf(700_000);
    let outlook = format!(
        "From: Bob <bob@example.com>\r\nTo: {reply_to}\r\nSubject: RE: Printer\r\n\
         Message-ID: <outlook-1@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"mixed\"\r\n\r\n\
         --mixed\r\nContent-Type: multipart/related; boundary=\"related\"; type=\"multipart/alternative\"\r\n\r\n\
         --related\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
         --alt\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\nHere is the error.\r\n\r\n\
         --alt\r\nContent-Type: text/html; charset=\"us-ascii\"\r\n\r\n\
         <html><body><p>Here is the error.</p><p><img src=\"cid:image001.png@01DA0000.00000000\"></p></body></html>\r\n\
         --alt--\r\n\r\n\
         --related\r\nContent-Type: image/png; name=\"image001.png\"\r\n\
         Content-Description: image001.png\r\nContent-Disposition: inline; filename=\"image001.png\"\r\n\
         Content-ID: <image001.png@01DA0000.00000000>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n\
         --related--\r\n\r\n\
         --mixed\r\nContent-Type: application/pdf; name=\"=?utf-8?B?UsOpc3Vtw6kucGRm?=\"\r\n\
         Content-Disposition: attachment; filename*=utf-8''R%c3%a9sum%c3%a9.pdf\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--mixed--\r\n",
        b64(PNG),
        b64(&document)
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &outlook).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    let posted = messages(&env, conv, 2).await;
    let reply = &posted[1];
    assert_eq!(reply["author_id"], json!(bob));
    assert_eq!(reply["body"], "Here is the error.");
    let files = reply["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{reply}");
    let image = files
        .iter()
        .find(|f| f["content_type"] == "image/png")
        .unwrap();
    assert_eq!(image["inline"], true);
    assert_eq!(image["name"], "image001.png");
    assert_eq!(image["content_id"], "image001.png@01DA0000.00000000");
    let doc = files
        .iter()
        .find(|f| f["content_type"] == "application/pdf")
        .unwrap();
    assert_eq!(doc["name"], "Résumé.pdf");
    assert_eq!(doc["size"], json!(document.len()));
    assert_eq!(doc["inline"], false);

    // Downloads: whole, by range, with headers that keep the file out of the api's origin.
    let whole = download(&env, TOKEN, &format!("/attachments/{}", doc["id"]), None).await;
    assert_eq!(whole.status().as_u16(), 200);
    let h = whole.headers().clone();
    assert_eq!(h["content-type"], "application/pdf");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(
        h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let disposition = h["content-disposition"].to_str().unwrap();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    // Percent-encoded UTF-8 (compared in lower case).
    assert!(
        disposition
            .to_lowercase()
            .contains("filename*=utf-8''r%c3%a9sum%c3%a9.pdf"),
        "{disposition}"
    );
    assert_eq!(whole.bytes().await.unwrap().as_ref(), document.as_slice());
    let part = download(
        &env,
        TOKEN,
        &format!("/attachments/{}", doc["id"]),
        Some("bytes=262140-262149"),
    )
    .await;
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 262140-262149/{}", document.len())
    );
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &document[262_140..262_150]
    );
    let beyond = download(
        &env,
        TOKEN,
        &format!("/attachments/{}", doc["id"]),
        Some("bytes=99999999-"),
    )
    .await;
    assert_eq!(beyond.status().as_u16(), 416);
    let shown = download(&env, TOKEN, &format!("/attachments/{}", image["id"]), None).await;
    assert!(
        shown.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline;")
    );

    // Gmail's shape, with the same image again: shown once in the conversation.
    let gmail = format!(
        "From: Bob <bob@example.com>\r\nTo: {reply_to}\r\nSubject: Re: Printer\r\n\
         Message-ID: <gmail-1@example.com>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"000000000000a\"\r\n\r\n\
         --000000000000a\r\nContent-Type: multipart/alternative; boundary=\"000000000000b\"\r\n\r\n\
         --000000000000b\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\r\nAnd a photo of the tray.\r\n\r\n\
         --000000000000b\r\nContent-Type: text/html; charset=\"UTF-8\"\r\n\r\n<div dir=\"ltr\">And a photo of the tray.</div>\r\n\
         --000000000000b--\r\n\
         --000000000000a\r\nContent-Type: image/png; name=\"=?UTF-8?Q?Sk=C3=A4rmbild.png?=\"\r\n\
         Content-Disposition: attachment; filename=\"=?UTF-8?Q?Sk=C3=A4rmbild.png?=\"\r\n\
         Content-Transfer-Encoding: base64\r\nX-Attachment-Id: f_lq1\r\nContent-ID: <f_lq1>\r\n\r\n{}\r\n\
         --000000000000a\r\nContent-Type: image/jpeg; name=\"tray.jpg\"\r\n\
         Content-Disposition: attachment; filename=\"tray.jpg\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--000000000000a--\r\n",
        b64(PNG),
        b64(b"\xff\xd8\xff\xe0 a jpeg")
    );
    let replies = env.smtp("bob@example.com", &[&reply_to], &gmail).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    let posted = messages(&env, conv, 3).await;
    let files = posted[2]["attachments"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["tray.jpg"],
        "the PNG again is shown once: {files:?}"
    );
    assert_eq!(env.sql("SELECT count(*) FROM attachment_blobs"), "3");
    // The large mail waited in the spool, not on the broker, and left nothing behind there.
    assert_eq!(env.sql("SELECT count(*) FROM inbound_spool"), "0");
    // The message's email view names the files it brought.
    let view = env
        .ok("GET", &format!("/messages/{}/email", reply["id"]), None)
        .await;
    assert_eq!(view["files"].as_array().unwrap().len(), 2, "{view}");
    // The email log names the files an email brought.
    let log = env.ok("GET", "/email-log?limit=100", None).await;
    assert!(
        log.as_array().unwrap().iter().any(|r| r["action"]
            .as_str()
            .is_some_and(|a| a.contains("2 files kept: image001.png, Résumé.pdf"))),
        "{log}"
    );
}

/// I9: a customer's first email with a file and no text is a ticket with the file; a file over
/// `TIDINGS_ATTACHMENT_MAX` is not kept, but the message is posted with a line naming it, and
/// the email log says so; 150 files keep the first 100 and say how many more there were.
#[tokio::test(flavor = "multi_thread")]
async fn i9_files_without_text_and_over_the_limits_are_never_lost_silently() {
    let env = Env::with("1s", &[("TIDINGS_ATTACHMENT_MAX", "100000")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let support = format!("support@{REPLY_DOMAIN}");
    let mut parts = String::new();
    parts.push_str(&format!(
        "--b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64(&pdf(5_000))
    ));
    parts.push_str(&format!(
        "--b\r\nContent-Type: application/zip; name=\"logs.zip\"\r\n\
         Content-Disposition: attachment; filename=\"logs.zip\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n",
        b64(&vec![7u8; 150_000])
    ));
    let mail = format!(
        "From: Dana <dana@customer.example>\r\nTo: {support}\r\nSubject: Invoice attached\r\n\
         Message-ID: <files-1@customer.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n{parts}--b--\r\n"
    );
    let replies = env.smtp("dana@customer.example", &[&support], &mail).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the ticket", async || {
        env.sql("SELECT count(*) FROM messages") == "1"
    })
    .await;
    let conv: i64 = env
        .sql("SELECT conversation_id FROM messages")
        .parse()
        .unwrap();
    let posted = messages(&env, conv, 1).await;
    let body = posted[0]["body"].as_str().unwrap();
    assert!(body.starts_with("Invoice attached"), "{body}");
    assert!(
        body.contains("[File not kept: logs.zip (146 KiB): over the 98 KiB limit per file"),
        "{body}"
    );
    let names: Vec<&str> = posted[0]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["invoice.pdf"]);
    let log = env.ok("GET", "/email-log?limit=100", None).await;
    assert!(
        log.as_array().unwrap().iter().any(|r| r["action"]
            .as_str()
            .is_some_and(|a| a.contains("not kept: logs.zip"))),
        "{log}"
    );

    // 150 small files: the first 100 are kept, one line names the rest.
    let mut parts = String::new();
    for n in 0..150 {
        parts.push_str(&format!(
            "--b\r\nContent-Type: text/plain; name=\"f{n}.txt\"\r\n\
             Content-Disposition: attachment; filename=\"f{n}.txt\"\r\n\r\nfile {n}\r\n"
        ));
    }
    let mail = format!(
        "From: Dana <dana@customer.example>\r\nTo: {support}\r\nSubject: Many files\r\n\
         Message-ID: <files-2@customer.example>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nAll the logs.\r\n{parts}--b--\r\n"
    );
    let replies = env.smtp("dana@customer.example", &[&support], &mail).await;
    assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    support::wait_for(env.root(), "the second ticket", async || {
        env.sql("SELECT count(*) FROM messages") == "2"
    })
    .await;
    let body = env.sql("SELECT body FROM messages ORDER BY id DESC LIMIT 1");
    assert!(body.contains("[File not kept: 50 more files"), "{body}");
    assert_eq!(
        env.sql("SELECT count(*) FROM attachments a JOIN messages m ON m.id = a.message_id WHERE m.body LIKE 'All the logs.%'"),
        "100"
    );
}

/// A multipart post: the message as JSON and the files.
async fn upload(
    env: &Env,
    token: &str,
    path: &str,
    message: Value,
    files: &[(&str, &str, Vec<u8>)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new().text("message", message.to_string());
    for (name, kind, data) in files {
        form = form.part(
            "file",
            reqwest::multipart::Part::bytes(data.clone())
                .file_name(name.to_string())
                .mime_str(kind)
                .unwrap(),
        );
    }
    let resp = reqwest::Client::new()
        .post(env.base() + path)
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// I9 through the API: uploads by a person and by the host application; downloads only by
/// those who may see the message (a customer never gets an internal message's file, and one
/// not on the ticket gets nothing); a file over the limit is refused naming it; hostile names
/// and types are made safe.
#[tokio::test(flavor = "multi_thread")]
async fn i9_uploads_and_downloads_follow_who_may_see_the_message() {
    let env = Env::with("2s", &[("TIDINGS_ATTACHMENT_MAX", "200000")], &[]);
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let cora = env.customer("Cora").await;
    let eve = env.customer("Eve").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, cora).await;
    env.follow_item(item, ann).await;
    let (cora_token, ann_token, eve_token) = (
        env.session(cora).await,
        env.session(ann).await,
        env.session(eve).await,
    );
    // Cora sends a screenshot with no text from her messenger.
    let (status, posted) = upload(
        &env,
        &cora_token,
        &format!("/me/conversations/{conv}/messages"),
        json!({"body": ""}),
        &[("screen.png", "image/png", PNG.to_vec())],
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(posted["body"], "Files: screen.png");
    // Ann adds an internal note with a log file, through the host application.
    let (status, note) = upload(
        &env,
        TOKEN,
        &format!("/conversations/{conv}/messages"),
        json!({"author_id": ann, "body": "Internal: the server log", "internal": true}),
        &[("server.log", "text/plain", b"error 42".to_vec())],
    )
    .await;
    assert_eq!(status, 201, "{note}");
    let page = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let file_of = |i: usize| {
        page["messages"][i]["attachments"][0]["id"]
            .as_i64()
            .unwrap()
    };
    let (screenshot, log) = (file_of(0), file_of(1));
    // Who gets what.
    let get = |token: String, id: i64| {
        let env = &env;
        async move {
            download(env, &token, &format!("/me/attachments/{id}"), None)
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(get(ann_token.clone(), screenshot).await, 200);
    assert_eq!(get(ann_token.clone(), log).await, 200);
    assert_eq!(get(cora_token.clone(), screenshot).await, 200);
    assert_eq!(get(cora_token.clone(), log).await, 404, "an internal file");
    assert_eq!(
        get(eve_token.clone(), screenshot).await,
        403,
        "not on the ticket"
    );
    assert_eq!(get(cora_token.clone(), 999_999).await, 404);
    let (_, me_page) = env
        .call_as(
            &cora_token,
            "GET",
            &format!("/me/conversations/{conv}"),
            None,
        )
        .await;
    assert_eq!(
        me_page["messages"].as_array().unwrap().len(),
        1,
        "{me_page}"
    );
    assert_eq!(
        me_page["messages"][0]["attachments"][0]["name"],
        "screen.png"
    );

    // Over the limit: refused, naming the file and the limit; nothing posted.
    let (status, answer) = upload(
        &env,
        &cora_token,
        &format!("/me/conversations/{conv}/messages"),
        json!({"body": "big"}),
        &[("big.bin", "application/octet-stream", vec![0u8; 200_001])],
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("big.bin") && error.contains("TIDINGS_ATTACHMENT_MAX"),
        "{error}"
    );
    // A multipart body without its message part, or with a stray part, is named.
    let (status, answer) = upload(
        &env,
        &cora_token,
        &format!("/me/conversations/{conv}/messages"),
        json!(null),
        &[],
    )
    .await;
    assert_eq!(status, 400, "{answer}");

    // Hostile names and types.
    let long = format!("{}.pdf", "x".repeat(10_000));
    let (status, posted) = upload(
        &env,
        &cora_token,
        &format!("/me/conversations/{conv}/messages"),
        json!({"body": "hostile"}),
        &[
            ("../../etc/passwd", "text/plain", b"root:x:0:0".to_vec()),
            (
                "invoice\u{202E}fdp.exe",
                "application/pdf",
                b"MZ\x90\x00".to_vec(),
            ),
            (&long, "application/pdf", pdf(10)),
            (
                "page.png",
                "image/png",
                b"<html><script>alert(1)</script>".to_vec(),
            ),
            (
                "logo.svg",
                "image/svg+xml",
                b"<svg onload=\"alert(1)\"/>".to_vec(),
            ),
            ("empty.txt", "text/plain", Vec::new()),
        ],
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let page = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let last = page["messages"].as_array().unwrap().last().unwrap().clone();
    let files = last["attachments"].as_array().unwrap();
    let by_name = |n: &str| {
        files
            .iter()
            .find(|f| f["name"].as_str().unwrap().starts_with(n))
            .cloned()
    };
    assert!(by_name("passwd").is_some(), "{files:?}");
    assert!(by_name("invoicefdp.exe").is_some(), "{files:?}");
    assert_eq!(
        by_name("invoicefdp.exe").unwrap()["content_type"],
        "application/octet-stream"
    );
    let long = by_name("xxxx").unwrap();
    assert_eq!(long["name"].as_str().unwrap().chars().count(), 200);
    assert!(long["name"].as_str().unwrap().ends_with(".pdf"));
    let html = by_name("page.png").unwrap();
    assert_eq!(html["content_type"], "text/html");
    let served = download(&env, TOKEN, &format!("/attachments/{}", html["id"]), None).await;
    assert!(
        served.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert!(
        served.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("sandbox")
    );
    let svg = by_name("logo.svg").unwrap();
    assert_eq!(svg["content_type"], "image/svg+xml");
    let served = download(&env, TOKEN, &format!("/attachments/{}", svg["id"]), None).await;
    assert!(
        served.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    assert_eq!(by_name("empty.txt").unwrap()["size"], 0);
    let empty = download(
        &env,
        TOKEN,
        &format!("/attachments/{}", by_name("empty.txt").unwrap()["id"]),
        None,
    )
    .await;
    assert_eq!(empty.status().as_u16(), 200);
    assert!(empty.bytes().await.unwrap().is_empty());
}

/// Files no message shows any more (its message deleted) are removed by the scheduler once
/// `TIDINGS_ATTACHMENT_GRACE` has passed; files still shown stay.
#[tokio::test(flavor = "multi_thread")]
async fn i9_the_scheduler_removes_files_no_message_shows() {
    let env = Env::with("2s", &[("TIDINGS_ATTACHMENT_GRACE", "1s")], &[]);
    let _api = env.spawn(&["api"]);
    env.wait_for_api().await;
    let ann = env.user("Ann").await;
    let (_, _, conv) = env.ticket("Printer").await;
    let path = format!("/conversations/{conv}/messages");
    let (status, kept) = upload(
        &env,
        TOKEN,
        &path,
        json!({"author_id": ann, "body": "keep", "internal": false}),
        &[("a.pdf", "application/pdf", pdf(300_000))],
    )
    .await;
    assert_eq!(status, 201, "{kept}");
    let (status, gone) = upload(
        &env,
        TOKEN,
        &path,
        json!({"author_id": ann, "body": "gone", "internal": false}),
        &[("b.pdf", "application/pdf", pdf(400_000))],
    )
    .await;
    assert_eq!(status, 201, "{gone}");
    env.ok("DELETE", &format!("/messages/{}", gone["id"]), None)
        .await;
    assert_eq!(env.sql("SELECT count(*) FROM attachment_blobs"), "2");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let out = env.command(&["schedule", "purge_log"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 files"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(env.sql("SELECT count(*) FROM attachment_blobs"), "1");
    assert_eq!(env.sql("SELECT count(*) FROM attachment_chunks WHERE sha256 NOT IN (SELECT sha256 FROM attachment_blobs)"), "0");
    let page = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let id = page["messages"][0]["attachments"][0]["id"]
        .as_i64()
        .unwrap();
    let whole = download(&env, TOKEN, &format!("/attachments/{id}"), None).await;
    assert_eq!(whole.bytes().await.unwrap().len(), pdf(300_000).len());
}

/// I9 outbound: the email to a recipient who did not see the message carries its small file
/// attached and its big file as a link (past `TIDINGS_EMAIL_ATTACH_MAX`); the link opens that
/// file for that recipient only, until it expires, and never an internal file for a customer.
#[tokio::test(flavor = "multi_thread")]
async fn i9_emails_attach_small_files_and_link_big_ones() {
    let env = Env::with("1s", &[("TIDINGS_EMAIL_ATTACH_MAX", "100000")], &[]);
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let ann = env.user("Ann").await;
    let bob = env.user("Bob").await;
    let cora = env.customer("Cora").await;
    let (_, item, conv) = env.ticket("Printer").await;
    env.follow_item(item, bob).await;
    env.follow_item(item, cora).await;
    let small = pdf(20_000);
    let big = vec![9u8; 300_000];
    let (status, posted) = upload(
        &env,
        TOKEN,
        &format!("/conversations/{conv}/messages"),
        json!({"author_id": ann, "body": "The manual and the firmware", "internal": false}),
        &[
            ("manual.pdf", "application/pdf", small.clone()),
            ("firmware.zip", "application/zip", big.clone()),
        ],
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    env.settled(posted["id"].as_i64().unwrap(), SETTLE).await;
    let mail = &env.mails_to("bob@example.com")[0];
    let parsed = mail.parsed();
    let attached: Vec<(String, Vec<u8>)> = parsed
        .attachments()
        .map(|a| {
            (
                mail_parser::MimeHeaders::attachment_name(a)
                    .unwrap_or_default()
                    .to_string(),
                a.contents().to_vec(),
            )
        })
        .collect();
    assert_eq!(attached.len(), 1, "{attached:?}");
    assert_eq!(attached[0].0, "manual.pdf");
    assert_eq!(attached[0].1, small);
    let text = parsed.body_text(0).unwrap().to_string();
    assert!(text.contains("Attached: manual.pdf"), "{text}");
    let link = text
        .lines()
        .find_map(|l| l.strip_prefix("File: firmware.zip ("))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or_else(|| panic!("no link in {text}"))
        .trim()
        .to_string();
    assert!(
        link.starts_with(&format!("{}/files/{bob}/", env.base())),
        "{link}"
    );
    let opened = reqwest::get(&link).await.unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    assert_eq!(opened.bytes().await.unwrap().as_ref(), big.as_slice());
    // Another person's path with Bob's token, a changed token: refused.
    let token = link.rsplit('/').next().unwrap();
    let other = reqwest::get(format!("{}/files/{ann}/{token}", env.base()))
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 400);
    let changed = reqwest::get(format!("{link}x")).await.unwrap();
    assert_eq!(changed.status().as_u16(), 400);
    // Expired.
    let page = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let big_id = page["messages"][0]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "firmware.zip")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let expired = tidings_common::attachments::link_url(
        &env.base(),
        support::SECRET.as_bytes(),
        bob,
        big_id,
        1_000,
    );
    assert_eq!(reqwest::get(&expired).await.unwrap().status().as_u16(), 410);
    // A link to an internal message's file opens nothing for a customer.
    let (status, note) = upload(
        &env,
        TOKEN,
        &format!("/conversations/{conv}/messages"),
        json!({"author_id": ann, "body": "Internal: costs", "internal": true}),
        &[("costs.pdf", "application/pdf", pdf(100))],
    )
    .await;
    assert_eq!(status, 201);
    let page = env.ok("GET", &format!("/conversations/{conv}"), None).await;
    let internal_id = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == note["id"])
        .unwrap()["attachments"][0]["id"]
        .as_i64()
        .unwrap();
    let forged_for_cora = tidings_common::attachments::link_url(
        &env.base(),
        support::SECRET.as_bytes(),
        cora,
        internal_id,
        4_000_000_000,
    );
    assert_eq!(
        reqwest::get(&forged_for_cora)
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
}

/// I9, hostile mail: a thousand nested multiparts, broken and truncated base64, a forwarded
/// mail inside a forwarded mail inside a forwarded mail, two files of one name, and a `cid:`
/// that names no part. Each mail gets a clear outcome, the rest of it is posted, and the
/// listener and the consumer keep going.
#[tokio::test(flavor = "multi_thread")]
async fn i9_hostile_mail_posts_what_it_can_and_breaks_nothing() {
    let env = Env::new("1s");
    let _tidings = env.spawn(&["all"]);
    env.wait_for_api().await;
    env.wait_for_topology().await;
    let (_, _, _, conv, reply_to) = emailed(&env).await;
    let head = |id: &str, boundary: &str| {
        format!(
            "From: Bob <bob@example.com>\r\nTo: {reply_to}\r\nSubject: Re: Printer\r\n\
             Message-ID: <{id}@example.com>\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
        )
    };
    // 1. A thousand nested multiparts around the text.
    let mut nested = head("nested", "b0");
    for depth in 1..1000 {
        nested.push_str(&format!(
            "--b{}\r\nContent-Type: multipart/mixed; boundary=\"b{depth}\"\r\n\r\n",
            depth - 1
        ));
    }
    nested.push_str("--b999\r\nContent-Type: text/plain\r\n\r\nDeep text.\r\n");
    for depth in (0..1000).rev() {
        nested.push_str(&format!("--b{depth}--\r\n"));
    }
    // 2. Broken base64, truncated base64, two files of one name, a cid that names nothing.
    let broken = format!(
        "{}--b\r\nContent-Type: text/html\r\n\r\n<p>See <img src=\"cid:nothing@here\"></p>\r\n\
         --b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n%%%%not base64 at all!!!!\r\n\
         --b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjcK\r\n\
         --b\r\nContent-Type: image/png; name=\"cut.png\"\r\nContent-Disposition: attachment; filename=\"cut.png\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgoAAAANSUhEUgAAAAEAAAAB\r\n",
        head("broken", "b")
    );
    // 3. Forwarded inside forwarded inside forwarded.
    let mut forwarded =
        "From: Carl <carl@example.com>\r\nSubject: Innermost\r\n\r\nThe original.\r\n".to_string();
    for level in 0..3 {
        forwarded = format!(
            "From: Fwd{level} <f{level}@example.com>\r\nSubject: Fwd: level {level}\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"f{level}\"\r\n\r\n\
             --f{level}\r\nContent-Type: text/plain\r\n\r\nForwarding.\r\n\
             --f{level}\r\nContent-Type: message/rfc822\r\n\r\n{forwarded}\r\n--f{level}--\r\n"
        );
    }
    let forward = format!(
        "{}--b\r\nContent-Type: text/plain\r\n\r\nSee the forwarded mail.\r\n\
         --b\r\nContent-Type: message/rfc822\r\n\r\n{forwarded}\r\n--b--\r\n",
        head("forward", "b")
    );
    for mail in [&nested, &broken, &forward] {
        let replies = env.smtp("bob@example.com", &[&reply_to], mail).await;
        assert!(replies.last().unwrap().starts_with("250"), "{replies:?}");
    }
    let posted = messages(&env, conv, 4).await;
    let by_body = |text: &str| {
        posted
            .iter()
            .find(|m| m["body"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no message with {text:?}: {posted:?}"))
            .clone()
    };
    let forwarded = by_body("See the forwarded mail.");
    let files = forwarded["attachments"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["name"], "Fwd: level 2.eml");
    assert_eq!(files[0]["content_type"], "message/rfc822");
    let broken = posted
        .iter()
        .find(|m| {
            m["attachments"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["name"] == "cut.png")
        })
        .unwrap_or_else(|| panic!("the broken mail was not posted with its files: {posted:?}"));
    let names: Vec<&str> = broken["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.iter().filter(|n| **n == "a.pdf").count() >= 1,
        "{names:?}"
    );
    // The roles are still up: a plain reply after them is posted too.
    let plain = format!(
        "From: Bob <bob@example.com>\r\nTo: {reply_to}\r\nSubject: Re: Printer\r\n\
         Message-ID: <after@example.com>\r\n\r\nStill here.\r\n"
    );
    env.smtp("bob@example.com", &[&reply_to], &plain).await;
    let posted = messages(&env, conv, 5).await;
    assert!(posted.iter().any(|m| m["body"] == "Still here."));
}
