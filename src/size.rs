//! Byte sizes as users write them (`64M`, `1.5GiB`, `1000`): options such
//! as `--max-archive-size`, `--resave-threshold` and `dir:…?max-size=`.

use std::fmt;
use std::str::FromStr;

/// A number of bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    /// Parses `10G`, `512M`, `1.5GiB`, `1000` (bytes); units are powers
    /// of 1024, with or without `B`/`iB`.
    pub fn parse(s: &str) -> Option<Size> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return None,
        };
        Some(Size((n * mult as f64) as u64))
    }

    /// Parses the value of `option`; a bad one is a usage error naming it.
    pub fn of_option(option: &str, s: &str) -> crate::error::Result<Size> {
        Size::parse(s).ok_or_else(|| {
            crate::error::Error::Usage(format!("{option} {s:?}: expected a size, e.g. 64M or 4G"))
        })
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        Size::parse(s).ok_or_else(|| format!("{s:?}: expected a size, e.g. 64M or 4G"))
    }
}

/// Megabytes with one decimal, as the summaries show sizes.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} MB", self.0 as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size::parse("10G"), Some(Size(10 << 30)));
        assert_eq!(Size::parse("512M"), Some(Size(512 << 20)));
        assert_eq!(Size::parse("1.5GiB"), Some(Size(3 << 29)));
        assert_eq!(Size::parse("100"), Some(Size(100)));
        assert_eq!(Size::parse("x"), None);
        assert!(Size::of_option("--max-archive-size", "lots")
            .unwrap_err()
            .to_string()
            .starts_with("--max-archive-size \"lots\""));
    }
}
