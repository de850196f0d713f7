//! The request router: method and path to a `Route`, 404 or 405.
//!
//! Input: a method token, a space, then the path. Properties: nothing panics; a routed device
//! id is never empty and never holds a `/`.

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use wheresmyfox::service::{Route, route};

fuzz_target!(|data: &[u8]| {
    let (method, path) = match data.iter().position(|&b| b == b' ') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"GET"[..], data),
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    // hyper only hands the service a path that is a valid URI path, which is ASCII.
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    let id = match route(&method, path) {
        Ok(
            Route::DeviceExchange(id)
            | Route::GetDevice(id)
            | Route::RenameDevice(id)
            | Route::ForgetDevice(id)
            | Route::QueueCommand(id)
            | Route::Events(id),
        ) => id,
        Ok(_) | Err(_) => return,
    };
    assert!(
        !id.is_empty() && !id.contains('/'),
        "{path:?} routed {id:?}"
    );
});
