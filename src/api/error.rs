//! The API's error type and its JSON form, `{"error": "...", "field": "..."}`.
//!
//! Guarantees:
//! - every error response is JSON with a human-readable `error`, and `field` when one field or
//!   header is at fault;
//! - bad input maps to 4xx; 5xx means a database is unreachable (503) or a bug (500);
//! - database error details are logged, never sent to the client (they can name internal
//!   objects); no error message ever carries a secret, because none is ever formatted into one.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{error, warn};

use crate::outbox::OutboxError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a missing or wrongly-typed field or header, a bad query parameter.
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
    },
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Project or environment mismatch.
    #[error("{message}")]
    Forbidden { message: String, field: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the limit")]
    TooLarge,
    /// Well-formed, but the value is not acceptable: unknown table or column, bad filter, URL…
    #[error("{message}")]
    Unprocessable {
        message: String,
        field: Option<String>,
    },
    /// A database could not be reached; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn bad(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::Unprocessable {
            message: message.into(),
            field: Some(field.to_string()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { field, .. } | ApiError::Unprocessable { field, .. } => {
                field.as_deref()
            }
            ApiError::Forbidden { field, .. } => Some(field),
            ApiError::Unauthorized => Some("Authorization"),
            _ => None,
        }
    }

    /// Classifies a database error: connection trouble is 503 (retry later), anything else is a
    /// bug or a broken schema and is 500. The detail goes to the log only.
    pub fn from_db(context: &str, e: &dyn std::fmt::Display, retryable: bool) -> ApiError {
        if retryable {
            warn!(error = %e, "{context}: database unavailable");
            ApiError::Unavailable(format!("{context}: database unavailable, try again later"))
        } else {
            error!(error = %e, "{context}: database error");
            ApiError::Internal
        }
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> ApiError {
        match &e {
            // A hand-edited row that no longer parses: say which, the detail holds no secret.
            OutboxError::BadSubscription { .. } => {
                error!(error = %e, "stored subscription is invalid");
                ApiError::Internal
            }
            _ => ApiError::from_db("outbox", &e, e.is_retryable()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        ApiError::from_db(
            "outbox",
            &crate::pg::pool_error_text(&e),
            crate::pg::pool_error_is_retryable(&e),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.to_string() });
        if let Some(f) = self.field() {
            body["field"] = json!(f);
        }
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
