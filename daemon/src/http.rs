//! The HTTP edge: health probes, Prometheus metrics and the read-only JSON
//! API. Nothing here changes the cluster.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sup_proto::json::{EventView, NodeView, StatusView};

use crate::actor::{ActorError, SupervisorHandle};
use crate::metrics::Counters;
use sup_core::EngineError;

#[derive(Clone)]
pub struct HttpState {
    pub handle: SupervisorHandle,
    pub ready: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
}

/// The dashboard's handlers need only the handle, so they depend on the
/// actor, not on this module.
impl FromRef<HttpState> for SupervisorHandle {
    fn from_ref(state: &HttpState) -> SupervisorHandle {
        state.handle.clone()
    }
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route("/dashboard/app.css", get(crate::dashboard::css))
        .route("/dashboard/app.js", get(crate::dashboard::js))
        .route("/api/v1/stream", get(crate::dashboard::stream))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/events", get(events))
        .with_state(state)
}

/// Served instead of [`router`] when the state store is unusable: the
/// process is alive (`/healthz`), not ready, and every other path says why.
pub fn refusing_router(why: Arc<String>) -> Router {
    let not_ready = move || {
        let why = why.clone();
        async move {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            )
                .into_response()
        }
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(not_ready.clone()))
        .fallback(not_ready)
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
    if s.ready.load(Ordering::SeqCst) && s.handle.status().await.is_ok() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let status = match s.handle.status().await {
        Ok(status) => status,
        Err(e) => return error(e),
    };
    let Ok(openmetrics) = crate::metrics::render(&status, &s.counters) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding metrics failed\n",
        )
            .into_response();
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if crate::metrics::wants_openmetrics(accept) {
        (
            [(
                header::CONTENT_TYPE,
                crate::metrics::OPENMETRICS_CONTENT_TYPE,
            )],
            openmetrics,
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, crate::metrics::TEXT_CONTENT_TYPE)],
            crate::metrics::to_text_format(&openmetrics),
        )
            .into_response()
    }
}

async fn status(State(s): State<HttpState>) -> Response {
    match s.handle.status().await {
        Ok(status) => Json(StatusView::from(&status)).into_response(),
        Err(e) => error(e),
    }
}

async fn node(State(s): State<HttpState>, Path(id): Path<String>) -> Response {
    match s.handle.node(id).await {
        Ok(node) => Json(NodeView::from(&node)).into_response(),
        Err(e) => error(e),
    }
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: usize,
}

async fn events(State(s): State<HttpState>, Query(q): Query<EventsQuery>) -> Response {
    match s.handle.events(q.after, q.limit).await {
        Ok(events) => Json(events.iter().map(EventView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => error(e),
    }
}
