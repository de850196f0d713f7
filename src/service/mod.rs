//! The HTTP API: routing, the handlers, and the one place errors become responses.
//!
//! Owner calls carry `Authorization: Bearer <token>`; device calls are Hawk-signed and every
//! answer to a verified device request is signed back (`Server-Authorization`).

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{Map, Value, json};
use tracing::{Instrument, Span, debug, field, info, info_span};

use crate::accounts::normalise_email;
use crate::clock::now_ms;
use crate::device::{Device, Registration};
use crate::error::ApiError;
use crate::forwarded;
use crate::gateway::Gateway;
use crate::hawk_auth;
use crate::ids::{DeviceId, UserId};
use crate::mailbox::Wake;
use crate::metrics::PollEnd;
use crate::protocol::{CommandSet, DeviceReport, KindSet};
use crate::ratelimit;
use crate::registry::Registered;

pub mod body;
pub mod device_auth;
pub mod ops;
pub mod remote;
pub mod respond;
pub mod sync;
pub mod web;

use device_auth::{Signer, Verified};

pub use body::{
    collect_body, field_error, only_fields, query_param, read_body, read_json, take_name,
    take_string,
};
pub use respond::{
    REMOTE_RETRY_AFTER, bytes_response, empty_response, error_body, error_response, json_response,
};

/// The error type a request body may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body type of every handler.
pub type Body = Full<Bytes>;

/// A request being answered, boxed (see [`handle`]).
pub type Answering = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

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
    Metrics,
    Version,
    /// The owner's web page and its browser sessions (see [`web`]).
    Web(web::WebRoute),
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
        [
            "1",
            "storage" | "info" | "changes" | "remote-storage" | "blobs",
            ..,
        ] => sync::route(method, &segments).map(Route::Sync),
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
        ["metrics"] => {
            if is(&Method::GET) {
                Ok(Route::Metrics)
            } else {
                wrong("GET")
            }
        }
        ["__version__"] => {
            if is(&Method::GET) {
                Ok(Route::Version)
            } else {
                wrong("GET")
            }
        }
        other => web::route(method, other),
    }
}

/// Serves one request from `peer` (the TCP peer). Never fails: every error is turned into its
/// JSON response here.
///
/// The real client is resolved here, once, from `peer` and the forwarding headers of trusted
/// proxies ([`forwarded::resolve`]); the [`forwarded::Origin`] travels in the request's
/// extensions and the client address in the request's span, which every log line inherits.
///
/// Returns a boxed future so that what a parked device poll keeps alive is only what its
/// waiting phase needs (see [`exchange_device`]), not the largest state of any handler.
pub fn handle<B>(mut request: Request<B>, gateway: Arc<Gateway>, peer: SocketAddr) -> Answering
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (span, client) = begin(&mut request, &gateway, peer);
    match route(request.method(), request.uri().path()) {
        Ok(Route::DeviceExchange(id)) => exchange_in(span, request, gateway, id),
        Ok(route) => Box::pin(
            async move {
                let mut response = dispatch(route, request, &gateway, client)
                    .await
                    .unwrap_or_else(|error| error_response(&error));
                web::secure(&mut response, &gateway.config);
                Ok(response)
            }
            .instrument(span),
        ),
        Err(error) => {
            let mut response = error_response(&error);
            web::secure(&mut response, &gateway.config);
            Box::pin(std::future::ready(Ok(response)))
        }
    }
}

/// Serves a device exchange (`POST /1/cmd/{id}`) read by the server's own exchange path
/// (`server::conn`), which has matched the route already: as [`handle`] does, without a
/// second instance of every handler for this body type.
pub fn handle_exchange(
    mut request: Request<Body>,
    gateway: Arc<Gateway>,
    peer: SocketAddr,
    id: String,
) -> Answering {
    let (span, _) = begin(&mut request, &gateway, peer);
    exchange_in(span, request, gateway, id)
}

/// Resolves the real client (from `peer` and the forwarding headers of trusted proxies) into
/// the request's extensions, and opens the request's span.
fn begin<B>(request: &mut Request<B>, gateway: &Gateway, peer: SocketAddr) -> (Span, IpAddr) {
    let origin = forwarded::resolve(peer.ip(), request.headers(), &gateway.config.proxy.trusted);
    let client = origin.client;
    // Ids only: the device and owner fields are filled in once authenticated. Never the query
    // string, a token or a body.
    let span = info_span!(
        "request",
        method = %request.method(),
        path = request.uri().path(),
        %client,
        device = field::Empty,
        owner = field::Empty,
    );
    request.extensions_mut().insert(origin);
    (span, client)
}

fn exchange_in<B>(span: Span, request: Request<B>, gateway: Arc<Gateway>, id: String) -> Answering
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    span.record("device", id.as_str());
    let exchange = span.in_scope(|| exchange_device(request, gateway, id));
    Box::pin(exchange.instrument(span))
}

async fn dispatch<B>(
    route: Route,
    request: Request<B>,
    gateway: &Arc<Gateway>,
    client: IpAddr,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match route {
        Route::DeviceExchange(id) => {
            let Ok(response) = exchange_device(request, gateway.clone(), id).await;
            Ok(response)
        }
        Route::Heartbeat => Ok(ops::heartbeat(gateway)),
        Route::LbHeartbeat => Ok(json_response(StatusCode::OK, &json!({}))),
        Route::Metrics if gateway.config.metrics.listen.is_some() => Err(ApiError::NotFound),
        Route::Metrics => Ok(ops::metrics(gateway)),
        Route::Version => Ok(ops::version()),
        Route::Web(route) => web::dispatch(route, request, gateway, client).await,
        Route::Sync(route) => Ok(sync::handle(route, request, gateway).await),
        Route::CreateAccount => {
            limit_address(gateway, client)?;
            let body = read_json(request, gateway).await?;
            create_account(gateway, body).await
        }
        Route::SignIn => {
            let body = read_json(request, gateway).await?;
            sign_in(gateway, body, client).await
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
            let user = owner(&request, gateway).await?;
            let body = read_json(request, gateway).await?;
            register(gateway, user, body).await
        }
        Route::ListDevices => {
            let user = owner(&request, gateway).await?;
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
            let user = owner(&request, gateway).await?;
            let device = gateway.registry.owned(user, &id)?;
            Ok(json_response(
                StatusCode::OK,
                &device.detail(&gateway.config.devices),
            ))
        }
        Route::RenameDevice(id) => {
            let user = owner(&request, gateway).await?;
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
            let user = owner(&request, gateway).await?;
            let device = gateway.registry.owned(user, &id)?;
            gateway
                .registry
                .remove(user, device.id, &gateway.config.devices, gateway.storage())?
                .wait()
                .await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Route::QueueCommand(id) => {
            let caller = web::authenticate(request.method(), request.headers(), gateway).await?;
            Span::current().record("owner", field::display(caller.user));
            let device = gateway.registry.owned(caller.user, &id)?;
            limit_commands(gateway, caller.user)?;
            let body = read_body(request, gateway).await?;
            let commands = CommandSet::from_slice(&body)?;
            web::check_erase_allowed(caller, &commands)?;
            let answer = queue_commands(gateway, &device, commands).await?;
            Ok(json_response(StatusCode::ACCEPTED, &answer))
        }
        Route::Events(id) => {
            let user = owner(&request, gateway).await?;
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
    client: IpAddr,
) -> Result<Response<Body>, ApiError> {
    limit_address(gateway, client)?;
    let (email, password) = credentials(&mut body)?;
    let sign_in = gateway
        .accounts
        .sign_in(&email, &password, &gateway.journal);
    let issued = password_attempt(gateway, client, &email, sign_in).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "token": issued.token, "userid": issued.user }),
    ))
}

/// Runs a password check (`check`, which fails with `BadCredentials` or `StepUpFailed` on a
/// wrong password) under the per-account sign-in limit. Every attempt takes one from the
/// account's allowance and a correct password gives it back, so the owner's own sign-ins
/// never use up what a guesser would exhaust. The caller has already counted the attempt
/// against the client's address.
pub(crate) async fn password_attempt<T>(
    gateway: &Gateway,
    client: IpAddr,
    email: &str,
    check: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    // Only well-formed addresses are keys (at most 254 bytes each); a malformed one cannot
    // match an account, and the address limit still counts it.
    let account = normalise_email(email).ok();
    if let Some(account) = &account {
        gateway
            .limits
            .sign_in_account
            .take(account, now_ms())
            .map_err(|wait| {
                info!(%client, "sign-in refused: rate limit for this account");
                ratelimit::refusal(wait)
            })?;
    }
    let outcome = check.await.inspect_err(|error| {
        // Operators watch for password guessing (and feed it to fail2ban and the like).
        match error {
            ApiError::BadCredentials => {
                info!(%client, "sign-in refused: wrong email or password")
            }
            ApiError::StepUpFailed => info!(%client, "erase refused: wrong password"),
            _ => {}
        }
    })?;
    if let Some(account) = &account {
        gateway.limits.sign_in_account.give_back(account);
    }
    Ok(outcome)
}

/// Counts one command request against its owner's rate limit.
pub(crate) fn limit_commands(gateway: &Gateway, user: UserId) -> Result<(), ApiError> {
    gateway
        .limits
        .commands_owner
        .take(&user, now_ms())
        .map_err(|wait| {
            info!(owner = %user, "command refused: rate limit");
            ratelimit::refusal(wait)
        })
}

/// Queues commands, wakes the device (its parked poll, or else a push ping), and answers the
/// owner's 202 once the commands are durable.
///
/// The device is woken while the journal is still flushing the commands: the flush is the
/// slowest step, and the device's poll would otherwise wait for it (docs/durability.md). No
/// answer is given early: the owner hears only of durable commands, and a device's reply is
/// journaled after the command it answers, so it cannot be durable without it. What a crash in
/// that window leaves is a device that got a command the owner was told had failed, as when
/// the owner's answer is lost; `Device::skip_seqs` keeps its number from being used again.
pub(crate) async fn queue_commands(
    gateway: &Arc<Gateway>,
    device: &Arc<Device>,
    commands: CommandSet,
) -> Result<Value, ApiError> {
    let wire = commands.to_json();
    let (queued, commit) = device.queue(commands, &gateway.config.devices, gateway.storage());
    let woken = crate::push::wake(gateway, device);
    if woken == crate::push::Wakeup::Parked {
        // The woken poll waits in this worker's next-task slot, which other workers cannot
        // take; were this task to flush the journal now, the device's answer would wait for
        // the disk after all. Yielding lets it go out first.
        tokio::task::yield_now().await;
    }
    commit.wait().await?;
    gateway.metrics.commands_queued.add(queued.len() as u64);
    Ok(json!({
        "queued": queued,
        "command": wire,
        "parked": woken == crate::push::Wakeup::Parked,
        "push": woken.answer(),
    }))
}

/// Counts one sign-in or sign-up attempt against the client's address.
pub(crate) fn limit_address(gateway: &Gateway, client: IpAddr) -> Result<(), ApiError> {
    gateway
        .limits
        .sign_in_address
        .take(&client, now_ms())
        .map_err(|wait| {
            info!(%client, "sign-in refused: rate limit for this address");
            ratelimit::refusal(wait)
        })
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

/// The owner calling: by bearer token, or by the browser's session cookie (see [`web`]).
/// The returned future borrows only the gateway, so a handler can await it and still own
/// its request.
fn owner<'g, B>(
    request: &Request<B>,
    gateway: &'g Gateway,
) -> impl Future<Output = Result<UserId, ApiError>> + Send + 'g {
    let caller = web::authenticate(request.method(), request.headers(), gateway);
    async move {
        let user = caller.await?.user;
        Span::current().record("owner", field::display(user));
        Ok(user)
    }
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
            "pushtype",
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
    check_push_url(&push_url, gateway)?;
    let push_protocol = match take_string(&mut body, "pushtype")?.as_deref() {
        None | Some("simplepush") => crate::push::PushProtocol::SimplePush,
        Some("webpush") => crate::push::PushProtocol::WebPush,
        Some(_) => {
            return Err(field_error(
                "pushtype",
                "must be \"simplepush\" or \"webpush\"",
            ));
        }
    };
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
        push_protocol,
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

/// A malformed URL is a bad field (101); a well-formed one that the push policy will never
/// reach (plain http, an internal address, `localhost`) is refused outright (230), so that a
/// device learns at registration rather than by never being woken.
fn check_push_url(url: &str, gateway: &Gateway) -> Result<(), ApiError> {
    if url.len() > MAX_PUSH_URL_LEN {
        return Err(field_error("pushurl", "is too long"));
    }
    crate::outbound::Target::parse(url).map_err(|reason| field_error("pushurl", &reason))?;
    gateway
        .push
        .outbound()
        .policy()
        .check_url(url)
        .map_err(ApiError::PushUrlRefused)?;
    Ok(())
}

// === The device channel ===

/// `POST /1/cmd/{id}`: a device reports, then receives what is pending or parks until
/// something is queued, the wait ends, a newer poll arrives, or the server stops.
///
/// Two phases, each in its own allocation: accepting the request (which needs the request,
/// its body and the verification state), then answering (which needs only an [`Exchange`]).
/// The first is created here, outside the returned future, and freed when it completes, so a
/// parked poll holds a few hundred bytes rather than everything the first phase needed. The
/// returned future itself only ever holds one of the two boxes and the gateway.
///
/// Cancel safety: if the client goes away the future is dropped, which deregisters the parked
/// poll; queued commands stay in the outbox for the next poll.
fn exchange_device<B>(
    request: Request<B>,
    gateway: Arc<Gateway>,
    id: String,
) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let accepting = Box::pin(accept_exchange(request, gateway.clone(), id));
    async move {
        // Matched before the next await, so that no part of the accepted request (nor the
        // `Exchange`, now owned by the answering future) stays in this future's state.
        let answering = match accepting.await {
            Ok(exchange) => Box::pin(exchange.respond(gateway)),
            Err(response) => {
                gateway.metrics.poll_answered(PollEnd::Refused);
                return Ok(response);
            }
        };
        Ok(answering.await)
    }
}

/// What answering a verified device request needs once the request itself is gone.
struct Exchange {
    device: Arc<Device>,
    signer: Signer,
    wait: Duration,
    /// Kinds not to send in this answer (see `DeviceReport::held_back`).
    held_back: KindSet,
    /// The report's records, when the poll parks before they are durable: the answer, the
    /// device's receipt for its report, waits for them. Boxed: most parked polls have none.
    report: Option<Box<crate::store::Commit>>,
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
    let wait = spread(wait_param(query, config.poll.wait_secs).map_err(|e| signer.fail(&e))?);
    let mut applied = device.apply_report(&report, &config.devices, gateway.storage());
    let applied = if wait.is_zero() || !applied.is_pending() {
        applied.wait().await.map_err(|e| signer.fail(&e))?;
        None
    } else {
        // A poll that may park answers later, and its report need only be durable by then:
        // the journal's thread writes it meanwhile, and this worker does not block on the
        // disk before parking.
        applied.hand_over();
        Some(Box::new(applied))
    };
    Ok(Exchange {
        device,
        signer,
        wait,
        held_back: report.held_back(),
        report: applied,
    })
}

impl Exchange {
    /// Answers (see [`Exchange::answer`]) and counts how the poll ended. Cancel safety: as
    /// for `answer`.
    ///
    /// An `async` block, not an `async fn`: an `async fn` keeps its arguments twice (as
    /// arguments and as locals), and this future is what a parked poll holds.
    #[allow(clippy::manual_async_fn, reason = "see above")]
    fn respond(self, gateway: Arc<Gateway>) -> impl Future<Output = Response<Body>> + Send {
        async move {
            // `answer` borrows: a future that took `self` by value would keep a second copy.
            let (response, end) = self.answer(&gateway).await;
            // The answer tells the device its report was taken: not before it is durable. If
            // it cannot be made so, what was taken for this answer goes with the next one, as
            // when an answer is lost on the way.
            let (response, end) = match self.report {
                Some(report) => match report.wait().await {
                    Ok(()) => (response, end),
                    Err(error) => (self.signer.fail(&error), PollEnd::Refused),
                },
                None => (response, end),
            };
            gateway.metrics.poll_answered(end);
            response
        }
    }

    /// Answers with what is pending, or parks until there is something, the wait ends, a
    /// newer poll supersedes this one, or the server shuts down.
    ///
    /// The timer and the shutdown watch are created once and pinned in place, and only
    /// borrowed by each round of waiting: `select!` keeps what it is given by value in its
    /// own state, so handing it fresh futures would hold each of them twice while parked.
    ///
    /// Cancel safety: dropping it deregisters the parked poll and its timer; what is queued
    /// stays in the outbox for the next poll.
    async fn answer(&self, gateway: &Gateway) -> (Response<Body>, PollEnd) {
        let limits = &gateway.config.devices;
        let (device, signer) = (&self.device, &self.signer);
        let empty = |end| (signer.answer(StatusCode::OK, &json!({})), end);
        let timeout = tokio::time::sleep(self.wait);
        let mut shutdown = gateway.shutdown_handle();
        let stopping = shutdown.wait();
        tokio::pin!(timeout, stopping);
        let mut woken = false;
        loop {
            if device.is_removed() {
                return (signer.fail(&ApiError::UnknownDevice), PollEnd::Removed);
            }
            if let Some(delivery) = device.take_delivery(woken, self.held_back, limits) {
                if delivery.sent.is_empty() {
                    return (
                        signer.answer(StatusCode::OK, &delivery.body),
                        PollEnd::Immediate,
                    );
                }
                let metrics = &gateway.metrics;
                metrics.commands_delivered.add(delivery.sent.len() as u64);
                if woken {
                    let waited = crate::clock::now_ms().saturating_sub(delivery.newest_queued_ms);
                    metrics.wake_latency.observe(Duration::from_millis(waited));
                }
                return (
                    signer.answer(StatusCode::OK, &delivery.body),
                    PollEnd::Delivered,
                );
            }
            if self.wait.is_zero() {
                return empty(PollEnd::Immediate);
            }
            if gateway.is_shutting_down() {
                return empty(PollEnd::Shutdown);
            }
            let parked = device.mailbox.park();
            let _counted = gateway.park_guard();
            tokio::select! {
                wake = parked => match wake {
                    Wake::Notified => woken = true,
                    Wake::Superseded if device.is_removed() => {
                        return (signer.fail(&ApiError::UnknownDevice), PollEnd::Removed);
                    }
                    Wake::Superseded => return empty(PollEnd::Superseded),
                },
                _ = &mut timeout => return empty(PollEnd::Timeout),
                _ = &mut stopping => return empty(PollEnd::Shutdown),
            }
        }
    }
}

/// How long a device's poll is held: its `wait`, less up to an eighth of it at random.
/// Devices that parked together (after a restart, or when a network came back) would
/// otherwise all time out together and come back in one wave every `wait` seconds for as long
/// as nothing else happens to them; with a random part in each round, the waves spread out.
fn spread(wait: Duration) -> Duration {
    use rand::Rng;
    let eighth = wait / 8;
    if eighth.is_zero() {
        return wait;
    }
    wait - eighth.mul_f64(rand::thread_rng().r#gen::<f64>())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway on a fresh data directory, with one device registered: its id and secret.
    async fn gateway_with_device(dir: &std::path::Path) -> (Arc<Gateway>, DeviceId, String) {
        let gateway = Gateway::open(crate::config::Config::for_test(dir)).unwrap();
        let secret = crate::client::random_secret();
        let registration = crate::device::Registration {
            secret: secret.clone(),
            push_url: String::new(),
            push_protocol: Default::default(),
            name: None,
        };
        let (registered, commit) = gateway
            .registry
            .register(
                UserId::random(),
                None,
                registration,
                &gateway.config.devices,
                gateway.storage(),
            )
            .unwrap();
        commit.wait().await.unwrap();
        let crate::registry::Registered::New(id) = registered else {
            panic!("a new device")
        };
        (gateway, id, secret)
    }

    /// A parked device hears of its command while the journal is still flushing it; the
    /// owner's answer waits for the flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_parked_device_is_woken_before_the_flush_and_the_owner_answered_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, id, _) = gateway_with_device(dir.path()).await;
        let device = gateway.registry.get(&id).unwrap();
        let parked = device.mailbox.park();
        let held = gateway.journal.hold_writes();
        let commands = CommandSet::from_json(&json!({"r": {"p": 5, "d": 60}})).unwrap();
        let queuing = tokio::spawn({
            let (gateway, device) = (gateway.clone(), device.clone());
            async move { queue_commands(&gateway, &device, commands).await }
        });
        let woken = tokio::time::timeout(Duration::from_secs(10), parked).await;
        assert!(matches!(woken, Ok(Wake::Notified)), "{woken:?}");
        let delivery = device.take_delivery(true, Default::default(), &gateway.config.devices);
        assert_eq!(delivery.unwrap().body, json!({"r": {"p": 5, "d": 60}}));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !queuing.is_finished(),
            "the owner was answered before the flush"
        );
        drop(held);
        let answer = queuing.await.unwrap().unwrap();
        assert_eq!(answer["parked"], json!(true));
    }

    /// A poll whose report still has to be flushed parks at once; its answer, the device's
    /// receipt for the report, goes out only once the report is on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_parks_while_its_report_is_flushed_and_is_answered_after_the_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, id, secret) = gateway_with_device(dir.path()).await;
        let device = gateway.registry.get(&id).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        let client = crate::client::DeviceClient::new(
            crate::client::HttpClient::new(addr),
            &id.to_string(),
            &secret,
        );
        let path = format!("/1/cmd/{id}?wait=30");
        let body = br#"{"has_passcode":true}"#;
        let request = Request::post(&path)
            .header(header::HOST, "127.0.0.1:8080")
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::AUTHORIZATION,
                client.authorization(&path, body).unwrap(),
            )
            .body(Body::new(Bytes::from_static(body)))
            .unwrap();
        let held = gateway.journal.hold_writes();
        let polling = tokio::spawn(handle_exchange(
            request,
            gateway.clone(),
            addr,
            id.to_string(),
        ));
        let parked = async {
            while gateway
                .stats
                .parked
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), parked)
            .await
            .expect("the poll waited for its report's flush before parking");
        let commands = CommandSet::from_json(&json!({"r": {"p": 5, "d": 60}})).unwrap();
        let queuing = tokio::spawn({
            let (gateway, device) = (gateway.clone(), device.clone());
            async move { queue_commands(&gateway, &device, commands).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !polling.is_finished(),
            "the device was answered before its report was flushed"
        );
        drop(held);
        let response = tokio::time::timeout(Duration::from_secs(10), polling)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body, json!({"r": {"p": 5, "d": 60}}));
        queuing.await.unwrap().unwrap();
    }

    #[test]
    fn a_poll_is_held_for_the_last_eighth_of_its_wait_at_random() {
        let wait = Duration::from_secs(48);
        let held: Vec<Duration> = (0..1000).map(|_| spread(wait)).collect();
        assert!(held.iter().all(|h| *h <= wait && *h >= wait - wait / 8));
        // Spread over the whole eighth (6 s), not bunched: each second of it is used.
        let seconds: std::collections::BTreeSet<u64> = held.iter().map(|h| h.as_secs()).collect();
        assert_eq!(seconds, (42..=47).collect());
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }

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
