//! What a delivery status notification (a bounce) says: which addresses failed, with what
//! status, and which of our emails it is about.

use serde::Serialize;

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

/// Reads the delivery status fields out of a bounce, from the whole raw text (the DSN and the
/// returned headers are parts of it).
pub(crate) fn report(
    raw: &[u8],
    failed_header: Option<String>,
    reply_domain: &str,
) -> BounceReport {
    let text = String::from_utf8_lossy(raw);
    let mut report = BounceReport::default();
    if let Some(failed) = failed_header {
        report.recipients.extend(
            failed
                .split(',')
                .map(|a| a.trim().to_ascii_lowercase())
                .filter(|a| a.contains('@')),
        );
    }
    let suffix = format!("@{}>", reply_domain.to_ascii_lowercase());
    for line in text.lines() {
        let lower = line.trim().to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("final-recipient:") {
            let address = rest
                .rsplit(';')
                .next()
                .unwrap_or_default()
                .trim()
                .trim_matches(['<', '>'])
                .to_string();
            if address.contains('@') && !report.recipients.contains(&address) {
                report.recipients.push(address);
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
        } else if lower.starts_with("message-id:") && lower.ends_with(&suffix) {
            report.original_message_id =
                Some(line.trim()["message-id:".len()..].trim().to_string());
        }
    }
    report.permanent = !report.status.as_deref().is_some_and(|s| s.starts_with('4'));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(action: &str, status: &str) -> BounceReport {
        let raw = format!(
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n\
             Final-Recipient: rfc822; bob@example.com\r\nAction: {action}\r\nStatus: {status}\r\n"
        );
        report(raw.as_bytes(), None, "reply.example.com")
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
