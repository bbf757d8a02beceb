use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sup_agent::{Cli, Config, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(err) => {
            // Logging is not set up yet: its format is part of the config.
            eprintln!("sup-agent: {err}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sup_agent::run(config, sup_agent::shutdown::signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", sup_agent::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are noise in journald and log files.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
