//! Owner accounts, registration and the owner API, over loopback against the real server.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::{PASSWORD, TestServer, assert_error, device_view};
use wheresmyfox::client::{HttpClient, OwnerClient, random_secret};

#[tokio::test]
async fn accounts_are_created_once_and_sign_in_checks_the_password() {
    let server = TestServer::start().await;
    let mut http = server.http();
    let body = json!({"email": "Ada@Example.com", "password": PASSWORD});
    let (status, created) = http
        .json(Method::POST, "/1/accounts", None, Some(&body))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let userid = created["userid"].as_str().unwrap().to_owned();
    assert_eq!(userid.len(), 32);

    let again = json!({"email": "ada@example.com", "password": "another password"});
    let (status, body) = http
        .json(Method::POST, "/1/accounts", None, Some(&again))
        .await
        .unwrap();
    assert_error(status, &body, 409, 132, "already exists");

    let short = json!({"email": "bob@example.com", "password": "1234567"});
    let (status, body) = http
        .json(Method::POST, "/1/accounts", None, Some(&short))
        .await
        .unwrap();
    assert_error(status, &body, 400, 103, "at least 8");

    let bad_email = json!({"email": "not an email", "password": PASSWORD});
    let (status, body) = http
        .json(Method::POST, "/1/accounts", None, Some(&bad_email))
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "email");

    let extra = json!({"email": "c@example.com", "password": PASSWORD, "admin": true});
    let (status, body) = http
        .json(Method::POST, "/1/accounts", None, Some(&extra))
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "admin");

    let login = json!({"email": "ADA@example.com", "password": PASSWORD});
    let (status, session) = http
        .json(Method::POST, "/1/session", None, Some(&login))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["userid"], json!(userid));
    assert!(session["token"].as_str().unwrap().len() >= 43);

    let wrong = json!({"email": "ada@example.com", "password": "wrong password"});
    let (status, body) = http
        .json(Method::POST, "/1/session", None, Some(&wrong))
        .await
        .unwrap();
    assert_error(status, &body, 401, 112, "wrong email or password");
    let nobody = json!({"email": "nobody@example.com", "password": PASSWORD});
    let (status, body) = http
        .json(Method::POST, "/1/session", None, Some(&nobody))
        .await
        .unwrap();
    assert_error(status, &body, 401, 112, "wrong email or password");
}

#[tokio::test]
async fn bad_bodies_get_clear_errors() {
    let server = TestServer::start().await;
    let mut http = server.http();
    let reply = http
        .send(
            Method::POST,
            "/1/accounts",
            &[(http::header::CONTENT_TYPE, "application/json".into())],
            bytes::Bytes::from_static(b"{\"email\":"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 400, 100, "JSON");

    let reply = http
        .send(
            Method::POST,
            "/1/accounts",
            &[(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded".into(),
            )],
            bytes::Bytes::from_static(b"email=a"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 415, 105, "application/json");

    let (status, body) = http
        .json(Method::GET, "/1/accounts", None, None)
        .await
        .unwrap();
    assert_error(status, &body, 405, 131, "POST");
    let (status, body) = http
        .json(Method::GET, "/nowhere", None, None)
        .await
        .unwrap();
    assert_error(status, &body, 404, 130, "not found");
}

#[tokio::test]
async fn owner_calls_need_a_valid_token_and_sign_out_revokes_it() {
    let server = TestServer::start().await;
    let mut owner = server.owner("tokens").await;
    let mut http = server.http();
    let (status, body) = http
        .json(Method::GET, "/1/devices", None, None)
        .await
        .unwrap();
    assert_error(status, &body, 401, 110, "Bearer");
    let (status, body) = http
        .json(Method::GET, "/1/devices", Some("forged"), None)
        .await
        .unwrap();
    assert_error(status, &body, 401, 111, "sign in again");

    let (status, body) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"devices": []}));
    let (status, _) = owner
        .call(Method::DELETE, "/1/session", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_error(status, &body, 401, 111, "token");
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let server = TestServer::start().await;
    let owner = server.owner("expiry").await;
    // A token issued with a lifetime already over.
    let accounts = wheresmyfox::accounts::Accounts::new(0);
    let user: wheresmyfox::ids::UserId = owner.userid.parse().unwrap();
    let (issued, _) = accounts.issue_token(user, &wheresmyfox::store::Journal::disabled());
    assert!(accounts.authenticate(&issued.token).is_err());
}

#[tokio::test]
async fn sign_up_can_be_closed_and_operators_add_users_through_the_admin_socket() {
    let server = TestServer::start_with(|c| c.accounts.signup = false).await;
    let mut http = server.http();
    let body = json!({"email": "eve@example.com", "password": PASSWORD});
    let (status, answer) = http
        .json(Method::POST, "/1/accounts", None, Some(&body))
        .await
        .unwrap();
    assert_error(status, &answer, 403, 121, "closed");

    let config = server.gateway.config.clone();
    let userid = wheresmyfox::admin::add_user(&config, "eve@example.com", PASSWORD)
        .await
        .unwrap();
    let owner = OwnerClient::sign_in_with(server.http(), "eve@example.com", PASSWORD)
        .await
        .unwrap();
    assert_eq!(owner.userid, userid);
    let err = wheresmyfox::admin::add_user(&config, "eve@example.com", PASSWORD)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[tokio::test]
async fn registration_validates_the_secret_push_url_and_user() {
    let server = TestServer::start().await;
    let mut owner = server.owner("register").await;
    let cases = [
        (
            json!({"pushurl": "https://push.example/x", "secret": "0123456789abcdef"}),
            400,
            104,
            "128 bits",
        ),
        (
            json!({"pushurl": "https://push.example/x", "secret": "00000000000000000000000000000000"}),
            400,
            104,
            "random",
        ),
        (
            json!({"pushurl": "https://push.example/x"}),
            400,
            101,
            "secret",
        ),
        (json!({"secret": random_secret()}), 400, 101, "pushurl"),
        (
            json!({"secret": random_secret(), "pushurl": "ftp://x/y"}),
            400,
            101,
            "pushurl",
        ),
        (
            json!({"secret": random_secret(), "pushurl": "https://p.example/x", "name": ""}),
            400,
            101,
            "name",
        ),
        (
            json!({"secret": random_secret(), "pushurl": "https://p.example/x", "accepts": ["r"]}),
            400,
            101,
            "accepts",
        ),
        (
            json!({"secret": random_secret(), "pushurl": "https://p.example/x", "userid": "someone-else"}),
            403,
            120,
            "userid",
        ),
    ];
    for (body, status, errno, needle) in cases {
        let (got, answer) = owner
            .call(Method::POST, "/1/register", Some(&body))
            .await
            .unwrap();
        assert_error(got, &answer, status, errno, needle);
    }
    let (status, body) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["devices"], json!([]), "nothing half-registered");

    let mut http = server.http();
    let body = json!({"secret": random_secret(), "pushurl": "https://p.example/x"});
    let (status, answer) = http
        .json(Method::POST, "/1/register", None, Some(&body))
        .await
        .unwrap();
    assert_error(status, &answer, 401, 110, "Bearer");

    let own = json!({"secret": random_secret(), "pushurl": "https://p.example/x", "userid": owner.userid, "has_passcode": true});
    let (status, answer) = owner
        .call(Method::POST, "/1/register", Some(&own))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id = answer["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(device_view(&mut owner, id).await["lockable"], json!(true));
}

#[tokio::test]
async fn a_known_id_keeps_its_data_and_an_unknown_one_starts_afresh() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("renew").await;
    let id = device.id().to_owned();
    device
        .exchange(
            &json!({"t":{"ok":true,"la":1.0,"lo":2.0,"ti":1700000000}}),
            Some(0),
        )
        .await
        .unwrap();
    owner
        .command(&id, &json!({"r":{"p":1,"d":5}}))
        .await
        .unwrap();

    // Same id, new secret and push URL: the id and its data stay.
    let renewed = json!({"deviceid": id, "secret": random_secret(), "pushurl": "https://p.example/new", "name": "Renamed"});
    let (status, answer) = owner
        .call(Method::POST, "/1/register", Some(&renewed))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["id"], json!(id));
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["name"], "Renamed");
    assert_eq!(view["last_position"]["lat"], json!(1.0));
    assert_eq!(view["pending"][0]["command"], "r");

    // An id the server does not know: a fresh id, nothing carried over.
    let unknown = json!({"deviceid": "ffffffffffffffffffffffffffffffff", "secret": random_secret(), "pushurl": "https://p.example/x"});
    let (_, answer) = owner
        .call(Method::POST, "/1/register", Some(&unknown))
        .await
        .unwrap();
    let fresh = answer["id"].as_str().unwrap().to_owned();
    assert_ne!(fresh, id);
    assert_ne!(fresh, "ffffffffffffffffffffffffffffffff");
    let view = device_view(&mut owner, &fresh).await;
    assert_eq!(view["last_position"], Value::Null);
    assert_eq!(view["pending"], json!([]));

    // Another user naming this device's id gets a fresh id, and the device is untouched.
    let mut other = server.owner("renew-other").await;
    let steal =
        json!({"deviceid": id, "secret": random_secret(), "pushurl": "https://evil.example/x"});
    let (_, answer) = other
        .call(Method::POST, "/1/register", Some(&steal))
        .await
        .unwrap();
    assert_ne!(answer["id"], json!(id));
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["name"], "Renamed");
    assert_eq!(view["pending"][0]["command"], "r");
}

#[tokio::test]
async fn devices_per_user_are_capped() {
    let server = TestServer::start_with(|c| c.devices.max_per_user = 2).await;
    let mut owner = server.owner("cap").await;
    owner.register_device("one").await.unwrap();
    owner.register_device("two").await.unwrap();
    let body = json!({"secret": random_secret(), "pushurl": "https://p.example/x"});
    let (status, answer) = owner
        .call(Method::POST, "/1/register", Some(&body))
        .await
        .unwrap();
    assert_error(status, &answer, 403, 122, "maximum of 2");
}

#[tokio::test]
async fn commands_are_validated_and_nothing_is_queued_on_error() {
    let server = TestServer::start().await;
    let (mut owner, _device) = server.owner_and_device("validate").await;
    let id = _device.id().to_owned();
    let path = format!("/1/devices/{id}/cmd");
    let cases = [
        (json!({"l":{"c":"12a4"}}), "l.c"),
        (json!({"l":{"c":123}}), "l.c"),
        (json!({"l":{"c":"123456789"}}), "l.c"),
        (json!({"r":{"p":0,"d":10}}), "r.p"),
        (json!({"r":{"p":10,"d":86401}}), "r.d"),
        (json!({"t":{"p":3601,"d":10}}), "t.p"),
        (json!({"t":{"p":"10","d":10}}), "t.p"),
        (json!({"m":{"n":"call me maybe","m":"hi"}}), "m.n"),
        (
            json!({"m":{"n":"+1 (408) 555-0100 ext 1234567","m":"hi"}}),
            "m.n",
        ),
        (json!({"m":{"m":"\u{e9}t\u{e9}"}}), "m.m"),
        (json!({"m":{"m":"x".repeat(101)}}), "m.m"),
        (json!({"e":{"force":true}}), "e.force"),
        (json!({"x":{}}), "x"),
        (json!({"r":{"p":1,"d":1},"l":{"c":"12"}}), "l.c"),
        (json!({}), "empty"),
        (json!("ring"), "object"),
    ];
    for (command, needle) in cases {
        let (status, body) = owner
            .call(Method::POST, &path, Some(&command))
            .await
            .unwrap();
        assert_error(status, &body, 400, 101, needle);
    }
    let view = device_view(&mut owner, &id).await;
    assert_eq!(
        view["pending"],
        json!([]),
        "a refused command queues nothing, not even its valid parts"
    );

    let ok = json!({"l":{"c":"0042"},"m":{"n":"+1 (408) 555-0100","m":"Please call this number"},"t":{"p":10,"d":0}});
    let queued = owner.command(&id, &ok).await.unwrap();
    assert_eq!(queued["command"], ok);
    assert_eq!(queued["queued"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn another_users_device_is_not_found_and_untouched() {
    let server = TestServer::start().await;
    let (mut alice, mut device) = server.owner_and_device("alice").await;
    let id = device.id().to_owned();
    let mut mallory = server.owner("mallory").await;
    let cases: [(Method, String, Option<Value>); 5] = [
        (Method::GET, format!("/1/devices/{id}"), None),
        (
            Method::PATCH,
            format!("/1/devices/{id}"),
            Some(json!({"name": "mine now"})),
        ),
        (Method::DELETE, format!("/1/devices/{id}"), None),
        (
            Method::POST,
            format!("/1/devices/{id}/cmd"),
            Some(json!({"e":{}})),
        ),
        (Method::GET, format!("/1/devices/{id}/events?since=0"), None),
    ];
    for (method, path, body) in cases {
        let (status, answer) = mallory
            .call(method.clone(), &path, body.as_ref())
            .await
            .unwrap();
        assert_error(status, &answer, 404, 130, "not found");
    }
    let (_, listed) = mallory.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(listed["devices"], json!([]));
    let view = device_view(&mut alice, &id).await;
    assert_eq!(view["name"], "alice's phone");
    assert_eq!(view["pending"], json!([]));
    assert!(
        device
            .exchange(&json!({}), Some(0))
            .await
            .unwrap()
            .is_empty(),
        "no erase reached it"
    );
}

#[tokio::test]
async fn the_device_list_shows_state_and_never_secrets() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("list").await;
    let id = device.id().to_owned();
    owner
        .command(&id, &json!({"r":{"p":2,"d":20}}))
        .await
        .unwrap();
    device
        .exchange(&json!({"has_passcode": true}), Some(0))
        .await
        .unwrap();
    let (status, body) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let listed = &body["devices"][0];
    assert_eq!(listed["id"], json!(id));
    assert_eq!(listed["name"], "list's phone");
    assert_eq!(listed["lockable"], json!(true));
    assert_eq!(listed["state"]["online"], json!(true));
    assert_eq!(listed["pending"][0]["command"], "r");
    assert!(listed["last_exchange_ms"].is_u64());
    let text = body.to_string() + &device_view(&mut owner, &id).await.to_string();
    for secret_field in ["secret", "pushurl", "push_url", "push.example"] {
        assert!(
            !text.contains(secret_field),
            "{secret_field} leaked: {text}"
        );
    }
}

#[tokio::test]
async fn devices_can_be_renamed() {
    let server = TestServer::start().await;
    let (mut owner, device) = server.owner_and_device("rename").await;
    let path = format!("/1/devices/{}", device.id());
    let (status, body) = owner
        .call(Method::PATCH, &path, Some(&json!({"name": "Work phone"})))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Work phone");
    let (status, body) = owner
        .call(Method::PATCH, &path, Some(&json!({"name": "x".repeat(65)})))
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "name");
    let (status, body) = owner
        .call(Method::PATCH, &path, Some(&json!({"label": "x"})))
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "label");
}

#[tokio::test]
async fn the_events_poll_follows_a_command_from_queue_to_outcome() {
    let server = TestServer::start().await;
    let (mut owner, mut device) = server.owner_and_device("events").await;
    let id = device.id().to_owned();
    let (status, start) = owner
        .call(Method::GET, &format!("/1/devices/{id}/events"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(start["events"][0]["type"], "registered");
    let mut since = start["next"].as_u64().unwrap();

    // An owner's screen waits for news while nothing happens yet.
    let mut watcher = OwnerClient {
        http: HttpClient::new(server.addr),
        token: owner.token.clone(),
        userid: owner.userid.clone(),
    };
    let watch_path = format!("/1/devices/{id}/events?since={since}&wait=30");
    let watch =
        tokio::spawn(async move { watcher.call(Method::GET, &watch_path, None).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(50)).await;
    owner
        .command(&id, &json!({"r":{"p":3,"d":9}}))
        .await
        .unwrap();
    let (status, first) = watch.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["events"][0]["type"], "command_queued");
    assert_eq!(first["events"][0]["command"], "r");
    assert_eq!(first["events"][0]["args"], json!({"p":3,"d":9}));

    device.exchange(&json!({}), Some(0)).await.unwrap();
    device
        .exchange(
            &json!({"r":{"ok":true},"t":{"ok":true,"la":10.0,"lo":20.0,"ti":1700000000}}),
            Some(0),
        )
        .await
        .unwrap();
    let mut types = Vec::new();
    loop {
        let (_, page) = owner
            .call(
                Method::GET,
                &format!("/1/devices/{id}/events?since={since}&limit=2"),
                None,
            )
            .await
            .unwrap();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        types.extend(
            events
                .iter()
                .map(|e| e["type"].as_str().unwrap().to_owned()),
        );
        since = page["next"].as_u64().unwrap();
    }
    assert_eq!(
        types,
        [
            "command_queued",
            "online",
            "command_sent",
            "command_acknowledged",
            "position"
        ]
    );

    let (status, body) = owner
        .call(
            Method::GET,
            &format!("/1/devices/{id}/events?since=x"),
            None,
        )
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "since");
}

#[tokio::test]
async fn a_device_that_stops_polling_is_shown_offline() {
    let server = TestServer::start_with(|c| {
        c.poll.wait_secs = 1;
        c.poll.offline_after_secs = 2;
    })
    .await;
    let (mut owner, mut device) = server.owner_and_device("offline").await;
    let id = device.id().to_owned();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["online"],
        json!(true)
    );
    let mut since = 0;
    let mut offline = false;
    for _ in 0..10 {
        let path = format!("/1/devices/{id}/events?since={since}&wait=1");
        let (_, page) = owner.call(Method::GET, &path, None).await.unwrap();
        if page["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "offline")
        {
            offline = true;
            break;
        }
        since = page["next"].as_u64().unwrap();
    }
    assert!(offline, "an offline event within the configured bound");
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["online"],
        json!(false)
    );
}

#[tokio::test]
async fn the_heartbeat_reports_counts() {
    let server = TestServer::start().await;
    let (_owner, mut device) = server.owner_and_device("heartbeat").await;
    let poll = tokio::spawn(async move { device.exchange(&json!({}), Some(1)).await });
    server.until_parked(1).await;
    let (status, body) = server
        .http()
        .json(Method::GET, "/__heartbeat__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["devices"], json!(1));
    assert_eq!(body["parked"], json!(1));
    poll.await.unwrap().unwrap();
    let (status, _) = server
        .http()
        .json(Method::GET, "/__lbheartbeat__", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}
