//! `nixdelta key`: the archive key a job would use, from its key files or
//! (`--eval`) from the derivations an installable or Nix file evaluates to.

use std::path::PathBuf;

use nixdelta::error::{exit, Result};
use nixdelta::job::KeySpec;
use nixdelta::nix::StoreSpec;

#[derive(clap::Args, Clone, Debug)]
pub struct KeyArgs {
    /// Files hashed into the key (globs; default flake.lock, else the
    /// non-flake files that exist). Repeatable.
    #[arg(long = "key-file", value_name = "FILE")]
    pub key_files: Vec<String>,
    /// Directory the key files (and `--eval` files) are relative to.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub key_dir: PathBuf,
    /// Key by the derivations X evaluates to instead (a flake installable
    /// such as `.#devShells.x86_64-linux.default`, or a Nix file such as
    /// `shell.nix`; repeatable): the same derivations give the same key
    /// whatever else changed.
    #[arg(long, value_name = "X")]
    pub eval: Vec<String>,
    /// Print the key, its files or derivation count and the evaluation's
    /// seconds as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn key_cmd(store: &StoreSpec, args: &KeyArgs) -> Result<i32> {
    let spec = KeySpec {
        dir: args.key_dir.clone(),
        files: args.key_files.clone(),
        ..KeySpec::default()
    };
    let (k, secs) = if args.eval.is_empty() {
        (spec.compute()?, None)
    } else {
        let (k, secs) = spec.evaluate(store, &args.eval)?;
        (k, Some(secs))
    };
    for n in &k.notes {
        eprintln!("nixdelta: {n}");
    }
    if let Some(s) = secs {
        eprintln!("nixdelta: evaluation took {s:.2} s");
    }
    if args.json {
        let v = serde_json::json!({
            "key": k.key,
            "files": k.files,
            "restore_prefixes": k.restore_prefixes,
            "eval_seconds": secs,
        });
        println!("{v}");
    } else {
        println!("{}", k.key);
    }
    Ok(exit::OK)
}
