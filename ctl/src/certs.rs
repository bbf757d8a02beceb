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
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType,
    SerialNumber,
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
    // An empty list from day one, so supd's grpc.tls.crl can name it before
    // anything is revoked.
    let crl = write_crl(dir, &load_issuer(dir)?, Vec::new(), 1)?;
    issued.push(Issued {
        what: "certificate revocation list (empty)".to_owned(),
        cert: crl,
        key: dir.join(CA_KEY),
    });
    for subject in subjects {
        issued.push(issue(dir, leaf_days, subject)?);
    }
    Ok(issued)
}

/// A certificate added to the revocation list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Revoked {
    pub what: String,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// False when the list already held it (nothing changed).
    pub added: bool,
    /// The list, and how many certificates it revokes now.
    pub crl: PathBuf,
    pub revoked_total: usize,
}

/// Adds the certificate of `subject` (its file in `dir`) to the CA's
/// revocation list `dir/crl.pem`, signed anew by the CA. supd re-reads the
/// list when it changes: the certificate is refused from then on and its
/// live connections are cut.
pub fn revoke(dir: &Path, subject: &Subject) -> Result<Revoked, CtlError> {
    if let Subject::Supd { .. } = subject {
        return Err(err(
            "supd's own certificate is not checked against the list; issue supd a new one instead",
        ));
    }
    let issuer = load_issuer(dir)?;
    let stem = subject.file_stem();
    let cert_path = dir.join(format!("{stem}.pem"));
    let pem = std::fs::read(&cert_path)
        .map_err(|e| err(format!("cannot read {}: {e}", cert_path.display())))?;
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| {
        err(format!(
            "{} is not a PEM certificate: {e}",
            cert_path.display()
        ))
    })?;
    let cert = block
        .parse_x509()
        .map_err(|e| err(format!("{} does not parse: {e}", cert_path.display())))?;
    let serial = cert.raw_serial().to_vec();
    let serial_hex = cert.raw_serial_as_string();
    let what = match subject {
        Subject::Supd { .. } => "supd".to_owned(),
        Subject::Client(id) => format!("{} {}", id.role, id.name),
    };

    let (mut entries, number) = read_crl(dir)?;
    let added = !entries.iter().any(|e| e.serial_number.to_bytes() == serial);
    if added {
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: time::OffsetDateTime::now_utc(),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let revoked_total = entries.len();
    let crl = if added {
        write_crl(dir, &issuer, entries, number + 1)?
    } else {
        dir.join(CRL)
    };
    Ok(Revoked {
        what,
        serial: serial_hex,
        added,
        crl,
        revoked_total,
    })
}

pub const CRL: &str = "crl.pem";

/// One certificate in a CA directory, for `supctl certs list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub file: String,
    /// `ca`, `supd`, or the sup identity (`node:n1`, `operator:alice`).
    pub identity: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days until it expires (negative: expired).
    pub days_left: i64,
    pub revoked: bool,
}

/// Every certificate in `dir` (keys and the revocation list skipped), by
/// file name, with its expiry and whether the list revokes it.
pub fn list(dir: &Path, now: time::OffsetDateTime) -> Result<Vec<Listed>, CtlError> {
    let (revoked, _) = read_crl(dir)?;
    let revoked: Vec<Vec<u8>> = revoked.iter().map(|r| r.serial_number.to_bytes()).collect();
    let entries =
        std::fs::read_dir(dir).map_err(|e| err(format!("cannot list {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".pem") && !n.ends_with("-key.pem") && n != CRL)
        })
        .collect();
    files.sort();
    let mut listed = Vec::new();
    for path in files {
        let pem = std::fs::read(&path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let Ok((_, block)) = x509_parser::pem::parse_x509_pem(&pem) else {
            continue; // not a certificate: not ours to judge
        };
        let Ok(cert) = block.parse_x509() else {
            continue;
        };
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let identity = if file == CA_CERT {
            "ca".to_owned()
        } else {
            cert.subject_alternative_name()
                .ok()
                .flatten()
                .into_iter()
                .flat_map(|san| san.value.general_names.iter())
                .find_map(|name| match name {
                    x509_parser::extensions::GeneralName::URI(uri) => {
                        Identity::from_uri(uri).ok().map(|id| id.to_string())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| "supd".to_owned())
        };
        let not_after = cert.validity().not_after.to_datetime();
        listed.push(Listed {
            file,
            identity,
            serial: cert.raw_serial_as_string(),
            not_after: not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            days_left: (not_after - now).whole_days(),
            revoked: revoked.iter().any(|r| r.as_slice() == cert.raw_serial()),
        });
    }
    Ok(listed)
}

/// The entries and number of `dir/crl.pem`; none and 0 when there is no
/// list yet.
fn read_crl(dir: &Path) -> Result<(Vec<RevokedCertParams>, u64), CtlError> {
    let path = dir.join(CRL);
    let pem = match std::fs::read(&path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(err(format!("cannot read {}: {e}", path.display()))),
    };
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| {
        err(format!(
            "{} is not a PEM revocation list: {e}",
            path.display()
        ))
    })?;
    let (_, crl) = x509_parser::parse_x509_crl(&block.contents)
        .map_err(|e| err(format!("{} does not parse: {e}", path.display())))?;
    let number = crl
        .crl_number()
        .map(|n| {
            n.to_bytes_be()
                .iter()
                .fold(0u64, |acc, b| acc.wrapping_shl(8) | u64::from(*b))
        })
        .unwrap_or(0);
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: None,
            invalidity_date: None,
        })
        .collect();
    Ok((entries, number))
}

/// Signs and writes `dir/crl.pem` (replacing it whole: written aside, then
/// renamed, so supd never reads half a list).
fn write_crl(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    revoked_certs: Vec<RevokedCertParams>,
    number: u64,
) -> Result<PathBuf, CtlError> {
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        // supd does not enforce it; a far date keeps other readers happy.
        next_update: now + time::Duration::days(3650),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(issuer)
        .and_then(|c| c.pem())
        .map_err(|e| err(format!("cannot sign the revocation list: {e}")))?;
    let path = dir.join(CRL);
    let aside = dir.join(format!(".{CRL}.new"));
    let _ = std::fs::remove_file(&aside);
    write_new(&aside, crl.as_bytes(), false)?;
    std::fs::rename(&aside, &path).map_err(|e| {
        err(format!(
            "cannot replace {} with {}: {e}",
            path.display(),
            aside.display()
        ))
    })?;
    Ok(path)
}

/// The CA in `dir`, ready to sign.
fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CtlError> {
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
    Issuer::from_ca_cert_pem(&read(&ca_cert_path)?, ca_key).map_err(|e| {
        err(format!(
            "{} is not a usable CA certificate: {e}",
            ca_cert_path.display()
        ))
    })
}

/// Issues one certificate from the CA in `dir`.
pub fn issue(dir: &Path, days: u32, subject: &Subject) -> Result<Issued, CtlError> {
    let issuer = load_issuer(dir)?;

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
            [
                "ca.pem",
                "crl.pem",
                "supd.pem",
                "node-n1.pem",
                "operator-alice.pem"
            ]
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
    fn revoking_adds_each_certificate_once_to_a_list_signed_anew() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("pki");
        let n1 = Subject::Client(Identity::node("n1").expect("valid"));
        let n2 = Subject::Client(Identity::node("n2").expect("valid"));
        init(&dir, 3650, 365, &[n1.clone(), n2.clone()]).expect("init");
        assert_eq!(read_crl(&dir).expect("empty list").0.len(), 0);

        let first = revoke(&dir, &n1).expect("revoke n1");
        assert!(first.added && first.revoked_total == 1, "{first:?}");
        let again = revoke(&dir, &n1).expect("revoke n1 again");
        assert!(!again.added && again.revoked_total == 1, "{again:?}");
        let second = revoke(&dir, &n2).expect("revoke n2");
        assert_eq!(second.revoked_total, 2);

        let (entries, number) = read_crl(&dir).expect("list");
        assert_eq!(number, 3, "init, n1, n2: one signature each");
        let serial_of = |stem: &str| {
            let pem = std::fs::read(dir.join(format!("{stem}.pem"))).expect("cert");
            let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
            block.parse_x509().expect("cert").raw_serial().to_vec()
        };
        let listed: Vec<Vec<u8>> = entries.iter().map(|e| e.serial_number.to_bytes()).collect();
        assert_eq!(listed, [serial_of("node-n1"), serial_of("node-n2")]);

        let missing = revoke(&dir, &operator("nobody")).expect_err("no such certificate");
        assert!(
            missing.to_string().contains("operator-nobody.pem"),
            "{missing}"
        );
        let supd = revoke(
            &dir,
            &Subject::Supd {
                names: vec!["localhost".into()],
            },
        )
        .expect_err("supd is not a client");
        assert!(supd.to_string().contains("issue supd a new one"), "{supd}");
    }

    #[test]
    fn list_shows_identities_expiry_and_revocation() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("pki");
        let n1 = Subject::Client(Identity::node("n1").expect("valid"));
        let supd = Subject::Supd {
            names: vec!["localhost".into()],
        };
        init(&dir, 3650, 365, &[supd, n1.clone(), operator("alice")]).expect("init");
        revoke(&dir, &n1).expect("revoke");
        let now = time::OffsetDateTime::now_utc();
        let listed = list(&dir, now).expect("list");
        let rows: Vec<(&str, &str, bool)> = listed
            .iter()
            .map(|l| (l.file.as_str(), l.identity.as_str(), l.revoked))
            .collect();
        assert_eq!(
            rows,
            [
                ("ca.pem", "ca", false),
                ("node-n1.pem", "node:n1", true),
                ("operator-alice.pem", "operator:alice", false),
                ("supd.pem", "supd", false),
            ]
        );
        let days: Vec<i64> = listed.iter().map(|l| l.days_left).collect();
        assert_eq!(days, [3649, 364, 364, 364], "whole days, rounded down");
        let later = list(&dir, now + time::Duration::days(400)).expect("list");
        assert!(later[1].days_left < 0, "{later:?}");
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
