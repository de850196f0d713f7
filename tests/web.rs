//! The owner's web page over the real server: the page and its security headers, browser
//! sessions (cookie flags, expiry, sign-out, restart), CSRF on cookie changes, and the erase
//! that needs the password again.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::{PASSWORD, TestServer, assert_error};
use wheresmyfox::client::HttpClient;
use wheresmyfox::websession::SessionImage;

/// A browser's view of one answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// Sends a request the way the page does: the cookie, and the CSRF token when given.
async fn web(
    http: &mut HttpClient,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let mut headers = Vec::new();
    if let Some(cookie) = cookie {
        headers.push((header::COOKIE, format!("wmf_session={cookie}")));
    }
    if let Some(csrf) = csrf {
        headers.push((
            header::HeaderName::from_static("x-csrf-token"),
            csrf.to_owned(),
        ));
    }
    let bytes = match body {
        Some(body) => {
            headers.push((header::CONTENT_TYPE, "application/json".to_owned()));
            Bytes::from(serde_json::to_vec(body).unwrap())
        }
        None => Bytes::new(),
    };
    let reply = http
        .send(method, path, &headers, bytes, Duration::from_secs(20))
        .await
        .expect("request");
    let body = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    Answer {
        status: reply.status,
        headers: reply.headers,
        body,
    }
}

/// Signs up and signs in from the "page": (cookie value, CSRF token, Set-Cookie header).
async fn browser_sign_in(server: &TestServer, name: &str) -> (String, String, String) {
    let email = format!("{name}@example.com");
    let mut http = server.http();
    let credentials = json!({"email": email, "password": PASSWORD});
    let created = web(
        &mut http,
        Method::POST,
        "/1/accounts",
        None,
        None,
        Some(&credentials),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let signed_in = web(
        &mut http,
        Method::POST,
        "/1/web/session",
        None,
        None,
        Some(&credentials),
    )
    .await;
    assert_eq!(signed_in.status, StatusCode::OK, "{}", signed_in.body);
    let set_cookie = signed_in.headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    let cookie = set_cookie
        .strip_prefix("wmf_session=")
        .and_then(|rest| rest.split(';').next())
        .expect("the session cookie")
        .to_owned();
    let csrf = signed_in.body["csrf"].as_str().expect("csrf").to_owned();
    (cookie, csrf, set_cookie)
}

fn header_of<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
}

fn assert_security_headers(headers: &HeaderMap) {
    let policy = header_of(headers, "content-security-policy");
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(policy.contains("style-src 'self'"), "{policy}");
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("unsafe"), "{policy}");
    assert_eq!(header_of(headers, "x-content-type-options"), "nosniff");
    assert!(!header_of(headers, "referrer-policy").is_empty());
}

#[tokio::test]
async fn the_page_and_every_answer_carry_the_security_headers() {
    let server = TestServer::start().await;
    let mut http = server.http();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/map.js", "text/javascript"),
        ("/app.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let reply = http
            .send(Method::GET, path, &[], Bytes::new(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{path}");
        assert!(
            header_of(&reply.headers, "content-type").starts_with(content_type),
            "{path}"
        );
        assert_security_headers(&reply.headers);
        // Tiles come from the configured origin and nowhere else.
        let policy = header_of(&reply.headers, "content-security-policy");
        assert!(
            policy.contains("img-src 'self' data: https://tile.openstreetmap.org;"),
            "{policy}"
        );
    }
    // The page has no inline script or style for the policy to forbid.
    let page = http
        .send(Method::GET, "/", &[], Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap();
    let html = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(!html.contains("<style"), "no inline style element");
    assert!(!html.contains(" style="), "no style attributes");
    assert!(
        html.matches("<script").count() == html.matches("<script src=").count(),
        "every script is a file"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing from elsewhere"
    );
    // API answers and errors too.
    let missing = web(&mut http, Method::GET, "/nope", None, None, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_security_headers(&missing.headers);
    let list = web(&mut http, Method::GET, "/1/devices", None, None, None).await;
    assert_error(list.status, &list.body, 401, 110, "credentials");
    assert_security_headers(&list.headers);
    let wrong = web(&mut http, Method::POST, "/app.js", None, None, None).await;
    assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_page_config_names_the_tiles_and_nothing_else() {
    let server = TestServer::start_with(|config| {
        config.web.tile_url = String::new();
    })
    .await;
    let mut http = server.http();
    let answer = web(&mut http, Method::GET, "/1/web/config", None, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["tiles"], Value::Null);
    assert_eq!(answer.body["signup"], json!(true));
    let policy = header_of(&answer.headers, "content-security-policy");
    assert!(policy.contains("img-src 'self' data:;"), "{policy}");
}

#[tokio::test]
async fn signing_in_sets_an_http_only_strict_cookie() {
    let server = TestServer::start().await;
    let (cookie, csrf, set_cookie) = browser_sign_in(&server, "ada").await;
    assert_eq!(cookie.len(), 43, "256 random bits, base64url");
    for part in ["Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=43200"] {
        assert!(set_cookie.contains(part), "{set_cookie} lacks {part}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    // The page learns who it is and the CSRF token from the cookie alone.
    let mut http = server.http();
    let me = web(
        &mut http,
        Method::GET,
        "/1/web/session",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], json!("ada@example.com"));
    assert_eq!(me.body["csrf"], json!(csrf));
    // Wrong password: the usual 401, and no cookie.
    let wrong = web(
        &mut http,
        Method::POST,
        "/1/web/session",
        None,
        None,
        Some(&json!({"email": "ada@example.com", "password": "not the password"})),
    )
    .await;
    assert_error(
        wrong.status,
        &wrong.body,
        401,
        112,
        "wrong email or password",
    );
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());
    // A form post from another site cannot sign the browser in (login CSRF).
    let form = http
        .send(
            Method::POST,
            "/1/web/session",
            &[(header::CONTENT_TYPE, "text/plain".to_owned())],
            Bytes::from_static(
                br#"{"email":"ada@example.com","password":"correct horse battery"}"#,
            ),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(form.headers.get(header::SET_COOKIE).is_none());
    // No cookie: the page is told to sign in.
    let anonymous = web(&mut http, Method::GET, "/1/web/session", None, None, None).await;
    assert_error(anonymous.status, &anonymous.body, 401, 110, "credentials");
}

#[tokio::test]
async fn the_cookie_is_secure_behind_an_https_public_url() {
    let server = TestServer::start_with(|config| {
        config.server.public_url = Some("https://find.example.com".into());
    })
    .await;
    let (_, _, set_cookie) = browser_sign_in(&server, "ada").await;
    assert!(set_cookie.ends_with("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn changes_by_cookie_need_the_csrf_token() {
    let server = TestServer::start().await;
    let (cookie, csrf, _) = browser_sign_in(&server, "ada").await;
    let mut owner =
        wheresmyfox::client::OwnerClient::sign_in_with(server.http(), "ada@example.com", PASSWORD)
            .await
            .unwrap();
    let device = owner.register_device("Ada's phone").await.unwrap();
    let path = format!("/1/devices/{}/cmd", device.id());
    let mut http = server.http();
    let ring = json!({"r": {"p": 10, "d": 60}});
    // Reading needs only the cookie.
    let list = web(
        &mut http,
        Method::GET,
        "/1/devices",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body["devices"][0]["name"], json!("Ada's phone"));
    // Changing without the token, or with another session's, is refused and changes nothing.
    let (_, other_csrf, _) = browser_sign_in(&server, "bob").await;
    for offered in [None, Some(""), Some(other_csrf.as_str())] {
        let refused = web(
            &mut http,
            Method::POST,
            &path,
            Some(&cookie),
            offered,
            Some(&ring),
        )
        .await;
        assert_error(refused.status, &refused.body, 403, 200, "X-CSRF-Token");
    }
    let detail = web(
        &mut http,
        Method::GET,
        &format!("/1/devices/{}", device.id()),
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(detail.body["pending"], json!([]), "nothing was queued");
    let rename = web(
        &mut http,
        Method::PATCH,
        &format!("/1/devices/{}", device.id()),
        Some(&cookie),
        None,
        Some(&json!({"name": "stolen"})),
    )
    .await;
    assert_error(rename.status, &rename.body, 403, 200, "X-CSRF-Token");
    // With it, the command is queued.
    let queued = web(
        &mut http,
        Method::POST,
        &path,
        Some(&cookie),
        Some(&csrf),
        Some(&ring),
    )
    .await;
    assert_eq!(queued.status, StatusCode::ACCEPTED, "{}", queued.body);
    assert_eq!(queued.body["queued"][0]["command"], json!("r"));
    // Another owner's session sees no such device, token or not.
    let (bob_cookie, bob_csrf, _) = browser_sign_in(&server, "carol").await;
    let foreign = web(
        &mut http,
        Method::POST,
        &path,
        Some(&bob_cookie),
        Some(&bob_csrf),
        Some(&ring),
    )
    .await;
    assert_error(foreign.status, &foreign.body, 404, 130, "not found");
    // Device secrets and push URLs never reach the browser.
    let detail = web(
        &mut http,
        Method::GET,
        &format!("/1/devices/{}", device.id()),
        Some(&cookie),
        None,
        None,
    )
    .await;
    let text = detail.body.to_string();
    assert!(
        !text.contains("push.example.invalid") && !text.contains("secret"),
        "{text}"
    );
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    let server = TestServer::start().await;
    let (cookie, csrf, _) = browser_sign_in(&server, "ada").await;
    let mut http = server.http();
    let without = web(
        &mut http,
        Method::DELETE,
        "/1/web/session",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_error(without.status, &without.body, 403, 200, "X-CSRF-Token");
    let out = web(
        &mut http,
        Method::DELETE,
        "/1/web/session",
        Some(&cookie),
        Some(&csrf),
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let cleared = header_of(&out.headers, "set-cookie");
    assert!(
        cleared.starts_with("wmf_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    let after = web(
        &mut http,
        Method::GET,
        "/1/devices",
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_error(after.status, &after.body, 401, 111, "sign in again");
}

#[tokio::test]
async fn sessions_survive_a_restart_as_digests_and_sign_out_does_too() {
    let server = TestServer::start().await;
    let (kept, _, _) = browser_sign_in(&server, "ada").await;
    let (ended, ended_csrf, _) = browser_sign_in(&server, "bob").await;
    let mut http = server.http();
    let out = web(
        &mut http,
        Method::DELETE,
        "/1/web/session",
        Some(&ended),
        Some(&ended_csrf),
        None,
    )
    .await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let dir = server.stop_keeping_data().await;
    // Nothing on disk holds a cookie value.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&kept) && !text.contains(&ended),
            "a cookie value is stored"
        );
    }
    let server = TestServer::start_in(dir, |_| {}).await;
    let mut http = server.http();
    let me = web(
        &mut http,
        Method::GET,
        "/1/web/session",
        Some(&kept),
        None,
        None,
    )
    .await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    let gone = web(
        &mut http,
        Method::GET,
        "/1/web/session",
        Some(&ended),
        None,
        None,
    )
    .await;
    assert_error(gone.status, &gone.body, 401, 111, "sign in again");
}

/// Puts a session with the given times straight into the server, as recovery would.
fn plant_session(server: &TestServer, token: &str, user: &str, created_ms: u64, last_used_ms: u64) {
    let digest: String = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    server.gateway.accounts.web.restore(&SessionImage {
        digest,
        user: user.parse().unwrap(),
        created_ms,
        last_used_ms,
    });
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_limit() {
    let server = TestServer::start_with(|config| {
        config.web.session_idle_minutes = 30;
        config.web.session_max_hours = 12;
    })
    .await;
    let (cookie, _, _) = browser_sign_in(&server, "ada").await;
    let mut http = server.http();
    let me = web(
        &mut http,
        Method::GET,
        "/1/web/session",
        Some(&cookie),
        None,
        None,
    )
    .await;
    let user = me.body["userid"].as_str().unwrap().to_owned();
    let now = wheresmyfox::clock::now_ms();
    let minute = 60_000;
    plant_session(
        &server,
        "idle-but-recent",
        &user,
        now - 60 * minute,
        now - 29 * minute,
    );
    plant_session(
        &server,
        "idle-too-long",
        &user,
        now - 60 * minute,
        now - 31 * minute,
    );
    plant_session(
        &server,
        "busy-but-old",
        &user,
        now - 12 * 60 * minute - 1000,
        now,
    );
    let ok = web(
        &mut http,
        Method::GET,
        "/1/devices",
        Some("idle-but-recent"),
        None,
        None,
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    for expired in ["idle-too-long", "busy-but-old"] {
        let refused = web(
            &mut http,
            Method::GET,
            "/1/devices",
            Some(expired),
            None,
            None,
        )
        .await;
        assert_error(refused.status, &refused.body, 401, 111, "sign in again");
    }
    // The page's background refreshes do not count as use: an open, forgotten page idles out.
    plant_session(
        &server,
        "left-open",
        &user,
        now - 60 * minute,
        now - 29 * minute,
    );
    let background = http
        .send(
            Method::GET,
            "/1/devices",
            &[
                (header::COOKIE, "wmf_session=left-open".to_owned()),
                (
                    header::HeaderName::from_static("x-wmf-background"),
                    "1".to_owned(),
                ),
            ],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(background.status, StatusCode::OK);
    let digest_of = |token: &str| -> String {
        ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let last_used = |token: &str| {
        let digest = digest_of(token);
        server
            .gateway
            .accounts
            .web
            .export()
            .into_iter()
            .find(|s| s.digest == digest)
            .map(|s| s.last_used_ms)
    };
    assert_eq!(
        last_used("left-open"),
        Some(now - 29 * minute),
        "not extended"
    );
    assert!(
        last_used("idle-but-recent").unwrap() >= now,
        "a real request is a use"
    );
    server.gateway.accounts.web.forget(&digest_of("left-open"));
    // Expired sessions nobody presents again are dropped by the periodic sweep.
    plant_session(
        &server,
        "forgotten",
        &user,
        now - 60 * minute,
        now - 31 * minute,
    );
    assert_eq!(server.gateway.accounts.web.len(), 3);
    server.gateway.sweep();
    assert_eq!(
        server.gateway.accounts.web.len(),
        2,
        "the sweep keeps live sessions only"
    );
}

#[tokio::test]
async fn erasing_from_the_browser_needs_the_password_again() {
    let server = TestServer::start().await;
    let (cookie, csrf, _) = browser_sign_in(&server, "ada").await;
    let mut owner =
        wheresmyfox::client::OwnerClient::sign_in_with(server.http(), "ada@example.com", PASSWORD)
            .await
            .unwrap();
    let device = owner.register_device("Ada's phone").await.unwrap();
    let id = device.id().to_owned();
    let mut http = server.http();
    let erase = json!({"e": {}});
    // Through /cmd, a session alone cannot erase, even with the CSRF token.
    let plain = web(
        &mut http,
        Method::POST,
        &format!("/1/devices/{id}/cmd"),
        Some(&cookie),
        Some(&csrf),
        Some(&erase),
    )
    .await;
    assert_error(plain.status, &plain.body, 403, 202, "password");
    let also_ring = json!({"e": {}, "r": {"p": 10, "d": 60}});
    let mixed = web(
        &mut http,
        Method::POST,
        &format!("/1/devices/{id}/cmd"),
        Some(&cookie),
        Some(&csrf),
        Some(&also_ring),
    )
    .await;
    assert_error(mixed.status, &mixed.body, 403, 202, "password");
    let path = format!("/1/devices/{id}/erase");
    let wrong = web(
        &mut http,
        Method::POST,
        &path,
        Some(&cookie),
        Some(&csrf),
        Some(&json!({"password": "guess guess"})),
    )
    .await;
    assert_error(wrong.status, &wrong.body, 403, 201, "password is wrong");
    let missing = web(
        &mut http,
        Method::POST,
        &path,
        Some(&cookie),
        Some(&csrf),
        Some(&json!({})),
    )
    .await;
    assert_error(missing.status, &missing.body, 400, 101, "password");
    let no_csrf = web(
        &mut http,
        Method::POST,
        &path,
        Some(&cookie),
        None,
        Some(&json!({"password": PASSWORD})),
    )
    .await;
    assert_error(no_csrf.status, &no_csrf.body, 403, 200, "X-CSRF-Token");
    let detail = web(
        &mut http,
        Method::GET,
        &format!("/1/devices/{id}"),
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(
        detail.body["pending"],
        json!([]),
        "nothing queued: {}",
        detail.body
    );
    // The password, checked by the server: queued.
    let right = web(
        &mut http,
        Method::POST,
        &path,
        Some(&cookie),
        Some(&csrf),
        Some(&json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(right.status, StatusCode::ACCEPTED, "{}", right.body);
    assert_eq!(right.body["command"], json!({"e": {}}));
    let detail = web(
        &mut http,
        Method::GET,
        &format!("/1/devices/{id}"),
        Some(&cookie),
        None,
        None,
    )
    .await;
    assert_eq!(detail.body["pending"][0]["command"], json!("e"));
    // Another owner's session cannot reach this device, password or not.
    let (bob, bob_csrf, _) = browser_sign_in(&server, "bob").await;
    let foreign = web(
        &mut http,
        Method::POST,
        &path,
        Some(&bob),
        Some(&bob_csrf),
        Some(&json!({"password": PASSWORD})),
    )
    .await;
    assert_error(foreign.status, &foreign.body, 404, 130, "not found");
    // A bearer token (an app, a script) may use the erase endpoint too, with the password.
    let (status, body) = owner
        .call(
            Method::POST,
            &path,
            Some(&json!({"password": "guess guess"})),
        )
        .await
        .unwrap();
    assert_error(status, &body, 403, 201, "password is wrong");
}

/// Kills the simulated phone when the test ends, however it ends.
struct Simulated(std::process::Child);

impl Drop for Simulated {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn simulate_device_registers_walks_and_answers_commands() {
    use std::io::{BufRead, BufReader};
    let server = TestServer::start().await;
    let mut owner = server.owner("ada").await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wheresmyfox"))
        .args(["simulate-device", "--server", &server.addr.to_string()])
        .args(["--email", "ada@example.com", "--password", PASSWORD])
        .args(["--every", "1", "--name", "Pretend phone"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start simulate-device");
    let stdout = child.stdout.take().unwrap();
    let _child = Simulated(child);
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("it prints")
        .expect("a line");
    assert!(
        first.starts_with("registered \"Pretend phone\" as device "),
        "{first}"
    );
    let id = first.rsplit(' ').next().unwrap().to_owned();
    // It walks: positions arrive and differ.
    let mut detail = Value::Null;
    for _ in 0..100 {
        let (_, body) = owner
            .call(Method::GET, &format!("/1/devices/{id}"), None)
            .await
            .unwrap();
        detail = body;
        if detail["previous_positions"]
            .as_array()
            .is_some_and(|p| p.len() >= 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = &detail["last_position"];
    let before = &detail["previous_positions"][0];
    assert!(
        last["lat"].is_number() && last["lat"] != before["lat"],
        "{detail}"
    );
    // It prints the commands it receives and acknowledges them.
    owner
        .command(&id, &json!({"r": {"p": 10, "d": 60}, "l": {"c": "0451"}}))
        .await
        .unwrap();
    let mut printed = Vec::new();
    while !printed
        .iter()
        .any(|l: &String| l.contains("lock: locked with code \"0451\""))
    {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("it prints the commands")
            .expect("a line");
        printed.push(line);
    }
    assert!(
        printed.iter().any(|l| l.starts_with("received ")),
        "{printed:?}"
    );
    for _ in 0..100 {
        let (_, body) = owner
            .call(Method::GET, &format!("/1/devices/{id}"), None)
            .await
            .unwrap();
        if body["outcomes"].as_array().is_some_and(|o| o.len() == 2) {
            assert!(
                body["outcomes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|o| o["ok"] == true)
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the simulated phone did not acknowledge the commands");
}
