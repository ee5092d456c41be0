//! Leases and pools as data: what a pool is configured with, what a lease holds, what an
//! allocation asks and answers. No logic beyond reading a lease's own fields.

use std::time::Duration;

use super::money::{Money, Tariff};
use super::ticket::PoolMode;
use super::time::Timestamp;
use super::types::{
    Code, LeaseId, ListingId, PassId, PhoneNumber, PoolId, SessionId, Share, Target, TenantId,
};

/// How long leases of a pool live, and how long their numbers rest afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Lifetime of a new lease, and of each renewal.
    pub ttl: Duration,
    /// No lease lives longer than this from its creation, however often renewed.
    pub max_ttl: Duration,
    /// No lease made by a page (publishable key) lives longer than this from its creation
    /// (at most `max_ttl`): renewing from a page cannot hold a number for hours.
    pub page_max_ttl: Duration,
    /// After a lease ends, calls are still attributed to its holder for this long.
    pub grace: Duration,
    /// After a lease ends, nobody else gets the number for this long (at least `grace`).
    pub quarantine: Duration,
    /// Ended leases stay readable (state, calls, redeem) this long after they end.
    pub retention: Duration,
}

/// What allocation does when a pool has no free number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnExhausted {
    /// Refuse, telling the client when the next number frees.
    Reject,
    /// Hand out the pool's shared number with a keypad code, valid `code_ttl`.
    Shared {
        number: PhoneNumber,
        code_ttl: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSpec {
    pub name: String,
    pub numbers: Vec<PhoneNumber>,
    pub settings: LeaseSettings,
    pub on_exhausted: OnExhausted,
    /// How long a caller's later calls on a number keep reaching the listing of their first
    /// attributed call there.
    pub return_window: Duration,
    /// Where unattributed calls to this pool go, so no caller hits a dead end.
    pub fallback: Option<Target>,
    /// Leased to visitors (dynamic), or selling access codes (ticketing).
    pub mode: PoolMode,
    /// How long a redeemed purchase (paid lease or ticket) grants access; zero: no pass.
    pub access_ttl: Duration,
    /// Caps on live leases, so one visitor or one site cannot drain the pool.
    pub limits: PoolLimits,
    /// What its calls cost the caller; `None`: calls carry no amount.
    pub tariff: Option<Tariff>,
}

/// Caps on live leases of a pool; 0 means no cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolLimits {
    /// Live leases one session may hold (one per listing it looks at).
    pub max_live_per_session: u32,
    /// Live leases one tenant (all its keys) may hold.
    pub max_live_per_tenant: u32,
    /// What pages (publishable keys, whose token is public) may hold of the pool's numbers
    /// and, separately, of its shared number's codes, counting leased and cooling ones; the
    /// rest stays for the sites' servers, so no page traffic can leave them with nothing.
    pub page_share: Share,
}

impl PoolSpec {
    /// The shared number, if the pool hands out codes when exhausted.
    pub fn shared_number(&self) -> Option<PhoneNumber> {
        match self.on_exhausted {
            OnExhausted::Shared { number, .. } => Some(number),
            OnExhausted::Reject => None,
        }
    }
}

/// A validated request for a number.
#[derive(Clone, Debug)]
pub struct AllocateRequest {
    pub tenant: TenantId,
    pub pool: PoolId,
    pub session: SessionId,
    pub listing: Option<ListingId>,
    pub target: Option<Target>,
    pub caller: Option<PhoneNumber>,
    /// Wanted lifetime; the pool's `ttl` if `None`. Capped by `max_ttl`.
    pub ttl: Option<Duration>,
    pub calls_required: u32,
    pub min_call_secs: u32,
    /// What the merchant asks, in the pool's currency: paid once the counted calls' amounts
    /// reach it (and `calls_required` calls were counted).
    pub amount: Option<Money>,
    /// The shared number and a code even while numbers are free (checkout by phone): the
    /// pool must have a shared number.
    pub with_code: bool,
    /// Made with a publishable key, from a page: bound by the pool's `page_share` and
    /// `page_max_ttl`.
    pub from_page: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    Expired,
    Released,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseEnd {
    /// When the lease stopped being active: its `expires_at` for an expiry (whenever the wheel
    /// noticed), the release time for a release. Cooling is counted from here.
    pub at: Timestamp,
    pub reason: EndReason,
}

/// What a client sees of a lease at a given instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Active,
    Expired,
    Released,
}

impl LeaseState {
    /// A lease's state at `now` from its end (if it ended) and its expiry alone, for the
    /// lease and for the core's compact record of it alike.
    pub(crate) fn of(end: Option<LeaseEnd>, expires_at: Timestamp, now: Timestamp) -> LeaseState {
        match end {
            Some(LeaseEnd {
                reason: EndReason::Released,
                ..
            }) => LeaseState::Released,
            Some(_) => LeaseState::Expired,
            None if now >= expires_at => LeaseState::Expired,
            None => LeaseState::Active,
        }
    }
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Expired => "expired",
            LeaseState::Released => "released",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: LeaseId,
    pub tenant: TenantId,
    pub pool: PoolId,
    pub number: PhoneNumber,
    pub session: SessionId,
    pub listing: Option<ListingId>,
    pub target: Option<Target>,
    pub caller: Option<PhoneNumber>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub end: Option<LeaseEnd>,
    /// The number went back to the free set after quarantine: only the record remains.
    pub freed: bool,
    pub calls_required: u32,
    pub min_call_secs: u32,
    pub calls: u32,
    /// What the merchant asks (see [`AllocateRequest::amount`]).
    pub amount: Option<Money>,
    /// The sum of the amounts of the calls counted for it.
    pub amount_paid: Money,
    /// The sum of the refunds recorded on it.
    pub refunded: Money,
    pub redeemed_at: Option<Timestamp>,
    /// On a shared number: the code the caller types.
    pub code: Option<Code>,
    pub first_call_at: Option<Timestamp>,
    /// The access pass granted when it was redeemed, if the pool grants one.
    pub pass: Option<PassId>,
    /// Made by a page (publishable key): counts toward the pool's page share until its number
    /// (or code) is free again, and lives at most `page_max_ttl`.
    pub from_page: bool,
}

impl Lease {
    /// The state at `now`, decided from the stored deadlines alone: a lease past `expires_at`
    /// reads as expired even before the wheel has fired its entry.
    pub fn state(&self, now: Timestamp) -> LeaseState {
        LeaseState::of(self.end, self.expires_at, now)
    }

    pub fn paid(&self) -> bool {
        paid(
            self.calls,
            self.calls_required,
            self.amount_paid,
            self.amount,
        )
    }
}

/// Which leases a transactions page holds: filters, and where the previous page stopped.
#[derive(Clone, Debug, Default)]
pub struct LeaseQuery {
    /// Only this tenant's (a site key's view); `None`: every tenant's (an admin's).
    pub tenant: Option<TenantId>,
    /// Only these pools'; `None`: every pool's.
    pub pools: Option<Vec<PoolId>>,
    pub state: Option<LeaseState>,
    pub listing: Option<ListingId>,
    /// Created at or after.
    pub since: Option<Timestamp>,
    /// Created before.
    pub until: Option<Timestamp>,
    /// Strictly older than this (creation, id): the last lease of the previous page.
    pub before: Option<(Timestamp, LeaseId)>,
    pub limit: usize,
}

/// Where a pool number is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberState {
    Free,
    Leased,
    Cooling,
    /// No longer configured (a reload removed it) and no longer held: never leased again.
    Retired,
}

impl NumberState {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberState::Free => "free",
            NumberState::Leased => "leased",
            NumberState::Cooling => "cooling",
            NumberState::Retired => "retired",
        }
    }
}

/// A pool number as the back-office shows it: its state, and the lease holding it (leased or
/// cooling).
#[derive(Clone, Debug)]
pub struct NumberView {
    pub number: PhoneNumber,
    pub state: NumberState,
    pub holder: Option<Lease>,
}

/// A page of leases, newest first, and whether older ones match too.
#[derive(Clone, Debug, Default)]
pub struct LeasePage {
    pub leases: Vec<Lease>,
    pub more: bool,
}

/// Paid: enough calls counted and, when an amount is asked, enough paid by them.
pub(crate) fn paid(calls: u32, required: u32, amount_paid: Money, asked: Option<Money>) -> bool {
    calls >= required && asked.is_none_or(|a| amount_paid >= a)
}

/// What a call is placed on: a pool number, or a shared number with a code.
pub(super) type Line = (PhoneNumber, Option<Code>);

/// The answer to an allocation.
#[derive(Clone, Debug)]
pub struct Allocated {
    pub lease: Lease,
    /// False when the same (tenant, pool, session, listing) got its live lease back, extended.
    pub fresh: bool,
}

/// Counts of a pool's numbers by state; they always add up to `size` (invariant 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: usize,
    pub free: usize,
    pub leased: usize,
    pub cooling: usize,
    /// Codes held on the shared number (live or cooling).
    pub codes: usize,
    /// Of `leased + cooling`, the numbers held by pages' leases; of `codes`, the codes.
    pub page_numbers: usize,
    pub page_codes: usize,
}
