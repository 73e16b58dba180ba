use super::*;
use crate::model::egress::EgressPolicy;

const GOOD: &str = r#"
[source]
url = "postgres://app:pw@localhost:5432/app?sslmode=prefer"

[project]
id = "my-project"

[[subscriptions]]
id = "orders-completed"
table = "orders"
events = ["INSERT", "UPDATE", "DELETE"]
url = "https://example.com/hooks/orders"
secret = "${WALHOOK_TEST_SECRET}"
filter = { status = "completed", total = { gte = 100 } }
select = ["id", "total", "status"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    std::env::set_var("WALHOOK_TEST_SECRET", "whsec_test");
    Config::parse(text, "config.toml")
}

#[test]
fn parses_the_documented_shape_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.source.slot.as_str(), "walhook");
    assert_eq!(c.source.publication.as_str(), "walhook");
    assert!(c.source.manage_replica_identity);
    assert_eq!(c.project.environment.as_str(), "master");
    let s = c.subscriptions().next().unwrap();
    assert_eq!(s.secret.expose(), "whsec_test");
    assert!(s.active);
    assert_eq!(
        s.events,
        vec![EventKind::Insert, EventKind::Update, EventKind::Delete]
    );
    let f = s.filter.as_ref().unwrap();
    assert_eq!(f.conditions.len(), 2);
    assert_eq!(f.conditions[1].op, Op::Gte);
    assert_eq!(c.pg_config().get_application_name(), Some("walhook"));
}

#[test]
fn secrets_never_print() {
    let c = parse(GOOD).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("whsec_test"), "{dbg}");
    assert!(!dbg.contains(":pw@"), "{dbg}");
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn unknown_key_names_key_and_line() {
    let e = err(&GOOD.replace("select =", "selcet ="));
    assert!(e.contains("line 15") && e.contains("selcet"), "{e}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let e = err(&GOOD.replace("[project]\nid = \"my-project\"", "[project]\nid = 5"));
    assert!(e.contains("line 6") && e.contains("id"), "{e}");
    let e = err(&GOOD.replace("\"DELETE\"]", "\"UPSERT\"]"));
    assert!(e.contains("line 11") && e.contains("UPSERT"), "{e}");
}

#[test]
fn missing_env_var_names_it_and_the_line() {
    let e = err(&GOOD.replace("WALHOOK_TEST_SECRET", "WALHOOK_SURELY_UNSET_VAR"));
    assert!(
        e.contains("WALHOOK_SURELY_UNSET_VAR is not set") && e.contains("line 13"),
        "{e}"
    );
}

#[test]
fn semantic_errors_name_the_subscription() {
    let dup = format!(
        "{GOOD}\n{}",
        &GOOD[GOOD.find("[[subscriptions]]").unwrap()..]
    );
    let e = err(&dup);
    assert!(
        e.contains("duplicate subscription id") && e.contains("orders-completed"),
        "{e}"
    );
    let e = err(&GOOD.replace("https://example.com", "ftp://example.com"));
    assert!(e.contains(".url") && e.contains("https://"), "{e}");
    let e = err(&GOOD.replace("table = \"orders\"", "table = \"a.b.c\""));
    assert!(e.contains(".table") && e.contains("a.b.c"), "{e}");
    let e = err(&GOOD.replace("table = \"orders\"", "table = \"pg_catalog.pg_authid\""));
    assert!(
        e.contains(".table") && e.contains("pg_catalog.pg_authid is a system catalog table"),
        "{e}"
    );
    let e = err(&GOOD.replace("[\"INSERT\", \"UPDATE\", \"DELETE\"]", "[]"));
    assert!(e.contains(".events"), "{e}");
    let e = err(&GOOD.replace("{ gte = 100 }", "{ between = 100 }"));
    assert!(e.contains("filter.total") && e.contains("line 14"), "{e}");
}

#[test]
fn missing_required_sections() {
    let e = err("[project]\nid = \"p\"\n");
    assert!(e.contains("source"), "{e}");
}

#[test]
fn table_names() {
    assert_eq!(
        TableName::parse("orders").unwrap().to_string(),
        "public.orders"
    );
    assert_eq!(
        TableName::parse("shop.orders").unwrap().display_name(),
        "shop.orders"
    );
    assert_eq!(TableName::parse("orders").unwrap().display_name(), "orders");
    assert!(TableName::parse("we\"ird").unwrap_err().contains("invalid"));
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
}

#[test]
fn default_delivery_is_the_safe_egress_default() {
    assert_eq!(
        EgressPolicy::from_config(&DeliveryConfig::default()),
        EgressPolicy::default()
    );
}

#[test]
fn batch_is_off_by_default_and_checked() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.subscriptions().next().unwrap().batch, None);
    let with = |b: &str| GOOD.replace("select =", &format!("batch = {b}\nselect ="));
    let c = parse(&with(r#"{ max_events = 100, max_wait = "20ms" }"#)).unwrap();
    let b = c.subscriptions().next().unwrap().batch.unwrap();
    assert_eq!(
        (b.max_events, b.max_wait),
        (100, std::time::Duration::from_millis(20))
    );
    let c = parse(&with("{ max_events = 5 }")).unwrap();
    let b = c.subscriptions().next().unwrap().batch.unwrap();
    assert_eq!(b.max_wait, crate::model::options::DEFAULT_BATCH_WAIT);
    let e = err(&with("{ max_events = 0 }"));
    assert!(e.contains("batch") && e.contains("max_events"), "{e}");
    let e = err(&with(r#"{ max_events = 5, max_wait = "1m" }"#));
    assert!(e.contains("batch") && e.contains("max_wait"), "{e}");
    let e = err(&with("{ max_event = 5 }"));
    assert!(e.contains("max_event"), "{e}");
}

#[test]
fn backfill_on_create_is_off_by_default_and_listed_by_id() {
    assert!(parse(GOOD).unwrap().backfill_on_create().is_empty());
    let second = GOOD
        .replace("id = \"orders-completed\"", "id = \"second\"")
        .replace("[source]", "");
    let second = &second[second.find("[[subscriptions]]").unwrap()..];
    let text = format!(
        "{}backfill = true\n{second}backfill = false\n",
        GOOD.trim_end().to_string() + "\n"
    );
    let c = parse(&text).unwrap();
    assert_eq!(c.subscriptions().len(), 2);
    assert_eq!(c.backfill_on_create(), ["orders-completed"]);
    assert!(err(&GOOD.replace("select =", "backfill = \"yes\"\nselect =")).contains("backfill"));
}

#[test]
fn slot_loss_settings_default_and_are_checked() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.source.on_slot_lost, OnSlotLost::Stop);
    assert_eq!(c.source.slot_wal_warn_fraction, 0.8);
    let with = |extra: &str| GOOD.replacen("[source]\n", &format!("[source]\n{extra}\n"), 1);
    let c = parse(&with(
        "on_slot_lost = \"recover\"\nslot_wal_warn_fraction = 0.5",
    ))
    .unwrap();
    assert_eq!(c.source.on_slot_lost, OnSlotLost::Recover);
    assert_eq!(c.source.slot_wal_warn_fraction, 0.5);
    let e = parse(&with("on_slot_lost = \"drop\""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("on_slot_lost") || e.contains("unknown variant"),
        "{e}"
    );
    for bad in ["0", "1.5", "-0.1"] {
        let e = parse(&with(&format!("slot_wal_warn_fraction = {bad}")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("source.slot_wal_warn_fraction"), "{e}");
    }
}

#[test]
fn telemetry_is_off_by_default_and_checked() {
    let c = parse(GOOD).unwrap();
    assert!(c.telemetry.otlp_endpoint.is_none());
    assert_eq!(c.telemetry.service_name.as_str(), "walhook");
    let with = |section: &str| format!("{GOOD}\n[telemetry]\n{section}\n");
    let c = parse(&with("otlp_endpoint = \"http://127.0.0.1:4318\"")).unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_ref().map(|e| e.as_str()),
        Some("http://127.0.0.1:4318")
    );
    let e = err(&with("otlp_endpoint = \"127.0.0.1:4318\""));
    assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    let e = err(&with("otlp_endpoint = \"ftp://collector\""));
    assert!(
        e.contains("telemetry.otlp_endpoint: expected an http"),
        "{e}"
    );
    let e = err(&with("export_interval = \"1ms\""));
    assert!(e.contains("telemetry.export_interval"), "{e}");
    let e = err(&with("endpoint = \"http://x\""));
    assert!(e.contains("endpoint"), "{e}");
}
