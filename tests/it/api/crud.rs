//! The Archie endpoints: create, list, get, update, delete; auth and validation.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::*;

#[tokio::test]
async fn seed_curl_example_creates_a_webhook_in_the_archie_shape() {
    let api = start(true).await;
    // The curl example's path includes Archie's gateway prefix; both forms are served.
    let r = api.seed_create("/gw/api/rest/_webhooks").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let w = r.json();
    let id = w["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("wh_") && uuid::Uuid::parse_str(&id[3..]).is_ok(),
        "{id}"
    );
    assert_eq!(w["table"], "orders");
    assert_eq!(w["events"], json!(["INSERT", "UPDATE", "DELETE"]));
    assert_eq!(w["url"], "https://127.0.0.1:9/webhooks/orders");
    assert_eq!(w["active"], true);
    assert_eq!(w["source"], "api");
    assert_eq!(w["format"], "json");
    assert_eq!(w["signature"], "archie");
    assert!(w["filter"].is_null() && w["select"].is_null());
    for t in ["createdAt", "updatedAt"] {
        let s = w[t].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'),
            "{s}"
        );
    }
    assert!(api.changed().await, "create must notify the daemon");
    let stored = api.db.sql(&format!(
        "SELECT source || ' ' || secret FROM walhook.subscriptions WHERE id = '{id}'"
    ));
    assert_eq!(stored, "api whsec_your_signing_secret");

    let r = api.seed_create("/api/rest/_webhooks").await;
    assert_eq!(r.status, StatusCode::CREATED);

    // GET /{id}: the "Inspecting deliveries" shape.
    api.delivery(&id, "evt_abc123", "delivered", "");
    let dead = api.delivery(&id, "evt_abc124", "dead", "");
    let r = api
        .call(Method::GET, &format!("/api/rest/_webhooks/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(keys(&v), ["deliveries", "webhook"]);
    assert_eq!(v["webhook"]["id"], id.as_str());
    let d = v["deliveries"].as_array().unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(
        keys(&d[0]),
        [
            "attempts",
            "createdAt",
            "eventId",
            "httpStatus",
            "id",
            "status"
        ]
    );
    // Newest first.
    assert_eq!(d[0]["id"], format!("del_{dead}"));
    assert_eq!(d[0]["eventId"], "evt_abc124");
    assert_eq!(d[0]["status"], "dead");
    assert_eq!(d[0]["httpStatus"], 500);
    assert_eq!(d[0]["attempts"], 5);
    assert_eq!(d[1]["status"], "delivered");

    let r = api.call(Method::GET, "/api/rest/_webhooks", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json();
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 2);
    for w in list["webhooks"].as_array().unwrap() {
        assert!(w.get("secret").is_none() && w.get("previous_secret").is_none());
    }
}

#[tokio::test]
async fn auth_and_identity_errors() {
    let api = start(true).await;
    let path = "/api/rest/_webhooks";
    let bearer = format!("Bearer {TOKEN}");
    type Case<'a> = (Vec<(&'a str, &'a str)>, StatusCode, Option<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![("X-Project-ID", PROJECT), ("environment", ENV)],
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
        ),
        (
            vec![
                ("Authorization", "Bearer wrong"),
                ("X-Project-ID", PROJECT),
                ("environment", ENV),
            ],
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
        ),
        (
            vec![
                ("Authorization", TOKEN),
                ("X-Project-ID", PROJECT),
                ("environment", ENV),
            ],
            StatusCode::UNAUTHORIZED,
            Some("Authorization"),
        ),
        (
            vec![("Authorization", &bearer), ("environment", ENV)],
            StatusCode::BAD_REQUEST,
            Some("X-Project-ID"),
        ),
        (
            vec![
                ("Authorization", &bearer),
                ("X-Project-ID", "other"),
                ("environment", ENV),
            ],
            StatusCode::FORBIDDEN,
            Some("X-Project-ID"),
        ),
        (
            vec![("Authorization", &bearer), ("X-Project-ID", PROJECT)],
            StatusCode::BAD_REQUEST,
            Some("environment"),
        ),
        (
            vec![
                ("Authorization", &bearer),
                ("X-Project-ID", PROJECT),
                ("environment", "staging"),
            ],
            StatusCode::FORBIDDEN,
            Some("environment"),
        ),
        (
            vec![
                ("Authorization", &bearer),
                ("X-Project-ID", PROJECT),
                ("environment", ENV),
            ],
            StatusCode::OK,
            None,
        ),
    ];
    for (headers, status, field) in cases {
        let r = api.send(Method::GET, path, &headers, None).await;
        assert_eq!(r.status, status, "{headers:?}: {}", r.text);
        if let Some(f) = field {
            assert_eq!(r.json()["field"], f, "{}", r.text);
            assert!(r.json()["error"].is_string());
        }
    }
    let r = api.send(Method::GET, path, &[], None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Body projectId / environment must match too.
    let r = api.create(body(json!({"projectId": "other"}))).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::FORBIDDEN, json!("projectId"))
    );
    let r = api.create(body(json!({"environment": "staging"}))).await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::FORBIDDEN, json!("environment"))
    );
    // Without the header, the body must carry the environment.
    let mut b = body(json!({}));
    b.as_object_mut().unwrap().remove("environment");
    let r = api
        .send(
            Method::POST,
            path,
            &[("Authorization", &bearer), ("X-Project-ID", PROJECT)],
            Some(&b.to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (StatusCode::BAD_REQUEST, json!("environment"))
    );
    // Replay and test sends have no body environment: the header is required.
    let r = api
        .send(
            Method::POST,
            "/api/rest/_webhooks/wh_x/replay",
            &[("Authorization", &bearer), ("X-Project-ID", PROJECT)],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    // Operations need no token.
    for p in ["/healthz", "/metrics"] {
        assert_eq!(
            api.send(Method::GET, p, &[], None).await.status,
            StatusCode::OK
        );
    }
    // Unknown paths: JSON 404.
    let r = api.send(Method::GET, "/nope", &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].is_string());
}

#[tokio::test]
async fn validation_errors_are_400_or_422_naming_the_field() {
    let api = start(true).await;
    api.db.sql("CREATE TABLE nokey(a int, b text)");
    api.db.sql(
        "CREATE TABLE gen (id int PRIMARY KEY, price numeric,
                           twice int GENERATED ALWAYS AS (id * 2) STORED)",
    );
    let bad_request = [
        ("{", None),
        ("[1]", None),
        (
            r#"{"projectId": "your-project-id", "environment": "master"}"#,
            Some("table"),
        ),
        (
            &*body(json!({"events": "INSERT"})).to_string(),
            Some("events"),
        ),
        (&*body(json!({"active": "yes"})).to_string(), Some("active")),
        (&*body(json!({"secret": 42})).to_string(), Some("secret")),
        (&*body(json!({"filter": [1]})).to_string(), Some("filter")),
        (&*body(json!({"select": "id"})).to_string(), Some("select")),
        (
            &*body(json!({"tabel": "orders"})).to_string(),
            Some("tabel"),
        ),
    ];
    for (b, field) in bad_request {
        let r = api.call(Method::POST, "/api/rest/_webhooks", Some(b)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{b}: {}", r.text);
        assert_eq!(r.json()["field"].as_str(), field, "{}", r.text);
    }
    let unprocessable = [
        (json!({"table": "missing"}), "table", "does not exist"),
        (json!({"table": "a.b.c"}), "table", "invalid table name"),
        (
            json!({"table": "walhook.deliveries"}),
            "table",
            "outbox schema",
        ),
        (json!({"events": []}), "events", "at least one"),
        (json!({"events": ["UPSERT"]}), "events", "UPSERT"),
        (
            json!({"filter": {"nope": "x"}}),
            "filter",
            "no column \"nope\"",
        ),
        (
            json!({"filter": {"status": {"like": "x"}}}),
            "filter",
            "unknown operator",
        ),
        (json!({"filter": {"status": "${HOME}"}}), "filter", "${"),
        (
            json!({"select": ["id", "nope"]}),
            "select",
            "no column \"nope\"",
        ),
        (json!({"select": []}), "select", "empty"),
        // Before PostgreSQL 18 no generated column is replicated: said so, not "no column".
        (
            json!({"table": "gen", "select": ["id", "twice"]}),
            "select",
            "column \"twice\" of table public.gen (used in select) is a generated column",
        ),
        (
            json!({"table": "gen", "filter": {"twice": 4}}),
            "filter",
            "use the columns it is computed from instead: id, price",
        ),
        (json!({"url": "http://127.0.0.1:9/h"}), "url", "plain http"),
        (json!({"url": "ftp://127.0.0.1:9/h"}), "url", "https"),
        (
            json!({"url": "https://169.254.169.254/x"}),
            "url",
            "allow_private_networks",
        ),
        (json!({"url": "https://10.1.2.3/h"}), "url", "private"),
        (json!({"url": "not a url"}), "url", "url"),
        (json!({"secret": ""}), "secret", "empty"),
        (json!({"signature": "standard"}), "secret", "whsec_"),
        (json!({"signature": "nope"}), "signature", "archie"),
        (json!({"format": "xml"}), "format", "json"),
        (
            json!({"previous_secret": "whsec_old_secret"}),
            "previous_secret_expires_at",
            "required",
        ),
        (
            json!({"previous_secret_expires_at": "soon", "previous_secret": "x"}),
            "previous_secret_expires_at",
            "RFC 3339",
        ),
    ];
    for (o, field, text) in unprocessable {
        let r = api.create(body(o.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{o}: {}",
            r.text
        );
        let v = r.json();
        assert_eq!(v["field"], field, "{o}: {}", r.text);
        assert!(
            v["error"].as_str().unwrap().contains(text),
            "{o}: {}",
            r.text
        );
    }
    // Valid extras are accepted and echoed (but never the secrets).
    let r = api
        .create(body(json!({
            "filter": {"status": "completed"},
            "select": ["id", "total", "status"],
            "events": ["UPDATE"],
            "format": "slack",
            "active": false,
            "previous_secret": "whsec_old_secret",
            "previous_secret_expires_at": "2030-01-01T00:00:00Z",
        })))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let w = r.json();
    assert_eq!(w["filter"], json!({"status": {"eq": "completed"}}));
    assert_eq!(w["select"], json!(["id", "total", "status"]));
    assert_eq!(
        (w["format"].clone(), w["active"].clone()),
        (json!("slack"), json!(false))
    );
    assert_eq!(w["previousSecretExpiresAt"], "2030-01-01T00:00:00Z");

    // A table without a primary key is fine when walhook manages replica identity…
    let r = api
        .create(body(json!({"table": "nokey", "events": ["INSERT"]})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // …and the API never alters the source database itself.
    assert_eq!(
        api.db
            .sql("SELECT relreplident FROM pg_class WHERE relname = 'nokey'"),
        "d"
    );
}

#[tokio::test]
async fn without_managed_replica_identity_a_table_needs_full() {
    let api = start(false).await;
    api.db.sql("CREATE TABLE nokey(a int)");
    let r = api.create(body(json!({"table": "nokey"}))).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let e = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        e.contains("ALTER TABLE \"public\".\"nokey\" REPLICA IDENTITY FULL")
            && e.contains("no primary key"),
        "{e}"
    );
    api.db.sql("ALTER TABLE nokey REPLICA IDENTITY FULL");
    let r = api.create(body(json!({"table": "nokey"}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
}

#[tokio::test]
async fn patch_delete_and_config_owned_subscriptions() {
    let api = start(true).await;
    let w = api.create(body(json!({}))).await.json();
    let id = w["id"].as_str().unwrap();
    assert!(api.changed().await);
    let path = format!("/api/rest/_webhooks/{id}");

    let r = api
        .call(
            Method::PATCH,
            &path,
            Some(r#"{"url": "https://127.0.0.2:9/h", "active": false, "secret": "whsec_rotated_secret", "filter": {"status": "completed"}}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["url"].clone(), v["active"].clone()),
        (json!("https://127.0.0.2:9/h"), json!(false))
    );
    assert_eq!(v["table"], "orders", "fields not in the body are kept");
    assert_eq!(v["filter"], json!({"status": {"eq": "completed"}}));
    assert!(api.changed().await, "update must notify the daemon");
    assert_eq!(
        api.db.sql(&format!(
            "SELECT secret FROM walhook.subscriptions WHERE id = '{id}'"
        )),
        "whsec_rotated_secret"
    );
    // null clears a nullable field; PATCH is validated like create.
    let r = api
        .call(Method::PATCH, &path, Some(r#"{"filter": null}"#))
        .await;
    assert_eq!(
        (r.status, r.json()["filter"].clone()),
        (StatusCode::OK, Value::Null)
    );
    let r = api
        .call(Method::PATCH, &path, Some(r#"{"select": ["nope"]}"#))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = api
        .call(Method::PATCH, &path, Some(r#"{"environment": "staging"}"#))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api.call(Method::PATCH, &path, Some("{nope")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // A 410 Gone deactivation is lifted by active = true.
    api.db.sql(&format!(
        "UPDATE walhook.subscriptions SET deactivated_at = now(), deactivated_reason = 'receiver answered 410 Gone' WHERE id = '{id}'"
    ));
    let r = api.call(Method::GET, &path, None).await.json();
    assert_eq!(
        r["webhook"]["deactivatedReason"],
        "receiver answered 410 Gone"
    );
    let r = api
        .call(Method::PATCH, &path, Some(r#"{"active": true}"#))
        .await
        .json();
    assert_eq!(
        (r["active"].clone(), r["deactivatedReason"].clone()),
        (json!(true), Value::Null)
    );

    for m in [Method::GET, Method::PATCH, Method::DELETE] {
        let r = api
            .call(m.clone(), "/api/rest/_webhooks/wh_nope", Some("{}"))
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m}: {}", r.text);
    }

    // DELETE removes the subscription and its deliveries.
    api.delivery(id, "evt_1", "pending", "");
    // The calls above left a notification; only one sent by DELETE may satisfy the check.
    api.forget_changes().await;
    let r = api.call(Method::DELETE, &path, None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::NO_CONTENT, ""));
    assert!(api.changed().await, "delete must notify the daemon");
    assert_eq!(
        api.call(Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.call(Method::DELETE, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        api.db.sql(&format!(
            "SELECT count(*) FROM walhook.delivery_states WHERE subscription_id = '{id}'"
        )),
        "0"
    );

    // Subscriptions from config.toml: listed, read-only.
    let config = api.db.config(
        &crate::support::sub("from-config", "orders", "[\"INSERT\"]", "")
            .replace("whsec_test", "config-secret-value"),
    );
    let mut client = api.db.client().await;
    let subs: Vec<_> = config.subscriptions().collect();
    walhook::outbox::sync_config_subscriptions(&mut client, &Schema::new("walhook"), &subs)
        .await
        .unwrap();
    let list = api
        .call(Method::GET, "/api/rest/_webhooks", None)
        .await
        .json();
    assert_eq!(list["webhooks"][0]["id"], "from-config");
    assert_eq!(list["webhooks"][0]["source"], "config");
    for m in [Method::PATCH, Method::DELETE] {
        let r = api
            .call(
                m,
                "/api/rest/_webhooks/from-config",
                Some(r#"{"active": false}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        let e = r.json()["error"].as_str().unwrap().to_string();
        assert!(e.contains("config.toml") && e.contains("SIGHUP"), "{e}");
    }
}
