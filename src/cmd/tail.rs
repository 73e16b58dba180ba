//! `walhook tail`: print, as JSON lines, what each subscription would receive, live.
//!
//! Guarantees: uses a temporary slot (dropped by Postgres when the connection ends), so the
//! daemon's slot is untouched; only adds tables to the publication, never removes any; each
//! transaction's lines are flushed to stdout as soon as its commit is decoded.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::model::change::RowChange;
use crate::model::Lsn;
use crate::pg::tls;
use crate::route::{Routed, Router};
use crate::source::conn::ReplicationClient;
use crate::source::decode::ChangeDecoder;
use crate::source::error::SourceError;
use crate::source::prepare;
use crate::source::stream::{receive_timeout, Sink, SourceLoop};

struct TailSink<W: Write> {
    router: Router,
    out: W,
    buf: Vec<Routed>,
}

impl<W: Write> Sink for TailSink<W> {
    type Error = SourceError;

    async fn begin(&mut self, _: Lsn, _: i64) -> Result<(), SourceError> {
        Ok(())
    }

    async fn change(&mut self, change: RowChange) -> Result<(), SourceError> {
        self.buf.clear();
        self.router.route(&change, &mut self.buf);
        for r in &self.buf {
            let sub = serde_json::to_string(&*r.subscription).expect("strings serialize");
            writeln!(
                self.out,
                "{{\"subscription\":{sub},\"payload\":{}}}",
                r.body
            )?;
        }
        Ok(())
    }

    async fn commit(&mut self, _: Lsn, end_lsn: Lsn) -> Result<Lsn, SourceError> {
        self.out.flush()?;
        Ok(end_lsn)
    }
}

/// Builds the router for `config`, keeping only subscription `only` when given.
pub fn router(config: &Config, only: Option<&str>) -> Result<Router, SourceError> {
    narrow(Router::for_config(config), only)
}

/// The router `run` would use: config.toml's subscriptions and the API's.
pub async fn router_with_api(config: &Config, only: Option<&str>) -> Result<Router, SourceError> {
    let (subs, api) = super::all_subscriptions(config).await;
    match api {
        Ok(n) => info!(
            api_subscriptions = n,
            "subscriptions created through the API included"
        ),
        Err(e) => {
            warn!(error = %e, "subscriptions created through the API are not included: the outbox could not be read")
        }
    }
    narrow(Router::with_project(config, subs), only)
}

fn narrow(mut router: Router, only: Option<&str>) -> Result<Router, SourceError> {
    if let Some(id) = only {
        if !router.retain_only(id) {
            return Err(SourceError::Config(format!(
                "no subscription with id {id:?} in the config or the API"
            )));
        }
    }
    Ok(router)
}

/// Prepares the database for `router` (adding tables to the publication, never removing) and
/// starts streaming from a new temporary slot. The slot exists from the returned LSN on, so
/// every change committed after this returns is streamed.
pub async fn start_temporary(config: &Config, router: &Router) -> Result<SourceLoop, SourceError> {
    let pg = config.pg_config();
    let client = tls::connect_sql(&pg).await?;
    let publication = config.source.publication.as_str();
    prepare(
        &client,
        &router.tables(),
        publication,
        config.source.manage_replica_identity,
        false,
        |t| router.validate_table(&t.table, &t.columns, &t.unpublished_generated),
    )
    .await?;

    let mut repl = ReplicationClient::connect(&pg).await?;
    let slot = format!("walhook_tail_{}", uuid::Uuid::new_v4().simple());
    let start = repl.create_temporary_slot(&slot).await?;
    let pub_names = format!("\"{publication}\"");
    let stream = repl
        .start_logical(
            &slot,
            start,
            &[("proto_version", "1"), ("publication_names", &pub_names)],
        )
        .await?;
    info!(slot = %slot, lsn = %start, tables = ?router.tables().iter().map(|t| t.to_string()).collect::<Vec<_>>(), "tailing");
    // Status updates go out every 10 s here: never time out before a few of them.
    let receive_timeout = receive_timeout(&client).await?.max(Duration::from_secs(30));
    Ok(SourceLoop {
        stream,
        decoder: {
            let mut d = ChangeDecoder::new();
            d.limit_values(config.delivery.max_payload_bytes);
            d
        },
        client,
        status_interval: Duration::from_secs(10),
        flushed: start,
        receive_timeout,
        fence: None,
    })
}

pub async fn run(
    config: &Config,
    only: Option<&str>,
    cancel: CancellationToken,
) -> Result<(), SourceError> {
    let router = router_with_api(config, only).await?;
    let source = start_temporary(config, &router).await?;
    let mut sink = TailSink {
        router,
        out: std::io::BufWriter::new(std::io::stdout()),
        buf: Vec::new(),
    };
    source.run(&mut sink, &cancel).await?;
    Ok(())
}
