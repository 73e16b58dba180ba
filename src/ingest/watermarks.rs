//! Where backfill runners and the ingest sink meet: the [`Exchange`] holds each running
//! backfill's chunks by token, and the sink's [`Watermarks`] record the keys that change between
//! a chunk's low and high watermarks.
//!
//! Guarantees:
//! - at a chunk's high watermark the sink gets the chunk's rows minus every row whose key
//!   changed in the window (the streamed change is newer), or a reason to read the chunk again:
//!   the window was not seen open (the sink restarted in between), it overflowed
//!   ([`MAX_WINDOW_KEYS`]), or the chunk was not filled. Never rows that were not checked;
//! - a chunk withdrawn by its runner (its token abandoned) is forgotten by the sink at the next
//!   source transaction, and its high watermark, if it comes, stores nothing;
//! - bounded: a window's keys are capped, and a runner has at most two chunks here.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::oneshot;

use crate::model::{RowChange, TableName};
use crate::outbox::backfills::{Progress, WATERMARK_PREFIX};
use crate::route::Routed;

/// Keys recorded between one chunk's watermarks, at most; beyond it the chunk is read again.
pub const MAX_WINDOW_KEYS: usize = 1_000_000;

/// What became of a chunk handed to the sink.
#[derive(Debug)]
pub enum Outcome {
    Stored,
    /// Not stored; read it again.
    Retry(&'static str),
}

/// A rendered chunk: its rows (with their ordering keys) and the progress it completes.
pub struct Chunk {
    pub rows: Vec<Routed>,
    pub progress: Progress,
}

struct Pending {
    table: TableName,
    chunk: Option<Chunk>,
    done: oneshot::Sender<Outcome>,
}

/// Where runners hand chunks to the ingest sink: at most two chunks per running backfill, one
/// handed over (high watermark written) and the next one read ahead.
#[derive(Default)]
pub struct Exchange {
    pending: Mutex<HashMap<String, Pending>>,
}

impl Exchange {
    pub fn new() -> Arc<Exchange> {
        Arc::new(Exchange::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn register(&self, token: &str, table: TableName) -> oneshot::Receiver<Outcome> {
        let (done, rx) = oneshot::channel();
        self.lock().insert(
            token.to_string(),
            Pending {
                table,
                chunk: None,
                done,
            },
        );
        rx
    }

    pub(super) fn fill(&self, token: &str, chunk: Chunk) {
        if let Some(p) = self.lock().get_mut(token) {
            p.chunk = Some(chunk);
        }
    }

    pub(super) fn abandon(&self, token: &str) {
        self.lock().remove(token);
    }

    fn table_of(&self, token: &str) -> Option<TableName> {
        self.lock().get(token).map(|p| p.table.clone())
    }

    fn take(&self, token: &str) -> Option<Pending> {
        self.lock().remove(token)
    }
}

/// A chunk ready to be stored by the sink's writer.
pub struct Ready {
    pub rows: Vec<Routed>,
    pub progress: Progress,
    pub done: oneshot::Sender<Outcome>,
}

struct Window {
    table: TableName,
    keys: HashSet<String>,
    overflow: bool,
}

/// The sink's side: windows between low and high watermarks, and the keys changed in them.
pub struct Watermarks {
    exchange: Arc<Exchange>,
    windows: HashMap<String, Window>,
}

impl Watermarks {
    pub fn new(exchange: Arc<Exchange>) -> Watermarks {
        Watermarks {
            exchange,
            windows: HashMap::new(),
        }
    }

    /// At each source transaction: forgets windows whose runner gave up.
    pub fn begin(&mut self) {
        if !self.windows.is_empty() {
            let ex = &self.exchange;
            self.windows.retain(|t, _| ex.table_of(t).is_some());
        }
    }

    /// Records the key of a change inside an open window of its table.
    pub fn observe(&mut self, change: &RowChange) {
        if self.windows.is_empty() {
            return;
        }
        let mut key: Option<String> = None;
        for w in self.windows.values_mut() {
            if w.table != change.shape.table || w.overflow {
                continue;
            }
            if w.keys.len() >= MAX_WINDOW_KEYS {
                w.overflow = true;
                w.keys = HashSet::new();
                continue;
            }
            w.keys
                .insert(key.get_or_insert_with(|| row_key(change)).clone());
        }
    }

    /// A logical message of a stored (not skipped) transaction; a high watermark whose chunk is
    /// complete yields the rows to store now.
    pub fn message(&mut self, prefix: &str, content: &[u8]) -> Option<Ready> {
        if prefix != WATERMARK_PREFIX {
            return None;
        }
        let content = std::str::from_utf8(content).ok()?;
        if let Some(token) = content.strip_prefix("low:") {
            if let Some(table) = self.exchange.table_of(token) {
                self.windows.insert(
                    token.to_string(),
                    Window {
                        table,
                        keys: HashSet::new(),
                        overflow: false,
                    },
                );
            }
            return None;
        }
        let token = content.strip_prefix("high:")?;
        let window = self.windows.remove(token);
        let pending = self.exchange.take(token)?;
        let Some(chunk) = pending.chunk else {
            let _ = pending.done.send(Outcome::Retry("the chunk was not ready"));
            return None;
        };
        let window = match window {
            None => {
                let _ = pending
                    .done
                    .send(Outcome::Retry("the low watermark was not seen"));
                return None;
            }
            Some(w) if w.overflow => {
                let _ = pending
                    .done
                    .send(Outcome::Retry("too many changes during the chunk"));
                return None;
            }
            Some(w) => w,
        };
        let mut rows = chunk.rows;
        rows.retain(|r| !window.keys.contains(&r.key));
        Some(Ready {
            rows,
            progress: chunk.progress,
            done: pending.done,
        })
    }
}

/// The primary-key values as a JSON array, as routing renders a change's ordering key.
fn row_key(change: &RowChange) -> String {
    let vals: Vec<&Value> = change
        .shape
        .key_columns
        .iter()
        .filter_map(|i| change.shape.columns.get(*i))
        .map(|c| change.record.get(c).unwrap_or(&Value::Null))
        .collect();
    serde_json::to_string(&vals).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::model::{EventKind, Lsn, TableShape};

    fn table(name: &str) -> TableName {
        TableName::parse(name).unwrap()
    }

    fn change(table_name: &str, id: i64) -> RowChange {
        RowChange {
            omitted: Vec::new(),
            commit_lsn: Lsn(0x10),
            commit_ts: 0,
            ordinal: 0,
            shape: Arc::new(TableShape {
                table: table(table_name),
                columns: vec!["id".into(), "v".into()],
                key_columns: vec![0],
            }),
            kind: EventKind::Update,
            record: json!({"id": id, "v": "x"}).as_object().unwrap().clone(),
            changed: Vec::new(),
        }
    }

    fn chunk(ids: &[i64]) -> Chunk {
        Chunk {
            rows: ids
                .iter()
                .map(|id| Routed {
                    subscription: Arc::from("s"),
                    event_id: format!("evt_bf_1_{id}"),
                    event: EventKind::Insert,
                    key: format!("[{id}]"),
                    body: "{}".into(),
                })
                .collect(),
            progress: Progress {
                backfill_id: 1,
                last_key: json!({"id": ids.last()}),
                rows_done: ids.len() as i64,
                finished: false,
            },
        }
    }

    fn msg(w: &mut Watermarks, text: &str) -> Option<Ready> {
        w.message(WATERMARK_PREFIX, text.as_bytes())
    }

    fn keys(r: &Ready) -> Vec<&str> {
        r.rows.iter().map(|r| r.key.as_str()).collect()
    }

    /// A runner's chunk of `orders` rows `ids`, registered and filled under `token`.
    fn hand(ex: &Exchange, token: &str, ids: &[i64]) -> oneshot::Receiver<Outcome> {
        let done = ex.register(token, table("orders"));
        ex.fill(token, chunk(ids));
        done
    }

    /// Why the sink refused a chunk (panics when it did not).
    fn refused(done: &mut oneshot::Receiver<Outcome>) -> &'static str {
        match done.try_recv() {
            Ok(Outcome::Retry(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn sink() -> (Arc<Exchange>, Watermarks) {
        let ex = Exchange::new();
        let w = Watermarks::new(ex.clone());
        (ex, w)
    }

    #[test]
    fn a_row_whose_key_changed_between_the_watermarks_is_dropped() {
        let (ex, mut w) = sink();
        let mut done = hand(&ex, "t1", &[1, 2, 3]);
        msg(&mut w, "low:t1");
        w.observe(&change("orders", 2));
        // Same key, another table: not this window's business.
        w.observe(&change("other", 3));
        let ready = msg(&mut w, "high:t1").expect("the chunk is stored");
        assert_eq!(keys(&ready), ["[1]", "[3]"]);
        assert_eq!(ready.progress.rows_done, 3);
        let _ = ready.done.send(Outcome::Stored);
        assert!(matches!(done.try_recv(), Ok(Outcome::Stored)));
    }

    #[test]
    fn a_chunk_whose_low_watermark_was_not_seen_is_read_again() {
        let (ex, mut w) = sink();
        let mut done = hand(&ex, "t1", &[1]);
        assert!(msg(&mut w, "high:t1").is_none());
        assert_eq!(refused(&mut done), "the low watermark was not seen");
    }

    #[test]
    fn a_withdrawn_chunk_is_forgotten_and_its_high_watermark_stores_nothing() {
        let (ex, mut w) = sink();
        let _done = hand(&ex, "t1", &[1]);
        msg(&mut w, "low:t1");
        ex.abandon("t1");
        w.begin();
        assert!(w.windows.is_empty(), "the window is forgotten");
        assert!(msg(&mut w, "high:t1").is_none());
    }

    #[test]
    fn each_chunk_has_its_own_window() {
        // The runner's order: low(1), high(1), low(2), then high(2) only after chunk 1 is stored.
        let (ex, mut w) = sink();
        let _d1 = hand(&ex, "t1", &[1, 2]);
        msg(&mut w, "low:t1");
        w.observe(&change("orders", 1));
        let first = msg(&mut w, "high:t1").expect("chunk 1");
        assert_eq!(keys(&first), ["[2]"]);
        let _d2 = hand(&ex, "t2", &[3, 4, 1]);
        msg(&mut w, "low:t2");
        // Chunk 1's changed key is not carried into chunk 2's window; a change after low(2) is.
        w.observe(&change("orders", 4));
        let second = msg(&mut w, "high:t2").expect("chunk 2");
        assert_eq!(keys(&second), ["[3]", "[1]"]);
    }

    #[test]
    fn an_overflowing_window_reads_the_chunk_again() {
        let (ex, mut w) = sink();
        let mut done = hand(&ex, "t1", &[1]);
        msg(&mut w, "low:t1");
        w.windows.get_mut("t1").unwrap().keys =
            (0..MAX_WINDOW_KEYS).map(|i| i.to_string()).collect();
        w.observe(&change("orders", -1));
        assert!(msg(&mut w, "high:t1").is_none());
        assert_eq!(refused(&mut done), "too many changes during the chunk");
    }
}
