//! The real `wheresmyfox` binary, started on a loopback port and killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server process; its address is read from its start-up log line.
pub struct Binary {
    pub child: Child,
    pub addr: std::net::SocketAddr,
    _dir: Option<tempfile::TempDir>,
    _config: Option<tempfile::NamedTempFile>,
}

impl Binary {
    pub fn start(extra: &[&str]) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let mut binary = Binary::start_in(dir.path(), extra);
        binary._dir = Some(dir);
        binary
    }

    pub fn start_in(data_dir: &std::path::Path, extra: &[&str]) -> Binary {
        // Tests reach loopback only: unless a test brings its own configuration, push
        // wake-ups (which would ping the devices' made-up push URLs) are off.
        let config = (!extra.contains(&"--config")).then(|| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), "[push]\nenabled = false\n").unwrap();
            file
        });
        let mut command = Command::new(env!("CARGO_BIN_EXE_wheresmyfox"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir);
        if let Some(config) = &config {
            command.arg("--config").arg(config.path());
        }
        let mut child = command
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Binary {
            child,
            addr,
            _dir: None,
            _config: config,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Binary {
    /// Kills the process without warning (SIGKILL) and waits for it.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
