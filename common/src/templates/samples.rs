//! Sample data of each template's shape: what loading and `tidings templates check` render
//! every template with, so a misspelt variable is caught before an email needs it.

use serde_json::{Value, json};

/// Sample data of the right shape for template `name`: what `templates check` and loading
/// render with. Templates not named here are automation emails ([`automation_sample`]).
pub fn sample_data(name: &str) -> Value {
    let recipient =
        json!({"id": 7, "name": "Ada Lovelace", "email": "ada@example.com", "kind": "user"});
    let project = json!({"id": 3, "name": "Billing"});
    let item = json!({"id": 42, "kind": "ticket", "title": "Invoice is wrong", "status": "open"});
    let base = json!({"recipient": recipient, "app_url": "https://tidings.example.com"});
    let extra = match name {
        crate::NOTIFICATION_TEMPLATE => {
            let message = json!({
                "id": 101, "body": "Could you check the <b>VAT</b> line?", "internal": false,
                "edited": false, "posted_at": "2026-11-25 09:30 UTC",
                "author": {"id": 9, "name": "Grace Hopper"},
                "files": [
                    {"id": 5, "name": "invoice.pdf", "size": 48213, "size_text": "47 KiB",
                     "content_type": "application/pdf", "inline": false, "content_id": null,
                     "attached": true},
                    {"id": 6, "name": "screenshot.png", "size": 15728640,
                     "size_text": "15.0 MiB", "content_type": "image/png", "inline": false,
                     "content_id": null, "attached": false,
                     "url": "https://tidings.example.com/files/7/token"},
                ],
            });
            json!({
                "conversation": {"id": 12, "subject": "Invoice is wrong"},
                "item": item, "project": project,
                "message": message, "messages": [message],
                "reply_address": "reply+12.7.20000.abcdef@reply.example.com",
                "unsubscribe_url": "https://tidings.example.com/unsubscribe/token",
            })
        }
        "welcome" => json!({}),
        "password_reset" => json!({
            "reset_url": "https://tidings.example.com/password-reset/token", "expires_in_minutes": 60,
        }),
        "invitation" => json!({
            "project": project, "accept_url": "https://tidings.example.com/invitations/token",
        }),
        "assignment" | "unassignment" => json!({"item": item, "project": project}),
        "project_member_added" => json!({
            "project": project, "member": {"id": 8, "name": "Alan Turing", "kind": "user"},
        }),
        _ => automation_sample(&item, &project),
    };
    let mut data = base;
    if let (Some(data), Value::Object(extra)) = (data.as_object_mut(), extra) {
        data.extend(extra);
    }
    data
}

/// What an automation email's template is given: the item, its project, the automation and
/// the event that triggered it.
fn automation_sample(item: &Value, project: &Value) -> Value {
    json!({
        "item": item, "project": project,
        "automation": {"id": 5, "name": "Tell the requester the ticket is closed"},
        "event": {"kind": "item_closed"},
    })
}
