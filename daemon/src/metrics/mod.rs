//! Prometheus exposition at `/metrics`, prefix `sup_`, base units.
//!
//! The state's gauges are rendered once per status snapshot (see
//! `snapshot.rs`) and shared by every scrape of it, so a node or GPU that
//! disappears leaves no stale series behind; the counters after them are
//! read at each scrape. GPU series carry the labels
//! dcgm-exporter uses (`gpu`, `UUID`, `Hostname`) so existing dashboards join
//! on them.
//!
//! `prometheus-client` writes OpenMetrics. Prometheus servers ask for it (and
//! get it); everything else (promtool, older scrapers, curl) gets the classic
//! text format 0.0.4, converted by [`to_text_format`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use sup_proto::json::{gpu_health_name, node_state_name};
use sup_proto::v1;

use crate::cluster::Cluster;

mod counters;

pub use counters::{
    Counters, IgnoredReports, RecoveryLatency, XidCounts, MAX_XID_CODES_PER_GPU, MAX_XID_SERIES,
};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

/// Everything `/metrics` shows: the state's families and the counters.
pub fn render(cluster: &Cluster, counters: &Counters) -> Result<String, std::fmt::Error> {
    let mut out = render_state(cluster)?;
    out.push_str(&render_counters(&cluster.status, counters)?);
    Ok(out)
}

/// The families derived from the cluster's state (nodes, GPUs and their
/// readings, jobs, the breaker), in OpenMetrics without the closing
/// `# EOF`: rendered once per status snapshot and shared by every scrape of
/// it, then followed by [`render_counters`].
pub fn render_state(cluster: &Cluster) -> Result<String, std::fmt::Error> {
    let status = &cluster.status;
    let mut registry = Registry::with_prefix("sup");

    let nodes = Family::<Labels, Gauge>::default();
    for state in [
        "joining",
        "ready",
        "suspect",
        "unreachable",
        "cordoned",
        "draining",
    ] {
        nodes.get_or_create(&labels(&[("state", state)])).set(0);
    }
    let connected = Gauge::<i64>::default();
    let gpus = Family::<Labels, Gauge>::default();
    for health in ["ok", "degraded", "failed"] {
        gpus.get_or_create(&labels(&[("health", health)])).set(0);
    }

    // Counted first, one label set per state or health afterwards: a
    // lookup per node and per GPU built an owned label set each time.
    let mut by_state: BTreeMap<&'static str, i64> = BTreeMap::new();
    let mut by_health: BTreeMap<&'static str, i64> = BTreeMap::new();
    for node in cluster.fixed_nodes() {
        *by_state.entry(node_state_name(node.state)).or_default() += 1;
        if node.connected {
            connected.inc();
        }
        for gpu in &node.gpus {
            *by_health.entry(gpu_health_name(gpu.health)).or_default() += 1;
        }
    }
    for (state, n) in by_state {
        nodes.get_or_create(&labels(&[("state", state)])).inc_by(n);
    }
    for (health, n) in by_health {
        gpus.get_or_create(&labels(&[("health", health)])).inc_by(n);
    }

    registry.register("nodes", "Nodes by state", nodes);
    let spares = Gauge::<i64>::default();
    spares.set(i64::try_from(status.spares.len()).unwrap_or(i64::MAX));
    registry.register(
        "spare_nodes",
        "Healthy nodes that hold no normal job (free, or lent to low-priority work)",
        spares,
    );
    let lent = Gauge::<i64>::default();
    lent.set(i64::try_from(status.spares_lent.len()).unwrap_or(i64::MAX));
    registry.register(
        "spare_nodes_lent",
        "Spare nodes running low-priority work, taken back when a normal job needs one",
        lent,
    );
    registry.register(
        "agents_connected",
        "Agents with a live stream to this supd",
        connected,
    );
    registry.register("gpus", "GPUs by health", gpus);

    let breaker = Gauge::<i64>::default();
    breaker.set(i64::from(status.breaker.as_ref().is_some_and(|b| b.open)));
    registry.register(
        "breaker_open",
        "1 while the circuit breaker holds back automatic cordons",
        breaker,
    );
    let spares_target = Gauge::<i64>::default();
    spares_target.set(i64::from(status.spares_target));
    registry.register(
        "spare_nodes_target",
        "Configured spare pool target",
        spares_target,
    );

    let job_state = Family::<Labels, Gauge>::default();
    let job_world = Family::<Labels, Gauge>::default();
    let job_generation = Family::<Labels, Gauge>::default();
    let job_restarts = Family::<Labels, Gauge>::default();
    let job_step = Family::<Labels, Gauge>::default();
    let job_checkpoint_step = Family::<Labels, Gauge>::default();
    for job in &status.jobs {
        let l = labels(&[("job", &job.name)]);
        job_state
            .get_or_create(&labels(&[("job", &job.name), ("state", &job.state)]))
            .set(1);
        job_world.get_or_create(&l).set(i64::from(job.world_size));
        job_generation
            .get_or_create(&l)
            .set(i64::try_from(job.generation).unwrap_or(i64::MAX));
        job_restarts.get_or_create(&l).set(i64::from(job.restarts));
        if let Some(step) = job.step {
            job_step
                .get_or_create(&l)
                .set(i64::try_from(step).unwrap_or(i64::MAX));
        }
        if let Some(c) = &job.checkpoint {
            job_checkpoint_step
                .get_or_create(&l)
                .set(i64::try_from(c.step).unwrap_or(i64::MAX));
        }
    }
    registry.register("job_state", "1 for the state each job is in", job_state);
    registry.register(
        "job_world_size",
        "Ranks of the job's current generation",
        job_world,
    );
    registry.register(
        "job_generation",
        "The job's current generation (fencing token)",
        job_generation,
    );
    registry.register("job_restarts", "Restarts of the job so far", job_restarts);
    registry.register(
        "job_step",
        "Latest training step reported by the job",
        job_step,
    );
    registry.register(
        "job_checkpoint_step",
        "Step of the job's newest complete checkpoint",
        job_checkpoint_step,
    );

    // Throughput and the detectors' view of each node.
    let job_tps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let job_mfu = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let job_rollbacks = Family::<Labels, Gauge>::default();
    let node_step = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let node_slowdown = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let node_straggler = Family::<Labels, Gauge>::default();
    let node_tps = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    // Live goodput accounting (README "Goodput").
    let job_goodput = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let job_lost = Family::<Labels, Counter<f64, AtomicU64>>::default();
    let job_recommended = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let (mut fleet_productive, mut fleet_wall) = (0.0, 0.0);
    for g in status.jobs.iter().filter_map(|j| j.goodput.as_ref()) {
        fleet_productive += g.productive_s;
        fleet_wall += g.wall_s;
    }
    for job in &status.jobs {
        if let Some(g) = &job.goodput {
            let l = labels(&[("job", &job.name)]);
            if let Some(v) = g.ettr {
                job_goodput.get_or_create(&l).set(v);
            }
            for (cause, s) in &g.lost_seconds_closed {
                job_lost
                    .get_or_create(&labels(&[("job", &job.name), ("cause", cause)]))
                    .inc_by(*s);
            }
            if let Some(v) = g.recommended_checkpoint_interval_s {
                job_recommended.get_or_create(&l).set(v);
            }
        }
        let l = labels(&[("job", &job.name)]);
        if let Some(v) = job.tokens_per_s {
            job_tps.get_or_create(&l).set(v);
        }
        if let Some(v) = job.mfu {
            job_mfu.get_or_create(&l).set(v);
        }
        job_rollbacks
            .get_or_create(&l)
            .set(i64::from(job.rollbacks));
        for n in &job.node_stats {
            let l = labels(&[("job", &job.name), ("node", &n.node)]);
            if let Some(v) = n.step_time_s {
                node_step.get_or_create(&l).set(v);
            }
            if let Some(v) = n.slowdown {
                node_slowdown.get_or_create(&l).set(v);
            }
            node_straggler.get_or_create(&l).set(i64::from(n.straggler));
            if let Some(v) = n.tokens_per_s {
                node_tps.get_or_create(&l).set(v);
            }
        }
    }
    registry.register_with_unit(
        "job_goodput",
        "Share of the job's wall time that was productive training (ETTR), live accounting",
        Unit::Other("ratio".to_owned()),
        job_goodput,
    );
    if fleet_wall > 0.0 {
        let fleet = Gauge::<f64, AtomicU64>::default();
        fleet.set(fleet_productive / fleet_wall);
        registry.register_with_unit(
            "fleet_goodput",
            "Productive share of all jobs' wall time together (ETTR of the fleet)",
            Unit::Other("ratio".to_owned()),
            fleet,
        );
    }
    registry.register_with_unit(
        "job_lost",
        "Seconds of the job's wall time that were not productive training, by cause (closed intervals)",
        Unit::Seconds,
        job_lost,
    );
    registry.register_with_unit(
        "job_recommended_checkpoint_interval",
        "Young/Daly checkpoint interval from the job's measured failure rate and checkpoint cost",
        Unit::Seconds,
        job_recommended,
    );
    registry.register(
        "job_tokens_per_second",
        "Tokens per second of the whole job over the recent window",
        job_tps,
    );
    registry.register(
        "job_mfu_ratio",
        "Model FLOPs utilization: 6 x params x tokens/s / (GPUs x peak FLOP/s)",
        job_mfu,
    );
    registry.register(
        "job_rollbacks",
        "Loss-spike rollbacks of the job so far",
        job_rollbacks,
    );
    registry.register_with_unit(
        "job_node_step_time",
        "Median step time of the node's ranks (compute time when reported)",
        Unit::Seconds,
        node_step,
    );
    registry.register_with_unit(
        "job_node_slowdown",
        "The node's median step time over the median of the job's other nodes",
        Unit::Other("ratio".to_owned()),
        node_slowdown,
    );
    registry.register(
        "job_node_straggler",
        "1 when the node is flagged as a straggler of the job",
        node_straggler,
    );
    registry.register(
        "job_node_tokens_per_second",
        "Tokens per second processed on the node: its ranks' share of the job's tokens/s",
        node_tps,
    );

    let mut out = String::new();
    encode(&mut out, &registry)?;
    if out.ends_with("# EOF\n") {
        out.truncate(out.len() - "# EOF\n".len());
    }
    Ok(out)
}

/// `/metrics/gpus`: each GPU's latest readings, labelled as dcgm-exporter
/// labels them, in OpenMetrics with its `# EOF`. A scrape target of its own
/// because it grows with the cluster (five series per GPU, about 5 KB per
/// eight-GPU node: 80 MB at 16,384 nodes) where `/metrics` grows with the
/// jobs; rendered for each scrape and never kept, so a cluster that takes
/// its GPU metrics from dcgm-exporter pays nothing for it.
pub fn render_gpus(cluster: &Cluster) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("sup");
    registry.register_collector(Box::new(GpuGauges::from_cluster(cluster)));
    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}

/// The counters (read live at each scrape) and the closing `# EOF`.
/// `status` names the hosts and jobs they are labelled with.
pub fn render_counters(
    status: &v1::ClusterStatus,
    counters: &Counters,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("sup");

    registry.register(
        "build",
        "Build information of this supd",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );

    registry.register(
        "agent_reports",
        "Telemetry reports accepted from agents",
        counter(counters.reports.load(Ordering::Relaxed)),
    );
    let ignored = Family::<Labels, Counter>::default();
    for (reason, n) in counters.ignored_reports.by_reason() {
        ignored
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(n);
    }
    registry.register(
        "agent_stale_reports",
        "Agent reports ignored, by reason: stale_stream (a replaced agent stream), stale_generation (about a generation the node no longer runs), stopped_by_agent (a rank the agent stopped itself)",
        ignored,
    );
    registry.register(
        "status_snapshots",
        "Snapshots of the cluster built by the state actor for readers (HTTP, supctl, dashboard): at most one per batch of reports, shared by every reader",
        counter(counters.snapshots_built.load(Ordering::Relaxed)),
    );
    // Microseconds to seconds; precision loss is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let build_seconds = counters.snapshot_build_us.load(Ordering::Relaxed) as f64 / 1e6;
    registry.register_with_unit(
        "status_snapshot_build",
        "Time the state actor spent building snapshots for readers",
        Unit::Seconds,
        ConstCounter::new(build_seconds),
    );
    registry.register(
        "store_commits",
        "Durable state commits (each flushed before acknowledging)",
        counter(counters.store_commits.load(Ordering::Relaxed)),
    );
    let tls_failures = Family::<Labels, Counter>::default();
    for (reason, n) in counters.tls_handshake_failures.snapshot() {
        tls_failures
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(n);
    }
    registry.register(
        "grpc_tls_handshake_failures",
        "gRPC connections refused during the TLS handshake, by reason (untrusted_certificate, no_client_certificate, not_tls, timeout, closed, ...)",
        tls_failures,
    );
    if let Some(tls) = counters.tls.get() {
        let expiry = Family::<Labels, Gauge>::default();
        for (identity, at) in tls.expiries() {
            expiry
                .get_or_create(&labels(&[("identity", &identity)]))
                .set(at);
        }
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When TLS certificates expire (unix time): supd's own and, per identity, the soonest among the client connections open now",
            expiry,
        );
    }
    if let Some(heap) = crate::memory::heap() {
        let gauge = |v: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        registry.register_with_unit(
            "heap_allocated",
            "Bytes supd has allocated (jemalloc's stats.allocated)",
            Unit::Bytes,
            gauge(heap.allocated),
        );
        registry.register_with_unit(
            "heap_resident",
            "Bytes in pages supd's allocator holds resident, its metadata included (jemalloc's stats.resident): above heap_allocated by fragmentation and freed pages not yet returned",
            Unit::Bytes,
            gauge(heap.resident),
        );
    }
    let events = Family::<Labels, Counter>::default();
    {
        let by_kind = counters
            .events_by_kind
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (kind, n) in by_kind.iter() {
            events.get_or_create(&labels(&[("kind", kind)])).inc_by(*n);
        }
    }
    registry.register("events", "Events recorded, by kind", events);
    let catalogs = Family::<Labels, Counter>::default();
    {
        let by_node = counters
            .catalogs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (node, n) in by_node.iter() {
            catalogs
                .get_or_create(&labels(&[("node", node)]))
                .inc_by(*n);
        }
    }
    registry.register(
        "checkpoint_catalogs",
        "Checkpoint catalogs received and applied, by node: the node of rank 0 scans each job's checkpoint directory",
        catalogs,
    );

    let hostnames: std::collections::BTreeMap<&str, &str> = status
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n.hostname.as_str()))
        .collect();
    let xids = Family::<Labels, Counter>::default();
    {
        let counts = counters
            .xids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for ((node, gpu, uuid, code), n) in counts.iter() {
            let gpu = gpu.to_string();
            let code = code.to_string();
            xids.get_or_create(&labels(&[
                ("gpu", &gpu),
                ("UUID", uuid),
                (
                    "Hostname",
                    hostnames.get(node.as_str()).copied().unwrap_or(""),
                ),
                ("node", node),
                ("xid", &code),
            ]))
            .inc_by(*n);
        }
    }
    let dropped = counters
        .xids
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .dropped();
    registry.register("gpu_xids", "Xid events reported, by GPU and code", xids);
    registry.register(
        "gpu_xids_dropped",
        "Xid events not counted in sup_gpu_xids_total because a series cap was reached (65,536 series, 32 distinct codes per GPU)",
        counter(dropped),
    );

    let since_checkpoint = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    {
        let seen = counters
            .last_checkpoint_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = sup_proto::time::now_unix_ms();
        for job in &status.jobs {
            if let Some(at) = seen.get(&job.name) {
                // Milliseconds to seconds; precision loss is irrelevant.
                #[allow(clippy::cast_precision_loss)]
                let seconds = (now - at).max(0) as f64 / 1000.0;
                since_checkpoint
                    .get_or_create(&labels(&[("job", &job.name)]))
                    .set(seconds);
            }
        }
    }
    registry.register_with_unit(
        "job_since_checkpoint",
        "Time since the job's newest complete checkpoint was reported (absent until one is, after a supd restart too)",
        Unit::Seconds,
        since_checkpoint,
    );
    registry.register_with_unit(
        "recovery_latency",
        "Detection to action: from a fault being reported to every rank of the job's replacement generation launched",
        Unit::Seconds,
        counters.recovery_latency.0.clone(),
    );

    let mut out = String::new();
    encode(&mut out, &registry)?;
    Ok(out)
}
/// The per-GPU gauges (temperature, power, utilization, SM clock, memory
/// used), encoded straight from the GPUs' readings at encode time.
///
/// At cluster scale this is 16,384 GPUs × 5 series. As `Family`s, every
/// scrape built, hashed and stored an owned four-label set per series
/// (hundreds of thousands of small allocations, tens of MiB held until the
/// text was written). Here each GPU is one row and each label set is
/// borrowed from it while it is written; the text is the same, produced by
/// the same encoder. A collector is `'static`, hence the rows copy the few
/// strings they need.
#[derive(Debug)]
struct GpuGauges {
    /// (node id, hostname), indexed by [`GpuRow::node`].
    nodes: Vec<(String, String)>,
    rows: Vec<GpuRow>,
}

#[derive(Debug)]
struct GpuRow {
    node: usize,
    index: String,
    uuid: String,
    reading: v1::GpuReading,
}

/// (name, help, unit, value of a reading) of each per-GPU gauge, in the
/// order they are written. The help ends with the period that
/// `Registry::register` appends to the others.
type GpuGauge = (
    &'static str,
    &'static str,
    Unit,
    fn(&v1::GpuReading) -> Option<GpuValue>,
);

#[derive(Debug, Clone, Copy)]
enum GpuValue {
    F64(f64),
    I64(i64),
}

fn gpu_gauges() -> [GpuGauge; 5] {
    [
        ("gpu_temperature", "GPU temperature.", Unit::Celsius, |r| {
            r.temperature_c.map(GpuValue::F64)
        }),
        (
            "gpu_power",
            "GPU power draw.",
            Unit::Other("watts".to_owned()),
            |r| r.power_w.map(GpuValue::F64),
        ),
        (
            "gpu_utilization",
            "Fraction of time the GPU was busy.",
            Unit::Other("ratio".to_owned()),
            |r| {
                r.utilization_gpu_pct
                    .map(|v| GpuValue::F64(f64::from(v) / 100.0))
            },
        ),
        (
            "gpu_sm_clock",
            "GPU SM clock.",
            Unit::Other("hertz".to_owned()),
            |r| r.sm_clock_mhz.map(|v| GpuValue::F64(f64::from(v) * 1e6)),
        ),
        (
            "gpu_memory_used",
            "GPU framebuffer memory in use.",
            Unit::Bytes,
            |r| {
                r.memory_used_bytes
                    .map(|v| GpuValue::I64(i64::try_from(v).unwrap_or(i64::MAX)))
            },
        ),
    ]
}

impl GpuGauges {
    fn from_cluster(cluster: &Cluster) -> GpuGauges {
        let mut nodes = Vec::with_capacity(cluster.nodes.len());
        let mut rows = Vec::new();
        for entry in &cluster.nodes {
            let node = entry.fixed();
            let mut at = None;
            for (gpu, &reading) in entry.readings() {
                let i = *at.get_or_insert_with(|| {
                    nodes.push((node.id.clone(), node.hostname.clone()));
                    nodes.len() - 1
                });
                rows.push(GpuRow {
                    node: i,
                    index: gpu.index.to_string(),
                    uuid: gpu.uuid.clone(),
                    reading,
                });
            }
        }
        GpuGauges { nodes, rows }
    }
}

impl Collector for GpuGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, unit, value) in gpu_gauges() {
            // A family with no series is left out, as the registry does.
            if !self.rows.iter().any(|row| value(&row.reading).is_some()) {
                continue;
            }
            let mut family =
                encoder.encode_descriptor(name, help, Some(&unit), MetricType::Gauge)?;
            for row in &self.rows {
                let Some(v) = value(&row.reading) else {
                    continue;
                };
                let (id, hostname) = &self.nodes[row.node];
                let labels = [
                    ("gpu", row.index.as_str()),
                    ("UUID", row.uuid.as_str()),
                    ("Hostname", hostname.as_str()),
                    ("node", id.as_str()),
                ];
                let metric = family.encode_family(&labels)?;
                match v {
                    GpuValue::F64(v) => ConstGauge::new(v).encode(metric)?,
                    GpuValue::I64(v) => ConstGauge::new(v).encode(metric)?,
                }
            }
        }
        Ok(())
    }
}

/// Content type of [`render`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of [`to_text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Converts OpenMetrics text (as `prometheus-client` writes it) to the
/// Prometheus text format 0.0.4: counter and info families are named after
/// their samples (`x_total`, `x_info`; info becomes a gauge), and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines are dropped.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut renamed = std::collections::HashMap::new();
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            match rest.split_once(' ') {
                Some((name, "counter")) => {
                    renamed.insert(name.to_owned(), (format!("{name}_total"), "counter"));
                }
                Some((name, "info")) => {
                    renamed.insert(name.to_owned(), (format!("{name}_info"), "gauge"));
                }
                _ => {}
            }
        }
    }
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let converted = if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            renamed
                .get(name)
                .map(|(new, _)| format!("# HELP {new} {help}"))
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_once(' ').map_or(rest, |(n, _)| n);
            renamed
                .get(name)
                .map(|(new, kind)| format!("# TYPE {new} {kind}"))
        } else {
            None
        };
        out.push_str(converted.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Whether a scraper's `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nodes_gpus_and_counters() {
        let status = Cluster::from_status(v1::ClusterStatus {
            nodes: vec![v1::Node {
                id: "n1".into(),
                hostname: "host1".into(),
                state: v1::NodeState::Ready as i32,
                connected: true,
                gpus: vec![v1::Gpu {
                    index: 0,
                    uuid: "GPU-a".into(),
                    health: v1::GpuHealth::Ok as i32,
                    reading: Some(v1::GpuReading {
                        temperature_c: Some(41.5),
                        utilization_gpu_pct: Some(50),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            jobs: vec![],
            spares: vec!["n1".into()],
            ..Default::default()
        });
        let counters = Counters::default();
        counters.reports.store(7, Ordering::Relaxed);
        let text = render(&status, &counters).expect("render");
        assert!(text.contains("sup_nodes{state=\"ready\"} 1"), "{text}");
        assert!(text.contains("sup_nodes{state=\"cordoned\"} 0"), "{text}");
        assert!(text.contains("sup_spare_nodes 1"), "{text}");
        assert!(
            !text.contains("sup_gpu_temperature_celsius"),
            "per-GPU readings are on /metrics/gpus, not /metrics: {text}"
        );
        assert!(text.contains("sup_agent_reports_total 7"), "{text}");
        assert!(text.contains("sup_build_info{version="), "{text}");

        let gpus = render_gpus(&status).expect("render");
        assert!(
            gpus.contains("sup_gpu_temperature_celsius{gpu=\"0\",UUID=\"GPU-a\",Hostname=\"host1\",node=\"n1\"} 41.5"),
            "{gpus}"
        );
        assert!(gpus.contains("sup_gpu_utilization_ratio{"), "{gpus}");
        assert!(
            !gpus.contains("sup_gpu_power_watts{"),
            "absent reading, no series: {gpus}"
        );
        assert!(gpus.ends_with("# EOF\n"), "{gpus}");
    }

    #[test]
    fn text_format_names_families_after_their_samples() {
        let om = "# HELP sup_build Build.\n# TYPE sup_build info\nsup_build_info{version=\"1\"} 1\n\
                  # HELP sup_reports Reports.\n# TYPE sup_reports counter\nsup_reports_total 3\n\
                  # HELP sup_t_celsius T.\n# TYPE sup_t_celsius gauge\n# UNIT sup_t_celsius celsius\nsup_t_celsius 1.5\n# EOF\n";
        let text = to_text_format(om);
        assert_eq!(
            text,
            "# HELP sup_build_info Build.\n# TYPE sup_build_info gauge\nsup_build_info{version=\"1\"} 1\n\
             # HELP sup_reports_total Reports.\n# TYPE sup_reports_total counter\nsup_reports_total 3\n\
             # HELP sup_t_celsius T.\n# TYPE sup_t_celsius gauge\nsup_t_celsius 1.5\n"
        );
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
