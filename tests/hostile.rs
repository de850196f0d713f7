//! Hostile clients: input built to hurt (deep nesting, floods of nonces). Slowloris and
//! connection floods are in `server.rs`; bad signatures and replays in `device_protocol.rs`.

mod support;

use http::{Method, StatusCode, header};
use serde_json::json;

use support::{TestServer, assert_error, register, send_signed};
use wheresmyfox::client::{DeviceClient, HttpClient};
use wheresmyfox::hawk_auth;

/// `depth` nested arrays: far past serde_json's recursion limit, well under the body cap.
fn nested(depth: usize) -> Vec<u8> {
    let mut body = vec![b'['; depth];
    body.extend(std::iter::repeat_n(b']', depth));
    body
}

#[tokio::test]
async fn deeply_nested_json_is_refused_everywhere_without_harm() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("nested").await;
    let id = device.id().to_owned();
    let deep = nested(30_000);
    let deep_object = {
        let mut body = b"{\"l\":".to_vec();
        body.extend_from_slice(&nested(30_000));
        body.push(b'}');
        body
    };
    let json_headers = [(header::CONTENT_TYPE, "application/json".to_owned())];
    for path in ["/1/accounts", "/1/session"] {
        let reply = HttpClient::new(server.addr)
            .send(
                Method::POST,
                path,
                &json_headers,
                deep.clone().into(),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_error(reply.status, &body, 400, 100, "JSON");
    }
    let mut owner_headers = json_headers.to_vec();
    owner_headers.push((header::AUTHORIZATION, format!("Bearer {}", owner.token)));
    for (path, body) in [
        ("/1/register".to_owned(), deep.clone()),
        (format!("/1/devices/{id}/cmd"), deep_object.clone()),
    ] {
        let reply = owner
            .http
            .send(
                Method::POST,
                &path,
                &owner_headers,
                body.into(),
                std::time::Duration::from_secs(5),
            )
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {answer}");
    }
    // A device report, properly signed: refused (and signed), nothing applied.
    let path = format!("/1/cmd/{id}?wait=0");
    let body: &'static [u8] = Box::leak(deep_object.into_boxed_slice());
    let reply = send_signed(&mut device, &path, body, body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.headers.contains_key("server-authorization"));
    // The server is unharmed and the device still works.
    assert!(
        device
            .exchange(&json!({}), Some(0))
            .await
            .unwrap()
            .is_empty()
    );
    let (status, _) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A device (or whoever holds its key) sending a million distinct nonces: the replay cache
/// stays at its bound, and replays inside the window are still refused.
#[tokio::test]
async fn a_million_nonces_keep_the_replay_cache_bounded_and_replays_refused() {
    let server = TestServer::start().await;
    let mut owner = server.owner("nonces").await;
    let (id, _) = register(&mut owner, "flooded").await;
    let cap = server.gateway.config.hawk.nonces_per_device;
    let window = 2 * server.gateway.config.hawk.skew_secs;
    let device = server.gateway.registry.get(&id.parse().unwrap()).unwrap();
    let now = hawk_auth::unix_secs(std::time::SystemTime::now());
    // A million nonces, spread over the whole acceptance window (ts from now - skew on):
    // thousands a second, far more than can be told apart from replays, so once the cache is
    // full most are refused (by design: see `NonceCache`); what matters is that memory stays
    // bounded and nothing is accepted twice.
    let start = now - server.gateway.config.hawk.skew_secs;
    let ts_of = |i: u64| start + i * window / 1_000_000;
    let mut accepted = 0;
    for i in 0..1_000_000u64 {
        if device.check_nonce(ts_of(i), &format!("flood-{i}"), now, window, cap) {
            accepted += 1;
        }
        assert!(device.nonces_held() <= cap);
    }
    assert!(accepted >= cap, "only {accepted} accepted");
    // Every one of them is refused if replayed while its timestamp is acceptable: the recent
    // ones because they are remembered, the older ones because they are below the floor the
    // evictions raised.
    for i in (0..1_000_000u64).step_by(997).chain([999_999]) {
        assert!(
            !device.check_nonce(ts_of(i), &format!("flood-{i}"), now, window, cap),
            "replay of nonce {i} accepted"
        );
    }
    assert!(device.nonces_held() <= cap);

    // Over HTTP too, on another device: a burst of signed requests, then a replay of the first.
    let (id, secret) = register(&mut owner, "burst").await;
    let device = server.gateway.registry.get(&id.parse().unwrap()).unwrap();
    let mut client = DeviceClient::new(HttpClient::new(server.addr), &id, &secret);
    let path = format!("/1/cmd/{id}?wait=0");
    let first = client.authorization(&path, b"{}").unwrap();
    assert_eq!(
        send(&mut client, &path, first.clone()).await.status,
        StatusCode::OK
    );
    for _ in 1..cap {
        let authorization = client.authorization(&path, b"{}").unwrap();
        assert_eq!(
            send(&mut client, &path, authorization).await.status,
            StatusCode::OK
        );
    }
    let replay = send(&mut client, &path, first).await;
    let body: serde_json::Value = serde_json::from_slice(&replay.body).unwrap();
    assert_error(replay.status, &body, 401, 117, "nonce");
    assert!(device.nonces_held() <= cap);
}

/// Sends `{}` to `path` with a given `Authorization`, as an attacker replaying would.
async fn send(
    client: &mut DeviceClient,
    path: &str,
    authorization: String,
) -> wheresmyfox::client::Reply {
    client
        .http()
        .send(
            Method::POST,
            path,
            &[
                (header::AUTHORIZATION, authorization),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            bytes::Bytes::from_static(b"{}"),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap()
}
