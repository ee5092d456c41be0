//! Journal events about leases and passes, as data: what the journal keeps beside calls and
//! ticket events so that a dispute can be settled from the journal alone (a redeem and what had
//! been paid, each refund and why, a pass revoked).

use super::money::{Currency, Money};
use super::time::Timestamp;
use super::types::{LeaseId, ListingId, PassId, PoolId, TenantId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A paid lease was redeemed; `amount` is what its calls had paid.
    LeaseRedeemed,
    /// A refund was recorded on a lease; `amount` is the refund.
    LeaseRefunded,
    /// A pass was revoked (a refund, or the site's decision).
    PassRevoked,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [
        EventKind::LeaseRedeemed,
        EventKind::LeaseRefunded,
        EventKind::PassRevoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::LeaseRedeemed => "lease_redeemed",
            EventKind::LeaseRefunded => "lease_refunded",
            EventKind::PassRevoked => "pass_revoked",
        }
    }

    /// Its byte in stored records and in derived ids.
    pub fn code(self) -> u8 {
        match self {
            EventKind::LeaseRedeemed => 0,
            EventKind::LeaseRefunded => 1,
            EventKind::PassRevoked => 2,
        }
    }

    pub fn from_code(c: u8) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.code() == c)
    }
}

/// A line of the journal about a lease or a pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEvent {
    /// Unique in the journal: derived from the lease or pass for what happens once to it, drawn
    /// by the caller for what may happen many times (refunds).
    pub id: [u8; 16],
    pub kind: EventKind,
    pub at: Timestamp,
    pub pool: PoolId,
    pub tenant: TenantId,
    pub lease: Option<LeaseId>,
    pub pass: Option<PassId>,
    pub listing: Option<ListingId>,
    pub amount: Option<Money>,
    pub currency: Option<Currency>,
    /// Why (a refund's reason, as the site gave it).
    pub note: Option<String>,
}

/// The id of what happens once to a record: its own id with the last byte naming the kind.
pub(super) fn derived_id(of: [u8; 16], kind: EventKind) -> [u8; 16] {
    let mut id = of;
    id[15] = kind.code();
    id
}
