//! A compromised job member cannot choose the resume point. Real supd and
//! supctl, a real agent running the example trainer, and one node played by
//! this test speaking the agent protocol itself (what a compromised node
//! with a node certificate can do): it joins the job, then lists a
//! checkpoint outside the job's checkpoint_dir and one at step 2^64-1
//! (before the job could report any progress: its second rank is the
//! compromised node's). Nothing moves: the next generation resumes from the
//! true newest complete checkpoint, and events name the node and why.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sup_e2e::*;
use sup_proto::v1;
use sup_proto::v1::agent_message::Body;
use sup_proto::v1::supervisor_message::Body as SupervisorBody;

const JOB_TIMEOUT: Duration = Duration::from_secs(120);
// Sorts after node-good: the honest node holds rank 0 and so scans the
// checkpoint directory (one scanner per job); the compromised one lists
// its catalog unasked, as a compromised agent would.
const EVIL: &str = "node-x-evil";

/// A node played by this test over the agent protocol (what a node with a
/// node certificate can send): what it sends, numbered.
struct ForgedAgent {
    tx: tokio::sync::mpsc::Sender<v1::AgentMessage>,
    seq: u64,
}

impl ForgedAgent {
    /// Registers as `register` says; the stream of what supd sends back.
    async fn connect(
        url: String,
        register: v1::Register,
    ) -> Result<(ForgedAgent, tonic::Streaming<v1::SupervisorMessage>)> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await
            .context("connecting to supd")?;
        let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::AgentMessage>(16);
        let mut agent = ForgedAgent { tx, seq: 0 };
        // Queued before the call: supd answers the call once it has read
        // the registration.
        agent.send(Body::Register(register)).await?;
        let inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((agent, inbound))
    }

    async fn send(&mut self, body: Body) -> Result<()> {
        self.seq += 1;
        self.tx
            .send(v1::AgentMessage {
                seq: self.seq,
                body: Some(body),
                ..Default::default()
            })
            .await
            .map_err(|_| anyhow!("the stream to supd is closed"))
    }
}

/// The compromised node: registers with one GPU, says every assignment is
/// launched, lists the hostile catalog for its job, and keeps reporting
/// until `stop`.
fn compromised_agent(url: String, ckpt: String, stop: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (mut agent, mut inbound) = ForgedAgent::connect(
            url,
            v1::Register {
                validates: false,
                slurm_node_name: String::new(),
                node_id: EVIL.to_owned(),
                address: "127.0.0.1".to_owned(),
                hostname: EVIL.to_owned(),
                agent_version: "trust-test".to_owned(),
                instance_id: "evil-1".to_owned(),
                gpu_backend: "sim".to_owned(),
                gpus: vec![v1::GpuInfo {
                    index: 0,
                    uuid: "GPU-evil-0".to_owned(),
                    name: "Simulated".to_owned(),
                    pci_bus_id: "00000000:10:00.0".to_owned(),
                    memory_total_bytes: None,
                }],
            },
        )
        .await?;
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    let telemetry = v1::Telemetry {
                        sampled_at_unix_ms: sup_proto::time::now_unix_ms(),
                        gpus: Vec::new(),
                    };
                    agent.send(Body::Telemetry(telemetry)).await?;
                }
                next = inbound.message() => {
                    let Some(msg) = next? else { bail!("supd closed the stream") };
                    let Some(SupervisorBody::Assignment(a)) = msg.body else { continue };
                    let Some(job) = a.job else { continue };
                    agent.send(Body::Ranks(v1::RankStatus {
                        job: job.job.clone(),
                        generation: a.generation,
                        running_local_ranks: vec![0],
                        launched: true,
                        launch_error: String::new(),
                    }))
                    .await?;
                    agent.send(Body::Checkpoints(v1::CheckpointCatalog {
                        job: job.job,
                        checkpoints: vec![
                            v1::Checkpoint {
                                step: 11,
                                path: format!("{ckpt}/../elsewhere/step-11"), ..Default::default() },
                            v1::Checkpoint {
                                step: u64::MAX,
                                path: format!("{ckpt}/step-huge"), ..Default::default() },
                        ], ..Default::default() }))
                    .await?;
                }
            }
        }
        Ok(())
    })
}

#[test]
fn a_compromised_member_cannot_choose_the_resume_point() -> Result<()> {
    let work = tempfile::tempdir()?;
    let ckpt = work.path().join("ckpt");
    std::fs::create_dir_all(&ckpt)?;
    // Two real, complete checkpoints (steps 5 and 10) of a one-rank run, as
    // the trainer writes them.
    let mut seed = std::process::Command::new("python3");
    seed.args(trainer_command(10, 5, "0", 257).iter().skip(1))
        .arg("--checkpoint-dir")
        .arg(&ckpt)
        .env_remove("SUP_CHECKPOINT_DIR");
    let out = seed
        .output()
        .context("running the trainer to seed checkpoints")?;
    if !out.status.success() {
        bail!(
            "seeding checkpoints failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let master_port = free_port()?;
    let mut supd = Supd::new(
        work.path(),
        &format!(
            "[nodes]\ntelemetry_interval = \"500ms\"\n[jobs]\nmaster_port = {master_port}\nstop_grace = \"2s\"\n"
        ),
    )?;
    supd.start()?;
    let url = supd.url();
    let _honest = start_agent(work.path(), &url, "node-good", "127.0.0.1", "sim:1", &[])?;
    let stop = Arc::new(AtomicBool::new(false));
    let evil = {
        let (url, ckpt, stop) = (url.clone(), ckpt.display().to_string(), stop.clone());
        std::thread::spawn(move || compromised_agent(url, ckpt, stop))
    };
    wait_ready_nodes(&url, 2)?;

    let spec = format!(
        "name = \"llm\"\ncommand = {command}\nnodes = 2\nmin_nodes = 1\ngpus_per_node = 1\ncheckpoint_dir = \"{ckpt}\"\ncheckpoint_layout = \"marker:COMPLETE\"\nmax_restarts = 5\n",
        command = toml_list(&trainer_command(40, 5, "0.1", 257)),
        ckpt = ckpt.display(),
    );
    let file = work.path().join("job.toml");
    std::fs::write(&file, spec)?;
    let out = supctl(&url, &["job", "submit", &file.display().to_string()])?;
    if !out.status.success() {
        bail!(
            "job submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Both refusals are said, naming the node and why.
    let refused = wait_for("two checkpoint_refused events", JOB_TIMEOUT, || {
        let events = events_of(&url, "checkpoint_refused", Some("llm"))?;
        Ok((events.len() >= 2).then_some(events))
    })?;
    let reasons: Vec<String> = refused
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(refused.iter().all(|e| e["node"] == EVIL), "{refused:#?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("elsewhere/step-11' is not inside the job's checkpoint_dir")),
        "{reasons:#?}"
    );
    // The job cannot step here (its other rank is the compromised node's),
    // so no progress bounds it: the huge step is not believed yet.
    assert!(
        reasons.iter().any(|r| r.contains(
            "not believed yet: step 18446744073709551615 is not believed before the job reports progress"
        )),
        "{reasons:#?}"
    );
    // The true newest checkpoint, found by the honest agent on disk.
    wait_for("checkpoint 10 recorded", JOB_TIMEOUT, || {
        let job = job_status(&url, "llm")?;
        Ok((job["checkpoint"]["step"] == 10).then_some(()))
    })?;

    // The compromised node is taken out; the next generation runs on the
    // honest node alone and resumes from step 10, not from anything the
    // compromised node listed.
    let out = supctl(&url, &["cordon", EVIL, "--reason", "compromised"])?;
    if !out.status.success() {
        bail!("cordon failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let restarted = wait_for(
        "the job restarted without the compromised node",
        JOB_TIMEOUT,
        || {
            let events = events_of(&url, "job_restarted", Some("llm"))?;
            Ok(events
                .into_iter()
                .find(|e| e["reason"].as_str().is_some_and(|r| r.contains(EVIL))))
        },
    )?;
    let why = restarted["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&format!(
            "resuming from step 10 ({}/step-10)",
            ckpt.display()
        )),
        "{why}"
    );
    let job = job_status(&url, "llm")?;
    assert_eq!(job["checkpoint"]["step"], 10, "{job:#}");
    stop.store(true, Ordering::Relaxed);
    evil.join()
        .map_err(|_| anyhow!("the compromised agent's thread panicked"))??;
    Ok(())
}

const FLOODER: &str = "node-flood";
const FLOOD_TRIPLES: u32 = 100_000;
const FLOOD_PER_REPORT: u32 = 1_000;

/// A forged node that registers 8 GPUs, then reports 100,000 distinct
/// (GPU index, UUID, Xid) triples, 1,000 per health report: half name GPU
/// indexes 8..15 it never registered (with made-up UUIDs), half its own
/// GPUs with ever new Xid codes. Keeps the stream open until `stop`.
fn flooding_agent(url: String, sent: Arc<AtomicBool>, stop: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (mut agent, mut inbound) = ForgedAgent::connect(
            url,
            v1::Register {
                validates: false,
                slurm_node_name: String::new(),
                node_id: FLOODER.to_owned(),
                address: "127.0.0.1".to_owned(),
                hostname: FLOODER.to_owned(),
                agent_version: "flood-test".to_owned(),
                instance_id: "flood-1".to_owned(),
                gpu_backend: "sim".to_owned(),
                gpus: (0..8)
                    .map(|i| v1::GpuInfo {
                        index: i,
                        uuid: format!("GPU-flood-{i}"),
                        name: "Simulated".to_owned(),
                        pci_bus_id: format!("00000000:{:02x}:00.0", 0x10 + i),
                        memory_total_bytes: None,
                    })
                    .collect(),
            },
        )
        .await?;
        let Some(first) = inbound.message().await? else {
            bail!("supd closed the stream before registering the flooder")
        };
        if !matches!(first.body, Some(SupervisorBody::Registered(_))) {
            bail!("expected Registered first, got {first:?}");
        }
        for report in 0..FLOOD_TRIPLES / FLOOD_PER_REPORT {
            let xids = (report * FLOOD_PER_REPORT..(report + 1) * FLOOD_PER_REPORT)
                .map(|i| {
                    let gpu = i % 16;
                    v1::XidEvent {
                        gpu_index: gpu,
                        uuid: if gpu < 8 {
                            format!("GPU-flood-{gpu}")
                        } else {
                            format!("GPU-made-up-{i}")
                        },
                        xid: 1_000 + i / 16,
                        at_unix_ms: sup_proto::time::now_unix_ms(),
                        source: "nvml".to_owned(),
                        detail: "x".repeat(64),
                        application: false,
                    }
                })
                .collect();
            agent
                .send(Body::Health(v1::HealthReport {
                    verdicts: Vec::new(),
                    xids,
                    visible_gpus: Some(8),
                }))
                .await?;
        }
        sent.store(true, Ordering::Relaxed);
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    let telemetry = v1::Telemetry {
                        sampled_at_unix_ms: sup_proto::time::now_unix_ms(),
                        gpus: Vec::new(),
                    };
                    agent.send(Body::Telemetry(telemetry)).await?;
                }
                next = inbound.message() => {
                    if next?.is_none() {
                        bail!("supd closed the stream");
                    }
                }
            }
        }
        Ok(())
    })
}

/// `sup_gpu_xids_total` series of `node` and `sup_gpu_xids_dropped_total`.
fn xid_metrics(http_port: u16, node: &str) -> Result<(usize, u64)> {
    let (code, text) = http_get(http_port, "/metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    let label = format!("node=\"{node}\"");
    let series = text
        .lines()
        .filter(|l| l.starts_with("sup_gpu_xids_total{") && l.contains(&label))
        .count();
    let dropped = text
        .lines()
        .find_map(|l| l.strip_prefix("sup_gpu_xids_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no sup_gpu_xids_dropped_total in /metrics"))?;
    Ok((series, dropped as u64))
}

#[test]
fn a_node_flooding_distinct_xids_leaves_series_events_and_memory_bounded() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), "")?;
    supd.start()?;
    let pid = supd
        .proc
        .as_ref()
        .and_then(Proc::pid)
        .ok_or_else(|| anyhow!("supd pid"))?;
    let url = supd.url();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (url, sent, stop) = (url.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || flooding_agent(url, sent, stop))
    };
    let result = (|| -> Result<()> {
        wait_for("the flooder registered", STARTUP_TIMEOUT, || {
            let status = supctl_json(&url, &["status"])?;
            Ok(status["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["id"] == FLOODER))
                .then_some(()))
        })?;
        let rss_before = rss_kib(pid)?;
        let started = std::time::Instant::now();
        // Of each report's 1,000 triples, 500 name a registered GPU and
        // UUID; 256 of them are taken (the per-report cap). Each is a new
        // code, so 32 per GPU are counted (8 × 32 series) and the rest
        // dropped.
        let taken = u64::from(FLOOD_TRIPLES / FLOOD_PER_REPORT) * 256;
        let expected_series = 8 * 32;
        let (series, dropped) = wait_for(
            "every Xid of the flood counted or dropped",
            Duration::from_secs(120),
            || {
                let (series, dropped) = xid_metrics(supd.http_port, FLOODER)?;
                Ok(
                    (sent.load(Ordering::Relaxed) && dropped + series as u64 >= taken)
                        .then_some((series, dropped)),
                )
            },
        )?;
        let took = started.elapsed();
        let rss_after = rss_kib(pid)?;
        println!(
            "flood of {FLOOD_TRIPLES} distinct (gpu, uuid, xid) triples from one node: {series} series, {dropped} dropped, {:.1} s, supd RSS {:.1} -> {:.1} MiB",
            took.as_secs_f64(),
            rss_before as f64 / 1024.0,
            rss_after as f64 / 1024.0
        );
        assert_eq!(series, expected_series);
        assert_eq!(dropped + series as u64, taken);
        assert!(
            rss_after < rss_before + 64 * 1024,
            "RSS grew from {rss_before} to {rss_after} KiB"
        );

        // The event log keeps its history: the flooder's Xids after its
        // budget are counted, not logged.
        let events = supctl_json(&url, &["events"])?;
        let events = events
            .as_array()
            .ok_or_else(|| anyhow!("events is not a list"))?;
        let logged = events
            .iter()
            .filter(|e| e["kind"] == "gpu_xid" && e["node"] == FLOODER)
            .count();
        assert!(logged <= 61, "{logged} Xid events from one node");
        assert!(
            events.iter().any(|e| e["kind"] == "gpu_xid"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("further ones are not logged"))),
            "one event says the node's Xids are no longer logged"
        );
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == "node_registered" && e["node"] == FLOODER),
            "the history before the flood is kept"
        );
        // Nothing made up appears: no GPU index the node never registered.
        let node = supctl_json(&url, &["node", FLOODER])?;
        let gpus = node["gpus"]
            .as_array()
            .ok_or_else(|| anyhow!("no gpus in {node}"))?;
        assert_eq!(gpus.len(), 8);
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let agent = flooder
        .join()
        .map_err(|_| anyhow!("the flooding agent panicked"))?;
    result?;
    if let Err(e) = agent {
        if !format!("{e:#}").contains("closed") {
            return Err(e);
        }
    }
    Ok(())
}
