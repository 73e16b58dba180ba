//! Delivery: claim due outbox rows, sign, POST, record the attempt, retry or dead-letter.
//!
//! Guarantees (ARCHITECTURE.md invariant 4):
//! - at-least-once: a delivery is finished only after a 2xx was received or its last attempt
//!   failed (dead letter); an instance that dies loses its ownership session, and another (or
//!   the restarted one) takes its subscriptions over within a poll interval;
//! - the same delivery is never in flight twice: one instance owns a subscription at a time (a
//!   live session lock, a lease as fallback), claims only while it owns it, and only the owner
//!   records results;
//! - per (subscription, primary key), deliveries go out in commit order: only the oldest
//!   unfinished delivery of a key can be claimed;
//! - a slow or dead endpoint costs only its own subscription's in-flight slots.

pub mod batch;
pub mod egress;
pub mod format;
pub mod http;
pub mod owner;
pub mod policy;
pub mod sign;
pub mod worker;
