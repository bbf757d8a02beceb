//! Command-line arguments. Validation that needs no server happens here, so
//! bad input is a usage error (exit 2) before any connection is made.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_STATUS_HELP;

pub const DEFAULT_SUPERVISOR: &str = "http://127.0.0.1:7070";

const ABOUT: &str = "Operator CLI for sup, the fault-tolerance supervisor for GPU training";

// The exit-status section goes in `after_long_help` (from error.rs, where the
// codes are defined) so `--help` reads like a man page: options, then codes.
const LONG_ABOUT: &str = "\
Operator CLI for sup, the fault-tolerance supervisor for multi-node GPU training.

Talks to supd's control API over gRPC. Tables are for people; use `-o json`
in scripts (the JSON shapes are the same as supd's HTTP API).";

#[derive(Debug, Parser)]
#[command(name = "supctl", version, about = ABOUT, long_about = LONG_ABOUT, after_long_help = EXIT_STATUS_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// supd's gRPC address (`http://HOST:PORT`; a bare `HOST:PORT` means http)
    #[arg(
        long,
        global = true,
        env = "SUP_SUPERVISOR",
        value_name = "URL",
        default_value = DEFAULT_SUPERVISOR,
        value_parser = parse_supervisor_url
    )]
    pub supervisor: String,

    /// Output format
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,

    /// Limit for connecting and for each request (e.g. 500ms, 10s, 1m)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables
    Table,
    /// JSON with the same shapes as supd's HTTP API
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster overview: counts, nodes that need attention, all nodes
    Status,
    /// List nodes
    Nodes,
    /// Show one node with its GPUs
    Node {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
    },
    /// Take a node out of service (no new work is placed on it)
    Cordon {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Why; recorded with the cordon and shown to other operators
        #[arg(long, value_parser = non_empty)]
        reason: String,
        /// Who cordons [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Return a cordoned node to service
    Uncordon {
        /// Node id
        #[arg(value_parser = non_empty)]
        id: String,
        /// Why (recorded in the event log)
        #[arg(long, value_parser = non_empty)]
        reason: Option<String>,
        /// Who uncordons [default: $SUP_USER, else $USER, else "operator"]
        #[arg(long, value_name = "NAME", value_parser = non_empty)]
        by: Option<String>,
    },
    /// Show the event log, oldest first
    Events {
        /// Show only the newest N events [default: all the supervisor keeps]
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Show only events with a sequence number greater than SEQ
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        after: u64,
    },
}

/// `--by` when not given. A function of the environment lookup so it can be
/// tested without touching the process environment.
pub fn default_operator(env: impl Fn(&str) -> Option<String>) -> String {
    ["SUP_USER", "USER"]
        .iter()
        .filter_map(|key| env(key))
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

fn non_empty(s: &str) -> Result<String, String> {
    let trimmed = s.trim();
    if trimmed.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(trimmed.to_owned())
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 1m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

fn parse_supervisor_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    let url = match s.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.trim_end_matches('/')),
        None => format!("http://{}", s.trim_end_matches('/')),
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); expected http://HOST:PORT"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("expected an http:// or https:// URL".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("missing host; expected http://HOST:PORT".to_owned());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("supctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&["status", "-o", "json", "--timeout", "2s"]).unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.timeout, Duration::from_secs(2));
    }

    #[test]
    fn cordon_requires_a_non_empty_reason() {
        let missing = parse(&["cordon", "n1"]).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let blank = parse(&["cordon", "n1", "--reason", "  "]).unwrap_err();
        assert_eq!(blank.kind(), ErrorKind::ValueValidation);
        assert_eq!(blank.exit_code(), 2);
    }

    #[test]
    fn supervisor_url_is_normalised_and_checked() {
        let cli = parse(&["--supervisor", "10.0.0.5:7070", "nodes"]).unwrap();
        assert_eq!(cli.global.supervisor, "http://10.0.0.5:7070");
        let cli = parse(&["--supervisor", "http://sup:7070/", "nodes"]).unwrap();
        assert_eq!(cli.global.supervisor, "http://sup:7070");
        assert!(parse(&["--supervisor", "ftp://sup", "nodes"]).is_err());
        assert!(parse(&["--supervisor", "http://", "nodes"]).is_err());
    }

    #[test]
    fn timeout_must_be_a_positive_duration() {
        assert!(parse(&["--timeout", "0s", "status"]).is_err());
        assert!(parse(&["--timeout", "ten", "status"]).is_err());
        let cli = parse(&["--timeout", "250ms", "status"]).unwrap();
        assert_eq!(cli.global.timeout, Duration::from_millis(250));
    }

    #[test]
    fn events_limit_must_be_positive() {
        assert!(parse(&["events", "--limit", "0"]).is_err());
        let cli = parse(&["events", "--limit", "5", "--after", "7"]).unwrap();
        match cli.command {
            Command::Events { limit, after } => {
                assert_eq!(limit, Some(5));
                assert_eq!(after, 7);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn operator_falls_back_from_sup_user_to_user_to_a_default() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            default_operator(env(&[("SUP_USER", "alice"), ("USER", "bob")])),
            "alice"
        );
        assert_eq!(
            default_operator(env(&[("SUP_USER", ""), ("USER", "bob")])),
            "bob"
        );
        assert_eq!(default_operator(env(&[])), "operator");
    }

    #[test]
    fn long_help_documents_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("Exit status:"), "{help}");
        assert!(help.contains("3  cannot reach the supervisor"), "{help}");
    }
}
