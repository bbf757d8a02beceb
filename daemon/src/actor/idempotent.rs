//! Commands that take effect once per client request id. A client that
//! timed out retries with the same id (also across a supd restart); the
//! retry is answered with what the first attempt said, never applied again.
//! The id is remembered in the same commit as the command's effects, so a
//! crash cannot keep one without the other.

use std::collections::{HashMap, VecDeque};

use sup_core::{Change, Engine, EngineError, Millis, RequestRecord};

use super::request::ActorError;

/// Remembered client request ids, oldest first, bounded in count and age:
/// a retry comes within seconds or minutes, not days.
#[derive(Default)]
pub(super) struct RequestLog {
    by_id: HashMap<String, RequestRecord>,
    order: VecDeque<String>,
}

const REQUEST_LOG_MAX: usize = 10_000;
const REQUEST_LOG_MAX_AGE_MS: Millis = 24 * 3600 * 1000;
const REQUEST_ID_MAX_LEN: usize = 128;

/// A mutating command as the request log knows it.
pub(super) struct Command<'a> {
    /// The client's id for it ("": none, applied every time).
    pub id: &'a str,
    /// "cordon", "uncordon", "submit_job", "stop_job", "drill", "reset_breaker".
    pub kind: &'static str,
    /// The node or job it is about.
    pub target: &'a str,
}

/// What a command did: whether it changed anything, and what to tell the
/// client. A replayed command changed nothing this time.
pub(super) type Applied = Result<(bool, String), ActorError>;

impl RequestLog {
    /// The ids the store remembered (at startup).
    pub(super) fn restored(mut records: Vec<RequestRecord>) -> RequestLog {
        records.sort_by_key(|r| r.at);
        let mut log = RequestLog::default();
        for r in records {
            log.order.push_back(r.id.clone());
            log.by_id.insert(r.id.clone(), r);
        }
        log
    }

    /// Applies `command` through `apply` unless its id was applied before:
    /// then it answers with the first answer's message (or refuses an id
    /// reused for another command) and `apply` never runs.
    /// `changes` receives the log's own durable changes, committed with
    /// the engine's.
    pub(super) fn once(
        &mut self,
        now: Millis,
        command: Command<'_>,
        engine: &mut Engine,
        changes: &mut Vec<Change>,
        apply: impl FnOnce(&mut Engine) -> Result<(bool, String), EngineError>,
    ) -> Applied {
        if let Some(replay) = self.replayed(&command) {
            return replay.map(|message| (false, message));
        }
        let (changed, message) = apply(engine)?;
        self.remember(now, &command, &message, changes);
        Ok((changed, message))
    }

    /// A retry of a request already applied: Some(message) to answer with,
    /// or an error when the id was used for a different command.
    fn replayed(&self, command: &Command<'_>) -> Option<Result<String, ActorError>> {
        let Command { id, kind, target } = *command;
        if id.is_empty() {
            return None;
        }
        if id.len() > REQUEST_ID_MAX_LEN {
            return Some(Err(ActorError::Engine(EngineError::FailedPrecondition(
                format!("request id longer than {REQUEST_ID_MAX_LEN} bytes"),
            ))));
        }
        let r = self.by_id.get(id)?;
        if r.kind != kind || r.target != target {
            return Some(Err(ActorError::Engine(EngineError::FailedPrecondition(
                format!(
                    "request id '{id}' was already used for {} of '{}'",
                    r.kind, r.target
                ),
            ))));
        }
        tracing::info!(
            request_id = id,
            kind,
            target,
            "repeated request answered, not applied again"
        );
        Some(Ok(format!("already applied (request {id}): {}", r.message)))
    }

    /// Remembers an applied request, durably in the same commit as its
    /// effects.
    fn remember(
        &mut self,
        now: Millis,
        command: &Command<'_>,
        message: &str,
        changes: &mut Vec<Change>,
    ) {
        if command.id.is_empty() {
            return;
        }
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_id
                .get(oldest)
                .is_none_or(|r| now - r.at > REQUEST_LOG_MAX_AGE_MS);
            if !expired && self.order.len() < REQUEST_LOG_MAX {
                break;
            }
            if let Some(id) = self.order.pop_front() {
                self.by_id.remove(&id);
                changes.push(Change::ForgetRequest(id));
            }
        }
        let record = RequestRecord {
            id: command.id.to_owned(),
            at: now,
            kind: command.kind.to_owned(),
            target: command.target.to_owned(),
            message: message.to_owned(),
        };
        self.order.push_back(record.id.clone());
        self.by_id.insert(record.id.clone(), record.clone());
        changes.push(Change::RememberRequest(record));
    }
}
