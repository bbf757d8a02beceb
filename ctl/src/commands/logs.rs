//! `supctl logs JOB RANK`: the tail of one rank's log, read by its agent.

use serde::Serialize;
use sup_proto::v1;

use super::json_error;
use crate::client::Client;
use crate::error::CtlError;
use crate::table::*;

pub(super) async fn run(
    client: &mut Client,
    job: &str,
    rank: u32,
    lines: u32,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::GetLogsRequest {
        job: job.to_owned(),
        rank,
        lines,
    };
    let r = client.logs(req).await?;
    // The agent could not read the log (no such rank on it, file
    // gone): supd still answered, so this is not a gRPC error.
    if !r.error.trim().is_empty() {
        return Err(CtlError::Other(format!(
            "cannot read the log of rank {rank} of job {job}: {}",
            r.error.trim()
        )));
    }
    if json {
        logs_json(job, rank, &r).map_err(json_error)
    } else {
        Ok(logs_text(&r))
    }
}

/// `logs` with `-o json`: the text as the agent sent it, with what it is of.
#[derive(Debug, Serialize)]
pub struct LogsView {
    pub job: String,
    pub rank: u32,
    pub text: String,
}

pub fn logs_json(job: &str, rank: u32, r: &v1::LogResponse) -> serde_json::Result<String> {
    json(&LogsView {
        job: job.to_owned(),
        rank,
        text: r.text.clone(),
    })
}

/// The log text as the agent read it. Only a missing final newline is added,
/// so the shell prompt does not end up glued to the last line.
pub fn logs_text(r: &v1::LogResponse) -> String {
    let mut text = r.text.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_output() {
        let log = |text: &str| v1::LogResponse {
            text: text.into(),
            ..Default::default()
        };
        assert_eq!(logs_text(&log("a\nb")), "a\nb\n");
        assert_eq!(logs_text(&log("a\n\tb\n")), "a\n\tb\n");
        assert_eq!(logs_text(&log("")), "");
        let v: serde_json::Value =
            serde_json::from_str(&logs_json("llm", 3, &log("a\n")).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"job": "llm", "rank": 3, "text": "a\n"})
        );
    }
}
