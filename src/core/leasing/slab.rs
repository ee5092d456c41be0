//! Leases as the core keeps them: compact records (`Rec`) in a slab addressed by `u32`, one
//! table from lease id to slot, and what many leases share (tenant, listing, target, terms)
//! interned once. A [`Lease`] is materialised from a record only where one leaves the core
//! (effects, answers). A slot is reused once its lease is purged and no wheel entry names it
//! (a purged record with entries pending stays as a ghost until the last one fires); lines,
//! callers, numbers and codes let go of a slot at the purge. So no generation is needed, and
//! `Leasing::check_invariants` verifies that every index held elsewhere names a live record
//! and that each record counts the wheel entries naming it.

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::super::lease::{EndReason, Lease, LeaseEnd, LeaseState, Line};
use super::super::money::Money;
use super::super::time::Timestamp;
use super::super::types::{
    Code, LeaseId, ListingId, PassId, PhoneNumber, PoolId, SessionId, Target, TenantId,
};

/// No lease: the end of a list, an empty head.
pub(super) const NONE: u32 = u32::MAX;

/// What many leases share: whose they are, the listing and where its calls go, and the terms
/// the site asked for. A site's visitors looking at one listing share one entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Terms {
    pub(super) tenant: TenantId,
    pub(super) listing: Option<ListingId>,
    pub(super) target: Option<Target>,
    pub(super) calls_required: u32,
    pub(super) min_call_secs: u32,
    pub(super) amount: Option<Money>,
}

/// What few leases have (a caller typed on the page, calls and what they paid, a redeem, a
/// refund), boxed so that the others pay 8 bytes for it.
#[derive(Clone, Debug)]
struct Extra {
    caller: Option<PhoneNumber>,
    calls: u32,
    amount_paid: Money,
    refunded: Money,
    first_call_at: Option<Timestamp>,
    redeemed_at: Option<Timestamp>,
    pass: Option<PassId>,
    /// Links among the leases naming the same caller (older, newer), as `older`/`newer` are
    /// among a line's.
    by_caller: (u32, u32),
}

const ENDED: u8 = 1;
const RELEASED: u8 = 2;
const FREED: u8 = 4;
const FROM_PAGE: u8 = 8;
/// Purged, but wheel entries still name its slot: kept (found by no id, on no list) until
/// the last one fires and says which id to delete.
const GHOST: u8 = 16;
const NO_CODE: u16 = u16::MAX;

/// One lease, in 96 bytes (a [`Lease`] is 248, and was boxed behind a map's 24-byte bucket).
#[derive(Debug)]
pub(super) struct Rec {
    pub(super) id: LeaseId,
    pub(super) session: SessionId,
    pub(super) number: PhoneNumber,
    pub(super) created_at: Timestamp,
    pub(super) expires_at: Timestamp,
    /// When it ended; read only with `ENDED` set.
    end_at: Timestamp,
    /// Wheel entries naming this slot, not yet fired.
    pub(super) pending: u32,
    /// Index of its [`Terms`] in the slab's interner.
    terms: u32,
    /// The previous (older) and next (newer) lease on its line, or `NONE`: a line's history,
    /// newest first from its head, without a vector per line.
    pub(super) older: u32,
    pub(super) newer: u32,
    pool: u16,
    code: u16,
    flags: u8,
    extra: Option<Box<Extra>>,
}

impl Rec {
    pub(super) fn pool(&self) -> PoolId {
        PoolId(u32::from(self.pool))
    }

    pub(super) fn code(&self) -> Option<Code> {
        Code::new(self.code)
    }

    pub(super) fn line(&self) -> Line {
        (self.number, self.code())
    }

    pub(super) fn end(&self) -> Option<LeaseEnd> {
        let reason = match self.flags & RELEASED != 0 {
            true => EndReason::Released,
            false => EndReason::Expired,
        };
        let end = LeaseEnd {
            at: self.end_at,
            reason,
        };
        (self.flags & ENDED != 0).then_some(end)
    }

    pub(super) fn ended(&self) -> bool {
        self.flags & ENDED != 0
    }

    pub(super) fn set_end(&mut self, end: LeaseEnd) {
        self.end_at = end.at;
        self.flags |= ENDED;
        match end.reason {
            EndReason::Released => self.flags |= RELEASED,
            EndReason::Expired => self.flags &= !RELEASED,
        }
    }

    pub(super) fn freed(&self) -> bool {
        self.flags & FREED != 0
    }

    pub(super) fn set_freed(&mut self) {
        self.flags |= FREED;
    }

    /// Made by a page (the lease's `from_page`).
    pub(super) fn by_page(&self) -> bool {
        self.flags & FROM_PAGE != 0
    }

    /// As [`Lease::end_at`]: when it stopped (or will stop) being active.
    pub(super) fn end_at(&self) -> Timestamp {
        match self.ended() {
            true => self.end_at,
            false => self.expires_at,
        }
    }

    /// As [`Lease::state`].
    pub(super) fn state(&self, now: Timestamp) -> LeaseState {
        LeaseState::of(self.end(), self.expires_at, now)
    }

    pub(super) fn caller(&self) -> Option<PhoneNumber> {
        self.extra.as_ref().and_then(|e| e.caller)
    }

    /// Calls counted toward it.
    pub(super) fn calls(&self) -> u32 {
        self.extra.as_ref().map_or(0, |e| e.calls)
    }

    pub(super) fn count_call(&mut self) {
        self.extra_mut().calls += 1;
    }

    /// The sum of the amounts of the calls counted for it.
    pub(super) fn amount_paid(&self) -> Money {
        self.extra.as_ref().map_or(Money::ZERO, |e| e.amount_paid)
    }

    pub(super) fn add_paid(&mut self, amount: Money) {
        let e = self.extra_mut();
        e.amount_paid = e.amount_paid.saturating_add(amount);
    }

    pub(super) fn refunded(&self) -> Money {
        self.extra.as_ref().map_or(Money::ZERO, |e| e.refunded)
    }

    pub(super) fn add_refund(&mut self, amount: Money) {
        let e = self.extra_mut();
        e.refunded = e.refunded.saturating_add(amount);
    }

    pub(super) fn first_call_at(&self) -> Option<Timestamp> {
        self.extra.as_ref().and_then(|e| e.first_call_at)
    }

    pub(super) fn set_first_call_at(&mut self, at: Timestamp) {
        self.extra_mut().first_call_at = Some(at);
    }

    pub(super) fn redeemed_at(&self) -> Option<Timestamp> {
        self.extra.as_ref().and_then(|e| e.redeemed_at)
    }

    pub(super) fn set_redeemed(&mut self, at: Timestamp, pass: Option<PassId>) {
        let e = self.extra_mut();
        e.redeemed_at = Some(at);
        e.pass = pass;
    }

    /// Links among the leases naming the same caller: (older, newer).
    pub(super) fn caller_links(&self) -> (u32, u32) {
        self.extra.as_ref().map_or((NONE, NONE), |e| e.by_caller)
    }

    /// Only for a lease that names a caller.
    pub(super) fn set_caller_links(&mut self, links: (u32, u32)) {
        debug_assert!(self.caller().is_some());
        self.extra_mut().by_caller = links;
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(|| {
            Box::new(Extra {
                caller: None,
                calls: 0,
                amount_paid: Money::ZERO,
                refunded: Money::ZERO,
                first_call_at: None,
                redeemed_at: None,
                pass: None,
                by_caller: (NONE, NONE),
            })
        })
    }
}

/// Interned [`Terms`], counted: an entry goes when its last lease does.
#[derive(Debug, Default)]
struct Interner {
    /// Each entry and how many records use it; `None`: vacant, listed in `vacant`.
    entries: Vec<Option<(Terms, u32)>>,
    vacant: Vec<u32>,
    /// Indices of `entries`, by the hash of their terms.
    index: HashTable<u32>,
    hasher: ahash::RandomState,
}

impl Interner {
    fn get(&self, i: u32) -> &Terms {
        &self.entries[i as usize].as_ref().expect("interned").0
    }

    fn intern(&mut self, terms: Terms) -> u32 {
        let hash = self.hasher.hash_one(&terms);
        let entries = &mut self.entries;
        if let Some(&i) = self.index.find(hash, |&i| {
            entries[i as usize]
                .as_ref()
                .is_some_and(|(t, _)| *t == terms)
        }) {
            entries[i as usize].as_mut().expect("found").1 += 1;
            return i;
        }
        let i = match self.vacant.pop() {
            Some(i) => {
                entries[i as usize] = Some((terms, 1));
                i
            }
            None => {
                entries.push(Some((terms, 1)));
                (entries.len() - 1) as u32
            }
        };
        let hasher = &self.hasher;
        self.index.insert_unique(hash, i, |&j| {
            hasher.hash_one(&entries[j as usize].as_ref().expect("indexed").0)
        });
        i
    }

    fn release(&mut self, i: u32) {
        let entry = self.entries[i as usize].as_mut().expect("interned");
        entry.1 -= 1;
        if entry.1 > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&entry.0);
        if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
            e.remove();
        }
        self.entries[i as usize] = None;
        self.vacant.push(i);
    }
}

/// The records, addressed by `u32`, and found by lease id.
#[derive(Debug, Default)]
pub(super) struct Slab {
    /// `None`: a vacant slot, listed in `vacant` for the next lease.
    recs: Vec<Option<Rec>>,
    vacant: Vec<u32>,
    /// Slot indices by the hash of their lease's id: 5 bytes a bucket, the id itself being
    /// read from the record (a map from id to index would store it twice).
    by_id: HashTable<u32>,
    ids: ahash::RandomState,
    terms: Interner,
}

impl Slab {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(super) fn reserve(&mut self, n: usize) {
        self.recs.reserve(n);
        let (recs, ids) = (&self.recs, &self.ids);
        self.by_id.reserve(n, |&i| ids.hash_one(rec_at(recs, i).id));
    }

    pub(super) fn find(&self, id: &LeaseId) -> Option<u32> {
        let recs = &self.recs;
        self.by_id
            .find(self.ids.hash_one(id), |&i| rec_at(recs, i).id == *id)
            .copied()
    }

    pub(super) fn get(&self, i: u32) -> &Rec {
        rec_at(&self.recs, i)
    }

    pub(super) fn get_mut(&mut self, i: u32) -> &mut Rec {
        let r = self.recs[i as usize].as_mut().expect("a live record");
        debug_assert!(
            r.flags & GHOST == 0,
            "a ghost is read only by its wheel entries"
        );
        r
    }

    /// The live record at `i`, if it holds one (not a ghost).
    pub(super) fn try_get(&self, i: u32) -> Option<&Rec> {
        self.recs
            .get(i as usize)
            .and_then(Option::as_ref)
            .filter(|r| r.flags & GHOST == 0)
    }

    /// Wheel entries pending for slot `i`, ghost or live.
    pub(super) fn pending(&self, i: u32) -> Option<u32> {
        self.recs.get(i as usize)?.as_ref().map(|r| r.pending)
    }

    /// Every slot holding a record, ghost or live.
    pub(super) fn slots(&self) -> u32 {
        self.recs.len() as u32
    }

    pub(super) fn terms(&self, rec: &Rec) -> &Terms {
        self.terms.get(rec.terms)
    }

    /// Every live record (no ghost), with its index.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Rec)> {
        self.recs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().map(|r| (i as u32, r)))
            .filter(|(_, r)| r.flags & GHOST == 0)
    }

    /// Files a lease, unlinked (the caller links it); `None` if its id is filed already.
    pub(super) fn insert(&mut self, lease: Lease) -> Option<u32> {
        let hash = self.ids.hash_one(lease.id);
        let (recs, ids) = (&self.recs, &self.ids);
        let vacant = match self.by_id.entry(
            hash,
            |&j| rec_at(recs, j).id == lease.id,
            |&j| ids.hash_one(rec_at(recs, j).id),
        ) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => v,
        };
        let terms = self.terms.intern(Terms {
            tenant: lease.tenant,
            listing: lease.listing,
            target: lease.target,
            calls_required: lease.calls_required,
            min_call_secs: lease.min_call_secs,
            amount: lease.amount,
        });
        let extra = (lease.caller.is_some()
            || lease.calls > 0
            || lease.amount_paid != Money::ZERO
            || lease.refunded != Money::ZERO
            || lease.first_call_at.is_some()
            || lease.redeemed_at.is_some()
            || lease.pass.is_some())
        .then(|| {
            Box::new(Extra {
                caller: lease.caller,
                calls: lease.calls,
                amount_paid: lease.amount_paid,
                refunded: lease.refunded,
                first_call_at: lease.first_call_at,
                redeemed_at: lease.redeemed_at,
                pass: lease.pass,
                by_caller: (NONE, NONE),
            })
        });
        let mut rec = Rec {
            id: lease.id,
            session: lease.session,
            number: lease.number,
            created_at: lease.created_at,
            expires_at: lease.expires_at,
            end_at: Timestamp::ZERO,
            pending: 0,
            terms,
            older: NONE,
            newer: NONE,
            pool: u16::try_from(lease.pool.0).expect("the directory has at most 65536 pools"),
            code: lease.code.map_or(NO_CODE, Code::value),
            flags: 0,
            extra,
        };
        if let Some(end) = lease.end {
            rec.set_end(end);
        }
        if lease.freed {
            rec.flags |= FREED;
        }
        if lease.from_page {
            rec.flags |= FROM_PAGE;
        }
        let i = match self.vacant.pop() {
            Some(i) => {
                self.recs[i as usize] = Some(rec);
                i
            }
            None => {
                self.recs.push(Some(rec));
                (self.recs.len() - 1) as u32
            }
        };
        vacant.insert(i);
        Some(i)
    }

    /// Forgets the record at `i` (the caller has unlinked it): its id is found no more, and
    /// its slot is free for another once no wheel entry names it.
    pub(super) fn purge(&mut self, i: u32) {
        let id = self.get(i).id;
        let recs = &self.recs;
        let Ok(e) = self
            .by_id
            .find_entry(self.ids.hash_one(id), |&j| rec_at(recs, j).id == id)
        else {
            unreachable!("a live record is filed by its id")
        };
        e.remove();
        let r = self.get_mut(i);
        r.flags |= GHOST;
        if r.pending == 0 {
            self.vacate(i);
        }
    }

    /// A wheel entry naming slot `i` has fired: the id of its record, and whether that record
    /// is live (not a ghost). A ghost goes with its last entry.
    pub(super) fn fired(&mut self, i: u32) -> (LeaseId, bool) {
        let r = self.recs[i as usize]
            .as_mut()
            .expect("a wheel entry's record");
        r.pending -= 1;
        let (id, ghost, pending) = (r.id, r.flags & GHOST != 0, r.pending);
        if ghost && pending == 0 {
            self.vacate(i);
        }
        (id, !ghost)
    }

    fn vacate(&mut self, i: u32) {
        let rec = self.recs[i as usize].take().expect("a record");
        self.terms.release(rec.terms);
        self.vacant.push(i);
    }

    /// The lease the record at `i` describes, as it leaves the core.
    pub(super) fn lease(&self, i: u32) -> Lease {
        let r = self.get(i);
        let t = self.terms(r);
        Lease {
            id: r.id,
            tenant: t.tenant.clone(),
            pool: r.pool(),
            number: r.number,
            session: r.session.clone(),
            listing: t.listing.clone(),
            target: t.target.clone(),
            caller: r.caller(),
            created_at: r.created_at,
            expires_at: r.expires_at,
            end: r.end(),
            freed: r.freed(),
            calls_required: t.calls_required,
            min_call_secs: t.min_call_secs,
            calls: r.calls(),
            amount: t.amount,
            amount_paid: r.amount_paid(),
            refunded: r.refunded(),
            redeemed_at: r.redeemed_at(),
            code: r.code(),
            first_call_at: r.first_call_at(),
            pass: r.extra.as_ref().and_then(|e| e.pass),
            from_page: r.by_page(),
        }
    }

    /// Bytes held, by structure: records, id table, boxed extras, sessions' strings, terms.
    pub(super) fn footprint(&self) -> [(&'static str, usize); 5] {
        let recs =
            self.recs.capacity() * std::mem::size_of::<Option<Rec>>() + self.vacant.capacity() * 4;
        let extras = self
            .recs
            .iter()
            .flatten()
            .filter(|r| r.extra.is_some())
            .count()
            * std::mem::size_of::<Extra>();
        // An `Arc<str>`'s allocation: two counts and the bytes.
        let sessions: usize = self
            .recs
            .iter()
            .flatten()
            .map(|r| 16 + r.session.as_str().len())
            .sum();
        let t = &self.terms;
        let strings: usize = t
            .entries
            .iter()
            .flatten()
            .map(|(t, _)| {
                let target = match &t.target {
                    Some(Target::Sip(s)) => 16 + s.len(),
                    _ => 0,
                };
                // A tenant's string is shared by every request of its key: not counted.
                t.listing.as_ref().map_or(0, |l| 16 + l.as_str().len()) + target
            })
            .sum();
        let terms = t.entries.capacity() * std::mem::size_of::<Option<(Terms, u32)>>()
            + t.vacant.capacity() * 4
            + table_bytes(&t.index)
            + strings;
        [
            ("lease records (slab)", recs),
            ("lease ids (table)", table_bytes(&self.by_id)),
            ("boxed extras (caller, calls, redeem)", extras),
            ("sessions (strings)", sessions),
            ("terms (interned, with strings)", terms),
        ]
    }

    /// Checks the id table, the vacant list and the interner's counts against the records.
    pub(super) fn check(&self) -> Result<(), String> {
        let live = self.iter().count();
        if live != self.by_id.len() {
            return Err(format!("{live} records but {} ids filed", self.by_id.len()));
        }
        for (i, r) in self.iter() {
            if self.find(&r.id) != Some(i) {
                return Err(format!("lease {} not found at its slot {i}", r.id));
            }
        }
        let mut vacant = self.vacant.clone();
        vacant.sort_unstable();
        vacant.dedup();
        let holes: Vec<u32> = (0..self.recs.len() as u32)
            .filter(|&i| self.recs[i as usize].is_none())
            .collect();
        if vacant != holes || vacant.len() != self.vacant.len() {
            return Err("the vacant list disagrees with the slab".into());
        }
        for r in self.recs.iter().flatten() {
            if r.flags & GHOST != 0 && r.pending == 0 {
                return Err(format!("ghost {} is named by no wheel entry", r.id));
            }
        }
        let mut refs = vec![0u32; self.terms.entries.len()];
        for r in self.recs.iter().flatten() {
            match refs.get_mut(r.terms as usize) {
                Some(n) if self.terms.entries[r.terms as usize].is_some() => *n += 1,
                _ => return Err(format!("lease {} names vacant terms", r.id)),
            }
        }
        for (i, e) in self.terms.entries.iter().enumerate() {
            let counted = e.as_ref().map_or(0, |(_, n)| *n);
            if counted != refs[i] {
                return Err(format!(
                    "terms {i} counted {counted} times, used {}",
                    refs[i]
                ));
            }
            if let Some((t, _)) = e {
                let hash = self.terms.hasher.hash_one(t);
                if self.terms.index.find(hash, |&j| j == i as u32).is_none() {
                    return Err(format!("terms {i} not indexed"));
                }
            }
        }
        let interned = self.terms.entries.iter().filter(|e| e.is_some()).count();
        if interned != self.terms.index.len() {
            return Err("the terms' index is out of step".into());
        }
        Ok(())
    }
}

/// Bytes a table's buckets hold: a control byte and a `T` each, at 7/8 load at most.
pub(super) fn table_bytes<T>(t: &HashTable<T>) -> usize {
    let buckets = match t.capacity() {
        0 => 0,
        c => (c * 8 / 7).next_power_of_two(),
    };
    buckets * (std::mem::size_of::<T>() + 1)
}

fn rec_at(recs: &[Option<Rec>], i: u32) -> &Rec {
    recs[i as usize].as_ref().expect("a live record")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_96_bytes_where_a_lease_is_248() {
        assert_eq!(std::mem::size_of::<Option<Rec>>(), 96);
        assert_eq!(std::mem::size_of::<Lease>(), 248);
    }
}
