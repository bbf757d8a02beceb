//! The job spec at supd's edge: the TOML text a client sends, parsed once
//! into the engine's [`JobSpec`] and checked — the engine's own rules plus
//! the ones that need the wire contract (the rank environment sup owns, the
//! progress pattern the agents compile). Every rejection names the field.

use sup_core::jobspec::JobSpec;

/// A spec larger than this is refused before it is parsed.
const MAX_SPEC_BYTES: usize = 64 * 1024;

/// Whether a job spec may not set `name`: the agent sets it for every rank,
/// or supd sets it itself (see `sup_proto::rank_env`).
fn reserved_env(name: &str) -> bool {
    sup_proto::rank_env::AGENT_SET.contains(&name)
        || sup_proto::rank_env::SUPERVISOR_SET.contains(&name)
}

/// Parses and checks a spec; the error names the field.
pub fn parse(text: &str) -> Result<JobSpec, String> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(format!("job spec is larger than {MAX_SPEC_BYTES} bytes"));
    }
    let spec: JobSpec =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
    spec.validate()?;
    if let Some(pattern) = &spec.progress_regex {
        sup_proto::progress_regex::ProgressPattern::new(pattern)?;
    }
    if let Some(key) = spec.env.keys().find(|k| reserved_env(k)) {
        return Err(format!(
            "env: {key} is set by sup for every rank and cannot be overridden"
        ));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_core::jobspec::StragglerPolicy;

    const GOOD: &str = r#"
name = "llm-7b"
command = ["python3", "train.py", "--config", "7b.yaml"]
workdir = "/srv/llm"
nodes = 4
min_nodes = 2
gpus_per_node = 8
world_size_multiple = 8
checkpoint_dir = "/mnt/ckpt/llm-7b"
checkpoint_layout = "dcp"
priority = "normal"
max_restarts = 20
[env]
NCCL_DEBUG = "WARN"
"#;

    fn err(text: &str) -> String {
        parse(text).expect_err("must be rejected")
    }

    #[test]
    fn the_documented_example_parses() {
        let spec = parse(GOOD).expect("valid");
        assert_eq!(spec.min_nodes(), 2);
        assert_eq!(spec.env.get("NCCL_DEBUG").map(String::as_str), Some("WARN"));
        assert_eq!(spec.best_node_count(3), Some(3));
        assert_eq!(spec.best_node_count(1), None);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert!(err(&GOOD.replace("nodes = 4", "nodes = 4\nbogus = 1")).contains("bogus"));
        assert!(err(&GOOD.replace("min_nodes = 2", "min_nodes = 5")).starts_with("min_nodes"));
        assert!(err(&GOOD.replace(
            "command = [\"python3\", \"train.py\", \"--config\", \"7b.yaml\"]",
            "command = []"
        ))
        .starts_with("command"));
        assert!(
            err(&GOOD.replace("\"/mnt/ckpt/llm-7b\"", "\"ckpt\"")).starts_with("checkpoint_dir")
        );
        assert!(err(&GOOD.replace("\"dcp\"", "\"zip\"")).starts_with("checkpoint_layout"));
        assert!(err(&GOOD.replace("NCCL_DEBUG", "RANK")).contains("RANK"));
        assert!(err(&GOOD.replace("NCCL_DEBUG", "SUP_GENERATION")).contains("SUP_GENERATION"));
        parse(&GOOD.replace("NCCL_DEBUG", "SUP_TRAINER_SEED"))
            .expect("other SUP_ names are the job's");
        assert!(err(&GOOD.replace("name = \"llm-7b\"", "name = \"bad name\"")).starts_with("name"));
        let missing = err(&GOOD.replace("checkpoint_dir = \"/mnt/ckpt/llm-7b\"\n", ""));
        assert!(missing.contains("checkpoint_dir"), "{missing}");
        let with = |extra: &str| GOOD.replace("nodes = 4", &format!("nodes = 4\n{extra}"));
        assert!(err(&with("model_params = -1.0")).starts_with("model_params"));
        assert!(err(&with("gpu_peak_flops = 0.0")).starts_with("gpu_peak_flops"));
        assert!(err(&with("loss_spike_factor = 0.5")).starts_with("loss_spike_factor"));
        assert!(err(&with("loss_spike_steps = 0")).starts_with("loss_spike_steps"));
        assert!(err(&with("straggler_policy = \"evict\"")).contains("straggler_policy"));
        assert!(err(&GOOD.replace("NCCL_DEBUG", "SUP_SEED")).contains("SUP_SEED"));
        for bad in [
            r#"progress_regex = 'step (?P<step>\d+'"#,
            r#"progress_regex = 'step (\d+)'"#,
            r#"progress_regex = ''"#,
        ] {
            let why = err(&with(bad));
            assert!(why.starts_with("progress_regex: "), "{bad}: {why}");
        }
    }

    #[test]
    fn a_progress_regex_parses_and_travels_as_written() {
        let pattern = r"^step (?P<step>\d+)/\d+ loss (?P<loss>\S+) tokens (?P<tokens>\d+)";
        let spec = parse(&GOOD.replace(
            "nodes = 4",
            &format!("nodes = 4\nprogress_regex = '{pattern}'"),
        ))
        .expect("valid");
        assert_eq!(spec.progress_regex.as_deref(), Some(pattern));
        assert_eq!(parse(GOOD).expect("valid").progress_regex, None);
    }

    #[test]
    fn user_and_group_parse_and_bad_ones_are_named() {
        let spec =
            parse(&GOOD.replace("nodes = 4", "nodes = 4\nuser = \"trainer\"\ngroup = \"ml\""))
                .expect("valid");
        assert_eq!(
            (spec.user.as_deref(), spec.group.as_deref()),
            (Some("trainer"), Some("ml"))
        );
        let plain = parse(GOOD).expect("valid");
        assert_eq!((plain.user, plain.group), (None, None));
        let with = |extra: &str| GOOD.replace("nodes = 4", &format!("nodes = 4\n{extra}"));
        assert!(err(&with("user = \"a b\"")).starts_with("user: 'a b'"));
        assert!(err(&with("user = \"x\"\ngroup = \"-g\"")).starts_with("group: '-g'"));
        assert!(err(&with("group = \"ml\"")).starts_with("group: needs user"));
        assert!(
            err(&with("user = 1000")).contains("user"),
            "a string, not a number"
        );
    }

    #[test]
    fn detection_fields_parse() {
        let spec = parse(&GOOD.replace(
            "nodes = 4",
            "nodes = 4\nmodel_params = 7e9\ngpu_peak_flops = 989e12\nstraggler_policy = \"replace_at_checkpoint\"\n\
             loss_spike_rollback = true\nloss_spike_factor = 2.5\nloss_spike_steps = 4\nmax_rollbacks = 1\nrollback_lr_scale = 0.25",
        ))
        .expect("valid");
        assert_eq!(spec.model_params, Some(7e9));
        assert_eq!(
            spec.straggler_policy,
            Some(StragglerPolicy::ReplaceAtCheckpoint)
        );
        assert!(spec.loss_spike_rollback);
        assert_eq!(
            (
                spec.loss_spike_factor(),
                spec.loss_spike_steps(),
                spec.max_rollbacks()
            ),
            (2.5, 4, 1)
        );
        assert_eq!(spec.lr_scale_after(2), 0.0625);
        let plain = parse(GOOD).expect("valid");
        assert!(!plain.loss_spike_rollback && plain.straggler_policy.is_none());
        assert_eq!(plain.lr_scale_after(1), 0.5);
    }

    #[test]
    fn a_world_size_that_can_never_be_valid_is_rejected() {
        let text = GOOD
            .replace("gpus_per_node = 8", "gpus_per_node = 2")
            .replace("world_size_multiple = 8", "world_size_multiple = 16");
        let e = err(&text);
        assert!(e.starts_with("world_size_multiple"), "{e}");
        assert!(e.contains("4, 6, 8"), "{e}");
    }

    #[test]
    fn shrinking_respects_the_multiple() {
        let spec = parse(&GOOD.replace("gpus_per_node = 8", "gpus_per_node = 4")).expect("valid");
        // 4 GPUs per node, multiple of 8: only even node counts.
        assert_eq!(spec.best_node_count(4), Some(4));
        assert_eq!(spec.best_node_count(3), Some(2));
        assert_eq!(spec.best_node_count(1), None);
    }
}
