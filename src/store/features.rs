//! What the job's Nix can do, asked of Nix itself.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this machine's Nix opens `s3://` stores (Debian's Nix 2.8 is
/// built without S3 support). Nix says "don't know how to open Nix store"
/// before any network when it lacks the store type; with it, the probe
/// fails on the unreachable endpoint, fast (dummy credentials, so that the
/// AWS SDK does not look for an instance role).
pub fn nix_reads_s3() -> bool {
    let child = Command::new("nix-store")
        .args([
            "--store",
            "s3://nixdelta-probe?endpoint=http://127.0.0.1:1&region=us-east-1",
            "--query",
            "--hash",
            "/nix/store/00000000000000000000000000000000-probe",
        ])
        .env("AWS_ACCESS_KEY_ID", "probe")
        .env("AWS_SECRET_ACCESS_KEY", "probe")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else { return false };
    let t = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            // Still trying the network: it has the store type.
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return true;
            }
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    !err.contains("don't know how to open Nix store") && !err.contains("unsupported store")
}

#[cfg(test)]
mod tests {
    #[test]
    fn debians_nix_has_no_s3_store() {
        let version = std::process::Command::new("nix-store")
            .arg("--version")
            .output();
        // Only where the answer is known: Debian's 2.8, built without S3.
        match version {
            Ok(v) if String::from_utf8_lossy(&v.stdout).contains(" 2.8.") => {
                assert!(!super::nix_reads_s3())
            }
            _ => eprintln!("skipped: not Nix 2.8"),
        }
    }
}
