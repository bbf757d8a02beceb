//! `supctl jobs`: jobs by name, one row each, a page at a time.
//!
//! supd answers at most a page (100 jobs by default, at most 1,000 and
//! about 1 MiB); `--limit N` and `--all` are followed here page after page,
//! and a listing that stops early says how to go on (`--continue TOKEN`).
//! `-o json` prints a plain array of the jobs fetched, as it always has.

use sup_proto::json::JobView;
use sup_proto::v1;

use super::json_error;
use crate::cli::JobListArgs;
use crate::client::{Client, ListedJobs};
use crate::error::CtlError;
use crate::humanize::{opt, or_none, percent, si, truncate};
use crate::table::*;

pub(super) async fn run(
    client: &mut Client,
    args: &JobListArgs,
    json: bool,
) -> Result<String, CtlError> {
    let listed = fetch(client, args).await?;
    if json {
        // The array stays an array: what was left out goes to stderr.
        if let Some(note) = more_note(&listed, args) {
            eprintln!("supctl: {}", note.trim());
        }
        jobs_json(&listed.page.jobs).map_err(json_error)
    } else {
        Ok(listing_text(&listed, args))
    }
}

/// The most jobs supd puts in one page (it cuts larger limits to this).
const LARGEST_PAGE: u32 = 1000;

/// How many jobs a listing wants: `None` for every one, `Some(0)` for one
/// page of supd's default size.
fn wanted(args: &JobListArgs) -> Option<usize> {
    match (args.all, args.limit) {
        (true, _) | (false, Some(0)) => None,
        (false, None) => Some(0),
        (false, Some(n)) => Some(n as usize),
    }
}

/// The pages `args` asks for, joined into one: the last token (and the
/// count after it) when it stopped before the end.
async fn fetch(client: &mut Client, args: &JobListArgs) -> Result<ListedJobs, CtlError> {
    let wanted = wanted(args);
    let mut out = ListedJobs {
        page: v1::ListJobsResponse {
            next_continue_token: args.continue_token.clone().unwrap_or_default(),
            ..Default::default()
        },
        omitted_by_status: 0,
    };
    loop {
        let limit = match wanted {
            Some(0) => 0,
            Some(n) => u32::try_from(n.saturating_sub(out.page.jobs.len())).unwrap_or(u32::MAX),
            None => LARGEST_PAGE,
        };
        let listed = client
            .list_jobs(v1::ListJobsRequest {
                states: args.state.clone(),
                limit,
                continue_token: std::mem::take(&mut out.page.next_continue_token),
            })
            .await?;
        let progressed = !listed.page.jobs.is_empty();
        out.page.jobs.extend(listed.page.jobs);
        out.page.next_continue_token = listed.page.next_continue_token;
        out.page.remaining = listed.page.remaining;
        out.omitted_by_status = listed.omitted_by_status;
        let done = match wanted {
            Some(0) => true,
            Some(n) => out.page.jobs.len() >= n,
            None => false,
        };
        // An empty page with a token would loop forever: supd never sends
        // one, but a client must not hang on it.
        if done || out.page.next_continue_token.is_empty() || !progressed {
            return Ok(out);
        }
    }
}

/// The table, then how to go on when the listing stopped early.
pub fn listing_text(listed: &ListedJobs, args: &JobListArgs) -> String {
    let mut out = if listed.page.jobs.is_empty() && !args.state.is_empty() {
        "No jobs match.\n".to_owned()
    } else {
        jobs_text(&listed.page.jobs)
    };
    if let Some(note) = more_note(listed, args) {
        out.push_str(&note);
    }
    out
}

/// What was left out and how to get it: the same command with
/// `--continue`, so it can be pasted.
fn more_note(listed: &ListedJobs, args: &JobListArgs) -> Option<String> {
    if listed.omitted_by_status > 0 {
        return Some(format!(
            "{} more jobs not shown (finished ones, oldest first; this supd cannot list \
             more); supctl job describe NAME\n",
            listed.omitted_by_status
        ));
    }
    if listed.page.next_continue_token.is_empty() {
        return None;
    }
    let mut next = String::from("supctl jobs");
    if !args.state.is_empty() {
        next.push_str(&format!(" --state {}", args.state.join(",")));
    }
    if let Some(limit) = args.limit.filter(|l| *l > 0) {
        next.push_str(&format!(" --limit {limit}"));
    }
    let n = listed.page.remaining;
    Some(format!(
        "\n{n} {} more; next page: {next} --continue {} (or --all)\n",
        if n == 1 { "job" } else { "jobs" },
        listed.page.next_continue_token
    ))
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
            serde_json::json!({"path": "/mnt/ckpt/llm/step-1000", "step": 1000, "verified": null})
        );
        assert_eq!(arr[0]["restarts"], 2);
        assert_eq!(arr[0]["reason"], serde_json::Value::Null);
        assert_eq!(arr[1]["checkpoint"], serde_json::Value::Null);
        assert_eq!(arr[1]["step"], serde_json::Value::Null);
        assert_eq!(jobs_json(&[]).unwrap(), "[]\n");
    }

    #[test]
    fn a_listing_cut_short_says_how_to_go_on() {
        let listed = ListedJobs {
            page: v1::ListJobsResponse {
                jobs: vec![job("llm-7b", "running")],
                next_continue_token: "AQID".into(),
                remaining: 150,
            },
            omitted_by_status: 0,
        };
        let args = JobListArgs {
            state: vec!["running".into(), "failed".into()],
            limit: Some(1),
            ..Default::default()
        };
        let text = listing_text(&listed, &args);
        assert!(
            text.ends_with(
                "\n150 jobs more; next page: supctl jobs --state running,failed --limit 1 \
                 --continue AQID (or --all)\n"
            ),
            "{text}"
        );
        let last = ListedJobs::default();
        assert_eq!(listing_text(&last, &args), "No jobs match.\n");
        assert_eq!(listing_text(&last, &JobListArgs::default()), "No jobs.\n");
        assert_eq!(wanted(&JobListArgs::default()), Some(0));
        let all = JobListArgs {
            all: true,
            ..Default::default()
        };
        assert_eq!(wanted(&all), None);
    }
}
