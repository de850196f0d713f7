//! Data sync over the real server: collections and records, revisions, incremental reads,
//! optimistic concurrency, atomic batches, tombstones and purging, the change feed, who may
//! sync, quotas, client-side encryption, and durability across restarts.

mod support;

use std::time::Duration;

use http::header::{self, HeaderName};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::{LogSink, TestServer, assert_error, contains, crash_image, encodings, register};
use wheresmyfox::client::{HttpClient, OwnerClient};
use wheresmyfox::clock::now_ms;
use wheresmyfox::datasync::client::{Change, SyncClient, SyncError};
use wheresmyfox::datasync::crypto::{KEYS_COLLECTION, RootKey};

/// A root key from fixed key material (fast); the two-device test derives one from a secret.
fn root(owner: &OwnerClient) -> RootKey {
    RootKey::from_key_material(&[7u8; 32], &owner.userid)
}

fn as_owner(server: &TestServer, owner: &OwnerClient) -> SyncClient {
    SyncClient::owner(server.http(), &owner.token, root(owner))
}

async fn as_device(server: &TestServer, owner: &mut OwnerClient, name: &str) -> SyncClient {
    let (id, secret) = register(owner, name).await;
    SyncClient::device(server.http(), &id, &secret, root(owner))
}

async fn call(
    client: &mut SyncClient,
    method: Method,
    path: &str,
    headers: &[(HeaderName, &str)],
    body: Option<Value>,
) -> wheresmyfox::datasync::client::SyncReply {
    let headers: Vec<(HeaderName, String)> = headers
        .iter()
        .map(|(n, v)| (n.clone(), (*v).to_owned()))
        .collect();
    client
        .request(method, path, &headers, body.as_ref())
        .await
        .expect("request")
}

fn ids(body: &Value) -> Vec<String> {
    body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

// === 1, 2: collections, records, revisions ===

#[tokio::test]
async fn records_are_opaque_collections_appear_on_first_write_and_revisions_only_grow() {
    let server = TestServer::start().await;
    let owner = server.owner("records").await;
    let mut client = as_owner(&server, &owner);

    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None).await;
    assert_eq!(
        (info.status, info.body.clone()),
        (StatusCode::OK, json!({}))
    );

    // The payload is never parsed: anything that is a string is kept byte for byte.
    let odd = "not json {\u{0}\"'<>  ünïcødé";
    let put = call(
        &mut client,
        Method::PUT,
        "/1/storage/bookmarks/b-1",
        &[],
        Some(json!({"payload": odd, "sortindex": 5})),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    assert_eq!(put.body["rev"], 1);
    assert_eq!(put.etag, Some(1));
    assert_eq!(put.user_rev, Some(1));
    let got = call(
        &mut client,
        Method::GET,
        "/1/storage/bookmarks/b-1",
        &[],
        None,
    )
    .await;
    assert_eq!(
        got.body,
        json!({"id": "b-1", "rev": 1, "payload": odd, "sortindex": 5})
    );
    assert_eq!(got.etag, Some(1));

    // Each write takes the user's next revision, whatever the collection.
    let put = call(
        &mut client,
        Method::PUT,
        "/1/storage/tabs.v2/t_1~x",
        &[],
        Some(json!({"payload": "x"})),
    )
    .await;
    assert_eq!(put.body["rev"], 2);
    let put = call(
        &mut client,
        Method::PUT,
        "/1/storage/bookmarks/b-1",
        &[],
        Some(json!({"payload": "y"})),
    )
    .await;
    assert_eq!(put.body["rev"], 3);
    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None).await;
    assert_eq!(info.body, json!({"bookmarks": 3, "tabs.v2": 2}));
    assert_eq!(info.etag, Some(3));

    // Bad names, ids and bodies are refused with a reason, and change nothing.
    for (path, needle) in [
        ("/1/storage/bad%20name/x", "collection"),
        (
            "/1/storage/a-name-that-is-far-too-long-for-us-x/x",
            "collection",
        ),
        ("/1/storage/ok/bad%2Fid", "id"),
        (&format!("/1/storage/ok/{}", "i".repeat(65)), "id"),
    ] {
        let reply = call(
            &mut client,
            Method::PUT,
            path,
            &[],
            Some(json!({"payload": "x"})),
        )
        .await;
        assert_error(reply.status, &reply.body, 400, 101, needle);
    }
    for (body, needle) in [
        (json!({"payload": 5}), "payload"),
        (json!({}), "payload"),
        (json!({"payload": "x", "sortindex": "high"}), "sortindex"),
        (json!({"payload": "x", "ttl": 0}), "ttl"),
        (json!({"payload": "x", "colour": "red"}), "colour"),
        (json!({"payload": "x", "id": "other"}), "id"),
    ] {
        let reply = call(&mut client, Method::PUT, "/1/storage/ok/x", &[], Some(body)).await;
        assert_error(reply.status, &reply.body, 400, 101, needle);
    }
    let reply = call(
        &mut client,
        Method::PUT,
        "/1/storage/ok/x",
        &[],
        Some(json!([1])),
    )
    .await;
    assert_error(reply.status, &reply.body, 400, 100, "object");
    let reply = call(&mut client, Method::PATCH, "/1/storage/ok/x", &[], None).await;
    assert_error(reply.status, &reply.body, 405, 131, "PUT");
    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None).await;
    assert_eq!(info.body, json!({"bookmarks": 3, "tabs.v2": 2}));
    let missing = call(&mut client, Method::GET, "/1/storage/ok/x", &[], None).await;
    assert_error(missing.status, &missing.body, 404, 130, "not found");
}

// === 3: incremental reads ===

#[tokio::test]
async fn since_reads_return_changes_and_tombstones_in_revision_order_page_by_page() {
    let server = TestServer::start().await;
    let owner = server.owner("since").await;
    let mut client = as_owner(&server, &owner);
    for (i, id) in ["c", "a", "b"].iter().enumerate() {
        let reply = call(
            &mut client,
            Method::PUT,
            &format!("/1/storage/notes/{id}"),
            &[],
            Some(json!({"payload": format!("v{i}")})),
        )
        .await;
        assert_eq!(reply.body["rev"], i as u64 + 1);
    }
    // A batch shares one revision: ties are ordered by id.
    let batch = call(
        &mut client,
        Method::POST,
        "/1/storage/notes",
        &[],
        Some(json!([{"id": "z", "payload": "1"}, {"id": "d", "payload": "2"}])),
    )
    .await;
    assert_eq!(batch.body, json!({"rev": 4, "ids": ["z", "d"]}));
    let deleted = call(&mut client, Method::DELETE, "/1/storage/notes/a", &[], None).await;
    assert_eq!(deleted.body["rev"], 5);

    let page = call(
        &mut client,
        Method::GET,
        "/1/storage/notes?since=1",
        &[],
        None,
    )
    .await;
    assert_eq!(ids(&page.body), ["b", "d", "z", "a"]);
    assert_eq!(
        page.body["records"][3],
        json!({"id": "a", "rev": 5, "deleted": true})
    );
    assert_eq!(page.body["rev"], 5);
    assert_eq!(page.body["next"], Value::Null);

    // Pages of two, following the opaque cursor, give the same sequence.
    let mut seen = Vec::new();
    let mut path = "/1/storage/notes?since=1&limit=2".to_owned();
    loop {
        let page = call(&mut client, Method::GET, &path, &[], None).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        seen.extend(ids(&page.body));
        match page.body["next"].as_str() {
            Some(next) => path = format!("/1/storage/notes?since=1&limit=2&offset={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ["b", "d", "z", "a"]);

    // A full read (since=0) lists what is live; tombstones are for devices that synced before.
    let full = call(&mut client, Method::GET, "/1/storage/notes", &[], None).await;
    assert_eq!(ids(&full.body), ["c", "b", "d", "z"]);
    let nothing = call(
        &mut client,
        Method::GET,
        "/1/storage/notes?since=5",
        &[],
        None,
    )
    .await;
    assert_eq!(nothing.body["records"], json!([]));
    let unknown = call(&mut client, Method::GET, "/1/storage/never", &[], None).await;
    assert_eq!(unknown.body, json!({"records": [], "next": null, "rev": 0}));

    for (path, needle) in [
        ("/1/storage/notes?since=-1", "since"),
        ("/1/storage/notes?limit=0", "limit"),
        ("/1/storage/notes?limit=1001", "limit"),
        ("/1/storage/notes?offset=garbage!", "offset"),
    ] {
        let reply = call(&mut client, Method::GET, path, &[], None).await;
        assert_error(reply.status, &reply.body, 400, 101, needle);
    }

    let config = call(&mut client, Method::GET, "/1/info/configuration", &[], None).await;
    assert_eq!(config.body["max_post_records"], 100);
    assert_eq!(config.body["max_record_payload_bytes"], 262_144);
    let quota = call(&mut client, Method::GET, "/1/info/quota", &[], None).await;
    assert_eq!(quota.body["records"], 4);
    // Ids and payloads: c v0, b v2, z 1, d 2, and the tombstone's id a.
    assert_eq!(quota.body["bytes"], 3 + 3 + 2 + 2 + 1);
    assert_eq!(quota.body["max_records"], 100_000);
}

// === 4: optimistic concurrency ===

#[tokio::test]
async fn if_match_refuses_a_stale_write_with_the_current_revision_and_if_none_match_creates_or_caches()
 {
    let server = TestServer::start().await;
    let owner = server.owner("conditional").await;
    let mut client = as_owner(&server, &owner);
    let body = || Some(json!({"payload": "x"}));

    let created = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_NONE_MATCH, "*")],
        body(),
    )
    .await;
    assert_eq!(created.body["rev"], 1);
    let again = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_NONE_MATCH, "*")],
        body(),
    )
    .await;
    assert_error(again.status, &again.body, 412, 301, "already exists");
    assert_eq!(again.body["current"], 1);

    let ok = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_MATCH, "\"1\"")],
        body(),
    )
    .await;
    assert_eq!(ok.body["rev"], 2);
    let stale = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_MATCH, "\"1\"")],
        body(),
    )
    .await;
    assert_error(stale.status, &stale.body, 412, 300, "now 2");
    assert_eq!(stale.body["current"], 2);
    assert_eq!(stale.etag, Some(2));
    let stale_delete = call(
        &mut client,
        Method::DELETE,
        "/1/storage/c/r",
        &[(header::IF_MATCH, "\"1\"")],
        None,
    )
    .await;
    assert_error(stale_delete.status, &stale_delete.body, 412, 300, "now 2");

    // On a collection: If-Match is the collection's revision.
    let other = call(&mut client, Method::PUT, "/1/storage/d/x", &[], body()).await;
    assert_eq!(other.body["rev"], 3);
    let stale_batch = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[(header::IF_MATCH, "\"1\"")],
        Some(json!([{"id": "n", "payload": "1"}])),
    )
    .await;
    assert_error(stale_batch.status, &stale_batch.body, 412, 300, "now 2");
    let batch = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[(header::IF_MATCH, "\"2\"")],
        Some(json!([{"id": "n", "payload": "1"}])),
    )
    .await;
    assert_eq!(batch.body["rev"], 4);

    // Reads: If-None-Match with the revision the client has gives 304 and no body.
    let cached = call(
        &mut client,
        Method::GET,
        "/1/storage/c/r",
        &[(header::IF_NONE_MATCH, "\"2\"")],
        None,
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert_eq!(cached.body, Value::Null);
    let cached = call(
        &mut client,
        Method::GET,
        "/1/storage/c",
        &[(header::IF_NONE_MATCH, "\"4\"")],
        None,
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let cached = call(
        &mut client,
        Method::GET,
        "/1/info/collections",
        &[(header::IF_NONE_MATCH, "\"4\"")],
        None,
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    let changed = call(
        &mut client,
        Method::GET,
        "/1/storage/c",
        &[(header::IF_NONE_MATCH, "\"2\"")],
        None,
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    assert_eq!(changed.etag, Some(4));

    let bad = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_MATCH, "soon")],
        body(),
    )
    .await;
    assert_error(bad.status, &bad.body, 400, 101, "If-Match");
    let both = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/r",
        &[(header::IF_MATCH, "\"2\""), (header::IF_NONE_MATCH, "*")],
        body(),
    )
    .await;
    assert_error(both.status, &both.body, 400, 101, "If-None-Match");

    // What a client does on 412: read, merge, retry on the revision it read.
    let mut a = as_owner(&server, &owner);
    let mut b = as_owner(&server, &owner);
    let rev = a.put("contacts", "ada", b"Ada, +44 1", None).await.unwrap();
    b.put("contacts", "ada", b"Ada, +44 2", Some(rev))
        .await
        .unwrap();
    let conflict = a.put("contacts", "ada", b"Ada, +44 3", Some(rev)).await;
    let Err(SyncError::Conflict { current }) = conflict else {
        panic!("expected a conflict, got {conflict:?}");
    };
    let (theirs, at) = a.get("contacts", "ada").await.unwrap().unwrap();
    assert_eq!((theirs.as_slice(), at), (b"Ada, +44 2".as_slice(), current));
    a.put("contacts", "ada", b"Ada, +44 2 / +44 3", Some(at))
        .await
        .unwrap();
}

// === 5: atomic batches ===

#[tokio::test]
async fn a_batch_is_applied_all_or_nothing_and_oversized_records_are_refused_up_front() {
    let server = TestServer::start_with(|c| {
        c.sync.max_record_bytes = 100;
        c.sync.max_post_records = 3;
        c.sync.max_post_bytes = 250;
    })
    .await;
    let owner = server.owner("batch").await;
    let mut client = as_owner(&server, &owner);
    call(
        &mut client,
        Method::PUT,
        "/1/storage/c/keep",
        &[],
        Some(json!({"payload": "k"})),
    )
    .await;

    // One bad entry: nothing is applied, and each bad entry says why.
    let rejected = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(json!([
            {"id": "a", "payload": "1"},
            {"id": "b", "payload": 2},
            {"id": "bad id", "payload": "3"},
        ])),
    )
    .await;
    assert_error(rejected.status, &rejected.body, 400, 304, "not applied");
    assert!(
        rejected.body["failed"]["b"]
            .as_str()
            .unwrap()
            .contains("payload"),
        "{}",
        rejected.body
    );
    assert!(
        rejected.body["failed"]["#2"]
            .as_str()
            .unwrap()
            .contains("id"),
        "{}",
        rejected.body
    );
    assert_eq!(rejected.body["failed"].as_object().unwrap().len(), 2);
    let missing_delete = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(json!([{"id": "a", "payload": "1"}, {"id": "ghost", "deleted": true}])),
    )
    .await;
    assert_error(
        missing_delete.status,
        &missing_delete.body,
        400,
        304,
        "not applied",
    );
    assert_eq!(
        missing_delete.body["failed"],
        json!({"ghost": "no such record"})
    );
    let read = call(&mut client, Method::GET, "/1/storage/c", &[], None).await;
    assert_eq!(ids(&read.body), ["keep"]);
    assert_eq!(read.body["rev"], 1);

    // Oversized: one record past the limit, too many records, too many bytes: 413 with the limit.
    let big = "x".repeat(101);
    let reply = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(json!([{"id": "a", "payload": big}])),
    )
    .await;
    assert_error(reply.status, &reply.body, 413, 302, "100 bytes");
    assert_eq!(reply.body["limit"], 100);
    let reply = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/a",
        &[],
        Some(json!({"payload": big})),
    )
    .await;
    assert_error(reply.status, &reply.body, 413, 302, "100 bytes");
    let four: Vec<Value> = (0..4)
        .map(|i| json!({"id": format!("r{i}"), "payload": "p"}))
        .collect();
    let reply = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(Value::Array(four)),
    )
    .await;
    assert_error(reply.status, &reply.body, 413, 303, "limit is 3");
    let heavy: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("r{i}"), "payload": "y".repeat(90)}))
        .collect();
    let reply = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(Value::Array(heavy)),
    )
    .await;
    assert_error(reply.status, &reply.body, 413, 303, "limit is 250");

    // A good batch: puts and a delete at one revision.
    let applied = call(
        &mut client,
        Method::POST,
        "/1/storage/c",
        &[],
        Some(json!([{"id": "a", "payload": "1"}, {"id": "b", "payload": "2"}, {"id": "keep", "deleted": true}])),
    )
    .await;
    assert_eq!(applied.body["rev"], 2, "{}", applied.body);
    let read = call(&mut client, Method::GET, "/1/storage/c?since=1", &[], None).await;
    let revs: Vec<u64> = read.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rev"].as_u64().unwrap())
        .collect();
    assert_eq!(ids(&read.body), ["a", "b", "keep"]);
    assert_eq!(revs, [2, 2, 2]);
}

// === 6: tombstones and purging ===

#[tokio::test]
async fn deletes_leave_tombstones_and_purging_removes_only_old_tombstones_and_expired_records() {
    let server = TestServer::start_with(|c| c.sync.tombstone_ttl_secs = 60).await;
    let owner = server.owner("purge").await;
    let mut client = as_owner(&server, &owner);
    for id in ["live", "gone"] {
        call(
            &mut client,
            Method::PUT,
            &format!("/1/storage/c/{id}"),
            &[],
            Some(json!({"payload": "p"})),
        )
        .await;
    }
    call(
        &mut client,
        Method::PUT,
        "/1/storage/c/brief",
        &[],
        Some(json!({"payload": "p", "ttl": 30})),
    )
    .await;
    let deleted = call(&mut client, Method::DELETE, "/1/storage/c/gone", &[], None).await;
    assert_eq!(
        deleted.body,
        json!({"id": "gone", "rev": 4, "deleted": true})
    );
    let again = call(&mut client, Method::DELETE, "/1/storage/c/gone", &[], None).await;
    assert_error(again.status, &again.body, 404, 130, "not found");
    let tombstone = call(&mut client, Method::GET, "/1/storage/c?since=3", &[], None).await;
    assert_eq!(
        tombstone.body["records"],
        json!([{"id": "gone", "rev": 4, "deleted": true}])
    );

    // Before their time nothing goes.
    let gateway = &server.gateway;
    assert_eq!(
        gateway
            .sync
            .purge_all(now_ms(), &gateway.config.sync, &gateway.journal),
        0
    );
    // 40 s on: the ttl record has expired, the tombstone is still young.
    assert_eq!(
        gateway
            .sync
            .purge_all(now_ms() + 40_000, &gateway.config.sync, &gateway.journal),
        1
    );
    let full = call(&mut client, Method::GET, "/1/storage/c", &[], None).await;
    assert_eq!(ids(&full.body), ["live"]);
    let tombstone = call(&mut client, Method::GET, "/1/storage/c?since=3", &[], None).await;
    assert_eq!(tombstone.body["records"].as_array().unwrap().len(), 1);
    // 61 s on: the tombstone goes, the live record stays.
    assert_eq!(
        gateway
            .sync
            .purge_all(now_ms() + 61_000, &gateway.config.sync, &gateway.journal),
        1
    );
    let full = call(&mut client, Method::GET, "/1/storage/c", &[], None).await;
    assert_eq!(ids(&full.body), ["live"]);
    // A device that synced before the purged delete cannot be told about it: start over.
    let stale = call(&mut client, Method::GET, "/1/storage/c?since=3", &[], None).await;
    assert_error(stale.status, &stale.body, 410, 306, "since=0");
    assert_eq!(stale.body["horizon"], 4);
    let fresh = call(&mut client, Method::GET, "/1/storage/c?since=4", &[], None).await;
    assert_eq!(fresh.status, StatusCode::OK);
    let quota = call(&mut client, Method::GET, "/1/info/quota", &[], None).await;
    assert_eq!(quota.body["records"], 1);

    // Deleting a whole collection tombstones every live record at one revision.
    call(
        &mut client,
        Method::PUT,
        "/1/storage/c/more",
        &[],
        Some(json!({"payload": "p"})),
    )
    .await;
    let dropped = call(&mut client, Method::DELETE, "/1/storage/c", &[], None).await;
    assert_eq!(dropped.body["rev"], 6, "{}", dropped.body);
    let read = call(&mut client, Method::GET, "/1/storage/c?since=5", &[], None).await;
    assert_eq!(
        read.body["records"],
        json!([{"id": "live", "rev": 6, "deleted": true}, {"id": "more", "rev": 6, "deleted": true}])
    );
}

// === 7: the change feed ===

#[tokio::test]
async fn a_write_wakes_every_parked_feed_of_its_user_and_no_one_else() {
    let server = TestServer::start_with(|c| c.sync.max_feeds_per_user = 3).await;
    let mut owner = server.owner("feeds").await;
    let stranger = server.owner("stranger").await;
    let mut feeds = Vec::new();
    for i in 0..3 {
        let mut client = as_device(&server, &mut owner, &format!("feed {i}")).await;
        feeds.push(tokio::spawn(async move {
            client.wait_for_changes(0, 30).await.unwrap()
        }));
    }
    let mut strangers_feed = as_owner(&server, &stranger);
    let strangers =
        tokio::spawn(async move { strangers_feed.wait_for_changes(0, 5).await.unwrap() });
    server.until_parked(4).await;

    // A fourth feed of the same user is past the bound: 429 with Retry-After, at once.
    let mut fourth = as_owner(&server, &owner);
    let refused = call(
        &mut fourth,
        Method::GET,
        "/1/changes?since=0&wait=30",
        &[],
        None,
    )
    .await;
    assert_error(refused.status, &refused.body, 429, 307, "at most 3");
    assert!(refused.headers.contains_key(header::RETRY_AFTER));

    let mut writer = as_owner(&server, &owner);
    let rev = writer
        .put("tabs", "t1", b"https://example.com", None)
        .await
        .unwrap();
    for feed in feeds {
        let (woke_at, collections) = feed.await.unwrap();
        assert!(woke_at >= rev - 1, "{woke_at} {rev}");
        assert!(collections.contains_key("tabs") || collections.contains_key(KEYS_COLLECTION));
    }
    // The stranger's feed was not woken: it ran out its wait with nothing.
    let (their_rev, theirs) = strangers.await.unwrap();
    assert_eq!((their_rev, theirs.len()), (0, 0));

    // Behind already: answered at once, with every collection past `since`.
    let (now, collections) = writer.wait_for_changes(0, 30).await.unwrap();
    assert_eq!(now, rev);
    assert_eq!(collections["tabs"], json!(rev));
    assert_eq!(collections[KEYS_COLLECTION], json!(rev - 1));
    let bad = call(&mut writer, Method::GET, "/1/changes?since=x", &[], None).await;
    assert_error(bad.status, &bad.body, 400, 101, "since");
}

#[tokio::test]
async fn the_server_wide_feed_bound_sheds_load_with_retry_after() {
    let server = TestServer::start_with(|c| c.sync.max_feeds = 1).await;
    let owner = server.owner("shed").await;
    let mut first = as_owner(&server, &owner);
    let parked = tokio::spawn(async move { first.wait_for_changes(0, 30).await.unwrap() });
    server.until_parked(1).await;
    let other = server.owner("shed2").await;
    let mut second = as_owner(&server, &other);
    let refused = call(
        &mut second,
        Method::GET,
        "/1/changes?since=0&wait=30",
        &[],
        None,
    )
    .await;
    assert_error(refused.status, &refused.body, 503, 308, "try again");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    // Shutdown answers the parked feed at once.
    server.stop().await;
    let (rev, collections) = parked.await.unwrap();
    assert_eq!((rev, collections.len()), (0, 0));
}

// === 8: who may sync ===

#[tokio::test]
async fn devices_and_the_owner_share_one_users_data_and_no_one_else_sees_it() {
    let server = TestServer::start().await;
    let mut ada = server.owner("ada").await;
    let mut bob = server.owner("bob").await;
    let mut ada_phone = as_device(&server, &mut ada, "Ada's phone").await;
    let mut ada_owner = as_owner(&server, &ada);
    let mut bob_phone = as_device(&server, &mut bob, "Bob's phone").await;
    let mut bob_owner = as_owner(&server, &bob);

    // The device's answers are signed: the client checks Server-Authorization on each.
    let put = call(
        &mut ada_phone,
        Method::PUT,
        "/1/storage/contacts/c1",
        &[],
        Some(json!({"payload": "ada's"})),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK);
    assert!(put.headers.contains_key("server-authorization"));
    let read = call(
        &mut ada_owner,
        Method::GET,
        "/1/storage/contacts/c1",
        &[],
        None,
    )
    .await;
    assert_eq!(read.body["payload"], "ada's");
    let cached = call(
        &mut ada_phone,
        Method::GET,
        "/1/storage/contacts/c1",
        &[(header::IF_NONE_MATCH, "\"1\"")],
        None,
    )
    .await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.headers.contains_key("server-authorization"));

    // Bob, by device or token, sees nothing of Ada's; the same names are his own.
    for bob in [&mut bob_phone, &mut bob_owner] {
        let missing = call(bob, Method::GET, "/1/storage/contacts/c1", &[], None).await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        let listing = call(bob, Method::GET, "/1/storage/contacts", &[], None).await;
        assert_eq!(listing.body["records"], json!([]));
        let info = call(bob, Method::GET, "/1/info/collections", &[], None).await;
        assert_eq!(info.body, json!({}));
        let quota = call(bob, Method::GET, "/1/info/quota", &[], None).await;
        assert_eq!(quota.body["records"], 0);
        let delete = call(bob, Method::DELETE, "/1/storage/contacts/c1", &[], None).await;
        assert_eq!(delete.status, StatusCode::NOT_FOUND);
    }
    let bobs = call(
        &mut bob_phone,
        Method::PUT,
        "/1/storage/contacts/c1",
        &[],
        Some(json!({"payload": "bob's"})),
    )
    .await;
    assert_eq!(bobs.body["rev"], 1);
    let read = call(
        &mut ada_owner,
        Method::GET,
        "/1/storage/contacts/c1",
        &[],
        None,
    )
    .await;
    assert_eq!(read.body["payload"], "ada's");

    // No credentials, a bad token, a bad signature: 401 and nothing read.
    let mut http = HttpClient::new(server.addr);
    let (status, body) = http
        .json(Method::GET, "/1/storage/contacts", None, None)
        .await
        .unwrap();
    assert_error(status, &body, 401, 110, "Bearer");
    let (status, body) = http
        .json(Method::GET, "/1/storage/contacts", Some("forged"), None)
        .await
        .unwrap();
    assert_error(status, &body, 401, 111, "token");
    let (id, _) = register(&mut ada, "stolen id").await;
    let mut forger = SyncClient::device(
        server.http(),
        &id,
        "0123456789abcdef0123456789abcdef",
        root(&ada),
    );
    let forged = forger
        .request(Method::GET, "/1/storage/contacts", &[], None)
        .await
        .unwrap();
    assert_error(forged.status, &forged.body, 401, 115, "MAC");
}

// === 9: quotas ===

#[tokio::test]
async fn past_the_quota_writes_get_507_and_deletes_still_work() {
    let server = TestServer::start_with(|c| {
        c.sync.max_user_records = 2;
        c.sync.max_record_bytes = 100;
        c.sync.max_user_bytes = 100;
    })
    .await;
    let owner = server.owner("quota").await;
    let mut client = as_owner(&server, &owner);
    for id in ["a", "b"] {
        call(
            &mut client,
            Method::PUT,
            &format!("/1/storage/c/{id}"),
            &[],
            Some(json!({"payload": "p"})),
        )
        .await;
    }
    let over = call(
        &mut client,
        Method::PUT,
        "/1/storage/other/c",
        &[],
        Some(json!({"payload": "p"})),
    )
    .await;
    assert_error(over.status, &over.body, 507, 305, "limit is 2");
    // Replacing a record does not add one; too many bytes is refused too.
    let replace = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/a",
        &[],
        Some(json!({"payload": "q"})),
    )
    .await;
    assert_eq!(replace.status, StatusCode::OK);
    let heavy = call(
        &mut client,
        Method::PUT,
        "/1/storage/c/a",
        &[],
        Some(json!({"payload": "x".repeat(99)})),
    )
    .await;
    assert_error(heavy.status, &heavy.body, 507, 305, "limit is 100");
    let deleted = call(&mut client, Method::DELETE, "/1/storage/c/b", &[], None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let now_fits = call(
        &mut client,
        Method::PUT,
        "/1/storage/other/c",
        &[],
        Some(json!({"payload": "p"})),
    )
    .await;
    assert_eq!(now_fits.status, StatusCode::OK);
    let quota = call(&mut client, Method::GET, "/1/info/quota", &[], None).await;
    assert_eq!(quota.body["records"], 2);
    assert_eq!(quota.body["max_records"], 2);
}

// === 10: client-side encryption ===

#[tokio::test]
async fn no_plaintext_or_key_reaches_the_journal_snapshots_or_logs() {
    let sink = LogSink::install();
    let server = TestServer::start().await;
    let owner = server.owner("secret").await;
    let secret = "a passphrase that stays on this phone";
    let root = RootKey::derive(secret, &owner.userid).unwrap();
    let mut client = SyncClient::owner(server.http(), &owner.token, root.clone());
    let plaintexts: [&[u8]; 2] = [b"Grace Hopper, +1 555 0100", b"Alan Turing, +44 555 0199"];
    client
        .put("contacts", "c1", plaintexts[0], None)
        .await
        .unwrap();
    client
        .put_many("contacts", &[("c2", plaintexts[1])])
        .await
        .unwrap();
    server.gateway.snapshot().await.unwrap();
    client
        .put("contacts", "c3", plaintexts[0], None)
        .await
        .unwrap();
    let key = client.collection_key("contacts").await.unwrap();

    // The server holds ciphertext: what it stores does not open under another record's name.
    let mut raw = as_owner(&server, &owner);
    let stored = call(&mut raw, Method::GET, "/1/storage/contacts/c1", &[], None).await;
    let payload = stored.body["payload"].as_str().unwrap();
    assert!(!payload.contains("Grace"));
    assert!(wheresmyfox::datasync::crypto::open(&key, "contacts", "c2", payload).is_err());
    assert_eq!(
        wheresmyfox::datasync::crypto::open(&key, "contacts", "c1", payload).unwrap(),
        plaintexts[0]
    );
    // Swapping two ciphertexts on the server is caught by the client.
    let c2 = call(&mut raw, Method::GET, "/1/storage/contacts/c2", &[], None).await;
    call(
        &mut raw,
        Method::PUT,
        "/1/storage/contacts/c1",
        &[],
        Some(json!({"payload": c2.body["payload"]})),
    )
    .await;
    assert!(matches!(
        client.get("contacts", "c1").await,
        Err(SyncError::Crypto(_))
    ));

    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for plaintext in plaintexts {
        secrets.push(plaintext.to_vec());
        secrets.push(b"Grace".to_vec());
    }
    secrets.push(secret.as_bytes().to_vec());
    secrets.extend(encodings(key.expose()));
    secrets.extend(encodings(root.0.expose()));

    let mut files = Vec::new();
    for entry in std::fs::read_dir(server.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(files.iter().any(|(p, _)| p.contains("journal-")));
    assert!(files.iter().any(|(p, _)| p.contains("snapshot-")));
    // The ciphertext is there (it is what the server keeps), the rest is not.
    let sealed: Value = serde_json::from_str(payload).unwrap();
    let ciphertext = sealed["ct"].as_str().unwrap().as_bytes();
    assert!(files.iter().any(|(_, bytes)| contains(bytes, ciphertext)));
    files.push(("log".into(), sink.bytes()));
    for (name, bytes) in &files {
        for secret in &secrets {
            assert!(
                !contains(bytes, secret),
                "{name} holds a secret ({} bytes)",
                secret.len()
            );
        }
    }
}

// === 11: durability ===

#[tokio::test]
async fn sync_data_survives_a_crash_and_a_clean_restart() {
    let server = TestServer::start().await;
    let mut owner = server.owner("durable").await;
    let mut client = as_owner(&server, &owner);
    client.put("contacts", "a", b"Ada", None).await.unwrap();
    client
        .put_many("contacts", &[("b", b"Bob"), ("c", b"Cy")])
        .await
        .unwrap();
    server.gateway.snapshot().await.unwrap();
    // After the snapshot: only in the journal.
    client.put("contacts", "a", b"Ada v2", None).await.unwrap();
    let deleted = client.delete("contacts", "c", None).await.unwrap();
    server.gateway.sync.purge_all(
        now_ms() + 400 * 86_400_000,
        &server.gateway.config.sync,
        &server.gateway.journal,
    );
    // The purge's record is not waited for (a purge lost to a crash is done again); a later
    // change that is waited for flushes it too, so the crash below keeps it.
    OwnerClient::sign_in_with(server.http(), "durable@example.com", support::PASSWORD)
        .await
        .unwrap();
    let raw = as_owner(&server, &owner);
    let before = snapshot_of(raw).await;
    // a, b and the collection's key record.
    assert_eq!(before.1["records"], 3, "{:?}", before);

    // A crash: restart from the files as they are, without the final snapshot.
    let copy = crash_image(server.dir.path());
    let userid = owner.userid.clone();
    drop(server);
    let server = TestServer::start_in(copy, |_| {}).await;
    owner = OwnerClient::sign_in_with(server.http(), "durable@example.com", support::PASSWORD)
        .await
        .unwrap();
    assert_eq!(owner.userid, userid);
    let after = snapshot_of(as_owner(&server, &owner)).await;
    assert_eq!(after, before);

    // The revision goes on from where it was, and a clean restart keeps it all too.
    let mut client = as_owner(&server, &owner);
    let next = client.put("contacts", "d", b"Di", None).await.unwrap();
    assert_eq!(next, deleted + 1);
    let before = snapshot_of(as_owner(&server, &owner)).await;
    let dir = server.stop_keeping_data().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    owner.http = server.http();
    let mut client = as_owner(&server, &owner);
    assert_eq!(snapshot_of(as_owner(&server, &owner)).await, before);
    let (plaintext, _) = client.get("contacts", "a").await.unwrap().unwrap();
    assert_eq!(plaintext, b"Ada v2");
    let (changes, _) = client.changes_since("contacts", 0, 2).await.unwrap();
    let mut names: Vec<Vec<u8>> = changes
        .into_iter()
        .map(|c| match c {
            Change::Put { plaintext, .. } => plaintext,
            Change::Deleted { id, .. } => panic!("a full read lists no tombstone ({id})"),
        })
        .collect();
    names.sort();
    assert_eq!(names, [b"Ada v2".to_vec(), b"Bob".to_vec(), b"Di".to_vec()]);
}

/// Everything a user can read: collections, quota, and every collection's full history.
async fn snapshot_of(mut client: SyncClient) -> (Value, Value, Vec<Value>) {
    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None)
        .await
        .body;
    let quota = call(&mut client, Method::GET, "/1/info/quota", &[], None)
        .await
        .body;
    let mut reads = Vec::new();
    for name in info.as_object().unwrap().keys() {
        reads.push(
            call(
                &mut client,
                Method::GET,
                &format!("/1/storage/{name}?since=0"),
                &[],
                None,
            )
            .await
            .body,
        );
        reads.push(
            call(
                &mut client,
                Method::GET,
                &format!("/1/storage/{name}?since=1"),
                &[],
                None,
            )
            .await
            .body,
        );
    }
    (info, quota, reads)
}

// === Two devices ===

#[tokio::test]
async fn a_write_on_one_device_wakes_the_others_feed_which_reads_and_decrypts_it() {
    let server = TestServer::start().await;
    let mut owner = server.owner("two-devices").await;
    let passphrase = "the family's sync passphrase";
    let (phone_id, phone_secret) = register(&mut owner, "Phone").await;
    let (tablet_id, tablet_secret) = register(&mut owner, "Tablet").await;
    // Each device derives the same root key from the passphrase on its own.
    let mut phone = SyncClient::device(
        server.http(),
        &phone_id,
        &phone_secret,
        RootKey::derive(passphrase, &owner.userid).unwrap(),
    );
    let mut tablet = SyncClient::device(
        server.http(),
        &tablet_id,
        &tablet_secret,
        RootKey::derive(passphrase, &owner.userid).unwrap(),
    );

    // The tablet catches up (nothing yet) and parks on the feed.
    let (initial, since) = tablet.changes_since("contacts", 0, 100).await.unwrap();
    assert!(initial.is_empty());
    let user_rev = tablet
        .request(Method::GET, "/1/info/collections", &[], None)
        .await
        .unwrap()
        .etag
        .unwrap();
    let feed = tokio::spawn(async move {
        let woke = tablet.wait_for_changes(user_rev, 30).await.unwrap();
        (tablet, woke)
    });
    server.until_parked(1).await;

    let rev = phone
        .put("contacts", "grace", b"Grace Hopper, +1 555 0100", None)
        .await
        .unwrap();
    let (mut tablet, (woke_at, collections)) = tokio::time::timeout(Duration::from_secs(10), feed)
        .await
        .expect("the feed woke")
        .unwrap();
    assert_eq!(woke_at, rev);
    assert_eq!(collections["contacts"], json!(rev));

    let (changes, next_since) = tablet.changes_since("contacts", since, 100).await.unwrap();
    assert_eq!(
        changes,
        vec![Change::Put {
            id: "grace".into(),
            rev,
            plaintext: b"Grace Hopper, +1 555 0100".to_vec()
        }]
    );
    assert_eq!(next_since, rev);

    // And back: the tablet deletes, the phone learns of it from a since read.
    tablet.delete("contacts", "grace", Some(rev)).await.unwrap();
    let (changes, _) = phone
        .changes_since("contacts", next_since, 100)
        .await
        .unwrap();
    assert_eq!(
        changes,
        vec![Change::Deleted {
            id: "grace".into(),
            rev: rev + 1
        }]
    );
}

// === Configuration and transport limits ===

#[test]
fn sync_settings_out_of_range_stop_start_up_naming_the_key() {
    use wheresmyfox::Config;
    for (toml, key) in [
        ("[sync]\nmax_post_bytes = 3000000\n", "sync.max_post_bytes"),
        (
            "[sync]\nmax_record_bytes = 4000000\n",
            "sync.max_record_bytes",
        ),
        (
            "[sync]\nmax_feeds_per_user = 0\n",
            "sync.max_feeds_per_user",
        ),
        (
            "[sync]\ntombstone_ttl_secs = 5\n",
            "sync.tombstone_ttl_secs",
        ),
        ("[sync]\nmax_feed = 5\n", "max_feed"),
    ] {
        let error = Config::from_toml(toml).unwrap_err().to_string();
        assert!(error.contains(key), "{error}");
    }
    let config = Config::from_toml("[sync]\nmax_post_records = 10\n").unwrap();
    assert_eq!(config.sync.max_post_records, 10);
}

#[tokio::test]
async fn bodies_past_the_sync_limits_or_of_another_type_are_refused() {
    let server = TestServer::start_with(|c| c.sync.max_record_bytes = 100).await;
    let owner = server.owner("limits").await;
    let mut http = HttpClient::new(server.addr);
    let auth = (header::AUTHORIZATION, format!("Bearer {}", owner.token));
    // A PUT body may be at most twice the record limit plus 4 KiB: past it, 413 before parsing.
    let huge = bytes::Bytes::from(vec![b'x'; 2 * 100 + 4096 + 1]);
    let reply = http
        .send(
            Method::PUT,
            "/1/storage/c/x",
            &[
                auth.clone(),
                (header::CONTENT_TYPE, "application/json".into()),
            ],
            huge,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 413, 102, "4296 bytes");
    let reply = http
        .send(
            Method::PUT,
            "/1/storage/c/x",
            &[auth, (header::CONTENT_TYPE, "text/plain".into())],
            bytes::Bytes::from_static(br#"{"payload":"x"}"#),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_error(reply.status, &body, 415, 105, "application/json");
    let mut client = as_owner(&server, &owner);
    let info = call(&mut client, Method::GET, "/1/info/collections", &[], None).await;
    assert_eq!(info.body, json!({}));
}

#[tokio::test]
async fn snapshots_taken_while_devices_write_lose_nothing() {
    let server = TestServer::start().await;
    let owner = server.owner("busy-sync").await;
    let addr = server.addr;
    let mut writers = Vec::new();
    for w in 0..4 {
        let token = owner.token.clone();
        writers.push(tokio::spawn(async move {
            let mut http = HttpClient::new(addr);
            let mut answered = Vec::new();
            for i in 0..30 {
                let (path, body) = if i % 3 == 2 {
                    let batch = json!([{"id": format!("w{w}-b{i}"), "payload": "b"}, {"id": format!("w{w}-c{i}"), "payload": "c"}]);
                    (format!("/1/storage/c{w}"), batch)
                } else {
                    (format!("/1/storage/c{w}/w{w}-{i}"), json!({"payload": format!("{w}/{i}")}))
                };
                let method = if i % 3 == 2 { Method::POST } else { Method::PUT };
                let (status, reply) = http.json(method, &path, Some(&token), Some(&body)).await.unwrap();
                assert_eq!(status, StatusCode::OK, "{reply}");
                answered.push(reply["rev"].as_u64().unwrap());
            }
            answered
        }));
    }
    for _ in 0..5 {
        server.gateway.snapshot().await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut revisions = Vec::new();
    for writer in writers {
        revisions.extend(writer.await.unwrap());
    }
    revisions.sort_unstable();
    // Every write took its own revision, 1 to 120, none shared between two requests.
    assert_eq!(revisions, (1..=120).collect::<Vec<u64>>());
    let before = snapshot_of(as_owner(&server, &owner)).await;
    let copy = crash_image(server.dir.path());
    drop(server);
    let server = TestServer::start_in(copy, |_| {}).await;
    let owner =
        OwnerClient::sign_in_with(server.http(), "busy-sync@example.com", support::PASSWORD)
            .await
            .unwrap();
    let after = snapshot_of(as_owner(&server, &owner)).await;
    assert_eq!(after, before);
    assert_eq!(after.1["records"], 4 * (20 + 20));
}
