//! `[cluster]` in `pool.toml`: where etcd is, who this node is, how long leadership outlives a
//! silent leader. Validated here, like every other section, before anything starts.

use std::time::Duration;

use serde::Deserialize;

/// A validated `[cluster]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd's client URLs (`http://host:port`), tried in order.
    pub etcd: Vec<String>,
    /// This instance's name, unique in the cluster (`[A-Za-z0-9._-]`, 1 to 64 characters).
    pub node: String,
    /// How clients reach this node (sent to them as `Leaseline-Leader` by standbys).
    pub advertise: String,
    /// Leadership lapses this long after the leader last renewed its etcd lease.
    pub lease_ttl: Duration,
    /// Where in etcd's key space this cluster's keys live (default `/leaseline/`).
    pub prefix: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    etcd: Vec<String>,
    node: String,
    advertise: String,
    lease_ttl: Option<String>,
    prefix: Option<String>,
}

/// The shortest and longest `lease_ttl`: below 2 s a GC pause or a slow disk costs the
/// leadership; above 60 s calls go unrouted too long after a crash.
const TTL_MIN: Duration = Duration::from_secs(2);
const TTL_MAX: Duration = Duration::from_secs(60);

pub fn validate(raw: RawCluster) -> Result<ClusterConfig, String> {
    let ctx = |m: String| format!("[cluster] {m}");
    if raw.etcd.is_empty() {
        return Err(ctx(
            "etcd needs at least one URL, such as \"http://127.0.0.1:2379\"".into(),
        ));
    }
    for url in &raw.etcd {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            ctx(format!(
                "etcd = {url:?}: expected http://host:port (etcd's client URL; TLS to etcd \
                 is not supported yet: run it on a private network or through a local TLS proxy)"
            ))
        })?;
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty()
            || hostport.contains(['/', '?', '#', '@'])
            || hostport.contains(char::is_whitespace)
            || !hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        {
            return Err(ctx(format!("etcd = {url:?}: expected http://host:port")));
        }
    }
    if raw.node.is_empty()
        || raw.node.len() > 64
        || !raw
            .node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(ctx(format!(
            "node = {:?}: expected 1 to 64 letters, digits, '.', '_' or '-'",
            raw.node
        )));
    }
    let a = &raw.advertise;
    let host = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty()
        || host.contains(['/', '?', '#', '@'])
        || a.contains(char::is_whitespace)
        || a.contains(char::is_control)
    {
        return Err(ctx(format!(
            "advertise = {a:?}: expected the URL clients reach this node at, such as \
             \"http://10.0.0.1:8080\" (scheme, host and port only)"
        )));
    }
    let lease_ttl = match &raw.lease_ttl {
        None => Duration::from_secs(5),
        Some(s) => {
            crate::config::parse_duration(s).map_err(|e| ctx(format!("lease_ttl = {s:?}: {e}")))?
        }
    };
    if !(TTL_MIN..=TTL_MAX).contains(&lease_ttl) || lease_ttl.subsec_nanos() != 0 {
        return Err(ctx(format!(
            "lease_ttl = {:?}: expected whole seconds from 2s to 60s",
            raw.lease_ttl.unwrap_or_default()
        )));
    }
    let prefix = raw.prefix.unwrap_or_else(|| "/leaseline/".into());
    if !prefix.starts_with('/')
        || !prefix.ends_with('/')
        || prefix.len() > 128
        || prefix.contains(char::is_control)
    {
        return Err(ctx(format!(
            "prefix = {prefix:?}: expected a key path such as \"/leaseline/\" (starting and \
             ending with '/')"
        )));
    }
    Ok(ClusterConfig {
        etcd: raw
            .etcd
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect(),
        node: raw.node,
        advertise: a.trim_end_matches('/').to_string(),
        lease_ttl,
        prefix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> Result<ClusterConfig, String> {
        validate(toml::from_str(toml_text).map_err(|e| e.to_string())?)
    }

    const OK: &str = r#"
        etcd = ["http://127.0.0.1:2379", "http://127.0.0.1:22379/"]
        node = "node-a"
        advertise = "http://10.0.0.1:8080"
    "#;

    #[test]
    fn a_minimal_cluster_takes_the_defaults() {
        let c = raw(OK).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.prefix, "/leaseline/");
        assert_eq!(c.etcd[1], "http://127.0.0.1:22379");
    }

    #[test]
    fn bad_values_are_refused_with_the_key_named() {
        for (bad, key) in [
            (
                OK.replace("http://127.0.0.1:2379", "https://e:2379"),
                "etcd",
            ),
            (OK.replace("http://127.0.0.1:2379", "http://e"), "etcd"),
            (OK.replace("node-a", "node a"), "node"),
            (OK.replace("node-a", ""), "node"),
            (
                OK.replace("http://10.0.0.1:8080", "10.0.0.1:8080"),
                "advertise",
            ),
            (
                OK.replace("http://10.0.0.1:8080", "http://x/p"),
                "advertise",
            ),
            (format!("{OK}\nlease_ttl = \"1s\""), "lease_ttl"),
            (format!("{OK}\nlease_ttl = \"2m\""), "lease_ttl"),
            (format!("{OK}\nlease_ttl = \"soon\""), "lease_ttl"),
            (format!("{OK}\nprefix = \"leaseline\""), "prefix"),
        ] {
            let e = raw(&bad).expect_err(&bad);
            assert!(e.contains(key), "{e} does not name {key}");
        }
        assert!(raw(&OK.replace(
            "etcd = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379/\"]",
            "etcd = []"
        ))
        .is_err());
    }

    const POOL: &str = "[[pool]]\nname = \"p\"\nnumbers = [\"+33899100000\"]\n";

    #[test]
    fn without_a_cluster_section_nothing_changes_and_webhooks_with_one_are_refused() {
        let base = std::path::Path::new(".");
        let plain = crate::config::Config::parse(POOL, base).unwrap();
        assert_eq!(plain.cluster, None);
        let clustered = crate::config::Config::parse(&format!("{POOL}[cluster]\n{OK}"), base);
        assert_eq!(clustered.unwrap().cluster.unwrap().node, "node-a");
        let hook = "[[webhook]]\nname = \"w\"\nurl = \"https://example.org/h\"\n\
                    secret = \"whsec_0123456789abcdef\"\nevents = [\"lease.released\"]\n";
        let e = crate::config::Config::parse(&format!("{POOL}{hook}[cluster]\n{OK}"), base)
            .unwrap_err();
        assert!(e.contains("[cluster]"), "{e}");
    }
}
