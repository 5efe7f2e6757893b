//! `http(s)://HOST/PATH` binary cache that accepts PUT (nginx WebDAV, most
//! cache servers): PUT uploads, HEAD/GET for existence and reads.
//!
//! Credentials, first found wins: user info in the URL, a bearer token in
//! `$NIXDELTA_CACHE_TOKEN`, the netrc file (`--netrc-file`, as Nix's
//! `netrc-file`). They never appear in messages or `Debug`.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use reqwest::blocking::{Client, RequestBuilder};
use url::Url;
use zeroize::Zeroizing;

use super::background::Background;
use super::content_type;
use super::spool::{SpoolData, SpoolTarget, SpooledNar};
use super::{narinfo_name, BinaryCache, CacheOptions, NarUpload};
use crate::error::{Error, Result};
use crate::net::client::STREAM_TIMEOUT;
use crate::net::redact::display_url;
use crate::net::{parallel_map, Net, MAX_IN_FLIGHT};
use crate::nix::StorePath;
use crate::secret::Secret;

/// Env var holding a bearer token for http(s) targets.
pub const TOKEN_ENV: &str = "NIXDELTA_CACHE_TOKEN";
/// NARs at least this large are checked with HEAD before upload: content
/// addressed, so one already there (an interrupted push) is not sent again.
pub const SKIP_EXISTING_FROM: u64 = 32 << 20;

#[derive(Debug)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password: Secret<String>,
    },
    Bearer(Secret<String>),
}

impl Auth {
    fn apply(&self, req: RequestBuilder) -> RequestBuilder {
        match self {
            Auth::None => req,
            Auth::Basic { user, password } => {
                req.basic_auth(user, Some(password.expose().as_str()))
            }
            Auth::Bearer(t) => req.bearer_auth(t.expose().as_str()),
        }
    }
}

#[derive(Debug)]
struct Inner {
    net: Net,
    /// Ends with `/`, no user info.
    base: Url,
    auth: Auth,
    /// NAR uploads under way.
    background: Arc<Background>,
}

#[derive(Debug)]
pub struct HttpCache {
    inner: Arc<Inner>,
}

impl HttpCache {
    pub fn open(url: &str, opts: &CacheOptions) -> Result<HttpCache> {
        let shown = url.split(['?', '#']).next().unwrap_or(url);
        let mut base = Url::parse(url).map_err(|e| {
            let safe = Url::parse(shown)
                .map(|u| display_url(&u))
                .unwrap_or_default();
            Error::cache(&safe, format!("invalid URL: {e}"))
        })?;
        let display = display_url(&base);
        let host = base.host_str().unwrap_or_default().to_string();
        if host.is_empty() {
            return Err(Error::cache(&display, "URL has no host"));
        }
        let mut auth = if !base.username().is_empty() {
            Auth::Basic {
                user: percent_decode(base.username()),
                password: Secret::new(base.password().map(percent_decode).unwrap_or_default()),
            }
        } else {
            Auth::None
        };
        if matches!(auth, Auth::None) {
            if let Ok(t) = std::env::var(TOKEN_ENV) {
                if !t.trim().is_empty() {
                    auth = Auth::Bearer(Secret::new(t.trim().to_string()));
                }
            }
        }
        if matches!(auth, Auth::None) {
            if let Some(file) = netrc_path(opts) {
                auth = netrc_lookup(&file, &host).map_err(|e| {
                    Error::cache(&display, format!("netrc file {}: {e}", file.display()))
                })?;
            }
        }
        let _ = base.set_username("");
        let _ = base.set_password(None);
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(HttpCache {
            inner: Arc::new(Inner {
                net: Net::new(display, opts.retry)?,
                base,
                auth,
                background: Arc::default(),
            }),
        })
    }
}

impl Inner {
    fn url_of(&self, rel: &str) -> Result<Url> {
        self.base
            .join(rel)
            .map_err(|e| self.net.err(format!("{rel}: {e}")))
    }

    fn req(&self, client: &Client, method: reqwest::Method, url: &Url) -> RequestBuilder {
        self.auth.apply(client.request(method, url.clone()))
    }

    fn put_data(&self, rel: &str, data: &SpoolData) -> Result<()> {
        let url = self.url_of(rel)?;
        self.net.send_ok("PUT", rel, data.len(), |c| {
            self.req(c, reqwest::Method::PUT, &url)
                .header(reqwest::header::CONTENT_TYPE, content_type(rel))
                .body(data.body(0, data.len()))
        })?;
        Ok(())
    }
}

impl BinaryCache for HttpCache {
    fn url(&self) -> &str {
        &self.inner.net.url
    }

    fn get(&self, rel: &str) -> Result<Option<Vec<u8>>> {
        let i = &self.inner;
        let url = i.url_of(rel)?;
        i.net.get(rel, |c| i.req(c, reqwest::Method::GET, &url))
    }

    fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.size(rel)?.is_some())
    }

    fn size(&self, rel: &str) -> Result<Option<u64>> {
        let i = &self.inner;
        let url = i.url_of(rel)?;
        i.net.head(rel, |c| i.req(c, reqwest::Method::HEAD, &url))
    }

    fn reader(&self, rel: &str) -> Result<Option<Box<dyn Read + Send>>> {
        let i = &self.inner;
        let url = i.url_of(rel)?;
        i.net.call_with_timeout(
            "GET",
            rel,
            STREAM_TIMEOUT,
            |c| i.req(c, reqwest::Method::GET, &url),
            |resp| {
                if resp.status().is_success() {
                    Ok(Some(Box::new(resp) as Box<dyn Read + Send>))
                } else if resp.status() == reqwest::StatusCode::NOT_FOUND {
                    Ok(None)
                } else {
                    Err(crate::net::retry::status_error(resp))
                }
            },
        )
    }

    fn put(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.inner.put_after_nar(rel, data)
    }

    fn begin_nar(&self) -> Result<Box<dyn NarUpload>> {
        Ok(Box::new(SpooledNar::new(self.inner.clone())))
    }

    fn has_narinfos(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        parallel_map(paths, MAX_IN_FLIGHT, |p| self.exists(&narinfo_name(p)))
    }

    /// Parses the server's directory index (nginx `autoindex on`, Apache,
    /// `python -m http.server`): the links to files directly in `dir`.
    fn list(&self, dir: &str) -> Result<Vec<String>> {
        let i = &self.inner;
        let rel = if dir.is_empty() {
            String::new()
        } else {
            format!("{}/", dir.trim_end_matches('/'))
        };
        let url = i.url_of(&rel)?;
        let page = i
            .net
            .get(&format!("{rel} (directory index)"), |c| {
                i.req(c, reqwest::Method::GET, &url)
            })?
            .ok_or_else(|| {
                i.net.err(format!(
                    "no directory index at /{rel}: listing needs one (nginx: autoindex on)"
                ))
            })?;
        Ok(index_links(&String::from_utf8_lossy(&page)))
    }

    fn request_summary(&self) -> Option<String> {
        Some(self.inner.net.retrier.stats.summary())
    }
}

impl Drop for HttpCache {
    fn drop(&mut self) {
        self.inner.background.wait_all();
        self.inner.net.log_summary();
    }
}

impl Inner {
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> Result<()> {
        if data.len() >= SKIP_EXISTING_FROM {
            let url = self.url_of(rel)?;
            let size = self
                .net
                .head(rel, |c| self.req(c, reqwest::Method::HEAD, &url))?;
            if size == Some(data.len()) {
                return Ok(());
            }
        }
        self.put_data(rel, data)
    }
}

impl SpoolTarget for Inner {
    fn net(&self) -> &Net {
        &self.net
    }
    fn background(&self) -> &Arc<Background> {
        &self.background
    }
    fn upload_nar(&self, rel: &str, data: &SpoolData) -> Result<()> {
        Inner::upload_nar(self, rel, data)
    }
    fn put_data(&self, rel: &str, data: &SpoolData) -> Result<()> {
        Inner::put_data(self, rel, data)
    }
}

/// Links in an HTML directory index that name plain files (no `/`, `?`).
pub fn index_links(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("href=\"") {
        rest = &rest[i + 6..];
        let Some(end) = rest.find('"') else { break };
        let link = percent_decode(&rest[..end]);
        rest = &rest[end..];
        let name = link.strip_prefix("./").unwrap_or(&link);
        if !name.is_empty()
            && !name.contains(['/', '?', '#', ':'])
            && name != ".."
            && !out.iter().any(|n| n == name)
        {
            out.push(name.to_string());
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn netrc_path(opts: &CacheOptions) -> Option<std::path::PathBuf> {
    if let Some(f) = &opts.netrc_file {
        return Some(f.clone());
    }
    if let Ok(f) = std::env::var("NIXDELTA_NETRC_FILE") {
        if !f.is_empty() {
            return Some(f.into());
        }
    }
    let nix_default = Path::new("/etc/nix/netrc");
    nix_default.exists().then(|| nix_default.to_path_buf())
}

/// The netrc entry for `host` (or `default`), as curl reads it.
pub fn netrc_lookup(file: &Path, host: &str) -> std::result::Result<Auth, String> {
    let text = Zeroizing::new(std::fs::read_to_string(file).map_err(|e| e.to_string())?);
    Ok(parse_netrc(&text, host))
}

fn parse_netrc(text: &str, host: &str) -> Auth {
    let mut tokens = text.split_whitespace();
    // (machine matches, login, password) of the entry being read.
    let mut current: Option<(bool, Option<String>, Option<Secret<String>>)> = None;
    let mut found = None;
    let mut default = None;
    let finish = |cur: Option<(bool, Option<String>, Option<Secret<String>>)>,
                  is_default: bool,
                  found: &mut Option<Auth>,
                  default: &mut Option<Auth>| {
        if let Some((matches, Some(user), password)) = cur {
            let auth = Auth::Basic {
                user,
                password: password.unwrap_or_default(),
            };
            if is_default {
                if default.is_none() {
                    *default = Some(auth);
                }
            } else if matches && found.is_none() {
                *found = Some(auth);
            }
        }
    };
    let mut is_default = false;
    while let Some(tok) = tokens.next() {
        match tok {
            "machine" => {
                finish(current.take(), is_default, &mut found, &mut default);
                let name = tokens.next().unwrap_or_default();
                is_default = false;
                current = Some((name.eq_ignore_ascii_case(host), None, None));
            }
            "default" => {
                finish(current.take(), is_default, &mut found, &mut default);
                is_default = true;
                current = Some((true, None, None));
            }
            "login" => {
                if let (Some(c), Some(v)) = (current.as_mut(), tokens.next()) {
                    c.1 = Some(v.to_string());
                }
            }
            "password" => {
                if let (Some(c), Some(v)) = (current.as_mut(), tokens.next()) {
                    c.2 = Some(Secret::new(v.to_string()));
                }
            }
            "account" => {
                tokens.next();
            }
            _ => {}
        }
    }
    finish(current.take(), is_default, &mut found, &mut default);
    found.or(default).unwrap_or(Auth::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(a: &Auth) -> Option<(String, String)> {
        match a {
            Auth::Basic { user, password } => Some((user.clone(), password.expose().to_string())),
            _ => None,
        }
    }

    #[test]
    fn netrc_entries() {
        let text = "machine a.example login ua password pa\n\
                    machine b.example\n  login ub\n  password pb\n\
                    default login ud password pd\n";
        assert_eq!(
            basic(&parse_netrc(text, "b.example")),
            Some(("ub".into(), "pb".into()))
        );
        assert_eq!(
            basic(&parse_netrc(text, "A.example")),
            Some(("ua".into(), "pa".into()))
        );
        assert_eq!(
            basic(&parse_netrc(text, "c.example")),
            Some(("ud".into(), "pd".into()))
        );
        assert!(matches!(
            parse_netrc("machine x login u password p", "y"),
            Auth::None
        ));
    }

    #[test]
    fn auth_debug_is_redacted() {
        let a = Auth::Basic {
            user: "u".into(),
            password: Secret::new("hunter2".into()),
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let b = Auth::Bearer(Secret::new("tok123".into()));
        assert!(!format!("{b:?}").contains("tok123"));
    }

    #[test]
    fn index_links_of_nginx_autoindex() {
        let html = r#"<html><body><h1>Index of /</h1><hr><pre><a href="../">../</a>
<a href="nar/">nar/</a>    21-Nov-2026 12:00    -
<a href="abc.narinfo">abc.narinfo</a>  21-Nov-2026 12:00   412
<a href="nix-cache-info">nix-cache-info</a>
<a href="?C=M;O=A">sort</a></pre></body></html>"#;
        assert_eq!(index_links(html), vec!["abc.narinfo", "nix-cache-info"]);
    }

    #[test]
    fn url_credentials_are_not_shown() {
        let c = HttpCache::open(
            "http://me:s3cret@127.0.0.1:1/c?x=1",
            &CacheOptions::default(),
        )
        .unwrap();
        assert_eq!(c.url(), "http://127.0.0.1:1/c");
        assert!(!format!("{:?}", c.inner).contains("s3cret"));
    }
}
