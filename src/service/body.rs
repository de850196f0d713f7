//! Reading requests: bodies (with the size cap), JSON objects and their fields, query strings.

use bytes::Bytes;
use http::Request;
use http::header::{self, HeaderMap};
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

use super::{BoxError, MAX_NAME_LEN};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::protocol::ProtocolError;

pub async fn read_body<B>(request: Request<B>, gateway: &Gateway) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        let mime = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    collect_body(body, &parts.headers, gateway.config.server.max_body_bytes).await
}

pub async fn read_json<B>(
    request: Request<B>,
    gateway: &Gateway,
) -> Result<Map<String, Value>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let body = read_body(request, gateway).await?;
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// Reads a whole body, refusing (413) one that declares or reaches more than `limit` bytes.
pub async fn collect_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body could not be read: {e}"
        ))),
    }
}

pub fn only_fields(body: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(field_error(
            unknown,
            &format!("unknown field (expected {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

pub fn take_string(body: &mut Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_error(field, "must be a string")),
    }
}

pub fn take_name(body: &mut Map<String, Value>) -> Result<Option<String>, ApiError> {
    let Some(name) = take_string(body, "name")? else {
        return Ok(None);
    };
    let name = name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control)
    {
        return Err(field_error(
            "name",
            &format!("must be 1 to {MAX_NAME_LEN} characters, without control characters"),
        ));
    }
    Ok(Some(name))
}

pub fn field_error(field: &str, reason: &str) -> ApiError {
    ApiError::InvalidField(ProtocolError {
        field: field.to_owned(),
        reason: reason.to_owned(),
    })
}

/// The value of `name` in a query string (`""` for a bare `name`), if present.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}
