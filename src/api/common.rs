//! Small helpers every handler module shares: path and body extraction with the API's error
//! shapes, loading a subscription or answering 404, and the time format of responses.
//!
//! Guarantees: a bad path id is a 404 and an unreadable body a 400 (413 when too large), never a
//! 5xx; times are RFC 3339 UTC with whole seconds. This module imports no sibling handler, so
//! handler modules never import each other back.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::Path;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};

use super::error::ApiError;
use crate::outbox::subscriptions::{load_one, Stored};
use crate::outbox::Schema;

pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A path `{id}`: any rejection (bad percent-encoding) or an id no row can have is a 404.
pub(super) fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match p {
        Ok(Path(id)) if !id.contains('\0') => Ok(id),
        _ => Err(ApiError::NotFound("no such webhook".into())),
    }
}

pub(super) fn body_bytes(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest {
                message: format!("cannot read the request body: {e}"),
                field: None,
            }
        }
    })
}

/// 404 for a subscription id with no row.
pub(super) fn no_webhook(id: &str) -> ApiError {
    ApiError::NotFound(format!("no webhook with id {id:?}"))
}

/// Loads one subscription, or 404.
pub(super) async fn find(
    client: &tokio_postgres::Client,
    schema: &Schema,
    id: &str,
) -> Result<Stored, ApiError> {
    load_one(client, schema, id)
        .await?
        .ok_or_else(|| no_webhook(id))
}
