//! The live fan-out: one [`Hub`] per process turns the store's commit
//! notices into frames for every local subscriber of a vault.
//!
//! Invariants:
//! - rows are read from the store once per notice burst per vault, and each
//!   frame is serialized once, however many subscribers there are and
//!   whichever transport carries them;
//! - the hub never waits on a subscriber: it broadcasts into a bounded ring,
//!   and a subscriber that falls off the ring catches up from the store by
//!   its own cursor ([`flow`]);
//! - a subscriber subscribes before it reads what it missed and drops
//!   duplicates by seq, so the switch from replay to live has no gap;
//! - one flow ([`flow`]) serves every transport: the WebSocket
//!   ([`socket`]) and server-sent events ([`sse`]).

pub mod flow;
pub mod frames;
pub mod hub;
pub mod presence;
pub mod socket;
pub mod sse;
pub mod upgrade;

pub use hub::{Event, Hub, Subscription};
