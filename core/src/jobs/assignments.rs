//! Desired assignments: what each node should run now, sent only when it
//! changes (level-triggered; the agent reconciles and fences older
//! generations).
use std::collections::HashMap;

use super::*;
use crate::messages::*;
use crate::records::GpuRecord;
use crate::{Action, Engine};

impl Engine {
    pub fn desired_assignment(&self, node_id: &str) -> DesiredAssignment {
        let holder = self.job_of(node_id).map(|job| {
            let rank = job.node_rank(node_id);
            (job, rank.unwrap_or(0))
        });
        self.desired_for(node_id, holder)
    }

    /// The assignment for a node whose holder (job, node rank) is known.
    pub(crate) fn desired_for(
        &self,
        node_id: &str,
        holder: Option<(&Job, usize)>,
    ) -> DesiredAssignment {
        match holder {
            Some((job, node_rank)) => DesiredAssignment {
                generation: job.record.generation,
                job: Some(self.job_assignment(job, node_id, node_rank)),
                // The job's nodes stop the hung generation's ranks when
                // they switch to this one: the post-mortem comes first.
                postmortem_generation: job.detect.hung_generation.unwrap_or(0),
            },
            None => DesiredAssignment {
                generation: self.last_generation,
                job: None,
                postmortem_generation: 0,
            },
        }
    }

    /// The GPUs a node's ranks use, in local-rank order.
    pub(crate) fn gpu_indices_for(&self, node_id: &str, per_node: u32) -> Vec<u32> {
        self.nodes
            .get(node_id)
            .map(|n| gpu_choice(&n.record.gpus, per_node))
            .unwrap_or_default()
    }

    pub(crate) fn job_assignment(
        &self,
        job: &Job,
        node_id: &str,
        node_rank: usize,
    ) -> JobAssignment {
        let spec = &job.record.spec;
        let master_addr = job
            .record
            .nodes
            .first()
            .and_then(|id| self.nodes.get(id))
            .map(|n| n.record.address.clone())
            .unwrap_or_default();
        let gpu_indices = self.gpu_indices_for(node_id, spec.gpus_per_node);
        let resume = match &job.record.resume_from {
            Some(fixed) => fixed.as_ref(),
            None => job.record.checkpoint.as_ref(),
        };
        JobAssignment {
            job: spec.name.clone(),
            command: spec.command.clone(),
            workdir: spec.workdir.clone().unwrap_or_default(),
            env: {
                let mut env = spec.env.clone();
                if job.record.rollbacks > 0 {
                    // A new seed changes the data order past the spike; a
                    // smaller learning rate makes it less likely to recur.
                    env.insert("SUP_SEED".to_owned(), job.record.rollbacks.to_string());
                    env.insert(
                        "SUP_LR_SCALE".to_owned(),
                        spec.lr_scale_after(job.record.rollbacks).to_string(),
                    );
                }
                env
            },
            node_rank: u32::try_from(node_rank).unwrap_or(u32::MAX),
            nnodes: u32::try_from(job.record.nodes.len()).unwrap_or(u32::MAX),
            ranks_per_node: spec.gpus_per_node,
            world_size: job.world_size(),
            master_addr,
            master_port: self.config.master_port,
            restart_count: job.record.restarts,
            max_restarts: spec.max_restarts,
            checkpoint_dir: spec.checkpoint_dir.clone(),
            checkpoint_layout: spec.checkpoint_layout.clone(),
            resume_from: resume.map(|c| Checkpoint {
                step: c.step,
                path: c.path.clone(),
                verified: c.verified.clone(),
            }),
            stop_grace_ms: self.config.stop_grace_ms,
            gpu_indices,
            progress_regex: spec.progress_regex.clone().unwrap_or_default(),
            // A job in a Slurm allocation runs as the allocation's owner
            // unless its spec names a user (Slurm lets only the owner, or
            // root, add steps to it).
            user: spec
                .user
                .clone()
                .or_else(|| job.record.slurm.as_ref().map(|a| a.user.clone()))
                .unwrap_or_default(),
            group: spec.group.clone().unwrap_or_default(),
            slurm_job_id: job.record.slurm.as_ref().map_or(0, |a| a.job_id),
            set_aside_dir: super::set_aside::set_aside_dir(
                &spec.checkpoint_dir,
                job.record.generation,
                resume,
            )
            .unwrap_or_default(),
        }
    }

    pub(crate) fn sync_assignments(&mut self) {
        // Reconcile runs once per batch of inputs: during a reconnect storm
        // at 16,384 nodes, hundreds of times. So the walk compares each
        // connected node's last assignment with one template per job (all
        // but the node's rank and GPUs) in place and allocates nothing per
        // node; a full assignment (strings, env map) is built only for the
        // nodes that need one.
        let templates: HashMap<&str, DesiredAssignment> = self
            .jobs
            .values()
            .filter(|j| j.record.state.is_active())
            .map(|j| (j.name(), self.desired_for("", Some((j, 0)))))
            .collect();
        let holders = holders_of(&self.jobs);
        let last_generation = self.last_generation;
        let mut stale: Vec<(String, Option<(String, usize)>)> = Vec::new();
        for node in self.nodes.values_mut().filter(|n| n.connected()) {
            let holder = holders.get(node.record.id.as_str()).copied();
            let up_to_date = match (holder, node.sent_assignment.as_mut()) {
                (Some((job, rank)), Some(sent)) => templates.get(job.name()).is_some_and(|t| {
                    let rank = u32::try_from(rank).unwrap_or(u32::MAX);
                    let gpus = (&node.record.gpus[..], job.record.spec.gpus_per_node);
                    matches_template(sent, t, rank, gpus)
                }),
                (None, Some(sent)) => sent.job.is_none() && sent.generation == last_generation,
                (_, None) => false,
            };
            if !up_to_date {
                let holder = holder.map(|(job, rank)| (job.name().to_owned(), rank));
                stale.push((node.record.id.clone(), holder));
            }
        }
        for (id, holder) in stale {
            let desired = {
                let holder = holder
                    .as_ref()
                    .and_then(|(job, rank)| self.jobs.get(job).map(|j| (j, *rank)));
                self.desired_for(&id, holder)
            };
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            if node.sent_assignment.as_ref() != Some(&desired) {
                node.sent_assignment = Some(desired.clone());
                self.actions.push_back(Action::SendAssignment {
                    node_id: id,
                    assignment: desired,
                });
            }
        }
    }
}

/// The GPUs a node's ranks use, in local-rank order: the lowest
/// `per_node` indices of the node's GPUs.
fn gpu_choice(gpus: &[GpuRecord], per_node: u32) -> Vec<u32> {
    let mut indices: Vec<u32> = gpus.iter().map(|g| g.index).collect();
    indices.sort_unstable();
    indices.truncate(per_node as usize);
    indices
}

/// Whether `chosen` is [`gpu_choice`] of `gpus`, without allocating when the
/// node lists its GPUs in index order (agents do).
fn is_gpu_choice(chosen: &[u32], gpus: &[GpuRecord], per_node: u32) -> bool {
    if gpus.windows(2).all(|w| w[0].index <= w[1].index) {
        let lowest = gpus.iter().map(|g| g.index).take(per_node as usize);
        chosen.iter().copied().eq(lowest)
    } else {
        chosen == gpu_choice(gpus, per_node).as_slice()
    }
}

/// Whether `sent` is the job's `template` for a node at `rank` with `gpus`
/// (of which its ranks use `per_node`).
/// The per-node fields are swapped out for the comparison and put back, so
/// the full derived equality decides (new proto fields included) without
/// cloning the assignment.
fn matches_template(
    sent: &mut DesiredAssignment,
    template: &DesiredAssignment,
    rank: u32,
    (gpus, per_node): (&[GpuRecord], u32),
) -> bool {
    let Some(job) = sent.job.as_mut() else {
        return false;
    };
    if sent.generation != template.generation
        || job.node_rank != rank
        || !is_gpu_choice(&job.gpu_indices, gpus, per_node)
    {
        return false;
    }
    let template_rank = template.job.as_ref().map_or(0, |t| t.node_rank);
    let saved_gpus = std::mem::take(&mut job.gpu_indices);
    job.node_rank = template_rank;
    let same = *sent == *template;
    if let Some(job) = sent.job.as_mut() {
        job.node_rank = rank;
        job.gpu_indices = saved_gpus;
    }
    same
}
