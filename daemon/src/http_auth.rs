//! An optional bearer token for the HTTP API's JSON routes (`/api/v1/...`).
//!
//! The HTTP port is read-only, but the JSON API shows every node, job,
//! command line and event. With `http.api_token_file` set, those routes
//! answer only a request that carries `Authorization: Bearer <token>`; the
//! dashboard's page, `/metrics`, `/healthz` and `/readyz` stay open so that
//! Prometheus and load balancers need nothing. A browser's `EventSource`
//! cannot send a header, so the dashboard's stream (and only it) also
//! accepts `?access_token=<token>`: open the dashboard as
//! `http://HOST:7080/#token=<token>` and its script passes the token on
//! (a URL fragment never reaches a server or its logs).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

/// Shortest token accepted: 16 characters (e.g. `openssl rand -hex 16` gives 32).
const MIN_TOKEN_LEN: usize = 16;
const MAX_TOKEN_LEN: usize = 4096;

/// The only route that takes the token in its query string.
const STREAM_PATH: &str = "/api/v1/stream";

#[derive(Clone)]
pub struct ApiToken(Arc<[u8]>);

impl ApiToken {
    /// Reads the token from `path` (one line; surrounding whitespace is
    /// ignored). Every refusal names the file and what is wrong with it.
    pub fn read(path: &Path) -> anyhow::Result<ApiToken> {
        let raw = std::fs::read(path)
            .with_context(|| format!("cannot read http.api_token_file {}", path.display()))?;
        if raw.len() > MAX_TOKEN_LEN + 2 {
            bail!(
                "http.api_token_file {} is longer than {MAX_TOKEN_LEN} bytes",
                path.display()
            );
        }
        let token = raw.trim_ascii();
        if token.len() < MIN_TOKEN_LEN {
            bail!(
                "http.api_token_file {} holds a token of {} characters; use at least {MIN_TOKEN_LEN} (e.g. `openssl rand -hex 32`)",
                path.display(),
                token.len()
            );
        }
        if !token.iter().all(u8::is_ascii_graphic) {
            bail!(
                "http.api_token_file {} must hold one token of printable ASCII without spaces",
                path.display()
            );
        }
        warn_if_readable_by_others(path);
        Ok(ApiToken(Arc::from(token)))
    }

    fn accepts(&self, presented: &str) -> bool {
        // Constant time: the comparison must not say how much matched.
        bool::from(self.0.as_ref().ct_eq(presented.as_bytes()))
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "http.api_token_file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Middleware for the API routes: lets a request through when no token is
/// configured or it presents the right one.
pub async fn require(
    State(token): State<Option<ApiToken>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let in_query = || {
        if request.uri().path() != STREAM_PATH {
            return None;
        }
        Query::<HashMap<String, String>>::try_from_uri(request.uri())
            .ok()
            .and_then(|Query(mut q)| q.remove("access_token"))
    };
    let presented = bearer.or_else(in_query);
    match presented {
        Some(p) if token.accepts(&p) => next.run(request).await,
        Some(_) => refuse("the bearer token is not the one configured"),
        None => refuse(
            "this API needs a bearer token (Authorization: Bearer <token>; see http.api_token_file)",
        ),
    }
}

fn refuse(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(serde_json::json!({ "error": why })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_file(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), text).expect("write");
        file
    }

    #[test]
    fn reads_a_token_and_compares_exactly() {
        let file = token_file("0123456789abcdef0123\n");
        let token = ApiToken::read(file.path()).expect("token");
        assert!(token.accepts("0123456789abcdef0123"));
        assert!(!token.accepts("0123456789abcdef012"));
        assert!(!token.accepts("0123456789abcdef01234"));
        assert!(!token.accepts(""));
    }

    #[test]
    fn refuses_bad_token_files_naming_the_file() {
        let short = token_file("short\n");
        let err = ApiToken::read(short.path()).err().expect("too short");
        let text = format!("{err:#}");
        assert!(
            text.contains("api_token_file") && text.contains("at least 16"),
            "{text}"
        );
        assert!(text.contains(&short.path().display().to_string()), "{text}");

        let spaced = token_file("0123456789 abcdef0123\n");
        let err = ApiToken::read(spaced.path()).err().expect("space");
        assert!(format!("{err:#}").contains("without spaces"), "{err:#}");

        let huge = token_file(&"a".repeat(MAX_TOKEN_LEN + 10));
        let err = ApiToken::read(huge.path()).err().expect("huge");
        assert!(format!("{err:#}").contains("longer than"), "{err:#}");

        let err = ApiToken::read(Path::new("/nonexistent/sup-token"))
            .err()
            .expect("missing");
        assert!(
            format!("{err:#}").contains("/nonexistent/sup-token"),
            "{err:#}"
        );
    }
}
