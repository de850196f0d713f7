//! `Gateway`: the state every request handler shares, and the shutdown signal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accounts::Accounts;
use crate::clock::now_ms;
use crate::config::Config;
use crate::registry::Registry;

/// Shared state of a running gateway.
#[derive(Debug)]
pub struct Gateway {
    pub config: Config,
    pub accounts: Accounts,
    pub registry: Registry,
    /// Live counters, shown by `/__heartbeat__`.
    pub stats: Stats,
    /// `true` once shutdown has begun; parked polls watch it and answer `{}` at once.
    shutdown: watch::Sender<bool>,
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

/// Owns the background maintenance task; dropping it stops the task.
#[derive(Debug)]
pub struct Maintenance(JoinHandle<()>);

// === Gateway ===

impl Gateway {
    pub fn new(config: Config) -> Arc<Gateway> {
        let accounts = Accounts::new(config.accounts.token_ttl_hours);
        Arc::new(Gateway {
            config,
            accounts,
            registry: Registry::default(),
            stats: Stats::default(),
            shutdown: watch::channel(false).0,
        })
    }

    /// Prepares the data directory and builds the gateway over it.
    pub fn open(config: Config) -> std::io::Result<Arc<Gateway>> {
        create_private_dir(&config.server.data_dir)?;
        Ok(Gateway::new(config))
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

    /// Starts the periodic sweep: devices gone silent are shown offline, expired tokens go.
    pub fn start_maintenance(self: &Arc<Self>) -> Maintenance {
        let gateway = Arc::downgrade(self);
        // Often enough that "offline" shows within seconds of the configured bound.
        let every = Duration::from_secs((self.config.poll.offline_after_secs / 6).clamp(1, 15));
        Maintenance(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(gateway) = gateway.upgrade() else {
                    return;
                };
                gateway.sweep();
            }
        }))
    }

    /// One maintenance pass.
    pub fn sweep(&self) {
        let now = now_ms();
        let offline_after = self.config.poll.offline_after_secs * 1000;
        let limits = &self.config.devices;
        self.registry.for_each(|device| {
            device.sweep_offline(now, offline_after, limits);
        });
        self.accounts.purge_expired();
    }
}

/// Creates a directory (and its parents) readable by the server's user only.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %path.display(), "the data directory is readable by other users");
    }
    Ok(())
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
        self.0.abort();
    }
}
