//! `Config`: every setting of the gateway, read from TOML and checked before start-up.
//!
//! Every key is documented once, with its default, in `config/wheresmyfox.toml`. A file with an
//! unknown key, a value of the wrong type, or a value out of range stops start-up with a
//! message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole configuration. `Config::default()` is the embedded default `cargo run` uses.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub poll: PollConfig,
    pub accounts: AccountsConfig,
    pub devices: DevicesConfig,
    pub hawk: HawkConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub sync: SyncConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Where state is kept.
    pub data_dir: PathBuf,
    /// The URL devices use to reach us (scheme, host, port), when it differs from the `Host`
    /// header we receive: Hawk MACs are checked against its host and port.
    pub public_url: Option<String>,
    /// Open connections above which new ones are answered 503 at once and closed.
    pub max_connections: usize,
    /// Seconds a client has to send a complete request head.
    pub header_read_timeout_secs: u64,
    /// Largest request body accepted, in bytes (past it: 413).
    pub max_body_bytes: usize,
    /// Keep connections open between requests.
    pub keep_alive: bool,
    /// Seconds allowed, after the stop signal, for in-flight requests to finish.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// Default and longest `wait` of a device poll or an owner's events poll, in seconds.
    pub wait_secs: u64,
    /// A device with no poll parked and no exchange for this long is shown offline.
    pub offline_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// Whether `POST /1/accounts` is open to anyone.
    pub signup: bool,
    /// How long a session token stays valid, in hours.
    pub token_ttl_hours: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DevicesConfig {
    /// Most devices one account may register.
    pub max_per_user: usize,
    /// How many previous positions are kept per device.
    pub positions_kept: usize,
    /// How long previous positions are kept, in hours.
    pub positions_max_age_hours: u64,
    /// How many command outcomes are kept per device.
    pub outcomes_kept: usize,
    /// How long command outcomes are kept, in hours.
    pub outcomes_max_age_hours: u64,
    /// How many events are kept per device for the owner's events poll.
    pub events_kept: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HawkConfig {
    /// Largest accepted difference between a device's clock and ours, in seconds.
    pub skew_secs: u64,
    /// Nonces remembered per device against replay.
    pub nonces_per_device: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// When journal records for accounts, registrations and commands reach the disk.
    pub fsync: FsyncPolicy,
    /// The longest a record waits for its flush under the `interval` policy, in milliseconds.
    pub fsync_interval_ms: u64,
    /// The same for position reports.
    pub positions_fsync: FsyncPolicy,
    /// Seconds between snapshots (when the journal has anything new).
    pub snapshot_interval_secs: u64,
    /// Journal size that triggers a snapshot early, in bytes.
    pub snapshot_journal_bytes: u64,
    /// Key material (32+ characters) to seal device secrets at rest; the environment variable
    /// `WHERESMYFOX_SEAL_KEY` overrides it.
    pub seal_key: Option<String>,
}

/// When a journal record is flushed to disk.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before the request is answered.
    Always,
    /// Within `storage.fsync_interval_ms` after it is answered.
    Interval,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `wheresmyfox=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

/// Data sync (`/1/storage`, `/1/info`, `/1/changes`): limits, quotas, tombstones, feeds.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Largest payload of one record, in bytes (past it: 413).
    pub max_record_bytes: usize,
    /// Most records in one `POST` batch.
    pub max_post_records: usize,
    /// Most payload bytes in one `POST` batch.
    pub max_post_bytes: usize,
    /// Most live records one user may keep (past it: 507).
    pub max_user_records: u64,
    /// Most payload and id bytes one user may keep (past it: 507).
    pub max_user_bytes: u64,
    /// How long a tombstone is kept after a delete, in seconds.
    pub tombstone_ttl_secs: u64,
    /// Seconds between purges of old tombstones and expired records.
    pub purge_interval_secs: u64,
    /// Default and longest `wait` of a change feed, in seconds.
    pub feed_wait_secs: u64,
    /// Most change feeds one user may have parked at once (past it: 429).
    pub max_feeds_per_user: usize,
    /// Most change feeds parked on the whole server (past it: 503 with Retry-After).
    pub max_feeds: usize,
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

// === Defaults ===

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            public_url: None,
            // Below the 20 000 open files a process may hold here, leaving room for the
            // listener, data files and the 503 answers themselves.
            max_connections: 19_000,
            header_read_timeout_secs: 10,
            max_body_bytes: 64 * 1024,
            keep_alive: true,
            shutdown_grace_secs: 4,
        }
    }
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            // Under the 60 s read timeout of nginx and most load balancers.
            wait_secs: 50,
            offline_after_secs: 90,
        }
    }
}

impl Default for AccountsConfig {
    fn default() -> Self {
        AccountsConfig {
            signup: true,
            token_ttl_hours: 24 * 30,
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            max_per_user: 20,
            positions_kept: 20,
            positions_max_age_hours: 24 * 7,
            outcomes_kept: 20,
            outcomes_max_age_hours: 24 * 30,
            events_kept: 200,
        }
    }
}

impl Default for HawkConfig {
    fn default() -> Self {
        HawkConfig {
            skew_secs: 60,
            nonces_per_device: 128,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 100,
            positions_fsync: FsyncPolicy::Interval,
            snapshot_interval_secs: 300,
            snapshot_journal_bytes: 64 * 1024 * 1024,
            seal_key: None,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_record_bytes: 256 * 1024,
            max_post_records: 100,
            max_post_bytes: 2 * 1024 * 1024,
            max_user_records: 100_000,
            max_user_bytes: 256 * 1024 * 1024,
            tombstone_ttl_secs: 30 * 24 * 3600,
            purge_interval_secs: 300,
            // Under the 60 s read timeout of most proxies, like poll.wait_secs.
            feed_wait_secs: 50,
            max_feeds_per_user: 16,
            max_feeds: 10_000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

// === Config ===

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn check(ok: bool, key: &'static str, message: &str) -> Result<(), ConfigError> {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    message: message.to_owned(),
                })
            }
        }
        if let Some(url) = &self.server.public_url {
            check(
                parse_public_url(url).is_some(),
                "server.public_url",
                "must be an absolute http or https URL such as https://find.example.com",
            )?;
        }
        check(
            self.server.max_connections >= 1,
            "server.max_connections",
            "must be at least 1",
        )?;
        check(
            (1..=3600).contains(&self.server.header_read_timeout_secs),
            "server.header_read_timeout_secs",
            "must be from 1 to 3600",
        )?;
        check(
            (256..=64 * 1024 * 1024).contains(&self.server.max_body_bytes),
            "server.max_body_bytes",
            "must be from 256 bytes to 64 MiB",
        )?;
        check(
            self.server.shutdown_grace_secs <= 60,
            "server.shutdown_grace_secs",
            "must be at most 60",
        )?;
        check(
            (1..=3600).contains(&self.poll.wait_secs),
            "poll.wait_secs",
            "must be from 1 to 3600",
        )?;
        check(
            self.poll.offline_after_secs > self.poll.wait_secs,
            "poll.offline_after_secs",
            "must be longer than poll.wait_secs, or parked devices would be shown offline",
        )?;
        check(
            self.accounts.token_ttl_hours >= 1,
            "accounts.token_ttl_hours",
            "must be at least 1",
        )?;
        check(
            (1..=1_000_000).contains(&self.devices.max_per_user),
            "devices.max_per_user",
            "must be from 1 to 1000000",
        )?;
        check(
            self.devices.positions_kept <= 10_000,
            "devices.positions_kept",
            "must be at most 10000",
        )?;
        check(
            (1..=10_000).contains(&self.devices.outcomes_kept),
            "devices.outcomes_kept",
            "must be from 1 to 10000",
        )?;
        check(
            (1..=100_000).contains(&self.devices.events_kept),
            "devices.events_kept",
            "must be from 1 to 100000",
        )?;
        check(
            (1..=3600).contains(&self.hawk.skew_secs),
            "hawk.skew_secs",
            "must be from 1 to 3600",
        )?;
        check(
            (8..=100_000).contains(&self.hawk.nonces_per_device),
            "hawk.nonces_per_device",
            "must be from 8 to 100000",
        )?;
        check(
            (1..=10_000).contains(&self.storage.fsync_interval_ms),
            "storage.fsync_interval_ms",
            "must be from 1 to 10000",
        )?;
        check(
            (1..=86_400).contains(&self.storage.snapshot_interval_secs),
            "storage.snapshot_interval_secs",
            "must be from 1 to 86400",
        )?;
        check(
            self.storage.snapshot_journal_bytes >= 4096,
            "storage.snapshot_journal_bytes",
            "must be at least 4096",
        )?;
        if let Some(key) = &self.storage.seal_key {
            check(
                key.len() >= 32,
                "storage.seal_key",
                "must be at least 32 characters",
            )?;
        }
        check(
            (16..=2 * 1024 * 1024).contains(&self.sync.max_record_bytes),
            "sync.max_record_bytes",
            "must be from 16 bytes to 2 MiB",
        )?;
        check(
            (1..=10_000).contains(&self.sync.max_post_records),
            "sync.max_post_records",
            "must be from 1 to 10000",
        )?;
        check(
            self.sync.max_post_bytes >= self.sync.max_record_bytes
                && self.sync.max_post_bytes <= 2 * 1024 * 1024,
            "sync.max_post_bytes",
            "must be at least sync.max_record_bytes and at most 2 MiB (a batch is one journal \
             record, which must stay under 16 MiB even if JSON escaping grows it sixfold)",
        )?;
        check(
            self.sync.max_user_records >= 1,
            "sync.max_user_records",
            "must be at least 1",
        )?;
        check(
            self.sync.max_user_bytes >= self.sync.max_record_bytes as u64,
            "sync.max_user_bytes",
            "must be at least sync.max_record_bytes",
        )?;
        check(
            self.sync.tombstone_ttl_secs >= 60,
            "sync.tombstone_ttl_secs",
            "must be at least 60",
        )?;
        check(
            (1..=86_400).contains(&self.sync.purge_interval_secs),
            "sync.purge_interval_secs",
            "must be from 1 to 86400",
        )?;
        check(
            (1..=3600).contains(&self.sync.feed_wait_secs),
            "sync.feed_wait_secs",
            "must be from 1 to 3600",
        )?;
        check(
            (1..=1000).contains(&self.sync.max_feeds_per_user),
            "sync.max_feeds_per_user",
            "must be from 1 to 1000",
        )?;
        check(
            (1..=1_000_000).contains(&self.sync.max_feeds),
            "sync.max_feeds",
            "must be from 1 to 1000000",
        )?;
        check(
            tracing_subscriber::EnvFilter::try_new(&self.log.level).is_ok(),
            "log.level",
            "is not a valid filter (try info, debug or wheresmyfox=debug)",
        )?;
        Ok(())
    }

    /// A configuration for tests: port 0 on loopback, a given data directory.
    pub fn for_test(data_dir: &Path) -> Config {
        let mut config = Config::default();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.data_dir = data_dir.to_owned();
        config
    }

    /// The host and port devices sign, from `server.public_url`, if set.
    pub fn public_authority(&self) -> Option<(String, u16)> {
        self.server.public_url.as_deref().and_then(parse_public_url)
    }

    /// The sealing key: `WHERESMYFOX_SEAL_KEY` if set, else `storage.seal_key`.
    pub fn seal_key(&self) -> Option<String> {
        std::env::var("WHERESMYFOX_SEAL_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .or_else(|| self.storage.seal_key.clone())
    }

    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.poll.wait_secs)
    }
}

/// Host and port of an absolute http(s) URL; the port defaults by scheme (80 or 443).
fn parse_public_url(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let default_port = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return None;
    }
    Some((
        host.to_ascii_lowercase(),
        authority.port_u16().unwrap_or(default_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_default() {
        let text = include_str!("../config/wheresmyfox.toml");
        assert_eq!(Config::from_toml(text).unwrap(), Config::default());
    }

    #[test]
    fn the_public_url_gives_host_and_port() {
        let mut config = Config::default();
        config.server.public_url = Some("https://Find.Example.com".into());
        assert_eq!(
            config.public_authority(),
            Some(("find.example.com".into(), 443))
        );
        config.server.public_url = Some("http://[::1]:8080/".into());
        assert_eq!(config.public_authority(), Some(("::1".into(), 8080)));
        let e = Config::from_toml("[server]\npublic_url = \"find.example.com\"\n").unwrap_err();
        assert!(e.to_string().contains("server.public_url"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[server]\nmax_body_bytes = \"big\"\n").unwrap_err();
        assert!(e.to_string().contains("max_body_bytes"), "{e}");
        let e = Config::from_toml("[poll]\nwiat_secs = 5\n").unwrap_err();
        assert!(e.to_string().contains("wiat_secs"), "{e}");
        let e =
            Config::from_toml("[poll]\nwait_secs = 100\noffline_after_secs = 50\n").unwrap_err();
        assert!(e.to_string().contains("poll.offline_after_secs"), "{e}");
        let e = Config::from_toml("[log]\nlevel = \"[[\"\n").unwrap_err();
        assert!(e.to_string().contains("log.level"), "{e}");
    }
}
