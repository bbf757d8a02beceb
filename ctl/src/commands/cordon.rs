//! `supctl cordon NODE --reason R`: take a node out of service. The outcome
//! text is shared with `uncordon`.

use serde::Serialize;
use sup_proto::json::NodeView;
use sup_proto::v1;

use super::{json_error, operator};
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::humanize::one_line;
use crate::table::*;

pub(super) async fn run(
    client: &mut Client,
    id: &str,
    reason: &str,
    by: &Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::CordonRequest {
        node_id: id.to_owned(),
        reason: reason.to_owned(),
        by: operator(by),
        request_id: client::request_id(),
    };
    let r = client.cordon(req).await?;
    output(json, CordonAction::Cordon, id, Some(reason), &r)
}

/// What `cordon` and `uncordon` print.
pub(super) fn output(
    json: bool,
    action: CordonAction,
    id: &str,
    reason: Option<&str>,
    r: &v1::CordonResponse,
) -> Result<String, CtlError> {
    if json {
        cordon_json(r).map_err(json_error)
    } else {
        Ok(cordon_text(action, id, reason, r))
    }
}

/// The result of `cordon` / `uncordon` with `-o json`.
#[derive(Debug, Serialize)]
pub struct CordonOutcomeView {
    pub changed: bool,
    pub message: String,
    /// The node after the request; null only if the server sent none.
    pub node: Option<NodeView>,
}

impl From<&v1::CordonResponse> for CordonOutcomeView {
    fn from(r: &v1::CordonResponse) -> Self {
        CordonOutcomeView {
            changed: r.changed,
            message: r.message.clone(),
            node: r.node.as_ref().map(NodeView::from),
        }
    }
}

pub fn cordon_json(r: &v1::CordonResponse) -> serde_json::Result<String> {
    json(&CordonOutcomeView::from(r))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CordonAction {
    Cordon,
    Uncordon,
}

/// `node X cordoned: REASON` when the request changed something; otherwise
/// the server's explanation (e.g. that the node was already cordoned).
pub fn cordon_text(
    action: CordonAction,
    node_id: &str,
    reason: Option<&str>,
    r: &v1::CordonResponse,
) -> String {
    let verb = match action {
        CordonAction::Cordon => "cordoned",
        CordonAction::Uncordon => "uncordoned",
    };
    let line = if r.changed {
        match reason {
            Some(reason) => format!("node {node_id} {verb}: {}", one_line(reason)),
            None => format!("node {node_id} {verb}"),
        }
    } else if !r.message.trim().is_empty() {
        one_line(&r.message)
    } else {
        match action {
            CordonAction::Cordon => format!("node {node_id} was already cordoned; nothing changed"),
            CordonAction::Uncordon => format!("node {node_id} was not cordoned; nothing changed"),
        }
    };
    line + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn cordon_messages() {
        let changed = v1::CordonResponse {
            changed: true,
            ..Default::default()
        };
        assert_eq!(
            cordon_text(CordonAction::Cordon, "n1", Some("xid 79"), &changed),
            "node n1 cordoned: xid 79\n"
        );
        assert_eq!(
            cordon_text(CordonAction::Uncordon, "n1", None, &changed),
            "node n1 uncordoned\n"
        );
        let repeat = v1::CordonResponse {
            changed: false,
            message: "node 'n1' is already cordoned".into(),
            ..Default::default()
        };
        assert_eq!(
            cordon_text(CordonAction::Cordon, "n1", Some("xid 79"), &repeat),
            "node 'n1' is already cordoned\n"
        );
        let silent = v1::CordonResponse::default();
        assert_eq!(
            cordon_text(CordonAction::Uncordon, "n1", None, &silent),
            "node n1 was not cordoned; nothing changed\n"
        );
    }

    #[test]
    fn cordon_json_has_changed_message_and_node() {
        let r = v1::CordonResponse {
            changed: true,
            message: "cordoned".into(),
            node: Some(node("n1", v1::NodeState::Cordoned)),
        };
        let v: serde_json::Value = serde_json::from_str(&cordon_json(&r).unwrap()).unwrap();
        assert_eq!(v["changed"], true);
        assert_eq!(v["message"], "cordoned");
        assert_eq!(v["node"]["id"], "n1");
        assert_eq!(v["node"]["state"], "cordoned");
    }
}
