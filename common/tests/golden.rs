//! Golden mails: `tests/golden/NNN.eml`, each with its expected outcome in `NNN.json`
//! (`verdict`, the posted `reply`, text the stored quoted part must contain), built the way the
//! named client builds its replies. A mismatch writes `NNN.actual` beside the mail and fails.

use std::path::Path;

use tidings_common::inbound::{self, InboundContext};

#[test]
fn every_golden_mail_gives_its_expected_outcome() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let context = InboundContext {
        reply_domain: "reply.example.com".into(),
        own_address: None,
        authserv_id: None,
        attachment_max: 25 << 20,
    };
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    let mut failures = Vec::new();
    for eml in &names {
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(eml.with_extension("json")).unwrap())
                .unwrap();
        let report = inbound::inspect(&std::fs::read(eml).unwrap(), &context);
        let verdict_ok = expected["verdict"] == report.verdict.as_str();
        let reply_ok = expected
            .get("reply")
            .is_none_or(|r| r.as_str() == report.reply_text.as_deref());
        let quoted_ok = expected.get("quoted_contains").is_none_or(|q| {
            report
                .quoted_text
                .as_deref()
                .is_some_and(|quoted| quoted.contains(q.as_str().unwrap_or_default()))
        });
        let actual = eml.with_extension("actual");
        if verdict_ok && reply_ok && quoted_ok {
            let _ = std::fs::remove_file(&actual);
        } else {
            std::fs::write(&actual, serde_json::to_string_pretty(&report).unwrap()).unwrap();
            failures.push(format!(
                "{} ({}: {}): see {}",
                eml.display(),
                expected["client"],
                expected["form"],
                actual.display()
            ));
        }
    }
    assert!(!names.is_empty(), "no golden mails in {}", dir.display());
    println!(
        "golden mails: {} of {} as expected",
        names.len() - failures.len(),
        names.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
