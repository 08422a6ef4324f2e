//! Extracting the new text of a reply. Each line is read as text, quote, attribution ("On …
//! wrote:", over up to five lines, in any of the languages below), the start of unquoted history
//! (an "Original Message" separator or an Outlook header block), delimiter or signature. Then
//! the blocks decide the form of the reply:
//!
//! - **top post**: new text, then the attribution and quoted history: the text is the reply;
//! - **bottom post**: attribution and quotes, then new text: the text below is the reply;
//! - **inline answers**: text between quotes: the text and the quotes it answers are kept,
//!   the attribution and the trailing quotes are removed.
//!
//! Quotes without an attribution before them (the writer quoting something) are kept unless
//! they trail the text. Nothing here depends on a line being adjacent to a blank line.
//! Everything removed is returned as the quoted part, so nothing is lost.

/// A reply split into the new text and what was removed (quoted history, signature).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyParts {
    pub reply: String,
    pub quoted: String,
}

/// How a line of a reply body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Empty,
    /// A signature or separator delimiter (`-- `, `___`, `***`…).
    Delimiter,
    /// A client's "Sent from my …" line.
    Signature,
    /// A line of an attribution ("On … wrote:"), which introduces quoted history.
    Attribution,
    /// The start of unquoted history: a separator such as "-----Original Message-----", a
    /// forward, or an Outlook-style header block. Everything after it is history.
    History,
    /// A quoted line (`>`, `|`, or a supercite `AB>` prefix).
    Quote,
    Text,
}

/// Lines longer than this are never attributions, headers or signatures (and are not
/// lowercased).
const SHORT: usize = 300;

fn is_quote(t: &str) -> bool {
    let b = t.as_bytes();
    match b.first() {
        Some(b'>') => true,
        // "| quoted" as some clients quote; not a Markdown table row ("| a | b |").
        Some(b'|') => !(t.len() > 1 && t.ends_with('|') && t[1..t.len() - 1].contains('|')),
        // Supercite: "AB> quoted".
        Some(c) if c.is_ascii_alphabetic() => b
            .iter()
            .take(13)
            .position(|c| *c == b'>')
            .is_some_and(|p| p > 0 && b[..p].iter().all(u8::is_ascii_alphabetic)),
        _ => false,
    }
}

/// The text of a quoted line without its quote markers.
fn unquoted(t: &str) -> &str {
    t.trim_start_matches(['>', '|', ' '])
}

/// Whether `hay` contains `needle`. The lines compared are short and most do not even hold
/// the needle's first byte, so a scan for that byte beats building a substring searcher for
/// every line and pattern.
fn has(hay: &str, needle: &str) -> bool {
    let (hay, needle) = (hay.as_bytes(), needle.as_bytes());
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    hay.iter().enumerate().any(|(i, &b)| {
        b == first
            && hay
                .get(i + 1..i + 1 + rest.len())
                .is_some_and(|tail| tail == rest)
    })
}

/// Whether `text` starts with any of `prefixes` (the first byte is compared before the rest).
fn starts_with_any(text: &str, prefixes: &[&str]) -> bool {
    let first = text.as_bytes().first();
    prefixes
        .iter()
        .any(|p| p.as_bytes().first() == first && text.starts_with(p))
}

/// Whether `text` ends with any of `suffixes` (the last byte is compared before the rest).
fn ends_with_any(text: &str, suffixes: &[&str]) -> bool {
    let last = text.as_bytes().last();
    suffixes
        .iter()
        .any(|s| s.as_bytes().last() == last && text.ends_with(s))
}

/// Appends `t` lowercased to `out` (no-break spaces as spaces), without the Unicode tables
/// when it is ASCII (most lines are).
fn lowercase_into(t: &str, out: &mut String) {
    let from = out.len();
    if t.is_ascii() {
        out.push_str(t);
        out[from..].make_ascii_lowercase();
    } else {
        out.extend(t.chars().flat_map(char::to_lowercase).map(|c| match c {
            '\u{a0}' => ' ',
            c => c,
        }));
    }
}

pub(crate) fn lowercase(t: &str) -> String {
    let mut s = String::with_capacity(t.len());
    lowercase_into(t, &mut s);
    s
}

fn is_delimiter(line: &str, t: &str) -> bool {
    if t == "--" || line == "-- " || t == "ᐧ" {
        return true;
    }
    let b = t.as_bytes();
    b.len() >= 2
        && matches!(b[0], b'-' | b'_' | b'=' | b'*' | b'#' | b'~' | b'+')
        && b.iter().all(|c| *c == b[0])
}

fn is_signature(lower: &str) -> bool {
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
        "enviado con ",
        "inviato da",
        "verzonden met",
        "verzonden vanaf",
        "verstuurd vanaf",
        "skickat från",
        "sendt fra",
        "lähetetty ",
        "wysłane z",
        "отправлено с",
        "надіслано з",
        "iphone'umdan gönderildi",
        "从我的",
        "iphoneから送信",
    ];
    lower.len() < 120 && starts_with_any(lower, STARTS)
}

/// Verbs that end an attribution ("… wrote:"), by language, without the colon.
const VERBS: &[&str] = &[
    "wrote",
    "writes",
    "écrit",
    "ecrit",
    "schrieb",
    "geschrieben",
    "escribió",
    "escribio",
    "scritto",
    "scrisse",
    "schreef",
    "geschreven",
    "skrev",
    "skrevet",
    "skrivit",
    "pisze",
    "napisał",
    "napisała",
    "napisał(a)",
    "napsal",
    "napsala",
    "napísal",
    "napisal",
    "napisala",
    "escreveu",
    "написал",
    "написала",
    "написал(а)",
    "написав",
    "пише",
    "写道",
    "寫道",
    "kirjoitti",
    "írta",
    "yazdı",
    "a scris",
    "έγραψε",
    "כתב",
    "كتب",
    "書きました",
    "작성",
    "viết",
    "menulis",
    "kirjutas",
    "rašė",
    "rakstīja",
    "skrifaði",
];

/// The last bytes of [`VERBS`], for a one-byte test before the list is read.
const VERB_ENDINGS: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < VERBS.len() {
        let bytes = VERBS[i].as_bytes();
        table[bytes[bytes.len() - 1] as usize] = true;
        i += 1;
    }
    table
};

/// Words an attribution starts with, by language ("On", "Le", "Am", "El", "Il", "Op", "Den",
/// "Em", "W dniu", "Dne", "В"…).
const OPENERS: &[&str] = &[
    "on ", "le ", "am ", "el ", "il ", "op ", "den ", "em ", "w dniu", "dne ", "в ", "у ", "pe ",
    "în ", "στις", "tanggal", "vào", "på ", "quoting ", "citando ",
];

fn has_year(t: &str) -> bool {
    t.as_bytes()
        .windows(4)
        .any(|w| w.iter().all(u8::is_ascii_digit) && (w[0] == b'1' || w[0] == b'2'))
}

fn has_digit(t: &str) -> bool {
    t.bytes().any(|b| b.is_ascii_digit())
}

/// `lower` without a trailing colon (ASCII or full-width) and the spaces around it, if it has one.
fn without_colon(lower: &str) -> Option<&str> {
    let t = lower.trim_end();
    t.strip_suffix(':')
        .or_else(|| t.strip_suffix('：'))
        .map(str::trim_end)
}

/// Whether one (joined) lowercased line is an attribution.
fn is_attribution(lower: &str) -> bool {
    if lower.len() > SHORT * 2 {
        return false;
    }
    // "---- On … wrote ----" (Zoho) reads as "On … wrote:".
    let framed = lower.len() > 8 && lower.starts_with("--") && lower.ends_with("--");
    let lower = if framed {
        lower.trim_matches(|c: char| c == '-' || c == ' ')
    } else {
        lower
    };
    let Some(head) = without_colon(lower).or(framed.then_some(lower)) else {
        return false;
    };
    let at = lower.as_bytes().contains(&b'@');
    let year = has_year(lower);
    let opener = starts_with_any(lower, OPENERS);
    let dated = at || has_digit(lower);
    // "<date>, <name> <verb>:" in any language.
    if ends_with_any(head, VERBS) && (opener || dated) {
        return true;
    }
    if !at && !year {
        return false;
    }
    // "Am 12.03.2016 um 10:00 schrieb Jane Doe <jane@example.com>:" and similar.
    if has(lower, " schrieb ")
        || has(lower, " wrote ")
        || has(lower, " skrev ")
        || has(lower, " geschreven ")
    {
        return true;
    }
    // "<date> <name> <address>:" without a verb (Gmail in several locales).
    (at && (year || lower.as_bytes().contains(&b'<'))) || (year && lower.as_bytes().contains(&b'"'))
}

/// An attribution without its colon, right above the quote it introduces: "On … Ann
/// <ann@example.net> wrote", "2026年12月7日(月) 9:00 Ann <ann@example.net>".
fn is_bare_attribution(lower: &str) -> bool {
    // Most lines end neither in an address nor in a verb: a byte or two says so.
    let Some(&last) = lower.as_bytes().last() else {
        return false;
    };
    let addressed = last == b'>' || last == b')';
    if lower.len() > SHORT * 2
        || !(addressed || (VERB_ENDINGS[last as usize] && ends_with_any(lower, VERBS)))
    {
        return false;
    }
    let dated = has_year(lower) || has_time(lower);
    (ends_with_any(lower, VERBS) && (starts_with_any(lower, OPENERS) || has_digit(lower)))
        || (addressed && dated && lower.as_bytes().contains(&b'@'))
}

/// "2013/7/20 Sam <sam@example.com>" or "2016-03-03 17:21 GMT+01:00 Some One <…>" (Gmail's
/// older attribution): a date, then a name and address, with or without a colon.
fn is_dated_address_line(lower: &str) -> bool {
    let b = lower.as_bytes();
    b.len() >= 8
        && b[..4].iter().all(u8::is_ascii_digit)
        && matches!(b[4], b'-' | b'/' | b'.')
        && lower.as_bytes().contains(&b'@')
        && (lower.ends_with('>') || lower.ends_with(">:") || lower.ends_with(':'))
}

/// "2016-03-03 17:21 GMT+01:00 Some One": a Gmail attribution that starts with an ISO date
/// and a time, in several locales.
fn starts_with_iso_timestamp(lower: &str) -> bool {
    let b = lower.as_bytes();
    b.len() >= 16
        && b.len() < 120
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && b[10] == b' '
        && has_time(std::str::from_utf8(&b[10..16]).unwrap_or_default())
}

/// Longest first line of an attribution wrapped over several lines (clients wrap at 72–78).
const OPENING_MAX: usize = 160;

/// Could this line begin an attribution that continues on the next lines? It starts with an
/// attribution word or carries a date or an address, and it does not end a sentence.
fn opens_attribution(lower: &str) -> bool {
    // The start of a wrapped attribution is a wrapped line: short, and made of words (not a
    // URL or an encoded line).
    lower.len() <= OPENING_MAX
        && lower.as_bytes().contains(&b' ')
        && !ends_sentence(lower)
        && (starts_firmly(lower) || dated_or_addressed(lower))
}

/// Whether a line ends a sentence: `!`, `?`, `;`, an ellipsis, or a full stop after a word
/// (not after a number or an abbreviated day or month, as "28." and "déc." are).
fn ends_sentence(lower: &str) -> bool {
    if lower.ends_with(['!', '?', ';']) || lower.ends_with("..") || lower.ends_with('…') {
        return true;
    }
    let Some(head) = lower.strip_suffix('.') else {
        return false;
    };
    let word = head
        .rsplit(|c: char| !c.is_alphabetic())
        .next()
        .unwrap_or_default();
    word.chars().count() >= 4
}

/// An attribution word or a digit first: the line is the attribution's own start, not text
/// that happens to sit above one.
fn starts_firmly(lower: &str) -> bool {
    starts_with_any(lower, OPENERS) || lower.starts_with(|c: char| c.is_ascii_digit())
}

/// Whether the line holds a year, a time ("10:58") or an address, in one pass.
fn dated_or_addressed(lower: &str) -> bool {
    let b = lower.as_bytes();
    b.iter().enumerate().any(|(i, &c)| {
        c == b'@'
            || (c.is_ascii_digit()
                && b.get(i..i + 4).is_some_and(|w| {
                    (w.iter().all(u8::is_ascii_digit) && (w[0] == b'1' || w[0] == b'2'))
                        || (w[1] == b':' && w[2].is_ascii_digit() && w[3].is_ascii_digit())
                }))
    })
}

/// "10:58" somewhere in the line.
fn has_time(lower: &str) -> bool {
    lower.as_bytes().windows(4).any(|w| {
        w[0].is_ascii_digit() && w[1] == b':' && w[2].is_ascii_digit() && w[3].is_ascii_digit()
    })
}

/// Outlook-style header labels: From, Sent/Date, To, Subject in several languages, optionally bold.
fn header_label(lower: &str) -> Option<&'static str> {
    let l = lower.trim_start_matches('*');
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
        ("від:", "from"),
        ("da:", "from"),
        ("lähettäjä:", "from"),
        ("feladó:", "from"),
        ("kimden:", "from"),
        ("发件人:", "from"),
        ("发件人：", "from"),
        ("差出人:", "from"),
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
        ("enviada em:", "date"),
        ("fecha:", "date"),
        ("inviato:", "date"),
        ("data:", "date"),
        ("wysłano:", "date"),
        ("wysłane:", "date"),
        ("отправлено:", "date"),
        ("надіслано:", "date"),
        ("lähetetty:", "date"),
        ("elküldve:", "date"),
        ("gönderildi:", "date"),
        ("发送时间:", "date"),
        ("发送时间：", "date"),
        ("送信日時:", "date"),
        ("to:", "to"),
        ("à :", "to"),
        ("à:", "to"),
        ("an:", "to"),
        ("aan:", "to"),
        ("till:", "to"),
        ("til:", "to"),
        ("para:", "to"),
        ("a:", "to"),
        ("do:", "to"),
        ("кому:", "to"),
        ("vastaanottaja:", "to"),
        ("címzett:", "to"),
        ("kime:", "to"),
        ("收件人:", "to"),
        ("收件人：", "to"),
        ("宛先:", "to"),
        ("cc:", "to"),
        ("subject:", "subject"),
        ("objet :", "subject"),
        ("objet:", "subject"),
        ("betreff:", "subject"),
        ("onderwerp:", "subject"),
        ("ämne:", "subject"),
        ("emne:", "subject"),
        ("asunto:", "subject"),
        ("assunto:", "subject"),
        ("oggetto:", "subject"),
        ("temat:", "subject"),
        ("тема:", "subject"),
        ("aihe:", "subject"),
        ("tárgy:", "subject"),
        ("konu:", "subject"),
        ("主题:", "subject"),
        ("主题：", "subject"),
        ("件名:", "subject"),
    ];
    // Every label ends in a colon (ASCII or full-width) within its first 24 bytes.
    let head = &l.as_bytes()[..l.len().min(24)];
    if !head.contains(&b':') && !head.windows(3).any(|w| w == "：".as_bytes()) {
        return None;
    }
    let first = l.as_bytes().first();
    LABELS
        .iter()
        .filter(|(p, _)| p.as_bytes().first() == first)
        .find(|(p, _)| {
            l.starts_with(p)
                || p.strip_suffix(':').is_some_and(|word| {
                    // "*From:*" and "From*:" as bold labels are written in plain text.
                    l.strip_prefix(word)
                        .is_some_and(|rest| rest.starts_with(":*") || rest.starts_with("*:"))
                })
        })
        .map(|(_, k)| *k)
}

/// "Original message" and "forwarded message" as clients write them in their separators, by
/// language.
const HISTORY_TITLES: &[&str] = &[
    "original message",
    "forwarded message",
    "ursprüngliche nachricht",
    "originalnachricht",
    "original-nachricht",
    "weitergeleitete nachricht",
    "message d'origine",
    "message original",
    "message transféré",
    "mensaje original",
    "mensaje reenviado",
    "messaggio originale",
    "messaggio inoltrato",
    "oorspronkelijk bericht",
    "oorspronkelijke bericht",
    "doorgestuurd bericht",
    "mensagem original",
    "mensagem encaminhada",
    "ursprungligt meddelande",
    "vidarebefordrat meddelande",
    "oprindelig meddelelse",
    "videresendt meddelelse",
    "opprinnelig melding",
    "videresendt melding",
    "oryginalna wiadomość",
    "wiadomość oryginalna",
    "przekazana wiadomość",
    "исходное сообщение",
    "пересланное сообщение",
    "původní zpráva",
    "alkuperäinen viesti",
    "eredeti üzenet",
    "orijinal mesaj",
    "元のメッセージ",
    "転送されたメッセージ",
    "原始邮件",
    "原始郵件",
    "转发的邮件",
    "轉寄的郵件",
    "원본 메시지",
];

/// A separator framed by dashes, underscores or equals signs around a localized "original
/// message" or "forwarded message" title ("-------- Ursprüngliche Nachricht --------").
#[inline(never)]
fn is_titled_separator(lower: &str) -> bool {
    let frame = |c: char| matches!(c, '-' | '_' | '=' | '*' | ' ' | '\u{a0}');
    if !lower.starts_with(frame) {
        return false;
    }
    let title = lower.trim_matches(frame);
    title.len() < lower.len()
        && (lower.contains("--") || lower.contains("__") || lower.contains("=="))
        && HISTORY_TITLES
            .iter()
            .any(|t| title == *t || title.strip_suffix(':').is_some_and(|t2| t2.trim() == *t))
}

/// A separator that starts forwarded or quoted history.
fn is_separator(lower: &str) -> bool {
    if matches!(lower.as_bytes().first(), Some(b'-' | b'_' | b'=' | b'*'))
        && is_titled_separator(lower)
    {
        return true;
    }
    if has(lower, "original message")
        && lower
            .trim_matches(|c: char| c == '-' || c == ' ' || c == '_')
            .len()
            < 40
    {
        return true;
    }
    if lower.starts_with("begin forwarded message") {
        return true;
    }
    // Every other separator is framed by dashes.
    if !lower.as_bytes().contains(&b'-') {
        return false;
    }
    starts_with_any(
        lower,
        &[
            "---------- forwarded message",
            "-------- forwarded message",
            "-------- weitergeleitete nachricht",
            "---------- message transféré",
            "-------- message transféré",
        ],
    ) || [
        "-----ursprüngliche nachricht-----",
        "-----message d'origine-----",
        "-----oorspronkelijk bericht-----",
        "-----mensaje original-----",
        "-----messaggio originale-----",
        "-----mensagem original-----",
        "-----ursprungligt meddelande-----",
        "-----opprinnelig melding-----",
        "-----oprindelig meddelelse-----",
        "-----исходное сообщение-----",
        "-----wiadomość oryginalna-----",
        "-----původní zpráva-----",
    ]
    .iter()
    .any(|s| has(lower, s))
}

struct Lines<'a> {
    lines: Vec<&'a str>,
    /// Trimmed and lowercased, for lines that are neither empty, quoted nor long: a range of
    /// `folded` (one allocation for the whole body).
    lower: Vec<Option<(u32, u32)>>,
    folded: String,
}

impl<'a> Lines<'a> {
    fn new(body: &'a str) -> Self {
        let lines: Vec<&str> = body
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        let mut folded = String::new();
        let lower = lines
            .iter()
            .map(|l| {
                let t = l.trim();
                (!t.is_empty() && t.len() <= SHORT && !t.starts_with('>')).then(|| {
                    let from = folded.len() as u32;
                    lowercase_into(t, &mut folded);
                    (from, folded.len() as u32)
                })
            })
            .collect();
        Lines {
            lines,
            lower,
            folded,
        }
    }

    fn lower(&self, i: usize) -> Option<&str> {
        let (from, to) = (*self.lower.get(i)?)?;
        Some(&self.folded[from as usize..to as usize])
    }

    /// How many lines the attribution starting at `i` spans, if one does. `nested` looks no
    /// further ahead for competing starts, so the work per line stays bounded.
    fn attribution(&self, i: usize, nested: bool) -> Option<usize> {
        let lower = self.lower(i)?;
        if is_attribution(lower) || (is_bare_attribution(lower) && self.quote_follows(i + 1)) {
            return Some(1);
        }
        if (is_dated_address_line(lower) && self.next_is_quote(i + 1))
            || starts_with_iso_timestamp(lower)
        {
            return Some(1);
        }
        if !opens_attribution(lower) {
            return None;
        }
        // Wrapped over up to five lines (a client may break the address onto its own lines,
        // with blank lines between, and even quote the verb); never when the next line starts
        // an attribution of its own.
        if !nested && !starts_firmly(lower) && self.attribution(i + 1, true).is_some() {
            return None;
        }
        let mut joined = lower.to_string();
        for extra in 1..=4 {
            let j = i + extra;
            let Some(line) = self.lines.get(j) else { break };
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            let part = if t.starts_with('>') { unquoted(t) } else { t };
            if part.len() > SHORT || joined.len() > SHORT {
                break;
            }
            let part = match self.lower(j) {
                Some(lower) => std::borrow::Cow::Borrowed(lower),
                None => std::borrow::Cow::Owned(lowercase(part)),
            };
            // A line that starts with an attribution word and is an attribution of its own is
            // tried on its own; a sentence never ends inside an attribution. A line that
            // starts with a date or a time may go on this one ("On Mon, Dec 7," / "2026 at
            // 9:00 AM Ann <ann@example.net> wrote:").
            if (!nested && starts_with_any(&part, OPENERS) && self.attribution(j, true).is_some())
                || ends_sentence(joined.as_str())
            {
                break;
            }
            joined.push(' ');
            joined.push_str(&part);
            if is_attribution(&joined)
                || (is_bare_attribution(&joined) && self.quote_follows(j + 1))
            {
                return Some(extra + 1);
            }
            if !nested && starts_firmly(&part) && self.attribution(j, true).is_some() {
                break;
            }
            if t.starts_with('>') {
                break;
            }
        }
        None
    }

    /// Whether the line before the attribution at `i` is its wrapped start: the attribution
    /// starts with the rest of an address (`<ann@…`, `@example.net>`) after a name, or with
    /// the rest of a date after its start ("man. 7. des." / "2026 kl. 09:00 skrev …").
    fn wrapped_before(&self, i: usize) -> bool {
        let (Some(previous), Some(first)) = (self.lower(i - 1), self.lower(i)) else {
            return false;
        };
        if previous.len() > 80 || ends_sentence(previous) || is_quote(previous) {
            return false;
        }
        if first.starts_with(['<', '(', '@']) {
            return true;
        }
        first.starts_with(|c: char| c.is_ascii_digit())
            && previous.len() <= 40
            && has_digit(previous)
            && !previous.ends_with(':')
    }

    /// Whether quoted text follows from line `from` on (the next non-empty line; only
    /// non-empty lines ask, so a run of blank lines is read once), and not the quoted end of a
    /// wrapped attribution ("> wrote:", as some clients quote the verb).
    fn quote_follows(&self, from: usize) -> bool {
        let next = self.lines[from.min(self.lines.len())..]
            .iter()
            .map(|l| l.trim())
            .find(|t| !t.is_empty());
        next.is_some_and(|t| {
            is_quote(t) && {
                let rest = unquoted(t);
                !(rest.len() < 40 && without_colon(rest).is_some())
            }
        })
    }

    fn next_is_quote(&self, from: usize) -> bool {
        self.lines[from.min(self.lines.len())..]
            .iter()
            .map(|l| l.trim())
            .find(|t| !t.is_empty())
            .is_some_and(is_quote)
    }

    /// Whether an Outlook-style header block starts at `i`: From, then two more labels within
    /// six lines.
    fn header_block(&self, i: usize) -> bool {
        self.lower(i).and_then(header_label) == Some("from")
            && (i + 1..(i + 7).min(self.lines.len()))
                .filter_map(|j| self.lower(j).and_then(header_label))
                .filter(|k| *k != "from")
                .count()
                >= 2
    }

    fn classify(&self) -> Vec<Line> {
        let mut kinds = vec![Line::Text; self.lines.len()];
        let mut i = 0;
        let mut code = false;
        while i < self.lines.len() {
            let line = self.lines[i];
            let t = line.trim();
            // A fenced code block is text, whatever its lines look like.
            if t.starts_with("```") {
                code = !code;
            }
            kinds[i] = if code || t.starts_with("```") {
                Line::Text
            } else if t.is_empty() {
                Line::Empty
            } else if let Some(span) = self.attribution(i, false) {
                for k in &mut kinds[i..i + span] {
                    *k = Line::Attribution;
                }
                if i > 0 && kinds[i - 1] == Line::Text && self.wrapped_before(i) {
                    kinds[i - 1] = Line::Attribution;
                }
                i += span;
                continue;
            } else if is_quote(t) {
                Line::Quote
            } else if let Some(lower) = self.lower(i) {
                if is_separator(lower) || self.header_block(i) {
                    Line::History
                } else if is_delimiter(line, t) {
                    Line::Delimiter
                } else if is_signature(lower) {
                    Line::Signature
                } else {
                    Line::Text
                }
            } else {
                Line::Text
            };
            i += 1;
        }
        kinds
    }
}

/// A run of lines of one kind (empty lines between lines of a kind belong to the run).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    /// Quotes that are history: after an attribution, or holding a quoted attribution.
    History,
    /// Quotes the writer quoted themselves (no attribution introduces them).
    OwnQuote,
    Attribution,
}

/// Splits a plain-text body into the new text of the reply and what was removed: quoted or
/// forwarded history, attributions, the signature, and trailing quotes.
pub fn split_reply(body: &str) -> ReplyParts {
    let lines = Lines::new(body);
    let kinds = lines.classify();
    let all = &lines.lines;
    // A body that starts with unquoted history (a forward, an answer written below a header
    // block): the header block up to its first blank line is history, and what follows is read
    // as the text.
    let mut start = kinds.iter().position(|k| *k != Line::Empty).unwrap_or(0);
    if kinds.get(start) == Some(&Line::History) {
        while start < all.len() && kinds[start] != Line::Empty {
            start += 1;
        }
    }
    // The text ends at the first unquoted history, or at the first delimiter or client
    // signature after some text.
    let mut seen_text = false;
    let mut end = all.len();
    for (i, k) in kinds.iter().enumerate().skip(start) {
        match k {
            Line::History => {
                end = i;
                break;
            }
            Line::Delimiter | Line::Signature if seen_text => {
                end = i;
                break;
            }
            Line::Text => seen_text = true,
            _ => {}
        }
    }
    // Blocks between start and end.
    let mut blocks: Vec<(Block, usize, usize)> = Vec::new();
    let mut after_attribution = false;
    for (i, kind) in kinds.iter().enumerate().take(end).skip(start) {
        let block = match kind {
            Line::Empty => continue,
            // Once an attribution has been seen, later quotes are of the same quoted mail.
            Line::Text | Line::Delimiter | Line::Signature | Line::History => Block::Text,
            Line::Attribution => {
                after_attribution = true;
                Block::Attribution
            }
            Line::Quote => {
                let quoted_attribution = lines.attribution_of_quoted(i);
                if after_attribution || quoted_attribution {
                    Block::History
                } else {
                    Block::OwnQuote
                }
            }
        };
        match blocks.last_mut() {
            Some((b, _, last)) if *b == block => *last = i,
            Some((b, _, last)) if *b == Block::OwnQuote && block == Block::History => {
                *b = Block::History;
                *last = i;
            }
            _ => blocks.push((block, i, i)),
        }
    }
    // An attribution right above unquoted text, below some text, starts unquoted history:
    // the client did not quote the mail it answers.
    if let Some(cut) = blocks
        .windows(2)
        .position(|w| w[0].0 == Block::Attribution && w[1].0 == Block::Text)
        && blocks[..cut].iter().any(|(b, _, _)| *b == Block::Text)
    {
        blocks.truncate(cut);
    }
    // Quotes followed by no text are history too, once there is text before them.
    let last_text = blocks.iter().rposition(|(b, _, _)| *b == Block::Text);
    let first_text = blocks.iter().position(|(b, _, _)| *b == Block::Text);
    let mut keep = vec![false; all.len()];
    if let (Some(first), Some(last)) = (first_text, last_text) {
        let history_before = blocks[..first]
            .iter()
            .any(|(b, _, _)| matches!(b, Block::History | Block::Attribution));
        // Inline answers alternate: history between two pieces of text, and history before
        // the first or after the last ("text, quote, text" alone is a top post whose quoted
        // mail ended in unquoted lines).
        let histories = blocks
            .iter()
            .filter(|(b, _, _)| *b == Block::History)
            .count();
        let history_between = histories >= 2
            && blocks[first..last]
                .iter()
                .any(|(b, _, _)| *b == Block::History);
        // Inline answers (history between pieces of text): from the quote the first text
        // answers. Bottom post (history, then only text): the text alone. Top post: the text
        // before the history, with any quotes of the writer's own that lead it.
        let from = if history_between {
            blocks[..first]
                .iter()
                .rposition(|(b, _, _)| *b == Block::History)
                .unwrap_or(first)
        } else if history_before {
            first
        } else {
            blocks[..first]
                .iter()
                .position(|(b, _, _)| *b == Block::OwnQuote)
                .unwrap_or(first)
        };
        let to = if history_between || history_before {
            last
        } else {
            blocks[first..]
                .iter()
                .position(|(b, _, _)| matches!(b, Block::History | Block::Attribution))
                .and_then(|h| {
                    blocks[first..first + h]
                        .iter()
                        .rposition(|(b, _, _)| *b == Block::Text)
                })
                .map_or(last, |t| first + t)
        };
        let (from_line, to_line) = (blocks[from].1, blocks[to].2);
        for i in from_line..=to_line {
            keep[i] = kinds[i] != Line::Attribution;
        }
    } else if blocks.iter().all(|(b, _, _)| *b == Block::OwnQuote) && !blocks.is_empty() {
        // Quotes are all there is: they are the writer's.
        for k in &mut keep[blocks[0].1..=blocks[blocks.len() - 1].2] {
            *k = true;
        }
    }
    let mut reply = String::new();
    let mut quoted = String::new();
    let (mut reply_gap, mut quoted_gap) = (false, false);
    for (i, line) in all.iter().enumerate() {
        let (out, gap) = if keep[i] {
            (&mut reply, &mut reply_gap)
        } else {
            (&mut quoted, &mut quoted_gap)
        };
        if line.trim().is_empty() {
            *gap = !out.is_empty();
            continue;
        }
        if *gap {
            out.push('\n');
        }
        *gap = false;
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(line.trim_end());
    }
    ReplyParts { reply, quoted }
}

impl Lines<'_> {
    /// Whether the quoted line `i` is a quoted attribution (history quoting history).
    fn attribution_of_quoted(&self, i: usize) -> bool {
        let t = unquoted(self.lines[i].trim());
        // An attribution ends in a colon, or is framed by dashes.
        t.len() <= SHORT && t.ends_with([':', '：', '-']) && is_attribution(&lowercase(t))
    }
}

#[cfg(test)]
mod tests {
    use super::split_reply;

    #[test]
    fn new_text_directly_against_the_attribution_is_kept() {
        let parts = split_reply(
            "Hello\nOn Tue, Dec 1, 2026 at 10:00 AM Ann Example <ann@example.com> wrote:\n> old\n",
        );
        assert_eq!(parts.reply, "Hello");
        assert!(parts.quoted.starts_with("On Tue"), "{parts:?}");
    }

    #[test]
    fn wrapped_attributions_in_other_languages() {
        for body in [
            "Merci !\nLe mar. 1 déc. 2026 à 10:00, Ann Example <ann@example.com> a\nécrit :\n> old\n",
            "Danke\nAm Di., 1. Dez. 2026 um 10:00 Uhr schrieb Ann Example <\nann@example.com>:\n> alt\n",
            "Gracias\nEl mar, 1 dic 2026 a las 10:00, Ann Example (<ann@example.com>)\nescribió:\n> viejo\n",
        ] {
            let parts = split_reply(body);
            assert_eq!(parts.reply.lines().count(), 1, "{body:?}: {parts:?}");
            assert!(
                parts.quoted.contains("old")
                    || parts.quoted.contains("alt")
                    || parts.quoted.contains("viejo")
            );
        }
    }

    #[test]
    fn a_bottom_post_directly_under_the_quote() {
        let parts = split_reply(
            "On Tue, Dec 1, 2026 at 10:00 AM Ann <ann@example.com> wrote:\n> Is it fixed?\n> Please check.\nYes, it works now.\n",
        );
        assert_eq!(parts.reply, "Yes, it works now.");
        assert!(parts.quoted.contains("Is it fixed?"));
    }

    #[test]
    fn inline_answers_keep_the_quotes_but_not_the_attribution() {
        let parts = split_reply(
            "On Tue, Dec 1, 2026 at 10:00 AM Ann <ann@example.com> wrote:\n> First question?\n\nFirst answer.\n\n> Second question?\n\nSecond answer.\n\n> Bye\n",
        );
        assert_eq!(
            parts.reply,
            "> First question?\n\nFirst answer.\n\n> Second question?\n\nSecond answer."
        );
        assert!(parts.quoted.starts_with("On Tue"));
        assert!(parts.quoted.ends_with("> Bye"));
    }

    #[test]
    fn a_sentence_mentioning_writing_is_text() {
        let body = "When I finally\nfigured it out, I wrote one of my own:\n\nhttp://example.com/2017-02-18-guide\n";
        assert_eq!(split_reply(body).reply, body.trim_end());
    }

    #[test]
    fn hostile_bodies_finish() {
        // Every line could open an attribution: a competing start is looked for one level deep
        // only, never recursively.
        let digits = "1 a\n".repeat(20_000);
        assert_eq!(split_reply(&digits).reply.lines().count(), 20_000);
        let long_quote = format!("Hi\n{}\n", ">".repeat(800_000));
        assert_eq!(split_reply(&long_quote).reply, "Hi");
        let attributions = "On 1 Jan 2026 a <a@b.c> wrote:\n".repeat(10_000);
        assert_eq!(split_reply(&attributions).reply, "");
    }

    #[test]
    fn leading_and_own_quotes_are_kept() {
        let body = "> This is a quote.\n\nAnd this is some text.\n";
        assert_eq!(
            split_reply(body).reply,
            "> This is a quote.\n\nAnd this is some text."
        );
    }
}

#[cfg(test)]
mod language_tests {
    use super::split_reply;

    /// Each attribution as a client in that language writes it, on one line, wrapped over two
    /// or three lines (inside `<…>` too), and without its colon.
    const ATTRIBUTIONS: &[(&str, &str)] = &[
        (
            "en",
            "On Mon, Dec 7, 2026 at 9:00 AM Ann Example <ann@example.net> wrote:",
        ),
        (
            "de",
            "Am Mo., 7. Dez. 2026 um 09:00 Uhr schrieb Ann Example <ann@example.net>:",
        ),
        (
            "fr",
            "Le lun. 7 déc. 2026 à 09:00, Ann Example <ann@example.net> a écrit :",
        ),
        (
            "es",
            "El lun, 7 dic 2026 a las 9:00, Ann Example (<ann@example.net>) escribió:",
        ),
        (
            "it",
            "Il giorno lun 7 dic 2026 alle ore 09:00 Ann Example <ann@example.net> ha scritto:",
        ),
        (
            "nl",
            "Op ma 7 dec. 2026 om 09:00 schreef Ann Example <ann@example.net>:",
        ),
        (
            "pt",
            "Em seg., 7 de dez. de 2026 às 09:00, Ann Example <ann@example.net> escreveu:",
        ),
        (
            "sv",
            "Den mån 7 dec. 2026 kl 09:00 skrev Ann Example <ann@example.net>:",
        ),
        (
            "da",
            "Den man. 7. dec. 2026 kl. 09.00 skrev Ann Example <ann@example.net>:",
        ),
        (
            "no",
            "man. 7. des. 2026 kl. 09:00 skrev Ann Example <ann@example.net>:",
        ),
        (
            "pl",
            "W dniu pon., 7 gru 2026 o 09:00 Ann Example <ann@example.net> napisał(a):",
        ),
        (
            "ru",
            "пн, 7 дек. 2026 г. в 09:00, Ann Example <ann@example.net>:",
        ),
        (
            "ja",
            "2026年12月7日(月) 9:00 Ann Example <ann@example.net>:",
        ),
        (
            "zh",
            "Ann Example <ann@example.net> 于2026年12月7日周一 09:00写道：",
        ),
    ];

    thread_local! {
        static WRONG: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn check(lang: &str, attribution: &str) {
        let body = format!("Thanks, it works now.\n\n{attribution}\n> Try restarting it.\n> Ann\n");
        let parts = split_reply(&body);
        if parts.reply != "Thanks, it works now." || !parts.quoted.contains("Try restarting") {
            WRONG.with(|w| {
                w.borrow_mut()
                    .push(format!("{lang}: {attribution:?} -> {:?}", parts.reply))
            });
        }
    }

    fn verdict() {
        let wrong = WRONG.with(|w| std::mem::take(&mut *w.borrow_mut()));
        assert!(
            wrong.is_empty(),
            "{} wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn i3_attributions_in_fourteen_languages_on_one_line() {
        for (lang, line) in ATTRIBUTIONS {
            check(lang, line);
        }
        verdict();
    }

    #[test]
    fn i3_attributions_wrapped_over_two_and_three_lines() {
        for (lang, line) in ATTRIBUTIONS {
            // Wrapped before the address, and inside it.
            if let Some(at) = line.find('<') {
                check(lang, &format!("{}\n{}", line[..at].trim_end(), &line[at..]));
                let inner = line[at..].find('@').map(|p| at + p).unwrap();
                check(lang, &format!("{}\n{}", &line[..inner], &line[inner..]));
            }
            // Over three lines.
            let words: Vec<&str> = line.split(' ').collect();
            if words.len() >= 6 {
                let third = words.len() / 3;
                check(
                    lang,
                    &format!(
                        "{}\n{}\n{}",
                        words[..third].join(" "),
                        words[third..2 * third].join(" "),
                        words[2 * third..].join(" ")
                    ),
                );
            }
        }
        verdict();
    }

    #[test]
    fn i3_attributions_without_their_colon() {
        for (lang, line) in ATTRIBUTIONS {
            let bare = line.trim_end_matches([':', '：', ' ']);
            check(lang, bare);
        }
        verdict();
    }

    #[test]
    fn i3_localized_original_message_separators_and_their_headers_are_quote() {
        const SEPARATORS: &[&str] = &[
            "-------- Original message --------",
            "-----Original Message-----",
            "-------- Ursprüngliche Nachricht --------",
            "-------- Message d'origine --------",
            "-------- Mensaje original --------",
            "-------- Messaggio originale --------",
            "-------- Oorspronkelijk bericht --------",
            "-------- Mensagem original --------",
            "-------- Ursprungligt meddelande --------",
            "-------- Oprindelig meddelelse --------",
            "-------- Opprinnelig melding --------",
            "-------- Oryginalna wiadomość --------",
            "-------- Исходное сообщение --------",
            "-------- 元のメッセージ --------",
            "-------- 原始邮件 --------",
            "------------------ 原始邮件 ------------------",
            "---- Original Message ----",
        ];
        for separator in SEPARATORS {
            let body = format!(
                "Fixed, thanks.\n\n{separator}\nFrom: Ann <ann@example.net>\nDate: 7/12/2026\n\
                 To: support@example.com\nSubject: Printer\n\nTry restarting it.\n"
            );
            let parts = split_reply(&body);
            if parts.reply != "Fixed, thanks." || !parts.quoted.contains("Try restarting") {
                WRONG.with(|w| {
                    w.borrow_mut()
                        .push(format!("{separator:?} -> {:?}", parts.reply))
                });
            }
        }
        verdict();
    }
}
