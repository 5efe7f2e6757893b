//! `nixdelta verify --cache URL`: lists every fault of a binary cache and
//! exits 9 when there is any.

use nixdelta::cache;
use nixdelta::error::{exit, Error, Result};
use nixdelta::job::keys::load_trusted_keys;
use nixdelta::pipeline::verify::{verify, VerifyOptions};

#[derive(clap::Args, Clone, Debug)]
pub struct VerifyArgs {
    /// Binary cache URL (`file:///DIR`, `s3://BUCKET?…`, `http(s)://…` with a
    /// directory index).
    #[arg(long, value_name = "URL")]
    pub cache: String,
    /// Public key (`name:base64`, or a file holding one) whose signature
    /// every narinfo must carry; repeatable. Without it signatures are not
    /// checked.
    #[arg(long = "trusted-public-key", value_name = "KEY")]
    pub trusted_public_keys: Vec<String>,
    /// Also download every NAR and check its FileHash, NarHash and NarSize.
    #[arg(long)]
    pub check_contents: bool,
    /// A cache whose narinfos satisfy references (e.g.
    /// `https://cache.nixos.org`); repeatable.
    #[arg(long, value_name = "URL")]
    pub upstream: Vec<String>,
    /// Narinfos checked at once.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub jobs: usize,
}

pub fn verify_cmd(args: &VerifyArgs) -> Result<i32> {
    let trusted_keys = load_trusted_keys(&args.trusted_public_keys)?;
    let target = cache::open(&args.cache)?;
    let upstreams = args
        .upstream
        .iter()
        .map(|u| cache::open(u))
        .collect::<Result<Vec<_>>>()?;
    let opts = VerifyOptions {
        trusted_keys,
        check_contents: args.check_contents,
        upstreams,
        jobs: args.jobs.max(1),
    };
    let report = verify(target.as_ref(), &opts)?;
    for f in &report.faults {
        println!("fault: {f}");
    }
    let mut line = format!(
        "{}: {} narinfos, {} NARs present",
        target.url(),
        report.narinfos,
        report.nars
    );
    if args.check_contents {
        line.push_str(&format!(", {} NARs hashed", report.nars_hashed));
        if report.nars_unhashable > 0 {
            line.push_str(&format!(
                " ({} in a compression not checked)",
                report.nars_unhashable
            ));
        }
    }
    if report.upstream_refs > 0 {
        line.push_str(&format!(", {} references upstream", report.upstream_refs));
    }
    if opts.trusted_keys.is_empty() {
        line.push_str(", signatures not checked (no --trusted-public-key)");
    } else {
        line.push_str(", signatures checked");
    }
    if let Some(n) = report.orphan_nars.filter(|&n| n > 0) {
        line.push_str(&format!(", {n} unreferenced NARs (harmless)"));
    }
    line.push_str(&format!("; {} faults", report.faults.len()));
    println!("{line}");
    if report.faults.is_empty() {
        Ok(exit::OK)
    } else {
        Err(Error::Verify(format!(
            "{} fault(s) in binary cache {}",
            report.faults.len(),
            target.url()
        )))
    }
}
