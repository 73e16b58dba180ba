//! Formats (temporary stub).
use crate::config::Format;
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FormatError(String);
pub fn render(_format: Format, payload: &str, _key: &str) -> Result<Vec<u8>, FormatError> {
    Ok(payload.as_bytes().to_vec())
}
