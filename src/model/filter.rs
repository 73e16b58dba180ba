//! Subscription filters: `{ status = "completed" }`, `{ total = { gte = 100 } }`, `in`, `ne`, ….
//!
//! Guarantees:
//! - a filter is parsed once, at load, into a list of conditions that must all hold; a malformed
//!   filter is a config error naming the column and operator;
//! - numbers compare as exact decimals (never through f64), so `numeric` columns with more digits
//!   than a double holds still compare correctly;
//! - a missing column compares as NULL; only equality with `null` (or `is_null = true`) matches it.

use super::BadValue;
use std::cmp::Ordering;

use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    IsNull,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::IsNull => "is_null",
        }
    }

    fn parse(s: &str) -> Option<Op> {
        Some(match s {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "is_null" => Op::IsNull,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    pub column: String,
    pub op: Op,
    pub value: Value,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub conditions: Vec<Condition>,
}

/// Rewrites each string operand while parsing (config.toml's `${ENV}` expansion).
pub type Expander<'a> = &'a dyn Fn(&str) -> Result<String, BadValue>;

fn scalar(column: &str, v: &Value, expand: Option<Expander>) -> Result<Value, BadValue> {
    match v {
        Value::String(s) => match expand {
            Some(expand) => Ok(Value::String(expand(s)?)),
            None => Ok(v.clone()),
        },
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(v.clone()),
        _ => Err(
            format!("filter.{column}: expected a string, number, boolean or null, found {v}")
                .into(),
        ),
    }
}

impl Filter {
    /// Parses the JSON shape literally (stored and API filters); errors name the column and
    /// operator at fault.
    pub fn from_json(v: &Value) -> Result<Filter, BadValue> {
        Filter::parse(v, None)
    }

    /// Parses the JSON shape, passing every string operand through `expand` first.
    pub fn parse(v: &Value, expand: Option<Expander>) -> Result<Filter, BadValue> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("filter: expected a table of column = condition, found {v}"))?;
        let mut conditions = Vec::new();
        for (column, cond) in obj {
            if column.is_empty() {
                return Err("filter: empty column name".into());
            }
            match cond {
                Value::Object(ops) => {
                    if ops.is_empty() {
                        return Err(format!("filter.{column}: empty operator table").into());
                    }
                    for (op_name, operand) in ops {
                        let op = Op::parse(op_name).ok_or_else(|| {
                            format!(
                                "filter.{column}: unknown operator {op_name:?}; \
                                 use eq, ne, gt, gte, lt, lte, in or is_null"
                            )
                        })?;
                        let value = match op {
                            Op::In => {
                                let items = operand.as_array().ok_or_else(|| {
                                    format!("filter.{column}.in: expected a list, found {operand}")
                                })?;
                                Value::Array(
                                    items
                                        .iter()
                                        .map(|i| scalar(column, i, expand))
                                        .collect::<Result<_, _>>()?,
                                )
                            }
                            Op::IsNull => {
                                if !operand.is_boolean() {
                                    return Err(format!(
                                        "filter.{column}.is_null: expected true or false"
                                    )
                                    .into());
                                }
                                operand.clone()
                            }
                            Op::Gt | Op::Gte | Op::Lt | Op::Lte
                                if !(operand.is_number() || operand.is_string()) =>
                            {
                                return Err(format!(
                                    "filter.{column}.{op_name}: expected a number or string, found {operand}"
                                ).into());
                            }
                            _ => scalar(column, operand, expand)?,
                        };
                        conditions.push(Condition {
                            column: column.clone(),
                            op,
                            value,
                        });
                    }
                }
                other => conditions.push(Condition {
                    column: column.clone(),
                    op: Op::Eq,
                    value: scalar(column, other, expand)?,
                }),
            }
        }
        Ok(Filter { conditions })
    }

    /// The canonical JSON form, `{column: {op: value}}`, which [`Filter::from_json`] reads back.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        for c in &self.conditions {
            let ops = out
                .entry(c.column.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = ops {
                m.insert(c.op.name().to_string(), c.value.clone());
            }
        }
        Value::Object(out)
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.conditions.iter().map(|c| c.column.as_str())
    }

    /// True when every condition holds on `record`.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.conditions.iter().all(|c| {
            let v = record.get(&c.column).unwrap_or(&Value::Null);
            c.holds(v)
        })
    }
}

impl Condition {
    fn holds(&self, v: &Value) -> bool {
        match self.op {
            Op::Eq => json_eq(v, &self.value),
            Op::Ne => !json_eq(v, &self.value),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|items| items.iter().any(|i| json_eq(v, i))),
            Op::IsNull => v.is_null() == self.value.as_bool().unwrap_or(true),
            Op::Gt => compare(v, &self.value) == Some(Ordering::Greater),
            Op::Gte => matches!(
                compare(v, &self.value),
                Some(Ordering::Greater | Ordering::Equal)
            ),
            Op::Lt => compare(v, &self.value) == Some(Ordering::Less),
            Op::Lte => matches!(
                compare(v, &self.value),
                Some(Ordering::Less | Ordering::Equal)
            ),
        }
    }
}

fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::Number(_))
        | (Value::Number(_), Value::String(_)) => {
            if let (Some(x), Some(y)) = (number_text(a), number_text(b)) {
                if let Some(ord) = compare_decimal(&x, &y) {
                    return ord == Ordering::Equal;
                }
            }
            a == b
        }
        _ => a == b,
    }
}

fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// Numbers (or numeric-looking strings against numbers) compare as decimals; strings compare by
/// bytes, which orders ISO timestamps and dates correctly. Anything else is incomparable.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.as_str().cmp(y.as_str())),
        (Value::Number(_), _) | (_, Value::Number(_)) => {
            compare_decimal(&number_text(a)?, &number_text(b)?)
        }
        _ => None,
    }
}

/// A decimal as sign, significant digits without leading/trailing zeros, and the exponent `e`
/// such that value = 0.DIGITS × 10^e. Zero has no digits.
fn parse_decimal(s: &str) -> Option<(bool, Vec<u8>, i128)> {
    let s = s.trim();
    let (neg, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exp) = match s.find(['e', 'E']) {
        // i128 arithmetic below: an exponent near i64::MAX cannot overflow.
        Some(i) => (&s[..i], s[i + 1..].parse::<i64>().ok()? as i128),
        None => (s, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let lead = all.iter().take_while(|d| **d == 0).count();
    let digits: Vec<u8> = all[lead..].to_vec();
    let mut digits = digits;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        return Some((false, digits, 0));
    }
    let e = int.len() as i128 - lead as i128 + exp;
    Some((neg, digits, e))
}

pub(crate) fn compare_decimal(a: &str, b: &str) -> Option<Ordering> {
    let (an, ad, ae) = parse_decimal(a)?;
    let (bn, bd, be) = parse_decimal(b)?;
    let sign = |neg: bool, d: &[u8]| {
        if d.is_empty() {
            0
        } else if neg {
            -1
        } else {
            1
        }
    };
    let (sa, sb) = (sign(an, &ad), sign(bn, &bd));
    if sa != sb || sa == 0 {
        return Some(sa.cmp(&sb));
    }
    let magnitude = ae.cmp(&be).then_with(|| ad.cmp(&bd));
    Some(if sa < 0 {
        magnitude.reverse()
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: Value) -> Filter {
        Filter::from_json(&v).unwrap()
    }

    fn rec(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn equality_compares_numbers_as_decimals() {
        let flt = f(json!({"total": 100}));
        assert!(flt.matches(&rec(json!({"total": 100.00}))));
        assert!(!flt.matches(&rec(json!({"total": 100.01}))));
        let big: Value = serde_json::from_str("12345678901234567890.5").unwrap();
        let flt = Filter::from_json(&json!({ "n": { "gt": big } })).unwrap();
        let r: Value = serde_json::from_str(r#"{"n": 12345678901234567890.50000001}"#).unwrap();
        assert!(flt.matches(r.as_object().unwrap()));
        let r: Value = serde_json::from_str(r#"{"n": 12345678901234567890.5}"#).unwrap();
        assert!(!flt.matches(r.as_object().unwrap()));
    }

    #[test]
    fn null_matches_only_null_and_missing() {
        let flt = f(json!({"shipped_at": null}));
        assert!(flt.matches(&rec(json!({"shipped_at": null}))));
        assert!(flt.matches(&rec(json!({}))));
        assert!(!flt.matches(&rec(json!({"shipped_at": "2024-01-01"}))));
        let flt = f(json!({"shipped_at": {"is_null": false}}));
        assert!(flt.matches(&rec(json!({"shipped_at": "x"}))));
        assert!(!flt.matches(&rec(json!({"shipped_at": null}))));
    }

    #[test]
    fn operators() {
        let flt =
            f(json!({"total": {"gte": 100, "lt": 500}, "status": {"in": ["paid", "completed"]}}));
        assert!(flt.matches(&rec(json!({"total": 100, "status": "paid"}))));
        assert!(flt.matches(&rec(json!({"total": 499.99, "status": "completed"}))));
        assert!(!flt.matches(&rec(json!({"total": 500, "status": "paid"}))));
        assert!(!flt.matches(&rec(json!({"total": 99.5, "status": "paid"}))));
        assert!(!flt.matches(&rec(json!({"total": 200, "status": "pending"}))));
        assert!(!flt.matches(&rec(json!({"total": null, "status": "paid"}))));
        let ne = f(json!({"status": {"ne": "cancelled"}}));
        assert!(ne.matches(&rec(json!({"status": "paid"}))));
        assert!(!ne.matches(&rec(json!({"status": "cancelled"}))));
        let gt = f(json!({"created_at": {"gt": "2024-01-01T00:00:00"}}));
        assert!(gt.matches(&rec(json!({"created_at": "2024-06-01T00:00:00+00:00"}))));
        assert!(f(json!({"n": {"lt": 0}})).matches(&rec(json!({"n": -0.5}))));
        assert!(f(json!({"n": {"lte": -1}})).matches(&rec(json!({"n": -2}))));
    }

    #[test]
    fn malformed_filters_name_column_and_operator() {
        let err = Filter::from_json(&json!({"total": {"between": [1, 2]}})).unwrap_err();
        assert!(
            err.contains("filter.total") && err.contains("between"),
            "{err}"
        );
        let err = Filter::from_json(&json!({"status": {"in": "paid"}})).unwrap_err();
        assert!(err.contains("filter.status.in"), "{err}");
        let err = Filter::from_json(&json!({"x": [1]})).unwrap_err();
        assert!(err.contains("filter.x"), "{err}");
        assert!(Filter::from_json(&json!([1])).is_err());
    }

    #[test]
    fn canonical_json_round_trips() {
        let flt = f(json!({"status": "x", "total": {"gte": 1, "lt": 5}, "k": {"in": ["a"]}}));
        assert_eq!(Filter::from_json(&flt.to_json()).unwrap(), flt);
    }

    #[test]
    fn huge_exponents_compare_without_overflow() {
        let max = format!("1e{}", i64::MAX);
        let min = format!("1e{}", i64::MIN);
        assert_eq!(compare_decimal(&max, "5"), Some(Ordering::Greater));
        assert_eq!(compare_decimal(&min, "0.5"), Some(Ordering::Less));
        assert_eq!(compare_decimal(&max, &max), Some(Ordering::Equal));
        let f = Filter::from_json(&json!({"total": {"gte": max}})).unwrap();
        let rec = json!({"total": 1}).as_object().unwrap().clone();
        assert!(!f.matches(&rec));
    }

    #[test]
    fn decimal_compare() {
        use Ordering::*;
        let cases = [
            ("1", "1.0", Equal),
            ("0", "-0.0", Equal),
            ("10", "9.99", Greater),
            ("-10", "-9.99", Less),
            ("1e3", "999", Greater),
            ("0.001", "1e-3", Equal),
            ("-1", "0", Less),
            ("0.1", "0.09", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_decimal(a, b), Some(want), "{a} vs {b}");
        }
        assert_eq!(compare_decimal("abc", "1"), None);
        assert_eq!(compare_decimal("NaN", "1"), None);
    }
}
