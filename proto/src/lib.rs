//! The wire contract of sup (`sup.v1`) and the JSON views that `supctl -o json`
//! and supd's HTTP API print. Both surfaces render through [`json`], so the
//! two can never drift apart.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sup.v1");
}

/// Client stubs for the subset of etcd's v3 API that supd's etcd store uses
/// (`proto/etcd/v3/`, wire-compatible with etcd 3.4): `etcdserverpb` holds
/// the `KV`, `Lease` and `Watch` clients, `mvccpb` the records they carry.
/// Generated here, by protox, so that no `protoc` is needed.
pub mod etcd {
    pub mod mvccpb {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("mvccpb");
    }

    pub mod etcdserverpb {
        #![allow(clippy::all, missing_docs)]
        tonic::include_proto!("etcdserverpb");
    }
}

pub mod codec;
pub mod identity;
pub mod json;
pub mod progress_regex;
pub mod rank_env;
pub mod time;
pub mod transport;
