//! A fake of the GitHub Actions cache service (v2), for the tests of the
//! `github` archive backend: no such service runs here. It speaks the real
//! wire protocols (twirp JSON and Azure block blobs) and is at least as
//! strict as the real servers: block ids only in the Azure SDK's layout,
//! one upload id per blob, unknown block ids refused, finalize only after
//! the committed blob. The official `@actions/cache` client checks it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) version: String,
    pub(super) blob: String,
    pub(super) committed: bool,
    pub(super) seq: u64,
    /// The ref the entry is scoped to, and its times (seconds since the
    /// epoch), as GitHub's REST API lists them.
    pub(super) git_ref: String,
    pub(super) created: i64,
    pub(super) accessed: i64,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) entries: Vec<Entry>,
    pub(super) blobs: HashMap<String, Vec<u8>>,
    blocks: HashMap<(String, String), Vec<u8>>,
    /// The upload id of each blob's first block.
    block_prefix: HashMap<String, String>,
    /// Answer ranged GETs with the whole blob (200), as some servers do.
    ignore_range: bool,
    /// Refuse every block (a storage outage).
    refuse_blocks: bool,
    pub(super) seq: u64,
    /// (method, path) of every request, for assertions.
    pub(super) log: Vec<String>,
    /// The ref of the job the runtime token belongs to (new entries'
    /// scope), and the REST API's token and permissions.
    pub(super) job_ref: String,
    pub(super) rest: super::github_rest::RestAuth,
}

/// A test server that speaks the real twirp JSON wire protocol of
/// `github.actions.results.api.v1.CacheService` (CreateCacheEntry,
/// FinalizeCacheEntryUpload, GetCacheEntryDownloadURL; Bearer token
/// checked) and serves Azure block-blob style signed URLs (Put Blob, Put
/// Block, Put Block List, GET with Range). HTTP/1.1 with keep-alive,
/// bound to 127.0.0.1; stops when dropped.
pub struct TwirpCacheTestServer {
    pub port: u16,
    pub token: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TwirpCacheTestServer {
    pub fn start() -> TwirpCacheTestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<Mutex<State>> = Arc::new(Mutex::new(State {
            job_ref: "refs/heads/main".into(),
            rest: super::github_rest::RestAuth::default(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let token = "test-runtime-token".to_string();
        let (s, st, tok) = (state.clone(), stop.clone(), token.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, tok, st) = (s.clone(), tok.clone(), st.clone());
                        std::thread::spawn(move || serve_conn(conn, port, &tok, &s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TwirpCacheTestServer {
            port,
            token,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    pub fn ignore_range(&self, on: bool) {
        self.state.lock().unwrap().ignore_range = on;
    }

    pub fn refuse_blocks(&self, on: bool) {
        self.state.lock().unwrap().refuse_blocks = on;
    }

    /// The state, for the REST API's test methods (github_rest.rs).
    pub(super) fn state(&self) -> &Mutex<State> {
        &self.state
    }
}

impl Drop for TwirpCacheTestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) query: HashMap<String, String>,
    pub(super) headers: HashMap<String, String>,
    pub(super) body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        body.resize(n, 0);
        r.read_exact(&mut body).ok()?;
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
        body,
    })
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn respond(w: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Status",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(body);
}

fn serve_conn(conn: TcpStream, port: u16, token: &str, state: &Mutex<State>, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    while !stop.load(Ordering::SeqCst) {
        let Some(req) = read_request(&mut r) else {
            return;
        };
        state.lock().unwrap().log.push(format!(
            "{} {}{}",
            req.method,
            req.path,
            req.query
                .get("comp")
                .map(|c| format!(" comp={c}"))
                .unwrap_or_default()
                + &req
                    .headers
                    .get("range")
                    .map(|c| format!(" range={c}"))
                    .unwrap_or_default()
        ));
        if let Some(method) = req
            .path
            .strip_prefix("/twirp/github.actions.results.api.v1.CacheService/")
        {
            twirp(&mut w, method, &req, port, token, state);
        } else if req.path.starts_with("/devstoreaccount1/actions-cache/") {
            blob(&mut w, &req, state);
        } else if req.path.starts_with("/repos/") || req.path.starts_with("/repositories/") {
            super::github_rest::serve(&mut w, &req, port, state);
        } else {
            respond(&mut w, 404, &[], b"not found");
        }
    }
}

pub(super) fn json_resp(w: &mut TcpStream, status: u16, v: serde_json::Value) {
    respond(
        w,
        status,
        &[("Content-Type", "application/json".into())],
        v.to_string().as_bytes(),
    );
}

fn twirp(
    w: &mut TcpStream,
    method: &str,
    req: &Request,
    port: u16,
    token: &str,
    state: &Mutex<State>,
) {
    use serde_json::json;
    if req.method != "POST" {
        return json_resp(
            w,
            404,
            json!({"code": "bad_route", "msg": "twirp methods are POST"}),
        );
    }
    if req.headers.get("authorization") != Some(&format!("Bearer {token}")) {
        return json_resp(
            w,
            401,
            json!({"code": "unauthenticated", "msg": "bad token"}),
        );
    }
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&req.body) else {
        return json_resp(w, 400, json!({"code": "malformed", "msg": "bad JSON"}));
    };
    let s = |v: &serde_json::Value, camel: &str, snake: &str| {
        v.get(camel)
            .or_else(|| v.get(snake))
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string()
    };
    let key = s(&body, "key", "key");
    let version = s(&body, "version", "version");
    let mut st = state.lock().unwrap();
    let url = |blob: &str| {
        format!(
            "http://127.0.0.1:{port}/devstoreaccount1/actions-cache/{blob}?sv=2020-10-02&sig=test"
        )
    };
    match method {
        "CreateCacheEntry" => {
            if key.is_empty() || version.is_empty() {
                return json_resp(
                    w,
                    400,
                    json!({"code": "invalid_argument", "msg": "key and version required"}),
                );
            }
            if st
                .entries
                .iter()
                .any(|e| e.key == key && e.version == version)
            {
                return json_resp(
                    w,
                    200,
                    json!({"ok": false, "message": "entry already exists or is being created"}),
                );
            }
            st.seq += 1;
            let blob = format!("blob-{}", st.seq);
            let seq = st.seq;
            let now = super::github_rest::now();
            let git_ref = st.job_ref.clone();
            st.entries.push(Entry {
                key,
                version,
                blob: blob.clone(),
                committed: false,
                seq,
                git_ref,
                created: now,
                accessed: now,
            });
            json_resp(w, 200, json!({"ok": true, "signedUploadUrl": url(&blob)}))
        }
        "FinalizeCacheEntryUpload" => {
            let size: u64 = body
                .get("sizeBytes")
                .or_else(|| body.get("size_bytes"))
                .and_then(|v| {
                    v.as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| v.as_u64())
                })
                .unwrap_or(u64::MAX);
            let st = &mut *st;
            let Some(e) = st
                .entries
                .iter_mut()
                .find(|e| e.key == key && e.version == version && !e.committed)
            else {
                return json_resp(
                    w,
                    200,
                    json!({"ok": false, "message": "no such reservation"}),
                );
            };
            let actual = st.blobs.get(&e.blob).map(|b| b.len() as u64);
            if actual != Some(size) {
                return json_resp(
                    w,
                    200,
                    json!({"ok": false, "message": format!("size {size} but blob has {actual:?}")}),
                );
            }
            e.committed = true;
            json_resp(w, 200, json!({"ok": true, "entryId": e.seq.to_string()}))
        }
        "GetCacheEntryDownloadURL" => {
            let restore: Vec<String> = body
                .get("restoreKeys")
                .or_else(|| body.get("restore_keys"))
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let live = |e: &&Entry| e.committed && e.version == version;
            let found = st
                .entries
                .iter()
                .filter(live)
                .find(|e| e.key == key)
                .or_else(|| {
                    restore.iter().find_map(|p| {
                        st.entries
                            .iter()
                            .filter(live)
                            .filter(|e| e.key.starts_with(p.as_str()))
                            .max_by_key(|e| e.seq)
                    })
                });
            match found {
                Some(e) => json_resp(
                    w,
                    200,
                    json!({"ok": true, "signedDownloadUrl": url(&e.blob), "matchedKey": e.key}),
                ),
                None => json_resp(
                    w,
                    200,
                    json!({"ok": false, "signedDownloadUrl": "", "matchedKey": ""}),
                ),
            }
        }
        _ => json_resp(
            w,
            404,
            json!({"code": "bad_route", "msg": format!("no method {method}")}),
        ),
    }
}

fn blob(w: &mut TcpStream, req: &Request, state: &Mutex<State>) {
    let name = req.path.rsplit('/').next().unwrap().to_string();
    if req.query.get("sig").map(String::as_str) != Some("test") {
        return respond(w, 403, &[], b"AuthenticationFailed");
    }
    let azure = |extra: Vec<(&'static str, String)>| {
        let mut h = vec![
            ("ETag", "\"0x8D000000000000\"".to_string()),
            ("Last-Modified", "Thu, 01 Jan 2026 00:00:00 GMT".to_string()),
            (
                "x-ms-request-id",
                "00000000-0000-0000-0000-000000000000".to_string(),
            ),
            ("x-ms-version", "2020-10-02".to_string()),
            ("x-ms-request-server-encrypted", "true".to_string()),
        ];
        h.extend(extra);
        h
    };
    let mut st = state.lock().unwrap();
    match (
        req.method.as_str(),
        req.query.get("comp").map(String::as_str),
    ) {
        ("PUT", Some("block")) => {
            if st.refuse_blocks {
                return respond(w, 503, &[], b"ServerBusy");
            }
            let id = req.query.get("blockid").cloned().unwrap_or_default();
            let Some(prefix) = sdk_block_prefix(&id) else {
                return respond(w, 400, &[], b"Invalid block id");
            };
            // Azure: every block of a blob has an id of one length; the
            // servers self-hosted runners use also want one upload id.
            let first = st
                .block_prefix
                .entry(name.clone())
                .or_insert(prefix.clone());
            if *first != prefix {
                return respond(w, 400, &[], b"Invalid block id: another upload id");
            }
            st.blocks.insert((name, id), req.body.clone());
            respond(w, 201, &azure(vec![]), b"");
        }
        ("PUT", Some("blocklist")) => {
            let xml = String::from_utf8_lossy(&req.body).to_string();
            let mut data = Vec::new();
            for part in xml.split('<').skip(1) {
                let Some((tag, rest)) = part.split_once('>') else {
                    continue;
                };
                if ["Latest", "Uncommitted", "Committed"].contains(&tag) {
                    match st.blocks.get(&(name.clone(), rest.to_string())) {
                        Some(b) => data.extend_from_slice(b),
                        None => return respond(w, 400, &[], b"InvalidBlockList"),
                    }
                }
            }
            st.blobs.insert(name, data);
            respond(w, 201, &azure(vec![]), b"");
        }
        ("PUT", None) => {
            st.blobs.insert(name, req.body.clone());
            respond(w, 201, &azure(vec![]), b"");
        }
        ("GET" | "HEAD", None) => {
            let Some(data) = st.blobs.get(&name) else {
                return respond(w, 404, &[], b"BlobNotFound");
            };
            let range = req
                .headers
                .get("x-ms-range")
                .or_else(|| req.headers.get("range"))
                .filter(|_| !st.ignore_range);
            let total = data.len() as u64;
            let body_of = |b: &[u8]| {
                if req.method == "HEAD" {
                    Vec::new()
                } else {
                    b.to_vec()
                }
            };
            match range
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split_once('-'))
            {
                Some((a, b)) => {
                    let a: u64 = a.parse().unwrap_or(0);
                    let b: u64 = b
                        .parse()
                        .unwrap_or(total.saturating_sub(1))
                        .min(total.saturating_sub(1));
                    if a >= total {
                        return respond(
                            w,
                            416,
                            &[("Content-Range", format!("bytes */{total}"))],
                            b"",
                        );
                    }
                    let slice = &data[a as usize..=b as usize];
                    respond(
                        w,
                        206,
                        &azure(vec![
                            ("Content-Range", format!("bytes {a}-{b}/{total}")),
                            ("Accept-Ranges", "bytes".into()),
                        ]),
                        &body_of(slice),
                    );
                }
                None => respond(
                    w,
                    200,
                    &azure(vec![
                        ("Accept-Ranges", "bytes".into()),
                        ("x-ms-blob-type", "BlockBlob".into()),
                    ]),
                    &body_of(data),
                ),
            }
        }
        _ => respond(w, 400, &[], b"unsupported"),
    }
}

/// The upload id of a block id in the Azure SDK's layout (what
/// `@actions/cache` sends, and all that strict servers accept): base64 of
/// 48 bytes, a 36-character UUID then a 12-digit zero-padded index.
fn sdk_block_prefix(id: &str) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(id).ok()?;
    let text = String::from_utf8(raw).ok()?;
    if text.len() != 48 {
        return None;
    }
    let (uuid, index) = text.split_at(36);
    let uuid_ok = uuid.char_indices().all(|(i, c)| {
        if [8, 13, 18, 23].contains(&i) {
            c == '-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    (uuid_ok && index.bytes().all(|b| b.is_ascii_digit())).then(|| uuid.to_string())
}
