//! `Oidc`: owners (and their devices) signed in by an OpenID Connect provider, such as
//! Firefox Accounts, instead of a local password.
//!
//! - A bearer token that is not one of ours is taken as a JWT from the provider: RS256 or
//!   ES256 only (the key's type must match the algorithm, so no algorithm confusion), signed
//!   by a key of the provider's JWKS, with `iss`, `aud`, `exp` (and `nbf`) checked; `sub` is
//!   the user, mapped to an owner account created on first use.
//! - The JWKS comes from a file or a URL and is cached. A token naming an unknown `kid` makes
//!   us fetch it again (the provider rotated its keys), at most once per
//!   `oidc.jwks_refetch_secs`, so a flood of made-up `kid`s cannot turn us into a flood of
//!   requests to the provider.
//! - The web page's "Sign in with …" is the authorization code flow with PKCE (S256), `state`
//!   (bound to the browser by a short-lived cookie) and `nonce` (checked in the ID token).
//!   Pending logins are bounded and expire after ten minutes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use dashmap::DashMap;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rand::RngCore;
use ring::digest::{SHA256, digest};
use ring::signature;
use serde_json::Value;
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::config::OidcConfig;
use crate::error::ApiError;
use crate::ids::UserId;

/// Largest JWKS or token answer read from the provider.
const MAX_PROVIDER_ANSWER: usize = 256 * 1024;
/// How long a provider request may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most logins waiting for the provider at once (each holds a few hundred bytes).
const MAX_PENDING_LOGINS: usize = 10_000;
/// How long a login may wait for the provider's redirect back.
pub const LOGIN_TTL_MS: u64 = 10 * 60 * 1000;

/// The identity provider, as configured.
#[derive(Debug)]
pub struct Oidc {
    pub config: OidcConfig,
    /// `kid` → key, from the last JWKS fetched.
    keys: RwLock<HashMap<String, PublicKey>>,
    /// When the JWKS was last fetched (or tried); one fetch at a time.
    fetched: tokio::sync::Mutex<Option<Instant>>,
    /// `state` → a login waiting for the provider's redirect back.
    pending: DashMap<String, PendingLogin>,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed P-256 point (0x04 ‖ x ‖ y).
    P256 {
        point: Vec<u8>,
    },
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub email: Option<String>,
    pub nonce: Option<String>,
    /// When the user last signed in at the provider (Unix seconds), if it says.
    pub auth_time: Option<u64>,
}

#[derive(Debug, Clone)]
struct PendingLogin {
    verifier: String,
    nonce: String,
    created_ms: u64,
    purpose: LoginPurpose,
}

/// Why the browser is sent to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginPurpose {
    /// To sign in to the page.
    SignIn,
    /// To prove, by signing in again at the provider right now, that the owner of this
    /// session wants this device erased (the step-up of accounts without a password).
    Erase { user: UserId, device: String },
}

/// How long before the ID token's `auth_time` an erase step-up may have signed in.
pub const STEP_UP_MAX_AGE_SECS: u64 = 300;

/// A login just started: where to send the browser, and the state to bind to it.
#[derive(Debug, Clone)]
pub struct StartedLogin {
    pub redirect: String,
    pub state: String,
}

// === Oidc ===

impl Oidc {
    /// `None` when no provider is configured.
    pub fn new(config: &OidcConfig) -> Option<Arc<Oidc>> {
        if config.issuer.is_empty() {
            return None;
        }
        Some(Arc::new(Oidc {
            config: config.clone(),
            keys: RwLock::new(HashMap::new()),
            fetched: tokio::sync::Mutex::new(None),
            pending: DashMap::new(),
        }))
    }

    /// Whether the web page can offer "Sign in with …".
    pub fn offers_login(&self) -> bool {
        !self.config.authorization_endpoint.is_empty()
            && !self.config.token_endpoint.is_empty()
            && !self.config.client_id.is_empty()
    }

    /// Verifies a JWT from the provider; `nonce`, when given, must match its `nonce` claim.
    pub async fn verify(&self, token: &str, nonce: Option<&str>) -> Result<Claims, ApiError> {
        let bad = |reason: &str| ApiError::OidcToken(reason.to_owned());
        let mut parts = token.split('.');
        let (Some(head), Some(body), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a JWT"));
        };
        let header: Value = decode_json(head).ok_or_else(|| bad("the header is not valid"))?;
        let alg = header["alg"].as_str().unwrap_or("");
        if alg != "RS256" && alg != "ES256" {
            return Err(bad("the algorithm must be RS256 or ES256"));
        }
        let kid = header["kid"].as_str().unwrap_or("").to_owned();
        let signature = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| bad("the signature is not base64url"))?;
        let key = match self.key(&kid) {
            Some(key) => key,
            None => {
                self.refetch().await?;
                self.key(&kid)
                    .ok_or_else(|| bad("signed by a key the provider does not list"))?
            }
        };
        let signed = &token.as_bytes()[..head.len() + 1 + body.len()];
        let valid = match (alg, &key) {
            ("RS256", PublicKey::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &signature)
                .is_ok(),
            ("ES256", PublicKey::P256 { point }) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signed, &signature)
                    .is_ok()
            }
            _ => return Err(bad("the algorithm does not match the key's type")),
        };
        if !valid {
            return Err(bad("the signature does not verify"));
        }
        let claims: Value = decode_json(body).ok_or_else(|| bad("the claims are not valid"))?;
        self.check_claims(&claims, nonce)
    }

    fn check_claims(&self, claims: &Value, nonce: Option<&str>) -> Result<Claims, ApiError> {
        let bad = |reason: &str| ApiError::OidcToken(reason.to_owned());
        if claims["iss"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(bad("issued by another issuer"));
        }
        let audience = self.config.audience.as_str();
        let for_us = match &claims["aud"] {
            Value::String(aud) => aud == audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !for_us {
            return Err(bad("issued for another audience"));
        }
        let now = now_ms() / 1000;
        let leeway = self.config.leeway_secs;
        let exp = claims["exp"]
            .as_u64()
            .ok_or_else(|| bad("it has no expiry"))?;
        if exp.saturating_add(leeway) <= now {
            return Err(bad("it has expired"));
        }
        if let Some(nbf) = claims["nbf"].as_u64()
            && nbf > now.saturating_add(leeway)
        {
            return Err(bad("it is not valid yet"));
        }
        let sub = claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty() && s.len() <= 255)
            .ok_or_else(|| bad("it names no subject"))?;
        let claimed_nonce = claims["nonce"].as_str().map(str::to_owned);
        if let Some(expected) = nonce {
            let matches = match claimed_nonce.as_deref() {
                Some(claimed) => claimed == expected,
                // Some providers do not echo the nonce; the PKCE verifier still binds the
                // code to this sign-in.
                None => !self.config.require_nonce,
            };
            if !matches {
                return Err(bad("the nonce does not match this sign-in"));
            }
        }
        Ok(Claims {
            sub: sub.to_owned(),
            email: claims["email"].as_str().map(str::to_owned),
            nonce: claimed_nonce,
            auth_time: claims["auth_time"].as_u64(),
        })
    }

    /// The account key of a subject: issuer and `sub` together, so two providers (or a
    /// changed issuer) never share an account by accident.
    pub fn subject_key(&self, sub: &str) -> String {
        format!("{} {sub}", self.config.issuer)
    }

    fn key(&self, kid: &str) -> Option<PublicKey> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        match keys.get(kid) {
            Some(key) => Some(key.clone()),
            // A token without `kid` is accepted only when the set holds exactly one key.
            None if kid.is_empty() && keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// Fetches the JWKS again, unless it was fetched within `jwks_refetch_secs`.
    async fn refetch(&self) -> Result<(), ApiError> {
        let mut fetched = self.fetched.lock().await;
        let every = Duration::from_secs(self.config.jwks_refetch_secs);
        if fetched.is_some_and(|at| at.elapsed() < every) {
            return Ok(());
        }
        *fetched = Some(Instant::now());
        let text = if !self.config.jwks_file.is_empty() {
            tokio::fs::read(&self.config.jwks_file)
                .await
                .map(Bytes::from)
                .map_err(|e| format!("cannot read {}: {e}", self.config.jwks_file))
        } else {
            fetch(Method::GET, &self.config.jwks_url, None)
                .await
                .and_then(|(status, body)| {
                    if status == StatusCode::OK {
                        Ok(body)
                    } else {
                        Err(format!("the JWKS URL answered {status}"))
                    }
                })
        };
        let keys = text.and_then(|bytes| parse_jwks(&bytes)).map_err(|e| {
            warn!(error = %e, "identity provider keys unavailable");
            ApiError::OidcUnavailable
        })?;
        info!(keys = keys.len(), "identity provider keys loaded");
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(())
    }

    // --- The authorization code flow ---

    /// Starts a login: the provider URL to send the browser to, with PKCE, state and nonce.
    pub fn start_login(
        &self,
        redirect_uri: &str,
        purpose: LoginPurpose,
    ) -> Result<StartedLogin, ApiError> {
        let now = now_ms();
        if self.pending.len() >= MAX_PENDING_LOGINS {
            self.pending
                .retain(|_, p| now.saturating_sub(p.created_ms) < LOGIN_TTL_MS);
            if self.pending.len() >= MAX_PENDING_LOGINS {
                return Err(ApiError::RateLimited {
                    retry_after_secs: 60,
                });
            }
        }
        let (state, nonce, verifier) = (random_text(), random_text(), random_text());
        let challenge = URL_SAFE_NO_PAD.encode(digest(&SHA256, verifier.as_bytes()));
        let config = &self.config;
        let separator = if config.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        // An erase asks the provider to authenticate the user again, whatever session it has.
        let fresh = match purpose {
            LoginPurpose::SignIn => "",
            LoginPurpose::Erase { .. } => "&prompt=login&max_age=0",
        };
        let redirect = format!(
            "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={state}&nonce={nonce}&code_challenge={challenge}&code_challenge_method=S256{fresh}",
            config.authorization_endpoint,
            encode(&config.client_id),
            encode(redirect_uri),
            encode(&config.scope),
        );
        self.pending.insert(
            state.clone(),
            PendingLogin {
                verifier,
                nonce,
                created_ms: now,
                purpose,
            },
        );
        Ok(StartedLogin { redirect, state })
    }

    /// Finishes a login: trades the code for tokens and verifies the ID token.
    pub async fn finish_login(
        &self,
        state: &str,
        code: &str,
        redirect_uri: &str,
    ) -> Result<(Claims, LoginPurpose), ApiError> {
        let failed = |reason: &str| ApiError::OidcLogin(reason.to_owned());
        let (_, pending) = self
            .pending
            .remove(state)
            .ok_or_else(|| failed("this sign-in is unknown or was already used: start again"))?;
        if now_ms().saturating_sub(pending.created_ms) >= LOGIN_TTL_MS {
            return Err(failed("this sign-in took too long: start again"));
        }
        let config = &self.config;
        let mut form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}&client_id={}&code_verifier={}",
            encode(code),
            encode(redirect_uri),
            encode(&config.client_id),
            encode(&pending.verifier),
        );
        if !config.client_secret.is_empty() {
            form.push_str(&format!("&client_secret={}", encode(&config.client_secret)));
        }
        let (status, body) = fetch(Method::POST, &config.token_endpoint, Some(form))
            .await
            .map_err(|e| {
                warn!(error = %e, "token endpoint unreachable");
                ApiError::OidcUnavailable
            })?;
        if status != StatusCode::OK {
            warn!(%status, "token endpoint refused the code");
            return Err(failed("the provider refused the sign-in"));
        }
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|_| failed("the provider's answer is not JSON"))?;
        let id_token = answer["id_token"]
            .as_str()
            .ok_or_else(|| failed("the provider sent no ID token"))?;
        let claims = self.verify(id_token, Some(&pending.nonce)).await?;
        Ok((claims, pending.purpose))
    }
}

/// Parses a JWKS document into `kid` → key; keys for other uses or curves are skipped.
fn parse_jwks(bytes: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let document: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let list = document["keys"]
        .as_array()
        .ok_or("the JWKS has no \"keys\" array")?;
    let b64 = |v: &Value| v.as_str().and_then(|s| URL_SAFE_NO_PAD.decode(s).ok());
    let mut keys = HashMap::new();
    for jwk in list {
        if jwk["use"].as_str().is_some_and(|u| u != "sig") {
            continue;
        }
        let kid = jwk["kid"].as_str().unwrap_or("").to_owned();
        let key = match jwk["kty"].as_str() {
            Some("RSA") => match (b64(&jwk["n"]), b64(&jwk["e"])) {
                (Some(n), Some(e)) => PublicKey::Rsa { n, e },
                _ => continue,
            },
            Some("EC") if jwk["crv"] == "P-256" => match (b64(&jwk["x"]), b64(&jwk["y"])) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let mut point = vec![4u8];
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::P256 { point }
                }
                _ => continue,
            },
            _ => continue,
        };
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err("the JWKS holds no RS256 or ES256 signing key".into());
    }
    Ok(keys)
}

fn decode_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn random_text() -> String {
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Percent-encodes for a query string or form body.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Decodes a percent-encoded query value (`+` is a space).
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// One request to the provider over http or https (a form body when given), with a deadline
/// and a size cap on the answer.
async fn fetch(
    method: Method,
    url: &str,
    form: Option<String>,
) -> Result<(StatusCode, Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("bad URL {url}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("not an http(s) URL: {url}")),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("wheresmyfox/", env!("CARGO_PKG_VERSION")),
        );
    let body = match form {
        Some(form) => {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Bytes::from(form)
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        if https {
            let tls = tls_connector()
                .connect(
                    tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| e.to_string())?,
                    tcp,
                )
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            send(tls, request).await
        } else {
            send(tcp, request).await
        }
    };
    tokio::time::timeout(PROVIDER_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url} did not answer in time"))?
}

async fn send<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends with the request: nothing is kept alive.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_PROVIDER_ANSWER)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
    .unwrap_or_else(|_| {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 with ring is always available")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    });
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        let text = "http://127.0.0.1:8080/1/oidc/callback?x=1 2&y=é";
        assert_eq!(decode(&encode(text)).as_deref(), Some(text));
        assert_eq!(decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(decode("%zz"), None);
    }

    #[test]
    fn a_jwks_without_usable_keys_is_refused() {
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#).is_err());
        assert!(parse_jwks(b"nope").is_err());
        let keys = parse_jwks(
            br#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"},{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.len(), 1, "encryption keys are skipped");
    }
}
