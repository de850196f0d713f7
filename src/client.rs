//! A client for the gateway: a device (Hawk signing, answer verification, the poll loop with
//! backoff) and an owner (bearer-token calls). Tests, benches and the load tester use it.
//!
//! A device client refuses any answer whose `Server-Authorization` does not verify: a command
//! that cannot be shown to come from the server is never acted on.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hawk::{Credentials, Header, RequestBuilder};
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::net::TcpStream;

use crate::hawk_auth;

/// What can go wrong talking to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out")]
    Timeout,
    #[error("server answered {status}: {body}")]
    Status { status: StatusCode, body: Value },
    #[error("the answer is not signed by the server: {0}")]
    BadSignature(&'static str),
    #[error("the answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A response, body collected.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One keep-alive HTTP/1.1 connection to the gateway, reopened when it breaks.
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    /// The `Host` header sent (and, for devices, signed).
    host: String,
    port: u16,
    /// Local address to bind before connecting (spreads load tests over 127.0.0.x).
    bind: Option<std::net::IpAddr>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A registered device: its id and secret, and the connection it polls on.
pub struct DeviceClient {
    http: HttpClient,
    credentials: Credentials,
    /// Seconds to add to our clock, learned from a signed stale-timestamp answer.
    clock_offset: i64,
    /// Sequence/ack extension: the highest `seq` received, once enabled.
    ack: Option<u64>,
}

/// An owner signed in with a bearer token.
#[derive(Debug)]
pub struct OwnerClient {
    pub http: HttpClient,
    pub token: String,
    pub userid: String,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("id", &self.credentials.id)
            .field("clock_offset", &self.clock_offset)
            .field("ack", &self.ack)
            .finish_non_exhaustive()
    }
}

// === HttpClient ===

impl HttpClient {
    /// A client for the gateway at `addr`, sending `Host: {host}:{port}` of the address.
    pub fn new(addr: SocketAddr) -> HttpClient {
        HttpClient {
            addr,
            host: addr.ip().to_string(),
            port: addr.port(),
            bind: None,
            sender: None,
        }
    }

    /// Sends another `Host` than the address connected to (as behind a proxy).
    pub fn with_host(mut self, host: &str, port: u16) -> HttpClient {
        self.host = host.to_owned();
        self.port = port;
        self
    }

    /// Binds the local end to `ip` before connecting.
    pub fn with_bind(mut self, ip: std::net::IpAddr) -> HttpClient {
        self.bind = Some(ip);
        self
    }

    /// Drops the kept-alive connection (and any request on it); the next send reconnects.
    pub fn disconnect(&mut self) {
        self.sender = None;
    }

    pub fn host(&self) -> (&str, u16) {
        (&self.host, self.port)
    }

    fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, ClientError> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = match self.bind {
                None => TcpStream::connect(self.addr).await?,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(self.addr).await?
                }
            };
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("just connected"))
    }

    /// Sends a request on the kept-alive connection (opening one if needed), with a deadline.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host_header());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| ClientError::BadSignature("could not build the request"))?;
        let exchange = async {
            let sender = self.connect().await?;
            sender.ready().await?;
            let response = sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, ClientError>(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(error)) => {
                self.sender = None;
                Err(error)
            }
            Err(_) => {
                self.sender = None;
                Err(ClientError::Timeout)
            }
        }
    }

    /// Sends JSON with an optional bearer token; returns status and JSON body.
    pub async fn json(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let bytes = match body {
            Some(body) => {
                headers.push((header::CONTENT_TYPE, "application/json".to_owned()));
                Bytes::from(serde_json::to_vec(body)?)
            }
            None => Bytes::new(),
        };
        let reply = self
            .send(method, path, &headers, bytes, Duration::from_secs(120))
            .await?;
        let value = if reply.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body)?
        };
        Ok((reply.status, value))
    }
}

// === OwnerClient ===

impl OwnerClient {
    /// Creates an account (if it does not exist yet) and signs in.
    pub async fn sign_up(
        addr: SocketAddr,
        email: &str,
        password: &str,
    ) -> Result<OwnerClient, ClientError> {
        let mut http = HttpClient::new(addr);
        let body = json!({ "email": email, "password": password });
        let (status, answer) = http
            .json(Method::POST, "/1/accounts", None, Some(&body))
            .await?;
        if status != StatusCode::CREATED && status != StatusCode::CONFLICT {
            return Err(ClientError::Status {
                status,
                body: answer,
            });
        }
        OwnerClient::sign_in_with(http, email, password).await
    }

    pub async fn sign_in_with(
        mut http: HttpClient,
        email: &str,
        password: &str,
    ) -> Result<OwnerClient, ClientError> {
        let body = json!({ "email": email, "password": password });
        let (status, answer) = http
            .json(Method::POST, "/1/session", None, Some(&body))
            .await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                status,
                body: answer,
            });
        }
        Ok(OwnerClient {
            http,
            token: answer["token"].as_str().unwrap_or_default().to_owned(),
            userid: answer["userid"].as_str().unwrap_or_default().to_owned(),
        })
    }

    /// Any owner call: status and JSON body.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.http.json(method, path, Some(&self.token), body).await
    }

    /// Queues a command object for a device; the 202 body on success.
    pub async fn command(&mut self, device: &str, command: &Value) -> Result<Value, ClientError> {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/1/devices/{device}/cmd"),
                Some(command),
            )
            .await?;
        if status != StatusCode::ACCEPTED {
            return Err(ClientError::Status { status, body });
        }
        Ok(body)
    }

    /// Registers a new device for this owner with a fresh random secret.
    pub async fn register_device(&mut self, name: &str) -> Result<DeviceClient, ClientError> {
        let secret = random_secret();
        let body = json!({
            "pushurl": "https://push.example.invalid/wake",
            "secret": secret,
            "name": name,
        });
        let (status, answer) = self.call(Method::POST, "/1/register", Some(&body)).await?;
        if status != StatusCode::OK {
            return Err(ClientError::Status {
                status,
                body: answer,
            });
        }
        let id = answer["id"].as_str().unwrap_or_default().to_owned();
        let http = HttpClient::new(self.http.addr).with_host(&self.http.host, self.http.port);
        Ok(DeviceClient::new(http, &id, &secret))
    }
}

/// 16 random bytes as 32 hex characters: the device secret the seed asks for.
pub fn random_secret() -> String {
    let bytes: [u8; 16] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// === DeviceClient ===

impl DeviceClient {
    pub fn new(http: HttpClient, id: &str, secret: &str) -> DeviceClient {
        DeviceClient {
            http,
            credentials: Credentials {
                id: id.to_owned(),
                key: hawk_auth::key_for(secret),
            },
            clock_offset: 0,
            ack: None,
        }
    }

    pub fn id(&self) -> &str {
        &self.credentials.id
    }

    /// Turns on the sequence/ack extension: each request then carries `"ack"`.
    pub fn enable_ack(&mut self) {
        self.ack.get_or_insert(0);
    }

    /// Shifts this device's clock (tests of the stale-timestamp answer).
    pub fn set_clock_offset(&mut self, secs: i64) {
        self.clock_offset = secs;
    }

    pub fn clock_offset(&self) -> i64 {
        self.clock_offset
    }

    fn now(&self) -> SystemTime {
        let now = SystemTime::now();
        if self.clock_offset >= 0 {
            now + Duration::from_secs(self.clock_offset as u64)
        } else {
            now - Duration::from_secs(self.clock_offset.unsigned_abs())
        }
    }

    /// One exchange: sends `report`, returns the verified command object (`{}` when none).
    ///
    /// A stale-timestamp answer whose `tsm` verifies corrects the clock offset and retries once.
    pub async fn exchange(
        &mut self,
        report: &Value,
        wait: Option<u64>,
    ) -> Result<Map<String, Value>, ClientError> {
        let mut report = report.clone();
        if let (Some(ack), Some(object)) = (self.ack, report.as_object_mut()) {
            object.insert("ack".to_owned(), json!(ack));
        }
        let body = Bytes::from(serde_json::to_vec(&report)?);
        let mut retried = false;
        loop {
            let reply = self.signed_post(&body, wait).await?;
            if reply.status == StatusCode::UNAUTHORIZED
                && !retried
                && let Some(offset) = self.offset_from_challenge(&reply)
            {
                self.clock_offset = offset;
                retried = true;
                continue;
            }
            let value: Value = serde_json::from_slice(&reply.body)?;
            if reply.status != StatusCode::OK {
                return Err(ClientError::Status {
                    status: reply.status,
                    body: value,
                });
            }
            let Value::Object(mut commands) = value else {
                return Err(ClientError::BadSignature(
                    "the command object is not an object",
                ));
            };
            if let Some(seq) = commands.remove("seq").and_then(|s| s.as_u64()) {
                self.ack = Some(self.ack.unwrap_or(0).max(seq));
            }
            return Ok(commands);
        }
    }

    /// Signs and sends one `POST /1/cmd/{id}`, verifying a 200 answer's signature.
    async fn signed_post(&mut self, body: &Bytes, wait: Option<u64>) -> Result<Reply, ClientError> {
        let path = match wait {
            Some(wait) => format!("/1/cmd/{}?wait={wait}", self.credentials.id),
            None => format!("/1/cmd/{}", self.credentials.id),
        };
        let (host, port) = (self.http.host.clone(), self.http.port);
        let hash = hawk_auth::payload_hash("application/json", body);
        let request = RequestBuilder::new("POST", &host, port, &path)
            .hash(&hash[..])
            .request();
        let header = self.sign(&request)?;
        let headers = [
            (header::AUTHORIZATION, format!("Hawk {header}")),
            (header::CONTENT_TYPE, "application/json".to_owned()),
        ];
        let timeout = Duration::from_secs(wait.unwrap_or(60) + 30);
        let reply = self
            .http
            .send(Method::POST, &path, &headers, body.clone(), timeout)
            .await?;
        if reply.status == StatusCode::OK {
            verify_answer(&request, &header, &self.credentials, &reply)?;
        }
        Ok(reply)
    }

    fn sign(&self, request: &hawk::Request<'_>) -> Result<Header, ClientError> {
        let nonce: String = {
            let bytes: [u8; 9] = rand::thread_rng().r#gen();
            STANDARD.encode(bytes)
        };
        request
            .make_header_full(&self.credentials, self.now(), nonce)
            .map_err(|_| ClientError::BadSignature("could not sign the request"))
    }

    /// The `Authorization` value for a `POST` of `body` (as `application/json`) to `path`:
    /// for tests that need to send a request by hand, or twice.
    pub fn authorization(&self, path: &str, body: &[u8]) -> Result<String, ClientError> {
        let hash = hawk_auth::payload_hash("application/json", body);
        let request = RequestBuilder::new("POST", &self.http.host, self.http.port, path)
            .hash(&hash[..])
            .request();
        Ok(format!("Hawk {}", self.sign(&request)?))
    }

    /// The connection this device uses.
    pub fn http(&mut self) -> &mut HttpClient {
        &mut self.http
    }

    fn offset_from_challenge(&self, reply: &Reply) -> Option<i64> {
        let challenge = reply.headers.get(header::WWW_AUTHENTICATE)?.to_str().ok()?;
        let (ts, tsm) = parse_challenge(challenge)?;
        // Only a server that knows our key can produce tsm: an attacker cannot skew our clock.
        if hawk_auth::timestamp_mac(&self.credentials.key, ts) != tsm {
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(ts as i64 - now as i64)
    }

    /// The device's main loop: report, receive, act, until `stop` resolves.
    ///
    /// `act` is given each command object and returns the replies to send with the next poll
    /// (`{"r":{"ok":true}}`). Transient failures back off exponentially (with jitter) from
    /// 250 ms to 60 s; an unknown-device answer ends the loop, since the device must register
    /// again.
    pub async fn run<F>(
        &mut self,
        wait: u64,
        mut act: F,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ClientError>
    where
        F: FnMut(&Map<String, Value>) -> Map<String, Value>,
    {
        tokio::pin!(stop);
        let mut replies = Map::new();
        let mut backoff = Duration::from_millis(250);
        loop {
            // Kept until an exchange succeeds: replies are never dropped on a failed request.
            let report = Value::Object(replies.clone());
            let exchange = self.exchange(&report, Some(wait));
            let result = tokio::select! {
                result = exchange => result,
                _ = &mut stop => return Ok(()),
            };
            match result {
                Ok(commands) => {
                    backoff = Duration::from_millis(250);
                    replies = if commands.is_empty() {
                        Map::new()
                    } else {
                        act(&commands)
                    };
                }
                Err(ClientError::Status { status, body }) if status == StatusCode::UNAUTHORIZED => {
                    return Err(ClientError::Status { status, body });
                }
                Err(_) => {
                    let jitter = rand::thread_rng().gen_range(0.5..1.5);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                        _ = &mut stop => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}

pub(crate) fn verify_answer(
    request: &hawk::Request<'_>,
    header: &Header,
    credentials: &Credentials,
    reply: &Reply,
) -> Result<(), ClientError> {
    let value = reply
        .headers
        .get("server-authorization")
        .ok_or(ClientError::BadSignature("no Server-Authorization header"))?
        .to_str()
        .map_err(|_| ClientError::BadSignature("Server-Authorization is not ASCII"))?;
    let server_header: Header = value
        .strip_prefix("Hawk ")
        .and_then(|rest| rest.parse().ok())
        .ok_or(ClientError::BadSignature(
            "Server-Authorization cannot be parsed",
        ))?;
    let content_type = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .unwrap_or("");
    let hash = hawk_auth::payload_hash(content_type, &reply.body);
    let valid = request
        .make_response_builder(header)
        .hash(&hash[..])
        .response()
        .validate_header(&server_header, &credentials.key);
    if valid {
        Ok(())
    } else {
        Err(ClientError::BadSignature(
            "the MAC or payload hash does not match",
        ))
    }
}

/// `ts` and `tsm` from a `WWW-Authenticate: Hawk ts="…", tsm="…"` challenge.
fn parse_challenge(value: &str) -> Option<(u64, String)> {
    let rest = value.strip_prefix("Hawk ")?;
    let mut ts = None;
    let mut tsm = None;
    for part in rest.split(',') {
        let Some((key, value)) = part.trim().split_once('=') else {
            continue;
        };
        let value = value.trim_matches('"');
        match key {
            "ts" => ts = value.parse().ok(),
            "tsm" => tsm = Some(value.to_owned()),
            _ => {}
        }
    }
    Some((ts?, tsm?))
}
