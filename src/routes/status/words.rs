//! The page's words for figures: durations and counts as people read them, and texts made
//! fit for an open page (error texts redacted, URLs cut to their site, long texts cut).

use std::fmt::Write as _;

/// Longest error text shown (characters).
pub const ERROR_CHARS: usize = 240;

/// A duration as people read it: "45s", "3m 05s", "2h 07m", "3d 04h".
pub fn human_duration(seconds: u64) -> String {
    let d = seconds;
    match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m {:02}s", d / 60, d % 60),
        3600..86_400 => format!("{}h {:02}m", d / 3600, d % 3600 / 60),
        _ => format!("{}d {:02}h", d / 86_400, d % 86_400 / 3600),
    }
}

/// A duration in its largest whole unit, rounded down: "45 s", "2 m", "1 h", "3 d" (a
/// staleness against its bound reads "2 m of 1 h").
pub fn rounded_duration(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} m", seconds / 60),
        3600..86_400 => format!("{} h", seconds / 3600),
        _ => format!("{} d", seconds / 86_400),
    }
}

/// A whole number with thousands separators: "12,345".
pub fn grouped(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An error text made fit for an open page: quoted values (cursors, keys), anything with
/// an `@` (emails), and query strings and credentials of URLs are masked, and the text is
/// cut to `ERROR_CHARS`. `GET /v1/sync` and `GET /v1/relay` have the whole text.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(ERROR_CHARS * 4));
    // Quoted values first: a Debug-formatted key or cursor is a quoted string.
    let mut quoted = false;
    let mut unquoted = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '"' {
            if !quoted {
                unquoted.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            unquoted.push(c);
        }
    }
    for (i, word) in unquoted.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if let Some(scheme_at) = word.find("://") {
            // Keep scheme, host and path; drop credentials and the query.
            let rest = &word[scheme_at + 3..];
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let cut = path.find(['?', '#']).unwrap_or(path.len());
            let shown = if path[..cut].contains('@') {
                "/…"
            } else {
                &path[..cut]
            };
            let _ = write!(out, "{}://{host}{shown}", &word[..scheme_at]);
            if cut < path.len() {
                out.push_str("?…");
                // A closing parenthesis after the query, as in "(for url ...)".
                if path.ends_with(')') {
                    out.push(')');
                }
            }
        } else if word.contains('@') {
            out.push('…');
        } else {
            out.push_str(word);
        }
    }
    truncate(&out, ERROR_CHARS)
}

/// A URL's scheme and host only: some endpoints carry a secret in their path.
pub fn site(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let more = if u.path() == "/" { "" } else { "/…" };
            format!("{}://{host}{port}{more}", u.scheme())
        }
        Err(_) => "…".to_string(),
    }
}

/// At most `chars` characters of `text`, with "…" when cut.
pub fn truncate(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_numbers_read_as_people_write_them() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(3599), "59m 59s");
        assert_eq!(human_duration(7260), "2h 01m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 59), "3d 04h");
        assert_eq!(rounded_duration(45), "45 s");
        assert_eq!(rounded_duration(125), "2 m");
        assert_eq!(rounded_duration(3600), "1 h");
        assert_eq!(rounded_duration(3 * 86_400 + 5), "3 d");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(grouped(-12_345), "-12,345");
    }

    #[test]
    fn redaction_masks_keys_emails_and_url_secrets() {
        let cursor = redact(
            r#"PartnerStack: the cursor "cust_8f2k" of /customers no longer works (400 Bad Request); the list must be read again from the top"#,
        );
        assert!(!cursor.contains("cust_8f2k"), "{cursor}");
        assert!(
            cursor.contains("the cursor \"…\" of /customers"),
            "{cursor}"
        );
        let email = redact("PartnerStack answered 400: no customer jane.doe@example.com here");
        assert!(!email.contains("jane.doe"), "{email}");
        assert!(!email.contains('@'), "{email}");
        let url = redact(
            "gave up after 8 attempts: PartnerStack could not be reached: error sending request \
             (for url http://user:pw@127.0.0.1:9/api/v2/customers?limit=250&starting_after=cust_1)",
        );
        assert!(!url.contains("cust_1"), "{url}");
        assert!(!url.contains("pw"), "{url}");
        assert!(
            url.contains("http://127.0.0.1:9/api/v2/customers?…)"),
            "{url}"
        );
        let long = redact(&"x".repeat(1000));
        assert_eq!(long.chars().count(), ERROR_CHARS + 1);
        // An unbalanced quote masks to the end rather than leaking.
        assert_eq!(redact(r#"a "secret"#), "a \"…\"");
    }
}
