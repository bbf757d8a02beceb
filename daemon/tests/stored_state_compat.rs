//! Stored-state compatibility: a data dir written by supd with store schema
//! v1 must still open, decode and mean the same thing in every later supd,
//! so that a change to a record type can never silently lose a cluster's
//! cordons, jobs or breaker.
//!
//! `tests/fixtures/stored_state_v1.json` holds every sled tree's keys and
//! values exactly as a v1 supd stored them (plus the `state.initialized`
//! marker), written by [`regenerate_stored_state_fixture`] from a scenario
//! driven through the real engine. [`a_v1_data_dir_still_opens_and_means_the_same`]
//! rebuilds that data dir byte for byte, opens it with `SledStore::open`
//! (the path supd takes at start, integrity checks included), and checks
//! concrete facts and that every record re-serialises to what was stored.
//!
//! The fixture is a record of the past, not of the present: do NOT
//! regenerate `stored_state_v1.json` because this test fails after a change.
//! A failure means the change would lose or alter stored state; fix the
//! change (`#[serde(default)]`, an alias, a migration in the store). A new
//! field whose default is right for records written before it goes into
//! [`ADDED_SINCE_V1`]. When the schema really changes (a new
//! `SCHEMA_VERSION` with a migration), keep v1 and its test, and write a v2
//! fixture next to it:
//!
//! ```text
//! SUP_STORED_STATE_FIXTURE_OUT=tests/fixtures/stored_state_v2.json \
//!   cargo test -p supd --test stored_state_compat -- --ignored regenerate_stored_state_fixture
//! ```
//!
//! (a relative path is taken from `daemon/`). The same command with the v1
//! path rebuilds the v1 fixture from the v1 code, should it ever be needed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sup_core::detect::DetectConfig;
use sup_core::jobspec::{JobSpec, Priority, StragglerPolicy};
use sup_core::{
    Action, Change, Checkpoint, CheckpointCatalog, CheckpointRef, CordonRecord, Engine,
    EngineConfig, Event, EventKind, GpuHealth, GpuInventory, GpuVerdict, HealthReport, JobProgress,
    JobRecord, JobState, Millis, NodeRecord, NodeState, Persisted, RankExited, RankStatus,
    RecoveryAction, Registration, RequestRecord, SessionId, XidEvent,
};
use supd::store::{SledStore, Store, INITIALIZED_MARKER, STATE_DIR};

/// A spec as supd's edge parses it.
fn spec(text: &str) -> JobSpec {
    supd::jobspec::parse(text).expect("the scenario's specs are valid")
}

const FIXTURE_V1: &str = "tests/fixtures/stored_state_v1.json";

/// 2025-06-15T15:06:40Z: every time in the scenario is an offset from it,
/// so the fixture is the same on every run.
const T0: Millis = 1_750_000_000_000;

// ---------------------------------------------------------------------------
// The fixture file
// ---------------------------------------------------------------------------

/// One data dir, as stored. Keys and values are text where they are UTF-8
/// (every value is: JSON records and the schema version), hex otherwise
/// (event keys are big-endian seqs). Values are strings, not embedded JSON,
/// so that the bytes come back exactly as supd wrote them.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    about: String,
    /// The sled directory inside the data dir.
    sled_dir: String,
    /// The marker file beside it, and its bytes (the newest committed event
    /// seq, u64 little endian).
    marker_file: String,
    marker_hex: String,
    /// Every sled tree, by name, including empty ones.
    trees: Vec<TreeDump>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeDump {
    name: String,
    entries: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_hex: Option<String>,
}

impl Entry {
    fn new(key: &[u8], value: &[u8]) -> Entry {
        // Event keys (big-endian seqs) are valid UTF-8 too, made of NULs:
        // only printable keys are written as text, to stay readable.
        let text_key = std::str::from_utf8(key)
            .ok()
            .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_graphic()));
        let text_value = std::str::from_utf8(value).ok();
        Entry {
            key: text_key.map(str::to_owned),
            key_hex: text_key.is_none().then(|| hex(key)),
            value: text_value.map(str::to_owned),
            value_hex: text_value.is_none().then(|| hex(value)),
        }
    }

    fn key_bytes(&self) -> Vec<u8> {
        match (&self.key, &self.key_hex) {
            (Some(k), None) => k.as_bytes().to_vec(),
            (None, Some(h)) => unhex(h),
            _ => panic!("fixture entry {self:?} needs exactly one of key, key_hex"),
        }
    }

    fn value_bytes(&self) -> Vec<u8> {
        match (&self.value, &self.value_hex) {
            (Some(v), None) => v.as_bytes().to_vec(),
            (None, Some(h)) => unhex(h),
            _ => panic!("fixture entry {self:?} needs exactly one of value, value_hex"),
        }
    }

    /// The key for messages: text, or the event seq it encodes.
    fn describe_key(&self) -> String {
        match (&self.key, <[u8; 8]>::try_from(self.key_bytes().as_slice())) {
            (Some(k), _) => format!("'{k}'"),
            (None, Ok(seq)) => format!("#{}", u64::from_be_bytes(seq)),
            (None, Err(_)) => self.key_hex.clone().unwrap_or_default(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(
        text.len().is_multiple_of(2),
        "odd-length hex '{text}' in the fixture"
    );
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .unwrap_or_else(|| panic!("bad hex '{text}' in the fixture"))
        })
        .collect()
}

fn manifest_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_fixture(path: &str) -> Fixture {
    let path = manifest_path(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is malformed: {e}", path.display()))
}

impl Fixture {
    fn tree(&self, name: &str) -> &[Entry] {
        self.trees
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.entries.as_slice())
            .unwrap_or_else(|| panic!("the fixture has no tree '{name}'"))
    }

    /// Lays the data dir out in `dir` exactly as stored: the raw trees
    /// written with sled itself (not through `SledStore`, whose encoding is
    /// what is under test), then the marker.
    fn rebuild(&self, dir: &Path) {
        let db = sled::Config::new()
            .path(dir.join(&self.sled_dir))
            .open()
            .expect("create the sled dir");
        for tree in &self.trees {
            let t = db.open_tree(&tree.name).expect("open tree");
            for entry in &tree.entries {
                t.insert(entry.key_bytes(), entry.value_bytes())
                    .expect("insert");
            }
        }
        db.flush().expect("flush");
        drop(db);
        std::fs::write(dir.join(&self.marker_file), unhex(&self.marker_hex)).expect("marker");
    }
}

// ---------------------------------------------------------------------------
// The compatibility test
// ---------------------------------------------------------------------------

#[test]
fn a_v1_data_dir_still_opens_and_means_the_same() {
    let fixture = read_fixture(FIXTURE_V1);
    let dir = tempfile::tempdir().expect("tempdir");
    fixture.rebuild(dir.path());
    assert_rebuilt_exactly(&fixture, dir.path());

    let store = when_unlocked(|| SledStore::open(dir.path()))
        .unwrap_or_else(|e| panic!("supd refuses the v1 data dir: {e}"));
    let loaded = store
        .load()
        .unwrap_or_else(|e| panic!("supd cannot load the v1 data dir: {e}"));
    drop(store);

    assert_every_record_round_trips(&fixture, &loaded);
    assert_v1_facts(&loaded);

    // What supd does next at start: rebuild the engine from the store.
    let restored_at = T0 + 3_600_000;
    let mut engine = Engine::restore(EngineConfig::default(), loaded, restored_at);
    let state = |id: &str| engine.node(id).expect("restored node").state();
    assert_eq!(state("n6"), NodeState::Cordoned, "operator cordon");
    assert_eq!(state("n1"), NodeState::Cordoned, "automatic cordon");
    assert_eq!(state("n2"), NodeState::Suspect, "suspect after a hang");
    assert_eq!(state("n5"), NodeState::Suspect, "failed GPU, cordon held");
    assert_eq!(state("n3"), NodeState::Ready);
    let job = engine.job("llm-7b").expect("restored job");
    assert_eq!(job.record.generation, LLM_GENERATION);
    assert_eq!(job.world_size(), 4);
    assert!(engine.breaker().open, "an open breaker stays open");
    assert_eq!(engine.events().last().map(|e| e.seq), Some(LAST_EVENT_SEQ));
    // The next event takes the next seq: one that reused a stored seq
    // would overwrite that event in the store.
    engine
        .cordon(restored_at, "n3", "after restore", "test")
        .expect("cordon");
    let first_new = std::iter::from_fn(|| engine.poll_action()).find_map(|a| match a {
        Action::Persist(Change::AppendEvent(e)) => Some(e.seq),
        _ => None,
    });
    assert_eq!(first_new, Some(LAST_EVENT_SEQ + 1));
}

/// Opens a sled dir that this process has just closed. sled's background
/// flusher lets go of the dir's file lock a moment after the last handle
/// is dropped, so an open right after can fail on the lock alone (the
/// reopen below failed once in a run on a loaded machine): retried while
/// the error names the lock, at most 10 s; any other error is returned at
/// once.
fn when_unlocked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The rebuilt sled dir holds the fixture's keys and values byte for byte
/// and nothing else, so `SledStore` reads what a v1 supd wrote, not what
/// today's types would write.
fn assert_rebuilt_exactly(fixture: &Fixture, dir: &Path) {
    let db = when_unlocked(|| sled::Config::new().path(dir.join(&fixture.sled_dir)).open())
        .expect("reopen the rebuilt dir");
    for tree in &fixture.trees {
        let t = db.open_tree(&tree.name).expect("open tree");
        let raw: Vec<(Vec<u8>, Vec<u8>)> = t
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read"))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = tree
            .entries
            .iter()
            .map(|e| (e.key_bytes(), e.value_bytes()))
            .collect();
        assert!(raw == want, "tree '{}' was not rebuilt exactly", tree.name);
    }
    drop(db);
    let marker = std::fs::read(dir.join(&fixture.marker_file)).expect("marker");
    assert_eq!(hex(&marker), fixture.marker_hex);
}

/// Each stored record, decoded by today's types and encoded again, is the
/// same JSON: a field that a new version drops, renames or re-types fails
/// here, naming the record and the field. Every stored record must also
/// come back from `load` (a tree or key that is no longer read fails).
fn assert_every_record_round_trips(fixture: &Fixture, loaded: &Persisted) {
    let mut failures = Vec::new();
    for e in fixture.tree("nodes") {
        let id = String::from_utf8(e.key_bytes()).expect("node key");
        let record = loaded.nodes.iter().find(|n| n.id == id);
        failures.extend(compare("node record", e, record.map(json)));
    }
    for e in fixture.tree("events") {
        let seq = <[u8; 8]>::try_from(e.key_bytes().as_slice())
            .map(u64::from_be_bytes)
            .expect("event key");
        let event = loaded.events.iter().find(|ev| ev.seq == seq);
        failures.extend(compare("event", e, event.map(json)));
    }
    for e in fixture.tree("jobs") {
        let name = String::from_utf8(e.key_bytes()).expect("job key");
        let job = loaded.jobs.iter().find(|j| j.spec.name == name);
        failures.extend(compare("job record", e, job.map(json)));
    }
    for e in fixture.tree("requests") {
        let id = String::from_utf8(e.key_bytes()).expect("request key");
        let request = loaded.requests.iter().find(|r| r.id == id);
        failures.extend(compare("request record", e, request.map(json)));
    }
    for e in fixture.tree("meta") {
        match e.key.as_deref() {
            // Checked by `SledStore::open`: it opened, so it is understood.
            Some("schema_version") => {}
            Some("breaker") => failures.extend(compare(
                "breaker (meta)",
                e,
                loaded.breaker.as_ref().map(json),
            )),
            _ => failures.push(format!(
                "meta key {} is in the fixture but not checked by this test",
                e.describe_key()
            )),
        }
    }
    let checked = ["nodes", "events", "jobs", "requests", "meta"];
    for tree in &fixture.trees {
        if !checked.contains(&tree.name.as_str()) && !tree.entries.is_empty() {
            failures.push(format!(
                "tree '{}' holds {} record(s) this test does not check",
                tree.name,
                tree.entries.len()
            ));
        }
    }
    let counts = [
        ("nodes", loaded.nodes.len()),
        ("events", loaded.events.len()),
        ("jobs", loaded.jobs.len()),
        ("requests", loaded.requests.len()),
    ];
    for (tree, n) in counts {
        let stored = fixture.tree(tree).len();
        if stored != n {
            failures.push(format!(
                "tree '{tree}' stores {stored} record(s), load() returned {n}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "the v1 stored state does not survive this version:\n  {}",
        failures.join("\n  ")
    );
}

fn json<T: Serialize>(record: &T) -> Value {
    serde_json::to_value(record).expect("a record serialises")
}

/// Fields added to a record type since v1, as "<record kind> <field>"
/// with array indices left out (e.g. "node record gpus[].power_limit_w").
/// A v1 store does not hold them, so they come back from the type's
/// `#[serde(default)]`; list one here once that default is right for every
/// record written before it. Anything else that differs is lost state.
const ADDED_SINCE_V1: &[&str] = &[
    // Planned moves off drained nodes (issue 17): none before drains existed.
    "job record planned_moves",
    // The kinds of a GPU verdict's causes (issue 19): empty, as for an
    // agent that predates them, until the next health report.
    "node record gpus[].causes",
    // Slurm's name for a node when its agent gives one (issue 14): absent
    // (the node id) for every node stored before, and not written then.
    "node record scheduler_name",
    // Live goodput accounting (issue 20): nothing booked; the engine starts
    // the accounting of such a record when it restores it (see
    // `Goodput::ensure_started`).
    "job record goodput",
    // The Slurm allocation a job is bound to (issue 14): absent for every
    // job stored before, and not written when absent.
    "job record slurm",
];

/// How the record stored as `stored` came back (`None`: not at all).
fn compare(what: &str, stored: &Entry, reencoded: Option<Value>) -> Vec<String> {
    let key = stored.describe_key();
    let stored: Value = serde_json::from_slice(&stored.value_bytes())
        .unwrap_or_else(|e| panic!("{what} {key}: the fixture's value is not JSON: {e}"));
    let Some(now) = reencoded else {
        return vec![format!(
            "{what} {key}: stored, but load() did not return it"
        )];
    };
    let mut out = Vec::new();
    diff(&stored, &now, "", &mut |d| {
        match d {
        Diff::Missing(field, was) => out.push(format!(
            "{what} {key}: field {field}: stored as {was}, missing when re-serialised (dropped or renamed?)"
        )),
        Diff::Changed(field, was, is) => out.push(format!(
            "{what} {key}: field {field}: stored as {was}, re-serialised as {is}"
        )),
        Diff::Added(field, is) => {
            let general = format!("{what} {}", without_indices(&field));
            if !ADDED_SINCE_V1.contains(&general.as_str()) {
                out.push(format!(
                    "{what} {key}: field {field}: not in the v1 record, re-serialised as {is}; \
                     if this default is right for old records, add \"{general}\" to ADDED_SINCE_V1"
                ));
            }
        }
    }
    });
    out
}

enum Diff<'a> {
    Missing(String, &'a Value),
    Changed(String, &'a Value, &'a Value),
    Added(String, &'a Value),
}

fn field_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// "gpus[3].evidence[0]" → "gpus[].evidence[]".
fn without_indices(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Reports where `now` differs from `stored`, field by field.
fn diff<'a>(stored: &'a Value, now: &'a Value, path: &str, report: &mut dyn FnMut(Diff<'a>)) {
    match (stored, now) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                match b.get(k) {
                    None => report(Diff::Missing(field_path(path, k), va)),
                    Some(vb) => diff(va, vb, &field_path(path, k), report),
                }
            }
            for (k, vb) in b {
                if !a.contains_key(k) {
                    report(Diff::Added(field_path(path, k), vb));
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(va, vb, &format!("{path}[{i}]"), report);
            }
        }
        _ if stored == now => {}
        _ => {
            let here = if path.is_empty() {
                "(the record)"
            } else {
                path
            };
            report(Diff::Changed(here.to_owned(), stored, now));
        }
    }
}

// ---------------------------------------------------------------------------
// What the v1 fixture holds
// ---------------------------------------------------------------------------

/// The scenario's final generation of `llm-7b` and its newest event, shared
/// by the facts below and the restored engine's checks.
const LLM_GENERATION: u64 = 7;
const LAST_EVENT_SEQ: u64 = 38;

/// What the v1 scenario left, as facts an operator would check. Written
/// out (not taken from the generator's constants) so that they stay the
/// facts of v1 whatever the generator does later.
fn assert_v1_facts(loaded: &Persisted) {
    // -- nodes
    let ids: Vec<&str> = loaded.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["n1", "n2", "n3", "n4", "n5", "n6"]);
    let node = |id: &str| -> &NodeRecord {
        loaded
            .nodes
            .iter()
            .find(|n| n.id == id)
            .expect("node present")
    };

    let n3 = node("n3");
    assert_eq!(
        (
            n3.address.as_str(),
            n3.hostname.as_str(),
            n3.agent_version.as_str(),
            n3.gpu_backend.as_str(),
            n3.instance_id.as_str(),
            n3.registered_at,
            n3.joined,
        ),
        (
            "10.1.1.3",
            "gpu-01-03.dc1.example",
            "0.1.0",
            "nvml",
            "i-0a1b2c3d00000003",
            T0 + 2_000,
            true
        )
    );
    assert_eq!((&n3.cordon, &n3.suspect), (&None, &None));
    let gpu = n3.gpus.get(1).expect("n3 GPU 1");
    assert_eq!(
        (
            gpu.index,
            gpu.uuid.as_str(),
            gpu.name.as_str(),
            gpu.pci_bus_id.as_str(),
            gpu.memory_total_bytes,
            gpu.health,
            gpu.health_reason.as_str(),
            gpu.evidence.len(),
            gpu.recovery_action,
        ),
        (
            1,
            "GPU-5e6f0003-0000-4000-8000-000000000001",
            "NVIDIA H100 80GB HBM3",
            "00000000:38:00.0",
            Some(85_520_809_984),
            GpuHealth::Ok,
            "",
            0,
            0
        )
    );

    // Cordoned by an operator.
    let n6 = node("n6");
    assert_eq!(
        n6.cordon,
        Some(CordonRecord {
            validation: None,
            reason: "PSU fan alarm; waiting for DC ops ticket DC-4411".to_owned(),
            by: "alice@ops".to_owned(),
            at: T0 + 60_000,
        })
    );
    assert!(n6.gpus.iter().all(|g| g.health == GpuHealth::Ok));

    // A GPU fell off the bus: failed, with its evidence, and the node
    // cordoned by supd itself.
    let n1 = node("n1");
    let failed = n1.gpus.first().expect("n1 GPU 0");
    assert_eq!(
        (
            failed.health,
            failed.health_reason.as_str(),
            failed.recovery_action
        ),
        (
            GpuHealth::Failed,
            "Xid 79 (GPU has fallen off the bus): power-cycle the node",
            RecoveryAction::NodeReboot.code()
        )
    );
    assert_eq!(
        failed.evidence,
        [
            "Xid 79 at 2025-06-15T15:09:12Z (kernel log)",
            "NVML: GPU is lost",
            "PCIe link 00000000:18:00.0 down"
        ]
    );
    assert_eq!(
        n1.gpus.get(1).map(|g| g.health),
        Some(GpuHealth::Ok),
        "only GPU 0 failed"
    );
    let cordon = n1.cordon.as_ref().expect("n1 cordoned");
    assert_eq!((cordon.by.as_str(), cordon.at), ("sup", T0 + 193_300));
    assert!(
        cordon.reason.starts_with(
            "GPU 0 (GPU-5e6f0001-0000-4000-8000-000000000000) failed: Xid 79 (GPU has fallen off the bus)"
        ),
        "{}",
        cordon.reason
    );

    // Suspect: a hang was blamed on it, short of a cordon.
    let n2 = node("n2");
    assert_eq!(
        (n2.suspect.as_deref(), &n2.cordon),
        (
            Some("1 hang(s) of job 'llm-7b' blamed on it (cordoned at 2)"),
            &None
        )
    );

    // Failed and degraded GPUs, cordon held back by the open breaker.
    let n5 = node("n5");
    assert_eq!(n5.cordon, None);
    let health: Vec<(GpuHealth, &str, i32)> = n5
        .gpus
        .iter()
        .map(|g| (g.health, g.health_reason.as_str(), g.recovery_action))
        .collect();
    assert_eq!(
        health,
        [
            (
                GpuHealth::Failed,
                "uncorrectable ECC errors: row remapping failed",
                RecoveryAction::GpuReset.code()
            ),
            (
                GpuHealth::Degraded,
                "thermal slowdown at 91 °C",
                RecoveryAction::None.code()
            ),
        ]
    );

    // -- jobs
    let names: Vec<&str> = loaded.jobs.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["eval-sweep", "llm-7b"]);
    let job = |name: &str| -> &JobRecord {
        loaded
            .jobs
            .iter()
            .find(|j| j.spec.name == name)
            .expect("job present")
    };

    let llm = job("llm-7b");
    let step30 = CheckpointRef {
        step: 30,
        path: "/mnt/ckpt/llm-7b/step-000030".to_owned(),
        ..Default::default()
    };
    assert_eq!(
        (llm.state, llm.reason.as_str(), llm.generation),
        (JobState::Running, "", LLM_GENERATION)
    );
    assert_eq!(llm.nodes, ["n3", "n4"]);
    assert_eq!(llm.checkpoint, Some(step30.clone()));
    assert_eq!(llm.resume_from, Some(Some(step30)));
    assert_eq!(
        (
            llm.restarts,
            llm.best_step,
            llm.restart_mark,
            llm.fruitless_restarts
        ),
        (3, Some(36), (Some(30), Some(36)), 1)
    );
    assert_eq!((llm.rollbacks, llm.rollback_mark), (1, Some(30)));
    assert_eq!(llm.avoid_nodes, ["n2"]);
    assert_eq!(
        llm.hang_blame,
        BTreeMap::from([("n2".to_owned(), 1)]),
        "the hang blamed on n2"
    );
    assert_eq!(
        (llm.submitted_by.as_str(), llm.submitted_at),
        ("bob@ml", T0 + 120_000)
    );
    let spec = &llm.spec;
    assert_eq!(
        spec.command,
        ["python3", "-u", "train.py", "--config", "configs/7b.yaml"]
    );
    assert_eq!(spec.workdir.as_deref(), Some("/srv/llm"));
    assert_eq!(
        (
            spec.nodes,
            spec.min_nodes,
            spec.gpus_per_node,
            spec.world_size_multiple
        ),
        (2, Some(1), 2, 2)
    );
    assert_eq!(
        (
            spec.checkpoint_dir.as_str(),
            spec.checkpoint_layout.as_str()
        ),
        ("/mnt/ckpt/llm-7b", "marker:COMPLETE")
    );
    assert_eq!((spec.priority, spec.max_restarts), (Priority::Low, 7));
    assert_eq!(
        spec.env,
        BTreeMap::from([
            ("HF_HOME".to_owned(), "/mnt/cache/hf".to_owned()),
            ("NCCL_DEBUG".to_owned(), "WARN".to_owned()),
        ])
    );
    assert_eq!(
        (spec.model_params, spec.gpu_peak_flops),
        (Some(7e9), Some(989e12))
    );
    assert_eq!(
        spec.straggler_policy,
        Some(StragglerPolicy::ReplaceAtCheckpoint)
    );
    assert_eq!(
        (
            spec.loss_spike_rollback,
            spec.loss_spike_factor,
            spec.loss_spike_steps,
            spec.max_rollbacks,
            spec.rollback_lr_scale
        ),
        (true, Some(2.5), Some(4), Some(2), Some(0.25))
    );
    assert_eq!(
        spec.progress_regex.as_deref(),
        Some(r"^step (?P<step>\d+) loss (?P<loss>\S+) tokens (?P<tokens>\d+)")
    );
    // The TOML as submitted is kept, and still means the stored spec.
    assert_eq!(
        supd::jobspec::parse(&llm.spec_toml).as_ref(),
        Ok(spec),
        "spec_toml of llm-7b"
    );

    // A finished job with a minimal spec: the defaults as stored, and a
    // generation that started from scratch (`resume_from` present, null).
    let eval = job("eval-sweep");
    assert_eq!(
        (eval.state, eval.reason.as_str(), eval.generation),
        (
            JobState::Stopped,
            "stopped by carol@ml: superseded by eval-sweep-2",
            3
        )
    );
    assert!(eval.nodes.is_empty(), "a stopped job holds no node");
    assert_eq!((&eval.checkpoint, &eval.resume_from), (&None, &Some(None)));
    assert_eq!(
        (eval.submitted_by.as_str(), eval.submitted_at),
        ("carol@ml", T0 + 132_000)
    );
    let spec = &eval.spec;
    assert_eq!(
        (
            spec.workdir.as_deref(),
            spec.min_nodes,
            spec.world_size_multiple,
            spec.checkpoint_layout.as_str(),
            spec.priority,
            spec.max_restarts,
            spec.straggler_policy,
            spec.loss_spike_rollback,
            spec.progress_regex.as_deref(),
        ),
        (
            None,
            None,
            1,
            "dcp",
            Priority::Normal,
            20,
            None,
            false,
            None
        )
    );
    assert_eq!(supd::jobspec::parse(&eval.spec_toml).as_ref(), Ok(spec));

    // -- events: contiguous seqs from 1, in this order.
    let seqs: Vec<u64> = loaded.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=LAST_EVENT_SEQ).collect::<Vec<_>>());
    use EventKind as K;
    let kinds: Vec<EventKind> = loaded.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            K::NodeRegistered,
            K::SparesLow,
            K::NodeRegistered,
            K::NodeRegistered,
            K::NodeRegistered,
            K::NodeRegistered,
            K::NodeRegistered,
            K::NodeCordoned,
            K::JobSubmitted,
            K::JobStarted,
            K::JobRunning,
            K::JobHung,
            K::JobRestarted,
            K::JobHangPostmortem,
            K::JobSubmitted,
            K::JobStarted,
            K::JobRunning,
            K::JobStopped,
            K::JobRunning,
            K::JobStraggler,
            K::JobCheckpoint,
            K::JobRestarted,
            K::JobRunning,
            K::JobCheckpoint,
            K::JobRolledBack,
            K::JobRestarted,
            K::JobRunning,
            K::GpuXid,
            K::GpuHealthChanged,
            K::NodeCordoned,
            K::JobRestarted,
            K::JobRunning,
            K::GpuHealthChanged,
            K::GpuHealthChanged,
            K::BreakerOpened,
            K::NodeCordoned,
            K::NodeDisconnected,
            K::NodeReconnected,
        ]
    );
    let event = |seq: u64| -> &Event {
        loaded
            .events
            .iter()
            .find(|e| e.seq == seq)
            .expect("event present")
    };
    assert_eq!(
        event(8),
        &Event {
            seq: 8,
            at: T0 + 60_000,
            kind: K::NodeCordoned,
            node: Some("n6".to_owned()),
            job: None,
            reason: "cordoned by alice@ops: PSU fan alarm; waiting for DC ops ticket DC-4411"
                .to_owned(),
            // Added after v1; absent from every record v1 wrote.
            recovery_ms: None,
        }
    );
    let rolled_back = event(25);
    assert_eq!(
        (
            rolled_back.at,
            rolled_back.node.as_deref(),
            rolled_back.job.as_deref()
        ),
        (T0 + 190_100, None, Some("llm-7b"))
    );
    assert!(
        rolled_back
            .reason
            .contains("rolling back to checkpoint step 30"),
        "{}",
        rolled_back.reason
    );

    // -- breaker: open, since n5's failure.
    let breaker = loaded.breaker.as_ref().expect("breaker stored");
    assert_eq!((breaker.open, breaker.since), (true, T0 + 255_300));
    assert!(
        breaker
            .reason
            .starts_with("2 automatic cordons within 10m would exceed the limit of 1"),
        "{}",
        breaker.reason
    );

    // -- requests, oldest first.
    let request = |id: &str, at: Millis, kind: &str, target: &str, message: &str| RequestRecord {
        id: id.to_owned(),
        at: T0 + at,
        kind: kind.to_owned(),
        target: target.to_owned(),
        message: message.to_owned(),
    };
    assert_eq!(
        loaded.requests,
        [
            request(
                "supctl-4242-18f0a1b2c3d4e5f6",
                60_000,
                "cordon",
                "n6",
                "node 'n6' cordoned: PSU fan alarm; waiting for DC ops ticket DC-4411"
            ),
            request(
                "supctl-4243-18f0a1b2c3d4e600",
                120_000,
                "submit_job",
                "llm-7b",
                "job 'llm-7b' submitted"
            ),
            request(
                "supctl-4250-18f0a1b2c3d4e700",
                132_000,
                "submit_job",
                "eval-sweep",
                "job 'eval-sweep' submitted"
            ),
            request(
                "supctl-4251-18f0a1b2c3d4e800",
                160_000,
                "stop_job",
                "eval-sweep",
                "job 'eval-sweep' stopped"
            ),
        ]
    );
}

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

/// Writes a fixture from the scenario below, driven through the real
/// engine and committed to a real `SledStore`, to the path in
/// `SUP_STORED_STATE_FIXTURE_OUT` (see the module docs); without it, only
/// runs the scenario and checks that it still covers what it should.
#[test]
#[ignore = "writes a fixture; see the module docs"]
fn regenerate_stored_state_fixture() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut scenario = Scenario::new(dir.path());
    scenario.run();
    scenario.assert_covered();
    drop(scenario);
    let fixture = dump(dir.path());
    let Some(out) = std::env::var_os("SUP_STORED_STATE_FIXTURE_OUT") else {
        eprintln!("scenario ok; set SUP_STORED_STATE_FIXTURE_OUT=PATH to write the fixture");
        return;
    };
    let out = manifest_path(&out.to_string_lossy());
    let mut text = serde_json::to_string_pretty(&fixture).expect("encode");
    text.push('\n');
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
    eprintln!("wrote {}", out.display());
}

/// Every tree of the data dir in `dir`, read with sled itself, and the
/// marker.
fn dump(dir: &Path) -> Fixture {
    let db = sled::Config::new()
        .path(dir.join(STATE_DIR))
        .open()
        .expect("open the store's sled dir");
    let mut names = db.tree_names();
    names.sort();
    let trees = names
        .into_iter()
        .map(|name| {
            let tree = db.open_tree(&name).expect("open tree");
            TreeDump {
                name: String::from_utf8(name.to_vec()).expect("tree names are text"),
                entries: tree
                    .iter()
                    .map(|kv| kv.map(|(k, v)| Entry::new(&k, &v)).expect("read"))
                    .collect(),
            }
        })
        .collect();
    let marker = std::fs::read(dir.join(INITIALIZED_MARKER)).expect("marker");
    Fixture {
        about: "supd's stored state as sled held it, written by \
                daemon/tests/stored_state_compat.rs (regenerate_stored_state_fixture). \
                A record of the past: never regenerate it for a newer supd."
            .to_owned(),
        sled_dir: STATE_DIR.to_owned(),
        marker_file: INITIALIZED_MARKER.to_owned(),
        marker_hex: hex(&marker),
        trees,
    }
}

/// A cluster's life, through the engine's public inputs, committed as the
/// actor commits: after each input, the request record (if any) first.
struct Scenario {
    engine: Engine,
    store: SledStore,
    /// Request records for the next commit.
    requests: Vec<RequestRecord>,
    now: Millis,
}

/// Agents' stream ids: node n<k> streams on session k.
fn session(node: &str) -> SessionId {
    node.trim_start_matches('n').parse().expect("node id n<k>")
}

fn gpu_uuid(node: SessionId, index: u32) -> String {
    format!("GPU-5e6f{node:04x}-0000-4000-8000-{index:012x}")
}

fn has(events: &[Event], kind: EventKind) -> bool {
    events.iter().any(|e| e.kind == kind)
}

fn train(step: u64, step_time_s: f64, loss: f64) -> JobProgress {
    JobProgress {
        step,
        min_step: Some(step),
        step_time_s: Some(step_time_s),
        phase: "train".to_owned(),
        tokens: Some(step * 4_194_304),
        loss: Some(loss),
        ..Default::default()
    }
}

/// Every optional field set, none to its default.
const LLM_SPEC: &str = r#"name = "llm-7b"
command = ["python3", "-u", "train.py", "--config", "configs/7b.yaml"]
workdir = "/srv/llm"
nodes = 2
min_nodes = 1
gpus_per_node = 2
world_size_multiple = 2
checkpoint_dir = "/mnt/ckpt/llm-7b"
checkpoint_layout = "marker:COMPLETE"
priority = "low"
max_restarts = 7
model_params = 7e9
gpu_peak_flops = 989e12
straggler_policy = "replace_at_checkpoint"
loss_spike_rollback = true
loss_spike_factor = 2.5
loss_spike_steps = 4
max_rollbacks = 2
rollback_lr_scale = 0.25
progress_regex = '^step (?P<step>\d+) loss (?P<loss>\S+) tokens (?P<tokens>\d+)'

[env]
NCCL_DEBUG = "WARN"
HF_HOME = "/mnt/cache/hf"
"#;

/// Only the required fields: the defaults as stored.
const EVAL_SPEC: &str = r#"name = "eval-sweep"
command = ["python3", "eval.py"]
nodes = 1
gpus_per_node = 2
checkpoint_dir = "/mnt/ckpt/eval-sweep"
"#;

impl Scenario {
    fn new(dir: &Path) -> Scenario {
        let config = EngineConfig {
            // Time only moves when the scenario says so; no node may turn
            // unreachable on the way.
            unreachable_after_ms: 600_000,
            spares_target: 1,
            // One automatic cordon per window: the second GPU failure
            // opens the breaker.
            breaker_min_cordons: 1,
            breaker_max_share: 0.0,
            detect: DetectConfig {
                hang_factor: 2.0,
                hang_floor_ms: 1_000,
                hang_ceiling_ms: 60_000,
                checkpoint_allowance_ms: 20_000,
                warmup_steps: 5,
                // One hang blamed on a node makes it suspect.
                hang_cordon_after: 2,
                straggler_window: 10,
                straggler_sustain: 5,
                ..DetectConfig::default()
            },
            ..EngineConfig::default()
        };
        Scenario {
            engine: Engine::new(config),
            store: SledStore::open(dir).expect("open the store"),
            requests: Vec::new(),
            now: T0,
        }
    }

    fn at(&mut self, offset: Millis) -> Millis {
        self.now = T0 + offset;
        self.now
    }

    /// Commits what the engine decided; returns the events among it.
    fn commit(&mut self) -> Vec<Event> {
        let mut changes: Vec<Change> = self
            .requests
            .drain(..)
            .map(Change::RememberRequest)
            .collect();
        while let Some(action) = self.engine.poll_action() {
            if let Action::Persist(change) = action {
                changes.push(change);
            }
        }
        self.store.commit(&changes).expect("commit");
        changes
            .into_iter()
            .filter_map(|c| match c {
                Change::AppendEvent(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// What the actor remembers of a control request, for the next commit.
    fn remember(&mut self, id: &str, kind: &str, target: &str, message: &str) {
        self.requests.push(RequestRecord {
            id: id.to_owned(),
            at: self.now,
            kind: kind.to_owned(),
            target: target.to_owned(),
            message: message.to_owned(),
        });
    }

    fn register(&mut self, id: &str, rack: u32) -> Vec<Event> {
        let now = self.now;
        let k = session(id);
        self.engine
            .on_register(
                now,
                Registration {
                    validates: false,
                    session: k,
                    node_id: id.to_owned(),
                    address: format!("10.1.{rack}.{k}"),
                    hostname: format!("gpu-{rack:02}-{k:02}.dc1.example"),
                    agent_version: "0.1.0".to_owned(),
                    instance_id: format!("i-0a1b2c3d{k:08x}"),
                    gpu_backend: "nvml".to_owned(),
                    gpus: (0..2u32)
                        .map(|i| GpuInventory {
                            index: i,
                            uuid: gpu_uuid(k, i),
                            name: "NVIDIA H100 80GB HBM3".to_owned(),
                            pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + 0x20 * i),
                            memory_total_bytes: Some(85_520_809_984),
                        })
                        .collect(),
                },
            )
            .expect("register");
        assert!(self.engine.on_telemetry(now, id, k, vec![]).is_applied());
        self.commit()
    }

    fn job(&self, name: &str) -> &JobRecord {
        &self.engine.job(name).expect("job").record
    }

    /// Every node of the job reports its ranks launched.
    fn launch_all(&mut self, name: &str) -> Vec<Event> {
        let now = self.now;
        let record = self.job(name).clone();
        for n in &record.nodes {
            assert!(self
                .engine
                .on_rank_status(
                    now,
                    n,
                    session(n),
                    RankStatus {
                        job: name.to_owned(),
                        generation: record.generation,
                        running_local_ranks: vec![0, 1],
                        launched: true,
                        launch_error: String::new(),
                    },
                )
                .is_applied());
        }
        self.commit()
    }

    fn progress(&mut self, name: &str, node: &str, p: JobProgress) -> Vec<Event> {
        let generation = self.job(name).generation;
        let now = self.now;
        assert!(self
            .engine
            .on_progress(
                now,
                node,
                session(node),
                JobProgress {
                    job: name.to_owned(),
                    generation,
                    ..p
                },
            )
            .is_applied());
        self.commit()
    }

    fn checkpoints(&mut self, name: &str, node: &str, steps: &[u64]) -> Vec<Event> {
        let now = self.now;
        let dir = self.job(name).spec.checkpoint_dir.clone();
        assert!(self
            .engine
            .on_checkpoint_catalog(
                now,
                node,
                session(node),
                CheckpointCatalog {
                    job: name.to_owned(),
                    checkpoints: steps
                        .iter()
                        .map(|s| Checkpoint {
                            step: *s,
                            path: format!("{dir}/step-{s:06}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                },
            )
            .is_applied());
        self.commit()
    }

    fn health(&mut self, node: &str, report: HealthReport) -> Vec<Event> {
        let now = self.now;
        assert!(self
            .engine
            .on_health_report(now, node, session(node), report)
            .is_applied());
        self.commit()
    }

    fn run(&mut self) {
        // Six nodes in two racks join.
        for (i, id) in ["n1", "n2", "n3", "n4", "n5", "n6"].iter().enumerate() {
            self.at(i as Millis * 1_000);
            self.register(id, 1 + i as u32 / 3);
        }

        // An operator takes n6 out of service, through supctl.
        let now = self.at(60_000);
        let outcome = self
            .engine
            .cordon(
                now,
                "n6",
                "PSU fan alarm; waiting for DC ops ticket DC-4411",
                "alice@ops",
            )
            .expect("cordon");
        self.remember(
            "supctl-4242-18f0a1b2c3d4e5f6",
            "cordon",
            "n6",
            &outcome.message,
        );
        self.commit();

        // The main job starts on n1 and n2.
        let now = self.at(120_000);
        let message = self
            .engine
            .submit_job(now, spec(LLM_SPEC), LLM_SPEC, "bob@ml")
            .expect("submit");
        self.remember(
            "supctl-4243-18f0a1b2c3d4e600",
            "submit_job",
            "llm-7b",
            &message,
        );
        self.commit();
        self.at(125_000);
        self.launch_all("llm-7b");
        assert_eq!(self.job("llm-7b").nodes, ["n1", "n2"]);

        // Generation 1 hangs with n2's ranks behind: blamed, n2 suspect.
        let mut t = 125_000;
        for step in 1..=10 {
            t += 500;
            self.at(t);
            self.progress("llm-7b", "n1", train(step, 0.4, 2.0));
            let lag = JobProgress {
                min_step: Some(step.min(7)),
                ..train(step, 0.4, 2.0)
            };
            self.progress("llm-7b", "n2", lag);
        }
        t += 1_000;
        let now = self.at(t);
        self.engine.handle_timeout(now);
        let events = self.commit();
        assert!(has(&events, EventKind::JobHung), "{events:#?}");

        // The agents stop generation 1's ranks, with a stack dump.
        let now = self.at(t + 200);
        let exit = RankExited {
            job: "llm-7b".to_owned(),
            generation: 1,
            rank: 2,
            local_rank: 0,
            exit_code: None,
            signal: Some(15),
            log_tail: "step 7 loss 2.0 tokens 29360128\nNCCL WARN Timeout\n".to_owned(),
            stopped_by_agent: true,
            stack_dump:
                "Thread 0x7f3a (idle): \"MainThread\"\n    all_reduce (distributed_c10d.py:2501)\n"
                    .to_owned(),
            lease_expired: false,
        };
        // False: a stopped rank is no report about the current generation.
        assert!(!self
            .engine
            .on_rank_exited(now, "n2", session("n2"), exit)
            .is_applied());
        assert!(has(&self.commit(), EventKind::JobHangPostmortem));

        // A small evaluation job runs on a free node and is stopped.
        let now = self.at(t + 1_000);
        let message = self
            .engine
            .submit_job(now, spec(EVAL_SPEC), EVAL_SPEC, "carol@ml")
            .expect("submit");
        self.remember(
            "supctl-4250-18f0a1b2c3d4e700",
            "submit_job",
            "eval-sweep",
            &message,
        );
        self.commit();
        self.at(t + 2_000);
        self.launch_all("eval-sweep");
        let now = self.at(t + 29_000);
        let (_, message) = self
            .engine
            .stop_job(now, "eval-sweep", "carol@ml", "superseded by eval-sweep-2")
            .expect("stop");
        self.remember(
            "supctl-4251-18f0a1b2c3d4e800",
            "stop_job",
            "eval-sweep",
            &message,
        );
        self.commit();

        // Generation 2: n2 is slow, and swapped for a spare right after
        // the next checkpoint.
        let mut t = t + 40_000;
        self.at(t);
        self.launch_all("llm-7b");
        for step in 1..=20 {
            t += 500;
            self.at(t);
            self.progress("llm-7b", "n1", train(step, 0.4, 2.0));
            self.progress("llm-7b", "n2", train(step, 0.6, 2.0));
        }
        self.at(t + 100);
        let events = self.checkpoints("llm-7b", "n1", &[10, 20]);
        assert!(has(&events, EventKind::JobRestarted), "{events:#?}");
        assert_eq!(self.job("llm-7b").avoid_nodes, ["n2"]);

        // Generation 3: a loss spike rolls back to the checkpoint before it.
        t += 1_000;
        self.at(t);
        self.launch_all("llm-7b");
        let nodes = self.job("llm-7b").nodes.clone();
        for step in 21..=36 {
            t += 500;
            self.at(t);
            let loss = if step > 32 { 40.0 } else { 2.0 };
            for n in &nodes {
                self.progress("llm-7b", n, train(step, 0.4, loss));
            }
            if step == 32 {
                self.checkpoints("llm-7b", "n1", &[10, 20, 30]);
            }
        }
        self.at(t + 100);
        let events = self.checkpoints("llm-7b", "n1", &[10, 20, 30]);
        assert!(has(&events, EventKind::JobRolledBack), "{events:#?}");

        // Generation 4 runs until a GPU of n1 falls off the bus: supd
        // cordons n1 and moves the job.
        t += 1_000;
        self.at(t);
        self.launch_all("llm-7b");
        for step in 31..=34 {
            t += 500;
            self.at(t);
            for n in &nodes {
                self.progress("llm-7b", n, train(step, 0.4, 2.0));
            }
        }
        t += 300;
        let now = self.at(t);
        let report = HealthReport {
            verdicts: vec![
                GpuVerdict {
                    index: 0,
                    uuid: gpu_uuid(1, 0),
                    health: GpuHealth::Failed,
                    reason: "Xid 79 (GPU has fallen off the bus): power-cycle the node".to_owned(),
                    evidence: vec![
                        "Xid 79 at 2025-06-15T15:09:12Z (kernel log)".to_owned(),
                        "NVML: GPU is lost".to_owned(),
                        "PCIe link 00000000:18:00.0 down".to_owned(),
                    ],
                    recovery_action: RecoveryAction::NodeReboot,
                    drill: false,
                    causes: Vec::new(),
                },
                GpuVerdict {
                    index: 1,
                    uuid: gpu_uuid(1, 1),
                    health: GpuHealth::Ok,
                    ..Default::default()
                },
            ],
            xids: vec![XidEvent {
                gpu_index: 0,
                uuid: gpu_uuid(1, 0),
                xid: 79,
                at_unix_ms: now - 150,
                source: "kernel_log".to_owned(),
                detail: "GPU has fallen off the bus".to_owned(),
                application: false,
            }],
            visible_gpus: Some(1),
        };
        let events = self.health("n1", report);
        assert!(has(&events, EventKind::NodeCordoned), "{events:#?}");
        t += 2_000;
        self.at(t);
        self.launch_all("llm-7b");

        // n5's GPUs fail too. One automatic cordon per window: the breaker
        // opens and holds this cordon back.
        t += 60_000;
        self.at(t);
        let report = HealthReport {
            verdicts: vec![
                GpuVerdict {
                    index: 0,
                    uuid: gpu_uuid(5, 0),
                    health: GpuHealth::Failed,
                    reason: "uncorrectable ECC errors: row remapping failed".to_owned(),
                    evidence: vec![
                        "ecc.uncorrected.volatile = 12".to_owned(),
                        "remapped_rows.failure = true".to_owned(),
                    ],
                    recovery_action: RecoveryAction::GpuReset,
                    drill: false,
                    causes: Vec::new(),
                },
                GpuVerdict {
                    index: 1,
                    uuid: gpu_uuid(5, 1),
                    health: GpuHealth::Degraded,
                    reason: "thermal slowdown at 91 °C".to_owned(),
                    evidence: vec!["clocks_throttle_reasons.hw_thermal_slowdown".to_owned()],
                    recovery_action: RecoveryAction::None,
                    drill: false,
                    causes: Vec::new(),
                },
            ],
            xids: vec![],
            visible_gpus: Some(2),
        };
        let events = self.health("n5", report);
        assert!(has(&events, EventKind::BreakerOpened), "{events:#?}");

        // The cordoned n6 is power-cycled: its agent goes and comes back.
        t += 30_000;
        let now = self.at(t);
        self.engine.on_disconnected(now, "n6", session("n6"));
        self.commit();
        t += 90_000;
        self.at(t);
        self.register("n6", 2);
    }

    /// The scenario still reaches every state the fixture is meant to
    /// hold (engine changes could quietly make it miss one).
    fn assert_covered(&self) {
        let e = &self.engine;
        let node = |id: &str| e.node(id).expect("node");
        assert_eq!(node("n6").state(), NodeState::Cordoned);
        assert!(node("n1")
            .record
            .cordon
            .as_ref()
            .is_some_and(|c| c.by == "sup"));
        assert!(node("n2").record.suspect.is_some());
        assert!(node("n1")
            .record
            .gpus
            .iter()
            .any(|g| g.health == GpuHealth::Failed
                && !g.evidence.is_empty()
                && g.recovery_action != 0));
        assert!(node("n5")
            .record
            .gpus
            .iter()
            .any(|g| g.health == GpuHealth::Degraded));
        let llm = self.job("llm-7b");
        assert_eq!(llm.state, JobState::Running);
        assert!(llm.generation > 1 && llm.restarts > 0 && llm.fruitless_restarts > 0);
        assert!(matches!(llm.resume_from, Some(Some(_))));
        assert!(llm.checkpoint.is_some() && llm.best_step.is_some());
        assert!(llm.rollbacks > 0 && llm.rollback_mark.is_some());
        assert!(!llm.avoid_nodes.is_empty() && !llm.hang_blame.is_empty());
        let eval = self.job("eval-sweep");
        assert_eq!(eval.state, JobState::Stopped);
        assert_eq!(eval.resume_from, Some(None));
        assert!(e.breaker().open);
        assert!(self.requests.is_empty(), "every request record committed");
    }
}
