//! Durable state behind a small trait, so the engine never sees sled.
//!
//! Layout (sled 0.34): tree `nodes` (node id -> JSON `NodeRecord`), tree
//! `events` (big-endian seq -> JSON `Event`), tree `jobs` (job name -> JSON
//! `JobRecord`), tree `meta` (`schema_version`, `breaker`).
//! Every record is decoded at open: a store that does not decode is reported
//! as corrupt and never served or overwritten (fail closed).

use std::path::{Path, PathBuf};

use crate::engine::{Breaker, Change, Event, JobRecord, NodeRecord, Persisted};

const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the state store at {path} is corrupt ({detail}); refusing to start. Restore it from a backup or move it aside; supd will not overwrite it")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the state store at {path} has schema version {found}, this supd understands {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: String },
    #[error("writing the state store failed: {0}")]
    Write(String),
}

pub trait Store: Send + 'static {
    fn load(&self) -> Result<Persisted, StoreError>;
    /// Applies the changes atomically and makes them durable before it
    /// returns Ok.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------

pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    nodes: sled::Tree,
    events: sled::Tree,
    jobs: sled::Tree,
    meta: sled::Tree,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("state");
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(&path)
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
                meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())
                    .map_err(open_err)?;
                db.flush().map_err(open_err)?;
            }
        }
        Ok(SledStore {
            path,
            db,
            nodes,
            events,
            jobs,
            meta,
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
            let breaker: Breaker = serde_json::from_slice(&value)
                .map_err(|e| self.corrupt(format!("breaker record: {e}")))?;
            persisted.breaker = Some(breaker);
        }
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
        let mut trim_through = None;
        for change in changes {
            match change {
                Change::PutNode(record) => {
                    let value = serde_json::to_vec(record).map_err(|e| {
                        StoreError::Write(format!("encoding node {}: {e}", record.id))
                    })?;
                    node_batch.insert(record.id.as_bytes(), value);
                }
                Change::AppendEvent(event) => {
                    let value = serde_json::to_vec(event).map_err(|e| {
                        StoreError::Write(format!("encoding event {}: {e}", event.seq))
                    })?;
                    event_batch.insert(&event.seq.to_be_bytes(), value);
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
            }
        }
        if let Some(seq) = trim_through {
            for key in self.events.range(..=seq.to_be_bytes()).keys() {
                let key = key.map_err(|e| StoreError::Write(e.to_string()))?;
                event_batch.remove(key);
            }
        }
        use sled::Transactional;
        (&self.nodes, &self.events, &self.jobs, &self.meta)
            .transaction(|(nodes, events, jobs, meta)| {
                nodes.apply_batch(&node_batch)?;
                events.apply_batch(&event_batch)?;
                jobs.apply_batch(&job_batch)?;
                meta.apply_batch(&meta_batch)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Write(format!("{e:?}")))?;
        self.db
            .flush()
            .map_err(|e| StoreError::Write(format!("flush: {e}")))?;
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
                Change::AppendEvent(e) => self.state.events.push(e.clone()),
                Change::TrimEventsThrough(seq) => self.state.events.retain(|e| e.seq > *seq),
                Change::PutJob(record) => {
                    self.state.jobs.retain(|j| j.spec.name != record.spec.name);
                    self.state.jobs.push((**record).clone());
                }
                Change::PutBreaker(b) => self.state.breaker = Some(b.clone()),
            }
        }
        self.commits += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{CordonRecord, EventKind};

    fn record(id: &str) -> NodeRecord {
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
                reason: "r".into(),
                by: "b".into(),
                at: 2,
            }),
        }
    }

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at: seq as i64,
            kind: EventKind::NodeCordoned,
            node: Some("n1".into()),
            job: None,
            reason: "r".into(),
        }
    }

    #[test]
    fn sled_round_trips_nodes_and_events_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut store = SledStore::open(dir.path()).expect("open");
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
        let store = SledStore::open(dir.path()).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(loaded.nodes, vec![record("n1")]);
        assert_eq!(
            loaded.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
    }

    #[test]
    fn undecodable_record_is_reported_as_corrupt_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path()).expect("open");
            store.nodes.insert("n1", &b"{not json"[..]).expect("insert");
            store.db.flush().expect("flush");
        }
        let store = SledStore::open(dir.path()).expect("reopen");
        let err = store.load().expect_err("must fail closed");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("node record 'n1'"), "{err}");
    }
}
