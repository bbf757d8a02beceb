//! supd's state in a real etcd (issue 15, step 1: the store backend; leader
//! election comes later): a 3-member etcd on loopback (Debian's
//! `etcd-server`, started by the harness in the test's own directory),
//! supd with `[store] backend = "etcd"` and three agents. A cordon and the
//! registry survive supd's SIGKILL and a restart *with an empty data dir*
//! (so they came from etcd, not the disk), and killing the etcd leader
//! changes nothing visible. Checked through `supctl -o json`, supd's
//! `/readyz` and `etcdctl`. The same over mutual TLS to an etcd with
//! `--client-cert-auth`, and what supd says when its certificates are wrong.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use sup_e2e::etcd::EtcdCluster;
use sup_e2e::*;

const PREFIX: &str = "/sup-e2e/";
const NODES: [&str; 3] = ["node-1", "node-2", "node-3"];

fn config(etcd: &EtcdCluster) -> String {
    format!(
        r#"
[nodes]
unreachable_after = "30s"
telemetry_interval = "500ms"

[store]
backend = "etcd"
etcd_endpoints = {}
etcd_prefix = "{PREFIX}"
"#,
        toml_list(&etcd.endpoints())
    )
}

fn node<'a>(status: &'a Value, id: &str) -> Result<&'a Value> {
    status["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["id"] == id))
        .ok_or_else(|| anyhow!("node {id} missing from {status}"))
}

fn all_connected(url: &str) -> Result<Value> {
    wait_for("three connected nodes", STARTUP_TIMEOUT, || {
        let status = supctl_json(url, &["status"])?;
        let up = NODES
            .iter()
            .filter(|id| node(&status, id).is_ok_and(|n| n["connected"] == true))
            .count();
        Ok((up == NODES.len()).then_some(status))
    })
}

/// What survives a restart: each node's identity and cordon.
fn registry(status: &Value) -> Result<Vec<Value>> {
    NODES
        .iter()
        .map(|id| {
            let n = node(status, id)?;
            Ok(serde_json::json!({
                "id": n["id"], "address": n["address"], "gpus": n["gpus"].as_array().map(Vec::len),
                "cordon": n["cordon"],
            }))
        })
        .collect()
}

fn supctl_ok(url: &str, args: &[&str]) -> Result<()> {
    let out = supctl(url, args)?;
    if !out.status.success() {
        bail!(
            "supctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Puts etcd applied so far, as member `i` counts them (every member
/// applies every write).
fn puts(etcd: &EtcdCluster, i: usize) -> Result<f64> {
    Ok(etcd.metric(i, "etcd_mvcc_put_total")? + etcd.metric(i, "etcd_mvcc_delete_total")?)
}

#[test]
fn a_cordon_and_the_registry_survive_supd_sigkill_and_the_loss_of_the_etcd_leader() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut etcd = EtcdCluster::start(work.path(), 3)?;
    let mut supd = Supd::new(work.path(), &config(&etcd))?;
    supd.start()?;
    let log = supd.log_text();
    assert!(
        log.contains(&format!("etcd {}", etcd.endpoints().join(","))),
        "supd logs where its state is: {log}"
    );
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), NODES.len(), |_| url.clone(), &[])?;
    all_connected(&url)?;
    supctl_ok(
        &url,
        &[
            "cordon",
            "node-2",
            "--reason",
            "e2e: Xid 79 on GPU 1",
            "--by",
            "e2e-operator",
        ],
    )?;
    let before = supctl_json(&url, &["status"])?;
    assert_eq!(node(&before, "node-2")?["state"], "cordoned");
    let registry_before = registry(&before)?;

    // One key per record under the prefix; the cordon is in node-2's.
    let keys = etcd.keys(PREFIX)?;
    for id in NODES {
        assert!(keys.contains(&format!("{PREFIX}nodes/{id}")), "{keys:?}");
    }
    assert!(
        keys.contains(&format!("{PREFIX}meta/schema_version")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("{PREFIX}events/"))),
        "{keys:?}"
    );
    let stored: Value = serde_json::from_str(
        &etcd
            .get(&format!("{PREFIX}nodes/node-2"))?
            .ok_or_else(|| anyhow!("no node-2 key"))?,
    )?;
    assert_eq!(stored["cordon"]["reason"], "e2e: Xid 79 on GPU 1");

    // Telemetry is not written: three agents reporting every 500 ms for
    // 3 s, and nothing changing, write nothing.
    let written = puts(&etcd, 0)?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        puts(&etcd, 0)?,
        written,
        "telemetry alone must not write to etcd"
    );

    // SIGKILL supd; a new one on the same etcd and an empty data dir (as on
    // a new machine) has the cordon and the registry.
    supd.kill()?;
    supd.data_dir = work.path().join("supd-data-new-machine");
    supd.start()?;
    let after = all_connected(&url)?;
    assert_eq!(registry(&after)?, registry_before);
    assert_eq!(node(&after, "node-2")?["state"], "cordoned");

    // Kill the etcd leader: nothing visible changes, and writes go on
    // (a cordon and an uncordon, each acknowledged by supd).
    let leader = etcd.leader()?;
    etcd.kill(leader)?;
    let killed_at = Instant::now();
    supctl_ok(
        &url,
        &[
            "cordon",
            "node-3",
            "--reason",
            "e2e: during the etcd election",
        ],
    )?;
    eprintln!(
        "first cordon after the etcd leader was killed acknowledged in {:?}",
        killed_at.elapsed()
    );
    supctl_ok(&url, &["uncordon", "node-2"])?;
    std::thread::sleep(Duration::from_secs(2));
    let (code, body) = http_get(supd.http_port, "/readyz")?;
    assert_eq!(code, 200, "{body}");
    if let Some(p) = supd.proc.as_mut() {
        assert!(p.exited()?.is_none(), "supd must keep running");
    }
    let during = all_connected(&url)?;
    assert_eq!(node(&during, "node-3")?["state"], "cordoned");
    assert_eq!(node(&during, "node-2")?["state"], "ready");
    assert!(
        !supd.log_text().contains("cannot persist state"),
        "{}",
        supd.log_text()
    );

    // What was written with one member down is durable: another SIGKILL,
    // another empty data dir.
    supd.kill()?;
    supd.data_dir = work.path().join("supd-data-third-machine");
    supd.start()?;
    let last = all_connected(&url)?;
    assert_eq!(node(&last, "node-3")?["state"], "cordoned");
    assert_eq!(node(&last, "node-2")?["cordon"], Value::Null);

    // The member comes back and catches up.
    etcd.restart(leader)?;
    assert_eq!(etcd.running(), 3);
    Ok(())
}

/// A record in etcd that does not decode: supd refuses to serve (as with a
/// corrupt sled store), says which key on `/readyz`, and writes nothing.
#[test]
fn an_undecodable_record_in_etcd_makes_supd_refuse_to_serve_naming_the_key() -> Result<()> {
    let work = tempfile::tempdir()?;
    let etcd = EtcdCluster::start(work.path(), 1)?;
    etcd.etcdctl(&["put", &format!("{PREFIX}meta/schema_version"), "1"])?;
    etcd.etcdctl(&["put", &format!("{PREFIX}nodes/node-9"), "{not json"])?;
    let supd = Supd::new(work.path(), &config(&etcd))?;
    let mut cmd = std::process::Command::new(bin("supd")?);
    cmd.arg("--config")
        .arg(&supd.config)
        .arg("--data-dir")
        .arg(&supd.data_dir)
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{}", supd.grpc_port))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", supd.http_port))
        .arg("--plaintext");
    let mut proc = Proc::spawn("supd-refusing", cmd, work.path())?;
    let body = wait_for("/readyz to say why", STARTUP_TIMEOUT, || {
        if let Some(status) = proc.exited()? {
            bail!("supd exited with {status}:\n{}", proc.log_text());
        }
        Ok(match http_get(supd.http_port, "/readyz") {
            Ok((503, body)) => Some(body),
            _ => None,
        })
    })?;
    assert!(
        body.contains("is corrupt")
            && body.contains(&format!("node record '{PREFIX}nodes/node-9'")),
        "{body}"
    );
    let (code, _) = http_get(supd.http_port, "/healthz")?;
    assert_eq!(code, 200, "up, to say why");
    assert_eq!(
        etcd.get(&format!("{PREFIX}nodes/node-9"))?.as_deref(),
        Some("{not json"),
        "left as it was"
    );
    assert_eq!(etcd.keys(PREFIX)?.len(), 2, "nothing written");
    Ok(())
}

/// `supd export` and `supd import` through the binary: a cluster running on
/// sled moves to etcd. An export refuses a sled store a running supd holds
/// (saying to stop it); after supd stops, the export lands in an empty etcd
/// prefix, a supd on etcd with an empty data dir has every node and the
/// cordon, and a second import into that prefix is refused, changing
/// nothing.
#[test]
fn a_sled_cluster_moves_to_etcd_with_export_and_import() -> Result<()> {
    let work = tempfile::tempdir()?;
    let sled_config = "[nodes]\nunreachable_after = \"30s\"\ntelemetry_interval = \"500ms\"\n";
    let mut supd = Supd::new(work.path(), sled_config)?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), NODES.len(), |_| url.clone(), &[])?;
    all_connected(&url)?;
    supctl_ok(
        &url,
        &["cordon", "node-2", "--reason", "e2e: before the move"],
    )?;
    let before = registry(&supctl_json(&url, &["status"])?)?;

    let backup = work.path().join("sup-state.json");
    // The sled data dir stays the tool's: import writes to the config's
    // etcd, whatever the data dir.
    let (config_file, sled_dir) = (supd.config.clone(), supd.data_dir.clone());
    let tool = |args: &[&str]| -> Result<std::process::Output> {
        Ok(std::process::Command::new(bin("supd")?)
            .arg("--config")
            .arg(&config_file)
            .arg("--data-dir")
            .arg(&sled_dir)
            // The config has no [grpc.tls]; export and import serve nothing.
            .arg("--plaintext")
            .args(args)
            .output()?)
    };
    let backup_arg = backup.to_string_lossy().into_owned();
    let busy = tool(&["export", "--to", &backup_arg])?;
    let said = String::from_utf8_lossy(&busy.stderr);
    assert!(
        !busy.status.success() && said.contains("stop it first"),
        "{said}"
    );
    assert!(!backup.exists());

    supd.kill()?;
    let out = tool(&["export", "--to", &backup_arg])?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("exported 3 node(s)"), "{said}");

    let etcd = EtcdCluster::start(work.path(), 1)?;
    std::fs::write(&config_file, config(&etcd))?;
    let out = tool(&["import", "--from", &backup_arg])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let keys = etcd.keys(PREFIX)?;
    assert!(keys.contains(&format!("{PREFIX}nodes/node-2")), "{keys:?}");

    supd.data_dir = work.path().join("supd-data-on-etcd");
    supd.start()?;
    let after = all_connected(&url)?;
    assert_eq!(registry(&after)?, before);
    assert_eq!(node(&after, "node-2")?["state"], "cordoned");

    let again = tool(&["import", "--from", &backup_arg])?;
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && said.contains("already holds state"),
        "{said}"
    );
    let stored: Value = serde_json::from_str(
        &etcd
            .get(&format!("{PREFIX}nodes/node-2"))?
            .ok_or_else(|| anyhow!("no node-2 key"))?,
    )?;
    assert_eq!(stored["cordon"]["reason"], "e2e: before the move");
    Ok(())
}

/// supd on an etcd that serves clients over TLS only and requires a client
/// certificate: the registry and a cordon are written there and survive a
/// SIGKILL and an empty data dir; with a certificate file that is not
/// there supd refuses to serve at once, naming the setting and the file.
#[test]
fn supd_keeps_its_state_in_an_etcd_that_requires_mutual_tls() -> Result<()> {
    let work = tempfile::tempdir()?;
    let etcd = EtcdCluster::start_tls(work.path(), 1)?;
    let pki = etcd
        .tls
        .clone()
        .ok_or_else(|| anyhow!("a TLS cluster has its files"))?;
    let tls_config = |cert: &std::path::Path| {
        format!(
            "{}\n[store.etcd_tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            config(&etcd),
            pki.ca,
            cert,
            pki.client_key
        )
    };
    assert!(
        config(&etcd).contains("https://127.0.0.1:"),
        "{}",
        config(&etcd)
    );
    let mut supd = Supd::new(work.path(), &tls_config(&pki.client_cert))?;
    supd.start()?;
    let url = supd.url();
    let _agents = start_sim_agents(work.path(), NODES.len(), |_| url.clone(), &[])?;
    all_connected(&url)?;
    supctl_ok(
        &url,
        &["cordon", "node-2", "--reason", "e2e: over TLS to etcd"],
    )?;
    let stored: Value = serde_json::from_str(
        &etcd
            .get(&format!("{PREFIX}nodes/node-2"))?
            .ok_or_else(|| anyhow!("no node-2 key"))?,
    )?;
    assert_eq!(stored["cordon"]["reason"], "e2e: over TLS to etcd");

    supd.kill()?;
    supd.data_dir = work.path().join("supd-data-new-machine");
    supd.start()?;
    let after = all_connected(&url)?;
    assert_eq!(node(&after, "node-2")?["state"], "cordoned");
    supd.kill()?;

    // The client certificate's path is wrong: supd refuses to serve at
    // once (as with a corrupt store: up, to say why), without waiting on
    // etcd, naming the setting and the file.
    let missing = work.path().join("supd-etcd-client.pem");
    std::fs::write(&supd.config, tls_config(&missing))?;
    let mut cmd = std::process::Command::new(bin("supd")?);
    cmd.arg("--config")
        .arg(&supd.config)
        .arg("--data-dir")
        .arg(work.path().join("supd-data-wrong-cert"))
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{}", supd.grpc_port))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{}", supd.http_port))
        .arg("--plaintext");
    let mut wrong = Proc::spawn("supd-wrong-cert", cmd, work.path())?;
    let body = wait_for("/readyz to say why", STARTUP_TIMEOUT, || {
        if let Some(status) = wrong.exited()? {
            bail!("supd exited with {status}:\n{}", wrong.log_text());
        }
        Ok(match http_get(supd.http_port, "/readyz") {
            Ok((503, body)) => Some(body),
            _ => None,
        })
    })?;
    assert!(
        body.contains("store.etcd_tls: cannot read the client certificate")
            && body.contains(&missing.display().to_string()),
        "{body}"
    );
    Ok(())
}
