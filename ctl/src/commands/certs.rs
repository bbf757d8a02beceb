//! `supctl certs init|issue|list|revoke`: the offline CA (`crate::certs`) from the command line.

use super::json_error;
use crate::error::CtlError;
use crate::table::*;
use std::io::Write;

use crate::certs;
use crate::cli::CertsCommand;

/// `supctl certs list`: soonest expiry first, so what needs renewing leads.
/// Runs with no supervisor: the CA lives in a directory on this machine.
pub(super) fn run(command: &CertsCommand, json: bool, out: &mut dyn Write) -> Result<(), CtlError> {
    let text = match command {
        CertsCommand::List { dir } => {
            let listed = certs::list(dir, time::OffsetDateTime::now_utc())?;
            if json {
                serde_json::to_string_pretty(&listed).map_err(json_error)? + "\n"
            } else {
                certs_table(&listed)
            }
        }
        CertsCommand::Revoke { dir, role, name } => {
            let revoked = certs::revoke(dir, &certs::subject(role, std::slice::from_ref(name))?)?;
            if json {
                serde_json::to_string_pretty(&revoked).map_err(json_error)? + "\n"
            } else {
                format!(
                    "{} {} (serial {}); {} now revokes {} certificate(s): install it where supd's grpc.tls.crl points\n",
                    revoked.what,
                    if revoked.added { "revoked" } else { "was already revoked" },
                    revoked.serial,
                    revoked.crl.display(),
                    revoked.revoked_total
                )
            }
        }
        CertsCommand::Init { .. } | CertsCommand::Issue { .. } => {
            let issued = issue(command)?;
            if json {
                serde_json::to_string_pretty(&issued).map_err(json_error)? + "\n"
            } else {
                issued
                    .iter()
                    .map(|i| {
                        format!(
                            "{}: {} (key {})\n",
                            i.what,
                            i.cert.display(),
                            i.key.display()
                        )
                    })
                    .collect()
            }
        }
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

pub fn certs_table(listed: &[crate::certs::Listed]) -> String {
    let mut rows: Vec<&crate::certs::Listed> = listed.iter().collect();
    rows.sort_by_key(|l| (l.days_left, l.file.clone()));
    let mut table = new_table(&[
        "FILE",
        "IDENTITY",
        "EXPIRES",
        "DAYS LEFT",
        "REVOKED",
        "SERIAL",
    ]);
    for l in rows {
        table.add_row(vec![
            l.file.clone(),
            l.identity.clone(),
            l.not_after.clone(),
            if l.days_left < 0 {
                "EXPIRED".to_owned()
            } else {
                l.days_left.to_string()
            },
            if l.revoked { "yes" } else { "no" }.to_owned(),
            l.serial.clone(),
        ]);
    }
    finish(table)
}

fn issue(command: &CertsCommand) -> Result<Vec<certs::Issued>, CtlError> {
    match command {
        CertsCommand::Init {
            dir,
            supd_names,
            nodes,
            operators,
            viewers,
            ca_days,
            days,
        } => {
            let mut subjects = vec![certs::Subject::Supd {
                names: if supd_names.is_empty() {
                    certs::DEFAULT_SUPD_NAMES.map(str::to_owned).to_vec()
                } else {
                    supd_names.clone()
                },
            }];
            for (role, names) in [
                ("node", nodes),
                ("operator", operators),
                ("viewer", viewers),
            ] {
                for name in names {
                    subjects.push(certs::subject(role, std::slice::from_ref(name))?);
                }
            }
            certs::init(dir, *ca_days, *days, &subjects)
        }
        CertsCommand::Issue {
            dir,
            role,
            names,
            days,
        } => Ok(vec![certs::issue(
            dir,
            *days,
            &certs::subject(role, names)?,
        )?]),
        CertsCommand::Revoke { .. } | CertsCommand::List { .. } => Err(CtlError::Other(
            "revoke and list issue no certificates".to_owned(),
        )),
    }
}
