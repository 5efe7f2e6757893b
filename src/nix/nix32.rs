//! Nix's base-32: alphabet `0123456789abcdfghijklmnpqrsvwxyz` (no e o u t),
//! bytes read from the end, 5 bits at a time.

use super::FormatError;

pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Maps an ASCII byte to its digit value, or `0xff` when not in [`ALPHABET`].
const DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Length of the nix32 encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a nix32 string of `len` chars decodes to, if `len` is the
/// length of some encoding.
pub const fn decoded_len(len: usize) -> Option<usize> {
    let n = len * 5 / 8;
    if encoded_len(n) == len {
        Some(n)
    } else {
        None
    }
}

/// True when `c` is a nix32 digit.
pub const fn is_nix32_char(c: u8) -> bool {
    DECODE[c as usize] != 0xff
}

pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut s = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = bytes[i] >> j;
        // `j` may be 0, where the shift would be 8: u16 keeps it defined.
        let hi = match bytes.get(i + 1) {
            Some(&next) => ((next as u16) << (8 - j)) as u8,
            None => 0,
        };
        s.push(ALPHABET[((lo | hi) & 0x1f) as usize] as char);
    }
    s
}

/// Decodes a nix32 string into exactly `encoded_len(n) == s.len()` bytes;
/// rejects bad characters and non-zero padding bits.
pub fn decode(s: &str) -> Result<Vec<u8>, FormatError> {
    let bad = || FormatError::Nix32(s.to_owned());
    let input = s.as_bytes();
    let n = decoded_len(input.len()).ok_or_else(bad)?;
    let mut out = vec![0u8; n];
    for (k, &c) in input.iter().rev().enumerate() {
        let digit = DECODE[c as usize];
        if digit == 0xff {
            return Err(bad());
        }
        let b = k * 5;
        let i = b / 8;
        let j = b % 8;
        let wide = (digit as u16) << j;
        out[i] |= wide as u8;
        let carry = (wide >> 8) as u8;
        if i + 1 < n {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(bad());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTORS: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/nix32-vectors.txt"
    ));

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_nix_hash_to_base32() {
        let mut count = 0;
        for line in VECTORS.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let (bytes, b32) = (hex(f[1]), f[2]);
            assert_eq!(encode(&bytes), b32, "{line}");
            assert_eq!(decode(b32).unwrap(), bytes, "{line}");
            assert_eq!(encoded_len(bytes.len()), b32.len());
            count += 1;
        }
        assert_eq!(count, 20);
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(0), 0);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
        for n in 0..200 {
            assert_eq!(decoded_len(encoded_len(n)), Some(n));
        }
        assert_eq!(decoded_len(1), None);
        assert_eq!(decoded_len(3), None);
        assert_eq!(decoded_len(51), None);
    }

    #[test]
    fn round_trips_all_lengths() {
        for n in 0..70usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n * 11 + 0xa5) as u8).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes, "n={n}");
            let ones = vec![0xffu8; n];
            assert_eq!(decode(&encode(&ones)).unwrap(), ones, "n={n}");
        }
        assert_eq!(encode(&[]), "");
        assert_eq!(decode("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn rejects_bad_input() {
        let good = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert!(decode(good).is_ok());
        for c in ['e', 'o', 'u', 't', 'A', '-', ' ', 'é'] {
            let bad: String = good.chars().take(51).chain([c]).collect();
            assert!(decode(&bad).is_err(), "{bad:?}");
        }
        // wrong lengths
        assert!(decode(&good[..51]).is_err());
        assert!(decode("0").is_err());
        // The first char carries 52*5-256 = 4 overflow bits: only 0 and 1 fit.
        let over = format!("2{}", &good[1..]);
        assert_eq!(decode(&over), Err(FormatError::Nix32(over.clone())));
        let max = format!("1{}", &good[1..]);
        assert!(decode(&max).is_ok());
        // 2 chars → 1 byte: 10 bits, 2 overflow bits in the first char.
        assert_eq!(decode("7z").unwrap(), vec![0xff]);
        assert!(decode("8z").is_err());
    }
}
