//! The core loop with real processes: supd + three sup-agents (sim:8) on
//! loopback, a cordon, supd killed with SIGKILL and restarted on the same
//! data dir. Checked only through public surfaces: `supctl -o json`, HTTP.

use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde_json::Value;
use sup_e2e::*;

const CONFIG: &str = r#"
[nodes]
unreachable_after = "30s"
telemetry_interval = "500ms"
"#;

const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn node<'a>(status: &'a Value, id: &str) -> Result<&'a Value> {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .ok_or_else(|| anyhow!("node {id} missing from {status}"))
}

fn all_ready(status: &Value) -> Result<Option<()>> {
    let nodes = status["nodes"]
        .as_array()
        .ok_or_else(|| anyhow!("no nodes array"))?;
    let ready = nodes.len() == 3
        && nodes
            .iter()
            .all(|n| n["state"] == "ready" && n["connected"] == true);
    Ok(ready.then_some(()))
}

fn events(url: &str) -> Result<Vec<Value>> {
    supctl_json(url, &["events"])?
        .as_array()
        .cloned()
        .ok_or_else(|| anyhow!("events -o json is not an array"))
}

#[test]
fn three_agents_register_cordon_survives_supd_sigkill_and_agents_reconnect() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();

    // supd logs the addresses it bound.
    let log = supd.log_text();
    assert!(
        log.contains("supd listening") && log.contains(&format!("127.0.0.1:{}", supd.grpc_port)),
        "startup log must name the bound addresses:\n{log}"
    );

    let mut agents = Vec::new();
    for id in NODES {
        agents.push(start_agent(
            work.path(),
            &url,
            id,
            "127.0.0.1",
            "sim:8",
            &[],
        )?);
    }

    let status = wait_for("three ready nodes", STARTUP_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        Ok(all_ready(&status)?.map(|_| status))
    })?;
    for id in NODES {
        let n = node(&status, id)?;
        let gpus = n["gpus"].as_array().ok_or_else(|| anyhow!("gpus"))?;
        assert_eq!(gpus.len(), 8, "{n}");
        for (i, g) in gpus.iter().enumerate() {
            assert_eq!(g["index"], i, "{g}");
            assert!(
                g["uuid"].as_str().is_some_and(|u| u.starts_with("GPU-")),
                "{g}"
            );
            assert!(g["name"].as_str().is_some_and(|s| !s.is_empty()), "{g}");
            assert_eq!(g["health"], "ok", "{g}");
        }
        assert_eq!(n["cordon"], Value::Null);
        assert_eq!(n["job"], Value::Null);
        assert_eq!(n["address"], "127.0.0.1");
    }
    assert_eq!(status["jobs"], serde_json::json!([]));
    assert_eq!(status["spares"].as_array().map(Vec::len), Some(3));

    // The HTTP API serves the same document.
    let (code, body) = http_get(supd.http_port, "/api/v1/status")?;
    assert_eq!(code, 200);
    let http_status: Value = serde_json::from_str(&body)?;
    assert_eq!(http_status["nodes"].as_array().map(Vec::len), Some(3));

    // Cordon one node.
    let out = supctl(
        &url,
        &[
            "cordon",
            "node-b",
            "--reason",
            "e2e: HBM errors on GPU 3",
            "--by",
            "e2e-operator",
        ],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = supctl_json(&url, &["status"])?;
    let cordon_before = node(&before, "node-b")?["cordon"].clone();
    assert_eq!(node(&before, "node-b")?["state"], "cordoned");
    assert_eq!(cordon_before["reason"], "e2e: HBM errors on GPU 3");
    assert_eq!(cordon_before["by"], "e2e-operator");
    let at = cordon_before["at"]
        .as_str()
        .ok_or_else(|| anyhow!("cordon.at"))?;
    assert!(at.ends_with('Z') && at.contains('T'), "RFC 3339: {at}");
    assert_eq!(before["spares"].as_array().map(Vec::len), Some(2));

    let evs = events(&url)?;
    let cordoned = evs
        .iter()
        .find(|e| e["kind"] == "node_cordoned")
        .ok_or_else(|| anyhow!("no node_cordoned event in {evs:?}"))?;
    assert_eq!(cordoned["node"], "node-b");
    assert_eq!(cordoned["job"], Value::Null);
    assert_eq!(
        cordoned["reason"],
        "cordoned by e2e-operator: e2e: HBM errors on GPU 3"
    );
    let seqs: Vec<u64> = evs.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    // /metrics is valid Prometheus text and agrees with the status.
    check_metrics(supd.http_port, 1)?;

    // Crash supd. The agents keep running and retrying.
    supd.kill()?;
    let out = supctl(&url, &["status"])?;
    assert_eq!(out.status.code(), Some(3), "supervisor down must exit 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(stderr.contains("cannot reach the supervisor"), "{stderr}");
    std::thread::sleep(Duration::from_secs(2));
    for agent in agents.iter_mut() {
        assert!(
            agent.exited()?.is_none(),
            "{} must not exit while supd is down",
            agent.name
        );
    }

    let last_seq_before_restart = seqs.last().copied().unwrap_or(0);
    supd.start()?;

    // The cordon survived, byte for byte.
    let after = supctl_json(&url, &["status"])?;
    assert_eq!(node(&after, "node-b")?["cordon"], cordon_before);
    assert_eq!(node(&after, "node-b")?["state"], "cordoned");

    // The agents come back on their own.
    wait_for("agents reconnected", STARTUP_TIMEOUT, || {
        let status = supctl_json(&url, &["status"])?;
        let connected = NODES
            .iter()
            .filter(|id| node(&status, id).is_ok_and(|n| n["connected"] == true))
            .count();
        Ok((connected == 3).then_some(()))
    })?;
    let evs = events(&url)?;
    for id in NODES {
        assert!(
            evs.iter().any(|e| e["kind"] == "node_reconnected"
                && e["node"] == id
                && e["seq"].as_u64() > Some(last_seq_before_restart)),
            "{id} must have reconnected after the restart: {evs:?}"
        );
    }
    let status = supctl_json(&url, &["status"])?;
    for id in ["node-a", "node-c"] {
        assert_eq!(node(&status, id)?["state"], "ready");
    }
    check_metrics(supd.http_port, 1)?;
    Ok(())
}

/// promtool is the reference validator; the values are checked with a
/// parser too.
fn check_metrics(http_port: u16, cordoned: i64) -> Result<()> {
    let (code, body) = http_get(http_port, "/metrics")?;
    assert_eq!(code, 200);
    promtool_check(&body)?;
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))?;
    let value = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let matches = s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v));
            match (matches, &s.value) {
                (true, prometheus_parse::Value::Gauge(v)) => Some(*v),
                (true, prometheus_parse::Value::Counter(v)) => Some(*v),
                (true, prometheus_parse::Value::Untyped(v)) => Some(*v),
                _ => None,
            }
        })
    };
    assert_eq!(
        value("sup_nodes", Some(("state", "cordoned"))),
        Some(cordoned as f64),
        "{body}"
    );
    assert_eq!(
        value("sup_gpus", Some(("health", "ok"))),
        Some(24.0),
        "{body}"
    );
    assert!(value("sup_agent_reports_total", None).is_some(), "{body}");
    assert!(
        !body.contains("sup_gpu_temperature_celsius"),
        "per-GPU readings are on /metrics/gpus: {body}"
    );

    // Every GPU's readings: a scrape target of its own (24 GPUs here).
    let (code, gpus) = http_get(http_port, "/metrics/gpus")?;
    assert_eq!(code, 200, "{gpus}");
    promtool_check(&gpus)?;
    let temperatures = gpus
        .lines()
        .filter(|l| l.starts_with("sup_gpu_temperature_celsius{"))
        .count();
    assert_eq!(temperatures, 24, "{gpus}");
    Ok(())
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), CONFIG)?;
    supd.start()?;
    let url = supd.url();
    let _a = start_agent(work.path(), &url, "node-a", "127.0.0.1", "sim:2", &[])?;
    wait_for("node-a ready", STARTUP_TIMEOUT, || {
        let s = supctl_json(&url, &["status"])?;
        Ok(node(&s, "node-a")
            .is_ok_and(|n| n["state"] == "ready")
            .then_some(()))
    })?;
    let before = supctl_json(&url, &["status"])?;

    // Unknown node: non-zero exit and a one-line error naming it.
    for args in [
        vec!["cordon", "ghost-node", "--reason", "x"],
        vec!["uncordon", "ghost-node"],
        vec!["node", "ghost-node"],
    ] {
        let out = supctl(&url, &args)?;
        assert_eq!(out.status.code(), Some(4), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("ghost-node"), "{stderr}");
    }

    // A second agent claiming node-a from another address is rejected;
    // the registry keeps the first one.
    let mut impostor = start_agent(work.path(), &url, "node-a", "127.0.0.2", "sim:4", &[])?;
    wait_for("rejection event", STARTUP_TIMEOUT, || {
        let evs = events(&url)?;
        Ok(evs
            .iter()
            .find(|e| e["kind"] == "node_rejected" && e["node"] == "node-a")
            .cloned())
    })?;
    assert!(
        impostor.exited()?.is_none(),
        "a rejected agent keeps retrying, it does not exit"
    );
    // The event is recorded before the agent has read supd's answer.
    wait_for("the rejected agent to log why", STARTUP_TIMEOUT, || {
        Ok(impostor
            .log_text()
            .contains("already connected")
            .then_some(()))
    })?;
    let after = supctl_json(&url, &["status"])?;
    let a = node(&after, "node-a")?;
    assert_eq!(a["address"], "127.0.0.1");
    assert_eq!(a["gpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        after["nodes"].as_array().map(Vec::len),
        before["nodes"].as_array().map(Vec::len)
    );
    assert_eq!(a["cordon"], Value::Null);
    Ok(())
}

#[test]
fn config_files_with_unknown_keys_are_refused_naming_the_key() -> Result<()> {
    let work = tempfile::tempdir()?;
    let config = work.path().join("bad.toml");
    std::fs::write(&config, "[nodes]\nunreachable_afer = \"10s\"\n")?;
    let out = Command::new(bin("supd")?)
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable_afer"), "{stderr}");
    assert!(
        !work.path().join("data").exists(),
        "nothing is created on bad config"
    );

    let agent_config = work.path().join("agent.toml");
    std::fs::write(&agent_config, "telemetry_intervall = \"1s\"\n")?;
    let out = Command::new(bin("sup-agent")?)
        .arg("--config")
        .arg(&agent_config)
        .args(["--gpu-backend", "sim:1"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("telemetry_intervall"), "{stderr}");
    Ok(())
}
