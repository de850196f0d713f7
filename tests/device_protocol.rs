//! The device side of the protocol, driven over loopback against the real server.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use support::{TestServer, assert_error, device_view, register, send_signed};
use wheresmyfox::client::{ClientError, DeviceClient, HttpClient};

fn status_error(
    result: Result<serde_json::Map<String, Value>, ClientError>,
) -> (StatusCode, Value) {
    match result {
        Err(ClientError::Status { status, body }) => (status, body),
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test]
async fn an_empty_poll_answers_an_empty_signed_object() {
    let server = TestServer::start().await;
    let (_owner, mut device) = server.owner_and_device("empty").await;
    // The client verifies Server-Authorization itself and fails if it is missing or wrong.
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert!(commands.is_empty());
}

#[tokio::test]
async fn a_parked_poll_is_answered_when_a_command_is_queued() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("parked").await;
    let id = device.id().to_owned();
    let poll = tokio::spawn(async move {
        let commands = device.exchange(&json!({}), Some(30)).await.unwrap();
        (device, commands)
    });
    server.until_parked(1).await;
    let queued = owner
        .command(&id, &json!({"r":{"p":10,"d":60}}))
        .await
        .unwrap();
    assert_eq!(queued["parked"], json!(true), "{queued}");
    assert_eq!(queued["queued"][0]["command"], "r");
    let (_device, commands) = poll.await.unwrap();
    assert_eq!(Value::Object(commands), json!({"r":{"p":10,"d":60}}));
    server.until_parked(0).await;
}

#[tokio::test]
async fn pending_commands_are_combined_into_one_answer() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("combined").await;
    let id = device.id().to_owned();
    let queued = owner
        .command(&id, &json!({"l":{"c":"0123"}}))
        .await
        .unwrap();
    assert_eq!(queued["parked"], json!(false));
    owner
        .command(
            &id,
            &json!({"m":{"n":"555-0100","m":"Please return me!"},"r":{"p":30,"d":300}}),
        )
        .await
        .unwrap();
    let commands = device.exchange(&json!({}), Some(30)).await.unwrap();
    assert_eq!(
        Value::Object(commands),
        json!({"l":{"c":"0123"},"m":{"n":"555-0100","m":"Please return me!"},"r":{"p":30,"d":300}})
    );
}

#[tokio::test]
async fn an_unacknowledged_command_is_sent_again_and_an_acknowledged_one_is_not() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("redeliver").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"l":{"c":"1234"}}))
        .await
        .unwrap();
    let first = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(Value::Object(first.clone()), json!({"l":{"c":"1234"}}));
    // The response was "lost": the device polls again without a reply and gets it again.
    let again = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(again, first);
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"][0]["status"], "sent");
    assert_eq!(view["pending"][0]["sends"], 2);
    // Acknowledged: nothing is pending any more, and the outcome is kept.
    let after = device
        .exchange(&json!({"l":{"ok":true}}), Some(0))
        .await
        .unwrap();
    assert!(after.is_empty());
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"], json!([]));
    assert_eq!(view["state"]["locked"], json!(true));
    assert_eq!(view["outcomes"][0]["command"], "l");
    assert_eq!(view["outcomes"][0]["ok"], json!(true));
}

#[tokio::test]
async fn a_reply_to_an_older_command_does_not_acknowledge_a_newer_one_that_was_lost() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("race").await;
    let id = device.id().to_owned();
    let first = owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let first_seq = first["queued"][0]["seq"].as_u64().unwrap();
    assert_eq!(
        device.exchange(&json!({}), Some(0)).await.unwrap()["r"],
        json!({"p":5,"d":30})
    );
    // The owner replaces it; the response carrying the newer ring is lost on the way.
    let second = owner
        .command(&id, &json!({"r":{"p":10,"d":60}}))
        .await
        .unwrap();
    let second_seq = second["queued"][0]["seq"].as_u64().unwrap();
    let lost = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(lost["r"], json!({"p":10,"d":60}));
    // The device answers the ring it did get: that is charged to the older command...
    let next = device
        .exchange(&json!({"r":{"ok":true}}), Some(0))
        .await
        .unwrap();
    // ...and the newer one is still pending. It is not sent in the answer to a request that
    // carries a ring reply (see a_retried_reply_never_acknowledges_a_command_never_received),
    // so it comes with the next poll.
    assert!(next.is_empty(), "{next:?}");
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["outcomes"][0]["seq"].as_u64(), Some(first_seq));
    assert_eq!(view["pending"][0]["seq"].as_u64(), Some(second_seq));
    assert_eq!(
        device.exchange(&json!({}), Some(0)).await.unwrap()["r"],
        json!({"p":10,"d":60})
    );
    // Once it is answered, nothing is left.
    assert!(
        device
            .exchange(&json!({"r":{"ok":true}}), Some(0))
            .await
            .unwrap()
            .is_empty()
    );
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["outcomes"][0]["seq"].as_u64(), Some(second_seq));
    assert_eq!(view["pending"], json!([]));
}

/// The race of a mobile link: the device answers ring #1 and the owner's ring #2 is queued
/// meanwhile; the response to that request is lost, so the device sends the same reply again
/// (as `DeviceClient::run` and docs/protocol.md tell it to). That retried reply must not be
/// taken as the answer to ring #2, which the device never received.
#[tokio::test]
async fn a_retried_reply_never_acknowledges_a_command_never_received() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("retry").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert!(device.exchange(&json!({}), Some(0)).await.unwrap()["r"].is_object());
    let second = owner
        .command(&id, &json!({"r":{"p":10,"d":60}}))
        .await
        .unwrap();
    let second_seq = second["queued"][0]["seq"].as_u64().unwrap();
    // The reply to ring #1, sent twice because the first answer never arrived.
    let path = format!("/1/cmd/{id}?wait=0");
    let reply: &'static [u8] = br#"{"r":{"ok":true}}"#;
    let lost = send_signed(&mut device, &path, reply, reply).await;
    assert_eq!(lost.status, StatusCode::OK);
    let retried = send_signed(&mut device, &path, reply, reply).await;
    assert_eq!(retried.status, StatusCode::OK);
    let view = device_view(&mut owner, &id).await;
    assert!(
        view["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["seq"].as_u64() != Some(second_seq)),
        "ring #2 was never received, so it cannot have an outcome: {view}"
    );
    assert_eq!(view["pending"][0]["seq"].as_u64(), Some(second_seq));
    assert_eq!(
        device.exchange(&json!({}), Some(0)).await.unwrap()["r"],
        json!({"p":10,"d":60})
    );
}

/// The same race for a device using the sequence extension: a reply counts only for commands
/// up to the `ack` sent with it, so the newer command is still sent in the same answer.
#[tokio::test]
async fn with_the_ack_extension_a_retried_reply_only_answers_commands_up_to_its_ack() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("retryack").await;
    let id = device.id().to_owned();
    device.enable_ack();
    let first = owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let first_seq = first["queued"][0]["seq"].as_u64().unwrap();
    assert!(device.exchange(&json!({}), Some(0)).await.unwrap()["r"].is_object());
    let second = owner
        .command(&id, &json!({"r":{"p":10,"d":60}}))
        .await
        .unwrap();
    let second_seq = second["queued"][0]["seq"].as_u64().unwrap();
    assert_eq!(first_seq, 1);
    let path = format!("/1/cmd/{id}?wait=0");
    let reply: &'static [u8] = br#"{"r":{"ok":true},"ack":1}"#;
    let lost = send_signed(&mut device, &path, reply, reply).await;
    let lost: Value = serde_json::from_slice(&lost.body).unwrap();
    assert_eq!(lost["r"], json!({"p":10,"d":60}), "not held back: {lost}");
    assert_eq!(lost["seq"].as_u64(), Some(second_seq));
    let retried = send_signed(&mut device, &path, reply, reply).await;
    assert_eq!(retried.status, StatusCode::OK);
    let view = device_view(&mut owner, &id).await;
    assert!(
        view["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["seq"].as_u64() != Some(second_seq)),
        "{view}"
    );
    assert_eq!(view["pending"][0]["seq"].as_u64(), Some(second_seq));
}

#[tokio::test]
async fn a_newer_unsent_command_of_the_same_kind_replaces_the_older() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("replace").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"t":{"p":10,"d":300}}))
        .await
        .unwrap();
    owner.command(&id, &json!({"t":{"d":0}})).await.unwrap();
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(Value::Object(commands), json!({"t":{"d":0}}));
}

#[tokio::test]
async fn a_newer_poll_releases_the_older_with_an_empty_answer() {
    let server = TestServer::start().await;
    let mut owner = server.owner("supersede").await;
    let (id, secret) = register(&mut owner, "phone").await;
    let mut first = DeviceClient::new(server.http(), &id, &secret);
    let old = tokio::spawn(async move { first.exchange(&json!({}), Some(30)).await.unwrap() });
    server.until_parked(1).await;
    // The same device on a new connection (its old socket went half-open).
    let mut second = DeviceClient::new(server.http(), &id, &secret);
    let new = tokio::spawn(async move { second.exchange(&json!({}), Some(30)).await.unwrap() });
    let released = old.await.unwrap();
    assert!(released.is_empty(), "the superseded poll answers {{}}");
    server.until_parked(1).await;
    owner
        .command(&id, &json!({"r":{"p":1,"d":1}}))
        .await
        .unwrap();
    assert_eq!(new.await.unwrap()["r"], json!({"p":1,"d":1}));
}

/// Registers the device again under its own id with a new secret, returning the secret.
async fn device_secret(
    server: &TestServer,
    owner: &mut wheresmyfox::client::OwnerClient,
    id: &str,
) -> String {
    let _ = server;
    let secret = wheresmyfox::client::random_secret();
    let (status, body) = owner
        .call(
            Method::POST,
            "/1/register",
            Some(&json!({"deviceid": id, "secret": secret, "pushurl": "https://push.example.invalid/x"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], json!(id));
    secret
}

#[tokio::test]
async fn a_replayed_request_is_refused_and_changes_nothing() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("replay").await;
    let id = device.id().to_owned();
    let path = format!("/1/cmd/{id}?wait=0");
    let body = Bytes::from_static(br#"{"t":{"ok":true,"la":1.5,"lo":2.5,"ti":1700000000}}"#);
    let authorization = device.authorization(&path, &body).unwrap();
    let headers = [
        (header::AUTHORIZATION, authorization),
        (header::CONTENT_TYPE, "application/json".to_owned()),
    ];
    let http = device.http();
    let first = http
        .send(
            Method::POST,
            &path,
            &headers,
            body.clone(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(first.status, StatusCode::OK);
    let view = device_view(&mut owner, &id).await;
    let exchanged = view["last_exchange_ms"].clone();
    let replay = http
        .send(Method::POST, &path, &headers, body, Duration::from_secs(5))
        .await
        .unwrap();
    let replay_body: Value = serde_json::from_slice(&replay.body).unwrap();
    assert_error(replay.status, &replay_body, 401, 117, "nonce");
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["last_exchange_ms"], exchanged);
    assert_eq!(view["previous_positions"], json!([]));
}

#[tokio::test]
async fn a_stale_timestamp_gets_the_standard_challenge_and_the_client_recovers() {
    let server = TestServer::start().await;
    let (_owner, mut device) = server.owner_and_device("stale").await;
    let id = device.id().to_owned();
    device.set_clock_offset(-600);
    let path = format!("/1/cmd/{id}?wait=0");
    let reply = send_signed(&mut device, &path, b"{}", b"{}").await;
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 401, 116, "timestamp");
    let challenge = reply.headers[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Hawk ts=\""), "{challenge}");
    assert!(challenge.contains("tsm=\""), "{challenge}");
    // The client checks tsm, corrects its clock and retries on its own.
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert!(commands.is_empty());
    // The simulated ten-minute error has been corrected back to the server's clock.
    assert!(
        device.clock_offset().abs() <= 2,
        "offset {}",
        device.clock_offset()
    );
}

#[tokio::test]
async fn bad_credentials_are_refused_without_a_state_change() {
    let server = TestServer::start().await;
    let (mut owner, device) = server.owner_and_device("badmac").await;
    let id = device.id().to_owned();

    let mut wrong_key =
        DeviceClient::new(server.http(), &id, &wheresmyfox::client::random_secret());
    let (status, body) = status_error(
        wrong_key
            .exchange(&json!({"has_passcode": true}), Some(0))
            .await,
    );
    assert_error(status, &body, 401, 115, "MAC");

    let mut unknown = DeviceClient::new(
        server.http(),
        "0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef",
    );
    let (status, body) = status_error(unknown.exchange(&json!({}), Some(0)).await);
    assert_error(status, &body, 401, 114, "unknown device");

    let mut http = HttpClient::new(server.addr);
    let reply = http
        .send(
            Method::POST,
            &format!("/1/cmd/{id}"),
            &[],
            Bytes::from_static(b"{}"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 401, 113, "Authorization");
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Hawk");

    // A header without the payload hash is refused: the body must be covered by the MAC.
    let no_hash = format!("Hawk id=\"{id}\", ts=\"1\", nonce=\"abc\", mac=\"AAAA\"");
    let reply = http
        .send(
            Method::POST,
            &format!("/1/cmd/{id}"),
            &[(header::AUTHORIZATION, no_hash)],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 401, 113, "hash");

    // A body changed after signing fails the MAC.
    let mut device = device;
    let path = format!("/1/cmd/{id}?wait=0");
    let reply = send_signed(&mut device, &path, b"{}", br#"{"e":{"ok":true}}"#).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["last_exchange_ms"], Value::Null);
    assert_eq!(view["lockable"], Value::Null);
    assert_eq!(view["state"]["erased"], json!(false));
}

#[tokio::test]
async fn an_answer_with_a_forged_signature_is_rejected_by_the_client() {
    // A man in the middle without the key cannot make the client act on a command: here a
    // server answer is checked against a different key, as a forged one would be.
    let server = TestServer::start().await;
    let (mut owner, device) = server.owner_and_device("forged").await;
    let id = device.id().to_owned();
    owner.command(&id, &json!({"e":{}})).await.unwrap();
    // Re-register with a new secret, but keep using a client that signs with the old one.
    let new_secret = device_secret(&server, &mut owner, &id).await;
    let mut old = device;
    let (status, _) = status_error(old.exchange(&json!({}), Some(0)).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut renewed = DeviceClient::new(server.http(), &id, &new_secret);
    let commands = renewed.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(Value::Object(commands), json!({"e":{}}));
}

#[tokio::test]
async fn reports_update_position_history_outcomes_and_lockability() {
    let server = TestServer::start_with(|c| c.devices.positions_kept = 3).await;
    let (mut owner, mut device) = server.owner_and_device("reports").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"t":{"p":10,"d":300},"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    for i in 0..6 {
        let report = json!({
            "t": {"ok": true, "la": 37.0 + i as f64, "lo": -122.0, "ti": 1_700_000_000_000u64 + i, "acc": 12.5, "al": 30.0},
            "has_passcode": i % 2 == 0,
        });
        let report = if i == 0 {
            let mut r = report;
            r["r"] = json!({"ok": false, "error": "no ringtone found"});
            r
        } else {
            report
        };
        device.exchange(&report, Some(0)).await.unwrap();
    }
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["last_position"]["lat"], json!(42.0));
    assert_eq!(view["last_position"]["acc"], json!(12.5));
    assert_eq!(
        view["last_position"]["time_ms"],
        json!(1_700_000_000_005u64)
    );
    let previous = view["previous_positions"].as_array().unwrap();
    assert_eq!(previous.len(), 3, "bounded by devices.positions_kept");
    assert_eq!(previous[0]["lat"], json!(41.0), "newest first");
    assert_eq!(view["lockable"], json!(false));
    assert!(view["last_exchange_ms"].as_u64().is_some());
    assert_eq!(view["state"]["tracking"], json!(true));
    let ring = view["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["command"] == "r")
        .unwrap();
    assert_eq!(ring["ok"], json!(false));
    assert_eq!(ring["error"], "no ringtone found");
    assert_eq!(view["state"]["ringing"], json!(false));
}

#[tokio::test]
async fn a_malformed_report_is_refused_signed_and_changes_nothing() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("malformed").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"l":{"c":"4321"}}))
        .await
        .unwrap();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    for (report, field) in [
        (json!({"t":{"ok":true,"la":91.0,"lo":0.0,"ti":1}}), "t.la"),
        (json!({"l":{"ok":"yes"}}), "l.ok"),
        (json!({"l":{"ok":true},"x":{}}), "x"),
        (json!({"has_passcode":"no"}), "has_passcode"),
    ] {
        let (status, body) = status_error(device.exchange(&report, Some(0)).await);
        assert_error(status, &body, 400, 101, field);
    }
    let view = device_view(&mut owner, &id).await;
    assert_eq!(
        view["pending"][0]["command"], "l",
        "the lock is still pending"
    );
    assert_eq!(view["last_position"], Value::Null);
}

#[tokio::test]
async fn the_sequence_ack_extension_stops_resending_received_commands() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("ack").await;
    let id = device.id().to_owned();
    device.enable_ack();
    owner
        .command(&id, &json!({"r":{"p":5,"d":60}}))
        .await
        .unwrap();
    let mut raw = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(raw.remove("r"), Some(json!({"p":5,"d":60})));
    // The client acknowledges the seq it saw on its next request: nothing is resent.
    assert!(
        device
            .exchange(&json!({}), Some(0))
            .await
            .unwrap()
            .is_empty()
    );
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"][0]["status"], "delivered");
    device
        .exchange(&json!({"r":{"ok":true}}), Some(0))
        .await
        .unwrap();
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"], json!([]));
    assert_eq!(view["state"]["ringing"], json!(true));
}

#[tokio::test]
async fn a_seed_format_device_never_sees_the_extension() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("seed").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"r":{"p":5,"d":60}}))
        .await
        .unwrap();
    let answer = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(
        Value::Object(answer),
        json!({"r":{"p":5,"d":60}}),
        "no seq key"
    );
}

#[tokio::test]
async fn the_wait_is_capped_by_config_and_ends_with_an_empty_answer() {
    let server = TestServer::start_with(|c| {
        c.poll.wait_secs = 1;
        c.poll.offline_after_secs = 5;
    })
    .await;
    let (_owner, mut device) = server.owner_and_device("wait").await;
    // Asks for an hour; the server's cap of one second applies.
    let commands = device.exchange(&json!({}), Some(3600)).await.unwrap();
    assert!(commands.is_empty());
    assert_eq!(server.parked(), 0);
    let path = format!("/1/cmd/{}?wait=soon", device.id());
    let reply = send_signed(&mut device, &path, b"{}", b"{}").await;
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 400, 101, "wait");
    assert!(
        reply.headers.contains_key("server-authorization"),
        "errors to a verified device are signed"
    );
}

#[tokio::test]
async fn forgetting_a_device_releases_its_poll_and_revokes_its_key() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("forget").await;
    let id = device.id().to_owned();
    let poll = tokio::spawn(async move {
        let result = device.exchange(&json!({}), Some(30)).await;
        (device, result)
    });
    server.until_parked(1).await;
    let (status, _) = owner
        .call(Method::DELETE, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (mut device, result) = poll.await.unwrap();
    let (status, body) = status_error(result);
    assert_error(status, &body, 401, 114, "register again");
    let (status, _) = status_error(device.exchange(&json!({}), Some(0)).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["devices"], json!([]));
}

#[tokio::test]
async fn the_poll_loop_runs_commands_and_acknowledges_them() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("loop").await;
    let id = device.id().to_owned();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        device
            .run(
                30,
                move |commands| {
                    let _ = seen_tx.send(Value::Object(commands.clone()));
                    commands
                        .keys()
                        .map(|k| (k.clone(), json!({"ok": true})))
                        .collect()
                },
                async {
                    let _ = stop_rx.await;
                },
            )
            .await
    });
    for code in ["1111", "2222", "3333"] {
        server.until_parked(1).await;
        owner.command(&id, &json!({"l":{"c":code}})).await.unwrap();
        let seen = seen_rx.recv().await.unwrap();
        assert_eq!(seen["l"]["c"], code);
    }
    server.until_parked(1).await;
    let _ = stop_tx.send(());
    runner.await.unwrap().unwrap();
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"], json!([]));
    assert_eq!(view["outcomes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn behind_a_proxy_signatures_are_checked_against_the_public_url() {
    let server =
        TestServer::start_with(|c| c.server.public_url = Some("https://find.example.com".into()))
            .await;
    let mut owner = server.owner("public").await;
    let (id, secret) = register(&mut owner, "phone").await;
    // Signed for the URL the device knows, whatever the Host header says on our side.
    let mut device = DeviceClient::new(
        HttpClient::new(server.addr).with_host("find.example.com", 443),
        &id,
        &secret,
    );
    assert!(
        device
            .exchange(&json!({}), Some(0))
            .await
            .unwrap()
            .is_empty()
    );
    // Signed for the address the server happens to listen on: refused.
    let mut direct = DeviceClient::new(server.http(), &id, &secret);
    let (status, body) = status_error(direct.exchange(&json!({}), Some(0)).await);
    assert_error(status, &body, 401, 115, "MAC");
}
