//! What an operation of the core leaves behind: the changes to persist (in order) and what
//! happened (for metrics and event streams). Every mutating operation writes into an
//! `&mut Outbox` its caller owns, so nothing can be changed without the caller holding the
//! effects to persist before answering anyone (raft-rs's `Ready`, as a parameter).

use super::{Effect, Notice};

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

    pub fn is_empty(&self) -> bool {
        self.effects.is_empty() && self.notices.is_empty()
    }
}
