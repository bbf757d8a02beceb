//! Who a job's ranks run as: the job spec's `user` (and `group`), resolved
//! on this node when the ranks start, and the refusal to run them as root
//! unless the agent is configured to allow it.
//!
//! The agent usually runs as root (it needs the GPUs' recovery actions and
//! the kernel log). Ranks that inherited that would give every job author
//! root on every node, so a job names its account and the agent switches to
//! it; a job that names none runs as the agent's own user, which a root
//! agent only allows with `allow_root_ranks`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User};
use sup_proto::v1::JobAssignment;

/// The account a job's ranks run as on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the user's, as `initgroups` would set them,
    /// plus `gid`.
    pub groups: Vec<u32>,
    pub home: String,
    /// The agent must change identity to start the ranks (it is root and
    /// the user is not the agent's own).
    pub switch: bool,
}

/// Longer names than this are no account on any system (the job spec
/// allows 32; the wire may come from another version).
const MAX_NAME: usize = 256;

/// The decision on whose identity ranks may run with, given what the job
/// asks for (`requested`: the user's name and uid, `None` when the job
/// names no user) and what the agent is. The error says why and what to
/// change.
pub fn check_identity(
    job: &str,
    requested: Option<(&str, u32)>,
    agent_euid: u32,
    allow_root_ranks: bool,
) -> Result<(), String> {
    match requested {
        None if agent_euid == 0 && !allow_root_ranks => Err(format!(
            "job {job}: refusing to run its ranks as root: the job sets no `user` and this agent \
             does not allow root ranks (allow_root_ranks = false); set `user` in the job spec"
        )),
        Some((name, 0)) if !allow_root_ranks => Err(format!(
            "job {job}: refusing to run its ranks as user {name:?}: that is uid 0 (root) and this \
             agent does not allow root ranks (allow_root_ranks = false)"
        )),
        Some((name, uid)) if agent_euid != 0 && uid != agent_euid => Err(format!(
            "job {job}: cannot run its ranks as user {name:?} (uid {uid}): the agent runs as uid \
             {agent_euid}, not root, and can only start them as itself"
        )),
        _ => Ok(()),
    }
}

/// Resolves the job's `user`/`group` on this node and applies
/// [`check_identity`]. `None`: the ranks run as the agent's own user.
pub fn resolve(
    job: &JobAssignment,
    agent_euid: u32,
    allow_root_ranks: bool,
) -> Result<Option<RankUser>, String> {
    let name = &job.job;
    if job.user.is_empty() {
        if !job.group.is_empty() {
            return Err(format!(
                "job {name}: group {:?} is set without a user",
                job.group
            ));
        }
        check_identity(name, None, agent_euid, allow_root_ranks)?;
        return Ok(None);
    }
    let user = lookup_user(name, &job.user)?;
    check_identity(
        name,
        Some((&job.user, user.uid.as_raw())),
        agent_euid,
        allow_root_ranks,
    )?;
    let gid = if job.group.is_empty() {
        user.gid
    } else {
        lookup_group(name, &job.group)?
    };
    let groups = supplementary_groups(name, &user, gid)?;
    let uid = user.uid.as_raw();
    Ok(Some(RankUser {
        name: user.name,
        uid,
        gid: gid.as_raw(),
        groups,
        home: user.dir.to_string_lossy().into_owned(),
        switch: uid != agent_euid,
    }))
}

/// HOME, USER and LOGNAME of the user, under what the job's own `env` sets
/// (a job may point HOME elsewhere) and over what the agent's environment
/// would pass on (the agent's HOME is /root).
pub fn add_user_env(
    env: &mut BTreeMap<String, String>,
    user: &RankUser,
    job_env: &HashMap<String, String>,
) {
    for (key, value) in [
        ("HOME", &user.home),
        ("USER", &user.name),
        ("LOGNAME", &user.name),
    ] {
        if !job_env.contains_key(key) {
            env.insert(key.to_owned(), value.clone());
        }
    }
}

fn check_name(job: &str, what: &str, name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME || name.contains('\0') {
        return Err(format!(
            "job {job}: {what} {:?} is not a valid account name",
            name.chars().take(64).collect::<String>()
        ));
    }
    Ok(())
}

/// By name, or by uid when it is all digits (a name cannot be: useradd
/// refuses it).
fn lookup_user(job: &str, user: &str) -> Result<User, String> {
    check_name(job, "user", user)?;
    let found = match numeric(user) {
        Some(uid) => User::from_uid(Uid::from_raw(uid)),
        None => User::from_name(user),
    };
    match found {
        Ok(Some(u)) => Ok(u),
        Ok(None) => Err(format!(
            "job {job}: unknown user {user:?} on this node (no passwd entry)"
        )),
        Err(e) => Err(format!("job {job}: cannot look up user {user:?}: {e}")),
    }
}

fn lookup_group(job: &str, group: &str) -> Result<Gid, String> {
    check_name(job, "group", group)?;
    let found = match numeric(group) {
        Some(gid) => Group::from_gid(Gid::from_raw(gid)),
        None => Group::from_name(group),
    };
    match found {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(format!(
            "job {job}: unknown group {group:?} on this node (no group entry)"
        )),
        Err(e) => Err(format!("job {job}: cannot look up group {group:?}: {e}")),
    }
}

fn numeric(name: &str) -> Option<u32> {
    name.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| name.parse().ok())
        .flatten()
}

/// The groups `initgroups(user, gid)` would set, computed here in the
/// agent: between fork and exec only the `setgroups` system call is safe.
fn supplementary_groups(job: &str, user: &User, gid: Gid) -> Result<Vec<u32>, String> {
    let name = CString::new(user.name.as_str())
        .map_err(|_| format!("job {job}: user name {:?} contains a NUL byte", user.name))?;
    let groups = nix::unistd::getgrouplist(&name, gid).map_err(|e| {
        format!(
            "job {job}: cannot list the groups of user {:?}: {e}",
            user.name
        )
    })?;
    Ok(groups.into_iter().map(Gid::as_raw).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(user: &str, group: &str) -> JobAssignment {
        JobAssignment {
            job: "llm".into(),
            user: user.into(),
            group: group.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_root_agent_refuses_root_ranks_unless_allowed() {
        let no_user = check_identity("llm", None, 0, false).expect_err("refused");
        assert!(
            no_user.contains("refusing to run its ranks as root")
                && no_user.contains("sets no `user`")
                && no_user.contains("allow_root_ranks = false"),
            "{no_user}"
        );
        let root = check_identity("llm", Some(("root", 0)), 0, false).expect_err("refused");
        assert!(
            root.contains("user \"root\"") && root.contains("uid 0"),
            "{root}"
        );
        let zero = check_identity("llm", Some(("0", 0)), 0, false).expect_err("refused");
        assert!(zero.contains("uid 0 (root)"), "{zero}");
        check_identity("llm", None, 0, true).expect("allowed");
        check_identity("llm", Some(("root", 0)), 0, true).expect("allowed");
        check_identity("llm", Some(("nobody", 65534)), 0, false).expect("not root");
    }

    #[test]
    fn an_unprivileged_agent_runs_ranks_as_itself_only() {
        // No root involved: the setting does not matter.
        check_identity("llm", None, 1000, false).expect("as the agent");
        check_identity("llm", Some(("me", 1000)), 1000, false).expect("as the agent");
        let other = check_identity("llm", Some(("nobody", 65534)), 1000, true).expect_err("no");
        assert!(
            other.contains("user \"nobody\"") && other.contains("runs as uid 1000, not root"),
            "{other}"
        );
    }

    #[test]
    fn users_resolve_by_name_or_uid_and_unknown_ones_are_named() {
        // Every Linux system has root; the unknown name is one no system has.
        let agent = nix::unistd::geteuid().as_raw();
        if agent == 0 {
            let root = resolve(&job("root", ""), 0, true)
                .expect("root resolves")
                .expect("a user");
            assert_eq!((root.uid, root.gid, root.switch), (0, 0, false));
            assert!(root.groups.contains(&0), "{root:?}");
            let by_uid = resolve(&job("0", "0"), 0, true)
                .expect("uid 0")
                .expect("a user");
            assert_eq!(by_uid.name, "root");
        }
        let e = resolve(&job("no-such-user-sup", ""), agent, true).expect_err("unknown");
        assert!(e.contains("unknown user \"no-such-user-sup\""), "{e}");
        let e = resolve(&job("root", "no-such-group-sup"), 0, true).expect_err("unknown");
        assert!(e.contains("unknown group \"no-such-group-sup\""), "{e}");
        let e = resolve(&job("", "video"), 0, true).expect_err("group alone");
        assert!(e.contains("without a user"), "{e}");
        assert_eq!(resolve(&job("", ""), 0, true), Ok(None));
        let e = resolve(&job("", ""), 0, false).expect_err("root refused");
        assert!(e.contains("allow_root_ranks"), "{e}");
    }

    #[test]
    fn the_users_identity_variables_yield_to_the_jobs_env() {
        let user = RankUser {
            name: "alice".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: "/home/alice".into(),
            switch: true,
        };
        // As rank_env leaves it: the job's env already in.
        let mut env = BTreeMap::from([("HOME".to_owned(), "/scratch".to_owned())]);
        let job_env = HashMap::from([("HOME".to_owned(), "/scratch".to_owned())]);
        add_user_env(&mut env, &user, &job_env);
        assert_eq!(env.get("USER").map(String::as_str), Some("alice"));
        assert_eq!(env.get("LOGNAME").map(String::as_str), Some("alice"));
        assert_eq!(env.get("HOME").map(String::as_str), Some("/scratch"));
        let mut env = BTreeMap::new();
        add_user_env(&mut env, &user, &HashMap::new());
        assert_eq!(env.get("HOME").map(String::as_str), Some("/home/alice"));
    }
}
