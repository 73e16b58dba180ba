//! The streaming-replication sub-protocol carried in CopyData messages.
//!
//! Guarantees: parsing is bounds-checked and never panics; malformed bodies become
//! `SourceError::Protocol`.

use bytes::Bytes;

use crate::model::Lsn;
use crate::source::error::SourceError;

/// Seconds between the Unix epoch and the Postgres epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_OFFSET_SECS: i64 = 946_684_800;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// `data` is the output plugin's message (for pgoutput, starts with its tag byte).
    XLogData {
        wal_start: Lsn,
        wal_end: Lsn,
        server_time: i64,
        data: Bytes,
    },
    Keepalive {
        wal_end: Lsn,
        server_time: i64,
        reply_requested: bool,
    },
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// Parses one CopyData body received during START_REPLICATION.
pub fn parse_copy_data(body: Bytes) -> Result<ReplicationEvent, SourceError> {
    let short = |what: &str| {
        SourceError::Protocol(format!("{what} message too short: {} bytes", body.len()))
    };
    match body.first() {
        Some(b'w') => {
            let (Some(start), Some(end), Some(time)) =
                (be_u64(&body, 1), be_u64(&body, 9), be_u64(&body, 17))
            else {
                return Err(short("XLogData"));
            };
            Ok(ReplicationEvent::XLogData {
                wal_start: Lsn(start),
                wal_end: Lsn(end),
                server_time: time as i64,
                data: body.slice(25..),
            })
        }
        Some(b'k') => {
            let (Some(end), Some(time), Some(&reply)) =
                (be_u64(&body, 1), be_u64(&body, 9), body.get(17))
            else {
                return Err(short("primary keepalive"));
            };
            Ok(ReplicationEvent::Keepalive {
                wal_end: Lsn(end),
                server_time: time as i64,
                reply_requested: reply != 0,
            })
        }
        Some(&t) => Err(SourceError::Protocol(format!(
            "unknown replication message type 0x{t:02x}"
        ))),
        None => Err(SourceError::Protocol("empty CopyData message".into())),
    }
}

/// The Standby Status Update body ('r').
pub fn status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time: i64,
    reply: bool,
) -> [u8; 34] {
    let mut out = [0u8; 34];
    out[0] = b'r';
    out[1..9].copy_from_slice(&write.0.to_be_bytes());
    out[9..17].copy_from_slice(&flush.0.to_be_bytes());
    out[17..25].copy_from_slice(&apply.0.to_be_bytes());
    out[25..33].copy_from_slice(&client_time.to_be_bytes());
    out[33] = reply as u8;
    out
}

/// Now, in microseconds since the Postgres epoch.
pub fn pg_now_micros() -> i64 {
    let unix_micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    unix_micros - PG_EPOCH_OFFSET_SECS * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut b = vec![b'w'];
        b.extend_from_slice(&1u64.to_be_bytes());
        b.extend_from_slice(&2u64.to_be_bytes());
        b.extend_from_slice(&3i64.to_be_bytes());
        b.extend_from_slice(b"Bxyz");
        assert_eq!(
            parse_copy_data(Bytes::from(b)).unwrap(),
            ReplicationEvent::XLogData {
                wal_start: Lsn(1),
                wal_end: Lsn(2),
                server_time: 3,
                data: Bytes::from_static(b"Bxyz"),
            }
        );
        let mut k = vec![b'k'];
        k.extend_from_slice(&7u64.to_be_bytes());
        k.extend_from_slice(&8i64.to_be_bytes());
        k.push(1);
        assert_eq!(
            parse_copy_data(Bytes::from(k)).unwrap(),
            ReplicationEvent::Keepalive {
                wal_end: Lsn(7),
                server_time: 8,
                reply_requested: true,
            }
        );
    }

    #[test]
    fn rejects_every_truncation_without_panicking() {
        let mut w = vec![b'w'];
        w.extend_from_slice(&[0u8; 24]);
        for n in 0..w.len() {
            let r = parse_copy_data(Bytes::copy_from_slice(&w[..n]));
            assert!(matches!(r, Err(SourceError::Protocol(_))), "w len {n}");
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&[0u8; 17]);
        for n in 0..k.len() {
            let r = parse_copy_data(Bytes::copy_from_slice(&k[..n]));
            assert!(matches!(r, Err(SourceError::Protocol(_))), "k len {n}");
        }
        assert!(matches!(
            parse_copy_data(Bytes::from_static(b"zzzz")),
            Err(SourceError::Protocol(_))
        ));
    }

    #[test]
    fn status_update_layout() {
        let b = status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
        assert_eq!(b[0], b'r');
        assert_eq!(&b[1..9], &1u64.to_be_bytes());
        assert_eq!(&b[25..33], &4i64.to_be_bytes());
        assert_eq!(b[33], 1);
    }
}
