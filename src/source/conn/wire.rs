//! Framing of the Postgres wire protocol over any byte stream.
//!
//! Guarantees:
//! - [`Wire::read_frame`] is cancel-safe: bytes read so far live in `read_buf`, and a frame is
//!   only removed from it once complete;
//! - frame lengths above [`MAX_FRAME_LEN`] are rejected before anything is allocated for them;
//! - queued output lives in `write_buf` until written, so a cancelled [`Wire::flush`] loses
//!   nothing: the rest goes out with the next flush.

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::{ErrorFields, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, info};

use crate::source::error::SourceError;

/// Larger than any legitimate message: Postgres caps a single value at 1 GiB.
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// CopyBothResponse; postgres-protocol's parser does not know this tag.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub enum Frame {
    Msg(Message),
    CopyBothResponse,
}

pub struct Wire {
    io: Box<dyn Io>,
    read_buf: BytesMut,
    pub(crate) write_buf: BytesMut,
}

impl Wire {
    pub fn new(io: Box<dyn Io>) -> Self {
        Wire {
            io,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
        }
    }

    /// Next complete frame, or `None` on a clean EOF at a frame boundary.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if let Some(frame) = parse_frame(&mut self.read_buf)? {
                return Ok(Some(frame));
            }
            if self.read_buf.capacity() - self.read_buf.len() < 8192 {
                self.read_buf.reserve(64 * 1024);
            }
            let n = self.io.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                if self.read_buf.is_empty() {
                    return Ok(None);
                }
                return Err(SourceError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection in the middle of a message",
                )));
            }
        }
    }

    /// Like [`Wire::read_frame`], but EOF is an error and notices / parameter changes are
    /// consumed here, since they may arrive between any two messages.
    pub async fn read_message(
        &mut self,
        params: &mut Vec<(String, String)>,
    ) -> Result<Frame, SourceError> {
        loop {
            let frame = self.read_frame().await?.ok_or_else(|| {
                SourceError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ))
            })?;
            match frame {
                Frame::Msg(Message::NoticeResponse(body)) => log_notice(body.fields()),
                Frame::Msg(Message::ParameterStatus(body)) => {
                    let name = body.name().map_err(proto)?.to_string();
                    let value = body.value().map_err(proto)?.to_string();
                    debug!(name, value, "server parameter status");
                    match params.iter_mut().find(|(n, _)| *n == name) {
                        Some(slot) => slot.1 = value,
                        None => params.push((name, value)),
                    }
                }
                other => return Ok(other),
            }
        }
    }

    pub async fn flush(&mut self) -> Result<(), SourceError> {
        while self.write_buf.has_remaining() {
            let n = self.io.write_buf(&mut self.write_buf).await?;
            if n == 0 {
                return Err(SourceError::Io(std::io::ErrorKind::WriteZero.into()));
            }
        }
        self.io.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.io.shutdown().await;
    }
}

pub fn proto(e: std::io::Error) -> SourceError {
    SourceError::Protocol(e.to_string())
}

/// Splits one complete frame off `buf`, if there is one.
pub fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, SourceError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_FRAME_LEN).contains(&len) {
        return Err(SourceError::Protocol(format!(
            "invalid length {len} for message of type {:?}",
            tag as char
        )));
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    if tag == COPY_BOTH_RESPONSE_TAG {
        // Body: format and column formats; irrelevant for replication.
        buf.advance(len + 1);
        return Ok(Some(Frame::CopyBothResponse));
    }
    match Message::parse(buf).map_err(proto)? {
        Some(m) => Ok(Some(Frame::Msg(m))),
        None => Err(SourceError::Protocol(
            "message parser wanted more bytes than the frame length".into(),
        )),
    }
}

/// Fields of an ErrorResponse/NoticeResponse.
#[derive(Default)]
pub struct Fields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

pub fn fields(mut it: ErrorFields<'_>) -> Result<Fields, SourceError> {
    let mut f = Fields::default();
    let mut localized_severity = String::new();
    while let Some(field) = it.next().map_err(proto)? {
        let v = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'S' => localized_severity = v,
            // Non-localized severity, preferred so logs and matching do not depend on lc_messages.
            b'V' => f.severity = v,
            b'C' => f.code = v,
            b'M' => f.message = v,
            b'D' => f.detail = Some(v),
            b'H' => f.hint = Some(v),
            _ => {}
        }
    }
    if f.severity.is_empty() {
        f.severity = localized_severity;
    }
    Ok(f)
}

pub fn server_error(it: ErrorFields<'_>) -> SourceError {
    match fields(it) {
        Ok(f) => SourceError::Server {
            severity: f.severity,
            code: f.code,
            message: f.message,
            detail: f.detail,
            hint: f.hint,
        },
        Err(e) => e,
    }
}

fn log_notice(it: ErrorFields<'_>) {
    match fields(it) {
        Ok(f) if f.severity == "WARNING" => {
            info!(severity = %f.severity, code = %f.code, detail = ?f.detail, "server notice: {}", f.message)
        }
        Ok(f) => {
            debug!(severity = %f.severity, code = %f.code, detail = ?f.detail, "server notice: {}", f.message)
        }
        Err(e) => debug!(error = %e, "malformed server notice ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_or_tiny_lengths_are_rejected_without_allocating() {
        let mut huge = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_frame(&mut huge),
            Err(SourceError::Protocol(_))
        ));
        assert!(huge.capacity() < 1 << 20);
        let mut tiny = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(
            parse_frame(&mut tiny),
            Err(SourceError::Protocol(_))
        ));
    }

    #[test]
    fn partial_frames_stay_buffered() {
        let full = [b'd', 0, 0, 0, 7, b'k', b'x', b'y'];
        let mut buf = BytesMut::new();
        for &b in &full[..full.len() - 1] {
            buf.extend_from_slice(&[b]);
            assert!(parse_frame(&mut buf).unwrap().is_none());
        }
        buf.extend_from_slice(&full[full.len() - 1..]);
        match parse_frame(&mut buf).unwrap() {
            Some(Frame::Msg(Message::CopyData(body))) => assert_eq!(body.data(), b"kxy"),
            _ => panic!("expected CopyData"),
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn copy_both_response_is_recognised() {
        let mut buf = BytesMut::from(&[b'W', 0, 0, 0, 7, 0, 0, 0, b'Z'][..]);
        assert!(matches!(
            parse_frame(&mut buf).unwrap(),
            Some(Frame::CopyBothResponse)
        ));
        assert_eq!(&buf[..], b"Z");
    }
}
