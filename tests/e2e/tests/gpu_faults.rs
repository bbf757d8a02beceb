//! GPU faults end to end: supd and sup-agents on the real NVML code path
//! (the fake NVML library, tests/fake-nvml), faults injected by rewriting
//! each node's fake driver state, outcomes checked only through
//! `supctl status -o json` and `supctl events -o json`.
//!
//! Contract checked here: a failed GPU cordons its whole node, `by` "sup",
//! with a reason that names the fault (e.g. "Xid 79"); a degraded GPU makes
//! the node suspect without a cordon; an application Xid cordons nothing,
//! and the same one on most nodes at once is a "correlated_fault" event;
//! `supctl drill xid` on an agent started with --allow-drills cordons that
//! node as if the hardware had reported it.

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use sup_e2e::*;

const CONFIG: &str = r#"
[nodes]
unreachable_after = "30s"
telemetry_interval = "500ms"

[breaker]
window = "10m"
max_share = 0.5
min_cordons = 3

[correlation]
window = "1m"
share = 0.5
"#;

/// How long a verdict may take to become a cordon here: generous, CI
/// machines are shared (the design goal is well under a second).
const FAULT_TIMEOUT: Duration = Duration::from_secs(30);

fn healthy() -> Value {
    json!({ "gpu_count": 8 })
}

/// `healthy()` with GPU `gpu` described by `spec` and `extra` merged in at
/// the top level.
fn with_gpu(gpu: usize, spec: Value, extra: Value) -> Value {
    let mut gpus = vec![json!({}); gpu + 1];
    gpus[gpu] = spec;
    let mut state = json!({ "gpu_count": 8, "gpus": gpus });
    if let (Some(state), Some(extra)) = (state.as_object_mut(), extra.as_object()) {
        state.extend(extra.clone());
    }
    state
}

struct Cluster {
    supd: Supd,
    _agents: Vec<Proc>,
    gpus: Vec<(String, FakeGpus)>,
    // Dropped last: the processes' logs live in it.
    _work: tempfile::TempDir,
}

impl Cluster {
    /// supd and one fake-NVML agent per node id, all ready.
    fn start(nodes: &[&str]) -> Result<Cluster> {
        let work = tempfile::tempdir()?;
        let mut supd = Supd::new(work.path(), CONFIG)?;
        supd.start()?;
        let url = supd.url();
        let mut agents = Vec::new();
        let mut gpus = Vec::new();
        for id in nodes {
            let fake = FakeGpus::new(work.path(), id, &healthy())?;
            agents.push(start_fake_nvml_agent(work.path(), &url, id, &fake, &[])?);
            gpus.push(((*id).to_owned(), fake));
        }
        let cluster = Cluster {
            supd,
            _agents: agents,
            gpus,
            _work: work,
        };
        cluster.wait_all_ready(nodes.len())?;
        Ok(cluster)
    }

    fn url(&self) -> String {
        self.supd.url()
    }

    fn wait_all_ready(&self, n: usize) -> Result<()> {
        let url = self.url();
        wait_for("all nodes ready", STARTUP_TIMEOUT, || {
            let status = supctl_json(&url, &["status"])?;
            let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
            Ok((nodes.len() == n
                && nodes
                    .iter()
                    .all(|n| n["state"] == "ready" && n["connected"] == true))
            .then_some(()))
        })
    }

    fn set(&self, node: &str, state: &Value) -> Result<()> {
        let (_, fake) = self
            .gpus
            .iter()
            .find(|(id, _)| id == node)
            .ok_or_else(|| anyhow!("no node {node}"))?;
        fake.set(state)
    }

    fn status(&self) -> Result<Value> {
        supctl_json(&self.url(), &["status"])
    }

    fn wait_node(&self, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Result<Value> {
        let url = self.url();
        wait_for(what, FAULT_TIMEOUT, || {
            let status = supctl_json(&url, &["status"])?;
            let n = node(&status, id)?.clone();
            Ok(f(&n).then_some(n))
        })
    }

    fn events(&self) -> Result<Vec<Value>> {
        supctl_json(&self.url(), &["events"])?
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("events -o json is not an array"))
    }
}

fn node<'a>(status: &'a Value, id: &str) -> Result<&'a Value> {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .ok_or_else(|| anyhow!("node {id} missing from {status}"))
}

fn gpu(node: &Value, index: usize) -> &Value {
    &node["gpus"][index]
}

fn cordoned(n: &Value) -> bool {
    n["state"] == "cordoned"
}

fn cordon_reason(n: &Value) -> String {
    n["cordon"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A hardware failure on one GPU cordons its node, by "sup", and nothing
/// else.
fn assert_cordoned_for(cluster: &Cluster, id: &str, gpu_index: usize, needle: &str) -> Result<()> {
    let n = cluster.wait_node(id, &format!("{id} cordoned"), cordoned)?;
    let reason = cordon_reason(&n);
    assert!(
        reason.contains(needle),
        "cordon reason must name {needle:?}: {reason:?}\n{n:#}"
    );
    assert_eq!(n["cordon"]["by"], "sup", "{n:#}");
    assert_eq!(gpu(&n, gpu_index)["health"], "failed", "{n:#}");
    let status = cluster.status()?;
    for other in status["nodes"].as_array().cloned().unwrap_or_default() {
        if other["id"] != id {
            assert_eq!(
                other["cordon"],
                Value::Null,
                "only {id} is cordoned: {other:#}"
            );
        }
    }
    Ok(())
}

#[test]
fn xid_79_cordons_the_node_with_a_reason_naming_it() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set(
        "node-a",
        &json!({ "gpu_count": 8, "xids": [{ "id": 1, "gpu": 3, "xid": 79 }] }),
    )?;
    assert_cordoned_for(&cluster, "node-a", 3, "Xid 79")?;
    let n = node(&cluster.status()?, "node-a")?.clone();
    let xids = gpu(&n, 3)["recent_xids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        xids.iter().any(|x| x["xid"] == 79 && x["source"] == "nvml"),
        "GPU 3 lists its Xid: {n:#}"
    );
    Ok(())
}

#[test]
fn row_remap_failure_cordons_the_node() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set(
        "node-b",
        &with_gpu(4, json!({ "remap_failure": true }), json!({})),
    )?;
    assert_cordoned_for(&cluster, "node-b", 4, "row remap")
}

#[test]
fn recovery_action_node_reboot_cordons_the_node() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set(
        "node-a",
        &with_gpu(
            5,
            json!({ "recovery_action": "node_reboot" }),
            json!({ "xids": [{ "id": 1, "gpu": 5, "xid": 154 }] }),
        ),
    )?;
    assert_cordoned_for(&cluster, "node-a", 5, "NODE_REBOOT")?;
    let n = node(&cluster.status()?, "node-a")?.clone();
    assert_eq!(gpu(&n, 5)["recovery_action"], "node_reboot", "{n:#}");
    Ok(())
}

#[test]
fn a_node_that_boots_with_a_gpu_missing_is_cordoned_when_the_count_is_expected() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();
    println!("inject: node-a boots with 7 of its 8 GPUs visible (--expected-gpus 8)");
    let seven = FakeGpus::new(work.path(), "node-a", &json!({ "gpu_count": 7 }))?;
    let _a = start_fake_nvml_agent(
        work.path(),
        &url,
        "node-a",
        &seven,
        &["--expected-gpus", "8"],
    )?;
    let eight = FakeGpus::new(work.path(), "node-b", &healthy())?;
    let _b = start_fake_nvml_agent(
        work.path(),
        &url,
        "node-b",
        &eight,
        &["--expected-gpus", "8"],
    )?;
    let n = wait_for("node-a cordoned", FAULT_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        let n = node(&status, "node-a")?.clone();
        Ok(cordoned(&n).then_some(n))
    })?;
    assert_eq!(n["gpus"].as_array().map(Vec::len), Some(8), "{n:#}");
    assert_eq!(gpu(&n, 7)["health"], "failed", "{n:#}");
    let reason = cordon_reason(&n);
    assert!(reason.contains("NVML sees 7 of the 8 GPUs"), "{reason}");
    assert_eq!(n["cordon"]["by"], "sup", "{n:#}");
    wait_for("node-b ready", STARTUP_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        Ok((node(&status, "node-b")?["state"] == "ready").then_some(()))
    })?;
    println!("check: node-a cordoned by sup ({reason}); node-b with all 8 stays ready");
    Ok(())
}

#[test]
fn a_lost_gpu_cordons_the_node() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set("node-a", &with_gpu(6, json!({ "lost": true }), json!({})))?;
    assert_cordoned_for(&cluster, "node-a", 6, "GPU lost")
}

#[test]
fn a_pcie_downgrade_makes_the_node_suspect_without_a_cordon() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set(
        "node-a",
        &with_gpu(2, json!({ "pcie_width": 8 }), json!({})),
    )?;
    let n = cluster.wait_node("node-a", "node-a suspect", |n| n["state"] == "suspect")?;
    assert_eq!(gpu(&n, 2)["health"], "degraded", "{n:#}");
    assert_eq!(n["cordon"], Value::Null, "{n:#}");
    // And it stays that way.
    std::thread::sleep(Duration::from_secs(3));
    let n = node(&cluster.status()?, "node-a")?.clone();
    assert_eq!(n["state"], "suspect", "{n:#}");
    assert_eq!(n["cordon"], Value::Null, "{n:#}");
    assert_eq!(node(&cluster.status()?, "node-b")?["state"], "ready");
    Ok(())
}

#[test]
fn one_xid_13_cordons_nothing() -> Result<()> {
    let cluster = Cluster::start(&["node-a", "node-b"])?;
    cluster.set(
        "node-a",
        &json!({ "gpu_count": 8, "xids": [{ "id": 1, "gpu": 1, "xid": 13 }] }),
    )?;
    // supd has it once the GPU lists the Xid.
    let n = cluster.wait_node("node-a", "node-a's Xid 13", |n| {
        gpu(n, 1)["recent_xids"]
            .as_array()
            .is_some_and(|xids| xids.iter().any(|x| x["xid"] == 13))
    })?;
    let xid = &gpu(&n, 1)["recent_xids"][0];
    assert_eq!(xid["application"], true, "{n:#}");
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster.status()?;
    for id in ["node-a", "node-b"] {
        let n = node(&status, id)?;
        assert_eq!(n["cordon"], Value::Null, "{n:#}");
        assert_eq!(n["state"], "ready", "{n:#}");
    }
    assert_eq!(gpu(node(&status, "node-a")?, 1)["health"], "ok");
    Ok(())
}

#[test]
fn xid_13_on_most_nodes_at_once_is_a_correlated_fault_and_cordons_nothing() -> Result<()> {
    let nodes = ["node-a", "node-b", "node-c", "node-d"];
    let cluster = Cluster::start(&nodes)?;
    for id in &nodes[..3] {
        cluster.set(
            id,
            &json!({ "gpu_count": 8, "xids": [{ "id": 1, "gpu": 0, "xid": 13 }] }),
        )?;
    }
    let event = wait_for("a correlated_fault event", FAULT_TIMEOUT, || {
        Ok(cluster
            .events()?
            .into_iter()
            .find(|e| e["kind"] == "correlated_fault"))
    })?;
    let reason = event["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("13"), "the event names the Xid: {event}");
    std::thread::sleep(Duration::from_secs(3));
    let status = cluster.status()?;
    for id in nodes {
        let n = node(&status, id)?;
        assert_eq!(n["cordon"], Value::Null, "{n:#}");
        assert!(!cordoned(n), "{n:#}");
    }
    assert_eq!(status["breaker"]["state"], "closed");
    Ok(())
}

#[test]
fn drill_xid_79_cordons_that_node() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();
    let nodes = ["node-a", "node-b", "node-c"];
    let mut agents = Vec::new();
    for id in nodes {
        agents.push(start_agent(
            work.path(),
            &url,
            id,
            "127.0.0.1",
            "sim:8",
            &["--allow-drills"],
        )?);
    }
    wait_for("three ready nodes", STARTUP_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
        Ok((nodes.len() == 3 && nodes.iter().all(|n| n["state"] == "ready")).then_some(()))
    })?;

    let out = supctl(
        &url,
        &[
            "drill", "xid", "--node", "node-b", "--gpu", "0", "--xid", "79",
        ],
    )?;
    if !out.status.success() {
        bail!(
            "supctl drill failed with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let n = wait_for("node-b cordoned by the drill", FAULT_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        let n = node(&status, "node-b")?.clone();
        Ok(cordoned(&n).then_some(n))
    })?;
    let reason = cordon_reason(&n);
    assert!(
        reason.contains("Xid 79"),
        "reason names Xid 79: {reason:?}\n{n:#}"
    );
    assert_eq!(gpu(&n, 0)["health"], "failed", "{n:#}");
    let status = supctl_json(&url, &["status"])?;
    for id in ["node-a", "node-c"] {
        assert_eq!(node(&status, id)?["cordon"], Value::Null);
    }
    drop(agents);
    Ok(())
}

/// The value of `sup_gpu_xids_total` for one node, GPU and Xid (0 when the
/// series is absent), from a promtool-valid `/metrics`.
fn xid_count(http_port: u16, node_id: &str, gpu_index: u32, xid: u32) -> Result<f64> {
    let (code, body) = http_get(http_port, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}: {body}");
    }
    promtool_check(&body)?;
    let wanted = [
        format!("gpu=\"{gpu_index}\""),
        format!("node=\"{node_id}\""),
        format!("xid=\"{xid}\""),
    ];
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("sup_gpu_xids_total{"))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .collect();
    match series.as_slice() {
        [] => Ok(0.0),
        [line] => {
            // dcgm-exporter's labels are there too.
            for label in ["UUID=\"", "Hostname=\""] {
                if !line.contains(label) {
                    bail!("{line} lacks {label}");
                }
            }
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no value in {line}"))
        }
        more => bail!("several series for one GPU and Xid: {more:?}"),
    }
}

#[test]
fn each_drilled_xid_counts_exactly_once_in_sup_gpu_xids_total() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();
    let _agent = start_agent(
        work.path(),
        &url,
        "node-x",
        "127.0.0.1",
        "sim:4",
        &["--allow-drills"],
    )?;
    wait_ready_nodes(&url, 1)?;
    let drill = |gpu: &str, xid: &str| -> Result<()> {
        let out = supctl(
            &url,
            &[
                "drill", "xid", "--node", "node-x", "--gpu", gpu, "--xid", xid,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "supctl drill failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let port = supd.http_port;
    let expect = |gpu: u32, xid: u32, n: f64| -> Result<()> {
        wait_for(
            &format!("sup_gpu_xids_total for GPU {gpu} Xid {xid} at {n}"),
            FAULT_TIMEOUT,
            || Ok((xid_count(port, "node-x", gpu, xid)? == n).then_some(())),
        )
    };
    drill("0", "79")?;
    expect(0, 79, 1.0)?;
    drill("1", "48")?;
    expect(1, 48, 1.0)?;
    drill("0", "79")?;
    expect(0, 79, 2.0)?;
    // Nothing counted twice or elsewhere: read again after the last report.
    wait_for(
        "the last drill's Xid in node-x's recent Xids",
        FAULT_TIMEOUT,
        || {
            let status = supctl_json(&url, &["node", "node-x"])?;
            let recent = status["gpus"][0]["recent_xids"]
                .as_array()
                .map_or(0, |x| x.iter().filter(|x| x["xid"] == 79).count());
            Ok((recent == 2).then_some(()))
        },
    )?;
    assert_eq!(xid_count(port, "node-x", 0, 79)?, 2.0);
    assert_eq!(xid_count(port, "node-x", 1, 48)?, 1.0);
    assert_eq!(xid_count(port, "node-x", 2, 79)?, 0.0);
    Ok(())
}
