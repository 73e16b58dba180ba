//! The `walhook` binary: command-line parsing, logging, signals. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The tracing directive that keeps statement parameters (which hold secrets) out of the log.
const QUIET_QUERY_PARAMETERS: &str = "tokio_postgres::query=info";

use walhook::config::Config;

/// mimalloc instead of glibc malloc: walhook allocates per request from every runtime thread,
/// and glibc's arenas spent a fifth of its CPU under load (profile in README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    // From the mimalloc library the `mimalloc` crate links (mimalloc.h).
    fn mi_option_set(option: std::os::raw::c_int, value: std::os::raw::c_long);
}

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in its v2 and v3).
const MI_OPTION_PURGE_DELAY: std::os::raw::c_int = 15;

/// Freed memory goes back to the OS at once instead of after mimalloc's default 10 ms delay:
/// with it, a burst to 10,000 subscriptions peaked at 203 MiB instead of 167 MiB (bench/scale.sh),
/// above the 200 MB bound walhook keeps. `MIMALLOC_PURGE_DELAY` in the environment still wins,
/// as mimalloc read it at process start and an operator who sets it means it.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set only stores an integer option; any value is valid for it.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

mod demo;

#[derive(Parser)]
#[command(
    name = "walhook",
    version,
    about = "Postgres row changes → signed webhooks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Stream, as JSON lines on stdout, what each subscription would receive, live.
    Tail {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Only this subscription.
        #[arg(long)]
        subscription: Option<String>,
    },
    /// Run the daemon: slot → outbox, until SIGTERM/SIGINT. SIGHUP reloads the config.
    Run {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Apply outbox schema migrations and exit.
    Migrate {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Validate the config and the database; exits non-zero on a blocking problem.
    Check {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// No config needed: a throw-away Postgres, a verifying receiver, a few changes, and the
    /// signed deliveries they produce, printed. Cleans up after itself.
    Demo {
        /// Seconds to wait for every delivery.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// List or replay a subscription's deliveries (reads the outbox directly).
    Deliveries {
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Send a subscription's existing rows as READ events (performed by `walhook run`) and
    /// follow the progress.
    Backfill {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        subscription: String,
        /// A boolean SQL expression on the table, e.g. "updated_at >= '2025-12-01'".
        #[arg(long = "where")]
        where_sql: Option<String>,
        #[arg(long, default_value_t = 1000)]
        chunk_size: i32,
        /// Pause between two chunks, in milliseconds.
        #[arg(long, default_value_t = 0)]
        pause_ms: i32,
    },
    /// The replication slot: its health, and recovery after it was invalidated or dropped.
    Slot {
        #[command(subcommand)]
        command: SlotCommand,
    },
    /// Send a signed PING to a subscription's URL and print the receiver's status and time.
    SendTest {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        subscription: String,
    },
}

#[derive(Subcommand)]
enum SlotCommand {
    /// Whether the slot can still deliver every change after the outbox checkpoint; exits
    /// non-zero when it is lost, missing or moved.
    Status {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
    },
    /// Recreate a lost, missing or moved slot and its publication, send a RESYNC marker to
    /// every subscription, then backfill every subscribed table (performed by `walhook run`).
    Recover {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        /// Seconds to wait for `walhook run` to deliver the markers before the backfills start.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// One line per delivery, newest first.
    List {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        subscription: String,
        /// pending, delivered, failed or dead.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put one delivery, or the dead letters, back to pending (due now, same event id).
    Replay {
        #[arg(long, short, default_value = "config.toml")]
        config: PathBuf,
        #[arg(long)]
        subscription: String,
        /// A delivery id, e.g. del_42.
        #[arg(long, required_unless_present = "dead", conflicts_with = "dead")]
        delivery: Option<String>,
        /// Every dead letter of the subscription.
        #[arg(long)]
        dead: bool,
        /// With --dead: only those dead-lettered at or after this RFC 3339 time.
        #[arg(long, requires = "dead")]
        since: Option<String>,
    },
}

fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WALHOOK_LOG")
                .unwrap_or_else(|_| EnvFilter::new(default))
                // tokio_postgres logs every statement's parameters at debug, and walhook's
                // parameters include signing secrets: never at any WALHOOK_LOG (invariant 8).
                .add_directive(QUIET_QUERY_PARAMETERS.parse().expect("a valid directive")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in files or log collectors.
        .with_ansi(std::io::stderr().is_terminal());
    match std::env::var("WALHOOK_LOG_FORMAT").as_deref() {
        // One JSON object per line, with the structured fields as keys.
        Ok("json") => builder.json().init(),
        _ => builder.init(),
    }
}

/// Cancels the token on SIGINT or SIGTERM.
fn cancel_on_signals() -> anyhow::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stopping"),
        }
        t.cancel();
    });
    Ok(token)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

#[tokio::main]
async fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    // The demo's own output tells the story; the pipeline's info lines would bury it.
    init_logging(match cli.command {
        Command::Demo { .. } => "warn",
        _ => "info",
    });
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            // Once, on stderr, whatever the log format: the cause chain on one line.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Tail {
            config,
            subscription,
        } => {
            let config = load(&config)?;
            let cancel = cancel_on_signals()?;
            walhook::cmd::tail::run(&config, subscription.as_deref(), cancel)
                .await
                .context("walhook tail")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { config: path } => {
            let config = load(&path)?;
            let cancel = cancel_on_signals()?;
            walhook::app::run(path, config, cancel)
                .await
                .context("walhook run")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config } => {
            let config = load(&config)?;
            let applied = walhook::outbox::migrate_config(&config)
                .await
                .context("walhook migrate")?;
            println!("applied migrations: {applied:?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Deliveries { command } => deliveries(command).await,
        Command::Slot { command } => {
            let mut out = std::io::stdout();
            let ok = match command {
                SlotCommand::Status { config } => {
                    let config = load(&config)?;
                    walhook::cmd::slot::status(&config, &mut out)
                        .await
                        .context("walhook slot status")?
                }
                SlotCommand::Recover { config, wait } => {
                    let config = load(&config)?;
                    walhook::cmd::slot::recover(&config, Duration::from_secs(wait), &mut out)
                        .await
                        .context("walhook slot recover")?
                }
            };
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Backfill {
            config,
            subscription,
            where_sql,
            chunk_size,
            pause_ms,
        } => {
            use std::io::IsTerminal;
            let config = load(&config)?;
            let cancel = cancel_on_signals()?;
            let req = walhook::cmd::backfill::Request {
                subscription: &subscription,
                where_sql: where_sql.as_deref(),
                chunk_size,
                pause_ms,
            };
            let terminal = std::io::stdout().is_terminal();
            let done = walhook::cmd::backfill::run(
                &config,
                &req,
                terminal,
                &mut std::io::stdout(),
                &cancel,
            )
            .await
            .context("walhook backfill")?;
            Ok(if done {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::SendTest {
            config,
            subscription,
        } => {
            let config = load(&config)?;
            let ok =
                walhook::cmd::deliveries::send_test(&config, &subscription, &mut std::io::stdout())
                    .await
                    .context("walhook send-test")?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check { config: path } => {
            let config = load(&path)?;
            let report = walhook::cmd::check::run(&config).await;
            print!("walhook check: {}\n{report}", path.display());
            Ok(if report.blocking() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Demo { timeout } => {
            let cancel = cancel_on_signals()?;
            let opts = demo::Options {
                timeout: std::time::Duration::from_secs(timeout),
            };
            // One clean line on failure (e.g. which package to install), not a log record.
            Ok(match demo::run(opts, cancel).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("walhook demo: error: {e:#}");
                    ExitCode::FAILURE
                }
            })
        }
    }
}

async fn deliveries(command: DeliveriesCommand) -> anyhow::Result<ExitCode> {
    use walhook::cmd::deliveries::{deliveries_list, deliveries_replay, ReplayTarget};
    let mut out = std::io::stdout();
    match command {
        DeliveriesCommand::List {
            config,
            subscription,
            status,
            limit,
        } => {
            let config = load(&config)?;
            deliveries_list(&config, &subscription, status.as_deref(), limit, &mut out)
                .await
                .context("walhook deliveries list")?;
        }
        DeliveriesCommand::Replay {
            config,
            subscription,
            delivery,
            dead: _,
            since,
        } => {
            let config = load(&config)?;
            let target = match delivery {
                Some(d) => ReplayTarget::Delivery(d),
                None => ReplayTarget::Dead { since },
            };
            deliveries_replay(&config, &subscription, target, &mut out)
                .await
                .context("walhook deliveries replay")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
