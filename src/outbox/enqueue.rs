//! The SQL of enqueueing: a source transaction's deliveries are COPYed into the outbox inside
//! one outbox transaction that also advances the checkpoint.
//!
//! Guarantees (ARCHITECTURE.md, invariant 1):
//! - rows and the checkpoint commit together or not at all ([`Enqueuer::commit`]);
//! - the checkpoint never moves backwards: the upsert only ever raises it, whatever a caller
//!   passes;
//! - rows go out through COPY as they are written, so a transaction of any size is never held
//!   in memory here;
//! - each stored delivery gets its subscription's next sequence number (1, 2, …), and the last
//!   number per subscription is stored in the same outbox transaction as the rows, so numbers
//!   are assigned once, without gaps or reuse; a new `Enqueuer` (after any failure) reloads them;
//! - each row's id is taken from the table's identity sequence before it is written (in blocks:
//!   one nextval reserves as many ids as the sequence's increment, 4096), ascending in write order, so the writer can hand the stored rows to this
//!   process's delivery pumps after the commit ([`super::handoff`]) without reading them back.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use super::{OutboxError, Schema};
use crate::model::Lsn;
use crate::route::Routed;

/// Where a written delivery landed.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub id: i64,
    pub sequence: i64,
}

/// One outbox connection writing deliveries and the checkpoint of one slot.
pub struct Enqueuer {
    client: Client,
    schema: Schema,
    slot: String,
    copy: Option<Pin<Box<BinaryCopyInWriter>>>,
    /// Each subscription's last sequence number, stored or in the open transaction; None until
    /// loaded by the first transaction.
    sequences: Option<HashMap<Arc<str>, i64>>,
    /// Numbers advanced by the open transaction, stored with it.
    sequences_dirty: HashMap<Arc<str>, i64>,
    /// Ids taken from the sequence and not used yet.
    ids: std::ops::Range<i64>,
    /// Backfill progress stored with the open transaction.
    progress: Vec<super::backfills::Progress>,
    /// The statements of every transaction, prepared once per connection (an unprepared
    /// statement costs a second round trip each time it runs).
    prepared: Option<Prepared>,
}

struct Prepared {
    copy: Statement,
    take_ids: Statement,
    sequences: Statement,
    checkpoint: Statement,
}

impl Enqueuer {
    pub fn new(client: Client, schema: Schema, slot: &str) -> Enqueuer {
        Enqueuer {
            client,
            schema,
            slot: slot.to_string(),
            copy: None,
            sequences: None,
            sequences_dirty: HashMap::new(),
            ids: 0..0,
            progress: Vec::new(),
            prepared: None,
        }
    }

    async fn prepare(&mut self) -> Result<(), OutboxError> {
        if self.prepared.is_some() {
            return Ok(());
        }
        let copy = format!(
            "COPY {} (id, subscription_id, event_id, event, ordering_key, payload, commit_lsn, sequence) FROM STDIN (FORMAT binary)",
            self.schema.table("deliveries")
        );
        let take_ids = "SELECT nextval(pg_get_serial_sequence($1, 'id')),
                               (SELECT seqincrement FROM pg_sequence
                                WHERE seqrelid = pg_get_serial_sequence($1, 'id')::regclass)";
        let sequences = format!(
            "INSERT INTO {} (subscription_id, last_sequence)
             SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (subscription_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence",
            self.schema.table("sequences")
        );
        let checkpoint = format!(
            "INSERT INTO {t} (slot, commit_lsn) VALUES ($1, $2)
             ON CONFLICT (slot) DO UPDATE SET commit_lsn = $2, updated_at = now()
             WHERE {t}.commit_lsn < $2",
            t = self.schema.table("checkpoint")
        );
        let c = &self.client;
        let (copy, take_ids, sequences, checkpoint) = tokio::try_join!(
            c.prepare(&copy),
            c.prepare(take_ids),
            c.prepare(&sequences),
            c.prepare(&checkpoint),
        )?;
        self.prepared = Some(Prepared {
            copy,
            take_ids,
            sequences,
            checkpoint,
        });
        Ok(())
    }

    /// Whether the connection is gone (the server closed it, or the network did).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Whether an outbox transaction is open (rows written and not yet committed).
    pub fn is_open(&self) -> bool {
        self.copy.is_some()
    }

    /// Writes one delivery of the source transaction committed at `commit_lsn`, opening the
    /// outbox transaction first if none is open.
    pub async fn write(&mut self, r: &Routed, commit_lsn: Lsn) -> Result<Written, OutboxError> {
        self.write_as(r, r.event.as_str(), commit_lsn).await
    }

    /// [`Enqueuer::write`] with the stored event named `event` (a backfill's `READ`).
    pub async fn write_as(
        &mut self,
        r: &Routed,
        event: &str,
        commit_lsn: Lsn,
    ) -> Result<Written, OutboxError> {
        if self.copy.is_none() {
            self.open().await?;
        }
        if self.ids.is_empty() {
            // The connection is in COPY mode: end this COPY, take ids, start the next one (all
            // inside the open transaction).
            if let Some(mut copy) = self.copy.take() {
                copy.as_mut().finish().await?;
            }
            self.ids = self.next_block().await?;
            self.start_copy().await?;
        }
        let id = self.ids.next().expect("refilled above");
        let next = self
            .sequences
            .as_mut()
            .expect("loaded when opened")
            .entry(r.subscription.clone())
            .or_insert(0);
        *next += 1;
        let sequence = *next;
        self.sequences_dirty
            .insert(r.subscription.clone(), sequence);
        let copy = self.copy.as_mut().expect("opened above");
        let sub: &str = &r.subscription;
        copy.as_mut()
            .write(&[
                &id,
                &sub,
                &r.event_id,
                &event,
                &r.key,
                &r.body,
                &(commit_lsn.0 as i64),
                &sequence,
            ])
            .await?;
        Ok(Written { id, sequence })
    }

    /// Reserves the next block of ids: one nextval, whose increment (4096 since migration 8)
    /// is the block's size.
    async fn next_block(&self) -> Result<std::ops::Range<i64>, OutboxError> {
        let stmt = &self
            .prepared
            .as_ref()
            .expect("prepared when opened")
            .take_ids;
        let row = self
            .client
            .query_one(stmt, &[&self.schema.table("deliveries")])
            .await?;
        let (first, size): (i64, i64) = (row.get(0), row.get(1));
        Ok(first..first + size.max(1))
    }

    async fn open(&mut self) -> Result<(), OutboxError> {
        self.prepare().await?;
        if self.sequences.is_none() {
            let rows = self
                .client
                .query(
                    &format!(
                        "SELECT subscription_id, last_sequence FROM {}",
                        self.schema.table("sequences")
                    ),
                    &[],
                )
                .await?;
            self.sequences = Some(
                rows.iter()
                    .map(|r| (Arc::from(r.get::<_, &str>(0)), r.get(1)))
                    .collect(),
            );
        }
        // BEGIN goes out with the next statement, in one round trip. `biased` polls them in
        // order, and a statement is sent when first polled, so BEGIN is always sent first (a
        // COPY sent before it would commit on its own); the connection answers in order, and
        // an error in either fails the open.
        if self.ids.is_empty() {
            let (_, ids): ((), _) = tokio::try_join!(
                biased;
                async { Ok(self.client.batch_execute("BEGIN").await?) },
                self.next_block()
            )?;
            self.ids = ids;
            return self.start_copy().await;
        }
        let copy = &self.prepared.as_ref().expect("prepared above").copy;
        let (_, sink) = tokio::try_join!(
            biased;
            self.client.batch_execute("BEGIN"),
            self.client.copy_in(copy)
        )?;
        self.copy = Some(Self::writer(sink));
        Ok(())
    }

    async fn start_copy(&mut self) -> Result<(), OutboxError> {
        let stmt = &self.prepared.as_ref().expect("prepared when opened").copy;
        let sink = self.client.copy_in(stmt).await?;
        self.copy = Some(Self::writer(sink));
        Ok(())
    }

    fn writer(sink: tokio_postgres::CopyInSink<bytes::Bytes>) -> Pin<Box<BinaryCopyInWriter>> {
        let types = [
            Type::INT8,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::INT8,
            Type::INT8,
        ];
        Box::pin(BinaryCopyInWriter::new(sink, &types))
    }

    /// Stores a backfill chunk's progress with the open transaction (opening one if none is).
    pub async fn note_progress(
        &mut self,
        p: super::backfills::Progress,
    ) -> Result<(), OutboxError> {
        if self.copy.is_none() {
            self.open().await?;
        }
        self.progress.push(p);
        Ok(())
    }

    /// Ends the COPY, raises the checkpoint to `commit_lsn` and commits; false when nothing was
    /// open (nothing to commit).
    pub async fn commit(&mut self, commit_lsn: Lsn) -> Result<bool, OutboxError> {
        let Some(mut copy) = self.copy.take() else {
            return Ok(false);
        };
        copy.as_mut().finish().await?;
        let (subs, last): (Vec<&str>, Vec<i64>) =
            self.sequences_dirty.iter().map(|(s, n)| (&**s, *n)).unzip();
        if !self.progress.is_empty() {
            super::backfills::store_progress(&self.client, &self.schema, &self.progress).await?;
        }
        // One round trip: the sequence numbers, the checkpoint and COMMIT go out together. If
        // a statement fails, the server aborts the transaction and answers the COMMIT with a
        // rollback; the statement's error is what this returns, so nothing is taken as stored.
        let p = self.prepared.as_ref().expect("prepared when opened");
        let lsn = commit_lsn.0 as i64;
        let seq_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&subs, &last];
        let ckpt_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.slot, &lsn];
        tokio::try_join!(
            biased;
            self.client.execute(&p.sequences, &seq_params),
            self.client.execute(&p.checkpoint, &ckpt_params),
            self.client.batch_execute("COMMIT"),
        )?;
        self.sequences_dirty.clear();
        self.progress.clear();
        Ok(true)
    }
}
