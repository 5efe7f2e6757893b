//! The `nixdelta` command line. Each subcommand is a thin layer over the
//! library; errors end as one line on stderr and a documented exit code.

mod ci;
mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::nar;
use nixdelta::nix::StoreSpec;
use nixdelta::store::Store;

#[derive(Parser)]
#[command(
    name = "nixdelta",
    version,
    about = "Push exactly what a Nix CI job newly realised"
)]
struct Cli {
    /// Also accepted before the subcommand (`nixdelta --store DIR start`).
    #[command(flatten)]
    before: JobOpt,
    /// More output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(flatten)]
    ci: CiOpt,
    #[command(flatten)]
    config: cmd::config::ConfigOpt,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// `--store` and `--netrc-file`, given after the subcommand (those it
    /// takes) or else before it.
    fn job_opt(&self) -> JobOpt {
        let after = match &self.command {
            Command::Push { job, .. }
            | Command::Start { job, .. }
            | Command::Finish { job, .. }
            | Command::Run { job, .. }
            | Command::Watch { job, .. }
            | Command::Key { job, .. } => job.clone(),
            Command::Archive { store, .. } => JobOpt {
                store: store.store.clone(),
                ..JobOpt::default()
            },
            Command::Verify { net, .. } => JobOpt {
                netrc_file: net.netrc_file.clone(),
                ..JobOpt::default()
            },
            Command::Keygen { .. }
            | Command::Configure { .. }
            | Command::Nar { .. }
            | Command::Config { .. }
            | Command::FailedTree { .. } => JobOpt::default(),
        };
        JobOpt {
            store: after.store.or_else(|| self.before.store.clone()),
            netrc_file: after.netrc_file.or_else(|| self.before.netrc_file.clone()),
        }
    }

    /// `--ci`, after the subcommand (start, finish, run) or before it.
    fn ci(&self) -> Option<ci::Kind> {
        let after = match &self.command {
            Command::Start { ci, .. } | Command::Finish { ci, .. } | Command::Run { ci, .. } => {
                ci.ci
            }
            _ => None,
        };
        after.or(self.ci.ci)
    }
}

// The options below are shown only on the subcommands they matter to
// (flattened there), not on every one as clap's `global` would.

/// `--store` and `--netrc-file`: what a command that reads the store and
/// talks to a cache takes.
#[derive(clap::Args, Clone, Default)]
struct JobOpt {
    /// The store, as Nix's `--store`: a chroot DIR, `local?root=DIR`,
    /// `daemon` or `unix://SOCKET?root=DIR` (default: the system store).
    #[arg(long, value_name = "STORE", env = "NIXDELTA_STORE")]
    store: Option<StoreSpec>,
    /// netrc file with credentials for http(s):// caches, as Nix's
    /// `netrc-file` (default: /etc/nix/netrc when present).
    #[arg(long, value_name = "FILE", env = "NIXDELTA_NETRC_FILE")]
    netrc_file: Option<PathBuf>,
}

/// `--store` for `archive` and its subcommands (`archive save --store DIR`).
#[derive(clap::Args, Clone, Default)]
struct ArchiveStoreOpt {
    /// The store, as Nix's `--store`: a chroot DIR, `local?root=DIR`,
    /// `daemon` or `unix://SOCKET?root=DIR` (default: the system store).
    #[arg(long, global = true, value_name = "STORE", env = "NIXDELTA_STORE")]
    store: Option<StoreSpec>,
}

#[derive(clap::Args, Clone, Default)]
struct NetOpt {
    /// netrc file with credentials for http(s):// caches, as Nix's
    /// `netrc-file` (default: /etc/nix/netrc when present).
    #[arg(long, value_name = "FILE", env = "NIXDELTA_NETRC_FILE")]
    netrc_file: Option<PathBuf>,
}

#[derive(clap::Args, Clone, Default)]
struct CiOpt {
    /// Speak this CI's conventions and read its inputs (`INPUT_*`,
    /// `BUILDKITE_PLUGIN_NIXDELTA_*`, `NIXDELTA_INPUT_*`) as options of
    /// start/finish/run; set by the GitHub Action, Buildkite plugin and GitLab template.
    #[arg(long, value_name = "CI", env = "NIXDELTA_CI")]
    ci: Option<ci::Kind>,
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
    /// Print or write the Nix settings that make this job's Nix substitute
    /// from the binary cache (extra-substituters, extra-trusted-public-keys).
    #[command(
        after_help = "Example:\n  nixdelta configure --to file:///srv/cache --public-key ci.pub --format github-env --output \"$GITHUB_ENV\""
    )]
    Configure {
        #[command(flatten)]
        args: cmd::configure::ConfigureArgs,
    },
    /// Push the closure of PATHs (signed, zstd) to a binary cache.
    #[command(after_help = concat!(
        cache_urls!(),
        "\n\nExample:\n  nixdelta push --to 's3://ci-cache?region=eu-west-1' --secret-key-file ci.sec ./result"
    ))]
    Push {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        args: cmd::common::PushArgs,
        /// Store paths or links to them (e.g. ./result).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<String>,
    },
    /// Restore the store archive (with --archive), then record where the store stands, for `finish`.
    #[command(after_help = concat!(
        archive_backends!(),
        "\n\n", cache_urls!(),
        "\n\nExample:\n  nixdelta start --archive dir:/var/cache/nixdelta"
    ))]
    Start {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        ci: CiOpt,
        #[command(flatten)]
        args: cmd::track_args::StartArgs,
    },
    /// Push what was realised since `start` (the store diff), filtered; save the archive on a key miss.
    #[command(
        long_about = "Push what was realised since `start`: every path that became valid in the \
store since its snapshot (the store diff), build-time and eval-time alike (fetched sources, \
derivation inputs), each with its closure. Left out: what --upstream has, the repository's own \
source (unless --include-self-source), --exclude matches, .drv files (unless --include-drv), \
and what the cache has already. Signed, zstd. Then the warm-start manifest is written and the \
store archive saved on a key miss or a partial hit.",
        after_help = concat!(
            cache_urls!(),
            "\n\n", archive_backends!(),
            "\n\nExample:\n  nixdelta finish --to https://cache.example.org/ci --secret-key-file ci.sec --archive github"
        )
    )]
    Finish {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        ci: CiOpt,
        #[command(flatten)]
        state: cmd::track_args::StateArgs,
        #[command(flatten)]
        args: cmd::track_args::FinishArgs,
        #[command(flatten)]
        archive: cmd::track_args::ArchiveArgs,
    },
    /// start, run COMMAND, finish (also when it fails); exits with its code.
    #[command(after_help = concat!(
        cache_urls!(),
        "\n\n", archive_backends!(),
        "\n\nExample:\n  nixdelta run --to file:///var/cache/nix --secret-key-file ci.sec -- nix build .#default"
    ))]
    Run {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        ci: CiOpt,
        #[command(flatten)]
        args: cmd::track_args::FinishArgs,
        #[command(flatten)]
        archive: cmd::track_args::ArchiveArgs,
        #[command(flatten)]
        configure: cmd::track_args::ConfigureArgs,
        #[command(flatten)]
        keep: cmd::track_args::KeepFailedArgs,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Save or restore a store archive (a whole closure in one blob, keyed by flake.lock).
    Archive {
        #[command(flatten)]
        store: ArchiveStoreOpt,
        #[command(subcommand)]
        cmd: cmd::archive::ArchiveCommand,
    },
    /// Check a binary cache: narinfos, NARs, references, signatures.
    #[command(after_help = concat!(
        cache_urls!(),
        "\n\nExample:\n  nixdelta verify --cache file:///var/cache/nix --trusted-public-key ci.pub"
    ))]
    Verify {
        #[command(flatten)]
        net: NetOpt,
        #[command(flatten)]
        args: cmd::verify::VerifyArgs,
    },
    /// Print the store archive key: from the key files, or (--eval) from
    /// the derivations an installable or Nix file evaluates to.
    #[command(
        after_help = "Examples:\n  nixdelta key\n  nixdelta key --eval shell.nix\n  nixdelta key --eval .#devShells.x86_64-linux.default"
    )]
    Key {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        args: cmd::key::KeyArgs,
    },
    /// The build trees `--keep-failed` kept from a failed build.
    FailedTree {
        #[command(subcommand)]
        cmd: cmd::failed::FailedTreeCommand,
    },
    /// Print the options STEP would run with (nixdelta.yml, CI inputs,
    /// environment, ARGS) and where each came from; secrets as `***`.
    #[command(
        after_help = "Precedence: command line > environment / CI inputs > nixdelta.yml > defaults.\n\nExamples:\n  nixdelta config\n  nixdelta config --format json start --ci github"
    )]
    Config {
        /// `text` or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        format: String,
        /// Print only the value of this key (`strict`: `true` or `false`),
        /// for scripts: a CI template asks whether the job is strict.
        #[arg(long, value_name = "KEY")]
        get: Option<String>,
        /// The step whose options are shown.
        #[arg(default_value = "run", value_parser = ["start", "finish", "run"])]
        step: String,
        /// Options as STEP takes them.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<std::ffi::OsString>,
    },
    /// Write the NAR of a store path to stdout (as `nix-store --dump`).
    #[command(hide = true)]
    Nar { path: PathBuf },
    /// The background uploader `start --watch` leaves running (started by
    /// start with start's options, never by hand).
    #[command(hide = true)]
    Watch {
        #[command(flatten)]
        job: JobOpt,
        #[command(flatten)]
        args: cmd::track_args::StartArgs,
    },
}

/// A `NIXDELTA_*` variable set but empty means unset (CI templates often
/// export `VAR=` for an option not given); clap would take it as a value.
fn drop_empty_env() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(k, v)| v.is_empty() && k.to_string_lossy().starts_with("NIXDELTA_"))
        .map(|(k, _)| k)
        .collect();
    for k in empty {
        // Single-threaded: nothing else runs yet.
        std::env::remove_var(k);
    }
}

fn main() -> ExitCode {
    drop_empty_env();
    let cli = match with_options(Cli::parse()) {
        Ok(Ok(cli)) => cli,
        Ok(Err(code)) => return ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("nixdelta: error: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    init_logging(cli.verbose);
    cmd::progress::spawn();
    nixdelta::cache::set_defaults(nixdelta::cache::CacheOptions {
        netrc_file: cli.job_opt().netrc_file,
        retry: nixdelta::net::RetryPolicy::from_env(),
    });
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            let prefix = ci::frontend().error_prefix();
            eprintln!("{prefix}nixdelta: error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The options of start/finish/run from, in this precedence, the command
/// line, the environment and the CI's inputs (with `--ci`), nixdelta.yml
/// (see `cmd::config`); the command line is parsed again with them
/// added. `nixdelta config` prints them instead (`Err(exit code)`).
fn with_options(cli: Cli) -> Result<std::result::Result<Cli, i32>> {
    let user: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let (cli, argv, show) = match &cli.command {
        Command::Config {
            format,
            get,
            step,
            args,
        } => {
            let argv = cmd::config::step_argv(&user, step, args);
            let format = match get {
                Some(key) => format!("get:{key}"),
                None => format.clone(),
            };
            let show = Some((format, step.clone()));
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| e.exit());
            (cli, argv, show)
        }
        _ => (cli, user, None),
    };
    let step = match cli.command {
        Command::Start { .. } => Some((ci::Step::Start, "start")),
        Command::Finish { .. } => Some((ci::Step::Finish, "finish")),
        Command::Run { .. } => Some((ci::Step::Run, "run")),
        _ => None,
    };
    let Some((step, name)) = step else {
        if let Some(kind) = cli.ci() {
            ci::init(kind, None, argv)?;
        }
        return Ok(Ok(cli));
    };
    let root = Cli::command();
    let sub = root.find_subcommand(name).expect("a subcommand");
    let file = cmd::config::load(cli.config.config.as_deref(), cli.config.no_config)?;
    let env_secrets = cmd::config::env_secrets();
    if let (Some(f), Some(_)) = (&file, cli.ci()) {
        ci::inputs::set_file_layer(cmd::config::ci_layer(f, sub));
    }
    let with_ci = match cli.ci() {
        Some(kind) => ci::init(kind, Some(step), argv.clone())?,
        None => argv.clone(),
    };
    let ci_on = ci::frontend().kind() != ci::Kind::None;
    let mut all = with_ci.clone();
    let mut file_keys = Vec::new();
    if let Some(f) = &file {
        let m = root
            .clone()
            .try_get_matches_from(&with_ci)
            .unwrap_or_else(|e| e.exit());
        let m = m.subcommand_matches(name).expect("the subcommand");
        let extra = cmd::config::file_args(f, sub, m, ci_on);
        file_keys = extra.iter().map(|(_, k)| *k).collect();
        all = cmd::config::insert(all, extra.into_iter().map(|(a, _)| a).collect());
    }
    let m = root.clone().try_get_matches_from(&all).unwrap_or_else(|e| {
        let _ = e.print();
        if let (Some(f), false) = (&file, file_keys.is_empty()) {
            let which = cmd::config::blame(f, &file_keys, &e.to_string());
            eprintln!("nixdelta: error: the value is from {which}");
        }
        std::process::exit(e.exit_code())
    });
    if let Some((format, step)) = show {
        let origins = cmd::config::Origins {
            ci: ci_on.then(|| {
                (
                    ci::frontend().name().into(),
                    cmd::config::added(&argv, &with_ci),
                )
            }),
            user: argv,
            file_keys,
            file,
            env_secrets,
        };
        let sm = m.subcommand_matches(name).expect("the subcommand");
        return Ok(Err(cmd::config::print(&format, &step, sub, sm, &origins)?));
    }
    // start --watch hands the uploader the options added.
    if all != argv {
        cmd::set_argv(all);
    }
    Ok(Ok(Cli::from_arg_matches(&m).unwrap_or_else(|e| e.exit())))
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
        let (ci, level) = match *event.metadata().level() {
            tracing::Level::ERROR => (ci::frontend().error_prefix(), "error: "),
            tracing::Level::WARN => (ci::frontend().warning_prefix(), "warning: "),
            tracing::Level::INFO => ("", ""),
            tracing::Level::DEBUG => ("", "debug: "),
            tracing::Level::TRACE => ("", "trace: "),
        };
        write!(w, "{ci}nixdelta: {level}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

fn run(cli: Cli) -> Result<i32> {
    let store = cli.job_opt().store.unwrap_or_default();
    let store_root = &store;
    match cli.command {
        Command::Keygen { name, out, force } => cmd::keygen::keygen(&name, &out, force),
        Command::Configure { args } => cmd::configure::configure(&args),
        Command::Push { args, paths, .. } => {
            let store = Store::open(store_root)?;
            cmd::push::push_cmd(&store, &args, &paths)
        }
        Command::Start { args, .. } => cmd::track::start(store_root, &args),
        Command::Watch { args, .. } => cmd::watch::watch(store_root, &args),
        Command::Key { args, .. } => cmd::key::key_cmd(store_root, &args),
        Command::FailedTree { cmd } => cmd::failed::run(&cmd),
        Command::Finish {
            state,
            args,
            archive,
            ..
        } => cmd::track::finish(store_root, &state, &args, &archive),
        Command::Run {
            args,
            archive,
            configure,
            keep,
            command,
            ..
        } => cmd::track::run(store_root, &args, &archive, &configure, &keep, &command),
        Command::Archive { cmd, .. } => cmd::archive::run(store_root, cmd),
        Command::Verify { args, .. } => cmd::verify::verify_cmd(&args),
        // Printed by `with_options`.
        Command::Config { .. } => Ok(exit::OK),
        Command::Nar { path } => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            nar::dump_path(&path, &mut lock).map_err(|e| Error::Other(e.into()))?;
            Ok(exit::OK)
        }
    }
}
