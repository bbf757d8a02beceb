//! GPU health on the node: polled signals and Xid events in, a verdict per
//! GPU (ok, degraded, failed, with reason and evidence) out to supd.
//!
//! - [`rules`]: the rule table (TOML, defaults in `deploy/xid-rules.toml`).
//! - [`verdict`]: one GPU's verdict from its facts; pure.
//! - [`reset`]: whether a GPU with a latched failure was reset and works
//!   again; pure.
//! - [`state`]: what is remembered between reports (Xid history, merging
//!   of duplicate reports, drill overrides, resets); pure.
//! - [`monitor`]: the task that wires probe, Xid sources, drills and the
//!   outbox to supd together.

pub mod monitor;
pub mod reset;
pub mod rules;
pub mod state;
pub mod verdict;

pub use self::monitor::Inputs;
pub use self::rules::{Rules, RulesError};
pub use self::state::HealthState;
