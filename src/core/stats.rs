//! Statistics as data: what one operation adds to the counters of a (UTC day, pool, currency,
//! tenant, listing) cell. The core emits a [`Tally`] beside the change that caused it; the store adds
//! it to its index in the same batch, so the statistics always agree with the journal.

use super::money::{Currency, Money};
use super::time::Timestamp;
use super::types::{ListingId, PoolId, TenantId};

const DAY_MS: u64 = 86_400_000;

/// Counters of one cell (or a sum of cells).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls started on the pool's numbers.
    pub calls: u64,
    /// Of them, attributed to a lease, return route, code or ticketing formula.
    pub attributed: u64,
    /// Ended having lasted at least one second.
    pub answered: u64,
    pub billed_secs: u64,
    /// In cents of the cell's currency.
    pub amount: i64,
    /// Leases created.
    pub leases: u64,
    /// Of the leases created, those paid (counted when they became paid).
    pub paid_leases: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.calls += o.calls;
        self.attributed += o.attributed;
        self.answered += o.answered;
        self.billed_secs += o.billed_secs;
        self.amount = self.amount.saturating_add(o.amount);
        self.leases += o.leases;
        self.paid_leases += o.paid_leases;
    }

    pub fn amount(&self) -> Money {
        Money::from_cents(self.amount)
    }
}

/// What one operation adds to the statistics: calls by the day they started, leases by the
/// day they were created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    /// Days since 1970-01-01, UTC.
    pub day: u32,
    pub pool: PoolId,
    /// The pool's tariff's currency (amounts of different currencies never add up).
    pub currency: Option<Currency>,
    /// The tenant of the lease concerned; `None` for calls that reached no lease (or whose
    /// lease was purged already, a return caller's say): those count for admins only.
    pub tenant: Option<TenantId>,
    pub listing: Option<ListingId>,
    pub counts: Counts,
}

/// The UTC day an instant falls on, in days since 1970-01-01.
pub fn day_of(t: Timestamp) -> u32 {
    u32::try_from(t.as_millis() / DAY_MS).unwrap_or(u32::MAX)
}

/// The instant a UTC day starts.
pub fn day_start(day: u32) -> Timestamp {
    Timestamp::from_millis(u64::from(day) * DAY_MS)
}
