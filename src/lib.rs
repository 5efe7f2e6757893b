//! nixdelta: push exactly what a CI job newly realised in its Nix store to a
//! binary cache, and restore store archives keyed by `flake.lock`.
//!
//! Data flow: key files → cache key → archive restore → snapshot → user
//! build → diff → push plan → NAR → hash → zstd → sign → upload NARs, then
//! narinfos in reference order → warm-start manifest → save archive →
//! summary.
//!
//! Layers, lowest first; a module imports only from layers below it (the
//! test at the end of this file checks every `crate::` path):
//!
//! 1. [`error`], [`size`], [`secret`], [`progress`]: errors with exit
//!    codes; byte sizes; values kept out of logs; step counters.
//! 2. [`nix`]: pure formats (store paths, nix32, NAR, narinfo, signing,
//!    path info, the archive format).
//! 3. [`net`]: the one HTTP client, retry policy, transfers, S3.
//! 4. [`store`]: the only code that reads the Nix DB or spawns `nix`.
//! 5. [`cache`]: binary-cache targets (`file://`, `s3://`, `http(s)://`).
//! 6. [`archive`] and [`pipeline`] (neither imports the other): archive
//!    backends, save and restore; one module per push step.
//! 7. [`job`]: start and finish of a CI job, typed configuration, policy.
//!
//! The binary (`src/main.rs`, `src/cmd/`, `src/ci/`) sits on top: options,
//! CI conventions, printing.

pub mod archive;
pub mod cache;
pub mod error;
pub mod job;
pub mod net;
pub mod nix;
pub mod pipeline;
pub mod progress;
pub mod secret;
pub mod size;
pub mod store;

#[cfg(test)]
mod layers {
    /// Each layer, with the layers it may import.
    const ALLOWED: &[(&str, &[&str])] = &[
        ("error", &[]),
        ("secret", &[]),
        ("progress", &[]),
        ("size", &["error"]),
        ("nix", &["error"]),
        ("net", &["error", "secret"]),
        ("store", &["error", "nix", "progress"]),
        (
            "cache",
            &["error", "secret", "size", "nix", "net", "store", "progress"],
        ),
        (
            "archive",
            &[
                "error", "secret", "size", "nix", "net", "store", "cache", "progress",
            ],
        ),
        (
            "pipeline",
            &[
                "error", "secret", "size", "nix", "net", "store", "cache", "progress",
            ],
        ),
        (
            "job",
            &[
                "error", "secret", "size", "nix", "net", "store", "cache", "archive", "pipeline",
                "progress",
            ],
        ),
    ];

    fn sources(dir: &std::path::Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((
                    p.display().to_string(),
                    std::fs::read_to_string(&p).unwrap(),
                ));
            }
        }
    }

    #[test]
    fn modules_import_only_lower_layers() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let names: Vec<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
        let mut bad = Vec::new();
        for (layer, allowed) in ALLOWED {
            let mut files = Vec::new();
            let dir = src.join(layer);
            if dir.is_dir() {
                sources(&dir, &mut files);
            } else {
                let f = src.join(format!("{layer}.rs"));
                files.push((
                    f.display().to_string(),
                    std::fs::read_to_string(&f).unwrap(),
                ));
            }
            for (file, text) in files {
                for (i, line) in text.lines().enumerate() {
                    if line.trim_start().starts_with("//") {
                        continue;
                    }
                    for (at, _) in line.match_indices("crate::") {
                        let rest = &line[at + "crate::".len()..];
                        let name: String = rest
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name != *layer
                            && names.contains(&name.as_str())
                            && !allowed.contains(&name.as_str())
                        {
                            bad.push(format!("{file}:{}: {layer} imports {name}", i + 1));
                        }
                    }
                }
            }
        }
        assert!(
            bad.is_empty(),
            "imports against the layer order:\n{}",
            bad.join("\n")
        );
    }
}
