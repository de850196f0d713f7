//! Operating the server: `/metrics` moving with real traffic, Dockerflow endpoints, the
//! separate metrics listener, `check-config`, and structured (JSON) logs with request spans.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::{TestServer, send_signed};
use wheresmyfox::client::HttpClient;
use wheresmyfox::server;

/// One scrape: every sample, keyed by its name and labels as written (`a_total{x="y"}`).
async fn scrape(http: &mut HttpClient) -> HashMap<String, f64> {
    let reply = support::get(http, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[http::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad sample {line}"));
        assert!(
            samples.insert(key.to_owned(), value).is_none(),
            "duplicate {key}"
        );
    }
    samples
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    let get = |m: &HashMap<String, f64>| {
        *m.get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {m:?}"))
    };
    get(after) - get(before)
}

#[tokio::test]
async fn metrics_follow_a_command_from_queue_to_acknowledgement() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("metrics").await;
    let id = device.id().to_owned();
    device.enable_ack();
    let mut http = server.http();
    let start = scrape(&mut http).await;
    assert_eq!(start["wheresmyfox_polls_parked"], 0.0);

    // The device parks; the gauge shows it.
    let poll = tokio::spawn(async move {
        let commands = device.exchange(&json!({}), Some(30)).await.unwrap();
        (device, commands)
    });
    server.until_parked(1).await;
    let parked = scrape(&mut http).await;
    assert_eq!(parked["wheresmyfox_polls_parked"], 1.0);
    assert!(parked["wheresmyfox_connections_open"] >= 3.0, "{parked:?}");

    // Queue one command: it wakes the parked poll.
    let queued = owner
        .command(&id, &json!({"r":{"p":1,"d":10}}))
        .await
        .unwrap();
    assert_eq!(queued["parked"], json!(true));
    let (mut device, commands) = poll.await.unwrap();
    assert_eq!(commands["r"], json!({"p":1,"d":10}));
    let delivered = scrape(&mut http).await;
    assert_eq!(delivered["wheresmyfox_polls_parked"], 0.0);
    assert_eq!(
        delta(&start, &delivered, "wheresmyfox_commands_queued_total"),
        1.0
    );
    assert_eq!(
        delta(&start, &delivered, "wheresmyfox_commands_delivered_total"),
        1.0
    );
    assert_eq!(
        delta(
            &start,
            &delivered,
            "wheresmyfox_polls_answered_total{reason=\"delivered\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&start, &delivered, "wheresmyfox_wake_latency_seconds_count"),
        1.0
    );
    assert_eq!(
        delta(
            &start,
            &delivered,
            "wheresmyfox_wake_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &start,
            &delivered,
            "wheresmyfox_commands_acknowledged_total"
        ),
        0.0
    );

    // The device confirms receipt (ack) and reports the outcome.
    let after = device
        .exchange(&json!({"r":{"ok":true}}), Some(0))
        .await
        .unwrap();
    assert!(after.is_empty());
    let acked = scrape(&mut http).await;
    assert_eq!(
        delta(&start, &acked, "wheresmyfox_commands_acknowledged_total"),
        1.0
    );
    assert_eq!(
        delta(
            &start,
            &acked,
            "wheresmyfox_commands_receipt_confirmed_total"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &start,
            &acked,
            "wheresmyfox_polls_answered_total{reason=\"immediate\"}"
        ),
        1.0
    );
    assert!(delta(&start, &acked, "wheresmyfox_journal_records_total") >= 3.0);
    assert!(delta(&start, &acked, "wheresmyfox_journal_flush_seconds_count") >= 1.0);

    // A forged signature is refused and counted under its reason.
    let path = format!("/1/cmd/{id}");
    let reply = send_signed(&mut device, &path, b"{\"signed\":1}", b"{}").await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let refused = scrape(&mut http).await;
    assert_eq!(
        delta(
            &acked,
            &refused,
            "wheresmyfox_hawk_failures_total{reason=\"mac\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(
            &acked,
            &refused,
            "wheresmyfox_polls_answered_total{reason=\"refused\"}"
        ),
        1.0
    );

    // A snapshot is timed.
    server.gateway.snapshot().await.unwrap();
    let snapped = scrape(&mut http).await;
    assert_eq!(
        delta(
            &refused,
            &snapped,
            "wheresmyfox_snapshot_duration_seconds_count"
        ),
        1.0
    );
    assert_eq!(snapped["wheresmyfox_snapshot_failures_total"], 0.0);
    assert_eq!(snapped["wheresmyfox_devices"], 1.0);
}

#[tokio::test]
async fn polls_ending_without_commands_are_counted_by_reason() {
    let server = TestServer::start().await;
    let (_owner, mut device) = server.owner_and_device("reasons").await;
    let mut http = server.http();
    let start = scrape(&mut http).await;
    assert!(
        device
            .exchange(&json!({}), Some(1))
            .await
            .unwrap()
            .is_empty()
    );
    let after = scrape(&mut http).await;
    assert_eq!(
        delta(
            &start,
            &after,
            "wheresmyfox_polls_answered_total{reason=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        delta(&start, &after, "wheresmyfox_wake_latency_seconds_count"),
        0.0
    );
}

#[tokio::test]
async fn metrics_can_be_served_on_their_own_address_only() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server::serve_metrics(listener, server.gateway.clone()));
    let mut metrics = HttpClient::new(addr);
    let samples = scrape(&mut metrics).await;
    assert!(samples.contains_key("wheresmyfox_polls_parked"));
    let (status, _) = metrics
        .json(Method::GET, "/1/devices", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The public listener no longer shows them.
    let (status, body) = server
        .http()
        .json(Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // It stops with the server.
    server.stop().await;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the metrics listener stops with the server")
        .unwrap();
}

#[tokio::test]
async fn dockerflow_version_and_heartbeat() {
    let server = TestServer::start().await;
    let mut http = server.http();
    let (status, version) = http
        .json(Method::GET, "/__version__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let commit = version["commit"].as_str().unwrap();
    assert!(!commit.is_empty(), "{version}");
    assert!(version["source"].is_string() && version["build"].is_string());

    let (status, beat) = http
        .json(Method::GET, "/__heartbeat__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(beat["status"], "ok");
    assert_eq!(beat["checks"], json!({"journal": "ok", "data_dir": "ok"}));

    // The store gone from under the server: the heartbeat fails, the lb heartbeat does not.
    let moved = server.dir.path().with_extension("moved");
    std::fs::rename(server.dir.path(), &moved).unwrap();
    let (status, beat) = http
        .json(Method::GET, "/__heartbeat__", None, None)
        .await
        .unwrap();
    std::fs::rename(&moved, server.dir.path()).unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{beat}");
    assert_eq!(beat["status"], "error");
    assert_eq!(beat["checks"]["data_dir"], "error");
    let (status, _) = http
        .json(Method::GET, "/__lbheartbeat__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

fn check_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"));
    command.arg("check-config").args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.env_remove("WHERESMYFOX_SEAL_KEY").output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wheresmyfox.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1111\"\n[poll]\nwait_secs = 20\n[storage]\nseal_key = \"0123456789abcdef0123456789abcdef-secret\"\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let (ok, out, err) = check_config(
        &["--config", file, "--listen", "127.0.0.1:3333"],
        &[
            ("WHERESMYFOX_SERVER__LISTEN", "127.0.0.1:2222"),
            ("WHERESMYFOX_POLL__WAIT_SECS", "25"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("listen = \"127.0.0.1:3333\""), "{out}");
    assert!(out.contains("wait_secs = 25"), "{out}");
    assert!(
        !out.contains("0123456789abcdef0123456789abcdef-secret"),
        "the seal key must not be shown: {out}"
    );
    assert!(out.contains("seal_key = \"<redacted>\""), "{out}");

    let (ok, out, err) = check_config(
        &["--config", file],
        &[("WHERESMYFOX_SERVER__MAX_BODY_BYTES", "lots")],
    );
    assert!(!ok, "{out}");
    assert!(
        err.contains("WHERESMYFOX_SERVER__MAX_BODY_BYTES") && err.contains("server.max_body_bytes"),
        "{err}"
    );
    let (ok, _, err) = check_config(&["--config", "/nonexistent/wheresmyfox.toml"], &[]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/wheresmyfox.toml"), "{err}");
}

#[tokio::test]
async fn json_logs_carry_the_request_span_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("WHERESMYFOX_LOG__FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_json = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>| -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a log line")
            .expect("the server is running");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    };
    let addr = loop {
        let line = next_json(&mut lines_rx).await;
        if let Some(addr) = line["fields"]["addr"].as_str() {
            break addr.parse().unwrap();
        }
    };
    let owner = wheresmyfox::client::OwnerClient::sign_up(addr, "logs@example.com", "a password")
        .await
        .unwrap();
    let body = json!({"email": "logs@example.com", "password": "the wrong password"});
    let (status, _) = HttpClient::new(addr)
        .json(Method::POST, "/1/session", None, Some(&body))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refused = loop {
        let line = next_json(&mut lines_rx).await;
        if line["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sign-in refused"))
        {
            break line;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let text = refused.to_string();
    assert_eq!(refused["span"]["name"], "request", "{text}");
    assert_eq!(refused["span"]["client"], "127.0.0.1", "{text}");
    assert_eq!(refused["span"]["path"], "/1/session", "{text}");
    assert!(!text.contains("wrong password"), "{text}");
    assert!(!text.contains(&owner.token), "{text}");
}

/// Contributed families appear after the core ones on the same page.
#[tokio::test]
async fn other_modules_can_add_metric_families() {
    #[derive(Debug)]
    struct Deliveries;
    impl wheresmyfox::metrics::Collect for Deliveries {
        fn collect(&self, out: &mut wheresmyfox::metrics::Exposition) {
            out.counter(
                "wheresmyfox_test_things_total",
                "Things.",
                &[(&[("kind", "a")], 3)],
            );
        }
    }
    let server = TestServer::start().await;
    server.gateway.metrics.register(Arc::new(Deliveries));
    let samples = scrape(&mut server.http()).await;
    assert_eq!(samples["wheresmyfox_test_things_total{kind=\"a\"}"], 3.0);
    assert!(samples.contains_key("wheresmyfox_polls_parked"));
}

/// Without `server.public_url`, Hawk is checked against the host and scheme a trusted proxy
/// reports; the same headers from anyone else change nothing.
#[tokio::test]
async fn hawk_checks_the_host_a_trusted_proxy_reports() {
    let server = TestServer::start_with(|c| {
        c.proxy.trusted = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let mut owner = server.owner("forwarded-host").await;
    let (id, secret) = support::register(&mut owner, "phone").await;
    // The device talks to https://find.example.com (port 443), as the proxy's public name.
    let device = wheresmyfox::client::DeviceClient::new(
        HttpClient::new(server.addr).with_host("find.example.com", 443),
        &id,
        &secret,
    );
    let path = format!("/1/cmd/{id}?wait=0");
    let send = async |from: &str| {
        let authorization = device.authorization(&path, b"{}").unwrap();
        // What the proxy sends on: its own Host, and where the request really went.
        HttpClient::new(server.addr)
            .with_bind(from.parse().unwrap())
            .send(
                Method::POST,
                &path,
                &[
                    (http::header::AUTHORIZATION, authorization),
                    (http::header::CONTENT_TYPE, "application/json".into()),
                    ("x-forwarded-for".parse().unwrap(), "198.51.100.4".into()),
                    ("x-forwarded-proto".parse().unwrap(), "https".into()),
                    (
                        "x-forwarded-host".parse().unwrap(),
                        "find.example.com".into(),
                    ),
                ],
                bytes::Bytes::from_static(b"{}"),
                Duration::from_secs(5),
            )
            .await
            .unwrap()
    };
    let trusted = send("127.0.0.1").await;
    assert_eq!(
        trusted.status,
        StatusCode::OK,
        "{:?}",
        String::from_utf8_lossy(&trusted.body)
    );
    assert!(trusted.headers.contains_key("server-authorization"));
    // From an untrusted peer the forwarded host is ignored: the MAC is checked against the
    // Host header (127.0.0.1:port) and fails.
    let untrusted = send("127.0.0.9").await;
    assert_eq!(untrusted.status, StatusCode::UNAUTHORIZED);
    let body: Value = serde_json::from_slice(&untrusted.body).unwrap();
    assert_eq!(body["errno"], 115, "{body}");
}
