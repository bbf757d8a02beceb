//! supctl, the operator CLI of sup: talks to supd's control API over gRPC and
//! prints tables for people or JSON for scripts.
//!
//! `main.rs` only parses arguments; [`run`] does the rest and turns every
//! failure into one line on stderr and a documented exit code
//! ([`error::exit`]).

pub mod certs;
pub mod cli;
pub mod client;
pub mod error;
pub mod humanize;
pub mod render;

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use sup_proto::v1;

use clap::ValueEnum;

use crate::cli::{
    default_operator, BreakerCommand, CertsCommand, Cli, Command, DrillCommand, JobCommand, Output,
    RecoveryActionArg, Watch,
};
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
    // Work that needs no supervisor happens first: completions must work
    // with no supd around, and a job spec that cannot be read is the
    // operator's problem to fix whether or not supd is up.
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(clap_complete::Shell::from(*shell), &mut cmd, "supctl", out);
        out.flush()?;
        return Ok(());
    }
    if let Command::Certs(CertsCommand::List { dir }) = &cli.command {
        let listed = certs::list(dir, time::OffsetDateTime::now_utc())?;
        let text = if json {
            serde_json::to_string_pretty(&listed).map_err(json_error)? + "\n"
        } else {
            render::certs_table(&listed)
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    if let Command::Certs(CertsCommand::Revoke { dir, role, name }) = &cli.command {
        let revoked = certs::revoke(dir, &certs::subject(role, std::slice::from_ref(name))?)?;
        let text = if json {
            serde_json::to_string_pretty(&revoked).map_err(json_error)? + "\n"
        } else {
            format!(
                "{} {} (serial {}); {} now revokes {} certificate(s): install it where supd's grpc.tls.crl points\n",
                revoked.what,
                if revoked.added { "revoked" } else { "was already revoked" },
                revoked.serial,
                revoked.crl.display(),
                revoked.revoked_total
            )
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    if let Command::Certs(certs) = &cli.command {
        let issued = run_certs(certs)?;
        let text = if json {
            serde_json::to_string_pretty(&issued).map_err(json_error)? + "\n"
        } else {
            issued
                .iter()
                .map(|i| {
                    format!(
                        "{}: {} (key {})\n",
                        i.what,
                        i.cert.display(),
                        i.key.display()
                    )
                })
                .collect()
        };
        out.write_all(text.as_bytes())?;
        out.flush()?;
        return Ok(());
    }
    let spec = match &cli.command {
        Command::Job(JobCommand::Submit { file, .. }) => Some(read_spec(file)?),
        _ => None,
    };
    let mut client = Client::connect(&g.supervisor, tls_files(g).as_ref(), g.timeout).await?;
    match &cli.command {
        Command::Status {
            watch: Watch { watch: Some(every) },
        }
        | Command::Nodes {
            watch: Watch { watch: Some(every) },
        }
        | Command::Jobs {
            watch: Watch { watch: Some(every) },
        } => return watch(cli, &mut client, *every, out).await,
        Command::Events {
            limit,
            after,
            follow: true,
        } => return follow_events(&mut client, *limit, *after, json, out).await,
        _ => {}
    }
    let text = once(cli, &mut client, spec).await?;
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
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
            let every = humantime::format_duration(every);
            let at = humanize::timestamp(now_ms());
            write!(
                out,
                "\x1b[H\x1b[2JEvery {every}: supctl {}    {at}\n\n{text}",
                command_name(&cli.command)
            )?;
        }
        out.flush()?;
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Nodes { .. } => "nodes",
        Command::Jobs { .. } => "jobs",
        _ => "status",
    }
}

/// `events --follow`: what `events` prints, then each new event as it is
/// recorded (polled every second), until interrupted.
async fn follow_events(
    client: &mut Client,
    limit: Option<u32>,
    after: u64,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut last = after;
    let mut limit = limit.unwrap_or(0);
    let mut header = true;
    loop {
        let req = v1::ListEventsRequest {
            after_seq: last,
            limit,
        };
        let events = render::oldest_first(client.events(req).await?);
        if let Some(e) = events.last() {
            last = last.max(e.seq);
        }
        if json {
            for e in &events {
                let text = render::events_json(std::slice::from_ref(e)).map_err(json_error)?;
                let one = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.as_array().and_then(|a| a.first().cloned()))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                writeln!(out, "{one}")?;
            }
        } else if !events.is_empty() {
            let text = render::events_text(&events);
            // The header once; later batches are rows only.
            let rows = if header {
                text.as_str()
            } else {
                text.split_once('\n').map_or("", |(_, rows)| rows)
            };
            out.write_all(rows.as_bytes())?;
            header = false;
        }
        out.flush()?;
        limit = 0;
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// One run of a command that prints something.
async fn once(cli: &Cli, client: &mut Client, spec: Option<String>) -> Result<String, CtlError> {
    let g = &cli.global;
    let json = g.output == Output::Json;
    let text = match &cli.command {
        Command::Status { .. } => {
            let s = client.status().await?;
            if json {
                render::status_json(&s).map_err(json_error)?
            } else {
                render::status_text(&s, now_ms())
            }
        }
        Command::Nodes { .. } => {
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
                request_id: client::request_id(),
            };
            let r = client.cordon(req).await?;
            cordon_output(json, CordonAction::Cordon, id, Some(reason), &r)?
        }
        Command::Uncordon { id, reason, by } => {
            let req = v1::UncordonRequest {
                node_id: id.clone(),
                by: operator(by),
                reason: reason.clone().unwrap_or_default(),
                request_id: client::request_id(),
            };
            let r = client.uncordon(req).await?;
            cordon_output(json, CordonAction::Uncordon, id, reason.as_deref(), &r)?
        }
        Command::Events { limit, after, .. } => {
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
        Command::Jobs { .. } => {
            let s = client.status().await?;
            if json {
                render::jobs_json(&s.jobs).map_err(json_error)?
            } else {
                render::jobs_text(&s.jobs)
            }
        }
        Command::Job(JobCommand::Submit { by, .. }) => {
            let req = v1::SubmitJobRequest {
                spec_toml: spec.unwrap_or_default(),
                by: operator(by),
                request_id: client::request_id(),
            };
            let r = client.submit_job(req).await?;
            if json {
                render::job_outcome_json(&r).map_err(json_error)?
            } else {
                render::job_submit_text(&r)
            }
        }
        Command::Job(JobCommand::Stop { name, reason, by }) => {
            let req = v1::StopJobRequest {
                name: name.clone(),
                by: operator(by),
                reason: reason.clone().unwrap_or_default(),
                request_id: client::request_id(),
            };
            let r = client.stop_job(req).await?;
            if json {
                render::job_outcome_json(&r).map_err(json_error)?
            } else {
                render::job_stop_text(name, reason.as_deref(), &r)
            }
        }
        Command::Job(JobCommand::Describe { name }) => {
            let j = client.job(name).await?;
            if json {
                render::job_json(&j).map_err(json_error)?
            } else {
                render::job_text(&j, now_ms())
            }
        }
        Command::Checkpoints { job } => {
            let checkpoints = render::oldest_checkpoint_first(client.checkpoints(job).await?);
            if json {
                render::checkpoints_json(&checkpoints).map_err(json_error)?
            } else {
                render::checkpoints_text(job, &checkpoints)
            }
        }
        Command::Logs { job, rank, lines } => {
            let req = v1::GetLogsRequest {
                job: job.clone(),
                rank: *rank,
                lines: *lines,
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
                render::logs_json(job, *rank, &r).map_err(json_error)?
            } else {
                render::logs_text(&r)
            }
        }
        Command::Drill(drill) => {
            let (target, fault, what) = match drill {
                DrillCommand::Xid { target, xid } => (
                    target,
                    v1::drill::Fault::Xid(*xid),
                    format!("Xid {xid} on GPU {} of node {}", target.gpu, target.node),
                ),
                DrillCommand::RecoveryAction { target, action } => (
                    target,
                    v1::drill::Fault::RecoveryAction(v1::RecoveryAction::from(*action) as i32),
                    format!(
                        "recovery action {} on GPU {} of node {}",
                        action_name(*action),
                        target.gpu,
                        target.node
                    ),
                ),
            };
            let by = operator(&target.by);
            let req = v1::DrillRequest {
                node_id: target.node.clone(),
                drill: Some(v1::Drill {
                    gpu_index: target.gpu,
                    fault: Some(fault),
                    by: by.clone(),
                }),
                by,
                request_id: client::request_id(),
            };
            let r = client.drill(req).await?;
            if json {
                render::drill_json(&r).map_err(json_error)?
            } else {
                render::drill_text(&what, &r)
            }
        }
        Command::Breaker(BreakerCommand::Reset { reason, by }) => {
            let req = v1::ResetBreakerRequest {
                by: operator(by),
                reason: reason.clone().unwrap_or_default(),
                request_id: client::request_id(),
            };
            let r = client.reset_breaker(req).await?;
            if json {
                render::breaker_json(&r).map_err(json_error)?
            } else {
                render::breaker_text(&r)
            }
        }
        // Handled before connecting.
        Command::Completions { .. } | Command::Certs(_) => String::new(),
    };
    Ok(text)
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

/// The action as the operator typed it, for messages.
fn action_name(action: RecoveryActionArg) -> String {
    action
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_else(|| format!("{action:?}"))
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

/// The TLS files from --ca/--cert/--key, when any is set (the transport
/// then says which one is missing).
fn tls_files(g: &cli::GlobalArgs) -> Option<sup_proto::transport::ClientTlsFiles> {
    if g.ca.is_none() && g.cert.is_none() && g.key.is_none() {
        return None;
    }
    let or_unset = |p: &Option<std::path::PathBuf>, flag: &str| {
        p.clone()
            .unwrap_or_else(|| std::path::PathBuf::from(format!("<{flag} not set>")))
    };
    Some(sup_proto::transport::ClientTlsFiles {
        ca: or_unset(&g.ca, "--ca"),
        cert: or_unset(&g.cert, "--cert"),
        key: or_unset(&g.key, "--key"),
        server_name: g.server_name.clone(),
    })
}

fn run_certs(command: &CertsCommand) -> Result<Vec<certs::Issued>, CtlError> {
    match command {
        CertsCommand::Init {
            dir,
            supd_names,
            nodes,
            operators,
            viewers,
            ca_days,
            days,
        } => {
            let mut subjects = vec![certs::Subject::Supd {
                names: if supd_names.is_empty() {
                    certs::DEFAULT_SUPD_NAMES.map(str::to_owned).to_vec()
                } else {
                    supd_names.clone()
                },
            }];
            for (role, names) in [
                ("node", nodes),
                ("operator", operators),
                ("viewer", viewers),
            ] {
                for name in names {
                    subjects.push(certs::subject(role, std::slice::from_ref(name))?);
                }
            }
            certs::init(dir, *ca_days, *days, &subjects)
        }
        CertsCommand::Issue {
            dir,
            role,
            names,
            days,
        } => Ok(vec![certs::issue(
            dir,
            *days,
            &certs::subject(role, names)?,
        )?]),
        CertsCommand::Revoke { .. } | CertsCommand::List { .. } => Err(CtlError::Other(
            "revoke and list issue no certificates".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_is_read_as_is() {
        let spec = "name = \"x\"\n# comment\ncommand = [\"true\"]\n";
        assert_eq!(read_spec_from("job.toml", spec.as_bytes()).unwrap(), spec);
    }

    #[test]
    fn an_oversized_or_binary_spec_is_refused_with_its_name() {
        let big = vec![b'#'; 1024 * 1024 + 1];
        let err = read_spec_from("big.toml", big.as_slice()).unwrap_err();
        assert_eq!(err.exit_code(), error::exit::OTHER);
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
        assert_eq!(err.exit_code(), error::exit::OTHER);
        assert!(
            err.to_string()
                .starts_with("cannot read job spec /nonexistent/spec.toml: "),
            "{err}"
        );
    }

    #[test]
    fn recovery_actions_are_named_as_typed() {
        assert_eq!(
            action_name(RecoveryActionArg::DrainAndReset),
            "drain-and-reset"
        );
        assert_eq!(action_name(RecoveryActionArg::NodeReboot), "node-reboot");
    }
}
