//! `supctl drill`: inject a fault on a node (game days): GPU faults, and
//! hang, slow, crash, vanish, partition, torn-checkpoint.

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
    let (node, by, gpu_index, fault, what) = describe(drill);
    let by = operator(by);
    let req = v1::DrillRequest {
        node_id: node.to_owned(),
        drill: Some(v1::Drill {
            gpu_index,
            fault: Some(fault),
            by: by.clone(),
            ..Default::default()
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

/// Milliseconds for the wire; a duration past `u32` is sent as the
/// largest, which supd refuses as out of range.
fn ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The drill's node, author, GPU, fault and a description for when the
/// server says nothing.
fn describe(drill: &DrillCommand) -> (&str, &Option<String>, u32, v1::drill::Fault, String) {
    use v1::drill::Fault;
    let rank_text = |rank: &Option<u32>| {
        rank.map_or_else(|| "its lowest rank".to_owned(), |r| format!("rank {r}"))
    };
    match drill {
        DrillCommand::Xid { target, xid } => (
            &target.node,
            &target.by,
            target.gpu,
            Fault::Xid(*xid),
            format!("Xid {xid} on GPU {} of node {}", target.gpu, target.node),
        ),
        DrillCommand::RecoveryAction { target, action } => (
            &target.node,
            &target.by,
            target.gpu,
            Fault::RecoveryAction(v1::RecoveryAction::from(*action) as i32),
            format!(
                "recovery action {} on GPU {} of node {}",
                action_name(*action),
                target.gpu,
                target.node
            ),
        ),
        DrillCommand::Hang { target } => (
            &target.node,
            &target.by,
            0,
            Fault::Hang(v1::HangDrill {}),
            format!("hang of the ranks on node {}", target.node),
        ),
        DrillCommand::Slow {
            target,
            factor,
            duration,
        } => (
            &target.node,
            &target.by,
            0,
            Fault::Slow(v1::SlowDrill {
                factor: *factor,
                duration_ms: ms(*duration),
                ..Default::default()
            }),
            format!(
                "ranks on node {} {factor}× slower for {}",
                target.node,
                humantime::format_duration(*duration)
            ),
        ),
        DrillCommand::Crash { target, rank } => (
            &target.node,
            &target.by,
            0,
            Fault::Crash(v1::CrashDrill { rank: *rank }),
            format!("crash of {} on node {}", rank_text(rank), target.node),
        ),
        DrillCommand::Vanish { target, duration } => (
            &target.node,
            &target.by,
            0,
            Fault::Vanish(v1::VanishDrill {
                duration_ms: ms(*duration),
            }),
            format!(
                "node {} vanishes for {}",
                target.node,
                humantime::format_duration(*duration)
            ),
        ),
        DrillCommand::Partition { target, duration } => (
            &target.node,
            &target.by,
            0,
            Fault::Partition(v1::PartitionDrill {
                duration_ms: ms(*duration),
            }),
            format!(
                "node {} partitioned for {}",
                target.node,
                humantime::format_duration(*duration)
            ),
        ),
        DrillCommand::TornCheckpoint { target, rank } => (
            &target.node,
            &target.by,
            0,
            Fault::TornCheckpoint(v1::TornCheckpointDrill { rank: *rank }),
            format!(
                "torn newest checkpoint, then a crash of {} on node {}",
                rank_text(rank),
                target.node
            ),
        ),
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
