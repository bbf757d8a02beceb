//! The rank launcher: makes the ranks running on this node match the
//! desired assignment, and reports what runs.
//!
//! Level-triggered (DESIGN.md §2): the loop compares the desired (job,
//! generation) with what runs, whatever sequence of messages led there.
//! When they differ, every rank of the running generation is stopped first
//! (SIGTERM to its process group, SIGKILL after the grace period) and only
//! then are the ranks of the desired one started. Ranks that end on their
//! own are reported and not restarted: restarting is supd's decision, and it
//! comes as a new generation.
//!
//! Reports: `Ranks` whenever the status changes, one `RankExited` per rank
//! process that ends. Everything about an older generation is sent before
//! the next generation's first status, and the [`Fence`] drops anything
//! about it afterwards.

pub mod adopt;
pub mod env;
pub mod follow;
pub mod identity;
pub mod logs;
pub mod postmortem;
pub mod process;
pub mod scanner;
pub mod slurm_step;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use sup_proto::v1::agent_message::Body as AgentBody;
use sup_proto::v1::{DesiredAssignment, JobAssignment, LogRequest, RankExited, RankStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, error, info, warn};

use crate::bus::Outbox;
use crate::fence::{Fence, Running};
use crate::lease::LeaseEnd;
use crate::progress::Intake;
use env::NodeContext;
use process::{signal_group, Exit, RankProcess, RankSpec};
use scanner::{Catalogs, Target};

/// Used when an assignment's `stop_grace_ms` is 0.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a rank may take to vanish after SIGKILL. Past it the process is
/// stuck in the kernel (a hung GPU driver call, typically); it can never run
/// user code again, so the launcher stops waiting for it.
pub const KILL_WAIT: Duration = Duration::from_secs(10);
/// Lines of a rank's log sent with its exit.
pub const EXIT_LOG_LINES: usize = 20;
const EXIT_LOG_BYTES: u64 = 64 * 1024;

/// What the launcher needs from the agent's configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Rank logs go under `<state_dir>/jobs/`.
    pub state_dir: PathBuf,
    pub node_id: String,
    /// On agent shutdown leave the ranks running (for a restarted agent to
    /// re-adopt, see [`adopt`]) instead of stopping them.
    pub leave_ranks_on_exit: bool,
    /// Start the ranks of a job that names no `user` (or names root) as
    /// root; otherwise their launch fails (see [`identity`]).
    pub allow_root_ranks: bool,
    /// How much of the ranks' output is kept on disk (see [`logs`]).
    pub logs: logs::Retention,
    /// This node's name in Slurm, for the ranks of a job bound to a Slurm
    /// allocation (see [`slurm_step`]); `None`: the node id.
    pub slurm_node_name: Option<String>,
}

/// How a generation's ranks on this node are started, and reached when
/// SIGKILL to what the agent started is not enough. The launcher's loop
/// (desired vs running, stop grace, exits, reports, fencing) is the same
/// for both.
pub trait RankLauncher {
    /// Starts `specs` (this node's ranks, in local-rank order) and adds
    /// what runs to `ranks`; on an error, what started before it is in
    /// `ranks` (the loop stops it).
    fn start(
        &self,
        job: &JobAssignment,
        specs: Vec<RankSpec<'_>>,
        exits: &mpsc::UnboundedSender<Exit>,
        ranks: &mut BTreeMap<u32, RankProcess>,
    ) -> Result<(), String>;

    /// After the grace period, once SIGKILL went to what the agent started.
    fn kill_rest(&self, _job: &JobAssignment, _generation: u64) {}
}

/// The default: every rank a process the agent forks, in its own process
/// group.
#[derive(Debug)]
pub struct Forked;

impl RankLauncher for Forked {
    fn start(
        &self,
        _job: &JobAssignment,
        specs: Vec<RankSpec<'_>>,
        exits: &mpsc::UnboundedSender<Exit>,
        ranks: &mut BTreeMap<u32, RankProcess>,
    ) -> Result<(), String> {
        for spec in specs {
            let started = process::spawn(spec, exits.clone())?;
            debug!(rank = started.rank, local_rank = started.local_rank, pid = %started.pid, "rank started");
            ranks.insert(started.local_rank, started);
        }
        Ok(())
    }
}

/// For a job bound to a Slurm allocation: the node's ranks as one job
/// step of it, through srun (see [`slurm_step`]).
#[derive(Debug)]
pub struct SlurmStep {
    pub node_name: String,
}

impl RankLauncher for SlurmStep {
    fn start(
        &self,
        job: &JobAssignment,
        specs: Vec<RankSpec<'_>>,
        exits: &mpsc::UnboundedSender<Exit>,
        ranks: &mut BTreeMap<u32, RankProcess>,
    ) -> Result<(), String> {
        let Some(first) = specs.first() else {
            return Ok(());
        };
        let generation = first.generation;
        let user = first.user;
        let envs: Vec<BTreeMap<String, String>> = specs.iter().map(|s| s.env.clone()).collect();
        let env = slurm_step::step_env(&envs, u64::from(first.rank));
        let step_ranks = specs
            .into_iter()
            .map(|s| slurm_step::StepRank {
                rank: s.rank,
                local_rank: s.local_rank,
                log_path: s.log_path,
            })
            .collect();
        let started = slurm_step::spawn(
            job,
            &self.node_name,
            generation,
            env,
            step_ranks,
            user,
            exits.clone(),
        )?;
        for r in started {
            ranks.insert(r.local_rank, r);
        }
        Ok(())
    }

    fn kill_rest(&self, job: &JobAssignment, generation: u64) {
        slurm_step::cancel(job.slurm_job_id, &job.job, generation, &self.node_name);
    }
}

impl Settings {
    /// The launcher for `job`: a Slurm step when it is bound to an
    /// allocation, forked processes otherwise.
    pub fn launcher_for(&self, job: &JobAssignment) -> Box<dyn RankLauncher> {
        if job.slurm_job_id == 0 {
            return Box::new(Forked);
        }
        Box::new(SlurmStep {
            node_name: self
                .slurm_node_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| self.node_id.clone()),
        })
    }
}

/// The running launcher, with its checkpoint scanner and progress intake.
#[derive(Debug)]
pub struct Launcher {
    /// `true`: detach (leave the ranks running); `false`: stop them.
    stop: Option<oneshot::Sender<bool>>,
    /// `None` once it has ended.
    task: Option<JoinHandle<()>>,
    scanner: JoinHandle<()>,
    /// Keeps the running ranks' logs within their size cap; `None`: no cap.
    log_cap: Option<JoinHandle<()>>,
    progress_addr: Option<SocketAddr>,
    /// The live ranks, for drills (see [`RankSet`]).
    ranks: watch::Receiver<RankSet>,
}

/// The ranks this node runs now, published on every change: what a drill
/// on ranks (crate::drills) signals. A pid here may have just exited (its
/// exit not processed yet): signalling its process group then is harmless,
/// as in [`Reconciler::on_exit`]'s clean-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RankSet {
    pub job: String,
    pub generation: u64,
    /// The agent is stopping them (a new generation, a shutdown).
    pub stopping: bool,
    /// (global rank, pid, which is also its process group id).
    pub ranks: Vec<(u32, nix::unistd::Pid)>,
}

impl Launcher {
    /// Starts reconciling `assignment`, answering `log_requests`, and
    /// reporting through `outbox`.
    pub async fn start(
        settings: Settings,
        outbox: Outbox,
        assignment: watch::Receiver<Option<DesiredAssignment>>,
        lease: watch::Receiver<LeaseEnd>,
        log_requests: mpsc::Receiver<LogRequest>,
    ) -> Launcher {
        let fence = Fence::new(outbox);
        // Ranks a previous agent left running, if any (see [`adopt`]).
        let adoptable = adopt::load(&settings.state_dir);
        let previous_port = adoptable.as_ref().and_then(|a| a.progress_port);
        // Without the intake ranks still run; they just cannot report
        // progress, which is better than a node that refuses all work.
        let intake = match Intake::start_on(fence.clone(), previous_port.unwrap_or(0)).await {
            Ok(intake) => {
                info!(addr = %intake.addr(), "progress intake listening");
                Some(intake)
            }
            Err(e) => {
                error!("cannot start the progress intake on 127.0.0.1: {e}; ranks will run without SUP_PROGRESS_ADDR");
                None
            }
        };
        let progress_addr = intake.as_ref().map(Intake::addr);
        let catalogs = Catalogs::new(fence.clone());
        let scanner = tokio::spawn(scanner::run(Arc::clone(&catalogs), assignment.clone()));
        let (log_paths, log_paths_rx) = watch::channel(Vec::new());
        let retention = settings.logs;
        let log_cap = (retention.rank_log_max_bytes > 0).then(|| {
            tokio::spawn(logs::cap_sizes(
                log_paths_rx,
                retention.rank_log_max_bytes,
                retention.check_interval,
            ))
        });
        let (stop, stop_rx) = oneshot::channel();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let (rank_set, ranks) = watch::channel(RankSet::default());
        let reconciler = Reconciler {
            settings,
            fence,
            catalogs,
            progress_addr: progress_addr.map(|a| a.to_string()),
            intake,
            follower: None,
            postmortem: None,
            stack_dumps: None,
            desired: None,
            current: None,
            stopping: None,
            shutting_down: false,
            exits_tx,
            exits_rx,
            last_status: None,
            adoptable,
            watchdog: Watchdog::from_env(),
            log_paths,
            rank_set,
            lease_end: None,
            lease_killed: None,
        };
        let task = tokio::spawn(reconciler.run(assignment, lease, log_requests, stop_rx));
        Launcher {
            stop: Some(stop),
            task: Some(task),
            scanner,
            log_cap,
            progress_addr,
            ranks,
        }
    }

    /// The live ranks, updated on every change.
    pub fn ranks(&self) -> watch::Receiver<RankSet> {
        self.ranks.clone()
    }

    /// The progress intake's address, as given to ranks.
    pub fn progress_addr(&self) -> Option<SocketAddr> {
        self.progress_addr
    }

    /// Stops every rank (SIGTERM, SIGKILL after the grace period), reports
    /// their exits, and returns when none is left. Safe to call again, also
    /// after a call that was cancelled part-way.
    pub async fn shutdown(&mut self) {
        self.end(false).await;
    }

    /// Ends the launcher and leaves the ranks running, their state file in
    /// place for the next agent to re-adopt them.
    pub async fn detach(&mut self) {
        self.end(true).await;
    }

    async fn end(&mut self, detach: bool) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(detach);
        }
        if let Some(task) = self.task.as_mut() {
            if let Err(e) = task.await {
                error!("rank launcher failed: {e}");
            }
            self.task = None;
        }
        self.scanner.abort();
        if let Some(log_cap) = &self.log_cap {
            log_cap.abort();
        }
    }
}

/// The ranks of one generation (or the decision to run nothing).
#[derive(Debug)]
struct Generation {
    generation: u64,
    job: Option<JobAssignment>,
    /// Started and not yet reaped, by local rank.
    ranks: BTreeMap<u32, RankProcess>,
    launched: bool,
    launch_error: String,
}

impl Generation {
    fn name(&self) -> &str {
        self.job.as_ref().map_or("", |j| j.job.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Terminating,
    Killing,
}

#[derive(Debug)]
struct Stopping {
    phase: Phase,
    deadline: Instant,
}

struct Reconciler {
    settings: Settings,
    fence: Fence,
    catalogs: Arc<Catalogs>,
    progress_addr: Option<String>,
    intake: Option<Intake>,
    /// Follows the current generation's rank logs when its job has a
    /// `progress_regex`; stops when dropped.
    follower: Option<follow::Follower>,
    /// Stack dumps of a hung generation's ranks being taken before they
    /// are stopped (see [`postmortem`]).
    postmortem: Option<(u64, JoinHandle<BTreeMap<u32, String>>)>,
    /// The dumps taken, by rank, for the generation's exit reports.
    stack_dumps: Option<(u64, BTreeMap<u32, String>)>,
    desired: Option<DesiredAssignment>,
    current: Option<Generation>,
    stopping: Option<Stopping>,
    shutting_down: bool,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
    last_status: Option<RankStatus>,
    /// What a previous agent left running, until the first assignment
    /// decides whether it is adopted or stopped.
    adoptable: Option<adopt::StateFile>,
    watchdog: Watchdog,
    /// The running ranks' log files, for the size cap (see [`logs::cap_sizes`]).
    log_paths: watch::Sender<Vec<PathBuf>>,
    rank_set: watch::Sender<RankSet>,
    /// When the assignment lease runs out (see [`crate::lease`]).
    lease_end: LeaseEnd,
    /// The generation whose ranks the lease killed: their exits are
    /// reported as the lease's doing, not the job's nor a stop supd asked for.
    lease_killed: Option<u64>,
}

/// systemd's watchdog (`WatchdogSec=`), pinged from the reconcile loop: the
/// loop that launches, stops and reports ranks wakes at least every half
/// period, and if it is stuck the pings stop and systemd restarts the agent
/// (the ranks survive that, see [`adopt`]). Nothing without `WATCHDOG_USEC`.
struct Watchdog {
    period: Option<Duration>,
    next: Instant,
}

impl Watchdog {
    fn from_env() -> Watchdog {
        Watchdog {
            period: sd_notify::watchdog_enabled().map(|d| d / 2),
            next: Instant::now(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.period.map(|_| self.next)
    }

    fn ping_if_due(&mut self) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        if now >= self.next {
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]) {
                warn!("cannot ping the systemd watchdog: {e}");
            }
            self.next = now + period;
        }
    }
}

/// The stack dumps being taken, once they are done (never, if none are).
async fn wait_postmortem(
    postmortem: &mut Option<(u64, JoinHandle<BTreeMap<u32, String>>)>,
) -> (u64, BTreeMap<u32, String>) {
    match postmortem {
        Some((generation, task)) => (*generation, task.await.unwrap_or_default()),
        None => std::future::pending().await,
    }
}

/// SIGKILL to every rank's process group of `current` (a Slurm step's
/// ranks share one srun: each process once), and to what the launcher of
/// its job reaches beyond them.
fn kill_generation(settings: &Settings, current: &Generation) {
    let mut signalled = std::collections::HashSet::new();
    for rank in current.ranks.values() {
        if !signalled.insert(rank.pid) {
            continue;
        }
        if let Err(e) = signal_group(rank.pid, Signal::SIGKILL) {
            warn!(rank = rank.rank, pid = %rank.pid, "cannot send SIGKILL: {e}");
        }
    }
    if let Some(job) = &current.job {
        settings
            .launcher_for(job)
            .kill_rest(job, current.generation);
    }
}

fn desired_key(desired: &DesiredAssignment) -> (u64, &str) {
    (
        desired.generation,
        desired.job.as_ref().map_or("", |j| j.job.as_str()),
    )
}

impl Reconciler {
    async fn run(
        mut self,
        mut assignment: watch::Receiver<Option<DesiredAssignment>>,
        mut lease: watch::Receiver<LeaseEnd>,
        mut log_requests: mpsc::Receiver<LogRequest>,
        mut stop: oneshot::Receiver<bool>,
    ) {
        self.lease_end = *lease.borrow_and_update();
        let mut lease_watched = true;
        // Nothing is reported before the first assignment: there is no
        // generation to report about yet.
        self.desired = assignment.borrow_and_update().clone();
        let (mut watching, mut answering) = (true, true);
        while self.reconcile() {
            self.watchdog.ping_if_due();
            let deadline = self.stopping.as_ref().map(|s| s.deadline);
            let ping = self.watchdog.deadline();
            let lease_end = self.lease_bound();
            tokio::select! {
                changed = assignment.changed(), if watching => match changed {
                    Ok(()) => self.desired = assignment.borrow_and_update().clone(),
                    // The link is gone: the agent is ending, and its
                    // shutdown will stop us.
                    Err(_) => watching = false,
                },
                changed = lease.changed(), if lease_watched => match changed {
                    Ok(()) => self.lease_end = *lease.borrow_and_update(),
                    Err(_) => lease_watched = false,
                },
                Some(exit) = self.exits_rx.recv() => self.on_exit(exit).await,
                request = log_requests.recv(), if answering => match request {
                    Some(request) => self.answer_logs(request),
                    None => answering = false,
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_deadline();
                }
                () = sleep_until(ping.unwrap_or_else(Instant::now)), if ping.is_some() => {}
                () = sleep_until(lease_end.unwrap_or_else(Instant::now)), if lease_end.is_some() => {
                    self.on_lease_end();
                }
                (generation, dumps) = wait_postmortem(&mut self.postmortem) => {
                    self.postmortem = None;
                    info!(generation, ranks = dumps.len(), "post-mortem stack dumps taken");
                    self.stack_dumps = Some((generation, dumps));
                }
                // A dropped handle means the same as a shutdown request.
                detach = &mut stop, if !self.shutting_down => {
                    if matches!(detach, Ok(true)) {
                        let ranks = self.current.as_ref().map_or(0, |c| c.ranks.len());
                        info!(ranks, "the agent is shutting down; leaving the ranks running for the next agent to re-adopt");
                        return;
                    }
                    info!("stopping every rank: the agent is shutting down");
                    self.shutting_down = true;
                }
            }
        }
    }

    /// Moves reality one step towards the desired state. False when the
    /// launcher is done (shut down, no rank left).
    fn reconcile(&mut self) -> bool {
        let live = self.current.as_ref().is_some_and(|c| !c.ranks.is_empty());
        if self.shutting_down {
            if live {
                self.begin_stop();
            }
            return live;
        }
        let Some(desired) = &self.desired else {
            return true;
        };
        if let Some(previous) = self.adoptable.take() {
            let desired = desired.clone();
            self.adopt(previous, &desired);
            return true;
        }
        let wanted = desired_key(desired);
        if self
            .current
            .as_ref()
            .is_some_and(|c| (c.generation, c.name()) == wanted)
        {
            return true;
        }
        // The link already refuses older assignments; this keeps the
        // launcher safe on its own: generations never go back.
        if let Some(current) = self.current.as_ref().filter(|c| c.generation > wanted.0) {
            warn!(
                held = current.generation,
                offered = wanted.0,
                "ignoring a desired assignment older than the running generation"
            );
            self.desired = None;
            return true;
        }
        if live {
            let postmortem = desired.postmortem_generation;
            if !self.take_postmortem(postmortem) {
                self.begin_stop();
            }
            return true;
        }
        let desired = desired.clone();
        self.launch(desired);
        true
    }

    /// Before the ranks of a generation supd found hung are stopped: starts
    /// their stack dumps if py-spy is installed. True while they are being
    /// taken (the stop waits; each dump is bounded).
    fn take_postmortem(&mut self, hung_generation: u64) -> bool {
        if self.postmortem.is_some() {
            return true;
        }
        // Already being stopped (for an earlier assignment): too late.
        let Some(current) = self.current.as_ref().filter(|_| self.stopping.is_none()) else {
            return false;
        };
        let done = self
            .stack_dumps
            .as_ref()
            .is_some_and(|(g, _)| *g == current.generation);
        if hung_generation == 0 || hung_generation != current.generation || done {
            return false;
        }
        let Some(py_spy) = postmortem::find_py_spy(std::env::var_os("PATH").as_deref()) else {
            debug!(
                generation = current.generation,
                "no py-spy on PATH: the post-mortem has the log lines only"
            );
            return false;
        };
        let generation = current.generation;
        let ranks: Vec<(u32, nix::unistd::Pid)> =
            current.ranks.values().map(|r| (r.rank, r.pid)).collect();
        info!(generation, ranks = ranks.len(), py_spy = %py_spy.display(), "the generation hung: dumping the ranks' stacks before stopping them");
        let task = tokio::spawn(async move {
            postmortem::dump_stacks(&py_spy, &ranks, postmortem::DUMP_TIMEOUT).await
        });
        self.postmortem = Some((generation, task));
        true
    }

    /// Takes over the live ranks a previous agent left (see [`adopt`]): as
    /// the current generation when supd still wants it, otherwise only to
    /// stop them before anything new starts.
    fn adopt(&mut self, previous: adopt::StateFile, desired: &DesiredAssignment) {
        let mut ranks = BTreeMap::new();
        for record in previous.ranks.iter().filter(|r| adopt::alive(r)) {
            adopt::watch(record, previous.generation, self.exits_tx.clone());
            ranks.insert(
                record.local_rank,
                RankProcess {
                    rank: record.rank,
                    local_rank: record.local_rank,
                    pid: nix::unistd::Pid::from_raw(record.pid),
                    log_path: record.log_path.clone(),
                    stopping: false,
                },
            );
        }
        if ranks.is_empty() {
            info!(job = %previous.job, generation = previous.generation, "no rank of the previous agent is alive; nothing to re-adopt");
            adopt::remove(&self.settings.state_dir);
            return;
        }
        let wanted = desired_key(desired);
        let same = (previous.generation, previous.job.as_str()) == wanted;
        if same {
            info!(
                job = %previous.job,
                generation = previous.generation,
                ranks = ranks.len(),
                "re-adopted the ranks a previous agent left running"
            );
            self.fence.begin(Running {
                job: Some(previous.job.clone()),
                generation: previous.generation,
            });
            self.current = Some(Generation {
                generation: previous.generation,
                job: desired.job.clone(),
                ranks,
                launched: true,
                launch_error: String::new(),
            });
            self.follow_logs();
            self.publish_status();
        } else {
            warn!(
                job = %previous.job,
                generation = previous.generation,
                offered_generation = wanted.0,
                ranks = ranks.len(),
                "ranks a previous agent left running are not the desired generation; stopping them"
            );
            self.current = Some(Generation {
                generation: previous.generation,
                job: None,
                ranks,
                launched: true,
                launch_error: String::new(),
            });
            self.begin_stop();
        }
    }

    /// When the lease of the running ranks runs out, if they are bound by
    /// one and not already killed by it.
    fn lease_bound(&self) -> Option<Instant> {
        let current = self.current.as_ref()?;
        if current.ranks.is_empty() || current.job.is_none() {
            return None;
        }
        if self.lease_killed == Some(current.generation) {
            return None;
        }
        self.lease_end
    }

    /// No supervisor has acknowledged this node for the lease: supd may
    /// already be starting the job's next generation elsewhere, counting on
    /// these ranks being dead by now. SIGKILL, no grace period: a graceful
    /// stop would let them write a checkpoint into the directory the next
    /// generation is about to own.
    fn on_lease_end(&mut self) {
        let Some(end) = self.lease_bound() else {
            return;
        };
        if Instant::now() < end {
            return;
        }
        let Some(current) = self.current.as_mut() else {
            return;
        };
        error!(
            job = current.name(),
            generation = current.generation,
            ranks = current.ranks.len(),
            "no supervisor has acknowledged this node for its assignment lease; killing the ranks \
             (SIGKILL: the job may be restarting elsewhere)"
        );
        kill_generation(&self.settings, current);
        self.lease_killed = Some(current.generation);
        self.stopping = Some(Stopping {
            phase: Phase::Killing,
            deadline: Instant::now() + KILL_WAIT,
        });
        self.publish_rank_set();
    }

    /// SIGTERM to every rank of the current generation, once.
    fn begin_stop(&mut self) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        if self.stopping.is_some() {
            return;
        }
        let grace = match current.job.as_ref().map_or(0, |j| j.stop_grace_ms) {
            0 => DEFAULT_STOP_GRACE,
            ms => Duration::from_millis(u64::from(ms)),
        };
        info!(
            job = current.job.as_ref().map_or("", |j| j.job.as_str()),
            generation = current.generation,
            ranks = current.ranks.len(),
            grace = %humantime::format_duration(grace),
            "stopping ranks"
        );
        // A Slurm step's ranks share one srun: signal each process once.
        let mut signalled = std::collections::HashSet::new();
        for rank in current.ranks.values_mut() {
            rank.stopping = true;
            if !signalled.insert(rank.pid) {
                continue;
            }
            if let Err(e) = signal_group(rank.pid, Signal::SIGTERM) {
                warn!(rank = rank.rank, pid = %rank.pid, "cannot send SIGTERM: {e}");
            }
            // A stopped rank (a hang or slow drill, a debugger, `kill -STOP`)
            // would hold the SIGTERM pending for the whole grace period;
            // continued, it handles it now. As systemd does.
            if let Err(e) = signal_group(rank.pid, Signal::SIGCONT) {
                debug!(rank = rank.rank, pid = %rank.pid, "cannot send SIGCONT: {e}");
            }
        }
        self.stopping = Some(Stopping {
            phase: Phase::Terminating,
            deadline: Instant::now() + grace,
        });
        self.publish_rank_set();
    }

    fn on_deadline(&mut self) {
        let (Some(stopping), Some(current)) = (self.stopping.as_mut(), self.current.as_mut())
        else {
            self.stopping = None;
            return;
        };
        match stopping.phase {
            Phase::Terminating => {
                warn!(
                    generation = current.generation,
                    ranks = ?current.ranks.values().map(|r| r.rank).collect::<Vec<_>>(),
                    "ranks did not stop within the grace period; sending SIGKILL"
                );
                kill_generation(&self.settings, current);
                *stopping = Stopping {
                    phase: Phase::Killing,
                    deadline: Instant::now() + KILL_WAIT,
                };
            }
            Phase::Killing => {
                // Their exits, if they ever come, are about a generation
                // that is over and are ignored.
                error!(
                    generation = current.generation,
                    pids = ?current.ranks.values().map(|r| r.pid.as_raw()).collect::<Vec<_>>(),
                    "ranks still exist {} after SIGKILL (stuck in the kernel); no longer waiting for them",
                    humantime::format_duration(KILL_WAIT)
                );
                current.ranks.clear();
                self.stopping = None;
                self.publish_status();
            }
        }
    }

    /// Starts the ranks of `desired` (none when it holds no job).
    fn launch(&mut self, desired: DesiredAssignment) {
        self.stopping = None;
        let generation = desired.generation;
        // Before the first rank starts, so that its progress reports are
        // counted for this generation and nothing about an older one is
        // sent after this generation's status.
        self.fence.begin(Running {
            job: desired.job.as_ref().map(|j| j.job.clone()),
            generation,
        });
        let mut current = Generation {
            generation,
            job: desired.job,
            ranks: BTreeMap::new(),
            launched: false,
            launch_error: String::new(),
        };
        if let Some(job) = &current.job {
            match self.start_ranks(generation, job, &mut current.ranks) {
                Ok(()) => {
                    info!(job = %job.job, generation, ranks = current.ranks.len(), "ranks launched");
                    current.launched = true;
                }
                Err(e) => {
                    error!(job = %job.job, generation, "launch failed: {e}");
                    current.launch_error = e;
                }
            }
        } else {
            info!(generation, "assignment holds no job; running nothing");
        }
        let partial = !current.launch_error.is_empty() && !current.ranks.is_empty();
        self.current = Some(current);
        self.follow_logs();
        if partial {
            // Part of a world can never make progress; supd decides what
            // comes next from the launch error.
            self.begin_stop();
        }
        self.publish_status();
    }

    /// Follows the current generation's rank logs if its job has a
    /// `progress_regex` (and stops following the previous generation's).
    fn follow_logs(&mut self) {
        self.follower = None;
        let (Some(current), Some(intake)) = (self.current.as_ref(), self.intake.as_ref()) else {
            return;
        };
        let Some(job) = current
            .job
            .as_ref()
            .filter(|j| !j.progress_regex.is_empty())
        else {
            return;
        };
        let pattern = match sup_proto::progress_regex::ProgressPattern::new(&job.progress_regex) {
            Ok(pattern) => pattern,
            Err(e) => {
                // supd checks it at submission; a different version may not.
                warn!(job = %job.job, "ignoring the job's {e}");
                return;
            }
        };
        let logs = current
            .ranks
            .values()
            .map(|r| (r.rank, r.log_path.clone()))
            .collect();
        self.follower = Some(follow::Follower::start(
            pattern,
            &job.job,
            current.generation,
            logs,
            intake.clone(),
            self.fence.clone(),
        ));
    }

    fn start_ranks(
        &self,
        generation: u64,
        job: &JobAssignment,
        ranks: &mut BTreeMap<u32, RankProcess>,
    ) -> Result<(), String> {
        env::check_job(job)?;
        // Resolved on every launch: accounts change, and a node is judged
        // by what it has now.
        let user = identity::resolve(
            job,
            nix::unistd::geteuid().as_raw(),
            self.settings.allow_root_ranks,
        )?;
        if let Some(u) = &user {
            info!(job = %job.job, user = %u.name, uid = u.uid, gid = u.gid, groups = ?u.groups, "ranks run as the job's user");
        }
        let overridden = env::overridden_keys(job);
        if !overridden.is_empty() {
            warn!(job = %job.job, keys = ?overridden, "the job's env sets names the agent owns; the agent's values are used");
        }
        // Before this generation's directory exists, so that a job never has
        // more than the kept number on disk. Here on the loop rather than in
        // a task: a task still listing when the next launch creates its
        // directory could take that one for an old one.
        let pruned = logs::prune_generations(
            &self.settings.state_dir,
            &job.job,
            generation,
            self.settings.logs.generations,
        );
        if !pruned.is_empty() {
            info!(job = %job.job, generation, removed = ?pruned, keep = self.settings.logs.generations, "removed the rank logs of older generations");
        }
        let dir = logs::generation_dir(&self.settings.state_dir, &job.job, generation);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
        let node = NodeContext {
            node_id: &self.settings.node_id,
            progress_addr: self.progress_addr.as_deref(),
        };
        let mut specs = Vec::new();
        for local_rank in 0..job.ranks_per_node {
            let global =
                u64::from(job.node_rank) * u64::from(job.ranks_per_node) + u64::from(local_rank);
            // check_job bounds it by the u32 world size.
            let rank = u32::try_from(global)
                .map_err(|_| format!("rank {global} does not fit the wire format"))?;
            let mut rank_env = env::rank_env(node, generation, job, local_rank);
            if let Some(user) = &user {
                identity::add_user_env(&mut rank_env, user, &job.env);
            }
            specs.push(RankSpec {
                generation,
                rank,
                local_rank,
                command: &job.command,
                workdir: &job.workdir,
                env: rank_env,
                log_path: logs::rank_log(&self.settings.state_dir, &job.job, generation, rank),
                user: user.as_ref(),
            });
        }
        // Last, so that a launch refused for another reason moves nothing.
        self.set_aside_newer_checkpoints(generation, job)?;
        self.settings
            .launcher_for(job)
            .start(job, specs, &self.exits_tx, ranks)
    }

    /// Before the ranks of a generation that resumes from an older step
    /// start: moves the checkpoints newer than its resume point out of the
    /// way (see [`crate::set_aside`]). Node rank 0 only, the one party
    /// every rank waits for. A failure refuses the launch: the job would
    /// otherwise rewrite such a step in place over files that look
    /// complete; supd restarts it (a counted restart, so a lasting cause
    /// ends in `failed` with this message).
    fn set_aside_newer_checkpoints(
        &self,
        generation: u64,
        job: &JobAssignment,
    ) -> Result<(), String> {
        let Some(resume) = job.resume_from.as_ref() else {
            return Ok(());
        };
        if job.node_rank != 0 || job.set_aside_dir.is_empty() {
            return Ok(());
        }
        let outcome = self.catalogs.exclusive(|| {
            let outcome = crate::set_aside::set_aside(
                std::path::Path::new(&job.checkpoint_dir),
                &job.checkpoint_layout,
                resume,
                std::path::Path::new(&job.set_aside_dir),
            );
            let done = match &outcome {
                Ok(done) => done,
                Err(failed) => &failed.done,
            };
            if !done.entries.is_empty() {
                let report = crate::set_aside::report(&job.job, generation, resume.step, done);
                self.fence
                    .send_for(generation, AgentBody::CheckpointsSetAside(report));
            }
            outcome
        });
        match outcome {
            Ok(done) => {
                let moved = done.entries.iter().filter(|e| !e.earlier).count();
                if !done.entries.is_empty() {
                    info!(job = %job.job, generation, resume_step = resume.step, moved, earlier = done.entries.len() - moved, into = %job.set_aside_dir, "set aside the checkpoints newer than the resume point");
                }
                Ok(())
            }
            Err(failed) => Err(format!(
                "cannot set aside the checkpoints newer than the resume point (step {}) before launching, so the generation does not start: {}",
                resume.step, failed.error
            )),
        }
    }

    async fn on_exit(&mut self, exit: Exit) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let ours = current.generation == exit.generation
            && current
                .ranks
                .get(&exit.local_rank)
                .is_some_and(|r| r.pid == exit.pid);
        if !ours {
            debug!(generation = exit.generation, pid = %exit.pid, "exit of a rank no longer tracked");
            return;
        }
        let Some(rank) = current.ranks.remove(&exit.local_rank) else {
            return;
        };
        // Whatever the rank started must not outlive it.
        if let Err(e) = signal_group(rank.pid, Signal::SIGKILL) {
            debug!(pid = %rank.pid, "cannot clean up the rank's process group: {e}");
        }
        let generation = current.generation;
        let job = current.name().to_owned();
        let status = exit.describe();
        let lease_expired = self.lease_killed == Some(generation);
        if rank.stopping {
            info!(%job, generation, rank = rank.rank, %status, "rank stopped");
        } else {
            warn!(%job, generation, rank = rank.rank, %status, "rank exited");
        }
        if current.ranks.is_empty() {
            self.stopping = None;
        }

        // Scan first: supd, deciding what to do about this exit, should
        // already know a checkpoint written just before it. Not for a
        // stop: supd decided that one already, and every node scanning at
        // once is what one scanner per job avoids.
        let target = Target::of(self.current.as_ref().and_then(|c| c.job.as_ref()));
        if let (Some(target), false) = (target, rank.stopping) {
            self.catalogs.refresh_async(target).await;
        }

        let log_tail = logs::tail(&rank.log_path, EXIT_LOG_LINES, EXIT_LOG_BYTES)
            .unwrap_or_else(|e| format!("(cannot read {}: {e})\n", rank.log_path.display()));
        self.fence.send_for(
            generation,
            AgentBody::RankExited(RankExited {
                job,
                generation,
                rank: rank.rank,
                local_rank: rank.local_rank,
                exit_code: exit.exit_code(),
                signal: exit.signal(),
                log_tail,
                stopped_by_agent: rank.stopping && !lease_expired,
                lease_expired,
                stack_dump: self
                    .stack_dumps
                    .as_mut()
                    .filter(|(g, _)| *g == generation)
                    .and_then(|(_, dumps)| dumps.remove(&rank.rank))
                    .unwrap_or_default(),
            }),
        );
        self.publish_status();
    }

    /// Keeps `<state-dir>/ranks.json` in step with the live ranks, for the
    /// next agent to re-adopt them (see [`adopt`]).
    fn save_ranks(&self) {
        let Some(current) = self.current.as_ref().filter(|c| !c.ranks.is_empty()) else {
            adopt::remove(&self.settings.state_dir);
            return;
        };
        let state = adopt::StateFile {
            job: current.name().to_owned(),
            generation: current.generation,
            progress_port: self
                .progress_addr
                .as_deref()
                .and_then(|a| a.parse::<SocketAddr>().ok())
                .map(|a| a.port()),
            ranks: current
                .ranks
                .values()
                .filter_map(|r| {
                    Some(adopt::RankRecord {
                        rank: r.rank,
                        local_rank: r.local_rank,
                        pid: r.pid.as_raw(),
                        start_time: adopt::start_time(r.pid.as_raw())?,
                        log_path: r.log_path.clone(),
                    })
                })
                .collect(),
        };
        if let Err(e) = adopt::save(&self.settings.state_dir, &state) {
            warn!(
                "cannot write {}: {e}; a restarted agent could not re-adopt these ranks",
                adopt::path(&self.settings.state_dir).display()
            );
        }
    }

    fn answer_logs(&self, request: LogRequest) {
        let state_dir = self.settings.state_dir.clone();
        let fence = self.fence.clone();
        // File reads off the loop, which must keep up with signals.
        tokio::task::spawn_blocking(move || {
            let response = logs::answer(&state_dir, &request);
            fence.send(AgentBody::LogResponse(response));
        });
    }

    /// Publishes the live ranks for drills if they changed.
    fn publish_rank_set(&self) {
        let set = self
            .current
            .as_ref()
            .map_or_else(RankSet::default, |c| RankSet {
                job: c.name().to_owned(),
                generation: c.generation,
                stopping: self.stopping.is_some() || self.shutting_down,
                ranks: c.ranks.values().map(|r| (r.rank, r.pid)).collect(),
            });
        self.rank_set.send_if_modified(|old| {
            let changed = *old != set;
            *old = set;
            changed
        });
    }

    /// Sends the rank status if it changed.
    fn publish_status(&mut self) {
        self.publish_rank_set();
        let Some(current) = &self.current else {
            return;
        };
        self.log_paths
            .send_replace(current.ranks.values().map(|r| r.log_path.clone()).collect());
        let status = RankStatus {
            job: current.name().to_owned(),
            generation: current.generation,
            running_local_ranks: current.ranks.keys().copied().collect(),
            launched: current.launched,
            launch_error: current.launch_error.clone(),
        };
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        self.save_ranks();
        self.fence
            .send_for(status.generation, AgentBody::Ranks(status.clone()));
        self.last_status = Some(status);
    }
}
