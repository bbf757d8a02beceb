//! `supctl jobs`: every job, one row each.

use sup_proto::json::JobView;
use sup_proto::v1;

use super::json_error;
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{opt, or_none, percent, si, truncate};
use crate::table::*;

pub(super) async fn run(client: &mut Client, json: bool) -> Result<String, CtlError> {
    let s = client.status().await?;
    // The status holds at most 100 jobs (unfinished ones first).
    if json {
        if s.jobs_omitted > 0 {
            eprintln!("supctl: {}", omitted_note(s.jobs_omitted));
        }
        jobs_json(&s.jobs).map_err(json_error)
    } else {
        let mut text = jobs_text(&s.jobs);
        if s.jobs_omitted > 0 {
            text.push_str(&format!("{}\n", omitted_note(s.jobs_omitted)));
        }
        Ok(text)
    }
}

fn omitted_note(n: u32) -> String {
    format!("{n} more jobs not shown (finished ones, oldest first); supctl job describe NAME")
}

pub fn jobs_json(jobs: &[v1::Job]) -> serde_json::Result<String> {
    json(&jobs.iter().map(JobView::from).collect::<Vec<_>>())
}

pub fn jobs_text(jobs: &[v1::Job]) -> String {
    if jobs.is_empty() {
        return "No jobs.\n".to_owned();
    }
    let mut table = new_table(&[
        "NAME",
        "STATE",
        "GEN",
        "WORLD",
        "NODES",
        "STEP",
        "TOK/S",
        "MFU",
        "CHECKPOINT",
        "RESTARTS",
        "REASON",
    ]);
    for j in jobs {
        table.add_row(vec![
            or_none(&j.name),
            or_none(&j.state),
            j.generation.to_string(),
            j.world_size.to_string(),
            // A status lists at most 32 of a job's nodes; the count is whole.
            format!(
                "{}/{}",
                (j.node_count as usize).max(j.nodes.len()),
                j.desired_nodes
            ),
            opt(j.step, |s| s.to_string()),
            opt(j.tokens_per_s, si),
            opt(j.mfu, percent),
            opt(j.checkpoint.as_ref(), |c| c.step.to_string()),
            j.restarts.to_string(),
            truncate(&or_none(&j.reason), REASON_WIDTH),
        ]);
    }
    finish(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn a_job_of_thousands_of_nodes_counts_them_all() {
        let mut big = job("llama-405b", "running");
        big.nodes.truncate(1);
        big.node_count = 16_000;
        big.desired_nodes = 16_000;
        assert_eq!(row(&jobs_text(&[big]), "llama-405b")[4], "16000/16000");
    }

    #[test]
    fn jobs_table_shows_one_row_per_job_with_dashes_for_unknowns() {
        let mut fresh = job("tiny", "pending");
        fresh.nodes.clear();
        fresh.step = None;
        fresh.checkpoint = None;
        fresh.restarts = 0;
        fresh.generation = 0;
        fresh.world_size = 0;
        fresh.tokens_per_s = None;
        fresh.mfu = None;
        fresh.reason = "waiting for 2 nodes, 1 healthy".into();
        let text = jobs_text(&[job("llm-7b", "running"), fresh]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "STATE",
                "GEN",
                "WORLD",
                "NODES",
                "STEP",
                "TOK/S",
                "MFU",
                "CHECKPOINT",
                "RESTARTS",
                "REASON"
            ]
        );
        assert_eq!(
            row(&text, "llm-7b"),
            ["llm-7b", "running", "3", "8", "2/4", "1200", "12.3k", "41.5%", "1000", "2", "-"]
        );
        assert_eq!(
            row(&text, "tiny"),
            [
                "tiny",
                "pending",
                "0",
                "0",
                "0/4",
                "-",
                "-",
                "-",
                "-",
                "0",
                "waiting for 2 nodes, 1 healthy"
            ]
        );
        assert_eq!(jobs_text(&[]), "No jobs.\n");
    }

    #[test]
    fn jobs_table_truncates_long_reasons() {
        let mut j = job("a", "failed");
        j.reason = "r".repeat(100);
        let text = jobs_text(&[j]);
        let reason = row(&text, "a")[10];
        assert_eq!(reason.chars().count(), REASON_WIDTH);
        assert!(reason.ends_with("..."));
    }

    #[test]
    fn jobs_json_is_an_array_of_job_views() {
        let mut fresh = job("tiny", "pending");
        fresh.checkpoint = None;
        fresh.step = None;
        let text = jobs_json(&[job("llm-7b", "running"), fresh]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let arr = v.as_array().unwrap();
        assert_eq!(arr.len(), 2);
        assert_eq!(arr[0]["name"], "llm-7b");
        assert_eq!(arr[0]["state"], "running");
        assert_eq!(arr[0]["generation"], 3);
        assert_eq!(arr[0]["world_size"], 8);
        assert_eq!(
            arr[0]["nodes"],
            serde_json::json!(["gpu-node-001", "gpu-node-005"])
        );
        assert_eq!(arr[0]["step"], 1200);
        assert_eq!(
            arr[0]["checkpoint"],
            serde_json::json!({"path": "/mnt/ckpt/llm/step-1000", "step": 1000})
        );
        assert_eq!(arr[0]["restarts"], 2);
        assert_eq!(arr[0]["reason"], serde_json::Value::Null);
        assert_eq!(arr[1]["checkpoint"], serde_json::Value::Null);
        assert_eq!(arr[1]["step"], serde_json::Value::Null);
        assert_eq!(jobs_json(&[]).unwrap(), "[]\n");
    }
}
