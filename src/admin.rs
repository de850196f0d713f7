//! Operator commands that act on a running server through its admin socket.
//!
//! The server listens on `<data_dir>/admin.sock`, a Unix socket only its own user can open
//! (mode 0600). `wheresmyfox user add` speaks HTTP over it, so accounts can be created while
//! sign-up is closed, without a restart and without any network exposure.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{Gateway, Shutdown};
use crate::service::{self, Body};

/// The admin socket's path for a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.sock")
}

/// Binds the admin socket, replacing a stale one left by a crashed server.
pub fn bind(data_dir: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = socket_path(data_dir);
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves admin requests until shutdown.
pub async fn serve(listener: UnixListener, gateway: Arc<Gateway>, mut shutdown: Shutdown) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!(%error, "admin socket accept failed");
                    continue;
                }
            },
            _ = shutdown.wait() => return,
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| handle(request, gateway.clone()));
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(
    request: Request<hyper::body::Incoming>,
    gateway: Arc<Gateway>,
) -> Result<http::Response<Body>, std::convert::Infallible> {
    let result = async {
        if request.uri().path() != "/admin/users" {
            return Err(ApiError::NotFound);
        }
        if request.method() != Method::POST {
            return Err(ApiError::MethodNotAllowed { allow: "POST" });
        }
        let body = request
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::InvalidJson(e.to_string()))?
            .to_bytes();
        let body: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        let email = body["email"].as_str().unwrap_or_default();
        let password = body["password"].as_str().unwrap_or_default();
        let user = gateway
            .accounts
            .create(email, password, &gateway.journal)
            .await?;
        Ok(service::json_response(
            StatusCode::CREATED,
            &json!({ "userid": user }),
        ))
    }
    .await;
    Ok(result.unwrap_or_else(|error| service::error_response(&error)))
}

/// Creates an account on the server that owns `config.server.data_dir`.
pub async fn add_user(config: &Config, email: &str, password: &str) -> anyhow::Result<String> {
    let path = socket_path(&config.server.data_dir);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error) => bail!(
            "cannot reach a running server through {} ({error}); start the server with the same \
             data directory first",
            path.display()
        ),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("admin socket handshake")?;
    tokio::spawn(connection);
    let body = serde_json::to_vec(&json!({ "email": email, "password": password }))?;
    let request = Request::post("/admin/users")
        .header(http::header::HOST, "admin")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender
        .send_request(request)
        .await
        .context("admin request")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != StatusCode::CREATED {
        bail!(
            "{}",
            body["message"].as_str().unwrap_or("the server refused")
        );
    }
    Ok(body["userid"].as_str().unwrap_or_default().to_owned())
}
