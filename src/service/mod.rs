//! The HTTP API: routing, the handlers, and the one place errors become responses.
//!
//! Owner calls carry `Authorization: Bearer <token>`; device calls are Hawk-signed and every
//! answer to a verified device request is signed back (`Server-Authorization`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value, json};
use tracing::{debug, info};

use crate::device::{Device, Registration};
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::hawk_auth;
use crate::ids::{DeviceId, UserId};
use crate::mailbox::Wake;
use crate::protocol::{CommandSet, DeviceReport, KindSet};
use crate::registry::Registered;

pub mod body;
pub mod device_auth;
pub mod respond;
pub mod sync;

use device_auth::{Signer, Verified};

pub use body::{
    collect_body, field_error, only_fields, query_param, read_body, read_json, take_name,
    take_string,
};
pub use respond::{bytes_response, empty_response, error_body, error_response, json_response};

/// The error type a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every handler.
pub type Body = Full<Bytes>;

/// Longest device name, in characters.
pub const MAX_NAME_LEN: usize = 64;
/// Longest push URL, in bytes.
pub const MAX_PUSH_URL_LEN: usize = 2048;
/// Most events one events poll returns.
pub const MAX_EVENTS_PER_POLL: usize = 500;

/// Where a request goes. Pure: derived from the method and path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    CreateAccount,
    SignIn,
    SignOut,
    Register,
    DeviceExchange(String),
    ListDevices,
    GetDevice(String),
    RenameDevice(String),
    ForgetDevice(String),
    QueueCommand(String),
    Events(String),
    Heartbeat,
    LbHeartbeat,
    /// Data sync: `/1/storage…`, `/1/info/…`, `/1/changes` (see `sync`).
    Sync(sync::SyncRoute),
}

// === Routing ===

/// Maps a method and path to a route; 404 for unknown paths, 405 for a wrong method.
pub fn route(method: &Method, path: &str) -> Result<Route, ApiError> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let is = |m: &Method| method == m;
    let wrong = |allow: &'static str| Err(ApiError::MethodNotAllowed { allow });
    match segments.as_slice() {
        ["1", "accounts"] => {
            if is(&Method::POST) {
                Ok(Route::CreateAccount)
            } else {
                wrong("POST")
            }
        }
        ["1", "session"] => match *method {
            Method::POST => Ok(Route::SignIn),
            Method::DELETE => Ok(Route::SignOut),
            _ => wrong("POST, DELETE"),
        },
        ["1", "register"] => {
            if is(&Method::POST) {
                Ok(Route::Register)
            } else {
                wrong("POST")
            }
        }
        ["1", "cmd", id] if !id.is_empty() => {
            if is(&Method::POST) {
                Ok(Route::DeviceExchange((*id).to_owned()))
            } else {
                wrong("POST")
            }
        }
        ["1", "devices"] => {
            if is(&Method::GET) {
                Ok(Route::ListDevices)
            } else {
                wrong("GET")
            }
        }
        ["1", "devices", id] if !id.is_empty() => {
            let id = (*id).to_owned();
            match *method {
                Method::GET => Ok(Route::GetDevice(id)),
                Method::PATCH => Ok(Route::RenameDevice(id)),
                Method::DELETE => Ok(Route::ForgetDevice(id)),
                _ => wrong("GET, PATCH, DELETE"),
            }
        }
        ["1", "devices", id, "cmd"] if !id.is_empty() => {
            if is(&Method::POST) {
                Ok(Route::QueueCommand((*id).to_owned()))
            } else {
                wrong("POST")
            }
        }
        ["1", "devices", id, "events"] if !id.is_empty() => {
            if is(&Method::GET) {
                Ok(Route::Events((*id).to_owned()))
            } else {
                wrong("GET")
            }
        }
        ["1", "storage" | "info" | "changes", ..] => {
            sync::route(method, &segments).map(Route::Sync)
        }
        ["__heartbeat__"] => {
            if is(&Method::GET) {
                Ok(Route::Heartbeat)
            } else {
                wrong("GET")
            }
        }
        ["__lbheartbeat__"] => {
            if is(&Method::GET) {
                Ok(Route::LbHeartbeat)
            } else {
                wrong("GET")
            }
        }
        _ => Err(ApiError::NotFound),
    }
}

/// Serves one request from `peer` (the TCP peer). Never fails: every error is turned into its
/// JSON response here.
///
/// Returns a boxed future so that what a parked device poll keeps alive is only what its
/// waiting phase needs (see [`exchange_device`]), not the largest state of any handler.
pub fn handle<B>(
    request: Request<B>,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
) -> Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match route(request.method(), request.uri().path()) {
        Ok(Route::DeviceExchange(id)) => {
            let exchange = exchange_device(request, gateway, id);
            Box::pin(async move { Ok(exchange.await) })
        }
        Ok(route) => Box::pin(async move {
            Ok(dispatch(route, request, &gateway, peer)
                .await
                .unwrap_or_else(|error| error_response(&error)))
        }),
        Err(error) => Box::pin(std::future::ready(Ok(error_response(&error)))),
    }
}

async fn dispatch<B>(
    route: Route,
    request: Request<B>,
    gateway: &Arc<Gateway>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match route {
        Route::DeviceExchange(id) => Ok(exchange_device(request, gateway.clone(), id).await),
        Route::Heartbeat => Ok(heartbeat(gateway)),
        Route::LbHeartbeat => Ok(json_response(StatusCode::OK, &json!({}))),
        Route::Sync(route) => Ok(sync::handle(route, request, gateway).await),
        Route::CreateAccount => {
            let body = read_json(request, gateway).await?;
            create_account(gateway, body).await
        }
        Route::SignIn => {
            let body = read_json(request, gateway).await?;
            sign_in(gateway, body, peer).await
        }
        Route::SignOut => {
            let token = bearer(request.headers())?;
            gateway.accounts.authenticate(token)?;
            gateway
                .accounts
                .revoke(token, &gateway.journal)
                .wait()
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::Register => {
            let user = owner(request.headers(), gateway)?;
            let body = read_json(request, gateway).await?;
            register(gateway, user, body).await
        }
        Route::ListDevices => {
            let user = owner(request.headers(), gateway)?;
            let devices: Vec<Value> = gateway
                .registry
                .list(user)
                .iter()
                .map(|d| d.summary())
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "devices": devices }),
            ))
        }
        Route::GetDevice(id) => {
            let user = owner(request.headers(), gateway)?;
            let device = gateway.registry.owned(user, &id)?;
            Ok(json_response(
                StatusCode::OK,
                &device.detail(&gateway.config.devices),
            ))
        }
        Route::RenameDevice(id) => {
            let user = owner(request.headers(), gateway)?;
            let device = gateway.registry.owned(user, &id)?;
            let mut body = read_json(request, gateway).await?;
            only_fields(&body, &["name"])?;
            let name = take_name(&mut body)?.ok_or_else(|| field_error("name", "is required"))?;
            device
                .rename(name, &gateway.config.devices, gateway.storage())
                .wait()
                .await?;
            Ok(json_response(StatusCode::OK, &device.summary()))
        }
        Route::ForgetDevice(id) => {
            let user = owner(request.headers(), gateway)?;
            let device = gateway.registry.owned(user, &id)?;
            gateway
                .registry
                .remove(user, device.id, &gateway.config.devices, gateway.storage())?
                .wait()
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::QueueCommand(id) => {
            let user = owner(request.headers(), gateway)?;
            let device = gateway.registry.owned(user, &id)?;
            let body = read_body(request, gateway).await?;
            let commands = CommandSet::from_slice(&body)?;
            let wire = commands.to_json();
            let (queued, commit) =
                device.queue(commands, &gateway.config.devices, gateway.storage());
            // Durable before the device can see it: nothing it acts on can be lost.
            commit.wait().await?;
            let parked = device.mailbox.notify();
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({ "queued": queued, "command": wire, "parked": parked }),
            ))
        }
        Route::Events(id) => {
            let user = owner(request.headers(), gateway)?;
            let device = gateway.registry.owned(user, &id)?;
            let query = request.uri().query().unwrap_or("").to_owned();
            drop(request);
            events(gateway, device, &query).await
        }
    }
}

// === Accounts ===

async fn create_account(
    gateway: &Gateway,
    mut body: Map<String, Value>,
) -> Result<Response<Body>, ApiError> {
    if !gateway.config.accounts.signup {
        return Err(ApiError::SignupClosed);
    }
    let (email, password) = credentials(&mut body)?;
    let user = gateway
        .accounts
        .create(&email, &password, &gateway.journal)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "userid": user }),
    ))
}

async fn sign_in(
    gateway: &Gateway,
    mut body: Map<String, Value>,
    peer: SocketAddr,
) -> Result<Response<Body>, ApiError> {
    let (email, password) = credentials(&mut body)?;
    let issued = gateway
        .accounts
        .sign_in(&email, &password, &gateway.journal)
        .await
        .inspect_err(|error| {
            // Operators watch for password guessing (and feed it to fail2ban and the like).
            if matches!(error, ApiError::BadCredentials) {
                info!(client = %peer.ip(), "sign-in refused: wrong email or password");
            }
        })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "token": issued.token, "userid": issued.user }),
    ))
}

/// `{"email","password"}`, both required, nothing else.
fn credentials(body: &mut Map<String, Value>) -> Result<(String, String), ApiError> {
    only_fields(body, &["email", "password"])?;
    let email = take_string(body, "email")?.ok_or_else(|| field_error("email", "is required"))?;
    let password =
        take_string(body, "password")?.ok_or_else(|| field_error("password", "is required"))?;
    Ok((email, password))
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingBearer)?
        .to_str()
        .map_err(|_| ApiError::InvalidToken)?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or(ApiError::MissingBearer)?
        .trim();
    if token.is_empty() {
        return Err(ApiError::MissingBearer);
    }
    Ok(token)
}

pub(crate) fn owner(headers: &HeaderMap, gateway: &Gateway) -> Result<UserId, ApiError> {
    gateway.accounts.authenticate(bearer(headers)?)
}

// === Registration ===

async fn register(
    gateway: &Gateway,
    user: UserId,
    mut body: Map<String, Value>,
) -> Result<Response<Body>, ApiError> {
    only_fields(
        &body,
        &[
            "userid",
            "pushurl",
            "deviceid",
            "secret",
            "name",
            "has_passcode",
        ],
    )?;
    if let Some(claimed) = take_string(&mut body, "userid")?
        && claimed != user.to_string()
    {
        return Err(ApiError::WrongUser);
    }
    let secret =
        take_string(&mut body, "secret")?.ok_or_else(|| field_error("secret", "is required"))?;
    hawk_auth::check_secret(&secret).map_err(ApiError::WeakSecret)?;
    let push_url =
        take_string(&mut body, "pushurl")?.ok_or_else(|| field_error("pushurl", "is required"))?;
    check_push_url(&push_url)?;
    // An id we do not know (or that is not this user's) is ignored, as the seed says: the
    // device gets a fresh id and nothing of any other device's data.
    let known = take_string(&mut body, "deviceid")?.and_then(|id| id.parse::<DeviceId>().ok());
    let name = take_name(&mut body)?;
    let has_passcode = match body.remove("has_passcode") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(b),
        Some(_) => return Err(field_error("has_passcode", "must be true or false")),
    };
    let registration = Registration {
        secret,
        push_url,
        name,
    };
    let limits = &gateway.config.devices;
    let (outcome, mut commit) =
        gateway
            .registry
            .register(user, known, registration, limits, gateway.storage())?;
    let id = match outcome {
        Registered::New(id) | Registered::Renewed(id) => id,
    };
    if let (Some(lockable), Some(device)) = (has_passcode, gateway.registry.get(&id)) {
        commit.join(device.set_lockable(lockable, limits, gateway.storage()));
    }
    commit.wait().await?;
    debug!(device = %id, renewed = matches!(outcome, Registered::Renewed(_)), "device registered");
    Ok(json_response(StatusCode::OK, &json!({ "id": id })))
}

fn check_push_url(url: &str) -> Result<(), ApiError> {
    let bad = |reason: &str| field_error("pushurl", reason);
    if url.len() > MAX_PUSH_URL_LEN {
        return Err(bad("is too long"));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("must be an absolute http or https URL"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(bad("must be an absolute http or https URL")),
    }
}

// === The device channel ===

/// `POST /1/cmd/{id}`: a device reports, then receives what is pending or parks until
/// something is queued, the wait ends, a newer poll arrives, or the server stops.
///
/// Two phases, each in its own allocation: accepting the request (which needs the request,
/// its body and the verification state), then answering (which needs only an [`Exchange`]).
/// The first is created here, outside the returned future, and freed when it completes, so a
/// parked poll holds a few hundred bytes rather than everything the first phase needed.
///
/// Cancel safety: if the client goes away the future is dropped, which deregisters the parked
/// poll; queued commands stay in the outbox for the next poll.
fn exchange_device<B>(
    request: Request<B>,
    gateway: Arc<Gateway>,
    id: String,
) -> impl Future<Output = Response<Body>> + Send
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let accepting = Box::pin(accept_exchange(request, gateway.clone(), id));
    async move {
        match accepting.await {
            Ok(exchange) => Box::pin(exchange.respond(&gateway)).await,
            Err(response) => response,
        }
    }
}

/// What answering a verified device request needs once the request itself is gone.
struct Exchange {
    device: Arc<Device>,
    signer: Signer,
    wait: Duration,
    /// Kinds not to send in this answer (see `DeviceReport::held_back`).
    held_back: KindSet,
}

/// Authenticates the request, applies its report, and returns what the answer needs; or the
/// answer itself when the request is refused.
async fn accept_exchange<B>(
    request: Request<B>,
    gateway: Arc<Gateway>,
    id: String,
) -> Result<Exchange, Response<Body>>
where
    B: hyper::body::Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    let config = &gateway.config;
    let (parts, body) = request.into_parts();
    let verified = match device_auth::verify(&parts, body, &gateway, Some(&id)).await {
        Ok(verified) => verified,
        Err(error) => {
            debug!(device = id, %error, "device request refused");
            return Err(error_response(&error));
        }
    };
    let Verified {
        device,
        body,
        signer,
    } = verified;
    let report = DeviceReport::from_slice(&body).map_err(|e| signer.fail(&ApiError::from(e)))?;
    let query = parts.uri.query().unwrap_or("");
    let wait = wait_param(query, config.poll.wait_secs).map_err(|e| signer.fail(&e))?;
    device
        .apply_report(&report, &config.devices, gateway.storage())
        .wait()
        .await
        .map_err(|e| signer.fail(&e))?;
    Ok(Exchange {
        device,
        signer,
        wait,
        held_back: report.held_back(),
    })
}

impl Exchange {
    /// Answers with what is pending, or parks until there is something, the wait ends, a
    /// newer poll supersedes this one, or the server shuts down.
    async fn respond(self, gateway: &Gateway) -> Response<Body> {
        let limits = &gateway.config.devices;
        let (device, signer) = (&self.device, &self.signer);
        let empty = || signer.answer(StatusCode::OK, &json!({}));
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut shutdown = gateway.shutdown_handle();
        let mut woken = false;
        loop {
            if device.is_removed() {
                return signer.fail(&ApiError::UnknownDevice);
            }
            if let Some(delivery) = device.take_delivery(woken, self.held_back, limits) {
                return signer.answer(StatusCode::OK, &delivery.body);
            }
            if self.wait.is_zero() || gateway.is_shutting_down() {
                return empty();
            }
            let parked = device.mailbox.park();
            let _counted = gateway.park_guard();
            tokio::select! {
                wake = parked => match wake {
                    Wake::Notified => woken = true,
                    Wake::Superseded if device.is_removed() => return signer.fail(&ApiError::UnknownDevice),
                    Wake::Superseded => return empty(),
                },
                _ = tokio::time::sleep_until(deadline) => return empty(),
                _ = shutdown.wait() => return empty(),
            }
        }
    }
}

fn wait_param(query: &str, max_secs: u64) -> Result<Duration, ApiError> {
    match query_param(query, "wait") {
        None => Ok(Duration::from_secs(max_secs)),
        Some(raw) => raw
            .parse::<u64>()
            .map(|secs| Duration::from_secs(secs.min(max_secs)))
            .map_err(|_| field_error("wait", "must be a whole number of seconds")),
    }
}

// === Owner events ===

/// `GET /1/devices/{id}/events?since=N&wait=S`: a long poll of what happened to a device.
///
/// Cancel safety: dropping it only drops a `Notified` registration.
async fn events(
    gateway: &Gateway,
    device: Arc<Device>,
    query: &str,
) -> Result<Response<Body>, ApiError> {
    let since = match query_param(query, "since") {
        None => 0,
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| field_error("since", "must be a whole, non-negative event number"))?,
    };
    let limit = match query_param(query, "limit") {
        None => MAX_EVENTS_PER_POLL,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_EVENTS_PER_POLL).contains(&n) => n,
            _ => return Err(field_error("limit", "must be from 1 to 500")),
        },
    };
    let wait = match query_param(query, "wait") {
        None => Duration::ZERO,
        Some(_) => wait_param(query, gateway.config.poll.wait_secs)?,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = gateway.shutdown_handle();
    loop {
        // Registered before reading, so an event appended in between still wakes us.
        let notified = device.events_changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if device.is_removed() {
            return Err(ApiError::NotFound);
        }
        let (events, next, truncated) = device.events_since(since, limit);
        if !events.is_empty() || wait.is_zero() || gateway.is_shutting_down() {
            return Ok(json_response(
                StatusCode::OK,
                &json!({ "events": events, "next": next, "truncated": truncated }),
            ));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Ok(json_response(
                    StatusCode::OK,
                    &json!({ "events": [], "next": next, "truncated": truncated }),
                ));
            }
            _ = shutdown.wait() => {}
        }
    }
}

// === Operations ===

fn heartbeat(gateway: &Gateway) -> Response<Body> {
    use std::sync::atomic::Ordering::Relaxed;
    let status = if gateway.is_shutting_down() {
        "stopping"
    } else {
        "ok"
    };
    json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "devices": gateway.registry.len(),
            "parked": gateway.stats.parked.load(Relaxed),
            "connections": gateway.stats.connections.load(Relaxed),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::POST, "/1/cmd/abc").unwrap(),
            Route::DeviceExchange("abc".into())
        );
        assert_eq!(
            route(&Method::GET, "/1/devices/x/events").unwrap(),
            Route::Events("x".into())
        );
        assert!(matches!(
            route(&Method::GET, "/1/cmd/abc"),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::GET, "/1/cmd/"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            route(&Method::GET, "/nope"),
            Err(ApiError::NotFound)
        ));
        assert!(matches!(
            route(&Method::GET, "/1/devices/a/b/c"),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param("wait=5&since=3", "since"), Some("3"));
        assert_eq!(query_param("wait", "wait"), Some(""));
        assert_eq!(query_param("", "wait"), None);
        assert!(wait_param("wait=abc", 50).is_err());
        assert_eq!(wait_param("wait=500", 50).unwrap(), Duration::from_secs(50));
    }
}
