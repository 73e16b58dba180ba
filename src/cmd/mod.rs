//! The subcommands other than `run` (which is `app.rs`): one file each, called by the
//! binary's argument parsing.
//!
//! Guarantees: each reads the same config.toml as `run` and the same outbox, through the same
//! layers (`outbox/` for SQL, `api/` for the views and test sends), so the CLI and the API can
//! never disagree.

pub mod check;
pub mod deliveries;
pub mod tail;
