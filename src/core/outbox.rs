//! What an operation of the core leaves behind: the changes to persist (in order) and what
//! happened (for metrics and event streams). Every mutating operation writes into an
//! `&mut Outbox` its caller owns, so nothing can be changed without the caller holding the
//! effects to persist before answering anyone (raft-rs's `Ready`, as a parameter).

use std::time::Duration;

use super::call::Reason;
use super::lease::EndReason;
use super::money::Charge;
use super::types::{CallId, LeaseId, PoolId};
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

/// Something that happened, for metrics and live event streams; not persisted.
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
