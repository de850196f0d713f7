//! The server itself: limits, timeouts, keep-alive, shutdown, and the binary's command line.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::binary::Binary;
use support::{PASSWORD, TestServer, assert_error};
use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient};

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let server = TestServer::start_with(|c| c.server.max_body_bytes = 1024).await;
    let (mut owner, device) = server.owner_and_device("big").await;
    let big = json!({"m":{"m": "x".repeat(2000)}});
    let (status, body) = owner
        .call(
            Method::POST,
            &format!("/1/devices/{}/cmd", device.id()),
            Some(&big),
        )
        .await
        .unwrap();
    assert_error(status, &body, 413, 102, "1024 bytes");
    // Chunked, with no length declared up front: still cut off at the limit.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let chunk = "x".repeat(600);
    let request = format!(
        "POST /1/accounts HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"errno\":102"), "{answer}");
}

#[tokio::test]
async fn keep_alive_serves_many_requests_on_one_connection() {
    let server = TestServer::start().await;
    let (_owner, mut device) = server.owner_and_device("keepalive").await;
    for _ in 0..20 {
        device.exchange(&json!({}), Some(0)).await.unwrap();
    }
    // The owner and the device each kept one connection; nothing else was opened.
    let (_, body) = server
        .http()
        .json(Method::GET, "/__heartbeat__", None, None)
        .await
        .unwrap();
    assert!(body["connections"].as_u64().unwrap() <= 3, "{body}");
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_and_parked_devices_still_work() {
    let server = TestServer::start_with(|c| c.server.max_connections = 3).await;
    let (mut owner, mut device) = server.owner_and_device("cap").await;
    let id = device.id().to_owned();
    // Two connections are in use (owner, device). The device parks on its own.
    let poll = tokio::spawn(async move { device.exchange(&json!({}), Some(30)).await.unwrap() });
    server.until_parked(1).await;
    let _third = TcpStream::connect(server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..5 {
        let mut flood = HttpClient::new(server.addr);
        let (status, body) = flood
            .json(Method::GET, "/__lbheartbeat__", None, None)
            .await
            .unwrap();
        assert_error(status, &body, 503, 150, "connection limit");
    }
    // The parked device still gets its command through the owner's existing connection.
    owner
        .command(&id, &json!({"r":{"p":1,"d":10}}))
        .await
        .unwrap();
    assert_eq!(poll.await.unwrap()["r"], json!({"p":1,"d":10}));
    assert!(
        server
            .gateway
            .stats
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
}

#[tokio::test]
async fn a_client_dripping_its_headers_is_cut_off() {
    let server = TestServer::start_with(|c| c.server.header_read_timeout_secs = 1).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /__lbheartbeat__ HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buffer = [0u8; 256];
    let closed = loop {
        // Keep dripping a header byte by byte; the server must close anyway.
        if stream.write_all(b"x").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            break false;
        }
    };
    assert!(
        closed,
        "the connection should be closed by the header read timeout"
    );
    // Meanwhile the server answers others.
    let (status, _) = server
        .http()
        .json(Method::GET, "/__lbheartbeat__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_answers_parked_polls_with_an_empty_signed_object() {
    let mut server = TestServer::start().await;
    let mut devices = Vec::new();
    let mut owner = server.owner("shutdown").await;
    for i in 0..3 {
        devices.push(owner.register_device(&format!("phone {i}")).await.unwrap());
    }
    let polls: Vec<_> = devices
        .into_iter()
        .map(|mut d| tokio::spawn(async move { d.exchange(&json!({}), Some(50)).await }))
        .collect();
    server.until_parked(3).await;
    server.signal_stop();
    for poll in polls {
        // exchange() verifies the signature: the `{}` is signed like any answer.
        let answer = poll.await.unwrap().unwrap();
        assert!(answer.is_empty());
    }
    server.stop().await;
}

// === The exchange path (src/server/conn.rs) ===

/// A signed device exchange, written by hand: `wait` seconds, an empty report.
fn exchange_request(server: &TestServer, device: &DeviceClient, wait: u64, extra: &str) -> String {
    let path = format!("/1/cmd/{}?wait={wait}", device.id());
    let authorization = device.authorization(&path, b"{}").unwrap();
    format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {authorization}\r\ncontent-type: application/json\r\n{extra}content-length: 2\r\n\r\n{{}}",
        server.addr
    )
}

/// Reads `n` answers (status, head, body) from `stream`, each framed by its `content-length`.
async fn read_answers(stream: &mut TcpStream, n: usize) -> Vec<(u16, String, String)> {
    let mut read = Vec::new();
    let mut answers = Vec::new();
    while answers.len() < n {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut answer = httparse::Response::new(&mut fields);
        if let Ok(httparse::Status::Complete(head)) = answer.parse(&read) {
            let length: usize = answer
                .headers
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |f| {
                    std::str::from_utf8(f.value).unwrap().parse().unwrap()
                });
            if read.len() >= head + length {
                let text = String::from_utf8_lossy(&read[..head]).into_owned();
                let body = String::from_utf8_lossy(&read[head..head + length]).into_owned();
                answers.push((answer.code.unwrap(), text, body));
                read.drain(..head + length);
                continue;
            }
        }
        let mut more = [0u8; 4096];
        let got = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut more))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(got > 0, "closed after {} answers: {read:?}", answers.len());
        read.extend_from_slice(&more[..got]);
    }
    answers
}

#[tokio::test]
async fn pipelined_exchanges_then_an_owner_request_are_answered_in_order_on_one_connection() {
    let server = TestServer::start().await;
    let (mut owner, device) = server.owner_and_device("pipeline").await;
    owner
        .command(device.id(), &json!({"r":{"p":1,"d":10}}))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // Two exchanges (served by the exchange path), then a request that is not one (handed to
    // hyper with the bytes already read), all in one write.
    let mut requests = exchange_request(&server, &device, 0, "");
    requests += &exchange_request(&server, &device, 0, "connection: keep-alive\r\n");
    requests += "GET /__lbheartbeat__ HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(requests.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 3).await;
    let (status, head, body) = &answers[0];
    assert_eq!(*status, 200, "{head}{body}");
    assert!(head.contains("server-authorization: Hawk"), "{head}");
    assert!(head.contains("date: "), "{head}");
    assert!(body.contains("\"r\""), "the ring command: {body}");
    let (status, head, _) = &answers[1];
    assert_eq!(*status, 200, "{head}");
    assert!(head.contains("server-authorization: Hawk"), "{head}");
    let (status, head, body) = &answers[2];
    assert_eq!((*status, body.as_str()), (200, "{}"), "{head}");
    assert!(!head.contains("server-authorization"), "{head}");
    // The connection is still open, now served by hyper.
    stream
        .write_all(b"GET /__lbheartbeat__ HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answers(&mut stream, 1).await[0].0, 200);
}

#[tokio::test]
async fn a_device_that_hangs_up_while_parked_is_no_longer_parked() {
    let server = TestServer::start().await;
    let (_owner, device) = server.owner_and_device("hangsup").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = exchange_request(&server, &device, 30, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    server.until_parked(1).await;
    drop(stream);
    server.until_parked(0).await;
}

#[tokio::test]
async fn an_exchange_of_another_shape_is_served_by_hyper_alike() {
    let server = TestServer::start().await;
    let (_owner, device) = server.owner_and_device("chunked").await;
    let path = format!("/1/cmd/{}?wait=0", device.id());
    let authorization = device.authorization(&path, b"{}").unwrap();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {authorization}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, head, body) = read_answers(&mut stream, 1).await.remove(0);
    assert_eq!((status, body.as_str()), (200, "{}"), "{head}");
    assert!(head.contains("server-authorization: Hawk"), "{head}");
}

#[tokio::test]
async fn without_keep_alive_an_exchange_is_answered_and_the_connection_closed() {
    let server = TestServer::start_with(|c| c.server.keep_alive = false).await;
    let (_owner, device) = server.owner_and_device("nokeepalive").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = exchange_request(&server, &device, 0, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (status, head, _) = read_answers(&mut stream, 1).await.remove(0);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
}

#[tokio::test]
async fn shutdown_closes_a_device_connection_waiting_for_its_next_request() {
    let mut server = TestServer::start().await;
    let (_owner, device) = server.owner_and_device("idle").await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = exchange_request(&server, &device, 0, "");
    stream.write_all(request.as_bytes()).await.unwrap();
    assert_eq!(read_answers(&mut stream, 1).await[0].0, 200);
    // Answered and idle, on the exchange path: shutdown must not wait for its header timeout.
    server.signal_stop();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
    server.stop().await;
}

// === The binary ===

async fn sigterm_releases_parked_polls_and_exits(signal: &str) {
    let mut binary = Binary::start(&[]);
    let mut owner = OwnerClient::sign_up(binary.addr, "term@example.com", PASSWORD)
        .await
        .unwrap();
    let mut device: DeviceClient = owner.register_device("phone").await.unwrap();
    let poll = tokio::spawn(async move { device.exchange(&json!({}), Some(50)).await });
    // Wait until the poll is parked, as the server itself reports.
    loop {
        let (_, body) = HttpClient::new(binary.addr)
            .json(Method::GET, "/__heartbeat__", None, None)
            .await
            .unwrap();
        if body["parked"] == json!(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    binary.signal(signal);
    let answer = poll.await.unwrap().unwrap();
    assert!(answer.is_empty(), "released with {{}}");
    let status = tokio::task::spawn_blocking(move || binary.wait_exit(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_releases_parked_polls_and_exits_within_5_seconds() {
    sigterm_releases_parked_polls_and_exits("TERM").await;
}

#[tokio::test]
async fn sigint_does_the_same() {
    sigterm_releases_parked_polls_and_exits("INT").await;
}

#[test]
fn help_describes_the_commands() {
    let output = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for needle in ["serve", "user", "--config", "--listen", "--data-dir"] {
        assert!(
            text.contains(needle),
            "--help should mention {needle}: {text}"
        );
    }
}

#[test]
fn a_bad_config_file_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[poll]\nwait_secs = \"fifty\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("wait_secs"), "{text}");

    std::fs::write(&config, "[devices]\nmax_per_user = 0\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args(["--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("devices.max_per_user"));
}

#[tokio::test]
async fn user_add_creates_an_account_on_a_running_server_with_sign_up_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("closed.toml");
    std::fs::write(&config, "[accounts]\nsignup = false\n").unwrap();
    let data = dir.path().join("data");
    let binary = Binary::start_in(&data, &["--config", config.to_str().unwrap()]);
    let (status, body) = HttpClient::new(binary.addr)
        .json(
            Method::POST,
            "/1/accounts",
            None,
            Some(&json!({"email":"op@example.com","password":PASSWORD})),
        )
        .await
        .unwrap();
    assert_error(status, &body, 403, 121, "closed");

    let mut add = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args([
            "user",
            "add",
            "op@example.com",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let output = tokio::task::spawn_blocking(move || add.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let userid = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let owner = OwnerClient::sign_in_with(HttpClient::new(binary.addr), "op@example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(owner.userid, userid);
    drop(binary);
}

#[test]
fn user_add_explains_when_no_server_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut add = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args([
            "user",
            "add",
            "x@example.com",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"a long password\n")
        .unwrap();
    let mut stderr = String::new();
    add.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!add.wait().unwrap().success());
    assert!(stderr.contains("running server"), "{stderr}");
}
