//! Configuration secrets: the API token, the token secret, and the URLs that carry passwords
//! (database, broker, SMTP). A [`Secret`] prints a mask through `Debug` and `Display`, so a
//! configuration logged, printed in an error or shown by a command never shows one; the value
//! is reached through `Deref` (`&*secret`, or a method call on it) or [`Secret::expose`].

use std::fmt;
use std::ops::Deref;

/// A value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T> {
    value: T,
    /// What `Debug` and `Display` print instead.
    shown: String,
}

impl<T> Secret<T> {
    /// A secret shown as `***`.
    pub fn new(value: T) -> Self {
        Secret {
            value,
            shown: "***".into(),
        }
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &T {
        &self.value
    }
}

impl Secret<String> {
    /// A URL (or a comma-separated list of them) shown with every password masked.
    pub fn url(value: String) -> Self {
        Secret {
            shown: mask_url_passwords(&value),
            value,
        }
    }
}

impl<T> Deref for Secret<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `text` with the password of every `scheme://user:password@host` in it replaced by `***`.
/// It masks before anything splits a list, so a password holding a comma, an `@` or a `%`
/// is masked whole: the password runs to the last `@` before the next URL (or the end).
pub fn mask_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme) = rest.find("://") {
        let start = scheme + 3;
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        // This URL ends where the next one starts, at its scheme's first character.
        let end = after
            .find("://")
            .map(|next| {
                after[..next]
                    .char_indices()
                    .rfind(|(_, c)| !(c.is_ascii_alphanumeric() || "+-.".contains(*c)))
                    .map_or(0, |(i, c)| i + c.len_utf8())
            })
            .unwrap_or(after.len());
        let url = &after[..end];
        match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at && !url[..colon].contains('/') => {
                out.push_str(&url[..colon]);
                out.push_str(":***");
                out.push_str(&url[at..]);
            }
            _ => out.push_str(url),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The URLs of a comma-separated list. A comma splits only where a new URL (`scheme://`)
/// follows it, so a password holding a comma stays in its URL.
pub fn split_url_list(list: &str) -> Vec<&str> {
    let starts_url = |rest: &str| {
        let rest = rest.trim_start();
        let scheme_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .unwrap_or(rest.len());
        scheme_len > 0 && rest[scheme_len..].starts_with("://")
    };
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in list.char_indices() {
        if c == ',' && starts_url(&list[i + 1..]) {
            out.push(list[start..i].trim());
            start = i + 1;
        }
    }
    // Stray commas at the end of the list separate nothing.
    out.push(list[start..].trim_matches(|c: char| c == ',' || c.is_whitespace()));
    out.retain(|u| !u.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_a_mask_and_gives_its_value_on_purpose() {
        let token = Secret::new("s3cret-token-0123456789".to_string());
        assert_eq!(format!("{token} {token:?}"), "*** ***");
        assert_eq!(token.expose(), "s3cret-token-0123456789");
        assert_eq!(token.len(), 23);
    }

    #[test]
    fn passwords_with_commas_ats_percents_and_newlines_are_masked_whole() {
        let list = "amqp://guest:pa,ss@w%rd\nx@10.0.0.1:5672/%2f, amqps://u:p@h2:5671/v";
        let masked = mask_url_passwords(list);
        assert_eq!(
            masked,
            "amqp://guest:***@10.0.0.1:5672/%2f, amqps://u:***@h2:5671/v"
        );
        for leak in ["pa,ss", "w%rd", "\nx"] {
            assert!(!masked.contains(leak), "{masked}");
        }
        let url = Secret::url("postgres://app:p@ss@db.example.com/tidings".to_string());
        assert_eq!(
            format!("{url:?}"),
            "postgres://app:***@db.example.com/tidings"
        );
        assert_eq!(url.expose(), "postgres://app:p@ss@db.example.com/tidings");
        assert_eq!(
            split_url_list(list),
            [
                "amqp://guest:pa,ss@w%rd\nx@10.0.0.1:5672/%2f",
                "amqps://u:p@h2:5671/v"
            ]
        );
        assert_eq!(split_url_list(" amqp://a/ ,, "), ["amqp://a/"]);
    }

    /// Whatever the text (multi-byte characters next to a scheme, schemes without hosts,
    /// stray separators), masking and splitting never panic, and a password never survives.
    #[test]
    fn hostile_text_neither_panics_nor_leaks() {
        for text in [
            "amqp://u:p@hé://x",
            "é://",
            "://",
            ":://@@",
            "amqp://u:sécrèt@h,é,amqps://u:sécrèt@h2",
            "\u{0}://\u{202e}:x@y",
            ",,,://,:@,",
            "amqp://ü:🔑🔑@h/ , amqp://ü:🔑🔑@h2/",
        ] {
            let masked = mask_url_passwords(text);
            let _ = split_url_list(text);
            for secret in ["sécrèt", "🔑"] {
                assert!(!masked.contains(secret), "{text:?} -> {masked:?}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_masked_and_split_without_panicking(text in ".{0,80}") {
            let _ = mask_url_passwords(&text);
            let _ = split_url_list(&text);
        }

        #[test]
        fn any_password_is_masked_whole(password in "[^@/]{1,30}") {
            let url = format!("amqp://user:{password}@host:5672/%2f");
            proptest::prop_assert_eq!(
                mask_url_passwords(&url),
                "amqp://user:***@host:5672/%2f"
            );
        }
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        // Nothing to mask: no user info, a user without a password, a path with a colon.
        for plain in [
            "smtp://127.0.0.1:2525",
            "postgres://postgres@127.0.0.1:5432/tidings",
            "http://host/a:b",
        ] {
            assert_eq!(mask_url_passwords(plain), plain);
        }
    }
}
