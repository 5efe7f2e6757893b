//! `nixdelta push`.

use nixdelta::cache;
use nixdelta::error::{exit, Error, Result};
use nixdelta::nix::StorePath;
use nixdelta::pipeline::{push, summary};
use nixdelta::store::Store;

use super::common::{upload_options, PushArgs};
use nixdelta::job::keys::load_secret_key;

pub fn push_cmd(store: &Store, args: &PushArgs, paths: &[String]) -> Result<i32> {
    let key = load_secret_key(args.upload.secret_key_file.as_deref())?;
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
    let (plan, report) = push::push_closure(
        store,
        &roots,
        target.as_ref(),
        &key,
        &upload_options(&args.upload),
    )?;
    println!("{}", summary::push_line(&plan, &report));
    match push::report_error(&report, target.url()) {
        Some(e) => Err(e),
        None => Ok(exit::OK),
    }
}
