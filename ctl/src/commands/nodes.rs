//! `supctl nodes`: nodes by id, one row each, a page at a time.
//!
//! supd answers at most a page (100 nodes by default, at most 1,000 and
//! about 1 MiB) so that no answer grows with the cluster; `--limit N` and
//! `--all` are followed here, page after page, and a listing that stops
//! early says how to go on (`--continue TOKEN`).

use sup_proto::json::{node_state_name, NodeListView};
use sup_proto::v1;

use super::{json_error, now_ms};
use crate::cli::NodeListArgs;
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{ago, or_none, truncate, NONE};
use crate::table::*;

pub(super) async fn run(
    client: &mut Client,
    args: &NodeListArgs,
    json: bool,
) -> Result<String, CtlError> {
    let listed = fetch(client, args).await?;
    if json {
        nodes_json(&listed).map_err(json_error)
    } else {
        Ok(listing_text(&listed, args, now_ms()))
    }
}

/// The most nodes supd puts in one page (it cuts larger limits to this).
const LARGEST_PAGE: u32 = 1000;

/// How many nodes a listing wants: `None` for every one.
fn wanted(args: &NodeListArgs) -> Option<usize> {
    match (args.all, args.limit) {
        (true, _) | (false, Some(0)) => None,
        // One page of supd's default size.
        (false, None) => Some(0),
        (false, Some(n)) => Some(n as usize),
    }
}

/// The pages `args` asks for, joined into one: the last token (and the
/// count after it) when it stopped before the end.
async fn fetch(
    client: &mut Client,
    args: &NodeListArgs,
) -> Result<v1::ListNodesResponse, CtlError> {
    let wanted = wanted(args);
    let mut out = v1::ListNodesResponse {
        next_continue_token: args.continue_token.clone().unwrap_or_default(),
        ..Default::default()
    };
    loop {
        let limit = match wanted {
            Some(0) => 0,
            Some(n) => u32::try_from(n - out.nodes.len()).unwrap_or(u32::MAX),
            // supd's largest page: a tenth of the round trips of its
            // default at the same bound on each answer's size.
            None => LARGEST_PAGE,
        };
        let page = client
            .list_nodes(v1::ListNodesRequest {
                states: args.state.iter().map(|s| *s as i32).collect(),
                job: args.job.clone().unwrap_or_default(),
                limit,
                continue_token: std::mem::take(&mut out.next_continue_token),
            })
            .await?;
        let progressed = !page.nodes.is_empty();
        out.nodes.extend(page.nodes);
        out.next_continue_token = page.next_continue_token;
        out.remaining = page.remaining;
        let done = match wanted {
            Some(0) => true,
            Some(n) => out.nodes.len() >= n,
            None => false,
        };
        // An empty page with a token would loop forever: supd never sends
        // one, but a client must not hang on it.
        if done || out.next_continue_token.is_empty() || !progressed {
            return Ok(out);
        }
    }
}

pub fn nodes_json(listed: &v1::ListNodesResponse) -> serde_json::Result<String> {
    json(&NodeListView::from(listed))
}

/// The table, then how to go on when the listing stopped early: the same
/// command with `--continue`, so it can be pasted.
pub fn listing_text(listed: &v1::ListNodesResponse, args: &NodeListArgs, now_ms: i64) -> String {
    let filtered = !args.state.is_empty() || args.job.is_some();
    let mut out = if listed.nodes.is_empty() && filtered {
        "No nodes match.\n".to_owned()
    } else {
        nodes_text(&listed.nodes, now_ms)
    };
    if !listed.next_continue_token.is_empty() {
        let mut next = String::from("supctl nodes");
        if !args.state.is_empty() {
            let names: Vec<&str> = args
                .state
                .iter()
                .map(|s| node_state_name(*s as i32))
                .collect();
            next.push_str(&format!(" --state {}", names.join(",")));
        }
        if let Some(job) = &args.job {
            next.push_str(&format!(" --job {job}"));
        }
        if let Some(limit) = args.limit.filter(|l| *l > 0) {
            next.push_str(&format!(" --limit {limit}"));
        }
        out.push_str(&format!(
            "\n{} more; next page: {next} --continue {} (or --all)\n",
            plural_nodes(listed.remaining),
            listed.next_continue_token
        ));
    }
    out
}

fn plural_nodes(n: u32) -> String {
    if n == 1 {
        "1 node".to_owned()
    } else {
        format!("{n} nodes")
    }
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
    fn a_listing_cut_short_says_how_to_go_on_and_json_carries_the_token() {
        let listed = v1::ListNodesResponse {
            nodes: cluster().nodes,
            next_continue_token: "AQID".into(),
            remaining: 16_379,
        };
        let args = NodeListArgs {
            state: vec![v1::NodeState::Cordoned, v1::NodeState::Unreachable],
            job: Some("llm".into()),
            limit: Some(5),
            ..Default::default()
        };
        let text = listing_text(&listed, &args, NOW);
        assert!(
            text.ends_with(
                "\n16379 nodes more; next page: supctl nodes --state cordoned,unreachable \
                 --job llm --limit 5 --continue AQID (or --all)\n"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&nodes_json(&listed).unwrap()).unwrap();
        assert_eq!(v["nodes"].as_array().map(Vec::len), Some(5));
        assert_eq!(v["continue"], "AQID");
        assert_eq!(v["remaining"], 16_379);

        let last = v1::ListNodesResponse::default();
        let v: serde_json::Value = serde_json::from_str(&nodes_json(&last).unwrap()).unwrap();
        assert_eq!(v["continue"], serde_json::Value::Null);
        assert_eq!(listing_text(&last, &args, NOW), "No nodes match.\n");
        assert_eq!(
            listing_text(&last, &NodeListArgs::default(), NOW),
            "No nodes registered.\n"
        );
    }

    #[test]
    fn the_limit_decides_how_many_pages_to_follow() {
        let args = |all: bool, limit: Option<u32>| NodeListArgs {
            all,
            limit,
            ..Default::default()
        };
        assert_eq!(wanted(&args(false, None)), Some(0), "one default page");
        assert_eq!(wanted(&args(false, Some(3000))), Some(3000));
        assert_eq!(wanted(&args(false, Some(0))), None, "0: every node");
        assert_eq!(wanted(&args(true, None)), None);
    }

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
