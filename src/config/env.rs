//! `${ENV_VAR}` expansion inside config strings.
//!
//! Expansion happens while deserializing, so an unset variable is reported by toml with the
//! line, column and key of the value that uses it. `$${` stands for a literal `${`.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::model::{BadValue, Filter, Secret};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct EnvString(pub String);

impl EnvString {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EnvString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand(&raw, |name| std::env::var(name).ok())
            .map(EnvString)
            .map_err(serde::de::Error::custom)
    }
}

/// config.toml's filters expand `${VAR}` in their operands; stored and API filters are taken
/// literally ([`Filter::from_json`]).
impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let env = |s: &str| expand(s, |n| std::env::var(n).ok());
        Filter::parse(&v, Some(&env)).map_err(serde::de::Error::custom)
    }
}

/// A secret in config.toml may come from the environment, like any other string.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvString::deserialize(d).map(|s| Secret::new(s.0))
    }
}

/// Replaces each `${NAME}` using `lookup`; errors name the missing or malformed variable.
pub fn expand(raw: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, BadValue> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {raw:?}: expected `${{NAME}}`"))?;
            let name = &tail[..end];
            if name.is_empty()
                || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.starts_with(|c: char| c.is_ascii_digit())
            {
                return Err(format!(
                    "invalid environment variable name {name:?}: use letters, digits and '_'"
                )
                .into());
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stored_filters_are_literal_config_filters_expand() {
        std::env::set_var("WALHOOK_FILTER_TEST", "expanded");
        let stored = Filter::from_json(&json!({"status": "${WALHOOK_FILTER_TEST}"})).unwrap();
        assert_eq!(stored.conditions[0].value, json!("${WALHOOK_FILTER_TEST}"));
        let from_config: Filter =
            serde_json::from_value(json!({"status": "${WALHOOK_FILTER_TEST}"})).unwrap();
        assert_eq!(from_config.conditions[0].value, json!("expanded"));
    }

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3".to_string())
    }

    #[test]
    fn expands_known_variables_and_keeps_plain_dollars() {
        assert_eq!(expand("a${SECRET}b", env).unwrap(), "as3b");
        assert_eq!(expand("$5 and $x", env).unwrap(), "$5 and $x");
        assert_eq!(expand("lit $${SECRET}", env).unwrap(), "lit ${SECRET}");
    }

    #[test]
    fn names_the_missing_variable() {
        let err = expand("${ORDERS_SECRET}", env).unwrap_err();
        assert_eq!(err, "environment variable ORDERS_SECRET is not set");
        assert!(expand("${OOPS", env).unwrap_err().contains("unterminated"));
        assert!(expand("${A-B}", env).unwrap_err().contains("invalid"));
    }
}
