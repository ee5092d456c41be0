//! Leaseline leases surcharged phone numbers to website visitors for a short window and tells
//! the phone network who is calling whom.
//!
//! # Layout
//! - [`core`]: the pure allocation state machine (no I/O, no clock).
pub mod core;
