//! GPU health through the agent's real NVML code path: the `sup-agent`
//! binary runs with `--gpu-backend nvml --nvml-lib libfake_nvml.so`, each
//! test rewriting the fake driver's state file, and a scripted in-process
//! supd records the HealthReports the agent sends.
//!
//! The fake library is another workspace crate (tests/fake-nvml): build it
//! first, `cargo build --workspace` (scripts/test.sh does).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use sup_proto::v1::drill::Fault;
use sup_proto::v1::supervisor_message::Body as SupervisorBody;
use sup_proto::v1::{
    AgentMessage, Drill, GpuHealth, GpuVerdict, HealthReport, NodeState, RecoveryAction, Register,
    Registered, SupervisorMessage, Telemetry,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(30);

fn fake_nvml() -> PathBuf {
    // target/<profile>/sup-agent -> target/<profile>/libfake_nvml.so
    let lib = Path::new(env!("CARGO_BIN_EXE_sup-agent"))
        .parent()
        .map(|dir| dir.join("libfake_nvml.so"))
        .expect("the agent binary lives in a directory");
    assert!(
        lib.exists(),
        "{} not found: build the fake NVML library first (`cargo build --workspace`, \
         or `cargo build -p fake-nvml`)",
        lib.display()
    );
    lib
}

/// A supd that registers every agent, optionally sends it drills, and
/// passes on whatever the agent sends.
struct FakeSupd {
    seen: mpsc::UnboundedSender<AgentMessage>,
    drills: Vec<Drill>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<SupervisorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for FakeSupd {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let node_id = match &first.body {
            Some(AgentBody::Register(r)) => r.node_id.clone(),
            _ => return Err(Status::invalid_argument("first message must be Register")),
        };
        let _ = self.seen.send(first);
        let (out, out_rx) = mpsc::channel(16);
        let registered = Registered {
            node_id,
            state: NodeState::Ready as i32,
            // Fast polling keeps the tests short.
            telemetry_interval_ms: 200,
            assignment_lease_ms: 0,
        };
        let mut bodies = vec![SupervisorBody::Registered(registered)];
        bodies.extend(self.drills.iter().cloned().map(SupervisorBody::Drill));
        for body in bodies {
            let _ = out.send(Ok(SupervisorMessage { body: Some(body) })).await;
        }
        let seen = self.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let _ = seen.send(message);
            }
            drop(out);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// One agent process against its own fake driver and fake supd.
struct Node {
    dir: tempfile::TempDir,
    agent: Child,
    seen: mpsc::UnboundedReceiver<AgentMessage>,
    /// Every Xid reported so far.
    xids: Vec<sup_proto::v1::XidEvent>,
    register: Option<Register>,
    telemetry: Option<Telemetry>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.agent.kill();
        let _ = self.agent.wait();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default();
            eprintln!("----- agent log -----\n{log}");
        }
    }
}

fn write_state(dir: &Path, state: &Value) {
    // Atomically, as the fake driver may read at any moment.
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state).expect("json")).expect("write state");
    std::fs::rename(&tmp, dir.join("state.json")).expect("rename state");
}

async fn start_node(state: Value, backend: &str, extra: &[&str], drills: Vec<Drill>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    write_state(dir.path(), &state);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let service = FakeSupd {
        seen: seen_tx,
        drills,
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("fake supd serves");
    });
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_sup-agent"));
    command
        .args(["--supervisor", &format!("http://{addr}")])
        .args(["--node-id", "gpu-node-1", "--address", "127.0.0.1"])
        .args(["--gpu-backend", backend])
        .args([
            "--state-dir",
            &dir.path().join("state").display().to_string(),
        ])
        .args(extra)
        .env("FAKE_NVML_STATE", dir.path().join("state.json"))
        .env("RUST_LOG", "info,sup_agent::health=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().expect("log")))
        .stderr(Stdio::from(log));
    if backend == "nvml" {
        command.arg("--nvml-lib").arg(fake_nvml());
    }
    let agent = command.spawn().expect("start sup-agent");
    Node {
        dir,
        agent,
        seen,
        xids: Vec::new(),
        register: None,
        telemetry: None,
    }
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn set_state(&self, state: &Value) {
        write_state(self.dir.path(), state);
    }

    /// Waits until the agent's log says `text`.
    async fn wait_log(&self, what: &str, text: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({text:?} in the agent's log):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for a health report that satisfies `check`, remembering what
    /// else goes by.
    async fn report_where(
        &mut self,
        what: &str,
        check: impl Fn(&HealthReport) -> bool,
    ) -> HealthReport {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match tokio::time::timeout(left, self.seen.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => panic!("timed out waiting for {what}; last report: {last:#?}"),
            };
            match message.body {
                Some(AgentBody::Register(register)) => self.register = Some(register),
                Some(AgentBody::Telemetry(telemetry)) => self.telemetry = Some(telemetry),
                Some(AgentBody::Health(report)) => {
                    self.xids.extend(report.xids.iter().cloned());
                    if check(&report) {
                        return report;
                    }
                    last = Some(report);
                }
                _ => {}
            }
        }
    }
}

fn health(v: &GpuVerdict) -> GpuHealth {
    GpuHealth::try_from(v.health).unwrap_or(GpuHealth::Unspecified)
}

fn gpu_is(report: &HealthReport, index: usize, expected: GpuHealth) -> bool {
    report
        .verdicts
        .get(index)
        .is_some_and(|v| health(v) == expected)
}

fn all_ok(report: &HealthReport) -> bool {
    report.verdicts.len() == 8 && report.verdicts.iter().all(|v| health(v) == GpuHealth::Ok)
}

/// Eight healthy GPUs (the fake's defaults) with `gpus` overriding the
/// first entries and extra top-level keys merged in.
fn state(gpus: Value, extra: Value) -> Value {
    let mut state = json!({ "gpu_count": 8, "gpus": gpus });
    if let (Some(state), Some(extra)) = (state.as_object_mut(), extra.as_object()) {
        state.extend(extra.clone());
    }
    state
}

#[tokio::test]
async fn registers_the_fake_drivers_eight_gpus_all_healthy() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    let report = node.report_where("eight ok verdicts", all_ok).await;
    assert_eq!(report.visible_gpus, Some(8));
    for (i, v) in report.verdicts.iter().enumerate() {
        assert_eq!(v.index, i as u32);
        assert_eq!(v.reason, "");
        assert!(v.evidence.is_empty(), "{v:?}");
        assert_eq!(v.recovery_action, RecoveryAction::None as i32, "{v:?}");
        assert!(!v.drill);
    }
    let register = node.register.clone().expect("registered first");
    assert_eq!(register.gpu_backend, "nvml");
    assert_eq!(register.gpus.len(), 8);
    for (i, gpu) in register.gpus.iter().enumerate() {
        assert_eq!(gpu.index, i as u32);
        assert_eq!(gpu.uuid, format!("GPU-fa4e0000-0000-4000-8000-{i:012x}"));
        assert_eq!(gpu.name, "NVIDIA H100 80GB HBM3");
        assert_eq!(report.verdicts[i].uuid, gpu.uuid);
        assert_eq!(gpu.memory_total_bytes, Some(85_520_809_984));
    }
    assert_eq!(register.gpus[0].pci_bus_id, "00000000:18:00.0");
    assert_eq!(register.gpus[7].pci_bus_id, "00000000:8F:00.0");
    // Telemetry flows through the same library.
    let telemetry = loop {
        if let Some(t) = node.telemetry.clone() {
            break t;
        }
        node.report_where("telemetry", |_| false).await;
    };
    assert_eq!(telemetry.gpus.len(), 8);
    assert_eq!(telemetry.gpus[0].temperature_c, Some(52.0));
    assert_eq!(telemetry.gpus[0].power_w, Some(512.0));
}

#[tokio::test]
async fn xid_79_from_the_nvml_event_set_fails_the_gpu() {
    let healthy = state(json!([]), json!({}));
    let mut node = start_node(healthy, "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    let sent = Instant::now();
    node.set_state(&state(
        json!([]),
        json!({ "xids": [{ "id": 1, "gpu": 3, "xid": 79 }] }),
    ));
    let report = node
        .report_where("GPU 3 failed", |r| gpu_is(r, 3, GpuHealth::Failed))
        .await;
    // Event-driven: well under the poll interval plus slack, not a timing
    // assertion (CI is noisy), just a sanity bound.
    assert!(sent.elapsed() < Duration::from_secs(10));
    let v = &report.verdicts[3];
    assert_eq!(
        v.reason,
        "Xid 79 (GPU has fallen off the bus): power-cycle the node"
    );
    assert!(v.evidence[0].starts_with("Xid 79 from nvml at "), "{v:?}");
    assert!(!v.drill);
    let xid = node
        .xids
        .iter()
        .find(|x| x.xid == 79)
        .expect("Xid 79 reported");
    assert_eq!(xid.gpu_index, 3);
    assert_eq!(xid.uuid, "GPU-fa4e0000-0000-4000-8000-000000000003");
    assert_eq!(xid.source, "nvml");
    assert!(!xid.application);
    assert!(report
        .verdicts
        .iter()
        .filter(|v| v.index != 3)
        .all(|v| health(v) == GpuHealth::Ok));
}

#[tokio::test]
async fn row_remap_failure_fails_the_gpu() {
    let mut node = start_node(
        state(
            json!([{}, {}, {}, {}, { "remap_failure": true, "remapped_uncorrectable": 2 }]),
            json!({}),
        ),
        "nvml",
        &[],
        Vec::new(),
    )
    .await;
    let report = node
        .report_where("GPU 4 failed", |r| gpu_is(r, 4, GpuHealth::Failed))
        .await;
    let v = &report.verdicts[4];
    assert!(v.reason.starts_with("row remapping failed"), "{v:?}");
    assert!(v.evidence[0].contains("2 uncorrectable"), "{v:?}");
}

#[tokio::test]
async fn recovery_action_node_reboot_fails_the_gpu() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    node.set_state(&state(
        json!([{}, {}, {}, {}, {}, { "recovery_action": "node_reboot" }]),
        json!({ "xids": [{ "id": 1, "gpu": 5, "xid": 154 }] }),
    ));
    let report = node
        .report_where("GPU 5 failed", |r| gpu_is(r, 5, GpuHealth::Failed))
        .await;
    let v = &report.verdicts[5];
    assert_eq!(v.recovery_action, RecoveryAction::NodeReboot as i32);
    assert_eq!(
        v.reason,
        "recovery action NODE_REBOOT (driver): reboot the node"
    );
}

#[tokio::test]
async fn a_driver_without_the_recovery_action_field_reports_it_absent() {
    let mut node = start_node(
        state(
            json!([]),
            json!({ "not_supported": ["recovery_action", "nvlink"] }),
        ),
        "nvml",
        &[],
        Vec::new(),
    )
    .await;
    let report = node.report_where("all ok", all_ok).await;
    assert!(report
        .verdicts
        .iter()
        .all(|v| v.recovery_action == RecoveryAction::Unspecified as i32));
}

#[tokio::test]
async fn a_lost_gpu_fails() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    node.set_state(&state(
        json!([{}, {}, {}, {}, {}, {}, { "lost": true }]),
        json!({}),
    ));
    let report = node
        .report_where("GPU 6 failed", |r| gpu_is(r, 6, GpuHealth::Failed))
        .await;
    let v = &report.verdicts[6];
    assert!(v.reason.starts_with("GPU lost (NVML: "), "{v:?}");
    // The others are untouched.
    assert_eq!(
        report
            .verdicts
            .iter()
            .filter(|v| health(v) == GpuHealth::Ok)
            .count(),
        7
    );
}

#[tokio::test]
async fn a_gpu_dropping_out_of_the_count_fails_as_missing() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    node.set_state(&state(json!([]), json!({ "visible_gpus": 7 })));
    let report = node
        .report_where("GPU 7 failed", |r| gpu_is(r, 7, GpuHealth::Failed))
        .await;
    assert_eq!(report.visible_gpus, Some(7));
    assert!(
        report.verdicts[7]
            .reason
            .starts_with("GPU missing: NVML sees 7 of the 8"),
        "{:?}",
        report.verdicts[7]
    );
}

#[tokio::test]
async fn a_pcie_width_downgrade_degrades_only() {
    let mut node = start_node(
        state(json!([{}, {}, { "pcie_width": 8 }]), json!({})),
        "nvml",
        &[],
        Vec::new(),
    )
    .await;
    let report = node
        .report_where("GPU 2 degraded", |r| gpu_is(r, 2, GpuHealth::Degraded))
        .await;
    assert_eq!(
        report.verdicts[2].reason,
        "PCIe link x8 of x16: check the slot, riser and cable"
    );
    assert!(!report
        .verdicts
        .iter()
        .any(|v| health(v) == GpuHealth::Failed));
}

#[tokio::test]
async fn one_xid_13_is_the_applications_fault_not_the_gpus() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    node.set_state(&state(
        json!([]),
        json!({ "xids": [{ "id": 7, "gpu": 1, "xid": 13 }] }),
    ));
    let report = node
        .report_where("the Xid 13 report", |r| r.xids.iter().any(|x| x.xid == 13))
        .await;
    let xid = &report.xids[0];
    assert_eq!(
        (xid.gpu_index, xid.xid, xid.source.as_str()),
        (1, 13, "nvml")
    );
    assert!(xid.application, "Xid 13 is an application Xid");
    assert!(all_ok(&report), "{report:#?}");
}

#[tokio::test]
async fn kernel_log_xids_are_attributed_by_pci_address_and_merged_with_nvml() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("kern.log");
    std::fs::write(&log, "").expect("create log");
    let spec = format!("file:{}", log.display());
    let mut node = start_node(
        state(json!([]), json!({})),
        "nvml",
        &["--kernel-log", &spec],
        Vec::new(),
    )
    .await;
    node.report_where("all ok", all_ok).await;
    // The follower reads from the file's end once it has opened it.
    node.wait_log(
        "the kernel log follower open",
        "following the kernel log file",
    )
    .await;
    // GPU 2 sits at 00000000:3A:00.0 (0x18 + 2 * 0x11): the kernel writes it
    // in lower case without the function.
    let line = "[ 99.1] NVRM: Xid (PCI:0000:3a:00): 48, pid=42, name=python, An uncorrectable double bit error (DBE) has been detected\n";
    append(&log, line);
    let report = node
        .report_where("GPU 2 failed", |r| gpu_is(r, 2, GpuHealth::Failed))
        .await;
    let xid = report
        .xids
        .iter()
        .find(|x| x.xid == 48)
        .expect("Xid 48 in the report");
    assert_eq!(xid.source, "kernel_log");
    assert_eq!(xid.gpu_index, 2);
    assert!(xid.detail.starts_with("pid=42, name=python"), "{xid:?}");

    // NVML's copy of the same Xid, moments later: merged, not counted twice.
    node.set_state(&state(
        json!([]),
        json!({ "xids": [{ "id": 1, "gpu": 2, "xid": 48 }] }),
    ));
    node.wait_log(
        "NVML's copy of Xid 48 merged",
        "Xid already seen from the other source",
    )
    .await;
    append(
        &log,
        "NVRM: Xid (PCI:0000:29:00): 31, pid=43, name=python, Ch 00000008\n",
    );
    node.report_where("the Xid 31 on GPU 1", |r| {
        r.xids.iter().any(|x| x.xid == 31)
    })
    .await;
    let xid48: Vec<_> = node.xids.iter().filter(|x| x.xid == 48).collect();
    assert_eq!(
        xid48.len(),
        1,
        "one Xid 48, from whichever source came first: {xid48:?}"
    );
    assert!(
        node.log()
            .contains("Xid already seen from the other source"),
        "NVML's copy arrived and was merged:\n{}",
        node.log()
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open log");
    file.write_all(text.as_bytes()).expect("append");
}

#[tokio::test]
async fn drills_act_only_with_allow_drills() {
    let drill = |gpu_index, fault| Drill {
        gpu_index,
        fault: Some(fault),
        by: "gpu-health-test".into(),
        ..Default::default()
    };
    let drills = vec![
        drill(0, Fault::Xid(79)),
        drill(4, Fault::RecoveryAction(RecoveryAction::DrainP2p as i32)),
    ];
    let mut node = start_node(json!({}), "sim:8", &["--allow-drills"], drills.clone()).await;
    let report = node
        .report_where("the drills applied", |r| {
            gpu_is(r, 0, GpuHealth::Failed) && gpu_is(r, 4, GpuHealth::Degraded)
        })
        .await;
    assert!(report.verdicts[0].drill && report.verdicts[4].drill);
    assert!(
        report.verdicts[0].reason.starts_with("Xid 79"),
        "{:?}",
        report.verdicts[0]
    );
    let xid = node
        .xids
        .iter()
        .find(|x| x.xid == 79)
        .expect("drill Xid reported");
    assert_eq!(xid.source, "drill");

    // The same drills to an agent without the flag: refused, all healthy.
    let mut node = start_node(json!({}), "sim:8", &[], drills).await;
    node.report_where("all ok", all_ok).await;
    let deadline = Instant::now() + WAIT;
    while !node.log().contains("drill refused") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while let Ok(message) = node.seen.try_recv() {
        if let Some(AgentBody::Health(report)) = message.body {
            assert!(
                all_ok(&report),
                "a refused drill changed health: {report:#?}"
            );
        }
    }
}

#[tokio::test]
async fn nvlink_down_and_hardware_throttling_degrade() {
    let mut node = start_node(state(json!([]), json!({})), "nvml", &[], Vec::new()).await;
    node.report_where("all ok", all_ok).await;
    // Links come up first, then one goes down: that is a fault. (A GPU
    // whose links were never up has no NVLink in use and is not judged.)
    node.set_state(&state(
        json!([{}, { "nvlink_down": [3] }, { "throttle_reasons": 0x48 }]),
        json!({}),
    ));
    let report = node
        .report_where("GPUs 1 and 2 degraded", |r| {
            gpu_is(r, 1, GpuHealth::Degraded) && gpu_is(r, 2, GpuHealth::Degraded)
        })
        .await;
    assert_eq!(
        report.verdicts[1].reason,
        "NVLink link(s) 3 down of 18: check the NVLink fabric"
    );
    assert_eq!(
        report.verdicts[2].reason,
        "clocks throttled (hw_slowdown, hw_thermal_slowdown): check cooling and power"
    );
}

#[tokio::test]
async fn a_gpu_failed_by_xid_79_is_ok_again_after_a_reset_without_an_agent_restart() {
    let mut node = start_node(
        state(json!([]), json!({})),
        "nvml",
        &["--reset-settle", "1s"],
        Vec::new(),
    )
    .await;
    node.report_where("all ok", all_ok).await;

    // GPU 3 falls off the bus; GPU 5 takes a double-bit ECC error and the
    // driver asks for a reset that never comes.
    let xids =
        json!({ "xids": [{ "id": 1, "gpu": 3, "xid": 79 }, { "id": 2, "gpu": 5, "xid": 48 }] });
    node.set_state(&state(
        json!([{}, {}, {}, { "lost": true }, {}, { "recovery_action": "gpu_reset" }]),
        xids.clone(),
    ));
    // Lost in the evidence: the agent has seen the GPU down, not just its Xid.
    let report = node
        .report_where("GPU 3 failed and seen lost, GPU 5 failed", |r| {
            gpu_is(r, 3, GpuHealth::Failed)
                && r.verdicts[3]
                    .evidence
                    .iter()
                    .any(|e| e.starts_with("NVML: "))
                && gpu_is(r, 5, GpuHealth::Failed)
        })
        .await;
    assert!(
        report.verdicts[3].reason.starts_with("Xid 79"),
        "{:?}",
        report.verdicts[3]
    );

    // The reset: GPU 3 answers again and the driver asks for nothing. The
    // Xid list stays as it was: each event is delivered once.
    node.set_state(&state(
        json!([{}, {}, {}, {}, {}, { "recovery_action": "gpu_reset" }]),
        xids,
    ));
    let settling = node
        .report_where("GPU 3 settling after its reset", |r| {
            r.verdicts[3]
                .evidence
                .iter()
                .any(|e| e.starts_with("GPU answering again with recovery action NONE"))
        })
        .await;
    assert_eq!(
        health(&settling.verdicts[3]),
        GpuHealth::Failed,
        "still failed while it settles: {:?}",
        settling.verdicts[3]
    );
    let report = node
        .report_where("GPU 3 ok again", |r| gpu_is(r, 3, GpuHealth::Ok))
        .await;
    let v = &report.verdicts[3];
    assert_eq!(v.reason, "");
    assert_eq!(v.evidence.len(), 1, "{v:?}");
    assert!(
        v.evidence[0].starts_with("GPU reset and recovered at ")
            && v.evidence[0].contains("was lost (NVML: ")
            && v.evidence[0].contains("no new Xid for 1s")
            && v.evidence[0].contains("cleared Xid 79 from nvml at "),
        "{v:?}"
    );
    assert_eq!(v.recovery_action, RecoveryAction::None as i32);
    // No reset for GPU 5: its failure stands.
    assert_eq!(health(&report.verdicts[5]), GpuHealth::Failed);
    assert_eq!(
        report.verdicts[5].recovery_action,
        RecoveryAction::GpuReset as i32
    );

    // The same agent process did it all.
    assert!(
        node.agent.try_wait().expect("agent status").is_none(),
        "the agent exited:\n{}",
        node.log()
    );
    assert_eq!(node.log().matches("sup-agent starting").count(), 1);
    node.wait_log(
        "the recovery logged",
        "GPU reset and recovered: its latched failure is cleared",
    )
    .await;
}
