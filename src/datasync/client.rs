//! The sync client: encrypts every payload before it leaves the device, and talks to the sync
//! API as a device (Hawk, answers verified) or as the owner (bearer token).
//!
//! What the server sees is described in `docs/sync.md` ("What the server can see"): collection
//! names, record ids, sizes (rounded up by padding), revisions, times and counts; never a
//! plaintext or a key.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hawk::{Credentials, RequestBuilder};
use http::header::{self, HeaderName};
use http::{Method, StatusCode};
use rand::Rng;
use serde_json::{Map, Value, json};

use super::crypto::{self, CryptoError, KEYS_COLLECTION, RootKey, SecretKey};
use crate::client::{ClientError, HttpClient, Reply, verify_answer};
use crate::hawk_auth;

/// The collection whose key seals blob chunks.
pub const BLOBS_COLLECTION: &str = "blobs";

/// How the client proves who it is.
enum Auth {
    /// One of the user's devices: its Hawk credentials (the command channel's).
    Device(Credentials),
    /// The user, with a bearer token from `POST /1/session`.
    Owner(String),
}

/// What can go wrong syncing.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("a payload could not be opened: {0}")]
    Crypto(#[from] CryptoError),
    /// The record or collection changed since the revision the write was based on.
    #[error("changed meanwhile: now at revision {current}")]
    Conflict { current: u64 },
}

/// An answer of the sync API.
#[derive(Debug, Clone)]
pub struct SyncReply {
    pub status: StatusCode,
    /// The object's revision (`ETag`), when the answer is about one.
    pub etag: Option<u64>,
    /// The user's latest revision (`X-Sync-Revision`).
    pub user_rev: Option<u64>,
    pub headers: http::HeaderMap,
    /// `Null` for an empty body.
    pub body: Value,
}

/// One change read from a collection, decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put {
        id: String,
        rev: u64,
        plaintext: Vec<u8>,
    },
    Deleted {
        id: String,
        rev: u64,
    },
}

/// A sync client for one user.
pub struct SyncClient {
    http: HttpClient,
    auth: Auth,
    root: RootKey,
    /// Collection keys already fetched (or made) and opened.
    keys: HashMap<String, SecretKey>,
    /// Pad plaintexts to their Padmé size before sealing.
    pub pad: bool,
    /// Sent as `X-Storage-Key` when the user linked a storage of their own.
    storage_key: Option<zeroize::Zeroizing<String>>,
}

/// A blob as a record refers to it (inside the record's encrypted payload).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlobRef {
    pub blob_id: String,
    /// The plaintext's length.
    pub size: u64,
    /// The server's hash of the stored (sealed) chunks: SHA-256 over their SHA-256s.
    pub hash: String,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("root_kid", &self.root.0.kid)
            .finish_non_exhaustive()
    }
}

fn etag(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

impl SyncClient {
    /// A client signing as device `id` with its `secret`.
    pub fn device(http: HttpClient, id: &str, secret: &str, root: RootKey) -> SyncClient {
        let credentials = Credentials {
            id: id.to_owned(),
            key: hawk_auth::key_for(secret),
        };
        SyncClient::new(http, Auth::Device(credentials), root)
    }

    /// A client calling with the owner's bearer `token`.
    pub fn owner(http: HttpClient, token: &str, root: RootKey) -> SyncClient {
        SyncClient::new(http, Auth::Owner(token.to_owned()), root)
    }

    fn new(http: HttpClient, auth: Auth, root: RootKey) -> SyncClient {
        SyncClient {
            http,
            auth,
            root,
            keys: HashMap::new(),
            pad: true,
            storage_key: None,
        }
    }

    /// Sends `key` with every request from now on (`None`: stop sending one).
    pub fn use_storage_key(&mut self, key: Option<&crate::remote::link::StorageKey>) {
        self.storage_key = key.map(|k| k.encode());
    }

    /// One request: authenticated, and for a device the answer's signature verified.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(HeaderName, String)],
        body: Option<&Value>,
    ) -> Result<SyncReply, ClientError> {
        let (bytes, content_type) = match body {
            Some(body) => (Bytes::from(serde_json::to_vec(body)?), "application/json"),
            None => (Bytes::new(), ""),
        };
        let reply = self
            .request_bytes(method, path, extra, bytes, content_type)
            .await?;
        let body = if reply.body.is_empty()
            || !reply
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
        {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body)?
        };
        Ok(SyncReply {
            status: reply.status,
            etag: etag(&reply.headers, "etag"),
            user_rev: etag(&reply.headers, "x-sync-revision"),
            headers: reply.headers,
            body,
        })
    }

    /// One request with a body of any type, answered with raw bytes.
    pub async fn request_bytes(
        &mut self,
        method: Method,
        path: &str,
        extra: &[(HeaderName, String)],
        bytes: Bytes,
        content_type: &str,
    ) -> Result<Reply, ClientError> {
        let mut headers = extra.to_vec();
        if let Some(key) = &self.storage_key {
            headers.push((
                HeaderName::from_static(crate::remote::link::KEY_HEADER),
                key.to_string(),
            ));
        }
        if !content_type.is_empty() {
            headers.push((header::CONTENT_TYPE, content_type.to_owned()));
        }
        let wait = crate::service::query_param(path.split_once('?').map_or("", |(_, q)| q), "wait")
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0);
        let timeout = Duration::from_secs(wait + 30);
        let reply: Reply = match &self.auth {
            Auth::Owner(token) => {
                headers.push((header::AUTHORIZATION, format!("Bearer {token}")));
                self.http
                    .send(method, path, &headers, bytes, timeout)
                    .await?
            }
            Auth::Device(credentials) => {
                let (host, port) = self.http.host();
                let (host, port) = (host.to_owned(), port);
                let hash = hawk_auth::payload_hash(content_type, &bytes);
                let request = RequestBuilder::new(method.as_str(), &host, port, path)
                    .hash(&hash[..])
                    .request();
                let nonce = STANDARD.encode(rand::thread_rng().r#gen::<[u8; 9]>());
                let header = request
                    .make_header_full(credentials, SystemTime::now(), nonce)
                    .map_err(|_| ClientError::BadSignature("could not sign the request"))?;
                headers.push((header::AUTHORIZATION, format!("Hawk {header}")));
                let reply = self
                    .http
                    .send(method.clone(), path, &headers, bytes, timeout)
                    .await?;
                // Anything but a refusal of our credentials is signed by the server.
                if reply.status != StatusCode::UNAUTHORIZED {
                    verify_answer(&request, &header, credentials, &reply)?;
                }
                reply
            }
        };
        Ok(reply)
    }

    /// Encrypts `plaintext` chunk by chunk under the `blobs` collection's key and uploads it
    /// (`POST /1/blobs`, then each chunk). Put the returned reference in a record.
    pub async fn upload_blob(&mut self, plaintext: &[u8]) -> Result<BlobRef, SyncError> {
        let key = self.collection_key(BLOBS_COLLECTION).await?;
        let config = self
            .request(Method::GET, "/1/info/configuration", &[], None)
            .await?;
        let chunk_bytes = config.body["blob_chunk_bytes"].as_u64().unwrap_or(0) as usize;
        if chunk_bytes <= crypto::CHUNK_OVERHEAD {
            return Err(SyncClient::fail(config));
        }
        let piece = chunk_bytes - crypto::CHUNK_OVERHEAD;
        let pieces: Vec<&[u8]> = if plaintext.is_empty() {
            vec![&[]]
        } else {
            plaintext.chunks(piece).collect()
        };
        let size = (plaintext.len() + pieces.len() * crypto::CHUNK_OVERHEAD) as u64;
        let reply = self
            .request(
                Method::POST,
                "/1/blobs",
                &[],
                Some(&json!({ "size": size })),
            )
            .await?;
        let Some(blob_id) = reply.body["blob_id"].as_str().map(str::to_owned) else {
            return Err(SyncClient::fail(reply));
        };
        let mut hash = None;
        for (index, piece) in pieces.iter().enumerate() {
            let last = index + 1 == pieces.len();
            let sealed = crypto::seal_chunk(&key, &blob_id, index as u64, last, piece);
            let path = format!("/1/blobs/{blob_id}/chunks/{index}");
            let reply = self
                .request_bytes(
                    Method::PUT,
                    &path,
                    &[],
                    Bytes::from(sealed),
                    "application/octet-stream",
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(SyncError::Client(ClientError::Status {
                    status: reply.status,
                    body: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
                }));
            }
            let body: Value = serde_json::from_slice(&reply.body).map_err(ClientError::from)?;
            hash = body["hash"].as_str().map(str::to_owned);
        }
        Ok(BlobRef {
            blob_id,
            size: plaintext.len() as u64,
            hash: hash.unwrap_or_default(),
        })
    }

    /// Downloads and opens a blob, checking the server's hash against the reference.
    pub async fn download_blob(&mut self, blob: &BlobRef) -> Result<Vec<u8>, SyncError> {
        let key = self.collection_key(BLOBS_COLLECTION).await?;
        let path = format!("/1/blobs/{}", blob.blob_id);
        let meta = self.request(Method::GET, &path, &[], None).await?;
        if meta.status != StatusCode::OK || meta.body["hash"] != json!(blob.hash) {
            return Err(SyncClient::fail(meta));
        }
        let chunks = meta.body["chunks"].as_u64().unwrap_or(0);
        let mut plaintext = Vec::with_capacity(blob.size as usize);
        for index in 0..chunks {
            let reply = self
                .request_bytes(
                    Method::GET,
                    &format!("{path}/chunks/{index}"),
                    &[],
                    Bytes::new(),
                    "",
                )
                .await?;
            if reply.status != StatusCode::OK {
                return Err(SyncError::Client(ClientError::Status {
                    status: reply.status,
                    body: serde_json::from_slice(&reply.body).unwrap_or(Value::Null),
                }));
            }
            let last = index + 1 == chunks;
            plaintext.extend(crypto::open_chunk(
                &key,
                &blob.blob_id,
                index,
                last,
                &reply.body,
            )?);
        }
        if plaintext.len() as u64 != blob.size {
            return Err(SyncError::Crypto(CryptoError::Forged));
        }
        Ok(plaintext)
    }

    /// The revision a successful write answers with, or the error it is.
    fn revision(reply: SyncReply) -> Result<u64, SyncError> {
        match (reply.status, reply.body["rev"].as_u64()) {
            (StatusCode::OK, Some(rev)) => Ok(rev),
            _ => Err(SyncClient::fail(reply)),
        }
    }

    fn fail(reply: SyncReply) -> SyncError {
        if reply.status == StatusCode::PRECONDITION_FAILED
            && let Some(current) = reply.body["current"].as_u64()
        {
            return SyncError::Conflict { current };
        }
        SyncError::Client(ClientError::Status {
            status: reply.status,
            body: reply.body,
        })
    }

    /// The key of `collection`: fetched from `keys/<collection>` and opened with the root key,
    /// or made and stored there (create-only, so two devices racing agree on one key).
    pub async fn collection_key(&mut self, collection: &str) -> Result<SecretKey, SyncError> {
        if let Some(key) = self.keys.get(collection) {
            return Ok(key.clone());
        }
        let path = format!("/1/storage/{KEYS_COLLECTION}/{collection}");
        let reply = self.request(Method::GET, &path, &[], None).await?;
        let key = match reply.status {
            StatusCode::OK => {
                let payload = reply.body["payload"].as_str().unwrap_or_default();
                self.root.unwrap(collection, payload)?
            }
            StatusCode::NOT_FOUND => {
                let key = SecretKey::random();
                let body = json!({ "payload": self.root.wrap(collection, &key) });
                let create = [(header::IF_NONE_MATCH, "*".to_owned())];
                let reply = self
                    .request(Method::PUT, &path, &create, Some(&body))
                    .await?;
                match reply.status {
                    StatusCode::OK => key,
                    // Another device made it first: use theirs.
                    StatusCode::PRECONDITION_FAILED => {
                        let reply = self.request(Method::GET, &path, &[], None).await?;
                        if reply.status != StatusCode::OK {
                            return Err(SyncClient::fail(reply));
                        }
                        let payload = reply.body["payload"].as_str().unwrap_or_default();
                        self.root.unwrap(collection, payload)?
                    }
                    _ => return Err(SyncClient::fail(reply)),
                }
            }
            _ => return Err(SyncClient::fail(reply)),
        };
        self.keys.insert(collection.to_owned(), key.clone());
        Ok(key)
    }

    /// Encrypts and writes one record. `if_match`: the revision this write is based on (412,
    /// as [`SyncError::Conflict`], when it changed). Returns the new revision.
    pub async fn put(
        &mut self,
        collection: &str,
        id: &str,
        plaintext: &[u8],
        if_match: Option<u64>,
    ) -> Result<u64, SyncError> {
        let key = self.collection_key(collection).await?;
        let payload = crypto::seal(&key, collection, id, plaintext, self.pad);
        let condition: Vec<_> = if_match
            .map(|rev| (header::IF_MATCH, format!("\"{rev}\"")))
            .into_iter()
            .collect();
        let path = format!("/1/storage/{collection}/{id}");
        let reply = self
            .request(
                Method::PUT,
                &path,
                &condition,
                Some(&json!({ "payload": payload })),
            )
            .await?;
        SyncClient::revision(reply)
    }

    /// Encrypts and writes several records atomically, at one revision.
    pub async fn put_many(
        &mut self,
        collection: &str,
        records: &[(&str, &[u8])],
    ) -> Result<u64, SyncError> {
        let key = self.collection_key(collection).await?;
        let batch: Vec<Value> = records
            .iter()
            .map(|(id, plaintext)| {
                json!({ "id": id, "payload": crypto::seal(&key, collection, id, plaintext, self.pad) })
            })
            .collect();
        let path = format!("/1/storage/{collection}");
        let reply = self
            .request(Method::POST, &path, &[], Some(&Value::Array(batch)))
            .await?;
        SyncClient::revision(reply)
    }

    /// Reads and decrypts one record: its plaintext and revision, or `None` if there is none.
    pub async fn get(
        &mut self,
        collection: &str,
        id: &str,
    ) -> Result<Option<(Vec<u8>, u64)>, SyncError> {
        let key = self.collection_key(collection).await?;
        let path = format!("/1/storage/{collection}/{id}");
        let reply = self.request(Method::GET, &path, &[], None).await?;
        match reply.status {
            StatusCode::OK => {
                let payload = reply.body["payload"].as_str().unwrap_or_default();
                let rev = reply.body["rev"].as_u64().unwrap_or(0);
                Ok(Some((crypto::open(&key, collection, id, payload)?, rev)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(SyncClient::fail(reply)),
        }
    }

    /// Deletes one record (leaving a tombstone); the new revision.
    pub async fn delete(
        &mut self,
        collection: &str,
        id: &str,
        if_match: Option<u64>,
    ) -> Result<u64, SyncError> {
        let condition: Vec<_> = if_match
            .map(|rev| (header::IF_MATCH, format!("\"{rev}\"")))
            .into_iter()
            .collect();
        let path = format!("/1/storage/{collection}/{id}");
        let reply = self
            .request(Method::DELETE, &path, &condition, None)
            .await?;
        SyncClient::revision(reply)
    }

    /// Every change to `collection` after revision `since`, decrypted, following the cursor
    /// page by page (`page` records each). Returns them with the revision to pass as `since`
    /// next time.
    pub async fn changes_since(
        &mut self,
        collection: &str,
        since: u64,
        page: usize,
    ) -> Result<(Vec<Change>, u64), SyncError> {
        let key = self.collection_key(collection).await?;
        let mut changes = Vec::new();
        let mut high = since;
        let mut offset: Option<String> = None;
        loop {
            let mut path = format!("/1/storage/{collection}?since={since}&limit={page}");
            if let Some(cursor) = &offset {
                path.push_str(&format!("&offset={cursor}"));
            }
            let reply = self.request(Method::GET, &path, &[], None).await?;
            if reply.status != StatusCode::OK {
                return Err(SyncClient::fail(reply));
            }
            high = high.max(reply.body["rev"].as_u64().unwrap_or(0));
            for record in reply.body["records"].as_array().into_iter().flatten() {
                let id = record["id"].as_str().unwrap_or_default().to_owned();
                let rev = record["rev"].as_u64().unwrap_or(0);
                high = high.max(rev);
                if record["deleted"] == json!(true) {
                    changes.push(Change::Deleted { id, rev });
                } else {
                    let payload = record["payload"].as_str().unwrap_or_default();
                    let plaintext = crypto::open(&key, collection, &id, payload)?;
                    changes.push(Change::Put { id, rev, plaintext });
                }
            }
            match reply.body["next"].as_str() {
                Some(next) => offset = Some(next.to_owned()),
                None => return Ok((changes, high)),
            }
        }
    }

    /// Parks on the change feed until any collection moves past `since` (or `wait` seconds
    /// pass): the user's revision and the collections changed, with their revisions.
    pub async fn wait_for_changes(
        &mut self,
        since: u64,
        wait: u64,
    ) -> Result<(u64, Map<String, Value>), SyncError> {
        let path = format!("/1/changes?since={since}&wait={wait}");
        let reply = self.request(Method::GET, &path, &[], None).await?;
        if reply.status != StatusCode::OK {
            return Err(SyncClient::fail(reply));
        }
        let rev = reply.body["rev"].as_u64().unwrap_or(0);
        let collections = reply.body["collections"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        Ok((rev, collections))
    }
}
