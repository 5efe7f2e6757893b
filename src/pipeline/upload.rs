//! Uploads a push plan: NARs in parallel (largest first), each narinfo
//! written by one coordinator as soon as its NAR is in and every reference
//! has a narinfo (or is present). A failed path gets no narinfo, and
//! neither does anything that references it: the cache stays consistent.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::cache::frames::Frames;
use crate::cache::{narinfo_name, BinaryCache};
use crate::error::{Error, Result};
use crate::nix::{NarInfo, SecretKey, Signature, StorePath};
use crate::pipeline::pack::{pack, PackOptions, Packed};
use crate::store::PathInfo;

/// After this many cache errors in a row the target is deemed down and the
/// push stops early with one message, instead of one per path.
const MAX_CONSECUTIVE_CACHE_ERRORS: usize = 8;
/// Narinfos written at once when several are ready together.
const PARALLEL_NARINFOS: usize = 16;

#[derive(Clone, Debug)]
pub struct UploadOptions {
    pub jobs: usize,
    pub pack: PackOptions,
    /// Where the compressed NARs are also kept for the job's archive save.
    pub frames: Option<Frames>,
}

impl UploadOptions {
    /// `jobs` paths compressed at once (default: one per core), at zstd
    /// `level`; a large path uses every core.
    pub fn new(jobs: Option<usize>, level: i32) -> UploadOptions {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        UploadOptions {
            jobs: jobs.unwrap_or(cores).max(1),
            pack: PackOptions {
                level,
                threads: cores as u32,
            },
            frames: None,
        }
    }
}

impl Default for UploadOptions {
    /// Nix's zstd level (3), one path per core.
    fn default() -> Self {
        UploadOptions::new(None, 3)
    }
}

/// What an upload did, for the summary.
#[derive(Debug, Default)]
pub struct UploadReport {
    pub uploaded: Vec<StorePath>,
    pub nar_bytes: u64,
    pub file_bytes: u64,
    /// Paths whose NAR or narinfo failed, with why.
    pub failed: Vec<(StorePath, Error)>,
    /// Paths not published because a reference failed.
    pub blocked: Vec<StorePath>,
    /// Set when the target kept failing and the push stopped early.
    pub gave_up: Option<String>,
    pub seconds: f64,
}

/// One path to upload: its info and where its files are.
pub struct Item {
    pub info: PathInfo,
    pub real_path: PathBuf,
}

pub fn upload(
    items: Vec<Item>,
    present: &HashSet<StorePath>,
    cache: &dyn BinaryCache,
    key: &SecretKey,
    store_dir: &str,
    opts: &UploadOptions,
) -> UploadReport {
    let start = Instant::now();
    let total: u64 = items.iter().map(|it| it.info.nar_size).sum();
    let _progress = crate::progress::begin("push", items.len() as u64, total);
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].info.nar_size));
    let (work_tx, work_rx) = crossbeam_channel::unbounded();
    for i in order {
        work_tx.send(i).expect("receiver alive");
    }
    drop(work_tx);
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<(usize, Result<Packed>)>();
    let stop = AtomicBool::new(false);
    // NAR bytes no worker has taken yet: decides when zstd gets threads.
    let queued = AtomicU64::new(items.iter().map(|it| it.info.nar_size).sum());
    let mut publisher = Publisher::new(&items, present, cache, key, store_dir);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            let (work_rx, done_tx, stop, items) = (work_rx.clone(), done_tx.clone(), &stop, &items);
            let queued = &queued;
            s.spawn(move || {
                for i in work_rx {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let item = &items[i];
                    let size = item.info.nar_size;
                    let left = queued.fetch_sub(size, Ordering::Relaxed) - size;
                    let pack_opts = opts.pack.for_path(size, left, opts.jobs.max(1));
                    let frames = opts.frames.as_ref();
                    let r = pack(
                        &item.info,
                        &item.real_path,
                        cache,
                        store_dir,
                        pack_opts,
                        frames,
                    );
                    if done_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        for (i, result) in done_rx {
            crate::progress::add(1, 0);
            publisher.on_packed(i, result);
            if publisher.report.gave_up.is_some() {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    publisher.finish(start)
}

/// The coordinator: publishes narinfos in reference order.
struct Publisher<'a> {
    items: &'a [Item],
    cache: &'a dyn BinaryCache,
    key: &'a SecretKey,
    store_dir: &'a str,
    index: HashMap<&'a StorePath, usize>,
    /// Paths with a narinfo at the target (present before, or published).
    published: HashSet<StorePath>,
    /// NARs done whose narinfo waits for references.
    waiting: HashMap<usize, Packed>,
    /// For each item, the waiting items that reference it.
    dependents: HashMap<usize, Vec<usize>>,
    consecutive_cache_errors: usize,
    report: UploadReport,
}

impl<'a> Publisher<'a> {
    fn new(
        items: &'a [Item],
        present: &HashSet<StorePath>,
        cache: &'a dyn BinaryCache,
        key: &'a SecretKey,
        store_dir: &'a str,
    ) -> Self {
        let index = items
            .iter()
            .enumerate()
            .map(|(i, it)| (&it.info.path, i))
            .collect();
        Publisher {
            items,
            cache,
            key,
            store_dir,
            index,
            published: present.clone(),
            waiting: HashMap::new(),
            dependents: HashMap::new(),
            consecutive_cache_errors: 0,
            report: UploadReport::default(),
        }
    }

    fn on_packed(&mut self, i: usize, result: Result<Packed>) {
        match result {
            Ok(packed) => {
                self.consecutive_cache_errors = 0;
                self.report.nar_bytes += self.items[i].info.nar_size;
                self.report.file_bytes += packed.file_size;
                self.waiting.insert(i, packed);
                self.try_publish(i);
            }
            Err(e) => self.fail(i, e),
        }
    }

    fn fail(&mut self, i: usize, e: Error) {
        if matches!(e, Error::Cache { .. }) {
            self.consecutive_cache_errors += 1;
            if self.consecutive_cache_errors >= MAX_CONSECUTIVE_CACHE_ERRORS {
                self.report.gave_up = Some(format!(
                    "stopped after {} cache errors in a row; last: {e}",
                    self.consecutive_cache_errors
                ));
            }
        }
        let path = self.items[i].info.path.clone();
        tracing::warn!("{}", e);
        self.report.failed.push((path, e));
    }

    /// The first reference of item `i` that has no narinfo yet.
    fn unmet_reference(&self, i: usize) -> Option<&'a StorePath> {
        let info = &self.items[i].info;
        info.references
            .iter()
            .find(|r| **r != info.path && !self.published.contains(*r))
    }

    /// Publishes `i` if ready, then every waiting dependent that became ready.
    /// The narinfos that are ready together are written in parallel (on a
    /// network target their round trips would add up), each still only
    /// after its NAR and its references.
    fn try_publish(&mut self, first: usize) {
        let mut ready = vec![first];
        while !ready.is_empty() {
            let mut wave: Vec<(usize, Packed)> = Vec::new();
            for i in std::mem::take(&mut ready) {
                if !self.waiting.contains_key(&i) {
                    continue;
                }
                if let Some(r) = self.unmet_reference(i) {
                    if let Some(&j) = self.index.get(r) {
                        self.dependents.entry(j).or_default().push(i);
                    }
                    continue;
                }
                let packed = self.waiting.remove(&i).expect("checked above");
                wave.push((i, packed));
            }
            for (i, result) in self.write_narinfos(wave) {
                match result {
                    Ok(()) => {
                        let path = self.items[i].info.path.clone();
                        self.published.insert(path.clone());
                        self.report.uploaded.push(path);
                        ready.extend(self.dependents.remove(&i).unwrap_or_default());
                    }
                    Err(e) => self.fail(i, e),
                }
            }
        }
    }

    /// Writes the narinfos of a wave, up to [`PARALLEL_NARINFOS`] at once.
    fn write_narinfos(&self, mut wave: Vec<(usize, Packed)>) -> Vec<(usize, Result<()>)> {
        if wave.len() <= 1 {
            return wave
                .pop()
                .map(|(i, p)| vec![(i, self.write_narinfo(i, p))])
                .unwrap_or_default();
        }
        let threads = wave.len().min(PARALLEL_NARINFOS);
        let queue = std::sync::Mutex::new(wave);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let next = queue.lock().expect("narinfo queue").pop();
                            let Some((i, p)) = next else { break };
                            done.push((i, self.write_narinfo(i, p)));
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("narinfo writer panicked"))
                .collect()
        })
    }

    fn write_narinfo(&self, i: usize, packed: Packed) -> Result<()> {
        let info = &self.items[i].info;
        let mut narinfo = NarInfo {
            store_path: info.path.clone(),
            url: packed.url,
            compression: "zstd".into(),
            file_hash: Some(packed.file_hash),
            file_size: Some(packed.file_size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            sigs: Vec::new(),
            ca: info.ca.clone(),
        };
        // Ours replaces an older signature by the same key name.
        narinfo.sigs = info
            .sigs
            .iter()
            .filter(|s| !Signature::is_by(s, self.key.name()))
            .cloned()
            .collect();
        let sig = self.key.sign(&narinfo.fingerprint(self.store_dir));
        narinfo.sigs.push(sig.to_string());
        self.cache.put(
            &narinfo_name(&info.path),
            narinfo.render(self.store_dir).as_bytes(),
        )
    }

    fn finish(mut self, start: Instant) -> UploadReport {
        let mut blocked: Vec<StorePath> = self
            .waiting
            .keys()
            .map(|&i| self.items[i].info.path.clone())
            .collect();
        blocked.sort();
        self.report.blocked = blocked;
        self.report.seconds = start.elapsed().as_secs_f64();
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::FileCache;
    use crate::nix::{nar, Sha256Hash};

    /// A path on disk with its true NAR hash, as the store would record it.
    fn item(dir: &std::path::Path, n: usize, name: &str, refs: &[&StorePath]) -> Item {
        let path = StorePath::from_base_name(&format!("{n:0>32}-{name}")).unwrap();
        let real = dir.join(path.to_string());
        std::fs::write(&real, format!("contents of {name}\n").repeat(50)).unwrap();
        let mut bytes = Vec::new();
        let size = nar::dump_path(&real, &mut bytes).unwrap();
        Item {
            info: PathInfo {
                path: path.clone(),
                id: 0,
                nar_hash: Sha256Hash::digest(&bytes),
                nar_size: size,
                references: refs.iter().map(|r| (*r).clone()).collect(),
                deriver: None,
                sigs: Vec::new(),
                ca: None,
            },
            real_path: real,
        }
    }

    #[test]
    fn uploads_signed_narinfos_and_refuses_a_changed_path() {
        let files = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = FileCache::open("file:///c", cache_dir.path()).unwrap();
        let key = SecretKey::generate("test-1").unwrap();
        let dep = item(files.path(), 1, "dep", &[]);
        let dep_path = dep.info.path.clone();
        let app = item(files.path(), 2, "app", &[&dep_path]);
        let mut broken = item(files.path(), 3, "broken", &[]);
        broken.info.nar_hash = Sha256Hash::digest(b"not this");
        let opts = UploadOptions::new(Some(2), 3);
        let r = upload(
            vec![dep, app, broken],
            &HashSet::new(),
            &cache,
            &key,
            "/nix/store",
            &opts,
        );
        assert_eq!(r.uploaded.len(), 2, "{:?}", r.failed);
        assert_eq!(r.failed.len(), 1);
        assert!(
            matches!(r.failed[0].1, Error::Integrity(_)),
            "{:?}",
            r.failed
        );
        let text = cache.get(&narinfo_name(&dep_path)).unwrap().unwrap();
        let info = NarInfo::parse(std::str::from_utf8(&text).unwrap(), "/nix/store").unwrap();
        let fp = info.fingerprint("/nix/store");
        assert!(info.sigs.iter().any(|s| key.public_key().verify(&fp, s)));
        assert!(cache.get(&info.url).unwrap().is_some(), "the NAR is there");
    }
}
