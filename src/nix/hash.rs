//! SHA-256 digests as Nix writes them.

use super::{nix32, FormatError};
use base64::Engine as _;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

/// Standard base64 alphabet; decoding accepts missing padding, as Nix does.
pub(crate) const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

const HEX: &[u8; 16] = b"0123456789abcdef";

impl Sha256Hash {
    /// Parses `sha256:<nix32|base16|base64>` or SRI `sha256-<base64>`
    /// (the DB stores `sha256:<base16>`, narinfo `sha256:<nix32>`).
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let err = |why: &'static str| FormatError::Hash(s.to_owned(), why);
        if let Some(b64) = s.strip_prefix("sha256-") {
            let bytes = BASE64.decode(b64).map_err(|_| err("invalid base64"))?;
            return Self::from_slice(&bytes).ok_or_else(|| err("wrong length for sha256"));
        }
        let rest = s
            .strip_prefix("sha256:")
            .ok_or_else(|| err("expected sha256:<hash> or sha256-<base64>"))?;
        match rest.len() {
            64 => {
                let mut out = [0u8; 32];
                for (o, pair) in out.iter_mut().zip(rest.as_bytes().chunks_exact(2)) {
                    let hi = hex_digit(pair[0]).ok_or_else(|| err("invalid base16"))?;
                    let lo = hex_digit(pair[1]).ok_or_else(|| err("invalid base16"))?;
                    *o = (hi << 4) | lo;
                }
                Ok(Sha256Hash(out))
            }
            52 => {
                let bytes = nix32::decode(rest).map_err(|_| err("invalid nix32"))?;
                Self::from_slice(&bytes).ok_or_else(|| err("invalid nix32"))
            }
            44 => {
                let bytes = BASE64.decode(rest).map_err(|_| err("invalid base64"))?;
                Self::from_slice(&bytes).ok_or_else(|| err("wrong length for sha256"))
            }
            _ => Err(err("wrong length for sha256")),
        }
    }
    /// SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest as _;
        Sha256Hash(sha2::Sha256::digest(data).into())
    }
    /// From exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Sha256Hash)
    }
    pub fn to_nix32(&self) -> String {
        nix32::encode(&self.0)
    }
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `sha256:<nix32>`, the form narinfo and fingerprints use.
impl std::fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl std::fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.to_nix32())
    }
}

impl std::str::FromStr for Sha256Hash {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nix32-vectors.txt"
    ));

    #[test]
    fn parses_every_form_nix_prints() {
        let mut n = 0;
        for line in VECTORS.lines().filter(|l| l.starts_with("sha256 ")) {
            let f: Vec<&str> = line.split(' ').collect();
            let (hex, b32, sri) = (f[1], f[2], f[3]);
            let h = Sha256Hash::parse(&format!("sha256:{b32}")).unwrap();
            assert_eq!(h.to_hex(), hex);
            assert_eq!(h.to_nix32(), b32);
            assert_eq!(h.to_sri(), sri);
            assert_eq!(h.to_string(), format!("sha256:{b32}"));
            assert_eq!(format!("{h:?}"), format!("sha256:{b32}"));
            assert_eq!(Sha256Hash::parse(&format!("sha256:{hex}")).unwrap(), h);
            let upper = format!("sha256:{}", hex.to_uppercase());
            assert_eq!(Sha256Hash::parse(&upper).unwrap(), h);
            assert_eq!(Sha256Hash::parse(sri).unwrap(), h);
            let b64 = sri.strip_prefix("sha256-").unwrap();
            assert_eq!(Sha256Hash::parse(&format!("sha256:{b64}")).unwrap(), h);
            assert_eq!(format!("sha256:{b32}").parse::<Sha256Hash>().unwrap(), h);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    #[test]
    fn digest_matches_vectors() {
        let h = Sha256Hash::digest(b"abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rejects_malformed() {
        let b32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for bad in [
            b32.to_string(),                                                 // no prefix
            format!("sha1:{b32}"),                                           // wrong type
            format!("sha256:{}", &b32[1..]),                                 // short
            format!("sha256:e{}", &b32[1..]),                                // 'e' not nix32
            format!("sha256:z{}", &b32[1..]),                                // overflow bits
            format!("sha256:{}g", &hex[1..]),                                // bad hex digit
            format!("sha256:{hex}00"),                                       // too long
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF".to_string(), // 31 bytes
            "sha256-!!!!".to_string(),
            "sha256:".to_string(),
            String::new(),
        ] {
            assert!(Sha256Hash::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
