//! Telling automatic mail from people: our own mail coming back, bounces, auto-replies
//! (RFC 3834 and the folk variants seen in the wild) and bulk or list mail.

use super::{InboundContext, InboundVerdict, header_text};

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
    // Bounces.
    let content_type = header("Content-Type").unwrap_or_default();
    if content_type.contains("multipart/report") && content_type.contains("delivery-status") {
        return Some((
            InboundVerdict::Bounce,
            "delivery status notification (multipart/report)".into(),
        ));
    }
    if header("X-Failed-Recipients").is_some() {
        return Some((
            InboundVerdict::Bounce,
            "X-Failed-Recipients is present".into(),
        ));
    }
    if let Some(from) = from {
        let local = from.split('@').next().unwrap_or_default();
        if matches!(local, "mailer-daemon" | "postmaster") {
            return Some((InboundVerdict::Bounce, format!("sent by {local}")));
        }
    }
    if header("Return-Path").is_some_and(|r| r.trim() == "<>") {
        return Some((InboundVerdict::Bounce, "empty Return-Path".into()));
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
