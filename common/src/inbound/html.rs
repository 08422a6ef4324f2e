//! HTML mail to text with its structure: block elements break lines, `<br>` is a line break,
//! list items keep their markers, table cells are separated, links keep their text, and
//! `<blockquote>` becomes `> ` quoted lines. The quote containers of the common clients are
//! recognised:
//!
//! - whose subtree is the quoted history (rendered quoted): Gmail's `gmail_quote`, Yahoo's
//!   `yahoo_quoted`, Thunderbird's `moz-cite-prefix`, ProtonMail's `protonmail_quote`, Apple
//!   Mail's `AppleOriginalContents` and `blockquote type="cite"`;
//! - after which everything is history: Outlook's `divRplyFwdMsg` and `appendonsend`,
//!   Outlook.com's `<hr id="stopSpelling">`, Outlook for Mac's `OLK_SRC_BODY_SECTION`.
//!
//! An `<hr>` followed by a From/Sent/To/Subject block needs nothing here: the lines come out
//! as a header block, which the reply extractor reads as history.
//!
//! A single pass over the bytes, with no tree: malformed markup (unclosed, misnested or
//! unknown tags) still yields text.

/// The text of an HTML body, and where the history a client marked starts in it (a byte
/// offset into `text`), if a container says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HtmlText {
    pub text: String,
    pub history_at: Option<usize>,
}

/// Deepest quote nesting written as `>` markers; deeper quotes stay at this depth.
const MAX_DEPTH: usize = 8;

struct Element {
    name: String,
    /// An Outlook `MsoNormal` paragraph: a line, not a paragraph.
    line: bool,
    /// Raises the quote depth while open.
    quote: bool,
    /// Its content is not text (`style`, `script`, hidden elements…).
    skip: bool,
    /// A list: `Some(n)` numbers its items from n, `None` marks them with `-`.
    list: Option<Option<u32>>,
}

struct Writer {
    out: String,
    depth: usize,
    /// At the start of a line (nothing written on it yet).
    line_start: bool,
    /// A space is owed before the next text on this line.
    space: bool,
    history_at: Option<usize>,
}

impl Writer {
    fn text(&mut self, s: &str, pre: bool) {
        for c in s.chars() {
            if pre {
                if c == '\n' {
                    self.newline();
                } else {
                    self.put(c);
                }
            } else if c.is_whitespace() && c != '\u{a0}' {
                self.space = !self.line_start;
            } else {
                if self.space {
                    self.out.push(' ');
                    self.space = false;
                }
                self.put(if c == '\u{a0}' { ' ' } else { c });
            }
        }
    }

    fn put(&mut self, c: char) {
        if self.line_start {
            for _ in 0..self.depth.min(MAX_DEPTH) {
                self.out.push_str("> ");
            }
            self.line_start = false;
        }
        self.out.push(c);
    }

    /// Ends the current line, written or not (a `<br>`).
    fn newline(&mut self) {
        if self.line_start && self.depth > 0 {
            for _ in 0..self.depth.min(MAX_DEPTH) {
                self.out.push('>');
            }
        } else if !self.line_start {
            // Trailing spaces are never wanted.
            let trimmed = self.out.trim_end_matches(' ').len();
            self.out.truncate(trimmed);
        }
        self.out.push('\n');
        self.line_start = true;
        self.space = false;
    }

    /// Starts a new line unless at the start of one (a block boundary).
    fn block(&mut self) {
        if !self.line_start {
            self.newline();
        }
        self.space = false;
    }

    /// A blank line before what follows (paragraphs, headings).
    fn paragraph(&mut self) {
        self.block();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") && !self.out.ends_with(">\n") {
            self.newline();
        }
    }

    fn mark_history(&mut self) {
        if self.history_at.is_none() {
            self.block();
            self.history_at = Some(self.out.len());
        }
    }
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "div"
            | "p"
            | "li"
            | "ul"
            | "ol"
            | "dl"
            | "dt"
            | "dd"
            | "tr"
            | "table"
            | "tbody"
            | "thead"
            | "tfoot"
            | "blockquote"
            | "pre"
            | "section"
            | "article"
            | "header"
            | "footer"
            | "nav"
            | "aside"
            | "main"
            | "address"
            | "center"
            | "form"
            | "fieldset"
            | "figure"
            | "figcaption"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "body"
            | "html"
    )
}

fn is_void(name: &str) -> bool {
    matches!(
        name,
        "br" | "hr"
            | "img"
            | "meta"
            | "link"
            | "input"
            | "wbr"
            | "col"
            | "area"
            | "base"
            | "source"
            | "track"
            | "embed"
            | "param"
    )
}

/// A tag's attribute value, lowercased (`class`, `id`, `type`, `style`).
fn attribute(attrs: &str, name: &str) -> Option<String> {
    let lower = attrs.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(found) = lower[from..].find(name) {
        let at = from + found;
        from = at + name.len();
        let before_ok =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'-');
        let rest = lower[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or_default(),
            _ => rest
                .split(|c: char| c.is_whitespace() || c == '>')
                .next()
                .unwrap_or_default(),
        };
        return Some(value.to_string());
    }
    None
}

/// Which quote container, if any, a start tag opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// The element's own subtree is the quoted history.
    Subtree,
    /// The element and everything after it are history.
    Rest,
}

fn container(name: &str, attrs: &str) -> Option<Container> {
    if attrs.is_empty() {
        return None;
    }
    let class = attribute(attrs, "class").unwrap_or_default();
    let id = attribute(attrs, "id").unwrap_or_default();
    let has = |v: &str, token: &str| v.split_whitespace().any(|c| c.ends_with(token));
    if id.ends_with("divrplyfwdmsg")
        || id.ends_with("appendonsend")
        || id.ends_with("olk_src_body_section")
        || (name == "hr" && id.ends_with("stopspelling"))
    {
        return Some(Container::Rest);
    }
    if has(&class, "gmail_quote")
        || has(&class, "gmail_quote_container")
        || has(&class, "yahoo_quoted")
        || has(&class, "moz-cite-prefix")
        || has(&class, "protonmail_quote")
        || id.ends_with("appleoriginalcontents")
        || (name == "blockquote" && attribute(attrs, "type").as_deref() == Some("cite"))
    {
        return Some(Container::Subtree);
    }
    None
}

fn hidden(attrs: &str) -> bool {
    attribute(attrs, "style").is_some_and(|s| {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        s.contains("display:none")
    })
}

/// Decodes one character reference (`amp`, `#39`, `#x2019`…), without `&` and `;`.
fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return char::from_u32(code).filter(|c| *c != '\0');
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "hellip" => '…',
        "mdash" => '—',
        "ndash" => '–',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "bull" => '•',
        "middot" => '·',
        "euro" => '€',
        "pound" => '£',
        "eacute" => 'é',
        "egrave" => 'è',
        "agrave" => 'à',
        "ccedil" => 'ç',
        "uuml" => 'ü',
        "ouml" => 'ö',
        "auml" => 'ä',
        "szlig" => 'ß',
        "zwnj" | "zwj" | "shy" => '\u{200b}',
        _ => return None,
    })
}

fn decode_into(text: &str, buf: &mut String) {
    buf.clear();
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        buf.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let end = after
            .bytes()
            .take(12)
            .position(|b| b == b';')
            .and_then(|e| entity(&after[..e]).map(|c| (e, c)));
        match end {
            Some((e, c)) => {
                if c != '\u{200b}' {
                    buf.push(c);
                }
                rest = &after[e + 1..];
            }
            None => {
                buf.push('&');
                rest = after;
            }
        }
    }
    buf.push_str(rest);
}

/// Converts an HTML body to text.
pub fn to_text(html: &str) -> HtmlText {
    let mut w = Writer {
        out: String::with_capacity(html.len() / 2),
        depth: 0,
        line_start: true,
        space: false,
        history_at: None,
    };
    let mut stack: Vec<Element> = Vec::new();
    // How many elements of each name are open on the stack.
    let mut open: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut skip = 0usize;
    let mut pre = 0usize;
    let mut decoded = String::new();
    let mut rest = html;
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if skip == 0 {
                decode_into(rest, &mut decoded);
                w.text(&decoded, pre > 0);
            }
            break;
        };
        if lt > 0 && skip == 0 {
            decode_into(&rest[..lt], &mut decoded);
            w.text(&decoded, pre > 0);
        }
        rest = &rest[lt..];
        // Comments, doctype, CDATA, processing instructions.
        if let Some(comment) = rest.strip_prefix("<!--") {
            rest = comment.find("-->").map_or("", |e| &comment[e + 3..]);
            continue;
        }
        if rest.starts_with("<!") || rest.starts_with("<?") {
            rest = rest.find('>').map_or("", |e| &rest[e + 1..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            // An unterminated tag: the rest is text.
            if skip == 0 {
                decode_into(rest, &mut decoded);
                w.text(&decoded, pre > 0);
            }
            break;
        };
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        let closing = tag.starts_with('/');
        let tag = tag.trim_start_matches('/');
        let name_end = tag
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(tag.len());
        let name = tag[..name_end].to_ascii_lowercase();
        if name.is_empty() || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            // "a < b" written unescaped.
            if skip == 0 {
                w.text("<", pre > 0);
                decode_into(tag, &mut decoded);
                w.text(&decoded, pre > 0);
                w.text(">", pre > 0);
            }
            continue;
        }
        let attrs = &tag[name_end..];
        if closing {
            // An end tag nothing opened is ignored without searching the stack, so a flood of
            // them costs nothing; a matched one pops what it closes (each element once).
            if open.get(name.as_str()).is_none_or(|n| *n == 0) {
                continue;
            }
            while let Some(element) = stack.pop() {
                if let Some(n) = open.get_mut(element.name.as_str()) {
                    *n -= 1;
                }
                let done = element.name == name;
                close(&mut w, &element, &mut skip, &mut pre);
                if done {
                    break;
                }
            }
            continue;
        }
        if skip > 0 {
            if !is_void(&name) && !tag.ends_with('/') {
                *open.entry(name.clone()).or_default() += 1;
                stack.push(Element {
                    name,
                    line: false,
                    quote: false,
                    skip: true,
                    list: None,
                });
                skip += 1;
            }
            continue;
        }
        let found = container(&name, attrs);
        if found == Some(Container::Rest) {
            w.mark_history();
        }
        match name.as_str() {
            "br" => {
                w.newline();
                continue;
            }
            "hr" => {
                w.block();
                continue;
            }
            "img" => continue,
            _ if is_void(&name) => continue,
            _ => {}
        }
        // Implied ends: a new `p`, `li`, `tr`, `td` closes an open one of its kind.
        if matches!(name.as_str(), "p" | "li" | "tr" | "td" | "th" | "option")
            && stack.last().is_some_and(|e| e.name == name)
        {
            let element = stack.pop().expect("non-empty");
            if let Some(n) = open.get_mut(element.name.as_str()) {
                *n -= 1;
            }
            close(&mut w, &element, &mut skip, &mut pre);
        }
        let skip_content = matches!(
            name.as_str(),
            "style" | "script" | "head" | "title" | "template" | "noscript" | "xml" | "svg"
        ) || hidden(attrs);
        let quote = found == Some(Container::Subtree) || name == "blockquote";
        let list = match name.as_str() {
            "ul" => Some(None),
            "ol" => Some(Some(1)),
            _ => None,
        };
        // Outlook writes each line as a `MsoNormal` paragraph without margins.
        let line =
            name == "p" && attribute(attrs, "class").is_some_and(|c| c.contains("msonormal"));
        // Open.
        if skip_content {
            skip += 1;
        } else {
            if line {
                w.block();
            } else if name == "p" || name.len() == 2 && name.starts_with('h') && name != "hr" {
                w.paragraph();
            } else if is_block(&name) {
                w.block();
            }
            if quote {
                w.block();
                w.depth += 1;
            }
            match name.as_str() {
                "pre" => pre += 1,
                "td" | "th" if !w.line_start => w.space = true,
                "li" => {
                    let marker = match stack.iter_mut().rev().find_map(|e| e.list.as_mut()) {
                        Some(Some(n)) => {
                            let m = format!("{n}. ");
                            *n += 1;
                            m
                        }
                        _ => "- ".to_string(),
                    };
                    w.text(&marker, true);
                }
                _ => {}
            }
        }
        if tag.ends_with('/') && !skip_content {
            // `<div/>`: opened and closed at once.
            if quote {
                w.depth -= 1;
            }
            continue;
        }
        if tag.ends_with('/') {
            skip -= 1;
            continue;
        }
        *open.entry(name.clone()).or_default() += 1;
        stack.push(Element {
            name,
            line,
            quote,
            skip: skip_content,
            list,
        });
    }
    while let Some(element) = stack.pop() {
        close(&mut w, &element, &mut skip, &mut pre);
    }
    let mut text = w.out;
    let trimmed = text.trim_end().len();
    text.truncate(trimmed);
    let history_at = w.history_at.map(|h| h.min(text.len()));
    HtmlText { text, history_at }
}

fn close(w: &mut Writer, element: &Element, skip: &mut usize, pre: &mut usize) {
    if element.skip {
        *skip = skip.saturating_sub(1);
        return;
    }
    if *skip > 0 {
        return;
    }
    let name = element.name.as_str();
    if name == "pre" {
        *pre = pre.saturating_sub(1);
    }
    if element.line {
        w.block();
    } else if name == "p" || (name.len() == 2 && name.starts_with('h') && name != "hr") {
        w.paragraph();
    } else if is_block(name) {
        w.block();
    }
    if element.quote {
        w.block();
        w.depth = w.depth.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::to_text;

    #[test]
    fn blocks_break_lines_and_lists_keep_markers() {
        let t = to_text(
            "<div>Thanks,</div><div>Alex</div><p>One<br>Two</p><ul><li>a</li><li>b</ul><ol><li>x<li>y</ol><a href=\"https://x.test\">the link</a> &amp; &lt;tag&gt;&nbsp;ok",
        );
        assert_eq!(
            t.text,
            "Thanks,\nAlex\n\nOne\nTwo\n\n- a\n- b\n1. x\n2. y\nthe link & <tag> ok"
        );
    }

    #[test]
    fn quotes_and_containers() {
        let gmail = to_text(
            "<div dir=\"ltr\">Works now</div><br><div class=\"gmail_quote\"><div class=\"gmail_attr\">On Tue, Ann &lt;ann@example.com&gt; wrote:<br></div><blockquote class=\"gmail_quote\">Old<br>text</blockquote></div>",
        );
        assert_eq!(
            gmail.text,
            "Works now\n\n> On Tue, Ann <ann@example.com> wrote:\n> > Old\n> > text"
        );
        let outlook = to_text(
            "<p>Done</p><div id=\"appendonsend\"></div><hr><div id=\"divRplyFwdMsg\"><b>From:</b> Ann</div><div>old</div>",
        );
        let at = outlook.history_at.expect("history");
        assert_eq!(outlook.text[..at].trim(), "Done");
        assert!(outlook.text[at..].contains("old"));
    }

    #[test]
    fn hostile_markup_still_yields_text() {
        for html in [
            "<",
            "<div",
            "</div></p>text",
            "<<<>>>",
            "&#0;&#xFFFFFFFF;&#99999999999;&",
            "<style>p{}</style",
            "<blockquote><blockquote><blockquote><blockquote><blockquote><blockquote><blockquote><blockquote><blockquote><blockquote>deep",
        ] {
            let t = to_text(html);
            assert!(!t.text.contains('\0'), "{html}: {t:?}");
        }
        assert_eq!(to_text("a < b and c > d").text, "a < b and c > d");
        let deep = to_text(&"<blockquote>".repeat(50_000));
        assert!(deep.text.len() < 1_000);
        // Many open elements and a flood of end tags nothing opened: linear, not quadratic.
        let flood = format!("{}x{}", "<div>".repeat(100_000), "</p>".repeat(1_000_000));
        assert_eq!(to_text(&flood).text, "x");
    }
}
