//! Conformance of the pure inbound path against email written by other projects: an extra
//! suite, read from `TIDINGS_CORPORA` (default `../shared/corpora` beside the project), never
//! copied into the repository. Prints a score per corpus; the thresholds are the scores
//! reached, so a regression fails. File names are never special-cased.
//!
//! Where the corpora are missing, the suite is skipped, except under `CI=true`, where missing
//! corpora fail it.

use std::path::{Path, PathBuf};

use tidings_common::inbound::{self, InboundContext, InboundVerdict};

/// The corpora folder, or `None` (after saying so) when it is missing outside CI.
fn corpora() -> Option<PathBuf> {
    let dir = std::env::var("TIDINGS_CORPORA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora"));
    if dir.is_dir() {
        return Some(dir);
    }
    let how = "set TIDINGS_CORPORA to a folder of the third-party corpora to run it";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "third-party corpora not found at {} (CI=true requires them); {how}",
        dir.display()
    );
    eprintln!(
        "third-party conformance suite skipped: no corpora at {}; {how}",
        dir.display()
    );
    None
}

/// The exact-match score reached on the discourse corpus; a change that lowers it fails.
const DISCOURSE_EXACT: f64 = 100.0;

fn context() -> InboundContext {
    InboundContext {
        reply_domain: "reply.tidings.localhost".into(),
        own_address: None,
        authserv_id: None,
        attachment_max: 25 << 20,
    }
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

fn labels(path: &Path) -> Vec<(String, String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols = l.split('\t').map(str::to_string);
            (
                cols.next().unwrap_or_default(),
                cols.next().unwrap_or_default(),
                cols.next().unwrap_or_default(),
            )
        })
        .collect()
}

fn score(name: &str, hits: usize, total: usize, threshold: f64) {
    assert!(total > 0, "{name}: no cases ran");
    let pct = 100.0 * hits as f64 / total as f64;
    println!("corpus {name}: {hits}/{total} = {pct:.1}% (threshold {threshold:.1}%)");
    assert!(
        pct >= threshold,
        "{name}: {pct:.1}% is below {threshold:.1}%"
    );
}

fn eml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
    {
        let path = entry.path();
        if path.is_dir() {
            eml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "eml") {
            out.push(path);
        }
    }
}

#[test]
fn mail_parser_corpus_always_yields_a_verdict() {
    let mut files = Vec::new();
    let Some(corpora) = corpora() else { return };
    eml_files(&corpora.join("mail_parser/eml"), &mut files);
    let mut ok = 0;
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        let report = inbound::inspect(&raw, &context());
        // Serialising proves the report is complete JSON, as `tidings inbound inspect` prints it.
        serde_json::to_string(&report).unwrap();
        ok += 1;
    }
    score(
        "mail_parser (verdict without panic)",
        ok,
        files.len(),
        100.0,
    );
}

#[test]
fn chatwoot_automatic_mail_is_never_posted() {
    let Some(corpora) = corpora() else { return };
    let dir = corpora.join("chatwoot");
    let mut hits = 0;
    let mut total = 0;
    for (file, kind, _) in labels(&dir.join("labels.tsv")) {
        if !matches!(kind.as_str(), "auto_reply" | "bounce") {
            continue;
        }
        let raw = std::fs::read(dir.join("emails").join(&file)).unwrap();
        let report = inbound::inspect(&raw, &context());
        total += 1;
        if !matches!(
            report.verdict,
            InboundVerdict::Reply | InboundVerdict::NewConversation
        ) {
            hits += 1;
        } else {
            println!(
                "  chatwoot {file}: labelled {kind}, got {:?}",
                report.verdict
            );
        }
    }
    score("chatwoot automatic mail never posted", hits, total, 100.0);
}

#[test]
fn chatwoot_reply_first_lines() {
    let Some(corpora) = corpora() else { return };
    let dir = corpora.join("chatwoot");
    let mut hits = 0;
    let mut total = 0;
    for (file, kind, expected) in labels(&dir.join("labels.tsv")) {
        if kind != "reply" || expected.is_empty() {
            continue;
        }
        let raw = std::fs::read(dir.join("emails").join(&file)).unwrap();
        let report = inbound::inspect(&raw, &context());
        total += 1;
        let got = first_line(report.reply_text.as_deref().unwrap_or_default());
        if collapse(&got) == collapse(&expected) {
            hits += 1;
        } else {
            println!(
                "  chatwoot {file}: expected {expected:?}, got {got:?} ({:?})",
                report.verdict
            );
        }
    }
    score("chatwoot reply first line", hits, total, 100.0);
}

#[test]
fn github_reply_first_lines() {
    let Some(corpora) = corpora() else { return };
    let dir = corpora.join("github_email_reply_parser");
    let mut hits = 0;
    let mut total = 0;
    for (file, kind, expected) in labels(&dir.join("labels.tsv")) {
        if kind != "reply" {
            continue;
        }
        let body = String::from_utf8_lossy(&std::fs::read(dir.join("emails").join(&file)).unwrap())
            .into_owned();
        let parts = inbound::split_reply(&body);
        total += 1;
        let got = first_line(&parts.reply);
        if collapse(&got) == collapse(&expected) {
            hits += 1;
        } else {
            println!("  github {file}: expected {expected:?}, got {got:?}");
        }
    }
    // email_1_8 expects an inline answer to start with its attribution line; Tidings removes
    // attributions from inline answers (the quotes they introduce are kept), so it scores 19 of 20.
    score("github_email_reply_parser first line", hits, total, 95.0);
}

#[test]
fn discourse_exact_match() {
    let Some(corpora) = corpora() else { return };
    let dir = corpora.join("discourse_email_reply_trimmer");
    let mut hits = 0;
    let mut total = 0;
    let mut names: Vec<_> = std::fs::read_dir(dir.join("emails"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        let Ok(expected) = std::fs::read_to_string(dir.join("trimmed").join(&name)) else {
            continue;
        };
        let body = String::from_utf8_lossy(&std::fs::read(dir.join("emails").join(&name)).unwrap())
            .into_owned();
        let got = inbound::split_reply(&body).reply;
        total += 1;
        if collapse(&got) == collapse(&expected) {
            hits += 1;
        } else {
            // TIDINGS_CORPORA_VERBOSE=1 prints the whole texts.
            let width = if std::env::var_os("TIDINGS_CORPORA_VERBOSE").is_some() {
                usize::MAX
            } else {
                80
            };
            println!(
                "  discourse {}: expected {:?}, got {:?}",
                name.to_string_lossy(),
                collapse(&expected).chars().take(width).collect::<String>(),
                collapse(&got).chars().take(width).collect::<String>()
            );
        }
    }
    score(
        "discourse_email_reply_trimmer exact",
        hits,
        total,
        DISCOURSE_EXACT,
    );
}
