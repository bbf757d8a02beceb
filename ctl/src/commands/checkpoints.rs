//! `supctl checkpoints JOB`: the complete checkpoints agents found, oldest
//! first, each with what the agent verified by the layout's own metadata.
//! A checkpoint that failed verification is not listed (it is no resume
//! point); its `checkpoint_unverified` event names the file.

use sup_proto::json::CheckpointView;
use sup_proto::v1;

use super::json_error;
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::or_none;
use crate::table::*;

pub(super) async fn run(client: &mut Client, job: &str, json: bool) -> Result<String, CtlError> {
    let checkpoints = oldest_checkpoint_first(client.checkpoints(job).await?);
    if json {
        checkpoints_json(&checkpoints).map_err(json_error)
    } else {
        Ok(checkpoints_text(job, &checkpoints))
    }
}

/// `checkpoints` must be in display order already (see [`oldest_checkpoint_first`]).
pub fn checkpoints_json(checkpoints: &[v1::Checkpoint]) -> serde_json::Result<String> {
    json(
        &checkpoints
            .iter()
            .map(CheckpointView::from)
            .collect::<Vec<_>>(),
    )
}

/// The contract promises checkpoints oldest first; a stable sort by step
/// keeps the server's order for equal steps.
pub fn oldest_checkpoint_first(mut checkpoints: Vec<v1::Checkpoint>) -> Vec<v1::Checkpoint> {
    checkpoints.sort_by_key(|c| c.step);
    checkpoints
}

/// `checkpoints` must be in display order already (see [`oldest_checkpoint_first`]).
pub fn checkpoints_text(job: &str, checkpoints: &[v1::Checkpoint]) -> String {
    if checkpoints.is_empty() {
        return format!("No complete checkpoints for job {job}.\n");
    }
    let mut table = new_table(&["STEP", "PATH", "VERIFIED"]);
    for c in checkpoints {
        table.add_row(vec![
            c.step.to_string(),
            or_none(&c.path),
            if c.verified.is_empty() {
                "- (agent predates verification)".to_owned()
            } else {
                c.verified.clone()
            },
        ]);
    }
    finish(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_are_listed_oldest_first() {
        let cps = oldest_checkpoint_first(vec![
            v1::Checkpoint {
                step: 200,
                path: "/ckpt/step-200".into(),
                verified: "dcp .metadata: 2 storage files".into(),
            },
            v1::Checkpoint {
                step: 100,
                path: "/ckpt/step-100".into(),
                ..Default::default()
            },
        ]);
        let text = checkpoints_text("llm", &cps);
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().take(3).collect())
            .collect();
        assert_eq!(
            lines,
            [
                ["STEP", "PATH", "VERIFIED"],
                ["100", "/ckpt/step-100", "-"],
                ["200", "/ckpt/step-200", "dcp"]
            ]
        );
        assert!(text.contains("dcp .metadata: 2 storage files"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&checkpoints_json(&cps).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"path": "/ckpt/step-100", "step": 100, "verified": null},
                {"path": "/ckpt/step-200", "step": 200, "verified": "dcp .metadata: 2 storage files"}
            ])
        );
        assert_eq!(
            checkpoints_text("llm", &[]),
            "No complete checkpoints for job llm.\n"
        );
        assert_eq!(checkpoints_json(&[]).unwrap(), "[]\n");
    }
}
