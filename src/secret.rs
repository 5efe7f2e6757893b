//! A value that must never reach a log: `Debug` prints `<redacted>`, the
//! memory is zeroed on drop, and reading it takes an explicit
//! [`Secret::expose`].

use zeroize::{Zeroize, Zeroizing};

#[derive(Clone, Default)]
pub struct Secret<T: Zeroize>(Zeroizing<T>);

impl<T: Zeroize> Secret<T> {
    pub fn new(value: T) -> Secret<T> {
        Secret(Zeroizing::new(value))
    }

    /// The value itself: for the request or the file that needs it only.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T: Zeroize> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2-token".to_string());
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(<redacted>)");
        assert_eq!(s.expose(), "hunter2-token");
    }
}
