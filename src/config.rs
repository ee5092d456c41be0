//! `pool.toml` → a typed, validated [`Config`]. Everything is checked here, once, with a message
//! that names the file, the pool or key, and what was expected; nothing later re-validates.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::Digest;

use crate::limits::{BackoffPolicy, Cidr};
use crate::telephony::prompts::Voice;
use thiserror::Error;

use crate::core::{
    Currency, Formula, LeaseSettings, OnExhausted, PhoneNumber, PoolLimits, PoolMode, PoolSpec,
    Rate, Share, Target, Tariff, TariffUnit, TenantId,
};

pub use crate::duration::{fmt_duration, parse_duration};

/// Most numbers one `[[pool]]` may hold: a bound on memory and start-up time.
pub const MAX_POOL_SIZE: u64 = 10_000_000;

/// Pages may hold 80% of a pool's numbers and of its codes: on the shipped pool (1,001
/// numbers) 200 numbers and 2,000 codes always stay for the sites' servers.
const DEFAULT_PAGE_SHARE: Share = match Share::from_permille(800) {
    Some(s) => s,
    None => unreachable!(),
};

/// A page's lease lives at most this long (or the pool's `max_ttl` if shorter): renewing from a
/// page cannot hold a number for the 2 hours a server may.
const DEFAULT_PAGE_MAX_TTL: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub message: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub pools: Vec<PoolConfig>,
    pub keys: Vec<KeyConfig>,
    pub twilio: Option<TwilioConfig>,
    pub limits: LimitsConfig,
    pub demo: Option<DemoConfig>,
    /// `[[webhook]]` endpoints (see [`crate::webhooks`]).
    pub webhooks: Vec<crate::webhooks::Endpoint>,
    /// `[cluster]`: state in etcd, one leader elected among instances (see [`crate::cluster`]);
    /// `None`: embedded sled, one process.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Settings accepted but no longer used (kept so an upgrade never refuses a file that
    /// worked): `check` prints them, `serve` logs them.
    pub warnings: Vec<String>,
}

/// Abuse limits (`[limits]`).
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Wrong access codes slowed per visitor address and per `client` value, and per
    /// address prefix (which holds many visitors, so it has more free failures).
    pub redeem_per_client: BackoffPolicy,
    pub redeem_per_prefix: BackoffPolicy,
    /// Allocations per minute with publishable keys, per client address, per address prefix
    /// (/24, /56) and per (tenant, session).
    pub publishable_per_ip: u32,
    pub publishable_per_prefix: u32,
    pub publishable_per_session: u32,
    /// Renewals per minute without a site key (pages, anyone holding a lease id), per lease
    /// and per client address.
    pub renews_per_lease: u32,
    pub renews_per_ip: u32,
    /// Open event streams (`GET /v1/leases/{id}/events`) per lease and per client address.
    pub event_streams_per_lease: u32,
    pub event_streams_per_ip: u32,
}

/// The demo page (`[demo]`): a tiny classifieds page using the drop-in script.
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// The publishable key's token the page uses (it is public by nature).
    pub key: String,
    pub pool: String,
}

/// Twilio's voice webhook: requests are authenticated by their signature, made with the
/// account's auth token (a shared secret, so it is stored as is, not hashed).
#[derive(Clone, Debug)]
pub struct TwilioConfig {
    pub auth_token: String,
    /// The base URL Twilio calls (`https://calls.example.com`), when a proxy stands in front:
    /// signatures cover the URL Twilio used. Without it, `http://` + the Host header.
    pub public_url: Option<String>,
    /// The voice of pools that set no `language`: `language` (default `fr-FR`), shipped prompts.
    pub voice: Voice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitMode {
    /// Concurrent writers share one flush (the default).
    Group,
    /// Each acknowledged write pays for its own flush: the baseline group commit is measured against.
    PerRequest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Where sled keeps its files; a relative path is taken from the config file's folder.
    pub data_dir: PathBuf,
    /// sled's page cache; sled's own default (1 GiB) is far more than this workload needs.
    pub cache_capacity: u64,
    pub commit: CommitMode,
    /// State changes logged since the newest snapshot file past which a new one is written
    /// in the background (the log since it is what a restart replays).
    pub snapshot_after_changes: u64,
    /// No two background snapshots closer than this (each rewrites the whole state).
    pub snapshot_min_interval: Duration,
    /// Past this age, callers' numbers in the journal are replaced by keyed hashes (data
    /// protection); amounts and everything else stay.
    pub journal_retention: Duration,
    pub log_format: LogFormat,
    /// A wall clock found behind the store's last recorded instant by at most this much at
    /// start-up is raised to that instant (time never runs backwards); by more, Leaseline
    /// refuses to start rather than run in the wrong time.
    pub max_clock_rewind: Duration,
    /// Start anyway when the wall clock is behind by more than `max_clock_rewind`, trusting
    /// it (`serve --accept-wall-clock`; never read from the file, so it cannot stay on).
    pub accept_wall_clock: bool,
    pub connections: ConnectionLimits,
    /// Proxies whose `X-Forwarded-For` is believed: behind them, the client's address is the
    /// last one they did not add. Empty: the socket's peer is the client.
    pub trusted_proxies: Vec<Cidr>,
}

/// What one client connection may hold (`[server]`), enforced by `src/server/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request head (request line and headers) must arrive whole within this, counted from
    /// the connection's opening or the first byte of the request: slow heads are cut.
    pub header_timeout: Duration,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond, a new one gets an immediate 503 and is closed.
    /// Lowered at start-up to what the process's open-file limit allows.
    pub max_connections: usize,
    /// Connections one client address may hold at once; beyond, a new one gets an immediate
    /// 429 and is closed, so one address cannot take every slot. Peers in `trusted_proxies`
    /// (which carry many clients) are not held to it. 0: no per-address cap.
    pub max_connections_per_ip: usize,
    /// The same for one address prefix (/24 IPv4, /56 IPv6): an IPv6 host holds a whole /64,
    /// so a per-address cap alone would not hold it. 0: no per-prefix cap.
    pub max_connections_per_prefix: usize,
    /// On SIGTERM, requests in progress get this long to finish; then their connections are
    /// closed, the store flushed, and the process exits 0.
    pub drain_timeout: Duration,
    /// A request (reading its body included; event streams excepted) not answered within
    /// this gets 408 if its body was still arriving, else 503.
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_connections_per_prefix: 1024,
            drain_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The pool as the core serves it (its tariff included).
    pub spec: PoolSpec,
    /// Allocations one key may make per minute in this pool (0: no limit).
    pub allocations_per_minute_per_key: u32,
    /// What its calls hear: the pool's `language` (else `[twilio] language`) and `prompts`.
    pub voice: Voice,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A site's server: allocates, reads, renews, releases and redeems leases.
    Site,
    /// A telephony platform: reports calls.
    Telephony,
    /// An operator: reads pools and journals.
    Admin,
    /// A key that may sit in a web page: allocates and renews only, from its `origins`.
    Publishable,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Site => "site",
            Role::Telephony => "telephony",
            Role::Admin => "admin",
            Role::Publishable => "publishable",
        }
    }
}

#[derive(Clone, Debug)]
pub struct KeyConfig {
    pub name: String,
    /// Keys of one tenant share leases; defaults to the key's name.
    pub tenant: TenantId,
    pub role: Role,
    pub sha256: [u8; 32],
    /// Pools this key may use; `None` means all.
    pub pools: Option<Vec<String>>,
    /// For publishable keys: the page origins (`https://www.example.com`) it may be used from.
    pub origins: Vec<String>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path).map_err(|message| ConfigError {
            file: path.display().to_string(),
            message: format!("cannot read: {message}"),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|message| ConfigError {
            file: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        validate(raw, base)
    }
}

/// The largest configuration file read: far above any real one (a million numbers listed one
/// by one take about 17 MiB), and a bound on what a wrong path costs a running server that
/// reloads it.
pub const MAX_CONFIG_BYTES: u64 = 64 << 20;

/// The file's text, if it is a regular file (symbolic links followed) of at most
/// [`MAX_CONFIG_BYTES`]: a device such as `/dev/zero` would be read until memory runs out, and
/// opening a FIFO blocks until someone writes to it, either one holding the reload task for
/// good.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    match text.len() as u64 > MAX_CONFIG_BYTES {
        true => Err(format!("larger than {} MiB", MAX_CONFIG_BYTES >> 20)),
        false => Ok(text),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    lease: RawLease,
    #[serde(default, rename = "pool")]
    pools: Vec<RawPool>,
    #[serde(default, rename = "key")]
    keys: Vec<RawKey>,
    twilio: Option<RawTwilio>,
    #[serde(default)]
    limits: RawLimits,
    demo: Option<RawDemo>,
    #[serde(default, rename = "webhook")]
    webhooks: Vec<crate::webhooks::RawEndpoint>,
    cluster: Option<crate::cluster::RawCluster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    redeem_failures_per_client: Option<u32>,
    redeem_failures_per_prefix: Option<u32>,
    redeem_backoff: Option<String>,
    redeem_max_delay: Option<String>,
    redeem_forget: Option<String>,
    /// Gone (a key-wide lockout, then a fixed one): read only to say what replaced them.
    redeem_failures_per_key: Option<toml::Value>,
    redeem_window: Option<toml::Value>,
    redeem_lockout: Option<toml::Value>,
    publishable_per_ip: Option<u32>,
    publishable_per_prefix: Option<u32>,
    publishable_per_session: Option<u32>,
    renews_per_lease: Option<u32>,
    renews_per_ip: Option<u32>,
    event_streams_per_lease: Option<u32>,
    event_streams_per_ip: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDemo {
    enabled: bool,
    key: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTwilio {
    auth_token: String,
    public_url: Option<String>,
    language: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<String>,
    cache_capacity_mb: Option<u64>,
    commit: Option<String>,
    snapshot_after_changes: Option<u64>,
    snapshot_min_interval: Option<String>,
    journal_retention: Option<String>,
    log_format: Option<String>,
    max_clock_rewind: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<u64>,
    max_connections_per_ip: Option<u64>,
    max_connections_per_prefix: Option<u64>,
    drain_timeout: Option<String>,
    request_timeout: Option<String>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawLease {
    ttl: Option<String>,
    max_ttl: Option<String>,
    page_max_ttl: Option<String>,
    grace: Option<String>,
    quarantine: Option<String>,
    retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    numbers: Vec<String>,
    tariff: Option<RawTariff>,
    on_exhausted: Option<String>,
    shared_number: Option<String>,
    code_ttl: Option<String>,
    return_window: Option<String>,
    fallback_target: Option<String>,
    mode: Option<String>,
    calls_required: Option<u32>,
    min_call_secs: Option<u32>,
    window: Option<String>,
    access_ttl: Option<String>,
    price: Option<RawPrice>,
    max_live_per_session: Option<u32>,
    max_live_per_tenant: Option<u32>,
    allocations_per_minute_per_key: Option<u32>,
    page_share: Option<f64>,
    /// The voice's language (`fr`, `de`, `it`, `en`, or a tag such as `de-CH`).
    language: Option<String>,
    /// Prompt name → the pool's own text for it.
    prompts: Option<BTreeMap<String, String>>,
    ttl: Option<String>,
    max_ttl: Option<String>,
    page_max_ttl: Option<String>,
    grace: Option<String>,
    quarantine: Option<String>,
    retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    amount: String,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTariff {
    per_call: Option<String>,
    per_minute: Option<String>,
    currency: String,
    /// Per-minute tariffs bill the duration rounded up to a multiple of this (default 1s).
    increment: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    role: String,
    sha256: String,
    tenant: Option<String>,
    pools: Option<Vec<String>>,
    origins: Option<Vec<String>>,
}

fn validate(raw: RawConfig, base: &Path) -> Result<Config, String> {
    let server = validate_server(raw.server, base)?;
    let defaults = RawLease {
        ttl: raw.lease.ttl.or(Some("15m".into())),
        max_ttl: raw.lease.max_ttl.or(Some("2h".into())),
        // No default here: unless set, a pool's is 30m or its max_ttl if shorter.
        page_max_ttl: raw.lease.page_max_ttl,
        grace: raw.lease.grace.or(Some("5m".into())),
        quarantine: raw.lease.quarantine.or(Some("10m".into())),
        retention: raw.lease.retention.or(Some("1d".into())),
    };
    if raw.pools.is_empty() {
        return Err("no [[pool]] is defined: at least one pool of numbers is needed".into());
    }
    let twilio = raw.twilio.map(validate_twilio).transpose()?;
    let default_voice = twilio.as_ref().map(|t| t.voice.clone()).unwrap_or_default();
    let mut pools = Vec::new();
    let mut owner: HashMap<PhoneNumber, String> = HashMap::new();
    let mut names = HashSet::new();
    for p in raw.pools {
        let pool = validate_pool(p, &defaults, &default_voice, &mut owner)?;
        if !names.insert(pool.spec.name.clone()) {
            return Err(format!("pool {:?} is defined twice", pool.spec.name));
        }
        pools.push(pool);
    }
    // A call stays in memory for its pool's retention (for its `end`, which writes the record
    // again): the journal may only hide its caller after that.
    if let Some(p) = pools
        .iter()
        .find(|p| p.spec.settings.retention >= server.journal_retention)
    {
        return Err(format!(
            "[server] journal_retention = {} must be longer than pool {:?}'s retention ({})",
            fmt_duration(server.journal_retention),
            p.spec.name,
            fmt_duration(p.spec.settings.retention)
        ));
    }
    let mut keys: Vec<KeyConfig> = Vec::new();
    for k in raw.keys {
        let key = validate_key(k, &names)?;
        if keys.iter().any(|o| o.name == key.name) {
            return Err(format!("key {:?} is defined twice", key.name));
        }
        if let Some(o) = keys.iter().find(|o| o.sha256 == key.sha256) {
            return Err(format!(
                "keys {:?} and {:?} have the same sha256: each key needs its own token",
                o.name, key.name
            ));
        }
        keys.push(key);
    }
    if !server.listen.ip().is_loopback() && keys.is_empty() {
        return Err(format!(
            "refusing to listen on {} with no [[key]]: beyond loopback, define keys first",
            server.listen
        ));
    }
    let mut warnings = Vec::new();
    let limits = validate_limits(raw.limits, &mut warnings)?;
    let demo = match raw.demo {
        Some(RawDemo {
            enabled: true,
            key,
            pool,
        }) => {
            let key = key.ok_or("[demo] needs key, the token of a publishable key")?;
            let digest: [u8; 32] = sha2::Sha256::digest(key.as_bytes()).into();
            if !keys
                .iter()
                .any(|k| k.role == Role::Publishable && k.sha256 == digest)
            {
                return Err(
                    "[demo] key is not the token of any publishable [[key]]: the page could not allocate".into(),
                );
            }
            let pool = pool.ok_or("[demo] needs pool, the pool its listings use")?;
            if !names.contains(&pool) {
                return Err(format!("[demo] pool {pool:?} is not a [[pool]]"));
            }
            Some(DemoConfig { key, pool })
        }
        _ => None,
    };
    let webhooks = crate::webhooks::validate(raw.webhooks, |var| std::env::var(var).ok())?;
    let cluster = raw.cluster.map(crate::cluster::validate).transpose()?;
    if cluster.is_some() && !webhooks.is_empty() {
        return Err(
            "[[webhook]] cannot be used with [cluster] yet: deliveries are kept in the local \
             store, which a failover would leave behind"
                .into(),
        );
    }
    Ok(Config {
        server,
        pools,
        keys,
        twilio,
        limits,
        demo,
        webhooks,
        cluster,
        warnings,
    })
}

fn validate_server(raw: RawServer, base: &Path) -> Result<ServerConfig, String> {
    let listen_s = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen = listen_s.parse().map_err(|_| {
        format!("[server] listen = {listen_s:?} is not an address:port such as \"127.0.0.1:8080\"")
    })?;
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "data".into()));
    let data_dir = if data_dir.is_absolute() {
        data_dir
    } else {
        base.join(data_dir)
    };
    let cache_mb = raw.cache_capacity_mb.unwrap_or(64);
    if !(8..=65_536).contains(&cache_mb) {
        return Err(format!(
            "[server] cache_capacity_mb = {cache_mb}: expected 8 to 65536"
        ));
    }
    let commit = match raw.commit.as_deref().unwrap_or("group") {
        "group" => CommitMode::Group,
        "per_request" => CommitMode::PerRequest,
        other => {
            return Err(format!(
                "[server] commit = {other:?}: expected \"group\" or \"per_request\""
            ))
        }
    };
    let log_format = match raw.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(format!(
                "[server] log_format = {other:?}: expected \"text\" or \"json\""
            ))
        }
    };
    let defaults = ConnectionLimits::default();
    let bounded =
        |key: &str, v: &Option<String>, default: Duration, min: Duration, max: Duration| {
            let Some(text) = v else {
                return Ok(default);
            };
            let d = parse_duration(text).map_err(|e| format!("[server] {key} = {text:?}: {e}"))?;
            if d < min || d > max {
                return Err(format!(
                    "[server] {key} = {text:?}: expected {} to {}",
                    fmt_duration(min),
                    fmt_duration(max)
                ));
            }
            Ok(d)
        };
    let secs = Duration::from_secs;
    let max_connections = raw
        .max_connections
        .unwrap_or(defaults.max_connections as u64);
    if !(1..=1_000_000).contains(&max_connections) {
        return Err(format!(
            "[server] max_connections = {max_connections}: expected 1 to 1000000"
        ));
    }
    let max_connections_per_ip = raw
        .max_connections_per_ip
        .unwrap_or(defaults.max_connections_per_ip as u64);
    if max_connections_per_ip > 1_000_000 {
        return Err(format!(
            "[server] max_connections_per_ip = {max_connections_per_ip}: expected 0 (no cap) to 1000000"
        ));
    }
    let max_connections_per_prefix = match raw.max_connections_per_prefix {
        Some(n) => n,
        // Four addresses' worth by default, as for page allocations.
        None if raw.max_connections_per_ip.is_some() => max_connections_per_ip.saturating_mul(4),
        None => defaults.max_connections_per_prefix as u64,
    };
    if max_connections_per_prefix > 4_000_000
        || (max_connections_per_prefix > 0 && max_connections_per_prefix < max_connections_per_ip)
    {
        return Err(format!(
            "[server] max_connections_per_prefix = {max_connections_per_prefix}: expected 0 (no cap), or max_connections_per_ip ({max_connections_per_ip}) to 4000000"
        ));
    }
    let connections = ConnectionLimits {
        header_timeout: bounded(
            "header_timeout",
            &raw.header_timeout,
            defaults.header_timeout,
            secs(1),
            secs(600),
        )?,
        idle_timeout: bounded(
            "idle_timeout",
            &raw.idle_timeout,
            defaults.idle_timeout,
            secs(1),
            secs(3600),
        )?,
        max_connections: max_connections as usize,
        max_connections_per_ip: max_connections_per_ip as usize,
        max_connections_per_prefix: max_connections_per_prefix as usize,
        drain_timeout: bounded(
            "drain_timeout",
            &raw.drain_timeout,
            defaults.drain_timeout,
            secs(0),
            secs(600),
        )?,
        request_timeout: bounded(
            "request_timeout",
            &raw.request_timeout,
            defaults.request_timeout,
            secs(1),
            secs(600),
        )?,
    };
    let max_clock_rewind = bounded(
        "max_clock_rewind",
        &raw.max_clock_rewind,
        secs(60),
        secs(0),
        secs(86_400),
    )?;
    let snapshot_after_changes = raw.snapshot_after_changes.unwrap_or(100_000);
    if !(1..=1_000_000_000).contains(&snapshot_after_changes) {
        return Err(format!(
            "[server] snapshot_after_changes = {snapshot_after_changes}: expected 1 to 1000000000"
        ));
    }
    let snapshot_min_interval = bounded(
        "snapshot_min_interval",
        &raw.snapshot_min_interval,
        secs(60),
        secs(0),
        secs(86_400),
    )?;
    let journal_retention = bounded(
        "journal_retention",
        &raw.journal_retention,
        secs(365 * 86_400),
        secs(86_400),
        secs(100 * 365 * 86_400),
    )?;
    let trusted_proxies = raw
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|p| {
            p.parse::<Cidr>()
                .map_err(|e| format!("[server] trusted_proxies: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerConfig {
        listen,
        data_dir,
        cache_capacity: cache_mb << 20,
        commit,
        snapshot_after_changes,
        snapshot_min_interval,
        journal_retention,
        log_format,
        max_clock_rewind,
        accept_wall_clock: false,
        connections,
        trusted_proxies,
    })
}

fn validate_pool(
    p: RawPool,
    defaults: &RawLease,
    default_voice: &Voice,
    owner: &mut HashMap<PhoneNumber, String>,
) -> Result<PoolConfig, String> {
    let name = p.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "pool name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
        ));
    }
    let ctx = |m: String| format!("pool {name:?}: {m}");
    let dur = |key: &str, own: &Option<String>, def: &Option<String>| -> Result<Duration, String> {
        let s = own.as_ref().or(def.as_ref()).expect("defaults are filled");
        parse_duration(s).map_err(|e| ctx(format!("{key} = {s:?}: {e}")))
    };
    let max_ttl = dur("max_ttl", &p.max_ttl, &defaults.max_ttl)?;
    let page_max_ttl = match p.page_max_ttl.as_ref().or(defaults.page_max_ttl.as_ref()) {
        Some(_) => dur("page_max_ttl", &p.page_max_ttl, &defaults.page_max_ttl)?,
        None => DEFAULT_PAGE_MAX_TTL.min(max_ttl),
    };
    let settings = LeaseSettings {
        ttl: dur("ttl", &p.ttl, &defaults.ttl)?,
        max_ttl,
        page_max_ttl,
        grace: dur("grace", &p.grace, &defaults.grace)?,
        quarantine: dur("quarantine", &p.quarantine, &defaults.quarantine)?,
        retention: dur("retention", &p.retention, &defaults.retention)?,
    };
    let s = &settings;
    if s.ttl.is_zero() {
        return Err(ctx("ttl must be longer than 0s".into()));
    }
    if s.max_ttl < s.ttl {
        return Err(ctx(format!(
            "max_ttl ({}) is shorter than ttl ({})",
            fmt_duration(s.max_ttl),
            fmt_duration(s.ttl)
        )));
    }
    if s.page_max_ttl.is_zero() {
        return Err(ctx("page_max_ttl must be longer than 0s".into()));
    }
    if s.page_max_ttl > s.max_ttl {
        return Err(ctx(format!(
            "page_max_ttl ({}) is longer than max_ttl ({}): no lease lives past max_ttl",
            fmt_duration(s.page_max_ttl),
            fmt_duration(s.max_ttl)
        )));
    }
    if s.grace > s.quarantine {
        return Err(ctx(format!(
            "grace ({}) is longer than quarantine ({}): a late caller could reach the next visitor",
            fmt_duration(s.grace),
            fmt_duration(s.quarantine)
        )));
    }
    if s.retention < s.quarantine {
        return Err(ctx(format!(
            "retention ({}) is shorter than quarantine ({})",
            fmt_duration(s.retention),
            fmt_duration(s.quarantine)
        )));
    }

    let mut numbers = Vec::new();
    for entry in &p.numbers {
        let (first, last) = parse_number_entry(entry).map_err(ctx)?;
        if (numbers.len() as u64) + (last - first + 1) > MAX_POOL_SIZE {
            return Err(ctx(format!("more than {MAX_POOL_SIZE} numbers")));
        }
        for d in first..=last {
            let n = PhoneNumber::from_digits(d).expect("range ends are valid and of equal length");
            if let Some(other) = owner.insert(n, name.clone()) {
                return Err(if other == name {
                    ctx(format!("number {n} is listed twice"))
                } else {
                    format!("number {n} is in pool {other:?} and in pool {name:?}: a number belongs to one pool")
                });
            }
            numbers.push(n);
        }
    }
    if numbers.is_empty() {
        return Err(ctx(
            "numbers is empty: list numbers or ranges such as \"+33899100000..=+33899100999\""
                .into(),
        ));
    }

    let on_exhausted = match (p.on_exhausted.as_deref().unwrap_or("reject"), &p.shared_number) {
        ("reject", None) => OnExhausted::Reject,
        ("reject", Some(_)) => {
            return Err(ctx(
                "shared_number is set but on_exhausted is \"reject\": set on_exhausted = \"shared\" to use it".into(),
            ))
        }
        ("shared", None) => {
            return Err(ctx(
                "on_exhausted = \"shared\" needs shared_number, the number callers dial with a code".into(),
            ))
        }
        ("shared", Some(n)) => {
            let number = PhoneNumber::parse(n).map_err(|e| ctx(format!("shared_number: {e}")))?;
            if let Some(other) = owner.insert(number, name.clone()) {
                return Err(ctx(format!(
                    "shared_number {number} is already a number of pool {other:?}"
                )));
            }
            let code_ttl = match &p.code_ttl {
                Some(s) => parse_duration(s).map_err(|e| ctx(format!("code_ttl = {s:?}: {e}")))?,
                None => Duration::from_secs(180),
            };
            if code_ttl.is_zero() {
                return Err(ctx("code_ttl must be longer than 0s".into()));
            }
            OnExhausted::Shared { number, code_ttl }
        }
        (other, _) => {
            return Err(ctx(format!(
                "on_exhausted = {other:?}: expected \"reject\" or \"shared\""
            )))
        }
    };
    let ticketing = match p.mode.as_deref().unwrap_or("dynamic") {
        "dynamic" => false,
        "ticketing" => true,
        other => {
            return Err(ctx(format!(
                "mode = {other:?}: expected \"dynamic\" or \"ticketing\""
            )))
        }
    };
    if p.code_ttl.is_some() && on_exhausted == OnExhausted::Reject && !ticketing {
        return Err(ctx(
            "code_ttl is only used with on_exhausted = \"shared\" or mode = \"ticketing\"".into(),
        ));
    }
    let mode = if ticketing {
        if on_exhausted != OnExhausted::Reject {
            return Err(ctx(
                "a ticketing pool leases no numbers, so on_exhausted and shared_number do not apply"
                    .into(),
            ));
        }
        let calls_required = p.calls_required.unwrap_or(1);
        if !(1..=20).contains(&calls_required) {
            return Err(ctx(format!(
                "calls_required = {calls_required}: expected 1 to 20"
            )));
        }
        let min_call_secs = p.min_call_secs.unwrap_or(0);
        if min_call_secs > 3600 {
            return Err(ctx(format!(
                "min_call_secs = {min_call_secs}: expected at most 3600"
            )));
        }
        let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, String> {
            match v {
                Some(s) => parse_duration(s).map_err(|e| ctx(format!("{key} = {s:?}: {e}"))),
                None => Ok(Duration::from_secs(default)),
            }
        };
        let window = dur("window", &p.window, 3600)?;
        let code_ttl = dur("code_ttl", &p.code_ttl, 86_400)?;
        if window.is_zero() || code_ttl.is_zero() {
            return Err(ctx("window and code_ttl must be longer than 0s".into()));
        }
        let price = match p.price {
            Some(pr) => {
                let t = validate_tariff(RawTariff {
                    per_call: Some(pr.amount),
                    per_minute: None,
                    currency: pr.currency,
                    increment: None,
                })
                .map_err(|e| ctx(e.replace("tariff", "price")))?;
                Some((t.rate.to_string(), t.currency.to_string()))
            }
            None => None,
        };
        PoolMode::Ticketing(Formula {
            calls_required,
            min_call_secs,
            window,
            code_ttl,
            price,
        })
    } else {
        let formula_keys = [
            ("calls_required", p.calls_required.is_some()),
            ("min_call_secs", p.min_call_secs.is_some()),
            ("window", p.window.is_some()),
            ("price", p.price.is_some()),
        ];
        if let Some((key, _)) = formula_keys.iter().find(|(_, set)| *set) {
            return Err(ctx(format!("{key} is only used with mode = \"ticketing\"")));
        }
        PoolMode::Dynamic
    };
    let access_ttl = match &p.access_ttl {
        Some(s) => parse_duration(s).map_err(|e| ctx(format!("access_ttl = {s:?}: {e}")))?,
        None => Duration::ZERO,
    };
    if access_ttl > Duration::from_secs(31 * 86_400) {
        return Err(ctx(format!(
            "access_ttl = {}: at most 31d",
            fmt_duration(access_ttl)
        )));
    }

    let return_window = match &p.return_window {
        Some(s) => parse_duration(s).map_err(|e| ctx(format!("return_window = {s:?}: {e}")))?,
        None => Duration::from_secs(30 * 86_400),
    };
    let fallback = p
        .fallback_target
        .as_deref()
        .map(Target::parse)
        .transpose()
        .map_err(|e| ctx(format!("fallback_target: {e}")))?;
    let tariff = p
        .tariff
        .map(|t| validate_tariff(t).map_err(ctx))
        .transpose()?;
    let page_share = match p.page_share {
        None => DEFAULT_PAGE_SHARE,
        Some(f) => share(f).ok_or_else(|| {
            ctx(format!(
                "page_share = {f}: expected a share from 0 to 1 in thousandths, such as 0.8 (pages may hold 80% of the numbers and of the codes)"
            ))
        })?,
    };
    let voice = match (&p.language, &p.prompts) {
        (None, None) => default_voice.clone(),
        (language, prompts) => Voice::parse(
            language.as_deref().unwrap_or(default_voice.locale()),
            prompts.as_ref().unwrap_or(&BTreeMap::new()),
        )
        .map_err(ctx)?,
    };
    Ok(PoolConfig {
        spec: PoolSpec {
            name,
            numbers,
            settings,
            on_exhausted,
            return_window,
            fallback,
            mode,
            access_ttl,
            limits: PoolLimits {
                max_live_per_session: p.max_live_per_session.unwrap_or(10),
                max_live_per_tenant: p.max_live_per_tenant.unwrap_or(0),
                page_share,
            },
            tariff,
        },
        allocations_per_minute_per_key: p.allocations_per_minute_per_key.unwrap_or(0),
        voice,
    })
}

/// A share written as a fraction (`0.8`), in whole thousandths.
fn share(f: f64) -> Option<Share> {
    let permille = f * 1000.0;
    if !(0.0..=1000.0).contains(&permille) || (permille - permille.round()).abs() > 1e-6 {
        return None;
    }
    Share::from_permille(permille.round() as u16)
}

/// `"+33899200042"` or an inclusive range `"+33899100000..=+33899100999"`, as digit bounds.
fn parse_number_entry(entry: &str) -> Result<(u64, u64), String> {
    let Some((a, b)) = entry.split_once("..=") else {
        let n = PhoneNumber::parse(entry.trim()).map_err(|e| e.to_string())?;
        return Ok((n.digits(), n.digits()));
    };
    let a = PhoneNumber::parse(a.trim()).map_err(|e| format!("range {entry:?}: {e}"))?;
    let b = PhoneNumber::parse(b.trim()).map_err(|e| format!("range {entry:?}: {e}"))?;
    if a.digits().ilog10() != b.digits().ilog10() {
        return Err(format!(
            "range {entry:?}: both ends must have the same number of digits"
        ));
    }
    if a > b {
        return Err(format!(
            "range {entry:?} is empty: its first number is after its last"
        ));
    }
    Ok((a.digits(), b.digits()))
}

fn validate_tariff(t: RawTariff) -> Result<Tariff, String> {
    let (amount, per_minute) = match (t.per_call, t.per_minute) {
        (Some(a), None) => (a, false),
        (None, Some(a)) => (a, true),
        _ => return Err("tariff needs exactly one of per_call or per_minute".into()),
    };
    let rate = Rate::parse(&amount).map_err(|e| format!("tariff amount {e}"))?;
    let currency = Currency::parse(&t.currency).map_err(|e| format!("tariff currency: {e}"))?;
    let unit = match (per_minute, t.increment) {
        (false, None) => TariffUnit::PerCall,
        (false, Some(_)) => {
            return Err("tariff increment: only a per_minute tariff bills by increments".into())
        }
        (true, inc) => {
            let inc = match inc {
                Some(s) => {
                    parse_duration(&s).map_err(|e| format!("tariff increment = {s:?}: {e}"))?
                }
                None => Duration::from_secs(1),
            };
            if inc.is_zero() || inc > Duration::from_secs(3600) || inc.subsec_nanos() != 0 {
                return Err(format!(
                    "tariff increment = {}: expected whole seconds from 1s to 1h, such as \"20s\"",
                    fmt_duration(inc)
                ));
            }
            TariffUnit::PerMinute {
                increment_secs: inc.as_secs() as u32,
            }
        }
    };
    Ok(Tariff {
        rate,
        unit,
        currency,
    })
}

fn validate_key(k: RawKey, pools: &HashSet<String>) -> Result<KeyConfig, String> {
    let ctx = |m: String| format!("key {:?}: {m}", k.name);
    if k.name.is_empty() {
        return Err("a [[key]] has an empty name".into());
    }
    let role = match k.role.as_str() {
        "site" => Role::Site,
        "telephony" => Role::Telephony,
        "admin" => Role::Admin,
        "publishable" => Role::Publishable,
        other => {
            return Err(ctx(format!(
                "role {other:?}: expected \"site\", \"telephony\", \"admin\" or \"publishable\""
            )))
        }
    };
    let mut sha256 = [0u8; 32];
    if k.sha256.len() != 64 || hex::decode_to_slice(&k.sha256, &mut sha256).is_err() {
        return Err(ctx(
            "sha256 must be the 64 hex digits of the token's SHA-256 (sha256sum prints it)".into(),
        ));
    }
    if let Some(list) = &k.pools {
        if let Some(unknown) = list.iter().find(|p| !pools.contains(*p)) {
            return Err(ctx(format!(
                "pools names {unknown:?}, which is not a [[pool]]"
            )));
        }
    }
    let tenant =
        TenantId::parse(k.tenant.as_deref().unwrap_or(&k.name)).map_err(|e| ctx(e.to_string()))?;
    let origins = k.origins.clone().unwrap_or_default();
    match (role, origins.is_empty()) {
        (Role::Publishable, true) => {
            return Err(ctx(
                "a publishable key needs origins = [\"https://www.example.com\"]: the pages allowed to use it".into(),
            ))
        }
        (Role::Publishable, false) => {}
        (_, false) => return Err(ctx("origins only apply to publishable keys".into())),
        (_, true) => {}
    }
    for o in &origins {
        let scheme_ok = o.starts_with("https://") || o.starts_with("http://");
        let rest = o.split_once("://").map_or("", |(_, r)| r);
        if !scheme_ok || rest.is_empty() || rest.contains('/') || o.contains(char::is_whitespace) {
            return Err(ctx(format!(
                "origin {o:?}: expected scheme://host[:port], such as \"https://www.example.com\" (no path)"
            )));
        }
    }
    Ok(KeyConfig {
        name: k.name.clone(),
        tenant,
        role,
        sha256,
        pools: k.pools,
        origins,
    })
}

fn validate_limits(l: RawLimits, warnings: &mut Vec<String>) -> Result<LimitsConfig, String> {
    let dur = |key: &str, v: &Option<String>, default: u64| -> Result<Duration, String> {
        match v {
            Some(s) => parse_duration(s).map_err(|e| format!("[limits] {key} = {s:?}: {e}")),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let gone = [
        (
            "redeem_failures_per_key",
            l.redeem_failures_per_key.is_some(),
            "a key-wide lockout let one visitor lock every visitor out; wrong codes are now slowed per visitor address, prefix and client",
        ),
        (
            "redeem_window",
            l.redeem_window.is_some(),
            "failures are now forgotten redeem_forget after the last one",
        ),
        (
            "redeem_lockout",
            l.redeem_lockout.is_some(),
            "failures now wait redeem_backoff, doubled each time, up to redeem_max_delay",
        ),
    ];
    for (key, _, why) in gone.iter().filter(|(_, set, _)| *set) {
        warnings.push(format!("[limits] {key} is no longer used (ignored): {why}"));
    }
    let first_delay = dur("redeem_backoff", &l.redeem_backoff, 1)?;
    let max_delay = dur("redeem_max_delay", &l.redeem_max_delay, 3600)?;
    let forget = dur("redeem_forget", &l.redeem_forget, 86_400)?;
    if first_delay.is_zero() || first_delay > max_delay {
        return Err(format!(
            "[limits] redeem_backoff ({}) must be longer than 0s and at most redeem_max_delay ({})",
            fmt_duration(first_delay),
            fmt_duration(max_delay)
        ));
    }
    if forget < max_delay {
        return Err(format!(
            "[limits] redeem_forget ({}) is shorter than redeem_max_delay ({}): waiting out the delay would wipe the slate",
            fmt_duration(forget),
            fmt_duration(max_delay)
        ));
    }
    let count = |key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(format!("[limits] {key} must be at least 1")),
        v => Ok(v.unwrap_or(default)),
    };
    let policy = |free| BackoffPolicy {
        free,
        first_delay,
        max_delay,
        forget,
    };
    let publishable_per_ip = count("publishable_per_ip", l.publishable_per_ip, 60)?;
    // A prefix holds many addresses: four times one address's allowance by default.
    let publishable_per_prefix = count(
        "publishable_per_prefix",
        l.publishable_per_prefix,
        (publishable_per_ip.saturating_mul(4)).max(240),
    )?;
    if publishable_per_prefix < publishable_per_ip {
        return Err(format!(
            "[limits] publishable_per_prefix ({publishable_per_prefix}) is below publishable_per_ip ({publishable_per_ip}): every address of a prefix counts toward it, so one address could never reach its own limit"
        ));
    }
    Ok(LimitsConfig {
        redeem_per_client: policy(count(
            "redeem_failures_per_client",
            l.redeem_failures_per_client,
            5,
        )?),
        redeem_per_prefix: policy(count(
            "redeem_failures_per_prefix",
            l.redeem_failures_per_prefix,
            20,
        )?),
        publishable_per_ip,
        publishable_per_prefix,
        publishable_per_session: count("publishable_per_session", l.publishable_per_session, 20)?,
        renews_per_lease: count("renews_per_lease", l.renews_per_lease, 10)?,
        renews_per_ip: count("renews_per_ip", l.renews_per_ip, 300)?,
        event_streams_per_lease: count("event_streams_per_lease", l.event_streams_per_lease, 8)?,
        event_streams_per_ip: count("event_streams_per_ip", l.event_streams_per_ip, 64)?,
    })
}

fn validate_twilio(t: RawTwilio) -> Result<TwilioConfig, String> {
    if t.auth_token.len() < 16 {
        return Err("[twilio] auth_token looks too short: copy the account's auth token".into());
    }
    if let Some(u) = &t.public_url {
        if !(u.starts_with("https://") || u.starts_with("http://")) || u.ends_with('/') {
            return Err(format!(
                "[twilio] public_url = {u:?}: expected a base URL such as \"https://calls.example.com\" (no trailing /)"
            ));
        }
    }
    Ok(TwilioConfig {
        auth_token: t.auth_token,
        public_url: t.public_url,
        voice: Voice::parse(t.language.as_deref().unwrap_or("fr-FR"), &BTreeMap::new())
            .map_err(|e| format!("[twilio] {e}"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/leaseline"))
    }

    fn pool(extra: &str) -> String {
        format!("[[pool]]\nname = \"fr\"\nnumbers = [\"+33899100000..=+33899100009\"]\n{extra}\n")
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "15", "m", "15x", "-1s", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn durations_with_characters_beyond_ascii_are_refused_not_panicked_on() {
        // The parser slices at counted ASCII digits and letters, never inside a character.
        for bad in ["1é", "é1s", "1sé", "１s", "1ｓ", "1s\u{301}", "∞"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_minimal_config_gets_the_documented_defaults() {
        let c = parse(&pool("")).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.server.data_dir, Path::new("/etc/leaseline/data"));
        let s = &c.pools[0].spec.settings;
        assert_eq!(s.ttl, Duration::from_secs(900));
        assert_eq!(s.max_ttl, Duration::from_secs(7200));
        assert_eq!(s.grace, Duration::from_secs(300));
        assert_eq!(s.quarantine, Duration::from_secs(600));
        assert_eq!(c.pools[0].spec.numbers.len(), 10);
    }

    #[test]
    fn pools_override_lease_defaults() {
        let c = parse(&format!(
            "[lease]\nttl = \"5m\"\n{}",
            pool("ttl = \"30m\"\nmax_ttl = \"1h\"")
        ))
        .unwrap();
        assert_eq!(c.pools[0].spec.settings.ttl, Duration::from_secs(1800));
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err()
    }

    #[test]
    fn a_pools_language_and_prompts_are_checked_and_default_to_twilios() {
        let twilio = "[twilio]\nauth_token = \"0123456789abcdef0123\"\nlanguage = \"it-CH\"\n";
        let c = parse(&format!("{twilio}{}", pool(""))).unwrap();
        assert_eq!(c.pools[0].voice.locale(), "it-CH");
        let c = parse(&format!(
            "{twilio}{}",
            pool("language = \"de\"\nprompts = { hold = \"Einen Moment.\" }")
        ))
        .unwrap();
        let v = &c.pools[0].voice;
        assert_eq!(v.locale(), "de-DE");
        assert_eq!(
            v.text(crate::telephony::prompts::Prompt::Hold, &[]),
            "Einen Moment."
        );
        // Without [twilio], French.
        assert_eq!(parse(&pool("")).unwrap().pools[0].voice.locale(), "fr-FR");
        let e = error_of(&pool("[pool.prompts]\nhold_on = \"x\""));
        assert!(
            e.contains("pool \"fr\": prompts: unknown prompt \"hold_on\""),
            "{e}"
        );
        let e = error_of(&pool("language = \"es\""));
        assert!(e.contains("shipped in fr, de, it and en"), "{e}");
        let e = error_of(&format!(
            "[twilio]\nauth_token = \"0123456789abcdef0123\"\nlanguage = \"nl-NL\"\n{}",
            pool("")
        ));
        assert!(e.contains("[twilio] language = \"nl-NL\""), "{e}");
    }

    #[test]
    fn a_number_in_two_pools_is_refused_by_name() {
        let e = error_of(
            "[[pool]]\nname = \"a\"\nnumbers = [\"+33899100000\"]\n[[pool]]\nname = \"b\"\nnumbers = [\"+33899100000\"]\n",
        );
        assert!(
            e.contains("+33899100000 is in pool \"a\" and in pool \"b\""),
            "{e}"
        );
    }

    #[test]
    fn malformed_numbers_and_empty_ranges_are_refused() {
        let e = error_of("[[pool]]\nname = \"a\"\nnumbers = [\"0899100000\"]\n");
        assert!(e.contains("not an E.164 number"), "{e}");
        let e = error_of("[[pool]]\nname = \"a\"\nnumbers = [\"+33899100009..=+33899100000\"]\n");
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn grace_longer_than_quarantine_is_refused() {
        let e = error_of(&pool("grace = \"20m\""));
        assert!(
            e.contains("grace (20m) is longer than quarantine (10m)"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let e = error_of(&pool("colour = \"blue\""));
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn keys_are_checked() {
        let ok = format!(
            "{}[[key]]\nname = \"k\"\nrole = \"site\"\nsha256 = \"{KEY}\"\npools = [\"fr\"]\n",
            pool("")
        );
        let c = parse(&ok).unwrap();
        assert_eq!(c.keys[0].tenant.as_str(), "k");
        let e = error_of(&ok.replace("\"fr\"]", "\"de\"]"));
        assert!(e.contains("\"de\", which is not a [[pool]]"), "{e}");
        let e = error_of(&ok.replace("\"site\"", "\"root\""));
        assert!(e.contains("role \"root\""), "{e}");
        let e = error_of(&ok.replace(KEY, "abc"));
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn tariffs_need_one_amount_and_a_currency_code() {
        assert!(parse(&pool(
            "tariff = { per_call = \"2.99\", currency = \"EUR\" }"
        ))
        .is_ok());
        assert!(error_of(&pool(
            "tariff = { per_call = \"2,99\", currency = \"EUR\" }"
        ))
        .contains("decimal"));
        assert!(error_of(&pool(
            "tariff = { per_call = \"1\", per_minute = \"1\", currency = \"EUR\" }"
        ))
        .contains("exactly one"));
        let c = parse(&pool(
            "tariff = { per_minute = \"3.13\", currency = \"CHF\", increment = \"20s\" }",
        ))
        .unwrap();
        let t = c.pools[0].spec.tariff.unwrap();
        assert_eq!(t.describe(), "3.13 CHF per minute, billed by 20 s");
        for (bad, needle) in [
            (
                "per_minute = \"3.13\", currency = \"CHF\", increment = \"0s\"",
                "from 1s to 1h",
            ),
            (
                "per_minute = \"3.13\", currency = \"CHF\", increment = \"2h\"",
                "from 1s to 1h",
            ),
            (
                "per_minute = \"3.13\", currency = \"CHF\", increment = \"soon\"",
                "increment = \"soon\"",
            ),
            (
                "per_call = \"2.99\", currency = \"EUR\", increment = \"20s\"",
                "only a per_minute",
            ),
            (
                "per_call = \"2.99999\", currency = \"EUR\"",
                "at most four decimals",
            ),
            ("per_call = \"2.99\", currency = \"eur\"", "ISO 4217"),
        ] {
            let e = error_of(&pool(&format!("tariff = {{ {bad} }}")));
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn shared_mode_needs_a_shared_number_of_its_own() {
        let e = error_of(&pool("on_exhausted = \"shared\""));
        assert!(e.contains("needs shared_number"), "{e}");
        let e = error_of(&pool(
            "on_exhausted = \"shared\"\nshared_number = \"+33899100003\"",
        ));
        assert!(e.contains("already a number of pool"), "{e}");
        let c = parse(&pool(
            "on_exhausted = \"shared\"\nshared_number = \"+33899199999\"\ncode_ttl = \"2m\"",
        ))
        .unwrap();
        assert_eq!(
            c.pools[0].spec.on_exhausted,
            OnExhausted::Shared {
                number: PhoneNumber::parse("+33899199999").unwrap(),
                code_ttl: Duration::from_secs(120)
            }
        );
        assert_eq!(
            c.pools[0].spec.return_window,
            Duration::from_secs(30 * 86_400)
        );
    }

    #[test]
    fn ticketing_pools_take_a_formula_and_dynamic_ones_refuse_it() {
        let c = parse(&pool("mode = \"ticketing\"\ncalls_required = 3\nmin_call_secs = 60\nwindow = \"2h\"\naccess_ttl = \"30d\"\nprice = { amount = \"8.97\", currency = \"EUR\" }")).unwrap();
        let PoolMode::Ticketing(f) = &c.pools[0].spec.mode else {
            panic!("not ticketing")
        };
        assert_eq!((f.calls_required, f.min_call_secs), (3, 60));
        assert_eq!(f.window, Duration::from_secs(7200));
        assert_eq!(f.code_ttl, Duration::from_secs(86_400));
        assert_eq!(f.price, Some(("8.97".into(), "EUR".into())));
        assert!(
            error_of(&pool("calls_required = 3")).contains("only used with mode = \"ticketing\"")
        );
        assert!(
            error_of(&pool("mode = \"ticketing\"\naccess_ttl = \"40d\"")).contains("at most 31d")
        );
        assert!(error_of(&pool("mode = \"ticketing\"\ncalls_required = 0")).contains("1 to 20"));
    }

    #[test]
    fn pages_get_a_share_and_a_shorter_life_by_default() {
        let c = parse(&pool("")).unwrap();
        let spec = &c.pools[0].spec;
        assert_eq!(spec.limits.page_share.permille(), 800);
        assert_eq!(spec.settings.page_max_ttl, Duration::from_secs(1800));
        let short = parse(&pool("ttl = \"5m\"\nmax_ttl = \"20m\"")).unwrap();
        assert_eq!(
            short.pools[0].spec.settings.page_max_ttl,
            Duration::from_secs(1200),
            "never past max_ttl"
        );
        let set = parse(&format!(
            "[lease]\npage_max_ttl = \"10m\"\n{}",
            pool("page_share = 0.25")
        ))
        .unwrap();
        assert_eq!(set.pools[0].spec.limits.page_share.permille(), 250);
        assert_eq!(
            set.pools[0].spec.settings.page_max_ttl,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn a_page_share_or_page_max_ttl_out_of_bounds_is_refused() {
        for bad in ["1.5", "-0.1", "0.8005"] {
            let e = error_of(&pool(&format!("page_share = {bad}")));
            assert!(
                e.contains(&format!(
                    "pool \"fr\": page_share = {bad}: expected a share from 0 to 1"
                )),
                "{e}"
            );
        }
        let e = error_of(&pool("page_max_ttl = \"3h\""));
        assert!(
            e.contains("page_max_ttl (3h) is longer than max_ttl (2h)"),
            "{e}"
        );
        let e = error_of(&pool("page_max_ttl = \"0s\""));
        assert!(e.contains("page_max_ttl must be longer than 0s"), "{e}");
    }

    #[test]
    fn page_limits_default_to_safe_rates_and_are_checked() {
        let l = parse(&pool("")).unwrap().limits;
        assert_eq!(
            (
                l.publishable_per_ip,
                l.publishable_per_prefix,
                l.publishable_per_session
            ),
            (60, 240, 20)
        );
        assert_eq!((l.renews_per_lease, l.renews_per_ip), (10, 300));
        assert_eq!((l.event_streams_per_lease, l.event_streams_per_ip), (8, 64));
        let e = error_of(&format!(
            "[limits]\npublishable_per_ip = 100\npublishable_per_prefix = 50\n{}",
            pool("")
        ));
        assert!(
            e.contains("publishable_per_prefix (50) is below publishable_per_ip (100)"),
            "{e}"
        );
        let e = error_of(&format!("[limits]\nrenews_per_lease = 0\n{}", pool("")));
        assert!(e.contains("renews_per_lease must be at least 1"), "{e}");
    }

    #[test]
    fn wrong_codes_are_slowed_by_default_and_the_old_lockout_keys_say_what_replaced_them() {
        let l = parse(&pool("")).unwrap().limits;
        let p = l.redeem_per_client;
        assert_eq!((p.free, l.redeem_per_prefix.free), (5, 20));
        assert_eq!(
            (p.first_delay, p.max_delay, p.forget),
            (
                Duration::from_secs(1),
                Duration::from_secs(3600),
                Duration::from_secs(86_400)
            )
        );
        // A file that worked before still starts; the old keys are named in warnings.
        let c = parse(&format!(
            "[limits]\nredeem_failures_per_key = 50\nredeem_lockout = \"15m\"\n{}",
            pool("")
        ))
        .unwrap();
        assert!(
            c.warnings[0].contains(
                "[limits] redeem_failures_per_key is no longer used (ignored): a key-wide lockout"
            ),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[1].contains("redeem_max_delay"),
            "{:?}",
            c.warnings
        );
        let e = error_of(&format!(
            "[limits]\nredeem_max_delay = \"2d\"\n{}",
            pool("")
        ));
        assert!(
            e.contains("redeem_forget (1d) is shorter than redeem_max_delay (2d)"),
            "{e}"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_blocks() {
        let c = parse(&format!(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n{}",
            pool("")
        ))
        .unwrap();
        let shown: Vec<_> = c
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "::1/128"]);
        let e = error_of(&format!(
            "[server]\ntrusted_proxies = [\"proxy.local\"]\n{}",
            pool("")
        ));
        assert!(
            e.contains("[server] trusted_proxies: \"proxy.local\" is not an address or block"),
            "{e}"
        );
    }

    #[test]
    fn no_keys_means_loopback_only() {
        let e = error_of(&format!(
            "[server]\nlisten = \"0.0.0.0:8080\"\n{}",
            pool("")
        ));
        assert!(
            e.contains("refusing to listen on 0.0.0.0:8080 with no [[key]]"),
            "{e}"
        );
        assert!(parse(&pool("")).is_ok(), "loopback without keys is fine");
    }

    #[test]
    fn connection_limits_default_to_the_contract_and_are_bounded() {
        let c = parse(&pool("")).unwrap();
        assert_eq!(c.server.connections, ConnectionLimits::default());
        assert_eq!(c.server.connections.header_timeout, Duration::from_secs(30));
        assert_eq!(c.server.connections.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.connections.drain_timeout, Duration::from_secs(10));
        assert_eq!(c.server.connections.max_connections_per_ip, 256);
        assert_eq!(c.server.connections.max_connections_per_prefix, 1024);
        assert_eq!(
            c.server.connections.request_timeout,
            Duration::from_secs(30)
        );
        let server = |lines: &str| format!("[server]\n{lines}\n{}", pool(""));
        let c = parse(&server(
            "header_timeout = \"2s\"\nidle_timeout = \"5m\"\nmax_connections = 8\nmax_connections_per_ip = 0\ndrain_timeout = \"0s\"\nrequest_timeout = \"1m\"",
        ))
        .unwrap();
        assert_eq!(
            c.server.connections,
            ConnectionLimits {
                header_timeout: Duration::from_secs(2),
                idle_timeout: Duration::from_secs(300),
                max_connections: 8,
                max_connections_per_ip: 0,
                max_connections_per_prefix: 0,
                drain_timeout: Duration::ZERO,
                request_timeout: Duration::from_secs(60),
            }
        );
        for (line, message) in [
            (
                "header_timeout = \"0s\"",
                "[server] header_timeout = \"0s\": expected 1s to 10m",
            ),
            (
                "header_timeout = \"soon\"",
                "[server] header_timeout = \"soon\": expected a duration",
            ),
            (
                "idle_timeout = \"2h\"",
                "[server] idle_timeout = \"2h\": expected 1s to 1h",
            ),
            (
                "drain_timeout = \"11m\"",
                "[server] drain_timeout = \"11m\": expected 0s to 10m",
            ),
            (
                "max_connections = 0",
                "[server] max_connections = 0: expected 1 to 1000000",
            ),
            (
                "max_connections_per_ip = 1000001",
                "[server] max_connections_per_ip = 1000001: expected 0 (no cap) to 1000000",
            ),
            (
                "max_connections_per_ip = 10\nmax_connections_per_prefix = 5",
                "[server] max_connections_per_prefix = 5: expected 0 (no cap), or max_connections_per_ip (10) to 4000000",
            ),
            (
                "request_timeout = \"0s\"",
                "[server] request_timeout = \"0s\": expected 1s to 10m",
            ),
        ] {
            let e = error_of(&server(line));
            assert!(e.contains(message), "{line}: {e}");
        }
    }

    #[test]
    fn snapshots_default_to_every_100k_changes_at_most_once_a_minute_and_are_bounded() {
        let c = parse(&pool("")).unwrap();
        assert_eq!(c.server.snapshot_after_changes, 100_000);
        assert_eq!(c.server.snapshot_min_interval, Duration::from_secs(60));
        let server = |lines: &str| format!("[server]\n{lines}\n{}", pool(""));
        let c = parse(&server(
            "snapshot_after_changes = 500\nsnapshot_min_interval = \"0s\"",
        ))
        .unwrap();
        assert_eq!(c.server.snapshot_after_changes, 500);
        assert_eq!(c.server.snapshot_min_interval, Duration::ZERO);
        for (line, message) in [
            (
                "snapshot_after_changes = 0",
                "[server] snapshot_after_changes = 0: expected 1 to 1000000000",
            ),
            (
                "snapshot_min_interval = \"2d\"",
                "[server] snapshot_min_interval = \"2d\": expected 0s to 1d",
            ),
        ] {
            let e = error_of(&server(line));
            assert!(e.contains(message), "{line}: {e}");
        }
    }

    #[test]
    fn the_shipped_pool_toml_is_valid() {
        let text = include_str!("../pool.toml");
        let c = parse(text).unwrap();
        assert!(c.server.listen.ip().is_loopback());
        assert!(!c.keys.is_empty());
    }
}
