//! `supd export --to FILE` and `supd import --from FILE`: the durable state
//! (registry, cordons, jobs and their generations, the breaker, the event
//! log, applied request ids, the generation counter) as one JSON document,
//! and back into an empty store of either backend. Also how a cluster moves
//! from sled to etcd: export with `backend = "sled"`, import with `"etcd"`.
//!
//! An export is one consistent read: sled is opened exclusively (a running
//! supd holds it, so stop it first), etcd is read at one revision (a running
//! supd may keep writing; the file is the state as of that revision).
//! An import writes only into a store that holds nothing yet, so it can
//! never mix two clusters' states or overwrite one; it writes in batches of
//! at most [`IMPORT_BATCH`] changes (etcd bounds a transaction), so an
//! import that fails part way leaves a partial store: empty it and import
//! again. Telemetry is not state and is not exported.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sup_core::{Change, Persisted};

use crate::config::{Config, StoreBackend};
use crate::store::{self, Store};

/// The `format` field of every export.
pub const FORMAT: &str = "sup-state";
/// The layout version this supd writes and reads.
pub const VERSION: u32 = 1;
/// Changes per store commit during an import.
pub const IMPORT_BATCH: usize = 500;

/// The file: a header, then the state's fields (`Persisted`) inline.
#[derive(Debug, Serialize, Deserialize)]
pub struct Backup {
    pub format: String,
    pub version: u32,
    pub exported_at_unix_ms: i64,
    /// Where it was read from (`store::describe`).
    pub source: String,
    #[serde(flatten)]
    pub state: Persisted,
}

impl Backup {
    fn counts(&self) -> String {
        let s = &self.state;
        format!(
            "{} node(s), {} job(s), {} event(s), {} request id(s){}",
            s.nodes.len(),
            s.jobs.len(),
            s.events.len(),
            s.requests.len(),
            s.last_generation
                .map(|g| format!(", generation counter {g}"))
                .unwrap_or_default()
        )
    }
}

/// Opens the configured store, refusing to create a sled store where there
/// is none (an export of nothing would hide a wrong `--data-dir`).
fn open_existing(config: &Config) -> anyhow::Result<Box<dyn Store>> {
    if config.store.backend == StoreBackend::Sled {
        let marker = config.data_dir.join(store::INITIALIZED_MARKER);
        if !marker.exists() {
            bail!(
                "no sup state in {} ({} is missing): check --data-dir or the config's data_dir",
                config.data_dir.display(),
                marker.display()
            );
        }
    }
    open(config)
}

fn open(config: &Config) -> anyhow::Result<Box<dyn Store>> {
    store::open(config).with_context(|| {
        let hint = match config.store.backend {
            StoreBackend::Sled => " (a running supd holds a sled store: stop it first)",
            StoreBackend::Etcd => "",
        };
        format!("cannot open {}{hint}", store::describe(config))
    })
}

/// Writes the configured store's state to `to` (created with mode 0600,
/// written whole to a temporary file and renamed, never truncated in
/// place). Returns a one-line summary.
pub fn export(config: &Config, to: &Path, now_unix_ms: i64) -> anyhow::Result<String> {
    let store = open_existing(config)?;
    let source = store::describe(config);
    let state = store
        .load()
        .with_context(|| format!("cannot read {source}"))?;
    // Most likely a wrong --data-dir or etcd_prefix: a file of nothing
    // would pass for a backup.
    if is_empty(&state) {
        bail!("{source} holds no state (no node, job or event): nothing exported; check the data dir or the etcd prefix");
    }
    let backup = Backup {
        format: FORMAT.to_owned(),
        version: VERSION,
        exported_at_unix_ms: now_unix_ms,
        source: source.clone(),
        state,
    };
    let json = serde_json::to_vec_pretty(&backup).context("cannot encode the state")?;
    write_new(to, &json)?;
    Ok(format!(
        "exported {} from {source} to {}",
        backup.counts(),
        to.display()
    ))
}

fn write_new(to: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = to
        .file_name()
        .with_context(|| format!("{} names no file", to.display()))?;
    let tmp = to.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, to)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", to.display()));
    }
    Ok(())
}

/// Reads and checks an export.
pub fn read(from: &Path) -> anyhow::Result<Backup> {
    let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    let backup: Backup = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a sup state export", from.display()))?;
    if backup.format != FORMAT {
        bail!(
            "{} has format '{}', not '{FORMAT}'",
            from.display(),
            backup.format
        );
    }
    if backup.version != VERSION {
        bail!(
            "{} is a version {} export; this supd reads version {VERSION}",
            from.display(),
            backup.version
        );
    }
    check(&backup.state).with_context(|| format!("{} is inconsistent", from.display()))?;
    Ok(backup)
}

/// What the engine would trip over at startup, named before anything is
/// written.
fn check(b: &Persisted) -> anyhow::Result<()> {
    let mut ids = std::collections::HashSet::new();
    for n in &b.nodes {
        if !ids.insert(n.id.as_str()) {
            bail!("node '{}' appears twice", n.id);
        }
    }
    let mut names = std::collections::HashSet::new();
    for j in &b.jobs {
        if !names.insert(j.spec.name.as_str()) {
            bail!("job '{}' appears twice", j.spec.name);
        }
    }
    if let Some(w) = b.events.windows(2).find(|w| w[0].seq >= w[1].seq) {
        bail!(
            "events are not in increasing sequence order (seq {} before {})",
            w[0].seq,
            w[1].seq
        );
    }
    let newest_job_generation = b.jobs.iter().map(|j| j.generation).max().unwrap_or(0);
    if let Some(g) = b.last_generation {
        if g < newest_job_generation {
            bail!("the generation counter ({g}) is behind a job's generation ({newest_job_generation})");
        }
    }
    Ok(())
}

fn is_empty(p: &Persisted) -> bool {
    p.nodes.is_empty()
        && p.events.is_empty()
        && p.jobs.is_empty()
        && p.breaker.is_none()
        && p.requests.is_empty()
        && p.last_generation.is_none()
}

/// Writes the export in `from` into the configured store, which must hold
/// nothing yet. Returns a one-line summary.
pub fn import(config: &Config, from: &Path) -> anyhow::Result<String> {
    let backup = read(from)?;
    let target = store::describe(config);
    let mut store = open(config)?;
    let present = store
        .load()
        .with_context(|| format!("cannot read {target}"))?;
    if !is_empty(&present) {
        bail!(
            "{target} already holds state ({} node(s), {} job(s), {} event(s)); an import only fills an empty store, so nothing was written. Export it first if it matters, then empty it (sled: a new data dir; etcd: another prefix, or `etcdctl del --prefix`)",
            present.nodes.len(),
            present.jobs.len(),
            present.events.len()
        );
    }
    let summary = backup.counts();
    let backup = backup.state;
    let mut changes: Vec<Change> = Vec::new();
    // The counter first: a job never names a generation the store's
    // counter has not reached, even part way through.
    if let Some(g) = backup.last_generation {
        changes.push(Change::PutLastGeneration(g));
    }
    if let Some(b) = backup.breaker {
        changes.push(Change::PutBreaker(b));
    }
    changes.extend(backup.nodes.into_iter().map(Change::PutNode));
    changes.extend(backup.jobs.into_iter().map(|j| Change::PutJob(Box::new(j))));
    changes.extend(backup.requests.into_iter().map(Change::RememberRequest));
    changes.extend(backup.events.into_iter().map(Change::AppendEvent));
    for (i, batch) in changes.chunks(IMPORT_BATCH).enumerate() {
        store.commit(batch).with_context(|| {
            format!(
                "writing {target} failed after {} of {} change(s): it now holds part of the export; empty it and import again",
                i * IMPORT_BATCH,
                changes.len()
            )
        })?;
    }
    Ok(format!(
        "imported {summary} from {} into {target}",
        from.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn sled_config(dir: &Path) -> Config {
        Config::load(
            None,
            crate::config::Overrides {
                data_dir: Some(dir.to_owned()),
                plaintext: true,
                ..Default::default()
            },
        )
        .expect("the default config")
    }

    /// Every kind of record, as the engine writes them.
    pub(super) fn fill(store: &mut impl Store) -> Persisted {
        use crate::store::contract::{event, job, record, request};
        store
            .commit(&[
                Change::PutNode(record("n1")),
                Change::PutNode(record("n2")),
                Change::PutJob(Box::new(job("llm"))),
                Change::RememberRequest(request("req-1", 10)),
                Change::AppendEvent(event(1)),
                Change::AppendEvent(event(2)),
                Change::PutLastGeneration(7),
                Change::PutBreaker(sup_core::BreakerRecord {
                    open: true,
                    reason: "4 automatic cordons".into(),
                    since: 9,
                    recent_cordons: vec![5, 7],
                    held_back: [("n2".to_owned(), "Xid 79".to_owned())].into(),
                }),
            ])
            .expect("commit");
        store.load().expect("load")
    }

    #[test]
    fn sled_export_then_import_into_a_new_store_is_the_same_state_and_a_second_import_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (from, to) = (tmp.path().join("a"), tmp.path().join("b"));
        let original = {
            let mut store = store::SledStore::open(&from).expect("open");
            fill(&mut store)
        };
        let file = tmp.path().join("state.json");
        let said = export(&sled_config(&from), &file, 1_000).expect("export");
        assert!(said.contains("2 node(s), 1 job(s), 2 event(s)"), "{said}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the state is not for everyone to read");

        import(&sled_config(&to), &file).expect("import");
        let imported = store::SledStore::open(&to)
            .expect("open")
            .load()
            .expect("load");
        assert_eq!(imported, original);

        let err = format!(
            "{:#}",
            import(&sled_config(&to), &file).expect_err("not empty")
        );
        assert!(err.contains("already holds state (2 node(s)"), "{err}");
        let again = store::SledStore::open(&to)
            .expect("open")
            .load()
            .expect("load");
        assert_eq!(again, original, "a refused import writes nothing");
    }

    #[test]
    fn an_inconsistent_export_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().expect("tmp");
        let from = tmp.path().join("a");
        {
            let mut store = store::SledStore::open(&from).expect("open");
            fill(&mut store);
        }
        let file = tmp.path().join("state.json");
        export(&sled_config(&from), &file, 1).expect("export");
        let mut doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
        doc["last_generation"] = 0.into();
        doc["jobs"][0]["generation"] = 3.into();
        std::fs::write(&file, doc.to_string()).expect("write");
        let to = tmp.path().join("b");
        let err = format!(
            "{:#}",
            import(&sled_config(&to), &file).expect_err("behind")
        );
        assert!(err.contains("generation counter (0) is behind"), "{err}");
        assert!(
            !to.join(store::INITIALIZED_MARKER).exists(),
            "nothing opened"
        );
    }

    #[test]
    fn an_export_of_a_missing_store_names_the_directory_and_creates_nothing() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("nothing-here");
        let err = export(&sled_config(&dir), &tmp.path().join("out.json"), 0)
            .expect_err("no store")
            .to_string();
        assert!(err.contains("no sup state in"), "{err}");
        assert!(!dir.exists(), "export must not create a store");
        assert!(!tmp.path().join("out.json").exists());
    }

    #[test]
    fn an_empty_store_is_not_exported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("fresh");
        drop(store::SledStore::open(&dir).expect("a fresh store"));
        let out = tmp.path().join("out.json");
        let err = format!(
            "{:#}",
            export(&sled_config(&dir), &out, 0).expect_err("empty")
        );
        assert!(err.contains("holds no state"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_file_that_is_no_export_is_refused_by_name() {
        let tmp = tempfile::tempdir().expect("tmp");
        let f = tmp.path().join("x.json");
        std::fs::write(&f, br#"{"hello": 1}"#).expect("write");
        let err = format!("{:#}", read(&f).expect_err("not an export"));
        assert!(err.contains("is not a sup state export"), "{err}");

        let mut wrong = serde_json::to_value(Backup {
            format: FORMAT.into(),
            version: VERSION + 1,
            exported_at_unix_ms: 0,
            source: String::new(),
            state: Persisted::default(),
        })
        .expect("json");
        std::fs::write(&f, wrong.to_string()).expect("write");
        let err = format!("{:#}", read(&f).expect_err("future version"));
        assert!(err.contains("version 2 export"), "{err}");
        wrong["version"] = VERSION.into();
        wrong["format"] = "other".into();
        std::fs::write(&f, wrong.to_string()).expect("write");
        let err = format!("{:#}", read(&f).expect_err("other format"));
        assert!(err.contains("format 'other'"), "{err}");
    }
}

/// Against a real etcd (Debian's etcd-server, started by the end-to-end
/// harness and killed when the test ends).
#[cfg(test)]
mod on_a_real_etcd {
    use super::*;
    use crate::config::StoreConfig;
    use sup_e2e::etcd::EtcdCluster;

    #[test]
    fn a_sled_cluster_moves_to_etcd_whole_and_a_second_import_is_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let sled_dir = tmp.path().join("sled");
        let original = {
            let mut store = store::SledStore::open(&sled_dir).expect("open");
            tests::fill(&mut store)
        };
        let file = tmp.path().join("state.json");
        let sled = tests::sled_config(&sled_dir);
        export(&sled, &file, 1).expect("export");

        let etcd_dir = tmp.path().join("etcd");
        let cluster = EtcdCluster::start(&etcd_dir, 1)
            .expect("starting etcd (apt-get install etcd-server etcd-client)");
        let mut etcd = tests::sled_config(&tmp.path().join("unused"));
        etcd.store = StoreConfig {
            backend: StoreBackend::Etcd,
            etcd_endpoints: cluster.endpoints(),
            etcd_prefix: "/sup-import/".into(),
            ..StoreConfig::default()
        };
        let said = import(&etcd, &file).expect("import into etcd");
        assert!(said.contains("into etcd"), "{said}");
        let loaded = store::open(&etcd).expect("open").load().expect("load");
        assert_eq!(loaded, original);

        let err = format!("{:#}", import(&etcd, &file).expect_err("not empty"));
        assert!(err.contains("already holds state"), "{err}");

        // And back out of etcd: the same document, but for its source.
        let back = tmp.path().join("back.json");
        export(&etcd, &back, 1).expect("export from etcd");
        let (a, b) = (read(&file).expect("a"), read(&back).expect("b"));
        assert_eq!(a.state, b.state);
    }
}
