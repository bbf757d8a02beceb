//! TLS handshakes of the gRPC listener, done here rather than inside tonic.
//!
//! When a node will not connect, the operator's first question is why, and
//! the answer (an untrusted or expired certificate, none at all, a client
//! speaking plaintext) is known only to the server. tonic logs a failed
//! handshake at debug level without the peer's address; here each one is
//! logged at warn with the address and the reason (rate-limited: a port
//! scanner must not flood the log) and counted by reason for `/metrics`
//! (`sup_grpc_tls_handshake_failures_total`). The handshake itself is the
//! one tonic would do: client certificate required and checked against the
//! cluster CA, ALPN `h2`, the configured timeout. Finished streams go to
//! tonic as they are, and tonic reads the client certificate off them for
//! [`crate::auth`].

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, CertificateError, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::actor::Counters;

/// Handshakes in flight at once; past this, accepting waits (the kernel's
/// backlog holds the rest), so a flood of silent connections costs bounded
/// memory until each hits the handshake timeout.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// Failed handshakes logged per minute at most; the rest are counted and
/// summed up in the next line that is logged.
const LOGGED_PER_MINUTE: u32 = 20;

/// Failed handshakes by reason (the `reason` label of the metric).
#[derive(Debug, Default)]
pub struct HandshakeFailures(Mutex<BTreeMap<&'static str, u64>>);

impl HandshakeFailures {
    fn add(&self, reason: &'static str) {
        *self.lock().entry(reason).or_default() += 1;
    }

    /// (reason, count) pairs so far.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.lock().iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // Counters: consistent between statements, usable after a panic.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Everything a handshake needs, built once from the PEM files.
#[derive(Clone)]
pub struct Handshakes {
    acceptor: TlsAcceptor,
    timeout: Duration,
}

impl Handshakes {
    /// From the cluster CA (to check client certificates against) and
    /// supd's own certificate chain and key, all PEM.
    pub fn new(ca: &[u8], cert: &[u8], key: &[u8], timeout: Duration) -> anyhow::Result<Self> {
        let mut roots = RootCertStore::empty();
        let ca_certs = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .context("the cluster CA file holds no readable certificate")?;
        let (added, _) = roots.add_parsable_certificates(ca_certs);
        if added == 0 {
            anyhow::bail!("the cluster CA file holds no usable CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .context("cannot check client certificates against the cluster CA")?;
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .context("the supd certificate file holds no readable certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .context("the supd key file holds no readable private key")?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .context("supd's certificate and key do not form a usable identity")?;
        // gRPC clients (tonic's included) insist on HTTP/2 by ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Handshakes {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            timeout,
        })
    }
}

/// The finished TLS connections of `listener`, for tonic's
/// `serve_with_incoming`. The accept loop ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    handshakes: Handshakes,
    counters: Arc<Counters>,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, handshakes, counters, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    handshakes: Handshakes,
    counters: Arc<Counters>,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let log = Arc::new(Mutex::new(LogLimit::new(Instant::now())));
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather
                    // than spin; the listener itself stays usable.
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (handshakes, counters, log, tx) = (
            handshakes.clone(),
            counters.clone(),
            log.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let outcome =
                tokio::time::timeout(handshakes.timeout, handshakes.acceptor.accept(stream)).await;
            drop(permit);
            match outcome {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(tls)).await;
                }
                Ok(Err(e)) => refused(
                    &counters.tls_handshake_failures,
                    &log,
                    peer,
                    classify(&e),
                    &e.to_string(),
                ),
                Err(_) => refused(
                    &counters.tls_handshake_failures,
                    &log,
                    peer,
                    "timeout",
                    &format!("no TLS handshake within {:?}", handshakes.timeout),
                ),
            }
        });
    }
}

fn refused(
    failures: &HandshakeFailures,
    log: &Mutex<LogLimit>,
    peer: SocketAddr,
    reason: &'static str,
    error: &str,
) {
    failures.add(reason);
    if reason == "closed" {
        // A TCP probe (load balancer, port check) that connects and leaves.
        tracing::debug!(%peer, error, "gRPC connection closed before its TLS handshake");
        return;
    }
    let allowed = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .allow(Instant::now());
    if let Some(suppressed) = allowed {
        tracing::warn!(
            %peer,
            reason,
            error,
            suppressed_since_last = suppressed,
            "gRPC TLS handshake refused: the client is not let in (see README, \"Securing a cluster\")"
        );
    }
}

/// The metric's `reason` label for a failed handshake.
fn classify(e: &io::Error) -> &'static str {
    let rustls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => "expired_certificate",
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => "certificate_not_valid_yet",
        // BadSignature: issued in the name of the cluster CA but not signed by
        // it (another cluster's CA, made with the same default name).
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "untrusted_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "invalid_certificate",
        Some(
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. },
        ) => "not_tls",
        Some(rustls::Error::NoApplicationProtocol) => "no_h2",
        Some(_) => "other",
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}

/// At most [`LOGGED_PER_MINUTE`] lines a minute.
#[derive(Debug)]
struct LogLimit {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    fn new(now: Instant) -> LogLimit {
        LogLimit {
            window_start: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Some(failures suppressed since the last line logged) when this one
    /// may be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if now.duration_since(self.window_start) >= Duration::from_secs(60) {
            self.window_start = now;
            self.logged = 0;
        }
        if self.logged >= LOGGED_PER_MINUTE {
            self.suppressed += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limit_lets_a_burst_through_then_sums_up_what_it_held_back() {
        let t0 = Instant::now();
        let mut limit = LogLimit::new(t0);
        for _ in 0..LOGGED_PER_MINUTE {
            assert_eq!(limit.allow(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.allow(t0 + Duration::from_secs(30)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_secs(61)), Some(5));
        assert_eq!(limit.allow(t0 + Duration::from_secs(62)), Some(0));
    }

    #[test]
    fn failures_are_classified_by_what_went_wrong() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify(&tls(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))),
            "untrusted_certificate"
        );
        assert_eq!(
            classify(&tls(rustls::Error::InvalidCertificate(
                CertificateError::Expired
            ))),
            "expired_certificate"
        );
        assert_eq!(
            classify(&tls(rustls::Error::NoCertificatesPresented)),
            "no_client_certificate"
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            "closed"
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::PermissionDenied)),
            "other"
        );
    }

    #[test]
    fn files_that_hold_no_certificate_or_key_are_refused_by_name() {
        let err = Handshakes::new(b"", b"", b"", Duration::from_secs(1))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("cluster CA"), "{err}");
    }
}
