//! `nixdelta archive save|restore`: store archives by cache key.

use std::path::PathBuf;

use nixdelta::archive::{self, ImportMethod, ImportOptions, SaveOptions};
use nixdelta::error::{exit, Error, Result};
use nixdelta::job::key::{self, CacheKey};
use nixdelta::nix::{StorePath, StoreSpec};
use nixdelta::pipeline::summary::mb;
use nixdelta::size::Size;
use nixdelta::store::import::check_method;
use nixdelta::store::Store;

#[derive(clap::Args, Clone, Debug)]
pub struct KeyArgs {
    /// Where archives live: `dir:PATH[?max-size=10G]`, `github` (Actions
    /// cache; v2 with ACTIONS_RESULTS_URL, else v1 with ACTIONS_CACHE_URL),
    /// `s3://bucket/prefix?endpoint=URL&region=R`.
    #[arg(long, value_name = "BACKEND", env = "NIXDELTA_ARCHIVE")]
    pub archive: String,
    /// Files hashed into the key (globs allowed; default flake.lock, or
    /// flake.nix when there is no flake.lock). Repeatable.
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_files: Vec<String>,
    /// Directory the key files are relative to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub key_dir: PathBuf,
    /// Use this key instead of computing one.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// System double in the key (default: this machine's).
    #[arg(long, value_name = "SYSTEM")]
    pub system: Option<String>,
    /// Never save (as for a fork's pull request).
    #[arg(long, env = "NIXDELTA_ARCHIVE_READ_ONLY")]
    pub read_only: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Pack the closure of PATHs into one archive saved under the cache key.
    Save {
        #[command(flatten)]
        key: KeyArgs,
        /// Read more store paths from FILE, one a line (`-`: stdin).
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Cap on the archive's NAR bytes (e.g. 4G): the largest leaves
        /// are left out first.
        #[arg(long, value_name = "SIZE")]
        max_archive_size: Option<String>,
        /// zstd level.
        #[arg(long, value_name = "L", default_value_t = 3)]
        compression_level: i32,
        /// Keep `.drv` files given as PATHs.
        #[arg(long)]
        include_drv: bool,
        /// Store paths or links to them.
        #[arg(value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Restore the archive of the cache key (else the newest under a
    /// restore prefix) into the store.
    Restore {
        #[command(flatten)]
        key: KeyArgs,
        /// Key prefixes tried, in order, when the exact key misses (the
        /// key without its hash is always tried last). Repeatable.
        #[arg(long = "restore-prefix", value_name = "PREFIX")]
        restore_prefixes: Vec<String>,
        /// auto: unpack and register directly when the store is writable,
        /// else `nix-store --import`.
        #[arg(long, value_name = "METHOD", default_value = "auto")]
        method: ImportMethod,
        /// Unpacking threads.
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
    /// (Internal) the root side of the direct method by `sudo -n`: import
    /// the archive on stdin directly, print the stats as JSON.
    #[command(hide = true)]
    ImportStream {
        #[arg(long)]
        what: String,
        #[arg(long)]
        expect_key: Option<String>,
        #[arg(long, value_name = "N")]
        jobs: Option<usize>,
    },
}

fn cache_key(args: &KeyArgs, prefixes: &[String]) -> Result<CacheKey> {
    let system = args.system.clone().unwrap_or_else(key::current_system);
    if let Some(k) = &args.key {
        archive::check_key(k)?;
        let mut restore_prefixes = prefixes.to_vec();
        let default = key::key_prefix(&system);
        if !restore_prefixes.contains(&default) && k.starts_with(&default) {
            restore_prefixes.push(default);
        }
        return Ok(CacheKey {
            key: k.clone(),
            restore_prefixes,
            files: vec![],
            notes: vec![],
        });
    }
    let k = key::compute(&args.key_dir, &args.key_files, &system, prefixes)?;
    for n in &k.notes {
        tracing::info!("{n}");
    }
    Ok(k)
}

pub fn run(store: &StoreSpec, cmd: ArchiveCommand) -> Result<i32> {
    match cmd {
        ArchiveCommand::Save {
            key,
            from_file,
            max_archive_size,
            compression_level,
            include_drv,
            paths,
        } => {
            let k = cache_key(&key, &[])?;
            let store = Store::open(store)?;
            let mut args = paths;
            if let Some(f) = from_file {
                let text = if f.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&f)
                }
                .map_err(|e| Error::Input {
                    path: f.clone(),
                    msg: format!("cannot read: {e}"),
                })?;
                args.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(String::from),
                );
            }
            if args.is_empty() {
                return Err(Error::Usage(
                    "no paths to save: give PATHs or --from-file".into(),
                ));
            }
            let roots = args
                .iter()
                .map(|p| store.parse_path_arg(p))
                .collect::<Result<Vec<StorePath>>>()?;
            let max_nar_size = max_archive_size
                .map(|s| Size::of_option("--max-archive-size", &s).map(|s| s.0))
                .transpose()?;
            let opts = SaveOptions {
                level: compression_level,
                max_nar_size,
                include_drv,
                ..SaveOptions::default()
            };
            let backend = archive::open(&key.archive, key.read_only)?;
            let r = archive::save(&store, backend.as_ref(), &k.key, &roots, &opts)?;
            if key.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(exit::OK);
            }
            println!("key: {}", r.key);
            let what = match r.outcome {
                archive::SaveOutcome::Saved { .. } => "saved",
                archive::SaveOutcome::Exists => "exists (not saved again)",
                archive::SaveOutcome::ReadOnly => "read-only (not saved)",
            };
            println!("result: {what}");
            println!(
                "paths: {} ({} of NAR){}",
                r.paths,
                mb(r.nar_bytes),
                if r.dropped > 0 {
                    format!(
                        ", {} left out by --max-archive-size ({})",
                        r.dropped,
                        mb(r.dropped_nar_bytes)
                    )
                } else {
                    String::new()
                }
            );
            if r.archive_bytes > 0 {
                println!("archive: {} to {}", mb(r.archive_bytes), r.backend);
            }
            println!("time: {:.2}s", r.seconds);
            Ok(exit::OK)
        }
        ArchiveCommand::ImportStream {
            what,
            expect_key,
            jobs,
        } => {
            let store = Store::open(store)?;
            let mut opts = ImportOptions {
                expect_key,
                ..ImportOptions::default()
            };
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            nixdelta::store::import::serve_as_root(&store, &what, &opts)?;
            Ok(exit::OK)
        }
        ArchiveCommand::Restore {
            key,
            restore_prefixes,
            method,
            jobs,
        } => {
            let k = cache_key(&key, &restore_prefixes)?;
            Store::init(store)?;
            let store = Store::open(store)?;
            check_method(&store, method)?;
            let backend = archive::open(&key.archive, key.read_only)?;
            let mut opts = ImportOptions {
                method,
                ..ImportOptions::default()
            };
            if let Some(j) = jobs {
                opts.jobs = j.max(1);
            }
            let r = archive::restore(&store, backend.as_ref(), &k.key, &k.restore_prefixes, &opts)?;
            if key.json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap());
                return Ok(exit::OK);
            }
            println!("key: {}", r.key);
            println!(
                "matched key: {}",
                r.matched_key.as_deref().unwrap_or("(none)")
            );
            println!("result: {}", r.outcome);
            if r.matched_key.is_some() {
                let i = &r.import;
                let method = i.method.unwrap_or_default().describe();
                println!(
                    "paths: {} added, {} already valid, {} left out (missing references), {} in the archive",
                    i.added, i.present, i.skipped, i.in_archive
                );
                println!(
                    "bytes: {} of NAR added, {} of archive read ({method})",
                    mb(i.nar_bytes_added),
                    mb(r.archive_bytes)
                );
            }
            println!("time: {:.2}s", r.seconds);
            Ok(exit::OK)
        }
    }
}
