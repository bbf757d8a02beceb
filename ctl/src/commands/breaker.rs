//! `supctl breaker reset`: close the circuit breaker so automatic cordons resume.

use serde::Serialize;
use sup_proto::v1;

use super::{json_error, operator};
use crate::cli::BreakerCommand;
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::humanize::one_line;
use crate::table::*;

pub(super) async fn run(
    client: &mut Client,
    command: &BreakerCommand,
    json: bool,
) -> Result<String, CtlError> {
    let BreakerCommand::Reset { reason, by } = command;
    let req = v1::ResetBreakerRequest {
        by: operator(by),
        reason: reason.clone().unwrap_or_default(),
        request_id: client::request_id(),
    };
    let r = client.reset_breaker(req).await?;
    if json {
        breaker_json(&r).map_err(json_error)
    } else {
        Ok(breaker_text(&r))
    }
}

/// The result of `breaker reset` with `-o json`.
#[derive(Debug, Serialize)]
pub struct BreakerOutcomeView {
    pub changed: bool,
    pub message: String,
}

pub fn breaker_json(r: &v1::ResetBreakerResponse) -> serde_json::Result<String> {
    json(&BreakerOutcomeView {
        changed: r.changed,
        message: r.message.clone(),
    })
}

pub fn breaker_text(r: &v1::ResetBreakerResponse) -> String {
    let line = if !r.message.trim().is_empty() {
        one_line(&r.message)
    } else if r.changed {
        "breaker reset: automatic cordons resume".to_owned()
    } else {
        "breaker was not open; nothing changed".to_owned()
    };
    line + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_output() {
        let reset = v1::ResetBreakerResponse {
            changed: true,
            message: String::new(),
        };
        assert_eq!(
            breaker_text(&reset),
            "breaker reset: automatic cordons resume\n"
        );
        assert_eq!(
            breaker_text(&v1::ResetBreakerResponse::default()),
            "breaker was not open; nothing changed\n"
        );
        let v: serde_json::Value = serde_json::from_str(&breaker_json(&reset).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"changed": true, "message": ""}));
    }
}
