//! Half-open connections: a path to Postgres that silently stops carrying packets (no FIN, no
//! RST: a firewall or NAT dropping state) is noticed within the server's `wal_sender_timeout`,
//! the daemon reconnects when the path comes back, and no change is lost meanwhile.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::bin::{log_path, with_config, Walhook};
use crate::support::daemon::wait_value;
use crate::support::{config_text, sub, write_config, TestDb, DELIVERY_OFF};

/// A TCP proxy to `target` that, while `blackhole` is set, drops every byte in both directions
/// and keeps the sockets open: what a dead path looks like to both ends.
async fn blackhole_proxy(target: u16, blackhole: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, blackhole.clone()));
            tokio::spawn(pump(sr, cw, blackhole.clone()));
        }
    });
    port
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // A dead path carries no FIN either: hold the other side open while it lasts.
                while blackhole.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                return;
            }
            Ok(n) => n,
        };
        if blackhole.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_silently_dropped_path_is_noticed_and_nothing_is_lost() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let blackhole = Arc::new(AtomicBool::new(false));
    let port = blackhole_proxy(db.pg.port(), blackhole.clone()).await;
    // The source's connections (replication, catalog) go through the proxy; the server gives
    // up on a silent walsender peer after 3 s, and walhook is told the same. The outbox is
    // reached directly: a dead outbox path is noticed by TCP keepalives (about a minute),
    // which a proxy on this machine would answer, so it is not what this test measures.
    let url = format!(
        "postgres://postgres@127.0.0.1:{port}/{}?sslmode=disable&connect_timeout=2&options=-c%20wal_sender_timeout%3D3s",
        db.name
    );
    let text = config_text(
        &url,
        &db.name,
        "p",
        &format!("{DELIVERY_OFF}[outbox]\nurl = \"{}\"\n", db.url()),
        &sub("o", "orders", r#"["INSERT"]"#, ""),
    );
    let cfg = write_config(&text);
    let mut walhook = Walhook::spawn_logging(
        with_config("run", cfg.path()),
        &log_path(&format!("half-open-{}", db.name)),
    );
    walhook.wait_log("streaming", Duration::from_secs(30)).await;
    db.sql("INSERT INTO orders VALUES (1, 'before')");
    wait_value(&db, "SELECT count(*) FROM walhook.delivery_states", "1", 30).await;

    blackhole.store(true, Ordering::SeqCst);
    let dropped = Instant::now();
    // Committed while the path is dead: must arrive once it is back.
    db.sql("INSERT INTO orders VALUES (2, 'during')");
    walhook
        .wait_log("presumed dead", Duration::from_secs(30))
        .await;
    let noticed = dropped.elapsed();
    // 3 s of silence, checked every second: far below the kernel's ~15 minutes, with room for a
    // loaded machine.
    assert!(
        noticed < Duration::from_secs(20),
        "noticed after {noticed:?}"
    );

    blackhole.store(false, Ordering::SeqCst);
    wait_value(&db, "SELECT count(*) FROM walhook.delivery_states", "2", 60).await;
    db.sql("INSERT INTO orders VALUES (3, 'after')");
    wait_value(
        &db,
        "SELECT string_agg(payload::jsonb->'record'->>'status', ',' ORDER BY id) FROM walhook.delivery_states",
        "before,during,after",
        60,
    )
    .await;
    let status = walhook.stop().await;
    assert!(status.success(), "{status:?}");
}
