//! The exchange path's request reader (`server::conn::parse`): the bytes a connection starts
//! with, to a whole device exchange, "read more", or "hyper's".
//!
//! Input: anything. Properties: nothing panics; bytes not taken are given back unchanged; an
//! incomplete read never grows past a head and a body at their limits; a parsed exchange is a
//! `POST` to `/1/cmd/{id}` (an id without `/`), its body and the bytes after it are the end of
//! the input, in order, and its body is no longer than the limit.

#![no_main]

use http::Method;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use wheresmyfox::server::conn::{MAX_HEAD, Parsed, parse};

/// A small body limit, so that the fuzzer reaches it.
const MAX_BODY: usize = 64;

fuzz_target!(|data: &[u8]| {
    match parse(data.to_vec(), MAX_BODY) {
        Parsed::Incomplete(read) => {
            assert_eq!(read, data);
            assert!(read.len() < MAX_HEAD + MAX_BODY, "{} bytes", read.len());
        }
        Parsed::Other(read) => assert_eq!(read, data),
        Parsed::Exchange { request, id, rest } => {
            assert_eq!(request.method(), Method::POST);
            assert_eq!(request.uri().path(), format!("/1/cmd/{id}"));
            assert!(!id.is_empty() && !id.contains('/'), "{id:?}");
            let body = body_bytes(request.into_body());
            assert!(body.len() <= MAX_BODY);
            assert!(data.ends_with(&rest));
            let before_rest = &data[..data.len() - rest.len()];
            assert!(before_rest.ends_with(&body), "{body:?}");
            assert!(before_rest.len() - body.len() <= MAX_HEAD);
        }
    }
});

/// The bytes of a `Full` body, which is ready at once.
fn body_bytes(body: http_body_util::Full<bytes::Bytes>) -> bytes::Bytes {
    let mut collect = std::pin::pin!(body.collect());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match collect.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Ok(collected)) => collected.to_bytes(),
        _ => unreachable!("a Full body is ready at once"),
    }
}
