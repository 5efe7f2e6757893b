//! The direct way in: NARs unpacked in parallel into temporary names in
//! the store dir, verified, renamed into place under Nix's path locks
//! (validity re-checked once the lock is held), registered in batches.

use super::*;

enum Body {
    Whole(Vec<u8>),
    Stream(Receiver<Vec<u8>>),
}

/// Reads a chunk stream as one byte stream.
struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct Job {
    idx: usize,
    body: Body,
}

/// What `unpack_one` did with a path.
struct Placed {
    /// Someone else (a concurrent build or restore) made the path valid
    /// before we got its lock: our copy was thrown away, nothing to register.
    already_valid: bool,
}

type Done = (usize, std::result::Result<Placed, String>);

pub(super) fn direct<R: Read>(
    store: &Store,
    l: &Layout,
    src: &mut R,
    entries: &[ParsedEntry],
    actions: &[Action],
    what: &str,
    opts: &ImportOptions,
) -> Result<(usize, u64, usize)> {
    // Trees a killed restore left (`.nixdelta-<pid>-…`). The age spares a
    // restore in another pid namespace (a container sharing this store).
    crate::store::leftovers::remove(
        &l.real_store_dir,
        ".nixdelta-",
        std::time::Duration::from_secs(600),
    );
    let jobs = opts.jobs.max(1);
    let (job_tx, job_rx) = bounded::<Job>(jobs * 2);
    let (done_tx, done_rx) = bounded::<Done>(entries.len().max(1));
    let store_dir = store.store_dir().to_string();
    let mut registrar = Registrar {
        l,
        store,
        entries,
        results: HashMap::new(),
        order: (0..entries.len())
            .filter(|&i| actions[i] == Action::Import)
            .collect(),
        next: 0,
        added: 0,
        already_valid: 0,
        bytes: 0,
    };
    let mut failure: Option<Error> = None;
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            let real = &l.real_store_dir;
            let store_dir = &store_dir;
            let spec = &l.spec;
            s.spawn(move || {
                // Each thread reads the DB through its own connection (a
                // connection is not shared between threads), opened on
                // first need: only paths found on disk are re-checked.
                let mut own: Option<Store> = None;
                let mut is_valid = |p: &StorePath| -> std::result::Result<bool, String> {
                    if own.is_none() {
                        own = Some(Store::open(spec).map_err(|e| e.to_string())?);
                    }
                    let s = own.as_ref().unwrap();
                    s.path_info(p)
                        .map(|i| i.is_some())
                        .map_err(|e| e.to_string())
                };
                for job in job_rx.iter() {
                    let e = &entries[job.idx];
                    let r = unpack_one(real, store_dir, e, job.idx, job.body, &mut is_valid);
                    if done_tx.send((job.idx, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(done_tx);
        let feed = (|| -> Result<()> {
            for (i, e) in entries.iter().enumerate() {
                if actions[i] != Action::Import {
                    discard(src, e.nar_size, what)?;
                    continue;
                }
                if e.nar_size <= SMALL_NAR {
                    let mut buf = vec![0u8; e.nar_size as usize];
                    src.read_exact(&mut buf).map_err(|e| read_err(what, e))?;
                    if job_tx
                        .send(Job {
                            idx: i,
                            body: Body::Whole(buf),
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                } else {
                    let (tx, rx) = bounded::<Vec<u8>>(4);
                    if job_tx
                        .send(Job {
                            idx: i,
                            body: Body::Stream(rx),
                        })
                        .is_err()
                    {
                        return Ok(());
                    }
                    let mut left = e.nar_size;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        let mut buf = vec![0u8; n];
                        src.read_exact(&mut buf).map_err(|e| read_err(what, e))?;
                        left -= n as u64;
                        if tx.send(buf).is_err() {
                            // The unpacker failed (e.g. a full disk) and
                            // reports why. Stop reading: going on to the next
                            // entry from the middle of this NAR would report a
                            // corrupt archive instead of the real cause.
                            return Ok(());
                        }
                    }
                }
                // Register what is ready; stop early on a failed path.
                while let Ok((idx, r)) = done_rx.try_recv() {
                    registrar.results.insert(idx, r);
                }
                registrar.flush(false, what)?;
            }
            format::read_trailer(src, what)
        })();
        drop(job_tx);
        if let Err(e) = feed {
            failure = Some(e);
        }
        for (idx, r) in done_rx.iter() {
            registrar.results.insert(idx, r);
        }
    });
    // Everything is unpacked or failed: register the verified prefix.
    let flushed = registrar.flush(true, what);
    let first_path_error = registrar.first_error();
    registrar.discard_unregistered();
    if let Some(e) = failure {
        return Err(e);
    }
    flushed?;
    if let Some(msg) = first_path_error {
        return Err(path_error(what, &msg));
    }
    if registrar.added + registrar.already_valid != registrar.order.len() {
        return Err(Error::Other(anyhow::anyhow!(
            "store archive {what}: unpacking stopped after {} of {} paths",
            registrar.added,
            registrar.order.len()
        )));
    }
    Ok((registrar.added, registrar.bytes, registrar.already_valid))
}

struct Registrar<'a> {
    l: &'a Layout,
    store: &'a Store,
    entries: &'a [ParsedEntry],
    results: HashMap<usize, std::result::Result<Placed, String>>,
    /// Entry indexes to import, in archive order.
    order: Vec<usize>,
    /// Position in `order` of the first unregistered path.
    next: usize,
    added: usize,
    /// Paths made valid by someone else while this import ran.
    already_valid: usize,
    bytes: u64,
}

impl Registrar<'_> {
    /// Registers the contiguous run of verified paths from `next`, in
    /// batches of `BATCH` (or all of it when `all`). Errors of a path stop
    /// the run there; `Err` is returned only when Nix fails to register.
    fn flush(&mut self, all: bool, what: &str) -> Result<()> {
        if !all {
            // Fail fast: the caller stops feeding; the final flush registers
            // the verified run before the failed path.
            if let Some(m) = self.first_error() {
                return Err(path_error(what, &m));
            }
        }
        loop {
            let mut end = self.next;
            while end < self.order.len()
                && end - self.next < BATCH
                && matches!(self.results.get(&self.order[end]), Some(Ok(_)))
            {
                end += 1;
            }
            let n = end - self.next;
            if n == 0 || (n < BATCH && !all) {
                return Ok(());
            }
            let batch: Vec<usize> = self.order[self.next..end]
                .iter()
                .copied()
                .filter(|i| !matches!(self.results.get(i), Some(Ok(p)) if p.already_valid))
                .collect();
            self.already_valid += n - batch.len();
            let registered = self.register(&batch, what)?;
            self.already_valid += batch.len() - registered.len();
            for i in registered {
                self.bytes += self.entries[i].nar_size;
                self.added += 1;
                crate::progress::add(1, self.entries[i].nar_size);
            }
            for i in &self.order[self.next..end] {
                self.results.remove(i);
            }
            self.next = end;
        }
    }

    /// Registers the batch's paths that are still invalid; returns those.
    fn register(&self, batch: &[usize], what: &str) -> Result<Vec<usize>> {
        let paths: Vec<StorePath> = batch
            .iter()
            .map(|&i| self.entries[i].path.clone())
            .collect();
        // A concurrent job may have registered some meanwhile: skip those
        // (`--load-db` would overwrite their signatures).
        let valid = self.store.path_infos(&paths)?;
        let store_dir = self.store.store_dir();
        let mut text = String::new();
        let mut registered = Vec::new();
        for (&i, v) in batch.iter().zip(valid) {
            if v.is_some() {
                continue;
            }
            registered.push(i);
            let e = &self.entries[i];
            text.push_str(&e.path.to_absolute(store_dir));
            text.push('\n');
            text.push_str(&e.nar_hash.to_hex());
            text.push('\n');
            text.push_str(&e.nar_size.to_string());
            text.push('\n');
            if let Some(d) = &e.deriver {
                text.push_str(&d.to_absolute(store_dir));
            }
            text.push('\n');
            text.push_str(&e.references.len().to_string());
            text.push('\n');
            for r in &e.references {
                text.push_str(&r.to_absolute(store_dir));
                text.push('\n');
            }
        }
        if text.is_empty() {
            return Ok(registered);
        }
        let mut cmd = nix_command(self.l, "nix-store");
        cmd.arg("--load-db");
        run_with_stdin(cmd, text.as_bytes())
            .map_err(|e| Error::Store(format!("store archive {what}: registering paths: {e}")))?;
        Ok(registered)
    }

    fn first_error(&self) -> Option<String> {
        self.order[self.next..]
            .iter()
            .find_map(|i| match self.results.get(i) {
                Some(Err(m)) => Some(m.clone()),
                _ => None,
            })
    }

    /// Removes paths renamed into place but not registered.
    fn discard_unregistered(&mut self) {
        for &i in &self.order[self.next..] {
            if let Some(Ok(placed)) = self.results.get(&i) {
                if placed.already_valid {
                    continue; // someone else's valid path: not ours to remove
                }
                let real = self.l.real_store_dir.join(self.entries[i].path.to_string());
                if let Err(e) = nar_unpack::remove_tree(&real) {
                    tracing::warn!("cannot remove unregistered {}: {e}", real.display());
                }
            }
        }
        self.results.clear();
    }
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> std::result::Result<(), String> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().unwrap();
    let w = stdin.write_all(input);
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{:?} failed: {}", cmd.get_program(), err.trim()));
    }
    w.map_err(|e| e.to_string())
}

/// How a path error starts when the disk is full: the machine's fault
/// (exit 1), not the archive's (exit 7).
const NO_SPACE: &str = "no space left on ";

/// The error for a path that failed: integrity, unless the disk is full.
fn path_error(what: &str, msg: &str) -> Error {
    if msg.starts_with(NO_SPACE) {
        Error::Other(anyhow::anyhow!("store archive {what}: {msg}"))
    } else {
        Error::Integrity(format!("store archive {what}: {msg}"))
    }
}

/// Unpacks, verifies and renames one path into place.
fn unpack_one(
    real_store: &Path,
    store_dir: &str,
    e: &ParsedEntry,
    idx: usize,
    body: Body,
    is_valid: &mut dyn FnMut(&StorePath) -> std::result::Result<bool, String>,
) -> std::result::Result<Placed, String> {
    let tmp = real_store.join(format!(
        ".nixdelta-{}-{idx}-{}",
        std::process::id(),
        e.path.hash_part()
    ));
    let r = (|| -> std::result::Result<Placed, String> {
        let reader: Box<dyn Read> = match body {
            Body::Whole(v) => Box::new(io::Cursor::new(v)),
            Body::Stream(rx) => Box::new(ChunkReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            }),
        };
        let mut hr = HashingReader {
            inner: reader,
            hash: Sha256::new(),
            n: 0,
        };
        let abs = e.path.to_absolute(store_dir);
        nar_unpack::unpack(&mut hr, &tmp, UnpackOptions { canonicalise: true }).map_err(|err| {
            // nar_unpack passes a full disk through unwrapped.
            if err.raw_os_error() == Some(libc::ENOSPC) {
                format!("{NO_SPACE}{}", real_store.display())
            } else if err.kind() == io::ErrorKind::InvalidData {
                format!("archive is corrupt: NAR of {abs}: {err}")
            } else {
                format!("unpacking {abs}: {err}")
            }
        })?;
        // Whatever the NAR did not use still counts (and must not exist).
        io::copy(&mut hr, &mut io::sink()).map_err(|err| err.to_string())?;
        if hr.n != e.nar_size {
            return Err(format!(
                "archive is corrupt: NAR of {abs} has {} bytes, the manifest says {}",
                hr.n, e.nar_size
            ));
        }
        let got = Sha256Hash(hr.hash.finalize().into());
        if got != e.nar_hash {
            return Err(mismatch(e, got, store_dir));
        }
        let dest = real_store.join(e.path.to_string());
        // Nix's lock, held for the swap only: holding it until the batch is
        // registered could deadlock two restores that wait for each other's
        // paths. Registration skips paths someone else registered meanwhile.
        let lock = PathLock::acquire(&dest).map_err(|err| format!("locking {abs}: {err}"))?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            // Nix's rule: after taking a path's lock, re-check validity. A
            // build (or another restore) may have produced and registered
            // it while we waited; its content, not ours, is what the DB
            // describes (a nondeterministic build differs from our copy).
            if is_valid(&e.path).map_err(|err| format!("checking {abs}: {err}"))? {
                drop(lock);
                return Ok(Placed {
                    already_valid: true,
                });
            }
            // An invalid leftover (or a concurrent copy of the same
            // content): swap atomically, then delete the old tree.
            exchange(&tmp, &dest).map_err(|err| format!("replacing {abs}: {err}"))?;
        } else {
            std::fs::rename(&tmp, &dest).map_err(|err| format!("renaming into {abs}: {err}"))?;
        }
        drop(lock);
        Ok(Placed {
            already_valid: false,
        })
    })();
    if let Err(err) = nar_unpack::remove_tree(&tmp) {
        tracing::warn!("cannot remove {}: {err}", tmp.display());
    }
    r
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = std::ffi::CString::new(a.as_os_str().as_encoded_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_encoded_bytes())?;
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nix's path lock: `flock` on `<path>.lock`, retried when the file went
/// stale (unlinked by its previous holder, who then wrote a byte to it).
pub struct PathLock {
    path: PathBuf,
    file: File,
}

impl PathLock {
    pub fn acquire(path: &Path) -> io::Result<PathLock> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        loop {
            use std::os::unix::fs::OpenOptionsExt as _;
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&lock_path)?;
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(io::Error::last_os_error());
            }
            if file.metadata()?.len() == 0 {
                return Ok(PathLock {
                    path: lock_path,
                    file,
                });
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.write_all(b"d");
    }
}
