//! Durability: the data directory, its journal and snapshots, and recovery.
//!
//! Files in the data directory:
//!
//! ```text
//! LOCK                       held (flock) by the process using the directory
//! journal-<generation>.wmfj  changes, appended before each answer (see `journal`)
//! snapshot-<generation>.wmfs the whole state as of the start of journal <generation>
//! admin.sock                 the operator's socket (`wheresmyfox user add`)
//! ```
//!
//! A snapshot is taken while requests keep flowing: the journal is first rotated to a new
//! generation, then every account, token and device is copied one at a time (each under its
//! own short lock) into the new snapshot. A change made while the copy runs lands in the new
//! journal and may or may not be in the copy; device records carry versions and account
//! records are idempotent, so replaying the new journal over the snapshot gives the same state
//! either way. The last two snapshots are kept, with the journals since the older one, so
//! that a damaged newest snapshot can be set aside without losing anything.
//!
//! Recovery loads the newest snapshot and replays the journals from its generation on. A
//! record cut short at the very end of the last journal (a crash mid-write) is cut off and
//! reported; damage anywhere else stops start-up with a message naming the file, the offset
//! and the way out (`wheresmyfox check-data`, `wheresmyfox repair`).

pub mod frame;
pub mod journal;
pub mod record;
pub mod seal;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{info, warn};

pub use journal::{Commit, Durability, Journal};

use crate::accounts::Accounts;
use crate::config::{Config, DevicesConfig};
use crate::datasync::SyncStore;
use crate::registry::Registry;
use record::{DeviceChange, Record, SnapshotEntry};
use seal::Sealer;

/// Why the data directory cannot be used as it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is in use by another wheresmyfox process (it holds {lock}); stop it first, or use another --data-dir"
    )]
    Locked { path: PathBuf, lock: PathBuf },
    #[error(
        "snapshot {path} is damaged ({reason}). Run `wheresmyfox repair --data-dir {dir}` to set it aside and \
         recover from the previous snapshot and the journals after it{fallback}"
    )]
    DamagedSnapshot {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
        fallback: String,
    },
    #[error(
        "journal {path} is damaged at byte {offset} ({reason}); {after} bytes after it cannot be read. Run \
         `wheresmyfox repair --data-dir {dir}` to cut it there (the unreadable part is kept in a .damaged file); \
         the records after that point are lost"
    )]
    DamagedJournal {
        path: PathBuf,
        dir: PathBuf,
        offset: usize,
        after: usize,
        reason: String,
    },
    #[error("{0}")]
    Seal(#[from] seal::SealError),
}

/// What recovery found, for the log and `check-data`.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    pub snapshot: Option<PathBuf>,
    pub journals: Vec<PathBuf>,
    pub records: u64,
    /// Bytes cut from a torn last record, if any.
    pub torn_bytes: u64,
    pub generation: u64,
    /// Where the records of the last journal end: the file may go on with zeros prepared
    /// ahead of the writer.
    pub journal_end: u64,
}

/// The open data directory: its lock and the current journal generation.
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    /// Held for the life of the process; the OS releases it if we die.
    _lock: File,
    pub generation: std::sync::atomic::AtomicU64,
}

// === File helpers ===

/// Opens (creating if asked) a file readable by its owner only.
pub fn open_private(path: &Path, create: bool) -> std::io::Result<File> {
    open_owner_only(path, create, true)
}

/// Opens a file for reading and writing, by its owner only; `create` makes a new one (never
/// an existing one), `append` sends every write to its end.
pub(crate) fn open_owner_only(path: &Path, create: bool, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = OpenOptions::new();
    options.read(true).write(true).append(append).mode(0o600);
    if create {
        options.create_new(true);
    }
    options.open(path)
}

/// Makes a rename or creation in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

fn journal_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal-{generation:016}.wmfj"))
}

fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot-{generation:016}.wmfs"))
}

/// Generations of the files named `<prefix>-<generation><suffix>`, ascending.
fn generations(dir: &Path, prefix: &str, suffix: &str) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_prefix(prefix)
            .and_then(|n| n.strip_suffix(suffix))
            && let Ok(generation) = number.parse()
        {
            found.push(generation);
        }
    }
    found.sort_unstable();
    Ok(found)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Truncates a file at `offset`, durably.
fn cut_at(path: &Path, offset: usize) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    file.set_len(offset as u64).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

fn read_all(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io(path))?;
    Ok(bytes)
}

// === DataDir ===

impl DataDir {
    /// Creates the directory (mode 0700) if needed and takes its lock.
    pub fn lock(path: &Path) -> Result<DataDir, StoreError> {
        use std::os::unix::fs::DirBuilderExt;
        use std::os::unix::fs::PermissionsExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io(path))?;
        let mode = std::fs::metadata(path)
            .map_err(io(path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            // Password hashes, token digests and device secrets live here.
            warn!(dir = %path.display(), "the data directory was open to other users; setting it to 0700");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
                .map_err(io(path))?;
        }
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                path: path.to_owned(),
                lock: lock_path,
            });
        }
        for stale in std::fs::read_dir(path).map_err(io(path))? {
            let stale = stale.map_err(io(path))?.path();
            if stale.extension().is_some_and(|e| e == "tmp") {
                let _ = std::fs::remove_file(&stale);
            }
        }
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
            generation: Default::default(),
        })
    }
}

// === Recovery ===

/// Loads the newest snapshot and replays the journals after it into `accounts` and
/// `registry`, cutting a torn last record. Returns the journal to append to.
pub fn recover(
    dir: &DataDir,
    config: &Config,
    accounts: &Accounts,
    registry: &Registry,
    sync: &SyncStore,
    sealer: &Sealer,
) -> Result<(Journal, Recovered), StoreError> {
    let state = State {
        accounts,
        registry,
        sync,
    };
    let mut recovered = recover_state(&dir.path, config, &state, sealer, true)?;
    let last = generations(&dir.path, "journal-", ".wmfj").map_err(io(&dir.path))?;
    let (file, path, len) = match last.last().filter(|g| **g >= recovered.generation) {
        Some(&generation) => {
            let path = journal_path(&dir.path, generation);
            let file = journal::open_file(&path, false).map_err(io(&path))?;
            recovered.generation = generation;
            (file, path, recovered.journal_end)
        }
        None => {
            let generation = recovered.generation.max(1);
            let path = journal_path(&dir.path, generation);
            let file = journal::create_file(&path, generation).map_err(io(&path))?;
            recovered.generation = generation;
            (file, path, frame::HEADER_LEN as u64)
        }
    };
    dir.generation
        .store(recovered.generation, std::sync::atomic::Ordering::Relaxed);
    let len = if registry.is_empty() {
        len
    } else {
        mark_start(&file, &path, len, &state, sealer, config)?
    };
    Ok((Journal::start(file, path, len, &config.storage), recovered))
}

/// Writes and flushes a [`Record::Started`] at `at` (the end of the recovered records), and
/// applies it; returns the new end. Flushed whatever `storage.fsync` says: a command number
/// sent in this run must never be issued again, even after a crash a moment later.
fn mark_start(
    file: &std::fs::File,
    path: &Path,
    at: u64,
    state: &State<'_>,
    sealer: &Sealer,
    config: &Config,
) -> Result<u64, StoreError> {
    use std::os::unix::fs::FileExt;
    let record = Record::Started {
        at_ms: crate::clock::now_ms(),
        seq_skip: crate::device::SEQ_SKIP,
    };
    let bytes = record.framed().expect("a start record always encodes");
    file.write_all_at(&bytes, at)
        .and_then(|()| file.sync_data())
        .map_err(io(path))?;
    replay(&record, state, sealer, config)?;
    Ok(at + bytes.len() as u64)
}

/// What recovery fills in.
struct State<'a> {
    accounts: &'a Accounts,
    registry: &'a Registry,
    sync: &'a SyncStore,
}

/// The read side of recovery, shared with `check-data` (which passes `repair_torn: false`).
fn recover_state(
    dir: &Path,
    config: &Config,
    state: &State<'_>,
    sealer: &Sealer,
    repair_torn: bool,
) -> Result<Recovered, StoreError> {
    let mut recovered = Recovered::default();
    let snapshots = generations(dir, "snapshot-", ".wmfs").map_err(io(dir))?;
    if let Some(&generation) = snapshots.last() {
        let path = snapshot_path(dir, generation);
        load_snapshot(&path, state, sealer, config).map_err(|reason| match reason {
            LoadError::Store(e) => e,
            LoadError::Damaged(reason) => StoreError::DamagedSnapshot {
                path: path.clone(),
                dir: dir.to_owned(),
                reason,
                fallback: fallback_note(dir, &snapshots),
            },
        })?;
        recovered.snapshot = Some(path);
        recovered.generation = generation;
    }
    let journals: Vec<u64> = generations(dir, "journal-", ".wmfj")
        .map_err(io(dir))?
        .into_iter()
        .filter(|g| *g >= recovered.generation)
        .collect();
    for (index, &generation) in journals.iter().enumerate() {
        let path = journal_path(dir, generation);
        let is_last = index + 1 == journals.len();
        let bytes = read_all(&path)?;
        let damaged = |offset: usize, reason: String| StoreError::DamagedJournal {
            path: path.clone(),
            dir: dir.to_owned(),
            offset,
            after: bytes.len().saturating_sub(offset),
            reason,
        };
        if bytes.len() < frame::HEADER_LEN && is_last {
            // Created but its header never reached the disk: nothing was ever acknowledged in it.
            warn!(journal = %path.display(), "journal without a header (crash at creation); starting it again");
            if repair_torn {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
            continue;
        }
        let header = frame::decode_header(&bytes, frame::JOURNAL_MAGIC)
            .map_err(|e| damaged(0, e.to_string()))?;
        if header.generation != generation {
            return Err(damaged(
                8,
                format!("its header says generation {}", header.generation),
            ));
        }
        let mut failure = None;
        let decoded = record::decode_frames::<Record>(
            &bytes[frame::HEADER_LEN..],
            frame::HEADER_LEN,
            |_, record| {
                if failure.is_some() {
                    return;
                }
                match replay(&record, state, sealer, config) {
                    Ok(()) => recovered.records += 1,
                    Err(e) => failure = Some(e),
                }
            },
        );
        if let Some(e) = failure {
            return Err(e);
        }
        let ending = decoded
            .map_err(|e| damaged(e.offset, format!("a record does not decode: {}", e.reason)))?;
        recovered.journal_end = match ending {
            frame::Ending::Clean => bytes.len() as u64,
            frame::Ending::Unused { offset } => offset as u64,
            frame::Ending::Torn { offset } if is_last => {
                let cut = bytes.len() - offset;
                warn!(journal = %path.display(), offset, bytes = cut, "cut a torn record at the end of the journal (a write interrupted by a crash; it was never acknowledged)");
                recovered.torn_bytes = cut as u64;
                if repair_torn {
                    cut_at(&path, offset)?;
                }
                offset as u64
            }
            frame::Ending::Torn { offset } => {
                return Err(damaged(
                    offset,
                    "a record is cut short, but newer journals follow".into(),
                ));
            }
            frame::Ending::Corrupt { offset } => {
                return Err(damaged(offset, "a record fails its checksum".into()));
            }
        };
        recovered.journals.push(path);
        recovered.generation = recovered.generation.max(generation);
    }
    Ok(recovered)
}

fn fallback_note(dir: &Path, snapshots: &[u64]) -> String {
    match snapshots.len() {
        0 | 1 => " (there is no older snapshot: the journals alone are replayed, which is complete only if the first journal is still there)".to_owned(),
        n => format!(" ({})", snapshot_path(dir, snapshots[n - 2]).display()),
    }
}

enum LoadError {
    Store(StoreError),
    Damaged(String),
}

fn load_snapshot(
    path: &Path,
    state: &State<'_>,
    sealer: &Sealer,
    config: &Config,
) -> Result<(), LoadError> {
    let bytes = read_all(path).map_err(LoadError::Store)?;
    frame::decode_header(&bytes, frame::SNAPSHOT_MAGIC)
        .map_err(|e| LoadError::Damaged(e.to_string()))?;
    let mut count = 0u64;
    let mut ended = None;
    let mut failure = None;
    let decoded = record::decode_frames::<SnapshotEntry>(
        &bytes[frame::HEADER_LEN..],
        frame::HEADER_LEN,
        |offset, entry| {
            if failure.is_some() || ended.is_some() {
                failure.get_or_insert_with(|| {
                    LoadError::Damaged(format!("data after the end marker at byte {offset}"))
                });
                return;
            }
            match entry {
                SnapshotEntry::End { entries } => ended = Some(entries),
                entry => {
                    count += 1;
                    if let Err(e) = restore(entry, state, sealer, config) {
                        failure = Some(LoadError::Store(e));
                    }
                }
            }
        },
    );
    if let Some(failure) = failure {
        return Err(failure);
    }
    let ending = decoded.map_err(|e| {
        LoadError::Damaged(format!(
            "an entry at byte {} does not decode: {}",
            e.offset, e.reason
        ))
    })?;
    if ending != frame::Ending::Clean {
        return Err(LoadError::Damaged(format!("{ending:?}")));
    }
    match ended {
        Some(entries) if entries == count => Ok(()),
        Some(entries) => Err(LoadError::Damaged(format!(
            "it says {entries} entries but holds {count}"
        ))),
        None => Err(LoadError::Damaged(
            "it has no end marker (incomplete)".into(),
        )),
    }
}

fn restore(
    entry: SnapshotEntry,
    state: &State<'_>,
    sealer: &Sealer,
    config: &Config,
) -> Result<(), StoreError> {
    let State {
        accounts, registry, ..
    } = state;
    match entry {
        SnapshotEntry::Account {
            user,
            email,
            password_hash,
            created_ms,
        } => {
            accounts.restore_account(user, email, password_hash, created_ms);
        }
        SnapshotEntry::Token {
            digest,
            user,
            expires_ms,
        } => accounts.restore_token(&digest, user, expires_ms),
        SnapshotEntry::Device {
            id,
            secret,
            mut data,
        } => {
            data.prune(crate::clock::now_ms(), &config.devices);
            registry.restore(id, *data, sealer.open(&secret)?);
        }
        SnapshotEntry::Subject {
            subject,
            user,
            email,
            created_ms,
        } => accounts.restore_subject(subject, user, email, created_ms),
        SnapshotEntry::WebSession {
            digest,
            user,
            created_ms,
            last_used_ms,
        } => accounts.web.restore(&crate::websession::SessionImage {
            digest,
            user,
            created_ms,
            last_used_ms,
        }),
        SnapshotEntry::SyncUser { user, state: image } => state.sync.restore(user, *image),
        SnapshotEntry::End { .. } => {}
    }
    Ok(())
}

fn replay(
    record: &Record,
    state: &State<'_>,
    sealer: &Sealer,
    config: &Config,
) -> Result<(), StoreError> {
    let State {
        accounts, registry, ..
    } = state;
    match record {
        Record::AccountCreated {
            user,
            email,
            password_hash,
            created_ms,
        } => {
            accounts.restore_account(*user, email.clone(), password_hash.clone(), *created_ms);
        }
        Record::TokenIssued {
            digest,
            user,
            expires_ms,
        } => accounts.restore_token(digest, *user, *expires_ms),
        Record::TokenRevoked { digest } => accounts.forget_token(digest),
        Record::SubjectLinked {
            subject,
            user,
            email,
            created_ms,
        } => accounts.restore_subject(subject.clone(), *user, email.clone(), *created_ms),
        Record::WebSessionOpened {
            digest,
            user,
            created_ms,
        } => accounts.web.restore(&crate::websession::SessionImage {
            digest: digest.clone(),
            user: *user,
            created_ms: *created_ms,
            last_used_ms: *created_ms,
        }),
        Record::WebSessionUsed { digest, at_ms } => accounts.web.restore_use(digest, *at_ms),
        Record::WebSessionClosed { digest } => accounts.web.forget(digest),
        Record::Device { id, v, change } => match change {
            DeviceChange::Registered {
                owner,
                name,
                secret,
                push_url,
                push_protocol,
                at_ms,
            } => {
                if registry.get(id).is_none() {
                    let mut data = crate::device::DeviceData::new(
                        *owner,
                        name.clone(),
                        push_url.clone(),
                        *at_ms,
                    );
                    data.push_protocol = *push_protocol;
                    data.v = *v;
                    registry.restore(*id, data, sealer.open(secret)?);
                }
            }
            DeviceChange::Removed => registry.forget_restored(id),
            change => {
                if let Some(device) = registry.get(id) {
                    device.replay(*v, change, &config.devices, sealer)?;
                }
            }
        },
        Record::SyncWrite { user, rev, write } => state.sync.replay_write(*user, *rev, write),
        Record::SyncPurged { user, purge } => state.sync.replay_purge(*user, purge),
        Record::SyncStorage { user, change } => state.sync.replay_storage(*user, change),
        Record::Started { seq_skip, .. } => registry.for_each(|device| device.skip_seqs(*seq_skip)),
    }
    Ok(())
}

// === Snapshots ===

/// Numbers from one snapshot, for the log and the benchmarks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotStats {
    pub generation: u64,
    pub devices: u64,
    pub accounts: u64,
    /// Users with sync data.
    pub sync_users: u64,
    pub bytes: u64,
    pub millis: u64,
}

/// Rotates the journal and writes a snapshot as of the new generation, then drops files no
/// longer needed. Runs the copy on the blocking pool: requests keep being served.
pub async fn snapshot(
    dir: &Arc<DataDir>,
    journal: &Journal,
    accounts: &Arc<Accounts>,
    registry: &Arc<Registry>,
    sync: &Arc<SyncStore>,
    sealer: &Arc<Sealer>,
    limits: &DevicesConfig,
) -> std::io::Result<SnapshotStats> {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let generation = dir.generation.load(Ordering::Relaxed) + 1;
    journal
        .rotate(journal_path(&dir.path, generation), generation)
        .await?;
    dir.generation.store(generation, Ordering::Relaxed);
    let (dir2, accounts, registry, sync, sealer, limits) = (
        dir.clone(),
        accounts.clone(),
        registry.clone(),
        sync.clone(),
        sealer.clone(),
        limits.clone(),
    );
    let mut stats = tokio::task::spawn_blocking(move || {
        write_snapshot(
            &dir2.path, generation, &accounts, &registry, &sync, &sealer, &limits,
        )
    })
    .await
    .map_err(std::io::Error::other)??;
    stats.millis = started.elapsed().as_millis() as u64;
    prune(&dir.path)?;
    info!(
        generation,
        devices = stats.devices,
        bytes = stats.bytes,
        millis = stats.millis,
        "snapshot written"
    );
    Ok(stats)
}

/// Writes `snapshot-<generation>` durably: temporary file, fsync, rename, directory fsync.
pub fn write_snapshot(
    dir: &Path,
    generation: u64,
    accounts: &Accounts,
    registry: &Registry,
    sync: &SyncStore,
    sealer: &Sealer,
    limits: &DevicesConfig,
) -> std::io::Result<SnapshotStats> {
    let path = snapshot_path(dir, generation);
    let temporary = path.with_extension("wmfs.tmp");
    let file = open_private(&temporary, true)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    out.write_all(&frame::encode_header(frame::SNAPSHOT_MAGIC, generation))?;
    let mut stats = SnapshotStats {
        generation,
        ..Default::default()
    };
    let mut entries = 0u64;
    let mut frame_buffer = Vec::with_capacity(4096);
    let mut put =
        |out: &mut std::io::BufWriter<File>, entry: &SnapshotEntry| -> std::io::Result<()> {
            let payload = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
            frame_buffer.clear();
            frame::encode_frame(&payload, &mut frame_buffer);
            out.write_all(&frame_buffer)
        };
    for (user, email, password_hash, created_ms) in accounts.export_accounts() {
        put(
            &mut out,
            &SnapshotEntry::Account {
                user,
                email,
                password_hash,
                created_ms,
            },
        )?;
        entries += 1;
        stats.accounts += 1;
    }
    for (digest, user, expires_ms) in accounts.export_tokens() {
        put(
            &mut out,
            &SnapshotEntry::Token {
                digest,
                user,
                expires_ms,
            },
        )?;
        entries += 1;
    }
    for (subject, user, email, created_ms) in accounts.export_subjects() {
        put(
            &mut out,
            &SnapshotEntry::Subject {
                subject,
                user,
                email,
                created_ms,
            },
        )?;
        entries += 1;
    }
    for session in accounts.web.export() {
        put(
            &mut out,
            &SnapshotEntry::WebSession {
                digest: session.digest,
                user: session.user,
                created_ms: session.created_ms,
                last_used_ms: session.last_used_ms,
            },
        )?;
        entries += 1;
    }
    for device in registry.devices() {
        let Some((data, secret)) = device.image(limits) else {
            continue;
        };
        put(
            &mut out,
            &SnapshotEntry::Device {
                id: device.id,
                secret: sealer.seal(&secret),
                data: Box::new(data),
            },
        )?;
        entries += 1;
        stats.devices += 1;
    }
    // Each user is copied under their lock: a consistent state at one revision, which
    // replay of the new journal then moves forward (writes at or below it are skipped).
    for (user, data) in sync.users() {
        // 2 MiB of ids and payloads: even if JSON escaping grew every byte sixfold, a frame
        // stays under `frame::MAX_PAYLOAD`.
        for piece in data.image(2 * 1024 * 1024) {
            put(
                &mut out,
                &SnapshotEntry::SyncUser {
                    user,
                    state: Box::new(piece),
                },
            )?;
            entries += 1;
        }
        stats.sync_users += 1;
    }
    put(&mut out, &SnapshotEntry::End { entries })?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    stats.bytes = file.metadata()?.len();
    drop(file);
    std::fs::rename(&temporary, &path)?;
    sync_dir(&path)?;
    Ok(stats)
}

/// Keeps the newest two snapshots and the journals since the older of them.
fn prune(dir: &Path) -> std::io::Result<()> {
    let snapshots = generations(dir, "snapshot-", ".wmfs")?;
    if snapshots.len() < 2 {
        return Ok(());
    }
    let keep_from = snapshots[snapshots.len() - 2];
    for generation in snapshots.iter().filter(|g| **g < keep_from) {
        std::fs::remove_file(snapshot_path(dir, *generation))?;
    }
    for generation in generations(dir, "journal-", ".wmfj")?
        .into_iter()
        .filter(|g| *g < keep_from)
    {
        std::fs::remove_file(journal_path(dir, generation))?;
    }
    sync_dir(&dir.join("x"))
}

// === check-data and repair ===

/// Reads everything in the data directory without changing it; the report for `check-data`.
pub fn check(config: &Config, sealer: &Sealer) -> Result<Recovered, StoreError> {
    let dir = DataDir::lock(&config.server.data_dir)?;
    let state = State {
        accounts: &Accounts::new(config.accounts.token_ttl_hours),
        registry: &Registry::default(),
        sync: &SyncStore::default(),
    };
    recover_state(&dir.path, config, &state, sealer, false)
}

/// Fixes what stops start-up: sets a damaged newest snapshot aside, or cuts a damaged journal
/// at the damage (keeping the rest in a `.damaged` file). Returns what it did.
pub fn repair(config: &Config, sealer: &Sealer) -> Result<Vec<String>, StoreError> {
    let mut done = Vec::new();
    loop {
        match check(config, sealer) {
            Ok(_) => return Ok(done),
            Err(StoreError::DamagedSnapshot { path, .. }) => {
                let aside = path.with_extension("wmfs.damaged");
                std::fs::rename(&path, &aside).map_err(io(&path))?;
                done.push(format!(
                    "set {} aside as {}",
                    path.display(),
                    aside.display()
                ));
            }
            Err(StoreError::DamagedJournal {
                path,
                offset,
                after,
                ..
            }) => {
                let bytes = read_all(&path)?;
                let aside = path.with_extension(format!("wmfj.damaged-at-{offset}"));
                std::fs::write(&aside, &bytes[offset..]).map_err(io(&aside))?;
                cut_at(&path, offset)?;
                done.push(format!(
                    "cut {} at byte {offset}; the {after} unreadable bytes after it are in {}",
                    path.display(),
                    aside.display()
                ));
                // Newer journals cannot follow a cut one: their changes depend on what was lost.
                let generation = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.strip_prefix("journal-"))
                    .and_then(|g| g.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                for newer in generations(&config.server.data_dir, "journal-", ".wmfj")
                    .map_err(io(&config.server.data_dir))?
                    .into_iter()
                    .filter(|g| *g > generation)
                {
                    let newer = journal_path(&config.server.data_dir, newer);
                    let aside = newer.with_extension("wmfj.damaged-after-cut");
                    std::fs::rename(&newer, &aside).map_err(io(&newer))?;
                    done.push(format!(
                        "set {} aside as {}",
                        newer.display(),
                        aside.display()
                    ));
                }
            }
            Err(other) => return Err(other),
        }
        if done.len() > 64 {
            return Ok(done);
        }
    }
}
