//! The data sync API (`docs/sync.md`): storage, info and the change feed.
//!
//! Who may call: the user's devices (Hawk, exactly as on the command channel, and every answer
//! to them is signed) and the user with their bearer token. Either way the caller is one user,
//! and every path below reads and writes that user's data only: there is no user in the URL
//! to get wrong.
//!
//! Every answer carries `X-Sync-Revision` (the user's latest revision); answers about one
//! object carry its revision as `ETag: "<rev>"`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::device_auth::{self, Signer};
use super::{
    Body, BoxError, bytes_response, collect_body, empty_response, error_body, error_response,
    field_error, query_param,
};
use crate::clock::now_ms;
use crate::datasync::{
    self, Condition, MAX_READ_LIMIT, Put, Refused, UserSync, Write, check_collection, check_id,
    decode_cursor,
};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ids::UserId;

/// The user's latest revision, on every sync answer.
pub const REVISION_HEADER: &str = "x-sync-revision";

/// Longest `ttl` of a record, in seconds (a year).
pub const MAX_TTL_SECS: u64 = 365 * 24 * 3600;

/// Largest accepted `|sortindex|`.
pub const MAX_SORTINDEX: i64 = 999_999_999;

/// A sync endpoint, with its method folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncRoute {
    InfoCollections,
    InfoConfiguration,
    InfoQuota,
    ReadCollection(String),
    PostCollection(String),
    DeleteCollection(String),
    GetRecord(String, String),
    PutRecord(String, String),
    DeleteRecord(String, String),
    Changes,
    /// `/1/remote-storage` and `/1/blobs…`: served by `service::remote`.
    Remote(super::remote::RemoteRoute),
}

/// Maps `/1/storage…`, `/1/info/…` and `/1/changes` (`segments` starts with `"1"`).
pub fn route(method: &Method, segments: &[&str]) -> Result<SyncRoute, ApiError> {
    let wrong = |allow: &'static str| Err(ApiError::MethodNotAllowed { allow });
    let get = |route: SyncRoute| {
        if method == Method::GET {
            Ok(route)
        } else {
            wrong("GET")
        }
    };
    match segments {
        ["1", "info", "collections"] => get(SyncRoute::InfoCollections),
        ["1", "info", "configuration"] => get(SyncRoute::InfoConfiguration),
        ["1", "info", "quota"] => get(SyncRoute::InfoQuota),
        ["1", "changes"] => get(SyncRoute::Changes),
        ["1", "remote-storage" | "blobs", ..] => {
            super::remote::route(method, segments).map(SyncRoute::Remote)
        }
        ["1", "storage", collection] if !collection.is_empty() => {
            let collection = (*collection).to_owned();
            match *method {
                Method::GET => Ok(SyncRoute::ReadCollection(collection)),
                Method::POST => Ok(SyncRoute::PostCollection(collection)),
                Method::DELETE => Ok(SyncRoute::DeleteCollection(collection)),
                _ => wrong("GET, POST, DELETE"),
            }
        }
        ["1", "storage", collection, id] if !collection.is_empty() && !id.is_empty() => {
            let (collection, id) = ((*collection).to_owned(), (*id).to_owned());
            match *method {
                Method::GET => Ok(SyncRoute::GetRecord(collection, id)),
                Method::PUT => Ok(SyncRoute::PutRecord(collection, id)),
                Method::DELETE => Ok(SyncRoute::DeleteRecord(collection, id)),
                _ => wrong("GET, PUT, DELETE"),
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

/// The type of raw bytes: blob chunks, both ways.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// The authenticated caller: whose data, the body, and how to sign answers (devices).
pub(super) struct Caller {
    pub user: UserId,
    pub body: Bytes,
    pub signer: Option<Signer>,
}

/// A successful answer, before signing.
pub(super) struct Answer {
    pub status: StatusCode,
    /// `None` for a 304.
    pub body: Option<Value>,
    pub etag: Option<u64>,
    /// Raw bytes instead of JSON (a blob chunk).
    pub bytes: Option<Bytes>,
}

impl Answer {
    pub(super) fn ok(body: Value, etag: Option<u64>) -> Answer {
        Answer {
            status: StatusCode::OK,
            body: Some(body),
            etag,
            bytes: None,
        }
    }

    fn not_modified(etag: u64) -> Answer {
        Answer {
            status: StatusCode::NOT_MODIFIED,
            body: None,
            etag: Some(etag),
            bytes: None,
        }
    }
}

/// Serves one sync request. Never fails: errors become (signed, for devices) answers here.
///
/// Cancel safety: a parked change feed holds only a `watch` receiver and counters, released
/// on drop; a write already journaled is applied whether or not the caller stays.
pub async fn handle<B>(
    route: SyncRoute,
    request: Request<B>,
    gateway: &Arc<Gateway>,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let caller = match authenticate(&route, &parts, body, gateway).await {
        Ok(caller) => caller,
        Err(error) => return error_response(&error),
    };
    let result = serve(&route, &parts, &caller, gateway).await;
    let user_rev = gateway.sync.get(caller.user).map_or(0, |u| u.rev());
    let signer = caller.signer.as_ref();
    let mut response = match result {
        Ok(answer) => {
            let mut response = match answer.bytes {
                Some(bytes) => match signer {
                    Some(signer) => signer.answer_as(answer.status, OCTET_STREAM, bytes),
                    None => {
                        let mut response = bytes_response(answer.status, bytes);
                        response
                            .headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
                        response
                    }
                },
                None => finish(signer, answer.status, answer.body.as_ref()),
            };
            if let Some(etag) = answer.etag {
                set(&mut response, header::ETAG, format!("\"{etag}\""));
            }
            response
        }
        Err(refused) => refusal(signer, refused),
    };
    set(
        &mut response,
        HeaderName::from_static(REVISION_HEADER),
        user_rev.to_string(),
    );
    response
}

fn set(response: &mut Response<Body>, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(name, value);
    }
}

fn finish(signer: Option<&Signer>, status: StatusCode, body: Option<&Value>) -> Response<Body> {
    match (signer, body) {
        (Some(signer), Some(body)) => signer.answer(status, body),
        (Some(signer), None) => signer.answer_bytes(status, Bytes::new()),
        (None, Some(body)) => {
            let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
            bytes_response(status, Bytes::from(bytes))
        }
        (None, None) => empty_response(status),
    }
}

/// An error answer, with the fields and headers a sync client acts on.
fn refusal(signer: Option<&Signer>, refused: Refused) -> Response<Body> {
    let (error, failed) = match refused {
        Refused::Api(error) => (error, None),
        Refused::Invalid(failed) => (
            ApiError::SyncBatchRejected {
                count: failed.len(),
            },
            Some(failed),
        ),
    };
    let (status, mut body) = error_body(&error);
    let mut headers: Vec<(HeaderName, String)> = Vec::new();
    match &error {
        ApiError::SyncRevisionChanged { current } | ApiError::SyncRecordExists { current } => {
            body["current"] = json!(current);
            headers.push((header::ETAG, format!("\"{current}\"")));
        }
        ApiError::SyncRecordTooLarge { limit } => body["limit"] = json!(limit),
        ApiError::BodyTooLarge { limit } => body["limit"] = json!(limit),
        ApiError::SyncHistoryPurged { horizon } => body["horizon"] = json!(horizon),
        ApiError::SyncTooManyFeeds { .. } => headers.push((header::RETRY_AFTER, "5".into())),
        ApiError::SyncFeedsFull | ApiError::StorageUnavailable => {
            headers.push((header::RETRY_AFTER, "1".into()))
        }
        ApiError::RemoteUnavailable => {
            headers.push((header::RETRY_AFTER, super::REMOTE_RETRY_AFTER.into()))
        }
        ApiError::MethodNotAllowed { allow } => headers.push((header::ALLOW, (*allow).into())),
        _ => {}
    }
    if let Some(failed) = failed {
        body["failed"] = Value::Object(failed);
    }
    let mut response = finish(signer, status, Some(&body));
    for (name, value) in headers {
        set(&mut response, name, value);
    }
    response
}

// === Authentication ===

/// The largest body a route takes: batches and records are bigger than device reports, and
/// JSON escaping may double a payload.
fn body_limit(route: &SyncRoute, gateway: &Gateway) -> usize {
    let limits = &gateway.config.sync;
    match route {
        SyncRoute::PostCollection(_) => 2 * limits.max_post_bytes + 64 * 1024,
        SyncRoute::PutRecord(..) => 2 * limits.max_record_bytes + 4096,
        SyncRoute::Remote(super::remote::RemoteRoute::PutChunk(..)) => {
            gateway.config.blobs.chunk_bytes as usize
        }
        _ => gateway.config.server.max_body_bytes,
    }
}

async fn authenticate<B>(
    route: &SyncRoute,
    parts: &http::request::Parts,
    body: B,
    gateway: &Gateway,
) -> Result<Caller, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let limit = body_limit(route, gateway);
    let hawk = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Hawk "));
    if hawk {
        let verified = device_auth::verify_limited(parts, body, gateway, None, limit).await?;
        return Ok(Caller {
            user: verified.device.owner,
            body: verified.body,
            signer: Some(verified.signer),
        });
    }
    let user = super::web::authenticate(&parts.method, &parts.headers, gateway)
        .await?
        .user;
    let expected = match route {
        SyncRoute::Remote(super::remote::RemoteRoute::PutChunk(..)) => OCTET_STREAM,
        _ => "application/json",
    };
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        let mime = content_type.to_str().unwrap_or("").split(';').next();
        if !mime.is_some_and(|m| m.trim().eq_ignore_ascii_case(expected)) {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let body = collect_body(body, &parts.headers, limit).await?;
    Ok(Caller {
        user,
        body,
        signer: None,
    })
}

// === Handlers ===

async fn serve(
    route: &SyncRoute,
    parts: &http::request::Parts,
    caller: &Caller,
    gateway: &Gateway,
) -> Result<Answer, Refused> {
    let query = parts.uri.query().unwrap_or("");
    let headers = &parts.headers;
    let limits = &gateway.config.sync;
    let user = caller.user;
    let now = now_ms();
    match route {
        SyncRoute::InfoConfiguration => Ok(Answer::ok(
            json!({
                "max_record_payload_bytes": limits.max_record_bytes,
                "max_post_records": limits.max_post_records,
                "max_post_bytes": limits.max_post_bytes,
                "max_user_records": limits.max_user_records,
                "max_user_bytes": limits.max_user_bytes,
                "max_read_limit": MAX_READ_LIMIT,
                "tombstone_ttl_secs": limits.tombstone_ttl_secs,
                "max_feed_wait_secs": limits.feed_wait_secs,
                "max_feeds_per_user": limits.max_feeds_per_user,
                "max_ttl_secs": MAX_TTL_SECS,
                "blob_chunk_bytes": gateway.config.blobs.chunk_bytes,
                "max_blob_bytes": gateway.config.blobs.max_blob_bytes,
            }),
            None,
        )),
        SyncRoute::InfoQuota => {
            let (records, bytes) = gateway.sync.get(user).map_or((0, 0), |u| u.usage());
            Ok(Answer::ok(
                json!({
                    "records": records,
                    "bytes": bytes,
                    "max_records": limits.max_user_records,
                    "max_bytes": limits.max_user_bytes,
                }),
                None,
            ))
        }
        SyncRoute::InfoCollections => {
            let sync = gateway.sync.get(user);
            let rev = sync.as_ref().map_or(0, |u| u.rev());
            if read_condition(headers)? == Some(rev) {
                return Ok(Answer::not_modified(rev));
            }
            let map = sync.map(|u| u.collections_since(0)).unwrap_or_default();
            Ok(Answer::ok(Value::Object(map), Some(rev)))
        }
        SyncRoute::ReadCollection(collection) => {
            check_collection(collection)?;
            let since = number_param(query, "since", "a revision")?.unwrap_or(0);
            let limit = match number_param(query, "limit", "a count")? {
                None => MAX_READ_LIMIT,
                Some(n) if (1..=MAX_READ_LIMIT as u64).contains(&n) => n as usize,
                Some(_) => {
                    return Err(field_error("limit", "must be from 1 to 1000").into());
                }
            };
            let cursor = query_param(query, "offset")
                .map(decode_cursor)
                .transpose()?;
            let Some(sync) = gateway.sync.get(user) else {
                if read_condition(headers)? == Some(0) {
                    return Ok(Answer::not_modified(0));
                }
                return Ok(Answer::ok(
                    json!({ "records": [], "next": null, "rev": 0 }),
                    Some(0),
                ));
            };
            let rev = sync.collection_rev(collection);
            if read_condition(headers)? == Some(rev) {
                return Ok(Answer::not_modified(rev));
            }
            let page = sync.read(collection, since, cursor, limit, now)?;
            let records =
                super::remote::fill(gateway, &sync, headers, user, page.records, page.fetch)
                    .await?;
            Ok(Answer::ok(
                json!({ "records": records, "next": page.next, "rev": page.rev }),
                Some(page.rev),
            ))
        }
        SyncRoute::GetRecord(collection, id) => {
            check_collection(collection)?;
            check_id(id).map_err(|reason| field_error("id", &reason))?;
            let Some(sync) = gateway.sync.get(user) else {
                return Err(ApiError::NotFound.into());
            };
            // A payload in the linked storage may be replaced between reading the index and
            // fetching it; then the newer version is read instead.
            for _ in 0..3 {
                let Some((record, rev, fetch)) = sync.record(collection, id, now) else {
                    return Err(ApiError::NotFound.into());
                };
                if read_condition(headers)? == Some(rev) {
                    return Ok(Answer::not_modified(rev));
                }
                let filled = super::remote::fill(
                    gateway,
                    &sync,
                    headers,
                    user,
                    vec![record],
                    fetch.into_iter().collect(),
                )
                .await?;
                if let Some(record) = filled.into_iter().next() {
                    return Ok(Answer::ok(record, Some(rev)));
                }
            }
            Err(ApiError::RemoteUnavailable.into())
        }
        SyncRoute::PutRecord(collection, id) => {
            check_collection(collection)?;
            check_id(id).map_err(|reason| field_error("id", &reason))?;
            let condition = write_condition(headers, true)?;
            let put = parse_put(&caller.body, id, limits.max_record_bytes, now)?;
            let write = Write {
                collection: collection.clone(),
                at_ms: now,
                puts: vec![put],
                deletes: Vec::new(),
            };
            let sync = gateway.sync.user(user);
            let rev =
                super::remote::write(gateway, user, &sync, headers, write, condition, Some(id))
                    .await?;
            Ok(Answer::ok(json!({ "id": id, "rev": rev }), Some(rev)))
        }
        SyncRoute::DeleteRecord(collection, id) => {
            check_collection(collection)?;
            check_id(id).map_err(|reason| field_error("id", &reason))?;
            let condition = write_condition(headers, false)?;
            let sync = gateway.sync.get(user).ok_or(ApiError::NotFound)?;
            let write = Write {
                collection: collection.clone(),
                at_ms: now,
                puts: Vec::new(),
                deletes: vec![id.clone()],
            };
            let rev =
                super::remote::write(gateway, user, &sync, headers, write, condition, Some(id))
                    .await?;
            Ok(Answer::ok(
                json!({ "id": id, "rev": rev, "deleted": true }),
                Some(rev),
            ))
        }
        SyncRoute::PostCollection(collection) => {
            check_collection(collection)?;
            let condition = write_condition(headers, false)?;
            let (puts, deletes) = parse_batch(&caller.body, limits, now)?;
            let ids: Vec<String> = puts
                .iter()
                .map(|p| p.id.clone())
                .chain(deletes.iter().cloned())
                .collect();
            let write = Write {
                collection: collection.clone(),
                at_ms: now,
                puts,
                deletes,
            };
            let sync = gateway.sync.user(user);
            let rev =
                super::remote::write(gateway, user, &sync, headers, write, condition, None).await?;
            Ok(Answer::ok(json!({ "rev": rev, "ids": ids }), Some(rev)))
        }
        SyncRoute::DeleteCollection(collection) => {
            check_collection(collection)?;
            let condition = write_condition(headers, false)?;
            let sync = gateway.sync.get(user).ok_or(ApiError::NotFound)?;
            let linked = super::remote::open_link(gateway, user, &sync, headers)?;
            let (rev, commit) =
                sync.delete_collection(user, collection, now, condition, limits, &gateway.journal)?;
            let answer = written(&sync, rev, commit, json!({ "rev": rev, "deleted": true })).await;
            if let Some(linked) = linked {
                super::remote::collect_garbage(&linked, &sync);
            }
            answer
        }
        SyncRoute::Changes => changes(gateway, user, query).await.map_err(Refused::Api),
        SyncRoute::Remote(route) => super::remote::serve(route, parts, caller, gateway).await,
    }
}

/// Waits for a write to be durable, wakes the user's change feeds, and answers.
async fn written(
    sync: &UserSync,
    rev: u64,
    commit: crate::store::Commit,
    body: Value,
) -> Result<Answer, Refused> {
    commit.wait().await?;
    sync.publish(rev);
    Ok(Answer::ok(body, Some(rev)))
}

/// `GET /1/changes?since=REV&wait=S`: the collections changed after `since`, at once if there
/// are any, else once one changes (or the wait ends, or the server stops).
///
/// Cancel safety: dropping it drops a `watch` receiver and the feed counters, nothing else.
async fn changes(gateway: &Gateway, user: UserId, query: &str) -> Result<Answer, ApiError> {
    let limits = &gateway.config.sync;
    let since = number_param(query, "since", "a revision")?.unwrap_or(0);
    let wait = match number_param(query, "wait", "a whole number of seconds")? {
        None => Duration::from_secs(limits.feed_wait_secs),
        Some(secs) => Duration::from_secs(secs.min(limits.feed_wait_secs)),
    };
    let sync = gateway.sync.user(user);
    let mut revisions = sync.subscribe();
    let answer = |rev: u64| {
        Answer::ok(
            json!({ "rev": rev, "collections": sync.collections_since(since) }),
            Some(rev),
        )
    };
    let published = *revisions.borrow_and_update();
    if published > since || wait.is_zero() || gateway.is_shutting_down() {
        return Ok(answer(published));
    }
    let _feed = sync.park_feed(&gateway.sync, limits)?;
    let _parked = gateway.park_guard();
    let mut shutdown = gateway.shutdown_handle();
    tokio::select! {
        _ = revisions.wait_for(|rev| *rev > since) => {}
        _ = tokio::time::sleep(wait) => {}
        _ = shutdown.wait() => {}
    }
    let rev = *revisions.borrow();
    Ok(answer(rev))
}

// === Request parsing ===

fn number_param(query: &str, name: &str, what: &str) -> Result<Option<u64>, ApiError> {
    query_param(query, name)
        .map(|raw| {
            raw.parse::<u64>()
                .map_err(|_| field_error(name, &format!("must be {what} (a whole number)")))
        })
        .transpose()
}

/// A revision in an `If-Match`/`If-None-Match` value: `"42"` (or bare `42`).
fn parse_rev(header: &str, value: &HeaderValue) -> Result<u64, ApiError> {
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| field_error(header, "must be a revision in quotes, like \"42\""))
}

/// `If-None-Match: "<rev>"` on a read: the revision the client already has.
fn read_condition(headers: &http::HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::IF_NONE_MATCH)
        .map(|v| parse_rev("If-None-Match", v))
        .transpose()
}

/// `If-Match: "<rev>"`, or `If-None-Match: *` (create only, for one record), on a write.
fn write_condition(headers: &http::HeaderMap, record: bool) -> Result<Condition, ApiError> {
    match (
        headers.get(header::IF_MATCH),
        headers.get(header::IF_NONE_MATCH),
    ) {
        (None, None) => Ok(Condition::None),
        (Some(_), Some(_)) => Err(field_error(
            "If-Match",
            "cannot be sent together with If-None-Match",
        )),
        (Some(value), None) => Ok(Condition::Match(parse_rev("If-Match", value)?)),
        (None, Some(value)) if record && value.as_bytes() == b"*" => Ok(Condition::Absent),
        (None, Some(_)) => Err(field_error(
            "If-None-Match",
            "on a write, only * on a single record (create only) is understood",
        )),
    }
}

/// The fields of one record in a PUT or batch, except the id; `Err` is the reason.
fn record_fields(
    object: &mut Map<String, Value>,
    now: u64,
) -> Result<(String, Option<i64>, Option<u64>), String> {
    if let Some(unknown) = object
        .keys()
        .find(|k| !["id", "payload", "sortindex", "ttl"].contains(&k.as_str()))
    {
        return Err(format!(
            "{unknown}: unknown field (expected id, payload, sortindex, ttl)"
        ));
    }
    let payload = match object.remove("payload") {
        Some(Value::String(payload)) => payload,
        Some(_) => return Err("payload: must be a string".into()),
        None => return Err("payload: is required".into()),
    };
    let sortindex = match object.remove("sortindex") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_i64() {
            Some(n) if n.abs() <= MAX_SORTINDEX => Some(n),
            _ => {
                return Err(format!(
                    "sortindex: must be a whole number from -{MAX_SORTINDEX} to {MAX_SORTINDEX}"
                ));
            }
        },
    };
    let expires_ms = match object.remove("ttl") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64() {
            Some(secs) if (1..=MAX_TTL_SECS).contains(&secs) => Some(now + secs * 1000),
            _ => {
                return Err(format!(
                    "ttl: must be a whole number of seconds from 1 to {MAX_TTL_SECS}"
                ));
            }
        },
    };
    Ok((payload, sortindex, expires_ms))
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::InvalidJson(
            "the body must be a JSON object".into(),
        )),
        Err(e) => Err(ApiError::InvalidJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn parse_put(body: &[u8], id: &str, max_record_bytes: usize, now: u64) -> Result<Put, Refused> {
    let mut object = parse_object(body)?;
    match object.get("id") {
        None => {}
        Some(Value::String(claimed)) if claimed == id => {}
        Some(_) => return Err(field_error("id", "must match the id in the path").into()),
    }
    // Refused before anything else is looked at: the client learns the limit at once.
    if let Some(Value::String(payload)) = object.get("payload")
        && payload.len() > max_record_bytes
    {
        return Err(ApiError::SyncRecordTooLarge {
            limit: max_record_bytes,
        }
        .into());
    }
    let (payload, sortindex, expires_ms) = record_fields(&mut object, now).map_err(|reason| {
        let (field, reason) = reason.split_once(": ").unwrap_or(("", &reason));
        field_error(field, reason)
    })?;
    Ok(Put {
        remote: None,
        id: id.to_owned(),
        payload,
        sortindex,
        expires_ms,
    })
}

/// A batch: a JSON array of records (`{id, payload, sortindex?, ttl?}`) and deletions
/// (`{id, deleted: true}`). Sizes are checked first (413), then every entry; any invalid
/// entry refuses the whole batch with the reasons per id.
fn parse_batch(
    body: &[u8],
    limits: &crate::config::SyncConfig,
    now: u64,
) -> Result<(Vec<Put>, Vec<String>), Refused> {
    let entries = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(entries)) => entries,
        Ok(_) => {
            return Err(
                ApiError::InvalidJson("the body must be a JSON array of records".into()).into(),
            );
        }
        Err(e) => {
            return Err(ApiError::InvalidJson(format!("the body is not valid JSON: {e}")).into());
        }
    };
    if entries.is_empty() {
        return Err(field_error("records", "the batch is empty").into());
    }
    if entries.len() > limits.max_post_records {
        return Err(ApiError::SyncBatchTooLarge {
            reason: format!(
                "{} records; the limit is {} per request",
                entries.len(),
                limits.max_post_records
            ),
        }
        .into());
    }
    let payload_len = |entry: &Value| {
        entry
            .get("payload")
            .and_then(Value::as_str)
            .map_or(0, str::len)
    };
    if entries
        .iter()
        .any(|e| payload_len(e) > limits.max_record_bytes)
    {
        return Err(ApiError::SyncRecordTooLarge {
            limit: limits.max_record_bytes,
        }
        .into());
    }
    let total: usize = entries.iter().map(payload_len).sum();
    if total > limits.max_post_bytes {
        return Err(ApiError::SyncBatchTooLarge {
            reason: format!(
                "{total} payload bytes; the limit is {} per request",
                limits.max_post_bytes
            ),
        }
        .into());
    }
    let mut failed = Map::new();
    let mut seen = std::collections::HashSet::new();
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    for (index, entry) in entries.into_iter().enumerate() {
        let Value::Object(mut object) = entry else {
            failed.insert(format!("#{index}"), json!("must be an object"));
            continue;
        };
        let id = match object.get("id") {
            Some(Value::String(id)) if check_id(id).is_ok() => id.clone(),
            Some(Value::String(_)) => {
                failed.insert(format!("#{index}"), json!(check_id("").unwrap_err()));
                continue;
            }
            _ => {
                failed.insert(format!("#{index}"), json!("id: is required (a string)"));
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            failed.insert(id, json!("appears more than once in the batch"));
            continue;
        }
        if let Some(deleted) = object.remove("deleted") {
            if deleted != Value::Bool(true) {
                failed.insert(id, json!("deleted: can only be true"));
            } else if object.len() > 1 {
                failed.insert(id, json!("a deletion carries only id and deleted"));
            } else {
                deletes.push(id);
            }
            continue;
        }
        match record_fields(&mut object, now) {
            Ok((payload, sortindex, expires_ms)) => puts.push(Put {
                remote: None,
                id,
                payload,
                sortindex,
                expires_ms,
            }),
            Err(reason) => {
                failed.insert(id, json!(reason));
            }
        }
    }
    if !failed.is_empty() {
        return Err(Refused::Invalid(failed));
    }
    Ok((puts, deletes))
}

impl From<datasync::Refused> for ApiError {
    fn from(refused: datasync::Refused) -> ApiError {
        match refused {
            Refused::Api(error) => error,
            Refused::Invalid(failed) => ApiError::SyncBatchRejected {
                count: failed.len(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let segments =
            |path: &'static str| path.trim_start_matches('/').split('/').collect::<Vec<_>>();
        assert_eq!(
            route(&Method::GET, &segments("/1/storage/tabs")).unwrap(),
            SyncRoute::ReadCollection("tabs".into())
        );
        assert_eq!(
            route(&Method::PUT, &segments("/1/storage/tabs/x")).unwrap(),
            SyncRoute::PutRecord("tabs".into(), "x".into())
        );
        assert!(matches!(
            route(&Method::PUT, &segments("/1/storage/tabs")),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::GET, &segments("/1/storage/a/b/c")),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn batch_limits_and_reasons() {
        let limits = crate::config::SyncConfig {
            max_post_records: 2,
            max_record_bytes: 16,
            max_post_bytes: 20,
            ..Default::default()
        };
        let too_many =
            br#"[{"id":"a","payload":""},{"id":"b","payload":""},{"id":"c","payload":""}]"#;
        assert!(matches!(
            parse_batch(too_many, &limits, 0),
            Err(Refused::Api(ApiError::SyncBatchTooLarge { .. }))
        ));
        let big = br#"[{"id":"a","payload":"12345678901234567"}]"#;
        assert!(matches!(
            parse_batch(big, &limits, 0),
            Err(Refused::Api(ApiError::SyncRecordTooLarge { limit: 16 }))
        ));
        let bad = br#"[{"id":"a","payload":"x","colour":1},{"id":"b","deleted":true}]"#;
        match parse_batch(bad, &limits, 0) {
            Err(Refused::Invalid(failed)) => {
                assert_eq!(failed.len(), 1);
                assert!(failed["a"].as_str().unwrap().contains("colour"));
            }
            other => panic!("{other:?}"),
        }
    }
}
