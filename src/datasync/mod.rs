//! Data sync: per-user collections of opaque records, with revisions, tombstones, quotas and
//! a change feed. The HTTP side is `service::sync`; the encrypting client is [`client`].
//!
//! Invariants:
//! - Each user has one monotonic 64-bit revision. Every write (one record, or one whole
//!   batch) takes the next one, under the user's lock, and is appended to the journal under
//!   that same lock: journal order is revision order for a user, and replay skips any write
//!   whose revision the restored state already has.
//! - A collection's revision is the revision of its latest write; a record's is the write that
//!   last touched it (a put or a delete). Reads in revision order are ordered by
//!   `(revision, id)`, which is unique even though a batch shares one revision.
//! - Payloads are opaque: never parsed, logged or shown except to their owner.
//! - A delete leaves a tombstone (no payload) for `sync.tombstone_ttl_secs`. Purging removes
//!   tombstones past that age and records past their ttl, nothing else; it raises the
//!   collection's `horizon`, below which a `since` read cannot be complete (410).
//! - `records`/`bytes` (the quota counters) are updated in the same critical section as the
//!   write they count, and rebuilt from the records on recovery, so they cannot drift.
//! - The change feed waits on a `watch` of the user's revision, published only once a write
//!   is durable; one publish wakes every parked feed of the user.

pub mod client;
pub mod crypto;
pub mod placement;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::config::SyncConfig;
use crate::error::ApiError;
use crate::ids::UserId;
use crate::remote::link::StoredLink;
use crate::remote::{RemoteRef, record_key};
use crate::service::field_error;
use crate::store::record::Record;
use crate::store::{Commit, Durability, Journal};

/// Longest collection name.
pub const MAX_COLLECTION_LEN: usize = 32;
/// Longest record id.
pub const MAX_ID_LEN: usize = 64;
/// Most records one read returns.
pub const MAX_READ_LIMIT: usize = 1000;

/// Every user's sync data.
#[derive(Debug, Default)]
pub struct SyncStore {
    /// User → their collections. An entry appears on a user's first write or feed.
    users: DashMap<UserId, Arc<UserSync>>,
    /// Change feeds parked right now, on the whole server (bounded by `sync.max_feeds`).
    pub parked_feeds: AtomicUsize,
}

/// One user's sync data and change-feed signal.
#[derive(Debug)]
pub struct UserSync {
    /// Collections and counters. Held only for in-memory work, never across an `.await`.
    state: std::sync::Mutex<UserState>,
    /// The user's latest durable revision; parked change feeds wait for it to move.
    changed: watch::Sender<u64>,
    /// This user's change feeds parked right now (bounded by `sync.max_feeds_per_user`).
    feeds: AtomicUsize,
}

/// What survives a restart of one user's sync data (snapshot form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// The latest revision of any write of this user.
    pub rev: u64,
    pub collections: BTreeMap<String, Collection>,
    /// The storage the user linked, if any: new payloads go there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<StoredLink>,
    /// Blob id → its chunks (`placement`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub blobs: BTreeMap<String, placement::Blob>,
    /// Live and expired-but-unpurged records (quota), derived.
    #[serde(skip)]
    records: u64,
    /// Bytes of ids and payloads of every kept item, tombstones included (quota), derived.
    #[serde(skip)]
    bytes: u64,
    /// Names of payloads in the linked storage that nothing refers to any more, removed by
    /// the next request that carries the storage key (a purge runs without one). Not kept
    /// across a restart: see docs/storage.md.
    #[serde(skip)]
    garbage: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Collection {
    /// The revision of the latest write to this collection.
    pub rev: u64,
    /// Tombstones at or below this revision may have been purged.
    #[serde(default)]
    pub horizon: u64,
    pub items: BTreeMap<String, Item>,
    /// `(rev, id)` of every item: the order of `since` reads. Derived.
    #[serde(skip)]
    order: BTreeSet<(u64, String)>,
}

/// A record, or the tombstone of a deleted one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub rev: u64,
    /// Opaque; empty for a tombstone and for a payload kept in the linked storage.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub payload: String,
    /// Where the payload is, when it is in the user's linked storage rather than here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i64>,
    /// When a record with a ttl stops being served (milliseconds since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// When the write that made this item happened (for the tombstone's age).
    pub at_ms: u64,
}

/// One record of a write, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Put {
    pub id: String,
    /// Empty when the payload was stored in the linked storage (`remote`).
    #[serde(default)]
    pub payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sortindex: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
}

/// A write as journaled: everything it did, at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub collection: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub puts: Vec<Put>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deletes: Vec<String>,
}

/// A precondition on a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Condition {
    #[default]
    None,
    /// `If-Match: "<rev>"`: the target's revision must still be this.
    Match(u64),
    /// `If-None-Match: *`: the record must not exist (create only).
    Absent,
}

/// A write refused before anything changed.
#[derive(Debug)]
pub enum Refused {
    Api(ApiError),
    /// Per-record reasons (keyed by id, or `#<index>` when the id itself is bad).
    Invalid(Map<String, Value>),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

/// A payload a read must fetch from the linked storage and put into `records[index]`.
#[derive(Debug, Clone)]
pub struct Fetch {
    pub index: usize,
    pub collection: String,
    pub id: String,
    pub rev: u64,
    pub expected: RemoteRef,
}

impl Fetch {
    /// Its name on the storage.
    pub fn key(&self) -> String {
        record_key(&self.collection, &self.id, &self.expected)
    }
}

/// One page of a `since` read.
#[derive(Debug)]
pub struct Page {
    /// Records without the payloads listed in `fetch`.
    pub records: Vec<Value>,
    /// Payloads to fetch from the linked storage.
    pub fetch: Vec<Fetch>,
    /// Cursor for the next page, when there is more.
    pub next: Option<String>,
    /// The collection's revision (0 for a collection never written).
    pub rev: u64,
}

/// A purge of one collection, as journaled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Purge {
    pub collection: String,
    /// `(id, rev)` of every removed item: replay removes only that exact version.
    pub removed: Vec<(String, u64)>,
    pub horizon: u64,
}

/// Locks a user's state, ignoring poisoning: every critical section either checks before it
/// changes anything or applies a change that cannot fail half-way, so a panic elsewhere is no
/// reason to refuse the user's data for the rest of the run. (Plain `std` locks, not the
/// `crate::sync` facade: this state is not part of the loom-checked park/wake primitive.)
fn lock(mutex: &std::sync::Mutex<UserState>) -> std::sync::MutexGuard<'_, UserState> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === Validation (pure) ===

/// `[A-Za-z0-9_.-]{1,32}`.
pub fn check_collection(name: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_COLLECTION_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(field_error(
            "collection",
            "must be 1 to 32 characters from A-Z a-z 0-9 _ . -",
        ))
    }
}

/// 1 to 64 URL-safe (RFC 3986 unreserved) characters, not `.` or `..`.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'~'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err("id: must be 1 to 64 characters from A-Z a-z 0-9 _ . - ~ (not . or ..)".to_owned())
    }
}

fn encode_cursor(rev: u64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{rev}:{id}"))
}

/// Parses a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<(u64, String), ApiError> {
    let bad = || field_error("offset", "is not a cursor this server gave out");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (rev, id) = raw.split_once(':').ok_or_else(bad)?;
    let rev = rev.parse().map_err(|_| bad())?;
    check_id(id).map_err(|_| bad())?;
    Ok((rev, id.to_owned()))
}

// === Put ===

impl Put {
    /// What the record will count against the byte quota.
    fn size(&self) -> u64 {
        self.id.len() as u64
            + self
                .remote
                .as_ref()
                .map_or(self.payload.len() as u64, |r| r.size)
    }
}

// === Item ===

impl Item {
    fn live(&self, now_ms: u64) -> bool {
        !self.deleted && self.expires_ms.is_none_or(|at| at > now_ms)
    }

    /// The payload's length, wherever it is kept.
    fn payload_len(&self) -> u64 {
        self.remote
            .as_ref()
            .map_or(self.payload.len() as u64, |r| r.size)
    }

    /// What the item counts against the byte quota: its id and its payload.
    fn size(&self, id: &str) -> u64 {
        id.len() as u64 + self.payload_len()
    }

    /// The wire form: a record, or `{id, rev, deleted: true}`. A payload kept in the linked
    /// storage is left out, for the caller to fetch (see [`Fetch`]).
    fn to_json(&self, id: &str) -> Value {
        if self.deleted {
            return json!({ "id": id, "rev": self.rev, "deleted": true });
        }
        let mut value = json!({ "id": id, "rev": self.rev });
        if self.remote.is_none() {
            value["payload"] = json!(self.payload);
        }
        if let Some(sortindex) = self.sortindex {
            value["sortindex"] = json!(sortindex);
        }
        value
    }
}

// === UserState ===

impl UserState {
    /// Rebuilds the derived fields (read order, quota counters) after loading.
    fn rebuild(&mut self) {
        let (mut records, mut bytes) = (0, 0);
        for collection in self.collections.values_mut() {
            collection.order = collection
                .items
                .iter()
                .map(|(id, item)| (item.rev, id.clone()))
                .collect();
            for (id, item) in &collection.items {
                bytes += item.size(id);
                records += u64::from(!item.deleted);
            }
        }
        self.records = records;
        self.bytes = bytes;
    }

    /// Checks a write against its condition, the quota and the records it deletes, and
    /// returns the quota counters it would leave. Changes nothing.
    fn check(
        &self,
        write: &Write,
        condition: Condition,
        target: Option<&str>,
        limits: &SyncConfig,
        now_ms: u64,
    ) -> Result<(), Refused> {
        let collection = self.collections.get(&write.collection);
        let item = |id: &str| collection.and_then(|c| c.items.get(id));
        match (condition, target) {
            (Condition::None, _) => {}
            (Condition::Match(rev), Some(id)) => {
                let current = item(id).map_or(0, |i| i.rev);
                if current != rev {
                    return Err(ApiError::SyncRevisionChanged { current }.into());
                }
            }
            (Condition::Match(rev), None) => {
                let current = collection.map_or(0, |c| c.rev);
                if current != rev {
                    return Err(ApiError::SyncRevisionChanged { current }.into());
                }
            }
            (Condition::Absent, Some(id)) => {
                if let Some(existing) = item(id).filter(|i| i.live(now_ms)) {
                    return Err(ApiError::SyncRecordExists {
                        current: existing.rev,
                    }
                    .into());
                }
            }
            (Condition::Absent, None) => {
                return Err(field_error(
                    "If-None-Match",
                    "only applies to one record, not to a collection write",
                )
                .into());
            }
        }
        let mut missing = Map::new();
        for id in &write.deletes {
            if !item(id).is_some_and(|i| i.live(now_ms)) {
                missing.insert(id.clone(), json!("no such record"));
            }
        }
        if !missing.is_empty() {
            if target.is_some() {
                return Err(ApiError::NotFound.into());
            }
            return Err(Refused::Invalid(missing));
        }
        let (mut records, mut bytes) = (self.records, self.bytes);
        for put in &write.puts {
            if let Some(old) = item(&put.id) {
                bytes -= old.size(&put.id);
                records -= u64::from(!old.deleted);
            }
            bytes += put.size();
            records += 1;
        }
        for id in &write.deletes {
            if let Some(old) = item(id) {
                bytes -= old.payload_len();
                records -= u64::from(!old.deleted);
            }
        }
        // A write that frees space is always allowed, so a user over quota can clean up.
        let grows = records > self.records || bytes > self.bytes;
        if grows && records > limits.max_user_records {
            return Err(ApiError::SyncOverQuota {
                reason: format!(
                    "this would keep {records} records; the limit is {}",
                    limits.max_user_records
                ),
            }
            .into());
        }
        if grows && bytes > limits.max_user_bytes {
            return Err(ApiError::SyncOverQuota {
                reason: format!(
                    "this would keep {bytes} bytes; the limit is {}",
                    limits.max_user_bytes
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Applies a write at `rev`: live, after [`UserState::check`], or in replay. Returns the
    /// names of payloads in the linked storage that nothing refers to any more.
    fn apply(&mut self, rev: u64, write: &Write) -> Vec<String> {
        let collection = self
            .collections
            .entry(write.collection.clone())
            .or_default();
        let mut garbage = Vec::new();
        let mut replace = |id: &str, new: Item, state: (&mut u64, &mut u64)| {
            let (records, bytes) = state;
            if let Some(old) = collection.items.remove(id) {
                collection.order.remove(&(old.rev, id.to_owned()));
                *bytes -= old.size(id);
                *records -= u64::from(!old.deleted);
                // Content-addressed: the same bytes rewritten keep the same name.
                if let Some(gone) = old.remote.filter(|r| new.remote.as_ref() != Some(r)) {
                    garbage.push(record_key(&write.collection, id, &gone));
                }
            }
            *bytes += new.size(id);
            *records += u64::from(!new.deleted);
            collection.order.insert((new.rev, id.to_owned()));
            collection.items.insert(id.to_owned(), new);
        };
        for put in &write.puts {
            let item = Item {
                rev,
                payload: put.payload.clone(),
                remote: put.remote.clone(),
                sortindex: put.sortindex,
                expires_ms: put.expires_ms,
                deleted: false,
                at_ms: write.at_ms,
            };
            replace(&put.id, item, (&mut self.records, &mut self.bytes));
        }
        for id in &write.deletes {
            let tombstone = Item {
                rev,
                payload: String::new(),
                remote: None,
                sortindex: None,
                expires_ms: None,
                deleted: true,
                at_ms: write.at_ms,
            };
            replace(id, tombstone, (&mut self.records, &mut self.bytes));
        }
        collection.rev = rev;
        self.rev = rev;
        garbage
    }

    /// Removes old tombstones and expired records; what was removed, per collection.
    fn purge(&mut self, now_ms: u64, tombstone_ttl_ms: u64) -> Vec<Purge> {
        let mut purges = Vec::new();
        for (name, collection) in &self.collections {
            let mut purge = Purge {
                collection: name.clone(),
                removed: Vec::new(),
                horizon: collection.horizon,
            };
            for (id, item) in &collection.items {
                let old_tombstone =
                    item.deleted && item.at_ms.saturating_add(tombstone_ttl_ms) <= now_ms;
                let expired = !item.deleted && item.expires_ms.is_some_and(|at| at <= now_ms);
                if old_tombstone {
                    purge.horizon = purge.horizon.max(item.rev);
                }
                if old_tombstone || expired {
                    purge.removed.push((id.clone(), item.rev));
                }
            }
            if !purge.removed.is_empty() {
                purges.push(purge);
            }
        }
        for purge in &purges {
            let garbage = self.apply_purge(purge);
            self.garbage.extend(garbage);
        }
        purges
    }

    /// Removes the exact versions a purge names; returns the names of their payloads in the
    /// linked storage.
    fn apply_purge(&mut self, purge: &Purge) -> Vec<String> {
        let mut garbage = Vec::new();
        let Some(collection) = self.collections.get_mut(&purge.collection) else {
            return garbage;
        };
        for (id, rev) in &purge.removed {
            if collection.items.get(id).is_some_and(|i| i.rev == *rev)
                && let Some(old) = collection.items.remove(id)
            {
                collection.order.remove(&(old.rev, id.clone()));
                self.bytes -= old.size(id);
                self.records -= u64::from(!old.deleted);
                if let Some(remote) = old.remote {
                    garbage.push(record_key(&purge.collection, id, &remote));
                }
            }
        }
        collection.horizon = collection.horizon.max(purge.horizon);
        garbage
    }
}

// === SyncStore ===

impl SyncStore {
    /// The user's sync data, created empty if they have none yet.
    pub fn user(&self, user: UserId) -> Arc<UserSync> {
        if let Some(existing) = self.users.get(&user) {
            return existing.clone();
        }
        self.users
            .entry(user)
            .or_insert_with(|| Arc::new(UserSync::new(UserState::default())))
            .clone()
    }

    /// The user's sync data, if they have any.
    pub fn get(&self, user: UserId) -> Option<Arc<UserSync>> {
        self.users.get(&user).map(|u| u.clone())
    }

    /// Every user's data, for snapshots and purges.
    pub fn users(&self) -> Vec<(UserId, Arc<UserSync>)> {
        self.users
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect()
    }

    /// Loads one piece of a user's state from a snapshot (see [`UserSync::image`]), merging
    /// it with the pieces before it.
    pub fn restore(&self, user: UserId, piece: UserState) {
        let sync = self.user(user);
        let mut state = lock(&sync.state);
        state.rev = state.rev.max(piece.rev);
        if piece.link.is_some() {
            state.link = piece.link;
        }
        state.blobs.extend(piece.blobs);
        for (name, collection) in piece.collections {
            let into = state.collections.entry(name).or_default();
            into.rev = into.rev.max(collection.rev);
            into.horizon = into.horizon.max(collection.horizon);
            into.items.extend(collection.items);
        }
        state.rebuild();
        sync.changed.send_replace(state.rev);
    }

    /// Replays a journaled write; skipped if the state already has its revision.
    pub fn replay_write(&self, user: UserId, rev: u64, write: &Write) {
        let sync = self.user(user);
        let mut state = lock(&sync.state);
        if rev > state.rev {
            // What a replayed write replaced in the linked storage was removed when it ran.
            drop(state.apply(rev, write));
            sync.changed.send_replace(rev);
        }
    }

    /// Replays a journaled purge (idempotent: it names the exact versions it removed).
    pub fn replay_purge(&self, user: UserId, purge: &Purge) {
        if let Some(sync) = self.get(user) {
            drop(lock(&sync.state).apply_purge(purge));
        }
    }

    /// Purges every user's old tombstones and expired records, journaling what went.
    pub fn purge_all(&self, now_ms: u64, limits: &SyncConfig, journal: &Journal) -> usize {
        let ttl_ms = limits.tombstone_ttl_secs.saturating_mul(1000);
        let mut removed = 0;
        for (user, sync) in self.users() {
            let mut state = lock(&sync.state);
            for purge in state.purge(now_ms, ttl_ms) {
                removed += purge.removed.len();
                // Not waited for: a purge lost to a crash is simply done again.
                drop(journal.append(&Record::SyncPurged { user, purge }, Durability::Commands));
            }
        }
        removed
    }
}

// === UserSync ===

impl UserSync {
    fn new(state: UserState) -> UserSync {
        UserSync {
            changed: watch::channel(state.rev).0,
            state: std::sync::Mutex::new(state),
            feeds: AtomicUsize::new(0),
        }
    }

    /// A copy of the whole state, for a snapshot, in pieces of at most about `piece_bytes`
    /// of ids and payloads each: a snapshot frame must stay well under the 16 MiB a frame
    /// may hold, and one user may keep far more than that. Every collection appears in at
    /// least one piece, so an empty one keeps its revision.
    pub fn image(&self, piece_bytes: usize) -> Vec<UserState> {
        let state = lock(&self.state);
        let empty = || UserState {
            rev: state.rev,
            ..UserState::default()
        };
        let mut pieces = vec![UserState {
            link: state.link.clone(),
            blobs: state.blobs.clone(),
            ..empty()
        }];
        let mut size = 0;
        for (name, collection) in &state.collections {
            let header = || Collection {
                rev: collection.rev,
                horizon: collection.horizon,
                ..Collection::default()
            };
            let mut current = header();
            for (id, item) in &collection.items {
                let item_size = id.len() + item.payload.len() + 64;
                if size + item_size > piece_bytes && size > 0 {
                    let last = pieces.last_mut().expect("never empty");
                    last.collections
                        .insert(name.clone(), std::mem::replace(&mut current, header()));
                    pieces.push(empty());
                    size = 0;
                }
                size += item_size;
                current.items.insert(id.clone(), item.clone());
            }
            let last = pieces.last_mut().expect("never empty");
            last.collections.insert(name.clone(), current);
        }
        pieces
    }

    /// Checks and applies a write at the user's next revision, journaling it under the same
    /// lock. `target` is the record id for a single-record write (its condition applies to
    /// the record), `None` for a collection write. Returns the new revision and the commit to
    /// wait for before answering; then call [`UserSync::publish`]. The server writes through
    /// [`UserSync::write_placed`] (which also knows the user's linked storage); this is its
    /// inline-only form, for the unit tests.
    #[cfg(test)]
    pub fn write(
        &self,
        user: UserId,
        write: Write,
        condition: Condition,
        target: Option<&str>,
        limits: &SyncConfig,
        journal: &Journal,
    ) -> Result<(u64, Commit), Refused> {
        let mut state = lock(&self.state);
        write_locked(&mut state, user, write, condition, target, limits, journal)
            .map(|(rev, commit, _)| (rev, commit))
    }

    /// Deletes every live record of a collection, at one revision (404 if there are none).
    pub fn delete_collection(
        &self,
        user: UserId,
        collection: &str,
        at_ms: u64,
        condition: Condition,
        limits: &SyncConfig,
        journal: &Journal,
    ) -> Result<(u64, Commit), Refused> {
        let mut state = lock(&self.state);
        // Listed under the same lock as the write, so no record slips in between.
        let deletes: Vec<String> = state
            .collections
            .get(collection)
            .map(|c| {
                c.items
                    .iter()
                    .filter(|(_, item)| item.live(at_ms))
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default();
        if deletes.is_empty() {
            return Err(ApiError::NotFound.into());
        }
        let write = Write {
            collection: collection.to_owned(),
            at_ms,
            puts: Vec::new(),
            deletes,
        };
        let (rev, commit, garbage) =
            write_locked(&mut state, user, write, condition, None, limits, journal)?;
        state.garbage.extend(garbage);
        Ok((rev, commit))
    }

    /// Wakes every parked change feed of the user: `rev` is durable.
    pub fn publish(&self, rev: u64) {
        // Concurrent writes may finish their commits out of order; the revision never goes back.
        self.changed.send_if_modified(|current| {
            let newer = rev > *current;
            if newer {
                *current = rev;
            }
            newer
        });
    }

    /// The user's revision.
    pub fn rev(&self) -> u64 {
        lock(&self.state).rev
    }

    /// Collection → revision, for those past `since`.
    pub fn collections_since(&self, since: u64) -> Map<String, Value> {
        lock(&self.state)
            .collections
            .iter()
            .filter(|(_, c)| c.rev > since)
            .map(|(name, c)| (name.clone(), json!(c.rev)))
            .collect()
    }

    /// A collection's revision (0 if it was never written).
    pub fn collection_rev(&self, collection: &str) -> u64 {
        lock(&self.state)
            .collections
            .get(collection)
            .map_or(0, |c| c.rev)
    }

    /// Live records and bytes kept (the quota counters).
    pub fn usage(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.records, state.bytes)
    }

    /// One live record: its wire form, its revision, and its payload to fetch when that is
    /// in the linked storage.
    pub fn record(
        &self,
        collection: &str,
        id: &str,
        now_ms: u64,
    ) -> Option<(Value, u64, Option<Fetch>)> {
        let state = lock(&self.state);
        let item = state.collections.get(collection)?.items.get(id)?;
        let fetch = item.remote.as_ref().map(|expected| Fetch {
            index: 0,
            collection: collection.to_owned(),
            id: id.to_owned(),
            rev: item.rev,
            expected: expected.clone(),
        });
        item.live(now_ms)
            .then(|| (item.to_json(id), item.rev, fetch))
    }

    /// The revision of a record's current version, if it has one (live or not).
    pub fn item_rev(&self, collection: &str, id: &str) -> Option<u64> {
        let state = lock(&self.state);
        Some(state.collections.get(collection)?.items.get(id)?.rev)
    }

    /// Changes after `since` (or after `cursor`, which wins), in revision order: records,
    /// and tombstones. 410 if tombstones after `since` may have been purged.
    pub fn read(
        &self,
        collection: &str,
        since: u64,
        cursor: Option<(u64, String)>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Page, ApiError> {
        let state = lock(&self.state);
        let Some(c) = state.collections.get(collection) else {
            return Ok(Page {
                records: Vec::new(),
                fetch: Vec::new(),
                next: None,
                rev: 0,
            });
        };
        if since > 0 && since < c.horizon {
            return Err(ApiError::SyncHistoryPurged { horizon: c.horizon });
        }
        let start = match cursor {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Included((since + 1, String::new())),
        };
        let mut records = Vec::new();
        let mut fetch = Vec::new();
        let mut next = None;
        for (rev, id) in c.order.range((start, std::ops::Bound::Unbounded)) {
            let item = &c.items[id];
            // Expired records vanish without a tombstone (their writer chose the ttl); a
            // full read (since=0) lists only what is live.
            if (!item.deleted && !item.live(now_ms)) || (since == 0 && item.deleted) {
                continue;
            }
            if records.len() == limit {
                next = Some(encode_cursor(*rev, id));
                break;
            }
            if let Some(expected) = item.remote.as_ref().filter(|_| !item.deleted) {
                fetch.push(Fetch {
                    index: records.len(),
                    collection: collection.to_owned(),
                    id: id.clone(),
                    rev: *rev,
                    expected: expected.clone(),
                });
            }
            records.push(item.to_json(id));
        }
        // The cursor points at the last record returned, so the next page starts after it.
        if next.is_some()
            && let Some(last) = records.last()
        {
            let rev = last["rev"].as_u64().unwrap_or(0);
            let id = last["id"].as_str().unwrap_or_default();
            next = Some(encode_cursor(rev, id));
        }
        Ok(Page {
            records,
            fetch,
            next,
            rev: c.rev,
        })
    }

    /// A receiver of the user's durable revision, for a change feed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Counts one parked feed of this user and of the server, or refuses past the bounds.
    pub fn park_feed<'a>(
        &'a self,
        store: &'a SyncStore,
        limits: &SyncConfig,
    ) -> Result<FeedGuard<'a>, ApiError> {
        if self.feeds.fetch_add(1, Ordering::AcqRel) >= limits.max_feeds_per_user {
            self.feeds.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::SyncTooManyFeeds {
                max: limits.max_feeds_per_user,
            });
        }
        if store.parked_feeds.fetch_add(1, Ordering::AcqRel) >= limits.max_feeds {
            store.parked_feeds.fetch_sub(1, Ordering::AcqRel);
            self.feeds.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::SyncFeedsFull);
        }
        Ok(FeedGuard { user: self, store })
    }
}

/// Checks a write, then journals and applies it at the user's next revision. Also returns
/// the names of payloads in the linked storage the write made unreachable.
fn write_locked(
    state: &mut UserState,
    user: UserId,
    write: Write,
    condition: Condition,
    target: Option<&str>,
    limits: &SyncConfig,
    journal: &Journal,
) -> Result<(u64, Commit, Vec<String>), Refused> {
    state.check(&write, condition, target, limits, write.at_ms)?;
    let rev = state.rev + 1;
    let commit = journal.append(
        &Record::SyncWrite {
            user,
            rev,
            write: write.clone(),
        },
        Durability::Commands,
    );
    let garbage = state.apply(rev, &write);
    Ok((rev, commit, garbage))
}

/// One parked change feed, counted for as long as it lives.
#[derive(Debug)]
pub struct FeedGuard<'a> {
    user: &'a UserSync,
    store: &'a SyncStore,
}

impl Drop for FeedGuard<'_> {
    fn drop(&mut self) {
        self.user.feeds.fetch_sub(1, Ordering::AcqRel);
        self.store.parked_feeds.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SyncConfig {
        SyncConfig {
            max_user_records: 3,
            ..SyncConfig::default()
        }
    }

    fn put(collection: &str, ids: &[&str], at_ms: u64) -> Write {
        Write {
            collection: collection.into(),
            at_ms,
            puts: ids
                .iter()
                .map(|id| Put {
                    id: (*id).into(),
                    payload: format!("p-{id}"),
                    remote: None,
                    sortindex: None,
                    expires_ms: None,
                })
                .collect(),
            deletes: Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_image_in_pieces_restores_to_the_same_state() {
        let journal = Journal::disabled();
        let user = UserId::random();
        let sync = UserSync::new(UserState::default());
        let limits = SyncConfig::default();
        let ids: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        for collection in ["a", "b"] {
            let write = put(collection, &refs, 1);
            drop(sync.write(user, write, Condition::None, None, &limits, &journal));
        }
        let mut delete = put("empty", &["x"], 2);
        drop(sync.write(
            user,
            delete.clone(),
            Condition::None,
            None,
            &limits,
            &journal,
        ));
        delete.puts.clear();
        delete.deletes.push("x".into());
        drop(sync.write(user, delete, Condition::None, None, &limits, &journal));
        lock(&sync.state).purge(u64::MAX, 0);

        let pieces = sync.image(500);
        assert!(pieces.len() > 5, "{} pieces", pieces.len());
        let store = SyncStore::default();
        for piece in pieces {
            store.restore(user, piece);
        }
        let restored = store.get(user).unwrap();
        let (original, copy) = (sync.image(usize::MAX), restored.image(usize::MAX));
        assert_eq!(original, copy);
        assert_eq!(copy[0].collections["empty"].rev, 4);
        assert_eq!(restored.usage(), sync.usage());
        assert_eq!(*restored.subscribe().borrow(), 4);
    }

    #[test]
    fn names_and_ids() {
        assert!(check_collection("bookmarks.v2-x_y").is_ok());
        assert!(check_collection("").is_err());
        assert!(check_collection(&"a".repeat(33)).is_err());
        assert!(check_collection("a/b").is_err());
        assert!(check_id("abc~_.-9").is_ok());
        assert!(check_id("..").is_err());
        assert!(check_id(&"a".repeat(65)).is_err());
        assert!(check_id("a b").is_err());
        let cursor = encode_cursor(7, "x-1");
        assert_eq!(decode_cursor(&cursor).unwrap(), (7, "x-1".into()));
        assert!(decode_cursor("!!").is_err());
    }

    #[test]
    fn writes_reads_quota_and_purge() {
        let journal = Journal::disabled();
        let user = UserId::random();
        let sync = UserSync::new(UserState::default());
        let limits = limits();
        let (rev, _) = sync
            .write(
                user,
                put("c", &["a", "b"], 10),
                Condition::None,
                None,
                &limits,
                &journal,
            )
            .unwrap();
        assert_eq!(rev, 1);
        let (rev, _) = sync
            .write(
                user,
                put("c", &["a"], 20),
                Condition::Match(1),
                None,
                &limits,
                &journal,
            )
            .unwrap();
        assert_eq!(rev, 2);
        // Over the record quota (3): a fourth and fifth record are refused.
        let refused = sync.write(
            user,
            put("c", &["x", "y"], 30),
            Condition::None,
            None,
            &limits,
            &journal,
        );
        assert!(matches!(
            refused,
            Err(Refused::Api(ApiError::SyncOverQuota { .. }))
        ));
        let page = sync.read("c", 1, None, 10, 0).unwrap();
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0]["id"], "a");
        let mut delete = put("c", &[], 40);
        delete.deletes.push("b".into());
        let (rev, _) = sync
            .write(user, delete, Condition::None, None, &limits, &journal)
            .unwrap();
        assert_eq!(rev, 3);
        assert_eq!(sync.usage().0, 1);
        let page = sync.read("c", 2, None, 10, 0).unwrap();
        assert_eq!(
            page.records,
            vec![json!({"id": "b", "rev": 3, "deleted": true})]
        );
        // The tombstone goes after its ttl, and only it: the live record stays.
        let purged = lock(&sync.state).purge(40 + 1000, 1000);
        assert_eq!(purged[0].removed, vec![("b".to_owned(), 3)]);
        assert_eq!(sync.read("c", 0, None, 10, 0).unwrap().records.len(), 1);
        assert!(matches!(
            sync.read("c", 2, None, 10, 0),
            Err(ApiError::SyncHistoryPurged { horizon: 3 })
        ));
    }
}
