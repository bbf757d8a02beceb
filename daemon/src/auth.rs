//! Who is calling, and what they may do.
//!
//! With mutual TLS (the default and the shipped configuration) every client
//! presents a certificate from the cluster CA whose `sup://ROLE/NAME` URI
//! (see [`sup_proto::identity`]) says who it is:
//!
//! - a node certificate may open the agent session for *its* node id only;
//! - anyone with a certificate may read (status, nodes, events, jobs, logs);
//! - only an operator certificate may change anything (cordon, uncordon,
//!   jobs, drills, breaker), and the change is recorded under the
//!   certificate's identity, not under a name the client typed.
//!
//! In plaintext mode (explicitly configured, loudly logged) nobody is
//! authenticated: callers are [`Caller::Anonymous`], every check passes and
//! the client's own `by` is recorded.

use sup_proto::identity::{Identity, Role};
use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Plaintext,
    MutualTls,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Plaintext mode: nothing is known about the caller.
    Anonymous,
    Known(Identity),
}

/// The caller of `request`, from its client certificate.
pub fn caller<T>(transport: Transport, request: &Request<T>) -> Result<Caller, Status> {
    match transport {
        Transport::Plaintext => Ok(Caller::Anonymous),
        Transport::MutualTls => {
            // rustls already verified the chain; a connection without a
            // client certificate never gets this far.
            let certs = request.peer_certs().ok_or_else(|| {
                Status::unauthenticated("no client certificate on this connection")
            })?;
            let leaf = certs.first().ok_or_else(|| {
                Status::unauthenticated("no client certificate on this connection")
            })?;
            identity_from_der(leaf.as_ref())
                .map(Caller::Known)
                .map_err(Status::permission_denied)
        }
    }
}

/// The sup identity written in a certificate's subject alternative names.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let subject = cert.subject().to_string();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("certificate {subject}: bad subject alternative names: {e}"))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .filter(|uri| uri.starts_with(sup_proto::identity::URI_PREFIX))
        .collect();
    match uris.as_slice() {
        [uri] => Identity::from_uri(uri)
            .map_err(|e| format!("certificate {subject}: {e}")),
        [] => Err(format!(
            "certificate {subject} carries no sup identity (a sup://node|operator|viewer/NAME URI); issue client certificates with `supctl certs issue`"
        )),
        _ => Err(format!(
            "certificate {subject} carries {} sup identities; it must carry exactly one",
            uris.len()
        )),
    }
}

impl Caller {
    /// The author to record for a change, or why the caller may not make it.
    /// `claimed_by` is what the client says (supctl's --by); with TLS the
    /// certificate's identity is recorded instead.
    pub fn change_author(&self, claimed_by: &str) -> Result<String, Status> {
        match self {
            Caller::Anonymous => Ok(if claimed_by.trim().is_empty() {
                "anonymous".to_owned()
            } else {
                claimed_by.to_owned()
            }),
            Caller::Known(id) if id.may_change() => Ok(id.to_string()),
            Caller::Known(id) => Err(Status::permission_denied(format!(
                "{id} may only read; changes need an operator certificate (`supctl certs issue operator NAME`)"
            ))),
        }
    }

    /// Whether the caller may open the agent session of `node_id`.
    pub fn check_node(&self, node_id: &str) -> Result<(), Status> {
        match self {
            Caller::Anonymous => Ok(()),
            Caller::Known(Identity {
                role: Role::Node,
                name,
            }) if name == node_id => Ok(()),
            Caller::Known(
                id @ Identity {
                    role: Role::Node, ..
                },
            ) => Err(Status::permission_denied(format!(
                "the certificate of {id} cannot register or report as node {node_id}"
            ))),
            Caller::Known(id) => Err(Status::permission_denied(format!(
                "{id} is not a node certificate; an agent needs the certificate of node {node_id}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        for uri in uris {
            p.subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("ia5")));
        }
        p.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn identity_is_read_from_the_san_uri() {
        let der = cert_with_uris(&["https://example.com/x", "sup://node/gpu-7"]);
        assert_eq!(
            identity_from_der(&der),
            Ok(Identity::node("gpu-7").expect("valid"))
        );
    }

    #[test]
    fn certificates_without_exactly_one_identity_are_refused() {
        let none = identity_from_der(&cert_with_uris(&[])).expect_err("none");
        assert!(none.contains("carries no sup identity"), "{none}");
        let two = identity_from_der(&cert_with_uris(&["sup://node/a", "sup://operator/b"]))
            .expect_err("two");
        assert!(two.contains("exactly one"), "{two}");
        let bad = identity_from_der(&cert_with_uris(&["sup://root/a"])).expect_err("bad role");
        assert!(bad.contains("not a sup identity URI"), "{bad}");
        assert!(identity_from_der(b"garbage").is_err());
    }

    #[test]
    fn nodes_register_only_as_themselves() {
        let n1 = Caller::Known(Identity::node("n1").expect("valid"));
        assert!(n1.check_node("n1").is_ok());
        let other = n1.check_node("n2").expect_err("n1 as n2");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert!(
            other
                .message()
                .contains("the certificate of node:n1 cannot register or report as node n2"),
            "{}",
            other.message()
        );
        let op = Caller::Known(Identity::operator("alice").expect("valid"));
        assert_eq!(
            op.check_node("n1").expect_err("operator").code(),
            tonic::Code::PermissionDenied
        );
        assert!(Caller::Anonymous.check_node("anything").is_ok());
    }

    #[test]
    fn only_operators_change_and_are_recorded_by_certificate() {
        let op = Caller::Known(Identity::operator("alice").expect("valid"));
        assert_eq!(
            op.change_author("mallory").ok().as_deref(),
            Some("operator:alice")
        );
        for reader in [
            Identity::node("n1").expect("valid"),
            Identity::new(Role::Viewer, "grafana").expect("valid"),
        ] {
            let e = Caller::Known(reader)
                .change_author("x")
                .expect_err("read-only");
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(e.message().contains("may only read"), "{}", e.message());
        }
        assert_eq!(
            Caller::Anonymous.change_author("bob").ok().as_deref(),
            Some("bob")
        );
        assert_eq!(
            Caller::Anonymous.change_author("").ok().as_deref(),
            Some("anonymous")
        );
    }
}
