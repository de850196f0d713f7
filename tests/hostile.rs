//! Hostile clients: input built to hurt (deep nesting, floods of nonces), password guessing
//! and command flooding (rate limits). Slowloris and
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

/// Posts JSON; returns the status, the `Retry-After` header if any, and the JSON body.
async fn post(
    http: &mut HttpClient,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> (StatusCode, Option<u64>, serde_json::Value) {
    let mut headers = vec![(header::CONTENT_TYPE, "application/json".to_owned())];
    if let Some(token) = token {
        headers.push((header::AUTHORIZATION, format!("Bearer {token}")));
    }
    let reply = http
        .send(
            Method::POST,
            path,
            &headers,
            serde_json::to_vec(&body).unwrap().into(),
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    let retry_after = reply
        .headers
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let body = serde_json::from_slice(&reply.body).unwrap_or_default();
    (reply.status, retry_after, body)
}

/// Password guessing against one account: a few wrong guesses, then 429 with `Retry-After`,
/// even for the right password, from any address; the owner's own successful sign-ins do not
/// use up the allowance, and other accounts are untouched.
#[tokio::test]
async fn password_guessing_is_rate_limited_per_account() {
    let server = TestServer::start_with(|c| {
        c.limits.sign_in_account_burst = 3;
        c.limits.sign_in_account_per_hour = 6;
        c.limits.sign_in_address_per_hour = 0;
    })
    .await;
    server.owner("victim").await;
    server.owner("bystander").await;
    let mut http = server.http();
    let right = json!({"email": "victim@example.com", "password": support::PASSWORD});
    let wrong = json!({"email": "Victim@Example.com ", "password": "not the password"});
    for _ in 0..10 {
        let (status, _, body) = post(&mut http, "/1/session", None, right.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    for _ in 0..3 {
        let (status, _, body) = post(&mut http, "/1/session", None, wrong.clone()).await;
        assert_error(status, &body, 401, 112, "password");
    }
    // From another source address: the limit is the account's, not the connection's.
    let mut elsewhere = server.http().with_bind("127.0.0.9".parse().unwrap());
    for attempt in [&wrong, &right] {
        let (status, retry_after, body) =
            post(&mut elsewhere, "/1/session", None, attempt.clone()).await;
        assert_error(status, &body, 429, 140, "try again in");
        // One attempt every 10 minutes.
        let retry_after = retry_after.expect("Retry-After");
        assert!((590..=600).contains(&retry_after), "{retry_after}");
    }
    // The web page's sign-in shares the account's allowance.
    let (status, _, body) = post(&mut elsewhere, "/1/web/session", None, right.clone()).await;
    assert_error(status, &body, 429, 140, "try again in");
    let bystander = json!({"email": "bystander@example.com", "password": support::PASSWORD});
    let (status, _, _) = post(&mut http, "/1/session", None, bystander).await;
    assert_eq!(status, StatusCode::OK);
}

/// One address trying many accounts (or signing up in bulk) is held back; others are not.
#[tokio::test]
async fn sign_in_attempts_are_rate_limited_per_address() {
    let server = TestServer::start_with(|c| {
        c.limits.sign_in_address_burst = 4;
        c.limits.sign_in_address_per_hour = 60;
        c.limits.sign_in_account_per_hour = 0;
    })
    .await;
    let mut guesser = server.http().with_bind("127.0.0.7".parse().unwrap());
    for i in 0..4 {
        let guess = json!({"email": format!("user{i}@example.com"), "password": "password1"});
        let (status, _, body) = post(&mut guesser, "/1/session", None, guess).await;
        assert_error(status, &body, 401, 112, "password");
    }
    let guess = json!({"email": "user9@example.com", "password": "password1"});
    let (status, retry_after, body) = post(&mut guesser, "/1/session", None, guess).await;
    assert_error(status, &body, 429, 140, "try again");
    // One attempt a minute, less the time the four guesses took (password hashing is slow).
    assert!(
        retry_after.is_some_and(|s| (45..=60).contains(&s)),
        "{retry_after:?}"
    );
    let sign_up = json!({"email": "new@example.com", "password": "password1"});
    let (status, _, body) = post(&mut guesser, "/1/accounts", None, sign_up.clone()).await;
    assert_error(status, &body, 429, 140, "try again");
    // Refused before anything was written: the account does not exist.
    assert_eq!(server.gateway.accounts.user_count(), 0);
    let mut neighbour = server.http().with_bind("127.0.0.8".parse().unwrap());
    let (status, _, body) = post(&mut neighbour, "/1/accounts", None, sign_up).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// An owner flooding a device with commands: past the burst, 429 and nothing queued; other
/// owners keep commanding their devices.
#[tokio::test]
async fn command_flooding_is_rate_limited_per_owner() {
    let server = TestServer::start_with(|c| {
        c.limits.commands_owner_burst = 5;
        c.limits.commands_owner_per_minute = 2;
    })
    .await;
    let (mut owner, mut device) = server.owner_and_device("flooder").await;
    let id = device.id().to_owned();
    let other_device = owner.register_device("second phone").await.unwrap();
    let path = format!("/1/devices/{id}/cmd");
    for i in 0..5 {
        let (status, _, body) = post(
            &mut owner.http,
            &path,
            Some(&owner.token),
            json!({"m": {"n": "555-0100", "m": format!("m{i}")}}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let flood = json!({"m": {"n": "555-0100", "m": "flood"}});
    let (status, retry_after, body) =
        post(&mut owner.http, &path, Some(&owner.token), flood.clone()).await;
    assert_error(status, &body, 429, 140, "try again");
    assert!(
        retry_after.is_some_and(|s| (20..=30).contains(&s)),
        "{retry_after:?}"
    );
    // The limit is the owner's, over all their devices.
    let other_path = format!("/1/devices/{}/cmd", other_device.id());
    let (status, _, _) = post(&mut owner.http, &other_path, Some(&owner.token), flood).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The refused command was never queued: the device gets the last accepted message.
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(commands["m"]["m"], "m4", "{commands:?}");
    // Someone else is unaffected.
    let (mut neighbour, neighbour_device) = server.owner_and_device("neighbour").await;
    let reply = neighbour
        .command(neighbour_device.id(), &json!({"r": {"p": 10, "d": 60}}))
        .await
        .unwrap();
    assert_eq!(reply["parked"], false);
}
