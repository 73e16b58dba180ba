//! The console's backfills page against a running `walhook run`, in headless Chromium over
//! WebDriver (the pattern of `console.rs`): a refused start shows the API's message next to the
//! field and stores nothing; a started backfill is listed with its state, rows done of
//! estimated and rate; a running one is cancelled from its row. Over plain HTTP: the page and
//! its forms need a session, and the forms the session's CSRF token.

use fantoccini::Locator;

use crate::console::{
    click, daemon_with, encode, fill, path, reload_until, shot, sign_in, text_of, Driver, TOKEN,
    WAIT,
};
use crate::support::daemon::wait_value;
use crate::support::receiver::Receiver;
use crate::support::TestDb;

#[tokio::test]
async fn an_operator_starts_follows_and_cancels_backfills() {
    let db = TestDb::new();
    crate::backfill::items(&db, 3000);
    let rx = Receiver::ok().await;
    let subs = crate::backfill::sub("orders", "items", &rx.url, "");
    let (daemon, base) = daemon_with(&db, "", &subs).await;
    let page = format!("{base}/console/subscriptions/orders/backfills");

    // Plain HTTP: no session → sign-in; a session without the CSRF token → 403, nothing started.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (post, u) in [
        (false, page.clone()),
        (true, page.clone()),
        (true, format!("{page}/bf_1/cancel")),
    ] {
        let r = if post { http.post(&u) } else { http.get(&u) };
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 303, "{u}");
        assert_eq!(r.headers()["location"], "/console/sign-in", "{u}");
    }
    let (session, csrf) = sign_in(&http, &base).await;
    let r = http
        .post(&page)
        .header("cookie", format!("walhook_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("where", "id <= 10"), ("chunk_size", "100")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // With it, the API's range check (the browser's min/max would stop this form earlier).
    let r = http
        .post(&page)
        .header("cookie", format!("walhook_session={session}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str()), ("chunk_size", "0")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=\"chunk_size-error\"") && html.contains("between 1 and 10000"),
        "{html}"
    );
    assert_eq!(db.sql("SELECT count(*) FROM walhook.backfills"), "0");

    // The browser.
    let (_driver, b) = Driver::start().await;
    b.goto(&page).await.unwrap();
    assert_eq!(path(&b).await, "/console/sign-in");
    fill(&b, "#token", TOKEN).await;
    click(&b, "form button[type=submit]").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("dl.cards"))
        .await
        .unwrap();
    // Reached from the subscription's page.
    b.goto(&format!("{base}/console/subscriptions/orders"))
        .await
        .unwrap();
    click(&b, "nav.actions a[href$='/backfills']").await;
    assert!(text_of(&b, "main").await.contains("No backfill yet."));
    assert_eq!(path(&b).await, "/console/subscriptions/orders/backfills");

    // Refused: the API's message next to the field, the typed value kept, nothing stored.
    fill(&b, "#where", "id <= 1000; DELETE FROM items").await;
    click(&b, "form.backfill button[type=submit]").await;
    let err = text_of(&b, "#where-error").await;
    assert!(err.contains("';'"), "{err}");
    let kept = b
        .find(Locator::Css("#where"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(kept.as_deref(), Some("id <= 1000; DELETE FROM items"));
    fill(&b, "#where", "no_such_column > 1").await;
    click(&b, "form.backfill button[type=submit]").await;
    // The first refusal's message stays on the page until the answer to this one replaces it:
    // read until it does (or the wait runs out), not once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut err = text_of(&b, "#where-error").await;
    while !err.contains("no_such_column") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        err = text_of(&b, "#where-error").await;
    }
    assert!(err.contains("no_such_column"), "{err}");
    assert_eq!(db.sql("SELECT count(*) FROM walhook.backfills"), "0");
    assert_eq!(db.sql("SELECT count(*) FROM items"), "3000");

    // Started: listed, followed to done with rows done of estimated and a rate.
    fill(&b, "#where", "id <= 1000").await;
    fill(&b, "#chunk_size", "100").await;
    click(&b, "form.backfill button[type=submit]").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#bf_1"))
        .await
        .unwrap();
    assert_eq!(path(&b).await, "/console/subscriptions/orders/backfills");
    reload_until(&b, "#bf_1", "done").await;
    let row = text_of(&b, "#bf_1").await;
    assert!(row.contains("1000 of ~"), "{row}");
    assert!(
        row.contains("rows/s") && row.contains("id <= 1000"),
        "{row}"
    );
    rx.wait_for(1000, WAIT).await;

    // A slow one (10 rows a second), cancelled from its row.
    fill(&b, "#where", "").await;
    fill(&b, "#chunk_size", "10").await;
    fill(&b, "#pause_ms", "1000").await;
    click(&b, "form.backfill button[type=submit]").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#bf_2"))
        .await
        .unwrap();
    assert!(text_of(&b, "#bf_2").await.contains("running"));
    assert!(text_of(&b, "#bf_2 td.rows").await.contains("of ~"));
    shot(&b, "backfills").await;
    click(&b, "#bf_2 form button").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#bf_2 .bf-cancelled"))
        .await
        .unwrap();
    assert!(!text_of(&b, "#bf_2").await.contains("Cancel"));
    wait_value(
        &db,
        "SELECT string_agg(state, ' ' ORDER BY id) FROM walhook.backfills",
        "done cancelled",
        10,
    )
    .await;
    let done: i64 = db
        .sql("SELECT rows_done FROM walhook.backfills WHERE id = 2")
        .parse()
        .unwrap();
    assert!(done < 3000, "cancelled after {done} rows");
    b.close().await.unwrap();
    daemon.stop().await;
}
