use std::process::ExitCode;

use clap::Parser;
use supctl::cli::Cli;
use supctl::error::exit;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace dump.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("supctl: internal error (a bug, please report it): {info}");
    }));
    match Cli::try_parse() {
        Ok(cli) => supctl::run(cli),
        Err(e) => {
            // Usage errors and --help/--version: clap prints and picks the code.
            let _ = e.print();
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(exit::USAGE))
        }
    }
}
