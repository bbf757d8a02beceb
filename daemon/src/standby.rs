//! A supd replica on etcd before it leads, and the watch that ends its term.
//!
//! A standby opens the store (waiting out an etcd it cannot reach),
//! campaigns for leadership (`store/etcd/election.rs`) and meanwhile serves
//! nothing but its health over HTTP: `/healthz` 200, `/readyz` 503 naming
//! the leader, every other path (the dashboard, the API, `/metrics`)
//! redirected to the leader's address (307). It does not bind
//! gRPC at all, so an agent or supctl given several supd URLs is refused at
//! once and tries the next one (the leader). It reads no state until it
//! wins: taking over is then one load of the state from etcd (cold
//! standby; a standby that keeps a warm copy by watching the state is a
//! later step).
//!
//! A leader whose lease lapses stops: [`deposed`] resolves, `run` returns
//! an error and the process exits, so that systemd starts it again and it
//! stands by for the next election. Its store refuses every write
//! meanwhile (the fence), and the state actor sends nothing that has no
//! write behind it once the lease cannot be relied on (`Store::fenced`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::grpc::AgentApi;
use crate::metrics::Counters;
use crate::store::{Candidate, EtcdStore, Leadership, Standing, StoreError};
use crate::{http, http_limits, http_server, HTTP_DRAIN};
use sup_proto::v1::agent_service_server::AgentServiceServer;

/// How a replica is reached at `addr`: an unspecified address (0.0.0.0,
/// [::]) is no address to give others, so the host name stands in.
fn reachable(scheme: &str, addr: SocketAddr, host_name: &str) -> String {
    if addr.ip().is_unspecified() {
        format!("{scheme}://{host_name}:{}", addr.port())
    } else {
        format!("{scheme}://{addr}")
    }
}

/// This replica as the election key names it.
pub fn candidate(config: &Config) -> Candidate {
    let host = crate::config::host_name();
    let grpc_scheme = if config.grpc.tls.is_some() {
        "https"
    } else {
        "http"
    };
    Candidate {
        id: config.store.replica_id.clone(),
        grpc_url: reachable(grpc_scheme, config.grpc.addr, &host),
        http_url: reachable("http", config.http.addr, &host),
    }
}

fn standing_by(me: &Candidate, standing: Standing<'_>) -> String {
    match standing {
        Standing::Follows(Some(l)) => format!(
            "standby: replica {} follows the leader {} (agents and supctl: {}; dashboard: {})",
            me.id, l.id, l.grpc_url, l.http_url
        ),
        Standing::Follows(None) => format!(
            "standby: replica {} is campaigning for leadership (no leader known yet)",
            me.id
        ),
        Standing::Unreachable(why) => format!(
            "standby: replica {} cannot reach etcd, so no replica can lead or act: {why}",
            me.id
        ),
    }
}

/// How standing by ended.
pub enum Outcome {
    /// This replica leads: the store, fenced by its term.
    Leader(Box<EtcdStore>),
    /// The store is unusable (corrupt, another schema): not a wait.
    Refused(StoreError),
    /// `shutdown` came first.
    Stopped,
}

/// Opens the etcd store and stands by until this replica leads, the store
/// turns out unusable, or `shutdown` resolves. An etcd that does not
/// answer (no quorum, unreachable) is waited out, saying so on `/readyz`.
pub async fn until_leader<F: Future<Output = ()>>(
    config: &Config,
    mut shutdown: Pin<&mut F>,
) -> anyhow::Result<Outcome> {
    let me = candidate(config);
    let (why_tx, why_rx) = watch::channel(http::NotServing {
        why: standing_by(&me, Standing::Follows(None)),
        leader_http: None,
    });
    let listener = TcpListener::bind(config.http.addr)
        .await
        .with_context(|| format!("cannot bind the HTTP address {}", config.http.addr))?;
    let (stop_http, stop_rx) = watch::channel(false);
    let http_task = tokio::spawn(http_server::serve(
        listener,
        http::refusing_router(why_rx),
        http_limits(config),
        stop_rx,
        HTTP_DRAIN,
    ));
    tracing::info!(
        id = %me.id,
        grpc = %me.grpc_url,
        http = %me.http_url,
        lease = %humantime::format_duration(config.store.leader_lease),
        "etcd: standing by; campaigning for leadership"
    );
    // Up for systemd (Type=notify) as a standby: a standby that never
    // leads is not a failed start.
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("standby: campaigning for leadership"),
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let ttl = config.store.leader_lease;
    let who = me.clone();
    let opening = config.clone();
    let mut campaign = tokio::task::spawn_blocking(move || {
        let say = |text: String, leader_http: Option<String>| {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&text)]);
            let _ = why_tx.send(http::NotServing {
                why: text,
                leader_http,
            });
        };
        let mut store = loop {
            match crate::store::open_etcd(&opening) {
                Ok(store) => break store,
                Err(e @ StoreError::Unreachable { .. }) => {
                    let text = standing_by(&who, Standing::Unreachable(&e.to_string()));
                    tracing::warn!("etcd: {text}");
                    say(text, None);
                    if flag.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        let won = store.campaign(&who, ttl, &flag, |standing| {
            let text = standing_by(&who, standing);
            tracing::info!("etcd: {text}");
            let leader_http = match standing {
                Standing::Follows(Some(l)) => Some(l.http_url.clone()),
                _ => None,
            };
            say(text, leader_http);
        });
        Ok(won.then_some(store))
    });
    // No state actor pings systemd's watchdog yet: this loop does.
    let mut watchdog =
        tokio::time::interval(sd_notify::watchdog_enabled().map_or(Duration::MAX / 4, |d| d / 2));
    let finished = loop {
        tokio::select! {
            done = &mut campaign => break Some(done),
            _ = &mut shutdown => break None,
            _ = watchdog.tick() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    };
    let outcome = match finished {
        Some(done) => match done.context("the leader campaign crashed")? {
            Ok(Some(store)) => Outcome::Leader(Box::new(store)),
            Ok(None) => Outcome::Stopped,
            Err(e) => Outcome::Refused(e),
        },
        None => {
            stop.store(true, Ordering::SeqCst);
            // Opening may take its own deadline to give up; not waited for.
            Outcome::Stopped
        }
    };
    // The serving replica binds the HTTP address anew.
    let _ = stop_http.send(true);
    let _ = http_task.await;
    Ok(outcome)
}

/// Resolves when this replica's term ends (never without one): etcd said
/// it is gone, or it could not be renewed for `bridge` past its end (see
/// `store.lease_bridge`). Meanwhile `counters.not_acting` says why the
/// leader does not act, and the gRPC health of the agent service says
/// NOT_SERVING: an agent of another replica that bridges, looking for the
/// one that leads, must not take this one for it. The store fences every
/// write and action on the term itself, within a fraction of the lease of
/// losing it.
pub async fn deposed(
    leadership: Option<Leadership>,
    bridge: Duration,
    counters: Arc<Counters>,
    health: tonic_health::server::HealthReporter,
) -> String {
    let Some(l) = leadership else {
        return std::future::pending().await;
    };
    let every = (l.ttl / 10).max(Duration::from_millis(50));
    let mut acting = true;
    loop {
        tokio::time::sleep(every).await;
        if l.is_lost() {
            return l.why_not();
        }
        if !l.may_renew_assignments(bridge) {
            return format!(
                "{}, and the {} it keeps the agents' assignment leases after that is over",
                l.why_not(),
                humantime::format_duration(bridge)
            );
        }
        // Unrenewed but not known lost (etcd unreachable or without
        // quorum): no action, no write; agents' leases are still renewed
        // so that training goes on.
        let holds = l.holds();
        if holds && !acting {
            // The actor may have dropped decisions meanwhile (it freezes at
            // the first refused write): a fresh leader, this replica
            // restarted or another, starts from the stored state instead.
            return "etcd answers again, but this replica could not renew its term for a while \
                    and stopped acting; stepping down so that the next leader starts from the \
                    stored state"
                .to_owned();
        }
        if acting && !holds {
            acting = false;
            let why = format!(
                "not acting: cannot reach etcd to renew the leader lease ({}); renewing the \
                 agents' assignment leases for up to {} so that training goes on",
                l.why_not(),
                humantime::format_duration(bridge)
            );
            tracing::warn!("{why}");
            *counters
                .not_acting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
            health
                .set_not_serving::<AgentServiceServer<AgentApi>>()
                .await;
        }
    }
}
