//! The engine's tests, one file per concept, driven with explicit time and
//! asserting decisions and their reasons.

mod detect;
mod drills;
mod health;
mod jobs;
mod lease;
mod maintenance;
mod nodes;
mod scheduler;
mod set_aside;
mod spares;
mod support;
