//! Reading the TLS settings out of a libpq connection string (URL or key=value), because
//! tokio-postgres rejects the ones it does not implement (`verify-ca`, `verify-full`,
//! `sslrootcert`). Everything else is left exactly as written, for tokio-postgres to parse.

use crate::model::BadValue;

/// The TLS settings tokio-postgres does not parse, taken out of a connection string.
#[derive(Default)]
pub(super) struct TlsParams {
    pub(super) sslmode: Option<String>,
    pub(super) sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` out of a URL (`postgres://…?sslmode=…`) or a key=value
/// string, returning the rest for tokio-postgres unchanged.
pub(super) fn split_tls_params(s: &str) -> Result<(String, TlsParams), BadValue> {
    let mut tls = TlsParams::default();
    let mut take = |key: &str, value: String| -> bool {
        match key {
            "sslmode" => tls.sslmode = Some(value),
            "sslrootcert" => tls.sslrootcert = Some(value),
            _ => return false,
        }
        true
    };
    let rest = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        match s.split_once('?') {
            None => s.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&') {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(&percent_decode(k)?, percent_decode(v)?) {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(s)? {
            if !take(&k, v.clone()) {
                kept.push(format!(
                    "{k}='{}'",
                    v.replace('\\', "\\\\").replace('\'', "\\'")
                ));
            }
        }
        kept.join(" ")
    };
    Ok((rest, tls))
}

fn percent_decode(s: &str) -> Result<String, BadValue> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("invalid percent-encoding in the connection URL")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the connection URL is not UTF-8 once decoded".into())
}

/// libpq's key=value syntax: `key = value` or `key='quoted \' value'`, separated by spaces.
fn key_values(s: &str) -> Result<Vec<(String, String)>, BadValue> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing '=' after {key:?} in the connection string").into());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(format!("unterminated quoted value of {key:?}").into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PgConfig, SslMode};
    use super::*;

    fn split(s: &str) -> (String, Option<String>, Option<String>) {
        let (rest, t) = split_tls_params(s).unwrap();
        (rest, t.sslmode, t.sslrootcert)
    }

    #[test]
    fn tls_keys_are_taken_out_of_urls_and_key_values() {
        assert_eq!(
            split("postgres://u:p%40ss@h:5/db?sslmode=verify-full&application_name=a&sslrootcert=%2Ftmp%2Fca%20x.pem"),
            (
                "postgres://u:p%40ss@h:5/db?application_name=a".into(),
                Some("verify-full".into()),
                Some("/tmp/ca x.pem".into())
            )
        );
        assert_eq!(
            split("postgres://h/db?sslmode=verify-ca"),
            ("postgres://h/db".into(), Some("verify-ca".into()), None)
        );
        assert_eq!(
            split(
                "host=h password='it\\'s' sslmode = verify-ca sslrootcert='/a b/c\\'d.pem' dbname=x"
            ),
            (
                "host='h' password='it\\'s' dbname='x'".into(),
                Some("verify-ca".into()),
                Some("/a b/c'd.pem".into())
            )
        );
    }

    #[test]
    fn modes_and_roots() {
        let c = PgConfig::parse("postgres://h/db?sslmode=verify-full").unwrap();
        assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
        assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let c = PgConfig::parse("host=h sslmode=disable password='it\\'s a\\\\b'").unwrap();
        assert_eq!(c.ssl_mode(), SslMode::Disable);
        assert_eq!(c.get_password(), Some(&b"it's a\\b"[..]));
        assert_eq!(
            PgConfig::parse("postgres://h/db").unwrap().ssl_mode(),
            SslMode::Prefer
        );
        let c = PgConfig::parse("postgres://h/db?sslrootcert=system").unwrap();
        assert_eq!(c.ssl_mode(), SslMode::VerifyFull);
        let e = PgConfig::parse("postgres://h/db?sslrootcert=system&sslmode=require").unwrap_err();
        assert!(e.contains("verify-full"), "{e}");
        let e = PgConfig::parse("postgres://u:hunter2@h/db?sslmode=allow").unwrap_err();
        assert!(e.contains("unsupported sslmode \"allow\""), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e =
            PgConfig::parse("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
                .unwrap_err();
        assert!(
            e.starts_with("sslrootcert: cannot read /nonexistent/ca.pem"),
            "{e}"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, b"not a certificate\n").unwrap();
        let url = format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            f.path().display()
        );
        let e = PgConfig::parse(&url).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
    }
}
