//! Delivery against real receivers (in-process, port 0): signatures, retries on every kind of
//! failure, Retry-After, 410, the circuit breaker, per-key order and isolation.
//!
//! Timing assertions hold on a loaded machine: a delay may be late (the pump polls every 100 ms
//! and may be descheduled) but never early, so gaps are checked against their lower bound and
//! against upper bounds far above what a schedule allows; order is checked by order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{hmac_hex, Answer, Receiver, Request, Resetter};
use crate::support::TestDb;

const SECRET: &str = "whsec_delivery_test";

fn subscription(id: &str, table: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscriptions]]\nid = \"{id}\"\ntable = \"{table}\"\n\
         events = [\"INSERT\", \"UPDATE\", \"DELETE\"]\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

fn orders(db: &TestDb) {
    db.sql(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric(12,2), status text);
         ALTER TABLE orders REPLICA IDENTITY FULL",
    );
}

fn attempts_of(db: &TestDb, event_id: &str) -> String {
    db.sql(&format!(
        "SELECT string_agg(coalesce(a.http_status::text, a.error_kind), ',' ORDER BY a.id)
         FROM walhook.all_attempts a JOIN walhook.delivery_states d ON d.id = a.delivery_id
         WHERE d.event_id = '{event_id}'"
    ))
}

/// The most a short delay may be late on a loaded 2-core machine.
const LATE_MS: u128 = 5000;

fn gaps_ms(reqs: &[Request]) -> Vec<u128> {
    reqs.windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_arrives_signed_with_exact_headers_in_row_order() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::ok().await;
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &subscription("orders", "orders", &format!("{}/hooks/orders", rx.url), ""),
    )
    .await;
    // W1 in miniature: 10 × 100 INSERT, then UPDATE of status, then DELETE.
    for phase in [
        "INSERT INTO orders SELECT g, g * 1.5, 'pending' FROM generate_series({a}, {b}) g",
        "UPDATE orders SET status = 'paid' WHERE id BETWEEN {a} AND {b}",
        "DELETE FROM orders WHERE id BETWEEN {a} AND {b}",
    ] {
        for t in 0..10 {
            let (a, b) = (t * 100 + 1, t * 100 + 100);
            db.sql(
                &phase
                    .replace("{a}", &a.to_string())
                    .replace("{b}", &b.to_string()),
            );
        }
    }
    let reqs = rx.wait_for(3000, Duration::from_secs(60)).await;
    let mut ids = HashSet::new();
    let mut per_row: HashMap<i64, Vec<String>> = HashMap::new();
    for r in &reqs {
        assert_eq!(r.path, "/hooks/orders");
        let hex = hmac_hex(SECRET, &r.body);
        assert_eq!(r.header("x-archie-signature"), format!("sha256={hex}"));
        assert_eq!(r.header("x-webhook-signature"), hex);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(
            r.header("user-agent"),
            concat!("walhook/", env!("CARGO_PKG_VERSION"))
        );
        let body = r.json();
        assert_eq!(r.header("x-archie-delivery"), body["id"].as_str().unwrap());
        assert_eq!(r.header("x-archie-event"), body["event"].as_str().unwrap());
        assert!(
            ids.insert(body["id"].as_str().unwrap().to_string()),
            "duplicate {}",
            body["id"]
        );
        if body["event"] == "UPDATE" {
            assert_eq!(body["changed_fields"], serde_json::json!(["status"]));
        }
        let row = body["record"]["id"].as_i64().unwrap();
        per_row
            .entry(row)
            .or_default()
            .push(body["event"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 3000);
    assert_eq!(per_row.len(), 1000);
    for (row, events) in &per_row {
        assert_eq!(events, &["INSERT", "UPDATE", "DELETE"], "row {row}");
    }
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered' AND attempts = 1) || '/' || count(*)
         FROM walhook.delivery_states",
        "3000/3000",
        20,
    )
    .await;
    assert_eq!(
        db.sql("SELECT count(*) || ' ' || min(http_status) || ' ' || max(http_status) FROM walhook.all_attempts"),
        "3000 200 200"
    );
    // A first-attempt success writes no attempt row: its outcome stays on the delivery.
    assert_eq!(db.sql("SELECT count(*) FROM walhook.attempts"), "0");
    assert_eq!(
        db.sql(
            "SELECT count(*) FROM walhook.delivery_states WHERE last_http_status = 200
               AND last_attempt_at BETWEEN created_at AND finished_at AND last_duration_ms >= 0"
        ),
        "3000"
    );
    let metrics = d.handles.metrics.render(&Default::default());
    assert!(
        metrics.contains(
            "walhook_deliveries_total{subscription=\"orders\",outcome=\"delivered\"} 3000\n"
        ),
        "{metrics}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_on_schedule_then_dead_lettered() {
    let db = TestDb::new();
    orders(&db);
    let rx = Receiver::scripted(|_, _| Answer::Status(500)).await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"300ms\", \"600ms\"]\nbreaker_failures = 100"),
        &subscription("s", "orders", &rx.url, ""),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 10, 'new')");
    let reqs = rx.wait_for(3, Duration::from_secs(10)).await;
    wait_value(
        &db,
        "SELECT status || ' ' || attempts FROM walhook.delivery_states",
        "dead 3",
        10,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), 3, "no attempt after the last one");
    let event_id = reqs[0].header("x-archie-delivery").to_string();
    assert!(reqs
        .iter()
        .all(|r| r.header("x-archie-delivery") == event_id));
    let gaps = gaps_ms(&reqs);
    // 300 ms and 600 ms, ±20 % jitter: never earlier; later only by load (bounded generously,
    // far below the 30 s of the default schedule's later steps).
    assert!((240..=LATE_MS).contains(&gaps[0]), "gaps {gaps:?}");
    assert!((480..=LATE_MS).contains(&gaps[1]), "gaps {gaps:?}");
    assert_eq!(attempts_of(&db, &event_id), "500,500,500");
    assert_eq!(
        db.sql("SELECT DISTINCT response_body || '|' || error_kind FROM walhook.attempts"),
        "answer body|status"
    );
    assert_eq!(
        db.sql(
            "SELECT last_http_status || ' ' || (finished_at IS NOT NULL) FROM walhook.delivery_states"
        ),
        "500 true"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangs_resets_and_slow_answers() {
    let db = TestDb::new();
    orders(&db);
    // First request hangs past the 1 s timeout, the second is slow but in time.
    let hang = Receiver::scripted(|_, i| {
        if i == 0 {
            Answer::Hang
        } else {
            Answer::Slow(Duration::from_millis(400))
        }
    })
    .await;
    let reset = Resetter::start().await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"100ms\", \"100ms\"]\nbreaker_failures = 100"),
        &format!(
            "{}{}",
            subscription("hang", "orders", &hang.url, ""),
            subscription("reset", "orders", &reset.url, "")
        ),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 10, 'new')");
    let reqs = hang.wait_for(2, Duration::from_secs(10)).await;
    assert!(gaps_ms(&reqs)[0] >= 1000, "retried only after the timeout");
    wait_value(
        &db,
        "SELECT status || ' ' || attempts FROM walhook.delivery_states WHERE subscription_id = 'hang'",
        "delivered 2",
        10,
    )
    .await;
    assert_eq!(
        db.sql(
            // The timeout took its full second; the slow answer its 400 ms (lower bounds only).
            "SELECT string_agg(coalesce(http_status::text, error_kind) || ':' ||
                    (duration_ms >= CASE WHEN http_status IS NULL THEN 950 ELSE 400 END)::text, ',' ORDER BY a.id)
             FROM walhook.all_attempts a JOIN walhook.delivery_states d ON d.id = a.delivery_id
             WHERE d.subscription_id = 'hang'"
        ),
        "timeout:true,200:true"
    );
    wait_value(
        &db,
        "SELECT status || ' ' || attempts FROM walhook.delivery_states WHERE subscription_id = 'reset'",
        "dead 3",
        10,
    )
    .await;
    assert_eq!(
        reset.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    // Each attempt is a network failure without an HTTP status, retried; depending on when the
    // reset lands (before or while the request is written) the client reports it differently.
    let kinds = db.sql(
        "SELECT string_agg(DISTINCT coalesce(http_status::text, error_kind), ',') FROM walhook.all_attempts a
         JOIN walhook.delivery_states d ON d.id = a.delivery_id WHERE d.subscription_id = 'reset'",
    );
    assert!(
        kinds
            .split(',')
            .all(|k| ["reset", "connect", "other"].contains(&k)),
        "a reset is a retryable network error, got {kinds}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_is_honoured_and_410_deactivates() {
    let db = TestDb::new();
    orders(&db);
    let busy = Receiver::scripted(|_, i| {
        if i == 0 {
            Answer::RetryAfter(429, 1)
        } else {
            Answer::Status(204)
        }
    })
    .await;
    let gone = Receiver::scripted(|_, _| Answer::Status(410)).await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"600ms\", \"600ms\"]"),
        &format!(
            "{}{}",
            subscription("busy", "orders", &busy.url, ""),
            subscription("gone", "orders", &gone.url, "")
        ),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 10, 'new')");
    let reqs = busy.wait_for(2, Duration::from_secs(10)).await;
    // Scheduled 600 ms ± 20 %; Retry-After 1 s is honoured (capped at 2 × scheduled).
    // Never earlier than Retry-After (the schedule alone would have retried by 720 ms).
    let gap = gaps_ms(&reqs)[0];
    assert!((950..=LATE_MS).contains(&gap), "gap {gap} ms");
    wait_value(
        &db,
        "SELECT active || ' ' || deactivated_reason FROM walhook.subscriptions WHERE id = 'gone'",
        "false receiver answered 410 Gone",
        10,
    )
    .await;
    assert_eq!(
        db.sql("SELECT status || ' ' || attempts FROM walhook.delivery_states WHERE subscription_id = 'gone'"),
        "dead 1"
    );
    assert_eq!(gone.count(), 1);
    // Routing follows: once the reload after the 410 is in force, a change is not even enqueued
    // for the gone subscription. The reload is asynchronous, so probe with one row at a time
    // (each row's deliveries are enqueued together) until one row skips it, 20 s at most.
    let routed_for = |row: i32| {
        db.sql(&format!(
            "SELECT string_agg(subscription_id, ',' ORDER BY subscription_id) FROM walhook.delivery_states
             WHERE payload::jsonb->'record'->>'id' = '{row}'"
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut row = 2;
    loop {
        db.sql(&format!("INSERT INTO orders VALUES ({row}, 20, 'new')"));
        busy.wait_for(row as usize + 1, Duration::from_secs(10))
            .await;
        let to = routed_for(row);
        if to == "busy" {
            break;
        }
        assert_eq!(to, "busy,gone", "row {row}");
        assert!(
            std::time::Instant::now() < deadline,
            "still routed to the gone subscription 20 s after its 410"
        );
        row += 1;
    }
    // Once dropped, it stays dropped.
    row += 1;
    db.sql(&format!("INSERT INTO orders VALUES ({row}, 20, 'new')"));
    busy.wait_for(row as usize + 1, Duration::from_secs(10))
        .await;
    assert_eq!(routed_for(row), "busy");
    assert_eq!(
        gone.count(),
        1,
        "a deactivated subscription is sent nothing"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_waits_probes_and_closes_without_burning_attempts() {
    let db = TestDb::new();
    orders(&db);
    // The first 4 requests fail; everything after succeeds.
    let rx = Receiver::scripted(|_, i| {
        if i < 4 {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let d = Daemon::start(
        &db,
        &fast_delivery(
            "retry_schedule = [\"0s\", \"50ms\", \"50ms\"]\nbreaker_failures = 3\n\
             breaker_cooldown = \"1500ms\"\nmax_in_flight = 1",
        ),
        &subscription("s", "orders", &rx.url, ""),
    )
    .await;
    db.sql("INSERT INTO orders SELECT g, g, 'new' FROM generate_series(1, 6) g");
    let reqs = rx.wait_for(4 + 6, Duration::from_secs(15)).await;
    let gaps = gaps_ms(&reqs);
    // Three failures open the breaker: 1.5 s of silence, one probe (fails: open again),
    // 1.5 s more, a probe that succeeds, then the rest. A closed breaker retries after 50 ms,
    // which load may stretch but not to the 1.5 s of an open one (never shorter: lower bound).
    assert!(gaps[0] < 1400 && gaps[1] < 1400, "gaps {gaps:?}");
    assert!(gaps[2] >= 1400, "open after 3 failures: gaps {gaps:?}");
    assert!(
        gaps[3] >= 1400,
        "re-opened after a failed probe: gaps {gaps:?}"
    );
    assert!(
        gaps[4..].iter().all(|g| *g < 1400),
        "closed again: gaps {gaps:?}"
    );
    wait_value(
        &db,
        "SELECT count(*) FILTER (WHERE status = 'delivered') || ' ' || sum(attempts) FROM walhook.delivery_states",
        "6 10",
        10,
    )
    .await;
    // Waiting while open consumed nothing: at most 2 attempts on any delivery (limit is 3).
    assert_eq!(
        db.sql("SELECT max(attempts) FROM walhook.delivery_states"),
        "2"
    );
    let m = d.handles.metrics.render(&Default::default());
    assert!(
        m.contains("walhook_breaker_state{subscription=\"s\"} 0\n"),
        "{m}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_row_blocks_only_its_own_key() {
    let db = TestDb::new();
    orders(&db);
    // Row 1's INSERT fails twice; everything else succeeds at once.
    let rx = Receiver::scripted(|r, _| {
        let b = r.json();
        let row1_insert = b["record"]["id"] == 1 && b["event"] == "INSERT";
        if row1_insert {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    })
    .await;
    let d = Daemon::start(
        &db,
        &fast_delivery("retry_schedule = [\"0s\", \"500ms\", \"500ms\"]\nbreaker_failures = 100"),
        &subscription("s", "orders", &rx.url, ""),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 1, 'new'), (2, 2, 'new')");
    db.sql("UPDATE orders SET status = 'paid'");
    wait_value(
        &db,
        "SELECT string_agg(event || (payload::jsonb->'record'->>'id') || ':' || status, ',' ORDER BY id)
         FROM walhook.delivery_states",
        "INSERT1:dead,INSERT2:delivered,UPDATE1:delivered,UPDATE2:delivered",
        10,
    )
    .await;
    let seen: Vec<String> = rx
        .snapshot()
        .iter()
        .map(|r| {
            let b = r.json();
            format!("{}{}", b["event"].as_str().unwrap(), b["record"]["id"])
        })
        .collect();
    let nth_insert1 = |n: usize| {
        seen.iter()
            .enumerate()
            .filter(|(_, x)| *x == "INSERT1")
            .nth(n)
            .map(|(i, _)| i)
            .unwrap()
    };
    let pos = |s: &str| seen.iter().position(|x| x == s).unwrap();
    // Row 2 went ahead while row 1 waited for its retries ...
    assert!(pos("UPDATE2") < nth_insert1(1), "{seen:?}");
    // ... and row 1's UPDATE came only after its INSERT's third and last attempt.
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(nth_insert1(2), 4, "{seen:?}");
    assert_eq!(seen[5], "UPDATE1", "{seen:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_does_not_delay_a_healthy_subscription() {
    let db = TestDb::new();
    orders(&db);
    let dead = Receiver::scripted(|_, _| Answer::Hang).await;
    let healthy = Receiver::ok().await;
    let d = Daemon::start(
        &db,
        &fast_delivery("max_in_flight = 2\nretry_schedule = [\"0s\", \"100ms\"]"),
        &format!(
            "{}{}",
            subscription("dead", "orders", &dead.url, ""),
            subscription("healthy", "orders", &healthy.url, "")
        ),
    )
    .await;
    let start = std::time::Instant::now();
    db.sql("INSERT INTO orders SELECT g, g, 'new' FROM generate_series(1, 200) g");
    healthy.wait_for(200, Duration::from_secs(30)).await;
    let took = start.elapsed();
    // The dead endpoint holds 2 requests for 1 s each; behind it, 200 would take 100 s.
    assert!(took < Duration::from_secs(30), "healthy took {took:?}");
    // Capped at max_in_flight: no more than 2 of the dead subscription's attempts overlapped,
    // by the daemon's own record of when each began and how long it took (not by wall time).
    let dead_attempts =
        "SELECT a.attempted_at AS s, a.attempted_at + a.duration_ms * interval '1 ms' AS e
         FROM walhook.all_attempts a JOIN walhook.delivery_states d ON d.id = a.delivery_id
         WHERE d.subscription_id = 'dead'";
    wait_value(
        &db,
        &format!("SELECT count(*) >= 4 FROM ({dead_attempts}) x"),
        "t",
        30,
    )
    .await;
    assert_eq!(
        db.sql(&format!(
            "WITH x AS ({dead_attempts})
             SELECT max((SELECT count(*) FROM x y WHERE y.s <= x.s AND x.s < y.e)) <= 2 FROM x"
        )),
        "t",
        "dead endpoint capped at max_in_flight"
    );
    d.stop().await;
}

/// Runs `tests/verify/standard_verify.py` (the `standardwebhooks` package from PyPI) over the
/// request exactly as received. Fails the test, rather than skipping, when the package is
/// missing: `.ci/run` installs it.
fn standard_verify(secret: &str, r: &Request) -> Result<(), String> {
    use base64::Engine;
    use std::io::Write;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify/standard_verify.py");
    let headers: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().into()))
        .collect();
    let input = serde_json::json!({
        "secret": secret,
        "headers": headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
    });
    let mut child = std::process::Command::new("python3")
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is required (.ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) if stdout == "OK" => Ok(()),
        Some(1) => Err(stdout),
        Some(3) => panic!(
            "the standardwebhooks Python package is missing ({stdout}); \
             install it with `python3 -m pip install standardwebhooks` (.ci/run does)"
        ),
        _ => panic!(
            "standard_verify.py failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_signatures_with_rotation_and_chat_formats() {
    use walhook::deliver::sign::{standard_signature, StandardKey};
    let db = TestDb::new();
    orders(&db);
    let std_rx = Receiver::ok().await;
    let slack_rx = Receiver::ok().await;
    let discord_rx = Receiver::ok().await;
    let current = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let previous = "whsec_c2VjcmV0LW9sZC1rZXktYnl0ZXM=";
    let std_sub = format!(
        "[[subscriptions]]\nid = \"std\"\ntable = \"orders\"\nevents = [\"UPDATE\"]\n\
         url = \"{}\"\nsecret = \"{current}\"\nsignature = \"standard\"\n\
         previous_secret = \"{previous}\"\nprevious_secret_expires_at = \"2999-01-01T00:00:00Z\"\n",
        std_rx.url
    );
    let d = Daemon::start(
        &db,
        &fast_delivery(""),
        &format!(
            "{std_sub}{}{}",
            subscription("slack", "orders", &slack_rx.url, "format = \"slack\""),
            subscription("discord", "orders", &discord_rx.url, "format = \"discord\"")
        ),
    )
    .await;
    db.sql("INSERT INTO orders VALUES (7, 10, 'new')");
    db.sql("UPDATE orders SET status = 'paid' WHERE id = 7");

    let r = &std_rx.wait_for(1, Duration::from_secs(10)).await[0];
    let body = r.json();
    assert_eq!(body["event"], "UPDATE");
    assert_eq!(r.header("webhook-id"), body["id"].as_str().unwrap());
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 30);
    let want = format!(
        "{} {}",
        standard_signature(
            &StandardKey::from_whsec(current).unwrap(),
            r.header("webhook-id"),
            ts,
            &r.body
        ),
        standard_signature(
            &StandardKey::from_whsec(previous).unwrap(),
            r.header("webhook-id"),
            ts,
            &r.body
        )
    );
    assert_eq!(r.header("webhook-signature"), want);
    // Independent code: the reference `standardwebhooks` package accepts the delivery with the
    // current secret and, during the rotation, with the previous one; a third secret is refused.
    assert_eq!(standard_verify(current, r), Ok(()));
    assert_eq!(standard_verify(previous, r), Ok(()));
    let other = "whsec_b3RoZXItc2VjcmV0LWJ5dGVzLTEyMzQ1Ng==";
    assert!(
        standard_verify(other, r)
            .unwrap_err()
            .contains("No matching signature"),
        "a secret that signed nothing is refused"
    );
    assert_eq!(
        r.header("x-archie-signature"),
        "",
        "one scheme per subscription"
    );

    let slack = slack_rx.wait_for(2, Duration::from_secs(10)).await;
    let s = slack[1].json();
    assert!(
        s["text"].as_str().unwrap().contains("UPDATE on orders"),
        "{s}"
    );
    assert!(s["blocks"].is_array());
    assert_eq!(
        slack[1].header("x-archie-signature"),
        "",
        "chat formats are unsigned"
    );
    let discord = discord_rx.wait_for(2, Duration::from_secs(10)).await;
    let colors: Vec<i64> = discord
        .iter()
        .map(|r| r.json()["embeds"][0]["color"].as_i64().unwrap())
        .collect();
    assert_eq!(
        colors,
        vec![0x2ECC71, 0xF1C40F],
        "green INSERT, yellow UPDATE"
    );
    d.stop().await;
}

/// A fix (a PATCH of the URL or secret) reaches an open breaker at once: the probe goes to the
/// new URL without waiting out the cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_closes_an_open_breaker_without_waiting_for_the_cooldown() {
    let db = TestDb::new();
    orders(&db);
    let broken = Receiver::scripted(|_, _| Answer::Status(503)).await;
    let fixed = Receiver::ok().await;
    crate::support::assert_loopback(&broken.url);
    crate::support::assert_loopback(&fixed.url);
    let d = Daemon::start(
        &db,
        &fast_delivery(
            "retry_schedule = [\"0s\", \"50ms\", \"50ms\", \"50ms\", \"50ms\"]\n\
             breaker_failures = 2\nbreaker_cooldown = \"10m\"\nmax_in_flight = 1",
        ),
        "",
    )
    .await;
    // As the API stores a subscription (the API's own tests cover the HTTP side).
    db.sql(&format!(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         VALUES ('s', 'api', 'orders', '{{INSERT}}', '{}', '{SECRET}')",
        broken.url
    ));
    d.handles.changed.notify_one();
    wait_value(
        &db,
        "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'orders'",
        "1",
        20,
    )
    .await;
    db.sql("INSERT INTO orders VALUES (1, 1, 'new')");
    broken.wait_for(2, Duration::from_secs(20)).await;
    // Open for ten minutes from here on, unless the fix reaches it.
    db.sql(&format!(
        "UPDATE walhook.subscriptions SET url = '{}', updated_at = now() WHERE id = 's'",
        fixed.url
    ));
    d.handles.changed.notify_one();
    let got = fixed.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].json()["record"]["id"], 1);
    assert_eq!(broken.count(), 2, "nothing more went to the old URL");
    wait_value(
        &db,
        "SELECT status FROM walhook.delivery_states",
        "delivered",
        20,
    )
    .await;
    d.stop().await;
}
