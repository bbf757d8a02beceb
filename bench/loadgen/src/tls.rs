//! `--tls`: the certificates of a mutual-TLS run, made in memory.
//!
//! A production cluster runs mutual TLS (README, "Securing a cluster"), so
//! the benchmark can too: a throwaway CA, supd's server certificate (written
//! to the run directory for supd's `[grpc.tls]`) and one client certificate
//! per simulated node, each carrying its node's identity exactly as `supctl
//! certs issue` writes it, so supd accepts it as that node and no other.
//! The controller (job submission, event polling) gets an operator
//! certificate, as `supctl` would use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sup_proto::identity::Identity;
use tonic::transport::{Certificate, ClientTlsConfig};

/// The names supd's certificate covers: the agents dial 127.0.0.1, and
/// localhost is there for anyone poking at a kept run by hand.
const SUPD_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// A client certificate and its key, PEM.
pub(crate) struct ClientPem {
    cert: String,
    key: String,
}

/// Everything a `--tls` run needs.
pub(crate) struct BenchPki {
    ca_pem: String,
    /// One per simulated node, by agent index.
    nodes: Vec<ClientPem>,
    /// The loadgen controller's own (operator) certificate.
    operator: ClientPem,
    /// supd's `[grpc.tls]` files in the run directory.
    pub(crate) ca_path: PathBuf,
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    /// How long generating every key and certificate took.
    pub(crate) generated_in: Duration,
}

impl BenchPki {
    /// Generates the CA, supd's certificate (written into `dir`) and one
    /// client certificate for each of `node_ids`.
    pub(crate) fn generate(dir: &Path, node_ids: &[String]) -> anyhow::Result<BenchPki> {
        let t0 = Instant::now();
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sup-loadgen CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("signing the CA certificate")?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let supd_names: Vec<String> = SUPD_NAMES.iter().map(|n| (*n).to_owned()).collect();
        let mut supd_params = CertificateParams::new(supd_names)?;
        supd_params
            .distinguished_name
            .push(DnType::CommonName, "supd");
        supd_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let supd = sign(supd_params, &issuer).context("supd's certificate")?;

        let nodes = node_ids
            .iter()
            .map(|id| {
                let identity = Identity::node(id)
                    .map_err(|e| anyhow::anyhow!("node id {id:?} is not an identity: {e}"))?;
                client(&identity, &issuer)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let operator =
            Identity::operator("loadgen").map_err(|e| anyhow::anyhow!("operator identity: {e}"))?;
        let operator = client(&operator, &issuer)?;
        let generated_in = t0.elapsed();

        let ca_path = dir.join("ca.pem");
        let cert_path = dir.join("supd.pem");
        let key_path = dir.join("supd-key.pem");
        for (path, pem) in [
            (&ca_path, &ca_pem),
            (&cert_path, &supd.cert),
            (&key_path, &supd.key),
        ] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(BenchPki {
            ca_pem,
            nodes,
            operator,
            ca_path,
            cert_path,
            key_path,
            generated_in,
        })
    }

    /// How many client certificates there are (nodes and the operator).
    pub(crate) fn clients(&self) -> usize {
        self.nodes.len() + 1
    }

    /// The TLS settings of simulated agent `idx`: trust only the run's CA,
    /// present that node's certificate.
    pub(crate) fn node_config(&self, idx: usize) -> anyhow::Result<ClientTlsConfig> {
        let pem = self
            .nodes
            .get(idx)
            .with_context(|| format!("no certificate for agent {idx}"))?;
        Ok(self.config(pem))
    }

    /// The controller's TLS settings (an operator: it submits the job).
    pub(crate) fn operator_config(&self) -> ClientTlsConfig {
        self.config(&self.operator)
    }

    fn config(&self, pem: &ClientPem) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(&pem.cert, &pem.key))
    }
}

/// A client certificate for `id`, its identity set as `supctl certs issue`
/// sets it (supd reads the URI SAN; the DN is for humans and other tools).
fn client(id: &Identity, issuer: &Issuer<'_, KeyPair>) -> anyhow::Result<ClientPem> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, id.name.as_str());
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, id.role.as_str());
    let uri = id
        .to_uri()
        .try_into()
        .with_context(|| format!("identity {}", id.to_uri()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(params, issuer).with_context(|| format!("the certificate of {}", id.to_uri()))
}

/// A fresh key, and `params` signed by the CA for it.
fn sign(mut params: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> anyhow::Result<ClientPem> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params.signed_by(&key, issuer).context("signing")?;
    Ok(ClientPem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}
