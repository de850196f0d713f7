//! The gateway behind a real nginx, configured from `config/nginx.conf`: Hawk-signed device
//! traffic, parking and waking, and the owner API all work through it, and forwarding headers
//! are believed only from the trusted proxy.
//!
//! Needs Debian's `nginx` package. Without it the test says SKIP and passes, unless
//! `WHERESMYFOX_REQUIRE_NGINX=1` (set by `.ci/run`), when it fails.

mod support;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};

use support::{PASSWORD, TestServer};
use wheresmyfox::client::{HttpClient, OwnerClient};

/// The address nginx connects to the gateway from: the one trusted proxy. Test clients use
/// other loopback addresses, so that who is who can be told apart on one machine.
const NGINX_SIDE: &str = "127.0.0.2";
/// Where the "real" client connects from.
const CLIENT: &str = "127.0.0.7";

fn nginx_binary() -> Option<PathBuf> {
    let candidates = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"];
    let found = candidates.iter().map(PathBuf::from).find(|p| p.exists());
    found.or_else(|| {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("nginx"))
            .find(|p| p.exists())
    })
}

/// nginx running in the foreground with its own prefix, stopped on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits. SIGKILL would leave the workers
        // running, orphaned, after the test.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces the first line whose directive is `name` with `name value;`, keeping indentation.
/// Panics if the example no longer has it: then this test and the example have drifted.
fn set_directive(conf: &str, name: &str, value: &str) -> String {
    let mut done = false;
    let lines: Vec<String> = conf
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if !done && trimmed.split_whitespace().next() == Some(name) {
                done = true;
                let indent = &line[..line.len() - trimmed.len()];
                if value.is_empty() {
                    String::new()
                } else {
                    format!("{indent}{name} {value};")
                }
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert!(done, "config/nginx.conf has no `{name}` directive any more");
    lines.join("\n") + "\n"
}

/// config/nginx.conf, made runnable here: ports chosen now, plain HTTP on loopback instead of
/// TLS, files under `dir`, one worker, and the upstream connections made from [`NGINX_SIDE`].
fn test_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nginx.conf")).unwrap();
    let d = dir.display();
    let mut conf = example;
    conf = set_directive(&conf, "worker_processes", "1");
    conf = set_directive(&conf, "worker_rlimit_nofile", "1024");
    conf = set_directive(&conf, "worker_connections", "256");
    conf = set_directive(&conf, "pid", &format!("{d}/nginx.pid"));
    conf = set_directive(&conf, "error_log", &format!("{d}/error.log info"));
    conf = set_directive(&conf, "access_log", &format!("{d}/access.log"));
    conf = set_directive(&conf, "server", &upstream.to_string());
    conf = set_directive(&conf, "listen", &listen.to_string());
    conf = set_directive(&conf, "ssl_certificate", "");
    conf = set_directive(&conf, "ssl_certificate_key", "");
    conf = set_directive(
        &conf,
        "proxy_pass",
        &format!("http://wheresmyfox;\n            proxy_bind {NGINX_SIDE}"),
    );
    // Debian's build keeps temporary files under /var/lib/nginx: keep them here instead.
    let temp_paths: String = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|kind| format!("    {kind}_temp_path {d}/{kind};\n"))
        .collect();
    conf = conf.replacen("http {\n", &format!("http {{\n{temp_paths}"), 1);
    // A master started as root hands its workers to `nobody`, who could not read this
    // directory; run them as the current user instead.
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        conf = format!("user root;\n{conf}");
    }
    conf
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_nginx(binary: &Path, listen: SocketAddr, upstream: SocketAddr) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let conf = test_config(dir.path(), listen, upstream);
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, &conf).unwrap();
    let mut child = Command::new(binary)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            panic!("nginx exited ({status}) with\n{conf}\n{log}");
        }
        if tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Nginx {
                child,
                addr: listen,
                dir,
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nginx did not listen on {listen}");
}

/// Everything the server logs in this test binary, for looking up client addresses.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        std::io::stderr().write(bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `client=` of the log line about the last refused sign-in.
fn last_refused_sign_in(log: &Mutex<Vec<u8>>) -> String {
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("sign-in refused"))
        .unwrap_or_else(|| panic!("no refused sign-in logged in\n{text}"))
        .to_owned();
    line.split("client=")
        .nth(1)
        .and_then(|rest| rest.split(['}', ' ', ':']).next())
        .unwrap_or_else(|| panic!("no client= in {line}"))
        .to_owned()
}

/// A wrong password, sent from `from` with forged forwarding headers.
async fn spoofed_sign_in(to: SocketAddr, from: &str, email: &str) {
    let mut http = HttpClient::new(to).with_bind(from.parse::<IpAddr>().unwrap());
    let body = serde_json::to_vec(&json!({"email": email, "password": "not the password"}));
    let reply = http
        .send(
            Method::POST,
            "/1/session",
            &[
                (http::header::CONTENT_TYPE, "application/json".into()),
                ("x-forwarded-for".parse().unwrap(), "6.6.6.6".into()),
                (http::header::FORWARDED, "for=6.6.6.6;proto=https".into()),
                ("x-real-ip".parse().unwrap(), "6.6.6.6".into()),
            ],
            body.unwrap().into(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_gateway_works_behind_nginx() {
    let Some(binary) = nginx_binary() else {
        if std::env::var("WHERESMYFOX_REQUIRE_NGINX").as_deref() == Ok("1") {
            panic!("nginx is required (WHERESMYFOX_REQUIRE_NGINX=1) but not installed");
        }
        eprintln!(
            "SKIP the_gateway_works_behind_nginx: nginx is not installed (apt-get install nginx)"
        );
        return;
    };
    let log = captured_log();
    let front: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = TestServer::start_with(|c| {
        c.server.public_url = Some(format!("http://{front}"));
        c.proxy.trusted = vec![NGINX_SIDE.parse().unwrap()];
    })
    .await;
    let nginx = start_nginx(&binary, front, server.addr).await;

    // The owner API, through nginx.
    let mut owner = OwnerClient::sign_up(nginx.addr, "proxied@example.com", PASSWORD)
        .await
        .unwrap();
    let mut device = owner.register_device("behind nginx").await.unwrap();
    let id = device.id().to_owned();
    device.enable_ack();

    // Hawk-signed device traffic, signed for the public address, verified through nginx.
    let commands = device.exchange(&json!({}), Some(0)).await.unwrap();
    assert!(commands.is_empty());

    // Parking and waking: the poll is held open through nginx and answered the moment a
    // command is queued.
    let poll = tokio::spawn(async move {
        let commands = device.exchange(&json!({}), Some(30)).await.unwrap();
        (device, commands)
    });
    server.until_parked(1).await;
    let queued = owner
        .command(&id, &json!({"r":{"p":1,"d":10}}))
        .await
        .unwrap();
    assert_eq!(queued["parked"], json!(true));
    let (mut device, commands) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the woken poll is answered at once, not buffered")
        .unwrap();
    assert_eq!(Value::Object(commands), json!({"r":{"p":1,"d":10}}));
    device
        .exchange(&json!({"r":{"ok":true}}), Some(0))
        .await
        .unwrap();
    let (status, view) = owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["state"]["ringing"], json!(true), "{view}");

    // A poll that ends empty comes back through nginx too.
    assert!(
        device
            .exchange(&json!({}), Some(1))
            .await
            .unwrap()
            .is_empty()
    );

    // nginx keeps /metrics to itself; the gateway serves it directly.
    let blocked = support::get(&mut HttpClient::new(nginx.addr), "/metrics").await;
    assert_eq!(blocked.status, StatusCode::NOT_FOUND);
    let direct = support::get(&mut server.http(), "/metrics").await;
    assert_eq!(direct.status, StatusCode::OK);

    // Through the trusted proxy, the client is the address nginx saw, not the one it forged.
    spoofed_sign_in(nginx.addr, CLIENT, "proxied@example.com").await;
    assert_eq!(last_refused_sign_in(&log), CLIENT);
    // Straight to the gateway, the same forgery from an untrusted peer is ignored as well.
    spoofed_sign_in(server.addr, CLIENT, "proxied@example.com").await;
    assert_eq!(last_refused_sign_in(&log), CLIENT);
    spoofed_sign_in(server.addr, "127.0.0.1", "proxied@example.com").await;
    assert_eq!(last_refused_sign_in(&log), "127.0.0.1");
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(
        !text.contains("6.6.6.6"),
        "a forged address was believed:\n{text}"
    );

    // nginx saw every request (its access log), and kept upstream connections alive.
    let access = std::fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    assert!(access.contains(&format!("POST /1/cmd/{id}")), "{access}");
}
