//! The delivery queue's SQL (used by `deliver::worker`): ownership of a subscription, claim, and record results.
//!
//! Guarantees:
//! - one owner (a pump of one walhook process) sends a subscription's deliveries at a time. It
//!   holds a lease in `delivery_owners` and renews it; when it dies the lease expires and another
//!   pump takes over. Ownership costs one row per subscription, not a write per delivery;
//! - a claim reads due rows only while the claimer's lease is live, and never returns a row the
//!   owner still holds (queued, in flight, or not yet recorded): it passes their ids. So the same
//!   delivery is never in flight twice, except across an expired lease, and then with the same
//!   event id;
//! - only the oldest unfinished delivery of a (subscription, ordering key) is claimable, so a key
//!   goes out in commit order and a failing delivery blocks only its own key (a table without a
//!   primary key has the empty key and no ordering);
//! - a result is written only by the current owner and only to an unfinished row, in one
//!   statement; every attempt but a first-attempt success also writes an attempt row (that
//!   success's outcome stays on the delivery: `last_http_status`, `last_attempt_at`,
//!   `last_duration_ms`; the `all_attempts` view shows both);
//! - a run of the delivered cursor ([`Queue::record_runs`], sql/015) is written only by the
//!   current owner; below a subscription's newest run, a `pending` row never attempted is
//!   delivered, and every claim reads from after the cursor (`heads`), finding what can still
//!   be unfinished below it (rows attempted before: replays, retries) through the two partial
//!   indexes that hold only those;
//! - a read in id order ([`Queue::claim_tail_many`]) returns pending rows after an id and
//!   nothing at all while the subscription has a failed row waiting for a retry: it is for an
//!   owner holding every unfinished row up to that id, which orders keys itself.
//! - an instance owns all its subscriptions under one worker id, tied to a session-level
//!   advisory lock ([`SESSION_LOCK_NS`], `session_lock`) held on one connection: a subscription
//!   whose owner's lock is gone (the process died, so did its session) is taken over at once;
//!   the lease is the fallback for an owner whose session outlives its reach. Claims and records
//!   for many subscriptions go in one statement each ([`Queue::claim_many`], [`Queue::record_many`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::outbox::{OutboxError, Schema};

mod heads;
pub(crate) use heads::{cursor_id, cursor_sequence, run_may_cover};
use heads::{due_heads, unfinished};

/// A claimed delivery, ready to send.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub ordering_key: String,
    pub payload: String,
    /// Attempts made before this one.
    pub attempts: i32,
    /// The subscription's sequence number of this delivery (None: stored before version 4
    /// numbered them, which an upgrade does; kept optional for rows written by hand).
    pub sequence: Option<i64>,
    /// Never attempted (`last_attempt_at IS NULL`): only such a row's success may be recorded
    /// by the delivered cursor ([`Run`]); a row attempted before (a replay) is recorded on
    /// itself.
    pub fresh: bool,
}

/// A run of deliveries the delivered cursor records as one row (sql/015): every delivery of
/// the subscription numbered `first..=last` that had never been attempted was delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub first: i64,
    pub last: i64,
    pub http_status: i32,
    /// The last attempt of the run.
    pub attempted_at: DateTime<Utc>,
    /// The longest attempt of the run.
    pub duration_ms: i32,
}
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// Due rows, heads of their keys, oldest first.
    pub rows: Vec<Claimed>,
    /// Unfinished rows beyond the held ones, counted up to the want + 1: equal to `rows.len()`
    /// when the outbox holds nothing else for the subscription (nothing blocked, nothing
    /// waiting for a retry).
    pub unfinished: i64,
    /// The subscription's last sequence number in the same snapshot (0: none yet).
    pub last_sequence: i64,
    /// A read in id order ([`Queue::claim_tail_many`]) only: the subscription has failed
    /// deliveries waiting for a retry, so no rows were read (an id-order read would pass them
    /// and the rows of their keys behind them).
    pub has_retries: bool,
    /// The claimer owns the subscription (false: nothing was read, and nothing may be
    /// concluded from the empty answer).
    pub owned: bool,
}

impl Answer {
    /// The answer for a subscription the claimer does not own: nothing, and never "everything".
    pub fn not_owned() -> Answer {
        Answer {
            rows: Vec::new(),
            unfinished: -1,
            last_sequence: 0,
            has_retries: false,
            owned: false,
        }
    }

    /// Whether these rows are everything unfinished the subscription has besides what the
    /// claimer held.
    pub fn is_everything(&self) -> bool {
        self.unfinished == self.rows.len() as i64
    }
}

/// The new state of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewStatus {
    Delivered,
    Failed { retry_in: Duration },
    Dead,
}

/// One attempt's result, to be recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: i64,
    pub status: NewStatus,
    pub attempted_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub http_status: Option<i32>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: String,
    /// The delivery had no attempt before this one (its claimed `attempts` was 0).
    pub first_attempt: bool,
}

impl Recorded {
    /// A first attempt that succeeded: recorded by the lean statement, with no attempt row.
    fn first_success(&self) -> bool {
        self.first_attempt && self.status == NewStatus::Delivered
    }
}

/// The first key of walhook's session-level advisory locks (`pg_advisory_lock(NS, token)`); the
/// second is an instance's random token, stored with the subscriptions it owns. ASCII "WHK1".
pub const SESSION_LOCK_NS: i32 = 0x5748_4B31;

/// Up to this many subscriptions' wants go into one claim statement.
pub const CLAIM_BATCH: usize = 512;

/// One subscription's part of a batched claim.
#[derive(Debug, Clone)]
pub struct Want {
    pub subscription: String,
    pub limit: i64,
}

/// One subscription's part of a batched read in id order ([`Queue::claim_tail_many`]).
#[derive(Debug, Clone)]
pub struct TailWant {
    pub subscription: String,
    pub limit: i64,
    /// Pending rows with a greater id are read.
    pub after: i64,
}

/// Where a subscription's stored deliveries stand (see [`Queue::watermarks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub subscription: String,
    pub last_sequence: i64,
    pub replays: i64,
}

/// SQL for one outbox schema, prepared as text once.
#[derive(Debug, Clone)]
pub struct Queue {
    own: String,
    disown: String,
    claim: String,
    take_over: String,
    renew_all: String,
    disown_all: String,
    watermarks: String,
    claim_many: String,
    claim_tail_many: String,
    record_many: String,
    record_first_successes: String,
    record_runs: String,
}

impl Queue {
    pub fn new(schema: &Schema) -> Queue {
        let d = schema.table("deliveries");
        let a = schema.table("attempts");
        let o = schema.table("delivery_owners");
        let s = schema.table("subscriptions");
        let q = schema.table("sequences");
        let runs = schema.table("delivered_runs");
        // Sessions of this database holding a walhook lock: their owners are alive.
        let live = format!(
            "SELECT l.objid::bigint AS token FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.classid = {SESSION_LOCK_NS}::oid
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        );
        // A first-attempt success keeps its outcome on the delivery and writes no attempt
        // row (see sql/012); every other attempt gets one. Answers the ids written.
        //
        // Unfinished is said as `NOT IN ('delivered', 'dead')`, not `IN ('pending', 'failed')`:
        // the latter is the predicate of the unfinished rows' partial indexes, whose statistics
        // say almost empty right after a vacuum (everything was delivered). The planner then
        // scanned such an index as the outer side and the batch of results as the inner one,
        // once per unfinished row: minutes per record statement once a backlog formed, and a
        // backlog formed because records were slow (bench/sustained.sh). Now the only index on
        // the deliveries side is the primary key, probed once per result.
        let record_cte = |fence: &str| {
            format!(
                "WITH r AS (
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::timestamptz[],
                                          $5::int[], $6::int[], $7::text[], $8::text[], $9::text[],
                                          $10::text[])
                         AS r(id, status, retry_in, at, duration_ms, http_status, error_kind, error, body, sub)),
                 u AS (
                     UPDATE {d} d SET status = r.status, attempts = d.attempts + 1,
                         last_http_status = r.http_status, last_error = r.error,
                         last_attempt_at = r.at, last_duration_ms = r.duration_ms,
                         next_attempt_at = CASE WHEN r.status = 'failed'
                             THEN now() + r.retry_in * interval '1 second' ELSE d.next_attempt_at END,
                         finished_at = CASE WHEN r.status IN ('delivered', 'dead') THEN now() END
                     FROM r
                     WHERE d.id = r.id AND d.status NOT IN ('delivered', 'dead') AND {fence}
                     RETURNING d.id, d.attempts),
                 a AS (
                     INSERT INTO {a} (delivery_id, attempted_at, duration_ms, http_status, error_kind, response_body)
                     SELECT r.id, r.at, r.duration_ms, r.http_status, r.error_kind, r.body
                     FROM r JOIN u ON u.id = r.id
                     WHERE r.status <> 'delivered' OR u.attempts > 1)
                 SELECT id FROM u"
            )
        };
        Queue {
            take_over: format!(
                "WITH live AS ({live}),
                 moved AS (
                     UPDATE {o} o SET worker = $1, lease_until = now() + $2 * interval '1 millisecond',
                         session_lock = $3, session_pid = $4, acquired_at = now()
                     FROM {s} s
                     WHERE s.id = o.subscription_id AND s.active AND o.worker <> $1
                       AND (o.lease_until < now()
                            OR (o.session_lock IS NOT NULL
                                AND o.session_lock::bigint NOT IN (SELECT token FROM live)))
                     RETURNING o.subscription_id),
                 added AS (
                     INSERT INTO {o} (subscription_id, worker, lease_until, session_lock, session_pid)
                     SELECT s.id, $1, now() + $2 * interval '1 millisecond', $3, $4 FROM {s} s
                     WHERE s.active
                       AND NOT EXISTS (SELECT 1 FROM {o} o WHERE o.subscription_id = s.id)
                     ON CONFLICT (subscription_id) DO NOTHING
                     RETURNING subscription_id),
                 -- Ownership of a deleted or inactive subscription is nobody's business any
                 -- more: without this, its owner renewed the row until it restarted.
                 gone AS (
                     DELETE FROM {o} o
                     WHERE NOT EXISTS (SELECT 1 FROM {s} s WHERE s.id = o.subscription_id AND s.active))
                 SELECT subscription_id FROM moved UNION ALL SELECT subscription_id FROM added"
            ),
            renew_all: format!(
                "UPDATE {o} SET lease_until = now() + $2 * interval '1 millisecond',
                     session_lock = $3, session_pid = $4
                 WHERE worker = $1 RETURNING subscription_id"
            ),
            disown_all: format!("DELETE FROM {o} WHERE worker = $1"),
            watermarks: format!(
                "SELECT q.subscription_id, q.last_sequence, q.replays
                 FROM {q} q JOIN {o} o ON o.subscription_id = q.subscription_id
                 WHERE o.worker = $1"
            ),
            // Per want: its due rows (none: one row of NULLs), how many unfinished rows it has
            // beyond `held` (counted up to want + 1) and its last sequence number, all in one
            // snapshot, so a pump can tell that the outbox holds nothing it was not given.
            claim_many: format!(
                "SELECT w.sub, c.id, c.event_id, c.event, c.ordering_key, c.payload, c.attempts, c.sequence,
                        c.fresh, u.unfinished, q.last_sequence
                 FROM unnest($1::text[], $2::bigint[]) AS w(sub, want)
                 JOIN {o} o ON o.subscription_id = w.sub AND o.worker = $4 AND o.lease_until > now()
                 CROSS JOIN LATERAL (SELECT {after} AS after) cur
                 CROSS JOIN LATERAL (
                     SELECT count(*) AS unfinished FROM (
                         {unfinished}
                         LIMIT w.want + 1) x) u
                 LEFT JOIN {q} q ON q.subscription_id = w.sub
                 LEFT JOIN LATERAL ({heads}) c ON true",
                after = cursor_id(&d, &runs, "w.sub"),
                unfinished = unfinished(&d, "w.sub", "cur.after", "w.want + 1"),
                heads = due_heads(&d, "w.sub", "w.want", "cur.after")
            ),
            // Per want: the pending rows after its id, in id order, unless the subscription
            // has failed rows waiting for a retry (then none, and `has_retries`); and its last
            // sequence number, in one snapshot. The subscription is bounded by a range, not
            // an equality, on purpose: with `=`, the planner (generic plans included) walked
            // the primary key from `after` through every other subscription's rows, and a row
            // comparison walked `deliveries_sub_pending` from the subscription's first entry;
            // `>=` lets the index scan start at (subscription, after) and the primary key
            // cannot give the (subscription, id) order.
            claim_tail_many: format!(
                "SELECT w.sub, c.id, c.event_id, c.event, c.ordering_key, c.payload, c.attempts, c.sequence,
                        c.fresh, f.has_retries, q.last_sequence
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS w(sub, want, after)
                 JOIN {o} o ON o.subscription_id = w.sub AND o.worker = $4 AND o.lease_until > now()
                 LEFT JOIN {q} q ON q.subscription_id = w.sub
                 CROSS JOIN LATERAL (SELECT {after} AS after) cur
                 CROSS JOIN LATERAL (
                     SELECT EXISTS (SELECT 1 FROM {d} x
                                    WHERE x.subscription_id = w.sub AND x.status = 'failed')
                         OR EXISTS (SELECT 1 FROM {d} x
                                    WHERE x.subscription_id = w.sub AND x.status = 'pending'
                                      AND x.last_attempt_at IS NOT NULL) AS has_retries) f
                 LEFT JOIN LATERAL (
                     SELECT c.id, c.event_id, c.event, c.ordering_key, c.payload, c.attempts, c.sequence,
                            c.last_attempt_at IS NULL AS fresh
                     FROM {d} c
                     WHERE c.subscription_id >= w.sub AND c.subscription_id <= w.sub
                       AND c.status = 'pending' AND c.id > greatest(w.after, cur.after) AND NOT f.has_retries
                     ORDER BY c.subscription_id, c.id
                     LIMIT w.want) c ON true",
                after = cursor_id(&d, &runs, "w.sub"),
            ),
            record_many: record_cte(&format!(
                "EXISTS (SELECT 1 FROM {o} w WHERE w.subscription_id = r.sub AND w.worker = $11)"
            )),
            // Most results are first attempts that succeeded: they need four values each, no
            // retry arithmetic and no attempt row, and one plain UPDATE does them. bench/e2e.sh
            // measured the general statement at 28–33 µs of Postgres time per row; in a
            // scratch database this one took a quarter less per row for the same rows.
            // Unfinished is said as in `record_cte`, for the same reason.
            record_first_successes: format!(
                "UPDATE {d} d SET status = 'delivered', attempts = d.attempts + 1,
                     last_http_status = r.http_status, last_error = NULL,
                     last_attempt_at = r.at, last_duration_ms = r.duration_ms, finished_at = now()
                 FROM unnest($1::bigint[], $2::timestamptz[], $3::int[], $4::int[], $5::text[])
                     AS r(id, at, duration_ms, http_status, sub)
                 WHERE d.id = r.id AND d.status NOT IN ('delivered', 'dead')
                   AND EXISTS (SELECT 1 FROM {o} w WHERE w.subscription_id = r.sub AND w.worker = $6)
                 RETURNING d.id"
            ),
            // Runs of the delivered cursor (sql/015), each written only while `worker` owns
            // its subscription. A conflict is a run already written (its last sequence number
            // is the key): nothing to add.
            record_runs: format!(
                "INSERT INTO {runs} AS r (subscription_id, first_sequence, last_sequence, http_status,
                                          attempted_at, duration_ms)
                 SELECT n.sub, n.first, n.last, n.http, n.at, n.dur
                 FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::int[], $5::timestamptz[],
                             $6::int[]) AS n(sub, first, last, http, at, dur)
                 WHERE EXISTS (SELECT 1 FROM {o} w WHERE w.subscription_id = n.sub AND w.worker = $7)
                 ON CONFLICT DO NOTHING
                 RETURNING r.subscription_id, r.last_sequence"
            ),
            own: format!(
                "INSERT INTO {o} AS o (subscription_id, worker, lease_until)
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                 ON CONFLICT (subscription_id) DO UPDATE
                     SET worker = EXCLUDED.worker, lease_until = EXCLUDED.lease_until,
                         acquired_at = CASE WHEN o.worker = EXCLUDED.worker
                                            THEN o.acquired_at ELSE now() END
                     WHERE o.worker = EXCLUDED.worker OR o.lease_until < now()
                 RETURNING worker"
            ),
            disown: format!("DELETE FROM {o} WHERE subscription_id = $1 AND worker = $2"),
            claim: format!(
                "SELECT c.id, c.event_id, c.event, c.ordering_key, c.payload, c.attempts, c.sequence, c.fresh
                 FROM ({heads}) c
                 WHERE EXISTS (SELECT 1 FROM {o} w
                               WHERE w.subscription_id = $1 AND w.worker = $4
                                 AND w.lease_until > now())
                 ORDER BY c.next_attempt_at, c.id",
                heads = due_heads(&d, "$1", "$2", &format!("({})", cursor_id(&d, &runs, "$1")))
            ),
        }
    }

    /// Takes over, for `worker` whose session holds `pg_advisory_lock(SESSION_LOCK_NS, token)`,
    /// every active subscription nobody owns, whose owner's lease ran out, or whose owner's
    /// session is gone; returns their ids.
    pub async fn take_over(
        &self,
        client: &tokio_postgres::Client,
        worker: Uuid,
        lease: Duration,
        token: i32,
        pid: i32,
    ) -> Result<Vec<String>, OutboxError> {
        owned_ids(client, &self.take_over, worker, lease, token, pid).await
    }

    /// Renews every subscription `worker` owns for `lease`; returns their ids (one taken over
    /// after this instance's lease ran out is no longer among them).
    pub async fn renew_all(
        &self,
        client: &tokio_postgres::Client,
        worker: Uuid,
        lease: Duration,
        token: i32,
        pid: i32,
    ) -> Result<Vec<String>, OutboxError> {
        owned_ids(client, &self.renew_all, worker, lease, token, pid).await
    }

    /// Each subscription `worker` owns that has stored deliveries: its last sequence number and
    /// how many times rows of it were replayed (sql/013), read in one statement.
    pub async fn watermarks(
        &self,
        client: &tokio_postgres::Client,
        worker: Uuid,
    ) -> Result<Vec<Watermark>, OutboxError> {
        let rows = client.query(&self.watermarks, &[&worker]).await?;
        Ok(rows
            .iter()
            .map(|r| Watermark {
                subscription: r.get(0),
                last_sequence: r.get(1),
                replays: r.get(2),
            })
            .collect())
    }

    /// Gives up every subscription `worker` owns (shutdown), so others take over at once.
    pub async fn disown_all(
        &self,
        client: &tokio_postgres::Client,
        worker: Uuid,
    ) -> Result<u64, OutboxError> {
        Ok(client.execute(&self.disown_all, &[&worker]).await?)
    }

    /// Due deliveries of many subscriptions `worker` owns, in one statement: up to each want's
    /// limit, oldest first, leaving out `held` (every id the owner still holds); one answer per
    /// owned subscription (a subscription this worker does not own gets none).
    pub async fn claim_many(
        &self,
        client: &Client,
        wants: &[Want],
        held: &[i64],
        worker: Uuid,
    ) -> Result<HashMap<String, Answer>, OutboxError> {
        let subs: Vec<&str> = wants.iter().map(|w| w.subscription.as_str()).collect();
        let limits: Vec<i64> = wants.iter().map(|w| w.limit).collect();
        let stmt = client.prepare_cached(&self.claim_many).await?;
        let rows = client
            .query(&stmt, &[&subs, &limits, &held, &worker])
            .await?;
        let mut answers: HashMap<String, Answer> = HashMap::new();
        for r in &rows {
            let a = answers.entry(r.get(0)).or_insert_with(|| Answer {
                rows: Vec::new(),
                unfinished: r.get(9),
                last_sequence: r.get::<_, Option<i64>>(10).unwrap_or(0),
                has_retries: false,
                owned: true,
            });
            a.rows.extend(claimed_at(r, 1));
        }
        Ok(answers)
    }

    /// Pending deliveries of many subscriptions `worker` owns, each after its want's id, in id
    /// order, in one statement: for an owner that holds every unfinished delivery up to that
    /// id. Refused (`has_retries`, no rows) for a subscription with failed deliveries waiting.
    pub async fn claim_tail_many(
        &self,
        client: &Client,
        wants: &[TailWant],
        worker: Uuid,
    ) -> Result<HashMap<String, Answer>, OutboxError> {
        let subs: Vec<&str> = wants.iter().map(|w| w.subscription.as_str()).collect();
        let limits: Vec<i64> = wants.iter().map(|w| w.limit).collect();
        let after: Vec<i64> = wants.iter().map(|w| w.after).collect();
        let stmt = client.prepare_cached(&self.claim_tail_many).await?;
        let rows = client
            .query(&stmt, &[&subs, &limits, &after, &worker])
            .await?;
        let mut answers: HashMap<String, Answer> = HashMap::new();
        for r in &rows {
            let a = answers.entry(r.get(0)).or_insert_with(|| Answer {
                rows: Vec::new(),
                unfinished: -1,
                last_sequence: r.get::<_, Option<i64>>(10).unwrap_or(0),
                has_retries: r.get(9),
                owned: true,
            });
            a.rows.extend(claimed_at(r, 1));
        }
        Ok(answers)
    }

    /// Records results of many subscriptions in one statement, each only if `worker` still owns
    /// its subscription; returns the ids written.
    pub async fn record_many(
        &self,
        client: &Client,
        batch: &[(&str, &Recorded)],
        worker: Uuid,
    ) -> Result<Vec<i64>, OutboxError> {
        let (lean, general): (Vec<_>, Vec<_>) = batch.iter().partition(|(_, r)| r.first_success());
        let lean = Arrays::new(&lean);
        let general = Arrays::new(&general);
        let lean_params: [&(dyn ToSql + Sync); 6] = [
            &lean.ids, &lean.at, &lean.dur, &lean.http, &lean.subs, &worker,
        ];
        let general_params: [&(dyn ToSql + Sync); 11] = [
            &general.ids,
            &general.status,
            &general.retry_in,
            &general.at,
            &general.dur,
            &general.http,
            &general.kind,
            &general.err,
            &general.body,
            &general.subs,
            &worker,
        ];
        // Both statements go out together on the one connection (pipelined), not one after
        // the other.
        let (mut written, other) = futures_util::future::try_join(
            written_ids(
                client,
                &self.record_first_successes,
                &lean_params,
                lean.ids.is_empty(),
            ),
            written_ids(
                client,
                &self.record_many,
                &general_params,
                general.ids.is_empty(),
            ),
        )
        .await?;
        written.extend(other);
        Ok(written)
    }

    /// Writes runs of the delivered cursor for many subscriptions in one statement, each only
    /// while `worker` owns its subscription; returns the (subscription, last sequence) of each
    /// run written.
    pub async fn record_runs(
        &self,
        client: &Client,
        runs: &[(&str, &Run)],
        worker: Uuid,
    ) -> Result<Vec<(String, i64)>, OutboxError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let subs: Vec<&str> = runs.iter().map(|(s, _)| *s).collect();
        let first: Vec<i64> = runs.iter().map(|(_, r)| r.first).collect();
        let last: Vec<i64> = runs.iter().map(|(_, r)| r.last).collect();
        let http: Vec<i32> = runs.iter().map(|(_, r)| r.http_status).collect();
        let at: Vec<DateTime<Utc>> = runs.iter().map(|(_, r)| r.attempted_at).collect();
        let dur: Vec<i32> = runs.iter().map(|(_, r)| r.duration_ms).collect();
        let stmt = client.prepare_cached(&self.record_runs).await?;
        let rows = client
            .query(&stmt, &[&subs, &first, &last, &http, &at, &dur, &worker])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Takes or renews ownership of a subscription's deliveries for `lease`; false while another
    /// owner's lease is live.
    pub async fn own(
        &self,
        client: &Client,
        subscription: &str,
        worker: Uuid,
        lease: Duration,
    ) -> Result<bool, OutboxError> {
        let stmt = client.prepare_cached(&self.own).await?;
        let row = client
            .query_opt(
                &stmt,
                &[&subscription, &worker, &(lease.as_millis() as f64)],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Gives ownership up (shutdown, subscription stopped), so another pump takes over at once.
    pub async fn disown(
        &self,
        client: &Client,
        subscription: &str,
        worker: Uuid,
    ) -> Result<bool, OutboxError> {
        Ok(client
            .execute(&self.disown, &[&subscription, &worker])
            .await?
            > 0)
    }

    /// Up to `limit` due deliveries of a subscription `worker` owns, oldest first, leaving out
    /// the ids it still holds.
    pub async fn claim(
        &self,
        client: &Client,
        subscription: &str,
        limit: i64,
        held: &[i64],
        worker: Uuid,
    ) -> Result<Vec<Claimed>, OutboxError> {
        let stmt = client.prepare_cached(&self.claim).await?;
        let rows = client
            .query(&stmt, &[&subscription, &limit, &held, &worker])
            .await?;
        Ok(rows.iter().filter_map(|r| claimed_at(r, 0)).collect())
    }

    /// Records a batch of results; returns how many were written (none once `worker` lost
    /// ownership: the new owner sends those again).
    pub async fn record(
        &self,
        client: &Client,
        subscription: &str,
        batch: &[Recorded],
        worker: Uuid,
    ) -> Result<u64, OutboxError> {
        if batch.is_empty() {
            return Ok(0);
        }
        // The same statement as for many subscriptions: its fence checks each row's
        // subscription, here always this one.
        let rows: Vec<(&str, &Recorded)> = batch.iter().map(|r| (subscription, r)).collect();
        Ok(self.record_many(client, &rows, worker).await?.len() as u64)
    }
}

/// Runs one of the record statements; the ids it wrote (none without running it when `empty`).
async fn written_ids(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    empty: bool,
) -> Result<Vec<i64>, OutboxError> {
    if empty {
        return Ok(Vec::new());
    }
    let stmt = client.prepare_cached(sql).await?;
    let rows = client.query(&stmt, params).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A batch of results as the statements' parallel arrays.
struct Arrays<'a> {
    subs: Vec<&'a str>,
    ids: Vec<i64>,
    status: Vec<&'static str>,
    retry_in: Vec<f64>,
    at: Vec<DateTime<Utc>>,
    dur: Vec<i32>,
    http: Vec<Option<i32>>,
    kind: Vec<Option<&'static str>>,
    err: Vec<Option<&'a str>>,
    body: Vec<&'a str>,
}

impl<'a> Arrays<'a> {
    fn new(rows: &[&(&'a str, &'a Recorded)]) -> Arrays<'a> {
        let batch = || rows.iter().map(|(_, r)| *r);
        Arrays {
            subs: rows.iter().map(|(s, _)| *s).collect(),
            ids: batch().map(|r| r.id).collect(),
            status: batch()
                .map(|r| match r.status {
                    NewStatus::Delivered => "delivered",
                    NewStatus::Failed { .. } => "failed",
                    NewStatus::Dead => "dead",
                })
                .collect(),
            retry_in: batch()
                .map(|r| match r.status {
                    NewStatus::Failed { retry_in } => retry_in.as_secs_f64(),
                    _ => 0.0,
                })
                .collect(),
            at: batch().map(|r| r.attempted_at).collect(),
            dur: batch().map(|r| r.duration_ms).collect(),
            http: batch().map(|r| r.http_status).collect(),
            kind: batch().map(|r| r.error_kind).collect(),
            err: batch().map(|r| r.error.as_deref()).collect(),
            body: batch().map(|r| r.response_body.as_str()).collect(),
        }
    }
}

/// 410 Gone: the subscription stops receiving (routing and delivery) until someone reactivates it.
pub async fn deactivate(
    client: &Client,
    schema: &Schema,
    subscription: &str,
    reason: &str,
) -> Result<bool, OutboxError> {
    super::subscriptions::deactivate(&***client, schema, subscription, reason).await
}

/// Runs one of the ownership statements (`$1` worker, `$2` lease in ms, `$3` token, `$4` pid)
/// and returns the subscription ids it answers.
async fn owned_ids(
    client: &tokio_postgres::Client,
    statement: &str,
    worker: Uuid,
    lease: Duration,
    token: i32,
    pid: i32,
) -> Result<Vec<String>, OutboxError> {
    let rows = client
        .query(
            statement,
            &[&worker, &(lease.as_millis() as f64), &token, &pid],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Tries to take this session's ownership lock `(SESSION_LOCK_NS, token)`; the backend pid
/// when taken, None when another live session holds that token.
pub async fn try_session_lock(
    client: &tokio_postgres::Client,
    token: i32,
) -> Result<Option<i32>, OutboxError> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2), pg_backend_pid()",
            &[&SESSION_LOCK_NS, &token],
        )
        .await?;
    Ok(row.get::<_, bool>(0).then(|| row.get(1)))
}

/// The claimed row whose eight columns start at `first` (none: a want's row of NULLs).
fn claimed_at(r: &tokio_postgres::Row, first: usize) -> Option<Claimed> {
    Some(Claimed {
        id: r.get::<_, Option<i64>>(first)?,
        event_id: r.get(first + 1),
        event: r.get(first + 2),
        ordering_key: r.get(first + 3),
        payload: r.get(first + 4),
        attempts: r.get(first + 5),
        sequence: r.get(first + 6),
        fresh: r.get(first + 7),
    })
}
