//! README `previous_secret` / `previous_secret_expires_at` (Standard Webhooks): during a
//! rotation each delivery carries a signature made with the new secret and one made with the
//! previous; after `previous_secret_expires_at`, only the new one. Signatures are checked here
//! with an independent implementation of the Standard Webhooks scheme.

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};

use crate::support::daemon::{fast_delivery, Daemon};
use crate::support::receiver::{Receiver, Request};
use crate::support::TestDb;

const CURRENT: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PREVIOUS: &str = "whsec_c2VjcmV0LW9sZC1rZXktYnl0ZXM=";

/// `v1,` + base64(HMAC-SHA256(base64-decoded key, "{webhook-id}.{webhook-timestamp}.{body}")).
fn v1(secret: &str, r: &Request) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(
        format!(
            "{}.{}.",
            r.header("webhook-id"),
            r.header("webhook-timestamp")
        )
        .as_bytes(),
    );
    mac.update(&r.body);
    format!("v1,{}", b64.encode(mac.finalize().into_bytes()))
}

fn signatures(r: &Request) -> BTreeSet<String> {
    r.header("webhook-signature")
        .split(' ')
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_secret_signs_until_it_expires_then_only_the_new_one() {
    let db = TestDb::new();
    db.sql("CREATE TABLE orders (id int PRIMARY KEY, status text)");
    let rx = Receiver::ok().await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(10);
    let sub = format!(
        "[[subscriptions]]\nid = \"std\"\ntable = \"orders\"\nevents = [\"INSERT\"]\n\
         url = \"{}\"\nsecret = \"{CURRENT}\"\nsignature = \"standard\"\n\
         previous_secret = \"{PREVIOUS}\"\nprevious_secret_expires_at = \"{}\"\n",
        rx.url,
        expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let d = Daemon::start(&db, &fast_delivery(""), &sub).await;

    db.sql("INSERT INTO orders VALUES (1, 'during')");
    let during = rx.wait_for(1, Duration::from_secs(10)).await.remove(0);
    let signed_at: i64 = during.header("webhook-timestamp").parse().unwrap();
    assert!(
        signed_at < expires.timestamp(),
        "the first delivery was signed after the rotation window; the machine is too slow for this test"
    );
    assert_eq!(
        signatures(&during),
        BTreeSet::from([v1(CURRENT, &during), v1(PREVIOUS, &during)]),
        "during the rotation: both secrets sign"
    );

    // Wait for the window to close (a condition on the clock, not a guess).
    while chrono::Utc::now() <= expires + chrono::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    db.sql("INSERT INTO orders VALUES (2, 'after')");
    let after = rx.wait_for(2, Duration::from_secs(10)).await.remove(1);
    assert_eq!(after.json()["record"]["id"], 2);
    assert!(after.header("webhook-timestamp").parse::<i64>().unwrap() > expires.timestamp());
    assert_eq!(
        signatures(&after),
        BTreeSet::from([v1(CURRENT, &after)]),
        "after previous_secret_expires_at: only the new secret signs"
    );
    d.stop().await;
}
