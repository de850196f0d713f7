//! What the journal and snapshots hold.
//!
//! Journal records describe changes, and say exactly what they did (which commands a new one
//! replaced, which seq a reply answered), so that replaying them rebuilds the same state
//! without the in-memory details that decided them at the time. Each device record carries the
//! device's version after the change: replay skips what a snapshot already contains.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::datasync::placement::StorageChange;
use crate::datasync::{Purge, UserState, Write};
use crate::device::{DeviceData, Fix};
use crate::ids::{DeviceId, UserId};
use crate::protocol::Kind;
use crate::push::PushProtocol;
use crate::store::frame::{self, Ending};
use crate::store::seal::StoredSecret;

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    AccountCreated {
        user: UserId,
        email: String,
        password_hash: String,
        created_ms: u64,
    },
    /// `digest`: hex SHA-256 of the token; the token itself is never stored.
    TokenIssued {
        digest: String,
        user: UserId,
        expires_ms: u64,
    },
    TokenRevoked {
        digest: String,
    },
    /// An account made for an identity provider's subject (issuer and `sub`).
    SubjectLinked {
        subject: String,
        user: UserId,
        email: String,
        created_ms: u64,
    },
    /// A browser session opened; `digest`: hex SHA-256 of the cookie value.
    WebSessionOpened {
        digest: String,
        user: UserId,
        created_ms: u64,
    },
    /// A browser session was used (at most one record a minute per session).
    WebSessionUsed {
        digest: String,
        at_ms: u64,
    },
    WebSessionClosed {
        digest: String,
    },
    Device {
        id: DeviceId,
        /// The device's version after this change.
        v: u64,
        change: DeviceChange,
    },
    /// A sync write (one record or a batch) of `user`, at revision `rev`. Payloads are
    /// whatever the client sent: ciphertext, for the sync client.
    SyncWrite {
        user: UserId,
        rev: u64,
        #[serde(flatten)]
        write: Write,
    },
    /// Old tombstones and expired records removed from one of `user`'s collections.
    SyncPurged {
        user: UserId,
        #[serde(flatten)]
        purge: Purge,
    },
    /// Where `user`'s payloads live changed: a storage linked, re-keyed or unlinked, payloads
    /// moved, a blob created, filled or removed. Never a credential in the clear.
    SyncStorage {
        user: UserId,
        change: StorageChange,
    },
    /// The server started serving. Every device known at this point moves its next command
    /// sequence number on by `seq_skip`, so that no number is used twice (see
    /// `Device::skip_seqs`). Written and flushed by start-up, before the first request.
    Started {
        at_ms: u64,
        seq_skip: u64,
    },
}

impl Record {
    /// The record as one journal frame (length, checksum, JSON payload).
    pub fn framed(&self) -> serde_json::Result<Vec<u8>> {
        let payload = serde_json::to_vec(self)?;
        let mut bytes = Vec::with_capacity(payload.len() + frame::FRAME_OVERHEAD);
        frame::encode_frame(&payload, &mut bytes);
        Ok(bytes)
    }
}

/// A change to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceChange {
    Registered {
        owner: UserId,
        name: String,
        secret: StoredSecret,
        push_url: String,
        /// Absent in records written before push wake-ups: SimplePush, the seed's protocol.
        #[serde(default)]
        push_protocol: PushProtocol,
        at_ms: u64,
    },
    Reregistered {
        secret: StoredSecret,
        push_url: String,
        #[serde(default)]
        push_protocol: PushProtocol,
        name: Option<String>,
    },
    Renamed {
        name: String,
    },
    Queued {
        seq: u64,
        command: Kind,
        args: Value,
        at_ms: u64,
        /// Unsent commands of the same kind removed by this one, and superseded ones pruned.
        removed: Vec<u64>,
        /// Sent commands of the same kind now superseded (kept to absorb late replies).
        superseded: Vec<u64>,
    },
    Delivered {
        seqs: Vec<u64>,
    },
    Answered {
        command: Kind,
        seq: Option<u64>,
        ok: bool,
        error: Option<String>,
        at_ms: u64,
    },
    Position {
        fix: Fix,
    },
    Lockable {
        value: bool,
    },
    Removed,
    /// A push service answered 404/410 for this URL (ignored if the device has another now).
    PushDead {
        push_url: String,
    },
}

/// One entry of a snapshot file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "entry", rename_all = "snake_case")]
pub enum SnapshotEntry {
    Account {
        user: UserId,
        email: String,
        password_hash: String,
        created_ms: u64,
    },
    Token {
        digest: String,
        user: UserId,
        expires_ms: u64,
    },
    Device {
        id: DeviceId,
        secret: StoredSecret,
        #[serde(flatten)]
        data: Box<DeviceData>,
    },
    Subject {
        subject: String,
        user: UserId,
        email: String,
        created_ms: u64,
    },
    WebSession {
        digest: String,
        user: UserId,
        created_ms: u64,
        last_used_ms: u64,
    },
    /// One user's sync data.
    SyncUser {
        user: UserId,
        #[serde(flatten)]
        state: Box<UserState>,
    },
    /// The last entry: how many came before it. A snapshot without it is incomplete.
    End { entries: u64 },
}

/// A frame whose checksum holds but whose payload is not a record of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the record at byte {offset} does not decode: {reason}")]
pub struct UndecodableRecord {
    /// File offset of the frame.
    pub offset: usize,
    /// What the JSON decoder said.
    pub reason: String,
}

/// Decodes the frames of a journal or snapshot: `body` is the file after its header, starting at
/// file offset `base`. Calls `each(offset, record)` for every record, in order, and reports how
/// the frames ended.
///
/// Pure, and total over any bytes: it never panics, and stops at the first good frame whose
/// payload is not a `T`, because a frame that passed its checksum but does not decode was
/// written that way (a bug or a format change), which no torn write explains.
pub fn decode_frames<T: DeserializeOwned>(
    body: &[u8],
    base: usize,
    mut each: impl FnMut(usize, T),
) -> Result<Ending, UndecodableRecord> {
    let mut failure = None;
    let ending = frame::read_frames(body, base, |offset, payload| {
        if failure.is_some() {
            return;
        }
        match serde_json::from_slice::<T>(payload) {
            Ok(record) => each(offset, record),
            Err(e) => {
                failure = Some(UndecodableRecord {
                    offset,
                    reason: e.to_string(),
                })
            }
        }
    });
    match failure {
        Some(failure) => Err(failure),
        None => Ok(ending),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::frame::encode_frame;

    #[test]
    fn decodes_records_and_stops_at_one_that_does_not() {
        let mut body = Vec::new();
        let first = Record::TokenRevoked {
            digest: "ab".into(),
        };
        encode_frame(&serde_json::to_vec(&first).unwrap(), &mut body);
        let second_at = 16 + body.len();
        encode_frame(br#"{"op":"no_such_op"}"#, &mut body);
        encode_frame(&serde_json::to_vec(&first).unwrap(), &mut body);
        let mut got = Vec::new();
        let result =
            decode_frames::<Record>(&body, 16, |offset, record| got.push((offset, record)));
        assert_eq!(got, vec![(16, first.clone())]);
        let error = result.unwrap_err();
        assert_eq!(error.offset, second_at);
        assert!(error.reason.contains("no_such_op"), "{}", error.reason);

        let mut body = Vec::new();
        encode_frame(&serde_json::to_vec(&first).unwrap(), &mut body);
        encode_frame(b"{\"op\":", &mut body);
        body.truncate(body.len() - 2);
        let mut count = 0;
        let ending = decode_frames::<Record>(&body, 16, |_, _| count += 1).unwrap();
        assert_eq!(count, 1);
        assert!(matches!(ending, Ending::Torn { .. }));
    }
}
