//! Fuzzes template validation and rendering: any source either is refused with a reason, or
//! renders (with bounded output) or fails to render with an error. Nothing aborts: no stack
//! overflow from recursive partials, no runaway output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use tidings_common::templates::guard::{Bounded, RENDER_LIMIT, check_source};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = check_source(source) else {
        return;
    };
    let mut registry = handlebars::Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_template("t", template);
    let data = json!({
        "recipient": {"name": "Ann", "email": "ann@example.com"},
        "items": [1, 2, 3],
        "item": {"title": "Printer", "status": "open"},
    });
    let mut out = Bounded::default();
    let _ = registry.render_to_write("t", &data, &mut out);
    assert!(out.0.len() <= RENDER_LIMIT);
});
