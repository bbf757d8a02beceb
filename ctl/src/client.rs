//! The connection to supd's control service. Every call returns [`CtlError`]
//! so callers never see raw tonic errors.

use std::time::Duration;

use sup_proto::v1;
use sup_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::{CtlError, Target};

// A status of a large cluster (thousands of nodes x 8 GPUs with readings)
// exceeds tonic's 4 MiB default; a bigger limit beats a confusing failure.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

pub struct Client {
    inner: ControlServiceClient<Channel>,
    target: Target,
}

impl Client {
    /// Connects eagerly, so "nothing listens there" is reported as such
    /// instead of surfacing later as a failed request.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Client, CtlError> {
        let target = Target {
            url: url.to_owned(),
            timeout,
        };
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| CtlError::connect(&e, &target))?
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

    pub async fn node(&mut self, node_id: &str) -> Result<v1::Node, CtlError> {
        let req = v1::GetNodeRequest {
            node_id: node_id.to_owned(),
        };
        let res = self.inner.get_node(req).await;
        self.answer(res)
    }

    pub async fn cordon(&mut self, req: v1::CordonRequest) -> Result<v1::CordonResponse, CtlError> {
        let res = self.inner.cordon(req).await;
        self.answer(res)
    }

    pub async fn uncordon(
        &mut self,
        req: v1::UncordonRequest,
    ) -> Result<v1::CordonResponse, CtlError> {
        let res = self.inner.uncordon(req).await;
        self.answer(res)
    }

    pub async fn events(&mut self, req: v1::ListEventsRequest) -> Result<Vec<v1::Event>, CtlError> {
        let res = self.inner.list_events(req).await;
        self.answer(res).map(|r| r.events)
    }

    pub async fn submit_job(
        &mut self,
        req: v1::SubmitJobRequest,
    ) -> Result<v1::JobResponse, CtlError> {
        let res = self.inner.submit_job(req).await;
        self.answer(res)
    }

    pub async fn stop_job(&mut self, req: v1::StopJobRequest) -> Result<v1::JobResponse, CtlError> {
        let res = self.inner.stop_job(req).await;
        self.answer(res)
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
        let res = self.inner.start_drill(req).await;
        self.answer(res)
    }

    pub async fn reset_breaker(
        &mut self,
        req: v1::ResetBreakerRequest,
    ) -> Result<v1::ResetBreakerResponse, CtlError> {
        let res = self.inner.reset_breaker(req).await;
        self.answer(res)
    }

    fn answer<T>(&self, res: Result<tonic::Response<T>, tonic::Status>) -> Result<T, CtlError> {
        res.map(tonic::Response::into_inner)
            .map_err(|status| CtlError::from_status(&status, &self.target))
    }
}

fn timeout_status() -> tonic::Status {
    tonic::Status::deadline_exceeded("connect timed out")
}
