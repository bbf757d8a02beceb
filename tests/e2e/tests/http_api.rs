//! The HTTP API's optional bearer token, with the real supd: the JSON routes
//! refuse a request without the token or with a wrong one, the dashboard,
//! `/metrics` and the probes stay open, and the dashboard's stream takes the
//! token in its query string (an `EventSource` cannot send a header).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, Result};
use sup_e2e::*;

const TOKEN: &str = "e2e-token-0123456789abcdef";

/// The status code of a GET whose body may never end (a server-sent
/// event stream): only the status line is read.
fn status_line(port: u16, path: &str) -> Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {text:?}"))
}

#[test]
fn the_json_api_needs_the_configured_token_and_the_rest_stays_open() -> Result<()> {
    let work = tempfile::tempdir()?;
    let token_file = work.path().join("api-token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let mut supd = Supd::new(
        work.path(),
        &format!("[http]\napi_token_file = \"{}\"\n", token_file.display()),
    )?;
    supd.start()?;
    let port = supd.http_port;

    for path in ["/api/v1/status", "/api/v1/events", "/api/v1/nodes/x"] {
        let (code, body) = http_get(port, path)?;
        assert_eq!(code, 401, "{path} without a token: {body}");
        assert!(body.contains("bearer token"), "{path}: {body}");
        let (code, body) = http_get_with(port, path, &[("Authorization", "Bearer wrong")])?;
        assert_eq!(code, 401, "{path} with a wrong token: {body}");
        assert!(body.contains("not the one configured"), "{body}");
    }
    let bearer = format!("Bearer {TOKEN}");
    let (code, body) = http_get_with(port, "/api/v1/status", &[("Authorization", &bearer)])?;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert!(status["nodes"].is_array(), "{body}");
    let (code, body) = http_get_with(port, "/api/v1/nodes/x", &[("Authorization", &bearer)])?;
    assert_eq!(code, 404, "past the token, an unknown node: {body}");

    // The query-string form is for the dashboard's stream only.
    let (code, _) = http_get(port, &format!("/api/v1/status?access_token={TOKEN}"))?;
    assert_eq!(code, 401);
    assert_eq!(status_line(port, "/api/v1/stream")?, 401);
    assert_eq!(
        status_line(port, &format!("/api/v1/stream?access_token={TOKEN}"))?,
        200
    );

    for path in [
        "/",
        "/metrics",
        "/metrics/gpus",
        "/healthz",
        "/readyz",
        "/dashboard/app.js",
    ] {
        let (code, body) = http_get(port, path)?;
        assert_eq!(code, 200, "{path} stays open: {body}");
    }
    let (_, js) = http_get(port, "/dashboard/app.js")?;
    assert!(
        js.contains("access_token"),
        "the page passes #token on to its stream"
    );
    Ok(())
}

#[test]
fn a_bad_token_file_stops_supd_naming_the_file() -> Result<()> {
    let work = tempfile::tempdir()?;
    let token_file = work.path().join("short-token");
    std::fs::write(&token_file, "short\n")?;
    let config = work.path().join("supd.toml");
    std::fs::write(
        &config,
        format!("[http]\napi_token_file = \"{}\"\n", token_file.display()),
    )?;
    let mut cmd = std::process::Command::new(bin("supd")?);
    cmd.arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .arg("--plaintext")
        .arg("--grpc-addr")
        .arg("127.0.0.1:0")
        .arg("--http-addr")
        .arg("127.0.0.1:0");
    let mut supd = Proc::spawn("supd", cmd, work.path())?;
    let status = supd.wait_exit(STARTUP_TIMEOUT)?;
    let log = supd.log_text();
    assert!(!status.success(), "supd must refuse to start: {log}");
    assert!(
        log.contains("api_token_file") && log.contains(&token_file.display().to_string()),
        "{log}"
    );
    Ok(())
}

/// The raw body of a GET (HTTP/1.0: no chunking) with extra headers.
fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end in the response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    Ok((head, raw[split + 4..].to_vec()))
}

fn gunzip(body: &[u8]) -> Result<String> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(body).read_to_string(&mut text)?;
    Ok(text)
}

#[test]
fn metrics_are_gzipped_for_scrapers_that_ask_in_either_format() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut supd = Supd::new(work.path(), "")?;
    supd.start()?;
    let port = supd.http_port;
    let openmetrics = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

    let (head, body) = raw_get(
        port,
        "/metrics",
        &[("Accept", openmetrics), ("Accept-Encoding", "gzip")],
    )?;
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let text = gunzip(&body)?;
    assert!(text.contains("sup_nodes{state=\"ready\"} 0"), "{text}");
    assert!(text.contains("sup_agent_reports_total"), "{text}");
    assert!(text.ends_with("# EOF\n"), "one EOF, at the end: {text}");
    assert_eq!(text.matches("# EOF").count(), 1);

    let (head, body) = raw_get(port, "/metrics", &[("Accept-Encoding", "gzip")])?;
    assert!(
        head.to_ascii_lowercase()
            .contains("text/plain; version=0.0.4"),
        "{head}"
    );
    let text = gunzip(&body)?;
    let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    assert!(
        parsed.samples.iter().any(|s| s.metric == "sup_nodes"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));

    // Without Accept-Encoding, plain text as before.
    let (head, body) = raw_get(port, "/metrics", &[])?;
    assert!(
        !head.to_ascii_lowercase().contains("content-encoding"),
        "{head}"
    );
    assert!(String::from_utf8(body)?.contains("sup_nodes{state=\"ready\"} 0"));
    Ok(())
}
