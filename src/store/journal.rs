//! `Journal`: the append-only log every state change goes through before it is answered.
//!
//! One writer thread owns the file. Requests hand it framed records through a channel and
//! wait for its acknowledgement; it writes whatever has queued up in one `write`, then one
//! `fdatasync` covers the whole batch (group commit), so under load many requests share each
//! flush. Records whose policy is `interval` are acknowledged once written, and flushed by the
//! next batch that needs it or by the interval timer.
//!
//! If a write or flush fails, the journal stops accepting records: every later change is
//! refused with 503 (errno 160) rather than acknowledged and then lost. The operator restarts
//! the server once the disk is fixed; recovery rebuilds what was durable.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info};

use crate::config::{FsyncPolicy, StorageConfig};
use crate::error::ApiError;
use crate::metrics::{Counter, FAST_BOUNDS, Histogram};
use crate::store::frame;
use crate::store::record::{DeviceChange, Record};

/// Which policy a record is written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Accounts, tokens, registrations, commands and their acknowledgements:
    /// `storage.fsync`.
    Commands,
    /// Position reports: `storage.positions_fsync`.
    Positions,
}

/// Waits until records are durable under their policy.
#[derive(Debug, Default)]
#[must_use = "a change is only safe to acknowledge once its commit has completed"]
pub struct Commit {
    waits: Vec<oneshot::Receiver<Result<(), ()>>>,
    failed: bool,
}

/// The journal handle shared by request handlers.
#[derive(Debug)]
pub struct Journal {
    tx: Option<mpsc::Sender<Op>>,
    /// Set once a write failed; from then on every append fails at once.
    failed: Arc<AtomicBool>,
    /// Bytes in the current journal file (for the snapshot trigger).
    bytes: Arc<AtomicU64>,
    commands: FsyncPolicy,
    positions: FsyncPolicy,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What passed through, for `/metrics`.
    stats: Arc<JournalStats>,
}

/// Counts of what the journal saw. Every change passes through the journal, so counting
/// here cannot miss one, whichever handler made it.
#[derive(Debug)]
pub struct JournalStats {
    /// Records appended.
    pub records: Counter,
    /// Device replies that answered a command (`answered` records with a seq).
    pub commands_answered: Counter,
    /// Commands whose receipt a device confirmed with the ack extension.
    pub commands_confirmed: Counter,
    /// Time to write (and fsync, when due) one group of records.
    pub flush: Histogram,
}

enum Op {
    Append {
        bytes: Vec<u8>,
        sync: bool,
        ack: oneshot::Sender<Result<(), ()>>,
    },
    /// Closes the current file (flushed) and continues in a new one.
    Rotate {
        path: PathBuf,
        generation: u64,
        ack: oneshot::Sender<std::io::Result<()>>,
    },
    /// Flushes and stops the writer.
    Close { ack: oneshot::Sender<()> },
}

// === Commit ===

impl Commit {
    /// A commit with nothing to wait for.
    pub fn done() -> Commit {
        Commit::default()
    }

    fn failed() -> Commit {
        Commit {
            waits: Vec::new(),
            failed: true,
        }
    }

    /// Waits for this commit too.
    pub fn join(&mut self, other: Commit) {
        self.failed |= other.failed;
        self.waits.extend(other.waits);
    }

    /// Resolves when every record is durable; 503 if the journal could not write them.
    ///
    /// Cancel safety: dropping the future does not undo the records; they are written anyway.
    pub async fn wait(self) -> Result<(), ApiError> {
        if self.failed {
            return Err(ApiError::StorageUnavailable);
        }
        for wait in self.waits {
            match wait.await {
                Ok(Ok(())) => {}
                _ => return Err(ApiError::StorageUnavailable),
            }
        }
        Ok(())
    }
}

// === Journal ===

impl Journal {
    /// Starts the writer on an open journal file positioned at its end.
    pub fn start(file: File, path: PathBuf, len: u64, config: &StorageConfig) -> Journal {
        let (tx, rx) = mpsc::channel();
        let failed = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(len));
        let interval = Duration::from_millis(config.fsync_interval_ms);
        let stats = Arc::new(JournalStats::default());
        let writer = {
            let failed = failed.clone();
            let bytes = bytes.clone();
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || write_loop(rx, file, path, failed, bytes, interval, &stats))
                .expect("spawning the journal thread")
        };
        Journal {
            tx: Some(tx),
            failed,
            bytes,
            commands: config.fsync,
            positions: config.positions_fsync,
            writer: std::sync::Mutex::new(Some(writer)),
            stats,
        }
    }

    /// A journal that writes nothing (for tools that only read, and for benchmarks of the
    /// in-memory paths).
    pub fn disabled() -> Journal {
        Journal {
            tx: None,
            failed: Arc::new(AtomicBool::new(false)),
            bytes: Arc::new(AtomicU64::new(0)),
            commands: FsyncPolicy::Interval,
            positions: FsyncPolicy::Interval,
            writer: std::sync::Mutex::new(None),
            stats: Arc::new(JournalStats::default()),
        }
    }

    /// Queues a record. Call it while holding the lock that ordered the change, then wait on
    /// the returned commit after releasing it.
    pub fn append(&self, record: &Record, durability: Durability) -> Commit {
        self.stats.count(record);
        let Some(tx) = &self.tx else {
            return Commit::done();
        };
        if self.failed.load(Ordering::Relaxed) {
            return Commit::failed();
        }
        let payload = match serde_json::to_vec(record) {
            Ok(payload) => payload,
            Err(e) => {
                error!(error = %e, "cannot encode a journal record");
                return Commit::failed();
            }
        };
        let mut bytes = Vec::with_capacity(payload.len() + frame::FRAME_OVERHEAD);
        frame::encode_frame(&payload, &mut bytes);
        let policy = match durability {
            Durability::Commands => self.commands,
            Durability::Positions => self.positions,
        };
        let (ack, wait) = oneshot::channel();
        let op = Op::Append {
            bytes,
            sync: policy == FsyncPolicy::Always,
            ack,
        };
        if tx.send(op).is_err() {
            return Commit::failed();
        }
        Commit {
            waits: vec![wait],
            failed: false,
        }
    }

    /// Bytes in the current journal file.
    /// What the journal has seen since start.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    pub fn len(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() <= frame::HEADER_LEN as u64
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Continues in a new file; everything appended before this call is in the old one.
    pub async fn rotate(&self, path: PathBuf, generation: u64) -> std::io::Result<()> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let (ack, wait) = oneshot::channel();
        tx.send(Op::Rotate {
            path,
            generation,
            ack,
        })
        .map_err(|_| std::io::Error::other("the journal writer has stopped"))?;
        wait.await
            .map_err(|_| std::io::Error::other("the journal writer has stopped"))?
    }

    /// Flushes everything and stops the writer.
    pub async fn close(&self) {
        if let Some(tx) = &self.tx {
            let (ack, wait) = oneshot::channel();
            if tx.send(Op::Close { ack }).is_ok() {
                let _ = wait.await;
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

// === JournalStats ===

impl Default for JournalStats {
    fn default() -> Self {
        JournalStats {
            records: Counter::default(),
            commands_answered: Counter::default(),
            commands_confirmed: Counter::default(),
            flush: Histogram::new(FAST_BOUNDS),
        }
    }
}

impl JournalStats {
    fn count(&self, record: &Record) {
        self.records.inc();
        if let Record::Device { change, .. } = record {
            match change {
                DeviceChange::Answered { seq: Some(_), .. } => self.commands_answered.inc(),
                DeviceChange::Delivered { seqs } => self.commands_confirmed.add(seqs.len() as u64),
                _ => {}
            }
        }
    }
}

/// Creates a journal file with its header, durably (file and directory).
pub fn create_file(path: &Path, generation: u64) -> std::io::Result<File> {
    let mut file = crate::store::open_private(path, true)?;
    file.write_all(&frame::encode_header(frame::JOURNAL_MAGIC, generation))?;
    file.sync_all()?;
    crate::store::sync_dir(path)?;
    Ok(file)
}

fn write_loop(
    rx: mpsc::Receiver<Op>,
    mut file: File,
    mut path: PathBuf,
    failed: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    interval: Duration,
    stats: &JournalStats,
) {
    let mut dirty = false;
    let mut last_sync = Instant::now();
    let mut buffer = Vec::with_capacity(64 * 1024);
    loop {
        let first = if dirty {
            match rx.recv_timeout(interval.saturating_sub(last_sync.elapsed())) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(op) => Some(op),
                Err(_) => return,
            }
        };
        let Some(first) = first else {
            // The interval is over with unsynced data: flush it.
            if sync(&file, &failed, &path) {
                dirty = false;
            }
            last_sync = Instant::now();
            continue;
        };
        // Group commit: take everything already queued, up to a bound.
        let mut ops = vec![first];
        while ops.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut acks = Vec::with_capacity(ops.len());
        let mut need_sync = false;
        for op in ops {
            match op {
                Op::Append {
                    bytes: record,
                    sync,
                    ack,
                } => {
                    buffer.extend_from_slice(&record);
                    need_sync |= sync;
                    acks.push(ack);
                }
                Op::Rotate {
                    path: next,
                    generation,
                    ack,
                } => {
                    let ok = flush(&mut file, &mut buffer, &bytes, &failed, &path)
                        && sync(&file, &failed, &path);
                    finish(&mut acks, ok);
                    dirty = false;
                    let result = if ok {
                        create_file(&next, generation).map(|new| {
                            file = new;
                            path = next;
                            bytes.store(frame::HEADER_LEN as u64, Ordering::Relaxed);
                            info!(journal = %path.display(), "journal rotated");
                        })
                    } else {
                        Err(std::io::Error::other("the journal has failed"))
                    };
                    let _ = ack.send(result);
                }
                Op::Close { ack } => {
                    let ok = flush(&mut file, &mut buffer, &bytes, &failed, &path)
                        && sync(&file, &failed, &path);
                    finish(&mut acks, ok);
                    let _ = ack.send(());
                    return;
                }
            }
        }
        if acks.is_empty() {
            continue;
        }
        let started = Instant::now();
        let mut ok = flush(&mut file, &mut buffer, &bytes, &failed, &path);
        if ok && need_sync {
            ok = sync(&file, &failed, &path);
            dirty = false;
            last_sync = Instant::now();
        } else if ok {
            dirty = true;
        }
        stats.flush.observe(started.elapsed());
        finish(&mut acks, ok);
    }
}

fn flush(
    file: &mut File,
    buffer: &mut Vec<u8>,
    bytes: &AtomicU64,
    failed: &AtomicBool,
    path: &Path,
) -> bool {
    if buffer.is_empty() {
        return !failed.load(Ordering::Relaxed);
    }
    if failed.load(Ordering::Relaxed) {
        buffer.clear();
        return false;
    }
    let result = file.write_all(buffer);
    let written = buffer.len() as u64;
    buffer.clear();
    match result {
        Ok(()) => {
            bytes.fetch_add(written, Ordering::Relaxed);
            true
        }
        Err(e) => {
            error!(journal = %path.display(), error = %e, "journal write failed; refusing further changes");
            failed.store(true, Ordering::Relaxed);
            false
        }
    }
}

fn sync(file: &File, failed: &AtomicBool, path: &Path) -> bool {
    if failed.load(Ordering::Relaxed) {
        return false;
    }
    match file.sync_data() {
        Ok(()) => true,
        Err(e) => {
            error!(journal = %path.display(), error = %e, "journal flush failed; refusing further changes");
            failed.store(true, Ordering::Relaxed);
            false
        }
    }
}

fn finish(acks: &mut Vec<oneshot::Sender<Result<(), ()>>>, ok: bool) {
    for ack in acks.drain(..) {
        let _ = ack.send(if ok { Ok(()) } else { Err(()) });
    }
}
