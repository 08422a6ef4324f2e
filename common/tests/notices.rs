//! Machine notices as mail servers and providers write them (SPEC I10, T5), written for these
//! tests from the documented forms of Postfix, Exim, qmail, Sendmail, Exchange, Gmail, Domino,
//! Amazon SES, SendGrid, Mailgun, Postmark, Mailman and RFC 5965, in several languages, and
//! people's mail that only looks like them. `notices/labels.tsv` says what each one is.

use std::path::Path;

use tidings_common::inbound::{InboundContext, inspect};

fn context() -> InboundContext {
    InboundContext {
        reply_domain: "reply.example.com".into(),
        own_address: Some("notifications@example.com".into()),
        authserv_id: None,
        attachment_max: 25 << 20,
    }
}

#[test]
fn i10_t5_every_notice_is_told_apart_and_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/notices");
    let labels = std::fs::read_to_string(dir.join("labels.tsv")).expect("labels.tsv");
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in labels
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let fields: Vec<&str> = line.split('\t').collect();
        let [file, verdict, recipients, status, outcome, what] = fields[..] else {
            panic!("labels.tsv: a line without six fields: {line:?}");
        };
        let raw = std::fs::read(dir.join(file)).expect(file);
        let report = inspect(&raw, &context());
        checked += 1;
        if report.verdict.as_str() != verdict {
            wrong.push(format!(
                "{file} ({what}): verdict {} ({:?}), expected {verdict}",
                report.verdict.as_str(),
                report.reason
            ));
            continue;
        }
        let Some(bounce) = report.bounce.as_ref() else {
            if matches!(verdict, "bounce" | "complaint") {
                wrong.push(format!("{file}: no report read"));
            }
            continue;
        };
        if bounce.recipients.join(",") != recipients {
            wrong.push(format!(
                "{file} ({what}): recipients {:?}, expected {recipients:?}",
                bounce.recipients
            ));
        }
        if bounce.status.as_deref().unwrap_or_default() != status {
            wrong.push(format!(
                "{file} ({what}): status {:?}, expected {status:?}",
                bounce.status
            ));
        }
        let got = match bounce.not_a_failure() {
            Some(what) => what.to_string(),
            None if verdict == "complaint" => String::new(),
            None if bounce.permanent => "hard".into(),
            None => "soft".into(),
        };
        let expected = outcome.rsplit(':').next().unwrap_or_default();
        if got != expected {
            wrong.push(format!(
                "{file} ({what}): outcome {got:?}, expected {expected:?}"
            ));
        }
    }
    assert!(checked >= 30, "only {checked} notices were read");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn t5_a_complaint_quotes_the_proof_of_which_email_it_is_about() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/notices");
    let raw = std::fs::read(dir.join("arf.eml")).unwrap();
    let report = inspect(&raw, &context());
    let arf = report.bounce.expect("the report is read");
    assert_eq!(arf.feedback_type.as_deref(), Some("abuse"));
    assert_eq!(arf.signed, vec!["bounces+n42-abcdefghijklmnop".to_string()]);
    assert_eq!(
        arf.original_message_id.as_deref(),
        Some("<tidings.n42.p7.x1@reply.example.com>")
    );
    assert_eq!(
        arf.unsubscribe,
        vec!["7.u.from_customer.20800.abcdefghijklmnopqrstuvwxyz".to_string()]
    );
    assert_eq!(report.reply_text, None, "a complaint is never posted");
}
