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
    skip_validation: bool,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::UncordonRequest {
        node_id: id.to_owned(),
        by: operator(by),
        reason: reason.unwrap_or_default().to_owned(),
        request_id: client::request_id(),
        skip_validation,
    };
    let r = client.uncordon(req).await?;
    if !json && validation_started(&r) {
        // Still cordoned: the node is being validated; say so, not
        // "uncordoned".
        return Ok(format!("{}\n", crate::humanize::one_line(&r.message)));
    }
    super::cordon::output(json, CordonAction::Uncordon, id, reason, &r)
}

/// The uncordon started the node's validation (it is still cordoned).
fn validation_started(r: &v1::CordonResponse) -> bool {
    r.changed && r.node.as_ref().is_some_and(|n| n.cordon.is_some())
}
