//! A real etcd for a test: N members (Debian's `etcd-server`, etcd 3.4; the
//! test command installs it) on free loopback ports, their data under the
//! test's own directory, with the fast elections the HA tests assume
//! (`--heartbeat-interval 100 --election-timeout 500`). Health and leader
//! are asked with `etcdctl` (Debian's `etcd-client`). Every member process
//! is killed when the cluster is dropped (also when the test fails); a
//! member can be killed (SIGKILL) and restarted on its data dir meanwhile.
//!
//! [`EtcdCluster::start_tls`] starts members that serve clients over TLS
//! only and require a client certificate (`--client-cert-auth`), with a CA
//! and certificates made for the test ([`EtcdTls`]); peers and metrics stay
//! plaintext on loopback.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::{free_port, wait_for, Proc};

/// Generous: a 3-member cluster elects within ~3 s on a quiet machine.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    metrics_port: u16,
    data_dir: PathBuf,
    proc: Option<Proc>,
    starts: usize,
}

pub struct EtcdCluster {
    pub dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    /// Set for a cluster that serves clients over mutual TLS.
    pub tls: Option<EtcdTls>,
}

/// The PEM files of a TLS etcd made by [`EtcdCluster::start_tls`]: the CA,
/// the members' server certificate (for 127.0.0.1) and a client
/// certificate etcd accepts; and a second CA with a client certificate of
/// its own, which etcd does not trust.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

impl EtcdTls {
    /// Makes the certificates in `dir`.
    pub fn create(dir: &Path) -> Result<EtcdTls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = |name: &str| -> Result<(String, Issuer<'static, KeyPair>)> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let cert = params.self_signed(&key)?;
            Ok((cert.pem(), Issuer::new(params, key)))
        };
        let leaf = |issuer: &Issuer<'static, KeyPair>,
                    names: &[&str],
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, "sup-e2e");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, issuer)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (ca_pem, issuer) = ca("etcd test CA")?;
        let (server_pem, server_key) = leaf(
            &issuer,
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_pem, client_key) = leaf(&issuer, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        let (other_pem, other_issuer) = ca("another CA")?;
        let (other_client_pem, other_client_key) =
            leaf(&other_issuer, &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        Ok(EtcdTls {
            ca: write("ca.pem", ca_pem)?,
            server_cert: write("server.pem", server_pem)?,
            server_key: write("server-key.pem", server_key)?,
            client_cert: write("client.pem", client_pem)?,
            client_key: write("client-key.pem", client_key)?,
            other_ca: write("other-ca.pem", other_pem)?,
            other_client_cert: write("other-client.pem", other_client_pem)?,
            other_client_key: write("other-client-key.pem", other_client_key)?,
        })
    }
}

impl EtcdCluster {
    /// Starts `size` members under `work/etcd` and returns once the cluster
    /// has a leader and every member answers.
    pub fn start(work: &Path, size: usize) -> Result<EtcdCluster> {
        Self::start_with(work, size, None)
    }

    /// Like [`EtcdCluster::start`], with clients served over TLS only, a
    /// client certificate required, the certificates made in `work/etcd/pki`.
    pub fn start_tls(work: &Path, size: usize) -> Result<EtcdCluster> {
        let tls = EtcdTls::create(&work.join("etcd").join("pki"))?;
        Self::start_with(work, size, Some(tls))
    }

    fn start_with(work: &Path, size: usize, tls: Option<EtcdTls>) -> Result<EtcdCluster> {
        if size == 0 {
            bail!("an etcd cluster needs at least one member");
        }
        let dir = work.join("etcd");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut members = Vec::new();
        for i in 1..=size {
            let name = format!("m{i}");
            members.push(Member {
                data_dir: dir.join(format!("{name}.data")),
                name,
                client_port: free_port()?,
                peer_port: free_port()?,
                metrics_port: free_port()?,
                proc: None,
                starts: 0,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut cluster = EtcdCluster {
            dir,
            members,
            initial_cluster,
            token: format!("sup-test-{}-{nanos}", std::process::id()),
            tls,
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy()?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let (initial_cluster, token, dir) = (
            self.initial_cluster.clone(),
            self.token.clone(),
            self.dir.clone(),
        );
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no etcd member {i}"))?;
        m.starts += 1;
        let client = client_url(self.tls.is_some(), m.client_port);
        let metrics = format!("http://127.0.0.1:{}", m.metrics_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        // A restart finds its data dir and ignores the initial-cluster flags.
        let state = if m.data_dir.exists() {
            "existing"
        } else {
            "new"
        };
        let mut cmd = Command::new("etcd");
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .args(["--heartbeat-interval", "100", "--election-timeout", "500"])
            .args(["--listen-metrics-urls", &metrics])
            .args(["--logger", "zap", "--log-level", "warn"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key);
        }
        let proc = Proc::spawn(&format!("etcd-{}-{}", m.name, m.starts), cmd, &dir)
            .context("starting etcd (apt-get install etcd-server)")?;
        m.proc = Some(proc);
        Ok(())
    }

    /// Every member's client URL, running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| client_url(self.tls.is_some(), m.client_port))
            .collect()
    }

    /// The client URLs of the members that run now.
    fn running_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.proc.is_some())
            .map(|m| client_url(self.tls.is_some(), m.client_port))
            .collect()
    }

    /// Members started and not killed.
    pub fn running(&self) -> usize {
        self.members.iter().filter(|m| m.proc.is_some()).count()
    }

    /// `etcdctl ARGS` against the running members; stdout on success.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                self.running_endpoints().join(",")
            ))
            .args(["--command-timeout=3s", "--dial-timeout=2s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.client_cert)
                .arg("--key")
                .arg(&tls.client_key);
        }
        let out = cmd
            .args(args)
            .output()
            .context("running etcdctl (apt-get install etcd-client)")?;
        if !out.status.success() {
            bail!(
                "etcdctl {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every running member answers a linearizable read (so
    /// the cluster has a leader), failing early if a member exited.
    pub fn wait_healthy(&mut self) -> Result<()> {
        wait_for("etcd to have a leader", ETCD_TIMEOUT, || {
            for m in &mut self.members {
                if let Some(p) = m.proc.as_mut() {
                    if let Some(status) = p.exited()? {
                        bail!(
                            "etcd member {} exited with {status}:\n{}",
                            m.name,
                            p.log_text()
                        );
                    }
                }
            }
            Ok(self.etcdctl(&["endpoint", "health"]).map(|_| ())?.into())
        })
    }

    /// The index of the member that leads now.
    pub fn leader(&self) -> Result<usize> {
        let text = self.etcdctl(&["endpoint", "status", "-w", "json"])?;
        let statuses: Value = serde_json::from_str(&text)
            .with_context(|| format!("etcdctl endpoint status printed {text}"))?;
        let statuses = statuses
            .as_array()
            .ok_or_else(|| anyhow!("etcdctl endpoint status: not an array: {text}"))?;
        let leader = statuses
            .iter()
            .find(|s| {
                s["Status"]["leader"].as_u64().is_some()
                    && s["Status"]["leader"] == s["Status"]["header"]["member_id"]
            })
            .and_then(|s| s["Endpoint"].as_str())
            .ok_or_else(|| anyhow!("no member leads: {text}"))?;
        self.endpoints()
            .iter()
            .position(|e| e == leader)
            .ok_or_else(|| anyhow!("the leader {leader} is not a member of this cluster"))
    }

    /// SIGKILLs member `i` (a crashed etcd).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let m = self
            .members
            .get_mut(i)
            .ok_or_else(|| anyhow!("no etcd member {i}"))?;
        match m.proc.as_mut() {
            Some(p) => p.kill()?,
            None => bail!("etcd member {} is not running", m.name),
        }
        m.proc = None;
        Ok(())
    }

    /// Starts member `i` again on its data dir; returns once the cluster is
    /// healthy with it.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.members.get(i).is_some_and(|m| m.proc.is_some()) {
            bail!("etcd member {i} is running");
        }
        self.spawn(i)?;
        self.wait_healthy()
    }

    /// Keys under `prefix`, in etcd's (byte) order.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .etcdctl(&["get", "--prefix", "--keys-only", prefix])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self.etcdctl(&["get", "--print-value-only", key])?;
        Ok((!out.is_empty()).then(|| out.trim_end_matches('\n').to_owned()))
    }

    /// A counter or gauge from member `i`'s Prometheus `/metrics` (summed
    /// over its label sets); 0 when absent.
    pub fn metric(&self, i: usize, name: &str) -> Result<f64> {
        let m = self
            .members
            .get(i)
            .ok_or_else(|| anyhow!("no etcd member {i}"))?;
        let (code, body) = crate::http_get(m.metrics_port, "/metrics")?;
        if code != 200 {
            bail!("etcd /metrics answered {code}");
        }
        Ok(body
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}

fn client_url(tls: bool, port: u16) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Each member's Proc kills (SIGKILL) and reaps it, and prints the
        // tail of its log.
        for m in &mut self.members {
            m.proc = None;
        }
    }
}
