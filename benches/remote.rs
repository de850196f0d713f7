//! What linking a storage of one's own costs: the same requests against a user whose data is
//! kept by the server (embedded) and a user who linked a WebDAV folder (`wsgidav` on
//! loopback): single-record writes, reads of 100-record pages, and an 8 MiB blob up and down.
//!
//! ```text
//! cargo bench --bench remote             # full run (about half a minute)
//! cargo bench --bench remote -- --test   # a quick check (CI)
//! ```
//!
//! Needs `pip install wsgidav cheroot`; without it the benchmark says SKIP. docs/PERFORMANCE.md
//! records the numbers.

// The tests' harness: the gateway on a loopback port, and the WebDAV server.
#[path = "../tests/support/mod.rs"]
mod support;

use support::{TestServer, webdav};

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use wheresmyfox::client::{HttpClient, OwnerClient};
use wheresmyfox::remote::link::{KEY_HEADER, StorageKey};

const TIMEOUT: Duration = Duration::from_secs(30);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

/// One user's requests: bearer token, and the storage key when they linked one.
struct Caller {
    http: HttpClient,
    headers: Vec<(HeaderName, String)>,
}

impl Caller {
    async fn send(&mut self, method: Method, path: &str, body: Bytes, kind: &str) -> Value {
        let mut headers = self.headers.clone();
        if !kind.is_empty() {
            headers.push((header::CONTENT_TYPE, kind.to_owned()));
        }
        let reply = self
            .http
            .send(method, path, &headers, body, TIMEOUT)
            .await
            .unwrap();
        assert!(
            reply.status == StatusCode::OK || reply.status == StatusCode::CREATED,
            "{path}: {} {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        );
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
    }

    async fn json(&mut self, method: Method, path: &str, body: &Value) -> Value {
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap());
        self.send(method, path, bytes, "application/json").await
    }
}

/// Latencies of one measurement, taken for a fixed time.
struct Timer {
    label: String,
    started: Instant,
    deadline: Instant,
    latencies: Vec<Duration>,
}

impl Timer {
    fn new(label: String, seconds: u64) -> Timer {
        let started = Instant::now();
        Timer {
            label,
            started,
            deadline: started + Duration::from_secs(seconds),
            latencies: Vec::new(),
        }
    }

    fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn done(&mut self, since: Instant) {
        self.latencies.push(since.elapsed());
    }

    fn print(mut self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.latencies.sort();
        println!(
            "{}: {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} done)",
            self.label,
            self.latencies.len() as f64 / elapsed,
            percentile(&self.latencies, 0.5),
            percentile(&self.latencies, 0.99),
            self.latencies.len()
        );
    }
}

async fn run(caller: &mut Caller, label: &str, seconds: u64, blob_mib: usize) {
    let body = json!({ "payload": "x".repeat(4096) });
    let mut timer = Timer::new(format!("{label}: PUT one 4 KiB record"), seconds);
    while timer.running() {
        let at = Instant::now();
        let path = format!("/1/storage/bench/r{}", timer.latencies.len() % 100);
        caller.json(Method::PUT, &path, &body).await;
        timer.done(at);
    }
    timer.print();
    let mut timer = Timer::new(format!("{label}: GET a page of 100 records"), seconds);
    while timer.running() {
        let at = Instant::now();
        let page = caller
            .send(Method::GET, "/1/storage/bench?limit=100", Bytes::new(), "")
            .await;
        assert_eq!(page["records"].as_array().map(Vec::len), Some(100));
        timer.done(at);
    }
    timer.print();

    let chunk: usize = 1024 * 1024;
    let size = blob_mib * chunk;
    let data = Bytes::from(vec![7u8; chunk]);
    let started = Instant::now();
    let created = caller
        .json(Method::POST, "/1/blobs", &json!({ "size": size }))
        .await;
    let id = created["blob_id"].as_str().unwrap().to_owned();
    for index in 0..blob_mib {
        let path = format!("/1/blobs/{id}/chunks/{index}");
        caller
            .send(Method::PUT, &path, data.clone(), "application/octet-stream")
            .await;
    }
    let up = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for index in 0..blob_mib {
        let path = format!("/1/blobs/{id}/chunks/{index}");
        caller.send(Method::GET, &path, Bytes::new(), "").await;
    }
    let down = started.elapsed().as_secs_f64();
    println!(
        "{label}: blob of {blob_mib} MiB in 1 MiB chunks: up {:.1} MiB/s, down {:.1} MiB/s",
        blob_mib as f64 / up,
        blob_mib as f64 / down
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let Some(dav) = webdav::dav_or_skip("the remote storage benchmark") else {
        return;
    };
    let (seconds, blob_mib) = if quick { (1, 2) } else { (5, 8) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let server = TestServer::start_with(|config| {
            config.remote_storage.allow_http = true;
            config.remote_storage.allowed_cidrs = vec!["127.0.0.0/8".into()];
        })
        .await;
        let addr = server.addr;
        println!(
            "# remote storage benchmark: fsync = {:?}, {seconds} s per measurement{}",
            server.gateway.config.storage.fsync,
            if quick { " (quick)" } else { "" }
        );
        for linked in [false, true] {
            let email = format!("bench-{linked}@example.com");
            let owner = OwnerClient::sign_up(addr, &email, "correct horse battery")
                .await
                .unwrap();
            let mut caller = Caller {
                http: HttpClient::new(addr),
                headers: vec![(header::AUTHORIZATION, format!("Bearer {}", owner.token))],
            };
            let label = if linked {
                let key = StorageKey::random();
                caller.headers.push((
                    HeaderName::from_static(KEY_HEADER),
                    key.encode().to_string(),
                ));
                let link = json!({
                    "url": dav.url(), "username": webdav::USER, "password": webdav::PASSWORD,
                });
                caller.json(Method::PUT, "/1/remote-storage", &link).await;
                "linked WebDAV"
            } else {
                "embedded"
            };
            run(&mut caller, label, seconds, blob_mib).await;
        }
        server.stop().await;
    });
}
