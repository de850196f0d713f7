//! A real WebDAV server for tests and benchmarks: `wsgidav` (Python) on a loopback port,
//! serving a temporary folder, with Basic authentication on.
//!
//! Needs `pip install wsgidav cheroot`. [`dav_or_skip`] says SKIP when it is missing, unless
//! `WHERESMYFOX_REQUIRE_WEBDAV=1` (set by `.ci/run`), when it panics.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user name the server accepts.
pub const USER: &str = "ada";
/// Its app password.
pub const PASSWORD: &str = "Qv7-app-password-9xTz";

/// A wsgidav server on loopback, serving a temporary folder, Basic authentication on.
pub struct Dav {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

/// Whether Python has wsgidav and its web server (run as a module, so pip's script directory
/// need not be on `PATH`).
fn wsgidav_installed() -> bool {
    Command::new("python3")
        .args(["-c", "import wsgidav, cheroot"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The WebDAV server, or `None` (after a loud SKIP) when wsgidav is not installed.
pub fn dav_or_skip(test: &str) -> Option<Dav> {
    if !wsgidav_installed() {
        if std::env::var("WHERESMYFOX_REQUIRE_WEBDAV").as_deref() == Ok("1") {
            panic!("wsgidav is required (WHERESMYFOX_REQUIRE_WEBDAV=1) but not installed");
        }
        eprintln!("SKIP {test}: wsgidav is not installed (pip install wsgidav cheroot)");
        return None;
    }
    Some(Dav::start())
}

impl Dav {
    fn start() -> Dav {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir_all(&root).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("wsgidav.yaml");
        Dav::configure(&config, port, &root, PASSWORD);
        let mut dav = Dav {
            child: None,
            port,
            config,
            root,
            _dir: dir,
        };
        dav.child = Some(dav.spawn());
        dav
    }

    /// cheroot's defaults (10 threads, a listen backlog of 5) drop the SYNs of a few
    /// concurrent connections, which then wait a second for TCP's retransmission: a real
    /// Nextcloud behind Apache or nginx does not, so neither does this one.
    fn configure(config: &Path, port: u16, root: &Path, password: &str) {
        std::fs::write(
            config,
            format!(
                "host: 127.0.0.1\nport: {port}\nprovider_mapping:\n  \"/\": \"{}\"\n\
                 http_authenticator:\n  accept_basic: true\n  accept_digest: false\n  \
                 default_to_digest: false\nsimple_dc:\n  user_mapping:\n    \"*\":\n      \
                 \"{USER}\":\n        password: \"{password}\"\nverbose: 1\n\
                 server: cheroot\nserver_args:\n  numthreads: 16\n  request_queue_size: 256\n",
                root.display()
            ),
        )
        .unwrap();
    }

    /// The storage's owner replaces the app password (revoking the old one).
    pub fn change_password(&mut self, password: &str) {
        Dav::configure(&self.config, self.port, &self.root, password);
        self.restart();
    }

    fn spawn(&self) -> Child {
        let child = Command::new("python3")
            .args(["-m", "wsgidav.server.server_cli", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wsgidav");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "wsgidav did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(self.spawn());
    }

    /// Files under our folder on the storage, relative to it.
    pub fn files(&self, under: &str) -> Vec<String> {
        let base = self.root.join("wheresmyfox");
        let mut found = Vec::new();
        let mut stack = vec![base.join(under)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    found.push(path.strip_prefix(&base).unwrap().display().to_string());
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for Dav {
    fn drop(&mut self) {
        self.stop();
    }
}
