//! `supctl uncordon NODE`: return a node to service.

use sup_proto::v1;

use super::cordon::CordonAction;
use super::operator;
use crate::client::{self, Client};
use crate::error::CtlError;

pub(super) async fn run(
    client: &mut Client,
    id: &str,
    reason: Option<&str>,
    by: &Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::UncordonRequest {
        node_id: id.to_owned(),
        by: operator(by),
        reason: reason.unwrap_or_default().to_owned(),
        request_id: client::request_id(),
    };
    let r = client.uncordon(req).await?;
    super::cordon::output(json, CordonAction::Uncordon, id, reason, &r)
}
