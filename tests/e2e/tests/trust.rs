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
const EVIL: &str = "node-evil";

/// The compromised node: registers with one GPU, says every assignment is
/// launched, lists the hostile catalog for its job, and keeps reporting
/// until `stop`.
fn compromised_agent(url: String, ckpt: String, stop: Arc<AtomicBool>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await
            .context("connecting to supd")?;
        let mut client = v1::agent_service_client::AgentServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::AgentMessage>(16);
        let mut seq = 0;
        let mut message = move |body: Body| {
            seq += 1;
            v1::AgentMessage {
                seq,
                body: Some(body),
            }
        };
        tx.send(message(Body::Register(v1::Register {
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
        })))
        .await?;
        let mut inbound = client
            .session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick() => {
                    let telemetry = v1::Telemetry {
                        sampled_at_unix_ms: sup_proto::time::now_unix_ms(),
                        gpus: Vec::new(),
                    };
                    tx.send(message(Body::Telemetry(telemetry))).await?;
                }
                next = inbound.message() => {
                    let Some(msg) = next? else { bail!("supd closed the stream") };
                    let Some(SupervisorBody::Assignment(a)) = msg.body else { continue };
                    let Some(job) = a.job else { continue };
                    tx.send(message(Body::Ranks(v1::RankStatus {
                        job: job.job.clone(),
                        generation: a.generation,
                        running_local_ranks: vec![0],
                        launched: true,
                        launch_error: String::new(),
                    })))
                    .await?;
                    tx.send(message(Body::Checkpoints(v1::CheckpointCatalog {
                        job: job.job,
                        checkpoints: vec![
                            v1::Checkpoint {
                                step: 11,
                                path: format!("{ckpt}/../elsewhere/step-11"),
                            },
                            v1::Checkpoint {
                                step: u64::MAX,
                                path: format!("{ckpt}/step-huge"),
                            },
                        ],
                    })))
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
