//! Decoder for pgoutput logical replication messages, protocol version 1.
//!
//! Guarantees:
//! - Pure: [`decode`] turns the bytes of exactly one message (the payload of one `XLogData`
//!   frame) into one [`Message`]. No I/O, no state; in particular it does not need or check
//!   earlier `Relation` messages, so it can be tested and fuzzed in isolation.
//! - Never panics, whatever the input: every read is bounds-checked, and counts taken from the
//!   wire never reserve more memory than the remaining input could actually fill.
//! - Zero-copy: column values and logical-message contents are [`Bytes::slice`]s of the input
//!   buffer; they share (and keep alive) its allocation instead of copying.
//! - Strict: a message must be consumed exactly. Trailing bytes, unknown message tags, unknown
//!   tuple markers, negative lengths, truncation and invalid UTF-8 are [`DecodeError`]s naming
//!   the message, the byte offset and what was expected there.
//!
//! Only protocol version 1 is understood: streamed transactions and the xid fields that
//! protocol version 2 adds to row messages are not, because walhook never asks for streaming.

use std::fmt;

use bytes::Bytes;

use crate::model::Lsn;

#[cfg(test)]
mod tests;

/// The Postgres epoch (2000-01-01 00:00:00 UTC) in microseconds since the Unix epoch.
/// Add it to a pgoutput timestamp to get Unix microseconds.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One pgoutput message. Field names follow the Postgres documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `B`. `commit_ts` is microseconds since 2000-01-01 UTC, exactly as sent.
    Begin {
        final_lsn: Lsn,
        commit_ts: i64,
        xid: u32,
    },
    /// `C`. `commit_ts` is microseconds since 2000-01-01 UTC, exactly as sent.
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_ts: i64,
    },
    /// `O`.
    Origin { commit_lsn: Lsn, name: String },
    /// `R`.
    Relation(Relation),
    /// `Y`.
    Type {
        id: u32,
        namespace: String,
        name: String,
    },
    /// `I`.
    Insert { relation_id: u32, new: Tuple },
    /// `U`. `old` is present only when the replica identity columns changed (`K`) or the
    /// replica identity is FULL (`O`).
    Update {
        relation_id: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// `D`.
    Delete { relation_id: u32, old: OldTuple },
    /// `T`. `options`: bit 1 = CASCADE, bit 2 = RESTART IDENTITY.
    Truncate { options: u8, relation_ids: Vec<u32> },
    /// `M`, from `pg_logical_emit_message`.
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
}

impl Message {
    /// The wire tag of this message, e.g. `'I'` for [`Message::Insert`].
    pub fn tag(&self) -> char {
        match self {
            Message::Begin { .. } => 'B',
            Message::Commit { .. } => 'C',
            Message::Origin { .. } => 'O',
            Message::Relation(_) => 'R',
            Message::Type { .. } => 'Y',
            Message::Insert { .. } => 'I',
            Message::Update { .. } => 'U',
            Message::Delete { .. } => 'D',
            Message::Truncate { .. } => 'T',
            Message::LogicalMessage { .. } => 'M',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    /// Empty for `pg_catalog`, as Postgres sends it.
    pub namespace: String,
    pub name: String,
    /// `relreplident`: `b'd'` default, `b'n'` nothing, `b'f'` full, `b'i'` index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Column values in relation column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<TupleValue>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    Null,
    /// A TOASTed value that the update did not change; Postgres does not resend it.
    UnchangedToast,
    /// Text output format of the column type (not NUL-terminated, not guaranteed UTF-8 by the
    /// protocol, so left as bytes).
    Text(Bytes),
    /// Binary send format; only sent when the subscriber asked for `binary`.
    Binary(Bytes),
}

/// The old row of an Update or Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: only the replica identity columns are meaningful; others are Null.
    Key(Tuple),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(Tuple),
}

/// Why a message could not be decoded. Offsets count from the tag byte (offset 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message: expected a message tag at byte 0")]
    Empty,
    #[error(
        "unknown pgoutput message tag {} at byte 0: expected one of B, C, O, R, Y, I, U, D, T, M \
         (protocol version 1)",
        ByteRepr(*tag)
    )]
    UnknownTag { tag: u8 },
    #[error(
        "{} at byte {offset}: expected {expected} ({needed} bytes), but only {remaining} remain",
        MsgName(*tag)
    )]
    Truncated {
        tag: u8,
        offset: usize,
        expected: &'static str,
        needed: usize,
        remaining: usize,
    },
    #[error(
        "{} at byte {offset}: expected NUL-terminated {field}, but the message ends first",
        MsgName(*tag)
    )]
    UnterminatedString {
        tag: u8,
        offset: usize,
        field: &'static str,
    },
    #[error("{} at byte {offset}: {field} is not valid UTF-8", MsgName(*tag))]
    InvalidUtf8 {
        tag: u8,
        offset: usize,
        field: &'static str,
    },
    #[error(
        "{} at byte {offset}: expected {expected}, found {}",
        MsgName(*tag),
        ByteRepr(*found)
    )]
    UnexpectedByte {
        tag: u8,
        offset: usize,
        expected: &'static str,
        found: u8,
    },
    #[error(
        "{} at byte {offset}: expected a non-negative {field}, found {value}",
        MsgName(*tag)
    )]
    NegativeLength {
        tag: u8,
        offset: usize,
        field: &'static str,
        value: i32,
    },
    #[error(
        "{} at byte {offset}: expected end of message, found {count} trailing bytes",
        MsgName(*tag)
    )]
    TrailingBytes {
        tag: u8,
        offset: usize,
        count: usize,
    },
}

impl DecodeError {
    /// The tag byte of the offending message, if there was one.
    pub fn tag(&self) -> Option<u8> {
        match *self {
            DecodeError::Empty => None,
            DecodeError::UnknownTag { tag }
            | DecodeError::Truncated { tag, .. }
            | DecodeError::UnterminatedString { tag, .. }
            | DecodeError::InvalidUtf8 { tag, .. }
            | DecodeError::UnexpectedByte { tag, .. }
            | DecodeError::NegativeLength { tag, .. }
            | DecodeError::TrailingBytes { tag, .. } => Some(tag),
        }
    }

    /// Byte offset (from the tag) where decoding failed.
    pub fn offset(&self) -> usize {
        match *self {
            DecodeError::Empty | DecodeError::UnknownTag { .. } => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::UnexpectedByte { offset, .. }
            | DecodeError::NegativeLength { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => offset,
        }
    }
}

/// Shows a message tag as e.g. `Insert ('I')`.
struct MsgName(u8);

impl fmt::Display for MsgName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            b'B' => "Begin",
            b'C' => "Commit",
            b'O' => "Origin",
            b'R' => "Relation",
            b'Y' => "Type",
            b'I' => "Insert",
            b'U' => "Update",
            b'D' => "Delete",
            b'T' => "Truncate",
            b'M' => "Message",
            _ => return write!(f, "message {}", ByteRepr(self.0)),
        };
        write!(f, "{name} ('{}')", self.0 as char)
    }
}

/// Shows a byte as `'A' (0x41)` when printable, else `0x00`, so garbage is readable in logs.
struct ByteRepr(u8);

impl fmt::Display for ByteRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02X})", self.0 as char, self.0)
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

/// Smallest possible encoding of one Relation column: flags, empty name's NUL, oid, typmod.
/// Bounds the capacity reserved for a column count read from the wire.
const MIN_COLUMN_LEN: usize = 1 + 1 + 4 + 4;

/// Decodes one pgoutput (protocol version 1) message. See the module docs for guarantees.
pub fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = buf.first() else {
        return Err(DecodeError::Empty);
    };
    let mut r = Reader {
        buf: &buf,
        pos: 1,
        tag,
    };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn("final LSN (Int64)")?,
            commit_ts: r.i64("commit timestamp (Int64)")?,
            xid: r.u32("xid (Int32)")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("flags (Int8)")?,
            commit_lsn: r.lsn("commit LSN (Int64)")?,
            end_lsn: r.lsn("end LSN (Int64)")?,
            commit_ts: r.i64("commit timestamp (Int64)")?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn("origin commit LSN (Int64)")?,
            name: r.string("origin name")?,
        },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            id: r.u32("type oid (Int32)")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        },
        b'I' => {
            let relation_id = r.u32("relation id (Int32)")?;
            r.expect(b'N', "tuple marker 'N'")?;
            Message::Insert {
                relation_id,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation_id = r.u32("relation id (Int32)")?;
            let at = r.pos;
            let old = match r.u8("tuple marker 'K', 'O' or 'N'")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => None,
                found => return Err(r.unexpected(at, "tuple marker 'K', 'O' or 'N'", found)),
            };
            if old.is_some() {
                r.expect(b'N', "new tuple marker 'N'")?;
            }
            Message::Update {
                relation_id,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation_id = r.u32("relation id (Int32)")?;
            let at = r.pos;
            let old = match r.u8("tuple marker 'K' or 'O'")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                found => return Err(r.unexpected(at, "tuple marker 'K' or 'O'", found)),
            };
            Message::Delete { relation_id, old }
        }
        b'T' => {
            let count = r.length("relation count (Int32)")?;
            let options = r.u8("option bits (Int8)")?;
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(r.u32("relation id (Int32)")?);
            }
            Message::Truncate {
                options,
                relation_ids,
            }
        }
        b'M' => {
            // Only bit 1 is defined; other bits are ignored rather than rejected so that a
            // server-side flag addition cannot stall replication.
            let transactional = r.u8("flags (Int8)")? & 1 != 0;
            let lsn = r.lsn("message LSN (Int64)")?;
            let prefix = r.string("message prefix")?;
            let len = r.length("content length (Int32)")?;
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.bytes(len, "message content")?,
            }
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(msg)
}

/// A bounds-checked cursor over one message; every read either advances or returns an error
/// that already knows the message tag and offset.
struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    tag: u8,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        let all: &'a [u8] = self.buf;
        all.get(self.pos..).unwrap_or_default()
    }

    fn truncated(&self, expected: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            tag: self.tag,
            offset: self.pos,
            expected,
            needed,
            remaining: self.remaining(),
        }
    }

    fn unexpected(&self, offset: usize, expected: &'static str, found: u8) -> DecodeError {
        DecodeError::UnexpectedByte {
            tag: self.tag,
            offset,
            expected,
            found,
        }
    }

    fn array<const N: usize>(&mut self, expected: &'static str) -> Result<[u8; N], DecodeError> {
        match self.rest().first_chunk::<N>() {
            Some(a) => {
                self.pos += N;
                Ok(*a)
            }
            None => Err(self.truncated(expected, N)),
        }
    }

    fn u8(&mut self, expected: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(expected).map(|[b]| b)
    }

    fn i16(&mut self, expected: &'static str) -> Result<i16, DecodeError> {
        self.array(expected).map(i16::from_be_bytes)
    }

    fn i32(&mut self, expected: &'static str) -> Result<i32, DecodeError> {
        self.array(expected).map(i32::from_be_bytes)
    }

    fn u32(&mut self, expected: &'static str) -> Result<u32, DecodeError> {
        self.array(expected).map(u32::from_be_bytes)
    }

    fn i64(&mut self, expected: &'static str) -> Result<i64, DecodeError> {
        self.array(expected).map(i64::from_be_bytes)
    }

    fn lsn(&mut self, expected: &'static str) -> Result<Lsn, DecodeError> {
        self.array(expected).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An Int32 length or count; Postgres never sends negative ones, so they mean corruption.
    fn length(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let value = self.i32(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            tag: self.tag,
            offset: at,
            field,
            value,
        })
    }

    fn expect(&mut self, want: u8, expected: &'static str) -> Result<(), DecodeError> {
        let at = self.pos;
        match self.u8(expected)? {
            b if b == want => Ok(()),
            found => Err(self.unexpected(at, expected, found)),
        }
    }

    /// `len` bytes as a zero-copy slice of the input.
    fn bytes(&mut self, len: usize, expected: &'static str) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(self.truncated(expected, len));
        }
        let start = self.pos;
        self.pos += len;
        Ok(self.buf.slice(start..self.pos))
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = self.rest();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                tag: self.tag,
                offset: self.pos,
                field,
            });
        };
        let s = std::str::from_utf8(&rest[..nul]).map_err(|_| DecodeError::InvalidUtf8 {
            tag: self.tag,
            offset: self.pos,
            field,
        })?;
        self.pos += nul + 1;
        Ok(s.to_owned())
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id (Int32)")?;
        let namespace = self.string("relation namespace")?;
        let name = self.string("relation name")?;
        let at = self.pos;
        let replica_identity = self.u8("replica identity (Int8)")?;
        if !matches!(replica_identity, b'd' | b'n' | b'f' | b'i') {
            return Err(self.unexpected(
                at,
                "replica identity 'd', 'n', 'f' or 'i'",
                replica_identity,
            ));
        }
        let count = self.count16("column count (Int16)")?;
        let mut columns = Vec::with_capacity(count.min(self.remaining() / MIN_COLUMN_LEN));
        for _ in 0..count {
            columns.push(Column {
                // Only bit 1 (part of the key) is defined; see the 'M' flags for why other bits
                // are ignored.
                is_key: self.u8("column flags (Int8)")? & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type oid (Int32)")?,
                type_modifier: self.i32("column type modifier (Int32)")?,
            });
        }
        Ok(Relation {
            id,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let at = self.pos;
        let value = self.i16(field)?;
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            tag: self.tag,
            offset: at,
            field,
            value: value.into(),
        })
    }

    /// TupleData, after its 'N'/'K'/'O' marker. This is the hot path: one Vec per tuple and
    /// one refcount bump per non-null value, nothing else.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.count16("tuple column count (Int16)")?;
        // Every value takes at least its kind byte.
        let mut values = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let at = self.pos;
            let value = match self.u8("tuple value kind (Byte1)")? {
                b'n' => TupleValue::Null,
                b'u' => TupleValue::UnchangedToast,
                b't' => {
                    let len = self.length("text value length (Int32)")?;
                    TupleValue::Text(self.bytes(len, "text value")?)
                }
                b'b' => {
                    let len = self.length("binary value length (Int32)")?;
                    TupleValue::Binary(self.bytes(len, "binary value")?)
                }
                found => {
                    return Err(self.unexpected(at, "tuple value kind 'n', 'u', 't' or 'b'", found))
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                tag: self.tag,
                offset: self.pos,
                count,
            }),
        }
    }
}
