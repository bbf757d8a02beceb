//! What each command prints: tables for people and JSON for scripts. Pure
//! functions from proto data (and the current time) to text, so they are
//! tested without a server.
//!
//! JSON goes through `sup_proto::json` views only, so `supctl -o json` and
//! supd's HTTP API cannot drift apart.

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use sup_proto::json::{
    gpu_health_name, node_state_name, recovery_action_name, CheckpointView, EventView, JobView,
    NodeView, StatusView,
};
use sup_proto::v1;

use crate::humanize::{ago, one_line, opt, or_none, percent, si, timestamp, truncate, NONE};

/// Width the `status` view is laid out for.
const SCREEN_WIDTH: usize = 80;
/// Longest cordon reason shown in the `nodes` table; `node ID` shows it whole.
const REASON_WIDTH: usize = 32;
/// Gap between table columns.
const COLUMN_GAP: u16 = 3;
/// Longest job name in the `status` jobs table; `jobs` shows it whole.
const STATUS_JOB_WIDTH: usize = 19;
/// Job states that need an operator's eye, worst first.
const TROUBLED_JOB_STATES: [&str; 3] = ["failed", "recovering", "pending"];

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

/// The result of `job submit` / `job stop` with `-o json`.
#[derive(Debug, Serialize)]
pub struct JobOutcomeView {
    pub changed: bool,
    pub message: String,
    /// The job after the request; null only if the server sent none.
    pub job: Option<JobView>,
}

impl From<&v1::JobResponse> for JobOutcomeView {
    fn from(r: &v1::JobResponse) -> Self {
        JobOutcomeView {
            changed: r.changed,
            message: r.message.clone(),
            job: r.job.as_ref().map(JobView::from),
        }
    }
}

/// The result of `drill ...` with `-o json`.
#[derive(Debug, Serialize)]
pub struct DrillOutcomeView {
    pub message: String,
}

/// The result of `breaker reset` with `-o json`.
#[derive(Debug, Serialize)]
pub struct BreakerOutcomeView {
    pub changed: bool,
    pub message: String,
}

/// `logs` with `-o json`: the text as the agent sent it, with what it is of.
#[derive(Debug, Serialize)]
pub struct LogsView {
    pub job: String,
    pub rank: u32,
    pub text: String,
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

pub fn jobs_json(jobs: &[v1::Job]) -> serde_json::Result<String> {
    json(&jobs.iter().map(JobView::from).collect::<Vec<_>>())
}

pub fn job_json(job: &v1::Job) -> serde_json::Result<String> {
    json(&JobView::from(job))
}

pub fn job_outcome_json(r: &v1::JobResponse) -> serde_json::Result<String> {
    json(&JobOutcomeView::from(r))
}

/// `checkpoints` must be in display order already (see [`oldest_checkpoint_first`]).
pub fn checkpoints_json(checkpoints: &[v1::Checkpoint]) -> serde_json::Result<String> {
    json(
        &checkpoints
            .iter()
            .map(CheckpointView::from)
            .collect::<Vec<_>>(),
    )
}

pub fn logs_json(job: &str, rank: u32, r: &v1::LogResponse) -> serde_json::Result<String> {
    json(&LogsView {
        job: job.to_owned(),
        rank,
        text: r.text.clone(),
    })
}

pub fn drill_json(r: &v1::DrillResponse) -> serde_json::Result<String> {
    json(&DrillOutcomeView {
        message: r.message.clone(),
    })
}

pub fn breaker_json(r: &v1::ResetBreakerResponse) -> serde_json::Result<String> {
    json(&BreakerOutcomeView {
        changed: r.changed,
        message: r.message.clone(),
    })
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

/// The contract promises checkpoints oldest first; a stable sort by step
/// keeps the server's order for equal steps.
pub fn oldest_checkpoint_first(mut checkpoints: Vec<v1::Checkpoint>) -> Vec<v1::Checkpoint> {
    checkpoints.sort_by_key(|c| c.step);
    checkpoints
}

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

/// Summary, what needs attention, then compact jobs and nodes tables that
/// fit 80 columns (addresses, reasons and details are in `nodes`, `jobs`,
/// `node ID` and `job describe`).
pub fn status_text(s: &v1::ClusterStatus, now_ms: i64) -> String {
    let mut out = summary(s);
    out.push('\n');
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

/// E.g. `4 nodes: 2 ready, 1 suspect, 1 cordoned; spares 1/target 2; 0 jobs`.
/// States other than ready appear only when some node is in them, which
/// keeps the line short and makes trouble stand out. When the line would not
/// fit the screen, the spares and jobs go on a second line.
pub fn summary(s: &v1::ClusterStatus) -> String {
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
    let nodes = format!("{}: {}", plural(s.nodes.len(), "node"), by_state.join(", "));
    let rest = format!(
        "spares {}/target {}; {}",
        s.spares.len(),
        s.spares_target,
        plural(s.jobs.len(), "job"),
    );
    let line = format!("{nodes}; {rest}");
    if line.chars().count() <= SCREEN_WIDTH {
        line
    } else {
        format!("{nodes}\n{rest}")
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
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
    for state in ["unreachable", "suspect", "cordoned"] {
        for n in s.nodes.iter().filter(|n| node_state_name(n.state) == state) {
            rows.push(Attention {
                subject: n.id.clone(),
                state: state.to_owned(),
                detail: attention_detail(n, now_ms),
            });
        }
    }
    let spares = s.spares.len();
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
    let mut out = fields_text(&fields);
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
    out.push_str(&gpu_health_text(&n.gpus));
    out.push_str(&recent_xids_text(&n.gpus, now_ms));
    out
}

/// The story behind each GPU that is not plainly ok: its verdict's reason,
/// the recovery action NVML asks for, and the evidence. Healthy GPUs with
/// nothing to say are left out, so a failure is not lost among seven "ok"s.
fn gpu_health_text(gpus: &[v1::Gpu]) -> String {
    let mut out = String::new();
    for g in gpus {
        // "none" is NVML saying no action is needed: nothing to show.
        let action = recovery_action_name(g.recovery_action).filter(|a| *a != "none");
        let health = gpu_health_name(g.health);
        if health == "ok"
            && g.health_reason.trim().is_empty()
            && action.is_none()
            && g.evidence.is_empty()
        {
            continue;
        }
        out.push_str(&format!("\nGPU {}: {health}\n", g.index));
        let mut fields: Vec<(&str, String)> = vec![("  Reason", or_none(&g.health_reason))];
        if let Some(action) = action {
            fields.push(("  Recovery action", action.to_owned()));
        }
        for (i, evidence) in g.evidence.iter().enumerate() {
            // Only the first line carries the key; the rest line up under it.
            let key = if i == 0 { "  Evidence" } else { "" };
            fields.push((key, one_line(evidence)));
        }
        out.push_str(&fields_text(&fields));
    }
    out
}

/// Every GPU's recent Xids in one table, newest last, so a burst across GPUs
/// reads in the order it happened.
fn recent_xids_text(gpus: &[v1::Gpu], now_ms: i64) -> String {
    let mut xids: Vec<(u32, &v1::XidEvent)> = gpus
        .iter()
        .flat_map(|g| g.recent_xids.iter().map(move |x| (g.index, x)))
        .collect();
    if xids.is_empty() {
        return "\nNo recent Xids.\n".to_owned();
    }
    xids.sort_by_key(|(_, x)| x.at_unix_ms);
    let mut table = new_table(&["GPU", "XID", "AGE", "SOURCE", "DETAIL"]);
    for (gpu, x) in xids {
        let detail = match (x.application, x.detail.trim().is_empty()) {
            (true, true) => "application Xid".to_owned(),
            (true, false) => format!("application Xid: {}", one_line(&x.detail)),
            (false, _) => or_none(&x.detail),
        };
        table.add_row(vec![
            gpu.to_string(),
            x.xid.to_string(),
            ago(now_ms, x.at_unix_ms),
            or_none(&x.source),
            detail,
        ]);
    }
    format!("\nRecent Xids (newest last):\n{}", finish(table))
}

/// `Key: value` lines with the values lined up. An empty key continues the
/// value of the key above it.
fn fields_text(fields: &[(&str, String)]) -> String {
    let key_width = fields
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0)
        + 1;
    let mut out = String::new();
    for (key, value) in fields {
        let key = if key.is_empty() {
            String::new()
        } else {
            format!("{key}:")
        };
        out.push_str(&format!("{key:<key_width$} {value}\n"));
    }
    out
}

// ---------------------------------------------------------------------------
// jobs / job describe / checkpoints / logs
// ---------------------------------------------------------------------------

pub fn jobs_text(jobs: &[v1::Job]) -> String {
    if jobs.is_empty() {
        return "No jobs.\n".to_owned();
    }
    let mut table = new_table(&[
        "NAME",
        "STATE",
        "GEN",
        "WORLD",
        "NODES",
        "STEP",
        "TOK/S",
        "MFU",
        "CHECKPOINT",
        "RESTARTS",
        "REASON",
    ]);
    for j in jobs {
        table.add_row(vec![
            or_none(&j.name),
            or_none(&j.state),
            j.generation.to_string(),
            j.world_size.to_string(),
            format!("{}/{}", j.nodes.len(), j.desired_nodes),
            opt(j.step, |s| s.to_string()),
            opt(j.tokens_per_s, si),
            opt(j.mfu, percent),
            opt(j.checkpoint.as_ref(), |c| c.step.to_string()),
            j.restarts.to_string(),
            truncate(&or_none(&j.reason), REASON_WIDTH),
        ]);
    }
    finish(table)
}

/// Everything about one job: its state and why, where it runs (nodes in
/// rank order: node rank 0 holds `MASTER_ADDR`), where it would resume
/// from, and the spec as submitted.
pub fn job_text(j: &v1::Job, now_ms: i64) -> String {
    let when = |ms: i64| {
        if ms <= 0 {
            NONE.to_owned()
        } else {
            format!("{} ({})", timestamp(ms), ago(now_ms, ms))
        }
    };
    let fields: Vec<(&str, String)> = vec![
        ("Job", or_none(&j.name)),
        ("State", or_none(&j.state)),
        ("Reason", or_none(&j.reason)),
        ("Priority", or_none(&j.priority)),
        ("Generation", j.generation.to_string()),
        ("World size", j.world_size.to_string()),
        (
            "Nodes",
            format!(
                "{} of {} desired (min {})",
                j.nodes.len(),
                j.desired_nodes,
                j.min_nodes
            ),
        ),
        ("Step", opt(j.step, |s| s.to_string())),
        ("Tokens/s", opt(j.tokens_per_s, si)),
        ("MFU", opt(j.mfu, percent)),
        ("Rollbacks", j.rollbacks.to_string()),
        (
            "Checkpoint",
            opt(j.checkpoint.as_ref(), |c| {
                format!("step {} at {}", c.step, or_none(&c.path))
            }),
        ),
        ("Restarts", j.restarts.to_string()),
        ("Submitted", when(j.submitted_at_unix_ms)),
    ];
    let mut out = fields_text(&fields);
    out.push('\n');
    if j.nodes.is_empty() {
        out.push_str("No nodes assigned.\n");
    } else {
        // Per-node figures only once the detectors have some: a job that
        // has not reported yet keeps the plain rank table.
        let mut table = if j.node_stats.is_empty() {
            new_table(&["NODE RANK", "NODE"])
        } else {
            new_table(&[
                "NODE RANK",
                "NODE",
                "TOKENS/S",
                "STEP TIME",
                "SLOWDOWN",
                "STRAGGLER",
            ])
        };
        for (rank, node) in j.nodes.iter().enumerate() {
            let mut row = vec![rank.to_string(), or_none(node)];
            if !j.node_stats.is_empty() {
                let stats = j.node_stats.iter().find(|s| &s.node == node);
                row.extend([
                    opt(stats.and_then(|s| s.tokens_per_s), si),
                    opt(stats.and_then(|s| s.step_time_s), |t| format!("{t:.3}s")),
                    opt(stats.and_then(|s| s.slowdown), |f| format!("{f:.2}x")),
                    if stats.is_some_and(|s| s.straggler) {
                        "yes".to_owned()
                    } else {
                        NONE.to_owned()
                    },
                ]);
            }
            table.add_row(row);
        }
        out.push_str(&finish(table));
    }
    out.push('\n');
    if j.spec_toml.trim().is_empty() {
        out.push_str("Spec: -\n");
    } else {
        // Indented so the spec stands apart from the fields above it; kept
        // otherwise as submitted, so it can be copied back into a file. Only
        // control characters go (tabs stay): a spec is someone else's text,
        // and escape sequences in it must not drive this terminal.
        out.push_str("Spec:\n");
        for line in j.spec_toml.trim_end().lines() {
            let line: String = line
                .chars()
                .filter(|c| *c == '\t' || !c.is_control())
                .collect();
            let line = line.trim_end();
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}

/// `checkpoints` must be in display order already (see [`oldest_checkpoint_first`]).
pub fn checkpoints_text(job: &str, checkpoints: &[v1::Checkpoint]) -> String {
    if checkpoints.is_empty() {
        return format!("No complete checkpoints for job {job}.\n");
    }
    let mut table = new_table(&["STEP", "PATH"]);
    for c in checkpoints {
        table.add_row(vec![c.step.to_string(), or_none(&c.path)]);
    }
    finish(table)
}

/// The log text as the agent read it. Only a missing final newline is added,
/// so the shell prompt does not end up glued to the last line.
pub fn logs_text(r: &v1::LogResponse) -> String {
    let mut text = r.text.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// `job NAME submitted` when the job was created; otherwise the server's
/// explanation (e.g. that the same spec is already running).
pub fn job_submit_text(r: &v1::JobResponse) -> String {
    let name = r.job.as_ref().map(|j| one_line(&j.name));
    let line = match (r.changed, name) {
        (true, Some(name)) if !name.is_empty() => format!("job {name} submitted"),
        _ if !r.message.trim().is_empty() => one_line(&r.message),
        (true, _) => "job submitted".to_owned(),
        (false, _) => "nothing changed".to_owned(),
    };
    line + "\n"
}

pub fn job_stop_text(name: &str, reason: Option<&str>, r: &v1::JobResponse) -> String {
    let line = if r.changed {
        match reason {
            Some(reason) => format!("job {name} stopped: {}", one_line(reason)),
            None => format!("job {name} stopped"),
        }
    } else if !r.message.trim().is_empty() {
        one_line(&r.message)
    } else {
        format!("job {name} was not running; nothing changed")
    };
    line + "\n"
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

/// `supctl certs list`: soonest expiry first, so what needs renewing leads.
pub fn certs_table(listed: &[crate::certs::Listed]) -> String {
    let mut rows: Vec<&crate::certs::Listed> = listed.iter().collect();
    rows.sort_by_key(|l| (l.days_left, l.file.clone()));
    let mut table = new_table(&[
        "FILE",
        "IDENTITY",
        "EXPIRES",
        "DAYS LEFT",
        "REVOKED",
        "SERIAL",
    ]);
    for l in rows {
        table.add_row(vec![
            l.file.clone(),
            l.identity.clone(),
            l.not_after.clone(),
            if l.days_left < 0 {
                "EXPIRED".to_owned()
            } else {
                l.days_left.to_string()
            },
            if l.revoked { "yes" } else { "no" }.to_owned(),
            l.serial.clone(),
        ]);
    }
    finish(table)
}

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

    fn job(name: &str, state: &str) -> v1::Job {
        v1::Job {
            name: name.into(),
            state: state.into(),
            generation: 3,
            world_size: 8,
            nodes: vec!["gpu-node-001".into(), "gpu-node-005".into()],
            step: Some(1200),
            checkpoint: Some(v1::Checkpoint {
                step: 1000,
                path: "/mnt/ckpt/llm/step-1000".into(),
            }),
            restarts: 2,
            desired_nodes: 4,
            min_nodes: 2,
            priority: "normal".into(),
            submitted_at_unix_ms: NOW - 600_000,
            tokens_per_s: Some(12_345.0),
            mfu: Some(0.415),
            ..Default::default()
        }
    }

    /// The lines under "Needs attention:".
    fn attention(text: &str) -> Vec<&str> {
        text.lines()
            .skip_while(|l| *l != "Needs attention:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn jobs_table_shows_one_row_per_job_with_dashes_for_unknowns() {
        let mut fresh = job("tiny", "pending");
        fresh.nodes.clear();
        fresh.step = None;
        fresh.checkpoint = None;
        fresh.restarts = 0;
        fresh.generation = 0;
        fresh.world_size = 0;
        fresh.tokens_per_s = None;
        fresh.mfu = None;
        fresh.reason = "waiting for 2 nodes, 1 healthy".into();
        let text = jobs_text(&[job("llm-7b", "running"), fresh]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "STATE",
                "GEN",
                "WORLD",
                "NODES",
                "STEP",
                "TOK/S",
                "MFU",
                "CHECKPOINT",
                "RESTARTS",
                "REASON"
            ]
        );
        assert_eq!(
            row(&text, "llm-7b"),
            ["llm-7b", "running", "3", "8", "2/4", "1200", "12.3k", "41.5%", "1000", "2", "-"]
        );
        assert_eq!(
            row(&text, "tiny"),
            [
                "tiny",
                "pending",
                "0",
                "0",
                "0/4",
                "-",
                "-",
                "-",
                "-",
                "0",
                "waiting for 2 nodes, 1 healthy"
            ]
        );
        assert_eq!(jobs_text(&[]), "No jobs.\n");
    }

    #[test]
    fn jobs_table_truncates_long_reasons() {
        let mut j = job("a", "failed");
        j.reason = "r".repeat(100);
        let text = jobs_text(&[j]);
        let reason = row(&text, "a")[10];
        assert_eq!(reason.chars().count(), REASON_WIDTH);
        assert!(reason.ends_with("..."));
    }

    #[test]
    fn jobs_json_is_an_array_of_job_views() {
        let mut fresh = job("tiny", "pending");
        fresh.checkpoint = None;
        fresh.step = None;
        let text = jobs_json(&[job("llm-7b", "running"), fresh]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["name"], "llm-7b");
        assert_eq!(arr[0]["state"], "running");
        assert_eq!(arr[0]["generation"], 3);
        assert_eq!(arr[0]["world_size"], 8);
        assert_eq!(
            arr[0]["nodes"],
            serde_json::json!(["gpu-node-001", "gpu-node-005"])
        );
        assert_eq!(arr[0]["step"], 1200);
        assert_eq!(
            arr[0]["checkpoint"],
            serde_json::json!({"path": "/mnt/ckpt/llm/step-1000", "step": 1000})
        );
        assert_eq!(arr[0]["restarts"], 2);
        assert_eq!(arr[0]["reason"], serde_json::Value::Null);
        assert_eq!(arr[1]["checkpoint"], serde_json::Value::Null);
        assert_eq!(arr[1]["step"], serde_json::Value::Null);
        assert_eq!(jobs_json(&[]).unwrap(), "[]\n");
    }

    fn troubled_cluster() -> v1::ClusterStatus {
        let mut s = cluster();
        let mut failed = job("llm-70b-finetune", "failed");
        failed.reason = "restart budget exhausted (20 restarts)".into();
        let mut recovering = job("llm-7b", "recovering");
        recovering.reason = "node gpu-node-002 cordoned: xid 79".into();
        let pending = job("eval", "pending");
        s.jobs = vec![
            job("llama-70b", "running"),
            pending,
            recovering,
            failed,
            job("done", "succeeded"),
        ];
        s.spares_target = 2;
        s.breaker = Some(v1::Breaker {
            open: true,
            reason: "4 of 5 nodes in 60s".into(),
            since_unix_ms: NOW - 120_000,
        });
        s
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
            breaker: Some(v1::Breaker {
                open: false,
                reason: "reset by alice".into(),
                since_unix_ms: NOW,
            }),
            jobs: vec![job("llm", "running")],
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

    fn xid(gpu: u32, code: u32, ago_ms: i64, source: &str) -> v1::XidEvent {
        v1::XidEvent {
            gpu_index: gpu,
            xid: code,
            at_unix_ms: NOW - ago_ms,
            source: source.into(),
            ..Default::default()
        }
    }

    #[test]
    fn node_details_explain_unhealthy_gpus_and_list_recent_xids() {
        let mut n = node("n1", v1::NodeState::Suspect);
        n.gpus.truncate(4);
        n.gpus[0].recovery_action = v1::RecoveryAction::None as i32;
        n.gpus[3].health = v1::GpuHealth::Failed as i32;
        n.gpus[3].health_reason =
            "Xid 79 (GPU has fallen off the bus): power-cycle the node".into();
        n.gpus[3].recovery_action = v1::RecoveryAction::NodeReboot as i32;
        n.gpus[3].evidence = vec!["xid 79 from nvml".into(), "gpu lost\nby nvml".into()];
        n.gpus[3].recent_xids = vec![xid(3, 79, 5_000, "nvml")];
        n.gpus[1].health = v1::GpuHealth::Degraded as i32;
        n.gpus[1].health_reason = "PCIe x8 of x16".into();
        let mut app = xid(1, 13, 200_000, "kernel_log");
        app.application = true;
        app.detail = "pid=1234".into();
        n.gpus[1].recent_xids = vec![app];
        let text = node_text(&n, NOW);

        assert!(!text.contains("GPU 0:"), "healthy GPU listed: {text}");
        assert!(!text.contains("GPU 2:"), "healthy GPU listed: {text}");
        let gpu3 = text.split("GPU 3: failed\n").nth(1).expect("GPU 3 section");
        let gpu3: Vec<&str> = gpu3.lines().take(4).collect();
        assert_eq!(
            gpu3,
            [
                "  Reason:          Xid 79 (GPU has fallen off the bus): power-cycle the node",
                "  Recovery action: node_reboot",
                "  Evidence:        xid 79 from nvml",
                "                   gpu lost by nvml",
            ],
            "{text}"
        );
        assert!(
            text.contains("GPU 1: degraded\n  Reason: PCIe x8 of x16\n"),
            "{text}"
        );
        // Xids from all GPUs, oldest first whatever GPU order they came in.
        let xids: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Recent Xids"))
            .skip(2)
            .collect();
        assert_eq!(xids.len(), 2, "{text}");
        let cells = |l: &str| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(xids[0]),
            [
                "1",
                "13",
                "3m20s ago",
                "kernel_log",
                "application Xid: pid=1234"
            ]
        );
        assert_eq!(cells(xids[1]), ["3", "79", "5s ago", "nvml", "-"]);
    }

    #[test]
    fn node_details_of_a_healthy_node_say_there_are_no_xids() {
        let text = node_text(&node("n1", v1::NodeState::Ready), NOW);
        assert!(!text.contains("Reason:"), "{text}");
        assert!(text.ends_with("\nNo recent Xids.\n"), "{text}");
    }

    #[test]
    fn job_details_show_nodes_in_rank_order_checkpoint_and_spec() {
        let mut j = job("llm-7b", "recovering");
        j.nodes = vec!["n3".into(), "n1".into(), "n2".into()];
        j.reason = "node n4 cordoned: xid 79".into();
        j.spec_toml =
            "name = \"llm-7b\"\r\nnodes = 4\n\n[env]\nNCCL_DEBUG = \"WARN\u{1b}[2J\"\n".into();
        let text = job_text(&j, NOW);
        assert!(text.starts_with("Job:        llm-7b\n"), "{text}");
        for line in [
            "State:      recovering",
            "Reason:     node n4 cordoned: xid 79",
            "Priority:   normal",
            "Generation: 3",
            "World size: 8",
            "Nodes:      3 of 4 desired (min 2)",
            "Step:       1200",
            "Checkpoint: step 1000 at /mnt/ckpt/llm/step-1000",
            "Restarts:   2",
            "Submitted:  2027-01-15T07:50:00Z (10m ago)",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let ranks: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE RANK"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(ranks, [["0", "n3"], ["1", "n1"], ["2", "n2"]], "{text}");
        assert!(
            text.ends_with(
                "Spec:\n  name = \"llm-7b\"\n  nodes = 4\n\n  [env]\n  NCCL_DEBUG = \"WARN[2J\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn job_details_show_throughput_mfu_and_stragglers() {
        let mut j = job("llm", "running");
        j.rollbacks = 1;
        j.node_stats = vec![
            v1::JobNodeStats {
                node: "gpu-node-001".into(),
                step_time_s: Some(0.4),
                slowdown: Some(1.0),
                straggler: false,
                tokens_per_s: Some(6_172.5),
            },
            v1::JobNodeStats {
                node: "gpu-node-005".into(),
                step_time_s: Some(0.6),
                slowdown: Some(1.5),
                straggler: true,
                tokens_per_s: None,
            },
        ];
        let text = job_text(&j, NOW);
        for line in ["Tokens/s:   12.3k", "MFU:        41.5%", "Rollbacks:  1"] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(
            row(&text, "0"),
            ["0", "gpu-node-001", "6.2k", "0.400s", "1.00x", "-"],
            "{text}"
        );
        assert_eq!(
            row(&text, "1"),
            ["1", "gpu-node-005", "-", "0.600s", "1.50x", "yes"],
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&job_json(&j).expect("json")).expect("valid");
        assert_eq!(json["tokens_per_s"], 12_345.0);
        assert_eq!(json["node_stats"][0]["tokens_per_s"], 6_172.5);
        assert_eq!(json["node_stats"][1]["straggler"], true);
    }

    #[test]
    fn job_details_of_a_fresh_job_use_dashes() {
        let j = v1::Job {
            name: "new".into(),
            state: "pending".into(),
            desired_nodes: 2,
            min_nodes: 1,
            ..Default::default()
        };
        let text = job_text(&j, NOW);
        for line in [
            "Reason:     -",
            "Step:       -",
            "Checkpoint: -",
            "Submitted:  -",
            "No nodes assigned.",
            "Spec: -",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn job_json_is_the_shared_job_view() {
        let v: serde_json::Value =
            serde_json::from_str(&job_json(&job("llm-7b", "running")).unwrap()).unwrap();
        assert_eq!(v["name"], "llm-7b");
        assert_eq!(v["desired_nodes"], 4);
        assert_eq!(v["min_nodes"], 2);
        assert_eq!(v["priority"], "normal");
        assert_eq!(v["submitted_at"], "2027-01-15T07:50:00.000Z");
        assert_eq!(v["checkpoint"]["step"], 1000);
    }

    #[test]
    fn checkpoints_are_listed_oldest_first() {
        let cps = oldest_checkpoint_first(vec![
            v1::Checkpoint {
                step: 200,
                path: "/ckpt/step-200".into(),
            },
            v1::Checkpoint {
                step: 100,
                path: "/ckpt/step-100".into(),
            },
        ]);
        let text = checkpoints_text("llm", &cps);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines,
            [
                ["STEP", "PATH"],
                ["100", "/ckpt/step-100"],
                ["200", "/ckpt/step-200"]
            ]
        );
        let v: serde_json::Value = serde_json::from_str(&checkpoints_json(&cps).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"path": "/ckpt/step-100", "step": 100},
                {"path": "/ckpt/step-200", "step": 200}
            ])
        );
        assert_eq!(
            checkpoints_text("llm", &[]),
            "No complete checkpoints for job llm.\n"
        );
        assert_eq!(checkpoints_json(&[]).unwrap(), "[]\n");
    }

    #[test]
    fn submit_and_stop_messages() {
        let created = v1::JobResponse {
            job: Some(job("llm-7b", "pending")),
            changed: true,
            message: "accepted".into(),
        };
        assert_eq!(job_submit_text(&created), "job llm-7b submitted\n");
        let same = v1::JobResponse {
            job: Some(job("llm-7b", "running")),
            changed: false,
            message: "job 'llm-7b' already runs this spec".into(),
        };
        assert_eq!(
            job_submit_text(&same),
            "job 'llm-7b' already runs this spec\n"
        );
        assert_eq!(
            job_submit_text(&v1::JobResponse::default()),
            "nothing changed\n"
        );

        let stopped = v1::JobResponse {
            changed: true,
            ..Default::default()
        };
        assert_eq!(
            job_stop_text("llm-7b", Some("done\nfor today"), &stopped),
            "job llm-7b stopped: done for today\n"
        );
        assert_eq!(
            job_stop_text("llm-7b", None, &stopped),
            "job llm-7b stopped\n"
        );
        assert_eq!(
            job_stop_text("llm-7b", None, &v1::JobResponse::default()),
            "job llm-7b was not running; nothing changed\n"
        );
    }

    #[test]
    fn job_outcome_json_has_changed_message_and_job() {
        let r = v1::JobResponse {
            job: Some(job("llm-7b", "pending")),
            changed: true,
            message: "accepted".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&job_outcome_json(&r).unwrap()).unwrap();
        assert_eq!(v["changed"], true);
        assert_eq!(v["message"], "accepted");
        assert_eq!(v["job"]["name"], "llm-7b");
        assert_eq!(v["job"]["state"], "pending");
        let none: serde_json::Value =
            serde_json::from_str(&job_outcome_json(&v1::JobResponse::default()).unwrap()).unwrap();
        assert_eq!(none["job"], serde_json::Value::Null);
    }

    #[test]
    fn drill_breaker_and_logs_output() {
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

        let log = |text: &str| v1::LogResponse {
            text: text.into(),
            ..Default::default()
        };
        assert_eq!(logs_text(&log("a\nb")), "a\nb\n");
        assert_eq!(logs_text(&log("a\n\tb\n")), "a\n\tb\n");
        assert_eq!(logs_text(&log("")), "");
        let v: serde_json::Value =
            serde_json::from_str(&logs_json("llm", 3, &log("a\n")).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"job": "llm", "rank": 3, "text": "a\n"})
        );
    }
}
