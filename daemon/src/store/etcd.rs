//! The etcd store backend: the same records as [`super::SledStore`], one
//! key per record under a prefix, in an etcd cluster (v3 API), for supd
//! replicas (leader election and fencing come in a later step on top of
//! this; see "the fencing hook" below).
//!
//! # Key layout
//!
//! Under `prefix` (`[store] etcd_prefix`, default `/sup/`), values JSON as
//! in sled, which mirrors sled's trees one to one:
//!
//! | key                            | value           | sled tree / key            |
//! | ------------------------------ | --------------- | -------------------------- |
//! | `meta/schema_version`          | `1` (text)      | `meta` / `schema_version`  |
//! | `meta/breaker`                 | `BreakerRecord` | `meta` / `breaker`         |
//! | `meta/last_generation`         | `u64`           | `meta` / `last_generation` |
//! | `nodes/<node id>`              | `NodeRecord`    | `nodes`                    |
//! | `jobs/<job name>`              | `JobRecord`     | `jobs`                     |
//! | `events/<seq, 20 digits>`      | `Event`         | `events` (big-endian seq)  |
//! | `requests/<client request id>` | `RequestRecord` | `requests`                 |
//!
//! Event keys are zero-padded decimal so that etcd's byte order is seq
//! order, and trimming the log (`TrimEventsThrough`) is one range delete.
//! Any other key under the prefix makes the store corrupt: the prefix is
//! supd's alone (give every cluster its own).
//!
//! # Transactions
//!
//! A commit's changes are folded first: one operation per key, the last
//! write winning (etcd refuses a transaction that touches a key twice),
//! appended events the same commit trims are dropped, and a trim is one
//! range delete. A commit of up to [`MAX_TXN_OPS`] operations (and
//! [`MAX_TXN_BYTES`]) is **one etcd transaction**: atomic, as a sled
//! commit. Larger ones (2,048 nodes registering at once after a failover)
//! are split into several transactions rather than packed into bigger
//! values: one key per record keeps every write small and a future watch
//! per record precise, and etcd's limits (128 operations, 1.5 MiB per
//! request by default) are the operator's to keep. The split is ordered so
//! that a supd that dies between two of them leaves a state that is safe to
//! resume from (nothing of such a commit was acknowledged yet):
//!
//! 1. the generation counter first: ahead of the jobs is harmless (a
//!    generation skipped), behind them never happens;
//! 2. then the records in the order the engine decided them;
//! 3. the remembered client request ids last: a retried request is never
//!    answered "already applied" for an effect that did not land.
//!
//! Every operation is idempotent (puts of whole records, deletes), so a
//! transaction whose answer was lost (a member killed mid-request) is sent
//! again until [`EtcdOptions::commit_deadline`]; past it the commit fails
//! and supd stops serving (fail closed), as on a sled write error.
//!
//! # The fencing hook
//!
//! Every transaction is built by [`EtcdStore::txn`], with no comparison
//! today. Leader election will add a `Compare` there (target `CREATE`,
//! result `EQUAL`, key: its election key, `create_revision`: its revision),
//! so that each write lands only while this replica still leads, and treat
//! `TxnResponse::succeeded == false` as "deposed": the split commits stay
//! safe with it, since each part is fenced alike.
//!
//! # Sync over async
//!
//! [`Store`] is synchronous and called from the state actor, a tokio task
//! on supd's multi-threaded runtime (and from tests, on plain threads). The
//! etcd client ([`client`]: tonic stubs generated from our subset of
//! etcd's API, `proto/proto/etcd/v3/`) is async. It runs on a thread of its
//! own with a current-thread runtime ([`Bridge`]): its connections and
//! (later) the leader lease's keep-alives never depend on supd's runtime
//! being responsive, and the store works the same from any caller. The caller
//! waits for the answer inside `tokio::task::block_in_place` when it is on
//! a multi-threaded runtime, so the worker's other tasks (agent streams)
//! move to another worker meanwhile; elsewhere it simply blocks. Plain
//! `Handle::block_on` would panic inside the runtime, and `block_in_place`
//! alone panics on a current-thread runtime.

use std::future::Future;
use std::time::{Duration, Instant};

use sup_core::{BreakerRecord, Change, Event, JobRecord, NodeRecord, Persisted, RequestRecord};
use sup_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use sup_proto::etcd::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use sup_proto::transport::ClientTlsFiles;

use super::{Store, StoreError, SCHEMA_VERSION};

mod client;
pub mod election;

use client::{Client, Kv};
use election::{Attempt, Candidate, Leadership, ELECTION_KEY};

/// What a standby knows while it campaigns.
#[derive(Debug, Clone, Copy)]
pub enum Standing<'a> {
    /// Another replica leads (`None`: none known right now).
    Follows(Option<&'a Candidate>),
    /// etcd did not answer the last attempt: why.
    Unreachable(&'a str),
}

/// etcd's default `--max-txn-ops`: operations per transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per transaction, well below etcd's default
/// `--max-request-bytes` (1.5 MiB) to leave room for framing.
pub const MAX_TXN_BYTES: usize = 1024 * 1024;
/// Keys per page when loading.
const PAGE_KEYS: i64 = 1000;

const SCHEMA_KEY: &str = "meta/schema_version";
const BREAKER_KEY: &str = "meta/breaker";
const GENERATION_KEY: &str = "meta/last_generation";
const NODES: &str = "nodes/";
const JOBS: &str = "jobs/";
const EVENTS: &str = "events/";
const REQUESTS: &str = "requests/";

/// How the etcd store reaches etcd: transport security and timeouts.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// Mutual TLS (`https://` endpoints); `None` for `http://`.
    pub tls: Option<ClientTlsFiles>,
    /// The first attempt of a write gets this long, each retry twice as
    /// long as the one before, up to `request_timeout`. Short, because a
    /// write that went to a leader that just died is never answered: the
    /// commit then waits this, not `request_timeout`, before it is sent
    /// again (and lands at the new leader).
    pub first_attempt_timeout: Duration,
    /// The longest any one request to etcd may take (a whole load too).
    pub request_timeout: Duration,
    /// Opening a connection to a member.
    pub connect_timeout: Duration,
    /// Opening the store (connect, check the schema, load) is retried this
    /// long: etcd may still be electing a leader when supd starts.
    pub open_deadline: Duration,
    /// A commit's transactions are retried this long through transient
    /// errors (a member gone, a leader election) before the commit fails.
    /// Below systemd's watchdog (30 s in deploy/supd.service).
    pub commit_deadline: Duration,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            tls: None,
            first_attempt_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(8),
            connect_timeout: Duration::from_secs(2),
            open_deadline: Duration::from_secs(30),
            commit_deadline: Duration::from_secs(15),
        }
    }
}

pub struct EtcdStore {
    prefix: String,
    /// "etcd http://a:2379,http://b:2379 under '/sup/'", for errors.
    location: String,
    client: Client,
    options: EtcdOptions,
    bridge: Bridge,
    /// This replica's term, once it won the election ([`EtcdStore::campaign`]):
    /// every transaction is then fenced by it. `None`: unfenced (a store
    /// opened by `supd export`/`import`, or by tests).
    leadership: Option<Leadership>,
}

impl Drop for EtcdStore {
    /// A leader that stops cleanly gives its lease back, so a standby takes
    /// over at its next attempt instead of after the lease runs out.
    fn drop(&mut self) {
        if let Some(l) = self.leadership.take() {
            l.resign_flag();
            let (client, lease) = (self.client.clone(), l.lease);
            let _ = self
                .bridge
                .run(async move { election::revoke(&client, lease).await });
        }
    }
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The end of the key range of everything that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

fn event_key(seq: u64) -> String {
    format!("{EVENTS}{seq:020}")
}

/// Whether an error may pass when the request is sent again (to another
/// member, after a leader election). tonic reports a member it cannot
/// connect to as `Unavailable`, its own request timeout as `Cancelled`,
/// other transport failures (a connection lost mid-request) as `Unknown`;
/// a member without a leader answers `Unavailable`.
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Aborted
            | Code::Cancelled
            | Code::ResourceExhausted
            // A paged load whose revision was compacted meanwhile starts
            // over at the newest one.
            | Code::OutOfRange
    )
}

/// How long each attempt of a request may take, and until when to retry.
#[derive(Clone)]
struct Patience {
    first: Duration,
    most: Duration,
    deadline: Instant,
    /// A leader's writes: retried only while its lease holds (past it,
    /// they cannot land anyway, and the replica must step down).
    lease: Option<Leadership>,
}

/// Runs `attempt` on the current member until it succeeds, fails for good,
/// or the deadline passes. An attempt unanswered within its timeout (which
/// doubles from try to try) and transient failures are logged and retried,
/// on the next member, after a growing pause. Every request supd sends is
/// idempotent (whole records put, keys deleted, reads), so sending one
/// again is safe.
async fn retrying<T, F, Fut>(
    what: &str,
    patience: Patience,
    client: &Client,
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut(Kv) -> Fut,
    Fut: Future<Output = Result<T, tonic::Status>>,
{
    let mut pause = Duration::from_millis(50);
    let mut timeout = patience.first;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = patience.deadline.saturating_duration_since(Instant::now());
        let member = client.member();
        let url = &member.url;
        let outcome = match tokio::time::timeout(timeout.min(left), attempt(member.kv())).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(s)) if !transient(&s) => {
                return Err(format!(
                    "{what}: {url}: {} (after {tries} attempt(s))",
                    client::describe(&s)
                ))
            }
            Ok(Err(s)) => format!("{url}: {}", client::describe(&s)),
            Err(_) => format!("{url}: no answer within {:?}", timeout.min(left)),
        };
        client.skip(&member);
        if Instant::now() + pause >= patience.deadline {
            return Err(format!("{what}: {outcome} (after {tries} attempt(s))"));
        }
        if let Some(lease) = patience.lease.as_ref().filter(|l| !l.holds()) {
            return Err(format!(
                "{what}: {outcome} (after {tries} attempt(s)); not retried: {}",
                lease.why_not()
            ));
        }
        tracing::warn!(error = %outcome, tries, "etcd: {what} failed; retrying");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
        timeout = (timeout * 2).min(patience.most);
    }
}

/// The etcd client's own thread and runtime (see the module docs).
struct Bridge {
    handle: tokio::runtime::Handle,
    /// Dropped with the store: the thread's runtime stops, and with it
    /// every connection.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Bridge {
    fn start() -> std::io::Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("supd-etcd".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        Ok(Bridge {
            handle,
            _stop: stop,
        })
    }

    /// Runs `future` on the client's thread and waits for its output
    /// without stalling a tokio worker. `None`: the thread is gone.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        let wait = move || rx.recv().ok();
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        }
    }
}

/// A key and its value, as read.
type KeyValue = (Vec<u8>, Vec<u8>);

/// One operation of a folded commit.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Put(Vec<u8>),
    Delete,
    /// Every event key up to and including this seq.
    TrimEventsThrough(u64),
}

/// A commit folded to one operation per key, in the order it must be
/// written (see the module docs): keys relative to the prefix.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    ops: Vec<(String, Op)>,
}

fn encode<T: serde::Serialize>(
    what: impl FnOnce() -> String,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Write(format!("encoding {}: {e}", what())))
}

impl Plan {
    fn fold(changes: &[Change]) -> Result<Plan, StoreError> {
        // (rank, position of the last write) orders the keys.
        let mut latest: std::collections::HashMap<String, (u8, usize, Op)> =
            std::collections::HashMap::new();
        let mut trim: Option<(usize, u64)> = None;
        for (position, change) in changes.iter().enumerate() {
            let (rank, key, op) = match change {
                Change::PutNode(record) => (
                    1,
                    format!("{NODES}{}", record.id),
                    Op::Put(encode(|| format!("node {}", record.id), record)?),
                ),
                Change::DeleteNode(id) => (1, format!("{NODES}{id}"), Op::Delete),
                Change::AppendEvent(event) => (
                    1,
                    event_key(event.seq),
                    Op::Put(encode(|| format!("event {}", event.seq), event)?),
                ),
                Change::TrimEventsThrough(seq) => {
                    trim = Some((position, trim.map_or(*seq, |(_, t)| t.max(*seq))));
                    continue;
                }
                Change::PutJob(record) => (
                    1,
                    format!("{JOBS}{}", record.spec.name),
                    Op::Put(encode(|| format!("job {}", record.spec.name), record)?),
                ),
                Change::PutBreaker(breaker) => (
                    1,
                    BREAKER_KEY.to_owned(),
                    Op::Put(encode(|| "breaker".to_owned(), breaker)?),
                ),
                Change::PutLastGeneration(generation) => (
                    0,
                    GENERATION_KEY.to_owned(),
                    Op::Put(encode(|| "the generation counter".to_owned(), generation)?),
                ),
                Change::RememberRequest(record) => (
                    2,
                    format!("{REQUESTS}{}", record.id),
                    Op::Put(encode(|| format!("request {}", record.id), record)?),
                ),
                Change::ForgetRequest(id) => (2, format!("{REQUESTS}{id}"), Op::Delete),
            };
            latest.insert(key, (rank, position, op));
        }
        if let Some((_, through)) = trim {
            // Events the same commit appends and trims never land: the range
            // delete covers them, and etcd refuses a put inside a deleted
            // range in one transaction.
            latest.retain(|key, _| {
                key.strip_prefix(EVENTS)
                    .and_then(|seq| seq.parse::<u64>().ok())
                    .is_none_or(|seq| seq > through)
            });
        }
        let mut ordered: Vec<(u8, usize, String, Op)> = latest
            .into_iter()
            .map(|(key, (rank, position, op))| (rank, position, key, op))
            .collect();
        if let Some((position, through)) = trim {
            ordered.push((
                1,
                position,
                EVENTS.to_owned(),
                Op::TrimEventsThrough(through),
            ));
        }
        ordered.sort_by_key(|a| (a.0, a.1));
        Ok(Plan {
            ops: ordered
                .into_iter()
                .map(|(_, _, key, op)| (key, op))
                .collect(),
        })
    }

    /// The plan cut into transactions of at most `max_ops` operations and
    /// (unless one record alone is larger) `max_bytes`, in order.
    fn chunks(&self, max_ops: usize, max_bytes: usize) -> Vec<&[(String, Op)]> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, (key, op)) in self.ops.iter().enumerate() {
            let size = key.len()
                + match op {
                    Op::Put(v) => v.len(),
                    Op::Delete | Op::TrimEventsThrough(_) => 0,
                };
            if i > start && (i - start == max_ops || bytes + size > max_bytes) {
                out.push(&self.ops[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < self.ops.len() {
            out.push(&self.ops[start..]);
        }
        out
    }
}

impl EtcdStore {
    /// Connects to etcd, creates the store under `prefix` if there is none
    /// (an empty prefix), and checks the schema version of one that is
    /// there. Nothing else is read until [`Store::load`].
    pub fn open(
        endpoints: &[String],
        prefix: &str,
        options: EtcdOptions,
    ) -> Result<Self, StoreError> {
        let location = format!("etcd {} under '{prefix}'", endpoints.join(","));
        let unreachable = |detail: String| StoreError::Unreachable {
            location: location.clone(),
            detail,
        };
        // Read (and checked) here: a missing file is a settings error,
        // not an etcd that might answer if asked again.
        let tls = options
            .tls
            .as_ref()
            .map(sup_proto::transport::client_tls_config)
            .transpose()
            .map_err(|e| StoreError::Settings {
                location: location.clone(),
                detail: format!("store.etcd_tls: {e}"),
            })?;
        let bridge = Bridge::start()
            .map_err(|e| unreachable(format!("cannot start the etcd client thread: {e}")))?;
        let connect = client::ConnectOptions {
            connect_timeout: options.connect_timeout,
            request_timeout: options.request_timeout,
            tls,
        };
        let eps = endpoints.to_vec();
        // On the client's thread: the channels' tasks live on its runtime.
        let client = bridge
            .run(async move { Client::new(&eps, connect) })
            .ok_or_else(|| unreachable("the etcd client thread ended".to_owned()))?
            .map_err(|detail| StoreError::Settings {
                location: location.clone(),
                detail,
            })?;
        let store = EtcdStore {
            prefix: prefix.to_owned(),
            location,
            client,
            options,
            bridge,
            leadership: None,
        };
        store.initialise()?;
        Ok(store)
    }

    /// Campaigns for leadership until this replica wins (true) or `stop` is
    /// set (false); `standby` hears who leads meanwhile, or why etcd cannot
    /// say, each time that changes. Blocks: call from a blocking thread.
    /// Errors reaching etcd do not end the campaign (a standby waits out an
    /// etcd outage like any other).
    pub fn campaign(
        &mut self,
        me: &Candidate,
        ttl: Duration,
        stop: &std::sync::atomic::AtomicBool,
        mut standby: impl FnMut(Standing<'_>),
    ) -> bool {
        // A standby notices a lost lease within this of the key's deletion.
        let poll = (ttl / 6).clamp(Duration::from_millis(100), Duration::from_millis(500));
        let key = self.key(ELECTION_KEY).into_bytes();
        let mut last: Option<Result<Option<Candidate>, ()>> = None;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let (k, m) = (key.clone(), me.clone());
            let tried = self.call(move |client| async move {
                match election::holder(&client, k.clone()).await? {
                    Some(holder) => Ok(Attempt::Held(holder)),
                    None => election::attempt(&client, k, &m, ttl).await,
                }
            });
            match tried {
                Ok(Attempt::Won(leadership)) => {
                    tracing::info!(
                        id = %me.id,
                        term = leadership.create_revision,
                        lease = format!("{:x}", leadership.lease),
                        "etcd: this replica is the leader"
                    );
                    self.leadership = Some(leadership);
                    return true;
                }
                Ok(Attempt::Held(holder)) => {
                    if last.as_ref() != Some(&Ok(holder.clone())) {
                        standby(Standing::Follows(holder.as_ref()));
                        last = Some(Ok(holder));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "etcd: campaigning for leadership failed; retrying");
                    standby(Standing::Unreachable(&e));
                    last = Some(Err(()));
                }
            }
            std::thread::sleep(poll);
        }
        false
    }

    /// The replica that leads now, if any.
    pub fn leader(&self) -> Result<Option<Candidate>, StoreError> {
        let key = self.key(ELECTION_KEY).into_bytes();
        self.call(move |client| async move { election::leader(&client, key).await })
            .map_err(|detail| StoreError::Unreachable {
                location: self.location.clone(),
                detail,
            })
    }

    /// This replica's term, if it leads.
    pub fn leadership(&self) -> Option<&Leadership> {
        self.leadership.as_ref()
    }

    fn deposed(&self, why: String) -> StoreError {
        StoreError::Deposed(format!("{}: {why}", self.location))
    }

    /// Patience for writes (and small reads) from now for `deadline`.
    fn write_patience(&self, deadline: Duration) -> Patience {
        Patience {
            lease: self.leadership.clone(),
            first: self.options.first_attempt_timeout,
            most: self.options.request_timeout,
            deadline: Instant::now() + deadline,
        }
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::EtcdCorrupt {
            location: self.location.clone(),
            detail,
        }
    }

    /// Runs `f(client)` on the client's thread (see [`Bridge`]).
    fn call<T: Send + 'static, Fut>(&self, f: impl FnOnce(Client) -> Fut) -> Result<T, String>
    where
        Fut: Future<Output = Result<T, String>> + Send + 'static,
    {
        self.bridge
            .run(f(self.client.clone()))
            .unwrap_or_else(|| Err("the etcd client thread ended".to_owned()))
    }

    /// Writes the schema version into an empty prefix; checks it otherwise.
    fn initialise(&self) -> Result<(), StoreError> {
        let patience = self.write_patience(self.options.open_deadline);
        let prefix = self.prefix.clone().into_bytes();
        let schema_key = self.key(SCHEMA_KEY);
        let unreachable = |detail: String| StoreError::Unreachable {
            location: self.location.clone(),
            detail,
        };
        // Only into an empty prefix: every key under it at version 0 (etcd
        // checks a range comparison against each key, none being true).
        let create = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::Version.into(),
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                target_union: Some(TargetUnion::Version(0)),
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: schema_key.clone().into_bytes(),
                    value: SCHEMA_VERSION.to_string().into_bytes(),
                    ..PutRequest::default()
                })),
            }],
            failure: Vec::new(),
        };
        let get = RangeRequest {
            key: schema_key.clone().into_bytes(),
            ..RangeRequest::default()
        };
        let found = self
            .call(move |client| async move {
                let created =
                    retrying("creating the store", patience.clone(), &client, |mut kv| {
                        let txn = create.clone();
                        async move { kv.txn(txn).await }
                    })
                    .await?;
                if created.into_inner().succeeded {
                    tracing::info!("etcd: created an empty store");
                }
                let got = retrying("reading the schema version", patience, &client, |mut kv| {
                    let get = get.clone();
                    async move { kv.range(get).await }
                })
                .await?;
                Ok(got.into_inner().kvs.into_iter().next().map(|kv| kv.value))
            })
            .map_err(unreachable)?;
        match found {
            Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => Ok(()),
            Some(v) => Err(StoreError::EtcdSchema {
                location: self.location.clone(),
                found: String::from_utf8_lossy(&v).into_owned(),
            }),
            None => Err(self.corrupt(format!(
                "records without a schema version ({schema_key} is missing)"
            ))),
        }
    }

    /// Every key and value under the prefix, read at one revision (a
    /// consistent snapshot however many pages it takes).
    fn read_all(&self) -> Result<Vec<KeyValue>, StoreError> {
        // A whole load is one attempt: no short first try.
        let patience = Patience {
            lease: None,
            first: self.options.request_timeout,
            most: self.options.request_timeout,
            deadline: Instant::now() + self.options.open_deadline,
        };
        let prefix = self.prefix.clone().into_bytes();
        let end = prefix_end(&prefix);
        self.call(move |client| async move {
            retrying("reading the store", patience, &client, |mut kv| {
                let (prefix, end) = (prefix.clone(), end.clone());
                async move {
                    let mut out = Vec::new();
                    let mut from = prefix;
                    // 0: the newest, for the first page; every later page at
                    // the first one's revision.
                    let mut revision = 0;
                    loop {
                        let page = kv
                            .range(RangeRequest {
                                key: from.clone(),
                                range_end: end.clone(),
                                limit: PAGE_KEYS,
                                revision,
                                ..RangeRequest::default()
                            })
                            .await?
                            .into_inner();
                        if revision == 0 {
                            revision = page.header.as_ref().map_or(0, |h| h.revision);
                        }
                        let Some(last) = page.kvs.last() else { break };
                        from = last.key.clone();
                        from.push(0);
                        out.extend(page.kvs.into_iter().map(|kv| (kv.key, kv.value)));
                        if !page.more {
                            break;
                        }
                    }
                    Ok(out)
                }
            })
            .await
        })
        .map_err(|detail| StoreError::Unreachable {
            location: self.location.clone(),
            detail,
        })
    }

    /// A transaction of `ops` (keys relative to the prefix), fenced by this
    /// replica's term when it leads ([`election`]).
    fn txn(&self, ops: &[(String, Op)]) -> TxnRequest {
        let success = ops
            .iter()
            .map(|(key, op)| {
                let request = match op {
                    Op::Put(value) => request_op::Request::RequestPut(PutRequest {
                        key: self.key(key).into_bytes(),
                        value: value.clone(),
                        ..PutRequest::default()
                    }),
                    Op::Delete => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                        key: self.key(key).into_bytes(),
                        ..DeleteRangeRequest::default()
                    }),
                    Op::TrimEventsThrough(seq) => {
                        let from = self.key(EVENTS).into_bytes();
                        let range_end = match seq.checked_add(1) {
                            Some(next) => self.key(&event_key(next)).into_bytes(),
                            None => prefix_end(&from),
                        };
                        request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key: from,
                            range_end,
                            ..DeleteRangeRequest::default()
                        })
                    }
                };
                RequestOp {
                    request: Some(request),
                }
            })
            .collect();
        TxnRequest {
            compare: self.leadership.iter().map(Leadership::fence).collect(),
            success,
            failure: Vec::new(),
        }
    }

    /// Writes raw bytes under the prefix, behind the store's back (tests
    /// that damage a store).
    #[cfg(test)]
    pub(crate) fn put_raw(&self, relative: &str, value: &[u8]) -> Result<(), String> {
        let put = PutRequest {
            key: self.key(relative).into_bytes(),
            value: value.to_vec(),
            ..PutRequest::default()
        };
        self.call(move |client| async move {
            client
                .member()
                .kv()
                .put(put)
                .await
                .map(|_| ())
                .map_err(|s| client::describe(&s))
        })
    }

    /// Deletes a key under the prefix, behind the store's back (tests).
    #[cfg(test)]
    pub(crate) fn delete_raw(&self, relative: &str) -> Result<(), String> {
        let delete = DeleteRangeRequest {
            key: self.key(relative).into_bytes(),
            ..DeleteRangeRequest::default()
        };
        self.call(move |client| async move {
            client
                .member()
                .kv()
                .delete_range(delete)
                .await
                .map(|_| ())
                .map_err(|s| client::describe(&s))
        })
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Persisted, StoreError> {
        let mut persisted = Persisted::default();
        let mut schema_seen = false;
        for (key, value) in self.read_all()? {
            let full = String::from_utf8_lossy(&key).into_owned();
            let Some(relative) = full.strip_prefix(&self.prefix) else {
                return Err(self.corrupt(format!("key '{full}' outside the prefix")));
            };
            let decode_err =
                |what: &str, e: serde_json::Error| self.corrupt(format!("{what} '{full}': {e}"));
            if relative == SCHEMA_KEY {
                schema_seen = true;
            } else if relative == ELECTION_KEY {
                // Who leads: no record of the state.
            } else if let Some(id) = relative.strip_prefix(NODES) {
                let record: NodeRecord =
                    serde_json::from_slice(&value).map_err(|e| decode_err("node record", e))?;
                if record.id != id {
                    return Err(
                        self.corrupt(format!("node record '{full}' holds id '{}'", record.id))
                    );
                }
                persisted.nodes.push(record);
            } else if let Some(seq) = relative.strip_prefix(EVENTS) {
                let seq: u64 = match seq.parse() {
                    Ok(n) if seq.len() == 20 => n,
                    _ => {
                        return Err(
                            self.corrupt(format!("event key '{full}' is not a 20-digit seq"))
                        )
                    }
                };
                let event: Event =
                    serde_json::from_slice(&value).map_err(|e| decode_err("event", e))?;
                if event.seq != seq {
                    return Err(self.corrupt(format!("event key '{full}' holds seq {}", event.seq)));
                }
                persisted.events.push(event);
            } else if let Some(name) = relative.strip_prefix(JOBS) {
                let record: JobRecord =
                    serde_json::from_slice(&value).map_err(|e| decode_err("job record", e))?;
                if record.spec.name != name {
                    return Err(self.corrupt(format!(
                        "job record '{full}' holds job '{}'",
                        record.spec.name
                    )));
                }
                persisted.jobs.push(record);
            } else if relative.starts_with(REQUESTS) {
                let record: RequestRecord =
                    serde_json::from_slice(&value).map_err(|e| decode_err("request record", e))?;
                persisted.requests.push(record);
            } else if relative == BREAKER_KEY {
                let breaker: BreakerRecord =
                    serde_json::from_slice(&value).map_err(|e| decode_err("breaker record", e))?;
                persisted.breaker = Some(breaker);
            } else if relative == GENERATION_KEY {
                let generation: u64 = serde_json::from_slice(&value)
                    .map_err(|e| decode_err("generation counter", e))?;
                persisted.last_generation = Some(generation);
            } else {
                return Err(self.corrupt(format!(
                    "unexpected key '{full}': the prefix belongs to supd alone \
                     (give each cluster its own store.etcd_prefix)"
                )));
            }
        }
        if !schema_seen {
            // Opened a moment ago with one: someone deleted it meanwhile.
            return Err(self.corrupt(format!(
                "records without a schema version ({} is missing)",
                self.key(SCHEMA_KEY)
            )));
        }
        // Keys come in byte order: node ids and job names sorted, events by
        // seq (20 digits). Requests as sled returns them: oldest first.
        persisted.requests.sort_by_key(|r| r.at);
        Ok(persisted)
    }

    fn fenced(&self) -> Result<(), StoreError> {
        match &self.leadership {
            Some(l) if !l.holds() => Err(self.deposed(l.why_not())),
            _ => Ok(()),
        }
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        if let Some(l) = &self.leadership {
            if !l.holds() {
                return Err(self.deposed(l.why_not()));
            }
        }
        let started = Instant::now();
        let plan = Plan::fold(changes)?;
        let chunks = plan.chunks(MAX_TXN_OPS, MAX_TXN_BYTES);
        let patience = self.write_patience(self.options.commit_deadline);
        for (i, chunk) in chunks.iter().enumerate() {
            let txn = self.txn(chunk);
            let patience = patience.clone();
            let what = format!(
                "transaction {} of {} ({} operation(s), first key '{}')",
                i + 1,
                chunks.len(),
                chunk.len(),
                chunk.first().map_or("", |(k, _)| k.as_str())
            );
            let landed = self
                .call(move |client| async move {
                    retrying(&what, patience, &client, |mut kv| {
                        let txn = txn.clone();
                        async move { kv.txn(txn).await }
                    })
                    .await
                    .map(|answer| answer.into_inner().succeeded)
                })
                .map_err(|e| match &self.leadership {
                    Some(l) if !l.holds() => self.deposed(e),
                    _ => StoreError::Write(format!("{}: {e}", self.location)),
                })?;
            if !landed {
                // Only the fence compares anything.
                return Err(self.deposed(format!(
                    "another replica leads now (the election key is no longer this replica's term {}); \
                     transaction {} of {} was refused",
                    self.leadership.as_ref().map_or(0, |l| l.create_revision),
                    i + 1,
                    chunks.len()
                )));
            }
        }
        let took = started.elapsed();
        let bytes: usize = plan
            .ops
            .iter()
            .map(|(k, op)| match op {
                Op::Put(v) => k.len() + v.len(),
                _ => k.len(),
            })
            .sum();
        if took > Duration::from_secs(1) {
            tracing::warn!(
                ?took,
                operations = plan.ops.len(),
                transactions = chunks.len(),
                bytes,
                "etcd: a slow commit (every reply and agent message waits for it)"
            );
        } else {
            tracing::debug!(
                ?took,
                operations = plan.ops.len(),
                transactions = chunks.len(),
                bytes,
                "etcd: committed"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_core::{EventKind, RequestRecord};

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at: seq as i64,
            kind: EventKind::NodeCordoned,
            node: None,
            job: None,
            reason: "r".into(),
            recovery_ms: None,
        }
    }

    fn keys(plan: &Plan) -> Vec<String> {
        plan.ops.iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn a_commit_folds_to_one_operation_per_key_in_a_safe_order() {
        let request = RequestRecord {
            id: "req-1".into(),
            at: 1,
            kind: "cordon".into(),
            target: "n1".into(),
            message: "ok".into(),
        };
        // As the actor builds a batch: its request records first.
        let plan = Plan::fold(&[
            Change::RememberRequest(request),
            Change::AppendEvent(event(4)),
            Change::DeleteNode("n1".into()),
            Change::AppendEvent(event(5)),
            Change::PutLastGeneration(7),
            Change::TrimEventsThrough(4),
            Change::PutLastGeneration(8),
        ])
        .expect("fold");
        assert_eq!(
            keys(&plan),
            vec![
                "meta/last_generation",
                "nodes/n1",
                "events/00000000000000000005",
                "events/",
                "requests/req-1"
            ],
            "generation first, records in order, the appended-and-trimmed event dropped, \
             requests last"
        );
        assert_eq!(plan.ops[0].1, Op::Put(b"8".to_vec()), "the last write wins");
        assert_eq!(plan.ops[3].1, Op::TrimEventsThrough(4));
    }

    #[test]
    fn transactions_respect_etcd_limits_and_keep_the_order() {
        let changes: Vec<Change> = (1..=300).map(|s| Change::AppendEvent(event(s))).collect();
        let plan = Plan::fold(&changes).expect("fold");
        let chunks = plan.chunks(MAX_TXN_OPS, MAX_TXN_BYTES);
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            vec![128, 128, 44]
        );
        let flat: Vec<&(String, Op)> = chunks.iter().flat_map(|c| c.iter()).collect();
        assert_eq!(flat.len(), 300);
        assert!(flat.windows(2).all(|w| w[0].0 < w[1].0), "seq order kept");
        // By bytes: 100-byte values, 250 bytes a transaction.
        let plan = Plan {
            ops: (0..5)
                .map(|i| (format!("k{i}"), Op::Put(vec![b'x'; 100])))
                .collect(),
        };
        assert_eq!(
            plan.chunks(128, 250)
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        // A record larger than the byte budget still goes, alone.
        let plan = Plan {
            ops: vec![
                ("big".into(), Op::Put(vec![0; 400])),
                ("k".into(), Op::Delete),
            ],
        };
        assert_eq!(
            plan.chunks(128, 250)
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>(),
            vec![1, 1]
        );
    }

    /// The shared store tests and etcd's own, against a real etcd started
    /// by the end-to-end harness (one member per test, in its own temp
    /// dir; killed when the test ends, also when it fails).
    mod on_a_real_etcd {
        use super::*;
        use crate::store::contract::{self, record, Raw};
        use std::path::Path;
        use sup_e2e::etcd::EtcdCluster;

        const PREFIX: &str = "/sup-test/";

        /// Shortened, so a failing test says so quickly.
        fn options() -> EtcdOptions {
            EtcdOptions {
                open_deadline: Duration::from_secs(10),
                ..EtcdOptions::default()
            }
        }

        struct Etcd {
            // Dropped first: the members, then their directory.
            cluster: EtcdCluster,
            _dir: tempfile::TempDir,
        }

        fn etcd_with(members: usize) -> Etcd {
            let dir = tempfile::tempdir().expect("tempdir");
            let cluster = EtcdCluster::start(dir.path(), members)
                .expect("starting etcd (apt-get install etcd-server etcd-client)");
            Etcd { cluster, _dir: dir }
        }

        fn etcd() -> Etcd {
            etcd_with(1)
        }

        impl Etcd {
            fn open_at(&self, prefix: &str) -> Result<EtcdStore, StoreError> {
                EtcdStore::open(&self.cluster.endpoints(), prefix, options())
            }
        }

        impl contract::Backend for Etcd {
            type S = EtcdStore;

            fn open(&self) -> Result<EtcdStore, StoreError> {
                self.open_at(PREFIX)
            }

            fn put_raw(&self, store: &EtcdStore, raw: Raw<'_>, value: &[u8]) {
                let key = match raw {
                    Raw::Node(id) => format!("{NODES}{id}"),
                    Raw::Event(seq) => event_key(seq),
                    Raw::Meta(key) => format!("meta/{key}"),
                };
                store.put_raw(&key, value).expect("raw put");
            }
        }

        crate::store_contract_tests!(etcd);

        #[test]
        fn an_undecodable_record_is_corrupt_naming_its_key() {
            let b = etcd();
            let err = contract::an_undecodable_record_is_corrupt_naming_it(&b);
            assert!(matches!(err, StoreError::EtcdCorrupt { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("node record '/sup-test/nodes/n1'"), "{msg}");
            assert!(msg.contains(&b.cluster.endpoints()[0]), "names etcd: {msg}");
        }

        #[test]
        fn the_layout_is_one_key_per_record_under_the_prefix() {
            let b = etcd();
            let mut store = b.open_at(PREFIX).expect("open");
            store
                .commit(&[
                    Change::PutNode(record("n1")),
                    Change::AppendEvent(contract::event(12)),
                    Change::PutLastGeneration(3),
                ])
                .expect("commit");
            assert_eq!(
                b.cluster.keys(PREFIX).expect("keys"),
                vec![
                    "/sup-test/events/00000000000000000012",
                    "/sup-test/meta/last_generation",
                    "/sup-test/meta/schema_version",
                    "/sup-test/nodes/n1",
                ]
            );
            assert_eq!(
                b.cluster.get("/sup-test/meta/schema_version").expect("get"),
                Some("1".to_owned())
            );
        }

        /// etcd with `--client-cert-auth`: the store works over mutual TLS
        /// (and the election with it, on the same channels); every way of
        /// getting the certificates wrong fails, naming why.
        #[test]
        fn over_mutual_tls_the_store_works_and_wrong_certificates_are_refused() {
            let dir = tempfile::tempdir().expect("tempdir");
            let cluster = EtcdCluster::start_tls(dir.path(), 1)
                .expect("starting etcd (apt-get install etcd-server etcd-client)");
            let pki = cluster.tls.clone().expect("a TLS cluster");
            let endpoints = cluster.endpoints();
            assert!(endpoints[0].starts_with("https://"), "{endpoints:?}");
            let files = |ca: &Path, cert: &Path, key: &Path| ClientTlsFiles {
                ca: ca.to_owned(),
                cert: cert.to_owned(),
                key: key.to_owned(),
                server_name: None,
            };
            let open = |tls: Option<ClientTlsFiles>| {
                EtcdStore::open(
                    &endpoints,
                    PREFIX,
                    EtcdOptions {
                        tls,
                        open_deadline: Duration::from_secs(2),
                        ..EtcdOptions::default()
                    },
                )
            };

            let mut store = open(Some(files(&pki.ca, &pki.client_cert, &pki.client_key)))
                .expect("open over TLS");
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit over TLS");
            assert_eq!(store.load().expect("load").nodes.len(), 1);
            assert!(cluster
                .keys(PREFIX)
                .expect("keys")
                .contains(&"/sup-test/nodes/n1".to_owned()));

            // etcd's certificate is checked against the CA given.
            let err = open(Some(files(
                &pki.other_ca,
                &pki.client_cert,
                &pki.client_key,
            )))
            .expect_err("etcd's certificate is not from that CA");
            assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains(&endpoints[0]), "{msg}");
            assert!(msg.to_lowercase().contains("certificate"), "{msg}");

            // etcd refuses a client certificate from a CA it does not trust.
            let err = open(Some(files(
                &pki.ca,
                &pki.other_client_cert,
                &pki.other_client_key,
            )))
            .expect_err("etcd does not trust that client");
            assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
            assert!(err.to_string().contains(&endpoints[0]), "{err}");

            // A file that is not there: at once, named, not retried.
            let missing = dir.path().join("nope.pem");
            let started = Instant::now();
            let err = open(Some(files(&pki.ca, &missing, &pki.client_key)))
                .expect_err("no such certificate file");
            assert!(matches!(err, StoreError::Settings { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains("store.etcd_tls") && msg.contains(&missing.display().to_string()),
                "{msg}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );

            // No TLS files for an https:// endpoint: refused, never plaintext.
            let err = open(None).expect_err("https:// without TLS files");
            assert!(err.to_string().contains("no TLS files"), "{err}");
        }

        #[test]
        fn records_without_a_schema_version_are_corrupt_not_a_fresh_store() {
            let b = etcd();
            {
                let mut store = b.open_at(PREFIX).expect("open");
                store
                    .commit(&[Change::PutNode(record("n1"))])
                    .expect("commit");
                store.delete_raw(SCHEMA_KEY).expect("delete");
            }
            let err = b.open_at(PREFIX).expect_err("must fail closed");
            assert!(matches!(err, StoreError::EtcdCorrupt { .. }), "{err}");
            assert!(
                err.to_string().contains("records without a schema version"),
                "{err}"
            );
        }

        #[test]
        fn a_foreign_key_under_the_prefix_is_corrupt_and_prefixes_keep_clusters_apart() {
            let b = etcd();
            let mut a = b.open_at("/a/").expect("open /a/");
            let mut ab = b.open_at("/ab/").expect("open /ab/");
            a.commit(&[Change::PutNode(record("only-a"))]).expect("a");
            ab.commit(&[Change::PutNode(record("only-ab"))])
                .expect("ab");
            let ids = |s: &EtcdStore| -> Vec<String> {
                s.load()
                    .expect("load")
                    .nodes
                    .into_iter()
                    .map(|n| n.id)
                    .collect()
            };
            assert_eq!(ids(&a), vec!["only-a"]);
            assert_eq!(ids(&ab), vec!["only-ab"]);
            a.put_raw("leader", b"someone else").expect("raw");
            let err = a.load().expect_err("must fail closed");
            assert!(
                err.to_string().contains("unexpected key '/a/leader'"),
                "{err}"
            );
        }

        #[test]
        fn a_load_reads_page_after_page_at_one_revision() {
            let b = etcd();
            let mut store = b.open_at(PREFIX).expect("open");
            let nodes: Vec<Change> = (0..2_500)
                .map(|i| Change::PutNode(record(&format!("n{i:05}"))))
                .collect();
            store.commit(&nodes).expect("commit");
            let loaded = store.load().expect("load");
            assert_eq!(loaded.nodes.len(), 2_500, "three pages of {PAGE_KEYS}");
            assert!(loaded.nodes.windows(2).all(|w| w[0].id < w[1].id));
        }

        #[test]
        fn an_unreachable_etcd_is_reported_naming_it_not_as_corruption() {
            let port = sup_e2e::free_port().expect("port");
            let url = format!("http://127.0.0.1:{port}");
            let started = Instant::now();
            let err = EtcdStore::open(
                std::slice::from_ref(&url),
                PREFIX,
                EtcdOptions {
                    open_deadline: Duration::from_secs(2),
                    ..EtcdOptions::default()
                },
            )
            .expect_err("nothing listens there");
            assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
            assert!(err.to_string().contains(&url), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
        }

        /// The actor calls the store from a tokio worker: the wait must
        /// not stall it (block_in_place), nor panic there.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_store_works_from_inside_supds_runtime() {
            let b = etcd();
            let mut store = b.open_at(PREFIX).expect("open");
            let ticking = tokio::spawn(async {
                for _ in 0..20 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit");
            assert_eq!(store.load().expect("load").nodes, vec![record("n1")]);
            ticking.await.expect("other tasks ran");
        }

        #[tokio::test(flavor = "current_thread")]
        async fn the_store_works_from_a_current_thread_runtime() {
            let b = etcd();
            let mut store = b.open_at(PREFIX).expect("open");
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit");
            assert_eq!(store.load().expect("load").nodes, vec![record("n1")]);
        }

        fn candidate(id: &str) -> Candidate {
            Candidate {
                id: id.to_owned(),
                grpc_url: format!("http://{id}:7070"),
                http_url: format!("http://{id}:8080"),
            }
        }

        const LEASE: Duration = Duration::from_secs(2);

        /// What a campaign on a thread ends with: the store, whether it
        /// won, and the leaders it saw meanwhile.
        type Campaign = std::thread::JoinHandle<(EtcdStore, bool, Vec<Option<String>>)>;

        /// A second replica campaigns on a thread until it wins.
        fn campaign_on_a_thread(mut store: EtcdStore, id: &'static str) -> Campaign {
            let never = std::sync::atomic::AtomicBool::new(false);
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                let won = store.campaign(&candidate(id), LEASE, &never, |standing| {
                    if let Standing::Follows(leader) = standing {
                        seen.push(leader.map(|c| c.id.clone()))
                    }
                });
                (store, won, seen)
            })
        }

        #[test]
        fn one_replica_leads_a_standby_waits_and_takes_over_when_the_lease_runs_out() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
            let b = etcd();
            let never = std::sync::atomic::AtomicBool::new(false);
            let mut first = b.open_at(PREFIX).expect("open");
            assert!(first.campaign(&candidate("a"), LEASE, &never, |_| {}));
            first
                .commit(&[Change::PutNode(record("n1"))])
                .expect("the leader writes");
            let second = b.open_at(PREFIX).expect("open");
            assert_eq!(
                second.leader().expect("read").map(|c| c.id),
                Some("a".to_owned())
            );
            let proposals = || {
                b.cluster
                    .metric(0, "etcd_server_proposals_committed_total")
                    .expect("etcd's metrics")
            };
            let before = proposals();
            let thread = campaign_on_a_thread(second, "b");
            // The leader keeps its lease well past its time to live.
            std::thread::sleep(LEASE * 2);
            assert!(
                !thread.is_finished(),
                "b must wait while a renews its lease"
            );
            // b polled a dozen times meanwhile, with reads only: nothing
            // went into etcd's log (a's renewals are not raft entries).
            let written = proposals() - before;
            eprintln!(
                "raft entries while b stood by for {:?}: {written}",
                LEASE * 2
            );
            assert!(
                written <= 1.0,
                "a standby's polls wrote {written} raft entries"
            );
            first
                .commit(&[Change::PutNode(record("n2"))])
                .expect("still the leader");
            // a stops renewing (as if killed; its store is leaked, not
            // dropped, so it does not resign): b leads within the lease.
            let started = Instant::now();
            first.leadership().expect("leads").halt_renewals();
            let (mut second, won, seen) = thread.join().expect("b's campaign");
            assert!(won);
            eprintln!(
                "takeover after a's renewals stopped: {:?}",
                started.elapsed()
            );
            assert!(started.elapsed() < LEASE * 3, "{:?}", started.elapsed());
            assert_eq!(seen, vec![Some("a".to_owned())]);
            // a is fenced: its writes never land, and it says why.
            let err = first
                .commit(&[Change::PutNode(record("stale"))])
                .expect_err("a was deposed");
            assert!(matches!(err, StoreError::Deposed(_)), "{err}");
            assert!(first.fenced().is_err());
            second
                .commit(&[Change::PutNode(record("n3"))])
                .expect("b writes");
            let ids: Vec<String> = second
                .load()
                .expect("load")
                .nodes
                .into_iter()
                .map(|n| n.id)
                .collect();
            assert_eq!(ids, ["n1", "n2", "n3"]);
            // A clean stop gives the lease back: a third takes over at once.
            drop(second);
            let mut third = b.open_at(PREFIX).expect("open");
            let started = Instant::now();
            assert!(third.campaign(&candidate("c"), LEASE, &never, |_| {}));
            assert!(started.elapsed() < LEASE, "{:?}", started.elapsed());
        }

        #[test]
        fn a_write_from_a_deposed_leader_that_still_believes_it_leads_is_refused_by_etcd() {
            let b = etcd();
            let never = std::sync::atomic::AtomicBool::new(false);
            let mut first = b.open_at(PREFIX).expect("open");
            assert!(first.campaign(&candidate("a"), LEASE, &never, |_| {}));
            // Behind a's back, its term ends (an operator, or etcd expiring
            // the lease while a's clock said otherwise) and b wins.
            let key = first.key(ELECTION_KEY);
            b.cluster.etcdctl(&["del", &key]).expect("etcdctl del");
            let mut second = b.open_at(PREFIX).expect("open");
            assert!(second.campaign(&candidate("b"), LEASE, &never, |_| {}));
            assert!(first.fenced().is_ok(), "a's own clock still says it leads");
            let err = first
                .commit(&[Change::PutNode(record("stale"))])
                .expect_err("the fence refuses it");
            assert!(
                err.to_string().contains("another replica leads now"),
                "{err}"
            );
            assert!(second.load().expect("load").nodes.is_empty());
        }

        #[test]
        fn commits_go_on_through_the_loss_of_the_etcd_leader() {
            let _ = tracing_subscriber::fmt().with_test_writer().try_init();
            let mut b = etcd_with(3);
            let mut store = b.open_at(PREFIX).expect("open");
            store
                .commit(&[Change::PutNode(record("n1"))])
                .expect("commit");
            let leader = b.cluster.leader().expect("leader");
            b.cluster.kill(leader).expect("kill the leader");
            // Retried on the others through their election.
            let started = Instant::now();
            store
                .commit(&[
                    Change::PutNode(record("n2")),
                    Change::AppendEvent(contract::event(1)),
                ])
                .expect("commit after the leader died");
            eprintln!("commit through a leader election: {:?}", started.elapsed());
            let loaded = b.open_at(PREFIX).expect("reopen").load().expect("load");
            assert_eq!(loaded.nodes, vec![record("n1"), record("n2")]);
            b.cluster.restart(leader).expect("restart");
        }
    }

    #[test]
    fn the_prefix_range_ends_where_the_prefix_does() {
        assert_eq!(prefix_end(b"/sup/"), b"/sup0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(event_key(42), "events/00000000000000000042");
        assert!(event_key(9) < event_key(10));
    }
}
