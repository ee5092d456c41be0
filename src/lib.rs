//! Leaseline leases surcharged phone numbers to website visitors for a short window and tells
//! the phone network who is calling whom.
//!
//! # Layout
//! - [`core`]: the pure allocation state machine (no I/O, no clock): pools, leases, wheel.
//! - [`store`]: persistence of core effects: a log in sled (with the call journal) folded into
//!   snapshot files by a background compaction; group commit; recovery; the `Backend` and
//!   `Storage` traits the service reaches it through.
//! - [`service`]: the core behind a lock, each change durable before it is answered.
//! - [`http`]: the axum router of the v1 contract, errors as problem+json.
//! - [`server`]: the connection layer: connection cap, head and idle deadlines, bounded drain.
//! - [`config`]: `pool.toml` into a validated [`config::Config`]; [`duration`]: how it writes
//!   durations.
//! - [`limits`]: abuse limiters (rates, backoff on failures) and client address prefixes.
//! - [`metrics`]: every Prometheus metric name.
//! - [`startup`]: wiring, tick task, graceful shutdown.
//! - [`reload`]: `SIGHUP` and `POST /v1/admin/reload`: the configuration read again, applied
//!   or refused whole.
//! - [`webhooks`]: signed webhooks: endpoints, the events an operation causes (written with
//!   it), the delivery worker with retries.
//! - [`clock`]: the system clock and a manual one for tests.
//! - [`client`]: the outgoing HTTP client (TLS through rustls), for `leaseline export`.

pub mod client;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod duration;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod plan;
pub mod reload;
pub mod server;
pub mod service;
pub mod startup;
pub mod store;
pub mod telephony;
pub mod webhooks;
