//! Table names and SQL identifier quoting.
//!
//! Guarantees: [`TableName::parse`] accepts only `table` or `schema.table` with non-empty parts
//! free of whitespace and double quotes; [`quote_ident`] always quotes, so any identifier Postgres
//! accepts is safe to splice into SQL.

use super::BadValue;
use std::fmt;

/// A table as `schema.table`; a bare name means `public`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn parse(s: &str) -> Result<TableName, BadValue> {
        let parts: Vec<&str> = s.split('.').collect();
        let valid = |p: &str| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c == '"');
        match parts.as_slice() {
            [name] if valid(name) => Ok(TableName {
                schema: "public".into(),
                name: name.to_string(),
            }),
            [schema, name] if valid(schema) && valid(name) => Ok(TableName {
                schema: schema.to_string(),
                name: name.to_string(),
            }),
            _ => Err(
                format!("invalid table name {s:?}: expected \"table\" or \"schema.table\"").into(),
            ),
        }
    }

    /// Quoted for SQL, e.g. `"public"."orders"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The name payloads carry: bare for `public`, `schema.table` otherwise.
    pub fn display_name(&self) -> String {
        if self.schema == "public" {
            self.name.clone()
        } else {
            format!("{}.{}", self.schema, self.name)
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
