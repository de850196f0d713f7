//! Signing in with an OpenID Connect provider, against a tiny fake provider (JWKS and token
//! endpoint) served by the test on loopback, with keys the test generates.
//!
//! - Bearer JWTs (RS256 and ES256) from the provider let owners list devices and register
//!   them; `sub` maps to one account, made on first use and kept across a restart.
//! - Wrong issuer, audience, expiry, signature, algorithm or key type are refused.
//! - A rotated key is found by fetching the JWKS again, at most once per interval.
//! - The page's sign-in: authorization code flow with PKCE (S256), state and nonce.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rsa::pkcs8::EncodePrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

use support::{TestServer, assert_error};
use wheresmyfox::client::{HttpClient, OwnerClient};

const ISSUER: &str = "https://accounts.example.test";
const AUDIENCE: &str = "wheresmyfox-test";

/// A signing key of the fake provider.
enum Key {
    /// The key pair, and its modulus and exponent (big-endian) for the JWKS.
    Rsa(RsaKeyPair, Vec<u8>, Vec<u8>),
    Ec(EcdsaKeyPair),
}

struct Signer {
    kid: String,
    key: Key,
}

impl Signer {
    fn rsa(kid: &str) -> Signer {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("RSA key");
        let der = private.to_pkcs8_der().expect("PKCS#8");
        Signer {
            kid: kid.into(),
            key: Key::Rsa(
                RsaKeyPair::from_pkcs8(der.as_bytes()).expect("ring RSA key"),
                private.n().to_bytes_be(),
                private.e().to_bytes_be(),
            ),
        }
    }

    fn ec(kid: &str) -> Signer {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
        Signer {
            kid: kid.into(),
            key: Key::Ec(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key")),
        }
    }

    fn jwk(&self) -> Value {
        match &self.key {
            Key::Rsa(_, n, e) => {
                json!({"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                       "n": URL_SAFE_NO_PAD.encode(n), "e": URL_SAFE_NO_PAD.encode(e)})
            }
            Key::Ec(pair) => {
                let point = pair.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                       "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                       "y": URL_SAFE_NO_PAD.encode(&point[33..65])})
            }
        }
    }

    fn alg(&self) -> &'static str {
        match self.key {
            Key::Rsa(..) => "RS256",
            Key::Ec(_) => "ES256",
        }
    }

    /// A JWT with `claims`, signed with this key, its header saying `alg`.
    fn sign_as(&self, alg: &str, claims: &Value) -> String {
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.key {
            Key::Rsa(pair, _, _) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut out,
                )
                .expect("sign");
                out
            }
            Key::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .expect("sign")
                .as_ref()
                .to_vec(),
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg(), claims)
    }
}

fn claims(sub: &str) -> Value {
    let now = wheresmyfox::clock::now_ms() / 1000;
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600, "auth_time": now,
           "email": format!("{sub}@accounts.example.test")})
}

/// Codes the provider has handed out: code → (PKCE challenge, nonce, sub).
type Codes = Mutex<HashMap<String, (String, String, String)>>;

/// The fake provider: a JWKS that the test can change, and a token endpoint.
struct Provider {
    addr: SocketAddr,
    jwks: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    /// code → (PKCE challenge, nonce, sub), as if the user had signed in at the provider.
    codes: Arc<Codes>,
    /// The key the token endpoint signs ID tokens with.
    id_key: Arc<Signer>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    async fn start(keys: &[&Signer], id_key: Arc<Signer>) -> Provider {
        let jwks = Arc::new(Mutex::new(
            json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}),
        ));
        let fetches = Arc::new(AtomicUsize::new(0));
        let codes: Arc<Codes> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (jwks2, fetches2, codes2, key2) =
            (jwks.clone(), fetches.clone(), codes.clone(), id_key.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (jwks, fetches, codes, key) = (
                    jwks2.clone(),
                    fetches2.clone(),
                    codes2.clone(),
                    key2.clone(),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (jwks, fetches, codes, key) =
                            (jwks.clone(), fetches.clone(), codes.clone(), key.clone());
                        async move {
                            Ok::<_, Infallible>(
                                provider_answer(request, &jwks, &fetches, &codes, &key).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Provider {
            addr,
            jwks,
            fetches,
            codes,
            id_key,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn provider_answer(
    request: Request<Incoming>,
    jwks: &Mutex<Value>,
    fetches: &AtomicUsize,
    codes: &Codes,
    key: &Signer,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        response
    };
    match request.uri().path() {
        "/jwks" => {
            fetches.fetch_add(1, Ordering::SeqCst);
            let body = jwks.lock().unwrap().clone();
            reply(StatusCode::OK, body)
        }
        "/token" => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = String::from_utf8_lossy(&body)
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| {
                    (
                        k.to_owned(),
                        wheresmyfox::oidc::decode(v).unwrap_or_default(),
                    )
                })
                .collect();
            let Some((challenge, nonce, sub)) = form
                .get("code")
                .and_then(|code| codes.lock().unwrap().remove(code))
            else {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let computed = URL_SAFE_NO_PAD.encode(ring::digest::digest(
                &ring::digest::SHA256,
                verifier.as_bytes(),
            ));
            if computed != challenge
                || form.get("grant_type").map(String::as_str) != Some("authorization_code")
                || form.get("client_id").map(String::as_str) != Some(AUDIENCE)
            {
                return reply(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
            }
            let mut id_claims = claims(&sub);
            id_claims["nonce"] = json!(nonce);
            reply(
                StatusCode::OK,
                json!({"id_token": key.sign(&id_claims), "token_type": "Bearer", "access_token": "opaque"}),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, json!({})),
    }
}

async fn start_server(provider: &Provider, dir: Option<tempfile::TempDir>) -> TestServer {
    let (jwks, authorize, token) = (
        provider.url("/jwks"),
        provider.url("/authorize"),
        provider.url("/token"),
    );
    let adjust = move |config: &mut wheresmyfox::Config| {
        config.oidc.issuer = ISSUER.into();
        config.oidc.audience = AUDIENCE.into();
        config.oidc.jwks_url = jwks;
        config.oidc.jwks_refetch_secs = 3600;
        config.oidc.provider_name = "Example Accounts".into();
        config.oidc.authorization_endpoint = authorize;
        config.oidc.token_endpoint = token;
        config.oidc.client_id = AUDIENCE.into();
    };
    match dir {
        Some(dir) => TestServer::start_in(dir, adjust).await,
        None => TestServer::start_with(adjust).await,
    }
}

fn bearer(server: &TestServer, token: &str) -> OwnerClient {
    OwnerClient {
        http: HttpClient::new(server.addr),
        token: token.to_owned(),
        userid: String::new(),
    }
}

#[tokio::test]
async fn provider_tokens_sign_owners_and_devices_in() {
    let rsa = Signer::rsa("rsa-1");
    let ec = Signer::ec("ec-1");
    let provider = Provider::start(&[&rsa, &ec], Arc::new(Signer::ec("unused"))).await;
    let server = start_server(&provider, None).await;

    // RS256: the first call makes the account; the phone registers with the same token.
    let mut owner = bearer(&server, &rsa.sign(&claims("alice")));
    let (status, list) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list, json!({"devices": []}));
    let mut phone = owner
        .register_device("Alice's phone")
        .await
        .expect("register with a JWT");
    assert_eq!(
        phone.exchange(&json!({}), Some(0)).await.unwrap(),
        serde_json::Map::new()
    );
    // ES256, same subject: the same account, so the same device.
    let mut again = bearer(&server, &ec.sign(&claims("alice")));
    let (_, list) = again.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(list["devices"][0]["name"], json!("Alice's phone"));
    // Another subject sees nothing of Alice's.
    let mut bob = bearer(&server, &ec.sign(&claims("bob")));
    let (_, list) = bob.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(list, json!({"devices": []}));
    assert_eq!(
        provider.fetches.load(Ordering::SeqCst),
        1,
        "the JWKS is cached"
    );

    // The mapping is durable.
    let dir = server.stop_keeping_data().await;
    let server = start_server(&provider, Some(dir)).await;
    let mut after = bearer(&server, &rsa.sign(&claims("alice")));
    let (_, list) = after.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(
        list["devices"][0]["name"],
        json!("Alice's phone"),
        "after a restart"
    );
}

#[tokio::test]
async fn bad_provider_tokens_are_refused() {
    let ec = Signer::ec("ec-1");
    let rsa = Signer::rsa("rsa-1");
    let stranger = Signer::ec("ec-1");
    let provider = Provider::start(&[&ec, &rsa], Arc::new(Signer::ec("unused"))).await;
    let server = start_server(&provider, None).await;
    let now = wheresmyfox::clock::now_ms() / 1000;
    let mut cases: Vec<(String, &str)> = Vec::new();
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.example.test");
    cases.push((ec.sign(&c), "another issuer"));
    let mut c = claims("alice");
    c["aud"] = json!(["someone-else"]);
    cases.push((ec.sign(&c), "another audience"));
    let mut c = claims("alice");
    c["exp"] = json!(now - 3600);
    cases.push((ec.sign(&c), "expired"));
    let mut c = claims("alice");
    c.as_object_mut().unwrap().remove("exp");
    cases.push((ec.sign(&c), "no expiry"));
    let mut c = claims("alice");
    c["nbf"] = json!(now + 3600);
    cases.push((ec.sign(&c), "not valid yet"));
    let mut c = claims("alice");
    c["sub"] = json!("");
    cases.push((ec.sign(&c), "no subject"));
    // Same kid, another key: the signature does not verify.
    cases.push((stranger.sign(&claims("alice")), "signature"));
    // An RSA key's token relabelled ES256 (algorithm confusion), and "none".
    cases.push((rsa.sign_as("ES256", &claims("alice")), "does not match"));
    cases.push((rsa.sign_as("HS256", &claims("alice")), "RS256 or ES256"));
    let mut tampered = ec.sign(&claims("alice"));
    let payload = URL_SAFE_NO_PAD.encode(claims("mallory").to_string());
    let parts: Vec<&str> = tampered.split('.').collect();
    tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
    cases.push((tampered, "signature"));
    cases.push(("a.b.c".into(), "header"));
    for (token, needle) in cases {
        let (status, body) = bearer(&server, &token)
            .call(Method::GET, "/1/devices", None)
            .await
            .unwrap();
        assert_error(status, &body, 401, 203, needle);
    }
    // A token that is neither ours nor a JWT is the usual unknown token.
    let (status, body) = bearer(&server, "not-a-token")
        .call(Method::GET, "/1/devices", None)
        .await
        .unwrap();
    assert_error(status, &body, 401, 111, "unknown");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_do_not_flood_the_provider() {
    let old = Signer::ec("2025");
    let provider = Provider::start(&[&old], Arc::new(Signer::ec("unused"))).await;
    let server = TestServer::start_with(|config| {
        config.oidc.issuer = ISSUER.into();
        config.oidc.audience = AUDIENCE.into();
        config.oidc.jwks_url = provider.url("/jwks");
        config.oidc.jwks_refetch_secs = 1;
    })
    .await;
    let (status, _) = bearer(&server, &old.sign(&claims("alice")))
        .call(Method::GET, "/1/devices", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 1);
    // The provider rotates: a token with the new kid makes us fetch again.
    let new = Signer::ec("2026");
    *provider.jwks.lock().unwrap() = json!({"keys": [old.jwk(), new.jwk()]});
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = bearer(&server, &new.sign(&claims("alice")))
        .call(Method::GET, "/1/devices", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(provider.fetches.load(Ordering::SeqCst), 2);
    // A burst of made-up kids costs at most one fetch per interval.
    let unknown = Signer::ec("made-up");
    for _ in 0..20 {
        let (status, body) = bearer(&server, &unknown.sign(&claims("alice")))
            .call(Method::GET, "/1/devices", None)
            .await
            .unwrap();
        assert_error(status, &body, 401, 203, "does not list");
    }
    assert!(
        provider.fetches.load(Ordering::SeqCst) <= 3,
        "fetched {} times",
        provider.fetches.load(Ordering::SeqCst)
    );
}

/// The parameters of a URL's query.
fn query_of(url: &str) -> HashMap<String, String> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                wheresmyfox::oidc::decode(v).unwrap_or_default(),
            )
        })
        .collect()
}

fn set_cookies(reply: &wheresmyfox::client::Reply) -> Vec<String> {
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn cookie_value(cookies: &[String], name: &str) -> Option<String> {
    cookies
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|rest| rest.split(';').next().unwrap_or("").to_owned())
}

#[tokio::test]
async fn the_page_signs_in_with_the_provider_using_pkce_state_and_nonce() {
    let id_key = Arc::new(Signer::rsa("rsa-1"));
    let provider = Provider::start(&[&id_key], id_key.clone()).await;
    let server = start_server(&provider, None).await;
    let mut http = server.http();
    let get = |path: &str, cookie: Option<String>| {
        let path = path.to_owned();
        let headers: Vec<_> = cookie.into_iter().map(|c| (header::COOKIE, c)).collect();
        (path, headers)
    };
    // The page offers the button.
    let (status, config) = http
        .json(Method::GET, "/1/web/config", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["provider"]["name"], json!("Example Accounts"));

    // Off to the provider, with PKCE S256, state and nonce.
    let (path, headers) = get("/1/oidc/login", None);
    let reply = http
        .send(
            Method::GET,
            &path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&provider.url("/authorize?")),
        "{location}"
    );
    let params = query_of(&location);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], AUDIENCE);
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(
        params["redirect_uri"],
        format!("http://{}/1/oidc/callback", server.addr)
    );
    assert!(params["scope"].contains("openid"));
    let state = params["state"].clone();
    let state_cookie = cookie_value(&set_cookies(&reply), "wmf_oidc_state").expect("state cookie");
    assert_eq!(state_cookie, state);
    assert!(
        set_cookies(&reply)[0].contains("HttpOnly")
            && set_cookies(&reply)[0].contains("SameSite=Lax")
    );

    // The user signs in at the provider, which sends the browser back with a code.
    provider.codes.lock().unwrap().insert(
        "code-1".into(),
        (
            params["code_challenge"].clone(),
            params["nonce"].clone(),
            "carol".into(),
        ),
    );
    // Back in another browser (no state cookie): refused, and the code is not spent.
    let callback = format!("/1/oidc/callback?code=code-1&state={state}");
    let (path, headers) = get(&callback, None);
    let reply = http
        .send(
            Method::GET,
            &path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(set_cookies(&reply).is_empty());
    // Back in the right browser: a session cookie, and off to the page.
    let (path, headers) = get(&callback, Some(format!("wmf_oidc_state={state}")));
    let reply = http
        .send(
            Method::GET,
            &path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.headers[header::LOCATION], "/");
    let cookies = set_cookies(&reply);
    let session = cookie_value(&cookies, "wmf_session").expect("a session cookie");
    assert!(cookies.iter().any(|c| c.starts_with("wmf_session=")
        && c.contains("SameSite=Strict")
        && c.contains("HttpOnly")));
    let (path, headers) = get("/1/web/session", Some(format!("wmf_session={session}")));
    let me = http
        .send(
            Method::GET,
            &path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let me: Value = serde_json::from_slice(&me.body).unwrap();
    assert_eq!(me["email"], json!("carol@accounts.example.test"));
    // The same login cannot be replayed.
    let (path, headers) = get(&callback, Some(format!("wmf_oidc_state={state}")));
    let reply = http
        .send(
            Method::GET,
            &path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 400, 205, "start again");
    // A provider bearer token for the same subject reaches the same account.
    let mut bearer_owner = bearer(&server, &provider.id_key.sign(&claims("carol")));
    let (_, list) = bearer_owner
        .call(Method::GET, "/1/devices", None)
        .await
        .unwrap();
    assert_eq!(list, json!({"devices": []}));
    assert_eq!(
        server.gateway.accounts.user_count(),
        1,
        "one account for carol"
    );
}

#[tokio::test]
async fn a_login_whose_nonce_does_not_match_is_refused() {
    let id_key = Arc::new(Signer::ec("ec-1"));
    let provider = Provider::start(&[&id_key], id_key.clone()).await;
    let server = start_server(&provider, None).await;
    let mut http = server.http();
    let reply = http
        .send(
            Method::GET,
            "/1/oidc/login",
            &[],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let params = query_of(reply.headers[header::LOCATION].to_str().unwrap());
    let state = params["state"].clone();
    // The provider (or an attacker replaying another login's ID token) gets the nonce wrong.
    provider.codes.lock().unwrap().insert(
        "code-2".into(),
        (
            params["code_challenge"].clone(),
            "another nonce".into(),
            "dave".into(),
        ),
    );
    let reply = http
        .send(
            Method::GET,
            &format!("/1/oidc/callback?code=code-2&state={state}"),
            &[(header::COOKIE, format!("wmf_oidc_state={state}"))],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 401, 203, "nonce");
    assert!(set_cookies(&reply).is_empty(), "no session");
}

#[tokio::test]
async fn without_a_provider_there_is_no_provider_login() {
    let server = TestServer::start().await;
    let mut http = server.http();
    let (status, _) = http
        .json(Method::GET, "/1/oidc/login", None, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, config) = http
        .json(Method::GET, "/1/web/config", None, None)
        .await
        .unwrap();
    assert_eq!(config["provider"], Value::Null);
}

/// Signs `sub` in through the page's provider flow; returns the session cookie's value.
async fn provider_sign_in(
    server: &TestServer,
    provider: &Provider,
    path: &str,
    cookie: Option<&str>,
    sub: &str,
) -> wheresmyfox::client::Reply {
    let mut http = server.http();
    let headers: Vec<_> = cookie
        .map(|c| (header::COOKIE, c.to_owned()))
        .into_iter()
        .collect();
    let reply = http
        .send(
            Method::GET,
            path,
            &headers,
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
    let params = query_of(&location);
    let code = format!("code-{sub}-{}", params["state"]);
    provider.codes.lock().unwrap().insert(
        code.clone(),
        (
            params["code_challenge"].clone(),
            params["nonce"].clone(),
            sub.to_owned(),
        ),
    );
    let state = &params["state"];
    http.send(
        Method::GET,
        &format!("/1/oidc/callback?code={code}&state={state}"),
        &[(header::COOKIE, format!("wmf_oidc_state={state}"))],
        Bytes::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn an_owner_without_a_password_erases_by_signing_in_again_at_the_provider() {
    let id_key = Arc::new(Signer::ec("ec-1"));
    let provider = Provider::start(&[&id_key], id_key.clone()).await;
    let server = start_server(&provider, None).await;
    // Carol signs in on the page through the provider; her phone registers with a token.
    let reply = provider_sign_in(&server, &provider, "/1/oidc/login", None, "carol").await;
    let session = cookie_value(&set_cookies(&reply), "wmf_session").expect("session");
    let session_cookie = format!("wmf_session={session}");
    let mut phone_owner = bearer(&server, &id_key.sign(&claims("carol")));
    let phone = phone_owner.register_device("Carol's phone").await.unwrap();
    let id = phone.id().to_owned();
    let mut http = server.http();
    let me = http
        .send(
            Method::GET,
            "/1/web/session",
            &[(header::COOKIE, session_cookie.clone())],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let me: Value = serde_json::from_slice(&me.body).unwrap();
    assert_eq!(
        me["has_password"],
        json!(false),
        "the page offers the provider step-up"
    );
    let csrf = me["csrf"].as_str().unwrap().to_owned();
    // No password to give: the password step-up refuses.
    let refused = http
        .send(
            Method::POST,
            &format!("/1/devices/{id}/erase"),
            &[
                (header::COOKIE, session_cookie.clone()),
                (header::HeaderName::from_static("x-csrf-token"), csrf),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            Bytes::from_static(br#"{"password":"anything at all"}"#),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    // Without the session (a link from elsewhere), no erase login starts.
    let (status, _) = http
        .json(
            Method::GET,
            &format!("/1/oidc/login?erase={id}"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Someone else signing in at the provider does not erase Carol's phone.
    let reply = provider_sign_in(
        &server,
        &provider,
        &format!("/1/oidc/login?erase={id}"),
        Some(&session_cookie),
        "mallory",
    )
    .await;
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 400, 205, "someone else");
    let (_, detail) = phone_owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(detail["pending"], json!([]), "nothing queued");
    // Carol herself, just signed in again: the erase is queued and she is back on the page.
    let mut http = server.http();
    let reply = http
        .send(
            Method::GET,
            &format!("/1/oidc/login?erase={id}"),
            &[(header::COOKIE, session_cookie.clone())],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let location = reply.headers[header::LOCATION].to_str().unwrap();
    assert!(
        location.contains("prompt=login") && location.contains("max_age=0"),
        "{location}"
    );
    let reply = provider_sign_in(
        &server,
        &provider,
        &format!("/1/oidc/login?erase={id}"),
        Some(&session_cookie),
        "carol",
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::SEE_OTHER,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.headers[header::LOCATION], "/");
    let (_, detail) = phone_owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(detail["pending"][0]["command"], json!("e"), "{detail}");
}
