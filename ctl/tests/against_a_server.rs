//! supctl against a real gRPC server on loopback (a scripted stand-in for
//! supd), and the built binary against addresses where nothing answers: the
//! exit codes and one-line errors are what scripts and operators rely on.

// Test support code outside #[test] fns: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;
use sup_proto::v1;
use sup_proto::v1::control_service_server::{ControlService, ControlServiceServer};
use supctl::cli::Cli;
use supctl::error::{exit, CtlError};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

struct FakeSupd {
    cordon: Mutex<Option<v1::Cordon>>,
    slow: Duration,
}

impl FakeSupd {
    fn node(&self) -> v1::Node {
        let cordon = self.cordon.lock().unwrap().clone();
        v1::Node {
            id: "n1".into(),
            address: "10.0.0.1".into(),
            state: if cordon.is_some() {
                v1::NodeState::Cordoned
            } else {
                v1::NodeState::Ready
            } as i32,
            gpus: vec![v1::Gpu {
                index: 0,
                uuid: "GPU-0".into(),
                name: "H100".into(),
                health: v1::GpuHealth::Ok as i32,
                ..Default::default()
            }],
            cordon,
            ..Default::default()
        }
    }

    fn check_node(id: &str) -> Result<(), Status> {
        if id == "n1" {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown node '{id}'")))
        }
    }
}

#[tonic::async_trait]
impl ControlService for FakeSupd {
    async fn get_status(
        &self,
        _: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::ClusterStatus>, Status> {
        tokio::time::sleep(self.slow).await;
        Ok(Response::new(v1::ClusterStatus {
            nodes: vec![self.node()],
            jobs: vec![],
            spares: vec!["n1".into()],
            ..Default::default()
        }))
    }

    async fn get_node(
        &self,
        req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        Self::check_node(&req.get_ref().node_id)?;
        Ok(Response::new(self.node()))
    }

    async fn cordon(
        &self,
        req: Request<v1::CordonRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let req = req.into_inner();
        Self::check_node(&req.node_id)?;
        if req.reason.is_empty() {
            return Err(Status::invalid_argument("a cordon needs a reason"));
        }
        let changed = {
            let mut c = self.cordon.lock().unwrap();
            let changed = c.is_none();
            if changed {
                *c = Some(v1::Cordon {
                    reason: req.reason,
                    by: req.by,
                    at_unix_ms: 1_000,
                });
            }
            changed
        };
        let message = if changed {
            "cordoned".to_owned()
        } else {
            "node 'n1' is already cordoned".to_owned()
        };
        Ok(Response::new(v1::CordonResponse {
            node: Some(self.node()),
            changed,
            message,
        }))
    }

    async fn uncordon(
        &self,
        req: Request<v1::UncordonRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        Self::check_node(&req.get_ref().node_id)?;
        let changed = self.cordon.lock().unwrap().take().is_some();
        Ok(Response::new(v1::CordonResponse {
            node: Some(self.node()),
            changed,
            message: String::new(),
        }))
    }

    async fn submit_job(
        &self,
        _: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn stop_job(
        &self,
        _: Request<v1::StopJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_job(&self, _: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_checkpoints(
        &self,
        _: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn get_logs(
        &self,
        _: Request<v1::GetLogsRequest>,
    ) -> Result<Response<v1::LogResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn start_drill(
        &self,
        _: Request<v1::DrillRequest>,
    ) -> Result<Response<v1::DrillResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn reset_breaker(
        &self,
        _: Request<v1::ResetBreakerRequest>,
    ) -> Result<Response<v1::ResetBreakerResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn list_events(
        &self,
        _: Request<v1::ListEventsRequest>,
    ) -> Result<Response<v1::ListEventsResponse>, Status> {
        // Deliberately newest first: supctl must still print oldest first.
        Ok(Response::new(v1::ListEventsResponse {
            events: vec![
                v1::Event {
                    seq: 2,
                    at_unix_ms: 2_000,
                    kind: "node_cordoned".into(),
                    node: "n1".into(),
                    reason: "xid 79".into(),
                    ..Default::default()
                },
                v1::Event {
                    seq: 1,
                    at_unix_ms: 1_000,
                    kind: "supervisor_started".into(),
                    ..Default::default()
                },
            ],
        }))
    }
}

async fn serve(slow: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ControlServiceServer::new(FakeSupd {
        cordon: Mutex::new(None),
        slow,
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// Runs supctl in-process; returns its stdout or its error.
async fn supctl(addr: SocketAddr, args: &[&str]) -> Result<String, CtlError> {
    let url = format!("http://{addr}");
    let argv = ["supctl", "--supervisor", &url, "--timeout", "2s"];
    let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
    let mut out = Vec::new();
    supctl::execute(&cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn status_and_nodes_print_the_shared_json_shapes() {
    let addr = serve(Duration::ZERO).await;
    let status = json(&supctl(addr, &["status", "-o", "json"]).await.unwrap());
    assert_eq!(status["nodes"][0]["id"], "n1");
    assert_eq!(status["nodes"][0]["state"], "ready");
    assert_eq!(status["nodes"][0]["job"], serde_json::Value::Null);
    assert_eq!(status["spares"], serde_json::json!(["n1"]));
    assert_eq!(status["jobs"], serde_json::json!([]));

    let nodes = json(&supctl(addr, &["nodes", "-o", "json"]).await.unwrap());
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["gpus"][0]["health"], "ok");

    let table = supctl(addr, &["status"]).await.unwrap();
    assert!(
        table.starts_with("1 node: 1 ready; 1 spare; 0 jobs\n"),
        "{table}"
    );
}

#[tokio::test]
async fn unknown_node_is_not_found_and_names_the_node() {
    let addr = serve(Duration::ZERO).await;
    for args in [
        &["node", "nope"][..],
        &["cordon", "nope", "--reason", "test"][..],
        &["uncordon", "nope"][..],
    ] {
        let err = supctl(addr, args).await.unwrap_err();
        assert_eq!(err.exit_code(), exit::NOT_FOUND, "{args:?}");
        assert_eq!(err.to_string(), "unknown node 'nope'");
    }
}

#[tokio::test]
async fn cordon_then_repeat_then_uncordon() {
    let addr = serve(Duration::ZERO).await;
    let out = supctl(
        addr,
        &["cordon", "n1", "--reason", "xid 79", "--by", "alice"],
    )
    .await
    .unwrap();
    assert_eq!(out, "node n1 cordoned: xid 79\n");

    let again = json(
        &supctl(addr, &["cordon", "n1", "--reason", "xid 79", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(again["changed"], false);
    assert_eq!(again["message"], "node 'n1' is already cordoned");
    assert_eq!(again["node"]["cordon"]["by"], "alice");
    assert_eq!(again["node"]["cordon"]["reason"], "xid 79");

    let node = supctl(addr, &["node", "n1"]).await.unwrap();
    assert!(node.contains("Cordon reason: xid 79"), "{node}");

    let out = supctl(addr, &["uncordon", "n1", "--reason", "repaired"])
        .await
        .unwrap();
    assert_eq!(out, "node n1 uncordoned: repaired\n");
    let out = supctl(addr, &["uncordon", "n1"]).await.unwrap();
    assert_eq!(out, "node n1 was not cordoned; nothing changed\n");
}

#[tokio::test]
async fn events_come_oldest_first_with_nulls() {
    let addr = serve(Duration::ZERO).await;
    let events = json(&supctl(addr, &["events", "-o", "json"]).await.unwrap());
    let seqs: Vec<u64> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(events[0]["node"], serde_json::Value::Null);
    assert_eq!(events[1]["node"], "n1");
}

#[tokio::test]
async fn a_slow_supervisor_is_reported_as_unreachable() {
    let addr = serve(Duration::from_secs(5)).await;
    let url = format!("http://{addr}");
    let cli = Cli::try_parse_from([
        "supctl",
        "--supervisor",
        &url,
        "--timeout",
        "300ms",
        "status",
    ])
    .unwrap();
    let err = supctl::execute(&cli, &mut Vec::new()).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
    assert!(err.to_string().contains("no answer within 300ms"), "{err}");
}

#[tokio::test]
async fn a_peer_that_never_speaks_is_reported_as_unreachable() {
    // Accepts TCP connections and never answers the HTTP/2 handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let url = format!("http://{addr}");
    let cli = Cli::try_parse_from([
        "supctl",
        "--supervisor",
        &url,
        "--timeout",
        "300ms",
        "nodes",
    ])
    .unwrap();
    let started = std::time::Instant::now();
    let err = supctl::execute(&cli, &mut Vec::new()).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn binary_exits_3_with_one_line_when_nothing_listens() {
    // Bind then drop to get a loopback port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
        .args(["--supervisor", &url, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNREACHABLE)));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "supctl: error: cannot reach the supervisor at {url}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("SUP_SUPERVISOR"), "{stderr}");
}

#[test]
fn binary_takes_the_supervisor_from_the_environment() {
    let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
        .env("SUP_SUPERVISOR", "http://127.0.0.1:1")
        .args(["nodes", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNREACHABLE)));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("http://127.0.0.1:1"), "{stderr}");
}

#[test]
fn binary_exits_2_on_usage_errors() {
    for args in [
        &["cordon", "n1"][..],
        &["cordon", "n1", "--reason", ""][..],
        &["--timeout", "soon", "status"][..],
        &["frobnicate"][..],
    ] {
        let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(i32::from(exit::USAGE)), "{args:?}");
    }
}
