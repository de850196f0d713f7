//! Hawk authentication of device requests, and signing of the answers to them.
//!
//! Every device-facing endpoint goes through [`verify`]; every answer to a request that
//! verified is signed by its [`Signer`] (`Server-Authorization`), errors included, so the
//! device can tell our answers from anyone else's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::Value;

use super::{Body, BoxError, bytes_response, collect_body, error_body};
use crate::device::{Device, DeviceKey};
use crate::error::ApiError;
use crate::forwarded::{Origin, Proto};
use crate::gateway::Gateway;
use crate::hawk_auth::{self, Signed};
use crate::ids::DeviceId;
use crate::metrics::HawkFailure;

/// A device request whose signature, timestamp and nonce checked out.
#[derive(Debug)]
pub struct Verified {
    pub device: Arc<Device>,
    /// The whole request body (its hash was part of the signature).
    pub body: Bytes,
    /// Signs the answers to this request.
    pub signer: Signer,
}

/// What signing an answer needs: the device's key and the request's signed parts.
///
/// Kept small on purpose, because a parked poll holds one for as long as it waits: of the
/// request's Hawk header only the timestamp and nonce (which the answer's MAC is bound to),
/// and the strings in one allocation rather than one each.
#[derive(Debug)]
pub struct Signer {
    key: Arc<DeviceKey>,
    /// The request's `ts`.
    ts: SystemTime,
    method: Method,
    port: u16,
    /// The request's path and query, then its host, then its nonce.
    text: Box<str>,
    /// Where the host starts in `text`.
    host_at: usize,
    /// Where the nonce starts in `text`.
    nonce_at: usize,
}

/// Reads the body and checks the request's Hawk signature (credential id = device id, sha256,
/// payload hash required), its timestamp (within `hawk.skew_secs`) and its nonce (never seen
/// before within the window). `path_id`, when given, must be the credential id.
///
/// Nothing changes when verification fails, except that a nonce that verified is remembered.
/// Failures are counted by reason for `/metrics`.
pub async fn verify<B>(
    parts: &http::request::Parts,
    body: B,
    gateway: &Gateway,
    path_id: Option<&str>,
) -> Result<Verified, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let limit = gateway.config.server.max_body_bytes;
    verify_limited(parts, body, gateway, path_id, limit).await
}

/// [`verify`] with another body size limit than `server.max_body_bytes` (sync batches).
pub async fn verify_limited<B>(
    parts: &http::request::Parts,
    body: B,
    gateway: &Gateway,
    path_id: Option<&str>,
    body_limit: usize,
) -> Result<Verified, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    verify_signed(parts, body, gateway, path_id, body_limit)
        .await
        .inspect_err(|error| {
            let failure = match error {
                ApiError::HawkHeader(_) => HawkFailure::Header,
                ApiError::UnknownDevice => HawkFailure::UnknownDevice,
                ApiError::HawkMac => HawkFailure::Mac,
                ApiError::HawkStale { .. } => HawkFailure::Stale,
                ApiError::HawkReplay => HawkFailure::Replay,
                _ => HawkFailure::Body,
            };
            gateway.metrics.hawk_failed(failure);
        })
}

async fn verify_signed<B>(
    parts: &http::request::Parts,
    body: B,
    gateway: &Gateway,
    path_id: Option<&str>,
    body_limit: usize,
) -> Result<Verified, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let config = &gateway.config;
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::HawkHeader("no Authorization header"))?
        .to_str()
        .map_err(|_| ApiError::HawkHeader("not ASCII"))?;
    let hawk_header = hawk_auth::parse_authorization(authorization)?;
    let id = hawk_header
        .id
        .as_deref()
        .ok_or(ApiError::HawkHeader("no credential id"))?;
    if path_id.is_some_and(|path_id| path_id != id) {
        return Err(ApiError::HawkHeader(
            "the credential id must be the device id in the path",
        ));
    }
    let device = id
        .parse::<DeviceId>()
        .ok()
        .and_then(|id| gateway.registry.get(&id))
        .ok_or(ApiError::UnknownDevice)?;
    let key = device.key().ok_or(ApiError::UnknownDevice)?;
    let body = collect_body(body, &parts.headers, body_limit).await?;
    let (host, port) = match config.public_authority() {
        Some(public) => public,
        None => authority(parts)?,
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let signed = Signed {
        method: parts.method.as_str(),
        host: &host,
        port,
        path: &path,
    };
    let now = SystemTime::now();
    let skew = Duration::from_secs(config.hawk.skew_secs);
    hawk_auth::verify(
        &hawk_header,
        &key.0,
        &signed,
        content_type,
        &body,
        skew,
        now,
    )?;
    let ts = hawk_auth::unix_secs(hawk_header.ts.unwrap_or(now));
    let nonce = hawk_header.nonce.as_deref().unwrap_or("");
    let window = 2 * config.hawk.skew_secs;
    let now_secs = hawk_auth::unix_secs(now);
    if !device.check_nonce(ts, nonce, now_secs, window, config.hawk.nonces_per_device) {
        return Err(ApiError::HawkReplay);
    }
    Ok(Verified {
        device,
        body,
        signer: Signer {
            key,
            ts: hawk_header.ts.unwrap_or(now),
            method: parts.method.clone(),
            port,
            host_at: path.len(),
            nonce_at: path.len() + host.len(),
            text: [path.as_str(), &host, nonce].concat().into_boxed_str(),
        },
    })
}

// === Signer ===

impl Signer {
    /// A JSON answer, signed with `Server-Authorization`.
    pub fn answer(&self, status: StatusCode, value: &Value) -> Response<Body> {
        let bytes = Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()));
        self.answer_bytes(status, bytes)
    }

    /// An answer of JSON bytes (empty for a 304), signed with `Server-Authorization`.
    pub fn answer_bytes(&self, status: StatusCode, bytes: Bytes) -> Response<Body> {
        self.answer_as(status, "application/json", bytes)
    }

    /// An answer of `content_type`, signed with `Server-Authorization`.
    pub fn answer_as(
        &self,
        status: StatusCode,
        content_type: &'static str,
        bytes: Bytes,
    ) -> Response<Body> {
        let signed = Signed {
            method: self.method.as_str(),
            host: &self.text[self.host_at..self.nonce_at],
            port: self.port,
            path: &self.text[..self.host_at],
        };
        // The answer's MAC needs only the request's ts and nonce.
        let nonce = &self.text[self.nonce_at..];
        let request = hawk::Header::new(
            None,
            Some(self.ts),
            Some(nonce),
            None,
            None,
            None,
            None,
            None,
        )
        .expect("the nonce was parsed from a header, so it holds no quote");
        let authorization =
            hawk_auth::sign_response_as(&request, &self.key.0, &signed, content_type, &bytes);
        let mut response = bytes_response(status, bytes);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Ok(value) = HeaderValue::from_str(&authorization) {
            response.headers_mut().insert("server-authorization", value);
        }
        response
    }

    /// An error, signed like any answer to a verified request.
    pub fn fail(&self, error: &ApiError) -> Response<Body> {
        let (status, value) = error_body(error);
        self.answer(status, &value)
    }
}

/// The host and port the device signed, when no `server.public_url` is configured: the host
/// a trusted proxy says the device asked for (`Forwarded: host=` or `X-Forwarded-Host`), else
/// the `Host` header; the port is the one named, else the default of the scheme the proxy
/// says the device used, else 80 (plain HTTP).
fn authority(parts: &http::request::Parts) -> Result<(String, u16), ApiError> {
    let origin = parts.extensions.get::<Origin>();
    let default_port = match origin.and_then(|o| o.proto) {
        Some(Proto::Https) => 443,
        Some(Proto::Http) | None => 80,
    };
    let raw = origin
        .and_then(|o| o.host.as_deref())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .ok_or(ApiError::HawkHeader(
            "no Host header to check the signature against",
        ))?;
    let authority: http::uri::Authority = raw
        .parse()
        .map_err(|_| ApiError::HawkHeader("the Host header is malformed"))?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    Ok((host, authority.port_u16().unwrap_or(default_port)))
}
