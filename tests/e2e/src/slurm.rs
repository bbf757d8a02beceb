//! A real Slurm for a test: one slurmctld and a slurmd per node name, all on
//! this machine as root (Debian's slurm-wlm), on free loopback ports, with
//! their own state dirs and a generated slurm.conf under the test's
//! directory. Every process it starts is killed when it is dropped (also
//! when the test fails). munged is shared: started once if not running
//! (it is stateless; its key comes with the munge package).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, wait_for, Proc};

pub struct SlurmCluster {
    pub conf: PathBuf,
    pub dir: PathBuf,
    pub nodes: Vec<String>,
    ctld: Option<Proc>,
    ctld_starts: usize,
    slurmds: Vec<Proc>,
}

/// Starts munged unless one answers already.
fn ensure_munged() -> Result<()> {
    let works = || {
        Command::new("sh")
            .args(["-c", "munge -n | unmunge >/dev/null 2>&1"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    if !Path::new("/etc/munge/munge.key").exists() {
        bail!("/etc/munge/munge.key is missing (apt-get install munge creates it)");
    }
    // munged needs its socket dir, owned by munge, before it starts.
    std::fs::create_dir_all("/run/munge")?;
    let status = Command::new("chown")
        .args(["munge:munge", "/run/munge"])
        .status()?;
    if !status.success() {
        bail!("chown munge:munge /run/munge failed");
    }
    // Daemonizes; --force: a stale socket from a killed one is fine.
    let out = Command::new("runuser")
        .args(["-u", "munge", "--", "munged", "--force"])
        .output()
        .context("starting munged (apt-get install munge)")?;
    if !out.status.success() && !works() {
        bail!("munged: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_for("munged", Duration::from_secs(10), || {
        Ok(works().then_some(()))
    })
}

impl SlurmCluster {
    /// slurmctld and one slurmd per name; returns once every node is idle.
    pub fn start(work: &Path, nodes: &[&str]) -> Result<SlurmCluster> {
        ensure_munged()?;
        let dir = work.join("slurm");
        std::fs::create_dir_all(dir.join("ctld"))?;
        let ctld_port = free_port()?;
        let mut node_lines = String::new();
        for name in nodes {
            std::fs::create_dir_all(dir.join(name))?;
            let port = free_port()?;
            node_lines.push_str(&format!(
                "NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} CPUs=1 State=UNKNOWN\n"
            ));
        }
        let d = dir.display();
        let conf_text = format!(
            "ClusterName=suptest\n\
             SlurmctldHost=localhost(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\n\
             StateSaveLocation={d}/ctld\n\
             SlurmdSpoolDir={d}/%n\n\
             SlurmctldPidFile={d}/ctld/slurmctld.pid\n\
             SlurmdPidFile={d}/%n/slurmd.pid\n\
             ProctrackType=proctrack/pgid\nTaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n\
             MpiDefault=none\nReturnToService=2\nSlurmdTimeout=30\n\
             {node_lines}\
             PartitionName=main Nodes={} Default=YES MaxTime=INFINITE State=UP\n",
            nodes.join(",")
        );
        let conf = dir.join("slurm.conf");
        std::fs::write(&conf, conf_text)?;
        let mut cluster = SlurmCluster {
            conf,
            dir,
            nodes: nodes.iter().map(|n| (*n).to_owned()).collect(),
            ctld: None,
            ctld_starts: 0,
            slurmds: Vec::new(),
        };
        cluster.start_ctld()?;
        for name in nodes {
            let mut cmd = Command::new("slurmd");
            cmd.args(["-D", "-N", name, "-f"])
                .arg(&cluster.conf)
                .env("SLURM_CONF", &cluster.conf);
            cluster
                .slurmds
                .push(Proc::spawn(&format!("slurmd-{name}"), cmd, &cluster.dir)?);
        }
        wait_for("every Slurm node idle", Duration::from_secs(30), || {
            let states = cluster.sinfo(&["-h", "-N", "-o", "%N %T"])?;
            let idle = states.lines().filter(|l| l.ends_with(" idle")).count();
            Ok((idle == nodes.len()).then_some(()))
        })?;
        Ok(cluster)
    }

    /// (Re)starts slurmctld, recovering its saved state.
    pub fn start_ctld(&mut self) -> Result<()> {
        self.ctld_starts += 1;
        let mut cmd = Command::new("slurmctld");
        cmd.args(["-D", "-i", "-f"])
            .arg(&self.conf)
            .env("SLURM_CONF", &self.conf);
        self.ctld = Some(Proc::spawn(
            &format!("slurmctld-{}", self.ctld_starts),
            cmd,
            &self.dir,
        )?);
        wait_for("slurmctld to answer", Duration::from_secs(20), || {
            Ok(self.sinfo(&["-h", "-N", "-o", "%N"]).ok().map(|_| ()))
        })
    }

    /// Kills slurmctld (slurmds keep running, as in a controller outage).
    pub fn stop_ctld(&mut self) -> Result<()> {
        match self.ctld.take() {
            Some(mut p) => p.kill(),
            None => Ok(()),
        }
    }

    /// The current slurmctld's log.
    pub fn ctld_log(&self) -> String {
        self.ctld.as_ref().map(Proc::log_text).unwrap_or_default()
    }

    fn command(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Any Slurm client command (squeue, sbatch, ...) against this cluster.
    pub fn command_out(&self, program: &str, args: &[&str]) -> Result<String> {
        self.command(program, args)
    }

    pub fn sinfo(&self, args: &[&str]) -> Result<String> {
        self.command("sinfo", args)
    }

    pub fn scontrol(&self, args: &[&str]) -> Result<String> {
        self.command("scontrol", args)
    }

    /// `sinfo -R`'s line for `node` as (reason, state) when it has one.
    pub fn reason_of(&self, node: &str) -> Result<Option<(String, String)>> {
        let out = self.sinfo(&["-R", "-h", "-n", node, "-o", "%E|%T"])?;
        Ok(out.lines().next().and_then(|l| {
            let (reason, state) = l.rsplit_once('|')?;
            Some((reason.to_owned(), state.to_owned()))
        }))
    }

    /// `sinfo -N`'s state of `node` (idle, drained, ...).
    pub fn state_of(&self, node: &str) -> Result<String> {
        Ok(self
            .sinfo(&["-h", "-N", "-n", node, "-o", "%T"])?
            .trim()
            .to_owned())
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        // slurmds first: a slurmctld going away first makes them retry.
        self.slurmds.clear();
        let _ = self.stop_ctld();
    }
}

/// A local account for a test's batch job, so the ranks it starts run as
/// someone other than root, as a real user's would. Created if missing and
/// removed again when dropped (only if this guard created it); drop it after
/// every process of the user has ended.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    created: bool,
}

impl TestUser {
    pub fn ensure(name: &str) -> Result<TestUser> {
        let lookup = |name: &str| -> Result<Option<(u32, u32)>> {
            let out = Command::new("id")
                .arg(name)
                .output()
                .context("running id")?;
            if !out.status.success() {
                return Ok(None);
            }
            let ids = |flag: &str| -> Result<u32> {
                let out = Command::new("id").args([flag, name]).output()?;
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .with_context(|| format!("id {flag} {name}"))
            };
            Ok(Some((ids("-u")?, ids("-g")?)))
        };
        let mut created = false;
        if lookup(name)?.is_none() {
            let out = Command::new("useradd")
                .args(["--system", "--no-create-home", "--user-group"])
                .args(["--shell", "/usr/sbin/nologin", name])
                .output()
                .context("running useradd")?;
            if !out.status.success() {
                bail!("useradd {name}: {}", String::from_utf8_lossy(&out.stderr));
            }
            created = true;
        }
        let (uid, gid) = lookup(name)?.with_context(|| format!("user {name} after useradd"))?;
        Ok(TestUser {
            name: name.to_owned(),
            uid,
            gid,
            created,
        })
    }

    /// `dir`, created and owned by this user.
    pub fn own_dir(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::os::unix::fs::chown(dir, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to {}", dir.display(), self.name))
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("userdel").arg(&self.name).output();
        }
    }
}

impl SlurmCluster {
    /// A Slurm client command run as `user` (as that user would type it).
    pub fn command_as(&self, user: &TestUser, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("runuser")
            .args(["-u", &user.name, "--", program])
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .with_context(|| format!("running {program} as {}", user.name))?;
        if !out.status.success() {
            bail!(
                "{program} {} (as {}): {}",
                args.join(" "),
                user.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
