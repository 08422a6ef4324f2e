//! The pure inbound path: parse a raw email, classify it (human reply, new conversation,
//! automatic mail, bounce, bulk, our own mail coming back, rejected), extract the new text of a
//! reply from its quoted history and signature, and read what the mail itself says about its
//! thread. No database, no broker: any input, however malformed, yields a verdict.

use std::panic::AssertUnwindSafe;

use mail_parser::{Address, HeaderValue, MessageParser};
use serde::Serialize;

/// What kind of mail this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A person answering one of our emails: post it into the conversation.
    Reply,
    /// A person writing afresh: a customer's mail starts a conversation.
    NewConversation,
    /// An auto-reply or out-of-office: logged, never posted.
    AutoReply,
    /// A delivery status notification: logged, matched to what bounced.
    Bounce,
    /// List or bulk mail: logged, never posted.
    Bulk,
    /// Our own mail coming back: logged, never posted.
    Loop,
    /// Cannot be processed; the reason says why.
    Rejected,
}

/// What the mail says about its thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ThreadHints {
    /// The token of a `reply+<token>@<reply domain>` recipient, unverified.
    pub token: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
}

/// The outcome of the pure inbound path for one email.
#[derive(Debug, Clone, Serialize)]
pub struct InboundReport {
    pub verdict: Verdict,
    pub reason: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub reply_text: Option<String>,
    pub quoted_text: Option<String>,
    pub thread: ThreadHints,
    /// Why the relay's `Authentication-Results` says the sender is not who they claim (SPF,
    /// DKIM or DMARC fail); such mail is never posted as that person (SPEC I4).
    pub auth_failure: Option<String>,
    /// For a bounce: what failed, as far as the report says.
    pub bounce: Option<BounceReport>,
}

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
fn bounce_report(raw: &[u8], failed_header: Option<String>, reply_domain: &str) -> BounceReport {
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

/// What the inbound path needs to know about this deployment.
#[derive(Debug, Clone)]
pub struct InboundContext {
    /// Domain of reply addresses and of our Message-IDs.
    pub reply_domain: String,
    /// Our own sender address (From of notification mail).
    pub own_address: Option<String>,
}

/// A reply split into the new text and what was removed (quoted history, signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyParts {
    pub reply: String,
    pub quoted: String,
}

/// Runs the whole pure path on a raw message. Never panics: a panic inside the parser becomes
/// a `rejected` verdict.
pub fn inspect(raw: &[u8], context: &InboundContext) -> InboundReport {
    match std::panic::catch_unwind(AssertUnwindSafe(|| inspect_parsed(raw, context))) {
        Ok(report) => report,
        Err(_) => rejected("the message could not be parsed (parser panic)"),
    }
}

fn rejected(reason: &str) -> InboundReport {
    InboundReport {
        verdict: Verdict::Rejected,
        reason: Some(reason.to_string()),
        from: None,
        subject: None,
        message_id: None,
        reply_text: None,
        quoted_text: None,
        thread: ThreadHints::default(),
        auth_failure: None,
        bounce: None,
    }
}

fn header_text(message: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    message.header_raw(name).map(|v| v.trim().to_string())
}

fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address().map(|s| s.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default()
}

fn inspect_parsed(raw: &[u8], context: &InboundContext) -> InboundReport {
    let Some(message) = MessageParser::default().parse(raw) else {
        return rejected("the message could not be parsed");
    };
    let from = addresses(message.from()).into_iter().next();
    let subject = message.subject().map(str::to_string);
    let message_id = message.message_id().map(|id| format!("<{id}>"));
    let mut recipients = addresses(message.to());
    recipients.extend(addresses(message.cc()));
    for name in ["Delivered-To", "X-Original-To", "Envelope-To"] {
        if let Some(value) = header_text(&message, name) {
            recipients.push(value.trim_matches(['<', '>', ' ']).to_ascii_lowercase());
        }
    }
    let domain = context.reply_domain.to_ascii_lowercase();
    let token = recipients.iter().find_map(|r| {
        let (local, host) = r.rsplit_once('@')?;
        (host == domain).then(|| local.strip_prefix("reply+").map(str::to_string))?
    });
    let ids = |value: &HeaderValue<'_>| -> Vec<String> {
        match value {
            HeaderValue::Text(t) => vec![format!("<{t}>")],
            HeaderValue::TextList(list) => list.iter().map(|t| format!("<{t}>")).collect(),
            _ => Vec::new(),
        }
    };
    let in_reply_to = ids(message.in_reply_to()).into_iter().next();
    let references = ids(message.references());
    let thread = ThreadHints {
        token,
        in_reply_to,
        references,
    };
    let body = message
        .body_text(0)
        .map(|b| b.into_owned())
        .unwrap_or_default();
    let auth_failure = header_text(&message, "Authentication-Results").and_then(|results| {
        let lower = results.to_ascii_lowercase();
        ["dmarc=fail", "spf=fail", "dkim=fail"]
            .into_iter()
            .find(|f| lower.contains(f))
            .map(|f| format!("Authentication-Results: {f}"))
    });

    let mut report = InboundReport {
        verdict: Verdict::Rejected,
        reason: None,
        from: from.clone(),
        subject: subject.clone(),
        message_id: message_id.clone(),
        reply_text: None,
        quoted_text: None,
        thread,
        auth_failure,
        bounce: None,
    };
    if let Some((verdict, reason)) =
        automatic(&message, from.as_deref(), message_id.as_deref(), context)
    {
        if verdict == Verdict::Bounce {
            report.bounce = Some(bounce_report(
                raw,
                header_text(&message, "X-Failed-Recipients"),
                &context.reply_domain,
            ));
        }
        report.verdict = verdict;
        report.reason = Some(reason);
        return report;
    }
    if from.is_none() {
        report.reason = Some("no sender address".into());
        return report;
    }
    let parts = split_reply(&body);
    report.reply_text = Some(parts.reply);
    report.quoted_text = Some(parts.quoted);
    let hints = &report.thread;
    report.verdict =
        if hints.token.is_some() || hints.in_reply_to.is_some() || !hints.references.is_empty() {
            Verdict::Reply
        } else {
            Verdict::NewConversation
        };
    report
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
fn automatic(
    message: &mail_parser::Message<'_>,
    from: Option<&str>,
    message_id: Option<&str>,
    context: &InboundContext,
) -> Option<(Verdict, String)> {
    let header = |name: &str| header_text(message, name).map(|v| v.to_ascii_lowercase());
    // Our own notification coming back.
    let domain = format!("@{}>", context.reply_domain.to_ascii_lowercase());
    if message_id.is_some_and(|id| id.to_ascii_lowercase().ends_with(&domain)) {
        return Some((Verdict::Loop, "the Message-ID is one of ours".into()));
    }
    if let (Some(from), Some(own)) = (from, &context.own_address)
        && from.eq_ignore_ascii_case(own)
    {
        return Some((Verdict::Loop, "sent from our own address".into()));
    }
    // Bounces.
    let content_type = header("Content-Type").unwrap_or_default();
    if content_type.contains("multipart/report") && content_type.contains("delivery-status") {
        return Some((
            Verdict::Bounce,
            "delivery status notification (multipart/report)".into(),
        ));
    }
    if header("X-Failed-Recipients").is_some() {
        return Some((Verdict::Bounce, "X-Failed-Recipients is present".into()));
    }
    if let Some(from) = from {
        let local = from.split('@').next().unwrap_or_default();
        if matches!(local, "mailer-daemon" | "postmaster") {
            return Some((Verdict::Bounce, format!("sent by {local}")));
        }
    }
    if header("Return-Path").is_some_and(|r| r.trim() == "<>") {
        return Some((Verdict::Bounce, "empty Return-Path".into()));
    }
    // Auto-replies (RFC 3834 and common variants).
    if let Some(value) = header("Auto-Submitted")
        && value.split(';').next().unwrap_or_default().trim() != "no"
    {
        return Some((Verdict::AutoReply, format!("Auto-Submitted: {value}")));
    }
    for name in [
        "X-Autoreply",
        "X-Autorespond",
        "X-Autoresponder",
        "X-Auto-Reply",
    ] {
        if header(name).is_some() {
            return Some((Verdict::AutoReply, format!("{name} is present")));
        }
    }
    let precedence = header("Precedence").unwrap_or_default();
    if precedence == "auto_reply" {
        return Some((Verdict::AutoReply, "Precedence: auto_reply".into()));
    }
    if let Some(subject) = message.subject() {
        let subject = subject.to_lowercase();
        if let Some(hit) = AUTO_REPLY_SUBJECTS.iter().find(|s| subject.contains(*s)) {
            return Some((Verdict::AutoReply, format!("subject says {hit:?}")));
        }
    }
    // Bulk and list mail.
    if matches!(precedence.as_str(), "bulk" | "list" | "junk") {
        return Some((Verdict::Bulk, format!("Precedence: {precedence}")));
    }
    if header("List-Id").is_some() {
        return Some((Verdict::Bulk, "List-Id is present".into()));
    }
    None
}

/// How a line of a reply body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Empty,
    /// A signature or separator delimiter (`-- `, `___`, `***`…).
    Delimiter,
    /// A client's "Sent from my …" line.
    Signature,
    /// The start of quoted or forwarded history ("On … wrote:", an Outlook header block…).
    Header,
    /// A `>` quoted line.
    Quote,
    Text,
}

fn is_delimiter(line: &str) -> bool {
    let t = line.trim();
    if t == "--" || line.trim_end_matches(['\r']) == "-- " || t == "ᐧ" {
        return true;
    }
    t.len() >= 2
        && t.chars()
            .all(|c| matches!(c, '-' | '_' | '=' | '*' | '#' | '~' | '+'))
        && t.chars().collect::<std::collections::BTreeSet<_>>().len() == 1
}

fn is_signature(line: &str) -> bool {
    let l = line.trim().to_lowercase();
    const STARTS: &[&str] = &[
        "sent from ",
        "sent with ",
        "sent via ",
        "sent using ",
        "sent from my",
        "from my iphone",
        "from my android",
        "get outlook for",
        "envoyé de mon",
        "envoyé depuis",
        "envoyé à partir de",
        "von meinem",
        "gesendet von",
        "diese nachricht wurde von meinem",
        "enviado desde",
        "enviado de meu",
        "enviado do meu",
        "inviato da",
        "verzonden met",
        "verzonden vanaf",
        "verstuurd vanaf",
        "skickat från",
        "sendt fra",
        "wysłane z",
        "отправлено с",
    ];
    l.len() < 120 && STARTS.iter().any(|s| l.starts_with(s))
}

/// Words that introduce quoted history after a date and a name, by language.
fn is_wrote_line(line: &str) -> bool {
    let l = line.replace('\u{a0}', " ").trim().to_lowercase();
    if l.is_empty() || l.len() > 300 {
        return false;
    }
    let ends = [
        "wrote:",
        "wrote :",
        "a écrit :",
        "a écrit:",
        "schrieb:",
        "schrieb :",
        "escribió:",
        "ha scritto:",
        "schreef:",
        "skrev:",
        "pisze:",
        "napisał:",
        "escreveu:",
        "написал:",
        "написала:",
        "написал(а):",
        "написав:",
        "пише:",
        "写道：",
        "写道:",
        "kirjoitti:",
        "írta:",
        "yazdı:",
    ];
    if ends.iter().any(|e| l.ends_with(e)) {
        return true;
    }
    // "Am 12.03.2016 um 10:00 schrieb Jane Doe <jane@example.com>:" and similar.
    let trimmed = l.trim_end_matches(':').trim_end();
    (l.ends_with(':')
        && (l.contains(" schrieb ") || l.contains(" wrote ") || l.contains(" skrev ")))
        || (l.starts_with("on ") && trimmed.ends_with(" wrote"))
}

/// Outlook-style header labels: From, Sent/Date, To, Subject in several languages, optionally bold.
fn header_label(line: &str) -> Option<&'static str> {
    let l = line.trim().trim_start_matches('*').to_lowercase();
    const LABELS: &[(&str, &str)] = &[
        ("from:", "from"),
        ("de :", "from"),
        ("de:", "from"),
        ("von:", "from"),
        ("van:", "from"),
        ("från:", "from"),
        ("fra:", "from"),
        ("od:", "from"),
        ("от:", "from"),
        ("da:", "from"),
        ("sent:", "date"),
        ("date:", "date"),
        ("envoyé :", "date"),
        ("envoyé:", "date"),
        ("gesendet:", "date"),
        ("datum:", "date"),
        ("verzonden:", "date"),
        ("skickat:", "date"),
        ("sendt:", "date"),
        ("enviado:", "date"),
        ("fecha:", "date"),
        ("inviato:", "date"),
        ("wysłano:", "date"),
        ("отправлено:", "date"),
        ("to:", "to"),
        ("à :", "to"),
        ("an:", "to"),
        ("aan:", "to"),
        ("till:", "to"),
        ("til:", "to"),
        ("para:", "to"),
        ("a:", "to"),
        ("do:", "to"),
        ("кому:", "to"),
        ("subject:", "subject"),
        ("objet :", "subject"),
        ("betreff:", "subject"),
        ("onderwerp:", "subject"),
        ("ämne:", "subject"),
        ("emne:", "subject"),
        ("asunto:", "subject"),
        ("assunto:", "subject"),
        ("oggetto:", "subject"),
        ("temat:", "subject"),
        ("тема:", "subject"),
    ];
    let l = l.replace(":*", ":");
    LABELS
        .iter()
        .find(|(p, _)| l.starts_with(p))
        .map(|(_, k)| *k)
}

/// A line that starts with an ISO date and a time, as Gmail writes "2016-03-03 17:21 GMT+01:00
/// Some One <…>:" in several locales.
fn starts_with_iso_timestamp(line: &str) -> bool {
    let b = line.trim().as_bytes();
    b.len() >= 16
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10] == b' '
        && b[11].is_ascii_digit()
        && line.trim()[11..].contains(':')
}

/// "<date>, <name> <address> <verb>:" written over up to three lines without a known verb:
/// ends with a colon and names an address or a year.
fn is_attribution(joined: &str) -> bool {
    let t = joined.trim();
    if t.len() > 300 || !(t.ends_with(':') || t.ends_with('：')) {
        return false;
    }
    let has_year = t
        .as_bytes()
        .windows(4)
        .any(|w| w.iter().all(u8::is_ascii_digit) && (w[0] == b'1' || w[0] == b'2'));
    (t.contains('@') && (has_year || t.contains('<'))) || (has_year && t.contains('"'))
}

/// Does line `i` start quoted or forwarded history: a separator such as "-----Original
/// Message-----", an attribution ("On … wrote:", over up to three lines), or an Outlook-style
/// header block (From followed closely by two more header labels)?
fn is_history_header(lines: &[&str], i: usize) -> bool {
    let t = lines[i].trim();
    let lower = t.to_lowercase();
    let separator = lower.contains("original message")
        && lower
            .trim_matches(|c: char| c == '-' || c == ' ' || c == '_')
            .len()
            < 40
        || lower.starts_with("---------- forwarded message")
        || lower.starts_with("-------- forwarded message")
        || lower.starts_with("begin forwarded message")
        || lower.contains("-----ursprüngliche nachricht-----")
        || lower.contains("-----message d'origine-----")
        || lower.contains("-----oorspronkelijk bericht-----")
        || lower.contains("-----mensaje original-----");
    let attribution = is_wrote_line(t)
        || starts_with_iso_timestamp(t)
        || is_attribution(t)
        || (1..=2).any(|extra| {
            i + extra < lines.len()
                && lines[i + 1..=i + extra]
                    .iter()
                    .all(|l| !l.trim().is_empty())
                && is_attribution(
                    &std::iter::once(t)
                        .chain(lines[i + 1..=i + extra].iter().map(|l| l.trim()))
                        .collect::<Vec<_>>()
                        .join(" "),
                )
        })
        || (i + 1 < lines.len()
            && lower.starts_with("on ")
            && !lower.ends_with('.')
            && is_wrote_line(&format!("{t} {}", lines[i + 1].trim())));
    let outlook_block = header_label(t) == Some("from")
        && lines[i + 1..]
            .iter()
            .take(6)
            .filter_map(|l| header_label(l))
            .filter(|k| *k != "from")
            .count()
            >= 2;
    separator || attribution || outlook_block
}

fn classify(lines: &[&str]) -> Vec<Line> {
    let mut kinds = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        let kind = if t.is_empty() {
            Line::Empty
        } else if t.starts_with('>') {
            Line::Quote
        } else if is_history_header(lines, i) {
            Line::Header
        } else if is_delimiter(line) {
            Line::Delimiter
        } else if is_signature(t) {
            Line::Signature
        } else {
            Line::Text
        };
        kinds.push(kind);
    }
    kinds
}

/// Splits a plain-text body into the new text of the reply and what was removed: quoted or
/// forwarded history, the signature, and trailing quotes. Leading and inline quotes the
/// writer answered between are kept.
pub fn split_reply(body: &str) -> ReplyParts {
    let normalized = body.replace("\r\n", "\n").replace('\r', "\n");
    let all: Vec<&str> = normalized.lines().collect();
    let all_kinds = classify(&all);
    // A message that starts with a history header (a forward, or an answer written below the
    // attribution line): skip the header block up to its first blank line.
    // An answer written inline, between the quotes, keeps the attribution and the quotes.
    let mut skip = all_kinds
        .iter()
        .position(|k| *k != Line::Empty)
        .unwrap_or(0);
    if all_kinds.get(skip) == Some(&Line::Header) {
        let header = skip;
        while skip < all.len() && all_kinds[skip] != Line::Empty {
            skip += 1;
        }
        let rest = &all_kinds[skip..];
        let inline = rest
            .iter()
            .position(|k| *k == Line::Text)
            .is_some_and(|first_text| {
                rest[first_text..]
                    .iter()
                    .take_while(|k| **k != Line::Header)
                    .any(|k| *k == Line::Quote)
            });
        if inline {
            skip = header;
        } else {
            while skip < all.len() && matches!(all_kinds[skip], Line::Empty | Line::Quote) {
                skip += 1;
            }
        }
    }
    let lines = &all[skip..];
    let kinds = &all_kinds[skip..];
    // Everything from the first history header, delimiter or client signature on is removed.
    let first_text = kinds
        .iter()
        .position(|k| matches!(k, Line::Text | Line::Quote));
    let mut cut = kinds
        .iter()
        .enumerate()
        .position(|(i, k)| {
            matches!(k, Line::Header | Line::Delimiter | Line::Signature)
                && first_text.is_some_and(|t| t < i)
        })
        .unwrap_or(lines.len());
    // Trailing quotes and blank lines belong to the history too, unless quotes are all there is.
    // (A quoted attribution line means the quotes are history, not the writer's own.)
    let only_quotes = kinds[..cut]
        .iter()
        .all(|k| matches!(k, Line::Empty | Line::Quote))
        && !lines[..cut]
            .iter()
            .any(|l| is_wrote_line(l.trim_start_matches(['>', ' '])));
    while cut > 0
        && (matches!(kinds[cut - 1], Line::Empty)
            || (!only_quotes && kinds[cut - 1] == Line::Quote))
    {
        cut -= 1;
    }
    // A leftover separator right before the cut.
    while cut > 0 && matches!(kinds[cut - 1], Line::Delimiter | Line::Empty) {
        cut -= 1;
    }
    let start = kinds
        .iter()
        .position(|k| *k != Line::Empty)
        .unwrap_or(0)
        .min(cut);
    let mut quoted: Vec<&str> = all[..skip].to_vec();
    quoted.extend(&lines[cut..]);
    ReplyParts {
        reply: lines[start..cut].join("\n").trim_end().to_string(),
        quoted: quoted.join("\n").trim().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> InboundContext {
        InboundContext {
            reply_domain: "reply.example.com".into(),
            own_address: Some("n@example.com".into()),
        }
    }

    #[test]
    fn gmail_style_reply_is_split() {
        let body = "Thanks, that fixed it!\n\nOn Mon, Jan 1, 2024 at 10:00 AM Ann <ann@example.com> wrote:\n> Try turning it off.\n";
        let parts = split_reply(body);
        assert_eq!(parts.reply, "Thanks, that fixed it!");
        assert!(parts.quoted.starts_with("On Mon"));
    }

    #[test]
    fn wrapped_wrote_line_signatures_and_outlook_blocks() {
        let parts = split_reply(
            "Yes.\n\nOn Mon, Jan 1, 2024 at 10:00 AM Ann Example\n<ann@example.com> wrote:\n> x\n",
        );
        assert_eq!(parts.reply, "Yes.");
        let parts = split_reply("Sure thing\n\nSent from my iPhone\n");
        assert_eq!(parts.reply, "Sure thing");
        let outlook = "Done.\n\n________________________________\nFrom: Bob\nSent: Monday\nTo: Ann\nSubject: Re: x\n\nold text\n";
        assert_eq!(split_reply(outlook).reply, "Done.");
        let sig = "See you\n-- \nJohn\nACME Inc.\n";
        assert_eq!(split_reply(sig).reply, "See you");
    }

    #[test]
    fn leading_and_inline_quotes_are_kept() {
        let body = "> This is a quote.\n\nAnd this is some text.\n";
        assert_eq!(
            split_reply(body).reply,
            "> This is a quote.\n\nAnd this is some text."
        );
    }

    #[test]
    fn every_input_yields_a_verdict() {
        for raw in [
            &b""[..],
            b"\xff\xfe\x00",
            b"Subject: x\r\n\r\nbody",
            b"From: <>\r\n\r\n",
        ] {
            let report = inspect(raw, &context());
            assert!(
                report.verdict == Verdict::Rejected || report.from.is_some(),
                "{report:?}"
            );
        }
    }

    #[test]
    fn classifies_automatic_mail_and_threads() {
        let auto = b"From: a@b.com\r\nAuto-Submitted: auto-replied\r\nSubject: hi\r\n\r\naway";
        assert_eq!(inspect(auto, &context()).verdict, Verdict::AutoReply);
        let ooo = b"From: a@b.com\r\nSubject: Out of Office: hi\r\n\r\naway";
        assert_eq!(inspect(ooo, &context()).verdict, Verdict::AutoReply);
        let list = b"From: a@b.com\r\nList-Id: <x.lists>\r\nSubject: hi\r\n\r\nnews";
        assert_eq!(inspect(list, &context()).verdict, Verdict::Bulk);
        let bounce = b"From: MAILER-DAEMON@b.com\r\nSubject: failure\r\n\r\nFinal-Recipient: rfc822; Gone@x.com\r\nStatus: 5.1.1\r\n\r\nMessage-ID: <tidings.m1.p2.x@reply.example.com>\r\n";
        let report = inspect(bounce, &context());
        assert_eq!(report.verdict, Verdict::Bounce);
        let b = report.bounce.unwrap();
        assert_eq!(b.recipients, vec!["gone@x.com".to_string()]);
        assert_eq!(b.status.as_deref(), Some("5.1.1"));
        assert!(b.permanent);
        assert_eq!(
            b.original_message_id.as_deref(),
            Some("<tidings.m1.p2.x@reply.example.com>")
        );
        let ours = b"From: a@b.com\r\nMessage-ID: <t.1@reply.example.com>\r\n\r\nx";
        assert_eq!(inspect(ours, &context()).verdict, Verdict::Loop);
        let reply = b"From: Cleo <cleo@c.com>\r\nTo: reply+1-2-3-abc@reply.example.com\r\nSubject: Re: x\r\n\r\nok\r\n\r\nOn Mon, Ann wrote:\r\n> q\r\n";
        let report = inspect(reply, &context());
        assert_eq!(report.verdict, Verdict::Reply);
        assert_eq!(report.thread.token.as_deref(), Some("1-2-3-abc"));
        assert_eq!(report.reply_text.as_deref(), Some("ok"));
        let fresh =
            b"From: Cleo <cleo@c.com>\r\nTo: help@example.com\r\nSubject: help\r\n\r\nmy printer";
        assert_eq!(inspect(fresh, &context()).verdict, Verdict::NewConversation);
    }
}
