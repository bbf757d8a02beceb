//! `supctl job submit|stop|describe`: one job (its spec read from a file or stdin).

use serde::Serialize;
use sup_proto::json::JobView;
use sup_proto::v1;

use super::{json_error, now_ms, operator};
use crate::client::{self, Client};
use crate::error::CtlError;
use crate::humanize::{ago, one_line, opt, or_none, percent, si, timestamp, NONE};
use crate::table::*;
use std::io::Read;
use std::path::Path;

use crate::cli::JobCommand;

/// `spec` is the submitted file's text, read before connecting.
pub(super) async fn run(
    client: &mut Client,
    command: &JobCommand,
    spec: Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    match command {
        JobCommand::Submit { by, slurm_job, .. } => {
            let req = v1::SubmitJobRequest {
                spec_toml: spec.unwrap_or_default(),
                by: operator(by),
                request_id: client::request_id(),
                slurm_job_id: slurm_job.unwrap_or(0),
            };
            let r = client.submit_job(req).await?;
            if json {
                job_outcome_json(&r).map_err(json_error)
            } else {
                Ok(job_submit_text(&r))
            }
        }
        JobCommand::Stop { name, reason, by } => {
            let req = v1::StopJobRequest {
                name: name.clone(),
                by: operator(by),
                reason: reason.clone().unwrap_or_default(),
                request_id: client::request_id(),
            };
            let r = client.stop_job(req).await?;
            if json {
                job_outcome_json(&r).map_err(json_error)
            } else {
                Ok(job_stop_text(name, reason.as_deref(), &r))
            }
        }
        JobCommand::Wait { name } => wait(client, name, json).await,
        JobCommand::Describe { name } => {
            let j = client.job(name).await?;
            if json {
                job_json(&j).map_err(json_error)
            } else {
                Ok(job_text(&j, now_ms()))
            }
        }
    }
}

/// How often `job wait` asks.
const WAIT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// `supctl job wait NAME`: polls until the job is succeeded, failed or
/// stopped; rides out supd being unreachable (a restart, a failover) for
/// as long as it takes. The final state and reason are printed; anything
/// but succeeded is an error (exit status 1), so a batch script's exit
/// status is the job's outcome.
async fn wait(client: &mut Client, name: &str, json: bool) -> Result<String, CtlError> {
    let mut unreachable = false;
    let job = loop {
        match client.job(name).await {
            Ok(j) if matches!(j.state.as_str(), "succeeded" | "failed" | "stopped") => break j,
            Ok(_) => unreachable = false,
            Err(e @ CtlError::Unreachable { .. }) => {
                if !unreachable {
                    eprintln!("supctl: {e}; still waiting for job {name}");
                }
                unreachable = true;
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(WAIT_POLL).await;
    };
    let text = if json {
        job_json(&job).map_err(json_error)?
    } else {
        format!(
            "job {name} {}{}\n",
            job.state,
            if job.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", one_line(&job.reason))
            }
        )
    };
    if job.state == "succeeded" {
        return Ok(text);
    }
    if json {
        // The job's JSON is the answer either way (stdout, for a script to
        // parse); the exit status and one line on stderr say it failed.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Err(CtlError::Other(format!("job {name} {}", job.state)));
    }
    Err(CtlError::Other(text.trim_end().to_owned()))
}

/// The result of `job submit` / `job stop` with `-o json`.
#[derive(Debug, Serialize)]
pub struct JobOutcomeView {
    pub changed: bool,
    pub message: String,
    /// The job after the request; null only if the server sent none.
    pub job: Option<JobView>,
}

impl From<&v1::JobResponse> for JobOutcomeView {
    fn from(r: &v1::JobResponse) -> Self {
        JobOutcomeView {
            changed: r.changed,
            message: r.message.clone(),
            job: r.job.as_ref().map(JobView::from),
        }
    }
}

pub fn job_json(job: &v1::Job) -> serde_json::Result<String> {
    json(&JobView::from(job))
}

pub fn job_outcome_json(r: &v1::JobResponse) -> serde_json::Result<String> {
    json(&JobOutcomeView::from(r))
}

/// Everything about one job: its state and why, where it runs (nodes in
/// rank order: node rank 0 holds `MASTER_ADDR`), where it would resume
/// from, and the spec as submitted.
pub fn job_text(j: &v1::Job, now_ms: i64) -> String {
    let when = |ms: i64| {
        if ms <= 0 {
            NONE.to_owned()
        } else {
            format!("{} ({})", timestamp(ms), ago(now_ms, ms))
        }
    };
    // GetJob lists at most 1,024 of a job's nodes; node_count has them all
    // (zero from a supd that always listed every node).
    let node_count = (j.node_count as usize).max(j.nodes.len());
    let fields: Vec<(&str, String)> = vec![
        ("Job", or_none(&j.name)),
        ("State", or_none(&j.state)),
        ("Reason", or_none(&j.reason)),
        ("Priority", or_none(&j.priority)),
        ("Generation", j.generation.to_string()),
        ("World size", j.world_size.to_string()),
        (
            "Nodes",
            format!(
                "{} of {} desired (min {})",
                node_count, j.desired_nodes, j.min_nodes
            ),
        ),
        ("Step", opt(j.step, |s| s.to_string())),
        ("Tokens/s", opt(j.tokens_per_s, si)),
        ("MFU", opt(j.mfu, percent)),
        ("Rollbacks", j.rollbacks.to_string()),
        (
            "Checkpoint",
            opt(j.checkpoint.as_ref(), |c| {
                format!("step {} at {}", c.step, or_none(&c.path))
            }),
        ),
        ("Restarts", j.restarts.to_string()),
        ("Submitted", when(j.submitted_at_unix_ms)),
    ];
    let mut out = fields_text(&fields);
    out.push('\n');
    if j.nodes.is_empty() {
        out.push_str("No nodes assigned.\n");
    } else {
        // Per-node figures only once the detectors have some: a job that
        // has not reported yet keeps the plain rank table.
        let mut table = if j.node_stats.is_empty() {
            new_table(&["NODE RANK", "NODE"])
        } else {
            new_table(&[
                "NODE RANK",
                "NODE",
                "TOKENS/S",
                "STEP TIME",
                "SLOWDOWN",
                "STRAGGLER",
            ])
        };
        for (rank, node) in j.nodes.iter().enumerate() {
            let mut row = vec![rank.to_string(), or_none(node)];
            if !j.node_stats.is_empty() {
                let stats = j.node_stats.iter().find(|s| &s.node == node);
                row.extend([
                    opt(stats.and_then(|s| s.tokens_per_s), si),
                    opt(stats.and_then(|s| s.step_time_s), |t| format!("{t:.3}s")),
                    opt(stats.and_then(|s| s.slowdown), |f| format!("{f:.2}x")),
                    if stats.is_some_and(|s| s.straggler) {
                        "yes".to_owned()
                    } else {
                        NONE.to_owned()
                    },
                ]);
            }
            table.add_row(row);
        }
        out.push_str(&finish(table));
        if j.nodes.len() < node_count {
            out.push_str(&format!(
                "(first {} of {} nodes; supctl nodes --job {} lists all)\n",
                j.nodes.len(),
                node_count,
                j.name
            ));
            // The answer's node stats are its stragglers first: name those
            // the table above could not show.
            let hidden: Vec<&str> = j
                .node_stats
                .iter()
                .filter(|s| s.straggler && !j.nodes.contains(&s.node))
                .map(|s| s.node.as_str())
                .collect();
            if !hidden.is_empty() {
                out.push_str(&format!(
                    "Stragglers among the other nodes: {}\n",
                    hidden.join(", ")
                ));
            }
        }
    }
    if let Some(g) = &j.goodput {
        out.push('\n');
        out.push_str(&goodput_text(g));
    }
    out.push('\n');
    if j.spec_toml.trim().is_empty() {
        out.push_str("Spec: -\n");
    } else {
        // Indented so the spec stands apart from the fields above it; kept
        // otherwise as submitted, so it can be copied back into a file. Only
        // control characters go (tabs stay): a spec is someone else's text,
        // and escape sequences in it must not drive this terminal.
        out.push_str("Spec:\n");
        for line in j.spec_toml.trim_end().lines() {
            let line: String = line
                .chars()
                .filter(|c| *c == '\t' || !c.is_control())
                .collect();
            let line = line.trim_end();
            if line.is_empty() {
                out.push('\n');
            } else {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}

/// Where the job's wall time went (live goodput accounting), what it cost
/// in GPU-hours, and the checkpoint interval Young/Daly recommends.
fn goodput_text(g: &v1::JobGoodput) -> String {
    let pct = |s: f64| {
        if g.wall_s > 0.0 {
            format!("{:.1}%", s / g.wall_s * 100.0)
        } else {
            NONE.to_owned()
        }
    };
    let gpu_h = |s: f64| format!("{:.2}", s * f64::from(g.gpus) / 3600.0);
    let secs = |s: f64| format!("{s:.1}s");
    let mut table = new_table(&["BUCKET", "SECONDS", "SHARE", "LOST GPU-HOURS"]);
    for (name, s, lost) in [
        ("productive", g.productive_s, false),
        ("redone", g.redone_s, true),
        ("detection", g.detection_s, true),
        ("restart", g.restart_s, true),
        ("checkpoint_save", g.checkpoint_save_s, true),
        ("waiting", g.waiting_s, true),
        ("stopped", g.stopped_s, true),
    ] {
        let marker = if g.bucket == name { " (now)" } else { "" };
        table.add_row(vec![
            format!("{name}{marker}"),
            secs(s),
            pct(s),
            if lost { gpu_h(s) } else { NONE.to_owned() },
        ]);
    }
    let fields: Vec<(&str, String)> = vec![
        ("Goodput (ETTR)", opt(g.ettr, percent)),
        ("Wall time", secs(g.wall_s)),
        ("Failures", g.failures.to_string()),
        (
            "Failure rate",
            opt(g.failures_per_node_hour, |r| {
                format!("{r:.4} per node-hour")
            }),
        ),
        ("Checkpoint cost", opt(g.checkpoint_cost_s, secs)),
        (
            "Checkpoint every",
            opt(g.checkpoint_interval_s, |s| {
                match g.checkpoint_interval_steps {
                    Some(steps) => format!("{s:.1}s ({steps:.0} steps)"),
                    None => format!("{s:.1}s"),
                }
            }),
        ),
        (
            "Recommended",
            opt(g.recommended_checkpoint_interval_s, |s| {
                let gain = opt(g.recommended_gain, |x| format!("{:.2} pp", x * 100.0));
                format!("every {s:.1}s (Young/Daly √(2·cost·MTBF)); ETTR gain ≈ {gain} (first order: cost/τ + τ/(2·MTBF))")
            }),
        ),
    ];
    let mut out = String::from("Goodput:\n");
    out.push_str(&fields_text(&fields));
    out.push_str(&finish(table));
    out
}

/// `job NAME submitted` when the job was created; otherwise the server's
/// explanation (e.g. that the same spec is already running).
pub fn job_submit_text(r: &v1::JobResponse) -> String {
    let name = r.job.as_ref().map(|j| one_line(&j.name));
    let line = match (r.changed, name) {
        (true, Some(name)) if !name.is_empty() => format!("job {name} submitted"),
        _ if !r.message.trim().is_empty() => one_line(&r.message),
        (true, _) => "job submitted".to_owned(),
        (false, _) => "nothing changed".to_owned(),
    };
    line + "\n"
}

pub fn job_stop_text(name: &str, reason: Option<&str>, r: &v1::JobResponse) -> String {
    let line = if r.changed {
        match reason {
            Some(reason) => format!("job {name} stopped: {}", one_line(reason)),
            None => format!("job {name} stopped"),
        }
    } else if !r.message.trim().is_empty() {
        one_line(&r.message)
    } else {
        format!("job {name} was not running; nothing changed")
    };
    line + "\n"
}

/// Job specs are a few hundred bytes; anything this big is the wrong file
/// (a checkpoint, a binary), better refused here than sent to supd.
const MAX_SPEC_BYTES: u64 = 1024 * 1024;

/// Reads the job spec from a file, or from stdin for `-`. supd validates the
/// contents; here only "cannot read it" is an error, naming the path.
pub fn read_spec(path: &Path) -> Result<String, CtlError> {
    let (name, reader): (String, Box<dyn Read>) = if path.as_os_str() == "-" {
        ("standard input".to_owned(), Box::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).map_err(|e| spec_error(&path.display().to_string(), &e))?;
        (path.display().to_string(), Box::new(file))
    };
    read_spec_from(&name, reader)
}

fn read_spec_from(name: &str, reader: impl Read) -> Result<String, CtlError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| spec_error(name, &e))?;
    if u64::try_from(bytes.len()).is_ok_and(|n| n > MAX_SPEC_BYTES) {
        return Err(CtlError::Other(format!(
            "cannot read job spec {name}: larger than {} KiB; is it the TOML job spec?",
            MAX_SPEC_BYTES / 1024
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        CtlError::Other(format!(
            "cannot read job spec {name}: not UTF-8 text; is it the TOML job spec?"
        ))
    })
}

fn spec_error(name: &str, e: &std::io::Error) -> CtlError {
    CtlError::Other(format!("cannot read job spec {name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn job_details_show_nodes_in_rank_order_checkpoint_and_spec() {
        let mut j = job("llm-7b", "recovering");
        j.nodes = vec!["n3".into(), "n1".into(), "n2".into()];
        j.reason = "node n4 cordoned: xid 79".into();
        j.spec_toml =
            "name = \"llm-7b\"\r\nnodes = 4\n\n[env]\nNCCL_DEBUG = \"WARN\u{1b}[2J\"\n".into();
        let text = job_text(&j, NOW);
        assert!(text.starts_with("Job:        llm-7b\n"), "{text}");
        for line in [
            "State:      recovering",
            "Reason:     node n4 cordoned: xid 79",
            "Priority:   normal",
            "Generation: 3",
            "World size: 8",
            "Nodes:      3 of 4 desired (min 2)",
            "Step:       1200",
            "Checkpoint: step 1000 at /mnt/ckpt/llm/step-1000",
            "Restarts:   2",
            "Submitted:  2027-01-15T07:50:00Z (10m ago)",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let ranks: Vec<Vec<&str>> = text
            .lines()
            .skip_while(|l| !l.starts_with("NODE RANK"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(ranks, [["0", "n3"], ["1", "n1"], ["2", "n2"]], "{text}");
        assert!(
            text.ends_with(
                "Spec:\n  name = \"llm-7b\"\n  nodes = 4\n\n  [env]\n  NCCL_DEBUG = \"WARN[2J\"\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn job_details_show_throughput_mfu_and_stragglers() {
        let mut j = job("llm", "running");
        j.rollbacks = 1;
        j.node_stats = vec![
            v1::JobNodeStats {
                node: "gpu-node-001".into(),
                step_time_s: Some(0.4),
                slowdown: Some(1.0),
                straggler: false,
                tokens_per_s: Some(6_172.5),
            },
            v1::JobNodeStats {
                node: "gpu-node-005".into(),
                step_time_s: Some(0.6),
                slowdown: Some(1.5),
                straggler: true,
                tokens_per_s: None,
            },
        ];
        let text = job_text(&j, NOW);
        for line in ["Tokens/s:   12.3k", "MFU:        41.5%", "Rollbacks:  1"] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert_eq!(
            row(&text, "0"),
            ["0", "gpu-node-001", "6.2k", "0.400s", "1.00x", "-"],
            "{text}"
        );
        assert_eq!(
            row(&text, "1"),
            ["1", "gpu-node-005", "-", "0.600s", "1.50x", "yes"],
            "{text}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&job_json(&j).expect("json")).expect("valid");
        assert_eq!(json["tokens_per_s"], 12_345.0);
        assert_eq!(json["node_stats"][0]["tokens_per_s"], 6_172.5);
        assert_eq!(json["node_stats"][1]["straggler"], true);
    }

    #[test]
    fn job_details_of_a_capped_job_say_how_many_nodes_it_holds() {
        let mut j = job("llama-405b", "running");
        j.nodes = (0..1024).map(|i| format!("n{i:05}")).collect();
        j.node_count = 16_320;
        j.desired_nodes = 16_320;
        j.node_stats = vec![v1::JobNodeStats {
            node: "n09000".into(),
            straggler: true,
            ..Default::default()
        }];
        let text = job_text(&j, NOW);
        for line in [
            "Nodes:      16320 of 16320 desired (min 2)",
            "(first 1024 of 16320 nodes; supctl nodes --job llama-405b lists all)",
            "Stragglers among the other nodes: n09000",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // A job listed whole says nothing of the kind.
        let small = job("llm-7b", "running");
        assert!(!job_text(&small, NOW).contains("lists all"));
    }

    #[test]
    fn job_details_of_a_fresh_job_use_dashes() {
        let j = v1::Job {
            name: "new".into(),
            state: "pending".into(),
            desired_nodes: 2,
            min_nodes: 1,
            ..Default::default()
        };
        let text = job_text(&j, NOW);
        for line in [
            "Reason:     -",
            "Step:       -",
            "Checkpoint: -",
            "Submitted:  -",
            "No nodes assigned.",
            "Spec: -",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn job_json_is_the_shared_job_view() {
        let v: serde_json::Value =
            serde_json::from_str(&job_json(&job("llm-7b", "running")).unwrap()).unwrap();
        assert_eq!(v["name"], "llm-7b");
        assert_eq!(v["desired_nodes"], 4);
        assert_eq!(v["min_nodes"], 2);
        assert_eq!(v["priority"], "normal");
        assert_eq!(v["submitted_at"], "2027-01-15T07:50:00.000Z");
        assert_eq!(v["checkpoint"]["step"], 1000);
    }

    #[test]
    fn submit_and_stop_messages() {
        let created = v1::JobResponse {
            job: Some(job("llm-7b", "pending")),
            changed: true,
            message: "accepted".into(),
        };
        assert_eq!(job_submit_text(&created), "job llm-7b submitted\n");
        let same = v1::JobResponse {
            job: Some(job("llm-7b", "running")),
            changed: false,
            message: "job 'llm-7b' already runs this spec".into(),
        };
        assert_eq!(
            job_submit_text(&same),
            "job 'llm-7b' already runs this spec\n"
        );
        assert_eq!(
            job_submit_text(&v1::JobResponse::default()),
            "nothing changed\n"
        );

        let stopped = v1::JobResponse {
            changed: true,
            ..Default::default()
        };
        assert_eq!(
            job_stop_text("llm-7b", Some("done\nfor today"), &stopped),
            "job llm-7b stopped: done for today\n"
        );
        assert_eq!(
            job_stop_text("llm-7b", None, &stopped),
            "job llm-7b stopped\n"
        );
        assert_eq!(
            job_stop_text("llm-7b", None, &v1::JobResponse::default()),
            "job llm-7b was not running; nothing changed\n"
        );
    }

    #[test]
    fn job_outcome_json_has_changed_message_and_job() {
        let r = v1::JobResponse {
            job: Some(job("llm-7b", "pending")),
            changed: true,
            message: "accepted".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&job_outcome_json(&r).unwrap()).unwrap();
        assert_eq!(v["changed"], true);
        assert_eq!(v["message"], "accepted");
        assert_eq!(v["job"]["name"], "llm-7b");
        assert_eq!(v["job"]["state"], "pending");
        let none: serde_json::Value =
            serde_json::from_str(&job_outcome_json(&v1::JobResponse::default()).unwrap()).unwrap();
        assert_eq!(none["job"], serde_json::Value::Null);
    }

    #[test]
    fn a_spec_is_read_as_is() {
        let spec = "name = \"x\"\n# comment\ncommand = [\"true\"]\n";
        assert_eq!(read_spec_from("job.toml", spec.as_bytes()).unwrap(), spec);
    }

    #[test]
    fn an_oversized_or_binary_spec_is_refused_with_its_name() {
        let big = vec![b'#'; 1024 * 1024 + 1];
        let err = read_spec_from("big.toml", big.as_slice()).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::OTHER);
        assert!(
            err.to_string()
                .starts_with("cannot read job spec big.toml: larger than 1024 KiB"),
            "{err}"
        );
        let just_fits = vec![b'#'; 1024 * 1024];
        assert!(read_spec_from("ok.toml", just_fits.as_slice()).is_ok());
        let err = read_spec_from("bin", &[0xff, 0xfe][..]).unwrap_err();
        assert!(err.to_string().contains("bin: not UTF-8"), "{err}");
    }

    #[test]
    fn a_missing_spec_file_names_the_path() {
        let err = read_spec(Path::new("/nonexistent/spec.toml")).unwrap_err();
        assert_eq!(err.exit_code(), crate::error::exit::OTHER);
        assert!(
            err.to_string()
                .starts_with("cannot read job spec /nonexistent/spec.toml: "),
            "{err}"
        );
    }
}
