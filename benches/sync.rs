//! Data sync numbers: records written per second over loopback HTTP with the default
//! `storage.fsync = "always"` (single-record PUTs and 100-record batches), and the wake latency
//! of the change feed with 10,000 feeds parked.
//!
//! ```text
//! cargo bench --bench sync             # full run (about a minute)
//! cargo bench --bench sync -- --test   # a quick check (CI)
//! ```
//!
//! docs/PERFORMANCE.md records the numbers.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use ring::digest::{SHA256, digest};
use serde_json::{Value, json};

use wheresmyfox::client::HttpClient;
use wheresmyfox::ids::UserId;
use wheresmyfox::{Config, Gateway, server};

struct Options {
    seconds: u64,
    /// Feeds parked for the wake-latency measurement.
    feeds: usize,
    /// Of those, how many are HTTP connections (each costs two open files here).
    http_feeds: usize,
    quick: bool,
}

fn options() -> Options {
    let quick = std::env::args().any(|a| a == "--test");
    Options {
        seconds: if quick { 1 } else { 5 },
        feeds: if quick { 500 } else { 10_000 },
        http_feeds: if quick { 100 } else { 2_000 },
        quick,
    }
}

/// A user with a bearer token, made without sign-up (whose argon2 would dominate the setup).
fn user(gateway: &Gateway, n: usize) -> String {
    let user = UserId::random();
    gateway.accounts.restore_account(
        user,
        format!("bench{n}@example.com"),
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"
            .into(),
        0,
    );
    let token = format!("bench-token-{n}-{user}");
    let hex: String = digest(&SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    gateway
        .accounts
        .restore_token(&hex, user, wheresmyfox::clock::now_ms() + 3_600_000);
    token
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `writers` connections (one user each) writing for `seconds`; `batch` records per request.
async fn writes(addr: std::net::SocketAddr, tokens: &[String], seconds: u64, batch: usize) {
    let payload = "x".repeat(256);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for token in tokens {
        let (token, payload) = (token.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut http = HttpClient::new(addr);
            let mut latencies = Vec::new();
            let mut records = 0usize;
            let mut n = 0usize;
            while Instant::now() < deadline {
                let started = Instant::now();
                let (status, body) = if batch == 1 {
                    n += 1;
                    let path = format!("/1/storage/bench/r{}", n % 1000);
                    http.json(
                        Method::PUT,
                        &path,
                        Some(&token),
                        Some(&json!({ "payload": payload })),
                    )
                    .await
                    .unwrap()
                } else {
                    let entries: Vec<Value> = (0..batch)
                        .map(|_| {
                            n += 1;
                            json!({ "id": format!("r{}", n % 1000), "payload": payload })
                        })
                        .collect();
                    http.json(
                        Method::POST,
                        "/1/storage/bench",
                        Some(&token),
                        Some(&Value::Array(entries)),
                    )
                    .await
                    .unwrap()
                };
                assert_eq!(status, StatusCode::OK, "{body}");
                latencies.push(started.elapsed());
                records += batch;
            }
            (records, latencies)
        }));
    }
    let mut records = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (r, l) = task.await.unwrap();
        records += r;
        latencies.extend(l);
    }
    latencies.sort();
    println!(
        "writes: {} connections, {} record(s) per request: {:.0} records/s, {:.0} requests/s; latency p50 {:.2} ms, p99 {:.2} ms",
        tokens.len(),
        batch,
        records as f64 / seconds as f64,
        latencies.len() as f64 / seconds as f64,
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
    );
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_test(dir.path());
        config.sync.max_feeds = options.feeds + 100;
        config.sync.max_feeds_per_user = 16;
        config.server.max_connections = 19_000;
        let listener = server::bind(config.server.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::open(config).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server::run(listener, gateway.clone(), async {
            let _ = stopped.await;
        }));
        println!(
            "# sync benchmark: fsync = {:?}, {} s per measurement{}",
            gateway.config.storage.fsync,
            options.seconds,
            if options.quick { " (quick)" } else { "" }
        );

        // 1. Records written per second, acknowledged only once flushed to disk.
        let tokens: Vec<String> = (0..32).map(|n| user(&gateway, n)).collect();
        writes(addr, &tokens[..1], options.seconds, 1).await;
        writes(addr, &tokens, options.seconds, 1).await;
        writes(addr, &tokens, options.seconds, 100).await;

        // 2. Wake latency with `feeds` feeds parked, 10 per user. Most wait in process on the
        //    same `watch` the handler waits on (10,000 HTTP feeds would need 20,000 open files
        //    in this one process, the most it may hold); `http_feeds` of them are real parked
        //    `GET /1/changes` requests.
        let per_user = 10;
        let users = options.feeds / per_user;
        let feed_tokens: Vec<String> = (0..users).map(|n| user(&gateway, 1000 + n)).collect();
        let user_ids: Vec<UserId> = feed_tokens
            .iter()
            .map(|t| gateway.accounts.authenticate(t).unwrap())
            .collect();
        let (woke_tx, mut woke_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
        let http_users = options.http_feeds / per_user;
        for (index, (token, user)) in feed_tokens.iter().zip(&user_ids).enumerate() {
            for _ in 0..per_user {
                let woke = woke_tx.clone();
                if index < http_users {
                    let token = token.clone();
                    tokio::spawn(async move {
                        let mut http = HttpClient::new(addr);
                        let (status, _) = http
                            .json(Method::GET, "/1/changes?since=0&wait=300", Some(&token), None)
                            .await
                            .unwrap();
                        assert_eq!(status, StatusCode::OK);
                        let _ = woke.send((index, Instant::now()));
                    });
                } else {
                    let mut revisions = gateway.sync.user(*user).subscribe();
                    tokio::spawn(async move {
                        let _ = revisions.wait_for(|rev| *rev > 0).await;
                        let _ = woke.send((index, Instant::now()));
                    });
                }
            }
        }
        drop(woke_tx);
        // Until every HTTP feed is parked.
        while gateway.sync.parked_feeds.load(std::sync::atomic::Ordering::Relaxed) < http_users * per_user {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "feeds: {} parked ({} of them HTTP requests), {} per user",
            users * per_user,
            http_users * per_user,
            per_user
        );
        // One write per sampled user, one at a time; latency from sending it to each wake.
        let mut in_process = Vec::new();
        let mut over_http = Vec::new();
        let mut writer = HttpClient::new(addr);
        let sample: Vec<usize> = (0..users).step_by((users / 200).max(1)).collect();
        for &index in &sample {
            let written = Instant::now();
            let (status, _) = writer
                .json(
                    Method::PUT,
                    "/1/storage/tabs/t",
                    Some(&feed_tokens[index]),
                    Some(&json!({ "payload": "x" })),
                )
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK);
            let mut woken = 0;
            while woken < per_user {
                let (which, at) = woke_rx.recv().await.unwrap();
                assert_eq!(which, index);
                woken += 1;
                let latency = at.duration_since(written);
                if index < http_users {
                    over_http.push(latency);
                } else {
                    in_process.push(latency);
                }
            }
        }
        for (name, mut latencies) in [("in process", in_process), ("over HTTP", over_http)] {
            latencies.sort();
            println!(
                "wake latency ({name}, from sending the write to the feed's answer; includes the write's fsync): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} wakes",
                ms(percentile(&latencies, 0.5)),
                ms(percentile(&latencies, 0.99)),
                ms(percentile(&latencies, 1.0)),
                latencies.len()
            );
        }
        gateway.begin_shutdown();
        let _ = stop.send(());
        let _ = serving.await;
    });
}
