//! Who a certificate speaks for. `supctl certs` writes the identity into a
//! certificate's subject alternative names as a URI, supd reads it back from
//! the client certificate of each TLS connection. One definition, so the
//! issuer and the checker cannot disagree.
//!
//! - `sup://node/<node-id>`: a sup-agent; may register and report only as
//!   that node, and read.
//! - `sup://operator/<name>`: a person or tool allowed to change things
//!   (cordon, jobs, drills, breaker); recorded as the author of each change.
//! - `sup://viewer/<name>`: read-only (dashboards, scripts).

use std::fmt;

pub const URI_PREFIX: &str = "sup://";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Node,
    Operator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "node" => Some(Role::Node),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity name is empty")]
    Empty,
    #[error("identity name {0:?} is longer than 128 bytes")]
    TooLong(String),
    #[error("identity name {name:?} contains {c:?}; use letters, digits, '.', '-', '_' and '@'")]
    BadChar { name: String, c: char },
    #[error("{0:?} is not a sup identity URI (sup://node|operator|viewer/<name>)")]
    NotAnIdentity(String),
}

impl Identity {
    pub fn new(role: Role, name: &str) -> Result<Identity, IdentityError> {
        check_name(name)?;
        Ok(Identity {
            role,
            name: name.to_owned(),
        })
    }

    pub fn node(id: &str) -> Result<Identity, IdentityError> {
        Identity::new(Role::Node, id)
    }

    pub fn operator(name: &str) -> Result<Identity, IdentityError> {
        Identity::new(Role::Operator, name)
    }

    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Result<Identity, IdentityError> {
        let not = || IdentityError::NotAnIdentity(uri.to_owned());
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(not)?;
        let (role, name) = rest.split_once('/').ok_or_else(not)?;
        let role = Role::parse(role).ok_or_else(not)?;
        Identity::new(role, name)
    }

    pub fn may_change(&self) -> bool {
        self.role == Role::Operator
    }
}

impl fmt::Display for Identity {
    /// `operator:alice`, `node:gpu-017`: how the author of a change is recorded.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.role, self.name)
    }
}

fn check_name(name: &str) -> Result<(), IdentityError> {
    if name.is_empty() {
        return Err(IdentityError::Empty);
    }
    if name.len() > 128 {
        return Err(IdentityError::TooLong(name.to_owned()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@')))
    {
        return Err(IdentityError::BadChar {
            name: name.to_owned(),
            c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trips() {
        for id in [
            Identity::node("gpu-017.rack3").expect("valid"),
            Identity::operator("alice@example.com").expect("valid"),
            Identity::new(Role::Viewer, "grafana").expect("valid"),
        ] {
            assert_eq!(Identity::from_uri(&id.to_uri()), Ok(id.clone()));
        }
        assert_eq!(
            Identity::node("n1").expect("valid").to_uri(),
            "sup://node/n1"
        );
    }

    #[test]
    fn foreign_or_malformed_uris_are_not_identities() {
        for uri in [
            "https://node/n1",
            "sup://admin/n1",
            "sup://node",
            "sup://node/",
            "sup://node/a/b",
            "sup://node/x y",
        ] {
            assert!(Identity::from_uri(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn only_operators_may_change() {
        assert!(Identity::operator("a").expect("valid").may_change());
        assert!(!Identity::node("a").expect("valid").may_change());
        assert!(!Identity::new(Role::Viewer, "a")
            .expect("valid")
            .may_change());
    }
}
