//! The pools as configured, shared (`Arc`) by the core, the store, the service and the HTTP
//! edge: names ↔ ids, which pool and slot each number is, which pool each shared number
//! serves. Immutable: a reload builds the next one ([`Directory::evolve`]) and swaps it in,
//! so it is read without the core's lock. Ids are positions in this process's configuration
//! only (stored records name pools), stable across reloads: a reload appends new pools and
//! numbers and retires removed ones in place, so an id or slot taken from one directory
//! means the same pool and number in the next.

use std::collections::HashMap as StdMap;
use std::sync::Arc;

use super::lease::PoolSpec;
use super::ticket::{Formula, PoolMode};
use super::types::{PhoneNumber, PoolId};
use super::CoreError;

type HashMap<K, V> = StdMap<K, V, ahash::RandomState>;

#[derive(Debug)]
pub struct Directory {
    /// Every pool of this process, by id. A spec's `numbers` are its slots' numbers: the
    /// configured ones, and those a reload removed (retired).
    pub(super) pools: Vec<PoolSpec>,
    /// Per pool, which slots are retired: no longer configured, they finish the lease and
    /// quarantine they have and are never leased again. Empty: none.
    retired: Vec<Vec<bool>>,
    /// Pools a reload removed: still here for the leases they hold, found by no name.
    removed: Vec<bool>,
    /// Pools still configured, by name.
    by_name: HashMap<Arc<str>, PoolId>,
    /// Which pool and slot each pool number is.
    numbers: Slots,
    /// Which pool each shared number serves.
    shared: HashMap<PhoneNumber, PoolId>,
}

impl Directory {
    /// Checks that names, numbers and shared numbers are each in one place only.
    pub fn new(specs: Vec<PoolSpec>) -> Result<Arc<Directory>, CoreError> {
        Self::build(specs.into_iter().map(|s| (s, Vec::new(), false)).collect())
    }

    /// The directory a reload to `specs` makes of this one: pools keep their ids and their
    /// numbers their slots; new numbers and pools are appended; a number or pool no longer
    /// in `specs` is retired (its leases run their course, it is never leased again). A
    /// retired number listed again is configured again. Refused: a number moving to another
    /// pool (its lease in the first may still run), and a pool switching between dynamic and
    /// ticketing (its records would change meaning).
    pub fn evolve(&self, specs: Vec<PoolSpec>) -> Result<Arc<Directory>, CoreError> {
        let mut given: HashMap<String, PoolSpec> = HashMap::default();
        let mut added = Vec::new();
        for spec in specs {
            if self.by_name.contains_key(spec.name.as_str()) {
                given.insert(spec.name.clone(), spec);
            } else if self.pools.iter().any(|p| p.name == spec.name) {
                return Err(CoreError::Corrupt(format!(
                    "pool {} was removed by an earlier reload and still finishes its leases: \
                     it can be added again after a restart",
                    spec.name
                )));
            } else {
                added.push(spec);
            }
        }
        let mut next = Vec::with_capacity(self.pools.len() + added.len());
        for (p, old) in self.pools.iter().enumerate() {
            let Some(mut spec) = given.remove(&old.name).filter(|_| !self.removed[p]) else {
                next.push((old.clone(), vec![true; old.numbers.len()], true));
                continue;
            };
            if matches!(spec.mode, PoolMode::Ticketing(_))
                != matches!(old.mode, PoolMode::Ticketing(_))
            {
                return Err(CoreError::Corrupt(format!(
                    "pool {}: switching between dynamic and ticketing needs a restart",
                    spec.name
                )));
            }
            let configured: std::collections::HashSet<PhoneNumber> =
                spec.numbers.iter().copied().collect();
            let known: std::collections::HashSet<PhoneNumber> =
                old.numbers.iter().copied().collect();
            let mut numbers = old.numbers.clone();
            let mut retired: Vec<bool> = numbers.iter().map(|n| !configured.contains(n)).collect();
            for &n in spec.numbers.iter().filter(|n| !known.contains(n)) {
                numbers.push(n);
                retired.push(false);
            }
            if !retired.contains(&true) {
                retired.clear();
            }
            spec.numbers = numbers;
            next.push((spec, retired, false));
        }
        next.extend(added.into_iter().map(|s| (s, Vec::new(), false)));
        Self::build(next).map_err(|e| match e {
            CoreError::Corrupt(why) => CoreError::Corrupt(format!(
                "{why}: a reload cannot move a number between pools while its lease may \
                 still run (remove it, and add it to the other pool after a restart)"
            )),
            e => e,
        })
    }

    /// This directory with `held` numbers added to their pools as retired slots: numbers the
    /// stored state still holds though the configuration no longer lists them (removed while
    /// the service was stopped). Their leases run their course, as after a reload.
    pub fn retiring(
        &self,
        held: impl IntoIterator<Item = (PoolId, PhoneNumber)>,
    ) -> Result<Arc<Directory>, CoreError> {
        let mut next: Vec<(PoolSpec, Vec<bool>, bool)> = self
            .pools
            .iter()
            .enumerate()
            .map(|(p, s)| (s.clone(), self.retired[p].clone(), self.removed[p]))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for (p, n) in held {
            let (spec, retired, _) = &mut next[p.0 as usize];
            if self.slot(n).is_some() || self.shared_pool(n).is_some() || !seen.insert(n) {
                continue;
            }
            retired.resize(spec.numbers.len(), false);
            spec.numbers.push(n);
            retired.push(true);
        }
        Self::build(next)
    }

    /// From each pool's spec, retired slots (empty: none) and whether a reload removed it.
    fn build(specs: Vec<(PoolSpec, Vec<bool>, bool)>) -> Result<Arc<Directory>, CoreError> {
        // The core's lease records hold a pool id in 16 bits.
        if specs.len() > usize::from(u16::MAX) + 1 {
            return Err(CoreError::Corrupt(format!(
                "{} pools: at most 65536 are served",
                specs.len()
            )));
        }
        let mut all: Vec<(PhoneNumber, PoolId, u32)> = specs
            .iter()
            .enumerate()
            .flat_map(|(p, (spec, _, _))| {
                let pid = PoolId(p as u32);
                (spec.numbers.iter().enumerate()).map(move |(i, &n)| (n, pid, i as u32))
            })
            .collect();
        all.sort_unstable();
        if let Some(w) = all.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(CoreError::Corrupt(format!(
                "number {} in two places",
                w[0].0
            )));
        }
        let mut d = Directory {
            pools: Vec::with_capacity(specs.len()),
            retired: Vec::with_capacity(specs.len()),
            removed: Vec::with_capacity(specs.len()),
            by_name: HashMap::default(),
            numbers: Slots::new(all),
            shared: HashMap::default(),
        };
        for (p, (spec, retired, removed)) in specs.into_iter().enumerate() {
            let pid = PoolId(p as u32);
            if !removed
                && d.by_name
                    .insert(Arc::from(spec.name.as_str()), pid)
                    .is_some()
            {
                return Err(CoreError::Corrupt(format!(
                    "pool {} defined twice",
                    spec.name
                )));
            }
            if let Some(n) = spec.shared_number() {
                if d.numbers.get(n).is_some() || d.shared.insert(n, pid).is_some() {
                    return Err(CoreError::Corrupt(format!(
                        "shared number {n} in two places"
                    )));
                }
            }
            d.pools.push(spec);
            d.retired.push(retired);
            d.removed.push(removed);
        }
        Ok(Arc::new(d))
    }

    /// Whether slot `slot` of `pool` is retired: leased no more once its lease and quarantine
    /// are over.
    pub fn retired(&self, pool: PoolId, slot: u32) -> bool {
        (self.retired[pool.0 as usize].get(slot as usize)).is_some_and(|&r| r)
    }

    /// Whether a reload removed `pool` (it only finishes its leases).
    pub fn removed(&self, pool: PoolId) -> bool {
        self.removed[pool.0 as usize]
    }

    /// Numbers configured in `pool` now (its slots but the retired ones).
    pub fn configured(&self, pool: PoolId) -> usize {
        let r = &self.retired[pool.0 as usize];
        self.pools[pool.0 as usize].numbers.len() - r.iter().filter(|&&x| x).count()
    }

    /// The pools still configured (a reload's removed ones are left out).
    pub fn serving(&self) -> impl Iterator<Item = PoolId> + '_ {
        self.ids().filter(|&p| !self.removed(p))
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
        self.numbers.get(n)
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

/// Which pool and slot each pool number is. Pools are configured as ranges, so the numbers
/// are kept as runs of consecutive numbers (consecutive slots of one pool), found by
/// bisection: a few bytes for a million numbers, and no cache miss, where a map spends about
/// 33 bytes a number and a miss or two a lookup. Numbers too scattered to make runs (fewer
/// than 8 numbers a run on average, beyond 64 runs) go in a map instead.
#[derive(Debug)]
enum Slots {
    Runs(Vec<Run>),
    Map(HashMap<PhoneNumber, (PoolId, u32)>),
}

/// `len` numbers from `first`, in slots `slot..slot + len` of `pool`.
#[derive(Clone, Copy, Debug)]
struct Run {
    first: u64,
    len: u32,
    pool: PoolId,
    slot: u32,
}

impl Slots {
    /// From every pool number, sorted, each once.
    fn new(sorted: Vec<(PhoneNumber, PoolId, u32)>) -> Self {
        let mut runs: Vec<Run> = Vec::new();
        for &(n, pool, slot) in &sorted {
            match runs.last_mut() {
                Some(r)
                    if r.pool == pool
                        && r.first + u64::from(r.len) == n.digits()
                        && r.slot + r.len == slot =>
                {
                    r.len += 1
                }
                _ => runs.push(Run {
                    first: n.digits(),
                    len: 1,
                    pool,
                    slot,
                }),
            }
        }
        if runs.len() <= 64 || runs.len() * 8 <= sorted.len() {
            runs.shrink_to_fit();
            return Slots::Runs(runs);
        }
        Slots::Map(sorted.into_iter().map(|(n, p, i)| (n, (p, i))).collect())
    }

    fn get(&self, n: PhoneNumber) -> Option<(PoolId, u32)> {
        match self {
            Slots::Runs(runs) => {
                let d = n.digits();
                let r = runs[..runs.partition_point(|r| r.first <= d)].last()?;
                let offset = d - r.first;
                (offset < u64::from(r.len)).then(|| (r.pool, r.slot + offset as u32))
            }
            Slots::Map(map) => map.get(&n).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lease::{LeaseSettings, OnExhausted};
    use std::time::Duration;

    fn spec(name: &str, numbers: Vec<u64>) -> PoolSpec {
        let d = Duration::from_secs(60);
        PoolSpec {
            name: name.into(),
            numbers: numbers
                .into_iter()
                .map(|n| PhoneNumber::from_digits(n).unwrap())
                .collect(),
            settings: LeaseSettings {
                ttl: d,
                max_ttl: d,
                page_max_ttl: d,
                grace: d,
                quarantine: d,
                retention: d,
            },
            on_exhausted: OnExhausted::Reject,
            return_window: d,
            fallback: None,
            mode: PoolMode::Dynamic,
            access_ttl: Duration::ZERO,
            limits: Default::default(),
            tariff: None,
        }
    }

    fn n(d: u64) -> PhoneNumber {
        PhoneNumber::from_digits(d).unwrap()
    }

    #[test]
    fn every_number_finds_its_pool_and_slot_whether_in_runs_or_scattered() {
        // Ranges (out of order, one number alone), and a pool of numbers with gaps.
        let ranged = vec![
            spec(
                "a",
                vec![
                    33_100_000_005,
                    33_100_000_006,
                    33_100_000_000,
                    33_100_000_001,
                ],
            ),
            spec("b", vec![33_100_000_002, 33_200_000_000]),
        ];
        let scattered = vec![spec(
            "c",
            (0..1000).map(|i| 41_000_000_000 + 3 * i).collect(),
        )];
        for specs in [ranged, scattered] {
            let d = Directory::new(specs.clone()).unwrap();
            for (p, spec) in specs.iter().enumerate() {
                for (i, &number) in spec.numbers.iter().enumerate() {
                    assert_eq!(d.slot(number), Some((PoolId(p as u32), i as u32)));
                }
            }
            assert!(matches!(d.numbers, Slots::Runs(_)) == (specs.len() == 2));
            assert_eq!(d.slot(n(33_100_000_003)), None);
            assert_eq!(d.slot(n(33_099_999_999)), None);
            assert_eq!(d.slot(n(99_999_999_999)), None);
        }
    }

    #[test]
    fn a_number_in_two_pools_is_refused() {
        let specs = vec![
            spec("a", vec![33_100_000_000]),
            spec("b", vec![33_100_000_000]),
        ];
        assert!(matches!(Directory::new(specs), Err(CoreError::Corrupt(_))));
    }
}
