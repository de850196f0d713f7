//! `Pusher`: waking a device that has no poll parked, through the push URL it registered.
//!
//! A phone asleep in a pocket does not hold a poll open; its push service (SimplePush for the
//! 2014 Firefox OS devices, Web Push or UnifiedPush for newer ones) wakes it, and it then
//! polls. [`wake`] is the one place that decides "is a poll parked here? if not, ping the push
//! URL": with several gateway nodes, it is where a wake-up would be routed to the node that
//! holds the poll before falling back to push.
//!
//! Invariants:
//! - A ping never runs on the owner's request path: [`wake`] starts a task and returns.
//! - At most one ping per device is in flight (retries and backoff included); commands queued
//!   meanwhile ride on it, since the device's next poll fetches everything pending.
//! - Only 5xx, 429, timeouts and connection errors are retried, with exponential backoff and
//!   jitter, at most `push.retries` times. A 404 or 410 marks the URL dead (journaled) and
//!   no ping is sent to it again until the device registers a new one.
//! - Every ping goes through [`Outbound`], which refuses internal destinations.
//! - Push URLs are capabilities: they go to no log and into no answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashSet;
use http::{HeaderValue, Method, StatusCode, header};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info};

use crate::config::{Config, PushConfig};
use crate::device::{Device, EventKind};
use crate::gateway::Gateway;
use crate::ids::DeviceId;
use crate::outbound::{Outbound, OutboundError, OutboundRequest, Resolve, Timeouts};

/// How a device's push URL is to be pinged; chosen at registration (`pushtype`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PushProtocol {
    /// Mozilla SimplePush, as Firefox OS devices of 2014 use: `PUT`, body `version=N`.
    #[default]
    SimplePush,
    /// RFC 8030 Web Push (and UnifiedPush, which speaks it): `POST`, empty body.
    WebPush,
}

/// Where and how to ping a device, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub url: String,
    pub protocol: PushProtocol,
    /// A push service answered 404 or 410 for this URL.
    pub dead: bool,
}

/// What [`wake`] did about a queued command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// A poll was parked and has been woken.
    Parked,
    /// No poll was parked: a ping to the push URL has started.
    PushSent,
    /// A ping for this device is already under way; it brings this command too.
    PushInFlight,
    /// The push URL is dead: the command waits for the device's next poll of its own.
    PushUrlDead,
    /// Wake-ups through push are turned off (`push.enabled = false`).
    PushDisabled,
    /// `push.max_in_flight` pings are under way: the command waits for the device's next poll.
    PushBusy,
}

/// How one ping ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// The push service accepted the wake-up (a 2xx).
    Delivered { tries: u32, status: u16 },
    /// It did not, after `tries` tries; `reason` is fit to show to the owner.
    Failed { tries: u32, reason: String },
    /// The push service says the URL is gone (404 or 410).
    Dead { tries: u32, status: u16 },
}

/// Counts of ping outcomes since start, for operators (a metrics endpoint reads them).
#[derive(Debug, Default)]
pub struct PushStats {
    /// Requests sent (or tried) to push services, retries included.
    attempts: AtomicU64,
    /// Pings accepted by their push service.
    delivered: AtomicU64,
    /// Tries that failed in a way worth retrying, and were retried.
    retried: AtomicU64,
    /// Pings given up on (retries spent, a refused destination, an unexpected status).
    failed: AtomicU64,
    /// Pings that found their URL dead (404/410).
    dead: AtomicU64,
}

/// A reading of [`PushStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PushCounts {
    pub attempts: u64,
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
    pub dead: u64,
}

/// The push side of the gateway: the guarded client, the in-flight set and the counters.
#[derive(Debug)]
pub struct Pusher {
    config: PushConfig,
    outbound: Outbound,
    /// Devices with a ping under way; an entry lives exactly as long as its [`InFlight`].
    in_flight: Arc<DashSet<DeviceId>>,
    pub stats: PushStats,
}

/// Marks a device's ping in flight; dropping it (the ping ended, or its task was cancelled)
/// lets the next queued command start a new one.
#[derive(Debug)]
struct InFlight {
    set: Arc<DashSet<DeviceId>>,
    id: DeviceId,
}

/// What one try came to.
enum Try {
    Done(PingOutcome),
    /// Worth another try; the reason is for the owner if it is the last.
    Retry(String),
}

// === wake ===

/// Wakes a device after a command was queued for it: its parked poll if it has one, otherwise
/// a ping to its push URL, in the background. Never waits for the network.
pub fn wake(gateway: &Arc<Gateway>, device: &Arc<Device>) -> Wakeup {
    if device.mailbox.notify() {
        return Wakeup::Parked;
    }
    let pusher = &gateway.push;
    if !pusher.config.enabled {
        return Wakeup::PushDisabled;
    }
    let Some(target) = device.push_target() else {
        // Forgotten meanwhile: nobody to wake.
        return Wakeup::PushDisabled;
    };
    if target.dead {
        return Wakeup::PushUrlDead;
    }
    // Read without a lock, so a burst may overshoot the cap by the number of requests racing
    // here; the cap is there to keep sockets in check, not to be exact.
    if pusher.in_flight.len() >= pusher.config.max_in_flight {
        return if pusher.in_flight.contains(&device.id) {
            Wakeup::PushInFlight
        } else {
            Wakeup::PushBusy
        };
    }
    if !pusher.in_flight.insert(device.id) {
        return Wakeup::PushInFlight;
    }
    let flight = InFlight {
        set: pusher.in_flight.clone(),
        id: device.id,
    };
    device.note_event(
        EventKind::WokenViaPush {
            protocol: target.protocol,
        },
        &gateway.config.devices,
    );
    let (gateway, device) = (gateway.clone(), device.clone());
    tokio::spawn(async move {
        let _flight = flight;
        let mut shutdown = gateway.shutdown_handle();
        // A ping in backoff must not hold the server open: on shutdown it is dropped
        // unfinished. The command stays pending, so the device gets it on its next poll.
        tokio::select! {
            outcome = gateway.push.ping(&device, &target) => {
                gateway.push.record(&gateway, &device, &target, outcome).await;
            }
            _ = shutdown.wait() => {}
        }
    });
    Wakeup::PushSent
}

impl Wakeup {
    /// The value of `push` in the answer to a queued command (`None` when a poll was parked).
    pub fn answer(self) -> Option<&'static str> {
        match self {
            Wakeup::Parked => None,
            Wakeup::PushSent => Some("sent"),
            Wakeup::PushInFlight => Some("in_flight"),
            Wakeup::PushUrlDead => Some("dead"),
            Wakeup::PushDisabled => Some("disabled"),
            Wakeup::PushBusy => Some("busy"),
        }
    }
}

// === Pusher ===

impl Pusher {
    pub fn new(config: &Config, resolver: Arc<dyn Resolve>) -> Pusher {
        let push = &config.push;
        // The configuration was validated before start-up; should an invalid list get here
        // anyway, the strict policy (nothing internal allowed) is the safe reading of it.
        let policy = config
            .push_policy()
            .unwrap_or_else(|_| crate::outbound::Policy {
                allow_http: push.allow_http,
                allowed: Vec::new(),
            });
        let timeouts = Timeouts {
            connect: Duration::from_millis(push.connect_timeout_ms),
            request: Duration::from_millis(push.request_timeout_ms),
        };
        Pusher {
            config: push.clone(),
            outbound: Outbound::new(policy, timeouts, resolver),
            in_flight: Arc::new(DashSet::new()),
            stats: PushStats::default(),
        }
    }

    pub fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    /// Pings under way right now (a gauge, next to the [`PushStats`] counters).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Pings until delivered, dead, refused, or out of retries.
    ///
    /// Cancel safety: dropping it abandons the ping; nothing has been recorded yet.
    async fn ping(&self, device: &Device, target: &PushTarget) -> PingOutcome {
        let request = self.request_for(target);
        let mut tries = 0;
        loop {
            tries += 1;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let reason = match self.try_once(device.id, &request).await {
                Try::Done(outcome) => return with_tries(outcome, tries),
                Try::Retry(reason) => reason,
            };
            if tries > self.config.retries || device.is_removed() {
                let plural = if tries == 1 { "try" } else { "tries" };
                return PingOutcome::Failed {
                    tries,
                    reason: format!("{reason} (gave up after {tries} {plural})"),
                };
            }
            self.stats.retried.fetch_add(1, Ordering::Relaxed);
            let delay = backoff(
                Duration::from_millis(self.config.backoff_base_ms),
                Duration::from_millis(self.config.backoff_max_ms),
                tries,
                &mut rand::thread_rng(),
            );
            debug!(device = %device.id, tries, ?delay, %reason, "push ping will be retried");
            tokio::time::sleep(delay).await;
        }
    }

    async fn try_once(&self, device: DeviceId, request: &OutboundRequest) -> Try {
        match self.outbound.send(request).await {
            Ok(response) => {
                let status = response.status;
                if status.is_success() {
                    Try::Done(PingOutcome::Delivered {
                        tries: 0,
                        status: status.as_u16(),
                    })
                } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
                    Try::Done(PingOutcome::Dead {
                        tries: 0,
                        status: status.as_u16(),
                    })
                } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    Try::Retry(format!("the push service answered {}", status.as_u16()))
                } else {
                    // 3xx included: redirects are never followed (the target could be
                    // anywhere), and another 4xx will not change on a retry.
                    Try::Done(PingOutcome::Failed {
                        tries: 0,
                        reason: format!("the push service answered {}", status.as_u16()),
                    })
                }
            }
            Err(OutboundError::Refused(detail)) => {
                // The host and address go to the operator's log (never to the owner), so that
                // a refused URL can be told apart from a misconfigured allow-list.
                info!(%device, %detail, "push ping refused by the outbound policy");
                Try::Done(PingOutcome::Failed {
                    tries: 0,
                    reason: "refused: the push URL leads to an address this server does not reach"
                        .into(),
                })
            }
            Err(e) => {
                debug!(%device, error = %e, "push ping failed");
                Try::Retry(public_reason(&e).into())
            }
        }
    }

    /// The HTTP request that wakes a device of this protocol.
    fn request_for(&self, target: &PushTarget) -> OutboundRequest {
        match target.protocol {
            PushProtocol::SimplePush => OutboundRequest {
                method: Method::PUT,
                url: target.url.clone(),
                headers: vec![(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )],
                // SimplePush delivers the newest version per channel; the clock in
                // milliseconds only grows, across restarts too.
                body: format!("version={}", crate::clock::now_ms()).into(),
            },
            PushProtocol::WebPush => OutboundRequest {
                method: Method::POST,
                url: target.url.clone(),
                headers: vec![
                    (
                        header::HeaderName::from_static("ttl"),
                        HeaderValue::from(self.config.web_push_ttl_secs),
                    ),
                    (
                        header::HeaderName::from_static("urgency"),
                        HeaderValue::from_static("high"),
                    ),
                ],
                body: bytes::Bytes::new(),
            },
        }
    }

    /// Counts the outcome, journals a dead URL, and tells the owner through the events.
    async fn record(
        &self,
        gateway: &Gateway,
        device: &Device,
        target: &PushTarget,
        outcome: PingOutcome,
    ) {
        let limits = &gateway.config.devices;
        let counter = match &outcome {
            PingOutcome::Delivered { .. } => &self.stats.delivered,
            PingOutcome::Failed { .. } => &self.stats.failed,
            PingOutcome::Dead { .. } => &self.stats.dead,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let PingOutcome::Dead { status, .. } = outcome {
            info!(device = %device.id, status, "push URL is dead; no more pings until it changes");
            if let Err(e) = device
                .mark_push_dead(&target.url, limits, gateway.storage())
                .wait()
                .await
            {
                error!(device = %device.id, error = %e, "cannot journal a dead push URL");
            }
        }
        let event = match outcome {
            PingOutcome::Delivered { tries, status } => EventKind::PushOutcome {
                outcome: "delivered",
                tries,
                status: Some(status),
                reason: None,
            },
            PingOutcome::Failed { tries, reason } => EventKind::PushOutcome {
                outcome: "failed",
                tries,
                status: None,
                reason: Some(reason),
            },
            PingOutcome::Dead { tries, status } => EventKind::PushOutcome {
                outcome: "dead",
                tries,
                status: Some(status),
                reason: None,
            },
        };
        device.note_event(event, limits);
    }
}

fn with_tries(outcome: PingOutcome, tries: u32) -> PingOutcome {
    match outcome {
        PingOutcome::Delivered { status, .. } => PingOutcome::Delivered { tries, status },
        PingOutcome::Failed { reason, .. } => PingOutcome::Failed { tries, reason },
        PingOutcome::Dead { status, .. } => PingOutcome::Dead { tries, status },
    }
}

/// A failure as the owner may see it: no host, no address, no URL.
fn public_reason(error: &OutboundError) -> &'static str {
    match error {
        OutboundError::Refused(_) => "refused",
        OutboundError::Resolve { .. } => "the push service's name does not resolve",
        OutboundError::Connect(_) => "cannot connect to the push service",
        OutboundError::Tls(_) => "the TLS handshake with the push service failed",
        OutboundError::Http(_) => "the exchange with the push service failed",
        OutboundError::Timeout(_) => "the push service did not answer in time",
    }
}

/// The wait before retry number `retry` (1 for the first): `base · 2^(retry-1)`, at most
/// `max`, drawn at random from its upper half so that devices failing together spread out.
pub fn backoff(base: Duration, max: Duration, retry: u32, rng: &mut impl Rng) -> Duration {
    let doubled = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    let ceiling = doubled.min(max);
    let millis = ceiling.as_millis() as u64;
    Duration::from_millis(rng.gen_range(millis / 2..=millis))
}

// === PushStats ===

impl PushStats {
    /// The counts now. Each counter is read on its own: a reading taken while pings end may
    /// be off by those pings, never more.
    pub fn read(&self) -> PushCounts {
        PushCounts {
            attempts: self.attempts.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
        }
    }
}

// === InFlight ===

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut rng = rand::thread_rng();
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        for _ in 0..200 {
            let first = backoff(base, max, 1, &mut rng);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let third = backoff(base, max, 3, &mut rng);
            assert!((200..=400).contains(&third.as_millis()), "{third:?}");
            let late = backoff(base, max, 30, &mut rng);
            assert!((500..=1000).contains(&late.as_millis()), "{late:?}");
        }
    }

    #[test]
    fn a_dead_url_stays_dead_until_a_new_one_is_registered_and_replay_agrees() {
        use crate::device::DeviceData;
        use crate::store::record::DeviceChange;
        use crate::store::seal::StoredSecret;
        let limits = crate::config::DevicesConfig::default();
        let owner = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let mut data = DeviceData::new(owner, "phone".into(), "https://a.example/1".into(), 0);
        let reregister = |url: &str| DeviceChange::Reregistered {
            secret: StoredSecret::Plain("s".into()),
            push_url: url.into(),
            push_protocol: PushProtocol::WebPush,
            name: None,
        };
        // A mark for a URL the device no longer has (it registered a new one while the ping
        // was under way) changes nothing.
        data.apply(
            &DeviceChange::PushDead {
                push_url: "https://old.example/0".into(),
            },
            &limits,
        );
        assert!(!data.push_dead);
        data.apply(
            &DeviceChange::PushDead {
                push_url: "https://a.example/1".into(),
            },
            &limits,
        );
        assert!(data.push_dead);
        data.apply(&reregister("https://a.example/1"), &limits);
        assert!(data.push_dead, "the same URL is still dead");
        assert_eq!(data.push_protocol, PushProtocol::WebPush);
        data.apply(&reregister("https://b.example/2"), &limits);
        assert!(!data.push_dead);
    }

    #[test]
    fn records_written_before_push_types_read_as_simplepush() {
        use crate::store::record::{DeviceChange, Record};
        let old = r#"{"op":"device","id":"0123456789abcdef0123456789abcdef","v":1,"change":{"kind":"registered","owner":"0123456789abcdef0123456789abcdef","name":"p","secret":{"plain":"s"},"push_url":"https://a.example/1","at_ms":5}}"#;
        let Ok(Record::Device {
            change: DeviceChange::Registered { push_protocol, .. },
            ..
        }) = serde_json::from_str::<Record>(old)
        else {
            panic!("an old record must still parse");
        };
        assert_eq!(push_protocol, PushProtocol::SimplePush);
    }

    #[test]
    fn protocols_have_their_wire_names() {
        assert_eq!(
            serde_json::to_value(PushProtocol::SimplePush).unwrap(),
            "simplepush"
        );
        assert_eq!(
            serde_json::from_value::<PushProtocol>("webpush".into()).unwrap(),
            PushProtocol::WebPush
        );
    }
}
