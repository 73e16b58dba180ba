//! walhook's integration tests, in one binary (one link of the crate) with one module per area.
//!
//! Every test runs against a real Postgres (a fresh database on the shared throw-away server, or
//! its own server when it restarts or measures one) and delivers only to receivers it starts on
//! loopback, or runs with delivery off: `support` refuses any subscription URL off loopback.

mod support;

mod api;
mod backfill;
mod backfill_option;
mod backfill_pg_restart;
mod backfill_values;
mod backfill_wait;
mod backlog;
mod batching;
mod cdc;
mod cli;
mod config_example;
mod console;
mod console_backfills;
mod cursor;
mod delivery;
mod delivery_crash;
mod delivery_owners;
mod demo;
mod durability;
mod egress_http;
mod engine;
mod half_open;
mod harness;
mod host;
mod insecure_auth;
mod options;
mod outbox;
mod pgoutput_real;
mod promises;
mod receivers;
mod replication_conn;
mod signatures;
mod slot_recovery;
mod telemetry;
mod terminate;
mod tls;
mod values_catalog;
mod values_to_jsonb;
