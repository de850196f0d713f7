//! `Journal`: the append-only log every state change goes through before it is answered.
//!
//! Requests queue framed records in order and wait for them to be durable. Whoever writes
//! takes everything queued so far in one `write`, then one `fdatasync` covers the whole batch
//! (group commit), so under load many requests share each flush. Records whose policy is
//! `interval` are acknowledged once written, and flushed by the next batch that needs it or by
//! the interval timer.
//!
//! Who writes: a request that waits for its commit and finds the file free writes the batch
//! itself, on its own worker thread, and so does not wait for another thread to be scheduled
//! twice (once to write, once to wake it): the leader of RocksDB's and MySQL's group commit. A
//! writer thread does the rest: batches queued while a write was under way (so that under a
//! steady stream of records the workers go on serving while the thread waits for the disk),
//! the records of commits dropped unwaited or handed over (a poll that parks while its report
//! is flushed), the interval flush, rotation and close, and
//! everything when the runtime has a single worker (which must not stop for a flush). Only
//! one batch is written at a time (`Shared::file`); whoever lets go of the file looks at the
//! queue afterwards and wakes the thread when records are left, so no record waits for a
//! writer that is not coming.
//!
//! The file is kept ahead of the writer with zeros (`Runway`), so a flush writes the records'
//! blocks and never the file's size as well.
//!
//! If a write or flush fails, the journal stops accepting records: every later change is
//! refused with 503 (errno 160) rather than acknowledged and then lost. The operator restarts
//! the server once the disk is fixed; recovery rebuilds what was durable.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError, mpsc};
use std::time::{Duration, Instant};
use std::{fmt, mem};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

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
    /// The journal the records wait in, until someone has been asked to write them.
    journal: Option<Arc<Shared>>,
}

/// The journal handle shared by request handlers.
#[derive(Debug)]
pub struct Journal {
    shared: Option<Arc<Shared>>,
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
    /// Groups written by the request that waited for them (the rest by the writer thread).
    pub flushes_inline: Counter,
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

/// What appenders, waiting requests and the writer thread share.
struct Shared {
    /// Operations not yet taken by a writer, in the order they were appended.
    queue: Mutex<Queue>,
    /// Wakes the writer thread when the queue holds work for it.
    kick: Condvar,
    /// The file. Held for the whole of a batch, so batches are written one at a time and in
    /// the order they were taken from the queue. Lock order: `file`, then `queue`.
    file: Mutex<Writer>,
    failed: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    stats: Arc<JournalStats>,
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    /// No more operations: a `Close` was queued, or the `Journal` was dropped.
    closed: bool,
    /// When records written without a flush (under the `interval` policy) must be flushed
    /// by the thread.
    flush_due: Option<Instant>,
}

/// The writing side: the file, and what has been written to it but not yet flushed.
struct Writer {
    /// `None` once closed.
    output: Option<Output>,
    buffer: Vec<u8>,
    /// Records were written (under the `interval` policy) and not yet flushed.
    dirty: bool,
    last_sync: Instant,
    /// `storage.fsync_interval_ms`.
    interval: Duration,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("failed", &self.failed)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
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
            journal: None,
        }
    }

    /// Waits for this commit too.
    pub fn join(&mut self, mut other: Commit) {
        self.failed |= other.failed;
        self.waits.append(&mut other.waits);
        // Taken either way: `other` must not hand its records to the thread when dropped.
        let journal = other.journal.take();
        if self.journal.is_none() {
            self.journal = journal;
        }
    }

    /// Whether there is a record to wait for: false when nothing was appended, and when the
    /// journal had already failed (then `wait` fails at once).
    pub fn is_pending(&self) -> bool {
        !self.failed && !self.waits.is_empty()
    }

    /// Has the journal's thread write the records now, without waiting here; a later `wait`
    /// only waits for them. For a request that answers much later (a parked poll): the
    /// records become durable meanwhile, and its worker does not block on the disk.
    pub fn hand_over(&mut self) {
        if let Some(journal) = self.journal.take() {
            journal.kick();
        }
    }

    /// Resolves when every record is durable; 503 if the journal could not write them.
    ///
    /// When no batch is being written, the records are written and flushed right here, on
    /// this thread (see the module's documentation).
    ///
    /// Cancel safety: dropping the future does not undo the records; they are written anyway.
    pub async fn wait(mut self) -> Result<(), ApiError> {
        if self.failed {
            return Err(ApiError::StorageUnavailable);
        }
        let waits = mem::take(&mut self.waits);
        if let Some(journal) = self.journal.take() {
            journal.write_or_hand_over();
        }
        for wait in waits {
            match wait.await {
                Ok(Ok(())) => {}
                _ => return Err(ApiError::StorageUnavailable),
            }
        }
        Ok(())
    }
}

impl Drop for Commit {
    /// A commit dropped before it was waited on still has its records written: by the thread.
    fn drop(&mut self) {
        if let Some(journal) = self.journal.take() {
            journal.kick();
        }
    }
}

// === Journal ===

impl Journal {
    /// Starts the writer on an open journal file whose records end at `len` (zeros may follow).
    pub fn start(file: File, path: PathBuf, len: u64, config: &StorageConfig) -> Journal {
        let failed = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(len));
        let interval = Duration::from_millis(config.fsync_interval_ms);
        let stats = Arc::new(JournalStats::default());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            kick: Condvar::new(),
            file: Mutex::new(Writer {
                output: Some(Output::new(file, path, len, config.journal_runway_bytes)),
                buffer: Vec::with_capacity(64 * 1024),
                dirty: false,
                last_sync: Instant::now(),
                interval,
            }),
            failed: failed.clone(),
            bytes: bytes.clone(),
            stats: stats.clone(),
        });
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || write_loop(&shared))
                .expect("spawning the journal thread")
        };
        Journal {
            shared: Some(shared),
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
            shared: None,
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
        let Some(shared) = &self.shared else {
            return Commit::done();
        };
        if self.failed.load(Ordering::Relaxed) {
            return Commit::failed();
        }
        let bytes = match record.framed() {
            Ok(bytes) => bytes,
            Err(e) => {
                error!(error = %e, "cannot encode a journal record");
                return Commit::failed();
            }
        };
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
        if !shared.push(op, false) {
            return Commit::failed();
        }
        Commit {
            waits: vec![wait],
            failed: false,
            journal: Some(shared.clone()),
        }
    }

    /// Keeps every write and flush waiting until the returned guard is dropped: a flush that
    /// takes its time, for tests of what must not wait for one.
    #[cfg(test)]
    pub(crate) fn hold_writes(&self) -> impl Sized + '_ {
        /// Lets go of the file, then has the thread look at the queue, as a writer does.
        struct Held<'a>(Option<MutexGuard<'a, Writer>>, &'a Shared);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                drop(self.0.take());
                self.1.kick();
            }
        }
        let shared = self.shared.as_deref().expect("an enabled journal");
        Held(Some(lock(&shared.file)), shared)
    }

    /// What the journal has seen since start.
    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Bytes in the current journal file.
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
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let (ack, wait) = oneshot::channel();
        let op = Op::Rotate {
            path,
            generation,
            ack,
        };
        if !shared.push(op, true) {
            return Err(std::io::Error::other("the journal writer has stopped"));
        }
        wait.await
            .map_err(|_| std::io::Error::other("the journal writer has stopped"))?
    }

    /// Flushes everything and stops the writer.
    pub async fn close(&self) {
        if let Some(shared) = &self.shared {
            let (ack, wait) = oneshot::channel();
            if shared.push(Op::Close { ack }, true) {
                let _ = wait.await;
            }
        }
        let handle = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

impl Drop for Journal {
    /// Lets the writer thread finish what is queued and stop.
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            lock(&shared.queue).closed = true;
            shared.kick.notify_one();
        }
    }
}

// === Shared ===

impl Shared {
    /// Queues `op` after everything queued before it; false once the journal is closed.
    /// Operations only the thread carries out (`wake`) wake it at once; appends wait for
    /// their commit to be waited on or dropped.
    fn push(&self, op: Op, wake: bool) -> bool {
        {
            let mut queue = lock(&self.queue);
            if queue.closed {
                return false;
            }
            if matches!(op, Op::Close { .. }) {
                queue.closed = true;
            }
            queue.ops.push(op);
        }
        if wake {
            self.kick.notify_one();
        }
        true
    }

    /// Wakes the writer thread for whatever is queued.
    fn kick(&self) {
        // Under the lock, so that the wake cannot fall between the thread finding the queue
        // empty and its going to sleep.
        let _queue = lock(&self.queue);
        self.kick.notify_one();
    }

    /// A waiting request's turn: writes what is queued, here and now, if no batch is being
    /// written and this thread may block on the disk; otherwise leaves it to whoever holds
    /// the file, or to the thread.
    fn write_or_hand_over(&self) {
        if !may_block_here() {
            self.kick();
            return;
        }
        let mut writer = match self.file.try_lock() {
            Ok(writer) => writer,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            // The holder looks at the queue once it lets go (below), and this commit's
            // records are either in its batch or still queued.
            Err(TryLockError::WouldBlock) => return,
        };
        let batch: Vec<Op> = {
            let mut queue = lock(&self.queue);
            // Appends only, up to the first rotation or close: those are the thread's.
            let appends = queue
                .ops
                .iter()
                .position(|op| !matches!(op, Op::Append { .. }))
                .unwrap_or(queue.ops.len());
            queue.ops.drain(..appends).collect()
        };
        let mut due = None;
        if !batch.is_empty() {
            self.stats.flushes_inline.inc();
            writer.write_batch(batch, self);
            due = writer.flush_due();
        }
        // Let go first, then look: an append queued after this batch was taken either finds
        // the file free or is seen here (both go through the queue's lock).
        drop(writer);
        let mut queue = lock(&self.queue);
        if let Some(due) = due {
            queue.flush_due = Some(queue.flush_due.map_or(due, |at| at.min(due)));
        }
        // Records queued while this batch was written go to the thread, which takes each
        // batch as soon as the last is written: under a steady stream of records, the workers
        // go on serving while the thread waits for the disk, as if no request wrote at all.
        if due.is_some() || !queue.ops.is_empty() {
            self.kick.notify_one();
        }
    }
}

/// Whether the calling thread may wait for the disk: a worker of a multi-threaded runtime
/// with another worker to go on meanwhile. A single-threaded runtime would stop serving for
/// the length of every flush, so there the writer thread writes.
fn may_block_here() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && runtime.metrics().num_workers() > 1
    })
}

// === JournalStats ===

impl Default for JournalStats {
    fn default() -> Self {
        JournalStats {
            records: Counter::default(),
            commands_answered: Counter::default(),
            commands_confirmed: Counter::default(),
            flush: Histogram::new(FAST_BOUNDS),
            flushes_inline: Counter::default(),
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

/// Opens (or creates) a journal file for reading and writing at chosen offsets, by its owner
/// only. Not in append mode: on Linux that would send every positioned write to the end.
pub fn open_file(path: &Path, create: bool) -> std::io::Result<File> {
    crate::store::open_owner_only(path, create, false)
}

/// Creates a journal file with its header, durably (file and directory).
pub fn create_file(path: &Path, generation: u64) -> std::io::Result<File> {
    let mut file = open_file(path, true)?;
    file.write_all(&frame::encode_header(frame::JOURNAL_MAGIC, generation))?;
    file.sync_all()?;
    crate::store::sync_dir(path)?;
    Ok(file)
}

// === Runway ===

/// Zeros are written ahead of the writer this many bytes at a time.
const RUNWAY_STEP: u64 = 64 * 1024;

/// Zeroed space kept ahead of the journal's records.
///
/// Appending grows the file, and then `fdatasync` must write the inode's new size too (and,
/// on a journaling file system, commit that change) besides the records' blocks. Overwriting
/// blocks the file already has costs their write and the disk's cache flush only: on the
/// virtual disk of docs/PERFORMANCE.md a synchronous 4 KiB append took 250 µs and an
/// overwrite 117 µs. PostgreSQL fills its WAL segments with zeros before use for the same
/// reason.
///
/// A thread of its own writes the zeros, a step at a time, and flushes them, so the writer
/// does not wait for them. Everything below `reserved` belongs to the writer (records, or
/// zeros it may overwrite); the preparer writes only at `reserved` and above, holding `state`,
/// and so does the writer when a batch outruns the runway (the file then simply grows, as it
/// would without one). How far ahead to keep is a quarter of what the file holds, between one
/// step and `storage.journal_runway_bytes`, so a small journal stays small.
struct Runway {
    state: Mutex<RunwayFile>,
    /// `state.reserved`, readable without the lock.
    reserved: AtomicU64,
    /// Where the writer's records end.
    written: AtomicU64,
    limit: u64,
}

struct RunwayFile {
    file: Arc<File>,
    reserved: u64,
}

impl Runway {
    /// How many zeroed bytes to keep ahead of the records.
    fn wanted(&self) -> u64 {
        (self.written.load(Ordering::Relaxed) / 4).clamp(RUNWAY_STEP, self.limit.max(RUNWAY_STEP))
    }

    /// Whether the preparer should add to the runway: as soon as a step of it is used, so the
    /// zeros go to the disk a step at a time, spread out, rather than in bursts that the
    /// writer's flushes would queue behind (for a runway of one or two steps, at half).
    fn is_short(&self) -> bool {
        let ahead = self
            .reserved
            .load(Ordering::Acquire)
            .saturating_sub(self.written.load(Ordering::Relaxed));
        let wanted = self.wanted();
        ahead < wanted.saturating_sub(RUNWAY_STEP).max(wanted / 2)
    }

    /// Writes zeros until the runway is long enough; returns when the writer has gone. After
    /// a failure (a full disk) it rests a minute: the records go in meanwhile, growing the file
    /// as they come.
    fn prepare(&self, wake: mpsc::Receiver<()>) {
        let zeros = vec![0u8; RUNWAY_STEP as usize];
        let mut resting_until = None;
        while wake.recv().is_ok() {
            if resting_until.is_some_and(|until| Instant::now() < until) {
                continue;
            }
            resting_until = self.extend(&zeros).err().map(|e| {
                warn!(error = %e, "cannot prepare journal space ahead of the writer; trying again in a minute");
                Instant::now() + Duration::from_secs(60)
            });
        }
    }

    fn extend(&self, zeros: &[u8]) -> std::io::Result<()> {
        loop {
            let file = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let end = self.written.load(Ordering::Relaxed) + self.wanted();
                if state.reserved >= end {
                    return Ok(());
                }
                // Up to the next multiple of the step, so later steps are aligned.
                let step = RUNWAY_STEP - state.reserved % RUNWAY_STEP;
                let zeros = &zeros[..step as usize];
                state.file.write_all_at(zeros, state.reserved)?;
                state.reserved += step;
                self.reserved.store(state.reserved, Ordering::Release);
                state.file.clone()
            };
            // Flushed here, so that the writer's next flush has only its records to write.
            file.sync_data()?;
        }
    }
}

/// The writer's side of the journal file: records go at `end`, inside the runway if there is
/// one.
struct Output {
    file: Arc<File>,
    path: PathBuf,
    end: u64,
    runway: Option<(
        Arc<Runway>,
        mpsc::SyncSender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Output {
    fn new(file: File, path: PathBuf, end: u64, runway_bytes: u64) -> Output {
        let file = Arc::new(file);
        let mut output = Output {
            file: file.clone(),
            path,
            end,
            runway: None,
        };
        if runway_bytes == 0 {
            return output;
        }
        let size = file.metadata().map(|m| m.len()).unwrap_or(end).max(end);
        let runway = Arc::new(Runway {
            state: Mutex::new(RunwayFile {
                file,
                reserved: size,
            }),
            reserved: AtomicU64::new(size),
            written: AtomicU64::new(end),
            limit: runway_bytes,
        });
        let (wake, woken) = mpsc::sync_channel(1);
        let preparer = {
            let runway = runway.clone();
            std::thread::Builder::new()
                .name("journal-runway".into())
                .spawn(move || runway.prepare(woken))
        };
        match preparer {
            Ok(handle) => {
                output.runway = Some((runway, wake, handle));
                output.wake_preparer();
            }
            Err(e) => warn!(error = %e, "cannot start the journal's runway thread; appending"),
        }
        output
    }

    fn wake_preparer(&self) {
        if let Some((runway, wake, _)) = &self.runway
            && runway.is_short()
        {
            let _ = wake.try_send(());
        }
    }

    /// Writes `bytes` after the records.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let end = self.end + bytes.len() as u64;
        match &self.runway {
            Some((runway, _, _)) if end > runway.reserved.load(Ordering::Acquire) => {
                // Past the prepared space: keep the preparer out while the file grows.
                let mut state = runway.state.lock().unwrap_or_else(|e| e.into_inner());
                self.file.write_all_at(bytes, self.end)?;
                state.reserved = state.reserved.max(end);
                runway.reserved.store(state.reserved, Ordering::Release);
            }
            _ => self.file.write_all_at(bytes, self.end)?,
        }
        self.end = end;
        if let Some((runway, _, _)) = &self.runway {
            runway.written.store(end, Ordering::Relaxed);
        }
        self.wake_preparer();
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Cuts the unused zeros off the file and flushes it: a journal the writer is done with
    /// ends with its last record.
    fn trim(&self, file: &File) {
        let result = file.set_len(self.end).and_then(|()| file.sync_all());
        if let Err(e) = result {
            warn!(journal = %self.path.display(), error = %e, "cannot cut the unused end of a journal; it is read as unused space");
        }
    }

    /// Continues in `file`, a new journal holding its header only; trims the old one.
    fn replace(&mut self, file: File, path: PathBuf) {
        let file = Arc::new(file);
        let old = std::mem::replace(&mut self.file, file.clone());
        if let Some((runway, _, _)) = &self.runway {
            let mut state = runway.state.lock().unwrap_or_else(|e| e.into_inner());
            state.file = file;
            state.reserved = frame::HEADER_LEN as u64;
            runway.reserved.store(state.reserved, Ordering::Release);
            runway.written.store(state.reserved, Ordering::Relaxed);
        }
        self.trim(&old);
        self.end = frame::HEADER_LEN as u64;
        self.path = path;
        self.wake_preparer();
    }

    /// Trims the journal and stops the preparer.
    fn close(mut self) {
        if let Some((_, wake, handle)) = self.runway.take() {
            // The preparer stops once its channel is closed.
            drop(wake);
            let _ = handle.join();
        }
        self.trim(&self.file);
    }
}

/// The writer thread: takes what the queue holds, and flushes `interval` records in time.
fn write_loop(shared: &Shared) {
    loop {
        // Wait for work, but take it only once the file is held (lock order: file, then
        // queue): a batch taken earlier could be overtaken by a later one written inline.
        let interval_over = {
            let mut queue = lock(&shared.queue);
            loop {
                if !queue.ops.is_empty() {
                    break false;
                }
                if queue.closed {
                    return;
                }
                match queue.flush_due {
                    None => queue = shared.kick.wait(queue).unwrap_or_else(|e| e.into_inner()),
                    Some(at) => {
                        let now = Instant::now();
                        if now >= at {
                            queue.flush_due = None;
                            break true;
                        }
                        queue = shared
                            .kick
                            .wait_timeout(queue, at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            }
        };
        let mut writer = lock(&shared.file);
        let ops = mem::take(&mut lock(&shared.queue).ops);
        if !ops.is_empty() && !writer.write_batch(ops, shared) {
            return;
        }
        if interval_over {
            // The interval is over with records not flushed (unless a batch since flushed
            // them): flush them.
            if writer.dirty && writer.sync(shared) {
                writer.dirty = false;
            }
            writer.last_sync = Instant::now();
        }
        let due = writer.flush_due();
        drop(writer);
        if let Some(due) = due {
            let mut queue = lock(&shared.queue);
            queue.flush_due = Some(queue.flush_due.map_or(due, |at| at.min(due)));
        }
    }
}

impl Writer {
    /// When the records written without a flush must be flushed, if there are any.
    fn flush_due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_sync + self.interval)
    }

    /// Writes a batch of operations in order; false once the journal is closed.
    fn write_batch(&mut self, ops: Vec<Op>, shared: &Shared) -> bool {
        let mut acks = Vec::with_capacity(ops.len());
        let mut need_sync = false;
        for op in ops {
            match op {
                Op::Append {
                    bytes: record,
                    sync,
                    ack,
                } => {
                    self.buffer.extend_from_slice(&record);
                    need_sync |= sync;
                    acks.push(ack);
                }
                Op::Rotate {
                    path: next,
                    generation,
                    ack,
                } => {
                    let ok = self.flush(shared) && self.sync(shared);
                    finish(&mut acks, ok);
                    self.dirty = false;
                    let result = match &mut self.output {
                        Some(output) if ok => create_file(&next, generation).map(|new| {
                            info!(journal = %next.display(), "journal rotated");
                            output.replace(new, next);
                            shared
                                .bytes
                                .store(frame::HEADER_LEN as u64, Ordering::Relaxed);
                        }),
                        _ => Err(std::io::Error::other("the journal has failed")),
                    };
                    let _ = ack.send(result);
                }
                Op::Close { ack } => {
                    let ok = self.flush(shared) && self.sync(shared);
                    finish(&mut acks, ok);
                    if let Some(output) = self.output.take()
                        && ok
                    {
                        output.close();
                    }
                    let _ = ack.send(());
                    return false;
                }
            }
        }
        if acks.is_empty() {
            return true;
        }
        let started = Instant::now();
        let mut ok = self.flush(shared);
        if ok && need_sync {
            ok = self.sync(shared);
            self.dirty = false;
            self.last_sync = Instant::now();
        } else if ok {
            self.dirty = true;
        }
        shared.stats.flush.observe(started.elapsed());
        finish(&mut acks, ok);
        true
    }

    /// Writes the buffered records after the last ones; false if the journal has failed.
    fn flush(&mut self, shared: &Shared) -> bool {
        let Some(output) = &mut self.output else {
            self.buffer.clear();
            return false;
        };
        flush(output, &mut self.buffer, &shared.bytes, &shared.failed)
    }

    /// Flushes the file; false if the journal has failed.
    fn sync(&self, shared: &Shared) -> bool {
        self.output
            .as_ref()
            .is_some_and(|output| sync(output, &shared.failed))
    }
}

fn flush(
    output: &mut Output,
    buffer: &mut Vec<u8>,
    bytes: &AtomicU64,
    failed: &AtomicBool,
) -> bool {
    if buffer.is_empty() {
        return !failed.load(Ordering::Relaxed);
    }
    if failed.load(Ordering::Relaxed) {
        buffer.clear();
        return false;
    }
    let result = output.write(buffer);
    let written = buffer.len() as u64;
    buffer.clear();
    match result {
        Ok(()) => {
            bytes.fetch_add(written, Ordering::Relaxed);
            true
        }
        Err(e) => {
            error!(journal = %output.path.display(), error = %e, "journal write failed; refusing further changes");
            failed.store(true, Ordering::Relaxed);
            false
        }
    }
}

fn sync(output: &Output, failed: &AtomicBool) -> bool {
    if failed.load(Ordering::Relaxed) {
        return false;
    }
    match output.sync() {
        Ok(()) => true,
        Err(e) => {
            error!(journal = %output.path.display(), error = %e, "journal flush failed; refusing further changes");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::decode_frames;

    fn record(n: usize) -> Record {
        Record::TokenRevoked {
            digest: format!("{n:064x}"),
        }
    }

    /// The records of a journal file, and how they end.
    fn read(path: &Path) -> (Vec<Record>, frame::Ending) {
        let bytes = std::fs::read(path).unwrap();
        let mut records = Vec::new();
        let ending =
            decode_frames::<Record>(&bytes[frame::HEADER_LEN..], frame::HEADER_LEN, |_, r| {
                records.push(r)
            })
            .unwrap();
        (records, ending)
    }

    async fn append(journal: &Journal, range: std::ops::Range<usize>) {
        let mut commit = Commit::done();
        for n in range {
            commit.join(journal.append(&record(n), Durability::Commands));
        }
        commit.wait().await.unwrap();
    }

    /// A journal writing to a new file `journal-<generation>.wmfj` in `dir`.
    fn new_journal(dir: &Path, generation: u64, config: &StorageConfig) -> (Journal, PathBuf) {
        let path = dir.join(format!("journal-{generation:016}.wmfj"));
        let file = create_file(&path, generation).unwrap();
        let journal = Journal::start(file, path.clone(), frame::HEADER_LEN as u64, config);
        (journal, path)
    }

    #[tokio::test]
    async fn records_go_into_zeros_prepared_ahead_and_a_clean_close_cuts_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig::default();
        let (journal, path) = new_journal(dir.path(), 1, &config);
        append(&journal, 0..500).await;
        // The preparer keeps zeros ahead of the records (a step at least), in the background.
        let started = Instant::now();
        while std::fs::metadata(&path).unwrap().len() < journal.len() + RUNWAY_STEP / 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "no runway");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (records, ending) = read(&path);
        assert_eq!(records.len(), 500);
        assert_eq!(
            ending,
            frame::Ending::Unused {
                offset: journal.len() as usize
            }
        );
        // A crash here (a copy of the file is its image) leaves the zeros: starting again
        // writes after the records, not after the zeros.
        let end = journal.len();
        let image = dir.path().join("journal-0000000000000002.wmfj");
        std::fs::copy(&path, &image).unwrap();
        journal.close().await;
        let again = Journal::start(
            open_file(&image, false).unwrap(),
            image.clone(),
            end,
            &config,
        );
        append(&again, 500..600).await;
        again.close().await;
        // A clean close leaves the file ending with its last record.
        assert_eq!(std::fs::metadata(&image).unwrap().len(), again.len());
        let (records, ending) = read(&image);
        assert_eq!(ending, frame::Ending::Clean);
        assert_eq!(records, (0..600).map(record).collect::<Vec<_>>());
    }

    /// Many requests on a multi-threaded runtime: each writes its batch itself when the file
    /// is free and leaves it to the writer thread otherwise; some drop their commits unwaited.
    /// Every record is written once, each request's in its order, and both ways were taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_write_their_batches_themselves_or_hand_them_over_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            positions_fsync: FsyncPolicy::Interval,
            fsync_interval_ms: 5,
            ..StorageConfig::default()
        };
        let (journal, path) = new_journal(dir.path(), 1, &config);
        let journal = Arc::new(journal);
        const TASKS: usize = 8;
        const EACH: usize = 300;
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let n = t * EACH + i;
                        let durability = if i % 3 == 0 {
                            Durability::Positions
                        } else {
                            Durability::Commands
                        };
                        let commit = journal.append(&record(n), durability);
                        if i % 50 == 49 {
                            // The thread writes it, with whatever is queued after it.
                            drop(commit);
                        } else {
                            commit.wait().await.unwrap();
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        // A rotation takes everything queued before it into the old file.
        let second = dir.path().join("journal-0000000000000002.wmfj");
        journal.rotate(second.clone(), 2).await.unwrap();
        append(&journal, 10_000..10_010).await;
        journal.close().await;

        let (records, ending) = read(&path);
        assert_eq!(ending, frame::Ending::Clean);
        assert_eq!(records.len(), TASKS * EACH);
        let mut next = [0; TASKS];
        for r in records {
            let Record::TokenRevoked { digest } = r else {
                panic!("not ours")
            };
            let n = usize::from_str_radix(&digest, 16).unwrap();
            assert_eq!(n % EACH, next[n / EACH], "out of order or twice: {n}");
            next[n / EACH] += 1;
        }
        assert_eq!(
            read(&second).0,
            (10_000..10_010).map(record).collect::<Vec<_>>()
        );
        let stats = journal.stats();
        let inline = stats.flushes_inline.get();
        assert!(inline > 0, "no request wrote its own batch");
        assert!(
            inline < stats.flush.count(),
            "the writer thread wrote no batch ({inline} of {})",
            stats.flush.count()
        );
    }

    /// One request at a time, each waiting for two records joined into one commit: the file
    /// is always free, so every batch is written by the request, and none by the thread.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joined_commits_are_written_by_the_request_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, path) = new_journal(dir.path(), 1, &StorageConfig::default());
        for n in (0..100).step_by(2) {
            let mut commit = journal.append(&record(n), Durability::Commands);
            commit.join(journal.append(&record(n + 1), Durability::Commands));
            commit.wait().await.unwrap();
        }
        let stats = journal.stats();
        assert!(stats.flush.count() > 0);
        assert_eq!(stats.flushes_inline.get(), stats.flush.count());
        journal.close().await;
        assert_eq!(read(&path).0, (0..100).map(record).collect::<Vec<_>>());
    }

    /// On a single-threaded runtime the writer thread writes everything: a request there must
    /// not hold up the only worker for a flush.
    #[tokio::test]
    async fn a_single_worker_leaves_the_writing_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, path) = new_journal(dir.path(), 1, &StorageConfig::default());
        append(&journal, 0..50).await;
        assert_eq!(journal.stats().flushes_inline.get(), 0);
        assert!(journal.stats().flush.count() > 0);
        journal.close().await;
        assert_eq!(read(&path).0, (0..50).map(record).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn rotation_cuts_the_old_file_and_no_runway_means_plain_appends() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, first) = new_journal(dir.path(), 1, &StorageConfig::default());
        let second = dir.path().join("journal-0000000000000002.wmfj");
        append(&journal, 0..100).await;
        let end = journal.len();
        journal.rotate(second.clone(), 2).await.unwrap();
        assert_eq!(std::fs::metadata(&first).unwrap().len(), end);
        assert_eq!(
            read(&first),
            ((0..100).map(record).collect(), frame::Ending::Clean)
        );
        append(&journal, 100..110).await;
        journal.close().await;
        assert_eq!(read(&second).0, (100..110).map(record).collect::<Vec<_>>());

        let config = StorageConfig {
            journal_runway_bytes: 0,
            ..StorageConfig::default()
        };
        let (plain, third) = new_journal(dir.path(), 3, &config);
        append(&plain, 0..10).await;
        assert_eq!(std::fs::metadata(&third).unwrap().len(), plain.len());
        plain.close().await;
        assert_eq!(read(&third).1, frame::Ending::Clean);
    }
}
