//! The authorization matrix: every owner endpoint, called about someone else's device or
//! account with each kind of wrong credential, gives the right refusal and changes nothing.

mod support;

use http::{Method, StatusCode, header};
use serde_json::{Value, json};

use support::{TestServer, assert_error};
use wheresmyfox::client::HttpClient;

/// One owner endpoint, aimed at the victim's device.
struct Endpoint {
    method: Method,
    path: String,
    body: Option<Value>,
}

/// The credentials an attacker might hold instead of the victim's token.
#[derive(Debug, Clone, Copy)]
enum Wrong {
    Nothing,
    OtherUsersToken,
    ExpiredToken,
    RevokedToken,
    DeviceHawk,
    Malformed,
}

/// Everything an endpoint could change, in a form that compares equal when nothing did.
fn state(server: &TestServer) -> (u64, usize, Vec<(String, wheresmyfox::ids::UserId, u64)>) {
    let mut tokens = server.gateway.accounts.export_tokens();
    tokens.sort();
    (
        server.gateway.journal.len(),
        server.gateway.registry.len(),
        tokens,
    )
}

fn hex_sha256(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn every_owner_endpoint_refuses_every_wrong_credential_and_changes_nothing() {
    let server = TestServer::start().await;
    let (mut victim, mut victim_device) = server.owner_and_device("victim").await;
    let victim_id = victim_device.id().to_owned();
    let attacker = server.owner("attacker").await;

    // A token that has expired: the store knows it, its time is past.
    let expired = "expired-token-of-the-victim";
    let victim_user = server.gateway.accounts.authenticate(&victim.token).unwrap();
    server
        .gateway
        .accounts
        .restore_token(&hex_sha256(expired), victim_user, 1);
    // A token the victim signed out of.
    let mut revoked_session = server.owner("victim").await;
    let revoked = revoked_session.token.clone();
    let (status, _) = revoked_session
        .call(Method::DELETE, "/1/session", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A device's Hawk header, validly signed for the request it is sent with.
    let hawk_for = |device: &mut wheresmyfox::client::DeviceClient, path: &str| {
        device.authorization(path, b"").unwrap()
    };

    let device_path = format!("/1/devices/{victim_id}");
    let endpoints = [
        Endpoint {
            method: Method::GET,
            path: "/1/devices".into(),
            body: None,
        },
        Endpoint {
            method: Method::GET,
            path: device_path.clone(),
            body: None,
        },
        Endpoint {
            method: Method::PATCH,
            path: device_path.clone(),
            body: Some(json!({"name": "stolen"})),
        },
        Endpoint {
            method: Method::DELETE,
            path: device_path.clone(),
            body: None,
        },
        Endpoint {
            method: Method::POST,
            path: format!("{device_path}/cmd"),
            body: Some(json!({"e": {}})),
        },
        Endpoint {
            method: Method::GET,
            path: format!("{device_path}/events?wait=0"),
            body: None,
        },
        Endpoint {
            method: Method::POST,
            path: "/1/register".into(),
            body: Some(json!({
                "secret": wheresmyfox::client::random_secret(),
                "pushurl": "https://push.example.invalid/x",
                "name": "planted",
            })),
        },
        Endpoint {
            method: Method::DELETE,
            path: "/1/session".into(),
            body: None,
        },
    ];
    let wrongs = [
        Wrong::Nothing,
        Wrong::OtherUsersToken,
        Wrong::ExpiredToken,
        Wrong::RevokedToken,
        Wrong::DeviceHawk,
        Wrong::Malformed,
    ];

    let before = state(&server);
    let victim_view_before = support::device_view(&mut victim, &victim_id).await;
    let mut checked = 0;
    for endpoint in &endpoints {
        for wrong in wrongs {
            let authorization = match wrong {
                Wrong::Nothing => None,
                Wrong::OtherUsersToken => Some(format!("Bearer {}", attacker.token)),
                Wrong::ExpiredToken => Some(format!("Bearer {expired}")),
                Wrong::RevokedToken => Some(format!("Bearer {revoked}")),
                Wrong::DeviceHawk => Some(hawk_for(&mut victim_device, &endpoint.path)),
                Wrong::Malformed => Some("Bearer".to_owned()),
            };
            // What an attacker's token may legitimately do to the attacker's own account is
            // not a refusal: listing shows only their devices, registering plants a device in
            // their account, signing out ends their session. Those are checked below.
            let own_account_action = matches!(wrong, Wrong::OtherUsersToken)
                && (endpoint.path == "/1/devices"
                    || endpoint.path == "/1/register"
                    || endpoint.path == "/1/session");
            if own_account_action {
                continue;
            }
            let mut headers = vec![];
            if let Some(authorization) = authorization {
                headers.push((header::AUTHORIZATION, authorization));
            }
            let body = match &endpoint.body {
                Some(body) => {
                    headers.push((header::CONTENT_TYPE, "application/json".to_owned()));
                    serde_json::to_vec(body).unwrap().into()
                }
                None => bytes::Bytes::new(),
            };
            let reply = HttpClient::new(server.addr)
                .send(
                    endpoint.method.clone(),
                    &endpoint.path,
                    &headers,
                    body,
                    std::time::Duration::from_secs(5),
                )
                .await
                .unwrap();
            let answer: Value = serde_json::from_slice(&reply.body).unwrap();
            let case = format!("{} {} with {wrong:?}", endpoint.method, endpoint.path);
            let (status, errno, needle) = match wrong {
                // Someone else's device does not exist, as far as this caller can tell.
                Wrong::OtherUsersToken => (404, 130, "not found"),
                Wrong::ExpiredToken | Wrong::RevokedToken => (401, 111, "sign in again"),
                Wrong::Nothing | Wrong::DeviceHawk | Wrong::Malformed => (401, 110, "Bearer"),
            };
            assert_eq!(reply.status.as_u16(), status, "{case}: {answer}");
            assert_error(reply.status, &answer, status, errno, needle);
            assert!(
                reply.headers.contains_key(header::WWW_AUTHENTICATE) || status != 401,
                "{case}: a 401 says how to authenticate"
            );
            assert_eq!(state(&server), before, "{case} changed state");
            checked += 1;
        }
    }
    assert_eq!(checked, endpoints.len() * wrongs.len() - 3);

    // The victim sees their device exactly as before, and can still use it.
    let victim_view_after = support::device_view(&mut victim, &victim_id).await;
    assert_eq!(victim_view_after, victim_view_before);
    let commands = victim_device.exchange(&json!({}), Some(0)).await.unwrap();
    assert!(
        commands.is_empty(),
        "no command reached the device: {commands:?}"
    );

    // The attacker's own-account actions never touch the victim.
    let mut attacker = attacker;
    let (status, list) = attacker
        .call(Method::GET, "/1/devices", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["devices"], json!([]));
    let (status, _) = attacker
        .call(Method::DELETE, "/1/session", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = victim.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "the victim's session survives");
}
