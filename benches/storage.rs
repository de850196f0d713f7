//! Durability numbers: snapshot time and size, restart time, acknowledged commands per second
//! under each fsync policy, and wake latency with and without a snapshot being written.
//!
//! ```text
//! cargo bench --bench storage                      # 1,000,000 devices (several GB of RAM)
//! cargo bench --bench storage -- --devices 100000  # smaller
//! cargo bench --bench storage -- --test            # a quick check (CI)
//! ```
//!
//! Everything runs in process against the library (no HTTP), so the numbers isolate the
//! storage layer; docs/PERFORMANCE.md records them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use wheresmyfox::Config;
use wheresmyfox::accounts::Accounts;
use wheresmyfox::config::FsyncPolicy;
use wheresmyfox::datasync::SyncStore;
use wheresmyfox::device::{DeviceData, Fix, Storage};
use wheresmyfox::ids::{DeviceId, UserId};
use wheresmyfox::protocol::{CommandSet, Position};
use wheresmyfox::registry::Registry;
use wheresmyfox::store::seal::Sealer;
use wheresmyfox::store::{self, DataDir, Journal};

struct Options {
    devices: usize,
    seconds: u64,
    quick: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--test");
    let devices = args
        .windows(2)
        .find(|w| w[0] == "--devices")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(if quick { 2_000 } else { 1_000_000 });
    Options {
        devices,
        seconds: if quick { 1 } else { 5 },
        quick,
    }
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = Config::default();
    println!("# storage benchmark: {} devices", options.devices);

    // 1. A registry of N devices, each with a last position and 5 previous ones.
    let registry = Registry::default();
    let accounts = Accounts::new(24);
    let started = Instant::now();
    let owners: Vec<UserId> = (0..options.devices.div_ceil(5))
        .map(|_| UserId::random())
        .collect();
    for (i, owner) in owners.iter().enumerate() {
        accounts.restore_account(*owner, format!("owner{i}@example.com"), "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA".into(), 0);
    }
    for i in 0..options.devices {
        let fix = |k: u64| Fix {
            position: Position {
                lat: 48.85 + k as f64 * 1e-4,
                lon: 2.35,
                time_ms: 1_763_000_000_000 + k,
                alt: None,
                acc: Some(12.0),
            },
            received_ms: wheresmyfox::clock::now_ms(),
        };
        let mut data = DeviceData::new(
            owners[i / 5],
            format!("Phone {i}"),
            "https://push.example.com/v1/gAAAAABl3x9example".into(),
            1_763_000_000_000,
        );
        data.v = 7;
        data.lockable = Some(true);
        data.last_position = Some(fix(6));
        data.previous_positions = (1..=5).map(fix).collect::<VecDeque<_>>();
        data.last_exchange_ms = Some(1_763_000_000_000);
        registry.restore(
            DeviceId::random(),
            data,
            wheresmyfox::client::random_secret(),
        );
    }
    println!("built in memory: {:.1} s", started.elapsed().as_secs_f64());

    // 2. Snapshot time and size.
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::new(None);
    let started = Instant::now();
    let stats = store::write_snapshot(
        dir.path(),
        2,
        &accounts,
        &registry,
        &SyncStore::default(),
        &sealer,
        &config.devices,
    )
    .unwrap();
    let snapshot_secs = started.elapsed().as_secs_f64();
    println!(
        "snapshot: {} devices, {} accounts, {:.1} MB in {:.2} s ({:.0} bytes/device)",
        stats.devices,
        stats.accounts,
        stats.bytes as f64 / 1e6,
        snapshot_secs,
        stats.bytes as f64 / stats.devices.max(1) as f64
    );
    drop(registry);
    drop(accounts);

    // 3. Restart: recovery from that snapshot (and an empty journal).
    let mut restart_config = Config::for_test(dir.path());
    restart_config.storage = config.storage.clone();
    let started = Instant::now();
    let (journal, recovered) = {
        let data_dir = DataDir::lock(dir.path()).unwrap();
        let accounts = Accounts::new(24);
        let registry = Registry::default();
        let result = store::recover(
            &data_dir,
            &restart_config,
            &accounts,
            &registry,
            &SyncStore::default(),
            &sealer,
        )
        .unwrap();
        assert_eq!(registry.len(), options.devices);
        result
    };
    println!(
        "restart: recovered {} devices in {:.2} s",
        options.devices,
        started.elapsed().as_secs_f64()
    );
    let _ = recovered;
    runtime.block_on(journal.close());
    drop(dir);

    // 4. Acknowledged commands per second, per policy, 64 concurrent writers.
    for policy in [FsyncPolicy::Always, FsyncPolicy::Interval] {
        let rate = runtime.block_on(commands_per_second(policy, options.seconds));
        println!(
            "queued commands acknowledged: {rate:.0}/s with fsync = {policy:?} (64 concurrent owners)"
        );
    }

    // 5. Wake latency with and without a snapshot being written at the same time.
    let devices = if options.quick {
        1_000
    } else {
        options.devices.min(200_000)
    };
    for during_snapshot in [false, true] {
        let (p50, p99, max, snapshots) =
            runtime.block_on(wake_latency(devices, during_snapshot, options.seconds));
        println!(
            "wake latency over {devices} parked devices{}: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            if during_snapshot {
                format!(", {snapshots} snapshots written meanwhile")
            } else {
                String::new()
            },
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        );
    }
}

/// Opens a fresh store (in a temp dir) with one device per writer.
/// The store's pieces; the `DataDir` holds the directory's lock while the benchmark runs.
type Fresh = (
    tempfile::TempDir,
    DataDir,
    Arc<Registry>,
    Arc<Journal>,
    Arc<Accounts>,
);

fn fresh_store(policy: FsyncPolicy, devices: usize) -> Fresh {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.storage.fsync = policy;
    let data_dir = DataDir::lock(dir.path()).unwrap();
    let accounts = Arc::new(Accounts::new(24));
    let registry = Arc::new(Registry::default());
    let (journal, _) = store::recover(
        &data_dir,
        &config,
        &accounts,
        &registry,
        &SyncStore::default(),
        &Sealer::new(None),
    )
    .unwrap();
    let owner = UserId::random();
    for i in 0..devices {
        let data = DeviceData::new(
            owner,
            format!("Phone {i}"),
            "https://push.example.com/x".into(),
            0,
        );
        registry.restore(
            DeviceId::random(),
            data,
            wheresmyfox::client::random_secret(),
        );
    }
    (dir, data_dir, registry, Arc::new(journal), accounts)
}

async fn commands_per_second(policy: FsyncPolicy, seconds: u64) -> f64 {
    let (_dir, _lock, registry, journal, _) = fresh_store(policy, 64);
    let sealer = Arc::new(Sealer::new(None));
    let limits = Config::default().devices;
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let command = CommandSet::from_json(&json!({"r":{"p":10,"d":60}})).unwrap();
    let mut tasks = Vec::new();
    for device in registry.devices() {
        let (journal, sealer, limits, done, stop, command) = (
            journal.clone(),
            sealer.clone(),
            limits.clone(),
            done.clone(),
            stop.clone(),
            command.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let storage = Storage {
                    journal: &journal,
                    sealer: &sealer,
                };
                let (_, commit) = device.queue(command.clone(), &limits, storage);
                commit.wait().await.unwrap();
                device.mailbox.notify();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for task in tasks {
        task.await.unwrap();
    }
    journal.close().await;
    done.load(Ordering::Relaxed) as f64 / elapsed
}

async fn wake_latency(
    devices: usize,
    during_snapshot: bool,
    seconds: u64,
) -> (Duration, Duration, Duration, u64) {
    let (dir, _lock, registry, journal, accounts) = fresh_store(FsyncPolicy::Always, devices);
    let sealer = Arc::new(Sealer::new(None));
    let limits = Config::default().devices;
    let all = registry.devices();
    // Every device parks a waiter that records when it wakes.
    let (woke_tx, mut woke_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    for (index, device) in all.iter().enumerate() {
        let (device, woke) = (device.clone(), woke_tx.clone());
        tokio::spawn(async move {
            loop {
                device.mailbox.park().await;
                if woke.send((index, Instant::now())).is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let snapshots = Arc::new(AtomicU64::new(0));
    let snapshotter = during_snapshot.then(|| {
        let (stop, snapshots, registry, accounts, sealer, limits) = (
            stop.clone(),
            snapshots.clone(),
            registry.clone(),
            accounts.clone(),
            sealer.clone(),
            limits.clone(),
        );
        let path = dir.path().to_owned();
        std::thread::spawn(move || {
            let mut generation = 100;
            while !stop.load(Ordering::Relaxed) {
                generation += 1;
                store::write_snapshot(
                    &path,
                    generation,
                    &accounts,
                    &registry,
                    &SyncStore::default(),
                    &sealer,
                    &limits,
                )
                .unwrap();
                let _ = std::fs::remove_file(
                    path.join(format!("snapshot-{:016}.wmfs", generation - 1)),
                );
                snapshots.fetch_add(1, Ordering::Relaxed);
            }
        })
    });
    let command = CommandSet::from_json(&json!({"r":{"p":10,"d":60}})).unwrap();
    let mut latencies = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut next = 0usize;
    while Instant::now() < deadline {
        next = (next * 7919 + 13) % all.len();
        let device = &all[next];
        let started = Instant::now();
        let storage = Storage {
            journal: &journal,
            sealer: &sealer,
        };
        let (_, commit) = device.queue(command.clone(), &limits, storage);
        commit.wait().await.unwrap();
        device.mailbox.notify();
        loop {
            let (index, at) = woke_rx.recv().await.unwrap();
            if index == next {
                latencies.push(at - started);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(thread) = snapshotter {
        thread.join().unwrap();
    }
    journal.close().await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (
        at(0.5),
        at(0.99),
        *latencies.last().unwrap(),
        snapshots.load(Ordering::Relaxed),
    )
}
