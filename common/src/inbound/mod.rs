//! The pure inbound path: parse a raw email, classify it (human reply, new conversation,
//! automatic mail, bounce, bulk, our own mail coming back, rejected), extract the new text of a
//! reply from its quoted history and signature, and read what the mail itself says about its
//! thread. No database, no broker: any input, however malformed, yields a verdict.
//!
//! - [`classify`]: automatic mail, bounces, bulk mail and loops (RFC 3834 and its variants);
//! - [`bounce`]: what a delivery report or a complaint report says;
//! - [`notice`]: machine notices in other forms (plain text, HTML, JSON, list managers);
//! - [`reply`]: the new text of a reply, apart from its quoted history and signature.

pub mod bounce;
pub mod classify;
pub mod html;
pub mod notice;
pub mod reply;

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

use crate::attachments::{File, NotKept, safe_name};
use serde::Serialize;

pub use bounce::BounceReport;
pub use reply::{ReplyParts, split_reply};

/// What kind of mail this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundVerdict {
    /// A person answering one of our emails: post it into the conversation.
    Reply,
    /// A person writing afresh: a customer's mail starts a conversation.
    NewConversation,
    /// An auto-reply or out-of-office: logged, never posted.
    AutoReply,
    /// A delivery status notification: logged, matched to what bounced.
    Bounce,
    /// A complaint report (a recipient marked our email as spam): stops that kind of email to
    /// the complainer when it proves which email it concerns; never posted (SPEC T5).
    Complaint,
    /// List or bulk mail: logged, never posted.
    Bulk,
    /// Our own mail coming back: logged, never posted.
    Loop,
    /// Cannot be processed; the reason says why.
    Rejected,
}

impl InboundVerdict {
    /// The verdict's name, as stored and logged.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundVerdict::Reply => "reply",
            InboundVerdict::NewConversation => "new_conversation",
            InboundVerdict::AutoReply => "auto_reply",
            InboundVerdict::Bounce => "bounce",
            InboundVerdict::Complaint => "complaint",
            InboundVerdict::Bulk => "bulk",
            InboundVerdict::Loop => "loop",
            InboundVerdict::Rejected => "rejected",
        }
    }
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
    pub verdict: InboundVerdict,
    pub reason: Option<String>,
    pub from: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub reply_text: Option<String>,
    pub quoted_text: Option<String>,
    /// Set when extraction found no new text and the whole text was posted instead (a human
    /// mail is never dropped for how it quotes).
    pub extraction_note: Option<String>,
    pub thread: ThreadHints,
    /// Why the relay's `Authentication-Results` says the sender is not who they claim (SPF,
    /// DKIM or DMARC fail); such mail is never posted as that person (SPEC I4).
    pub auth_failure: Option<String>,
    /// For a bounce or a complaint: what failed or who complained, as far as the report says.
    pub bounce: Option<BounceReport>,
    /// The files of a human email, kept with the message it is posted as (I9).
    pub files: Vec<File>,
    /// Files that were not kept, each named in a line of the posted text.
    pub not_kept: Vec<NotKept>,
    /// A person's mail that a rule forwarded (`Auto-Submitted: auto-forwarded`): posted, and
    /// never answered automatically.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto_forwarded: bool,
}

/// What the inbound path needs to know about this deployment.
#[derive(Debug, Clone)]
pub struct InboundContext {
    /// Domain of reply addresses and of our Message-IDs.
    pub reply_domain: String,
    /// Our own sender address (From of notification mail).
    pub own_address: Option<String>,
    /// The relay's authserv-id (`TIDINGS_INBOUND_AUTHSERV_ID`): only the topmost
    /// `Authentication-Results` header with it is read. Unset, the topmost header is read.
    pub authserv_id: Option<String>,
    /// `TIDINGS_ATTACHMENT_MAX`: the largest file kept.
    pub attachment_max: usize,
}

impl InboundContext {
    pub fn from_config(config: &crate::Config) -> Self {
        InboundContext {
            reply_domain: config.reply_domain.clone(),
            own_address: Some(config.own_address()),
            authserv_id: config.inbound_authserv_id.clone(),
            attachment_max: config.attachment_max,
        }
    }
}

/// Runs the whole pure path on a raw message. Never panics: a panic inside the parser becomes
/// a `rejected` verdict.
pub fn inspect(raw: &[u8], context: &InboundContext) -> InboundReport {
    inspect_with(raw, context, false)
}

/// Inspects `raw` as a person's email, whatever it looks like: an admin recovering mail that
/// was set aside says so. The automatic-mail checks (auto-replies, bounces, complaints, bulk
/// and our own mail) are skipped; everything else is as [`inspect`].
pub fn inspect_as_human(raw: &[u8], context: &InboundContext) -> InboundReport {
    inspect_with(raw, context, true)
}

fn inspect_with(raw: &[u8], context: &InboundContext, human: bool) -> InboundReport {
    let mut report =
        match std::panic::catch_unwind(AssertUnwindSafe(|| inspect_parsed(raw, context, human))) {
            Ok(report) => report,
            Err(_) => rejected("the message could not be parsed (parser panic)"),
        };
    report.scrub();
    report
}

/// `text` without NUL characters (raw, or decoded from `=00` or base64), which no text column
/// can store: each becomes U+FFFD, so the mail is kept rather than refused by the database.
pub fn without_nul(text: &mut String) {
    if text.contains('\0') {
        *text = text.replace('\0', "\u{FFFD}");
    }
}

impl InboundReport {
    fn scrub(&mut self) {
        let bounce = self.bounce.iter_mut().flat_map(|b| {
            b.recipients
                .iter_mut()
                .chain(b.status.iter_mut())
                .chain(b.original_message_id.iter_mut())
        });
        let thread = self
            .thread
            .token
            .iter_mut()
            .chain(self.thread.in_reply_to.iter_mut())
            .chain(self.thread.references.iter_mut());
        for text in self
            .reason
            .iter_mut()
            .chain(self.from.iter_mut())
            .chain(self.subject.iter_mut())
            .chain(self.message_id.iter_mut())
            .chain(self.reply_text.iter_mut())
            .chain(self.quoted_text.iter_mut())
            .chain(self.extraction_note.iter_mut())
            .chain(self.auth_failure.iter_mut())
            .chain(thread)
            .chain(bounce)
        {
            without_nul(text);
        }
    }
}

/// Takes `report` as a delivery report: what the envelope says (a null reverse-path to our
/// bounce mailbox) outweighs the headers and body, which a delivery report may write any way
/// (no `From`, `MAILER-DAEMON <>`, plain text). A complaint report stays one.
pub fn as_delivery_report(report: &mut InboundReport, raw: &[u8], reply_domain: &str) {
    if matches!(
        report.verdict,
        InboundVerdict::Bounce | InboundVerdict::Complaint
    ) {
        return;
    }
    report.verdict = InboundVerdict::Bounce;
    report.reason = Some("a delivery report: null reverse-path to the bounce address".into());
    let message = MessageParser::default().parse(raw);
    let text = message.as_ref().map(notice_text).unwrap_or_default();
    report.bounce = Some(bounce::report(message.as_ref(), raw, &text, reply_domain));
    report.reply_text = None;
    report.quoted_text = None;
    report.files.clear();
    report.not_kept.clear();
}

/// The report of a queued email that cannot be read at all (its spooled text is gone):
/// rejected, with the reason, so the email log says what happened to it.
pub fn unreadable(reason: &str) -> InboundReport {
    rejected(reason)
}

fn rejected(reason: &str) -> InboundReport {
    InboundReport {
        verdict: InboundVerdict::Rejected,
        reason: Some(reason.to_string()),
        from: None,
        subject: None,
        message_id: None,
        reply_text: None,
        quoted_text: None,
        extraction_note: None,
        thread: ThreadHints::default(),
        auth_failure: None,
        bounce: None,
        files: Vec::new(),
        not_kept: Vec::new(),
        auto_forwarded: false,
    }
}

pub(crate) fn header_text(message: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    message.header_raw(name).map(|v| v.trim().to_string())
}

pub(crate) fn addresses(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|a| {
            a.iter()
                .filter_map(|addr| addr.address().map(|s| s.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default()
}

/// What the mail says about its thread: a reply token among its recipients, In-Reply-To
/// and References.
/// Longest Message-ID kept, as a header line may be (RFC 5322): a longer one is no id at all
/// (the email is then deduplicated by its digest and threads by its reply address), so no
/// stored or indexed value grows with what a sender writes.
const ID_MAX: usize = 998;
/// Most References entries read (the newest).
const REFERENCES_MAX: usize = 64;

fn thread_hints(message: &mail_parser::Message<'_>, context: &InboundContext) -> ThreadHints {
    let mut recipients = addresses(message.to());
    recipients.extend(addresses(message.cc()));
    for name in ["Delivered-To", "X-Original-To", "Envelope-To"] {
        if let Some(value) = header_text(message, name) {
            recipients.push(value.trim_matches(['<', '>', ' ']).to_ascii_lowercase());
        }
    }
    let domain = context.reply_domain.to_ascii_lowercase();
    let token = recipients.iter().find_map(|r| {
        let (local, host) = r.rsplit_once('@')?;
        (host == domain).then(|| local.strip_prefix("reply+").map(str::to_string))?
    });
    let ids = |value: &HeaderValue<'_>| -> Vec<String> {
        let list: Vec<&str> = match value {
            HeaderValue::Text(t) => vec![t.as_ref()],
            HeaderValue::TextList(list) => list.iter().map(|t| t.as_ref()).collect(),
            _ => Vec::new(),
        };
        list.into_iter()
            .filter(|t| t.len() <= ID_MAX)
            .map(|t| format!("<{t}>"))
            .collect()
    };
    let mut references = ids(message.references());
    // The newest references are the ones that thread; a header of thousands is cut to them.
    if references.len() > REFERENCES_MAX {
        references.drain(..references.len() - REFERENCES_MAX);
    }
    ThreadHints {
        token,
        in_reply_to: ids(message.in_reply_to()).into_iter().next(),
        references,
    }
}

/// Whether a sender address as parsed is one mail could come from: a local part and a dotted
/// domain, with no spaces or control characters (a quoted local part the parser could not
/// read comes out as `@domain`).
pub(crate) fn plausible_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    // At most 254 characters, as an SMTP path allows (RFC 5321).
    address.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address.chars().any(|c| c.is_whitespace() || c.is_control())
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '.' || c == '-')
}

/// Every header called `name`, raw, top first (the order relays prepend in).
fn raw_headers<'a>(message: &'a mail_parser::Message<'_>, name: &str) -> Vec<&'a str> {
    message
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .filter_map(|h| {
            message
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)
                .and_then(|raw| std::str::from_utf8(raw).ok())
        })
        .collect()
}

/// The authserv-id an `Authentication-Results` value starts with (RFC 8601: `id [version];`).
fn authserv_id(results: &str) -> &str {
    results
        .split(';')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or_default()
}

/// Why the relay's `Authentication-Results` says the sender is not who they claim, if it does.
/// Only the topmost header written by the relay counts (relays prepend theirs; anything below
/// may come from the sender), and only the relay's authserv-id when one is configured.
fn auth_failure(message: &mail_parser::Message<'_>, relay: Option<&str>) -> Option<String> {
    let results = raw_headers(message, "Authentication-Results")
        .into_iter()
        .find(|r| relay.is_none_or(|id| authserv_id(r).eq_ignore_ascii_case(id)))?;
    let lower = results.to_ascii_lowercase();
    ["dmarc=fail", "spf=fail", "dkim=fail"]
        .into_iter()
        .find(|f| lower.contains(f))
        .map(|f| format!("Authentication-Results: {f}"))
}

fn inspect_parsed(raw: &[u8], context: &InboundContext, human: bool) -> InboundReport {
    let Some(message) = MessageParser::default().parse(raw) else {
        return rejected("the message could not be parsed");
    };
    let from = addresses(message.from()).into_iter().next();
    let subject = subject_of(&message);
    let message_id = message
        .message_id()
        .filter(|id| id.len() <= ID_MAX)
        .map(|id| format!("<{id}>"));
    let thread = thread_hints(&message, context);
    let auth_failure = auth_failure(&message, context.authserv_id.as_deref());

    let mut report = InboundReport {
        verdict: InboundVerdict::Rejected,
        reason: None,
        from: from.clone(),
        subject: subject.clone(),
        message_id: message_id.clone(),
        reply_text: None,
        quoted_text: None,
        extraction_note: None,
        thread,
        auth_failure,
        bounce: None,
        files: Vec::new(),
        not_kept: Vec::new(),
        auto_forwarded: false,
    };
    if let Some((verdict, reason)) =
        classify::automatic(&message, from.as_deref(), message_id.as_deref(), context)
            .filter(|_| !human)
    {
        if matches!(verdict, InboundVerdict::Bounce | InboundVerdict::Complaint) {
            let text = notice_text(&message);
            report.bounce = Some(bounce::report(
                Some(&message),
                raw,
                &text,
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
    if let Some(bad) = from.as_deref().filter(|f| !plausible_address(f)) {
        report.reason = Some(format!(
            "the From address {:?} is not a valid address",
            crate::mail::mask_address(bad)
        ));
        report.from = None;
        return report;
    }
    let froms = raw_headers(&message, "From").len();
    if froms > 1 {
        report.reason = Some(format!(
            "{froms} From headers; a message has exactly one (RFC 5322)"
        ));
        return report;
    }
    let (files, not_kept) = files_of(&message, context.attachment_max);
    let (mut parts, note) = extract(&message, subject.as_deref());
    for line in not_kept.iter().map(NotKept::line) {
        parts.reply.push_str("\n\n");
        parts.reply.push_str(&line);
    }
    report.files = files;
    report.not_kept = not_kept;
    report.auto_forwarded = classify::auto_forwarded(&message);
    report.reply_text = Some(parts.reply);
    report.quoted_text = Some(parts.quoted);
    report.extraction_note = note;
    let hints = &report.thread;
    report.verdict =
        if hints.token.is_some() || hints.in_reply_to.is_some() || !hints.references.is_empty() {
            InboundVerdict::Reply
        } else {
            InboundVerdict::NewConversation
        };
    report
}

/// Most files kept from one email; the rest are named as not kept.
pub const FILES_MAX: usize = 100;

/// The files of a message: its attachments, inline images and forwarded mails (as `.eml`),
/// each at most `max` bytes and at most [`FILES_MAX`] of them; the others are not kept, each
/// with its reason (past the count, one line says how many more there were).
pub fn files_of(message: &mail_parser::Message<'_>, max: usize) -> (Vec<File>, Vec<NotKept>) {
    use mail_parser::MimeHeaders;
    let (mut files, mut not_kept) = (Vec::new(), Vec::new());
    let mut beyond = 0usize;
    for part in message.attachments() {
        let forwarded = part.is_message();
        let declared = if forwarded {
            Some("message/rfc822".to_string())
        } else {
            part.content_type().map(|t| match t.subtype() {
                Some(sub) => format!("{}/{sub}", t.ctype()),
                None => t.ctype().to_string(),
            })
        };
        let name = part.attachment_name().map(str::to_string).or_else(|| {
            forwarded.then(|| {
                let subject = part
                    .message()
                    .and_then(|m| m.subject())
                    .unwrap_or("forwarded");
                format!("{subject}.eml")
            })
        });
        let inline = part
            .content_disposition()
            .is_some_and(|d| d.ctype().eq_ignore_ascii_case("inline"))
            || (part.content_id().is_some() && part.attachment_name().is_none());
        let size = part.len();
        if files.len() >= FILES_MAX {
            beyond += 1;
            continue;
        }
        if size > max {
            let sniffed = declared.as_deref().unwrap_or("application/octet-stream");
            not_kept.push(NotKept {
                name: safe_name(name.as_deref(), sniffed),
                size: size as i64,
                reason: format!(
                    "over the {} limit per file (TIDINGS_ATTACHMENT_MAX)",
                    crate::attachments::human_size(max as i64)
                ),
            });
            continue;
        }
        files.push(File::new(
            part.contents().to_vec(),
            name.as_deref(),
            declared.as_deref(),
            part.content_id(),
            inline,
        ));
    }
    if beyond > 0 {
        not_kept.push(NotKept {
            name: format!("{beyond} more files"),
            size: 0,
            reason: format!("an email keeps at most {FILES_MAX} files"),
        });
    }
    (files, not_kept)
}

/// The body of a raw message as the extractor reads it (the plain-text part, or the HTML
/// part converted), or `None` when it cannot be parsed. For measuring extraction apart from
/// MIME parsing.
pub fn body_of(raw: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse(raw)
        .map(|message| body_text(&message).text)
}

/// Most bytes of a notice's text read to tell what it reports.
const NOTICE_MAX: usize = 64 << 10;

/// A mail's own text, lower case, for reading what a machine notice says: its inline text
/// parts (or its HTML as text), at most [`NOTICE_MAX`] bytes.
pub(crate) fn notice_text(message: &mail_parser::Message<'_>) -> String {
    let mut text = body_text(message).text;
    if text.trim().is_empty()
        && let Some(json) = json_part(message)
    {
        text = String::from_utf8_lossy(json).into_owned();
    }
    if text.len() > NOTICE_MAX {
        let mut end = NOTICE_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    reply::lowercase(&text)
}

/// The contents of the mail's first `application/json` part (a provider's notification sent
/// as a file or as the whole body).
pub(crate) fn json_part<'a>(message: &'a mail_parser::Message<'_>) -> Option<&'a [u8]> {
    message
        .parts
        .iter()
        .find(|p| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("application")
                    && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("json"))
            })
        })
        .map(|p| p.contents())
}

/// The text of part `id`, decoded by its charset label as the WHATWG Encoding Standard reads
/// labels (every alias, `ks_c_5601-1987` and `x-sjis` included). The parser's own text is
/// kept for UTF-8, for pure ASCII and for labels the standard does not list.
fn part_text<'a>(message: &'a mail_parser::Message<'_>, id: u32) -> Option<Cow<'a, str>> {
    let part = message.part(id)?;
    let text = match &part.body {
        PartType::Text(text) | PartType::Html(text) => text.as_ref(),
        _ => return None,
    };
    let Some(label) = part.content_type().and_then(|ct| ct.attribute("charset")) else {
        return Some(Cow::Borrowed(text));
    };
    if text.is_ascii() && !text.contains('\x1b') {
        return Some(Cow::Borrowed(text));
    }
    // The parser's own decoding stands where it knows the label and agrees with the standard;
    // it differs only for labels it does not know, and for Latin-1 labels, which the standard
    // reads as windows-1252 (C1 controls there are curly quotes, dashes, the euro sign).
    let known = mail_parser::decoders::charsets::map::charset_decoder(label.as_bytes()).is_some();
    if known && !text.chars().any(|c| ('\u{80}'..='\u{9f}').contains(&c)) {
        return Some(Cow::Borrowed(text));
    }
    let encoding = encoding_rs::Encoding::for_label(label.trim().as_bytes());
    match encoding {
        Some(encoding) if encoding != encoding_rs::UTF_8 => {
            let body = message
                .raw_message
                .get(part.offset_body as usize..part.offset_end as usize)?;
            let bytes = match part.encoding {
                mail_parser::Encoding::Base64 => mail_parser::decoders::base64::base64_decode(body),
                mail_parser::Encoding::QuotedPrintable => {
                    mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                }
                mail_parser::Encoding::None => Some(body.to_vec()),
            };
            Some(match bytes {
                Some(bytes) => Cow::Owned(encoding.decode(&bytes).0.into_owned()),
                None => Cow::Borrowed(text),
            })
        }
        _ => Some(Cow::Borrowed(text)),
    }
}

/// The subject, with encoded words in charsets the parser does not know decoded by their
/// WHATWG label.
fn subject_of(message: &mail_parser::Message<'_>) -> Option<String> {
    let parsed = message.subject()?;
    if !parsed.contains('\u{FFFD}') && !parsed.contains("=?") {
        return Some(parsed.to_string());
    }
    let raw = message.header_raw("Subject")?;
    Some(decode_words(raw).unwrap_or_else(|| parsed.to_string()))
}

/// A header value with its RFC 2047 encoded words decoded by their WHATWG charset labels;
/// `None` when a word cannot be read.
fn decode_words(raw: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = raw.trim();
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let between = &rest[..start];
        if !(last_was_word && between.trim().is_empty()) {
            out.push_str(&between.replace(['\r', '\n'], ""));
        }
        let word = &rest[start + 2..];
        let mut fields = word.splitn(3, '?');
        let (charset, kind, tail) = (fields.next()?, fields.next()?, fields.next()?);
        let end = tail.find("?=")?;
        let data = &tail[..end];
        let charset = charset.split('*').next().unwrap_or_default();
        let encoding = encoding_rs::Encoding::for_label(charset.trim().as_bytes())?;
        let bytes = match kind {
            "B" | "b" => mail_parser::decoders::base64::base64_decode(data.as_bytes())?,
            "Q" | "q" => {
                let data = data.replace('_', " ");
                mail_parser::decoders::quoted_printable::quoted_printable_decode(data.as_bytes())?
            }
            _ => return None,
        };
        out.push_str(&encoding.decode(&bytes).0);
        rest = &tail[end + 2..];
        last_was_word = true;
    }
    out.push_str(&rest.replace(['\r', '\n'], ""));
    Some(out)
}

/// The body as text: every inline plain-text part in order (a mail may interleave text with
/// images or files), or, when there is none or one that is empty beside an HTML alternative,
/// the HTML parts converted with their structure, and where a client's quote container starts.
fn body_text(message: &mail_parser::Message<'_>) -> html::HtmlText {
    let is_plain = |id: &u32| matches!(message.part(*id).map(|p| &p.body), Some(PartType::Text(_)));
    let plain: Vec<Cow<'_, str>> = message
        .text_body
        .iter()
        .filter(|id| is_plain(id))
        .filter_map(|id| part_text(message, *id))
        .collect();
    let all_plain = message.text_body.iter().all(is_plain);
    let empty_beside_html =
        plain.iter().any(|t| t.trim().is_empty()) && !message.html_body.is_empty();
    if all_plain && !plain.is_empty() && !empty_beside_html {
        let mut text = String::new();
        for part in plain.iter().filter(|t| !t.trim().is_empty()) {
            if !text.is_empty() {
                text.push_str("\n\n");
            }
            text.push_str(part.trim_end());
        }
        if text.contains('\r') {
            text = text.replace("\r\n", "\n").replace('\r', "\n");
        }
        return html::HtmlText {
            text,
            history_at: None,
        };
    }
    let mut out = html::HtmlText {
        text: String::new(),
        history_at: None,
    };
    for id in &message.html_body {
        let Some(content) = part_text(message, *id) else {
            continue;
        };
        let converted = match message.part(*id).map(|p| &p.body) {
            Some(PartType::Html(_)) => html::to_text(&content),
            _ => html::HtmlText {
                text: content.replace("\r\n", "\n").replace('\r', "\n"),
                history_at: None,
            },
        };
        if converted.text.trim().is_empty() {
            continue;
        }
        if !out.text.is_empty() {
            out.text.push_str("\n\n");
        }
        if out.history_at.is_none() {
            out.history_at = converted.history_at.map(|at| at + out.text.len());
        }
        out.text.push_str(&converted.text);
    }
    out
}

/// The new text and what was removed. A human mail is never left without text: when nothing
/// new is found, the whole text is posted (the quote is still stored as the quoted part), and
/// a mail with no text at all posts its subject; the note says which.
fn extract(
    message: &mail_parser::Message<'_>,
    subject: Option<&str>,
) -> (ReplyParts, Option<String>) {
    let body = body_text(message);
    let (own, history) = match body.history_at {
        Some(at) => body.text.split_at(at),
        None => (body.text.as_str(), ""),
    };
    let mut parts = split_reply(own);
    let history = history.trim();
    if !history.is_empty() {
        if !parts.quoted.is_empty() {
            parts.quoted.push_str("\n\n");
        }
        parts.quoted.push_str(history);
    }
    if !parts.reply.trim().is_empty() {
        return (parts, None);
    }
    let whole = body.text.trim();
    if !whole.is_empty() {
        parts.reply = whole.to_string();
        return (
            parts,
            Some(
                "no new text found apart from the quoted history; the whole text was posted".into(),
            ),
        );
    }
    parts.reply = subject
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("(empty email)")
        .to_string();
    (
        parts,
        Some("the email has no text; its subject was posted".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> InboundContext {
        InboundContext {
            reply_domain: "reply.example.com".into(),
            own_address: Some("n@example.com".into()),
            authserv_id: None,
            attachment_max: 25 << 20,
        }
    }

    #[test]
    fn only_the_relays_topmost_authentication_results_count() {
        let mail = |headers: &str| {
            format!(
                "{headers}From: ann@example.com\r\nTo: reply+x@reply.example.com\r\nSubject: Re: x\r\nIn-Reply-To: <a@reply.example.com>\r\n\r\nHello\r\n"
            )
        };
        // The relay prepends its verdict; a sender's own header below it changes nothing.
        let forged = mail(
            "Authentication-Results: mx.relay.test; dkim=fail header.d=example.com\r\nAuthentication-Results: mx.relay.test; dkim=pass header.d=example.com\r\n",
        );
        let report = inspect(forged.as_bytes(), &context());
        assert_eq!(
            report.auth_failure.as_deref(),
            Some("Authentication-Results: dkim=fail")
        );
        // With the relay's id configured, headers of other ids are not read at all.
        let relay = InboundContext {
            authserv_id: Some("mx.relay.test".into()),
            ..context()
        };
        let other_on_top = mail(
            "Authentication-Results: evil.test 1; dkim=pass\r\nAuthentication-Results: mx.relay.test; spf=fail smtp.mailfrom=example.com\r\n",
        );
        let report = inspect(other_on_top.as_bytes(), &relay);
        assert_eq!(
            report.auth_failure.as_deref(),
            Some("Authentication-Results: spf=fail")
        );
        let only_others = mail("Authentication-Results: evil.test; dkim=fail\r\n");
        assert_eq!(inspect(only_others.as_bytes(), &relay).auth_failure, None);
    }

    #[test]
    fn overlong_ids_and_addresses_never_reach_the_database() {
        let id = "x".repeat(5_000);
        let refs: Vec<String> = (0..1_000).map(|n| format!("<r{n}@example.com>")).collect();
        let mail = format!(
            "From: ann@example.com\r\nTo: support@reply.example.com\r\nSubject: Hi\r\n\
             Message-ID: <{id}@example.com>\r\nIn-Reply-To: <{id}@example.com>\r\n\
             References: {}\r\n\r\nHello\r\n",
            refs.join(" ")
        );
        let report = inspect(mail.as_bytes(), &context());
        assert_eq!(report.message_id, None);
        assert_eq!(report.thread.in_reply_to, None);
        assert_eq!(report.thread.references.len(), REFERENCES_MAX);
        assert_eq!(
            report.thread.references.last().map(String::as_str),
            Some("<r999@example.com>")
        );
        assert_eq!(report.reply_text.as_deref(), Some("Hello"));
        let long_from = format!(
            "From: {}@example.com\r\nTo: support@reply.example.com\r\nSubject: Hi\r\n\r\nHello\r\n",
            "a".repeat(300)
        );
        let report = inspect(long_from.as_bytes(), &context());
        assert_eq!(report.verdict, InboundVerdict::Rejected);
        assert!(report.reason.unwrap().contains("not a valid address"));
    }

    #[test]
    fn a_sender_address_that_does_not_parse_is_rejected() {
        for from in [
            "\"alice\"@evil.test",
            "ali\rce@evil.test",
            "alice@evil",
            "alice@ev il.test",
        ] {
            let raw = format!(
                "From: {from}\r\nTo: support@reply.example.com\r\nSubject: hi\r\n\r\nHello\r\n"
            );
            let report = inspect(raw.as_bytes(), &context());
            assert_eq!(
                report.verdict,
                InboundVerdict::Rejected,
                "{from}: {report:?}"
            );
            assert!(report.from.is_none(), "{from}: {report:?}");
        }
    }

    #[test]
    fn a_message_with_two_from_headers_is_rejected() {
        let raw = b"From: ann@example.com\r\nFrom: ceo@example.com\r\nTo: support@reply.example.com\r\nSubject: hi\r\n\r\nPay this invoice\r\n";
        let report = inspect(raw, &context());
        assert_eq!(report.verdict, InboundVerdict::Rejected);
        assert!(report.reason.unwrap().contains("2 From headers"));
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
                report.verdict == InboundVerdict::Rejected || report.from.is_some(),
                "{report:?}"
            );
        }
    }

    #[test]
    fn classifies_automatic_mail_and_threads() {
        let auto = b"From: a@b.com\r\nAuto-Submitted: auto-replied\r\nSubject: hi\r\n\r\naway";
        assert_eq!(inspect(auto, &context()).verdict, InboundVerdict::AutoReply);
        let ooo = b"From: a@b.com\r\nSubject: Out of Office: hi\r\n\r\naway";
        assert_eq!(inspect(ooo, &context()).verdict, InboundVerdict::AutoReply);
        let list = b"From: a@b.com\r\nList-Id: <x.lists>\r\nSubject: hi\r\n\r\nnews";
        assert_eq!(inspect(list, &context()).verdict, InboundVerdict::Bulk);
        let bounce = b"From: MAILER-DAEMON@b.com\r\nSubject: failure\r\n\r\nFinal-Recipient: rfc822; Gone@x.com\r\nStatus: 5.1.1\r\n\r\nMessage-ID: <tidings.m1.p2.x@reply.example.com>\r\n";
        let report = inspect(bounce, &context());
        assert_eq!(report.verdict, InboundVerdict::Bounce);
        let b = report.bounce.unwrap();
        assert_eq!(b.recipients, vec!["gone@x.com".to_string()]);
        assert_eq!(b.status.as_deref(), Some("5.1.1"));
        assert!(b.permanent);
        assert_eq!(
            b.original_message_id.as_deref(),
            Some("<tidings.m1.p2.x@reply.example.com>")
        );
        let ours = b"From: a@b.com\r\nMessage-ID: <t.1@reply.example.com>\r\n\r\nx";
        assert_eq!(inspect(ours, &context()).verdict, InboundVerdict::Loop);
        let reply = b"From: Cleo <cleo@c.com>\r\nTo: reply+1-2-3-abc@reply.example.com\r\nSubject: Re: x\r\n\r\nok\r\n\r\nOn Mon, Ann wrote:\r\n> q\r\n";
        let report = inspect(reply, &context());
        assert_eq!(report.verdict, InboundVerdict::Reply);
        assert_eq!(report.thread.token.as_deref(), Some("1-2-3-abc"));
        assert_eq!(report.reply_text.as_deref(), Some("ok"));
        let fresh =
            b"From: Cleo <cleo@c.com>\r\nTo: help@example.com\r\nSubject: help\r\n\r\nmy printer";
        assert_eq!(
            inspect(fresh, &context()).verdict,
            InboundVerdict::NewConversation
        );
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    fn context() -> InboundContext {
        InboundContext {
            reply_domain: "reply.example.com".into(),
            own_address: None,
            authserv_id: None,
            attachment_max: 25 << 20,
        }
    }

    fn reply_of(raw: &[u8]) -> String {
        inspect(raw, &context()).reply_text.unwrap_or_default()
    }

    #[test]
    fn i3_an_empty_text_part_falls_back_to_the_html() {
        let raw = b"From: ann@example.net\r\nTo: support@reply.example.com\r\nSubject: Printer\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"a\"\r\n\r\n\
--a\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n  \r\n\r\n\
--a\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>The printer is <b>smoking</b>.</p>\r\n--a--\r\n";
        assert_eq!(reply_of(raw), "The printer is smoking.");
    }

    #[test]
    fn i3_every_inline_text_part_is_kept_in_order() {
        let raw = b"From: ann@example.net\r\nTo: support@reply.example.com\r\nSubject: Printer\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nHere is the photo:\r\n\
--m\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=a.png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n\
--m\r\nContent-Type: text/plain\r\n\r\nAnd it smells of smoke.\r\n--m--\r\n";
        assert_eq!(
            reply_of(raw),
            "Here is the photo:\n\nAnd it smells of smoke."
        );
    }

    #[test]
    fn i3_charset_labels_are_read_as_the_whatwg_standard_lists_them() {
        // "안녕하세요" in EUC-KR, labelled with the Windows alias; Shift_JIS as x-sjis;
        // Latin-1 text with a windows-1252 curly quote.
        let cases: [(&str, Vec<u8>, &str); 4] = [
            (
                "ks_c_5601-1987",
                vec![0xbe, 0xc8, 0xb3, 0xe7, 0xc7, 0xcf, 0xbc, 0xbc, 0xbf, 0xe4],
                "안녕하세요",
            ),
            (
                "x-sjis",
                vec![0x82, 0xb1, 0x82, 0xf1, 0x82, 0xc9, 0x82, 0xbf, 0x82, 0xcd],
                "こんにちは",
            ),
            (
                "latin1",
                b"caf\xe9 \x93ok\x94".to_vec(),
                "café \u{201c}ok\u{201d}",
            ),
            ("cp1251", vec![0xcf, 0xf0, 0xe8, 0xe2, 0xe5, 0xf2], "Привет"),
        ];
        for (label, body, expected) in cases {
            let mut raw = format!(
                "From: ann@example.net\r\nTo: support@reply.example.com\r\nSubject: =?{label}?B?{}?=\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"{label}\"\r\n\
                 Content-Transfer-Encoding: 8bit\r\n\r\n",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &body)
            )
            .into_bytes();
            raw.extend_from_slice(&body);
            raw.extend_from_slice(b"\r\n");
            let report = inspect(&raw, &context());
            assert_eq!(report.reply_text.as_deref(), Some(expected), "{label}");
            assert_eq!(report.subject.as_deref(), Some(expected), "{label} subject");
        }
    }
}
