//! Errors and the exit status each one maps to. The exit codes are part of
//! supctl's contract with scripts, so they are defined here once, next to the
//! help text that documents them.

use std::error::Error as StdError;
use std::time::Duration;

use tonic::{Code, Status};

/// Exit status codes. Scripts branch on these: never renumber them.
pub mod exit {
    pub const OK: u8 = 0;
    /// Anything not covered below (a supervisor bug, a failed write to stdout).
    pub const OTHER: u8 = 1;
    /// Bad flags or arguments; clap's own code for usage errors.
    pub const USAGE: u8 = 2;
    /// No answer from the supervisor: connect failed, gRPC UNAVAILABLE or a timeout.
    pub const UNREACHABLE: u8 = 3;
    /// The supervisor does not know the object (gRPC NOT_FOUND), e.g. an unknown node or job.
    pub const NOT_FOUND: u8 = 4;
    /// The supervisor refused the request (INVALID_ARGUMENT, FAILED_PRECONDITION,
    /// ALREADY_EXISTS, PERMISSION_DENIED).
    pub const REJECTED: u8 = 5;
}

/// The "Exit status" section of `supctl --help`; a test keeps it in step with [`exit`].
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  any other error
  2  usage error (bad flags or arguments)
  3  cannot reach the supervisor (connection failed, unavailable, timed out)
  4  not found (for example an unknown node id or job name)
  5  rejected by the supervisor (invalid argument, failed precondition,
     already exists, permission denied)";

/// Where supctl was talking to; used to word errors the operator can act on.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    pub timeout: Duration,
}

/// A supervisor URL that gave no answer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanswered {
    pub url: String,
    pub cause: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Every URL tried (one per supd replica; usually just one) gave no
    /// answer.
    #[error("{}", unreachable_text(.tried))]
    Unreachable { tried: Vec<Unanswered> },
    #[error("{0}")]
    NotFound(String),
    #[error("rejected by the supervisor: {0}")]
    Rejected(String),
    #[error("the supervisor failed the request ({code}): {message}")]
    Server { code: String, message: String },
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Unreachable { .. } => exit::UNREACHABLE,
            CtlError::NotFound(_) => exit::NOT_FOUND,
            CtlError::Rejected(_) => exit::REJECTED,
            CtlError::Server { .. } | CtlError::Output(_) | CtlError::Other(_) => exit::OTHER,
        }
    }

    /// True when the reader of our stdout went away (`supctl events | head`):
    /// that is the reader's choice, not a failure worth reporting.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub fn from_status(status: &Status, target: &Target) -> CtlError {
        let message = status.message().trim();
        match status.code() {
            Code::Unavailable => CtlError::unreachable(
                target,
                with_sources(non_empty_or(message, "service unavailable"), status),
            ),
            Code::DeadlineExceeded => timed_out(target),
            // tonic reports its own client-side timeout as CANCELLED with a
            // `TimeoutExpired` source; to the operator that is "no answer".
            Code::Cancelled if is_client_timeout(status) => timed_out(target),
            Code::NotFound => {
                CtlError::NotFound(non_empty_or(message, "not found on the supervisor").to_owned())
            }
            Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated => {
                CtlError::Rejected(non_empty_or(message, status.code().description()).to_owned())
            }
            // Either supctl points at something that is not supd's gRPC port
            // (the HTTP port, another service), or at a supd older than this
            // supctl that lacks the request: name both.
            Code::Unimplemented => CtlError::Server {
                code: "unimplemented".to_owned(),
                message: format!(
                    "{}; is {} supd's gRPC address (check --supervisor or SUP_SUPERVISOR), \
                     and is that supd as new as this supctl?",
                    non_empty_or(message, "no details"),
                    target.url
                ),
            },
            code => {
                let mut message = with_sources(non_empty_or(message, "no details"), status);
                if let Some(hint) = transport_hint(code, &message, &target.url) {
                    message = format!("{message} ({hint})");
                }
                CtlError::Server {
                    code: code_name(code),
                    message,
                }
            }
        }
    }

    /// A failure to establish the connection at all.
    pub fn connect(err: &tonic::transport::Error, target: &Target) -> CtlError {
        CtlError::unreachable(target, cause_chain(err))
    }

    /// No answer from the one URL `target`.
    fn unreachable(target: &Target, cause: String) -> CtlError {
        CtlError::Unreachable {
            tried: vec![Unanswered {
                url: target.url.clone(),
                cause,
            }],
        }
    }
}

/// One URL: what supctl always said. Several (supd replicas): every one and
/// why, in the order given, since which replica failed how (refused: down or
/// standing by; timed out; UNAVAILABLE) is what the operator acts on.
fn unreachable_text(tried: &[Unanswered]) -> String {
    const HINT: &str = "check --supervisor or SUP_SUPERVISOR";
    match tried {
        [] => format!("cannot reach the supervisor; {HINT}"),
        [one] => format!(
            "cannot reach the supervisor at {}: {}; {HINT}",
            one.url, one.cause
        ),
        many => {
            let each: Vec<String> = many
                .iter()
                .map(|u| format!("{}: {}", u.url, u.cause))
                .collect();
            format!(
                "cannot reach the supervisor at any of {} URLs: {}; {HINT}",
                many.len(),
                each.join("; ")
            )
        }
    }
}

/// `internal`, `unknown`, ...: short, and greppable in gRPC docs.
fn code_name(code: Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A connection supd dropped right after connecting says little by itself;
/// the usual reasons are a TLS mismatch, which the operator can fix.
fn transport_hint(code: Code, message: &str, url: &str) -> Option<&'static str> {
    let dropped = matches!(code, Code::Cancelled | Code::Unknown)
        && (message.contains("connection closed")
            || message.contains("broken pipe")
            || message.contains("connection reset"));
    if !dropped {
        return None;
    }
    Some(if url.starts_with("https://") {
        "supd closed the connection: it probably refused this client certificate \
         (signed by another CA, expired, or not a client certificate); check --cert and --key"
    } else {
        "supd closed the connection: if it serves TLS, use an https:// URL with --ca, --cert and --key"
    })
}

fn timed_out(target: &Target) -> CtlError {
    CtlError::unreachable(
        target,
        format!(
            "no answer within {} (raise --timeout if it is just slow)",
            humantime::format_duration(target.timeout)
        ),
    )
}

fn is_client_timeout(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    // The source is dropped when a status is rebuilt from another one.
    status.message() == tonic::TimeoutExpired(()).to_string()
}

fn non_empty_or<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if s.is_empty() {
        fallback
    } else {
        s
    }
}

fn with_sources(head: &str, status: &Status) -> String {
    let mut parts = vec![head.to_owned()];
    let mut source = status.source();
    while let Some(err) = source {
        push_distinct(&mut parts, err.to_string());
        source = err.source();
    }
    parts.join(": ")
}

/// "tcp connect error: Connection refused (os error 111)" rather than tonic's
/// bare "transport error", which tells the operator nothing.
pub fn cause_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        push_distinct(&mut parts, e.to_string());
        current = e.source();
    }
    if parts.len() > 1 && parts[0] == "transport error" {
        parts.remove(0);
    }
    parts.join(": ")
}

/// Error wrappers often repeat their source's text; print each part once.
fn push_distinct(parts: &mut Vec<String>, part: String) {
    let part = part.trim().to_owned();
    if part.is_empty() || parts.iter().any(|p| p.contains(&part)) {
        return;
    }
    parts.push(part);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            url: "http://sup:7070".into(),
            timeout: Duration::from_secs(10),
        }
    }

    fn code_for(status: Status) -> u8 {
        CtlError::from_status(&status, &target()).exit_code()
    }

    #[test]
    fn grpc_codes_map_to_documented_exit_codes() {
        assert_eq!(code_for(Status::unavailable("down")), exit::UNREACHABLE);
        assert_eq!(
            code_for(Status::deadline_exceeded("slow")),
            exit::UNREACHABLE
        );
        assert_eq!(
            code_for(Status::not_found("unknown node 'x'")),
            exit::NOT_FOUND
        );
        assert_eq!(code_for(Status::invalid_argument("empty")), exit::REJECTED);
        assert_eq!(code_for(Status::failed_precondition("no")), exit::REJECTED);
        assert_eq!(code_for(Status::already_exists("dup")), exit::REJECTED);
        assert_eq!(code_for(Status::permission_denied("who")), exit::REJECTED);
        assert_eq!(code_for(Status::internal("bug")), exit::OTHER);
        assert_eq!(code_for(Status::unimplemented("old")), exit::OTHER);
        assert_eq!(code_for(Status::unknown("?")), exit::OTHER);
        // A server-side cancel is not a timeout.
        assert_eq!(code_for(Status::cancelled("gone")), exit::OTHER);
    }

    #[test]
    fn client_timeout_counts_as_unreachable() {
        let status = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(status.code(), Code::Cancelled);
        let err = CtlError::from_status(&status, &target());
        assert_eq!(err.exit_code(), exit::UNREACHABLE);
        assert_eq!(
            err.to_string(),
            "cannot reach the supervisor at http://sup:7070: no answer within 10s \
             (raise --timeout if it is just slow); check --supervisor or SUP_SUPERVISOR"
        );
    }

    #[test]
    fn not_found_prints_the_server_message_as_is() {
        let err = CtlError::from_status(&Status::not_found("unknown node 'n9'"), &target());
        assert_eq!(err.to_string(), "unknown node 'n9'");
    }

    #[test]
    fn unavailable_names_the_url_and_the_hint() {
        let err = CtlError::from_status(&Status::unavailable("connection refused"), &target());
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach the supervisor at http://sup:7070: connection refused")
        );
        assert!(text.contains("SUP_SUPERVISOR"), "{text}");
    }

    #[test]
    fn other_server_errors_name_the_grpc_code() {
        let err = CtlError::from_status(&Status::resource_exhausted("full"), &target());
        assert_eq!(
            err.to_string(),
            "the supervisor failed the request (resource_exhausted): full"
        );
        let err = CtlError::from_status(&Status::unimplemented(""), &target());
        assert_eq!(
            err.to_string(),
            "the supervisor failed the request (unimplemented): no details; \
             is http://sup:7070 supd's gRPC address (check --supervisor or SUP_SUPERVISOR), \
             and is that supd as new as this supctl?"
        );
    }

    #[test]
    fn help_text_documents_every_exit_code() {
        for (code, word) in [
            (exit::OK, "success"),
            (exit::OTHER, "other error"),
            (exit::USAGE, "usage"),
            (exit::UNREACHABLE, "cannot reach"),
            (exit::NOT_FOUND, "not found"),
            (exit::REJECTED, "rejected"),
        ] {
            let line = format!("  {code}  ");
            let found = EXIT_STATUS_HELP
                .lines()
                .any(|l| l.starts_with(&line) && l.contains(word));
            assert!(found, "exit code {code} ({word}) missing from help");
        }
    }

    #[test]
    fn unreachable_lists_every_url_tried_and_why() {
        let tried = vec![
            Unanswered {
                url: "http://supd-a:7070".into(),
                cause: "tcp connect error: Connection refused (os error 111)".into(),
            },
            Unanswered {
                url: "http://supd-b:7070".into(),
                cause: "no answer within 10s (raise --timeout if it is just slow)".into(),
            },
        ];
        let err = CtlError::Unreachable { tried };
        assert_eq!(err.exit_code(), exit::UNREACHABLE);
        assert_eq!(
            err.to_string(),
            "cannot reach the supervisor at any of 2 URLs: \
             http://supd-a:7070: tcp connect error: Connection refused (os error 111); \
             http://supd-b:7070: no answer within 10s (raise --timeout if it is just slow); \
             check --supervisor or SUP_SUPERVISOR"
        );
    }

    #[test]
    fn cause_chain_skips_tonic_generic_wrapper() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(cause_chain(&err), "Connection refused");
    }
}
