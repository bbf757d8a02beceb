//! What each command prints: tables for people and JSON for scripts. Pure
//! functions from proto data (and the current time) to text, so they are
//! tested without a server.
//!
//! JSON goes through `sup_proto::json` views only, so `supctl -o json` and
//! supd's HTTP API cannot drift apart.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use sup_proto::json::{gpu_health_name, node_state_name, EventView, NodeView, StatusView};
use sup_proto::v1;

use crate::humanize::{ago, one_line, opt, or_none, timestamp, truncate, NONE};

/// Width the `status` view is laid out for.
const SCREEN_WIDTH: usize = 80;
/// Longest cordon reason shown in the `nodes` table; `node ID` shows it whole.
const REASON_WIDTH: usize = 32;
/// Gap between table columns.
const COLUMN_GAP: u16 = 3;

// ---------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------

/// The result of `cordon` / `uncordon` with `-o json`.
#[derive(Debug, Serialize)]
pub struct CordonOutcomeView {
    pub changed: bool,
    pub message: String,
    /// The node after the request; null only if the server sent none.
    pub node: Option<NodeView>,
}

impl From<&v1::CordonResponse> for CordonOutcomeView {
    fn from(r: &v1::CordonResponse) -> Self {
        CordonOutcomeView {
            changed: r.changed,
            message: r.message.clone(),
            node: r.node.as_ref().map(NodeView::from),
        }
    }
}

pub fn status_json(s: &v1::ClusterStatus) -> serde_json::Result<String> {
    json(&StatusView::from(s))
}

pub fn nodes_json(nodes: &[v1::Node]) -> serde_json::Result<String> {
    json(&nodes.iter().map(NodeView::from).collect::<Vec<_>>())
}

pub fn node_json(node: &v1::Node) -> serde_json::Result<String> {
    json(&NodeView::from(node))
}

pub fn cordon_json(r: &v1::CordonResponse) -> serde_json::Result<String> {
    json(&CordonOutcomeView::from(r))
}

/// `events` must be in display order already (see [`oldest_first`]).
pub fn events_json(events: &[v1::Event]) -> serde_json::Result<String> {
    json(&events.iter().map(EventView::from).collect::<Vec<_>>())
}

fn json<T: Serialize>(value: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(value).map(|mut s| {
        s.push('\n');
        s
    })
}

/// The contract promises events oldest first whatever order the server used.
pub fn oldest_first(mut events: Vec<v1::Event>) -> Vec<v1::Event> {
    events.sort_by_key(|e| e.seq);
    events
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

/// Summary line, nodes that need attention, then a compact nodes table that
/// fits 80 columns (addresses and reasons are in `nodes` / `node ID`).
pub fn status_text(s: &v1::ClusterStatus, now_ms: i64) -> String {
    let mut out = summary_line(s);
    out.push('\n');
    let attention = attention_lines(&s.nodes, now_ms);
    if !attention.is_empty() {
        out.push_str("\nNeeds attention:\n");
        for line in attention {
            out.push_str(&line);
            out.push('\n');
        }
    }
    if !s.nodes.is_empty() {
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

/// E.g. `4 nodes: 2 ready, 1 suspect, 1 cordoned; 1 spare; 0 jobs`. States
/// other than ready appear only when some node is in them, which keeps the
/// line short and makes trouble stand out.
pub fn summary_line(s: &v1::ClusterStatus) -> String {
    const STATES: [&str; 6] = [
        "ready",
        "suspect",
        "unreachable",
        "cordoned",
        "joining",
        "unknown",
    ];
    let count = |state: &str| {
        s.nodes
            .iter()
            .filter(|n| node_state_name(n.state) == state)
            .count()
    };
    let by_state: Vec<String> = STATES
        .iter()
        .map(|state| (*state, count(state)))
        .filter(|(state, c)| *c > 0 || *state == "ready")
        .map(|(state, c)| format!("{c} {state}"))
        .collect();
    format!(
        "{}: {}; {}; {}",
        plural(s.nodes.len(), "node"),
        by_state.join(", "),
        plural(s.spares.len(), "spare"),
        plural(s.jobs.len(), "job"),
    )
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Unreachable and suspect first (they may be hurting a job now), then
/// cordoned (already out of service, but someone has to repair them).
fn attention_lines(nodes: &[v1::Node], now_ms: i64) -> Vec<String> {
    let mut rows: Vec<(&v1::Node, String)> = Vec::new();
    for state in ["unreachable", "suspect", "cordoned"] {
        for n in nodes.iter().filter(|n| node_state_name(n.state) == state) {
            rows.push((n, attention_detail(n, now_ms)));
        }
    }
    let id_width = rows
        .iter()
        .map(|(n, _)| n.id.chars().count())
        .max()
        .unwrap_or(0);
    rows.into_iter()
        .map(|(n, detail)| {
            let prefix = format!("  {:<id_width$}  {:<11}  ", n.id, node_state_name(n.state));
            // Keep the line within the screen, but never cut the detail to
            // nothing when an id is very long.
            let room = SCREEN_WIDTH.saturating_sub(prefix.chars().count()).max(24);
            format!("{prefix}{}", truncate(&detail, room))
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

// ---------------------------------------------------------------------------
// nodes / node ID
// ---------------------------------------------------------------------------

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
            opt(n.cordon.as_ref(), |c| {
                truncate(&or_none(&c.reason), REASON_WIDTH)
            }),
        ]);
    }
    finish(table)
}

/// `8/8 ok`: GPUs whose health is ok, out of all the node reported.
pub fn gpu_summary(gpus: &[v1::Gpu]) -> String {
    if gpus.is_empty() {
        return NONE.to_owned();
    }
    let ok = gpus
        .iter()
        .filter(|g| gpu_health_name(g.health) == "ok")
        .count();
    format!("{ok}/{} ok", gpus.len())
}

pub fn node_text(n: &v1::Node, now_ms: i64) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let when = |ms: i64| {
        if ms <= 0 {
            NONE.to_owned()
        } else {
            format!("{} ({})", timestamp(ms), ago(now_ms, ms))
        }
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("Node", n.id.clone()),
        ("State", node_state_name(n.state).to_owned()),
        ("Address", or_none(&n.address)),
        ("Hostname", or_none(&n.hostname)),
        ("Connected", yes_no(n.connected)),
        ("Job", or_none(&n.job)),
        ("GPUs", gpu_summary(&n.gpus)),
        ("GPU backend", or_none(&n.gpu_backend)),
        ("Agent version", or_none(&n.agent_version)),
        ("Registered", when(n.registered_at_unix_ms)),
        ("Last seen", when(n.last_seen_unix_ms)),
    ];
    match &n.cordon {
        Some(c) => {
            fields.push((
                "Cordoned",
                format!("by {} at {}", or_none(&c.by), when(c.at_unix_ms)),
            ));
            fields.push(("Cordon reason", or_none(&c.reason)));
        }
        None => fields.push(("Cordoned", "no".to_owned())),
    }
    let key_width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (key, value) in fields {
        out.push_str(&format!("{:<key_width$} {value}\n", format!("{key}:")));
    }
    out.push('\n');
    if n.gpus.is_empty() {
        out.push_str("No GPUs reported.\n");
        return out;
    }
    let mut table = new_table(&["INDEX", "UUID", "NAME", "HEALTH", "TEMP", "POWER", "UTIL"]);
    for g in &n.gpus {
        let r = g.reading.as_ref();
        table.add_row(vec![
            g.index.to_string(),
            or_none(&g.uuid),
            or_none(&g.name),
            gpu_health_name(g.health).to_owned(),
            opt(r.and_then(|r| r.temperature_c), |t| format!("{t:.0} C")),
            opt(r.and_then(|r| r.power_w), |p| format!("{p:.0} W")),
            opt(r.and_then(|r| r.utilization_gpu_pct), |u| format!("{u}%")),
        ]);
    }
    out.push_str(&finish(table));
    out
}

// ---------------------------------------------------------------------------
// cordon / uncordon
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CordonAction {
    Cordon,
    Uncordon,
}

/// `node X cordoned: REASON` when the request changed something; otherwise
/// the server's explanation (e.g. that the node was already cordoned).
pub fn cordon_text(
    action: CordonAction,
    node_id: &str,
    reason: Option<&str>,
    r: &v1::CordonResponse,
) -> String {
    let verb = match action {
        CordonAction::Cordon => "cordoned",
        CordonAction::Uncordon => "uncordoned",
    };
    let line = if r.changed {
        match reason {
            Some(reason) => format!("node {node_id} {verb}: {}", one_line(reason)),
            None => format!("node {node_id} {verb}"),
        }
    } else if !r.message.trim().is_empty() {
        one_line(&r.message)
    } else {
        match action {
            CordonAction::Cordon => format!("node {node_id} was already cordoned; nothing changed"),
            CordonAction::Uncordon => format!("node {node_id} was not cordoned; nothing changed"),
        }
    };
    line + "\n"
}

// ---------------------------------------------------------------------------
// events
// ---------------------------------------------------------------------------

/// `events` must be in display order already (see [`oldest_first`]).
pub fn events_text(events: &[v1::Event]) -> String {
    if events.is_empty() {
        return "No events.\n".to_owned();
    }
    let mut table = new_table(&["SEQ", "AT", "KIND", "NODE", "JOB", "REASON"]);
    for e in events {
        table.add_row(vec![
            e.seq.to_string(),
            timestamp(e.at_unix_ms),
            or_none(&e.kind),
            or_none(&e.node),
            or_none(&e.job),
            or_none(&e.reason),
        ]);
    }
    finish(table)
}

// ---------------------------------------------------------------------------
// tables
// ---------------------------------------------------------------------------

/// Borderless, left-aligned columns in the style of kubectl and sinfo: easy
/// to read, and easy to grep or cut. No wrapping and no terminal probing, so
/// a pipe gets exactly what a terminal gets.
fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    table
}

fn finish(mut table: Table) -> String {
    for column in table.column_iter_mut() {
        column.set_padding((0, COLUMN_GAP));
    }
    let mut s = table.trim_fmt();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn gpus(healths: &[v1::GpuHealth]) -> Vec<v1::Gpu> {
        healths
            .iter()
            .enumerate()
            .map(|(i, h)| v1::Gpu {
                index: u32::try_from(i).unwrap(),
                uuid: format!("GPU-{i}"),
                name: "NVIDIA H100".into(),
                health: *h as i32,
                ..Default::default()
            })
            .collect()
    }

    fn node(id: &str, state: v1::NodeState) -> v1::Node {
        v1::Node {
            id: id.into(),
            address: format!("10.0.0.{}", id.len()),
            state: state as i32,
            gpus: gpus(&[v1::GpuHealth::Ok; 8]),
            last_seen_unix_ms: NOW - 3_000,
            connected: true,
            ..Default::default()
        }
    }

    fn cordon(reason: &str) -> Option<v1::Cordon> {
        Some(v1::Cordon {
            reason: reason.into(),
            by: "alice".into(),
            at_unix_ms: NOW - 300_000,
        })
    }

    fn cluster() -> v1::ClusterStatus {
        let mut busy = node("gpu-node-001", v1::NodeState::Ready);
        busy.job = "llama-70b".into();
        let mut cordoned = node("gpu-node-002", v1::NodeState::Cordoned);
        cordoned.cordon = cordon("xid 79: GPU fell off the bus");
        let mut suspect = node("gpu-node-003", v1::NodeState::Suspect);
        suspect.gpus = gpus(&[v1::GpuHealth::Ok, v1::GpuHealth::Failed]);
        let mut gone = node("gpu-node-004", v1::NodeState::Unreachable);
        gone.connected = false;
        gone.last_seen_unix_ms = NOW - 150_000;
        v1::ClusterStatus {
            nodes: vec![
                busy,
                node("gpu-node-005", v1::NodeState::Ready),
                cordoned,
                suspect,
                gone,
            ],
            jobs: vec![v1::Job {
                name: "llama-70b".into(),
                ..Default::default()
            }],
            spares: vec!["gpu-node-005".into()],
            ..Default::default()
        }
    }

    /// The cells of the table row that starts with `first`.
    fn row<'a>(text: &'a str, first: &str) -> Vec<&'a str> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first} in\n{text}"));
        line.split("   ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
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
    fn empty_node_list_says_so() {
        assert_eq!(nodes_text(&[], NOW), "No nodes registered.\n");
    }

    #[test]
    fn summary_counts_nodes_by_state() {
        assert_eq!(
            summary_line(&cluster()),
            "5 nodes: 2 ready, 1 suspect, 1 unreachable, 1 cordoned; 1 spare; 1 job"
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
            summary_line(&calm),
            "2 nodes: 1 ready, 1 joining; 2 spares; 0 jobs"
        );
        assert_eq!(
            summary_line(&v1::ClusterStatus::default()),
            "0 nodes: 0 ready; 0 spares; 0 jobs"
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
            text.starts_with("1 node: 1 ready; 0 spares; 0 jobs\n"),
            "{text}"
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
    fn node_details_show_dash_for_missing_readings() {
        let mut n = node("n1", v1::NodeState::Ready);
        n.gpus.truncate(2);
        n.gpus[0].reading = Some(v1::GpuReading {
            index: 0,
            temperature_c: Some(45.4),
            power_w: Some(312.0),
            utilization_gpu_pct: Some(87),
            ..Default::default()
        });
        let text = node_text(&n, NOW);
        assert!(text.starts_with("Node:"), "{text}");
        assert!(text.contains("Cordoned:      no\n"), "{text}");
        assert_eq!(
            row(&text, "0"),
            ["0", "GPU-0", "NVIDIA H100", "ok", "45 C", "312 W", "87%"]
        );
        assert_eq!(
            row(&text, "1"),
            ["1", "GPU-1", "NVIDIA H100", "ok", "-", "-", "-"]
        );
    }

    #[test]
    fn node_json_uses_the_shared_view() {
        let mut n = node("n1", v1::NodeState::Cordoned);
        n.cordon = cordon("bad");
        let v: serde_json::Value = serde_json::from_str(&node_json(&n).unwrap()).unwrap();
        assert_eq!(v["id"], "n1");
        assert_eq!(v["state"], "cordoned");
        assert_eq!(v["job"], serde_json::Value::Null);
        assert_eq!(v["cordon"]["by"], "alice");
        assert_eq!(v["gpus"].as_array().unwrap().len(), 8);
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
    fn events_json_is_an_array_oldest_first_with_nulls() {
        let events = oldest_first(vec![
            v1::Event {
                seq: 8,
                at_unix_ms: 2_000,
                kind: "node_cordoned".into(),
                node: "n1".into(),
                reason: "xid 79".into(),
                ..Default::default()
            },
            v1::Event {
                seq: 7,
                at_unix_ms: 1_000,
                kind: "supervisor_started".into(),
                ..Default::default()
            },
        ]);
        let v: serde_json::Value = serde_json::from_str(&events_json(&events).unwrap()).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["seq"], 7);
        assert_eq!(arr[0]["at"], "1970-01-01T00:00:01.000Z");
        assert_eq!(arr[0]["node"], serde_json::Value::Null);
        assert_eq!(arr[0]["job"], serde_json::Value::Null);
        assert_eq!(arr[0]["reason"], serde_json::Value::Null);
        assert_eq!(arr[1]["node"], "n1");
        assert_eq!(events_json(&[]).unwrap(), "[]\n");
    }

    #[test]
    fn events_table_uses_dash_for_not_applicable() {
        let e = v1::Event {
            seq: 1,
            at_unix_ms: 1_000,
            kind: "supervisor_started".into(),
            ..Default::default()
        };
        let text = events_text(&[e]);
        assert_eq!(
            row(&text, "1"),
            [
                "1",
                "1970-01-01T00:00:01Z",
                "supervisor_started",
                "-",
                "-",
                "-"
            ]
        );
        assert_eq!(events_text(&[]), "No events.\n");
    }

    #[test]
    fn cordon_messages() {
        let changed = v1::CordonResponse {
            changed: true,
            ..Default::default()
        };
        assert_eq!(
            cordon_text(CordonAction::Cordon, "n1", Some("xid 79"), &changed),
            "node n1 cordoned: xid 79\n"
        );
        assert_eq!(
            cordon_text(CordonAction::Uncordon, "n1", None, &changed),
            "node n1 uncordoned\n"
        );
        let repeat = v1::CordonResponse {
            changed: false,
            message: "node 'n1' is already cordoned".into(),
            ..Default::default()
        };
        assert_eq!(
            cordon_text(CordonAction::Cordon, "n1", Some("xid 79"), &repeat),
            "node 'n1' is already cordoned\n"
        );
        let silent = v1::CordonResponse::default();
        assert_eq!(
            cordon_text(CordonAction::Uncordon, "n1", None, &silent),
            "node n1 was not cordoned; nothing changed\n"
        );
    }

    #[test]
    fn cordon_json_has_changed_message_and_node() {
        let r = v1::CordonResponse {
            changed: true,
            message: "cordoned".into(),
            node: Some(node("n1", v1::NodeState::Cordoned)),
        };
        let v: serde_json::Value = serde_json::from_str(&cordon_json(&r).unwrap()).unwrap();
        assert_eq!(v["changed"], true);
        assert_eq!(v["message"], "cordoned");
        assert_eq!(v["node"]["id"], "n1");
        assert_eq!(v["node"]["state"], "cordoned");
    }
}
