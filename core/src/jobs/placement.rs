//! Placement: which nodes a job runs on. Normal jobs before low-priority
//! ones; a failed node is swapped for a spare, else the job shrinks to the
//! largest valid world size; low-priority work on spares is preempted.
use std::collections::{HashMap, HashSet};

use super::*;
use crate::jobspec::Priority;
use crate::records::JobState;
use crate::{Engine, EventKind, Millis, Node, NodeState};

impl Engine {
    /// Healthy, reachable, uncordoned nodes that hold no job, or only a
    /// preemptible one.
    pub fn spares(&self) -> impl Iterator<Item = &Node> {
        // One holder map, not a scan of every job per node (quadratic at
        // 2,048 nodes, and /metrics and every reconcile ask).
        let holders = self.holders();
        self.nodes.values().filter(move |n| {
            n.takes_work()
                && !holders.get(n.record.id.as_str()).is_some_and(|(j, _)| {
                    j.record.spec.priority == crate::jobspec::Priority::Normal
                })
        })
    }

    /// Places the job and sends its new generation, or parks it as pending.
    /// `failure`: the reason for a restart; None for a first start.
    pub(crate) fn launch(&mut self, now: Millis, name: &str, failure: Option<String>) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let previous = job.record.nodes.clone();
        if let Some(wait) = self.lease_wait(now, name, &previous) {
            self.wait_for_leases(now, name, failure.as_deref(), wait);
            return;
        }
        let placement = self.place(name);
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let spec = job.record.spec.clone();
        let Some((nodes, preempted)) = placement else {
            let why = self.waiting_reason(name, failure.as_deref());
            let had_nodes = !previous.is_empty();
            let changed = job.record.state != JobState::Pending || job.record.reason != why;
            if had_nodes {
                self.next_generation();
            }
            if let Some(job) = self.jobs.get_mut(name) {
                job.record.state = JobState::Pending;
                job.set_nodes(Vec::new());
                job.record.reason = why.clone();
                job.record.goodput.note_resume(job.step);
                job.record.goodput.enter(now, crate::Bucket::Waiting);
            }
            if changed {
                self.record_job_event(now, EventKind::JobPending, None, Some(name), why);
                self.persist_job(name);
            }
            return;
        };

        // A wait for leases that is over: what the restart event says.
        let lease_over = self
            .jobs
            .get(name)
            .filter(|j| !j.record.lease_wait.is_empty())
            .map(|j| {
                let over = self.lease_wait_over(&j.record.lease_wait);
                match j.record.lease_wait_cause.as_str() {
                    "" => over,
                    cause => format!("{cause}; {over}"),
                }
            })
            .unwrap_or_default();
        let generation = self.next_generation();
        let Some(job) = self.jobs.get_mut(name) else {
            return;
        };
        let first = failure.is_none() && job.record.generation == 0;
        job.record.generation = generation;
        job.set_nodes(nodes.clone());
        job.record.resume_from = Some(job.record.checkpoint.clone());
        job.record.state = if first {
            JobState::Starting
        } else {
            JobState::Recovering
        };
        // Goodput: the steps this generation must reach again are re-done
        // work; from here to its first progress is restart time.
        job.record.goodput.note_resume(job.step);
        job.record.goodput.enter(now, crate::Bucket::Restart);
        job.launched.clear();
        job.exited_ok.clear();
        job.step = None;
        job.last_progress_at = None;
        job.fault_at = Some((now, failure.is_some()));
        job.detect.hang.reset();
        job.detect.loss.reset();
        job.detect.throughput.reset();
        job.detect.node_throughput.clear();
        job.detect.stragglers.retain(&nodes);
        job.detect.node_phase.clear();
        job.detect.node_min_step.clear();
        job.detect.node_step.clear();
        job.record.lease_wait.clear();
        job.record.lease_wait_cause.clear();
        let mut why = match &failure {
            Some(f) => f.clone(),
            None if !lease_over.is_empty() => lease_over,
            None if job.record.restarts == 0 && previous.is_empty() => "first start".to_owned(),
            None => "capacity available".to_owned(),
        };
        why.push_str(&format!(
            "; generation {generation} on {} node(s), world size {}",
            nodes.len(),
            job.world_size()
        ));
        // Sets, not list scans: at 16,384 nodes a scan per node was 268
        // million string comparisons per restart.
        let (now_held, held_before): (HashSet<&String>, HashSet<&String>) =
            (nodes.iter().collect(), previous.iter().collect());
        let gone: Vec<&String> = previous.iter().filter(|n| !now_held.contains(n)).collect();
        let added: Vec<&String> = nodes.iter().filter(|n| !held_before.contains(n)).collect();
        match (gone.is_empty(), added.is_empty()) {
            (false, false) => {
                why.push_str(&format!("; replaced {} with {}", join(&gone), join(&added)))
            }
            (false, true) => why.push_str(&format!("; without {}", join(&gone))),
            (true, false) if !previous.is_empty() => {
                why.push_str(&format!("; adding {}", join(&added)))
            }
            _ => {}
        }
        if nodes.len() < previous.len() {
            why.push_str(&format!(
                "; shrunk from {} to {} node(s)",
                previous.len(),
                nodes.len()
            ));
        } else if !previous.is_empty() && nodes.len() > previous.len() {
            why.push_str(&format!(
                "; grown from {} to {} node(s)",
                previous.len(),
                nodes.len()
            ));
        }
        match &job.record.checkpoint {
            Some(c) => why.push_str(&format!("; resuming from step {} ({})", c.step, c.path)),
            None => why.push_str("; no checkpoint yet, starting from scratch"),
        }
        job.record.reason = if first { String::new() } else { why.clone() };
        let kind = if first {
            EventKind::JobStarted
        } else {
            EventKind::JobRestarted
        };
        self.record_job_event(now, kind, None, Some(name), why);
        self.persist_job(name);

        // The preempted jobs restart after this job holds its nodes, so
        // their placement cannot pick those nodes again.
        for (victim, node) in &preempted {
            self.record_job_event(
                now,
                EventKind::JobPreempted,
                Some(node),
                Some(victim),
                format!(
                    "node {node} taken by job '{name}' ({} priority)",
                    spec.priority.as_str()
                ),
            );
            self.restart_job(
                now,
                victim,
                format!("preempted: node {node} is needed by job '{name}'"),
                false,
            );
        }
    }

    /// Nodes this job could run on: its current healthy nodes first (stable
    /// ranks), then free healthy nodes, then nodes of preemptible jobs (for
    /// normal-priority jobs only), leaving the spare reserve alone unless
    /// the job may use it. Returns the chosen nodes and the (job, node)
    /// pairs it would preempt, or None when no valid world size fits.
    pub(crate) fn place(&self, name: &str) -> Option<Placement> {
        let job = self.jobs.get(name)?;
        let offer = self.offer(job);
        let count = job
            .record
            .spec
            .best_node_count(u32::try_from(offer.usable()).unwrap_or(u32::MAX))?
            as usize;
        let Offer {
            mut own,
            free,
            lent,
            ..
        } = offer;
        own.extend(free);
        own.truncate(count);
        let mut taken = Vec::new();
        for (victim, node) in lent.into_iter().take(count.saturating_sub(own.len())) {
            own.push(node.clone());
            taken.push((victim, node));
        }
        Some((own, taken))
    }

    /// What placement can offer a job: its own nodes that can still run
    /// it, free healthy nodes, nodes lent to preemptible work, and how many
    /// of those the spare reserve keeps from it.
    fn offer(&self, job: &Job) -> Offer {
        let name = job.name();
        let spec = &job.record.spec;
        // Slurm allocations: a bound job only on its own, others never there.
        let allocations = self.allocation_filter(job);
        let fits = |id: &String, allow_suspect: bool| {
            !job.record.avoid_nodes.contains(id)
                && self.nodes.get(id).is_some_and(|n| {
                    let state = n.state();
                    let healthy =
                        state == NodeState::Ready || (allow_suspect && state == NodeState::Suspect);
                    healthy
                        && !n.held_by_scheduler()
                        && allocations.allows(n)
                        && n.connected()
                        && n.record.gpus.len() >= spec.gpus_per_node as usize
                })
        };
        // How many active jobs hold each node, and the first of them
        // (what `job_of` returns), counted once instead of per node.
        let mut holding: HashMap<&str, (usize, &Job)> = HashMap::new();
        for j in self.jobs.values().filter(|j| j.record.state.is_active()) {
            for n in &j.record.nodes {
                let e = holding.entry(n.as_str()).or_insert((0, j));
                if e.0 == 0 || e.1.name() != j.name() {
                    e.0 += 1;
                }
            }
        }
        let held_by_other = |id: &String| {
            holding
                .get(id.as_str())
                .is_some_and(|(count, first)| *count > 1 || first.name() != name)
        };
        let own: Vec<String> = job
            .record
            .nodes
            .iter()
            .filter(|id| fits(id, true) && !held_by_other(id))
            .cloned()
            .collect();
        let mut free = Vec::new();
        let mut lent = Vec::new();
        let current: HashSet<&String> = own.iter().collect();
        // Nodes no normal job holds, whoever they fit: the spare pool the
        // reserve is counted against.
        let mut spares = 0usize;
        for (id, node) in &self.nodes {
            let held = holding.get(id.as_str());
            if node.takes_work()
                && held.is_none_or(|(_, j)| j.record.spec.priority == Priority::Low)
            {
                spares += 1;
            }
            if current.contains(id) || !fits(id, false) {
                continue;
            }
            if held.is_some_and(|(count, _)| *count > 1) {
                // Being handed over between two jobs right now.
                continue;
            }
            match held.map(|(_, j)| *j) {
                None => free.push(id.clone()),
                Some(other)
                    if other.name() != name
                        && spec.priority == Priority::Normal
                        && other.record.spec.priority == Priority::Low =>
                {
                    lent.push((other.name().to_owned(), id.clone()));
                }
                Some(_) => {}
            }
        }
        // Nodes whose lease the job just waited out went silent: back
        // already, they are still the last choice, as they would have been
        // had the job restarted at once, while they were unreachable.
        if !job.record.lease_wait.is_empty() {
            free.sort_by_key(|id| job.record.lease_wait.contains(id));
        }
        let pool = free.len() + lent.len();
        let reserved = self.reserve_kept_from(job, own.len(), spares).min(pool);
        Offer {
            own,
            free,
            lent,
            reserved,
        }
    }

    /// How many spare nodes the reserve (`spares_target`) keeps from this
    /// job. Low-priority work may always borrow them (it is preempted when
    /// a spare is needed), and so may a job whose spec opts in. A job that
    /// has run may take from the reserve what it lost (up to its previous
    /// size, or `min_nodes` when it lost everything): replacing failed
    /// nodes is what the reserve is for. A first start or growing a
    /// shrunk job may not.
    fn reserve_kept_from(&self, job: &Job, own: usize, spares: usize) -> usize {
        let spec = &job.record.spec;
        let target = self.config.spares_target as usize;
        // A job bound to a Slurm allocation brought its own spares.
        if target == 0
            || spec.priority == Priority::Low
            || spec.use_reserved_spares
            || job.record.slurm.is_some()
        {
            return 0;
        }
        let lost = if job.record.generation > 0 {
            (job.record.nodes.len().max(spec.min_nodes() as usize)).saturating_sub(own)
        } else {
            0
        };
        target.min(spares).saturating_sub(lost)
    }

    /// Why a job that placement cannot fit waits: what it needs, what it
    /// could have, and the reserve when that is what stops it.
    fn waiting_reason(&self, name: &str, failure: Option<&str>) -> String {
        let Some(job) = self.jobs.get(name) else {
            return String::new();
        };
        let spec = &job.record.spec;
        let offer = self.offer(job);
        let reserve = if offer.reserved > 0 {
            format!(
                "; {} more kept free as the spare reserve (jobs.spares_target = {}; a spec with use_reserved_spares = true may use it)",
                offer.reserved, self.config.spares_target
            )
        } else {
            String::new()
        };
        format!(
            "waiting for capacity: needs at least {} node(s) with {} GPU(s) each{}, {} available{reserve}{}",
            spec.min_nodes(),
            spec.gpus_per_node,
            if spec.world_size_multiple > 1 {
                format!(
                    " and a world size that is a multiple of {}",
                    spec.world_size_multiple
                )
            } else {
                String::new()
            },
            offer.usable(),
            failure.map(|f| format!("; after: {f}")).unwrap_or_default()
        )
    }

    /// The spare pool as operators see it: healthy nodes no normal job
    /// holds, split into free ones and ones lent to low-priority work.
    pub fn spare_pool(&self) -> SparePool {
        let holders = self.holders();
        let mut pool = SparePool {
            target: self.config.spares_target,
            ..SparePool::default()
        };
        for n in self.nodes.values().filter(|n| n.takes_work()) {
            match holders.get(n.record.id.as_str()) {
                None => pool.free.push(n.record.id.clone()),
                Some((j, _)) if j.record.spec.priority == Priority::Low => {
                    pool.lent.push((n.record.id.clone(), j.name().to_owned()))
                }
                Some(_) => {}
            }
        }
        pool
    }

    /// Normal before low priority, then oldest submission first.
    pub(crate) fn jobs_by_priority(&self) -> Vec<String> {
        let mut jobs: Vec<&Job> = self.jobs.values().collect();
        jobs.sort_by_key(|j| {
            (
                j.record.spec.priority == Priority::Low,
                j.record.submitted_at,
                j.name().to_owned(),
            )
        });
        jobs.into_iter().map(|j| j.name().to_owned()).collect()
    }

    pub(crate) fn check_spares(&mut self, now: Millis) {
        let target = self.config.spares_target;
        if target == 0 {
            return;
        }
        let spares = self.spares().count() as u32;
        let low = spares < target;
        if low && !self.spares_were_low {
            self.record_event(
                now,
                EventKind::SparesLow,
                None,
                format!("spare pool at {spares} node(s), below its target of {target}"),
            );
        }
        self.spares_were_low = low;
    }
}

/// Chosen nodes in node-rank order, and the (preempted job, node) pairs
/// that placement takes from preemptible jobs.
type Placement = (Vec<String>, Vec<(String, String)>);

/// Nodes a job could be placed on, before choosing.
struct Offer {
    /// Its current nodes that can still run it (stable ranks).
    own: Vec<String>,
    /// Healthy nodes no job holds.
    free: Vec<String>,
    /// (low-priority job, node): nodes it could preempt.
    lent: Vec<(String, String)>,
    /// How many of `free` + `lent` the spare reserve keeps from it.
    reserved: usize,
}

impl Offer {
    fn usable(&self) -> usize {
        self.own.len() + self.free.len() + self.lent.len() - self.reserved
    }
}

/// The spare pool: `spares_target` healthy nodes kept free of normal work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparePool {
    pub target: u32,
    /// Spares holding nothing.
    pub free: Vec<String>,
    /// (node, job): spares lent to low-priority work, taken back when a
    /// normal job needs one.
    pub lent: Vec<(String, String)>,
}
