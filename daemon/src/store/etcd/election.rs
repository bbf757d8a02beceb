//! Leader election among supd replicas, and the lease that fences a
//! deposed leader (issue 15).
//!
//! Each replica campaigns for one key, `<prefix>election/leader`: it grants
//! itself an etcd lease and, in one transaction, creates the key with its
//! identity attached to that lease *if the key does not exist*. The one
//! whose transaction created it leads; its key's `create_revision` names
//! its term. It keeps the lease alive (a keep-alive every third of the
//! lease); if it stops doing so (killed, paused, cut off from etcd), etcd
//! deletes the key when the lease runs out and a standby's next attempt
//! creates it anew — a new term, with a new `create_revision`.
//!
//! Fencing: every transaction the leader's store sends compares the key's
//! `create_revision` with its own term's ([`super::EtcdStore::txn`]), so a
//! write from a deposed leader never lands, however late it arrives, and
//! the store reports [`super::super::StoreError::Deposed`]. Messages to
//! agents that carry no write are fenced by the lease as this replica last
//! saw it renewed ([`Leadership::holds`]): measured on its own monotonic
//! clock from *before* the renewal was sent, less a tenth, so it runs out
//! here before it can in etcd. A replica resumed after a pause (SIGSTOP,
//! a stalled VM) thus finds its lease over before it sends anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sup_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use sup_proto::etcd::etcdserverpb::{
    request_op, response_op, Compare, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};

use super::client::{self, Client};

/// The election key, relative to the store's prefix. The store's load
/// skips it: it is no record of the state.
pub const ELECTION_KEY: &str = "election/leader";

/// One request of the election gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Who a replica is, as the election key holds it (JSON): what a standby
/// and an operator need to find the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// `--id` (default: the host name).
    pub id: String,
    /// Where agents and supctl reach it.
    pub grpc_url: String,
    /// Its dashboard and API.
    pub http_url: String,
}

/// The lease as the keep-alive task last saw it.
#[derive(Debug)]
struct LeaseClock {
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
    /// Set when the store is dropped: the keep-alive task gives the lease
    /// back and ends.
    resigned: AtomicBool,
    /// Tests: the keep-alive task ends without a word, as if this replica
    /// had been killed.
    halted: AtomicBool,
}

/// This replica's term as leader.
#[derive(Debug, Clone)]
pub struct Leadership {
    /// The election key, whole.
    pub key: Vec<u8>,
    /// The key's `create_revision`: this term's identity in every fence.
    pub create_revision: i64,
    pub lease: i64,
    pub ttl: Duration,
    clock: Arc<LeaseClock>,
}

impl Leadership {
    /// Whether this replica surely still leads: etcd has not said the lease
    /// is gone, and it cannot have run out yet (see the module docs).
    pub fn holds(&self) -> bool {
        !self.clock.lost.load(Ordering::SeqCst) && Instant::now() < self.valid_until()
    }

    /// Whether this replica may still renew agents' assignment leases,
    /// `bridge` after its term can no longer be renewed: not once etcd has
    /// said the term is gone (another replica may lead already, counting on
    /// this one's silence), and not past the bridge, which a new leader
    /// waits out before replacing a node it has not heard from.
    pub fn may_renew_assignments(&self, bridge: Duration) -> bool {
        !self.clock.lost.load(Ordering::SeqCst) && Instant::now() < self.valid_until() + bridge
    }

    /// Whether etcd has said the term is gone (not merely unrenewed).
    pub fn is_lost(&self) -> bool {
        self.clock.lost.load(Ordering::SeqCst)
    }

    fn valid_until(&self) -> Instant {
        *self
            .clock
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why [`Leadership::holds`] is false, for errors.
    pub fn why_not(&self) -> String {
        if self.clock.lost.load(Ordering::SeqCst) {
            format!(
                "etcd says this replica's leader lease {:x} is gone",
                self.lease
            )
        } else {
            format!(
                "this replica's leader lease {:x} was last renewed more than {:?} ago",
                self.lease,
                self.ttl - self.ttl / 10
            )
        }
    }

    /// The compare every fenced transaction carries.
    pub fn fence(&self) -> Compare {
        Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: self.key.clone(),
            target_union: Some(TargetUnion::CreateRevision(self.create_revision)),
            ..Compare::default()
        }
    }

    pub(super) fn resign_flag(&self) {
        self.clock.resigned.store(true, Ordering::SeqCst);
    }

    /// Stops renewing the lease without giving it back (tests: a replica
    /// killed or paused).
    #[cfg(test)]
    pub(super) fn halt_renewals(&self) {
        self.clock.halted.store(true, Ordering::SeqCst);
    }
}

/// The outcome of one attempt.
#[derive(Debug)]
pub enum Attempt {
    Won(Leadership),
    /// Another replica leads (`None`: the key was there but unreadable, or
    /// gone again by the time it was read).
    Held(Option<Candidate>),
}

/// A lease whose validity starts counting at `sent`.
fn valid_from(sent: Instant, ttl: Duration) -> Instant {
    sent + ttl - ttl / 10
}

/// One attempt to become leader: a lease, then the key created with it
/// unless it exists. Runs on the store's client thread.
pub async fn attempt(
    client: &Client,
    key: Vec<u8>,
    me: &Candidate,
    ttl: Duration,
) -> Result<Attempt, String> {
    let value = serde_json::to_vec(me).map_err(|e| format!("cannot encode {me:?}: {e}"))?;
    let member = client.member();
    let fail = |what: &str, e: String| {
        client.skip(&member);
        format!("{what} at {}: {e}", member.url)
    };
    let sent = Instant::now();
    let grant = LeaseGrantRequest {
        ttl: i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX),
        id: 0,
    };
    let granted = call(member.lease().lease_grant(grant))
        .await
        .map_err(|e| fail("granting a leader lease", e))?;
    if !granted.error.is_empty() || granted.ttl <= 0 {
        return Err(fail(
            "granting a leader lease",
            format!("refused: '{}' (ttl {})", granted.error, granted.ttl),
        ));
    }
    let lease = granted.id;
    // etcd grants whole seconds (and may grant more than asked): what it
    // granted, never more than asked, is what this replica relies on.
    let ttl = Duration::from_secs(u64::try_from(granted.ttl).unwrap_or(0)).min(ttl);
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value,
                lease,
                ..PutRequest::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })),
        }],
    };
    let answer = match call(member.kv().txn(txn)).await {
        Ok(answer) => answer,
        Err(e) => {
            // Whether it landed is unknown: the lease is given back, and
            // with it the key if it did (the next attempt starts clean).
            revoke(client, lease).await;
            return Err(fail("creating the election key", e));
        }
    };
    if answer.succeeded {
        let create_revision = answer.header.map(|h| h.revision).unwrap_or_default();
        let clock = Arc::new(LeaseClock {
            valid_until: Mutex::new(valid_from(sent, ttl)),
            lost: AtomicBool::new(false),
            resigned: AtomicBool::new(false),
            halted: AtomicBool::new(false),
        });
        tokio::spawn(keep_alive(client.clone(), lease, ttl, clock.clone()));
        return Ok(Attempt::Won(Leadership {
            key,
            create_revision,
            lease,
            ttl,
            clock,
        }));
    }
    revoke(client, lease).await;
    let holder = answer
        .responses
        .into_iter()
        .find_map(|r| match r.response {
            Some(response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        })
        .and_then(|kv| serde_json::from_slice::<Candidate>(&kv.value).ok());
    Ok(Attempt::Held(holder))
}

/// Renews the lease every third of its time to live until it is lost or
/// the leadership is resigned.
async fn keep_alive(client: Client, lease: i64, ttl: Duration, clock: Arc<LeaseClock>) {
    let every = ttl / 3;
    loop {
        tokio::time::sleep(every).await;
        if clock.halted.load(Ordering::SeqCst) {
            return;
        }
        if clock.resigned.load(Ordering::SeqCst) {
            revoke(&client, lease).await;
            return;
        }
        let member = client.member();
        let sent = Instant::now();
        let request = tokio_stream::once(LeaseKeepAliveRequest { id: lease });
        let renewed = async {
            let mut answers = member.lease().lease_keep_alive(request).await?.into_inner();
            answers.message().await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, renewed).await {
            Ok(Ok(Some(answer))) if answer.ttl > 0 => {
                let granted = Duration::from_secs(u64::try_from(answer.ttl).unwrap_or(0));
                *clock
                    .valid_until
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    valid_from(sent, granted.min(ttl));
            }
            Ok(Ok(Some(_))) => {
                tracing::error!(
                    lease = format!("{lease:x}"),
                    "etcd: the leader lease is gone (expired while this replica was paused or cut off); stepping down"
                );
                clock.lost.store(true, Ordering::SeqCst);
                return;
            }
            Ok(Ok(None)) => {
                client.skip(&member);
                tracing::warn!(member = %member.url, "etcd: the lease keep-alive stream ended at once; trying the next member");
            }
            Ok(Err(status)) => {
                client.skip(&member);
                tracing::warn!(member = %member.url, error = %client::describe(&status), "etcd: renewing the leader lease failed; retrying");
            }
            Err(_) => {
                client.skip(&member);
                tracing::warn!(member = %member.url, "etcd: no answer to a leader lease renewal within {REQUEST_TIMEOUT:?}; retrying");
            }
        }
    }
}

/// Gives a lease back (best effort: unanswered, it runs out by itself).
pub async fn revoke(client: &Client, lease: i64) {
    let member = client.member();
    if let Err(e) = call(
        member
            .lease()
            .lease_revoke(LeaseRevokeRequest { id: lease }),
    )
    .await
    {
        tracing::debug!(member = %member.url, "etcd: revoking lease {lease:x}: {e}");
    }
}

/// The current leader, read without campaigning.
pub async fn leader(client: &Client, key: Vec<u8>) -> Result<Option<Candidate>, String> {
    Ok(holder(client, key).await?.flatten())
}

/// Whether the election key is there (`Some`), and whom it names (`None`
/// inside: unreadable). A linearizable read, which etcd serves without an
/// entry in its raft log: a standby polls with this while a leader holds
/// the key, and only an absent key is worth an [`attempt`] (a lease grant,
/// a transaction and, when lost, a revoke: three fsynced log entries).
pub async fn holder(client: &Client, key: Vec<u8>) -> Result<Option<Option<Candidate>>, String> {
    let member = client.member();
    let range = call(member.kv().range(RangeRequest {
        key,
        ..RangeRequest::default()
    }))
    .await
    .map_err(|e| {
        client.skip(&member);
        format!("reading the election key at {}: {e}", member.url)
    })?;
    Ok(range
        .kvs
        .into_iter()
        .next()
        .map(|kv| serde_json::from_slice(&kv.value).ok()))
}

async fn call<T>(
    request: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(answer)) => Ok(answer.into_inner()),
        Ok(Err(status)) => Err(client::describe(&status)),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}
