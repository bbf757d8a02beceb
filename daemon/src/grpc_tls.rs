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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, CertificateError, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

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

/// Everything a handshake needs: the rustls configuration (rebuilt when
/// the revocation list changes), the timeout, and the live connections, so
/// that a revoked certificate's connections can be cut.
#[derive(Clone)]
pub struct Handshakes {
    shared: Arc<Shared>,
}

struct Shared {
    /// When supd's own certificate expires, unix seconds.
    own_not_after: Option<i64>,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crl_path: Option<PathBuf>,
    timeout: Duration,
    state: RwLock<Current>,
    live: Mutex<HashMap<u64, Live>>,
    next_id: AtomicU64,
}

/// What the handshakes use now.
struct Current {
    acceptor: TlsAcceptor,
    /// Serials of the revoked certificates.
    revoked: HashSet<Vec<u8>>,
    /// Which version of the revocation list file was read.
    crl_stamp: Option<FileStamp>,
}

/// One connection handed to tonic: its client certificate's serial and
/// the switch that cuts it.
struct Live {
    serial: Vec<u8>,
    /// `node:n1`, `operator:alice`; empty when the certificate has none.
    identity: String,
    /// When the client certificate expires, unix seconds.
    not_after: Option<i64>,
    cut: Arc<Cut>,
}

#[derive(Default)]
struct Cut {
    done: AtomicBool,
    reader: AtomicWaker,
}

/// How often the revocation list file is checked for a change.
const CRL_CHECK: Duration = Duration::from_secs(5);

impl Handshakes {
    /// From the cluster CA (to check client certificates against), supd's
    /// own certificate chain and key, all PEM, and the CA's revocation list
    /// file if there is one.
    pub fn new(
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
        crl_path: Option<&Path>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let ca = CertificateDer::pem_slice_iter(ca)
            .collect::<Result<Vec<_>, _>>()
            .context("the cluster CA file holds no readable certificate")?;
        if ca.is_empty() {
            anyhow::bail!("the cluster CA file holds no certificate");
        }
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .context("the supd certificate file holds no readable certificate")?;
        if chain.is_empty() {
            anyhow::bail!("the supd certificate file holds no certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(key)
            .context("the supd key file holds no readable private key")?;
        let (crls, revoked, crl_stamp) = match crl_path {
            Some(path) => {
                let (crls, revoked, stamp) = read_crl(path, &ca)?;
                (crls, revoked, Some(stamp))
            }
            None => (Vec::new(), HashSet::new(), None),
        };
        let acceptor = acceptor(&ca, &chain, &key, crls)?;
        let own_not_after = chain.first().and_then(|c| not_after(c.as_ref()));
        if let Some(at) = own_not_after {
            warn_if_expiring("supd", at);
        }
        Ok(Handshakes {
            shared: Arc::new(Shared {
                own_not_after,
                ca,
                chain,
                key,
                crl_path: crl_path.map(Path::to_owned),
                timeout,
                state: RwLock::new(Current {
                    acceptor,
                    revoked,
                    crl_stamp,
                }),
                live: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// When certificates expire, unix seconds: supd's own (`supd`) and,
    /// per identity, the soonest-expiring client certificate among the
    /// connections open now.
    pub fn expiries(&self) -> Vec<(String, i64)> {
        let mut by_identity: BTreeMap<String, i64> = BTreeMap::new();
        for conn in self.shared.live().values() {
            if let (false, Some(at)) = (conn.identity.is_empty(), conn.not_after) {
                let soonest = by_identity.entry(conn.identity.clone()).or_insert(at);
                *soonest = (*soonest).min(at);
            }
        }
        self.shared
            .own_not_after
            .map(|at| ("supd".to_owned(), at))
            .into_iter()
            .chain(by_identity)
            .collect()
    }

    /// Certificates revoked by the list in force.
    pub fn revoked_count(&self) -> usize {
        self.shared.read().revoked.len()
    }

    /// Re-reads the revocation list if its file changed: from then on the
    /// handshakes refuse what it revokes, and live connections whose client
    /// certificate it revokes are cut. Returns the connections cut. A list
    /// that cannot be used leaves the one in force (and says why once).
    pub fn reload_crl(&self) -> anyhow::Result<usize> {
        let shared = &self.shared;
        let Some(path) = &shared.crl_path else {
            return Ok(0);
        };
        let stamp = FileStamp::of(path)?;
        if shared.read().crl_stamp == Some(stamp) {
            return Ok(0);
        }
        let loaded = read_crl(path, &shared.ca).and_then(|(crls, revoked, stamp)| {
            Ok((
                acceptor(&shared.ca, &shared.chain, &shared.key, crls)?,
                revoked,
                stamp,
            ))
        });
        let (acceptor, revoked, stamp) = match loaded {
            Ok(l) => l,
            Err(e) => {
                // Not again until the file changes once more.
                shared.write().crl_stamp = Some(stamp);
                return Err(e);
            }
        };
        let count = revoked.len();
        {
            let mut current = shared.write();
            current.acceptor = acceptor;
            current.revoked = revoked;
            current.crl_stamp = Some(stamp);
        }
        let cut = self.cut_revoked();
        tracing::info!(
            path = %path.display(),
            revoked = count,
            connections_cut = cut,
            "certificate revocation list loaded"
        );
        Ok(cut)
    }

    /// Cuts every live connection whose client certificate is revoked.
    fn cut_revoked(&self) -> usize {
        let current = self.shared.read();
        let live = self.shared.live();
        let mut cut = 0;
        for conn in live.values() {
            if current.revoked.contains(&conn.serial) && !conn.cut.done.swap(true, Ordering::AcqRel)
            {
                conn.cut.reader.wake();
                cut += 1;
            }
        }
        cut
    }

    /// Checks the revocation list every few seconds until the connections'
    /// receiver (tonic) is gone. Each distinct problem is logged once.
    async fn watch_crl(self, tx: mpsc::Sender<io::Result<Connection>>) {
        if self.shared.crl_path.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(CRL_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut said: Option<String> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = tx.closed() => return,
            }
            let this = self.clone();
            let problem = match tokio::task::spawn_blocking(move || this.reload_crl()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(e) => Some(e.to_string()),
            };
            if problem.is_some() && problem != said {
                tracing::warn!(
                    error = problem.as_deref().unwrap_or_default(),
                    "certificate revocation list not reloaded; the previous one stays in force"
                );
            }
            said = problem;
        }
    }

    /// Wraps a finished handshake for tonic, registered for cutting.
    fn admit(&self, tls: TlsStream<TcpStream>) -> Connection {
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|leaf| leaf.as_ref().to_vec())
            .unwrap_or_default();
        let serial = x509_parser::parse_x509_certificate(&leaf)
            .map(|(_, cert)| cert.raw_serial().to_vec())
            .unwrap_or_default();
        let identity = crate::auth::identity_from_der(&leaf)
            .map(|id| id.to_string())
            .unwrap_or_default();
        let cut = Arc::new(Cut::default());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.shared.live().insert(
            id,
            Live {
                serial,
                identity,
                not_after: not_after(&leaf),
                cut: cut.clone(),
            },
        );
        Connection {
            inner: tls,
            cut,
            id,
            handshakes: self.clone(),
        }
    }
}

impl std::fmt::Debug for Handshakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes")
            .field("crl", &self.shared.crl_path)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        // Replaced whole under the lock: consistent after a panic.
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Current> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live(&self) -> MutexGuard<'_, HashMap<u64, Live>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn acceptor(
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> anyhow::Result<TlsAcceptor> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(ca.iter().cloned());
    if added == 0 {
        anyhow::bail!("the cluster CA file holds no usable CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
        .with_crls(crls)
        // Our CA issues client certificates directly: only they are listed.
        .only_check_end_entity_revocation()
        .build()
        .context("cannot check client certificates against the cluster CA")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .context("supd's certificate and key do not form a usable identity")?;
    // gRPC clients (tonic's included) insist on HTTP/2 by ALPN.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// When the certificate `der` expires, unix seconds.
fn not_after(der: &[u8]) -> Option<i64> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}

/// Certificates are issued for a year by default, all at once by `certs
/// init`: a month's notice in the log, besides the metric to alert on.
fn warn_if_expiring(whose: &str, not_after: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let days_left = (not_after - now) / 86_400;
    if days_left < 30 {
        tracing::warn!(
            certificate = whose,
            days_left,
            "TLS certificate expires soon: issue a new one (supctl certs issue) before it does"
        );
    }
}

/// A version of a file: `supctl certs revoke` replaces the list by rename,
/// so the inode changes even when two writes share a modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: SystemTime,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> anyhow::Result<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the revocation list {}", path.display()))?;
        Ok(FileStamp {
            modified: meta
                .modified()
                .with_context(|| format!("no modification time for {}", path.display()))?,
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

/// The revocation lists in `path` (PEM), the serials they revoke and the
/// file's version. Each list must be the cluster CA's: one from
/// another CA would leave every client's status unknown, refusing all.
fn read_crl(
    path: &Path,
    ca: &[CertificateDer<'static>],
) -> anyhow::Result<(
    Vec<CertificateRevocationListDer<'static>>,
    HashSet<Vec<u8>>,
    FileStamp,
)> {
    let stamp = FileStamp::of(path)?;
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the revocation list {}", path.display()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM revocation list", path.display()))?;
    if crls.is_empty() {
        anyhow::bail!(
            "{} holds no revocation list (write one with `supctl certs revoke`)",
            path.display()
        );
    }
    let ca_subjects: Vec<Vec<u8>> = ca
        .iter()
        .filter_map(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c.subject().as_raw().to_vec())
        .collect();
    let mut revoked = HashSet::new();
    for der in &crls {
        let (_, crl) = x509_parser::parse_x509_crl(der.as_ref())
            .map_err(|e| anyhow::anyhow!("{}: not a revocation list: {e}", path.display()))?;
        if !ca_subjects.contains(&crl.issuer().as_raw().to_vec()) {
            anyhow::bail!(
                "{}: the revocation list of {}, not of the cluster CA",
                path.display(),
                crl.issuer()
            );
        }
        revoked.extend(
            crl.iter_revoked_certificates()
                .map(|r| r.raw_serial().to_vec()),
        );
    }
    Ok((crls, revoked, stamp))
}

/// A client connection as tonic serves it: the TLS stream, until its
/// certificate is revoked.
pub struct Connection {
    inner: TlsStream<TcpStream>,
    cut: Arc<Cut>,
    id: u64,
    handshakes: Handshakes,
}

impl Connection {
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        self.cut.reader.register(cx.waker());
        if self.cut.done.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client certificate was revoked",
            ));
        }
        Ok(())
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.handshakes.shared.live().remove(&self.id);
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// The finished TLS connections of `listener`, for tonic's
/// `serve_with_incoming`. The accept loop (and the revocation list's
/// watch) end when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    handshakes: Handshakes,
    failures: Arc<HandshakeFailures>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(handshakes.clone().watch_crl(tx.clone()));
    tokio::spawn(accept_loop(listener, handshakes, failures, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    handshakes: Handshakes,
    failures: Arc<HandshakeFailures>,
    tx: mpsc::Sender<io::Result<Connection>>,
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
        let (handshakes, failures, log, tx) = (
            handshakes.clone(),
            failures.clone(),
            log.clone(),
            tx.clone(),
        );
        tokio::spawn(async move {
            let acceptor = handshakes.shared.read().acceptor.clone();
            let timeout = handshakes.shared.timeout;
            let outcome = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
            drop(permit);
            match outcome {
                Ok(Ok(tls)) => {
                    let _ = tx.send(Ok(handshakes.admit(tls))).await;
                }
                Ok(Err(e)) => refused(&failures, &log, peer, classify(&e), &e.to_string()),
                Err(_) => refused(
                    &failures,
                    &log,
                    peer,
                    "timeout",
                    &format!("no TLS handshake within {timeout:?}"),
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
        Some(rustls::Error::InvalidCertificate(CertificateError::Revoked)) => "revoked_certificate",
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

    /// A CA (certificate PEM, issuer) named `name`.
    fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed");
        let pem = cert.pem();
        (pem.clone(), rcgen::Issuer::new(params, key))
    }

    fn empty_crl(issuer: &rcgen::Issuer<'_, rcgen::KeyPair>) -> String {
        let now = time::OffsetDateTime::now_utc();
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .and_then(|c| c.pem())
        .expect("crl")
    }

    #[test]
    fn a_revocation_list_must_be_the_cluster_cas() {
        let (ca_pem, ca) = new_ca("cluster CA");
        let (_, other) = new_ca("another CA");
        let server_key = rcgen::KeyPair::generate().expect("key");
        let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server cert");
        let dir = tempfile::tempdir().expect("temp dir");
        let crl = dir.path().join("crl.pem");
        let handshakes = |crl_pem: &str| {
            std::fs::write(&crl, crl_pem).expect("write crl");
            Handshakes::new(
                ca_pem.as_bytes(),
                server.pem().as_bytes(),
                server_key.serialize_pem().as_bytes(),
                Some(&crl),
                Duration::from_secs(1),
            )
        };
        let ok = handshakes(&empty_crl(&ca)).expect("the cluster CA's list");
        assert_eq!(ok.revoked_count(), 0);
        let foreign = handshakes(&empty_crl(&other))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(foreign.contains("not of the cluster CA"), "{foreign}");
        let garbage = handshakes("not a list")
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(garbage.contains("holds no revocation list"), "{garbage}");
    }

    #[test]
    fn files_that_hold_no_certificate_or_key_are_refused_by_name() {
        let err = Handshakes::new(b"", b"", b"", None, Duration::from_secs(1))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("cluster CA"), "{err}");
    }
}
