//! `wheresmyfox simulate-device`: a pretend phone for trying the owner's page.
//!
//! It signs in as an owner (or uses a bearer token), registers itself, then keeps a poll
//! parked on the server. With every poll it reports a position that walks slowly around a
//! starting point, so the page has a track to draw; it prints each command it receives and
//! acknowledges it the way a phone would.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient};

/// What the simulator needs to know.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub server: SocketAddr,
    pub email: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub name: String,
    /// Seconds between position reports (the poll's wait).
    pub every_secs: u64,
    /// Where the walk starts.
    pub lat: f64,
    pub lon: f64,
}

/// Runs until Ctrl-C, or until the device is erased or forgotten by its owner.
pub async fn run(sim: Simulation) -> anyhow::Result<()> {
    let mut owner = match (&sim.token, &sim.email, &sim.password) {
        (Some(token), _, _) => OwnerClient {
            http: HttpClient::new(sim.server),
            token: token.clone(),
            userid: String::new(),
        },
        (None, Some(email), Some(password)) => {
            OwnerClient::sign_in_with(HttpClient::new(sim.server), email, password)
                .await
                .with_context(|| {
                    format!(
                        "cannot sign in as {email} on {} (sign up on the page first)",
                        sim.server
                    )
                })?
        }
        _ => bail!("give --email and --password (or --token) of the owner"),
    };
    let mut phone = owner
        .register_device(&sim.name)
        .await
        .context("cannot register the device")?;
    println!("registered \"{}\" as device {}", sim.name, phone.id());
    println!(
        "reporting a position every {} s; waiting for commands (Ctrl-C to stop)",
        sim.every_secs
    );
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut walk = Walk::new(sim.lat, sim.lon);
    let mut replies = Map::new();
    replies.insert("has_passcode".into(), json!(false));
    loop {
        let mut report = replies.clone();
        if !report.contains_key("t") {
            report.insert("t".into(), walk.step());
        }
        let report = Value::Object(report);
        let exchange = phone.exchange(&report, Some(sim.every_secs));
        let commands = tokio::select! {
            result = exchange => result,
            _ = &mut stop => {
                println!("stopped");
                return Ok(());
            }
        };
        let commands = match commands {
            Ok(commands) => commands,
            Err(wheresmyfox::client::ClientError::Status { status, .. })
                if status == http::StatusCode::UNAUTHORIZED =>
            {
                println!("the server no longer knows this device (its owner forgot it); exiting");
                return Ok(());
            }
            Err(error) => {
                eprintln!("exchange failed: {error}; retrying in 2 s");
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                continue;
            }
        };
        replies = Map::new();
        if commands.is_empty() {
            continue;
        }
        println!("received {}", Value::Object(commands.clone()));
        let erase = commands.contains_key("e");
        for (key, args) in &commands {
            let reply = act(key, args, &mut walk);
            replies.insert(key.clone(), reply);
        }
        if erase {
            // A real phone would now wipe itself; answer first so the owner sees it happened.
            send_last(&mut phone, replies).await;
            println!("erased: a real phone would now be wiped; exiting");
            return Ok(());
        }
    }
}

/// What the pretend phone does with one command, and its reply.
fn act(key: &str, args: &Value, walk: &mut Walk) -> Value {
    match key {
        "r" if args["d"] == 0 => println!("  ring: stopped"),
        "r" => println!("  ring: ringing every {} s for {} s", args["p"], args["d"]),
        "l" => println!("  lock: locked with code {}", args["c"]),
        "m" => println!(
            "  message: showing {} (call {})",
            args["m"],
            args.get("n").unwrap_or(&json!("no number"))
        ),
        "t" if args["d"] == 0 => println!("  track: stopped"),
        "t" => println!(
            "  track: a position every {} s for {} s",
            args["p"], args["d"]
        ),
        "e" => println!("  ERASE: wiping the phone"),
        other => println!("  {other}: not a command this phone knows"),
    }
    if key == "t" {
        walk.step()
    } else {
        json!({"ok": true})
    }
}

async fn send_last(phone: &mut DeviceClient, replies: Map<String, Value>) {
    if let Err(error) = phone.exchange(&Value::Object(replies), Some(0)).await {
        eprintln!("could not send the last replies: {error}");
    }
}

/// A slow walk around a point: about 25 m a step, turning a little each time.
struct Walk {
    lat: f64,
    lon: f64,
    heading: f64,
}

impl Walk {
    fn new(lat: f64, lon: f64) -> Walk {
        Walk {
            lat,
            lon,
            heading: 0.6,
        }
    }

    fn step(&mut self) -> Value {
        self.heading += 0.35;
        let metres = 25.0;
        self.lat += metres * self.heading.cos() / 111_320.0;
        self.lon += metres * self.heading.sin() / (111_320.0 * self.lat.to_radians().cos());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        json!({"ok": true, "la": self.lat, "lo": self.lon, "ti": now, "acc": 12.0})
    }
}
