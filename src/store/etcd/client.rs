//! A small etcd v3 client over etcd's HTTP/JSON gateway (`/v3/...`, keys and values base64):
//! ranges, transactions, leases and compaction, each a blocking `ureq` request. No gRPC stack
//! to compile; every call runs on a blocking thread (the committer's, the election's).
//! Endpoints are tried in turn: the one that last answered first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};

/// What etcd or the way to it said.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered (or none answered in time).
    #[error("etcd unreachable: {0}")]
    Unreachable(String),
    /// A member answered with an error (no quorum, request too large, lease not found…).
    #[error("etcd refused: {0}")]
    Refused(String),
}

/// One key and its value, with the revision that created it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
}

pub struct Range {
    pub kvs: Vec<Kv>,
    pub more: bool,
    /// The store's revision the range was read at.
    pub revision: i64,
}

/// One operation of a transaction.
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Deletes `key`, or every key in `[key, end)`.
    Delete { key: Vec<u8>, end: Option<Vec<u8>> },
    /// Reads `key`'s current value (into the answer).
    Get { key: Vec<u8> },
}

/// A transaction's guard.
pub enum Compare {
    /// `key` was created at this revision (0: it does not exist).
    CreateRevision(Vec<u8>, i64),
}

pub struct TxnResult {
    pub succeeded: bool,
    pub revision: i64,
    /// The keys read by `Op::Get`s of the branch taken.
    pub read: Vec<Kv>,
}

pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last (tried first next time).
    current: AtomicUsize,
}

/// The first key after every key starting with `prefix` (etcd's `range_end` for a prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Client {
    /// `timeout` bounds each request to one member.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(1)))
            .timeout(timeout)
            .build();
        Client {
            endpoints,
            agent,
            current: AtomicUsize::new(0),
        }
    }

    /// POSTs `body` to `path` on one member after another until one answers.
    fn post(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..n {
            let at = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[at]);
            match self.agent.post(&url).send_json(body) {
                Ok(resp) => {
                    self.current.store(at, Ordering::Relaxed);
                    let v: Value = resp
                        .into_json()
                        .map_err(|e| EtcdError::Unreachable(format!("{url}: {e}")))?;
                    if let Some(err) = v.get("error") {
                        return Err(EtcdError::Refused(err.to_string()));
                    }
                    return Ok(v);
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    // A member without quorum (or leaderless) says so; another may have it.
                    last = format!("{url}: {code} {text}");
                    if code >= 500 {
                        continue;
                    }
                    return Err(EtcdError::Refused(last));
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    pub fn range(
        &self,
        key: &[u8],
        end: Option<&[u8]>,
        limit: i64,
        descending: bool,
    ) -> Result<Range, EtcdError> {
        let mut body = json!({"key": B64.encode(key), "limit": limit});
        if let Some(end) = end {
            body["range_end"] = json!(B64.encode(end));
        }
        if descending {
            body["sort_order"] = json!("DESCEND");
            body["sort_target"] = json!("KEY");
        }
        let v = self.post("/v3/kv/range", &body)?;
        Ok(Range {
            kvs: kvs(v.get("kvs"))?,
            more: v.get("more").and_then(Value::as_bool).unwrap_or(false),
            revision: revision(&v),
        })
    }

    /// Every key with `prefix`, in key order, page by page.
    pub fn range_prefix(&self, prefix: &[u8], mut each: impl FnMut(Kv)) -> Result<(), EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        loop {
            let page = self.range(&from, Some(&end), 1000, false)?;
            let Some(last) = page.kvs.last().map(|kv| kv.key.clone()) else {
                return Ok(());
            };
            let more = page.more;
            page.kvs.into_iter().for_each(&mut each);
            if !more {
                return Ok(());
            }
            from = last;
            from.push(0);
        }
    }

    pub fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnResult, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(k, rev) => json!({
                    "key": B64.encode(k), "target": "CREATE", "result": "EQUAL",
                    "create_revision": rev.to_string(),
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> { ops.iter().map(op_json).collect() };
        let v = self.post(
            "/v3/kv/txn",
            &json!({"compare": compare, "success": ops(success), "failure": ops(failure)}),
        )?;
        let mut read = Vec::new();
        for r in v
            .get("responses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(range) = r.get("response_range") {
                read.extend(kvs(range.get("kvs"))?);
            }
        }
        Ok(TxnResult {
            succeeded: v.get("succeeded").and_then(Value::as_bool).unwrap_or(false),
            revision: revision(&v),
            read,
        })
    }

    /// The keys of `keys` that exist, read at one revision (one transaction of gets).
    pub fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Kv>, EtcdError> {
        let ops: Vec<Op> = keys.iter().map(|k| Op::Get { key: k.clone() }).collect();
        Ok(self.txn(&[], &ops, &[])?.read)
    }

    /// A new lease of `ttl` seconds; its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self.post("/v3/lease/grant", &json!({"TTL": ttl.to_string()}))?;
        int(v.get("ID")).ok_or_else(|| EtcdError::Refused(format!("no lease id in {v}")))
    }

    /// Renews lease `id`; the seconds it has left (0: it has expired).
    pub fn keep_alive(&self, id: i64) -> Result<i64, EtcdError> {
        let v = self.post("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        Ok(int(v.get("result").and_then(|r| r.get("TTL"))).unwrap_or(0))
    }

    pub fn revoke(&self, id: i64) -> Result<(), EtcdError> {
        self.post("/v3/lease/revoke", &json!({"ID": id.to_string()}))
            .map(drop)
    }

    /// Forgets the history of keys before `revision` (etcd keeps every version otherwise).
    pub fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        self.post(
            "/v3/kv/compaction",
            &json!({"revision": revision.to_string()}),
        )
        .map(drop)
    }
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({"key": B64.encode(key), "value": B64.encode(value)});
            if *lease != 0 {
                put["lease"] = json!(lease.to_string());
            }
            json!({ "request_put": put })
        }
        Op::Delete { key, end } => {
            let mut del = json!({"key": B64.encode(key)});
            if let Some(end) = end {
                del["range_end"] = json!(B64.encode(end));
            }
            json!({ "request_delete_range": del })
        }
        Op::Get { key } => json!({"request_range": {"key": B64.encode(key)}}),
    }
}

/// The gateway writes 64-bit integers as strings.
fn int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn revision(v: &Value) -> i64 {
    int(v.get("header").and_then(|h| h.get("revision"))).unwrap_or(0)
}

fn kvs(v: Option<&Value>) -> Result<Vec<Kv>, EtcdError> {
    let bad = |m: &str| EtcdError::Refused(format!("malformed answer: {m}"));
    let mut out = Vec::new();
    for kv in v.and_then(Value::as_array).into_iter().flatten() {
        let b = |field: &str| -> Result<Vec<u8>, EtcdError> {
            match kv.get(field).and_then(Value::as_str) {
                Some(s) => B64.decode(s).map_err(|_| bad(field)),
                None => Ok(Vec::new()),
            }
        };
        out.push(Kv {
            key: b("key")?,
            value: b("value")?,
            create_revision: int(kv.get("create_revision")).unwrap_or(0),
            mod_revision: int(kv.get("mod_revision")).unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }
}
