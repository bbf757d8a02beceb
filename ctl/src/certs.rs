//! `supctl certs`: a small certificate authority for one sup cluster.
//!
//! `init` creates the cluster CA and, in the same go, certificates for supd
//! and any nodes and operators named; `issue` adds one later. Each client
//! certificate carries its identity as a `sup://ROLE/NAME` URI (see
//! [`sup_proto::identity`]): that is what supd checks, so node A's
//! certificate cannot register as node B and only operators can change
//! anything. Keys are written mode 0600 and nothing is ever overwritten: a
//! CA replaced by accident would lock every node out.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use sup_proto::identity::{Identity, Role};

use crate::error::CtlError;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";

/// What a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// supd's server certificate, valid for these DNS names / IP addresses.
    Supd { names: Vec<String> },
    /// A client: node, operator or viewer.
    Client(Identity),
}

impl Subject {
    /// Base of the file names: `supd`, `node-gpu-017`, `operator-alice`.
    pub fn file_stem(&self) -> String {
        match self {
            Subject::Supd { .. } => "supd".to_owned(),
            Subject::Client(id) => format!("{}-{}", id.role, id.name),
        }
    }
}

/// One certificate written: where its files are and what it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    pub what: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Names supd's certificate covers when none are given: enough for a
/// single-host trial; a real cluster names supd's DNS name or address.
pub const DEFAULT_SUPD_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn err(what: impl std::fmt::Display) -> CtlError {
    CtlError::Other(what.to_string())
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that are slightly behind this machine's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Creates the CA in `dir` (which must not hold one yet) and issues every
/// subject in `subjects` from it.
pub fn init(
    dir: &Path,
    ca_days: u32,
    leaf_days: u32,
    subjects: &[Subject],
) -> Result<Vec<Issued>, CtlError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(err(format!(
                "{} already exists; a cluster has one CA (use `supctl certs issue` to add certificates)",
                p.display()
            )));
        }
    }
    let key = KeyPair::generate().map_err(|e| err(format!("cannot generate the CA key: {e}")))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| err(format!("CA parameters: {e}")))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "sup cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, ca_days);
    let cert = params
        .self_signed(&key)
        .map_err(|e| err(format!("cannot sign the CA certificate: {e}")))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    let mut issued = vec![Issued {
        what: "cluster CA".to_owned(),
        cert: cert_path,
        key: key_path,
    }];
    for subject in subjects {
        issued.push(issue(dir, leaf_days, subject)?);
    }
    Ok(issued)
}

/// Issues one certificate from the CA in `dir`.
pub fn issue(dir: &Path, days: u32, subject: &Subject) -> Result<Issued, CtlError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| {
            err(format!(
                "cannot read {}: {e} (create the CA first with `supctl certs init --dir {}`)",
                p.display(),
                dir.display()
            ))
        })
    };
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(|e| {
        err(format!(
            "{} is not a usable key: {e}",
            ca_key_path.display()
        ))
    })?;
    let issuer = Issuer::from_ca_cert_pem(&read(&ca_cert_path)?, ca_key).map_err(|e| {
        err(format!(
            "{} is not a usable CA certificate: {e}",
            ca_cert_path.display()
        ))
    })?;

    let stem = subject.file_stem();
    let cert_path = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}-key.pem"));
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(err(format!(
                "{} already exists; remove it first to issue a new one",
                p.display()
            )));
        }
    }
    let (mut params, what) = match subject {
        Subject::Supd { names } => {
            if names.is_empty() {
                return Err(err(
                    "supd's certificate needs at least one DNS name or IP address",
                ));
            }
            let mut p = CertificateParams::new(names.clone())
                .map_err(|e| err(format!("supd names {names:?}: {e}")))?;
            p.distinguished_name.push(DnType::CommonName, "supd");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            (p, format!("supd server ({})", names.join(", ")))
        }
        Subject::Client(id) => {
            let mut p = CertificateParams::new(Vec::<String>::new())
                .map_err(|e| err(format!("certificate parameters: {e}")))?;
            p.distinguished_name
                .push(DnType::CommonName, id.name.as_str());
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, id.role.as_str());
            let uri = id
                .to_uri()
                .try_into()
                .map_err(|e| err(format!("identity {}: {e}", id.to_uri())))?;
            p.subject_alt_names.push(SanType::URI(uri));
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            (p, format!("{} {}", id.role, id.name))
        }
    };
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let key = KeyPair::generate().map_err(|e| err(format!("cannot generate a key: {e}")))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| err(format!("cannot sign the certificate for {what}: {e}")))?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    Ok(Issued {
        what,
        cert: cert_path,
        key: key_path,
    })
}

/// The subject for a role and its names, as given on the command line.
pub fn subject(role: &str, names: &[String]) -> Result<Subject, CtlError> {
    if role == "supd" {
        return Ok(Subject::Supd {
            names: names.to_vec(),
        });
    }
    let role = Role::parse(role).ok_or_else(|| {
        err(format!(
            "unknown role {role:?}; use supd, node, operator or viewer"
        ))
    })?;
    let [name] = names else {
        return Err(err(format!(
            "a {role} certificate names exactly one {role}, got {}",
            names.len()
        )));
    };
    Identity::new(role, name)
        .map(Subject::Client)
        .map_err(|e| err(format!("{role} name: {e}")))
}

/// Creates `path` (never replaces it); keys are readable by the owner only.
fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CtlError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options
        .open(path)
        .map_err(|e| err(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operator(name: &str) -> Subject {
        Subject::Client(Identity::operator(name).expect("valid"))
    }

    #[test]
    fn init_writes_a_ca_and_the_named_certificates_once() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("pki");
        let subjects = [
            Subject::Supd {
                names: vec!["localhost".into(), "127.0.0.1".into()],
            },
            Subject::Client(Identity::node("n1").expect("valid")),
            operator("alice"),
        ];
        let issued = init(&dir, 3650, 365, &subjects).expect("init");
        let names: Vec<_> = issued
            .iter()
            .map(|i| i.cert.file_name().and_then(|n| n.to_str()).unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            ["ca.pem", "supd.pem", "node-n1.pem", "operator-alice.pem"]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("operator-alice-key.pem"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = init(&dir, 3650, 365, &[]).expect_err("a second CA");
        assert!(again.to_string().contains("already exists"), "{again}");
        let twice = issue(&dir, 365, &operator("alice")).expect_err("same file");
        assert!(twice.to_string().contains("already exists"), "{twice}");
        issue(&dir, 365, &operator("bob")).expect("a new operator");
        let pem = std::fs::read_to_string(dir.join("node-n1.pem")).expect("cert");
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }

    #[test]
    fn issue_without_a_ca_says_how_to_make_one() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let e = issue(tmp.path(), 365, &operator("a")).expect_err("no CA");
        assert!(e.to_string().contains("supctl certs init"), "{e}");
    }

    #[test]
    fn subjects_are_checked() {
        assert!(subject("node", &["n1".into()]).is_ok());
        assert!(subject("node", &[]).is_err());
        assert!(subject("node", &["a".into(), "b".into()]).is_err());
        assert!(subject("admin", &["a".into()]).is_err());
        assert!(subject("operator", &["a b".into()]).is_err());
        assert_eq!(
            subject("supd", &["supd.example".into()]).expect("supd"),
            Subject::Supd {
                names: vec!["supd.example".into()]
            }
        );
    }
}
