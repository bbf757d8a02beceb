//! The connection to supd's control service. Every call returns [`CtlError`]
//! so callers never see raw tonic errors.

use std::time::Duration;

use sup_proto::transport::ClientTlsFiles;
use sup_proto::v1;
use sup_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CtlError, Target, Unanswered};

// supd's answers are bounded (about 1 MiB), but a supd from before paging
// sends every node in its status: thousands of 8-GPU nodes exceed tonic's
// 4 MiB default, and a bigger limit beats a confusing failure.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Retries of a change whose answer was lost (same request id each time).
const MUTATION_RETRIES: u64 = 3;

/// One id per supctl invocation, sent with every change it makes (and its
/// retries). `SUP_REQUEST_ID` sets it, so a script can repeat a command
/// across invocations and still have it take effect once.
pub fn request_id() -> String {
    if let Ok(id) = std::env::var("SUP_REQUEST_ID") {
        if !id.trim().is_empty() {
            return id.trim().to_owned();
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("supctl-{}-{nanos:x}", std::process::id())
}

/// supctl's connection to supd: one URL, or one per supd replica. Only the
/// leader among replicas serves (a standby accepts no connection), so every
/// request goes first to the replica that answered last, then to the others
/// in the order given, until one answers (see `Client::call`).
pub struct Client {
    replicas: Vec<Replica>,
    /// The replica that answered last (at first: the first that connected).
    current: usize,
}

/// One supd URL, connected when first needed.
struct Replica {
    target: Target,
    endpoint: Endpoint,
    /// Kept once connected: tonic's channel reconnects by itself after a
    /// drop, and a request then says UNAVAILABLE if it cannot.
    client: Option<ControlServiceClient<Channel>>,
}

/// What one round of a request over the replicas came to.
enum Outcome<T> {
    /// A replica answered: its answer is final, success or error.
    Answered(Result<T, tonic::Status>),
    /// None did. `retry`: a change may be sent again after a pause (see
    /// [`Client::mutate`]).
    Unanswered { tried: Vec<Unanswered>, retry: bool },
}

impl Replica {
    /// Opens the connection now. On failure, the flag says whether it was
    /// refused or failed at once (`true`: worth another try soon) rather
    /// than timed out (each try costs the full --timeout).
    async fn connect(&mut self) -> Result<ControlServiceClient<Channel>, (CtlError, bool)> {
        // connect_timeout covers TCP only; the outer limit also covers the
        // HTTP/2 handshake with a peer that accepts but never answers.
        let channel = match tokio::time::timeout(self.target.timeout, self.endpoint.connect()).await
        {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err((CtlError::connect(&e, &self.target), true)),
            Err(_elapsed) => {
                return Err((
                    CtlError::from_status(&timeout_status(), &self.target),
                    false,
                ))
            }
        };
        let client =
            ControlServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
    }
}

impl Client {
    /// Connects to the first of `urls` that accepts a connection, eagerly,
    /// so that "nothing listens there" is reported as such instead of
    /// surfacing later as a failed request. None does: an error that lists
    /// each and why. A URL or TLS file that is unusable is an error at
    /// once, whatever the others.
    pub async fn connect(
        urls: &[String],
        tls: Option<&ClientTlsFiles>,
        timeout: Duration,
    ) -> Result<Client, CtlError> {
        let mut replicas = urls
            .iter()
            .map(|url| {
                let endpoint = sup_proto::transport::endpoint(url, tls)
                    .map_err(|e| CtlError::Other(e.to_string()))?
                    .connect_timeout(timeout)
                    .timeout(timeout);
                Ok(Replica {
                    target: Target {
                        url: url.clone(),
                        timeout,
                    },
                    endpoint,
                    client: None,
                })
            })
            .collect::<Result<Vec<_>, CtlError>>()?;
        let mut tried = Vec::new();
        for (i, replica) in replicas.iter_mut().enumerate() {
            match replica.connect().await {
                Ok(_) => {
                    return Ok(Client {
                        replicas,
                        current: i,
                    })
                }
                Err((e, _)) => tried.extend(unanswered(e, &replica.target)),
            }
        }
        Err(CtlError::Unreachable { tried })
    }

    pub async fn status(&mut self) -> Result<v1::ClusterStatus, CtlError> {
        let res = self
            .call(|mut c| async move { c.get_status(v1::GetStatusRequest {}).await })
            .await;
        self.answer(res)
    }

    /// One page of nodes. A supd from before paging has no ListNodes: its
    /// status lists every node, so the page is made from that.
    pub async fn list_nodes(
        &mut self,
        req: v1::ListNodesRequest,
    ) -> Result<v1::ListNodesResponse, CtlError> {
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_nodes(req).await }
            })
            .await;
        if matches!(&res, Outcome::Answered(Err(s)) if s.code() == tonic::Code::Unimplemented) {
            let status = self.status().await?;
            return Ok(page_from_status(status, &req));
        }
        self.answer(res)
    }

    /// One page of jobs. A supd from before ListJobs has none: the page is
    /// made from its status (at most 100 jobs; `jobs_omitted` more).
    pub async fn list_jobs(&mut self, req: v1::ListJobsRequest) -> Result<ListedJobs, CtlError> {
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_jobs(req).await }
            })
            .await;
        if matches!(&res, Outcome::Answered(Err(s)) if s.code() == tonic::Code::Unimplemented) {
            let status = self.status().await?;
            return Ok(jobs_from_status(status, &req));
        }
        self.answer(res).map(|page| ListedJobs {
            page,
            omitted_by_status: 0,
        })
    }

    pub async fn node(&mut self, node_id: &str) -> Result<v1::Node, CtlError> {
        let req = v1::GetNodeRequest {
            node_id: node_id.to_owned(),
        };
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_node(req).await }
            })
            .await;
        self.answer(res)
    }

    pub async fn cordon(&mut self, req: v1::CordonRequest) -> Result<v1::CordonResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.cordon(req).await }
        })
        .await
    }

    pub async fn uncordon(
        &mut self,
        req: v1::UncordonRequest,
    ) -> Result<v1::CordonResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.uncordon(req).await }
        })
        .await
    }

    /// A change, retried on a lost answer (unavailable, timed out): at the
    /// next replica at once, and when none answered, the whole round again
    /// after a pause. Safe because every change carries the invocation's
    /// request id: supd applies an id once (remembered in its store, which
    /// replicas share) and answers repeats with what happened.
    async fn mutate<T, F, Fut>(&mut self, mut call: F) -> Result<T, CtlError>
    where
        F: FnMut(ControlServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0u64;
        loop {
            let res = self.call(&mut call).await;
            if matches!(res, Outcome::Unanswered { retry: true, .. }) && attempt < MUTATION_RETRIES
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
                continue;
            }
            return self.answer(res);
        }
    }

    /// Sends one request: to the replica that answered last, then to each
    /// other in the order given, until one answers. No answer (connection
    /// refused or timed out, UNAVAILABLE, no reply in time: what exit
    /// status 3 means) moves on to the next replica, since the leader may
    /// be elsewhere now; any other reply, success or error, is the answer.
    /// With one URL this is a plain request.
    async fn call<T, F, Fut>(&mut self, mut call: F) -> Outcome<T>
    where
        F: FnMut(ControlServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let order: Vec<usize> = std::iter::once(self.current)
            .chain((0..self.replicas.len()).filter(|&i| i != self.current))
            .collect();
        let (mut tried, mut retry) = (Vec::new(), false);
        for i in order {
            let replica = &mut self.replicas[i];
            let client = match replica.client.clone() {
                Some(client) => client,
                None => match replica.connect().await {
                    Ok(client) => client,
                    Err((e, refused)) => {
                        retry |= refused;
                        tried.extend(unanswered(e, &replica.target).into_iter().map(|u| (i, u)));
                        continue;
                    }
                },
            };
            let status = match call(client).await {
                Ok(response) => {
                    self.current = i;
                    return Outcome::Answered(Ok(response.into_inner()));
                }
                Err(status) => status,
            };
            match CtlError::from_status(&status, &replica.target) {
                CtlError::Unreachable { tried: more } => {
                    // What a change sends again after a pause, as it always
                    // did with one supd: supd's UNAVAILABLE or deadline, not
                    // tonic's own request timeout (each try would cost the
                    // full --timeout again).
                    retry |= matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    );
                    tried.extend(more.into_iter().map(|u| (i, u)));
                }
                _ => {
                    self.current = i;
                    return Outcome::Answered(Err(status));
                }
            }
        }
        // Reported in the order given, whichever was tried first.
        tried.sort_by_key(|(i, _)| *i);
        Outcome::Unanswered {
            tried: tried.into_iter().map(|(_, u)| u).collect(),
            retry,
        }
    }

    pub async fn events(
        &mut self,
        req: v1::ListEventsRequest,
    ) -> Result<v1::ListEventsResponse, CtlError> {
        let res = self
            .call(|mut c| async move { c.list_events(req).await })
            .await;
        self.answer(res)
    }

    pub async fn submit_job(
        &mut self,
        req: v1::SubmitJobRequest,
    ) -> Result<v1::JobResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.submit_job(req).await }
        })
        .await
    }

    pub async fn stop_job(&mut self, req: v1::StopJobRequest) -> Result<v1::JobResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.stop_job(req).await }
        })
        .await
    }

    pub async fn job(&mut self, name: &str) -> Result<v1::Job, CtlError> {
        let req = v1::GetJobRequest {
            name: name.to_owned(),
        };
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_job(req).await }
            })
            .await;
        self.answer(res)
    }

    pub async fn checkpoints(&mut self, job: &str) -> Result<Vec<v1::Checkpoint>, CtlError> {
        let req = v1::GetJobRequest {
            name: job.to_owned(),
        };
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_checkpoints(req).await }
            })
            .await;
        self.answer(res).map(|r| r.checkpoints)
    }

    pub async fn logs(&mut self, req: v1::GetLogsRequest) -> Result<v1::LogResponse, CtlError> {
        let res = self
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_logs(req).await }
            })
            .await;
        self.answer(res)
    }

    pub async fn drill(&mut self, req: v1::DrillRequest) -> Result<v1::DrillResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.start_drill(req).await }
        })
        .await
    }

    pub async fn drain(&mut self, req: v1::DrainRequest) -> Result<v1::CordonResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.drain(req).await }
        })
        .await
    }

    pub async fn remove_node(
        &mut self,
        req: v1::RemoveNodeRequest,
    ) -> Result<v1::CordonResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.remove_node(req).await }
        })
        .await
    }

    pub async fn reset_breaker(
        &mut self,
        req: v1::ResetBreakerRequest,
    ) -> Result<v1::ResetBreakerResponse, CtlError> {
        self.mutate(|mut c| {
            let req = req.clone();
            async move { c.reset_breaker(req).await }
        })
        .await
    }

    /// The outcome as supctl reports it: a reply's error is worded for the
    /// replica that sent it.
    fn answer<T>(&self, res: Outcome<T>) -> Result<T, CtlError> {
        match res {
            Outcome::Answered(res) => res.map_err(|status| {
                CtlError::from_status(&status, &self.replicas[self.current].target)
            }),
            Outcome::Unanswered { tried, .. } => Err(CtlError::Unreachable { tried }),
        }
    }
}

/// A failed connection to `target`, as one line of the unreachable error.
fn unanswered(e: CtlError, target: &Target) -> Vec<Unanswered> {
    match e {
        CtlError::Unreachable { tried } => tried,
        // Connecting fails only as unreachable today; should that change,
        // the reason is still shown rather than lost.
        other => vec![Unanswered {
            url: target.url.clone(),
            cause: other.to_string(),
        }],
    }
}

/// The nodes of an old supd's (uncapped) status that `req` asks for, all in
/// one page.
pub fn page_from_status(
    status: v1::ClusterStatus,
    req: &v1::ListNodesRequest,
) -> v1::ListNodesResponse {
    let nodes = status
        .nodes
        .into_iter()
        .filter(|n| req.states.is_empty() || req.states.contains(&n.state))
        .filter(|n| req.job.is_empty() || n.job == req.job)
        .collect();
    v1::ListNodesResponse {
        nodes,
        next_continue_token: String::new(),
        remaining: 0,
    }
}

/// A page of jobs, and how many an old supd's status left out when it was
/// made from one.
#[derive(Debug, Clone, Default)]
pub struct ListedJobs {
    pub page: v1::ListJobsResponse,
    pub omitted_by_status: u32,
}

pub fn jobs_from_status(status: v1::ClusterStatus, req: &v1::ListJobsRequest) -> ListedJobs {
    let jobs = status
        .jobs
        .into_iter()
        .filter(|j| req.states.is_empty() || req.states.contains(&j.state))
        .collect();
    ListedJobs {
        page: v1::ListJobsResponse {
            jobs,
            next_continue_token: String::new(),
            remaining: 0,
        },
        omitted_by_status: status.jobs_omitted,
    }
}

fn timeout_status() -> tonic::Status {
    tonic::Status::deadline_exceeded("connect timed out")
}
