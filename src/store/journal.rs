//! `Journal`: the append-only log every state change goes through before it is answered.
//!
//! One writer thread owns the file. Requests hand it framed records through a channel and
//! wait for its acknowledgement; it writes whatever has queued up in one `write`, then one
//! `fdatasync` covers the whole batch (group commit), so under load many requests share each
//! flush. Records whose policy is `interval` are acknowledged once written, and flushed by the
//! next batch that needs it or by the interval timer.
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
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

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
    /// Starts the writer on an open journal file whose records end at `len` (zeros may follow).
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
            let runway = config.journal_runway_bytes;
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || {
                    let output = Output::new(file, path, len, runway);
                    write_loop(rx, output, failed, bytes, interval, &stats)
                })
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

fn write_loop(
    rx: mpsc::Receiver<Op>,
    mut output: Output,
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
            if sync(&output, &failed) {
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
                    let ok =
                        flush(&mut output, &mut buffer, &bytes, &failed) && sync(&output, &failed);
                    finish(&mut acks, ok);
                    dirty = false;
                    let result = if ok {
                        create_file(&next, generation).map(|new| {
                            info!(journal = %next.display(), "journal rotated");
                            output.replace(new, next);
                            bytes.store(frame::HEADER_LEN as u64, Ordering::Relaxed);
                        })
                    } else {
                        Err(std::io::Error::other("the journal has failed"))
                    };
                    let _ = ack.send(result);
                }
                Op::Close { ack } => {
                    let ok =
                        flush(&mut output, &mut buffer, &bytes, &failed) && sync(&output, &failed);
                    finish(&mut acks, ok);
                    if ok {
                        output.close();
                    }
                    let _ = ack.send(());
                    return;
                }
            }
        }
        if acks.is_empty() {
            continue;
        }
        let started = Instant::now();
        let mut ok = flush(&mut output, &mut buffer, &bytes, &failed);
        if ok && need_sync {
            ok = sync(&output, &failed);
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
