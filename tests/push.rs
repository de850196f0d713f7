//! Push wake-ups over the real server: a device with no parked poll is pinged through its push
//! URL (served here, on loopback, by a scripted push endpoint), and a push URL cannot make the
//! server reach an internal host.

mod support;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use support::{PASSWORD, assert_error};
use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient, random_secret};
use wheresmyfox::outbound::{MAX_RESPONSE_BYTES, OutboundRequest, Resolve, SystemResolver};
use wheresmyfox::{Config, Gateway, server};

// === A scripted push endpoint ===

/// One request the endpoint received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// How the endpoint answers one request.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    /// Held this long before answering (a ping in flight).
    delay: Duration,
    location: Option<String>,
    /// An endless body instead of an empty one.
    endless: bool,
}

/// A push service on loopback that records what it is sent and answers from a script
/// (then `201 Created`, as push services do, once the script runs out).
struct Endpoint {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    task: JoinHandle<()>,
}

type ReplyBody = BoxBody<Bytes, Infallible>;

/// A body that never ends.
struct Endless;

static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            location: None,
            endless: false,
        }
    }
}

impl Endpoint {
    async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (seen2, script2) = (seen.clone(), script.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen2.clone(), script2.clone());
                let service = hyper::service::service_fn(move |request| {
                    answer(request, seen.clone(), script.clone())
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Endpoint {
            addr,
            seen,
            script,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn then(&self, reply: Reply) {
        self.script.lock().unwrap().push_back(reply);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
) -> Result<Response<ReplyBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    });
    let reply = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::status(201));
    tokio::time::sleep(reply.delay).await;
    let body: ReplyBody = if reply.endless {
        Endless.boxed()
    } else {
        Full::new(Bytes::new()).boxed()
    };
    let mut response = Response::builder().status(reply.status);
    if let Some(location) = reply.location {
        response = response.header(http::header::LOCATION, location);
    }
    Ok(response.body(body).unwrap())
}

// === Names that resolve where a test says ===

/// A resolver with fixed answers, for names that resolve to internal addresses. It counts
/// lookups, to show that each try resolves once and connects to what that lookup said.
#[derive(Debug, Default)]
struct Hosts(HashMap<String, Vec<IpAddr>>, AtomicUsize);

impl Hosts {
    fn new(entries: &[(&str, &[&str])]) -> Hosts {
        let map = entries
            .iter()
            .map(|(name, ips)| {
                let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
                ((*name).to_owned(), ips)
            })
            .collect();
        Hosts(map, AtomicUsize::new(0))
    }
}

impl Resolve for Hosts {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let found = self.0.get(host).map(|ips| {
            ips.iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect::<Vec<_>>()
        });
        Box::pin(async move {
            found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "unknown"))
        })
    }
}

// === The server under test ===

/// The real gateway on loopback, with push wake-ups on and the given resolver.
struct Server {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

/// What the tests use: plain http, loopback allowed, and quick retries.
fn loopback_push(config: &mut Config) {
    config.push.enabled = true;
    config.push.allow_http = true;
    config.push.allowed_cidrs = vec!["127.0.0.0/8".into()];
    config.push.retries = 3;
    config.push.backoff_base_ms = 20;
    config.push.backoff_max_ms = 100;
    config.push.connect_timeout_ms = 2_000;
    config.push.request_timeout_ms = 5_000;
}

impl Server {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Server {
        Server::start_in(
            tempfile::tempdir().unwrap(),
            adjust,
            Arc::new(SystemResolver),
        )
        .await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
        resolver: Arc<dyn Resolve>,
    ) -> Server {
        let mut config = Config::for_test(dir.path());
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let listener = server::bind(config.server.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::open_with_resolver(config, resolver).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, gateway.clone(), async {
            let _ = stopped.await;
        }));
        Server {
            addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
            dir: Some(dir),
        }
    }

    /// Stops cleanly and hands back the data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.dir.take().unwrap()
    }

    async fn owner(&self, name: &str) -> OwnerClient {
        OwnerClient::sign_up(self.addr, &format!("{name}@example.com"), PASSWORD)
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

// === Helpers ===

/// Registers a device with this push URL (and `pushtype`, if given); returns (id, secret).
async fn register(
    owner: &mut OwnerClient,
    push_url: &str,
    push_type: Option<&str>,
) -> (String, String) {
    let secret = random_secret();
    let mut body = json!({"secret": secret, "pushurl": push_url, "name": "phone"});
    if let Some(push_type) = push_type {
        body["pushtype"] = json!(push_type);
    }
    let (status, answer) = owner
        .call(Method::POST, "/1/register", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    (answer["id"].as_str().unwrap().to_owned(), secret)
}

/// Every event of the device.
async fn events(owner: &mut OwnerClient, id: &str) -> Vec<Value> {
    let (status, page) = owner
        .call(
            Method::GET,
            &format!("/1/devices/{id}/events?since=0"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{page}");
    page["events"].as_array().unwrap().clone()
}

/// The `n`-th `push_outcome` event (1 for the first), once it has happened.
async fn push_outcome(owner: &mut OwnerClient, id: &str, nth: usize) -> Value {
    for _ in 0..500 {
        let outcomes: Vec<Value> = events(owner, id)
            .await
            .into_iter()
            .filter(|e| e["type"] == "push_outcome")
            .collect();
        if outcomes.len() >= nth {
            return outcomes[nth - 1].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no push outcome #{nth}; events: {:?}",
        events(owner, id).await
    );
}

async fn device_view(owner: &mut OwnerClient, id: &str) -> Value {
    let (status, body) = owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Long enough for a stray second ping to have arrived if one had been started.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

// === Wake-ups ===

#[tokio::test]
async fn a_command_to_a_device_with_no_parked_poll_pings_its_simplepush_url_once() {
    let endpoint = Endpoint::start().await;
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("simple").await;
    // No pushtype: the seed's devices speak SimplePush.
    let (id, _) = register(&mut owner, &endpoint.url("/update/abc"), None).await;

    let answer = owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert_eq!(answer["parked"], false, "{answer}");
    assert_eq!(answer["push"], "sent", "{answer}");

    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    assert_eq!(outcome["tries"], 1, "{outcome}");
    assert_eq!(outcome["status"], 201, "{outcome}");
    settle().await;
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let ping = &seen[0];
    assert_eq!(ping.method, Method::PUT);
    assert_eq!(ping.path, "/update/abc");
    assert_eq!(
        ping.headers[http::header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    let body = std::str::from_utf8(&ping.body).unwrap();
    let version = body.strip_prefix("version=").expect(body);
    assert!(version.parse::<u64>().is_ok(), "{body}");

    // The owner's events tell the story: queued, woken via push, delivered to the service.
    let types: Vec<String> = events(&mut owner, &id)
        .await
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "registered",
            "command_queued",
            "woken_via_push",
            "push_outcome"
        ]
    );
    let woken = &events(&mut owner, &id).await[2];
    assert_eq!(woken["protocol"], "simplepush");

    let counts = server.gateway.push.stats.read();
    assert_eq!((counts.attempts, counts.delivered), (1, 1), "{counts:?}");
}

#[tokio::test]
async fn web_push_pings_are_posts_with_ttl_urgency_and_no_body() {
    let endpoint = Endpoint::start().await;
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("webpush").await;
    let (id, _) = register(&mut owner, &endpoint.url("/wpush/v2/xyz"), Some("webpush")).await;
    assert_eq!(
        device_view(&mut owner, &id).await["push_protocol"],
        "webpush"
    );

    owner
        .command(&id, &json!({"t":{"p":10,"d":60}}))
        .await
        .unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let ping = &seen[0];
    assert_eq!(ping.method, Method::POST);
    assert_eq!(ping.path, "/wpush/v2/xyz");
    assert_eq!(ping.headers["ttl"], "86400");
    assert_eq!(ping.headers["urgency"], "high");
    assert_eq!(ping.headers[http::header::CONTENT_LENGTH], "0");
    assert!(ping.body.is_empty());
    let woken = events(&mut owner, &id)
        .await
        .into_iter()
        .find(|e| e["type"] == "woken_via_push")
        .unwrap();
    assert_eq!(woken["protocol"], "webpush");

    // Any other push type is refused, naming the field.
    let (status, body) = owner
        .call(
            Method::POST,
            "/1/register",
            Some(&json!({"secret": random_secret(), "pushurl": endpoint.url("/x"), "pushtype": "apns"})),
        )
        .await
        .unwrap();
    assert_error(status, &body, 400, 101, "pushtype");
}

#[tokio::test]
async fn commands_queued_while_a_ping_is_in_flight_do_not_start_another() {
    let endpoint = Endpoint::start().await;
    endpoint.then(Reply {
        delay: Duration::from_millis(400),
        ..Reply::status(200)
    });
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("coalesce").await;
    let (id, _) = register(&mut owner, &endpoint.url("/p"), None).await;

    let mut answers = Vec::new();
    for command in [
        json!({"r":{"p":5,"d":30}}),
        json!({"t":{"p":10,"d":60}}),
        json!({"m":{"m":"Please call me"}}),
    ] {
        answers.push(owner.command(&id, &command).await.unwrap()["push"].clone());
    }
    assert_eq!(answers, ["sent", "in_flight", "in_flight"]);

    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    settle().await;
    assert_eq!(endpoint.seen().len(), 1, "{:?}", endpoint.seen());

    // Once that ping is over, the next command pings again.
    let answer = owner.command(&id, &json!({"r":{"d":0}})).await.unwrap();
    assert_eq!(answer["push"], "sent", "{answer}");
    push_outcome(&mut owner, &id, 2).await;
    assert_eq!(endpoint.seen().len(), 2);
}

#[tokio::test]
async fn a_device_with_a_parked_poll_gets_no_ping() {
    let endpoint = Endpoint::start().await;
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("parked").await;
    let (id, secret) = register(&mut owner, &endpoint.url("/p"), None).await;
    let mut device = DeviceClient::new(HttpClient::new(server.addr), &id, &secret);
    let poll = tokio::spawn(async move { device.exchange(&json!({}), Some(30)).await.unwrap() });
    for _ in 0..1000 {
        if server
            .gateway
            .stats
            .parked
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let answer = owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert_eq!(answer["parked"], true, "{answer}");
    assert_eq!(answer["push"], Value::Null, "{answer}");
    let received = poll.await.unwrap();
    assert!(received.contains_key("r"), "{received:?}");
    settle().await;
    assert!(endpoint.seen().is_empty(), "{:?}", endpoint.seen());
    assert!(
        !events(&mut owner, &id)
            .await
            .iter()
            .any(|e| e["type"] == "woken_via_push")
    );
}

#[tokio::test]
async fn a_5xx_is_retried_with_backoff_until_the_push_service_accepts() {
    let endpoint = Endpoint::start().await;
    endpoint.then(Reply::status(503));
    endpoint.then(Reply::status(502));
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("retry").await;
    let (id, _) = register(&mut owner, &endpoint.url("/p"), None).await;

    owner.command(&id, &json!({"e":{}})).await.unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    assert_eq!(outcome["tries"], 3, "{outcome}");
    assert_eq!(endpoint.seen().len(), 3);
    let counts = server.gateway.push.stats.read();
    assert_eq!(
        (
            counts.attempts,
            counts.retried,
            counts.delivered,
            counts.failed
        ),
        (3, 2, 1, 0),
        "{counts:?}"
    );
}

#[tokio::test]
async fn a_ping_that_keeps_failing_gives_up_after_the_configured_retries() {
    let endpoint = Endpoint::start().await;
    for _ in 0..10 {
        endpoint.then(Reply::status(500));
    }
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("giveup").await;
    let (id, _) = register(&mut owner, &endpoint.url("/p"), None).await;

    owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    assert_eq!(outcome["tries"], 4, "{outcome}");
    let reason = outcome["reason"].as_str().unwrap();
    assert!(
        reason.contains("500") && reason.contains("4 tries"),
        "{reason}"
    );
    settle().await;
    assert_eq!(endpoint.seen().len(), 4);
    assert_eq!(server.gateway.push.stats.read().failed, 1);
    // The command itself is still pending, for the device's next poll.
    assert_eq!(
        device_view(&mut owner, &id).await["pending"][0]["command"],
        "r"
    );
}

#[tokio::test]
async fn a_410_marks_the_push_url_dead_until_the_device_registers_a_new_one() {
    let endpoint = Endpoint::start().await;
    endpoint.then(Reply::status(410));
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("dead").await;
    let old_url = endpoint.url("/gone");
    let (id, _) = register(&mut owner, &old_url, None).await;
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["push_dead"],
        false
    );

    owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "dead", "{outcome}");
    assert_eq!(
        (outcome["tries"].clone(), outcome["status"].clone()),
        (json!(1), json!(410))
    );
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["push_dead"],
        true
    );
    assert_eq!(server.gateway.push.stats.read().dead, 1);

    // No more pings to a dead URL.
    let answer = owner
        .command(&id, &json!({"t":{"p":10,"d":60}}))
        .await
        .unwrap();
    assert_eq!(answer["push"], "dead", "{answer}");
    settle().await;
    assert_eq!(endpoint.seen().len(), 1);

    // The mark is journaled: it survives a restart.
    let dir = server.stop().await;
    let server = Server::start_in(dir, loopback_push, Arc::new(SystemResolver)).await;
    let mut owner =
        OwnerClient::sign_in_with(HttpClient::new(server.addr), "dead@example.com", PASSWORD)
            .await
            .unwrap();
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["push_dead"],
        true
    );

    // Registering again with the same URL changes nothing; a new URL clears the mark.
    let again = |url: String| json!({"deviceid": id, "secret": random_secret(), "pushurl": url});
    let (status, _) = owner
        .call(Method::POST, "/1/register", Some(&again(old_url.clone())))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["push_dead"],
        true
    );
    let (status, _) = owner
        .call(
            Method::POST,
            "/1/register",
            Some(&again(endpoint.url("/fresh"))),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        device_view(&mut owner, &id).await["state"]["push_dead"],
        false
    );
    let answer = owner.command(&id, &json!({"r":{"d":0}})).await.unwrap();
    assert_eq!(answer["push"], "sent", "{answer}");
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");
    assert_eq!(endpoint.seen().last().unwrap().path, "/fresh");
}

// === No server-side request forgery ===

#[tokio::test]
async fn registration_refuses_push_urls_the_server_will_never_reach() {
    // The defaults: https only, nothing internal.
    let server = Server::start(|config| config.push.enabled = true).await;
    let mut owner = server.owner("refused").await;
    for (url, needle) in [
        ("http://push.example.com/x", "https"),
        ("https://127.0.0.1/x", "loopback"),
        ("https://[::1]:8443/x", "loopback"),
        ("https://localhost/x", "loopback"),
        ("https://10.0.0.7/x", "private"),
        ("https://192.168.1.1/x", "private"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://100.64.0.1/x", "carrier-grade NAT"),
        ("https://[fd00::1]/x", "unique local"),
        ("https://[fe80::1]/x", "link-local"),
        ("https://0.0.0.0/x", "unspecified"),
        ("https://224.0.0.1/x", "multicast"),
        ("https://[::ffff:10.0.0.1]/x", "private"),
    ] {
        let body = json!({"secret": random_secret(), "pushurl": url});
        let (status, answer) = owner
            .call(Method::POST, "/1/register", Some(&body))
            .await
            .unwrap();
        assert_error(status, &answer, 400, 230, needle);
        assert!(answer["message"].as_str().unwrap().starts_with("pushurl: "));
    }
    for url in [
        "ftp://push.example.com/x",
        "https://user:pw@push.example.com/x",
    ] {
        let body = json!({"secret": random_secret(), "pushurl": url});
        let (status, answer) = owner
            .call(Method::POST, "/1/register", Some(&body))
            .await
            .unwrap();
        assert_error(status, &answer, 400, 101, "pushurl");
    }
    // Nothing of those attempts was registered.
    let (_, list) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(list["devices"], json!([]));
}

#[tokio::test]
async fn names_that_resolve_to_internal_addresses_are_never_connected_to() {
    let endpoint = Endpoint::start().await;
    let port = endpoint.addr.port();
    let hosts = Hosts::new(&[
        // The endpoint is listening there: a connection would show in `seen`.
        ("loopback.test", &["127.0.0.1"]),
        ("six.test", &["::1"]),
        ("private.test", &["10.1.2.3"]),
        ("metadata.test", &["169.254.169.254"]),
    ]);
    // http allowed, but no address range: the check is the address classification alone.
    let server = Server::start_in(
        tempfile::tempdir().unwrap(),
        |config| {
            loopback_push(config);
            config.push.allowed_cidrs.clear();
        },
        Arc::new(hosts),
    )
    .await;
    let mut owner = server.owner("rebind").await;
    for host in ["loopback.test", "six.test", "private.test", "metadata.test"] {
        let (id, _) = register(&mut owner, &format!("http://{host}:{port}/p"), None).await;
        let answer = owner
            .command(&id, &json!({"r":{"p":5,"d":30}}))
            .await
            .unwrap();
        assert_eq!(answer["push"], "sent", "{answer}");
        let outcome = push_outcome(&mut owner, &id, 1).await;
        assert_eq!(outcome["outcome"], "failed", "{host}: {outcome}");
        assert_eq!(
            outcome["tries"], 1,
            "{host}: a refusal is not retried: {outcome}"
        );
        let reason = outcome["reason"].as_str().unwrap();
        assert!(reason.starts_with("refused"), "{reason}");
        // The owner is not told where the URL led.
        assert!(
            !reason.contains(host) && !reason.contains("127.0.0.1"),
            "{reason}"
        );
    }
    settle().await;
    assert!(endpoint.seen().is_empty(), "{:?}", endpoint.seen());
    assert_eq!(server.gateway.push.stats.read().failed, 4);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let endpoint = Endpoint::start().await;
    let internal = Endpoint::start().await;
    endpoint.then(Reply {
        location: Some(internal.url("/admin")),
        ..Reply::status(307)
    });
    let server = Server::start(loopback_push).await;
    let mut owner = server.owner("redirect").await;
    let (id, _) = register(&mut owner, &endpoint.url("/p"), None).await;

    owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "failed", "{outcome}");
    assert_eq!(outcome["tries"], 1, "{outcome}");
    assert!(
        outcome["reason"].as_str().unwrap().contains("307"),
        "{outcome}"
    );
    settle().await;
    assert_eq!(endpoint.seen().len(), 1);
    assert!(internal.seen().is_empty(), "{:?}", internal.seen());
}

#[tokio::test]
async fn a_huge_response_body_is_cut_at_the_cap() {
    let endpoint = Endpoint::start().await;
    endpoint.then(Reply {
        endless: true,
        ..Reply::status(200)
    });
    endpoint.then(Reply {
        endless: true,
        ..Reply::status(200)
    });
    // A deadline far beyond the test's patience: only the cap can end the exchange in time.
    let server = Server::start(|config| {
        loopback_push(config);
        config.push.request_timeout_ms = 120_000;
    })
    .await;
    let mut owner = server.owner("huge").await;
    let (id, _) = register(&mut owner, &endpoint.url("/p"), None).await;
    owner
        .command(&id, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    let outcome = push_outcome(&mut owner, &id, 1).await;
    assert_eq!(outcome["outcome"], "delivered", "{outcome}");

    // The same client, asked directly: what it read is the cap, no more.
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        server.gateway.push.outbound().send(&OutboundRequest {
            method: Method::POST,
            url: endpoint.url("/p"),
            headers: Vec::new(),
            body: Bytes::new(),
        }),
    )
    .await
    .expect("the endless body does not hold the exchange")
    .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.body.len(), MAX_RESPONSE_BYTES);
    assert!(response.truncated);
}

#[tokio::test]
async fn the_outbound_client_connects_only_to_addresses_it_checked() {
    // A name with one internal and one allowed address: the connection goes to the allowed
    // one, the only one checked and passed, never to whatever a second lookup would say.
    let endpoint = Endpoint::start().await;
    let hosts = Arc::new(Hosts::new(&[("mixed.test", &["10.9.9.9", "127.0.0.1"])]));
    let server = Server::start_in(tempfile::tempdir().unwrap(), loopback_push, hosts.clone()).await;
    let outbound = server.gateway.push.outbound();
    let send = |url: String| OutboundRequest {
        method: Method::PUT,
        url,
        headers: Vec::new(),
        body: Bytes::from_static(b"version=1"),
    };
    let response = outbound
        .send(&send(format!(
            "http://mixed.test:{}/m",
            endpoint.addr.port()
        )))
        .await
        .unwrap();
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(
        hosts.1.load(Ordering::SeqCst),
        1,
        "one lookup, then the connection"
    );
    assert_eq!(
        endpoint.seen()[0].headers[http::header::HOST],
        format!("mixed.test:{}", endpoint.addr.port())
    );

    // An unknown name, a refused scheme: errors, not connections.
    let e = outbound
        .send(&send("http://nowhere.test/x".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("resolve"), "{e}");
    let e = outbound
        .send(&send("gopher://127.0.0.1/x".into()))
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("refused"), "{e}");
    assert_eq!(endpoint.seen().len(), 1);
}

#[tokio::test]
async fn numeric_host_spellings_are_judged_by_the_address_they_resolve_to() {
    // `127.1` and `2130706433` are not IP literals to a URL parser, but the system resolver
    // (inet_aton rules, no DNS query) turns them into 127.0.0.1: the check on the resolved
    // address still catches them.
    let endpoint = Endpoint::start().await;
    let port = endpoint.addr.port();
    let server = Server::start(|config| {
        loopback_push(config);
        config.push.allowed_cidrs.clear();
        config.push.retries = 0;
    })
    .await;
    let mut owner = server.owner("numeric").await;
    for host in ["127.1", "2130706433", "0x7f.0.0.1"] {
        let (id, _) = register(&mut owner, &format!("http://{host}:{port}/p"), None).await;
        owner
            .command(&id, &json!({"r":{"p":5,"d":30}}))
            .await
            .unwrap();
        let outcome = push_outcome(&mut owner, &id, 1).await;
        assert_eq!(outcome["outcome"], "failed", "{host}: {outcome}");
        let reason = outcome["reason"].as_str().unwrap();
        assert!(reason.starts_with("refused"), "{host}: {reason}");
    }
    settle().await;
    assert!(endpoint.seen().is_empty(), "{:?}", endpoint.seen());
}

#[tokio::test]
async fn past_the_in_flight_cap_a_command_waits_for_the_next_poll() {
    let endpoint = Endpoint::start().await;
    endpoint.then(Reply {
        delay: Duration::from_millis(400),
        ..Reply::status(201)
    });
    let server = Server::start(|config| {
        loopback_push(config);
        config.push.max_in_flight = 1;
    })
    .await;
    let mut owner = server.owner("busy").await;
    let (first, _) = register(&mut owner, &endpoint.url("/one"), None).await;
    let (second, _) = register(&mut owner, &endpoint.url("/two"), None).await;
    let answer = owner
        .command(&first, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert_eq!(answer["push"], "sent", "{answer}");
    let answer = owner
        .command(&first, &json!({"t":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert_eq!(answer["push"], "in_flight", "{answer}");
    let answer = owner
        .command(&second, &json!({"r":{"p":5,"d":30}}))
        .await
        .unwrap();
    assert_eq!(answer["push"], "busy", "{answer}");
    push_outcome(&mut owner, &first, 1).await;
    settle().await;
    // The cap is free again.
    let answer = owner.command(&second, &json!({"r":{"d":0}})).await.unwrap();
    assert_eq!(answer["push"], "sent", "{answer}");
    push_outcome(&mut owner, &second, 1).await;
    let paths: Vec<String> = endpoint.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/one", "/two"]);
}

#[tokio::test]
async fn https_push_urls_are_reached_over_verified_tls() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use wheresmyfox::outbound::{Outbound, Policy, Timeouts};

    // A push service with a certificate for push.test, on loopback.
    let issued = rcgen::generate_simple_self_signed(vec!["push.test".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = issued.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_pair.serialize_der()));
    let server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let script = Arc::new(Mutex::new(VecDeque::new()));
    let (seen2, script2) = (seen.clone(), script.clone());
    let service = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, seen, script) = (acceptor.clone(), seen2.clone(), script2.clone());
            tokio::spawn(async move {
                // Handshakes the client abandons (an untrusted certificate) just end here.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    answer(request, seen.clone(), script.clone())
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });

    let policy = Policy {
        allow_http: false,
        allowed: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(5),
    };
    let hosts: Arc<dyn Resolve> = Arc::new(Hosts::new(&[
        ("push.test", &["127.0.0.1"]),
        ("other.test", &["127.0.0.1"]),
    ]));
    let request = |host: &str| OutboundRequest {
        method: Method::POST,
        url: format!("https://{host}:{port}/wpush/1"),
        headers: Vec::new(),
        body: Bytes::new(),
    };

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let trusting = Outbound::with_roots(policy.clone(), timeouts, hosts.clone(), roots);
    let response = trusting.send(&request("push.test")).await.unwrap();
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(seen.lock().unwrap().len(), 1);

    // The certificate must name the host: the same server under another name is refused.
    let e = trusting.send(&request("other.test")).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    // And it must chain to a trusted root: the built-in roots do not know this one.
    let default = Outbound::new(policy, timeouts, hosts);
    let e = default.send(&request("push.test")).await.unwrap_err();
    assert!(e.to_string().contains("TLS"), "{e}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no request went out unverified"
    );
    service.abort();
}
