//! `walhook check`: a read-only report on config and database readiness.
//!
//! Guarantees: changes nothing in the database; every problem line says what to do; the exit
//! status is non-zero exactly when a blocking problem was found.

use std::fmt;

use tokio_postgres::Client;

use crate::config::Config;
use crate::pg::tls;
use crate::route::Router;
use crate::source::fidelity::deviations;
use crate::source::setup::{check_manageable, describe_tables, slot_state};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Default)]
pub struct Report {
    pub lines: Vec<(Level, String)>,
}

impl Report {
    fn push(&mut self, level: Level, msg: impl Into<String>) {
        self.lines.push((level, msg.into()));
    }
    pub fn blocking(&self) -> usize {
        self.lines.iter().filter(|(l, _)| *l == Level::Fail).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (level, msg) in &self.lines {
            let tag = match level {
                Level::Ok => "ok  ",
                Level::Info => "info",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
            };
            writeln!(f, "  {tag}  {msg}")?;
        }
        match self.blocking() {
            0 => writeln!(f, "no blocking problems"),
            n => writeln!(f, "{n} blocking problem(s)"),
        }
    }
}

pub async fn run(config: &Config) -> Report {
    let mut r = Report::default();
    r.push(
        Level::Ok,
        format!("config: {} subscription(s)", config.subscriptions().len()),
    );
    let (subs, api) = super::all_subscriptions(config).await;
    match api {
        Ok(n) => r.push(Level::Ok, format!("api: {n} subscription(s) in the outbox")),
        // Before the first `walhook run` (or `migrate`) there is no outbox, and so no API
        // subscription either.
        Err(crate::outbox::OutboxError::Sql(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            r.push(Level::Info, "api: no outbox yet (walhook run creates it)")
        }
        Err(e) => r.push(
            Level::Warn,
            format!("api: subscriptions created through the API not checked: {e}"),
        ),
    }
    let router = Router::with_project(config, subs);
    let client = match tls::connect_sql(&config.pg_config()).await {
        Ok(c) => c,
        Err(e) => {
            r.push(Level::Fail, format!("cannot connect to source.url: {e}"));
            return r;
        }
    };
    if let Err(e) = server_checks(&client, &mut r).await {
        r.push(Level::Fail, format!("querying server settings failed: {e}"));
    }
    table_checks(&client, config, &router, &mut r).await;
    publication_checks(&client, config, &mut r).await;
    slot_checks(&client, config, &mut r).await;
    slot_health_checks(&client, config, &mut r).await;
    r
}

/// A lost, missing or moved slot blocks (changes after the checkpoint are missing); retained
/// WAL past `[source] slot_wal_warn_fraction` of the cap warns.
async fn slot_health_checks(client: &Client, config: &Config, r: &mut Report) {
    let Ok(outbox) = crate::outbox::connect(config).await else {
        return; // reported by the api line above
    };
    let schema = crate::outbox::Schema::new(config.outbox.schema.as_str());
    match crate::ingest::slot::diagnose(client, &outbox, &schema, config.source.slot.as_str()).await
    {
        Ok(d) if d.report.health.is_broken() => {
            // `walhook run` does not create a slot that is missing behind a checkpoint.
            r.lines
                .retain(|(_, m)| !m.ends_with("does not exist yet; walhook run creates it"));
            r.push(Level::Fail, d.report.message())
        }
        Ok(d) => {
            if let Some(f) = d.report.retained_fraction() {
                let level = if f >= config.source.slot_wal_warn_fraction {
                    Level::Warn
                } else {
                    Level::Ok
                };
                r.push(
                    level,
                    format!(
                        "slot {}: retains {:.0}% of max_slot_wal_keep_size ({}); PostgreSQL \
                         invalidates it at 100%",
                        config.source.slot.as_str(),
                        f * 100.0,
                        human_bytes(d.report.cap_bytes.unwrap_or(0))
                    ),
                );
            }
        }
        // Before the first `walhook run` there is no outbox to compare the slot with.
        Err(crate::ingest::IngestError::Outbox(crate::outbox::OutboxError::Sql(e)))
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
        Err(e) => r.push(Level::Warn, format!("slot health not checked: {e}")),
    }
}

async fn server_checks(client: &Client, r: &mut Report) -> Result<(), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_setting('wal_level'), current_user::text,
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
                    current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    current_setting('max_wal_senders')::int",
            &[],
        )
        .await?;
    let (num, version, wal_level, user): (i32, String, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if num >= 140000 {
        r.push(Level::Ok, format!("server version {version} (14 or newer)"));
    } else {
        r.push(
            Level::Fail,
            format!("server version {version}: walhook needs PostgreSQL 14 or newer"),
        );
    }
    if wal_level == "logical" {
        r.push(Level::Ok, "wal_level = logical");
    } else {
        r.push(
            Level::Fail,
            format!("wal_level = {wal_level}: run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL"),
        );
    }
    let can_replicate: Option<bool> = row.get(4);
    if can_replicate == Some(true) {
        r.push(Level::Ok, format!("role {user} may use replication"));
    } else {
        r.push(Level::Fail, format!("role {user} lacks the REPLICATION attribute: run ALTER ROLE \"{user}\" REPLICATION;"));
    }
    let (max_slots, used, senders): (i32, i32, i32) = (row.get(5), row.get(6), row.get(7));
    if used >= max_slots {
        r.push(Level::Warn, format!("all {max_slots} replication slots are in use; raise max_replication_slots if walhook's slot does not exist yet"));
    } else {
        r.push(
            Level::Ok,
            format!("replication slots: {used} of {max_slots} used; max_wal_senders = {senders}"),
        );
    }
    Ok(())
}

async fn table_checks(client: &Client, config: &Config, router: &Router, r: &mut Report) {
    let manage = config.source.manage_replica_identity;
    for t in router.tables() {
        let info = match describe_tables(client, std::slice::from_ref(&t)).await {
            Ok(mut v) => v.remove(0),
            Err(e) => {
                r.push(Level::Fail, e.to_string());
                continue;
            }
        };
        if let Err(e) = router.validate_table(&t, &info.columns, &info.unpublished_generated) {
            r.push(Level::Fail, e.to_string());
            continue;
        }
        // Ownership: what `walhook run` would be refused (it checks the same before changing
        // anything).
        let publication = config.source.publication.as_str();
        if let Err(e) = check_manageable(client, std::slice::from_ref(&info), publication).await {
            r.push(Level::Fail, e.to_string());
            continue;
        }
        let pk = if info.primary_key.is_empty() {
            "no primary key (deliveries of this table are ordered table-wide)".to_string()
        } else {
            format!("primary key ({})", info.primary_key.join(", "))
        };
        match deviations(client, info.oid).await {
            Ok(ds) if ds.is_empty() => r.push(
                Level::Ok,
                format!("table {t}: every column's value in record equals to_jsonb(row)"),
            ),
            Ok(ds) => {
                for d in ds {
                    r.push(Level::Warn, d.describe(&t));
                }
            }
            Err(e) => r.push(
                Level::Warn,
                format!("table {t}: column types not checked against to_jsonb: {e}"),
            ),
        }
        match (info.replica_identity, manage) {
            ('f', _) => r.push(Level::Ok, format!("table {t}: {} columns, {pk}, REPLICA IDENTITY FULL", info.columns.len())),
            (_, true) => r.push(
                Level::Info,
                format!("table {t}: {pk}, REPLICA IDENTITY {}: walhook will set it to FULL at start", info.replica_identity_name()),
            ),
            (_, false) => r.push(
                Level::Fail,
                format!(
                    "table {t}: {pk}, REPLICA IDENTITY {}; with manage_replica_identity = false run ALTER TABLE {} REPLICA IDENTITY FULL;",
                    info.replica_identity_name(),
                    t.quoted()
                ),
            ),
        }
    }
}

/// `walhook run` refuses a FOR ALL TABLES publication with its name (it manages the table list).
async fn publication_checks(client: &Client, config: &Config, r: &mut Report) {
    let publication = config.source.publication.as_str();
    let row = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await;
    match row {
        Ok(Some(row)) if row.get::<_, bool>(0) => r.push(
            Level::Fail,
            format!(
                "publication {publication} is FOR ALL TABLES; walhook manages its own table list. \
                 Set source.publication to a name walhook can own"
            ),
        ),
        Ok(Some(_)) => r.push(Level::Ok, format!("publication {publication} exists")),
        Ok(None) => {
            // CREATE PUBLICATION needs CREATE on the database.
            let can = client
                .query_one(
                    "SELECT has_database_privilege(current_database(), 'CREATE'),
                            current_user::text, current_database()::text",
                    &[],
                )
                .await;
            match can {
                Ok(row) if !row.get::<_, bool>(0) => {
                    let (user, db): (String, String) = (row.get(1), row.get(2));
                    r.push(
                        Level::Fail,
                        format!(
                            "publication {publication} does not exist yet and role {user} may not \
                             create it: run GRANT CREATE ON DATABASE {} TO {};",
                            crate::model::quote_ident(&db),
                            crate::model::quote_ident(&user)
                        ),
                    )
                }
                _ => r.push(
                    Level::Info,
                    format!("publication {publication} does not exist yet; walhook run creates it"),
                ),
            }
        }
        Err(e) => r.push(
            Level::Fail,
            format!("reading publication {publication} failed: {e}"),
        ),
    }
}

async fn slot_checks(client: &Client, config: &Config, r: &mut Report) {
    let slot = config.source.slot.as_str();
    match slot_state(client, slot).await {
        Ok(None) => {
            // walhook run could not create its slot: that blocks.
            let full = client
                .query_one(
                    "SELECT count(*)::int >= current_setting('max_replication_slots')::int
                     FROM pg_replication_slots",
                    &[],
                )
                .await
                .map(|row| row.get::<_, bool>(0));
            if matches!(full, Ok(true)) {
                r.push(
                    Level::Fail,
                    format!(
                        "slot {slot} does not exist yet and no replication slot is free: \
                         raise max_replication_slots (restart PostgreSQL) or drop an unused slot"
                    ),
                );
            } else {
                r.push(
                    Level::Info,
                    format!("slot {slot} does not exist yet; walhook run creates it"),
                );
            }
        }
        // Reported by the health check below, with what to do.
        Ok(Some(s)) if s.is_lost() => {}
        Ok(Some(s)) => {
            let retained = s.retained_bytes.unwrap_or(0);
            let level = if retained > 1 << 30 {
                Level::Warn
            } else {
                Level::Ok
            };
            r.push(
                level,
                format!(
                    "slot {slot}: {}, confirmed up to {}, retains {} of WAL",
                    if s.active { "active" } else { "inactive" },
                    s.confirmed_flush.map_or("-".to_string(), |l| l.to_string()),
                    human_bytes(retained)
                ),
            );
        }
        Err(e) => r.push(Level::Fail, e.to_string()),
    }
}

fn human_bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}
