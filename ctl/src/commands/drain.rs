//! `supctl drain NODE --reason R [--deadline 30m]`: planned maintenance.
//! The node takes no new work; its job moves off at its next complete
//! checkpoint (not counted as a failure), then the node is cordoned.

use std::time::Duration;

use sup_proto::v1;

use super::{json_error, operator};
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::humanize::one_line;

pub(super) async fn run(
    client: &mut Client,
    id: &str,
    reason: &str,
    deadline: Duration,
    by: &Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::DrainRequest {
        node_id: id.to_owned(),
        reason: reason.to_owned(),
        by: operator(by),
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        request_id: client::request_id(),
    };
    let r = client.drain(req).await?;
    if json {
        super::cordon::cordon_json(&r).map_err(json_error)
    } else {
        Ok(drain_text(id, &r))
    }
}

/// The server's message says what happens next (cordoned now, or when the
/// job moves off); an unchanged drain says why.
pub fn drain_text(node_id: &str, r: &v1::CordonResponse) -> String {
    let message = one_line(&r.message);
    if message.is_empty() {
        format!("node {node_id}: drain requested\n")
    } else {
        format!("{message}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_servers_message_is_shown_on_one_line() {
        let r = v1::CordonResponse {
            changed: true,
            message: "node 'n1' is draining: job 'llm' moves off at its next complete checkpoint (after step 100), at the latest in 30m".into(),
            ..Default::default()
        };
        assert_eq!(
            drain_text("n1", &r),
            "node 'n1' is draining: job 'llm' moves off at its next complete checkpoint (after step 100), at the latest in 30m\n"
        );
        assert_eq!(
            drain_text("n1", &v1::CordonResponse::default()),
            "node n1: drain requested\n"
        );
    }
}
