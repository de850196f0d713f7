//! Test support: the real gateway on a loopback port, stopped on drop.
#![allow(dead_code)]

pub mod binary;
pub mod faulty;
pub mod webdav;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use wheresmyfox::client::{DeviceClient, HttpClient, OwnerClient, random_secret};
use wheresmyfox::{Config, Gateway, server};

pub const PASSWORD: &str = "correct horse battery";

/// A running gateway on `127.0.0.1:0` with a private data directory.
pub struct TestServer {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// Starts with the test defaults adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_in(tempfile::tempdir().expect("temp dir"), adjust).await
    }

    /// Starts on an existing data directory (a restart), adjusted by `adjust`.
    pub async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::try_start_in(dir, adjust)
            .await
            .map_err(|(e, _)| e)
            .expect("open gateway")
    }

    /// Like `start_in`, but hands the directory back with the error if start-up refuses it.
    pub async fn try_start_in(
        dir: tempfile::TempDir,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<TestServer, (wheresmyfox::store::StoreError, tempfile::TempDir)> {
        let mut config = Config::for_test(dir.path());
        adjust(&mut config);
        config.validate().expect("test config is valid");
        let listener = server::bind(config.server.listen).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let gateway = match Gateway::open(config) {
            Ok(gateway) => gateway,
            Err(e) => return Err((e, dir)),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, gateway.clone(), async {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
            dir,
        })
    }

    /// Stops cleanly (final snapshot) and hands back the data directory.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        drop(self);
        dir
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn http(&self) -> HttpClient {
        HttpClient::new(self.addr)
    }

    /// A new owner with a unique email.
    pub async fn owner(&self, name: &str) -> OwnerClient {
        OwnerClient::sign_up(self.addr, &format!("{name}@example.com"), PASSWORD)
            .await
            .expect("sign up")
    }

    /// A new owner with one registered device.
    pub async fn owner_and_device(&self, name: &str) -> (OwnerClient, DeviceClient) {
        let mut owner = self.owner(name).await;
        let device = owner
            .register_device(&format!("{name}'s phone"))
            .await
            .expect("register");
        (owner, device)
    }

    pub fn parked(&self) -> usize {
        self.gateway.stats.parked.load(Ordering::Relaxed)
    }

    /// Waits (yielding to the runtime) until `n` polls are parked.
    pub async fn until_parked(&self, n: usize) {
        for _ in 0..2000 {
            if self.parked() == n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        panic!("expected {n} parked polls, have {}", self.parked());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Asserts an error answer: status, errno, and that the message mentions `needle`.
pub fn assert_error(
    status: StatusCode,
    body: &Value,
    want_status: u16,
    want_errno: u64,
    needle: &str,
) {
    assert_eq!(status.as_u16(), want_status, "status; body {body}");
    assert_eq!(
        body["code"].as_u64(),
        Some(want_status as u64),
        "code in {body}"
    );
    assert_eq!(body["errno"].as_u64(), Some(want_errno), "errno in {body}");
    assert!(body["error"].is_string(), "error in {body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "message {message:?} should mention {needle:?}"
    );
}

/// Sends a device request by hand: `Authorization` signed over `signed`, body `sent`.
pub async fn send_signed(
    device: &mut DeviceClient,
    path: &str,
    signed: &[u8],
    sent: &'static [u8],
) -> wheresmyfox::client::Reply {
    let authorization = device.authorization(path, signed).expect("sign");
    device
        .http()
        .send(
            Method::POST,
            path,
            &[
                (http::header::AUTHORIZATION, authorization),
                (http::header::CONTENT_TYPE, "application/json".into()),
            ],
            bytes::Bytes::from_static(sent),
            std::time::Duration::from_secs(5),
        )
        .await
        .expect("send")
}

/// A plain `GET`, no credentials.
pub async fn get(http: &mut HttpClient, path: &str) -> wheresmyfox::client::Reply {
    http.send(
        Method::GET,
        path,
        &[],
        bytes::Bytes::new(),
        std::time::Duration::from_secs(5),
    )
    .await
    .expect("send")
}

/// Registers a device with a known secret, returning (id, secret).
pub async fn register(owner: &mut OwnerClient, name: &str) -> (String, String) {
    let secret = random_secret();
    let body = json!({"secret": secret, "pushurl": "https://push.example.invalid/x", "name": name});
    let (status, answer) = owner
        .call(Method::POST, "/1/register", Some(&body))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    (answer["id"].as_str().unwrap().to_owned(), secret)
}

/// `GET /1/devices/{id}` as the owner.
pub async fn device_view(owner: &mut OwnerClient, id: &str) -> Value {
    let (status, body) = owner
        .call(Method::GET, &format!("/1/devices/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Collects what the server logs, for tests that check nothing secret is logged.
#[derive(Clone, Default)]
pub struct LogSink(pub Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogSink {
    /// A sink that every test of this binary logs into, at every level (installed once).
    pub fn install() -> LogSink {
        let sink = LogSink::default();
        let writer = sink.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .try_init();
        sink
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every form a secret could be written in: raw, base64, base64url and hex.
pub fn encodings(bytes: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        bytes.to_vec(),
        STANDARD.encode(bytes).into_bytes(),
        URL_SAFE_NO_PAD.encode(bytes).into_bytes(),
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
    ]
}

/// Every regular file under `dir` (sockets and the like left out).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let (path, kind) = (entry.path(), entry.file_type().unwrap());
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                found.push(path);
            }
        }
    }
    found
}

/// A copy of a running server's data files as they are now: what a machine that lost power
/// would restart from (no final snapshot).
pub fn crash_image(dir: &std::path::Path) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    for file in files_under(dir) {
        let to = image.path().join(file.strip_prefix(dir).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&file, &to).unwrap();
    }
    image
}
