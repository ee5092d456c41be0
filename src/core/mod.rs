//! The pure core: numbers, leases, the timing wheel and their rules. It knows nothing of
//! HTTP, sled or the wall clock: callers pass `now` in and persist the [`Effect`]s it returns.

mod allocator;
mod time;
mod types;
mod wheel;

pub use allocator::{
    AllocateRequest, Allocated, Allocator, EndReason, Ended, Lease, LeaseEnd, LeaseSettings,
    LeaseState, OnExhausted, PoolSpec, PoolStats,
};
pub use time::{retry_after_secs, Timestamp, TICK_MS};
pub use types::{LeaseId, ListingId, ParseError, PhoneNumber, PoolId, SessionId, Target, TenantId};
pub use wheel::Wheel;

use thiserror::Error;

/// One change to durable state, in the order the core made it. The store turns a list of
/// these into one atomic batch; nobody is answered before that batch is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    PutLease(Lease),
    DelLease(LeaseId),
    /// A wheel entry: at this tick, look at this lease again.
    PutWheel(u64, LeaseId),
    DelWheel(u64, LeaseId),
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
    #[error("lease id already in use")]
    DuplicateId,
    #[error("inconsistent state: {0}")]
    Corrupt(String),
}

#[cfg(test)]
mod tests;
