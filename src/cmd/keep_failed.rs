//! Failed build trees kept (`run --keep-failed`, `start --keep-failed` +
//! `finish`): after the job, the build directories Nix kept are packed and
//! stored where this CI keeps files of a job: a GitHub Actions artifact,
//! a Buildkite artifact, a GitLab job artifact (the template's
//! `artifacts:` of `.nixdelta-failed/`), else the archive backend under a
//! `failed-…` key, else a file on this machine. The notice and the summary
//! give the one command that fetches them, and how to resume the build.

use std::path::{Path, PathBuf};

use nixdelta::archive::artifact::Artifacts;
use nixdelta::error::Result;
use nixdelta::job::{self, JobConfig};
use nixdelta::pipeline::snapshot::State;

use crate::ci::{self, Kind, Table};

/// Where GitLab jobs leave the packed trees for the template's artifacts.
pub const GITLAB_DIR: &str = ".nixdelta-failed";

/// What `start --keep-failed` asks of `finish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Trees made since then (Unix seconds) are this job's.
    pub since: u64,
    /// At most this many bytes of files.
    pub cap: u64,
}

/// Records the ask in `start`'s state for `finish`.
pub fn mark(st: &mut State, ask: Ask) {
    st.extra.insert(
        job::failed::STATE_KEY.to_string(),
        serde_json::json!({"since": ask.since, "cap": ask.cap}),
    );
}

/// The ask `start` recorded, if any.
pub fn asked(st: &State) -> Option<Ask> {
    let v = st.extra.get(job::failed::STATE_KEY)?;
    Some(Ask {
        since: v["since"].as_u64()?,
        cap: v["cap"].as_u64()?,
    })
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The CI's name of this job, for the key.
fn label(kind: Kind, fallback: &str) -> String {
    let var = match kind {
        Kind::Github => "GITHUB_JOB",
        Kind::Buildkite => "BUILDKITE_STEP_KEY",
        Kind::Gitlab => "CI_JOB_NAME",
        _ => "",
    };
    env(var).unwrap_or_else(|| fallback.to_string())
}

/// How the pack was stored: where, and the command that fetches it.
struct Stored {
    place: String,
    fetch: String,
}

const OUT: &str = "./failed-tree";

/// Collects, packs and stores the trees kept since `ask.since`.
pub fn keep(cfg: &JobConfig, ask: Ask, fallback_label: &str) {
    let fe = ci::frontend();
    let trees = job::failed::collect_in(&job::failed::build_dirs(&cfg.store), ask.since);
    if trees.is_empty() {
        eprintln!(
            "nixdelta: keep-failed: no build directory was kept (no build failed, or the failure was not in a build)"
        );
        return;
    }
    let scratch = match tempfile::Builder::new()
        .prefix("nixdelta-failed-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => return fe.warning(&format!("keep-failed: build trees NOT saved: {e}")),
    };
    let (trees, notes) = job::failed::readable(trees);
    for n in &notes {
        fe.notice(&format!(
            "keep-failed: left out (a daemon's tree: run the job as root, or allow `sudo -n tar`): {n}"
        ));
    }
    if trees.is_empty() {
        return;
    }
    let key = job::failed::key_for(&label(fe.kind(), fallback_label));
    let file = scratch.path().join(format!("{key}.tar.zst"));
    let (paths, trees): (Vec<PathBuf>, Vec<_>) = trees.into_iter().unzip();
    let packed = match job::failed::pack_file(trees, ask.cap, &file) {
        Ok(p) => p,
        Err(e) => return fe.warning(&format!("keep-failed: build trees NOT packed: {e}")),
    };
    let stored = match store(cfg, fe.kind(), &key, &file) {
        Ok(s) => s,
        Err(e) => return fe.warning(&format!("keep-failed: build trees NOT saved: {e}")),
    };
    let cut = if packed.cut.is_empty() {
        String::new()
    } else {
        format!(
            "; {} files over the cap left out (listed in CUT.txt)",
            packed.cut.len()
        )
    };
    let resume = "then, in the tree, `nix develop <the .drv>` (or `nix-shell <the .drv>`) and run \
        the remaining phases by hand (e.g. `runPhase installPhase`), or add `breakpointHook` to \
        nativeBuildInputs to stop in the failing build";
    fe.notice(&format!(
        "kept {} failed build trees ({} files, {}{cut}) {}. Fetch them: {} ; {resume}",
        paths.len(),
        packed.files,
        nixdelta::pipeline::summary::mb(packed.bytes),
        stored.place,
        stored.fetch,
    ));
    let mut t = Table::new("nixdelta: failed build trees", ("", ""));
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name())
        .map(|n| format!("`{}`", n.to_string_lossy()))
        .collect();
    t.row("kept", names.join(" "))
        .row(
            "packed",
            format!(
                "{} files, {}{cut}",
                packed.files,
                nixdelta::pipeline::summary::mb(packed.bytes)
            ),
        )
        .row("stored", &stored.place)
        .row("fetch", format!("`{}`", stored.fetch))
        .row("resume", resume);
    fe.summary(&t.markdown());
}

/// Stores the pack where `kind` keeps a job's files, else in the archive
/// backend, else leaves it on this machine.
fn store(cfg: &JobConfig, kind: Kind, key: &str, file: &Path) -> Result<Stored> {
    let name = format!("{key}.tar.zst");
    let fetch_file = |path: &str| format!("nixdelta failed-tree fetch --file {path} --out {OUT}");
    match kind {
        Kind::Github => match Artifacts::from_env(&env) {
            Some(a) => {
                let up = a?.upload(key, &name, file)?;
                let repo = env("GITHUB_REPOSITORY").map_or(String::new(), |r| format!(" -R {r}"));
                let run = env("GITHUB_RUN_ID").unwrap_or_else(|| "<run id>".into());
                return Ok(Stored {
                    place: format!(
                        "as artifact {key} of this run (id {}, {} bytes)",
                        up.id, up.size
                    ),
                    fetch: format!(
                        "gh run download {run}{repo} -n {key} -D failed-artifact && {}",
                        fetch_file(&format!("failed-artifact/{name}"))
                    ),
                });
            }
            None => ci::frontend().warning(
                "keep-failed: no artifact service here ($ACTIONS_RESULTS_URL, $ACTIONS_RUNTIME_TOKEN: run through the action)",
            ),
        },
        Kind::Buildkite => {
            let dir = file.parent().unwrap_or(Path::new("."));
            match ci::buildkite::artifact_upload(dir, &name) {
                Ok(()) => {
                    let build = env("BUILDKITE_BUILD_ID").unwrap_or_else(|| "<build id>".into());
                    return Ok(Stored {
                        place: format!("as Buildkite artifact {name} of this job"),
                        fetch: format!(
                            "buildkite-agent artifact download {name} . --build {build} && {}",
                            fetch_file(&name)
                        ),
                    });
                }
                Err(e) => ci::frontend().warning(&format!("keep-failed: {e}")),
            }
        }
        Kind::Gitlab => {
            let root = env("CI_PROJECT_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
            let dir = root.join(GITLAB_DIR);
            let dest = dir.join(&name);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::copy(file, &dest))
                .map_err(|e| nixdelta::error::Error::Input {
                    path: dest.clone(),
                    msg: format!("cannot write: {e}"),
                })?;
            let job = env("CI_JOB_URL").map_or_else(
                || "the job's page".to_string(),
                |u| format!("{u}/artifacts/download"),
            );
            return Ok(Stored {
                place: format!(
                    "in {GITLAB_DIR}/{name}, a job artifact when the job extends .nixdelta-keep-failed"
                ),
                fetch: format!(
                    "unzip the artifacts of {job}, then {}",
                    fetch_file(&format!("{GITLAB_DIR}/{name}"))
                ),
            });
        }
        _ => {}
    }
    if let Some(backend) = &cfg.archive.backend {
        let f = std::fs::File::open(file).map_err(|e| nixdelta::error::Error::Other(e.into()))?;
        job::failed::save_file(backend, key, f)?;
        return Ok(Stored {
            place: format!("in {backend} under {key}"),
            fetch: format!(
                "nixdelta failed-tree fetch --archive {backend} --key {key} --out {OUT}"
            ),
        });
    }
    let keep = std::env::temp_dir().join(&name);
    std::fs::copy(file, &keep).map_err(|e| nixdelta::error::Error::Input {
        path: keep.clone(),
        msg: format!("cannot write: {e}"),
    })?;
    let shown = keep.display().to_string();
    Ok(Stored {
        place: format!("on this machine only, in {shown} (give --archive to store them)"),
        fetch: fetch_file(&shown),
    })
}
