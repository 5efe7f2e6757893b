//! The `nixdelta` command line. Each subcommand is a thin layer over the
//! library; errors end as one line on stderr and a documented exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nixdelta::cache;
use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::{nar, SecretKey, StorePath};
use nixdelta::pipeline::pack::PackOptions;
use nixdelta::pipeline::{push, summary, upload::UploadOptions};
use nixdelta::store::Store;

#[derive(Parser)]
#[command(
    name = "nixdelta",
    version,
    about = "Push exactly what a Nix CI job newly realised"
)]
struct Cli {
    /// Chroot store root, as Nix's `--store DIR` (default: the system store).
    #[arg(long, global = true, value_name = "DIR", env = "NIXDELTA_STORE")]
    store: Option<PathBuf>,
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct PushArgs {
    /// Binary cache URL (`file:///DIR`).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Nix secret key file (`name:base64`); or the key itself in $NIXDELTA_SECRET_KEY.
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<PathBuf>,
    /// Paths compressed in parallel (default: number of cores).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
    /// zstd level (Nix uses 3).
    #[arg(long, value_name = "L", default_value_t = 3)]
    compression_level: i32,
}

#[derive(Subcommand)]
enum Command {
    /// Write a Nix-compatible signing key pair NAME.sec / NAME.pub.
    Keygen {
        /// Key name, e.g. `ci.example.org-1`.
        name: String,
        /// Directory for the key files.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Overwrite existing key files.
        #[arg(long)]
        force: bool,
    },
    /// Push the closure of PATHs (signed, zstd) to a binary cache.
    Push {
        #[command(flatten)]
        args: PushArgs,
        /// Store paths or links to them (e.g. ./result).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Write the NAR of a store path to stdout (as `nix-store --dump`).
    #[command(hide = true)]
    Nar { path: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("nixdelta: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXDELTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Keygen { name, out, force } => keygen(&name, &out, force),
        Command::Push { args, paths } => {
            let store = Store::open(cli.store.as_deref())?;
            push_cmd(&store, &args, &paths)
        }
        Command::Nar { path } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            nar::dump_path(&path, &mut lock).map_err(|e| Error::Other(e.into()))?;
            Ok(exit::OK)
        }
    }
}

fn keygen(name: &str, out: &Path, force: bool) -> Result<i32> {
    let key = SecretKey::generate(name).map_err(|e| Error::Usage(format!("key name: {e}")))?;
    let sec = out.join(format!("{name}.sec"));
    let public = out.join(format!("{name}.pub"));
    for f in [&sec, &public] {
        if f.exists() && !force {
            return Err(Error::Usage(format!(
                "{} exists (use --force to overwrite)",
                f.display()
            )));
        }
    }
    let io = |p: &Path, e: std::io::Error| Error::Other(anyhow::anyhow!("{}: {e}", p.display()));
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    write_private(&sec, key.to_file_string().as_bytes()).map_err(|e| io(&sec, e))?;
    std::fs::write(&public, key.public_key().to_string()).map_err(|e| io(&public, e))?;
    println!("{}", key.public_key());
    eprintln!("wrote {} (secret) and {}", sec.display(), public.display());
    Ok(exit::OK)
}

/// Creates `path` readable by its owner only, from the first byte on.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

fn load_secret_key(file: Option<&Path>) -> Result<SecretKey> {
    let (origin, text) = match file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| Error::Key {
                path: f.to_path_buf(),
                msg: format!("cannot read: {e}"),
            })?;
            (f.to_path_buf(), zeroize::Zeroizing::new(text))
        }
        None => match std::env::var("NIXDELTA_SECRET_KEY") {
            Ok(text) => (
                PathBuf::from("$NIXDELTA_SECRET_KEY"),
                zeroize::Zeroizing::new(text),
            ),
            Err(_) => {
                return Err(Error::Usage(
                    "a signing key is needed: --secret-key-file FILE or $NIXDELTA_SECRET_KEY"
                        .into(),
                ))
            }
        },
    };
    SecretKey::parse(&text).map_err(|e| Error::Key {
        path: origin,
        msg: e.to_string(),
    })
}

fn upload_options(args: &PushArgs) -> UploadOptions {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let jobs = args.jobs.unwrap_or(cores).max(1);
    UploadOptions {
        jobs,
        pack: PackOptions {
            level: args.compression_level,
            threads: cores as u32,
        },
    }
}

fn push_cmd(store: &Store, args: &PushArgs, paths: &[String]) -> Result<i32> {
    let key = load_secret_key(args.secret_key_file.as_deref())?;
    let roots = paths
        .iter()
        .map(|p| store.parse_path_arg(p))
        .collect::<Result<Vec<StorePath>>>()?;
    for (arg, root) in paths.iter().zip(&roots) {
        if store.path_info(root)?.is_none() {
            return Err(Error::Path(format!(
                "{arg}: {} is not valid in the store",
                root.to_absolute(store.store_dir())
            )));
        }
    }
    let target = cache::open(&args.to)?;
    let (plan, report) =
        push::push_closure(store, &roots, target.as_ref(), &key, &upload_options(args))?;
    println!("{}", summary::push_line(&plan, &report));
    match push::report_error(&report, target.url()) {
        Some(e) => Err(e),
        None => Ok(exit::OK),
    }
}
