//! The HTTP sender against in-process receivers on 127.0.0.1 (port 0), and the egress policy
//! keeping requests away from private networks.
//!
//! Receivers that must see nothing count accepted TCP connections: "refused" means no
//! connection was even opened, not just that no request was answered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use walhook::config::{DeliveryConfig, EnvString, Format, SignatureScheme};
use walhook::deliver::egress::EgressPolicy;
use walhook::deliver::http::{ErrorKind, HttpSender};
use walhook::deliver::sign::{delivery_headers, SignInput};

fn config(timeout: Duration) -> DeliveryConfig {
    DeliveryConfig {
        allow_http: true,
        allow_cidrs: vec![EnvString("127.0.0.1/32".into())],
        timeout: walhook::config::Duration(timeout),
        connect_timeout: walhook::config::Duration(Duration::from_secs(5)),
        ..DeliveryConfig::default()
    }
}

fn sender(timeout: Duration) -> HttpSender {
    HttpSender::new(&config(timeout)).expect("client")
}

const BODY: &str = r#"{"id":"evt_00000000016B3D28_0","timestamp":"2025-12-15T15:00:00Z","project_id":"p","environment":"master","table":"orders","event":"INSERT","record":{"id":1,"total":99.50,"name":"Zoë 🚀"},"data":{"id":1,"total":99.50,"name":"Zoë 🚀"},"changed_fields":[]}"#;

fn headers() -> walhook::deliver::sign::Headers {
    delivery_headers(&SignInput {
        format: Format::Json,
        scheme: SignatureScheme::Archie,
        secret: "whsec_test",
        previous_secret: None,
        event_id: "evt_00000000016B3D28_0",
        event: "INSERT",
        body: BODY.as_bytes(),
        now_unix: 1_765_810_800,
        signature_header: None,
    })
    .unwrap()
}

type Seen = mpsc::UnboundedReceiver<(HeaderMap, Bytes)>;

/// The axum receiver: one route per behaviour. Returns its address, what `/ok` received and
/// how many TCP connections it accepted.
async fn receiver(redirect_to: Option<SocketAddr>) -> (SocketAddr, Seen, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/ok",
            post(move |h: HeaderMap, b: Bytes| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((h, b));
                    "thanks"
                }
            }),
        )
        .route(
            "/fail",
            post(|| async {
                (StatusCode::INTERNAL_SERVER_ERROR, "é".repeat(3000)).into_response()
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                "late but fine"
            }),
        )
        .route(
            "/busy",
            post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("Retry-After", "7")],
                    "slow down",
                )
            }),
        )
        .route(
            "/gone",
            post(|| async { (StatusCode::GONE, "unsubscribed") }),
        )
        .route(
            "/moved",
            post(move || async move {
                let to = redirect_to
                    .map(|a| format!("http://{a}/ok"))
                    .unwrap_or_default();
                (StatusCode::MOVED_PERMANENTLY, [("Location", to)], "")
            }),
        )
        .route(
            "/big",
            post(|| async { vec![b'x'; 1024 * 1024].into_response() }),
        );
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, rx, accepted)
}

#[derive(Clone, Copy)]
enum Raw {
    /// Answers 200 to one request per connection.
    Answer,
    /// Reads the request and never answers, keeping the connection open.
    Hang,
    /// Reads the request, then resets the connection (RST via SO_LINGER 0).
    Reset,
    /// Reads the request, then closes cleanly without answering.
    Close,
    /// Answers 200 keeping the connection alive, then closes it 50 ms later, as a receiver
    /// does with connections idle past its keep-alive timeout.
    AnswerThenCloseIdle,
}

/// A raw TCP receiver on `bind` that counts accepted connections.
async fn raw(bind: &str, how: Raw) -> Option<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind(bind).await.ok()?;
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                match how {
                    Raw::Answer => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                            .await;
                    }
                    Raw::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Raw::Reset => {
                        let _ = s.set_zero_linger();
                    }
                    Raw::Close => {
                        let _ = s.shutdown().await;
                    }
                    Raw::AnswerThenCloseIdle => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = s.shutdown().await;
                    }
                }
                drop(s);
            });
        }
    });
    Some((addr, accepted))
}

/// Gives a connection that should not happen time to show up before asserting it did not.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

fn body() -> Bytes {
    Bytes::from_static(BODY.as_bytes())
}

#[tokio::test]
async fn ok_200_headers_and_body_arrive_byte_exact() {
    let (addr, mut seen, _) = receiver(None).await;
    let hs = headers();
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/ok"), &hs, body())
        .await;
    assert!(o.is_success(), "{o:?}");
    assert_eq!(o.http_status, Some(200));
    assert_eq!(o.error_kind, None);
    assert_eq!(o.error, None);
    assert_eq!(o.response_body, "thanks");
    assert_eq!(o.retry_after, None);

    let (got_headers, got_body) = seen.recv().await.unwrap();
    assert_eq!(&got_body[..], BODY.as_bytes());
    for (name, value) in &hs {
        let all: Vec<_> = got_headers.get_all(name.as_ref()).iter().collect();
        assert_eq!(all.len(), 1, "{name} sent once");
        assert_eq!(all[0].as_bytes(), value.as_bytes(), "{name}");
    }
    assert_eq!(
        got_headers.get("content-length").unwrap().as_bytes(),
        BODY.len().to_string().as_bytes()
    );
    assert_eq!(got_headers["host"].to_str().unwrap(), addr.to_string());
    assert_eq!(
        got_headers["x-archie-signature"].to_str().unwrap(),
        format!(
            "sha256={}",
            walhook::deliver::sign::archie_hex(b"whsec_test", BODY.as_bytes())
        )
    );
}

#[tokio::test]
async fn connections_are_kept_alive_and_reused() {
    let (addr, _seen, accepted) = receiver(None).await;
    let s = sender(Duration::from_secs(5));
    let url = format!("http://{addr}/ok");
    let hs = headers();
    for _ in 0..50 {
        let o = s.post(&url, &hs, body()).await;
        assert!(o.is_success(), "{o:?}");
    }
    // A connection goes back to the pool before `post` returns, so the next request finds it.
    let n = accepted.load(Ordering::SeqCst);
    assert_eq!(
        n, 1,
        "{n} connections for 50 sequential requests: keep-alive is not working"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_the_receiver_closed_is_not_used_again() {
    let (addr, accepted) = raw("127.0.0.1:0", Raw::AnswerThenCloseIdle).await.unwrap();
    let s = sender(Duration::from_secs(5));
    let url = format!("http://{addr}/");
    for i in 1..=3 {
        let o = s.post(&url, &headers(), body()).await;
        assert!(o.is_success(), "request {i}: {o:?}");
        assert_eq!(o.response_body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), i);
        // The receiver closes the idle connection meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A receiver whose every request takes `hold`; returns its address and the most requests it
/// ever had in progress at once.
async fn gauged(hold: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let max = most.clone();
    let app = Router::new().route(
        "/hold",
        post(move || {
            let (now, most) = (now.clone(), most.clone());
            async move {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                now.fetch_sub(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, max)
}

#[tokio::test]
async fn requests_to_one_receiver_are_capped_and_other_receivers_are_not_held_back() {
    let hold = Duration::from_millis(300);
    let (busy, most) = gauged(hold).await;
    let (other, other_most) = gauged(Duration::ZERO).await;
    let s = HttpSender::new(&DeliveryConfig {
        max_requests_per_host: 3,
        ..config(Duration::from_secs(10))
    })
    .expect("client");
    let start = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (s, url) = (s.clone(), format!("http://{busy}/hold"));
        tasks.spawn(async move { s.post(&url, &headers(), body()).await });
    }
    // While `busy` has all its slots taken, another receiver answers at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = std::time::Instant::now();
    let o = s
        .post(&format!("http://{other}/hold"), &headers(), body())
        .await;
    assert!(o.is_success(), "{o:?}");
    assert!(
        t.elapsed() < hold,
        "a full receiver held back another one for {:?}",
        t.elapsed()
    );
    assert_eq!(other_most.load(Ordering::SeqCst), 1);
    while let Some(o) = tasks.join_next().await {
        let o = o.unwrap();
        assert!(o.is_success(), "{o:?}");
        // The wait for a slot is not part of the attempt.
        assert!(o.duration < hold * 3, "{:?}", o.duration);
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most <= 3, "{most} requests in flight at once; the cap is 3");
    // 12 requests, 3 at a time, 300 ms each.
    assert!(start.elapsed() >= hold * 4, "{:?}", start.elapsed());
}

#[tokio::test]
async fn status_500_is_a_failure_with_the_body_prefix() {
    let (addr, _, _) = receiver(None).await;
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/fail"), &headers(), body())
        .await;
    assert!(!o.is_success());
    assert_eq!(o.http_status, Some(500));
    assert_eq!(o.error_kind, Some(ErrorKind::Status));
    assert_eq!(
        o.error.as_deref(),
        Some(
            format!(
                "127.0.0.1:{} answered HTTP 500 Internal Server Error",
                addr.port()
            )
            .as_str()
        )
    );
    // 1024 bytes of two-byte "é": exactly 512 characters, none cut in half.
    assert_eq!(o.response_body, "é".repeat(512));
}

#[tokio::test]
async fn hanging_receiver_times_out_after_the_timeout() {
    let (addr, accepted) = raw("127.0.0.1:0", Raw::Hang).await.unwrap();
    let timeout = Duration::from_millis(500);
    let o = sender(timeout)
        .post(&format!("http://{addr}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Timeout), "{o:?}");
    assert_eq!(o.http_status, None);
    assert!(
        o.duration >= timeout && o.duration < timeout + Duration::from_millis(1500),
        "{:?}",
        o.duration
    );
    assert!(o.error.unwrap().contains("within 0.5s"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reset_connection_is_reset() {
    let (addr, _) = raw("127.0.0.1:0", Raw::Reset).await.unwrap();
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Reset), "{o:?}");
    assert_eq!(o.http_status, None);
    assert!(!o.is_success());
}

#[tokio::test]
async fn closed_without_answer_is_reset() {
    let (addr, _) = raw("127.0.0.1:0", Raw::Close).await.unwrap();
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Reset), "{o:?}");
}

#[tokio::test]
async fn nothing_listening_is_connect() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://127.0.0.1:{port}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Connect), "{o:?}");
    let e = o.error.unwrap();
    assert!(
        e.starts_with(&format!("connecting to 127.0.0.1:{port}: ")),
        "{e}"
    );
}

#[tokio::test]
async fn a_receiver_that_never_accepts_is_a_connect_timeout() {
    // A listener with a backlog of one whose queue is filled and never accepted: Linux drops
    // further SYNs, so a connect to it waits as it would for a host that drops packets.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    let mut c = config(Duration::from_secs(10));
    c.connect_timeout = walhook::config::Duration(Duration::from_millis(700));
    let o = HttpSender::new(&c)
        .unwrap()
        .post(&format!("http://{addr}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Timeout), "{o:?}");
    assert_eq!(
        o.error.as_deref(),
        Some(format!("could not connect to {addr} within 0.7s").as_str())
    );
    assert!(
        o.duration >= Duration::from_millis(700) && o.duration < Duration::from_secs(3),
        "{:?}",
        o.duration
    );
    drop((sock, fillers));
}

#[tokio::test]
async fn unresolvable_name_is_dns() {
    // A 64-character label is not a valid DNS name: the system resolver refuses it without
    // sending a query, so this test asks no name server anything (nothing leaves the machine).
    let host = format!("{}.invalid", "w".repeat(64));
    let o = sender(Duration::from_secs(10))
        .post(&format!("http://{host}/hook"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Dns), "{o:?}");
    assert!(o.error.unwrap().contains(&host));
}

#[tokio::test]
async fn slow_answer_within_the_timeout_succeeds() {
    let (addr, _, _) = receiver(None).await;
    let o = sender(Duration::from_secs(3))
        .post(&format!("http://{addr}/slow"), &headers(), body())
        .await;
    assert!(o.is_success(), "{o:?}");
    assert!(o.duration >= Duration::from_millis(300));
    assert_eq!(o.response_body, "late but fine");
}

#[tokio::test]
async fn status_429_carries_retry_after() {
    let (addr, _, _) = receiver(None).await;
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/busy"), &headers(), body())
        .await;
    assert_eq!(o.http_status, Some(429));
    assert_eq!(o.error_kind, Some(ErrorKind::Status));
    assert_eq!(o.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(o.response_body, "slow down");
}

#[tokio::test]
async fn status_410_is_a_status_failure() {
    let (addr, _, _) = receiver(None).await;
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/gone"), &headers(), body())
        .await;
    assert_eq!(o.http_status, Some(410));
    assert_eq!(o.error_kind, Some(ErrorKind::Status));
    assert!(!o.is_success());
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (target, target_accepted) = raw("127.0.0.1:0", Raw::Answer).await.unwrap();
    let (addr, _, _) = receiver(Some(target)).await;
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/moved"), &headers(), body())
        .await;
    assert_eq!(o.http_status, Some(301));
    assert_eq!(o.error_kind, Some(ErrorKind::Redirect));
    assert!(!o.is_success());
    assert!(o.error.unwrap().contains("not followed"));
    settle().await;
    assert_eq!(
        target_accepted.load(Ordering::SeqCst),
        0,
        "redirect target saw a request"
    );
}

#[tokio::test]
async fn one_megabyte_response_is_read_capped_and_succeeds() {
    let (addr, _, _) = receiver(None).await;
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://{addr}/big"), &headers(), body())
        .await;
    assert!(o.is_success(), "{o:?}");
    assert_eq!(o.response_body, "x".repeat(1024));
}

// ---- egress ----

fn default_sender() -> HttpSender {
    HttpSender::new(&DeliveryConfig::default()).unwrap()
}

fn policy(f: impl FnOnce(&mut DeliveryConfig)) -> EgressPolicy {
    let mut c = DeliveryConfig::default();
    f(&mut c);
    EgressPolicy::from_config(&c)
}

#[tokio::test]
async fn default_refuses_http_to_loopback_without_connecting() {
    let (addr, accepted) = raw("127.0.0.1:0", Raw::Answer).await.unwrap();
    let o = default_sender()
        .post(
            &format!("http://user:hunter2@{addr}/services/T0/B0/token123?key=q"),
            &headers(),
            body(),
        )
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused), "{o:?}");
    assert_eq!(o.http_status, None);
    let e = o.error.unwrap();
    assert!(e.contains("allow_http"), "{e}");
    for secret in ["hunter2", "user", "token123", "key=q"] {
        assert!(!e.contains(secret), "{e}");
    }
    settle().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn loopback_http_needs_both_allow_http_and_an_address_allowance() {
    let (addr, accepted) = raw("127.0.0.1:0", Raw::Answer).await.unwrap();
    let url = format!("http://{addr}/");
    let post = |c: DeliveryConfig| {
        let url = url.clone();
        async move {
            HttpSender::new(&c)
                .unwrap()
                .post(&url, &headers(), body())
                .await
        }
    };

    let o = post(DeliveryConfig {
        allow_http: true,
        ..DeliveryConfig::default()
    })
    .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused));
    assert_eq!(
        o.error.unwrap(),
        format!(
            "{addr}: 127.0.0.1 is a loopback address; set [delivery] allow_private_networks = \
             true or add it to allow_cidrs"
        )
    );
    let o = post(DeliveryConfig {
        allow_private_networks: true,
        ..DeliveryConfig::default()
    })
    .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused));
    assert!(o.error.unwrap().contains("allow_http = true"));
    settle().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    let o = post(DeliveryConfig {
        allow_http: true,
        allow_private_networks: true,
        ..DeliveryConfig::default()
    })
    .await;
    assert!(o.is_success(), "{o:?}");
    let o = post(DeliveryConfig {
        allow_http: true,
        allow_cidrs: vec![EnvString("127.0.0.0/8".into())],
        ..DeliveryConfig::default()
    })
    .await;
    assert!(o.is_success(), "{o:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn default_refuses_metadata_private_and_ipv6_loopback_literals() {
    let s = default_sender();
    for (url, reason) in [
        (
            "https://169.254.169.254/latest/meta-data/",
            "cloud metadata",
        ),
        ("https://10.1.2.3/", "private (RFC 1918)"),
        ("https://[::1]/", "loopback"),
        ("https://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("https://[fd00:ec2::254]/", "cloud metadata"),
        ("https://100.64.1.1/", "carrier-grade NAT"),
    ] {
        let o = s.post(url, &headers(), body()).await;
        assert_eq!(o.error_kind, Some(ErrorKind::Refused), "{url}: {o:?}");
        let e = o.error.unwrap();
        assert!(e.contains(reason), "{url}: {e}");
        assert!(e.contains("allow_private_networks"), "{url}: {e}");
        // A connect attempt would take until the connect timeout (these addresses are not on
        // this machine); a refusal by the policy takes no network time. Half the timeout
        // tells the two apart on a loaded machine too.
        let connect_timeout = DeliveryConfig::default().connect_timeout.0;
        assert!(
            o.duration < connect_timeout / 2,
            "{url}: refused before connecting ({:?})",
            o.duration
        );
    }
}

#[tokio::test]
async fn ipv6_loopback_listener_sees_nothing() {
    // Hosts without IPv6 cannot bind [::1]; the literal is refused before any socket either way,
    // which the policy-level assertions below cover.
    let Some((addr, accepted)) = raw("[::1]:0", Raw::Answer).await else {
        return;
    };
    let o = default_sender()
        .post(
            &format!("https://[::1]:{}/", addr.port()),
            &headers(),
            body(),
        )
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused));
    settle().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn localhost_is_refused_after_dns_and_the_listener_sees_nothing() {
    let (addr, accepted) = raw("127.0.0.1:0", Raw::Answer).await.unwrap();
    let port = addr.port();
    let o = default_sender()
        .post(&format!("https://localhost:{port}/"), &headers(), body())
        .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused), "{o:?}");
    let e = o.error.unwrap();
    assert!(
        e.starts_with("localhost resolves only to refused addresses (a loopback address)"),
        "{e}"
    );
    // What a name resolved to is not told to whoever reads the attempt (the API's callers).
    assert!(!e.contains("127.0.0.1") && !e.contains("::1"), "{e}");
    assert!(e.contains("allow_private_networks"), "{e}");

    // allow_http alone does not open loopback either.
    let o = HttpSender::new(&DeliveryConfig {
        allow_http: true,
        ..DeliveryConfig::default()
    })
    .unwrap()
    .post(&format!("http://localhost:{port}/"), &headers(), body())
    .await;
    assert_eq!(o.error_kind, Some(ErrorKind::Refused), "{o:?}");
    settle().await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);

    // With 127.0.0.1 allowed, the resolver keeps that address (and drops ::1 if present).
    let o = sender(Duration::from_secs(5))
        .post(&format!("http://localhost:{port}/"), &headers(), body())
        .await;
    assert!(o.is_success(), "{o:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn each_address_is_allowed_only_by_its_setting() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let cidrs = |list: &[&str]| {
        let list: Vec<EnvString> = list.iter().map(|s| EnvString(s.to_string())).collect();
        policy(move |c| c.allow_cidrs = list)
    };
    let private = policy(|c| c.allow_private_networks = true);
    let default = EgressPolicy::from_config(&DeliveryConfig::default());

    for (addr, net, other_net) in [
        ("10.1.2.3", "10.1.2.0/24", "10.9.0.0/16"),
        ("169.254.169.254", "169.254.169.254/32", "169.254.0.0/24"),
        ("::1", "::1/128", "fc00::/7"),
        ("127.0.0.1", "127.0.0.0/8", "10.0.0.0/8"),
    ] {
        assert!(default.check_ip(ip(addr)).is_err(), "{addr} default");
        assert!(
            private.check_ip(ip(addr)).is_ok(),
            "{addr} allow_private_networks"
        );
        assert!(cidrs(&[net]).check_ip(ip(addr)).is_ok(), "{addr} in {net}");
        assert!(
            cidrs(&[other_net]).check_ip(ip(addr)).is_err(),
            "{addr} not in {other_net}"
        );
    }
    for url in [
        "https://10.1.2.3/",
        "https://169.254.169.254/",
        "https://[::1]/",
    ] {
        assert!(default.check_url(url).is_err(), "{url}");
        assert!(private.check_url(url).is_ok(), "{url}");
    }
    assert!(cidrs(&["10.0.0.0/8"])
        .check_url("https://10.1.2.3/x")
        .is_ok());
    // A public address needs nothing, but plain http still needs allow_http.
    assert!(default.check_url("https://93.184.215.14/").is_ok());
    assert!(private.check_url("http://93.184.215.14/").is_err());
    assert!(policy(|c| c.allow_http = true)
        .check_url("http://93.184.215.14/")
        .is_ok());
}
