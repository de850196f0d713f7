//! Every accepted connection starts here. Device exchanges (`POST /1/cmd/{id}`), the requests
//! that park, are read and answered by this module; the first request of any other shape hands
//! the connection to hyper for the rest of its life.
//!
//! Why: hyper keeps a read buffer and a write buffer of 8 KiB each for as long as a connection
//! lives, and neither can be made smaller. Once a connection has answered, a page of each is
//! resident: about 8 KiB per parked device, more than everything else a parked device holds
//! (docs/PERFORMANCE.md, "Memory per parked device"). Here a request is read into a buffer
//! that is freed before the exchange parks, and the answer is written from one that is freed
//! once sent, so a parked device holds its socket, this task and its exchange's state.
//!
//! The subset served here is small on purpose: HTTP/1.1; `POST` to an origin-form
//! `/1/cmd/{id}` target; a body of `Content-Length` bytes, at most `server.max_body_bytes`;
//! no `Transfer-Encoding`, `Expect` or `Upgrade`; no `Connection: close`; a head of at most
//! [`MAX_HEAD`] bytes. Anything else, malformed requests included, goes to hyper with the bytes
//! read so far, and hyper answers it as it answers every other request.
//!
//! It behaves as hyper does where the two could differ: `server.header_read_timeout_secs`
//! bounds the wait for a request (from the end of the previous answer, so it also closes idle
//! connections), a client that closes its side while its exchange is parked cancels the
//! exchange, bytes a client pipelines behind its request wait for the answer, answers carry
//! `date` and `content-length`, and `server.keep_alive = false` or a shutdown closes the
//! connection after the answer (`connection: close`).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{ConnectionGuard, Served};
use crate::service::{self, Body, Route};

/// The longest request head served here; a longer one goes to hyper, which applies its own
/// limits and answers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields in a request served here (more go to hyper).
const MAX_HEADERS: usize = 48;
/// Most bytes taken from the socket by one read: a device's request (head, Hawk header and a
/// small report) fits in one.
const READ_STEP: usize = 4096;
/// The request targets served here.
const EXCHANGE_PREFIX: &str = "/1/cmd/";

/// What every connection shares: how to hand a connection to hyper.
pub(crate) struct Handoff {
    pub builder: http1::Builder,
}

/// What reading a request gave.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per request, and moved on at once; boxing would cost an allocation"
)]
enum Read {
    /// A device exchange, and the device id from its path.
    Exchange(Request<Body>, String),
    /// Something else: hyper takes the connection with these bytes.
    Other,
    /// The client closed, the read failed, or the server is shutting down while idle.
    Closed,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
enum Sniff {
    /// Not a whole head yet.
    Partial,
    /// An exchange this module serves: head length and body length.
    Exchange { head: usize, body: usize },
    /// Anything else.
    Other,
}

/// Serves `stream` until it closes, or until its first request that is not an exchange, when
/// hyper takes it over. `watcher` holds the server's graceful shutdown open while the
/// connection lives.
///
/// This future is what a parked device's connection is, so its size counts (see
/// `docs/PERFORMANCE.md`): it is an `async` block rather than an `async fn` (whose arguments
/// would be stored twice), the reading state is boxed, and the waits poll the socket's
/// readiness directly rather than holding readiness futures.
#[allow(
    clippy::manual_async_fn,
    reason = "see above: an `async fn` stores its arguments twice"
)]
pub(crate) fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    handoff: Arc<Handoff>,
    guard: ConnectionGuard,
    watcher: Watcher,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut buf = Vec::new();
        loop {
            let answer = {
                let wait = Duration::from_secs(guard.0.config.server.header_read_timeout_secs);
                let read = tokio::time::timeout(wait, read_request(&stream, &mut buf, &guard));
                match Box::pin(read).await {
                    Ok(Read::Exchange(request, id)) => {
                        service::handle_exchange(request, guard.0.clone(), peer, id)
                    }
                    Ok(Read::Other) => {
                        return to_hyper(stream, buf, peer, &handoff, guard, watcher);
                    }
                    Ok(Read::Closed) | Err(_) => return,
                }
            };
            let Some(response) = answering(&stream, &mut buf, answer).await else {
                return;
            };
            let close = !guard.0.config.server.keep_alive || guard.0.is_shutting_down();
            if write_all(&stream, &encode(response, close)).await.is_err() || close {
                return;
            }
        }
    }
}

/// Reads until `buf` holds a whole exchange, or shows it is something else.
async fn read_request(stream: &TcpStream, buf: &mut Vec<u8>, guard: &ConnectionGuard) -> Read {
    let gateway = &guard.0;
    let max_body = gateway.config.server.max_body_bytes;
    let mut shutdown = gateway.shutdown_handle();
    loop {
        if !buf.is_empty() {
            match parse(std::mem::take(buf), max_body) {
                Parsed::Incomplete(read) => *buf = read,
                Parsed::Other(read) => {
                    *buf = read;
                    return Read::Other;
                }
                Parsed::Exchange { request, id, rest } => {
                    *buf = rest;
                    return Read::Exchange(request, id);
                }
            }
        }
        let idle = buf.is_empty();
        let more = tokio::select! {
            more = read_more(stream, buf) => more,
            _ = shutdown.wait(), if idle => return Read::Closed,
        };
        match more {
            Ok(0) | Err(_) => return Read::Closed,
            Ok(_) => {}
        }
    }
}

/// What the bytes read from a connection so far are.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per read, and taken apart at once"
)]
pub enum Parsed {
    /// The start of an exchange, or of a head: more bytes are needed. Never more than
    /// [`MAX_HEAD`] plus the body limit.
    Incomplete(Vec<u8>),
    /// Not one this path serves: hyper gets the connection with these bytes.
    Other(Vec<u8>),
    /// A whole exchange, its device id, and the bytes that followed it.
    Exchange {
        request: Request<Body>,
        id: String,
        rest: Vec<u8>,
    },
}

/// Parses the bytes read from a connection (see [`Parsed`]); bytes it does not take are given
/// back unchanged. `max_body` is `server.max_body_bytes`.
pub fn parse(read: Vec<u8>, max_body: usize) -> Parsed {
    match sniff(&read, max_body) {
        Sniff::Other => Parsed::Other(read),
        Sniff::Exchange { head, body } if read.len() >= head + body => {
            match build(read, head, body) {
                Ok((request, id, rest)) => Parsed::Exchange { request, id, rest },
                Err(read) => Parsed::Other(read),
            }
        }
        Sniff::Partial | Sniff::Exchange { .. } => Parsed::Incomplete(read),
    }
}

/// Reads what the socket has into `buf`, which grows only by what was read (an idle or parked
/// connection holds no buffer). `Ok(0)` is the end of the stream.
async fn read_more(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_more(stream, buf, cx)).await
}

fn poll_read_more(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_read_ready(cx))?;
        // Read into the stack and copy: readiness is often reported when there is nothing to
        // read, and room made in `buf` for nothing would stay allocated while the exchange
        // parks.
        let mut scratch = [0u8; READ_STEP];
        match stream.try_read(&mut scratch) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Ok(n) => {
                buf.extend_from_slice(&scratch[..n]);
                return Poll::Ready(Ok(n));
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Looks at the bytes read so far: is it a whole head, and one this module serves?
fn sniff(buf: &[u8], max_body: usize) -> Sniff {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(head)) if head <= MAX_HEAD => head,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Sniff::Partial,
        _ => return Sniff::Other,
    };
    let exchange = request.method == Some("POST")
        && request.version == Some(1)
        && request.path.is_some_and(|p| p.starts_with(EXCHANGE_PREFIX));
    if !exchange {
        return Sniff::Other;
    }
    let mut body = None;
    for field in request.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            match (body, decimal(field.value)) {
                (None, Some(n)) => body = Some(n),
                _ => return Sniff::Other,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
            || (name.eq_ignore_ascii_case("connection") && !keeps_alive(field.value))
        {
            return Sniff::Other;
        }
    }
    match body.unwrap_or(0) {
        body if body <= max_body => Sniff::Exchange { head, body },
        _ => Sniff::Other,
    }
}

/// A `Content-Length` value: ASCII digits only, as RFC 9110 has it (no sign, no spaces).
fn decimal(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 12 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Whether a `Connection` value leaves the connection open: only `keep-alive` tokens.
fn keeps_alive(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(|token| token.trim_ascii())
        .all(|token| token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive"))
}

/// Builds the request from the bytes read (head and body, sharing one allocation, the header
/// values pointing into it), and returns it with the device id and what followed the body.
/// Gives the bytes back when a field or the target is not one `http` accepts, or the path is
/// not an exchange after all: hyper answers those.
fn build(
    read: Vec<u8>,
    head: usize,
    body: usize,
) -> Result<(Request<Body>, String, Vec<u8>), Vec<u8>> {
    let rest = read[head + body..].to_vec();
    let bytes = Bytes::from(read);
    match request_of(&bytes, head, body) {
        Some((request, id)) => Ok((request, id, rest)),
        None => Err(bytes.into()),
    }
}

fn request_of(bytes: &Bytes, head: usize, body: usize) -> Option<(Request<Body>, String)> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(&bytes[..head]).ok()?;
    let target = parsed.path?;
    // Routed by the parsed URI's path, as hyper's requests are (a `#fragment` is dropped).
    let uri = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())).ok()?;
    let Ok(Route::DeviceExchange(id)) = service::route(&Method::POST, uri.path()) else {
        return None;
    };
    let mut request = Request::new(Body::new(bytes.slice(head..head + body)));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    headers.reserve(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)).ok()?;
        headers.append(name, value);
    }
    Some((request, id))
}

/// Waits for the exchange's answer while watching the socket, as hyper does: a client that
/// closes (or resets) its side cancels the exchange (`None`), and bytes it sends meanwhile are
/// kept for the next round and not read further until the answer is out.
async fn answering(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    mut answer: service::Answering,
) -> Option<Response<Body>> {
    let mut watching = buf.is_empty();
    std::future::poll_fn(|cx| {
        if let Poll::Ready(Ok(response)) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        if watching {
            match poll_read_more(stream, buf, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => watching = false,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Writes all of `bytes`, waiting for room when the socket's buffer is full.
async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        while !bytes.is_empty() {
            match stream.try_write(bytes) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(stream.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    })
    .await
}

/// The answer on the wire: status line, the handler's fields, `content-length`, `date` (unless
/// the handler set one), `connection: close` when closing, and the body.
fn encode(response: Response<Body>, close: bool) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if bodiless {
        Bytes::new()
    } else {
        full_bytes(body)
    };
    let mut out = Vec::with_capacity(160 + 48 * parts.headers.len() + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !bodiless {
        field(
            &mut out,
            b"content-length",
            body.len().to_string().as_bytes(),
        );
    }
    if close {
        field(&mut out, b"connection", b"close");
    }
    if !parts.headers.contains_key(header::DATE) {
        DATE.with_borrow_mut(|date| field(&mut out, b"date", date.now()));
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The bytes of a complete body. The handlers' bodies are `Full`: one frame, ready at once.
fn full_bytes(body: Body) -> Bytes {
    let mut body = std::pin::pin!(body);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// The `date` field's value, formatted once a second per thread.
struct DateCache {
    second: u64,
    text: [u8; 29],
}

thread_local! {
    static DATE: RefCell<DateCache> = const { RefCell::new(DateCache { second: u64::MAX, text: [0; 29] }) };
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

/// Hands the connection to hyper, with the bytes already read replayed first, on a task of
/// its own: this task's state stays as small as a parked exchange needs.
fn to_hyper(
    stream: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    handoff: &Handoff,
    guard: ConnectionGuard,
    watcher: Watcher,
) {
    let gateway = guard.0.clone();
    let io = Replay {
        read: Bytes::from(read),
        stream,
    };
    let connection = handoff.builder.serve_connection(
        TokioIo::new(io),
        service_fn(move |request| service::handle(request, gateway.clone(), peer)),
    );
    let served = Served {
        connection: watcher.watch(connection),
        _guard: guard,
    };
    tokio::spawn(served.in_current_span());
}

pin_project_lite::pin_project! {
    /// A socket whose first bytes were already read: reads give those first.
    struct Replay {
        read: Bytes,
        #[pin]
        stream: TcpStream,
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.read.is_empty() {
            return this.stream.poll_read(cx, out);
        }
        let n = this.read.len().min(out.remaining());
        out.put_slice(&this.read[..n]);
        this.read.advance(n);
        if this.read.is_empty() {
            // Free the buffer now rather than with the connection.
            *this.read = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXCHANGE: &[u8] = b"POST /1/cmd/abc?wait=30 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nAuthorization: Hawk id=\"x\"\r\n\r\n{}";

    #[test]
    fn an_exchange_is_recognised_once_its_head_is_whole() {
        let head = EXCHANGE.len() - 2;
        assert_eq!(sniff(EXCHANGE, 1024), Sniff::Exchange { head, body: 2 });
        assert_eq!(sniff(&EXCHANGE[..20], 1024), Sniff::Partial);
        assert_eq!(sniff(&EXCHANGE[..head - 1], 1024), Sniff::Partial);
    }

    #[test]
    fn every_other_shape_goes_to_hyper() {
        let cases: &[&[u8]] = &[
            b"GET /1/cmd/abc HTTP/1.1\r\n\r\n",
            b"POST /1/devices HTTP/1.1\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.0\r\n\r\n",
            b"POST http://h/1/cmd/abc HTTP/1.1\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: x\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
            b"POST /1/cmd/abc HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ];
        for case in cases {
            assert_eq!(
                sniff(case, 1024),
                Sniff::Other,
                "{}",
                String::from_utf8_lossy(case)
            );
        }
        let mut long = b"POST /1/cmd/abc HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 1, b'a');
        assert_eq!(sniff(&long, 1024), Sniff::Other);
    }

    #[test]
    fn keep_alive_and_no_body_are_served_here() {
        let request = b"POST /1/cmd/abc HTTP/1.1\r\nConnection: Keep-Alive\r\n\r\n";
        assert_eq!(
            sniff(request, 1024),
            Sniff::Exchange {
                head: request.len(),
                body: 0
            }
        );
    }

    #[test]
    fn the_request_is_built_with_its_body_and_what_followed_kept() {
        let mut read = EXCHANGE.to_vec();
        read.extend_from_slice(b"POST /1/cm");
        let head = EXCHANGE.len() - 2;
        let (request, id, rest) = build(read, head, 2).unwrap();
        assert_eq!(id, "abc");
        assert_eq!(rest, b"POST /1/cm");
        assert_eq!(request.uri().path(), "/1/cmd/abc");
        assert_eq!(request.uri().query(), Some("wait=30"));
        assert_eq!(request.headers()["authorization"], "Hawk id=\"x\"");
        assert_eq!(request.headers()["host"], "h");
        assert_eq!(full_bytes(request.into_body()), Bytes::from_static(b"{}"));
    }

    #[test]
    fn the_device_id_is_taken_from_the_path_as_hyper_parses_it() {
        // Found by the `exchange_request` fuzz target: the id was taken from the raw target.
        let read = b"POST /1/cmd/abc#frag?wait=3 HTTP/1.1\r\n\r\n".to_vec();
        let len = read.len();
        let (request, id, _) = build(read, len, 0).unwrap();
        assert_eq!((id.as_str(), request.uri().path()), ("abc", "/1/cmd/abc"));
    }

    #[test]
    fn a_path_that_is_not_an_exchange_after_all_is_given_back() {
        let read = b"POST /1/cmd/abc/more HTTP/1.1\r\n\r\n".to_vec();
        let len = read.len();
        assert_eq!(build(read.clone(), len, 0).unwrap_err(), read);
    }

    #[test]
    fn the_answer_carries_length_and_date_and_close_when_asked() {
        let mut response = service::json_response(StatusCode::OK, &serde_json::json!({"a": 1}));
        response.headers_mut().insert(
            "server-authorization",
            HeaderValue::from_static("Hawk mac=\"m\""),
        );
        let text = String::from_utf8(encode(response, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-length: 7\r\n"), "{text}");
        assert!(
            text.contains("\r\nserver-authorization: Hawk mac=\"m\"\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(
            text.contains("\r\ndate: ") && text.contains(" GMT\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"), "{text}");
        let empty = encode(service::empty_response(StatusCode::NO_CONTENT), false);
        let empty = String::from_utf8(empty).unwrap();
        assert!(
            !empty.contains("content-length") && empty.ends_with("\r\n\r\n"),
            "{empty}"
        );
    }
}
