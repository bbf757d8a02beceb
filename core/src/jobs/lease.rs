//! The assignment lease: two generations of a job never run at once.
//!
//! A node supd can talk to gets the next desired assignment and stops the
//! old ranks itself. A node it cannot talk to (unreachable, or its stream
//! closed) may still run them: cut off from supd, not from its peers or the
//! checkpoint directory. Its agent kills them when no supervisor has
//! acknowledged it for `assignment_lease_ms`, counted from the send time of
//! the last message acknowledged, and supd received that message no later
//! than it last heard from the node. So on supd's clock those ranks are
//! surely gone `lease + LEASE_MARGIN_MS` after the node's `last_seen`, and a
//! job whose previous generation ran there starts its next one, anywhere,
//! only then. The nodes it waits for are kept in the job's record, so a supd
//! restarted meanwhile waits too: restored nodes count as heard at the
//! restart (the old supd may have acknowledged them just before it died),
//! or, with replicas, `takeover_hold_ms` later (a leader that lost its term
//! to an etcd outage keeps renewing agents' leases that long).
//!
//! Not covered: a node cut off in the few seconds before it turns
//! unreachable counts as reachable, so a restart for another reason in that
//! window does not wait for it (its ranks stop at its lease, or when the
//! assignment reaches it).

use std::fmt::Write as _;

use crate::config::LEASE_MARGIN_MS;
use crate::records::JobState;
use crate::{format_ms, Engine, EventKind, Millis};

/// The nodes a job's next generation waits for, and until when.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LeaseWait {
    /// When the last of them has surely stopped its ranks.
    pub until: Millis,
    /// (node id, when supd last heard from it), in id order.
    pub nodes: Vec<(String, Millis)>,
}

impl Engine {
    /// Whether `name`'s next generation must wait: nodes of its previous
    /// generation (`previous`, and any it is already waiting for) that supd
    /// cannot tell to stop and whose lease may not have run out at `now`.
    pub(crate) fn lease_wait(
        &self,
        now: Millis,
        name: &str,
        previous: &[String],
    ) -> Option<LeaseWait> {
        let lease = self.config.assignment_lease_ms;
        if lease <= 0 {
            return None;
        }
        let job = self.jobs.get(name)?;
        let mut nodes: Vec<(String, Millis, Millis)> = previous
            .iter()
            .chain(&job.record.lease_wait)
            .filter_map(|id| {
                // A node removed from the registry was drained of work
                // before an operator could remove it.
                let node = self.nodes.get(id)?;
                let told = node.connected() && !node.unreachable;
                // Not heard since a restart or takeover: the supervisor
                // before may have renewed its lease until it gave up.
                let heard = if node.awaiting_rejoin {
                    node.last_seen + self.config.takeover_hold_ms
                } else {
                    node.last_seen
                };
                let stops_by = heard + lease + LEASE_MARGIN_MS;
                (!told && stops_by > now).then(|| (id.clone(), node.last_seen, stops_by))
            })
            .collect();
        nodes.sort();
        nodes.dedup();
        let until = nodes.iter().map(|(_, _, stops_by)| *stops_by).max()?;
        Some(LeaseWait {
            until,
            nodes: nodes.into_iter().map(|(id, seen, _)| (id, seen)).collect(),
        })
    }

    /// Withdraws the job from every node (the reachable ones stop its ranks
    /// now) and holds its next generation until the wait is over.
    pub(crate) fn wait_for_leases(
        &mut self,
        now: Millis,
        name: &str,
        failure: Option<&str>,
        wait: LeaseWait,
    ) {
        let lease = self.config.assignment_lease_ms;
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let ids: Vec<String> = wait.nodes.iter().map(|(id, _)| id.clone()).collect();
        let entering = job.record.state != JobState::Pending || job.record.lease_wait != ids;
        let had_nodes = !job.record.nodes.is_empty();
        if had_nodes {
            self.next_generation();
        }
        let mut why = failure.map(|f| format!("{f}; ")).unwrap_or_default();
        let _ = write!(
            why,
            "the next generation waits {} for the assignment lease of {}: supd cannot tell {} to \
             stop the ranks it may still run, and its agent kills them itself once no supervisor \
             has acknowledged it for {} (lease), so they are surely gone {} after it was last heard",
            format_ms(wait.until - now),
            describe(&wait.nodes, now),
            if wait.nodes.len() == 1 { "it" } else { "them" },
            format_ms(lease),
            format_ms(lease + LEASE_MARGIN_MS),
        );
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        job.set_nodes(Vec::new());
        job.record.state = JobState::Pending;
        job.record.lease_wait = ids;
        if let Some(f) = failure {
            job.record.lease_wait_cause = f.to_owned();
        }
        if entering {
            job.record.reason = why.clone();
            job.record.goodput.note_resume(job.step);
            job.record.goodput.enter(now, crate::Bucket::Waiting);
            self.record_job_event(now, EventKind::JobPending, None, Some(name), why);
            self.persist_job(name);
        }
        self.schedule_job_check(wait.until);
    }
}

/// "node b (last heard 9.1 s ago)", for up to a few nodes.
fn describe(nodes: &[(String, Millis)], now: Millis) -> String {
    const SHOWN: usize = 3;
    let mut text = String::from(if nodes.len() == 1 { "node " } else { "nodes " });
    for (i, (id, seen)) in nodes.iter().take(SHOWN).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "{id} (last heard {} ago)", format_ms(now - seen));
    }
    if nodes.len() > SHOWN {
        let _ = write!(text, " and {} more", nodes.len() - SHOWN);
    }
    text
}

impl Engine {
    /// What the restart event says about a wait that is over: each node's
    /// lease ran out, or it came back and was told to stop.
    pub(crate) fn lease_wait_over(&self, waited: &[String]) -> String {
        let (back, ran_out): (Vec<&String>, Vec<&String>) = waited.iter().partition(|id| {
            self.nodes
                .get(*id)
                .is_some_and(|n| n.connected() && !n.unreachable)
        });
        let mut parts = Vec::new();
        if !ran_out.is_empty() {
            parts.push(format!(
                "the assignment lease of {} ran out (the previous generation's ranks there are gone)",
                super::join(&ran_out)
            ));
        }
        if !back.is_empty() {
            parts.push(format!(
                "{} reachable again (told to stop the previous generation)",
                super::join(&back)
            ));
        }
        parts.join("; ")
    }
}
