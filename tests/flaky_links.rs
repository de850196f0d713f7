//! Devices on a bad mobile link: connections cut mid-request and mid-response, delayed,
//! stalled and reset (see `support::faulty`). Every command must still arrive and be
//! acknowledged, no acknowledgement may exist for a command the device never received, and
//! the server's count of parked polls must come back to the truth.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use support::faulty::FaultyLink;
use support::{PASSWORD, TestServer, register};
use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient};

const DEVICES: usize = 6;
const CYCLES: usize = 40;

/// What one simulated phone has received, in order.
type Received = Arc<Mutex<Vec<String>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_arrives_and_is_acknowledged_through_a_flaky_link() {
    let server = TestServer::start_with(|c| {
        c.poll.wait_secs = 2;
        // 240 commands from one owner in seconds: a load the owner rate limit is meant to stop.
        c.limits.commands_owner_per_minute = 0;
    })
    .await;
    let link = FaultyLink::start(server.addr, 0.7, 20261122).await;
    let email = "flaky@example.com";
    let mut owner = OwnerClient::sign_up(server.addr, email, PASSWORD)
        .await
        .unwrap();

    let mut phones = Vec::new();
    for i in 0..DEVICES {
        let (id, secret) = register(&mut owner, &format!("phone {i}")).await;
        let mut device = DeviceClient::new(HttpClient::new(link.addr), &id, &secret);
        // Half the phones speak the sequence/ack extension, half the seed format.
        if i % 2 == 1 {
            device.enable_ack();
        }
        let received: Received = Arc::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let log = received.clone();
        let task = tokio::spawn(async move {
            let act = move |commands: &Map<String, Value>| {
                let mut replies = Map::new();
                if let Some(marker) = commands["m"]["m"].as_str() {
                    log.lock().unwrap().push(marker.to_owned());
                    replies.insert("m".into(), json!({"ok": true}));
                }
                replies
            };
            device
                .run(2, act, async {
                    let _ = stopped.await;
                })
                .await
        });
        phones.push((id, received, stop, task));
    }

    // Each phone's owner sends a command, waits for its acknowledgement, and checks that the
    // phone had received it; then the next one.
    let mut owners = Vec::new();
    for (index, (id, received, _, _)) in phones.iter().enumerate() {
        let (id, received) = (id.clone(), received.clone());
        let mut owner = OwnerClient::sign_in_with(HttpClient::new(server.addr), email, PASSWORD)
            .await
            .unwrap();
        owners.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                let marker = format!("phone {index} command {cycle}");
                let queued = owner
                    .command(&id, &json!({"m": {"n": "555-0100", "m": marker}}))
                    .await
                    .unwrap();
                let seq = queued["queued"][0]["seq"].as_u64().unwrap();
                let outcome = acknowledgement(&mut owner, &id, seq).await;
                assert_eq!(outcome["ok"], json!(true), "{outcome}");
                assert!(
                    received.lock().unwrap().contains(&marker),
                    "{marker} was acknowledged before the phone received it"
                );
            }
        }));
    }
    for owner in owners {
        owner.await.unwrap();
    }

    for (_, received, _, _) in &phones {
        let received = received.lock().unwrap();
        let distinct: HashSet<&String> = received.iter().collect();
        assert_eq!(
            distinct.len(),
            CYCLES,
            "every command arrived: {received:?}"
        );
    }
    // The link really was bad.
    eprintln!("faults dealt: {:?}", link.counts);
    assert!(link.count(|c| &c.cut_responses) > 0, "no response was cut");
    assert!(link.count(|c| &c.cut_requests) > 0, "no request was cut");
    assert!(link.count(|c| &c.resets) > 0, "no connection was reset");
    assert!(link.count(|c| &c.stalled) > 0, "no connection stalled");

    // Every phone holds one poll; cut and stalled connections left nothing parked behind.
    until_parked_at(&server, DEVICES).await;
    let mut tasks = Vec::new();
    for (_, _, stop, task) in phones {
        let _ = stop.send(());
        tasks.push(task);
    }
    for task in tasks {
        task.await.unwrap().expect("the device loop ends cleanly");
    }
    until_parked_at(&server, 0).await;
}

/// Waits for the outcome of command `seq` in the device's detail view.
async fn acknowledgement(owner: &mut OwnerClient, id: &str, seq: u64) -> Value {
    for _ in 0..3000 {
        let (_, view) = owner
            .call(Method::GET, &format!("/1/devices/{id}"), None)
            .await
            .unwrap();
        if let Some(outcome) = view["outcomes"]
            .as_array()
            .and_then(|all| all.iter().find(|o| o["seq"].as_u64() == Some(seq)))
        {
            return outcome.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("command {seq} of {id} was never acknowledged");
}

/// Waits (up to a minute: a phone may be backing off after a run of faults) until exactly
/// `n` polls are parked.
async fn until_parked_at(server: &TestServer, n: usize) {
    for _ in 0..3000 {
        if server.parked() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("expected {n} parked polls, have {}", server.parked());
}
