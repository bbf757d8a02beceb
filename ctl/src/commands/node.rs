//! `supctl node ID`: one node in detail (GPUs, their health, recent Xids).

use sup_proto::json::{gpu_health_name, node_state_name, recovery_action_name, NodeView};
use sup_proto::v1;

use super::{json_error, now_ms};
use crate::client::Client;
use crate::error::CtlError;
use crate::humanize::{ago, one_line, opt, or_none, timestamp, NONE};
use crate::table::*;

/// `supctl node remove NODE`.
pub(super) async fn remove(
    client: &mut Client,
    id: &str,
    by: &Option<String>,
    json: bool,
) -> Result<String, CtlError> {
    let req = v1::RemoveNodeRequest {
        node_id: id.to_owned(),
        by: super::operator(by),
        request_id: crate::client::request_id(),
    };
    let r = client.remove_node(req).await?;
    if json {
        super::cordon::cordon_json(&r).map_err(json_error)
    } else if r.changed {
        Ok(format!("node {id} removed\n"))
    } else {
        Ok(format!("{}\n", one_line(&r.message)))
    }
}

pub(super) async fn run(client: &mut Client, id: &str, json: bool) -> Result<String, CtlError> {
    let n = client.node(id).await?;
    if json {
        node_json(&n).map_err(json_error)
    } else {
        Ok(node_text(&n, now_ms()))
    }
}

pub fn node_json(node: &v1::Node) -> serde_json::Result<String> {
    json(&NodeView::from(node))
}

pub fn node_text(n: &v1::Node, now_ms: i64) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let when = |ms: i64| {
        if ms <= 0 {
            NONE.to_owned()
        } else {
            format!("{} ({})", timestamp(ms), ago(now_ms, ms))
        }
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("Node", n.id.clone()),
        ("State", node_state_name(n.state).to_owned()),
        ("Address", or_none(&n.address)),
        ("Hostname", or_none(&n.hostname)),
        ("Connected", yes_no(n.connected)),
        ("Job", or_none(&n.job)),
        ("GPUs", gpu_summary(&n.gpus)),
        ("GPU backend", or_none(&n.gpu_backend)),
        ("Agent version", or_none(&n.agent_version)),
        ("Registered", when(n.registered_at_unix_ms)),
        ("Last seen", when(n.last_seen_unix_ms)),
    ];
    match &n.cordon {
        Some(c) => {
            fields.push((
                "Cordoned",
                format!("by {} at {}", or_none(&c.by), when(c.at_unix_ms)),
            ));
            fields.push(("Cordon reason", or_none(&c.reason)));
            if !c.validation.is_empty() {
                fields.push(("Validation", one_line(&c.validation)));
            }
        }
        None => fields.push(("Cordoned", "no".to_owned())),
    }
    if let Some(d) = &n.drain {
        fields.push((
            "Draining",
            format!(
                "by {} at {}; the job moves off at its next checkpoint{}, at the latest {}",
                or_none(&d.by),
                when(d.at_unix_ms),
                d.after_step
                    .map(|s| format!(" after step {s}"))
                    .unwrap_or_default(),
                timestamp(d.deadline_unix_ms)
            ),
        ));
        fields.push(("Drain reason", or_none(&d.reason)));
    }
    if let Some(s) = &n.slurm {
        let mut state = format!("{} (as {})", s.state, s.name);
        if s.unavailable {
            state.push_str(if s.drained_by_sup {
                ": drained by sup"
            } else {
                ": sup places no work on it"
            });
        }
        fields.push(("Slurm", state));
        fields.push(("Slurm reason", or_none(&s.reason)));
    }
    let mut out = fields_text(&fields);
    out.push('\n');
    if n.gpus.is_empty() {
        out.push_str("No GPUs reported.\n");
        return out;
    }
    let mut table = new_table(&["INDEX", "UUID", "NAME", "HEALTH", "TEMP", "POWER", "UTIL"]);
    for g in &n.gpus {
        let r = g.reading.as_ref();
        table.add_row(vec![
            g.index.to_string(),
            or_none(&g.uuid),
            or_none(&g.name),
            gpu_health_name(g.health).to_owned(),
            opt(r.and_then(|r| r.temperature_c), |t| format!("{t:.0} C")),
            opt(r.and_then(|r| r.power_w), |p| format!("{p:.0} W")),
            opt(r.and_then(|r| r.utilization_gpu_pct), |u| format!("{u}%")),
        ]);
    }
    out.push_str(&finish(table));
    out.push_str(&gpu_health_text(&n.gpus));
    out.push_str(&recent_xids_text(&n.gpus, now_ms));
    out
}

/// The story behind each GPU that is not plainly ok: its verdict's reason,
/// the recovery action NVML asks for, and the evidence. Healthy GPUs with
/// nothing to say are left out, so a failure is not lost among seven "ok"s.
fn gpu_health_text(gpus: &[v1::Gpu]) -> String {
    let mut out = String::new();
    for g in gpus {
        // "none" is NVML saying no action is needed: nothing to show.
        let action = recovery_action_name(g.recovery_action).filter(|a| *a != "none");
        let health = gpu_health_name(g.health);
        if health == "ok"
            && g.health_reason.trim().is_empty()
            && action.is_none()
            && g.evidence.is_empty()
        {
            continue;
        }
        out.push_str(&format!("\nGPU {}: {health}\n", g.index));
        let mut fields: Vec<(&str, String)> = vec![("  Reason", or_none(&g.health_reason))];
        if let Some(action) = action {
            fields.push(("  Recovery action", action.to_owned()));
        }
        for (i, evidence) in g.evidence.iter().enumerate() {
            // Only the first line carries the key; the rest line up under it.
            let key = if i == 0 { "  Evidence" } else { "" };
            fields.push((key, one_line(evidence)));
        }
        out.push_str(&fields_text(&fields));
    }
    out
}

/// Every GPU's recent Xids in one table, newest last, so a burst across GPUs
/// reads in the order it happened.
fn recent_xids_text(gpus: &[v1::Gpu], now_ms: i64) -> String {
    let mut xids: Vec<(u32, &v1::XidEvent)> = gpus
        .iter()
        .flat_map(|g| g.recent_xids.iter().map(move |x| (g.index, x)))
        .collect();
    if xids.is_empty() {
        return "\nNo recent Xids.\n".to_owned();
    }
    xids.sort_by_key(|(_, x)| x.at_unix_ms);
    let mut table = new_table(&["GPU", "XID", "AGE", "SOURCE", "DETAIL"]);
    for (gpu, x) in xids {
        let detail = match (x.application, x.detail.trim().is_empty()) {
            (true, true) => "application Xid".to_owned(),
            (true, false) => format!("application Xid: {}", one_line(&x.detail)),
            (false, _) => or_none(&x.detail),
        };
        table.add_row(vec![
            gpu.to_string(),
            x.xid.to_string(),
            ago(now_ms, x.at_unix_ms),
            or_none(&x.source),
            detail,
        ]);
    }
    format!("\nRecent Xids (newest last):\n{}", finish(table))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::test_support::*;

    #[test]
    fn node_details_show_dash_for_missing_readings() {
        let mut n = node("n1", v1::NodeState::Ready);
        n.gpus.truncate(2);
        n.gpus[0].reading = Some(v1::GpuReading {
            index: 0,
            temperature_c: Some(45.4),
            power_w: Some(312.0),
            utilization_gpu_pct: Some(87),
            ..Default::default()
        });
        let text = node_text(&n, NOW);
        assert!(text.starts_with("Node:"), "{text}");
        assert!(text.contains("Cordoned:      no\n"), "{text}");
        assert_eq!(
            row(&text, "0"),
            ["0", "GPU-0", "NVIDIA H100", "ok", "45 C", "312 W", "87%"]
        );
        assert_eq!(
            row(&text, "1"),
            ["1", "GPU-1", "NVIDIA H100", "ok", "-", "-", "-"]
        );
    }

    #[test]
    fn node_details_show_slurms_state_and_reason() {
        let mut n = node("n1", v1::NodeState::Ready);
        n.slurm = Some(v1::SlurmNode {
            name: "gpu-a01".into(),
            state: "drained".into(),
            reason: "maintenance".into(),
            unavailable: true,
            drained_by_sup: false,
        });
        let text = node_text(&n, NOW);
        assert!(
            text.contains("Slurm:         drained (as gpu-a01): sup places no work on it\n"),
            "{text}"
        );
        assert!(text.contains("Slurm reason:  maintenance\n"), "{text}");
    }

    #[test]
    fn node_json_uses_the_shared_view() {
        let mut n = node("n1", v1::NodeState::Cordoned);
        n.cordon = cordon("bad");
        let v: serde_json::Value = serde_json::from_str(&node_json(&n).unwrap()).unwrap();
        assert_eq!(v["id"], "n1");
        assert_eq!(v["state"], "cordoned");
        assert_eq!(v["job"], serde_json::Value::Null);
        assert_eq!(v["cordon"]["by"], "alice");
        assert_eq!(v["gpus"].as_array().unwrap().len(), 8);
    }

    #[test]
    fn node_details_explain_unhealthy_gpus_and_list_recent_xids() {
        let mut n = node("n1", v1::NodeState::Suspect);
        n.gpus.truncate(4);
        n.gpus[0].recovery_action = v1::RecoveryAction::None as i32;
        n.gpus[3].health = v1::GpuHealth::Failed as i32;
        n.gpus[3].health_reason =
            "Xid 79 (GPU has fallen off the bus): power-cycle the node".into();
        n.gpus[3].recovery_action = v1::RecoveryAction::NodeReboot as i32;
        n.gpus[3].evidence = vec!["xid 79 from nvml".into(), "gpu lost\nby nvml".into()];
        n.gpus[3].recent_xids = vec![xid(3, 79, 5_000, "nvml")];
        n.gpus[1].health = v1::GpuHealth::Degraded as i32;
        n.gpus[1].health_reason = "PCIe x8 of x16".into();
        let mut app = xid(1, 13, 200_000, "kernel_log");
        app.application = true;
        app.detail = "pid=1234".into();
        n.gpus[1].recent_xids = vec![app];
        let text = node_text(&n, NOW);

        assert!(!text.contains("GPU 0:"), "healthy GPU listed: {text}");
        assert!(!text.contains("GPU 2:"), "healthy GPU listed: {text}");
        let gpu3 = text.split("GPU 3: failed\n").nth(1).expect("GPU 3 section");
        let gpu3: Vec<&str> = gpu3.lines().take(4).collect();
        assert_eq!(
            gpu3,
            [
                "  Reason:          Xid 79 (GPU has fallen off the bus): power-cycle the node",
                "  Recovery action: node_reboot",
                "  Evidence:        xid 79 from nvml",
                "                   gpu lost by nvml",
            ],
            "{text}"
        );
        assert!(
            text.contains("GPU 1: degraded\n  Reason: PCIe x8 of x16\n"),
            "{text}"
        );
        // Xids from all GPUs, oldest first whatever GPU order they came in.
        let xids: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Recent Xids"))
            .skip(2)
            .collect();
        assert_eq!(xids.len(), 2, "{text}");
        let cells = |l: &str| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(xids[0]),
            [
                "1",
                "13",
                "3m20s ago",
                "kernel_log",
                "application Xid: pid=1234"
            ]
        );
        assert_eq!(cells(xids[1]), ["3", "79", "5s ago", "nvml", "-"]);
    }

    #[test]
    fn node_details_of_a_healthy_node_say_there_are_no_xids() {
        let text = node_text(&node("n1", v1::NodeState::Ready), NOW);
        assert!(!text.contains("Reason:"), "{text}");
        assert!(text.ends_with("\nNo recent Xids.\n"), "{text}");
    }
}
