//! Unit and property tests for `values`: each rendering rule, with expectations taken from a
//! PostgreSQL 15 server's `to_jsonb` output.

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn num(s: &str) -> Value {
    Value::Number(Number::from_str(s).unwrap())
}

fn arr(element: TypeKind, delimiter: u8) -> TypeKind {
    TypeKind::Array {
        element: Box::new(element),
        delimiter,
    }
}

fn all_kinds() -> Vec<TypeKind> {
    let scalars = vec![
        TypeKind::Bool,
        TypeKind::Integer,
        TypeKind::Numeric,
        TypeKind::Float,
        TypeKind::Json,
        TypeKind::Date,
        TypeKind::Timestamp,
        TypeKind::TimestampTz,
        TypeKind::Text,
        TypeKind::Hstore,
        TypeKind::CastFallback,
        pair(),
        nested(),
    ];
    let mut all = scalars.clone();
    for s in &scalars {
        all.push(arr(s.clone(), b','));
        all.push(arr(s.clone(), b';'));
        all.push(arr(s.clone(), b' '));
        all.push(arr(arr(s.clone(), b','), b','));
    }
    all
}

/// `(a int, b text)`
fn pair() -> TypeKind {
    TypeKind::composite(
        1,
        vec![
            ("a".into(), TypeKind::Integer),
            ("b".into(), TypeKind::Text),
        ],
    )
}

/// `(p pair, ps pair[], t timestamptz, h hstore)`
fn nested() -> TypeKind {
    TypeKind::composite(
        2,
        vec![
            ("p".into(), pair()),
            ("ps".into(), arr(pair(), b',')),
            ("t".into(), TypeKind::TimestampTz),
            ("h".into(), TypeKind::Hstore),
        ],
    )
}

#[test]
fn composites_become_objects() {
    let f = |k: &TypeKind, s| text_to_json(k, s);
    assert_eq!(f(&pair(), "(7,q)"), json!({"a": 7, "b": "q"}));
    assert_eq!(f(&pair(), r#"(7,"q""x")"#), json!({"a": 7, "b": "q\"x"}));
    assert_eq!(f(&pair(), "(,)"), json!({"a": null, "b": null}));
    assert_eq!(f(&pair(), r#"(,"")"#), json!({"a": null, "b": ""}));
    assert_eq!(
        f(&pair(), r#"(-1,"a\\b (c), d")"#),
        json!({"a": -1, "b": "a\\b (c), d"})
    );
    assert_eq!(f(&pair(), "(1,héllo☃)"), json!({"a": 1, "b": "héllo☃"}));
    // Text from Postgres 15 for ROW(ROW(1,'x y'), ARRAY[ROW(2,'"q"'), NULL], '2024-01-02
    // 03:04:05+02', 'a=>1, "b c"=>NULL')::nested.
    let text = r#"("(1,""x y"")","{""(2,\\""\\""\\""q\\""\\""\\"")"",NULL}","2024-01-02 01:04:05+00","""a""=>""1"", ""b c""=>NULL")"#;
    assert_eq!(
        f(&nested(), text),
        json!({
            "p": {"a": 1, "b": "x y"},
            "ps": [{"a": 2, "b": "\"q\""}, null],
            "t": "2024-01-02T01:04:05+00:00",
            "h": {"a": "1", "b c": null}
        })
    );
    let zero = TypeKind::composite(3, vec![]);
    assert_eq!(f(&zero, "()"), json!({}));
    let one = TypeKind::composite(4, vec![("x".into(), TypeKind::Text)]);
    assert_eq!(f(&one, "()"), json!({"x": null}));
}

#[test]
fn composite_that_does_not_fit_is_text_and_flagged() {
    for text in ["(1)", "(1,a,b)"] {
        let mut stale = false;
        assert_eq!(render(&pair(), text, &mut stale), json!(text));
        assert!(stale, "{text}");
    }
    let mut stale = false;
    // Malformed text is not a type change.
    assert_eq!(render(&pair(), "(1,a", &mut stale), json!("(1,a"));
    assert!(!stale);
    // In an array, the flag comes up through the elements.
    let mut stale = false;
    render(&arr(pair(), b','), r#"{"(1,a,b)"}"#, &mut stale);
    assert!(stale);
}

#[test]
fn hstore_becomes_object_of_strings() {
    let h = |s| text_to_json(&TypeKind::Hstore, s);
    assert_eq!(
        h(r#""a"=>"1", "b c"=>NULL"#),
        json!({"a": "1", "b c": null})
    );
    assert_eq!(h(""), json!({}));
    assert_eq!(
        h(r#"""=>"", "q\"x"=>"back\\slash", "NULL"=>NULL"#),
        json!({"": "", "q\"x": "back\\slash", "NULL": null})
    );
    assert_eq!(h("garbage"), json!("garbage"));
    assert_eq!(text_to_json(&TypeKind::CastFallback, "x"), json!("x"));
}

#[test]
fn map_equality_ignores_key_order_with_preserve_order() {
    let a: Value = serde_json::from_str(r#"{"a":1,"b":[1,{"x":1,"y":2}]}"#).unwrap();
    let b: Value = serde_json::from_str(r#"{"b":[1,{"y":2,"x":1}],"a":1}"#).unwrap();
    assert_eq!(a, b);
    // And numbers compare digit for digit, not by value.
    assert_ne!(num("1.50"), num("1.5"));
}

#[test]
fn floats_become_numeric_decimals() {
    let f = |s| text_to_json(&TypeKind::Float, s);
    assert_eq!(f("1e+100"), num(&format!("1{}", "0".repeat(100))));
    assert_eq!(f("1.5e-07"), num("0.00000015"));
    assert_eq!(f("-0"), num("0"));
    assert_eq!(f("123.456"), num("123.456"));
    assert_eq!(f("-123.456"), num("-123.456"));
    assert_eq!(f("1e+16"), num("10000000000000000"));
    assert_eq!(f("1.2345678901234568e+17"), num("123456789012345680"));
    assert_eq!(f("1e-05"), num("0.00001"));
    assert_eq!(
        f("1.7976931348623157e+308"),
        num(&format!("17976931348623157{}", "0".repeat(292)))
    );
    assert_eq!(f("5e-324"), num(&format!("0.{}5", "0".repeat(323))));
    assert_eq!(f("NaN"), json!("NaN"));
    assert_eq!(f("Infinity"), json!("Infinity"));
    assert_eq!(f("-Infinity"), json!("-Infinity"));
}

#[test]
fn numeric_text_is_kept_digit_for_digit() {
    let n = |s| text_to_json(&TypeKind::Numeric, s);
    assert_eq!(n("1.50"), num("1.50"));
    assert_eq!(n("0.00"), num("0.00"));
    let big = "12345678901234567890.123456789012345678901234567890";
    assert_eq!(n(big).to_string(), big);
    assert_eq!(n("NaN"), json!("NaN"));
    assert_eq!(n("-Infinity"), json!("-Infinity"));
    assert_eq!(text_to_json(&TypeKind::Integer, "-32768"), num("-32768"));
    assert_eq!(
        text_to_json(&TypeKind::Integer, "9223372036854775807"),
        num("9223372036854775807")
    );
}

#[test]
fn canonical_follows_numeric_in_scale_rule() {
    let c = |s: &str| parse_decimal(s).unwrap().canonical().unwrap();
    assert_eq!(c("1.0e+2"), "100");
    assert_eq!(c("12e-1"), "1.2");
    assert_eq!(c("1.5E+1"), "15");
    assert_eq!(c("0e5"), "0");
    assert_eq!(c("-0.0"), "0.0");
    assert_eq!(c("1E-2"), "0.01");
    assert_eq!(c("1.2300e+2"), "123.00");
    assert_eq!(c("0.001e3"), "1");
    assert!(parse_decimal("1e1001").unwrap().canonical().is_none());
}

#[test]
fn bools() {
    assert_eq!(text_to_json(&TypeKind::Bool, "t"), json!(true));
    assert_eq!(text_to_json(&TypeKind::Bool, "f"), json!(false));
    assert_eq!(text_to_json(&TypeKind::Bool, "true"), json!("true"));
}

#[test]
fn json_is_embedded_with_jsonb_number_rules() {
    let j = |s| text_to_json(&TypeKind::Json, s);
    let got = j(r#"{"b":1,"a":[1.50, 1e3, -0, 1E-2, -0.0, 1.0e+2, 0e5, 1.5E+1, 12e-1]}"#);
    let want: Value =
        serde_json::from_str(r#"{"a": [1.50, 1000, 0, 0.01, 0.0, 100, 0, 15, 1.2], "b": 1}"#)
            .unwrap();
    assert_eq!(got, want);
    assert_eq!(j(r#"{"a":1,"a":2}"#), json!({"a": 2}));
    assert_eq!(j("\"x\""), json!("x"));
    assert_eq!(j("null"), Value::Null);
    assert_eq!(j("{not json"), json!("{not json"));
}

#[test]
fn dates_and_timestamps() {
    let d = |s| text_to_json(&TypeKind::Date, s);
    assert_eq!(d("2024-01-02"), json!("2024-01-02"));
    assert_eq!(d("0044-03-15 BC"), json!("0044-03-15 BC"));
    assert_eq!(d("infinity"), json!("infinity"));
    let ts = |s| text_to_json(&TypeKind::Timestamp, s);
    assert_eq!(
        ts("2024-01-02 03:04:05.123456"),
        json!("2024-01-02T03:04:05.123456")
    );
    assert_eq!(ts("2024-01-02 03:04:05"), json!("2024-01-02T03:04:05"));
    assert_eq!(
        ts("0044-03-15 12:34:56.5 BC"),
        json!("0044-03-15T12:34:56.5 BC")
    );
    assert_eq!(ts("-infinity"), json!("-infinity"));
    let tz = |s| text_to_json(&TypeKind::TimestampTz, s);
    assert_eq!(
        tz("2024-01-02 03:04:05.123456+00"),
        json!("2024-01-02T03:04:05.123456+00:00")
    );
    assert_eq!(
        tz("0044-03-15 12:34:56.5+00 BC"),
        json!("0044-03-15T12:34:56.5+00:00 BC")
    );
    assert_eq!(
        tz("12345-01-02 03:04:05+00"),
        json!("12345-01-02T03:04:05+00:00")
    );
    assert_eq!(
        tz("2024-01-02 08:34:05+05:30"),
        json!("2024-01-02T08:34:05+05:30")
    );
    assert_eq!(
        tz("1800-01-01 23:33:13-03:30:52"),
        json!("1800-01-01T23:33:13-03:30:52")
    );
    assert_eq!(
        tz("2024-01-02 03:04:05-08"),
        json!("2024-01-02T03:04:05-08:00")
    );
    assert_eq!(tz("infinity"), json!("infinity"));
    assert_eq!(tz("garbage text"), json!("garbage text"));
}

#[test]
fn other_types_are_strings() {
    for s in [
        "ab   ",
        "\\x00ff",
        "1 day 02:03:04",
        "$12.00",
        "12",
        "(1,2)",
        "",
    ] {
        assert_eq!(text_to_json(&TypeKind::Text, s), json!(s));
    }
}

#[test]
fn arrays() {
    let ints = arr(TypeKind::Integer, b',');
    assert_eq!(text_to_json(&ints, "{1,2,NULL}"), json!([1, 2, null]));
    assert_eq!(
        text_to_json(&ints, "{{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    assert_eq!(text_to_json(&ints, "{}"), json!([]));
    assert_eq!(text_to_json(&ints, "[0:1]={1,2}"), json!([1, 2]));
    assert_eq!(
        text_to_json(&ints, "[0:1][-1:0]={{1,2},{3,4}}"),
        json!([[1, 2], [3, 4]])
    );
    let texts = arr(TypeKind::Text, b',');
    assert_eq!(
        text_to_json(
            &texts,
            r#"{"a b","c\"d","NULL",NULL,"x\\y",""," sp ",null,é}"#
        ),
        json!(["a b", "c\"d", "NULL", null, "x\\y", "", " sp ", null, "é"])
    );
    assert_eq!(text_to_json(&texts, "{ a , b }"), json!(["a", "b"]));
    let nums = arr(TypeKind::Numeric, b',');
    assert_eq!(
        text_to_json(&nums, "{1.50,NaN,-Infinity}"),
        json!([num("1.50"), "NaN", "-Infinity"])
    );
    let floats = arr(TypeKind::Float, b',');
    assert_eq!(
        text_to_json(&floats, "{1.5e-07,-0,NaN,Infinity}"),
        json!([num("0.00000015"), 0, "NaN", "Infinity"])
    );
    let jsons = arr(TypeKind::Json, b',');
    assert_eq!(
        text_to_json(&jsons, r#"{"{\"a\": 1}","[1, 2]",NULL}"#),
        json!([{"a": 1}, [1, 2], null])
    );
    let bools = arr(TypeKind::Bool, b',');
    assert_eq!(
        text_to_json(&bools, "{t,f,NULL}"),
        json!([true, false, null])
    );
    let tstz = arr(TypeKind::TimestampTz, b',');
    assert_eq!(
        text_to_json(&tstz, r#"{"2024-01-02 03:04:05+00",infinity}"#),
        json!(["2024-01-02T03:04:05+00:00", "infinity"])
    );
    let boxes = arr(TypeKind::Text, b';');
    assert_eq!(
        text_to_json(&boxes, "{(3,4),(1,2);(1,1),(0,0)}"),
        json!(["(3,4),(1,2)", "(1,1),(0,0)"])
    );
    // A domain over int[] as array element: the inner arrays arrive quoted.
    let nested = arr(ints.clone(), b',');
    assert_eq!(
        text_to_json(&nested, r#"{"{1,2}","{3}",NULL}"#),
        json!([[1, 2], [3], null])
    );
    // int2vector / oidvector text.
    let vec = arr(TypeKind::Integer, b' ');
    assert_eq!(text_to_json(&vec, "1 2 3"), json!([1, 2, 3]));
    assert_eq!(text_to_json(&vec, ""), json!([]));
    assert_eq!(
        text_to_json(&arr(vec, b','), "{1,\"2 3\"}"),
        json!([[1], [2, 3]])
    );
}

#[test]
fn malformed_arrays_become_strings() {
    let ints = arr(TypeKind::Integer, b',');
    for s in [
        "",
        "{",
        "{1,2",
        "{1,,2}",
        "{1}}",
        "{\"a}",
        "[0:1]",
        "{1}x",
        "{{{{{{{1}}}}}}}",
        "{\\",
    ] {
        assert_eq!(text_to_json(&ints, s), json!(s), "{s:?}");
    }
    // Elements that do not parse as their kind fall back individually.
    assert_eq!(text_to_json(&ints, "{1,x}"), json!([1, "x"]));
}

#[test]
fn garbage_never_panics_or_gives_null() {
    let samples = [
        "",
        " ",
        "-",
        "+1",
        "1.",
        ".5",
        "1e",
        "1e+",
        "01",
        "--1",
        "1e99999999999999999999999",
        "é",
        "{",
        "}",
        "\"",
        "\\",
        "[",
        "[1:2]=",
        "2024-01-02 ",
        "2024-01-02 03",
        "a b c d",
        "2024-01-02 03:04:05+",
        "9999999999-01-01 00:00:00+00",
    ];
    for kind in all_kinds() {
        for s in samples {
            assert_ne!(text_to_json(&kind, s), Value::Null, "{kind:?} {s:?}");
        }
    }
}

/// Postgres's `float8out` spelling of a float: Rust's shortest digits, exponent with a sign and
/// at least two digits (`1.5e-07`), plain notation for decimal exponents -4..15.
fn pg_float_text(f: f64) -> String {
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..15).contains(&exp) {
        format!("{f}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

proptest! {
    #[test]
    fn never_panics_never_null(s in ".*", k in 0usize..45) {
        let kinds = all_kinds();
        let kind = &kinds[k % kinds.len()];
        prop_assert_ne!(text_to_json(kind, &s), Value::Null);
    }

    #[test]
    fn arrays_of_arbitrary_shape_never_panic(s in r#"[\[\]{}",\\:=0-9a-zNUL ;-]{0,40}"#) {
        for kind in all_kinds() {
            prop_assert_ne!(text_to_json(&kind, &s), Value::Null);
        }
    }

    /// Rust's `Display` of an f64 is its shortest round-trip digits written out without an
    /// exponent — exactly what numeric_in makes of Postgres's shortest-digits float text.
    #[test]
    fn float_text_normalizes_to_plain_decimal(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = pg_float_text(f);
        let got = text_to_json(&TypeKind::Float, &text);
        let want = if f == 0.0 { "0".to_owned() } else { format!("{f}") };
        prop_assert_eq!(got.to_string(), want);
        prop_assert_eq!(got.as_f64(), Some(if f == 0.0 { 0.0 } else { f }));
    }

    #[test]
    fn int_arrays_round_trip(v in proptest::collection::vec(proptest::option::of(any::<i64>()), 0..20)) {
        let text = format!(
            "{{{}}}",
            v.iter()
                .map(|x| x.map_or("NULL".to_owned(), |x| x.to_string()))
                .collect::<Vec<_>>()
                .join(",")
        );
        prop_assert_eq!(text_to_json(&arr(TypeKind::Integer, b','), &text), json!(v));
    }
}
