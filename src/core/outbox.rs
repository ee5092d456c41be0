//! What an operation of the core leaves behind: the changes to persist (in order) and what
//! happened (for metrics and event streams). Every mutating operation writes into an
//! `&mut Outbox` its caller owns, so nothing can be changed without the caller holding the
//! effects to persist before answering anyone (raft-rs's `Ready`, as a parameter).

use std::time::Duration;

use super::call::Reason;
use super::lease::EndReason;
use super::money::Charge;
use super::types::{CallId, LeaseId, PassId, PoolId, TenantId, TicketId};
use super::Effect;

#[derive(Debug, Default)]
#[must_use = "persist the effects before answering anyone"]
pub struct Outbox {
    pub effects: Vec<Effect>,
    pub notices: Vec<Notice>,
}

impl Outbox {
    pub fn new() -> Self {
        Outbox::default()
    }
}

/// Something that happened, for metrics, live event streams and webhooks; not persisted
/// itself (the service derives what it writes for webhooks from it, in the same batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    Ended {
        lease: LeaseId,
        pool: PoolId,
        reason: EndReason,
        /// From creation to the end.
        lived: Duration,
    },
    Attributed {
        pool: Option<PoolId>,
        reason: Reason,
        /// Time from the lease's creation to its first call, on that first call.
        first_call_after: Option<Duration>,
    },
    CallStarted {
        lease: LeaseId,
        call: CallId,
    },
    CallEnded {
        lease: LeaseId,
        call: CallId,
        duration_secs: u32,
        counted: bool,
    },
    Paid {
        lease: LeaseId,
    },
    TicketIssued {
        pool: PoolId,
        ticket: TicketId,
    },
    /// A paid lease was redeemed by its tenant (once).
    Redeemed {
        lease: LeaseId,
    },
    /// An access code was redeemed, by this tenant.
    TicketRedeemed {
        ticket: TicketId,
        tenant: TenantId,
    },
    /// A pass was revoked (the first time only).
    PassRevoked {
        pass: PassId,
    },
    /// An allocation found no number (nor code) to give.
    Exhausted {
        pool: PoolId,
    },
    /// A call of `pool` ended and was priced by its tariff.
    Charged {
        pool: PoolId,
        charge: Charge,
    },
    /// The record is gone (retention over): nothing more will happen to it.
    Purged {
        lease: LeaseId,
    },
}
