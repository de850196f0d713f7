//! The same load against nginx + Nchan, the long-poll server an operator would pick instead.
//!
//! Each simulated device is a Nchan long-poll subscriber on its own channel (`/sub/{channel}`);
//! a command is a message published to that channel (`POST /pub/{channel}`), carrying the same
//! marker as a gateway command. Nchan's long-poll subscribers follow the message stream with
//! `If-Modified-Since` / `If-None-Match` taken from the last message's `Last-Modified` and
//! `Etag`, so a message published while a subscriber is between polls is not missed.
//!
//! What Nchan does not do, and the gateway does: authenticate the subscriber (Hawk), sign the
//! answer, validate the command, journal it durably before answering the publisher, and keep it
//! pending until the device acknowledges it. Nchan has no acknowledgement: a message counts
//! as acknowledged when it is received. The config it runs with is `loadtest/nchan/nginx.conf`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, header};
use rand::Rng;
use tokio::sync::watch;

use wheresmyfox::client::HttpClient;

use crate::{Shared, error_kind};

/// The channel a device index subscribes to.
pub fn channel(index: usize) -> String {
    format!("lt{index}")
}

/// Subscribers Nchan holds right now, from its `nchan_stub_status` page.
pub async fn parked(http: &mut HttpClient) -> Option<u64> {
    let reply = http
        .send(
            Method::GET,
            "/nchan_status",
            &[],
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&reply.body);
    text.lines()
        .find_map(|line| line.strip_prefix("subscribers:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Publishes one marker to a channel; `Ok` once Nchan has taken it.
pub async fn publish(http: &mut HttpClient, channel: &str, marker: u64) -> Result<(), String> {
    let reply = http
        .send(
            Method::POST,
            &format!("/pub/{channel}"),
            &[(header::CONTENT_TYPE, "text/plain".to_owned())],
            Bytes::from(format!("lt {marker}")),
            Duration::from_secs(30),
        )
        .await
        .map_err(|e| format!("publisher {}", error_kind(&e)))?;
    // 201: the message was stored and there were no subscribers; 202: it was delivered.
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("publisher http {}", reply.status.as_u16()))
    }
}

/// One subscriber: long-poll, note markers, poll again from the last message seen; reconnect
/// with backoff on errors. `cut_share` and the storm signal work as for gateway devices.
pub async fn run_subscriber(
    mut http: HttpClient,
    channel: String,
    cut_share: f64,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut storm: watch::Receiver<u64>,
) {
    let path = format!("/sub/{channel}");
    // Where in the channel's message stream this subscriber is.
    let mut since: Option<(HeaderValue, HeaderValue)> = None;
    let mut backoff = Duration::from_millis(100);
    let mut storm_seen = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let storm_now = *storm.borrow_and_update();
        if storm_now != storm_seen {
            storm_seen = storm_now;
            shared.repolled.fetch_add(1, Ordering::Relaxed);
        }
        let mut headers = Vec::new();
        if let Some((modified, etag)) = &since {
            headers.push((
                header::IF_MODIFIED_SINCE,
                modified.to_str().unwrap_or_default().to_owned(),
            ));
            headers.push((
                header::IF_NONE_MATCH,
                etag.to_str().unwrap_or_default().to_owned(),
            ));
        }
        let cut_after = (cut_share > 0.0 && rand::thread_rng().gen_bool(cut_share.min(1.0)))
            .then(|| Duration::from_micros(rand::thread_rng().gen_range(0..20_000)));
        shared.in_poll.fetch_add(1, Ordering::Relaxed);
        let outcome = tokio::select! {
            result = http.send(Method::GET, &path, &headers, Bytes::new(), Duration::from_secs(120)) => Some(result),
            _ = async { match cut_after { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => None,
            _ = storm.changed() => None,
            _ = stop.changed() => None,
        };
        shared.in_poll.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            None => {
                http.disconnect();
                if cut_after.is_some() {
                    shared.error("cut on purpose (flaky link)");
                }
            }
            Some(Ok(reply)) if reply.status == StatusCode::OK => {
                backoff = Duration::from_millis(100);
                shared.polls.fetch_add(1, Ordering::Relaxed);
                let text = String::from_utf8_lossy(&reply.body);
                if let Some(marker) = text.strip_prefix("lt ").and_then(|m| m.trim().parse().ok()) {
                    shared.receive(marker);
                    shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                if let (Some(modified), Some(etag)) = (
                    reply.headers.get(header::LAST_MODIFIED),
                    reply.headers.get(header::ETAG),
                ) {
                    since = Some((modified.clone(), etag.clone()));
                }
            }
            // The long poll ran out with no message (Nchan answers 304 or 408): poll again.
            Some(Ok(reply))
                if reply.status == StatusCode::NOT_MODIFIED
                    || reply.status == StatusCode::REQUEST_TIMEOUT =>
            {
                shared.polls.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(reply)) => {
                shared.error(format!("subscriber http {}", reply.status.as_u16()));
                backoff = pause(backoff, &mut stop).await;
            }
            Some(Err(error)) => {
                shared.error(error_kind(&error));
                backoff = pause(backoff, &mut stop).await;
            }
        }
    }
}

/// Waits `backoff` (with jitter) and returns the next, doubled up to 5 s.
async fn pause(backoff: Duration, stop: &mut watch::Receiver<bool>) -> Duration {
    let jitter = rand::thread_rng().gen_range(0.5..1.5);
    tokio::select! {
        _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
        _ = stop.changed() => {}
    }
    (backoff * 2).min(Duration::from_secs(5))
}
