//! supctl, the operator CLI of sup: talks to supd's control API over gRPC and
//! prints tables for people or JSON for scripts.
//!
//! `main.rs` only parses arguments; [`run`] does the rest and turns every
//! failure into one line on stderr and a documented exit code
//! ([`error::exit`]).

pub mod cli;
pub mod client;
pub mod error;
pub mod humanize;
pub mod render;

use std::io::Write;
use std::process::ExitCode;
use std::time::SystemTime;

use sup_proto::v1;

use crate::cli::{default_operator, Cli, Command, Output};
use crate::client::Client;
use crate::error::{exit, CtlError};
use crate::render::CordonAction;

/// Runs one command against stdout and reports any error on stderr.
pub fn run(cli: Cli) -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Other(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(execute(&cli, &mut std::io::stdout().lock())));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) if e.is_broken_pipe() => ExitCode::from(exit::OK),
        Err(e) => {
            report_error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `supctl: error: ...` as a single line, whatever the server sent.
pub fn report_error(e: &CtlError) {
    let line = humanize::one_line(&e.to_string());
    // Nothing useful is left to do if stderr itself is gone.
    let _ = writeln!(std::io::stderr(), "supctl: error: {line}");
}

/// Runs the command, writing its output to `out`.
pub async fn execute(cli: &Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    let g = &cli.global;
    let json = g.output == Output::Json;
    let mut client = Client::connect(&g.supervisor, g.timeout).await?;
    let text = match &cli.command {
        Command::Status => {
            let s = client.status().await?;
            if json {
                render::status_json(&s).map_err(json_error)?
            } else {
                render::status_text(&s, now_ms())
            }
        }
        Command::Nodes => {
            let s = client.status().await?;
            if json {
                render::nodes_json(&s.nodes).map_err(json_error)?
            } else {
                render::nodes_text(&s.nodes, now_ms())
            }
        }
        Command::Node { id } => {
            let n = client.node(id).await?;
            if json {
                render::node_json(&n).map_err(json_error)?
            } else {
                render::node_text(&n, now_ms())
            }
        }
        Command::Cordon { id, reason, by } => {
            let req = v1::CordonRequest {
                node_id: id.clone(),
                reason: reason.clone(),
                by: operator(by),
            };
            let r = client.cordon(req).await?;
            cordon_output(json, CordonAction::Cordon, id, Some(reason), &r)?
        }
        Command::Uncordon { id, reason, by } => {
            let req = v1::UncordonRequest {
                node_id: id.clone(),
                by: operator(by),
                reason: reason.clone().unwrap_or_default(),
            };
            let r = client.uncordon(req).await?;
            cordon_output(json, CordonAction::Uncordon, id, reason.as_deref(), &r)?
        }
        Command::Events { limit, after } => {
            let req = v1::ListEventsRequest {
                after_seq: *after,
                limit: limit.unwrap_or(0),
            };
            let events = render::oldest_first(client.events(req).await?);
            if json {
                render::events_json(&events).map_err(json_error)?
            } else {
                render::events_text(&events)
            }
        }
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn cordon_output(
    json: bool,
    action: CordonAction,
    id: &str,
    reason: Option<&str>,
    r: &v1::CordonResponse,
) -> Result<String, CtlError> {
    if json {
        render::cordon_json(r).map_err(json_error)
    } else {
        Ok(render::cordon_text(action, id, reason, r))
    }
}

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
