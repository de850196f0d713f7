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
//! - A device resends its replies when an answer is lost, and a reply names no command. So a
//!   command of kind K is never sent in the answer to a request carrying a K reply
//!   ([`DeviceReport::held_back`]): otherwise the resent reply could be charged to a newer K
//!   command that was in the lost answer and never reached the device. With the ack extension
//!   a reply answers only commands up to the request's `ack`, which closes the same race.
//! - Optional sequence/ack extension (see `docs/protocol.md`): a device that sends `"ack": N`
//!   is given `"seq"` in each command object; every sent command with a sequence number up to
//!   N counts as received and is not sent again, while its outcome is still awaited.
//!
//! Durable state ([`DeviceData`]) changes only through [`DeviceData::apply`], with a
//! [`DeviceChange`] that is also what the journal records; replay after a restart runs the
//! same code. The live methods decide the change (using what only the running server knows,
//! such as which commands were sent), journal it while still holding the device's lock (so
//! the journal has one device's changes in version order), apply it, and append events.
//!
//! Invariants:
//! - The outbox holds at most one live (not superseded) command per kind, and at most
//!   [`MAX_SUPERSEDED`] superseded ones per kind.
//! - `DeviceData::v` grows by one per applied change.
//! - Event numbers (`n`) grow by one per event and are never reused within a run.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::clock::now_ms;
use crate::config::DevicesConfig;
use crate::hawk_auth::NonceCache;
use crate::ids::{DeviceId, UserId};
use crate::mailbox::Mailbox;
use crate::protocol::{CommandSet, DeviceReport, Kind, KindSet, Outcome, Position};
use crate::push::{PushProtocol, PushTarget};
use crate::store::record::{DeviceChange, Record};
use crate::store::seal::Sealer;
use crate::store::{Commit, Durability, Journal};

/// Superseded-but-sent commands kept per kind, to absorb late replies.
pub const MAX_SUPERSEDED: usize = 4;

/// How far every device's command sequence numbers move on at each start (see
/// [`Device::skip_seqs`]). It must exceed the numbers one device can be issued between two
/// journal flushes: a flush with `fsync = "always"`, `fsync_interval_ms` otherwise. A million
/// commands to one phone in that time is out of reach, and 2^53 (the most a JSON client
/// reads exactly) still leaves room for eight billion starts.
pub const SEQ_SKIP: u64 = 1 << 20;

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
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    #[serde(flatten)]
    pub position: Position,
    pub received_ms: u64,
}

/// What the device said about a command it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub command: Kind,
    pub seq: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_ms: u64,
}

/// Everything about a device that survives a restart (secret and id aside).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceData {
    pub owner: UserId,
    /// Version: the number of changes applied since registration.
    pub v: u64,
    pub name: String,
    /// Where the device asks to be woken; never shown to owners.
    pub push_url: String,
    /// How to ping `push_url`.
    #[serde(default)]
    pub push_protocol: PushProtocol,
    /// A push service said `push_url` is gone (404/410); cleared by a new URL.
    #[serde(default)]
    pub push_dead: bool,
    pub registered_ms: u64,
    /// Whether the device has a lock code of its own (`has_passcode`).
    pub lockable: Option<bool>,
    pub last_position: Option<Fix>,
    pub previous_positions: VecDeque<Fix>,
    /// Last exchange with the device. Kept in snapshots, not journaled (it changes every poll).
    pub last_exchange_ms: Option<u64>,
    pub outbox: Outbox,
    pub outcomes: VecDeque<OutcomeRecord>,
    pub flags: Flags,
}

/// Commands not yet answered, and the next sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outbox {
    pub next_seq: u64,
    pub items: Vec<Pending>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub seq: u64,
    pub kind: Kind,
    pub args: Value,
    pub queued_ms: u64,
    /// Times written into a response since this process started. Not durable: after a
    /// restart a command counts as unsent, and is sent (again) before a reply can answer it.
    #[serde(skip)]
    pub sent: u32,
    pub superseded: bool,
    /// Receipt confirmed through the ack extension; not sent again.
    pub delivered: bool,
}

/// What acknowledged commands say about the device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Flags {
    pub locked: bool,
    pub erased: bool,
    pub ringing_until_ms: Option<u64>,
    pub tracking_until_ms: Option<u64>,
}

/// `value` as its JSON text.
fn raw_json(value: &Value) -> Box<RawValue> {
    // Writing a `Value` out cannot fail: its maps have string keys.
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
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
        command: Kind,
        seq: u64,
        /// Kept as its JSON text: a map holding one argument takes a 640-byte block as a
        /// `Value`, and a device keeps up to `devices.events_kept` events.
        args: Box<RawValue>,
    },
    /// An unsent command replaced by a newer one of the same kind.
    CommandReplaced {
        command: Kind,
        seq: u64,
        by: u64,
    },
    /// A sent command replaced by a newer one; it is no longer sent.
    CommandSuperseded {
        command: Kind,
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
        command: Kind,
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
    /// No poll was parked when a command was queued: the push URL is being pinged.
    WokenViaPush {
        protocol: PushProtocol,
    },
    /// How that ping ended: `delivered` to the push service, `failed`, or `dead`.
    PushOutcome {
        outcome: &'static str,
        tries: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct SentRef {
    pub command: Kind,
    pub seq: u64,
}

/// What the gateway answers a device with: the command object and the commands in it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub body: Value,
    pub sent: Vec<SentRef>,
    /// When the newest of the sent commands was queued (ms since the epoch), 0 when none was:
    /// the start of the wake latency a parked poll measures.
    pub newest_queued_ms: u64,
}

/// Device fields set at registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub secret: String,
    pub push_url: String,
    pub push_protocol: PushProtocol,
    pub name: Option<String>,
}

/// The journal and sealer, which every durable change goes through.
#[derive(Debug, Clone, Copy)]
pub struct Storage<'a> {
    pub journal: &'a Journal,
    pub sealer: &'a Sealer,
}

#[derive(Debug)]
struct DeviceState {
    data: DeviceData,
    /// The device's Hawk key; replaced when it registers again with a new secret.
    key: Arc<DeviceKey>,
    /// The secret in the clear, to seal into snapshots.
    secret: String,
    /// Set when the owner forgets the device; polls still holding it then answer 401.
    removed: bool,
    online: bool,
    /// Whether the device speaks the sequence/ack extension.
    uses_ack: bool,
    events: VecDeque<Event>,
    next_event: u64,
    nonces: NonceCache,
}

// === Device ===

impl Device {
    /// A newly registered device. The caller journals the `Registered` record.
    pub fn new(id: DeviceId, owner: UserId, registration: Registration, now: u64) -> Device {
        let name = registration.name.unwrap_or_else(|| "My device".to_owned());
        let mut data = DeviceData::new(owner, name, registration.push_url, now);
        data.push_protocol = registration.push_protocol;
        let device = Device::restore(id, data, registration.secret);
        device.with(|s| s.push_event(EventKind::Registered, usize::MAX));
        device
    }

    /// A device rebuilt from a snapshot or journal.
    pub fn restore(id: DeviceId, data: DeviceData, secret: String) -> Device {
        let owner = data.owner;
        Device {
            id,
            owner,
            mailbox: Mailbox::default(),
            events_changed: tokio::sync::Notify::new(),
            state: std::sync::Mutex::new(DeviceState {
                data,
                key: Arc::new(DeviceKey(crate::hawk_auth::key_for(&secret))),
                secret,
                removed: false,
                online: false,
                uses_ack: false,
                events: VecDeque::new(),
                next_event: 1,
                nonces: NonceCache::default(),
            }),
        }
    }

    /// The `Registered` journal record for this device as it is now.
    pub fn registered_record(&self, sealer: &Sealer) -> Record {
        self.with(|s| Record::Device {
            id: self.id,
            v: s.data.v,
            change: DeviceChange::Registered {
                owner: s.data.owner,
                name: s.data.name.clone(),
                secret: sealer.seal(&s.secret),
                push_url: s.data.push_url.clone(),
                push_protocol: s.data.push_protocol,
                at_ms: s.data.registered_ms,
            },
        })
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

    /// The durable state and the secret, for a snapshot (history past its retention
    /// dropped); `None` once forgotten.
    pub fn image(&self, limits: &DevicesConfig) -> Option<(DeviceData, String)> {
        self.with(|s| {
            if s.removed {
                return None;
            }
            s.data.prune(now_ms(), limits);
            Some((s.data.clone(), s.secret.clone()))
        })
    }

    pub fn version(&self) -> u64 {
        self.with(|s| s.data.v)
    }

    /// Nonces remembered against replay right now (bounded by `hawk.nonces_per_device`).
    pub fn nonces_held(&self) -> usize {
        self.with(|s| s.nonces.len())
    }

    /// Records a nonce; `false` on replay.
    pub fn check_nonce(&self, ts: u64, nonce: &str, now: u64, window: u64, cap: usize) -> bool {
        self.with(|s| s.nonces.check_and_insert(ts, nonce, now, window, cap))
    }

    /// Replays a journaled change. Changes the snapshot already holds are skipped.
    pub fn replay(
        &self,
        v: u64,
        change: &DeviceChange,
        limits: &DevicesConfig,
        sealer: &Sealer,
    ) -> Result<(), crate::store::seal::SealError> {
        self.with(|s| {
            if v <= s.data.v {
                return Ok(());
            }
            if v != s.data.v + 1 {
                tracing::error!(device = %self.id, have = s.data.v, record = v, "journal skips device versions");
            }
            if let DeviceChange::Reregistered { secret, .. } = change {
                s.set_secret(sealer.open(secret)?);
            }
            s.data.apply(change, limits);
            s.data.v = v;
            Ok(())
        })
    }

    /// A new secret and push URL for the same id (the device registered again).
    pub fn reregister(
        &self,
        registration: Registration,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Commit {
        self.with(|s| {
            let change = DeviceChange::Reregistered {
                secret: storage.sealer.seal(&registration.secret),
                push_url: registration.push_url,
                push_protocol: registration.push_protocol,
                name: registration.name,
            };
            s.set_secret(registration.secret);
            // A new key: nonces seen under the old one mean nothing any more.
            s.nonces = NonceCache::default();
            let commit = s.commit(self.id, change, limits, storage, Durability::Commands);
            s.push_event(EventKind::Reregistered, limits.events_kept);
            commit
        })
    }

    pub fn rename(&self, name: String, limits: &DevicesConfig, storage: Storage<'_>) -> Commit {
        self.with(|s| {
            let commit = s.commit(
                self.id,
                DeviceChange::Renamed { name: name.clone() },
                limits,
                storage,
                Durability::Commands,
            );
            s.push_event(EventKind::Renamed { name }, limits.events_kept);
            commit
        })
    }

    /// Records whether the device has a lock code of its own.
    pub fn set_lockable(
        &self,
        value: bool,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Commit {
        self.with(|s| {
            if s.data.lockable == Some(value) {
                return Commit::done();
            }
            s.commit(
                self.id,
                DeviceChange::Lockable { value },
                limits,
                storage,
                Durability::Commands,
            )
        })
    }

    /// Where and how to wake the device; `None` once forgotten.
    pub fn push_target(&self) -> Option<PushTarget> {
        self.with(|s| {
            (!s.removed).then(|| PushTarget {
                url: s.data.push_url.clone(),
                protocol: s.data.push_protocol,
                dead: s.data.push_dead,
            })
        })
    }

    /// Records that a push service called `url` gone. A no-op if the device has registered
    /// another URL since the ping started (the journal record says which URL, so replay agrees).
    pub fn mark_push_dead(
        &self,
        url: &str,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Commit {
        self.with(|s| {
            if s.removed || s.data.push_url != url || s.data.push_dead {
                return Commit::done();
            }
            s.commit(
                self.id,
                DeviceChange::PushDead {
                    push_url: url.to_owned(),
                },
                limits,
                storage,
                Durability::Commands,
            )
        })
    }

    /// Appends an event that records no durable change (how a wake-up went).
    pub fn note_event(&self, kind: EventKind, limits: &DevicesConfig) {
        self.with(|s| {
            if !s.removed {
                s.push_event(kind, limits.events_kept);
            }
        });
    }

    /// Marks the device forgotten, journals that, and releases its parked poll.
    pub fn mark_removed(&self, limits: &DevicesConfig, storage: Storage<'_>) -> Commit {
        let commit = self.with(|s| {
            s.removed = true;
            s.commit(
                self.id,
                DeviceChange::Removed,
                limits,
                storage,
                Durability::Commands,
            )
        });
        self.mailbox.release();
        self.events_changed.notify_waiters();
        commit
    }

    /// Queues an owner's validated command object.
    pub fn queue(
        &self,
        commands: CommandSet,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> (Vec<SentRef>, Commit) {
        self.with(|s| {
            let now = now_ms();
            let mut queued = Vec::new();
            let mut commit = Commit::done();
            for (kind, args) in commands.into_entries() {
                let seq = s.data.outbox.next_seq;
                let mut removed = Vec::new();
                let mut superseded = Vec::new();
                let mut events = Vec::new();
                for item in s.data.outbox.items.iter().filter(|i| i.kind == kind) {
                    if item.sent == 0 && !item.superseded {
                        removed.push(item.seq);
                        events.push(EventKind::CommandReplaced {
                            command: kind,
                            seq: item.seq,
                            by: seq,
                        });
                    } else if !item.superseded {
                        superseded.push(item.seq);
                        events.push(EventKind::CommandSuperseded {
                            command: kind,
                            seq: item.seq,
                            by: seq,
                        });
                    }
                }
                // Keep at most MAX_SUPERSEDED superseded commands of this kind: the oldest go.
                let mut kept: Vec<u64> = s
                    .data
                    .outbox
                    .items
                    .iter()
                    .filter(|i| i.kind == kind && (i.superseded || superseded.contains(&i.seq)))
                    .map(|i| i.seq)
                    .collect();
                kept.sort_unstable();
                if kept.len() > MAX_SUPERSEDED {
                    removed.extend_from_slice(&kept[..kept.len() - MAX_SUPERSEDED]);
                    superseded.retain(|seq| !removed.contains(seq));
                }
                let event = EventKind::CommandQueued {
                    command: kind,
                    seq,
                    args: raw_json(&args),
                };
                let change = DeviceChange::Queued {
                    seq,
                    command: kind,
                    args,
                    at_ms: now,
                    removed,
                    superseded,
                };
                commit.join(s.commit(self.id, change, limits, storage, Durability::Commands));
                for event in events {
                    s.push_event(event, limits.events_kept);
                }
                s.push_event(event, limits.events_kept);
                queued.push(SentRef { command: kind, seq });
            }
            (queued, commit)
        })
    }

    /// Moves the next command sequence number on by `by`, at start-up (`Record::Started`).
    ///
    /// A device may receive a command before its record is flushed (see `queue_commands`), so
    /// after a crash it may hold sequence numbers the recovered state never issued. Without
    /// the skip they would be issued again, to other commands, and a device that sends
    /// `"ack": N` for the lost ones would acknowledge the new ones unseen.
    pub fn skip_seqs(&self, by: u64) {
        self.with(|s| s.data.outbox.next_seq = s.data.outbox.next_seq.saturating_add(by));
    }

    /// Applies what a device reported in a verified request.
    pub fn apply_report(
        &self,
        report: &DeviceReport,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Commit {
        self.with(|s| {
            let now = now_ms();
            let mut commit = Commit::done();
            s.data.last_exchange_ms = Some(now);
            if !s.online {
                s.online = true;
                s.push_event(EventKind::Online, limits.events_kept);
            }
            if let Some(value) = report.has_passcode
                && s.data.lockable != Some(value)
            {
                commit.join(s.commit(
                    self.id,
                    DeviceChange::Lockable { value },
                    limits,
                    storage,
                    Durability::Commands,
                ));
            }
            if let Some(ack) = report.ack {
                s.uses_ack = true;
                let newly: Vec<(u64, bool)> = s
                    .data
                    .outbox
                    .items
                    .iter()
                    .filter(|i| i.seq <= ack && i.sent > 0 && (i.superseded || !i.delivered))
                    .map(|i| (i.seq, i.superseded))
                    .collect();
                if !newly.is_empty() {
                    let seqs: Vec<u64> = newly.iter().map(|(seq, _)| *seq).collect();
                    commit.join(s.commit(
                        self.id,
                        DeviceChange::Delivered { seqs },
                        limits,
                        storage,
                        Durability::Commands,
                    ));
                    let delivered: Vec<u64> = newly
                        .iter()
                        .filter(|(_, sup)| !sup)
                        .map(|(seq, _)| *seq)
                        .collect();
                    if !delivered.is_empty() {
                        s.push_event(
                            EventKind::CommandDelivered { seqs: delivered },
                            limits.events_kept,
                        );
                    }
                }
            }
            for (kind, outcome) in &report.replies {
                commit.join(s.answer(self.id, *kind, outcome, report.ack, now, limits, storage));
            }
            if let Some(position) = report.position {
                let fix = Fix {
                    position,
                    received_ms: now,
                };
                commit.join(s.commit(
                    self.id,
                    DeviceChange::Position { fix },
                    limits,
                    storage,
                    Durability::Positions,
                ));
                s.push_event(EventKind::Position { fix }, limits.events_kept);
            }
            commit
        })
    }

    /// Takes what is due to the device, marking it sent; `None` when nothing is.
    ///
    /// Commands of the `held_back` kinds stay pending (see [`DeviceReport::held_back`]); when
    /// only those are due, the delivery is the empty object, so that the device polls again at
    /// once instead of parking.
    pub fn take_delivery(
        &self,
        parked: bool,
        held_back: KindSet,
        limits: &DevicesConfig,
    ) -> Option<Delivery> {
        self.with(|s| {
            let mut body = Map::new();
            let mut sent = Vec::new();
            let mut max_seq = 0;
            let mut live: Vec<&mut Pending> = s
                .data
                .outbox
                .items
                .iter_mut()
                .filter(|i| !i.superseded && !i.delivered)
                .collect();
            if live.is_empty() {
                return None;
            }
            live.retain(|i| !held_back.contains(i.kind));
            if live.is_empty() {
                return Some(Delivery {
                    body: Value::Object(body),
                    sent,
                    newest_queued_ms: 0,
                });
            }
            live.sort_by_key(|i| i.kind);
            let mut newest_queued_ms = 0;
            for item in live {
                item.sent += 1;
                newest_queued_ms = newest_queued_ms.max(item.queued_ms);
                body.insert(item.kind.key().to_owned(), item.args.clone());
                sent.push(SentRef {
                    command: item.kind,
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
                newest_queued_ms,
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
                .data
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
    pub fn summary(&self) -> Value {
        let parked = self.mailbox.is_parked();
        self.with(|s| s.summary(self.id, parked))
    }

    /// The owner's detail view: the summary plus history.
    pub fn detail(&self, limits: &DevicesConfig) -> Value {
        let parked = self.mailbox.is_parked();
        self.with(|s| {
            let mut view = s.summary(self.id, parked);
            let horizon = now_ms().saturating_sub(limits.positions_max_age_hours * 3_600_000);
            let previous: Vec<&Fix> = s
                .data
                .previous_positions
                .iter()
                .rev()
                .filter(|f| f.received_ms >= horizon)
                .collect();
            view["previous_positions"] = json!(previous);
            view["outcomes"] = json!(s.data.outcomes.iter().rev().collect::<Vec<_>>());
            view["registered_ms"] = json!(s.data.registered_ms);
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
}

// === DeviceState ===

impl DeviceState {
    fn set_secret(&mut self, secret: String) {
        self.key = Arc::new(DeviceKey(crate::hawk_auth::key_for(&secret)));
        self.secret = secret;
    }

    /// Journals a change (in version order, under the device lock) and applies it.
    fn commit(
        &mut self,
        id: DeviceId,
        change: DeviceChange,
        limits: &DevicesConfig,
        storage: Storage<'_>,
        durability: Durability,
    ) -> Commit {
        self.data.apply(&change, limits);
        let record = Record::Device {
            id,
            v: self.data.v,
            change,
        };
        storage.journal.append(&record, durability)
    }

    /// A reply answers the oldest sent command of its kind (see the module docs), and only
    /// one the device says it received when it sends `ack`.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        id: DeviceId,
        kind: Kind,
        outcome: &Outcome,
        ack: Option<u64>,
        now: u64,
        limits: &DevicesConfig,
        storage: Storage<'_>,
    ) -> Commit {
        let seq = self
            .data
            .outbox
            .items
            .iter()
            .filter(|i| i.kind == kind && i.sent > 0 && ack.is_none_or(|ack| i.seq <= ack))
            .map(|i| i.seq)
            .min();
        // Periodic track reports with nothing pending are positions, not acknowledgements.
        if seq.is_none() && kind == Kind::Track && outcome.ok {
            return Commit::done();
        }
        let change = DeviceChange::Answered {
            command: kind,
            seq,
            ok: outcome.ok,
            error: outcome.error.clone(),
            at_ms: now,
        };
        let commit = self.commit(id, change, limits, storage, Durability::Commands);
        self.push_event(
            EventKind::CommandAcknowledged {
                command: kind,
                seq,
                ok: outcome.ok,
                error: outcome.error.clone(),
            },
            limits.events_kept,
        );
        commit
    }

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

    fn summary(&self, id: DeviceId, parked: bool) -> Value {
        let now = now_ms();
        let data = &self.data;
        let pending: Vec<Value> = data
            .outbox
            .items
            .iter()
            .filter(|i| !i.superseded)
            .map(|i| {
                json!({
                    "command": i.kind,
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
            "name": data.name,
            "state": {
                "online": self.online || parked,
                "parked": parked,
                "locked": data.flags.locked,
                "ringing": data.flags.ringing_until_ms.is_some_and(|t| t > now),
                "tracking": data.flags.tracking_until_ms.is_some_and(|t| t > now),
                "erased": data.flags.erased,
                "push_dead": data.push_dead,
            },
            "push_protocol": data.push_protocol,
            "lockable": data.lockable,
            "last_position": data.last_position,
            "last_exchange_ms": data.last_exchange_ms,
            "pending": pending,
        })
    }
}

// === DeviceData ===

impl DeviceData {
    /// A freshly registered device's state (version 1).
    pub fn new(owner: UserId, name: String, push_url: String, registered_ms: u64) -> DeviceData {
        DeviceData {
            owner,
            v: 1,
            name,
            push_url,
            push_protocol: PushProtocol::default(),
            push_dead: false,
            registered_ms,
            lockable: None,
            last_position: None,
            previous_positions: VecDeque::new(),
            last_exchange_ms: None,
            outbox: Outbox {
                next_seq: 1,
                items: Vec::new(),
            },
            outcomes: VecDeque::new(),
            flags: Flags::default(),
        }
    }

    /// Applies one change. The same code runs live and when the journal is replayed.
    pub fn apply(&mut self, change: &DeviceChange, limits: &DevicesConfig) {
        self.v += 1;
        match change {
            DeviceChange::Registered { .. } | DeviceChange::Removed => {}
            DeviceChange::Reregistered {
                push_url,
                push_protocol,
                name,
                ..
            } => {
                if self.push_url != *push_url {
                    self.push_dead = false;
                }
                self.push_url.clone_from(push_url);
                self.push_protocol = *push_protocol;
                if let Some(name) = name {
                    self.name.clone_from(name);
                }
            }
            DeviceChange::Renamed { name } => self.name.clone_from(name),
            DeviceChange::Queued {
                seq,
                command,
                args,
                at_ms,
                removed,
                superseded,
            } => {
                self.outbox.items.retain(|i| !removed.contains(&i.seq));
                for item in &mut self.outbox.items {
                    if superseded.contains(&item.seq) {
                        item.superseded = true;
                    }
                }
                self.outbox.items.push(Pending {
                    seq: *seq,
                    kind: *command,
                    args: args.clone(),
                    queued_ms: *at_ms,
                    sent: 0,
                    superseded: false,
                    delivered: false,
                });
                self.outbox.next_seq = self.outbox.next_seq.max(seq + 1);
            }
            DeviceChange::Delivered { seqs } => {
                self.outbox.items.retain_mut(|item| {
                    if !seqs.contains(&item.seq) {
                        return true;
                    }
                    item.delivered = true;
                    !item.superseded
                });
            }
            DeviceChange::Answered {
                command,
                seq,
                ok,
                error,
                at_ms,
            } => {
                let item = seq.and_then(|seq| {
                    let at = self.outbox.items.iter().position(|i| i.seq == seq)?;
                    Some(self.outbox.items.remove(at))
                });
                if *ok && let Some(item) = &item {
                    self.flags.apply(*command, &item.args, *at_ms);
                }
                self.outcomes.push_back(OutcomeRecord {
                    command: *command,
                    seq: *seq,
                    ok: *ok,
                    error: error.clone(),
                    at_ms: *at_ms,
                });
                self.prune(*at_ms, limits);
            }
            DeviceChange::Position { fix } => self.record_position(*fix, limits),
            DeviceChange::Lockable { value } => self.lockable = Some(*value),
            DeviceChange::PushDead { push_url } => {
                if self.push_url == *push_url {
                    self.push_dead = true;
                }
            }
        }
    }

    fn record_position(&mut self, fix: Fix, limits: &DevicesConfig) {
        if let Some(previous) = self.last_position.replace(fix) {
            self.previous_positions.push_back(previous);
        }
        self.prune(fix.received_ms, limits);
    }

    /// Drops previous positions and outcomes beyond the configured counts or ages.
    pub fn prune(&mut self, now: u64, limits: &DevicesConfig) {
        let horizon = now.saturating_sub(limits.positions_max_age_hours * 3_600_000);
        while self
            .previous_positions
            .front()
            .is_some_and(|f| f.received_ms < horizon)
            || self.previous_positions.len() > limits.positions_kept
        {
            self.previous_positions.pop_front();
        }
        let horizon = now.saturating_sub(limits.outcomes_max_age_hours * 3_600_000);
        while self.outcomes.front().is_some_and(|o| o.at_ms < horizon)
            || self.outcomes.len() > limits.outcomes_kept
        {
            self.outcomes.pop_front();
        }
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
