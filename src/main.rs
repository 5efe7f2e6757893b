//! The `nixdelta` command line. Each subcommand is a thin layer over the
//! library; errors end as one line on stderr and a documented exit code.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::nar;
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
        args: cmd::common::PushArgs,
        /// Store paths or links to them (e.g. ./result).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Record where the store stands, for `finish`.
    Start {
        #[command(flatten)]
        state: cmd::track::StateArgs,
    },
    /// Push what was realised since `start` (the store diff), filtered.
    Finish {
        #[command(flatten)]
        state: cmd::track::StateArgs,
        #[command(flatten)]
        args: cmd::track::FinishArgs,
    },
    /// start, run COMMAND, finish (also when it fails); exits with its code.
    Run {
        #[command(flatten)]
        args: cmd::track::FinishArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Save or restore a store archive (a whole closure in one blob, keyed by flake.lock).
    Archive {
        #[command(subcommand)]
        cmd: cmd::archive::ArchiveCommand,
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
        .event_format(Plain)
        .init();
}

/// `nixdelta: warning: message`, like the error line: no timestamps or
/// colour codes in CI logs.
struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(w, "nixdelta: {level}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Keygen { name, out, force } => cmd::keygen::keygen(&name, &out, force),
        Command::Push { args, paths } => {
            let store = Store::open(cli.store.as_deref())?;
            cmd::push::push_cmd(&store, &args, &paths)
        }
        Command::Start { state } => cmd::track::start(cli.store.as_deref(), &state),
        Command::Finish { state, args } => cmd::track::finish(cli.store.as_deref(), &state, &args),
        Command::Run { args, command } => cmd::track::run(cli.store.as_deref(), &args, &command),
        Command::Archive { cmd } => cmd::archive::run(cli.store.as_deref(), cmd),
        Command::Nar { path } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            nar::dump_path(&path, &mut lock).map_err(|e| Error::Other(e.into()))?;
            Ok(exit::OK)
        }
    }
}
