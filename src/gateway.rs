//! `Gateway`: the state every request handler shares, and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::accounts::Accounts;
use crate::clock::now_ms;
use crate::config::Config;
use crate::datasync::SyncStore;
use crate::device::Storage;
use crate::metrics::Metrics;
use crate::outbound::{Resolve, SystemResolver};
use crate::push::Pusher;
use crate::ratelimit::Limits;
use crate::registry::Registry;
use crate::store::seal::Sealer;
use crate::store::{self, DataDir, Journal, SnapshotStats, StoreError};

/// Shared state of a running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub accounts: Arc<Accounts>,
    pub registry: Arc<Registry>,
    /// Every user's synced collections.
    pub sync: Arc<SyncStore>,
    /// Every change is appended here before it is answered.
    pub journal: Journal,
    /// Seals device secrets written to disk.
    pub sealer: Arc<Sealer>,
    /// The locked data directory.
    pub data: Arc<DataDir>,
    /// The OpenID Connect provider owners may sign in with, if one is configured.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Live counters, shown by `/__heartbeat__`.
    pub stats: Stats,
    /// Rate limits against password guessing and command flooding.
    pub limits: Limits,
    /// Counters and histograms for `/metrics`; other modules may register their own there.
    pub metrics: Metrics,
    /// Wakes devices with no poll parked through their push URL.
    pub push: Pusher,
    /// Reaches the storages users linked, and keeps blobs of those who did not.
    pub remote: crate::remote::RemoteStorage,
    /// `true` once shutdown has begun; parked polls watch it and answer `{}` at once.
    shutdown: watch::Sender<bool>,
    /// Serializes snapshots (the periodic one and the final one).
    snapshotting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Device polls parked right now.
    pub parked: AtomicUsize,
    /// Open client connections right now.
    pub connections: AtomicUsize,
    /// Connections refused with 503 since start.
    pub refused: AtomicUsize,
}

/// Counts one parked poll for as long as it lives.
#[derive(Debug)]
pub struct ParkedGuard<'a>(&'a AtomicUsize);

/// A handle on the shutdown signal, for a task that must stop when the server does.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// Owns the background tasks (offline sweep, snapshots); dropping it stops them.
#[derive(Debug)]
pub struct Maintenance(Vec<JoinHandle<()>>);

// === Gateway ===

impl Gateway {
    /// Opens the data directory (locking it), recovers its state, and starts the journal.
    pub fn open(config: Config) -> Result<Arc<Gateway>, StoreError> {
        Gateway::open_with_resolver(config, Arc::new(SystemResolver))
    }

    /// Like [`Gateway::open`], with push URLs' host names resolved by `resolver`.
    pub fn open_with_resolver(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Arc<Gateway>, StoreError> {
        let data = Arc::new(DataDir::lock(&config.server.data_dir)?);
        let accounts = Arc::new(Accounts::new(config.accounts.token_ttl_hours));
        let registry = Arc::new(Registry::default());
        let sync = Arc::new(SyncStore::default());
        let sealer = Arc::new(Sealer::new(config.seal_key().as_deref()));
        let (journal, recovered) =
            store::recover(&data, &config, &accounts, &registry, &sync, &sealer)?;
        info!(
            snapshot = ?recovered.snapshot,
            journals = recovered.journals.len(),
            records = recovered.records,
            accounts = accounts.user_count(),
            devices = registry.len(),
            "state recovered"
        );
        let remote =
            crate::remote::RemoteStorage::new(&config, resolver.clone()).map_err(|source| {
                StoreError::Io {
                    path: data.path.join(crate::remote::link::SECRET_FILE),
                    source,
                }
            })?;
        let push = Pusher::new(&config, resolver);
        let metrics = Metrics::default();
        metrics.register(remote.stats.clone());
        let oidc = crate::oidc::Oidc::new(&config.oidc);
        Ok(Arc::new(Gateway {
            limits: Limits::new(&config.limits),
            push,
            remote,
            config,
            accounts,
            registry,
            sync,
            journal,
            sealer,
            data,
            oidc,
            stats: Stats::default(),
            metrics,
            shutdown: watch::channel(false).0,
            snapshotting: tokio::sync::Mutex::new(()),
        }))
    }

    /// The journal and sealer, for changes.
    pub fn storage(&self) -> Storage<'_> {
        Storage {
            journal: &self.journal,
            sealer: &self.sealer,
        }
    }

    pub fn shutdown_handle(&self) -> Shutdown {
        Shutdown(self.shutdown.subscribe())
    }

    /// Begins shutdown: every parked poll answers at once.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn park_guard(&self) -> ParkedGuard<'_> {
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        ParkedGuard(&self.stats.parked)
    }

    /// Writes a snapshot now (waiting for one already running).
    pub async fn snapshot(&self) -> std::io::Result<SnapshotStats> {
        let _one_at_a_time = self.snapshotting.lock().await;
        let started = std::time::Instant::now();
        let result = store::snapshot(
            &self.data,
            &self.journal,
            &self.accounts,
            &self.registry,
            &self.sync,
            &self.sealer,
            &self.config.devices,
        )
        .await;
        match &result {
            Ok(_) => self.metrics.snapshot_duration.observe(started.elapsed()),
            Err(_) => self.metrics.snapshot_failures.inc(),
        }
        result
    }

    /// The final step of shutdown: a snapshot, then the journal flushed and closed.
    pub async fn close(&self) {
        if !self.journal.has_failed()
            && !self.journal.is_empty()
            && let Err(e) = self.snapshot().await
        {
            error!(error = %e, "final snapshot failed; the journal still has everything");
        }
        self.journal.close().await;
    }

    /// Starts the background tasks: the offline sweep and periodic snapshots.
    pub fn start_maintenance(self: &Arc<Self>) -> Maintenance {
        let sweeper = {
            let gateway = Arc::downgrade(self);
            // Often enough that "offline" shows within seconds of the configured bound.
            let every = Duration::from_secs((self.config.poll.offline_after_secs / 6).clamp(1, 15));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(gateway) = gateway.upgrade() else {
                        return;
                    };
                    gateway.sweep();
                }
            })
        };
        let snapshotter = {
            let gateway = Arc::downgrade(self);
            let interval = Duration::from_secs(self.config.storage.snapshot_interval_secs);
            let max_bytes = self.config.storage.snapshot_journal_bytes;
            tokio::spawn(async move {
                // Checked every second for size; taken on the interval only if there is news.
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last = tokio::time::Instant::now();
                loop {
                    tick.tick().await;
                    let Some(gateway) = gateway.upgrade() else {
                        return;
                    };
                    let journal = &gateway.journal;
                    let due = journal.len() >= max_bytes
                        || (last.elapsed() >= interval && !journal.is_empty());
                    if due && !journal.has_failed() && !gateway.is_shutting_down() {
                        if let Err(e) = gateway.snapshot().await {
                            error!(error = %e, "snapshot failed; will retry");
                        }
                        last = tokio::time::Instant::now();
                    }
                }
            })
        };
        let purger = {
            let gateway = Arc::downgrade(self);
            let every = Duration::from_secs(self.config.sync.purge_interval_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(gateway) = gateway.upgrade() else {
                        return;
                    };
                    gateway.purge_sync();
                    crate::service::remote::expire_uploads(&gateway, now_ms()).await;
                }
            })
        };
        Maintenance(vec![sweeper, snapshotter, purger])
    }

    /// Removes old sync tombstones and expired sync records (journaled); how many went.
    pub fn purge_sync(&self) -> usize {
        self.sync
            .purge_all(now_ms(), &self.config.sync, &self.journal)
    }

    /// One sweep: devices gone silent are shown offline, expired tokens and refilled rate-limit
    /// keys go.
    pub fn sweep(&self) {
        let now = now_ms();
        let offline_after = self.config.poll.offline_after_secs * 1000;
        let limits = &self.config.devices;
        self.registry.for_each(|device| {
            device.sweep_offline(now, offline_after, limits);
        });
        self.accounts.purge_expired();
        self.limits.sweep(now);
        self.accounts.web.purge_expired(&self.config.web);
    }
}

// === ParkedGuard ===

impl Drop for ParkedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === Shutdown ===

impl Shutdown {
    /// Resolves once shutdown has begun (at once if it already has).
    ///
    /// Cancel safety: dropping the future loses nothing; call it again to keep waiting.
    pub async fn wait(&mut self) {
        // An error means the gateway is gone, which is a shutdown too.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }
}

// === Maintenance ===

impl Drop for Maintenance {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}
