//! A pretend phone for trying the gateway out: signs in as an owner, registers itself, then
//! polls, prints every command it is sent, "runs" it and acknowledges it. Track commands are
//! answered with a position that drifts a little each time.
//!
//! ```text
//! cargo run --example phone -- --email ada@example.com --password 'correct horse battery'
//! ```

use std::net::SocketAddr;

use clap::Parser;
use serde_json::{Map, Value, json};
use wheresmyfox::client::OwnerClient;

#[derive(Debug, Parser)]
struct Args {
    /// The gateway's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// The owner's email (the account is created if it does not exist).
    #[arg(long)]
    email: String,
    /// The owner's password.
    #[arg(long)]
    password: String,
    /// The name the phone shows to its owner.
    #[arg(long, default_value = "Pretend phone")]
    name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut owner = OwnerClient::sign_up(args.server, &args.email, &args.password).await?;
    let mut phone = owner.register_device(&args.name).await?;
    println!("registered as device {}", phone.id());
    println!("waiting for commands (Ctrl-C to stop)");
    let mut step = 0.0;
    let act = move |commands: &Map<String, Value>| {
        println!("received {}", Value::Object(commands.clone()));
        let mut replies = Map::new();
        for key in commands.keys() {
            let reply = if key == "t" {
                step += 0.0005;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                json!({"ok": true, "la": 48.8566 + step, "lo": 2.3522 + step, "ti": now, "acc": 15.0})
            } else {
                json!({"ok": true})
            };
            replies.insert(key.clone(), reply);
        }
        replies.insert("has_passcode".into(), json!(true));
        replies
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    phone.run(50, act, stop).await?;
    Ok(())
}
