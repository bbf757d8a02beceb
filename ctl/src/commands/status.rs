//! `supctl status`: the cluster at a glance (summary, what needs an
//! operator, jobs, nodes).
//!
//! supd's status is bounded whatever the cluster's size: node counts by
//! state, at most 100 nodes (those that need attention first), 100 jobs and
//! 64 spare ids, with counts of what it left out. The nodes table is shown
//! when that is the whole cluster; past it, `supctl nodes` pages.

use sup_proto::json::{gpu_health_name, node_counts, node_state_name, StatusView};
use sup_proto::v1;

use super::{json_error, now_ms};
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{ago, one_line, opt, or_none, percent, si, truncate};
use crate::table::*;

/// Needs a supervisor; `--watch` repeats it.
pub(super) async fn run(client: &mut Client, json: bool) -> Result<String, CtlError> {
    let s = client.status().await?;
    if json {
        status_json(&s).map_err(json_error)
    } else {
        Ok(status_text(&s, now_ms()))
    }
}

/// Width the `status` view is laid out for.
const SCREEN_WIDTH: usize = 80;

/// Longest job name in the `status` jobs table; `jobs` shows it whole.
const STATUS_JOB_WIDTH: usize = 19;

/// Job states that need an operator's eye, worst first.
const TROUBLED_JOB_STATES: [&str; 3] = ["failed", "recovering", "pending"];

/// Node lines under "Needs attention" before one line counts the rest: a
/// rack that goes dark must not push everything else off the screen.
const ATTENTION_NODE_LINES: usize = 20;

/// The node states `supctl nodes --state` lists for "Needs attention".
const TROUBLED_NODE_STATES: [&str; 3] = ["unreachable", "suspect", "cordoned"];

pub fn status_json(s: &v1::ClusterStatus) -> serde_json::Result<String> {
    json(&StatusView::from(s))
}

/// Summary, what needs attention, then compact jobs and nodes tables that
/// fit 80 columns (addresses, reasons and details are in `nodes`, `jobs`,
/// `node ID` and `job describe`).
pub fn status_text(s: &v1::ClusterStatus, now_ms: i64) -> String {
    let mut out = summary(s);
    out.push('\n');
    if let Some(v) = &s.supervisor {
        let role = if v.role == "leader" && v.leader == v.id {
            "leader".to_owned()
        } else {
            format!("{}, leader {}", v.role, v.leader)
        };
        out.push_str(&format!(
            "Supervisor: {} ({role}; store {})\n",
            v.id, v.store
        ));
    }
    let attention = attention_lines(s, now_ms);
    if !attention.is_empty() {
        out.push_str("\nNeeds attention:\n");
        for line in attention {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if !s.jobs.is_empty() {
        let mut table = new_table(&[
            "JOB", "STATE", "GEN", "WORLD", "STEP", "TOK/S", "MFU", "RESTARTS",
        ]);
        for j in &s.jobs {
            table.add_row(vec![
                truncate(&or_none(&j.name), STATUS_JOB_WIDTH),
                or_none(&j.state),
                j.generation.to_string(),
                j.world_size.to_string(),
                opt(j.step, |s| s.to_string()),
                opt(j.tokens_per_s, si),
                opt(j.mfu, percent),
                j.restarts.to_string(),
            ]);
        }
        out.push('\n');
        out.push_str(&finish(table));
        if s.jobs_omitted > 0 {
            out.push_str(&format!(
                "{} not shown (unfinished and newest first)\n",
                plural(s.jobs_omitted as usize, "more job")
            ));
        }
    }
    if s.nodes_omitted > 0 {
        out.push_str(&format!(
            "\n{}: list them with supctl nodes (--state, --job, --limit, --all)\n",
            plural(node_counts(s).total as usize, "node")
        ));
    } else if !s.nodes.is_empty() {
        let mut table = new_table(&["NODE", "STATE", "GPUS", "JOB", "LAST SEEN"]);
        for n in &s.nodes {
            table.add_row(vec![
                n.id.clone(),
                node_state_name(n.state).to_owned(),
                gpu_summary(&n.gpus),
                or_none(&n.job),
                ago(now_ms, n.last_seen_unix_ms),
            ]);
        }
        out.push('\n');
        out.push_str(&finish(table));
    }
    out
}

/// E.g. `4 nodes: 2 ready, 1 suspect, 1 cordoned; spares 1/target 2; 0 jobs`.
/// States other than ready appear only when some node is in them, which
/// keeps the line short and makes trouble stand out. When the line would not
/// fit the screen, the spares and jobs go on a second line.
pub fn summary(s: &v1::ClusterStatus) -> String {
    let c = node_counts(s);
    let known = c.joining + c.ready + c.suspect + c.unreachable + c.cordoned + c.draining;
    let states = [
        ("ready", c.ready),
        ("suspect", c.suspect),
        ("unreachable", c.unreachable),
        ("cordoned", c.cordoned),
        ("draining", c.draining),
        ("joining", c.joining),
        ("unknown", c.total.saturating_sub(known)),
    ];
    let by_state: Vec<String> = states
        .iter()
        .filter(|(state, n)| *n > 0 || *state == "ready")
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    let nodes = format!(
        "{}: {}",
        plural(c.total as usize, "node"),
        by_state.join(", ")
    );
    let lent_count = spares_lent_count(s);
    let lent = if lent_count == 0 {
        String::new()
    } else {
        format!(" ({lent_count} lent to low-priority work)")
    };
    let rest = format!(
        "spares {}/target {}{lent}; {}",
        spare_count(s),
        s.spares_target,
        plural(s.jobs.len() + s.jobs_omitted as usize, "job"),
    );
    let line = format!("{nodes}; {rest}");
    if line.chars().count() <= SCREEN_WIDTH {
        line
    } else {
        format!("{nodes}\n{rest}")
    }
}

/// Every spare, listed or not (a supd from before paging listed them all
/// and sent no count).
fn spare_count(s: &v1::ClusterStatus) -> usize {
    (s.spare_count as usize).max(s.spares.len())
}

fn spares_lent_count(s: &v1::ClusterStatus) -> usize {
    (s.spares_lent_count as usize).max(s.spares_lent.len())
}

/// One line of "Needs attention": what (a node id, `job NAME`, `breaker`,
/// `spares`), its state, and why.
struct Attention {
    subject: String,
    state: String,
    detail: String,
}

/// Ordered by how much an operator must act now: an open breaker first
/// (automatic protection is off), then jobs that are not making progress,
/// then nodes (unreachable and suspect may be hurting a job; cordoned ones
/// are out of service but someone has to repair them), then a short spare
/// pool (the next failure will shrink a job instead of swapping a node).
fn attention_lines(s: &v1::ClusterStatus, now_ms: i64) -> Vec<String> {
    let mut rows: Vec<Attention> = Vec::new();
    if let Some(b) = s.breaker.as_ref().filter(|b| b.open) {
        let reason = if b.reason.trim().is_empty() {
            "no reason given".to_owned()
        } else {
            one_line(&b.reason)
        };
        rows.push(Attention {
            subject: "breaker".to_owned(),
            state: "open".to_owned(),
            detail: format!("since {}: {reason}", ago(now_ms, b.since_unix_ms)),
        });
    }
    for state in TROUBLED_JOB_STATES {
        for j in s.jobs.iter().filter(|j| j.state == state) {
            rows.push(Attention {
                subject: format!("job {}", one_line(&j.name)),
                state: state.to_owned(),
                detail: if j.reason.trim().is_empty() {
                    "no reason given".to_owned()
                } else {
                    one_line(&j.reason)
                },
            });
        }
    }
    let mut node_rows: Vec<Attention> = Vec::new();
    for state in TROUBLED_NODE_STATES {
        for n in s.nodes.iter().filter(|n| node_state_name(n.state) == state) {
            node_rows.push(Attention {
                subject: n.id.clone(),
                state: state.to_owned(),
                detail: attention_detail(n, now_ms),
            });
        }
    }
    // The status lists at most 100 nodes: the counts say how many more of
    // these states there are.
    let c = node_counts(s);
    let troubled = (c.unreachable + c.suspect + c.cordoned) as usize;
    let unlisted = troubled.saturating_sub(node_rows.len());
    // Held by Slurm for a reason of its own (a sup cordon shows above).
    for n in &s.nodes {
        if let Some(slurm) = n
            .slurm
            .as_ref()
            .filter(|x| x.unavailable && !x.drained_by_sup && n.cordon.is_none())
        {
            node_rows.push(Attention {
                subject: n.id.clone(),
                state: format!("slurm {}", slurm.state),
                detail: format!(
                    "{}; sup places no work on it",
                    if slurm.reason.trim().is_empty() {
                        "no reason given".to_owned()
                    } else {
                        one_line(&slurm.reason)
                    }
                ),
            });
        }
    }
    let hidden = node_rows.len().saturating_sub(ATTENTION_NODE_LINES) + unlisted;
    node_rows.truncate(ATTENTION_NODE_LINES);
    rows.extend(node_rows);
    if hidden > 0 {
        rows.push(Attention {
            subject: "nodes".to_owned(),
            state: format!("{hidden} more"),
            detail: format!("supctl nodes --state {}", TROUBLED_NODE_STATES.join(",")),
        });
    }
    let spares = spare_count(s);
    if u32::try_from(spares).is_ok_and(|n| n < s.spares_target) {
        rows.push(Attention {
            subject: "spares".to_owned(),
            state: "below target".to_owned(),
            detail: format!("{}, target {}", plural(spares, "spare"), s.spares_target),
        });
    }
    let subject_width = rows
        .iter()
        .map(|r| r.subject.chars().count())
        .max()
        .unwrap_or(0);
    let state_width = rows
        .iter()
        .map(|r| r.state.chars().count())
        .max()
        .unwrap_or(0);
    rows.into_iter()
        .map(|r| {
            let prefix = format!(
                "  {:<subject_width$}  {:<state_width$}  ",
                r.subject, r.state
            );
            // Keep the line within the screen, but never cut the detail to
            // nothing when an id is very long.
            let room = SCREEN_WIDTH.saturating_sub(prefix.chars().count()).max(24);
            format!("{prefix}{}", truncate(&r.detail, room))
        })
        .collect()
}

fn attention_detail(n: &v1::Node, now_ms: i64) -> String {
    if let Some(c) = &n.cordon {
        return format!(
            "by {} {}: {}",
            or_none(&c.by),
            ago(now_ms, c.at_unix_ms),
            or_none(&c.reason)
        );
    }
    let mut parts = vec![format!("last seen {}", ago(now_ms, n.last_seen_unix_ms))];
    if !n.connected {
        parts.push("agent disconnected".to_owned());
    }
    parts.extend(bad_gpus(&n.gpus));
    parts.join(", ")
}

/// "1 GPU failed", "2 GPUs degraded": the hardware side of a suspect node.
fn bad_gpus(gpus: &[v1::Gpu]) -> Vec<String> {
    ["failed", "degraded", "unknown"]
        .iter()
        .filter_map(|health| {
            let c = gpus
                .iter()
                .filter(|g| gpu_health_name(g.health) == *health)
                .count();
            (c > 0).then(|| format!("{} {health}", plural(c, "GPU")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn summary_counts_nodes_by_state() {
        assert_eq!(
            summary(&cluster()),
            "5 nodes: 2 ready, 1 suspect, 1 unreachable, 1 cordoned; spares 1/target 0; 1 job"
        );
        let calm = v1::ClusterStatus {
            nodes: vec![
                node("a", v1::NodeState::Ready),
                node("b", v1::NodeState::Joining),
            ],
            jobs: vec![],
            spares: vec!["a".into(), "b".into()],
            ..Default::default()
        };
        assert_eq!(
            summary(&calm),
            "2 nodes: 1 ready, 1 joining; spares 2/target 0; 0 jobs"
        );
        assert_eq!(
            summary(&v1::ClusterStatus::default()),
            "0 nodes: 0 ready; spares 0/target 0; 0 jobs"
        );
    }

    #[test]
    fn status_lists_nodes_that_need_attention_and_fits_80_columns() {
        let text = status_text(&cluster(), NOW);
        let attention: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "Needs attention:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(attention.len(), 3, "{text}");
        assert!(attention[0].contains("gpu-node-004") && attention[0].contains("unreachable"));
        assert!(attention[0].contains("last seen 2m30s ago, agent disconnected"));
        assert!(attention[1].contains("gpu-node-003") && attention[1].contains("1 GPU failed"));
        assert!(attention[2].contains("gpu-node-002"));
        assert!(attention[2].contains("by alice 5m ago: xid 79: GPU fell off the bus"));
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        assert_eq!(
            row(&text, "gpu-node-001"),
            ["gpu-node-001", "ready", "8/8 ok", "llama-70b", "3s ago"]
        );
    }

    #[test]
    fn status_of_a_healthy_cluster_has_no_attention_section() {
        let s = v1::ClusterStatus {
            nodes: vec![node("a", v1::NodeState::Ready)],
            ..Default::default()
        };
        let text = status_text(&s, NOW);
        assert!(!text.contains("Needs attention"), "{text}");
        assert!(
            text.starts_with("1 node: 1 ready; spares 0/target 0; 0 jobs\n"),
            "{text}"
        );
    }

    #[test]
    fn status_names_the_replica_that_answered() {
        let s = v1::ClusterStatus {
            nodes: vec![node("a", v1::NodeState::Ready)],
            supervisor: Some(v1::Supervisor {
                id: "supd-2".into(),
                role: "leader".into(),
                leader: "supd-2".into(),
                store: "etcd".into(),
            }),
            ..Default::default()
        };
        let text = status_text(&s, NOW);
        assert!(
            text.starts_with(
                "1 node: 1 ready; spares 0/target 0; 0 jobs\nSupervisor: supd-2 (leader; store etcd)\n"
            ),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&status_json(&s).unwrap()).unwrap();
        assert_eq!(
            v["supervisor"],
            serde_json::json!({"id": "supd-2", "role": "leader", "leader": "supd-2", "store": "etcd"})
        );
    }

    #[test]
    fn long_cordon_reasons_are_cut_to_the_screen_width() {
        let mut n = node("n1", v1::NodeState::Cordoned);
        n.cordon = cordon(&"y".repeat(200));
        let s = v1::ClusterStatus {
            nodes: vec![n],
            ..Default::default()
        };
        let text = status_text(&s, NOW);
        assert!(text.lines().all(|l| l.chars().count() <= 80), "{text}");
    }

    #[test]
    fn status_json_is_one_object_with_the_contract_keys() {
        let v: serde_json::Value = serde_json::from_str(&status_json(&cluster()).unwrap()).unwrap();
        assert_eq!(v["nodes"].as_array().unwrap().len(), 5);
        assert_eq!(v["nodes"][0]["job"], "llama-70b");
        assert_eq!(v["nodes"][1]["job"], serde_json::Value::Null);
        assert_eq!(v["spares"], serde_json::json!(["gpu-node-005"]));
        assert_eq!(v["jobs"][0]["name"], "llama-70b");
    }

    #[test]
    fn status_leads_with_breaker_then_jobs_then_nodes_then_spares() {
        let text = status_text(&troubled_cluster(), NOW);
        let lines = attention(&text);
        assert_eq!(lines.len(), 8, "{text}");
        assert!(lines[0].starts_with("  breaker "), "{text}");
        assert!(lines[0].contains("open"), "{text}");
        assert!(
            lines[0].ends_with("since 2m ago: 4 of 5 nodes in 60s"),
            "{text}"
        );
        assert!(lines[1].contains("job llm-70b-finetune") && lines[1].contains("failed"));
        assert!(lines[1].contains("restart budget exhausted (20 restarts)"));
        assert!(lines[2].contains("job llm-7b") && lines[2].contains("recovering"));
        assert!(lines[2].contains("node gpu-node-002 cordoned: xid 79"));
        assert!(lines[3].contains("job eval") && lines[3].contains("pending"));
        assert!(lines[3].contains("no reason given"), "{text}");
        assert!(lines[4].contains("gpu-node-004"));
        assert!(lines[5].contains("gpu-node-003"));
        assert!(lines[6].contains("gpu-node-002"));
        assert!(lines[7].contains("spares") && lines[7].contains("below target"));
        assert!(lines[7].ends_with("1 spare, target 2"), "{text}");
        // Running and succeeded jobs need no one.
        assert!(!lines.iter().any(|l| l.contains("llama-70b")), "{text}");
        assert!(!lines.iter().any(|l| l.contains("job done")), "{text}");
        // States line up in one column whatever the subject's length.
        let column = |l: &str, word: &str| l.find(word).unwrap();
        assert_eq!(column(lines[0], "open"), column(lines[1], "failed"));
        assert_eq!(column(lines[1], "failed"), column(lines[7], "below target"));
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        assert!(
            text.starts_with(
                "5 nodes: 2 ready, 1 suspect, 1 unreachable, 1 cordoned; spares 1/target 2; 5 jobs\n"
            ) || text.starts_with(
                "5 nodes: 2 ready, 1 suspect, 1 unreachable, 1 cordoned\nspares 1/target 2; 5 jobs\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn status_has_a_jobs_table_before_the_nodes() {
        let text = status_text(&troubled_cluster(), NOW);
        let jobs_header = text.find("JOB   ").expect("jobs table");
        let nodes_header = text.find("NODE   ").expect("nodes table");
        assert!(jobs_header < nodes_header, "{text}");
        assert_eq!(
            row(&text, "llama-70b"),
            [
                "llama-70b",
                "running",
                "3",
                "8",
                "1200",
                "12.3k",
                "41.5%",
                "2"
            ]
        );
        let mut fresh = job("eval", "pending");
        fresh.step = None;
        fresh.tokens_per_s = None;
        fresh.mfu = None;
        let s = v1::ClusterStatus {
            jobs: vec![fresh],
            ..Default::default()
        };
        assert_eq!(
            row(&status_text(&s, NOW), "eval"),
            ["eval", "pending", "3", "8", "-", "-", "-", "2"]
        );
    }

    #[test]
    fn status_cuts_long_job_names_and_breaker_reasons_to_80_columns() {
        let mut s = troubled_cluster();
        s.jobs[0].name = "n".repeat(60);
        s.jobs[3].reason = "z".repeat(200);
        if let Some(b) = s.breaker.as_mut() {
            b.reason = "b".repeat(200);
        }
        let text = status_text(&s, NOW);
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        assert!(text.contains(&format!("{}...", "n".repeat(16))), "{text}");
    }

    #[test]
    fn a_closed_breaker_and_enough_spares_need_no_attention() {
        let s = v1::ClusterStatus {
            nodes: vec![
                node("a", v1::NodeState::Ready),
                node("b", v1::NodeState::Ready),
            ],
            spares: vec!["a".into(), "b".into()],
            spares_target: 2,
            spares_lent: Vec::new(),
            breaker: Some(v1::Breaker {
                open: false,
                reason: "reset by alice".into(),
                since_unix_ms: NOW,
            }),
            jobs: vec![job("llm", "running")],
            ..Default::default()
        };
        let text = status_text(&s, NOW);
        assert!(!text.contains("Needs attention"), "{text}");
        assert!(!text.contains("breaker"), "{text}");
        assert!(
            text.starts_with("2 nodes: 2 ready; spares 2/target 2; 1 job\n"),
            "{text}"
        );
    }

    #[test]
    fn the_summary_says_how_many_spares_are_lent_to_low_priority_work() {
        let s = v1::ClusterStatus {
            nodes: vec![
                node("a", v1::NodeState::Ready),
                node("b", v1::NodeState::Ready),
            ],
            spares: vec!["a".into(), "b".into()],
            spares_target: 2,
            spares_lent: vec!["b".into()],
            ..Default::default()
        };
        assert_eq!(
            summary(&s),
            "2 nodes: 2 ready; spares 2/target 2 (1 lent to low-priority work); 0 jobs"
        );
    }

    /// What supd sends for 16,384 nodes: counts, the first 100 nodes
    /// (the troubled ones), the rest only counted.
    #[test]
    fn a_capped_status_counts_everything_and_points_to_supctl_nodes() {
        let nodes: Vec<v1::Node> = (0..100)
            .map(|i| {
                let mut n = node(&format!("gpu-node-{i:05}"), v1::NodeState::Unreachable);
                n.connected = false;
                n
            })
            .collect();
        let s = v1::ClusterStatus {
            nodes,
            nodes_omitted: 16_284,
            node_counts: Some(v1::NodeCounts {
                total: 16_384,
                ready: 15_000,
                unreachable: 1_200,
                cordoned: 180,
                draining: 4,
                ..Default::default()
            }),
            spares: (0..64).map(|i| format!("gpu-node-{i:05}")).collect(),
            spare_count: 300,
            spares_target: 64,
            jobs: vec![job("llama-405b", "running")],
            jobs_omitted: 150,
            ..Default::default()
        };
        assert_eq!(
            summary(&s),
            "16384 nodes: 15000 ready, 1200 unreachable, 180 cordoned, 4 draining\n\
             spares 300/target 64; 151 jobs"
        );
        let text = status_text(&s, NOW);
        let lines = attention(&text);
        assert_eq!(lines.len(), ATTENTION_NODE_LINES + 1, "{text}");
        let more = lines[ATTENTION_NODE_LINES];
        assert!(more.contains("1360 more"), "{more}");
        assert!(
            more.ends_with("supctl nodes --state unreachable,suspect,cordoned"),
            "{more}"
        );
        assert!(!text.contains("NODE "), "no nodes table: {text}");
        assert!(text.contains("150 more jobs not shown"), "{text}");
        assert!(
            text.contains(
                "16384 nodes: list them with supctl nodes (--state, --job, --limit, --all)"
            ),
            "{text}"
        );
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "too wide: {line:?}");
        }
        let v: serde_json::Value = serde_json::from_str(&status_json(&s).unwrap()).unwrap();
        assert_eq!(v["node_counts"]["total"], 16_384);
        assert_eq!(v["nodes_omitted"], 16_284);
        assert_eq!(v["spare_count"], 300);
        assert_eq!(v["jobs_omitted"], 150);
    }

    #[test]
    fn a_long_summary_moves_spares_and_jobs_to_a_second_line() {
        let states = [
            (v1::NodeState::Ready, 1000),
            (v1::NodeState::Suspect, 100),
            (v1::NodeState::Unreachable, 50),
            (v1::NodeState::Cordoned, 40),
            (v1::NodeState::Joining, 10),
        ];
        let nodes = states
            .iter()
            .flat_map(|(state, n)| (0..*n).map(move |i| node(&format!("n{i}"), *state)))
            .collect();
        let s = v1::ClusterStatus {
            nodes,
            spares: (0..12).map(|i| format!("n{i}")).collect(),
            spares_target: 16,
            ..Default::default()
        };
        assert_eq!(
            summary(&s),
            "1200 nodes: 1000 ready, 100 suspect, 50 unreachable, 40 cordoned, 10 joining\n\
             spares 12/target 16; 0 jobs"
        );
    }
}
