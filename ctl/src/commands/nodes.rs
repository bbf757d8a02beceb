//! `supctl nodes`: every node, one row each.

use sup_proto::json::{node_state_name, NodeView};
use sup_proto::v1;

use super::{json_error, now_ms};
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{ago, or_none, truncate, NONE};
use crate::table::*;

pub(super) async fn run(client: &mut Client, json: bool) -> Result<String, CtlError> {
    let s = client.status().await?;
    if json {
        nodes_json(&s.nodes).map_err(json_error)
    } else {
        Ok(nodes_text(&s.nodes, now_ms()))
    }
}

pub fn nodes_json(nodes: &[v1::Node]) -> serde_json::Result<String> {
    json(&nodes.iter().map(NodeView::from).collect::<Vec<_>>())
}

pub fn nodes_text(nodes: &[v1::Node], now_ms: i64) -> String {
    if nodes.is_empty() {
        return "No nodes registered.\n".to_owned();
    }
    let mut table = new_table(&[
        "NODE",
        "STATE",
        "ADDRESS",
        "GPUS",
        "JOB",
        "LAST SEEN",
        "REASON",
    ]);
    for n in nodes {
        table.add_row(vec![
            n.id.clone(),
            node_state_name(n.state).to_owned(),
            or_none(&n.address),
            gpu_summary(&n.gpus),
            or_none(&n.job),
            ago(now_ms, n.last_seen_unix_ms),
            match (&n.cordon, n.slurm.as_ref().filter(|s| s.unavailable)) {
                (Some(c), _) => truncate(&or_none(&c.reason), REASON_WIDTH),
                // Slurm's own reason, so a node that looks ready but takes
                // no work says why.
                (None, Some(s)) => truncate(
                    &format!("slurm {}: {}", s.state, or_none(&s.reason)),
                    REASON_WIDTH,
                ),
                (None, None) => NONE.to_owned(),
            },
        ]);
    }
    finish(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn nodes_table_has_one_row_per_node_with_dash_for_no_job() {
        let text = nodes_text(&cluster().nodes, NOW);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 5, "{text}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["NODE", "STATE", "ADDRESS", "GPUS", "JOB", "LAST", "SEEN", "REASON"]
        );
        assert_eq!(
            row(&text, "gpu-node-001"),
            [
                "gpu-node-001",
                "ready",
                "10.0.0.12",
                "8/8 ok",
                "llama-70b",
                "3s ago",
                "-"
            ]
        );
        assert_eq!(
            row(&text, "gpu-node-005"),
            [
                "gpu-node-005",
                "ready",
                "10.0.0.12",
                "8/8 ok",
                "-",
                "3s ago",
                "-"
            ]
        );
        assert_eq!(row(&text, "gpu-node-003")[3], "1/2 ok");
        assert_eq!(
            row(&text, "gpu-node-002")[6],
            "xid 79: GPU fell off the bus"
        );
        assert!(text.lines().all(|l| l == l.trim_end()), "trailing spaces");
    }

    #[test]
    fn nodes_table_truncates_long_reasons() {
        let mut n = node("n1", v1::NodeState::Cordoned);
        n.cordon = cordon(&"x".repeat(100));
        let text = nodes_text(&[n], NOW);
        let reason = row(&text, "n1")[6];
        assert_eq!(reason.chars().count(), REASON_WIDTH);
        assert!(reason.ends_with("..."));
    }

    #[test]
    fn a_node_slurm_holds_gives_slurms_state_and_reason() {
        let mut n = node("n1", v1::NodeState::Ready);
        n.slurm = Some(v1::SlurmNode {
            name: "n1".into(),
            state: "drained".into(),
            reason: "maintenance".into(),
            unavailable: true,
            drained_by_sup: false,
        });
        let text = nodes_text(&[n], NOW);
        assert!(
            text.lines()
                .any(|l| l.ends_with("slurm drained: maintenance")),
            "{text}"
        );
    }

    #[test]
    fn empty_node_list_says_so() {
        assert_eq!(nodes_text(&[], NOW), "No nodes registered.\n");
    }
}
