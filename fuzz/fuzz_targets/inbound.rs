//! Fuzzes the pure inbound path: any bytes must yield a verdict (never a panic, never a hang),
//! the reply extractor must never lose or invent text, and every file kept from a mail has a
//! safe name, a well-formed type and the digest of its bytes, within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings_common::attachments;
use tidings_common::inbound::{self, InboundContext};

fuzz_target!(|data: &[u8]| {
    let context = InboundContext {
        reply_domain: "reply.tidings.localhost".into(),
        own_address: Some("notifications@tidings.localhost".into()),
        authserv_id: None,
        attachment_max: 25 << 20,
    };
    let report = inbound::inspect(data, &context);
    assert!(report.files.len() <= inbound::FILES_MAX);
    for file in &report.files {
        let name = &file.name;
        assert!(!name.is_empty() && name.chars().count() <= attachments::NAME_MAX, "{name:?}");
        assert!(
            !name.contains(['/', '\\'])
                && !name.starts_with('.')
                && !name.chars().any(|c| c.is_control() || attachments::invisible(c)),
            "unsafe name {name:?}"
        );
        assert!(file.data.len() <= context.attachment_max);
        assert_eq!(file.size as usize, file.data.len());
        assert_eq!(file.sha256, attachments::sha256_hex(&file.data));
        assert!(file.sniffed_type.contains('/') && file.declared_type.contains('/'));
    }
    if let (Some(reply), Some(quoted)) = (&report.reply_text, &report.quoted_text) {
        // The whole text may be posted and its quote kept as well; quote markers of nested
        // HTML quotes add at most a few bytes per line.
        assert!(reply.len() + quoted.len() <= data.len() * 10 + 64);
    }
    let text = String::from_utf8_lossy(data);
    let parts = inbound::split_reply(&text);
    // Every line of the result comes from the input.
    for line in parts.reply.lines().chain(parts.quoted.lines()) {
        assert!(text.contains(line.trim_end()), "invented line {line:?}");
    }
    // HTML of any shape becomes text, and where history starts lies inside it.
    let html = inbound::html::to_text(&text);
    assert!(html.history_at.is_none_or(|at| at <= html.text.len()));
});
