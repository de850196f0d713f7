//! Criterion benchmarks of the hot paths: Hawk verification, command validation, the mailbox
//! park/wake round trip, and a whole signed device exchange over loopback.
//!
//! `cargo bench --bench gateway`; numbers are recorded in docs/PERFORMANCE.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use hawk::{Credentials, RequestBuilder};
use serde_json::json;

use wheresmyfox::client::OwnerClient;
use wheresmyfox::hawk_auth::{self, Signed};
use wheresmyfox::mailbox::{Mailbox, Wake};
use wheresmyfox::protocol::{CommandSet, DeviceReport};
use wheresmyfox::{Config, Gateway, server};

fn hawk_verification(c: &mut Criterion) {
    let secret = "9f86d081884c7d659a2feaa0c55ad015";
    let credentials = Credentials {
        id: "4c1f0e5d2a9b8c7d6e5f4a3b2c1d0e9f".into(),
        key: hawk_auth::key_for(secret),
    };
    let body =
        br#"{"r":{"ok":true},"t":{"ok":true,"la":37.388017,"lo":-122.0833,"ti":1763762400}}"#;
    let path = "/1/cmd/4c1f0e5d2a9b8c7d6e5f4a3b2c1d0e9f?wait=50";
    let hash = hawk_auth::payload_hash("application/json", body);
    let header = RequestBuilder::new("POST", "127.0.0.1", 8080, path)
        .hash(&hash[..])
        .request()
        .make_header(&credentials)
        .unwrap();
    let value = format!("Hawk {header}");
    let key = hawk_auth::key_for(secret);
    let signed = Signed {
        method: "POST",
        host: "127.0.0.1",
        port: 8080,
        path,
    };
    c.bench_function("hawk/parse_and_verify_request", |b| {
        b.iter(|| {
            let parsed = hawk_auth::parse_authorization(black_box(&value)).unwrap();
            hawk_auth::verify(
                &parsed,
                &key,
                &signed,
                "application/json",
                body,
                Duration::from_secs(60),
                SystemTime::now(),
            )
            .unwrap();
        })
    });
    let parsed = hawk_auth::parse_authorization(&value).unwrap();
    c.bench_function("hawk/sign_response", |b| {
        b.iter(|| {
            hawk_auth::sign_response(
                &parsed,
                &key,
                &signed,
                black_box(br#"{"r":{"p":10,"d":60}}"#),
            )
        })
    });
}

fn validation(c: &mut Criterion) {
    let command = br#"{"l":{"c":"0123"},"m":{"n":"+1 (408) 555-0100","m":"Please return me!"},"r":{"p":30,"d":300}}"#;
    c.bench_function("protocol/validate_command_object", |b| {
        b.iter(|| CommandSet::from_slice(black_box(command)).unwrap())
    });
    let report = br#"{"l":{"ok":true},"r":{"ok":false,"error":"muted"},"t":{"ok":true,"la":37.388017,"lo":-122.0833,"ti":1763762400,"acc":20}}"#;
    c.bench_function("protocol/parse_device_report", |b| {
        b.iter(|| DeviceReport::from_slice(black_box(report)).unwrap())
    });
}

fn park_wake(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mailbox = Arc::new(Mailbox::default());
    c.bench_function("mailbox/park_then_wake_across_tasks", |b| {
        b.to_async(&runtime).iter(|| {
            let mailbox = mailbox.clone();
            async move {
                let waiter = {
                    let mailbox = mailbox.clone();
                    tokio::spawn(async move { mailbox.park().await })
                };
                while !mailbox.is_parked() {
                    tokio::task::yield_now().await;
                }
                assert!(mailbox.notify());
                assert_eq!(waiter.await.unwrap(), Wake::Notified);
            }
        })
    });
}

/// Devices polled in turn: a real phone polls a few times a minute, and the server refuses
/// more requests from one device within one second than its nonce cache holds.
const DEVICES: usize = 256;

fn device_exchange(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut owner, mut devices) = runtime.block_on(async {
        let mut config = Config::for_test(dir.path());
        config.devices.max_per_user = DEVICES;
        // One owner sends every command of the run, thousands a second.
        config.limits.commands_owner_per_minute = 0;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::open(config).unwrap();
        tokio::spawn(server::run(listener, gateway, std::future::pending()));
        let mut owner = OwnerClient::sign_up(addr, "bench@example.com", "correct horse battery")
            .await
            .unwrap();
        let mut devices = Vec::new();
        for i in 0..DEVICES {
            devices.push(
                owner
                    .register_device(&format!("bench phone {i}"))
                    .await
                    .unwrap(),
            );
        }
        (owner, devices)
    });
    let mut turn = 0;
    c.bench_function("loopback/signed_empty_poll", |b| {
        b.iter(|| {
            turn = (turn + 1) % DEVICES;
            runtime
                .block_on(devices[turn].exchange(&json!({}), Some(0)))
                .unwrap()
        })
    });
    c.bench_function("loopback/queue_command_then_poll_and_ack", |b| {
        b.iter(|| {
            turn = (turn + 1) % DEVICES;
            let device = &mut devices[turn];
            let id = device.id().to_owned();
            runtime.block_on(async {
                owner
                    .command(&id, &json!({"r":{"p":1,"d":1}}))
                    .await
                    .unwrap();
                let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
                assert!(commands.contains_key("r"));
                device
                    .exchange(&json!({"r":{"ok":true}}), Some(0))
                    .await
                    .unwrap();
            })
        })
    });
}

criterion_group!(
    benches,
    hawk_verification,
    validation,
    park_wake,
    device_exchange
);
criterion_main!(benches);
