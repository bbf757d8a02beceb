//! Transport security and access control with the real binaries: a CA and
//! certificates from `supctl certs init`, supd with `[grpc.tls]`, agents and
//! supctl over https.
//!
//! - A node certificate registers its own node; used with another node id
//!   it is refused, and that node never appears.
//! - A client with no certificate, with one from another CA, or speaking
//!   plaintext, gets nothing; one that sends nothing is cut off at the
//!   handshake timeout. supd logs each refusal with the peer and counts it
//!   by reason in `/metrics`.
//! - Viewers and nodes may read but not change; an operator's change is
//!   recorded under the certificate's name, whatever `--by` says.
//! - `supctl certs revoke`: supd re-reads its revocation list, cuts the
//!   revoked node's live stream and refuses it (and a revoked operator)
//!   from then on; the others are unaffected.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sup_e2e::*;
use sup_proto::v1;
use sup_proto::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn certs(args: &[&str]) -> Result<()> {
    // `certs` is offline: the supervisor URL is never dialled.
    let out = supctl("http://127.0.0.1:1", args)?;
    if !out.status.success() {
        bail!(
            "supctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `--{prefix}ca`, `--{prefix}cert` and `--{prefix}key` with the CA and the
/// certificate `stem` (`operator-alice`, `node-n1`) in `pki`.
fn flags(pki: &Path, stem: &str, prefix: &str) -> Vec<String> {
    [
        ("ca", "ca.pem".to_owned()),
        ("cert", format!("{stem}.pem")),
        ("key", format!("{stem}-key.pem")),
    ]
    .into_iter()
    .flat_map(|(flag, file)| {
        [
            format!("--{prefix}{flag}"),
            pki.join(file).display().to_string(),
        ]
    })
    .collect()
}

/// supctl's TLS flags.
fn tls_flags(pki: &Path, stem: &str) -> Vec<String> {
    flags(pki, stem, "")
}

/// sup-agent's TLS flags.
fn agent_tls_flags(pki: &Path, stem: &str) -> Vec<String> {
    flags(pki, stem, "tls-")
}

/// supd over mutual TLS with the CA and certificates in `pki`; `tls_extra`
/// are more lines of its `[grpc.tls]` table.
fn start_tls_supd(work: &Path, pki: &Path, tls_extra: &str) -> Result<Supd> {
    let config = format!(
        "[grpc.tls]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n{tls_extra}\n\
         [nodes]\ntelemetry_interval = \"500ms\"\n",
        ca = pki.join("ca.pem").display().to_string(),
        cert = pki.join("supd.pem").display().to_string(),
        key = pki.join("supd-key.pem").display().to_string(),
    );
    let mut supd = Supd::new(work, &config)?;
    supd.plaintext = false;
    supd.start()?;
    let url = supd.url();
    assert!(url.starts_with("https://"), "{url}");
    Ok(supd)
}

fn ctl_as(url: &str, pki: &Path, stem: &str, args: &[&str]) -> Result<std::process::Output> {
    let flags = tls_flags(pki, stem);
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    supctl(url, &all)
}

fn json_as(url: &str, pki: &Path, stem: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = ctl_as(url, pki, stem, &all)?;
    if !out.status.success() {
        bail!(
            "supctl {} as {stem} failed with {}: {}",
            all.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("supctl printed invalid JSON")
}

/// A raw gRPC status call with the given TLS client setup.
fn raw_status(url: &str, tls: Option<ClientTlsConfig>) -> Result<v1::ClusterStatus, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        ControlServiceClient::new(channel)
            .get_status(v1::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                let cause = std::error::Error::source(&s).map(|c| format!(" ({c:?})"));
                format!(
                    "{:?}: {}{}",
                    s.code(),
                    s.message(),
                    cause.unwrap_or_default()
                )
            })
    })
}

fn pem(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[test]
fn mutual_tls_binds_node_ids_and_only_operators_change_things() -> Result<()> {
    let work = tempfile::tempdir()?;
    let pki = work.path().join("pki");
    let other = work.path().join("other-ca");
    let pki_s = pki.display().to_string();
    certs(&[
        "certs",
        "init",
        "--dir",
        &pki_s,
        "--node",
        "n1",
        "--node",
        "n2",
        "--operator",
        "alice",
        "--viewer",
        "grafana",
    ])?;
    certs(&[
        "certs",
        "init",
        "--dir",
        &other.display().to_string(),
        "--operator",
        "alice",
    ])?;
    println!(
        "setup: CA + supd/n1/n2/alice/grafana certificates, and a second CA with its own 'alice'"
    );

    let supd = start_tls_supd(work.path(), &pki, "handshake_timeout = \"2s\"")?;
    let url = supd.url();

    let n1_flags = agent_tls_flags(&pki, "node-n1");
    let n1_args: Vec<&str> = n1_flags.iter().map(String::as_str).collect();
    let _n1 = start_agent(work.path(), &url, "n1", "127.0.0.1", "sim:2", &n1_args)?;
    // Node n1's certificate, claiming to be n3.
    let mut liar = start_agent(work.path(), &url, "n3", "127.0.0.1", "sim:2", &n1_args)?;
    println!("inject: agent n1 with its own certificate; agent 'n3' presenting n1's certificate");

    wait_for("n1 ready over mutual TLS", STARTUP_TIMEOUT, || {
        let s = json_as(&url, &pki, "viewer-grafana", &["status"])?;
        let ready = s["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == "n1" && n["state"] == "ready"));
        Ok(ready.then_some(()))
    })?;
    wait_for("the impostor's refusal in its log", STARTUP_TIMEOUT, || {
        Ok(liar
            .log_text()
            .contains("the certificate of node:n1 cannot register or report as node n3")
            .then_some(()))
    })?;
    let s = json_as(&url, &pki, "viewer-grafana", &["status"])?;
    let ids: Vec<&str> = s["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["n1"], "only n1 is registered: {s}");
    assert!(
        supd.log_text().contains("agent session refused"),
        "supd logs the refusal"
    );
    liar.kill()?;
    println!("check: n1 ready; 'n3' refused (PermissionDenied naming both ids), never registered");

    // Clients that must get nothing.
    let ca = Certificate::from_pem(pem(&pki.join("ca.pem"))?);
    let no_cert = raw_status(
        &url,
        Some(ClientTlsConfig::new().ca_certificate(ca.clone())),
    );
    assert!(
        no_cert.is_err(),
        "a client without a certificate was served"
    );
    let foreign = raw_status(
        &url,
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .identity(Identity::from_pem(
                    pem(&other.join("operator-alice.pem"))?,
                    pem(&other.join("operator-alice-key.pem"))?,
                )),
        ),
    );
    assert!(foreign.is_err(), "a certificate from another CA was served");
    let plaintext = raw_status(&format!("http://127.0.0.1:{}", supd.grpc_port), None);
    assert!(plaintext.is_err(), "a plaintext client was served");
    let control = raw_status(
        &url,
        Some(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .identity(Identity::from_pem(
                    pem(&pki.join("operator-alice.pem"))?,
                    pem(&pki.join("operator-alice-key.pem"))?,
                )),
        ),
    );
    assert!(
        control.is_ok(),
        "the same call with alice's certificate: {control:?}"
    );
    println!(
        "check: refused without a client certificate ({}), with another CA's ({}), in plaintext ({})",
        no_cert.err().unwrap_or_default(),
        foreign.err().unwrap_or_default(),
        plaintext.err().unwrap_or_default()
    );

    // supd says whom it refused and why: counted by reason, logged with the
    // peer's address (what an operator needs when a node will not connect).
    // A client that connects and says nothing is cut off at the handshake
    // timeout rather than holding a connection for ever.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", supd.grpc_port))?;
    silent.set_read_timeout(Some(Duration::from_secs(30)))?;
    let opened = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let read = std::io::Read::read(&mut silent, &mut buf);
    let held = opened.elapsed();
    let cut_off = match &read {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    assert!(
        cut_off,
        "a silent client was not cut off: {read:?} after {held:?}"
    );
    println!(
        "check: a client that sent nothing was closed after {held:.1?} (handshake_timeout = 2s)"
    );
    let reasons = [
        "no_client_certificate",
        "untrusted_certificate",
        "not_tls",
        "timeout",
    ];
    let metrics = wait_for("handshake failures in /metrics", STARTUP_TIMEOUT, || {
        let (_, body) = http_get(supd.http_port, "/metrics")?;
        Ok(reasons
            .iter()
            .all(|r| {
                body.contains(&format!(
                    "sup_grpc_tls_handshake_failures_total{{reason=\"{r}\"}}"
                ))
            })
            .then_some(body))
    })?;
    sup_e2e::promtool_check(&metrics)?;
    // Certificate expiry, to alert on before a year-old cluster locks
    // itself out: supd's own and the connected node's (issued for 365 days).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    for identity in ["supd", "node:n1"] {
        let series =
            format!("sup_tls_certificate_expiry_timestamp_seconds{{identity=\"{identity}\"}} ");
        let at: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no {series}in /metrics"))?;
        let days = (at - now) / 86_400.0;
        assert!(
            (364.0..366.0).contains(&days),
            "{identity}: expires in {days} days"
        );
    }
    let log = supd.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("TLS handshake refused") && l.contains("untrusted_certificate"))
        .ok_or_else(|| anyhow!("no refusal naming the untrusted certificate in supd's log"))?;
    assert!(refusal.contains("\"peer\":\"127.0.0.1:"), "{refusal}");
    assert!(refusal.contains("\"level\":\"WARN\""), "{refusal}");
    println!("check: supd counted the refusals by reason ({}) and logged the untrusted one with its peer: {refusal}", reasons.join(", "));

    // Readers cannot change anything.
    for reader in ["viewer-grafana", "node-n1"] {
        json_as(&url, &pki, reader, &["events"])?;
        let out = ctl_as(&url, &pki, reader, &["cordon", "n1", "--reason", "test"])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{reader}: {stderr}");
        assert!(stderr.contains("may only read"), "{reader}: {stderr}");
    }
    let node = json_as(&url, &pki, "viewer-grafana", &["node", "n1"])?;
    assert_eq!(node["state"], "ready", "no reader's cordon took effect");

    // The operator's change is recorded under the certificate.
    json_as(
        &url,
        &pki,
        "operator-alice",
        &["cordon", "n1", "--reason", "tls test", "--by", "mallory"],
    )?;
    let node = json_as(&url, &pki, "viewer-grafana", &["node", "n1"])?;
    assert_eq!(node["state"], "cordoned", "{node}");
    assert_eq!(node["cordon"]["by"], "operator:alice", "{node}");
    let events = json_as(&url, &pki, "viewer-grafana", &["events"])?;
    let recorded = events.as_array().is_some_and(|e| {
        e.iter().any(|e| {
            e["kind"] == "node_cordoned"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cordoned by operator:alice"))
        })
    });
    assert!(recorded, "cordon event names operator:alice: {events}");
    println!("check: viewer and node certificates may read, not cordon (exit 5); alice's cordon recorded as operator:alice although --by said mallory");
    Ok(())
}

#[test]
fn supd_without_transport_security_refuses_to_start_and_says_how() -> Result<()> {
    let work = tempfile::tempdir()?;
    let out = std::process::Command::new(bin("supd")?)
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no transport security"), "{stderr}");
    assert!(stderr.contains("supctl certs init"), "{stderr}");
    Ok(())
}

#[test]
fn a_revoked_certificate_is_cut_off_and_refused_from_then_on() -> Result<()> {
    let work = tempfile::tempdir()?;
    let pki = work.path().join("pki");
    let pki_s = pki.display().to_string();
    certs(&[
        "certs",
        "init",
        "--dir",
        &pki_s,
        "--node",
        "n1",
        "--node",
        "n2",
        "--operator",
        "alice",
        "--operator",
        "mallory",
    ])?;
    let crl = format!("crl = {:?}", pki.join("crl.pem").display().to_string());
    let supd = start_tls_supd(work.path(), &pki, &crl)?;
    let url = supd.url();
    let mut agents = Vec::new();
    for id in ["n1", "n2"] {
        let flags = agent_tls_flags(&pki, &format!("node-{id}"));
        let args: Vec<&str> = flags.iter().map(String::as_str).collect();
        agents.push(start_agent(
            work.path(),
            &url,
            id,
            "127.0.0.1",
            "sim:2",
            &args,
        )?);
    }
    let connected = |s: &serde_json::Value, id: &str| {
        s["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["id"] == id && n["connected"] == true))
    };
    wait_for("n1 and n2 connected", STARTUP_TIMEOUT, || {
        let s = json_as(&url, &pki, "operator-alice", &["status"])?;
        Ok((connected(&s, "n1") && connected(&s, "n2")).then_some(()))
    })?;
    json_as(&url, &pki, "operator-mallory", &["status"])?;
    println!("setup: n1 and n2 connected over mutual TLS; mallory can read");

    for (role, name) in [("node", "n2"), ("operator", "mallory")] {
        certs(&["certs", "revoke", "--dir", &pki_s, role, name])?;
    }
    println!("inject: `supctl certs revoke` node n2 and operator mallory (supd re-reads crl.pem)");

    let status = wait_for("n2 cut off", STARTUP_TIMEOUT, || {
        let s = json_as(&url, &pki, "operator-alice", &["status"])?;
        Ok((!connected(&s, "n2")).then_some(s))
    })?;
    assert!(connected(&status, "n1"), "n1 unaffected: {status}");
    let metrics = wait_for(
        "n2's reconnects refused as revoked",
        STARTUP_TIMEOUT,
        || {
            let (_, body) = http_get(supd.http_port, "/metrics")?;
            Ok(body
                .contains("sup_grpc_tls_handshake_failures_total{reason=\"revoked_certificate\"}")
                .then_some(body))
        },
    )?;
    sup_e2e::promtool_check(&metrics)?;
    let out = ctl_as(&url, &pki, "operator-mallory", &["status"])?;
    assert!(!out.status.success(), "a revoked operator was served");
    let log = supd.log_text();
    let loaded = log
        .lines()
        .find(|l| l.contains("certificate revocation list loaded") && l.contains("\"revoked\":2"))
        .ok_or_else(|| anyhow!("no reload of the list with both revocations in supd's log"))?;
    assert!(loaded.contains("\"connections_cut\":"), "{loaded}");
    // n2 stays out: still disconnected a few reconnect attempts later.
    std::thread::sleep(Duration::from_secs(3));
    let s = json_as(&url, &pki, "operator-alice", &["status"])?;
    assert!(!connected(&s, "n2") && connected(&s, "n1"), "{s}");
    println!("check: n2's live stream cut and its reconnects refused (revoked_certificate); mallory refused; n1 and alice unaffected: {loaded}");
    Ok(())
}
