//! The documentation holds together: every relative link and `#anchor` in the Markdown
//! (README, ARCHITECTURE, docs/) resolves, and every rule id (D2, P1, I4, …) that the code,
//! the tests, the migrations, the messenger or a page cites is defined in `docs/rules.md`.
//! Needs no service.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (recursively, skipping build output) whose name ends with one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !matches!(name.as_str(), "target" | ".git" | "node_modules") {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

fn markdown_files() -> Vec<PathBuf> {
    let root = root();
    let mut out: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    files(&root.join("docs"), &[".md"], &mut out);
    out
}

/// The lines of a Markdown text with fenced code blocks blanked and inline code removed
/// (one entry per line, so indexes are line numbers).
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || line.trim_start().starts_with("```") {
            out.push(String::new());
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        out.push(kept);
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, `-` and
/// `_` kept), spaces to `-`; a repeated heading gets `-1`, `-2`, ….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// The targets of the inline links and images of a line: `[text](target)`.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.to_string());
        rest = &after[end..];
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let dir = file.parent().unwrap();
        for (n, line) in prose(&text).iter().enumerate() {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let place = format!("{}:{}: {target}", file.display(), n + 1);
                if !linked.exists() {
                    broken.push(format!("{place} (no such file)"));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let text = std::fs::read_to_string(&linked).unwrap_or_default();
                    if !anchors(&text).contains(anchor) {
                        broken.push(format!("{place} (no such heading)"));
                    }
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} links found: is the parser broken?"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Rule ids in a text: a family letter, then one or two digits, standing alone.
fn rule_ids(text: &str) -> Vec<String> {
    const FAMILIES: &str = "ADEFILMPT";
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for i in 0..chars.len() {
        if !FAMILIES.contains(chars[i]) {
            continue;
        }
        if i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_') {
            continue;
        }
        let digits: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let next = chars.get(i + 1 + digits.len());
        if (1..=2).contains(&digits.len())
            && !digits.starts_with('0')
            && !next.is_some_and(|c| c.is_alphanumeric() || *c == '_')
        {
            out.push(format!("{}{digits}", chars[i]));
        }
    }
    out
}

/// The ids `docs/rules.md` defines: a bold id opening a list item (`- **D2**`, `- **P1 …**`).
fn defined_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/rules.md")).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("- **"))
        .filter_map(|l| {
            rule_ids(l)
                .into_iter()
                .next()
                .filter(|id| l.starts_with(id))
        })
        .collect()
}

#[test]
fn every_cited_rule_is_defined() {
    let defined = defined_rules();
    assert!(
        ["D1", "D9", "P1", "P5", "E3", "M5", "L2", "I8", "T4", "F1"]
            .iter()
            .all(|id| defined.contains(*id)),
        "the rules page lost a rule: {defined:?}"
    );
    let root = root();
    let mut sources = markdown_files();
    for dir in [
        "common",
        "workers",
        "src",
        "tests",
        "bench",
        "migrations",
        "fuzz",
    ] {
        files(
            &root.join(dir),
            &[".rs", ".sql", ".js", ".html", ".hbs"],
            &mut sources,
        );
    }
    let mut undefined = Vec::new();
    let mut cited = 0;
    for file in sources {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            for id in rule_ids(line) {
                cited += 1;
                if !defined.contains(&id) {
                    undefined.push(format!("{}:{}: {id}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        cited > 100,
        "only {cited} citations found: is the scan broken?"
    );
    assert!(
        undefined.is_empty(),
        "rule ids cited but not defined in docs/rules.md:\n{}",
        undefined.join("\n")
    );
}

#[test]
fn the_parsers_find_what_they_should() {
    assert_eq!(
        rule_ids("SPEC D2–D5, P1 (E3); A10x B2 xD4 D04"),
        ["D2", "D5", "P1", "E3"]
    );
    let headings = anchors("# Quick start (command 1)\n## Running `tidings` yourself\n## A\n## A");
    for a in [
        "quick-start-command-1",
        "running-tidings-yourself",
        "a",
        "a-1",
    ] {
        assert!(headings.contains(a), "{a} in {headings:?}");
    }
    assert_eq!(
        link_targets("see [x](a.md#b) and ![y](p.png \"t\")"),
        ["a.md#b", "p.png"]
    );
}
