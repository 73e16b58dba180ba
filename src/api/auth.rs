//! Authentication of the management endpoints (`/api/rest/_webhooks…`).
//!
//! Guarantees:
//! - checked before any handler runs and before the body is read, in a fixed order: bearer
//!   token (401), `X-Project-ID` (400 missing, 403 mismatch), `environment` (400 missing, 403
//!   mismatch);
//! - the token is compared in constant time: both sides are hashed with SHA-256 first, so
//!   neither the content nor the length of the expected token leaks through timing;
//! - the token is never logged or echoed.
//!
//! The `environment` header may be left out only on requests that carry it in the body (create
//! and update): the seed's own curl example sends it in the body alone. Those handlers receive
//! [`EnvHeaderMissing`] and must find `environment` in the body; every other handler rejects
//! the request through [`EnvHeader`].

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::{ApiState, Ctx};

pub const PROJECT_HEADER: &str = "X-Project-ID";
pub const ENVIRONMENT_HEADER: &str = "environment";

/// Request extension: the `environment` header was absent (allowed on POST/PATCH only).
#[derive(Clone, Copy, Debug)]
pub struct EnvHeaderMissing;

/// Extractor for handlers whose request has no body carrying `environment`: the header is
/// required.
pub struct EnvHeader;

impl<S: Send + Sync> FromRequestParts<S> for EnvHeader {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        if parts.extensions.get::<EnvHeaderMissing>().is_some() {
            return Err(missing(ENVIRONMENT_HEADER));
        }
        Ok(EnvHeader)
    }
}

/// Middleware run on every management route.
pub async fn require_auth(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    match check(&ctx.state, req.method(), req.headers()) {
        Ok(env_missing) => {
            if env_missing {
                req.extensions_mut().insert(EnvHeaderMissing);
            }
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Returns whether the environment header was missing (on a method that may carry it in its
/// body).
fn check(state: &ApiState, method: &Method, headers: &HeaderMap) -> Result<bool, ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or(ApiError::Unauthorized)?;
    if !token_matches(presented, state.token.expose()) {
        return Err(ApiError::Unauthorized);
    }
    let project = headers.get(PROJECT_HEADER).ok_or(missing(PROJECT_HEADER))?;
    if project.as_bytes() != state.project_id.as_bytes() {
        return Err(ApiError::Forbidden {
            message: format!("{PROJECT_HEADER} does not match this walhook's project"),
            field: PROJECT_HEADER.into(),
        });
    }
    match headers.get(ENVIRONMENT_HEADER) {
        Some(env) => {
            check_environment(env.as_bytes(), &state.environment, ENVIRONMENT_HEADER)?;
            Ok(false)
        }
        None if method == Method::POST || method == Method::PATCH => Ok(true),
        None => Err(missing(ENVIRONMENT_HEADER)),
    }
}

/// The environment (from the header or a body) must be this walhook's.
pub fn check_environment(given: &[u8], expected: &str, field: &str) -> Result<(), ApiError> {
    if given != expected.as_bytes() {
        return Err(ApiError::Forbidden {
            message: format!("{field} does not match this walhook's environment"),
            field: field.into(),
        });
    }
    Ok(())
}

pub fn missing(header: &str) -> ApiError {
    ApiError::bad(header, format!("missing required header {header}"))
}

/// The credentials of `Bearer <token>` (scheme case-insensitive, as RFC 9110 says).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

fn token_matches(presented: &str, expected: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn token_comparison() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
