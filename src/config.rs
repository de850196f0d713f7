//! `Config`: every setting of the gateway, read from TOML and checked before start-up.
//!
//! Every key is documented once, with its default, in `config/wheresmyfox.toml`. A file with an
//! unknown key, a value of the wrong type, or a value out of range stops start-up with a
//! message naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::forwarded::Cidr;

/// The whole configuration. `Config::default()` is the embedded default `cargo run` uses.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub poll: PollConfig,
    pub accounts: AccountsConfig,
    pub devices: DevicesConfig,
    pub hawk: HawkConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
    pub limits: LimitsConfig,
    pub proxy: ProxyConfig,
    pub metrics: MetricsConfig,
    pub push: PushConfig,
    pub web: WebConfig,
    pub oidc: OidcConfig,
    pub sync: SyncConfig,
    pub remote_storage: RemoteStorageConfig,
    pub blobs: BlobConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    /// Default and longest `wait` of a device poll or an owner's events poll, in seconds.
    pub wait_secs: u64,
    /// A device with no poll parked and no exchange for this long is shown offline.
    pub offline_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AccountsConfig {
    /// Whether `POST /1/accounts` is open to anyone.
    pub signup: bool,
    /// How long a session token stays valid, in hours.
    pub token_ttl_hours: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HawkConfig {
    /// Largest accepted difference between a device's clock and ours, in seconds.
    pub skew_secs: u64,
    /// Nonces remembered per device against replay.
    pub nonces_per_device: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
    /// The most zeroed space kept ahead of the journal's records, in bytes (0: none).
    pub journal_runway_bytes: u64,
    /// Key material (32+ characters) to seal device secrets at rest; the environment variable
    /// `WHERESMYFOX_SEAL_KEY` overrides it.
    pub seal_key: Option<String>,
}

/// When a journal record is flushed to disk.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// Before the request is answered.
    Always,
    /// Within `storage.fsync_interval_ms` after it is answered.
    Interval,
}

/// Rate limits against password guessing and command flooding.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sign-in attempts one account may take at once (a correct password costs nothing).
    pub sign_in_account_burst: u32,
    /// Then this many an hour; 0 turns the limit off.
    pub sign_in_account_per_hour: u32,
    /// Sign-in and sign-up attempts one client address may make at once.
    pub sign_in_address_burst: u32,
    /// Then this many an hour; 0 turns the limit off.
    pub sign_in_address_per_hour: u32,
    /// Commands one owner may queue at once, over all their devices.
    pub commands_owner_burst: u32,
    /// Then this many a minute; 0 turns the limit off.
    pub commands_owner_per_minute: u32,
    /// Most keys (accounts, addresses, owners) each limit remembers.
    pub max_keys: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `wheresmyfox=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `human` (one line per event, for a terminal or journald) or `json` (one object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Peers whose forwarding headers are believed (addresses or CIDR networks). Empty: none.
    pub trusted: Vec<Cidr>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate address for `GET /metrics` alone; unset: served on `server.listen`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Ping a device's push URL when a command is queued and no poll is parked.
    pub enabled: bool,
    /// Milliseconds allowed for each TCP connection to a push service.
    pub connect_timeout_ms: u64,
    /// Milliseconds allowed for a whole ping (lookup, connection, TLS, request, answer).
    pub request_timeout_ms: u64,
    /// Further tries after a retryable failure (5xx, 429, timeout, connection error).
    pub retries: u32,
    /// First wait before a retry, in milliseconds; doubles per retry up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    /// Longest wait between tries, in milliseconds.
    pub backoff_max_ms: u64,
    /// The Web Push `TTL` header, in seconds.
    pub web_push_ttl_secs: u64,
    /// Addresses push URLs may resolve to whatever their class (CIDR blocks).
    pub allowed_cidrs: Vec<String>,
    /// Allow plain `http` push URLs.
    pub allow_http: bool,
    /// Most pings under way at once (each holds at most one socket while it sends).
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// A browser session ends after this many minutes without a request.
    pub session_idle_minutes: u64,
    /// A browser session ends this many hours after sign-in, however busy.
    pub session_max_hours: u64,
    /// Map tiles: a URL with `{z}`, `{x}` and `{y}`; empty for no tiles (the page then draws a
    /// plain grid). Its origin is allowed in the page's Content-Security-Policy.
    pub tile_url: String,
    /// The attribution the tile provider requires, shown under the map.
    pub tile_attribution: String,
}

/// An OpenID Connect provider (Firefox Accounts, for one); off while `issuer` is empty.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer, exactly as in its tokens' `iss`.
    pub issuer: String,
    /// What tokens must name in `aud` (usually our client id).
    pub audience: String,
    /// The provider's JWKS, from a file...
    pub jwks_file: String,
    /// ...or a URL (http or https).
    pub jwks_url: String,
    /// Shortest time between two fetches of the JWKS, in seconds.
    pub jwks_refetch_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The name on the page's "Sign in with …" button.
    pub provider_name: String,
    /// For the page's sign-in (authorization code flow with PKCE); empty: no button.
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub client_id: String,
    /// Only for providers that require one of a web server client.
    pub client_secret: String,
    pub scope: String,
    /// Refuse an ID token without the sign-in's nonce (a wrong nonce is always refused).
    pub require_nonce: bool,
    /// Where the provider sends the browser back; empty: `server.public_url` (or the `Host`
    /// of the request) followed by `/1/oidc/callback`.
    pub redirect_url: String,
}

/// Data sync (`/1/storage`, `/1/info`, `/1/changes`): limits, quotas, tombstones, feeds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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

/// Storage a user links for their sync data (`/1/remote-storage`, docs/storage.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteStorageConfig {
    /// Users may link a WebDAV storage of their own.
    pub enabled: bool,
    /// Milliseconds allowed for each TCP connection to a linked storage.
    pub connect_timeout_ms: u64,
    /// Milliseconds allowed for one whole exchange with it (a record, or a blob chunk).
    pub request_timeout_ms: u64,
    /// Most payloads fetched from it at once for one read.
    pub fetch_concurrency: usize,
    /// Addresses a linked storage may resolve to whatever their class (CIDR blocks): a
    /// Nextcloud on the operator's own network, say.
    pub allowed_cidrs: Vec<String>,
    /// Allow plain `http` storage URLs (credentials would cross the network in the clear).
    pub allow_http: bool,
}

/// Large payloads (photos, backups) uploaded in chunks (`/1/blobs`, docs/storage.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BlobConfig {
    /// Size of every chunk but a blob's last, in bytes.
    pub chunk_bytes: u64,
    /// Largest blob.
    pub max_blob_bytes: u64,
    /// Most bytes of blobs one user may keep (past it: 507).
    pub max_user_bytes: u64,
    /// Most blobs one user may keep, finished or not (past it: 507).
    pub max_blobs_per_user: usize,
    /// Seconds an unfinished upload is kept before it is removed.
    pub upload_ttl_secs: u64,
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
    #[error("environment variable {var} (config key `{key}`): {message}")]
    Env {
        var: String,
        key: String,
        message: String,
    },
}

/// Settings given on the command line: the last layer, over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    /// `--listen`: overrides `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--data-dir`: overrides `server.data_dir`.
    pub data_dir: Option<PathBuf>,
}

/// Environment variables named `WHERESMYFOX_<SECTION>__<KEY>` set `<section>.<key>`, e.g.
/// `WHERESMYFOX_SERVER__LISTEN=[::]:8080` or `WHERESMYFOX_PROXY__TRUSTED='["10.0.0.0/8"]'`.
pub const ENV_PREFIX: &str = "WHERESMYFOX_";

/// What `check-config` and the log show in place of a secret.
pub const REDACTED: &str = "<redacted>";

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
            journal_runway_bytes: 4 * 1024 * 1024,
            seal_key: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            // An owner who mistypes a few times is not held up; a guesser gets 30 tries an
            // hour per account, about 260 000 a year: nothing against a real password.
            sign_in_account_burst: 10,
            sign_in_account_per_hour: 30,
            // Generous for an office or a carrier NAT behind one address.
            sign_in_address_burst: 30,
            sign_in_address_per_hour: 600,
            // A frantic owner pressing "ring" on every device is far below this.
            commands_owner_burst: 60,
            commands_owner_per_minute: 60,
            max_keys: 100_000,
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

impl Default for RemoteStorageConfig {
    fn default() -> Self {
        RemoteStorageConfig {
            enabled: true,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            fetch_concurrency: 8,
            allowed_cidrs: Vec::new(),
            allow_http: false,
        }
    }
}

impl Default for BlobConfig {
    fn default() -> Self {
        BlobConfig {
            chunk_bytes: 1024 * 1024,
            max_blob_bytes: 1024 * 1024 * 1024,
            max_user_bytes: 4 * 1024 * 1024 * 1024,
            max_blobs_per_user: 10_000,
            upload_ttl_secs: 24 * 3600,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Human,
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            enabled: true,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            retries: 4,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            // A day: commands never expire, so a wake-up delivered late still brings them.
            web_push_ttl_secs: 86_400,
            allowed_cidrs: Vec::new(),
            allow_http: false,
            max_in_flight: 500,
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            session_idle_minutes: 30,
            session_max_hours: 12,
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".to_owned(),
            tile_attribution: "© OpenStreetMap contributors".to_owned(),
        }
    }
}

impl WebConfig {
    /// `scheme://host[:port]` of `tile_url`, for the Content-Security-Policy; `None` when
    /// tiles are off.
    pub fn tile_origin(&self) -> Option<String> {
        if self.tile_url.is_empty() {
            return None;
        }
        let (scheme, rest) = self.tile_url.split_once("://")?;
        let authority = rest.split('/').next()?;
        let plain = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
        if !matches!(scheme, "http" | "https")
            || authority.is_empty()
            || !authority.chars().all(plain)
        {
            return None;
        }
        Some(format!("{scheme}://{authority}"))
    }
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_refetch_secs: 60,
            leeway_secs: 60,
            provider_name: "your account provider".to_owned(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            scope: "openid email".to_owned(),
            require_nonce: true,
            redirect_url: String::new(),
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

    /// The effective configuration, in layers: `file` (or the defaults), then the
    /// `WHERESMYFOX_<SECTION>__<KEY>` variables among `env`, then `flags`, then validation.
    /// An error names the file, variable or key at fault.
    pub fn layered(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Flags,
    ) -> Result<Config, ConfigError> {
        let (text, path) = match file {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
                path.to_owned(),
            ),
            None => (String::new(), PathBuf::new()),
        };
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().replace('\n', " "),
        };
        // Parsed once as a whole first, so mistakes in the file are reported with its lines.
        toml::from_str::<Config>(&text).map_err(parse_error)?;
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(ENV_PREFIX) && name.contains("__"))
            .collect();
        // Deterministic whatever order the environment lists them in.
        overrides.sort();
        for (var, raw) in overrides {
            let (section, key, value) = env_override(&var, &raw)?;
            let section = table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(key, value);
            }
        }
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: PathBuf::from("(environment)"),
                    message: e.to_string().trim_end().replace('\n', " "),
                })?;
        if let Some(listen) = flags.listen {
            config.server.listen = listen;
        }
        if let Some(dir) = &flags.data_dir {
            config.server.data_dir = dir.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// The effective configuration as TOML, with secrets replaced by [`REDACTED`].
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.storage.seal_key.is_some() {
            shown.storage.seal_key = Some(REDACTED.to_owned());
        }
        if !shown.oidc.client_secret.is_empty() {
            shown.oidc.client_secret = REDACTED.to_owned();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot show: {e}\n"))
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
                "must be an absolute http or https URL without a path, such as https://find.example.com",
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
            self.limits.sign_in_account_burst >= 1,
            "limits.sign_in_account_burst",
            "must be at least 1",
        )?;
        check(
            self.limits.sign_in_address_burst >= 1,
            "limits.sign_in_address_burst",
            "must be at least 1",
        )?;
        check(
            self.limits.commands_owner_burst >= 1,
            "limits.commands_owner_burst",
            "must be at least 1",
        )?;
        for (value, key) in [
            (
                self.limits.sign_in_account_per_hour,
                "limits.sign_in_account_per_hour",
            ),
            (
                self.limits.sign_in_address_per_hour,
                "limits.sign_in_address_per_hour",
            ),
        ] {
            check(
                value <= 3_600_000,
                key,
                "must be at most 3600000 (0 turns the limit off)",
            )?;
        }
        check(
            self.limits.commands_owner_per_minute <= 60_000,
            "limits.commands_owner_per_minute",
            "must be at most 60000 (0 turns the limit off)",
        )?;
        check(
            (1000..=10_000_000).contains(&self.limits.max_keys),
            "limits.max_keys",
            "must be from 1000 to 10000000",
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
        if let Some(metrics) = self.metrics.listen {
            check(
                metrics != self.server.listen || metrics.port() == 0,
                "metrics.listen",
                "must differ from server.listen (leave it unset to serve /metrics there)",
            )?;
        }
        check(
            (1..=60_000).contains(&self.push.connect_timeout_ms),
            "push.connect_timeout_ms",
            "must be from 1 to 60000",
        )?;
        check(
            (1..=300_000).contains(&self.push.request_timeout_ms),
            "push.request_timeout_ms",
            "must be from 1 to 300000",
        )?;
        check(
            self.push.retries <= 20,
            "push.retries",
            "must be at most 20",
        )?;
        check(
            (1..=100_000).contains(&self.push.max_in_flight),
            "push.max_in_flight",
            "must be from 1 to 100000",
        )?;
        check(
            (1..=3_600_000).contains(&self.push.backoff_base_ms),
            "push.backoff_base_ms",
            "must be from 1 to 3600000",
        )?;
        check(
            (self.push.backoff_base_ms..=3_600_000).contains(&self.push.backoff_max_ms),
            "push.backoff_max_ms",
            "must be from push.backoff_base_ms to 3600000",
        )?;
        check(
            self.push.web_push_ttl_secs <= 2_419_200,
            "push.web_push_ttl_secs",
            "must be at most 2419200 (four weeks)",
        )?;
        if let Err(message) = self.push_policy() {
            return Err(ConfigError::Invalid {
                key: "push.allowed_cidrs",
                message,
            });
        }
        check(
            (1..=7 * 24 * 60).contains(&self.web.session_idle_minutes),
            "web.session_idle_minutes",
            "must be from 1 to 10080",
        )?;
        check(
            (1..=24 * 30).contains(&self.web.session_max_hours),
            "web.session_max_hours",
            "must be from 1 to 720",
        )?;
        check(
            self.web.tile_url.is_empty()
                || (self.web.tile_origin().is_some()
                    && ["{z}", "{x}", "{y}"]
                        .iter()
                        .all(|p| self.web.tile_url.contains(p))),
            "web.tile_url",
            "must be empty or an http(s) URL with {z}, {x} and {y}, such as https://tile.openstreetmap.org/{z}/{x}/{y}.png",
        )?;
        check(
            self.web.tile_attribution.chars().count() <= 200,
            "web.tile_attribution",
            "must be at most 200 characters",
        )?;
        if !self.oidc.issuer.is_empty() {
            let oidc = &self.oidc;
            check(
                !oidc.audience.is_empty(),
                "oidc.audience",
                "is required when oidc.issuer is set",
            )?;
            check(
                oidc.jwks_file.is_empty() != oidc.jwks_url.is_empty(),
                "oidc.jwks_url",
                "set exactly one of oidc.jwks_file and oidc.jwks_url",
            )?;
            let url_ok = |url: &str| {
                url.is_empty() || url.starts_with("https://") || url.starts_with("http://")
            };
            for (key, url) in [
                ("oidc.jwks_url", &oidc.jwks_url),
                ("oidc.authorization_endpoint", &oidc.authorization_endpoint),
                ("oidc.token_endpoint", &oidc.token_endpoint),
                ("oidc.redirect_url", &oidc.redirect_url),
            ] {
                check(url_ok(url), key, "must be an http(s) URL")?;
            }
            check(
                (1..=86_400).contains(&oidc.jwks_refetch_secs),
                "oidc.jwks_refetch_secs",
                "must be from 1 to 86400",
            )?;
            check(
                oidc.leeway_secs <= 600,
                "oidc.leeway_secs",
                "must be at most 600",
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
        let remote = &self.remote_storage;
        check(
            (100..=60_000).contains(&remote.connect_timeout_ms),
            "remote_storage.connect_timeout_ms",
            "must be from 100 to 60000",
        )?;
        check(
            (1_000..=600_000).contains(&remote.request_timeout_ms),
            "remote_storage.request_timeout_ms",
            "must be from 1000 to 600000",
        )?;
        check(
            (1..=64).contains(&remote.fetch_concurrency),
            "remote_storage.fetch_concurrency",
            "must be from 1 to 64",
        )?;
        if let Err(reason) = self.remote_storage_policy() {
            return Err(ConfigError::Invalid {
                key: "remote_storage.allowed_cidrs",
                message: reason,
            });
        }
        let blobs = &self.blobs;
        check(
            (64 * 1024..=8 * 1024 * 1024).contains(&blobs.chunk_bytes),
            "blobs.chunk_bytes",
            "must be from 65536 to 8388608",
        )?;
        check(
            blobs.max_blob_bytes >= 1 && blobs.max_blob_bytes / blobs.chunk_bytes < 1_000_000,
            "blobs.max_blob_bytes",
            "must be at least 1, and under a million chunks",
        )?;
        check(
            blobs.max_user_bytes >= blobs.max_blob_bytes,
            "blobs.max_user_bytes",
            "must be at least blobs.max_blob_bytes",
        )?;
        check(
            (1..=1_000_000).contains(&blobs.max_blobs_per_user),
            "blobs.max_blobs_per_user",
            "must be from 1 to 1000000",
        )?;
        check(
            blobs.upload_ttl_secs >= 60,
            "blobs.upload_ttl_secs",
            "must be at least 60",
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
        // Tests reach loopback only, and their devices name push URLs nobody serves; a test
        // of wake-ups turns this on with an endpoint of its own.
        config.push.enabled = false;
        config
    }

    /// The outbound policy for push URLs, from `push.allow_http` and `push.allowed_cidrs`.
    pub fn push_policy(&self) -> Result<crate::outbound::Policy, String> {
        let allowed = self
            .push
            .allowed_cidrs
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, String>>()?;
        Ok(crate::outbound::Policy {
            allow_http: self.push.allow_http,
            allowed,
        })
    }

    /// The outbound policy for linked storages, from `remote_storage.allow_http` and
    /// `remote_storage.allowed_cidrs`.
    pub fn remote_storage_policy(&self) -> Result<crate::outbound::Policy, String> {
        let allowed = self
            .remote_storage
            .allowed_cidrs
            .iter()
            .map(|c| c.parse())
            .collect::<Result<_, String>>()?;
        Ok(crate::outbound::Policy {
            allow_http: self.remote_storage.allow_http,
            allowed,
        })
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

/// One `WHERESMYFOX_<SECTION>__<KEY>` variable as `(section, key, value)`, checked on its own
/// so that a wrong one is reported under its own name. The value is read as TOML (`8080`,
/// `true`, `["10.0.0.0/8"]`), or as a plain string when it is not TOML or the key wants one.
fn env_override(var: &str, raw: &str) -> Result<(String, String, toml::Value), ConfigError> {
    let rest = &var[ENV_PREFIX.len()..];
    let (section, key) = rest.split_once("__").unwrap_or((rest, ""));
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    let dotted = format!("{section}.{key}");
    let error = |message: String| ConfigError::Env {
        var: var.to_owned(),
        key: dotted.clone(),
        message,
    };
    if section.is_empty() || key.is_empty() {
        return Err(error("expected WHERESMYFOX_<SECTION>__<KEY>".to_owned()));
    }
    let try_value = |value: toml::Value| -> Result<toml::Value, String> {
        let mut inner = toml::Table::new();
        inner.insert(key.clone(), value.clone());
        let mut outer = toml::Table::new();
        outer.insert(section.clone(), toml::Value::Table(inner));
        toml::Value::Table(outer)
            .try_into::<Config>()
            .map(|_| value)
            .map_err(|e| e.to_string().trim_end().replace('\n', " "))
    };
    let as_string = toml::Value::String(raw.to_owned());
    match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut parsed) => {
            let value = parsed.remove("v").unwrap_or(as_string.clone());
            try_value(value)
                .or_else(|first| try_value(as_string).map_err(|_| first))
                .map(|value| (section.clone(), key.clone(), value))
                .map_err(error)
        }
        Err(_) => try_value(as_string)
            .map(|value| (section.clone(), key.clone(), value))
            .map_err(error),
    }
}

/// Host and port of an absolute http(s) URL; the port defaults by scheme (80 or 443).
fn parse_public_url(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    // Devices sign the path they request; a prefix the proxy strips would break every MAC.
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return None;
    }
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
        let e = Config::from_toml("[push]\nallowed_cidrs = [\"10.0.0.0/40\"]\n").unwrap_err();
        assert!(e.to_string().contains("push.allowed_cidrs"), "{e}");
        let e =
            Config::from_toml("[push]\nbackoff_base_ms = 10\nbackoff_max_ms = 5\n").unwrap_err();
        assert!(e.to_string().contains("push.backoff_max_ms"), "{e}");
        let e = Config::from_toml("[log]\nlevel = \"[[\"\n").unwrap_err();
        assert!(e.to_string().contains("log.level"), "{e}");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let toml = file(
            "[server]\nlisten = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\n[poll]\nwait_secs = 20\n",
        );
        // The file alone.
        let c = Config::layered(Some(toml.path()), env(&[]), &Flags::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:1000".parse().unwrap());
        assert_eq!(c.poll.wait_secs, 20);
        // The environment overrides the file; other variables are left alone.
        let vars = env(&[
            ("WHERESMYFOX_SERVER__LISTEN", "127.0.0.1:2000"),
            ("WHERESMYFOX_SERVER__DATA_DIR", "/from/env"),
            ("WHERESMYFOX_POLL__WAIT_SECS", "30"),
            ("WHERESMYFOX_ACCOUNTS__SIGNUP", "false"),
            ("WHERESMYFOX_PROXY__TRUSTED", "[\"10.0.0.0/8\", \"::1\"]"),
            ("WHERESMYFOX_LOG__FORMAT", "json"),
            ("WHERESMYFOX_SEAL_KEY", "not a config key"),
            ("WHERESMYFOX_REQUIRE_NGINX", "1"),
            ("PATH", "/usr/bin"),
        ]);
        let c = Config::layered(Some(toml.path()), vars.clone(), &Flags::default()).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:2000".parse().unwrap());
        assert_eq!(c.server.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.poll.wait_secs, 30);
        assert!(!c.accounts.signup);
        assert_eq!(c.proxy.trusted.len(), 2);
        assert_eq!(c.log.format, LogFormat::Json);
        // Flags override the environment.
        let flags = Flags {
            listen: Some("127.0.0.1:3000".parse().unwrap()),
            data_dir: Some(PathBuf::from("/from/flag")),
        };
        let c = Config::layered(Some(toml.path()), vars, &flags).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(c.server.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(
            c.poll.wait_secs, 30,
            "what no flag sets keeps the env value"
        );
        // No file: the defaults, overridden.
        let c = Config::layered(None, env(&[("WHERESMYFOX_LOG__LEVEL", "debug")]), &flags).unwrap();
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.poll.wait_secs, Config::default().poll.wait_secs);
    }

    #[test]
    fn a_bad_environment_value_names_the_variable_and_the_key() {
        for (var, value, needle) in [
            (
                "WHERESMYFOX_SERVER__MAX_BODY_BYTES",
                "big",
                "server.max_body_bytes",
            ),
            ("WHERESMYFOX_SERVER__LISTEN", "nowhere", "server.listen"),
            (
                "WHERESMYFOX_PROXY__TRUSTED",
                "[\"10.0.0.0/99\"]",
                "proxy.trusted",
            ),
            ("WHERESMYFOX_POLL__WIAT_SECS", "5", "poll.wiat_secs"),
            ("WHERESMYFOX_NOPE__LISTEN", "5", "nope.listen"),
            ("WHERESMYFOX_LOG__FORMAT", "xml", "log.format"),
        ] {
            let e = Config::layered(None, env(&[(var, value)]), &Flags::default()).unwrap_err();
            let text = e.to_string();
            assert!(text.contains(var) && text.contains(needle), "{var}: {text}");
        }
        // Values well-typed one by one but out of range together: validation names the key.
        let e = Config::layered(
            None,
            env(&[("WHERESMYFOX_POLL__OFFLINE_AFTER_SECS", "10")]),
            &Flags::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("poll.offline_after_secs"), "{e}");
        // A string key given something that reads as another TOML type is taken as a string.
        let c = Config::layered(
            None,
            env(&[(
                "WHERESMYFOX_STORAGE__SEAL_KEY",
                "12345678901234567890123456789012",
            )]),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(
            c.storage.seal_key.as_deref(),
            Some("12345678901234567890123456789012")
        );
    }

    #[test]
    fn a_bad_file_names_the_file_and_the_key() {
        let toml = file("[server]\nmax_connections = \"many\"\n");
        let e = Config::layered(Some(toml.path()), env(&[]), &Flags::default()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("max_connections"), "{text}");
        assert!(text.contains(&toml.path().display().to_string()), "{text}");
    }

    #[test]
    fn the_effective_config_is_shown_with_secrets_redacted() {
        let mut config = Config::default();
        config.storage.seal_key = Some("a very secret key of at least thirty-two chars".into());
        config.proxy.trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let text = config.to_redacted_toml();
        assert!(!text.contains("very secret"), "{text}");
        assert!(text.contains(REDACTED), "{text}");
        assert!(text.contains("10.0.0.0/8"), "{text}");
        // What is shown reads back as the same configuration (apart from the secret).
        let mut back =
            Config::from_toml(&text.replace(REDACTED, &"k".repeat(32))).unwrap_or_else(|e| {
                panic!("{e}\n{text}");
            });
        back.storage.seal_key = config.storage.seal_key.clone();
        assert_eq!(back, config);
    }

    #[test]
    fn trusted_proxies_and_the_metrics_address_are_checked() {
        let e = Config::from_toml("[proxy]\ntrusted = [\"10.0.0.0/40\"]\n").unwrap_err();
        assert!(e.to_string().contains("trusted"), "{e}");
        let e = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
        let e =
            Config::from_toml("[server]\npublic_url = \"https://x.example/fox\"\n").unwrap_err();
        assert!(e.to_string().contains("server.public_url"), "{e}");
    }
}
