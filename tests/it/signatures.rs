//! Receivers that follow the Archie document verify what walhook signs.
//!
//! The document's own Python `verify_webhook_signature` and Node `verifyWebhookSignature`,
//! copied verbatim into `tests/verify/`, run as subprocesses over the exact body bytes and
//! header values walhook produces. `python3` and `node` are required: without them these tests
//! fail (a skipped compatibility test would hide exactly the breakage it exists to catch).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use base64::Engine;
use walhook::config::{Format, SignatureScheme};
use walhook::deliver::sign::{
    archie_hex, delivery_headers, standard_signature, SignInput, StandardKey,
};

/// Real-looking Archie payloads as walhook stores them: compact, fields in order, numerics
/// with Postgres' digits (99.50 keeps its trailing zero, big values keep every digit).
const BODIES: &[&str] = &[
    r#"{"id":"evt_00000000016B3D28_0","timestamp":"2025-12-15T15:00:00.123456Z","project_id":"your-project-id","environment":"master","table":"orders","event":"INSERT","record":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","total":99.50,"status":"pending","customer_id":"cust-001","created_at":"2025-12-15T15:00:00.123456+00:00","meta":{"tags":["a","b"],"nested":{"x":null,"ok":true}}},"data":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","total":99.50,"status":"pending","customer_id":"cust-001","created_at":"2025-12-15T15:00:00.123456+00:00","meta":{"tags":["a","b"],"nested":{"x":null,"ok":true}}},"changed_fields":[]}"#,
    r#"{"id":"evt_00000000016B3D28_1","timestamp":"2025-12-15T15:00:01Z","project_id":"p","environment":"master","table":"public.people","event":"UPDATE","record":{"id":7,"name":"Zoë 🚀 日本語 — Ω","note":"line1\nline2\t\"quoted\" \\ back / slash \u0001 end"},"data":{"id":7,"name":"Zoë 🚀 日本語 — Ω","note":"line1\nline2\t\"quoted\" \\ back / slash \u0001 end"},"changed_fields":["name","note"]}"#,
    r#"{"id":"evt_00000000016B3D28_2","timestamp":"2025-12-15T15:00:02Z","project_id":"p","environment":"master","table":"ledger","event":"UPDATE","record":{"id":12345678901234567890,"amount":12345678901234567890.12,"tiny":-0.000001,"f":1.5e-7,"zero":0.00},"data":{"id":12345678901234567890,"amount":12345678901234567890.12,"tiny":-0.000001,"f":1.5e-7,"zero":0.00},"changed_fields":["amount"]}"#,
    r#"{"id":"evt_00000000016B3D28_3","timestamp":"2025-12-15T15:00:03Z","project_id":"p","environment":"master","table":"orders","event":"DELETE","record":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","total":null,"paid":false,"items":[1,2,3]},"data":{"id":"f47ac10b-58cc-4372-a567-0e02b2c3d479","total":null,"paid":false,"items":[1,2,3]},"changed_fields":[]}"#,
    r#"{"id":"evt_ping_1","timestamp":"2025-12-15T15:00:04Z","project_id":"p","environment":"master","table":"orders","event":"PING","record":{},"data":{},"changed_fields":[]}"#,
];

/// Bodies JavaScript re-serialises to the same bytes: compact, strings escaped as
/// JSON.stringify does, numbers in their shortest form, no integer-like keys.
const JS_CANONICAL: &[&str] = &[
    r#"{"id":"evt_1","timestamp":"2025-12-15T15:00:00Z","project_id":"p","environment":"master","table":"orders","event":"INSERT","record":{"id":42,"total":99.5,"status":"pending","name":"Zoë 🚀","note":"a\nb\"c\\"},"data":{"id":42,"total":99.5,"status":"pending","name":"Zoë 🚀","note":"a\nb\"c\\"},"changed_fields":[]}"#,
    r#"{"id":"evt_ping_1","timestamp":"2025-12-15T15:00:04Z","project_id":"p","environment":"master","table":"orders","event":"PING","record":{},"data":{},"changed_fields":[]}"#,
];

const SECRETS: &[&str] = &[
    "whsec_your_signing_secret",
    "sécret-🔑-ключ",
    // Longer than SHA-256's 64-byte block: HMAC hashes the key first; both sides must agree.
    "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdef",
];

fn verify_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/verify")
}

struct Case<'a> {
    mode: &'a str,
    body: Vec<u8>,
    signature: String,
    secret: &'a str,
}

/// Runs `program script` with one JSON line per case on stdin; one answer line per case.
fn run(program: &str, script: &str, cases: &[Case]) -> Vec<String> {
    let mut input = String::new();
    for c in cases {
        let line = serde_json::json!({
            "mode": c.mode,
            "body_b64": base64::engine::general_purpose::STANDARD.encode(&c.body),
            "signature": c.signature,
            "secret": c.secret,
        });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut child = Command::new(program)
        .arg(verify_dir().join(script))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "`{program}` is required to run tests/signatures.rs (it runs the Archie \
                 document's own verifier); install it and make sure it is on PATH: {e}"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write cases");
    let out = child.wait_with_output().expect("wait for verifier");
    assert!(
        out.status.success(),
        "{program} {script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines.len(),
        cases.len(),
        "one answer per case from {script}"
    );
    lines
}

fn archie_headers(body: &[u8], secret: &str) -> walhook::deliver::sign::Headers {
    delivery_headers(&SignInput {
        format: Format::Json,
        scheme: SignatureScheme::Archie,
        secret,
        previous_secret: None,
        event_id: "evt_00000000016B3D28_0",
        event: "INSERT",
        body,
        now_unix: 1_765_810_800,
        signature_header: None,
    })
    .expect("headers")
}

fn header<'h>(h: &'h [(std::borrow::Cow<'static, str>, String)], name: &str) -> &'h str {
    h.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("missing header {name}"))
}

fn tamper(body: &[u8]) -> Vec<u8> {
    let mut t = body.to_vec();
    let i = t.len() / 2;
    t[i] ^= 0x01;
    t
}

/// For every body and secret: our `X-Archie-Signature` (with prefix) and `X-Webhook-Signature`
/// (bare hex) verify, and a body with one byte changed does not.
fn signed_cases(mode: &'static str) -> (Vec<Case<'static>>, Vec<String>) {
    let mut cases = Vec::new();
    let mut expect = Vec::new();
    for body in BODIES {
        for secret in SECRETS {
            let h = archie_headers(body.as_bytes(), secret);
            for name in ["X-Archie-Signature", "X-Webhook-Signature"] {
                let signature = header(&h, name).to_string();
                cases.push(Case {
                    mode,
                    body: body.as_bytes().to_vec(),
                    signature: signature.clone(),
                    secret,
                });
                expect.push(format!("true  ({name}, {secret:?}, {body})"));
                cases.push(Case {
                    mode,
                    body: tamper(body.as_bytes()),
                    signature,
                    secret,
                });
                expect.push(format!("false (tampered, {name}, {secret:?}, {body})"));
            }
        }
    }
    (cases, expect)
}

fn check(got: &[String], expect: &[String]) {
    for (g, e) in got.iter().zip(expect) {
        let want = e.split_whitespace().next().unwrap_or_default();
        assert_eq!(g, want, "case: {e}");
    }
}

#[test]
fn python_verifier_from_the_archie_document_accepts_our_signatures() {
    let (cases, expect) = signed_cases("raw");
    let got = run("python3", "archie_verify.py", &cases);
    check(&got, &expect);
}

#[test]
fn node_verifier_from_the_archie_document_accepts_our_signatures() {
    let (cases, expect) = signed_cases("raw");
    let got = run("node", "archie_verify.js", &cases);
    check(&got, &expect);
}

/// The document's Node handler verifies `JSON.stringify(req.body)`, i.e. the body parsed and
/// re-serialised by JavaScript. That reproduces our bytes only when they are already in
/// JavaScript's canonical form, so it works for such bodies...
#[test]
fn node_stringify_handler_accepts_js_canonical_bodies() {
    let cases = stringify_cases(JS_CANONICAL);
    let got = run("node", "archie_verify.js", &cases);
    assert_eq!(got, vec!["true"; cases.len()], "{JS_CANONICAL:?}");
}

/// ...and fails for real Postgres values: JSON.stringify rewrites `99.50` as `99.5` and rounds
/// `12345678901234567890.12` to a double, so the HMAC is computed over different bytes than
/// were sent. This is a property of the receiver code, not a walhook bug: receivers must verify
/// the raw request body (express.raw(), request.get_data()), as the Python example does.
#[test]
fn node_stringify_handler_fails_when_json_stringify_rewrites_numbers() {
    let cases = stringify_cases(&[BODIES[0], BODIES[2]]);
    assert!(BODIES[0].contains("\"total\":99.50"));
    assert!(BODIES[2].contains("12345678901234567890.12"));
    let got = run("node", "archie_verify.js", &cases);
    assert_eq!(got, vec!["false"; cases.len()]);

    // The very same bodies verify when the handler uses the raw bytes.
    let raw: Vec<Case> = cases
        .into_iter()
        .map(|c| Case { mode: "raw", ..c })
        .collect();
    assert_eq!(
        run("node", "archie_verify.js", &raw),
        vec!["true"; raw.len()]
    );
}

/// The signature is exactly the document's HMAC: hex of HMAC-SHA256(secret bytes, body).
#[test]
fn archie_header_values_have_the_documented_shape() {
    let body = BODIES[0].as_bytes();
    let h = archie_headers(body, SECRETS[1]);
    let hex = archie_hex(SECRETS[1].as_bytes(), body);
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(header(&h, "x-archie-signature"), format!("sha256={hex}"));
    assert_eq!(header(&h, "x-webhook-signature"), hex);
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(header(&h, "x-archie-event"), "INSERT");
    assert_eq!(header(&h, "x-archie-delivery"), "evt_00000000016B3D28_0");
    assert_eq!(
        header(&h, "user-agent"),
        concat!("walhook/", env!("CARGO_PKG_VERSION"))
    );
}

/// The Standard Webhooks specification's published vector
/// (standard-webhooks/standard-webhooks, libraries/*: "sign function works").
#[test]
fn standard_webhooks_spec_vector() {
    let key = StandardKey::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert_eq!(
        standard_signature(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    let h = delivery_headers(&SignInput {
        format: Format::Json,
        scheme: SignatureScheme::Standard,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        previous_secret: None,
        event_id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
        event: "INSERT",
        body: br#"{"test": 2432232314}"#,
        now_unix: 1614265330,
        signature_header: None,
    })
    .unwrap();
    assert_eq!(header(&h, "webhook-id"), "msg_p5jXN8AQM9LWM0D4loKWxJek");
    assert_eq!(header(&h, "webhook-timestamp"), "1614265330");
    assert_eq!(
        header(&h, "webhook-signature"),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

/// The seed's Node handler path (`JSON.stringify(req.body)`) for each body, signed with our headers.
fn stringify_cases(bodies: &[&str]) -> Vec<Case<'static>> {
    bodies
        .iter()
        .map(|body| Case {
            mode: "stringify",
            body: body.as_bytes().to_vec(),
            signature: header(
                &archie_headers(body.as_bytes(), SECRETS[0]),
                "X-Archie-Signature",
            )
            .to_string(),
            secret: SECRETS[0],
        })
        .collect()
}
