//! The body a subscription receives, rendered from the stored Archie payload.
//!
//! Guarantees:
//! - `json`: the stored payload bytes, unchanged, so the signature covers exactly what the
//!   receiver reads (no re-serialisation, no number rewriting);
//! - `slack`: an incoming-webhook message: a plain `text` one-liner (used for notifications) and
//!   Block Kit `blocks` with table, event, key and changed fields; `&`, `<`, `>` are escaped as
//!   Slack requires, and every text stays within Slack's block limits;
//! - `discord`: one embed titled with the event and table, coloured by event (green INSERT,
//!   yellow UPDATE, red DELETE, blue otherwise), with `Key` and `Changed fields` fields and the
//!   event timestamp; every text stays within Discord's embed limits;
//! - `cloudevents`: a CloudEvents 1.0 event in structured JSON mode: `specversion` "1.0", `id`
//!   the event id, `source` `walhook/<project>/<environment>`, `type`
//!   `walhook.<table>.<insert|update|delete>`, `time` the commit time, `subject` the row's key
//!   (absent without one), `datacontenttype` and `data`: the stored payload bytes, unchanged;
//! - under a subscription's `select`, the row's key (Slack/Discord `Key` and one-liner, the
//!   CloudEvents `subject`) is shown only when each key value is also the value of a selected
//!   column in the payload's `record`; otherwise `Key` reads "(not in select)" and `subject` is
//!   absent, so no value of an unselected column leaves through these formats;
//! - a subscription's `template` replaces the body with its rendering ([`crate::model::template`]);
//!   compiled templates are cached by source, in a bounded cache;
//! - long values are cut on a character boundary and end with "…"; lengths are counted in
//!   UTF-16 units, the unit both services count in, so a cut text is never rejected;
//! - a payload or key that cannot be read gives a [`FormatError`] naming the problem, never a
//!   panic. Row values are never shown: chat channels are wider audiences than endpoints.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Format;
use crate::model::template::Template;
use crate::model::Subscription;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the stored payload cannot be rendered: {0}")]
    Payload(String),
    #[error("the ordering key is not a JSON array of key values: {0}")]
    Key(String),
    #[error("the template: {0}")]
    Template(String),
}

/// The payload fields the chat formats show; `record` and `data` are skipped unread.
#[derive(Deserialize)]
struct Summary {
    id: String,
    timestamp: String,
    #[serde(default)]
    table: Option<String>,
    event: String,
    #[serde(default)]
    changed_fields: Vec<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    environment: Option<String>,
}

// Slack: section text 3000, a field's text 2000, at most 10 fields; `text` itself is accepted up
// to 40 000 but only its start is shown in notifications.
const SLACK_TEXT: usize = 3000;
const SLACK_FIELD: usize = 2000;
const SLACK_CONTEXT: usize = 3000;
// Discord: title 256, field value 1024, footer 2048, 6000 for the whole embed.
const DISCORD_TITLE: usize = 256;
const DISCORD_FIELD: usize = 1024;
const DISCORD_FOOTER: usize = 256;

const COLOR_INSERT: u32 = 0x2ECC71;
const COLOR_UPDATE: u32 = 0xF1C40F;
const COLOR_DELETE: u32 = 0xE74C3C;
const COLOR_OTHER: u32 = 0x3498DB;

/// Compiled templates by source; cleared when full (a handful of subscriptions use templates).
static TEMPLATES: Mutex<Option<HashMap<String, Arc<Template>>>> = Mutex::new(None);
const TEMPLATE_CACHE: usize = 256;

fn compiled(source: &str) -> Result<Arc<Template>, FormatError> {
    let mut cache = TEMPLATES.lock().unwrap_or_else(|e| e.into_inner());
    let map = cache.get_or_insert_with(HashMap::new);
    if let Some(t) = map.get(source) {
        return Ok(t.clone());
    }
    let t = Arc::new(Template::compile(source).map_err(|e| FormatError::Template(e.0))?);
    if map.len() >= TEMPLATE_CACHE {
        map.clear();
    }
    map.insert(source.to_string(), t.clone());
    Ok(t)
}

/// The body `sub` receives: its template's rendering when it has one, else its format's.
pub fn render_for(sub: &Subscription, payload: &str, key: &str) -> Result<Vec<u8>, FormatError> {
    match &sub.template {
        Some(source) => compiled(source)?
            .render(payload, key, &sub.id)
            .map(String::into_bytes)
            .map_err(|e| FormatError::Template(e.0)),
        None => render_selected(sub.format, payload, key, sub.select.as_deref()),
    }
}

/// Renders the body for `format`. `key` is the ordering key (a JSON array of primary-key values,
/// or "" for a table without one).
pub fn render(format: Format, payload: &str, key: &str) -> Result<Vec<u8>, FormatError> {
    render_selected(format, payload, key, None)
}

/// [`render`] for a subscription with `select`: the key is shown (Slack/Discord `Key`, the
/// CloudEvents `subject`) only when each of its values is also the value of a column in the
/// payload's (select-narrowed) `record`, so no value of an unselected column leaves the
/// database through a chat message or an envelope.
pub fn render_selected(
    format: Format,
    payload: &str,
    key: &str,
    select: Option<&[String]>,
) -> Result<Vec<u8>, FormatError> {
    let slack = match format {
        Format::Json => return Ok(payload.as_bytes().to_vec()),
        Format::Slack => true,
        Format::Discord => false,
        Format::CloudEvents => return cloudevent(payload, key, select),
    };
    let s: Summary =
        serde_json::from_str(payload).map_err(|e| FormatError::Payload(e.to_string()))?;
    let table = match s.table.as_deref() {
        Some(t) => t,
        // A ping may come from a subscription without a table; a row change never does.
        None if s.event == "PING" => "",
        None => return Err(FormatError::Payload("missing field `table`".into())),
    };
    let shown = shown_key(payload, key, select)?;
    let key = match &shown {
        Shown::Key(k) => Some(k.as_str()),
        Shown::None => None,
        Shown::NotSelected => Some(NOT_SELECTED),
    };
    let view = View {
        s: &s,
        table,
        key,
        key_hidden: matches!(shown, Shown::NotSelected),
    };
    let value = if slack { view.slack() } else { view.discord() };
    serde_json::to_vec(&value).map_err(|e| FormatError::Payload(e.to_string()))
}

/// The CloudEvents 1.0 structured-mode envelope around the payload bytes.
fn cloudevent(payload: &str, key: &str, select: Option<&[String]>) -> Result<Vec<u8>, FormatError> {
    let s: Summary =
        serde_json::from_str(payload).map_err(|e| FormatError::Payload(e.to_string()))?;
    let q = |v: &str| serde_json::to_string(v).expect("strings always serialize");
    let event = s.event.to_ascii_lowercase();
    let kind = match s.table.as_deref() {
        Some(t) => format!("walhook.{t}.{event}"),
        None => format!("walhook.{event}"),
    };
    let source = format!(
        "walhook/{}/{}",
        s.project_id.as_deref().unwrap_or(""),
        s.environment.as_deref().unwrap_or("")
    );
    let mut out = String::with_capacity(payload.len() + 256);
    out.push_str("{\"specversion\":\"1.0\",\"id\":");
    out.push_str(&q(&s.id));
    out.push_str(",\"source\":");
    out.push_str(&q(&source));
    out.push_str(",\"type\":");
    out.push_str(&q(&kind));
    out.push_str(",\"time\":");
    out.push_str(&q(&s.timestamp));
    if let Shown::Key(subject) = shown_key(payload, key, select)? {
        out.push_str(",\"subject\":");
        out.push_str(&q(&subject));
    }
    out.push_str(",\"datacontenttype\":\"application/json\",\"data\":");
    out.push_str(payload);
    out.push('}');
    Ok(out.into_bytes())
}

/// What the Key field shows under `select` when a key value is not a selected column's value.
const NOT_SELECTED: &str = "(not in select)";

enum Shown {
    Key(String),
    /// The table has no primary key.
    None,
    /// A key value is not among the selected columns' values.
    NotSelected,
}

/// The record of a payload, read only when a subscription has `select`.
#[derive(Deserialize)]
struct RecordOnly {
    #[serde(default)]
    record: serde_json::Map<String, Value>,
}

fn shown_key(payload: &str, key: &str, select: Option<&[String]>) -> Result<Shown, FormatError> {
    let Some(display) = key_display(key)? else {
        return Ok(Shown::None);
    };
    if select.is_none() {
        return Ok(Shown::Key(display));
    }
    let values: Vec<Value> =
        serde_json::from_str(key).map_err(|e| FormatError::Key(e.to_string()))?;
    let r: RecordOnly =
        serde_json::from_str(payload).map_err(|e| FormatError::Payload(e.to_string()))?;
    let all_selected = values.iter().all(|k| r.record.values().any(|v| v == k));
    Ok(if all_selected {
        Shown::Key(display)
    } else {
        Shown::NotSelected
    })
}

/// `["42"]` → `42`, `[42,"a"]` → `42, a`, `""` → None.
fn key_display(key: &str) -> Result<Option<String>, FormatError> {
    if key.is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(key).map_err(|e| FormatError::Key(e.to_string()))?;
    let Value::Array(items) = v else {
        return Err(FormatError::Key(format!(
            "expected an array, got {}",
            kind(&v)
        )));
    };
    let parts: Vec<String> = items
        .iter()
        .map(|i| match i {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    Ok(Some(parts.join(", ")))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

struct View<'a> {
    s: &'a Summary,
    table: &'a str,
    key: Option<&'a str>,
    /// The key is [`NOT_SELECTED`]: left out of the one-liner.
    key_hidden: bool,
}

impl View<'_> {
    /// `UPDATE on orders (key 42): status, total changed`
    fn one_liner(&self) -> String {
        let mut out = self.title();
        if let Some(k) = self.key.filter(|_| !self.key_hidden) {
            out.push_str(" (key ");
            out.push_str(k);
            out.push(')');
        }
        if !self.s.changed_fields.is_empty() {
            out.push_str(": ");
            out.push_str(&self.s.changed_fields.join(", "));
            out.push_str(" changed");
        }
        out
    }

    /// `UPDATE on orders`, or just `PING` for a ping without a table.
    fn title(&self) -> String {
        if self.table.is_empty() {
            self.s.event.clone()
        } else {
            format!("{} on {}", self.s.event, self.table)
        }
    }

    fn key_text(&self) -> &str {
        self.key.unwrap_or("(no primary key)")
    }

    fn changed_text(&self) -> String {
        if self.s.changed_fields.is_empty() {
            "—".to_string()
        } else {
            self.s.changed_fields.join(", ")
        }
    }

    fn slack(&self) -> Value {
        let field = |label: &str, value: &str| {
            let mut text = format!("*{label}*\n");
            let budget = SLACK_FIELD - utf16_len(&text);
            text.push_str(&slack_escape_cut(value, budget));
            json!({"type": "mrkdwn", "text": text})
        };
        let table = if self.table.is_empty() {
            "—"
        } else {
            self.table
        };
        let context = format!("{} · {}", self.s.id, self.s.timestamp);
        json!({
            "text": slack_escape_cut(&self.one_liner(), SLACK_TEXT),
            "blocks": [
                {
                    "type": "section",
                    "fields": [
                        field("Table", table),
                        field("Event", &self.s.event),
                        field("Key", self.key_text()),
                        field("Changed fields", &self.changed_text()),
                    ]
                },
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": slack_escape_cut(&context, SLACK_CONTEXT)}
                    ]
                }
            ]
        })
    }

    fn discord(&self) -> Value {
        let color = match self.s.event.as_str() {
            "INSERT" => COLOR_INSERT,
            "UPDATE" => COLOR_UPDATE,
            "DELETE" => COLOR_DELETE,
            _ => COLOR_OTHER,
        };
        json!({
            "embeds": [{
                "title": cut(&self.title(), DISCORD_TITLE),
                "color": color,
                "fields": [
                    {"name": "Key", "value": cut(self.key_text(), DISCORD_FIELD), "inline": true},
                    {
                        "name": "Changed fields",
                        "value": cut(&self.changed_text(), DISCORD_FIELD),
                        "inline": true
                    }
                ],
                "footer": {"text": cut(&self.s.id, DISCORD_FOOTER)},
                "timestamp": self.s.timestamp,
            }]
        })
    }
}

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// `s` cut to at most `max` UTF-16 units, ending with "…" when cut.
fn cut(s: &str, max: usize) -> String {
    cut_with(s, max, |c, out| out.push(c), |c| c.len_utf16())
}

/// Slack mrkdwn: `&`, `<`, `>` escaped, then cut to `max` UTF-16 units, never inside an entity.
fn slack_escape_cut(s: &str, max: usize) -> String {
    cut_with(
        s,
        max,
        |c, out| match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        },
        |c| match c {
            '&' => 5,
            '<' | '>' => 4,
            c => c.len_utf16(),
        },
    )
}

fn cut_with(
    s: &str,
    max: usize,
    emit: impl Fn(char, &mut String),
    cost: impl Fn(char) -> usize,
) -> String {
    let total: usize = s.chars().map(&cost).sum();
    let mut out = String::with_capacity(s.len().min(max * 4) + 3);
    if total <= max {
        s.chars().for_each(|c| emit(c, &mut out));
        return out;
    }
    // "…" is one UTF-16 unit.
    let budget = max.saturating_sub(1);
    let mut used = 0;
    for c in s.chars() {
        let n = cost(c);
        if used + n > budget {
            break;
        }
        used += n;
        emit(c, &mut out);
    }
    if max > 0 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPDATE: &str = r#"{"id":"evt_00000000016B3D28_3","timestamp":"2025-12-15T15:00:00Z","project_id":"p","environment":"master","table":"orders","event":"UPDATE","record":{"id":42,"total":99.50,"status":"paid"},"data":{"id":42,"total":99.50,"status":"paid"},"changed_fields":["status","total"]}"#;
    const INSERT: &str = r#"{"id":"evt_1","timestamp":"2025-12-15T15:00:00Z","project_id":"p","environment":"master","table":"public.line_items","event":"INSERT","record":{},"data":{},"changed_fields":[]}"#;
    const DELETE: &str = r#"{"id":"evt_2","timestamp":"2025-12-15T15:00:01Z","project_id":"p","environment":"master","table":"a<b>&c","event":"DELETE","record":{},"data":{},"changed_fields":[]}"#;
    const PING: &str = r#"{"id":"evt_ping","timestamp":"2025-12-15T15:00:02Z","project_id":"p","environment":"master","table":"orders","event":"PING","record":{},"data":{},"changed_fields":[]}"#;

    fn render_str(f: Format, p: &str, k: &str) -> String {
        String::from_utf8(render(f, p, k).unwrap()).unwrap()
    }

    #[test]
    fn json_is_the_payload_unchanged() {
        assert_eq!(
            render(Format::Json, UPDATE, "[42]").unwrap(),
            UPDATE.as_bytes()
        );
    }

    #[test]
    fn cloudevents_envelope() {
        assert_eq!(
            render_str(Format::CloudEvents, UPDATE, "[42]"),
            format!(
                concat!(
                    r#"{{"specversion":"1.0","id":"evt_00000000016B3D28_3","source":"walhook/p/master","#,
                    r#""type":"walhook.orders.update","time":"2025-12-15T15:00:00Z","subject":"42","#,
                    r#""datacontenttype":"application/json","data":{}}}"#
                ),
                UPDATE
            )
        );
        let out = render_str(Format::CloudEvents, INSERT, "");
        assert!(
            out.contains(r#""type":"walhook.public.line_items.insert""#),
            "{out}"
        );
        assert!(!out.contains("subject"), "{out}");
    }

    #[test]
    fn slack_update() {
        assert_eq!(
            render_str(Format::Slack, UPDATE, "[42]"),
            concat!(
                r#"{"text":"UPDATE on orders (key 42): status, total changed","blocks":["#,
                r#"{"type":"section","fields":["#,
                r#"{"type":"mrkdwn","text":"*Table*\norders"},"#,
                r#"{"type":"mrkdwn","text":"*Event*\nUPDATE"},"#,
                r#"{"type":"mrkdwn","text":"*Key*\n42"},"#,
                r#"{"type":"mrkdwn","text":"*Changed fields*\nstatus, total"}]},"#,
                r#"{"type":"context","elements":[{"type":"mrkdwn","#,
                r#""text":"evt_00000000016B3D28_3 · 2025-12-15T15:00:00Z"}]}]}"#
            )
        );
    }

    #[test]
    fn select_hides_a_key_that_is_not_a_selected_value() {
        let narrowed = r#"{"id":"evt_3","timestamp":"2025-12-15T15:00:00Z","project_id":"p","environment":"master","table":"orders","event":"UPDATE","record":{"status":"paid"},"data":{"status":"paid"},"changed_fields":["status"]}"#;
        let select = vec!["status".to_string()];
        let out = |f| {
            String::from_utf8(render_selected(f, narrowed, "[42]", Some(&select)).unwrap()).unwrap()
        };
        let slack = out(Format::Slack);
        assert!(!slack.contains("42"), "{slack}");
        assert!(slack.contains(r#"*Key*\n(not in select)"#), "{slack}");
        assert!(
            slack.contains(r#""text":"UPDATE on orders: status changed""#),
            "{slack}"
        );
        let discord = out(Format::Discord);
        assert!(!discord.contains("42"), "{discord}");
        assert!(
            discord.contains(r#"{"name":"Key","value":"(not in select)","inline":true}"#),
            "{discord}"
        );
        let ce = out(Format::CloudEvents);
        assert!(!ce.contains("subject"), "{ce}");
        // A selected key column: the key is a selected value and is shown.
        let both = vec!["id".to_string(), "status".to_string()];
        let s =
            String::from_utf8(render_selected(Format::Slack, UPDATE, "[42]", Some(&both)).unwrap())
                .unwrap();
        assert!(s.contains(r#"*Key*\n42"#), "{s}");
    }

    #[test]
    fn slack_escapes_and_handles_no_key() {
        assert_eq!(
            render_str(Format::Slack, DELETE, ""),
            concat!(
                r#"{"text":"DELETE on a&lt;b&gt;&amp;c","blocks":["#,
                r#"{"type":"section","fields":["#,
                r#"{"type":"mrkdwn","text":"*Table*\na&lt;b&gt;&amp;c"},"#,
                r#"{"type":"mrkdwn","text":"*Event*\nDELETE"},"#,
                r#"{"type":"mrkdwn","text":"*Key*\n(no primary key)"},"#,
                r#"{"type":"mrkdwn","text":"*Changed fields*\n—"}]},"#,
                r#"{"type":"context","elements":[{"type":"mrkdwn","#,
                r#""text":"evt_2 · 2025-12-15T15:00:01Z"}]}]}"#
            )
        );
    }

    #[test]
    fn slack_ping() {
        let out = render_str(Format::Slack, PING, "");
        assert!(
            out.starts_with(r#"{"text":"PING on orders","blocks":"#),
            "{out}"
        );
        let no_table = r#"{"id":"evt_p","timestamp":"2025-12-15T15:00:02Z","event":"PING"}"#;
        let out = render_str(Format::Slack, no_table, "");
        assert!(out.starts_with(r#"{"text":"PING","blocks":"#), "{out}");
        assert!(out.contains(r#""*Table*\n—""#), "{out}");
    }

    #[test]
    fn discord_update() {
        assert_eq!(
            render_str(Format::Discord, UPDATE, r#"[42,"a"]"#),
            concat!(
                r#"{"embeds":[{"title":"UPDATE on orders","color":15844367,"fields":["#,
                r#"{"name":"Key","value":"42, a","inline":true},"#,
                r#"{"name":"Changed fields","value":"status, total","inline":true}],"#,
                r#""footer":{"text":"evt_00000000016B3D28_3"},"#,
                r#""timestamp":"2025-12-15T15:00:00Z"}]}"#
            )
        );
    }

    #[test]
    fn discord_colors_and_ping() {
        let color = |p: &str| -> u64 {
            let v: Value =
                serde_json::from_slice(&render(Format::Discord, p, "").unwrap()).unwrap();
            v["embeds"][0]["color"].as_u64().unwrap()
        };
        assert_eq!(color(INSERT), 0x2ECC71);
        assert_eq!(color(UPDATE), 0xF1C40F);
        assert_eq!(color(DELETE), 0xE74C3C);
        assert_eq!(color(PING), 0x3498DB);
        assert_eq!(
            render_str(
                Format::Discord,
                INSERT,
                r#"["f47ac10b-58cc-4372-a567-0e02b2c3d479"]"#
            ),
            concat!(
                r#"{"embeds":[{"title":"INSERT on public.line_items","color":3066993,"fields":["#,
                r#"{"name":"Key","value":"f47ac10b-58cc-4372-a567-0e02b2c3d479","inline":true},"#,
                r#"{"name":"Changed fields","value":"—","inline":true}],"#,
                r#""footer":{"text":"evt_1"},"timestamp":"2025-12-15T15:00:00Z"}]}"#
            )
        );
    }

    #[test]
    fn long_values_are_cut_with_ellipsis() {
        let long_key = format!("[\"{}\"]", "😀".repeat(3000));
        let v: Value =
            serde_json::from_slice(&render(Format::Discord, UPDATE, &long_key).unwrap()).unwrap();
        let key = v["embeds"][0]["fields"][0]["value"].as_str().unwrap();
        assert!(key.ends_with('…'));
        assert!(utf16_len(key) <= DISCORD_FIELD, "{}", utf16_len(key));
        assert_eq!(utf16_len(key), 1023); // 511 emoji (2 units each) + "…"

        let long_key = format!("[\"{}\"]", "&".repeat(3000));
        let v: Value =
            serde_json::from_slice(&render(Format::Slack, UPDATE, &long_key).unwrap()).unwrap();
        let field = v["blocks"][0]["fields"][2]["text"].as_str().unwrap();
        assert!(utf16_len(field) <= SLACK_FIELD, "{}", utf16_len(field));
        assert!(field.ends_with("&amp;…"), "cut inside an entity: {field}");
        let text = v["text"].as_str().unwrap();
        assert!(utf16_len(text) <= SLACK_TEXT);
    }

    #[test]
    fn cut_edges() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "ab…");
        assert_eq!(cut("abcd", 1), "…");
        assert_eq!(cut("abcd", 0), "");
        assert_eq!(slack_escape_cut("a&b", 5), "a…");
    }

    #[test]
    fn malformed_input_is_an_error() {
        let e = render(Format::Slack, "not json", "").unwrap_err();
        assert!(matches!(e, FormatError::Payload(_)), "{e}");
        let e = render(
            Format::Discord,
            r#"{"id":"e","timestamp":"t","event":"INSERT"}"#,
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("table"), "{e}");
        let e = render(
            Format::Slack,
            r#"{"id":"e","timestamp":"t","table":"x"}"#,
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("event"), "{e}");
        let e = render(
            Format::Slack,
            r#"{"id":1,"timestamp":"t","table":"x","event":"INSERT"}"#,
            "",
        )
        .unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        let e = render(Format::Slack, UPDATE, "{\"id\":1}").unwrap_err();
        assert!(matches!(e, FormatError::Key(_)), "{e}");
        assert!(e.to_string().contains("object"), "{e}");
        assert!(render(Format::Slack, UPDATE, "[1").is_err());
        // Json does not parse: the bytes go out as stored.
        assert_eq!(render(Format::Json, "not json", "").unwrap(), b"not json");
    }
}
