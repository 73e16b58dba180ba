//! Secrets: signing secrets, passwords, URLs with credentials.
//!
//! Guarantees: a [`Secret`]'s `Debug` never shows its value and it has no `Display`, so a secret
//! cannot reach a log line or an error message by formatting; code that needs the value calls
//! [`Secret::expose`] at the one place it is used.

use std::fmt;

/// A string that must never be printed: passwords, signing secrets, URLs with credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}
