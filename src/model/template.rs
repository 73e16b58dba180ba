//! Body templates (`template = '…'`): a subscription's own envelope, rendered with minijinja
//! from the event's fields.
//!
//! Guarantees:
//! - every `{{ … }}` is written as JSON (a string gets its quotes and escapes, a record becomes
//!   an object), so a value can never break out of the JSON around it; `tojson` says the same
//!   explicitly and returns text that is written as is;
//! - numbers keep the exact text Postgres gave them (`99.50` stays `99.50`, a numeric(40,20)
//!   keeps its digits); whole numbers and floats whose text survives a round trip are numbers
//!   in the template too, so arithmetic and comparisons work on them;
//! - a template is checked once ([`check`]) on a sample event: it must compile and render valid
//!   JSON, else it is refused with minijinja's message (line and what is wrong);
//! - rendering is bounded: a fuel limit stops runaway loops with an error instead of a hang,
//!   and the output is checked to be valid JSON before it is sent.

use std::sync::Arc;

use minijinja::value::{Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Output, State};

use super::BadValue;

/// Template source bytes, at most.
pub const MAX_TEMPLATE: usize = 64 * 1024;
/// minijinja instructions per render, at most: ample for an envelope, a stop for a runaway loop.
const FUEL: u64 = 200_000;

/// The variables a template sees, besides `payload` (the whole Archie payload).
pub const FIELDS: &[&str] = &[
    "id",
    "timestamp",
    "project",
    "environment",
    "table",
    "event",
    "record",
    "changed_fields",
    "key",
    "subscription",
];

/// A compiled template.
pub struct Template {
    env: Environment<'static>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template")
    }
}

const NAME: &str = "body";

impl Template {
    pub fn compile(source: &str) -> Result<Template, BadValue> {
        if source.len() > MAX_TEMPLATE {
            return Err(format!("longer than {MAX_TEMPLATE} bytes").into());
        }
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_formatter(format_json);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| BadValue(describe(&e)))?;
        Ok(Template { env })
    }

    /// The body for one event: `payload` is the stored Archie payload, `key` the ordering key
    /// (a JSON array of the key's values, or "" without a key).
    pub fn render(&self, payload: &str, key: &str, subscription: &str) -> Result<String, BadValue> {
        let p: serde_json::Value = serde_json::from_str(payload)
            .map_err(|e| BadValue(format!("the stored payload is not JSON: {e}")))?;
        let key: serde_json::Value = if key.is_empty() {
            serde_json::Value::Array(Vec::new())
        } else {
            serde_json::from_str(key)
                .map_err(|e| BadValue(format!("the ordering key is not JSON: {e}")))?
        };
        let field = |name: &str| p.get(name).map(to_value).unwrap_or(Value::from(()));
        let ctx = minijinja::context! {
            id => field("id"),
            timestamp => field("timestamp"),
            project => field("project_id"),
            environment => field("environment"),
            table => field("table"),
            event => field("event"),
            record => field("record"),
            changed_fields => field("changed_fields"),
            key => to_value(&key),
            subscription => subscription,
            payload => to_value(&p),
        };
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| BadValue(describe(&e)))?;
        let out = tmpl.render(ctx).map_err(|e| BadValue(describe(&e)))?;
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&out) {
            return Err(format!("the template did not render valid JSON: {e}").into());
        }
        Ok(out)
    }
}

/// A sample event a template must render to valid JSON before it is accepted; its values hold
/// the characters a careless template would let break out of a string.
const SAMPLE: &str = r#"{"id":"evt_0000000001A2B3C4_0","timestamp":"2026-01-01T00:00:00.000000Z","project_id":"sample","environment":"master","table":"public.orders","event":"UPDATE","record":{"id":42,"status":"paid","note":"a \"quoted\" <b>&</b> line\nbreak \\ é","total":99.50,"tags":["a","b"],"meta":{"n":null,"ok":true}},"data":{"id":42,"status":"paid","note":"a \"quoted\" <b>&</b> line\nbreak \\ é","total":99.50,"tags":["a","b"],"meta":{"n":null,"ok":true}},"changed_fields":["status"]}"#;

/// Compiles `source` and renders the sample event: errors say what is wrong, never a value.
pub fn check(source: &str) -> Result<(), BadValue> {
    let t = Template::compile(source)?;
    t.render(SAMPLE, "[42]", "sample")
        .map_err(|e| BadValue(format!("on a sample event: {}", e.0)))?;
    Ok(())
}

/// minijinja's message with the line, without the template's source.
fn describe(e: &Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s.push_str(": ");
        s.push_str(d);
    }
    if let Some(line) = e.line() {
        s.push_str(&format!(" (line {line})"));
    }
    if e.kind() == ErrorKind::OutOfFuel {
        s.push_str("; the template does too much work per event");
    }
    s
}

/// A JSON number whose text would change through f64 (`99.50`, big numerics): kept as text.
#[derive(Debug)]
struct RawNumber(String);

impl Object for RawNumber {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Plain
    }
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            let text = n.to_string();
            if let Some(i) = n.as_i64().filter(|i| i.to_string() == text) {
                return Value::from(i);
            }
            if let Some(u) = n.as_u64().filter(|u| u.to_string() == text) {
                return Value::from(u);
            }
            if let Some(f) = text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                if serde_json::to_string(&f).ok().as_deref() == Some(text.as_str()) {
                    return Value::from(f);
                }
            }
            Value::from_object(RawNumber(text))
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => Value::from(a.iter().map(to_value).collect::<Vec<_>>()),
        J::Object(m) => m
            .iter()
            .map(|(k, v)| (Value::from(k.as_str()), to_value(v)))
            .collect(),
    }
}

/// `value` as JSON text.
fn json(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    write_json(&mut out, value, 0)?;
    Ok(out)
}

fn write_json(out: &mut String, v: &Value, depth: usize) -> Result<(), Error> {
    if depth > 128 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "value nested too deeply",
        ));
    }
    if let Some(raw) = v.downcast_object_ref::<RawNumber>() {
        out.push_str(&raw.0);
        return Ok(());
    }
    let ser = |x: &dyn erased::Ser| -> Result<String, Error> {
        x.to_json()
            .map_err(|e| Error::new(ErrorKind::BadSerialization, e.to_string()))
    };
    match v.kind() {
        // Undefined (a missing field) is null, as `record.absent` would be in JSON.
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool | ValueKind::Number => out.push_str(&ser(v)?),
        ValueKind::String => out.push_str(&ser(&v.as_str().unwrap_or_default())?),
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, &item, depth + 1)?;
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, k) in v.try_iter()?.enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let name = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&ser(&name.as_str())?);
                out.push(':');
                write_json(out, &v.get_item(&k)?, depth + 1)?;
            }
            out.push('}');
        }
        ValueKind::Plain => out.push_str(&ser(&v.to_string().as_str())?),
        _ => {
            return Err(Error::new(
                ErrorKind::BadSerialization,
                format!("a {} value cannot be written as JSON", v.kind()),
            ))
        }
    }
    Ok(())
}

/// Serialisation through serde_json without naming each type.
mod erased {
    pub trait Ser {
        fn to_json(&self) -> serde_json::Result<String>;
    }
    impl<T: serde::Serialize> Ser for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

/// Every `{{ … }}` is JSON; text marked safe (what `tojson` returns) is written as is.
fn format_json(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    let text = if value.is_safe() {
        value.to_string()
    } else {
        json(value)?
    };
    out.write_str(&text)
        .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
}

fn tojson(value: Value) -> Result<Value, Error> {
    Ok(Value::from_safe_string(json(&value)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &str = r#"{"id":"evt_1","timestamp":"2026-01-18T10:30:00.000000Z","project_id":"p1","environment":"master","table":"orders","event":"INSERT","record":{"id":7,"total":99.50,"big":123456789012345678901234567890.5,"f":1.5,"s":"x\"y</z>"},"data":{"id":7},"changed_fields":[]}"#;

    fn render(t: &str) -> String {
        Template::compile(t)
            .unwrap()
            .render(PAYLOAD, "[7]", "sub1")
            .unwrap()
    }

    #[test]
    fn archivus_envelope() {
        let t = r#"{"id":{{ id }},"type":{{ table ~ "." ~ event|lower }},"timestamp":{{ timestamp }},"data":{{ record }}}"#;
        assert_eq!(
            render(t),
            r#"{"id":"evt_1","type":"orders.insert","timestamp":"2026-01-18T10:30:00.000000Z","data":{"id":7,"total":99.50,"big":123456789012345678901234567890.5,"f":1.5,"s":"x\"y</z>"}}"#
        );
    }

    #[test]
    fn values_are_json_and_numbers_keep_their_text() {
        assert_eq!(render("{{ record.total }}"), "99.50");
        assert_eq!(render("{{ record.f * 2 }}"), "3.0");
        assert_eq!(render("{{ record.id + 1 }}"), "8");
        assert_eq!(render("{{ record.s }}"), r#""x\"y</z>""#);
        assert_eq!(render("{{ record.s|tojson }}"), r#""x\"y</z>""#);
        assert_eq!(render("{{ key }}"), "[7]");
        assert_eq!(render("{{ key[0] }}"), "7");
        assert_eq!(render("{{ subscription }}"), r#""sub1""#);
        assert_eq!(render("{{ project }}"), r#""p1""#);
        assert_eq!(render("{{ record.absent }}"), "null");
        assert_eq!(render("{{ changed_fields }}"), "[]");
        assert_eq!(
            render(r#"{{ {"a": record.id, "b": [1, "two"]} }}"#),
            r#"{"a":7,"b":[1,"two"]}"#
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        let e = check("{{ id ").unwrap_err();
        assert!(e.contains("syntax error"), "{e}");
        // A value outside the JSON grammar: quotes are added, so this is "x""evt…".
        let e = check(r#"{"id": "x{{ id }}"}"#).unwrap_err();
        assert!(e.contains("valid JSON"), "{e}");
        let e = check(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{}",
        )
        .unwrap_err();
        assert!(e.contains("fuel"), "{e}");
        assert!(check(&"x".repeat(MAX_TEMPLATE + 1)).is_err());
        assert!(check(r#"{"ok": {{ record }}}"#).is_ok());
    }
}
