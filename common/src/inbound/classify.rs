//! Telling automatic mail from people: our own mail coming back, complaint reports, delivery
//! reports in every common form, auto-replies (RFC 3834 and the folk variants seen in the
//! wild) and bulk or list mail. Mail a rule forwarded for a person (`Auto-Submitted:
//! auto-forwarded`) is that person's.

use mail_parser::MimeHeaders;

use super::notice::{self, Signs};
use super::{InboundContext, InboundVerdict, header_text};

/// Whether a rule forwarded the mail for a person (`Auto-Submitted: auto-forwarded`).
pub(crate) fn auto_forwarded(message: &mail_parser::Message<'_>) -> bool {
    header_text(message, "Auto-Submitted").is_some_and(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("auto-forwarded")
    })
}

/// Whether any part of the mail is of type `ctype/subtype` (`message/delivery-status`…).
fn has_part(message: &mail_parser::Message<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    message.parts.iter().any(|part| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case(ctype)
                && ct
                    .subtype()
                    .is_some_and(|s| subtypes.iter().any(|w| s.eq_ignore_ascii_case(w)))
        })
    })
}

/// Out-of-office subjects in common languages (lower case, matched as prefixes or contained).
const AUTO_REPLY_SUBJECTS: &[&str] = &[
    "out of office",
    "out of the office",
    "automatic reply",
    "auto reply",
    "autoreply",
    "auto-reply",
    "auto response",
    "autoresponse",
    "away from the office",
    "on vacation",
    "abwesenheitsnotiz",
    "automatische antwort",
    "réponse automatique",
    "absence du bureau",
    "respuesta automática",
    "fuera de la oficina",
    "risposta automatica",
    "fuori ufficio",
    "automatisch antwoord",
    "afwezig",
    "frånvaro",
    "automatiskt svar",
    "fravær",
    "automatisk svar",
    "poza biurem",
    "resposta automática",
    "ausente",
    "автоответ",
    "自动回复",
];

/// Automatic mail (RFC 3834 and its folk variants), bounces, bulk mail and our own mail.
pub(crate) fn automatic(
    message: &mail_parser::Message<'_>,
    from: Option<&str>,
    message_id: Option<&str>,
    context: &InboundContext,
) -> Option<(InboundVerdict, String)> {
    let header = |name: &str| header_text(message, name).map(|v| v.to_ascii_lowercase());
    // Our own notification coming back.
    let domain = format!("@{}>", context.reply_domain.to_ascii_lowercase());
    if message_id.is_some_and(|id| id.to_ascii_lowercase().ends_with(&domain)) {
        return Some((InboundVerdict::Loop, "the Message-ID is one of ours".into()));
    }
    if let (Some(from), Some(own)) = (from, &context.own_address)
        && from.eq_ignore_ascii_case(own)
    {
        return Some((InboundVerdict::Loop, "sent from our own address".into()));
    }
    let content_type = header("Content-Type").unwrap_or_default();
    let report_type = content_type.contains("multipart/report");
    // Complaints (RFC 5965 ARF).
    if (report_type && content_type.contains("feedback-report"))
        || has_part(message, "message", &["feedback-report"])
    {
        return Some((
            InboundVerdict::Complaint,
            "a complaint report (RFC 5965 feedback report)".into(),
        ));
    }
    // Read receipts (RFC 8098) are machine mail about a mail, never a person's words.
    if (report_type && content_type.contains("disposition-notification"))
        || has_part(message, "message", &["disposition-notification"])
    {
        return Some((
            InboundVerdict::AutoReply,
            "a read receipt (RFC 8098 disposition notification)".into(),
        ));
    }
    // Delivery reports (RFC 3464), with or without the report-type parameter.
    if report_type {
        return Some((
            InboundVerdict::Bounce,
            "a delivery report (multipart/report)".into(),
        ));
    }
    if has_part(
        message,
        "message",
        &["delivery-status", "global-delivery-status"],
    ) {
        return Some((
            InboundVerdict::Bounce,
            "a delivery report (message/delivery-status part)".into(),
        ));
    }
    if header("X-Failed-Recipients").is_some() {
        return Some((
            InboundVerdict::Bounce,
            "X-Failed-Recipients is present".into(),
        ));
    }
    let subject = message.subject().map(str::to_lowercase).unwrap_or_default();
    let from_name = message
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.name())
        .map(str::to_string);
    let body = std::cell::OnceCell::new();
    let signs = || Signs {
        from,
        subject: &subject,
        body: body.get_or_init(|| super::notice_text(message)),
        carries_message: has_part(message, "message", &["rfc822", "global"])
            || has_part(message, "text", &["rfc822-headers"]),
    };
    // A provider's notification in JSON.
    // (The first text part as it is, never an HTML conversion: this runs for every mail.)
    let json_like = message
        .text_body
        .first()
        .and_then(|id| match &message.part(*id)?.body {
            mail_parser::PartType::Text(text) => Some(text.trim_start().starts_with(['{', '['])),
            _ => None,
        })
        .unwrap_or(false)
        || super::json_part(message).is_some();
    if json_like
        && let Some(kind) = notice::json_kind(body.get_or_init(|| super::notice_text(message)))
    {
        return Some(match kind {
            notice::NoticeKind::Complaint => (
                InboundVerdict::Complaint,
                "a complaint notification in JSON".into(),
            ),
            notice::NoticeKind::Delivery => (
                InboundVerdict::Bounce,
                "a delivery notification in JSON".into(),
            ),
        });
    }
    if notice::complaint_words(&subject)
        && let Some(why) = notice::complaint_notice(&signs())
    {
        return Some((InboundVerdict::Complaint, why));
    }
    if let Some(why) = notice::daemon_sender(from, from_name.as_deref()) {
        return Some((InboundVerdict::Bounce, why));
    }
    if header("Return-Path").is_some_and(|r| r.trim() == "<>") {
        return Some((InboundVerdict::Bounce, "empty Return-Path".into()));
    }
    if notice::failure_subject(&subject)
        && let Some(why) = notice::failure_notice(&signs())
    {
        return Some((InboundVerdict::Bounce, why));
    }
    if notice::list_manager(from)
        && let Some((why, rejected)) = notice::list_notice(&signs())
    {
        let verdict = if rejected {
            InboundVerdict::Bounce
        } else {
            InboundVerdict::AutoReply
        };
        return Some((verdict, why));
    }
    // A rule forwarding a person's mail marks it `auto-forwarded` (RFC 5436 §2.7): the words
    // are still the person's, so nothing below (which reads the forwarder's marks) applies.
    if auto_forwarded(message) {
        // Unless it is ours coming round again.
        let looped = header("X-Loop").is_some_and(|v| {
            v.contains(&context.reply_domain.to_ascii_lowercase())
                || context
                    .own_address
                    .as_deref()
                    .is_some_and(|own| v.contains(&own.to_ascii_lowercase()))
        });
        return looped.then(|| {
            (
                InboundVerdict::Loop,
                "auto-forwarded mail with our own X-Loop".into(),
            )
        });
    }
    // Auto-replies (RFC 3834 and common variants).
    if let Some(value) = header("Auto-Submitted")
        && value.split(';').next().unwrap_or_default().trim() != "no"
    {
        return Some((
            InboundVerdict::AutoReply,
            format!("Auto-Submitted: {value}"),
        ));
    }
    // RFC 822-era loop guard written by procmail, mailing lists and many ticket systems.
    if let Some(value) = header("X-Loop") {
        return Some((
            InboundVerdict::Loop,
            format!("X-Loop: {value} (another system's loop guard)"),
        ));
    }
    // Exchange marks mail its inbox rules sent (forwards, redirects, rule replies) with both;
    // either alone is ordinary (Outlook sets X-Auto-Response-Suppress on meeting mail, and the
    // rules header is kept on mail a person then answers).
    if let (Some(rule), Some(suppress)) = (
        header("X-MS-Exchange-Inbox-Rules-Loop"),
        header("X-Auto-Response-Suppress"),
    ) && suppress.split(',').any(|v| v.trim() == "all")
    {
        return Some((
            InboundVerdict::AutoReply,
            format!(
                "sent by an Exchange inbox rule (X-MS-Exchange-Inbox-Rules-Loop: {rule} with X-Auto-Response-Suppress: All)"
            ),
        ));
    }
    for name in [
        "X-Autoreply",
        "X-Autorespond",
        "X-Autoresponder",
        "X-Auto-Reply",
    ] {
        if header(name).is_some() {
            return Some((InboundVerdict::AutoReply, format!("{name} is present")));
        }
    }
    let precedence = header("Precedence").unwrap_or_default();
    if precedence == "auto_reply" {
        return Some((InboundVerdict::AutoReply, "Precedence: auto_reply".into()));
    }
    if let Some(subject) = message.subject() {
        let subject = subject.to_lowercase();
        if let Some(hit) = AUTO_REPLY_SUBJECTS.iter().find(|s| subject.contains(*s)) {
            return Some((InboundVerdict::AutoReply, format!("subject says {hit:?}")));
        }
    }
    // Bulk and list mail.
    if matches!(precedence.as_str(), "bulk" | "list" | "junk") {
        return Some((InboundVerdict::Bulk, format!("Precedence: {precedence}")));
    }
    if header("List-Id").is_some() {
        return Some((InboundVerdict::Bulk, "List-Id is present".into()));
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::inbound::{InboundContext, InboundVerdict, inspect};

    fn verdict(headers: &str) -> (InboundVerdict, Option<String>) {
        let raw = format!(
            "From: ann@example.com\r\nTo: support@reply.example.com\r\nSubject: hi\r\n{headers}\r\nHello\r\n"
        );
        let report = inspect(
            raw.as_bytes(),
            &InboundContext {
                reply_domain: "reply.example.com".into(),
                own_address: None,
                authserv_id: None,
                attachment_max: 25 << 20,
            },
        );
        (report.verdict, report.reason)
    }

    #[test]
    fn x_loop_and_the_exchange_pair_are_automatic_each_alone_is_human() {
        let (v, reason) = verdict("X-Loop: helpdesk@example.org\r\n");
        assert_eq!(v, InboundVerdict::Loop);
        assert!(reason.unwrap().starts_with("X-Loop"));
        let (v, reason) = verdict(
            "X-MS-Exchange-Inbox-Rules-Loop: ann@example.com\r\nX-Auto-Response-Suppress: All\r\n",
        );
        assert_eq!(v, InboundVerdict::AutoReply);
        assert!(reason.unwrap().contains("Exchange inbox rule"));
        for alone in [
            "X-MS-Exchange-Inbox-Rules-Loop: ann@example.com\r\n",
            "X-Auto-Response-Suppress: All\r\n",
            "X-MS-Exchange-Inbox-Rules-Loop: ann@example.com\r\nX-Auto-Response-Suppress: DR, RN\r\n",
        ] {
            assert_eq!(verdict(alone).0, InboundVerdict::NewConversation, "{alone}");
        }
    }
}
