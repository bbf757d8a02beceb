//! Validation before a node returns to service: when an operator uncordons
//! a node, supd asks its agent to run the configured validation command
//! (`dcgmi diag -r 2`, an NCCL all-reduce test, ...) and returns the node to
//! service only if it passes; a failure keeps it cordoned with the tail of
//! the output as evidence. A repaired board that comes back bad would
//! otherwise cost the next job that lands on it a whole restart.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{Validate, ValidationResult};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bus::Outbox;

/// The output kept for supd (it keeps 1 KiB of it as evidence).
const OUTPUT_TAIL_BYTES: usize = 4096;

/// What to run, from the agent's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Validation {
    /// Run with `/bin/sh -c`.
    pub command: Arc<str>,
    pub timeout: Duration,
}

/// Answers supd's validation requests one at a time.
pub async fn run(
    validation: Option<Validation>,
    mut requests: mpsc::Receiver<Validate>,
    outbox: Outbox,
) {
    while let Some(request) = requests.recv().await {
        let (passed, output) = match &validation {
            Some(v) => {
                info!(id = request.id, command = %v.command, "validating this node before it returns to service");
                run_once(v).await
            }
            // supd asks only agents that said they validate; an older
            // registration may have said otherwise.
            None => (
                false,
                "this agent has no validation_command configured".to_owned(),
            ),
        };
        if passed {
            info!(id = request.id, "validation passed");
        } else {
            warn!(id = request.id, output = %output, "validation failed");
        }
        outbox.send(AgentBody::ValidationResult(ValidationResult {
            id: request.id,
            passed,
            output,
        }));
    }
}

/// Runs the command once: whether it exited 0 within the timeout, and the
/// tail of its output (stdout, then stderr) with how it ended.
pub async fn run_once(v: &Validation) -> (bool, String) {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(v.command.as_ref())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout ends everything it started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(e) => return (false, format!("cannot run the validation command: {e}")),
    };
    let pid = child.id();
    match tokio::time::timeout(v.timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let mut tail = tail(&text, OUTPUT_TAIL_BYTES);
            if !out.status.success() {
                tail.push_str(&format!("\n(validation command {})", out.status));
            }
            (out.status.success(), tail)
        }
        Ok(Err(e)) => (false, format!("the validation command failed to run: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            (
                false,
                format!(
                    "the validation command did not finish within {}",
                    humantime::format_duration(v.timeout)
                ),
            )
        }
    }
}

fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validation(command: &str, timeout: Duration) -> Validation {
        Validation {
            command: Arc::from(command),
            timeout,
        }
    }

    #[tokio::test]
    async fn a_passing_command_passes_with_its_output() {
        let (passed, output) =
            run_once(&validation("echo all 8 GPUs pass", Duration::from_secs(30))).await;
        assert!(passed);
        assert_eq!(output, "all 8 GPUs pass");
    }

    #[tokio::test]
    async fn a_failing_command_fails_with_the_tail_of_its_output_and_status() {
        let (passed, output) = run_once(&validation(
            "echo checking; echo 'GPU 3: HBM test failed' >&2; exit 4",
            Duration::from_secs(30),
        ))
        .await;
        assert!(!passed);
        assert!(output.contains("GPU 3: HBM test failed"), "{output}");
        assert!(output.contains("exit status: 4"), "{output}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_fails_and_is_killed() {
        let (passed, output) = run_once(&validation("sleep 30", Duration::from_millis(200))).await;
        assert!(!passed);
        assert!(output.contains("did not finish within 200ms"), "{output}");
    }

    #[test]
    fn only_the_tail_is_kept() {
        let long = format!("{}end", "x".repeat(10_000));
        let t = tail(&long, 100);
        assert!(t.ends_with("end") && t.len() <= 100 + '…'.len_utf8());
    }
}
