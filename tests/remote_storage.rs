//! User-chosen storage against a real WebDAV server (`wsgidav`, with authentication on):
//! linking (credentials checked, sealed under the client's key), two devices syncing through
//! it, blobs uploaded in chunks and resumed, what a stolen data directory gives an attacker
//! without the client's key, the storage going down mid-sync, re-keying, and unlinking.
//!
//! Needs `wsgidav` (`pip install wsgidav cheroot`). Without it the tests say SKIP and pass,
//! unless `WHERESMYFOX_REQUIRE_WEBDAV=1` (set by `.ci/run`), when they fail.

mod support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::header::HeaderName;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::webdav::{Dav, PASSWORD, USER, dav_or_skip};
use support::{
    LogSink, TestServer, assert_error, contains, crash_image, encodings, files_under, register,
};
use wheresmyfox::client::OwnerClient;
use wheresmyfox::config::Config;
use wheresmyfox::datasync::client::{BlobRef, Change, SyncClient, SyncReply};
use wheresmyfox::datasync::crypto::RootKey;
use wheresmyfox::error::ApiError;
use wheresmyfox::ids::UserId;
use wheresmyfox::remote::link::{KEY_HEADER, NEW_KEY_HEADER, ServerSecret, StorageKey};

fn allow_loopback_storage(config: &mut Config) {
    config.remote_storage.allow_http = true;
    config.remote_storage.allowed_cidrs = vec!["127.0.0.0/8".into()];
    config.remote_storage.connect_timeout_ms = 500;
    config.remote_storage.request_timeout_ms = 3_000;
    // The smallest chunk, so that a blob of a few hundred KiB has several.
    config.blobs.chunk_bytes = 64 * 1024;
}

fn root(owner: &OwnerClient) -> RootKey {
    RootKey::from_key_material(&[9u8; 32], &owner.userid)
}

fn key_header(key: &StorageKey) -> (HeaderName, String) {
    (
        HeaderName::from_static(KEY_HEADER),
        key.encode().to_string(),
    )
}

async fn call(
    client: &mut SyncClient,
    method: Method,
    path: &str,
    headers: &[(HeaderName, String)],
    body: Option<Value>,
) -> SyncReply {
    client
        .request(method, path, headers, body.as_ref())
        .await
        .expect("request")
}

async fn link(client: &mut SyncClient, dav: &Dav, key: &StorageKey, password: &str) -> SyncReply {
    let body = json!({"type": "webdav", "url": dav.url(), "username": USER, "password": password});
    call(
        client,
        Method::PUT,
        "/1/remote-storage",
        &[key_header(key)],
        Some(body),
    )
    .await
}

/// A server, an owner who linked `dav` with a fresh storage key, and their client sending it.
async fn linked_owner(dav: &Dav, name: &str) -> (TestServer, OwnerClient, SyncClient, StorageKey) {
    let server = TestServer::start_with(allow_loopback_storage).await;
    let owner = server.owner(name).await;
    let mut client = SyncClient::owner(server.http(), &owner.token, root(&owner));
    let key = StorageKey::random();
    let linked = link(&mut client, dav, &key, PASSWORD).await;
    assert_eq!(linked.status, StatusCode::OK, "{}", linked.body);
    client.use_storage_key(Some(&key));
    (server, owner, client, key)
}

/// Waits (at most ten seconds: a loaded CI machine) until `check` holds: removals from the storage run after the
/// answer.
async fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}

async fn put_chunk(
    client: &mut SyncClient,
    path: &str,
    bytes: Bytes,
) -> wheresmyfox::client::Reply {
    client
        .request_bytes(Method::PUT, path, &[], bytes, "application/octet-stream")
        .await
        .unwrap()
}

#[tokio::test]
async fn two_devices_sync_through_a_linked_webdav_and_the_disk_keeps_only_sealed_credentials() {
    let Some(dav) = dav_or_skip("two_devices_sync_through_a_linked_webdav") else {
        return;
    };
    let sink = LogSink::install();
    let server = TestServer::start_with(allow_loopback_storage).await;
    let mut owner = server.owner("linker").await;
    let (phone_id, phone_secret) = register(&mut owner, "phone").await;
    let (tablet_id, tablet_secret) = register(&mut owner, "tablet").await;
    let mut phone = SyncClient::device(server.http(), &phone_id, &phone_secret, root(&owner));
    let mut tablet = SyncClient::device(server.http(), &tablet_id, &tablet_secret, root(&owner));

    // Before linking, data is kept here, as always.
    phone
        .put("contacts", "grace", b"Grace Hopper, +1 555 0100", None)
        .await
        .unwrap();

    let key = StorageKey::random();
    // The storage is checked before anything is kept: a wrong app password is refused.
    let refused = link(&mut phone, &dav, &key, "not-the-password").await;
    assert_error(
        refused.status,
        &refused.body,
        400,
        355,
        "refused this user name",
    );
    let no_key = call(
        &mut phone,
        Method::PUT,
        "/1/remote-storage",
        &[],
        Some(json!({"url": dav.url(), "username": USER, "password": PASSWORD})),
    )
    .await;
    assert_error(no_key.status, &no_key.body, 400, 350, "X-Storage-Key");
    let status = call(&mut phone, Method::GET, "/1/remote-storage", &[], None).await;
    assert_eq!(status.body["linked"], false);

    // Linked: what was kept here moves there (the contact and its collection key).
    let linked = link(&mut phone, &dav, &key, PASSWORD).await;
    assert_eq!(linked.status, StatusCode::OK, "{}", linked.body);
    assert_eq!(linked.body["linked"], true);
    assert_eq!(linked.body["moved"]["records"], 2);
    assert_eq!(linked.body["records_here"], 0);
    assert_eq!(dav.files("records").len(), 2, "{:?}", dav.files("records"));

    // Without the key the server cannot reach the storage, and says so; with the wrong key
    // it cannot open the credentials.
    let blind = tablet.get("contacts", "grace").await;
    assert!(format!("{blind:?}").contains("350"), "{blind:?}");
    tablet.use_storage_key(Some(&StorageKey::random()));
    let wrong = call(
        &mut tablet,
        Method::GET,
        "/1/storage/contacts/grace",
        &[],
        None,
    )
    .await;
    assert_error(wrong.status, &wrong.body, 403, 352, "does not open");

    // Both devices with the key: a write on one lands in the storage and the other reads it.
    phone.use_storage_key(Some(&key));
    tablet.use_storage_key(Some(&key));
    let rev = phone
        .put("contacts", "alan", b"Alan Turing, +44 555 0199", None)
        .await
        .unwrap();
    let (changes, _) = tablet.changes_since("contacts", 0, 100).await.unwrap();
    let plaintexts: Vec<Vec<u8>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Put { plaintext, .. } => Some(plaintext.clone()),
            Change::Deleted { .. } => None,
        })
        .collect();
    assert!(plaintexts.contains(&b"Alan Turing, +44 555 0199".to_vec()));
    assert!(plaintexts.contains(&b"Grace Hopper, +1 555 0100".to_vec()));
    assert_eq!(dav.files("records").len(), 3);
    // The stored payload is the client's ciphertext: the storage's owner cannot read it either.
    for file in dav.files("records") {
        let bytes = std::fs::read(dav.root.join("wheresmyfox").join(&file)).unwrap();
        assert!(!contains(&bytes, b"Turing") && !contains(&bytes, b"Hopper"));
    }

    // A photo as a blob, in chunks, referred to from a record; the tablet gets it back.
    let photo: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let blob = phone.upload_blob(&photo).await.unwrap();
    assert_eq!(blob.size, 200_000);
    assert_eq!(dav.files("blobs").len(), 4, "{:?}", dav.files("blobs"));
    let reference = serde_json::to_vec(&blob).unwrap();
    phone.put("photos", "p1", &reference, None).await.unwrap();
    let got = tablet.get("photos", "p1").await.unwrap().unwrap();
    let blob_ref: BlobRef = serde_json::from_slice(&got.0).unwrap();
    assert_eq!(tablet.download_blob(&blob_ref).await.unwrap(), photo);

    // The server's disk holds neither the app password nor the key, in any form.
    let dir = server.stop_keeping_data().await;
    let key_bytes = URL_SAFE_NO_PAD.decode(key.encode().as_bytes()).unwrap();
    let logged = sink.bytes();
    for file in files_under(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [PASSWORD.as_bytes(), &key_bytes[..]] {
            for form in encodings(secret) {
                assert!(
                    !contains(&bytes, &form),
                    "{} holds a secret",
                    file.display()
                );
                assert!(!contains(&logged, &form), "a secret was logged");
            }
        }
        assert!(!contains(&bytes, b"Turing"));
    }

    // An attacker with the whole data directory, but not the client's key: the sealed
    // credentials (recovered from it exactly as the server does on start) do not open.
    let server = TestServer::start_in(dir, allow_loopback_storage).await;
    let user: UserId = owner.userid.parse().unwrap();
    let stored = server.gateway.sync.get(user).unwrap().link().unwrap();
    let secret = ServerSecret::load(server.dir.path(), None).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            secret.open(&StorageKey::random(), user, &stored),
            Err(ApiError::RemoteKeyWrong)
        ));
    }
    let opened = secret.open(&key, user, &stored).unwrap();
    assert_eq!(opened.password.as_str(), PASSWORD);

    // And after the restart, the devices go on as before.
    let mut tablet = SyncClient::device(server.http(), &tablet_id, &tablet_secret, root(&owner));
    tablet.use_storage_key(Some(&key));
    let (plaintext, current) = tablet.get("contacts", "alan").await.unwrap().unwrap();
    assert_eq!(
        (plaintext.as_slice(), current),
        (&b"Alan Turing, +44 555 0199"[..], rev)
    );
    server.stop().await;
}

#[tokio::test]
async fn blob_uploads_resume_and_are_checked_chunk_by_chunk() {
    let Some(dav) = dav_or_skip("blob_uploads_resume_and_are_checked_chunk_by_chunk") else {
        return;
    };
    let (server, _owner, mut client, _) = linked_owner(&dav, "blobs").await;

    let chunk = 64 * 1024;
    let created = call(
        &mut client,
        Method::POST,
        "/1/blobs",
        &[],
        Some(json!({"size": 2 * chunk + 10})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["chunks"], 3);
    let id = created.body["blob_id"].as_str().unwrap().to_owned();
    let piece = |i: u8, len: usize| Bytes::from(vec![i; len]);
    let path = |index: u64| format!("/1/blobs/{id}/chunks/{index}");
    // Chunks 0 and 2 arrive, then the connection "drops": the status says what is missing.
    assert_eq!(
        put_chunk(&mut client, &path(0), piece(0, chunk))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        put_chunk(&mut client, &path(2), piece(2, 10)).await.status,
        StatusCode::OK
    );
    // A chunk of the wrong length is refused and changes nothing.
    let short = put_chunk(&mut client, &path(1), piece(1, 5)).await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    let meta = call(
        &mut client,
        Method::GET,
        &format!("/1/blobs/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(meta.body["missing"], json!([1]));
    assert_eq!(meta.body["complete"], false);
    let early = call(
        &mut client,
        Method::GET,
        &format!("/1/blobs/{id}/chunks/1"),
        &[],
        None,
    )
    .await;
    assert_error(early.status, &early.body, 409, 359, "not complete");
    // A chunk sent again before the blob is complete replaces the first copy, whose file goes.
    assert_eq!(dav.files("blobs").len(), 2);
    let again = put_chunk(&mut client, &path(0), piece(0, chunk)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(eventually(|| dav.files("blobs").len() == 2).await);
    // Resumed: the missing chunk, and chunk 2 again (a retry is harmless).
    assert_eq!(
        put_chunk(&mut client, &path(1), piece(1, chunk))
            .await
            .status,
        StatusCode::OK
    );
    let done = put_chunk(&mut client, &path(2), piece(2, 10)).await;
    let done: Value = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(done["complete"], true);
    assert_eq!(done["stored"], "linked");
    let mut digests = Vec::new();
    for bytes in [piece(0, chunk), piece(1, chunk), piece(2, 10)] {
        digests.extend(
            ring::digest::digest(&ring::digest::SHA256, &bytes)
                .as_ref()
                .to_vec(),
        );
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, &digests);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(done["hash"], hex);
    // Complete: its chunks no longer change.
    let changed = put_chunk(&mut client, &path(2), piece(5, 10)).await;
    let changed_body: Value = serde_json::from_slice(&changed.body).unwrap();
    assert_error(changed.status, &changed_body, 400, 360, "no longer change");
    assert_eq!(dav.files("blobs").len(), 3);

    // A chunk altered on the storage is caught on the way out.
    let chunk_one = dav
        .files("blobs")
        .into_iter()
        .find(|f| f.starts_with(&format!("blobs/{id}/000001.")))
        .unwrap();
    let stored = dav.root.join("wheresmyfox").join(chunk_one);
    std::fs::write(&stored, vec![9u8; chunk]).unwrap();
    let tampered = client
        .request_bytes(
            Method::GET,
            &format!("/1/blobs/{id}/chunks/1"),
            &[],
            Bytes::new(),
            "",
        )
        .await
        .unwrap();
    assert_eq!(tampered.status, StatusCode::BAD_GATEWAY);

    let deleted = call(
        &mut client,
        Method::DELETE,
        &format!("/1/blobs/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert!(eventually(|| dav.files("blobs").is_empty()).await);
    let too_big = call(
        &mut client,
        Method::POST,
        "/1/blobs",
        &[],
        Some(json!({"size": 1u64 << 40})),
    )
    .await;
    assert_error(too_big.status, &too_big.body, 413, 361, "at most");
    server.stop().await;
}

#[tokio::test]
async fn the_storage_going_down_mid_sync_changes_nothing_and_a_retry_goes_through() {
    let Some(mut dav) = dav_or_skip("the_storage_going_down_mid_sync") else {
        return;
    };
    let (server, _owner, mut client, key) = linked_owner(&dav, "outage").await;
    let first = client.put("notes", "n1", b"first", None).await.unwrap();

    dav.stop();
    let body = json!({"payload": "second"});
    let down = call(
        &mut client,
        Method::PUT,
        "/1/storage/notes/n1",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_error(down.status, &down.body, 503, 353, "try again later");
    assert_eq!(down.headers["retry-after"], "5");
    // Nothing was written: the revision did not move.
    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None).await;
    assert_eq!(info.body["notes"], first);
    let unreadable = call(&mut client, Method::GET, "/1/storage/notes/n1", &[], None).await;
    assert_eq!(unreadable.status, StatusCode::SERVICE_UNAVAILABLE);
    // Operators see it in /metrics.
    let metrics = wheresmyfox::metrics::render(&server.gateway);
    let unavailable = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("wheresmyfox_remote_storage_requests_total{outcome=\"unavailable\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(unavailable.is_some_and(|n| n >= 2), "{metrics}");

    dav.restart();
    let again = call(
        &mut client,
        Method::PUT,
        "/1/storage/notes/n1",
        &[],
        Some(body.clone()),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let read = call(&mut client, Method::GET, "/1/storage/notes/n1", &[], None).await;
    assert_eq!(
        read.body["payload"], "second",
        "{} {}",
        read.status, read.body
    );

    // The app password is revoked: a clear 502 until the owner links with a new one, which
    // is checked and sealed in place of the old (same storage, same key, nothing moves).
    dav.change_password("a-new-app-password-42");
    let revoked = call(&mut client, Method::GET, "/1/storage/notes/n1", &[], None).await;
    assert_error(
        revoked.status,
        &revoked.body,
        502,
        354,
        "refused the credentials",
    );
    let wrong = link(&mut client, &dav, &key, "still-not-it").await;
    assert_error(
        wrong.status,
        &wrong.body,
        400,
        355,
        "refused this user name",
    );
    let relinked = link(&mut client, &dav, &key, "a-new-app-password-42").await;
    assert_eq!(relinked.status, StatusCode::OK, "{}", relinked.body);
    assert_eq!(relinked.body["moved"]["records"], 0);
    let read = call(&mut client, Method::GET, "/1/storage/notes/n1", &[], None).await;
    assert_eq!(read.body["payload"], "second");
    // The same write once more: same bytes, same name; the replaced payload went.
    let twice = call(
        &mut client,
        Method::PUT,
        "/1/storage/notes/n1",
        &[],
        Some(body),
    )
    .await;
    assert_eq!(twice.status, StatusCode::OK);
    assert!(eventually(|| dav.files("records/notes").len() == 1).await);
    server.stop().await;
}

#[tokio::test]
async fn rekeying_and_unlinking_move_or_leave_the_data_as_the_owner_chooses() {
    let Some(dav) = dav_or_skip("rekeying_and_unlinking") else {
        return;
    };
    let (server, _owner, mut client, _) = linked_owner(&dav, "rekey").await;
    client.put("notes", "n1", b"kept", None).await.unwrap();

    // Re-key: the old key opens nothing any more, the new one does.
    let new = StorageKey::random();
    let rekeyed = call(
        &mut client,
        Method::POST,
        "/1/remote-storage/rekey",
        &[(
            HeaderName::from_static(NEW_KEY_HEADER),
            new.encode().to_string(),
        )],
        None,
    )
    .await;
    assert_eq!(rekeyed.status, StatusCode::OK, "{}", rekeyed.body);
    let stale = call(&mut client, Method::GET, "/1/storage/notes/n1", &[], None).await;
    assert_error(stale.status, &stale.body, 403, 352, "does not open");
    client.use_storage_key(Some(&new));
    assert_eq!(client.get("notes", "n1").await.unwrap().unwrap().0, b"kept");

    // Unlink, moving the data back: it is readable here without any key, and gone there.
    let unlinked = call(&mut client, Method::DELETE, "/1/remote-storage", &[], None).await;
    assert_eq!(unlinked.status, StatusCode::OK, "{}", unlinked.body);
    assert_eq!(unlinked.body["linked"], false);
    assert_eq!(unlinked.body["unlinked"]["moved"]["records"], 2);
    client.use_storage_key(None);
    assert_eq!(client.get("notes", "n1").await.unwrap().unwrap().0, b"kept");
    assert!(eventually(|| dav.files("records").is_empty()).await);

    // Link again, then unlink leaving the data there: the files stay, sync forgets them.
    assert_eq!(
        link(&mut client, &dav, &new, PASSWORD).await.status,
        StatusCode::OK
    );
    assert_eq!(dav.files("records").len(), 2);
    let left = call(
        &mut client,
        Method::DELETE,
        "/1/remote-storage?data=leave",
        &[],
        None,
    )
    .await;
    assert_eq!(left.status, StatusCode::OK, "{}", left.body);
    assert_eq!(left.body["unlinked"]["dropped"]["records"], 2);
    assert_eq!(dav.files("records").len(), 2);
    let listing = call(&mut client, Method::GET, "/1/storage/notes", &[], None).await;
    assert_eq!(listing.body["records"], json!([]));
    let nothing = call(&mut client, Method::DELETE, "/1/remote-storage", &[], None).await;
    assert_error(nothing.status, &nothing.body, 409, 356, "no linked storage");
    server.stop().await;
}

#[tokio::test]
async fn blobs_are_kept_here_until_a_storage_is_linked_and_follow_the_data_both_ways() {
    let Some(dav) = dav_or_skip("blobs_are_kept_here_until_a_storage_is_linked") else {
        return;
    };
    let server = TestServer::start_with(allow_loopback_storage).await;
    let owner = server.owner("blobs-here").await;
    let mut client = SyncClient::owner(server.http(), &owner.token, root(&owner));

    // Without a linked storage a blob's chunks are files in the data directory, and they
    // survive a restart like everything else.
    let backup: Vec<u8> = (0..150_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let blob = client.upload_blob(&backup).await.unwrap();
    let user: UserId = owner.userid.parse().unwrap();
    let local = server.dir.path().join("blobs").join(user.to_string());
    assert_eq!(files_under(&local).len(), 3);
    let dir = server.stop_keeping_data().await;
    let server = TestServer::start_in(dir, allow_loopback_storage).await;
    let mut client = SyncClient::owner(server.http(), &owner.token, root(&owner));
    assert_eq!(client.download_blob(&blob).await.unwrap(), backup);

    // Linking moves it there, and nothing of it stays here.
    let key = StorageKey::random();
    let linked = link(&mut client, &dav, &key, PASSWORD).await;
    assert_eq!(linked.body["moved"]["blobs"], 1, "{}", linked.body);
    assert_eq!(dav.files("blobs").len(), 3);
    assert!(files_under(&local).is_empty());
    let blind = client.download_blob(&blob).await;
    assert!(format!("{blind:?}").contains("350"), "{blind:?}");
    client.use_storage_key(Some(&key));
    assert_eq!(client.download_blob(&blob).await.unwrap(), backup);

    // What a crash at this point leaves (the files as they are, no final snapshot) recovers
    // from the journal to the same place: linked, the blob there.
    let image = crash_image(server.dir.path());
    let recovered = TestServer::start_in(image, allow_loopback_storage).await;
    let mut other = SyncClient::owner(recovered.http(), &owner.token, root(&owner));
    other.use_storage_key(Some(&key));
    assert_eq!(other.download_blob(&blob).await.unwrap(), backup);
    let status = call(&mut other, Method::GET, "/1/remote-storage", &[], None).await;
    assert_eq!(
        (
            status.body["linked"].clone(),
            status.body["blobs_there"].clone()
        ),
        (json!(true), json!(1))
    );
    recovered.stop().await;

    // Unlinking with the data moved back brings it home.
    let unlinked = call(&mut client, Method::DELETE, "/1/remote-storage", &[], None).await;
    assert_eq!(
        unlinked.body["unlinked"]["moved"]["blobs"], 1,
        "{}",
        unlinked.body
    );
    client.use_storage_key(None);
    assert_eq!(client.download_blob(&blob).await.unwrap(), backup);
    assert_eq!(files_under(&local).len(), 3);
    assert!(eventually(|| dav.files("blobs").is_empty()).await);

    // An upload never finished is removed after blobs.upload_ttl_secs, chunks and all.
    let started = call(
        &mut client,
        Method::POST,
        "/1/blobs",
        &[],
        Some(json!({"size": 70_000})),
    )
    .await;
    let id = started.body["blob_id"].as_str().unwrap().to_owned();
    let first = put_chunk(
        &mut client,
        &format!("/1/blobs/{id}/chunks/0"),
        Bytes::from(vec![1u8; 64 * 1024]),
    )
    .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(files_under(&local).len(), 4);
    let now = wheresmyfox::clock::now_ms();
    let expired = wheresmyfox::service::remote::expire_uploads(&server.gateway, now).await;
    assert_eq!(expired, 0, "not yet");
    let later = now + server.gateway.config.blobs.upload_ttl_secs * 1000 + 1;
    let expired = wheresmyfox::service::remote::expire_uploads(&server.gateway, later).await;
    assert_eq!(expired, 1);
    let gone = call(
        &mut client,
        Method::GET,
        &format!("/1/blobs/{id}"),
        &[],
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(files_under(&local).len(), 3);
    server.stop().await;
}
