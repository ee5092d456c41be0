//! Signed webhooks: merchants' servers are told what happened (a lease paid, a call ended…)
//! without polling. `[[webhook]]` endpoints ([`Endpoint`]), the events they may take
//! ([`EventType`]), the signature, and the retry schedule live here; [`events`] turns what a
//! core operation did into deliveries (written by the store in the operation's own batch);
//! [`worker`] posts them, off the async runtime, and records each outcome.
//!
//! **Invariant:** the core knows nothing of webhooks; it reports what happened (`Notice`s),
//! and the service hands that to [`events::Router`] under the core's lock.

pub mod events;
pub mod worker;

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::core::TenantId;
use crate::duration::parse_duration;

pub use events::Router;
pub use worker::Dispatcher;

/// What a merchant may subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    LeasePaid,
    LeaseRedeemed,
    LeaseExpired,
    LeaseReleased,
    CallStarted,
    CallEnded,
    TicketIssued,
    TicketRedeemed,
    PassRevoked,
    PoolExhausted,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::LeasePaid,
        EventType::LeaseRedeemed,
        EventType::LeaseExpired,
        EventType::LeaseReleased,
        EventType::CallStarted,
        EventType::CallEnded,
        EventType::TicketIssued,
        EventType::TicketRedeemed,
        EventType::PassRevoked,
        EventType::PoolExhausted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::LeasePaid => "lease.paid",
            EventType::LeaseRedeemed => "lease.redeemed",
            EventType::LeaseExpired => "lease.expired",
            EventType::LeaseReleased => "lease.released",
            EventType::CallStarted => "call.started",
            EventType::CallEnded => "call.ended",
            EventType::TicketIssued => "ticket.issued",
            EventType::TicketRedeemed => "ticket.redeemed",
            EventType::PassRevoked => "pass.revoked",
            EventType::PoolExhausted => "pool.exhausted",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A receiver, as `[[webhook]]` configures it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    pub secret: String,
    /// The events it takes, as bits of [`EventType`].
    events: u16,
    /// Only this tenant's objects; `None`: everything (an operator's endpoint).
    pub tenant: Option<TenantId>,
    /// Per attempt, connecting included.
    pub timeout: Duration,
    /// Deliveries in flight to this endpoint at most.
    pub concurrency: usize,
    /// Retries stop this long after the event (then the delivery is failed).
    pub max_age: Duration,
    /// The first retry's delay; each next one doubles, up to [`MAX_DELAY`], with jitter.
    pub backoff: Duration,
}

/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

impl Endpoint {
    pub fn takes(&self, e: EventType) -> bool {
        self.events & e.bit() != 0
    }

    /// The events it takes, in [`EventType::ALL`]'s order.
    pub fn events(&self) -> impl Iterator<Item = EventType> + '_ {
        EventType::ALL.into_iter().filter(|e| self.takes(*e))
    }

    /// The stable 8-byte tag of its name in delivery ids.
    pub fn tag(&self) -> [u8; 8] {
        tag(&self.name)
    }
}

pub fn tag(name: &str) -> [u8; 8] {
    use sha2::Digest;
    Sha256::digest(name.as_bytes())[..8]
        .try_into()
        .expect("8 bytes")
}

/// The `Leaseline-Signature` header's value for `body` sent at `t` (Unix seconds):
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// How long to wait after the `attempts`-th failed attempt: `backoff` doubled for each
/// earlier failure, at most [`MAX_DELAY`], times a jitter in [0.5, 1) (`jitter` in [0, 1)),
/// so receivers coming back are not hit by every sender at once.
pub fn retry_delay(backoff: Duration, attempts: u32, jitter: f64) -> Duration {
    let doubled = backoff.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    doubled
        .min(MAX_DELAY)
        .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
}

/// A `[[webhook]]` section as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    name: String,
    url: String,
    secret: Option<String>,
    secret_env: Option<String>,
    events: Vec<String>,
    tenant: Option<String>,
    timeout: Option<String>,
    concurrency: Option<usize>,
    max_age: Option<String>,
    backoff: Option<String>,
}

/// Checks the `[[webhook]]` sections; `env` reads `secret_env`'s variable.
pub fn validate(
    raw: Vec<RawEndpoint>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Endpoint>, String> {
    let mut out: Vec<Endpoint> = Vec::new();
    for r in raw {
        let e = validate_one(r, &env)?;
        if out.iter().any(|o| o.name == e.name) {
            return Err(format!("webhook {:?} is defined twice", e.name));
        }
        if out.iter().any(|o| o.tag() == e.tag()) {
            return Err(format!(
                "webhook {:?}: its name shares a storage tag with another; rename it",
                e.name
            ));
        }
        out.push(e);
    }
    Ok(out)
}

fn validate_one(r: RawEndpoint, env: &impl Fn(&str) -> Option<String>) -> Result<Endpoint, String> {
    let ctx = |m: String| format!("webhook {:?}: {m}", r.name);
    if r.name.is_empty() || r.name.len() > 64 || r.name.contains(char::is_control) {
        return Err("a [[webhook]] needs a name of 1 to 64 characters".into());
    }
    check_url(&r.url).map_err(ctx)?;
    let secret = match (&r.secret, &r.secret_env) {
        (Some(s), None) => s.clone(),
        (None, Some(var)) => env(var).ok_or_else(|| {
            ctx(format!(
                "secret_env = {var:?}, but that environment variable is not set"
            ))
        })?,
        (Some(_), Some(_)) => return Err(ctx("give secret or secret_env, not both".into())),
        (None, None) => {
            return Err(ctx(
                "needs secret (or secret_env, the environment variable holding it): receivers check the signature with it".into(),
            ))
        }
    };
    if secret.len() < 16 {
        return Err(ctx(
            "the secret is too short: use at least 16 random characters".into(),
        ));
    }
    if r.events.is_empty() {
        return Err(ctx("events is empty: name the events it takes".into()));
    }
    let mut events = 0;
    for name in &r.events {
        let e = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            ctx(format!(
                "unknown event {name:?}; expected one of {}",
                known.join(", ")
            ))
        })?;
        events |= e.bit();
    }
    let tenant = r
        .tenant
        .as_deref()
        .map(TenantId::parse)
        .transpose()
        .map_err(|e| ctx(format!("tenant: {e}")))?;
    let dur = |key: &str, v: &Option<String>, default: &str| {
        parse_duration(v.as_deref().unwrap_or(default)).map_err(|e| ctx(format!("{key}: {e}")))
    };
    let timeout = dur("timeout", &r.timeout, "10s")?;
    let max_age = dur("max_age", &r.max_age, "3d")?;
    let backoff = dur("backoff", &r.backoff, "10s")?;
    if timeout.is_zero() || timeout > Duration::from_secs(60) {
        return Err(ctx("timeout must be between 1ms and 60s".into()));
    }
    if backoff.is_zero() || backoff > MAX_DELAY {
        return Err(ctx("backoff must be between 1ms and 1h".into()));
    }
    if max_age.is_zero() || max_age > Duration::from_secs(30 * 86_400) {
        return Err(ctx("max_age must be between 1ms and 30d".into()));
    }
    let concurrency = r.concurrency.unwrap_or(4);
    if !(1..=64).contains(&concurrency) {
        return Err(ctx("concurrency must be between 1 and 64".into()));
    }
    Ok(Endpoint {
        name: r.name.clone(),
        url: r.url.clone(),
        secret,
        events,
        tenant,
        timeout,
        concurrency,
        max_age,
        backoff,
    })
}

/// An absolute `https://` or `http://` URL with a host (http is for loopback or a private
/// network: accepted, never upgraded).
fn check_url(u: &str) -> Result<(), String> {
    let expected = format!("url {u:?}: expected https://host[:port]/path");
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| expected.clone())?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty()
        || host.contains('@')
        || u.contains(char::is_whitespace)
        || u.contains(char::is_control)
        || url_host_port(host).is_none()
    {
        return Err(expected);
    }
    Ok(())
}

/// The host and port of `host[:port]` (IPv6 in brackets), if it reads as one.
fn url_host_port(h: &str) -> Option<()> {
    let (host, port) = if let Some(v6) = h.strip_prefix('[') {
        let (addr, rest) = v6.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        (addr, rest.strip_prefix(':'))
    } else {
        match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        }
    };
    if let Some(p) = port {
        p.parse::<u16>().ok().filter(|p| *p > 0)?;
    }
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    ok.then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<Vec<Endpoint>, String> {
        let text = format!(
            "[[webhook]]\nname = \"shop\"\nurl = \"https://shop.example.com/hook\"\nevents = [\"lease.paid\"]\n{extra}"
        );
        #[derive(Deserialize)]
        struct F {
            webhook: Vec<RawEndpoint>,
        }
        let f: F = toml::from_str(&text).map_err(|e| e.to_string())?;
        validate(f.webhook, |v| {
            (v == "SHOP_SECRET").then(|| "from-the-environment-0123".to_owned())
        })
    }

    #[test]
    fn endpoints_take_their_events_and_documented_defaults() {
        let e = &raw("secret = \"whsec_0123456789abcdef\"").unwrap()[0];
        assert!(e.takes(EventType::LeasePaid) && !e.takes(EventType::CallEnded));
        assert_eq!(e.max_age, Duration::from_secs(3 * 86_400));
        assert_eq!(e.timeout, Duration::from_secs(10));
        assert_eq!(e.concurrency, 4);
        assert!(e.tenant.is_none());
        let e = &raw("secret_env = \"SHOP_SECRET\"\ntenant = \"site-a\"").unwrap()[0];
        assert_eq!(e.secret, "from-the-environment-0123");
        assert_eq!(e.tenant.as_ref().unwrap().as_str(), "site-a");
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        for (extra, needle) in [
            ("", "needs secret"),
            ("secret = \"short\"", "too short"),
            ("secret_env = \"NOPE\"", "NOPE"),
            (
                "secret = \"whsec_0123456789abcdef\"\nsecret_env = \"SHOP_SECRET\"",
                "not both",
            ),
            (
                "secret = \"whsec_0123456789abcdef\"\nmax_age = \"soon\"",
                "max_age",
            ),
            (
                "secret = \"whsec_0123456789abcdef\"\nconcurrency = 0",
                "concurrency",
            ),
        ] {
            let e = raw(extra).unwrap_err();
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        let text = |url: &str, events: &str| {
            format!("[[webhook]]\nname = \"x\"\nurl = \"{url}\"\nevents = [{events}]\nsecret = \"whsec_0123456789abcdef\"")
        };
        #[derive(Deserialize)]
        struct F {
            webhook: Vec<RawEndpoint>,
        }
        let check = |t: String| {
            let f: F = toml::from_str(&t).unwrap();
            validate(f.webhook, |_| None)
        };
        for url in [
            "ftp://x.example.com/",
            "https://",
            "https:///path",
            "shop.example.com/hook",
            "https://user@x.example.com/",
            "https://x.example.com:99999/",
            "https://exa mple.com/",
        ] {
            let e = check(text(url, "\"lease.paid\"")).unwrap_err();
            assert!(e.contains("url"), "{url}: {e}");
        }
        for url in [
            "http://127.0.0.1:9000/hook",
            "https://[::1]:8443/h?x=1",
            "https://shop.example.com",
        ] {
            assert!(check(text(url, "\"lease.paid\"")).is_ok(), "{url}");
        }
        let e = check(text("https://x.example.com/", "\"lease.payed\"")).unwrap_err();
        assert!(e.contains("unknown event \"lease.payed\""), "{e}");
        assert!(e.contains("lease.paid"), "{e}");
        assert!(check(text("https://x.example.com/", ""))
            .unwrap_err()
            .contains("events is empty"));
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_the_time_and_the_raw_body() {
        // Computed independently: printf '1767225600.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let s = signature("whsec_test", 1_767_225_600, br#"{"a":1}"#);
        assert_eq!(
            s,
            "t=1767225600,v1=6d204545ff126a339c00513d93603299c984074ce1331c3537c3f6c976b49019"
        );
        assert_ne!(s, signature("whsec_other", 1_767_225_600, br#"{"a":1}"#));
        assert_ne!(s, signature("whsec_test", 1_767_225_601, br#"{"a":1}"#));
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_an_hour() {
        let b = Duration::from_secs(10);
        assert_eq!(retry_delay(b, 1, 0.0), Duration::from_secs(5));
        assert_eq!(retry_delay(b, 1, 0.999_999).as_secs(), 9);
        assert_eq!(retry_delay(b, 3, 0.0), Duration::from_secs(20));
        assert_eq!(retry_delay(b, 30, 0.0), MAX_DELAY / 2);
        assert!(retry_delay(b, 30, 1.0) <= MAX_DELAY);
    }
}
