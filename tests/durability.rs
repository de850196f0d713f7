//! Durability: what was answered survives a restart, a crash, a torn write; damage is reported
//! and repaired, never silently dropped.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::binary::Binary;
use support::{PASSWORD, TestServer, crash_image, device_view, register};
use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient, random_secret};
use wheresmyfox::store::StoreError;

fn files(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .filter(|p| !p.to_str().unwrap().contains(".damaged"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn everything_answered_survives_a_clean_restart() {
    let server = TestServer::start().await;
    let mut owner = server.owner("restart").await;
    let (id, secret) = register(&mut owner, "Kept phone").await;
    let (gone, _) = register(&mut owner, "Forgotten phone").await;
    let mut device = DeviceClient::new(server.http(), &id, &secret);
    owner
        .command(&id, &json!({"l":{"c":"0123"},"r":{"p":5,"d":60}}))
        .await
        .unwrap();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    device
        .exchange(&json!({"l":{"ok":true},"t":{"ok":true,"la":51.5,"lo":-0.12,"ti":1700000000},"has_passcode":true}), Some(0))
        .await
        .unwrap();
    owner
        .command(&id, &json!({"m":{"n":"555-0100","m":"Call me"}}))
        .await
        .unwrap();
    let (status, _) = owner
        .call(Method::DELETE, &format!("/1/devices/{gone}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let before = device_view(&mut owner, &id).await;

    let dir = server.stop_keeping_data().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    // The same token still works: sessions are durable.
    owner.http = HttpClient::new(server.addr);
    let after = device_view(&mut owner, &id).await;
    for field in ["name", "lockable", "last_position", "outcomes"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(after["state"]["locked"], json!(true));
    let pending: Vec<&str> = after["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["command"].as_str().unwrap())
        .collect();
    assert_eq!(
        pending,
        ["r", "m"],
        "the unanswered ring and the new message are still pending"
    );
    let (_, listed) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(
        listed["devices"].as_array().unwrap().len(),
        1,
        "the forgotten device stays forgotten"
    );
    // The device's secret still works, and its pending commands reach it.
    let mut device = DeviceClient::new(server.http(), &id, &secret);
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert_eq!(
        Value::Object(commands),
        json!({"m":{"n":"555-0100","m":"Call me"},"r":{"p":5,"d":60}})
    );
    // New sequence numbers continue after the old ones.
    let queued = owner.command(&id, &json!({"t":{"d":0}})).await.unwrap();
    let max_before = before["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(queued["queued"][0]["seq"].as_u64().unwrap() > max_before);
    // Signing in again works with the stored password hash.
    OwnerClient::sign_in_with(server.http(), "restart@example.com", PASSWORD)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_snapshot_taken_while_requests_flow_loses_nothing() {
    let server = TestServer::start_with(|c| c.devices.max_per_user = 1000).await;
    let mut owner = server.owner("snapshot").await;
    let (id, _) = register(&mut owner, "Busy phone").await;
    let addr = server.addr;
    let token = owner.token.clone();
    // Owners queue commands from several connections while snapshots are taken.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (id, token) = (id.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let mut http = HttpClient::new(addr);
            let mut answered = Vec::new();
            for i in 0..25 {
                let name = format!("w{w} i{i}");
                let (status, body) = http
                    .json(
                        Method::PATCH,
                        &format!("/1/devices/{id}"),
                        Some(&token),
                        Some(&json!({"name": name})),
                    )
                    .await
                    .unwrap();
                assert_eq!(status, StatusCode::OK, "{body}");
                let mut registration_owner = OwnerClient {
                    http: HttpClient::new(addr),
                    token: token.clone(),
                    userid: String::new(),
                };
                let (new_id, _) = register(&mut registration_owner, &name).await;
                answered.push(new_id);
            }
            answered
        }));
    }
    for _ in 0..5 {
        server.gateway.snapshot().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = Vec::new();
    for writer in writers {
        answered.extend(writer.await.unwrap());
    }
    let snapshots = files(server.dir.path(), "snapshot-");
    assert_eq!(
        snapshots.len(),
        2,
        "the last two snapshots are kept: {snapshots:?}"
    );
    let last_name = device_view(&mut owner, &id).await["name"].clone();

    let dir = server.stop_keeping_data().await;
    let server = TestServer::start_in(dir, |c| c.devices.max_per_user = 1000).await;
    owner.http = HttpClient::new(server.addr);
    let (_, listed) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    let ids: Vec<&str> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    for registered in &answered {
        assert!(
            ids.contains(&registered.as_str()),
            "device {registered} was answered 200 and must survive"
        );
    }
    assert_eq!(device_view(&mut owner, &id).await["name"], last_name);
}

#[tokio::test]
async fn a_torn_last_record_is_cut_and_everything_before_it_kept() {
    let server = TestServer::start().await;
    let mut owner = server.owner("torn").await;
    let (id, _) = register(&mut owner, "Torn phone").await;
    owner
        .command(&id, &json!({"r":{"p":1,"d":9}}))
        .await
        .unwrap();
    // Stop without the final snapshot's help: the journal holds everything.
    let dir = server.stop_keeping_data().await;
    let journal = files(dir.path(), "journal-").pop().unwrap();
    // A crash in the middle of appending a record: a length, a checksum, half a payload.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{', b'"'])
        .unwrap();
    drop(file);
    let server = TestServer::start_in(dir, |_| {}).await;
    owner.http = HttpClient::new(server.addr);
    let view = device_view(&mut owner, &id).await;
    assert_eq!(view["pending"][0]["command"], "r");
}

/// Flips a byte inside the first record of `journal`, which has later records after it.
fn corrupt_first_record(journal: &Path) {
    let mut bytes = std::fs::read(journal).unwrap();
    bytes[16 + 8 + 3] ^= 0x55;
    std::fs::write(journal, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_record_in_the_middle_stops_start_up_until_repaired() {
    let server = TestServer::start_with(|c| c.storage.snapshot_interval_secs = 3600).await;
    let mut owner = server.owner("damaged").await;
    let (id, _) = register(&mut owner, "Phone").await;
    owner.command(&id, &json!({"e":{}})).await.unwrap();
    let dir = server.stop_keeping_data().await;
    // The clean stop wrote a snapshot; damage the journal the snapshot does not cover by
    // adding records after it (a restart and more changes), then damaging one of them.
    let server = TestServer::start_in(dir, |_| {}).await;
    owner.http = HttpClient::new(server.addr);
    owner
        .command(&id, &json!({"r":{"p":1,"d":1}}))
        .await
        .unwrap();
    owner.command(&id, &json!({"t":{"d":0}})).await.unwrap();
    server.gateway.journal.close().await;
    let dir = server.stop_keeping_data().await;
    let journal = files(dir.path(), "journal-").pop().unwrap();
    let snapshots_before = files(dir.path(), "snapshot-");
    // The final snapshot already holds those changes; remove it so the journal is needed.
    std::fs::remove_file(snapshots_before.last().unwrap()).unwrap();
    corrupt_first_record(&journal);

    let (error, dir) = match TestServer::try_start_in(dir, |_| {}).await {
        Ok(_) => panic!("start-up must refuse a damaged journal"),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(
        matches!(error, StoreError::DamagedJournal { .. }),
        "{message}"
    );
    assert!(
        message.contains(journal.file_name().unwrap().to_str().unwrap()),
        "{message}"
    );
    assert!(message.contains("wheresmyfox repair"), "{message}");

    let config = wheresmyfox::Config::for_test(dir.path());
    let sealer = wheresmyfox::store::seal::Sealer::new(None);
    assert!(wheresmyfox::store::check(&config, &sealer).is_err());
    let done = wheresmyfox::store::repair(&config, &sealer).unwrap();
    assert!(done.iter().any(|line| line.contains("cut")), "{done:?}");
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_str()
            .unwrap()
            .contains(".damaged")
    }));
    let server = TestServer::start_in(dir, |_| {}).await;
    owner.http = HttpClient::new(server.addr);
    // The device from before the damage is there; what followed the damage is not.
    device_view(&mut owner, &id).await;
}

#[tokio::test]
async fn a_damaged_snapshot_stops_start_up_and_repair_falls_back_without_loss() {
    let server = TestServer::start().await;
    let mut owner = server.owner("snapdamage").await;
    let (first, _) = register(&mut owner, "First").await;
    server.gateway.snapshot().await.unwrap();
    let (second, _) = register(&mut owner, "Second").await;
    owner
        .command(&second, &json!({"r":{"p":2,"d":20}}))
        .await
        .unwrap();
    let dir = server.stop_keeping_data().await;
    let snapshots = files(dir.path(), "snapshot-");
    assert_eq!(snapshots.len(), 2);
    let newest = snapshots.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(newest, bytes).unwrap();

    let (error, dir) = match TestServer::try_start_in(dir, |_| {}).await {
        Ok(_) => panic!("start-up must refuse a damaged snapshot"),
        Err(e) => e,
    };
    assert!(
        matches!(error, StoreError::DamagedSnapshot { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("wheresmyfox repair"), "{error}");

    let config = wheresmyfox::Config::for_test(dir.path());
    let done =
        wheresmyfox::store::repair(&config, &wheresmyfox::store::seal::Sealer::new(None)).unwrap();
    assert_eq!(done.len(), 1, "{done:?}");
    let server = TestServer::start_in(dir, |_| {}).await;
    owner.http = HttpClient::new(server.addr);
    device_view(&mut owner, &first).await;
    let view = device_view(&mut owner, &second).await;
    assert_eq!(
        view["pending"][0]["command"], "r",
        "nothing lost: older snapshot + journals"
    );
}

#[tokio::test]
async fn data_files_are_private_and_secrets_are_sealed_when_a_key_is_given() {
    use std::os::unix::fs::PermissionsExt;
    let key = "an operator sealing key that is long enough";
    let server = TestServer::start_with(|c| c.storage.seal_key = Some(key.into())).await;
    let mut owner = server.owner("sealed").await;
    let (id, secret) = register(&mut owner, "Sealed phone").await;
    let dir = server.stop_keeping_data().await;
    for file in files(dir.path(), "journal-")
        .into_iter()
        .chain(files(dir.path(), "snapshot-"))
    {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", file.display());
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap()).into_owned();
        assert!(
            !text.contains(&secret),
            "the secret is in the clear in {}",
            file.display()
        );
        assert!(
            !text.contains(PASSWORD),
            "the password is in {}",
            file.display()
        );
    }
    assert_eq!(
        std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let (error, dir) = match TestServer::try_start_in(dir, |_| {}).await {
        Ok(_) => panic!("sealed secrets cannot be opened without the key"),
        Err(e) => e,
    };
    assert!(error.to_string().contains("sealing key"), "{error}");
    let server = TestServer::start_in(dir, |c| c.storage.seal_key = Some(key.into())).await;
    let mut device = DeviceClient::new(server.http(), &id, &secret);
    device.exchange(&json!({}), Some(0)).await.unwrap();
}

#[tokio::test]
async fn a_forgotten_device_leaves_nothing_in_the_next_snapshot() {
    let server = TestServer::start().await;
    let mut owner = server.owner("retention").await;
    let (id, _) = register(&mut owner, "Soon gone").await;
    owner
        .call(Method::DELETE, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    server.gateway.snapshot().await.unwrap();
    let newest = files(server.dir.path(), "snapshot-").pop().unwrap();
    let text = String::from_utf8_lossy(&std::fs::read(newest).unwrap()).into_owned();
    assert!(
        !text.contains(&id),
        "the forgotten device's id is still in the snapshot"
    );
    assert!(!text.contains("Soon gone"));
}

#[tokio::test]
async fn a_second_server_cannot_use_the_same_data_directory() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = wheresmyfox::Config::for_test(server.dir.path());
    let error = wheresmyfox::Gateway::open(config).unwrap_err();
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    drop(dir);
}

// === kill -9 ===

#[tokio::test]
async fn everything_answered_before_kill_9_is_there_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut binary = Binary::start_in(dir.path(), &[]);
    let addr = binary.addr;
    let owner = OwnerClient::sign_up(addr, "kill@example.com", PASSWORD)
        .await
        .unwrap();
    // A burst of registrations and commands from several connections; each task records what
    // the server answered before it died.
    let (answered_tx, mut answered_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, Option<u64>)>();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let token = owner.token.clone();
        let answered = answered_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut owner = OwnerClient {
                http: HttpClient::new(addr),
                token,
                userid: String::new(),
            };
            loop {
                let secret = random_secret();
                let body = json!({"secret": secret, "pushurl": "https://push.example.invalid/x"});
                let Ok((StatusCode::OK, answer)) =
                    owner.call(Method::POST, "/1/register", Some(&body)).await
                else {
                    return;
                };
                let id = answer["id"].as_str().unwrap().to_owned();
                let _ = answered.send((id.clone(), None));
                let Ok((StatusCode::ACCEPTED, queued)) = owner
                    .call(
                        Method::POST,
                        &format!("/1/devices/{id}/cmd"),
                        Some(&json!({"r":{"p":1,"d":30}})),
                    )
                    .await
                else {
                    return;
                };
                let _ = answered.send((id, queued["queued"][0]["seq"].as_u64()));
            }
        }));
    }
    drop(answered_tx);
    // Let the burst run, then kill the server without warning.
    tokio::time::sleep(Duration::from_millis(700)).await;
    binary.kill_9();
    for task in tasks {
        task.await.unwrap();
    }
    let mut devices = std::collections::BTreeMap::new();
    while let Some((id, seq)) = answered_rx.recv().await {
        let entry = devices.entry(id).or_insert(None);
        if seq.is_some() {
            *entry = seq;
        }
    }
    assert!(
        devices.len() >= 5,
        "the burst should have registered devices before the kill ({})",
        devices.len()
    );

    let binary = Binary::start_in(dir.path(), &[]);
    let addr = binary.addr;
    let mut owner = OwnerClient {
        http: HttpClient::new(addr),
        token: owner.token,
        userid: owner.userid,
    };
    let (status, listed) = owner.call(Method::GET, "/1/devices", None).await.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the token issued before the kill still works"
    );
    let present: std::collections::BTreeMap<String, Value> = listed["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_owned(), d.clone()))
        .collect();
    for (id, seq) in &devices {
        let device = present.get(id).unwrap_or_else(|| {
            panic!("device {id} was registered (200) before the kill but is gone")
        });
        if let Some(seq) = seq {
            assert_eq!(
                device["pending"][0]["seq"].as_u64(),
                Some(*seq),
                "command {seq} for {id} was accepted (202) but is gone"
            );
        }
    }
    drop(binary);
}

/// A device can receive a command while its record is still being flushed; a crash then
/// loses the record but not what the device saw. The number it saw must never be issued
/// again: the device's `ack` for it would otherwise acknowledge a different command that
/// never reached it. Two crashes in a row, so that the second start-up has to replay the
/// first one's `started` record as well as write its own.
#[tokio::test]
async fn a_command_number_lost_in_a_crash_is_never_issued_again() {
    let server = TestServer::start().await;
    let mut owner = server.owner("renumber").await;
    let (id, secret) = register(&mut owner, "Phone").await;
    let mut device = DeviceClient::new(server.http(), &id, &secret);
    device.enable_ack();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    let mut server = server;
    let mut seen = 0;
    for (round, kind) in ["r", "l"].into_iter().enumerate() {
        // What the disk holds before the command: the machine loses power after the device
        // got it but before its record reached the disk.
        let image = crash_image(server.dir.path());
        let command = match kind {
            "r" => json!({"r": {"p": 5, "d": 60}}),
            _ => json!({"l": {"c": "0123"}}),
        };
        let queued = owner.command(&id, &command).await.unwrap();
        let seq = queued["queued"][0]["seq"].as_u64().unwrap();
        assert!(seq > seen, "round {round}: seq {seq} after {seen}");
        let got = device.exchange(&json!({}), Some(0)).await.unwrap();
        assert!(got.contains_key(kind), "round {round}: {got:?}");
        seen = seq;
        server.stop().await;
        server = TestServer::start_in(image, |_| {}).await;
        owner.http = HttpClient::new(server.addr);
        // The device still holds `seen` and acknowledges it with every request (written out
        // here, so the client does not put in an `ack` of its own).
        device = DeviceClient::new(server.http(), &id, &secret);
        device
            .exchange(&json!({"ack": seen}), Some(0))
            .await
            .unwrap();
    }
    let queued = owner
        .command(&id, &json!({"m": {"n": "555-0100", "m": "Found?"}}))
        .await
        .unwrap();
    let seq = queued["queued"][0]["seq"].as_u64().unwrap();
    assert!(seq > seen, "seq {seq} issued again after the crash lost it");
    // Sent once, in an answer the device never got (another connection takes it)...
    let mut lost_answer = DeviceClient::new(server.http(), &id, &secret);
    lost_answer.enable_ack();
    assert!(
        lost_answer
            .exchange(&json!({}), Some(0))
            .await
            .unwrap()
            .contains_key("m")
    );
    // ...so the device's stale `ack` does not cover it, and it comes again.
    let again = device
        .exchange(&json!({"ack": seen}), Some(0))
        .await
        .unwrap();
    assert!(
        again.contains_key("m"),
        "the message was taken as received: {again:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn recovery_never_panics_on_damaged_files() {
    let server = TestServer::start_with(|c| c.storage.snapshot_interval_secs = 3600).await;
    let mut owner = server.owner("fuzz").await;
    let (id, secret) = register(&mut owner, "Fuzzed").await;
    let mut device = DeviceClient::new(server.http(), &id, &secret);
    owner
        .command(&id, &json!({"l":{"c":"1234"},"r":{"p":1,"d":5}}))
        .await
        .unwrap();
    device.exchange(&json!({}), Some(0)).await.unwrap();
    device
        .exchange(
            &json!({"l":{"ok":true},"t":{"ok":true,"la":1.0,"lo":2.0,"ti":1700000000}}),
            Some(0),
        )
        .await
        .unwrap();
    server.gateway.snapshot().await.unwrap();
    owner.command(&id, &json!({"e":{}})).await.unwrap();
    let dir = server.stop_keeping_data().await;
    let originals: Vec<(PathBuf, Vec<u8>)> = files(dir.path(), "journal-")
        .into_iter()
        .chain(files(dir.path(), "snapshot-"))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let config = wheresmyfox::Config::for_test(dir.path());
    let sealer = wheresmyfox::store::seal::Sealer::new(None);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..300 {
        let (path, bytes) = &originals[round % originals.len()];
        let mut damaged = bytes.clone();
        match next() % 3 {
            0 => {
                let at = (next() as usize) % damaged.len();
                damaged[at] ^= (next() as u8) | 1;
            }
            1 => damaged.truncate((next() as usize) % damaged.len()),
            _ => {
                let at = (next() as usize) % damaged.len();
                let extra: Vec<u8> = (0..(next() % 64)).map(|_| next() as u8).collect();
                damaged.splice(at..at, extra);
            }
        }
        std::fs::write(path, &damaged).unwrap();
        // Ok or a clear error; never a panic.
        let _ = wheresmyfox::store::check(&config, &sealer);
        std::fs::write(path, bytes).unwrap();
    }
    assert!(wheresmyfox::store::check(&config, &sealer).is_ok());
}
