//! The connection to supd's control service. Every call returns [`CtlError`]
//! so callers never see raw tonic errors.

use std::time::Duration;

use sup_proto::transport::ClientTlsFiles;
use sup_proto::v1;
use sup_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::Channel;

use crate::error::{CtlError, Target};

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

pub struct Client {
    inner: ControlServiceClient<Channel>,
    target: Target,
}

impl Client {
    /// Connects eagerly, so "nothing listens there" is reported as such
    /// instead of surfacing later as a failed request.
    pub async fn connect(
        url: &str,
        tls: Option<&ClientTlsFiles>,
        timeout: Duration,
    ) -> Result<Client, CtlError> {
        let target = Target {
            url: url.to_owned(),
            timeout,
        };
        let endpoint = sup_proto::transport::endpoint(url, tls)
            .map_err(|e| CtlError::Other(e.to_string()))?
            .connect_timeout(timeout)
            .timeout(timeout);
        // connect_timeout covers TCP only; the outer limit also covers the
        // HTTP/2 handshake with a peer that accepts but never answers.
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(CtlError::connect(&e, &target)),
            Err(_elapsed) => return Err(CtlError::from_status(&timeout_status(), &target)),
        };
        let inner =
            ControlServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Client { inner, target })
    }

    pub async fn status(&mut self) -> Result<v1::ClusterStatus, CtlError> {
        let res = self.inner.get_status(v1::GetStatusRequest {}).await;
        self.answer(res)
    }

    /// One page of nodes. A supd from before paging has no ListNodes: its
    /// status lists every node, so the page is made from that.
    pub async fn list_nodes(
        &mut self,
        req: v1::ListNodesRequest,
    ) -> Result<v1::ListNodesResponse, CtlError> {
        let res = self.inner.list_nodes(req.clone()).await;
        if matches!(&res, Err(s) if s.code() == tonic::Code::Unimplemented) {
            let status = self.status().await?;
            return Ok(page_from_status(status, &req));
        }
        self.answer(res)
    }

    /// One page of jobs. A supd from before ListJobs has none: the page is
    /// made from its status (at most 100 jobs; `jobs_omitted` more).
    pub async fn list_jobs(&mut self, req: v1::ListJobsRequest) -> Result<ListedJobs, CtlError> {
        let res = self.inner.list_jobs(req.clone()).await;
        if matches!(&res, Err(s) if s.code() == tonic::Code::Unimplemented) {
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
        let res = self.inner.get_node(req).await;
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

    /// A change, retried on a lost answer (unavailable, timed out). Safe
    /// because every change carries the invocation's request id: supd
    /// applies an id once and answers repeats with what happened.
    async fn mutate<T, F, Fut>(&mut self, mut call: F) -> Result<T, CtlError>
    where
        F: FnMut(ControlServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0u64;
        loop {
            let res = call(self.inner.clone()).await;
            let retriable = matches!(
                &res,
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded)
            );
            if retriable && attempt < MUTATION_RETRIES {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
                continue;
            }
            return self.answer(res);
        }
    }

    pub async fn events(
        &mut self,
        req: v1::ListEventsRequest,
    ) -> Result<v1::ListEventsResponse, CtlError> {
        let res = self.inner.list_events(req).await;
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
        let res = self.inner.get_job(req).await;
        self.answer(res)
    }

    pub async fn checkpoints(&mut self, job: &str) -> Result<Vec<v1::Checkpoint>, CtlError> {
        let req = v1::GetJobRequest {
            name: job.to_owned(),
        };
        let res = self.inner.list_checkpoints(req).await;
        self.answer(res).map(|r| r.checkpoints)
    }

    pub async fn logs(&mut self, req: v1::GetLogsRequest) -> Result<v1::LogResponse, CtlError> {
        let res = self.inner.get_logs(req).await;
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

    fn answer<T>(&self, res: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CtlError> {
        res.map(tonic::Response::into_inner)
            .map_err(|status| CtlError::from_status(&status, &self.target))
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
