//! One file per subcommand: what it asks supd, and what it prints (a table
//! for people, JSON for scripts), with its tests. This module routes a
//! parsed command to its file and holds what they share.
//!
//! Rendering is pure functions from proto data (and the current time) to
//! text, so it is tested without a server. JSON goes through
//! `sup_proto::json` views only, so `supctl -o json` and supd's HTTP API
//! cannot drift apart.

mod breaker;
mod certs;
mod checkpoints;
mod completions;
mod cordon;
mod drain;
mod drill;
mod events;
mod job;
mod jobs;
mod logs;
mod node;
mod nodes;
mod status;
#[cfg(test)]
mod test_support;
mod uncordon;

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use crate::cli::{
    default_operator, Cli, Command, JobCommand, NodeArgs, NodeCommand, Output, Watch,
};
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize;

/// Commands that need no supervisor: completions and the offline CA.
/// `Ok(false)` when the command is not one of them.
pub fn run_offline(cli: &Cli, out: &mut dyn Write) -> Result<bool, CtlError> {
    let json = cli.global.output == Output::Json;
    match &cli.command {
        Command::Completions { shell } => completions::run(*shell, out)?,
        Command::Certs(command) => certs::run(command, json, out)?,
        _ => return Ok(false),
    }
    Ok(true)
}

/// The job spec a `job submit` sends, read before connecting: a spec that
/// cannot be read is the operator's to fix whether or not supd is up.
pub fn spec_to_send(cli: &Cli) -> Result<Option<String>, CtlError> {
    match &cli.command {
        Command::Job(JobCommand::Submit { file, .. }) => Ok(Some(job::read_spec(file)?)),
        _ => Ok(None),
    }
}

/// Runs a command against supd until it is done (`--watch` and
/// `events --follow` until interrupted).
pub async fn run_online(
    cli: &Cli,
    client: &mut Client,
    spec: Option<String>,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let json = cli.global.output == Output::Json;
    match &cli.command {
        Command::Status {
            watch: Watch { watch: Some(every) },
        }
        | Command::Nodes {
            watch: Watch { watch: Some(every) },
            ..
        }
        | Command::Jobs {
            watch: Watch { watch: Some(every) },
            ..
        } => return watch(cli, client, *every, out).await,
        Command::Events {
            limit,
            after,
            all,
            follow: true,
            ..
        } => return events::follow(client, *limit, *after, *all, json, out).await,
        _ => {}
    }
    let text = once(cli, client, spec).await?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// One run of a command that prints something.
async fn once(cli: &Cli, client: &mut Client, spec: Option<String>) -> Result<String, CtlError> {
    let json = cli.global.output == Output::Json;
    match &cli.command {
        Command::Status { .. } => status::run(client, json).await,
        Command::Nodes { list, .. } => nodes::run(client, list, json).await,
        Command::Node(NodeArgs {
            command: Some(NodeCommand::Remove { id, by }),
            ..
        }) => node::remove(client, id, by, json).await,
        Command::Node(NodeArgs { id, .. }) => {
            node::run(client, id.as_deref().unwrap_or_default(), json).await
        }
        Command::Cordon { id, reason, by } => cordon::run(client, id, reason, by, json).await,
        Command::Drain {
            id,
            reason,
            deadline,
            by,
        } => drain::run(client, id, reason, *deadline, by, json).await,
        Command::Uncordon {
            id,
            reason,
            by,
            skip_validation,
        } => uncordon::run(client, id, reason.as_deref(), by, *skip_validation, json).await,
        Command::Events {
            limit,
            after,
            drills: true,
            ..
        } => events::drills(client, *limit, *after, json).await,
        Command::Events {
            limit, after, all, ..
        } => events::run(client, *limit, *after, *all, json).await,
        Command::Jobs { list, .. } => jobs::run(client, list, json).await,
        Command::Job(command) => job::run(client, command, spec, json).await,
        Command::Checkpoints { job } => checkpoints::run(client, job, json).await,
        Command::Logs { job, rank, lines } => logs::run(client, job, *rank, *lines, json).await,
        Command::Drill(drill) => drill::run(client, drill, json).await,
        Command::Breaker(breaker) => breaker::run(client, breaker, json).await,
        // Handled before connecting.
        Command::Completions { .. } | Command::Certs(_) => Ok(String::new()),
    }
}

/// `--watch`: the command's output again every `every`, the screen cleared
/// first for tables (like watch(1)); until interrupted. A failed request is
/// shown in place and retried, as an operator watching at 3 a.m. wants to
/// see supd come back rather than lose the view.
async fn watch(
    cli: &Cli,
    client: &mut Client,
    every: std::time::Duration,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let json = cli.global.output == Output::Json;
    // `out` is supctl's stdout: redraw in place only on a terminal.
    let redraw = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let text = match once(cli, client, None).await {
            Ok(text) => text,
            Err(e) if json => return Err(e),
            Err(e) => format!("supctl: error: {}\n", humanize::one_line(&e.to_string())),
        };
        if json {
            // One document per line, for `jq -c` pipelines.
            let compact = serde_json::from_str::<serde_json::Value>(&text)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| text.trim().to_owned());
            writeln!(out, "{compact}")?;
        } else {
            let header = format!(
                "Every {}: supctl {}    {}",
                humantime::format_duration(every),
                command_name(&cli.command),
                humanize::timestamp(now_ms())
            );
            out.write_all(watch_frame(&header, &text, redraw).as_bytes())?;
        }
        out.flush()?;
    }
}

/// One `--watch` frame of tables. On a terminal the screen is cleared
/// first, like watch(1); on a pipe or in a file the frames follow one
/// another as plain text, a blank line apart, since clear-screen codes
/// would be garbage to a log, `grep` or `tee`.
fn watch_frame(header: &str, text: &str, redraw: bool) -> String {
    if redraw {
        format!("\x1b[H\x1b[2J{header}\n\n{text}")
    } else {
        format!("{header}\n\n{text}\n")
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Nodes { .. } => "nodes",
        Command::Jobs { .. } => "jobs",
        _ => "status",
    }
}

/// Who a change is recorded under: `--by`, else the operator's login.
fn operator(by: &Option<String>) -> String {
    by.clone()
        .unwrap_or_else(|| default_operator(|key| std::env::var(key).ok()))
}

fn now_ms() -> i64 {
    sup_proto::time::to_unix_ms(SystemTime::now())
}

fn json_error(e: serde_json::Error) -> CtlError {
    CtlError::Other(format!("cannot encode JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::watch_frame;

    #[test]
    fn watch_frames_clear_the_screen_only_on_a_terminal() {
        let table = "JOB  STATE\nllm  running\n";
        assert_eq!(
            watch_frame("Every 2s: supctl jobs", table, true),
            "\x1b[H\x1b[2JEvery 2s: supctl jobs\n\nJOB  STATE\nllm  running\n"
        );
        // On a pipe: plain text, each frame after the last, a blank line
        // between them.
        let frame = watch_frame("Every 2s: supctl jobs", table, false);
        assert_eq!(
            frame,
            "Every 2s: supctl jobs\n\nJOB  STATE\nllm  running\n\n"
        );
        assert!(!frame.contains('\x1b'));
    }
}
