//! Checks of request fields that answer 400 naming the field.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ApiError, ApiResult};

pub fn required_text(field: &str, value: &str) -> ApiResult<String> {
    let value = value.trim();
    if value.is_empty() {
        Err(ApiError::bad_field(
            field,
            format!("{field}: must not be empty"),
        ))
    } else {
        Ok(value.to_string())
    }
}

/// Most characters in a name (of a person, project, team or automation).
pub const NAME_MAX: usize = 200;
/// Most characters in a subject or title.
pub const SUBJECT_MAX: usize = 300;

/// A one-line text field such as a name or subject: trimmed, not empty, at most `max`
/// characters, free of control characters (CR, LF, NUL, tab…) and line separators, which
/// would otherwise reach email headers, and of invisible and direction-changing characters
/// ([`tidings_common::attachments::invisible`]), which let one name pass for another.
pub fn single_line(field: &str, value: &str, max: usize) -> ApiResult<String> {
    let value = required_text(field, value)?;
    if let Some(c) = value
        .chars()
        .find(|&c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(ApiError::bad_field(
            field,
            format!("{field}: must be one line without control characters (found {c:?})"),
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|&c| tidings_common::attachments::invisible(c))
    {
        return Err(ApiError::bad_field(
            field,
            format!(
                "{field}: must not contain invisible or direction-changing characters \
                 (found U+{:04X})",
                c as u32
            ),
        ));
    }
    let count = value.chars().count();
    if count > max {
        return Err(ApiError::bad_field(
            field,
            format!("{field}: at most {max} characters (got {count})"),
        ));
    }
    Ok(value)
}

pub fn valid_locale(locale: &Option<String>) -> ApiResult<()> {
    match locale {
        Some(l)
            if l.is_empty()
                || l.len() > 16
                || !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
        {
            Err(ApiError::bad_field(
                "locale",
                format!("locale: {l:?} is not a locale such as en, sv or pt-BR"),
            ))
        }
        _ => Ok(()),
    }
}

pub fn valid_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && value.parse::<lettre::Address>().is_ok()
}

pub fn one_of(field: &str, value: &str, allowed: &[&str]) -> ApiResult<()> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            field,
            format!("{field}: {value:?} is not one of {}", allowed.join(", ")),
        ))
    }
}

/// A `limit` query parameter: `default` when absent, otherwise 1 to `max`.
pub fn limit(value: Option<i64>, default: i64, max: i64) -> ApiResult<i64> {
    let limit = value.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_field(
            "limit",
            format!("limit: must be from 1 to {max}"),
        ))
    }
}

/// Keeps an explicit `null` as `Some(Null)`, so a condition can be removed.
pub fn some_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}
