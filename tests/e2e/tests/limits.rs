//! Limits with real processes: a 16 MiB gRPC message is refused, garbage
//! and a connection flood on both ports cost bounded memory, and supd keeps
//! answering throughout. Figures (supd RSS from /proc) are printed.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{anyhow, Result};
use sup_e2e::*;

/// A started supd and its pid, for RSS readings.
fn started_supd(work: &std::path::Path, config: &str) -> Result<(Supd, u32)> {
    let mut supd = Supd::new(work, config)?;
    supd.start()?;
    let pid = supd
        .proc
        .as_ref()
        .and_then(Proc::pid)
        .ok_or_else(|| anyhow!("supd pid"))?;
    Ok((supd, pid))
}

/// Sends one SubmitJob whose spec is `bytes` long; the gRPC status code.
fn submit_huge(port: u16, bytes: usize) -> Result<String> {
    use sup_proto::v1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
            .timeout(Duration::from_secs(30))
            .connect()
            .await?;
        let mut client = v1::control_service_client::ControlServiceClient::new(channel);
        let req = v1::SubmitJobRequest {
            spec_toml: "x".repeat(bytes),
            by: "limits-test".to_owned(),
            ..Default::default()
        };
        Ok(match client.submit_job(req).await {
            Ok(_) => "OK".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        })
    })
}

#[test]
fn oversized_messages_garbage_and_a_connection_flood_cost_bounded_memory() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (mut supd, pid) = started_supd(work.path(), "[http]\nheader_read_timeout = \"2s\"\n")?;
    let url = supd.url();
    let before = rss_kib(pid)?;
    println!("supd RSS before: {} KiB", before);

    // 1. A 16 MiB message: refused by the 4 MiB decode limit.
    println!("inject: SubmitJob with a 16 MiB spec");
    let outcome = submit_huge(supd.grpc_port, 16 * 1024 * 1024)?;
    assert!(
        outcome.starts_with("OutOfRange") || outcome.starts_with("ResourceExhausted"),
        "refused: {outcome}"
    );
    let after_big = rss_kib(pid)?;
    println!("refused: {outcome}; supd RSS {after_big} KiB");
    assert_eq!(
        supctl_json(&url, &["jobs"])?,
        serde_json::json!([]),
        "nothing was submitted"
    );

    // 2. Garbage: 16 MiB of non-HTTP/2 bytes on the gRPC port, and on the
    //    HTTP port.
    println!("inject: 16 MiB of garbage on each port");
    for port in [supd.grpc_port, supd.http_port] {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let chunk = vec![0xA5u8; 1024 * 1024];
        let mut sent = 0usize;
        for _ in 0..16 {
            if s.write_all(&chunk).is_err() {
                break; // closed by supd: that is the point
            }
            sent += chunk.len();
        }
        println!(
            "  port {port}: {} MiB written before supd closed it",
            sent >> 20
        );
    }

    // 3. A flood: 1000 connections to each port, each half a request
    //    (an HTTP/2 preface with nothing after it; a header line with no
    //    end), held open.
    const FLOOD: usize = 1000;
    println!("inject: {FLOOD} idle half-open connections on each port, held");
    let mut held = Vec::new();
    for i in 0..FLOOD {
        for (port, bytes) in [
            (supd.grpc_port, &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]),
            (
                supd.http_port,
                &b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n"[..],
            ),
        ] {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(mut s) => {
                    let _ = s.write_all(bytes);
                    held.push(s);
                }
                Err(e) => println!("  connection {i} to {port} refused: {e}"),
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let during = rss_kib(pid)?;
    // supd still answers both ports while the flood is held.
    let status = supctl_json(&url, &["status"])?;
    assert!(status["nodes"].is_array());
    let (code, _) = http_get(supd.http_port, "/readyz")?;
    assert_eq!(code, 200);
    println!(
        "during the flood ({} connections held): supd RSS {during} KiB; supctl status and /readyz answer",
        held.len()
    );
    drop(held);

    // 4. A half-sent HTTP request is dropped after http.header_read_timeout
    //    (2 s here) instead of holding the connection for ever.
    println!("inject: one HTTP request with its headers never finished");
    let mut half = TcpStream::connect(("127.0.0.1", supd.http_port))?;
    half.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\n")?;
    half.set_read_timeout(Some(Duration::from_secs(30)))?;
    let sent_at = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let closed = loop {
        match std::io::Read::read(&mut half, &mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // a 408 response, if any, before the close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    let waited = sent_at.elapsed();
    assert!(
        closed,
        "supd kept the half-sent request open for {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(20),
        "closed only after {waited:?}"
    );
    println!("check: supd closed it after {waited:.1?} (header_read_timeout 2s)");

    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid)?;
    assert!(
        supd.proc
            .as_mut()
            .map(|p| p.exited())
            .transpose()?
            .flatten()
            .is_none(),
        "supd is alive"
    );
    println!(
        "supd RSS after: {after} KiB (before {before} KiB, peak seen {} KiB)",
        during.max(after_big)
    );
    // Bounded: a flood of this size must not cost more than 256 MiB.
    assert!(
        during.max(after_big).max(after) < before + 256 * 1024,
        "memory grew from {before} KiB to {} KiB",
        during.max(after_big).max(after)
    );
    Ok(())
}

/// The 177-byte spec of issue 16: 40 million nodes of 1 GPU at a world
/// size multiple of 4,294,967,291. It used to take 21 s and 3.1 GB inside
/// the state actor while every other request waited.
const COSTLY_SPEC: &str = "name = \"costly\"\ncommand = [\"python3\"]\nnodes = 40000000\nmin_nodes = 1\ngpus_per_node = 1\nworld_size_multiple = 4294967291\ncheckpoint_dir = \"/tmp/c\"\n";

#[test]
fn a_spec_that_would_cost_gigabytes_is_refused_at_once_and_status_still_answers() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (supd, pid) = started_supd(work.path(), "")?;
    let url = supd.url();
    let spec = work.path().join("costly.toml");
    std::fs::write(&spec, COSTLY_SPEC)?;
    let before = rss_kib(pid)?;

    // A status asked while the spec is being judged must be answered too.
    let status_url = url.clone();
    let status = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let out = supctl(&status_url, &["status"]);
        (out, started.elapsed())
    });
    let started = std::time::Instant::now();
    let out = supctl(&url, &["job", "submit", &spec.display().to_string()])?;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "refused: {stderr}");
    assert!(
        stderr.contains("nodes: 40000000 is more than the 65536"),
        "{stderr}"
    );
    let (status_out, status_took) = status
        .join()
        .map_err(|_| anyhow!("the status thread panicked"))?;
    assert!(status_out?.status.success(), "supctl status answered");
    let after = rss_kib(pid)?;
    println!(
        "costly spec refused in {} ms (supctl round trip); a concurrent supctl status took {} ms; supd RSS {before} -> {after} KiB",
        took.as_millis(),
        status_took.as_millis()
    );
    assert!(
        after < before + 10 * 1024,
        "supd's RSS grew by {} KiB",
        after.saturating_sub(before)
    );
    let jobs = supctl_json(&url, &["jobs"])?;
    assert_eq!(jobs, serde_json::json!([]), "nothing was submitted");
    Ok(())
}
