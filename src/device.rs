//! `Device`: one registered phone: its credentials, outbox, positions and event log.
//!
//! Delivery is at-least-once and never "acknowledged but not received":
//! - A queued command stays in the outbox until the device replies to it; writing it into a
//!   response is not delivery (the response may be lost on a mobile link). Every poll re-sends
//!   what is still unanswered.
//! - A newer command of the same kind replaces an unsent older one outright. If the older one
//!   was already sent, it is marked superseded (no longer sent) but kept, because the device
//!   may still be answering it.
//! - A reply for kind K answers the *oldest* sent command of kind K. So when a newer command's
//!   response was lost while the device answers the older one, the reply is charged to the
//!   older one and the newer stays pending and is sent again. The price is a possible second
//!   run of a command whose response did arrive; a ring or lock run twice is harmless, a lost
//!   one is not.
//! - Optional sequence/ack extension (see `docs/protocol.md`): a device that sends `"ack": N`
//!   is given `"seq"` in each command object; every sent command with a sequence number up to
//!   N counts as received and is not sent again, while its outcome is still awaited.
//!
//! Invariants:
//! - The outbox holds at most one live (not superseded) command per kind, and at most
//!   [`MAX_SUPERSEDED`] superseded ones per kind.
//! - Event numbers (`n`) grow by one per event and are never reused.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::clock::now_ms;
use crate::config::DevicesConfig;
use crate::hawk_auth::NonceCache;
use crate::ids::{DeviceId, UserId};
use crate::mailbox::Mailbox;
use crate::protocol::{CommandSet, DeviceReport, Kind, Outcome, Position};

/// Superseded-but-sent commands kept per kind, to absorb late replies.
pub const MAX_SUPERSEDED: usize = 4;

/// A registered device. Shared by the registry, device polls and owner requests.
#[derive(Debug)]
pub struct Device {
    pub id: DeviceId,
    pub owner: UserId,
    /// Where this device's poll parks, and where queued commands wake it.
    pub mailbox: Mailbox,
    /// Wakes owners' events polls when an event is appended.
    pub events_changed: tokio::sync::Notify,
    /// Everything else, behind one short-held lock. Never held across an `.await`.
    state: std::sync::Mutex<DeviceState>,
}

/// A device's Hawk key. Its `Debug` form never shows the key.
pub struct DeviceKey(pub hawk::Key);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceKey(..)")
    }
}

/// A position with the time the server received it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fix {
    #[serde(flatten)]
    pub position: Position,
    pub received_ms: u64,
}

/// A command that arrived through the outbox, answered by the device.
#[derive(Debug, Clone, Serialize)]
pub struct OutcomeRecord {
    pub command: &'static str,
    pub seq: Option<u64>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_ms: u64,
}

/// One entry of a device's event log, as the owner's events poll returns it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub n: u64,
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Registered,
    Reregistered,
    Renamed {
        name: String,
    },
    CommandQueued {
        command: &'static str,
        seq: u64,
        args: Value,
    },
    /// An unsent command replaced by a newer one of the same kind.
    CommandReplaced {
        command: &'static str,
        seq: u64,
        by: u64,
    },
    /// A sent command replaced by a newer one; it is no longer sent.
    CommandSuperseded {
        command: &'static str,
        seq: u64,
        by: u64,
    },
    /// Commands written into a response (`parked`: to a poll that was waiting).
    CommandSent {
        commands: Vec<SentRef>,
        parked: bool,
    },
    /// Sequence/ack extension: the device confirmed receipt.
    CommandDelivered {
        seqs: Vec<u64>,
    },
    /// The device answered a command (or reported without one pending: `seq` null).
    CommandAcknowledged {
        command: &'static str,
        seq: Option<u64>,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Position {
        fix: Fix,
    },
    Online,
    Offline,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SentRef {
    pub command: &'static str,
    pub seq: u64,
}

/// What the gateway answers a device with: the command object and the commands in it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Value,
    pub sent: Vec<SentRef>,
}

/// The result of queuing an owner's command object.
#[derive(Debug, Clone)]
pub struct Queued {
    pub commands: Vec<SentRef>,
}

#[derive(Debug)]
struct DeviceState {
    name: String,
    /// The device's Hawk key; replaced when it registers again with a new secret.
    key: Arc<DeviceKey>,
    /// Where the device asks to be woken; never shown to owners.
    push_url: String,
    registered_ms: u64,
    /// Whether the device has a lock code of its own (`has_passcode`).
    lockable: Option<bool>,
    last_position: Option<Fix>,
    previous_positions: VecDeque<Fix>,
    last_exchange_ms: Option<u64>,
    online: bool,
    /// Set when the owner forgets the device; polls still holding it then answer 401.
    removed: bool,
    /// Whether the device speaks the sequence/ack extension.
    uses_ack: bool,
    outbox: Outbox,
    outcomes: VecDeque<OutcomeRecord>,
    flags: Flags,
    events: VecDeque<Event>,
    next_event: u64,
    nonces: NonceCache,
}

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    locked: bool,
    erased: bool,
    ringing_until_ms: Option<u64>,
    tracking_until_ms: Option<u64>,
}

#[derive(Debug)]
struct Outbox {
    next_seq: u64,
    items: Vec<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    seq: u64,
    kind: Kind,
    args: Value,
    queued_ms: u64,
    /// Times written into a response.
    sent: u32,
    superseded: bool,
    /// Receipt confirmed through the ack extension; not sent again.
    delivered: bool,
}

/// Device fields set at registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub secret: String,
    pub push_url: String,
    pub name: Option<String>,
}

// === Device ===

impl Device {
    pub fn new(id: DeviceId, owner: UserId, registration: Registration) -> Device {
        let now = now_ms();
        let state = DeviceState {
            name: registration.name.unwrap_or_else(|| "My device".to_owned()),
            key: Arc::new(DeviceKey(crate::hawk_auth::key_for(&registration.secret))),
            push_url: registration.push_url,
            registered_ms: now,
            lockable: None,
            last_position: None,
            previous_positions: VecDeque::new(),
            last_exchange_ms: None,
            online: false,
            removed: false,
            uses_ack: false,
            outbox: Outbox {
                next_seq: 1,
                items: Vec::new(),
            },
            outcomes: VecDeque::new(),
            flags: Flags::default(),
            events: VecDeque::new(),
            next_event: 1,
            nonces: NonceCache::default(),
        };
        let device = Device {
            id,
            owner,
            mailbox: Mailbox::default(),
            events_changed: tokio::sync::Notify::new(),
            state: std::sync::Mutex::new(state),
        };
        device.with(|s| s.push_event(EventKind::Registered, usize::MAX));
        device
    }

    fn with<R>(&self, f: impl FnOnce(&mut DeviceState) -> R) -> R {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let events_before = state.next_event;
        let result = f(&mut state);
        let appended = state.next_event != events_before;
        drop(state);
        if appended {
            self.events_changed.notify_waiters();
        }
        result
    }

    /// The Hawk key, unless the device has been forgotten.
    pub fn key(&self) -> Option<Arc<DeviceKey>> {
        self.with(|s| (!s.removed).then(|| s.key.clone()))
    }

    pub fn is_removed(&self) -> bool {
        self.with(|s| s.removed)
    }

    /// Records a nonce; `false` on replay.
    pub fn check_nonce(&self, ts: u64, nonce: &str, now: u64, window: u64, cap: usize) -> bool {
        self.with(|s| s.nonces.check_and_insert(ts, nonce, now, window, cap))
    }

    /// A new secret and push URL for the same id (the device registered again).
    pub fn reregister(&self, registration: Registration, limits: &DevicesConfig) {
        self.with(|s| {
            s.key = Arc::new(DeviceKey(crate::hawk_auth::key_for(&registration.secret)));
            s.push_url = registration.push_url;
            if let Some(name) = registration.name {
                s.name = name;
            }
            // A new key: nonces seen under the old one mean nothing any more.
            s.nonces = NonceCache::default();
            s.push_event(EventKind::Reregistered, limits.events_kept);
        })
    }

    pub fn rename(&self, name: String, limits: &DevicesConfig) {
        self.with(|s| {
            s.name = name.clone();
            s.push_event(EventKind::Renamed { name }, limits.events_kept);
        })
    }

    /// Marks the device forgotten and releases its parked poll.
    pub fn mark_removed(&self) {
        self.with(|s| s.removed = true);
        self.mailbox.release();
        self.events_changed.notify_waiters();
    }

    /// Queues an owner's validated command object.
    pub fn queue(&self, commands: CommandSet, limits: &DevicesConfig) -> Queued {
        self.with(|s| {
            let now = now_ms();
            let mut queued = Vec::new();
            for (kind, args) in commands.into_entries() {
                let seq = s.outbox.next_seq;
                s.outbox.next_seq += 1;
                let mut displaced = Vec::new();
                s.outbox.items.retain_mut(|item| {
                    if item.kind != kind {
                        return true;
                    }
                    if item.sent == 0 {
                        displaced.push(EventKind::CommandReplaced {
                            command: kind.key(),
                            seq: item.seq,
                            by: seq,
                        });
                        return false;
                    }
                    if !item.superseded {
                        item.superseded = true;
                        displaced.push(EventKind::CommandSuperseded {
                            command: kind.key(),
                            seq: item.seq,
                            by: seq,
                        });
                    }
                    true
                });
                let superseded: Vec<u64> = s
                    .outbox
                    .items
                    .iter()
                    .filter(|i| i.kind == kind && i.superseded)
                    .map(|i| i.seq)
                    .collect();
                if superseded.len() > MAX_SUPERSEDED {
                    let drop_below = superseded[superseded.len() - MAX_SUPERSEDED];
                    s.outbox
                        .items
                        .retain(|i| !(i.kind == kind && i.superseded && i.seq < drop_below));
                }
                for event in displaced {
                    s.push_event(event, limits.events_kept);
                }
                s.push_event(
                    EventKind::CommandQueued {
                        command: kind.key(),
                        seq,
                        args: args.clone(),
                    },
                    limits.events_kept,
                );
                s.outbox.items.push(Pending {
                    seq,
                    kind,
                    args,
                    queued_ms: now,
                    sent: 0,
                    superseded: false,
                    delivered: false,
                });
                queued.push(SentRef {
                    command: kind.key(),
                    seq,
                });
            }
            Queued { commands: queued }
        })
    }

    /// Applies what a device reported in a verified request.
    pub fn apply_report(&self, report: &DeviceReport, limits: &DevicesConfig) {
        self.with(|s| {
            let now = now_ms();
            s.last_exchange_ms = Some(now);
            if !s.online {
                s.online = true;
                s.push_event(EventKind::Online, limits.events_kept);
            }
            if let Some(lockable) = report.has_passcode {
                s.lockable = Some(lockable);
            }
            if let Some(ack) = report.ack {
                s.uses_ack = true;
                s.apply_ack(ack, limits);
            }
            for (kind, outcome) in &report.replies {
                s.apply_reply(*kind, outcome, now, limits);
            }
            if let Some(position) = report.position {
                s.record_position(
                    Fix {
                        position,
                        received_ms: now,
                    },
                    limits,
                );
            }
        })
    }

    /// Takes what is due to the device, marking it sent; `None` when nothing is.
    pub fn take_delivery(&self, parked: bool, limits: &DevicesConfig) -> Option<Delivery> {
        self.with(|s| {
            let mut body = Map::new();
            let mut sent = Vec::new();
            let mut max_seq = 0;
            let mut live: Vec<&mut Pending> = s
                .outbox
                .items
                .iter_mut()
                .filter(|i| !i.superseded && !i.delivered)
                .collect();
            if live.is_empty() {
                return None;
            }
            live.sort_by_key(|i| i.kind);
            for item in live {
                item.sent += 1;
                body.insert(item.kind.key().to_owned(), item.args.clone());
                sent.push(SentRef {
                    command: item.kind.key(),
                    seq: item.seq,
                });
                max_seq = max_seq.max(item.seq);
            }
            if s.uses_ack {
                body.insert("seq".to_owned(), json!(max_seq));
            }
            s.push_event(
                EventKind::CommandSent {
                    commands: sent.clone(),
                    parked,
                },
                limits.events_kept,
            );
            Some(Delivery {
                body: Value::Object(body),
                sent,
            })
        })
    }

    /// Marks the device offline if it has been silent too long. Returns whether it changed.
    pub fn sweep_offline(&self, now: u64, offline_after_ms: u64, limits: &DevicesConfig) -> bool {
        if self.mailbox.is_parked() {
            return false;
        }
        self.with(|s| {
            let silent = s
                .last_exchange_ms
                .is_none_or(|t| now.saturating_sub(t) >= offline_after_ms);
            if s.online && silent && !s.removed {
                s.online = false;
                s.push_event(EventKind::Offline, limits.events_kept);
                true
            } else {
                false
            }
        })
    }

    /// The owner's list view.
    pub fn summary(&self, limits: &DevicesConfig) -> Value {
        let parked = self.mailbox.is_parked();
        self.with(|s| s.summary(self.id, parked, limits))
    }

    /// The owner's detail view: the summary plus history.
    pub fn detail(&self, limits: &DevicesConfig) -> Value {
        let parked = self.mailbox.is_parked();
        self.with(|s| {
            let mut view = s.summary(self.id, parked, limits);
            let now = now_ms();
            let horizon = now.saturating_sub(limits.positions_max_age_hours * 3_600_000);
            let previous: Vec<&Fix> = s
                .previous_positions
                .iter()
                .rev()
                .filter(|f| f.received_ms >= horizon)
                .collect();
            view["previous_positions"] = json!(previous);
            view["outcomes"] = json!(s.outcomes.iter().rev().collect::<Vec<_>>());
            view["registered_ms"] = json!(s.registered_ms);
            view
        })
    }

    /// Events after `since`, oldest first, at most `limit`; with the number to ask for next
    /// and whether events between `since` and the first returned were dropped from the log.
    pub fn events_since(&self, since: u64, limit: usize) -> (Vec<Event>, u64, bool) {
        self.with(|s| {
            // A cursor from the future (a restarted server, a confused client) starts over
            // from the newest event rather than waiting for numbers that may never come.
            let since = since.min(s.next_event - 1);
            let first = s.events.front().map_or(s.next_event, |e| e.n);
            let truncated = since + 1 < first;
            let events: Vec<Event> = s
                .events
                .iter()
                .filter(|e| e.n > since)
                .take(limit)
                .cloned()
                .collect();
            let next = events.last().map_or(since.max(first - 1), |e| e.n);
            (events, next, truncated)
        })
    }

    /// The push URL, for waking the device.
    pub fn push_url(&self) -> String {
        self.with(|s| s.push_url.clone())
    }
}

// === DeviceState ===

impl DeviceState {
    fn push_event(&mut self, kind: EventKind, cap: usize) {
        let n = self.next_event;
        self.next_event += 1;
        self.events.push_back(Event {
            n,
            at_ms: now_ms(),
            kind,
        });
        while self.events.len() > cap.max(1) {
            self.events.pop_front();
        }
    }

    fn apply_ack(&mut self, ack: u64, limits: &DevicesConfig) {
        let mut delivered = Vec::new();
        self.outbox.items.retain_mut(|item| {
            if item.seq > ack || item.sent == 0 {
                return true;
            }
            if item.superseded {
                return false;
            }
            if !item.delivered {
                item.delivered = true;
                delivered.push(item.seq);
            }
            true
        });
        if !delivered.is_empty() {
            self.push_event(
                EventKind::CommandDelivered { seqs: delivered },
                limits.events_kept,
            );
        }
    }

    fn apply_reply(&mut self, kind: Kind, outcome: &Outcome, now: u64, limits: &DevicesConfig) {
        let answered = self
            .outbox
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.kind == kind && i.sent > 0)
            .min_by_key(|(_, i)| i.seq)
            .map(|(index, _)| index);
        let item = answered.map(|index| self.outbox.items.remove(index));
        if outcome.ok {
            if let Some(item) = &item {
                self.flags.apply(kind, &item.args, now);
            }
        }
        let seq = item.as_ref().map(|i| i.seq);
        if item.is_some() || !outcome.ok || kind != Kind::Track {
            self.outcomes.push_back(OutcomeRecord {
                command: kind.key(),
                seq,
                ok: outcome.ok,
                error: outcome.error.clone(),
                at_ms: now,
            });
            while self.outcomes.len() > limits.outcomes_kept {
                self.outcomes.pop_front();
            }
        }
        // Periodic track reports with nothing pending are positions, not acknowledgements.
        if item.is_some() || kind != Kind::Track {
            self.push_event(
                EventKind::CommandAcknowledged {
                    command: kind.key(),
                    seq,
                    ok: outcome.ok,
                    error: outcome.error.clone(),
                },
                limits.events_kept,
            );
        }
    }

    fn record_position(&mut self, fix: Fix, limits: &DevicesConfig) {
        if let Some(previous) = self.last_position.replace(fix) {
            self.previous_positions.push_back(previous);
        }
        let horizon = fix
            .received_ms
            .saturating_sub(limits.positions_max_age_hours * 3_600_000);
        while self
            .previous_positions
            .front()
            .is_some_and(|f| f.received_ms < horizon)
            || self.previous_positions.len() > limits.positions_kept
        {
            self.previous_positions.pop_front();
        }
        self.push_event(EventKind::Position { fix }, limits.events_kept);
    }

    fn summary(&self, id: DeviceId, parked: bool, _limits: &DevicesConfig) -> Value {
        let now = now_ms();
        let pending: Vec<Value> = self
            .outbox
            .items
            .iter()
            .filter(|i| !i.superseded)
            .map(|i| {
                json!({
                    "command": i.kind.key(),
                    "seq": i.seq,
                    "args": i.args,
                    "queued_ms": i.queued_ms,
                    "status": if i.delivered { "delivered" } else if i.sent > 0 { "sent" } else { "queued" },
                    "sends": i.sent,
                })
            })
            .collect();
        json!({
            "id": id,
            "name": self.name,
            "state": {
                "online": self.online || parked,
                "parked": parked,
                "locked": self.flags.locked,
                "ringing": self.flags.ringing_until_ms.is_some_and(|t| t > now),
                "tracking": self.flags.tracking_until_ms.is_some_and(|t| t > now),
                "erased": self.flags.erased,
            },
            "lockable": self.lockable,
            "last_position": self.last_position,
            "last_exchange_ms": self.last_exchange_ms,
            "pending": pending,
        })
    }
}

// === Flags ===

impl Flags {
    /// What an acknowledged command tells us about the device's state.
    fn apply(&mut self, kind: Kind, args: &Value, now: u64) {
        let until = |args: &Value| {
            let secs = args.get("d").and_then(Value::as_u64).unwrap_or(0);
            (secs > 0).then(|| now + secs * 1000)
        };
        match kind {
            Kind::Lock => self.locked = true,
            Kind::Ring => self.ringing_until_ms = until(args),
            Kind::Track => self.tracking_until_ms = until(args),
            Kind::Erase => self.erased = true,
            Kind::Message => {}
        }
    }
}
