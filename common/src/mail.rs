//! Building outbound notification mail: reply tokens, Message-IDs, threading headers.

use base64::Engine;
use hmac::{Hmac, Mac};
use lettre::Message as Email;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::templates::RenderedEmail;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC kept in a token: 80 bits, far beyond online guessing.
const MAC_LEN: usize = 10;

/// The signed part of a reply address, `reply+<token>@<reply domain>`: names the conversation
/// and the person the address was issued to, and the day it was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyToken {
    pub conversation_id: i64,
    pub person_id: i64,
    /// Days since the Unix epoch when the token was issued; lets old tokens expire.
    pub issued_day: i64,
}

/// Why a reply token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyTokenError {
    #[error("reply token is malformed")]
    Malformed,
    #[error("reply token signature does not match")]
    BadSignature,
}

impl ReplyToken {
    /// Encodes as `<conversation>-<person>-<day>-<mac>`, lower case only so that relays that
    /// fold the local part's case do not break it.
    pub fn encode(&self, secret: &[u8]) -> String {
        let body = format!(
            "{}-{}-{}",
            self.conversation_id, self.person_id, self.issued_day
        );
        format!("{body}-{}", mac(secret, &body))
    }

    pub fn decode(token: &str, secret: &[u8]) -> Result<Self, ReplyTokenError> {
        let token = token.to_ascii_lowercase();
        let (body, given) = token.rsplit_once('-').ok_or(ReplyTokenError::Malformed)?;
        let numbers: Vec<i64> = body
            .split('-')
            .map(|n| n.parse::<i64>().map_err(|_| ReplyTokenError::Malformed))
            .collect::<Result<_, _>>()?;
        let [conversation_id, person_id, issued_day] = numbers[..] else {
            return Err(ReplyTokenError::Malformed);
        };
        let expected = mac(secret, body);
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return Err(ReplyTokenError::BadSignature);
        }
        Ok(ReplyToken {
            conversation_id,
            person_id,
            issued_day,
        })
    }

    /// The full reply address for this token.
    pub fn address(&self, secret: &[u8], reply_domain: &str) -> String {
        format!("reply+{}@{reply_domain}", self.encode(secret))
    }
}

/// The email a bounce address stands for: each email goes out with its own envelope sender
/// (VERP), `bounces+n42-<mac>@<reply domain>`, so a bounce delivered back to it proves which of
/// our emails failed. The MAC is over a label of its own, so no other token can stand in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SentEmail {
    Notification(i64),
    Outbox(i64),
}

impl SentEmail {
    fn body(self) -> String {
        match self {
            SentEmail::Notification(id) => format!("n{id}"),
            SentEmail::Outbox(id) => format!("o{id}"),
        }
    }

    /// This email's envelope sender.
    pub fn bounce_address(self, secret: &[u8], reply_domain: &str) -> String {
        let body = self.body();
        let signature = mac(secret, &format!("bounce:{body}"));
        format!("{BOUNCE_MAILBOX}+{body}-{signature}@{reply_domain}")
    }

    /// The email a bounce address's local part (`bounces+n42-<mac>`) stands for, if its
    /// signature holds.
    pub fn from_bounce_local(local: &str, secret: &[u8]) -> Option<SentEmail> {
        let local = local.to_ascii_lowercase();
        let token = local.strip_prefix(BOUNCE_MAILBOX)?.strip_prefix('+')?;
        let (body, given) = token.rsplit_once('-')?;
        let id: i64 = body.get(1..)?.parse().ok()?;
        let email = match body.as_bytes().first()? {
            b'n' => SentEmail::Notification(id),
            b'o' => SentEmail::Outbox(id),
            _ => return None,
        };
        let expected = mac(secret, &format!("bounce:{body}"));
        (email.body() == body && constant_time_eq(expected.as_bytes(), given.as_bytes()))
            .then_some(email)
    }
}

/// What one unsubscribe link turns off: a kind of email for a user, or one conversation's
/// emails for a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsubscribeScope {
    UserKind(crate::rules::MessageKind),
    CustomerConversation(i64),
}

/// The signed, per-recipient token of a one-click unsubscribe link (RFC 8058).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeToken {
    pub person_id: i64,
    pub scope: UnsubscribeScope,
    /// Last day (days since the Unix epoch) the link works.
    pub expires_day: i64,
}

/// Why an unsubscribe link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnsubscribeError {
    #[error("unsubscribe link is malformed")]
    Malformed,
    #[error("unsubscribe link signature does not match")]
    BadSignature,
    #[error("unsubscribe link expired")]
    Expired,
}

/// How long an unsubscribe link keeps working after the email was sent.
pub const UNSUBSCRIBE_LINK_DAYS: i64 = 90;

impl UnsubscribeToken {
    pub fn encode(&self, secret: &[u8]) -> String {
        let scope = match self.scope {
            UnsubscribeScope::UserKind(kind) => format!("u.{}", kind.as_str()),
            UnsubscribeScope::CustomerConversation(id) => format!("c.{id}"),
        };
        let body = format!("unsub.{}.{scope}.{}", self.person_id, self.expires_day);
        format!("{}.{}", &body["unsub.".len()..], mac(secret, &body))
    }

    /// Verifies the signature, then the expiry against `today` (days since the Unix epoch).
    pub fn decode(token: &str, secret: &[u8], today: i64) -> Result<Self, UnsubscribeError> {
        let (body, given) = token.rsplit_once('.').ok_or(UnsubscribeError::Malformed)?;
        let parts: Vec<&str> = body.split('.').collect();
        let [person, scope, value, expires] = parts[..] else {
            return Err(UnsubscribeError::Malformed);
        };
        let expected = mac(secret, &format!("unsub.{body}"));
        if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
            return Err(UnsubscribeError::BadSignature);
        }
        let number = |s: &str| s.parse::<i64>().map_err(|_| UnsubscribeError::Malformed);
        let scope = match scope {
            "u" => UnsubscribeScope::UserKind(
                crate::rules::MessageKind::parse(value).ok_or(UnsubscribeError::Malformed)?,
            ),
            "c" => UnsubscribeScope::CustomerConversation(number(value)?),
            _ => return Err(UnsubscribeError::Malformed),
        };
        let token = UnsubscribeToken {
            person_id: number(person)?,
            scope,
            expires_day: number(expires)?,
        };
        if token.expires_day < today {
            return Err(UnsubscribeError::Expired);
        }
        Ok(token)
    }
}

/// A signed, expiring link token naming one row for one purpose (an invitation to accept, a
/// password to reset): `<id>.<expires unix seconds>.<mac>`.
pub fn sign_link(secret: &[u8], purpose: &str, id: i64, expires_at: i64) -> String {
    let body = format!("{id}.{expires_at}");
    format!("{body}.{}", mac(secret, &format!("{purpose}.{body}")))
}

/// Why a link token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature is wrong")]
    BadSignature,
    #[error("the link has expired")]
    Expired,
}

/// Verifies a link token for `purpose` at `now` (unix seconds); returns the id it names.
pub fn verify_link(secret: &[u8], purpose: &str, token: &str, now: i64) -> Result<i64, LinkError> {
    let (body, given) = token.rsplit_once('.').ok_or(LinkError::Malformed)?;
    let (id, expires) = body.split_once('.').ok_or(LinkError::Malformed)?;
    let expected = mac(secret, &format!("{purpose}.{body}"));
    if !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err(LinkError::BadSignature);
    }
    let id: i64 = id.parse().map_err(|_| LinkError::Malformed)?;
    let expires: i64 = expires.parse().map_err(|_| LinkError::Malformed)?;
    if expires < now {
        return Err(LinkError::Expired);
    }
    Ok(id)
}

/// Days since the Unix epoch, the unit of token issue and expiry dates.
pub fn epoch_day(at: chrono::DateTime<chrono::Utc>) -> i64 {
    at.timestamp().div_euclid(86_400)
}

fn mac(secret: &[u8], body: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    base32_lower(&digest[..MAC_LEN])
}

fn base32_lower(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh, globally unique Message-ID (with angle brackets) for one notification's email,
/// chosen when the notification is written and kept, so every attempt to send it carries the same id.
pub fn new_message_id(message_id: i64, recipient_id: i64, reply_domain: &str) -> String {
    let salt: [u8; 9] = rand::random();
    let salt = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(salt);
    format!("<tidings.m{message_id}.p{recipient_id}.{salt}@{reply_domain}>")
}

/// The Message-ID every email of a conversation refers to first, so mail clients thread them
/// together even when earlier notifications were skipped.
pub fn conversation_root_id(conversation_id: i64, reply_domain: &str) -> String {
    format!("<tidings.c{conversation_id}@{reply_domain}>")
}

/// Everything needed to build one notification email.
#[derive(Debug, Clone)]
pub struct OutboundEmail {
    pub from: String,
    pub to_name: String,
    pub to_address: String,
    pub reply_to: String,
    /// This email's Message-ID, with angle brackets.
    pub message_id: String,
    /// Earlier Message-IDs of the thread, oldest first; the last is the one replied to.
    pub references: Vec<String>,
    /// One-click unsubscribe URL (RFC 8058); absent for critical mail.
    pub unsubscribe_url: Option<String>,
    /// Envelope sender (Return-Path) when it differs from From: the bounce mailbox at the reply
    /// domain, so the MX relay brings bounces back to the inbound listener.
    pub envelope_from: Option<String>,
    pub content: RenderedEmail,
    /// Files attached to the email (the others are links in its text).
    pub files: Vec<OutFile>,
}

/// A file attached to an outbound email.
#[derive(Debug, Clone)]
pub struct OutFile {
    pub name: String,
    pub content_type: String,
    /// Set for an image the HTML part shows by `cid:`.
    pub content_id: Option<String>,
    pub data: Vec<u8>,
}

/// Builds a multipart/alternative message (inside multipart/mixed with its files, when it has
/// any) with threading and anti-loop headers.
pub fn build_email(email: &OutboundEmail) -> Result<Email> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Error::EmailBuild(format!("{what}: {e}"));
    let from: Mailbox = email.from.parse().map_err(|e| bad("From", &e))?;
    let to = Mailbox::new(
        Some(one_line(&email.to_name)),
        email.to_address.parse().map_err(|e| bad("To", &e))?,
    );
    let reply_to: Mailbox = email.reply_to.parse().map_err(|e| bad("Reply-To", &e))?;
    let mut builder = Email::builder()
        .from(from)
        .to(to)
        .reply_to(reply_to)
        .subject(one_line(&email.content.subject))
        .message_id(Some(email.message_id.clone()))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("Auto-Submitted"),
            "auto-generated".into(),
        ))
        .raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str("X-Auto-Response-Suppress"),
            "All".into(),
        ));
    if let Some(url) = &email.unsubscribe_url {
        builder = builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe"),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    if let Some(parent) = email.references.last() {
        builder = builder
            .in_reply_to(parent.clone())
            .references(email.references.join(" "));
    }
    if let Some(sender) = &email.envelope_from {
        let sender: lettre::Address = sender.parse().map_err(|e| bad("envelope sender", &e))?;
        let to: lettre::Address = email.to_address.parse().map_err(|e| bad("To", &e))?;
        let envelope = lettre::address::Envelope::new(Some(sender), vec![to])
            .map_err(|e| bad("envelope", &e))?;
        builder = builder.envelope(envelope);
    }
    let alternative = MultiPart::alternative()
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(email.content.text.clone()),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(email.content.html.clone()),
        );
    if email.files.is_empty() {
        return builder
            .multipart(alternative)
            .map_err(|e| bad("message", &e));
    }
    let mut mixed = MultiPart::mixed().multipart(alternative);
    for file in &email.files {
        let kind = ContentType::parse(&file.content_type)
            .unwrap_or_else(|_| ContentType::parse("application/octet-stream").expect("a type"));
        let part = match &file.content_id {
            Some(cid) => lettre::message::Attachment::new_inline(cid.clone()),
            None => lettre::message::Attachment::new(one_line(&file.name)),
        };
        mixed = mixed.singlepart(part.body(file.data.clone(), kind));
    }
    builder.multipart(mixed).map_err(|e| bad("message", &e))
}

/// Local part of the bounce mailbox at the reply domain (the envelope sender of our mail).
pub const BOUNCE_MAILBOX: &str = "bounces";

/// Masks an address for process logs: `jane.doe@example.com` → `j***@example.com`.
/// `text` as one header-safe line: each run of control characters (CR, LF, NUL, tabs…) and
/// Unicode line or paragraph separators becomes one space. Names and subjects reach headers
/// through here, whatever path wrote them.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut gap = false;
    for c in text.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push(' ');
        }
        gap = false;
        out.push(c);
    }
    out
}

pub fn mask_address(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

/// `text` (an SMTP reply, a reason) with every email address in it masked, for process logs.
pub fn mask_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') {
            out.push_str(&mask_address(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() || "<>,;:\"'()[]".contains(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test";

    #[test]
    fn a_bounce_address_names_its_email_only_with_a_good_signature() {
        for email in [SentEmail::Notification(42), SentEmail::Outbox(7)] {
            let address = email.bounce_address(SECRET, "reply.example.com");
            let local = address.split('@').next().unwrap();
            assert!(local.len() <= 64, "{local}");
            assert_eq!(SentEmail::from_bounce_local(local, SECRET), Some(email));
            assert_eq!(
                SentEmail::from_bounce_local(&local.to_uppercase(), SECRET),
                Some(email)
            );
            assert_eq!(SentEmail::from_bounce_local(local, b"another secret"), None);
        }
        let good = SentEmail::Notification(42).bounce_address(SECRET, "x");
        let forged = good.replacen("n42", "n43", 1);
        assert_eq!(
            SentEmail::from_bounce_local(forged.split('@').next().unwrap(), SECRET),
            None
        );
        for bad in [
            "bounces",
            "bounces+",
            "bounces+n-abc",
            "bounces+x1-abc",
            "bounces+n042-abc",
            "reply+n42-abc",
        ] {
            assert_eq!(SentEmail::from_bounce_local(bad, SECRET), None, "{bad}");
        }
        // A reply token's signature is no bounce signature.
        let reply = ReplyToken {
            conversation_id: 1,
            person_id: 2,
            issued_day: 3,
        }
        .encode(SECRET);
        assert_eq!(
            SentEmail::from_bounce_local(&format!("bounces+{reply}"), SECRET),
            None
        );
    }

    #[test]
    fn every_address_in_a_text_is_masked() {
        assert_eq!(
            mask_addresses("550 5.1.1 <bob@example.com>: Recipient address rejected; cc ann@x.org"),
            "550 5.1.1 <b***@example.com>: Recipient address rejected; cc a***@x.org"
        );
        assert_eq!(mask_addresses("no address here"), "no address here");
    }

    #[test]
    fn one_line_turns_each_run_of_control_characters_into_one_space() {
        assert_eq!(one_line("Eve\r\nBcc: x@evil.test"), "Eve Bcc: x@evil.test");
        assert_eq!(one_line("\r\nA\u{0}\u{2028}B\t"), "A B");
        assert_eq!(one_line("Åsa Öberg"), "Åsa Öberg");
    }

    #[test]
    fn link_tokens_are_bound_to_purpose_and_expiry() {
        let token = sign_link(b"secret-secret-secret", "invite", 42, 1_000);
        assert_eq!(
            verify_link(b"secret-secret-secret", "invite", &token, 999),
            Ok(42)
        );
        assert_eq!(
            verify_link(b"secret-secret-secret", "reset", &token, 999),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            verify_link(b"secret-secret-secret", "invite", &token, 1_001),
            Err(LinkError::Expired)
        );
        let forged = token.replacen("42", "43", 1);
        assert_eq!(
            verify_link(b"secret-secret-secret", "invite", &forged, 999),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn reply_token_round_trips_and_ignores_case() {
        let token = ReplyToken {
            conversation_id: 42,
            person_id: 7,
            issued_day: 20_000,
        };
        let encoded = token.encode(SECRET);
        assert_eq!(encoded, encoded.to_ascii_lowercase());
        assert_eq!(ReplyToken::decode(&encoded, SECRET), Ok(token));
        assert_eq!(
            ReplyToken::decode(&encoded.to_ascii_uppercase(), SECRET),
            Ok(token)
        );
        assert_eq!(
            token.address(SECRET, "reply.example.com"),
            format!("reply+{encoded}@reply.example.com")
        );
    }

    #[test]
    fn reply_token_refuses_tampering() {
        let encoded = ReplyToken {
            conversation_id: 42,
            person_id: 7,
            issued_day: 1,
        }
        .encode(SECRET);
        let forged = encoded.replacen("42-7", "42-8", 1);
        assert_eq!(
            ReplyToken::decode(&forged, SECRET),
            Err(ReplyTokenError::BadSignature)
        );
        assert_eq!(
            ReplyToken::decode(&encoded, b"another-secret-entirely"),
            Err(ReplyTokenError::BadSignature)
        );
        for bad in ["", "abc", "1-2-abc", "1-2-3-4-zz", "x-2-3-abcd"] {
            assert!(ReplyToken::decode(bad, SECRET).is_err(), "{bad}");
        }
    }

    #[test]
    fn email_carries_threading_and_anti_loop_headers() {
        let email = OutboundEmail {
            from: "Tidings <n@example.com>".into(),
            to_name: "Ann".into(),
            to_address: "ann@example.com".into(),
            reply_to: "reply+1-2-3-abc@reply.example.com".into(),
            message_id: "<b@reply.example.com>".into(),
            references: vec!["<root@x>".into(), "<a@x>".into()],
            unsubscribe_url: Some("https://t.example.com/unsubscribe/abc".into()),
            envelope_from: Some("bounces@reply.example.com".into()),
            content: RenderedEmail {
                subject: "S".into(),
                text: "t".into(),
                html: "<p>h</p>".into(),
                locale: "en".into(),
            },
            files: Vec::new(),
        };
        let raw = String::from_utf8(build_email(&email).unwrap().formatted()).unwrap();
        for header in [
            "Message-ID: <b@reply.example.com>",
            "In-Reply-To: <a@x>",
            "References: <root@x> <a@x>",
            "Auto-Submitted: auto-generated",
            "X-Auto-Response-Suppress: All",
            "Reply-To: reply+1-2-3-abc@reply.example.com",
            "multipart/alternative",
            "List-Unsubscribe: <https://t.example.com/unsubscribe/abc>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ] {
            assert!(raw.contains(header), "missing {header} in\n{raw}");
        }
    }

    #[test]
    fn unsubscribe_token_round_trips_and_refuses_forgery_and_expiry() {
        use crate::rules::MessageKind;
        let token = UnsubscribeToken {
            person_id: 7,
            scope: UnsubscribeScope::UserKind(MessageKind::ToCustomer),
            expires_day: 100,
        };
        let encoded = token.encode(SECRET);
        assert_eq!(UnsubscribeToken::decode(&encoded, SECRET, 100), Ok(token));
        assert_eq!(
            UnsubscribeToken::decode(&encoded, SECRET, 101),
            Err(UnsubscribeError::Expired)
        );
        let forged = encoded.replacen("7.", "8.", 1);
        assert_eq!(
            UnsubscribeToken::decode(&forged, SECRET, 1),
            Err(UnsubscribeError::BadSignature)
        );
        let later = encoded.replacen(".100.", ".999.", 1);
        assert_eq!(
            UnsubscribeToken::decode(&later, SECRET, 1),
            Err(UnsubscribeError::BadSignature)
        );
        let customer = UnsubscribeToken {
            person_id: 3,
            scope: UnsubscribeScope::CustomerConversation(42),
            expires_day: 5,
        };
        assert_eq!(
            UnsubscribeToken::decode(&customer.encode(SECRET), SECRET, 5),
            Ok(customer)
        );
        for bad in ["", "x", "1.u.internal.5", "1.q.x.5.abc"] {
            assert!(UnsubscribeToken::decode(bad, SECRET, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_masked() {
        assert_eq!(mask_address("jane@example.com"), "j***@example.com");
        assert_eq!(mask_address("nonsense"), "***");
    }
}
