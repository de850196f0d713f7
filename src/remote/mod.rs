//! Where payloads live: the storage backends behind sync records and blobs.
//!
//! The gateway is always the authority for *what* exists (revisions, the index, tombstones,
//! the change feed); a backend only keeps bytes under names the gateway chose. Two backends:
//!
//! - **Embedded** (the default): record payloads stay inline in the journal and snapshots,
//!   where they are made durable with the write that carries them; blob chunks are files under
//!   `<data_dir>/blobs/<user>/` ([`LocalStore`]).
//! - **WebDAV** ([`webdav::WebDav`]): the user's own ownCloud / Nextcloud / any WebDAV folder,
//!   linked with credentials the gateway keeps only sealed under a key the client sends with
//!   each request ([`link`]). Record payloads and blob chunks are files there; our disk keeps
//!   only their size and SHA-256.
//!
//! Names on a backend ([`record_key`], [`chunk_key`]) end in a random upload id, so a name is
//! written once and never again: a retry, a resent chunk or a move makes a new file, and
//! removing a file nothing refers to can never race with an upload of the same name. A reader
//! checks what it got against the size and SHA-256 the index holds. Remote ETags are never
//! trusted: mtime-based ones miss same-second overwrites.

pub mod link;
pub mod webdav;

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use crate::accounts::hex;
use crate::config::Config;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::metrics::{Collect, Counter, Exposition, FAST_BOUNDS, Histogram};
use crate::outbound::{Outbound, Resolve, Timeouts};

/// A boxed future, so that [`ObjectStore`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A payload kept on a backend rather than inline: enough to name it and to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRef {
    /// Lower-case hex SHA-256 of the bytes.
    pub sha256: String,
    pub size: u64,
    /// Random (64 bits, hex), new for every upload: part of the name.
    pub upload: String,
}

impl RemoteRef {
    /// The reference of `bytes` about to be uploaded under a new name.
    pub fn of(bytes: &[u8]) -> RemoteRef {
        RemoteRef {
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            upload: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// Why a backend could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// Down, slow, or answering 5xx: worth retrying later.
    #[error("the linked storage is unavailable: {0}")]
    Unavailable(String),
    /// It refused our credentials (the app password was revoked, say).
    #[error("the linked storage refused the credentials it was linked with: link it again")]
    Credentials,
    /// It has no room left.
    #[error("the linked storage is full")]
    Full,
    /// It answered something a WebDAV server should not.
    #[error("the linked storage answered unexpectedly: {0}")]
    Unexpected(String),
    /// What it returned is not what was stored.
    #[error("the linked storage returned different content than was stored: {0}")]
    Corrupt(String),
    /// The outbound policy forbids its address.
    #[error("the linked storage's address is not allowed: {0}")]
    Refused(String),
    /// Our own disk (the embedded backend).
    #[error("local storage failed: {0}")]
    Local(String),
}

/// Bytes under names: what a storage backend must do. Every method is idempotent, so a
/// caller may retry any of them.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores `data` under `key`, replacing what was there; durable once it returns `Ok`.
    /// Creates the folders on the way.
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RemoteError>>;
    /// The bytes under `key`, or `None` if there are none.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, RemoteError>>;
    /// Removes `key`; removing what is not there succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), RemoteError>>;
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(digest(&SHA256, bytes).as_ref())
}

/// The name of a record's payload: `records/<collection>/<id>.<upload>`. Collection names and
/// ids are URL-safe by construction (`datasync::check_collection`, `check_id`).
pub fn record_key(collection: &str, id: &str, stored: &RemoteRef) -> String {
    format!("records/{collection}/{id}.{}", stored.upload)
}

/// The name of a blob's chunk: `blobs/<blob id>/<index, six digits>.<upload>`.
pub fn chunk_key(blob: &str, index: u64, stored: &RemoteRef) -> String {
    format!("blobs/{blob}/{index:06}.{}", stored.upload)
}

/// Reads `key` and checks it against `expected`: `Ok(None)` if it is gone.
pub async fn get_checked(
    store: &dyn ObjectStore,
    key: &str,
    expected: &RemoteRef,
) -> Result<Option<Bytes>, RemoteError> {
    let Some(bytes) = store.get(key).await? else {
        return Ok(None);
    };
    if bytes.len() as u64 != expected.size || sha256_hex(&bytes) != expected.sha256 {
        return Err(RemoteError::Corrupt(format!(
            "{key}: {} bytes that do not match the digest on record",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

impl From<RemoteError> for ApiError {
    fn from(error: RemoteError) -> ApiError {
        match error {
            RemoteError::Unavailable(_) => ApiError::RemoteUnavailable,
            // Our own disk, not the user's storage.
            RemoteError::Local(reason) => {
                tracing::error!(%reason, "blob storage on this server's disk failed");
                ApiError::StorageUnavailable
            }
            other => ApiError::RemoteFailed(other.to_string()),
        }
    }
}

/// Exchanges with linked storages, for `/metrics`.
#[derive(Debug)]
pub struct RemoteStats {
    pub ok: Counter,
    pub unavailable: Counter,
    pub refused: Counter,
    pub failed: Counter,
    /// Every exchange, whatever its outcome.
    pub latency: Histogram,
}

impl Default for RemoteStats {
    fn default() -> Self {
        RemoteStats {
            ok: Counter::default(),
            unavailable: Counter::default(),
            refused: Counter::default(),
            failed: Counter::default(),
            latency: Histogram::new(FAST_BOUNDS),
        }
    }
}

impl RemoteStats {
    /// Counts one exchange by how it ended.
    pub fn record(&self, outcome: &Result<(), RemoteError>, elapsed: std::time::Duration) {
        self.latency.observe(elapsed);
        match outcome {
            Ok(()) => self.ok.inc(),
            Err(RemoteError::Unavailable(_)) => self.unavailable.inc(),
            Err(RemoteError::Credentials | RemoteError::Refused(_)) => self.refused.inc(),
            Err(_) => self.failed.inc(),
        }
    }
}

impl Collect for RemoteStats {
    fn collect(&self, out: &mut Exposition) {
        out.counter(
            "wheresmyfox_remote_storage_requests_total",
            "Exchanges with users' linked storages, by outcome (unavailable: down, slow or 5xx; \
             refused: credentials or address refused; failed: anything else unexpected).",
            &[
                (&[("outcome", "ok")], self.ok.get()),
                (&[("outcome", "unavailable")], self.unavailable.get()),
                (&[("outcome", "refused")], self.refused.get()),
                (&[("outcome", "failed")], self.failed.get()),
            ],
        );
        out.histogram(
            "wheresmyfox_remote_storage_request_seconds",
            "Time of one exchange with a linked storage.",
            &self.latency,
        );
    }
}

/// What the gateway needs to reach users' storages: the server's half of the sealing key,
/// the guarded HTTP client, and where the embedded backend keeps blobs.
pub struct RemoteStorage {
    pub secret: link::ServerSecret,
    pub stats: std::sync::Arc<RemoteStats>,
    outbound: Outbound,
    /// Largest answer read from a storage: a record's payload or a blob chunk.
    max_body: usize,
    blobs_dir: PathBuf,
}

impl std::fmt::Debug for RemoteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorage")
            .field("blobs_dir", &self.blobs_dir)
            .finish()
    }
}

impl RemoteStorage {
    pub fn new(
        config: &Config,
        resolver: std::sync::Arc<dyn Resolve>,
    ) -> std::io::Result<RemoteStorage> {
        let data_dir = &config.server.data_dir;
        let secret = link::ServerSecret::load(data_dir, config.seal_key().as_deref())?;
        // Validated at start-up; the strict reading is the safe one should it fail here.
        let policy = config
            .remote_storage_policy()
            .unwrap_or_else(|_| crate::outbound::Policy::default());
        let timeouts = Timeouts {
            connect: std::time::Duration::from_millis(config.remote_storage.connect_timeout_ms),
            request: std::time::Duration::from_millis(config.remote_storage.request_timeout_ms),
        };
        let max_body = config
            .sync
            .max_record_bytes
            .max(config.blobs.chunk_bytes as usize)
            + 64 * 1024;
        Ok(RemoteStorage {
            secret,
            stats: std::sync::Arc::default(),
            outbound: Outbound::new(policy, timeouts, resolver),
            max_body,
            blobs_dir: data_dir.join("blobs"),
        })
    }

    /// A client for a linked WebDAV folder.
    pub fn webdav(&self, url: &str, credentials: &link::Credentials) -> webdav::WebDav {
        webdav::WebDav::new(
            url,
            credentials,
            self.outbound.clone(),
            self.max_body,
            self.stats.clone(),
        )
    }

    /// The embedded backend's files for one user.
    pub fn local(&self, user: UserId) -> LocalStore {
        LocalStore::new(self.blobs_dir.join(user.to_string()))
    }
}

// === LocalStore ===

/// The embedded backend's files: one directory per user under `<data_dir>/blobs/`, written
/// like the journal's snapshots (temporary file, fsync, rename, directory fsync), mode 0600.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> LocalStore {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn put_now(path: &Path, data: &[u8]) -> std::io::Result<()> {
        let dir = path.parent().expect("keys have a folder");
        std::fs::create_dir_all(dir)?;
        // A name of its own, so two writers never share one; one left over by a crash is
        // never the object itself, which appears only by rename, in whole.
        let temporary = path.with_extension(format!("partial-{:016x}", rand::random::<u64>()));
        let mut file = crate::store::open_private(&temporary, true)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        crate::store::sync_dir(path)
    }
}

fn local(error: std::io::Error) -> RemoteError {
    RemoteError::Local(error.to_string())
}

impl ObjectStore for LocalStore {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RemoteError>> {
        let path = self.path(key);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || LocalStore::put_now(&path, &data))
                .await
                .map_err(|e| RemoteError::Local(e.to_string()))?
                .map_err(local)
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, RemoteError>> {
        let path = self.path(key);
        Box::pin(async move {
            match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(local(e)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), RemoteError>> {
        let path = self.path(key);
        Box::pin(async move {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(local(e)),
            }
            // A blob's folder goes with its last chunk; a folder still holding others stays.
            if let Some(dir) = path.parent() {
                let _ = tokio::fs::remove_dir(dir).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_puts_gets_and_deletes_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("u"));
        let stored = RemoteRef::of(b"two");
        assert_ne!(RemoteRef::of(b"two").upload, stored.upload);
        let key = chunk_key("b1", 3, &stored);
        assert_eq!(key, format!("blobs/b1/000003.{}", stored.upload));
        assert_eq!(store.get(&key).await.unwrap(), None);
        store.put(&key, Bytes::from_static(b"one")).await.unwrap();
        store.put(&key, Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap().unwrap(), "two");
        let found = get_checked(&store, &key, &stored).await.unwrap();
        assert!(found.is_some());
        let wrong = RemoteRef::of(b"one");
        assert!(matches!(
            get_checked(&store, &key, &wrong).await,
            Err(RemoteError::Corrupt(_))
        ));
        store.delete(&key).await.unwrap();
        store.delete(&key).await.unwrap();
        assert_eq!(store.get(&key).await.unwrap(), None);
        assert!(!dir.path().join("u/blobs/b1").exists());
    }
}
