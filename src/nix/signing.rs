//! Nix signing keys (`name:base64`), ed25519 signatures over narinfo fingerprints.

use super::hash::BASE64;
use super::FormatError;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SECRET_KEY_LENGTH, SIGNATURE_LENGTH};
use zeroize::{Zeroize as _, Zeroizing};

const PUBLIC_KEY_LENGTH: usize = ed25519_dalek::PUBLIC_KEY_LENGTH;

/// Splits `name:base64` at the first `:`, as Nix does; the name must be non-empty.
fn split_key(s: &str) -> Option<(&str, &str)> {
    let (name, data) = s.split_once(':')?;
    (!name.is_empty()).then_some((name, data))
}

/// Secret key: 64 bytes (seed ‖ public) as Nix stores them. `Debug` is
/// redacted and the bytes are zeroized on drop.
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey, // zeroizes on drop (dalek `zeroize` feature)
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl SecretKey {
    /// Parses the content of a Nix secret key file (`name:base64(64 bytes)`);
    /// surrounding whitespace is ignored. The error never contains key bytes.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let (name, data) = split_key(s.trim())
            .ok_or_else(|| FormatError::Key("secret key is not of the form name:base64".into()))?;
        let bytes = Zeroizing::new(BASE64.decode(data).map_err(|_| {
            FormatError::Key(format!("secret key {} is not valid base64", shown(name)))
        })?);
        if bytes.len() == PUBLIC_KEY_LENGTH {
            return Err(FormatError::Key(format!(
                "this is a public key ({}); signing needs the secret key",
                shown(name)
            )));
        }
        if bytes.len() != SECRET_KEY_LENGTH + PUBLIC_KEY_LENGTH {
            return Err(FormatError::Key(format!(
                "secret key {} has {} bytes, expected 64 (seed and public key)",
                shown(name),
                bytes.len()
            )));
        }
        let mut seed = Zeroizing::new([0u8; SECRET_KEY_LENGTH]);
        seed.copy_from_slice(&bytes[..SECRET_KEY_LENGTH]);
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[SECRET_KEY_LENGTH..] {
            return Err(FormatError::Key(format!(
                "secret key {} is corrupt: its public half does not match its seed",
                shown(name)
            )));
        }
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
    /// A new random key pair, as `nix-store --generate-binary-cache-key` makes.
    /// The name must be non-empty, without `:` or whitespace.
    pub fn generate(name: &str) -> Result<Self, FormatError> {
        check_name(name)?;
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }
    /// The signature over `fingerprint`.
    pub fn sign(&self, fingerprint: &str) -> Signature {
        let sig = self.key.sign(fingerprint.as_bytes());
        Signature {
            key_name: self.name.clone(),
            bytes: sig.to_bytes(),
        }
    }
    /// The key file content `name:base64(seed ‖ public)`. Callers must not log it.
    pub fn to_file_string(&self) -> zeroize::Zeroizing<String> {
        let mut bytes = self.key.to_keypair_bytes();
        let mut out = Zeroizing::new(String::with_capacity(self.name.len() + 1 + 88));
        out.push_str(&self.name);
        out.push(':');
        BASE64.encode_string(bytes, &mut out);
        bytes.zeroize();
        out
    }
}

/// A key's name for an error message: quoted when it looks like a name,
/// withheld otherwise (a pasted key's name part could be key material).
fn shown(name: &str) -> String {
    if check_name(name).is_ok() && name.len() <= 64 && !name.contains('=') {
        format!("{name:?}")
    } else {
        "(name withheld)".into()
    }
}

fn check_name(name: &str) -> Result<(), FormatError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(FormatError::Key(format!(
            "key name {name:?} must be non-empty, without ':' or whitespace"
        )));
    }
    Ok(())
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey {{ name: {:?}, key: <redacted> }}", self.name)
    }
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`. Surrounding whitespace is ignored.
    /// The error never quotes the input: users paste secret keys here.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let bad = |why: String| FormatError::Key(why);
        let (name, data) = split_key(s.trim())
            .ok_or_else(|| bad("not a public key: expected name:base64".into()))?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(data)
                .map_err(|_| bad(format!("public key {}: invalid base64", shown(name))))?,
        );
        if bytes.len() == SECRET_KEY_LENGTH + PUBLIC_KEY_LENGTH {
            return Err(bad(format!(
                "this is a secret key ({}); give the public key: the .pub file \
                 `nixdelta keygen` writes, or `nix key convert-secret-to-public`",
                shown(name)
            )));
        }
        let arr: [u8; PUBLIC_KEY_LENGTH] = bytes[..].try_into().map_err(|_| {
            bad(format!(
                "public key {}: {} bytes, expected 32",
                shown(name),
                bytes.len()
            ))
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| {
            bad(format!(
                "public key {}: not a valid ed25519 key",
                shown(name)
            ))
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// True when `sig` (`name:base64`) is by this key's name and verifies.
    pub fn verify(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, data)) = split_key(sig) else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = BASE64.decode(data) else {
            return false;
        };
        let Ok(bytes) = <[u8; SIGNATURE_LENGTH]>::try_from(bytes) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
    /// The raw 32 public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }
}

/// `name:base64(32 bytes)`.
impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A signature as narinfos and the Nix DB carry it: `name:base64(64
/// bytes)`, where `name` names the key that made it.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; SIGNATURE_LENGTH],
}

impl Signature {
    pub fn parse(s: &str) -> Result<Signature, FormatError> {
        let bad = || FormatError::Signature(s.to_string());
        let (name, data) = split_key(s).ok_or_else(bad)?;
        let bytes = BASE64.decode(data).map_err(|_| bad())?;
        Ok(Signature {
            key_name: name.to_string(),
            bytes: <[u8; SIGNATURE_LENGTH]>::try_from(bytes).map_err(|_| bad())?,
        })
    }

    /// The name of the key that made it (`cache.nixos.org-1`).
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// Whether `sig`, in its text form, is by the key named `key_name`
    /// (a malformed one is by no key).
    pub fn is_by(sig: &str, key_name: &str) -> bool {
        Signature::parse(sig).is_ok_and(|s| s.key_name == key_name)
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(self.bytes))
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUB: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/key.pub"
    ));
    const SEC: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/key.sec"
    ));

    #[test]
    fn parses_nix_generated_keys() {
        let sk = SecretKey::parse(SEC).unwrap();
        let pk = PublicKey::parse(PUB).unwrap();
        assert_eq!(sk.name(), "fixture-key-1");
        assert_eq!(pk.name(), "fixture-key-1");
        assert_eq!(sk.public_key(), pk);
        assert_eq!(pk.to_string(), PUB.trim());
        assert_eq!(format!("{pk:?}"), format!("PublicKey({})", PUB.trim()));
        assert_eq!(*sk.to_file_string(), SEC.trim());
        // whitespace around the file content is ignored
        assert!(SecretKey::parse(&format!("  {SEC}\n")).is_ok());
        assert_eq!(PublicKey::parse(&format!("{PUB}\n")).unwrap(), pk);
    }

    #[test]
    fn sign_and_verify() {
        let sk = SecretKey::parse(SEC).unwrap();
        let pk = sk.public_key();
        let typed = sk.sign("1;/nix/store/x;sha256:y;1;");
        assert_eq!(typed.key_name(), "fixture-key-1");
        let sig = typed.to_string();
        assert_eq!(Signature::parse(&sig).unwrap(), typed);
        assert!(Signature::is_by(&sig, "fixture-key-1") && !Signature::is_by(&sig, "fixture"));
        assert!(Signature::parse("fixture-key-1:!!").is_err());
        assert!(sig.starts_with("fixture-key-1:"));
        assert_eq!(sig.len(), "fixture-key-1:".len() + 88);
        assert!(pk.verify("1;/nix/store/x;sha256:y;1;", &sig));
        assert!(!pk.verify("1;/nix/store/x;sha256:y;2;", &sig));
        // wrong name, garbage, truncated
        let renamed = sig.replacen("fixture-key-1", "other-key", 1);
        assert!(!pk.verify("1;/nix/store/x;sha256:y;1;", &renamed));
        assert!(!pk.verify("1;/nix/store/x;sha256:y;1;", "fixture-key-1:!!"));
        assert!(!pk.verify("1;/nix/store/x;sha256:y;1;", &sig[..sig.len() - 4]));
        assert!(!pk.verify("1;/nix/store/x;sha256:y;1;", "no-colon"));
        // another key with the same name does not verify
        let other = SecretKey::generate("fixture-key-1").unwrap();
        assert!(!other
            .public_key()
            .verify("1;/nix/store/x;sha256:y;1;", &sig));
    }

    #[test]
    fn generate_round_trips() {
        let sk = SecretKey::generate("my-cache-1").unwrap();
        let file = sk.to_file_string();
        let again = SecretKey::parse(&file).unwrap();
        assert_eq!(again.public_key(), sk.public_key());
        let pk = PublicKey::parse(&sk.public_key().to_string()).unwrap();
        assert!(pk.verify("fp", &again.sign("fp").to_string()));
        assert_ne!(SecretKey::generate("my-cache-1").unwrap().public_key(), pk);
        for bad in ["", "a:b", "a b", "a\n"] {
            assert!(
                matches!(SecretKey::generate(bad), Err(FormatError::Key(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secret_key_rejections_never_leak_material() {
        let (name, b64) = SEC.trim().split_once(':').unwrap();
        let bytes = BASE64.decode(b64).unwrap();
        let mut mismatched = bytes.clone();
        mismatched[40] ^= 1;
        let cases = [
            format!("{name}:{}!", &b64[..b64.len() - 1]), // bad base64
            format!("{name}:{}", BASE64.encode(&bytes[..32])), // seed only
            format!("{name}:{}", BASE64.encode([&bytes[..], &[0]].concat())),
            format!("{name}:{}", BASE64.encode(&mismatched)), // public half mismatch
            format!(":{b64}"),                                // empty name
            b64.to_string(),                                  // no name
            String::new(),
        ];
        for case in &cases {
            let e = SecretKey::parse(case).unwrap_err();
            assert!(matches!(e, FormatError::Key(_)), "{case:?}");
            let msg = e.to_string();
            assert!(!msg.contains(&b64[..12]), "{msg}");
            assert!(!msg.contains(&b64[b64.len() - 16..]), "{msg}");
            if let Some((_, data)) = case.split_once(':') {
                if data.len() > 8 {
                    assert!(!msg.contains(&data[..8]), "{msg}");
                }
            }
        }
        let e = SecretKey::parse(&cases[3]).unwrap_err().to_string();
        assert!(e.contains("public half does not match"), "{e}");
    }

    #[test]
    fn public_key_rejections() {
        let (name, b64) = PUB.trim().split_once(':').unwrap();
        let bytes = BASE64.decode(b64).unwrap();
        for bad in [
            format!("{name}:{}", BASE64.encode(&bytes[..31])),
            format!("{name}:{}", BASE64.encode([&bytes[..], &[0]].concat())),
            format!("{name}:%%%%"),
            format!(":{b64}"),
            b64.to_string(),
        ] {
            assert!(
                matches!(PublicKey::parse(&bad), Err(FormatError::Key(_))),
                "{bad}"
            );
        }
        // the secret key file is not a public key, and the error says so
        // without quoting any of it
        let e = PublicKey::parse(SEC).unwrap_err().to_string();
        assert!(e.contains("this is a secret key"), "{e}");
        let secret_b64 = SEC.trim().split_once(':').unwrap().1;
        for part in [secret_b64, &secret_b64[..16], &secret_b64[40..60]] {
            assert!(!e.contains(part), "{e}");
        }
        // a public key where a secret one is wanted
        let e = SecretKey::parse(PUB).unwrap_err().to_string();
        assert!(e.contains("this is a public key"), "{e}");
        // base64 alone (no name): nothing quoted
        let e = PublicKey::parse(secret_b64).unwrap_err().to_string();
        assert!(!e.contains(&secret_b64[..16]), "{e}");
    }

    #[test]
    fn debug_is_redacted() {
        let sk = SecretKey::parse(SEC).unwrap();
        let dbg = format!("{sk:?} {sk:#?}");
        let b64 = SEC.trim().split_once(':').unwrap().1;
        let bytes = BASE64.decode(b64).unwrap();
        assert!(dbg.contains("fixture-key-1") && dbg.contains("redacted"));
        assert!(!dbg.contains(&b64[..8]));
        assert!(!dbg.contains(&BASE64.encode(&bytes[..32])[..8]));
        let hex: String = bytes[..4].iter().map(|b| format!("{b:02x}")).collect();
        assert!(!dbg.contains(&hex));
        assert!(!dbg.contains(&format!("{:?}", &bytes[..4])[1..10]));
    }
}
