//! The subcommands other than `run` (which is `app.rs`): one file each, called by the
//! binary's argument parsing.
//!
//! Guarantees: each reads the same config.toml as `run` and the same outbox, through the same
//! layers (`outbox/` for SQL, `api/` for the views and test sends), so the CLI and the API can
//! never disagree.

pub mod backfill;
pub mod check;
pub mod deliveries;
pub mod slot;
pub mod tail;

use crate::config::Config;
use crate::model::{Origin, Subscription};
use crate::outbox::{self, subscriptions, Schema};

/// config.toml's subscriptions plus those created through the API (read from the outbox), so
/// that `tail` and `check` see what `run` routes. When the outbox cannot be read (not migrated
/// yet, unreachable), the config's alone, with the reason.
pub async fn all_subscriptions(
    config: &Config,
) -> (Vec<Subscription>, Result<usize, outbox::OutboxError>) {
    let mut subs: Vec<Subscription> = config.subscriptions().cloned().collect();
    let api = async {
        let client = outbox::connect(config).await?;
        let stored =
            subscriptions::load_all(&client, &Schema::new(config.outbox.schema.as_str())).await?;
        Ok::<_, outbox::OutboxError>(stored)
    }
    .await;
    match api {
        Ok(stored) => {
            let api: Vec<Subscription> = stored
                .into_iter()
                .filter(|s| s.origin == Origin::Api)
                .map(|s| s.sub)
                .collect();
            let n = api.len();
            subs.extend(api);
            (subs, Ok(n))
        }
        Err(e) => (subs, Err(e)),
    }
}
