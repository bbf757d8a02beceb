//! `supctl completions SHELL`: shell completion scripts.

use std::io::Write;

use crate::cli::{Cli, CompletionShell};
use crate::error::CtlError;

/// Works with no supervisor around.
pub(super) fn run(shell: CompletionShell, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(clap_complete::Shell::from(shell), &mut cmd, "supctl", out);
    out.flush()?;
    Ok(())
}
