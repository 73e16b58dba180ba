//! Postgres text output → the JSON value `to_jsonb` would give for it.
//!
//! Input is the text output of a column under DateStyle=ISO, TimeZone=UTC (any zone works),
//! extra_float_digits=3, bytea_output=hex, IntervalStyle=postgres. Guarantees:
//! - [`text_to_json`] never panics and never returns `null`: text that does not fit its kind
//!   (which the server never sends) becomes a JSON string of the raw text;
//! - numbers (int2/4/8, numeric, float4/8) come out digit-exact as `numeric_in` would store them,
//!   because jsonb keeps every number as `numeric`: exponents are shifted away
//!   (`1.5e-07` → `0.00000015`, `1e+100` → 1 followed by 100 zeros), the display scale is
//!   `max(0, fraction digits − exponent)`, negative zero loses its sign; `NaN`/`Infinity`/
//!   `-Infinity` become strings;
//! - json/jsonb text is embedded as a value, with its numbers normalised the same way and
//!   duplicate object keys resolved as jsonb does (last one wins);
//! - timestamps get the XSD form `to_jsonb` uses: `T` between date and time, and a time-zone
//!   offset of whole hours written `+HH:00`; the ` BC` suffix is kept as the server writes it
//!   (`0044-03-15T12:34:56.5+00:00 BC`);
//! - arrays become (nested) JSON arrays; dimension bounds decoration is dropped like `to_jsonb`
//!   does;
//! - composite values (`record_out`'s `(1,"a ""b""",)`) become objects keyed by attribute name,
//!   each attribute rendered by its own kind, empty fields as `null`; a value whose field count
//!   differs from the kind's attribute count (the type was altered) stays a string of its text and
//!   is reported through [`render`]'s `stale` flag;
//! - `hstore` (`"a"=>"1", "b"=>NULL`) becomes an object of string or null values, as its json
//!   cast gives;
//! - everything else is a JSON string of the text as is.

use std::borrow::Cow;
use std::str::FromStr;

use serde_json::{Number, Value};

use super::types::TypeKind;

/// The session settings under which the stream reads text output (set at the replication
/// connection's start-up, and on a backfill's reading session), so time zones, intervals,
/// floats and bytea come out as this module expects.
pub const TEXT_SESSION: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("IntervalStyle", "postgres"),
];

/// `numeric_in` refuses exponents beyond this, so the server never sends bigger ones; the bound
/// also keeps garbage like `1e999999999` from allocating a huge string.
const NUMERIC_MAX_EXPONENT: i64 = 1000;

pub fn text_to_json(kind: &TypeKind, text: &str) -> Value {
    render(kind, text, &mut false)
}

/// [`text_to_json`], setting `stale` when a composite value did not fit its kind's attributes.
pub fn render(kind: &TypeKind, text: &str, stale: &mut bool) -> Value {
    match kind {
        TypeKind::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => raw(text),
        },
        TypeKind::Integer | TypeKind::Numeric | TypeKind::Float => match number(text) {
            Some(n) => Value::Number(n),
            None => raw(text),
        },
        TypeKind::Json => json(text),
        TypeKind::Date | TypeKind::Text | TypeKind::CastFallback => raw(text),
        TypeKind::Timestamp => Value::String(timestamp(text, false)),
        TypeKind::TimestampTz => Value::String(timestamp(text, true)),
        TypeKind::Array { element, delimiter } => {
            array(element, *delimiter, text, stale).unwrap_or_else(|| raw(text))
        }
        TypeKind::Composite(c) => match composite::record(c, text, stale) {
            Some(v) => v,
            None => raw(text),
        },
        TypeKind::Hstore => composite::hstore(text).unwrap_or_else(|| raw(text)),
    }
}

fn raw(text: &str) -> Value {
    Value::String(text.to_owned())
}

/// A JSON-number text split into its parts, borrowed from the input.
struct Decimal<'a> {
    negative: bool,
    int_digits: &'a str,
    frac_digits: &'a str,
    exponent: i64,
    has_exponent: bool,
}

/// Parses JSON number grammar (which covers every int, numeric and float text the server
/// emits, except NaN/Infinity); `None` for anything else.
fn parse_decimal(text: &str) -> Option<Decimal<'_>> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i = 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = &text[int_start..i];
    if int_digits.is_empty() || (int_digits.len() > 1 && int_digits.starts_with('0')) {
        return None;
    }
    let mut frac_digits = "";
    if i < b.len() && b[i] == b'.' {
        let s = i + 1;
        i = s;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &text[s..i];
        if frac_digits.is_empty() {
            return None;
        }
    }
    let mut exponent = 0i64;
    let mut has_exponent = false;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        has_exponent = true;
        i += 1;
        let mut exp_negative = false;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            exp_negative = b[i] == b'-';
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            // Saturate: anything past the bound is rejected below anyway.
            exponent = (exponent * 10 + i64::from(b[i] - b'0')).min(i64::MAX / 100);
            i += 1;
        }
        if i == s {
            return None;
        }
        if exp_negative {
            exponent = -exponent;
        }
    }
    if i != b.len() {
        return None;
    }
    Some(Decimal {
        negative,
        int_digits,
        frac_digits,
        exponent,
        has_exponent,
    })
}

impl Decimal<'_> {
    fn is_zero(&self) -> bool {
        self.int_digits
            .bytes()
            .chain(self.frac_digits.bytes())
            .all(|c| c == b'0')
    }

    /// Already what `numeric_out` would print after `numeric_in`.
    fn is_canonical(&self) -> bool {
        !(self.has_exponent || (self.negative && self.is_zero()))
    }

    /// `numeric_in` then `numeric_out`: shift the digits by the exponent, keep display scale
    /// `max(0, fraction digits − exponent)`. `None` when the exponent is out of numeric's range.
    fn canonical(&self) -> Option<String> {
        if self.exponent.abs() > NUMERIC_MAX_EXPONENT {
            return None;
        }
        let digits_len = self.int_digits.len() + self.frac_digits.len();
        let digit = |k: i64| -> u8 {
            // k indexes the concatenated digit string; outside it the digits are zeros.
            if k < 0 || k as usize >= digits_len {
                b'0'
            } else if (k as usize) < self.int_digits.len() {
                self.int_digits.as_bytes()[k as usize]
            } else {
                self.frac_digits.as_bytes()[k as usize - self.int_digits.len()]
            }
        };
        let point = self.int_digits.len() as i64 + self.exponent;
        let scale = (self.frac_digits.len() as i64 - self.exponent).max(0);
        let mut out = String::with_capacity((point.max(1) + scale + 2) as usize);
        if self.negative && !self.is_zero() {
            out.push('-');
        }
        let first_nonzero = (0..point).find(|&k| digit(k) != b'0');
        match first_nonzero {
            Some(start) => out.extend((start..point).map(|k| digit(k) as char)),
            None => out.push('0'),
        }
        if scale > 0 {
            out.push('.');
            out.extend((point..point + scale).map(|k| digit(k) as char));
        }
        Some(out)
    }
}

/// A number column's text as `to_jsonb` stores it; `None` for text that must be a string
/// (`NaN`, `Infinity`, garbage).
fn number(text: &str) -> Option<Number> {
    let d = parse_decimal(text)?;
    if d.is_canonical() {
        Number::from_str(text).ok()
    } else {
        Number::from_str(&d.canonical()?).ok()
    }
}

fn json(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(mut v) => {
            normalize_numbers(&mut v);
            v
        }
        Err(_) => raw(text),
    }
}

/// jsonb parses every number with `numeric_in`; json text may hold `1e3` or `-0`.
fn normalize_numbers(v: &mut Value) {
    match v {
        Value::Number(n) => {
            if let Some(d) = parse_decimal(n.as_str()) {
                if !d.is_canonical() {
                    if let Some(c) = d.canonical().and_then(|c| Number::from_str(&c).ok()) {
                        *n = c;
                    }
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_numbers),
        Value::Object(o) => o.values_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// ISO `YYYY-MM-DD HH:MM:SS[.f][±HH[:MM[:SS]]][ BC]` → XSD `YYYY-MM-DDTHH:MM:SS[.f][±HH:MM[:SS]][ BC]`.
/// Anything else (`infinity`, garbage) is returned unchanged.
fn timestamp(text: &str, with_zone: bool) -> String {
    let Some(space) = text.find(' ') else {
        return text.to_owned();
    };
    let (date, rest) = (&text[..space], &text[space + 1..]);
    let looks_like_date = date.len() >= 10 && date.bytes().all(|c| c.is_ascii_digit() || c == b'-');
    let looks_like_time = rest.len() >= 8 && rest.as_bytes()[2] == b':';
    if !looks_like_date || !looks_like_time {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(date);
    out.push('T');
    let (time, era) = match rest.find(' ') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    out.push_str(time);
    if with_zone {
        // The offset starts at the sign; the time part itself never has one.
        if let Some(sign) = time.rfind(['+', '-']) {
            if time.len() - sign == 3 {
                out.push_str(":00");
            }
        }
    }
    out.push_str(era);
    out
}

/// Postgres array literal → JSON array; `None` when the text is not a well-formed literal.
fn array(element: &TypeKind, delimiter: u8, text: &str, stale: &mut bool) -> Option<Value> {
    let b = text.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'[') {
        // Dimension decoration `[lo:hi][lo:hi]=`: to_jsonb ignores bounds.
        i = text.find('=')? + 1;
    } else if delimiter == b' ' && b.first() != Some(&b'{') {
        // int2vector / oidvector: `1 2 3`, never quoted, no NULLs.
        return Some(Value::Array(
            text.split_ascii_whitespace()
                .map(|e| render(element, e, stale))
                .collect(),
        ));
    }
    let mut p = ArrayParser {
        b,
        text,
        i,
        element,
        delimiter,
        stale,
    };
    p.skip_ws();
    let v = p.dimension(0)?;
    p.skip_ws();
    (p.i == b.len()).then_some(v)
}

struct ArrayParser<'a, 's> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
    element: &'a TypeKind,
    delimiter: u8,
    stale: &'s mut bool,
}

/// Postgres allows at most 6 dimensions; beyond that the text is garbage.
const MAX_DIMENSIONS: usize = 6;

impl<'a> ArrayParser<'a, '_> {
    fn skip_ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// At `{`: parses up to and including the matching `}`.
    fn dimension(&mut self, depth: usize) -> Option<Value> {
        if self.peek()? != b'{' || depth >= MAX_DIMENSIONS {
            return None;
        }
        self.i += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(Value::Array(items));
        }
        loop {
            self.skip_ws();
            let item = match self.peek()? {
                b'{' => self.dimension(depth + 1)?,
                b'"' => {
                    let s = self.quoted()?;
                    render(self.element, &s, self.stale)
                }
                _ => match self.unquoted()? {
                    None => Value::Null,
                    Some(s) => render(self.element, &s, self.stale),
                },
            };
            items.push(item);
            self.skip_ws();
            match self.peek()? {
                b'}' => {
                    self.i += 1;
                    return Some(Value::Array(items));
                }
                c if c == self.delimiter => self.i += 1,
                _ => return None,
            }
        }
    }

    /// At `"`: the unescaped contents, borrowed when there is nothing to unescape.
    fn quoted(&mut self) -> Option<Cow<'a, str>> {
        self.i += 1;
        let start = self.i;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let c = self.peek()?;
            match c {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some(match owned {
                        None => Cow::Borrowed(&self.text[start..end]),
                        // Only ASCII backslashes were removed, so UTF-8 stays intact.
                        Some(v) => Cow::Owned(String::from_utf8(v).ok()?),
                    });
                }
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.b[start..self.i].to_vec());
                    self.i += 1;
                    buf.push(self.peek()?);
                    self.i += 1;
                }
                _ => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(c);
                    }
                    self.i += 1;
                }
            }
        }
    }

    /// An unquoted element up to the delimiter or `}`, trailing blanks trimmed; `None` inside
    /// the result means SQL NULL.
    fn unquoted(&mut self) -> Option<Option<Cow<'a, str>>> {
        let start = self.i;
        let mut owned: Option<Vec<u8>> = None;
        let mut end = start;
        while let Some(c) = self.peek() {
            if c == self.delimiter || c == b'}' {
                break;
            }
            match c {
                b'{' | b'"' => return None,
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.b[start..self.i].to_vec());
                    self.i += 1;
                    buf.push(self.peek()?);
                    self.i += 1;
                    end = self.i;
                    continue;
                }
                _ => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(c);
                    }
                    self.i += 1;
                    if !c.is_ascii_whitespace() {
                        end = self.i;
                    }
                }
            }
        }
        match owned {
            None => {
                let s = &self.text[start..end];
                if s.is_empty() {
                    return None;
                }
                if s.eq_ignore_ascii_case("NULL") {
                    return Some(None);
                }
                Some(Some(Cow::Borrowed(s)))
            }
            Some(mut v) => {
                // Trailing blanks were pushed too; escaped ones count as content, but the
                // server never emits escapes unquoted, so trimming all is close enough.
                while v.last().is_some_and(|c| c.is_ascii_whitespace()) {
                    v.pop();
                }
                Some(Some(Cow::Owned(String::from_utf8(v).ok()?)))
            }
        }
    }
}

#[path = "values_composite.rs"]
mod composite;

#[cfg(test)]
#[path = "values_tests.rs"]
mod tests;
