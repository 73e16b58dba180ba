use super::*;
use proptest::prelude::*;

/// Test-only writer for hand-built wire bytes: big-endian integers, NUL-terminated strings.
struct W(Vec<u8>);

impl W {
    fn new(tag: u8) -> W {
        W(vec![tag])
    }
    fn u8(mut self, v: u8) -> W {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> W {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn cstr(mut self, s: &str) -> W {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, b: &[u8]) -> W {
        self.0.extend_from_slice(b);
        self
    }
    fn text(self, b: &[u8]) -> W {
        self.u8(b't').i32(b.len() as i32).raw(b)
    }
    fn tuple(mut self, t: &Tuple) -> W {
        self = self.i16(t.0.len() as i16);
        for v in &t.0 {
            self = match v {
                TupleValue::Null => self.u8(b'n'),
                TupleValue::UnchangedToast => self.u8(b'u'),
                TupleValue::Text(b) => self.text(b),
                TupleValue::Binary(b) => self.u8(b'b').i32(b.len() as i32).raw(b),
            };
        }
        self
    }
    fn old(self, old: &OldTuple) -> W {
        match old {
            OldTuple::Key(t) => self.u8(b'K').tuple(t),
            OldTuple::Full(t) => self.u8(b'O').tuple(t),
        }
    }
    fn done(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// Test-only encoder: the inverse of `decode`, used for round-trip properties.
fn encode(m: &Message) -> Bytes {
    let w = W::new(m.tag() as u8);
    match m {
        Message::Begin {
            final_lsn,
            commit_ts,
            xid,
        } => w.u64(final_lsn.0).i64(*commit_ts).u32(*xid),
        Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_ts,
        } => w
            .u8(*flags)
            .u64(commit_lsn.0)
            .u64(end_lsn.0)
            .i64(*commit_ts),
        Message::Origin { commit_lsn, name } => w.u64(commit_lsn.0).cstr(name),
        Message::Relation(r) => {
            let mut w = w
                .u32(r.id)
                .cstr(&r.namespace)
                .cstr(&r.name)
                .u8(r.replica_identity)
                .i16(r.columns.len() as i16);
            for c in &r.columns {
                w = w
                    .u8(c.is_key as u8)
                    .cstr(&c.name)
                    .u32(c.type_oid)
                    .i32(c.type_modifier);
            }
            w
        }
        Message::Type {
            id,
            namespace,
            name,
        } => w.u32(*id).cstr(namespace).cstr(name),
        Message::Insert { relation_id, new } => w.u32(*relation_id).u8(b'N').tuple(new),
        Message::Update {
            relation_id,
            old,
            new,
        } => {
            let w = w.u32(*relation_id);
            let w = match old {
                Some(o) => w.old(o),
                None => w,
            };
            w.u8(b'N').tuple(new)
        }
        Message::Delete { relation_id, old } => w.u32(*relation_id).old(old),
        Message::Truncate {
            options,
            relation_ids,
        } => {
            let mut w = w.i32(relation_ids.len() as i32).u8(*options);
            for id in relation_ids {
                w = w.u32(*id);
            }
            w
        }
        Message::LogicalMessage {
            transactional,
            lsn,
            prefix,
            content,
        } => w
            .u8(*transactional as u8)
            .u64(lsn.0)
            .cstr(prefix)
            .i32(content.len() as i32)
            .raw(content),
    }
    .done()
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn ok(b: Bytes) -> Message {
    match decode(b.clone()) {
        Ok(m) => m,
        Err(e) => panic!("decode({b:?}) failed: {e}"),
    }
}

fn err(b: Bytes) -> DecodeError {
    match decode(b.clone()) {
        Ok(m) => panic!("decode({b:?}) unexpectedly gave {m:?}"),
        Err(e) => e,
    }
}

/// One valid instance of every message shape, each hand-built from the documented layout.
fn samples() -> Vec<(Bytes, Message)> {
    let row = Tuple(vec![
        text("42"),
        TupleValue::Null,
        TupleValue::UnchangedToast,
    ]);
    let key = Tuple(vec![text("41"), TupleValue::Null, TupleValue::Null]);
    vec![
        (
            W::new(b'B').u64(0x16_B374_D848).i64(1_000).u32(7).done(),
            Message::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_ts: 1_000,
                xid: 7,
            },
        ),
        (
            W::new(b'C').u8(0).u64(10).u64(20).i64(-5).done(),
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(10),
                end_lsn: Lsn(20),
                commit_ts: -5,
            },
        ),
        (
            W::new(b'O').u64(99).cstr("upstream").done(),
            Message::Origin {
                commit_lsn: Lsn(99),
                name: "upstream".into(),
            },
        ),
        (
            W::new(b'R')
                .u32(16384)
                .cstr("public")
                .cstr("orders")
                .u8(b'd')
                .i16(2)
                .u8(1)
                .cstr("id")
                .u32(23)
                .i32(-1)
                .u8(0)
                .cstr("note")
                .u32(1043)
                .i32(36)
                .done(),
            Message::Relation(Relation {
                id: 16384,
                namespace: "public".into(),
                name: "orders".into(),
                replica_identity: b'd',
                columns: vec![
                    Column {
                        is_key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1,
                    },
                    Column {
                        is_key: false,
                        name: "note".into(),
                        type_oid: 1043,
                        type_modifier: 36,
                    },
                ],
            }),
        ),
        (
            W::new(b'Y').u32(70000).cstr("public").cstr("mood").done(),
            Message::Type {
                id: 70000,
                namespace: "public".into(),
                name: "mood".into(),
            },
        ),
        (
            W::new(b'I')
                .u32(16384)
                .u8(b'N')
                .i16(4)
                .text(b"42")
                .u8(b'n')
                .u8(b'b')
                .i32(2)
                .raw(&[0, 255])
                .text(b"")
                .done(),
            Message::Insert {
                relation_id: 16384,
                new: Tuple(vec![
                    text("42"),
                    TupleValue::Null,
                    TupleValue::Binary(Bytes::from_static(&[0, 255])),
                    text(""),
                ]),
            },
        ),
        (
            W::new(b'U').u32(1).u8(b'N').tuple(&row).done(),
            Message::Update {
                relation_id: 1,
                old: None,
                new: row.clone(),
            },
        ),
        (
            W::new(b'U')
                .u32(1)
                .u8(b'K')
                .tuple(&key)
                .u8(b'N')
                .tuple(&row)
                .done(),
            Message::Update {
                relation_id: 1,
                old: Some(OldTuple::Key(key.clone())),
                new: row.clone(),
            },
        ),
        (
            W::new(b'U')
                .u32(1)
                .u8(b'O')
                .tuple(&row)
                .u8(b'N')
                .tuple(&Tuple(vec![]))
                .done(),
            Message::Update {
                relation_id: 1,
                old: Some(OldTuple::Full(row.clone())),
                new: Tuple(vec![]),
            },
        ),
        (
            W::new(b'D').u32(2).u8(b'K').tuple(&key).done(),
            Message::Delete {
                relation_id: 2,
                old: OldTuple::Key(key.clone()),
            },
        ),
        (
            W::new(b'D').u32(2).u8(b'O').tuple(&row).done(),
            Message::Delete {
                relation_id: 2,
                old: OldTuple::Full(row.clone()),
            },
        ),
        (
            W::new(b'T').i32(3).u8(3).u32(10).u32(11).u32(12).done(),
            Message::Truncate {
                options: 3,
                relation_ids: vec![10, 11, 12],
            },
        ),
        (
            W::new(b'M')
                .u8(1)
                .u64(77)
                .cstr("walhook")
                .i32(5)
                .raw(b"hello")
                .done(),
            Message::LogicalMessage {
                transactional: true,
                lsn: Lsn(77),
                prefix: "walhook".into(),
                content: Bytes::from_static(b"hello"),
            },
        ),
        (
            W::new(b'M').u8(0).u64(78).cstr("").i32(0).done(),
            Message::LogicalMessage {
                transactional: false,
                lsn: Lsn(78),
                prefix: String::new(),
                content: Bytes::new(),
            },
        ),
    ]
}

#[test]
fn decodes_every_message_type() {
    let samples = samples();
    let tags: std::collections::BTreeSet<char> = samples.iter().map(|(_, m)| m.tag()).collect();
    assert_eq!(tags.len(), 10, "every tag is covered: {tags:?}");
    for (bytes, want) in samples {
        assert_eq!(ok(bytes.clone()), want);
        assert_eq!(bytes[0] as char, want.tag());
    }
}

#[test]
fn test_encoder_matches_hand_built_bytes() {
    for (bytes, msg) in samples() {
        assert_eq!(encode(&msg), bytes, "{msg:?}");
    }
}

#[test]
fn values_are_slices_of_the_input() {
    let buf = W::new(b'I').u32(1).u8(b'N').i16(1).text(b"hello").done();
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Message::Insert { new, .. } = ok(buf.clone()) else {
        panic!("not an insert")
    };
    let TupleValue::Text(v) = &new.0[0] else {
        panic!("not text")
    };
    assert_eq!(&v[..], b"hello");
    assert!(range.contains(&(v.as_ptr() as usize)));
}

#[test]
fn commit_flags_are_kept_raw() {
    let m = ok(W::new(b'C').u8(0x80).u64(1).u64(2).i64(3).done());
    assert!(matches!(m, Message::Commit { flags: 0x80, .. }));
}

#[test]
fn every_replica_identity_is_accepted() {
    for ri in [b'd', b'n', b'f', b'i'] {
        let m = ok(W::new(b'R').u32(1).cstr("").cstr("t").u8(ri).i16(0).done());
        assert!(
            matches!(m, Message::Relation(r) if r.replica_identity == ri && r.namespace.is_empty())
        );
    }
}

#[test]
fn every_proper_prefix_is_an_error() {
    for (bytes, _) in samples() {
        for n in 0..bytes.len() {
            let e = err(bytes.slice(..n));
            // The error must point inside the prefix (or at its end), never beyond.
            assert!(e.offset() <= n, "{e} for prefix {n} of {bytes:?}");
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    for (bytes, _) in samples() {
        let mut v = bytes.to_vec();
        v.push(0);
        let len = bytes.len();
        let e = err(v.into());
        assert_eq!(
            e,
            DecodeError::TrailingBytes {
                tag: bytes[0],
                offset: len,
                count: 1
            }
        );
    }
}

#[test]
fn empty_and_unknown_tags() {
    assert_eq!(err(Bytes::new()), DecodeError::Empty);
    for tag in [b'x', b'S', b'A', b'E', 0, 0xff] {
        assert_eq!(err(W::new(tag).done()), DecodeError::UnknownTag { tag });
    }
    let msg = err(Bytes::from_static(b"S\0\0")).to_string();
    assert!(msg.contains("'S' (0x53)"), "{msg}");
}

#[test]
fn insert_without_new_marker_explains_itself() {
    let e = err(W::new(b'I').u32(16384).u8(b'A').i16(0).done());
    assert_eq!(
        e.to_string(),
        "Insert ('I') at byte 5: expected tuple marker 'N', found 'A' (0x41)"
    );
    assert_eq!(e.tag(), Some(b'I'));
    assert_eq!(e.offset(), 5);
}

#[test]
fn bad_tuple_markers() {
    let e = err(W::new(b'U').u32(1).u8(b'X').i16(0).done());
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedByte {
                offset: 5,
                found: b'X',
                ..
            }
        ),
        "{e}"
    );
    // After an old tuple, the new tuple is mandatory.
    let e = err(W::new(b'U').u32(1).u8(b'K').i16(0).u8(b'K').i16(0).done());
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedByte {
                offset: 8,
                found: b'K',
                ..
            }
        ),
        "{e}"
    );
    let e = err(W::new(b'U').u32(1).u8(b'K').i16(0).done());
    assert!(matches!(e, DecodeError::Truncated { offset: 8, .. }), "{e}");
    // A Delete always carries an old tuple, never a new one.
    let e = err(W::new(b'D').u32(1).u8(b'N').i16(0).done());
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedByte {
                offset: 5,
                found: b'N',
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_tuple_value_kind() {
    let e = err(W::new(b'I').u32(1).u8(b'N').i16(2).u8(b'n').u8(b'x').done());
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedByte {
                offset: 9,
                found: b'x',
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("tuple value kind"), "{e}");
}

#[test]
fn negative_lengths_and_counts() {
    let cases = [
        (W::new(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1), 9),
        (
            W::new(b'I').u32(1).u8(b'N').i16(1).u8(b'b').i32(i32::MIN),
            9,
        ),
        (W::new(b'I').u32(1).u8(b'N').i16(-1), 6),
        (W::new(b'R').u32(1).cstr("").cstr("t").u8(b'f').i16(-3), 9),
        (W::new(b'T').i32(-1).u8(0), 1),
        (W::new(b'M').u8(0).u64(0).cstr("p").i32(-7), 12),
    ];
    for (w, offset) in cases {
        let e = err(w.done());
        assert!(
            matches!(e, DecodeError::NegativeLength { offset: o, .. } if o == offset),
            "{e}"
        );
    }
}

#[test]
fn lengths_past_the_end() {
    let e = err(W::new(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(10)
        .raw(b"abc")
        .done());
    assert_eq!(
        e,
        DecodeError::Truncated {
            tag: b'I',
            offset: 13,
            expected: "text value",
            needed: 10,
            remaining: 3
        }
    );
    let e = err(W::new(b'M').u8(0).u64(0).cstr("").i32(i32::MAX).done());
    assert!(
        matches!(
            e,
            DecodeError::Truncated {
                needed: 0x7fff_ffff,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn huge_counts_do_not_reserve_memory_up_front() {
    // Each would be a multi-gigabyte reservation if counts were trusted; they must fail fast.
    assert!(matches!(
        err(W::new(b'T').i32(i32::MAX).u8(0).u32(1).done()),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        err(W::new(b'I').u32(1).u8(b'N').i16(i16::MAX).done()),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        err(W::new(b'R')
            .u32(1)
            .cstr("")
            .cstr("t")
            .u8(b'd')
            .i16(i16::MAX)
            .done()),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn strings_must_be_terminated_and_utf8() {
    let e = err(W::new(b'O').u64(1).raw(b"abc").done());
    assert_eq!(
        e,
        DecodeError::UnterminatedString {
            tag: b'O',
            offset: 9,
            field: "origin name"
        }
    );
    let e = err(W::new(b'Y').u32(1).cstr("ok").raw(b"bad\xff\0").done());
    assert_eq!(
        e,
        DecodeError::InvalidUtf8 {
            tag: b'Y',
            offset: 8,
            field: "type name"
        }
    );
    assert_eq!(
        e.to_string(),
        "Type ('Y') at byte 8: type name is not valid UTF-8"
    );
    let e = err(W::new(b'R')
        .u32(1)
        .cstr("s")
        .cstr("t")
        .u8(b'd')
        .i16(1)
        .u8(0)
        .raw(b"\xc3\0")
        .u32(0)
        .i32(0)
        .done());
    assert!(
        matches!(
            e,
            DecodeError::InvalidUtf8 {
                field: "column name",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_replica_identity_is_rejected() {
    let e = err(W::new(b'R')
        .u32(1)
        .cstr("")
        .cstr("t")
        .u8(b'x')
        .i16(0)
        .done());
    assert!(
        matches!(
            e,
            DecodeError::UnexpectedByte {
                offset: 8,
                found: b'x',
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn pg_epoch_constant() {
    // 2000-01-01T00:00:00Z is 10957 days after 1970-01-01.
    assert_eq!(PG_EPOCH_UNIX_MICROS, 10_957 * 86_400 * 1_000_000);
}

fn arb_name() -> impl Strategy<Value = String> {
    // Wire strings are NUL-terminated, so they cannot contain NUL.
    "[^\u{0}]{0,12}"
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_tuple() -> impl Strategy<Value = Tuple> {
    let value = prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        arb_bytes().prop_map(TupleValue::Text),
        arb_bytes().prop_map(TupleValue::Binary),
    ];
    prop::collection::vec(value, 0..8).prop_map(Tuple)
}

fn arb_old() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_tuple().prop_map(OldTuple::Key),
        arb_tuple().prop_map(OldTuple::Full)
    ]
}

fn arb_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let column = (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    let relation = (
        any::<u32>(),
        arb_name(),
        arb_name(),
        prop::sample::select(vec![b'd', b'n', b'f', b'i']),
        prop::collection::vec(column, 0..6),
    )
        .prop_map(|(id, namespace, name, replica_identity, columns)| {
            Message::Relation(Relation {
                id,
                namespace,
                name,
                replica_identity,
                columns,
            })
        });
    prop_oneof![
        (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_ts, xid)| {
            Message::Begin {
                final_lsn,
                commit_ts,
                xid,
            }
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_ts)| Message::Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_ts,
            }
        ),
        (arb_lsn(), arb_name()).prop_map(|(commit_lsn, name)| Message::Origin { commit_lsn, name }),
        relation,
        (any::<u32>(), arb_name(), arb_name()).prop_map(|(id, namespace, name)| Message::Type {
            id,
            namespace,
            name,
        }),
        (any::<u32>(), arb_tuple())
            .prop_map(|(relation_id, new)| Message::Insert { relation_id, new }),
        (any::<u32>(), prop::option::of(arb_old()), arb_tuple()).prop_map(
            |(relation_id, old, new)| Message::Update {
                relation_id,
                old,
                new,
            }
        ),
        (any::<u32>(), arb_old())
            .prop_map(|(relation_id, old)| Message::Delete { relation_id, old }),
        (any::<u8>(), prop::collection::vec(any::<u32>(), 0..8)).prop_map(
            |(options, relation_ids)| Message::Truncate {
                options,
                relation_ids,
            }
        ),
        (any::<bool>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
            |(transactional, lsn, prefix, content)| Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content,
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode(Bytes::from(bytes));
    }

    /// Pure noise rarely gets past the tag; a valid tag first reaches the field decoders.
    #[test]
    fn arbitrary_bodies_never_panic(
        tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut v = vec![tag];
        v.extend(body);
        let _ = decode(Bytes::from(v));
    }

    #[test]
    fn round_trip(msg in arb_message()) {
        prop_assert_eq!(decode(encode(&msg)), Ok(msg));
    }

    /// Corrupting one byte of a valid message must give an error or some message, never a panic.
    #[test]
    fn corrupted_messages_never_panic(msg in arb_message(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut v = encode(&msg).to_vec();
        let i = at.index(v.len());
        v[i] = byte;
        let _ = decode(Bytes::from(v));
    }

    #[test]
    fn truncated_messages_are_errors(msg in arb_message(), at in any::<prop::sample::Index>()) {
        let b = encode(&msg);
        let n = at.index(b.len());
        prop_assert!(decode(b.slice(..n)).is_err());
    }
}
