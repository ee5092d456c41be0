//! Adapters between telephony providers and the service: they turn a provider's call events
//! into call starts and ends, and the answers into what the provider executes.

pub mod prompts;
pub mod twilio;
