//! Signing (placeholder; implemented by the signing work).
