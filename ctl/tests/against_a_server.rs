//! supctl against a real gRPC server on loopback (a scripted stand-in for
//! supd), and the built binary against addresses where nothing answers: the
//! exit codes and one-line errors are what scripts and operators rely on.

// Test support code outside #[test] fns: a panic here is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command as Process;
use std::sync::{Arc, Mutex};
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
    jobs: Mutex<Vec<v1::Job>>,
    breaker: Mutex<v1::Breaker>,
    /// What supctl sent, so tests can check the request and not only the output.
    submitted: Mutex<Vec<v1::SubmitJobRequest>>,
    drills: Mutex<Vec<v1::DrillRequest>>,
    breaker_resets: Mutex<Vec<v1::ResetBreakerRequest>>,
    stops: Mutex<Vec<v1::StopJobRequest>>,
    node_pages: Mutex<Vec<v1::ListNodesRequest>>,
    job_pages: Mutex<Vec<v1::ListJobsRequest>>,
}

const SPEC: &str = "name = \"llm-7b\"\ncommand = [\"python3\", \"train.py\"]\nnodes = 2\n";

fn running_job() -> v1::Job {
    v1::Job {
        name: "llm-7b".into(),
        state: "running".into(),
        generation: 4,
        world_size: 16,
        nodes: vec!["n1".into(), "n2".into()],
        step: Some(1200),
        checkpoint: Some(v1::Checkpoint {
            step: 1000,
            path: "/ckpt/llm-7b/step-1000".into(),
            ..Default::default()
        }),
        restarts: 1,
        spec_toml: SPEC.into(),
        desired_nodes: 2,
        min_nodes: 1,
        priority: "normal".into(),
        submitted_at_unix_ms: 1_000,
        ..Default::default()
    }
}

/// The value of `name = "..."` in a spec: enough TOML for a stand-in.
fn spec_name(spec: &str) -> Option<String> {
    spec.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "name").then(|| value.trim().trim_matches('"').to_owned())
    })
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

    fn job(&self, name: &str) -> Result<v1::Job, Status> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .find(|j| j.name == name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("unknown job '{name}'")))
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
            jobs: self.jobs.lock().unwrap().clone(),
            spares: vec!["n1".into()],
            breaker: Some(self.breaker.lock().unwrap().clone()),
            spares_target: 2,
            spares_lent: Vec::new(),
            ..Default::default()
        }))
    }

    /// Five nodes (n1 as `node()`, n2..n5 ready, n4 holding llm-7b), at
    /// most two to a page; the token is the last id sent.
    async fn list_nodes(
        &self,
        req: Request<v1::ListNodesRequest>,
    ) -> Result<Response<v1::ListNodesResponse>, Status> {
        let req = req.into_inner();
        self.node_pages.lock().unwrap().push(req.clone());
        let after = match req.continue_token.as_str() {
            "" => String::new(),
            t => t
                .strip_prefix("after:")
                .map(str::to_owned)
                .ok_or_else(|| Status::invalid_argument(format!("invalid continue token '{t}'")))?,
        };
        let mut all = vec![self.node()];
        for id in ["n2", "n3", "n4", "n5"] {
            all.push(v1::Node {
                id: id.into(),
                state: v1::NodeState::Ready as i32,
                job: if id == "n4" {
                    "llm-7b".into()
                } else {
                    String::new()
                },
                ..Default::default()
            });
        }
        let matching: Vec<v1::Node> = all
            .into_iter()
            .filter(|n| n.id > after)
            .filter(|n| req.states.is_empty() || req.states.contains(&n.state))
            .filter(|n| req.job.is_empty() || n.job == req.job)
            .collect();
        // Like supd, it cuts a larger limit to its largest page.
        let limit = if req.limit == 0 {
            2
        } else {
            (req.limit as usize).min(2)
        };
        let nodes: Vec<v1::Node> = matching.iter().take(limit).cloned().collect();
        let remaining = matching.len() - nodes.len();
        Ok(Response::new(v1::ListNodesResponse {
            next_continue_token: match nodes.last() {
                Some(last) if remaining > 0 => format!("after:{}", last.id),
                _ => String::new(),
            },
            nodes,
            remaining: u32::try_from(remaining).unwrap(),
        }))
    }

    /// The jobs by name, at most two to a page; the token is the last name.
    async fn list_jobs(
        &self,
        req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let req = req.into_inner();
        self.job_pages.lock().unwrap().push(req.clone());
        let after = req
            .continue_token
            .strip_prefix("after:")
            .unwrap_or_default()
            .to_owned();
        let mut matching: Vec<v1::Job> = self
            .jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|j| j.name > after)
            .filter(|j| req.states.is_empty() || req.states.contains(&j.state))
            .cloned()
            .collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        let limit = if req.limit == 0 {
            2
        } else {
            (req.limit as usize).min(2)
        };
        let jobs: Vec<v1::Job> = matching.iter().take(limit).cloned().collect();
        let remaining = matching.len() - jobs.len();
        Ok(Response::new(v1::ListJobsResponse {
            next_continue_token: match jobs.last() {
                Some(last) if remaining > 0 => format!("after:{}", last.name),
                _ => String::new(),
            },
            jobs,
            remaining: u32::try_from(remaining).unwrap(),
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
                    validation: String::new(),
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
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let req = req.into_inner();
        self.submitted.lock().unwrap().push(req.clone());
        let name = spec_name(&req.spec_toml)
            .ok_or_else(|| Status::invalid_argument("job spec: missing field `name`"))?;
        if !req
            .spec_toml
            .lines()
            .any(|l| l.trim_start().starts_with("command"))
        {
            return Err(Status::invalid_argument(
                "job spec: missing field `command`",
            ));
        }
        let mut jobs = self.jobs.lock().unwrap();
        if jobs.iter().any(|j| j.name == name) {
            return Err(Status::already_exists(format!(
                "job '{name}' already exists"
            )));
        }
        let job = v1::Job {
            name: name.clone(),
            state: "pending".into(),
            reason: "waiting for nodes".into(),
            spec_toml: req.spec_toml,
            desired_nodes: 2,
            ..Default::default()
        };
        jobs.push(job.clone());
        Ok(Response::new(v1::JobResponse {
            job: Some(job),
            changed: true,
            message: format!("job '{name}' accepted"),
        }))
    }

    async fn stop_job(
        &self,
        req: Request<v1::StopJobRequest>,
    ) -> Result<Response<v1::JobResponse>, Status> {
        let req = req.into_inner();
        self.stops.lock().unwrap().push(req.clone());
        let mut jobs = self.jobs.lock().unwrap();
        let job = jobs
            .iter_mut()
            .find(|j| j.name == req.name)
            .ok_or_else(|| Status::not_found(format!("unknown job '{}'", req.name)))?;
        let changed = job.state != "stopped";
        job.state = "stopped".into();
        job.reason = req.reason;
        let message = if changed {
            String::new()
        } else {
            format!("job '{}' is already stopped", req.name)
        };
        Ok(Response::new(v1::JobResponse {
            job: Some(job.clone()),
            changed,
            message,
        }))
    }

    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        self.job(&req.get_ref().name).map(Response::new)
    }

    async fn list_checkpoints(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        self.job(&req.get_ref().name)?;
        // Deliberately newest first: supctl must still print oldest first.
        let checkpoints = [1000, 500]
            .into_iter()
            .map(|step| v1::Checkpoint {
                step,
                path: format!("/ckpt/llm-7b/step-{step}"),
                verified: format!("dcp .metadata: {} storage files", step / 250),
            })
            .collect();
        Ok(Response::new(v1::ListCheckpointsResponse { checkpoints }))
    }

    async fn get_logs(
        &self,
        req: Request<v1::GetLogsRequest>,
    ) -> Result<Response<v1::LogResponse>, Status> {
        let req = req.into_inner();
        self.job(&req.job)?;
        // The agent's answer travels back inside a successful RPC, so an
        // unreadable log is `error`, not a gRPC status.
        let res = if req.rank < 16 {
            let lines: Vec<String> = (1..=req.lines)
                .map(|i| format!("rank {} step {i}", req.rank))
                .collect();
            v1::LogResponse {
                request_id: 1,
                text: lines.join("\n"),
                error: String::new(),
            }
        } else {
            v1::LogResponse {
                request_id: 1,
                text: String::new(),
                error: format!("job 'llm-7b' has no rank {}", req.rank),
            }
        };
        Ok(Response::new(res))
    }

    async fn start_drill(
        &self,
        req: Request<v1::DrillRequest>,
    ) -> Result<Response<v1::DrillResponse>, Status> {
        let req = req.into_inner();
        Self::check_node(&req.node_id)?;
        let gpu = req.drill.as_ref().map(|d| d.gpu_index).unwrap_or(0);
        if gpu >= 8 {
            return Err(Status::invalid_argument(format!(
                "node '{}' has no GPU {gpu}",
                req.node_id
            )));
        }
        self.drills.lock().unwrap().push(req.clone());
        Ok(Response::new(v1::DrillResponse {
            message: format!("drill sent to node '{}' (GPU {gpu})", req.node_id),
        }))
    }

    async fn drain(
        &self,
        req: Request<v1::DrainRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let r = req.into_inner();
        Ok(Response::new(v1::CordonResponse {
            node: None,
            changed: true,
            message: format!(
                "node '{}' is draining: deadline {} ms",
                r.node_id, r.deadline_ms
            ),
        }))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::CordonResponse>, Status> {
        let r = req.into_inner();
        if r.node_id == "busy" {
            return Err(Status::invalid_argument(
                "node 'busy' holds job 'llm': drain or cordon it and wait for the job to move off first",
            ));
        }
        Ok(Response::new(v1::CordonResponse {
            node: None,
            changed: true,
            message: format!("node '{}' removed", r.node_id),
        }))
    }

    async fn reset_breaker(
        &self,
        req: Request<v1::ResetBreakerRequest>,
    ) -> Result<Response<v1::ResetBreakerResponse>, Status> {
        self.breaker_resets
            .lock()
            .unwrap()
            .push(req.get_ref().clone());
        let mut breaker = self.breaker.lock().unwrap();
        let changed = breaker.open;
        *breaker = v1::Breaker::default();
        let message = if changed {
            format!("breaker reset by {}", req.get_ref().by)
        } else {
            "the breaker is closed; nothing to reset".to_owned()
        };
        Ok(Response::new(v1::ResetBreakerResponse { changed, message }))
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
            omitted: 0,
        }))
    }
}

async fn serve(slow: Duration) -> SocketAddr {
    serve_fake(slow).await.0
}

/// Serves a stand-in supd; the returned handle shows what it was sent.
async fn serve_fake(slow: Duration) -> (SocketAddr, Arc<FakeSupd>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = fake_supd(slow);
    let svc = ControlServiceServer::from_arc(Arc::clone(&fake));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (addr, fake)
}

fn fake_supd(slow: Duration) -> Arc<FakeSupd> {
    Arc::new(FakeSupd {
        cordon: Mutex::new(None),
        slow,
        jobs: Mutex::new(vec![running_job()]),
        breaker: Mutex::new(v1::Breaker {
            open: true,
            reason: "3 of 4 nodes in 60s".into(),
            since_unix_ms: 1_000,
        }),
        submitted: Mutex::new(Vec::new()),
        drills: Mutex::new(Vec::new()),
        breaker_resets: Mutex::new(Vec::new()),
        stops: Mutex::new(Vec::new()),
        node_pages: Mutex::new(Vec::new()),
        job_pages: Mutex::new(Vec::new()),
    })
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
    assert_eq!(status["spares_target"], 2);
    assert_eq!(status["breaker"]["state"], "open");
    assert_eq!(status["breaker"]["since"], "1970-01-01T00:00:01.000Z");
    assert_eq!(status["jobs"][0]["name"], "llm-7b");

    let nodes = json(&supctl(addr, &["nodes", "-o", "json"]).await.unwrap());
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 2, "{nodes}");
    assert_eq!(nodes["nodes"][0]["gpus"][0]["health"], "ok");
    assert_eq!(nodes["continue"], "after:n2");
    assert_eq!(nodes["remaining"], 3);

    let table = supctl(addr, &["status"]).await.unwrap();
    assert!(
        table.starts_with("1 node: 1 ready; spares 1/target 2; 1 job\n"),
        "{table}"
    );
    let attention: Vec<&str> = table
        .lines()
        .skip_while(|l| *l != "Needs attention:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(attention.len(), 2, "{table}");
    assert!(attention[0].contains("breaker"), "{table}");
    assert!(attention[0].contains("3 of 4 nodes in 60s"), "{table}");
    assert!(attention[1].contains("below target"), "{table}");
}

#[tokio::test]
async fn nodes_follow_the_pages_they_are_asked_for() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    let ids = |v: &serde_json::Value| -> Vec<String> {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let all = json(
        &supctl(addr, &["nodes", "--all", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(ids(&all), ["n1", "n2", "n3", "n4", "n5"]);
    assert_eq!(all["continue"], serde_json::Value::Null);
    let sent: Vec<(u32, String)> = fake
        .node_pages
        .lock()
        .unwrap()
        .drain(..)
        .map(|r| (r.limit, r.continue_token))
        .collect();
    assert_eq!(
        sent,
        [
            (1000, String::new()),
            (1000, "after:n2".into()),
            (1000, "after:n4".into())
        ]
    );

    // --limit 3 takes two pages of the rest and says how to go on.
    let table = supctl(addr, &["nodes", "--limit", "3"]).await.unwrap();
    assert!(table.contains("n3") && !table.contains("n4 "), "{table}");
    assert!(
        table.ends_with(
            "2 nodes more; next page: supctl nodes --limit 3 --continue after:n3 (or --all)\n"
        ),
        "{table}"
    );
    let next = json(
        &supctl(addr, &["nodes", "--continue", "after:n3", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(ids(&next), ["n4", "n5"]);

    let llm = json(
        &supctl(
            addr,
            &["nodes", "--job", "llm-7b", "--state", "ready", "-o", "json"],
        )
        .await
        .unwrap(),
    );
    assert_eq!(ids(&llm), ["n4"]);
    let req = fake.node_pages.lock().unwrap().last().cloned().unwrap();
    assert_eq!(req.states, [v1::NodeState::Ready as i32]);
    assert_eq!(req.job, "llm-7b");

    let none = supctl(addr, &["nodes", "--state", "cordoned"])
        .await
        .unwrap();
    assert_eq!(none, "No nodes match.\n");

    let err = supctl(addr, &["nodes", "--continue", "garbage"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED, "{err}");
    assert!(
        err.to_string().contains("invalid continue token 'garbage'"),
        "{err}"
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
async fn drain_sends_its_deadline_and_node_remove_is_refused_with_exit_5() {
    let addr = serve(Duration::ZERO).await;
    let out = supctl(
        addr,
        &["drain", "n1", "--reason", "bios", "--deadline", "45m"],
    )
    .await
    .unwrap();
    assert_eq!(out, "node 'n1' is draining: deadline 2700000 ms\n");
    let err = supctl(addr, &["node", "remove", "busy"]).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED);
    assert!(err.to_string().contains("holds job 'llm'"), "{err}");
    let out = supctl(addr, &["node", "remove", "n9"]).await.unwrap();
    assert_eq!(out, "node n9 removed\n");
    // `node NODE` still shows a node.
    let node = supctl(addr, &["node", "n1"]).await.unwrap();
    assert!(node.contains("Node:"), "{node}");
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

/// A port on loopback where nothing listens.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

fn spec_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    f
}

#[tokio::test]
async fn jobs_prints_a_table_and_the_shared_job_views() {
    let addr = serve(Duration::ZERO).await;
    let table = supctl(addr, &["jobs"]).await.unwrap();
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("llm-7b"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row,
        ["llm-7b", "running", "4", "16", "2/2", "1200", "-", "-", "1000", "1", "-"],
        "{table}"
    );
    let jobs = json(&supctl(addr, &["jobs", "-o", "json"]).await.unwrap());
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["name"], "llm-7b");
    assert_eq!(jobs[0]["nodes"], serde_json::json!(["n1", "n2"]));
    assert_eq!(
        jobs[0]["checkpoint"],
        serde_json::json!({"path": "/ckpt/llm-7b/step-1000", "step": 1000, "verified": null})
    );
    assert_eq!(jobs[0]["reason"], serde_json::Value::Null);
}

#[tokio::test]
async fn job_submit_sends_the_spec_as_written_and_reports_the_name() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    let spec = "# a comment the server sees too\nname = \"tiny\"\ncommand = [\"true\"]\n";
    let file = spec_file(spec);
    let path = file.path().to_str().unwrap();
    let out = supctl(addr, &["job", "submit", path, "--by", "alice"])
        .await
        .unwrap();
    assert_eq!(out, "job tiny submitted\n");
    {
        let sent = fake.submitted.lock().unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].spec_toml, spec, "the spec must travel unchanged");
        assert_eq!(sent[0].by, "alice");
    }

    let other = spec_file("name = \"tiny2\"\ncommand = [\"true\"]\n");
    let v = json(
        &supctl(
            addr,
            &[
                "job",
                "submit",
                other.path().to_str().unwrap(),
                "-o",
                "json",
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(v["changed"], true);
    assert_eq!(v["message"], "job 'tiny2' accepted");
    assert_eq!(v["job"]["name"], "tiny2");
    assert_eq!(v["job"]["state"], "pending");
    assert_eq!(v["job"]["reason"], "waiting for nodes");
    assert_eq!(v["job"]["checkpoint"], serde_json::Value::Null);

    // The same name again: supd refuses, supctl prints why and exits 5.
    let err = supctl(addr, &["job", "submit", path]).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED, "{err}");
    assert_eq!(
        err.to_string(),
        "rejected by the supervisor: job 'tiny' already exists"
    );
}

#[tokio::test]
async fn an_invalid_spec_is_rejected_with_the_field_named() {
    let addr = serve(Duration::ZERO).await;
    let file = spec_file("name = \"no-command\"\nnodes = 2\n");
    let err = supctl(addr, &["job", "submit", file.path().to_str().unwrap()])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED, "{err}");
    assert!(err.to_string().contains("missing field `command`"), "{err}");
}

#[tokio::test]
async fn an_unreadable_spec_is_a_local_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let missing = missing.to_str().unwrap();
    // Nothing listens: the file is read before supctl tries to connect.
    let cli = Cli::try_parse_from([
        "supctl",
        "--supervisor",
        &dead_url(),
        "job",
        "submit",
        missing,
    ])
    .unwrap();
    let err = supctl::execute(&cli, &mut Vec::new()).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::OTHER, "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot read job spec {missing}: ")),
        "{text}"
    );

    // Not text at all (say, a checkpoint shard passed by mistake).
    let binary = spec_file("");
    std::fs::write(binary.path(), [0x80, 0xff, 0xfe, 0x00]).unwrap();
    let path = binary.path().to_str().unwrap();
    let cli = Cli::try_parse_from(["supctl", "--supervisor", &dead_url(), "job", "submit", path])
        .unwrap();
    let err = supctl::execute(&cli, &mut Vec::new()).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::OTHER, "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
}

#[tokio::test]
async fn job_stop_reports_the_change_then_the_servers_word() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    let out = supctl(
        addr,
        &["job", "stop", "llm-7b", "--reason", "done", "--by", "bob"],
    )
    .await
    .unwrap();
    assert_eq!(out, "job llm-7b stopped: done\n");
    {
        let stops = fake.stops.lock().unwrap();
        assert_eq!(stops[0].name, "llm-7b");
        assert_eq!(stops[0].reason, "done");
        assert_eq!(stops[0].by, "bob");
    }
    let again = json(
        &supctl(addr, &["job", "stop", "llm-7b", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(again["changed"], false);
    assert_eq!(again["message"], "job 'llm-7b' is already stopped");
    assert_eq!(again["job"]["state"], "stopped");
    let out = supctl(addr, &["job", "stop", "llm-7b"]).await.unwrap();
    assert_eq!(out, "job 'llm-7b' is already stopped\n");
}

#[tokio::test]
async fn job_describe_shows_ranks_checkpoint_and_spec() {
    let addr = serve(Duration::ZERO).await;
    let text = supctl(addr, &["job", "describe", "llm-7b"]).await.unwrap();
    assert!(text.starts_with("Job:        llm-7b\n"), "{text}");
    assert!(
        text.contains("Checkpoint: step 1000 at /ckpt/llm-7b/step-1000\n"),
        "{text}"
    );
    assert!(
        text.contains("\n0           n1\n1           n2\n"),
        "{text}"
    );
    assert!(text.contains("Spec:\n  name = \"llm-7b\"\n"), "{text}");

    let v = json(
        &supctl(addr, &["job", "describe", "llm-7b", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(v["name"], "llm-7b");
    assert_eq!(v["generation"], 4);
    assert_eq!(v["world_size"], 16);
    assert_eq!(v["nodes"], serde_json::json!(["n1", "n2"]));
    assert_eq!(v["submitted_at"], "1970-01-01T00:00:01.000Z");
}

#[tokio::test]
async fn unknown_job_is_not_found_with_the_servers_message() {
    let addr = serve(Duration::ZERO).await;
    for args in [
        &["job", "describe", "x"][..],
        &["job", "stop", "x"][..],
        &["checkpoints", "x"][..],
        &["logs", "x", "--rank", "0"][..],
        &["job", "describe", "x", "-o", "json"][..],
    ] {
        let err = supctl(addr, args).await.unwrap_err();
        assert_eq!(err.exit_code(), exit::NOT_FOUND, "{args:?}");
        assert_eq!(err.to_string(), "unknown job 'x'", "{args:?}");
    }
}

#[tokio::test]
async fn checkpoints_come_oldest_first() {
    let addr = serve(Duration::ZERO).await;
    let table = supctl(addr, &["checkpoints", "llm-7b"]).await.unwrap();
    assert_eq!(
        table,
        "STEP   PATH                     VERIFIED\n\
         500    /ckpt/llm-7b/step-500    dcp .metadata: 2 storage files\n\
         1000   /ckpt/llm-7b/step-1000   dcp .metadata: 4 storage files\n"
    );
    let v = json(
        &supctl(addr, &["checkpoints", "llm-7b", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(
        v,
        serde_json::json!([
            {"path": "/ckpt/llm-7b/step-500", "step": 500, "verified": "dcp .metadata: 2 storage files"},
            {"path": "/ckpt/llm-7b/step-1000", "step": 1000, "verified": "dcp .metadata: 4 storage files"}
        ])
    );
}

#[tokio::test]
async fn logs_print_the_text_raw_and_an_agent_error_exits_1() {
    let addr = serve(Duration::ZERO).await;
    let out = supctl(addr, &["logs", "llm-7b", "--rank", "3", "--lines", "2"])
        .await
        .unwrap();
    assert_eq!(out, "rank 3 step 1\nrank 3 step 2\n");
    let v = json(
        &supctl(
            addr,
            &[
                "logs", "llm-7b", "--rank", "3", "--lines", "1", "-o", "json",
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        v,
        serde_json::json!({"job": "llm-7b", "rank": 3, "text": "rank 3 step 1"})
    );

    let err = supctl(addr, &["logs", "llm-7b", "--rank", "99"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::OTHER, "{err}");
    assert_eq!(
        err.to_string(),
        "cannot read the log of rank 99 of job llm-7b: job 'llm-7b' has no rank 99"
    );
}

#[tokio::test]
async fn drills_travel_to_the_server_as_typed() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    let out = supctl(
        addr,
        &[
            "drill", "xid", "--node", "n1", "--gpu", "3", "--xid", "79", "--by", "carol",
        ],
    )
    .await
    .unwrap();
    assert_eq!(out, "drill sent to node 'n1' (GPU 3)\n");
    let v = json(
        &supctl(
            addr,
            &[
                "drill",
                "recovery-action",
                "--node",
                "n1",
                "--gpu",
                "5",
                "--action",
                "node-reboot",
                "-o",
                "json",
            ],
        )
        .await
        .unwrap(),
    );
    assert_eq!(
        v,
        serde_json::json!({"message": "drill sent to node 'n1' (GPU 5)"})
    );
    {
        let drills = fake.drills.lock().unwrap();
        assert_eq!(drills.len(), 2);
        assert_eq!(drills[0].node_id, "n1");
        assert_eq!(drills[0].by, "carol");
        let d = drills[0].drill.as_ref().unwrap();
        assert_eq!(d.gpu_index, 3);
        assert_eq!(d.fault, Some(v1::drill::Fault::Xid(79)));
        assert_eq!(d.by, "carol");
        let d = drills[1].drill.as_ref().unwrap();
        assert_eq!(d.gpu_index, 5);
        assert_eq!(
            d.fault,
            Some(v1::drill::Fault::RecoveryAction(
                v1::RecoveryAction::NodeReboot as i32
            ))
        );
    }

    let err = supctl(
        addr,
        &["drill", "xid", "--node", "n9", "--gpu", "0", "--xid", "79"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::NOT_FOUND);
    assert_eq!(err.to_string(), "unknown node 'n9'");
    let err = supctl(
        addr,
        &["drill", "xid", "--node", "n1", "--gpu", "9", "--xid", "79"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED);
    assert!(err.to_string().contains("has no GPU 9"), "{err}");
}

#[tokio::test]
async fn breaker_reset_closes_it_once() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    let out = supctl(
        addr,
        &[
            "breaker",
            "reset",
            "--reason",
            "false alarm: PDU swap",
            "--by",
            "dave",
        ],
    )
    .await
    .unwrap();
    assert_eq!(out, "breaker reset by dave\n");
    {
        let resets = fake.breaker_resets.lock().unwrap();
        assert_eq!(resets[0].reason, "false alarm: PDU swap");
        assert_eq!(resets[0].by, "dave");
    }
    let v = json(
        &supctl(addr, &["breaker", "reset", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(
        v,
        serde_json::json!({"changed": false, "message": "the breaker is closed; nothing to reset"})
    );
    let status = json(&supctl(addr, &["status", "-o", "json"]).await.unwrap());
    assert_eq!(
        status["breaker"],
        serde_json::json!({"state": "closed", "reason": null, "since": null})
    );
    let table = supctl(addr, &["status"]).await.unwrap();
    assert!(!table.contains("breaker"), "{table}");
}

#[tokio::test]
async fn node_details_come_from_get_node() {
    let addr = serve(Duration::ZERO).await;
    let text = supctl(addr, &["node", "n1"]).await.unwrap();
    assert!(text.ends_with("\nNo recent Xids.\n"), "{text}");
}

#[test]
fn binary_reads_the_spec_from_stdin() {
    use std::io::Write as _;
    // Nothing listens, so the run ends at the connection: exit 3 proves the
    // spec was read from stdin (an unreadable spec would exit 1 first).
    let mut child = Process::new(env!("CARGO_BIN_EXE_supctl"))
        .args(["--supervisor", &dead_url(), "job", "submit", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"name = \"x\"\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNREACHABLE)));
}

#[test]
fn binary_exits_1_with_one_line_for_a_missing_spec() {
    let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
        .args([
            "--supervisor",
            &dead_url(),
            "job",
            "submit",
            "/nonexistent/job.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::OTHER)));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("supctl: error: cannot read job spec /nonexistent/job.toml: "),
        "{stderr}"
    );
}

#[test]
fn binary_prints_completions_without_a_supervisor() {
    for (shell, marker) in [
        ("bash", "_supctl()"),
        ("zsh", "#compdef supctl"),
        ("fish", "complete -c supctl"),
    ] {
        let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
            .args(["--supervisor", &dead_url(), "completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell}: {script}");
        // The new commands are completed too.
        assert!(script.contains("checkpoints"), "{shell}");
        assert!(script.contains("drain-and-reset"), "{shell}");
    }
}

#[test]
fn binary_exits_2_on_bad_job_drill_and_logs_arguments() {
    for args in [
        &["job"][..],
        &["job", "submit"][..],
        &["job", "stop", " "][..],
        &["logs", "llm"][..],
        &["logs", "llm", "--rank", "0", "--lines", "0"][..],
        &["drill", "xid", "--node", "n1", "--gpu", "0"][..],
        &["drill", "xid", "--node", "n1", "--gpu", "0", "--xid", "0"][..],
        &["drill", "xid", "--node", "n1", "--gpu", "-1", "--xid", "79"][..],
        &[
            "drill",
            "recovery-action",
            "--node",
            "n1",
            "--gpu",
            "0",
            "--action",
            "reboot",
        ][..],
        &["breaker"][..],
        &["completions", "powershell"][..],
    ] {
        let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(i32::from(exit::USAGE)), "{args:?}");
    }
}

#[tokio::test]
async fn jobs_pages_through_list_jobs_and_json_stays_an_array() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    {
        let mut jobs = fake.jobs.lock().unwrap();
        for (name, state) in [
            ("a", "failed"),
            ("b", "running"),
            ("c", "failed"),
            ("d", "failed"),
        ] {
            let mut j = running_job();
            j.name = name.into();
            j.state = state.into();
            jobs.push(j);
        }
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|j| j["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = json(
        &supctl(addr, &["jobs", "--all", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(names(&all), ["a", "b", "c", "d", "llm-7b"]);
    let failed = json(
        &supctl(addr, &["jobs", "--state", "failed", "--all", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(names(&failed), ["a", "c", "d"]);
    let sent: Vec<(Vec<String>, u32, String)> = fake
        .job_pages
        .lock()
        .unwrap()
        .drain(..)
        .map(|r| (r.states, r.limit, r.continue_token))
        .collect();
    assert_eq!(sent[0], (vec![], 1000, String::new()));
    assert_eq!(sent.len(), 3 + 2);

    // The default is one page, with the command for the next.
    let text = supctl(addr, &["jobs"]).await.unwrap();
    assert!(text.lines().any(|l| l.starts_with("a ")), "{text}");
    assert!(
        text.ends_with("3 jobs more; next page: supctl jobs --continue after:b (or --all)\n"),
        "{text}"
    );
    let next = supctl(addr, &["jobs", "--continue", "after:b", "--limit", "1"])
        .await
        .unwrap();
    assert!(next.lines().any(|l| l.starts_with("c ")), "{next}");
    assert!(next.contains("--limit 1 --continue after:c"), "{next}");
}

// ---- Several supervisor URLs (supd replicas): only the leader answers. ----

/// Runs supctl in-process against `--supervisor URLS` (comma-separated).
async fn supctl_at(urls: &str, args: &[&str]) -> Result<String, CtlError> {
    let argv = ["supctl", "--supervisor", urls, "--timeout", "2s"];
    let cli = Cli::try_parse_from(argv.iter().chain(args)).unwrap();
    let mut out = Vec::new();
    supctl::execute(&cli, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

/// A gRPC server that answers every request UNAVAILABLE, as a supd that
/// accepts connections but cannot serve (a leader losing its lease).
async fn serve_unavailable() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = ControlServiceServer::from_arc(fake_supd(Duration::ZERO));
    let refusing = tonic::service::interceptor::InterceptedService::new(svc, |_| {
        Err(Status::unavailable("not the leader"))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(refusing)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn commands_go_through_the_url_that_answers() {
    let (addr, fake) = serve_fake(Duration::ZERO).await;
    // Nothing listens at the first URL (a standby binds no gRPC port).
    let urls = format!("{},http://{addr}", dead_url());
    let status = json(&supctl_at(&urls, &["status", "-o", "json"]).await.unwrap());
    assert_eq!(status["nodes"][0]["id"], "n1");
    let out = supctl_at(
        &urls,
        &["cordon", "n1", "--reason", "xid 79", "--by", "alice"],
    )
    .await
    .unwrap();
    assert_eq!(out, "node n1 cordoned: xid 79\n");
    assert_eq!(
        fake.cordon.lock().unwrap().as_ref().map(|c| c.by.as_str()),
        Some("alice")
    );
    // Several requests in one command (every page) all go through.
    let nodes = json(
        &supctl_at(&urls, &["nodes", "--all", "-o", "json"])
            .await
            .unwrap(),
    );
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 5, "{nodes}");
    // A real error from the supd that answered is final: exit 4, its words.
    let err = supctl_at(&urls, &["node", "nope"]).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::NOT_FOUND, "{err}");
    assert_eq!(err.to_string(), "unknown node 'nope'");
}

#[tokio::test]
async fn unavailable_moves_on_and_any_other_answer_is_final() {
    let refusing = serve_unavailable().await;
    let (first, first_fake) = serve_fake(Duration::ZERO).await;
    let (second, second_fake) = serve_fake(Duration::ZERO).await;
    // UNAVAILABLE from the first URL: the next one serves the request.
    let urls = format!("http://{refusing},http://{first},http://{second}");
    let spec = spec_file("name = \"tiny\"\ncommand = [\"true\"]\n");
    let path = spec.path().to_str().unwrap();
    let out = supctl_at(&urls, &["job", "submit", path]).await.unwrap();
    assert_eq!(out, "job tiny submitted\n");
    assert_eq!(first_fake.submitted.lock().unwrap().len(), 1);
    // A refusal is an answer: the same spec again is rejected by the supd
    // that has it (exit 5), and never offered to the third URL.
    let err = supctl_at(&urls, &["job", "submit", path])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::REJECTED, "{err}");
    assert_eq!(
        err.to_string(),
        "rejected by the supervisor: job 'tiny' already exists"
    );
    assert_eq!(first_fake.submitted.lock().unwrap().len(), 2);
    assert!(second_fake.submitted.lock().unwrap().is_empty());
}

#[tokio::test]
async fn no_url_answering_is_exit_3_naming_each_and_why() {
    let refusing = serve_unavailable().await;
    let dead = dead_url();
    let urls = format!("{dead},http://{refusing}");
    for args in [
        &["status"][..],
        &["nodes"][..],
        &["job", "describe", "x"][..],
    ] {
        let err = supctl_at(&urls, args).await.unwrap_err();
        assert_eq!(err.exit_code(), exit::UNREACHABLE, "{args:?}: {err}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot reach the supervisor at any of 2 URLs: {dead}: "
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("; http://{refusing}: not the leader; ")),
            "{text}"
        );
        assert!(
            text.ends_with("check --supervisor or SUP_SUPERVISOR"),
            "{text}"
        );
    }
    // A change is tried again (same request id) a few times, then given up
    // with the same error.
    let err = supctl_at(&urls, &["cordon", "n1", "--reason", "r"])
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
    assert!(err.to_string().contains("any of 2 URLs"), "{err}");
}

#[test]
fn binary_exits_3_with_one_line_naming_every_url() {
    let (a, b) = (dead_url(), dead_url());
    let out = Process::new(env!("CARGO_BIN_EXE_supctl"))
        .env("SUP_SUPERVISOR", format!("{a},{b}"))
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::UNREACHABLE)));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "supctl: error: cannot reach the supervisor at any of 2 URLs: {a}: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("; {b}: ")), "{stderr}");
}
