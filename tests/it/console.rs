//! The web console against a running `walhook run`: a real headless Chromium driven over
//! WebDriver (chromedriver + fantoccini) for the operator's path, plain HTTP (reqwest) for the
//! guards (redirects without a session, CSRF refusals, cookie attributes) and for the size and
//! render-time budget with 1,000 subscriptions. The browser test writes a screenshot of each
//! page to docs/screenshots/.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::daemon::{fast_delivery, wait_value, Daemon};
use crate::support::receiver::{Answer, Receiver};
use crate::support::{free_port, TestDb};

pub(crate) const TOKEN: &str = "console-test-token";
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// `walhook run` with the API (and so the console) on a loopback port; returns its base URL.
async fn daemon(db: &TestDb, extra_delivery: &str) -> (Daemon, String) {
    daemon_with(db, extra_delivery, "").await
}

pub(crate) async fn daemon_with(db: &TestDb, extra_delivery: &str, subs: &str) -> (Daemon, String) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let port = free_port();
    let sections = format!(
        "{}\n[api]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n",
        fast_delivery(extra_delivery)
    );
    let d = Daemon::start(db, &sections, subs).await;
    let base = format!("http://127.0.0.1:{port}");
    // The listener is up once /healthz answers.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the API does not listen on {base}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (d, base)
}

/// chromedriver on a loopback port, killed with this value.
pub(crate) struct Driver {
    child: tokio::process::Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    pub(crate) async fn start() -> (Driver, Client) {
        let port = free_port();
        let child = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver)");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{url}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value =
                    serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session");
        (
            Driver {
                child,
                url,
                _profile: profile,
            },
            client,
        )
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = &self.url;
    }
}

fn screenshots() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub(crate) async fn shot(b: &Client, name: &str) {
    let png = b.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

pub(crate) async fn path(b: &Client) -> String {
    b.current_url().await.unwrap().path().to_string()
}

/// Reloads until the text of `css` contains `needle`, for up to [`WAIT`].
pub(crate) async fn reload_until(b: &Client, css: &str, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = match b.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap(),
            Err(_) => String::new(),
        };
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the page: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.refresh().await.unwrap();
    }
}

pub(crate) async fn fill(b: &Client, css: &str, text: &str) {
    let e = b.find(Locator::Css(css)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

pub(crate) async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

pub(crate) async fn text_of(b: &Client, css: &str) -> String {
    // A live page replaces its fragments while they are read: an element found a moment ago
    // can be gone (stale) when its text is asked for; it is then found again.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let element = b
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(e) if e.is_stale_element_reference() && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("{css}: {e}"),
        }
    }
}

#[tokio::test]
async fn an_operator_signs_in_creates_a_subscription_replays_a_dead_letter_and_watches_live() {
    let db = TestDb::new();
    db.sql("CREATE TABLE shipments(id int PRIMARY KEY, status text)");
    // One attempt: the second delivery's 500 dead-letters it at once.
    let (daemon, base) = daemon(&db, "retry_schedule = [\"0s\"]\nbreaker_failures = 100").await;
    let receiver = Receiver::scripted(|_, i| Answer::Status(if i == 1 { 500 } else { 200 })).await;
    let (_driver, b) = Driver::start().await;

    // Without a session: the sign-in page.
    b.goto(&format!("{base}/console/subscriptions"))
        .await
        .unwrap();
    assert_eq!(path(&b).await, "/console/sign-in");
    shot(&b, "sign-in").await;
    fill(&b, "#token", "not-the-token").await;
    click(&b, "form button[type=submit]").await;
    assert!(text_of(&b, "p.error").await.contains("Wrong token"));
    assert_eq!(path(&b).await, "/console/sign-in");
    fill(&b, "#token", TOKEN).await;
    click(&b, "form button[type=submit]").await;
    // dl.cards exists on the overview only, so this waits for the navigation to finish.
    assert!(text_of(&b, "dl.cards").await.contains("Dead letters"));
    assert_eq!(path(&b).await, "/console");

    // Create through the form; the API's validation message shows next to its field.
    b.goto(&format!("{base}/console/subscriptions/new"))
        .await
        .unwrap();
    fill(&b, "#table", "no_such_table").await;
    fill(&b, "#url", &format!("{}/hook", receiver.url)).await;
    fill(&b, "#secret", "whsec_console_secret").await;
    click(&b, "form.sub button[type=submit]").await;
    let err = text_of(&b, "#table-error").await;
    assert!(err.contains("no_such_table"), "{err}");
    shot(&b, "subscription-form").await;
    fill(&b, "#table", "shipments").await;
    fill(&b, "#secret", "whsec_console_secret").await;
    click(&b, "form.sub button[type=submit]").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("nav.actions"))
        .await
        .unwrap();
    let sub_path = path(&b).await;
    let id = sub_path.rsplit('/').next().unwrap().to_string();
    assert!(id.starts_with("wh_"), "{sub_path}");
    assert!(!b.source().await.unwrap().contains("whsec_console_secret"));
    shot(&b, "subscription").await;

    // A change to its table is delivered and listed.
    wait_value(
        &db,
        "SELECT count(*) FROM pg_publication_tables WHERE tablename = 'shipments'",
        "1",
        20,
    )
    .await;
    db.sql("INSERT INTO shipments VALUES (1, 'sent')");
    let got = receiver.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["record"], json!({"id": 1, "status": "sent"}));
    b.goto(&format!("{base}/console/subscriptions/{id}/deliveries"))
        .await
        .unwrap();
    reload_until(&b, "#deliveries tbody", "delivered").await;
    shot(&b, "deliveries").await;

    // The second one dies; its attempts show the 500; a replay delivers it.
    db.sql("INSERT INTO shipments VALUES (2, 'lost')");
    wait_value(
        &db,
        "SELECT count(*) FROM walhook.delivery_states WHERE status = 'dead'",
        "1",
        20,
    )
    .await;
    b.goto(&format!(
        "{base}/console/subscriptions/{id}/deliveries?status=dead"
    ))
    .await
    .unwrap();
    click(&b, "#deliveries tbody a").await;
    let attempts = text_of(&b, "#attempts").await;
    assert!(attempts.contains("HTTP 500"), "{attempts}");
    assert_eq!(text_of(&b, "#status").await, "dead");
    let payload = text_of(&b, "pre.payload").await;
    assert!(payload.contains("\"status\": \"lost\""), "{payload}");
    let headers = text_of(&b, "table.headers").await;
    assert!(headers.contains("X-Archie-Signature sha256="), "{headers}");
    shot(&b, "delivery").await;
    click(&b, "#replay").await;
    let got = receiver.wait_for(3, WAIT).await;
    assert_eq!(got[2].json()["record"], json!({"id": 2, "status": "lost"}));
    reload_until(&b, "#status", "delivered").await;

    // The live page shows a row committed with psql.
    b.goto(&format!("{base}/console/subscriptions/{id}/live"))
        .await
        .unwrap();
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#live-status[data-state=ready]"))
        .await
        .unwrap();
    db.sql("INSERT INTO shipments VALUES (3, 'live-marker')");
    let entry = text_of(&b, "#live li").await;
    assert!(
        entry.contains("live-marker") && entry.contains("INSERT"),
        "{entry}"
    );
    shot(&b, "live").await;

    // Send test shows the receiver's answer.
    b.goto(&format!("{base}{sub_path}")).await.unwrap();
    click(&b, "nav.actions form[action$='/test'] button").await;
    let result = text_of(&b, "#test-result").await;
    assert!(result.contains("200") && result.contains(" ms"), "{result}");
    shot(&b, "send-test").await;

    b.goto(&format!("{base}/console/subscriptions"))
        .await
        .unwrap();
    assert!(text_of(&b, "table").await.contains(&id));
    shot(&b, "subscriptions").await;
    b.goto(&format!("{base}/console")).await.unwrap();
    assert!(text_of(&b, "dl.cards").await.contains("streaming"));
    // The subscription's health: its deliveries' enqueue → 2xx latency (p50, p99) in ms.
    assert!(text_of(&b, "div.scroll table thead")
        .await
        .contains("Oldest pending"));
    let health = text_of(&b, "div.scroll table tbody").await;
    assert!(
        health.contains(&id) && health.matches(" ms").count() >= 2,
        "{health}"
    );
    shot(&b, "overview").await;

    // Sign out: the console is closed again.
    click(&b, "form.signout button").await;
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    b.goto(&format!("{base}/console")).await.unwrap();
    assert_eq!(path(&b).await, "/console/sign-in");
    b.close().await.unwrap();
    daemon.stop().await;
}

/// Signs in over plain HTTP; returns (session cookie, CSRF token of the session's forms).
pub(crate) async fn sign_in(http: &reqwest::Client, base: &str) -> (String, String) {
    let r = http
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    let presign = cookie_of(&r, "walhook_signin");
    let csrf = hidden_csrf(&r.text().await.unwrap());
    let r = http
        .post(format!("{base}/console/sign-in"))
        .header("cookie", format!("walhook_signin={presign}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str()), ("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = cookie_of(&r, "walhook_session");
    let page = page_text(
        http,
        &format!("{base}/console/subscriptions/new"),
        &format!("walhook_session={session}"),
    )
    .await;
    (session, hidden_csrf(&page))
}

/// The body of a console page fetched with the session `cookie`.
async fn page_text(http: &reqwest::Client, url: &str, cookie: &str) -> String {
    http.get(url)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub(crate) fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))
        .finish()
}

fn cookie_of(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no {name} cookie"))
        .to_string()
}

fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + html[at..].find('"').unwrap()].to_string()
}

#[tokio::test]
async fn without_a_session_every_console_url_redirects_and_forms_need_their_csrf_token() {
    let db = TestDb::new();
    let (daemon, base) = daemon(&db, "").await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let urls = [
        "/console",
        "/console/",
        "/console/subscriptions",
        "/console/subscriptions/new",
        "/console/subscriptions/wh_x",
        "/console/subscriptions/wh_x/deliveries",
        "/console/subscriptions/wh_x/deliveries/del_1",
        "/console/subscriptions/wh_x/replay-dead",
        "/console/subscriptions/wh_x/live",
        "/console/subscriptions/wh_x/live/events",
        "/console/anything/else",
    ];
    for u in urls {
        let r = http.get(format!("{base}{u}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "GET {u}");
        assert_eq!(r.headers()["location"], "/console/sign-in", "GET {u}");
        // A made-up session is no session.
        let r = http
            .get(format!("{base}{u}"))
            .header("cookie", "walhook_session=forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "GET {u} with a forged cookie");
    }
    for u in [
        "/console/subscriptions",
        "/console/subscriptions/wh_x/delete",
        "/console/subscriptions/wh_x/replay-dead",
        "/console/sign-out",
    ] {
        let r = http.post(format!("{base}{u}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "POST {u}");
    }
    // The sign-in page, its assets and the API stay reachable.
    let r = http
        .get(format!("{base}/console/sign-in"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let r = http
        .get(format!("{base}/console/sign-in"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
    for a in ["/console/assets/console.css", "/console/assets/console.js"] {
        assert_eq!(
            http.get(format!("{base}{a}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }

    // Sign-in without its double-submit token: 403, and no session.
    let r = http
        .post(format!("{base}/console/sign-in"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("token", TOKEN)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("set-cookie").is_none());

    let (session, csrf) = sign_in(&http, &base).await;
    let cookie = format!("walhook_session={session}");
    db.sql("CREATE TABLE parcels(id int PRIMARY KEY)");
    let form = |token: Option<&str>| {
        let mut f = vec![
            ("table", "parcels".to_string()),
            ("events", "INSERT".into()),
            ("url", "http://127.0.0.1:9/hook".into()),
            ("secret", "whsec_x".into()),
            ("format", "json".into()),
            ("signature", "archie".into()),
            ("active", "true".into()),
        ];
        if let Some(t) = token {
            f.push(("csrf", t.to_string()));
        }
        f
    };
    for (token, why) in [(None, "no token"), (Some("0123"), "a wrong token")] {
        let r = http
            .post(format!("{base}/console/subscriptions"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&form(token)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{why}");
    }
    let count = "SELECT count(*) FROM walhook.subscriptions";
    assert_eq!(db.sql(count), "0", "a refused form changes nothing");
    let r = http
        .post(format!("{base}/console/subscriptions"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&form(Some(&csrf))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303, "{}", r.text().await.unwrap());
    assert_eq!(db.sql(count), "1");
    // Signed out, the same cookie opens nothing.
    let r = http
        .post(format!("{base}/console/sign-out"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{base}/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/console/sign-in");
    daemon.stop().await;
}

#[tokio::test]
async fn every_page_is_small_and_fast_with_a_thousand_subscriptions() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders(id int PRIMARY KEY, status text)");
    let (daemon, base) = daemon(&db, "").await;
    // Stored directly, as the API would store them (the daemon is not told: only pages read them).
    db.sql(
        "INSERT INTO walhook.subscriptions (id, source, table_name, events, url, secret)
         SELECT 'wh_' || lpad(n::text, 4, '0'), 'api', 'public.orders',
                ARRAY['INSERT','UPDATE','DELETE'], 'http://127.0.0.1:9/hook/' || n, 'whsec_s'
         FROM generate_series(1, 1000) n",
    );
    db.sql(
        "INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                                         commit_lsn, status, sequence)
         SELECT 'wh_0001', 'evt_' || n, 'INSERT', n::text, '{\"id\":' || n || '}', n, 'dead', n
         FROM generate_series(1, 200) n;
         INSERT INTO walhook.deliveries (subscription_id, event_id, event, ordering_key, payload,
                                         commit_lsn, status, sequence, created_at)
         SELECT 'wh_0002', 'evt_p' || n, 'INSERT', n::text, '{}', n, 'pending', n,
                now() - interval '10 minutes 30 seconds' + n * interval '1 second'
         FROM generate_series(1, 3) n",
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (session, _) = sign_in(&http, &base).await;
    let cookie = format!("walhook_session={session}");
    let del =
        db.sql("SELECT max(id) FROM walhook.delivery_states WHERE subscription_id = 'wh_0001'");
    for page in [
        "/console".to_string(),
        "/console/subscriptions".into(),
        "/console/subscriptions?q=wh_09".into(),
        "/console/subscriptions/new".into(),
        "/console/subscriptions/wh_0001".into(),
        "/console/subscriptions/wh_0001/deliveries".into(),
        format!("/console/subscriptions/wh_0001/deliveries/del_{del}"),
        "/console/subscriptions/wh_0001/replay-dead".into(),
        "/console/subscriptions/wh_0001/live".into(),
    ] {
        // The best of three: the budget is the server's, not this busy test machine's worst.
        let mut best = Duration::MAX;
        let mut size = 0;
        for _ in 0..3 {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{page}"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{page}");
            size = r.bytes().await.unwrap().len();
            best = best.min(t.elapsed());
        }
        eprintln!("{page}: {size} bytes, {} ms", best.as_millis());
        assert!(size <= 200 * 1024, "{page}: {size} bytes");
        assert!(best <= Duration::from_millis(300), "{page}: {best:?}");
    }
    // A subscription with pending deliveries shows how long the oldest has waited.
    let listed = page_text(
        &http,
        &format!("{base}/console/subscriptions?q=wh_0002"),
        &cookie,
    )
    .await;
    assert!(listed.contains("(oldest 10 min)"), "{listed}");
    daemon.stop().await;
}

#[tokio::test]
async fn config_subscriptions_are_read_only_and_api_ones_pause_resume_and_delete() {
    let db = TestDb::new();
    db.sql("CREATE TABLE parcels(id int PRIMARY KEY)");
    let subs = crate::support::sub("from-config", "parcels", "[\"INSERT\"]", "");
    let (daemon, base) = daemon_with(&db, "", &subs).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (session, csrf) = sign_in(&http, &base).await;
    let cookie = format!("walhook_session={session}");
    let get = |u: String| {
        let r = http
            .get(format!("{base}{u}"))
            .header("cookie", &cookie)
            .send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let post = |u: String, pairs: Vec<(&'static str, String)>| {
        let r = http
            .post(format!("{base}{u}"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(&pairs))
            .send();
        async move {
            let r = r.await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    // config.toml's subscription: shown, read-only, saying why; an edit is refused (409).
    let (status, page) = get("/console/subscriptions/from-config".into()).await;
    assert_eq!(status, 200);
    assert!(page.contains("comes from config.toml"), "{page}");
    assert!(!page.contains("form class=\"sub\""), "no edit form: {page}");
    assert!(!page.contains("whsec_test"), "the secret is never shown");
    let (status, page) = post(
        "/console/subscriptions/from-config/pause".into(),
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("comes from config.toml"), "{page}");
    let active = "SELECT active FROM walhook.subscriptions WHERE id = 'from-config'";
    assert_eq!(db.sql(active), "t");

    // An API subscription: pause, resume, delete.
    let (status, _) = post(
        "/console/subscriptions".into(),
        vec![
            ("csrf", csrf.clone()),
            ("table", "parcels".into()),
            ("events", "INSERT".into()),
            ("events", "DELETE".into()),
            ("url", "http://127.0.0.1:9/hook".into()),
            ("secret", "whsec_api".into()),
            ("format", "json".into()),
            ("signature", "archie".into()),
            ("active", "true".into()),
        ],
    )
    .await;
    assert_eq!(status, 303);
    let id = db.sql("SELECT id FROM walhook.subscriptions WHERE source = 'api'");
    let row = format!("SELECT active, events::text FROM walhook.subscriptions WHERE id = '{id}'");
    assert_eq!(db.sql(&row), "t|{INSERT,DELETE}");
    let (status, _) = post(
        format!("/console/subscriptions/{id}/pause"),
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(db.sql(&row), "f|{INSERT,DELETE}");
    let (_, page) = get(format!("/console/subscriptions/{id}")).await;
    assert!(page.contains("paused") && page.contains("Resume"), "{page}");
    assert!(
        page.contains("form class=\"sub\""),
        "an API subscription has its form"
    );
    post(
        format!("/console/subscriptions/{id}/resume"),
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(db.sql(&row), "t|{INSERT,DELETE}");
    // An edit that leaves the secret empty keeps it.
    let secret = format!("SELECT secret FROM walhook.subscriptions WHERE id = '{id}'");
    let (status, page) = post(
        format!("/console/subscriptions/{id}"),
        vec![
            ("csrf", csrf.clone()),
            ("table", "parcels".into()),
            ("events", "INSERT".into()),
            ("url", "http://127.0.0.1:9/other".into()),
            ("secret", String::new()),
            ("format", "json".into()),
            ("signature", "archie".into()),
            ("active", "true".into()),
        ],
    )
    .await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(db.sql(&secret), "whsec_api");
    assert_eq!(
        db.sql(&format!(
            "SELECT url FROM walhook.subscriptions WHERE id = '{id}'"
        )),
        "http://127.0.0.1:9/other"
    );
    let (status, _) = post(
        format!("/console/subscriptions/{id}/delete"),
        vec![("csrf", csrf.clone())],
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(
        db.sql(&format!(
            "SELECT count(*) FROM walhook.subscriptions WHERE id = '{id}'"
        )),
        "0"
    );
    daemon.stop().await;
}
