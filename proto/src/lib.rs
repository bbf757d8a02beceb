//! The wire contract of sup (`sup.v1`) and the JSON views that `supctl -o json`
//! and supd's HTTP API print. Both surfaces render through [`json`], so the
//! two can never drift apart.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sup.v1");
}

pub mod identity;
pub mod json;
pub mod progress_regex;
pub mod rank_env;
pub mod time;
pub mod transport;
