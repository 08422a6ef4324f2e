//! Extracting the new text of a reply: each line is read as text, quote, attribution ("On …
//! wrote:"), history header block, delimiter or signature, and the reply is what comes before
//! the quoted history and the signature.

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
