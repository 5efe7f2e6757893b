//! AWS credentials as the AWS CLI finds them, for SigV4: a named profile
//! (shared credentials file, then config file), the environment, then
//! `$AWS_PROFILE` or `default`. Hand-written: the AWS SDK's credential
//! chain would pull in its whole async runtime for a few lines of INI.

use std::path::PathBuf;

use rusty_s3::Credentials;

/// Credentials by the documented order; `None`: unsigned requests.
pub fn credentials(profile: Option<&str>) -> std::result::Result<Option<Credentials>, String> {
    if let Some(p) = profile {
        return profile_credentials(p)?
            .map(Some)
            .ok_or_else(|| format!("profile {p:?}: no aws_access_key_id/aws_secret_access_key"));
    }
    if let Some(c) = Credentials::from_env() {
        return Ok(Some(c));
    }
    let p = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
    profile_credentials(&p)
}

fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
}

/// Keys of `profile` from the shared credentials file, then the config file.
fn profile_credentials(profile: &str) -> std::result::Result<Option<Credentials>, String> {
    let files = [
        (
            aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials"),
            profile.to_string(),
        ),
        (
            aws_file("AWS_CONFIG_FILE", "config"),
            if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            },
        ),
    ];
    for (file, section) in files {
        let Some(file) = file else { continue };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => zeroize::Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", file.display())),
        };
        if let Some(c) = ini_credentials(&text, &section) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn ini_credentials(text: &str, section: &str) -> Option<Credentials> {
    let (mut key, mut secret, mut token) = (None, None, None);
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if !inside {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => key = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    match (key, secret, token) {
        (Some(k), Some(s), Some(t)) => Some(Credentials::new_with_token(k, s, t)),
        (Some(k), Some(s), None) => Some(Credentials::new(k, s)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_profiles() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = sekrit-value\n\
                    [ci]\naws_access_key_id=B\naws_secret_access_key=T\naws_session_token=X\n";
        let c = ini_credentials(text, "ci").unwrap();
        assert_eq!((c.key(), c.secret(), c.token()), ("B", "T", Some("X")));
        let c = ini_credentials(text, "default").unwrap();
        assert_eq!((c.key(), c.token()), ("A", None));
        assert!(ini_credentials(text, "none").is_none());
        assert_eq!(c.secret(), "sekrit-value");
        assert!(!format!("{c:?}").contains("sekrit"), "{c:?}");
    }
}
