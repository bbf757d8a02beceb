//! What agents report about a job's ranks: their status (launched, alive),
//! exits, progress and the checkpoints found complete. Only reports of the
//! job's current generation from a node's live stream count.

use super::*;
use crate::agent_input::{clip, MAX_AGENT_TEXT};
use crate::jobs::catalog;
use crate::messages::*;
use crate::records::{CheckpointRef, Event, JobState};
use crate::{Engine, EventKind, Millis, ReportOutcome, SessionId};

impl Engine {
    /// Whether a report about `job` at `generation` from `node_id` on
    /// `session` belongs to the job's current generation. Anything else is
    /// from before a restart (or a replaced agent) and must be ignored.
    pub(crate) fn current_report(
        &self,
        node_id: &str,
        session: SessionId,
        job: &str,
        generation: u64,
    ) -> ReportOutcome {
        let live = self.is_live_stream(node_id, session);
        if !live {
            return ReportOutcome::StaleStream;
        }
        let current = self.jobs.get(job).is_some_and(|j| {
            j.record.state.is_active() && j.record.generation == generation && j.has_node(node_id)
        });
        if current {
            ReportOutcome::Applied
        } else {
            ReportOutcome::StaleGeneration
        }
    }

    /// Returns false when the report was stale and ignored.
    pub fn on_rank_status(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        status: RankStatus,
    ) -> ReportOutcome {
        let outcome = self.current_report(node_id, session, &status.job, status.generation);
        if !outcome.is_applied() {
            return outcome;
        }
        let name = status.job.clone();
        if !status.launch_error.is_empty() {
            self.restart_job(
                now,
                &name,
                format!(
                    "node {node_id} could not launch its ranks: {}",
                    status.launch_error
                ),
                true,
            );
            self.request_reconcile(now);
            return ReportOutcome::Applied;
        }
        if !status.launched {
            return ReportOutcome::Applied;
        }
        let Some(job) = self.jobs.get_mut(&name) else {
            return ReportOutcome::Applied;
        };
        job.launched.insert(node_id.to_owned());
        // `launched` only holds nodes of this generation: compare sizes
        // first so 2,048 reports do not each walk the whole node list.
        let all = job.launched.len() >= job.record.nodes.len()
            && job.record.nodes.iter().all(|n| job.launched.contains(n));
        if all && matches!(job.record.state, JobState::Starting | JobState::Recovering) {
            job.record.state = JobState::Running;
            job.detect.running_since = Some(now);
            // A job that has shown it reports progress and now says nothing
            // at all is stuck before its first step (a rendezvous that never
            // completes, a communicator that never forms).
            let reports_progress =
                job.record.best_step.is_some() || job.record.spec.progress_regex.is_some();
            if !reports_progress {
                // Goodput: a job that never showed it reports progress
                // would otherwise read "restart" forever; launched is the
                // best known start of its training.
                job.record.goodput.enter(now, crate::Bucket::Productive);
            }
            let startup_deadline = (reports_progress && self.config.detect.hang_enabled)
                .then(|| {
                    job.detect.hang.arm_startup(now);
                    job.detect.hang.deadline(&self.config.detect)
                })
                .flatten();
            job.record.reason = String::new();
            let mut why = format!(
                "generation {} running on {} node(s), world size {}",
                job.record.generation,
                job.record.nodes.len(),
                job.world_size()
            );
            let placed = job.fault_at.take();
            let recovery_ms = placed.filter(|(_, fault)| *fault).map(|(at, _)| now - at);
            match placed {
                Some((at, true)) => why.push_str(&format!(
                    "; every rank launched {} ms after the fault was reported",
                    now - at
                )),
                // A first start, or one that waited for capacity: not a
                // recovery (sup_recovery_latency leaves it out).
                Some((at, false)) => why.push_str(&format!(
                    "; every rank launched {} ms after it was placed",
                    now - at
                )),
                None => {}
            }
            self.push_event(Event {
                seq: 0,
                at: now,
                kind: EventKind::JobRunning,
                node: None,
                job: Some(name.clone()),
                reason: why,
                recovery_ms,
            });
            self.persist_job(&name);
            if let Some(at) = startup_deadline {
                self.schedule_job_check(at);
            }
        }
        ReportOutcome::Applied
    }

    pub fn on_rank_exited(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        exit: RankExited,
    ) -> ReportOutcome {
        if exit.stopped_by_agent {
            self.hang_postmortem(now, node_id, session, &exit);
            return ReportOutcome::StoppedByAgent;
        }
        let outcome = self.current_report(node_id, session, &exit.job, exit.generation);
        if !outcome.is_applied() {
            return outcome;
        }
        let name = exit.job.clone();
        let how = match (exit.exit_code, exit.signal) {
            (Some(code), _) => format!("exited with code {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            (None, None) => "ended".to_owned(),
        };
        let last_line = exit
            .log_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        let what = if exit.lease_expired {
            format!(
                "rank {} (node {node_id}, local rank {}) killed by its agent: no supervisor \
                 acknowledged the node for its assignment lease ({})",
                exit.rank,
                exit.local_rank,
                crate::format_ms(self.config.assignment_lease_ms)
            )
        } else {
            format!(
                "rank {} (node {node_id}, local rank {}) {how}{last_line}",
                exit.rank, exit.local_rank
            )
        };
        self.record_job_event(
            now,
            EventKind::RankExited,
            Some(node_id),
            Some(&name),
            what.clone(),
        );
        if exit.exit_code == Some(0) {
            let Some(job) = self.jobs.get_mut(&name) else {
                return ReportOutcome::Applied;
            };
            job.exited_ok.insert((node_id.to_owned(), exit.local_rank));
            if job.exited_ok.len() as u64 >= u64::from(job.world_size()) {
                let why = format!(
                    "every rank of generation {} exited 0",
                    job.record.generation
                );
                self.finish_job(
                    now,
                    &name,
                    JobState::Succeeded,
                    why,
                    EventKind::JobSucceeded,
                );
            }
        } else {
            // A lease that ran out is the control plane's failure (supd
            // down or cut off longer than the lease), not the job's: it
            // costs no restart from the job's budget.
            self.restart_job(now, &name, what, !exit.lease_expired);
        }
        self.request_reconcile(now);
        ReportOutcome::Applied
    }

    pub fn on_progress(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        mut progress: JobProgress,
    ) -> ReportOutcome {
        let outcome = self.current_report(node_id, session, &progress.job, progress.generation);
        if !outcome.is_applied() {
            return outcome;
        }
        crate::agent_input::bound_progress(&mut progress);
        let cfg = self.config.detect.clone();
        // Read before the job is borrowed: a throttled (or otherwise
        // slowed) GPU on the node shortens its straggler window.
        let corroborated = self.has_slowdown_signal(node_id);
        let Some(job) = self.jobs.get_mut(&progress.job) else {
            return ReportOutcome::StaleGeneration;
        };
        let before = job.step;
        job.step = Some(job.step.map_or(progress.step, |s| s.max(progress.step)));
        job.tokens = progress.tokens.or(job.tokens);
        job.loss = progress.loss.or(job.loss);
        job.last_progress_at = Some(now);
        let step = job.step.unwrap_or(progress.step);

        let d = &mut job.detect;
        let node_phase = if progress.phase.is_empty() {
            "train"
        } else {
            progress.phase.as_str()
        };
        if node_phase == "train" {
            d.node_phase.remove(node_id);
        } else if d.node_phase.get(node_id).map(String::as_str) != Some(node_phase) {
            d.node_phase
                .insert(node_id.to_owned(), node_phase.to_owned());
        }
        if let Some(min) = progress.min_step {
            match d.node_min_step.get_mut(node_id) {
                Some(m) => *m = min,
                None => {
                    d.node_min_step.insert(node_id.to_owned(), min);
                }
            }
        }
        // One node saving a checkpoint holds every rank in the collective
        // that follows: the job is in the slowest phase any node is in (the
        // first one not in `train`, in node order).
        let job_phase = d.node_phase.values().next().map_or("train", String::as_str);
        // Goodput: the phase and step move the booking; the first training
        // report of a restarted generation ends its restart.
        let restart_since = job.record.goodput.since;
        let resumed = job.record.goodput.progress(now, step, job_phase);
        let redo_until = job.record.goodput.redo_until;
        let deadline = d
            .hang
            .observe(now, step, job_phase)
            .then(|| d.hang.deadline(&cfg))
            .flatten();
        if let Some(tokens) = job.tokens {
            d.throughput.observe(now, tokens, cfg.throughput_window_ms);
        }
        if let Some(tokens) = progress.tokens {
            match d.node_throughput.get_mut(node_id) {
                Some(t) => t.observe(now, tokens, cfg.throughput_window_ms),
                None => {
                    let mut t = Throughput::default();
                    t.observe(now, tokens, cfg.throughput_window_ms);
                    d.node_throughput.insert(node_id.to_owned(), t);
                }
            }
        }
        let straggler = match progress.step_time_s {
            Some(t) if node_phase == "train" => {
                d.stragglers
                    .observe(&cfg, node_id, progress.step, t, corroborated)
            }
            _ => None,
        };
        let spec = &job.record.spec;
        let spike = match (progress.loss, spec.loss_spike_rollback) {
            (Some(loss), true) if before.is_none_or(|b| step > b) => d.loss.observe(
                step,
                loss,
                spec.loss_spike_factor(),
                spec.loss_spike_steps(),
            ),
            _ => None,
        };
        let name = progress.job.clone();
        match job.detect.node_step.get_mut(node_id) {
            Some(s) => *s = progress.step,
            None => {
                job.detect
                    .node_step
                    .insert(node_id.to_owned(), progress.step);
            }
        }
        // Agents report up to 10× a second and the median is a pass over
        // the job's nodes: re-derived (and persisted, for the crash-loop
        // guard) once a second at most; a restart re-derives it first.
        if job.record.best_step.is_none_or(|b| progress.step > b)
            && job
                .detect
                .best_step_checked_at
                .is_none_or(|at| now - at >= BEST_STEP_CHECK_MS)
        {
            job.detect.best_step_checked_at = Some(now);
            if job.refresh_best_step() {
                self.persist_job(&name);
            }
        }
        if resumed {
            let redo = match redo_until {
                Some(h) => format!("; re-doing steps up to {h}"),
                None => String::new(),
            };
            self.record_job_event(
                now,
                EventKind::JobResumed,
                None,
                Some(&name),
                format!(
                    "training at step {step}, {} ms after the decision to (re)start{redo}",
                    now - restart_since
                ),
            );
            self.persist_job(&name);
        }
        if let Some(at) = deadline {
            self.schedule_job_check(at);
        }
        if let Some(s) = straggler {
            self.on_straggler(now, &name, s);
        }
        if let Some(s) = spike {
            self.on_loss_spike(now, &name, s);
        }
        ReportOutcome::Applied
    }

    /// A catalog of complete checkpoints from any node of the job (the
    /// directory is shared, any of them sees the truth).
    pub fn on_checkpoint_catalog(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        catalog: CheckpointCatalog,
    ) -> ReportOutcome {
        let live = self.is_live_stream(node_id, session);
        if !live {
            return ReportOutcome::StaleStream;
        }
        let Some(job) = self.jobs.get_mut(&catalog.job) else {
            return ReportOutcome::StaleGeneration;
        };
        if !job.has_node(node_id) {
            return ReportOutcome::StaleGeneration;
        }
        // Only entries the job can have written count; each one that does
        // not is said once, naming the node.
        let bound = match job.record.best_step.max(job.agreed_step()) {
            Some(best) => catalog::StepBound::Reported(best),
            None => {
                let allowance = self.config.detect.startup_allowance_ms;
                let silent_long = job
                    .detect
                    .running_since
                    .is_some_and(|since| now - since > allowance);
                if silent_long {
                    catalog::StepBound::Unchecked
                } else {
                    catalog::StepBound::AwaitingProgress
                }
            }
        };
        let mut refused = Vec::new();
        job.catalog = catalog
            .checkpoints
            .iter()
            .map(|c| {
                let mut verified = c.verified.clone();
                clip(&mut verified, MAX_AGENT_TEXT);
                CheckpointRef {
                    step: c.step,
                    path: c.path.clone(),
                    verified,
                }
            })
            .filter(|c| {
                let why = match catalog::belief(&job.record.spec.checkpoint_dir, bound, c) {
                    catalog::Belief::Believed => return true,
                    catalog::Belief::Refused(why) => format!("not believed: {why}"),
                    catalog::Belief::NotYet(why) => format!("not believed yet: {why}"),
                };
                let first = job.refused_checkpoints.len() < MAX_REFUSED_REMEMBERED
                    && job
                        .refused_checkpoints
                        .insert((node_id.to_owned(), c.path.chars().take(256).collect()));
                if first {
                    refused.push(why);
                }
                false
            })
            .collect();
        job.catalog.sort_by_key(|c| c.step);
        // A checkpoint whose marker says complete but whose own metadata
        // disagrees is not in the list above (the agent left it out); it is
        // said once per path, with the file the agent found missing or
        // short. Only paths inside the job's directory: anything else is
        // not the job's to report on.
        let dir = job.record.spec.checkpoint_dir.clone();
        let mut unverified = Vec::new();
        for c in catalog.unverified.iter().take(MAX_UNVERIFIED_PER_CATALOG) {
            let inside = catalog::inside(&dir, &c.path);
            let first = inside
                && job.unverified_checkpoints.len() < MAX_REFUSED_REMEMBERED
                && job.unverified_checkpoints.insert(c.path.clone());
            if first {
                let mut problem = c.problem.clone();
                clip(&mut problem, MAX_AGENT_TEXT);
                unverified.push(format!(
                    "node {node_id} found checkpoint step {} ({}) marked complete but \
                     not verified: {problem}; it is not a resume point",
                    c.step,
                    catalog::shown(&c.path)
                ));
            }
        }
        // The job's newest checkpoint itself found damaged (a shard cut
        // short after it was listed): the next generation must not be told
        // to resume from it. The newest older one that verifies takes its
        // place (none: the job starts over, and the event says so).
        let damaged = job.record.checkpoint.as_ref().is_some_and(|c| {
            catalog::inside(&dir, &c.path) && catalog.unverified.iter().any(|u| u.path == c.path)
        });
        let mut fallback = None;
        if damaged {
            let was = job.record.checkpoint.take().map(|c| c.step).unwrap_or(0);
            let older = job.catalog.iter().rev().find(|c| c.step < was).cloned();
            fallback = Some(match &older {
                Some(c) => format!(
                    "; the job's newest checkpoint was step {was}, it is step {} ({}) again",
                    c.step,
                    catalog::shown(&c.path)
                ),
                None => format!(
                    "; the job's newest checkpoint was step {was} and no older one verifies: a restart starts from scratch"
                ),
            });
            job.record.checkpoint = older;
        }
        for why in refused {
            self.record_job_event(
                now,
                EventKind::CheckpointRefused,
                Some(node_id),
                Some(&catalog.job),
                format!("node {node_id} listed a checkpoint that is {why}"),
            );
        }
        for (i, why) in unverified.into_iter().enumerate() {
            let why = match (&fallback, i) {
                (Some(f), 0) => format!("{why}{f}"),
                _ => why,
            };
            self.record_job_event(
                now,
                EventKind::CheckpointUnverified,
                Some(node_id),
                Some(&catalog.job),
                why,
            );
        }
        if damaged {
            self.persist_job(&catalog.job);
        }
        let Some(job) = self.jobs.get_mut(&catalog.job) else {
            return ReportOutcome::StaleGeneration;
        };
        let name = catalog.job.clone();
        if job.detect.pending_rollback.is_some() {
            if job.record.state.is_active() {
                // The catalog the pending rollback waited for: it picks its
                // target from it, in this batch's reconcile; the newest
                // checkpoint may be past the spike, so it is not taken.
                job.detect.rollback_catalog_fresh = true;
                self.request_reconcile(now);
                return ReportOutcome::Applied;
            }
            job.detect.pending_rollback = None;
        }
        // After a rollback the directory still holds the abandoned
        // timeline's newer checkpoints under the same names: one counts
        // again only once this generation stepped past it (and so rewrote it).
        let mark = job.record.rollback_mark;
        let current = job.step;
        let Some(newest) = job
            .catalog
            .iter()
            .rev()
            .find(|c| mark.is_none_or(|m| c.step <= m || current.is_some_and(|s| s > c.step)))
            .cloned()
        else {
            return ReportOutcome::Applied;
        };
        if job
            .record
            .checkpoint
            .as_ref()
            .is_some_and(|c| c.step >= newest.step)
        {
            return ReportOutcome::Applied;
        }
        job.record.checkpoint = Some(newest.clone());
        job.record.goodput.checkpoint(now, newest.step);
        if job.record.rollback_mark.is_some_and(|m| newest.step > m) {
            job.record.rollback_mark = None;
        }
        let pending_replace = job.detect.pending_replace.take();
        self.record_job_event(
            now,
            EventKind::JobCheckpoint,
            None,
            Some(&name),
            format!(
                "newest complete checkpoint: step {} ({})",
                newest.step, newest.path
            ),
        );
        self.persist_job(&name);
        if let Some(node) = pending_replace {
            if self.has_spare_for(&name) {
                self.replace_straggler(now, &name, &node);
                return ReportOutcome::Applied;
            }
        }
        self.maybe_grow(now, &name, newest.step);
        self.request_reconcile(now);
        ReportOutcome::Applied
    }

    /// The last log lines of each rank stopped because its generation hung.
    pub(crate) fn hang_postmortem(
        &mut self,
        now: Millis,
        node_id: &str,
        session: SessionId,
        exit: &RankExited,
    ) {
        let live = self.is_live_stream(node_id, session);
        let hung = self
            .jobs
            .get(&exit.job)
            .is_some_and(|j| j.detect.hung_generation == Some(exit.generation));
        if !live || !hung {
            return;
        }
        let lines: Vec<&str> = exit
            .log_tail
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(POSTMORTEM_LINES)..].join(" | ");
        let stacks = if exit.stack_dump.trim().is_empty() {
            String::new()
        } else {
            let dump: Vec<&str> = exit
                .stack_dump
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let mut dump = dump.join(" | ");
            if dump.len() > POSTMORTEM_STACK_BYTES {
                let mut end = POSTMORTEM_STACK_BYTES;
                while !dump.is_char_boundary(end) {
                    end -= 1;
                }
                dump.truncate(end);
                dump.push_str(" …");
            }
            format!("; stacks: {dump}")
        };
        self.record_job_event(
            now,
            EventKind::JobHangPostmortem,
            Some(node_id),
            Some(&exit.job),
            format!(
                "generation {} rank {} (local rank {}) before it was stopped: {}",
                exit.generation,
                exit.rank,
                exit.local_rank,
                if tail.is_empty() {
                    "(empty log)"
                } else {
                    &tail
                }
            ) + &stacks,
        );
    }
}

/// Refused catalog entries remembered per job (for one event each); past
/// this, further refusals are still refused, silently.
const MAX_REFUSED_REMEMBERED: usize = 256;

/// Unverified checkpoints looked at per catalog: an agent lists a few (the
/// directory holds the last several saves); more is not a directory a job
/// wrote.
const MAX_UNVERIFIED_PER_CATALOG: usize = 32;
