//! Operator endpoints: Dockerflow's `/__heartbeat__` and `/__version__`, and `/metrics`.

use std::sync::atomic::Ordering::Relaxed;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use super::{Body, bytes_response, json_response};
use crate::gateway::Gateway;
use crate::metrics;

/// `GET /__heartbeat__`: whether this instance can do its work. It checks the store (the
/// journal still accepts writes, the data directory is there), so a load balancer or
/// orchestrator can take out an instance that answers but cannot save anything: 500 then.
pub fn heartbeat(gateway: &Gateway) -> Response<Body> {
    let journal_ok = !gateway.journal.has_failed();
    let data_dir_ok = gateway.config.server.data_dir.is_dir();
    let check = |ok: bool| if ok { "ok" } else { "error" };
    let (code, status) = if !journal_ok || !data_dir_ok {
        (StatusCode::INTERNAL_SERVER_ERROR, "error")
    } else if gateway.is_shutting_down() {
        (StatusCode::OK, "stopping")
    } else {
        (StatusCode::OK, "ok")
    };
    json_response(
        code,
        &json!({
            "status": status,
            "checks": { "journal": check(journal_ok), "data_dir": check(data_dir_ok) },
            "version": env!("CARGO_PKG_VERSION"),
            "devices": gateway.registry.len(),
            "parked": gateway.stats.parked.load(Relaxed),
            "connections": gateway.stats.connections.load(Relaxed),
        }),
    )
}

/// `GET /__version__`: what is running, recorded at build time (see `build.rs`).
pub fn version() -> Response<Body> {
    json_response(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "commit": env!("WHERESMYFOX_COMMIT"),
            "source": env!("WHERESMYFOX_SOURCE"),
            "build": env!("WHERESMYFOX_BUILD"),
        }),
    )
}

/// `GET /metrics`: the Prometheus text format.
pub fn metrics(gateway: &Gateway) -> Response<Body> {
    let mut response = bytes_response(StatusCode::OK, metrics::render(gateway).into());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(metrics::CONTENT_TYPE),
    );
    response
}
