//! The claim statements' reading parts, as SQL text: where a subscription's unfinished rows
//! start (its delivered cursor), how many there are, and which are the heads of their keys.
//!
//! Guarantees: every part walks one index from where its rows start, so a claim's cost follows
//! the unfinished rows, not the delivered history that stays `pending` on disk behind the cursor
//! (sql/015); a claimed row has no older row of its key that was attempted and is unfinished
//! (sql/018: the order among rows never attempted is kept by the pump, not by the claim).

/// The id of the subscription's newest row at or below its delivered cursor (sql/015), 0 when
/// there is none: a SQL expression. Within a subscription, id order is sequence order (sql/014),
/// so "after this id" is "after the cursor", and the indexes in (subscription, id) order start
/// there instead of walking the rows the cursor delivered, which stay `pending` on disk.
pub(crate) fn cursor_id(d: &str, runs: &str, sub: &str) -> String {
    format!(
        "coalesce((SELECT x.id FROM {d} x
                   WHERE x.subscription_id = {sub} AND x.sequence <= {}
                   ORDER BY x.subscription_id, x.sequence DESC LIMIT 1), 0)",
        cursor_sequence(runs, sub)
    )
}

/// A row a run of the delivered cursor covers when its number is within the run (sql/015):
/// `pending` and never attempted. A SQL condition; `of` is the table's alias with its dot
/// (`"d."`), or empty.
pub(crate) fn run_may_cover(of: &str) -> String {
    format!("{of}status = 'pending' AND {of}last_attempt_at IS NULL")
}

/// The subscription's delivered cursor (sql/015): the last sequence number of its newest run,
/// NULL when it has none (so `sequence <= cursor` holds for no row). A SQL expression.
pub(crate) fn cursor_sequence(runs: &str, sub: &str) -> String {
    format!(
        "(SELECT c.last_sequence FROM {runs} c WHERE c.subscription_id = {sub}
          ORDER BY c.last_sequence DESC LIMIT 1)"
    )
}

/// The subscription's unfinished rows not in `$3` (held), up to `limit` of each kind (a SQL
/// query of one column): pending after the cursor's id `after`, failed, and pending at or below
/// it (attempted before: replays). Three index walks that each start where their rows are.
pub(super) fn unfinished(d: &str, sub: &str, after: &str, limit: &str) -> String {
    let branch = |cond: &str| {
        format!(
            "(SELECT 1 FROM {d} x
              WHERE x.subscription_id >= {sub} AND x.subscription_id <= {sub} AND {cond}
                AND x.id NOT IN (SELECT h FROM unnest($3::bigint[]) h)
              LIMIT {limit})"
        )
    };
    format!(
        "{} UNION ALL {} UNION ALL {}",
        branch(&format!("x.status = 'pending' AND x.id > {after}")),
        branch("x.status = 'failed'"),
        branch(&format!(
            "x.status = 'pending' AND x.last_attempt_at IS NOT NULL AND x.id <= {after}"
        )),
    )
}

/// Due rows of one subscription (`sub`, `limit` and `after`, the cursor's id, are SQL
/// expressions), each the head of its key among the rows attempted before, leaving out `$3`
/// (the ids the owner holds: a NOT IN subquery, which Postgres hashes once per statement;
/// `<> ALL($3)` compared each row with every held id in generic plans, 65 ms for 4,096 held
/// ids), oldest due first, with `next_attempt_at` for the caller's ORDER BY. Retries come from
/// `deliveries_sub_retry` in due order, fresh rows from `deliveries_sub_pending` in id order
/// after the cursor, and replays at or below the cursor from `deliveries_again_pending`, each
/// branch written in its index's order so that the planner walks the index and stops at the
/// limit.
///
/// A row is left out when an older row of its key was attempted and is unfinished (failed,
/// or a replay waiting): that row goes first. Order among rows never attempted is not the
/// claim's business (sql/018): they come in id order, which is commit order, and the pump's
/// lanes keep each key's rows in the order they came; the pump does not claim while a failure
/// is not recorded, and leaves to the outbox the rows an answer holds of a key that failed
/// while it ran (`deliver::worker`), so a row never passes an older row of its key that failed.
pub(super) fn due_heads(d: &str, sub: &str, limit: &str, after: &str) -> String {
    // Written as ORDER BY ... LIMIT 1 in `deliveries_again_key`'s order so that the planner
    // takes that index even before the table has statistics; a NOT EXISTS (... o.id < c.id)
    // was planned on another index and scanned the whole backlog per candidate.
    let head = format!(
        "(c.ordering_key = ''
          OR coalesce((SELECT k.id FROM {d} k
                       WHERE k.subscription_id = c.subscription_id AND k.ordering_key = c.ordering_key
                         AND k.status IN ('pending', 'failed') AND k.last_attempt_at IS NOT NULL
                       ORDER BY k.subscription_id, k.ordering_key, k.id
                       LIMIT 1), c.id) >= c.id)"
    );
    // The subscription as a range, not an equality: see `claim_tail_many` (with `=`, the
    // pending branch walked the primary key through the whole table, ~1 s on a 300k backlog).
    let branch = |cond: &str, order: &str| {
        format!(
            "(SELECT c.id, c.event_id, c.event, c.ordering_key, c.payload, c.attempts, c.sequence,
                     c.last_attempt_at IS NULL AS fresh, c.next_attempt_at
              FROM {d} c
              WHERE c.subscription_id >= {sub} AND c.subscription_id <= {sub} AND {cond}
                AND c.next_attempt_at <= now() AND c.id NOT IN (SELECT h FROM unnest($3::bigint[]) h) AND {head}
              ORDER BY {order}
              LIMIT {limit})"
        )
    };
    // The rows after the cursor must reach the pump as a prefix of their id order, whatever
    // the final LIMIT cuts: they are sorted by the least due time of themselves and every
    // later row (the same as their own while due times follow ids, as the times of the
    // transactions that stored them do, but a clock stepped back cannot reorder them).
    let after_cursor = format!(
        "(SELECT f.id, f.event_id, f.event, f.ordering_key, f.payload, f.attempts, f.sequence,
                 f.fresh, min(f.next_attempt_at) OVER (ORDER BY f.id DESC) AS next_attempt_at
          FROM {} f)",
        branch(
            &format!("c.status = 'pending' AND c.id > {after}"),
            "c.subscription_id, c.id"
        )
    );
    format!(
        "SELECT a.* FROM ({} UNION ALL {after_cursor} UNION ALL {}) a ORDER BY a.next_attempt_at, a.id LIMIT {limit}",
        branch("c.status = 'failed'", "c.subscription_id, c.next_attempt_at, c.id"),
        branch(
            &format!("c.status = 'pending' AND c.last_attempt_at IS NOT NULL AND c.id <= {after}"),
            "c.subscription_id, c.id"
        ),
    )
}
