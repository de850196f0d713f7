//! A user's own storage (`/1/remote-storage`) and blobs (`/1/blobs…`), and the part of record
//! reads and writes that reaches the linked storage (docs/storage.md).
//!
//! Who may call: as for the rest of sync (`service::sync`): the user's devices with Hawk, the
//! user with their bearer token. While a storage is linked, every request that reads or
//! writes payloads carries the storage key (`X-Storage-Key`); without it the server cannot
//! open the credentials, and says so (400, errno 350).
//!
//! Order of a write to a linked storage, so that nothing is half-written in our index:
//! 1. check the write against the index (a write bound to be refused uploads nothing);
//! 2. upload its payloads under content-addressed names (a retry rewrites the same names);
//! 3. under the user's lock, check again and apply it to the index, journaled;
//! 4. once durable, answer, then remove the payloads the write replaced.
//!
//! If the storage fails at 2, the answer is 503 (down, with `Retry-After`) or 502 (it refused
//! us, or answered nonsense) and the index is unchanged.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tracing::{info, warn};
use zeroize::Zeroizing;

use super::sync::{Answer, Caller};
use super::{field_error, query_param};
use crate::clock::now_ms;
use crate::datasync::placement::{Blob, Moved, StorageChange, ToMove};
use crate::datasync::{Condition, Fetch, Refused, UserSync, Write};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ids::UserId;
use crate::remote::link::{
    Credentials, KEY_HEADER, NEW_KEY_HEADER, StorageKey, StoredLink, new_link_id,
};
use crate::remote::webdav::normalize_url;
use crate::remote::{ObjectStore, RemoteError, RemoteRef, chunk_key, get_checked, record_key};

/// Records moved per step when a storage is linked or unlinked.
const MOVE_BATCH: usize = 100;

/// Longest user name and app password accepted when linking.
const MAX_CREDENTIAL_LEN: usize = 1024;

/// `/1/remote-storage…` and `/1/blobs…`, with the method folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteRoute {
    Status,
    Link,
    Unlink,
    Rekey,
    CreateBlob,
    ListBlobs,
    BlobMeta(String),
    DeleteBlob(String),
    PutChunk(String, u64),
    GetChunk(String, u64),
}

/// Maps `/1/remote-storage…` and `/1/blobs…` (`segments` starts with `"1"`).
pub fn route(method: &Method, segments: &[&str]) -> Result<RemoteRoute, ApiError> {
    let wrong = |allow: &'static str| Err(ApiError::MethodNotAllowed { allow });
    match segments {
        ["1", "remote-storage"] => match *method {
            Method::GET => Ok(RemoteRoute::Status),
            Method::PUT => Ok(RemoteRoute::Link),
            Method::DELETE => Ok(RemoteRoute::Unlink),
            _ => wrong("GET, PUT, DELETE"),
        },
        ["1", "remote-storage", "rekey"] => match *method {
            Method::POST => Ok(RemoteRoute::Rekey),
            _ => wrong("POST"),
        },
        ["1", "blobs"] => match *method {
            Method::POST => Ok(RemoteRoute::CreateBlob),
            Method::GET => Ok(RemoteRoute::ListBlobs),
            _ => wrong("GET, POST"),
        },
        ["1", "blobs", id] if is_blob_id(id) => match *method {
            Method::GET => Ok(RemoteRoute::BlobMeta((*id).to_owned())),
            Method::DELETE => Ok(RemoteRoute::DeleteBlob((*id).to_owned())),
            _ => wrong("GET, DELETE"),
        },
        ["1", "blobs", id, "chunks", index] if is_blob_id(id) => {
            let index = index.parse().map_err(|_| ApiError::NotFound)?;
            match *method {
                Method::PUT => Ok(RemoteRoute::PutChunk((*id).to_owned(), index)),
                Method::GET => Ok(RemoteRoute::GetChunk((*id).to_owned(), index)),
                _ => wrong("GET, PUT"),
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Blob ids are 32 lower-case hex digits, made by the server.
fn is_blob_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A user's linked storage, opened with the key the request carries.
pub struct Linked {
    pub link: StoredLink,
    pub store: Arc<dyn ObjectStore>,
}

/// The user's linked storage opened with the request's `X-Storage-Key`; `None` when the user
/// has not linked one. A link without a key, or with the wrong one, is an error.
pub fn open_link(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    headers: &HeaderMap,
) -> Result<Option<Linked>, ApiError> {
    let Some(link) = sync.link() else {
        return Ok(None);
    };
    let key = StorageKey::from_headers(headers, KEY_HEADER)?.ok_or(ApiError::RemoteKeyRequired)?;
    let credentials = gateway.remote.secret.open(&key, user, &link)?;
    let store = Arc::new(gateway.remote.webdav(&link.url, &credentials));
    Ok(Some(Linked { link, store }))
}

/// Runs `work` on every item, at most `limit` at once; results in the items' order.
async fn bounded<T, R, F, Fut>(items: Vec<T>, limit: usize, work: F) -> Vec<Result<R, RemoteError>>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, RemoteError>> + Send + 'static,
    R: Send + 'static,
{
    let count = items.len();
    let mut results: Vec<Option<Result<R, RemoteError>>> = (0..count).map(|_| None).collect();
    let mut running = JoinSet::new();
    let mut finish = |joined: Option<Result<(usize, Result<R, RemoteError>), _>>| {
        if let Some(Ok((index, result))) = joined {
            results[index] = Some(result);
        }
    };
    for (index, item) in items.into_iter().enumerate() {
        if running.len() >= limit.max(1) {
            finish(running.join_next().await);
        }
        let task = work(item);
        running.spawn(async move { (index, task.await) });
    }
    while let Some(joined) = running.join_next().await {
        finish(Some(joined));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RemoteError::Local("a task failed".to_owned()))))
        .collect()
}

/// Removes payloads nothing refers to any more, off the request's path; what cannot be
/// removed now is kept for the next request with the key. Names are never reused, so a
/// name nothing refers to now never will again.
fn remove_garbage(store: Arc<dyn ObjectStore>, sync: Arc<UserSync>, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut left = Vec::new();
        for key in keys {
            if let Err(error) = store.delete(&key).await {
                warn!(%error, "could not remove an unreferenced payload from the linked storage");
                left.push(key);
            }
        }
        sync.add_garbage(left);
    });
}

/// Removes what the user's records no longer refer to in their linked storage.
pub(super) fn collect_garbage(linked: &Linked, sync: &Arc<UserSync>) {
    remove_garbage(linked.store.clone(), sync.clone(), sync.take_garbage());
}

// === Records ===

/// Applies a record write: for a user who linked a storage (opened with the request's key),
/// uploads its payloads first (see the module notes). Returns the new revision, durable and
/// published to the user's change feeds.
pub(super) async fn write(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    mut write: Write,
    condition: Condition,
    target: Option<&str>,
) -> Result<u64, Refused> {
    let limits = &gateway.config.sync;
    let linked = open_link(gateway, user, sync, headers)?;
    let mut uploaded = Vec::new();
    if let Some(linked) = &linked {
        sync.precheck(&write, condition, target, limits)?;
        let collection = write.collection.clone();
        let uploads: Vec<(String, Bytes)> = write
            .puts
            .iter_mut()
            .map(|put| {
                let bytes = Bytes::from(std::mem::take(&mut put.payload));
                let stored = RemoteRef::of(&bytes);
                let key = record_key(&collection, &put.id, &stored);
                put.remote = Some(stored);
                (key, bytes)
            })
            .collect();
        uploaded = uploads.iter().map(|(key, _)| key.clone()).collect();
        let store = linked.store.clone();
        let results = bounded(
            uploads,
            gateway.config.remote_storage.fetch_concurrency,
            |(key, bytes)| {
                let store = store.clone();
                async move { store.put(&key, bytes).await }
            },
        )
        .await;
        if let Some(error) = results.into_iter().find_map(Result::err) {
            remove_garbage(linked.store.clone(), sync.clone(), uploaded);
            return Err(Refused::Api(error.into()));
        }
    }
    let link = linked.as_ref().map(|l| l.link.id.as_str());
    match sync.write_placed(
        user,
        write,
        condition,
        target,
        limits,
        &gateway.journal,
        link,
    ) {
        Ok((rev, commit, garbage)) => {
            commit.wait().await?;
            sync.publish(rev);
            if let Some(linked) = &linked {
                remove_garbage(linked.store.clone(), sync.clone(), garbage);
            }
            Ok(rev)
        }
        Err(refused) => {
            // Uploaded for nothing, under names nothing will ever refer to.
            if let Some(linked) = &linked {
                remove_garbage(linked.store.clone(), sync.clone(), uploaded);
            }
            Err(refused)
        }
    }
}

/// Fills in the payloads of `records` listed in `fetch` from the linked storage, checking
/// each against its digest. A payload gone because its record was overwritten meanwhile is
/// dropped from the page (its newer version is past this page, so a later read has it).
pub(super) async fn fill(
    gateway: &Gateway,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    user: UserId,
    mut records: Vec<Value>,
    fetch: Vec<Fetch>,
) -> Result<Vec<Value>, ApiError> {
    if fetch.is_empty() {
        return Ok(records);
    }
    let linked = open_link(gateway, user, sync, headers)?.ok_or(ApiError::RemoteNotLinked)?;
    // A request with the key: a chance to remove what purges left behind.
    collect_garbage(&linked, sync);
    let store = linked.store.clone();
    let results = bounded(
        fetch.clone(),
        gateway.config.remote_storage.fetch_concurrency,
        |item| {
            let store = store.clone();
            async move { get_checked(store.as_ref(), &item.key(), &item.expected).await }
        },
    )
    .await;
    let mut gone = Vec::new();
    for (item, result) in fetch.iter().zip(results) {
        match result? {
            Some(bytes) => {
                let payload = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    RemoteError::Corrupt(format!("{} is not the text stored", item.key()))
                })?;
                records[item.index]["payload"] = json!(payload);
            }
            // Not there: what does the index say now?
            None => match sync.record(&item.collection, &item.id, now_ms()) {
                // Moved back here meanwhile (an unlink), at the same revision.
                Some((value, rev, None)) if rev == item.rev => {
                    records[item.index]["payload"] = value["payload"].clone();
                }
                // Still the very file we read: the storage lost it.
                Some((_, rev, Some(now))) if rev == item.rev && now.expected == item.expected => {
                    return Err(RemoteError::Corrupt(format!(
                        "{} is missing from the linked storage",
                        item.key()
                    ))
                    .into());
                }
                // Moved again under a new name at the same revision (unlinked and linked
                // again during this read): reading again finds it.
                Some((_, rev, _)) if rev == item.rev => {
                    return Err(ApiError::RemoteLinkChanged);
                }
                // Replaced or deleted meanwhile: its newer version is past this page.
                _ => gone.push(item.index),
            },
        }
    }
    for index in gone.into_iter().rev() {
        records.remove(index);
    }
    Ok(records)
}

// === Handlers ===

/// Serves `/1/remote-storage…` and `/1/blobs…` for an authenticated caller.
pub(super) async fn serve(
    route: &RemoteRoute,
    parts: &http::request::Parts,
    caller: &Caller,
    gateway: &Gateway,
) -> Result<Answer, Refused> {
    let user = caller.user;
    let headers = &parts.headers;
    let query = parts.uri.query().unwrap_or("");
    let sync = gateway.sync.user(user);
    let answer = match route {
        RemoteRoute::Status => Answer::ok(status(&sync), None),
        RemoteRoute::Link => link(gateway, user, &sync, headers, &caller.body).await?,
        RemoteRoute::Unlink => unlink(gateway, user, &sync, headers, query).await?,
        RemoteRoute::Rekey => rekey(gateway, user, &sync, headers).await?,
        RemoteRoute::CreateBlob => create_blob(gateway, user, &sync, &caller.body).await?,
        RemoteRoute::ListBlobs => {
            let blobs: Vec<Value> = sync
                .blobs()
                .iter()
                .map(|(id, blob)| blob_json(id, blob))
                .collect();
            Answer::ok(json!({ "blobs": blobs }), None)
        }
        RemoteRoute::BlobMeta(id) => {
            let blob = sync.blob(id).ok_or(ApiError::NotFound)?;
            Answer::ok(blob_json(id, &blob), None)
        }
        RemoteRoute::DeleteBlob(id) => delete_blob(gateway, user, &sync, headers, id).await?,
        RemoteRoute::PutChunk(id, index) => {
            put_chunk(gateway, user, &sync, headers, id, *index, &caller.body).await?
        }
        RemoteRoute::GetChunk(id, index) => {
            get_chunk(gateway, user, &sync, headers, id, *index).await?
        }
    };
    Ok(answer)
}

/// `GET /1/remote-storage`: where the user's payloads are.
fn status(sync: &UserSync) -> Value {
    let (here, there) = sync.placement_counts();
    let blobs = sync.blobs();
    let blobs_there = blobs.iter().filter(|(_, b)| b.link.is_some()).count();
    match sync.link() {
        None => json!({
            "linked": false,
            "records_here": here,
            "blobs_here": blobs.len(),
        }),
        Some(link) => json!({
            "linked": true,
            "type": "webdav",
            "url": link.url,
            "linked_ms": link.linked_ms,
            "records_here": here,
            "records_there": there,
            "blobs_here": blobs.len() - blobs_there,
            "blobs_there": blobs_there,
        }),
    }
}

/// What a failed link check tells the user.
fn link_refused(error: RemoteError) -> ApiError {
    match error {
        RemoteError::Unavailable(_) => ApiError::RemoteUnavailable,
        RemoteError::Credentials => ApiError::RemoteLinkRejected(
            "the storage refused this user name and app password".to_owned(),
        ),
        RemoteError::Refused(reason) => {
            ApiError::RemoteLinkRejected(format!("its address is not allowed here: {reason}"))
        }
        RemoteError::Full => ApiError::RemoteLinkRejected("the storage is full".to_owned()),
        RemoteError::Unexpected(reason)
        | RemoteError::Corrupt(reason)
        | RemoteError::Local(reason) => ApiError::RemoteLinkRejected(reason),
    }
}

/// A required text field of a JSON object, kept in a buffer wiped on drop.
fn secret_field(
    object: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Zeroizing<String>, ApiError> {
    match object.get(name).and_then(Value::as_str) {
        Some(text) if !text.is_empty() && text.len() <= MAX_CREDENTIAL_LEN => {
            Ok(Zeroizing::new(text.to_owned()))
        }
        _ => Err(field_error(
            name,
            &format!("must be a string of 1 to {MAX_CREDENTIAL_LEN} characters"),
        )),
    }
}

/// `PUT /1/remote-storage`: checks the storage works, seals the credentials under the
/// request's key, records the link, then moves the user's payloads there. Linking the same
/// URL again with the same key resumes a move an outage interrupted.
async fn link(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Answer, ApiError> {
    if !gateway.config.remote_storage.enabled {
        return Err(ApiError::RemoteLinkRejected(
            "this server does not let users link their own storage".to_owned(),
        ));
    }
    let key = StorageKey::from_headers(headers, KEY_HEADER)?.ok_or(ApiError::RemoteKeyRequired)?;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not a JSON object: {e}")))?;
    if let Some(kind) = object.get("type")
        && kind != "webdav"
    {
        return Err(field_error("type", "must be \"webdav\""));
    }
    let url = object
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| field_error("url", "is required: the WebDAV folder's URL"))?;
    let url = normalize_url(url).map_err(|reason| field_error("url", &reason))?;
    let credentials = Credentials {
        username: secret_field(&object, "username")?,
        password: secret_field(&object, "password")?,
    };
    // Basic authentication cannot carry a colon in the user name (RFC 7617).
    if credentials.username.contains(':') || credentials.username.chars().any(char::is_control) {
        return Err(field_error(
            "username",
            "must not contain a colon or control characters",
        ));
    }
    let link = match sync.link() {
        Some(existing) if existing.url == url => {
            // The same storage again. The key must open what is sealed (it proves this is the
            // client that linked it). New credentials (an app password replaced after the
            // old one was revoked) are checked and sealed in place of the old; then any move
            // an outage interrupted goes on.
            let current = gateway.remote.secret.open(&key, user, &existing)?;
            let same = current.username == credentials.username
                && current.password == credentials.password;
            drop(current);
            if !same {
                let store = gateway.remote.webdav(&url, &credentials);
                store.check().await.map_err(link_refused)?;
                let sealed = gateway.remote.secret.seal(
                    &key,
                    user,
                    &existing.id,
                    &existing.url,
                    &credentials,
                );
                reseal(gateway, user, sync, &existing, sealed).await?;
                info!(%user, "storage credentials replaced");
            }
            sync.link().ok_or(ApiError::RemoteLinkChanged)?
        }
        Some(_) => return Err(ApiError::RemoteAlreadyLinked),
        None => {
            let store = gateway.remote.webdav(&url, &credentials);
            store.check().await.map_err(link_refused)?;
            let id = new_link_id();
            let link = StoredLink {
                sealed: gateway
                    .remote
                    .secret
                    .seal(&key, user, &id, &url, &credentials),
                id,
                url,
                linked_ms: now_ms(),
            };
            let change = StorageChange::Linked { link: link.clone() };
            let commit = sync.change(user, &gateway.journal, |state| match state.link {
                Some(_) => Err(ApiError::RemoteAlreadyLinked),
                None => Ok(change),
            })?;
            commit.wait().await?;
            info!(%user, "storage linked");
            link
        }
    };
    drop(credentials);
    let linked = Linked {
        store: Arc::new(
            gateway
                .remote
                .webdav(&link.url, &gateway.remote.secret.open(&key, user, &link)?),
        ),
        link,
    };
    let records = move_records(gateway, user, sync, &linked, true).await?;
    let blobs = move_blobs(gateway, user, sync, &linked, true).await?;
    let mut answer = status(sync);
    answer["moved"] = json!({ "records": records, "blobs": blobs });
    Ok(Answer::ok(answer, None))
}

/// Moves every record payload to the linked storage (`to_link`) or back here, in steps of
/// [`MOVE_BATCH`]; returns how many moved. A record written meanwhile keeps its new place;
/// every step checks, under the user's lock, that the link is still the one moved to or from.
async fn move_records(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    linked: &Linked,
    to_link: bool,
) -> Result<usize, ApiError> {
    let mut moved_total = 0;
    let mut removable = Vec::new();
    // Bounded, in case writes keep landing in the old place as fast as they are moved.
    for _ in 0..1000 {
        let batch = sync.to_move(to_link, MOVE_BATCH);
        if batch.is_empty() {
            break;
        }
        let store = linked.store.clone();
        let results = bounded(
            batch.clone(),
            gateway.config.remote_storage.fetch_concurrency,
            move |item: ToMove| {
                let store = store.clone();
                async move {
                    if to_link {
                        let stored = RemoteRef::of(item.payload.as_bytes());
                        let key = record_key(&item.collection, &item.id, &stored);
                        store.put(&key, Bytes::from(item.payload)).await?;
                        Ok((None, Some(stored), key))
                    } else {
                        let expected = item.remote.clone().expect("listed for its reference");
                        let key = record_key(&item.collection, &item.id, &expected);
                        let bytes = get_checked(store.as_ref(), &key, &expected).await?;
                        let payload = bytes
                            .map(|b| String::from_utf8(b.to_vec()))
                            .transpose()
                            .map_err(|_| RemoteError::Corrupt(format!("{key} is not text")))?;
                        Ok((payload, None, key))
                    }
                }
            },
        )
        .await;
        let mut by_collection: std::collections::BTreeMap<String, Vec<Moved>> = Default::default();
        let mut uploaded = Vec::new();
        let mut moved_now = 0;
        for (item, result) in batch.into_iter().zip(results) {
            let (payload, remote, key) = result?;
            if to_link {
                uploaded.push(key);
            } else if payload.is_none() {
                // Gone from the storage: fine only if the record changed meanwhile.
                if sync.item_rev(&item.collection, &item.id) == Some(item.rev) {
                    return Err(
                        RemoteError::Corrupt(format!("{key} is missing from the storage")).into(),
                    );
                }
                continue;
            } else {
                removable.push(key);
            }
            by_collection
                .entry(item.collection)
                .or_default()
                .push(Moved {
                    id: item.id,
                    rev: item.rev,
                    payload: payload.unwrap_or_default(),
                    remote,
                });
            moved_now += 1;
        }
        for (collection, moved) in by_collection {
            let change = StorageChange::Moved { collection, moved };
            let committed = sync.change(user, &gateway.journal, |state| {
                if state.link.as_ref().is_some_and(|l| l.id == linked.link.id) {
                    Ok(change)
                } else {
                    Err(ApiError::RemoteLinkChanged)
                }
            });
            match committed {
                Ok(commit) => commit.wait().await?,
                Err(error) => {
                    // Uploaded to a storage that is no longer the user's: nothing refers to it.
                    remove_garbage(linked.store.clone(), sync.clone(), uploaded);
                    return Err(error);
                }
            }
        }
        moved_total += moved_now;
        if moved_now == 0 {
            break;
        }
    }
    if !to_link {
        // Only once the payloads are durable here.
        sync.add_garbage(removable);
    }
    Ok(moved_total)
}

/// Copies every blob kept in the old place to the new one, chunk by chunk under new names,
/// then switches it (if nothing changed meanwhile, and the link is still the same) and
/// removes the old copy; returns how many moved.
async fn move_blobs(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    linked: &Linked,
    to_link: bool,
) -> Result<usize, ApiError> {
    let local: Arc<dyn ObjectStore> = Arc::new(gateway.remote.local(user));
    let (from, to) = if to_link {
        (local.clone(), linked.store.clone())
    } else {
        (linked.store.clone(), local.clone())
    };
    let target = to_link.then(|| linked.link.id.clone());
    let mut moved = 0;
    for (id, blob) in sync.blobs() {
        if blob.link == target {
            continue;
        }
        let mut copies = Vec::with_capacity(blob.chunks.len());
        let mut written = Vec::new();
        for (index, chunk) in blob.chunks.iter().enumerate() {
            let Some(chunk) = chunk else {
                copies.push(None);
                continue;
            };
            let key = chunk_key(&id, index as u64, chunk);
            let bytes = get_checked(from.as_ref(), &key, chunk)
                .await?
                .ok_or_else(|| RemoteError::Corrupt(format!("{key} is missing")))?;
            let copy = RemoteRef::of(&bytes);
            let new_key = chunk_key(&id, index as u64, &copy);
            to.put(&new_key, bytes).await?;
            written.push(new_key);
            copies.push(Some(copy));
        }
        let change = StorageChange::BlobMoved {
            blob: id.clone(),
            link: target.clone(),
            chunks: copies,
        };
        let switched = sync.change(user, &gateway.journal, |state| {
            // A chunk that arrived during the copy is not in the new place, and a link that
            // changed is not where we copied to: leave this blob for next time.
            let same_link = state.link.as_ref().is_some_and(|l| l.id == linked.link.id);
            match state.blobs.get(&id) {
                Some(now) if now.chunks == blob.chunks && same_link => Ok(change),
                _ => Err(ApiError::RemoteLinkChanged),
            }
        });
        let Ok(commit) = switched else {
            for key in written {
                let _ = to.delete(&key).await;
            }
            continue;
        };
        commit.wait().await?;
        moved += 1;
        let old = blob.stored_keys(&id);
        if to_link {
            for key in old {
                let _ = from.delete(&key).await;
            }
        } else {
            sync.add_garbage(old);
        }
    }
    Ok(moved)
}

/// `DELETE /1/remote-storage?data=move|leave`: unlinks. `move` (the default) brings every
/// payload back here first (it needs the key); `leave` leaves the files in the storage, and
/// the records kept there are dropped from sync (devices that are behind start over: 410).
async fn unlink(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    query: &str,
) -> Result<Answer, ApiError> {
    let link = sync.link().ok_or(ApiError::RemoteNotLinked)?;
    let leave = match query_param(query, "data") {
        None | Some("move") => false,
        Some("leave") => true,
        Some(_) => return Err(field_error("data", "must be move or leave")),
    };
    let mut summary = json!({});
    if leave {
        let (records, blobs, commit) = sync.unlink_leaving(user, &gateway.journal, &link.id)?;
        commit.wait().await?;
        summary["dropped"] = json!({ "records": records, "blobs": blobs });
    } else {
        let linked = open_link(gateway, user, sync, headers)?.ok_or(ApiError::RemoteNotLinked)?;
        let records = move_records(gateway, user, sync, &linked, false).await?;
        let blobs = move_blobs(gateway, user, sync, &linked, false).await?;
        summary["moved"] = json!({ "records": records, "blobs": blobs });
        let garbage = sync.take_garbage();
        let commit = sync.change(user, &gateway.journal, |state| {
            // Decided under the lock: a write that reached the storage while we moved (or a
            // blob that did) would be left pointing at a storage no longer linked.
            let linked_here = state.link.as_ref().is_some_and(|l| l.id == link.id);
            let still_there = state
                .collections
                .values()
                .flat_map(|c| c.items.values())
                .any(|item| item.remote.is_some())
                || state.blobs.values().any(|b| b.link.is_some());
            if linked_here && !still_there {
                Ok(StorageChange::Unlinked {
                    link: link.id.clone(),
                })
            } else {
                Err(ApiError::RemoteLinkChanged)
            }
        });
        let commit = match commit {
            Ok(commit) => commit,
            Err(error) => {
                sync.add_garbage(garbage);
                return Err(error);
            }
        };
        commit.wait().await?;
        // The storage's copies go once ours are durable and the link is gone.
        remove_garbage(linked.store.clone(), sync.clone(), garbage);
    }
    info!(%user, leave, "storage unlinked");
    let mut answer = status(sync);
    answer["unlinked"] = summary;
    Ok(Answer::ok(answer, None))
}

/// `POST /1/remote-storage/rekey`: the credentials, opened with `X-Storage-Key`, sealed
/// again under `X-New-Storage-Key`. The old key no longer opens them.
async fn rekey(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    headers: &HeaderMap,
) -> Result<Answer, ApiError> {
    let link = sync.link().ok_or(ApiError::RemoteNotLinked)?;
    let key = StorageKey::from_headers(headers, KEY_HEADER)?.ok_or(ApiError::RemoteKeyRequired)?;
    let new_key = StorageKey::from_headers(headers, NEW_KEY_HEADER)?.ok_or_else(|| {
        ApiError::RemoteKeyMalformed {
            header: NEW_KEY_HEADER.to_owned(),
        }
    })?;
    let credentials = gateway.remote.secret.open(&key, user, &link)?;
    let sealed = gateway
        .remote
        .secret
        .seal(&new_key, user, &link.id, &link.url, &credentials);
    drop(credentials);
    reseal(gateway, user, sync, &link, sealed).await?;
    info!(%user, "storage key rotated");
    Ok(Answer::ok(status(sync), None))
}

/// Replaces the sealed credentials of `link` (journaled), if they are still exactly those
/// the caller opened: of two devices re-keying at once, the second is told to try again
/// (and then needs the key the first one chose) rather than silently winning.
async fn reseal(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    link: &StoredLink,
    sealed: String,
) -> Result<(), ApiError> {
    let commit = sync.change(user, &gateway.journal, |state| {
        if state.link.as_ref() == Some(link) {
            Ok(StorageChange::Rekeyed {
                link: link.id.clone(),
                sealed,
            })
        } else {
            Err(ApiError::RemoteLinkChanged)
        }
    })?;
    commit.wait().await
}

// === Blobs ===

fn blob_json(id: &str, blob: &Blob) -> Value {
    json!({
        "blob_id": id,
        "size": blob.size,
        "chunk_size": blob.chunk_size,
        "chunks": blob.chunks.len(),
        "missing": blob.missing(),
        "complete": blob.complete(),
        "hash": blob.hash(),
        "stored": if blob.link.is_some() { "linked" } else { "here" },
        "created_ms": blob.created_ms,
    })
}

/// Where a blob's chunks are: the linked storage (opened with the request's key) or here.
fn blob_store(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    headers: &HeaderMap,
    blob: &Blob,
) -> Result<Arc<dyn ObjectStore>, ApiError> {
    match &blob.link {
        None => Ok(Arc::new(gateway.remote.local(user))),
        Some(link) => {
            let linked =
                open_link(gateway, user, sync, headers)?.ok_or(ApiError::RemoteLinkChanged)?;
            if linked.link.id != *link {
                return Err(ApiError::RemoteLinkChanged);
            }
            Ok(linked.store)
        }
    }
}

/// `POST /1/blobs` `{"size": N}`: starts an upload; its chunks are then sent one by one.
async fn create_blob(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    body: &[u8],
) -> Result<Answer, ApiError> {
    let limits = &gateway.config.blobs;
    let object: serde_json::Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidJson(format!("the body is not a JSON object: {e}")))?;
    let size = object
        .get("size")
        .and_then(Value::as_u64)
        .ok_or_else(|| field_error("size", "is required: the blob's length in bytes"))?;
    if size > limits.max_blob_bytes {
        return Err(ApiError::BlobTooLarge {
            limit: limits.max_blob_bytes,
        });
    }
    let id = new_link_id();
    let (meta, commit) =
        sync.create_blob(user, &gateway.journal, id.clone(), size, now_ms(), limits)?;
    commit.wait().await?;
    let mut answer = Answer::ok(blob_json(&id, &meta), None);
    answer.status = StatusCode::CREATED;
    Ok(answer)
}

/// `PUT /1/blobs/{id}/chunks/{index}`: one chunk, exactly as long as the blob's layout says.
/// Until the blob is complete, sending a chunk again replaces it (a resumed upload may resend
/// the last one); once it is complete, its chunks never change: the same bytes again are
/// accepted as the retry they are, different ones refused.
#[allow(clippy::too_many_arguments)]
async fn put_chunk(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    id: &str,
    index: u64,
    body: &Bytes,
) -> Result<Answer, ApiError> {
    let blob = sync.blob(id).ok_or(ApiError::NotFound)?;
    if index >= blob.chunks.len() as u64 {
        return Err(ApiError::BlobChunkInvalid(format!(
            "this blob has chunks 0 to {}",
            blob.chunks.len() - 1
        )));
    }
    let expected = blob.chunk_len(index);
    if body.len() as u64 != expected {
        return Err(ApiError::BlobChunkInvalid(format!(
            "chunk {index} must be exactly {expected} bytes; this one is {}",
            body.len()
        )));
    }
    let stored = RemoteRef::of(body);
    let claimed = headers
        .get("x-chunk-sha256")
        .map(|v| v.to_str().map(str::to_ascii_lowercase).unwrap_or_default());
    if claimed.is_some_and(|claimed| claimed != stored.sha256) {
        return Err(ApiError::BlobChunkInvalid(
            "the chunk does not match its X-Chunk-Sha256: it was damaged on the way".to_owned(),
        ));
    }
    let answer = |blob: &Blob, sha256: &str| {
        let mut answer = blob_json(id, blob);
        answer["index"] = json!(index);
        answer["sha256"] = json!(sha256);
        Answer::ok(answer, None)
    };
    let same =
        |chunk: &Option<RemoteRef>| chunk.as_ref().is_some_and(|c| c.sha256 == stored.sha256);
    if blob.complete() {
        return if same(&blob.chunks[index as usize]) {
            Ok(answer(&blob, &stored.sha256))
        } else {
            Err(ApiError::BlobChunkInvalid(
                "the blob is complete: its chunks no longer change".to_owned(),
            ))
        };
    }
    let store = blob_store(gateway, user, sync, headers, &blob)?;
    let key = chunk_key(id, index, &stored);
    store.put(&key, body.clone()).await?;
    let change = StorageChange::BlobChunk {
        blob: id.to_owned(),
        index,
        chunk: stored.clone(),
    };
    let mut replaced = None;
    let committed = sync.change(user, &gateway.journal, |state| match state.blobs.get(id) {
        Some(now) if now.link != blob.link => Err(ApiError::RemoteLinkChanged),
        Some(now) if now.complete() => Err(ApiError::BlobChunkInvalid(
            "the blob is complete: its chunks no longer change".to_owned(),
        )),
        Some(now) => {
            replaced = now.chunks[index as usize].clone();
            Ok(change)
        }
        None => Err(ApiError::NotFound),
    });
    let commit = match committed {
        Ok(commit) => commit,
        Err(error) => {
            remove_garbage(store, sync.clone(), vec![key]);
            return Err(error);
        }
    };
    commit.wait().await?;
    if let Some(old) = replaced {
        remove_garbage(store, sync.clone(), vec![chunk_key(id, index, &old)]);
    }
    let blob = sync.blob(id).ok_or(ApiError::NotFound)?;
    Ok(answer(&blob, &stored.sha256))
}

/// `GET /1/blobs/{id}/chunks/{index}`: one chunk's bytes, checked against its digest.
async fn get_chunk(
    gateway: &Gateway,
    user: UserId,
    sync: &UserSync,
    headers: &HeaderMap,
    id: &str,
    index: u64,
) -> Result<Answer, ApiError> {
    let blob = sync.blob(id).ok_or(ApiError::NotFound)?;
    let stored = blob
        .chunks
        .get(index as usize)
        .ok_or(ApiError::NotFound)?
        .clone()
        .ok_or(ApiError::BlobIncomplete {
            missing: blob.missing().len(),
        })?;
    let store = blob_store(gateway, user, sync, headers, &blob)?;
    let key = chunk_key(id, index, &stored);
    let bytes = get_checked(store.as_ref(), &key, &stored)
        .await?
        .ok_or_else(|| RemoteError::Corrupt(format!("{key} is missing")))?;
    Ok(Answer {
        status: StatusCode::OK,
        body: None,
        etag: None,
        bytes: Some(bytes),
    })
}

/// `DELETE /1/blobs/{id}`: forgets the blob, then removes its chunks.
async fn delete_blob(
    gateway: &Gateway,
    user: UserId,
    sync: &Arc<UserSync>,
    headers: &HeaderMap,
    id: &str,
) -> Result<Answer, ApiError> {
    let blob = sync.blob(id).ok_or(ApiError::NotFound)?;
    let store = blob_store(gateway, user, sync, headers, &blob)?;
    let change = StorageChange::BlobDeleted {
        blob: id.to_owned(),
    };
    sync.change(user, &gateway.journal, |state| match state.blobs.get(id) {
        Some(_) => Ok(change),
        None => Err(ApiError::NotFound),
    })?
    .wait()
    .await?;
    remove_garbage(store, sync.clone(), blob.stored_keys(id));
    Ok(Answer::ok(json!({ "blob_id": id, "deleted": true }), None))
}

/// Removes uploads left unfinished for longer than `blobs.upload_ttl_secs` before `now`
/// (maintenance). Chunks on this server's disk are removed now; those in a linked storage
/// when the user's next request brings the key.
pub async fn expire_uploads(gateway: &Gateway, now: u64) -> usize {
    let before = now.saturating_sub(gateway.config.blobs.upload_ttl_secs * 1000);
    let mut removed = 0;
    for (user, sync) in gateway.sync.users() {
        for (id, blob) in sync.stale_uploads(before) {
            let change = StorageChange::BlobDeleted { blob: id.clone() };
            // Finished meanwhile? Then it stays.
            let decided = sync.change(user, &gateway.journal, |state| match state.blobs.get(&id) {
                Some(now) if !now.complete() => Ok(change),
                _ => Err(ApiError::NotFound),
            });
            let Ok(commit) = decided else {
                continue;
            };
            if commit.wait().await.is_err() {
                continue;
            }
            removed += 1;
            let keys = blob.stored_keys(&id);
            if blob.link.is_some() {
                sync.add_garbage(keys);
            } else {
                let local = gateway.remote.local(user);
                for key in keys {
                    let _ = local.delete(&key).await;
                }
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = "0123456789abcdef0123456789abcdef";
        let at = |method: Method, path: &str| {
            let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            route(&method, &segments)
        };
        assert_eq!(
            at(Method::PUT, "/1/remote-storage").unwrap(),
            RemoteRoute::Link
        );
        assert_eq!(
            at(Method::POST, "/1/remote-storage/rekey").unwrap(),
            RemoteRoute::Rekey
        );
        assert_eq!(
            at(Method::PUT, &format!("/1/blobs/{id}/chunks/7")).unwrap(),
            RemoteRoute::PutChunk(id.into(), 7)
        );
        assert!(matches!(
            at(Method::POST, "/1/remote-storage"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            at(Method::GET, "/1/blobs/not-an-id"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            at(Method::GET, &format!("/1/blobs/{id}/chunks/x")),
            Err(ApiError::NotFound)
        ));
    }
}
