//! The logical replication connection (`replication=database`), built directly on the wire
//! protocol because tokio-postgres has no CopyBoth support.
//!
//! Guarantees:
//! - [`ReplicationStream::next`] is cancel-safe: partial frames stay buffered in the stream,
//!   so it may sit in `tokio::select!` next to timers without losing or corrupting data;
//! - this module never reports a write/flush/apply position on its own; positions are sent
//!   only through [`ReplicationStream::send_status`], so the caller alone decides what is
//!   durable. (The server may still see our socket close, which confirms nothing.)
//! - server errors surface as `SourceError::Server` with the server's SQLSTATE, and the
//!   connection is kept in sync (simple queries drain to ReadyForQuery even on error);
//! - passwords are never logged or put into errors.

mod copy;
mod startup;
mod wire;

use std::time::Duration;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio_postgres::fallible_iterator::FallibleIterator;
use tracing::{debug, info, warn};

pub use copy::{parse_copy_data, ReplicationEvent};
pub use wire::MAX_FRAME_LEN;

use self::wire::{proto, server_error, Frame, Wire};
use super::error::SourceError;
use crate::model::Lsn;

/// How long [`ReplicationStream::finish`] waits for the server to wind down the copy.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ReplicationClient {
    wire: Wire,
    params: Vec<(String, String)>,
    tls: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// `"ident"` with embedded quotes doubled, as the replication grammar expects.
fn quote_ident(s: &str) -> Result<String, SourceError> {
    if s.contains('\0') {
        return Err(SourceError::Config(format!(
            "identifier {s:?} contains NUL"
        )));
    }
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// `'literal'`; the replication grammar has no backslash escapes, only doubled quotes.
fn quote_literal(s: &str) -> Result<String, SourceError> {
    if s.contains('\0') {
        return Err(SourceError::Config(format!("value {s:?} contains NUL")));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// The START_REPLICATION command text for a logical slot.
pub fn start_replication_command(
    slot: &str,
    start: Lsn,
    options: &[(&str, &str)],
) -> Result<String, SourceError> {
    let mut sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {start}",
        quote_ident(slot)?
    );
    if !options.is_empty() {
        let opts = options
            .iter()
            .map(|(k, v)| Ok(format!("{} {}", quote_ident(k)?, quote_literal(v)?)))
            .collect::<Result<Vec<_>, SourceError>>()?;
        sql.push_str(&format!(" ({})", opts.join(", ")));
    }
    Ok(sql)
}

impl ReplicationClient {
    /// Connects with `replication=database` using host/port/user/password/dbname/
    /// application_name/options/sslmode from `cfg` (first host only). A Unix socket host
    /// connects to `{dir}/.s.PGSQL.{port}` and never uses TLS, like libpq. Honours
    /// `connect_timeout` for the whole connect + authentication.
    pub async fn connect<C: crate::pg::tls::AsPgConfig + ?Sized>(
        cfg: &C,
    ) -> Result<Self, SourceError> {
        let cfg = &*cfg.as_pg_config();
        let opened = match cfg.get_connect_timeout() {
            Some(t) => tokio::time::timeout(*t, startup::open(cfg))
                .await
                .map_err(|_| {
                    SourceError::Timeout(format!("connecting took longer than {t:?}"))
                })??,
            None => startup::open(cfg).await?,
        };
        info!(
            target_addr = %opened.target,
            user = cfg.get_user().unwrap_or(""),
            dbname = cfg.get_dbname().unwrap_or(""),
            tls = opened.tls,
            sslmode = %cfg.ssl_mode(),
            "replication connection established"
        );
        Ok(ReplicationClient {
            wire: opened.wire,
            params: opened.params,
            tls: opened.tls,
        })
    }

    /// A server parameter reported via ParameterStatus (e.g. `server_version`).
    pub fn parameter_status(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection is TLS-encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Simple-query protocol; returns rows as text (None = NULL), one Vec per row, all result
    /// sets concatenated. On a server error the connection is drained to ReadyForQuery first,
    /// so it stays usable.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wire.write_buf)
            .map_err(|e| SourceError::Config(format!("invalid query text: {e}")))?;
        self.wire.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.wire.read_message(&mut self.params).await? {
                Frame::Msg(Message::RowDescription(_))
                | Frame::Msg(Message::CommandComplete(_))
                | Frame::Msg(Message::EmptyQueryResponse) => {}
                Frame::Msg(Message::DataRow(body)) => {
                    if error.is_none() {
                        rows.push(data_row(&body)?);
                    }
                }
                Frame::Msg(Message::ErrorResponse(body)) => {
                    error = Some(server_error(body.fields()));
                }
                Frame::Msg(Message::ReadyForQuery(_)) => break,
                Frame::Msg(Message::CopyOutResponse(_))
                | Frame::Msg(Message::CopyInResponse(_))
                | Frame::CopyBothResponse => {
                    return Err(SourceError::Protocol(
                        "simple_query cannot run COPY or START_REPLICATION".into(),
                    ))
                }
                _ => {
                    return Err(SourceError::Protocol(
                        "unexpected message in simple query response".into(),
                    ))
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    pub async fn identify_system(&mut self) -> Result<SystemInfo, SourceError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = single_row(&rows, 4, "IDENTIFY_SYSTEM")?;
        let text = |i: usize, what: &str| {
            row[i]
                .clone()
                .ok_or_else(|| SourceError::Decode(format!("IDENTIFY_SYSTEM {what} is NULL")))
        };
        let timeline = text(1, "timeline")?;
        let xlogpos = text(2, "xlogpos")?;
        Ok(SystemInfo {
            system_id: text(0, "systemid")?,
            timeline: timeline
                .parse()
                .map_err(|_| SourceError::Decode(format!("bad timeline {timeline:?}")))?,
            xlogpos: xlogpos
                .parse()
                .map_err(|e| SourceError::Decode(format!("bad xlogpos: {e}")))?,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "name" TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT`; returns
    /// the consistent point. The slot is dropped by the server when this connection ends.
    pub async fn create_temporary_slot(&mut self, name: &str) -> Result<Lsn, SourceError> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT",
            quote_ident(name)?
        );
        let rows = self.simple_query(&sql).await?;
        let row = single_row(&rows, 2, "CREATE_REPLICATION_SLOT")?;
        let point = row[1]
            .as_deref()
            .ok_or_else(|| SourceError::Decode("consistent_point is NULL".into()))?;
        let lsn: Lsn = point
            .parse()
            .map_err(|e| SourceError::Decode(format!("bad consistent_point: {e}")))?;
        info!(slot = name, lsn = %lsn, "temporary replication slot created");
        Ok(lsn)
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL <start> ("k" 'v', …)` and switch to CopyBoth.
    /// Option names and values are quoted, so values may contain quotes (e.g. a publication
    /// list `"a","b"`).
    pub async fn start_logical(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<ReplicationStream, SourceError> {
        let sql = start_replication_command(slot, start, options)?;
        frontend::query(&sql, &mut self.wire.write_buf)
            .map_err(|e| SourceError::Config(format!("invalid command text: {e}")))?;
        self.wire.flush().await?;
        // Notices and parameter changes are consumed by read_message.
        match self.wire.read_message(&mut self.params).await? {
            Frame::CopyBothResponse => {}
            Frame::Msg(Message::ErrorResponse(body)) => return Err(server_error(body.fields())),
            _ => {
                return Err(SourceError::Protocol(
                    "unexpected reply to START_REPLICATION".into(),
                ))
            }
        }
        info!(slot, start = %start, "logical replication started");
        Ok(ReplicationStream {
            wire: self.wire,
            params: self.params,
            server_done: false,
        })
    }
}

fn single_row<'a>(
    rows: &'a [Vec<Option<String>>],
    min_cols: usize,
    what: &str,
) -> Result<&'a [Option<String>], SourceError> {
    match rows {
        [row] if row.len() >= min_cols => Ok(row),
        _ => Err(SourceError::Decode(format!(
            "{what} returned {} rows (expected one with at least {min_cols} columns)",
            rows.len()
        ))),
    }
}

fn data_row(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>, SourceError> {
    let buf = body.buffer();
    let mut ranges = body.ranges();
    let mut row = Vec::new();
    while let Some(range) = ranges.next().map_err(proto)? {
        row.push(match range {
            None => None,
            Some(r) => {
                let bytes = buf
                    .get(r)
                    .ok_or_else(|| SourceError::Protocol("DataRow value out of bounds".into()))?;
                Some(
                    String::from_utf8(bytes.to_vec())
                        .map_err(|_| SourceError::Decode("DataRow value is not UTF-8".into()))?,
                )
            }
        });
    }
    Ok(row)
}

/// A connection in CopyBoth mode after START_REPLICATION.
pub struct ReplicationStream {
    wire: Wire,
    params: Vec<(String, String)>,
    /// The server sent CopyDone; only the shutdown handshake remains.
    server_done: bool,
}

impl ReplicationStream {
    /// Next message. Cancel-safe. `Ok(None)` once the server has ended the copy stream
    /// (CopyDone); an EOF without CopyDone is an I/O error (retryable).
    pub async fn next(&mut self) -> Result<Option<ReplicationEvent>, SourceError> {
        loop {
            if self.server_done {
                return Ok(None);
            }
            match self.wire.read_message(&mut self.params).await? {
                Frame::Msg(Message::CopyData(body)) => {
                    return parse_copy_data(body.into_bytes()).map(Some)
                }
                Frame::Msg(Message::CopyDone) => {
                    info!("server ended the replication stream");
                    self.server_done = true;
                }
                Frame::Msg(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                other => {
                    return Err(SourceError::StreamEnded(format!(
                        "the server sent {} instead of copy data",
                        message_name(&other)
                    )))
                }
            }
        }
    }

    /// Standby status update ('r') with the client time now; flushes the socket. If cancelled,
    /// the update stays queued and goes out with the next send.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        let body = copy::status_update(write, flush, apply, copy::pg_now_micros(), reply_requested);
        frontend::CopyData::new(&body[..])
            .map_err(proto)?
            .write(&mut self.wire.write_buf);
        self.wire.flush().await?;
        debug!(write = %write, flush = %flush, apply = %apply, reply_requested, "standby status sent");
        Ok(())
    }

    /// Sends CopyDone, drains until the server's ReadyForQuery (at most `FINISH_TIMEOUT`),
    /// then Terminate. Data still arriving during the drain is discarded: the caller has not
    /// confirmed it, so the server will resend it next time.
    pub async fn finish(mut self) -> Result<(), SourceError> {
        frontend::copy_done(&mut self.wire.write_buf);
        self.wire.flush().await?;
        let drained = tokio::time::timeout(FINISH_TIMEOUT, self.drain()).await;
        frontend::terminate(&mut self.wire.write_buf);
        let _ = self.wire.flush().await;
        self.wire.shutdown().await;
        match drained {
            Ok(r) => r,
            Err(_) => {
                warn!("server did not end the replication stream in time; closing anyway");
                Err(SourceError::Timeout(format!(
                    "server did not finish the replication stream within {FINISH_TIMEOUT:?}"
                )))
            }
        }
    }

    async fn drain(&mut self) -> Result<(), SourceError> {
        loop {
            let frame = match self.wire.read_frame().await? {
                Some(f) => f,
                // Closing is as good as finishing: nothing is left to confirm.
                None => return Ok(()),
            };
            match frame {
                Frame::Msg(Message::ReadyForQuery(_)) => {
                    info!("replication stream finished");
                    return Ok(());
                }
                Frame::Msg(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                // CopyData in flight, the server's CopyDone, CommandComplete, notices.
                _ => {}
            }
        }
    }
}

/// A backend message's name, for errors that must say what arrived.
fn message_name(frame: &Frame) -> &'static str {
    match frame {
        Frame::CopyBothResponse => "CopyBothResponse",
        Frame::Msg(m) => match m {
            Message::CommandComplete(_) => "CommandComplete",
            Message::ReadyForQuery(_) => "ReadyForQuery",
            Message::RowDescription(_) => "RowDescription",
            Message::DataRow(_) => "DataRow",
            Message::EmptyQueryResponse => "EmptyQueryResponse",
            Message::CopyInResponse(_) => "CopyInResponse",
            Message::CopyOutResponse(_) => "CopyOutResponse",
            Message::NoticeResponse(_) => "NoticeResponse",
            Message::ParameterStatus(_) => "ParameterStatus",
            _ => "an unexpected message",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_replication_quotes_names_and_values() {
        let sql = start_replication_command(
            "my\"slot",
            Lsn(0x16_B374_D848),
            &[("proto_version", "1"), ("publication_names", "\"a\",'b'")],
        )
        .unwrap();
        assert_eq!(
            sql,
            "START_REPLICATION SLOT \"my\"\"slot\" LOGICAL 16/B374D848 \
             (\"proto_version\" '1', \"publication_names\" '\"a\",''b''')"
        );
        assert!(start_replication_command("a\0", Lsn(0), &[]).is_err());
    }
}
