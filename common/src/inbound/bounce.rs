//! What a delivery report (a bounce) or a complaint report says: which addresses failed or
//! complained, with what status, and which of our emails it is about. RFC 3464 delivery status
//! and RFC 5965 feedback fields are read here; notices in other forms in [`super::notice`].

use serde::Serialize;

use super::notice;

/// What a delivery status notification says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BounceReport {
    /// Addresses that failed (`Final-Recipient`, `X-Failed-Recipients`).
    pub recipients: Vec<String>,
    /// The DSN status code, e.g. `5.1.1`.
    pub status: Option<String>,
    /// True for a permanent failure (5.x.x, or no status at all).
    pub permanent: bool,
    /// The Message-ID of our email that bounced, when the report carries it.
    pub original_message_id: Option<String>,
    /// Every `Action:` of the report, lower case (`failed`, `delayed`, `delivered`, `relayed`,
    /// `expanded`; RFC 3464).
    pub actions: Vec<String>,
    /// For a complaint: its feedback type (`abuse`, `fraud`…; RFC 5965).
    pub feedback_type: Option<String>,
    /// Our signed bounce addresses (local parts) the report quotes, from the returned copy's
    /// `Return-Path` or elsewhere: each names one email we sent.
    pub signed: Vec<String>,
    /// The signed unsubscribe tokens of our emails the report quotes (`List-Unsubscribe`).
    pub unsubscribe: Vec<String>,
    /// A notice without a status code whose text says the failure is temporary.
    #[serde(skip)]
    pub soft_by_text: bool,
}

impl BounceReport {
    /// What the report says when it reports no failure: `delivered`, `relayed`, `expanded` or
    /// `delayed` for every recipient (or a 2.x.x status and no action). Such a report changes
    /// no delivery state and suppresses nobody.
    pub fn not_a_failure(&self) -> Option<&str> {
        const FINE: [&str; 4] = ["delivered", "relayed", "expanded", "delayed"];
        if self.actions.iter().any(|a| a == "failed") {
            return None;
        }
        if let Some(first) = self.actions.first()
            && self.actions.iter().all(|a| FINE.contains(&a.as_str()))
        {
            return Some(first.as_str());
        }
        (self.actions.is_empty() && self.status.as_deref().is_some_and(|s| s.starts_with('2')))
            .then_some("delivered")
    }
}

/// What a notice that is not a human's says, read from its raw text (the report and the
/// returned headers are parts of it) and, where it has no RFC 3464 fields, from its JSON or
/// its words. `message` is the parsed mail; `text` its own text, lower case.
pub(crate) fn report(
    message: Option<&mail_parser::Message<'_>>,
    raw: &[u8],
    text: &str,
    reply_domain: &str,
) -> BounceReport {
    let mut report = BounceReport::default();
    if let Some(failed) = message.and_then(|m| super::header_text(m, "X-Failed-Recipients")) {
        report.recipients.extend(
            failed
                .split(',')
                .map(|a| a.trim().trim_matches(['<', '>']).to_ascii_lowercase())
                .filter(|a| a.contains('@')),
        );
    }
    fields(&String::from_utf8_lossy(raw), reply_domain, &mut report);
    let read_json = report.recipients.is_empty() || report.actions.is_empty();
    if !(read_json && notice::read_json(text, reply_domain, &mut report)) {
        let from = message.and_then(|m| super::addresses(m.from()).into_iter().next());
        let subject = message
            .and_then(|m| m.subject())
            .map(str::to_lowercase)
            .unwrap_or_default();
        let exclude: Vec<&str> = from.iter().map(String::as_str).collect();
        notice::read_text(text, &subject, &exclude, reply_domain, &mut report);
    }
    report.permanent = match report.status.as_deref() {
        Some(status) => !status.starts_with('4'),
        None => !report.soft_by_text,
    };
    report
}

/// Lines of a report's fields, and our own addresses and links it quotes.
fn fields(text: &str, reply_domain: &str, report: &mut BounceReport) {
    let domain = reply_domain.to_ascii_lowercase();
    let suffix = format!("@{domain}>");
    let mut original_rcpt = Vec::new();
    for line in text.lines() {
        let lower = line.trim().to_ascii_lowercase();
        if lower.contains(crate::mail::BOUNCE_MAILBOX) || lower.contains("/unsubscribe/") {
            ours(&lower, &domain, report);
        }
        if let Some(rest) = lower.strip_prefix("final-recipient:") {
            let address = after_type(rest);
            if address.contains('@') && !report.recipients.contains(&address) {
                report.recipients.push(address);
            }
        } else if let Some(rest) = lower
            .strip_prefix("original-rcpt-to:")
            .or_else(|| lower.strip_prefix("removal-recipient:"))
        {
            let address = after_type(rest);
            if address.contains('@') && !original_rcpt.contains(&address) {
                original_rcpt.push(address);
            }
        } else if let Some(rest) = lower.strip_prefix("status:") {
            let code = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if report.status.is_none() && code.len() >= 5 && code.as_bytes()[1] == b'.' {
                report.status = Some(code);
            }
        } else if let Some(rest) = lower.strip_prefix("action:") {
            let action = rest.split_whitespace().next().unwrap_or_default();
            if !action.is_empty() && report.actions.len() < 100 {
                report.actions.push(action.to_string());
            }
        } else if let Some(rest) = lower.strip_prefix("feedback-type:") {
            let kind = rest.trim();
            if report.feedback_type.is_none() && !kind.is_empty() && kind.len() < 64 {
                report.feedback_type = Some(kind.to_string());
            }
        } else if lower.starts_with("message-id:") && lower.ends_with(&suffix) {
            report.original_message_id =
                Some(line.trim()["message-id:".len()..].trim().to_string());
        }
    }
    if report.recipients.is_empty() {
        report.recipients = original_rcpt;
    }
}

/// The address of a `Final-Recipient: rfc822; <a@b>` value.
fn after_type(value: &str) -> String {
    value
        .rsplit(';')
        .next()
        .unwrap_or_default()
        .trim()
        .trim_matches(['<', '>'])
        .to_string()
}

/// Our signed bounce addresses and unsubscribe tokens in one lower-cased line.
fn ours(lower: &str, domain: &str, report: &mut BounceReport) {
    let token_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '+');
    let mut rest = lower;
    while let Some(at) = rest.find(crate::mail::BOUNCE_MAILBOX) {
        let tail = &rest[at..];
        let local: String = tail
            .chars()
            .take_while(|c| token_char(*c) && *c != '.')
            .collect();
        let after = &tail[local.len()..];
        if let Some(host) = after.strip_prefix('@')
            && host.starts_with(domain)
            && host[domain.len()..]
                .chars()
                .next()
                .is_none_or(|c| !token_char(c))
            && !report.signed.contains(&local)
            && report.signed.len() < 10
        {
            report.signed.push(local.clone());
        }
        rest = &tail[local.len().max(1)..];
    }
    let mut rest = lower;
    while let Some(at) = rest.find("/unsubscribe/") {
        let tail = &rest[at + "/unsubscribe/".len()..];
        let token: String = tail.chars().take_while(|c| token_char(*c)).collect();
        if !token.is_empty()
            && !report.unsubscribe.contains(&token)
            && report.unsubscribe.len() < 10
        {
            report.unsubscribe.push(token);
        }
        rest = tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(action: &str, status: &str) -> BounceReport {
        let raw = format!(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n\
             Final-Recipient: rfc822; bob@example.com\r\nAction: {action}\r\nStatus: {status}\r\n"
        );
        report(None, raw.as_bytes(), "", "reply.example.com")
    }

    #[test]
    fn reports_of_no_failure_are_told_apart() {
        assert_eq!(dsn("failed", "5.1.1").not_a_failure(), None);
        assert_eq!(dsn("delivered", "2.0.0").not_a_failure(), Some("delivered"));
        assert_eq!(dsn("relayed", "2.0.0").not_a_failure(), Some("relayed"));
        assert_eq!(dsn("expanded", "2.0.0").not_a_failure(), Some("expanded"));
        assert_eq!(dsn("delayed", "4.4.7").not_a_failure(), Some("delayed"));
        let mut mixed = dsn("delivered", "2.0.0");
        mixed.actions.push("failed".into());
        assert_eq!(mixed.not_a_failure(), None);
        // No action at all: a 2.x.x status is a success, anything else a failure.
        let mut bare = dsn("delivered", "2.0.0");
        bare.actions.clear();
        assert_eq!(bare.not_a_failure(), Some("delivered"));
        bare.status = Some("5.0.0".into());
        assert_eq!(bare.not_a_failure(), None);
    }
}
