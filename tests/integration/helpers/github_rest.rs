//! A fake of GitHub's REST API for Actions caches, on the same server and
//! entries as the cache service fake (as on github.com, where the entries
//! the runtime token saves are the ones the REST API lists). No GitHub
//! API runs here. It speaks the real paths, headers and pagination and is
//! as strict as api.github.com:
//! * a `User-Agent` is required (403 without, as GitHub answers);
//! * `Authorization: Bearer|token <token>` is required (401 "Bad credentials");
//! * `X-GitHub-Api-Version`, when sent, must be a version GitHub has (400);
//! * `GET /repos/{o}/{r}/actions/caches` filters by `key` (a prefix) and
//!   `ref` (exact), sorts by last access (newest first), pages with
//!   `per_page` (default 30, at most 100) and `page`, and links pages in a
//!   `Link` header whose URLs are `/repositories/{id}/…`, not the path asked;
//! * `DELETE /repos/{o}/{r}/actions/caches/{id}`: 204, or 404 for no such id;
//! * `GET /repos/{o}/{r}/actions/cache/usage`;
//! * without `actions: read` (lists, usage) or `actions: write` (deletes),
//!   403 "Resource not accessible by integration".

use std::net::TcpStream;
use std::sync::Mutex;

use serde_json::json;

use super::actions_cache::{json_resp, respond, Entry, Request, State, TwirpCacheTestServer};

pub const OWNER: &str = "nixdelta-org";
pub const REPO: &str = "app";
const REPO_ID: u64 = 4242;
const VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];

/// The REST API's token and what it may do, and the requests it served.
#[derive(Clone, Debug)]
pub struct RestAuth {
    pub token: String,
    pub read: bool,
    pub write: bool,
    /// `METHOD path?query` of every REST request, in order.
    pub log: Vec<String>,
}

impl Default for RestAuth {
    fn default() -> Self {
        RestAuth {
            token: "test-github-token".into(),
            read: true,
            write: true,
            log: Vec::new(),
        }
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

impl TwirpCacheTestServer {
    /// `GITHUB_API_URL` for this server.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn rest_token(&self) -> String {
        self.state().lock().unwrap().rest.token.clone()
    }

    /// What the REST token may do (`actions: read` / `actions: write`).
    pub fn rest_permissions(&self, read: bool, write: bool) {
        let mut st = self.state().lock().unwrap();
        st.rest.read = read;
        st.rest.write = write;
    }

    pub fn rest_log(&self) -> Vec<String> {
        self.state().lock().unwrap().rest.log.clone()
    }

    /// A committed entry made `age` seconds ago, of `size` bytes.
    pub fn seed(&self, key: &str, version: &str, git_ref: &str, age: i64, size: usize) {
        let mut st = self.state().lock().unwrap();
        st.seq += 1;
        let blob = format!("seed-{}", st.seq);
        st.blobs.insert(blob.clone(), vec![0u8; size]);
        let seq = st.seq;
        st.entries.push(Entry {
            key: key.into(),
            version: version.into(),
            blob,
            committed: true,
            seq,
            git_ref: git_ref.into(),
            created: now() - age,
            accessed: now() - age,
        });
    }

    /// `(key, ref)` of the committed entries.
    pub fn entries(&self) -> Vec<(String, String)> {
        let st = self.state().lock().unwrap();
        st.entries
            .iter()
            .filter(|e| e.committed)
            .map(|e| (e.key.clone(), e.git_ref.clone()))
            .collect()
    }
}

fn message(w: &mut TcpStream, status: u16, msg: &str) {
    json_resp(
        w,
        status,
        json!({"message": msg, "documentation_url": "https://docs.github.com/rest/actions/cache", "status": status.to_string()}),
    );
}

/// Serves one REST request (paths under `/repos/` or `/repositories/`).
pub(super) fn serve(w: &mut TcpStream, req: &Request, port: u16, state: &Mutex<State>) {
    let mut st = state.lock().unwrap();
    let mut q: Vec<_> = req.query.iter().collect();
    q.sort();
    let qs: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    st.rest
        .log
        .push(format!("{} {}?{}", req.method, req.path, qs.join("&")));
    if !req.headers.contains_key("user-agent") {
        return message(w, 403, "Request forbidden by administrative rules. Please make sure your request has a User-Agent header");
    }
    let auth = req.headers.get("authorization").map(String::as_str);
    let tok = &st.rest.token;
    if auth != Some(&format!("Bearer {tok}")) && auth != Some(&format!("token {tok}")) {
        return message(w, 401, "Bad credentials");
    }
    if let Some(v) = req.headers.get("x-github-api-version") {
        if !VERSIONS.contains(&v.as_str()) {
            return message(
                w,
                400,
                &format!("Unsupported 'X-GitHub-Api-Version' header: {v}"),
            );
        }
    }
    let repo_path = format!("/repos/{OWNER}/{REPO}/actions/");
    let id_path = format!("/repositories/{REPO_ID}/actions/");
    // Paths are compared decoded, as GitHub does.
    let path = super::actions_cache::percent_decode(&req.path);
    let Some(tail) = path
        .strip_prefix(&repo_path)
        .or_else(|| path.strip_prefix(&id_path))
    else {
        return message(w, 404, "Not Found");
    };
    match (req.method.as_str(), tail) {
        ("GET", "caches") => list(w, req, port, &st),
        ("GET", "cache/usage") => {
            if !st.rest.read {
                return message(w, 403, "Resource not accessible by integration");
            }
            let live: Vec<&Entry> = st.entries.iter().filter(|e| e.committed).collect();
            let size: usize = live
                .iter()
                .map(|e| st.blobs.get(&e.blob).map_or(0, Vec::len))
                .sum();
            json_resp(
                w,
                200,
                json!({"full_name": format!("{OWNER}/{REPO}"), "active_caches_size_in_bytes": size, "active_caches_count": live.len()}),
            )
        }
        ("DELETE", t) if t.starts_with("caches/") => {
            if !st.rest.write {
                return message(w, 403, "Resource not accessible by integration");
            }
            let Ok(id) = t["caches/".len()..].parse::<u64>() else {
                return message(w, 404, "Not Found");
            };
            let before = st.entries.len();
            st.entries.retain(|e| !(e.committed && e.seq == id));
            if st.entries.len() == before {
                return message(w, 404, "Not Found");
            }
            respond(w, 204, &[], b"");
        }
        _ => message(w, 404, "Not Found"),
    }
}

fn list(w: &mut TcpStream, req: &Request, port: u16, st: &State) {
    if !st.rest.read {
        return message(w, 403, "Resource not accessible by integration");
    }
    let num = |k: &str, d: usize| -> Option<usize> {
        match req.query.get(k) {
            None => Some(d),
            Some(v) => v.parse().ok(),
        }
    };
    let (Some(per_page), Some(page)) = (num("per_page", 30), num("page", 1)) else {
        return message(w, 400, "Invalid request.");
    };
    let per_page = per_page.clamp(1, 100);
    let page = page.max(1);
    let mut hits: Vec<&Entry> = st
        .entries
        .iter()
        .filter(|e| e.committed)
        .filter(|e| {
            req.query
                .get("key")
                .is_none_or(|k| e.key.starts_with(k.as_str()))
        })
        .filter(|e| req.query.get("ref").is_none_or(|r| e.git_ref == *r))
        .collect();
    hits.sort_by_key(|e| std::cmp::Reverse((e.accessed, e.seq)));
    let pages = hits.len().div_ceil(per_page).max(1);
    let items: Vec<serde_json::Value> = hits
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|e| {
            json!({
                "id": e.seq,
                "ref": e.git_ref,
                "key": e.key,
                "version": e.version,
                "last_accessed_at": iso(e.accessed),
                "created_at": iso(e.created),
                "size_in_bytes": st.blobs.get(&e.blob).map_or(0, Vec::len),
            })
        })
        .collect();
    let link = |p: usize| {
        let mut q: Vec<String> = req
            .query
            .iter()
            .filter(|(k, _)| *k != "page")
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect();
        q.sort();
        q.push(format!("page={p}"));
        format!(
            "<http://127.0.0.1:{port}/repositories/{REPO_ID}/actions/caches?{}>",
            q.join("&")
        )
    };
    let mut rels = Vec::new();
    if page > 1 {
        rels.push(format!("{}; rel=\"prev\"", link(page - 1)));
        rels.push(format!("{}; rel=\"first\"", link(1)));
    }
    if page < pages {
        rels.push(format!("{}; rel=\"next\"", link(page + 1)));
        rels.push(format!("{}; rel=\"last\"", link(pages)));
    }
    let body = json!({"total_count": hits.len(), "actions_caches": items}).to_string();
    let mut headers = vec![(
        "Content-Type",
        "application/json; charset=utf-8".to_string(),
    )];
    if !rels.is_empty() {
        headers.push(("Link", rels.join(", ")));
    }
    respond(w, 200, &headers, body.as_bytes());
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
