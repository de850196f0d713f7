//! The owner's web page: its assets, browser sessions (cookie + CSRF), the security headers
//! every answer carries, and the erase that asks for the password again.
//!
//! - The page is three files embedded in the binary; nothing is fetched from elsewhere except
//!   map tiles from `web.tile_url`, the one origin the Content-Security-Policy allows.
//! - A browser signs in with `POST /1/web/session` and gets an HttpOnly, SameSite=Strict
//!   cookie (Secure when `server.public_url` is https). Owner calls then authenticate by that
//!   cookie when they carry no `Authorization` header.
//! - A cookie-authenticated call that is not GET must echo the session's CSRF token in
//!   `X-CSRF-Token` (the page reads it from `GET /1/web/session`, which another origin cannot).
//! - An erase from a browser session goes through `POST /1/devices/{id}/erase` with the
//!   password: a stolen or forgotten-open session alone cannot wipe a phone.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};
use tracing::info;

use super::{Body, Route, bytes_response, empty_response, field_error, json_response};
use super::{only_fields, take_string};
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::ids::UserId;
use crate::oidc::LoginPurpose;
use crate::protocol::{CommandSet, Kind};
use crate::websession;

/// The cookie that carries a browser session.
pub const SESSION_COOKIE: &str = "wmf_session";
/// The header a cookie-authenticated change must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sent by the page on its own periodic refreshes: they do not keep a session from idling out.
pub const BACKGROUND_HEADER: &str = "x-wmf-background";

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const MAP_JS: &str = include_str!("../../web/map.js");
const APP_CSS: &str = include_str!("../../web/app.css");
const ICON_SVG: &str = include_str!("../../web/icon.svg");

/// One of the page's embedded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Index,
    AppJs,
    MapJs,
    AppCss,
    Icon,
}

/// A web route (a `Route::Web` variant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebRoute {
    Asset(Asset),
    /// `GET /1/web/config`: what the page needs to know of the server.
    PageConfig,
    /// `GET /1/web/session`: who is signed in, and the CSRF token.
    SessionInfo,
    /// `POST /1/web/session`: sign in, setting the cookie.
    OpenSession,
    /// `DELETE /1/web/session`: sign out.
    CloseSession,
    /// `POST /1/devices/{id}/erase`: erase, with the password.
    Erase(String),
    /// `GET /1/oidc/login`: off to the identity provider.
    ProviderLogin,
    /// `GET /1/oidc/callback`: back from it.
    ProviderCallback,
}

/// Who is calling an owner endpoint, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    /// Authenticated by the browser's session cookie (not a bearer token).
    pub by_cookie: bool,
}

// === Routing ===

/// The web page's paths; everything else is 404.
pub fn route(method: &Method, segments: &[&str]) -> Result<Route, ApiError> {
    let get_only = |asset: Asset| {
        if method == Method::GET || method == Method::HEAD {
            Ok(Route::Web(WebRoute::Asset(asset)))
        } else {
            Err(ApiError::MethodNotAllowed { allow: "GET" })
        }
    };
    match segments {
        [""] => get_only(Asset::Index),
        ["app.js"] => get_only(Asset::AppJs),
        ["map.js"] => get_only(Asset::MapJs),
        ["app.css"] => get_only(Asset::AppCss),
        ["icon.svg"] => get_only(Asset::Icon),
        ["1", "web", "config"] => match *method {
            Method::GET => Ok(Route::Web(WebRoute::PageConfig)),
            _ => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        },
        ["1", "web", "session"] => match *method {
            Method::GET => Ok(Route::Web(WebRoute::SessionInfo)),
            Method::POST => Ok(Route::Web(WebRoute::OpenSession)),
            Method::DELETE => Ok(Route::Web(WebRoute::CloseSession)),
            _ => Err(ApiError::MethodNotAllowed {
                allow: "GET, POST, DELETE",
            }),
        },
        ["1", "oidc", "login"] => match *method {
            Method::GET => Ok(Route::Web(WebRoute::ProviderLogin)),
            _ => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        },
        ["1", "oidc", "callback"] => match *method {
            Method::GET => Ok(Route::Web(WebRoute::ProviderCallback)),
            _ => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        },
        ["1", "devices", id, "erase"] if !id.is_empty() => match *method {
            Method::POST => Ok(Route::Web(WebRoute::Erase((*id).to_owned()))),
            _ => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        },
        _ => Err(ApiError::NotFound),
    }
}

// === Authentication ===

/// The caller of an owner endpoint: by bearer token when `Authorization` is present (one of
/// ours, or else a JWT of the identity provider), else by the session cookie, with the CSRF
/// token required for anything but GET and HEAD.
///
/// The returned future borrows only the gateway, not the request.
pub fn authenticate<'g>(
    method: &Method,
    headers: &HeaderMap,
    gateway: &'g Gateway,
) -> impl std::future::Future<Output = Result<Caller, ApiError>> + Send + 'g {
    let now = authenticate_locally(method, headers, gateway);
    async move {
        match now {
            Ok(caller) => Ok(caller),
            Err(Unresolved::Provider(token, oidc)) => {
                let claims = oidc.verify(&token, None).await?;
                let user = gateway
                    .accounts
                    .user_for_subject(
                        &oidc.subject_key(&claims.sub),
                        claims.email.as_deref(),
                        &gateway.journal,
                    )
                    .await?;
                Ok(Caller {
                    user,
                    by_cookie: false,
                })
            }
            Err(Unresolved::Refused(error)) => Err(error),
        }
    }
}

/// Why a caller could not be settled without waiting.
enum Unresolved {
    /// A bearer token that is not ours, for the identity provider to vouch for.
    Provider(String, std::sync::Arc<crate::oidc::Oidc>),
    Refused(ApiError),
}

impl From<ApiError> for Unresolved {
    fn from(error: ApiError) -> Self {
        Unresolved::Refused(error)
    }
}

fn authenticate_locally(
    method: &Method,
    headers: &HeaderMap,
    gateway: &Gateway,
) -> Result<Caller, Unresolved> {
    if headers.contains_key(header::AUTHORIZATION) {
        let token = super::bearer(headers)?;
        return match gateway.accounts.authenticate(token) {
            Ok(user) => Ok(Caller {
                user,
                by_cookie: false,
            }),
            // Our tokens have no dots; a JWT has two.
            Err(ApiError::InvalidToken) if token.matches('.').count() == 2 => match &gateway.oidc {
                Some(oidc) => Err(Unresolved::Provider(token.to_owned(), oidc.clone())),
                None => Err(ApiError::InvalidToken.into()),
            },
            Err(error) => Err(error.into()),
        };
    }
    let token = session_cookie(headers).ok_or(ApiError::MissingBearer)?;
    // Checked first, so a forged request does not even count as a use of the session.
    if method != Method::GET && method != Method::HEAD {
        let offered = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !websession::csrf_matches(token, offered) {
            return Err(ApiError::CsrfRejected.into());
        }
    }
    let active = !headers.contains_key(BACKGROUND_HEADER);
    let user =
        gateway
            .accounts
            .web
            .authenticate(token, active, &gateway.config.web, &gateway.journal)?;
    Ok(Caller {
        user,
        by_cookie: true,
    })
}

/// The session cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, SESSION_COOKIE)
}

fn cookie<'h>(headers: &'h HeaderMap, wanted: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == wanted && !value.is_empty())
        .map(|(_, value)| value)
}

/// Refuses to queue an erase for a browser session without the password (see the module
/// notes); bearer tokens are for apps and scripts and keep the plain command.
pub fn check_erase_allowed(caller: Caller, commands: &CommandSet) -> Result<(), ApiError> {
    let erases = commands.entries().iter().any(|(k, _)| *k == Kind::Erase);
    if erases && caller.by_cookie {
        return Err(ApiError::StepUpRequired);
    }
    Ok(())
}

// === Handlers ===

/// Serves a web route; only the routes that take a body read one.
pub async fn dispatch<B>(
    route: WebRoute,
    request: http::Request<B>,
    gateway: &Arc<Gateway>,
    client: std::net::IpAddr,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<super::BoxError>,
{
    match route {
        WebRoute::Asset(asset) => Ok(asset_response(asset)),
        WebRoute::PageConfig => Ok(json_response(StatusCode::OK, &page_config(gateway))),
        WebRoute::SessionInfo => {
            let caller = authenticate(request.method(), request.headers(), gateway).await?;
            let token = session_cookie(request.headers())
                .filter(|_| caller.by_cookie)
                .ok_or(ApiError::MissingBearer)?;
            let email = gateway
                .accounts
                .user(&caller.user)
                .map(|u| u.email)
                .unwrap_or_default();
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "userid": caller.user,
                    "email": email,
                    "csrf": websession::csrf_token(token),
                    "has_password": gateway.accounts.has_password(&caller.user),
                }),
            ))
        }
        WebRoute::OpenSession => {
            require_json(request.headers())?;
            let mut body = super::read_json(request, gateway).await?;
            only_fields(&body, &["email", "password"])?;
            let email = take_string(&mut body, "email")?
                .ok_or_else(|| field_error("email", "is required"))?;
            let password = take_string(&mut body, "password")?
                .ok_or_else(|| field_error("password", "is required"))?;
            super::limit_address(gateway, client)?;
            let check = gateway.accounts.verify_credentials(&email, &password);
            let user = super::password_attempt(gateway, client, &email, check).await?;
            let (opened, commit) = gateway.accounts.web.open(user, &gateway.journal);
            commit.wait().await?;
            let email = gateway
                .accounts
                .user(&user)
                .map(|u| u.email)
                .unwrap_or_default();
            let mut response = json_response(
                StatusCode::OK,
                &json!({ "userid": user, "email": email, "csrf": opened.csrf, "has_password": true }),
            );
            let cookie = set_cookie(
                &gateway.config,
                &opened.token,
                max_age_secs(&gateway.config),
            );
            response.headers_mut().insert(header::SET_COOKIE, cookie);
            Ok(response)
        }
        WebRoute::CloseSession => {
            let caller = authenticate(request.method(), request.headers(), gateway).await?;
            if let Some(token) = session_cookie(request.headers()).filter(|_| caller.by_cookie) {
                gateway
                    .accounts
                    .web
                    .close(token, &gateway.journal)
                    .wait()
                    .await?;
            }
            let mut response = empty_response(StatusCode::NO_CONTENT);
            response
                .headers_mut()
                .insert(header::SET_COOKIE, set_cookie(&gateway.config, "", 0));
            Ok(response)
        }
        WebRoute::ProviderLogin => {
            let oidc = login_provider(gateway)?;
            let redirect_uri = redirect_uri(gateway, request.headers());
            let erase =
                super::query_param(request.uri().query().unwrap_or(""), "erase").map(str::to_owned);
            let purpose = match erase {
                None => LoginPurpose::SignIn,
                // Only the owner's own browser session can ask: the session cookie is
                // SameSite=Strict, so a link from another site arrives without it.
                Some(id) => {
                    let caller = authenticate(request.method(), request.headers(), gateway).await?;
                    if !caller.by_cookie {
                        return Err(ApiError::MissingBearer);
                    }
                    let device = gateway.registry.owned(caller.user, &id)?;
                    LoginPurpose::Erase {
                        user: caller.user,
                        device: device.id.to_string(),
                    }
                }
            };
            let started = oidc.start_login(&redirect_uri, purpose)?;
            let mut response = empty_response(StatusCode::SEE_OTHER);
            let headers = response.headers_mut();
            headers.insert(
                header::LOCATION,
                HeaderValue::from_str(&started.redirect)
                    .map_err(|_| ApiError::Internal("provider URL is not a header".into()))?,
            );
            headers.insert(
                header::SET_COOKIE,
                state_cookie(
                    &gateway.config,
                    &started.state,
                    crate::oidc::LOGIN_TTL_MS / 1000,
                ),
            );
            Ok(response)
        }
        WebRoute::ProviderCallback => {
            let oidc = login_provider(gateway)?;
            let query = request.uri().query().unwrap_or("");
            let param = |name| super::query_param(query, name).and_then(crate::oidc::decode);
            if let Some(error) = param("error") {
                return Err(ApiError::OidcLogin(format!(
                    "the provider said {}",
                    error
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(100)
                        .collect::<String>()
                )));
            }
            let state = param("state").unwrap_or_default();
            let code = param("code").unwrap_or_default();
            // The state must come back to the browser that started the login: a link with
            // someone else's code cannot sign this browser into their account.
            let bound = cookie(request.headers(), STATE_COOKIE).is_some_and(|c| c == state);
            if state.is_empty() || code.is_empty() || !bound {
                return Err(ApiError::OidcLogin(
                    "this sign-in did not start in this browser: start again".into(),
                ));
            }
            let redirect_uri = redirect_uri(gateway, request.headers());
            let (claims, purpose) = oidc.finish_login(&state, &code, &redirect_uri).await?;
            let user = gateway
                .accounts
                .user_for_subject(
                    &oidc.subject_key(&claims.sub),
                    claims.email.as_deref(),
                    &gateway.journal,
                )
                .await?;
            if let LoginPurpose::Erase {
                user: owner,
                device,
            } = purpose
            {
                return erase_after_provider(gateway, owner, user, &device, claims.auth_time).await;
            }
            let (opened, commit) = gateway.accounts.web.open(user, &gateway.journal);
            commit.wait().await?;
            info!(user = %user, "signed in through the identity provider");
            let mut response = empty_response(StatusCode::SEE_OTHER);
            let headers = response.headers_mut();
            headers.insert(header::LOCATION, HeaderValue::from_static("/"));
            headers.append(
                header::SET_COOKIE,
                set_cookie(
                    &gateway.config,
                    &opened.token,
                    max_age_secs(&gateway.config),
                ),
            );
            headers.append(header::SET_COOKIE, state_cookie(&gateway.config, "", 0));
            Ok(response)
        }
        WebRoute::Erase(id) => {
            let caller = authenticate(request.method(), request.headers(), gateway).await?;
            let device = gateway.registry.owned(caller.user, &id)?;
            let mut body = super::read_json(request, gateway).await?;
            only_fields(&body, &["password"])?;
            let password = take_string(&mut body, "password")?
                .ok_or_else(|| field_error("password", "is required"))?;
            // A thief holding a session must not get unlimited guesses here either.
            super::limit_address(gateway, client)?;
            let email = gateway
                .accounts
                .user(&caller.user)
                .map(|u| u.email)
                .unwrap_or_default();
            let check = async {
                match gateway
                    .accounts
                    .check_password(caller.user, &password)
                    .await?
                {
                    true => Ok(()),
                    false => Err(ApiError::StepUpFailed),
                }
            };
            super::password_attempt(gateway, client, &email, check).await?;
            super::limit_commands(gateway, caller.user)?;
            let commands = CommandSet::from_json(&json!({ "e": {} }))?;
            let answer = super::queue_commands(gateway, &device, commands).await?;
            info!(device = %device.id, "erase queued after the password was confirmed");
            Ok(json_response(StatusCode::ACCEPTED, &answer))
        }
    }
}

/// Queues an erase once the provider has just authenticated the owner again: the same
/// account, signed in within the last few minutes. Back to the page either way.
async fn erase_after_provider(
    gateway: &Arc<Gateway>,
    owner: UserId,
    signed_in: UserId,
    device: &str,
    auth_time: Option<u64>,
) -> Result<Response<Body>, ApiError> {
    if signed_in != owner {
        return Err(ApiError::OidcLogin(
            "you signed in at the provider as someone else: nothing was erased".into(),
        ));
    }
    let now = crate::clock::now_ms() / 1000;
    let leeway = gateway.oidc.as_ref().map_or(0, |o| o.config.leeway_secs);
    let fresh = auth_time
        .is_some_and(|t| t.saturating_add(crate::oidc::STEP_UP_MAX_AGE_SECS + leeway) >= now);
    if !fresh {
        return Err(ApiError::OidcLogin(
            "the provider did not confirm a fresh sign-in: nothing was erased".into(),
        ));
    }
    let device = gateway.registry.owned(owner, device)?;
    super::limit_commands(gateway, owner)?;
    let commands = CommandSet::from_json(&json!({ "e": {} }))?;
    super::queue_commands(gateway, &device, commands).await?;
    info!(device = %device.id, "erase queued after signing in again at the provider");
    let mut response = empty_response(StatusCode::SEE_OTHER);
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/"));
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state_cookie(&gateway.config, "", 0));
    Ok(response)
}

/// The cookie that binds a provider login to the browser that started it.
const STATE_COOKIE: &str = "wmf_oidc_state";

fn login_provider(gateway: &Gateway) -> Result<std::sync::Arc<crate::oidc::Oidc>, ApiError> {
    gateway
        .oidc
        .clone()
        .filter(|oidc| oidc.offers_login())
        .ok_or(ApiError::NotFound)
}

/// Where the provider sends the browser back (it must be registered with the provider).
fn redirect_uri(gateway: &Gateway, headers: &HeaderMap) -> String {
    let config = &gateway.config;
    if !config.oidc.redirect_url.is_empty() {
        return config.oidc.redirect_url.clone();
    }
    let base = match &config.server.public_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    };
    format!("{base}/1/oidc/callback")
}

/// Lax, unlike the session: the provider's redirect back is a navigation from its site.
fn state_cookie(config: &Config, value: &str, max_age: u64) -> HeaderValue {
    let secure = if public_https(config) { "; Secure" } else { "" };
    let cookie = format!(
        "{STATE_COOKIE}={value}; Path=/1/oidc; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A browser sign-in must be `application/json`, which an HTML form on another site cannot
/// send without a CORS preflight we never grant (this is what stops login CSRF).
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

fn max_age_secs(config: &Config) -> u64 {
    config.web.session_max_hours.saturating_mul(3600)
}

fn set_cookie(config: &Config, value: &str, max_age: u64) -> HeaderValue {
    let secure = if public_https(config) { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    );
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn public_https(config: &Config) -> bool {
    config
        .server
        .public_url
        .as_deref()
        .is_some_and(|url| url.len() >= 8 && url[..8].eq_ignore_ascii_case("https://"))
}

/// What the page needs to know of the server; nothing secret.
fn page_config(gateway: &Gateway) -> Value {
    let config = &gateway.config;
    let tiles = if config.web.tile_url.is_empty() {
        Value::Null
    } else {
        json!({ "url": config.web.tile_url, "attribution": config.web.tile_attribution })
    };
    let mut out = Map::new();
    out.insert("tiles".into(), tiles);
    out.insert("signup".into(), json!(config.accounts.signup));
    let provider = match &gateway.oidc {
        Some(oidc) if oidc.offers_login() => {
            json!({ "name": oidc.config.provider_name, "login": "/1/oidc/login" })
        }
        _ => Value::Null,
    };
    out.insert("provider".into(), provider);
    out.insert(
        "session_idle_minutes".into(),
        json!(config.web.session_idle_minutes),
    );
    Value::Object(out)
}

fn asset_response(asset: Asset) -> Response<Body> {
    let (text, content_type) = match asset {
        Asset::Index => (INDEX_HTML, "text/html; charset=utf-8"),
        Asset::AppJs => (APP_JS, "text/javascript; charset=utf-8"),
        Asset::MapJs => (MAP_JS, "text/javascript; charset=utf-8"),
        Asset::AppCss => (APP_CSS, "text/css; charset=utf-8"),
        Asset::Icon => (ICON_SVG, "image/svg+xml"),
    };
    let mut response = bytes_response(StatusCode::OK, Bytes::from_static(text.as_bytes()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

// === Security headers ===

/// Adds the security headers every answer carries (the page, its assets and the API alike).
pub fn secure(response: &mut Response<Body>, config: &Config) {
    let headers = response.headers_mut();
    let img = match config.web.tile_origin() {
        Some(origin) => format!("'self' data: {origin}"),
        None => "'self' data:".to_owned(),
    };
    let policy = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src {img}; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Tile servers get our origin (some require a referrer), never a path.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route(&Method::GET, &[""]).unwrap(),
            Route::Web(WebRoute::Asset(Asset::Index))
        );
        assert_eq!(
            route(&Method::POST, &["1", "devices", "abc", "erase"]).unwrap(),
            Route::Web(WebRoute::Erase("abc".into()))
        );
        assert!(matches!(
            route(&Method::POST, &["app.js"]),
            Err(ApiError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            route(&Method::GET, &["secret.txt"]),
            Err(ApiError::NotFound)
        ));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; wmf_session=abc; b=2"),
        );
        assert_eq!(session_cookie(&headers), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("wmf_session="));
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn the_cookie_is_secure_behind_https() {
        let mut config = Config::default();
        let plain = set_cookie(&config, "t", 60);
        assert!(!plain.to_str().unwrap().contains("Secure"));
        config.server.public_url = Some("https://find.example.com".into());
        let secure = set_cookie(&config, "t", 60);
        let text = secure.to_str().unwrap();
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(text.ends_with("; Secure"), "{text}");
    }
}
