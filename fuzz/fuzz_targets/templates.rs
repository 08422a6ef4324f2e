//! Fuzzes template validation and rendering: any source either is refused with a reason, or
//! renders (with bounded output) or fails to render with an error. Nothing aborts: no stack
//! overflow from recursive partials, no runaway output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tidings_common::templates::guard::{RENDER_LIMIT, render_source};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let data = json!({
        "recipient": {"name": "Ann", "email": "ann@example.com"},
        "items": [1, 2, 3],
        "item": {"title": "Printer", "status": "open"},
    });
    if let Ok(text) = render_source(source, &data) {
        assert!(text.len() <= RENDER_LIMIT);
    }
});
