//! The pools as configured, built once and shared (`Arc`) by the core, the store, the service
//! and the HTTP edge: names ↔ ids, which pool and slot each number is, which pool each shared
//! number serves. Immutable: nothing here changes while serving, so it is read without the
//! core's lock. Ids are positions in this run's configuration only; stored records name pools.

use std::collections::HashMap as StdMap;
use std::sync::Arc;

use super::lease::PoolSpec;
use super::ticket::{Formula, PoolMode};
use super::types::{PhoneNumber, PoolId};
use super::CoreError;

type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

#[derive(Debug)]
pub struct Directory {
    pub(super) pools: Vec<PoolSpec>,
    by_name: HashMap<Arc<str>, PoolId>,
    /// Which pool and slot each pool number is.
    numbers: HashMap<PhoneNumber, (PoolId, u32)>,
    /// Which pool each shared number serves.
    shared: HashMap<PhoneNumber, PoolId>,
}

impl Directory {
    /// Checks that names, numbers and shared numbers are each in one place only.
    pub fn new(specs: Vec<PoolSpec>) -> Result<Arc<Directory>, CoreError> {
        // The core's lease records hold a pool id in 16 bits.
        if specs.len() > usize::from(u16::MAX) + 1 {
            return Err(CoreError::Corrupt(format!(
                "{} pools: at most 65536 are served",
                specs.len()
            )));
        }
        let mut d = Directory {
            pools: Vec::with_capacity(specs.len()),
            by_name: HashMap::default(),
            numbers: HashMap::default(),
            shared: HashMap::default(),
        };
        for (p, spec) in specs.into_iter().enumerate() {
            let pid = PoolId(p as u32);
            if d.by_name
                .insert(Arc::from(spec.name.as_str()), pid)
                .is_some()
            {
                return Err(CoreError::Corrupt(format!(
                    "pool {} defined twice",
                    spec.name
                )));
            }
            d.numbers.reserve(spec.numbers.len());
            for (i, &number) in spec.numbers.iter().enumerate() {
                if d.numbers.insert(number, (pid, i as u32)).is_some() {
                    return Err(CoreError::Corrupt(format!("number {number} in two places")));
                }
            }
            if let Some(n) = spec.shared_number() {
                if d.numbers.contains_key(&n) || d.shared.insert(n, pid).is_some() {
                    return Err(CoreError::Corrupt(format!(
                        "shared number {n} in two places"
                    )));
                }
            }
            d.pools.push(spec);
        }
        Ok(Arc::new(d))
    }

    pub fn id(&self, name: &str) -> Option<PoolId> {
        self.by_name.get(name).copied()
    }

    pub fn spec(&self, pool: PoolId) -> &PoolSpec {
        &self.pools[pool.0 as usize]
    }

    pub fn name(&self, pool: PoolId) -> &str {
        &self.pools[pool.0 as usize].name
    }

    pub fn ids(&self) -> impl Iterator<Item = PoolId> {
        (0..self.pools.len() as u32).map(PoolId)
    }

    pub fn specs(&self) -> &[PoolSpec] {
        &self.pools
    }

    /// The pool and slot of a pool number.
    pub fn slot(&self, n: PhoneNumber) -> Option<(PoolId, u32)> {
        self.numbers.get(&n).copied()
    }

    /// The pool a shared number serves.
    pub fn shared_pool(&self, n: PhoneNumber) -> Option<PoolId> {
        self.shared.get(&n).copied()
    }

    /// The pool a called number belongs to, as a pool number or a shared number.
    pub fn pool_of_number(&self, n: PhoneNumber) -> Option<PoolId> {
        self.slot(n).map(|(p, _)| p).or_else(|| self.shared_pool(n))
    }

    /// The ticketing formula of a pool that sells access codes.
    pub fn formula(&self, pool: PoolId) -> Option<&Formula> {
        match &self.pools[pool.0 as usize].mode {
            PoolMode::Ticketing(f) => Some(f),
            PoolMode::Dynamic => None,
        }
    }
}
