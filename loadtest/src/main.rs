//! `loadtest`: plays many devices and owners against a running wheresmyfox gateway.
//!
//! Every device keeps a Hawk-signed poll parked, as a phone would, over its own connection
//! (spread over several 127.0.0.x source addresses). Owners send commands at a steady rate,
//! open-loop: each command is due at a fixed time whatever the server is doing, and its
//! latency is counted from that time, so a slow server cannot hide its slowness by slowing the
//! load down. Every command carries a marker in its message text; the tool checks that each one
//! reaches its device exactly once and is acknowledged.
//!
//! ```text
//! cargo run --release -- --config loadtest/gateway.toml          # a gateway for load tests
//! cargo run --release -p loadtest -- --devices 15000 --rate 1000 --duration 30 --server-pid $(pgrep -n wheresmyfox)
//! ```
//!
//! With `--target nchan` the same load runs against nginx + Nchan (see `nchan.rs`), and
//! `loadtest/compare.sh` runs both, one after the other, and puts the figures side by side.

mod nchan;
mod plot;
mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http::Method;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, watch};

use wheresmyfox::client::{ClientError, DeviceClient, HttpClient, OwnerClient, random_secret};

/// Load test a wheresmyfox gateway.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    /// The gateway's address (or nginx's, with `--target nchan`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: SocketAddr,
    /// What to load: the gateway, or nginx + Nchan for comparison.
    #[arg(long, value_enum, default_value_t = Target::Gateway)]
    pub target: Target,
    /// How many devices to play.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Commands per second, all owners together (open-loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of load once every device is parked.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// The `wait` each device asks for, in seconds.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Spread device connections over this many source addresses, 127.0.0.1 upwards. Each
    /// has about 28,000 ephemeral ports, and every dropped connection holds one in TIME_WAIT
    /// for a minute: reconnect storms need several.
    #[arg(long, default_value_t = 16)]
    pub source_ips: u8,
    /// Owner connections opened at the start (and registering devices concurrently).
    #[arg(long, default_value_t = 32)]
    pub owner_connections: usize,
    /// Most owner connections at once. When a command is due and every open one is still
    /// waiting for an answer, another is opened: owners are many people, and a command is not
    /// held back by an answer to someone else's (a disk flush that takes 50 ms would otherwise
    /// hold every command due meanwhile, and count that wait as theirs).
    #[arg(long, default_value_t = 512)]
    pub owner_connections_max: usize,
    /// What to do once the devices are parked.
    #[arg(long, value_enum, default_value_t = Scenario::Steady)]
    pub scenario: Scenario,
    /// With `--scenario flaky`: the share of polls cut off mid-request or mid-response.
    #[arg(long, default_value_t = 0.1)]
    pub cut_share: f64,
    /// Owner account used for the run (created if missing).
    #[arg(long, default_value = "loadtest@example.com")]
    pub email: String,
    #[arg(long, default_value = "loadtest password")]
    pub password: String,
    /// Keep registered devices in this file and reuse them in later runs.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The server's process id, to measure its memory (RSS, with its child processes: nginx's
    /// workers) before and after parking, and again once the load is over.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Where to write result.json and summary.md (and the plots).
    #[arg(long, default_value = "loadtest/results")]
    pub out: PathBuf,
    /// Also draw latency.svg and parked.svg.
    #[arg(long)]
    pub plot: bool,
    /// Exit non-zero if any command was lost or duplicated, or any error occurred.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// A wheresmyfox gateway: Hawk-signed device polls, owner commands, acknowledgements.
    Gateway,
    /// nginx + Nchan: long-poll subscribers, one channel each, and published messages.
    Nchan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Commands at a steady rate to parked devices.
    Steady,
    /// Every device drops its connection at once and comes back; time until all are parked.
    Storm,
    /// Steady load, with a share of polls cut mid-request or mid-response.
    Flaky,
}

/// A registered device, as kept between runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registered {
    id: String,
    secret: String,
}

/// Counters and histograms shared by every task of the run.
struct Shared {
    started: Instant,
    /// Marker → (device index, due time in µs since start).
    inflight: Mutex<HashMap<u64, (usize, u64)>>,
    /// Markers received at least once.
    seen: Mutex<HashSet<u64>>,
    /// Whether each device has a command on its way (never two: a newer one would replace it).
    busy: Vec<AtomicBool>,
    sent: AtomicU64,
    received: AtomicU64,
    acknowledged: AtomicU64,
    /// Owner connections opened to send commands.
    owner_connections: AtomicU64,
    duplicates: AtomicU64,
    skipped: AtomicU64,
    polls: AtomicU64,
    /// Device requests on their way or parked, as the devices see it.
    in_poll: AtomicU64,
    /// Devices that have polled again since the reconnect storm.
    repolled: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Command-to-device latency, µs.
    latency: Mutex<Histogram<u64>>,
    /// The same by the second (since the start) each command was due in, to two significant
    /// digits: when the slow ones happened.
    latency_by_second: Mutex<BTreeMap<u64, Histogram<u64>>>,
    /// Owner request latency (from the due time to the 202), µs.
    owner_latency: Mutex<Histogram<u64>>,
    /// From a command's due time to the tool starting its request, µs: the load generator's
    /// own share of both latencies above (pacing, and waiting for a free owner connection).
    send_lag: Mutex<Histogram<u64>>,
    /// How late a 1 ms sleep wakes, sampled all through the load, µs: what the machine itself
    /// (the scheduler, other processes, the hypervisor) adds to any latency measured here.
    oversleep: Mutex<Histogram<u64>>,
    /// (seconds since start, parked as the server reports it).
    parked_series: Mutex<Vec<(f64, u64)>>,
}

impl Shared {
    fn micros(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn error(&self, kind: impl Into<String>) {
        *self.errors.lock().unwrap().entry(kind.into()).or_default() += 1;
    }

    /// Replies to this many commands were answered by the server.
    fn acknowledge(&self, replies: usize) {
        self.acknowledged
            .fetch_add(replies as u64, Ordering::Relaxed);
    }

    /// A device saw a marker.
    fn receive(&self, marker: u64) {
        let now = self.micros();
        if !self.seen.lock().unwrap().insert(marker) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if let Some((device, due)) = self.inflight.lock().unwrap().remove(&marker) {
            self.busy[device].store(false, Ordering::Relaxed);
            let took = now.saturating_sub(due).max(1);
            let _ = self.latency.lock().unwrap().record(took);
            let mut by_second = self.latency_by_second.lock().unwrap();
            let second = by_second
                .entry(due / 1_000_000)
                .or_insert_with(|| micros_histogram(2));
            let _ = second.record(took);
        }
    }
}

/// A histogram of microseconds, from 1 µs to a minute, to `significant` digits.
fn micros_histogram(significant: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, significant).expect("valid histogram bounds")
}

fn error_kind(error: &ClientError) -> String {
    match error {
        ClientError::Status { status, body } => {
            format!(
                "http {} errno {}",
                status.as_u16(),
                body["errno"].as_u64().unwrap_or(0)
            )
        }
        ClientError::Timeout => "timeout".into(),
        ClientError::Io(e) => format!("io {:?}", e.kind()),
        ClientError::Http(_) => "http connection".into(),
        ClientError::BadSignature(_) => "bad signature".into(),
        ClientError::Json(_) => "bad json".into(),
    }
}

fn source_ip(index: usize, count: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        1 + (index % count.max(1) as usize) as u8,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.devices == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--devices and --rate must be positive");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let registered = register_devices(&args).await?;
    let shared = Arc::new(Shared {
        started: Instant::now(),
        inflight: Mutex::new(HashMap::new()),
        seen: Mutex::new(HashSet::new()),
        busy: (0..registered.len())
            .map(|_| AtomicBool::new(false))
            .collect(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        owner_connections: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        polls: AtomicU64::new(0),
        in_poll: AtomicU64::new(0),
        repolled: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        latency: Mutex::new(micros_histogram(3)),
        latency_by_second: Mutex::new(BTreeMap::new()),
        owner_latency: Mutex::new(micros_histogram(3)),
        send_lag: Mutex::new(micros_histogram(3)),
        oversleep: Mutex::new(micros_histogram(3)),
        parked_series: Mutex::new(Vec::new()),
    });
    let rss_before = args.server_pid.and_then(rss_bytes);

    // Devices.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (storm_tx, storm_rx) = watch::channel(0u64);
    let cut_share = if args.scenario == Scenario::Flaky {
        args.cut_share
    } else {
        0.0
    };
    let mut device_tasks = Vec::with_capacity(registered.len());
    for (index, device) in registered.iter().enumerate() {
        let http = HttpClient::new(args.server).with_bind(source_ip(index, args.source_ips));
        let (stop, storm) = (stop_rx.clone(), storm_rx.clone());
        device_tasks.push(match args.target {
            Target::Gateway => {
                let client = DeviceClient::new(http, &device.id, &device.secret);
                let task = run_device(client, args.wait, cut_share, shared.clone(), stop, storm);
                tokio::spawn(task)
            }
            Target::Nchan => {
                let channel = device.id.clone();
                let task =
                    nchan::run_subscriber(http, channel, cut_share, shared.clone(), stop, storm);
                tokio::spawn(task)
            }
        });
    }

    // Watch the server's own parked count, and show progress.
    let watcher = tokio::spawn(watch_server(
        args.server,
        args.target,
        shared.clone(),
        stop_rx.clone(),
    ));
    let parked_in = wait_parked(&args, &shared, registered.len(), Duration::from_secs(120)).await;
    let rss_parked = args.server_pid.and_then(rss_bytes);
    eprintln!(
        "\nall {} devices parked in {:.2} s",
        registered.len(),
        parked_in.as_secs_f64()
    );

    let mut storm_recovery = None;
    if args.scenario == Scenario::Storm {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = Instant::now();
        storm_tx.send_replace(1);
        // Every device must first have dropped its connection and polled again on a new one;
        // then the server must hold a parked poll for each.
        while (shared.repolled.load(Ordering::Relaxed) as usize) < registered.len()
            && before.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let back = wait_parked(&args, &shared, registered.len(), Duration::from_secs(120)).await;
        let total = before.elapsed();
        eprintln!(
            "\nreconnect storm: all {} devices parked again {:.2} s after dropping",
            registered.len(),
            total.as_secs_f64()
        );
        storm_recovery = Some(total.as_secs_f64());
        let _ = back;
    }

    // Owners, open-loop.
    let ids: Arc<Vec<String>> = Arc::new(registered.iter().map(|r| r.id.clone()).collect());
    let load_started = Instant::now();
    let probing = Arc::new(AtomicBool::new(true));
    let probe = probe_scheduler(shared.clone(), probing.clone());
    send_commands(&args, &shared, ids).await;
    probing.store(false, Ordering::Relaxed);
    let _ = probe.join();
    let load_secs = load_started.elapsed().as_secs_f64();
    // Give the last commands time to arrive and be acknowledged.
    let grace = Instant::now();
    while !shared.inflight.lock().unwrap().is_empty() && grace.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every device has polled again after its last command by now.
    let rss_after_load = args.server_pid.and_then(rss_bytes);
    stop_tx.send_replace(true);
    for task in device_tasks {
        let _ = task.await;
    }
    let _ = watcher.await;

    let result = report::Result::collect(
        &args,
        &shared,
        registered.len(),
        load_secs,
        parked_in,
        storm_recovery,
        report::ServerRss {
            before: rss_before,
            parked: rss_parked,
            after_load: rss_after_load,
        },
    );
    result.write(&args.out)?;
    if args.plot {
        plot::write(&args.out, &shared)?;
    }
    eprintln!("\n{}", result.summary_markdown());
    // Cuts made on purpose in the flaky scenario are not errors of the server.
    let real_errors: u64 = result
        .errors
        .iter()
        .filter(|(k, _)| !k.starts_with("cut on purpose"))
        .map(|(_, n)| n)
        .sum();
    let unacknowledged = result.received.saturating_sub(result.acknowledged);
    if args.strict
        && (result.lost > 0 || result.duplicated > 0 || unacknowledged > 0 || real_errors > 0)
    {
        bail!(
            "lost {}, duplicated {}, unacknowledged {unacknowledged}, errors {:?}",
            result.lost,
            result.duplicated,
            result.errors
        );
    }
    Ok(())
}

/// Signs in (creating the account if needed) and registers the devices, or reuses them.
/// Nchan needs no registration: each device is a channel name.
async fn register_devices(args: &Args) -> anyhow::Result<Vec<Registered>> {
    if args.target == Target::Nchan {
        let channels = (0..args.devices).map(|i| Registered {
            id: nchan::channel(i),
            secret: String::new(),
        });
        return Ok(channels.collect());
    }
    let mut kept: Vec<Registered> = match &args.state {
        Some(path) if path.exists() => serde_json::from_slice(&std::fs::read(path)?)?,
        _ => Vec::new(),
    };
    kept.truncate(args.devices);
    let owner = OwnerClient::sign_up(args.server, &args.email, &args.password)
        .await
        .context("signing in (is the gateway running, with loadtest/gateway.toml?)")?;
    let missing = args.devices - kept.len();
    if missing > 0 {
        eprintln!("registering {missing} devices ({} reused)", kept.len());
        let connections = args.owner_connections.max(1);
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (token, server, next) = (owner.token.clone(), args.server, next.clone());
            tasks.push(tokio::spawn(async move {
                let mut http = HttpClient::new(server);
                let mut made = Vec::new();
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < missing {
                    let secret = random_secret();
                    let body = json!({"secret": secret, "pushurl": "https://push.example.invalid/loadtest", "name": "load test phone"});
                    let (status, answer) = http.json(Method::POST, "/1/register", Some(&token), Some(&body)).await?;
                    if status != http::StatusCode::OK {
                        anyhow::bail!("registration refused: {status} {answer}");
                    }
                    made.push(Registered { id: answer["id"].as_str().unwrap_or_default().to_owned(), secret });
                }
                Ok(made)
            }));
        }
        for task in tasks {
            kept.extend(task.await??);
        }
    }
    if let Some(path) = &args.state {
        std::fs::write(path, serde_json::to_vec(&kept)?)?;
    }
    Ok(kept)
}

/// One device, running the device loop of docs/protocol.md (section 9): poll with the replies
/// to the commands of the last answer, note the markers of this one, poll again; reconnect
/// with backoff on errors. Replies ride on the next poll, which the server applies before it
/// parks, and are kept until a request carrying them is answered; at the end of the run, the
/// replies still riding on a parked poll are sent once more with `wait=0`, so every reply is
/// seen answered.
///
/// With `cut_share`, that share of polls is abandoned after a random few milliseconds, which
/// drops the connection mid-request or mid-response, as a flaky mobile link does.
async fn run_device(
    mut client: DeviceClient,
    wait: u64,
    cut_share: f64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut storm: watch::Receiver<u64>,
) {
    client.enable_ack();
    let mut replies = Map::new();
    let mut backoff = Duration::from_millis(100);
    let mut storm_seen = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let storm_now = *storm.borrow_and_update();
        if storm_now != storm_seen {
            storm_seen = storm_now;
            shared.repolled.fetch_add(1, Ordering::Relaxed);
        }
        let report = Value::Object(replies.clone());
        let cut_after = (cut_share > 0.0 && rand::thread_rng().gen_bool(cut_share.min(1.0)))
            .then(|| Duration::from_micros(rand::thread_rng().gen_range(0..20_000)));
        shared.in_poll.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::select! {
            result = client.exchange(&report, Some(wait)) => Some(result),
            _ = async { match cut_after { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => None,
            _ = storm.changed() => None,
            _ = stop.changed() => None,
        };
        shared.in_poll.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            None => {
                // Cut off: the connection goes with the abandoned request.
                client.http().disconnect();
                if cut_after.is_some() {
                    shared.error("cut on purpose (flaky link)");
                }
            }
            Some(Ok(commands)) => {
                backoff = Duration::from_millis(100);
                shared.polls.fetch_add(1, Ordering::Relaxed);
                shared.acknowledge(replies.len());
                replies = run_commands(&shared, &commands);
            }
            Some(Err(error)) => {
                shared.error(error_kind(&error));
                let jitter = rand::thread_rng().gen_range(0.5..1.5);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    // The last replies: their parked poll was abandoned above. This answer also ends the
    // abandoned poll on the server, if it is still parked.
    if !replies.is_empty() {
        match client
            .exchange(&Value::Object(replies.clone()), Some(0))
            .await
        {
            Ok(_) => shared.acknowledge(replies.len()),
            Err(error) => shared.error(format!("last replies: {}", error_kind(&error))),
        }
    }
}

/// Notes the markers in a command object; returns the replies to send.
fn run_commands(shared: &Shared, commands: &Map<String, Value>) -> Map<String, Value> {
    let mut replies = Map::new();
    for (key, args) in commands {
        if key == "m" {
            let marker = args["m"]
                .as_str()
                .and_then(|t| t.strip_prefix("lt "))
                .and_then(|m| m.parse().ok());
            if let Some(marker) = marker {
                shared.receive(marker);
            }
        }
        replies.insert(key.clone(), json!({"ok": true}));
    }
    replies
}

/// How many polls the server holds parked right now, as it reports it.
async fn parked_now(target: Target, http: &mut HttpClient) -> Option<u64> {
    match target {
        Target::Gateway => {
            let (_, body) = http
                .json(Method::GET, "/__heartbeat__", None, None)
                .await
                .ok()?;
            body["parked"].as_u64()
        }
        Target::Nchan => nchan::parked(http).await,
    }
}

/// Samples the server's parked count every 250 ms and prints a progress line every second.
async fn watch_server(
    server: SocketAddr,
    target: Target,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = HttpClient::new(server);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let parked = parked_now(target, &mut http).await.unwrap_or(0);
        let at = shared.started.elapsed().as_secs_f64();
        shared.parked_series.lock().unwrap().push((at, parked));
        n += 1;
        if n.is_multiple_of(4) {
            let errors: u64 = shared.errors.lock().unwrap().values().sum();
            eprint!(
                "\r{at:6.1}s  polling {:>6}  parked {:>6}  sent {:>8}  received {:>8}  errors {:>5}   ",
                shared.in_poll.load(Ordering::Relaxed),
                parked,
                shared.sent.load(Ordering::Relaxed),
                shared.received.load(Ordering::Relaxed),
                errors
            );
        }
    }
}

/// Waits until the server reports `count` parked polls; returns how long it took.
async fn wait_parked(args: &Args, shared: &Shared, count: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut http = HttpClient::new(args.server);
    while started.elapsed() < limit {
        if parked_now(args.target, &mut http)
            .await
            .is_some_and(|parked| parked as usize >= count)
        {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.error("not all devices parked in time");
    started.elapsed()
}

/// Sends commands open-loop at `args.rate` for `args.duration` seconds.
async fn send_commands(args: &Args, shared: &Arc<Shared>, ids: Arc<Vec<String>>) {
    let first = match args.target {
        Target::Gateway => {
            let http = HttpClient::new(args.server);
            match OwnerClient::sign_in_with(http, &args.email, &args.password).await {
                Ok(owner) => owner,
                Err(e) => {
                    shared.error(format!("owner sign-in: {}", error_kind(&e)));
                    return;
                }
            }
        }
        // Nchan's publisher needs no credentials.
        Target::Nchan => OwnerClient {
            http: HttpClient::new(args.server),
            token: String::new(),
            userid: String::new(),
        },
    };
    let target = args.target;
    let new_owner = Arc::new({
        let (server, token, userid) = (args.server, first.token, first.userid);
        let shared = shared.clone();
        move || {
            shared.owner_connections.fetch_add(1, Ordering::Relaxed);
            OwnerClient {
                http: HttpClient::new(server),
                token: token.clone(),
                userid: userid.clone(),
            }
        }
    });
    let opened: Vec<OwnerClient> = (0..args.owner_connections.max(1))
        .map(|_| new_owner())
        .collect();
    let pool = Arc::new(Mutex::new(opened));
    let permits = Arc::new(Semaphore::new(
        args.owner_connections_max
            .max(args.owner_connections)
            .max(1),
    ));
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let total = (args.rate * args.duration as f64).round() as u64;
    let mut due_times = pace(Instant::now(), interval, total);
    let mut tasks = Vec::new();
    let devices = shared.busy.len();
    while let Some((n, due)) = due_times.recv().await {
        let due_micros = due.duration_since(shared.started).as_micros() as u64;
        // An idle device: a second command to a busy one would replace the first.
        let device = (0..32)
            .map(|_| rand::thread_rng().gen_range(0..devices))
            .find(|d| !shared.busy[*d].swap(true, Ordering::Relaxed));
        let Some(device) = device else {
            shared.skipped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let marker = n + 1;
        shared
            .inflight
            .lock()
            .unwrap()
            .insert(marker, (device, due_micros));
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let (shared, pool, permits, ids, new_owner) = (
            shared.clone(),
            pool.clone(),
            permits.clone(),
            ids.clone(),
            new_owner.clone(),
        );
        let id = device;
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await;
            let idle = pool.lock().unwrap().pop();
            let mut owner = idle.unwrap_or_else(|| new_owner());
            let lag = shared.micros().saturating_sub(due_micros).max(1);
            let _ = shared.send_lag.lock().unwrap().record(lag);
            let result = match target {
                Target::Gateway => queue_command(&mut owner, &ids[id], marker).await,
                Target::Nchan => nchan::publish(&mut owner.http, &ids[id], marker).await,
            };
            pool.lock().unwrap().push(owner);
            match result {
                Ok(()) => {
                    let took = shared.micros().saturating_sub(due_micros).max(1);
                    let _ = shared.owner_latency.lock().unwrap().record(took);
                }
                Err(kind) => {
                    shared.error(kind);
                    shared.inflight.lock().unwrap().remove(&marker);
                    shared.sent.fetch_sub(1, Ordering::Relaxed);
                    shared.busy[id].store(false, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Hands out the commands' numbers at their due times, from a thread of its own. tokio's
/// timers fire on a 1 ms wheel and round up, so a command due at 3.2 ms would leave at 4 ms
/// and its latency would carry up to a millisecond of the tool's own lateness;
/// `thread::sleep` wakes within tens of microseconds of its deadline.
fn pace(
    start: Instant,
    interval: Duration,
    total: u64,
) -> tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || {
            for n in 0..total {
                let due = start + interval.mul_f64(n as f64);
                if let Some(early) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(early);
                }
                if tx.send((n, due)).is_err() {
                    return;
                }
            }
        })
        .expect("spawning the pacer thread");
    rx
}

/// Sleeps 1 ms at a time while `running`, recording how late each sleep ends. A quiet machine
/// wakes within a few tens of microseconds; a virtual machine whose cores are shared can be
/// milliseconds late, and then so is every server it runs, whatever its code does.
fn probe_scheduler(shared: Arc<Shared>, running: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            let tick = Duration::from_millis(1);
            while running.load(Ordering::Relaxed) {
                let before = Instant::now();
                std::thread::sleep(tick);
                let late = before.elapsed().saturating_sub(tick).as_micros() as u64;
                let _ = shared.oversleep.lock().unwrap().record(late.max(1));
            }
        })
        .expect("spawning the probe thread")
}

/// Queues a marked message command as an owner; `Ok` on 202, else the kind of error.
async fn queue_command(owner: &mut OwnerClient, device: &str, marker: u64) -> Result<(), String> {
    let path = format!("/1/devices/{device}/cmd");
    let command = json!({"m": {"m": format!("lt {marker}")}});
    match owner.call(Method::POST, &path, Some(&command)).await {
        Ok((status, _)) if status == http::StatusCode::ACCEPTED => Ok(()),
        Ok((status, body)) => Err(format!(
            "owner http {} errno {}",
            status.as_u16(),
            body["errno"]
        )),
        Err(e) => Err(format!("owner {}", error_kind(&e))),
    }
}

/// The resident memory of a local process and its children (nginx's workers), from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let own = process_rss(pid)?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .filter_map(process_rss)
        .sum();
    Some(own + children)
}

fn process_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("PPid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
