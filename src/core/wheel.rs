//! A hashed timing wheel of deadlines, in ticks. It mirrors the entries the store persists
//! under big-endian tick keys; this copy only answers "what is due" without touching disk.

/// 4096 one-second slots: about 68 minutes per turn. Entries further out share a slot with
/// nearer ones and are skipped (not fired) until their own tick comes round.
const SLOTS: usize = 4096;

#[derive(Debug)]
pub struct Wheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Entries filed for a tick already passed (restored after a restart, or a deadline set
    /// in the past): they fire on the very next advance.
    overdue: Vec<(u64, T)>,
    /// Every tick up to and including this one has been fired.
    done_through: u64,
    len: usize,
}

impl<T: Copy> Wheel<T> {
    /// A wheel that has fired everything up to `done_through`.
    pub fn new(done_through: u64) -> Self {
        Wheel {
            slots: vec![Vec::new(); SLOTS],
            overdue: Vec::new(),
            done_through,
            len: 0,
        }
    }

    /// Entries pending, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last tick fully fired: readiness and lag are measured against it.
    pub fn done_through(&self) -> u64 {
        self.done_through
    }

    pub fn insert(&mut self, tick: u64, id: T) {
        if tick <= self.done_through {
            self.overdue.push((tick, id));
        } else {
            self.slots[tick as usize % SLOTS].push((tick, id));
        }
        self.len += 1;
    }

    /// Moves every entry due at or before `through` into `out`, in no particular order.
    pub fn advance(&mut self, through: u64, out: &mut Vec<(u64, T)>) {
        self.len -= self.overdue.len();
        out.append(&mut self.overdue);
        if through <= self.done_through {
            return;
        }
        // After a pause longer than a turn (a restart, a clock step) each slot is visited once.
        let span = (through - self.done_through).min(SLOTS as u64);
        for t in through + 1 - span..=through {
            let slot = &mut self.slots[t as usize % SLOTS];
            let before = slot.len();
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= through {
                    out.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            self.len -= before - slot.len();
        }
        self.done_through = through;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::LeaseId;

    fn id(n: u8) -> LeaseId {
        LeaseId::from_bytes([n; 16])
    }

    fn due(w: &mut Wheel<LeaseId>, through: u64) -> Vec<(u64, LeaseId)> {
        let mut out = Vec::new();
        w.advance(through, &mut out);
        out.sort();
        out
    }

    #[test]
    fn entries_fire_at_their_tick_not_before() {
        let mut w = Wheel::new(0);
        w.insert(5, id(1));
        assert!(due(&mut w, 4).is_empty());
        assert_eq!(due(&mut w, 5), vec![(5, id(1))]);
        assert!(w.is_empty());
    }

    #[test]
    fn entries_a_turn_away_wait_for_their_own_turn() {
        let mut w = Wheel::new(0);
        w.insert(3 + SLOTS as u64, id(2));
        assert!(due(&mut w, 3).is_empty());
        assert_eq!(w.len(), 1);
        assert_eq!(
            due(&mut w, 3 + SLOTS as u64),
            vec![(3 + SLOTS as u64, id(2))]
        );
    }

    #[test]
    fn a_long_pause_fires_everything_overdue_at_once() {
        let mut w = Wheel::new(0);
        for n in 1..=10u8 {
            w.insert(n as u64 * 1000, id(n));
        }
        assert_eq!(due(&mut w, 1_000_000).len(), 10);
        assert!(w.is_empty());
    }

    #[test]
    fn an_entry_filed_in_the_past_fires_on_the_next_advance() {
        let mut w = Wheel::new(100);
        w.insert(50, id(7));
        assert_eq!(due(&mut w, 100), vec![(50, id(7))]);
    }
}
