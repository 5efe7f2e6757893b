//! URLs as shown to the user: never with credentials, and without the
//! query where it may hold keys.

/// `scheme://host[:port]/path` without user info, query or fragment.
pub fn display_url(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string().trim_end_matches('/').to_string()
}

/// `scheme://user:pass@host/…` → `scheme://host/…` (query kept), for
/// messages about URLs that may not parse.
pub fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// A URL without its query (which may hold keys) and with its
/// credentials masked: what a summary table shows.
pub fn redact_url(u: &str) -> String {
    let no_query = u.split(['?', '#']).next().unwrap_or(u);
    match (no_query.find("://"), no_query.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}***@{}", &no_query[..s + 3], &no_query[at + 1..])
        }
        _ => no_query.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_url_drops_secrets() {
        let u = url::Url::parse("https://me:secret@host:8080/cache/?token=x").unwrap();
        assert_eq!(display_url(&u), "https://host:8080/cache");
    }

    #[test]
    fn userinfo_is_dropped() {
        assert_eq!(without_userinfo("ftp://u:p@h/x?y=z@w"), "ftp://h/x?y=z@w");
        assert_eq!(without_userinfo("file:///a@b"), "file:///a@b");
    }

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("s3://bucket/p?endpoint=http://x&secret=1"),
            "s3://bucket/p"
        );
        assert_eq!(
            redact_url("https://user:pw@cache.example.org/x"),
            "https://***@cache.example.org/x"
        );
        assert_eq!(redact_url("file:///tmp/c"), "file:///tmp/c");
    }
}
