//! wheresmyfox: find, ring, lock and wipe lost phones in real time.
//!
//! A long-polling, BOSH-style gateway for the Where's My Fox device protocol. Devices hold a
//! Hawk-signed `POST /1/cmd/{id}` open; an owner's command wakes that parked request within
//! milliseconds, without websockets.
//!
//! # The path of a request
//!
//! ```text
//! accept ──► read + authenticate ──► route ──► park or wake ──► respond
//! server       service, hawk_auth,    service    mailbox,         service (signs device
//!              accounts                          device, registry  answers with hawk_auth)
//! ```
//!
//! - [`server`]: the accept loop, the connection cap, hyper's http1 settings, shutdown phases.
//! - [`service`]: routing, handlers, and the one place an [`error::ApiError`] becomes a response.
//! - [`hawk_auth`]: Hawk verification of device requests and signing of the answers.
//! - [`accounts`]: owners, argon2id passwords, bearer tokens.
//! - [`protocol`]: the wire format (command objects, device reports) and its validation; pure.
//! - [`registry`]: the sharded device table; [`device`]: one device's outbox, positions, events.
//! - [`mailbox`]: the park/wake primitive (one parked poll per device), over the [`sync`] facade.
//! - [`gateway`]: shared state, counters, the shutdown signal, background maintenance.
//! - [`client`]: a device client (signing, verifying, the poll loop) used by tests and tools.
//! - [`store`]: durability: the journal (group commit), snapshots, recovery, sealing.
//! - [`config`]: settings and their validation.
//! - [`forwarded`]: the real client address (and scheme and host) behind trusted proxies; pure.
//! - [`metrics`]: counters and histograms, rendered for Prometheus at `/metrics`.
//! - [`admin`]: the operator's admin socket (`wheresmyfox user add`).
//! - [`ratelimit`]: keyed limits against password guessing and command flooding; [`cidr`]:
//!   the IP networks the config names (trusted proxies, reachable push networks).
//! - [`push`]: waking devices with no poll parked through their push URL, over [`outbound`],
//!   the HTTP client that refuses internal destinations.
//! - [`websession`]: browser sessions (cookie digests, idle and absolute expiry, CSRF tokens);
//!   the page itself and its routes are in `service::web`.
//! - [`oidc`]: an OpenID Connect provider's tokens (JWKS, RS256/ES256) and its sign-in flow.
//! - [`datasync`]: per-user synced collections (revisions, tombstones, change feeds) and the
//!   client that encrypts them; served by `service::sync`.
//! - [`remote`]: where payloads are kept: the storage backends (our own disk, or the user's
//!   WebDAV), and the sealed credentials of a linked storage; served by `service::remote`.

pub mod accounts;
pub mod admin;
pub mod cidr;
pub mod client;
pub mod clock;
pub mod config;
pub mod datasync;
pub mod device;
pub mod error;
pub mod forwarded;
pub mod gateway;
pub mod hawk_auth;
pub mod ids;
pub mod mailbox;
pub mod metrics;
pub mod oidc;
pub mod outbound;
pub mod protocol;
pub mod push;
pub mod ratelimit;
pub mod registry;
pub mod remote;
pub mod server;
pub mod service;
pub mod store;
pub(crate) mod sync;
pub mod websession;

pub use config::Config;
pub use gateway::Gateway;
