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
        } else if lower.starts_with("message-id:") && lower.ends_with(&suffix) {
            report.original_message_id =
                Some(line.trim()["message-id:".len()..].trim().to_string());
        }
    }
    report.permanent = !report.status.as_deref().is_some_and(|s| s.starts_with('4'));
    report
}
