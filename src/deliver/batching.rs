//! Opt-in batching (subscription option `batch = { max_events, max_wait }`): when a pump sends,
//! and how one batched request is built and answered. The pump ([`super::worker`]) keeps its
//! claims, handoff, records, breaker and rate limit as for single sends; a request simply
//! carries several rows.
//!
//! Guarantees:
//! - a batch holds at most `max_events` rows and goes out as soon as that many are ready, or
//!   once the oldest ready row has waited `max_wait` (a half-open breaker's probe goes at once);
//! - order per key: rows come from [`Lanes::next_ready_run`], so a key has one request in flight
//!   at a time, and the rows of a key inside a batch are consecutive in commit order; the next
//!   rows of the key go in a later batch, after this one succeeded. Inside the body, events are
//!   in commit order (subscription sequence number);
//! - a batch succeeds or fails whole: every row in it gets the request's outcome as its attempt
//!   (same status, error, duration), so none is delivered unless the receiver accepted all.
//!   Only a row whose own body cannot be formatted (a template that fails on it) fails alone,
//!   and with it the rows of its key after it in the batch (they must not overtake it);
//! - without `batch`, nothing here runs.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::http::{AttemptOutcome, ErrorKind, HttpSender};
use super::lanes::Lanes;
use super::request::{self, BatchItem, Event};
use crate::model::Batch;
use crate::outbox::queue::Claimed;
use crate::outbox::subscriptions::Stored;

/// Rows a batching pump may hold (claimed or handed over, not yet recorded), at most.
pub(super) const MAX_HELD: usize = 16_384;

/// When the rows ready now should go out.
#[derive(Debug, Default)]
pub(super) struct Gatherer {
    /// Since when the oldest ready row has been waiting for its batch to fill.
    since: Option<Instant>,
}

impl Gatherer {
    /// None: send a batch now (or nothing is ready); Some(t): wait until `t` for more rows.
    pub(super) fn wait(
        &mut self,
        lanes: &Lanes,
        batch: Batch,
        flush: bool,
        now: Instant,
    ) -> Option<Instant> {
        let max = batch.max_events as usize;
        let ready = lanes.sendable_len(max);
        if ready == 0 {
            self.since = None;
            return None;
        }
        let due = *self.since.get_or_insert(now) + batch.max_wait;
        (!flush && ready < max && now < due).then_some(due)
    }

    /// Takes the next batch (up to `max_events` rows, in commit order).
    pub(super) fn take(&mut self, lanes: &mut Lanes, batch: Batch) -> Vec<Claimed> {
        let max = batch.max_events as usize;
        let mut rows = Vec::with_capacity(max.min(lanes.ready_len() * 2));
        while rows.len() < max {
            match lanes.next_ready_run(max - rows.len()) {
                Some(run) => rows.extend(run),
                None => break,
            }
        }
        rows.sort_by_key(|r| (r.sequence, r.id));
        // What stays ready arrived after `since`: it keeps waiting from there, never longer.
        if lanes.ready_len() == 0 {
            self.since = None;
        }
        rows
    }
}

/// One batched request for `rows` (in order); one outcome per row, in the same order.
pub(super) async fn send(
    sender: &HttpSender,
    sub: &Stored,
    rows: &[Claimed],
    now: DateTime<Utc>,
    traceparent: Option<String>,
) -> Vec<AttemptOutcome> {
    let mut outcomes: Vec<Option<AttemptOutcome>> = vec![None; rows.len()];
    let mut bodies: Vec<(usize, Vec<u8>)> = Vec::with_capacity(rows.len());
    let mut broken_keys: HashSet<&str> = HashSet::new();
    for (i, c) in rows.iter().enumerate() {
        let keyed = !c.ordering_key.is_empty();
        if keyed && broken_keys.contains(c.ordering_key.as_str()) {
            outcomes[i] = Some(failed(
                "not sent: an earlier event of its key in the same batch could not be formatted"
                    .into(),
            ));
            continue;
        }
        let event = Event {
            payload: &c.payload,
            ordering_key: &c.ordering_key,
            event_id: &c.event_id,
            event: &c.event,
            sequence: c.sequence,
        };
        match request::render(sub, &event) {
            Ok(body) => bodies.push((i, body)),
            Err(e) => {
                if keyed {
                    broken_keys.insert(&c.ordering_key);
                }
                outcomes[i] = Some(failed(e));
            }
        }
    }
    if !bodies.is_empty() {
        let items: Vec<BatchItem> = bodies
            .iter()
            .map(|(i, body)| BatchItem {
                event_id: &rows[*i].event_id,
                body,
            })
            .collect();
        let outcome = match request::build_batch(sub, &items, now) {
            Ok((mut headers, body)) => {
                if let Some(tp) = traceparent {
                    headers.push(("traceparent".into(), tp));
                }
                sender.post(&sub.url, &headers, Bytes::from(body)).await
            }
            Err(e) => failed(e),
        };
        for (i, _) in &bodies {
            outcomes[*i] = Some(outcome.clone());
        }
    }
    outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| failed("internal error: no outcome".into())))
        .collect()
}

fn failed(error: String) -> AttemptOutcome {
    AttemptOutcome {
        http_status: None,
        error_kind: Some(ErrorKind::Other),
        error: Some(error),
        response_body: String::new(),
        retry_after: None,
        duration: Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: &str) -> Claimed {
        Claimed {
            id,
            event_id: format!("evt_{id}"),
            event: "INSERT".into(),
            ordering_key: key.into(),
            payload: "{}".into(),
            attempts: 0,
            sequence: Some(id),
            fresh: true,
        }
    }

    #[test]
    fn a_batch_waits_for_max_events_or_max_wait() {
        let batch = Batch::new(3, Duration::from_millis(50)).unwrap();
        let mut g = Gatherer::default();
        let mut l = Lanes::default();
        let t0 = Instant::now();
        assert_eq!(g.wait(&l, batch, false, t0), None, "nothing ready");
        l.admit(row(1, "[1]"));
        let due = t0 + Duration::from_millis(50);
        assert_eq!(g.wait(&l, batch, false, t0), Some(due));
        l.admit(row(2, "[2]"));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            g.wait(&l, batch, false, t1),
            Some(due),
            "the oldest row counts"
        );
        assert_eq!(g.wait(&l, batch, true, t1), None, "a probe goes at once");
        assert_eq!(g.wait(&l, batch, false, due), None, "max_wait reached");
        l.admit(row(3, "[1]"));
        l.admit(row(4, "[4]"));
        // 1 and 3 (key [1]), 2 and 4: four sendable, a full batch now.
        assert_eq!(g.wait(&l, batch, false, t1), None);
        let ids: Vec<i64> = g.take(&mut l, batch).iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2, 3], "commit order, a key's rows consecutive");
        assert_eq!(g.wait(&l, batch, false, t1), Some(due), "4 keeps its wait");
        assert_eq!(g.take(&mut l, batch).len(), 1);
        assert_eq!(g.wait(&l, batch, false, t1), None);
        let later = t1 + Duration::from_millis(5);
        l.admit(row(5, "[5]"));
        assert_eq!(
            g.wait(&l, batch, false, later),
            Some(later + Duration::from_millis(50)),
            "a new batch starts its own wait"
        );
    }
}
