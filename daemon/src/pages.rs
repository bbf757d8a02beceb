//! Read answers that stay bounded whatever the cluster's size.
//!
//! At 8,192 nodes the whole cluster in one message is ~6.8 MB of protobuf
//! (past tonic's 4 MiB default) and several times that as JSON, so no read
//! answer carries a list that grows with the cluster:
//!
//! - `GetStatus` / `/api/v1/status` is a summary ([`status_summary`]): counts
//!   by state, then capped lists — nodes that need attention first, jobs,
//!   spare ids — each with a count of what it left out. The caps and byte
//!   budgets below keep it under [`MAX_ANSWER_BYTES`], as JSON or protobuf.
//! - `GetJob` is one job ([`job_answer`]): at most 1,024 of its node ids
//!   and node stats, with `node_count` telling them all.
//! - `ListNodes` / `/api/v1/nodes` pages through the nodes in id order,
//!   filtered by state and job ([`NodeQuery`], [`page`]). The continue token
//!   names the last node sent, so a walk never repeats or skips a node that
//!   exists throughout it, however many join or leave between pages (a
//!   position or an offset would shift).
//! - `ListJobs` / `/api/v1/jobs` pages through the jobs in name order,
//!   filtered by state ([`JobQuery`], [`job_page`]), each cut down as the
//!   status cuts it ([`job_summary`]), with the same tokens and page sizes.
//! - `ListEvents` / `/api/v1/events` answers at most a page of events
//!   ([`events_page`]); going forward from a sequence number is the
//!   continuation.
//!
//! Sizes are measured, not assumed: a node's size depends on its GPU count,
//! its Xids and the length of its reasons, so every page also stops at a
//! byte budget.

use sup_proto::json::{count_nodes, node_state_name, JobView, NodeView};
use sup_proto::v1;

use crate::cluster::{Cluster, NodeEntry};

/// The most any read answer (status, a page of nodes or events) takes, as
/// protobuf or as JSON.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Nodes in a status: the ones that need attention first.
pub const STATUS_MAX_NODES: usize = 100;
/// ... and at most this many bytes of them (as JSON, the larger encoding).
pub const STATUS_NODE_BYTES: usize = 512 * 1024;
/// Jobs in a status: unfinished ones first, then the newest.
pub const STATUS_MAX_JOBS: usize = 100;
pub const STATUS_JOB_BYTES: usize = 320 * 1024;
/// Of each job in a status: node ids and node stats (stragglers first).
pub const STATUS_MAX_JOB_NODES: usize = 32;
/// Of a job in a `GetJob` answer: node ids and node stats (stragglers
/// first), and at most this many bytes of the job (the spec is at most
/// 64 KiB).
pub const GET_JOB_MAX_NODES: usize = 1024;
pub const GET_JOB_BYTES: usize = MAX_ANSWER_BYTES - 64 * 1024;
/// Spare ids (and lent spare ids) in a status.
pub const STATUS_MAX_SPARES: usize = 64;

/// Nodes in a page when the request says 0: ~430 KB as supctl's indented
/// JSON for 8-GPU nodes with readings (measured at 16,384 nodes), so what an
/// operator gets stays well under 1 MiB too.
pub const DEFAULT_PAGE_NODES: usize = 100;
/// The most nodes a page holds, whatever the request says.
pub const MAX_PAGE_NODES: usize = 1000;
/// The nodes' share of a page; the rest is room for the envelope.
pub const PAGE_BYTES: usize = MAX_ANSWER_BYTES - 64 * 1024;

/// Events in an answer when the request says 0.
pub const DEFAULT_EVENTS: usize = 1000;
/// The most events an answer holds, whatever the request says.
pub const MAX_EVENTS: usize = 5000;

/// Longest continue token taken: supd's are under 200 characters (a node id
/// is at most 128 bytes, a job name 63), so anything longer was not issued
/// here.
const MAX_TOKEN_LEN: usize = 512;
const TOKEN_VERSION: u8 = 1;

/// A message's size as a repeated field of its parent: tag, length, body.
pub fn proto_len(m: &impl prost::Message) -> usize {
    let body = m.encoded_len();
    1 + prost::encoding::encoded_len_varint(body as u64) + body
}

/// A node's size in the larger of its two encodings (JSON, in practice:
/// its keys are spelled out), plus a separator.
fn node_bytes(n: &v1::Node) -> usize {
    let json = serde_json::to_vec(&NodeView::from(n)).map_or(usize::MAX / 4, |v| v.len() + 1);
    json.max(proto_len(n))
}

fn job_bytes(j: &v1::Job) -> usize {
    let json = serde_json::to_vec(&JobView::from(j)).map_or(usize::MAX / 4, |v| v.len() + 1);
    json.max(proto_len(j))
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// How urgently a node needs an operator: lower first. Unreachable and
/// suspect nodes may be hurting a job now; cordoned ones wait for repair;
/// Slurm-held, draining and joining ones are worth a look; ready last.
fn attention_rank(n: &v1::Node) -> usize {
    match node_state_name(n.state) {
        "unreachable" => 0,
        "suspect" => 1,
        "cordoned" => 2,
        _ if n.slurm.as_ref().is_some_and(|s| s.unavailable) => 3,
        "draining" => 4,
        "joining" => 5,
        _ => 6,
    }
}

const RANKS: usize = 7;

fn finished(job: &v1::Job) -> bool {
    matches!(job.state.as_str(), "succeeded" | "failed" | "stopped")
}

/// A job as a status shows it: its first node ids in rank order, its
/// stragglers (then its slowest nodes) among the node stats, no spec.
pub fn job_summary(j: &v1::Job) -> v1::Job {
    let mut job = capped_job(j, STATUS_MAX_JOB_NODES);
    job.spec_toml.clear();
    job
}

/// A job as `GetJob` answers it: its spec, at most [`GET_JOB_MAX_NODES`]
/// node ids (the first in rank order) and as many node stats (stragglers,
/// then the slowest nodes), fewer if that is still past
/// [`GET_JOB_BYTES`] (long node ids); `node_count` has them all. A job of
/// up to 1,024 nodes is answered whole.
pub fn job_answer(j: &v1::Job) -> v1::Job {
    let mut cap = GET_JOB_MAX_NODES;
    loop {
        let job = capped_job(j, cap);
        if cap <= STATUS_MAX_JOB_NODES || job_bytes(&job) <= GET_JOB_BYTES {
            return job;
        }
        cap /= 2;
    }
}

/// `j` with at most `cap` node ids (the first, in rank order) and `cap`
/// node stats (stragglers first, then the slowest; kept in rank order).
fn capped_job(j: &v1::Job, cap: usize) -> v1::Job {
    let mut job = j.clone();
    job.node_count = j.node_count.max(count(j.nodes.len()));
    job.nodes.truncate(cap);
    if j.node_stats.len() > cap {
        let mut order: Vec<usize> = (0..j.node_stats.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&j.node_stats[a], &j.node_stats[b]);
            y.straggler.cmp(&x.straggler).then(
                y.slowdown
                    .unwrap_or(0.0)
                    .total_cmp(&x.slowdown.unwrap_or(0.0)),
            )
        });
        order.truncate(cap);
        // Shown in the job's own (rank) order.
        order.sort_unstable();
        job.node_stats = order.into_iter().map(|i| j.node_stats[i].clone()).collect();
    }
    job
}

/// The bounded status answer made from supd's whole picture (`full` lists
/// every node and job). See `ClusterStatus` in sup.proto for the contract.
pub fn status_summary(cluster: &Cluster) -> v1::ClusterStatus {
    let full = &cluster.status;
    // Nodes: take by rank, each rank in id order, until a cap is reached;
    // a cluster of up to STATUS_MAX_NODES ordinary nodes is listed whole.
    let mut by_rank: [Vec<&NodeEntry>; RANKS] = Default::default();
    for n in &cluster.nodes {
        by_rank[attention_rank(n.fixed())].push(n);
    }
    let mut nodes: Vec<v1::Node> = Vec::new();
    let mut bytes = 0;
    'pick: for n in by_rank.iter().flatten() {
        let node = n.to_node();
        let size = node_bytes(&node);
        if nodes.len() == STATUS_MAX_NODES || bytes + size > STATUS_NODE_BYTES {
            break 'pick;
        }
        bytes += size;
        nodes.push(node);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));

    // Jobs: unfinished first, then the most recently submitted; shown in
    // supd's order (by name).
    let mut order: Vec<usize> = (0..full.jobs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&full.jobs[a], &full.jobs[b]);
        finished(x)
            .cmp(&finished(y))
            .then(y.submitted_at_unix_ms.cmp(&x.submitted_at_unix_ms))
    });
    let mut picked: Vec<(usize, v1::Job)> = Vec::new();
    let mut bytes = 0;
    for i in order {
        let job = job_summary(&full.jobs[i]);
        let size = job_bytes(&job);
        if picked.len() == STATUS_MAX_JOBS || bytes + size > STATUS_JOB_BYTES {
            break;
        }
        bytes += size;
        picked.push((i, job));
    }
    picked.sort_by_key(|(i, _)| *i);

    let capped = |ids: &[String]| ids.iter().take(STATUS_MAX_SPARES).cloned().collect();
    v1::ClusterStatus {
        nodes_omitted: count(cluster.nodes.len() - nodes.len()),
        nodes,
        jobs_omitted: count(full.jobs.len() - picked.len()),
        jobs: picked.into_iter().map(|(_, j)| j).collect(),
        spares: capped(&full.spares),
        spare_count: count(full.spares.len()),
        spares_lent: capped(&full.spares_lent),
        spares_lent_count: count(full.spares_lent.len()),
        spares_target: full.spares_target,
        breaker: full.breaker.clone(),
        node_counts: Some(count_nodes(cluster.fixed_nodes())),
        supervisor: full.supervisor.clone(),
    }
}

/// Which nodes a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFilter {
    /// Sorted, no repeats; empty: every state.
    states: Vec<v1::NodeState>,
    /// Empty: any job (or none).
    job: String,
}

impl NodeFilter {
    /// Refuses a state number that is no state (a newer client's, or
    /// garbage), naming it.
    pub fn new(states: &[i32], job: &str) -> Result<NodeFilter, String> {
        let mut parsed = Vec::with_capacity(states.len());
        for &s in states {
            match v1::NodeState::try_from(s) {
                Ok(v1::NodeState::Unspecified) | Err(_) => {
                    return Err(format!(
                        "unknown node state {s} in the state filter; use one of {}",
                        sup_proto::json::NODE_STATE_NAMES.join(", ")
                    ))
                }
                Ok(state) => parsed.push(state),
            }
        }
        parsed.sort_unstable();
        parsed.dedup();
        Ok(NodeFilter {
            states: parsed,
            job: job.trim().to_owned(),
        })
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn matches(&self, n: &v1::Node) -> bool {
        (self.states.is_empty() || self.states.iter().any(|s| *s as i32 == n.state))
            && (self.job.is_empty() || n.job == self.job)
    }

    /// Binds a token to the filters it was issued for.
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        for s in &self.states {
            h.eat(&(*s as i32).to_le_bytes());
        }
        h.eat(&[0xff]);
        h.eat(self.job.as_bytes());
        h.0
    }
}

/// FNV-1a: stable across builds and versions, unlike std's hasher, so a
/// token outlives a restart or an upgrade of supd.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn eat(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A page size from a request's limit: 0 is [`DEFAULT_PAGE_NODES`], more
/// than [`MAX_PAGE_NODES`] is cut to it (the client follows the token
/// either way). Nodes and jobs share them.
fn page_limit(limit: u32) -> usize {
    match limit as usize {
        0 => DEFAULT_PAGE_NODES,
        n => n.min(MAX_PAGE_NODES),
    }
}

/// Where a walk goes on from: `None` for the first page.
fn parse_after(token: &str, fingerprint: u64) -> Result<Option<String>, String> {
    match token.trim() {
        "" => Ok(None),
        t => decode_token(t, fingerprint).map(Some),
    }
}

/// A parsed `ListNodes` request: filters, page size and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeQuery {
    pub filter: NodeFilter,
    pub limit: usize,
    /// The last node id of the previous page.
    pub after: Option<String>,
}

impl NodeQuery {
    /// Bad input (an unknown state, a garbled or foreign token) is refused
    /// with a message that names it. A limit above [`MAX_PAGE_NODES`] is
    /// cut to it: the client follows the token either way.
    pub fn parse(states: &[i32], job: &str, limit: u32, token: &str) -> Result<NodeQuery, String> {
        let filter = NodeFilter::new(states, job)?;
        let limit = page_limit(limit);
        let after = parse_after(token, filter.fingerprint())?;
        Ok(NodeQuery {
            filter,
            limit,
            after,
        })
    }
}

/// One page of nodes, in id order.
#[derive(Debug)]
pub struct Page {
    pub nodes: Vec<v1::Node>,
    /// For the next page; `None` on the last one.
    pub next: Option<String>,
    /// Matching nodes after this page.
    pub remaining: usize,
}

/// The page `query` asks for out of `nodes`: at most `query.limit` nodes
/// and `budget` bytes as `size` measures them (at least one node, so that a
/// walk always moves on). `nodes` comes from a snapshot (sorted by id, as
/// supd keeps them; sorted here if not).
pub fn page(
    nodes: &[NodeEntry],
    query: &NodeQuery,
    mut size: impl FnMut(&v1::Node) -> usize,
    budget: usize,
) -> Page {
    let walked = walk(
        nodes,
        NodeEntry::id,
        |n| query.filter.matches(n.fixed()),
        query.limit,
        query.after.as_deref(),
        query.filter.fingerprint(),
        |n| size(&n.to_node()),
        budget,
    );
    Page {
        nodes: walked.items.into_iter().map(NodeEntry::to_node).collect(),
        next: walked.next,
        remaining: walked.remaining,
    }
}

/// Which jobs a listing wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFilter {
    /// Sorted, no repeats; empty: every state.
    states: Vec<&'static str>,
}

impl JobFilter {
    /// Refuses a state that is no job state, naming it.
    pub fn new(states: &[String]) -> Result<JobFilter, String> {
        let mut parsed = Vec::with_capacity(states.len());
        for s in states {
            parsed.push(sup_proto::json::job_state_from_name(s)?);
        }
        parsed.sort_unstable();
        parsed.dedup();
        Ok(JobFilter { states: parsed })
    }

    pub fn matches(&self, j: &v1::Job) -> bool {
        self.states.is_empty() || self.states.contains(&j.state.as_str())
    }

    /// Binds a token to the filters it was issued for; "jobs" first, so a
    /// node listing's token is refused here and the other way round.
    fn fingerprint(&self) -> u64 {
        let mut h = Fnv::new();
        h.eat(b"jobs\xff");
        for s in &self.states {
            h.eat(s.as_bytes());
            h.eat(&[0xff]);
        }
        h.0
    }
}

/// A parsed `ListJobs` request: filters, page size and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQuery {
    pub filter: JobFilter,
    pub limit: usize,
    /// The last job name of the previous page.
    pub after: Option<String>,
}

impl JobQuery {
    /// As [`NodeQuery::parse`]: an unknown state or a garbled or foreign
    /// token is refused, naming it; the limit is as for nodes.
    pub fn parse(states: &[String], limit: u32, token: &str) -> Result<JobQuery, String> {
        let filter = JobFilter::new(states)?;
        let limit = page_limit(limit);
        let after = parse_after(token, filter.fingerprint())?;
        Ok(JobQuery {
            filter,
            limit,
            after,
        })
    }
}

/// One page of jobs in name order, each cut down as a status shows it
/// ([`job_summary`]).
#[derive(Debug)]
pub struct JobPage {
    pub jobs: Vec<v1::Job>,
    /// For the next page; `None` on the last one.
    pub next: Option<String>,
    /// Matching jobs after this page.
    pub remaining: usize,
}

/// The page `query` asks for out of `jobs` (supd's, by name; sorted here if
/// not): at most `query.limit` jobs and `budget` bytes of their summaries
/// as `size` measures them, one job at least.
pub fn job_page(
    jobs: &[v1::Job],
    query: &JobQuery,
    mut size: impl FnMut(&v1::Job) -> usize,
    budget: usize,
) -> JobPage {
    let walked = walk(
        jobs,
        |j| &j.name,
        |j| query.filter.matches(j),
        query.limit,
        query.after.as_deref(),
        query.filter.fingerprint(),
        |j| size(&job_summary(j)),
        budget,
    );
    JobPage {
        jobs: walked.items.into_iter().map(job_summary).collect(),
        next: walked.next,
        remaining: walked.remaining,
    }
}

/// A page of any listing walked by a unique key.
struct Walked<'a, T> {
    items: Vec<&'a T>,
    next: Option<String>,
    remaining: usize,
}

/// The walk behind every listing: the items after `after` in `key` order
/// that `keep` keeps, at most `limit` of them and `budget` bytes as `size`
/// measures them (at least one, so that a walk always moves on). The token
/// names the last key sent, so a walk never repeats or skips an item that
/// exists throughout it, whatever comes or goes between pages.
#[allow(clippy::too_many_arguments)]
fn walk<'a, T>(
    items: &'a [T],
    key: impl Fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
    limit: usize,
    after: Option<&str>,
    fingerprint: u64,
    mut size: impl FnMut(&T) -> usize,
    budget: usize,
) -> Walked<'a, T> {
    let mut sorted: Vec<&T> = items.iter().collect();
    if !sorted.is_sorted_by(|a, b| key(a) <= key(b)) {
        sorted.sort_by(|a, b| key(a).cmp(key(b)));
    }
    let start = after.map_or(0, |after| sorted.partition_point(|t| key(t) <= after));
    let mut matching = sorted[start..].iter().copied().filter(|t| keep(t));
    let mut out = Vec::new();
    let mut used = 0;
    let mut remaining = 0;
    for t in matching.by_ref() {
        let s = size(t);
        if out.len() == limit || (!out.is_empty() && used + s > budget) {
            remaining = 1;
            break;
        }
        used += s;
        out.push(t);
    }
    remaining += matching.count();
    let next = (remaining > 0)
        .then(|| out.last().map(|t| encode_token(fingerprint, key(t))))
        .flatten();
    Walked {
        items: out,
        next,
        remaining,
    }
}

/// One answer of events, oldest first.
#[derive(Debug)]
pub struct EventsPage<'a> {
    pub events: &'a [v1::Event],
    /// Matching events left out (older for a tail, newer from the oldest).
    pub omitted: usize,
}

/// The events after `after_seq` out of `kept` (oldest first, as supd keeps
/// them): the newest `limit` (a tail) or, `from_oldest`, the oldest `limit`
/// (so the last one's seq continues the walk); 0 means
/// [`DEFAULT_EVENTS`], more than [`MAX_EVENTS`] is cut to it, and the
/// answer stops at `budget` bytes as `size` measures them (one event at
/// least).
pub fn events_page<'a>(
    kept: &'a [v1::Event],
    after_seq: u64,
    limit: u32,
    from_oldest: bool,
    mut size: impl FnMut(&v1::Event) -> usize,
    budget: usize,
) -> EventsPage<'a> {
    let limit = match limit as usize {
        0 => DEFAULT_EVENTS,
        n => n.min(MAX_EVENTS),
    };
    let start = kept.partition_point(|e| e.seq <= after_seq);
    let matching = &kept[start..];
    let mut taken = 0;
    let mut used = 0;
    let mut fits = |e: &v1::Event, taken: usize| {
        let s = size(e);
        let ok = taken < limit && (taken == 0 || used + s <= budget);
        if ok {
            used += s;
        }
        ok
    };
    let events = if from_oldest {
        while taken < matching.len() && fits(&matching[taken], taken) {
            taken += 1;
        }
        &matching[..taken]
    } else {
        while taken < matching.len() && fits(&matching[matching.len() - 1 - taken], taken) {
            taken += 1;
        }
        &matching[matching.len() - taken..]
    };
    EventsPage {
        events,
        omitted: matching.len() - taken,
    }
}

/// Opaque to clients: version, the filters' fingerprint, the last key (node
/// id, job name);
/// base64url without padding so it pastes into a shell and a URL as is.
fn encode_token(fingerprint: u64, last_id: &str) -> String {
    let mut raw = Vec::with_capacity(9 + last_id.len());
    raw.push(TOKEN_VERSION);
    raw.extend_from_slice(&fingerprint.to_be_bytes());
    raw.extend_from_slice(last_id.as_bytes());
    base64url(&raw)
}

fn decode_token(token: &str, fingerprint: u64) -> Result<String, String> {
    let shown: String = token.chars().take(24).collect();
    let shown = if shown.len() < token.len() {
        format!("{shown}...")
    } else {
        shown
    };
    let bad = |why: &str| format!("invalid continue token '{shown}': {why}");
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad(&format!(
            "{} characters; supd's are at most {MAX_TOKEN_LEN}",
            token.len()
        )));
    }
    let raw = unbase64url(token).ok_or_else(|| bad("not a token supd issued (not base64url)"))?;
    match raw.first() {
        Some(&TOKEN_VERSION) if raw.len() > 9 => {}
        _ => return Err(bad("not a token supd issued")),
    }
    let mut issued_for = [0u8; 8];
    issued_for.copy_from_slice(&raw[1..9]);
    if u64::from_be_bytes(issued_for) != fingerprint {
        return Err(bad(
            "it was issued for other filters; repeat the query it came from (same filters)",
        ));
    }
    String::from_utf8(raw[9..].to_vec()).map_err(|_| bad("not a token supd issued"))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn base64url(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn unbase64url(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| B64.iter().position(|&d| d == c).map(|v| v as u32);
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= digit(c)? << (18 - 6 * i);
        }
        let whole = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&whole[..chunk.len() - 1]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node as big as a real 8-GPU node gets: readings, evidence and Xids
    /// on every GPU, a cordon with a long reason.
    fn big_node(i: usize, state: v1::NodeState) -> v1::Node {
        v1::Node {
            id: format!("gpu-node-{i:05}"),
            address: format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
            state: state as i32,
            job: "llama-405b".into(),
            hostname: format!("gpu-node-{i:05}.cluster.example.com"),
            agent_version: "0.1.0".into(),
            gpu_backend: "nvml".into(),
            registered_at_unix_ms: 1_700_000_000_000,
            last_seen_unix_ms: 1_700_000_100_000,
            connected: true,
            cordon: (state == v1::NodeState::Cordoned).then(|| v1::Cordon {
                reason: "xid 79: GPU has fallen off the bus; ticket OPS-12345".repeat(3),
                by: "sup".into(),
                at_unix_ms: 1_700_000_050_000,
                validation: String::new(),
            }),
            gpus: (0..8)
                .map(|g| v1::Gpu {
                    index: g,
                    uuid: format!("GPU-{i:08x}-{g:04x}-4a3b-9c1d-0123456789ab"),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    health: v1::GpuHealth::Degraded as i32,
                    pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + g),
                    memory_total_bytes: Some(85_899_345_920),
                    reading: Some(v1::GpuReading {
                        index: g,
                        temperature_c: Some(71.5),
                        power_w: Some(612.25),
                        utilization_gpu_pct: Some(97),
                        utilization_memory_pct: Some(64),
                        sm_clock_mhz: Some(1980),
                        memory_clock_mhz: Some(2619),
                        memory_used_bytes: Some(71_000_000_000),
                    }),
                    health_reason: "clocks throttled: HW slowdown".into(),
                    evidence: vec!["throttle reasons 0x8 for 30s".into(); 3],
                    recent_xids: (0..4)
                        .map(|x| v1::XidEvent {
                            xid: 79 + x,
                            at_unix_ms: 1_700_000_000_000,
                            source: "nvml".into(),
                            detail: "GPU has fallen off the bus".into(),
                            ..Default::default()
                        })
                        .collect(),
                    recovery_action: v1::RecoveryAction::GpuReset as i32,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ids(nodes: &[v1::Node]) -> Vec<String> {
        nodes.iter().map(|n| n.id.clone()).collect()
    }

    fn entries(nodes: &[v1::Node]) -> Vec<NodeEntry> {
        nodes
            .iter()
            .map(|n| NodeEntry::new(n.clone(), None))
            .collect()
    }

    fn small(id: &str, state: v1::NodeState, job: &str) -> v1::Node {
        v1::Node {
            id: id.into(),
            state: state as i32,
            job: job.into(),
            ..Default::default()
        }
    }

    fn query(states: &[v1::NodeState], job: &str, limit: u32, token: &str) -> NodeQuery {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        NodeQuery::parse(&states, job, limit, token).expect("valid query")
    }

    /// The done-when of issue 20: the status of a cluster bigger than any
    /// today (20,000 big nodes, a quarter of them in trouble, one job over
    /// all of them plus 300 small ones) stays under 1 MiB either way.
    #[test]
    fn the_status_of_twenty_thousand_nodes_is_under_one_mebibyte() {
        use prost::Message;
        let states = [
            v1::NodeState::Ready,
            v1::NodeState::Ready,
            v1::NodeState::Cordoned,
            v1::NodeState::Ready,
            v1::NodeState::Unreachable,
            v1::NodeState::Ready,
            v1::NodeState::Suspect,
            v1::NodeState::Ready,
        ];
        let nodes: Vec<v1::Node> = (0..20_000)
            .map(|i| big_node(i, states[i % states.len()]))
            .collect();
        let big_job = v1::Job {
            name: "llama-405b".into(),
            state: "running".into(),
            nodes: nodes.iter().map(|n| n.id.clone()).collect(),
            node_stats: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| v1::JobNodeStats {
                    node: n.id.clone(),
                    step_time_s: Some(1.5),
                    slowdown: Some(1.0 + (i % 100) as f64 / 1000.0),
                    straggler: i % 5000 == 7,
                    tokens_per_s: Some(4096.0),
                })
                .collect(),
            spec_toml: "x".repeat(64 * 1024),
            goodput: Some(v1::JobGoodput::default()),
            submitted_at_unix_ms: 1,
            ..Default::default()
        };
        let mut jobs = vec![big_job];
        jobs.extend((0..300).map(|i| v1::Job {
            name: format!("eval-{i:03}"),
            state: if i % 6 == 0 { "running" } else { "succeeded" }.into(),
            submitted_at_unix_ms: 1000 + i,
            nodes: vec![format!("gpu-node-{i:05}")],
            spec_toml: "y".repeat(4096),
            ..Default::default()
        }));
        let full = v1::ClusterStatus {
            spares: nodes.iter().map(|n| n.id.clone()).collect(),
            spares_lent: nodes.iter().take(5000).map(|n| n.id.clone()).collect(),
            nodes,
            jobs,
            spares_target: 64,
            breaker: Some(v1::Breaker {
                open: true,
                reason: "r".repeat(1000),
                since_unix_ms: 1,
            }),
            ..Default::default()
        };
        let s = status_summary(&Cluster::from_status(full.clone()));
        let proto = s.encoded_len();
        let json = serde_json::to_vec(&sup_proto::json::StatusView::from(&s))
            .expect("json")
            .len();
        println!("status of 20,000 nodes: {proto} bytes as protobuf, {json} as JSON");
        assert!(proto < MAX_ANSWER_BYTES, "protobuf {proto} bytes");
        assert!(json < MAX_ANSWER_BYTES, "JSON {json} bytes");

        let counts = s.node_counts.expect("counts");
        assert_eq!(counts.total, 20_000);
        assert_eq!(
            (
                counts.ready,
                counts.cordoned,
                counts.unreachable,
                counts.suspect
            ),
            (12_500, 2_500, 2_500, 2_500)
        );
        // The worst first: unreachable nodes fill the list (in id order).
        assert!(!s.nodes.is_empty() && s.nodes.len() <= STATUS_MAX_NODES);
        assert!(s
            .nodes
            .iter()
            .all(|n| n.state == v1::NodeState::Unreachable as i32));
        assert!(s.nodes.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(s.nodes_omitted as usize, 20_000 - s.nodes.len());
        // Jobs: the unfinished ones first, each cut down.
        assert_eq!(s.jobs.len() + s.jobs_omitted as usize, 301);
        assert!(s.jobs.iter().any(|j| j.name == "llama-405b"));
        let big = s.jobs.iter().find(|j| j.name == "llama-405b").expect("job");
        assert_eq!(big.node_count, 20_000);
        assert_eq!(big.nodes.len(), STATUS_MAX_JOB_NODES);
        assert_eq!(big.node_stats.len(), STATUS_MAX_JOB_NODES);
        assert_eq!(big.node_stats.iter().filter(|n| n.straggler).count(), 4);
        assert!(s.jobs.iter().all(|j| j.spec_toml.is_empty()));
        // In supd's order; every unfinished job, then the newest finished.
        assert_eq!(s.jobs[0].name, "llama-405b");
        assert!(s.jobs[1..].windows(2).all(|w| w[0].name < w[1].name));
        let unfinished_shown = s.jobs.iter().filter(|j| !finished(j)).count();
        assert_eq!(
            unfinished_shown, 51,
            "every running job before any finished one"
        );
        assert!(
            s.jobs.iter().any(|j| j.name == "eval-299"),
            "the newest finished"
        );
        assert!(
            !s.jobs.iter().any(|j| j.name == "eval-001"),
            "an old finished one"
        );
        assert_eq!((s.spares.len(), s.spare_count), (STATUS_MAX_SPARES, 20_000));
        assert_eq!(
            (s.spares_lent.len(), s.spares_lent_count),
            (STATUS_MAX_SPARES, 5_000)
        );
    }

    /// GetJob of a job of 20,000 nodes stays under 1 MiB either way, keeps
    /// its spec and stragglers, and counts every node; a small job is
    /// answered whole.
    #[test]
    fn get_job_of_twenty_thousand_nodes_is_under_one_mebibyte() {
        use prost::Message;
        let ids: Vec<String> = (0..20_000)
            .map(|i| format!("gpu-node-{i:05}.rack-{:03}.cluster.example.com", i / 64))
            .collect();
        let big = v1::Job {
            name: "llama-405b".into(),
            state: "running".into(),
            nodes: ids.clone(),
            node_stats: ids
                .iter()
                .enumerate()
                .map(|(i, id)| v1::JobNodeStats {
                    node: id.clone(),
                    step_time_s: Some(1.5),
                    slowdown: Some(1.0 + (i % 100) as f64 / 1000.0),
                    straggler: i % 5000 == 4999,
                    tokens_per_s: Some(4096.0),
                })
                .collect(),
            spec_toml: "x".repeat(64 * 1024),
            goodput: Some(v1::JobGoodput::default()),
            ..Default::default()
        };
        let whole = big.encoded_len();
        let j = job_answer(&big);
        let proto = j.encoded_len();
        let json = serde_json::to_vec(&JobView::from(&j)).expect("json").len();
        println!(
            "GetJob of 20,000 nodes: {proto} bytes as protobuf (whole: {whole}), {json} as JSON"
        );
        assert!(whole > MAX_ANSWER_BYTES, "the test job is big enough");
        assert!(proto < MAX_ANSWER_BYTES, "protobuf {proto} bytes");
        assert!(json < MAX_ANSWER_BYTES, "JSON {json} bytes");
        assert_eq!(j.node_count, 20_000);
        assert_eq!(j.nodes.len(), GET_JOB_MAX_NODES);
        assert_eq!(
            j.nodes[..],
            ids[..GET_JOB_MAX_NODES],
            "the first, in rank order"
        );
        assert_eq!(j.node_stats.len(), GET_JOB_MAX_NODES);
        assert_eq!(j.node_stats.iter().filter(|s| s.straggler).count(), 4);
        assert_eq!(j.spec_toml.len(), 64 * 1024);

        // Very long ids: fewer nodes, still under the bound.
        let mut long = big.clone();
        for id in long.nodes.iter_mut() {
            id.push_str(&"z".repeat(400));
        }
        for s in long.node_stats.iter_mut() {
            s.node.push_str(&"z".repeat(400));
        }
        let j = job_answer(&long);
        let json = serde_json::to_vec(&JobView::from(&j)).expect("json").len();
        assert!(j.encoded_len() < MAX_ANSWER_BYTES && json < MAX_ANSWER_BYTES);
        assert!(j.nodes.len() < GET_JOB_MAX_NODES && !j.nodes.is_empty());
        assert_eq!(j.node_count, 20_000);

        let small = v1::Job {
            nodes: ids[..8].to_vec(),
            spec_toml: "name = \"x\"".into(),
            ..Default::default()
        };
        let j = job_answer(&small);
        assert_eq!((j.nodes.len(), j.node_count), (8, 8));
        assert_eq!(j.spec_toml, small.spec_toml);
    }

    #[test]
    fn a_small_cluster_is_listed_whole_as_before() {
        let full = v1::ClusterStatus {
            nodes: vec![
                small("a", v1::NodeState::Ready, "llm"),
                small("b", v1::NodeState::Cordoned, ""),
                small("c", v1::NodeState::Ready, ""),
            ],
            jobs: vec![v1::Job {
                name: "llm".into(),
                nodes: vec!["a".into()],
                spec_toml: "name = \"llm\"".into(),
                ..Default::default()
            }],
            spares: vec!["c".into()],
            ..Default::default()
        };
        let s = status_summary(&Cluster::from_status(full.clone()));
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"], "all of them, in id order");
        assert_eq!((s.nodes_omitted, s.jobs_omitted), (0, 0));
        assert_eq!(s.jobs[0].node_count, 1);
        assert_eq!(s.spares, ["c"]);
        assert_eq!(s.spare_count, 1);
    }

    #[test]
    fn nodes_that_need_attention_come_first_when_the_list_is_capped() {
        let mut nodes: Vec<v1::Node> = (0..500)
            .map(|i| small(&format!("n{i:03}"), v1::NodeState::Ready, ""))
            .collect();
        nodes[450].state = v1::NodeState::Cordoned as i32;
        nodes[420].state = v1::NodeState::Unreachable as i32;
        nodes[499].state = v1::NodeState::Joining as i32;
        nodes[300].slurm = Some(v1::SlurmNode {
            unavailable: true,
            ..Default::default()
        });
        let s = status_summary(&Cluster::from_status(v1::ClusterStatus {
            nodes,
            ..Default::default()
        }));
        assert_eq!(s.nodes.len(), STATUS_MAX_NODES);
        assert_eq!(s.nodes_omitted, 400);
        let ids: Vec<&str> = s.nodes.iter().map(|n| n.id.as_str()).collect();
        for id in ["n450", "n420", "n499", "n300"] {
            assert!(ids.contains(&id), "{id} left out: {ids:?}");
        }
        assert_eq!(s.node_counts.map(|c| c.slurm_unavailable), Some(1));
    }

    #[test]
    fn a_walk_returns_every_node_once_even_as_nodes_join_between_pages() {
        let mut nodes: Vec<v1::Node> = (0..1000)
            .map(|i| small(&format!("n{:04}", i * 2), v1::NodeState::Ready, ""))
            .collect();
        let originals: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
        let mut seen: Vec<String> = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let q = query(&[], "", 64, &token);
            let p = page(&entries(&nodes), &q, proto_len, PAGE_BYTES);
            seen.extend(ids(&p.nodes));
            let next = p.next;
            pages += 1;
            // Between pages: nodes join, before the cursor and after it.
            let k = pages * 7;
            for id in [format!("n{:04}", k), format!("n{:04}", 1999 - k)] {
                if let Err(at) = nodes.binary_search_by(|n| n.id.cmp(&id)) {
                    nodes.insert(at, small(&id, v1::NodeState::Ready, ""));
                }
            }
            match next {
                Some(t) => token = t,
                None => break,
            }
            assert!(pages < 100, "the walk does not end");
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "a node came twice");
        for id in &originals {
            assert!(seen.contains(id), "{id} was skipped");
        }
    }

    #[test]
    fn filters_by_state_and_job_and_counts_what_remains() {
        let nodes: Vec<v1::Node> = (0..50)
            .map(|i| {
                let state = if i % 10 == 0 {
                    v1::NodeState::Cordoned
                } else {
                    v1::NodeState::Ready
                };
                small(&format!("n{i:02}"), state, if i < 20 { "llm" } else { "" })
            })
            .collect();
        let q = query(&[v1::NodeState::Cordoned], "", 2, "");
        let first = page(&entries(&nodes), &q, proto_len, PAGE_BYTES);
        assert_eq!(ids(&first.nodes), ["n00", "n10"]);
        assert_eq!(first.remaining, 3);
        let token = first.next.expect("more");
        let q = query(&[v1::NodeState::Cordoned], "", 2, &token);
        let second = page(&entries(&nodes), &q, proto_len, PAGE_BYTES);
        assert_eq!(ids(&second.nodes), ["n20", "n30"]);
        let q = query(
            &[v1::NodeState::Cordoned],
            "",
            2,
            &second.next.expect("more"),
        );
        let last = page(&entries(&nodes), &q, proto_len, PAGE_BYTES);
        assert_eq!(ids(&last.nodes), ["n40"]);
        assert_eq!((last.next, last.remaining), (None, 0));

        let q = query(
            &[v1::NodeState::Cordoned, v1::NodeState::Ready],
            "llm",
            0,
            "",
        );
        let all = page(&entries(&nodes), &q, proto_len, PAGE_BYTES);
        assert_eq!(all.nodes.len(), 20);
        assert!(all.next.is_none());
    }

    #[test]
    fn limits_default_and_are_capped_and_bytes_end_a_page() {
        let nodes: Vec<v1::Node> = (0..3000)
            .map(|i| small(&format!("n{i:04}"), v1::NodeState::Ready, ""))
            .collect();
        let p = page(
            &entries(&nodes),
            &query(&[], "", 0, ""),
            proto_len,
            PAGE_BYTES,
        );
        assert_eq!(
            (p.nodes.len(), p.remaining),
            (DEFAULT_PAGE_NODES, 3000 - DEFAULT_PAGE_NODES)
        );
        let p = page(
            &entries(&nodes),
            &query(&[], "", 100_000, ""),
            proto_len,
            PAGE_BYTES,
        );
        assert_eq!(p.nodes.len(), MAX_PAGE_NODES);

        // Big nodes: the byte budget ends the page before the count does.
        let big: Vec<v1::Node> = (0..1000)
            .map(|i| big_node(i, v1::NodeState::Cordoned))
            .collect();
        let q = query(&[], "", 1000, "");
        let p = page(&entries(&big), &q, node_bytes, PAGE_BYTES);
        let used: usize = p.nodes.iter().map(node_bytes).sum();
        assert!(
            p.nodes.len() < 1000 && used <= PAGE_BYTES,
            "{} nodes",
            p.nodes.len()
        );
        assert_eq!(p.remaining, 1000 - p.nodes.len());
        // One node bigger than the budget still makes a page: walks end.
        let p = page(&entries(&big), &q, |_| PAGE_BYTES * 2, PAGE_BYTES);
        assert_eq!(p.nodes.len(), 1);
    }

    #[test]
    fn bad_input_is_refused_with_a_message_that_names_it() {
        let err = NodeQuery::parse(&[42], "", 0, "").expect_err("unknown state");
        assert!(err.contains("unknown node state 42"), "{err}");
        let err = NodeQuery::parse(&[0], "", 0, "").expect_err("unspecified");
        assert!(err.contains("unknown node state 0"), "{err}");

        for garbled in ["!!!", "a", "bm90IGEgdG9rZW4", "AQ"] {
            let err = NodeQuery::parse(&[], "", 0, garbled).expect_err(garbled);
            assert!(
                err.contains(&format!("invalid continue token '{garbled}'")),
                "{err}"
            );
        }
        let long = "A".repeat(10_000);
        let err = NodeQuery::parse(&[], "", 0, &long).expect_err("long");
        assert!(err.contains("10000 characters") && err.len() < 200, "{err}");

        // A token from another query is refused, not misapplied.
        let nodes = vec![
            small("a", v1::NodeState::Cordoned, ""),
            small("b", v1::NodeState::Cordoned, ""),
        ];
        let q = query(&[v1::NodeState::Cordoned], "", 1, "");
        let token = page(&entries(&nodes), &q, proto_len, PAGE_BYTES)
            .next
            .expect("token");
        let err = NodeQuery::parse(&[], "", 1, &token).expect_err("other filters");
        assert!(err.contains("issued for other filters"), "{err}");
        let states = [v1::NodeState::Cordoned as i32];
        assert!(NodeQuery::parse(&states, "", 1, &token).is_ok());
    }

    #[test]
    fn base64url_round_trips() {
        for len in 0..40 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unbase64url(&base64url(&raw)), Some(raw));
        }
        assert_eq!(base64url(b"\xfb\xff"), "-_8");
    }

    fn event(seq: u64) -> v1::Event {
        v1::Event {
            seq,
            kind: "node_registered".into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_default_to_a_bounded_tail_and_walk_forward_without_gaps() {
        let kept: Vec<v1::Event> = (1..=10_000).map(event).collect();
        let seqs = |p: &EventsPage| p.events.iter().map(|e| e.seq).collect::<Vec<_>>();

        let tail = events_page(&kept, 0, 0, false, proto_len, PAGE_BYTES);
        assert_eq!(tail.events.len(), DEFAULT_EVENTS);
        assert_eq!(tail.events[0].seq, 9_001);
        assert_eq!(tail.omitted, 9_000);
        let tail = events_page(&kept, 9_995, 3, false, proto_len, PAGE_BYTES);
        assert_eq!((seqs(&tail), tail.omitted), (vec![9_998, 9_999, 10_000], 2));
        let capped = events_page(&kept, 0, 1_000_000, false, proto_len, PAGE_BYTES);
        assert_eq!(capped.events.len(), MAX_EVENTS);

        let mut after = 0;
        let mut walked = Vec::new();
        loop {
            let p = events_page(&kept, after, 777, true, proto_len, PAGE_BYTES);
            walked.extend(seqs(&p));
            match p.events.last() {
                Some(last) if p.omitted > 0 => after = last.seq,
                _ => break,
            }
        }
        assert_eq!(walked, (1..=10_000).collect::<Vec<_>>());

        // Bytes end an answer too, at one event at least.
        let p = events_page(&kept, 0, 5000, true, |_| 1000, 10_500);
        assert_eq!((p.events.len(), p.omitted), (10, 9_990));
        let p = events_page(&kept, 0, 5000, false, |_| PAGE_BYTES * 2, PAGE_BYTES);
        assert_eq!(seqs(&p), vec![10_000]);
    }

    fn job(name: &str, state: &str) -> v1::Job {
        v1::Job {
            name: name.into(),
            state: state.into(),
            nodes: (0..64).map(|i| format!("n{i:02}")).collect(),
            spec_toml: "name = \"x\"".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_walk_over_250_jobs_returns_each_once_in_name_order_and_filters_by_state() {
        let states = ["running", "failed", "succeeded", "pending", "stopped"];
        let jobs: Vec<v1::Job> = (0..250)
            .map(|i| job(&format!("job-{i:03}"), states[i % 5]))
            .collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        let mut pages = 0;
        loop {
            let q = JobQuery::parse(&[], 0, &token).expect("query");
            let p = job_page(&jobs, &q, proto_len, PAGE_BYTES);
            assert!(p.jobs.len() <= DEFAULT_PAGE_NODES);
            assert!(p
                .jobs
                .iter()
                .all(|j| j.nodes.len() == STATUS_MAX_JOB_NODES && j.node_count == 64));
            assert!(p.jobs.iter().all(|j| j.spec_toml.is_empty()), "as a status");
            seen.extend(p.jobs.iter().map(|j| j.name.clone()));
            pages += 1;
            assert_eq!(p.remaining, 250 - seen.len());
            match p.next {
                Some(t) => token = t,
                None => break,
            }
        }
        assert_eq!(pages, 3);
        let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
        assert_eq!(seen, names, "each once, in name order");

        let running = ["running".to_owned(), " failed".to_owned()];
        let q = JobQuery::parse(&running, 30, "").expect("query");
        let p = job_page(&jobs, &q, proto_len, PAGE_BYTES);
        assert_eq!(p.jobs.len(), 30);
        assert_eq!(p.remaining, 100 - 30);
        assert!(p
            .jobs
            .iter()
            .all(|j| j.state == "running" || j.state == "failed"));
        let token = p.next.expect("more");
        let q = JobQuery::parse(&running, 1000, &token).expect("same filters");
        let rest = job_page(&jobs, &q, proto_len, PAGE_BYTES);
        assert_eq!((rest.jobs.len(), rest.remaining, rest.next), (70, 0, None));
        assert!(rest.jobs[0].name > p.jobs[29].name);
    }

    #[test]
    fn bad_job_queries_are_refused_naming_what_is_wrong() {
        let err = JobQuery::parse(&["runing".to_owned()], 0, "").expect_err("unknown");
        assert!(err.contains("unknown job state 'runing'"), "{err}");
        let err = JobQuery::parse(&[], 0, "!!!").expect_err("garbled");
        assert!(err.contains("invalid continue token '!!!'"), "{err}");

        let jobs = vec![job("a", "failed"), job("b", "failed")];
        let failed = ["failed".to_owned()];
        let q = JobQuery::parse(&failed, 1, "").expect("query");
        let token = job_page(&jobs, &q, proto_len, PAGE_BYTES)
            .next
            .expect("token");
        let err = JobQuery::parse(&[], 1, &token).expect_err("other filters");
        assert!(err.contains("issued for other filters"), "{err}");
        assert!(JobQuery::parse(&failed, 1, &token).is_ok());

        // A node listing's token is no job listing's, and the other way.
        let nodes = vec![
            small("a", v1::NodeState::Ready, ""),
            small("b", v1::NodeState::Ready, ""),
        ];
        let node_token = page(
            &entries(&nodes),
            &query(&[], "", 1, ""),
            proto_len,
            PAGE_BYTES,
        )
        .next
        .expect("token");
        assert!(JobQuery::parse(&[], 1, &node_token).is_err());
        let q = JobQuery::parse(&[], 1, "").expect("query");
        let job_token = job_page(&jobs, &q, proto_len, PAGE_BYTES)
            .next
            .expect("token");
        assert!(NodeQuery::parse(&[], "", 1, &job_token).is_err());
    }
}
