//! Machine notices that are not RFC 3464 reports: the plain-text and HTML failure notices of
//! the widely deployed mail servers (Postfix, Exim, qmail, Sendmail, Exchange, Gmail, Domino and
//! others), in several languages, the JSON notifications of sending providers (Amazon SES via
//! SNS, SendGrid, Mailgun, Postmark, SparkPost, Mandrill), mailing-list managers' rejections,
//! and complaint notices. What is read here: whether a mail is such a notice, and what it says
//! (who failed, with which status, how hard).

use serde_json::Value;

use super::bounce::BounceReport;

/// What a notice reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A delivery failed (or is delayed, or succeeded: the report's actions say which).
    Delivery,
    /// A recipient marked our email as spam.
    Complaint,
}

/// Local parts of the addresses mail servers send their notices from.
const DAEMONS: &[&str] = &[
    "mailer-daemon",
    "mailer_daemon",
    "mailerdaemon",
    "mail-daemon",
    "maildaemon",
    "postmaster",
    "post_master",
    "post-master",
    "mdaemon",
    "mail.daemon",
];

/// Display names mail servers send their notices under (lower case).
const DAEMON_NAMES: &[&str] = &[
    "mail delivery system",
    "mail delivery subsystem",
    "mail delivery service",
    "mail administrator",
    "mailer-daemon",
    "mailer daemon",
    "postmaster",
    "mail system",
    "mail delivery",
    "internet mail delivery",
    "e-mail delivery system",
    "system administrator",
];

/// Whether a sender (address and display name) is a mail server's daemon.
pub(crate) fn daemon_sender(address: Option<&str>, name: Option<&str>) -> Option<String> {
    if let Some((local, _)) = address.and_then(|a| a.rsplit_once('@')) {
        let local = local.to_ascii_lowercase();
        if DAEMONS.contains(&local.as_str())
            // Exchange's own mailbox: MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@…
            || local.starts_with("microsoftexchange")
        {
            return Some(format!("sent by {local}"));
        }
    }
    let name = name?.trim().to_lowercase();
    DAEMON_NAMES
        .iter()
        .find(|n| name == **n)
        .map(|n| format!("sent by {n:?}"))
}

/// Subjects of failure notices (lower case, contained), by language.
const FAILURE_SUBJECTS: &[&str] = &[
    "undeliverable",
    "undelivered mail",
    "undeliverable mail",
    "delivery status notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "delivery notification",
    "delivery report",
    "failure notice",
    "mail delivery failed",
    "mail delivery failure",
    "returned mail",
    "returned to sender",
    "message not delivered",
    "message delivery failure",
    "non-delivery",
    "nondeliverable",
    "non deliverable",
    "could not be delivered",
    "couldn't be delivered",
    "not delivered",
    "mail system error",
    "delivery problem",
    "delayed mail",
    "delivery delayed",
    "message delayed",
    "warning: message",
    "unzustellbar",
    "nicht zustellbar",
    "zustellung fehlgeschlagen",
    "nicht zugestellt",
    "non remis",
    "non distribuable",
    "échec de la remise",
    "echec de la remise",
    "impossible de remettre",
    "no se puede entregar",
    "no entregado",
    "error de entrega",
    "entrega fallida",
    "non recapitabile",
    "mancato recapito",
    "consegna non riuscita",
    "onbestelbaar",
    "niet bezorgd",
    "niet afgeleverd",
    "não entregue",
    "nao entregue",
    "falha na entrega",
    "não foi possível entregar",
    "olevererbart",
    "kunde inte levereras",
    "ej levererat",
    "kunne ikke leveres",
    "ikke leveret",
    "ikke levert",
    "niedostarczalna",
    "niedostarczona",
    "nie dostarczono",
    "nie można dostarczyć",
    "не доставлено",
    "недоставленное",
    "недоставлено",
    "не удалось доставить",
    "配信不能",
    "配送不能",
    "配信エラー",
    "未配信",
    "退信",
    "投递失败",
    "无法投递",
    "系統退信",
    "無法傳遞",
];

/// Phrases of failure notices' bodies (lower case, contained), by language.
const FAILURE_PHRASES: &[&str] = &[
    "could not be delivered",
    "couldn't be delivered",
    "could not deliver",
    "wasn't delivered",
    "was not delivered",
    "has not been delivered",
    "not yet been delivered",
    "delivery has failed",
    "delivery failed",
    "delivery to the following recipient",
    "failed permanently",
    "permanent error",
    "permanent fatal error",
    "fatal errors",
    "the following address",
    "unable to deliver",
    "undeliverable",
    "user unknown",
    "unknown user",
    "no such user",
    "mailbox unavailable",
    "mailbox not found",
    "mailbox is full",
    "over quota",
    "recipient address rejected",
    "address rejected",
    "address not found",
    "does not exist",
    "this is the mail system at host",
    "this is the qmail-send program",
    "mail delivery software",
    "message could not be delivered",
    "delivery status notification",
    "will retry",
    "still being retried",
    "has been delayed",
    "delivery is delayed",
    "rejected your message",
    "message was rejected",
    "konnte nicht zugestellt werden",
    "nicht zugestellt",
    "unzustellbar",
    "zustellung fehlgeschlagen",
    "empfänger unbekannt",
    "n'a pas pu être remis",
    "n'a pas pu etre remis",
    "non remis",
    "impossible de remettre",
    "échec de la remise",
    "adresse introuvable",
    "no se pudo entregar",
    "no pudo ser entregado",
    "no se ha podido entregar",
    "error en la entrega",
    "no se puede entregar",
    "non è stato possibile recapitare",
    "non e' stato possibile recapitare",
    "non recapitabile",
    "mancato recapito",
    "consegna non riuscita",
    "kon niet worden bezorgd",
    "kon niet worden afgeleverd",
    "onbestelbaar",
    "niet afgeleverd",
    "não pôde ser entregue",
    "não foi possível entregar",
    "nao foi possivel entregar",
    "falha na entrega",
    "kunde inte levereras",
    "olevererbart",
    "leveransfel",
    "kunne ikke leveres",
    "kunne ikke afleveres",
    "levering mislykkedes",
    "ikke levert",
    "nie mogła zostać dostarczona",
    "nie może zostać dostarczona",
    "nie można dostarczyć",
    "nie dostarczono",
    "не может быть доставлено",
    "не удалось доставить",
    "не доставлено",
    "не было доставлено",
    "配信できませんでした",
    "配送できませんでした",
    "届けられませんでした",
    "配信不能",
    "无法投递",
    "无法送达",
    "未能送达",
    "投递失败",
    "退信",
    "無法傳遞",
    "無法送達",
];

/// Phrases of delay notices (lower case, contained): the mail is still being tried.
const DELAY_PHRASES: &[&str] = &[
    "delivery delayed",
    "delayed mail",
    "message delayed",
    "delivery is delayed",
    "has been delayed",
    "not yet been delivered",
    "has not yet been delivered",
    "will retry",
    "will be retried",
    "still being retried",
    "will continue trying",
    "will keep trying",
    "delivery attempts will continue",
    "warning message only",
    "do not need to resend",
    "temporary problem delivering",
    "delivery incomplete",
    "(delay)",
    "verzögert",
    "zustellung verzögert",
    "retardé",
    "retardée",
    "retrasad",
    "ritardat",
    "vertraagd",
    "atrasad",
    "försenad",
    "forsinket",
    "opóźnion",
    "задерж",
    "遅延",
    "延迟",
];

/// Phrases that make a failure final whatever else the notice says.
const FINAL_PHRASES: &[&str] = &[
    "failed permanently",
    "permanent error",
    "permanent fatal",
    "permanently",
    "gave up",
    "given up",
    "giving up",
];

/// Phrases of temporary failures when a notice carries no status code.
const SOFT_PHRASES: &[&str] = &[
    "mailbox is full",
    "mailbox full",
    "over quota",
    "quota exceeded",
    "exceeded storage",
    "temporarily",
    "temporary failure",
    "try again later",
    "postfach ist voll",
    "boîte aux lettres pleine",
    "buzón lleno",
    "casella piena",
];

/// Lines that start the copy of the returned message in a notice (lower case, contained):
/// addresses below them are the original's, not the failed recipient's.
const RETURNED_MARKERS: &[&str] = &[
    "copy of the message",
    "copy of the original message",
    "copy of your message",
    "original message follows",
    "original message headers",
    "original message details",
    "returned message",
    "message headers follow",
    "header of the original message",
    "headers of the original message",
    "undelivered message attached",
    "the message you sent",
    "----- original message",
    "------ original message",
    "-----original message",
    "kopie der nachricht",
    "ursprüngliche nachricht",
    "original-nachricht",
    "message d'origine",
    "message original",
    "mensaje original",
    "messaggio originale",
    "oorspronkelijk bericht",
    "oorspronkelijke bericht",
    "mensagem original",
    "ursprungligt meddelande",
    "oprindelig meddelelse",
    "opprinnelig melding",
    "oryginalna wiadomość",
    "исходное сообщение",
    "元のメッセージ",
    "原始邮件",
    "原始郵件",
];

/// Header-like lines of a notice whose addresses are never the failed recipient.
const SENDER_LINES: &[&str] = &[
    "from:",
    "sender",
    "reply-to",
    "return-path",
    "reporting-mta",
    "received-from-mta",
    "remote-mta",
    "x-postfix-sender",
    "original-mail-from",
    "envelope-from",
    "mail from",
];

/// Subjects and phrases of complaint notices (lower case, contained).
const COMPLAINT_WORDS: &[&str] = &[
    "complaint",
    "abuse report",
    "spam report",
    "feedback report",
    "marked as spam",
    "reported as spam",
    "spam complaint",
];

/// Local parts of list managers, and the endings of list owners' addresses.
const LIST_MANAGERS: &[&str] = &[
    "majordomo",
    "listserv",
    "mailman",
    "sympa",
    "ecartis",
    "lyris",
    "listproc",
    "ezmlm",
];
const LIST_OWNER_ENDINGS: &[&str] = &["-owner", "-bounces", "-request", "-admin"];

/// What list managers say when they refuse a post, and when they hold one.
const LIST_REJECTIONS: &[&str] = &[
    "rejected",
    "not delivered",
    "non-member",
    "not a member",
    "not allowed to post",
    "not authorized to post",
    "returned post",
    "posting denied",
    "denied",
    "could not be posted",
];
const LIST_HOLDS: &[&str] = &[
    "awaits moderator",
    "held for moderation",
    "moderator approval",
    "pending approval",
    "requires approval",
    "needs approval",
];

/// A subject that forwards or answers something: a person forwarding a notice, not the notice.
fn forwarded(subject: &str) -> bool {
    const PREFIXES: &[&str] = &["fwd:", "fw:", "wg:", "tr:", "rv:", "i:", "doorst:", "vs:"];
    PREFIXES.iter().any(|p| subject.starts_with(p))
}

fn contains_any<'a>(text: &str, phrases: &[&'a str]) -> Option<&'a str> {
    phrases.iter().copied().find(|p| text.contains(p))
}

/// What the classifier knows of a mail, lower-cased, for the notice checks.
pub(crate) struct Signs<'a> {
    pub from: Option<&'a str>,
    pub subject: &'a str,
    /// The mail's own text (its text parts, or its HTML as text), lower case.
    pub body: &'a str,
    /// Whether the mail carries a returned message or its headers (`message/rfc822`,
    /// `text/rfc822-headers`).
    pub carries_message: bool,
}

/// Whether a (lower-cased) subject is a failure notice's, and not a person forwarding one.
pub(crate) fn failure_subject(subject: &str) -> bool {
    !forwarded(subject) && contains_any(subject, FAILURE_SUBJECTS).is_some()
}

/// Whether the mail is a plain-text or HTML failure notice, and why.
pub(crate) fn failure_notice(signs: &Signs<'_>) -> Option<String> {
    if forwarded(signs.subject) {
        return None;
    }
    let subject = contains_any(signs.subject, FAILURE_SUBJECTS)?;
    // A subject alone could be a person's ("Undeliverable parcel"): the notice must also read
    // like one, and carry the evidence one carries (the returned message, a status code or a
    // failed address in a mail server's form).
    let phrase = contains_any(signs.body, FAILURE_PHRASES)?;
    let evidence = signs.carries_message
        || status_in(signs.body).is_some()
        || signs.body.contains("received:")
        || signs.body.contains("reporting-mta")
        || signs.body.contains(">:");
    evidence.then(|| format!("a failure notice (subject says {subject:?}, text says {phrase:?})"))
}

/// Whether the mail is a list manager's notice about a post (rejected or held), and why; the
/// second value is true for a rejection (a delivery failure), false for a hold.
pub(crate) fn list_notice(signs: &Signs<'_>) -> Option<(String, bool)> {
    if !list_manager(signs.from) {
        return None;
    }
    let local = signs.from?.rsplit_once('@')?.0.to_ascii_lowercase();
    let text = format!("{} {}", signs.subject, signs.body);
    if let Some(hold) = contains_any(&text, LIST_HOLDS) {
        return Some((
            format!("a list manager ({local}) holding a post: {hold:?}"),
            false,
        ));
    }
    contains_any(&text, LIST_REJECTIONS).map(|why| {
        (
            format!("a list manager ({local}) refusing a post: {why:?}"),
            true,
        )
    })
}

/// Whether a sender is a list manager (`majordomo@`, `owner-x@`, `x-bounces@`…).
pub(crate) fn list_manager(from: Option<&str>) -> bool {
    let Some((local, _)) = from.and_then(|f| f.rsplit_once('@')) else {
        return false;
    };
    let local = local.to_ascii_lowercase();
    LIST_MANAGERS.iter().any(|m| local.starts_with(m))
        || local.starts_with("owner-")
        || LIST_OWNER_ENDINGS.iter().any(|e| local.ends_with(e))
}

/// Whether the mail is a complaint notice that is not an ARF report or JSON: a complaint
/// subject on a mail that carries the message complained about.
pub(crate) fn complaint_notice(signs: &Signs<'_>) -> Option<String> {
    if forwarded(signs.subject) || !signs.carries_message {
        return None;
    }
    contains_any(signs.subject, COMPLAINT_WORDS)
        .map(|w| format!("a complaint notice (subject says {w:?})"))
}

/// The first enhanced status code (`5.1.1`) in `text`, or a basic SMTP reply code as one
/// (`550` → `5.0.0`).
pub(crate) fn status_in(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let boundary = |i: usize| i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    for i in 0..b.len() {
        if matches!(b[i], b'2' | b'4' | b'5')
            && boundary(i)
            && b.get(i + 1) == Some(&b'.')
            && (1..=3).contains(&digits(i + 2))
        {
            let j = i + 2 + digits(i + 2);
            if b.get(j) == Some(&b'.') && (1..=3).contains(&digits(j + 1)) {
                let end = j + 1 + digits(j + 1);
                if b.get(end)
                    .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'.')
                {
                    return Some(text[i..end].to_string());
                }
            }
        }
    }
    // A basic reply code of a refused delivery: "said: 550 …", "(552)".
    const CODES: &[&[u8]] = &[
        b"421", b"450", b"451", b"452", b"454", b"521", b"541", b"550", b"551", b"552", b"553",
        b"554", b"556",
    ];
    for i in 0..b.len().saturating_sub(3) {
        if boundary(i)
            && CODES.contains(&&b[i..i + 3])
            && matches!(b.get(i + 3), Some(b' ' | b')' | b'\n' | b'\r'))
            && (i == 0 || matches!(b[i - 1], b' ' | b'(' | b'\n' | b':' | b'\t' | b'#'))
        {
            return Some(format!("{}.0.0", b[i] as char));
        }
    }
    None
}

/// Fills what a plain-text or HTML notice says into `report`: the failed recipients (from the
/// diagnostic part, never from the returned copy), the status, and whether it is a delay.
/// `text` is the notice's own text, lower case; `exclude` the addresses that are never the
/// failed recipient (the sender, our own domain).
pub(crate) fn read_text(
    text: &str,
    subject: &str,
    exclude: &[&str],
    reply_domain: &str,
    report: &mut BounceReport,
) {
    let (diagnostic, returned) = split_returned(text);
    if report.recipients.is_empty() {
        report.recipients = addresses_in(diagnostic, exclude, reply_domain);
    }
    if report.recipients.is_empty() {
        // The returned copy's To, when the diagnostic names nobody.
        report.recipients = returned
            .lines()
            .filter(|l| l.trim_start().starts_with("to:"))
            .flat_map(|l| addresses_in(l, exclude, reply_domain))
            .take(10)
            .collect();
    }
    if report.status.is_none() {
        report.status = status_in(diagnostic);
    }
    if report.actions.is_empty() {
        let heading = format!("{subject}\n{diagnostic}");
        if contains_any(&heading, DELAY_PHRASES).is_some()
            && contains_any(&heading, FINAL_PHRASES).is_none()
            && !report.status.as_deref().is_some_and(|s| s.starts_with('5'))
        {
            report.actions.push("delayed".into());
        }
    }
    if report.status.is_none() && contains_any(diagnostic, SOFT_PHRASES).is_some() {
        report.soft_by_text = true;
    }
}

/// The notice's own text and the returned copy below it.
fn split_returned(text: &str) -> (&str, &str) {
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if contains_any(t, RETURNED_MARKERS).is_some()
            || t.starts_with("received:")
            || t.starts_with("return-path:")
            || t.starts_with("dkim-signature:")
        {
            return text.split_at(at);
        }
        at += line.len();
    }
    (text, "")
}

/// The plausible addresses of `text` in order, without duplicates, skipping lines that name a
/// sender, the `exclude` addresses, our own domain and mail daemons. At most 100.
fn addresses_in(text: &str, exclude: &[&str], reply_domain: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim_start_matches(['>', ' ', '\t', '*', '-']);
        if SENDER_LINES.iter().any(|s| t.starts_with(s)) || t.starts_with("sender address") {
            continue;
        }
        if !t.contains('@') {
            continue;
        }
        for token in t.split(|c: char| {
            c.is_whitespace()
                || matches!(
                    c,
                    '<' | '>' | '(' | ')' | '[' | ']' | '"' | '\'' | ',' | ';'
                )
        }) {
            let token = token
                .trim_start_matches("mailto:")
                .trim_start_matches("rfc822:")
                .trim_start_matches(':')
                .trim_end_matches([':', '.', '!', '?']);
            let Some((local, domain)) = token.rsplit_once('@') else {
                continue;
            };
            if local.is_empty()
                || !domain.contains('.')
                || !super::plausible_address(token)
                || domain.eq_ignore_ascii_case(reply_domain)
                || DAEMONS.contains(&local)
                || exclude.iter().any(|e| e.eq_ignore_ascii_case(token))
                || found.iter().any(|f| f == token)
            {
                continue;
            }
            found.push(token.to_string());
            if found.len() >= 100 {
                return found;
            }
        }
    }
    found
}

/// Whether the mail's text is a provider's JSON notification, and of which kind.
pub(crate) fn json_kind(body: &str) -> Option<NoticeKind> {
    let value = json_of(body)?;
    let mut kinds = Vec::new();
    walk(&value, 0, &mut |key, v| {
        if let (true, Some(s)) = (kind_key(key), v.as_str()) {
            kinds.push(s.to_ascii_lowercase());
        }
    });
    kinds.iter().find_map(|k| kind_of(k))
}

/// The JSON object or array in a notice's text: all of it, or from the first `{` to the last
/// `}` (SNS adds a footer under the JSON).
fn json_of(body: &str) -> Option<Value> {
    let t = body.trim_start();
    if !(t.starts_with('{') || t.starts_with('[')) || t.len() > 1 << 20 {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(t.trim_end()) {
        return Some(v);
    }
    let end = t.rfind(['}', ']'])?;
    serde_json::from_str(&t[..=end]).ok()
}

/// Keys that name what a provider's notification reports.
fn kind_key(key: &str) -> bool {
    matches!(
        key.to_ascii_lowercase().as_str(),
        "notificationtype" | "eventtype" | "event" | "recordtype" | "type"
    )
}

fn kind_of(value: &str) -> Option<NoticeKind> {
    match value {
        "bounce" | "hard_bounce" | "hardbounce" | "soft_bounce" | "softbounce" | "failed"
        | "dropped" | "blocked" | "deferred" | "delayed" | "deliverydelay" | "delivery"
        | "delivered" | "transient" => Some(NoticeKind::Delivery),
        "complaint" | "spamreport" | "spam" | "spamcomplaint" | "complained" | "abuse" => {
            Some(NoticeKind::Complaint)
        }
        _ => None,
    }
}

/// Calls `visit` with every key and value of `value`, depth first; a string that holds JSON
/// (SNS wraps the notification in one) is read as JSON too.
fn walk(value: &Value, depth: usize, visit: &mut dyn FnMut(&str, &Value)) {
    if depth > 16 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                visit(k, v);
                walk(v, depth + 1, visit);
            }
        }
        Value::Array(items) => {
            for v in items.iter().take(1000) {
                walk(v, depth + 1, visit);
            }
        }
        Value::String(s) if s.trim_start().starts_with('{') && s.len() < 1 << 20 => {
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                walk(&inner, depth + 1, visit);
            }
        }
        _ => {}
    }
}

/// Fills what a provider's JSON notification says into `report`. Returns false when the text
/// is not one.
pub(crate) fn read_json(body: &str, reply_domain: &str, report: &mut BounceReport) -> bool {
    let Some(value) = json_of(body) else {
        return false;
    };
    let suffix = format!("@{}>", reply_domain.to_ascii_lowercase());
    let (mut kinds, mut hard, mut soft) = (Vec::new(), false, false);
    let mut header_name: Option<String> = None;
    walk(&value, 0, &mut |key, v| {
        let key = key.to_ascii_lowercase();
        let text = v.as_str().map(str::trim);
        if kind_key(&key)
            && let Some(t) = text
        {
            let t = t.to_ascii_lowercase();
            hard |= matches!(t.as_str(), "hard_bounce" | "hardbounce" | "permanent");
            soft |= matches!(
                t.as_str(),
                "soft_bounce" | "softbounce" | "transient" | "deferred" | "deliverydelay"
            );
            kinds.push(t);
        }
        match (key.as_str(), text) {
            ("bouncetype" | "severity" | "bounce_class", Some(t)) => {
                let t = t.to_ascii_lowercase();
                hard |= t == "permanent" || t == "hard";
                soft |= t == "transient" || t == "temporary" || t == "soft";
            }
            ("emailaddress" | "email" | "recipient" | "rcpt_to" | "rcpt" | "to", Some(address)) => {
                let address = address.trim_matches(['<', '>']).to_ascii_lowercase();
                if super::plausible_address(&address)
                    && !address.ends_with(&suffix[..suffix.len() - 1])
                    && !report.recipients.contains(&address)
                    && report.recipients.len() < 100
                {
                    report.recipients.push(address);
                }
            }
            ("status" | "code" | "enhanced_code", _) => {
                let code = match v {
                    Value::Number(n) => n.to_string(),
                    _ => text.unwrap_or_default().to_string(),
                };
                if report.status.is_none() {
                    report.status = status_in(&format!(" {code} "));
                }
            }
            ("name", Some(name)) => header_name = Some(name.to_ascii_lowercase()),
            ("value", Some(value))
                if header_name.as_deref() == Some("message-id")
                    && value.to_ascii_lowercase().ends_with(&suffix) =>
            {
                report.original_message_id = Some(value.to_string());
            }
            ("message-id" | "messageid" | "message_id" | "smtp-id", Some(id)) => {
                let id = if id.starts_with('<') {
                    id.to_string()
                } else {
                    format!("<{id}>")
                };
                if id.to_ascii_lowercase().ends_with(&suffix) {
                    report.original_message_id = Some(id);
                }
            }
            _ => {}
        }
    });
    let Some(kind) = kinds.iter().find_map(|k| kind_of(k).map(|n| (n, k))) else {
        return false;
    };
    match kind {
        (NoticeKind::Complaint, _) => report.feedback_type = Some("abuse".into()),
        (NoticeKind::Delivery, k) if matches!(k.as_str(), "delivery" | "delivered") => {
            report.actions.push("delivered".into())
        }
        (NoticeKind::Delivery, k) if matches!(k.as_str(), "delayed" | "deliverydelay") => {
            report.actions.push("delayed".into())
        }
        _ => {
            if hard {
                report.actions.push("failed".into());
            } else if soft {
                report.soft_by_text = true;
                report.actions.push("failed".into());
            }
        }
    }
    if report.status.is_none() && hard {
        report.status = Some("5.0.0".into());
    }
    true
}

/// Whether `text` (lower case) is a complaint's wording.
pub(crate) fn complaint_words(text: &str) -> bool {
    contains_any(text, COMPLAINT_WORDS).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_read_from_text() {
        assert_eq!(
            status_in("said: 550 5.1.1 <x@y.z>: unknown").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            status_in("host said: 550 user unknown").as_deref(),
            Some("5.0.0")
        );
        assert_eq!(
            status_in("452 4.2.2 mailbox full").as_deref(),
            Some("4.2.2")
        );
        assert_eq!(status_in("version 1.2.3 of 2024"), None);
        assert_eq!(status_in("call 555-1234 or 5.1.1.1"), None);
        assert_eq!(status_in("room 550, floor 3"), None);
    }

    #[test]
    fn addresses_come_from_the_diagnostic_not_the_returned_copy() {
        let text = "this is the mail system at host mx.example.org.\n\n<gone@example.net>: host \
                    mx.example.net said: 550 5.1.1 user unknown\n\n--- below this line is a copy \
                    of the message.\n\nreturn-path: <bounces+n1-x@reply.example.com>\nfrom: \
                    ann@example.com\nto: gone@example.net, other@example.net\n";
        let (diag, returned) = split_returned(text);
        assert!(returned.starts_with("--- below"));
        assert_eq!(
            addresses_in(diag, &["ann@example.com"], "reply.example.com"),
            vec!["gone@example.net"]
        );
    }

    #[test]
    fn json_notifications_are_read() {
        let ses = r#"{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bouncedRecipients":[{"emailAddress":"gone@example.net","status":"5.1.1"}]},"mail":{"headers":[{"name":"Message-ID","value":"<tidings.n1@reply.example.com>"}]}}"#;
        let mut report = BounceReport::default();
        assert!(read_json(ses, "reply.example.com", &mut report));
        assert_eq!(report.recipients, vec!["gone@example.net"]);
        assert_eq!(report.status.as_deref(), Some("5.1.1"));
        assert_eq!(
            report.original_message_id.as_deref(),
            Some("<tidings.n1@reply.example.com>")
        );
        assert_eq!(json_kind(ses), Some(NoticeKind::Delivery));
        let wrapped = serde_json::json!({"Type": "Notification", "Message": r#"{"notificationType":"Complaint","complaint":{"complainedRecipients":[{"emailAddress":"ann@example.net"}]}}"#}).to_string();
        assert_eq!(json_kind(&wrapped), Some(NoticeKind::Complaint));
        assert_eq!(json_kind("{\"hello\": \"world\"}"), None);
        assert_eq!(json_kind("plain words"), None);
    }

    #[test]
    fn t4_hostile_notices_stay_bounded() {
        use crate::inbound::{InboundContext, inspect};
        let context = InboundContext {
            reply_domain: "reply.example.com".into(),
            own_address: None,
            authserv_id: None,
            attachment_max: 1 << 20,
        };
        // Ten thousand addresses in a notice: at most a hundred are read.
        let many: String = (0..10_000)
            .map(|n| format!("<u{n}@example.net>: 550 5.1.1 unknown\n"))
            .collect();
        let raw =
            format!("From: MAILER-DAEMON@mx.example.org\nSubject: Undelivered Mail\n\n{many}");
        let report = inspect(raw.as_bytes(), &context);
        assert_eq!(report.verdict.as_str(), "bounce");
        assert_eq!(report.bounce.unwrap().recipients.len(), 100);
        // JSON nested far beyond the parser's limit, and JSON hidden in strings in strings.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let mut wrapped =
            r#"{"notificationType":"Bounce","bounce":{"bounceType":"Permanent"}}"#.to_string();
        // Each level escapes the one inside it, doubling its backslashes: twelve levels already
        // make a few hundred kilobytes.
        for _ in 0..12 {
            wrapped = serde_json::json!({ "Message": wrapped }).to_string();
        }
        assert!(wrapped.len() < 1 << 20);
        for body in [deep, wrapped] {
            let raw = format!(
                "From: hooks@example.com\nSubject: event\nContent-Type: application/json\n\n{body}"
            );
            let report = inspect(raw.as_bytes(), &context);
            assert!(
                matches!(report.verdict.as_str(), "bounce" | "new_conversation"),
                "{:?}",
                report.verdict
            );
        }
    }
}
