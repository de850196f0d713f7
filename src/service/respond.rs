//! Writing responses, and the one place an [`ApiError`] becomes one.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use tracing::warn;

use super::Body;
use crate::error::ApiError;
use crate::hawk_auth;

/// The status and JSON body for an error: the only place errors are turned into responses.
pub fn error_body(error: &ApiError) -> (StatusCode, Value) {
    if let ApiError::Internal(detail) = error {
        warn!(%detail, "internal error");
    }
    let status = error.status();
    let body = json!({
        "code": status.as_u16(),
        "errno": error.errno(),
        "error": status.canonical_reason().unwrap_or("Error"),
        "message": error.public_message(),
    });
    (status, body)
}

/// An error as a complete response, with the headers its status calls for.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let (status, body) = error_body(error);
    let mut response = json_response(status, &body);
    let headers = response.headers_mut();
    match error {
        ApiError::HawkStale { now, tsm, .. } => {
            if let Ok(v) = HeaderValue::from_str(&hawk_auth::stale_challenge(*now, tsm)) {
                headers.insert(header::WWW_AUTHENTICATE, v);
            }
        }
        ApiError::HawkHeader(_)
        | ApiError::HawkMac
        | ApiError::HawkReplay
        | ApiError::UnknownDevice => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Hawk"));
        }
        ApiError::MissingBearer | ApiError::InvalidToken | ApiError::OidcToken(_) => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        ApiError::MethodNotAllowed { allow } => {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        ApiError::RateLimited { retry_after_secs } => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        ApiError::Overloaded | ApiError::StorageUnavailable | ApiError::OidcUnavailable => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        ApiError::RemoteUnavailable => {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(REMOTE_RETRY_AFTER),
            );
        }
        _ => {}
    }
    response
}

/// Seconds a client waits before retrying when the storage a user linked is down: long enough
/// for a restart or a network blip, short enough for a phone's next sync.
pub const REMOTE_RETRY_AFTER: &str = "5";

pub fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, Bytes::from(bytes))
}

pub fn bytes_response(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
