//! supctl, the operator CLI of sup: talks to supd's control API over gRPC and
//! prints tables for people or JSON for scripts.
//!
//! `main.rs` only parses arguments; [`run`] does the rest and turns every
//! failure into one line on stderr and a documented exit code
//! ([`error::exit`]).

pub mod certs;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod humanize;
pub mod table;

use std::io::Write;
use std::process::ExitCode;

use crate::cli::Cli;
use crate::client::Client;
use crate::error::{exit, CtlError};

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

/// Runs the command, writing its output to `out`. Work that needs no
/// supervisor happens first: completions and the CA must work with no supd
/// around, and a job spec that cannot be read is the operator's problem to
/// fix whether or not supd is up.
pub async fn execute(cli: &Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    if commands::run_offline(cli, out)? {
        return Ok(());
    }
    let spec = commands::spec_to_send(cli)?;
    let g = &cli.global;
    let mut client = Client::connect(g.supervisor.urls(), tls_files(g).as_ref(), g.timeout).await?;
    commands::run_online(cli, &mut client, spec, out).await
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
