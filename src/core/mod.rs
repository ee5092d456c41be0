//! The pure core: numbers, leases, calls, the timing wheel and their rules. It knows nothing
//! of HTTP, sled or the wall clock: callers pass `now` in and persist the [`Effect`]s it
//! returns before answering anyone.

mod allocator;
mod call;
mod calls;
mod directory;
mod erlang;
mod journal;
mod lease;
mod leasing;
mod money;
mod outbox;
mod schedule;
mod stats;
mod ticket;
mod tickets;
mod time;
mod traffic;
mod types;
mod wheel;

pub use allocator::{Allocator, Snapshot};
pub use call::{Attribution, Call, CallEnd, CallStart, Reason, ReturnRoute};
pub use directory::Directory;
pub use erlang::{erlang_b, servers_for, MAX_SERVERS};
pub use journal::{EventKind, JournalEvent};
pub use lease::{
    AllocateRequest, Allocated, EndReason, Lease, LeaseEnd, LeasePage, LeaseQuery, LeaseSettings,
    LeaseState, NumberState, NumberView, OnExhausted, PoolLimits, PoolSpec, PoolStats,
};
pub use money::{Charge, Currency, Money, Rate, Tariff, TariffUnit};
pub use outbox::{Notice, Outbox};
pub use stats::{day_of, day_start, Counts, Tally};
pub use ticket::{
    Entropy, Formula, Pass, PassSource, PoolMode, Progress, Ticket, TicketEvent, TicketEventKind,
    TicketingAnswer,
};
pub use time::{retry_after_secs, Timestamp, TICK_MS};
pub use traffic::{
    Bucket, Capacity, Lever, Load, BUCKET_MS, DEFAULT_BLOCKING, KEEP_BUCKETS, WINDOW_BUCKETS,
};
pub use types::{
    CallId, CallKey, Code, Due, LeaseId, ListingId, ParseError, PassId, PhoneNumber, PoolId,
    ProgressKey, ReturnKey, SessionId, Share, Target, TenantId, TicketCode, TicketId,
};
pub use wheel::Wheel;

use thiserror::Error;

/// One change to durable state, in the order the core made it. The store turns a list of
/// these into one atomic batch; nobody is answered before that batch is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    PutLease(Lease),
    DelLease(LeaseId),
    /// A purged lease as it last stood, for the transactions' history (journal, like calls).
    ArchiveLease(Lease),
    /// A call record; it stays on disk (the journal) after memory forgets it.
    PutCall(Call),
    PutReturn(ReturnRoute),
    DelReturn(ReturnKey),
    PutTicket(Ticket),
    DelTicket(TicketId),
    PutPass(Pass),
    DelPass(PassId),
    PutProgress(Progress),
    DelProgress(ProgressKey),
    /// A line of the journal about a ticket (issued, redeemed, expired).
    TicketEvent(TicketEvent),
    /// A line of the journal about a lease or a pass (redeemed, refunded, pass revoked).
    JournalEvent(JournalEvent),
    /// What to add to the statistics' index.
    Tally(Tally),
    /// Where a tenant's listing sends calls.
    PutListing(TenantId, ListingId, Target),
    DelListing(TenantId, ListingId),
    /// A wheel entry: at this tick, look at this record again.
    PutWheel(u64, Due),
    DelWheel(u64, Due),
    /// A pool's traffic counts in one bucket (by index: its start over
    /// [`BUCKET_MS`]), written by the tick after they changed.
    PutTraffic(PoolId, u64, Bucket),
    /// A bucket older than a week of windows.
    DelTraffic(PoolId, u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    #[error("no such pool")]
    UnknownPool,
    #[error("no such lease")]
    UnknownLease,
    #[error("the lease has ended ({})", .0.as_str())]
    LeaseEnded(LeaseState),
    #[error("no number is free in this pool; retry in {retry_after_secs} s")]
    Exhausted { retry_after_secs: u64 },
    #[error("the lease is not paid yet: {calls} of {calls_required} calls{}", .amount.map_or(String::new(), |(paid, asked)| format!(", {paid} of {asked} paid")))]
    NotPaid {
        calls: u32,
        calls_required: u32,
        /// (amount paid, amount asked), when the lease asks for an amount.
        amount: Option<(Money, Money)>,
    },
    #[error("a refund of {asked} is more than the {refundable} paid and not yet refunded")]
    RefundTooLarge { asked: Money, refundable: Money },
    #[error("the lease was already redeemed")]
    AlreadyRedeemed,
    #[error("no such call")]
    UnknownCall,
    #[error("{0}")]
    CallConflict(String),
    #[error("the call's end is before its start")]
    EndBeforeStart,
    #[error("this {per} already holds {limit} live numbers in this pool, the most allowed")]
    TooManyLeases { per: &'static str, limit: u32 },
    #[error("this pool sells access codes by phone: its numbers are not leased")]
    TicketingPool,
    #[error("this pool has no shared_number, so it gives no codes (with_code)")]
    NoSharedNumber,
    #[error("no such access code")]
    UnknownTicket,
    #[error("the access code has expired")]
    TicketExpired,
    #[error("no such pass")]
    UnknownPass,
    #[error("lease id already in use")]
    DuplicateId,
    #[error("inconsistent state: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests;
