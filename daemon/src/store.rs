//! Durable state behind a small trait, so the engine never sees sled.
//!
//! Layout (sled 0.34): tree `nodes` (node id -> JSON `NodeRecord`), tree
//! `events` (big-endian seq -> JSON `Event`), tree `jobs` (job name -> JSON
//! `JobRecord`), tree `meta` (`schema_version`, `breaker`, `last_generation`), tree `requests`
//! (client request id -> JSON `RequestRecord`).
//! Every record is decoded at open: a store that does not decode is reported
//! as corrupt and never served or overwritten (fail closed).
//!
//! The etcd backend ([`EtcdStore`], `[store] backend = "etcd"`) keeps the
//! same records, one etcd key each (layout in `etcd.rs`).

use std::path::{Path, PathBuf};

use sup_core::{BreakerRecord, Change, Event, JobRecord, NodeRecord, Persisted, RequestRecord};

use crate::config::{Config, StoreBackend};

mod etcd;
pub use etcd::election::{Candidate, Leadership};
pub use etcd::{EtcdOptions, EtcdStore, Standing, MAX_TXN_BYTES, MAX_TXN_OPS};

const SCHEMA_VERSION: u32 = 1;

/// The sled directory inside supd's data dir. Public, with
/// [`INITIALIZED_MARKER`], for tools and tests that must lay out or read a
/// data dir as supd does (the stored-state compatibility fixture).
pub const STATE_DIR: &str = "state";

/// sled's page cache. Its default (1 GiB) would keep the whole store
/// resident a second time: supd reads the store once, at startup, into the
/// engine, and afterwards only writes (a node's record, a job, the event
/// log), whose pages the kernel's page cache keeps warm anyway. At 16,384
/// nodes the store is about 90 MB on disk.
const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Written (and synced) next to the sled directory once a store has been
/// initialised. sled recovers a damaged log by dropping what does not
/// verify, so a wrecked store can open as an *empty* one; without this
/// marker supd would take it for a fresh store and start over, silently
/// losing every cordon and job.
///
/// The marker also holds the high-water mark: the newest event seq ever
/// committed (8 bytes, little endian), rewritten in place after each commit
/// that appends events. A store whose newest event is older than that lost
/// acknowledged changes (a truncated log that sled "recovered").
pub const INITIALIZED_MARKER: &str = "state.initialized";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the state store at {path} is corrupt ({detail}); refusing to serve. Restore it from a backup or move it aside; supd will not overwrite it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the state store at {path} has schema version {found}, this supd understands {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: String },
    #[error("writing the state store failed: {0}")]
    Write(String),
    /// etcd did not answer (in time): not a verdict on the data.
    #[error("cannot reach the state store in {location}: {detail}")]
    Unreachable { location: String, detail: String },
    #[error("the state store in {location} is corrupt ({detail}); refusing to serve. Restore it from a backup or move it aside; supd will not overwrite it")]
    EtcdCorrupt { location: String, detail: String },
    #[error("the state store in {location} has schema version {found}, this supd understands {SCHEMA_VERSION}")]
    EtcdSchema { location: String, found: String },
    /// The store's settings cannot work (a TLS file that cannot be read):
    /// retrying changes nothing.
    #[error("cannot open the state store in {location}: {detail}")]
    Settings { location: String, detail: String },
    /// This replica no longer leads: it must not write or act again.
    #[error("this supd replica was deposed ({0}); stepping down")]
    Deposed(String),
}

impl StoreError {
    /// The same error, naming `path` (errors found on the scratch copy name
    /// the real store).
    fn at(self, real: &Path) -> StoreError {
        let path = real.to_owned();
        match self {
            StoreError::Open { source, .. } => StoreError::Open { path, source },
            StoreError::Corrupt { detail, .. } => StoreError::Corrupt { path, detail },
            StoreError::Schema { found, .. } => StoreError::Schema { path, found },
            other => other,
        }
    }
}

pub trait Store: Send + 'static {
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Applies the changes atomically and makes them durable before it
    /// returns Ok. (etcd: atomically up to one transaction's worth; see
    /// `etcd.rs` for what a larger commit guarantees.)
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Ok while this replica may act (send messages that carry no write):
    /// always for a store without leader election; for a leader, while its
    /// lease surely holds. See `etcd/election.rs`.
    fn fenced(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl Store for Box<dyn Store> {
    fn load(&self) -> Result<Persisted, StoreError> {
        (**self).load()
    }

    fn fenced(&self) -> Result<(), StoreError> {
        (**self).fenced()
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        (**self).commit(changes)
    }
}

/// Opens the store `[store]` names: sled in the data dir, or etcd
/// (unfenced: supd's serving replicas campaign first, see `lib.rs`).
pub fn open(config: &Config) -> Result<Box<dyn Store>, StoreError> {
    match config.store.backend {
        StoreBackend::Sled => Ok(Box::new(SledStore::open(&config.data_dir)?)),
        StoreBackend::Etcd => Ok(Box::new(open_etcd(config)?)),
    }
}

/// Opens the etcd store `[store]` names.
pub fn open_etcd(config: &Config) -> Result<EtcdStore, StoreError> {
    EtcdStore::open(
        &config.store.etcd_endpoints,
        &config.store.etcd_prefix,
        EtcdOptions {
            tls: config.store.etcd_tls.as_ref().map(|tls| tls.files()),
            ..EtcdOptions::default()
        },
    )
}

/// Where [`open`] finds the state, for logs.
pub fn describe(config: &Config) -> String {
    match config.store.backend {
        StoreBackend::Sled => format!("sled in {}", config.data_dir.join(STATE_DIR).display()),
        StoreBackend::Etcd => format!(
            "etcd {} under '{}'",
            config.store.etcd_endpoints.join(","),
            config.store.etcd_prefix
        ),
    }
}

// ---------------------------------------------------------------------------

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    nodes: sled::Tree,
    events: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
    requests: sled::Tree,
    /// The marker file, holding the committed high-water mark.
    marker: std::fs::File,
    /// The high-water mark read at open.
    committed_seq: u64,
}

/// Opens and decodes a copy of the store in `dir` in a scratch directory.
fn verify_on_a_copy(dir: &Path) -> Result<(), StoreError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let scratch = std::env::temp_dir().join(format!("supd-verify-{}-{nanos}", std::process::id()));
    let copied = copy_tree(&dir.join(STATE_DIR), &scratch.join(STATE_DIR)).and_then(|()| {
        std::fs::copy(
            dir.join(INITIALIZED_MARKER),
            scratch.join(INITIALIZED_MARKER),
        )
        .map(|_| ())
    });
    let outcome = match copied {
        Err(e) => Err(StoreError::Corrupt {
            path: dir.join(STATE_DIR),
            detail: format!("cannot copy it to {} to verify it: {e}", scratch.display()),
        }),
        Ok(()) => SledStore::open_in_place(&scratch).and_then(|store| store.load().map(|_| ())),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Creates the marker durably (file and directory entry synced).
fn write_marker(marker: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(marker)?;
    file.sync_all()?;
    if let Some(dir) = marker.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl SledStore {
    /// Opens the store in `dir`, creating it when `dir` holds none.
    ///
    /// An existing store is first opened and fully decoded from a scratch
    /// copy: sled "recovers" a damaged log on open by rewriting it, and a
    /// store that turns out corrupt must be left exactly as it was for the
    /// operator to inspect or restore. Only a copy that verifies lets the
    /// real store be opened (where sled's ordinary crash recovery, e.g. of a
    /// torn tail after SIGKILL, may then run). The store is small (nodes,
    /// jobs, a bounded event log), so the copy is cheap.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(STATE_DIR);
        let marker = dir.join(INITIALIZED_MARKER);
        if marker.exists() && path.exists() {
            verify_on_a_copy(dir).map_err(|e| e.at(&path))?;
        }
        Self::open_in_place(dir)
    }

    fn open_in_place(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(STATE_DIR);
        let marker = dir.join(INITIALIZED_MARKER);
        let was_initialized = marker.exists();
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(SLED_CACHE_BYTES)
            .open()
            .map_err(|e| match e {
                sled::Error::Corruption { .. } => StoreError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                },
                other => open_err(other),
            })?;
        let nodes = db.open_tree("nodes").map_err(open_err)?;
        let events = db.open_tree("events").map_err(open_err)?;
        let meta = db.open_tree("meta").map_err(open_err)?;
        let jobs = db.open_tree("jobs").map_err(open_err)?;
        let requests = db.open_tree("requests").map_err(open_err)?;
        match meta.get("schema_version").map_err(open_err)? {
            Some(v) => {
                let found = String::from_utf8_lossy(&v).into_owned();
                if found != SCHEMA_VERSION.to_string() {
                    return Err(StoreError::Schema { path, found });
                }
            }
            None => {
                if !nodes.is_empty() || !events.is_empty() {
                    return Err(StoreError::Corrupt {
                        path,
                        detail: "records without a schema version".to_owned(),
                    });
                }
                if was_initialized {
                    return Err(StoreError::Corrupt {
                        path,
                        detail: format!(
                            "the store was initialised ({INITIALIZED_MARKER} exists) but its schema version is gone: truncated or damaged"
                        ),
                    });
                }
                meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
        }
        if !was_initialized {
            write_marker(&marker).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                detail: format!("cannot write {}: {e}", marker.display()),
            })?;
        }
        let marker_err = |e: std::io::Error| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("cannot read {INITIALIZED_MARKER}: {e}"),
        };
        let marker_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&marker)
            .map_err(marker_err)?;
        let mut mark = [0u8; 8];
        // Empty (a marker from before the mark existed, or no event yet): 0.
        let committed_seq =
            match std::os::unix::fs::FileExt::read_exact_at(&marker_file, &mut mark, 0) {
                Ok(()) => u64::from_le_bytes(mark),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(marker_err(e)),
            };
        Ok(SledStore {
            path,
            db,
            nodes,
            events,
            jobs,
            meta,
            requests,
            marker: marker_file,
            committed_seq,
        })
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }
}

impl Store for SledStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let mut persisted = Persisted::default();
        for item in self.nodes.iter() {
            let (key, value) = item.map_err(|e| self.corrupt(e.to_string()))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record: NodeRecord = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("node record '{key}': {e}")))?;
            if record.id != key {
                return Err(self.corrupt(format!("node record '{key}' holds id '{}'", record.id)));
            }
            persisted.nodes.push(record);
        }
        for item in self.events.iter() {
            let (key, value) = item.map_err(|e| self.corrupt(e.to_string()))?;
            let seq = <[u8; 8]>::try_from(key.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt(format!("event key of {} bytes", key.len())))?;
            let event: Event = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("event {seq}: {e}")))?;
            if event.seq != seq {
                return Err(self.corrupt(format!("event key {seq} holds seq {}", event.seq)));
            }
            persisted.events.push(event);
        }
        let newest = persisted.events.last().map_or(0, |e| e.seq);
        if newest < self.committed_seq {
            return Err(self.corrupt(format!(
                "truncated: its newest event is #{newest} but event #{} was committed ({INITIALIZED_MARKER})",
                self.committed_seq
            )));
        }
        for item in self.jobs.iter() {
            let (key, value) = item.map_err(|e| self.corrupt(e.to_string()))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record: JobRecord = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("job record '{key}': {e}")))?;
            if record.spec.name != key {
                return Err(self.corrupt(format!(
                    "job record '{key}' holds job '{}'",
                    record.spec.name
                )));
            }
            persisted.jobs.push(record);
        }
        if let Some(value) = self
            .meta
            .get("breaker")
            .map_err(|e| self.corrupt(e.to_string()))?
        {
            let breaker: BreakerRecord = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("breaker record: {e}")))?;
            persisted.breaker = Some(breaker);
        }
        if let Some(value) = self
            .meta
            .get("last_generation")
            .map_err(|e| self.corrupt(e.to_string()))?
        {
            let generation: u64 = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("generation counter: {e}")))?;
            persisted.last_generation = Some(generation);
        }
        for item in self.requests.iter() {
            let (key, value) = item.map_err(|e| self.corrupt(e.to_string()))?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let record: RequestRecord = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("request record '{key}': {e}")))?;
            persisted.requests.push(record);
        }
        persisted.requests.sort_by_key(|r| r.at);
        Ok(persisted)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut node_batch = sled::Batch::default();
        let mut event_batch = sled::Batch::default();
        let mut job_batch = sled::Batch::default();
        let mut meta_batch = sled::Batch::default();
        let mut request_batch = sled::Batch::default();
        let mut trim_through = None;
        let mut newest_event = None;
        for change in changes {
            match change {
                Change::PutNode(record) => {
                    let value = serde_json::to_vec(record).map_err(|e| {
                        StoreError::Write(format!("encoding node {}: {e}", record.id))
                    })?;
                    node_batch.insert(record.id.as_bytes(), value);
                }
                Change::DeleteNode(id) => node_batch.remove(id.as_bytes()),
                Change::AppendEvent(event) => {
                    let value = serde_json::to_vec(event).map_err(|e| {
                        StoreError::Write(format!("encoding event {}: {e}", event.seq))
                    })?;
                    event_batch.insert(&event.seq.to_be_bytes(), value);
                    newest_event = newest_event.max(Some(event.seq));
                }
                Change::TrimEventsThrough(seq) => trim_through = Some(*seq),
                Change::PutJob(record) => {
                    let value = serde_json::to_vec(record).map_err(|e| {
                        StoreError::Write(format!("encoding job {}: {e}", record.spec.name))
                    })?;
                    job_batch.insert(record.spec.name.as_bytes(), value);
                }
                Change::PutBreaker(breaker) => {
                    let value = serde_json::to_vec(breaker)
                        .map_err(|e| StoreError::Write(format!("encoding breaker: {e}")))?;
                    meta_batch.insert("breaker", value);
                }
                Change::PutLastGeneration(generation) => {
                    let value = serde_json::to_vec(generation).map_err(|e| {
                        StoreError::Write(format!("encoding the generation counter: {e}"))
                    })?;
                    meta_batch.insert("last_generation", value);
                }
                Change::RememberRequest(record) => {
                    let value = serde_json::to_vec(record).map_err(|e| {
                        StoreError::Write(format!("encoding request {}: {e}", record.id))
                    })?;
                    request_batch.insert(record.id.as_bytes(), value);
                }
                Change::ForgetRequest(id) => request_batch.remove(id.as_bytes()),
            }
        }
        if let Some(seq) = trim_through {
            for key in self.events.range(..=seq.to_be_bytes()).keys() {
                let key = key.map_err(|e| StoreError::Write(e.to_string()))?;
                event_batch.remove(key);
            }
        }
        use sled::Transactional;
        (
            &self.nodes,
            &self.events,
            &self.jobs,
            &self.meta,
            &self.requests,
        )
            .transaction(|(nodes, events, jobs, meta, requests)| {
                nodes.apply_batch(&node_batch)?;
                events.apply_batch(&event_batch)?;
                jobs.apply_batch(&job_batch)?;
                meta.apply_batch(&meta_batch)?;
                requests.apply_batch(&request_batch)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Write(format!("{e:?}")))?;
        self.db
            .flush()
            .map_err(|e| StoreError::Write(format!("flush: {e}")))?;
        if let Some(seq) = newest_event {
            // After the flush: the mark may lag the store, never lead it.
            std::os::unix::fs::FileExt::write_all_at(&self.marker, &u64::to_le_bytes(seq), 0)
                .and_then(|()| self.marker.sync_data())
                .map_err(|e| StoreError::Write(format!("{INITIALIZED_MARKER}: {e}")))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------

/// In-memory store for tests; `fail_writes` simulates a broken disk.
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub state: Persisted,
    pub fail_writes: bool,
    pub commits: usize,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        Ok(self.state.clone())
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if self.fail_writes {
            return Err(StoreError::Write("simulated write failure".to_owned()));
        }
        for change in changes {
            match change {
                Change::PutNode(record) => {
                    self.state.nodes.retain(|n| n.id != record.id);
                    self.state.nodes.push(record.clone());
                    self.state.nodes.sort_by(|a, b| a.id.cmp(&b.id));
                }
                Change::DeleteNode(id) => self.state.nodes.retain(|n| n.id != *id),
                Change::AppendEvent(e) => self.state.events.push(e.clone()),
                Change::TrimEventsThrough(seq) => self.state.events.retain(|e| e.seq > *seq),
                Change::PutJob(record) => {
                    self.state.jobs.retain(|j| j.spec.name != record.spec.name);
                    self.state.jobs.push((**record).clone());
                }
                Change::PutBreaker(b) => self.state.breaker = Some(b.clone()),
                Change::PutLastGeneration(g) => self.state.last_generation = Some(*g),
                Change::RememberRequest(r) => {
                    self.state.requests.retain(|x| x.id != r.id);
                    self.state.requests.push(r.clone());
                }
                Change::ForgetRequest(id) => self.state.requests.retain(|x| x.id != *id),
            }
        }
        self.commits += 1;
        Ok(())
    }
}

/// What every backend must do: test bodies shared by the backends' tests,
/// each generic over a [`contract::Backend`] that opens the store (again,
/// as a restarted supd would) and damages it behind its back.
#[cfg(test)]
pub(crate) mod contract {
    use super::*;
    use sup_core::{Action, CordonRecord, Engine, EngineConfig, EventKind};

    /// A record written raw, behind the store's back.
    pub(crate) enum Raw<'a> {
        Node(&'a str),
        Event(u64),
        Meta(&'a str),
    }

    pub(crate) trait Backend {
        type S: Store;
        /// Opens the store, as a (re)started supd does.
        fn open(&self) -> Result<Self::S, StoreError>;
        /// Writes `value` as the raw record `raw` of `store`.
        fn put_raw(&self, store: &Self::S, raw: Raw<'_>, value: &[u8]);
    }

    pub(crate) fn is_corrupt(e: &StoreError) -> bool {
        matches!(
            e,
            StoreError::Corrupt { .. } | StoreError::EtcdCorrupt { .. }
        )
    }

    pub(crate) fn record(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.to_owned(),
            address: "10.0.0.1".into(),
            hostname: "h".into(),
            agent_version: "0.1.0".into(),
            gpu_backend: "sim".into(),
            instance_id: "i".into(),
            gpus: vec![],
            registered_at: 1,
            joined: true,
            cordon: Some(CordonRecord {
                validation: None,
                reason: "r".into(),
                by: "b".into(),
                at: 2,
            }),
            suspect: None,
            drain: None,
            scheduler_name: None,
        }
    }

    pub(crate) fn event(seq: u64) -> Event {
        Event {
            seq,
            at: seq as i64,
            kind: EventKind::NodeCordoned,
            node: Some("n1".into()),
            job: None,
            reason: "r".into(),
            recovery_ms: None,
        }
    }

    pub(crate) fn request(id: &str, at: i64) -> RequestRecord {
        RequestRecord {
            id: id.to_owned(),
            at,
            kind: "cordon".into(),
            target: "n1".into(),
            message: "node n1 cordoned".into(),
        }
    }

    /// A job record as the engine writes it at submission.
    pub(crate) fn job(name: &str) -> JobRecord {
        let text = format!(
            "name = \"{name}\"\ncommand = [\"true\"]\nnodes = 1\ngpus_per_node = 8\n\
             checkpoint_dir = \"/ckpt/{name}\"\n"
        );
        let spec = crate::jobspec::parse(&text).expect("job spec");
        let mut engine = Engine::restore(EngineConfig::default(), Persisted::default(), 1);
        engine.submit_job(1, spec, &text, "tester").expect("submit");
        std::iter::from_fn(|| engine.poll_action())
            .find_map(|a| match a {
                Action::Persist(Change::PutJob(record)) => Some(*record),
                _ => None,
            })
            .expect("a submitted job is persisted")
    }

    pub(crate) fn round_trips_nodes_and_events_across_reopen(b: &impl Backend) {
        {
            let mut store = b.open().expect("open");
            store
                .commit(&[
                    Change::PutNode(record("n1")),
                    Change::AppendEvent(event(1)),
                    Change::AppendEvent(event(2)),
                    Change::AppendEvent(event(3)),
                ])
                .expect("commit");
            store.commit(&[Change::TrimEventsThrough(1)]).expect("trim");
        }
        let loaded = b.open().expect("reopen").load().expect("load");
        assert_eq!(loaded.nodes, vec![record("n1")]);
        assert_eq!(
            loaded.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    pub(crate) fn the_generation_counter_and_the_breaker_window_survive_a_reopen(b: &impl Backend) {
        let breaker = sup_core::BreakerRecord {
            open: true,
            reason: "4 automatic cordons".into(),
            since: 9,
            recent_cordons: vec![5, 7],
            held_back: [("n3".to_owned(), "Xid 79".to_owned())].into(),
        };
        {
            let mut store = b.open().expect("open");
            store
                .commit(&[
                    Change::AppendEvent(event(1)),
                    Change::PutLastGeneration(41),
                    Change::PutLastGeneration(42),
                    Change::PutBreaker(breaker.clone()),
                ])
                .expect("commit");
        }
        let loaded = b.open().expect("reopen").load().expect("load");
        assert_eq!(loaded.last_generation, Some(42));
        assert_eq!(loaded.breaker, Some(breaker));
    }

    pub(crate) fn jobs_requests_and_deletions_round_trip_the_last_write_winning(b: &impl Backend) {
        let (a, z) = (job("job-a"), job("job-z"));
        let mut a2 = a.clone();
        a2.generation = 3;
        a2.nodes = vec!["n1".into()];
        {
            let mut store = b.open().expect("open");
            store
                .commit(&[
                    Change::RememberRequest(request("req-2", 20)),
                    Change::RememberRequest(request("req-1", 10)),
                    Change::PutNode(record("n1")),
                    Change::PutNode(record("n2")),
                    Change::PutJob(Box::new(z.clone())),
                    Change::PutJob(Box::new(a)),
                ])
                .expect("commit");
            // One commit touching keys twice: the last write wins.
            let mut n1 = record("n1");
            n1.cordon = None;
            store
                .commit(&[
                    Change::RememberRequest(request("req-3", 30)),
                    Change::PutJob(Box::new(a2.clone())),
                    Change::DeleteNode("n2".into()),
                    Change::PutNode(record("n3")),
                    Change::DeleteNode("n3".into()),
                    Change::PutNode(record("n1")),
                    Change::PutNode(n1),
                    Change::ForgetRequest("req-2".into()),
                    Change::ForgetRequest("never-remembered".into()),
                ])
                .expect("commit");
        }
        let loaded = b.open().expect("reopen").load().expect("load");
        let mut n1 = record("n1");
        n1.cordon = None;
        assert_eq!(loaded.nodes, vec![n1]);
        assert_eq!(loaded.jobs, vec![a2, z], "by name");
        assert_eq!(
            loaded
                .requests
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>(),
            vec!["req-1", "req-3"],
            "oldest first"
        );
        assert_eq!(loaded.requests[0], request("req-1", 10));
    }

    /// 2,048 nodes registering after a failover make commits this large:
    /// more than etcd takes in one transaction.
    pub(crate) fn a_commit_of_hundreds_of_changes_lands_whole(b: &impl Backend) {
        let mut changes = vec![Change::RememberRequest(request("req-big", 1))];
        for i in 0..300u64 {
            changes.push(Change::PutNode(record(&format!("node-{i:04}"))));
            changes.push(Change::AppendEvent(event(i + 1)));
        }
        changes.push(Change::TrimEventsThrough(100));
        changes.push(Change::PutLastGeneration(9));
        {
            let mut store = b.open().expect("open");
            store.commit(&changes).expect("commit");
            store
                .commit(&[
                    Change::AppendEvent(event(301)),
                    Change::TrimEventsThrough(250),
                ])
                .expect("trim");
        }
        let loaded = b.open().expect("reopen").load().expect("load");
        assert_eq!(loaded.nodes.len(), 300);
        assert_eq!(loaded.nodes[299], record("node-0299"));
        assert_eq!(
            loaded.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (251..=301).collect::<Vec<_>>()
        );
        assert_eq!(loaded.last_generation, Some(9));
        assert_eq!(loaded.requests, vec![request("req-big", 1)]);
    }

    /// Returns the error for the backend's own checks (where it names).
    pub(crate) fn an_undecodable_record_is_corrupt_naming_it(b: &impl Backend) -> StoreError {
        {
            let store = b.open().expect("open");
            b.put_raw(&store, Raw::Node("n1"), b"{not json");
        }
        let err = b
            .open()
            .and_then(|s| s.load())
            .expect_err("must fail closed");
        assert!(is_corrupt(&err), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("node record '") && msg.contains("n1'"),
            "{msg}"
        );
        assert!(msg.contains("refusing to serve"), "{msg}");
        err
    }

    pub(crate) fn an_event_under_the_wrong_key_is_corrupt(b: &impl Backend) {
        {
            let mut store = b.open().expect("open");
            store
                .commit(&[Change::AppendEvent(event(1))])
                .expect("commit");
            let moved = serde_json::to_vec(&event(1)).expect("json");
            b.put_raw(&store, Raw::Event(7), &moved);
        }
        let err = b
            .open()
            .and_then(|s| s.load())
            .expect_err("must fail closed");
        assert!(is_corrupt(&err), "{err}");
        assert!(err.to_string().contains("holds seq 1"), "{err}");
    }

    pub(crate) fn another_schema_version_is_refused(b: &impl Backend) {
        {
            let mut store = b.open().expect("open");
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit");
            b.put_raw(&store, Raw::Meta("schema_version"), b"2");
        }
        let err = b.open().err().expect("must refuse");
        assert!(
            matches!(
                err,
                StoreError::Schema { .. } | StoreError::EtcdSchema { .. }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("has schema version 2, this supd understands 1"),
            "{err}"
        );
    }

    /// Runs every shared body, each on a fresh store from `fresh`.
    #[macro_export]
    macro_rules! store_contract_tests {
        ($fresh:expr) => {
            #[test]
            fn round_trips_nodes_and_events_across_reopen() {
                $crate::store::contract::round_trips_nodes_and_events_across_reopen(&$fresh());
            }
            #[test]
            fn the_generation_counter_and_the_breaker_window_survive_a_reopen() {
                $crate::store::contract::the_generation_counter_and_the_breaker_window_survive_a_reopen(&$fresh());
            }
            #[test]
            fn jobs_requests_and_deletions_round_trip_the_last_write_winning() {
                $crate::store::contract::jobs_requests_and_deletions_round_trip_the_last_write_winning(&$fresh());
            }
            #[test]
            fn a_commit_of_hundreds_of_changes_lands_whole() {
                $crate::store::contract::a_commit_of_hundreds_of_changes_lands_whole(&$fresh());
            }
            #[test]
            fn an_event_under_the_wrong_key_is_corrupt() {
                $crate::store::contract::an_event_under_the_wrong_key_is_corrupt(&$fresh());
            }
            #[test]
            fn another_schema_version_is_refused() {
                $crate::store::contract::another_schema_version_is_refused(&$fresh());
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::contract::{self, event, record, Raw};
    use super::*;

    /// A sled store in a temporary data dir.
    struct Sled(tempfile::TempDir);

    fn sled() -> Sled {
        Sled(tempfile::tempdir().expect("tempdir"))
    }

    impl contract::Backend for Sled {
        type S = SledStore;

        fn open(&self) -> Result<SledStore, StoreError> {
            SledStore::open(self.0.path())
        }

        fn put_raw(&self, store: &SledStore, raw: Raw<'_>, value: &[u8]) {
            match raw {
                Raw::Node(id) => store.nodes.insert(id, value),
                Raw::Event(seq) => store.events.insert(seq.to_be_bytes(), value),
                Raw::Meta(key) => store.meta.insert(key, value),
            }
            .expect("insert");
            store.db.flush().expect("flush");
        }
    }

    crate::store_contract_tests!(sled);

    #[test]
    fn an_initialised_store_that_opens_empty_is_corrupt_not_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = SledStore::open(dir.path()).expect("open");
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit");
        }
        // What sled's recovery leaves of a wrecked log: nothing at all.
        std::fs::remove_dir_all(dir.path().join("state")).expect("wipe");
        let err = SledStore::open(dir.path())
            .err()
            .expect("must not start over");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("schema version is gone"), "{err}");
    }

    #[test]
    fn a_store_missing_committed_events_is_truncated_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = SledStore::open(dir.path()).expect("open");
            store
                .commit(&[Change::AppendEvent(event(1)), Change::AppendEvent(event(2))])
                .expect("commit");
            // What a truncated log loses: the newest event.
            store.events.remove(2u64.to_be_bytes()).expect("remove");
            store.db.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).err().expect("must fail closed");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("truncated: its newest event is #1 but event #2 was committed"),
            "{err}"
        );
    }

    #[test]
    fn undecodable_record_is_reported_as_corrupt_naming_it() {
        let b = sled();
        // Found already by the verification at open, on a scratch copy;
        // the error still names the real store.
        let err = contract::an_undecodable_record_is_corrupt_naming_it(&b);
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("node record 'n1'"), "{err}");
        assert!(
            err.to_string()
                .contains(&b.0.path().join("state").display().to_string()),
            "{err}"
        );
    }
}
