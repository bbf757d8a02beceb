//! `supctl drill`: inject a simulated GPU fault on a node (game days).

use serde::Serialize;
use sup_proto::v1;

use super::{json_error, operator};
use crate::cli::{DrillCommand, RecoveryActionArg};
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::humanize::one_line;
use crate::table::*;
use clap::ValueEnum;

pub(super) async fn run(
    client: &mut Client,
    drill: &DrillCommand,
    json: bool,
) -> Result<String, CtlError> {
    let (target, fault, what) = match drill {
        DrillCommand::Xid { target, xid } => (
            target,
            v1::drill::Fault::Xid(*xid),
            format!("Xid {xid} on GPU {} of node {}", target.gpu, target.node),
        ),
        DrillCommand::RecoveryAction { target, action } => (
            target,
            v1::drill::Fault::RecoveryAction(v1::RecoveryAction::from(*action) as i32),
            format!(
                "recovery action {} on GPU {} of node {}",
                action_name(*action),
                target.gpu,
                target.node
            ),
        ),
    };
    let by = operator(&target.by);
    let req = v1::DrillRequest {
        node_id: target.node.clone(),
        drill: Some(v1::Drill {
            gpu_index: target.gpu,
            fault: Some(fault),
            by: by.clone(),
        }),
        by,
        request_id: client::request_id(),
    };
    let r = client.drill(req).await?;
    if json {
        drill_json(&r).map_err(json_error)
    } else {
        Ok(drill_text(&what, &r))
    }
}

/// The result of `drill ...` with `-o json`.
#[derive(Debug, Serialize)]
pub struct DrillOutcomeView {
    pub message: String,
}

pub fn drill_json(r: &v1::DrillResponse) -> serde_json::Result<String> {
    json(&DrillOutcomeView {
        message: r.message.clone(),
    })
}

/// The server's word on the drill; `what` describes the fault when it sent
/// none (e.g. `Xid 79 on GPU 3 of node n1`).
pub fn drill_text(what: &str, r: &v1::DrillResponse) -> String {
    if r.message.trim().is_empty() {
        format!("drill sent: {what}\n")
    } else {
        one_line(&r.message) + "\n"
    }
}

/// The action as the operator typed it, for messages.
fn action_name(action: RecoveryActionArg) -> String {
    action
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_else(|| format!("{action:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_output() {
        let quiet = v1::DrillResponse::default();
        assert_eq!(
            drill_text("Xid 79 on GPU 3 of node n1", &quiet),
            "drill sent: Xid 79 on GPU 3 of node n1\n"
        );
        let told = v1::DrillResponse {
            message: "drill sent to n1".into(),
        };
        assert_eq!(drill_text("x", &told), "drill sent to n1\n");
        let v: serde_json::Value = serde_json::from_str(&drill_json(&told).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"message": "drill sent to n1"}));
    }

    #[test]
    fn recovery_actions_are_named_as_typed() {
        assert_eq!(
            action_name(RecoveryActionArg::DrainAndReset),
            "drain-and-reset"
        );
        assert_eq!(action_name(RecoveryActionArg::NodeReboot), "node-reboot");
    }
}
