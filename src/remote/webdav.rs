//! A WebDAV backend: the user's ownCloud, Nextcloud or any RFC 4918 server.
//!
//! Everything goes through [`Outbound`], so a linked URL gets the same guard as a push URL:
//! https only (unless the operator allows http), no internal addresses unless listed, no
//! redirects followed, a deadline on every exchange and a cap on every answer.
//!
//! Layout under the linked folder (see docs/storage.md):
//! ```text
//! <linked folder>/wheresmyfox/
//!     records/<collection>/<id>.<sha256>   one record's payload (client ciphertext)
//!     blobs/<blob id>/<chunk index>        one chunk of a blob (client ciphertext)
//! ```
//! Only `PROPFIND` (checking a link), `MKCOL`, `PUT`, `GET` and `DELETE` are used, which every
//! WebDAV server speaks. Folders are made on demand: a `PUT` answered 409 (no parent folder)
//! makes them, then goes again.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use zeroize::Zeroizing;

use super::link::Credentials;
use super::{BoxFuture, ObjectStore, RemoteError, RemoteStats};
use crate::outbound::{Outbound, OutboundError, OutboundRequest, OutboundResponse};

/// The folder the gateway keeps its files in, inside the linked one.
pub const ROOT_FOLDER: &str = "wheresmyfox/";

/// The file written, read back and removed to check a link.
const PROBE: &str = ".wheresmyfox-link-check";

/// A linked WebDAV folder, with the credentials to reach it.
pub struct WebDav {
    /// The linked folder's URL, ending in `/`.
    base: String,
    /// `Basic …`: wiped from memory when this is dropped.
    authorization: Zeroizing<String>,
    outbound: Outbound,
    /// Largest answer read (a record's payload or a blob chunk, and some slack).
    max_body: usize,
    stats: std::sync::Arc<RemoteStats>,
}

impl std::fmt::Debug for WebDav {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebDav").field("base", &self.base).finish()
    }
}

/// A linked folder's URL as stored: `http(s)://host[:port]/path/` with the trailing slash, no
/// query, fragment or user info (credentials go in the sealed part only).
pub fn normalize_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let uri: http::Uri = url.parse().map_err(|_| "is not a URL".to_owned())?;
    match uri.scheme_str() {
        Some("https") | Some("http") => {}
        _ => return Err("must be an https:// URL".to_owned()),
    }
    let authority = uri.authority().ok_or("has no host")?;
    if authority.as_str().contains('@') {
        return Err("must not hold a user name or password: send them as fields".to_owned());
    }
    if uri.query().is_some() || url.contains('#') {
        return Err("must not have a query or fragment".to_owned());
    }
    let mut text = format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        authority,
        uri.path()
    );
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok(text)
}

impl WebDav {
    /// A client for the folder at `base` (as [`normalize_url`] leaves it).
    pub fn new(
        base: &str,
        credentials: &Credentials,
        outbound: Outbound,
        max_body: usize,
        stats: std::sync::Arc<RemoteStats>,
    ) -> WebDav {
        let pair = Zeroizing::new(format!(
            "{}:{}",
            credentials.username.as_str(),
            credentials.password.as_str()
        ));
        let authorization = Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())));
        WebDav {
            base: base.to_owned(),
            authorization,
            outbound,
            max_body,
            stats,
        }
    }

    fn url(&self, key: &str) -> String {
        format!("{}{ROOT_FOLDER}{key}", self.base)
    }

    /// One exchange, counted for `/metrics`.
    async fn send(
        &self,
        method: Method,
        url: String,
        extra: &[(HeaderName, &'static str)],
        body: Bytes,
    ) -> Result<OutboundResponse, RemoteError> {
        let started = std::time::Instant::now();
        let result = self.exchange(method, url, extra, body).await;
        let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
        self.stats.record(&outcome, started.elapsed());
        result
    }

    async fn exchange(
        &self,
        method: Method,
        url: String,
        extra: &[(HeaderName, &'static str)],
        body: Bytes,
    ) -> Result<OutboundResponse, RemoteError> {
        let mut authorization =
            HeaderValue::from_str(&self.authorization).map_err(|_| RemoteError::Credentials)?;
        authorization.set_sensitive(true);
        let mut headers = vec![(header::AUTHORIZATION, authorization)];
        for (name, value) in extra {
            headers.push((name.clone(), HeaderValue::from_static(value)));
        }
        let request = OutboundRequest {
            method,
            url,
            headers,
            body,
        };
        let response = self
            .outbound
            .send_limited(&request, self.max_body)
            .await
            .map_err(|error| match error {
                OutboundError::Refused(reason) => RemoteError::Refused(reason),
                other => RemoteError::Unavailable(other.to_string()),
            })?;
        match response.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RemoteError::Credentials),
            StatusCode::INSUFFICIENT_STORAGE => Err(RemoteError::Full),
            status if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => Err(
                RemoteError::Unavailable(format!("{} answered {status}", request.method)),
            ),
            _ => Ok(response),
        }
    }

    /// Makes a folder; one that exists already is fine.
    async fn mkcol(&self, url: String) -> Result<(), RemoteError> {
        let response = self.send(mkcol_method(), url, &[], Bytes::new()).await?;
        match response.status {
            // 405: the folder exists (RFC 4918 §9.3.1).
            s if s.is_success() || s == StatusCode::METHOD_NOT_ALLOWED => Ok(()),
            s => Err(RemoteError::Unexpected(format!("MKCOL answered {s}"))),
        }
    }

    /// Makes every folder on the way to `key`, from the gateway's own folder down.
    async fn make_folders(&self, key: &str) -> Result<(), RemoteError> {
        let mut path = String::new();
        self.mkcol(format!("{}{ROOT_FOLDER}", self.base)).await?;
        let folders: Vec<&str> = key.split('/').collect();
        for folder in &folders[..folders.len().saturating_sub(1)] {
            path.push_str(folder);
            path.push('/');
            self.mkcol(self.url(&path)).await?;
        }
        Ok(())
    }

    async fn put_once(&self, key: &str, data: Bytes) -> Result<StatusCode, RemoteError> {
        let extra = [(header::CONTENT_TYPE, "application/octet-stream")];
        Ok(self
            .send(Method::PUT, self.url(key), &extra, data)
            .await?
            .status)
    }

    /// Checks that the folder is a WebDAV collection we may write to: `PROPFIND` it, make our
    /// own folder, then write, read back and remove a small file.
    pub async fn check(&self) -> Result<(), RemoteError> {
        let propfind = self
            .send(
                Method::from_bytes(b"PROPFIND").expect("a valid method"),
                self.base.clone(),
                &[
                    (HeaderName::from_static("depth"), "0"),
                    (header::CONTENT_TYPE, "application/xml"),
                ],
                Bytes::from_static(
                    b"<?xml version=\"1.0\"?><d:propfind xmlns:d=\"DAV:\"><d:prop><d:resourcetype/></d:prop></d:propfind>",
                ),
            )
            .await?;
        match propfind.status {
            StatusCode::MULTI_STATUS => {}
            StatusCode::NOT_FOUND => {
                return Err(RemoteError::Unexpected(
                    "there is no folder at this URL".to_owned(),
                ));
            }
            s => {
                return Err(RemoteError::Unexpected(format!(
                    "PROPFIND answered {s}: this URL is not a WebDAV folder"
                )));
            }
        }
        let probe = Bytes::from_static(b"wheresmyfox can write here\n");
        self.put(PROBE, probe.clone()).await?;
        let read = self.get(PROBE).await?;
        self.delete(PROBE).await?;
        if read.as_ref() != Some(&probe) {
            return Err(RemoteError::Unexpected(
                "a file written there did not read back the same".to_owned(),
            ));
        }
        Ok(())
    }
}

fn mkcol_method() -> Method {
    Method::from_bytes(b"MKCOL").expect("a valid method")
}

impl ObjectStore for WebDav {
    fn put<'a>(&'a self, key: &'a str, data: Bytes) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            let mut status = self.put_once(key, data.clone()).await?;
            // 409: a folder on the way is missing (RFC 4918 §9.7.1). Nextcloud says 404.
            if status == StatusCode::CONFLICT || status == StatusCode::NOT_FOUND {
                self.make_folders(key).await?;
                status = self.put_once(key, data).await?;
            }
            if status.is_success() {
                Ok(())
            } else {
                Err(RemoteError::Unexpected(format!("PUT answered {status}")))
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, RemoteError>> {
        Box::pin(async move {
            let response = self
                .send(Method::GET, self.url(key), &[], Bytes::new())
                .await?;
            match response.status {
                StatusCode::OK if response.complete => Ok(Some(response.body)),
                StatusCode::OK if response.truncated => Err(RemoteError::Corrupt(format!(
                    "{key} is larger than anything stored there"
                ))),
                StatusCode::OK => Err(RemoteError::Unavailable(format!(
                    "reading {key} was cut short"
                ))),
                StatusCode::NOT_FOUND | StatusCode::GONE => Ok(None),
                s => Err(RemoteError::Unexpected(format!("GET answered {s}"))),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), RemoteError>> {
        Box::pin(async move {
            let response = self
                .send(Method::DELETE, self.url(key), &[], Bytes::new())
                .await?;
            match response.status {
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
                s => Err(RemoteError::Unexpected(format!("DELETE answered {s}"))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_urls_are_normalized_and_checked() {
        assert_eq!(
            normalize_url("https://cloud.example/remote.php/dav/files/ada").unwrap(),
            "https://cloud.example/remote.php/dav/files/ada/"
        );
        assert_eq!(
            normalize_url(" http://127.0.0.1:8080/ ").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert!(normalize_url("ftp://cloud.example/").is_err());
        assert!(normalize_url("https://ada:pw@cloud.example/").is_err());
        assert!(normalize_url("https://cloud.example/?x=1").is_err());
        assert!(normalize_url("cloud.example/dav").is_err());
    }
}
