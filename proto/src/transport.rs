//! How a client (sup-agent, supctl) reaches supd: the URL scheme says
//! plaintext (`http://`) or TLS (`https://`), and TLS needs the cluster CA
//! plus this client's certificate and key (mutual TLS: supd learns who is
//! calling from the certificate, see [`crate::identity`]). Mixing the two is
//! an error rather than a silent downgrade.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The PEM files a client presents to supd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// The cluster CA that signed supd's certificate.
    pub ca: PathBuf,
    /// This client's certificate (node, operator or viewer).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Name to verify supd's certificate against; default: the URL's host.
    pub server_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a PEM {what} (no '-----BEGIN {marker}' line)")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        marker: &'static str,
    },
    #[error("supervisor URL {0:?} is https:// but no TLS files are set: give the cluster CA, a client certificate and its key")]
    TlsFilesMissing(String),
    #[error("supervisor URL {0:?} is http:// (plaintext) but TLS files are set; use https:// or drop the TLS files")]
    PlaintextWithTls(String),
    #[error("supervisor URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
}

/// Whether the URL asks for TLS; `None` for a scheme that is neither.
pub fn wants_tls(url: &str) -> Option<bool> {
    if url.starts_with("https://") {
        Some(true)
    } else if url.starts_with("http://") {
        Some(false)
    } else {
        None
    }
}

/// An endpoint for `url`, with TLS set up from `tls` when the URL is
/// `https://`. Reads and sanity-checks the files now, so a wrong path is
/// reported as such instead of as a failed handshake later.
pub fn endpoint(url: &str, tls: Option<&ClientTlsFiles>) -> Result<Endpoint, TransportError> {
    let bad = |message: String| TransportError::BadUrl {
        url: url.to_owned(),
        message,
    };
    let secure = wants_tls(url).ok_or_else(|| bad("use http:// or https://".to_owned()))?;
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?;
    match (secure, tls) {
        (false, None) => Ok(endpoint),
        (false, Some(_)) => Err(TransportError::PlaintextWithTls(url.to_owned())),
        (true, None) => Err(TransportError::TlsFilesMissing(url.to_owned())),
        (true, Some(files)) => endpoint
            .tls_config(client_tls_config(files)?)
            .map_err(|e| bad(format!("TLS setup failed: {e}"))),
    }
}

/// Mutual TLS from the files: trust only `ca`, present `cert`, verify the
/// server as `server_name` when set (else the URL's host). Reads the files
/// now, so that a wrong path is reported as such. Also supd's etcd client.
pub fn client_tls_config(files: &ClientTlsFiles) -> Result<ClientTlsConfig, TransportError> {
    let ca = read_pem(&files.ca, "CA certificate", "CERTIFICATE")?;
    let cert = read_pem(&files.cert, "client certificate", "CERTIFICATE")?;
    let key = read_pem(&files.key, "client key", "PRIVATE KEY")?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key));
    if let Some(name) = &files.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// Reads a PEM file and checks that it holds at least one block of the
/// expected kind (`marker` is matched as a suffix: "PRIVATE KEY" accepts
/// PKCS#8, EC and RSA keys).
pub fn read_pem(
    path: &Path,
    what: &'static str,
    marker: &'static str,
) -> Result<Vec<u8>, TransportError> {
    let bytes = std::fs::read(path).map_err(|source| TransportError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| {
        l.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(marker))
    });
    if !found {
        return Err(TransportError::NotPem {
            what,
            path: path.to_owned(),
            marker,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> ClientTlsFiles {
        ClientTlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            server_name: None,
        }
    }

    #[test]
    fn scheme_and_files_must_agree() {
        let dir = std::env::temp_dir();
        assert!(endpoint("http://127.0.0.1:1", None).is_ok());
        assert!(matches!(
            endpoint("https://127.0.0.1:1", None),
            Err(TransportError::TlsFilesMissing(_))
        ));
        assert!(matches!(
            endpoint("http://127.0.0.1:1", Some(&files(&dir))),
            Err(TransportError::PlaintextWithTls(_))
        ));
        assert!(matches!(
            endpoint("grpc://127.0.0.1:1", None),
            Err(TransportError::BadUrl { .. })
        ));
    }

    #[test]
    fn missing_or_non_pem_files_are_named() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path();
        let err = endpoint("https://127.0.0.1:1", Some(&files(dir))).expect_err("no files there");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        std::fs::write(dir.join("ca.pem"), "hello").expect("write");
        let err = endpoint("https://127.0.0.1:1", Some(&files(dir))).expect_err("not PEM");
        assert!(
            err.to_string()
                .contains("is not a PEM CA certificate (no '-----BEGIN CERTIFICATE' line)"),
            "{err}"
        );
    }
}
