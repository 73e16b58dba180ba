//! Composite (`record_out`) and `hstore` text → the JSON objects `to_jsonb` gives for them.
//!
//! Guarantees: never panics; `None` when the text is not what the output function writes (the
//! caller then sends the text as a string); field values are borrowed from the input unless
//! they hold quotes or escapes.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::render;
use crate::source::types::Composite;

/// `(a,"b c",,"x ""y""")` → `{"f1": a, "f2": "b c", "f3": null, "f4": "x \"y\""}`, each field
/// rendered by its attribute's kind. A field count other than the attribute count sets `stale`
/// and gives `None`.
pub(super) fn record(c: &Composite, text: &str, stale: &mut bool) -> Option<Value> {
    let b = text.as_bytes();
    if b.first() != Some(&b'(') || b.last() != Some(&b')') {
        return None;
    }
    if c.fields.is_empty() && text == "()" {
        return Some(Value::Object(Map::new()));
    }
    let mut out = Map::with_capacity(c.fields.len());
    let mut i = 1;
    let mut n = 0;
    loop {
        let (field, next) = record_field(text, i)?;
        let Some((name, kind)) = c.fields.get(n) else {
            *stale = true;
            return None;
        };
        let value = match field {
            None => Value::Null,
            Some(s) => render(kind, &s, stale),
        };
        out.insert(name.clone(), value);
        n += 1;
        // `next` is at the ',' or ')' that ended the field.
        match b[next] {
            b')' if next == b.len() - 1 => break,
            b',' => i = next + 1,
            _ => return None,
        }
    }
    if n != c.fields.len() {
        *stale = true;
        return None;
    }
    Some(Value::Object(out))
}

/// One field starting at `i`: its unescaped text (`None` for an empty, i.e. NULL, field) and the
/// index of the ',' or ')' that ends it, following `record_in`'s rules: `"` toggles quoting,
/// `""` inside quotes is a quote, `\` escapes the next character.
fn record_field(text: &str, start: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    let b = text.as_bytes();
    let mut i = start;
    if matches!(b.get(i), Some(b',') | Some(b')')) {
        return Some((None, i));
    }
    let mut owned: Option<Vec<u8>> = None;
    let mut in_quotes = false;
    loop {
        let c = *b.get(i)?;
        if !in_quotes && (c == b',' || c == b')') {
            break;
        }
        match c {
            b'\\' => {
                let buf = owned.get_or_insert_with(|| b[start..i].to_vec());
                buf.push(*b.get(i + 1)?);
                i += 2;
            }
            b'"' => {
                let buf = owned.get_or_insert_with(|| b[start..i].to_vec());
                if in_quotes && b.get(i + 1) == Some(&b'"') {
                    buf.push(b'"');
                    i += 2;
                } else {
                    in_quotes = !in_quotes;
                    i += 1;
                }
            }
            _ => {
                if let Some(buf) = owned.as_mut() {
                    buf.push(c);
                }
                i += 1;
            }
        }
    }
    let s = match owned {
        None => Cow::Borrowed(&text[start..i]),
        // Only ASCII quote and backslash bytes were removed, so UTF-8 stays intact.
        Some(v) => Cow::Owned(String::from_utf8(v).ok()?),
    };
    Some((Some(s), i))
}

/// `"a"=>"1", "b c"=>NULL` → `{"a": "1", "b c": null}`, as `hstore_to_json` gives.
pub(super) fn hstore(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let mut out = Map::new();
    let mut i = skip_ws(b, 0);
    while i < b.len() {
        let (key, next) = hstore_quoted(text, i)?;
        i = skip_ws(b, next);
        if b.get(i..i + 2) != Some(b"=>") {
            return None;
        }
        i = skip_ws(b, i + 2);
        let value = if b.get(i..i + 4) == Some(b"NULL") {
            i += 4;
            Value::Null
        } else {
            let (v, next) = hstore_quoted(text, i)?;
            i = next;
            Value::String(v.into_owned())
        };
        out.insert(key.into_owned(), value);
        i = skip_ws(b, i);
        match b.get(i) {
            None => break,
            Some(b',') => i = skip_ws(b, i + 1),
            Some(_) => return None,
        }
    }
    Some(Value::Object(out))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// At `"`: the unescaped contents and the index after the closing quote.
fn hstore_quoted(text: &str, start: usize) -> Option<(Cow<'_, str>, usize)> {
    let b = text.as_bytes();
    if b.get(start) != Some(&b'"') {
        return None;
    }
    let mut i = start + 1;
    let mut owned: Option<Vec<u8>> = None;
    loop {
        match *b.get(i)? {
            b'"' => {
                let s = match owned {
                    None => Cow::Borrowed(&text[start + 1..i]),
                    Some(v) => Cow::Owned(String::from_utf8(v).ok()?),
                };
                return Some((s, i + 1));
            }
            b'\\' => {
                let buf = owned.get_or_insert_with(|| b[start + 1..i].to_vec());
                buf.push(*b.get(i + 1)?);
                i += 2;
            }
            c => {
                if let Some(buf) = owned.as_mut() {
                    buf.push(c);
                }
                i += 1;
            }
        }
    }
}
