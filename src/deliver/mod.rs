//! Delivery: claim due outbox rows, sign, POST, record the attempt, retry or dead-letter.
//!
//! Guarantees (ARCHITECTURE.md invariant 4):
//! - at-least-once: a delivery is finished only after a 2xx was received or its last attempt
//!   failed (dead letter); a worker that dies loses only its ownership lease, and another takes
//!   its subscriptions over;
//! - the same delivery is never in flight twice: one pump owns a subscription at a time (a lease
//!   per subscription), claims only while its lease is live, and only the owner records results;
//! - per (subscription, primary key), deliveries go out in commit order: only the oldest
//!   unfinished delivery of a key can be claimed;
//! - a slow or dead endpoint costs only its own subscription's in-flight slots.

pub mod egress;
pub mod format;
pub mod http;
pub mod policy;
pub mod sign;
pub mod worker;
