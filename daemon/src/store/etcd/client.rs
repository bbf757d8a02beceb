//! supd's etcd v3 client: the tonic stubs that `sup-proto` generates from
//! our subset of etcd's API (`proto/proto/etcd/v3/`), over one gRPC channel
//! per member.
//!
//! Requests go to one member, the *current* one, until a request to it
//! fails in a way that another member might not ([`Client::skip`]): then
//! the next member in the list becomes current. A member that died (the
//! etcd leader killed) is thus left after one failed attempt, and one that
//! comes back is used again when the list comes round to it: each channel
//! reconnects on its own. Not tonic's `Channel::balance_list`: it picks a
//! member per request at random among those that look ready, and a member
//! whose connection failed still looks ready (the failure shows on the
//! call), so a retry could go to the dead leader again and again; nor would
//! an error say which member it came from.
//!
//! Every request carries `hasleader: true`, so that a member cut off from
//! the others answers at once ("no leader", UNAVAILABLE) instead of
//! waiting: the request is sent again, to the next member.
//!
//! Leader election (later) takes its `Lease`/`Watch` clients from the same
//! [`Member`] channels, with the same interceptor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sup_proto::etcd::etcdserverpb::kv_client::KvClient;
use sup_proto::etcd::etcdserverpb::lease_client::LeaseClient;
#[cfg(test)]
use sup_proto::etcd::etcdserverpb::watch_client::WatchClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The largest answer accepted. tonic's default (4 MiB) could refuse a page
/// of a load (a thousand keys) of large job records, and the load would
/// fail however often it was retried; etcd itself caps no answer's size.
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;

/// Adds etcd's require-leader metadata (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct RequireLeader;

impl tonic::service::Interceptor for RequireLeader {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("hasleader", MetadataValue::from_static("true"));
        Ok(request)
    }
}

pub type Kv = KvClient<InterceptedService<Channel, RequireLeader>>;
pub type Lease = LeaseClient<InterceptedService<Channel, RequireLeader>>;

/// How to reach the members.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// For `https://` endpoints (their files read already).
    pub tls: Option<ClientTlsConfig>,
    /// Opening a connection to a member.
    pub connect_timeout: Duration,
    /// Any one request (a backstop: `etcd.rs` times its attempts itself).
    pub request_timeout: Duration,
}

/// One etcd member: its URL (for errors) and its channel.
#[derive(Debug, Clone)]
pub struct Member {
    index: usize,
    pub url: String,
    channel: Channel,
}

impl Member {
    pub fn kv(&self) -> Kv {
        KvClient::with_interceptor(self.channel.clone(), RequireLeader)
            .max_decoding_message_size(MAX_DECODING_BYTES)
    }

    /// Leader election's lease grants and keep-alives.
    pub fn lease(&self) -> Lease {
        LeaseClient::with_interceptor(self.channel.clone(), RequireLeader)
    }

    // Test-only until standbys watch the state: it checks the rest of the
    // API subset against a real etcd meanwhile.
    #[cfg(test)]
    fn watch(&self) -> WatchClient<InterceptedService<Channel, RequireLeader>> {
        WatchClient::with_interceptor(self.channel.clone(), RequireLeader)
    }
}

/// The members, and which one requests go to. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Client {
    members: Arc<[Member]>,
    current: Arc<AtomicUsize>,
}

impl Client {
    /// Sets up a channel per endpoint. Connects to nothing yet (each
    /// channel connects on its first request, and again after losing its
    /// connection), so an unreachable etcd shows on the first request,
    /// naming the member. Must run on the runtime that will drive the
    /// channels (the store's client thread).
    pub fn new(endpoints: &[String], options: ConnectOptions) -> Result<Client, String> {
        if endpoints.is_empty() {
            return Err("no etcd endpoints".to_owned());
        }
        let members = endpoints
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let mut endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| format!("'{url}' is not a usable URL: {e}"))?;
                // Never a silent downgrade either way (the config checks
                // this too; tests and tools build clients directly).
                match (url.starts_with("https://"), &options.tls) {
                    (true, Some(tls)) => {
                        endpoint = endpoint
                            .tls_config(tls.clone())
                            .map_err(|e| format!("'{url}': TLS setup failed: {e}"))?;
                    }
                    (false, None) => {}
                    (true, None) => {
                        return Err(format!("'{url}' is https:// but no TLS files are set"))
                    }
                    (false, Some(_)) => {
                        return Err(format!("'{url}' is http:// but TLS files are set"))
                    }
                }
                let endpoint = endpoint
                    .connect_timeout(options.connect_timeout)
                    .timeout(options.request_timeout)
                    // A member that vanished without closing the connection
                    // (power, network) is noticed within seconds, not at the
                    // kernel's TCP timeout; pings no more often than etcd's
                    // default --grpc-keepalive-min-time (5 s) allows.
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                Ok(Member {
                    index,
                    url: url.clone(),
                    channel: endpoint.connect_lazy(),
                })
            })
            .collect::<Result<Arc<[Member]>, String>>()?;
        Ok(Client {
            members,
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The member requests go to now.
    pub fn member(&self) -> Member {
        let i = self.current.load(Ordering::Relaxed) % self.members.len();
        self.members[i].clone()
    }

    /// `failed` did not answer (or answered what another member might not):
    /// the next member becomes current, unless another request has moved
    /// on from `failed` already (so that two failures skip one member, not
    /// two).
    pub fn skip(&self, failed: &Member) {
        let next = (failed.index + 1) % self.members.len();
        let _ =
            self.current
                .compare_exchange(failed.index, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A status as one line: its code, message and causes (the message of a
/// failed connection says "tcp connect error", its cause why), each said
/// once.
pub fn describe(status: &tonic::Status) -> String {
    let mut out = format!("{:?}: {}", status.code(), status.message());
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ConnectOptions {
        ConnectOptions {
            tls: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_member_hands_over_to_the_next_and_the_list_comes_round() {
        let urls: Vec<String> = (1..=3)
            .map(|i| format!("http://127.0.0.{i}:2379"))
            .collect();
        let client = Client::new(&urls, options()).expect("client");
        let first = client.member();
        assert_eq!(first.url, urls[0]);
        // Two requests saw the first member fail: one step, not two.
        client.skip(&first);
        client.skip(&first);
        let second = client.member();
        assert_eq!(second.url, urls[1]);
        client.skip(&second);
        let third = client.member();
        assert_eq!(third.url, urls[2]);
        client.skip(&third);
        assert_eq!(client.member().url, urls[0], "back to the first");
    }

    /// Our subset of etcd's API (`proto/proto/etcd/v3/`) against a real
    /// etcd 3.4, for what the store does not use yet and leader election
    /// will: a lease and a key on it, a watch seeing the key come and go
    /// with the lease, a transaction fenced on the key's create revision,
    /// and a compaction. A wrong field number shows here as a value lost.
    #[tokio::test(flavor = "current_thread")]
    async fn the_api_subset_speaks_etcds_leases_watches_and_fencing() {
        use sup_proto::etcd::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
        use sup_proto::etcd::etcdserverpb::{
            request_op, watch_request, CompactionRequest, Compare, LeaseGrantRequest,
            LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest,
            RangeRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
            WatchRequest,
        };
        use sup_proto::etcd::mvccpb::event::EventType;
        use tokio_stream::wrappers::ReceiverStream;
        use tokio_stream::StreamExt;

        let dir = tempfile::tempdir().expect("tempdir");
        let etcd = sup_e2e::etcd::EtcdCluster::start(dir.path(), 1)
            .expect("starting etcd (apt-get install etcd-server etcd-client)");
        let client = Client::new(&etcd.endpoints(), options()).expect("client");
        let member = client.member();
        let (mut kv, mut leases, mut watches) = (member.kv(), member.lease(), member.watch());
        let soon = Duration::from_secs(10);
        let key = b"/sup-test/leader".to_vec();

        let granted = leases
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .expect("grant")
            .into_inner();
        assert!(granted.id != 0 && granted.ttl == 60, "{granted:?}");
        assert!(granted
            .header
            .is_some_and(|h| h.revision > 0 && h.member_id != 0));

        // The watch stream stays open while `requests` lives.
        let (requests, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: key.clone(),
                    prev_kv: true,
                    ..WatchCreateRequest::default()
                },
            )),
        };
        requests.send(create).await.expect("send");
        let mut events = watches
            .watch(ReceiverStream::new(rx))
            .await
            .expect("watch")
            .into_inner();
        let mut next = async || {
            tokio::time::timeout(soon, events.next())
                .await
                .expect("a watch response in time")
                .expect("the stream goes on")
                .expect("a watch response")
        };
        let created = next().await;
        assert!(created.created, "{created:?}");

        // Created only where there is none yet, on the lease: how a
        // replica will take the leadership.
        let put = |value: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.clone(),
                value: value.as_bytes().to_vec(),
                lease: granted.id,
                ..PutRequest::default()
            })),
        };
        let fenced = |revision: i64, value: &str| TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal.into(),
                target: CompareTarget::Create.into(),
                key: key.clone(),
                target_union: Some(TargetUnion::CreateRevision(revision)),
                ..Compare::default()
            }],
            success: vec![put(value)],
            failure: Vec::new(),
        };
        let taken = kv.txn(fenced(0, "a")).await.expect("txn").into_inner();
        assert!(taken.succeeded, "{taken:?}");
        let revision = taken.header.map_or(0, |h| h.revision);
        let seen = next().await;
        assert_eq!(seen.watch_id, created.watch_id);
        let [event] = seen.events.as_slice() else {
            panic!("one event: {seen:?}")
        };
        assert_eq!(event.r#type(), EventType::Put);
        let kv_seen = event.kv.as_ref().expect("kv");
        assert_eq!(
            (&kv_seen.key, &kv_seen.value[..], kv_seen.lease),
            (&key, &b"a"[..], granted.id)
        );
        assert_eq!(
            (
                kv_seen.create_revision,
                kv_seen.mod_revision,
                kv_seen.version
            ),
            (revision, revision, 1)
        );

        // The fencing: a write lands only while the key is the one taken.
        let stale = kv
            .txn(fenced(revision + 1, "b"))
            .await
            .expect("txn")
            .into_inner();
        assert!(!stale.succeeded, "{stale:?}");
        let current = kv
            .txn(fenced(revision, "c"))
            .await
            .expect("txn")
            .into_inner();
        assert!(current.succeeded, "{current:?}");
        assert_eq!(next().await.events.len(), 1, "the second put");

        let ttl = leases
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: granted.id,
                keys: true,
            })
            .await
            .expect("ttl")
            .into_inner();
        assert_eq!((ttl.id, ttl.granted_ttl), (granted.id, 60), "{ttl:?}");
        assert!(ttl.ttl > 0 && ttl.keys == vec![key.clone()], "{ttl:?}");

        let (pings, rx) = tokio::sync::mpsc::channel(1);
        pings
            .send(LeaseKeepAliveRequest { id: granted.id })
            .await
            .expect("send");
        let mut alive = leases
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .expect("keep-alive")
            .into_inner();
        let renewed = tokio::time::timeout(soon, alive.next())
            .await
            .expect("renewed in time")
            .expect("an answer")
            .expect("renewed");
        assert!(renewed.id == granted.id && renewed.ttl == 60, "{renewed:?}");

        // The key goes with the lease.
        leases
            .lease_revoke(LeaseRevokeRequest { id: granted.id })
            .await
            .expect("revoke");
        let gone = next().await;
        let [event] = gone.events.as_slice() else {
            panic!("one event: {gone:?}")
        };
        assert_eq!(event.r#type(), EventType::Delete);
        assert_eq!(
            event.prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(b"c".to_vec()),
            "prev_kv"
        );
        let read = kv
            .range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })
            .await
            .expect("range")
            .into_inner();
        assert!(read.kvs.is_empty() && read.count == 0, "{read:?}");

        requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CancelRequest(
                    WatchCancelRequest {
                        watch_id: created.watch_id,
                    },
                )),
            })
            .await
            .expect("send");
        assert!(next().await.canceled, "the watch cancelled");
        let newest = read.header.map_or(0, |h| h.revision);
        kv.compact(CompactionRequest {
            revision: newest,
            physical: true,
        })
        .await
        .expect("compact");
        let err = kv
            .range(RangeRequest {
                key,
                revision: newest - 1,
                ..RangeRequest::default()
            })
            .await
            .expect_err("compacted");
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{}", describe(&err));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_endpoints_or_a_bad_url_is_refused() {
        let err = Client::new(&[], options()).expect_err("empty");
        assert!(err.contains("no etcd endpoints"), "{err}");
        let err = Client::new(&["http://bad host:1".to_owned()], options()).expect_err("url");
        assert!(err.contains("'http://bad host:1'"), "{err}");
    }
}
