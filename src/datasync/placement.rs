//! Where a user's payloads are kept: the link to their own storage, payloads moving between
//! it and our journal, and blobs (large payloads uploaded in chunks).
//!
//! Invariants:
//! - Every change here is journaled under the user's lock, like a write, and replays to the
//!   same state: a move applies only to the exact `(id, rev)` it names, a chunk only to the
//!   blob it names (blob ids are random and never reused), so a snapshot taken between the
//!   change and its replay cannot make it apply twice or to something else.
//! - A payload is referred to from the index only once it is stored where the index says:
//!   uploads happen first, the index changes after (`service::remote`). So a crash or a
//!   failed upload leaves at most an unreferenced file, never a record without its bytes.
//! - Moving a payload does not change its record's revision: the bytes are the same.

use serde::{Deserialize, Serialize};

use super::{Condition, Refused, UserState, UserSync, Write, lock, write_locked};
use crate::config::SyncConfig;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::remote::link::StoredLink;
use crate::remote::{RemoteRef, chunk_key};
use crate::store::record::Record;
use crate::store::{Commit, Durability, Journal};

/// A large payload, uploaded in chunks of `chunk_size` bytes (the last may be shorter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob {
    pub size: u64,
    pub chunk_size: u64,
    /// Each chunk received (digest, size and name); `None` for one still to come.
    pub chunks: Vec<Option<RemoteRef>>,
    pub created_ms: u64,
    /// The link its chunks are stored in; `None`: on this server's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A payload that changed place, at the record's unchanged revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub id: String,
    pub rev: u64,
    /// The payload, when it came back from the linked storage.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
    /// Where it is now, when it went to the linked storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteRef>,
}

/// A change to where a user's data lives, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum StorageChange {
    Linked {
        link: StoredLink,
    },
    /// The same credentials, sealed under the client's new key.
    Rekeyed {
        link: String,
        sealed: String,
    },
    Unlinked {
        link: String,
    },
    Moved {
        collection: String,
        moved: Vec<Moved>,
    },
    BlobCreated {
        blob: String,
        meta: Blob,
    },
    BlobChunk {
        blob: String,
        index: u64,
        chunk: RemoteRef,
    },
    /// The chunks were copied to the link (or back here, for `None`) under new names.
    BlobMoved {
        blob: String,
        link: Option<String>,
        chunks: Vec<Option<RemoteRef>>,
    },
    BlobDeleted {
        blob: String,
    },
}

/// A record whose payload is to move, with the payload or its reference.
#[derive(Debug, Clone)]
pub struct ToMove {
    pub collection: String,
    pub id: String,
    pub rev: u64,
    pub payload: String,
    pub remote: Option<RemoteRef>,
}

// === Blob ===

impl Blob {
    pub fn new(size: u64, chunk_size: u64, created_ms: u64, link: Option<String>) -> Blob {
        let count = size.div_ceil(chunk_size).max(1);
        Blob {
            size,
            chunk_size,
            chunks: vec![None; count as usize],
            created_ms,
            link,
        }
    }

    /// The exact length chunk `index` must have.
    pub fn chunk_len(&self, index: u64) -> u64 {
        let start = index * self.chunk_size;
        self.size.saturating_sub(start).min(self.chunk_size)
    }

    /// Indexes of the chunks still to come.
    pub fn missing(&self) -> Vec<u64> {
        (0..self.chunks.len() as u64)
            .filter(|&i| self.chunks[i as usize].is_none())
            .collect()
    }

    /// The blob's hash, once every chunk is in: SHA-256 over the chunks' SHA-256 digests in
    /// order (the "hash of hashes" Dropbox's content hash uses), so that neither side has to
    /// read the whole blob again to compute it.
    pub fn hash(&self) -> Option<String> {
        let mut digests = Vec::with_capacity(self.chunks.len() * 32);
        for chunk in &self.chunks {
            digests.extend(crate::accounts::unhex(&chunk.as_ref()?.sha256)?);
        }
        Some(crate::remote::sha256_hex(&digests))
    }

    /// Names of its chunks that are stored.
    pub fn stored_keys(&self, blob: &str) -> Vec<String> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some(chunk_key(blob, i as u64, c.as_ref()?)))
            .collect()
    }

    /// Whether every chunk is in; a complete blob never changes again.
    pub fn complete(&self) -> bool {
        self.chunks.iter().all(Option::is_some)
    }
}

// === UserState ===

impl UserState {
    /// Applies a storage change: live (after the checks of the method that made it) or in
    /// replay.
    fn apply_storage(&mut self, change: &StorageChange) {
        match change {
            StorageChange::Linked { link } => self.link = Some(link.clone()),
            StorageChange::Rekeyed { link, sealed } => {
                if let Some(current) = self.link.as_mut().filter(|l| l.id == *link) {
                    current.sealed = sealed.clone();
                }
            }
            StorageChange::Unlinked { link } => {
                if self.link.as_ref().is_some_and(|l| l.id == *link) {
                    self.link = None;
                }
            }
            StorageChange::Moved { collection, moved } => {
                let Some(c) = self.collections.get_mut(collection) else {
                    return;
                };
                for m in moved {
                    if let Some(item) = c.items.get_mut(&m.id).filter(|i| i.rev == m.rev) {
                        let before = item.payload_len();
                        item.payload = m.payload.clone();
                        item.remote = m.remote.clone();
                        // The same bytes, so the same size; kept exact all the same.
                        self.bytes = self.bytes - before + item.payload_len();
                    }
                }
            }
            StorageChange::BlobCreated { blob, meta } => {
                self.blobs
                    .entry(blob.clone())
                    .or_insert_with(|| meta.clone());
            }
            StorageChange::BlobChunk { blob, index, chunk } => {
                if let Some(slot) = self
                    .blobs
                    .get_mut(blob)
                    .and_then(|b| b.chunks.get_mut(*index as usize))
                {
                    *slot = Some(chunk.clone());
                }
            }
            StorageChange::BlobMoved { blob, link, chunks } => {
                if let Some(b) = self.blobs.get_mut(blob) {
                    b.link = link.clone();
                    b.chunks = chunks.clone();
                }
            }
            StorageChange::BlobDeleted { blob } => {
                self.blobs.remove(blob);
            }
        }
    }

    /// Bytes of blobs kept (declared sizes, finished or not).
    fn blob_bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.size).sum()
    }
}

// === SyncStore ===

impl super::SyncStore {
    /// Replays a journaled storage change.
    pub fn replay_storage(&self, user: UserId, change: &StorageChange) {
        let sync = self.user(user);
        lock(&sync.state).apply_storage(change);
    }
}

// === UserSync ===

impl UserSync {
    /// The user's linked storage, if any.
    pub fn link(&self) -> Option<StoredLink> {
        lock(&self.state).link.clone()
    }

    /// Under the user's lock: decides a change from the current state (or refuses), then
    /// journals and applies it.
    pub fn change(
        &self,
        user: UserId,
        journal: &Journal,
        decide: impl FnOnce(&UserState) -> Result<StorageChange, ApiError>,
    ) -> Result<Commit, ApiError> {
        let mut state = lock(&self.state);
        let change = decide(&state)?;
        let commit = journal.append(
            &Record::SyncStorage {
                user,
                change: change.clone(),
            },
            Durability::Commands,
        );
        state.apply_storage(&change);
        Ok(commit)
    }

    /// Checks a write as [`UserSync::write_placed`] would, changing nothing: done before uploading
    /// its payloads, so that a write bound to be refused costs no upload.
    pub fn precheck(
        &self,
        write: &Write,
        condition: Condition,
        target: Option<&str>,
        limits: &SyncConfig,
    ) -> Result<(), Refused> {
        lock(&self.state).check(write, condition, target, limits, write.at_ms)
    }

    /// Checks and applies a write at the user's next revision, journaling it under the same
    /// lock (`target`: the record id for a single-record write, whose condition applies to the
    /// record; `None` for a collection write). Its payloads were stored in link `link`, or are
    /// inline for `None`; refused if the user's link changed meanwhile. Returns the new
    /// revision, the commit to wait for before answering (then call [`UserSync::publish`]),
    /// and the names of linked-storage payloads the write made unreachable, with any left by
    /// purges.
    #[allow(clippy::too_many_arguments)]
    pub fn write_placed(
        &self,
        user: UserId,
        write: Write,
        condition: Condition,
        target: Option<&str>,
        limits: &SyncConfig,
        journal: &Journal,
        link: Option<&str>,
    ) -> Result<(u64, Commit, Vec<String>), Refused> {
        let mut state = lock(&self.state);
        if let Some(link) = link
            && state.link.as_ref().is_none_or(|l| l.id != link)
        {
            return Err(ApiError::RemoteLinkChanged.into());
        }
        let (rev, commit, mut garbage) =
            write_locked(&mut state, user, write, condition, target, limits, journal)?;
        if link.is_some() {
            // Only a request that can reach the storage takes what is left to remove there.
            garbage.append(&mut state.garbage);
        }
        Ok((rev, commit, garbage))
    }

    /// Payloads in the linked storage nothing refers to any more (taken: the caller removes
    /// them, and on failure gives them back with [`UserSync::add_garbage`]).
    pub fn take_garbage(&self) -> Vec<String> {
        std::mem::take(&mut lock(&self.state).garbage)
    }

    pub fn add_garbage(&self, keys: Vec<String>) {
        lock(&self.state).garbage.extend(keys);
    }

    /// Up to `limit` records whose payload is kept here (`inline`) or in the linked storage.
    pub fn to_move(&self, inline: bool, limit: usize) -> Vec<ToMove> {
        let state = lock(&self.state);
        let mut found = Vec::new();
        for (name, collection) in &state.collections {
            for (id, item) in &collection.items {
                if found.len() == limit {
                    return found;
                }
                let wanted = if inline {
                    !item.deleted && item.remote.is_none() && !item.payload.is_empty()
                } else {
                    item.remote.is_some()
                };
                if wanted {
                    found.push(ToMove {
                        collection: name.clone(),
                        id: id.clone(),
                        rev: item.rev,
                        payload: item.payload.clone(),
                        remote: item.remote.clone(),
                    });
                }
            }
        }
        found
    }

    /// Where every record's payload is: (kept here, in the linked storage).
    pub fn placement_counts(&self) -> (u64, u64) {
        let state = lock(&self.state);
        let (mut here, mut there) = (0, 0);
        for item in state.collections.values().flat_map(|c| c.items.values()) {
            if item.remote.is_some() {
                there += 1;
            } else if !item.deleted {
                here += 1;
            }
        }
        (here, there)
    }

    pub fn blob(&self, blob: &str) -> Option<Blob> {
        lock(&self.state).blobs.get(blob).cloned()
    }

    pub fn blobs(&self) -> Vec<(String, Blob)> {
        let state = lock(&self.state);
        state
            .blobs
            .iter()
            .map(|(id, b)| (id.clone(), b.clone()))
            .collect()
    }

    /// Creates a blob within the user's blob quota, placed in the storage linked at that
    /// moment (decided under the lock, so never in a link that is going away). Returns it.
    pub fn create_blob(
        &self,
        user: UserId,
        journal: &Journal,
        blob: String,
        size: u64,
        now_ms: u64,
        limits: &crate::config::BlobConfig,
    ) -> Result<(Blob, Commit), ApiError> {
        let mut made = None;
        let commit = self.change(user, journal, |state| {
            if state.blobs.len() >= limits.max_blobs_per_user {
                return Err(ApiError::BlobOverQuota {
                    reason: format!(
                        "this account keeps {} blobs, the most allowed",
                        state.blobs.len()
                    ),
                });
            }
            let total = state.blob_bytes() + size;
            if total > limits.max_user_bytes {
                return Err(ApiError::BlobOverQuota {
                    reason: format!(
                        "this would keep {total} bytes of blobs; the limit is {}",
                        limits.max_user_bytes
                    ),
                });
            }
            let link = state.link.as_ref().map(|l| l.id.clone());
            let meta = Blob::new(size, limits.chunk_bytes, now_ms, link);
            made = Some(meta.clone());
            Ok(StorageChange::BlobCreated { blob, meta })
        })?;
        Ok((made.expect("decided"), commit))
    }

    /// Unlinks `link` keeping nothing of what is stored there (`leave`): under one lock, the
    /// records kept there are purged (each collection's horizon raised to its revision, so a
    /// device that is behind starts over), the blobs there forgotten, and the link removed.
    /// Returns how many records and blobs went.
    pub fn unlink_leaving(
        &self,
        user: UserId,
        journal: &Journal,
        link: &str,
    ) -> Result<(usize, usize, Commit), ApiError> {
        let mut state = lock(&self.state);
        if state.link.as_ref().is_none_or(|l| l.id != link) {
            return Err(ApiError::RemoteLinkChanged);
        }
        let mut purges = Vec::new();
        for (name, collection) in &state.collections {
            let removed: Vec<(String, u64)> = collection
                .items
                .iter()
                .filter(|(_, item)| item.remote.is_some())
                .map(|(id, item)| (id.clone(), item.rev))
                .collect();
            if !removed.is_empty() {
                purges.push(super::Purge {
                    collection: name.clone(),
                    removed,
                    horizon: collection.rev,
                });
            }
        }
        let records = purges.iter().map(|p| p.removed.len()).sum();
        for purge in purges {
            // Journaled in order under this lock: once the last record is durable, all are.
            drop(journal.append(
                &Record::SyncPurged {
                    user,
                    purge: purge.clone(),
                },
                Durability::Commands,
            ));
            drop(state.apply_purge(&purge));
        }
        let there: Vec<String> = state
            .blobs
            .iter()
            .filter(|(_, b)| b.link.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let mut changes: Vec<StorageChange> = there
            .iter()
            .map(|blob| StorageChange::BlobDeleted { blob: blob.clone() })
            .collect();
        changes.push(StorageChange::Unlinked {
            link: link.to_owned(),
        });
        let mut last = None;
        for change in changes {
            last = Some(journal.append(
                &Record::SyncStorage {
                    user,
                    change: change.clone(),
                },
                Durability::Commands,
            ));
            state.apply_storage(&change);
        }
        // Nothing the storage holds is ours to remove any more.
        state.garbage.clear();
        Ok((records, there.len(), last.expect("the unlink itself")))
    }

    /// Unfinished uploads created before `before_ms`.
    pub fn stale_uploads(&self, before_ms: u64) -> Vec<(String, Blob)> {
        let state = lock(&self.state);
        state
            .blobs
            .iter()
            .filter(|(_, b)| b.created_ms < before_ms && b.chunks.iter().any(Option::is_none))
            .map(|(id, b)| (id.clone(), b.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasync::{Put, SyncStore};
    use crate::remote::record_key;

    #[test]
    fn blob_chunks_lengths_and_hash() {
        let mut blob = Blob::new(10, 4, 0, None);
        assert_eq!(blob.chunks.len(), 3);
        assert_eq!(
            (blob.chunk_len(0), blob.chunk_len(1), blob.chunk_len(2)),
            (4, 4, 2)
        );
        assert_eq!(blob.missing(), vec![0, 1, 2]);
        assert_eq!(blob.hash(), None);
        for (i, data) in [&b"abcd"[..], b"efgh", b"ij"].iter().enumerate() {
            blob.chunks[i] = Some(RemoteRef::of(data));
        }
        let mut digests = Vec::new();
        for data in [&b"abcd"[..], b"efgh", b"ij"] {
            digests.extend(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        }
        assert_eq!(blob.hash(), Some(crate::remote::sha256_hex(&digests)));
        assert_eq!(Blob::new(0, 4, 0, None).chunks.len(), 1);
    }

    #[test]
    fn moves_apply_to_the_exact_version_only_and_replay_the_same() {
        let journal = Journal::disabled();
        let user = UserId::random();
        let store = SyncStore::default();
        let sync = store.user(user);
        let limits = SyncConfig::default();
        let write = |payload: &str| Write {
            collection: "c".into(),
            at_ms: 1,
            puts: vec![Put {
                id: "a".into(),
                payload: payload.into(),
                remote: None,
                sortindex: None,
                expires_ms: None,
            }],
            deletes: Vec::new(),
        };
        drop(
            sync.write(user, write("old"), Condition::None, None, &limits, &journal)
                .unwrap(),
        );
        let usage = sync.usage();
        let remote = RemoteRef::of(b"old");
        let moved = |rev| StorageChange::Moved {
            collection: "c".into(),
            moved: vec![Moved {
                id: "a".into(),
                rev,
                payload: String::new(),
                remote: Some(remote.clone()),
            }],
        };
        // A move of a version that is no longer current changes nothing.
        drop(sync.change(user, &journal, |_| Ok(moved(7))).unwrap());
        assert_eq!(sync.placement_counts(), (1, 0));
        drop(sync.change(user, &journal, |_| Ok(moved(1))).unwrap());
        assert_eq!(sync.placement_counts(), (0, 1));
        assert_eq!(sync.usage(), usage);
        let (value, rev, fetch) = sync.record("c", "a", 0).unwrap();
        assert_eq!((value.get("payload"), rev), (None, 1));
        assert_eq!(fetch.unwrap().key(), record_key("c", "a", &remote));
        // An overwrite makes the old payload garbage.
        let (_, _, garbage) = sync
            .write_placed(
                user,
                write("new"),
                Condition::None,
                None,
                &limits,
                &journal,
                None,
            )
            .unwrap();
        assert_eq!(garbage, vec![record_key("c", "a", &remote)]);
        // Replaying the move onto the newer version changes nothing either.
        store.replay_storage(user, &moved(1));
        assert_eq!(sync.placement_counts(), (1, 0));
    }
}
