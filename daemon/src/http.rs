//! The HTTP edge: health probes, Prometheus metrics and the read-only JSON
//! API. Nothing here changes the cluster.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sup_proto::json::{EventView, JobListView, JobView, NodeListView, NodeView};
use sup_proto::v1;

use crate::actor::{ActorError, SupervisorHandle};
use crate::http_auth::ApiToken;
use crate::metrics::Counters;
use sup_core::EngineError;

#[derive(Clone)]
pub struct HttpState {
    pub handle: SupervisorHandle,
    pub ready: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
    /// Required by the `/api/v1` routes when set.
    pub api_token: Option<ApiToken>,
}

/// The dashboard's handlers need only the handle, so they depend on the
/// actor, not on this module.
impl FromRef<HttpState> for SupervisorHandle {
    fn from_ref(state: &HttpState) -> SupervisorHandle {
        state.handle.clone()
    }
}

pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route("/api/v1/stream", get(crate::dashboard::stream))
        .route("/api/v1/status", get(status))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/events", get(events))
        .route_layer(middleware::from_fn_with_state(
            state.api_token.clone(),
            crate::http_auth::require,
        ));
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/app.css", get(crate::dashboard::css))
        .route("/dashboard/app.js", get(crate::dashboard::js))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/metrics/gpus", get(metrics_gpus))
        .merge(api)
        .with_state(state)
}

/// Why a replica does not serve, and where the leader's HTTP is (a
/// standby that knows it).
#[derive(Debug, Clone, Default)]
pub struct NotServing {
    pub why: String,
    /// The leader's base URL (`http://host:port`): every path but the
    /// health checks is redirected there.
    pub leader_http: Option<String>,
}

/// Served instead of [`router`] when the state store is unusable, or while
/// this replica stands by for leadership: the process is alive
/// (`/healthz`), not ready (`/readyz` says why), and every other path is
/// either redirected to the leader (a standby that knows it: the dashboard
/// and the API work from any replica's address) or answered with why.
pub fn refusing_router(state: tokio::sync::watch::Receiver<NotServing>) -> Router {
    let readyz = {
        let state = state.clone();
        move || {
            let why = state.borrow().why.clone();
            async move {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
                    .into_response()
            }
        }
    };
    let elsewhere = move |uri: axum::http::Uri| {
        let now = state.borrow().clone();
        async move {
            match now.leader_http {
                Some(base) => {
                    let path = uri.path_and_query().map_or("/", |p| p.as_str());
                    let to = format!("{}{path}", base.trim_end_matches('/'));
                    (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response()
                }
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", now.why),
                )
                    .into_response(),
            }
        }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(elsewhere)
}

fn error(e: ActorError) -> Response {
    let code = match &e {
        ActorError::Engine(EngineError::UnknownNode(_) | EngineError::UnknownJob(_)) => {
            StatusCode::NOT_FOUND
        }
        ActorError::Engine(_) => StatusCode::BAD_REQUEST,
        ActorError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (code, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

/// Liveness: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store is open and the state actor is running.
async fn readyz(State(s): State<HttpState>) -> Response {
    let not_acting = s
        .counters
        .not_acting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(why) = not_acting {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    if s.ready.load(Ordering::SeqCst) && s.handle.ping().await.is_ok() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// Every GPU's readings (see `metrics::render_gpus`), rendered off the
/// runtime's workers for this scrape alone.
async fn metrics_gpus(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let snapshot = match s.handle.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(e),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = crate::metrics::wants_openmetrics(accept);
    let gzip = accepts_gzip(&headers);
    let rendered = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        let text = crate::metrics::render_gpus(&snapshot.cluster).map_err(|e| e.to_string())?;
        let text = if openmetrics {
            text
        } else {
            crate::metrics::to_text_format(&text)
        };
        if gzip {
            crate::snapshot::gzip(text.as_bytes()).map_err(|e| e.to_string())
        } else {
            Ok(text.into_bytes())
        }
    })
    .await;
    let body = match rendered {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return internal(&e),
        Err(e) => return internal(&e),
    };
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS_CONTENT_TYPE
    } else {
        crate::metrics::TEXT_CONTENT_TYPE
    };
    exposition(content_type, gzip, Body::from(body))
}

/// A metrics exposition answer: its format, and gzip when it is.
fn exposition(content_type: &'static str, gzip: bool, body: Body) -> Response {
    if gzip {
        (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            body,
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    }
}

/// The state's families come from the snapshot's shared rendering; the
/// counters after them are read now. Gzip when asked (Prometheus does):
/// the shared part is compressed once, the counters as a second member.
async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let snapshot = match s.handle.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(e),
    };
    let counters = match crate::metrics::render_counters(&snapshot.cluster.status, &s.counters) {
        Ok(counters) => counters,
        Err(e) => return internal(&e),
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = crate::metrics::wants_openmetrics(accept);
    let (content_type, counters) = if openmetrics {
        (crate::metrics::OPENMETRICS_CONTENT_TYPE, counters)
    } else {
        (
            crate::metrics::TEXT_CONTENT_TYPE,
            crate::metrics::to_text_format(&counters),
        )
    };
    let gzip = accepts_gzip(&headers);
    let state = match (gzip, openmetrics) {
        (true, _) => snapshot.metrics_gzip(openmetrics).await,
        (false, true) => snapshot.metrics_openmetrics().await,
        (false, false) => snapshot.metrics_text().await,
    };
    let state = match state {
        Ok(state) => state,
        Err(e) => return internal(&e),
    };
    let counters = if gzip {
        match crate::snapshot::gzip(counters.as_bytes()) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => return internal(&e),
        }
    } else {
        Bytes::from(counters)
    };
    // Two chunks: the shared rendering is sent as it is, not copied.
    let chunks = [state, counters].map(Ok::<_, Infallible>);
    exposition(
        content_type,
        gzip,
        Body::from_stream(tokio_stream::iter(chunks)),
    )
}

/// Whether the client takes a gzip body (`Accept-Encoding: gzip`, not
/// refused with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused =
                parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            name.eq_ignore_ascii_case("gzip") && !refused
        })
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    tracing::error!(error = %e, "cannot serve a read");
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

async fn status(State(s): State<HttpState>) -> Response {
    let snapshot = match s.handle.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(e),
    };
    match snapshot.status_json().await {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => internal(&e),
    }
}

async fn node(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    match s.handle.snapshot().await {
        Ok(snapshot) => match snapshot.node(&id) {
            Ok(node) => Json(NodeView::from(&node)).into_response(),
            Err(e) => error(e.into()),
        },
        Err(e) => error(e),
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct NodesQuery {
    /// Comma-separated state names.
    #[serde(default)]
    state: String,
    #[serde(default)]
    job: String,
    #[serde(default)]
    limit: u32,
    #[serde(default, rename = "continue")]
    continue_token: String,
}

/// `/api/v1/nodes?state=cordoned,unreachable&job=&limit=&continue=`: one
/// page of nodes in id order (see `crate::pages`), sized as JSON.
async fn nodes(State(s): State<HttpState>, Query(q): Query<NodesQuery>) -> Response {
    let mut states = Vec::new();
    for name in q.state.split(',').filter(|n| !n.trim().is_empty()) {
        match sup_proto::json::node_state_from_name(name) {
            Ok(state) => states.push(state as i32),
            Err(e) => return bad_request(format!("state={}: {e}", q.state)),
        }
    }
    let query = match crate::pages::NodeQuery::parse(&states, &q.job, q.limit, &q.continue_token) {
        Ok(query) => query,
        Err(e) => return bad_request(e),
    };
    let snapshot = match s.handle.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(e),
    };
    let job = query.filter.job();
    if !job.is_empty() && !snapshot.cluster.status.jobs.iter().any(|j| j.name == job) {
        return error(ActorError::Engine(EngineError::UnknownJob(job.to_owned())));
    }
    let json_len = |n: &v1::Node| {
        serde_json::to_vec(&NodeView::from(n)).map_or(usize::MAX / 4, |v| v.len() + 1)
    };
    let page = crate::pages::page(
        &snapshot.cluster.nodes,
        &query,
        json_len,
        crate::pages::PAGE_BYTES,
    );
    Json(NodeListView {
        nodes: page.nodes.iter().map(NodeView::from).collect(),
        continue_token: page.next,
        remaining: u32::try_from(page.remaining).unwrap_or(u32::MAX),
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    /// Comma-separated state names.
    #[serde(default)]
    state: String,
    #[serde(default)]
    limit: u32,
    #[serde(default, rename = "continue")]
    continue_token: String,
}

/// `/api/v1/jobs?state=running,failed&limit=&continue=`: one page of jobs
/// in name order, each cut down as the status cuts it (see `crate::pages`),
/// sized as JSON.
async fn jobs(State(s): State<HttpState>, Query(q): Query<JobsQuery>) -> Response {
    let states: Vec<String> = q
        .state
        .split(',')
        .filter(|n| !n.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let query = match crate::pages::JobQuery::parse(&states, q.limit, &q.continue_token) {
        Ok(query) => query,
        Err(e) => return bad_request(e),
    };
    let snapshot = match s.handle.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(e) => return error(e),
    };
    let json_len =
        |j: &v1::Job| serde_json::to_vec(&JobView::from(j)).map_or(usize::MAX / 4, |v| v.len() + 1);
    let page = crate::pages::job_page(
        &snapshot.cluster.status.jobs,
        &query,
        json_len,
        crate::pages::PAGE_BYTES,
    );
    Json(JobListView::from(&v1::ListJobsResponse {
        jobs: page.jobs,
        next_continue_token: page.next.unwrap_or_default(),
        remaining: u32::try_from(page.remaining).unwrap_or(u32::MAX),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    from_oldest: bool,
}

/// The body stays an array (its documented shape); how many matching events
/// it left out goes in a header.
async fn events(State(s): State<HttpState>, Query(q): Query<EventsQuery>) -> Response {
    match s.handle.snapshot().await {
        Ok(snapshot) => {
            let json_len = |e: &v1::Event| {
                serde_json::to_vec(&EventView::from(e)).map_or(usize::MAX / 4, |v| v.len() + 1)
            };
            let page = crate::pages::events_page(
                snapshot.kept_events(),
                q.after,
                q.limit,
                q.from_oldest,
                json_len,
                crate::pages::PAGE_BYTES,
            );
            (
                [(EVENTS_OMITTED, page.omitted.to_string())],
                Json(page.events.iter().map(EventView::from).collect::<Vec<_>>()),
            )
                .into_response()
        }
        Err(e) => error(e),
    }
}

/// Matching events an `/api/v1/events` answer left out.
const EVENTS_OMITTED: &str = "sup-events-omitted";

#[cfg(test)]
mod tests {
    use super::*;

    fn with_accept_encoding(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT_ENCODING,
            value.parse().expect("header value"),
        );
        headers
    }

    #[test]
    fn gzip_is_sent_only_to_clients_that_accept_it() {
        assert!(accepts_gzip(&with_accept_encoding("gzip")));
        assert!(accepts_gzip(&with_accept_encoding("deflate, GZIP;q=0.5")));
        assert!(!accepts_gzip(&with_accept_encoding("gzip;q=0")));
        assert!(!accepts_gzip(&with_accept_encoding("identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }
}
